"""``Replicated`` sessions on nodes: one party per node, no dealer, pairwise keys only the pairs know.

The flow (:func:`run_replicated_job`, from :meth:`Scheduler.run_replicated`):

1. ``rep_hello``: each of three nodes draws an X25519 key pair from its own randomness (the
   node's injected nonce source) and returns the public key with its chain-key signature. The
   hello and its reply name :data:`PROTOCOL_VERSION`; a node refuses a hello of another version
   and the coordinator leaves out a node whose reply names another (suspended, with no fault
   recorded: it may be an honest node of another release), so parties of different versions
   never start a session together.
2. ``rep_start``: the coordinator sends each node the three public keys, the model program
   (public weights), and its pair ``(x_i, x_{i+1})`` of a fresh replicated sharing of the input
   (the data owner's side re-shares the input for every session, so a retried session never
   gives a node a second pair of one sharing). The envelope is sealed to the node. The node
   derives its two pairwise keys with :func:`edil._replicated.pair_key` (X25519 with its two
   neighbours, HKDF): the coordinator never learns them.
3. Rounds (``rep_step``): every message of the protocol goes from party ``i`` to party ``i - 1``;
   the sender seals it with AES-256-GCM under a key derived from the pairwise key of the two
   (``HKDF(k_{i-1}, "messages")``), the round number as nonce and the session and round as
   associated data. The coordinator relays the sealed bytes, which it cannot read or alter
   without the receiver refusing them.
4. ``rep_result``: each node returns its output pair and a signed PoAI transcript (job, epoch,
   parameters, commitments to its model view, its input pair and its output pair), checked
   like a ``Masked`` party's. The coordinator checks that the three pairs form one replicated
   sharing (party ``i``'s second component is party ``i + 1``'s first) and assembles the output.

Threat model: :class:`edil.Replicated`'s (honest majority, semi-honest parties) with a
coordinator that relays faithfully. The public keys travel through the coordinator, so each node
signs its key with its chain key over (service, session, party index, key)
(:func:`edil.hazmat.replicated.session_key_digest`); the coordinator checks the signatures (a
node that signs badly is blamed) and every party checks its peers' against the addresses the
``rep_start`` names, refusing the session otherwise. A node knows no registry, so a coordinator
could still name a party of its own making; a gateway's client checks the addresses against the
service's nodes (:mod:`edil.runtime._replicated_service`). The model's weights are public
(``model_public``); shared weights are not supported on nodes yet.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edil import EdilError, ParameterError, RuntimeTaskError, SerializationError, ShapeError, VerificationError
from edil.hazmat import replicated as rep

from . import _wire
from ._deps import commit_bytes, commit_json, keccak256, recover_signer, sign_digest
from ._task import array_from_bytes, array_to_bytes

__all__ = ["KINDS", "PROTOCOL_VERSION", "audit_party", "handle", "run_replicated_job"]

#: Message kinds a node accepts for a replicated session.
KINDS = ("rep_hello", "rep_start", "rep_step", "rep_end")
#: The version of the session protocol, exchanged at ``rep_hello``: a node refuses a hello of another
#: version and the coordinator leaves out a node whose reply names another (or none), so parties that
#: would derive different pairwise streams never start a session together. Bump it with any change
#: the parties must agree on: the pair-key and PRF derivations (``v2`` in their tags in
#: ``edil._replicated``), the message sealing here, the rounds of the party programs.
PROTOCOL_VERSION = 2
_MSG_TAG = b"EDIL/replicated/messages/v1"
_SEED_TAG = b"EDIL/replicated/node-seed/v1"
_LAYER_TAGS = ("public", "poly", "flatten", "relu", "maxpool", "argmax")
_MAX_LAYERS, _MAX_COEFFS, _MAX_POOL_INDEX, _MAX_ROUNDS = 256, 64, 1 << 24, 4096
#: Sessions a node holds at once. At least a gateway's bound on open sessions
#: (:class:`edil.app._gateway_replicated.ReplicatedServing`), so that sessions the gateway holds
#: open are not pushed out here; beyond it, the oldest session not yet started goes first.
_MAX_SESSIONS = 256
#: Seconds a session with no ``rep_start`` yet is kept (a hello may ask for less: a gateway asks
#: for its own session TTL and a little slack), and the most a hello may ask for.
_HELLO_TTL_S, _MAX_HELLO_TTL_S = 120.0, 600.0
#: Seconds a started session is kept after its last message (a relay that stopped relaying).
_RUN_IDLE_S = 600.0
#: Why a node refuses a gateway client's sealed input pair (``rep_refused``): the client's fault, not the node's.
REFUSALS = ("sealed_input_unopened", "sealed_input_malformed")
_REFUSAL_TAG = b"EDIL/replicated/input-refusal/v1"
_U64 = np.uint64


# --- the model a party sees, on the wire ---------------------------------------------------------
def model_to_bytes(layers: tuple[rep.Layer, ...], weights: list[np.ndarray]) -> bytes:
    """A replicated model program with public weights (signed int64 weights, ring biases)."""
    wire = []
    for la in layers:
        if la[0] == "public":
            wire.append(["public", bool(la[1])])
        elif la[0] == "poly":
            wire.append(["poly", [int(c) for c in la[1]]])
        elif la[0] == "maxpool":
            wire.append(["maxpool", [list(map(int, row)) for row in la[1]]])
        else:
            wire.append([la[0]])
    return _wire.dumps({"layers": wire, "weights": [array_to_bytes(np.asarray(w)) for w in weights]})


def model_from_bytes(data: bytes) -> tuple[tuple[rep.Layer, ...], list[np.ndarray]]:
    """The inverse of :func:`model_to_bytes`, for untrusted bytes.

    Raises:
        SerializationError: anything that is not a well-formed public model program.
    """
    try:
        obj = _wire.loads(data)
        raw, weights = obj["layers"], [array_from_bytes(bytes(w)) for w in obj["weights"]]
        if not isinstance(raw, list) or len(raw) > _MAX_LAYERS:
            raise SerializationError("layers")
        layers: list[rep.Layer] = []
        for la in raw:
            tag = la[0]
            if tag not in _LAYER_TAGS:
                raise SerializationError(f"layer {tag!r}")
            if tag == "public":
                layers.append(("public", bool(la[1])))
            elif tag == "poly":
                if not 1 <= len(la[1]) <= _MAX_COEFFS:
                    raise SerializationError("coefficients")
                layers.append(("poly", tuple(int(c) for c in la[1])))
            elif tag == "maxpool":
                rows = [tuple(int(v) for v in row) for row in la[1]]
                if not rows or len({len(r) for r in rows}) != 1 or sum(map(len, rows)) > _MAX_POOL_INDEX or min(min(r) for r in rows) < 0:
                    raise SerializationError("pooling index")
                layers.append(("maxpool", tuple(rows)))
            else:
                layers.append((tag,))
        if len(weights) != 2 * sum(la[0] == "public" for la in layers):
            raise SerializationError("weights")
        return tuple(layers), weights
    except SerializationError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise SerializationError(f"bad replicated model: {exc}") from None


# --- sealing one party's messages to its predecessor ----------------------------------------------
def _message_key(pair_key: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_MSG_TAG).derive(pair_key))


def seal(key: AESGCM, session: bytes, rnd: int, arrays: tuple[np.ndarray, ...]) -> bytes:
    """Arrays sealed for the predecessor (nonce: the round; associated data: session and round)."""
    body = _wire.dumps([array_to_bytes(np.asarray(a, _U64)) for a in arrays])
    return key.encrypt(rnd.to_bytes(12, "big"), body, session + rnd.to_bytes(8, "big"))


def unseal(key: AESGCM, session: bytes, rnd: int, data: bytes, like: tuple[Any, ...]) -> tuple[np.ndarray, ...]:
    """What the successor sealed for this round, shaped as this party's own messages.

    Raises:
        VerificationError: bytes not sealed by the successor for this session and round.
        SerializationError: a message of the wrong count, shape or type.
    """
    try:
        body = key.decrypt(rnd.to_bytes(12, "big"), bytes(data), session + rnd.to_bytes(8, "big"))
    except InvalidTag:
        raise VerificationError(f"round {rnd}: a message not sealed by the successor for this session") from None
    try:
        arrays = tuple(array_from_bytes(bytes(b)) for b in _wire.loads(body))
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"bad replicated message: {exc}") from None
    if len(arrays) != len(like) or any(a.dtype != _U64 or a.shape != np.shape(m) for a, m in zip(arrays, like)):
        raise SerializationError("a replicated message does not fit the protocol's round")
    return arrays


# --- the node side ---------------------------------------------------------------------------------
class _Party:
    """One party of one session on a node: its X25519 key, then its pairwise keys and program."""

    def __init__(self, session: bytes, party: int, seed: bytes) -> None:
        self.session, self.party = session, party
        self.key = rep.party_private_key(seed, party)
        self.program: Any = None
        self.round: Any = None
        self.rounds = 0
        self.meta: dict[str, Any] = {}
        self.send_key: AESGCM | None = None
        self.recv_key: AESGCM | None = None
        self.service = ""  # the service its key was signed for ("" outside a gateway)
        self.client: bytes | None = None  # a gateway client's ephemeral X25519 key (its pairs are sealed to it)
        self.request = b""
        self.expires = math.inf  # node clock: forgotten after this (set by the store)
        self.ttl_s = _HELLO_TTL_S  # how long it waits for its rep_start

    def start(self, publics: list[bytes], frac_bits: int, model: bytes, share: tuple[np.ndarray, np.ndarray]) -> None:
        i = self.party
        if len(publics) != 3 or publics[i] != self.key.public_key().public_bytes_raw():
            raise VerificationError("the session's public keys do not hold this party's own")
        nxt, prv = (i + 1) % 3, (i - 1) % 3
        k_own = rep.pair_key(self.key, publics[nxt], i, publics[i], publics[nxt])  # pair (i, i+1)
        k_prev = rep.pair_key(self.key, publics[prv], prv, publics[prv], publics[i])  # pair (i-1, i)
        self.send_key, self.recv_key = _message_key(k_prev), _message_key(k_own)
        layers, weights = model_from_bytes(model)
        p = rep.host_party(i, frac_bits, {i: rep.KeyStream(k_own), prv: rep.KeyStream(k_prev)})
        self.program = rep.model(p, share, layers, weights)

    def advance(self, received: bytes | None) -> tuple[bool, Any]:
        """Run to the next round: ``(False, sealed message or b"")`` or ``(True, output pair)``."""
        with np.errstate(over="ignore"):
            try:
                if self.round is None:
                    self.round = next(self.program)
                else:
                    senders, msgs = self.round
                    if (self.party + 1) % 3 in senders:
                        if received is None or self.recv_key is None:
                            raise SerializationError("a round without the successor's message")
                        got = unseal(self.recv_key, self.session, self.rounds, received, msgs)
                    else:
                        got = tuple(np.zeros(np.shape(m), _U64) for m in msgs)
                    self.rounds += 1
                    if self.rounds > _MAX_ROUNDS:
                        raise ShapeError("the session runs past the protocol's rounds")
                    self.round = self.program.send(got)
            except StopIteration as stop:
                return True, stop.value
        senders, msgs = self.round
        if self.party not in senders or self.send_key is None:
            return False, b""
        return False, seal(self.send_key, self.session, self.rounds, tuple(np.asarray(m) for m in msgs))


def _check_peer_keys(node: Any, sess: _Party, publics: list[bytes], signers: Any, signatures: Any) -> None:
    """Refuse a session whose peers' keys are not signed by the chain keys of the addresses named for them.

    The addresses come from the coordinator (a node knows no registry), so this binds each relayed
    key to an identity: a relay that swapped a key must also swap the party for an identity of its own.

    Raises:
        VerificationError: a key not signed for this session, service and party by its address.
    """
    signers, signatures = [str(a) for a in signers], [bytes(s) for s in signatures]
    if len(publics) != 3 or len(signers) != 3 or len(signatures) != 3:
        raise VerificationError("a replicated session names three parties, their keys and their signatures")
    if signers[sess.party].lower() != node.address.lower():
        raise VerificationError("the session does not name this node as its party")
    for j in range(3):
        if j == sess.party:
            continue
        who = recover_signer(rep.session_key_digest(sess.service, sess.session, j, publics[j]), signatures[j])
        if who.lower() != signers[j].lower():
            raise VerificationError(f"party {j}'s session key is not signed by {signers[j]}")


class _SessionStore:
    """A node's replicated sessions, under a lock (a node may handle messages of several sessions
    at once: a hello evicting the oldest must not race a step finding its own).

    A session expires (node clock): one not started ``ttl_s`` after its hello, a started one
    :data:`_RUN_IDLE_S` after its last message. At :data:`_MAX_SESSIONS`, a hello first drops the
    expired, then the oldest session not yet started (a started one only when none is left), so a
    burst of hellos does not end sessions that are running.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[bytes, _Party] = {}

    def add(self, sess: _Party, now: float | None = None) -> None:
        with self._lock:
            if now is not None:
                sess.expires = now + sess.ttl_s
                for sid in [k for k, v in self._by_id.items() if v.expires < now]:
                    del self._by_id[sid]
            while len(self._by_id) >= _MAX_SESSIONS:
                idle = next((k for k, v in self._by_id.items() if v.program is None), None)
                self._by_id.pop(idle if idle is not None else next(iter(self._by_id)))
            self._by_id[sess.session] = sess

    def get(self, sid: bytes, now: float | None = None) -> _Party | None:
        """The session ``sid`` unless it expired (then it is dropped); ``now`` renews a started one."""
        with self._lock:
            sess = self._by_id.get(sid)
            if sess is None or now is None:
                return sess
            if sess.expires < now:
                del self._by_id[sid]
                return None
            if sess.program is not None:
                sess.expires = now + _RUN_IDLE_S
            return sess

    def pop(self, sid: bytes, default: None = None) -> _Party | None:
        with self._lock:
            return self._by_id.pop(sid, default)


