"""edil.federated: load sharding, the worker step, secure aggregation, dropouts, bad input."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edil
from edil import _secagg
from edil import federated as fed
from edil._fixed import FixedPoint


def _data(n: int = 240, d: int = 6, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 2
    y = rng.integers(0, k, n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


def _workers(n: int = 3, shares: list[float] | None = None) -> list[fed.FederatedWorker]:
    x, y = _data()
    shards = fed.split_by_load(x, y, shares or [1.0] * n, key=jax.random.key(0))
    return fed.make_workers(shards, key=jax.random.key(1))


def _coordinator(workers: list[fed.FederatedWorker], agg: fed.Aggregation, size: int) -> fed.Coordinator:
    return fed.Coordinator(agg, {w.worker_id: (w.identity.verify_key, w.identity.dh_public) for w in workers}, size)


# --- sharding and the worker step --------------------------------------------------------------


def test_split_by_load_follows_shares_and_is_deterministic() -> None:
    x, y = _data(n=1347)
    shards = fed.split_by_load(x, y, [25, 50, 25], key=jax.random.key(7))
    assert [len(s) for s in shards] == [337, 673, 337]
    again = fed.split_by_load(x, y, [25, 50, 25], key=jax.random.key(7))
    assert all(np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) for a, b in zip(shards, again))
    assert sorted(np.concatenate([s.y for s in shards]).tolist()) == sorted(y.tolist())


@pytest.mark.parametrize("shares", [[1, 0], [1, -1], [float("nan"), 1], []])
def test_split_by_load_rejects_bad_shares(shares: list[float]) -> None:
    x, y = _data(n=10)
    with pytest.raises(ValueError):
        fed.split_by_load(x, y, shares, key=jax.random.key(0))


def test_split_by_load_rejects_mismatched_lengths() -> None:
    x, y = _data(n=10)
    with pytest.raises(edil.ShapeError):
        fed.split_by_load(x, y[:5], [1, 1], key=jax.random.key(0))


@pytest.mark.parametrize("batch_size", [None, 16])
def test_train_head_task_is_pure_and_deterministic(batch_size: int | None) -> None:
    x, y = _data()
    head = fed.Head.zeros(6, 3)
    shard = fed.Shard(x, y)
    a = fed.train_head_task(head, shard, epochs=5, lr=0.3, key=jax.random.key(3), batch_size=batch_size)
    b = fed.train_head_task(head, shard, epochs=5, lr=0.3, key=jax.random.key(3), batch_size=batch_size)
    assert a.shape == (head.size,) and np.array_equal(a, b)
    assert np.all(head.flatten() == 0)  # the input head is untouched
    trained = head.unflatten(a)
    assert trained.accuracy(x, y) > 0.8


def test_train_head_task_rejects_bad_shards() -> None:
    x, y = _data()
    head = fed.Head.zeros(6, 3)
    with pytest.raises(edil.ShapeError):
        fed.train_head_task(head, fed.Shard(x[:, :5], y), epochs=1, lr=0.1, key=jax.random.key(0))
    with pytest.raises(ValueError):
        fed.train_head_task(head, fed.Shard(x, y + 3), epochs=1, lr=0.1, key=jax.random.key(0))
    with pytest.raises(ValueError):
        fed.train_head_task(head, fed.Shard(x, y), epochs=0, lr=0.1, key=jax.random.key(0))


# --- secure aggregation ------------------------------------------------------------------------


def _round_updates(workers, agg, vecs, weights=None):
    coord = _coordinator(workers, agg, vecs[0].size)
    ctx = coord.open_round(weights or {w.worker_id: 1.0 for w in workers})
    updates = [w.make_update(ctx, agg, v) for w, v in zip(workers, vecs)]
    return coord, ctx, updates


def test_masks_cancel_exactly_in_the_ring() -> None:
    workers = _workers(4)
    agg = fed.SecureAggregation()
    rng = np.random.default_rng(0)
    vecs = [rng.normal(size=50) for _ in workers]
    weights = {w.worker_id: float(i + 1) for i, w in enumerate(workers)}
    _, ctx, updates = _round_updates(workers, agg, vecs, weights)
    encoded = [agg.fixed.encode(v * weights[w.worker_id] / 10.0) for w, v in zip(workers, vecs)]
    ring_sum = np.sum(np.stack([u.payload for u in updates]), axis=0, dtype=np.uint64)
    assert np.array_equal(ring_sum, np.sum(np.stack(encoded), axis=0, dtype=np.uint64))
    for u, e in zip(updates, encoded):  # a lone masked update shows nothing of the encoding
        assert np.mean(u.payload == e) < 0.05


def test_secure_aggregate_equals_weighted_mean() -> None:
    workers = _workers(3)
    agg = fed.SecureAggregation()
    rng = np.random.default_rng(1)
    vecs = [rng.normal(size=30) for _ in workers]
    weights = {w.worker_id: float(len(w.shard)) for w in workers}
    coord, _, updates = _round_updates(workers, agg, vecs, weights)
    for u in updates:
        coord.receive(u)
    mean, arrived = coord.finish()
    expected = sum(v * weights[w.worker_id] for w, v in zip(workers, vecs)) / sum(weights.values())
    assert arrived == 1.0
    np.testing.assert_allclose(mean, expected, atol=3 * 2.0**-20)


def test_dropout_recovery_is_exact_in_the_ring() -> None:
    workers = _workers(5)
    agg = fed.SecureAggregation()
    rng = np.random.default_rng(2)
    vecs = [rng.normal(size=40) for _ in workers]
    coord, ctx, updates = _round_updates(workers, agg, vecs)
    dropped = {workers[1].worker_id, workers[3].worker_id}
    for u in updates:
        if u.worker_id not in dropped:
            coord.receive(u)
    assert set(coord.missing()) == dropped
    survivors = [w for w in workers if w.worker_id not in dropped]
    reveals = [s.reveal(ctx, agg, d) for d in sorted(dropped) for s in survivors]
    # exact: the recovered ring sum is the ring sum of the survivors' encodings, bit for bit
    ring = np.sum(np.stack([agg.fixed.encode(v / 5) for w, v in zip(workers, vecs) if w in survivors]),
                  axis=0, dtype=np.uint64)
    payloads = {u.worker_id: u.payload for u in updates if u.worker_id not in dropped}
    seeds = {(r.worker_id, r.dropped): r.seed for r in reveals}
    assert np.array_equal(agg.combine(ctx, payloads, seeds), agg.fixed.decode(ring))
    mean, arrived = coord.finish(reveals)
    assert arrived == pytest.approx(3 / 5)
    np.testing.assert_allclose(mean * arrived, agg.fixed.decode(ring), rtol=1e-12, atol=0)


def test_dropout_without_reveals_fails_closed() -> None:
    workers = _workers(3)
    agg = fed.SecureAggregation()
    vecs = [np.ones(10)] * 3
    coord, ctx, updates = _round_updates(workers, agg, vecs)
    coord.receive(updates[0])
    coord.receive(updates[1])
    with pytest.raises(edil.RuntimeTaskError):
        coord.finish()
    forged = dataclasses.replace(workers[0].reveal(ctx, agg, workers[2].worker_id), seed=b"\x00" * 8)
    with pytest.raises(edil.VerificationError):
        coord.finish([forged, workers[1].reveal(ctx, agg, workers[2].worker_id)])


@pytest.mark.parametrize("dropout", ["recover", "redo"])
def test_trainer_with_dropout_matches_plain(dropout: str) -> None:
    drop = {1: {"worker-2"}}
    heads = []
    for agg in (fed.PlainAggregation(), fed.SecureAggregation()):
        trainer = fed.FederatedTrainer(_workers(4), agg, n_classes=3, local_epochs=3, lr=0.3, dropout=dropout)
        res = trainer.run(3, key=jax.random.key(5), drop=drop)
        heads.append(res.head.flatten())
        assert res.history[1].survivors == ("worker-0", "worker-1", "worker-3")
        assert len(res.history[1].round_ids) == (2 if dropout == "redo" else 1)
    np.testing.assert_allclose(heads[0], heads[1], atol=1e-5)


def test_paillier_aggregation_matches_plain() -> None:
    paillier = fed.PaillierAggregation(key_bits=512)
    heads = []
    for agg in (fed.PlainAggregation(), paillier):
        res = fed.FederatedTrainer(_workers(3), agg, n_classes=3, local_epochs=2, lr=0.3).run(
            2, key=jax.random.key(6), drop={1: {"worker-0"}})
        heads.append(res.head.flatten())
    np.testing.assert_allclose(heads[0], heads[1], atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**64 - 1), min_size=7, max_size=7), min_size=1, max_size=6),
       st.integers(1, 5))
def test_pack_unpack_sums_in_the_ring(rows: list[list[int]], slots: int) -> None:
    vals = [np.array(r, dtype=np.uint64) for r in rows]
    packed = [_secagg.pack(v, slots) for v in vals]
    summed = [sum(col) for col in zip(*packed)]
    expected = np.sum(np.stack(vals), axis=0, dtype=np.uint64)
    assert np.array_equal(_secagg.unpack(summed, slots, 7), expected)


# --- bad input ---------------------------------------------------------------------------------


@pytest.fixture()
def open_round():
    workers = _workers(4)
    agg = fed.SecureAggregation()
    coord = _coordinator(workers, agg, 12)
    ctx = coord.open_round({w.worker_id: 1.0 for w in workers[:3]})  # worker-3 sits this one out
    return workers, agg, coord, ctx


def test_wrong_shape_is_rejected(open_round) -> None:
    workers, agg, coord, ctx = open_round
    bad_ctx = dataclasses.replace(ctx, size=11)
    with pytest.raises(edil.ShapeError, match=r"\(11,\)"):
        coord.receive(workers[0].make_update(bad_ctx, agg, np.zeros(11)))


def test_worker_not_in_round_is_rejected(open_round) -> None:
    workers, agg, coord, ctx = open_round
    outsider_ctx = dataclasses.replace(ctx, participants=ctx.participants + ("worker-3",),
                                       weights={**ctx.weights, "worker-3": 1.0},
                                       dh_publics={**ctx.dh_publics, "worker-3": workers[3].identity.dh_public})
    with pytest.raises(edil.AuthorizationError, match="not a participant"):
        coord.receive(workers[3].make_update(outsider_ctx, agg, np.zeros(12)))
    stranger = fed.FederatedWorker(fed.WorkerIdentity.from_seed("mallory", seed=b"m" * 32), workers[0].shard)
    stranger_ctx = dataclasses.replace(ctx, participants=ctx.participants + ("mallory",),
                                       weights={**ctx.weights, "mallory": 1.0},
                                       dh_publics={**ctx.dh_publics, "mallory": stranger.identity.dh_public})
    with pytest.raises(edil.AuthorizationError, match="unknown"):
        coord.receive(stranger.make_update(stranger_ctx, agg, np.zeros(12)))
    with pytest.raises(edil.AuthorizationError):  # an honest worker refuses a round it is not in
        workers[3].make_update(ctx, agg, np.zeros(12))


def test_replayed_update_is_rejected(open_round) -> None:
    workers, agg, coord, ctx = open_round
    old = [w.make_update(ctx, agg, np.ones(12)) for w in workers[:3]]
    for u in old:
        coord.receive(u)
    with pytest.raises(edil.ReplayError, match="already sent"):
        coord.receive(old[0])
    coord.finish()
    coord.open_round({w.worker_id: 1.0 for w in workers[:3]})
    with pytest.raises(edil.ReplayError, match="round 0"):
        coord.receive(old[1])


def test_tampered_update_and_wrong_scheme_are_rejected(open_round) -> None:
    workers, agg, coord, ctx = open_round
    u = workers[0].make_update(ctx, agg, np.ones(12))
    tampered = dataclasses.replace(u, payload=u.payload + np.uint64(1))
    with pytest.raises(edil.VerificationError, match="bad signature"):
        coord.receive(tampered)
    plain = workers[1].make_update(ctx, fed.PlainAggregation(), np.ones(12))
    with pytest.raises(edil.SchemeMismatchError):
        coord.receive(plain)


def test_update_out_of_fixed_point_range_is_refused_at_the_worker(open_round) -> None:
    workers, agg, coord, ctx = open_round
    with pytest.raises(edil.OverflowRangeError):
        workers[0].make_update(ctx, agg, np.full(12, 1e6))
    with pytest.raises(edil.EncodingError):
        workers[0].make_update(ctx, agg, np.full(12, np.nan))


def test_paillier_wrong_ciphertext_count_is_rejected() -> None:
    workers = _workers(2)
    agg = fed.PaillierAggregation(key_bits=512)
    coord = _coordinator(workers, agg, 20)
    ctx = coord.open_round({w.worker_id: 1.0 for w in workers})
    u = workers[0].make_update(dataclasses.replace(ctx, size=200), agg, np.zeros(200))
    with pytest.raises(edil.ShapeError, match="ciphertexts"):
        coord.receive(u)


def test_public_surface_of_federated() -> None:
    for name in fed.__all__:
        assert hasattr(fed, name), name
    public = {n for n in vars(fed) if not n.startswith("_")}
    modules_and_imports = {"annotations", "functools", "math", "jax", "jnp", "np", "dataclass", "field",
                           "Any", "Literal", "Callable", "Collection", "Mapping", "Sequence", "AuthorizationError",
                           "EdilError", "EncodingError", "ParameterError", "RuntimeTaskError", "SchemeMismatchError",
                           "SerializationError", "ShapeError", "ReplayError", "VerificationError", "FixedPoint"}
    assert public - set(fed.__all__) <= modules_and_imports, public - set(fed.__all__) - modules_and_imports
    assert FixedPoint  # imported for the fixed-point checks above


# --- the round engine: a malformed update is a dropout and a recorded fault ---------------------


@dataclasses.dataclass(frozen=True, eq=False)
class _Hostile(fed.FederatedWorker):
    """An admitted worker that is honest in round 0 and then sends a malformed update of one ``kind``."""

    kind: str = "nan"
    memory: dict = dataclasses.field(default_factory=dict)
    revealed: list = dataclasses.field(default_factory=list)

    def _sign(self, u: fed.Update, payload) -> fed.Update:
        unsigned = dataclasses.replace(u, payload=payload, signature=b"")
        return dataclasses.replace(unsigned, signature=_secagg.sign(self.identity, unsigned.message()))

    def make_update(self, ctx, aggregation, delta):
        honest = super().make_update(ctx, aggregation, delta)
        first = self.memory.setdefault("first", honest)
        if first is honest:
            return honest
        if self.kind == "nan":  # signed, well-formed, and poisonous
            return self._sign(honest, np.full_like(honest.payload, np.nan))
        if self.kind == "shape":
            return self._sign(honest, np.concatenate([honest.payload, honest.payload[:1]]))
        if self.kind == "dtype":
            return self._sign(honest, honest.payload.astype(np.float64))
        if self.kind == "replay":  # its genuine round-0 update, signature and all
            return first
        if self.kind == "badsig":
            return dataclasses.replace(honest, payload=honest.payload + np.uint64(1))
        if self.kind == "garbage":
            return b"\x00\xff not an update"
        if self.kind == "range":  # a Paillier "ciphertext" outside Z*_{n^2}
            return self._sign(honest, (aggregation.public_key.nsquare + 5,) + honest.payload[1:])
        raise AssertionError(self.kind)

    def reveal(self, ctx, aggregation, dropped):
        self.revealed.append((ctx.round_id, dropped))
        return super().reveal(ctx, aggregation, dropped)


_KINDS = {  # kind -> (aggregation, the refusal it must cause)
    "nan": ("plain", "EncodingError"),
    "shape": ("secure", "ShapeError"),
    "dtype": ("secure", "SchemeMismatchError"),
    "replay": ("secure", "ReplayError"),
    "badsig": ("secure", "VerificationError"),
    "garbage": ("secure", "SerializationError"),
    "range": ("paillier", "VerificationError"),
}


def _hostile_workers(kind: str | None, n: int = 4, bad: int = 2) -> list[fed.FederatedWorker]:
    honest = _workers(n)
    if kind is None:
        return honest
    w = honest[bad]
    return [*honest[:bad], _Hostile(w.identity, w.shard, kind=kind), *honest[bad + 1:]]


#: Accuracy a run with one refused worker may lose against the all-honest run, on the training data.
#: The refused worker's quarter of the data is missing from rounds 1 and 2 only.
ACCURACY_TOLERANCE = 0.05


@pytest.mark.parametrize("kind", sorted(_KINDS))
def test_a_malformed_update_is_a_dropout_and_a_fault_not_an_abort(kind: str) -> None:
    agg_name, error = _KINDS[kind]
    x, y = _data()
    rounds, bad = 3, "worker-2"

    def agg():
        return {"plain": fed.PlainAggregation, "secure": fed.SecureAggregation,
                "paillier": lambda: paillier}[agg_name]()

    paillier = fed.PaillierAggregation(key_bits=512)
    kw = dict(n_classes=3, local_epochs=3, lr=0.3, dropout="recover")
    hostile = fed.FederatedTrainer(_hostile_workers(kind), agg(), **kw).run(rounds, key=jax.random.key(5), eval_data=(x, y))
    # the same workers, the hostile one simply silent from round 1 on
    silent = fed.FederatedTrainer(_hostile_workers(None), agg(), dropout="redo", **{k: v for k, v in kw.items() if k != "dropout"}).run(
        rounds, key=jax.random.key(5), eval_data=(x, y), drop={r: {bad} for r in range(1, rounds)})
    honest = fed.FederatedTrainer(_hostile_workers(None), agg(), **kw).run(rounds, key=jax.random.key(5), eval_data=(x, y))

    assert len(hostile.history) == rounds  # training completed
    assert hostile.history[0].faults == () and bad in hostile.history[0].survivors
    for rec in hostile.history[1:]:
        assert [(f.worker_id, f.reason.split(":")[0]) for f in rec.faults] == [(bad, error)], rec.faults
        assert rec.faults[0].round_id == rec.round_ids[0]
        assert bad not in rec.survivors and len(rec.survivors) == 3
    assert all(r.faults == () for r in silent.history + honest.history)
    # the refused update never reaches the average: the head is the one of a plain dropout, up to
    # the 2^-20 fixed-point encoding (Paillier recovers a dropout where the silent run redoes it)
    np.testing.assert_allclose(hostile.head.flatten(), silent.head.flatten(), rtol=0, atol=1e-5)
    assert np.all(np.isfinite(hostile.head.flatten()))
    assert abs(hostile.history[-1].accuracy - honest.history[-1].accuracy) <= ACCURACY_TOLERANCE


def test_a_refused_sender_is_never_recovered_by_seed_reveals() -> None:
    """Under recover, survivors' reveals would unmask bytes the coordinator holds: redo instead."""
    workers = _hostile_workers("badsig")
    res = fed.FederatedTrainer(workers, fed.SecureAggregation(), n_classes=3, local_epochs=2, lr=0.3,
                               dropout="recover").run(2, key=jax.random.key(1))
    assert len(res.history[1].round_ids) == 2 and res.history[1].faults[0].worker_id == "worker-2"
    assert workers[2].revealed == []  # no seed of any round was revealed
    # an ordinary dropout is still recovered by reveals, in one protocol round
    res = fed.FederatedTrainer(_hostile_workers("badsig"), fed.SecureAggregation(), n_classes=3, local_epochs=2, lr=0.3,
                               dropout="recover").run(1, key=jax.random.key(1), drop={0: {"worker-1"}})
    assert len(res.history[0].round_ids) == 1 and res.history[0].survivors == ("worker-0", "worker-2", "worker-3")


