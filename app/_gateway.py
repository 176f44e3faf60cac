"""The EDIL HTTP gateway: private inference as a service, over FastAPI on uvicorn.

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``):

* ``GET /v1/services``, ``GET /v1/services/{id}``: what a client needs to encrypt for a
  service: its scheme, the public parameters to build keys with, the model's input and output
  widths and the replicas (with their nodes' X25519 box keys, for a Masked service).
* ``POST /v1/services/{id}:predict``: a batch of ciphertexts in, ciphertexts out. The body is
  a :class:`PredictRequest` as MessagePack (``application/msgpack``, raw bytes) or JSON
  (``application/json``, bytes as base64), decoded strictly by msgspec with size bounds. It
  holds the scheme's serialized value and its *public* context; the gateway refuses a context
  that holds a secret key, so it never has one.
* ``GET /healthz`` (the process answers), ``GET /readyz`` (some service has a live replica,
  or the scheduler has nodes), ``GET /metrics`` (Prometheus text, a registry per app).
* ``GET /explorer/`` (when :func:`create_app` is given an explorer, as ``edil gateway`` does):
  the read-only network explorer over the gateway's journal, services, nodes and metrics.

Each request becomes a runtime :class:`~edil.runtime.Task` pinned to one replica's node and
runs through the :class:`~edil.runtime.Scheduler` like any job, so it is journaled and yields a
PoAI transcript that the epoch audits check. The scheduler is synchronous, so one worker thread
owns it: requests queue, and every queued request joins the next ``submit_many`` + ``run``
round (concurrent requests share one run).

Replicas and failover. Replicas are taken round-robin per service. When a replica's node fails
a request (a crash, a timeout, a refusal), the request moves to the service's next replica, each
replica at most once: a request makes at most ``len(replicas)`` dispatch rounds, each bounded by
``attempt_timeout_s``, and the whole request by ``request_timeout_s``. A replica that failed is
tried last for ``replica_cooldown_s``. The service directory (Deeploy's
:class:`~edil.runtime.Reconciler`) is read on every request, so re-placed replicas are used at once.
Before the first attempt the gateway checks a CKKS input's envelope, context and shape
(:meth:`~edil.CKKS.declared_shape`), not its ciphertexts: the node parses those before it
computes. When a replica fails, the gateway parses them itself, once: an input that does not
parse fails with the client's error (400), no replica blamed nor tried after it.

Redundancy. A service whose spec asks ``redundancy = r`` runs each request on ``r`` distinct
replicas (one pinned job each) and answers only when a strict majority of at least ``r`` outputs
agree byte for byte (evaluation is deterministic); a disagreement asks one more replica, and the
replicas outside the majority are recorded as faulty in the journal (their jobs disputed, their
transcripts not agreed). Each replica is still asked at most once per request, and a service with
fewer than ``r`` replicas placed answers 503 rather than fewer checks.

Replicated services (three replicas, the three parties of a session; :mod:`edil.app._gateway_replicated`):
``POST /v1/services/{id}:session`` returns the parties' session keys, signed by their nodes' chain
keys; ``:predict`` then takes the client's three pairs of shares, each sealed to its party's key,
and returns the parties' output pairs sealed to the client. The gateway relays; it never opens a pair.

Masked services are listed but ``:predict`` answers 422 (``UnsupportedOperationError``): the
runtime's Masked path (``Scheduler.run_masked``) takes the whole input sharing at the
coordinator and re-shares it on every attempt, so a gateway on that path would hold a whole
sharing, which it must not.

Errors are one line of JSON, ``{"error": "<EdilError class>", "message": "..."}``, never a
traceback: caller mistakes (corrupt bytes, shapes, parameters, another scheme) are 400, a
scheme that cannot run the request 422, an unknown (or removed) service 404, a body over the
bound 413, a request that would take the bodies held at once over their bound or no replica able
to answer 503, replicas that never reach a majority 502, the deadline 504.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Annotated, Any, Protocol

import msgspec
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from edil import (
    CKKS,
    AuthorizationError,
    EdilError,
    EncodingError,
    Paillier,
    ParameterError,
    RuntimeTaskError,
    SchemeMismatchError,
    SerializationError,
    ShapeError,
    UnsupportedOperationError,
    VerificationError,
)
from edil.client import MAX_CONTEXT_BYTES, MAX_INPUT_BYTES, GatewayError

__all__ = [
    "Gateway",
    "GatewayServer",
    "PredictReply",
    "PredictRequest",
    "ServiceDirectory",
    "ServiceSpecLike",
    "ServiceStateLike",
    "create_app",
    "gateway_explorer",
]

log = logging.getLogger("edil.gateway")

#: Schemes whose tasks run whole on one node from a public context.
HE_SCHEMES = ("ckks", "paillier")
#: Public parameters a client builds its keys from, per scheme (other spec params are not sent).
CLIENT_PARAMS = {
    "ckks": ("depth", "precision_bits", "int_bits", "poly_modulus_degree"),
    "paillier": ("key_bits", "frac_bits", "int_bits", "max_additions", "slot_bits", "pack"),
    "replicated": ("frac_bits", "output"),
}
MSGPACK, JSON = "application/msgpack", "application/json"


# --- the service directory ---------------------------------------------------------------------
class ServiceSpecLike(Protocol):
    """What the gateway reads of a service's spec (Deeploy's ``ServiceSpec`` has these)."""

    @property
    def name(self) -> str: ...

    @property
    def model_cid(self) -> str: ...

    @property
    def scheme(self) -> str: ...

    @property
    def params(self) -> Any: ...

    @property
    def replicas(self) -> int: ...


class ServiceStateLike(Protocol):
    """What the gateway reads of a placed service (Deeploy's ``ServiceState`` has these)."""

    @property
    def service_id(self) -> str: ...

    @property
    def spec(self) -> Any: ...  # a ServiceSpecLike

    @property
    def replicas(self) -> tuple[str, ...]: ...

    @property
    def state(self) -> str: ...

    @property
    def version(self) -> int: ...


class ServiceDirectory(Protocol):
    """Where services are looked up: Deeploy's :class:`~edil.runtime.Reconciler` has this shape."""

    def get(self, service_id: str) -> ServiceStateLike | None: ...

    def list(self) -> Sequence[ServiceStateLike]: ...


# --- the wire ---------------------------------------------------------------------------------
class PredictRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/services/{id}:predict``.

    Attributes:
        scheme: ``"ckks"`` or ``"paillier"`` (must be the service's).
        context: the scheme's public context (``public_context_bytes()``); a context that
            holds a secret key is refused.
        input: the serialized encoded input, ``(batch, in_features)``, made under ``context``.
    """

    scheme: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    context: Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_CONTEXT_BYTES)]
    input: Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_INPUT_BYTES)]


class PredictReply(msgspec.Struct):
    """The reply of ``:predict``: the serialized encrypted output and where it ran.

    Attributes:
        output: the output ciphertexts (decrypt with the client's scheme).
        job_id: the runtime job (hex), whose transcript is in the journal.
        node: the node that computed it.
        attempts: replicas tried (1 unless a replica failed).
    """

    output: bytes
    job_id: str
    node: str
    attempts: int


def _one_line(text: str, limit: int = 500) -> str:
    return " ".join(str(text).split())[:limit]


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, GatewayError):
        return exc.status or 500
    if isinstance(exc, UnsupportedOperationError):
        return 422
    if isinstance(exc, SerializationError | ShapeError | SchemeMismatchError | ParameterError | EncodingError):
        return 400
    if isinstance(exc, AuthorizationError):
        return 403
    if isinstance(exc, RuntimeTaskError):
        return 503
    if isinstance(exc, VerificationError):
        return 502
    return 500


def _settle(future: Future[Any], *, result: Any = None, exc: BaseException | None = None) -> None:
    """Resolve a request's future unless it is done; its HTTP caller may cancel it at any moment
    (a timeout), and that must never raise in the worker, which would fail the whole round."""
    try:
        if future.done():
            return
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)
    except InvalidStateError:  # cancelled between the check and the set: the caller is gone
        pass


def error_body(exc: BaseException) -> tuple[int, dict[str, str]]:
    """``(status, one-line JSON body)`` for an exception; never a traceback."""
    if isinstance(exc, EdilError):
        return _status_of(exc), {"error": type(exc).__name__, "message": _one_line(str(exc))}
    return 500, {"error": "EdilError", "message": f"internal error ({type(exc).__name__})"}


# --- the gateway --------------------------------------------------------------------------------
@dataclass
class _Request:
    service_id: str
    task: Any  # a Task with node=""
    order: list[str]  # replicas in the order to try them
    future: Future[PredictReply]
    deadline: float
    needed: int = 1  # replies to collect: the spec's redundancy, one more per disagreement
    redundancy: int = 1  # replicas whose outputs must agree
    tried: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    replies: dict[str, tuple[bytes, bytes, str, int]] = field(default_factory=dict)  # replica -> (output, job id, node, epoch)
    check: Callable[[], Any] | None = None  # the input's full check, still owed when a replica fails (see Gateway._round)


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future[Any]


@dataclass(frozen=True)
class _Model:
    data: bytes
    model: Any
    in_features: int
    out_features: int
    kind: str


class Gateway:
    """Serves services of a :class:`ServiceDirectory` through a :class:`~edil.runtime.Scheduler`.

    Args:
        scheduler: the runtime scheduler (its nodes, registry and journal). Only this
            gateway's worker thread calls it once :meth:`start` has run.
        services: the service directory (Deeploy's :class:`~edil.runtime.Reconciler`).
        models: ``models(cid) -> model bytes`` (:func:`edil.runtime.model_to_bytes`); default:
            read from R1FS on the executor's blob store with the coordinator's box key.
        request_timeout_s: a request's overall bound (then 504).
        attempt_timeout_s: bound of one dispatch round on one replica.
        replica_cooldown_s: a replica that failed is tried last for this long.
        max_batch_rows: samples per request.
        max_round_jobs: requests per scheduler round.
        metrics: a ``prometheus_client.CollectorRegistry`` (default: a new one per gateway).
        clock: monotonic seconds (deadlines, cooldowns, latency).

    Raises:
        ParameterError: a timeout is not positive, the cooldown is negative, or ``max_batch_rows``
            or ``max_round_jobs`` is below 1.
    """

    def __init__(
        self,
        scheduler: Any,
        services: ServiceDirectory,
        *,
        models: Callable[[str], bytes] | None = None,
        request_timeout_s: float = 60.0,
        attempt_timeout_s: float = 30.0,
        replica_cooldown_s: float = 30.0,
        max_batch_rows: int = 4096,
        max_round_jobs: int = 64,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        # Written as "not (all good)" so that a NaN, which compares false both ways, is refused too.
        if not (request_timeout_s > 0 and attempt_timeout_s > 0 and replica_cooldown_s >= 0 and max_batch_rows >= 1 and max_round_jobs >= 1):
            raise ParameterError("timeouts must be > 0, the cooldown >= 0, max_batch_rows and max_round_jobs >= 1")
        self.scheduler, self.services = scheduler, services
        self._models_source = models
        self.request_timeout_s, self.attempt_timeout_s = request_timeout_s, attempt_timeout_s
        self.replica_cooldown_s, self.max_batch_rows, self.max_round_jobs = replica_cooldown_s, max_batch_rows, max_round_jobs
        self.clock = clock
        self.metrics = CollectorRegistry() if metrics is None else metrics
        self.m_requests = Counter("edil_gateway_requests", "Predict requests by service and outcome", ["service", "outcome"], registry=self.metrics)
        self.m_seconds = Histogram(
            "edil_gateway_request_seconds", "Predict latency in the gateway (body read to reply)", ["service"], registry=self.metrics,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
        )
        self.m_placements = Counter("edil_gateway_placements", "Requests completed per service and replica node", ["service", "node"], registry=self.metrics)
        self.m_failures = Counter("edil_gateway_failures", "Replica failures (the request moved on)", ["service", "node"], registry=self.metrics)
        self.m_replicas = Gauge("edil_gateway_live_replicas", "Replicas not cooling down, per service", ["service"], registry=self.metrics)
        self._models: dict[str, _Model] = {}
        self._contexts: OrderedDict[tuple[str, bytes], Any] = OrderedDict()
        self._rr: dict[str, itertools.count[int]] = {}
        self._cooling: dict[str, float] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Request | _Call | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._closed = False
        from edil.app._gateway_replicated import ReplicatedServing

        #: Replicated services: sealed sessions (``:session``) and sealed requests (``:predict``).
        self.replicated = ReplicatedServing(self)

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Gateway:
        """Start the worker thread that owns the scheduler (idempotent)."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="edil-gateway-scheduler", daemon=True)
            self._worker.start()
        return self

    def close(self) -> None:
        """Stop the worker; requests still queued fail with 503."""
        self._closed = True
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout=self.attempt_timeout_s + 5)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                _settle(item.future, exc=GatewayError("the gateway is shutting down", status=503))

    def call_in_worker(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn()`` on the worker thread, between two scheduler rounds.

        The scheduler is not thread-safe: a node joining it while the gateway serves (e.g. a node
        daemon heard on the bus) is admitted here, by the only thread that calls it.

        Returns:
            A future of ``fn()``'s result (or its exception).

        Raises:
            GatewayError: the gateway is shutting down (503).
        """
        if self._closed:
            raise GatewayError("the gateway is shutting down", status=503)
        call = _Call(fn, Future())
        self._queue.put(call)
        return call.future

    @staticmethod
    def _run_call(call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.fn())
        except Exception as exc:  # noqa: BLE001 - the caller reads it from the future
            call.future.set_exception(exc)

    # --- services -----------------------------------------------------------------------------
    def _model(self, cid: str) -> _Model:
        with self._lock:
            hit = self._models.get(cid)
        if hit is not None:
            return hit
        from edil.runtime import model_from_bytes

        data = self._fetch_model(cid)
        model = model_from_bytes(data)
        out = int(np.asarray(model.forward(np.zeros((1, model.in_features)))).shape[1])
        entry = _Model(data, model, model.in_features, out, model.kind)
        with self._lock:
            self._models[cid] = entry
        return entry

    def _fetch_model(self, cid: str) -> bytes:
        if self._models_source is not None:
            return bytes(self._models_source(cid))
        store = getattr(self.scheduler.executor, "blob_store", None)
        if store is None:
            raise GatewayError(f"model {cid} cannot be read: the executor has no R1FS store and no model source was given", status=503)
        from edil.runtime import R1FS

        return R1FS(store).get(cid, self.scheduler.identity)

    def _live(self, replicas: Sequence[str]) -> list[str]:
        now = self.clock()
        admitted = {a.lower() for a in self.scheduler.nodes}
        return [r for r in replicas if r.lower() in admitted and self._cooling.get(r.lower(), 0.0) <= now]

    def client_params(self, state: Any, model: _Model) -> dict[str, Any]:
        """The public parameters a client builds its keys with (spec params filtered per scheme)."""
        scheme = str(state.spec.scheme).lower()
        params = dict(getattr(state.spec, "params", None) or {})
        out = {k: params[k] for k in CLIENT_PARAMS.get(scheme, ()) if k in params}
        if scheme == "ckks" and "depth" not in out:
            out["depth"] = int(model.model.mult_depth)
        return out

    def info(self, state: Any, *, detail: bool = True) -> dict[str, Any]:
        """Public information about one service (what ``GET /v1/services/{id}`` returns)."""
        scheme = str(state.spec.scheme).lower()
        d: dict[str, Any] = {
            "id": state.service_id, "name": state.spec.name, "scheme": scheme, "state": state.state,
            "version": int(state.version), "replicas": list(state.replicas), "live_replicas": len(self._live(state.replicas)),
            "model_cid": state.spec.model_cid,
        }
        if not detail:
            return d
        model = self._model(state.spec.model_cid)
        d.update(params=self.client_params(state, model), in_features=model.in_features, out_features=model.out_features, kind=model.kind)
        if scheme == "masked":  # a client would share to these nodes
            keys = {}
            for r in state.replicas:
                try:
                    keys[r] = self.scheduler.card(r).box_key.hex()
                except AuthorizationError:  # no longer admitted
                    continue
            d["box_keys"] = keys
        if scheme == "replicated":  # party i runs on the i-th replica in this order
            d["parties"] = sorted(state.replicas)
        return d

    def state(self, service_id: str) -> Any:
        try:
            state = self.services.get(service_id)
        except VerificationError as exc:  # journaled for another chain than the gateway's: not served here
            raise GatewayError(str(exc), status=404) from None
        if state is None or state.state == "removed":
            raise GatewayError(f"no service {service_id!r}" + ("" if state is None else " (removed)"), status=404)
        return state

    def ready(self) -> bool:
        """Some service has a live replica, or the scheduler has nodes."""
        if self._worker is None or not self._worker.is_alive():
            return False
        try:
            if any(self._live(s.replicas) for s in self.services.list()):
                return True
        except Exception:  # noqa: BLE001 - a directory that cannot answer does not make us ready
            pass
        return bool(self.scheduler.nodes)

    # --- requests -----------------------------------------------------------------------------
    def _context(self, scheme: str, data: bytes) -> Any:
        key = (scheme, hashlib.sha256(data).digest())
        with self._lock:
            hit = self._contexts.get(key)
            if hit is not None:
                self._contexts.move_to_end(key)
                return hit
        # from_public_context refuses a context that holds a secret key: the gateway never has one.
        built = (CKKS if scheme == "ckks" else Paillier).from_public_context(data)
        if getattr(built, "is_private", False):  # fail closed, whatever the scheme says
            raise SerializationError("the context holds a secret key; send public_context_bytes() only")
        with self._lock:
            self._contexts[key] = built
            while len(self._contexts) > 16:
                self._contexts.popitem(last=False)
        return built

    def prepare(self, service_id: str, req: PredictRequest) -> _Request:
        """Check a request against its service and build its task (no scheduler call).

        Raises:
            GatewayError: unknown service (404), or no live replica (503).
            UnsupportedOperationError: a Masked service, or a model the scheme cannot run.
            SchemeMismatchError: the request's scheme is not the service's, or the input was
                made under another context.
            SerializationError, ShapeError, ParameterError: bad bytes, shapes or parameters.
        """
        from edil.runtime import Task

        state = self.state(service_id)
        scheme = str(state.spec.scheme).lower()
        if scheme == "masked":
            raise UnsupportedOperationError(
                f"service {service_id!r} runs 'masked': the runtime's Masked path shares the whole input at the coordinator "
                "and re-shares it on every attempt, so a gateway on it would hold a whole sharing, which it must not; the "
                "gateway serves ckks and paillier services"
            )
        if scheme == "replicated":  # two calls over HTTP (edil.app._gateway_replicated): no single task to prepare
            raise UnsupportedOperationError(f"service {service_id!r} runs 'replicated': open a session with :session, then :predict sealed shares")
        if scheme not in HE_SCHEMES:
            raise UnsupportedOperationError(f"service {service_id!r} runs {scheme!r}; the gateway moves only ciphertexts (ckks, paillier)")
        if req.scheme.lower() != scheme:
            raise SchemeMismatchError(f"service {service_id!r} runs {scheme!r}, the request is {req.scheme!r}")
        if not state.replicas:
            raise GatewayError(f"service {service_id!r} has no replica placed ({state.state})", status=503)
        redundancy = getattr(state.spec, "redundancy", 1)
        if not isinstance(redundancy, int) or isinstance(redundancy, bool) or redundancy < 1:
            raise GatewayError(f"service {service_id!r} has no valid redundancy in its spec", status=503)
        if redundancy > len(state.replicas):  # never answer from fewer replicas than the owner asked to agree
            raise GatewayError(
                f"service {service_id!r} needs redundancy {redundancy} but has {len(state.replicas)} replica(s) placed ({state.state})",
                status=503,
            )
        model = self._model(state.spec.model_cid)
        ctx = self._context(scheme, req.context)
        check: Callable[[], Any] | None = None
        if scheme == "ckks":
            # Envelope, context and shape only: parsing the ciphertexts is most of a CKKS
            # deserialization, and the node parses them before it computes. The full check runs
            # here only if a replica fails the request (_input_refused).
            shape = ctx.declared_shape(req.input)
            check = partial(ctx.deserialize, req.input)
        else:
            shape = tuple(getattr(ctx.deserialize(req.input), "shape", ()))
        if len(shape) != 2 or shape[1] != model.in_features:
            raise ShapeError(f"service {service_id!r} takes (batch, {model.in_features}) input, got {shape}")
        if not 1 <= shape[0] <= self.max_batch_rows:
            raise ShapeError(f"a request holds 1 to {self.max_batch_rows} samples, got {shape[0]}")
        ctx.check_model(model.model)
        spec_bits = (getattr(state.spec, "params", None) or {}).get("key_bits")
        if scheme == "paillier" and isinstance(spec_bits, int) and ctx.key_bits < spec_bits:
            raise ParameterError(f"service {service_id!r} needs Paillier keys of at least {spec_bits} bits, got {ctx.key_bits}")
        needs_gpu = bool(getattr(getattr(state.spec, "resources", None), "needs_gpu", False))
        task = Task(
            scheme, dict(ctx.params), model.data, bytes(req.input), model.model.work_units(shape[0]), needs_gpu,
            context=bytes(req.context), model_public=True,  # the service's owner deployed its weights to the nodes
        )
        with self._lock:
            rr = self._rr.setdefault(service_id, itertools.count())
            start = next(rr) % len(state.replicas)
        order = list(state.replicas[start:]) + list(state.replicas[:start])
        return _Request(service_id, task, order, Future(), self.clock() + self.request_timeout_s, redundancy, redundancy, check=check)

    def submit(self, request: _Request) -> Future[PredictReply]:
        """Queue a prepared request for the worker; the future resolves to its reply."""
        if self._closed:
            raise GatewayError("the gateway is shutting down", status=503)
        self._queue.put(request)
        return request.future

    def predict(self, service_id: str, req: PredictRequest) -> PredictReply:
        """Blocking ``prepare`` + ``submit`` + wait (the library form of ``:predict``)."""
        r = self.prepare(service_id, req)
        return self.submit(r).result(timeout=self.request_timeout_s + self.attempt_timeout_s)

    # --- the worker: the only thread that calls the scheduler --------------------------------
    def _work(self) -> None:
        active: list[_Request] = []
        while not self._closed:
            if not active:
                item = self._queue.get()
                if item is None:
                    break
                if isinstance(item, _Call):
                    self._run_call(item)
                    continue
                active.append(item)
            while len(active) < self.max_round_jobs:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._closed = True
                    break
                if isinstance(item, _Call):
                    self._run_call(item)
                    continue
                active.append(item)
            try:
                active = self._round(active)
            except Exception as exc:  # noqa: BLE001 - a scheduler failure fails this round's requests, never the worker
                log.warning("gateway round failed: %s: %s", type(exc).__name__, _one_line(str(exc)))
                err = exc if isinstance(exc, EdilError) else RuntimeTaskError(f"the scheduler failed: {type(exc).__name__}")
                for r in active:
                    _settle(r.future, exc=err)
                active = []
        for r in active:
            _settle(r.future, exc=GatewayError("the gateway is shutting down", status=503))

    def _next_replica(self, r: _Request) -> str | None:
        now = self.clock()
        admitted = {a.lower() for a in self.scheduler.nodes}
        state = self.services.get(r.service_id)
        if state is not None:  # replicas re-placed since the request came in are tried too
            r.order.extend(a for a in state.replicas if a not in r.order)
        left = [a for a in r.order if a not in r.tried and a.lower() in admitted]
        if not left:
            return None
        fresh = [a for a in left if self._cooling.get(a.lower(), 0.0) <= now]
        return (fresh or left)[0]  # a cooling replica only when no other is left

    def _fail(self, r: _Request, exc: BaseException) -> None:
        _settle(r.future, exc=exc)

    def _round(self, active: list[_Request]) -> list[_Request]:
        """One scheduler round: each request on as many replicas as it still needs; returns those to go on."""
        sched = self.scheduler
        now = self.clock()
        batch: list[tuple[_Request, str]] = []
        for r in active:
            if r.future.done():  # the caller gave up
                continue
            if now > r.deadline:
                self._fail(r, GatewayError(f"no replica answered within {self.request_timeout_s:g} s: {'; '.join(r.errors)}", status=504))
                continue
            state = self.services.get(r.service_id)  # removed since it was prepared (or between two rounds): not run
            if state is None or state.state == "removed":
                self._fail(r, GatewayError(f"service {r.service_id!r} was removed", status=404))
                continue
            picked = []
            for _ in range(r.needed - len(r.replies)):
                addr = self._next_replica(r)
                if addr is None:
                    break
                r.tried.append(addr)
                picked.append(addr)
            if not picked:
                if r.replies:  # replicas disagree and none is left to break the tie
                    self._fail(r, VerificationError(f"the service's replicas disagree and no replica is left to break the tie: {'; '.join(r.errors)}"))
                else:
                    why = "; ".join(r.errors) or "no replica of the service is admitted to the scheduler"
                    self._fail(r, RuntimeTaskError(f"no replica completed the request after {len(r.tried)} tried: {why}"))
                continue
            batch += [(r, a) for a in picked]
        if not batch:
            return []
        tasks = [replace(r.task, node=addr) for r, addr in batch]
        try:
            ids = sched.submit_many(tasks)
        except EdilError as exc:
            for r, _ in batch:
                self._fail(r, exc)
            return []
        sched.run(timeout_s=self.attempt_timeout_s)
        touched: dict[int, _Request] = {}
        for (r, addr), jid in zip(batch, ids):
            touched[id(r)] = r
            # The result row alone: a job's row holds its task (megabytes of ciphertext) and a result
            # recorded in this round cannot be disputed yet (disputes come from epoch audits).
            res = sched.journal.result(jid)
            if res is not None:
                node = res.nodes[0] if res.nodes else addr  # as the journal and its transcripts name it
                r.replies[addr] = (res.output, jid, node, res.epoch)
                continue
            rec = sched.status(jid)
            if rec.status == "pending":  # the round's bound passed: give the job up so no later run does it
                sched.journal.fail(jid, f"the gateway stopped waiting after {self.attempt_timeout_s:g} s")
                why = f"no reply within {self.attempt_timeout_s:g} s"
            else:
                why = _one_line(rec.error or "failed", 300)
            if not self._input_refused(r):
                self._replica_failed(r, addr, why)
        return [r for r in touched.values() if not self._decide(r)]

    def _input_refused(self, r: _Request) -> bool:
        """A replica failed ``r``: check its input fully, once; a bad input fails ``r`` with the client's error.

        Then no replica is blamed (cooled down, counted as failed) and no other one is tried for an
        input that no node can run. Returns whether ``r`` failed so.
        """
        check, r.check = r.check, None
        if check is None:
            return False
        try:
            check()
        except EdilError as exc:
            self._fail(r, exc)
            return True
        return False

    def _decide(self, r: _Request) -> bool:
        """Answer ``r`` once it has ``needed`` replies and a strict majority of them, at least
        ``redundancy`` replicas, agrees.

        Replies are compared in constant time. Replicas outside the majority are recorded as
        faulty in the journal (as the scheduler records a redundant job's minority) and cool down;
        a disagreement asks one more replica. Returns whether ``r`` is finished.
        """
        import hmac

        if r.future.done():
            return True
        if len(r.replies) < r.needed:
            return False
        groups: list[list[str]] = []
        for addr, (out, *_) in r.replies.items():
            for g in groups:
                if hmac.compare_digest(r.replies[g[0]][0], out):
                    g.append(addr)
                    break
            else:
                groups.append([addr])
        best = max(groups, key=len)
        if len(best) < r.redundancy or len(best) * 2 <= len(r.replies):
            r.needed = len(r.replies) + 1  # no majority yet: one more replica breaks the tie
            r.errors.append(f"replicas disagree ({len(groups)} different outputs from {len(r.replies)})")
            return False
        output, jid, node, _ = r.replies[best[0]]
        for addr in r.replies:
            if addr in best:
                self.m_placements.labels(r.service_id, addr).inc()
                with self._lock:
                    self._cooling.pop(addr.lower(), None)
            else:
                _, bad_jid, bad_node, epoch = r.replies[addr]
                why = "output disagrees with the service's other replicas"
                # Its pinned job finished as a good one: keep its transcript out of the agreed work
                # (the epoch audit fails the node) and dispute the wrong output it left as the job's result.
                self.scheduler.journal.outvote(bad_jid, bad_node)
                self.scheduler.journal.dispute(bad_jid, why)
                self.scheduler.journal.record_fault(bad_node, epoch, bad_jid, why)
                self._replica_failed(r, addr, "its output disagrees with the other replicas")
        _settle(r.future, result=PredictReply(output, jid.hex(), node, len(r.tried)))
        return True

    def _replica_failed(self, r: _Request, addr: str, why: str) -> None:
        r.errors.append(f"{addr}: {why}")
        self.m_failures.labels(r.service_id, addr).inc()
        with self._lock:
            self._cooling[addr.lower()] = self.clock() + self.replica_cooldown_s
        log.info("replica %s failed a %s request (%s); trying the next replica", addr, r.service_id, why)

    def update_gauges(self) -> None:
        try:
            for s in self.services.list():
                self.m_replicas.labels(s.service_id).set(len(self._live(s.replicas)))
        except Exception:  # noqa: BLE001 - metrics must answer even when the directory cannot
            pass


# --- the HTTP app -----------------------------------------------------------------------------
_PREDICT_BODY = {
    "required": True,
    "content": {
        MSGPACK: {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
        JSON: {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
    },
}


def _openapi_schemas() -> dict[str, Any]:
    _, components = msgspec.json.schema_components([PredictRequest, PredictReply], ref_template="#/components/schemas/{name}")
    return components


class _Budget:
    """Bytes of predict bodies the gateway holds at once (touched by the event loop's thread only).

    Each body is bounded, but without this, as many clients as connect could each hold one.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, n: int, held: list[int]) -> None:
        if self.used + n > self.limit:
            raise GatewayError(f"the gateway holds {self.limit} bytes of requests already; try again later", status=503)
        self.used += n
        held[0] += n


async def _read_body(request: Any, limit: int, budget: _Budget | None = None, held: list[int] | None = None) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise GatewayError(f"the body is over the {limit} byte bound", status=413)
    held = [0] if held is None else held
    if budget is not None and length is not None:
        budget.take(int(length), held)  # reserved up front: a body that trickles in holds its bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise GatewayError(f"the body is over the {limit} byte bound", status=413)
        if budget is not None and size > held[0]:
            budget.take(size - held[0], held)
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(body: bytes, content_type: str) -> PredictRequest:
    kind = content_type.split(";")[0].strip().lower()
    try:
        if kind in (MSGPACK, "application/x-msgpack", "application/vnd.msgpack"):
            return msgspec.msgpack.decode(body, type=PredictRequest)
        if kind == JSON:
            return msgspec.json.decode(body, type=PredictRequest)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise SerializationError(f"bad predict body: {exc}") from None
    raise GatewayError(f"the body must be {MSGPACK} or {JSON}, got {kind or 'no content type'!r}", status=415)


def _encode(reply: Any, accept: str) -> tuple[bytes, str]:
    if MSGPACK in accept or "msgpack" in accept:
        return msgspec.msgpack.encode(reply), MSGPACK
    return msgspec.json.encode(reply), JSON


def gateway_explorer(gateway: Gateway, *, cards: Any = None, monitors: Sequence[Any] = (), deployment: Any = None) -> Any:
    """An :class:`~edil.app._explorer.Explorer` over what ``gateway`` serves.

    It reads the scheduler's journal (jobs, faults), the service directory (services and their
    replicas) and the gateway's own Prometheus registry (each service's latency percentiles).

    Args:
        gateway: the :class:`Gateway`.
        cards: node cards (default: the cards of the nodes admitted to the gateway's scheduler);
            e.g. a :class:`~edil.runtime.Presence`, whose heartbeats then say who is online.
        monitors: heartbeat monitors (or objects with a ``monitor``, such as a ``Presence``).
        deployment: a bound ``edil.proofs.Deployment`` for the chain's figures (optional).
    """
    from edil.app._explorer import Explorer

    sched = gateway.scheduler

    def admitted_cards() -> list[Any]:
        out = []
        for a in sched.nodes:
            try:
                out.append(sched.card(a))
            except AuthorizationError:  # admitted and dropped between the two reads
                continue
        return out

    return Explorer(
        deployment=deployment, journal=sched.journal, reconciler=gateway.services, metrics=gateway.metrics,
        cards=admitted_cards if cards is None else cards, monitors=monitors,
    )


def create_app(
    gateway: Gateway, *, max_body_bytes: int = MAX_CONTEXT_BYTES + MAX_INPUT_BYTES + 4096, max_inflight_bytes: int = 1 << 30,
    explorer: Any = None,
) -> Any:
    """The FastAPI app of ``gateway`` (starts its worker; stops it on shutdown).

    Args:
        gateway: the :class:`Gateway`.
        max_body_bytes: bound on a predict body (413 above it).
        max_inflight_bytes: bound on the predict bodies held at once, from the first byte read to
            the reply (503 for a request that would go over it).
        explorer: an :class:`~edil.app._explorer.Explorer` (e.g. :func:`gateway_explorer`) served
            read-only at ``/explorer/``; ``None``: no explorer.
    """
    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        gateway.start()
        try:
            yield
        finally:
            await run_in_threadpool(gateway.close)

    app = FastAPI(
        title="EDIL gateway", version="1", lifespan=lifespan,
        description="Private inference: ciphertexts in, ciphertexts out. The gateway never holds a secret key.",
    )
    app.state.gateway = gateway
    budget = _Budget(max_inflight_bytes)

    def _error(exc: BaseException) -> JSONResponse:
        status, body = error_body(exc)
        return JSONResponse(body, status_code=status)

    @app.exception_handler(EdilError)
    async def _edil_error(request: Request, exc: EdilError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": "GatewayError", "message": _one_line(str(exc.detail))}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "SerializationError", "message": "bad request parameters"}, status_code=400)

    @app.exception_handler(Exception)
    async def _any_error(request: Request, exc: Exception) -> JSONResponse:
        log.warning("gateway error: %s", type(exc).__name__)
        return _error(exc)

    @app.get("/healthz", tags=["health"], summary="The process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Ready: a service has a live replica, or the scheduler has nodes")
    async def readyz() -> JSONResponse:
        ok = await run_in_threadpool(gateway.ready)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        await run_in_threadpool(gateway.update_gauges)
        return Response(generate_latest(gateway.metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/services", tags=["services"], summary="Services and their replicas")
    async def services() -> dict[str, Any]:
        return await run_in_threadpool(lambda: {"services": [gateway.info(s, detail=False) for s in gateway.services.list()]})

    @app.get("/v1/services/{service_id}", tags=["services"], summary="What a client needs to encrypt for a service")
    async def service(service_id: str) -> dict[str, Any]:
        return await run_in_threadpool(lambda: gateway.info(gateway.state(service_id)))

    @app.post("/v1/services/{service_id}:session", tags=["services"],
              summary="Replicated services: open a session, the parties' session keys signed by their nodes")
    async def session(service_id: str, request: Request) -> dict[str, Any]:
        # open sessions are bounded per source address, so that one client cannot push out others'
        return await run_in_threadpool(gateway.replicated.open, service_id, request.client.host if request.client else "")

    @app.post(
        "/v1/services/{service_id}:predict", tags=["services"], summary="Encrypted inference: ciphertexts in, ciphertexts out",
        openapi_extra={"requestBody": _PREDICT_BODY}, response_model=None,
        responses={200: {"content": {MSGPACK: {"schema": {"$ref": "#/components/schemas/PredictReply"}}, JSON: {}}}},
    )
    async def predict(service_id: str, request: Request) -> Response:
        t0 = gateway.clock()
        outcome = "error"
        held = [0]
        try:
            body = await _read_body(request, max_body_bytes, budget, held)
            if gateway.replicated.serves(service_id):  # shares sealed to the parties in, sealed to the client out
                rep = await run_in_threadpool(gateway.replicated.predict, service_id, body, request.headers.get("content-type", ""))
                data, media = _encode(rep, request.headers.get("accept", ""))
                outcome = "ok"
                return Response(data, media_type=media)
            req = _decode(body, request.headers.get("content-type", ""))
            prepared = await run_in_threadpool(gateway.prepare, service_id, req)
            fut = gateway.submit(prepared)
            try:
                reply = await asyncio.wait_for(asyncio.wrap_future(fut), timeout=gateway.request_timeout_s + gateway.attempt_timeout_s)
            except TimeoutError:
                fut.cancel()
                raise GatewayError(f"no reply within {gateway.request_timeout_s:g} s", status=504) from None
            data, media = _encode(reply, request.headers.get("accept", ""))
            outcome = "ok"
            return Response(data, media_type=media)
        except BaseException as exc:
            status = _status_of(exc) if isinstance(exc, EdilError) else 500
            outcome = "client_error" if 400 <= status < 500 else "unavailable" if status in (503, 504) else "error"
            if isinstance(exc, EdilError):
                return _error(exc)
            raise
        finally:
            budget.used -= held[0]
            try:
                known = outcome == "ok" or gateway.services.get(service_id) is not None
            except Exception:  # noqa: BLE001 - the metric must not mask the request's own answer
                known = False
            label = service_id if known else "_unknown"  # unknown ids never grow the label set
            gateway.m_requests.labels(label, outcome).inc()
            gateway.m_seconds.labels(label).observe(gateway.clock() - t0)

    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(_openapi_schemas())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    if explorer is not None:
        from edil.app._explorer import explorer_router

        app.include_router(explorer_router(explorer), prefix="/explorer", include_in_schema=False)
    return app


# --- serving on a thread (tests, benchmarks, the CLI) -------------------------------------------
class GatewayServer:
    """Serve ``app`` with uvicorn on a thread, on a port bound before it starts (0: a free one).

    Args:
        app: the ASGI app (:func:`create_app`).
        host: the address to listen on.
        port: the port (0: any free port; :attr:`url` says which).

    Example:
        >>> with GatewayServer(create_app(gw)) as srv:   # doctest: +SKIP
        ...     edil.client.connect(srv.url).services()
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="edil-gateway-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> GatewayServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise GatewayError("the gateway server did not start", status=503)
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