_STORES_LOCK = threading.Lock()


def open_sessions(node: Any) -> int:
    """How many Replicated sessions ``node`` holds now (started or waiting for their start); 0 if it never had one."""
    store: _SessionStore | None = node.__dict__.get("_replicated_sessions")
    if store is None:
        return 0
    with store._lock:  # noqa: SLF001 - the store's own lock, in its own module
        return len(store._by_id)  # noqa: SLF001


def _sessions(node: Any) -> _SessionStore:
    with _STORES_LOCK:  # one store per node, however many threads ask first
        store: _SessionStore | None = node.__dict__.get("_replicated_sessions")
        if store is None:
            store = node.__dict__["_replicated_sessions"] = _SessionStore()
    return store


def handle(node: Any, kind: str, body: Any) -> bytes:
    """A node's answer to a replicated-session message (``node``: an :class:`EdgeNode`).

    Raises:
        SerializationError: a malformed body, or a hello of another :data:`PROTOCOL_VERSION` (or none).
        VerificationError: keys or messages that do not belong to the session.
        EdilError: an unknown session.
    """
    sessions = _sessions(node)
    try:
        sid = bytes(body["session"])
        if kind == "rep_hello":
            version = body.get("version")
            if type(version) is not int:
                raise SerializationError(f"a hello names no protocol version (an int), this node speaks {PROTOCOL_VERSION}")
            if version != PROTOCOL_VERSION:
                raise SerializationError(f"protocol version {version} requested, this node speaks {PROTOCOL_VERSION}")
            party = int(body["party"])
            if party not in (0, 1, 2):
                raise SerializationError("party")
            seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEED_TAG).derive(node._nonce() + node._nonce())  # noqa: SLF001
            service = body.get("service", "")
            if not isinstance(service, str) or len(service) > 256:
                raise SerializationError("service")
            ttl = body.get("ttl_s", _HELLO_TTL_S)
            if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 0 < ttl <= _MAX_HELLO_TTL_S:
                raise SerializationError("ttl_s")
            fresh = _Party(sid, party, seed)
            fresh.service, fresh.ttl_s = service, float(ttl)
            sessions.add(fresh, node.clock())
            public = fresh.key.public_key().public_bytes_raw()
            # Signed with the chain key: peers and a gateway's client check it against the node's
            # address, so a relay that swapped it for its own key is caught before anything is sealed.
            signature = sign_digest(rep.session_key_digest(service, sid, party, public), node.identity.chain_key)
            return node._reply("rep_hello", {"session": sid, "version": PROTOCOL_VERSION, "public": public,  # noqa: SLF001
                                             "signature": signature})
        if kind == "rep_end":  # the relay ended the session (a peer refused the client's input): drop it
            sessions.pop(sid, None)
            return node._reply("rep_ended", {"session": sid})  # noqa: SLF001
        sess = sessions.get(sid, node.clock())
        if sess is None:
            raise EdilError("unknown or expired replicated session")
        if kind == "rep_start":
            publics = [bytes(k) for k in body["publics"]]
            _check_peer_keys(node, sess, publics, body["signers"], body["signatures"])
            client = body.get("client")
            if client is not None:  # a gateway's client sealed this party's pair to its session key
                sess.client, sess.request = bytes(client), bytes(body["request"])
                seen = bytes(body["sealed_input"])
                shape = tuple(int(d) for d in body["shape"])
                try:
                    share = rep.open_pair(sess.key, sess.client, seen, to_party=True, session=sid, request=sess.request, party=sess.party)
                    if share[0].shape != shape:
                        raise SerializationError(f"the pair holds shape {share[0].shape}, the request says {shape}")
                except (VerificationError, SerializationError) as exc:
                    # The client's input, not this node, is at fault: say so, signed, and end the session (used once).
                    sessions.pop(sid, None)
                    reason = REFUSALS[0] if isinstance(exc, VerificationError) else REFUSALS[1]
                    return _refuse(node, sess, bytes(body["job_id"]), seen, reason, str(exc))
            else:
                share = (array_from_bytes(bytes(body["share"][0])), array_from_bytes(bytes(body["share"][1])))
                if any(a.dtype != _U64 for a in share) or share[0].shape != share[1].shape:
                    raise SerializationError("share")
                seen = _pair_bytes(share)
            sess.start(publics, int(body["frac_bits"]), bytes(body["model"]), share)
            sess.meta = {"job_id": bytes(body["job_id"]), "epoch": int(body["epoch"]), "params": commit_json(body["params"]),
                         "model": commit_bytes(bytes(body["model"])), "input": commit_bytes(seen),
                         "work": int(body["work_units"]), "start": node._now_ms()}  # noqa: SLF001
            sess.expires = node.clock() + _RUN_IDLE_S
            received = None
        else:
            received = bytes(body["sealed"]) if body.get("sealed") else None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise SerializationError(f"bad {kind} message: {exc}") from None
    node._before_work()  # noqa: SLF001
    done, out = sess.advance(received)
    if not done:
        return node._reply("rep_round", {"session": sid, "round": sess.rounds, "sealed": out})  # noqa: SLF001
    sessions.pop(sid, None)
    if sess.client is None:
        output = node._outgoing("mpc_result", _pair_bytes(out))  # noqa: SLF001
    else:  # sealed to the client: the relay (a gateway) never holds an output pair
        out = _pair_from_bytes(node._outgoing("mpc_result", _pair_bytes(out)))  # noqa: SLF001 - the hook sees bytes, as everywhere
        output = rep.seal_pair(sess.key, sess.client, out, to_party=False, session=sid, request=sess.request, party=sess.party)
    m = sess.meta
    tr = node._sign(m["job_id"], m["epoch"], m["params"], m["model"], m["input"], output, m["work"], m["start"])  # noqa: SLF001
    node.completed += 1
    return node._reply("rep_result", {"session": sid, "job_id": m["job_id"], "output": output, "transcript": tr})  # noqa: SLF001


