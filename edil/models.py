"""A small model IR that every scheme can run, and its builders.

Layers are immutable: :class:`Dense` (``x @ weight + bias``), :class:`Polynomial` (an
elementwise polynomial standing in for an activation), :class:`Flatten`, composed by
:class:`Sequential`. A model runs in plaintext float64 (:meth:`Sequential.forward`, the
reference) or under any scheme through :func:`encode_model`.

Non-polynomial activations (ReLU, tanh, logistic) are replaced by least-squares polynomial
fits over a stated input interval (:func:`fit_activation`); the fit's maximum error over the
interval is kept on the layer and :func:`accuracy_change` reports what the replacement costs.
Nothing is hidden: outside its interval a polynomial diverges quickly, which is why
:func:`from_sklearn` takes calibration data to choose the interval. With
``activations="exact"`` the builders emit an exact :class:`ReLU` layer instead, which schemes with
a comparison (``Masked``, ``Plain``) run with no fit error; CKKS and Paillier refuse it by name.

:func:`from_onnx` and :func:`from_jax` import models from ONNX graphs and from JAX functions
through an explicit whitelist of operators, lowering them onto these layers (plus
:class:`MaxPool`, which only schemes with a comparison run).

A multiclass model under ``Masked`` can return a shared one-hot or class index instead of its
logits (``EncodedModel.infer(x, output="argmax")`` or ``"index"``): the logits are never opened,
so the data owner's side decodes the label alone.

Convolutions need no layer of their own: the im2col gather of patches is public and independent
of the data, so :func:`conv2d_as_dense` lowers a convolution to one :class:`Dense` whose matrix
holds the kernel scattered into the im2col positions, and every scheme runs it unchanged.
:func:`im2col` is the plaintext reference; :func:`train_cnn` trains a small convolutional
classifier with JAX and returns it in this form.

Example:
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from edil import Plain, models
    >>> X = np.array([[0.0], [1.0], [2.0], [3.0]]); y = np.array([0, 0, 1, 1])
    >>> m = models.from_sklearn(LogisticRegression().fit(X, y))
    >>> bool((models.encode_model(m, Plain()).predict(X) == m.predict(X)).all())
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edil._errors import EncodingError, ParameterError, ShapeError, UnsupportedOperationError
from edil._scheme import Encoded, Scheme

__all__ = [
    "Dense",
    "EncodedModel",
    "Flatten",
    "MaxPool",
    "Polynomial",
    "ReLU",
    "Sequential",
    "accuracy_change",
    "conv2d_as_dense",
    "conv2d_output_shape",
    "encode_model",
    "fit_activation",
    "from_jax",
    "from_onnx",
    "from_sklearn",
    "im2col",
    "train_cnn",
]

_ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "logistic": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "identity": lambda z: z,
}


def _frozen_array(a: Any) -> np.ndarray:
    arr = np.array(a, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise EncodingError("model parameters hold non-finite values")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Dense:
    """``y = x @ weight + bias`` with ``weight`` of shape ``(in, out)``."""

    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        w, b = _frozen_array(self.weight), _frozen_array(self.bias)
        if w.ndim != 2 or b.shape != (w.shape[1],):
            raise ShapeError(f"Dense needs weight (in, out) and bias (out,), got {w.shape} and {b.shape}")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[1])


@dataclass(frozen=True, eq=False)
class Polynomial:
    """Elementwise ``sum(coeffs[i] * x**i)``, optionally standing in for an activation.

    Attributes:
        coeffs: power-basis coefficients, lowest degree first.
        activation: the activation it approximates (``"relu"``...) or ``None``.
        interval: the input interval the fit is valid on.
        max_error: largest absolute error of the fit on ``interval``.
    """

    coeffs: tuple[float, ...]
    activation: str | None = None
    interval: tuple[float, float] | None = None
    max_error: float = 0.0

    def __post_init__(self) -> None:
        c = tuple(float(v) for v in self.coeffs)
        if not c or not all(math.isfinite(v) for v in c):
            raise EncodingError("Polynomial needs at least one finite coefficient")
        object.__setattr__(self, "coeffs", c)

    @property
    def degree(self) -> int:
        return len(self.coeffs) - 1

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return np.polynomial.polynomial.polyval(z, np.asarray(self.coeffs))


@dataclass(frozen=True)
class Flatten:
    """Flatten every axis after the batch axis."""


@dataclass(frozen=True, eq=False)
class MaxPool:
    """Maximum over public windows of the input: ``y[:, j] = max_t x[:, index[j, t]]``.

    The windows do not depend on the data (as for a convolution), so one gather index describes
    any max pooling: ``index`` has one row per output and one column per window tap; a tap in
    the padding repeats a valid tap of its window (the maximum is idempotent). Taking a
    maximum needs a comparison, which only schemes with a ``maximum`` operation have
    (:class:`~edil.Plain`): :func:`encode_model` refuses a model with a ``MaxPool`` under
    ``Masked``, ``CKKS`` or ``Paillier``, naming the layer.

    Attributes:
        index: ``(out_features, taps)`` input positions, each in ``[0, in_features)``.
        in_features: width of the input.
        name: where the layer came from (e.g. the ONNX node), for error messages.
    """

    index: np.ndarray
    in_features: int
    name: str = ""

    def __post_init__(self) -> None:
        idx = np.array(self.index)
        if idx.ndim != 2 or idx.size == 0 or idx.dtype.kind not in "iu":
            raise ShapeError(f"MaxPool needs a non-empty (out, taps) integer index, got {idx.dtype} {idx.shape}")
        n = int(self.in_features)
        if n < 1 or idx.min() < 0 or idx.max() >= n:
            raise ShapeError(f"MaxPool index must lie in [0, {n}), got [{idx.min()}, {idx.max()}]")
        idx = idx.astype(np.int64)
        idx.setflags(write=False)
        object.__setattr__(self, "index", idx)
        object.__setattr__(self, "in_features", n)

    @property
    def out_features(self) -> int:
        return int(self.index.shape[0])

    def __call__(self, z: np.ndarray) -> np.ndarray:
        if z.ndim != 2 or z.shape[1] != self.in_features:
            raise ShapeError(f"MaxPool expects (batch, {self.in_features}) input, got {z.shape}")
        return np.asarray(z[:, self.index].max(axis=2))


@dataclass(frozen=True)
class ReLU:
    """Exact ``max(x, 0)``, for schemes with a comparison (``Masked``, ``Plain``).

    The alternative to a fitted :class:`Polynomial`: exact, so deep ReLU nets keep their
    accuracy, at the cost of a secure comparison per element (see :class:`~edil.Masked`).
    """

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return np.maximum(z, 0.0)


Layer = Dense | Polynomial | Flatten | MaxPool | ReLU

#: What an :class:`EncodedModel` can return: the logits, a shared one-hot argmax, or the shared index.
_OUTPUTS = ("logits", "argmax", "index")


@dataclass(frozen=True, eq=False)
class Sequential:
    """A stack of layers plus how to read its output.

    Attributes:
        layers: the layers, applied in order.
        kind: ``"regression"``, ``"binary"`` (one logit) or ``"multiclass"`` (one logit per class).
        classes: class labels for classifiers, in logit order.
    """

    layers: tuple[Layer, ...]
    kind: str = "regression"
    classes: tuple[Any, ...] | None = None
    approximations: tuple[Polynomial, ...] = field(default=())

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        for layer in layers:
            if not isinstance(layer, Dense | Polynomial | Flatten | MaxPool | ReLU):
                raise UnsupportedOperationError(f"unsupported layer type {type(layer).__name__}")
        if self.kind not in ("regression", "binary", "multiclass"):
            raise ParameterError(f"kind must be regression, binary or multiclass, got {self.kind!r}")
        sized = [layer for layer in layers if isinstance(layer, Dense | MaxPool)]
        for prev, nxt in zip(sized, sized[1:]):
            if prev.out_features != nxt.in_features:
                what = "Dense layers" if isinstance(prev, Dense) and isinstance(nxt, Dense) else "layers"
                shapes = [la.weight.shape if isinstance(la, Dense) else la.index.shape for la in (prev, nxt)]
                raise ShapeError(
                    f"{what} do not chain: {type(prev).__name__} gives {prev.out_features} features, "
                    f"{type(nxt).__name__} takes {nxt.in_features} ({shapes[0]} then {shapes[1]})"
                )
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "approximations", tuple(la for la in layers if isinstance(la, Polynomial)))

    @property
    def sized(self) -> bool:
        """Whether some layer fixes the input width (a :class:`Dense` or :class:`MaxPool` layer)."""
        return any(isinstance(la, Dense | MaxPool) for la in self.layers)

    @property
    def in_features(self) -> int:
        """The input width: the first :class:`Dense` or :class:`MaxPool` layer's.

        Raises:
            ShapeError: the model has neither (its layers are elementwise and take any width).
        """
        for la in self.layers:
            if isinstance(la, Dense | MaxPool):
                return la.in_features
        raise ShapeError("this model has no Dense or MaxPool layer: its layers are elementwise and fix no input width")

    @property
    def mult_depth(self) -> int:
        """Multiplicative depth: the rescale levels the ``CKKS`` evaluation of this model consumes.

        The same count as :func:`edil._ckks.required_depth` at the default ``CKKS`` parameters
        (``precision_bits=30``, ``int_bits=15``), which :meth:`edil.CKKS.for_model` and
        :meth:`edil.CKKS.check_model` use: a dense layer costs 1, a degree-``d`` polynomial at
        least ``ceil(log2 d)`` and one or two more when a large constant term sits next to a
        small leading coefficient (wide activation intervals). It is computed by a dry run of
        the evaluator, not by a formula, so it cannot drift from what the evaluation takes.
        """
        from edil._ckks import required_depth

        return required_depth(self)

    def work_units(self, batch: int) -> int:
        """Multiply-accumulates for a batch: the unit of useful work in PoAI transcripts."""
        total, width = 0, self.in_features
        for layer in self.layers:
            if isinstance(layer, Dense):
                total += batch * layer.in_features * layer.out_features
                width = layer.out_features
            elif isinstance(layer, Polynomial):
                total += batch * width * max(layer.degree, 0)
            elif isinstance(layer, ReLU):  # one comparison per element
                total += batch * width
            elif isinstance(layer, MaxPool):  # one comparison per window tap
                total += batch * int(layer.index.size)
                width = layer.out_features
        return total

    def forward(self, x: Any) -> np.ndarray:
        """Plaintext float64 forward pass (the reference every scheme is compared with)."""
        z = np.asarray(x, dtype=np.float64)
        for layer in self.layers:
            if isinstance(layer, Dense):
                if z.ndim != 2 or z.shape[1] != layer.in_features:
                    raise ShapeError(f"Dense expects (batch, {layer.in_features}) input, got {z.shape}")
                z = z @ layer.weight + layer.bias
            elif isinstance(layer, Polynomial | MaxPool | ReLU):
                z = layer(z)
            else:
                z = z.reshape(z.shape[0], -1)
        return z

    def labels(self, outputs: Any) -> np.ndarray:
        """Turn model outputs (logits or values) into predictions."""
        out = np.asarray(outputs, dtype=np.float64)
        if self.kind == "regression":
            return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out
        classes = np.asarray(self.classes) if self.classes is not None else None
        idx = (out[:, 0] > 0).astype(int) if self.kind == "binary" else out.argmax(axis=1)
        return classes[idx] if classes is not None else idx

    def predict(self, x: Any) -> np.ndarray:
        """Plaintext predictions of this (possibly polynomial-approximated) model."""
        return self.labels(self.forward(x))


def fit_activation(name: str, degree: int, interval: tuple[float, float], *, samples: int = 2001) -> Polynomial:
    """Least-squares polynomial fit of an activation on a uniform grid over ``interval``.

    Args:
        name: ``"relu"``, ``"tanh"``, ``"logistic"`` (``"sigmoid"``) or ``"identity"``.
        degree: polynomial degree (>= 1).
        interval: ``(lo, hi)`` with ``lo < hi``: the inputs the fit must serve.
        samples: grid points.

    Returns:
        A :class:`Polynomial` carrying the interval and its max absolute error there.

    Raises:
        UnsupportedOperationError: unknown activation.
        ParameterError: bad degree or interval.
    """
    if name not in _ACTIVATIONS:
        raise UnsupportedOperationError(f"no polynomial approximation for activation {name!r}; known: {sorted(_ACTIVATIONS)}")
    if not isinstance(degree, int) or degree < 1:
        raise ParameterError(f"degree must be an int >= 1, got {degree!r}")
    lo, hi = float(interval[0]), float(interval[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ParameterError(f"interval must be finite with lo < hi, got {interval!r}")
    grid = np.linspace(lo, hi, samples)
    target = _ACTIVATIONS[name](grid)
    # Fit in the Chebyshev basis on [lo, hi] (well conditioned), then convert to powers of x.
    cheb = np.polynomial.Chebyshev.fit(grid, target, degree, domain=[lo, hi])
    coeffs = cheb.convert(kind=np.polynomial.Polynomial).coef
    coeffs = np.pad(coeffs, (0, degree + 1 - len(coeffs)))
    err = float(np.max(np.abs(np.polynomial.polynomial.polyval(grid, coeffs) - target)))
    return Polynomial(tuple(coeffs), activation=name, interval=(lo, hi), max_error=err)


def from_sklearn(
    estimator: Any,
    *,
    degree: int = 4,
    calibration: Any = None,
    interval: tuple[float, float] = (-4.0, 4.0),
    margin: float = 1.1,
    activations: str = "polynomial",
) -> Sequential:
    """Build a :class:`Sequential` from a fitted scikit-learn estimator.

    Supported: the linear regressors ``LinearRegression``, ``Ridge`` and ``Lasso`` (one or
    several targets), ``LogisticRegression`` (binary and multiclass), ``MLPClassifier`` and
    ``MLPRegressor`` (hidden activations relu/tanh/logistic/identity, replaced by
    degree-``degree`` least-squares polynomials). Output activations (logistic, softmax) are
    monotone and left to the client: a classifier returns logits; a regressor's output layer
    is the identity, so it returns its predictions.

    Args:
        estimator: a fitted estimator.
        degree: degree of the activation polynomials.
        calibration: sample inputs; when given, each hidden layer's interval is
            ``[-m, m]`` with ``m = margin * max |pre-activation|`` on these inputs.
        interval: the fit interval when no calibration data is given.
        margin: widening factor of the calibrated interval.
        activations: ``"polynomial"`` (fitted polynomials, which every scheme runs) or
            ``"exact"`` (ReLU hidden layers become exact :class:`ReLU` layers, for schemes with
            a comparison: the natural choice for deep ReLU nets under ``Masked``).

    Raises:
        UnsupportedOperationError: an estimator or activation EDIL cannot express, or
            ``activations="exact"`` for an activation other than ReLU.
        EncodingError: the estimator is not fitted.
        ParameterError: an unknown ``activations``.
    """
    from sklearn.linear_model import Lasso, LinearRegression, LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    name = type(estimator).__name__
    linear = LinearRegression | Ridge | Lasso
    if not isinstance(estimator, linear | LogisticRegression | MLPClassifier | MLPRegressor):
        raise UnsupportedOperationError(
            f"cannot build an EDIL model from {name}; supported: LinearRegression, Ridge, Lasso, "
            "LogisticRegression, MLPClassifier, MLPRegressor"
        )
    mlp = isinstance(estimator, MLPClassifier | MLPRegressor)
    fitted_attr = "coefs_" if mlp else "coef_"
    if not hasattr(estimator, fitted_attr):
        raise EncodingError(f"{name} is not fitted; call fit() before encoding it")

    if isinstance(estimator, linear):
        coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))
        bias = np.broadcast_to(np.asarray(estimator.intercept_, dtype=np.float64), (coef.shape[0],))
        return Sequential((Dense(coef.T, bias),), kind="regression")
    if isinstance(estimator, MLPRegressor):
        classes: tuple[Any, ...] | None = None
        kind = "regression"
    else:
        classes = tuple(estimator.classes_.tolist())
        kind = "binary" if len(classes) == 2 else "multiclass"
    if isinstance(estimator, LogisticRegression):
        coef = np.asarray(estimator.coef_, dtype=np.float64)
        return Sequential((Dense(coef.T, np.asarray(estimator.intercept_, dtype=np.float64)),), kind=kind, classes=classes)

    act = estimator.activation
    if activations not in ("polynomial", "exact"):
        raise ParameterError(f"activations must be 'polynomial' or 'exact', got {activations!r}")
    if activations == "exact" and act not in ("relu", "identity"):
        raise UnsupportedOperationError(f"{name} activation {act!r} has no exact layer (only relu); use activations='polynomial'")
    if act not in _ACTIVATIONS:
        raise UnsupportedOperationError(f"{name} activation {act!r} has no polynomial approximation")
    layers: list[Layer] = []
    z = None if calibration is None else np.asarray(calibration, dtype=np.float64)
    n = len(estimator.coefs_)
    for i, (w, b) in enumerate(zip(estimator.coefs_, estimator.intercepts_)):
        dense = Dense(w, b)
        layers.append(dense)
        if i == n - 1:
            break
        if z is not None:
            z = z @ dense.weight + dense.bias
        if act == "identity":
            continue
        if activations == "exact":
            layers.append(ReLU())
            continue
        if z is not None:
            m = margin * float(np.max(np.abs(z)))
            lo_hi = (-m, m)
        else:
            lo_hi = interval
        poly = fit_activation(act, degree, lo_hi)
        layers.append(poly)
        if z is not None:
            z = _ACTIVATIONS[act](z)
    return Sequential(tuple(layers), kind=kind, classes=classes)


def accuracy_change(estimator: Any, model: Sequential, x: Any, y: Any) -> dict[str, float]:
    """Accuracy of the original estimator vs the (polynomial) EDIL model on ``(x, y)``.

    Returns:
        ``{"float_accuracy", "model_accuracy", "delta"}`` with ``delta = model - float``.
    """
    y = np.asarray(y)
    float_acc = float(np.mean(estimator.predict(x) == y))
    model_acc = float(np.mean(model.predict(x) == y))
    return {"float_accuracy": float_acc, "model_accuracy": model_acc, "delta": model_acc - float_acc}


class EncodedModel:
    """A model bound to a scheme: call it on encoded inputs, or :meth:`infer` on plaintext.

    Built by :func:`encode_model`. With ``private_weights=True`` the dense weights are encoded
    by the scheme (secret-shared under ``Masked``) so that nodes do not see the model either.
    """

    def __init__(self, model: Sequential, scheme: Scheme, *, private_weights: bool = False) -> None:
        if not isinstance(model, Sequential):
            raise UnsupportedOperationError(f"encode_model needs a Sequential, got {type(model).__name__}")
        if not isinstance(scheme, Scheme):
            raise UnsupportedOperationError(f"encode_model needs a Scheme, got {type(scheme).__name__}")
        for i, layer in enumerate(model.layers):
            if isinstance(layer, MaxPool) and not callable(getattr(scheme, "maximum", None)):
                where = f" ({layer.name})" if layer.name else ""
                raise UnsupportedOperationError(
                    f"layer {i}, a MaxPool{where}, needs a comparison, which scheme {scheme.name!r} does not have: "
                    "run the model under Plain or Masked, or replace max pooling with average pooling, which is linear"
                )
            if isinstance(layer, ReLU) and not callable(getattr(scheme, "maximum", None)):
                raise UnsupportedOperationError(
                    f"layer {i}, an exact ReLU, needs a comparison, which scheme {scheme.name!r} does not have: "
                    "run the model under Plain or Masked, or fit a polynomial activation (activations='polynomial')"
                )
        self.model = model
        self.scheme = scheme
        self.private_weights = private_weights
        self._weights: list[tuple[Encoded, Encoded] | None] = []
        for layer in model.layers:
            if isinstance(layer, Dense) and private_weights:
                self._weights.append((scheme.encode_weights(layer.weight), scheme.encode_weights(layer.bias)))
            else:
                self._weights.append(None)

    def __call__(self, x: Encoded, *, output: str = "logits", **options: Any) -> Encoded:
        """Run the model on an encoded ``(batch, in_features)`` input; returns encoded outputs.

        Schemes that can compile a whole model (``Masked``) run it as one program; ``options``
        go to that fast path (e.g. ``preprocessed=`` material from :meth:`preprocess`).

        Args:
            x: the encoded input.
            output: ``"logits"`` (the model's outputs), or, for a multiclass model under a
                scheme with a secure argmax (``Masked``), ``"argmax"`` (a shared one-hot
                ``(batch, classes)``: 1.0 at the first largest logit) or ``"index"`` (the shared
                class index, ``(batch,)``). The logits stay shared and are never opened, so
                whoever decodes learns the label only, not the model's scores (fewer bits about
                the model leave the nodes). The argmax is one more protocol run of
                ``ceil(log2 classes)`` comparison levels, with dealer material drawn inline
                (``preprocessed=`` covers the model only).
            **options: for the scheme's whole-model path.

        Raises:
            ShapeError: an input of the wrong shape.
            ParameterError: an unknown ``output``, or ``"argmax"``/``"index"`` for a model that
                is not multiclass.
            UnsupportedOperationError: ``"argmax"``/``"index"`` under a scheme without a
                secure argmax.
        """
        if output not in _OUTPUTS:
            raise ParameterError(f"output must be one of {', '.join(map(repr, _OUTPUTS))}, got {output!r}")
        s = self.scheme
        argmax = getattr(s, "argmax", None)
        if output != "logits":
            if self.model.kind != "multiclass":
                raise ParameterError(f"output={output!r} needs a multiclass model (one logit per class), this one is {self.model.kind!r}")
            if not callable(argmax):
                raise UnsupportedOperationError(
                    f"output={output!r} needs a secure argmax, which scheme {s.name!r} does not have: use Masked, "
                    "or output='logits' and take the argmax after decoding"
                )
        s.check(x)
        if len(x.shape) != 2:
            raise ShapeError(f"model expects a (batch, features) input, got {x.shape}")
        if self.model.sized and x.shape[1] != self.model.in_features:
            raise ShapeError(f"model expects (batch, {self.model.in_features}) input, got {x.shape}")
        run_model = getattr(s, "run_model", None)
        if run_model is not None:
            y = run_model(self, x, **options)
        elif options:
            raise UnsupportedOperationError(f"scheme {s.name!r} takes no model options, got {sorted(options)}")
        else:
            y = self.run_layers(x)
        if output == "logits":
            return y
        return argmax(y, axis=1, one_hot=output == "argmax")  # type: ignore[misc]

    def run_layers(self, x: Encoded) -> Encoded:
        """Run the layers one scheme operation at a time (the generic path)."""
        s = self.scheme
        for layer, enc in zip(self.model.layers, self._weights):
            if isinstance(layer, Dense):
                if enc is None:
                    x = s.add_public(s.matmul_public(x, layer.weight), np.broadcast_to(layer.bias, (x.shape[0], layer.out_features)))
                else:
                    x = s.add(s.matmul(x, enc[0]), enc[1])
            elif isinstance(layer, Polynomial):
                x = s.polyval(x, layer.coeffs)
            elif isinstance(layer, MaxPool):
                x = _max_pool(s, x, layer)
            elif isinstance(layer, ReLU):
                relu = getattr(s, "relu", None)
                x = relu(x) if relu is not None else s.maximum(x, s.encode(np.zeros(x.shape)))  # type: ignore[attr-defined]
            else:
                if len(x.shape) != 2:
                    raise UnsupportedOperationError("Flatten of encoded values with more than 2 axes")
        return x

    def preprocess(self, batch: int) -> Any:
        """Offline phase for schemes that have one (``Masked``): material for one run on ``batch`` rows.

        Raises:
            UnsupportedOperationError: the scheme has no offline phase.
        """
        pre = getattr(self.scheme, "preprocess", None)
        if pre is None:
            raise self.scheme.unsupported("preprocess (offline phase)")
        return pre(self, batch)

    def infer(self, x: Any, *, output: str = "logits") -> np.ndarray:
        """Client-side recipe: encode ``x``, run the model, decode the outputs.

        ``output="argmax"`` decodes a one-hot ``(batch, classes)`` and ``output="index"`` the
        class indices ``(batch,)`` as integers, instead of the logits (see :meth:`__call__`).
        """
        out = self.scheme.decode(self(self.scheme.encode(x), output=output))
        return np.rint(out).astype(np.int64) if output == "index" else out

    def predict(self, x: Any, *, output: str = "logits") -> np.ndarray:
        """Encode, run, decode and turn the outputs into labels.

        With ``output="argmax"`` the nodes return a shared one-hot instead of the logits (see
        :meth:`__call__`); the labels are the same as ``numpy.argmax`` of the logits (first on ties).
        """
        if output not in ("logits", "argmax"):
            raise ParameterError(f"predict takes output='logits' or 'argmax', got {output!r}")
        return self.model.labels(self.infer(x, output=output))


def encode_model(model: Sequential, scheme: Scheme, *, private_weights: bool = False) -> EncodedModel:
    """Bind ``model`` to ``scheme`` (see :class:`EncodedModel`).

    Raises:
        UnsupportedOperationError: ``private_weights`` under a scheme that cannot encode weights,
            or a :class:`MaxPool` layer under a scheme without a comparison.
    """
    return EncodedModel(model, scheme, private_weights=private_weights)


def _max_pool(s: Scheme, x: Encoded, layer: MaxPool) -> Encoded:
    """``layer`` with the scheme's own operations: one public selection per tap, then maxima."""
    maximum = getattr(s, "maximum", None)
    if maximum is None:
        raise s.unsupported("maximum (a comparison, needed by MaxPool)")
    out: Encoded | None = None
    cols = np.arange(layer.out_features)
    for t in range(layer.index.shape[1]):
        select = np.zeros((layer.in_features, layer.out_features))
        select[layer.index[:, t], cols] = 1.0
        tap = s.matmul_public(x, select)
        out = tap if out is None else maximum(out, tap)
    assert out is not None  # MaxPool has at least one tap
    return out


