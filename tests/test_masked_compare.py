"""Exact secure comparison under ``Masked``: bit decomposition, ReLU, max, argmax, CrypTen-style functions.

The same party programs run three ways here: on numpy hosts in lock step with the runtime's
seed-compressed dealer (every party its own :class:`~edil.hazmat.mpc.PartyDealer`, openings
combined as the coordinator does), in the in-process simulator (``Masked``, one XLA program), and
on runtime nodes (``Scheduler.run_masked``), where a lie in a XOR-opened word is caught by replay.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edil import Masked, ShapeError, UnsupportedOperationError, _mpc, models
from edil import runtime as rt
from edil.hazmat import mpc
from edil.proofs import Eip712Domain
from edil.runtime.testing import Faults, faulty

F = 16
U64 = np.uint64
I64 = st.integers(-(1 << 63), (1 << 63) - 1)
WORD = st.integers(0, (1 << 64) - 1)
FAST = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- a lock-step driver of n host parties (what nodes and the coordinator do, in one process) ------
def _drive(steps: list, *, combine=mpc.combine):  # noqa: ANN001, ANN202
    outs: list = [None] * len(steps)
    contribs = []
    for i, s in enumerate(steps):
        try:
            contribs.append(next(s))
        except StopIteration as stop:  # a program that opens nothing (a maximum over one value)
            outs[i] = stop.value
    if not contribs:
        return outs, 0
    rounds = 0
    while True:
        kinds = mpc.kinds_of(contribs[0])
        assert all(mpc.kinds_of(c) == kinds for c in contribs)  # every party opens each array the same way
        opened = combine(contribs, kinds)
        rounds += 1
        nxt = []
        for i, s in enumerate(steps):
            try:
                nxt.append(s.send(opened))
            except StopIteration as stop:
                outs[i] = stop.value
        if len(nxt) == 0:
            return outs, rounds
        assert len(nxt) == len(steps)
        contribs = nxt


def _dry(program, shapes, n):  # noqa: ANN001, ANN202
    """The material a program consumes (every party asks for the same; party 0's list is kept)."""
    items: list[list] = [[] for _ in range(n)]

    def recorder(i):  # noqa: ANN001, ANN202
        def record(kind, *s):  # noqa: ANN001, ANN202
            items[i].append((kind, tuple(s)))
            return tuple(np.zeros(x, U64) for x in mpc.material_shapes(kind, s))

        return record

    _drive([program(mpc.host_party(i, n, F, recorder(i)), *(np.zeros(s, U64) for s in shapes)) for i in range(n)])
    assert all(it == items[0] for it in items)
    return items[0]


def _share(x: np.ndarray, n: int, rng: np.random.Generator, kind: str = mpc.ADD) -> list[np.ndarray]:
    others = [rng.integers(0, 1 << 64, size=x.shape, dtype=U64) for _ in range(n - 1)]
    first = x.copy()
    with np.errstate(over="ignore"):
        for o in others:
            first = first ^ o if kind == mpc.XOR else first - o
    return [first, *others]


def on_hosts(program, xs, n, *, seed=b"\x42" * 32, kinds=None):  # noqa: ANN001, ANN201
    """Run ``program(party, *shares)`` on ``n`` host parties; returns the opened output and the rounds."""
    rng = np.random.default_rng(int.from_bytes(seed[:4], "big"))
    kinds = kinds or [mpc.ADD] * len(xs)
    xs = [np.asarray(x).astype(U64) if np.asarray(x).dtype != U64 else np.asarray(x) for x in xs]
    items = _dry(program, [x.shape for x in xs], n)
    dealt = mpc.deal_all(items, n, F, seed=seed)
    dealers = [mpc.PartyDealer(i, n, F, dealt.seeds[i], dealt.corrections if i == n - 1 else ()) for i in range(n)]
    shares = [_share(x, n, rng, k) for x, k in zip(xs, kinds)]
    outs, rounds = _drive([program(mpc.host_party(i, n, F, dealers[i]), *(s[i] for s in shares)) for i in range(n)])
    assert dealers[-1].finished()
    return outs, rounds


def _sum(outs):  # noqa: ANN001, ANN202
    with np.errstate(over="ignore"):
        return np.sum(np.stack(outs), axis=0, dtype=U64)


def _xor(outs):  # noqa: ANN001, ANN202
    return np.bitwise_xor.reduce(np.stack(outs), axis=0)


# --- the binary circuits against integers ----------------------------------------------------------
@FAST
@given(n=st.integers(2, 4), x=st.lists(WORD, min_size=6, max_size=6), y=st.lists(WORD, min_size=6, max_size=6))
def test_and_adder_and_bit_decomposition_match_integers(n: int, x: list[int], y: list[int]) -> None:
    a, b = np.array(x, dtype=U64), np.array(y, dtype=U64)
    outs, rounds = on_hosts(lambda p, u, v: mpc.and_(p, u, v), [a, b], n, kinds=[mpc.XOR, mpc.XOR])
    assert np.array_equal(_xor(outs), a & b) and rounds == 1
    outs, rounds = on_hosts(lambda p, u, v: mpc.add_bits(p, u, v), [a, b], n, kinds=[mpc.XOR, mpc.XOR])
    with np.errstate(over="ignore"):
        assert np.array_equal(_xor(outs), a + b)
    assert rounds == 7  # Kogge-Stone: one AND, then six levels
    outs, rounds = on_hosts(mpc.to_binary, [a], n)  # A2B: the XOR sharing of an additive secret
    assert np.array_equal(_xor(outs), a)
    assert rounds == 7 + (n - 2)  # carry-save levels: 3 -> 2 takes one, 4 -> 3 -> 2 two


@FAST
@given(n=st.sampled_from([2, 3]), x=st.lists(I64, min_size=7, max_size=7))
def test_sign_relu_and_bit_to_arithmetic_are_exact_over_the_whole_ring(n: int, x: list[int]) -> None:
    v = np.array(x + [0, -1, 1, -(1 << 63), (1 << 63) - 1], dtype=np.int64)
    outs, _ = on_hosts(mpc.ltz, [v.view(U64)], n)
    assert np.array_equal(_xor(outs) & U64(1), (v < 0).astype(U64))
    outs, rounds = on_hosts(mpc.relu, [v.view(U64)], n)
    assert np.array_equal(_sum(outs).view(np.int64), np.maximum(v, 0))
    assert rounds == 8 + (n - 2)  # bit decomposition (7 + carry-save), then one selection round

    def b2a(p, u):  # noqa: ANN001, ANN202
        return (yield from mpc.to_arith(p, (yield from mpc.ltz(p, u)), 1 << F))

    outs, _ = on_hosts(b2a, [v.view(U64)], n)
    assert np.array_equal(_sum(outs), (v < 0).astype(U64) << U64(F))


@FAST
@given(n=st.sampled_from([2, 3]), m=st.integers(1, 7),
       data=st.data())
def test_max_and_argmax_match_numpy_with_ties(n: int, m: int, data: st.DataObject) -> None:
    # small integers make ties common; fixed-point scale, negatives and zero included
    small = st.integers(-3, 3).map(lambda v: v << F)
    rows = data.draw(st.lists(st.lists(st.one_of(small, st.integers(-(1 << 46), 1 << 46)), min_size=m, max_size=m), min_size=3, max_size=3))
    v = np.array(rows, dtype=np.int64)
    outs, _ = on_hosts(mpc.max_, [v.view(U64)], n)
    assert np.array_equal(_sum(outs).view(np.int64), v.max(axis=-1))
    outs, _ = on_hosts(mpc.argmax, [v.view(U64)], n)
    onehot = np.eye(m, dtype=np.int64)[v.argmax(axis=-1)] << F  # the first maximum, as numpy
    assert np.array_equal(_sum(outs).view(np.int64), onehot)


# --- the seed-compressed dealer: XOR-shared correlations ---------------------------------------------
@pytest.mark.parametrize("n", [2, 3])
def test_dealer_deals_binary_triples_and_dabits(n: int) -> None:
    items = [("and", ((1, 4, 3), (2, 4, 3))), ("dabit", ((5,),)), ("select", ((2, 6), (2, 1))), ("trunc", ((3,),))]
    d = mpc.deal_all(items, n, F, seed=b"\x09" * 32)

    def total(t: int, j: int, kind: str) -> np.ndarray:
        parts = [m[t][j] for m in d.material]
        return _xor(parts) if kind == mpc.XOR else _sum(parts)

    assert np.array_equal(total(0, 2, mpc.XOR), total(0, 0, mpc.XOR) & total(0, 1, mpc.XOR))
    assert np.array_equal(total(1, 1, mpc.ADD), total(1, 0, mpc.XOR) & U64(1))
    r = total(2, 1, mpc.ADD)
    assert np.array_equal(r, total(2, 0, mpc.XOR) & U64(1)) and set(np.unique(r)) <= {U64(0), U64(1)}
    with np.errstate(over="ignore"):
        assert np.array_equal(total(2, 3, mpc.ADD), total(2, 2, mpc.ADD) * r)
    # uniform XOR secrets travel as seeds only: corrections are c of "and", r of "dabit", r and a r of "select", 2 of trunc
    assert len(d.corrections) == 1 + 1 + 2 + 2
    for i in range(n):  # each party re-derives its material from its seed (and the last from its corrections)
        dealer = mpc.PartyDealer(i, n, F, d.seeds[i], d.corrections if i == n - 1 else ())
        for t, (kind, shapes) in enumerate(items):
            got = dealer(kind, *shapes)
            assert all(np.array_equal(g, w) for g, w in zip(got, d.material[i][t]))


# --- the in-process scheme --------------------------------------------------------------------------
EDGE = [0.0, -0.0, 2.0**-16, -(2.0**-16), 1.5, -1.5, 32767.0, -32767.0, 3.0, 3.0]


@settings(max_examples=3, deadline=None)
@given(x=st.lists(st.floats(-32767, 32767, allow_nan=False), min_size=10, max_size=10))
def test_masked_comparisons_match_numpy(x: list[float]) -> None:
    s = Masked(3, key=jax.random.key(5))
    v = np.round(np.array([x, EDGE]) * 2**F) / 2**F  # what the fixed point holds exactly
    a = s.encode(v)
    np.testing.assert_array_equal(s.decode(s.relu(a)), np.maximum(v, 0))
    np.testing.assert_array_equal(s.decode(s.ltz(a)), (v < 0).astype(float))
    np.testing.assert_array_equal(s.decode(s.max(a, axis=0)), v.max(axis=0))
    np.testing.assert_array_equal(s.decode(s.maximum(a, s.encode(v[::-1]))), np.maximum(v, v[::-1]))
    np.testing.assert_array_equal(s.decode(s.argmax(a, axis=1)), np.eye(10)[v.argmax(axis=1)])
    np.testing.assert_array_equal(s.decode(s.argmax(a, axis=-1, one_hot=False)), v.argmax(axis=1))


def test_relu_cost_is_counted() -> None:
    for n, rounds in ((2, 8), (3, 9)):
        with jax.enable_x64(True):
            opened, counted, _ = _mpc.count_openings(mpc.relu, n, F, jax.ShapeDtypeStruct((n, 4, 5), np.uint64))
        assert counted == rounds
        # the adder opens 19 words per element (two ANDs of 2 words, five levels of 3), a carry-save
        # level 2 more, the selection 2
        assert opened == (19 + 2 * (n - 2) + 2) * 20


# CrypTen-style functions: the error each is held to, on the stated input range (f = 16), on hosts.
def _fixed(x: np.ndarray) -> np.ndarray:
    return np.round(x * 2**F).astype(np.int64).view(U64)


def _real(v: np.ndarray) -> np.ndarray:
    return v.view(np.int64) / 2**F


@pytest.mark.parametrize(
    ("fn", "ref", "lo", "hi", "rtol", "atol"),
    [
        (mpc.exp, np.exp, -8.0, 3.0, 0.03, 2e-3),  # (1 + x/256)^256: relative error ~ x^2/512
        (mpc.reciprocal, lambda z: 1 / z, 0.1, 100.0, 2e-3, 5e-4),
        (mpc.sigmoid, lambda z: 1 / (1 + np.exp(-z)), -10.0, 10.0, 0.0, 5e-3),
        (mpc.tanh, np.tanh, -5.0, 5.0, 0.0, 1e-2),
    ],
)
def test_functions_are_within_their_stated_error(fn, ref, lo, hi, rtol, atol) -> None:  # noqa: ANN001
    x = np.linspace(lo, hi, 97)
    outs, _ = on_hosts(fn, [_fixed(x)], 2)
    np.testing.assert_allclose(_real(_sum(outs)), ref(x), rtol=rtol, atol=atol)


def test_softmax_within_its_stated_error() -> None:
    x = np.random.default_rng(0).normal(scale=3.0, size=(6, 5))
    e = np.exp(x - x.max(axis=1, keepdims=True))
    outs, _ = on_hosts(mpc.softmax, [_fixed(x)], 3)
    np.testing.assert_allclose(_real(_sum(outs)), e / e.sum(axis=1, keepdims=True), atol=1e-2)


def test_masked_functions_run_in_process() -> None:
    s = Masked(2, key=jax.random.key(3))
    x = np.linspace(-6.0, 2.0, 16)
    np.testing.assert_allclose(s.decode(s.exp(s.encode(x))), np.exp(x), rtol=0.03, atol=2e-3)
    with pytest.raises(ValueError):
        s.exp(s.encode(x), iters=17)


# --- models with exact activations: in process and on runtime nodes -----------------------------------
@pytest.fixture(scope="module")
def deep_relu_net():
    """A 64-32-32-32-10 ReLU net on digits, with exact ReLU layers (and its fitted-polynomial twin)."""
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier((32, 32, 32), alpha=1e-2, max_iter=150, random_state=0).fit(x[:1200], y[:1200])
    for w in clf.coefs_:  # weights below the fixed-point resolution are zero in both models
        w[np.abs(w) < 2.0**-14] = 0.0
    exact = models.from_sklearn(clf, activations="exact")
    return clf, exact, x[1200:1500]


def test_deep_relu_net_under_exact_relu_agrees_with_the_float_model(deep_relu_net) -> None:
    clf, exact, x = deep_relu_net
    assert sum(isinstance(la, models.ReLU) for la in exact.layers) == 3 and not exact.approximations
    s = Masked(2, key=jax.random.key(11))
    labels = models.encode_model(exact, s).predict(x)
    agreement = float(np.mean(labels == clf.predict(x)))
    assert agreement >= 0.995, agreement
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        tanh_net = type(clf)(activation="tanh", max_iter=1).fit(x[:20], np.arange(20) % 2)
    with pytest.raises(UnsupportedOperationError, match="exact layer"):
        models.from_sklearn(tanh_net, activations="exact")


def test_max_pooling_layer_runs_under_masked() -> None:
    rng = np.random.default_rng(2)
    index = np.array([[0, 1, 2], [2, 3, 4], [5, 5, 1]])
    model = models.Sequential((models.Dense(rng.normal(size=(4, 6)), rng.normal(size=6)), models.MaxPool(index, 6),
                               models.ReLU(), models.Dense(rng.normal(size=(3, 2)), rng.normal(size=2))))
    x = rng.normal(size=(8, 4))
    s = Masked(2, key=jax.random.key(12))
    em = models.encode_model(model, s)
    np.testing.assert_allclose(em.infer(x), model.forward(x), atol=1e-3)
    pre = em.preprocess(8)  # the offline phase deals the comparison material too
    np.testing.assert_allclose(s.decode(em(s.encode(x), preprocessed=pre)), model.forward(x), atol=1e-3)


def test_exact_layers_travel_on_the_wire_and_bad_ones_are_refused() -> None:
    from edil import SerializationError
    from edil.runtime import _mpc_session as ms

    layers = (("public", True), ("maxpool", ((0, 1), (1, 2))), ("relu",), ("poly", (1, 2)))
    assert ms.layers_from_wire(ms.layers_to_wire(layers)) == layers
    for bad in (["maxpool", [[0, 1], [2]]], ["maxpool", [[-1]]], ["maxpool", []], ["relu", 1]):
        with pytest.raises(SerializationError):
            ms.layers_from_wire([bad])
    words = mpc.Tagged((np.arange(3, dtype=U64), np.ones(3, U64)), (mpc.XOR, mpc.ADD))
    back = ms._arrays_from_bytes(ms._arrays_to_bytes(words))
    assert mpc.kinds_of(back) == (mpc.XOR, mpc.ADD) and all(np.array_equal(a, b) for a, b in zip(back, words))
    with pytest.raises(SerializationError):
        ms._arrays_from_bytes(rt._wire.dumps({"arrays": [rt.array_to_bytes(np.ones(2, U64))], "kinds": ["or"]}))
    with pytest.raises(ShapeError):
        mpc.combine([(np.ones(2, U64),), (np.ones(3, U64),)], (mpc.XOR,))


def _scheduler(seeds: list[bytes], fault_at: int | None = None) -> tuple[rt.Scheduler, rt.LocalExecutor, rt.Journal]:
    journal = rt.Journal(":memory:")
    domain = Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "11" * 20)
    liar = rt.NodeIdentity.from_seed(seeds[fault_at]).address if fault_at is not None else None
    registry = rt.StaticRegistry(rt.NodeIdentity.from_seed(s).address for s in seeds)
    ex = rt.LocalExecutor()
    sched = rt.Scheduler(ex, registry, journal, identity=rt.CoordinatorIdentity.generate(), domain=domain,
                         availability=lambda a: 1.0 if a == liar else 0.5)  # the liar is placed first
    for i, s in enumerate(seeds):
        sched.launch(faulty(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()), Faults("tamper_xor") if i == fault_at else None))
    return sched, ex, journal


def test_exact_relu_net_on_runtime_nodes_gives_the_same_labels_and_a_lie_in_a_xor_word_is_caught(deep_relu_net) -> None:
    clf, exact, x = deep_relu_net
    x = x[:24]
    seeds = [bytes([0x90 + i]) * 32 for i in range(4)]
    sched, ex, journal = _scheduler(seeds, fault_at=0)
    try:
        scheme = Masked(3, key=jax.random.key(13))
        y = sched.run_masked(scheme, exact, scheme.encode(x), model_public=False)
        local = models.encode_model(exact, Masked(3, key=jax.random.key(14))).predict(x)
        assert np.array_equal(exact.labels(scheme.decode(y)), local)
        assert np.array_equal(local, clf.predict(x))
        liar = rt.NodeIdentity.from_seed(seeds[0]).address
        # the liar sent honest additive words and one flipped bit in every XOR-opened word: the
        # coordinator's replay of its view finds the first comparison round that is not the protocol's
        assert [f[0] for f in journal.faults()] == [liar]
        assert "is not the protocol's" in journal.faults()[0][3]
        assert liar not in journal.results()[-1].nodes
    finally:
        ex.close()