def refusal_digest(service: str, session: bytes, party: int, request: bytes, client: bytes, sealed_c: bytes, reason: str) -> bytes:
    """The 32-byte digest a node signs (chain key) to refuse a client's sealed input pair.

    It names the service, session, party index, request id, the client's key, the commitment to
    the sealed bytes the node received and the reason (one of :data:`REFUSALS`), so the refusal is
    attributable to the node and cannot be moved to another request.
    """
    return keccak256(_REFUSAL_TAG + _wire.dumps([service, bytes(session), int(party), bytes(request), bytes(client), bytes(sealed_c), reason]))


def _refuse(node: Any, sess: _Party, job_id: bytes, sealed: bytes, reason: str, why: str) -> bytes:
    """A signed ``rep_refused`` reply: this party's client-sealed pair did not open or was malformed."""
    sealed_c = commit_bytes(sealed)
    digest = refusal_digest(sess.service, sess.session, sess.party, sess.request, sess.client or b"", sealed_c, reason)
    return node._reply("rep_refused", {  # noqa: SLF001
        "session": sess.session, "job_id": job_id, "party": sess.party, "reason": reason, "input": sealed_c,
        "message": " ".join(why.split())[:200], "signature": sign_digest(digest, node.identity.chain_key)})


def _pair_bytes(pair: Any) -> bytes:
    return _wire.dumps([array_to_bytes(np.asarray(pair[0], _U64)), array_to_bytes(np.asarray(pair[1], _U64))])


