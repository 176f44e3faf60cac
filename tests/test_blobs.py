"""Large ciphertext batches by R1FS CID, unpinning of finished jobs' files, and node daemons
(``edil node run``) that read the bus's R1FS bucket and nothing more.

A CKKS input batch over ``INPUT_INLINE_LIMIT`` travels by CID (``Task.input_cid``); the node
fetches it, runs on the same bytes and commits to them, so results and transcripts equal the
inline run's. When a job's result is journaled the coordinator unpins its input files (not a
context that a job in flight still carries) and ``R1FS.gc`` removes them. On a bus with
:class:`~edil.runtime.BusAdmission`, an admitted node reads the bucket with its own key and
cannot write, delete or purge it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from edil import CKKS, AuthorizationError, RuntimeTaskError, SerializationError
from edil import runtime as rt
from edil.proofs import transcript_from_wire
from edil.runtime._blobs import INPUT_INLINE_LIMIT, TaskBlobs
from edil.runtime._r1fs import R1FS, LocalBlobStore, NatsBlobStore
from tests.test_runtime_cids import DOMAIN, TOL, _decode, _task
from tests.test_runtime_conformance import fresh_seed, small_model


@pytest.fixture(scope="module")
def ckks() -> CKKS:
    return CKKS.for_model(small_model(4))


def _sched(executor: rt.Executor, registry: rt.StaticRegistry, ident: rt.CoordinatorIdentity | None = None) -> rt.Scheduler:
    return rt.Scheduler(
        executor, registry, rt.Journal(":memory:"), identity=ident or rt.CoordinatorIdentity.generate(), domain=DOMAIN, timeout_s=120.0
    )


def _launch(sched: rt.Scheduler, registry: rt.StaticRegistry) -> rt.NodeCard:
    cfg = rt.NodeConfig(seed=fresh_seed(), capabilities=rt.Capabilities((), 1 << 30))
    registry.admit(rt.NodeIdentity.from_seed(cfg.seed).address)
    return sched.launch(cfg)


def _input_commitments(sched: rt.Scheduler, job: bytes) -> list[bytes]:
    res = sched.journal.result(job)
    assert res is not None
    return [
        transcript_from_wire(rt._wire.loads(rec)).transcript.input_commitment
        for node in res.nodes
        for jid, rec, _ in sched.journal.transcripts(node, res.epoch)
        if jid == job
    ]


def test_a_large_ciphertext_batch_travels_by_cid_with_the_same_result_and_commitments(tmp_path, ckks) -> None:
    (t1, x1), (t2, x2) = _task(ckks, 1), _task(ckks, 2)
    assert len(t1.input) > INPUT_INLINE_LIMIT  # a 4 x 4 CKKS batch is about 1.6 MB
    outputs, sent = [], []
    for blobs in (None, tmp_path / "r1fs"):
        registry = rt.StaticRegistry()
        ex = rt.LocalExecutor(blobs=blobs)
        try:
            sched = _sched(ex, registry)
            card = _launch(sched, registry)
            job = sched.submit(t1)
            assert sched.run() == {"done": 1}
            outputs.append(sched.result(job))
            sent.append(sched.stats["bytes_sent"])
            np.testing.assert_allclose(_decode(ckks, sched, job), small_model(4).forward(x1), atol=TOL)
            assert _input_commitments(sched, job) == [t1.input_commitment]  # over the bytes fetched: the same
            if blobs is None:
                continue
            node = ex.node(card.address)
            assert node.blobs is not None and (node.blobs.fetches, node.blobs.hits) == (2, 0)  # the context and the input
            job2 = sched.submit(t2)
            assert sched.run() == {"done": 2}
            np.testing.assert_allclose(_decode(ckks, sched, job2), small_model(4).forward(x2), atol=TOL)
            # The context from the cache; each input fetched once and not kept.
            assert (node.blobs.fetches, node.blobs.hits) == (3, 1)
            assert node.blobs._size == len(t1.context)
            rec = sched.journal.job(job2)
            assert rec is not None and rt.Task.from_bytes(rec.spec) == t2  # the journal keeps the bytes for replay
        finally:
            ex.close()
    assert outputs[0] == outputs[1]  # CKKS evaluation is deterministic
    assert sent[1] < sent[0] - len(t1.context) - len(t1.input) + (64 << 10)


def test_input_cids_on_the_wire_are_strict_and_old_records_decode(tmp_path, ckks) -> None:
    task, _ = _task(ckks)
    me = rt.NodeIdentity.from_seed(fresh_seed())
    blobs = TaskBlobs(LocalBlobStore(tmp_path), input_limit=len(task.input))
    assert "input_cid" not in blobs.wire(task, me.card().box_key, [me.card().box_key])  # at the limit: inline
    blobs.input_limit = INPUT_INLINE_LIMIT
    wire = blobs.wire(task, me.card().box_key, [me.card().box_key])
    assert wire["input"] == b"" and wire["context"] == b"" and len(wire["input_cid"]) == 61
    back = rt.Task.from_bytes(rt.Task.from_wire(wire).to_bytes())
    assert back.input_cid == wire["input_cid"]
    from edil.runtime._blobs import BlobCache

    assert BlobCache(LocalBlobStore(tmp_path)).resolve(back, me) == task
    old = task.to_wire()
    assert "input_cid" not in old and rt.Task.from_wire(old) == task  # records from before input CIDs
    for bad in ("B" * 61, "../" + "a" * 58, 7, "bafy"):
        with pytest.raises(SerializationError):
            rt.Task.from_wire({**wire, "input_cid": bad})


def test_finished_jobs_unpin_their_inputs_and_gc_removes_them(tmp_path, ckks) -> None:
    registry = rt.StaticRegistry()
    ex = rt.LocalExecutor(blobs=tmp_path)
    try:
        sched = _sched(ex, registry)
        card = _launch(sched, registry)
        (t1, x1), (t2, _) = _task(ckks, 1), _task(ckks, 2)
        j1, j2 = sched.submit(t1), sched.submit(t2)
        assert sched.run() == {"done": 2}
        fs = R1FS(ex.blob_store)
        listed = fs.ls()
        inputs = [e for e in listed if e.name == "ckks-input"]
        (context,) = [e for e in listed if e.name == "ckks-context"]
        assert len(inputs) == 2 and not any(e.pinned for e in inputs)
        assert context.pinned  # still remembered for the next task on this context
        assert sched.stats["blob_unpins"] == 2
        chunks = {c for e in inputs for c in fs.manifest(e.cid).chunks}
        before = ex.blob_store.objects()
        report = fs.gc(min_age_s=0)
        assert set(report.removed) == {e.cid for e in inputs} | chunks  # the inputs' manifests and chunks, nothing else
        assert len(ex.blob_store.objects()) == len(before) - len(report.removed)
        assert report.freed_bytes > len(t1.input) + len(t2.input)
        assert [e.name for e in fs.ls()] == ["ckks-context"]
        node = ex.node(card.address)
        assert fs.get(context.cid, node.identity) == t1.context  # the context is intact
        j3 = sched.submit(dataclasses.replace(t1, params=dict(t1.params)))  # same bytes, a new job: runs on the kept context
        assert sched.run() == {"done": 3}
        np.testing.assert_allclose(_decode(ckks, sched, j3), small_model(4).forward(x1), atol=TOL)
        assert sched.result(j3) == sched.result(j1) and sched.result(j2) != sched.result(j1)
    finally:
        ex.close()


def test_a_shared_context_stays_pinned_while_a_job_in_flight_carries_it(tmp_path) -> None:
    """Bookkeeping of :class:`TaskBlobs` alone (random bytes stand in for a context and inputs)."""
    store = LocalBlobStore(tmp_path)
    me = rt.NodeIdentity.from_seed(fresh_seed()).card().box_key
    base = rt.Task(scheme="ckks", params={}, model=b"m", input=b"", work_units=1, context=os.urandom(4096))
    tasks = [dataclasses.replace(base, input=os.urandom(4096)) for _ in range(3)]
    blobs = TaskBlobs(store, inline_limit=1024, input_limit=1024, max_entries=2)
    pinned = store.pins

    def cids(job: bytes, task: rt.Task) -> tuple[str, str]:
        w = blobs.wire(task, me, [me], job=job)
        return w["context_cid"], w["input_cid"]

    ctx, in_a = cids(b"A", tasks[0])
    ctx_b, in_b = cids(b"B", tasks[1])  # the context is reused; in_a leaves the memory of 2 but job A holds it
    assert ctx_b == ctx and {ctx, in_a, in_b} <= pinned()
    assert blobs.release(b"A") == 1 and pinned() == {ctx, in_b}  # A's input only: B still carries the context
    other = dataclasses.replace(tasks[2], context=os.urandom(4096))
    ctx_c, in_c = cids(b"C", other)  # a new context and input push the first context out of the memory
    assert ctx in pinned()  # forgotten, but job B carries it
    assert blobs.release(b"B") == 2 and pinned() == {ctx_c, in_c}  # B's input, and the forgotten context
    assert blobs.release(b"C") == 1 and pinned() == {ctx_c} and blobs.unpins == 4
    report = R1FS(store).gc(min_age_s=0)
    assert {ctx, in_a, in_b, in_c} <= set(report.removed) and [e.cid for e in R1FS(store).ls()] == [ctx_c]
    assert blobs.release(b"unknown") == 0


class _GatedStore(LocalBlobStore):
    """A local store whose next write, once armed, waits until the test lets it go on."""

    def __init__(self, root: os.PathLike[str]) -> None:
        super().__init__(root)
        self.armed, self.entered, self.go = False, threading.Event(), threading.Event()

    def put_many(self, items) -> None:  # noqa: ANN001
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.go.wait(10)
        super().put_many(items)


def test_a_remembered_context_handed_to_a_job_is_never_unpinned_before_the_job_counts_it(tmp_path) -> None:
    """Job A gets the remembered context, then waits on its model's put; meanwhile job B pushes
    the context out of the memory (max_entries=1) and sweeps: A's context must stay pinned."""
    store = _GatedStore(tmp_path)
    me = rt.NodeIdentity.from_seed(fresh_seed()).card().box_key
    blobs = TaskBlobs(store, inline_limit=1024, input_limit=1 << 20, max_entries=1)
    ctx_bytes = os.urandom(4096)
    base = rt.Task(scheme="ckks", params={}, model=b"m", input=b"", work_units=1, context=ctx_bytes)
    ctx = blobs.wire(base, me, [me], job=b"P")["context_cid"]
    blobs.release(b"P")
    assert ctx in store.pins()  # remembered for reuse, no job carries it
    store.armed = True
    out: dict[str, object] = {}
    a = threading.Thread(target=lambda: out.update(blobs.wire(dataclasses.replace(base, model=os.urandom(4096)), me, [me], job=b"A")))
    a.start()
    try:
        assert store.entered.wait(10)  # A holds the context's CID and is storing its model
        blobs.wire(dataclasses.replace(base, context=os.urandom(4096)), me, [me], job=b"B")  # evicts the context, sweeps
        assert ctx in store.pins()
    finally:
        store.go.set()
        a.join(10)
    assert out["context_cid"] == ctx and ctx in store.pins()  # what A sends is still there
    blobs.release(b"A")
    assert ctx not in store.pins()  # forgotten and unused now: unpinned


