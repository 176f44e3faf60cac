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
from typing import Annotated, Any

import msgspec
import nacl.exceptions
import nacl.signing

from edil import ChainError, ParameterError, SerializationError

from . import _wire
from ._identity import NodeCard, NodeIdentity
from ._registry import Registry

__all__ = ["AvailabilityOracle", "Heartbeat", "HeartbeatMonitor", "agree", "make_heartbeat", "parse_heartbeat", "settle_availability"]

_HB_TAG = "EDIL/heartbeat/v1"
_HB_MAX_BYTES = 1024  # a heartbeat is ~130 bytes; anything much larger is not one
_U63 = msgspec.Meta(ge=0, le=(1 << 63) - 1)


class _HeartbeatRecord(msgspec.Struct, forbid_unknown_fields=True):
    """The signed part of a heartbeat, as it travels (wire codec), with strict types."""

    tag: str
    node: Annotated[str, msgspec.Meta(max_length=64)]
    seq: Annotated[int, _U63]
    ts: Annotated[int, _U63]


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
    """Parse heartbeat bytes (the signature is not checked here).

    Raises:
        SerializationError: too short or too long, or not a heartbeat record with strict types
            (``seq`` and ``ts`` ints in ``[0, 2^63)``, ``node`` a short str).
    """
    if not isinstance(data, bytes | bytearray) or not 65 <= len(data) <= _HB_MAX_BYTES:
        raise SerializationError("heartbeat is too short or too long")
    data = bytes(data)
    rec = _wire.typed(_wire.loads(data[64:]), _HeartbeatRecord, "heartbeat")
    if rec.tag != _HB_TAG:
        raise SerializationError("not a heartbeat")
    return Heartbeat(rec.node, rec.seq, rec.ts, data[64:], data[:64])


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
            raise ParameterError("epoch_ms must be a positive multiple of interval_ms")
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
        try:
            admitted = key is not None and self.registry.is_admitted(hb.node)
        except ChainError:  # the registry view is past its staleness bound: fail closed, count it
            self.rejected["registry_unavailable"] += 1
            return False
        if key is None or not admitted:
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
            raise ParameterError("window_ms must cover at least one heartbeat interval")
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
        raise ParameterError("agree needs uint8 availability values")
    return int(statistics.median_low(vals))




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

    An epoch whose PoAI audit failed earns nothing: the ledger records it as claimed with no
    reward, and an audit that fails after the claim takes the reward back
    (:func:`~edil.runtime.audit_epoch` forfeits it).

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
