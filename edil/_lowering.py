"""Lowering an imported graph onto the model IR (shared by the ONNX and JAX importers).

An importer walks its graph in order and keeps every value as either a constant (a numpy
array) or an :class:`Affine`: an affine function of the current *segment*'s input, the output
of the last non-linear layer (or the model input). Linear operations (matrix products,
convolutions, pooling by averages, batch normalization, additions and products with
constants, reshapes) only compose into that function, so a run of them becomes one
:class:`~edil.models.Dense` layer: batch normalization folds into the layer before it,
average pooling into the layer after the activation, and no scheme spends a level or a
truncation on a reshape. A non-linear operation (an activation, a max pooling) closes the
segment: the pending function is emitted as a ``Dense`` and the operation as a layer.

Activations become least-squares polynomials (:func:`edil.models.fit_activation`) on
``[-m, m]`` with ``m = margin * max |pre-activation|`` over calibration inputs, as
:func:`edil.models.from_sklearn` chooses them, or on a given interval without calibration data.
With ``activations="exact"`` a ReLU becomes an exact :class:`~edil.models.ReLU` layer instead
(for schemes with a comparison, ``Masked`` and ``Plain``), and other activations are refused.

Values are per sample: an :class:`Affine` of shape ``s`` maps a sample's flattened segment
input (a row) to a sample of shape ``s`` flattened in C order; the batch axis is implicit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edil._errors import EncodingError, ParameterError, ShapeError, UnsupportedOperationError
from edil.models import _ACTIVATIONS, Dense, Layer, MaxPool, Polynomial, ReLU, Sequential, fit_activation

#: Most entries of one lowered dense matrix (256 MiB of float64): an imported graph whose linear
#: run would need more is refused rather than exhausting memory.
MAX_DENSE_ENTRIES = 1 << 25


@dataclass(frozen=True, eq=False)
class Affine:
    """Per sample: ``value.ravel() = segment_input @ w + b`` (``w`` ``None``: the identity).

    Attributes:
        seg: the segment this value belongs to (values of older segments are gone).
        w: ``(segment width, size)`` or ``None`` for the identity.
        b: ``(size,)``.
        shape: the per-sample shape of the value (without the batch axis).
    """

    seg: int
    w: np.ndarray | None
    b: np.ndarray
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))


class Lowering:
    """Builds a :class:`~edil.models.Sequential` from the operations an importer reports.

    Args:
        in_shape: per-sample shape of the model input (flattened in C order by the model).
        calibration: ``(n, prod(in_shape))`` sample inputs, or ``None``.
        degree: degree of the activation polynomials.
        interval: fit interval of every activation without calibration data.
        margin: widening factor of a calibrated interval.
        activations: ``"polynomial"`` (fitted polynomials) or ``"exact"`` (exact ReLU layers;
            other activations refused).
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        *,
        calibration: np.ndarray | None,
        degree: int,
        interval: tuple[float, float],
        margin: float,
        activations: str = "polynomial",
    ) -> None:
        if activations not in ("polynomial", "exact"):
            raise ParameterError(f"activations must be 'polynomial' or 'exact', got {activations!r}")
        self.activations = activations
        if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
            raise ParameterError(f"degree must be an int >= 1, got {degree!r}")
        if not (isinstance(margin, int | float) and math.isfinite(margin) and margin >= 1.0):
            raise ParameterError(f"margin must be a finite number >= 1, got {margin!r}")
        self.in_shape = tuple(int(d) for d in in_shape)
        self.layers: list[Layer] = []
        self.seg = 0
        self.degree = degree
        self.interval = (float(interval[0]), float(interval[1]))
        self.margin = float(margin)
        width = int(math.prod(self.in_shape))
        if calibration is not None:
            z = np.asarray(calibration, dtype=np.float64)
            if z.ndim < 1 or z.shape[0] < 1 or z.size != z.shape[0] * width:
                raise ShapeError(f"calibration must hold samples of shape {self.in_shape}, got an array of shape {z.shape}")
            z = z.reshape(z.shape[0], width)
            if not np.all(np.isfinite(z)):
                raise EncodingError("calibration data holds non-finite values")
            self.z: np.ndarray | None = z
        else:
            self.z = None

    def input(self) -> Affine:
        """The model input: the identity of segment 0."""
        return Affine(0, None, np.zeros(int(math.prod(self.in_shape))), self.in_shape)

    # --- linear operations -------------------------------------------------------------------
    def check(self, v: Affine, where: str) -> None:
        """Refuse a value of an older segment: the graph branches around a non-linear layer."""
        if v.seg != self.seg:
            raise UnsupportedOperationError(
                f"{where} reads a value computed before a later non-linear layer (a skip or parallel branch); "
                "EDIL models are sequential: every non-linear layer must consume the one current value"
            )

    def linear(self, v: Affine, fn: Callable[[np.ndarray], np.ndarray], offset: Any = None) -> Affine:
        """``v`` followed by the linear map ``fn`` (then ``+ offset``).

        ``fn`` maps a stack of samples ``(rows, *v.shape)`` to ``(rows, *out_shape)``; it is
        applied to the rows of ``v``'s matrix (the identity's, for an identity) and to its
        offset, which composes the two affine maps exactly.

        Raises:
            ShapeError: the composed matrix would exceed :data:`MAX_DENSE_ENTRIES`.
        """
        _check_entries(v.size if v.w is None else v.w.shape[0], v.size)
        rows = np.eye(v.size) if v.w is None else v.w
        w = np.asarray(fn(rows.reshape(rows.shape[0], *v.shape)), dtype=np.float64)
        out_shape = tuple(int(d) for d in w.shape[1:])
        _check_entries(rows.shape[0], math.prod(out_shape))
        b = np.asarray(fn(v.b.reshape(1, *v.shape)), dtype=np.float64).reshape(-1)
        out = Affine(v.seg, w.reshape(rows.shape[0], -1), b, out_shape)
        return out if offset is None else self.offset(out, offset)

    def reshape(self, v: Affine, shape: tuple[int, ...]) -> Affine:
        """The same values under another per-sample shape (C order: nothing moves)."""
        shape = tuple(int(d) for d in shape)
        if math.prod(shape) != v.size:
            raise ShapeError(f"cannot reshape a sample of shape {v.shape} ({v.size} values) to {shape}")
        return Affine(v.seg, v.w, v.b, shape)

    def broadcast(self, v: Affine, shape: tuple[int, ...]) -> Affine:
        """``v`` broadcast to the per-sample ``shape`` (a linear map)."""
        if tuple(shape) == v.shape:
            return v
        return self.linear(v, lambda r: np.broadcast_to(r, (r.shape[0], *shape)).copy())

    def offset(self, v: Affine, c: Any) -> Affine:
        """``v + c`` for a per-sample constant ``c`` (broadcast like numpy)."""
        c = np.asarray(c, dtype=np.float64)
        shape = np.broadcast_shapes(v.shape, c.shape)
        v = self.broadcast(v, shape)
        return Affine(v.seg, v.w, v.b + np.broadcast_to(c, shape).reshape(-1), v.shape)

    def scale(self, v: Affine, c: Any) -> Affine:
        """``v * c`` elementwise for a per-sample constant ``c`` (broadcast like numpy)."""
        c = np.asarray(c, dtype=np.float64)
        return self.linear(v, lambda r: r * c)

    def add(self, a: Affine, b: Affine, where: str) -> Affine:
        """``a + b`` of two values of the current segment."""
        self.check(a, where)
        self.check(b, where)
        shape = np.broadcast_shapes(a.shape, b.shape)
        a, b = self.broadcast(a, shape), self.broadcast(b, shape)
        wa = np.eye(a.size) if a.w is None else a.w
        wb = np.eye(b.size) if b.w is None else b.w
        return Affine(a.seg, wa + wb, a.b + b.b, a.shape)

    # --- non-linear operations ---------------------------------------------------------------
    def _flush(self, v: Affine, where: str) -> None:
        """Emit the pending affine map of ``v`` as a Dense layer (none for an identity, except
        before the first layer: a model starts with a layer that fixes its input width)."""
        self.check(v, where)
        first = not any(isinstance(la, Dense | MaxPool) for la in self.layers)
        if v.w is None and not v.b.any() and not first:
            return
        if v.w is None:
            _check_entries(v.size, v.size)
        dense = Dense(np.eye(v.size) if v.w is None else v.w, v.b)
        self.layers.append(dense)
        if self.z is not None:
            self.z = self.z @ dense.weight + dense.bias

    def _next_segment(self) -> None:
        self.seg += 1

    def activation(self, v: Affine, name: str, where: str) -> Affine:
        """A polynomial standing in for activation ``name`` (``relu``, ``tanh``, ``logistic``) on ``v``.

        The polynomial is fitted on the interval ``[lo, hi]`` of the pre-activation ``z`` and
        then written in the normalized variable ``t = (z - c) / h`` (``c``, ``h``: centre and
        half-width), whose map from ``z`` folds into the pending dense layer for free. On
        ``t`` in ``[-1, 1]`` the coefficients are of the size of the activation's values: a
        wide interval no longer gives high powers tiny coefficients, which fixed point
        (``Masked``) would round to zero and which cost ``CKKS`` extra levels.

        With ``activations="exact"``: an exact :class:`~edil.models.ReLU` layer for ``relu``;
        any other activation raises :class:`~edil.UnsupportedOperationError`.
        """
        self.check(v, where)
        if self.activations == "exact":
            if name != "relu":
                raise UnsupportedOperationError(
                    f"{where}: activation {name!r} has no exact layer (only relu has one); import with "
                    "activations='polynomial' to fit a polynomial"
                )
            return self._exact_relu(v, where)
        if self.z is not None:
            pre = self.z if v.w is None else self.z @ v.w
            pre = pre + v.b
            m = self.margin * float(np.max(np.abs(pre)))
            lo, hi = (-m, m) if m > 0 else self.interval
        else:
            lo, hi = self.interval
        fit = fit_activation(name, self.degree, (lo, hi))
        c, h = (lo + hi) / 2.0, (hi - lo) / 2.0
        coeffs = np.polynomial.Polynomial(fit.coeffs)(np.polynomial.Polynomial([c, h])).coef
        coeffs = np.pad(coeffs, (0, self.degree + 1 - len(coeffs)))
        self._flush(self.scale(self.offset(v, -c), 1.0 / h), where)
        self.layers.append(Polynomial(tuple(coeffs), activation=name, interval=(-1.0, 1.0), max_error=fit.max_error))
        if self.z is not None:
            self.z = _ACTIVATIONS[name](self.z * h + c)
        self._next_segment()
        return Affine(self.seg, None, np.zeros(v.size), v.shape)

    def _exact_relu(self, v: Affine, where: str) -> Affine:
        """An exact :class:`~edil.models.ReLU` on ``v`` (no fit, no normalization: nothing to fold)."""
        self._flush(v, where)
        self.layers.append(ReLU())
        if self.z is not None:
            self.z = np.maximum(self.z, 0.0)
        self._next_segment()
        return Affine(self.seg, None, np.zeros(v.size), v.shape)

    def max_pool(self, v: Affine, index: np.ndarray, out_shape: tuple[int, ...], where: str) -> Affine:
        """A :class:`~edil.models.MaxPool` over ``v`` (flat input positions per output and tap)."""
        self._flush(v, where)
        layer = MaxPool(index, v.size, name=where)
        self.layers.append(layer)
        if self.z is not None:
            self.z = layer(self.z)
        self._next_segment()
        return Affine(self.seg, None, np.zeros(layer.out_features), tuple(out_shape))

    def finish(self, v: Affine, *, kind: str, classes: Any, where: str) -> Sequential:
        """The model whose output is ``v`` (flattened per sample)."""
        self._flush(v, where)
        return Sequential(tuple(self.layers), kind=kind, classes=None if classes is None else tuple(classes))


