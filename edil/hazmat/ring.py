"""Arithmetic in the ring Z_2^64, as jit-compiled JAX kernels. Hazardous: everything wraps.

Elements are ``uint64`` arrays. Addition, subtraction and elementwise products wrap natively.
The matrix product is the kernel that matters: XLA's ``uint64`` dot is a scalar loop, so
:func:`matmul` computes it exactly from small-integer GEMMs that BLAS-like libraries and
accelerators run fast. Two exact kernels:

``"int8"`` (balanced int8 digits, int32 accumulation)
    Each operand is written as 8 *balanced* signed digits, ``x = sum_i d_i 2^(8i) mod 2^64``
    with ``d_i`` in ``[-128, 127]``: the bytes of ``(x + 0x80..80) xor 0x80..80`` read as int8
    (one add, one xor, no carry loop). Only digit pairs with ``i + j < 8`` matter mod 2^64
    (36 of 64). The bytes of ``a`` stay where they are (a bitcast lays them along K) and are
    multiplied, in one int8 GEMM per group of 4 (or all 8) digits, by a block-Toeplitz matrix
    of ``b``'s digit planes whose column block ``s`` collects the products of weight ``2^(8s)``
    (:func:`_toeplitz_products`; 48 blocks for the 36 pairs, no copies of digit planes). The
    GEMMs accumulate in int32 (``preferred_element_type=jnp.int32``: VNNI on x86 CPUs, integer
    tensor cores on GPUs). A product of two digits is at most ``2^14`` in magnitude and a column
    block sums at most ``8 K`` of them, so it is exact in int32 while ``8 K 2^14 <= 2^31 - 1``,
    i.e. for inner chunks of ``K <= 16383`` (:func:`_i8_chunk`; 32767 with groups of 4); the
    int32 sums are recombined modulo 2^64 with shifts. When ``M < N`` the product is computed
    transposed, so the Toeplitz matrix is built from the smaller operand.
``"float64"`` (three float64 limbs)
    Both operands split into limbs of 22, 22 and 20 bits whose pairwise products (< 2^44)
    summed over at most 512 terms stay below 2^53 and are therefore exact in float64: six
    float64 GEMMs per 512-wide slice of the inner dimension.

Which kernel runs (:func:`kernel_for`) is a fixed rule, from measurements of both kernels side
by side (``python -m benchmarks.kernels``): ``"int8"``, except ``"float64"`` for products of
fewer than 2^18 multiply-adds off TPUs. On an x86 CPU with AVX-512 VNNI (2 cores) the int8
kernel took 11.8 ms against 38 ms at 1024x512 @ 512x512 (a float32 GEMM: 2.0 ms) and 1.5
against 2.3 ms at 1797x64 @ 64x128, and was faster at every shape tried down to 2^18
multiply-adds; below that, fixed costs dominate and the float64 limbs' six plain GEMMs won
(2x1797 @ 1797x64: 0.39 against 0.54 ms). GPUs and TPUs run int8 products on integer tensor
units, and TPUs have no fast float64 at all. The environment variable ``EDIL_RING_KERNEL``
(``int8`` or ``float64``) overrides the rule for a process, and ``matmul(..., kernel=...)``
for one call. Both kernels are bit-exact against a naive ``uint64`` reference (tested with
Hypothesis, extremes and inner-chunk edges included), so the choice never changes a result.

:func:`matmul_wide` gives the *whole* integer product of unsigned operands (``A @ B = C +
2^64 H`` with ``H`` in two 64-bit words; 9 digits per operand, 81 digit GEMMs), which the
one-round work audit of :mod:`edil.proofs` checks. :mod:`edil.hazmat.ring32` is the Z_2^32
ring on the same int8 kernel (4 digits, 10 digit GEMMs).

64-bit types need ``jax_enable_x64``; every kernel here turns it on locally with
``jax.enable_x64(True)`` rather than flipping the process-wide flag for the caller.

Example:
    >>> import numpy as np
    >>> from edil.hazmat import ring
    >>> a = np.array([[2**64 - 1]], dtype=np.uint64)
    >>> int(ring.to_numpy(ring.matmul(a, a))[0, 0])   # (-1) * (-1) = 1 mod 2^64
    1
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from edil._errors import ParameterError, UnsupportedOperationError

__all__ = [
    "KERNELS",
    "RING_BITS",
    "add",
    "asarray",
    "kernel_for",
    "matmul",
    "matmul_reference",
    "matmul_small",
    "matmul_wide",
    "matmul_wide_reference",
    "mul",
    "neg",
    "scale",
    "sub",
    "to_numpy",
    "x64",
]

RING_BITS = 64
#: The exact matrix-product kernels (see the module docstring).
KERNELS = ("int8", "float64")
_KERNEL_ENV = "EDIL_RING_KERNEL"
_LIMB_SHIFTS = (0, 22, 44)
_LIMB_WIDTHS = (22, 22, 20)
# (2^22 - 1)^2 * 512 < 2^53: the largest inner dimension summed exactly in one float64 GEMM.
_K_CHUNK = 512
# Public operand bound for matmul_small: |w| < 2^22 so |x_limb * w| < 2^44 (float64), and
# w has three balanced int8 digits (|w| <= 0x7f7f7f) (int8).
SMALL_BITS = 22
_SMALL_DIGITS = 3
# Balanced digits lie in [-128, 127]: one digit product is at most 2^14 in magnitude.
_DIGIT_PRODUCT = 1 << 14
_INT32_MAX = (1 << 31) - 1

F = TypeVar("F", bound=Callable[..., Any])


def x64(fn: F) -> F:
    """Run ``fn`` with JAX 64-bit types enabled, without changing the global flag."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@x64
