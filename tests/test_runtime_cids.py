"""HE tasks carry their public context (and large models) by R1FS CID instead of inline bytes.

The coordinator puts each large input into R1FS once, wrapped to the nodes that may run the
task; a node fetches each CID once into a bounded cache. Results and transcripts are those of
the same task sent inline; a tampered chunk fails the task on that node with a
VerificationError; a node that is not a recipient cannot read the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from edil import CKKS, AuthorizationError, VerificationError
from edil import runtime as rt
from edil.proofs import Eip712Domain
from edil.runtime._blobs import BlobCache, TaskBlobs
from edil.runtime._r1fs import R1FS, LocalBlobStore
from tests.test_runtime_conformance import fresh_seed, small_model

DOMAIN = Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "11" * 20)
TOL = 1e-3  # CKKS: approximate; compared with the plaintext model at this absolute tolerance


@pytest.fixture(scope="module")
def ckks() -> CKKS:
    return CKKS.for_model(small_model(4))


def _net(executor: rt.Executor) -> tuple[rt.Scheduler, Callable[[], rt.NodeCard]]:
    registry = rt.StaticRegistry()
    sched = rt.Scheduler(executor, registry, rt.Journal(":memory:"), identity=rt.CoordinatorIdentity.generate(), domain=DOMAIN, timeout_s=60.0)
    if sched.blobs is not None:
        sched.blobs.input_limit = 1 << 40  # contexts and models here; ciphertext inputs by CID: tests/test_blobs.py

    def launch() -> rt.NodeCard:
        cfg = rt.NodeConfig(seed=fresh_seed(), capabilities=rt.Capabilities((), 1 << 30))
        registry.admit(rt.NodeIdentity.from_seed(cfg.seed).address)
        return sched.launch(cfg)

    return sched, launch


def _task(ckks: CKKS, seed: int = 5) -> tuple[rt.Task, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(4, 4)) * 0.5
    return rt.Task.for_scheme(ckks, small_model(4), ckks.encode(x), model_public=True), x


def _decode(ckks: CKKS, sched: rt.Scheduler, job: bytes) -> np.ndarray:
    return np.asarray(ckks.decode(ckks.deserialize(sched.result(job))))


def _tamper_chunks(store: LocalBlobStore, cid: str) -> None:
    """Flip one bit of every chunk of file ``cid`` in the store."""
    for chunk in R1FS(store).manifest(cid).chunks:
        (data,) = store.get_many([chunk])
        assert data is not None
        store.put_many([(chunk, bytes([data[0] ^ 1]) + data[1:])])


def test_ckks_task_by_cid_gives_the_inline_result_and_sends_far_fewer_bytes(tmp_path, ckks) -> None:
    task, x = _task(ckks)
    assert len(task.context) > 1 << 20  # the public context is what this is about
    outputs, sent = [], []
    for blobs in (None, tmp_path / "r1fs"):
        ex = rt.LocalExecutor(blobs=blobs)
        try:
            sched, launch = _net(ex)
            card = launch()
            if blobs is not None:
                assert sched.blobs is not None
                sched.blobs.inline_limit = 0  # the (small) model goes by CID too
            job = sched.submit(task)
            assert sched.run() == {"done": 1}
            outputs.append(sched.result(job))
            sent.append(sched.stats["bytes_sent"])
            np.testing.assert_allclose(_decode(ckks, sched, job), small_model(4).forward(x), atol=TOL)
            assert sched.status(job).status == "done"
            node = ex.node(card.address)
            if blobs is not None:
                assert node.blobs is not None and node.blobs.fetches == 2  # the context and the model
                assert sched.blobs is not None and sched.blobs.puts == 2
                assert {e.name for e in R1FS(ex.blob_store).ls()} == {"ckks-context", "model"}
                rec = sched.journal.job(job)
                assert rec is not None and rt.Task.from_bytes(rec.spec) == task  # the journal keeps the inputs inline for replay
        finally:
            ex.close()
    # CKKS evaluation is deterministic: the same bytes whichever way the inputs travelled.
    assert outputs[0] == outputs[1]
    assert sent[1] < sent[0] - len(task.context) + (64 << 10)


def test_a_second_task_with_the_same_context_is_not_fetched_again(tmp_path, ckks) -> None:
    ex = rt.LocalExecutor(blobs=tmp_path)
    try:
        sched, launch = _net(ex)
        card = launch()
        (t1, x1), (t2, x2) = _task(ckks, 1), _task(ckks, 2)
        j1, j2 = sched.submit(t1), sched.submit(t2)
        assert sched.run() == {"done": 2}
        for j, x in ((j1, x1), (j2, x2)):
            np.testing.assert_allclose(_decode(ckks, sched, j), small_model(4).forward(x), atol=TOL)
        node = ex.node(card.address)
        assert node.blobs is not None and (node.blobs.fetches, node.blobs.hits) == (1, 1)  # the model is small: inline
        assert sched.blobs is not None and sched.blobs.puts == 1
    finally:
        ex.close()


def test_a_tampered_chunk_fails_the_task_on_that_node_and_it_runs_where_the_context_is_cached(tmp_path, ckks) -> None:
    ex = rt.LocalExecutor(blobs=tmp_path)
    try:
        sched, launch = _net(ex)
        a, b = launch(), launch()
        assert sched.blobs is not None
        task, x = _task(ckks)
        # The coordinator's put for this task, wrapped to both nodes (as its first dispatch does).
        cid = sched.blobs.wire(task, a.box_key, [a.box_key, b.box_key])["context_cid"]
        first = sched.submit(dataclasses.replace(task, node=a.address))  # a fetches and caches it
        assert sched.run() == {"done": 1}
        _tamper_chunks(ex.blob_store, cid)
        pinned_b = sched.submit(dataclasses.replace(task, node=b.address))
        assert sched.run() == {"done": 1, "failed": 1}  # the journal's counts
        rec = sched.status(pinned_b)
        assert "VerificationError" in (rec.error or "") and "does not match its CID" in (rec.error or "")
        node_b = ex.node(b.address)
        assert node_b.task_errors == 1
        anywhere = sched.submit(task)
        assert sched.run() == {"done": 2, "failed": 1}  # on a (cached), possibly after b refused it again
        np.testing.assert_allclose(_decode(ckks, sched, anywhere), small_model(4).forward(x), atol=TOL)
        assert sched.result(anywhere) == sched.result(first)
        assert sched.blobs.puts == 1 and ex.node(a.address).blobs.fetches == 1  # type: ignore[union-attr]
        with pytest.raises(VerificationError):
            BlobCache(ex.blob_store).get(cid, node_b.identity)
    finally:
        ex.close()


def test_a_task_whose_stored_context_is_tampered_everywhere_fails_cleanly(tmp_path, ckks) -> None:
    ex = rt.LocalExecutor(blobs=tmp_path)
    try:
        sched, launch = _net(ex)
        a, b = launch(), launch()
        assert sched.blobs is not None
        task, _ = _task(ckks)
        cid = sched.blobs.wire(task, a.box_key, [a.box_key, b.box_key])["context_cid"]
        _tamper_chunks(ex.blob_store, cid)
        job = sched.submit(task)
        assert sched.run() == {"failed": 1}
        err = sched.status(job).error or ""
        assert "deterministically" in err and "VerificationError" in err
        assert sched.stats["deterministic_failures"] == 1 and not sched._suspended  # the task is at fault, not the nodes
    finally:
        ex.close()


def test_a_node_that_is_not_a_recipient_cannot_read_the_context(tmp_path, ckks) -> None:
    ex = rt.LocalExecutor(blobs=tmp_path)
    try:
        sched, launch = _net(ex)
        a = launch()
        task, x = _task(ckks)
        assert sched.blobs is not None
        cid = sched.blobs.wire(task, a.box_key, [a.box_key])["context_cid"]
        late = launch()  # admitted after the put: not a recipient of that file
        node = ex.node(late.address)
        with pytest.raises(AuthorizationError, match="not a recipient"):
            BlobCache(ex.blob_store).get(cid, node.identity)
        # Dispatching to it stores the context again, wrapped to every node admitted now.
        job = sched.submit(dataclasses.replace(task, node=late.address))
        assert sched.run() == {"done": 1}
        np.testing.assert_allclose(_decode(ckks, sched, job), small_model(4).forward(x), atol=TOL)
        assert sched.blobs.puts == 2
    finally:
        ex.close()


def test_inline_limit_and_strict_cids_on_the_wire(tmp_path, ckks) -> None:
    from edil import SerializationError

    task, _ = _task(ckks)
    me = rt.NodeIdentity.from_seed(fresh_seed())
    blobs = TaskBlobs(LocalBlobStore(tmp_path), inline_limit=len(task.context), input_limit=len(task.input))
    assert blobs.wire(task, me.card().box_key, [me.card().box_key]) == task.to_wire()  # at the limit: inline
    blobs.inline_limit = 1 << 16
    wire = blobs.wire(task, me.card().box_key, [me.card().box_key])
    assert wire["context"] == b"" and wire["model"] == task.model and "model_cid" not in wire
    back = BlobCache(LocalBlobStore(tmp_path)).resolve(rt.Task.from_wire(wire), me)
    assert back == task
    for bad in ("bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq", "B" * 61, "../" + "a" * 58, 7):
        with pytest.raises(SerializationError):
            rt.Task.from_wire({**wire, "context_cid": bad})


def test_ckks_tasks_by_cid_through_nats(ckks) -> None:
    with rt.NatsServer() as server:
        ex = rt.NatsExecutor(server.url, blobs=True)
        try:
            sched, launch = _net(ex)
            launch()
            launch()
            (t1, x1), (t2, x2) = _task(ckks, 1), _task(ckks, 2)
            j1, j2 = sched.submit(t1, redundancy=2), sched.submit(t2)
            assert sched.run(timeout_s=180) == {"done": 2}
            for j, x in ((j1, x1), (j2, x2)):
                np.testing.assert_allclose(_decode(ckks, sched, j), small_model(4).forward(x), atol=TOL)
            assert sched.blobs is not None and sched.blobs.puts == 1
            # Three envelopes (job 1 twice), each with its ciphertexts and no context.
            assert sched.stats["bytes_sent"] < 3 * (64 << 10) + 2 * len(t1.input) + len(t2.input)
            assert [e.name for e in R1FS(ex.blob_store).ls()] == ["ckks-context"]
        finally:
            ex.close()


def _retrying(fn, timeout_s: float = 60.0):  # noqa: ANN001, ANN202
    """``fn()`` until it succeeds (a JetStream cluster elects its leaders in a few seconds)."""
    import time

    from edil import EdilError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except EdilError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _jetstream_ready(url: str, streams: tuple[str, ...] = (), dead: str = "", timeout_s: float = 60.0) -> None:
    """Wait until the cluster has elected its JetStream meta leader (the server answers account
    info) and each of ``streams`` a leader other than the server named ``dead``."""
    import asyncio
    import time

    import nats

    async def probe() -> bool:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            js = nc.jetstream(timeout=1.0)
            await js.account_info()
            for name in streams:
                leader = (await js.stream_info(name)).cluster.leader  # type: ignore[union-attr]
                if leader in (None, "", dead):
                    return False
            return True
        except Exception:  # noqa: BLE001 - not elected yet
            return False
        finally:
            await nc.close()

    deadline = time.monotonic() + timeout_s
    while not asyncio.run(probe()):
        assert time.monotonic() < deadline, "the JetStream cluster did not form"
        time.sleep(0.25)


def test_one_of_three_clustered_nats_servers_dies_and_no_object_is_lost(tmp_path) -> None:
    import os

    from edil.runtime._nats import _free_port
    from edil.runtime._r1fs import NatsBlobStore

    ports, routes = [_free_port() for _ in range(3)], [_free_port() for _ in range(3)]
    servers = [
        rt.NatsServer(
            port=ports[i], store_dir=str(tmp_path / f"s{i}"),
            extra_config=(
                f"server_name: edil-{i}\ncluster {{ name: edil, listen: 127.0.0.1:{routes[i]}, "
                f"routes: [{', '.join(f'nats-route://127.0.0.1:{r}' for j, r in enumerate(routes) if j != i)}] }}"
            ),
        )
        for i in range(3)
    ]
    for i, s in enumerate(servers):
        os.makedirs(tmp_path / f"s{i}")
        s.start()
    try:
        _jetstream_ready(servers[0].url)
        me = rt.NodeIdentity.from_seed(fresh_seed())
        files = [os.urandom(n) for n in (10, 5000, 3 * 4096 + 7)]
        store = _retrying(lambda: NatsBlobStore(servers[0].url, replicas=3, timeout_s=20.0))
        try:
            fs = R1FS(store, chunk_size=4096)
            cids = [_retrying(lambda d=d: fs.put(d, [me.card().box_key])) for d in files]
        finally:
            store.close()
        servers[1].kill()  # one of three dies, whichever leaders it held
        _jetstream_ready(servers[2].url, ("OBJ_EDIL_R1FS", "KV_EDIL_R1FS_PINS"), dead="edil-1")
        survivor = _retrying(lambda: NatsBlobStore(servers[2].url, replicas=3, timeout_s=20.0))
        try:
            back = R1FS(survivor)
            assert [_retrying(lambda c=c: back.get(c, me)) for c in cids] == files
            assert {e.cid for e in _retrying(back.ls)} == set(cids)
        finally:
            survivor.close()
    finally:
        for s in servers:
            s.stop()
