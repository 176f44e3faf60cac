"""Federated training through the runtime: worker steps as pinned tasks with PoAI transcripts."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from edil import AuthorizationError, RuntimeTaskError
from edil import federated as fed
from edil import runtime as rt
from edil.proofs import Chain, EpochStatus
from edil.runtime.testing import Faults, faulty
from tests.test_runtime_conformance import DOMAIN, fresh_seed


def _data(n: int = 240, d: int = 6, classes: int = 3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(d, classes)), axis=1)
    return x, y


def _sched(executor, registry=None, journal=None, domain=DOMAIN, epoch=lambda: 0) -> rt.Scheduler:
    return rt.Scheduler(
        executor, registry or rt.StaticRegistry(), journal or rt.Journal(":memory:"),
        identity=rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2), domain=domain, epoch=epoch, timeout_s=60,
    )


def _on_chain(n: int, liar: int | None = None, extra: tuple = ()):
    """A fresh deployment with 2 oracles (quorum 2) and ``n`` admitted, funded nodes; node ``liar`` lies.

    ``extra`` identities are admitted and funded too, but not launched (the caller adds them).
    """
    chain = Chain.in_process()
    dep = chain.deploy(epoch_length=600)
    for o in chain.accounts[1:3]:
        dep.admit_oracle(o.address)
    dep.set_quorum(2)
    seeds = [fresh_seed() for _ in range(n)]
    ids = [rt.NodeIdentity.from_seed(s) for s in seeds]
    for i in [*ids, *extra]:
        dep.admit_node(i.address)
        chain.fund(i.address, 10**17)
    journal = rt.Journal(":memory:")
    ex = rt.LocalExecutor()
    sched = _sched(ex, rt.ChainRegistry(dep), journal, dep.poai_domain, dep.current_epoch)
    for k, s in enumerate(seeds):
        sched.launch(faulty(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()), Faults("wrong") if k == liar else None))
    return chain, dep, ids, journal, ex, sched


def _launch(sched, registry, n=3, faults=None):
    cards = []
    for i in range(n):
        cfg = rt.NodeConfig(seed=fresh_seed(), capabilities=rt.Capabilities())
        if (faults or {}).get(i) is not None:
            cfg = faulty(cfg, faults[i])
        registry.admit(rt.NodeIdentity.from_seed(cfg.seed).address)
        cards.append(sched.launch(cfg))
    return cards


def test_secure_through_the_runtime_equals_plain_and_centralized() -> None:
    x, y = _data()
    heads, scheds = {}, {}
    for agg in ("plain", "secure"):
        reg, ex = rt.StaticRegistry(), rt.LocalExecutor()
        sched = _sched(ex, reg)
        _launch(sched, reg)
        heads[agg], hist = rt.train_federated(
            sched, x, y, shares=[25, 50, 25], n_classes=3, rounds=4, key=jax.random.key(3), aggregation=agg, local_epochs=5,
            eval_data=(x, y),
        )
        scheds[agg] = sched
        assert [len(h.survivors) for h in hist] == [3] * 4 and all(len(h.round_ids) == 1 for h in hist)
        ex.close()
    # Masks cancel exactly in Z_2^64: secure == plain up to the 2^-20 fixed-point encoding.
    np.testing.assert_allclose(heads["secure"].flatten(), heads["plain"].flatten(), atol=1e-5)
    central = fed.train_head(x, y, n_classes=3, epochs=20, lr=1.0, key=jax.random.key(3))
    assert heads["secure"].accuracy(x, y) >= central.accuracy(x, y) - 0.02
    # every worker step is a journaled task with a transcript from its own (pinned) node
    sched = scheds["secure"]
    for addr in sched.nodes:
        assert len(sched.journal.transcripts(addr, 0)) == 4
    # the coordinator never sees an update in the clear: every payload is a uniform-looking ring vector.
    # A fixed-point update (|value| far below 2^43 at 2^-20 resolution) has its top 16 bits all 0 or
    # all 1; a masked word has them so with probability 2^-15.
    payloads = [rt.array_from_bytes(r.output) for r in sched.journal.results()]
    assert all(p.dtype == np.uint64 for p in payloads)
    words = np.concatenate([p.ravel() for p in payloads])
    top16 = words >> np.uint64(48)
    assert words.size >= 50 and np.mean((top16 == 0) | (top16 == 0xFFFF)) < 0.01, words.size
    assert abs(np.mean(words >> np.uint64(63)) - 0.5) < 5 * 0.5 / np.sqrt(words.size)  # the sign bit: five standard deviations


def test_a_dropped_worker_is_not_replaced_the_round_is_redone_with_fresh_masks() -> None:
    x, y = _data()
    reg, ex = rt.StaticRegistry(), rt.LocalExecutor()
    sched = _sched(ex, reg)
    cards = _launch(sched, reg, faults={1: Faults("crash", after=1)})
    head, hist = rt.train_federated(sched, x, y, shares=[1, 1, 1], n_classes=3, rounds=2, key=jax.random.key(0), eval_data=(x, y))
    assert len(hist[0].round_ids) == 1 and len(hist[1].round_ids) == 2  # round 2 redone among the survivors
    assert cards[1].address not in hist[1].survivors and len(hist[1].survivors) == 2
    assert hist[1].round_ids[1] != hist[1].round_ids[0]
    assert head.accuracy(x, y) > 0.5
    ex.close()
    with pytest.raises(RuntimeTaskError):
        reg2, ex2 = rt.StaticRegistry(), rt.LocalExecutor()
        s2 = _sched(ex2, reg2)
        _launch(s2, reg2, n=2, faults={0: Faults("crash")})
        rt.train_federated(s2, x, y, shares=[1, 1], n_classes=3, rounds=1, key=jax.random.key(0))
    ex2.close()


def test_node_refuses_a_step_meant_for_another_worker_or_with_a_foreign_key() -> None:
    x, y = _data(60)
    me, other = rt.NodeIdentity.from_seed(b"m" * 32), rt.NodeIdentity.from_seed(b"o" * 32)
    runner = rt.FedTrainRunner(me)
    head = fed.Head.zeros(6, 3)
    shard = fed.Shard(x, y)
    kw = dict(round_id=7, weights={me.address: 1.0, other.address: 1.0}, aggregation="secure", frac_bits=20, epochs=2, lr=0.5,
              key_data=np.asarray(jax.random.key_data(jax.random.key(0))))
    good = {me.address: bytes(me.box.public_key), other.address: bytes(other.box.public_key)}
    out = rt.array_from_bytes(runner.run(rt.fed_task(head, shard, worker=me.address, dh_publics=good, **kw)))
    assert out.dtype == np.uint64 and out.shape == (head.size,)
    with pytest.raises(AuthorizationError):
        runner.run(rt.fed_task(head, shard, worker=other.address, dh_publics=good, **kw))
    with pytest.raises(AuthorizationError):
        forged = {**good, me.address: bytes(other.box.public_key)}
        runner.run(rt.fed_task(head, shard, worker=me.address, dh_publics=forged, **kw))
    with pytest.raises(RuntimeTaskError):  # an auditor cannot make a masked update
        rt.FedTrainRunner(None).run(rt.fed_task(head, shard, worker=me.address, dh_publics=good, **kw))
    t = rt.fed_task(head, shard, worker=me.address, dh_publics=good, **kw)
    with pytest.raises(Exception) as err:
        runner.run(dataclasses.replace(t, input=b"junk"))
    assert "Serialization" in type(err.value).__name__


@pytest.mark.parametrize("aggregation", ["plain", "secure"])
def test_federated_steps_are_posted_and_audited_on_chain(aggregation) -> None:
    """Roots of every worker's steps go on chain; a worker that lies in a masked round fails the audit."""
    x, y = _data()
    chain, dep, ids, journal, ex, sched = _on_chain(3, liar=2)
    epoch = dep.current_epoch()
    rt.train_federated(sched, x, y, shares=[1, 1, 1], n_classes=3, rounds=2, key=jax.random.key(1), aggregation=aggregation)
    dep.advance_to_epoch(epoch + 1)
    batches = [rt.close_epoch(dep, journal, i.chain_key, i.address, epoch) for i in ids]
    assert [b.task_count for b in batches] == [2, 2, 2]
    chain.mine()
    keys = [chain.accounts[1].key, chain.accounts[2].key]
    reports = [rt.audit_epoch(dep, journal, b, keys) for b in batches]
    if aggregation == "plain":  # recomputation pins the liar
        assert [r.passed for r in reports] == [True, True, False]
        assert dep.verified_work_units(ids[0].address, epoch) == batches[0].work_units
    else:  # the masked round's aggregate is wrong: every participant of it fails
        assert not any(r.passed for r in reports)
        assert "round aggregate" in reports[0].failures[0]
    assert dep.epoch_record(ids[2].address, epoch).status == EpochStatus.VOIDED
    ex.close()


