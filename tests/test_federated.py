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
    modules_and_imports = {"annotations", "functools", "math", "time", "jax", "jnp", "np", "dataclass", "field",
                           "Any", "Literal", "Callable", "Collection", "Mapping", "Sequence", "AuthorizationError",
                           "RuntimeTaskError", "SchemeMismatchError", "ShapeError", "ReplayError",
                           "VerificationError", "FixedPoint"}
    assert public - set(fed.__all__) <= modules_and_imports, public - set(fed.__all__) - modules_and_imports
    assert FixedPoint  # imported for the fixed-point checks above