def _check_entries(rows: int, cols: int) -> None:
    if rows * cols > MAX_DENSE_ENTRIES:
        raise ShapeError(
            f"the imported model would need a {rows}x{cols} dense layer, more than EDIL's limit of "
            f"{MAX_DENSE_ENTRIES} entries (lowered convolutions are dense: use smaller inputs or fewer channels)"
        )


def windows(
    hw: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int], pads: tuple[int, int, int, int]
) -> tuple[tuple[int, int], np.ndarray]:
    """Pooling windows of an ``hw`` plane: ``((oh, ow), index)``.

    ``index`` is ``(oh * ow, kh * kw)``: for each output position (row-major) the flat input
    position of each window tap, ``-1`` for a tap in the padding. ``pads`` is ``(top, left,
    bottom, right)``; the output size rounds down (``floor((h + pt + pb - kh) / sh) + 1``).

    Raises:
        ShapeError: the window does not fit the padded plane, or a window lies in the padding only.
    """
    (h, w), (kh, kw), (sh, sw), (pt, pl, pb, pr) = hw, kernel, strides, pads
    if min(kh, kw, sh, sw) < 1 or min(pads) < 0:
        raise ShapeError(f"bad window: kernel {kernel}, strides {strides}, pads {pads}")
    if kh > h + pt + pb or kw > w + pl + pr:
        raise ShapeError(f"a {kh}x{kw} window does not fit a {h}x{w} plane with pads {pads}")
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    r = (np.arange(oh) * sh - pt)[:, None, None, None] + np.arange(kh)[None, None, :, None]
    c = (np.arange(ow) * sw - pl)[None, :, None, None] + np.arange(kw)[None, None, None, :]
    r, c = np.broadcast_arrays(r, c)
    index = np.where((r >= 0) & (r < h) & (c >= 0) & (c < w), r * w + c, -1).reshape(oh * ow, kh * kw)
    if np.any((index < 0).all(axis=1)):
        raise ShapeError(f"a {kh}x{kw} window with pads {pads} lies wholly in the padding of a {h}x{w} plane")
    return (oh, ow), index


def average_pool_matrix(index: np.ndarray, plane: int, *, count_pad: bool) -> np.ndarray:
    """``(plane, outputs)`` matrix of the mean over each window (padding taps count as zeros
    when ``count_pad``, else they are left out of the count)."""
    taps = index.shape[1]
    m = np.zeros((plane, index.shape[0]))
    for j, row in enumerate(index):
        valid = row[row >= 0]
        m[valid, j] += 1.0 / (taps if count_pad else len(valid))
    return m


def max_pool_index(index: np.ndarray, channels: int, plane: int) -> np.ndarray:
    """The :class:`~edil.models.MaxPool` index over ``(channel, row, column)`` inputs: per
    channel the window taps, a padding tap replaced by its window's first valid tap (the
    maximum of a window is unchanged by repeating one of its elements)."""
    first = np.array([row[row >= 0][0] for row in index])
    filled = np.where(index >= 0, index, first[:, None])
    return (np.arange(channels)[:, None, None] * plane + filled[None]).reshape(channels * index.shape[0], -1)
