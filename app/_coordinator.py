"""The coordinator daemon (``edil coordinator run``) and the job requests ``edil job`` sends it.

The daemon joins four library pieces: the on-chain registry (:class:`~edil.runtime.ChainRegistry`),
the executor that reaches node daemons over NATS (:class:`~edil.runtime.NatsExecutor`), the
:class:`~edil.runtime.Scheduler` and its SQLite :class:`~edil.runtime.Journal`. Its main loop

* attaches every address the registry admits whose node answers on the bus (``edil node run``),
  every 2 s; the scheduler still checks the registry before every dispatch, so a revoked node
  gets nothing more;
* polls each attached node's signed heartbeat every ``--heartbeat-s`` seconds and appends it,
  with the time it arrived, to ``<journal>.coordinator/heartbeats.jsonl`` (the cards to
  ``cards.jsonl``): ``edil epoch close`` hands them to the oracles' monitors;
* runs the journal's pending jobs, and the queued Masked jobs once enough nodes are attached.

Job requests. ``edil job submit|status|result`` send one NATS request each to
``edil.jobs.<coordinator tag>``. A request is an envelope of :func:`edil.runtime.seal_envelope`:
signed with the coordinator's Ed25519 key and sealed to its X25519 key (so only a holder of the
coordinator's seed can submit or read results, the bus sees only ciphertext, and a replayed
request is refused by the replay guard); the reply is sealed the same way and names the request
it answers. Plain jobs are journaled as tasks at once (the journal makes them durable); Masked
submissions are kept in ``<journal>.coordinator/jobs.sqlite`` until their session runs, and a
restarted daemon resumes them with the same job id (the journal then returns a finished session's
result rather than running it again).

Where the data owner's secrets are. A Plain job is plaintext for the nodes by declaration. A
CKKS job is encrypted by ``edil job submit`` itself: the secret key never leaves that process,
which waits for the ciphertext result and decrypts it (``--wait --out``; the coordinator and the
nodes get the public context only, and ``edil job result`` cannot decrypt a CKKS job). For a
Masked job this coordinator is the data owner's side, as in :meth:`Scheduler.run_masked`: it
shares the input, deals the correlated randomness and reconstructs the output (it keeps the
reconstructed output in ``jobs.sqlite`` for ``edil job result``). The nodes see one share each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edil import (
    EdilError,
    ParameterError,
    SchemeMismatchError,
    SerializationError,
    ShapeError,
    UnsupportedOperationError,
)

__all__ = ["CoordinatorDaemon", "JobBook", "job_main", "jobs_subject", "read_heartbeat_log", "request", "run_main", "state_dir"]

REQUEST_KINDS = ("job.submit", "job.status", "job.result")
REPLY_KIND = "job.reply"
MAX_PARTIES = 16


def jobs_subject(verify_key: bytes) -> str:
    """The NATS subject a coordinator serves job requests on."""
    return f"edil.jobs.{verify_key.hex()[:32]}"


def state_dir(journal: Path) -> Path:
    """The folder beside the journal with the daemon's job book and heartbeat log."""
    return journal.parent / (journal.name + ".coordinator")