def asarray(x: Any) -> jax.Array:
    """Return ``x`` as a ``uint64`` JAX array (no range checks: values are taken mod 2^64)."""
    if isinstance(x, jax.Array) and x.dtype == jnp.uint64:
        return x
    arr = np.asarray(x)
    if arr.dtype != np.uint64:
        arr = arr.astype(np.int64).view(np.uint64) if arr.dtype.kind == "i" else arr.astype(np.uint64)
    return jnp.asarray(arr, dtype=jnp.uint64)


def to_numpy(x: Any) -> np.ndarray:
    """Copy a ring array to host memory as ``numpy.uint64``."""
    return np.asarray(x, dtype=np.uint64)


# Below this many multiply-adds the float64 limbs win on CPU (fixed costs dominate).
_FLOAT64_BELOW = 1 << 18


def kernel_for(macs: int, backend: str | None = None) -> str:
    """The kernel :func:`matmul` uses for a product of ``macs`` multiply-adds on ``backend``.

    The rule (module docstring): ``EDIL_RING_KERNEL`` when set; else ``"float64"`` below 2^18
    multiply-adds except on TPUs; else ``"int8"``.

    Args:
        macs: ``M * K * N`` (times the batch) of the product.
        backend: a JAX backend name; default JAX's default backend.

    Raises:
        ParameterError: ``EDIL_RING_KERNEL`` names no kernel.
    """
    forced = os.environ.get(_KERNEL_ENV, "").strip()
    if forced:
        if forced not in KERNELS:
            raise ParameterError(f"{_KERNEL_ENV} must be one of {KERNELS}, got {forced!r}")
        return forced
    if (backend or jax.default_backend()) != "tpu" and macs < _FLOAT64_BELOW:
        return "float64"
    return "int8"


def _macs(a: Any, b: Any) -> int:
    return int(np.prod(_out_shape(a, b), dtype=np.int64)) * int(a.shape[-1])


def _check_kernel(kernel: str | None, macs: int) -> str:
    if kernel is None:
        return kernel_for(macs)
    if kernel not in KERNELS:
        raise ParameterError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return kernel


# --- float64 limbs ---------------------------------------------------------------------------------
def _limbs(x: jax.Array) -> list[jax.Array]:
    return [
        ((x >> jnp.uint64(s)) & jnp.uint64((1 << w) - 1)).astype(jnp.float64)
        for s, w in zip(_LIMB_SHIFTS, _LIMB_WIDTHS)
    ]


def _out_shape(a: jax.Array, b: jax.Array) -> tuple[int, ...]:
    return jnp.broadcast_shapes(a.shape[:-1] + (1,), b.shape[:-2] + (1, b.shape[-1]))


