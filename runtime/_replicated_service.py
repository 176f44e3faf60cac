"""``Replicated`` sessions for a gateway's client: the client shares and reconstructs, the coordinator only relays.

:meth:`Scheduler.run_replicated` plays the data owner: it re-shares the input itself. A gateway must
not (it would hold a whole sharing), so a served request takes two steps:

1. :func:`open_sealed_session`: ``rep_hello`` to the three party nodes, bound to the service. Each
   node answers with a fresh X25519 session key signed by its chain key over (service, session,
   party index, key) (:func:`edil.hazmat.replicated.session_key_digest`). The coordinator checks
   the signatures too (a node that signs badly is blamed) and hands the :class:`SealedSession`
   (keys, signatures, nodes) to the client, which verifies them itself.
2. :func:`run_sealed_session`: the client has sealed each party's pair ``(x_i, x_{i+1})`` to that
   party's session key (:func:`edil.hazmat.replicated.seal_pair`, bound to the session, the request
   id and the party index). ``rep_start`` carries the sealed pair, the client's ephemeral public key
   and the request id; the node opens its pair, checks its peers' signed keys, runs the protocol
   (messages relayed as in every replicated session), and seals its output pair back to the
   client. The coordinator returns the three sealed outputs; it never holds a pair in the clear.

The journal records the job (public parameters), the three sealed output pairs and the signed
transcripts (each commits to the sealed pair its node received and the sealed pair it returned).
A session serves one request: its pairwise keys seed the zero-sharings, which must not serve two
inputs.

A client's bad input fails closed without blaming a node. A party whose sealed pair does not open
under its session key, or opens to a pair of another shape than the request's, answers
``rep_start`` with ``rep_refused``: the reason, the commitment to the sealed bytes it received, and
its chain-key signature over both and the session, party, request and client key
(:func:`edil.runtime._replicated_session.refusal_digest`). The coordinator checks the refusal (its
node, this job, the bytes it forwarded), tells the other parties to drop the session
(``rep_end``), records the failure in the journal and raises :class:`~edil.SerializationError`;
no node is suspended or recorded as faulty, so a client cannot knock honest nodes out.

Residual risk: a node that lies (refuses a pair that did open) is not caught. Neither the
coordinator nor the gateway can tell: neither can open a pair, and neither can check the node's
X25519 agreement without its session key. The client knows its pair was sealed correctly, but
cannot prove it without revealing the ephemeral key that opens all three pairs (the whole input).
Such a node only denies service to the requests it serves (it learns nothing more than an honest
party); its refusals are signed and journaled, and the gateway counts refusals per node
(``edil_gateway_input_refusals``), so one that refuses far more often than its peers stands out.
A verifiable refusal (the node proving, e.g. with a DLEQ proof of its agreement, that the bytes do
not open) would close this; it is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edil import AuthorizationError, EdilError, ParameterError, RuntimeTaskError, SerializationError, UnsupportedOperationError

from . import _wire
from ._deps import commit_bytes, keccak256
from ._replicated_session import PROTOCOL_VERSION, _Blame, _collect, _hello_replies, _Refusal, _relay, model_to_bytes, program_of

__all__ = ["SealedSession", "open_sealed_session", "run_sealed_session"]


@dataclass(frozen=True)
class SealedSession:
    """An opened session of three party nodes for one client request.

    Attributes:
        service_id: the service the keys were signed for.
        session: the session id (32 bytes).
        nodes: party ``i``'s node address, in party order.
        publics: party ``i``'s X25519 session public key.
        signatures: party ``i``'s chain-key signature of its key (65 bytes).
    """

    service_id: str
    session: bytes
    nodes: tuple[str, ...]
    publics: tuple[bytes, ...]
    signatures: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        """What a client needs: the session, and each party's node, key and signature (hex)."""
        return {
            "service": self.service_id, "session": self.session.hex(),
            "parties": [{"party": i, "node": n, "public": p.hex(), "signature": s.hex()}
                        for i, (n, p, s) in enumerate(zip(self.nodes, self.publics, self.signatures))],
        }


def _blame(sched: Any, job_id: bytes, blame: _Blame) -> None:
    sched.journal.record_fault(blame.addr, sched.epoch(), job_id, blame.why)
    sched._suspend(blame.addr, "byzantine")  # noqa: SLF001


def open_sealed_session(sched: Any, service_id: str, nodes: list[str], *, ttl_s: float = 120.0) -> SealedSession:
    """Ask three nodes for signed session keys, party ``i`` on ``nodes[i]`` (step 1 of the module docstring).

    Args:
        ttl_s: how long the nodes keep the session waiting for its ``rep_start`` (their clocks;
            a gateway passes its own session TTL and some slack).

    Raises:
        RuntimeTaskError: not three admitted nodes, a node that fails (one that refuses the hello's
            protocol version fails), one whose reply names another protocol version (it is
            suspended), or one whose key is not a usable X25519 key signed by its chain key (it is
            suspended and recorded as faulty).
    """
    try:
        nodes = [sched.card(a).address for a in nodes]
    except AuthorizationError as exc:
        raise RuntimeTaskError(f"a party node is not admitted: {exc}") from None
    if len(nodes) != 3 or len({a.lower() for a in nodes}) != 3:
        raise RuntimeTaskError(f"a replicated session needs three distinct nodes, got {len(set(nodes))}")
    sid = keccak256(b"EDIL/replicated/service-session" + service_id.encode() + sched._nonce())  # noqa: SLF001
    futs = [sched._send(a, "rep_hello", {"session": sid, "party": i, "version": PROTOCOL_VERSION, "service": service_id,  # noqa: SLF001
                                         "ttl_s": float(ttl_s)})
            for i, a in enumerate(nodes)]
    got = _hello_replies(sched, sid, service_id, nodes, _collect(sched, nodes, futs, ("rep_hello",)))
    if isinstance(got, _Blame):
        sched._suspend(got.addr, "byzantine" if got.fault else "protocol_version")  # noqa: SLF001
        raise RuntimeTaskError(got.why)
    publics, signatures = got
    return SealedSession(service_id, sid, tuple(nodes), tuple(publics), tuple(signatures))


