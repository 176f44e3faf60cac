"""R1FS: encrypted, content-addressed files on a directory and on NATS JetStream's object store.

Round trips on both backends (a real ``nats-server -js`` on loopback), sizes around chunk
boundaries, CIDs against an independent hashlib computation, every tampering case, recipient-only
decryption, pin/gc, and ``edil fs`` as a subprocess.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nacl.public
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edil import AuthorizationError, SerializationError, VerificationError
from edil.proofs import MerkleTree, verify_inclusion
from edil.runtime import (
    R1FS,
    FileManifest,
    LocalBlobStore,
    NatsBlobStore,
    NatsServer,
    NodeIdentity,
    ObjectNotFoundError,
    content_id,
    parse_cid,
)
from edil.runtime._r1fs import KeyWrap

ROOT = Path(__file__).resolve().parents[1]
CS = 64  # a small chunk size keeps the cases fast and multi-chunk
ALICE = nacl.public.PrivateKey(hashlib.sha256(b"alice").digest())
BOB = nacl.public.PrivateKey(hashlib.sha256(b"bob").digest())
CAROL = nacl.public.PrivateKey(hashlib.sha256(b"carol").digest())


def independent_cid(data: bytes, *, manifest: bool) -> str:
    """CIDv1 by hand: version 1, codec varint (raw 0x55, messagepack 0x0201), sha2-256 multihash, base32."""
    codec = bytes([0x81, 0x04]) if manifest else bytes([0x55])  # unsigned LEB128 of 0x0201 is 81 04
    raw = b"\x01" + codec + b"\x12\x20" + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(raw).decode().rstrip("=").lower()


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    with NatsServer() as server:
        yield server.url


@pytest.fixture(params=["local", "nats"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "local":
        backend: Any = LocalBlobStore(tmp_path / "store")
    else:
        backend = NatsBlobStore(request.getfixturevalue("nats_url"), bucket="T" + uuid.uuid4().hex[:12])
    yield backend
    backend.close()


def stored_bytes(backend: Any, cid: str) -> bytes:
    (data,) = backend.get_many([cid])
    assert data is not None
    return data


def forge(fs: R1FS, cid: str, **changes: Any) -> str:
    """Store a manifest derived from ``cid``'s with ``changes`` (Merkle root recomputed unless given); its CID."""
    m = fs.manifest(cid)
    if "chunks" in changes and "merkle_root" not in changes:
        changes["merkle_root"] = MerkleTree([parse_cid(c)[2] for c in changes["chunks"]]).root
    data = msgspec.msgpack.encode(msgspec.structs.replace(m, **changes))
    forged = independent_cid(data, manifest=True)
    fs.store.put_many([(forged, data)])
    return forged


# ------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("size", [0, 1, CS - 1, CS, CS + 1, 3 * CS + 5])
def test_round_trip_on_both_backends(store: Any, size: int) -> None:
    node = NodeIdentity.from_seed(b"r1fs-node-seed-0")
    fs = R1FS(store, chunk_size=CS)
    data = os.urandom(size)
    cid = fs.put(data, [ALICE.public_key, node.card(_caps())], name="weights.bin")
    assert fs.get(cid, ALICE) == data
    assert fs.get(cid, node) == data  # a NodeIdentity reads with its box key
    m = fs.manifest(cid)
    assert (m.size, m.chunk_size, m.name, len(m.chunks)) == (size, CS, "weights.bin", max(1, math.ceil(size / CS)))
    # the Merkle root commits to the ciphertext actually stored, and proves each chunk
    digests = [hashlib.sha256(stored_bytes(store, c)).digest() for c in m.chunks]
    assert m.merkle_root == MerkleTree(digests).root
    for i, d in enumerate(digests):
        verify_inclusion(d, m.proof(i), m.merkle_root)


def _caps() -> Any:
    from edil.runtime import Capabilities

    return Capabilities(("cpu-only",), 1 << 30)