def test_honest_masked_rounds_pass_the_aggregate_audit() -> None:
    x, y = _data()
    chain, dep, ids, journal, ex, sched = _on_chain(2)
    epoch = dep.current_epoch()
    rt.train_federated(sched, x, y, shares=[1, 3], n_classes=3, rounds=2, key=jax.random.key(2))
    dep.advance_to_epoch(epoch + 1)
    batches = [rt.close_epoch(dep, journal, i.chain_key, i.address, epoch) for i in ids]
    chain.mine()
    reports = [rt.audit_epoch(dep, journal, b, [chain.accounts[1].key, chain.accounts[2].key]) for b in batches]
    assert all(r.passed for r in reports), reports
    assert all(dep.verified_work_units(i.address, epoch) == b.work_units > 0 for i, b in zip(ids, batches))
    ex.close()


class _Crash(Exception):
    pass


def test_a_restarted_coordinator_resumes_training_from_its_checkpoint(tmp_path) -> None:
    from edil import SerializationError

    x, y = _data()
    ckpt = tmp_path / "fed.json"
    reg, ex = rt.StaticRegistry(), rt.LocalExecutor()
    sched = _sched(ex, reg)
    _launch(sched, reg)
    kw = dict(shares=[1, 2, 1], n_classes=3, rounds=4, key=jax.random.key(9), aggregation="plain", local_epochs=3)
    reference, _ = rt.train_federated(sched, x, y, **kw)

    def crash_after_round_2(line: str) -> None:
        if line.startswith("round 2/"):
            raise _Crash

    with pytest.raises(_Crash):
        rt.train_federated(sched, x, y, checkpoint=ckpt, print_fn=crash_after_round_2, **kw)
    head, hist = rt.train_federated(sched, x, y, checkpoint=ckpt, **kw)  # the restarted coordinator
    assert [h.round for h in hist] == [2, 3]  # rounds 0 and 1 were not run again
    np.testing.assert_array_equal(head.flatten(), reference.flatten())
    with pytest.raises(SerializationError, match="another training run"):
        rt.train_federated(sched, x, y, checkpoint=ckpt, **{**kw, "lr": 0.5})
    ckpt.write_text(ckpt.read_text().replace('"rounds_done": 4', '"rounds_done": 1'))
    with pytest.raises(SerializationError, match="corrupt"):
        rt.train_federated(sched, x, y, checkpoint=ckpt, **kw)
    ex.close()


