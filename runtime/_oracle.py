"""Availability oracles as processes on the bus (``edil oracle run``).

An oracle hears the nodes' signed announcements and heartbeats over NATS (verified by a
:class:`~edil.runtime.Presence`, counted per slot by its own
:class:`~edil.runtime.HeartbeatMonitor`) and, for every epoch it watched from its start:

1. once the epoch has ended (plus ``grace_s`` for heartbeats still in flight), it signs its own
   view of each announced node's availability and publishes it as an *observation* on
   ``edil.avail.obs.<node>.<epoch>.<oracle>``;
2. ``agree_wait_s`` later it takes the observations it heard whose signature recovers to an
   admitted oracle (one per oracle, its own included), agrees on their low median
   (:func:`~edil.runtime.agree`, robust to a minority of liars), signs the agreed value and
   stores it as an *attestation* in the JetStream stream ``EDIL_AVAILABILITY``
   (``edil.avail.att.<node>.<epoch>.<oracle>``; a republished attestation is stored once).

Each oracle also tallies the heartbeats it heard by the epoch their own timestamps fall in
(:meth:`NatsOracle.heartbeat_tally`: counted, and refused by reason), so what it attests can be
told apart from traffic stamped for other epochs (a node's clock left behind by a development
chain whose clock was moved, say).

Every signature is the availability ledger's EIP-712 claim signature
(:func:`edil.proofs.sign_availability` over one epoch), so the attestations of a quorum of oracles
that agreed on the same value are exactly what ``Deployment.claim_availability`` takes:
:func:`claim_from_bus` collects them for a node and sends its claim.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from edil import ChainError, EdilError, ParameterError, RuntimeTaskError, SerializationError, VerificationError

from . import _wire
from ._availability import HeartbeatMonitor, agree, parse_heartbeat
from ._deps import keccak256, recover_signer
from ._presence import Presence
from ._pump import HEARTBEAT_S
from ._registry import ChainRegistry, Registry

__all__ = [
    "AVAILABILITY_STREAM", "NatsOracle", "SignedAvailability", "claim_from_bus", "collect_availability", "oracle_nkey_public",
    "oracle_nkey_seed",
]

AVAILABILITY_STREAM = "EDIL_AVAILABILITY"
_ADDRESS = Annotated[str, msgspec.Meta(pattern=r"\A0x[0-9a-fA-F]{40}\Z")]
#: How long an attestation stays in the stream (a node has this long to claim from the bus).
ATTESTATION_MAX_AGE_S = 30 * 24 * 3600.0


def _subject(kind: str, node: str, epoch: int | str, oracle: str) -> str:
    return f"edil.avail.{kind}.{node.lower()}.{epoch}.{oracle.lower()}"


def _account(private_key: Any) -> Any:
    """An eth-account ``LocalAccount`` for a key (32 bytes, 0x-hex, or already an account)."""
    from eth_account import Account

    return private_key if hasattr(private_key, "key") and hasattr(private_key, "address") else Account.from_key(private_key)


def _oracle_ed25519_seed(private_key: Any) -> bytes:
    return keccak256(b"EDIL/oracle-nkey/v1" + bytes(_account(private_key).key))


def oracle_nkey_seed(private_key: Any) -> str:
    """The NKey (``SU...``) an oracle connects with: an Ed25519 key derived from its chain key."""
    from ._nats import nkey_seed

    return nkey_seed(_oracle_ed25519_seed(private_key))


def oracle_nkey_public(private_key: Any) -> bytes:
    """The Ed25519 public key behind :func:`oracle_nkey_seed` (what :meth:`BusAdmission.add_oracle` takes)."""
    import nacl.signing

    return bytes(nacl.signing.SigningKey(_oracle_ed25519_seed(private_key)).verify_key)


class _AvailabilityRecord(msgspec.Struct, forbid_unknown_fields=True):
    oracle: _ADDRESS
    node: _ADDRESS
    epoch: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
    availability: Annotated[int, msgspec.Meta(ge=0, le=255)]
    signature: Annotated[bytes, msgspec.Meta(min_length=65, max_length=65)]


@dataclass(frozen=True)
class SignedAvailability:
    """One oracle's signed availability of one node in one epoch (an observation or an attestation)."""

    oracle: str
    node: str
    epoch: int
    availability: int
    signature: bytes

    @classmethod
    def sign(cls, private_key: Any, domain: Any, node: str, epoch: int, availability: int) -> SignedAvailability:
        """Sign ``availability`` of ``node`` in ``epoch`` with the availability ledger's claim signature."""
        from edil.proofs import sign_availability

        acct = _account(private_key)
        sig = sign_availability(acct, domain, node, [int(epoch)], [int(availability)])
        return cls(acct.address, node, int(epoch), int(availability), sig)

    def to_bytes(self) -> bytes:
        return _wire.dumps(
            {"oracle": self.oracle, "node": self.node, "epoch": self.epoch, "availability": self.availability, "signature": self.signature}
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedAvailability:
        """Parse strictly (the signature is checked by :meth:`verify`).

        Raises:
            SerializationError: not an availability record.
        """
        if not isinstance(data, bytes | bytearray) or len(data) > 1024:
            raise SerializationError("availability record is too long")
        rec = _wire.typed(_wire.loads(bytes(data)), _AvailabilityRecord, "availability record")
        return cls(rec.oracle, rec.node, rec.epoch, rec.availability, rec.signature)

    def verify(self, domain: Any) -> SignedAvailability:
        """Check that :attr:`oracle` signed this record under the ledger's ``domain``; returns ``self``.

        Raises:
            VerificationError: it did not.
        """
        from edil.proofs import availability_digest

        try:
            digest = availability_digest(domain, self.node, [self.epoch], [self.availability])
        except (TypeError, ValueError) as exc:
            raise VerificationError(f"availability record cannot be checked: {exc}") from None
        if recover_signer(digest, self.signature).lower() != self.oracle.lower():
            raise VerificationError("availability record is not signed by the oracle it names")
        return self


class _TallyingPresence(Presence):
    """A :class:`Presence` that also tallies each heartbeat by the epoch its own timestamp falls in."""

    def __init__(self, monitor: HeartbeatMonitor, *, max_skew_ms: int, clock: Callable[[], float]) -> None:
        super().__init__(monitor, max_skew_ms=max_skew_ms, clock=clock)
        #: epoch -> {"accepted": n, <refusal reason>: n, ...} (unparsable heartbeats name no epoch)
        self.tally: dict[int, Counter[str]] = {}

    def receive_heartbeat(self, subject_address: str, data: bytes) -> bool:
        before = Counter(self.rejected)
        ok = super().receive_heartbeat(subject_address, data)
        try:
            ts = parse_heartbeat(data).timestamp_ms
        except SerializationError:
            return ok
        genesis, length = self.monitor.genesis_ms, self.monitor.epoch_ms
        epoch = (ts - genesis) // length
        # Only epochs next to the receiver's own: a sender's made-up timestamps cannot grow the tally.
        if ts >= genesis and abs(epoch - (self.now_ms() - genesis) // length) <= 1:
            counts = self.tally.setdefault(epoch, Counter())
            if ok:
                counts["accepted"] += 1
            else:
                counts.update(self.rejected - before)
        return ok


class NatsOracle:
    """An availability oracle that listens on the bus and publishes signed availability per epoch.

    Args:
        private_key: the oracle's chain key (it signs; the registry must list its address as an oracle).
        deployment: the chain deployment (``ledger_domain``, ``genesis_time``, ``epoch_length``,
            ``is_oracle``; its registry admits nodes unless ``registry`` is given).
        slot_s: the heartbeat slot in seconds (``epoch_length`` must be a multiple of it).
        registry: the nodes' dAuth view (default: the deployment's, cached ``registry_ttl_s``).
        registry_ttl_s: staleness bound of the default registry view.
        is_oracle: which addresses count as oracles (default: ``deployment.is_oracle``, cached 30 s).
        grace_s: wait after an epoch's end before observing it (heartbeats in flight).
        agree_wait_s: wait after publishing an observation before agreeing and attesting.
        max_skew_ms: freshness bound on heartbeats and announcements.
        clock: seconds since the Unix epoch (injected; ``time.time`` by default).

    Raises:
        ParameterError: ``slot_s`` does not divide the epoch, or a negative wait.
    """

    def __init__(
        self,
        private_key: Any,
        deployment: Any,
        *,
        slot_s: int = HEARTBEAT_S,
        registry: Registry | None = None,
        registry_ttl_s: float = 2.0,
        is_oracle: Callable[[str], bool] | None = None,
        grace_s: float = 1.0,
        agree_wait_s: float = 2.0,
        max_skew_ms: int = 30_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (("grace_s", grace_s), ("agree_wait_s", agree_wait_s)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ParameterError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        self.key = _account(private_key)
        self.deployment = deployment
        self.domain = deployment.ledger_domain
        self.epoch_ms = int(deployment.epoch_length) * 1000
        self.genesis_ms = int(deployment.genesis_time) * 1000
        self.address: str = self.key.address
        monitor = HeartbeatMonitor(
            registry if registry is not None else ChainRegistry(deployment, ttl_s=registry_ttl_s),
            epoch_ms=self.epoch_ms, interval_ms=int(slot_s) * 1000, max_skew_ms=max_skew_ms, genesis_ms=self.genesis_ms,
        )
        self.presence = _TallyingPresence(monitor, max_skew_ms=max_skew_ms, clock=clock)
        self.clock = clock
        self.grace_s, self.agree_wait_s = float(grace_s), float(agree_wait_s)
        self._is_oracle = is_oracle if is_oracle is not None else deployment.is_oracle
        self._oracle_cache: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()
        #: verified observations heard: (node, epoch) -> oracle -> record
        self.observations: dict[tuple[str, int], dict[str, SignedAvailability]] = {}
        #: this oracle's attestations: (node, epoch) -> record
        self.attestations: dict[tuple[str, int], SignedAvailability] = {}
        self.refused = 0
        self._first_epoch: int | None = None
        self._next_epoch: int | None = None
        self._due: list[tuple[float, str, int]] = []  # (time to agree, node, epoch)

    @property
    def monitor(self) -> HeartbeatMonitor:
        return self.presence.monitor

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def epoch_of(self, now_ms: int) -> int:
        return (now_ms - self.genesis_ms) // self.epoch_ms

    def start(self) -> None:
        """Begin watching: only epochs that start from now on are observed in full, hence attested."""
        now = self._now_ms()
        first = max(0, -(-(now - self.genesis_ms) // self.epoch_ms))  # the first epoch starting at or after now
        self._first_epoch = self._next_epoch = first

    def heartbeat_tally(self, epoch: int) -> dict[str, Any]:
        """The heartbeats heard so far whose timestamps fall in ``epoch``: ``{"accepted": n,
        "rejected": {reason: n}}`` (kept while the epoch is being agreed on)."""
        tally = self.presence.tally.get(int(epoch), Counter())
        return {"accepted": tally.get("accepted", 0), "rejected": {k: v for k, v in sorted(tally.items()) if k != "accepted"}}

    def oracle_admitted(self, address: str) -> bool:
        """Whether ``address`` is an admitted oracle (cached 30 s; fails closed on a chain error)."""
        now = time.monotonic()
        hit = self._oracle_cache.get(address.lower())
        if hit is not None and now - hit[0] < 30.0:
            return hit[1]
        try:
            ok = bool(self._is_oracle(address))
        except ChainError:
            return False
        self._oracle_cache[address.lower()] = (now, ok)
        return ok

    def observe(self, node: str, epoch: int) -> SignedAvailability:
        """This oracle's own signed view of ``node`` in ``epoch`` (also recorded as an observation)."""
        rec = SignedAvailability.sign(self.key, self.domain, node, epoch, self.monitor.availability(node, epoch))
        with self._lock:
            self.observations.setdefault((node, epoch), {})[self.address] = rec
        return rec

    def hear(self, data: bytes) -> bool:
        """Take a peer's observation; ``True`` if it is kept (signed by an admitted oracle, for an
        epoch this oracle is agreeing on). Never raises on bad input."""
        try:
            rec = SignedAvailability.from_bytes(data).verify(self.domain)
        except EdilError:
            self.refused += 1
            return False
        current = self.epoch_of(self._now_ms())
        if self._first_epoch is None or not self._first_epoch <= rec.epoch < current or not self.oracle_admitted(rec.oracle):
            self.refused += 1
            return False
        with self._lock:
            seen = self.observations.setdefault((rec.node, rec.epoch), {})
            if rec.oracle in seen:
                return False  # one observation per oracle: the first one heard stands
            seen[rec.oracle] = rec
        return True

    def attest(self, node: str, epoch: int) -> SignedAvailability:
        """Agree on ``node``'s availability in ``epoch`` (low median of the observations heard) and sign it."""
        with self._lock:
            values = [r.availability for r in self.observations.get((node, epoch), {}).values()]
        if not values:
            values = [self.observe(node, epoch).availability]
        rec = SignedAvailability.sign(self.key, self.domain, node, epoch, agree(values))
        self.attestations[(node, epoch)] = rec
        return rec

    def due(self) -> tuple[list[SignedAvailability], list[SignedAvailability]]:
        """What to publish now: ``(observations, attestations)``, by the clock (see the module docstring)."""
        if self._next_epoch is None:
            self.start()
        assert self._next_epoch is not None
        now = self.clock()
        observed: list[SignedAvailability] = []
        while (self.genesis_ms + (self._next_epoch + 1) * self.epoch_ms) / 1000 + self.grace_s <= now:
            epoch = self._next_epoch
            for node in sorted(self.presence.cards):
                observed.append(self.observe(node, epoch))
                self._due.append((now + self.agree_wait_s, node, epoch))
            self._next_epoch += 1
        attested = [self.attest(node, epoch) for when, node, epoch in self._due if when <= now]
        self._due = [d for d in self._due if d[0] > now]
        with self._lock:  # what is attested is stored on the bus: keep only the epochs still being agreed on
            horizon = min([e for _, _, e in self._due], default=self._next_epoch)
            for table in (self.observations, self.attestations):
                for k in [k for k in table if k[1] < horizon - 1]:
                    del table[k]
            for e in [e for e in self.presence.tally if e < horizon - 1]:
                del self.presence.tally[e]
        return observed, attested

    async def _store(self, js: Any, rec: SignedAvailability) -> None:
        subject = _subject("att", rec.node, rec.epoch, rec.oracle)  # also its message id: stored once
        await js.publish(subject, rec.to_bytes(), stream=AVAILABILITY_STREAM, headers={"Nats-Msg-Id": subject})

    async def run(
        self, url: str, *, stop: asyncio.Event, ready: Callable[[], None] | None = None, tick_s: float = 0.1,
        nkey_seed: str | None = None, connect_wait_s: float | None = None,
        on_attested: Callable[[SignedAvailability], None] | None = None,
    ) -> None:
        """Listen and publish until ``stop`` is set.

        Args:
            on_attested: called with each attestation once the stream has stored it.

        Raises:
            RuntimeTaskError: no connection within ``connect_wait_s``.
        """
        from ._nats import _connect, _retry, listen_presence, node_inbox

        nc = await _connect(
            url, f"edil-oracle-{self.address}", stop, max_wait_s=connect_wait_s, nkey_seed=nkey_seed, inbox_prefix=node_inbox(self.address)
        )
        js = nc.jetstream(timeout=5.0)
        try:
            await _retry(lambda: ensure_availability_stream(js), deadline_s=30.0, what="creating the availability stream", stop=stop)

            async def on_observation(msg: Any) -> None:
                self.hear(bytes(msg.data))

            await nc.subscribe("edil.avail.obs.*.*.*", cb=on_observation)
            self.start()
            await listen_presence(nc, self.presence)
            if ready is not None:
                ready()
            while not stop.is_set():
                observed, attested = self.due()
                for rec in observed:
                    await nc.publish(_subject("obs", rec.node, rec.epoch, rec.oracle), rec.to_bytes())
                for rec in attested:
                    await _retry(functools.partial(self._store, js, rec), deadline_s=60.0, what="storing an attestation", stop=stop)
                    if on_attested is not None:
                        on_attested(rec)
                try:
                    await asyncio.wait_for(stop.wait(), tick_s)
                except TimeoutError:
                    pass
        finally:
            try:
                await nc.drain()
            except Exception:  # noqa: BLE001 - the server may be gone
                await nc.close()


async def ensure_availability_stream(js: Any) -> None:
    """Create the attestation stream (file storage, kept ``ATTESTATION_MAX_AGE_S``) if missing."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(AVAILABILITY_STREAM)
        return
    except NotFoundError:
        pass
    await js.add_stream(
        StreamConfig(
            name=AVAILABILITY_STREAM, subjects=["edil.avail.att.>"], storage=StorageType.FILE, max_age=ATTESTATION_MAX_AGE_S,
            duplicate_window=600.0, max_msg_size=1024,
        )
    )


async def collect_availability(nc: Any, domain: Any, node: str, epoch: int, *, timeout_s: float = 2.0) -> dict[int, list[SignedAvailability]]:
    """The verified attestations stored for ``node`` in ``epoch``, grouped by availability value
    (one per oracle; records that do not verify, or name another node or epoch, are skipped).

    The stream is read with stateless "next message on this subject from this sequence" gets
    (``$JS.API.STREAM.MSG.GET.EDIL_AVAILABILITY``): no consumer is created, nothing is acknowledged
    and nothing is written, so a node admitted by :class:`~edil.runtime.BusAdmission` needs that one
    read-only call and its own inbox. A missing stream holds no attestation.

    Raises:
        RuntimeTaskError: the server did not answer within ``timeout_s``.
    """
    import nats.errors
    from nats.js.errors import NotFoundError

    js = nc.jetstream(timeout=timeout_s)
    subject = f"edil.avail.att.{node.lower()}.{int(epoch)}.*"
    out: dict[int, list[SignedAvailability]] = {}
    oracles: set[str] = set()
    seq = 1
    for _ in range(4096):  # at most one message per oracle matches: the bound only stops a runaway scan
        try:
            msg = await js.get_msg(AVAILABILITY_STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError:  # no further message on the subject (or no stream at all)
            break
        except (nats.errors.TimeoutError, TimeoutError):
            raise RuntimeTaskError(f"reading the {AVAILABILITY_STREAM} stream timed out after {timeout_s:g} s") from None
        except nats.errors.Error as exc:
            raise RuntimeTaskError(f"reading the {AVAILABILITY_STREAM} stream failed: {exc!r}") from None
        seq = int(msg.seq) + 1
        try:
            rec = SignedAvailability.from_bytes(bytes(msg.data or b"")).verify(domain)
        except EdilError:
            continue
        if rec.node.lower() != node.lower() or rec.epoch != epoch or rec.oracle.lower() in oracles:
            continue
        oracles.add(rec.oracle.lower())
        out.setdefault(rec.availability, []).append(rec)
    return out


def claim_from_bus(
    deployment: Any, node: Any, url: str, epochs: Sequence[int], *, nkey_seed: str | None = None, timeout_s: float = 2.0,
    identity: Any = None,
) -> list[int]:
    """Claim ``node``'s availability for ``epochs`` with the oracles' attestations stored on the bus.

    For each epoch, the value that a quorum of admitted oracles attested is claimed (one
    transaction per epoch: each attestation signs one epoch).

    Args:
        deployment: ``edil.proofs.Deployment``.
        node: the node's ``LocalAccount`` (it sends the claims).
        url: the NATS server holding the ``EDIL_AVAILABILITY`` stream.
        epochs: ended epochs, increasing.
        nkey_seed: the NKey to connect with on a bus that enforces admission.
        identity: the node's :class:`~edil.runtime.NodeIdentity`: connect with its own NKey (as its
            daemon does; :class:`~edil.runtime.BusAdmission` lets it read, never write, the stream).
        timeout_s: how long to wait for the stored attestations.

    Returns:
        The claimed availability per epoch.

    Raises:
        RuntimeTaskError: no quorum of matching attestations for an epoch.
        ChainError (and subclasses): the ledger refused a claim.
    """
    from ._nats import _connect, node_inbox
    from ._nats import nkey_seed as to_nkey_seed

    if identity is not None:
        if identity.address.lower() != node.address.lower():
            raise ParameterError("identity and node name different addresses")
        nkey_seed = to_nkey_seed(bytes(identity.signing))
    quorum, _ = deployment.quorum()
    address = node.address

    async def gather() -> list[dict[int, list[SignedAvailability]]]:
        # The node's own inbox: on a guarded bus it may hear replies there only.
        nc = await _connect(
            url, "edil-claim", asyncio.Event(), max_wait_s=timeout_s + 5, nkey_seed=nkey_seed, inbox_prefix=node_inbox(address)
        )
        try:
            return [await collect_availability(nc, deployment.ledger_domain, address, e, timeout_s=timeout_s) for e in epochs]
        finally:
            await nc.close()

    claimed = []
    for epoch, groups in zip(epochs, asyncio.run(gather())):
        admitted = {v: [r for r in recs if deployment.is_oracle(r.oracle)] for v, recs in groups.items()}
        best = max(admitted.items(), key=lambda kv: (len(kv[1]), -kv[0]), default=(0, []))
        if len(best[1]) < quorum:
            raise RuntimeTaskError(f"epoch {epoch}: {len(best[1])} matching oracle attestation(s) on the bus, quorum {quorum}")
        deployment.claim_availability(node, [epoch], [best[0]], [r.signature for r in best[1][:quorum]])
        claimed.append(best[0])
    return claimed

