"""Masked: sharing algebra, truncation error bound, share independence, bad input."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import edil
from edil import Masked
from edil import _mpc as mpc
from edil.hazmat import ring

reals = hnp.arrays(np.float64, (3, 4), elements=st.floats(-1000, 1000))


@settings(max_examples=40, deadline=None)
@given(reals, st.integers(2, 5), st.integers(0, 2**32))
def test_reconstruct_share_is_identity(x: np.ndarray, n: int, seed: int) -> None:
    s = Masked(n, key=jax.random.key(seed))
    enc = s.encode(x)
    np.testing.assert_allclose(s.reconstruct(s.split(enc)), x, atol=2.0**-17)


@settings(max_examples=30, deadline=None)
@given(reals, reals, st.integers(0, 2**32))
def test_add_and_sub_are_exact_in_the_ring(x: np.ndarray, y: np.ndarray, seed: int) -> None:
    s = Masked(3, key=jax.random.key(seed))
    fp = s.fp
    got = ring.to_numpy(sum(np.asarray(v) for v in np.asarray(s.add(s.encode(x), s.encode(y)).shares)))
    np.testing.assert_array_equal(got, fp.encode(x) + fp.encode(y))


@settings(max_examples=30, deadline=None)
@given(st.integers(-(2**61), 2**61), st.integers(2, 4), st.integers(0, 2**32))
def test_truncation_error_bound(value: int, n: int, seed: int) -> None:
    """trunc(x) = floor(x / 2^f) + b with b in {0, 1}: less than 1 ulp from x / 2^f."""
    f = 16
    key = jax.random.key(seed)
    secret = np.array([value % (1 << 64)] * 64, dtype=np.uint64)
    with jax.enable_x64(True):
        shares = mpc.JaxDealer(key, n, f).share(ring.asarray(secret))
        p = mpc.stacked_party(mpc.JaxDealer(jax.random.key(seed + 1), n, f), n, f)
        out = mpc.run_stacked(mpc.trunc(p, shares), p)
    got = ring.to_numpy(np.sum(np.asarray(out), axis=0, dtype=np.uint64)).view(np.int64)
    exact = value / 2**f
    assert np.all(np.abs(got - exact) < 1.0)
    low = value >> f  # exact floor in Python integers
    assert set(got.tolist()) <= {low, low + 1}


def test_truncation_error_bound_through_the_api() -> None:
    s = Masked(2, key=jax.random.key(3))
    x = np.linspace(-100, 100, 4001)
    out = s.decode(s.mul_public(s.encode(x), 0.5))
    # encoding rounds x by <= 2^-17, times 0.5, plus < 1 ulp of truncation
    assert np.max(np.abs(out - x * 0.5)) <= 2.0**-18 + 2.0**-16


def test_one_partys_shares_are_independent_of_the_secret() -> None:
    """Party 1's shares of 0 and of a large secret are both uniform (chi-square on bytes)."""
    from scipy.stats import chisquare

    for n in (2, 3):
        for secret in (0.0, 12345.678):
            s = Masked(n, key=jax.random.key(99))
            x = np.full(40000, secret)
            views = [ring.to_numpy(sh.data) for sh in s.split(s.encode(x))[1:]]
            for view in views:
                # every byte position of the share is uniform over 0..255
                for byte in (0, 3, 7):
                    counts = np.bincount(((view >> np.uint64(8 * byte)) & np.uint64(255)).astype(np.int64), minlength=256)
                    assert chisquare(counts).pvalue > 1e-4
            # and the top bit of the share does not correlate with the secret's sign
            assert abs(np.mean(views[0] >> np.uint64(63)) - 0.5) < 0.02


def test_openings_are_counted_in_bytes() -> None:
    s = Masked(3, key=jax.random.key(0))
    a = s.encode(np.ones((4, 5)))
    s.stats.reset()
    s.mul(a, a)
    # one round opens Beaver's e and d, one the truncation mask: 3 x 20 elements in 2 rounds,
    # each element sent by each of 3 parties to the 2 others (8 bytes)
    assert s.stats.bytes_opened == 3 * 20 * 3 * 2 * 8
    assert s.stats.openings == 2
    assert s.stats.triples == 20


def test_shares_from_different_sharings_cannot_be_combined() -> None:
    s = Masked(2, key=jax.random.key(0))
    a, b = s.split(s.encode([1.0])), s.split(s.encode([1.0]))
    with pytest.raises(edil.SchemeMismatchError, match="different sharings"):
        s.reconstruct([a[0], b[1]])
    with pytest.raises(edil.ParameterError, match="parties"):
        s.reconstruct([a[0], a[0]])
    with pytest.raises(edil.ParameterError, match="parties"):
        s.reconstruct([a[0]])
    with pytest.raises(edil.UnsupportedOperationError, match="Share"):
        s.reconstruct([a[0], "not a share"])  # type: ignore[list-item]