def test_steps_of_a_round_abandoned_after_a_dropout_do_not_fail_honest_nodes() -> None:
    x, y = _data()
    chain, dep, ids, journal, ex, sched = _on_chain(3)
    ex.node(ids[1].address).faults = Faults("crash", after=1)  # node 1 dies in round 2
    epoch = dep.current_epoch()
    _, hist = rt.train_federated(sched, x, y, shares=[1, 1, 1], n_classes=3, rounds=2, key=jax.random.key(1))
    assert len(hist[1].round_ids) == 2  # round 2 abandoned once, then redone by the survivors
    dep.advance_to_epoch(epoch + 1)
    batches = [rt.close_epoch(dep, journal, i.chain_key, i.address, epoch) for i in ids]
    assert [b.task_count for b in batches] == [3, 1, 3]
    chain.mine()
    reports = [rt.audit_epoch(dep, journal, b, [chain.accounts[1].key, chain.accounts[2].key]) for b in batches]
    assert all(r.passed for r in reports), reports
    ex.close()


def test_audits_tolerate_float_noise_across_machines_but_not_lies(monkeypatch) -> None:
    """float32 training differs across machines in the last bits: audits compare within 1e-6."""
    x, y = _data()
    for aggregation in ("plain", "secure"):
        chain, dep, ids, journal, ex, sched = _on_chain(2)
        epoch = dep.current_epoch()
        rt.train_federated(sched, x, y, shares=[1, 1], n_classes=3, rounds=1, key=jax.random.key(3), aggregation=aggregation)
        dep.advance_to_epoch(epoch + 1)
        batches = [rt.close_epoch(dep, journal, i.chain_key, i.address, epoch) for i in ids]
        chain.mine()
        honest = rt.FedTrainRunner.weighted_delta
        verdicts = {}
        for noise in (1e-9, 1e-3):
            monkeypatch.setattr(rt.FedTrainRunner, "weighted_delta", staticmethod(lambda t, n=noise, h=honest: h(t) + n))
            verdicts[noise] = [rt.audit_epoch(dep, journal, b, [], record=False).passed for b in batches]
        monkeypatch.setattr(rt.FedTrainRunner, "weighted_delta", staticmethod(honest))
        assert verdicts == {1e-9: [True, True], 1e-3: [False, False]}, (aggregation, verdicts)
        ex.close()