def _pair_from_bytes(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        a, b = (array_from_bytes(bytes(v)) for v in _wire.loads(data))
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"bad output pair: {exc}") from None
    if a.dtype != _U64 or b.dtype != _U64 or a.shape != b.shape:
        raise SerializationError("an output pair must be two ring arrays of one shape")
    return a, b


# --- the coordinator side ----------------------------------------------------------------------------------
def program_of(scheme: Any, model: Any, *, output: str = "logits") -> tuple[tuple[rep.Layer, ...], list[np.ndarray]]:
    """The replicated program of ``model`` with public weights (``output="argmax"`` appends the argmax)."""
    from edil import models

    spec, weights = scheme._model_spec(models.encode_model(model, scheme))  # noqa: SLF001
    if output == "argmax":
        spec = (*spec, ("argmax",))
    return spec, [np.asarray(w) for w in weights]


def run_replicated_job(sched: Any, scheme: Any, model: Any, x: Any, *, output: str = "logits",
                       job_id: bytes, key: bytes) -> Any:
    """Run one replicated inference on three nodes (module docstring); returns a tensor of ``scheme``.

    Raises:
        ParameterError: an ``output`` other than ``"logits"`` or ``"argmax"``.
        RuntimeTaskError: fewer than three eligible nodes, or every attempt failed.
    """
    if output not in ("logits", "argmax"):
        raise ParameterError(f"output must be 'logits' or 'argmax', got {output!r}")
    scheme.check(x)
    scheme.check_precision(model, getattr(x, "bound", None))
    layers, weights = program_of(scheme, model, output=output)
    model_bytes = model_to_bytes(layers, weights)
    params = {**scheme.params, "output": output, "model": commit_bytes(model_bytes).hex()}
    secret = scheme.open_ring(x)  # the data owner's side: it shared x, and re-shares it per session
    work = int(math.prod(x.shape)) * max(1, len(layers))
    sched.journal.add(job_id, "replicated", _wire.dumps({"params": params}))
    errors: list[str] = []
    caught: set[str] = set()
    for _ in range(sched.max_attempts):
        nodes = [a for a in sched._eligible(False, caught, respect_slots=False) if a not in caught][:3]  # noqa: SLF001
        if len(nodes) < 3:
            errors.append(f"only {len(nodes)} eligible nodes for 3 parties")
            break
        # The attempt number comes from the journal and is persisted before anything is sent, so a
        # job run again with its id and key (a retry after a failure) never re-deals a sharing.
        attempt = sched.journal.job(job_id).attempts
        sched.journal.note_attempts(job_id)
        try:
            got = _session(sched, job_id, nodes, model_bytes, params, scheme, secret, work,
                           keccak256(key + job_id + attempt.to_bytes(4, "big")))
        except (EdilError, Exception) as exc:  # noqa: BLE001 - any party failure restarts the session elsewhere
            errors.append(f"attempt {attempt}: {exc}")
            continue
        if isinstance(got, _Blame):
            blamed: list[str] = [got.addr]
            errors.append(f"attempt {attempt}: {got.why}")
        else:
            outs, transcripts = got
            # Party i's second component is party i + 1's first: a party that lied about both
            # of its components disagrees with both neighbours; one that lied about one cannot
            # be told from that neighbour, and both leave the job.
            edges = [(i, (i + 1) % 3) for i in range(3) if not np.array_equal(outs[i][1], outs[(i + 1) % 3][0])]
            common = set.intersection(*(set(e) for e in edges)) if edges else set()
            blamed = [nodes[i] for i in sorted(common or {j for e in edges for j in e})]
            if edges:
                errors.append(f"attempt {attempt}: output pairs that are not one replicated sharing ({len(edges)} disagreements)")
        if not blamed:
            components = np.stack([o[0] for o in outs])
            record = _wire.dumps({"shares": [_pair_bytes(o) for o in outs], "attempt": attempt})
            sched.journal.complete(job_id, output=record, output_commitment=commit_bytes(record), nodes=nodes,
                                   epoch=sched.epoch(), transcripts=[(a, t, True) for a, t in zip(nodes, transcripts)])
            sched.stats["completed"] += 1
            return scheme.from_components(components)
        for addr in blamed:
            caught.add(addr)
            if isinstance(got, _Blame) and not got.fault:  # another protocol version: out of the session, no fault
                sched._suspend(addr, "protocol_version")  # noqa: SLF001
                continue
            why = got.why if isinstance(got, _Blame) else "replicated party returned an output that is not its share"
            sched.journal.record_fault(addr, sched.epoch(), job_id, why)
            sched._suspend(addr, "byzantine")  # noqa: SLF001
    sched.journal.fail(job_id, "replicated session failed: " + "; ".join(errors))
    raise RuntimeTaskError("replicated session failed: " + "; ".join(errors))


