"""Replicated (3-party) services at the gateway: shares in, shares out, sealed end to end.

A ``replicated`` service has three replicas, the three parties of a session: party ``i`` runs on
the ``i``-th replica address in sorted order (the order the service lists them in). Its spec's
redundancy is 1: the output shares' two copies (each share is held by two parties) are what the
client compares.

A request takes two calls, both relayed by the gateway's worker thread (the only thread that
calls the scheduler):

* ``POST /v1/services/{id}:session``: the three nodes draw fresh X25519 session keys and sign
  them with their chain keys for this service, session and party index
  (:func:`edil.runtime.open_sealed_session`); the reply lists each party's node, key and
  signature, which the client checks against the node addresses before it seals anything.
* ``POST /v1/services/{id}:predict`` with a :class:`ReplicatedPredictRequest`: the three pairs of
  the client's replicated sharing, each sealed to its party's session key, and the client's
  ephemeral public key. The gateway forwards each sealed pair in its party's ``rep_start``
  (:func:`edil.runtime.run_sealed_session`) and returns the three output pairs the nodes sealed
  back to the client (:class:`ReplicatedPredictReply`). A session serves one request.

Sessions are bounded so that one client cannot push out others': each source address may hold
``max_per_client`` open sessions (beyond them ``:session`` answers 429), the gateway holds
``max_sessions`` in all (then 503), and a session not used within ``session_ttl_s`` is forgotten.
Nothing open is ever evicted for a newcomer, and the nodes keep a session a little longer than the
gateway does, with room for more than the gateway holds (:data:`edil.runtime._replicated_session._MAX_SESSIONS`).
Behind a proxy, every client has the proxy's address: the bound is then the proxy's.

A sealed pair that its party cannot open (or that opens to a pair of another shape) is the
client's fault: the party answers with a signed refusal, no node is suspended, and ``:predict``
answers 422 naming the party and the reason. A node that falsely claims such a refusal cannot be
told apart here (see :mod:`edil.runtime._replicated_service`); refusals are counted per node.

The gateway holds the session keys (public), their signatures, sealed pairs it cannot open and
the model (public on the nodes); never a pair in the clear, never a key that opens one.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Annotated, Any

import msgspec
from prometheus_client import Counter

from edil import ParameterError, Replicated, SchemeMismatchError, SerializationError, ShapeError, UnsupportedOperationError
from edil.client import GatewayError
from edil.runtime import SealedSession, open_sealed_session, run_sealed_session

__all__ = ["ReplicatedPredictReply", "ReplicatedPredictRequest", "ReplicatedServing", "sealed_pair_size"]

#: Bound on one sealed pair (each party's; 16 bytes per input element and a small header).
MAX_SEALED_PAIR = 64 << 20


class ReplicatedPredictRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``:predict`` for a ``replicated`` service.

    Attributes:
        scheme: ``"replicated"``.
        session: the session id from ``:session`` (32 bytes).
        request: the request id the client bound its seals to (16 to 64 bytes).
        client: the client's ephemeral X25519 public key (32 bytes).
        shape: the input's shape ``[batch, in_features]``.
        sealed: party ``i``'s pair of components, sealed to party ``i``'s session key.
    """

    scheme: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    session: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    request: Annotated[bytes, msgspec.Meta(min_length=16, max_length=64)]
    client: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    shape: Annotated[list[int], msgspec.Meta(min_length=2, max_length=2)]
    sealed: Annotated[list[Annotated[bytes, msgspec.Meta(max_length=MAX_SEALED_PAIR)]], msgspec.Meta(min_length=3, max_length=3)]


class ReplicatedPredictReply(msgspec.Struct):
    """The reply: each party's output pair sealed to the client's key, and where it ran.

    Attributes:
        sealed: party ``i``'s output pair (open with the client's ephemeral key).
        job_id: the runtime job (hex), whose transcripts are in the journal.
        nodes: party ``i``'s node.
    """

    sealed: list[bytes]
    job_id: str
    nodes: list[str]


def sealed_pair_size(shape: tuple[int, ...]) -> int:
    """Bytes of one sealed pair of ``shape`` (header, two uint64 arrays, the AES-GCM tag)."""
    n = 1
    for d in shape:
        n *= d
    return 5 + 4 * len(shape) + 16 * n + 16


