"""``Replicated`` sessions on nodes: one party per node, no dealer, pairwise keys only the pairs know.

The flow (:func:`run_replicated_job`, from :meth:`Scheduler.run_replicated`):

1. ``rep_hello``: each of three nodes draws an X25519 key pair from its own randomness (the
   node's injected nonce source) and returns the public key, signed as every reply is.
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
coordinator that relays faithfully. The public keys travel through the coordinator; a
coordinator that substituted them could read the messages, which this first version does not
stop (the parties' identity keys could sign them: not done here). The model's weights are
public (``model_public``); shared weights are not supported on nodes yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edil import EdilError, RuntimeTaskError, SerializationError, ShapeError, VerificationError
from edil.hazmat import replicated as rep

from . import _wire
from ._deps import commit_bytes, commit_json, keccak256
from ._task import array_from_bytes, array_to_bytes

__all__ = ["KINDS", "audit_party", "handle", "run_replicated_job"]

#: Message kinds a node accepts for a replicated session.
KINDS = ("rep_hello", "rep_start", "rep_step")
_MSG_TAG = b"EDIL/replicated/messages/v1"
_SEED_TAG = b"EDIL/replicated/node-seed/v1"
_LAYER_TAGS = ("public", "poly", "flatten", "relu", "maxpool", "argmax")
_MAX_LAYERS, _MAX_COEFFS, _MAX_POOL_INDEX, _MAX_ROUNDS, _MAX_SESSIONS = 256, 64, 1 << 24, 4096, 16
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
            raise ValueError("layers")
        layers: list[rep.Layer] = []
        for la in raw:
            tag = la[0]
            if tag not in _LAYER_TAGS:
                raise ValueError(f"layer {tag!r}")
            if tag == "public":
                layers.append(("public", bool(la[1])))
            elif tag == "poly":
                if not 1 <= len(la[1]) <= _MAX_COEFFS:
                    raise ValueError("coefficients")
                layers.append(("poly", tuple(int(c) for c in la[1])))
            elif tag == "maxpool":
                rows = [tuple(int(v) for v in row) for row in la[1]]
                if not rows or len({len(r) for r in rows}) != 1 or sum(map(len, rows)) > _MAX_POOL_INDEX or min(min(r) for r in rows) < 0:
                    raise ValueError("pooling index")
                layers.append(("maxpool", tuple(rows)))
            else:
                layers.append((tag,))
        if len(weights) != 2 * sum(la[0] == "public" for la in layers):
            raise ValueError("weights")
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


def _sessions(node: Any) -> dict[bytes, _Party]:
    store: dict[bytes, _Party] = node.__dict__.setdefault("_replicated_sessions", {})
    return store


def handle(node: Any, kind: str, body: Any) -> bytes:
    """A node's answer to a replicated-session message (``node``: an :class:`EdgeNode`).

    Raises:
        SerializationError: a malformed body.
        VerificationError: keys or messages that do not belong to the session.
        EdilError: an unknown session.
    """
    sessions = _sessions(node)
    try:
        sid = bytes(body["session"])
        if kind == "rep_hello":
            party = int(body["party"])
            if party not in (0, 1, 2):
                raise ValueError("party")
            seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEED_TAG).derive(node._nonce() + node._nonce())  # noqa: SLF001
            while len(sessions) >= _MAX_SESSIONS:
                sessions.pop(next(iter(sessions)))
            sessions[sid] = _Party(sid, party, seed)
            public = sessions[sid].key.public_key().public_bytes_raw()
            return node._reply("rep_hello", {"session": sid, "public": public})  # noqa: SLF001
        sess = sessions.get(sid)
        if sess is None:
            raise EdilError("unknown replicated session")
        if kind == "rep_start":
            share = (array_from_bytes(bytes(body["share"][0])), array_from_bytes(bytes(body["share"][1])))
            if any(a.dtype != _U64 for a in share) or share[0].shape != share[1].shape:
                raise ValueError("share")
            sess.start([bytes(k) for k in body["publics"]], int(body["frac_bits"]), bytes(body["model"]), share)
            sess.meta = {"job_id": bytes(body["job_id"]), "epoch": int(body["epoch"]), "params": commit_json(body["params"]),
                         "model": commit_bytes(bytes(body["model"])), "input": commit_bytes(_pair_bytes(share)),
                         "work": int(body["work_units"]), "start": node._now_ms()}  # noqa: SLF001
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
    output = node._outgoing("mpc_result", _pair_bytes(out))  # noqa: SLF001
    m = sess.meta
    tr = node._sign(m["job_id"], m["epoch"], m["params"], m["model"], m["input"], output, m["work"], m["start"])  # noqa: SLF001
    node.completed += 1
    return node._reply("rep_result", {"session": sid, "job_id": m["job_id"], "output": output, "transcript": tr})  # noqa: SLF001


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
        RuntimeTaskError: fewer than three eligible nodes, or every attempt failed.
    """
    if output not in ("logits", "argmax"):
        raise ValueError(f"output must be 'logits' or 'argmax', got {output!r}")
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
            why = got.why if isinstance(got, _Blame) else "replicated party returned an output that is not its share"
            sched.journal.record_fault(addr, sched.epoch(), job_id, why)
            sched._suspend(addr, "byzantine")  # noqa: SLF001
            caught.add(addr)
    sched.journal.fail(job_id, "replicated session failed: " + "; ".join(errors))
    raise RuntimeTaskError("replicated session failed: " + "; ".join(errors))


