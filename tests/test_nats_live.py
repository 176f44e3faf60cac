"""The live path of :class:`~edil.runtime.NatsExecutor`: core NATS carries tasks and replies at once,
JetStream keeps them, and whatever is missed live is taken from the streams, once.

The tests share one node daemon on a loopback nats-server (see ``test_runtime_nats.py`` for the
process and server faults, which the same code paths recover from); each leaves both streams empty.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from edil import runtime as rt
from edil.proofs import Eip712Domain
from edil.runtime import _nats
from tests.test_runtime_conformance import fresh_seed, small_model

DOMAIN = Eip712Domain("EDIL PoAI", "1", 1337, "0x" + "11" * 20)


@pytest.fixture(scope="module")
def net():
    with rt.NatsServer() as server:
        ex = rt.NatsExecutor(server.url)
        registry = rt.StaticRegistry()
        sched = rt.Scheduler(ex, registry, rt.Journal(":memory:"), identity=rt.CoordinatorIdentity.generate(), domain=DOMAIN, timeout_s=60.0)
        cfg = rt.NodeConfig(seed=fresh_seed(), capabilities=rt.Capabilities((), 1 << 30))
        registry.admit(rt.NodeIdentity.from_seed(cfg.seed).address)
        sched.launch(cfg)
        try:
            yield server.url, sched, ex
        finally:
            ex.close()


def _stream_messages(url: str) -> tuple[int, int]:
    """Messages left in the task and result streams (work queues: what is acknowledged is gone)."""
    import nats

    async def count() -> tuple[int, int]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            tasks = await js.stream_info(_nats.TASK_STREAM)
            results = await js.stream_info(_nats.RESULT_STREAM)
            return tasks.state.messages, results.state.messages
        finally:
            await nc.close()

    return asyncio.run(count())


def _run_jobs(sched: rt.Scheduler, n: int) -> None:
    """``n`` jobs, each recorded once with the right result; no node error, no timeout, no stale reply."""
    before, stale = len(sched.results()), sched.executor.stale_replies  # type: ignore[attr-defined]
    model, rng = small_model(), np.random.default_rng(n)
    xs = [rng.normal(size=(2, 4)) for _ in range(n)]
    jobs = sched.submit_many([rt.Task.plain(model, x, allow_plaintext=True) for x in xs])
    assert sched.run(timeout_s=120) == {"done": before + n}
    for j, x in zip(jobs, xs):
        np.testing.assert_allclose(rt.array_from_bytes(sched.result(j)), model.forward(x), rtol=1e-12, atol=1e-12)
    assert len(sched.results()) == before + n and len({r.job_id for r in sched.results()}) == before + n  # one record per job
    assert sched.stats["node_errors"] == 0 and sched.stats["timeouts"] == 0
    assert sched.executor.stale_replies == stale  # type: ignore[attr-defined] - a stored copy of a reply heard live is not stale


def _wait_streams_empty(url: str, timeout_s: float = 20.0) -> None:
    """The stored copies of what went live are acknowledged by the sweeps (bound: a few SWEEP_S)."""
    deadline = time.monotonic() + timeout_s
    while (left := _stream_messages(url)) != (0, 0):
        assert time.monotonic() < deadline, f"stored copies left unacknowledged (tasks, replies): {left}"
        time.sleep(0.2)


def test_live_tasks_are_answered_once_and_their_stored_copies_acknowledged(net) -> None:
    url, sched, _ = net
    delivered: list[bool] = []
    deliver = rt.NatsExecutor._deliver

    def spy(self, subject, headers, data, *, live):  # noqa: ANN001, ANN202 - records which path each reply took
        entry = self._pending.get(headers.get(_nats.TASK_HEADER, ""))
        if entry is not None and entry.reply is None and not headers.get(_nats.ERROR_HEADER):
            delivered.append(live)  # the copy that counts
        return deliver(self, subject, headers, data, live=live)

    rt.NatsExecutor._deliver = spy  # type: ignore[method-assign]
    try:
        _run_jobs(sched, 6)
    finally:
        rt.NatsExecutor._deliver = deliver  # type: ignore[method-assign]
    assert len(delivered) == 6 and delivered.count(True) >= 1  # replies are heard live (the stream's copy may win on a loaded machine)
    _wait_streams_empty(url)


def test_what_is_missed_live_is_taken_from_the_streams_once(net, monkeypatch) -> None:
    """No live task reaches the node and no live reply reaches the coordinator: both sweeps carry everything."""
    url, sched, _ = net
    monkeypatch.setattr(_nats, "node_subject", lambda address, kind: f"edil.nowhere.{address.lower()}.{kind}")  # coordinator side only
    deliver = rt.NatsExecutor._deliver
    monkeypatch.setattr(rt.NatsExecutor, "_deliver", lambda self, s, h, d, *, live: False if live else deliver(self, s, h, d, live=live))
    _run_jobs(sched, 4)
    _wait_streams_empty(url)


def test_a_task_too_large_to_go_live_goes_through_the_stream_only(net, monkeypatch) -> None:
    """Above LIVE_TASK_MAX the task's bytes cross the bus once: stored, then a notice (no body) tells the node to take it."""
    url, sched, _ = net
    monkeypatch.setattr(_nats, "LIVE_TASK_MAX", 0)
    _run_jobs(sched, 3)
    _wait_streams_empty(url)


def test_on_a_guarded_bus_tasks_reach_a_node_live_on_its_own_subject() -> None:
    """A node that sweeps its durable consumer only at start-up still answers at once: its tasks come
    live on ``edil.node.<address>.task``, which the bus lets it (and only it) hear; their stored
    copies wait in the stream for its next sweep."""
    import nats

    ident = rt.CoordinatorIdentity.generate()
    registry = rt.StaticRegistry()
    server = rt.NatsServer()
    admission = rt.BusAdmission(server, registry, ident.verify_key)
    admission.sync()
    server.start()
    ex = rt.NatsExecutor(server.url, identity=ident)
    sched = rt.Scheduler(ex, registry, rt.Journal(":memory:"), identity=ident, domain=DOMAIN, timeout_s=60.0)
    identity = rt.NodeIdentity.from_seed(fresh_seed())
    node = rt.EdgeNode(identity, coordinator_key=ident.verify_key, coordinator_box_key=ident.box_key, domain=DOMAIN, capabilities=rt.Capabilities())
    admission.add_card(node.card)
    registry.admit(node.address)
    admission.sync()
    loop, stop, ready = asyncio.new_event_loop(), asyncio.Event(), threading.Event()
    daemon = threading.Thread(
        target=loop.run_until_complete,
        args=(_nats.serve_node(node, server.url, coordinator=sched.coordinator_keys, ready=lambda _: ready.set(), stop=stop, sweep_s=3600.0),),
        daemon=True,
    )
    daemon.start()
    try:
        assert ready.wait(60)
        time.sleep(0.5)  # past its start-up sweep (a 20 ms pull), after which it sweeps again only in an hour
        sched.add_node(ex.attach(node.address, coordinator=sched.coordinator_keys))

        async def stored() -> int:
            nc = await nats.connect(server.url, nkeys_seed_str=_nats.nkey_seed(bytes(ident.signing)))
            try:
                return (await nc.jetstream().stream_info(_nats.TASK_STREAM)).state.messages
            finally:
                await nc.close()

        _run_jobs(sched, 3)
        assert asyncio.run(stored()) == 3  # answered, yet never taken from the stream
    finally:
        loop.call_soon_threadsafe(stop.set)
        daemon.join(60)
        ex.close()
        server.stop()
