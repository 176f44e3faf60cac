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

One round instead of ``k`` (:func:`matmul_audit_one_round`). The node also commits the high part
``H`` of the *integer* product of the unsigned operands, ``A @ B = C + 2^64 H`` (``H`` in two
words, from :func:`edil.hazmat.ring.matmul_wide`), and the auditor checks that identity modulo a
random prime ``p``, uniform among the primes in ``[2^51, 2^52)``, with one random vector ``r``,
uniform on ``[0, 2^51)^n``, both drawn from the seed: ``A (B r) = C r + 2^64 H r (mod p)``.

Soundness. Let ``D = A B - C - 2^64 H`` over the integers and suppose ``D != 0``; fix a row ``D_i``
with a non-zero entry ``d``. Every entry of ``A B`` is at most ``k (2^64 - 1)^2 < 2^192`` (for
``k <= 2^64``) and ``0 <= C + 2^64 H < 2^192``, so ``0 < |d| < 2^192``. The check passes only if
``D_i r = 0 (mod p)``, which needs one of two events:

1. ``p`` divides ``d``. Distinct primes ``>= 2^51`` dividing ``d`` number at most 3
   (``2^(4 * 51) > 2^192``). By Dusart's explicit bounds, ``x/ln x (1 + 1/ln x) <= pi(x)`` for
   ``x >= 599`` and ``pi(x) <= x/ln x (1 + 1.2762/ln x)`` for ``x > 1``, the range holds
   ``N = pi(2^52) - pi(2^51) > 2^45.82`` primes, so this has probability ``<= 3/N < 2^-44.23``.
2. ``D_i mod p != 0`` and ``r`` is orthogonal to it modulo ``p``. Fix every coordinate of ``r``
   but one ``j`` with ``D_ij != 0 (mod p)``: exactly one residue of ``r_j`` solves the equation,
   and the ``2^51`` values ``r_j`` can take are distinct residues (``p > 2^51``), so this has
   probability ``<= 2^-51`` (Schwartz-Zippel for a linear form).

A wrong claim therefore passes with probability ``< 2^-44.23 + 2^-51 < 2^-44`` in one round,
inside the ``2^-40`` target. (A prime in ``[2^55, 2^56)`` would give ``< 2^-48`` but needs either
28-bit weight pieces, so groups of 8 entries instead of 32 per exact uint64 sum, which XLA ran about
twice as slowly, or three 19-bit pieces, six products per entry instead of four, which ran 15-30%
slower; see :func:`_group_sums`.)

Cost. The check is four matrix-vector products modulo ``p`` (:func:`_matvec_mod`): ``u = B r``,
``A u``, ``C r`` and ``H r'``. Each reads its operand once, in place (no copy of the caller's
array), in one fused XLA reduction: an entry ``x = lo + 2^32 hi`` meets its weight ``w < p`` and
``w' = 2^32 w mod p`` as 26-bit pieces, four 32 x 32 -> 64-bit products summed exactly per group of
32 entries, so nothing of the operand's size is written. The audit must read every entry of ``A``,
``B``, ``C`` and ``H`` (24 bytes per output entry for ``C`` and ``H``), so on a CPU it is bounded
by memory bandwidth: its floor is one read of the four operands. The four reductions run at about
that speed; the vector work between them (weights, reductions modulo ``p``) and the call add a
fixed ~0.2-0.3 ms, so the audit costs about 1.2-2 such reads (``benchmarks/kernels.py``). Every
arithmetic step is exact (bounds at each helper). Small operands (up to 2^14 entries in all) are
checked in exact Python integers instead: no program to compile per shape.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import gmpy2
import jax
import jax.numpy as jnp
import numpy as np

from edil import ParameterError, ShapeError, UnsupportedOperationError, VerificationError
from edil.hazmat import ring

from ._commit import DEFAULT_CHUNK_SIZE, commit_tensor
from ._hashing import check_address, check_bytes32, check_uint, consteq, keccak256, word