def _matmul_f64(a: jax.Array, b: jax.Array) -> jax.Array:
    k = a.shape[-1]
    out = jnp.zeros(_out_shape(a, b), jnp.uint64)
    for k0 in range(0, k, _K_CHUNK):
        al = _limbs(a[..., k0 : k0 + _K_CHUNK])
        bl = _limbs(b[..., k0 : k0 + _K_CHUNK, :])
        for s in range(3):
            for i in range(s + 1):
                part = jnp.matmul(al[i], bl[s - i], precision=jax.lax.Precision.HIGHEST)
                out = out + (part.astype(jnp.uint64) << jnp.uint64(_LIMB_SHIFTS[s]))
    return out


def _matmul_small_f64(a: jax.Array, w: jax.Array) -> jax.Array:
    k = a.shape[-1]
    out = jnp.zeros(a.shape[:-1] + (w.shape[-1],), jnp.uint64)
    wf = w.astype(jnp.float64)
    for k0 in range(0, k, _K_CHUNK):
        al = _limbs(a[..., k0 : k0 + _K_CHUNK])
        wk = wf[k0 : k0 + _K_CHUNK]
        for i in range(3):
            part = jnp.matmul(al[i], wk, precision=jax.lax.Precision.HIGHEST)
            out = out + (part.astype(jnp.int64).astype(jnp.uint64) << jnp.uint64(_LIMB_SHIFTS[i]))
    return out


# --- balanced int8 digits ----------------------------------------------------------------------------
def _i8_chunk(terms: int) -> int:
    """The largest inner dimension ``K`` whose stacked GEMM of ``terms`` digit planes is exact in int32.

    Each of the ``terms * K`` products is at most ``2^14`` in magnitude, so the sum stays within
    int32 while ``terms * K * 2^14 <= 2^31 - 1`` (``terms = 8``: ``K <= 16383``).
    """
    return _INT32_MAX // (terms * _DIGIT_PRODUCT)


def _bias(dtype: Any) -> Any:
    nbytes = jnp.dtype(dtype).itemsize
    return jnp.asarray(int.from_bytes(b"\x80" * nbytes, "little"), dtype)


