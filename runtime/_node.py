"""The edge node: authenticates the coordinator, runs tasks, signs PoAI transcripts and heartbeats."""

from __future__ import annotations

import numbers
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from edil import AuthorizationError, EdilError, ParameterError, SerializationError, VerificationError

from ._blobs import BlobCache
from ._deps import Eip712Domain, Transcript, commit_bytes, commit_json, sign_transcript, transcript_to_wire
from ._federated import FedTrainRunner
from ._identity import Capabilities, NodeCard, NodeIdentity
from ._mpc_session import PartySession, PeerLink, resolve_material, run_direct_party
from ._products import products_to_wire
from ._replicated_session import KINDS as _REPLICATED_KINDS
from ._replicated_session import handle as _replicated_handle
from ._task import Runner, Task, array_from_bytes, array_to_bytes, default_runners
from ._transport import Message, ReplayGuard, open_envelope, seal_envelope

__all__ = ["EdgeNode"]

_KINDS = ("task", "mpc_start", "mpc_step", "ping", *_REPLICATED_KINDS)
#: Masked sessions a node keeps open at once (the oldest is dropped beyond this).
MAX_SESSIONS = 64
#: Bounds on an ``error`` reply (the coordinator journals the message with the job).
MAX_ERROR_CLASS, MAX_ERROR_MESSAGE = 64, 500
#: Largest distance between the time a heartbeat request names and the node's own clock that a
#: node without ``dev_clock`` answers (stamping its own time, never the requested one); a farther
#: time is refused, so no requester can collect heartbeats signed for times the node may be down.
#: (:meth:`EdgeNode.heartbeat`, and the NATS daemon's ``hb`` subject, see ``serve_node``.)
HEARTBEAT_REQUEST_SKEW_MS = 5_000


def check_heartbeat_request(requested_ms: int, own_ms: int, *, opt_in: str) -> None:
    """Refuse a heartbeat requested for a time more than ``HEARTBEAT_REQUEST_SKEW_MS`` from the node's clock.

    Shared by :meth:`EdgeNode.heartbeat` and the NATS daemon's ``hb`` subject; ``opt_in`` names
    the development switch that lifts the rule, for the message.

    Raises:
        AuthorizationError: the requested time is too far from ``own_ms``.
    """
    if abs(requested_ms - own_ms) > HEARTBEAT_REQUEST_SKEW_MS:
        raise AuthorizationError(
            f"heartbeat requested for {requested_ms} ms, more than {HEARTBEAT_REQUEST_SKEW_MS} ms from this node's clock: "
            f"signed only at the node's own time ({opt_in} for development chains)"
        )