@dataclass(frozen=True)
class _Blame:
    """A session's verdict that one party's signed reply is malformed (a public key, a message or an output pair).

    ``fault=False`` for a hello reply of another protocol version: the node may be honest and run
    another release, so it leaves the session and is suspended (``protocol_version``) but no
    fault is recorded against it.
    """

    addr: str
    why: str
    fault: bool = True


@dataclass(frozen=True)
class _Refusal:
    """Parties that refused a gateway client's sealed input pair with a valid signed refusal: the
    client's input is at fault, not the nodes (none is suspended or recorded as faulty).

    Attributes:
        parties: the refusing parties' indices.
        nodes: their node addresses.
        reasons: each one's reason (:data:`REFUSALS`).
        messages: each one's one-line detail (the node's words).
        signatures: each one's chain-key signature over :func:`refusal_digest`.
    """

    parties: tuple[int, ...]
    nodes: tuple[str, ...]
    reasons: tuple[str, ...]
    messages: tuple[str, ...]
    signatures: tuple[bytes, ...]


def _check_refusal(m: Any, i: int, addr: str, sid: bytes, jid: bytes, client: tuple[str, bytes, bytes], sealed: bytes) -> str | None:
    """Why party ``i``'s ``rep_refused`` reply is not a valid refusal of ``sealed``, or ``None``."""
    body = m.body if isinstance(m.body, dict) else {}
    reason, message, party, signature = body.get("reason"), body.get("message"), body.get("party"), _field(m, "signature", 65)
    if reason not in REFUSALS or not isinstance(message, str) or type(party) is not int or party != i:
        return "a malformed refusal"
    if _field(m, "session") != sid or _field(m, "job_id") != jid or _field(m, "input") != commit_bytes(sealed) or signature is None:
        return "a refusal of another session, job or input"
    service, request, key = client
    try:
        signer = recover_signer(refusal_digest(service, sid, i, request, key, commit_bytes(sealed), str(reason)), signature)
    except VerificationError:
        signer = ""
    return None if signer.lower() == addr.lower() else "a refusal not signed by its chain key"


