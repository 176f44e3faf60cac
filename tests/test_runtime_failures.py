"""Failures and disclosure: tasks checked before dispatch, deterministic vs node faults, retries, opt-ins.

Every scheduler here drives real nodes through a :class:`LocalExecutor` (sealed envelopes,
signed replies and transcripts); misbehaving nodes are :mod:`edil.runtime.testing` nodes or
nodes with a runner that fails.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edil import (
    CKKS,
    Masked,
    Paillier,
    ParameterError,
    Plain,
    RuntimeTaskError,
    SchemeMismatchError,
    ShapeError,
    UnsupportedOperationError,
)
from edil import runtime as rt
from edil.models import Dense, Sequential
from edil.runtime.testing import Faults, faulty
from tests.test_runtime_conformance import DOMAIN, small_model

_seeds = itertools.count(1000)


@pytest.fixture(scope="module")
def paillier() -> Paillier:
    return Paillier(key_bits=1024)


def linear(seed: int = 0) -> Sequential:
    rng = np.random.default_rng(seed)
    return Sequential((Dense(rng.normal(size=(4, 2)), rng.normal(size=2)),))


class _Failing:
    """A runner that cannot run anything (a broken node, or one that lies about a task)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def run(self, task: rt.Task) -> bytes:
        raise self.exc


class _Env:
    def __init__(self, **kw: object) -> None:
        self.ex = rt.LocalExecutor()
        self.registry = rt.StaticRegistry()
        self.sched = rt.Scheduler(
            self.ex,
            self.registry,
            rt.Journal(":memory:"),
            identity=rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2),
            domain=DOMAIN,
            **kw,  # type: ignore[arg-type]
        )

    def launch(self, faults: Faults | None = None) -> str:
        cfg = rt.NodeConfig(seed=next(_seeds).to_bytes(4, "big") * 8, capabilities=rt.Capabilities())
        self.registry.admit(rt.NodeIdentity.from_seed(cfg.seed).address)
        return self.sched.launch(faulty(cfg, faults) if faults is not None else cfg).address

    def add(self, node_cls: type[rt.EdgeNode] = rt.EdgeNode, **runners: object) -> str:
        """Host a node built here (custom runners or reply path), admitted like any other."""
        ident = rt.NodeIdentity.from_seed(next(_seeds).to_bytes(4, "big") * 8)
        keys = self.sched.coordinator_keys
        node = node_cls(
            ident,
            coordinator_key=keys.verify_key,
            coordinator_box_key=keys.box_key,
            domain=keys.domain,
            capabilities=rt.Capabilities(),
            runners=runners,
        )  # type: ignore[arg-type]
        self.registry.admit(ident.address)
        self.sched.add_node(self.ex.add(node))
        return ident.address

    def node(self, address: str) -> rt.EdgeNode:
        return self.ex.node(address)


@pytest.fixture
def env():
    envs: list[_Env] = []

    def make(**kw: object) -> _Env:
        envs.append(_Env(**kw))
        return envs[-1]

    yield make
    for e in envs:
        e.ex.close()


def _preference(order: list[str]):  # noqa: ANN202
    """An availability view that makes placement try nodes in ``order`` (more available first)."""
    rank = {a: 1.0 - i / 10 for i, a in enumerate(order)}
    return lambda a: rank.get(a, 0.0)


# --- the scheme contract and checks before dispatch --------------------------------------------------
def test_scheme_contract_is_an_explicit_protocol(paillier) -> None:
    assert isinstance(paillier, rt.SchemeContract)
    assert isinstance(CKKS(depth=1), rt.SchemeContract)
    assert not isinstance(Masked(2), rt.SchemeContract)  # no public context: run_masked
    assert not isinstance(Plain(), rt.SchemeContract)
    with pytest.raises(UnsupportedOperationError, match="run_masked"):
        rt.Task.for_scheme(Masked(2), linear(), np.ones((2, 4)), model_public=True)


