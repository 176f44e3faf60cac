"""Tasks that carry R1FS CIDs instead of their large inputs.

A CKKS task's public context (1.5-3 MB) and an HE task's model are the same for many tasks.
The coordinator puts each such input into :class:`~edil.runtime._r1fs.R1FS` once, with its
file key wrapped to the box keys of the nodes that may run the task (:class:`TaskBlobs`), and
sends the task with the CID in place of the bytes (``Task.context_cid`` / ``Task.model_cid``);
inputs under :data:`INLINE_LIMIT` bytes stay inline. A ciphertext batch (``Task.input``) over
:data:`INPUT_INLINE_LIMIT` bytes travels by CID too (``Task.input_cid``). A node fetches each
CID once and keeps contexts and models in a bounded cache (:class:`BlobCache`); a task's own
input is fetched and not kept.

Unpinning: the scheduler tells :meth:`TaskBlobs.release` when a job's result (or failure) is
recorded. Its input files are then unpinned, so ``R1FS.gc`` removes them; a shared context or
model stays pinned while a job still in flight uses it or while the coordinator remembers it
for reuse (the last ``max_entries`` files), and is unpinned when it leaves that memory unused.

Commitments are unchanged: the node runs and commits to the bytes it fetched, which R1FS has
checked against the CID (manifest hash, chunk hashes, AEAD), so a transcript commits to the
same model bytes as an inline task, and the task's parameters still hold the public context's
SHA-256 fingerprint, which the node's runner checks against the fetched context. A node that
cannot fetch, read or verify an input fails the task with the R1FS error
(:class:`~edil.VerificationError`, :class:`~edil.AuthorizationError`,
``ObjectNotFoundError``), and the scheduler treats it as any signed error reply.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from edil import EdilError, ParameterError

from ._r1fs import R1FS, BlobStore
from ._task import Task

__all__ = ["INLINE_LIMIT", "INPUT_INLINE_LIMIT", "BlobCache", "TaskBlobs"]

#: Inputs of at most this many bytes travel inline (a CID, its manifest fetch and a key unwrap
#: cost more than sending a small input).
INLINE_LIMIT = 64 << 10
#: Task inputs (ciphertext batches) of at most this many bytes travel inline: an input is sent to
#: one node per dispatch, so a CID pays off only for large batches (put once for redundant copies).
INPUT_INLINE_LIMIT = 256 << 10


class TaskBlobs:
    """The coordinator side: puts a task's large inputs into R1FS once and rewrites the task.

    Args:
        store: the R1FS backend the nodes read too.
        inline_limit: contexts and models of at most this many bytes stay inline.
        input_limit: task inputs of at most this many bytes stay inline.
        max_entries: files remembered (by the SHA-256 of their bytes) for reuse.

    Attributes:
        puts: files stored so far (a counter for tests and reports).
        unpins: files unpinned so far (inputs of finished jobs, contexts and models forgotten unused).
    """

    def __init__(
        self, store: BlobStore, *, inline_limit: int = INLINE_LIMIT, input_limit: int = INPUT_INLINE_LIMIT, max_entries: int = 64
    ) -> None:
        for what, value in (("inline_limit", inline_limit), ("input_limit", input_limit)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ParameterError(f"{what} must be an int >= 0")
        if max_entries < 1:
            raise ParameterError("max_entries must be >= 1")
        self.fs = R1FS(store)
        self.inline_limit, self.input_limit, self.max_entries = inline_limit, input_limit, max_entries
        self.puts = self.unpins = 0
        self._known: OrderedDict[bytes, tuple[str, frozenset[bytes]]] = OrderedDict()
        self._inputs: set[str] = set()  # CIDs of task inputs (unpinned as soon as no job in flight uses them)
        self._jobs: dict[bytes, set[str]] = {}  # job id -> CIDs its dispatches carried
        self._users: dict[str, int] = {}  # CID -> jobs in flight that carry it
        self._forgotten: set[str] = set()  # CIDs no longer remembered for reuse, still pinned
        self._lock = threading.Lock()

    def _hold(self, job: bytes | None, cid: str) -> None:
        """Count ``cid`` as carried by ``job`` (once per job); the caller holds the lock."""
        if job is None:
            return
        held = self._jobs.setdefault(job, set())
        if cid not in held:
            held.add(cid)
            self._users[cid] = self._users.get(cid, 0) + 1

    def _cid(
        self, data: bytes, name: str, recipient: bytes, everyone: frozenset[bytes], *, job: bytes | None, is_input: bool = False
    ) -> str:
        # The CID is counted as in use by ``job`` under the same lock that finds or records it:
        # otherwise another thread could push it out of the memory and unpin it in between.
        key = hashlib.sha256(data).digest()
        with self._lock:
            hit = self._known.get(key)
            if hit is not None and recipient in hit[1]:
                self._known.move_to_end(key)
                self._hold(job, hit[0])
                return hit[0]
        # First use, or a node admitted after the put: store it again, wrapped to every node now
        # and to the older file's recipients. They could read these very bytes already, and
        # without them tasks pinned in turn to different nodes (a service's replicas) would
        # store the same context again for every task, each time for one node.
        readers = everyone | {recipient} | (hit[1] if hit is not None else frozenset())
        cid = self.fs.put(data, sorted(readers), name=name)
        with self._lock:
            self.puts += 1
            if hit is not None:
                self._forgotten.add(hit[0])  # the older file of the same bytes (fewer recipients)
            self._known[key] = (cid, readers)
            self._hold(job, cid)
            if is_input:
                self._inputs.add(cid)
            while len(self._known) > self.max_entries:
                self._forgotten.add(self._known.popitem(last=False)[1][0])
        return cid

    def _sweep(self) -> int:
        """Unpin every forgotten file no job in flight carries; returns how many."""
        with self._lock:
            idle = sorted(c for c in self._forgotten if not self._users.get(c))
        done = 0
        for cid in idle:
            try:
                self.fs.unpin(cid)
            except Exception:  # noqa: BLE001 - the store is away: the file stays pinned (kept, never lost) and is retried
                continue
            done += 1
            with self._lock:
                self.unpins += 1
                self._inputs.discard(cid)
                self._forgotten.discard(cid)
        return done

    def wire(self, task: Task, recipient: bytes, recipients: Iterable[bytes], *, job: bytes | None = None) -> dict[str, Any]:
        """The wire form of ``task`` for the node with box key ``recipient``.

        Args:
            task: the task with its inputs inline (as journaled).
            recipient: the X25519 box key of the node it is sent to.
            recipients: the box keys of every node that may run it (each file is wrapped to all).
            job: the job id the task is dispatched for: its files stay pinned until
                :meth:`release` of that job (``None``: not tracked).

        Returns:
            ``task.to_wire()``, with the public context and the model of an HE task over
            :attr:`inline_limit` bytes, and its input over :attr:`input_limit` bytes, replaced
            by their CIDs.

        Raises:
            EdilError: the store refuses the put (e.g. the NATS server is away).
        """
        if task.scheme not in ("ckks", "paillier"):  # only HE tasks: others keep their bytes inline
            return task.to_wire()
        everyone, me = frozenset(bytes(r) for r in recipients), bytes(recipient)
        jid = None if job is None else bytes(job)
        changes: dict[str, Any] = {}
        if len(task.context) > self.inline_limit and not task.context_cid:
            changes.update(context=b"", context_cid=self._cid(task.context, f"{task.scheme}-context", me, everyone, job=jid))
        if len(task.model) > self.inline_limit and not task.model_cid:
            changes.update(model=b"", model_cid=self._cid(task.model, "model", me, everyone, job=jid))
        if len(task.input) > self.input_limit and not task.input_cid:
            changes.update(input=b"", input_cid=self._cid(task.input, f"{task.scheme}-input", me, everyone, job=jid, is_input=True))
        if not changes:
            return task.to_wire()
        self._sweep()  # this task's files were counted as in use as _cid handed them out: none of them is unpinned
        return dataclasses.replace(task, **changes).to_wire()

    def put_private(self, data: bytes, recipient: bytes, *, job: bytes, name: str) -> str:
        """Store bytes that only one node may read (e.g. a Masked party's dealer material) for ``job``.

        The file key is wrapped to ``recipient`` alone, and the file is never handed out again
        (not remembered for reuse, which could widen its readers); it is a job input: unpinned at
        :meth:`release` of ``job``.

        Returns:
            The file's CID.

        Raises:
            EdilError: the store refuses the put.
        """
        cid = self.fs.put(bytes(data), [bytes(recipient)], name=name)
        with self._lock:
            self.puts += 1
            self._hold(bytes(job), cid)
            self._inputs.add(cid)
        return cid

    def release(self, job: bytes) -> int:
        """Job ``job``'s result or failure is recorded: unpin the files no job in flight needs now.

        Its input files are unpinned once no other job in flight carries them; a context or model
        only once it is also no longer remembered for reuse. ``R1FS.gc`` then removes them.
        A store that cannot be reached leaves the files pinned (kept, never lost).

        Returns:
            how many files were unpinned.
        """
        with self._lock:
            held = self._jobs.pop(bytes(job), set())
            for cid in held:
                self._users[cid] -= 1
                if self._users[cid] <= 0:
                    del self._users[cid]
            done_inputs = {c for c in held if c in self._inputs and c not in self._users}
            for key in [k for k, (cid, _) in self._known.items() if cid in done_inputs]:
                del self._known[key]  # an input to be unpinned is never handed out again
            self._forgotten |= done_inputs
        return self._sweep()


class BlobCache:
    """The node side: fetches a task's inputs by CID once and keeps them, bounded.

    Args:
        store: the R1FS backend the coordinator writes to.
        max_bytes: plaintext bytes kept (least recently used first out).
        max_entries: files kept.

    Attributes:
        fetches: files fetched from the store (cache misses).
        hits: inputs served from the cache.
    """

    def __init__(self, store: BlobStore, *, max_bytes: int = 256 << 20, max_entries: int = 32) -> None:
        if max_bytes < 0 or max_entries < 1:
            raise ParameterError("max_bytes must be >= 0 and max_entries >= 1")
        self.fs = R1FS(store)
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self.fetches = self.hits = 0
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, cid: str, box: Any, *, keep: bool = True) -> bytes:
        """The plaintext of file ``cid``, from the cache or fetched, checked and decrypted.

        Args:
            cid: an R1FS file CID.
            box: the node's X25519 secret key or its ``NodeIdentity``.
            keep: keep the bytes in the cache (a task's own input is used once: not kept).

        Raises:
            VerificationError: a tampered, truncated or missing chunk, or a bad key wrap.
            AuthorizationError: this node is not a recipient of the file.
            EdilError: the store does not hold the file or cannot be reached (the message says which).
        """
        with self._lock:
            hit = self._cache.get(cid)
            if hit is not None:
                self._cache.move_to_end(cid)
                self.hits += 1
                return hit
        try:
            data = self.fs.get(cid, box)
        except EdilError:
            raise
        except Exception as exc:  # noqa: BLE001 - a backend failure is a task failure here, never a crash
            raise EdilError(f"cannot fetch {cid} from R1FS: {type(exc).__name__}: {exc}") from None
        with self._lock:
            self.fetches += 1
            if keep and len(data) <= self.max_bytes and cid not in self._cache:
                self._cache[cid] = data
                self._size += len(data)
                while self._size > self.max_bytes or len(self._cache) > self.max_entries:
                    self._size -= len(self._cache.popitem(last=False)[1])
        return data

    def resolve(self, task: Task, box: Any) -> Task:
        """``task`` with every input it carries by CID fetched back inline (see :meth:`get`)."""
        changes: dict[str, Any] = {}
        if task.context_cid:
            changes.update(context=self.get(task.context_cid, box), context_cid="")
        if task.model_cid:
            changes.update(model=self.get(task.model_cid, box), model_cid="")
        if task.input_cid:
            changes.update(input=self.get(task.input_cid, box, keep=False), input_cid="")
        return dataclasses.replace(task, **changes) if changes else task

    def close(self) -> None:
        """Close the backend."""
        self.fs.close()