def audit_party(journal: Any, transcript: Any) -> str | None:
    """Why a replicated party's transcript fails its epoch audit, or ``None`` when it passes.

    What can be checked without the pairwise keys (which no one but the pairs holds, so a
    party cannot be replayed the way a ``Masked`` party is): the node was a party of the
    recorded session, its transcript commits to the output pair the result records for it, and
    the three recorded pairs form one replicated sharing. A party that computed a wrong share
    consistently with its neighbours' components is not caught here (semi-honest model).

    A gateway client's session records each party's output pair sealed to the client: the
    transcript must commit to the recorded sealed pair; only the client, which opens the pairs,
    checks that they form one sharing (and names the party whose copies disagree).
    """
    result = journal.result(transcript.job_id)
    if result is None:
        return "replicated session has no recorded result"
    try:
        record = _wire.loads(result.output)
        if isinstance(record, dict) and "sealed" in record:
            sealed = [bytes(b) for b in record["sealed"]]
            index = [n.lower() for n in result.nodes].index(transcript.node.lower())
            if len(sealed) != 3 or commit_bytes(sealed[index]) != transcript.output_commitment:
                return "transcript does not commit to the recorded sealed output pair"
            return None
    except (KeyError, TypeError, ValueError, IndexError):
        return "the session record does not name this party's output"
    try:
        shares = [bytes(b) for b in _wire.loads(result.output)["shares"]]
        pairs = [_pair_from_bytes(b) for b in shares]
        index = [n.lower() for n in result.nodes].index(transcript.node.lower())
    except (KeyError, TypeError, ValueError, IndexError, SerializationError):
        return "the session record does not name this party's output"
    if len(pairs) != 3 or commit_bytes(shares[index]) != transcript.output_commitment:
        return "transcript does not commit to the recorded output pair"
    if not all(np.array_equal(pairs[i][1], pairs[(i + 1) % 3][0]) for i in range(3)):
        return "the recorded output pairs are not one replicated sharing"
    return None


