"""R1FS: an encrypted, content-addressed object store on a local directory or NATS JetStream.

A file is cut into chunks of a fixed size (1 MiB by default) and each chunk is encrypted with
XChaCha20-Poly1305 under a fresh random key for the whole file. Every stored object (chunk or
manifest) is named by its CID: CIDv1 over the sha2-256 multihash of the stored bytes, in base32
(``raw`` codec for chunks, ``messagepack`` for manifests). The **manifest** (msgpack, decoded with
msgspec into :class:`FileManifest`) lists the size, the chunk size, the chunk CIDs, a keccak
Merkle root over the chunks' sha2-256 digests (hashed as :class:`edil.proofs.MerkleTree`, so a
transcript or chain record can commit to a file and a chunk can be proven against it) and the
file key wrapped for each recipient; the manifest's own CID names the file.

Binding, so that nothing can be moved around unnoticed:

* chunk ``i`` of ``n``: nonce ``salt(16) || i(8, big endian)``, associated data
  ``"EDIL/r1fs/v1/chunk" || salt || i || n || size || chunk_size``; a reordered, swapped,
  dropped or foreign chunk, or a manifest that lies about the size, fails authentication;
* the key wrap: an X25519 sealed box (libsodium's ``crypto_box_seal`` construction, read with
  ``nacl.public.SealedBox``) of ``key || salt`` to the recipient's box key, so a wrap copied
  from another file is refused;
* every object read back is hashed against the CID it was asked for.

A reader must hold the box secret key of a recipient (a node's :class:`NodeIdentity`). Every
failure on bytes from the store is an :class:`~edil.EdilError`: :class:`~edil.VerificationError`
for tampered, truncated, swapped or missing data and bad wraps, :class:`ObjectNotFoundError` for
a file CID the store does not hold, :class:`~edil.AuthorizationError` for a key that is not a
recipient. The store itself only ever holds ciphertext, public keys and sizes.

Backends share one small interface (:class:`BlobStore`): :class:`LocalBlobStore` (a directory)
and :class:`NatsBlobStore` (a JetStream object-store bucket, pins in a key-value bucket).
Objects not pinned, and not chunks of a pinned manifest, are removed by :meth:`R1FS.gc`.
Chunks move to and from the backend in batches of about 8 MiB, the next batch in transfer while
this one is encrypted or checked and decrypted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import os
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import msgspec
import nacl.bindings as _sodium
import nacl.exceptions
import nacl.public

from edil import (
    AuthorizationError,
    EdilError,
    ParameterError,
    RuntimeTaskError,
    SerializationError,
    UnsupportedOperationError,
    VerificationError,
)
from edil.proofs import InclusionProof, MerkleTree

__all__ = [
    "CHUNK_SIZE",
    "BlobStore",
    "FileEntry",
    "FileManifest",
    "GcReport",
    "LocalBlobStore",
    "NatsBlobStore",
    "ObjectNotFoundError",
    "R1FS",
    "content_id",
    "parse_cid",
]

#: Default plaintext bytes per chunk.
CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 64 << 20
#: Bound on a manifest's chunk list (256 GiB at the default chunk size) and on its encoding.
MAX_CHUNKS = 1 << 18
MAX_MANIFEST_BYTES = 32 << 20
MAX_RECIPIENTS = 1024
KEY_BYTES, SALT_BYTES = 32, 16
_SEAL_BYTES = 32 + 16 + KEY_BYTES + SALT_BYTES  # ephemeral key, MAC, key || salt
_AEAD_TAG = 16
_CHUNK_AD = b"EDIL/r1fs/v1/chunk"
_SEAL_PERSON = b"EDIL-r1fs-seal"
_RAW, _MSGPACK = 0x55, 0x0201  # multicodec codes of chunks and manifests
_CID_PREFIX = {_RAW: bytes([0x01, 0x55, 0x12, 0x20]), _MSGPACK: bytes([0x01, 0x81, 0x04, 0x12, 0x20])}
_ENCRYPT = _sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
_DECRYPT = _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt


class ObjectNotFoundError(EdilError, LookupError):
    """The R1FS store holds no object under this CID (never stored, or collected by gc)."""


# ------------------------------------------------------------------------------------------ CIDs


def content_id(data: bytes, *, manifest: bool = False) -> str:
    """The CID of stored bytes: CIDv1, sha2-256 multihash, base32; codec ``raw`` or ``messagepack``.

    Example:
        >>> content_id(b"hello")
        'bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq'
    """
    from multiformats import CID, multihash

    digest = hashlib.sha256(data).digest()
    return str(CID("base32", 1, "messagepack" if manifest else "raw", multihash.wrap(digest, "sha2-256")))


def parse_cid(text: str) -> tuple[str, bool, bytes]:
    """Check an R1FS CID; returns ``(canonical base32 string, is_manifest, sha2-256 digest)``.

    Any multibase is accepted; the canonical form is what the store names objects by.

    Raises:
        SerializationError: not a CIDv1 with a sha2-256 multihash and codec ``raw`` or ``messagepack``.
    """
    if not isinstance(text, str) or not 8 <= len(text) <= 200:
        raise SerializationError(f"{str(text)[:80]!r} is not an R1FS CID")
    fast = _parse_canonical(text)
    if fast is not None:
        return fast
    from multiformats import CID

    try:
        cid = CID.decode(text)
        ok = cid.version == 1 and cid.hashfun.name == "sha2-256" and cid.codec.code in (_RAW, _MSGPACK)
        digest = bytes(cid.raw_digest)
    except Exception:  # noqa: BLE001 - multiformats raises several of its own types for malformed text
        ok, digest = False, b""
    if not ok or len(digest) != 32:
        raise SerializationError(f"{text[:80]!r} is not an R1FS CID (CIDv1, sha2-256, raw or messagepack)")
    is_manifest = cid.codec.code == _MSGPACK
    return _cid_string(digest, is_manifest), is_manifest, digest


def _parse_canonical(text: str) -> tuple[str, bool, bytes] | None:
    """:func:`parse_cid` for the canonical base32 text R1FS writes, without multiformats.

    The store names every object this way, and multiformats' checked decoding costs about a
    millisecond per CID, which a file of thousands of chunks would pay on every read.
    """
    if len(text) not in (59, 61) or text[0] != "b" or not text.islower():
        return None
    try:
        raw = base64.b32decode(text[1:].upper() + "=" * (-(len(text) - 1) % 8))
    except ValueError:
        return None
    for is_manifest in (False, True):
        prefix = _CID_PREFIX[_MSGPACK if is_manifest else _RAW]
        if len(raw) == len(prefix) + 32 and raw.startswith(prefix) and _cid_string(raw[len(prefix) :], is_manifest) == text:
            return text, is_manifest, raw[len(prefix) :]
    return None


def _cid_string(digest: bytes, is_manifest: bool) -> str:
    raw = _CID_PREFIX[_MSGPACK if is_manifest else _RAW] + digest
    return "b" + base64.b32encode(raw).decode().rstrip("=").lower()


def _check_digest(cid: str, digest: bytes, data: bytes, what: str) -> None:
    if not hashlib.sha256(data).digest() == digest:
        raise VerificationError(f"{what} {cid} does not match its CID (tampered or truncated)")


# -------------------------------------------------------------------------------------- manifest

# The base32 text of a 36-byte CIDv1 (raw codec, sha2-256); a manifest CID is 61 characters and never matches.
_ChunkCid = Annotated[str, msgspec.Meta(pattern=r"\Ab[a-z2-7]{58}\Z")]


def _fixed(n: int) -> Any:
    return Annotated[bytes, msgspec.Meta(min_length=n, max_length=n)]


class KeyWrap(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    """The file key sealed to one recipient: its X25519 box public key and the sealed box."""

    recipient: _fixed(32)  # type: ignore[valid-type]
    sealed: _fixed(_SEAL_BYTES)  # type: ignore[valid-type]


class FileManifest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What names a file: sizes, chunk CIDs, the keccak Merkle root, and the key wraps.

    Attributes:
        version: format version (1).
        name: an optional file name (public, like the sizes).
        size: plaintext bytes.
        chunk_size: plaintext bytes per chunk (the last chunk holds the rest; an empty file has
            one empty chunk).
        salt: 16 random bytes binding the nonces, associated data and wraps to this file.
        chunks: chunk CIDs in order.
        merkle_root: keccak Merkle root (:class:`edil.proofs.MerkleTree`) over the chunks'
            sha2-256 digests, for transcripts and chain records.
        wraps: the file key sealed to each recipient.
    """

    version: Literal[1]
    name: Annotated[str, msgspec.Meta(max_length=255)]
    size: Annotated[int, msgspec.Meta(ge=0, le=MAX_CHUNKS * MAX_CHUNK_SIZE)]
    chunk_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHUNK_SIZE)]
    salt: _fixed(SALT_BYTES)  # type: ignore[valid-type]
    chunks: Annotated[list[_ChunkCid], msgspec.Meta(min_length=1, max_length=MAX_CHUNKS)]
    merkle_root: _fixed(32)  # type: ignore[valid-type]
    wraps: Annotated[list[KeyWrap], msgspec.Meta(min_length=1, max_length=MAX_RECIPIENTS)]

    def chunk_digests(self) -> list[bytes]:
        """The sha2-256 digest of each chunk's ciphertext (the Merkle leaves)."""
        return [parse_cid(c)[2] for c in self.chunks]

    def proof(self, index: int) -> InclusionProof:
        """Inclusion proof of chunk ``index``'s digest under :attr:`merkle_root`."""
        return MerkleTree(self.chunk_digests()).proof(index)

    @property
    def recipients(self) -> list[bytes]:
        """The X25519 box public keys the file key is sealed to."""
        return [bytes(w.recipient) for w in self.wraps]