def from_onnx(
    path_or_model: Any,
    *,
    output: str | None = None,
    calibration: Any = None,
    degree: int = 4,
    interval: tuple[float, float] = (-4.0, 4.0),
    margin: float = 1.1,
    kind: str | None = None,
    classes: Sequence[Any] | None = None,
    activations: str = "polynomial",
) -> Sequential:
    """Import an ONNX model as a :class:`Sequential`, reading an explicit whitelist of operators.

    Only the nodes the chosen output depends on are read, in graph order. Runs of linear
    operators compose into one :class:`Dense` layer; every other operator or attribute value
    raises :class:`~edil.UnsupportedOperationError` naming the operator, the node and the
    whitelist. Activations become degree-``degree`` least-squares polynomials written in the
    normalized pre-activation ``t = (z - c) / h`` (its interval's centre and half-width; the map
    folds into the preceding dense layer), so that wide intervals keep coefficients that
    fixed point can hold. The model takes the ONNX input flattened per sample in C order
    (``x.reshape(len(x), -1)``: ``(channel, row, column)`` for an NCHW image).

    Operators read (``edil._onnx.WHITELIST``): Gemm, MatMul, Add, Sub, Mul and Div by constants, Relu,
    Sigmoid and Tanh (as polynomials), Softmax as the last operation (dropped: it is monotone,
    the model returns logits), Conv (2-D, equal strides, the same padding on every side, no
    groups or dilation; lowered by :func:`conv2d_as_dense`), AveragePool and
    GlobalAveragePool (linear: folded into the next dense layer), MaxPool (a
    :class:`MaxPool` layer: runs under schemes with a comparison, ``Plain`` and ``Masked``),
    BatchNormalization (inference form, folded into the preceding linear layer), Flatten,
    Reshape (the batch axis stays first), Identity, Dropout (inference no-op), Constant, and
    Cast to a floating-point type (a no-op in EDIL's float arithmetic; skl2onnx casts its input).

    Args:
        path_or_model: a file path, the serialized bytes or an ``onnx.ModelProto``.
        output: the graph output to import; required when the graph has several (e.g.
            skl2onnx classifiers output a label and probabilities: import the probabilities).
            Only the nodes this output depends on are read.
        calibration: sample inputs (ONNX layout or flattened); each activation's interval is
            ``[-m, m]``, ``m = margin * max |pre-activation|`` on them.
        degree: degree of the activation polynomials.
        interval: the fit interval of every activation when no calibration data is given.
        margin: widening factor of the calibrated intervals.
        kind: ``"regression"``, ``"binary"`` or ``"multiclass"``; by default ``"multiclass"``
            when the graph ends with a Softmax, else ``"regression"``.
        classes: class labels in output order, for classifiers.
        activations: ``"polynomial"`` (the default: fitted polynomials, which every scheme
            runs) or ``"exact"`` (every ReLU becomes an exact :class:`ReLU` layer, for schemes
            with a comparison, ``Masked`` and ``Plain``: no fit error, so deep ReLU nets keep
            their labels; Sigmoid and Tanh are then refused), as in :func:`from_sklearn`.

    Returns:
        A model taking ``(batch, prod(input shape))`` inputs in C order.

    Raises:
        UnsupportedOperationError: an operator or attribute outside the whitelist, a graph
            that is not sequential around its non-linear layers, several data inputs,
            ``activations="exact"`` with a Sigmoid or Tanh, or a ``path_or_model`` that is not a
            path, bytes or ``onnx.ModelProto``.
        ParameterError: an unknown ``activations``.
        SerializationError: bytes that are not an ONNX model, a graph that does not hold
            together, or a dangling value name.
        OSError: the file at ``path_or_model`` cannot be read.
        ShapeError: a non-static input shape, or shapes that do not agree.
        EncodingError: non-finite weights, or several outputs without ``output``.
    """
    from edil._onnx import from_onnx as _from_onnx

    return _from_onnx(path_or_model, output=output, calibration=calibration, degree=degree, interval=interval,
                      margin=margin, kind=kind, classes=classes, activations=activations)