_SEED_TAG = b"EDIL/audit-seed/v1"
_FREIVALDS_TAG = b"EDIL/freivalds/v1"
_SAMPLE_TAG = b"EDIL/audit-sample/v1"
_ONE_ROUND_TAG = b"EDIL/matmul-audit-one-round/v2"  # v2: p in [2^51, 2^52), r in [0, 2^51)
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
        raise UnsupportedOperationError("context must be bytes")
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
        ParameterError: ``count`` > ``population``, sizes out of range, or a seed shorter than 16 bytes.
        UnsupportedOperationError: a non-integer size or a seed that is not bytes.
    """
    _check_seed(seed)
    check_uint(population, "population", 64)
    check_uint(count, "count", 64)
    if count > population:
        raise ParameterError("cannot sample more indices than the population holds")
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
        raise UnsupportedOperationError("seed must be bytes")
    if len(seed) < 16:
        raise ParameterError("seed must hold at least 16 bytes of entropy")


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
        raise UnsupportedOperationError(f"{name} must be a uint64 ring array, got dtype {arr.dtype}")
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
        UnsupportedOperationError: non-uint64 operands or a non-bytes seed (also a TypeError).
        ParameterError: ``rounds`` out of range or a seed shorter than 16 bytes (also a ValueError).

    Example:
        >>> import numpy as np
        >>> a = np.arange(6, dtype=np.uint64).reshape(2, 3); b = np.ones((3, 2), np.uint64)
        >>> freivalds_audit(a, b, a @ b, seed=b"s" * 32)
    """
    _check_seed(seed)
    check_uint(rounds, "rounds", 16)
    if not 1 <= rounds <= _MAX_ROUNDS:
        raise ParameterError(f"rounds must lie in [1, {_MAX_ROUNDS}]")
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


# --- one round modulo a random prime ------------------------------------------------------------------
_PRIME_BITS = 52  # p uniform among the primes in [2^51, 2^52)
_VECTOR_BITS = _PRIME_BITS - 1  # r uniform on [0, 2^51): distinct residues modulo any such p
# Deterministic Miller-Rabin bases for every n < 3.3 * 10^24 (far above 2^52).
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
# The check's row sums (see _group_sums): an entry x = lo + 2^32 hi meets a residue weight w < 2^52
# as two 26-bit pieces, and 32 consecutive entries of a row are summed in one fused XLA reduction
# (the width XLA vectorises best: wider reductions are split into a tree, narrower ones ran 2-5x
# slower here).
_PIECE_BITS = 26
_PIECE_MASK = (1 << _PIECE_BITS) - 1
_GROUP = 32
_LOW32 = 0xFFFF_FFFF


# The product of the odd primes below 1000: one gcd sieves out most composite candidates.
_SMALL_PRIMES = math.prod(q for q in range(3, 1000, 2) if all(q % d for d in range(3, int(q**0.5) + 1, 2)))


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    for q in _MR_BASES:
        if n % q == 0:
            return n == q
    if n > 1000 and math.gcd(n, _SMALL_PRIMES) != 1:
        return False
    # Strong probable prime to every base (GMP's test, the same Miller-Rabin rounds as Python's pow).
    return all(gmpy2.is_strong_prp(n, a) for a in _MR_BASES)


def audit_prime(seed: bytes) -> int:
    """The prime of a one-round audit: uniform among the primes in ``[2^51, 2^52)``, drawn from ``seed``.

    Rejection sampling over odd 52-bit candidates (uniform over the primes; about 18 draws on
    average), primality by deterministic Miller-Rabin.

    Raises:
        UnsupportedOperationError: a seed that is not bytes (also a TypeError).
        ParameterError: a seed shorter than 16 bytes (also a ValueError).
    """
    _check_seed(seed)
    counter = 0
    while True:
        block = _expand(bytes(seed) + counter.to_bytes(8, "big"), _ONE_ROUND_TAG + b"/prime", 8 * 64)
        counter += 1
        for off in range(0, len(block), 8):
            n = int.from_bytes(block[off : off + 8], "big") >> (64 - _PRIME_BITS) | (1 << (_PRIME_BITS - 1)) | 1
            if _is_prime(n):
                return n


