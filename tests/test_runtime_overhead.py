"""Per-task overhead without weaker guarantees: version-2 envelopes (a signed, tagged digest that
still binds every byte), journal specs kept apart from job rows, commitments hashed once per task."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from pathlib import Path

import nacl.exceptions
import nacl.public
import nacl.signing
import pytest

from edil import VerificationError
from edil import runtime as rt
from edil.runtime import _transport, _wire

NOW = 1_700_000_000_000


def _keys() -> tuple[rt.CoordinatorIdentity, rt.NodeIdentity]:
    return rt.CoordinatorIdentity.from_seed(b"c" * 32), rt.NodeIdentity.from_seed(b"n" * 32)


def _open(env: bytes, coord: rt.CoordinatorIdentity, node: rt.NodeIdentity) -> rt.Message:
    return rt.open_envelope(env, box_key=node.box, trusted=[coord.verify_key], guard=rt.ReplayGuard(), now_ms=NOW)


def _seal_raw(coord: rt.CoordinatorIdentity, node: rt.NodeIdentity, header: dict, *, digest: bool) -> bytes:
    """An envelope signed by hand: over the tagged digest of the header bytes, or over the bytes themselves (version 1)."""
    message = _wire.dumps(header)
    signed = _transport.ENVELOPE_SIG_TAG + hashlib.sha256(message).digest() if digest else message
    return nacl.public.SealedBox(node.box.public_key).encrypt(coord.signing.sign(signed).signature + message)


def _header(coord: rt.CoordinatorIdentity, node: rt.NodeIdentity, body: object, nonce: bytes, **extra: object) -> dict:
    return {"kind": "task", "body": body, "from": coord.verify_key, "to": bytes(node.box.public_key), "nonce": nonce, "ts": NOW,
            **extra}


def test_envelope_signs_a_tagged_digest_of_every_byte() -> None:
    coord, node = _keys()
    body = {"input": bytes(range(256)) * 64}
    env = rt.seal_envelope("task", body, signing_key=coord.signing, recipient_box_key=bytes(node.box.public_key),
                           nonce=b"\x01" * 16, now_ms=NOW)
    inner = nacl.public.SealedBox(node.box).decrypt(env)
    sig, message = inner[:64], inner[64:]
    assert _wire.loads(message)["v"] == _transport.ENVELOPE_VERSION == 2
    verify = nacl.signing.VerifyKey(coord.verify_key)
    verify.verify(_transport.ENVELOPE_SIG_TAG + hashlib.sha256(message).digest(), sig)  # the signed bytes
    with pytest.raises(nacl.exceptions.BadSignatureError):  # not a signature over the message itself
        verify.verify(message, sig)
    assert _open(env, coord, node).body == body
    # Flip one byte anywhere in the signed header (body, nonce, recipient, version) and re-seal it: refused.
    for pos in (0, len(message) // 3, len(message) // 2, len(message) - 1):
        flipped = message[:pos] + bytes([message[pos] ^ 1]) + message[pos + 1 :]
        forged = nacl.public.SealedBox(node.box.public_key).encrypt(sig + flipped)
        with pytest.raises(VerificationError):
            _open(forged, coord, node)


def test_envelope_versions_are_bound_by_the_signature() -> None:
    coord, node = _keys()
    # Version 1 (no "v": the signature covers the header bytes) from an older sender still opens.
    old = _seal_raw(coord, node, _header(coord, node, {"x": 1}, b"\x02" * 16), digest=False)
    assert _open(old, coord, node).body == {"x": 1}
    # A digest signature on a header that claims version 1 (the "v" stripped or changed) is refused, and so is
    # a version-1 signature on a header that claims version 2: the version cannot be swapped under a signature.
    for header, digest in (({"v": 1}, True), ({}, True), ({"v": 2}, False)):
        env = _seal_raw(coord, node, _header(coord, node, {"x": 2}, b"\x03" * 16, **header), digest=digest)
        with pytest.raises(VerificationError, match="signature"):
            _open(env, coord, node)
    for bad in (3, 0, True, "2", 2.0):  # an unknown version is refused even when its signature is good
        env = _seal_raw(coord, node, _header(coord, node, {}, b"\x04" * 16, v=bad), digest=True)
        with pytest.raises(VerificationError, match="version"):
            _open(env, coord, node)


def test_signed_digest_cannot_be_another_runtime_message() -> None:
    # Every other Ed25519 signature of the runtime (version-1 envelopes, heartbeats, announcements) covers
    # wire bytes, which start with the wire magic; a signed digest starts with the tag instead.
    assert not _transport.ENVELOPE_SIG_TAG.startswith(_wire.dumps({})[:3])
    assert _wire.dumps({"tag": "x"})[:3] == _wire.dumps([])[:3] == b"EW1"


def _wal_frames(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


def test_journal_keeps_specs_out_of_job_rows(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    j = rt.Journal(path)
    spec = bytes(range(256)) * 2048  # 512 KiB, like a small HE task
    jid, other = b"\x01" * 32, b"\x02" * 32
    assert j.add_many([(jid, "task", spec, 1), (other, "task", b"small", 2), (jid, "task", b"ignored", 1)]) == 2
    assert [(r.job_id, r.spec) for r in j.pending()] == [(jid, spec), (other, b"small")]
    listed = j.pending(spec=False)
    assert [(r.job_id, r.spec, r.status, r.redundancy) for r in listed] == [(jid, b"", "pending", 1), (other, b"", "pending", 2)]
    assert j.job(jid, spec=False).spec == b"" and j.job(jid).spec == spec  # type: ignore[union-attr]
    # Completing a job writes its result and status, not its spec again (SQLite rewrites whole rows on UPDATE).
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    j.complete(jid, output=b"out", output_commitment=b"\x03" * 32, nodes=["0xabc"], epoch=0, transcripts=[("0xabc", b"t", True)])
    page = int(db.execute("PRAGMA page_size").fetchone()[0])
    assert 0 < _wal_frames(db) < len(spec) // page // 4
    j.close()
    reopened = rt.Journal(path)
    assert reopened.job(jid).spec == spec and reopened.job(jid).status == "done"  # type: ignore[union-attr]
    assert [r.job_id for r in reopened.pending()] == [other]
    reopened.close()


def test_journal_reads_jobs_written_with_the_spec_in_their_row(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    rt.Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO jobs (job_id, kind, spec, redundancy, status) VALUES (?, 'task', ?, 1, 'pending')", (b"\x07" * 32, b"old spec"))
    db.commit()
    db.close()
    j = rt.Journal(path)
    assert [(r.job_id, r.spec) for r in j.pending()] == [(b"\x07" * 32, b"old spec")]
    assert not j.add(b"\x07" * 32, "task", b"other spec")  # a known id keeps its spec
    assert j.complete(b"\x07" * 32, output=b"o", output_commitment=b"\x01" * 32, nodes=["0xa"], epoch=1, transcripts=[])
    assert j.job(b"\x07" * 32).spec == b"old spec" and j.jobs("task", spec=False)[0].status == "done"  # type: ignore[union-attr]
    j.close()


def test_task_commitments_are_hashed_once_and_follow_the_bytes() -> None:
    t = rt.Task("ckks", {"scheme": "ckks"}, b"model", b"input-1", 7, model_public=True)
    first = t.commitments()
    assert first == (t.params_hash, t.model_commitment, t.input_commitment)
    assert t.input_commitment is t.input_commitment  # computed once, the same object afterwards
    moved = dataclasses.replace(t, input=b"input-2")  # a new task: its own commitment, never the old one
    assert moved.input_commitment != first[2] and moved.model_commitment == first[1]
    assert rt.Task.from_bytes(t.to_bytes()).commitments() == first and rt.Task.from_bytes(t.to_bytes()) == t


def test_journal_checkpoints_in_its_own_thread_and_stops_on_close(tmp_path: Path) -> None:
    import time

    from edil.runtime import _journal

    path = tmp_path / "j.sqlite"
    j = rt.Journal(path)
    spec = b"\x5a" * (_journal.CHECKPOINT_BYTES + 1)
    j.add(b"\x01" * 32, "task", spec)
    ck = j._checkpointer  # noqa: SLF001 - the thread this test is about
    assert ck is not None
    deadline = time.monotonic() + 30
    while ck.runs == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ck.runs >= 1 and path.stat().st_size > len(spec)  # the log's frames were copied into the database file
    j.close()
    assert not ck._thread.is_alive()  # noqa: SLF001
    assert rt.Journal(path).job(b"\x01" * 32).spec == spec  # type: ignore[union-attr]
