"""Fixed-point encoding of real numbers into the ring Z_2^64 (two's complement).

Besides encoding, :class:`FixedPoint` offers the precision checks a protocol runs before it
commits to a model (see "What the checks cover" on the class).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edil._errors import EncodingError, OverflowRangeError, ParameterError, ShapeError, UnsupportedOperationError

__all__ = ["TRUNCATION_BOUND", "FixedPoint", "Headroom", "square_split"]

#: A value the truncation protocol of ``Masked`` is given must satisfy ``|x| < 2^62`` (as a
#: signed ring element): ``x + 2^62`` then lies in ``[0, 2^63)`` and the wrap is a linear
#: function of one shared bit.
TRUNCATION_BOUND = 1 << 62

_MAX_FRAC_BITS = 28


#: The largest ``|c_2 / s|`` (in reals) :func:`square_split` accepts: the ``x^2`` term then errs by
#: at most this many units in the last place (``u`` carries one), instead of ``|c_2|`` of one.
_SPLIT_MAX_RATIO = 16


def square_split(coeffs: Sequence[int], frac_bits: int) -> tuple[int, int] | None:
    """How ``Masked`` evaluates ``c_0 + c_1 x + c_2 x^2 + c_4 x^4`` with one truncation fewer, or ``None``.

    For encoded coefficients (ints with ``frac_bits`` fractional bits) of degree 4 with
    ``c_3 = 0`` (a ReLU fit's shape) and ``|c_4|`` not exactly 1: with ``s = sqrt(|c_4|)``, the
    scaled square ``u = s x^2`` comes from ``x^2``'s product in one truncation by ``2f`` bits,
    and ``c_4 x^4 = +-u^2`` enters the final sum untruncated, so ``x^4`` is never truncated on
    its own. Returns ``(S, C_2)``: ``S = round(s 2^f)`` and ``C_2 = round(c_2 2^f / S)``, the
    coefficient of ``u`` (``c_2 / s`` in reals). Refused (``None``) when ``|c_2 / s|`` exceeds
    16, where ``u``'s one-unit error would weigh more than that in the ``x^2`` term, or when
    ``S`` rounds to 0.
    """
    if len(coeffs) != 5 or coeffs[3] != 0 or coeffs[4] == 0 or abs(coeffs[4]) == 1 << frac_bits:
        return None
    big_s = round(math.sqrt(abs(coeffs[4]) * 2.0**frac_bits))
    if big_s < 1:
        return None
    c2 = round(coeffs[2] * 2**frac_bits / big_s)
    if abs(c2) > _SPLIT_MAX_RATIO << frac_bits:
        return None
    return big_s, c2


@dataclass(frozen=True)
class Headroom:
    """Worst-case magnitudes of one layer's fixed-point evaluation (see :meth:`FixedPoint.dense_headroom`).

    Attributes:
        product: the largest ``|ring value|`` any pre-truncation product or sum of the layer
            can reach (an exact integer: ``2 * frac_bits`` fractional bits), to compare with
            :data:`TRUNCATION_BOUND`.
        output: a bound on ``|output|`` in reals, truncation carries included: the
            ``bound_in`` of the next layer.
        frac_bits: the resolution it was computed at.
    """

    product: int
    output: float
    frac_bits: int

    @property
    def fits(self) -> bool:
        """Whether every pre-truncation value stays below :data:`TRUNCATION_BOUND`."""
        return self.product < TRUNCATION_BOUND

    @property
    def bits(self) -> int:
        """Bits of :attr:`product` (62 or fewer fit)."""
        return int(self.product).bit_length()


@dataclass(frozen=True)
class FixedPoint:
    """Signed fixed point with ``frac_bits`` fractional bits, stored in ``uint64``.

    A real ``x`` is encoded as ``round(x * 2^frac_bits) mod 2^64``. Encoding refuses NaN, inf
    and any ``|x| >= max_abs`` with :class:`~edil.EncodingError` /
    :class:`~edil.OverflowRangeError`: a value is never silently wrapped.

    The accepted range is ``|x| < max_abs = 2^(31 - frac_bits)`` (32768 for 16 bits), so that
    the product of two encoded values stays below ``2^62`` (see :attr:`max_abs`).

    What the checks cover
        :meth:`encode` refuses only what cannot be represented at all (non-finite values and
        ``|x| >= max_abs``); it rounds everything else to the nearest multiple of
        ``2^-frac_bits``, silently, like any fixed-point encoding.

        *Underflow* (:meth:`check_resolution`): a nonzero value underflows when its encoding
        loses more than half of its magnitude (it encodes to 0, or to one unit in the last place
        ``2^-frac_bits`` while being below two thirds of it). A protocol calls this on public
        weights and polynomial coefficients before running a model, so that a model is refused,
        naming the value, instead of being run with terms silently dropped; given the inputs'
        ``bound``, only losses that could show in the layer's output are refused.

        *Ring overflow* (:meth:`dense_headroom`, :meth:`poly_headroom`, :meth:`check_headroom`):
        the worst case, over every input with ``|x| <= bound_in``, of each pre-truncation value a
        ``Masked`` layer forms (the dot products of a dense layer; each power's product and the
        coefficient combination of a polynomial), computed exactly on the encoded integers with
        the +-1-unit carries of truncation. The triangle inequality makes it an upper bound (it
        cannot miss an overflow; it may refuse a layer whose signs would cancel). What it does
        not cover: inputs outside ``bound_in``, which the caller asserts (e.g. a calibrated
        activation interval), and shares themselves, which wrap by design.

    Example:
        >>> fp = FixedPoint(frac_bits=16)
        >>> fp.decode(fp.encode([1.5, -2.25])).tolist()
        [1.5, -2.25]
    """

    frac_bits: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.frac_bits, int) or isinstance(self.frac_bits, bool):
            raise UnsupportedOperationError(f"frac_bits must be an int, got {type(self.frac_bits).__name__}")
        if not 1 <= self.frac_bits <= 28:
            raise ParameterError(f"frac_bits must be in [1, 28], got {self.frac_bits}")

    @property
    def scale(self) -> int:
        """``2^frac_bits``."""
        return 1 << self.frac_bits

    @property
    def max_abs(self) -> float:
        """Largest magnitude (exclusive) accepted by :meth:`encode`: ``2^(31 - frac_bits)``.

        The product of two encodable values then stays below ``2^62`` in the ring (``2*frac_bits``
        fractional bits), the window the truncation protocol of ``Masked`` needs.
        """
        return float(2 ** (31 - self.frac_bits))

    def encode(self, x: Any) -> np.ndarray:
        """Encode reals as ring elements.

        Args:
            x: array-like of real numbers.

        Returns:
            ``numpy.uint64`` array of the same shape.

        Raises:
            EncodingError: ``x`` is not numeric or holds NaN/inf.
            OverflowRangeError: some ``|x| >= max_abs``.
        """
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise EncodingError(f"cannot encode a value of type {type(x).__name__} as fixed point") from exc
        if not np.all(np.isfinite(arr)):
            bad = arr[~np.isfinite(arr)].ravel()[0]
            raise EncodingError(f"cannot encode non-finite value {bad!r} as fixed point")
        if arr.size:
            peak = float(np.max(np.abs(arr)))
            if peak >= self.max_abs:
                raise OverflowRangeError(
                    f"value {peak!r} is outside the fixed-point range |x| < {self.max_abs!r} (frac_bits={self.frac_bits})"
                )
        return np.rint(arr * self.scale).astype(np.int64).view(np.uint64)

    # --- precision checks ---------------------------------------------------------------------
    def check_resolution(self, values: Any, what: str, *, bound: Any = None, axis: int | None = None) -> None:
        """Refuse values that underflow the resolution ``2^-frac_bits``.

        A nonzero value *underflows* when its encoding loses more than half of its magnitude:
        ``|decode(encode(v)) - v| > |v| / 2`` (it encodes to 0, or is below two thirds of a unit
        in the last place). Values that do not underflow are never refused (their rounding
        error is at most half a unit, like any encoded value).

        Args:
            values: the real values to check (any shape), e.g. a dense weight or the
                coefficients of a polynomial.
            what: where they are, for the message, e.g. ``"layer 2 weight"`` or ``"layer 3
                polynomial coefficient"``; the index of the offending element is appended.
            bound: optional largest magnitude each value multiplies (broadcast to ``values``),
                e.g. ``B**k`` for coefficient ``k`` over inputs ``|x| <= B``, or ``B`` for the
                weights of a layer whose inputs are bounded by ``B``. With it, an underflowing
                value is refused only when the magnitude it loses times ``bound`` reaches one
                unit in the last place (``2^-frac_bits``): a term whose loss cannot show at
                this resolution (such as the ``1e-18`` numerical zeros of a least-squares fit)
                passes. Without it, every underflowing value is refused.
            axis: with ``bound``, the axis along which losses add up in one output (0 for a
                dense weight ``(in, out)``: the dropped terms of one column land in one output);
                the sum of the underflowing values' losses times ``bound`` is then compared with
                one unit. ``None`` judges each value alone.

        Raises:
            EncodingError: a value underflows; the message names the value, its place, the
                resolution, and the smallest ``frac_bits`` that would hold it (or says that
                none up to 28 does).
            ParameterError: ``axis`` without ``bound``, or a negative or non-finite ``bound``.
        """
        arr = self._reals(values)
        if axis is not None and bound is None:
            raise ParameterError("check_resolution: axis needs a bound")
        m = None
        if bound is not None:
            m = np.broadcast_to(np.asarray(bound, dtype=np.float64), arr.shape)
            if not np.all(np.isfinite(m)) or np.any(m < 0):
                raise ParameterError("check_resolution: bound must be finite and >= 0")
        bad = self._underflow(arr, self.frac_bits, m, axis)
        if not bad.any():
            return
        flat = np.flatnonzero(bad)
        idx = np.unravel_index(int(flat[np.argmax(np.abs(arr.ravel()[flat]))]), arr.shape)
        v = float(arr[idx])
        dec = float(np.rint(v * self.scale) / self.scale) + 0.0  # + 0.0: no "-0.0" in the message
        need = next((f for f in range(self.frac_bits + 1, _MAX_FRAC_BITS + 1) if self._holds(arr, bad, f, m, axis)), None)
        where = f"{what} [{', '.join(str(int(i)) for i in idx)}]" if arr.ndim else what
        more = f" (and {len(flat) - 1} more)" if len(flat) > 1 else ""
        if need is None:
            hint = (
                f"no frac_bits up to {_MAX_FRAC_BITS} holds it"
                + ("" if m is None else " to within one unit of the current resolution at this bound")
                + ": rescale the model (e.g. move the small factor into the next layer, or narrow the input "
                "interval) or set the value to 0 if it is meant to be 0"
            )
        else:
            hint = f"use frac_bits >= {need} (the encodable range is then |x| < {2.0 ** (31 - need):g})"
        raise EncodingError(
            f"{where}: value {v!r} underflows the fixed-point resolution 2^-{self.frac_bits} (frac_bits={self.frac_bits}): "
            f"it would encode to {dec!r}{more}; {hint}"
        )

    @staticmethod
    def _reals(values: Any) -> np.ndarray:
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise EncodingError(f"cannot check a value of type {type(values).__name__} as fixed point") from exc
        if not np.all(np.isfinite(arr)):
            raise EncodingError("cannot check non-finite values as fixed point")
        return arr

    @staticmethod
    def _underflow(arr: np.ndarray, frac_bits: int, bound: np.ndarray | None, axis: int | None) -> np.ndarray:
        """Mask of the values refused at ``frac_bits`` (see :meth:`check_resolution`)."""
        y = arr * float(1 << frac_bits)
        loss = np.abs(np.rint(y) - y)  # in units of 2^-frac_bits
        under = (arr != 0) & (loss > np.abs(y) / 2)
        if bound is None:
            return under
        seen = np.where(under, loss * bound, 0.0)
        if axis is None:
            return under & (seen >= 1.0)
        total = np.sum(seen, axis=axis, keepdims=True)
        return under & (total >= 1.0)

    def _holds(self, arr: np.ndarray, refused: np.ndarray, frac_bits: int, bound: np.ndarray | None, axis: int | None) -> bool:
        """Whether ``frac_bits`` holds the ``refused`` values: none of them underflows there and,
        given a bound, what each (or each output, along ``axis``) loses times the bound stays
        below one unit of the *current* resolution ``2^-self.frac_bits``."""
        y = arr * float(1 << frac_bits)
        loss = np.abs(np.rint(y) - y)
        if np.any(refused & (loss > np.abs(y) / 2)):
            return False
        if bound is None:
            return True
        seen = np.where(refused, loss * bound * 2.0 ** (self.frac_bits - frac_bits), 0.0)
        if axis is not None:
            seen = np.sum(seen, axis=axis)
        return bool(np.all(seen < 1.0))

    def _units(self, bound_in: float) -> int:
        """Largest ``|encoded input|`` for ``|x| <= bound_in``, one truncation carry included."""
        b = float(bound_in)
        if not math.isfinite(b) or b < 0:
            raise ParameterError(f"bound_in must be finite and >= 0, got {bound_in!r}")
        return math.ceil(b * self.scale) + 1

    def _encoded_abs(self, values: Any, what: str) -> np.ndarray:
        arr = self._reals(values)
        if arr.size and float(np.max(np.abs(arr))) >= self.max_abs:
            raise OverflowRangeError(f"{what}: a value is outside the fixed-point range |x| < {self.max_abs!r}")
        return np.abs(np.rint(arr * self.scale)).astype(np.int64)

    def dense_headroom(self, bound_in: float, weight: Any, bias: Any = None) -> Headroom:
        """Worst case of a dense layer ``x @ weight (+ bias)`` for every input with ``|x| <= bound_in``.

        ``product`` is ``max_j sum_i |enc(w_ij)| * (ceil(bound_in * 2^f) + 1)``: the largest
        pre-truncation dot product (``2f`` fractional bits), public or shared weights alike.
        ``output`` bounds the truncated result plus the bias.

        Raises:
            OverflowRangeError: a weight or bias outside the encodable range.
            ShapeError, ParameterError: ``weight`` is not 2-D, or a bad ``bound_in``.
        """
        return self._dense_bounds(weight, bias, lambda: self._units(bound_in), self.scale, "dense_headroom")

    def _dense_bounds(self, weight: Any, bias: Any, units: Callable[[], int], shift: int, what: str) -> Headroom:
        """:class:`Headroom` of a dense layer whose encoded inputs are at most ``units()`` (asked once the
        weight is checked) and whose product is truncated by dividing by ``shift`` (``2^f``, or ``2^2f``
        fed a polynomial's untruncated sum)."""
        w = self._encoded_abs(weight, "dense weight")
        if w.ndim != 2:
            raise ShapeError(f"{what} needs a 2-D weight (in, out), got shape {w.shape}")
        x = units()
        # |w_enc| < 2^31, so the column sums fit int64 below 2^32 rows; the products are Python ints.
        col = [int(c) for c in w.sum(axis=0, dtype=np.int64)] if w.size else [0]
        b = [0] * len(col)
        if bias is not None:
            b = [int(v) for v in np.broadcast_to(self._encoded_abs(bias, "dense bias"), (len(col),))]
        product = max(c * x for c in col)
        out_units = max(-(-c * x // shift) + 1 + bj for c, bj in zip(col, b))
        return Headroom(product, out_units / self.scale, self.frac_bits)

    def poly_headroom(self, bound_in: float, coeffs: Sequence[float]) -> Headroom:
        """Worst case of ``Masked``'s polynomial evaluation for every input with ``|x| <= bound_in``.

        Follows the protocol's steps: ``x^i`` is the truncated product of ``x^(i/2)`` squared
        (even ``i``) or of ``x^(i-1)`` and ``x`` (odd ``i``); then ``sum_{k>=1} c_k x^k`` is
        truncated once and ``c_0`` added. Where ``Masked`` evaluates a ReLU-shaped degree 4 as
        :func:`square_split` says (``S x^2``, its ``2f`` truncation ``u``, then
        ``c_1 x + C_2 u +- u^2``), the bound covers both evaluations. ``product`` is the largest of those pre-truncation
        values, each bounded on the encoded integers with a +-1-unit carry per truncation.

        Raises:
            OverflowRangeError: a coefficient outside the encodable range.
            ParameterError: no coefficients, or a bad ``bound_in``.
        """
        product, acc, c0 = self._poly_bounds(bound_in, coeffs)
        out_units = (-(-acc // self.scale) + 1 if len(np.ravel(coeffs)) > 1 else 0) + c0
        return Headroom(product, out_units / self.scale, self.frac_bits)

    def _poly_bounds(self, bound_in: float, coeffs: Sequence[float]) -> tuple[int, int, int]:
        """``(product, acc, |enc(c_0)|)`` of :meth:`poly_headroom`: the largest pre-truncation value, and
        the bound on the sum ``sum_{k>=1} c_k x^k`` before its truncation (``2f`` fractional bits; 0
        for a constant), over either evaluation."""
        arr = np.asarray(coeffs, dtype=np.float64).ravel()
        c = [int(v) for v in self._encoded_abs(arr, "polynomial coefficient")]
        if not c:
            raise ParameterError("poly_headroom needs at least one coefficient")
        powers = [self._units(bound_in)]  # powers[i - 1] bounds |enc(x^i)|
        product = 0
        for i in range(2, len(c)):
            q = powers[i // 2 - 1] ** 2 if i % 2 == 0 else powers[i - 2] * powers[0]
            product = max(product, q)
            powers.append(-(-q // self.scale) + 1)
        acc = sum(ck * pk for ck, pk in zip(c[1:], powers))
        split = square_split([int(v) for v in np.rint(arr * self.scale)], self.frac_bits)
        if split is not None:  # Masked's steps: S x^2 (3f bits), u = its 2f truncation, c_1 x + C_2 u +- u^2
            x = powers[0]
            sz = split[0] * x * x
            u = -(-sz // self.scale**2) + 1
            product = max(product, sz)
            acc = max(acc, c[1] * x + abs(split[1]) * u + u * u)  # the bound holds for either evaluation
        return max(product, acc), acc, c[0]

    def folded_dense_headroom(self, bound_in: float, coeffs: Sequence[float], weight: Any, bias: Any = None) -> Headroom:
        """A dense layer fed a polynomial's untruncated sum: the worst case for polynomial inputs ``|x| <= bound_in``.

        ``Masked`` may leave the sum of a polynomial followed by a dense layer at ``2f``
        fractional bits (``c_0`` joins it at that scale) and truncate the dense layer's product by
        ``2f`` instead: one truncation of the (usually wide) hidden layer fewer. ``product`` is
        ``max_j sum_i |enc(w_ij)| * (acc + |enc(c_0)| 2^f)`` with ``acc`` the polynomial's
        pre-truncation sum (:meth:`poly_headroom`); ``output`` bounds the truncated result plus
        the bias.

        Raises:
            OverflowRangeError: a weight, bias or coefficient outside the encodable range.
            ShapeError, ParameterError: ``weight`` is not 2-D, no coefficients, or a bad ``bound_in``.
        """
        def units() -> int:
            _, acc, c0 = self._poly_bounds(bound_in, coeffs)
            return acc + c0 * self.scale

        return self._dense_bounds(weight, bias, units, self.scale**2, "folded_dense_headroom")

    def folds(self, poly: Any, dense: Any) -> bool:
        """Whether ``Masked`` leaves ``poly``'s sum untruncated for the ``dense`` layer after it.

        Only a fitted activation (a polynomial with an ``interval``: its inputs lie there, the
        assumption its fit makes) and only when :meth:`folded_dense_headroom` fits over the whole
        interval, so that the decision is the model's, whatever the inputs' bound.
        """
        if getattr(poly, "interval", None) is None:
            return False
        reach = max(abs(float(poly.interval[0])), abs(float(poly.interval[1])))
        try:
            return self.folded_dense_headroom(reach, poly.coeffs, dense.weight, dense.bias).fits
        except (OverflowRangeError, EncodingError):
            return False

    def check_headroom(self, headroom: Headroom, what: str) -> None:
        """Refuse a layer whose pre-truncation values could reach :data:`TRUNCATION_BOUND` (``2^62``).

        Args:
            headroom: from :meth:`dense_headroom` or :meth:`poly_headroom`.
            what: the layer, for the message (e.g. ``"layer 3 (dense)"``).

        Raises:
            OverflowRangeError: the worst case does not fit; the message gives its size in bits
                and the ``frac_bits`` that would make it fit (each bit less shrinks the products
                by two bits), if any.
        """
        if headroom.fits:
            return
        over = headroom.bits - 62
        fewer = headroom.frac_bits - (over + 1) // 2 - 1
        hint = f"use frac_bits <= {fewer}, " if fewer >= 1 else ""
        raise OverflowRangeError(
            f"{what}: a pre-truncation value could reach 2^{headroom.bits - 1}..2^{headroom.bits} "
            f"(frac_bits={headroom.frac_bits}); the truncation protocol needs |x| < 2^62 and the ring would wrap. "
            f"To fit: {hint}smaller inputs (a narrower calibrated interval) or smaller weights/coefficients"
        )

    def check_model(self, model: Any, bound: float | None, *, fold: bool = False) -> None:
        """Refuse a model this fixed point would evaluate wrongly, before anything runs.

        What the secret-sharing schemes check (``Masked``, ``Replicated``: both truncate at
        this encoding in a window of ``2^62``), layer by layer: *underflow*, a weight or
        polynomial coefficient whose encoding loses more than half of it in a way that can show
        in the layer's output; and *ring overflow*, the worst case of every pre-truncation value
        over all inputs with ``|x| <= bound``, propagated through the layers, must stay below
        ``2^62``. A polynomial fitted on an interval (an activation) takes its inputs to lie in
        that interval, the assumption its fit already makes. With ``bound`` unknown (``None``:
        a value not straight from an ``encode``), the first layers are judged for inputs of
        magnitude 1 and overflow is checked from the first fitted activation on. Exact ReLU and
        max pooling layers do not grow the bound (``|max| <= max |x|``) and compare exactly for
        every ring value: nothing to check.

        Args:
            model: a :class:`~edil.models.Sequential`.
            bound: largest ``|input|``, or ``None``.
            fold: check the evaluation ``Masked`` runs, where a fitted activation followed by a
                dense layer leaves its sum at ``2f`` fractional bits wherever :meth:`folds` says
                so (the dense layer then checked by :meth:`folded_dense_headroom`).

        Raises:
            EncodingError: a weight or coefficient underflows (the message names it and the
                ``frac_bits`` that would hold it).
            OverflowRangeError: a layer could pass ``2^62`` in the ring for some input.
        """
        from edil.models import Dense, Polynomial  # the models module imports this one

        b = bound
        folded: tuple[float, Any] | None = None  # the folded polynomial's input bound and coefficients
        layers = list(model.layers)
        for i, layer in enumerate(layers, 1):
            unit = 1.0 if b is None else max(b, 2.0 ** -self.frac_bits)
            if isinstance(layer, Dense):
                self.check_resolution(layer.weight, f"layer {i} weight", bound=unit, axis=0)
                if folded is not None:
                    h = self.folded_dense_headroom(folded[0], folded[1], layer.weight, layer.bias)
                    self.check_headroom(h, f"layer {i} (dense, fed the polynomial's untruncated sum)")
                    b, folded = h.output, None
                elif b is not None:
                    h = self.dense_headroom(b, layer.weight, layer.bias)
                    self.check_headroom(h, f"layer {i} (dense)")
                    b = h.output
            elif isinstance(layer, Polynomial):
                if layer.interval is not None:  # a fitted activation: its inputs lie where the fit holds
                    reach = max(abs(float(layer.interval[0])), abs(float(layer.interval[1])))
                    b = reach if b is None else min(b, reach)
                    unit = max(b, 2.0 ** -self.frac_bits)
                c = np.asarray(layer.coeffs, dtype=np.float64)
                self.check_resolution(c, f"layer {i} polynomial coefficient", bound=unit ** np.arange(c.size))
                if b is not None:
                    h = self.poly_headroom(b, layer.coeffs)
                    self.check_headroom(h, f"layer {i} (polynomial)")
                    if fold and i < len(layers) and isinstance(layers[i], Dense) and self.folds(layer, layers[i]):
                        folded = (b, layer.coeffs)
                    b = h.output

    def decode(self, u: Any) -> np.ndarray:
        """Decode ring elements (two's complement) back to ``float64`` reals."""
        arr = np.asarray(u)
        if arr.dtype != np.uint64:
            raise EncodingError(f"fixed-point decode needs uint64 ring elements, got dtype {arr.dtype}")
        return arr.view(np.int64).astype(np.float64) / self.scale