def from_jax(
    fn: Any,
    params: Any,
    example: Any,
    *,
    calibration: Any = None,
    degree: int = 4,
    interval: tuple[float, float] = (-4.0, 4.0),
    margin: float = 1.1,
    kind: str = "regression",
    classes: Sequence[Any] | None = None,
    rtol: float = 1e-3,
    activations: str = "polynomial",
) -> Sequential:
    """Import the JAX function ``fn(params, x)`` as a :class:`Sequential`, tracing it to a jaxpr.

    ``fn`` is traced with :func:`jax.make_jaxpr` on one row of ``example``, ``params`` becoming
    constants; equations on constants only (work on the parameters) are evaluated at import
    time. Linear primitives compose into :class:`Dense` layers and activations become
    polynomials as in :func:`from_onnx`; any other primitive on a value computed from the
    input raises :class:`~edil.UnsupportedOperationError` naming the primitive, the equation
    and the whitelist. The lowered model, with exact activations, is then checked against
    ``fn`` on the calibration rows.

    Primitives read on values computed from the input (``edil._jax_import.WHITELIST``): ``dot_general`` and
    ``conv_general_dilated`` with constant weights, ``add``/``sub`` (of two such values or with
    a constant), ``mul`` and ``div`` by constants, ``neg``, ``max(x, 0)`` (ReLU), ``tanh`` and
    ``logistic`` (as polynomials), the reshapes and broadcasts (``reshape``,
    ``broadcast_in_dim``, ``squeeze``, ``transpose``), ``reduce_sum``,
    ``convert_element_type``, ``copy``, and the calls around them (``jit``, ``custom_jvp_call``
    of ``jax.nn.relu``...).

    Args:
        fn: ``fn(params, x)`` mapping a batch ``x`` of shape ``(batch, ...)`` to ``(batch, ...)``,
            row by row.
        params: its parameters (any pytree); they become constants of the model.
        example: a batch of inputs; its first row fixes the shapes of the trace.
        calibration: inputs choosing each activation's interval (``[-m, m]``, ``m = margin *
            max |pre-activation|``) and checking the lowering; ``example`` by default.
        degree: degree of the activation polynomials.
        interval: the fit interval when calibration is disabled (``calibration=False``).
        margin: widening factor of the calibrated intervals.
        kind: ``"regression"``, ``"binary"`` or ``"multiclass"``.
        classes: class labels in output order, for classifiers.
        rtol: tolerance of the check, relative to the largest output magnitude.
        activations: ``"polynomial"`` (the default: fitted polynomials, which every scheme
            runs) or ``"exact"`` (every ReLU becomes an exact :class:`ReLU` layer, for schemes
            with a comparison, ``Masked`` and ``Plain``: no fit error, so deep ReLU nets keep
            their labels; ``tanh`` and ``logistic`` are then refused), as in :func:`from_sklearn`.

    Returns:
        A model taking ``(batch, prod(example.shape[1:]))`` inputs (``x.reshape(len(x), -1)``)
        and returning ``fn``'s output flattened per row.

    Raises:
        UnsupportedOperationError: a primitive outside the whitelist on a value computed from
            the input, a graph that is not sequential around its non-linear layers, a
            function whose rows interact (the check fails), or ``activations="exact"`` with
            ``tanh`` or ``logistic``.
        ShapeError: an example without a batch axis.
        ParameterError: an unknown ``activations``.
    """
    from edil._jax_import import from_jax as _from_jax

    return _from_jax(fn, params, example, calibration=calibration, degree=degree, interval=interval, margin=margin,
                     kind=kind, classes=classes, rtol=rtol, activations=activations)


