"""Fixed-point encoding of real numbers into the ring Z_2^64 (two's complement)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edil._errors import EncodingError, OverflowRangeError

__all__ = ["FixedPoint"]


@dataclass(frozen=True)
class FixedPoint:
    """Signed fixed point with ``frac_bits`` fractional bits, stored in ``uint64``.

    A real ``x`` is encoded as ``round(x * 2^frac_bits) mod 2^64``. Encoding refuses NaN, inf
    and any ``|x| >= max_abs`` with :class:`~edil.EncodingError` /
    :class:`~edil.OverflowRangeError`: a value is never silently wrapped.

    The accepted range is ``|x| < max_abs = 2^(31 - frac_bits)`` (32768 for 16 bits), so that
    the product of two encoded values stays below ``2^62`` (see :attr:`max_abs`).

    Example:
        >>> fp = FixedPoint(frac_bits=16)
        >>> fp.decode(fp.encode([1.5, -2.25])).tolist()
        [1.5, -2.25]
    """

    frac_bits: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.frac_bits, int) or isinstance(self.frac_bits, bool):
            raise TypeError(f"frac_bits must be an int, got {type(self.frac_bits).__name__}")
        if not 1 <= self.frac_bits <= 28:
            raise ValueError(f"frac_bits must be in [1, 28], got {self.frac_bits}")

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
                    f"value {peak!r} is outside the fixed-point range |x| < {self.max_abs!r} "
                    f"(frac_bits={self.frac_bits})"
                )
        return np.rint(arr * self.scale).astype(np.int64).view(np.uint64)

    def decode(self, u: Any) -> np.ndarray:
        """Decode ring elements (two's complement) back to ``float64`` reals."""
        arr = np.asarray(u)
        if arr.dtype != np.uint64:
            raise EncodingError(f"fixed-point decode needs uint64 ring elements, got dtype {arr.dtype}")
        return arr.view(np.int64).astype(np.float64) / self.scale