_MANIFEST_DECODER = msgspec.msgpack.Decoder(FileManifest)
_MANIFEST_ENCODER = msgspec.msgpack.Encoder()


def _chunk_count(size: int, chunk_size: int) -> int:
    return max(1, math.ceil(size / chunk_size))


def _decode_manifest(cid: str, data: bytes) -> FileManifest:
    """Decode and check a manifest whose bytes already match ``cid``.

    Raises:
        VerificationError: not a well-formed, self-consistent manifest.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise VerificationError(f"manifest {cid} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        m = _MANIFEST_DECODER.decode(data)
    except msgspec.MsgspecError as exc:
        raise VerificationError(f"object {cid} is not a well-formed R1FS manifest: {str(exc)[:200]}") from None
    if len(m.chunks) != _chunk_count(m.size, m.chunk_size):
        raise VerificationError(f"manifest {cid} lists {len(m.chunks)} chunks for {m.size} bytes in chunks of {m.chunk_size}")
    try:
        digests = m.chunk_digests()
    except SerializationError:
        raise VerificationError(f"manifest {cid} lists a chunk CID that is not a raw sha2-256 CIDv1") from None
    if MerkleTree(digests).root != m.merkle_root:
        raise VerificationError(f"manifest {cid}: the Merkle root does not match its chunks")
    if len({bytes(w.recipient) for w in m.wraps}) != len(m.wraps):
        raise VerificationError(f"manifest {cid} wraps the key twice for one recipient")
    return m


# ---------------------------------------------------------------------------------- encryption


def _nonce(salt: bytes, index: int) -> bytes:
    return salt + struct.pack(">Q", index)


def _chunk_ad(salt: bytes, index: int, count: int, size: int, chunk_size: int) -> bytes:
    return _CHUNK_AD + salt + struct.pack(">QQQQ", index, count, size, chunk_size)


def _seal(message: bytes, recipient: bytes, ephemeral_seed: bytes) -> bytes:
    """libsodium's ``crypto_box_seal`` with the ephemeral key from ``ephemeral_seed``.

    Byte for byte what ``nacl.public.SealedBox(pk).encrypt`` produces for that ephemeral key
    (``epk || crypto_box(m, blake2b(epk || pk, 24), pk, esk)``), so the randomness can be
    injected and ``SealedBox.decrypt`` opens it.
    """
    epk, esk = _sodium.crypto_box_seed_keypair(ephemeral_seed)
    nonce = hashlib.blake2b(epk + recipient, digest_size=24).digest()
    return epk + _sodium.crypto_box(message, nonce, recipient, esk)


def _box_public(recipient: Any) -> bytes:
    """A recipient's X25519 public key from bytes, a ``nacl.public.PublicKey`` or a ``NodeCard``."""
    key = getattr(recipient, "box_key", recipient)
    key = bytes(key) if isinstance(key, nacl.public.PublicKey | bytes | bytearray) else key
    if not isinstance(key, bytes) or len(key) != 32:
        raise UnsupportedOperationError("a recipient is a 32-byte X25519 public key, a nacl PublicKey or a NodeCard")
    return key