def test_a_forged_seed_reveal_drops_its_sender_and_the_round_is_redone() -> None:
    @dataclasses.dataclass(frozen=True, eq=False)
    class _BadRevealer(fed.FederatedWorker):
        def reveal(self, ctx, aggregation, dropped):
            return dataclasses.replace(super().reveal(ctx, aggregation, dropped), seed=b"\x00" * 8)

    honest = _workers(4)
    workers = [*honest[:3], _BadRevealer(honest[3].identity, honest[3].shard)]
    res = fed.FederatedTrainer(workers, fed.SecureAggregation(), n_classes=3, local_epochs=2, lr=0.3,
                               dropout="recover").run(1, key=jax.random.key(2), drop={0: {"worker-0"}})
    rec = res.history[0]
    assert [(f.worker_id, f.reason.split(":")[0]) for f in rec.faults] == [("worker-3", "VerificationError")]
    assert rec.survivors == ("worker-1", "worker-2") and len(rec.round_ids) == 2
    ref = fed.FederatedTrainer(_workers(4), fed.SecureAggregation(), n_classes=3, local_epochs=2, lr=0.3,
                               dropout="redo").run(1, key=jax.random.key(2), drop={0: {"worker-0", "worker-3"}})
    np.testing.assert_allclose(res.head.flatten(), ref.head.flatten(), rtol=0, atol=1e-9)


