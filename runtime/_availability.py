"""Proof-of-Availability: signed heartbeats, per-epoch availability (uint8), oracle agreement.

A node signs ``(address, seq, timestamp)`` heartbeats with its Ed25519 key every
``interval_ms``. Each oracle runs a :class:`HeartbeatMonitor` that keeps only heartbeats that

* are signed by the Ed25519 key of a node card the oracle accepted (card bound to the address
  by the chain key, address admitted by the registry);
* carry a sequence number not seen before from that node (replays are dropped);
* are fresh: the timestamp is within ``max_skew_ms`` of the oracle's clock (no back-filling).

Everything else is ignored and *counted* in :attr:`HeartbeatMonitor.rejected`. A node's
availability in an epoch is ``round(255 * slots_with_a_heartbeat / slots_per_epoch)``, with
``slots_per_epoch = epoch_ms / interval_ms``. Oracles agree on the median of their values
(:func:`agree`), each signs the agreed value, and the node submits the claim with a quorum of
signatures to the availability ledger.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

import nacl.exceptions
import nacl.signing

from edil import SerializationError

from . import _wire
from ._identity import NodeCard, NodeIdentity

__all__ = ["AvailabilityOracle", "ChainRegistry", "settle_availability", "Heartbeat", "HeartbeatMonitor", "Registry", "agree", "make_heartbeat", "parse_heartbeat"]

_HB_TAG = "EDIL/heartbeat/v1"


class Registry(Protocol):
    """The dAuth view the runtime needs: is this chain address admitted right now?"""

    def is_admitted(self, address: str) -> bool: ...


class Heartbeat:
    """A parsed (not yet verified) heartbeat."""

    __slots__ = ("message", "node", "seq", "signature", "timestamp_ms")

    def __init__(self, node: str, seq: int, timestamp_ms: int, message: bytes, signature: bytes) -> None:
        self.node, self.seq, self.timestamp_ms, self.message, self.signature = node, seq, timestamp_ms, message, signature


def make_heartbeat(identity: NodeIdentity, *, seq: int, now_ms: int) -> bytes:
    """A heartbeat signed by ``identity``'s Ed25519 key: ``signature(64) || wire message``."""
    msg = _wire.dumps({"tag": _HB_TAG, "node": identity.address, "seq": int(seq), "ts": int(now_ms)})
    return bytes(identity.signing.sign(msg))


def parse_heartbeat(data: bytes) -> Heartbeat:
    """Parse heartbeat bytes. Raises :class:`~edil.SerializationError`."""
    if not isinstance(data, bytes | bytearray) or len(data) < 65:
        raise SerializationError("heartbeat is too short")
    data = bytes(data)
    d = _wire.loads(data[64:])
    try:
        if d["tag"] != _HB_TAG:
            raise SerializationError("not a heartbeat")
        return Heartbeat(str(d["node"]), int(d["seq"]), int(d["ts"]), data[64:], data[:64])
    except (KeyError, TypeError, ValueError):
        raise SerializationError("malformed heartbeat") from None


