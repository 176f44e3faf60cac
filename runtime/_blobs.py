"""Tasks that carry R1FS CIDs instead of their large inputs.

A CKKS task's public context (1.5-3 MB) and an HE task's model are the same for many tasks.
The coordinator puts each such input into :class:`~edil.runtime._r1fs.R1FS` once, with its
file key wrapped to the box keys of the nodes that may run the task (:class:`TaskBlobs`), and
sends the task with the CID in place of the bytes (``Task.context_cid`` / ``Task.model_cid``);
inputs under :data:`INLINE_LIMIT` bytes stay inline. A node fetches each CID once and keeps the
bytes in a bounded cache (:class:`BlobCache`).

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

from edil import EdilError

from ._r1fs import R1FS, BlobStore
from ._task import Task

__all__ = ["INLINE_LIMIT", "BlobCache", "TaskBlobs"]

#: Inputs of at most this many bytes travel inline (a CID, its manifest fetch and a key unwrap
#: cost more than sending a small input).
INLINE_LIMIT = 64 << 10


class TaskBlobs:
    """The coordinator side: puts a task's large inputs into R1FS once and rewrites the task.

    Args:
        store: the R1FS backend the nodes read too.
        inline_limit: inputs of at most this many bytes stay inline.
        max_entries: files remembered (by the SHA-256 of their bytes) for reuse.

    Attributes:
        puts: files stored so far (a counter for tests and reports).
    """

    def __init__(self, store: BlobStore, *, inline_limit: int = INLINE_LIMIT, max_entries: int = 64) -> None:
        if isinstance(inline_limit, bool) or not isinstance(inline_limit, int) or inline_limit < 0:
            raise ValueError("inline_limit must be an int >= 0")
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.fs = R1FS(store)
        self.inline_limit, self.max_entries = inline_limit, max_entries
        self.puts = 0
        self._known: OrderedDict[bytes, tuple[str, frozenset[bytes]]] = OrderedDict()
        self._lock = threading.Lock()

    def _cid(self, data: bytes, name: str, recipient: bytes, everyone: frozenset[bytes]) -> str:
        key = hashlib.sha256(data).digest()
        with self._lock:
            hit = self._known.get(key)
            if hit is not None and recipient in hit[1]:
                self._known.move_to_end(key)
                return hit[0]
        # First use, or a node admitted after the put: store it again, wrapped to every node now.
        cid = self.fs.put(data, sorted(everyone | {recipient}), name=name)
        with self._lock:
            self.puts += 1
            self._known[key] = (cid, everyone | {recipient})
            while len(self._known) > self.max_entries:
                self._known.popitem(last=False)
        return cid

    def wire(self, task: Task, recipient: bytes, recipients: Iterable[bytes]) -> dict[str, Any]:
        """The wire form of ``task`` for the node with box key ``recipient``.

        Args:
            task: the task with its inputs inline (as journaled).
            recipient: the X25519 box key of the node it is sent to.
            recipients: the box keys of every node that may run it (each file is wrapped to all).

        Returns:
            ``task.to_wire()``, with the public context and the model of an HE task over
            :attr:`inline_limit` bytes replaced by their CIDs.

        Raises:
            EdilError: the store refuses the put (e.g. the NATS server is away).
        """
        if task.scheme not in ("ckks", "paillier"):  # only HE tasks: others keep their bytes inline
            return task.to_wire()
        everyone = frozenset(bytes(r) for r in recipients)
        changes: dict[str, Any] = {}
        if len(task.context) > self.inline_limit and not task.context_cid:
            changes.update(context=b"", context_cid=self._cid(task.context, f"{task.scheme}-context", bytes(recipient), everyone))
        if len(task.model) > self.inline_limit and not task.model_cid:
            changes.update(model=b"", model_cid=self._cid(task.model, "model", bytes(recipient), everyone))
        return dataclasses.replace(task, **changes).to_wire() if changes else task.to_wire()


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
            raise ValueError("max_bytes must be >= 0 and max_entries >= 1")
        self.fs = R1FS(store)
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self.fetches = self.hits = 0
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, cid: str, box: Any) -> bytes:
        """The plaintext of file ``cid``, from the cache or fetched, checked and decrypted.

        Args:
            cid: an R1FS file CID.
            box: the node's X25519 secret key or its ``NodeIdentity``.

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
            if len(data) <= self.max_bytes and cid not in self._cache:
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
        return dataclasses.replace(task, **changes) if changes else task

    def close(self) -> None:
        """Close the backend."""
        self.fs.close()
