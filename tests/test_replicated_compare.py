"""Exact comparison under ``Replicated`` (no dealer): sign, ReLU, max, argmax, max pooling, against numpy.

The whole-ring properties run the three parties as separate host programs (each with only its
own pair and its own two pairwise streams, messages relayed); the scheme's simulator is checked
to give the same values, and the cost per ReLU element is counted.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edil import Replicated, models
from edil import _replicated as rep

U64 = np.uint64
F = 16
I64 = st.integers(-(1 << 63), (1 << 63) - 1)
EDGES = [0, -1, 1, -(1 << 63), (1 << 63) - 1, 1 << 62, -(1 << 62)]
FAST = settings(max_examples=25, deadline=None)


def scheme(tag: int = 0) -> Replicated:
    return Replicated(seed=b"test-rep-compare" + tag.to_bytes(16, "big"))


def on_hosts(program: Any, secrets: list[np.ndarray], tag: int = 0) -> tuple[list[Any], rep.Cost]:
    """Run ``program`` as three separate parties on replicated sharings of ``secrets`` (ring values)."""
    s = scheme(tag)
    shares = [s.party_shares(s.share_ring(v)) for v in secrets]
    cost = rep.Cost()
    parties = [rep.host_party(i, F, s.party_streams(i)) for i in range(3)]
    outs = rep.run_parties([program(p, *(sh[i] for sh in shares)) for i, p in enumerate(parties)], cost=cost)
    return outs, cost


def opened(outs: list[Any]) -> np.ndarray:
    """The secret of the parties' output pairs, after checking they form one replicated sharing."""
    for i in range(3):
        np.testing.assert_array_equal(outs[i][1], outs[(i + 1) % 3][0])
    with np.errstate(over="ignore"):
        return np.asarray(outs[0][0] + outs[1][0] + outs[2][0], U64)


def opened_bits(outs: list[rep.Bits]) -> np.ndarray:
    for i in range(3):
        np.testing.assert_array_equal(outs[i].b, outs[(i + 1) % 3].a)
    return np.asarray(outs[0].a ^ outs[1].a ^ outs[2].a, U64)


# --- the whole ring, three separate parties ----------------------------------------------------------
@FAST
@given(x=st.lists(I64, min_size=5, max_size=5), tag=st.integers(0, 2**16))
def test_sign_relu_and_bit_injection_are_exact_over_the_whole_ring(x: list[int], tag: int) -> None:
    v = np.array(x + EDGES, dtype=np.int64)
    outs, cost = on_hosts(rep.ltz, [v.view(U64)], tag)
    assert np.array_equal(opened_bits(outs) & U64(1), (v < 0).astype(U64))
    assert cost.rounds == 8  # one carry-save level, then the seven levels of the adder
    outs, cost = on_hosts(rep.relu, [v.view(U64)], tag)
    assert np.array_equal(opened(outs).view(np.int64), np.maximum(v, 0))
    assert cost.rounds == 9  # the daBit's two rounds ride along the adder's; one selection round
    outs, _ = on_hosts(lambda p, u: rep.ltz_arith(p, u, 1 << F), [v.view(U64)], tag)
    assert np.array_equal(opened(outs), (v < 0).astype(U64) << U64(F))


@FAST
@given(x=st.lists(I64, min_size=6, max_size=6), y=st.lists(I64, min_size=6, max_size=6), tag=st.integers(0, 2**16))
def test_maximum_is_exact_over_the_whole_ring(x: list[int], y: list[int], tag: int) -> None:
    a, b = np.array(x, np.int64), np.array(y, np.int64)
    b[:2] = a[:2]  # ties
    outs, _ = on_hosts(rep.maximum, [a.view(U64), b.view(U64)], tag)
    # a - (a - b) [a - b < 0]: the signed difference decides, as the ring sees it
    with np.errstate(over="ignore"):
        d = a - b
    assert np.array_equal(opened(outs).view(np.int64), np.where(d < 0, b, a))