def _balanced(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(y, z)`` with ``y = x + 0x80..80`` (wrapping) and ``z = y xor 0x80..80``.

    Byte ``i`` of ``z``, read as int8, is the balanced digit ``d_i = b_i - 128`` of byte ``b_i``
    of ``y``, and ``sum_i d_i 2^(8i) = y - 0x80..80 = x`` modulo ``2^bits``.
    """
    bias = _bias(x.dtype)
    y = x + bias
    return y, y ^ bias


def _digits(x: jax.Array, count: int) -> jax.Array:
    """The first ``count`` balanced digits of ``x`` as int8, on a new last axis (digit ``i`` weighs ``2^(8i)``)."""
    return jax.lax.bitcast_convert_type(_balanced(x)[1], jnp.int8)[..., :count]


def _digit_planes(x: jax.Array, count: int) -> list[jax.Array]:
    """``count`` balanced int8 digit planes of an unsigned array (plane ``i`` weighs ``2^(8i)``).

    A ninth plane (``count`` = 9, 64-bit only) is the carry of ``x + 0x80..80``, in ``{0, 1}``,
    so the planes then sum to the *unsigned* value exactly: ``sum_{i<8} d_i 2^(8i) = y -
    0x80..80`` is negative exactly when the addition wrapped.
    """
    y, z = _balanced(x)
    nbytes = jnp.dtype(x.dtype).itemsize
    planes = [
        jax.lax.bitcast_convert_type((z >> jnp.asarray(8 * i, x.dtype)).astype(jnp.uint8), jnp.int8)
        for i in range(min(count, nbytes))
    ]
    if count > nbytes:
        planes.append((y < _bias(x.dtype)).astype(jnp.int8))
    return planes


_LANES = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _to_ring(p: jax.Array, dtype: Any, shift: int) -> jax.Array:
    """A signed partial sum, shifted by ``shift`` bits, as a ring element (wraps)."""
    wide = p.astype(jnp.int64).astype(dtype) if dtype == jnp.uint64 else p.astype(dtype)
    return wide << jnp.asarray(shift, dtype)


def _toeplitz_products(a: jax.Array, bd: jax.Array, group: int) -> jax.Array:
    """``a @ b`` modulo ``2^bits`` of ``a``'s dtype, from ``a``'s balanced digits and ``b``'s, ``bd``.

    ``a``: ``(..., M, K)`` unsigned with ``na`` bytes; ``bd``: ``(..., K, N, nb)`` int8 digits of
    ``b``. The digits of ``a`` are cut into groups of ``group`` consecutive digits; group ``q``
    is the ``group``-byte lane ``q`` of ``z`` (:func:`_balanced`), whose bytes, read as int8, lie
    along K as ``(k, i)`` *without any copy of a digit plane*. It multiplies one block-Toeplitz
    matrix built from ``b``'s digits: row ``(k, i)``, column block ``s`` holds ``B_{s-i}``
    (zero unless ``0 <= s - i < nb``), for the output digits ``s`` the group reaches below
    ``na``. One int8 GEMM per group and inner chunk gives every ``P_s`` of the group; zero
    blocks cost multiply-adds (``group = 4``: 48 blocks for the 36 pairs of Z_2^64, ``group =
    8``: 64) but no copies. A column block sums at most ``min(group, nb) * K`` non-zero digit
    products, exact in int32 for ``K <= _i8_chunk(min(group, nb))``.
    """
    dtype = a.dtype
    na, nb = jnp.dtype(dtype).itemsize, bd.shape[-1]
    k, n = a.shape[-1], bd.shape[-2]
    out = jnp.zeros(_out_shape(a, bd[..., 0]), dtype)
    if k == 0:
        return out
    _, z = _balanced(a)
    lanes = z[..., None] if group == na else jax.lax.bitcast_convert_type(z, _LANES[group])
    chunk = _i8_chunk(min(group, nb))
    zero = jnp.zeros(bd.shape[:-1], jnp.int8)
    for q in range(na // group):
        digits = range(q * group, (q + 1) * group)
        outs = range(q * group, min(na, q * group + group - 1 + nb))
        lhs = jax.lax.bitcast_convert_type(lanes[..., q], jnp.int8)  # (..., M, K, group); (..., M, K) for one byte
        lhs = lhs.reshape(lhs.shape[: lhs.ndim - (group > 1) - 1] + (k * group,))
        rows = [jnp.concatenate([bd[..., s - i] if 0 <= s - i < nb else zero for s in outs], axis=-1) for i in digits]
        rhs = jnp.stack(rows, axis=-2)  # (..., K, group, len(outs) * N)
        rhs = rhs.reshape(rhs.shape[:-3] + (k * group, len(outs) * n))
        for k0 in range(0, k, chunk):
            kc = min(chunk, k - k0)
            p = jnp.matmul(lhs[..., k0 * group : (k0 + kc) * group], rhs[..., k0 * group : (k0 + kc) * group, :],
                           preferred_element_type=jnp.int32)
            for j, s in enumerate(outs):
                out = out + _to_ring(p[..., j * n : (j + 1) * n], dtype, 8 * s)
    return out


# Below this many multiply-adds one GEMM per inner chunk (group = all digits) beats two
# smaller ones (measured on CPU: 1797x64 @ 64x128 favours one, 256^3 and up two).
_ONE_GROUP_BELOW = 1 << 24


def _group_for(m: int, k: int, n: int, digits: int) -> int:
    return digits if m * k * n < _ONE_GROUP_BELOW else digits // 2


def _matmul_i8(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` in the ring of ``a``'s dtype from balanced int8 digits (:func:`_toeplitz_products`).

    The Toeplitz matrix is built from the operand with fewer rows or columns outside K: when
    ``M < N`` the product is computed transposed, ``(b^T a^T)^T``.
    """
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    digits = jnp.dtype(a.dtype).itemsize
    group = _group_for(m, k, n, digits)
    if m < n:
        at, bt = jnp.swapaxes(b, -1, -2), jnp.swapaxes(a, -1, -2)
        return jnp.swapaxes(_toeplitz_products(at, _digits(bt, digits), group), -1, -2)
    return _toeplitz_products(a, _digits(b, digits), group)


def _matmul_small_i8(a: jax.Array, w: jax.Array) -> jax.Array:
    """``a @ w`` for small public ``w``: a Toeplitz matrix of three digit planes (21 of 64 blocks).

    With fewer rows than columns (``M < N``) the transposed full product is cheaper (the
    Toeplitz matrix is then built from ``a``).
    """
    m, k, n = a.shape[-2], a.shape[-1], w.shape[-1]
    if m < n:
        return _matmul_i8(a, w.astype(jnp.uint64))
    # |w| < 2^22 <= 0x7f7f7f: the balanced digits of w mod 2^64 above the third are zero.
    return _toeplitz_products(a, _digits(w.astype(jnp.uint64), _SMALL_DIGITS), _group_for(m, k, n, 8))


def _digit_products(a: jax.Array, b: jax.Array, na: int, nb: int, outs: int) -> list[jax.Array | None]:
    """``P_s = sum_{i + j = s} A_i @ B_j`` for ``s < outs`` (int32 per inner chunk, int64 across).

    Digit planes of ``a`` side by side along K (``[A_0 .. A_{na-1}]``), those of ``b`` stacked
    in reverse (``[B_{nb-1}; ..; B_0]``): every ``P_s`` is one GEMM of two windows. Used for
    the wide product (nine digits, the ninth a carry). ``None`` marks a digit no pair reaches.
    """
    k = a.shape[-1]
    chunk = _i8_chunk(min(na, nb))
    sums: list[jax.Array | None] = [None] * outs
    for k0 in range(0, k, chunk):
        kc = min(chunk, k - k0)
        ap = jnp.concatenate(_digit_planes(a[..., k0 : k0 + kc], na), axis=-1)
        bp = jnp.concatenate(_digit_planes(b[..., k0 : k0 + kc, :], nb)[::-1], axis=-2)
        for s in range(outs):
            lo, hi = max(0, s - nb + 1), min(s, na - 1)
            if lo > hi:
                continue
            lhs = ap[..., lo * kc : (hi + 1) * kc]
            rhs = bp[..., (nb - 1 - s + lo) * kc : (nb - s + hi) * kc, :]
            part = jnp.matmul(lhs, rhs, preferred_element_type=jnp.int32).astype(jnp.int64)
            prev = sums[s]
            sums[s] = part if prev is None else prev + part
    return sums


# --- entry points --------------------------------------------------------------------------------------
def _select(kernel: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    return _matmul_i8 if kernel == "int8" else _matmul_f64


@functools.partial(jax.jit, static_argnames="kernel")
def _matmul_with(a: jax.Array, b: jax.Array, kernel: str) -> jax.Array:
    return _select(kernel)(a, b)


@functools.partial(jax.jit, static_argnames="kernel")
def _matmul_small_with(a: jax.Array, w: jax.Array, kernel: str) -> jax.Array:
    return _matmul_small_i8(a, w) if kernel == "int8" else _matmul_small_f64(a, w)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b mod 2^64`` with the rule's kernel, traceable (the simulator calls it inside its jit)."""
    return _matmul_with(a, b, kernel_for(_macs(a, b)))


def _matmul_small(a: jax.Array, w: jax.Array) -> jax.Array:
    return _matmul_small_with(a, w, kernel_for(_macs(a, w)))


@x64
def matmul(a: Any, b: Any, *, kernel: str | None = None) -> jax.Array:
    """Bit-exact ``a @ b mod 2^64`` for ``uint64`` operands (batched leading axes broadcast).

    Args:
        a: ``(..., M, K)`` ring array.
        b: ``(..., K, N)`` ring array.
        kernel: ``"int8"`` or ``"float64"``; default :func:`kernel_for` (same result either way).

    Returns:
        ``(..., M, N)`` ``uint64`` JAX array.

    Raises:
        ParameterError: an unknown kernel.
    """
    a, b = asarray(a), asarray(b)
    return _matmul_with(a, b, _check_kernel(kernel, _macs(a, b)))


@x64
def matmul_small(a: Any, w: Any, *, kernel: str | None = None) -> jax.Array:
    """``a @ w mod 2^64`` where ``w`` is a *public, small* signed integer matrix.

    Fewer GEMMs than :func:`matmul`: ``w`` has three int8 digits (21 digit GEMMs instead of
    36), or one float64 limb (3 GEMMs instead of 6). The caller must ensure ``|w| < 2^22``
    (checked here, since a violation would silently lose bits).

    Args:
        a: ``(..., M, K)`` ring array.
        w: ``(K, N)`` signed integers with ``|w| < 2^22``.
        kernel: as for :func:`matmul`.

    Raises:
        UnsupportedOperationError: ``w`` is not an integer matrix.
        ParameterError: ``|w| >= 2^22``, or an unknown kernel.
    """
    w_np = np.asarray(w)
    if w_np.dtype.kind not in "iu":
        raise UnsupportedOperationError(f"matmul_small needs an integer matrix, got dtype {w_np.dtype}")
    if w_np.size and int(np.max(np.abs(w_np.astype(np.int64)))) >= (1 << SMALL_BITS):
        raise ParameterError(f"matmul_small needs |w| < 2^{SMALL_BITS}")
    a, wj = asarray(a), jnp.asarray(w_np, dtype=jnp.int64)
    return _matmul_small_with(a, wj, _check_kernel(kernel, _macs(a, wj)))


@jax.jit
def _matmul_wide(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    shape = _out_shape(a, b)
    if a.shape[-1] == 0:
        zero = jnp.zeros(shape, jnp.uint64)
        return zero, jnp.stack([zero, zero], axis=-1)
    sums = _digit_products(a, b, 9, 9, 17)
    # Base-256 normalisation with arithmetic carries: the bytes of the exact (non-negative) product.
    carry = jnp.zeros(shape, jnp.int64)
    digits = []
    for p in sums:
        t = carry if p is None else carry + p.astype(jnp.int64)
        digits.append((t & 0xFF).astype(jnp.uint64))
        carry = t >> 8
    words = []
    for w in range(2):
        word = jnp.zeros(shape, jnp.uint64)
        for i in range(8):
            word = word | (digits[8 * w + i] << jnp.uint64(8 * i))
        words.append(word)
    top = digits[16] | (carry.astype(jnp.uint64) << jnp.uint64(8))
    return words[0], jnp.stack([words[1], top], axis=-1)


@x64
def matmul_wide(a: Any, b: Any) -> tuple[jax.Array, jax.Array]:
    """The exact integer product of unsigned 64-bit matrices: ``a @ b = C + 2^64 H``.

    ``C`` is :func:`matmul` (the product mod 2^64); ``H = floor(a @ b / 2^64)`` needs
    ``64 + log2 K`` bits, so it comes as two little-endian words on a last axis,
    ``H = H[..., 0] + 2^64 H[..., 1]`` (``H[..., 1] < K``).
    Cost: 81 int8 digit GEMMs (9 digits per operand, the ninth the carry of the balancing),
    about 2.3x :func:`matmul`.

    Args:
        a: ``(..., M, K)`` ``uint64`` array, read as unsigned.
        b: ``(..., K, N)`` ``uint64`` array, read as unsigned.

    Returns:
        ``(C, H)``: ``C`` of shape ``(..., M, N)`` and ``H`` of shape ``(..., M, N, 2)``, ``uint64``.
    """
    return _matmul_wide(asarray(a), asarray(b))


def matmul_wide_reference(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Slow reference for :func:`matmul_wide` in exact Python integers (2-D operands)."""
    an, bn = to_numpy(a), to_numpy(b)
    prod = np.matmul(an.astype(object), bn.astype(object))
    mask = (1 << 64) - 1
    c = np.vectorize(lambda v: v & mask, otypes=[object])(prod).astype(np.uint64)
    h0 = np.vectorize(lambda v: (v >> 64) & mask, otypes=[object])(prod).astype(np.uint64)
    h1 = np.vectorize(lambda v: v >> 128, otypes=[object])(prod).astype(np.uint64)
    return c, np.stack([h0, h1], axis=-1)


@x64
def add(a: Any, b: Any) -> jax.Array:
    """Elementwise ``a + b mod 2^64``."""
    return asarray(a) + asarray(b)


@x64
def sub(a: Any, b: Any) -> jax.Array:
    """Elementwise ``a - b mod 2^64``."""
    return asarray(a) - asarray(b)


@x64
def neg(a: Any) -> jax.Array:
    """Elementwise ``-a mod 2^64``."""
    return jnp.uint64(0) - asarray(a)


@x64
def mul(a: Any, b: Any) -> jax.Array:
    """Elementwise ``a * b mod 2^64``."""
    return asarray(a) * asarray(b)


@x64
def scale(a: Any, c: int) -> jax.Array:
    """``a * c mod 2^64`` for a public Python integer ``c`` (any sign)."""
    return asarray(a) * jnp.uint64(c % (1 << RING_BITS))


def matmul_reference(a: Any, b: Any) -> np.ndarray:
    """Slow reference product in numpy ``uint64`` (numpy integer matmul wraps mod 2^64)."""
    return np.matmul(to_numpy(a), to_numpy(b))
