"""Freivalds audits over Z_2^64, audit seeds and recomputation audits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edil import ShapeError, VerificationError
from edil.hazmat import ring
from edil.proofs import (
    audit_by_recomputation,
    audit_prime,
    audit_seed,
    commit_tensor,
    freivalds_audit,
    matmul_audit_one_round,
    sample_indices,
)
from edil.proofs._freivalds import freivalds_vectors

SEED = bytes(range(32))
NODE = "0x" + "aa" * 20


def rand_ring(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 2**64, size=shape, dtype=np.uint64, endpoint=False)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 40), p=st.integers(1, 20), n=st.integers(1, 30), seed=st.integers(0, 2**32 - 1))
def test_correct_products_pass(m, p, n, seed):
    rng = np.random.default_rng(seed)
    a, b = rand_ring(rng, (m, p)), rand_ring(rng, (p, n))
    freivalds_audit(a, b, ring.matmul_reference(a, b), seed=SEED, rounds=20)
    freivalds_audit(ring.asarray(a), ring.asarray(b), ring.matmul(a, b), seed=SEED)  # JAX inputs


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 30), p=st.integers(1, 12), n=st.integers(1, 20), seed=st.integers(0, 2**32 - 1),
    shift=st.integers(0, 63), data=st.data(),
)
def test_single_entry_corruptions_are_caught(m, p, n, seed, shift, data):
    rng = np.random.default_rng(seed)
    a, b = rand_ring(rng, (m, p)), rand_ring(rng, (p, n))
    c = ring.matmul_reference(a, b)
    i, j = data.draw(st.integers(0, m - 1)), data.draw(st.integers(0, n - 1))
    # An error of odd * 2^shift, including 2^63, the hardest case in a ring with zero divisors.
    odd = data.draw(st.integers(0, 2**63 - 1)) * 2 + 1
    c[i, j] = np.uint64((int(c[i, j]) + (odd << shift)) % 2**64)
    audit_seed_bytes = data.draw(st.binary(min_size=16, max_size=32))
    with pytest.raises(VerificationError):
        # Pass probability <= 2^-40 per example: a miss here is a bug, not bad luck.
        freivalds_audit(a, b, c, seed=audit_seed_bytes, rounds=40)


def test_top_bit_error_survives_one_round_about_half_the_time():
    # Soundness per round is exactly 1/2 against an error of 2^63: the bound is tight, not loose.
    rng = np.random.default_rng(1)
    a, b = rand_ring(rng, (16, 8)), rand_ring(rng, (8, 8))
    c = ring.matmul_reference(a, b)
    c[3, 4] = np.uint64((int(c[3, 4]) + 2**63) % 2**64)
    passes = 0
    for s in range(200):
        try:
            freivalds_audit(a, b, c, seed=s.to_bytes(16, "big"), rounds=1)
            passes += 1
        except VerificationError:
            pass
    assert 60 < passes < 140


def test_vectors_are_deterministic_and_binary():
    u = freivalds_vectors(SEED, 20, 100)
    assert u.shape == (20, 100) and set(np.unique(u).tolist()) <= {0, 1}
    assert np.array_equal(u, freivalds_vectors(SEED, 20, 100))
    assert not np.array_equal(u, freivalds_vectors(SEED[::-1], 20, 100))
    assert 0.4 < u.mean() < 0.6


def test_input_checks():
    a = np.ones((3, 4), np.uint64)
    b = np.ones((4, 5), np.uint64)
    c = ring.matmul_reference(a, b)
    with pytest.raises(ShapeError):
        freivalds_audit(a, b[:3], c, seed=SEED)
    with pytest.raises(ShapeError):
        freivalds_audit(a, b, c[:2], seed=SEED)
    with pytest.raises(TypeError):
        freivalds_audit(a.astype(np.int64), b, c, seed=SEED)
    with pytest.raises(TypeError):
        freivalds_audit(a, b, c, seed="seed" * 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        freivalds_audit(a, b, c, seed=b"short")
    with pytest.raises(ValueError):
        freivalds_audit(a, b, c, seed=SEED, rounds=0)


def test_audit_seed_binds_every_input():
    base = dict(node=NODE, epoch=5, beacon=b"\x07" * 32)
    root = b"\x01" * 32
    seeds = {
        audit_seed(root, **base),
        audit_seed(b"\x02" * 32, **base),
        audit_seed(root, **{**base, "node": "0x" + "bb" * 20}),
        audit_seed(root, **{**base, "epoch": 6}),
        audit_seed(root, **{**base, "beacon": b"\x08" * 32}),
        audit_seed(root, **base, context=b"layer-1"),
    }
    assert len(seeds) == 6
    assert audit_seed(root, **base) == audit_seed(root, **base)


def test_sample_indices():
    picks = sample_indices(SEED, 1000, 30)
    assert len(set(picks)) == 30 and all(0 <= i < 1000 for i in picks)
    assert picks == sample_indices(SEED, 1000, 30)
    assert sorted(sample_indices(SEED, 7, 7)) == list(range(7))
    with pytest.raises(ValueError):
        sample_indices(SEED, 3, 4)


def test_audit_by_recomputation():
    x = np.arange(-8, 8, dtype=np.int64)

    def relu(v):
        return np.maximum(v, 0)

    honest = commit_tensor(relu(x)).root
    audit_by_recomputation(relu, [x], honest)
    cheat = relu(x)
    cheat[3] = 1
    with pytest.raises(VerificationError):
        audit_by_recomputation(relu, [x], commit_tensor(cheat).root)


# --- the one-round audit modulo a random prime ----------------------------------------------------
U64_MAX = 2**64 - 1
ring_elements = st.one_of(st.sampled_from([0, 1, U64_MAX, 2**63, 2**63 - 1, 0x7F7F7F7F7F7F7F80]), st.integers(0, U64_MAX))


def _claim(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, h = ring.matmul_wide(a, b)
    return np.array(ring.to_numpy(c)), np.array(ring.to_numpy(h))  # writable copies


@settings(max_examples=20, deadline=None)
@given(data=st.data(), shape=st.sampled_from([(1, 1, 1), (3, 5, 2), (7, 4, 9), (12, 16, 6)]))
def test_one_round_passes_honest_products(data, shape):
    m, k, n = shape
    a = data.draw(hnp.arrays(np.uint64, (m, k), elements=ring_elements))
    b = data.draw(hnp.arrays(np.uint64, (k, n), elements=ring_elements))
    c, h = _claim(a, b)
    # The claim is the exact integer product of the unsigned operands (checked with Python ints).
    for i in range(m):
        for j in range(n):
            exact = sum(int(a[i, t]) * int(b[t, j]) for t in range(k))
            assert int(c[i, j]) + (int(h[i, j, 0]) << 64) + (int(h[i, j, 1]) << 128) == exact
    matmul_audit_one_round(a, b, c, h, seed=data.draw(st.binary(min_size=16, max_size=32)))


def test_one_round_takes_jax_operands():
    rng = np.random.default_rng(3)
    a, b = rand_ring(rng, (40, 30)), rand_ring(rng, (30, 20))
    c, h = ring.matmul_wide(a, b)
    matmul_audit_one_round(ring.asarray(a), ring.asarray(b), c, h, seed=SEED)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), where=st.sampled_from(["C", "H0", "H1"]), shift=st.integers(0, 63))
def test_one_round_catches_any_single_entry_change(data, seed, where, shift):
    rng = np.random.default_rng(seed)
    a, b = rand_ring(rng, (9, 7)), rand_ring(rng, (7, 5))
    c, h = _claim(a, b)
    i, j = data.draw(st.integers(0, 8)), data.draw(st.integers(0, 4))
    odd = data.draw(st.integers(0, 2**63 - 1)) * 2 + 1
    delta = np.uint64((odd << shift) % 2**64)  # odd * 2^shift, 2^63 included
    with np.errstate(over="ignore"):  # the change wraps mod 2^64, as a cheater's would
        if where == "C":
            c[i, j] += delta
        else:
            h[i, j, 0 if where == "H0" else 1] += delta
    with pytest.raises(VerificationError):
        # A wrong claim passes with probability < 2^-44: a miss here is a bug, not bad luck.
        matmul_audit_one_round(a, b, c, h, seed=data.draw(st.binary(min_size=16, max_size=32)))


def test_one_round_catches_a_claim_right_modulo_2_64():
    # The ring product is right, only the high part is off by one: Freivalds over Z_2^64 cannot see
    # this, the integer identity can.
    rng = np.random.default_rng(5)
    a, b = rand_ring(rng, (6, 8)), rand_ring(rng, (8, 4))
    c, h = _claim(a, b)
    freivalds_audit(a, b, c, seed=SEED)
    h[2, 3, 0] -= np.uint64(1)
    with pytest.raises(VerificationError):
        matmul_audit_one_round(a, b, c, h, seed=SEED)


@pytest.mark.parametrize("k", [31, 64])
def test_one_round_across_its_groups_of_32_entries(k):
    # Rows are summed in groups of 32 entries plus a shorter last group: rows of A with only a
    # short group (k = 31) or only full ones (k = 64), of B and C with a tail of 1 (n = 33) and of
    # H with a tail of 2 (2n = 66), with the largest entries, which fill every group sum.
    from edil.proofs._freivalds import _SMALL_AUDIT

    rng = np.random.default_rng(k)
    m, n = 150, 33
    a = rand_ring(rng, (m, k))
    b = rand_ring(rng, (k, n))
    a[0], b[:, 0] = U64_MAX, U64_MAX
    c, h = _claim(a, b)
    assert a.size + b.size + 3 * c.size > _SMALL_AUDIT
    matmul_audit_one_round(a, b, c, h, seed=SEED)
    c[1, n - 1] ^= np.uint64(1)
    with pytest.raises(VerificationError):
        matmul_audit_one_round(a, b, c, h, seed=SEED)


# A shape past the exact-integer path (2^14 entries in all): the compiled int8-GEMM check runs.
COMPILED = (40, 24, 130)


def _compiled_claim() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from edil.proofs._freivalds import _SMALL_AUDIT

    m, k, n = COMPILED
    assert m * k + k * n + 3 * m * n > _SMALL_AUDIT
    rng = np.random.default_rng(11)
    a, b = rand_ring(rng, (m, k)), rand_ring(rng, (k, n))
    a[0], b[:, 0], a[1], b[:, 1] = U64_MAX, U64_MAX, 2**63, 0x7F7F7F7F7F7F7F80  # extreme digits
    c, h = _claim(a, b)
    return a, b, c, h


def test_one_round_compiled_path_passes_honest_products_without_touching_them():
    a, b, c, h = _compiled_claim()
    before = [x.copy() for x in (a, b, c, h)]
    matmul_audit_one_round(a, b, c, h, seed=SEED)
    matmul_audit_one_round(ring.asarray(a), ring.asarray(b), ring.asarray(c), ring.asarray(h), seed=SEED)
    matmul_audit_one_round(np.asfortranarray(a), b.T.copy().T, c, h, seed=SEED)  # strided operands
    assert all(np.array_equal(x, y) for x, y in zip(before, (a, b, c, h), strict=True))


@settings(max_examples=30, deadline=None)
@given(
    where=st.sampled_from(["C", "H0", "H1", "A", "B"]),
    i=st.integers(0, COMPILED[0] - 1),
    j=st.integers(0, COMPILED[2] - 1),
    delta=st.one_of(st.sampled_from([1, 2**63, 2**64 - 1, 2**32]), st.integers(1, 2**64 - 1)),
    seed=st.binary(min_size=16, max_size=32),
)
def test_one_round_compiled_path_catches_one_wrong_entry(where, i, j, delta, seed):
    # One entry off by delta (mod 2^64: 2^63 and a change of H's top word included), in the claim
    # or in an operand the claim no longer matches. A wrong claim passes with probability < 2^-44.
    a, b, c, h = _compiled_claim()
    with np.errstate(over="ignore"):
        if where == "C":
            c[i, j] += np.uint64(delta)
        elif where in ("H0", "H1"):
            h[i, j, int(where[1])] += np.uint64(delta)
        elif where == "A":
            a[i, j % COMPILED[1]] += np.uint64(delta)
        else:
            b[i % COMPILED[1], j] += np.uint64(delta)
    with pytest.raises(VerificationError):
        matmul_audit_one_round(a, b, c, h, seed=seed)


@pytest.mark.parametrize("cols", [1, 31, 32, 33, 200, 4100])
def test_matvec_mod_is_exact_at_the_largest_entries_and_weights(cols):
    # x @ w mod p against Python integers, with every entry 2^64 - 1 (and a random block) and every
    # weight p - 1 (and random residues): the group sums reach their 2^64 bound here.
    import jax
    import jax.numpy as jnp

    from edil.proofs._freivalds import _matvec_mod

    p = audit_prime(SEED + cols.to_bytes(4, "big"))
    rng = np.random.default_rng(cols)
    x = rand_ring(rng, (5, cols))
    x[:2] = U64_MAX
    w = rng.integers(0, p, size=cols, dtype=np.uint64)
    w[: cols // 2] = p - 1
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(_matvec_mod)(jnp.asarray(x), jnp.asarray(w), jnp.uint64(p)))
    want = [sum(int(v) * int(u) for v, u in zip(row, w, strict=True)) % p for row in x]
    assert [int(v) for v in got] == want


def test_modular_helpers_are_exact_over_their_whole_range():
    import jax
    import jax.numpy as jnp

    from edil.proofs._freivalds import _mul_pow2, _rem, _shl_mod

    p = audit_prime(SEED)
    rng = np.random.default_rng(2)
    xs = np.concatenate([rng.integers(0, 2**64, size=200, dtype=np.uint64, endpoint=False),
                         np.array([0, 1, p - 1, p, p + 1, 2 * p - 1, 2 * p, U64_MAX, U64_MAX - p], np.uint64)])
    vs = np.concatenate([rng.integers(0, p, size=200, dtype=np.uint64), np.array([0, 1, p - 1], np.uint64)])
    with jax.enable_x64(True):
        rem = np.asarray(_rem(jnp.asarray(xs), jnp.uint64(p)))
        shifted = {bits: np.asarray(_shl_mod(jnp.asarray(vs), jnp.uint64(p), bits)) for bits in (26, 32, 64, 128)}
        # One step: any uint64 up to 37 bits of shift, residues up to 50.
        wide = {bits: np.asarray(_mul_pow2(jnp.asarray(xs), jnp.uint64(p), bits)) for bits in (1, 32, 37)}
        narrow = np.asarray(_mul_pow2(jnp.asarray(vs), jnp.uint64(p), 50))
    assert [int(v) for v in rem] == [int(v) % p for v in xs]
    for bits, got in wide.items():
        assert [int(v) for v in got] == [(int(v) << bits) % p for v in xs]
    assert [int(v) for v in narrow] == [(int(v) << 50) % p for v in vs]
    for bits, got in shifted.items():
        assert [int(v) for v in got] == [(int(v) << bits) % p for v in vs]


def test_the_stated_error_bound_follows_from_dusarts_bounds():
    # The module docstring's derivation, recomputed: N = pi(2^52) - pi(2^51) > 2^45.82 primes by
    # Dusart's explicit bounds, at most 3 of them divide a non-zero |d| < 2^192, and r is
    # orthogonal to a non-zero row mod p with probability <= 2^-51: a wrong claim passes with
    # probability < 2^-44 (target 2^-40).
    import math

    from edil.proofs._freivalds import _PRIME_BITS, _VECTOR_BITS

    def pi_low(x: float) -> float:  # x >= 599
        return x / math.log(x) * (1 + 1 / math.log(x))

    def pi_high(x: float) -> float:  # x > 1
        return x / math.log(x) * (1 + 1.2762 / math.log(x))

    # The bounds hold where the primes can be counted (a sieve up to 2^20).
    sieve = np.ones(2**20 + 1, bool)
    sieve[:2] = False
    for q in range(2, 1025):
        sieve[q * q :: q] = False
    counts = np.cumsum(sieve)
    for e in range(10, 21):
        assert pi_low(2.0**e) <= counts[2**e] <= pi_high(2.0**e)
    lo_bits = _PRIME_BITS - 1
    primes = pi_low(2.0**_PRIME_BITS) - pi_high(2.0**lo_bits)
    assert math.log2(primes) > 45.82
    factors = 192 // lo_bits  # 2^(lo_bits * (factors + 1)) > 2^192
    assert factors == 3 and 2 ** (lo_bits * (factors + 1)) > 2**192
    assert _VECTOR_BITS == lo_bits
    assert factors / primes + 2.0**-_VECTOR_BITS < 2.0**-44


def test_a_claim_off_by_the_audit_prime_passes_only_under_that_prime():
    # D = -p0 at one entry is 0 modulo p0: the audit under the seed that draws p0 accepts it, which
    # is why p is drawn after the commitment; under any other seed it is caught.
    from edil.proofs._freivalds import _SMALL_AUDIT

    m, k, n = COMPILED
    a, b, c, h = _compiled_claim()
    assert m * k + k * n + 3 * m * n > _SMALL_AUDIT
    seed0 = SEED
    p0 = audit_prime(bytes(seed0) + b"".join(d.to_bytes(8, "big") for d in (m, k, n)))
    total = int(c[4, 7]) + (int(h[4, 7, 0]) << 64) + (int(h[4, 7, 1]) << 128) + p0
    c[4, 7], h[4, 7, 0], h[4, 7, 1] = (np.uint64((total >> s) % 2**64) for s in (0, 64, 128))
    matmul_audit_one_round(a, b, c, h, seed=seed0)
    for s in range(3):
        with pytest.raises(VerificationError):
            matmul_audit_one_round(a, b, c, h, seed=bytes([s]) * 16)


@pytest.mark.parametrize("where", ["C", "H0", "H1", "A", "B"])
def test_one_round_catches_every_single_flipped_bit(where):
    # One bit flipped anywhere in a 64-bit word of the claim (the high words included) or of an
    # operand: each of the 64 positions is caught by the compiled check.
    a, b, c, h = _compiled_claim()
    target = {"C": c, "H0": h[..., 0], "H1": h[..., 1], "A": a, "B": b}[where]
    rng = np.random.default_rng(len(where))
    for bit in range(64):
        i, j = (int(rng.integers(0, d)) for d in target.shape)
        target[i, j] ^= np.uint64(1 << bit)
        with pytest.raises(VerificationError):
            matmul_audit_one_round(a, b, c, h, seed=SEED + bytes([bit]))
        target[i, j] ^= np.uint64(1 << bit)
    matmul_audit_one_round(a, b, c, h, seed=SEED)  # restored: passes again


def test_audit_prime_is_a_52_bit_prime_bound_to_its_seed():
    from edil.proofs._freivalds import _is_prime

    sieve = np.ones(20000, bool)
    sieve[:2] = False
    for q in range(2, 142):
        sieve[q * q :: q] = False
    assert [n for n in range(20000) if _is_prime(n)] == np.flatnonzero(sieve).tolist()
    assert _is_prime(2**61 - 1) and not _is_prime(3215031751) and not _is_prime(2**61 + 1)  # a strong pseudoprime
    primes = {audit_prime(bytes([s]) * 16) for s in range(8)}
    assert len(primes) == 8
    for p in primes:
        assert 2**51 <= p < 2**52 and all(pow(w, p - 1, p) == 1 for w in (2, 3, 5, 7, 1009))
    assert audit_prime(SEED) == audit_prime(SEED)


def test_one_round_input_checks():
    a, b = np.ones((3, 4), np.uint64), np.ones((4, 5), np.uint64)
    c, h = _claim(a, b)
    with pytest.raises(ShapeError):
        matmul_audit_one_round(a, b[:3], c, h, seed=SEED)
    with pytest.raises(ShapeError):
        matmul_audit_one_round(a, b, c, h[..., 0], seed=SEED)
    with pytest.raises(TypeError):
        matmul_audit_one_round(a, b, c, h.astype(np.int64), seed=SEED)
    with pytest.raises(ValueError):
        matmul_audit_one_round(a, b, c, h, seed=b"short")