class EdgeNode:
    """An edge node. It trusts exactly one coordinator key and refuses everything else.

    Args:
        identity: the node's keys.
        coordinator_key: the coordinator's Ed25519 public key (the only trusted sender).
        coordinator_box_key: the coordinator's X25519 public key (replies are sealed to it).
        domain: EIP-712 domain of the PoAI verifier (transcripts are signed under it).
        capabilities: advertised capabilities (detected from JAX when omitted).
        runners: scheme name -> :class:`Runner` (``plain``, ``ckks`` and ``paillier`` built in).
        clock: seconds since the Unix epoch (injected; ``time.time`` by default).
        nonce: 16-byte nonce source for replies (``os.urandom`` by default).
        blobs: where the node fetches the inputs a task carries by R1FS CID
            (:class:`~edil.runtime._blobs.BlobCache`; ``None``: such a task fails here).
        dev_clock: development chains only: :meth:`heartbeat` signs for whatever time a caller
            names (a chain whose clock is moved on demand asks for each slot's chain time). Off
            (the default), a heartbeat is always stamped with ``clock``, and a requested time more
            than ``HEARTBEAT_REQUEST_SKEW_MS`` from it is refused.

    Example:
        >>> # node = EdgeNode(NodeIdentity.from_seed(seed), coordinator_key=c.verify_key,
        >>> #                 coordinator_box_key=c.box_key, domain=domain)
        >>> # reply = node.handle(envelope)
    """

    def __init__(
        self,
        identity: NodeIdentity,
        *,
        coordinator_key: bytes,
        coordinator_box_key: bytes,
        domain: Eip712Domain,
        capabilities: Capabilities | None = None,
        runners: Mapping[str, Runner] | None = None,
        clock: Callable[[], float] = time.time,
        nonce: Callable[[], bytes] | None = None,
        replay_window_ms: int = 120_000,
        blobs: BlobCache | None = None,
        dev_clock: bool = False,
    ) -> None:
        self.identity = identity
        self._coord = (bytes(coordinator_key),)
        self._coord_box = bytes(coordinator_box_key)
        self.domain = domain
        self.card: NodeCard = identity.card(capabilities)
        self.runners: dict[str, Runner] = {**default_runners(), "fedtrain": FedTrainRunner(identity), **(runners or {})}
        self.clock = clock
        self.blobs = blobs
        self.dev_clock = dev_clock is True  # only an explicit True opts in (fail closed)
        self._nonce = nonce or (lambda: os.urandom(16))
        self._guard = ReplayGuard(replay_window_ms)
        self._lock = threading.Lock()
        self._sessions: dict[bytes, PartySession] = {}
        self._session_meta: dict[bytes, dict[str, Any]] = {}
        #: The channel to the other parties of a direct Masked session (set by ``serve_node`` on the bus).
        self.peer_link: PeerLink | None = None
        self._seq = 0
        self.completed = 0
        self.rejected = 0
        self.task_errors = 0  # authentic tasks this node could not run (answered with an ``error`` reply)
        self.busy_s = 0.0  # time spent handling messages (for overhead accounting)
        self.compute_s = 0.0  # time in runners and party programs
        self.proof_s = 0.0  # time committing to params/model/input/output and signing transcripts

    @property
    def address(self) -> str:
        return self.identity.address

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _reply(self, kind: str, body: Any) -> bytes:
        return seal_envelope(
            kind,
            body,
            signing_key=self.identity.signing,
            recipient_box_key=self._coord_box,
            nonce=self._nonce(),
            now_ms=self._now_ms(),
        )

    def _before_work(self) -> None:
        """Called when an authentic task or MPC session is about to run (a hook for subclasses)."""

    def _outgoing(self, kind: str, data: bytes) -> bytes:
        """The bytes a reply of ``kind`` carries (``result``/``mpc_result`` outputs, ``mpc_contrib``
        contributions); the identity here. A hook for subclasses (:mod:`edil.runtime.testing`
        injects faults through it), called before the output is committed to and signed.
        """
        return data

    def _to_peer(self, data: bytes, party: int, peer: int) -> bytes:
        """The contribution of party ``party`` in a direct Masked session as sent to party ``peer`` (after :meth:`_outgoing`);
        the identity here, the same for every peer. A hook for subclasses (:mod:`edil.runtime.testing`
        equivocates through it)."""
        return data

    def _claimed_product(self, index: int, c: Any) -> Any:
        """The ``index``-th ring product ``C`` of a Masked session as this node commits to it and goes on
        with; the identity here. A hook for subclasses (:mod:`edil.runtime.testing` lies through it)."""
        return c

    def _sign(self, job_id: bytes, epoch: int, params_hash: bytes, model_c: bytes, input_c: bytes, output: bytes, work: int, start_ms: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        end_ms = max(self._now_ms(), start_ms)
        t = Transcript(job_id, epoch, self.address, params_hash, model_c, input_c, commit_bytes(output), work, start_ms, end_ms)
        out = transcript_to_wire(sign_transcript(t, self.identity.chain_key, self.domain))
        self.proof_s += time.perf_counter() - t0
        return out

    def handle(self, envelope: bytes) -> bytes:
        """Open a coordinator envelope, act on it, and return the sealed, signed reply.

        A task the node cannot run (its runner raises) is answered with a sealed, signed
        ``error`` reply ``{"job_id", "error": class name, "message"}``, not an exception.

        Raises:
            VerificationError / ReplayError: the envelope is not an authentic, fresh message
                from the coordinator (the node does nothing with it).
            SerializationError: an authentic message with a malformed body.
        """
        t0 = time.perf_counter()
        msg = self._open(envelope)
        return self._act(msg, spent_s=time.perf_counter() - t0)

    def _open(self, envelope: bytes) -> Message:
        """The first phase of :meth:`handle`: authenticate, decrypt and replay-check ``envelope``, once.

        The NATS daemon calls the two phases apart to see what a task is before choosing where it runs;
        the opened message must then go to :meth:`_act` (the replay guard has recorded it).

        Raises:
            VerificationError / ReplayError: as :meth:`handle` (counted in ``rejected``).
        """
        try:
            with self._lock:
                return open_envelope(
                    envelope, box_key=self.identity.box, trusted=self._coord, guard=self._guard, now_ms=self._now_ms(), kinds=_KINDS
                )
        except VerificationError:
            self.rejected += 1
            raise

    def _act(self, msg: Message, *, spent_s: float = 0.0) -> bytes:
        """The second phase of :meth:`handle`: act on a message :meth:`_open` returned, and seal the reply.

        ``spent_s``: the time opening it took (counted in ``busy_s`` with this phase's).

        Raises:
            SerializationError: as :meth:`handle`.
        """
        t0 = time.perf_counter() - spent_s
        try:
            body = msg.body
            if msg.kind == "ping":
                return self._reply("pong", {"echo": body})
            if msg.kind == "task":
                return self._run_task(body)
            if msg.kind in _REPLICATED_KINDS:  # a Replicated party (edil.runtime._replicated_session)
                return _replicated_handle(self, msg.kind, body)
            if msg.kind == "mpc_start":
                return self._mpc_start(body)
            return self._mpc_step(body)
        finally:
            self.busy_s += time.perf_counter() - t0

    def _run_task(self, body: Any) -> bytes:
        try:
            job_id, epoch, task = bytes(body["job_id"]), int(body["epoch"]), Task.from_wire(body["task"])
        except (KeyError, TypeError, ValueError):
            raise SerializationError("bad task message") from None
        start_ms = self._now_ms()
        self._before_work()
        runner = self.runners.get(task.scheme)
        t0 = time.perf_counter()
        try:
            if runner is None:
                raise EdilError(f"node has no runner for scheme {task.scheme!r}")
            if task.context_cid or task.model_cid or task.input_cid:
                if self.blobs is None:
                    raise EdilError("the task carries inputs by R1FS CID and this node has no R1FS store")
                task = self.blobs.resolve(task, self.identity)
            output = runner.run(task)
        except Exception as exc:  # noqa: BLE001 - the task cannot run here: say so, signed, instead of dying
            # The coordinator tells a task that fails the same way everywhere (it fails the job)
            # from a faulty node (the task moves), so the reply names the error class.
            self.compute_s += time.perf_counter() - t0
            self.task_errors += 1
            err = {"job_id": job_id, "error": type(exc).__name__[:MAX_ERROR_CLASS], "message": str(exc)[:MAX_ERROR_MESSAGE]}
            return self._reply("error", err)
        t1 = time.perf_counter()
        self.compute_s += t1 - t0
        output = self._outgoing("result", output)
        commits = commit_json(task.params), commit_bytes(task.model), commit_bytes(task.input)
        self.proof_s += time.perf_counter() - t1
        tr = self._sign(job_id, epoch, *commits, output, task.work_units, start_ms)
        self.completed += 1
        return self._reply("result", {"job_id": job_id, "output": output, "transcript": tr})

    def _mpc_start(self, body: Any) -> bytes:
        try:
            sid = bytes(body["session"])
            model = bytes(body["model"])
            share = array_from_bytes(body["share"])
            material = resolve_material(body["material"], self.blobs, self.identity)  # fetched once when sent by CID
            sess = PartySession(body["party"], body["n"], body["frac_bits"], model, share, material,
                                claim=self._claimed_product)
            t0 = time.perf_counter()
            meta = {
                "job_id": bytes(body["job_id"]),
                "epoch": int(body["epoch"]),
                "params": commit_json(body["params"]),
                "model": commit_bytes(body["model"]),
                "input": commit_bytes(body["share"]),
                "work": int(body["work_units"]),
                "start": self._now_ms(),
            }
            self.proof_s += time.perf_counter() - t0
        except (KeyError, TypeError, ValueError) as exc:
            raise SerializationError(f"bad mpc_start message: {exc}") from None
        self._before_work()
        if "peers" in body:  # the parties exchange contributions directly: the whole session runs here
            return self._mpc_direct(sid, sess, meta, body)
        with self._lock:
            # Sessions a coordinator abandoned (a party failed elsewhere) never finish: keep the
            # newest few, so a node's memory stays bounded whatever the coordinator does.
            while len(self._sessions) >= MAX_SESSIONS:
                stale = next(iter(self._sessions))
                self._sessions.pop(stale)
                self._session_meta.pop(stale, None)
            self._sessions[sid] = sess
            self._session_meta[sid] = meta
        return self._advance(sid, sess, None)

    def _mpc_direct(self, sid: bytes, sess: PartySession, meta: dict[str, Any], body: Any) -> bytes:
        if self.peer_link is None:
            raise EdilError("this node has no channel to its peers (direct Masked sessions run over the bus)")
        t0 = time.perf_counter()
        arr, trace = run_direct_party(
            sess, body, link=self.peer_link, identity=self.identity, outgoing=lambda b: self._outgoing("mpc_contrib", b),
            clock_ms=self._now_ms, nonce=self._nonce, to_peer=self._to_peer,
        )
        self.compute_s += time.perf_counter() - t0
        out = self._outgoing("mpc_result", array_to_bytes(arr))
        tr = self._sign(meta["job_id"], meta["epoch"], meta["params"], meta["model"], meta["input"], out, meta["work"], meta["start"])
        self.completed += 1
        return self._reply("mpc_result", {"session": sid, "job_id": meta["job_id"], "output": out, "transcript": tr, "trace": trace,
                                          "products": products_to_wire(sess.products)})

    def _mpc_step(self, body: Any) -> bytes:
        try:
            sid, opened = bytes(body["session"]), bytes(body["opened"])
        except (KeyError, TypeError):
            raise SerializationError("bad mpc_step message") from None
        with self._lock:
            sess = self._sessions.get(sid)
        if sess is None:
            raise EdilError("unknown MPC session")
        return self._advance(sid, sess, opened)

    def _advance(self, sid: bytes, sess: PartySession, opened: Any) -> bytes:
        t0 = time.perf_counter()
        done, arr = sess.step(opened)
        self.compute_s += time.perf_counter() - t0
        if not done:
            contribution = self._outgoing("mpc_contrib", arr)
            return self._reply("mpc_contrib", {"session": sid, "round": sess.rounds, "contribution": contribution})
        with self._lock:
            self._sessions.pop(sid, None)
            meta = self._session_meta.pop(sid)
        out = self._outgoing("mpc_result", array_to_bytes(arr))
        tr = self._sign(meta["job_id"], meta["epoch"], meta["params"], meta["model"], meta["input"], out, meta["work"], meta["start"])
        self.completed += 1
        return self._reply("mpc_result", {"session": sid, "job_id": meta["job_id"], "output": out, "transcript": tr,
                                          "products": products_to_wire(sess.products)})

    def heartbeat(self, *, now_ms: int | None = None) -> bytes:
        """A signed heartbeat (see :mod:`edil.runtime._availability`), stamped with the node's own clock.

        Whoever may ask a node for heartbeats must not collect ones signed for future times, to
        replay them to the oracles while the node is down (an oracle checks a heartbeat's time
        against its own clock at receipt, which such a heartbeat passes). So a requested time is
        only a check, as on the NATS daemon (``serve_node``): unless the node was built with
        ``dev_clock``, the heartbeat carries the node's own time.

        Args:
            now_ms: the time the requester expects (ms since the Unix epoch); ``None``: the
                node's clock. Without ``dev_clock``, it must be within
                ``HEARTBEAT_REQUEST_SKEW_MS`` of the node's clock, and the node's time is signed;
                with ``dev_clock``, exactly ``now_ms`` is signed.

        Returns:
            The signed heartbeat's bytes.

        Raises:
            AuthorizationError: ``now_ms`` is more than ``HEARTBEAT_REQUEST_SKEW_MS`` from the
                node's clock (and the node has no ``dev_clock``).
            ParameterError: ``now_ms`` is not an int.
        """
        from ._availability import make_heartbeat

        own = self._now_ms()
        if now_ms is not None:
            if isinstance(now_ms, bool) or not isinstance(now_ms, numbers.Integral):
                raise ParameterError(f"now_ms must be an int of milliseconds, got {type(now_ms).__name__}")
            now_ms = int(now_ms)
        if now_ms is None:
            now = own
        elif self.dev_clock:
            now = now_ms
        else:
            check_heartbeat_request(now_ms, own, opt_in="EdgeNode(dev_clock=True)")
            now = own  # fail closed: a near request gets the node's own time, never the requested one
        with self._lock:
            # Sequence numbers follow the clock, so a restarted node (counter lost) does not
            # reuse numbers that oracles already saw and would drop as replays.
            self._seq = max(self._seq + 1, int(now))
            seq = self._seq
        return make_heartbeat(self.identity, seq=seq, now_ms=now)

    def __repr__(self) -> str:
        return f"EdgeNode({self.address})"