# --- convolutions, lowered to dense layers --------------------------------------------------------
def _conv_geometry(
    in_shape: Sequence[int], kernel_hw: Sequence[int], stride: int, padding: int
) -> tuple[tuple[int, int, int], tuple[int, int], np.ndarray]:
    """Checked ``(h, w, cin)``, output ``(oh, ow)`` and the im2col gather index.

    The index has shape ``(oh * ow, kh * kw * cin)``: for each output position (row-major) the
    flat input position of every patch element, in ``(i, j, channel)`` order; ``-1`` marks a
    zero-padding element. Inputs are flattened in ``(row, column, channel)`` order.
    """
    bad_shapes = f"in_shape and kernel_hw must be sequences of ints, got {in_shape!r} and {kernel_hw!r}"
    if isinstance(in_shape, str) or isinstance(kernel_hw, str):  # a str iterates as digits; refuse it outright
        raise ShapeError(bad_shapes)
    try:
        shape = tuple(int(v) for v in in_shape)
        khw = tuple(int(v) for v in kernel_hw)
    except (TypeError, ValueError):
        raise ShapeError(bad_shapes) from None
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or min(shape) < 1:
        raise ShapeError(f"in_shape must be (height, width) or (height, width, channels) of positive ints, got {tuple(in_shape)}")
    if len(khw) != 2 or min(khw) < 1:
        raise ShapeError(f"kernel_hw must be (kernel_height, kernel_width) of positive ints, got {tuple(kernel_hw)}")
    if not isinstance(stride, int | np.integer) or isinstance(stride, bool) or stride < 1:
        raise ParameterError(f"stride must be an int >= 1, got {stride!r}")
    if not isinstance(padding, int | np.integer) or isinstance(padding, bool) or padding < 0:
        raise ParameterError(f"padding must be an int >= 0, got {padding!r}")
    h, w, cin = shape
    kh, kw = khw
    if kh > h + 2 * padding or kw > w + 2 * padding:
        raise ShapeError(
            f"a {kh}x{kw} kernel does not fit a {h}x{w} input with padding {padding} "
            f"(padded input is {h + 2 * padding}x{w + 2 * padding})"
        )
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    r = (np.arange(oh) * stride)[:, None, None, None, None] + np.arange(kh)[None, None, :, None, None] - padding
    c = (np.arange(ow) * stride)[None, :, None, None, None] + np.arange(kw)[None, None, None, :, None] - padding
    ch = np.arange(cin)[None, None, None, None, :]
    r, c, ch = np.broadcast_arrays(r, c, ch)
    index = np.where((r >= 0) & (r < h) & (c >= 0) & (c < w), (r * w + c) * cin + ch, -1)
    return (h, w, cin), (oh, ow), index.reshape(oh * ow, kh * kw * cin)


