"""R1FS throughput: put/get of the same bytes through R1FS and through the raw NATS object store.

One ``nats-server -js`` on loopback (file storage in a temporary directory), one payload of
random bytes, timed side by side in the same run, alternating the systems each repetition:

* ``raw NATS object store``: nats-py's ``ObjectStore.put(name, data)`` and ``get(name)`` (its
  default 128 KiB NATS chunks). nats-py reads an object either into one growing byte string or,
  with ``writeinto``, into a file object; both are timed each round and the reference is the
  faster of the two medians;
* ``R1FS on NATS``: :class:`edil.runtime.R1FS` on :class:`edil.runtime.NatsBlobStore`, the
  default 1 MiB chunks, each encrypted (XChaCha20-Poly1305), hashed to its CID and stored as one
  object (8 in flight), one recipient wrap, a keccak Merkle root; ``get`` checks every CID and tag;
* ``R1FS on a directory``: :class:`edil.runtime.LocalBlobStore`, for reference.

Reported: median put and get time (with the interquartile range), MB/s (10^6 bytes per second)
and R1FS's throughput as a fraction of the raw object store's (target: >= 0.5 for both).

A second table: bytes the coordinator sends per CKKS task (a 4 x 4 batch, the test suite's
small model; two tasks on one node, :class:`edil.runtime.LocalExecutor`) with every input inline,
with the public context by CID, and with the context and the ciphertext batch by CID.

Run: ``python -m benchmarks.r1fs [--quick] [--mib N]``.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import nacl.public

from benchmarks._common import markdown_table, parser, summarize, timed, write
from edil import runtime as rt

TARGET = 0.5


class _Loop:
    """An event loop in a thread, so the raw client's calls can be timed like R1FS's synchronous ones."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=600)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(size: int, repeats: int) -> dict[str, Any]:
    """Time put and get of ``size`` random bytes on the three systems; rows for the table."""
    import nats

    data = os.urandom(size)
    me = nacl.public.PrivateKey.generate()
    times: dict[str, dict[str, list[float]]] = {k: {"put": [], "get": []} for k in ("raw", "r1fs_nats", "r1fs_local")}
    raw_into: list[float] = []
    with rt.NatsServer() as server, tempfile.TemporaryDirectory() as tmp:
        loop = _Loop()
        nc = loop.run(nats.connect(server.url))
        obs = loop.run(nc.jetstream(timeout=60).create_object_store("RAW"))
        nats_fs = rt.R1FS(rt.NatsBlobStore(server.url, bucket="BENCH"))
        local_fs = rt.R1FS(rt.LocalBlobStore(tmp))

        def raw_get_into() -> bytes:
            buf = io.BytesIO()
            loop.run(obs.get("payload", writeinto=buf))
            return buf.getvalue()

        def raw_get() -> bytes:
            return bytes(loop.run(obs.get("payload")).data)

        try:
            for i in range(repeats + 1):  # the first round warms up connections and buckets, untimed
                t_put, _ = _timed(lambda: loop.run(obs.put("payload", data)))
                t_get, got = _timed(raw_get)
                t_into, got_into = _timed(raw_get_into)
                assert got == data and got_into == data
                raw_into.append(t_into)
                rounds = {"raw": (t_put, t_get)}
                for key, fs in (("r1fs_nats", nats_fs), ("r1fs_local", local_fs)):
                    t_put, cid = _timed(lambda fs=fs: fs.put(data, [me.public_key]))
                    t_get, got = _timed(lambda fs=fs, cid=cid: fs.get(cid, me))
                    assert got == data
                    fs.unpin(cid)
                    fs.gc(min_age_s=0.0)  # each round stores afresh, like the raw store's replace
                    rounds[key] = (t_put, t_get)
                if i:
                    for key, (p, g) in rounds.items():
                        times[key]["put"].append(p)
                        times[key]["get"].append(g)
        finally:
            nats_fs.close()
            loop.run(nc.close())
            loop.stop()
    mb = size / 1e6
    raw_into = raw_into[1:]  # the warm-up round
    if summarize(raw_into)["median_s"] < summarize(times["raw"]["get"])["median_s"]:
        times["raw"]["get"] = raw_into
    rows, raw = [], {op: summarize(times["raw"][op]) for op in ("put", "get")}
    for key, label in (("raw", "raw NATS object store"), ("r1fs_nats", "R1FS on NATS"), ("r1fs_local", "R1FS on a directory")):
        t = {op: summarize(times[key][op]) for op in ("put", "get")}
        row: dict[str, Any] = {"system": label, "mib": size / (1 << 20), **timed("put_ms", t["put"]), **timed("get_ms", t["get"])}
        row["put_MBps"] = mb / t["put"]["median_s"]
        row["get_MBps"] = mb / t["get"]["median_s"]
        row["put_vs_raw"] = raw["put"]["median_s"] / t["put"]["median_s"]
        row["get_vs_raw"] = raw["get"]["median_s"] / t["get"]["median_s"]
        if key == "r1fs_nats":
            row["meets_target"] = row["put_vs_raw"] >= TARGET and row["get_vs_raw"] >= TARGET
        rows.append(row)
    return {"rows": rows, "target_fraction_of_raw": TARGET, "repeats": repeats, "bytes": size}