def test_a_task_that_can_never_run_is_refused_before_anything_is_journaled(env, paillier) -> None:
    e = env()
    mlp = small_model()  # dense, polynomial, dense
    with pytest.raises(UnsupportedOperationError, match="polynomial activation"):
        rt.Task.for_scheme(paillier, mlp, paillier.encode(np.ones((2, 4))), model_public=True)
    shallow = CKKS(depth=1)
    with pytest.raises(ParameterError, match="depth"):
        rt.Task.for_scheme(shallow, mlp, shallow.encode(np.ones((2, 4))), model_public=True)
    with pytest.raises(ShapeError):
        rt.Task.for_scheme(paillier, linear(), paillier.encode(np.ones((2, 3))), model_public=True)
    other = Paillier(key_bits=1024)
    with pytest.raises(SchemeMismatchError):
        rt.Task.for_scheme(paillier, linear(), other.encode(np.ones((2, 4))), model_public=True)
    big = Sequential((Dense(np.full((4, 2), 1e9), np.zeros(2)),))  # overflows a packed slot
    with pytest.raises(ParameterError, match="slot"):
        rt.Task.for_scheme(paillier, big, paillier.encode(np.ones((2, 4))), model_public=True)
    assert e.sched.journal.counts() == {}


def test_paillier_check_model_allows_what_the_slots_hold(paillier) -> None:
    """Two dense layers fit the default headroom: allowed, and the result matches the reference."""
    rng = np.random.default_rng(2)
    two = Sequential((Dense(rng.normal(size=(4, 3)), rng.normal(size=3)), Dense(rng.normal(size=(3, 2)), rng.normal(size=2))))
    x = rng.normal(size=(3, 4))
    task = rt.Task.for_scheme(paillier, two, paillier.encode(x), model_public=True)
    out = paillier.decode(paillier.deserialize(rt.default_runners()["paillier"].run(task)))
    np.testing.assert_allclose(out, two.forward(x), atol=1e-3)  # 16 fractional bits per factor


# --- disclosure opt-ins --------------------------------------------------------------------------------
def test_plain_tasks_need_an_explicit_opt_in_and_the_journal_records_it(env) -> None:
    e = env()
    e.launch()
    with pytest.raises(UnsupportedOperationError, match="allow_plaintext=True"):
        rt.Task.plain(small_model(), np.ones((1, 4)))
    with pytest.raises(UnsupportedOperationError, match="allow_plaintext=True"):
        rt.Task.for_scheme(Plain(), small_model(), Plain().encode(np.ones((1, 4))), model_public=True)
    task = rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True)
    # a task made by hand without the declaration never reaches a node, and nothing is journaled
    undeclared = dataclasses.replace(task, allow_plaintext=False)
    with pytest.raises(UnsupportedOperationError, match="allow_plaintext"):
        e.sched.submit(undeclared)
    with pytest.raises(UnsupportedOperationError, match="model_public"):
        e.sched.submit(dataclasses.replace(task, model_public=False))
    assert e.sched.journal.counts() == {}
    job = e.sched.submit(task)
    spec = rt.Task.from_bytes(e.sched.journal.job(job).spec)
    assert spec.allow_plaintext is True and spec.model_public is True
    assert e.sched.run() == {"done": 1}


def test_he_tasks_send_weights_only_for_a_model_declared_public(env, paillier) -> None:
    e = env()
    e.launch()
    x = np.random.default_rng(3).normal(size=(5, 4))
    with pytest.raises(UnsupportedOperationError, match="model_public=True") as info:
        rt.Task.for_scheme(paillier, linear(), paillier.encode(x))
    assert "in the clear" in str(info.value)  # says why, and how to opt in
    ckks = CKKS.for_model(small_model())
    with pytest.raises(UnsupportedOperationError, match="model_public=True"):
        rt.Task.for_scheme(ckks, small_model(), ckks.encode(x))
    job = e.sched.submit(rt.Task.for_scheme(paillier, linear(), paillier.encode(x), model_public=True))
    assert rt.Task.from_bytes(e.sched.journal.job(job).spec).model_public is True
    assert rt.Task.from_bytes(e.sched.journal.job(job).spec).allow_plaintext is False  # the input stays encrypted
    assert e.sched.run() == {"done": 1}
    np.testing.assert_allclose(paillier.decode(paillier.deserialize(e.sched.result(job))), linear().forward(x), atol=1e-3)