# --- node daemons on a guarded bus ---------------------------------------------------------------


def _node_run(tmp_path, seed: bytes, keys: rt.CoordinatorKeys, url: str) -> subprocess.Popen[bytes]:  # noqa: ANN001
    key_file, coord_file = tmp_path / f"{seed.hex()[:8]}.key", tmp_path / "coordinator.json"
    key_file.write_text(seed.hex())
    coord_file.write_text(json.dumps(keys.to_json()))
    cmd = [sys.executable, "-m", "edil.app", "node", "run", "--key-file", str(key_file), "--coordinator", str(coord_file), "--nats", url]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _attach(ex: rt.NatsExecutor, address: str, keys: rt.CoordinatorKeys, timeout_s: float = 90.0) -> rt.NodeCard:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ex.attach(address, coordinator=keys, timeout_s=2.0)
        except RuntimeTaskError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


async def _write_as(url: str, identity: rt.NodeIdentity, victim: str) -> tuple[list[str], list[str]]:
    """Try to write, delete and purge the R1FS bucket with a node's key; returns (refused operations, server errors)."""
    import nats
    from nats.js.object_store import ObjectStore

    from edil.runtime._nats import nkey_seed, node_inbox

    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        url, allow_reconnect=False, error_cb=on_error, nkeys_seed_str=nkey_seed(bytes(identity.signing)),
        inbox_prefix=node_inbox(identity.address),
    )
    js = nc.jetstream(timeout=2.0)
    obs = ObjectStore(name="EDIL_R1FS", stream="OBJ_EDIL_R1FS", js=js)
    attempts = {
        "put": lambda: obs.put("forged", b"x" * 100),
        "delete": lambda: obs.delete(victim),
        "purge": lambda: js.purge_stream("OBJ_EDIL_R1FS"),
        "delete_stream": lambda: js.delete_stream("OBJ_EDIL_R1FS"),
        "publish": lambda: js.publish("$O.EDIL_R1FS.C.forged", b"x", stream="OBJ_EDIL_R1FS"),
    }
    refused = []
    for name, attempt in attempts.items():
        try:
            await attempt()
        except Exception:  # noqa: BLE001 - the point: each is refused (permission violation, then no reply)
            refused.append(name)
    await nc.flush()
    await asyncio.sleep(0.3)
    await nc.close()
    return refused, errors


