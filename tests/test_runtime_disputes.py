"""A failed audit reaches back: disputed jobs in the journal and the scheduler, no availability reward.

Journal disputes (and the migration of journals written before them), ``Scheduler.result`` /
``Scheduler.status`` on disputed jobs, and availability rewards of audited epochs through the real
contracts on the in-process EVM.
"""

from __future__ import annotations

import sqlite3
from fractions import Fraction

import numpy as np
import pytest
from eth_account import Account

from edil import ParameterError, VerificationError
from edil import runtime as rt
from edil.proofs import Eip712Domain, EpochStatus
from edil.runtime.testing import Faults, faulty
from tests.test_runtime_chain import chain, dep  # noqa: F401 - pytest fixtures
from tests.test_runtime_conformance import small_model

DOMAIN = Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "11" * 20)

# The jobs table as journals wrote it before disputes existed.
_OLD_JOBS = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BLOB NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    spec BLOB NOT NULL,
    redundancy INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
"""


def test_an_old_journal_gains_the_dispute_column(tmp_path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(_OLD_JOBS)
    db.execute("INSERT INTO jobs (job_id, kind, spec, redundancy, status) VALUES (?, 'task', ?, 1, 'done')",
               (b"\x01" * 32, b"spec"))
    db.commit()
    db.close()
    j = rt.Journal(path)
    rec = j.job(b"\x01" * 32)
    assert rec is not None and rec.status == "done" and rec.disputed is None
    assert j.dispute(b"\x01" * 32, "node 0xabc failed its audit")
    j.close()
    again = rt.Journal(path)  # opening a migrated journal changes nothing
    assert again.job(b"\x01" * 32).disputed == "node 0xabc failed its audit"
    columns = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(jobs)").fetchall()]
    assert columns.count("disputed") == 1
    again.close()


def test_dispute_keeps_each_reason_once() -> None:
    j = rt.Journal(":memory:")
    j.add(b"\x02" * 32, "task", b"spec")
    j.add(b"\x03" * 32, "task", b"spec")
    assert j.job(b"\x02" * 32).disputed is None and j.disputed() == []
    assert j.dispute(b"\x02" * 32, "first")
    assert not j.dispute(b"\x02" * 32, "first")
    assert j.dispute(b"\x02" * 32, "second")
    assert j.job(b"\x02" * 32).disputed == "first\nsecond"
    assert [r.job_id for r in j.disputed()] == [b"\x02" * 32]
    assert j.job(b"\x02" * 32).status == "pending"  # a dispute is not a status change
    with pytest.raises(ParameterError, match="unknown job"):
        j.dispute(b"\x09" * 32, "unknown job")
    with pytest.raises(ValueError):
        j.dispute(b"\x03" * 32, "  ")


def test_scheduler_refuses_a_disputed_result_unless_asked() -> None:
    seed = b"d" * 32
    node = rt.NodeIdentity.from_seed(seed)
    ex = rt.LocalExecutor()
    sched = rt.Scheduler(ex, rt.StaticRegistry([node.address]), rt.Journal(":memory:"),
                         identity=rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2), domain=DOMAIN)
    sched.launch(rt.NodeConfig(seed=seed, capabilities=rt.Capabilities()))
    model, x = small_model(), np.ones((1, 4))
    jid = sched.submit(rt.Task.plain(model, x, allow_plaintext=True), job_id="job-d")
    assert sched.run() == {"done": 1}
    out = sched.result("job-d")
    assert sched.status("job-d").status == "done" and sched.status(jid).disputed is None
    sched.journal.dispute(jid, f"node {node.address} failed its PoAI audit of epoch 0: recomputed output differs")
    with pytest.raises(VerificationError, match="disputed: node .* failed its PoAI audit of epoch 0") as info:
        sched.result("job-d")
    assert node.address in str(info.value)
    assert sched.result("job-d", allow_disputed=True) == out
    assert "failed its PoAI audit" in sched.status("job-d").disputed
    with pytest.raises(ParameterError, match="unknown job"):
        sched.status("never-submitted")
    ex.close()


# --- availability of audited epochs, on the in-process EVM ----------------------------------------


# The in-process chain with two oracles at quorum 2 (chain, dep): the fixtures of tests/test_runtime_chain.py.


def _node(chain, dep, seed: bytes) -> rt.NodeIdentity:
    ident = rt.NodeIdentity.from_seed(seed)
    dep.admit_node(ident.address)
    chain.fund(ident.address, 10**18)
    return ident


def _sched(dep, journal, seed: bytes, fault: str | None) -> tuple[rt.Scheduler, rt.LocalExecutor]:
    ex = rt.LocalExecutor()
    sched = rt.Scheduler(ex, rt.ChainRegistry(dep), journal, identity=rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2),
                         domain=dep.poai_domain, epoch=dep.current_epoch, timeout_s=10)
    config = rt.NodeConfig(seed=seed, capabilities=rt.Capabilities())
    sched.launch(faulty(config, Faults(fault)) if fault else config)
    return sched, ex


def _oracles(chain, dep, idents, epochs) -> list[rt.AvailabilityOracle]:
    """Two oracles that saw a heartbeat from every node in every slot of ``epochs``."""
    genesis_ms = dep.genesis_time * 1000
    oracles = []
    for key in (chain.accounts[1], chain.accounts[2]):
        mon = rt.HeartbeatMonitor(rt.ChainRegistry(dep), epoch_ms=60_000, interval_ms=10_000, genesis_ms=genesis_ms)
        for ident in idents:
            mon.add_card(ident.card(rt.Capabilities()))
            for e in epochs:
                for i in range(6):
                    t = genesis_ms + e * 60_000 + i * 10_000 + 1
                    assert mon.receive(rt.make_heartbeat(ident, seq=e * 6 + i, now_ms=t), now_ms=t)
        oracles.append(rt.AvailabilityOracle(key, mon))
    return oracles


def test_availability_of_a_voided_epoch_earns_nothing(chain, dep) -> None:
    """Claimed before the audit fails: the audit takes it back. Claimed after: it earns nothing."""
    journal = rt.Journal(":memory:")
    seeds = {"honest": b"H" * 32, "liar": b"L" * 32}
    ids = {k: _node(chain, dep, s) for k, s in seeds.items()}
    accounts = {k: Account.from_key(i.chain_key) for k, i in ids.items()}
    scheds = {k: _sched(dep, journal, seeds[k], "wrong" if k == "liar" else None) for k in seeds}
    model = small_model()
    first = dep.current_epoch()
    work_epochs = (first, first + 1)
    for e in work_epochs:
        dep.advance_to_epoch(e)
        for sched, _ in scheds.values():
            sched.submit(rt.Task.plain(model, np.full((1, 4), float(e)), allow_plaintext=True))
            assert sched.run()["done"] >= 1
    dep.advance_to_epoch(first + 2)
    oracles = _oracles(chain, dep, ids.values(), work_epochs)
    keys = [chain.accounts[1].key, chain.accounts[2].key]

    # Epoch `first`: availability is claimed first, then the roots are audited.
    for k in ids:
        assert rt.settle_availability(dep, accounts[k], [first], oracles) == [255]
        assert dep.reward_units(ids[k].address) == 1
    batches = {k: rt.close_epoch(dep, journal, ids[k].chain_key, ids[k].address, first) for k in ids}
    chain.mine()
    reports = {k: rt.audit_epoch(dep, journal, batches[k], keys) for k in ids}
    assert reports["honest"].passed and not reports["liar"].passed
    assert dep.epoch_status(ids["liar"].address, first) is EpochStatus.VOIDED
    assert dep.reward_units(ids["honest"].address) == 1
    assert dep.reward_units(ids["liar"].address) == 0  # the failed audit forfeited the claimed epoch
    assert dep.is_claimed(ids["liar"].address, first) and dep.earned_availability(ids["liar"].address, first) == 0

    # Epoch `first + 1`: audited first, claimed afterwards: the voided epoch is claimed for nothing.
    second = first + 1
    batches = {k: rt.close_epoch(dep, journal, ids[k].chain_key, ids[k].address, second) for k in ids}
    chain.mine()
    reports = {k: rt.audit_epoch(dep, journal, batches[k], keys) for k in ids}
    assert reports["honest"].passed and not reports["liar"].passed
    for k in ids:
        assert rt.settle_availability(dep, accounts[k], [second], oracles) == [255]
    assert dep.reward_units(ids["honest"].address) == Fraction(2)
    assert dep.reward_units(ids["liar"].address) == 0
    for _, ex in scheds.values():
        ex.close()


def test_a_sized_audit_catches_a_node_cheating_on_a_tenth_of_its_tasks(chain, dep) -> None:
    """Redundancy 1, 40 tasks, the last 4 answered wrong: 4 samples would miss them 64% of the time;
    the audit sized for f = 0.05 at 0.99 samples 36 and catches the node (it misses with p ~ 1e-5)."""
    from edil.proofs import audit_detection, audit_sample_size

    journal = rt.Journal(":memory:")
    seed = b"Q" * 32
    ident = _node(chain, dep, seed)
    ex = rt.LocalExecutor()
    sched = rt.Scheduler(ex, rt.ChainRegistry(dep, ttl_s=60), journal,
                         identity=rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2),
                         domain=dep.poai_domain, epoch=dep.current_epoch, timeout_s=10)
    sched.launch(faulty(rt.NodeConfig(seed=seed, capabilities=rt.Capabilities()), Faults("wrong", after=36)))
    model = small_model()
    epoch = dep.current_epoch()
    jobs = sched.submit_many([rt.Task.plain(model, np.full((1, 4), float(i)), allow_plaintext=True) for i in range(40)])
    assert sched.run() == {"done": 40}
    outputs = [rt.array_from_bytes(sched.result(j)) for j in jobs]
    wrong = [i for i, y in enumerate(outputs) if not np.allclose(y, model.forward(np.full((1, 4), float(i))))]
    assert len(wrong) == 4  # delivered without a vote: only the audit can catch them
    dep.advance_to_epoch(epoch + 1)
    batch = rt.close_epoch(dep, journal, ident.chain_key, ident.address, epoch)
    assert batch.task_count == 40
    chain.mine()
    assert float(audit_detection(40, 4, 0.1)) < 0.4  # the former fixed sample
    report = rt.audit_epoch(dep, journal, batch, [chain.accounts[1].key, chain.accounts[2].key])
    assert len(report.sampled) == audit_sample_size(40) == 36 and report.detection >= 0.99
    assert not report.passed and all("recomputed output differs" in f for f in report.failures)
    assert dep.epoch_status(ident.address, epoch) is EpochStatus.VOIDED
    assert len(journal.disputed()) == 40  # every job of the node's voided epoch
    ex.close()