# --- deterministic failures ------------------------------------------------------------------------------
def _unrunnable(paillier: Paillier, **kw: object) -> rt.Task:
    """A Paillier task whose model has an activation, made by hand past the construction check."""
    ok = rt.Task.for_scheme(paillier, linear(), paillier.encode(np.ones((2, 4))), model_public=True)
    return dataclasses.replace(ok, model=rt.model_to_bytes(small_model()), **kw)  # type: ignore[arg-type]


def test_a_task_failing_alike_on_two_nodes_fails_its_job_and_suspends_no_node(env, paillier) -> None:
    e = env()
    nodes = [e.launch() for _ in range(3)]
    job = e.sched.submit(_unrunnable(paillier))
    assert e.sched.run() == {"failed": 1}
    with pytest.raises(RuntimeTaskError, match="deterministically.*UnsupportedOperationError.*polynomial"):
        e.sched.result(job)
    assert sorted(e.node(a).task_errors for a in nodes) == [0, 1, 1]  # two nodes agreed; the third got nothing
    assert e.sched.stats["deterministic_failures"] == 1
    assert e.sched.stats["node_errors"] == e.sched.stats["timeouts"] == e.sched.stats["bad_replies"] == 0
    # no node was suspended: a task on all three nodes at once runs now
    good = e.sched.submit(rt.Task.plain(small_model(), np.ones((2, 4)), allow_plaintext=True), redundancy=3)
    assert e.sched.run() == {"failed": 1, "done": 1}
    assert sorted(e.sched.journal.result(good).nodes) == sorted(nodes)


def test_a_pinned_task_that_cannot_run_on_its_node_fails_at_once(env, paillier) -> None:
    e = env()
    a, b = e.launch(), e.launch()
    job = e.sched.submit(_unrunnable(paillier, node=a))
    assert e.sched.run() == {"failed": 1}
    assert (e.node(a).task_errors, e.node(b).task_errors) == (1, 0)
    with pytest.raises(RuntimeTaskError, match="pinned node"):
        e.sched.result(job)
    assert e.sched.stats["node_errors"] == 0


def test_one_node_claiming_the_task_is_bad_cannot_fail_the_job(env) -> None:
    """A single error reply, even of a task-check class, only moves the job; the node is suspended."""
    e = env()
    liar = e.add(plain=_Failing(UnsupportedOperationError("this node claims the task cannot run")))
    honest = e.launch()
    e.sched.placement.availability = _preference([liar, honest])
    model, x = small_model(), np.ones((2, 4))
    job = e.sched.submit(rt.Task.plain(model, x, allow_plaintext=True))
    assert e.sched.run() == {"done": 1}
    assert e.sched.journal.result(job).nodes == (honest,)
    np.testing.assert_allclose(rt.array_from_bytes(e.sched.result(job)), model.forward(x), rtol=1e-12)
    assert e.node(liar).task_errors == 1
    assert e.sched.stats["error_replies"] == 1 and e.sched.stats["node_errors"] == 1  # its failure was its own


def test_different_errors_on_two_nodes_are_node_faults(env) -> None:
    e = env()
    a = e.add(plain=_Failing(RuntimeError("out of device memory")))
    b = e.add(plain=_Failing(OSError("disk full")))
    c = e.launch()
    e.sched.placement.availability = _preference([a, b, c])
    job = e.sched.submit(rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True))
    assert e.sched.run() == {"done": 1}
    assert e.sched.journal.result(job).nodes == (c,)
    assert e.sched.stats["deterministic_failures"] == 0 and e.sched.stats["node_errors"] == 2


