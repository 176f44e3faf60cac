"""Arithmetic in the ring Z_2^64, as jit-compiled JAX kernels. Hazardous: everything wraps.

Elements are ``uint64`` arrays. Addition, subtraction and elementwise products wrap natively.
The matrix product is the kernel that matters: XLA's ``uint64`` dot is a scalar loop, so
:func:`matmul` splits both operands into three limbs of 22, 22 and 20 bits whose pairwise
products (< 2^44) summed over at most 512 terms stay below 2^53 and are therefore *exact* in
float64. Six float64 GEMMs per 512-wide slice of the inner dimension run on BLAS (or the GPU's
FP64 units), and the partial products are recombined modulo 2^64. The result is bit-exact
against a naive ``uint64`` reference (tested with Hypothesis, extremes included).

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
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "RING_BITS",
    "add",
    "asarray",
    "matmul",
    "matmul_reference",
    "matmul_small",
    "mul",
    "neg",
    "scale",
    "sub",
    "to_numpy",
    "x64",
]

RING_BITS = 64
_LIMB_SHIFTS = (0, 22, 44)
_LIMB_WIDTHS = (22, 22, 20)
# (2^22 - 1)^2 * 512 < 2^53: the largest inner dimension summed exactly in one float64 GEMM.
_K_CHUNK = 512
# Public operand bound for matmul_small: |w| < 2^22 so |x_limb * w| < 2^44.
SMALL_BITS = 22

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


def _limbs(x: jax.Array) -> list[jax.Array]:
    return [
        ((x >> jnp.uint64(s)) & jnp.uint64((1 << w) - 1)).astype(jnp.float64)
        for s, w in zip(_LIMB_SHIFTS, _LIMB_WIDTHS)
    ]


@jax.jit
def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    k = a.shape[-1]
    out = jnp.zeros(jnp.broadcast_shapes(a.shape[:-1] + (1,), b.shape[:-2] + (1, b.shape[-1])), jnp.uint64)
    for k0 in range(0, k, _K_CHUNK):
        al = _limbs(a[..., k0 : k0 + _K_CHUNK])
        bl = _limbs(b[..., k0 : k0 + _K_CHUNK, :])
        for s in range(3):
            for i in range(s + 1):
                part = jnp.matmul(al[i], bl[s - i], precision=jax.lax.Precision.HIGHEST)
                out = out + (part.astype(jnp.uint64) << jnp.uint64(_LIMB_SHIFTS[s]))
    return out


@jax.jit
def _matmul_small(a: jax.Array, w: jax.Array) -> jax.Array:
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


@x64
def matmul(a: Any, b: Any) -> jax.Array:
    """Bit-exact ``a @ b mod 2^64`` for ``uint64`` operands (batched leading axes broadcast).

    Args:
        a: ``(..., M, K)`` ring array.
        b: ``(..., K, N)`` ring array.

    Returns:
        ``(..., M, N)`` ``uint64`` JAX array.
    """
    return _matmul(asarray(a), asarray(b))


@x64
def matmul_small(a: Any, w: Any) -> jax.Array:
    """``a @ w mod 2^64`` where ``w`` is a *public, small* signed integer matrix.

    Half the GEMMs of :func:`matmul`: only ``a`` is split into limbs. The caller must ensure
    ``|w| < 2^22`` (checked here, since a violation would silently lose bits).

    Args:
        a: ``(..., M, K)`` ring array.
        w: ``(K, N)`` signed integers with ``|w| < 2^22``.
    """
    w_np = np.asarray(w)
    if w_np.dtype.kind not in "iu":
        raise TypeError(f"matmul_small needs an integer matrix, got dtype {w_np.dtype}")
    if w_np.size and int(np.max(np.abs(w_np.astype(np.int64)))) >= (1 << SMALL_BITS):
        raise ValueError(f"matmul_small needs |w| < 2^{SMALL_BITS}")
    return _matmul_small(asarray(a), jnp.asarray(w_np, dtype=jnp.int64))


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
