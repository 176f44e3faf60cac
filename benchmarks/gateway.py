"""Gateway latency and failover: a CKKS logistic-regression service over HTTP, side by side with the library call.

One process: four in-process nodes (LocalExecutor, models in R1FS on a directory), the
scheduler with a SQLite journal, Deeploy's reconciler placing a 3-replica CKKS service (logistic
regression on breast cancer, 30 features, default CKKS parameters) and the gateway on a loopback
uvicorn server. Measured in the same run:

* ``library call``: ``decode(model(encode(x)))`` with the same CKKS parameters in this process
  (encrypt, evaluate, decrypt), the target's reference;
* ``runtime alone``: the same request as a pinned :class:`~edil.runtime.Task` through the
  scheduler in this process (encrypt, journal, sealed dispatch, node, transcript, decrypt), no
  HTTP and no gateway: what the runtime costs by itself;
* ``gateway, 1 client``: ``edil.client`` ``predict`` one request at a time (encrypt, serialize,
  HTTP, journal, sealed dispatch to a node, evaluation, transcript, reply, decrypt), after one
  untimed request per replica (each replica's node builds the client's context once, as a
  long-lived service has);
* ``gateway, N clients``: N threads, each with its own client and keys, R requests each;
* ``gateway, N clients, replica killed``: the same, with the node of one replica killed
  (``LocalExecutor.kill``) after N requests were answered; requests on it move to the next
  replica, and after N more answers the reconciler re-places the replica on the spare node.

Reported per row: p50 and p99 latency (ms), requests per second, lost requests (an exception)
and wrong ones (outside ``TOL`` of the plaintext model), p50 over the library call's median
(target <= 3 for one client) and, for the kill, the slowest request that moved replica.

Also in the run, Deeploy placement on its own (:func:`placement`): the reconciler's time for 20
services of 3 replicas on 300 node cards (first placement, nothing to do, a tenth of the nodes gone).

Run: ``python -m benchmarks.gateway [--quick] [--clients N] [--requests R] [--batch B]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
import threading
import time
from typing import Any

import numpy as np

import edil.client
from benchmarks._common import markdown_table, parser, summarize, timed, write
from edil import CKKS, encode_model
from edil import runtime as rt
from edil.app import breast_cancer_logreg
from edil.app._gateway import Gateway, GatewayServer, create_app
from edil.proofs import Eip712Domain

TARGET = 3.0  # gateway p50 (one client) <= TARGET x the library call's median
TOL = 1e-2  # absolute tolerance on the logits against the plaintext model (CKKS is approximate)
DOMAIN = Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "11" * 20)
OWNER_KEY = hashlib.sha256(b"benchmark-gateway-owner").digest()


class _Net:
    def __init__(self, tmp: str, model: Any, nodes: int = 4, replicas: int = 3) -> None:
        from eth_account import Account

        self.ex = rt.LocalExecutor(blobs=f"{tmp}/r1fs")
        self.registry = rt.StaticRegistry()
        coord = rt.CoordinatorIdentity.generate()
        self.sched = rt.Scheduler(self.ex, self.registry, rt.Journal(f"{tmp}/jobs.sqlite"), identity=coord, domain=DOMAIN,
                                  timeout_s=30.0, backoff_s=0.05)
        self.cards = []
        for i in range(nodes):
            seed = hashlib.sha256(b"benchmark-gateway-node-%d" % i).digest()
            self.registry.admit(rt.NodeIdentity.from_seed(seed).address)
            self.cards.append(self.sched.launch(rt.NodeConfig(seed=seed, capabilities=rt.Capabilities((), 1 << 30))))
        cid = rt.R1FS(self.ex.blob_store).put(rt.model_to_bytes(model), [coord.box_key], name="breast-cancer-lr")
        self.reconciler = rt.Reconciler(self.sched.journal, self.registry, chain_id=DOMAIN.chain_id)
        spec = rt.ServiceSpec(name="breast-cancer-lr", model_cid=cid, scheme="ckks", owner=Account.from_key(OWNER_KEY).address,
                              replicas=replicas)
        self.sid = self.reconciler.deploy(rt.SignedServiceSpec.sign(spec, OWNER_KEY, chain_id=DOMAIN.chain_id))
        self.dead: set[str] = set()
        self.reconcile()
        self.gw = Gateway(self.sched, self.reconciler, request_timeout_s=120.0, attempt_timeout_s=60.0)
        self.server = GatewayServer(create_app(self.gw)).start()

    def reconcile(self) -> None:
        self.reconciler.reconcile(nodes=[c for c in self.cards if c.address.lower() not in self.dead])

    def kill(self, replica: str) -> None:
        node = next(c.address for c in self.cards if c.address.lower() == replica.lower())
        self.ex.kill(node)
        self.dead.add(replica.lower())

    def replicas(self) -> tuple[str, ...]:
        state = self.reconciler.get(self.sid)
        assert state is not None
        return tuple(state.replicas)

    def close(self) -> None:
        self.server.stop()
        self.ex.close()


def _load(net: _Net, x: np.ndarray, ref: np.ndarray, clients: int, requests: int, batch: int, *, kill: bool) -> dict[str, Any]:
    """``clients`` threads x ``requests`` predicts; with ``kill``, one replica's node dies after ``clients`` requests."""
    lat: list[float] = []
    moved: list[float] = []
    lost: list[str] = []
    wrong = 0
    lock = threading.Lock()
    answered = threading.Semaphore(0)
    victim = net.replicas()[0] if kill else ""

    def one(k: int) -> None:
        nonlocal wrong
        rng = np.random.default_rng(k)
        with edil.client.connect(net.server.url) as c:
            c.scheme(net.sid)  # keys made before the clock starts, as a long-lived client has them
            for _ in range(requests):
                idx = rng.choice(len(x), size=batch, replace=False)
                t0 = time.perf_counter()
                try:
                    y = c.predict(net.sid, x[idx])
                except Exception as exc:  # noqa: BLE001 - a lost request, counted
                    with lock:
                        lost.append(f"{type(exc).__name__}: {exc}")
                    continue
                finally:
                    answered.release()
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    wrong += int(not np.allclose(y, ref[idx], atol=TOL))
                    if c.last["attempts"] > 1:
                        moved.append(dt)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    if kill:
        for _ in range(clients):
            answered.acquire(timeout=600)
        net.kill(victim)  # requests placed on it now move to the next replica
        for _ in range(clients):
            answered.acquire(timeout=600)
        net.reconcile()  # then the reconciler re-places the dead node's replica on the spare node
    for t in threads:
        t.join(timeout=1800)
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000 if lat else np.array([np.nan])
    return {
        "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "req_per_s": len(lat) / wall,
        "requests": clients * requests, "lost": len(lost), "wrong": wrong, "moved": len(moved),
        "failover_max_ms": float(max(moved) * 1000) if moved else None, "errors": lost[:5],
        "replicas_after": list(net.replicas()), "killed": victim or None,
    }


