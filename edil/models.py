"""A small model IR that every scheme can run, and its builders.

Layers are immutable: :class:`Dense` (``x @ weight + bias``), :class:`Polynomial` (an
elementwise polynomial standing in for an activation), :class:`Flatten`, composed by
:class:`Sequential`. A model runs in plaintext float64 (:meth:`Sequential.forward`, the
reference) or under any scheme through :func:`encode_model`.

Non-polynomial activations (ReLU, tanh, logistic) are replaced by least-squares polynomial
fits over a stated input interval (:func:`fit_activation`); the fit's maximum error over the
interval is kept on the layer and :func:`accuracy_change` reports what the replacement costs.
Nothing is hidden: outside its interval a polynomial diverges quickly, which is why
:func:`from_sklearn` takes calibration data to choose the interval.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edil._errors import EncodingError, ShapeError, UnsupportedOperationError
from edil._scheme import Encoded, Scheme

__all__ = [
    "Dense",
    "EncodedModel",
    "Flatten",
    "Polynomial",
    "Sequential",
    "accuracy_change",
    "encode_model",
    "fit_activation",
    "from_sklearn",
]

_ACTIVATIONS = {
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


Layer = Dense | Polynomial | Flatten


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
            if not isinstance(layer, Dense | Polynomial | Flatten):
                raise TypeError(f"unsupported layer type {type(layer).__name__}")
        if self.kind not in ("regression", "binary", "multiclass"):
            raise ValueError(f"kind must be regression, binary or multiclass, got {self.kind!r}")
        dense = [layer for layer in layers if isinstance(layer, Dense)]
        for prev, nxt in zip(dense, dense[1:]):
            if prev.out_features != nxt.in_features:
                raise ShapeError(f"Dense layers do not chain: {prev.weight.shape} then {nxt.weight.shape}")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "approximations", tuple(la for la in layers if isinstance(la, Polynomial)))

    @property
    def in_features(self) -> int:
        return next(la.in_features for la in self.layers if isinstance(la, Dense))

    @property
    def mult_depth(self) -> int:
        """Multiplicative depth: 1 per dense layer, ``ceil(log2 d) + 1`` per degree-d polynomial."""
        depth = 0
        for layer in self.layers:
            if isinstance(layer, Dense):
                depth += 1
            elif isinstance(layer, Polynomial) and layer.degree >= 1:
                depth += math.ceil(math.log2(layer.degree)) + 1 if layer.degree > 1 else 1
        return depth

    def work_units(self, batch: int) -> int:
        """Multiply-accumulates for a batch: the unit of useful work in PoAI transcripts."""
        total, width = 0, self.in_features
        for layer in self.layers:
            if isinstance(layer, Dense):
                total += batch * layer.in_features * layer.out_features
                width = layer.out_features
            elif isinstance(layer, Polynomial):
                total += batch * width * max(layer.degree, 0)
        return total

    def forward(self, x: Any) -> np.ndarray:
        """Plaintext float64 forward pass (the reference every scheme is compared with)."""
        z = np.asarray(x, dtype=np.float64)
        for layer in self.layers:
            if isinstance(layer, Dense):
                if z.ndim != 2 or z.shape[1] != layer.in_features:
                    raise ShapeError(f"Dense expects (batch, {layer.in_features}) input, got {z.shape}")
                z = z @ layer.weight + layer.bias
            elif isinstance(layer, Polynomial):
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
        ValueError: bad degree or interval.
    """
    if name not in _ACTIVATIONS:
        raise UnsupportedOperationError(f"no polynomial approximation for activation {name!r}; known: {sorted(_ACTIVATIONS)}")
    if not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree must be an int >= 1, got {degree!r}")
    lo, hi = float(interval[0]), float(interval[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"interval must be finite with lo < hi, got {interval!r}")
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
) -> Sequential:
    """Build a :class:`Sequential` from a fitted scikit-learn estimator.

    Supported: ``LinearRegression``, ``LogisticRegression`` (binary and multiclass) and
    ``MLPClassifier`` (hidden activations relu/tanh/logistic/identity, replaced by
    degree-``degree`` least-squares polynomials). Output activations (logistic, softmax) are
    monotone and left to the client: the model returns logits.

    Args:
        estimator: a fitted estimator.
        degree: degree of the activation polynomials.
        calibration: sample inputs; when given, each hidden layer's interval is
            ``[-m, m]`` with ``m = margin * max |pre-activation|`` on these inputs.
        interval: the fit interval when no calibration data is given.
        margin: widening factor of the calibrated interval.

    Raises:
        UnsupportedOperationError: an estimator or activation EDIL cannot express.
        EncodingError: the estimator is not fitted.
    """
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.neural_network import MLPClassifier

    name = type(estimator).__name__
    if not isinstance(estimator, LinearRegression | LogisticRegression | MLPClassifier):
        raise UnsupportedOperationError(
            f"cannot build an EDIL model from {name}; supported: LinearRegression, LogisticRegression, MLPClassifier"
        )
    fitted_attr = "coefs_" if isinstance(estimator, MLPClassifier) else "coef_"
    if not hasattr(estimator, fitted_attr):
        raise EncodingError(f"{name} is not fitted; call fit() before encoding it")

    if isinstance(estimator, LinearRegression):
        coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))
        bias = np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))
        return Sequential((Dense(coef.T, bias),), kind="regression")
    classes = tuple(estimator.classes_.tolist())
    kind = "binary" if len(classes) == 2 else "multiclass"
    if isinstance(estimator, LogisticRegression):
        coef = np.asarray(estimator.coef_, dtype=np.float64)
        return Sequential((Dense(coef.T, np.asarray(estimator.intercept_, dtype=np.float64)),), kind=kind, classes=classes)

    act = estimator.activation
    if act not in _ACTIVATIONS:
        raise UnsupportedOperationError(f"MLPClassifier activation {act!r} has no polynomial approximation")
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
            raise TypeError(f"encode_model needs a Sequential, got {type(model).__name__}")
        if not isinstance(scheme, Scheme):
            raise TypeError(f"encode_model needs a Scheme, got {type(scheme).__name__}")
        self.model = model
        self.scheme = scheme
        self.private_weights = private_weights
        self._weights: list[tuple[Encoded, Encoded] | None] = []
        for layer in model.layers:
            if isinstance(layer, Dense) and private_weights:
                self._weights.append((scheme.encode_weights(layer.weight), scheme.encode_weights(layer.bias)))
            else:
                self._weights.append(None)

    def __call__(self, x: Encoded, **options: Any) -> Encoded:
        """Run the model on an encoded ``(batch, in_features)`` input; returns encoded outputs.

        Schemes that can compile a whole model (``Masked``) run it as one program; ``options``
        go to that fast path (e.g. ``preprocessed=`` material from :meth:`preprocess`).
        """
        s = self.scheme
        s.check(x)
        if len(x.shape) != 2 or x.shape[1] != self.model.in_features:
            raise ShapeError(f"model expects (batch, {self.model.in_features}) input, got {x.shape}")
        run_model = getattr(s, "run_model", None)
        if run_model is not None:
            return run_model(self, x, **options)
        if options:
            raise TypeError(f"scheme {s.name!r} takes no model options, got {sorted(options)}")
        return self.run_layers(x)

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

    def infer(self, x: Any) -> np.ndarray:
        """Client-side recipe: encode ``x``, run the model, decode the outputs."""
        return self.scheme.decode(self(self.scheme.encode(x)))

    def predict(self, x: Any) -> np.ndarray:
        """Encode, run, decode and turn the outputs into labels."""
        return self.model.labels(self.infer(x))


def encode_model(model: Sequential, scheme: Scheme, *, private_weights: bool = False) -> EncodedModel:
    """Bind ``model`` to ``scheme`` (see :class:`EncodedModel`).

    Raises:
        UnsupportedOperationError: ``private_weights`` under a scheme that cannot encode weights.
    """
    return EncodedModel(model, scheme, private_weights=private_weights)