# Modular arithmetic on uint64 modulo p in [2^51, 2^52), vectorised, without integer division: the
# quotient is estimated in float64 and the remainder corrected by one step either way.
def _mul_pow2(x: jax.Array, p: jax.Array, bits: int) -> jax.Array:
    """``x * 2^bits mod p`` for uint64 ``x`` with ``x * 2^bits < 2^50 p`` (any ``x`` for ``bits <= 37``,
    ``x < p`` for ``bits <= 50``), in one step.

    ``q = fl(fl(x) * fl(2^bits / p))`` is ``Q = x 2^bits / p`` with three roundings to float64 (the
    power of two scales ``1/p`` exactly; one scalar division, hoisted out of the loop, and a
    product per entry), so ``|q - Q| <= Q (3 * 2^-53 + 2^-104) < 3/8`` and ``floor(q)`` is
    ``floor(Q)`` or one off. ``x 2^bits - floor(q) p`` then lies in ``[-p, 2p)``, inside int64, so
    computing it modulo 2^64 (a shift and a product that wrap) and reading it as int64 gives it
    exactly; one correction each way brings it into ``[0, p)``.
    """
    scale = float(2**bits) / p.astype(jnp.float64)
    q = jnp.floor(x.astype(jnp.float64) * scale).astype(jnp.uint64)
    r = ((x << jnp.uint64(bits)) - q * p).astype(jnp.int64)
    pi = p.astype(jnp.int64)
    r = jnp.where(r < 0, r + pi, r)
    return jnp.where(r >= pi, r - pi, r).astype(jnp.uint64)


def _rem(x: jax.Array, p: jax.Array) -> jax.Array:
    """``x mod p`` for any uint64 ``x``."""
    return _mul_pow2(x, p, 0)


def _shl_mod(v: jax.Array, p: jax.Array, bits: int) -> jax.Array:
    """``v * 2^bits mod p`` for residues ``v < p``, 32 bits per step."""
    while bits > 0:
        step = min(32, bits)
        v, bits = _mul_pow2(v, p, step), bits - step
    return v


def _pieces(w: jax.Array, p: jax.Array) -> jax.Array:
    """The ``(4, L)`` uint32 weight table of residues ``w`` (length ``L``): the 26-bit pieces of ``w`` and
    of ``w' = 2^32 w mod p``, rows ``[w_0, w_1, w'_0, w'_1]`` with ``w = w_0 + 2^26 w_1``."""
    mask, shift = jnp.uint64(_PIECE_MASK), jnp.uint64(_PIECE_BITS)
    w2 = _mul_pow2(w, p, 32)
    # A concatenation: XLA computes it as its own small fusion, not once per entry of the row sums.
    return jnp.stack([w & mask, w >> shift, w2 & mask, w2 >> shift]).astype(jnp.uint32)