def run(clients: int, requests: int, batch: int, repeats: int) -> dict[str, Any]:
    x, _, _, model = breast_cancer_logreg()
    ref = np.asarray(model.forward(x))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        net = _Net(tmp, model)
        try:
            with edil.client.connect(net.server.url) as c:
                s = c.scheme(net.sid)  # the client's keys, from the service's public parameters
                assert isinstance(s, CKKS)
                enc = encode_model(model, s)
                rng = np.random.default_rng(0)
                lib, direct, gw = [], [], []
                pin = next(c.address for c in net.cards if c.address.lower() == net.replicas()[0])
                for _ in net.replicas()[1:]:  # requests go round-robin: each replica's node builds the client's context once
                    c.predict(net.sid, x[:batch])
                for i in range(repeats + 1):  # alternate the three each repetition; the first is a warm-up
                    xb = x[rng.choice(len(x), size=batch, replace=False)]
                    t0 = time.perf_counter()
                    y_lib = s.decode(enc(s.encode(xb)))
                    t1 = time.perf_counter()
                    # the same request through the runtime alone (no HTTP, no gateway): the gateway is idle
                    # between its requests, so this thread may drive the scheduler here
                    task = dataclasses.replace(rt.Task.for_scheme(s, model, s.encode(xb), model_public=True), node=pin)
                    job = net.sched.submit(task)
                    net.sched.run()
                    y_direct = s.decode(s.deserialize(net.sched.result(job)))
                    t2 = time.perf_counter()
                    y_gw = c.predict(net.sid, xb)
                    t3 = time.perf_counter()
                    assert np.allclose(y_lib, y_gw, atol=TOL) and np.allclose(y_lib, y_direct, atol=TOL)
                    if i:
                        lib.append(t1 - t0)
                        direct.append(t2 - t1)
                        gw.append(t3 - t2)
            lib_s = summarize(lib)["median_s"]
            lib_ms, gw_ms = np.array(lib) * 1000, np.array(gw) * 1000
            rows.append({"system": "library call (encrypt, evaluate, decrypt)", "clients": 1, "requests": repeats,
                         "p50_ms": float(np.percentile(lib_ms, 50)), "p99_ms": float(np.percentile(lib_ms, 99)),
                         "req_per_s": 1 / lib_s, "lost": 0, "wrong": 0, "vs_library": 1.0})
            direct_ms = np.array(direct) * 1000
            rows.append({"system": "runtime alone (Task, Scheduler; no HTTP)", "clients": 1, "requests": repeats,
                         "p50_ms": float(np.percentile(direct_ms, 50)), "p99_ms": float(np.percentile(direct_ms, 99)),
                         "req_per_s": 1 / summarize(direct)["median_s"], "lost": 0, "wrong": 0,
                         "vs_library": float(np.percentile(direct_ms, 50)) / (lib_s * 1000)})
            p50 = float(np.percentile(gw_ms, 50))
            single: dict[str, Any] = {
                "system": "gateway, 1 client", "clients": 1, "requests": repeats, "p50_ms": p50, "p99_ms": float(np.percentile(gw_ms, 99)),
                "req_per_s": 1 / summarize(gw)["median_s"], "lost": 0, "wrong": 0, "vs_library": p50 / (lib_s * 1000),
            }
            single["meets_target"] = single["vs_library"] <= TARGET
            rows.append(single)
            for kill in (False, True):
                r = _load(net, x, ref, clients, requests, batch, kill=kill)
                label = f"gateway, {clients} clients" + (", replica killed" if kill else "")
                row = {"system": label, "clients": clients, **r, "vs_library": r["p50_ms"] / (lib_s * 1000)}
                if kill:
                    row["meets_target"] = r["lost"] == 0 and r["wrong"] == 0
                rows.append(row)
        finally:
            net.close()
    return {"rows": rows, "target_p50_vs_library": TARGET, "tolerance": TOL, "batch": batch, "replicas": 3, "nodes": 4}