# --- node faults: retried elsewhere, with backoff and a budget ------------------------------------------
class _Impostor(rt.EdgeNode):
    """Signs its replies with a key the coordinator does not know for it."""

    other = rt.NodeIdentity.from_seed(b"impostor" * 4)

    def _reply(self, kind: str, body: object) -> bytes:
        return rt.seal_envelope(
            kind,
            body,
            signing_key=self.other.signing,
            recipient_box_key=self._coord_box,
            nonce=os.urandom(16),
            now_ms=int(time.time() * 1000),
        )


def test_unauthenticated_replies_are_node_faults_and_the_job_moves(env) -> None:
    e = env()
    bad = e.add(_Impostor)
    good = e.launch()
    e.sched.placement.availability = _preference([bad, good])
    job = e.sched.submit(rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True))
    assert e.sched.run() == {"done": 1}
    assert e.sched.journal.result(job).nodes == (good,)
    assert e.sched.stats["bad_replies"] == 1


def test_faults_back_off_exponentially_within_the_attempt_budget(env) -> None:
    e = env(backoff_s=0.2, max_attempts=3, cooldown_s=30.0)
    e.launch(Faults("crash"))
    job = e.sched.submit(rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True))
    t0 = time.monotonic()
    assert e.sched.run() == {"failed": 1}
    took = time.monotonic() - t0
    assert e.sched.stats["sent"] == 3 and e.sched.stats["node_errors"] == 3
    assert took >= 0.2 + 0.4  # waited 0.2 s, then 0.4 s, before the 2nd and 3rd dispatch
    assert took < 10  # and not the 30 s cooldown
    err = e.sched.journal.job(job).error
    assert err.count("crashed") == 3 and "budget spent: 3 dispatches" in err


def test_a_pinned_task_fails_at_its_nodes_first_fault(env) -> None:
    """No other node may run it: the owner (e.g. a federated round) decides, without waiting on retries."""
    e = env(backoff_s=0.2, max_attempts=5)
    a = e.launch(Faults("crash"))
    e.launch()
    job = e.sched.submit(dataclasses.replace(rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True), node=a))
    assert e.sched.run() == {"failed": 1}
    assert e.sched.stats["sent"] == 1 and "crashed" in e.sched.journal.job(job).error


def test_the_time_budget_ends_a_job(env) -> None:
    e = env(backoff_s=0.2, max_attempts=50, job_budget_s=0.5)
    e.launch(Faults("crash"))
    job = e.sched.submit(rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True))
    assert e.sched.run(timeout_s=20) == {"failed": 1}
    assert 2 <= e.sched.stats["sent"] <= 4  # 0, 0.2, 0.6 s: the budget ends it long before 50 attempts
    assert "budget" in e.sched.journal.job(job).error


def test_a_job_whose_only_nodes_are_stale_fails_after_its_time_budget(env) -> None:
    e = env(job_budget_s=0.4, live=lambda a: False)  # no node has beaten recently
    nodes = [e.launch(), e.launch()]
    job = e.sched.submit(rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True))
    t0 = time.monotonic()
    assert e.sched.run(timeout_s=20) == {"failed": 1}  # not left waiting until the run's timeout
    took = time.monotonic() - t0
    assert 0.4 <= took < 5.0, took
    error = e.sched.journal.job(job).error
    assert "stale" in error and "0.4 s" in error
    assert all(a in error for a in nodes)  # names the nodes it waited for
    assert e.sched.stats["sent"] == 0


def test_a_stale_node_that_beats_again_within_the_budget_runs_the_job(env) -> None:
    beat = threading.Event()
    e = env(job_budget_s=5.0, live=lambda a: beat.is_set())
    e.launch()
    threading.Timer(0.3, beat.set).start()
    job = e.sched.submit(rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True))
    assert e.sched.run(timeout_s=20) == {"done": 1}
    assert e.sched.journal.job(job).status == "done"