def _fresh_pairs(secret: np.ndarray, seed: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """A fresh replicated sharing of ``secret`` (ring values) from ``seed``: each party's pair."""
    s = rep.KeyStream(seed)
    x0, x1 = s.uniform(secret.shape), s.uniform(secret.shape)
    with np.errstate(over="ignore"):
        c = [x0, x1, secret - x0 - x1]
    return [(c[i], c[(i + 1) % 3]) for i in range(3)]


def _collect(sched: Any, nodes: list[str], futs: list[Any], kinds: tuple[str, ...]) -> list[Any]:
    msgs = []
    for addr, fut in zip(nodes, futs):
        try:
            msgs.append(sched._open(addr, fut.result(timeout=sched.timeout_s), kinds))  # noqa: SLF001
        except Exception as exc:
            sched._suspend(addr, "timeouts" if isinstance(exc, TimeoutError) else "node_errors")  # noqa: SLF001
            for f in futs:
                f.cancel()
            raise RuntimeTaskError(f"party {addr} failed: {type(exc).__name__}: {exc}") from exc
    return msgs


def _field(m: Any, key: str, size: int | None = None) -> bytes | None:
    """A bytes field of a node's reply, or ``None`` (never ``bytes(n)`` of a number the node chose: n zero bytes)."""
    v = m.body.get(key) if isinstance(m.body, dict) else None
    return v if isinstance(v, bytes) and (size is None or len(v) == size) else None


def _hello_replies(sched: Any, sid: bytes, service: str, nodes: list[str], msgs: list[Any]) -> tuple[list[bytes], list[bytes]] | _Blame:
    """The parties' session keys and their signatures from ``rep_hello`` replies, or the first party to blame.

    Each reply must name :data:`PROTOCOL_VERSION` (an int), and its key must be a usable X25519 key
    signed, for this session, service and party index, by the chain key of the node that sent it.
    """
    publics: list[bytes] = []
    signatures: list[bytes] = []
    for i, (addr, m) in enumerate(zip(nodes, msgs)):
        version = m.body.get("version") if isinstance(m.body, dict) else None
        if type(version) is not int or version != PROTOCOL_VERSION:
            spoken = f"protocol version {version}" if type(version) is int else "no protocol version (an int)"
            return _Blame(addr, f"party {addr}: its hello names {spoken}, this coordinator speaks {PROTOCOL_VERSION}", fault=False)
        public, signature = _field(m, "public", 32), _field(m, "signature", 65)
        try:  # a probe agreement (the key is discarded): a point of small order makes every agreement fail
            X25519PrivateKey.from_private_bytes(keccak256(b"EDIL/replicated/probe" + sid)).exchange(
                X25519PublicKey.from_public_bytes(public or b""))
        except ValueError:  # its peers would fail on it and be blamed in its place
            return _Blame(addr, f"party {addr}: its public key is not a 32-byte X25519 key of large order")
        try:
            signer = recover_signer(rep.session_key_digest(service, sid, i, bytes(public or b"")), signature or b"")
        except VerificationError:
            signer = ""
        if signer.lower() != addr.lower():
            return _Blame(addr, f"party {addr}: its session key is not signed by its chain key")
        publics.append(bytes(public or b""))
        signatures.append(bytes(signature or b""))
    return publics, signatures


def _session(sched: Any, jid: bytes, nodes: list[str], model_bytes: bytes, params: dict[str, Any], scheme: Any,
             secret: np.ndarray, work: int, seed: bytes) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[bytes]] | _Blame:
    epoch = sched.epoch()
    sid = keccak256(b"EDIL/replicated" + jid + sched._nonce())  # noqa: SLF001
    futs = [sched._send(a, "rep_hello", {"session": sid, "party": i, "version": PROTOCOL_VERSION})  # noqa: SLF001
            for i, a in enumerate(nodes)]
    got = _hello_replies(sched, sid, "", nodes, _collect(sched, nodes, futs, ("rep_hello",)))
    if isinstance(got, _Blame):
        return got
    publics, signatures = got
    pairs = _fresh_pairs(secret, seed)
    inputs = [_pair_bytes(p) for p in pairs]
    futs = [sched._send(a, "rep_start", {  # noqa: SLF001
        "session": sid, "job_id": jid, "epoch": epoch, "party": i, "publics": publics, "signers": list(nodes),
        "signatures": signatures, "frac_bits": scheme.frac_bits,
        "model": model_bytes, "share": [array_to_bytes(pairs[i][0]), array_to_bytes(pairs[i][1])], "params": params,
        "work_units": work}) for i, a in enumerate(nodes)]
    relayed = _relay(sched, sid, jid, epoch, nodes, futs, model_bytes, params, inputs, work)
    if isinstance(relayed, _Blame):
        return relayed
    if isinstance(relayed, _Refusal):  # not reached: _relay blames a refusal of a session without a client
        return _Blame(relayed.nodes[0], "a refusal in a session without a client")
    outs = []
    for addr, out in zip(nodes, relayed[0]):
        try:
            outs.append(_pair_from_bytes(out))
        except SerializationError as exc:
            return _Blame(addr, f"party {addr}: {exc}")
    return outs, relayed[1]