def _nkey_seed(ed25519_seed: bytes) -> str:
    """The NKey user seed of an Ed25519 key (the coordinator's identity on a guarded bus)."""
    import nkeys

    return bytes(nkeys.encode_seed(bytes(ed25519_seed), nkeys.PREFIX_BYTE_USER)).decode()


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- the job book: Masked submissions until their session runs, and their outputs ---------------
_BOOK_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id BLOB PRIMARY KEY,
    scheme TEXT NOT NULL,
    request BLOB,
    state TEXT NOT NULL,
    output BLOB,
    error TEXT
);
"""


class JobBook:
    """What the daemon knows of each submitted job beyond the journal (SQLite, thread-safe).

    ``state`` is ``journaled`` for a Plain job (the journal has the rest), and ``queued``,
    ``done`` or ``failed`` for a Masked one.
    """

    def __init__(self, path: Path) -> None:
        # It holds Masked inputs until their session runs and reconstructed outputs: owner-only,
        # like the journal (created 0600 before SQLite opens it; its WAL files inherit the mode).
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_BOOK_SCHEMA)

    def add(self, job_id: bytes, scheme: str, request: bytes | None, state: str) -> bool:
        """Record a submission; ``False`` if the id is known (a resubmission is a no-op)."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO jobs (job_id, scheme, request, state) VALUES (?, ?, ?, ?)", (job_id, scheme, request, state)
            )
            return cur.rowcount == 1

    def get(self, job_id: bytes) -> tuple[str, str, bytes | None, str | None] | None:
        """``(scheme, state, output, error)``, or ``None`` for an unknown job."""
        with self._lock:
            r = self._db.execute("SELECT scheme, state, output, error FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if r is None else (r[0], r[1], None if r[2] is None else bytes(r[2]), r[3])

    def queued(self) -> list[tuple[bytes, bytes]]:
        with self._lock:
            rows = self._db.execute("SELECT job_id, request FROM jobs WHERE state = 'queued' ORDER BY rowid").fetchall()
        return [(bytes(r[0]), bytes(r[1])) for r in rows]

    def finish(self, job_id: bytes, *, output: bytes | None = None, error: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = ?, output = ?, error = ?, request = NULL WHERE job_id = ?",
                ("done" if error is None else "failed", output, error, job_id),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _pack_masked(model: bytes, x: bytes, parties: int) -> bytes:
    """A checked Masked submission as the book keeps it: parties, model length, model, input."""
    return parties.to_bytes(2, "big") + len(model).to_bytes(8, "big") + model + x


def _unpack_masked(data: bytes) -> tuple[bytes, bytes, int]:
    n = int.from_bytes(data[2:10], "big")
    return data[10 : 10 + n], data[10 + n :], int.from_bytes(data[:2], "big")


# --- heartbeat log ------------------------------------------------------------------------------
def _card_record(card: Any) -> dict[str, Any]:
    return {
        "address": card.address, "signing_key": card.signing_key.hex(), "box_key": card.box_key.hex(),
        "capabilities": card.capabilities.to_wire(), "signature": card.signature.hex(),
    }


def read_heartbeat_log(folder: Path) -> tuple[list[Any], list[tuple[int, bytes]]]:
    """The node cards and ``(arrival ms, heartbeat bytes)`` the daemon logged in ``folder``.

    Every card is verified (its chain key signs its keys); a line that does not parse is skipped
    (the log is appended to by a process that may have been killed mid-line).

    Raises:
        VerificationError: a card that does not verify.
    """
    from edil.runtime import Capabilities, NodeCard

    cards: dict[str, Any] = {}
    beats: list[tuple[int, bytes]] = []
    for name, sink in (("cards.jsonl", "cards"), ("heartbeats.jsonl", "beats")):
        try:
            lines = (folder / name).read_text().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                d = json.loads(line)
                if sink == "cards":
                    caps = Capabilities(tuple(d["capabilities"]["accelerators"]), int(d["capabilities"]["memory_bytes"]))
                    card = NodeCard(d["address"], bytes.fromhex(d["signing_key"]), bytes.fromhex(d["box_key"]), caps,
                                    bytes.fromhex(d["signature"]))
                    cards[card.address] = card.verify()
                else:
                    beats.append((int(d["t"]), bytes.fromhex(d["hb"])))
            except (ValueError, KeyError, TypeError):
                continue
    return list(cards.values()), beats


# --- the daemon ---------------------------------------------------------------------------------
class CoordinatorDaemon:
    """The coordinator as a long-running process (see the module docstring).

    Args:
        seed: the coordinator's secret seed.
        deployment: the bound ``edil.proofs.Deployment``.
        nats_url: the NATS server.
        journal_path: the SQLite journal (its folder also holds the daemon's state).
        heartbeat_s: seconds between heartbeat polls.
        task_timeout_s: seconds a node may take per task.
        log: where progress lines go.
    """

    def __init__(
        self, seed: bytes, deployment: Any, nats_url: str, journal_path: Path, *, heartbeat_s: float = 60.0,
        task_timeout_s: float = 60.0, log: Callable[[str], Any] = print,
    ) -> None:
        from edil.runtime import ChainRegistry, CoordinatorIdentity, CoordinatorKeys, Journal, NatsExecutor, Scheduler

        self.identity = CoordinatorIdentity.from_seed(seed)
        self.seed = seed
        self.deployment = deployment
        self.keys = CoordinatorKeys(self.identity.verify_key, self.identity.box_key, deployment.poai_domain)
        self.url, self.heartbeat_s, self.log = nats_url, heartbeat_s, log
        self.stop = threading.Event()
        # The bus first: a server that does not answer leaves no journal or state behind.
        self.executor = NatsExecutor(nats_url, identity=self.identity)
        self.state = state_dir(journal_path)
        self.state.mkdir(mode=0o700, exist_ok=True)
        self.journal = Journal(str(journal_path))
        self.book = JobBook(self.state / "jobs.sqlite")
        self.registry = ChainRegistry(deployment)
        self.scheduler = Scheduler(
            self.executor, self.registry, self.journal, identity=self.identity, domain=deployment.poai_domain,
            epoch=deployment.current_epoch, timeout_s=task_timeout_s,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="edil-jobs", daemon=True)
        self._nc: Any = None
        self._guard: Any = None

    # --- job requests (on the NATS thread) -------------------------------------------------------
    async def _serve(self) -> None:
        import nats

        from edil.runtime import ReplayGuard

        self._guard = ReplayGuard()
        self._nc = await nats.connect(
            self.url, name="edil-coordinator-jobs", nkeys_seed_str=_nkey_seed(bytes(self.identity.signing)),
            connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=1,
        )
        await self._nc.subscribe(jobs_subject(self.identity.verify_key), cb=self._on_request)
        await self._nc.flush()

    async def _on_request(self, msg: Any) -> None:
        from edil.runtime import open_envelope, seal_envelope

        if not msg.reply:
            return
        try:
            req = open_envelope(bytes(msg.data), box_key=self.identity.box, trusted=(self.identity.verify_key,), guard=self._guard,
                                now_ms=_now_ms(), kinds=REQUEST_KINDS)
        except EdilError:
            return  # not sealed by the coordinator's key: not answered at all
        try:
            body = self._handle(req.kind, req.body)
        except Exception as exc:  # noqa: BLE001 - whatever a request does wrong, the submitter reads one line
            body = {"refused": f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"}
        body["re"] = req.nonce
        reply = seal_envelope(REPLY_KIND, body, signing_key=self.identity.signing, recipient_box_key=self.identity.box_key,
                              nonce=os.urandom(16), now_ms=_now_ms())
        await self._nc.publish(msg.reply, reply)

    def _handle(self, kind: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise SerializationError("a job request body is a map")
        jid = body["job"]
        if not isinstance(jid, bytes) or len(jid) != 32:
            raise SerializationError("a job id is 32 bytes")
        if kind == "job.submit":
            return self._submit(jid, body)
        if kind == "job.status":
            return self._status(jid)
        return self._result(jid)

    def _submit(self, jid: bytes, body: dict[str, Any]) -> dict[str, Any]:
        from edil.runtime import Task, array_from_bytes, model_from_bytes

        scheme = body["scheme"]
        if scheme in ("plain", "ckks"):
            task = Task.from_bytes(body["task"])  # strict decoding of the submitter's bytes
            if task.scheme != scheme:
                raise SchemeMismatchError(f"a {scheme} job carries a {scheme} task, not {task.scheme!r}")
            redundancy = body.get("redundancy", 1)
            if not isinstance(redundancy, int) or not 1 <= redundancy <= 16:
                raise ParameterError("redundancy must be 1..16")
            if self.book.add(jid, scheme, None, "journaled"):
                self.scheduler.submit(task, job_id=jid, redundancy=redundancy)
        elif scheme == "masked":
            model, x = model_from_bytes(body["model"]), array_from_bytes(body["x"])
            parties = body["parties"]
            if not isinstance(parties, int) or not 2 <= parties <= MAX_PARTIES:
                raise ParameterError(f"parties must be 2..{MAX_PARTIES}")
            if x.ndim != 2 or x.shape[1] != model.in_features or x.shape[0] < 1 or not np.issubdtype(x.dtype, np.floating):
                raise ShapeError(f"the input must be a float (batch, {model.in_features}) array, got {x.dtype} {x.shape}")
            self.book.add(jid, "masked", _pack_masked(body["model"], body["x"], parties), "queued")
        else:
            raise ParameterError(f"unknown scheme {scheme!r}")
        return self._status(jid)

    def _status(self, jid: bytes) -> dict[str, Any]:
        entry = self.book.get(jid)
        if entry is None:
            raise ParameterError(f"unknown job {jid.hex()}")
        scheme, state, _, error = entry
        out: dict[str, Any] = {"job": jid.hex(), "scheme": scheme, "status": state, "error": error, "disputed": None}
        rec = self.journal.job(jid)
        if scheme != "masked":
            if rec is None:
                raise ParameterError(f"job {jid.hex()} is not in the journal")
            out["status"], out["error"] = rec.status, rec.error
        elif state == "queued" and rec is not None:
            out["status"] = "running"  # the book says done or failed once the output is decoded and kept
        if rec is not None:
            out["disputed"], out["attempts"] = rec.disputed, rec.attempts
        result = self.journal.result(jid)
        if result is not None:
            out["epoch"], out["nodes"] = result.epoch, list(result.nodes)
        return out

    def _result(self, jid: bytes) -> dict[str, Any]:
        status = self._status(jid)
        if status["status"] != "done":
            raise EdilError(f"job {jid.hex()[:16]} is {status['status']}" + (f": {status['error']}" if status.get("error") else ""))
        entry = self.book.get(jid)
        assert entry is not None
        if entry[0] != "masked":
            return {"output": self.scheduler.result(jid), "scheme": entry[0]}  # refuses a disputed result
        if status["disputed"]:
            raise EdilError(f"the result of job {jid.hex()[:16]} is disputed: {status['disputed']}")
        return {"output": entry[2], "scheme": "masked"}

    # --- the main loop ---------------------------------------------------------------------------
    def _attach(self) -> None:
        from edil import AuthorizationError, ChainError, RuntimeTaskError, VerificationError

        try:
            admitted = self.registry.admitted()
        except ChainError as exc:
            self.log(f"registry unavailable: {exc}")
            return
        have = {a.lower() for a in self.scheduler.nodes}
        for address in sorted(admitted - have):
            try:
                card = self.executor.attach(address, coordinator=self.keys, timeout_s=2.0)
                self.scheduler.add_node(card)
            except (RuntimeTaskError, VerificationError, AuthorizationError):
                continue  # not running (yet), or not who it claims: asked again at the next round
            with open(self.state / "cards.jsonl", "a") as f:
                f.write(json.dumps(_card_record(card)) + "\n")
            self.log(f"attached node {card.address}")

    def _beat(self) -> None:
        from edil import RuntimeTaskError

        lines = []
        for address in self.scheduler.nodes:
            try:
                hb = self.executor.heartbeat(address)
            except RuntimeTaskError:
                continue  # away: the missing slot is what availability measures
            lines.append(json.dumps({"node": address, "t": _now_ms(), "hb": hb.hex()}))
        if lines:
            with open(self.state / "heartbeats.jsonl", "a") as f:
                f.write("\n".join(lines) + "\n")

    def _run_masked(self, jid: bytes, request: bytes) -> bool:
        """Run one queued Masked job; ``False`` while too few nodes are attached."""
        from edil import Masked
        from edil.runtime import array_from_bytes, array_to_bytes, model_from_bytes

        model_b, x_b, parties = _unpack_masked(request)
        if len(self.scheduler.nodes) < parties:
            return False
        try:
            model, x = model_from_bytes(model_b), array_from_bytes(x_b)
            scheme = Masked(parties)
            shared = self.scheduler.run_masked(scheme, model, scheme.encode(x), job_id=jid)
            y = np.asarray(scheme.decode(shared), dtype=np.float64)
        except EdilError as exc:
            self.book.finish(jid, error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}")
            self.log(f"masked job {jid.hex()[:16]} failed: {exc}")
            return True
        self.book.finish(jid, output=array_to_bytes(y))
        self.log(f"masked job {jid.hex()[:16]} done on {parties} parties")
        return True

    def serve(self, ready: Callable[[], None] | None = None) -> None:
        """Run until :attr:`stop` is set (SIGTERM/SIGINT set it when called from the main thread)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop.set())
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)
        except Exception as exc:  # noqa: BLE001 - any connection failure: one line
            raise EdilError(f"cannot serve job requests on {self.url}: {exc!r}") from None
        if ready is not None:
            ready()
        next_attach = next_beat = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_attach:
                self._attach()
                next_attach = now + 2.0
            if now >= next_beat and self.scheduler.nodes:
                self._beat()
                next_beat = now + self.heartbeat_s
            for jid, request in self.book.queued():
                if self.stop.is_set() or not self._run_masked(jid, request):
                    break
            if self.scheduler.nodes and any(r.kind == "task" for r in self.journal.pending()):
                try:
                    self.scheduler.run()
                except EdilError as exc:  # e.g. the registry unreadable past its bound: the jobs stay pending
                    self.log(f"scheduling paused: {type(exc).__name__}: {exc}")
                    self.stop.wait(2.0)
            self.stop.wait(0.2)

    def close(self) -> None:
        if self._nc is not None and self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._nc.close(), self._loop).result(timeout=10)
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self.executor.close()  # attached nodes belong to their operators: they keep running
        self.book.close()
        self.journal.close()


def run_main(args: argparse.Namespace) -> int:
    """``edil coordinator run`` (arguments are checked before anything is opened)."""
    from edil.app._node_cli import read_seed
    from edil.app._ops_cli import check_rpc_url, load_deployment, open_deployment
    from edil.runtime import check_nats_url

    check_nats_url(args.nats)
    if args.rpc is not None:
        check_rpc_url(args.rpc)
    if args.heartbeat_s <= 0 or args.task_timeout <= 0:
        raise EdilError("--heartbeat-s and --task-timeout must be positive")
    seed = read_seed(args.key_file)
    rec = load_deployment(args.deployment)
    if not args.journal.parent.is_dir():
        raise EdilError(f"cannot create the journal {args.journal}: no directory {args.journal.parent}")
    _, dep = open_deployment(rec, None, args.rpc)

    def log(line: str) -> None:
        print(f"edil coordinator: {line}", file=sys.stderr, flush=True)

    daemon = CoordinatorDaemon(seed, dep, args.nats, args.journal, heartbeat_s=args.heartbeat_s, task_timeout_s=args.task_timeout, log=log)

    def ready() -> None:
        print(json.dumps({"coordinator": daemon.identity.verify_key.hex(), "jobs": jobs_subject(daemon.identity.verify_key),
                          "nats": args.nats, "chain_id": rec.chain_id}), flush=True)
        log(f"serving jobs on {args.nats} (SIGTERM or Ctrl-C to stop)")

    try:
        daemon.serve(ready)
    finally:
        daemon.close()
    log("stopped")
    return 0


# --- the client side: edil job ------------------------------------------------------------------
async def _request_async(seed: bytes, url: str, kind: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    import nats
    import nats.errors

    from edil.runtime import CoordinatorIdentity, ReplayGuard, open_envelope, seal_envelope

    ident = CoordinatorIdentity.from_seed(seed)
    nonce = os.urandom(16)
    env = seal_envelope(kind, body, signing_key=ident.signing, recipient_box_key=ident.box_key, nonce=nonce, now_ms=_now_ms())
    try:
        nc = await nats.connect(url, name="edil-job", nkeys_seed_str=_nkey_seed(bytes(ident.signing)), connect_timeout=3,
                                allow_reconnect=False, max_reconnect_attempts=0)
    except Exception as exc:  # noqa: BLE001 - refused, unreachable, bad credentials: one line
        raise EdilError(f"cannot connect to NATS at {url}: {type(exc).__name__}: {exc}") from None
    try:
        try:
            msg = await nc.request(jobs_subject(ident.verify_key), env, timeout=timeout_s)
        except nats.errors.NoRespondersError:
            raise EdilError(f"no coordinator with this key serves jobs on {url} (is `edil coordinator run` running?)") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise EdilError(f"the coordinator did not answer within {timeout_s:g} s") from None
    finally:
        await nc.close()
    reply = open_envelope(bytes(msg.data), box_key=ident.box, trusted=(ident.verify_key,), guard=ReplayGuard(), now_ms=_now_ms(),
                          kinds=(REPLY_KIND,))
    out = reply.body
    if not isinstance(out, dict) or out.get("re") != nonce:
        raise EdilError("the coordinator's reply does not answer this request")
    if "refused" in out:
        raise EdilError(f"the coordinator refused: {out['refused']}")
    return out


def request(seed: bytes, url: str, kind: str, body: dict[str, Any], *, timeout_s: float = 30.0) -> dict[str, Any]:
    """Send one sealed job request to the coordinator whose seed is ``seed``; returns its reply body.

    Raises:
        EdilError: no connection, no coordinator, a refusal (its reason), or a reply that does
            not verify.
    """
    return asyncio.run(_request_async(seed, url, kind, body, timeout_s))


def _job_id(text: str) -> bytes:
    t = text[2:] if text[:2].lower() == "0x" else text
    try:
        jid = bytes.fromhex(t)
    except ValueError:
        jid = b""
    if len(jid) != 32:
        raise EdilError(f"{text!r} is not a job id (64 hex digits)")
    return jid


def _load_input(path: Path) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise EdilError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise EdilError(f"{path} is not a .npy array: {exc}") from None
    if not isinstance(x, np.ndarray) or x.ndim < 2 or x.shape[0] < 1 or not np.issubdtype(x.dtype, np.number):
        raise EdilError(f"{path} must hold a numeric array with one row per sample, got {getattr(x, 'shape', None)}")
    x = x.reshape(len(x), -1).astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise EdilError(f"{path} holds non-finite values")
    return x


def _write_output(path: Path, output: bytes) -> None:
    from edil.runtime import array_from_bytes

    y = array_from_bytes(output)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise EdilError(f"{path} exists; refusing to overwrite it") from None
    with os.fdopen(fd, "wb") as f:
        np.save(f, y, allow_pickle=False)


def job_main(args: argparse.Namespace) -> int:
    """``edil job submit|status|result``."""
    from edil.app._node_cli import read_seed
    from edil.runtime import check_nats_url

    check_nats_url(args.nats)
    out = getattr(args, "out", None)
    if out is not None and (out.exists() or not out.parent.is_dir()):
        raise EdilError(f"cannot write {out}: it exists or its folder does not")
    if args.job_command == "submit":
        if args.wait != (out is not None):
            raise EdilError("--wait and --out go together")
        if args.scheme == "ckks" and not args.wait:
            raise EdilError("a CKKS job needs --wait --out: its secret key lives only in the submitting process")
        if args.parties < 2 or args.parties > MAX_PARTIES or args.redundancy < 1:
            raise EdilError(f"--parties must be 2..{MAX_PARTIES} and --redundancy at least 1")
        seed = read_seed(args.key_file)
        x = _load_input(args.input)
        return _submit(seed, args, x)
    seed = read_seed(args.key_file)
    jid = _job_id(args.job)
    if args.job_command == "status":
        print(json.dumps(request(seed, args.nats, "job.status", {"job": jid}), indent=2, default=_hex))
        return 0
    reply = request(seed, args.nats, "job.result", {"job": jid}, timeout_s=120.0)
    if reply.get("scheme") == "ckks":
        raise EdilError(f"job {jid.hex()[:16]} is a CKKS job: its output is a ciphertext that only the submitting process "
                        "could decrypt (submit CKKS jobs with --wait --out)")
    _write_output(args.out, reply["output"])
    return 0


def _hex(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise UnsupportedOperationError(f"a {type(value).__name__} in a reply has no JSON form (only bytes are printed, as hex)")


def _submit(seed: bytes, args: argparse.Namespace, x: np.ndarray) -> int:
    from edil import models
    from edil.runtime import Task, array_to_bytes, model_to_bytes

    if not args.model.is_file():
        raise EdilError(f"no model file {args.model}")
    model = models.from_onnx(str(args.model))
    if x.shape[1] != model.in_features:
        raise EdilError(f"the model takes {model.in_features} features per sample; {args.input} has {x.shape[1]}")
    jid = os.urandom(32)
    body: dict[str, Any] = {"job": jid, "scheme": args.scheme}
    ckks: Any = None
    if args.scheme == "plain":
        body["task"] = Task.plain(model, x, allow_plaintext=True).to_bytes()  # the operator chose plaintext with --scheme plain
        body["redundancy"] = args.redundancy
    elif args.scheme == "ckks":
        from edil import CKKS

        # The secret key is made here and never leaves this process: the task carries the public
        # context, and the ciphertext result is decrypted here once the job is done.
        ckks = CKKS.for_model(model)
        if len(x) > ckks.slots:
            raise EdilError(f"a CKKS job holds at most {ckks.slots} samples at these parameters; {args.input} has {len(x)}")
        body["task"] = Task.for_scheme(ckks, model, ckks.encode(x), model_public=True).to_bytes()
        body["redundancy"] = args.redundancy
    else:
        body["model"], body["x"], body["parties"] = model_to_bytes(model), array_to_bytes(x), args.parties
    request(seed, args.nats, "job.submit", body)
    print(jid.hex(), flush=True)
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while True:
        status = request(seed, args.nats, "job.status", {"job": jid})
        if status["status"] == "done":
            break
        if status["status"] == "failed":
            print(f"edil job: job {jid.hex()[:16]} failed: {status.get('error')}", file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            raise EdilError(f"job {jid.hex()[:16]} is still {status['status']} after {args.timeout:g} s")
        time.sleep(0.5)
    output = request(seed, args.nats, "job.result", {"job": jid}, timeout_s=120.0)["output"]
    if ckks is not None:
        from edil.runtime import array_to_bytes

        output = array_to_bytes(np.asarray(ckks.decode(ckks.deserialize(output)), dtype=np.float64))
    _write_output(args.out, output)
    return 0