def conv2d_output_shape(
    in_shape: Sequence[int], kernel_hw: Sequence[int], stride: int = 1, padding: int = 0
) -> tuple[int, int]:
    """``(out_height, out_width)`` of a convolution (``floor((h + 2p - k) / s) + 1``).

    Raises:
        ShapeError: a malformed ``in_shape`` or ``kernel_hw``, or a kernel larger than the
            padded input.
        ParameterError: ``stride < 1`` or ``padding < 0``.
    """
    return _conv_geometry(in_shape, kernel_hw, stride, padding)[1]


def im2col(x: Any, in_shape: Sequence[int], kernel_hw: Sequence[int], stride: int = 1, padding: int = 0) -> np.ndarray:
    """Patches of a batch of images, one row per output position (the plaintext reference).

    Args:
        x: ``(batch, h * w * cin)`` flattened in ``(row, column, channel)`` order, or
            ``(batch, h, w, cin)`` (``(batch, h, w)`` when ``cin = 1``).
        in_shape: ``(h, w)`` or ``(h, w, cin)``.
        kernel_hw: ``(kh, kw)``.
        stride: step between patches, both axes.
        padding: zero rows/columns added on every side.

    Returns:
        ``(batch, oh * ow, kh * kw * cin)``: for output position ``p`` (row-major) the patch in
        ``(i, j, channel)`` order, so that ``im2col(x) @ kernel.reshape(-1, cout)`` is the
        convolution for a kernel of shape ``(kh, kw, cin, cout)``.

    Raises:
        ShapeError: ``x`` does not hold ``in_shape`` images, or the kernel does not fit.
        ParameterError: bad ``stride`` or ``padding``.
    """
    (h, w, cin), _, index = _conv_geometry(in_shape, kernel_hw, stride, padding)
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim < 2 or int(np.prod(arr.shape[1:])) != h * w * cin or (arr.ndim > 2 and arr.shape[1:] not in ((h, w, cin), (h, w))):
        raise ShapeError(f"im2col expects (batch, {h * w * cin}) or (batch, {h}, {w}, {cin}) input, got {arr.shape}")
    flat = arr.reshape(arr.shape[0], h * w * cin)
    padded = np.concatenate([flat, np.zeros((flat.shape[0], 1))], axis=1)  # index -1 reads the zero
    return padded[:, index]