def test_one_mib_chunks_in_batches_on_nats(nats_url: str) -> None:
    # default 1 MiB chunks (each several of NATS's 128 KiB messages), moved 8 MiB per backend call
    with R1FS(NatsBlobStore(nats_url, bucket="BIG" + uuid.uuid4().hex[:8])) as fs:
        data = os.urandom((17 << 20) + 3)
        cid = fs.put(data, [ALICE.public_key])
        chunks = fs.manifest(cid).chunks
        assert len(chunks) == 18
        assert fs.get(cid, ALICE) == data
        fs.store.put_many([(chunks[17], b"\x00" * 19)])
        with pytest.raises(VerificationError, match="chunk 17 .* does not match its CID"):
            fs.get(cid, ALICE)


@settings(max_examples=40, deadline=None)
@given(
    chunk_size=st.sampled_from([1, 7, 64]),
    chunks=st.integers(0, 5),
    delta=st.integers(-1, 1),
    seed=st.binary(min_size=8, max_size=8),
)
def test_sizes_around_chunk_boundaries(chunk_size: int, chunks: int, delta: int, seed: bytes) -> None:
    size = max(0, chunks * chunk_size + delta)
    data = hashlib.shake_256(seed).digest(size) if size else b""
    with tempfile.TemporaryDirectory() as tmp:
        fs = R1FS(LocalBlobStore(tmp), chunk_size=chunk_size)
        cid = fs.put(data, [BOB.public_key])
        assert fs.get(cid, BOB) == data
        m = fs.manifest(cid)
        assert len(m.chunks) == max(1, math.ceil(size / chunk_size)) and m.size == size
        # every chunk is its plaintext slice plus the 16-byte Poly1305 tag: nothing else is stored
        assert [len(stored_bytes(fs.store, c)) for c in m.chunks] == [
            len(data[i * chunk_size : (i + 1) * chunk_size]) + 16 for i in range(len(m.chunks))
        ]


def test_many_batches_round_trip_and_fail_closed(tmp_path: Path) -> None:
    # 1-byte chunks: 600 chunks move in 3 backend calls, transfer and crypto overlapping
    store = LocalBlobStore(tmp_path)
    fs = R1FS(store, chunk_size=1)
    data = os.urandom(600)
    cid = fs.put(data, [ALICE.public_key])
    assert fs.get(cid, ALICE) == data
    chunks = fs.manifest(cid).chunks
    store.put_many([(chunks[599], b"\x00" * 17)])
    with pytest.raises(VerificationError, match="chunk 599 .* does not match its CID"):
        fs.get(cid, ALICE)
    store.delete(chunks[300])
    with pytest.raises(VerificationError, match="chunk 300 .* is missing"):
        fs.get(cid, ALICE)


def test_the_store_holds_no_plaintext(store: Any) -> None:
    fs = R1FS(store, chunk_size=CS)
    secret = b"SECRET-PATIENT-RECORD-" * 20
    cid = fs.put(secret, [ALICE.public_key], name="")
    blobs = [stored_bytes(store, c) for c in store.objects()]
    assert len(blobs) == 1 + len(fs.manifest(cid).chunks)
    assert not any(b"SECRET-PATIENT" in b for b in blobs)


# ------------------------------------------------------------------------------------------ CIDs


def test_cids_match_an_independent_computation(store: Any) -> None:
    fs = R1FS(store, chunk_size=CS)
    cid = fs.put(os.urandom(3 * CS), [ALICE.public_key])
    names = set(store.objects())
    assert cid in names and len(names) == 4
    for name in names:
        assert name == independent_cid(stored_bytes(store, name), manifest=name == cid)
    assert content_id(stored_bytes(store, cid), manifest=True) == cid
    # the well-known CIDv1 of the raw bytes "hello" (sha2-256, base32), as IPFS computes it
    assert content_id(b"hello") == "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


def test_cid_text_in_another_multibase_names_the_same_file(tmp_path: Path) -> None:
    from multiformats import CID

    fs = R1FS(LocalBlobStore(tmp_path), chunk_size=CS)
    cid = fs.put(b"x" * 100, [ALICE.public_key])
    other = CID.decode(cid).encode("base58btc")
    assert other != cid and parse_cid(other)[0] == cid
    assert parse_cid("B" + cid[1:].upper())[0] == cid  # base32 upper case, multibase prefix "B"
    assert fs.get(other, ALICE) == b"x" * 100


