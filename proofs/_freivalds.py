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
random prime ``p`` in ``[2^55, 2^56)`` with one random vector ``r``:
``A (B r) = C r + 2^64 H r (mod p)``. Soundness: if ``D = A B - C - 2^64 H != 0`` over the
integers, then either ``p`` divides a chosen non-zero entry of ``D`` (which is below ``2^193``, so
it has at most 3 prime factors >= 2^55, among more than ``2^49.7`` primes in the range by
Dusart's explicit bounds on the prime-counting function: probability < ``3 * 2^-49.7``), or a
row of ``D mod p`` is non-zero and ``r``, uniform on ``[0, 2^55)`` (distinct residues mod ``p``),
is orthogonal to it with probability <= ``2^-55`` (Schwartz-Zippel). A wrong claim passes with
probability < ``2^-48`` in one round. The cost is four matrix-vector products mod ``p`` over
``A``, ``B``, ``C`` and ``H`` (``C r`` and ``H r`` summed before one reduction), instead of the
``k x m x (n + p)`` work of ``k`` rounds. Each is one int8 GEMM against an 8-column digit table:
the operand's bytes are handed to XLA in place (a view, no copy), flipped to balanced digits by
one elementwise int8 pass (xor 0x80: XLA does not fuse it into the GEMM) and read by the GEMM,
so every entry is read twice and written once. Every arithmetic step is exact (bounds at each
helper). Small operands (up to 2^14 entries in all) are checked in exact Python integers instead:
no program to compile per shape. The audit must read every entry of ``A``, ``B``, ``C`` and ``H``
(24 bytes per output entry for ``C`` and ``H``), so on a CPU it is bounded by memory bandwidth:
its floor is one read of the four operands, and it costs about 3-5 such reads.
"""

from __future__ import annotations

import hashlib
import math
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
_ONE_ROUND_TAG = b"EDIL/matmul-audit-one-round/v1"
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


# --- one round modulo a random prime ------------------------------------------------------------------
_PRIME_BITS = 56  # p uniform among the primes in [2^55, 2^56)
_VECTOR_BITS = _PRIME_BITS - 1  # r uniform on [0, 2^55): distinct residues modulo any such p
# Deterministic Miller-Rabin bases for every n < 3.3 * 10^24 (far above 2^56).
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
_BYTE_BIAS = 0x8080808080808080
# 8 digit products per (row, column) pair, each at most 2^14: int32 holds 8 * 16383 * 2^14.
_GEMV_CHUNK = ((1 << 31) - 1) // (8 << 14)


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
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def audit_prime(seed: bytes) -> int:
    """The prime of a one-round audit: uniform among the primes in ``[2^55, 2^56)``, drawn from ``seed``.

    Rejection sampling over odd 56-bit candidates (uniform over the primes; about 19 draws on
    average), primality by deterministic Miller-Rabin.

    Raises:
        TypeError / ValueError: a seed that is not bytes, or shorter than 16 bytes.
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


def _digit_sums(x8: jax.Array, table: jax.Array) -> jax.Array:
    """``S[r, j] = sum_{l, i} d_i(x[r, l]) * table[(l, i), j]`` exactly (int64), ``d_i`` the byte digits of ``x``.

    ``x8`` holds the bytes of a uint64 matrix ``x`` (``R x L``) as int8, little-endian, ``(R, 8 L)``
    (:func:`_byte_view`: no copy). Its digits ``d_i = byte_i - 128`` (so ``x = sum_i d_i 2^(8i) +
    0x80..80``) are those bytes xor 0x80 read as int8: one elementwise pass over int8, fused by XLA
    with the column slice, then one int8 GEMM with int32 accumulation per chunk of ``_GEMV_CHUNK``
    entries (``8 * _GEMV_CHUNK`` columns): ``|d_i * table| <= 2^14``, so a chunk's sum stays below
    ``2^31``.
    """
    cols = x8.shape[1] // 8
    flip = jnp.int8(-128)  # 0x80 as int8: xor maps the byte b to the digit b - 128
    out = jnp.zeros((x8.shape[0], table.shape[1]), jnp.int64)
    for c0 in range(0, cols, _GEMV_CHUNK):
        c1 = min(cols, c0 + _GEMV_CHUNK)
        part = jnp.matmul(x8[:, 8 * c0 : 8 * c1] ^ flip, table[8 * c0 : 8 * c1], preferred_element_type=jnp.int32)
        out = out + part.astype(jnp.int64)
    return out


def _byte_view(x: Any) -> jax.Array:
    """The bytes of a uint64 array ``(R, ...)`` as an int8 JAX matrix ``(R, 8 L)``, little-endian (``L``
    entries per row: an ``(m, n, 2)`` high part is the ``(m, 2n)`` matrix of its words).

    A host array (numpy, or a JAX array on the CPU, whose ``np.asarray`` is a view) is reinterpreted
    in place and handed to JAX with ``may_alias``: no copy of the operand, where XLA's own
    shape-changing bitcast would write one (an elementwise pass over every entry). The audit only
    reads the view and finishes before returning, so the caller's array is never written.
    """
    arr = np.ascontiguousarray(np.asarray(x), dtype=np.dtype("<u8"))  # a copy only if strided or big-endian
    return jax.device_put(arr.view(np.int8).reshape(arr.shape[0], 8 * math.prod(arr.shape[1:])), may_alias=True)


# Modular arithmetic on uint64 below p in [2^55, 2^56), vectorised: a remainder from a float64
# quotient estimate (off by at most one, since x / p < 2^9) and one correction each way, instead
# of integer division.
def _rem(x: jax.Array, p: jax.Array) -> jax.Array:
    """``x mod p`` for any uint64 ``x``."""
    q = jnp.floor(x.astype(jnp.float64) / p.astype(jnp.float64)).astype(jnp.uint64)
    return _fix((x - q * p).astype(jnp.int64), p)


def _rem_signed(x: jax.Array, p: jax.Array) -> jax.Array:
    """``x mod p`` in ``[0, p)`` for int64 ``x``."""
    pi = p.astype(jnp.int64)
    q = jnp.floor(x.astype(jnp.float64) / p.astype(jnp.float64)).astype(jnp.int64)
    return _fix(x - q * pi, p)


def _fix(r: jax.Array, p: jax.Array) -> jax.Array:
    """A value of ``(-p, 2p)`` (int64) into ``[0, p)``."""
    pi = p.astype(jnp.int64)
    r = jnp.where(r < 0, r + pi, r)
    return jnp.where(r >= pi, r - pi, r).astype(jnp.uint64)


def _shl_mod(v: jax.Array, p: jax.Array, bits: int) -> jax.Array:
    """``v * 2^bits mod p`` for residues ``v``, 8 bits at a time (``v << 8 < 2^64``)."""
    while bits > 0:
        step = min(8, bits)
        v, bits = _rem(v << jnp.uint64(step), p), bits - step
    return v


def _digit_table(v: jax.Array, p: jax.Array) -> jax.Array:
    """The ``(8 L, 8)`` int8 table of the residues ``v`` (length ``L``): row ``(l, i)`` holds the balanced
    byte digits of ``2^(8i) v_l mod p`` (< 2^56, so its 8 balanced digits sum back to it exactly)."""
    powers = [v]
    for _ in range(7):
        powers.append(_shl_mod(powers[-1], p, 8))
    pw = jnp.stack(powers, axis=1)
    bias = jnp.uint64(_BYTE_BIAS)
    return jax.lax.bitcast_convert_type((pw + bias) ^ bias, jnp.int8).reshape(8 * v.shape[0], 8)


def _combine_digit_sums(sums: jax.Array, p: jax.Array, chunks: int) -> jax.Array:
    """``sum_j 2^(8j) S[:, j] mod p`` for int64 digit sums ``S`` (``R x 8``) with ``|S| < chunks * 2^31``.

    For ``chunks <= 64`` as ``lo + 2^32 hi`` with ``lo = sum_{j<4} 2^(8j) S[:, j]`` and ``hi`` the
    same over columns 4..7: both below ``2^37 * 2^24.01 < 2^62`` in magnitude, so exact in int64,
    and one signed reduction each. More chunks: Horner over the columns, reducing at every step.
    """
    if chunks <= 64:
        w = jnp.asarray([1, 1 << 8, 1 << 16, 1 << 24], jnp.int64)
        lo, hi = jnp.sum(sums[:, :4] * w, axis=1), jnp.sum(sums[:, 4:] * w, axis=1)
        return _rem(_rem_signed(lo, p) + _shl_mod(_rem_signed(hi, p), p, 32), p)
    acc = jnp.zeros(sums.shape[0], jnp.uint64)
    for j in range(7, -1, -1):  # most significant column first
        acc = _rem(_rem(acc << jnp.uint64(8), p) + _rem_signed(sums[:, j], p), p)
    return acc


def _matvec_mod(terms: Sequence[tuple[jax.Array, jax.Array]], p: jax.Array) -> jax.Array:
    """``sum_t x_t @ v_t mod p`` for ``terms`` of uint64 matrices ``x_t`` (as :func:`_byte_view` bytes,
    read as unsigned integers) and residue vectors ``v_t < p``.

    Each entry is ``x = sum_i (d_i + 128) 2^(8i)`` with balanced digits ``d_i`` (:func:`_digit_sums`),
    so with the table's columns ``T_j`` (``2^(8i) v_l = sum_j 2^(8j) T[(l, i), j] mod p``) the row
    sums are ``sum_j 2^(8j) (S_j + 128 sum(T_j))``: the 0x80..80 every entry carries is one column
    sum of the table, added to the digit sums before reducing. Per GEMM chunk both parts are below
    ``2^31`` in magnitude (``8 * _GEMV_CHUNK`` rows of ``|digit| <= 2^7`` times ``2^7``), so the sum
    over all terms is below ``2 * chunks * 2^31``, exact in int64, and :func:`_combine_digit_sums`
    reduces it.
    """
    rows = terms[0][0].shape[0]
    chunks = sum(-(-(x8.shape[1] // 8) // _GEMV_CHUNK) for x8, _ in terms)
    sums = jnp.zeros((rows, 8), jnp.int64)
    for x8, v in terms:
        table = _digit_table(v, p)
        sums = sums + _digit_sums(x8, table) + 128 * jnp.sum(table.astype(jnp.int64), axis=0)
    return _combine_digit_sums(sums, p, 2 * chunks)


def _one_round_ok(a: Any, b: Any, c: Any, h: Any, r: Any, p: Any) -> jax.Array:
    """``A (B r) == C r + 2^64 H_0 r + 2^128 H_1 r (mod p)`` for uint64 operands (numpy or JAX, under x64)."""
    return _one_round_kernel(_byte_view(a), _byte_view(b), _byte_view(c), _byte_view(h), r, p)


@jax.jit
def _one_round_kernel(a8: jax.Array, b8: jax.Array, c8: jax.Array, h8: jax.Array, r: jax.Array, p: jax.Array) -> jax.Array:
    """:func:`_one_round_ok` on the operands' byte views (``H`` as its ``(m, 2n)`` words)."""
    n = r.shape[0]
    left = _matvec_mod([(a8, _matvec_mod([(b8, r)], p))], p)
    # H as (m, 2n) uint64: word w of entry (i, j) at column 2j + w weighs 2^(64 (w + 1)).
    rh = jnp.stack([_shl_mod(r, p, 64), _shl_mod(r, p, 128)], axis=1).reshape(2 * n)
    right = _matvec_mod([(c8, r), (h8, rh)], p)
    return jnp.array_equal(left, right)


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


def _host_ring(x: Any, name: str) -> np.ndarray:
    """``x`` as a host uint64 array: a view for numpy and CPU-resident JAX arrays."""
    arr = np.asarray(x)
    if arr.dtype != np.uint64:
        raise TypeError(f"{name} must be a uint64 ring array, got dtype {arr.dtype}")
    return arr


def matmul_audit_one_round(a: Any, b: Any, c: Any, h: Any, *, seed: bytes) -> None:
    """Check a claimed product ``A @ B = C + 2^64 H`` over the integers, in one round modulo a random prime.

    ``A`` and ``B`` are read as *unsigned* 64-bit integers; ``C = A @ B mod 2^64`` is the ring
    product and ``H = H[..., 0] + 2^64 H[..., 1]`` its high part (:func:`edil.hazmat.ring.matmul_wide`
    computes both). With ``p`` from :func:`audit_prime` and ``r`` uniform on ``[0, 2^55)^n``,
    both from ``seed``, the audit checks ``A (B r) = C r + 2^64 H_0 r + 2^128 H_1 r (mod p)``
    (``H_w = H[..., w]``).
    A wrong ``C`` or ``H`` passes with probability < ``2^-48`` over the seed (module docstring),
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
        TypeError: non-uint64 operands or a non-bytes seed.

    Example:
        >>> import numpy as np
        >>> from edil.hazmat import ring
        >>> a = np.arange(6, dtype=np.uint64).reshape(2, 3); b = np.full((3, 2), 2**63, np.uint64)
        >>> c, h = ring.matmul_wide(a, b)
        >>> matmul_audit_one_round(a, b, c, h, seed=b"s" * 32)
    """
    _check_seed(seed)
    with jax.enable_x64(True):
        # Host views (no copy for numpy or CPU-resident JAX operands): the audit reads their bytes.
        A, B, C, harr = (_host_ring(x, name) for x, name in ((a, "A"), (b, "B"), (c, "C"), (h, "H")))
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
            ok = _one_round_ok_small(A, B, C, harr, r, p)
        else:
            ok = bool(_one_round_ok(A, B, C, harr, r, np.uint64(p)))
    if not ok:
        raise VerificationError("one-round audit failed: A @ B != C + 2^64 H over the integers")