@dataclass(frozen=True)
class _Blame:
    """A session's verdict that one party's signed reply is malformed (a public key, a message or an output pair)."""

    addr: str
    why: str


def audit_party(journal: Any, transcript: Any) -> str | None:
    """Why a replicated party's transcript fails its epoch audit, or ``None`` when it passes.

    What can be checked without the pairwise keys (which no one but the pairs holds, so a
    party cannot be replayed the way a ``Masked`` party is): the node was a party of the
    recorded session, its transcript commits to the output pair the result records for it, and
    the three recorded pairs form one replicated sharing. A party that computed a wrong share
    consistently with its neighbours' components is not caught here (semi-honest model).
    """
    result = journal.result(transcript.job_id)
    if result is None:
        return "replicated session has no recorded result"
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


def _session(sched: Any, jid: bytes, nodes: list[str], model_bytes: bytes, params: dict[str, Any], scheme: Any,
             secret: np.ndarray, work: int, seed: bytes) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[bytes]] | _Blame:
    epoch = sched.epoch()
    sid = keccak256(b"EDIL/replicated" + jid + sched._nonce())  # noqa: SLF001
    futs = [sched._send(a, "rep_hello", {"session": sid, "party": i}) for i, a in enumerate(nodes)]  # noqa: SLF001
    publics: list[bytes] = []
    for addr, m in zip(nodes, _collect(sched, nodes, futs, ("rep_hello",))):
        public = _field(m, "public", 32)
        try:  # a probe agreement (the key is discarded): a point of small order makes every agreement fail
            X25519PrivateKey.from_private_bytes(keccak256(b"EDIL/replicated/probe" + sid)).exchange(
                X25519PublicKey.from_public_bytes(public or b""))
        except ValueError:  # its peers would fail on it and be blamed in its place
            return _Blame(addr, f"party {addr}: its public key is not a 32-byte X25519 key of large order")
        publics.append(bytes(public or b""))
    pairs = _fresh_pairs(secret, seed)
    inputs = [_pair_bytes(p) for p in pairs]
    futs = [sched._send(a, "rep_start", {  # noqa: SLF001
        "session": sid, "job_id": jid, "epoch": epoch, "party": i, "publics": publics, "frac_bits": scheme.frac_bits,
        "model": model_bytes, "share": [array_to_bytes(pairs[i][0]), array_to_bytes(pairs[i][1])], "params": params,
        "work_units": work}) for i, a in enumerate(nodes)]
    for _ in range(_MAX_ROUNDS + 1):
        msgs = _collect(sched, nodes, futs, ("rep_round", "rep_result"))
        for addr, m in zip(nodes, msgs):
            if _field(m, "session") is None or (m.kind == "rep_round" and _field(m, "sealed") is None) or (
                    m.kind == "rep_result" and _field(m, "output") is None):
                return _Blame(addr, f"party {addr}: a malformed {m.kind} reply")
        if any(m.body["session"] != sid for m in msgs) or len({m.kind for m in msgs}) != 1:
            raise VerificationError("parties are out of step")
        if msgs[0].kind == "rep_result":
            outs, trs = [], []
            model_c, params_c = commit_bytes(model_bytes), commit_json(params)
            for i, (addr, m) in enumerate(zip(nodes, msgs)):
                out = m.body["output"]
                trs.append(sched._check_transcript(addr, m.body["transcript"], jid, epoch, params_c, model_c,  # noqa: SLF001
                                                   commit_bytes(inputs[i]), out, work))
                try:
                    outs.append(_pair_from_bytes(out))
                except SerializationError as exc:
                    return _Blame(addr, f"party {addr}: {exc}")
            return outs, trs
        sealed = [m.body["sealed"] for m in msgs]
        sched.stats["openings"] += 1
        # party i hears from its successor i + 1 (opaque to this relay)
        futs = [sched._send(a, "rep_step", {"session": sid, "sealed": sealed[(i + 1) % 3]}) for i, a in enumerate(nodes)]  # noqa: SLF001
    raise VerificationError("the session runs past the protocol's rounds")
