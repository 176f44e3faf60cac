"""An in-process node signs heartbeats at its own clock's time, not at a time a caller names.

The NATS daemon refuses a requested time more than ``HEARTBEAT_REQUEST_SKEW_MS`` from its clock
(tests/test_nats_heartbeat_clock.py); :meth:`EdgeNode.heartbeat` keeps the same rule, so whoever may
ask an in-process node (an executor's ``heartbeat(address, now_ms)``) cannot collect heartbeats
signed for future times and replay them to the oracles while the node is down. ``dev_clock`` (on
the node, or on its :class:`NodeConfig`) keeps the old behaviour for development chains.
"""

from __future__ import annotations

import numpy as np
import pytest

from edil import AuthorizationError, ParameterError
from edil import runtime as rt
from edil.proofs import Eip712Domain
from edil.runtime._availability import parse_heartbeat
from edil.runtime._nats import HEARTBEAT_REQUEST_SKEW_MS as DAEMON_SKEW_MS
from edil.runtime._node import HEARTBEAT_REQUEST_SKEW_MS
from edil.runtime.testing import faulty

DOMAIN = Eip712Domain("EDIL PoAI", "1", 1337, "0x" + "11" * 20)
COORD = rt.CoordinatorIdentity.from_seed(b"node-clock-test-coordinator-seed")
KEYS = rt.CoordinatorKeys(COORD.verify_key, COORD.box_key, DOMAIN)
IDENT = rt.NodeIdentity.from_seed(b"node-clock-test-node-seed-000000")
T0_MS = 1_800_000_000_000  # the node's (fixed) clock
HOUR_MS = 3_600_000


def _node(*, dev_clock: bool = False) -> rt.EdgeNode:
    return rt.EdgeNode(
        IDENT, coordinator_key=KEYS.verify_key, coordinator_box_key=KEYS.box_key, domain=DOMAIN,
        capabilities=rt.Capabilities(), clock=lambda: T0_MS / 1000, dev_clock=dev_clock,
    )


def _monitor() -> rt.HeartbeatMonitor:
    """The oracles' heartbeat check (registry, signature, sequence, freshness at receipt)."""
    mon = rt.HeartbeatMonitor(rt.StaticRegistry([IDENT.address]), epoch_ms=60_000, interval_ms=10_000, genesis_ms=0)
    mon.add_card(IDENT.card(rt.Capabilities()))
    return mon


def test_the_node_and_the_daemon_share_one_skew() -> None:
    assert DAEMON_SKEW_MS is HEARTBEAT_REQUEST_SKEW_MS and HEARTBEAT_REQUEST_SKEW_MS == 5_000


def test_a_node_refuses_a_heartbeat_an_hour_ahead_and_stamps_its_own_time_on_a_near_request() -> None:
    node = _node()
    with pytest.raises(AuthorizationError, match="more than 5000 ms from this node's clock"):
        node.heartbeat(now_ms=T0_MS + HOUR_MS)
    with pytest.raises(AuthorizationError):  # far in the past too
        node.heartbeat(now_ms=T0_MS - HOUR_MS)
    with pytest.raises(AuthorizationError):  # just past the bound
        node.heartbeat(now_ms=T0_MS + HEARTBEAT_REQUEST_SKEW_MS + 1)
    own = node.heartbeat()
    near = node.heartbeat(now_ms=T0_MS + 1_000)  # a second ahead: answered, at the node's own time
    edge = node.heartbeat(now_ms=T0_MS - HEARTBEAT_REQUEST_SKEW_MS)  # the bound itself is within
    got = [parse_heartbeat(hb) for hb in (own, near, edge)]
    assert [h.timestamp_ms for h in got] == [T0_MS] * 3
    assert [h.seq for h in got] == [T0_MS, T0_MS + 1, T0_MS + 2] and all(h.node == IDENT.address for h in got)
    # What the node signed cannot be passed off an hour later: the oracles refuse it as stale.
    mon = _monitor()
    assert not mon.receive(near, now_ms=T0_MS + HOUR_MS) and mon.rejected["stale"] == 1
    assert _monitor().receive(near, now_ms=T0_MS)  # it is a good heartbeat at its own time


