"""A node daemon runs a provably small plain task on its event loop (no hop to its worker thread)
and everything else (a task over the work bound, a session message, a task carrying inputs by CID,
a node with a session open, a subclass whose hooks may wait) on its worker thread, with the same
replies, checks and once-per-task handling.

Each test serves an in-process node whose ``_reply`` records the thread that seals each reply: the
loop's thread is named ``LOOP``, the worker's ``edil-node-...``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from edil import VerificationError
from edil import runtime as rt
from edil.models import Dense, Polynomial, Sequential
from edil.proofs import Eip712Domain
from edil.runtime import _nats
from edil.runtime._replicated_session import PROTOCOL_VERSION
from edil.runtime._task import array_from_bytes
from edil.runtime.testing import Faults, FaultyNode
from tests.test_runtime_conformance import fresh_seed

DOMAIN = Eip712Domain("EDIL PoAI", "1", 1337, "0x" + "11" * 20)
LOOP = "edil-test-node-loop"


class _Probe:
    """Records ``(reply kind, thread name)`` for every reply the node seals."""

    seen: list[tuple[str, str]]

    def _reply(self, kind: str, body: Any) -> bytes:
        self.seen.append((kind, threading.current_thread().name))
        return super()._reply(kind, body)  # type: ignore[misc]


class ProbeNode(_Probe, rt.EdgeNode):
    pass


class ProbeFaultyNode(_Probe, FaultyNode):
    pass


class _Net:
    def __init__(self, url: str) -> None:
        self.url = url
        self.coord = rt.CoordinatorIdentity.generate()
        self.keys = rt.CoordinatorKeys(self.coord.verify_key, self.coord.box_key, DOMAIN)
        self.ex = rt.NatsExecutor(url)
        self.jobs = 0

    def serve(self, cls: type = ProbeNode, **kwargs: Any) -> tuple[Any, Any]:
        node = cls(rt.NodeIdentity.from_seed(fresh_seed()), coordinator_key=self.coord.verify_key,
                   coordinator_box_key=self.coord.box_key, domain=DOMAIN, capabilities=rt.Capabilities(), **kwargs)
        node.seen = []
        loop, stop, ready = asyncio.new_event_loop(), asyncio.Event(), threading.Event()
        daemon = threading.Thread(
            target=loop.run_until_complete, name=LOOP, daemon=True,
            args=(_nats.serve_node(node, self.url, coordinator=self.keys, ready=lambda _: ready.set(), stop=stop, heartbeat_s=3600.0),),
        )
        daemon.start()
        assert ready.wait(60)
        card = self.ex.attach(node.address, coordinator=self.keys)

        def close() -> None:
            loop.call_soon_threadsafe(stop.set)
            daemon.join(60)

        return node, (card, close)

    def envelope(self, card: Any, kind: str, body: dict[str, Any]) -> bytes:
        return rt.seal_envelope(kind, body, signing_key=self.coord.signing, recipient_box_key=card.box_key,
                                nonce=os.urandom(16), now_ms=int(time.time() * 1000))

    def task(self, card: Any, task: rt.Task) -> bytes:
        self.jobs += 1
        return self.envelope(card, "task", {"job_id": self.jobs.to_bytes(32, "big"), "epoch": 0, "task": task.to_wire()})

    def reply(self, node: Any, data: bytes) -> tuple[str, Any]:
        msg = rt.open_envelope(data, box_key=self.coord.box, trusted=(node.card.signing_key,), guard=rt.ReplayGuard(120_000),
                               now_ms=int(time.time() * 1000))
        return msg.kind, msg.body


@pytest.fixture(scope="module")
def net() -> Iterator[_Net]:
    with rt.NatsServer() as server:
        n = _Net(server.url)
        try:
            yield n
        finally:
            n.ex.close()


def _small() -> Sequential:
    rng = np.random.default_rng(0)
    return Sequential((Dense(rng.normal(size=(4, 3)), rng.normal(size=3)), Polynomial((0.1, 0.5, 0.2)), Dense(rng.normal(size=(3, 2)), rng.normal(size=2))))


def _heavy() -> Sequential:
    """Under ``INLINE_ENVELOPE_MAX`` with 300 rows, yet over ``INLINE_WORK_MAX``: a degree-400 polynomial on 64 features."""
    rng = np.random.default_rng(1)
    coeffs = tuple(float(c) for c in rng.normal(size=401) * 1e-3)
    return Sequential((Dense(rng.normal(size=(4, 64)) * 0.1, np.zeros(64)), Polynomial(coeffs), Dense(rng.normal(size=(64, 2)), np.zeros(2))))


def _output(net: _Net, node: Any, reply: bytes) -> np.ndarray:
    kind, body = net.reply(node, reply)
    assert kind == "result", body
    return array_from_bytes(body["output"])


def test_small_plain_task_runs_on_the_loop_with_the_worker_s_result(net: _Net) -> None:
    model, x = _small(), np.random.default_rng(2).normal(size=(3, 4))
    task = rt.Task.plain(model, x, allow_plaintext=True)
    assert task.work_units <= _nats.INLINE_WORK_MAX
    node, (card, close) = net.serve()
    hooked, (hcard, hclose) = net.serve(ProbeFaultyNode, faults=None)  # a hook overridden: always the worker
    try:
        out = _output(net, node, net.ex.submit(card.address, net.task(card, task)).result(30))
        assert node.seen == [("result", LOOP)]
        ref = _output(net, hooked, net.ex.submit(hcard.address, net.task(hcard, task)).result(30))
        assert hooked.seen and hooked.seen[0][1].startswith("edil-node-")
        np.testing.assert_array_equal(out, ref)  # the same runner on the same bytes: bit for bit
        np.testing.assert_allclose(out, model.forward(x), rtol=1e-12, atol=1e-12)
        assert node.completed == 1 and node.rejected == 0 and node.busy_s > 0
    finally:
        close()
        hclose()


def test_tasks_over_the_bound_with_a_cid_or_in_a_session_go_to_the_worker(net: _Net) -> None:
    node, (card, close) = net.serve()
    try:
        heavy, x = _heavy(), np.random.default_rng(3).normal(size=(300, 4)) * 0.1
        task = rt.Task.plain(heavy, x, allow_plaintext=True)
        env = net.task(card, task)
        assert len(env) <= _nats.INLINE_ENVELOPE_MAX and task.work_units > _nats.INLINE_WORK_MAX
        out = _output(net, node, net.ex.submit(card.address, env).result(60))
        np.testing.assert_allclose(out, heavy.forward(x), rtol=1e-9, atol=1e-9)
        assert node.seen[-1][1].startswith("edil-node-")

        small = rt.Task.plain(_small(), np.ones((2, 4)), allow_plaintext=True)
        by_cid = rt.Task(**{**small.__dict__, "input_cid": "b" + "a" * 60})
        kind, body = net.reply(node, net.ex.submit(card.address, net.task(card, by_cid)).result(30))
        assert kind == "error" and "R1FS" in body["message"]
        assert node.seen[-1] == ("error", node.seen[-1][1]) and node.seen[-1][1].startswith("edil-node-")

        sid = os.urandom(16)
        hello = net.envelope(card, "rep_hello", {"session": sid, "party": 0, "version": PROTOCOL_VERSION})
        kind, _ = net.reply(node, net.ex.submit(card.address, hello).result(30))
        assert kind == "rep_hello" and node.seen[-1][1].startswith("edil-node-")
        _output(net, node, net.ex.submit(card.address, net.task(card, small)).result(30))
        assert node.seen[-1] == ("result", node.seen[-1][1]) and node.seen[-1][1].startswith("edil-node-")  # a session is open
        kind, _ = net.reply(node, net.ex.submit(card.address, net.envelope(card, "rep_end", {"session": sid})).result(30))
        assert kind == "rep_ended"
        _output(net, node, net.ex.submit(card.address, net.task(card, small)).result(30))
        assert node.seen[-1] == ("result", LOOP)  # the session is over: small tasks run on the loop again
    finally:
        close()


def test_heartbeats_answer_while_a_long_task_runs(net: _Net) -> None:
    node, (card, close) = net.serve(ProbeFaultyNode, faults=Faults(mode="hang", hang_s=3.0))
    try:
        small = rt.Task.plain(_small(), np.ones((1, 4)), allow_plaintext=True)
        started = time.monotonic()
        pending = net.ex.submit(card.address, net.task(card, small))
        time.sleep(0.3)
        for _ in range(3):
            t0 = time.monotonic()
            net.ex.heartbeat(card.address, timeout_s=2.0)
            assert time.monotonic() - t0 < 1.0
        assert not pending.done() and time.monotonic() - started < 3.0  # the task still computes
        _output(net, node, pending.result(30))
        assert node.seen == [("result", node.seen[0][1])] and node.seen[0][1].startswith("edil-node-")
    finally:
        close()


def test_a_forged_envelope_is_refused_once_on_either_path(net: _Net) -> None:
    node, (card, close) = net.serve()
    try:
        forger = rt.CoordinatorIdentity.generate()
        env = rt.seal_envelope("task", {"job_id": b"\0" * 32, "epoch": 0, "task": rt.Task.plain(_small(), np.ones((1, 4)), allow_plaintext=True).to_wire()},
                               signing_key=forger.signing, recipient_box_key=card.box_key, nonce=os.urandom(16), now_ms=int(time.time() * 1000))
        with pytest.raises(Exception, match="Verification|signature|trusted"):
            net.ex.submit(card.address, env).result(30)
        assert node.rejected == 1 and node.completed == 0 and node.seen == []
        with pytest.raises(VerificationError):
            node.handle(env)
    finally:
        close()
