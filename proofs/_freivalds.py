"""Audits: Freivalds' test for ring matrix products, recomputation for everything else.

Freivalds over Z_2^64. For committed ``A`` (m x p), ``B`` (p x n) and a claimed ``C`` (m x n), draw
``k`` independent uniform vectors ``u_t`` in {0,1}^m from the seed and check
``(u_t^T A) B == u_t^T C (mod 2^64)`` for every t. If ``D = AB - C != 0`` pick an entry
``D[i, j] != 0``: with every other coordinate of ``u_t`` fixed, the two choices of ``u_t[i]`` give
values of ``(u_t^T D)[j]`` that differ by ``D[i, j] != 0``, so at most one of them is zero. A wrong
``C`` therefore survives one round with probability <= 1/2 and all ``k`` with probability <= 2^-k.
The bound holds in a ring with zero divisors (e.g. an error of 2^63), which is why the test vectors
are 0/1 rather than full ring elements: larger entries buy no extra soundness against such errors.

The cost is two exact "binary-weighted row sums", done as one float64 GEMM on 32-bit limbs
(a sum of at most 2^20 terms below 2^32 is exact in float64), plus a k x p x n ring product:
about ``2k * m * (n + p)`` flops against ``6 * m * p * n`` for a limb-split recomputation.

The seed must be fixed *after* the operands are committed (Fiat-Shamir style): derive it with
:func:`audit_seed` from the posted epoch root and a beacon (a later block hash).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edil import ShapeError, VerificationError
from edil.hazmat import ring

from ._commit import DEFAULT_CHUNK_SIZE, commit_tensor
from ._hashing import check_address, check_bytes32, check_uint, consteq, keccak256, word

_SEED_TAG = b"EDIL/audit-seed/v1"
_FREIVALDS_TAG = b"EDIL/freivalds/v1"
_SAMPLE_TAG = b"EDIL/audit-sample/v1"
# float64 sums exactly below 2^53: 2^20 rows of 32-bit limbs stay below 2^52.
_ROW_CHUNK = 1 << 20
_MAX_ROUNDS = 256


def audit_seed(root: bytes, *, node: str, epoch: int, beacon: bytes, context: bytes = b"") -> bytes:
    """Audit randomness fixed after the commitment: ``keccak256(tag || root || node || epoch || beacon || keccak(context))``.

    Args:
        root: the posted epoch root (or any commitment the audited work is bound to).
        node: the audited node's address.
        epoch: the epoch.
        beacon: 32 bytes unknown when ``root`` was fixed, e.g. the hash of the block after the one
            that included the root (``Deployment.audit_beacon``).
        context: optional extra domain separation (which task, which layer).

    Returns:
        A 32-byte seed.
    """
    check_uint(epoch, "epoch", 64)
    if not isinstance(context, bytes | bytearray):
        raise TypeError("context must be bytes")
    return keccak256(
        _SEED_TAG
        + check_bytes32(root, "root")
        + bytes.fromhex(check_address(node, "node")[2:])
        + word(epoch)
        + check_bytes32(beacon, "beacon")
        + keccak256(bytes(context))
    )


def _expand(seed: bytes, tag: bytes, nbytes: int) -> bytes:
    return hashlib.shake_256(tag + len(seed).to_bytes(2, "big") + seed).digest(nbytes)


def sample_indices(seed: bytes, population: int, count: int) -> tuple[int, ...]:
    """``count`` distinct indices in ``[0, population)`` drawn from ``seed`` (which transcripts to audit).

    Raises:
        ValueError: ``count`` > ``population`` or negative sizes.
    """
    _check_seed(seed)
    check_uint(population, "population", 64)
    check_uint(count, "count", 64)
    if count > population:
        raise ValueError("cannot sample more indices than the population holds")
    chosen: list[int] = []
    seen: set[int] = set()
    counter = 0
    while len(chosen) < count:
        block = _expand(seed + counter.to_bytes(8, "big"), _SAMPLE_TAG, 8 * 64)
        counter += 1
        for off in range(0, len(block), 8):
            # Rejection sampling: no modulo bias.
            value = int.from_bytes(block[off : off + 8], "big")
            limit = (1 << 64) - ((1 << 64) % population)
            if value >= limit:
                continue
            idx = value % population
            if idx not in seen:
                seen.add(idx)
                chosen.append(idx)
                if len(chosen) == count:
                    break
    return tuple(chosen)


def _check_seed(seed: Any) -> None:
    if not isinstance(seed, bytes | bytearray):
        raise TypeError("seed must be bytes")
    if len(seed) < 16:
        raise ValueError("seed must hold at least 16 bytes of entropy")


def freivalds_vectors(seed: bytes, rounds: int, m: int) -> np.ndarray:
    """The ``rounds x m`` 0/1 test matrix derived from ``seed`` (uint8)."""
    nbytes = -(-rounds * m // 8)
    bits = np.unpackbits(np.frombuffer(_expand(seed + m.to_bytes(8, "big"), _FREIVALDS_TAG, nbytes), np.uint8))
    return bits[: rounds * m].reshape(rounds, m)


@jax.jit
def _weighted_row_sums(u: jax.Array, x: jax.Array) -> jax.Array:
    """``u @ x mod 2^64`` for 0/1 float64 ``u`` (k x m) and uint64 ``x`` (m x w), exactly.

    ``x`` is viewed as interleaved 32-bit limbs (a bitcast, no copy on the host side) and summed
    by one float64 GEMM per block of 2^20 rows.
    """
    k, m = u.shape
    w = x.shape[1]
    out = jnp.zeros((k, w), jnp.uint64)
    for r0 in range(0, m, _ROW_CHUNK):
        xs = x[r0 : r0 + _ROW_CHUNK]
        limbs = jax.lax.bitcast_convert_type(xs, jnp.uint32).reshape(xs.shape[0], 2 * w).astype(jnp.float64)
        sums = jnp.matmul(u[:, r0 : r0 + _ROW_CHUNK], limbs, precision=jax.lax.Precision.HIGHEST)
        sums = sums.astype(jnp.uint64).reshape(k, w, 2)
        # bitcast to uint32 pairs is little-endian: limb 0 is the low word on every XLA backend.
        out = out + sums[..., 0] + (sums[..., 1] << jnp.uint64(32))
    return out


@jax.jit
def _freivalds_ok(u_bits: jax.Array, a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
    u = u_bits.astype(jnp.float64)
    return jnp.array_equal(ring.matmul(_weighted_row_sums(u, a), b), _weighted_row_sums(u, c))


def _as_ring(x: Any, name: str) -> jax.Array:
    arr = x if isinstance(x, jax.Array) else np.asarray(x)
    if arr.dtype != np.uint64:
        raise TypeError(f"{name} must be a uint64 ring array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ShapeError(f"{name} must be a matrix, got shape {arr.shape}")
    return ring.asarray(arr)


def freivalds_audit(a: Any, b: Any, c: Any, *, seed: bytes, rounds: int = 20) -> None:
    """Check a claimed ring product ``C = A @ B (mod 2^64)`` with ``rounds`` Freivalds rounds.

    A wrong ``C`` passes with probability at most ``2^-rounds`` over the seed, provided the seed was
    fixed after ``A``, ``B`` and ``C`` were committed (see :func:`audit_seed`).

    Args:
        a: ``(m, p)`` uint64 array (numpy or JAX).
        b: ``(p, n)`` uint64 array.
        c: ``(m, n)`` uint64 array, the claimed product.
        seed: >= 16 bytes of audit randomness.
        rounds: number of independent rounds k (1..256).

    Raises:
        VerificationError: ``C`` is not ``A @ B``.
        ShapeError: shapes do not chain.
        TypeError: non-uint64 operands or a non-bytes seed.

    Example:
        >>> import numpy as np
        >>> a = np.arange(6, dtype=np.uint64).reshape(2, 3); b = np.ones((3, 2), np.uint64)
        >>> freivalds_audit(a, b, a @ b, seed=b"s" * 32)
    """
    _check_seed(seed)
    check_uint(rounds, "rounds", 16)
    if not 1 <= rounds <= _MAX_ROUNDS:
        raise ValueError(f"rounds must lie in [1, {_MAX_ROUNDS}]")
    with jax.enable_x64(True):
        A, B, C = _as_ring(a, "A"), _as_ring(b, "B"), _as_ring(c, "C")
        (m, p), (p2, n) = A.shape, B.shape
        if p != p2 or C.shape != (m, n):
            raise ShapeError(f"shapes do not chain: A {A.shape} @ B {B.shape} vs C {C.shape}")
        shape_tag = b"".join(d.to_bytes(8, "big") for d in (m, p, n, rounds))
        u = jnp.asarray(freivalds_vectors(bytes(seed) + shape_tag, rounds, m))  # 1 byte per bit
        ok = bool(_freivalds_ok(u, A, B, C))
    if not ok:
        raise VerificationError(f"Freivalds audit failed: C != A @ B (mod 2^64), {rounds} rounds")


def audit_by_recomputation(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    claimed_output: bytes,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> None:
    """Audit a deterministic (e.g. non-linear) step by recomputing it and comparing commitments.

    Args:
        fn: the step, a pure function of ``inputs`` returning an array.
        inputs: its inputs.
        claimed_output: the 32-byte tensor-commitment root of the output the node claimed.
        chunk_size: the chunk size the node committed with.

    Raises:
        VerificationError: the recomputed output commits to a different root.
    """
    claimed = check_bytes32(claimed_output, "claimed_output")
    recomputed = commit_tensor(np.asarray(fn(*inputs)), chunk_size=chunk_size).root
    if not consteq(recomputed, claimed):
        raise VerificationError("recomputed output does not match the claimed commitment")