def placement(nodes: int = 300, services: int = 20, replicas: int = 3, repeats: int = 5) -> dict[str, Any]:
    """Deeploy's reconcile time: ``services`` signed services of ``replicas`` replicas on ``nodes`` node cards.

    Timed per repetition, on a fresh SQLite journal: the first placement (every replica placed),
    a reconcile with nothing to do, and the reconcile after a tenth of the nodes left (their
    replicas re-placed). A quarter of the services need a GPU (a quarter of the nodes have one).
    Spec signing, card making and the journal's creation are outside the clock.
    """
    from eth_account import Account

    owner = Account.from_key(OWNER_KEY).address
    cards = [rt.NodeIdentity.from_seed(hashlib.sha256(b"benchmark-placement-node-%d" % i).digest()).card(
        rt.Capabilities(("gpu",) if i % 4 == 0 else (), (8 + 8 * (i % 3)) << 30)) for i in range(nodes)]
    registry = rt.StaticRegistry(c.address for c in cards)
    coord = rt.CoordinatorIdentity.generate()
    steps = ("first placement", "nothing to do", "a tenth of the nodes gone")
    times: dict[str, list[float]] = {s: [] for s in steps}
    changes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cid = rt.R1FS(rt.LocalBlobStore(f"{tmp}/r1fs")).put(b"placement benchmark model", [coord.box_key], name="m")
        signed = [rt.SignedServiceSpec.sign(rt.ServiceSpec(
            name=f"service-{s}", model_cid=cid, scheme="ckks", owner=owner, replicas=replicas,
            resources=rt.Resources(needs_gpu=s % 4 == 0, min_memory_mb=12 << 10 if s % 4 == 1 else 0)), OWNER_KEY,
            chain_id=DOMAIN.chain_id) for s in range(services)]
        survivors = [c for i, c in enumerate(cards) if i % 10 != 3]
        for k in range(repeats + 1):  # the first is a warm-up
            rec = rt.Reconciler(rt.Journal(f"{tmp}/placement-{k}.sqlite"), registry, chain_id=DOMAIN.chain_id)
            for s in signed:
                rec.deploy(s)
            for step, live in zip(steps, (cards, cards, survivors), strict=True):
                t0 = time.perf_counter()
                moved = rec.reconcile(nodes=live)
                dt = time.perf_counter() - t0
                changes[step] = len(moved)
                if k:
                    times[step].append(dt)
            placed = [set(st.replicas) for st in rec.list()]
            assert all(len(p) == replicas for p in placed), "a service is not whole after re-placement"
    rows = [{"step": s, "nodes": nodes if s != steps[2] else len(survivors), "services": services, "replicas": replicas,
             "changes": changes[s], **timed("ms", summarize(times[s]))} for s in steps]
    return {"rows": rows, "repeats": repeats}


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    p.add_argument("--requests", type=int, default=None, help="requests per client (default 10, quick 4)")
    p.add_argument("--batch", type=int, default=32, help="samples per request (default 32)")
    args = p.parse_args(argv)
    requests = args.requests or (4 if args.quick else 10)
    repeats = args.repeats or (3 if args.quick else 7)
    result = run(args.clients, requests, args.batch, repeats)
    result["placement"] = placement(repeats=repeats)
    cols = ["system", "clients", "requests", "p50_ms", "p99_ms", "req_per_s", "lost", "wrong", "vs_library", "failover_max_ms", "meets_target"]
    table = markdown_table(result["rows"], cols, spread=False)
    table += "\nDeeploy placement (same run):\n\n" + markdown_table(
        result["placement"]["rows"], ["step", "nodes", "services", "replicas", "changes", "ms"])
    print(table)
    print(f"wrote {write('gateway', result, table)}")


if __name__ == "__main__":
    main()
