"""Node presence on the bus: signed announcements (card and capabilities) and signed heartbeats.

A node announces itself when it connects (and again when asked) on ``edil.presence.<address>.card``
and sends a heartbeat every configured period on ``edil.presence.<address>.hb``. The coordinator
and the oracles hear both through a :class:`Presence`, which keeps only what a node could not
have forged or replayed:

* an **announcement** is ``Ed25519 signature (64) || wire record`` with the node's card, a
  sequence number and a timestamp, signed by the card's own Ed25519 key. It is accepted only if
  the card's secp256k1 signature binds its keys to its address (:meth:`NodeCard.verify`), that
  address is the one the subject names and the registry admits, the Ed25519 signature verifies
  under the card's key (so a node presenting *another* node's card, which it cannot sign for, is
  refused), the timestamp is within ``max_skew_ms`` of the receiver's clock and the sequence
  number is above every one seen from that node (a replayed announcement is refused);
* a **heartbeat** (:func:`~edil.runtime.make_heartbeat`) must name the node its subject names,
  carry a sequence number above every one seen from that node, and pass the
  :class:`~edil.runtime.HeartbeatMonitor` checks (card known, admitted, signature, freshness).

Everything refused is counted in :attr:`Presence.rejected` by reason; nothing raises on bad input.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
import nacl.exceptions
import nacl.signing

from edil import ChainError, EdilError, ParameterError, SerializationError, UnsupportedOperationError

from . import _wire
from ._availability import HeartbeatMonitor, parse_heartbeat
from ._identity import NodeCard, NodeIdentity
from ._registry import Registry

__all__ = ["Presence", "make_announcement", "presence_subject"]

_ANN_TAG = "EDIL/announce/v1"
_ANN_MAX_BYTES = 4096  # a card is ~300 bytes
_U63 = msgspec.Meta(ge=0, le=(1 << 63) - 1)
#: Subject a node's own presence messages go to; ``kind`` is ``card`` or ``hb``.
PRESENCE_PREFIX = "edil.presence"
#: Subject a receiver publishes on to ask every node to announce itself again.
PRESENCE_QUERY = "edil.presence.query"


def presence_subject(address: str, kind: str) -> str:
    """The subject a node publishes its announcements (``card``) or heartbeats (``hb``) on."""
    return f"{PRESENCE_PREFIX}.{address.lower()}.{kind}"


class _AnnouncementRecord(msgspec.Struct, forbid_unknown_fields=True):
    tag: str
    card: dict[str, Any]
    seq: Annotated[int, _U63]
    ts: Annotated[int, _U63]


def make_announcement(identity: NodeIdentity, card: NodeCard, *, seq: int, now_ms: int) -> bytes:
    """``identity``'s announcement of ``card``: ``Ed25519 signature || wire record``.

    Args:
        identity: the node's keys (its Ed25519 key signs).
        card: the node's public card (its capabilities travel inside, bound by the chain key).
        seq: a number above every earlier announcement's (the clock in ms serves).
        now_ms: the node's clock.
    """
    msg = _wire.dumps({"tag": _ANN_TAG, "card": card.to_wire(), "seq": int(seq), "ts": int(now_ms)})
    return bytes(identity.signing.sign(msg))


class Presence:
    """What the bus says about nodes, verified: their cards and the heartbeats that count.

    Args:
        monitor: receives the accepted heartbeats (its registry decides admission, its epoch
            layout decides availability).
        max_skew_ms: largest distance between an announcement's time and the receiver's clock.
        clock: seconds since the Unix epoch (injected; ``time.time`` by default).

    Attributes:
        cards: verified cards by checksum address.
        rejected: refused messages by reason (``impostor``, ``replayed``, ``stale``,
            ``unregistered``, ``malformed``, ``bad_signature``, ...).
    """

    def __init__(self, monitor: HeartbeatMonitor, *, max_skew_ms: int = 30_000, clock: Callable[[], float] = time.time) -> None:
        self.monitor = monitor
        self.registry: Registry = monitor.registry
        self.max_skew_ms = int(max_skew_ms)
        self.clock = clock
        self.cards: dict[str, NodeCard] = {}
        self.rejected: Counter[str] = Counter()
        self._ann_seq: dict[str, int] = {}
        self._hb_seq: dict[str, int] = {}
        self._hb_at: dict[str, int] = {}  # lowercase address -> receiver's clock (ms) at its last counted heartbeat
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _refuse(self, reason: str) -> bool:
        self.rejected[reason] += 1
        return False

    def receive_announcement(self, subject_address: str, data: bytes) -> bool:
        """Take one announcement heard on ``subject_address``'s subject; ``True`` if accepted."""
        try:
            if not isinstance(data, bytes | bytearray) or not 65 <= len(data) <= _ANN_MAX_BYTES:
                raise SerializationError("announcement is too short or too long")
            data = bytes(data)
            rec = _wire.typed(_wire.loads(data[64:]), _AnnouncementRecord, "announcement")
            if rec.tag != _ANN_TAG:
                raise SerializationError("not an announcement")
            card = NodeCard.from_wire(rec.card).verify()
        except EdilError:  # malformed bytes, or a card whose chain signature does not bind it
            return self._refuse("malformed")
        if card.address.lower() != subject_address.lower():
            return self._refuse("impostor")  # another node's card on this node's subject
        try:
            nacl.signing.VerifyKey(card.signing_key).verify(data[64:], data[:64])
        except (nacl.exceptions.BadSignatureError, ValueError):
            return self._refuse("impostor")  # the card's key did not sign it: not that node speaking
        try:
            if not self.registry.is_admitted(card.address):
                return self._refuse("unregistered")
        except ChainError:
            return self._refuse("registry_unavailable")
        if abs(self.now_ms() - rec.ts) > self.max_skew_ms:
            return self._refuse("stale")
        with self._lock:
            if rec.seq <= self._ann_seq.get(card.address, -1):
                return self._refuse("replayed")
            self._ann_seq[card.address] = rec.seq
            self.cards[card.address] = card
            self.monitor.add_card(card)
        return True

    def receive_heartbeat(self, subject_address: str, data: bytes) -> bool:
        """Take one heartbeat heard on ``subject_address``'s subject; ``True`` if it counted."""
        try:
            hb = parse_heartbeat(data)
        except SerializationError:
            return self._refuse("malformed")
        if hb.node.lower() != subject_address.lower():
            return self._refuse("impostor")
        with self._lock:
            if hb.seq <= self._hb_seq.get(hb.node, -1):
                return self._refuse("replayed")  # an old sequence number: a replay, whatever its time
            before = Counter(self.monitor.rejected)
            ok = self.monitor.receive(bytes(data), now_ms=self.now_ms())
            if ok:
                self._hb_seq[hb.node] = hb.seq
                self._hb_at[hb.node.lower()] = self.now_ms()
            else:  # the monitor counted why (unregistered, bad_signature, stale, ...): count it here too
                self.rejected.update(self.monitor.rejected - before)
        return ok

    def last_heartbeat_ms(self, address: str) -> int | None:
        """The receiver's clock (ms) when ``address``'s last counted heartbeat arrived (``None``: none yet)."""
        with self._lock:
            return self._hb_at.get(address.lower())

    def fresh(self, address: str, *, within_ms: int, now_ms: int | None = None) -> bool:
        """Whether a heartbeat of ``address`` counted in the last ``within_ms`` (by the receiver's clock).

        A node never heard is not fresh (fail closed: placement waits for its first heartbeat).

        Raises:
            ParameterError: ``within_ms`` is not positive.
            UnsupportedOperationError: ``within_ms`` is not an int.
        """
        if isinstance(within_ms, bool) or not isinstance(within_ms, int):
            raise UnsupportedOperationError(f"within_ms must be an int number of milliseconds, got {within_ms!r}")
        if within_ms <= 0:
            raise ParameterError(f"within_ms must be a positive number of milliseconds, got {within_ms!r}")
        last = self.last_heartbeat_ms(address)
        now = self.now_ms() if now_ms is None else int(now_ms)
        return last is not None and now - last <= within_ms
