"""The coordinator's durable job journal (SQLite, WAL).

Every state change is one SQLite transaction, so a coordinator killed at any instant leaves the
journal either before or after the change. A job is ``pending`` until its result is recorded;
:meth:`Journal.complete` records a result **at most once** (a second completion of the same job
is refused and reported), so a restarted coordinator resumes exactly the unfinished jobs and
never double-counts a finished one. Transcripts of the nodes that ran a job are stored with it
and feed the epoch batches.

Durability: ``synchronous=NORMAL`` in WAL mode survives a crash of the process (the case the
tests drill); pass ``durable=True`` (``synchronous=FULL``) to survive power loss as well.
A file journal copies its write-ahead log into the database file (a checkpoint) in a thread of
its own once about ``CHECKPOINT_BYTES`` were written, so the transaction that grows the log is not
also the one that pays for the copy and its fsyncs; a checkpoint never changes what a commit made
durable, and the writer's own checkpoint stays on as a backstop at ``BACKSTOP_PAGES`` log pages.
A job's spec is stored once, in a table of its own (see ``job_specs``).

Confidentiality: the journal holds every job's spec (encoded inputs, models, public contexts)
and its outputs, so a new journal file is created readable by its owner only (mode 0600);
SQLite gives the ``-wal`` and ``-shm`` files it creates beside it the database file's mode.

A failed job can be put back to ``pending`` (:meth:`Journal.retry`), e.g. after an outage.

Disputes: when a node fails its PoAI audit, every job whose accepted result its transcript in
that epoch is part of is marked disputed (:meth:`Journal.dispute`, a ``disputed`` reason on the
job, kept apart from its status); journals written before the column existed gain it when opened.

Services (Deeploy): the latest owner-signed spec of each service, its replicas' placements and a
log of every change (:meth:`Journal.put_service`, :meth:`Journal.move_replicas`,
:meth:`Journal.service_events`); the tables are created when a journal is opened, so an older
journal gains them too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edil import ParameterError

__all__ = ["Journal", "JobRecord", "ResultRecord", "ServiceRecord"]

#: Bytes written (journaled specs and outputs, a page per other commit) after which the checkpoint thread runs.
CHECKPOINT_BYTES = 4 << 20
#: The writing connection's own automatic checkpoint, in log pages: a backstop should the thread fall behind.
BACKSTOP_PAGES = 16384
#: Bytes of the specs this journal wrote that :meth:`Journal.pending` serves without reading them back (a job's
#: spec never changes once journaled, so the copy is always right; a submitted job is usually run at once).
SPEC_CACHE_BYTES = 64 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BLOB NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    spec BLOB NOT NULL,
    redundancy INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE TABLE IF NOT EXISTS results (
    job_id BLOB PRIMARY KEY REFERENCES jobs(job_id),
    output BLOB NOT NULL,
    output_commitment BLOB NOT NULL,
    nodes TEXT NOT NULL,
    epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS transcripts (
    job_id BLOB NOT NULL,
    node TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    record BLOB NOT NULL,
    agreed INTEGER NOT NULL,
    PRIMARY KEY (job_id, node)
);
CREATE INDEX IF NOT EXISTS transcripts_by_epoch ON transcripts (node, epoch);
-- pending() must not read every job's spec: status sits after the spec blob in a row, so a scan walks
-- every blob's overflow pages (a gateway journals megabytes of ciphertext per request).
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
-- A job's spec lives apart from its row (jobs.spec is empty for jobs journaled since): SQLite rewrites a
-- whole row, overflow pages included, on every UPDATE, so a status change of a job whose spec sat in its
-- row wrote its megabytes again. Rows written before keep their spec in jobs.spec and are read from there.
CREATE TABLE IF NOT EXISTS job_specs (
    job_id BLOB PRIMARY KEY,
    spec BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS faults (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    job_id BLOB,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS services (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    service_id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    spec BLOB NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS placements (
    service_id TEXT NOT NULL REFERENCES services(service_id),
    node TEXT NOT NULL,
    version INTEGER NOT NULL,
    revision TEXT NOT NULL,
    PRIMARY KEY (service_id, node)
);
CREATE TABLE IF NOT EXISTS service_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    node TEXT,
    version INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class JobRecord:
    """One journaled job; ``disputed`` is why its result is disputed (``None`` when it is not)."""

    job_id: bytes
    kind: str
    spec: bytes
    redundancy: int
    status: str
    attempts: int
    error: str | None
    disputed: str | None = None


@dataclass(frozen=True)
class ResultRecord:
    job_id: bytes
    output: bytes
    output_commitment: bytes
    nodes: tuple[str, ...]
    epoch: int


@dataclass(frozen=True)
class ServiceRecord:
    """One journaled service: its latest signed spec (``spec``, as its owner signed it) and placements.

    Attributes:
        placements: ``(node, version, revision)`` of each replica, by node address: the spec
            version it was placed under and the revision (model and parameters) it runs.
    """

    service_id: str
    owner: str
    name: str
    version: int
    spec: bytes
    removed: bool
    placements: tuple[tuple[str, int, str], ...]


class Journal:
    """SQLite journal at ``path`` (``":memory:"`` for a throwaway one).

    Example:
        >>> j = Journal(":memory:")
        >>> j.add(b"\\x01" * 32, "task", b"spec")
        True
        >>> [r.status for r in j.pending()]
        ['pending']
    """

    def __init__(self, path: str | Path, *, durable: bool = False) -> None:
        self.path = str(path)
        if self.path not in ("", ":memory:"):
            _create_private(self.path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        self._lock = threading.RLock()
        self._written = 0  # bytes committed since the last checkpoint was asked for
        self._specs: OrderedDict[bytes, bytes] = OrderedDict()  # specs of pending jobs added here, newest last
        self._specs_size = 0
        self._checkpointer: _Checkpointer | None = None
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
            _migrate(self._db)
            self._file = self.path not in ("", ":memory:")
            if self._file:
                self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
                self._db.execute(f"PRAGMA journal_size_limit={BACKSTOP_PAGES * 4096}")  # a log that outgrew it shrinks back

    def close(self) -> None:
        with self._lock:
            if self._checkpointer is not None:  # first, so this connection is the last and checkpoints as it closes
                self._checkpointer.stop()
                self._checkpointer = None
            self._db.close()

    def _tx(self, size: int = 0) -> _Tx:
        return _Tx(self, size)

    def _committed(self, size: int) -> None:
        """Called under the lock after a commit of about ``size`` bytes: wake the checkpoint thread when due."""
        if not self._file:
            return
        self._written += max(int(size), 4096)
        if self._written >= CHECKPOINT_BYTES:
            self._written = 0
            if self._checkpointer is None:
                self._checkpointer = _Checkpointer(self.path)
                weakref.finalize(self, self._checkpointer.stop)  # a journal dropped unclosed stops it too
            self._checkpointer.wake()

    # --- jobs -----------------------------------------------------------------------------------
    def add(self, job_id: bytes, kind: str, spec: bytes, redundancy: int = 1) -> bool:
        """Journal a new job; ``False`` if the id is already known (idempotent submit)."""
        return self.add_many([(job_id, kind, spec, redundancy)]) == 1

    def add_many(self, jobs: list[tuple[bytes, str, bytes, int]]) -> int:
        """Journal several jobs in one transaction; returns how many were new."""
        added: list[tuple[bytes, bytes]] = []
        with self._tx(sum(len(s) for _, _, s, _ in jobs)) as db:
            for j, k, s, r in jobs:
                jid = bytes(j)
                cur = db.execute(
                    "INSERT OR IGNORE INTO jobs (job_id, kind, spec, redundancy, status) VALUES (?, ?, x'', ?, 'pending')",
                    (jid, k, int(r)),
                )
                if cur.rowcount == 1:  # a known id keeps its first spec (idempotent submit)
                    db.execute("INSERT OR REPLACE INTO job_specs (job_id, spec) VALUES (?, ?)", (jid, bytes(s)))
                    added.append((jid, bytes(s)))
        with self._lock:  # committed: pending() serves them from here
            for jid, spec in added:
                self._remember(jid, spec)
        return len(added)

    def _remember(self, job_id: bytes, spec: bytes) -> None:
        if len(spec) > SPEC_CACHE_BYTES:
            return
        self._specs[job_id] = spec
        self._specs_size += len(spec)
        while self._specs_size > SPEC_CACHE_BYTES:
            self._specs_size -= len(self._specs.popitem(last=False)[1])

    def _forget(self, job_id: bytes) -> None:
        spec = self._specs.pop(job_id, None)
        if spec is not None:
            self._specs_size -= len(spec)

    def _rows(self, where: str, args: tuple[Any, ...] = (), *, spec: bool = True) -> list[JobRecord]:
        # Specs are megabytes for an HE task: a listing without them reads neither table's blobs.
        if spec:
            query = (
                "SELECT j.job_id, j.kind, COALESCE(s.spec, j.spec), j.redundancy, j.status, j.attempts, j.error, j.disputed "
                f"FROM jobs j LEFT JOIN job_specs s ON s.job_id = j.job_id {where} ORDER BY j.seq"
            )
        else:
            query = f"SELECT j.job_id, j.kind, x'', j.redundancy, j.status, j.attempts, j.error, j.disputed FROM jobs j {where} ORDER BY j.seq"
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [JobRecord(bytes(r[0]), r[1], bytes(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in rows]

    def pending(self, *, spec: bool = True) -> list[JobRecord]:
        """Unfinished jobs in submission order (``spec=False``: their records carry ``spec=b""``)."""
        if not spec:
            return self._rows("WHERE j.status = 'pending'", spec=False)
        with self._lock:  # specs this journal just wrote are not read back
            rows = self._rows("WHERE j.status = 'pending'", spec=False)
            known = {r.job_id: self._specs[r.job_id] for r in rows if r.job_id in self._specs}
            if len(known) == len(rows):
                return [dataclasses.replace(r, spec=known[r.job_id]) for r in rows]
        return self._rows("WHERE j.status = 'pending'")

    def jobs(self, kind: str | None = None, *, spec: bool = True) -> list[JobRecord]:
        """Every job (optionally of one kind) in submission order, whatever its status
        (``spec=False``: the records carry ``spec=b""``, and no spec is read)."""
        return self._rows("WHERE j.kind = ?", (kind,), spec=spec) if kind is not None else self._rows("", spec=spec)

    def job(self, job_id: bytes, *, spec: bool = True) -> JobRecord | None:
        """One job's record, or ``None`` (``spec=False``: status, error and dispute only; ``spec=b""``)."""
        rows = self._rows("WHERE j.job_id = ?", (bytes(job_id),), spec=spec)
        return rows[0] if rows else None

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())

    def note_attempts(self, job_id: bytes, n: int = 1) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET attempts = attempts + ? WHERE job_id = ?", (n, bytes(job_id)))

    def retry(self, job_id: bytes) -> bool:
        """Put a failed job back to ``pending``.

        Returns:
            ``True`` if the job was failed and is pending again, ``False`` otherwise (unknown,
            pending or done: a finished result is never re-run).
        """
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status = 'pending', error = NULL WHERE job_id = ? AND status = 'failed'",
                (bytes(job_id),),
            )
            return cur.rowcount == 1

    def retry_failed(self) -> list[bytes]:
        """Put every failed job back to ``pending`` in one transaction; returns their ids in submission order."""
        with self._tx() as db:
            ids = [bytes(r[0]) for r in db.execute("SELECT job_id FROM jobs WHERE status = 'failed' ORDER BY seq").fetchall()]
            db.execute("UPDATE jobs SET status = 'pending', error = NULL WHERE status = 'failed'")
        return ids

    def dispute(self, job_id: bytes, reason: str) -> bool:
        """Mark a job's result disputed (e.g. a node that produced it failed its audit).

        A job disputed for several reasons keeps each of them, once, in the order they came.

        Returns:
            ``True`` if the reason is new for this job, ``False`` if it was already recorded.

        Raises:
            ParameterError: the job is unknown, or the reason is empty.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise ParameterError("a dispute needs a reason")
        jid = bytes(job_id)
        with self._tx() as db:
            row = db.execute("SELECT disputed FROM jobs WHERE job_id = ?", (jid,)).fetchone()
            if row is None:
                raise ParameterError(f"unknown job {jid.hex()}")
            known = row[0].split("\n") if row[0] else []
            if reason in known:
                return False
            db.execute("UPDATE jobs SET disputed = ? WHERE job_id = ?", ("\n".join([*known, reason]), jid))
            return True

    def disputed(self) -> list[JobRecord]:
        """Disputed jobs in submission order."""
        return self._rows("WHERE j.disputed IS NOT NULL")

    def fail(self, job_id: bytes, error: str) -> None:
        """Give up on a job (every eligible node failed it)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET status = 'failed', error = ? WHERE job_id = ? AND status = 'pending'", (error, bytes(job_id)))
            self._forget(bytes(job_id))

    def complete(
        self,
        job_id: bytes,
        *,
        output: bytes,
        output_commitment: bytes,
        nodes: list[str],
        epoch: int,
        transcripts: list[tuple[str, bytes, bool]],
    ) -> bool:
        """Record a job's result and its transcripts, once.

        Args:
            transcripts: ``(node, wire record, agreed)``; ``agreed`` is False for a node whose
                output disagreed with the accepted one.

        Returns:
            ``True`` if recorded now, ``False`` if the job was already finished (nothing written).
        """
        jid = bytes(job_id)
        with self._tx(len(output) + sum(len(rec) for _, rec, _ in transcripts)) as db:
            row = db.execute("SELECT status FROM jobs WHERE job_id = ?", (jid,)).fetchone()
            if row is None:
                raise ParameterError(f"unknown job {jid.hex()}")
            if row[0] != "pending":
                return False
            db.execute(
                "INSERT INTO results (job_id, output, output_commitment, nodes, epoch) VALUES (?, ?, ?, ?, ?)",
                (jid, bytes(output), bytes(output_commitment), json.dumps(nodes), int(epoch)),
            )
            db.executemany(
                "INSERT OR REPLACE INTO transcripts (job_id, node, epoch, record, agreed) VALUES (?, ?, ?, ?, ?)",
                [(jid, n, int(epoch), bytes(rec), int(ok)) for n, rec, ok in transcripts],
            )
            db.execute("UPDATE jobs SET status = 'done' WHERE job_id = ?", (jid,))
            self._forget(jid)
            return True

    # --- results, transcripts, faults ----------------------------------------------------------
    def result(self, job_id: bytes) -> ResultRecord | None:
        with self._lock:
            r = self._db.execute(
                "SELECT job_id, output, output_commitment, nodes, epoch FROM results WHERE job_id = ?", (bytes(job_id),)
            ).fetchone()
        return None if r is None else ResultRecord(bytes(r[0]), bytes(r[1]), bytes(r[2]), tuple(json.loads(r[3])), r[4])

    def results(self) -> list[ResultRecord]:
        with self._lock:
            rows = self._db.execute("SELECT job_id, output, output_commitment, nodes, epoch FROM results ORDER BY rowid").fetchall()
        return [ResultRecord(bytes(r[0]), bytes(r[1]), bytes(r[2]), tuple(json.loads(r[3])), r[4]) for r in rows]

    def transcripts(self, node: str, epoch: int) -> list[tuple[bytes, bytes, bool]]:
        """``(job_id, wire record, agreed)`` of a node's transcripts in an epoch, in job order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, record, agreed FROM transcripts WHERE node = ? AND epoch = ? ORDER BY rowid", (node, int(epoch))
            ).fetchall()
        return [(bytes(r[0]), bytes(r[1]), bool(r[2])) for r in rows]

    def outvote(self, job_id: bytes, node: str) -> bool:
        """Mark ``node``'s transcript of a finished job as not agreed (its output was outvoted).

        For a job whose output was compared outside the scheduler (the gateway's redundant
        replicas each run a pinned job): the epoch audit then fails the node, as it does for a
        redundant job's minority.

        Returns:
            ``True`` if a transcript was changed, ``False`` if there is none for (job, node).
        """
        with self._tx() as db:
            cur = db.execute("UPDATE transcripts SET agreed = 0 WHERE job_id = ? AND node = ?", (bytes(job_id), node))
            return cur.rowcount > 0

    def record_fault(self, node: str, epoch: int, job_id: bytes | None, reason: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO faults (node, epoch, job_id, reason) VALUES (?, ?, ?, ?)", (node, int(epoch), job_id, reason))

    def faults(self, node: str | None = None) -> list[tuple[str, int, bytes | None, str]]:
        with self._lock:
            if node is None:
                rows = self._db.execute("SELECT node, epoch, job_id, reason FROM faults ORDER BY id").fetchall()
            else:
                rows = self._db.execute("SELECT node, epoch, job_id, reason FROM faults WHERE node = ? ORDER BY id", (node,)).fetchall()
        return [(r[0], r[1], None if r[2] is None else bytes(r[2]), r[3]) for r in rows]

    # --- services (Deeploy) --------------------------------------------------------------------
    def put_service(
        self, service_id: str, *, owner: str, name: str, version: int, spec: bytes, removed: bool = False,
        at_ms: int, reason: str,
    ) -> bool:
        """Record a service's new signed spec (or its removal), only if ``version`` is above the stored one.

        The check and the write are one transaction, so two writers racing with the same version
        cannot both win; the change is logged as a ``deploy`` or ``remove`` event.

        Returns:
            ``True`` if written, ``False`` if the service already has this version or a later one
            (nothing written).
        """
        with self._tx() as db:
            row = db.execute("SELECT version FROM services WHERE service_id = ?", (service_id,)).fetchone()
            if row is not None and int(row[0]) >= int(version):
                return False
            if row is None:
                db.execute(
                    "INSERT INTO services (service_id, owner, name, version, spec, removed) VALUES (?, ?, ?, ?, ?, ?)",
                    (service_id, owner, name, int(version), bytes(spec), int(removed)),
                )
            else:
                db.execute(
                    "UPDATE services SET owner = ?, name = ?, version = ?, spec = ?, removed = ? WHERE service_id = ?",
                    (owner, name, int(version), bytes(spec), int(removed), service_id),
                )
            db.execute(
                "INSERT INTO service_events (service_id, at_ms, kind, node, version, reason) VALUES (?, ?, ?, NULL, ?, ?)",
                (service_id, int(at_ms), "remove" if removed else "deploy", int(version), reason),
            )
            return True

    def _service_rows(self, where: str, args: tuple[Any, ...] = ()) -> list[ServiceRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT service_id, owner, name, version, spec, removed FROM services {where} ORDER BY seq", args
            ).fetchall()
            placed: dict[str, list[tuple[str, int, str]]] = {}
            for sid, node, ver, rev in self._db.execute(
                f"SELECT service_id, node, version, revision FROM placements WHERE service_id IN "
                f"(SELECT service_id FROM services {where}) ORDER BY service_id, node",
                args,
            ).fetchall():
                placed.setdefault(sid, []).append((node, int(ver), rev))
        return [
            ServiceRecord(r[0], r[1], r[2], int(r[3]), bytes(r[4]), bool(r[5]), tuple(placed.get(r[0], ())))
            for r in rows
        ]

    def service(self, service_id: str) -> ServiceRecord | None:
        """The service ``service_id``, or ``None`` if it was never deployed here."""
        rows = self._service_rows("WHERE service_id = ?", (service_id,))
        return rows[0] if rows else None

    def services(self) -> list[ServiceRecord]:
        """Every service (removed ones too) in the order they were first deployed."""
        return self._service_rows("")

    def move_replicas(
        self, service_id: str, *, expected_version: int, changes: list[tuple[str, str, int, str, str]], at_ms: int
    ) -> bool:
        """Apply placement changes to a service in one transaction, each logged as an event.

        Args:
            expected_version: the spec version the changes were computed from; if the service
                has another one now (a concurrent deploy), nothing is written.
            changes: ``(action, node, version, revision, reason)`` in order; ``action`` is
                ``place`` (the replica on ``node`` now runs ``revision``) or ``evict``.

        Returns:
            ``True`` if applied, ``False`` if the service is unknown or its version moved on.

        Raises:
            ParameterError: an action other than ``place`` or ``evict``.
        """
        with self._tx() as db:
            row = db.execute("SELECT version FROM services WHERE service_id = ?", (service_id,)).fetchone()
            if row is None or int(row[0]) != int(expected_version):
                return False
            for action, node, version, revision, reason in changes:
                if action == "place":
                    db.execute(
                        "INSERT OR REPLACE INTO placements (service_id, node, version, revision) VALUES (?, ?, ?, ?)",
                        (service_id, node, int(version), revision),
                    )
                elif action == "evict":
                    db.execute("DELETE FROM placements WHERE service_id = ? AND node = ?", (service_id, node))
                else:
                    raise ParameterError(f"unknown placement action {action!r}")
                db.execute(
                    "INSERT INTO service_events (service_id, at_ms, kind, node, version, reason) VALUES (?, ?, ?, ?, ?, ?)",
                    (service_id, int(at_ms), action, node, int(version), reason),
                )
            return True

    def service_events(self, service_id: str | None = None) -> list[tuple[int, str, str, str | None, int, str]]:
        """``(at_ms, service_id, kind, node, version, reason)`` of every service change, oldest first.

        ``kind`` is ``deploy``, ``remove``, ``place`` or ``evict``; ``node`` is ``None`` for the first two.
        """
        query = "SELECT at_ms, service_id, kind, node, version, reason FROM service_events"
        with self._lock:
            if service_id is None:
                rows = self._db.execute(query + " ORDER BY id").fetchall()
            else:
                rows = self._db.execute(query + " WHERE service_id = ? ORDER BY id", (service_id,)).fetchall()
        return [(int(r[0]), r[1], r[2], r[3], int(r[4]), r[5]) for r in rows]


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a journal written by an older version up to the current schema (idempotent).

    The check and the change run in one ``BEGIN IMMEDIATE`` transaction, so two processes
    opening the same old file cannot both add the column.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        columns = {r[1] for r in db.execute("PRAGMA table_info(jobs)").fetchall()}
        if "disputed" not in columns:
            db.execute("ALTER TABLE jobs ADD COLUMN disputed TEXT")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _create_private(path: str) -> None:
    """Create the journal file with mode 0600 unless it exists (SQLite would create it 0644)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class _Checkpointer:
    """A thread with its own connection that runs ``PRAGMA wal_checkpoint(PASSIVE)`` when woken.

    A passive checkpoint copies committed log frames into the database file without waiting for
    (or blocking) the journal's writer; SQLite keeps every commit durable whatever it interrupts.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._wake = threading.Event()
        self._stopped = False
        self.runs = 0
        self._thread = threading.Thread(target=self._loop, name="edil-journal-checkpoint", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        try:
            db = sqlite3.connect(self._path, isolation_level=None, timeout=10.0)
        except sqlite3.Error:
            return  # the writer's own checkpoint (BACKSTOP_PAGES) remains
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopped:
                    return
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                except sqlite3.Error:  # busy or away: the next wake, or the writer's backstop, copies the frames
                    pass
        finally:
            db.close()


class _Tx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) under the journal lock."""

    def __init__(self, journal: Journal, size: int = 0) -> None:
        self.j = journal
        self.size = size

    def __enter__(self) -> sqlite3.Connection:
        self.j._lock.acquire()
        try:
            self.j._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.j._lock.release()
            raise
        return self.j._db

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        try:
            self.j._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            if exc_type is None:
                self.j._committed(self.size)
        finally:
            self.j._lock.release()