def test_cid_is_reproducible_under_injected_randomness(tmp_path: Path) -> None:
    fs = R1FS(LocalBlobStore(tmp_path), chunk_size=CS)
    data = os.urandom(200)
    fixed = {"key": b"k" * 32, "salt": b"s" * 16, "seal_seed": b"e" * 32}
    a = fs.put(data, [ALICE.public_key], **fixed)
    assert fs.put(data, [ALICE.public_key], **fixed) == a
    reseal = fs.put(data, [ALICE.public_key], **{**fixed, "seal_seed": b"f" * 32})
    assert reseal != a and fs.manifest(reseal).chunks == fs.manifest(a).chunks  # only the wrap differs
    rekey = fs.put(data, [ALICE.public_key], **{**fixed, "key": b"K" * 32})
    assert not set(fs.manifest(rekey).chunks) & set(fs.manifest(a).chunks)
    fresh = {fs.put(data, [ALICE.public_key]) for _ in range(2)}  # a fresh key per file by default
    assert len(fresh) == 2 and a not in fresh
    assert all(fs.get(c, ALICE) == data for c in (a, reseal, rekey, *fresh))
    with pytest.raises(ValueError, match="key must be 32 bytes"):
        fs.put(data, [ALICE.public_key], key=b"short")


# ---------------------------------------------------------------------------------- recipients


def test_only_recipients_decrypt(store: Any) -> None:
    fs = R1FS(store, chunk_size=CS)
    data = os.urandom(150)
    cid = fs.put(data, [ALICE.public_key, bytes(BOB.public_key)])
    assert fs.get(cid, ALICE) == data and fs.get(cid, BOB) == data
    assert set(fs.manifest(cid).recipients) == {bytes(ALICE.public_key), bytes(BOB.public_key)}
    with pytest.raises(AuthorizationError, match="not a recipient"):
        fs.get(cid, CAROL)
    # Carol posing as Alice (Alice's public key in the wrap list, Carol's secret) cannot open Alice's wrap
    m = fs.manifest(cid)
    stolen = forge(fs, cid, wraps=[KeyWrap(bytes(CAROL.public_key), m.wraps[0].sealed)])
    with pytest.raises(VerificationError, match="does not open"):
        fs.get(stolen, CAROL)
    with pytest.raises(TypeError):
        fs.get(cid, bytes(ALICE))
    with pytest.raises(ValueError, match="distinct recipients"):
        fs.put(data, [])
    with pytest.raises(ValueError, match="distinct recipients"):
        fs.put(data, [ALICE.public_key, bytes(ALICE.public_key)])


# ---------------------------------------------------------------------------------- tampering


def _two_files(store: Any) -> tuple[R1FS, str, str, bytes]:
    fs = R1FS(store, chunk_size=CS)
    data = os.urandom(3 * CS + 10)
    return fs, fs.put(data, [ALICE.public_key]), fs.put(os.urandom(3 * CS + 10), [ALICE.public_key]), data


def test_tampered_truncated_or_missing_chunks_fail(store: Any) -> None:
    fs, cid, _, data = _two_files(store)
    chunks = fs.manifest(cid).chunks
    original = stored_bytes(store, chunks[1])
    flipped = bytes([original[0] ^ 1]) + original[1:]
    for bad, why in ((flipped, "does not match its CID"), (original[:-1], "does not match its CID"), (b"", "does not match its CID")):
        store.put_many([(chunks[1], bad)])
        with pytest.raises(VerificationError, match=why):
            fs.get(cid, ALICE)
    store.put_many([(chunks[1], original)])
    assert fs.get(cid, ALICE) == data
    assert store.delete(chunks[2]) > 0
    with pytest.raises(VerificationError, match="chunk 2 .* is missing"):
        fs.get(cid, ALICE)