def _decode(body: bytes, content_type: str) -> ReplicatedPredictRequest:
    kind = content_type.split(";")[0].strip().lower()
    try:
        if kind in ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack"):
            return msgspec.msgpack.decode(body, type=ReplicatedPredictRequest)
        if kind == "application/json":
            return msgspec.json.decode(body, type=ReplicatedPredictRequest)
    except msgspec.DecodeError as exc:
        raise SerializationError(f"bad replicated predict body: {exc}") from None
    raise GatewayError(f"the body must be application/msgpack or application/json, got {kind or 'no content type'!r}", status=415)


class ReplicatedServing:
    """The gateway's replicated services: open sessions and run sealed requests (module docstring).

    Args:
        gateway: the :class:`~edil.app._gateway.Gateway`.
        session_ttl_s: an opened session not used within this is forgotten (its nodes drop it
            :data:`NODE_TTL_SLACK_S` later).
        max_sessions: sessions held open at once, all clients together (beyond it ``:session`` answers 503).
        max_per_client: sessions one client (source address) may hold open at once (beyond it 429).

    Raises:
        ParameterError: not ``0 < session_ttl_s <= 300`` and ``1 <= max_per_client <= max_sessions``.
    """

    #: Seconds the nodes keep a session after the gateway forgets it (clock skew, a request in flight).
    NODE_TTL_SLACK_S = 10.0

    def __init__(self, gateway: Any, *, session_ttl_s: float = 30.0, max_sessions: int = 128, max_per_client: int = 8) -> None:
        if not 0 < session_ttl_s <= 300 or max_sessions < 1 or not 1 <= max_per_client <= max_sessions:
            raise ParameterError("need 0 < session_ttl_s <= 300 and 1 <= max_per_client <= max_sessions")
        self.gateway, self.session_ttl_s, self.max_sessions, self.max_per_client = gateway, session_ttl_s, max_sessions, max_per_client
        self._sessions: dict[bytes, tuple[SealedSession, float, str]] = {}  # id -> (session, expiry, client)
        self._opening: dict[str, int] = {}  # client -> sessions being opened (slots held while the nodes answer)
        self._schemes: dict[int, Replicated] = {}
        self._lock = threading.Lock()
        self.m_refusals = Counter("edil_gateway_input_refusals", "Client inputs a party refused (did not open or malformed), per node",
                                  ["service", "node"], registry=gateway.metrics)

    def serves(self, service_id: str) -> bool:
        """Whether ``service_id`` is a replicated service (unknown ids: no)."""
        try:
            state = self.gateway.services.get(service_id)
        except Exception:  # noqa: BLE001 - the HE path answers for a directory that cannot
            return False
        return state is not None and str(state.spec.scheme).lower() == "replicated"

    def _service(self, service_id: str) -> tuple[Any, Any, list[str]]:
        state = self.gateway.state(service_id)
        if str(state.spec.scheme).lower() != "replicated":
            raise UnsupportedOperationError(f"service {service_id!r} runs {state.spec.scheme!r}, not 'replicated'")
        parties = sorted(state.replicas)
        admitted = {a.lower() for a in self.gateway.scheduler.nodes}
        if len(parties) != 3 or any(p.lower() not in admitted for p in parties):
            raise GatewayError(f"service {service_id!r} needs its 3 party replicas admitted, has {len(parties)} placed ({state.state})",
                               status=503)
        model = self.gateway._model(state.spec.model_cid)  # noqa: SLF001 - the gateway's model cache
        return state, model, parties

    def _params(self, state: Any) -> tuple[int, str]:
        params = dict(getattr(state.spec, "params", None) or {})
        frac_bits, output = params.get("frac_bits", 16), params.get("output", "logits")
        if not isinstance(frac_bits, int) or isinstance(frac_bits, bool) or output not in ("logits", "argmax"):
            raise GatewayError(f"service {state.service_id!r} has bad replicated parameters", status=503)
        return frac_bits, output

    def _scheme(self, frac_bits: int) -> Replicated:
        with self._lock:
            s = self._schemes.get(frac_bits)
            if s is None:  # only its public parameters and model encoding are used: it shares nothing
                s = self._schemes[frac_bits] = Replicated(frac_bits=frac_bits)
            return s

    def _wait(self, fn: Any) -> Any:
        gw = self.gateway
        return gw.call_in_worker(fn).result(timeout=gw.request_timeout_s + gw.attempt_timeout_s)

    def _reserve(self, client: str) -> None:
        """Hold one of ``client``'s session slots (module docstring), or refuse."""
        now = self.gateway.clock()
        with self._lock:
            for sid in [k for k, (_, t, _) in self._sessions.items() if t < now]:
                del self._sessions[sid]
            mine = self._opening.get(client, 0) + sum(1 for _, _, c in self._sessions.values() if c == client)
            if mine >= self.max_per_client:
                raise GatewayError(f"this client holds {mine} open sessions (at most {self.max_per_client}); "
                                   f"use or let them expire ({self.session_ttl_s:g} s)", status=429)
            if len(self._sessions) + sum(self._opening.values()) >= self.max_sessions:
                raise GatewayError(f"the gateway holds {self.max_sessions} open sessions; try again later", status=503)
            self._opening[client] = self._opening.get(client, 0) + 1

    def _release(self, client: str) -> None:
        with self._lock:
            left = self._opening.get(client, 0) - 1
            if left > 0:
                self._opening[client] = left
            else:
                self._opening.pop(client, None)

    def open(self, service_id: str, client: str = "") -> dict[str, Any]:
        """Open a session for one request (``:session``): the parties' signed session keys.

        Args:
            service_id: the service.
            client: who asks (the source address): its open sessions are bounded.

        Raises:
            GatewayError: unknown service (404), this client holds its bound of open sessions
                (429), the gateway holds its bound (503), parties not placed or admitted (503).
            UnsupportedOperationError: not a replicated service.
            RuntimeTaskError: a party node failed or signed badly (503).
        """
        state, model, parties = self._service(service_id)
        frac_bits, output = self._params(state)
        self._scheme(frac_bits).check_precision(model.model, None)  # refuse a model the fixed point cannot hold, before any work
        self._reserve(client)  # before the nodes draw keys: a refused client costs them nothing
        try:
            session = self._wait(lambda: open_sealed_session(self.gateway.scheduler, service_id, parties,
                                                             ttl_s=self.session_ttl_s + self.NODE_TTL_SLACK_S))
            with self._lock:
                self._sessions[session.session] = (session, self.gateway.clock() + self.session_ttl_s, client)
        finally:
            self._release(client)
        return {**session.to_json(), "frac_bits": frac_bits, "output": output, "in_features": model.in_features,
                "out_features": model.out_features, "expires_in_s": self.session_ttl_s}

    def predict(self, service_id: str, body: bytes, content_type: str) -> ReplicatedPredictReply:
        """Run one sealed request on its session (``:predict``).

        Raises:
            GatewayError: unknown service (404), an unknown, used or expired session (409), a party
                refused the client's sealed pair: it did not open or was malformed (422, naming the party).
            SchemeMismatchError, ShapeError, SerializationError: a request that does not fit the service.
            RuntimeTaskError: a party failed (503); the client opens another session.
        """
        req = _decode(body, content_type)
        if req.scheme.lower() != "replicated":
            raise SchemeMismatchError(f"service {service_id!r} runs 'replicated', the request is {req.scheme!r}")
        state, model, _ = self._service(service_id)
        frac_bits, output = self._params(state)
        with self._lock:
            held = self._sessions.pop(req.session, None)  # used once, whatever happens next
        if held is None or held[1] < self.gateway.clock() or held[0].service_id != service_id:  # any address may use it: the id is 32 random bytes only its opener got
            raise GatewayError("unknown, used or expired session for this service; open another with :session", status=409)
        session = held[0]
        batch, width = req.shape
        if width != model.in_features or not 1 <= batch <= self.gateway.max_batch_rows:
            raise ShapeError(f"service {service_id!r} takes (1..{self.gateway.max_batch_rows}, {model.in_features}) input, got {tuple(req.shape)}")
        if any(len(s) != sealed_pair_size((batch, width)) for s in req.sealed):
            raise SerializationError(f"a sealed pair does not hold a ({batch}, {width}) pair")
        job_id = hashlib.sha256(b"EDIL/gateway/replicated" + session.session + req.request).digest()
        sched = self.gateway.scheduler
        try:
            outs = self._wait(lambda: run_sealed_session(
                sched, session, self._scheme(frac_bits), model.model, client=req.client, request=req.request, sealed=list(req.sealed),
                batch=batch, output=output, job_id=job_id))
        except SerializationError as exc:  # a party's signed refusal of the client's input: the client's fault, no node's
            for node in session.nodes:
                if node.lower() in str(exc).lower():
                    self.m_refusals.labels(service_id, node.lower()).inc()
            raise GatewayError(str(exc), status=422) from None
        for node in session.nodes:
            self.gateway.m_placements.labels(service_id, node.lower()).inc()
        return ReplicatedPredictReply(list(outs), job_id.hex(), list(session.nodes))