def test_backoff_rides_out_a_short_outage_of_the_only_node(env) -> None:
    e = env(backoff_s=0.2, max_attempts=6)
    a = e.launch(Faults("crash"))
    threading.Timer(0.3, lambda: setattr(e.node(a), "faults", None)).start()  # the outage ends
    model, x = small_model(), np.ones((2, 4))
    job = e.sched.submit(rt.Task.plain(model, x, allow_plaintext=True))
    assert e.sched.run(timeout_s=30) == {"done": 1}
    assert e.sched.stats["node_errors"] >= 1
    np.testing.assert_allclose(rt.array_from_bytes(e.sched.result(job)), model.forward(x), rtol=1e-12)


def test_failed_jobs_are_retried_by_id_after_an_outage(env) -> None:
    e = env(backoff_s=0.05, max_attempts=2)
    nodes = [e.launch(Faults("crash")) for _ in range(2)]
    model = small_model()
    xs = [np.full((1, 4), float(i)) for i in range(3)]
    jobs = e.sched.submit_many([rt.Task.plain(model, x, allow_plaintext=True) for x in xs])
    assert e.sched.run() == {"failed": 3}
    with pytest.raises(RuntimeTaskError, match="crashed"):
        e.sched.result(jobs[0])
    for a in nodes:  # the outage is over
        e.node(a).faults = None
    assert e.sched.retry(jobs[0]) is True
    assert e.sched.retry(jobs[0]) is False  # already pending
    assert e.sched.retry_failed() == jobs[1:]
    assert e.sched.journal.counts() == {"pending": 3}
    assert e.sched.run(timeout_s=30) == {"done": 3}
    for j, x in zip(jobs, xs):
        np.testing.assert_allclose(rt.array_from_bytes(e.sched.result(j)), model.forward(x), rtol=1e-12)
    assert e.sched.retry(jobs[0]) is False  # a finished job is never re-run
    with pytest.raises(ParameterError, match="unknown job"):
        e.sched.retry(b"\x09" * 32)


def test_every_node_call_has_a_bounded_default_timeout(env) -> None:
    assert 0 < env().sched.timeout_s <= 10


# --- the journal file ----------------------------------------------------------------------------------
def test_journal_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0)  # a permissive umask: the mode must not depend on it
    try:
        j = rt.Journal(tmp_path / "jobs.sqlite")
        j.add(b"\x01" * 32, "task", b"spec")
        files = [tmp_path / n for n in ("jobs.sqlite", "jobs.sqlite-wal", "jobs.sqlite-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
        j.close()
    finally:
        os.umask(old)


class _NumberForOutput(rt.EdgeNode):
    """A byzantine node whose signed, sealed result names a number where the output bytes go."""

    def _reply(self, kind: str, body: object) -> bytes:
        if kind == "result":
            body = {**body, "output": 200_000_000}  # type: ignore[dict-item]
        return super()._reply(kind, body)


def test_a_reply_with_a_number_for_its_output_is_a_bad_reply_and_allocates_nothing(env) -> None:
    """``bytes(n)`` of a number is n zero bytes: the scheduler refuses the field instead, counts a
    bad reply against the node, and the job completes on an honest node."""
    import tracemalloc

    first: list[str] = []
    e = env(availability=lambda a: 1.0 if a in first else 0.5)  # the liar is asked first
    liar = e.add(_NumberForOutput)
    first.append(liar)
    e.launch()
    model = linear()
    x = np.random.default_rng(3).normal(size=(3, 4))
    tracemalloc.start()
    try:
        job = e.sched.submit(rt.Task.plain(model, x, allow_plaintext=True))
        e.sched.run(timeout_s=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(rt.array_from_bytes(e.sched.result(job)), model.forward(x))
    assert e.sched.stats["bad_replies"] >= 1 and peak < 50_000_000
    assert liar not in e.sched.journal.result(job).nodes