def test_tampered_or_truncated_manifest_fails(store: Any) -> None:
    fs, cid, _, _ = _two_files(store)
    encoded = stored_bytes(store, cid)
    for bad in (encoded[:-1], encoded[:10], bytes([encoded[0] ^ 1]) + encoded[1:], encoded + b"\x00"):
        store.put_many([(cid, bad)])
        with pytest.raises(VerificationError, match="does not match its CID"):
            fs.get(cid, ALICE)
    store.put_many([(cid, encoded)])
    # garbage stored under its own manifest CID decodes to nothing valid: an EdilError, not msgspec's
    for garbage in (b"\xc1", b"\x93\x01\x02\x03", msgspec.msgpack.encode({"version": 1}), os.urandom(64)):
        g = independent_cid(garbage, manifest=True)
        store.put_many([(g, garbage)])
        with pytest.raises(VerificationError, match="not a well-formed R1FS manifest"):
            fs.get(g, ALICE)


def test_forged_manifests_fail(store: Any) -> None:
    fs, cid, other, _ = _two_files(store)
    m, o = fs.manifest(cid), fs.manifest(other)
    c = list(m.chunks)
    cases = {
        "swapped": forge(fs, cid, chunks=[c[1], c[0], *c[2:]]),
        "reordered": forge(fs, cid, chunks=[*c[1:], c[0]]),
        "duplicated": forge(fs, cid, chunks=[c[0], c[0], *c[2:]]),
        "foreign chunk": forge(fs, cid, chunks=[c[0], o.chunks[1], *c[2:]]),
        "truncated (size lowered)": forge(fs, cid, chunks=c[:-1], size=3 * CS),
        "size lie within the last chunk": forge(fs, cid, size=m.size - 1),
        "chunk size lie": forge(fs, cid, chunk_size=CS + 1, size=m.size),
    }
    for why, forged in cases.items():
        with pytest.raises(VerificationError, match="does not authenticate"):
            fs.get(forged, ALICE)
            pytest.fail(f"{why}: read back")
    with pytest.raises(VerificationError, match="Merkle root"):
        fs.get(forge(fs, cid, merkle_root=o.merkle_root), ALICE)
    with pytest.raises(VerificationError, match="lists 3 chunks"):
        fs.get(forge(fs, cid, chunks=c[:-1]), ALICE)  # size left at 4 chunks' worth
    with pytest.raises(VerificationError, match="not a well-formed"):  # a manifest CID where a chunk CID belongs
        fs.get(forge(fs, cid, chunks=[c[0], c[1], c[2], other]), ALICE)


def test_bad_key_wraps_fail(store: Any) -> None:
    fs, cid, other, _ = _two_files(store)
    m, o = fs.manifest(cid), fs.manifest(other)
    me = bytes(ALICE.public_key)
    garbage = forge(fs, cid, wraps=[KeyWrap(me, os.urandom(len(m.wraps[0].sealed)))])
    with pytest.raises(VerificationError, match="does not open"):
        fs.get(garbage, ALICE)
    borrowed = forge(fs, cid, wraps=o.wraps)  # the other file's wrap opens, but to another salt
    with pytest.raises(VerificationError, match="belongs to another file"):
        fs.get(borrowed, ALICE)
    wrong_key = nacl.public.SealedBox(ALICE.public_key).encrypt(os.urandom(32) + bytes(m.salt))
    with pytest.raises(VerificationError, match="does not authenticate"):
        fs.get(forge(fs, cid, wraps=[KeyWrap(me, wrong_key)]), ALICE)


def test_unknown_or_malformed_cids(store: Any) -> None:
    fs, cid, _, _ = _two_files(store)
    missing = independent_cid(b"never stored", manifest=True)
    with pytest.raises(ObjectNotFoundError, match="no file"):
        fs.get(missing, ALICE)
    with pytest.raises(SerializationError, match="names a chunk"):
        fs.get(fs.manifest(cid).chunks[0], ALICE)
    for text in ("", "not-a-cid", "../../etc/passwd", "b" + "a" * 60, "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"):
        with pytest.raises(SerializationError, match="not an R1FS CID"):
            fs.get(text, ALICE)


# -------------------------------------------------------------------------------------- pin / gc


