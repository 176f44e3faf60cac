"""dAuth, PoA and PoAI epochs through the real contracts on the in-process EVM."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from eth_account import Account

from edil import AuthorizationError, VerificationError
from edil import runtime as rt
from edil.proofs import Chain, Eip712Domain, EpochStatus
from edil.runtime.testing import Faults, faulty
from tests.test_runtime_conformance import small_model

NOW = 1_700_000_000_000


@pytest.fixture(scope="module")
def chain():
    return Chain.in_process()


@pytest.fixture
def dep(chain):
    d = chain.deploy(epoch_length=60)
    for o in chain.accounts[1:3]:
        d.admit_oracle(o.address)
    d.set_quorum(2)
    return d


def _node(chain, dep, seed: bytes, *, admit: bool = True) -> rt.NodeIdentity:
    ident = rt.NodeIdentity.from_seed(seed)
    if admit:
        dep.admit_node(ident.address)
        chain.fund(ident.address, 10**18)
    return ident


def _sched(dep, executor, journal=None) -> rt.Scheduler:
    return rt.Scheduler(
        # ttl 0: these tests revoke on chain and dispatch at once (the staleness bound is tested
        # with an injected clock in test_chain_failures.py)
        executor, rt.ChainRegistry(dep, ttl_s=0.0), journal or rt.Journal(":memory:"),
        identity=rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2), domain=dep.poai_domain,
        epoch=dep.current_epoch, timeout_s=10,
    )


def test_dauth_gates_through_the_registry_contract(chain, dep) -> None:
    a = _node(chain, dep, b"a" * 32)
    b = _node(chain, dep, b"b" * 32, admit=False)
    ex = rt.LocalExecutor()
    sched = _sched(dep, ex)
    sched.launch(rt.NodeConfig(seed=b"a" * 32, capabilities=rt.Capabilities()))
    with pytest.raises(AuthorizationError):
        sched.launch(rt.NodeConfig(seed=b"b" * 32, capabilities=rt.Capabilities()))
    assert sched.nodes == (a.address,) and b.address not in sched.nodes
    job = sched.submit(rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True))
    assert sched.run() == {"done": 1}
    dep.revoke_node(a.address)  # revoked on chain: no further task reaches it
    sched.submit(rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True))
    assert sched.run() == {"done": 1, "failed": 1}
    assert ex.node(a.address).completed == 1 and sched.journal.result(job).nodes == (a.address,)
    ex.close()


def test_heartbeats_are_counted_and_bad_ones_ignored() -> None:
    good = rt.NodeIdentity.from_seed(b"g" * 32)
    stranger = rt.NodeIdentity.from_seed(b"s" * 32)
    mon = rt.HeartbeatMonitor(rt.StaticRegistry([good.address]), epoch_ms=60_000, interval_ms=10_000, genesis_ms=NOW)
    mon.add_card(good.card(rt.Capabilities()))
    mon.add_card(stranger.card(rt.Capabilities()))  # known key, but not admitted
    for i in range(3):
        assert mon.receive(rt.make_heartbeat(good, seq=i, now_ms=NOW + i * 10_000), now_ms=NOW + i * 10_000)
    hb = rt.make_heartbeat(good, seq=9, now_ms=NOW + 35_000)
    forged = hb[:10] + bytes([hb[10] ^ 1]) + hb[11:]
    assert not mon.receive(forged, now_ms=NOW + 35_000)
    assert not mon.receive(rt.make_heartbeat(stranger, seq=1, now_ms=NOW), now_ms=NOW)
    assert not mon.receive(rt.make_heartbeat(good, seq=1, now_ms=NOW + 20_000), now_ms=NOW + 20_000)  # replayed seq
    assert not mon.receive(rt.make_heartbeat(good, seq=5, now_ms=NOW), now_ms=NOW + 50_000)  # back-filled
    assert not mon.receive(b"\x00" * 80, now_ms=NOW)
    assert mon.rejected == {"bad_signature": 1, "unregistered": 1, "replayed": 1, "stale": 1, "malformed": 1}
    assert mon.accepted == 3 and mon.availability(good.address, 0) == round(255 * 3 / 6)
    assert rt.agree([255, 10, 200]) == 200 and rt.agree([255, 212]) == 212


def test_availability_is_claimed_on_the_ledger(chain, dep) -> None:
    ident = _node(chain, dep, b"p" * 32)
    genesis_ms = dep.genesis_time * 1000
    oracles = []
    for k, missed in ((chain.accounts[1], set()), (chain.accounts[2], {3})):
        mon = rt.HeartbeatMonitor(rt.ChainRegistry(dep), epoch_ms=60_000, interval_ms=10_000, genesis_ms=genesis_ms)
        mon.add_card(ident.card(rt.Capabilities()))
        for i in range(6):
            t = genesis_ms + i * 10_000 + 1
            if i not in missed:
                mon.receive(rt.make_heartbeat(ident, seq=i, now_ms=t), now_ms=t)
        oracles.append(rt.AvailabilityOracle(k, mon))
    dep.advance_to_epoch(1)
    agreed = rt.settle_availability(dep, Account.from_key(ident.chain_key), [0], oracles)
    assert agreed == [212]
    assert dep.is_claimed(ident.address, 0) and dep.reward_units(ident.address) == Fraction(212, 255)


def test_epoch_roots_audits_and_voiding(chain, dep) -> None:
    journal = rt.Journal(":memory:")
    seeds = {"h1": b"1" * 32, "h2": b"2" * 32, "liar": b"3" * 32, "quiet_liar": b"4" * 32}
    ids = {k: _node(chain, dep, s) for k, s in seeds.items()}
    ex = rt.LocalExecutor()
    sched = _sched(dep, ex, journal)
    for k in ("h1", "h2", "liar"):
        sched.launch(faulty(rt.NodeConfig(seed=seeds[k], capabilities=rt.Capabilities()), Faults("wrong") if k == "liar" else None))
    model = small_model()
    sched.submit_many([rt.Task.plain(model, np.full((1, 4), float(i)), allow_plaintext=True) for i in range(2)], redundancy=3)
    assert sched.run() == {"done": 2}
    # a second coordinator with only a byzantine node and no redundancy: the audit must catch it
    ex2 = rt.LocalExecutor()
    sched2 = _sched(dep, ex2, journal)
    sched2.launch(faulty(rt.NodeConfig(seed=seeds["quiet_liar"], capabilities=rt.Capabilities()), Faults("wrong")))
    sched2.submit(rt.Task.plain(model, np.ones((1, 4)), allow_plaintext=True))
    assert sched2.run() == {"done": 3}

    epoch = 0
    dep.advance_to_epoch(1)
    batches = {k: rt.close_epoch(dep, journal, ids[k].chain_key, ids[k].address, epoch) for k in ids}
    chain.mine()  # the audit beacon is the block after the root
    b = batches["h1"]
    assert dep.check_inclusion(ids["h1"].address, epoch, b.digest(0), b.proof(0))
    oracle_keys = [chain.accounts[1].key, chain.accounts[2].key]
    reports = {k: rt.audit_epoch(dep, journal, batches[k], oracle_keys) for k in ids}
    for k in ("h1", "h2"):
        assert reports[k].passed
        # the figure on chain is the oracles' recount of the signed batch, equal to the work done
        assert (reports[k].task_count, reports[k].work_units) == (2, model.work_units(1) * 2)
        assert dep.verified_work_units(ids[k].address, epoch) == model.work_units(1) * 2
        assert dep.epoch_record(ids[k].address, epoch).task_count == 2
        assert reports[k].sampled and sorted(reports[k].sampled) == [0, 1]  # a small batch is audited whole
        assert reports[k].detection == 1.0
    for k in ("liar", "quiet_liar"):
        assert not reports[k].passed, reports[k]
        assert dep.epoch_record(ids[k].address, epoch).status == EpochStatus.VOIDED
        assert dep.verified_work_units(ids[k].address, epoch) == 0
    # The quiet liar's job (redundancy 1) is disputed and its result refused; the redundant jobs,
    # where the liar was outvoted and its output never used, are not.
    quiet_job = journal.transcripts(ids["quiet_liar"].address, epoch)[0][0]
    reason = sched2.status(quiet_job).disputed
    assert reason and ids["quiet_liar"].address in reason and "recomputed output differs" in reason
    with pytest.raises(VerificationError, match="disputed") as info:
        sched2.result(quiet_job)
    assert "failed its PoAI audit of epoch 0" in str(info.value)
    assert sched2.result(quiet_job, allow_disputed=True) == journal.result(quiet_job).output
    for jid, _, _ in journal.transcripts(ids["h1"].address, epoch):
        assert sched.status(jid).disputed is None
        sched.result(jid)
    assert [j.job_id for j in journal.disputed()] == [quiet_job]
    ex.close()
    ex2.close()


@pytest.mark.parametrize("fault", ["wrong", "tamper"])
def test_masked_parties_are_audited_by_replay(chain, dep, fault) -> None:
    """Each party's transcript is replayed from its own view; a party that lied is voided, whether
    it returned a wrong output share or sent wrong contributions and then a consistent output."""
    import jax

    from edil import Masked

    journal = rt.Journal(":memory:")
    seeds = [bytes([0x50 + i + (8 if fault == "tamper" else 0)]) * 32 for i in range(3)]
    ids = [_node(chain, dep, s) for s in seeds]
    ex = rt.LocalExecutor()
    sched = _sched(dep, ex, journal)
    for i, s in enumerate(seeds):
        sched.launch(faulty(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()), Faults(fault) if i == 2 else None))
    model, x = small_model(2), np.random.default_rng(3).normal(size=(4, 4))
    scheme = Masked(3, key=jax.random.key(1))
    epoch = dep.current_epoch()
    # check="none": no replay within the job, so the lie reaches the result and only the epoch audit can void it
    y = sched.run_masked(scheme, model, scheme.encode(x), key=b"dealer-seed-0000", check="none", job_id=f"masked-{fault}")
    assert sched.status(f"masked-{fault}").status == "done" and sched.status(f"masked-{fault}").disputed is None
    assert not np.allclose(scheme.decode(y), model.forward(x), atol=1e-3)  # the liar corrupted the result
    dep.advance_to_epoch(epoch + 1)
    batches = [rt.close_epoch(dep, journal, i.chain_key, i.address, epoch) for i in ids]
    chain.mine()
    oracle_keys = [chain.accounts[1].key, chain.accounts[2].key]
    reports = [rt.audit_epoch(dep, journal, b, oracle_keys) for b in batches]
    assert [r.passed for r in reports] == [True, True, False], reports
    expected = "replayed party output differs" if fault == "wrong" else "contribution in round 1 is not the protocol's"
    assert expected in reports[2].failures[0], reports[2]
    assert dep.verified_work_units(ids[0].address, epoch) == model.work_units(4)
    assert dep.epoch_record(ids[2].address, epoch).status == EpochStatus.VOIDED
    # The failed audit is linked back to the job: disputed, and its output refused by default.
    assert ids[2].address in sched.status(f"masked-{fault}").disputed
    with pytest.raises(VerificationError, match="disputed"):
        sched.run_masked(scheme, model, scheme.encode(x), key=b"dealer-seed-0000", check="none", job_id=f"masked-{fault}")
    ex.close()


@pytest.mark.parametrize("fault", ["wrong", "tamper"])
def test_a_deviating_masked_party_is_caught_within_the_job(fault) -> None:
    """With the default check the coordinator replays every party before the job is done: the liar
    is recorded as a fault, and the session runs again, re-randomised, without it."""
    import jax

    from edil import Masked

    journal = rt.Journal(":memory:")
    domain = Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "11" * 20)
    seeds = [bytes([0x70 + i]) * 32 for i in range(4)]
    liar = rt.NodeIdentity.from_seed(seeds[0]).address
    registry = rt.StaticRegistry(rt.NodeIdentity.from_seed(s).address for s in seeds)
    ex = rt.LocalExecutor()
    sched = rt.Scheduler(ex, registry, journal, identity=rt.CoordinatorIdentity.generate(), domain=domain,
                         availability=lambda a: 1.0 if a == liar else 0.5)  # the liar is placed first
    for i, s in enumerate(seeds):
        sched.launch(faulty(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()), Faults(fault) if i == 0 else None))
    model, x = small_model(2), np.random.default_rng(4).normal(size=(4, 4))
    scheme = Masked(3, key=jax.random.key(2))
    y = sched.run_masked(scheme, model, scheme.encode(x))
    np.testing.assert_allclose(scheme.decode(y), model.forward(x), atol=1e-3)
    assert liar not in journal.results()[-1].nodes
    assert [f[0] for f in journal.faults()] == [liar]
    assert "masked party caught in the job" in journal.faults()[0][3]
    assert sched.stats["masked_cheaters"] == 1
    assert journal.jobs()[-1].attempts == 2  # the second, re-randomised attempt ran without the liar
    ex.close()


def test_placement_prefers_available_nodes_and_skips_silent_ones() -> None:
    up, silent = rt.NodeIdentity.from_seed(b"u" * 32), rt.NodeIdentity.from_seed(b"v" * 32)
    registry = rt.StaticRegistry([up.address, silent.address])
    mon = rt.HeartbeatMonitor(registry, epoch_ms=60_000, interval_ms=10_000, genesis_ms=NOW)
    for ident in (up, silent):
        mon.add_card(ident.card(rt.Capabilities()))
    for i in range(9):  # `up` beats in every slot of the last 1.5 epochs, `silent` only in the first
        t = NOW + i * 10_000 + 1
        mon.receive(rt.make_heartbeat(up, seq=i, now_ms=t), now_ms=t)
        if i == 0:
            mon.receive(rt.make_heartbeat(silent, seq=i, now_ms=t), now_ms=t)
    now = NOW + 90_000
    assert mon.recent(up.address, now_ms=now) == 1.0
    assert mon.recent(silent.address, now_ms=now) == 0.0 and mon.recent(silent.address, now_ms=now, window_ms=90_000) == 1 / 9
    with pytest.raises(ValueError):
        mon.recent(up.address, now_ms=now, window_ms=5_000)
    assert mon.recent(silent.address, now_ms=NOW + 5_000) == 1.0  # no finished slot yet: nobody is locked out
    assert mon.recent(silent.address, now_ms=NOW + 25_000) == 0.5  # 2 finished slots since genesis, 1 seen
    ex = rt.LocalExecutor()
    sched = rt.Scheduler(
        ex, registry, rt.Journal(":memory:"), identity=rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2),
        domain=Eip712Domain("EDIL PoAI", "1", 1, "0x" + "11" * 20),
        availability=lambda a: mon.recent(a, now_ms=now), min_availability=0.5,
    )
    for seed in (b"u" * 32, b"v" * 32):
        sched.launch(rt.NodeConfig(seed=seed, capabilities=rt.Capabilities()))
    sched.submit_many([rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True) for _ in range(4)])
    assert sched.run() == {"done": 4}
    assert {n for r in sched.results() for n in r.nodes} == {up.address}
    assert sched.stats["skipped_unavailable"] > 0
    ex.close()


def test_a_restarted_node_keeps_its_heartbeats_counted() -> None:
    """Sequence numbers follow the clock: a node that restarts (and forgets its counter) is not taken for a replayer."""
    ident = rt.NodeIdentity.from_seed(b"r" * 32)
    mon = rt.HeartbeatMonitor(rt.StaticRegistry([ident.address]), epoch_ms=60_000, interval_ms=10_000, genesis_ms=NOW)
    mon.add_card(ident.card(rt.Capabilities()))
    keys = dict(coordinator_key=b"\x01" * 32, coordinator_box_key=b"\x02" * 32, domain=Eip712Domain("EDIL PoAI", "1", 1, "0x" + "11" * 20))
    t = NOW
    clock = lambda: t / 1000  # noqa: E731 - the nodes' injected clock (a node signs only its own time)
    first = rt.EdgeNode(ident, capabilities=rt.Capabilities(), clock=clock, **keys)
    for i in range(3):
        t = NOW + i * 10_000 + 1
        assert mon.receive(first.heartbeat(), now_ms=t)
    restarted = rt.EdgeNode(ident, capabilities=rt.Capabilities(), clock=clock, **keys)
    for i in range(3, 6):
        t = NOW + i * 10_000 + 1
        assert mon.receive(restarted.heartbeat(), now_ms=t)
    assert mon.availability(ident.address, 0) == 255 and not mon.rejected
