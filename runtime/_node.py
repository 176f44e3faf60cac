"""The edge node: authenticates the coordinator, runs tasks, signs PoAI transcripts and heartbeats."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edil import EdilError, SerializationError, VerificationError

from ._deps import Eip712Domain, SignedTranscript, Transcript, commit_bytes, commit_json, sign_transcript
from ._federated import FedTrainRunner
from ._identity import Capabilities, NodeCard, NodeIdentity
from ._mpc import PartySession
from ._task import Runner, Task, default_runners, array_from_bytes, array_to_bytes, model_from_bytes
from ._transport import ReplayGuard, open_envelope, seal_envelope

__all__ = ["EdgeNode", "Faults", "transcript_from_wire", "transcript_to_wire"]

_KINDS = ("task", "mpc_start", "mpc_step", "ping")


@dataclass(frozen=True)
class Faults:
    """Injected misbehaviour for fault-tolerance tests and chaos drills.

    Attributes:
        mode: ``"crash"`` (raise), ``"hang"`` (sleep ``hang_s`` then answer late),
            ``"wrong"`` (return a wrong output, with a transcript signed over it: byzantine) or
            ``"tamper"`` (a Masked party shifts every contribution it sends, then computes its
            output share honestly from the openings: the result is wrong, its output looks right).
        after: behave honestly for this many tasks first.
        hang_s: how long a hang lasts (bounded, so test threads always finish).
    """

    mode: str
    after: int = 0
    hang_s: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in ("crash", "hang", "wrong", "tamper"):
            raise ValueError(f"unknown fault mode {self.mode!r}")


def transcript_to_wire(st: SignedTranscript) -> dict[str, Any]:
    t = st.transcript
    return {
        "job_id": t.job_id,
        "epoch": t.epoch,
        "node": t.node,
        "params": t.scheme_params_hash,
        "model": t.model_commitment,
        "input": t.input_commitment,
        "output": t.output_commitment,
        "work": t.work_units,
        "start": t.started_at,
        "end": t.ended_at,
        "sig": st.signature,
    }


def transcript_from_wire(d: Any) -> SignedTranscript:
    try:
        t = Transcript(
            d["job_id"], d["epoch"], d["node"], d["params"], d["model"], d["input"], d["output"], d["work"], d["start"], d["end"]
        )
        return SignedTranscript(t, d["sig"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SerializationError(f"bad transcript record: {exc}") from None


def _corrupt(output: bytes) -> bytes:
    try:
        arr = array_from_bytes(output)
        if arr.dtype == np.uint64:  # a ring share: shift the value by 16.0 at 16 fractional bits
            with np.errstate(over="ignore"):
                return array_to_bytes(arr + np.uint64(1 << 20))
        return array_to_bytes(arr + np.ones_like(arr))
    except EdilError:
        return output[:-1] + bytes([output[-1] ^ 1]) if output else b"\x01"


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
        faults: injected misbehaviour (tests only).

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
        faults: Faults | None = None,
        replay_window_ms: int = 120_000,
    ) -> None:
        self.identity = identity
        self._coord = (bytes(coordinator_key),)
        self._coord_box = bytes(coordinator_box_key)
        self.domain = domain
        self.card: NodeCard = identity.card(capabilities)
        self.runners: dict[str, Runner] = {**default_runners(), "fedtrain": FedTrainRunner(identity), **(runners or {})}
        self.clock = clock
        self._nonce = nonce or (lambda: os.urandom(16))
        self.faults = faults
        self._guard = ReplayGuard(replay_window_ms)
        self._lock = threading.Lock()
        self._sessions: dict[bytes, PartySession] = {}
        self._session_meta: dict[bytes, dict[str, Any]] = {}
        self._seq = 0
        self.completed = 0
        self.rejected = 0
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

    def _misbehave(self) -> str | None:
        f = self.faults
        if f is None or self.completed < f.after:
            return None
        if f.mode == "crash":
            raise RuntimeError(f"node {self.address} crashed (injected fault)")
        if f.mode == "hang":
            time.sleep(f.hang_s)
        return f.mode

    def _sign(self, job_id: bytes, epoch: int, params_hash: bytes, model_c: bytes, input_c: bytes, output: bytes, work: int, start_ms: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        end_ms = max(self._now_ms(), start_ms)
        t = Transcript(job_id, epoch, self.address, params_hash, model_c, input_c, commit_bytes(output), work, start_ms, end_ms)
        out = transcript_to_wire(sign_transcript(t, self.identity.chain_key, self.domain))
        self.proof_s += time.perf_counter() - t0
        return out

    def handle(self, envelope: bytes) -> bytes:
        """Open a coordinator envelope, act on it, and return the sealed, signed reply.

        Raises:
            VerificationError / ReplayError: the envelope is not an authentic, fresh message
                from the coordinator (the node does nothing with it).
            SerializationError: an authentic message with a malformed body.
        """
        t0 = time.perf_counter()
        try:
            with self._lock:
                msg = open_envelope(
                    envelope, box_key=self.identity.box, trusted=self._coord, guard=self._guard, now_ms=self._now_ms(), kinds=_KINDS
                )
        except VerificationError:
            self.rejected += 1
            raise
        try:
            body = msg.body
            if msg.kind == "ping":
                return self._reply("pong", {"echo": body})
            if msg.kind == "task":
                return self._run_task(body)
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
        mode = self._misbehave()
        runner = self.runners.get(task.scheme)
        if runner is None:
            raise EdilError(f"node has no runner for scheme {task.scheme!r}")
        t0 = time.perf_counter()
        output = runner.run(task)
        t1 = time.perf_counter()
        self.compute_s += t1 - t0
        if mode == "wrong":
            output = _corrupt(output)
        commits = commit_json(task.params), commit_bytes(task.model), commit_bytes(task.input)
        self.proof_s += time.perf_counter() - t1
        tr = self._sign(job_id, epoch, *commits, output, task.work_units, start_ms)
        self.completed += 1
        return self._reply("result", {"job_id": job_id, "output": output, "transcript": tr})

    def _mpc_start(self, body: Any) -> bytes:
        try:
            sid = bytes(body["session"])
            model = model_from_bytes(body["model"])
            share = array_from_bytes(body["share"])
            sess = PartySession(int(body["party"]), int(body["n"]), int(body["frac_bits"]), model, share, list(body["material"]))
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
        self._misbehave()
        with self._lock:
            self._sessions[sid] = sess
            self._session_meta[sid] = meta
        return self._advance(sid, sess, None)

    def _mpc_step(self, body: Any) -> bytes:
        try:
            sid, opened = bytes(body["session"]), array_from_bytes(body["opened"])
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
            if self.faults is not None and self.faults.mode == "tamper" and self.completed >= self.faults.after:
                with np.errstate(over="ignore"):
                    arr = arr + np.uint64(1 << 40)
            return self._reply("mpc_contrib", {"session": sid, "round": sess.rounds, "contribution": array_to_bytes(arr)})
        with self._lock:
            self._sessions.pop(sid, None)
            meta = self._session_meta.pop(sid)
        out = array_to_bytes(arr)
        if self.faults is not None and self.faults.mode == "wrong" and self.completed >= self.faults.after:
            out = _corrupt(out)
        tr = self._sign(meta["job_id"], meta["epoch"], meta["params"], meta["model"], meta["input"], out, meta["work"], meta["start"])
        self.completed += 1
        return self._reply("mpc_result", {"session": sid, "job_id": meta["job_id"], "output": out, "transcript": tr})

    def heartbeat(self, *, now_ms: int | None = None) -> bytes:
        """A signed heartbeat (see :mod:`edil.runtime._availability`)."""
        from ._availability import make_heartbeat

        now = self._now_ms() if now_ms is None else now_ms
        with self._lock:
            # Sequence numbers follow the clock, so a restarted node (counter lost) does not
            # reuse numbers that oracles already saw and would drop as replays.
            self._seq = max(self._seq + 1, int(now))
            seq = self._seq
        return make_heartbeat(self.identity, seq=seq, now_ms=now)

    def __repr__(self) -> str:
        return f"EdgeNode({self.address})"