def test_a_malformed_update_counts_as_a_dropout_and_a_fault() -> None:
    from edil.runtime._node import EdgeNode

    class Junk:
        def run(self, task):
            return rt.array_to_bytes(np.zeros(3, np.uint64))  # not the head's size

    x, y = _data()
    reg, ex = rt.StaticRegistry(), rt.LocalExecutor()
    sched = _sched(ex, reg)
    good = _launch(sched, reg, n=2)
    bad = rt.NodeIdentity.from_seed(b"junk" * 8)
    reg.admit(bad.address)
    keys = sched.coordinator_keys
    sched.add_node(ex.add(EdgeNode(bad, coordinator_key=keys.verify_key, coordinator_box_key=keys.box_key, domain=keys.domain,
                                   capabilities=rt.Capabilities(), runners={"fedtrain": Junk()})))
    head, hist = rt.train_federated(sched, x, y, shares=[1, 1, 1], n_classes=3, rounds=1, key=jax.random.key(0),
                                    workers=[c.address.lower() for c in good] + [bad.address])  # any address case
    assert len(hist[0].round_ids) == 2 and bad.address not in hist[0].survivors
    assert any(node == bad.address and "malformed federated update" in why for node, _, _, why in sched.journal.faults())
    ex.close()


def test_naming_a_worker_that_is_not_admitted_is_an_authorization_error() -> None:
    from edil import AuthorizationError as AuthError

    x, y = _data(60)
    reg, ex = rt.StaticRegistry(), rt.LocalExecutor()
    sched = _sched(ex, reg)
    cards = _launch(sched, reg, n=2)
    with pytest.raises(AuthError):
        rt.train_federated(sched, x, y, shares=[1, 1], n_classes=3, rounds=1, key=jax.random.key(0),
                           workers=[cards[0].address, "0x" + "ab" * 20])
    ex.close()


# --- malformed updates from an admitted node: a dropout and a journaled fault, never an abort ----


class _Malformed:
    """A node's ``fedtrain`` runner that trains honestly, then sends a malformed update of one ``kind``."""

    def __init__(self, identity, kind: str) -> None:
        self.honest, self.kind = rt.FedTrainRunner(identity), kind

    def run(self, task):
        out = self.honest.run(task)
        arr = rt.array_from_bytes(out)
        if self.kind == "honest":
            return out
        if self.kind == "silent":  # the reference: the node fails every step, a plain dropout
            raise RuntimeTaskError("this node drops out")
        if self.kind == "junk":
            return b"\x00junk that decodes to nothing"
        if self.kind == "dtype":  # a float vector where the ring expects uint64
            return rt.array_to_bytes(arr.astype(np.float64))
        if self.kind == "shape":
            return rt.array_to_bytes(arr[:-1])
        if self.kind == "nan":
            return rt.array_to_bytes(np.full_like(arr, np.nan))
        if self.kind == "huge":  # far more bytes than an update of this size can take
            return rt.array_to_bytes(np.zeros(arr.size * 64, arr.dtype))
        raise AssertionError(self.kind)


_RUNTIME_KINDS = {  # kind -> (aggregation, the refusal it must cause)
    "junk": ("secure", "SerializationError"),
    "dtype": ("secure", "SchemeMismatchError"),
    "shape": ("secure", "ShapeError"),
    "nan": ("plain", "EncodingError"),
    "huge": ("plain", "SerializationError"),
}
#: Accuracy a run with one refused node may lose against the all-honest run (its third of the data is missing).
RUNTIME_ACCURACY_TOLERANCE = 0.05