def test_mismatched_parameters_are_rejected() -> None:
    a = Masked(2, frac_bits=16, key=jax.random.key(0))
    b = Masked(2, frac_bits=12, key=jax.random.key(0))
    c = Masked(3, key=jax.random.key(0))
    with pytest.raises(edil.SchemeMismatchError, match="f=12"):
        a.add(a.encode([1.0]), b.encode([1.0]))
    with pytest.raises(edil.SchemeMismatchError):
        a.reconstruct(c.split(c.encode([1.0]))[:2])


def test_constructor_validation() -> None:
    with pytest.raises(edil.ParameterError, match="n_parties"):
        Masked(1)
    with pytest.raises(ValueError):
        Masked(2, frac_bits=40)


def test_same_key_is_byte_reproducible() -> None:
    x = np.arange(6.0).reshape(2, 3)
    a = Masked(2, key=jax.random.key(5)).encode(x)
    b = Masked(2, key=jax.random.key(5)).encode(x)
    np.testing.assert_array_equal(np.asarray(a.shares), np.asarray(b.shares))


def test_private_weights_matmul_hides_weights_from_one_party() -> None:
    s = Masked(2, key=jax.random.key(1))
    w = np.eye(3)
    shares = s.split(s.encode_weights(w))
    # a single party's share of the identity looks nothing like it
    assert not np.array_equal(shares[0].data, s.fp.encode(w))
    x = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(s.decode(s.matmul(s.encode(x), s.encode_weights(w))), x, atol=1e-4)


def test_compiled_model_equals_op_by_op_and_counts_the_same_openings() -> None:
    from edil import models
    from tests import _workloads as wl

    x, _ = wl.digits()
    _, model = wl.mlp_digits()
    s1, s2 = Masked(2, key=jax.random.key(4)), Masked(2, key=jax.random.key(4))
    em1, em2 = models.encode_model(model, s1), models.encode_model(model, s2)
    fused = s1.decode(em1(s1.encode(x[:100])))
    stepwise = s2.decode(em2.run_layers(s2.encode(x[:100])))
    np.testing.assert_allclose(fused, model.forward(x[:100]), atol=0.02)
    np.testing.assert_allclose(fused, stepwise, atol=0.02)
    # the compiled program leaves the activation's sum at 2f bits for the last dense layer
    # ("poly2f"): one truncation of the hidden layer fewer than op by op, the same otherwise
    hidden = model.layers[0].out_features
    assert s2.stats.bytes_opened - s1.stats.bytes_opened == 100 * hidden * 2 * 8
    assert s1.stats.openings == s2.stats.openings - 1


def test_preprocessed_material_is_single_use() -> None:
    from edil import models
    from tests import _workloads as wl

    x, _ = wl.digits()
    _, model = wl.mlp_digits()
    s = Masked(3, key=jax.random.key(8))
    em = models.encode_model(model, s)
    pre = em.preprocess(50)
    out = s.decode(em(s.encode(x[:50]), preprocessed=pre))
    np.testing.assert_allclose(out, model.forward(x[:50]), atol=0.02)
    with pytest.raises(edil.ReplayError):
        em(s.encode(x[:50]), preprocessed=pre)
    with pytest.raises(edil.ShapeError):
        em(s.encode(x[:10]), preprocessed=em.preprocess(50))


def test_weights_that_underflow_the_fixed_point_are_refused_by_name() -> None:
    """Tiny weights that would round to 0 and, summed over a column, shift an output by more than
    one unit are refused (naming the weight and a frac_bits that holds it), in process and on nodes."""
    from edil import EncodingError, models
    from edil.models import Dense, Sequential

    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 3))
    w[:, 1] = 4e-6  # each encodes to 0 at 16 bits; 64 of them lose 2.6e-4 per unit of input
    model = Sequential((Dense(w, np.zeros(3)),))
    s = Masked(2, key=jax.random.key(0))
    x = rng.uniform(-1, 1, size=(5, 64))
    with pytest.raises(EncodingError, match=r"layer 1 weight \[\d+, 1\].*frac_bits"):
        models.encode_model(model, s).infer(x)
    with pytest.raises(EncodingError, match="layer 1 weight"):
        s.program(model, private_weights=True, bound=1.0)
    ok = Sequential((Dense(w[:, [0, 2]], np.zeros(2)),))
    np.testing.assert_allclose(models.encode_model(ok, s).infer(x), ok.forward(x), atol=1e-3)


def test_a_model_that_could_wrap_the_ring_is_refused() -> None:
    """A degree-4 term over inputs up to 200 passes 2^62 before truncation: refused, not wrapped."""
    from edil import OverflowRangeError, models
    from edil.models import Dense, Polynomial, Sequential

    model = Sequential((Dense(np.eye(2), np.zeros(2)), Polynomial((0.0, 0.0, 0.0, 0.0, 1.0))))
    s = Masked(2, key=jax.random.key(1))
    with pytest.raises(OverflowRangeError, match="layer 2 \\(polynomial\\).*2\\^62"):
        models.encode_model(model, s).infer(np.array([[200.0, -3.0]]))
    small = np.array([[2.0, -3.0]])
    np.testing.assert_allclose(models.encode_model(model, s).infer(small), model.forward(small), rtol=1e-3)