def _box_private(box: Any) -> nacl.public.PrivateKey:
    """The reader's X25519 secret key from a ``PrivateKey`` or an identity with ``.box``."""
    key = getattr(box, "box", box)
    if not isinstance(key, nacl.public.PrivateKey):
        raise UnsupportedOperationError("box must be a nacl.public.PrivateKey or an identity with a .box key (NodeIdentity)")
    return key


def _random(value: bytes | None, n: int, what: str) -> bytes:
    if value is None:
        return os.urandom(n)
    if not isinstance(value, bytes | bytearray) or len(value) != n:
        raise ParameterError(f"{what} must be {n} bytes")
    return bytes(value)


# ------------------------------------------------------------------------------------ backends


class BlobStore(Protocol):
    """Where R1FS objects lie: bytes by name (a CID), plus a set of pinned names.

    A backend stores and returns bytes as given; R1FS checks every object it reads.
    """

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store each ``(cid, data)`` (replacing an object of that name)."""

    def get_many(self, cids: Sequence[str]) -> list[bytes | None]:
        """The bytes of each CID, ``None`` where absent."""

    def delete(self, cid: str) -> int:
        """Remove an object; returns the bytes freed (0 when absent)."""

    def objects(self) -> dict[str, tuple[int, float]]:
        """Every stored object: ``cid -> (size in bytes, modification time in Unix seconds)``."""

    def pins(self) -> set[str]:
        """The pinned CIDs."""

    def set_pin(self, cid: str, pinned: bool) -> None:
        """Pin or unpin a CID."""

    def close(self) -> None:
        """Release connections."""


class LocalBlobStore:
    """R1FS objects as files in a directory (``objects/<cid>``, pins as ``pins/<cid>``).

    Writes go to a temporary file first and are renamed into place, so a crash never leaves a
    partial object under a CID.

    Args:
        root: the store directory (created when missing).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._objects, self._pins = self.root / "objects", self.root / "pins"
        try:
            self._objects.mkdir(parents=True, exist_ok=True)
            self._pins.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdilError(f"cannot create the R1FS store {self.root}: {exc.strerror}") from None

    def _path(self, folder: Path, cid: str) -> Path:
        return folder / parse_cid(cid)[0]  # canonical base32: no separators, no dots

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for cid, data in items:
            path = self._path(self._objects, cid)
            tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")  # unique per writer, thread or process
            tmp.write_bytes(data)
            os.replace(tmp, path)

    def get_many(self, cids: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for cid in cids:
            try:
                out.append(self._path(self._objects, cid).read_bytes())
            except FileNotFoundError:
                out.append(None)
        return out

    def delete(self, cid: str) -> int:
        path = self._path(self._objects, cid)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def objects(self) -> dict[str, tuple[int, float]]:
        out = {}
        for entry in os.scandir(self._objects):
            if not entry.name.startswith("."):
                st = entry.stat()
                out[entry.name] = (st.st_size, st.st_mtime)
        return out

    def pins(self) -> set[str]:
        return {p.name for p in self._pins.iterdir() if not p.name.startswith(".")}

    def set_pin(self, cid: str, pinned: bool) -> None:
        path = self._path(self._pins, cid)
        if pinned:
            path.touch()
        else:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"


class NatsBlobStore:
    """R1FS objects in a NATS JetStream object-store bucket; pins in a key-value bucket.

    The buckets are created on first use (file storage). Transfers of several objects run
    concurrently (``concurrency`` at a time) on a private event loop thread.

    A ``read_only`` store is a node's view (see :class:`~edil.runtime.BusAdmission`, which lets an
    admitted node read the bucket and nothing more): it creates nothing, reads the object store
    only (by direct gets), needs the bucket to exist only when it reads, and refuses writes,
    deletions and pins with an :class:`~edil.AuthorizationError` before the server would.

    Args:
        url: the NATS server (``nats://host:port``) with JetStream.
        bucket: the object-store bucket (pins go to ``<bucket>_PINS``).
        replicas: JetStream replicas of new buckets (3 on a three-server cluster).
        nkey_seed: an NKey user seed where the server enforces authentication.
        timeout_s: bound on each operation.
        concurrency: objects in flight at once in :meth:`put_many` and :meth:`get_many`.
        read_only: a reader's view (above).
        inbox_prefix: the connection's reply subjects (a node may hear only its own inbox).

    Raises:
        EdilError: a malformed URL.
        RuntimeTaskError: no NATS server with JetStream answers, or the buckets cannot be made.
    """

    def __init__(
        self, url: str, *, bucket: str = "EDIL_R1FS", replicas: int = 1, nkey_seed: str | None = None,
        timeout_s: float = 60.0, concurrency: int = 8, read_only: bool = False, inbox_prefix: str = "_INBOX",
    ) -> None:
        from ._nats import _Loop, check_nats_url

        self.url, self.bucket, self.timeout_s = check_nats_url(url), check_bucket(bucket), timeout_s
        self._replicas, self._nkey, self.read_only, self._inbox = replicas, nkey_seed, read_only, inbox_prefix
        self._sem_size = max(1, concurrency)
        self._owned = True
        self._loop: Any = _Loop()
        try:
            self._nc, self._obs, self._kv = self._run(self._open(), "connecting")
        except BaseException:
            self._loop.stop()
            raise

    @staticmethod
    def check_bucket(name: str) -> str:
        """Validate a bucket name (see :func:`check_bucket`); returns it. Raises :class:`~edil.ParameterError`."""
        return check_bucket(name)

    @classmethod
    def reader(cls, nc: Any, loop: asyncio.AbstractEventLoop, *, bucket: str = "EDIL_R1FS", timeout_s: float = 60.0, concurrency: int = 8) -> NatsBlobStore:
        """A ``read_only`` store over a connection someone else holds (a node daemon's own).

        Its calls block the calling thread, so they must come from a thread other than
        ``loop``'s (a node runs its tasks in a worker thread). :meth:`close` leaves the
        connection open.
        """
        self = cls.__new__(cls)
        self.url, self.bucket, self.timeout_s = "(the node's connection)", check_bucket(bucket), timeout_s
        self._replicas, self._nkey, self.read_only, self._inbox = 1, None, True, ""
        self._sem_size, self._owned = max(1, concurrency), False
        self._loop = _Borrowed(loop)
        self._nc, self._obs, self._kv = self._handles(nc)  # no I/O: safe from inside ``loop`` too
        return self

    def _handles(self, nc: Any) -> tuple[Any, Any, Any]:
        """A reader's handles: the object store by name (no lookup: it may not exist yet), no pins."""
        from nats.js.object_store import ObjectStore

        js = nc.jetstream(timeout=self.timeout_s)
        self._sem = asyncio.Semaphore(self._sem_size)
        self._js = js
        return nc, ObjectStore(name=self.bucket, stream=f"OBJ_{self.bucket}", js=js), None

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise AuthorizationError(f"R1FS bucket {self.bucket} is read-only here: cannot {what}")

    def _run(self, coro: Any, what: str) -> Any:
        fut = self._loop.run(coro)
        try:
            return fut.result(timeout=self.timeout_s)
        except EdilError:
            raise
        except Exception as exc:  # noqa: BLE001 - nats-py's errors and timeouts, as one clear line
            fut.cancel()
            raise RuntimeTaskError(f"R1FS on {self.url}: {what} failed: {type(exc).__name__}: {exc}"[:500]) from None

    async def _open(self) -> tuple[Any, Any, Any]:
        from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
        from nats.js.errors import BucketNotFoundError

        from ._nats import _connect

        nc = await _connect(self.url, "edil-r1fs", asyncio.Event(), max_wait_s=10.0, nkey_seed=self._nkey, inbox_prefix=self._inbox)
        if self.read_only:
            return self._handles(nc)
        js = nc.jetstream(timeout=self.timeout_s)
        try:
            try:
                obs = await js.object_store(self.bucket)
            except BucketNotFoundError:
                obs = await js.create_object_store(
                    self.bucket, ObjectStoreConfig(storage=StorageType.FILE, replicas=self._replicas, description="EDIL R1FS objects")
                )
            pins = self.bucket + "_PINS"
            try:
                kv = await js.key_value(pins)
            except BucketNotFoundError:
                kv = await js.create_key_value(KeyValueConfig(bucket=pins, storage=StorageType.FILE, replicas=self._replicas))
        except BaseException:
            await nc.close()
            raise
        self._sem = asyncio.Semaphore(self._sem_size)
        self._js = js
        return nc, obs, kv

    async def _bounded(self, coro: Any) -> Any:
        async with self._sem:
            return await coro

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        self._writable("store objects")

        async def go() -> None:
            await asyncio.gather(*(self._bounded(self._obs.put(parse_cid(c)[0], bytes(d))) for c, d in items))

        self._run(go(), f"storing {len(items)} objects")

    def get_many(self, cids: Sequence[str]) -> list[bytes | None]:
        async def one(cid: str) -> bytes | None:
            return await self._read(parse_cid(cid)[0])

        async def go() -> list[bytes | None]:
            return list(await asyncio.gather(*(self._bounded(one(c)) for c in cids)))

        return list(self._run(go(), f"reading {len(cids)} objects"))

    async def _read(self, name: str) -> bytes | None:
        """One object's bytes, ``None`` when absent.

        nats-py's ``ObjectStore.get`` opens an ordered consumer per object, and the server keeps
        each for seconds after use: reading thousands of chunks would exhaust the consumer
        limit. The object's NATS chunks (subject ``$O.<bucket>.C.<nuid>``, the object-store
        layout) are read instead with direct gets, one after the other by sequence.
        """
        from nats.js.errors import NotFoundError

        try:
            info = await self._obs.get_info(name)
        except NotFoundError:
            return None
        if info.is_link() or not info.nuid:
            return None  # R1FS never stores links: not one of its objects
        subject, parts, seq = f"$O.{self.bucket}.C.{info.nuid}", [], 0
        try:
            for _ in range(int(info.chunks or 0)):
                msg = await self._js.get_msg(f"OBJ_{self.bucket}", seq=seq, subject=subject, next=True, direct=True)
                if msg.subject != subject or msg.seq is None:
                    break
                parts.append(bytes(msg.data or b""))
                seq = msg.seq + 1
        except NotFoundError:  # chunks purged meanwhile (deleted or replaced)
            return None
        data = b"".join(parts)
        digest = str(info.digest or "").removeprefix("SHA-256=")
        if len(data) != int(info.size or 0) or base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode() != digest:
            raise VerificationError(f"object {name} is damaged in the NATS object store (size or digest)")
        return data

    def delete(self, cid: str) -> int:
        from nats.js.errors import NotFoundError

        self._writable("delete objects")

        async def go() -> int:
            try:
                info = await self._obs.get_info(parse_cid(cid)[0])
                await self._obs.delete(info.name)
            except NotFoundError:
                return 0
            return int(info.size or 0)

        return int(self._run(go(), f"deleting {cid}"))

    def objects(self) -> dict[str, tuple[int, float]]:
        from nats.js.errors import NotFoundError

        async def go() -> dict[str, tuple[int, float]]:
            try:
                infos = await self._obs.list(ignore_deletes=True)
            except NotFoundError:  # an empty bucket
                return {}
            return {i.name: (int(i.size or 0), _mtime(i.mtime)) for i in infos if not i.deleted}

        return dict(self._run(go(), "listing objects"))

    def pins(self) -> set[str]:
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        self._writable("read pins")  # a reader has no access to the pins bucket

        async def go() -> set[str]:
            # Not ``kv.keys()``: its watcher can report the initial replay done before every key
            # arrived (nats-py #842), and a pin missed here is a pinned file that gc deletes.
            # The stream's per-subject state lists every key that has a message; the last message
            # of each says whether it is live (put) or was unpinned (delete marker).
            kv = self._kv
            info = await kv._js.stream_info(kv._stream, subjects_filter=f"{kv._pre}>")  # noqa: SLF001
            subjects = (info.state.subjects or {}) if info.state else {}
            if info.state is not None and info.state.messages > len(subjects):
                # One message per key (history 1): more messages than subjects means the server
                # returned one page of them; fail closed rather than let gc take an unseen pin.
                raise RuntimeTaskError(f"R1FS on {self.url}: {info.state.messages} pins, more than one listing holds")
            live: set[str] = set()
            for subject in sorted(subjects):
                key = subject[len(kv._pre):]  # noqa: SLF001
                try:
                    await kv.get(key)
                except (KeyDeletedError, KeyNotFoundError):
                    continue
                live.add(key)
            return live

        return set(self._run(go(), "listing pins"))

    def set_pin(self, cid: str, pinned: bool) -> None:
        self._writable("pin or unpin")
        name = parse_cid(cid)[0]
        self._run(self._kv.put(name, b"1") if pinned else self._kv.delete(name), f"{'pinning' if pinned else 'unpinning'} {cid}")

    def close(self) -> None:
        if self._owned and self._loop.thread.is_alive():
            try:
                self._loop.run(self._nc.close()).result(timeout=10)
            except Exception:  # noqa: BLE001 - closing an already broken connection
                pass
            self._loop.stop()

    def __enter__(self) -> NatsBlobStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NatsBlobStore({self.url!r}, bucket={self.bucket!r})"


def check_bucket(name: str) -> str:
    """Validate an object-store bucket name (letters, digits, ``-`` and ``_``; it becomes part of NATS subjects); returns it.

    Raises:
        ParameterError: anything else.
    """
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not all(c.isascii() and (c.isalnum() or c in "-_") for c in name):
        raise ParameterError(f"bad R1FS bucket name {name!r}: use 1 to 64 letters, digits, '-' or '_'")
    return name


class _Borrowed:
    """Runs coroutines on another component's event loop (a reader over a node's connection)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        pass


def _mtime(text: str | None) -> float:
    """Unix seconds of an object-store ``mtime``; an unreadable one counts as now (gc keeps it)."""
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except (TypeError, ValueError):
        return time.time()


# ------------------------------------------------------------------------------------ pipeline

#: Bytes of chunks moved per backend call; one batch is in transfer while the next is (de)crypted.
_BATCH_BYTES = 8 << 20
_BATCH_CHUNKS = 256


def _batches(count: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[first, stop)`` chunk ranges of about ``_BATCH_BYTES`` each."""
    per = max(1, min(_BATCH_CHUNKS, _BATCH_BYTES // chunk_size))
    return [(i, min(count, i + per)) for i in range(0, count, per)]


def _pipeline(
    ranges: Sequence[tuple[int, int]], produce: Callable[[int, int], Any], consume: Callable[[Any], Any], *,
    produce_in_thread: bool = False,
) -> None:
    """``consume(produce(*r))`` for each range in order, one step of the two in a worker thread.

    libsodium (through cffi) and hashlib release the GIL on large buffers, so encryption and
    hashing overlap the transfer of the previous batch. The first exception stops the pipeline
    and is raised once the work in flight has finished.
    """
    if len(ranges) <= 1:
        for r in ranges:
            consume(produce(*r))
        return
    from concurrent.futures import Future, ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="edil-r1fs") as pool:
        pending: Future[Any] | None = None
        try:
            if produce_in_thread:  # prefetch: produce k + 1 in the worker while consuming k here
                ahead = pending = pool.submit(produce, *ranges[0])
                for nxt in ranges[1:]:
                    item = ahead.result()
                    ahead = pending = pool.submit(produce, *nxt)
                    consume(item)
                consume(ahead.result())
            else:  # produce k here while the worker consumes k - 1
                for r in ranges:
                    item = produce(*r)
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(consume, item)
                if pending is not None:
                    pending.result()
        finally:
            if pending is not None:
                pending.cancel()
                try:
                    pending.result()
                except BaseException:  # noqa: BLE001 - the first error is already propagating
                    pass


# ------------------------------------------------------------------------------------ the store


@dataclass(frozen=True)
class FileEntry:
    """One file in :meth:`R1FS.ls`: its CID, public manifest fields, and whether it is pinned.

    ``error`` holds why its manifest could not be read (the other fields are then zero).
    """

    cid: str
    name: str
    size: int
    chunks: int
    recipients: int
    pinned: bool
    error: str | None = None


@dataclass(frozen=True)
class GcReport:
    """What :meth:`R1FS.gc` did: the CIDs removed, the bytes freed, the objects kept."""

    removed: tuple[str, ...]
    freed_bytes: int
    kept: int


class R1FS:
    """Encrypted, content-addressed files on a :class:`BlobStore`.

    Args:
        store: the backend (:class:`LocalBlobStore` or :class:`NatsBlobStore`).
        chunk_size: plaintext bytes per chunk for new files.

    Example:
        >>> import tempfile, nacl.public
        >>> me = nacl.public.PrivateKey.generate()
        >>> fs = R1FS(LocalBlobStore(tempfile.mkdtemp()))
        >>> cid = fs.put(b"weights", [me.public_key])
        >>> fs.get(cid, me)
        b'weights'
    """

    def __init__(self, store: BlobStore, *, chunk_size: int = CHUNK_SIZE) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ParameterError(f"chunk_size must be an int in [1, {MAX_CHUNK_SIZE}]")
        self.store, self.chunk_size = store, chunk_size

    def put(
        self, data: bytes, recipients: Iterable[Any], *, name: str = "", pin: bool = True,
        key: bytes | None = None, salt: bytes | None = None, seal_seed: bytes | None = None,
    ) -> str:
        """Encrypt, store and (by default) pin a file; returns its CID (the manifest's).

        Args:
            data: the plaintext.
            recipients: X25519 box public keys (32 bytes, ``nacl.public.PublicKey`` or a
                ``NodeCard``) that may read it.
            name: an optional file name, stored in the (public) manifest.
            pin: pin the file so :meth:`gc` keeps it.
            key: the 32-byte file key (fresh random when omitted). Never reuse a key with the
                same salt for other data: the nonces would repeat.
            salt: 16 bytes binding nonces and wraps to this file (random when omitted).
            seal_seed: 32 bytes from which each wrap's ephemeral X25519 key is derived (random
                when omitted); with ``key`` and ``salt`` it makes the CID reproducible.

        Raises:
            UnsupportedOperationError: ``data`` is not bytes, or a recipient is not an X25519 public key.
            ParameterError: no recipient, a duplicate one, a bad ``name``, or a randomness
                parameter of the wrong length.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise UnsupportedOperationError("data must be bytes")
        view = memoryview(data).cast("B")
        boxes = [_box_public(r) for r in recipients]
        if not boxes or len(boxes) > MAX_RECIPIENTS or len(set(boxes)) != len(boxes):
            raise ParameterError(f"a file needs 1 to {MAX_RECIPIENTS} distinct recipients")
        if not isinstance(name, str) or len(name) > 255:
            raise ParameterError("name must be a string of at most 255 characters")
        key, salt = _random(key, KEY_BYTES, "key"), _random(salt, SALT_BYTES, "salt")
        seal_seed = _random(seal_seed, 32, "seal_seed")
        size, cs = len(view), self.chunk_size
        count = _chunk_count(size, cs)
        if count > MAX_CHUNKS:
            raise ParameterError(f"{size} bytes need more than {MAX_CHUNKS} chunks of {cs}: use a larger chunk_size")
        chunk_cids: list[str] = []
        digests: list[bytes] = []

        def encrypt(first: int, stop: int) -> list[tuple[str, bytes]]:
            batch = []
            for i in range(first, stop):
                ct = _ENCRYPT(bytes(view[i * cs : (i + 1) * cs]), _chunk_ad(salt, i, count, size, cs), _nonce(salt, i), key)
                digest = hashlib.sha256(ct).digest()
                batch.append((_cid_string(digest, False), ct))
                digests.append(digest)
                chunk_cids.append(batch[-1][0])
            return batch

        # Chunks first, then the manifest, then the pin: a reader never finds a manifest whose
        # chunks are not there yet (gc's min_age_s protects a put in progress).
        _pipeline(_batches(count, cs), encrypt, self.store.put_many)
        wraps = [
            KeyWrap(pk, _seal(key + salt, pk, hashlib.blake2b(pk, digest_size=32, key=seal_seed, salt=salt, person=_SEAL_PERSON).digest()))
            for pk in boxes
        ]
        manifest = FileManifest(1, name, size, cs, salt, chunk_cids, MerkleTree(digests).root, wraps)
        encoded = _MANIFEST_ENCODER.encode(manifest)
        cid = _cid_string(hashlib.sha256(encoded).digest(), True)
        self.store.put_many([(cid, encoded)])
        if pin:
            self.store.set_pin(cid, True)
        return cid

    def manifest(self, cid: str) -> FileManifest:
        """The manifest a file CID names, checked against the CID (no key needed).

        Raises:
            SerializationError: ``cid`` is not a manifest CID.
            ObjectNotFoundError: the store does not hold it.
            VerificationError: the stored bytes do not match the CID, or are no valid manifest.
        """
        canonical, is_manifest, digest = parse_cid(cid)
        if not is_manifest:
            raise SerializationError(f"{canonical} names a chunk, not a file (a file CID has the messagepack codec)")
        (data,) = self.store.get_many([canonical])
        if data is None:
            raise ObjectNotFoundError(f"no file {canonical} in {self.store!r}")
        _check_digest(canonical, digest, data, "manifest")
        return _decode_manifest(canonical, data)

    def get(self, cid: str, box: Any) -> bytes:
        """Fetch, check and decrypt a file.

        Args:
            cid: the file's CID (from :meth:`put`).
            box: the reader's X25519 secret key (``nacl.public.PrivateKey``) or an identity
                holding one as ``.box`` (``NodeIdentity``).

        Raises:
            SerializationError: ``cid`` is not a file CID.
            ObjectNotFoundError: the store does not hold the file.
            AuthorizationError: ``box`` is not one of the file's recipients.
            VerificationError: the manifest or a chunk is tampered, truncated, swapped or
                missing, or the key wrap does not open to this file's key.
        """
        secret = _box_private(box)
        m = self.manifest(cid)
        canonical = parse_cid(cid)[0]
        me = bytes(secret.public_key)
        wrap = next((w for w in m.wraps if bytes(w.recipient) == me), None)
        if wrap is None:
            raise AuthorizationError(f"box key {me.hex()[:16]}... is not a recipient of {canonical}")
        try:
            opened = nacl.public.SealedBox(secret).decrypt(bytes(wrap.sealed))
        except nacl.exceptions.CryptoError:
            raise VerificationError(f"the key wrap of {canonical} for this recipient does not open") from None
        if len(opened) != KEY_BYTES + SALT_BYTES or opened[KEY_BYTES:] != bytes(m.salt):
            raise VerificationError(f"the key wrap of {canonical} belongs to another file")
        key, salt = opened[:KEY_BYTES], bytes(m.salt)
        count, cs = len(m.chunks), m.chunk_size
        digests = m.chunk_digests()
        out: list[bytes] = []  # the chunks' plaintexts in order, joined once (one copy of the file)

        def fetch(first: int, stop: int) -> tuple[int, list[bytes | None]]:
            return first, self.store.get_many(m.chunks[first:stop])

        def decrypt(fetched: tuple[int, list[bytes | None]]) -> None:
            first, blobs = fetched
            for i, ct in enumerate(blobs, first):
                if ct is None:
                    raise VerificationError(f"chunk {i} ({m.chunks[i]}) of {canonical} is missing from the store")
                _check_digest(m.chunks[i], digests[i], ct, f"chunk {i}")
                try:
                    plain = _DECRYPT(ct, _chunk_ad(salt, i, count, m.size, cs), _nonce(salt, i), key)
                except nacl.exceptions.CryptoError:
                    raise VerificationError(f"chunk {i} of {canonical} does not authenticate (swapped, reordered or foreign)") from None
                want = cs if i < count - 1 else m.size - cs * (count - 1)
                if len(plain) != want:  # unreachable without forging the AEAD; checked all the same
                    raise VerificationError(f"chunk {i} of {canonical} holds {len(plain)} bytes, not {want}")
                out.append(plain)

        # Fetching batch k + 1 (in a thread) overlaps checking and decrypting batch k.
        _pipeline(_batches(count, cs), fetch, decrypt, produce_in_thread=True)
        return out[0] if count == 1 else b"".join(out)

    def pin(self, cid: str) -> None:
        """Pin a file (its manifest must be in the store and valid) so :meth:`gc` keeps it.

        Raises:
            ObjectNotFoundError, VerificationError, SerializationError: as :meth:`manifest`.
        """
        self.manifest(cid)
        self.store.set_pin(parse_cid(cid)[0], True)

    def unpin(self, cid: str) -> None:
        """Unpin a file; the next :meth:`gc` removes it unless pinned again."""
        self.store.set_pin(parse_cid(cid)[0], False)

    def ls(self) -> list[FileEntry]:
        """Every file (manifest) in the store, by CID; a manifest that fails its checks is listed with ``error``."""
        pins = self.store.pins()
        out = []
        for name in sorted(self.store.objects()):
            try:
                canonical, is_manifest, _ = parse_cid(name)
            except SerializationError:
                continue  # not an R1FS object (another user of the bucket)
            if not is_manifest:
                continue
            try:
                m = self.manifest(canonical)
            except EdilError as exc:
                out.append(FileEntry(canonical, "", 0, 0, 0, canonical in pins, f"{type(exc).__name__}: {exc}"))
                continue
            out.append(FileEntry(canonical, m.name, m.size, len(m.chunks), len(m.wraps), canonical in pins))
        return out

    def gc(self, *, min_age_s: float = 600.0, now: float | None = None) -> GcReport:
        """Remove every object that is neither pinned nor a chunk of a pinned file.

        Args:
            min_age_s: keep objects younger than this (a put in progress, on another machine,
                writes its chunks before it pins its manifest).
            now: the current Unix time (``time.time()`` when omitted).

        Raises:
            ObjectNotFoundError, VerificationError: a pinned manifest is missing or invalid; then
                nothing is removed (its chunks cannot be told from garbage).
        """
        now = time.time() if now is None else float(now)
        pins = self.store.pins()
        live = set(pins)
        for cid in sorted(pins):
            try:
                canonical, is_manifest, _ = parse_cid(cid)
            except SerializationError:
                continue
            if is_manifest:
                live.update(self.manifest(canonical).chunks)
        removed, freed, kept = [], 0, 0
        for cid, (_, mtime) in sorted(self.store.objects().items()):
            try:
                canonical = parse_cid(cid)[0]
            except SerializationError:
                kept += 1
                continue  # not ours
            if canonical in live or now - mtime < min_age_s:
                kept += 1
                continue
            freed += self.store.delete(canonical)
            removed.append(canonical)
        return GcReport(tuple(removed), freed, kept)

    def close(self) -> None:
        """Close the backend."""
        self.store.close()

    def __enter__(self) -> R1FS:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
