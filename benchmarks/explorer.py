"""The network explorer's first render with 300 nodes and 1,000 epochs of history (target: <= 1 s).

The data is seeded straight into the explorer's sources, as their readers hold it, because
mining 300,000 epoch roots on a development chain would take hours:

* the chain: a real deployment on the in-process EVM whose :class:`ChainReader` index receives
  the decoded events of 300 admitted, licensed and staked nodes over 1,000 epochs (a root, an
  audit verdict with its work units and an availability claim per node and epoch, one node in
  fifty failing an audit and slashed for it, an escrowed job per epoch settled for every node,
  an availability pool per epoch paid to every node, and each epoch's gas): about 1.5 million
  events, applied through :meth:`ChainIndex.apply` as the reader applies the chain's;
* the journal: a SQLite journal with 2,000 jobs (done, failed, pending, disputed);
* presence: every node's card and a heartbeat monitor that heard 200 of them lately.

Timed: a fresh explorer app (templates compiled on first use) and its first ``GET /`` through
the ASGI stack (the snapshot of every source, the Jinja2 render of the nodes table, the heat map
of the last 32 epochs, the epochs table and chart, jobs and payments), then ``GET /api/network``
(the same data as JSON), a node's page (its 1,000 epochs, the latest 500 listed) and an epoch's
page (its 300 nodes). Reported: medians (with the interquartile range) and the page sizes.

Run: ``python -m benchmarks.explorer [--quick] [--nodes N] [--epochs E]``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import markdown_table, measure, parser, timed, write

TARGET_S = 1.0
EPOCH_S = 600
HEARTBEAT_MS = 60_000


def seed(nodes: int, epochs: int, folder: Path) -> tuple[Any, dict[str, Any]]:
    """An explorer over ``nodes`` nodes and ``epochs`` epochs of history; returns it and seeding figures."""
    from edil.app._explorer import ChainReader, Explorer
    from edil.proofs import Chain, keccak256
    from edil.runtime import Capabilities, HeartbeatMonitor, Journal, NodeIdentity, StaticRegistry, make_heartbeat

    t0 = time.perf_counter()
    chain = Chain.in_process()
    dep = chain.deploy(epoch_length=EPOCH_S)
    reader = ChainReader(dep)
    reader.refresh()  # the deployment's own events
    idx = reader.index
    idents = [NodeIdentity.from_seed(keccak256(b"bench-explorer-node-%d" % i)) for i in range(nodes)]
    addrs = [i.address for i in idents]
    operator, client = "0x" + "11" * 20, "0x" + "22" * 20
    block = reader.next_block
    events = 0

    def ev(name: str, **args: Any) -> None:
        nonlocal events
        idx.apply(name, args, block, events, None)
        events += 1

    for o in range(3):
        ev("OracleAdmitted", oracle="0x" + f"{o + 0xA0:02x}" * 20)
    ev("QuorumSet", quorum=2, oracleCount=3)
    ev("LicensingSet", licence="0x" + "33" * 20, required=True)
    for k, a in enumerate(addrs):
        if k % 8 == 0:
            ev("LicenceMinted", licenceId=k // 8 + 1, operator=operator, attestor=operator, kycHash=b"\x00" * 32)
        ev("NodeAdmitted", node=a)
        ev("NodeBound", licenceId=k // 8 + 1, node=a, bound=True)
        ev("NodeLicensed", node=a, licensed=True)
        ev("Staked", node=a, operator=operator, amount=100 * 10**18)
    for e in range(epochs):
        block += 1
        job = keccak256(b"bench-explorer-job-%d" % e)
        ev("JobCreated", jobId=job, client=client, epoch=e, amount=300 * 10**18, totalPlanned=nodes * 1000)
        ev("PoolFunded", epoch=e, sponsor=client, amount=30 * 10**18)
        for k, a in enumerate(addrs):
            passed = (k + e) % 50 != 0
            ev("EpochRootPosted", node=a, epoch=e, root=keccak256(b"%d/%d" % (k, e)))
            ev("AuditRecorded", node=a, epoch=e, passed=passed, taskCount=4 if passed else 0, workUnits=1000 + k if passed else 0,
               reportHash=b"\x42" * 32)
            ev("AvailabilityClaimed", node=a, epochs=[e], availabilities=[255 - (k * 7 + e) % 64], added=0)
            if not passed:
                ev("Slashed", node=a, epoch=e, amount=10**18, treasury=client)
            ev("SlotSettled", jobId=job, node=a, units=1000 if passed else 0, paid=10**18 if passed else 0,
               returned=0 if passed else 10**18)
            ev("RewardPaid", node=a, epoch=e, paid=10**17, returned=0)
        idx.epoch(e).gas += 21_000 * 3 * nodes
    reader.next_block = max(reader.next_block, chain.block_number() + 1)
    seeded_chain = time.perf_counter() - t0

    t0 = time.perf_counter()
    journal = Journal(folder / "jobs.sqlite")
    ids = [keccak256(b"bench-explorer-journal-%d" % i) for i in range(2000)]
    journal.add_many([(j, "task", b"spec", 1) for j in ids])
    for i, j in enumerate(ids):
        if i % 4 == 0:
            journal.fail(j, "every eligible node failed")
        elif i % 4 != 3:
            journal.complete(j, output=b"out", output_commitment=b"\x07" * 32, nodes=addrs[i % nodes: i % nodes + 2],
                             epoch=epochs - 1, transcripts=[])
    for j in ids[1:200:20]:
        journal.dispute(j, "a node of it failed its audit")
    now_s = dep.genesis_time + epochs * EPOCH_S + 90
    monitor = HeartbeatMonitor(StaticRegistry(addrs), epoch_ms=EPOCH_S * 1000, interval_ms=HEARTBEAT_MS,
                               genesis_ms=dep.genesis_time * 1000)
    cards = [ident.card(Capabilities(("gpu",) if k % 3 == 0 else (), 16 << 30)) for k, ident in enumerate(idents)]
    for card in cards:
        monitor.add_card(card)
    for ident in idents[:200]:
        t = now_s * 1000 - 60_000  # in the last closed slot: "online" counts closed slots
        monitor.receive(make_heartbeat(ident, seq=1, now_ms=t), now_ms=t)
    seeded_rest = time.perf_counter() - t0
    explorer = Explorer(reader=reader, journal=journal, cards=cards, monitors=[monitor], clock=lambda: now_s, refresh_s=0)
    return explorer, {"events": events, "seed_chain_s": seeded_chain, "seed_journal_presence_s": seeded_rest, "addresses": addrs}


def run(nodes: int, epochs: int, repeats: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from edil.app._explorer import explorer_app

    with tempfile.TemporaryDirectory(prefix="edil-bench-explorer-") as tmp:
        explorer, info = seed(nodes, epochs, Path(tmp))
        addrs = info.pop("addresses")
        sizes: dict[str, int] = {}

        def first(path: str) -> None:
            client = TestClient(explorer_app(explorer))  # a fresh app: templates compiled on first use
            r = client.get(path)
            if r.status_code != 200:
                raise RuntimeError(f"GET {path}: {r.status_code}")
            sizes[path] = len(r.content)

        rows = []
        for label, path in (("first render /", "/"), ("JSON /api/network", "/api/network"),
                            ("node page (1,000 epochs)", f"/node/{addrs[7]}"), ("epoch page (300 nodes)", f"/epoch/{epochs - 1}")):
            t = measure(lambda: first(path), repeats=repeats, warmup=1)
            rows.append({"view": label, "nodes": nodes, "epochs": epochs, **timed("ms", t), "kib": round(sizes[path] / 1024),
                         "meets_target": t["median_s"] <= TARGET_S if path == "/" else ""})
        snap = explorer.snapshot()
        assert len(snap["nodes"]) == nodes and snap["summary"]["epochs"] == epochs
        return {"rows": rows, "seeding": info, "target_s": TARGET_S,
                "met": rows[0]["ms"] / 1e3 <= TARGET_S, "online": snap["summary"]["online"]}


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=300, help="nodes (default 300)")
    p.add_argument("--epochs", type=int, default=1000, help="epochs of history (default 1000)")
    args = p.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    result = run(args.nodes, args.epochs, repeats)
    table = markdown_table(result["rows"], ["view", "nodes", "epochs", "ms", "kib", "meets_target"])
    print(table)
    print(f"seeded {result['seeding']['events']:,} chain events in {result['seeding']['seed_chain_s']:.1f} s")
    print(f"wrote {write('explorer', result, table)}")


if __name__ == "__main__":
    main()