def _add_node(sched, ex, identity, runner) -> None:
    keys = sched.coordinator_keys
    sched.add_node(ex.add(rt.EdgeNode(identity, coordinator_key=keys.verify_key, coordinator_box_key=keys.box_key,
                                      domain=keys.domain, capabilities=rt.Capabilities(), runners={"fedtrain": runner})))


_RUNS: dict = {}


def _federate_with(kind: str, aggregation: str):
    """Train 2 rounds on 2 honest nodes and a third whose runner is ``_Malformed(kind)`` (cached per kind)."""
    if (kind, aggregation) not in _RUNS:
        x, y = _data()
        reg, ex = rt.StaticRegistry(), rt.LocalExecutor()
        sched = _sched(ex, reg)
        good = _launch(sched, reg, n=2)
        bad = rt.NodeIdentity.from_seed(fresh_seed())
        reg.admit(bad.address)
        _add_node(sched, ex, bad, _Malformed(bad, kind))
        head, hist = rt.train_federated(sched, x, y, shares=[1, 1, 1], n_classes=3, rounds=2, key=jax.random.key(4),
                                        aggregation=aggregation, local_epochs=3, workers=[good[0].address, bad.address, good[1].address])
        _RUNS[(kind, aggregation)] = (head, hist, sched.journal.faults(), bad.address)
        ex.close()
    return _RUNS[(kind, aggregation)]


@pytest.mark.parametrize("kind", sorted(_RUNTIME_KINDS))
def test_a_malformed_update_of_any_kind_is_a_dropout_and_a_journaled_fault(kind: str) -> None:
    aggregation, error = _RUNTIME_KINDS[kind]
    x, y = _data()
    head, hist, faults, bad = _federate_with(kind, aggregation)
    silent_head, silent_hist, silent_faults, _ = _federate_with("silent", aggregation)
    honest_head, honest_hist, honest_faults, _ = _federate_with("honest", aggregation)
    assert len(hist) == 2  # training completed
    for rec in hist:
        assert [(f.worker_id, f.reason.split(":")[0]) for f in rec.faults] == [(bad, error)], rec.faults
        assert len(rec.round_ids) == 2 and rec.faults[0].round_id == rec.round_ids[0]  # redone without it
        assert bad not in rec.survivors and len(rec.survivors) == 2
    journaled = [(node, why) for node, _, _, why in faults if why.startswith("malformed federated update")]
    assert [node for node, _ in journaled] == [bad, bad] and all(f": {error}:" in why for _, why in journaled), journaled
    assert all(rec.faults == () for rec in silent_hist + honest_hist)
    assert not any(why.startswith("malformed") for *_, why in silent_faults + honest_faults)
    # nothing of the refused update reached the head: it is the head of a plain dropout
    np.testing.assert_allclose(head.flatten(), silent_head.flatten(), rtol=0, atol=1e-9)
    assert abs(head.accuracy(x, y) - honest_head.accuracy(x, y)) <= RUNTIME_ACCURACY_TOLERANCE


def test_a_node_whose_update_was_refused_fails_its_audit_and_honest_nodes_pass() -> None:
    """The round a refused update cut short was never aggregated: its honest steps are not held against anyone."""
    x, y = _data()
    bad = rt.NodeIdentity.from_seed(fresh_seed())
    chain, dep, ids, journal, ex, sched = _on_chain(2, extra=(bad,))
    _add_node(sched, ex, bad, _Malformed(bad, "shape"))
    epoch = dep.current_epoch()
    _, hist = rt.train_federated(sched, x, y, shares=[1, 1, 1], n_classes=3, rounds=1, key=jax.random.key(1), local_epochs=3)
    assert len(hist[0].round_ids) == 2 and hist[0].faults[0].worker_id == bad.address
    dep.advance_to_epoch(epoch + 1)
    nodes = [*ids, bad]
    batches = [rt.close_epoch(dep, journal, i.chain_key, i.address, epoch) for i in nodes]
    assert [b.task_count for b in batches] == [2, 2, 1]
    chain.mine()
    reports = [rt.audit_epoch(dep, journal, b, [chain.accounts[1].key, chain.accounts[2].key]) for b in batches]
    assert [r.passed for r in reports] == [True, True, False], reports
    assert "refused" in reports[2].failures[0]
    ex.close()
