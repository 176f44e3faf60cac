"""Epoch configuration and the heartbeat pump: every node's heartbeat in every slot, to every oracle.

The Proof-of-Availability monitors count one heartbeat per node per slot of ``heartbeat_s``
seconds within an epoch of ``epoch_length_s`` seconds. :func:`make_oracles` builds the oracles
for one deployment and :func:`beat_through_epoch` delivers a whole epoch's heartbeats, stamped
with the chain's clock (development chains move it on demand, so an epoch takes seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._availability import AvailabilityOracle, HeartbeatMonitor
from ._registry import ChainRegistry

__all__ = ["EPOCH_LENGTH_S", "HEARTBEAT_S", "beat_through_epoch", "make_oracles"]

#: Default epoch length (seconds of chain time) for a deployment the runtime closes itself.
EPOCH_LENGTH_S = 600
#: Default heartbeat slot (seconds): an epoch of ``EPOCH_LENGTH_S`` has ``EPOCH_LENGTH_S // HEARTBEAT_S`` slots.
HEARTBEAT_S = 60


def make_oracles(
    deployment: Any, keys: Sequence[Any], cards: Sequence[Any], *, registry_ttl_s: float = 0.0,
    epoch_length_s: int = EPOCH_LENGTH_S, heartbeat_s: int = HEARTBEAT_S,
) -> list[AvailabilityOracle]:
    """One :class:`AvailabilityOracle` per oracle key, each with its own monitor that knows ``cards``.

    Args:
        deployment: the chain deployment (its registry admits nodes; its genesis anchors epochs).
        keys: the oracles' private keys.
        cards: the nodes' public cards.
        registry_ttl_s: how long each monitor may reuse the on-chain registry view.
        epoch_length_s: the deployment's epoch length in seconds.
        heartbeat_s: the heartbeat slot in seconds.

    Returns:
        The oracles, in the order of ``keys``.
    """
    oracles = []
    for key in keys:
        mon = HeartbeatMonitor(
            ChainRegistry(deployment, ttl_s=registry_ttl_s), epoch_ms=epoch_length_s * 1000, interval_ms=heartbeat_s * 1000,
            genesis_ms=deployment.genesis_time * 1000,
        )
        for c in cards:
            mon.add_card(c)
        oracles.append(AvailabilityOracle(key, mon))
    return oracles


def beat_through_epoch(
    executor: Any, cards: Sequence[Any], oracles: Sequence[AvailabilityOracle], deployment: Any, epoch: int,
    *, offline: Callable[[int, int], bool] = lambda node, slot: False,
    extra: Callable[[int, int, bytes], list[bytes]] = lambda slot, t, last: [],
    epoch_length_s: int = EPOCH_LENGTH_S, heartbeat_s: int = HEARTBEAT_S,
) -> None:
    """Every node's heartbeat in every slot of ``epoch`` to every oracle, stamped with the chain's clock.

    Args:
        executor: hosts the nodes; ``executor.heartbeat(address, now_ms=t)`` returns a signed heartbeat.
        cards: the nodes' public cards.
        oracles: the oracles whose monitors receive the heartbeats.
        deployment: the chain deployment (its genesis anchors the epoch).
        epoch: the epoch to fill.
        offline: ``offline(node_index, slot)`` skips that heartbeat (a scripted outage).
        extra: more heartbeats to deliver in a slot (e.g. forged ones), given the slot, its time
            and the last genuine heartbeat.
        epoch_length_s: the deployment's epoch length in seconds.
        heartbeat_s: the heartbeat slot in seconds.
    """
    start_ms = (deployment.genesis_time + epoch * epoch_length_s) * 1000
    for slot in range(epoch_length_s // heartbeat_s):
        # Half a second into the slot: clear of both slot boundaries, so clock rounding cannot shift it.
        t = start_ms + slot * heartbeat_s * 1000 + 500
        hb = b""
        for k, c in enumerate(cards):
            if offline(k, slot):
                continue
            hb = executor.heartbeat(c.address, now_ms=t)
            for o in oracles:
                o.monitor.receive(hb, now_ms=t)
        for data in extra(slot, t, hb):
            for o in oracles:
                o.monitor.receive(data, now_ms=t)