class HeartbeatMonitor:
    """One oracle's view of heartbeats (see the module docstring).

    Args:
        registry: dAuth registry; heartbeats from non-admitted addresses are ignored.
        epoch_ms: epoch length in milliseconds.
        interval_ms: heartbeat interval; ``epoch_ms`` must be a multiple of it.
        max_skew_ms: largest accepted distance between a heartbeat's time and the oracle clock.
        genesis_ms: start of epoch 0.
    """

    def __init__(
        self, registry: Registry, *, epoch_ms: int, interval_ms: int, max_skew_ms: int = 30_000, genesis_ms: int = 0
    ) -> None:
        if interval_ms <= 0 or epoch_ms <= 0 or epoch_ms % interval_ms:
            raise ValueError("epoch_ms must be a positive multiple of interval_ms")
        self.registry = registry
        self.epoch_ms, self.interval_ms, self.max_skew_ms, self.genesis_ms = epoch_ms, interval_ms, max_skew_ms, genesis_ms
        self._keys: dict[str, bytes] = {}
        self._seqs: dict[str, set[int]] = defaultdict(set)
        self._slots: dict[tuple[str, int], set[int]] = defaultdict(set)
        self.accepted = 0
        self.rejected: Counter[str] = Counter()

    @property
    def slots_per_epoch(self) -> int:
        return self.epoch_ms // self.interval_ms

    def epoch_of(self, timestamp_ms: int) -> int:
        return (timestamp_ms - self.genesis_ms) // self.epoch_ms

    def add_card(self, card: NodeCard) -> None:
        """Learn a node's Ed25519 key from its (verified) card."""
        card.verify()
        self._keys[card.address] = card.signing_key

    def receive(self, data: bytes, *, now_ms: int) -> bool:
        """Take one heartbeat; ``True`` if it counted. Never raises on bad input: it counts it."""
        try:
            hb = parse_heartbeat(data)
        except SerializationError:
            self.rejected["malformed"] += 1
            return False
        key = self._keys.get(hb.node)
        if key is None or not self.registry.is_admitted(hb.node):
            self.rejected["unregistered"] += 1
            return False
        try:
            nacl.signing.VerifyKey(key).verify(hb.message, hb.signature)
        except (nacl.exceptions.BadSignatureError, ValueError):
            self.rejected["bad_signature"] += 1
            return False
        if hb.seq in self._seqs[hb.node]:
            self.rejected["replayed"] += 1
            return False
        if abs(now_ms - hb.timestamp_ms) > self.max_skew_ms or hb.timestamp_ms < self.genesis_ms:
            self.rejected["stale"] += 1
            return False
        self._seqs[hb.node].add(hb.seq)
        offset = hb.timestamp_ms - self.genesis_ms
        self._slots[(hb.node, offset // self.epoch_ms)].add((offset % self.epoch_ms) // self.interval_ms)
        self.accepted += 1
        return True

    def recent(self, node: str, *, now_ms: int, window_ms: int | None = None) -> float:
        """Share of the heartbeat slots in the last ``window_ms`` (default: one epoch) with a
        heartbeat from ``node``: the scheduler's live availability signal (0 for unknown nodes)."""
        window = self.epoch_ms if window_ms is None else int(window_ms)
        if window < self.interval_ms:
            raise ValueError("window_ms must cover at least one heartbeat interval")
        end = (now_ms - self.genesis_ms) // self.interval_ms  # the current, still open slot
        slots = range(max(0, end - window // self.interval_ms), max(0, end))  # finished slots since genesis
        if not slots:
            return 1.0  # nothing to judge yet (the first slot of a deployment): no node is locked out
        seen = 0
        for g in slots:
            e, slot = divmod(g * self.interval_ms, self.epoch_ms)
            seen += (slot // self.interval_ms) in self._slots.get((node, e), ())
        return seen / len(slots)

    def availability(self, node: str, epoch: int) -> int:
        """Availability of ``node`` in ``epoch`` as a uint8 (255 = a heartbeat in every slot)."""
        seen = len(self._slots.get((node, epoch), ()))
        return min(255, round(255 * seen / self.slots_per_epoch))


def agree(values: Sequence[int]) -> int:
    """The oracles' agreed availability: the (low) median, robust to a minority of liars."""
    vals = [int(v) for v in values]
    if not vals or any(not 0 <= v <= 255 for v in vals):
        raise ValueError("agree needs uint8 availability values")
    return int(statistics.median_low(vals))




class ChainRegistry:
    """The on-chain NodeRegistry as a :class:`Registry` (dAuth through the real contract).

    Args:
        deployment: an ``edil.proofs.Deployment``.
        ttl_s: cache answers this long (0: ask the chain every time, revocation is immediate).
        clock: monotonic seconds for the cache.
    """

    def __init__(self, deployment: Any, *, ttl_s: float = 0.0, clock: Any = None) -> None:
        import time as _time

        self.deployment = deployment
        self.ttl_s = ttl_s
        self._clock = clock or _time.monotonic
        self._cache: dict[str, tuple[bool, float]] = {}

    def is_admitted(self, address: str) -> bool:
        now = self._clock()
        hit = self._cache.get(address)
        if hit is not None and now - hit[1] < self.ttl_s:
            return hit[0]
        ok = bool(self.deployment.is_node(address))
        self._cache[address] = (ok, now)
        return ok


class AvailabilityOracle:
    """An oracle: its chain key and its own :class:`HeartbeatMonitor`."""

    def __init__(self, key: Any, monitor: HeartbeatMonitor) -> None:
        self.key = key
        self.monitor = monitor

    def observe(self, node: str, epochs: Sequence[int]) -> list[int]:
        return [self.monitor.availability(node, e) for e in epochs]


def settle_availability(deployment: Any, node: Any, epochs: Sequence[int], oracles: Sequence[AvailabilityOracle]) -> list[int]:
    """Agree on ``node``'s availability (median over oracles), collect the oracles' signatures
    on the agreed values, and claim them on the availability ledger from the node's account.

    Args:
        deployment: ``edil.proofs.Deployment``.
        node: the node's ``LocalAccount`` (it pays for and sends the claim).
        epochs: ended epochs, increasing.
        oracles: admitted oracles (at least the quorum).

    Returns:
        The agreed availability per epoch.

    Raises:
        ChainError (and subclasses): the ledger refused the claim.
    """
    from edil.proofs import sign_availability

    views = [o.observe(node.address, epochs) for o in oracles]
    agreed = [agree([v[i] for v in views]) for i in range(len(epochs))]
    sigs = [sign_availability(o.key, deployment.ledger_domain, node.address, list(epochs), agreed) for o in oracles]
    deployment.claim_availability(node, list(epochs), agreed, sigs)
    return agreed