def test_node_daemons_read_contexts_from_the_bus_once_and_cannot_write_it(tmp_path, ckks) -> None:
    from edil.runtime._nats import nkey_seed, node_inbox

    ident = rt.CoordinatorIdentity.generate()
    registry = rt.StaticRegistry()
    server = rt.NatsServer()
    admission = rt.BusAdmission(server, registry, ident.verify_key)
    admission.sync()
    server.start()
    procs: list[subprocess.Popen[bytes]] = []
    ex = None
    try:
        ex = rt.NatsExecutor(server.url, identity=ident, blobs=True)
        sched = _sched(ex, registry, ident)
        seeds = [fresh_seed() for _ in range(2)]
        for seed in seeds:
            card = rt.NodeIdentity.from_seed(seed).card()
            admission.add_card(card)
            registry.admit(card.address)
        admission.sync()
        procs = [_node_run(tmp_path, seed, sched.coordinator_keys, server.url) for seed in seeds]
        for seed in seeds:
            sched.add_node(_attach(ex, rt.NodeIdentity.from_seed(seed).address, sched.coordinator_keys))
        (t1, x1), (t2, x2) = _task(ckks, 1), _task(ckks, 2)
        j1 = sched.submit(t1, redundancy=2)  # each daemon fetches the context and the input
        assert sched.run(timeout_s=300) == {"done": 1}
        j2 = sched.submit(t2, redundancy=2)  # each daemon: the context from its cache, the new input fetched
        assert sched.run(timeout_s=300) == {"done": 2}
        for j, x in ((j1, x1), (j2, x2)):
            np.testing.assert_allclose(_decode(ckks, sched, j), small_model(4).forward(x), atol=TOL)
            assert len(sched.journal.result(j).nodes) == 2  # type: ignore[union-attr]
        assert sched.blobs is not None and sched.blobs.puts == 3  # one context, two inputs (each wrapped to both nodes)
        assert sched.stats["blob_fallbacks"] == 0 and sched.stats["blob_unpins"] == 2

        # A node reads with its own key (read-only) ...
        node = rt.NodeIdentity.from_seed(seeds[0])
        (ctx,) = [e.cid for e in R1FS(ex.blob_store).ls() if e.name == "ckks-context"]
        reader = NatsBlobStore(server.url, nkey_seed=nkey_seed(bytes(node.signing)), inbox_prefix=node_inbox(node.address), read_only=True)
        try:
            assert R1FS(reader).get(ctx, node) == t1.context
            with pytest.raises(AuthorizationError, match="read-only"):
                reader.put_many([(ctx, b"forged")])
            with pytest.raises(AuthorizationError, match="read-only"):
                reader.delete(ctx)
        finally:
            reader.close()
        # ... and the server refuses its writes, deletions and purges.
        before = ex.blob_store.objects()
        refused, errors = asyncio.run(_write_as(server.url, node, ctx))
        assert refused == ["put", "delete", "purge", "delete_stream", "publish"], refused
        assert sum("permissions violation" in e.lower() for e in errors) >= 5, errors
        assert ex.blob_store.objects() == before
        assert R1FS(ex.blob_store).get(ctx, node) == t1.context
        # The finished jobs' inputs are unpinned: gc on the bus removes them and keeps the context.
        fs = R1FS(ex.blob_store)
        inputs = {e.cid for e in fs.ls() if e.name == "ckks-input"}
        assert len(inputs) == 2 and inputs <= set(fs.gc(min_age_s=0).removed)
        assert [e.cid for e in fs.ls()] == [ctx] and fs.get(ctx, node) == t1.context

        for proc in procs:
            proc.terminate()
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err[-500:]
            assert b"stopped after 2 tasks; R1FS: 3 fetched, 1 from cache" in err, err[-500:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if ex is not None:
            ex.close()
        admission.stop()
        server.stop()


def test_node_run_refuses_a_bad_bucket_name_in_one_line(tmp_path) -> None:
    key, coord = tmp_path / "k", tmp_path / "c.json"
    key.write_text("00" * 32)
    coord.write_text("{}")
    cmd = [sys.executable, "-m", "edil.app", "node", "run", "--key-file", str(key), "--coordinator", str(coord), "--nats", "nats://127.0.0.1:1"]
    r = subprocess.run([*cmd, "--r1fs-bucket", "a.b"], capture_output=True, timeout=120)
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and "--r1fs-bucket" in err and "\n" not in err and "Traceback" not in err, err
    r = subprocess.run([*cmd, "--r1fs-bucket", "a.b", "--no-r1fs"], capture_output=True, timeout=120)  # no store: the name is unused
    assert r.returncode == 2 and "bad coordinator keys" in r.stderr.decode(), r.stderr