def _group_sums(x: jax.Array, table: jax.Array) -> jax.Array:
    """``(R, G, 2)`` uint64 sums ``g`` over groups of up to 32 consecutive entries of each row of ``x``:
    ``sum_groups g[:, :, t] = sum_j (lo_j T_t[j] + hi_j T_(t+2)[j])`` exactly, ``T = table``.

    ``x`` is an ``(R, L)`` uint64 matrix with entries ``x = lo + 2^32 hi``. Every term is below
    ``2 * 2^32 * 2^26 = 2^59``, so a sum of 32 of them is exact in uint64: one XLA reduction over
    groups of 32 consecutive entries reads ``x`` once and writes 1/16 of its size (the last
    ``L mod 32`` columns are one more, shorter group).
    """
    rows, cols = x.shape
    if rows == 0 or cols == 0:
        return jnp.zeros((rows, 0, 2), jnp.uint64)
    low = jnp.uint64(_LOW32)
    w = table.astype(jnp.uint64)  # zero-extended 32-bit weights: one 32 x 32 -> 64-bit multiply each

    def terms(xs: jax.Array, ws: jax.Array) -> jax.Array:
        lo, hi = xs & low, xs >> jnp.uint64(32)
        return jnp.stack([lo * ws[0] + hi * ws[2], lo * ws[1] + hi * ws[3]], axis=-1)

    full = cols - cols % _GROUP
    groups = []
    if full:
        g = terms(x[:, :full], w[:, :full]).reshape(-1, _GROUP, 2).sum(axis=1)
        groups.append(g.reshape(rows, full // _GROUP, 2))
    if full < cols:
        groups.append(terms(x[:, full:], w[:, full:]).sum(axis=1, keepdims=True))
    return groups[0] if len(groups) == 1 else jnp.concatenate(groups, axis=1)


def _halves(groups: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row, the sums ``(lo, hi)`` (each ``(R, 2)``) of the 32-bit halves of group sums ``g``
    (``(R, G, 2)``): ``sum_groups g = lo + 2^32 hi``, each below ``2^32 G``."""
    low = jnp.uint64(_LOW32)
    return (groups & low).sum(axis=1), (groups >> jnp.uint64(32)).sum(axis=1)


def _fold(lo: jax.Array, hi: jax.Array, p: jax.Array) -> jax.Array:
    """The ``(R,)`` residues ``(S_0 + 2^26 S_1) mod p`` with ``S_t = lo[:, t] + 2^32 hi[:, t]`` (uint64
    halves of :func:`_halves`, summed over at most ``2^32`` groups in all so none wraps)."""
    part = [_rem(_rem(lo[:, t], p) + _mul_pow2(hi[:, t], p, 32), p) for t in range(2)]
    return _rem(part[0] + _mul_pow2(part[1], p, _PIECE_BITS), p)


def _matvec_mod(x: jax.Array, w: jax.Array, p: jax.Array) -> jax.Array:
    """``x @ w mod p`` for a uint64 matrix ``x`` (read as unsigned integers) and residues ``w < p``.

    ``x w = lo w + hi 2^32 w = (lo w_0 + hi w'_0) + 2^26 (lo w_1 + hi w'_1) (mod p)`` with the pieces
    of :func:`_pieces`: :func:`_group_sums` gives both brackets exactly, :func:`_fold` reduces them.
    """
    return _fold(*_halves(_group_sums(x, _pieces(w, p))), p)


def _materialised(v: jax.Array, p: jax.Array) -> jax.Array:
    """``v``, computed once into a buffer: the result of a conditional whose predicate always holds
    (``p > 0``). XLA fuses nothing across a conditional (an optimisation barrier does not stop fusion
    on the CPU), so a vector that the four weight pieces read is not recomputed for each of them."""
    return jax.lax.cond(p > 0, lambda x: x, jnp.zeros_like, v)


@jax.jit
def _one_round_kernel(a: jax.Array, b: jax.Array, c: jax.Array, h: jax.Array, rp: jax.Array) -> jax.Array:
    """``A (B r) == C r + 2^64 H_0 r + 2^128 H_1 r (mod p)`` for uint64 ``A``, ``B``, ``C`` and ``H``
    ``(m, n, 2)``, with ``rp = [r, p]`` (one transfer)."""
    m, n = c.shape
    r, p = rp[:n], rp[n]
    # u = B r mod p computed once, not once for every weight piece of A's table.
    u = _materialised(_matvec_mod(b, r, p), p)
    left = _matvec_mod(a, u, p)
    # H as the (m, 2n) matrix of its words: word w of entry (i, j) at column 2j + w weighs 2^(64 (w + 1)).
    r64 = _shl_mod(r, p, 64)
    rh = jnp.stack([r64, _shl_mod(r64, p, 64)], axis=1).reshape(2 * n)
    # C r + H r' folded once: the halves of both operands' group sums added (3n / 32 + 2 groups per
    # row in all, far below 2^32; added, not concatenated, which would let XLA pull both reductions
    # into one slow loop).
    lo_c, hi_c = _halves(_group_sums(c, _pieces(r, p)))
    lo_h, hi_h = _halves(_group_sums(h.reshape(m, 2 * n), _pieces(rh, p)))
    return jnp.array_equal(left, _fold(lo_c + lo_h, hi_c + hi_h, p))


def _device_ring(x: Any) -> jax.Array:
    """``x`` as a contiguous uint64 JAX array: JAX arrays as they are; a host array handed to JAX in place
    (``may_alias``: no copy on the CPU unless it is strided or big-endian). The check only reads it."""
    if isinstance(x, jax.Array):
        return x
    arr = np.ascontiguousarray(x, dtype=np.dtype("<u8"))
    return jax.device_put(arr, may_alias=True)


def _one_round_ok(a: Any, b: Any, c: Any, h: Any, r: Any, p: Any) -> jax.Array:
    """The compiled check of :func:`matmul_audit_one_round` for residues ``r < p`` (under x64)."""
    ops = [_device_ring(x) for x in (a, b, c, h)]
    return _one_round_kernel(*ops, np.append(np.asarray(r, np.uint64), np.uint64(p)))


# Below this many entries in all four matrices, exact Python integers beat compiling the check for
# yet another shape (milliseconds against a second or more per shape).
_SMALL_AUDIT = 1 << 14


def _one_round_ok_small(a: np.ndarray, b: np.ndarray, c: np.ndarray, h: np.ndarray, r: np.ndarray, p: int) -> bool:
    """The check of :func:`_one_round_ok` in exact Python integers (object arrays), for small operands."""
    rv = np.array([int(v) for v in r], dtype=object)
    br = np.array([int(v) % p for v in b.astype(object).dot(rv)], dtype=object) if b.size else np.zeros(b.shape[0], object)
    left = [int(v) % p for v in (a.astype(object).dot(br) if a.size else np.zeros(a.shape[0], object))]
    r64 = np.array([(int(v) << 64) % p for v in rv], dtype=object)
    r128 = np.array([(int(v) << 128) % p for v in rv], dtype=object)
    right = c.astype(object).dot(rv) + h[..., 0].astype(object).dot(r64) + h[..., 1].astype(object).dot(r128)
    return left == [int(v) % p for v in right]


def _ring_operand(x: Any, name: str) -> Any:
    """``x`` if it is a uint64 array (numpy, JAX or array-like), read without a copy where it can be."""
    arr = x if isinstance(x, jax.Array | np.ndarray) else np.asarray(x)
    if arr.dtype != np.uint64:
        raise UnsupportedOperationError(f"{name} must be a uint64 ring array, got dtype {arr.dtype}")
    return arr


def matmul_audit_one_round(a: Any, b: Any, c: Any, h: Any, *, seed: bytes) -> None:
    """Check a claimed product ``A @ B = C + 2^64 H`` over the integers, in one round modulo a random prime.

    ``A`` and ``B`` are read as *unsigned* 64-bit integers; ``C = A @ B mod 2^64`` is the ring
    product and ``H = H[..., 0] + 2^64 H[..., 1]`` its high part (:func:`edil.hazmat.ring.matmul_wide`
    computes both). With ``p`` from :func:`audit_prime` and ``r`` uniform on ``[0, 2^51)^n``,
    both from ``seed``, the audit checks ``A (B r) = C r + 2^64 H_0 r + 2^128 H_1 r (mod p)``
    (``H_w = H[..., w]``).
    A wrong ``C`` or ``H`` passes with probability < ``2^-44`` over the seed (module docstring),
    provided the seed was fixed after ``A``, ``B``, ``C`` and ``H`` were committed
    (:func:`audit_seed`).

    Args:
        a: ``(m, k)`` uint64 array (numpy or JAX).
        b: ``(k, n)`` uint64 array.
        c: ``(m, n)`` uint64 array, the claimed product mod 2^64.
        h: ``(m, n, 2)`` uint64 array, the claimed high part as two little-endian words.
        seed: >= 16 bytes of audit randomness.

    Raises:
        VerificationError: the claim is not the integer product.
        ShapeError: shapes do not chain.
        UnsupportedOperationError: non-uint64 operands or a non-bytes seed (also a TypeError).
        ParameterError: a seed shorter than 16 bytes (also a ValueError).

    Example:
        >>> import numpy as np
        >>> from edil.hazmat import ring
        >>> a = np.arange(6, dtype=np.uint64).reshape(2, 3); b = np.full((3, 2), 2**63, np.uint64)
        >>> c, h = ring.matmul_wide(a, b)
        >>> matmul_audit_one_round(a, b, c, h, seed=b"s" * 32)
    """
    _check_seed(seed)
    with jax.enable_x64(True):
        A, B, C, harr = (_ring_operand(x, name) for x, name in ((a, "A"), (b, "B"), (c, "C"), (h, "H")))
        if A.ndim != 2 or B.ndim != 2 or C.ndim != 2:
            raise ShapeError(f"A, B and C must be matrices, got shapes {A.shape}, {B.shape}, {C.shape}")
        (m, k), (k2, n) = A.shape, B.shape
        if k != k2 or C.shape != (m, n) or harr.shape != (m, n, 2):
            raise ShapeError(f"shapes do not chain: A {A.shape} @ B {B.shape} vs C {C.shape}, H {harr.shape}")
        tagged = bytes(seed) + b"".join(d.to_bytes(8, "big") for d in (m, k, n))
        p = audit_prime(tagged)
        raw = np.frombuffer(_expand(tagged, _ONE_ROUND_TAG + b"/vector", 8 * n), dtype=">u8").astype(np.uint64)
        r = raw >> np.uint64(64 - _VECTOR_BITS)
        if A.size + B.size + C.size + harr.size <= _SMALL_AUDIT:
            ok = _one_round_ok_small(np.asarray(A), np.asarray(B), np.asarray(C), np.asarray(harr), r, p)
        else:
            ok = bool(_one_round_ok(A, B, C, harr, r, p))
    if not ok:
        raise VerificationError("one-round audit failed: A @ B != C + 2^64 H over the integers")