def conv2d_as_dense(kernel: Any, bias: Any, in_shape: Sequence[int], stride: int = 1, padding: int = 0) -> Dense:
    """A 2-D convolution (cross-correlation, as in deep-learning libraries) as one :class:`Dense`.

    The im2col gather is public and does not depend on the data, so the convolution is a
    linear map whose ``(h * w * cin, oh * ow * cout)`` matrix holds the kernel scattered into
    the im2col positions (a doubly block-Toeplitz matrix). Every scheme runs it as an ordinary
    dense layer; :attr:`Sequential.work_units` counts the full matrix, as the schemes compute it.

    Args:
        kernel: ``(kh, kw, cin, cout)``.
        bias: ``(cout,)``, one per output channel.
        in_shape: ``(h, w)`` or ``(h, w, cin)``; inputs are flattened in ``(row, column,
            channel)`` order.
        stride: step between patches, both axes.
        padding: zero rows/columns added on every side (padded taps get no weight).

    Returns:
        A :class:`Dense` whose outputs are flattened in ``(out_row, out_column, channel)`` order:
        ``x @ weight + bias == (im2col(x) @ kernel.reshape(-1, cout) + bias).reshape(batch, -1)``.

    Raises:
        ShapeError: a kernel that is not 4-D, whose input channels differ from ``in_shape``'s,
            that does not fit the (padded) input, or a bias of the wrong shape.
        ParameterError: bad ``stride`` or ``padding``.
        EncodingError: non-finite parameters.
    """
    k = _frozen_array(kernel)
    b = _frozen_array(bias)
    if k.ndim != 4:
        raise ShapeError(f"conv2d kernel must be (kh, kw, cin, cout), got shape {k.shape}")
    kh, kw, kcin, cout = k.shape
    if min(k.shape) < 1:
        raise ShapeError(f"conv2d kernel has an empty axis: {k.shape}")
    if b.shape != (cout,):
        raise ShapeError(f"conv2d bias must have shape ({cout},) for a kernel {k.shape}, got {b.shape}")
    (h, w, cin), (oh, ow), index = _conv_geometry(in_shape, (kh, kw), stride, padding)
    if cin != kcin:
        raise ShapeError(f"conv2d kernel {k.shape} takes {kcin} input channels, in_shape {tuple(in_shape)} has {cin}")
    positions = oh * ow
    weight = np.zeros((h * w * cin, positions, cout))
    k2 = k.reshape(kh * kw * cin, cout)
    p_idx, t_idx = np.nonzero(index >= 0)
    # Within one output position the patch taps are distinct inputs: plain assignment is exact.
    weight[index[p_idx, t_idx], p_idx, :] = k2[t_idx, :]
    return Dense(weight.reshape(h * w * cin, positions * cout), np.tile(b, positions))