def test_gc_keeps_pinned_files_and_their_chunks(store: Any) -> None:
    fs = R1FS(store, chunk_size=CS)
    keep_data = os.urandom(2 * CS + 1)
    keep = fs.put(keep_data, [ALICE.public_key])
    loose = fs.put(os.urandom(CS + 1), [ALICE.public_key], pin=False)
    dropped = fs.put(os.urandom(3 * CS), [ALICE.public_key])
    fs.unpin(dropped)
    garbage = {loose, *fs.manifest(loose).chunks, dropped, *fs.manifest(dropped).chunks}
    entries = {e.cid: e for e in fs.ls()}
    assert set(entries) == {keep, loose, dropped}
    assert (entries[keep].pinned, entries[loose].pinned, entries[dropped].pinned) == (True, False, False)
    assert (entries[keep].size, entries[keep].chunks, entries[keep].recipients) == (2 * CS + 1, 3, 1)
    before = store.objects()
    # young objects survive a gc with a grace period (a put in progress elsewhere), old ones do not
    assert fs.gc(min_age_s=3600.0, now=time.time()).removed == ()
    report = fs.gc(min_age_s=3600.0, now=time.time() + 7200.0)
    assert set(report.removed) == garbage
    assert report.freed_bytes == sum(before[c][0] for c in garbage)
    assert report.kept == len(before) - len(garbage)
    assert set(store.objects()) == set(before) - garbage
    assert fs.get(keep, ALICE) == keep_data
    with pytest.raises(ObjectNotFoundError):
        fs.get(loose, ALICE)
    with pytest.raises(ObjectNotFoundError):
        fs.pin(dropped)  # gone: it cannot be pinned back


def test_gc_fails_closed_on_a_damaged_pinned_manifest(store: Any) -> None:
    fs = R1FS(store, chunk_size=CS)
    cid = fs.put(os.urandom(2 * CS), [ALICE.public_key])
    fs.put(os.urandom(10), [ALICE.public_key], pin=False)
    store.put_many([(cid, b"damaged")])
    before = set(store.objects())
    with pytest.raises(VerificationError):
        fs.gc(min_age_s=0.0)
    assert set(store.objects()) == before  # nothing removed
    (entry,) = [e for e in fs.ls() if e.cid == cid]
    assert entry.error is not None and "VerificationError" in entry.error


# ----------------------------------------------------------------------------------------- CLI


def edil(*args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "edil.app", *args], cwd=cwd, input=stdin, capture_output=True, timeout=120, check=False,
    )


