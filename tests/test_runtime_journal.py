"""The durable journal: exactly-once results and coordinator restarts (in process and SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from edil import runtime as rt
from tests.test_runtime_conformance import DOMAIN, small_model

COORD_SEED = b"coordinator-seed" * 2
NODE_SEEDS = [bytes([i + 1]) * 32 for i in range(2)]


def _scheduler(path: Path, nodes_done: list[rt.EdgeNode] | None = None) -> rt.Scheduler:
    ex = rt.LocalExecutor()
    reg = rt.StaticRegistry(rt.NodeIdentity.from_seed(s).address for s in NODE_SEEDS)
    sched = rt.Scheduler(ex, reg, rt.Journal(path), identity=rt.CoordinatorIdentity.from_seed(COORD_SEED), domain=DOMAIN, timeout_s=10)
    for s in NODE_SEEDS:
        sched.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()))
    if nodes_done is not None:
        nodes_done.extend(ex.node(a) for a in sched.nodes)
    return sched


def test_complete_records_once(tmp_path: Path) -> None:
    j = rt.Journal(tmp_path / "j.sqlite")
    jid = b"\x01" * 32
    assert j.add(jid, "task", b"spec") and not j.add(jid, "task", b"spec")
    kw = dict(output=b"out", output_commitment=b"\x02" * 32, nodes=["0xabc"], epoch=0, transcripts=[("0xabc", b"t", True)])
    assert j.complete(jid, **kw) is True
    assert j.complete(jid, **kw) is False
    assert len(j.results()) == 1 and j.pending() == [] and j.counts() == {"done": 1}
    j.close()
    j2 = rt.Journal(tmp_path / "j.sqlite")  # reopened: the same state
    assert j2.result(jid).output == b"out" and j2.transcripts("0xabc", 0) == [(jid, b"t", True)]


def test_restart_resumes_pending_and_never_reruns_finished(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    model = small_model()
    xs = [np.full((1, 4), float(i)) for i in range(12)]
    first_nodes: list[rt.EdgeNode] = []
    s1 = _scheduler(path, first_nodes)
    jobs = s1.submit_many([rt.Task.plain(model, x, allow_plaintext=True) for x in xs])
    # a coordinator that stops after a few completions (then is dropped without cleanup)
    orig = s1.journal.complete
    calls = {"n": 0}

    def complete_then_die(*a, **k):  # noqa: ANN002, ANN003
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt  # the coordinator dies between a node's reply and the journal write
        return orig(*a, **k)

    s1.journal.complete = complete_then_die  # type: ignore[method-assign]
    try:
        s1.run()
    except KeyboardInterrupt:
        pass
    s1.executor.close()
    assert rt.Journal(path).counts() == {"done": 5, "pending": 7}
    before = {r.job_id: r for r in rt.Journal(path).results()}

    second_nodes: list[rt.EdgeNode] = []
    s2 = _scheduler(path, second_nodes)
    assert s2.run() == {"done": 12}
    results = s2.results()
    assert len(results) == 12 and len({r.job_id for r in results}) == 12
    assert sum(n.completed for n in second_nodes) == 7  # finished jobs were not re-run
    for r in results:
        if r.job_id in before:
            assert r == before[r.job_id]
    for j, x in zip(jobs, xs):
        np.testing.assert_allclose(rt.array_from_bytes(s2.result(j)), model.forward(x))


CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, {root!r})
    from tests.test_runtime_journal import _scheduler
    from tests.test_runtime_conformance import small_model
    from edil import runtime as rt
    s = _scheduler({path!r})
    m = small_model()
    s.submit_many([rt.Task.plain(m, np.full((1, 4), float(i)), allow_plaintext=True) for i in range({n})],
                  job_ids=[f"job-{{i}}" for i in range({n})])
    print("submitted", flush=True)
    s.run()
    """
)


def test_sigkilled_coordinator_resumes_from_journal(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    n = 400
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(root=root, path=str(path), n=n)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "submitted"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = rt.Journal(path).counts().get("done", 0)
            if done >= 10:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    counts = rt.Journal(path).counts()
    done_at_kill = counts.get("done", 0)
    assert 10 <= done_at_kill < n, counts
    before = {r.job_id: r for r in rt.Journal(path).results()}

    nodes: list[rt.EdgeNode] = []
    s2 = _scheduler(path, nodes)
    assert s2.run() == {"done": n}
    results = s2.results()
    assert len(results) == n and len({r.job_id for r in results}) == n
    assert sum(nd.completed for nd in nodes) == n - done_at_kill
    assert all(before[r.job_id] == r for r in results if r.job_id in before)
    m = small_model()
    for i in (0, n - 1):
        np.testing.assert_allclose(rt.array_from_bytes(s2.result(f"job-{i}")), m.forward(np.full((1, 4), float(i))))