def run_sealed_session(sched: Any, session: SealedSession, scheme: Any, model: Any, *, client: bytes, request: bytes,
                       sealed: list[bytes], batch: int, output: str = "logits", job_id: bytes) -> list[bytes]:
    """Run a client's sealed input on an opened session (step 2); returns the three sealed output pairs.

    Args:
        sched: the :class:`~edil.runtime.Scheduler`.
        session: from :func:`open_sealed_session` (used once).
        scheme: a :class:`~edil.Replicated` with the service's ``frac_bits`` (only its public
            parameters and model encoding are used; it shares nothing).
        model: the :class:`~edil.models.Sequential` (public weights).
        client: the client's ephemeral X25519 public key (32 bytes).
        request: the request id the client bound its seals to.
        sealed: party ``i``'s sealed input pair.
        batch: rows of the input (for the work units).
        output: ``"logits"`` or ``"argmax"``.
        job_id: the job's id in the journal.

    Raises:
        SerializationError: a party refused its sealed pair with a valid signed refusal (it did not
            open under the party's session key, or held a pair of another shape): the client's
            input is at fault, so no node is suspended or recorded as faulty. The message names
            the parties and their reasons, on one line.
        RuntimeTaskError: a party failed or misbehaved (the session cannot be resumed: the client opens another).
        ParameterError: not three sealed pairs, or a client key that is not 32 bytes (checked before
            any node is asked; not a SerializationError, which would read as a party's refusal).
        UnsupportedOperationError: ``client``, ``request`` or a sealed pair is not bytes.
    """
    if not all(isinstance(b, bytes | bytearray) for b in (client, request, *sealed)):
        raise UnsupportedOperationError("the client key, the request id and the sealed pairs must be bytes")
    if len(sealed) != 3 or len(client) != 32:
        raise ParameterError(f"three sealed pairs and a 32-byte client key are needed, got {len(sealed)} pairs and {len(client)} bytes")
    layers, weights = program_of(scheme, model, output=output)
    model_bytes = model_to_bytes(layers, weights)
    params = {**scheme.params, "output": output, "model": commit_bytes(model_bytes).hex(), "service": session.service_id}
    work = batch * int(model.in_features) * max(1, len(layers))
    sched.journal.add(job_id, "replicated", _wire.dumps({"params": params}))
    sched.journal.note_attempts(job_id)
    epoch, nodes, sid = sched.epoch(), list(session.nodes), session.session
    try:
        futs = [sched._send(a, "rep_start", {  # noqa: SLF001
            "session": sid, "job_id": job_id, "epoch": epoch, "party": i, "publics": list(session.publics),
            "signers": nodes, "signatures": list(session.signatures), "frac_bits": scheme.frac_bits, "model": model_bytes,
            "client": bytes(client), "request": bytes(request), "sealed_input": bytes(sealed[i]), "params": params,
            "shape": [int(batch), int(model.in_features)], "work_units": work}) for i, a in enumerate(nodes)]
        got = _relay(sched, sid, job_id, epoch, nodes, futs, model_bytes, params, [bytes(s) for s in sealed], work,
                     client=(session.service_id, bytes(request), bytes(client)))
    except (EdilError, Exception) as exc:  # noqa: BLE001 - any party failure ends this session
        sched.journal.fail(job_id, f"replicated session failed: {exc}")
        raise RuntimeTaskError(f"replicated session failed: {exc}") from None
    if isinstance(got, _Refusal):  # signed by the refusing nodes; none is at fault (module docstring)
        why = "; ".join(f"party {i} (node {n}) refused the client's sealed input: {r}: {m}"
                        for i, n, r, m in zip(got.parties, got.nodes, got.reasons, got.messages))
        sched.journal.fail(job_id, f"client input refused: {why}")
        sched.stats["input_refusals"] += 1
        raise SerializationError(" ".join(why.split()))
    if isinstance(got, _Blame):
        _blame(sched, job_id, got)
        sched.journal.fail(job_id, f"replicated session failed: {got.why}")
        raise RuntimeTaskError(f"replicated session failed: {got.why}")
    outs, transcripts = got
    record = _wire.dumps({"sealed": outs, "attempt": 0})
    sched.journal.complete(job_id, output=record, output_commitment=commit_bytes(record), nodes=nodes,
                           epoch=epoch, transcripts=[(a, t, True) for a, t in zip(nodes, transcripts)])
    sched.stats["completed"] += 1
    return outs