@pytest.mark.parametrize("bad", [float(T0_MS), str(T0_MS), True, "soon"])
def test_a_requested_time_that_is_not_an_int_is_a_parameter_error(bad: object) -> None:
    for node in (_node(), _node(dev_clock=True)):
        with pytest.raises(ParameterError, match="now_ms must be an int"):
            node.heartbeat(now_ms=bad)


def test_a_numpy_int_is_a_requested_time() -> None:
    assert parse_heartbeat(_node().heartbeat(now_ms=np.int64(T0_MS + 10))).timestamp_ms == T0_MS


def test_the_development_clock_signs_the_requested_time() -> None:
    """``dev_clock`` is exactly the replay the default stops: a heartbeat pre-signed for an hour ahead
    is not fresh now, and the oracles accept it once that hour comes, node up or not."""
    ahead = _node(dev_clock=True).heartbeat(now_ms=T0_MS + HOUR_MS)
    assert parse_heartbeat(ahead).timestamp_ms == T0_MS + HOUR_MS
    assert not _monitor().receive(ahead, now_ms=T0_MS)
    assert _monitor().receive(ahead, now_ms=T0_MS + HOUR_MS)
    truthy = rt.EdgeNode(IDENT, coordinator_key=KEYS.verify_key, coordinator_box_key=KEYS.box_key, domain=DOMAIN,
                         capabilities=rt.Capabilities(), clock=lambda: T0_MS / 1000, dev_clock=1)
    assert _node().dev_clock is False and truthy.dev_clock is False  # only an explicit True opts in
    with pytest.raises(AuthorizationError):
        truthy.heartbeat(now_ms=T0_MS + HOUR_MS)


def test_an_executor_forwards_the_request_and_the_node_config_opts_in() -> None:
    """``LocalExecutor.heartbeat(address, now_ms)`` reaches the node's check; ``NodeConfig(dev_clock=True)``
    (also through a ``node_factory``, as :func:`faulty` builds) is the opt-in a development chain's pump uses."""
    ex = rt.LocalExecutor(clock=lambda: T0_MS / 1000)
    try:
        plain = ex.launch(rt.NodeConfig(seed=b"\x01" * 32, capabilities=rt.Capabilities()), KEYS)
        dev = ex.launch(rt.NodeConfig(seed=b"\x02" * 32, capabilities=rt.Capabilities(), dev_clock=True), KEYS)
        dev_faulty = ex.launch(faulty(rt.NodeConfig(seed=b"\x03" * 32, capabilities=rt.Capabilities(), dev_clock=True), None), KEYS)
        with pytest.raises(AuthorizationError):
            ex.heartbeat(plain.address, now_ms=T0_MS + HOUR_MS)
        assert parse_heartbeat(ex.heartbeat(plain.address, now_ms=T0_MS + 1_000)).timestamp_ms == T0_MS
        for card in (dev, dev_faulty):
            assert parse_heartbeat(ex.heartbeat(card.address, now_ms=T0_MS + HOUR_MS)).timestamp_ms == T0_MS + HOUR_MS
    finally:
        ex.close()


def test_a_daemon_asked_for_dev_clock_refuses_a_node_built_without_it_before_connecting() -> None:
    """``serve_node(dev_clock=True)`` of a node without ``dev_clock`` would be refused heartbeat by heartbeat: say so at once."""
    import asyncio

    with pytest.raises(ParameterError, match="dev_clock"):
        asyncio.run(rt.serve_node(_node(), "nats://127.0.0.1:1", coordinator=KEYS, dev_clock=True, connect_wait_s=0.1))