@FAST
@given(m=st.integers(1, 7), data=st.data())
def test_max_and_argmax_match_numpy_with_ties(m: int, data: st.DataObject) -> None:
    small = st.integers(-3, 3).map(lambda v: v << F)  # makes ties common
    rows = data.draw(st.lists(st.lists(st.one_of(small, st.integers(-(1 << 46), 1 << 46)), min_size=m, max_size=m),
                              min_size=3, max_size=3))
    v = np.array(rows, dtype=np.int64)
    outs, cost = on_hosts(rep.max_, [v.view(U64)])
    assert np.array_equal(opened(outs).view(np.int64), v.max(axis=-1))
    assert cost.rounds == 9 * int(np.ceil(np.log2(m)))  # one comparison level per halving
    outs, _ = on_hosts(rep.argmax, [v.view(U64)])
    onehot = np.eye(m, dtype=np.int64)[v.argmax(axis=-1)] << F  # the first maximum, as numpy
    assert np.array_equal(opened(outs).view(np.int64), onehot)


def test_the_scheme_agrees_with_numpy_and_counts_every_relu_byte() -> None:
    rng = np.random.default_rng(5)
    x = np.round(rng.normal(size=(6, 7)) * 4) / 4  # quarter steps: ties in max and argmax
    x[0] = 0.5  # a row of ties
    s = scheme(1)
    e = s.encode(x)
    s.stats.reset()
    np.testing.assert_array_equal(s.decode(s.relu(e)), np.maximum(x, 0))
    # per element: 13 AND words (1 carry-save + 12 adder), 2 for the daBit, 2 for the selection
    assert s.stats.openings == 9
    assert [s.stats.extra[f"bytes_sent_by_party_{i}"] for i in range(3)] == [17 * 8 * x.size] * 3
    np.testing.assert_array_equal(s.decode(s.ltz(e)), (x < 0).astype(float))
    np.testing.assert_array_equal(s.decode(s.max(e, axis=1)), x.max(axis=1))
    np.testing.assert_array_equal(s.decode(s.argmax(e, axis=1)), np.eye(7)[x.argmax(axis=1)])
    np.testing.assert_array_equal(s.decode(s.argmax(e, axis=1, one_hot=False)), x.argmax(axis=1))
    np.testing.assert_array_equal(s.decode(s.maximum(e, s.encode(x[::-1]))), np.maximum(x, x[::-1]))


# --- models -----------------------------------------------------------------------------------------------
def test_max_pooling_and_relu_layers_and_the_argmax_output() -> None:
    rng = np.random.default_rng(2)
    index = np.array([[0, 1, 2], [2, 3, 4], [5, 5, 1]])
    model = models.Sequential((models.Dense(rng.normal(size=(4, 6)), rng.normal(size=6)), models.MaxPool(index, 6),
                               models.ReLU(), models.Dense(rng.normal(size=(3, 3)), rng.normal(size=3))), kind="multiclass")
    x = rng.normal(size=(8, 4))
    s = scheme(2)
    em = models.encode_model(model, s)
    want = model.forward(x)
    np.testing.assert_allclose(em.infer(x), want, atol=1e-3)
    np.testing.assert_array_equal(em.infer(x, output="argmax"), np.eye(3)[want.argmax(axis=1)])
    np.testing.assert_array_equal(em.infer(x, output="index"), want.argmax(axis=1))
    assert np.array_equal(em.predict(x, output="argmax"), want.argmax(axis=1))
    # the same program, with the argmax fused as its last layer, on three separate parties
    spec, weights = s._model_spec(em)  # noqa: SLF001
    assert [la[0] for la in spec] == ["public", "maxpool", "relu", "public"]
    host = scheme(2)
    shares = host.party_shares(host.encode(x))
    parties = [rep.host_party(i, F, host.party_streams(i)) for i in range(3)]
    outs = rep.run_parties([rep.model(p, shares[i], (*spec, ("argmax",)), [np.asarray(w) for w in weights])
                            for i, p in enumerate(parties)])
    np.testing.assert_array_equal(opened(outs).view(np.int64), np.eye(3, dtype=np.int64)[want.argmax(axis=1)] << F)