def train_cnn(
    key: Any,
    x: Any,
    y: Any,
    *,
    in_shape: Sequence[int],
    channels: int = 8,
    kernel_hw: Sequence[int] = (3, 3),
    stride: int = 1,
    activation: str = "square",
    degree: int = 4,
    steps: int = 400,
    learning_rate: float = 0.01,
    l2: float = 1e-4,
    margin: float = 1.1,
) -> Sequential:
    """Train a one-convolution classifier with JAX and lower it to a :class:`Sequential`.

    Architecture: ``conv (kernel_hw, channels, stride, no padding) -> activation -> dense``
    to one logit per class, as ``Dense -> Polynomial -> Dense`` (:func:`conv2d_as_dense`).
    Training is full-batch Adam on the softmax cross-entropy plus ``l2`` times the squared
    weights; it is deterministic given ``key`` (initialization only) and the data.

    Args:
        key: JAX PRNG key for the initialization.
        x: ``(n, h * w * cin)`` training inputs, flattened in ``(row, column, channel)`` order.
        y: ``(n,)`` class labels; the classes are the sorted distinct labels.
        in_shape: ``(h, w)`` or ``(h, w, cin)``.
        channels: output channels of the convolution.
        kernel_hw: ``(kh, kw)``.
        stride: convolution stride.
        activation: ``"square"`` (``z**2``, trained as is: the model is exactly what was
            trained) or an activation :func:`fit_activation` knows (``"relu"``...), trained in
            float and then replaced by a degree-``degree`` least-squares polynomial on
            ``[-m, m]``, ``m = margin * max |pre-activation|`` over ``x``.
        degree: degree of the replacing polynomial (ignored for ``"square"``).
        steps: Adam steps.
        learning_rate: Adam step size.
        l2: weight decay on the kernel and the dense weights.
        margin: widening factor of the calibrated interval.

    Returns:
        A ``"multiclass"`` :class:`Sequential` whose ``classes`` are the sorted labels.

    Raises:
        ShapeError: ``x`` does not hold ``in_shape`` images, or the kernel does not fit.
        UnsupportedOperationError: an unknown activation.
        ParameterError: fewer than two classes, or bad hyper-parameters.
    """
    import jax
    import jax.numpy as jnp

    if activation != "square" and activation not in _ACTIVATIONS:
        raise UnsupportedOperationError(
            f"train_cnn: unknown activation {activation!r}; known: {sorted(['square', *_ACTIVATIONS])}"
        )
    if not isinstance(channels, int) or channels < 1:
        raise ParameterError(f"channels must be an int >= 1, got {channels!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ParameterError(f"steps must be an int >= 0, got {steps!r}")
    khw = tuple(kernel_hw)
    (h, w, cin), (oh, ow), index = _conv_geometry(in_shape, khw, stride, 0)
    xs = np.asarray(x, dtype=np.float64)
    if xs.ndim != 2 or xs.shape[1] != h * w * cin:
        raise ShapeError(f"train_cnn expects (n, {h * w * cin}) inputs for in_shape {(h, w, cin)}, got {xs.shape}")
    classes, y_idx = np.unique(np.asarray(y), return_inverse=True)
    if len(classes) < 2:
        raise ParameterError(f"train_cnn needs at least two classes, got {len(classes)}")
    taps, positions, n_cls = index.shape[1], oh * ow, len(classes)

    act: Any = jnp.square if activation == "square" else {
        "relu": jax.nn.relu, "tanh": jnp.tanh, "logistic": jax.nn.sigmoid, "sigmoid": jax.nn.sigmoid, "identity": lambda z: z,
    }[activation]
    patches = jnp.asarray(xs[:, index], jnp.float32)  # no padding: every index is valid
    onehot = jax.nn.one_hot(jnp.asarray(y_idx), n_cls, dtype=jnp.float32)

    k1, k2 = jax.random.split(key)
    params = {
        "k": jax.random.normal(k1, (taps, channels), jnp.float32) / math.sqrt(taps),
        "b": jnp.zeros((channels,), jnp.float32),
        "w": jax.random.normal(k2, (positions * channels, n_cls), jnp.float32) / math.sqrt(positions * channels),
        "c": jnp.zeros((n_cls,), jnp.float32),
    }

    def logits(p: dict[str, Any], pt: Any) -> Any:
        z = act(pt @ p["k"] + p["b"])
        return z.reshape(z.shape[0], -1) @ p["w"] + p["c"]

    def loss(p: dict[str, Any]) -> Any:
        ce = -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits(p, patches)), axis=1))
        return ce + l2 * (jnp.sum(p["k"] ** 2) + jnp.sum(p["w"] ** 2))

    b1, b2, eps = 0.9, 0.999, 1e-8
    grad = jax.grad(loss)

    def step(state: Any, t: Any) -> tuple[Any, None]:
        p, m, v = state
        g = grad(p)
        m = jax.tree.map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
        v = jax.tree.map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
        lr = learning_rate * jnp.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        p = jax.tree.map(lambda a, mm, vv: a - lr * mm / (jnp.sqrt(vv) + eps), p, m, v)
        return (p, m, v), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (params, _, _), _ = jax.jit(lambda s: jax.lax.scan(step, s, jnp.arange(steps, dtype=jnp.float32)))((params, zeros, zeros))
    p = {name: np.asarray(v, dtype=np.float64) for name, v in params.items()}

    conv = conv2d_as_dense(p["k"].reshape(*khw, cin, channels), p["b"], (h, w, cin), stride)
    if activation == "square":
        poly: Polynomial | None = Polynomial((0.0, 0.0, 1.0))
    elif activation == "identity":
        poly = None
    else:
        pre = xs @ conv.weight + conv.bias
        m = margin * float(np.max(np.abs(pre)))
        poly = fit_activation(activation, degree, (-m, m))
    head = Dense(p["w"], p["c"])
    layers: tuple[Layer, ...] = (conv, poly, head) if poly is not None else (conv, head)
    return Sequential(layers, kind="multiclass", classes=tuple(classes.tolist()))