def test_a_diverged_worker_is_refused_not_fatal() -> None:
    def diverging(head, shard, **kw):
        delta = fed.train_head_task(head, shard, **kw)
        return delta * 1e9 if len(shard) == len(big.shard) else delta  # out of the 2^-20 fixed-point range

    workers = _workers(3, shares=[1, 1, 2])
    big = max(workers, key=lambda w: len(w.shard))
    res = fed.FederatedTrainer(workers, fed.SecureAggregation(), n_classes=3, local_epochs=2, lr=0.3,
                               task=diverging).run(1, key=jax.random.key(0))
    assert [(f.worker_id, f.reason.split(":")[0]) for f in res.history[0].faults] == [(big.worker_id, "OverflowRangeError")]
    assert big.worker_id not in res.history[0].survivors


def test_fewer_than_two_workers_left_still_raises() -> None:
    workers = _hostile_workers("garbage", n=2, bad=1)
    trainer = fed.FederatedTrainer(workers, fed.SecureAggregation(), n_classes=3, local_epochs=1, lr=0.3)
    trainer.run_round(0, key=jax.random.key(0))  # honest in its first round
    with pytest.raises(edil.RuntimeTaskError, match="fewer than 2"):
        trainer.run_round(1, key=jax.random.key(1))


def test_round_engine_rejects_an_unknown_dropout_policy() -> None:
    workers = _workers(2)
    with pytest.raises(ValueError, match="dropout"):
        fed.RoundEngine(_coordinator(workers, fed.PlainAggregation(), 3), dropout="ignore")  # type: ignore[arg-type]