def task_bytes(tasks: int = 2) -> list[dict[str, Any]]:
    """Bytes sent per CKKS task (the sealed envelopes) inline, with the context by CID, and with the input too."""
    import shutil

    import numpy as np

    from edil import CKKS
    from edil.proofs import Eip712Domain
    from edil.runtime._blobs import INPUT_INLINE_LIMIT
    from tests.test_runtime_conformance import fresh_seed, small_model

    scheme = CKKS.for_model(small_model(4))
    rng = np.random.default_rng(0)
    batch = [rt.Task.for_scheme(scheme, small_model(4), scheme.encode(rng.normal(size=(4, 4)) * 0.5), model_public=True) for _ in range(tasks)]
    rows = []
    for label, blobs, input_limit in (("inline", False, 0), ("context by CID", True, 1 << 40), ("context and input by CID", True, INPUT_INLINE_LIMIT)):
        tmp = tempfile.mkdtemp(prefix="edil-bench-") if blobs else None
        ex = rt.LocalExecutor(blobs=tmp)
        try:
            registry = rt.StaticRegistry()
            sched = rt.Scheduler(ex, registry, rt.Journal(":memory:"), identity=rt.CoordinatorIdentity.generate(),
                                 domain=Eip712Domain("EDIL PoAI", "1", 1, "0x" + "11" * 20))
            if sched.blobs is not None:
                sched.blobs.input_limit = input_limit
            cfg = rt.NodeConfig(seed=fresh_seed(), capabilities=rt.Capabilities((), 1 << 30))
            registry.admit(rt.NodeIdentity.from_seed(cfg.seed).address)
            sched.launch(cfg)
            t0 = time.perf_counter()
            for t in batch:
                sched.submit(t)
            assert sched.run() == {"done": tasks}
            elapsed = time.perf_counter() - t0
            rows.append({
                "inputs": label, "tasks": tasks, "bytes_per_task": sched.stats["bytes_sent"] // tasks,
                "r1fs_files": 0 if sched.blobs is None else sched.blobs.puts, "s_per_task": elapsed / tasks,
            })
        finally:
            ex.close()
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=None, help="payload size in MiB (default 64, quick 16)")
    args = p.parse_args(argv)
    size = (args.mib or (16 if args.quick else 64)) << 20
    repeats = args.repeats or (3 if args.quick else 5)
    result = run(size, repeats)
    cols = ["system", "mib", "put_ms", "get_ms", "put_MBps", "get_MBps", "put_vs_raw", "get_vs_raw", "meets_target"]
    table = markdown_table(result["rows"], cols)
    result["task_bytes"] = task_bytes()
    table += "\n\n" + markdown_table(result["task_bytes"], ["inputs", "tasks", "bytes_per_task", "r1fs_files", "s_per_task"])
    print(table)
    print(f"wrote {write('r1fs', result, table)}")


if __name__ == "__main__":
    main()
