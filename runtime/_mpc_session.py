"""``Masked`` sessions on nodes: one party per node, running the one protocol of the library.

Each node runs :func:`edil.hazmat.mpc.model` (the same party program the in-process
:class:`edil.Masked` drives on stacked shares, and the auditor replays) on its share, its
portion of the dealer's material and, when the model is private, its share of the weights.
Nodes exchange only contributions to openings. The coordinator is also the dealer: the data
owner's side, which knows the data anyway (threat model of :class:`edil.Masked`: semi-honest
parties that do not collude, a trusted dealer).

**Over a bus** (an executor with ``peer_channel``, i.e. :class:`~edil.runtime.NatsExecutor`) the
parties talk to each other: the coordinator sends each party its start (input share, model view,
dealer seed, and every party's address and public keys) and collects output shares; it is on no
opening's path. Each round a party seals its contribution to every other party's box key, signed
by its own key and bound to the session, the round, the sender and the receiver, on the subject
``edil.mpc.<session>.<from>.<to>`` (the bus lets a node publish only as ``<from>`` and hear only
what is for it), and opens the round itself from all contributions. A replayed message, a
second contribution for a round or one more than a round ahead is refused
(:class:`PeerInbox`). A party that hears nothing from a peer for ``Scheduler.timeout_s`` in a
round gives up and says which peer; the coordinator waits ``timeout_s`` more for the rest, so a
silent party fails the attempt within about twice ``timeout_s`` of its silence, is suspended and
kept off the job's next attempts. Meanwhile the coordinator runs every party in lockstep from the
views it dealt (:func:`_simulate`; about what ``check="replay"`` costs, and always done here): each
party returns a commitment to every contribution it sent and every opening it computed, which
must match; the first round where a party's contribution is not the protocol's names it. A
party that sends its peers different contributions is named too: every peer message carries
the sender's signed statement of the round's contribution (:func:`peer_statement`), each
receiver returns, per round and sender, the commitment it received with that statement, and a
statement of another contribution than the protocol's is the sender's own signed word against
it (two that differ prove it equivocated; the fault record quotes them). A receiver cannot
frame a sender (it cannot sign for it) and is itself named if it reports an unsigned one. The
silent-peer blame still rests on the reporting parties' word. The journal record is the
relayed session's (openings and contribution commitments), so the auditors replay either kind
alike. A node is in a direct session from its start to its end, so the coordinator runs one
direct session at a time per node (:func:`_parties_held`): two sessions on overlapping nodes
whose starts reached them in different orders would otherwise wait on each other until the
peer timeout.

**Otherwise** (:class:`~edil.runtime.LocalExecutor`, Ray) the coordinator relays every round:
it sums the parties' contributions and sends back the opening. The material is seed-compressed
(:mod:`edil._dealer`): a node is sent a 32-byte seed and expands its material itself; only the
last party also receives corrections (the last shares of the derived values), by R1FS CID,
sealed to that party alone, when they exceed the inline limit of task inputs and the
coordinator has a store (:func:`_start_body`).

Privacy invariants this module keeps (and ``tests/test_runtime_privacy.py`` checks over random
fault schedules):

* **No node ever holds two shares of one sharing.** Every session attempt re-randomises the
  input sharing (a fresh sharing of zero is added) and shares private weights afresh, both from
  the attempt's own seed; the attempt counter is persisted in the journal *before* anything is
  sent, so a retried, resumed or restarted session never reuses a sharing, a dealer stream or a
  re-randomisation, whichever nodes it lands on.
* **Weights leave the coordinator in the clear only for a model declared public**
  (``model_public=True``); otherwise every dense layer is shared among the parties.

Cheating parties are caught within the job: after a session the coordinator replays every party
from its own view (share, material, public openings) with the auditors' code and compares each
contribution and output share the party committed to (``check="replay"``, the default; it costs
the coordinator about one party's computation per party, i.e. about what running ``Masked``
in-process costs). A caught party is recorded as a fault and suspended, and the session is run
again, re-randomised, on other nodes. ``check="none"`` leaves detection to the epoch audits.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import nacl.exceptions
import nacl.signing
import numpy as np

from edil import (
    EdilError,
    ParameterError,
    ReplayError,
    RuntimeTaskError,
    SerializationError,
    ShapeError,
    UnsupportedOperationError,
    VerificationError,
)
from edil.hazmat import mpc

from . import _wire
from ._deps import commit_bytes, commit_json, consteq, keccak256
from ._products import record_products
from ._task import array_from_bytes, array_to_bytes
from ._transport import ReplayGuard, open_envelope, seal_envelope

__all__ = [
    "MaskedJob", "PartySession", "PeerInbox", "RecordedView", "audit_party", "peer_subject", "recorded_view", "run_direct_party",
    "run_masked_job",
]

_log = logging.getLogger("edil.runtime.mpc")

_U64 = np.uint64
_TAGS = {"public": 1, "private": 0, "poly": 1, "poly2f": 1, "flatten": 0, "relu": 0, "maxpool": 1}
_MAX_LAYERS, _MAX_COEFFS, _MAX_PARTIES, _MAX_ROUNDS = 256, 64, 64, 4096
_MAX_POOL_OUT, _MAX_POOL_TAPS, _MAX_POOL_INDEX = 1 << 16, 256, 1 << 24
CHECKS = ("replay", "none")


# --- the model a party sees, on the wire --------------------------------------------------------
def layers_to_wire(layers: Sequence[mpc.Layer]) -> list[Any]:
    def args(layer: mpc.Layer) -> list[Any]:
        if layer[0] in ("poly", "poly2f"):
            return [list(layer[1])]
        if layer[0] == "maxpool":
            return [[list(row) for row in layer[1]]]
        return list(layer[1:])

    return [[layer[0], *args(layer)] for layer in layers]


def layers_from_wire(obj: Any) -> tuple[mpc.Layer, ...]:
    """Layers from untrusted bytes, checked strictly.

    Raises:
        SerializationError: anything but a short list of known layers with well-typed arguments.
    """
    if not isinstance(obj, list) or not 0 < len(obj) <= _MAX_LAYERS:
        raise SerializationError("masked model: layers must be a non-empty list")
    out: list[mpc.Layer] = []
    for item in obj:
        if not isinstance(item, list) or not item or item[0] not in _TAGS or len(item) != 1 + _TAGS[item[0]]:
            raise SerializationError("masked model: malformed layer")
        tag = item[0]
        if tag == "public":
            if not isinstance(item[1], bool):
                raise SerializationError("masked model: a public layer's flag must be a bool")
            out.append(("public", item[1]))
        elif tag in ("poly", "poly2f"):
            c = item[1]
            if not isinstance(c, list) or not 0 < len(c) <= _MAX_COEFFS or any(
                type(v) is not int or not -(1 << 63) <= v < (1 << 64) for v in c
            ):
                raise SerializationError("masked model: polynomial coefficients must be a short list of ring integers")
            out.append((tag, tuple(c)))
        elif tag == "maxpool":
            idx = item[1]
            if not (isinstance(idx, list) and 0 < len(idx) <= _MAX_POOL_OUT and all(isinstance(r, list) for r in idx)
                    and 0 < len(idx[0]) <= _MAX_POOL_TAPS and all(len(r) == len(idx[0]) for r in idx)
                    and all(type(v) is int and 0 <= v < _MAX_POOL_INDEX for r in idx for v in r)):
                raise SerializationError("masked model: a max-pooling index must be equal-length lists of column indices")
            out.append(("maxpool", tuple(tuple(r) for r in idx)))
        else:
            out.append((tag,))
    for layer, nxt in zip(out, [*out[1:], None]):
        if layer[0] == "poly2f" and (nxt is None or nxt[0] not in ("public", "private")):
            raise SerializationError("masked model: a polynomial left at 2f fractional bits must be followed by a dense layer")
    return tuple(out)


def party_model_bytes(layers: Sequence[mpc.Layer], weights: Sequence[np.ndarray]) -> bytes:
    """What one party is given of the model: layers and its weights (public, or its shares)."""
    return _wire.dumps({"layers": layers_to_wire(layers), "weights": [array_to_bytes(w) for w in weights]})


def party_model_from_bytes(data: bytes) -> tuple[tuple[mpc.Layer, ...], list[np.ndarray]]:
    d = _wire.loads(data)
    if not isinstance(d, dict) or set(d) != {"layers", "weights"} or not isinstance(d["weights"], list):
        raise SerializationError("masked model: expected layers and weights")
    layers = layers_from_wire(d["layers"])
    weights = [array_from_bytes(w) for w in d["weights"]]
    dense = sum(1 for layer in layers if layer[0] in ("public", "private"))
    if len(weights) != 2 * dense:
        raise SerializationError("masked model: one weight and one bias per dense layer")
    return layers, weights


def _arrays_to_bytes(arrays: Sequence[Any]) -> bytes:
    """Ring arrays on the wire: a list when all are additive (as before XOR openings existed),
    else the arrays with their kinds (a contribution's commitment covers how it is opened)."""
    encoded = [array_to_bytes(np.asarray(a, dtype=_U64)) for a in arrays]
    kinds = mpc.kinds_of(arrays)
    if all(k == mpc.ADD for k in kinds):
        return _wire.dumps(encoded)
    return _wire.dumps({"arrays": encoded, "kinds": list(kinds)})


def _arrays_from_bytes(data: bytes, expect: int | None = None) -> tuple[np.ndarray, ...]:
    d = _wire.loads(data)
    kinds = None
    if isinstance(d, dict):
        if set(d) != {"arrays", "kinds"} or not isinstance(d["kinds"], list) or not isinstance(d["arrays"], list):
            raise SerializationError("expected ring arrays with their kinds")
        kinds, d = d["kinds"], d["arrays"]
        if len(kinds) != len(d) or any(k not in (mpc.ADD, mpc.XOR) for k in kinds):
            raise SerializationError("expected one known kind per ring array")
    if not isinstance(d, list) or not 0 < len(d) <= 3 or (expect is not None and len(d) != expect):
        raise SerializationError("expected a short list of ring arrays")
    if any(not isinstance(b, bytes) for b in d):  # array_from_bytes raises TypeError on anything else
        raise SerializationError("ring arrays must be tensor bytes")
    out = tuple(array_from_bytes(b) for b in d)
    if any(a.dtype != _U64 for a in out):
        raise SerializationError("ring arrays must be uint64")
    return out if kinds is None else mpc.Tagged(out, kinds)


def contribution_commitment(arrays: Sequence[np.ndarray]) -> bytes:
    return commit_bytes(_arrays_to_bytes(arrays))


# --- dealer material on the wire: a party seed, and corrections for the last party -----------------
DEALER = "aes-ctr/v1"  # how a record's material was dealt (records without it cannot be replayed)


def material_to_wire(dealt: Any, party: int) -> dict[str, Any]:
    """What party ``party`` is sent of a session's material (:func:`edil.hazmat.mpc.deal_all`).

    Party ``i < n - 1``: its 32-byte seed. The last party: its seed and the corrections (the
    derived values' last shares). See :mod:`edil._dealer` for the bytes this saves.
    """
    last = party == len(dealt.seeds) - 1
    return {"seed": dealt.seeds[party], "corrections": [array_to_bytes(c) for c in dealt.corrections] if last else []}


def resolve_material(obj: Any, blobs: Any, box: Any) -> Any:
    """A start message's dealer material, its corrections fetched back inline when they travel by
    R1FS CID (:func:`_start_body`); anything else is returned unchanged.

    Args:
        obj: the material as the start message carries it.
        blobs: the node's :class:`~edil.runtime._blobs.BlobCache` (``None``: it has no store).
        box: the node's X25519 secret key or its ``NodeIdentity`` (the file is wrapped to it alone).

    Raises:
        SerializationError: a malformed material entry.
        EdilError: the node has no store, or the file cannot be fetched or verified (R1FS's error).
    """
    if not (isinstance(obj, dict) and "corrections_cid" in obj):
        return obj
    if set(obj) != {"seed", "corrections_cid"} or not isinstance(obj["corrections_cid"], str):
        raise SerializationError("masked session: malformed dealer material")
    if blobs is None:
        raise EdilError("the dealer material travels by R1FS CID and this node has no R1FS store")
    # Used once (a retried session is dealt afresh, under another CID): not kept in the cache.
    return {"seed": obj["seed"], "corrections": _wire.loads(blobs.get(obj["corrections_cid"], box, keep=False))}


def material_from_wire(obj: Any, party: int, n: int) -> tuple[bytes, list[np.ndarray]]:
    """``(seed, corrections)`` from untrusted bytes, checked strictly.

    Raises:
        SerializationError: anything but a 32-byte seed and a bounded list of uint64 arrays,
            or corrections sent to a party other than the last.
    """
    if not isinstance(obj, dict) or set(obj) != {"seed", "corrections"}:
        raise SerializationError("masked session: malformed dealer material")
    seed, corrections = obj["seed"], obj["corrections"]
    if not isinstance(seed, bytes | bytearray) or len(seed) != 32:
        raise SerializationError("masked session: the dealer seed must be 32 bytes")
    if not isinstance(corrections, list) or len(corrections) > 8 * _MAX_ROUNDS or (corrections and party != n - 1):
        raise SerializationError("masked session: malformed dealer corrections")
    arrays = [array_from_bytes(c) for c in corrections]
    if any(a.dtype != _U64 for a in arrays):
        raise SerializationError("masked session: dealer corrections must be uint64 arrays")
    return bytes(seed), arrays


# --- node side --------------------------------------------------------------------------------------
class PartySession:
    """Node-side state of one party in one session: feeds openings to the party program.

    Raises:
        SerializationError / ShapeError: the start message does not describe a runnable session.
    """

    def __init__(self, party: int, n: int, frac_bits: int, model: bytes, share: np.ndarray, material: Any, *,
                 claim: Any = None) -> None:
        if not (type(n) is int and 2 <= n <= _MAX_PARTIES and type(party) is int and 0 <= party < n):
            raise SerializationError("masked session: bad party index or party count")
        if not (type(frac_bits) is int and 1 <= frac_bits <= 28):
            raise SerializationError("masked session: bad fractional bits")
        layers, weights = party_model_from_bytes(model)
        if share.dtype != _U64 or share.ndim != 2:
            raise SerializationError("masked session: the input share must be a 2-D uint64 array")
        seed, corrections = material_from_wire(material, party, n)
        self._dealer = mpc.PartyDealer(party, n, frac_bits, seed, corrections)
        self.party, self.n = party, n
        p = mpc.host_party(party, n, frac_bits, self._deal)
        # Every ring product as C + 2^64 H, sent with the result: the epoch audit checks them in one round each.
        self.products: list[tuple[np.ndarray, np.ndarray]] = []
        record_products(p, self.products, claim=claim)
        self._prog = mpc.model(p, share, layers, weights)
        self.rounds = 0

    def _deal(self, kind: str, *shapes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        mats = self._dealer(kind, *shapes)
        want = mpc.material_shapes(kind, shapes)
        if len(mats) != len(want) or any(m.shape != s or m.dtype != _U64 for m, s in zip(mats, want)):
            raise ShapeError(f"dealer material mismatch for {kind} {shapes}")
        return mats

    def step(self, opened: bytes | None) -> tuple[bool, Any]:
        """Advance: returns ``(done, value)``: contribution bytes, or (when done) the output share."""
        try:
            with np.errstate(over="ignore"):
                if opened is None:
                    out = next(self._prog)
                else:
                    out = self._prog.send(_arrays_from_bytes(opened))
        except StopIteration as stop:
            return True, np.asarray(stop.value, dtype=_U64)
        except (ValueError, TypeError, IndexError) as exc:  # an opening of the wrong shape from the relay
            raise ShapeError(f"masked session: opening does not fit the program ({exc})") from None
        self.rounds += 1
        return False, _arrays_to_bytes(out)


# --- parties talking to each other directly (over the bus) ----------------------------------------
#: Kind of a sealed contribution one party sends another.
PEER_KIND = "mpc_peer"
#: Marker in a party's error when a peer sent nothing in time (the coordinator blames that peer, not it).
SILENT_PEER = "waited in vain for"
#: Marker in a party's error when a peer's signed contribution does not fit the round (blamed like a silent peer).
BAD_PEER = "was sent an unusable contribution by"
#: Domain tag of a party's statement of its contribution to a round (see :func:`peer_statement`).
PEER_STATEMENT_TAG = b"EDIL/mpc-peer-contribution/v1\x00"


def peer_statement(session: bytes, rnd: int, sender: int, digest: bytes) -> bytes:
    """What a party signs of its contribution to a round: session, round, its index and the
    contribution's commitment (not the receiver: every peer must be sent the same contribution).

    Each peer message carries this signature; the receiver keeps it with the commitment and
    returns both in its trace, so two statements of one sender for one round with different
    commitments, or one whose commitment is not the protocol's, prove what the sender sent.
    """
    return PEER_STATEMENT_TAG + bytes(session) + int(rnd).to_bytes(4, "big") + int(sender).to_bytes(2, "big") + bytes(digest)


def statement_holds(signing_key: bytes, session: bytes, rnd: int, sender: int, digest: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``signing_key``'s over :func:`peer_statement` of these values (never raises)."""
    try:
        nacl.signing.VerifyKey(bytes(signing_key)).verify(peer_statement(session, rnd, sender, digest), bytes(signature))
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


def peer_subject(session: bytes, sender: str, receiver: str) -> str:
    """The subject ``sender`` publishes its contributions for ``receiver`` on, in one session.

    ``edil.mpc.<session hex>.<sender address>.<receiver address>``: the bus lets a node publish
    only with its own address as sender and subscribe only where it is the receiver.
    """
    return f"edil.mpc.{bytes(session).hex()}.{sender.lower()}.{receiver.lower()}"


@dataclass(frozen=True)
class Peer:
    """A party of a direct session as the coordinator names it: address and public keys."""

    address: str
    signing_key: bytes
    box_key: bytes


def peers_from_wire(obj: Any, n: int) -> tuple[Peer, ...]:
    """The session's parties from an (authentic) start message, checked strictly.

    Raises:
        SerializationError: not ``n`` distinct ``[address, 32-byte key, 32-byte key]`` entries.
    """
    if not isinstance(obj, list) or len(obj) != n:
        raise SerializationError("masked session: one peer entry per party expected")
    out = []
    for item in obj:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and len(item[0]) == 42
                and item[0].startswith("0x") and all(isinstance(k, bytes) and len(k) == 32 for k in item[1:])):
            raise SerializationError("masked session: malformed peer entry")
        out.append(Peer(item[0].lower(), bytes(item[1]), bytes(item[2])))
    if len({p.address for p in out}) != n:
        raise SerializationError("masked session: the parties must be distinct nodes")
    return tuple(out)


class PeerInbox:
    """One party's incoming contributions of one session: verified, deduplicated, by round.

    Every message must come sealed to this party's box key, signed by the peer its subject names,
    and bound to this session, its round, its sender and this receiver, with the sender's signed
    statement of the contribution (:func:`peer_statement`). A message is taken for the round
    awaited or the next one (a faster peer may be one round ahead, never two); anything else is
    refused, and nothing refused is ever used. Each round taken leaves its evidence in
    :attr:`received`: per sender (ascending, this party left out) the contribution's commitment
    and the sender's signature over it.

    Args:
        session: the session id.
        party: this party's index.
        peers: every party of the session, by index.
        box_key: this party's X25519 private key.
        window_ms: freshness window of the replay guard.
    """

    def __init__(self, session: bytes, party: int, peers: Sequence[Peer], box_key: Any, *, window_ms: int = 120_000) -> None:
        self.session, self.party, self.peers = bytes(session), party, tuple(peers)
        self._box = box_key
        self._guard = ReplayGuard(window_ms)
        self._by_address = {p.address: i for i, p in enumerate(self.peers)}
        self.round = 1
        self._pending: dict[int, dict[int, tuple[bytes, bytes]]] = {}
        self.received: list[list[list[bytes]]] = []

    def accept(self, subject: str, envelope: bytes, *, now_ms: int) -> None:
        """Verify one message from the bus and keep its contribution for its round.

        Raises:
            VerificationError: wrong subject, sender, signature, recipient, session, or a round
                more than one ahead.
            ReplayError: a message seen before, or a second contribution of a peer for a round.
        """
        parts = subject.split(".") if isinstance(subject, str) else []
        if len(parts) != 5 or parts[:2] != ["edil", "mpc"] or parts[2] != self.session.hex():
            raise VerificationError("peer message on a subject of another session")
        sender = self._by_address.get(parts[3])
        if sender is None or sender == self.party or parts[4] != self.peers[self.party].address:
            raise VerificationError("peer message between nodes that are not this session's parties")
        msg = open_envelope(envelope, box_key=self._box, trusted=(self.peers[sender].signing_key,), guard=self._guard,
                            now_ms=now_ms, kinds=(PEER_KIND,))
        body = msg.body
        if not (isinstance(body, dict) and set(body) == {"session", "round", "from", "to", "contribution", "sig"}
                and isinstance(body["session"], bytes) and consteq(body["session"], self.session)
                and body["from"] == sender and body["to"] == self.party and type(body["round"]) is int
                and isinstance(body["contribution"], bytes) and isinstance(body["sig"], bytes)):
            raise VerificationError("peer message is not bound to this session, sender and receiver")
        rnd = body["round"]
        if rnd < self.round or sender in self._pending.get(rnd, {}):
            raise ReplayError(f"a second contribution of party {sender} for round {rnd} (replay)")
        if rnd > self.round + 1:
            raise VerificationError(f"peer message for round {rnd} while round {self.round} is open (out of order)")
        contribution = bytes(body["contribution"])
        # Kept only with a valid statement: what this party reports of it must stand as proof.
        if not statement_holds(self.peers[sender].signing_key, self.session, rnd, sender, commit_bytes(contribution), body["sig"]):
            raise VerificationError(f"party {sender}'s statement of its round {rnd} contribution is not signed by it")
        self._pending.setdefault(rnd, {})[sender] = (contribution, bytes(body["sig"]))

    def missing(self) -> list[int]:
        """The peers whose contribution for the open round has not arrived."""
        got = self._pending.get(self.round, {})
        return [i for i in range(len(self.peers)) if i != self.party and i not in got]

    def take(self) -> dict[int, bytes] | None:
        """The open round's contributions by party once all peers' are in (then the next round opens)."""
        if self.missing():
            return None
        got = self._pending.pop(self.round)
        self.round += 1
        self.received.append([[commit_bytes(got[j][0]), got[j][1]] for j in sorted(got)])
        return {j: c for j, (c, _) in got.items()}


class PeerLink(Protocol):
    """A node's channel to its peers (the bus): ``open`` before anything is sent, ``close`` after."""

    def open(self, session: bytes, senders: Sequence[str] | None = None) -> queue.Queue[tuple[str, bytes]]: ...

    def close(self, session: bytes) -> None: ...

    def send(self, subject: str, data: bytes) -> None: ...


def run_direct_party(
    sess: PartySession, body: Any, *, link: PeerLink, identity: Any, outgoing: Callable[[bytes], bytes],
    clock_ms: Callable[[], int], nonce: Callable[[], bytes], to_peer: Callable[[bytes, int, int], bytes] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run one party of a direct session to its end: contributions go sealed to each peer, each
    round is opened here from every party's contribution.

    Args:
        sess: the party, built from the start message.
        body: the (authentic) start message: ``session``, ``party``, ``peers``, ``peer_timeout_ms``
            (how long a round waits for a silent peer) and ``deadline_ms`` (when the coordinator
            stops waiting for the whole session).
        link: the channel to the peers.
        identity: this node's keys (signs and unseals).
        outgoing: what a contribution becomes on the way out (identity for an honest node).
        clock_ms, nonce: this node's clock and nonce source.
        to_peer: what the contribution becomes from this party to peer ``j`` (``None``: the same for every peer,
            as the protocol says; a hook through which tests make a party equivocate).

    Returns:
        ``(output share, trace)``; the trace holds, round by round, a commitment to each
        contribution this party sent, to each opening it computed and, per peer, the commitment
        to the contribution it received with that peer's signed statement of it
        (:func:`peer_statement`), and how many peer messages it refused.

    Raises:
        RuntimeTaskError: a peer sent nothing within ``peer_timeout_ms`` (the message names it), or
            the session is past its deadline.
        VerificationError / ShapeError: the session cannot continue (peers' contributions do not fit).
        SerializationError: a malformed start message.
    """
    try:
        sid, party, n = bytes(body["session"]), sess.party, sess.n
        peers = peers_from_wire(body["peers"], n)
        wait_ms, deadline_ms = int(body["peer_timeout_ms"]), int(body["deadline_ms"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SerializationError(f"bad direct mpc_start message: {exc}") from None
    me = identity.address.lower()
    if peers[party].address != me or not consteq(peers[party].box_key, bytes(identity.box.public_key)):
        raise SerializationError("masked session: this node is not the party the start message names")
    if not 0 < wait_ms <= 3_600_000:
        raise SerializationError("masked session: bad peer timeout")
    if clock_ms() > deadline_ms:
        raise RuntimeTaskError("masked session: started after the coordinator's deadline (abandoned)")
    inbox = PeerInbox(sid, party, peers, identity.box)
    incoming = link.open(sid, [p.address for i, p in enumerate(peers) if i != party])
    refused = 0
    sent: list[bytes] = []
    opened_c: list[bytes] = []
    try:
        done, value = sess.step(None)
        while not done:
            if len(sent) >= _MAX_ROUNDS:
                raise VerificationError("the session runs past the protocol's rounds")
            mine = outgoing(value)
            sent.append(commit_bytes(mine))
            signed: dict[bytes, bytes] = {}  # one statement per distinct contribution (one, for an honest party)
            for j, peer in enumerate(peers):
                if j != party:
                    data = mine if to_peer is None else to_peer(mine, party, j)
                    digest = commit_bytes(data)
                    if digest not in signed:
                        signed[digest] = identity.signing.sign(peer_statement(sid, inbox.round, party, digest)).signature
                    link.send(peer_subject(sid, me, peer.address), seal_envelope(
                        PEER_KIND, {"session": sid, "round": inbox.round, "from": party, "to": j, "contribution": data,
                                    "sig": signed[digest]},
                        signing_key=identity.signing, recipient_box_key=peer.box_key, nonce=nonce(), now_ms=clock_ms(),
                    ))
            t_end = time.monotonic() + min(wait_ms, max(0, deadline_ms - clock_ms())) / 1000
            while (got := inbox.take()) is None:
                left = t_end - time.monotonic()
                if left <= 0:
                    names = ", ".join(f"party {i} ({peers[i].address})" for i in inbox.missing())
                    raise RuntimeTaskError(f"masked session: {SILENT_PEER} {names} in round {inbox.round} ({wait_ms / 1000:g} s)")
                try:
                    subject, data = incoming.get(timeout=left)
                except queue.Empty:
                    continue
                try:
                    inbox.accept(subject, data, now_ms=clock_ms())
                except EdilError as exc:  # refused, never used; the session goes on with the authentic messages
                    refused += 1
                    _log.warning("party %d refused a peer message: %s", party, exc)
            # Each peer's contribution must be shaped and opened as this party's program says; one that
            # is not names that peer (a numpy error, or blaming this party, would help the peer that sent it).
            own = _arrays_from_bytes(value)  # what the program sent, before ``outgoing``
            how, shapes = mpc.kinds_of(own), [a.shape for a in own]
            contribs: list[Any] = []
            for j in range(n):
                try:
                    c = _arrays_from_bytes(mine if j == party else got[j])
                    if mpc.kinds_of(c) != how or [a.shape for a in c] != shapes:
                        raise ShapeError("not shaped or opened as this round's contributions")
                except EdilError as exc:
                    if j == party:
                        raise ShapeError(f"masked session: this party's own contribution in round {len(sent)} does not fit ({exc})") from None
                    raise RuntimeTaskError(f"masked session: {BAD_PEER} party {j} ({peers[j].address}) in round {len(sent)}: {exc}") from None
                contribs.append(c)
            ob = _arrays_to_bytes(mpc.combine(contribs, how))  # encoded as the relay encodes an opening
            opened_c.append(commit_bytes(ob))
            done, value = sess.step(ob)
    finally:
        link.close(sid)
    return value, {"contributions": sent, "openings": opened_c, "received": inbox.received, "refused": refused}


# --- the job: what the journal keeps, and each party's view of an attempt -------------------------
@dataclass(frozen=True)
class MaskedJob:
    """A journaled Masked job (everything here is the data owner's and stays in its journal)."""

    n: int
    frac_bits: int
    params: dict[str, Any]
    layers: tuple[mpc.Layer, ...]
    arrays: tuple[np.ndarray, ...]  # per dense layer: public weights, or the secrets to share
    model_public: bool
    shares: tuple[np.ndarray, ...]  # the caller's input sharing (never sent as is)
    work_units: int
    key: bytes
    check: str = "replay"

    def to_bytes(self) -> bytes:
        return _wire.dumps(
            {
                "v": 2, "n": self.n, "frac_bits": self.frac_bits, "params": self.params,
                "layers": layers_to_wire(self.layers), "arrays": [array_to_bytes(a) for a in self.arrays],
                "model_public": self.model_public, "shares": [array_to_bytes(s) for s in self.shares],
                "work_units": self.work_units, "key": self.key, "check": self.check,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> MaskedJob:
        d = _wire.loads(data)
        try:
            if d.get("v") != 2:
                return cls._from_v1(d)
            return cls(
                int(d["n"]), int(d["frac_bits"]), dict(d["params"]), layers_from_wire(d["layers"]),
                tuple(array_from_bytes(a) for a in d["arrays"]), bool(d["model_public"]),
                tuple(array_from_bytes(s) for s in d["shares"]), int(d["work_units"]), bytes(d["key"]), str(d["check"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SerializationError(f"bad masked job record: {exc}") from None

    @classmethod
    def _from_v1(cls, d: dict[str, Any]) -> MaskedJob:
        """A job journaled before weights could be shared: a public model, as it was sent then."""
        from edil import Masked

        from ._task import model_from_bytes

        n, f = int(d["n"]), int(d["frac_bits"])
        layers, arrays = Masked(n, frac_bits=f).program(model_from_bytes(d["model"]), private_weights=False)
        return cls(n, f, dict(d["params"]), layers, tuple(arrays), True, tuple(array_from_bytes(s) for s in d["shares"]),
                   int(d["work_units"]), bytes(d["key"]), "replay")

    def _seed(self, job_id: bytes, attempt: int, purpose: bytes) -> bytes:
        return keccak256(b"EDIL/masked/" + purpose + self.key + bytes(job_id) + int(attempt).to_bytes(4, "big"))

    def plan(self) -> list[tuple[str, tuple[tuple[int, ...], ...]]]:
        return self.schedule()[0]

    def schedule(self) -> tuple[list[tuple[str, tuple[tuple[int, ...], ...]]], list[tuple[str, ...]]]:
        """The program's dealer material and how each round is opened (see :func:`edil.hazmat.mpc.schedule`)."""
        batch, features = self.shares[0].shape
        return mpc.schedule(self.layers, [a.shape for a in self.arrays], batch, features, self.frac_bits, n=self.n)

    def material(self, job_id: bytes, attempt: int, parties: Sequence[int] | None = None) -> list[list[tuple[np.ndarray, ...]]]:
        """The dealer's material of one attempt (fresh per attempt, reproducible by an auditor)."""
        return mpc.deal(self.plan(), self.n, self.frac_bits, seed=self._seed(job_id, attempt, b"dealer"), parties=parties)

    def dealt(self, job_id: bytes, attempt: int) -> Any:
        """The attempt's material with what each party is sent of it (seeds; corrections for the last)."""
        return mpc.deal_all(self.plan(), self.n, self.frac_bits, seed=self._seed(job_id, attempt, b"dealer"))

    def views(self, job_id: bytes, attempt: int) -> list[tuple[bytes, np.ndarray]]:
        """Each party's ``(model bytes, input share)`` for one attempt: a fresh sharing of both."""
        n = self.n
        with np.errstate(over="ignore"):
            zero = mpc.zero_sharing(self.shares[0].shape, n, seed=self._seed(job_id, attempt, b"input"))
            inputs = [np.asarray(s, dtype=_U64) + zero[i] for i, s in enumerate(self.shares)]
            per_party: list[list[np.ndarray]] = [[] for _ in range(n)]
            for j, a in enumerate(self.arrays):
                if self.model_public:
                    for i in range(n):
                        per_party[i].append(a)
                    continue
                fresh = mpc.zero_sharing(a.shape, n, seed=self._seed(job_id, attempt, b"weights" + j.to_bytes(4, "big")))
                fresh[0] = fresh[0] + np.asarray(a, dtype=_U64)
                for i in range(n):
                    per_party[i].append(fresh[i])
        return [(party_model_bytes(self.layers, per_party[i]), inputs[i]) for i in range(n)]


def replay(job: MaskedJob, party: int, model_bytes: bytes, share: np.ndarray, material: list[tuple[np.ndarray, ...]],
           openings: Sequence[bytes], sent: Sequence[bytes]) -> np.ndarray:
    """Re-run one party from its view; every contribution must match what it committed to.

    Raises:
        VerificationError: a contribution is not the protocol's, or the round count differs.
        ShapeError / SerializationError: the record does not fit the program.
    """
    layers, weights = party_model_from_bytes(model_bytes)
    it = iter(material)

    def dealer(kind: str, *shapes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        m = next(it, None)
        if m is None or any(a.shape != s for a, s in zip(m, mpc.material_shapes(kind, shapes))):
            raise ShapeError(f"dealer material mismatch for {kind} {shapes}")
        return m

    step = mpc.model(mpc.host_party(party, job.n, job.frac_bits, dealer), share, layers, weights)
    opened = (_arrays_from_bytes(o) for o in openings)
    out = mpc.run_party(step, opened, sent=sent, commit=contribution_commitment, consteq=consteq)
    return np.asarray(out, dtype=_U64)


def party_view(job: MaskedJob, transcript: Any, attempt: int, party: int) -> tuple[bytes, np.ndarray] | str:
    """The party's view of the recorded attempt (weights, input share), or why its transcript
    does not commit to that view (what every audit of a Masked party checks first)."""
    model_bytes, share = job.views(transcript.job_id, attempt)[party]
    if not consteq(commit_bytes(model_bytes), transcript.model_commitment):
        return "transcript commits to another model view"
    if not consteq(commit_bytes(array_to_bytes(share)), transcript.input_commitment):
        return "transcript commits to another input share"
    return model_bytes, share


@dataclass(frozen=True)
class RecordedView:
    """One party of a recorded Masked session as an auditor sees it (:func:`recorded_view`)."""

    job: MaskedJob
    record: dict[str, Any]
    party: int
    attempt: int
    model_bytes: bytes
    share: np.ndarray


def recorded_view(spec: bytes, output: bytes, nodes: Sequence[str], transcript: Any) -> RecordedView | str | None:
    """The audited party's view of the recorded attempt, re-derived from the journal.

    Returns:
        The :class:`RecordedView`; or why the transcript fails (its node was no party, or it
        commits to another view than the attempt's); or ``None`` for a record of an earlier
        protocol version (no views, or another dealer), which cannot be replayed nor held
        against the parties.

    Raises:
        EdilError / KeyError / TypeError / ValueError / IndexError: a record or job that does
            not decode (the callers' finding: the session cannot be replayed).
    """
    addrs = [n.lower() for n in nodes]
    if transcript.node.lower() not in addrs:
        return "node was not a party of the session"
    party = addrs.index(transcript.node.lower())
    rec = _wire.loads(output)
    if not isinstance(rec, dict) or "views" not in rec or rec.get("dealer") != DEALER:
        return None
    job = MaskedJob.from_bytes(spec)
    attempt = int(rec["attempt"])
    view = party_view(job, transcript, attempt, party)
    if isinstance(view, str):
        return view
    return RecordedView(job, rec, party, attempt, *view)


def audit_party(spec: bytes, output: bytes, nodes: Sequence[str], transcript: Any) -> str | None:
    """Why the party whose transcript this is fails its audit, or ``None`` when it passes.

    The auditor re-derives the party's view of the recorded attempt (input share, weights,
    dealer material) from the journal (:func:`recorded_view`), replays the party against the
    public openings and compares every commitment.
    """
    try:
        view = recorded_view(spec, output, nodes, transcript)
    except (EdilError, KeyError, TypeError, ValueError, IndexError) as exc:
        return f"masked session cannot be replayed ({type(exc).__name__}: {exc})"
    return view if not isinstance(view, RecordedView) else replay_recorded(view, transcript)


def replay_recorded(view: RecordedView, transcript: Any) -> str | None:
    """Why the party of ``view`` fails its full replay (every product recomputed), or ``None``."""
    try:
        job, rec, party = view.job, view.record, view.party
        material = job.material(transcript.job_id, view.attempt, parties=[party])[party]
        out = replay(job, party, view.model_bytes, view.share, material, [bytes(o) for o in rec["openings"]],
                     [bytes(c) for c in rec["contributions"][party]])
    except VerificationError as exc:
        return str(exc)
    except (EdilError, KeyError, TypeError, ValueError, IndexError) as exc:
        return f"masked session cannot be replayed ({type(exc).__name__}: {exc})"
    if not consteq(commit_bytes(array_to_bytes(out)), transcript.output_commitment):
        return "replayed party output differs"
    return None


# --- coordinator side -----------------------------------------------------------------------------
def new_job(scheme: Any, model: Any, x: Any, *, model_public: bool, key: bytes | None, check: str) -> MaskedJob:
    """A :class:`MaskedJob` for ``model`` on the shared input ``x`` of ``scheme``."""
    from edil import Masked, SharedTensor

    if not isinstance(scheme, Masked):
        raise UnsupportedOperationError(f"run_masked needs a Masked scheme, got {type(scheme).__name__}")
    if not isinstance(x, SharedTensor):
        raise UnsupportedOperationError(f"run_masked needs a SharedTensor input, got {type(x).__name__}")
    if check not in CHECKS:
        raise ParameterError(f"check must be one of {CHECKS}, got {check!r}")
    if key is not None and (not isinstance(key, bytes) or len(key) < 16):
        raise ParameterError("key must be at least 16 bytes")
    if len(x.shape) != 2 or x.shape[1] != model.in_features:
        raise ShapeError(f"model expects (batch, {model.in_features}) input, got {x.shape}")
    layers, arrays = scheme.program(model, private_weights=not model_public, bound=x.bound)
    shares = tuple(s.data for s in scheme.split(x))
    return MaskedJob(
        scheme.n_parties, scheme.frac_bits, dict(scheme.params), layers, tuple(arrays), bool(model_public), shares,
        int(model.work_units(x.shape[0])), key if key is not None else os.urandom(32), check,
    )


def run_masked_job(sched: Any, rec: Any) -> None:
    """Run (or resume) a journaled Masked job to completion or failure (see the module docstring)."""
    job = MaskedJob.from_bytes(rec.spec)
    jid = rec.job_id
    errors: list[str] = []
    caught: set[str] = set()
    for _ in range(sched.max_attempts):
        nodes = [a for a in sched._eligible(False, caught, respect_slots=False) if a not in caught][: job.n]  # noqa: SLF001
        if len(nodes) < job.n:
            errors.append(f"only {len(nodes)} eligible nodes for {job.n} parties")
            break
        # The attempt number is persisted before anything leaves, so no restart can reuse it.
        attempt = sched.journal.job(jid).attempts
        sched.journal.note_attempts(jid)
        views = job.views(jid, attempt)
        dealt = job.dealt(jid, attempt)
        material = dealt.material
        # Over a bus the parties talk to each other (the executor says it carries them), else through here.
        direct = bool(getattr(sched.executor, "peer_channel", False))
        judged: list[tuple[str, str]] | None = None
        products: list[Any] = []  # per party, what it committed to of its ring products
        try:
            if direct:
                outs, openings, contribs, judged = _direct_session(sched, jid, job, nodes, views, dealt, caught, products)
            else:
                outs, openings, contribs = _session(sched, jid, job, nodes, views, dealt, products)
        except (EdilError, Exception) as exc:  # noqa: BLE001 - any party failure restarts the session
            errors.append(f"attempt {attempt}: {exc}")
            continue
        epoch = sched.epoch()
        if judged is not None or job.check == "replay":
            cheaters = judged if judged is not None else _check_parties(job, nodes, views, material, openings, contribs, outs)
            if cheaters:
                for addr, why in cheaters:
                    sched.journal.record_fault(addr, epoch, jid, f"masked party caught in the job (attempt {attempt}): {why}")
                    sched._suspend(addr, "byzantine")  # noqa: SLF001
                    caught.add(addr)
                errors.append(f"attempt {attempt}: {len(cheaters)} party(ies) deviated from the protocol")
                sched.stats["masked_cheaters"] += len(cheaters)
                continue
        # The record keeps what an auditor needs to replay any one party: the attempt (its views
        # and material follow from the journaled job and the attempt), the public openings and a
        # commitment to every contribution each party sent.
        output = _wire.dumps(
            {"shares": [o[0] for o in outs], "attempt": attempt, "openings": openings, "contributions": contribs,
             "views": True, "checked": "replay" if direct else job.check, "dealer": DEALER,
             **({"products": products} if len(products) == len(nodes) else {})}
        )
        transcripts = [(addr, o[1], True) for addr, o in zip(nodes, outs)]
        if sched.journal.complete(jid, output=output, output_commitment=commit_bytes(output), nodes=nodes, epoch=epoch, transcripts=transcripts):
            sched.stats["completed"] += 1
        _release(sched, jid)
        return
    sched.journal.fail(jid, "masked session failed: " + "; ".join(errors))
    _release(sched, jid)


def _release(sched: Any, jid: bytes) -> None:
    """The job's result or failure is journaled: its dealer material sent by CID is unpinned (``gc`` removes it)."""
    if getattr(sched, "blobs", None) is not None:
        sched.stats["blob_unpins"] += sched.blobs.release(jid)


def _reply_bytes(body: Any, key: str) -> bytes:
    """A bytes field of a party's reply (never ``bytes(n)`` of a number a node chose: n zero bytes).

    Raises:
        SerializationError: the field is missing or not bytes.
    """
    v = body.get(key) if isinstance(body, dict) else None
    if not isinstance(v, bytes):
        raise SerializationError(f"a party's reply lacks the bytes of {key!r}")
    return v


def _products_bytes(body: Any) -> bytes | None:
    """A party's committed ring products as it sent them (checked by the auditor, not here), or ``None``."""
    data = body.get("products") if isinstance(body, dict) else None
    return bytes(data) if isinstance(data, bytes | bytearray) else None


def _check_parties(job: MaskedJob, nodes: list[str], views: list[tuple[bytes, np.ndarray]], material: list[Any],
                   openings: list[bytes], contribs: list[list[bytes]], outs: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    cheaters = []
    for i, addr in enumerate(nodes):
        try:
            out = replay(job, i, views[i][0], views[i][1], material[i], openings, contribs[i])
            if not consteq(commit_bytes(array_to_bytes(out)), commit_bytes(outs[i][0])):
                raise VerificationError("its output share is not the protocol's")
        except EdilError as exc:
            cheaters.append((addr, str(exc)))
    return cheaters


def _start_body(sched: Any, job: MaskedJob, sid: bytes, jid: bytes, epoch: int, party: int, addr: str,
                view: tuple[bytes, np.ndarray], dealt: Any) -> dict[str, Any]:
    """Party ``party``'s ``mpc_start`` (the node at ``addr``): its view (weights, input share) and its dealer material.

    Corrections (the last party's) over :data:`~edil.runtime._blobs.INPUT_INLINE_LIMIT` bytes
    travel by R1FS CID when the coordinator has a store (``sched.blobs``), as HE task inputs do:
    wrapped to that node's box key alone (they are its secret), pinned until the job's end. A
    store that refuses the put leaves them inline, as sealed as ever.
    """
    from ._blobs import INPUT_INLINE_LIMIT

    model_bytes, share = view
    material = material_to_wire(dealt, party)
    blobs = getattr(sched, "blobs", None)
    if blobs is not None and material["corrections"]:
        data = _wire.dumps(material["corrections"])
        if len(data) > INPUT_INLINE_LIMIT:
            try:
                cid = blobs.put_private(data, sched.card(addr).box_key, job=jid, name="mpc-material")
                material = {"seed": material["seed"], "corrections_cid": cid}
                sched.stats["material_by_cid"] += 1
            except EdilError:
                sched.stats["blob_fallbacks"] += 1
    return {
        "session": sid, "job_id": jid, "epoch": epoch, "party": party, "n": job.n, "frac_bits": job.frac_bits,
        "model": model_bytes, "share": array_to_bytes(share), "material": material,
        "params": job.params, "work_units": job.work_units,
    }


def _session(sched: Any, jid: bytes, job: MaskedJob, nodes: list[str], views: list[tuple[bytes, np.ndarray]],
             dealt: Any, products: list[Any] | None = None) -> tuple[list[tuple[bytes, bytes]], list[bytes], list[list[bytes]]]:
    epoch = sched.epoch()
    expected = job.schedule()[1]  # each round opened as the program says (sum or XOR), not as a party claims
    sid = keccak256(b"EDIL/mpc" + jid + sched._nonce())  # noqa: SLF001
    params_hash = commit_json(job.params)
    futs = [sched._send(addr, "mpc_start", _start_body(sched, job, sid, jid, epoch, i, addr, views[i], dealt))  # noqa: SLF001
            for i, addr in enumerate(nodes)]
    openings: list[bytes] = []
    contribs: list[list[bytes]] = [[] for _ in nodes]  # per party, per round: commitment to what it sent
    while True:
        msgs = []
        for addr, fut in zip(nodes, futs):
            try:
                reply = fut.result(timeout=sched.timeout_s)
                m = sched._open(addr, reply, ("mpc_contrib", "mpc_result"))  # noqa: SLF001
                _reply_bytes(m.body, "session")
                _reply_bytes(m.body, "contribution" if m.kind == "mpc_contrib" else "output")
                msgs.append(m)
            except Exception as exc:
                sched._suspend(addr, "timeouts" if isinstance(exc, TimeoutError) else "node_errors")  # noqa: SLF001
                for f in futs:
                    f.cancel()
                raise RuntimeTaskError(f"party {addr} failed: {type(exc).__name__}: {exc}") from exc
        kinds = {m.kind for m in msgs}
        if any(not consteq(bytes(m.body["session"]), sid) for m in msgs) or len(kinds) != 1:
            raise VerificationError("parties are out of step")
        if kinds == {"mpc_result"}:
            outs = []
            for i, (addr, m) in enumerate(zip(nodes, msgs)):
                out = bytes(m.body["output"])
                model_c, input_c = commit_bytes(views[i][0]), commit_bytes(array_to_bytes(views[i][1]))
                tr = sched._check_transcript(addr, m.body["transcript"], jid, epoch, params_hash, model_c, input_c, out, job.work_units)  # noqa: SLF001
                outs.append((out, tr))
                if products is not None:  # the party's committed ring products (None: a node that sends none)
                    products.append(_products_bytes(m.body))
            return outs, openings, contribs
        if len(openings) >= min(_MAX_ROUNDS, len(expected)):
            raise VerificationError("the session runs past the protocol's rounds")
        raw = [bytes(m.body["contribution"]) for m in msgs]
        for i, b in enumerate(raw):
            contribs[i].append(commit_bytes(b))
        arrays = [_arrays_from_bytes(b) for b in raw]
        if len({tuple(a.shape for a in arrs) for arrs in arrays}) != 1:
            raise ShapeError("parties sent contributions of different shapes")
        how = expected[len(openings)]
        if any(mpc.kinds_of(arrs) != how for arrs in arrays):
            raise VerificationError(f"a party's contribution in round {len(openings) + 1} is not opened as the protocol's")
        opened = mpc.combine(arrays, how)
        sched.stats["openings"] += 1
        ob = _arrays_to_bytes(opened)
        openings.append(ob)
        futs = [sched._send(addr, "mpc_step", {"session": sid, "opened": ob}) for addr in nodes]  # noqa: SLF001


# --- coordinator side of a direct session: starts out, output shares in, no opening through here --
def _simulate(job: MaskedJob, views: list[tuple[bytes, np.ndarray]], material: list[Any],
              expected: Sequence[tuple[str, ...]]) -> tuple[list[bytes], list[list[bytes]], list[bytes]]:
    """Every party run here in lockstep from its view: ``(openings, contribution commitments per
    party, output shares)``, what an honest session shows (the coordinator is the dealer and
    already holds every view, so this tells it nothing new).

    Raises:
        ShapeError / VerificationError: the views do not make one runnable session.
    """
    n = job.n
    progs = []
    for i in range(n):
        layers, weights = party_model_from_bytes(views[i][0])
        mats = iter(material[i])

        def dealer(kind: str, *shapes: tuple[int, ...], mats: Any = mats) -> tuple[np.ndarray, ...]:
            m = next(mats, None)
            if m is None or any(a.shape != s for a, s in zip(m, mpc.material_shapes(kind, shapes))):
                raise ShapeError(f"dealer material mismatch for {kind} {shapes}")
            return tuple(m)

        progs.append(mpc.model(mpc.host_party(i, n, job.frac_bits, dealer), views[i][1], layers, weights))
    openings: list[bytes] = []
    contribs: list[list[bytes]] = [[] for _ in range(n)]
    done: list[Any] = [None] * n
    with np.errstate(over="ignore"):
        sends: list[Any] = [None] * n
        while True:
            vals = []
            for i, prog in enumerate(progs):
                try:
                    vals.append(next(prog) if sends[i] is None else prog.send(sends[i]))
                except StopIteration as stop:
                    done[i] = np.asarray(stop.value, dtype=_U64)
            if len(vals) == 0:
                break
            if len(vals) != n or len(openings) >= min(_MAX_ROUNDS, len(expected)):
                raise VerificationError("the parties' programs disagree on the protocol's rounds")
            how = expected[len(openings)]
            if any(mpc.kinds_of(v) != how for v in vals):
                raise VerificationError(f"round {len(openings) + 1} is not opened as the protocol's")
            for i, v in enumerate(vals):
                contribs[i].append(contribution_commitment(v))
            opened = mpc.combine(vals, how)
            openings.append(_arrays_to_bytes(opened))
            arrays = tuple(np.asarray(o, dtype=_U64) for o in opened)
            sends = [arrays] * n
    return openings, contribs, [array_to_bytes(d) for d in done]


@dataclass(frozen=True)
class _Trace:
    contributions: tuple[bytes, ...]
    openings: tuple[bytes, ...]
    refused: int
    received: tuple[tuple[tuple[bytes, bytes], ...], ...]  # per round, per peer: (commitment, its signed statement)


def _trace_from_wire(obj: Any, n: int) -> _Trace:
    if not (isinstance(obj, dict) and set(obj) == {"contributions", "openings", "received", "refused"}
            and type(obj["refused"]) is int and 0 <= obj["refused"] < 1 << 32):
        raise SerializationError("masked session: malformed party trace")
    lists = (obj["contributions"], obj["openings"])
    if any(not isinstance(v, list) or len(v) > _MAX_ROUNDS or any(not isinstance(c, bytes) or len(c) != 32 for c in v) for v in lists):
        raise SerializationError("masked session: a party trace holds 32-byte commitments, one per round")
    got = obj["received"]
    if not (isinstance(got, list) and len(got) <= _MAX_ROUNDS and all(
            isinstance(r, list) and len(r) == n - 1 and all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[0], bytes) and len(e[0]) == 32
                and isinstance(e[1], bytes) and len(e[1]) == 64 for e in r) for r in got)):
        raise SerializationError("masked session: a party trace holds, per round, each peer's commitment and signed statement")
    received = tuple(tuple((bytes(e[0]), bytes(e[1])) for e in r) for r in got)
    return _Trace(tuple(lists[0]), tuple(lists[1]), obj["refused"], received)


def _sender_finding(session: bytes, rnd: int, sender: int, statements: list[tuple[int, bytes, bytes]]) -> str:
    """Why ``sender`` is blamed for round ``rnd`` (1-based), with its signed statements as the proof.

    ``statements``: ``(receiver, commitment, signature)`` that hold, at least one of them not the protocol's.
    """
    distinct = {d: (i, d, sig) for i, d, sig in statements}
    proof = "; ".join(f"to party {i}: {d.hex()} signed {sig.hex()}" for i, d, sig in distinct.values())
    if len(distinct) > 1:
        return (f"it equivocated in round {rnd}: it signed {len(distinct)} different contributions for one round "
                f"(proof, statements over session {bytes(session).hex()}: {proof})")
    return f"its signed contribution in round {rnd} is not the protocol's (statement over session {bytes(session).hex()}: {proof})"


def _judge(nodes: list[str], sim: tuple[list[bytes], list[list[bytes]], list[bytes]], traces: list[_Trace],
           outs: list[bytes], *, session: bytes, keys: Sequence[bytes]) -> list[tuple[str, str]]:
    """The parties that deviated, from their traces against the honest session.

    The first round where anything is not the protocol's names the parties to blame. In that
    round: a party whose own committed contribution is not the protocol's; a sender of whom a
    peer reports a statement (:func:`peer_statement`, signed by the sender) of another
    contribution than the protocol's: it sent that peer something else (two such statements
    that differ prove it equivocated; the finding quotes them); a party that reports a statement
    its sender did not sign; and, every contribution of that round being the protocol's, a party
    that reports another opening than the protocol's. An honest party is never named: every
    opening before that round was the protocol's, so its contribution is, and what it reports it
    received is what it was sent, signed by the sender.

    Args:
        nodes, sim, traces, outs: the parties, the honest session (:func:`_simulate`), their
            traces and their output shares.
        session: the session id.
        keys: each party's Ed25519 public key (its card's signing key).
    """
    openings, contribs, sim_outs = sim
    rounds, n = len(openings), len(nodes)
    for r in range(rounds):
        blame = {i: f"its contribution in round {r + 1} is not the protocol's" for i, t in enumerate(traces)
                 if not (r < len(t.contributions) and consteq(t.contributions[r], contribs[i][r]))}
        for i, t in enumerate(traces):
            if r >= len(t.received):
                blame.setdefault(i, f"its trace lacks what it received in round {r + 1}")
                continue
            for j, (digest, sig) in zip([j for j in range(n) if j != i], t.received[r]):
                if consteq(digest, contribs[j][r]):
                    continue
                if not statement_holds(keys[j], session, r + 1, j, digest, sig):
                    blame.setdefault(i, f"it reports a contribution of party {j} in round {r + 1} that party did not sign")
                    continue
                statements = [(k, d, g) for k, tk in enumerate(traces) if k != j and r < len(tk.received)
                              for (d, g) in [tk.received[r][j - (j > k)]] if statement_holds(keys[j], session, r + 1, j, d, g)]
                finding = _sender_finding(session, r + 1, j, statements)
                if "equivocated" in finding or j not in blame:  # a proof of equivocation says the most
                    blame[j] = finding
        if blame:
            return [(nodes[i], blame[i]) for i in sorted(blame)]
        want = commit_bytes(openings[r])
        liars = [i for i, t in enumerate(traces) if not (r < len(t.openings) and consteq(t.openings[r], want))]
        if liars:
            return [(nodes[i], f"it reports another opening of round {r + 1} than the protocol's contributions make") for i in liars]
    short = [i for i, t in enumerate(traces) if not len(t.contributions) == len(t.openings) == len(t.received) == rounds]
    if short:
        return [(nodes[i], f"its contribution in round {rounds + 1} is not the protocol's") for i in short]
    return [(nodes[i], "its output share is not the protocol's") for i in range(len(nodes))
            if not consteq(commit_bytes(outs[i]), commit_bytes(sim_outs[i]))]


def _gather(sched: Any, nodes: list[str], futs: list[Any], bound_s: float, wait_s: float, excluded: set[str]) -> list[bytes]:
    """Every party's reply, or an error that names the party to blame (suspended, kept off this job).

    A silent party is one that never answers: its peers give up ``wait_s`` after their last
    progress and say so; the coordinator then waits ``wait_s`` more for the rest.
    """
    t0 = time.monotonic()
    done, pending = concurrent.futures.wait(futs, timeout=bound_s, return_when=concurrent.futures.FIRST_EXCEPTION)
    if pending and any(f.exception() is not None for f in done):
        concurrent.futures.wait(pending, timeout=wait_s)
    failed = {a: f.exception() for a, f in zip(nodes, futs) if f.done() and f.exception() is not None}
    silent = [a for a, f in zip(nodes, futs) if not f.done()]
    if not failed and not silent:
        return [f.result() for f in futs]
    for f in futs:
        f.cancel()
    reports = "; ".join(f"{a}: {e}" for a, e in failed.items())
    if silent:
        for a in silent:
            sched._suspend(a, "timeouts")  # noqa: SLF001
            excluded.add(a)
        raise RuntimeTaskError(
            f"party {', '.join(silent)} went silent (no reply in {time.monotonic() - t0:.1f} s; a round waits {wait_s:g} s "
            f"for a peer){': ' + reports if reports else ''}"
        )
    own = [a for a, e in failed.items() if SILENT_PEER not in str(e) and BAD_PEER not in str(e)]
    named = [a for a in nodes if any((SILENT_PEER in str(e) or BAD_PEER in str(e)) and a.lower() in str(e).lower() for e in failed.values())]
    blamed = own or named or list(failed)
    for a in blamed:
        sched._suspend(a, "node_errors")  # noqa: SLF001
        excluded.add(a)
    raise RuntimeTaskError(f"party {', '.join(blamed)} failed the session: {reports}")


_HELD: weakref.WeakKeyDictionary[Any, dict[str, threading.Lock]] = weakref.WeakKeyDictionary()
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def _parties_held(sched: Any, nodes: Sequence[str]) -> Iterator[None]:
    """Hold this coordinator's lock of every party of a direct session, taken in one order, while it runs.

    A node is in a direct session from its start to its end and takes its next task after it. Two
    sessions on overlapping nodes whose starts reached those nodes in different orders would each
    wait for a node the other holds, until the peer timeout failed both; one at a time per node,
    in the order the locks are taken, they cannot (sessions on disjoint nodes still run side by side).
    """
    with _HELD_GUARD:
        locks = _HELD.setdefault(sched, {})
        held = [locks.setdefault(a, threading.Lock()) for a in sorted({n.lower() for n in nodes})]
    taken: list[threading.Lock] = []
    try:
        for lock in held:
            lock.acquire()
            taken.append(lock)
        yield
    finally:
        for lock in reversed(taken):
            lock.release()


def _direct_session(sched: Any, jid: bytes, job: MaskedJob, nodes: list[str], views: list[tuple[bytes, np.ndarray]], dealt: Any,
                    excluded: set[str], products: list[Any] | None = None,
                    ) -> tuple[list[tuple[bytes, bytes]], list[bytes], list[list[bytes]], list[tuple[str, str]]]:
    """A session whose parties exchange contributions over the bus (see the module docstring).

    Returns:
        ``(outputs with transcripts, openings, contribution commitments, cheaters)``.
    """
    epoch = sched.epoch()
    expected = job.schedule()[1]
    sid = keccak256(b"EDIL/mpc" + jid + sched._nonce())  # noqa: SLF001
    params_hash = commit_json(job.params)
    wait_s = float(sched.timeout_s)
    bound_s = wait_s * (min(len(expected), _MAX_ROUNDS) + 2)  # what the relay allows: one timeout per round
    cards = [sched.card(a) for a in nodes]
    peers = [[a.lower(), c.signing_key, c.box_key] for a, c in zip(nodes, cards)]
    bodies = [_start_body(sched, job, sid, jid, epoch, i, addr, views[i], dealt) for i, addr in enumerate(nodes)]
    with _parties_held(sched, nodes):
        deadline_ms = sched._now_ms() + int(1000 * bound_s)  # noqa: SLF001
        direct = {"peers": peers, "peer_timeout_ms": int(1000 * wait_s), "deadline_ms": deadline_ms}
        futs = [sched._send(addr, "mpc_start", {**bodies[i], **direct}) for i, addr in enumerate(nodes)]  # noqa: SLF001
        sched.stats["peer_sessions"] += 1
        try:
            sim = _simulate(job, views, dealt.material, expected)  # while the parties run
        except BaseException:
            for f in futs:
                f.cancel()
            raise
        replies = _gather(sched, nodes, futs, bound_s, wait_s, excluded)
    outs: list[tuple[bytes, bytes]] = []
    traces: list[_Trace] = []
    for i, (addr, reply) in enumerate(zip(nodes, replies)):
        try:
            m = sched._open(addr, reply, ("mpc_result",))  # noqa: SLF001
            if not consteq(_reply_bytes(m.body, "session"), sid):
                raise VerificationError("the reply belongs to another session")
            out = _reply_bytes(m.body, "output")
            traces.append(_trace_from_wire(m.body["trace"], job.n))
            model_c, input_c = commit_bytes(views[i][0]), commit_bytes(array_to_bytes(views[i][1]))
            tr = sched._check_transcript(addr, m.body["transcript"], jid, epoch, params_hash, model_c, input_c, out, job.work_units)  # noqa: SLF001
        except (EdilError, KeyError, TypeError, ValueError) as exc:
            sched._suspend(addr, "node_errors")  # noqa: SLF001
            excluded.add(addr)
            raise RuntimeTaskError(f"party {addr} sent a bad result: {type(exc).__name__}: {exc}") from None
        outs.append((out, tr))
        if products is not None:  # the party's committed ring products (None: a node that sends none)
            products.append(_products_bytes(m.body))
    sched.stats["openings"] += len(sim[0])
    sched.stats["peer_refused"] += sum(t.refused for t in traces)
    cheaters = _judge(nodes, sim, traces, [o[0] for o in outs], session=sid, keys=[c.signing_key for c in cards])
    return outs, sim[0], sim[1], cheaters


def masked_output(scheme: Any, jid: bytes, output: bytes) -> Any:
    """The recorded output shares of a finished job as a :class:`~edil.SharedTensor` of ``scheme``."""
    from edil import Share

    rec = _wire.loads(output)
    arrays = [array_from_bytes(b) for b in (rec["shares"] if isinstance(rec, dict) else rec)]  # a list: older records
    return scheme.join([Share(scheme.scheme_id, i, len(arrays), jid[:8], a) for i, a in enumerate(arrays)])
