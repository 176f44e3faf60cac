"""Freivalds audits over Z_2^64, audit seeds and recomputation audits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edil import ShapeError, VerificationError
from edil.hazmat import ring
from edil.proofs import audit_by_recomputation, audit_seed, commit_tensor, freivalds_audit, sample_indices
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