def test_cli_put_ls_get_and_one_line_errors(tmp_path: Path) -> None:
    seed, other = tmp_path / "node.key", tmp_path / "other.key"
    seed.write_text(hashlib.sha256(b"cli-node").hexdigest() + "\n")
    other.write_text(hashlib.sha256(b"cli-other").hexdigest() + "\n")
    payload = os.urandom(3000)
    (tmp_path / "model.bin").write_bytes(payload)
    store = ["--store", str(tmp_path / "store")]
    bob_seed = tmp_path / "bob.key"
    bob_seed.write_text(hashlib.sha256(b"cli-bob").hexdigest())
    bob_hex = bytes(NodeIdentity.from_seed(bytes.fromhex(bob_seed.read_text())).box.public_key).hex()

    put = edil("fs", "put", "model.bin", "--key-file", str(seed), "--to", bob_hex, "--chunk-size", "1024", *store, cwd=tmp_path)
    assert put.returncode == 0, put.stderr
    cid = put.stdout.decode().strip()
    assert parse_cid(cid)[1]  # a file (manifest) CID

    got = edil("fs", "get", cid, "--key-file", str(seed), "-o", "out.bin", *store, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out.bin").read_bytes() == payload

    denied = edil("fs", "get", cid, "--key-file", str(other), "-o", "nope.bin", *store, cwd=tmp_path)
    err = denied.stderr.decode()
    assert denied.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("edil fs get: AuthorizationError:") and "not a recipient" in err
    assert not (tmp_path / "nope.bin").exists()

    # the rest in process: same entry point, no interpreter start-up per command
    from edil.app.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        out, errs = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(errs):
            rc = main(list(args))
        return rc, out.getvalue(), errs.getvalue()

    raw_out = io.BytesIO()  # get without -o writes the bytes to standard output
    text_out = io.TextIOWrapper(raw_out)
    with contextlib.redirect_stdout(text_out):
        assert main(["fs", "get", cid, "--key-file", str(bob_seed), *store]) == 0
    assert raw_out.getvalue() == payload
    text_out.detach()

    rc, out, _ = run("fs", "ls", *store)
    assert rc == 0 and cid in out and "model.bin" in out and "3000" in out
    rc, out, _ = run("fs", "ls", "--json", *store)
    (entry,) = json.loads(out)
    assert entry == {"cid": cid, "name": "model.bin", "size": 3000, "chunks": 3, "recipients": 2, "pinned": True, "error": None}

    chunk = R1FS(LocalBlobStore(tmp_path / "store")).manifest(cid).chunks[0]
    path = tmp_path / "store" / "objects" / chunk
    path.write_bytes(path.read_bytes()[:-1])
    rc, _, err = run("fs", "get", cid, "--key-file", str(seed), "-o", str(tmp_path / "bad.bin"), *store)
    assert rc == 2 and err.startswith("edil fs get: VerificationError:") and err.count("\n") == 1
    assert not (tmp_path / "bad.bin").exists()

    for args, expect in (
        (("fs", "get", "nonsense", "--key-file", str(seed), *store), "SerializationError"),
        (("fs", "get", independent_cid(b"x", manifest=True), "--key-file", str(seed), *store), "ObjectNotFoundError"),
        (("fs", "put", "model.bin", *store), "needs a recipient"),
        (("fs", "put", "absent.bin", "--to", bob_hex, *store), "cannot read absent.bin"),
        (("fs", "put", "model.bin", "--to", "zz", *store), "--to 'zz'"),
        (("fs", "ls", "--nats", "http://x", *store), "not both"),
        (("fs", "ls", "--nats", "http://x"), "not a NATS URL"),
    ):
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            rc, _, err = run(*args)
        finally:
            os.chdir(cwd)
        assert rc == 2 and expect in err and err.count("\n") == 1, (args, err)

    rc, out, _ = run("fs", "pin", cid, "--remove", *store)
    assert rc == 0 and "unpinned" in out
    rc, out, _ = run("fs", "gc", "--min-age", "0", *store)
    assert rc == 0 and out.startswith("removed 4 objects")
    assert not any((tmp_path / "store" / "objects").iterdir())


def test_cli_on_nats(tmp_path: Path, nats_url: str) -> None:
    from edil.app.cli import main

    seed = tmp_path / "node.key"
    seed.write_text(hashlib.sha256(b"cli-nats").hexdigest())
    (tmp_path / "in.bin").write_bytes(b"over the bus" * 50)
    bucket = ["--nats", nats_url, "--bucket", "CLI" + uuid.uuid4().hex[:8]]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["fs", "put", str(tmp_path / "in.bin"), "--key-file", str(seed), *bucket]) == 0
    cid = out.getvalue().strip()
    assert main(["fs", "get", cid, "--key-file", str(seed), "-o", str(tmp_path / "out.bin"), *bucket]) == 0
    assert (tmp_path / "out.bin").read_bytes() == b"over the bus" * 50


def test_manifest_type_is_strict(tmp_path: Path) -> None:
    # unknown fields and wrong sizes are refused by the typed decoder
    good = FileManifest(1, "", 0, CS, b"s" * 16, [content_id(b"")], MerkleTree([hashlib.sha256(b"").digest()]).root,
                        [KeyWrap(bytes(ALICE.public_key), b"w" * 96)])
    enc = msgspec.msgpack.encode(good)
    assert msgspec.msgpack.decode(enc, type=FileManifest) == good
    as_dict = msgspec.to_builtins(good, builtin_types=(bytes,))
    for bad in ({**as_dict, "extra": 1}, {**as_dict, "salt": b"s" * 15}, {**as_dict, "chunks": []}, {**as_dict, "version": 2}):
        data = msgspec.msgpack.encode(bad)
        fs = R1FS(LocalBlobStore(tmp_path))
        g = independent_cid(data, manifest=True)
        fs.store.put_many([(g, data)])
        with pytest.raises(VerificationError, match="not a well-formed"):
            fs.manifest(g)