def test_simulator_and_separate_parties_agree_bit_for_bit_on_a_relu_model() -> None:
    rng = np.random.default_rng(3)
    model = models.Sequential((models.Dense(rng.normal(size=(5, 4)), rng.normal(size=4)), models.ReLU(),
                               models.Dense(rng.normal(size=(4, 2)), rng.normal(size=2))))
    x = rng.normal(size=(3, 5))
    sim, host = scheme(6), scheme(6)
    enc = sim.encode(x)
    want = sim.run_model(models.encode_model(model, sim), enc)
    spec, weights = host._model_spec(models.encode_model(model, host))  # noqa: SLF001
    shares = sim.party_shares(enc)
    parties = [rep.host_party(i, F, host.party_streams(i)) for i in range(3)]
    cost = rep.Cost()
    outs = rep.run_parties([rep.model(p, shares[i], spec, [np.asarray(w) for w in weights]) for i, p in enumerate(parties)],
                           cost=cost)
    np.testing.assert_array_equal(np.stack([o[0] for o in outs]), np.asarray(want.components))
    assert cost.rounds == sim.stats.openings == 1 + 9 + 1  # truncation, ReLU, truncation


@pytest.fixture(scope="module")
def deep_relu_net() -> tuple[Any, models.Sequential, np.ndarray]:
    """A 64-32-32-32-10 ReLU net on digits with exact ReLU layers (as in ``test_masked_compare``)."""
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier((32, 32, 32), alpha=1e-2, max_iter=150, random_state=0).fit(x[:1200], y[:1200])
    for w in clf.coefs_:  # weights below the fixed-point resolution are zero in both models
        w[np.abs(w) < 2.0**-14] = 0.0
    return clf, models.from_sklearn(clf, activations="exact"), x[1200:]


def test_deep_relu_net_under_exact_relu_agrees_with_the_float_model(deep_relu_net: Any) -> None:
    clf, exact, x = deep_relu_net
    assert sum(isinstance(la, models.ReLU) for la in exact.layers) == 3 and not exact.approximations
    s = scheme(7)
    labels = models.encode_model(exact, s).predict(x)
    agreement = float(np.mean(labels == clf.predict(x)))
    assert agreement >= 0.995, agreement  # 597 held-out rows
    logits = s.decode(models.encode_model(exact, s)(s.encode(x[:50])))
    ref = exact.forward(x[:50])
    assert np.max(np.abs(logits - ref)) < 1e-2  # fixed point (f = 16) and truncation's one ulp per layer


def test_what_one_party_receives_in_a_relu_looks_uniform_whatever_the_sign() -> None:
    """Every word party 0 receives (AND-gate shares, daBit products, the opened ``b ^ r``) is masked:
    bit 0 is set in about half of the elements, for an all-positive and an all-negative secret alike."""
    n = 4000
    for value in (5 << F, -(5 << F)):
        s = scheme(9)
        shares = s.party_shares(s.share_ring(np.full(n, value, np.int64).view(U64)))
        parties = [rep.host_party(i, F, s.party_streams(i)) for i in range(3)]
        views: list[list[np.ndarray]] = [[], [], []]
        rep.run_parties([rep.relu(p, shares[i]) for i, p in enumerate(parties)], views=views)
        assert sum(m.size for m in views[0]) == (13 + 2 + 2) * n  # 13 AND words, 2 daBit products, 2 in the selection
        for msg in views[0]:
            for row in msg.reshape(-1, n):
                assert 0.45 < float(np.mean(row & U64(1))) < 0.55