def _relay(sched: Any, sid: bytes, jid: bytes, epoch: int, nodes: list[str], futs: list[Any], model_bytes: bytes,
           params: dict[str, Any], inputs: list[bytes], work: int, *,
           client: tuple[str, bytes, bytes] | None = None) -> tuple[list[bytes], list[bytes]] | _Blame | _Refusal:
    """Relay a started session's rounds to its end: ``(outputs, transcripts)`` as the parties sent them,
    each transcript checked against the job, the model and ``inputs[i]`` (what party ``i`` was given).

    With ``client`` (service, request id, client key: a gateway client's sealed inputs), a party may
    answer ``rep_start`` with a signed refusal of its sealed pair: the session ends (its peers are
    told to drop it) and the :class:`_Refusal` is returned; a refusal that is not valid, or one in
    a later round or a session without a client, blames its node.
    """
    for rnd in range(_MAX_ROUNDS + 1):
        msgs = _collect(sched, nodes, futs, ("rep_round", "rep_result", "rep_refused"))
        for addr, m in zip(nodes, msgs):
            if _field(m, "session") is None or (m.kind == "rep_round" and _field(m, "sealed") is None) or (
                    m.kind == "rep_result" and _field(m, "output") is None):
                return _Blame(addr, f"party {addr}: a malformed {m.kind} reply")
        refused = [i for i, m in enumerate(msgs) if m.kind == "rep_refused"]
        if refused:
            for i in refused:
                why = "an unexpected refusal" if client is None or rnd else _check_refusal(msgs[i], i, nodes[i], sid, jid, client, inputs[i])
                if why is not None:
                    return _Blame(nodes[i], f"party {nodes[i]}: {why}")
            for i, a in enumerate(nodes):  # the others started: let them drop the session now (no reply awaited)
                if i not in refused:
                    sched._send(a, "rep_end", {"session": sid})  # noqa: SLF001
            return _Refusal(tuple(refused), tuple(nodes[i] for i in refused), tuple(str(msgs[i].body["reason"]) for i in refused),
                            tuple(str(msgs[i].body["message"]) for i in refused), tuple(bytes(msgs[i].body["signature"]) for i in refused))
        if any(m.body["session"] != sid for m in msgs) or len({m.kind for m in msgs}) != 1:
            raise VerificationError("parties are out of step")
        if msgs[0].kind == "rep_result":
            outs, trs = [], []
            model_c, params_c = commit_bytes(model_bytes), commit_json(params)
            for i, (addr, m) in enumerate(zip(nodes, msgs)):
                out = m.body["output"]
                trs.append(sched._check_transcript(addr, m.body["transcript"], jid, epoch, params_c, model_c,  # noqa: SLF001
                                                   commit_bytes(inputs[i]), out, work))
                outs.append(out)
            return outs, trs
        sealed = [m.body["sealed"] for m in msgs]
        sched.stats["openings"] += 1
        # party i hears from its successor i + 1 (opaque to this relay)
        futs = [sched._send(a, "rep_step", {"session": sid, "sealed": sealed[(i + 1) % 3]}) for i, a in enumerate(nodes)]  # noqa: SLF001
    raise VerificationError("the session runs past the protocol's rounds")
