"""The network explorer (edil.app._explorer): its readers and its pages against a real chain and journal.

A small network is seeded on the in-process EVM (py-evm) with the real contracts: four nodes under
two operator licences, two oracles, an escrowed job, stakes and an availability reward pool.
Epoch 10: nodes 0, 1 and 3 pass their audits, node 2 fails its audit and is slashed (its escrow
share goes back to the client); availability is claimed and the pool paid. Epoch 11: nodes 0 and
1 pass again. Then node 3 is revoked. A journal holds jobs (done, failed, disputed, pending) whose
specs and outputs carry marker bytes, and a heartbeat monitor has heard nodes 0 and 1 lately.
Every figure the explorer shows is compared with what the chain answers to view calls, with the
gas of the scenario's own receipts, or with the balances the scenario measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edil.app._explorer import ChainReader, Explorer, HeartbeatLog, explorer_app, explorer_router, histogram_quantile
from edil.proofs import (
    AuditAttestation,
    Chain,
    Deployment,
    KycAttestation,
    keccak256,
    sign_audit,
    sign_availability,
    sign_kyc_attestation,
)
from edil.runtime import Capabilities, ChainRegistry, HeartbeatMonitor, Journal, NodeIdentity, make_heartbeat
from tests._chain_fixtures import make_key

EPOCH = 600
TOKEN = 10**18
STAKE, DEPOSIT, POOL = 100 * TOKEN, 300 * TOKEN, 30 * TOKEN
E1, E2 = 10, 11
#: Node 1 advertises a capability that is markup: the page must show it as text.
EVIL = "<script>alert(1)</script>"
SECRET = b"EDIL-SECRET-SPEC-MARKER"
OUTPUT = b"EDIL-SECRET-OUTPUT-MARKER"
HEARTBEAT_MS = 60_000


@dataclass
class Network:
    chain: Chain
    dep: Deployment
    idents: list[NodeIdentity]
    accts: list[LocalAccount]
    journal: Journal
    monitor: HeartbeatMonitor
    now_s: int
    gas: dict[int, int] = field(default_factory=dict)  # epoch -> gas of the txs that touched it
    paid: dict[str, int] = field(default_factory=dict)  # escrow payout per node (balance change)
    rewards: dict[str, int] = field(default_factory=dict)  # availability reward per node (balance change)
    job_ids: dict[str, bytes] = field(default_factory=dict)
    reader: ChainReader | None = None  # shared: the in-process EVM answers eth_getLogs slowly, so the chain is read once

    @property
    def addresses(self) -> list[str]:
        return [a.address for a in self.accts]

    def explorer(self, **kw: Any) -> Explorer:
        if self.reader is None:
            self.reader = ChainReader(self.dep)
        return Explorer(reader=self.reader, journal=self.journal, cards=[i.card(c) for i, c in zip(self.idents, CAPS)],
                        monitors=[self.monitor], clock=lambda: self.now_s, **kw)


CAPS = [Capabilities(("gpu",), 16 << 30), Capabilities((EVIL,), 8 << 30), Capabilities(), Capabilities(("cpu",), 1 << 30)]


def _audit(dep: Deployment, oracles: list[LocalAccount], node: LocalAccount, epoch: int, work: int | None) -> list[int]:
    """Post ``node``'s root for ``epoch`` and record the oracles' verdict (a pass with ``work`` units, or a failure)."""
    root = keccak256(b"explorer-root/" + bytes.fromhex(node.address[2:]) + epoch.to_bytes(8, "big"))
    gas = [dep.post_epoch_root(node, epoch, root).gas_used]
    passed = work is not None
    count, units = (2, work) if passed else (0, 0)
    report = b"\x42" * 32
    sigs = [sign_audit(o, dep.poai_domain, node.address, epoch, root, count, units, passed, report) for o in oracles]
    gas.append(dep.record_audit(AuditAttestation(node.address, epoch, root, count, units, passed, report), sigs).gas_used)
    return gas


def _claim(dep: Deployment, oracles: list[LocalAccount], node: LocalAccount, epoch: int, value: int) -> int:
    sigs = [sign_availability(o, dep.ledger_domain, node.address, [epoch], [value]) for o in oracles]
    return dep.claim_availability(node, [epoch], [value], sigs).gas_used


#: (epoch, node index) -> work units attested (None: failed audit); availability claimed per (epoch, node).
WORK = {(E1, 0): 1000, (E1, 1): 1500, (E1, 2): None, (E1, 3): 700, (E2, 0): 2000, (E2, 1): 2500}
AVAIL = {(E1, 0): 255, (E1, 1): 200, (E1, 2): 255, (E1, 3): 128, (E2, 0): 255, (E2, 1): 240}


def seed_network(journal_path: Path) -> Network:
    """The scenario of the module docstring on a fresh in-process chain."""
    chain = Chain.in_process()
    dep = chain.deploy(epoch_length=EPOCH, treasury=make_key("explorer-treasury").address, require_licence=True)
    idents = [NodeIdentity.from_seed(keccak256(b"explorer-node-%d" % i)) for i in range(4)]
    accts = [Account.from_key(i.chain_key) for i in idents]
    oracles = [make_key(f"explorer-oracle-{i}") for i in range(2)]
    client, operator, attestor = make_key("explorer-client"), make_key("explorer-operator"), make_key("explorer-kyc")
    for a in (*accts, client, operator):
        chain.fund(a.address, 10**19)
    for a in accts:
        dep.admit_node(a.address)
    for o in oracles:
        dep.admit_oracle(o.address)
    dep.set_quorum(2)
    dep.mint(client.address, 10**24)
    dep.mint(operator.address, 10**24)
    dep.set_attestor(attestor.address)
    for i, members in enumerate(((0, 1, 2), (3,))):
        att = KycAttestation(operator.address, keccak256(b"explorer-kyc-%d" % i), chain.timestamp() + 3600, i)
        lid = dep.mint_licence(att, sign_kyc_attestation(attestor.key, dep.licence_domain, att))
        for n in members:
            dep.bind_node(operator, lid, accts[n].address)
    dep.advance_to_epoch(E1)
    job = keccak256(b"explorer-escrow-job")
    dep.create_job(client, job, E1, [a.address for a in accts[:3]], [1000, 1500, 900], DEPOSIT,
                   start_deadline=dep.genesis_time + (E1 + 1) * EPOCH)
    for a in accts:
        dep.stake_tokens(operator, a.address, STAKE)
    dep.fund_reward_pool(client, E1, POOL)
    dep.advance_to_epoch(E1 + 1)
    gas = {E1: 0, E2: 0}
    for i, a in enumerate(accts):
        gas[E1] += sum(_audit(dep, oracles, a, E1, WORK[(E1, i)]))
    for i, a in enumerate(accts):
        gas[E1] += _claim(dep, oracles, a, E1, AVAIL[(E1, i)])
    gas[E1] += dep.slash(accts[2].address, E1).gas_used
    for i in (0, 1, 3):
        dep.register_for_reward(accts[i].address, E1)
    dep.advance_to_epoch(E1 + 2)
    chain.advance_time(1)
    net = Network(chain, dep, idents, accts, Journal(journal_path), None, 0, gas)  # type: ignore[arg-type]
    for a in accts[:3]:
        before = dep.token_balance(a.address)
        dep.settle_job(job, a.address)
        net.paid[a.address] = dep.token_balance(a.address) - before
    for i in (0, 1, 3):
        before = dep.token_balance(accts[i].address)
        dep.claim_reward(accts[i].address, E1)
        net.rewards[accts[i].address] = dep.token_balance(accts[i].address) - before
    for i in (0, 1):
        gas[E2] += sum(_audit(dep, oracles, accts[i], E2, WORK[(E2, i)]))
        gas[E2] += _claim(dep, oracles, accts[i], E2, AVAIL[(E2, i)])
    dep.revoke_node(accts[3].address)

    j = net.journal
    for name in ("done", "failed", "disputed", "pending"):
        net.job_ids[name] = keccak256(b"explorer-journal-job/" + name.encode())
        j.add(net.job_ids[name], "task", SECRET + name.encode(), redundancy=2 if name == "done" else 1)
    for name in ("done", "disputed"):
        j.complete(net.job_ids[name], output=OUTPUT, output_commitment=b"\x07" * 32, nodes=[accts[0].address, accts[1].address],
                   epoch=E2, transcripts=[(accts[0].address, b"rec", True)])
    j.fail(net.job_ids["failed"], "every eligible node failed")
    j.dispute(net.job_ids["disputed"], f"node {accts[2].address} failed its audit in epoch {E1}")
    j.record_fault(accts[2].address, E1, net.job_ids["disputed"], "audit failed")

    # Heartbeats: nodes 0 and 1 beat in the last slots before "now"; node 2 is silent, node 3 revoked.
    net.now_s = chain.timestamp()
    monitor = HeartbeatMonitor(ChainRegistry(dep, ttl_s=0), epoch_ms=EPOCH * 1000, interval_ms=HEARTBEAT_MS,
                               genesis_ms=dep.genesis_time * 1000)
    for ident, caps in zip(idents, CAPS):
        monitor.add_card(ident.card(caps))
    now_ms = net.now_s * 1000
    for k in (0, 1):
        for seq, back in enumerate((90_000, 30_000)):
            monitor.receive(make_heartbeat(idents[k], seq=seq, now_ms=now_ms - back), now_ms=now_ms - back)
    net.monitor = monitor
    return net


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return seed_network(tmp_path_factory.mktemp("explorer") / "jobs.sqlite")


@pytest.fixture(scope="module")
def snap(net: Network) -> dict[str, Any]:
    return net.explorer().snapshot()


def _row(snap: dict[str, Any], address: str) -> dict[str, Any]:
    (row,) = [r for r in snap["nodes"] if r["address"] == address]
    return row


# --- the readers -----------------------------------------------------------------------------------
def test_nodes_read_from_the_chain(net: Network, snap: dict[str, Any]) -> None:
    dep = net.dep
    assert {r["address"] for r in snap["nodes"]} == set(net.addresses)
    for i, a in enumerate(net.addresses):
        row = _row(snap, a)
        assert row["admitted"] == dep.is_admitted(a) and row["licensed"] == dep.is_registry_licensed(a)
        assert row["licence"] == dep.licence_of_node(a) and row["licence_holder"] == dep.licence_holder(row["licence"])
        verified = sum(dep.verified_work_units(a, e) for e in (E1, E2))
        assert row["verified_work"] == verified and verified == sum(WORK.get((e, i)) or 0 for e in (E1, E2))
        assert row["audits_failed"] == (1 if i == 2 else 0)
        assert int(row["staked"]) == STAKE
        info = dep.stake_info(a)
        assert int(row["slashed"]) == STAKE - info.bonded - info.unbonding
        assert int(row["paid"]) == net.paid.get(a, 0) and int(row["rewards"]) == net.rewards.get(a, 0)
    assert _row(snap, net.addresses[3])["status"] == "revoked" and not dep.is_node(net.addresses[3])
    slashed = _row(snap, net.addresses[2])
    assert slashed["status"] == "active" and int(slashed["slashed"]) > 0 and slashed["slashed_epochs"] == [E1]
    assert [r["status"] for r in snap["nodes"][:3]] == ["active"] * 3  # active nodes first
    assert snap["summary"] | {} == {**snap["summary"], "revoked": 1, "slashed": 1, "nodes": 4}
    assert snap["chain"]["quorum"] == list(dep.quorum()) and snap["chain"]["licensing_required"] == dep.licence_required()


def test_epochs_audits_availability_and_gas(net: Network, snap: dict[str, Any]) -> None:
    dep = net.dep
    rows = {e["epoch"]: e for e in snap["epochs"]}
    assert list(rows) == [E2, E1]  # newest first
    assert (rows[E1]["roots"], rows[E1]["audits_passed"], rows[E1]["audits_failed"]) == (4, 3, 1)
    assert (rows[E2]["roots"], rows[E2]["audits_passed"], rows[E2]["audits_failed"]) == (2, 2, 0)
    for e in (E1, E2):
        assert rows[e]["verified_work"] == sum(dep.verified_work_units(a, e) for a in net.addresses)
        assert rows[e]["gas"] == net.gas[e]  # the receipts of the roots, audits, claims and the slash of that epoch
    assert int(rows[E1]["pool"]) == POOL and int(rows[E1]["rewards"]) == sum(net.rewards.values())
    assert int(rows[E1]["paid"]) == sum(net.paid.values())
    hm = snap["heatmap"]
    assert hm["epochs"] == [E1, E2]
    cells = {r["node"]: r["cells"] for r in hm["rows"]}
    for (e, i), value in AVAIL.items():
        cell = cells[net.addresses[i]][hm["epochs"].index(e)]
        assert cell["voided"] == (WORK[(e, i)] is None)
        assert cell["availability"] == value
        assert dep.earned_availability(net.addresses[i], e) == (0 if cell["voided"] else value)
    assert cells[net.addresses[3]][1] == {"availability": None, "voided": False}  # revoked: no claim in epoch 11


def test_payments(net: Network, snap: dict[str, Any]) -> None:
    t = snap["payments"]["totals"]
    assert int(t["deposits"]) == DEPOSIT and t["jobs"] == 1
    assert int(t["payouts"]) == sum(net.paid.values()) and net.paid[net.addresses[2]] == 0
    assert int(t["payouts"]) + int(t["returned"]) == DEPOSIT  # every slot is settled
    assert int(t["rewards"]) == sum(net.rewards.values()) and int(t["pools"]) == POOL
    assert int(t["slashed"]) == int(_row(snap, net.addresses[2])["slashed"]) and t["slashes"] == 1
    kinds = [p["kind"] for p in snap["payments"]["recent"]]
    assert kinds.count("payout") == 3 and kinds.count("availability reward") == 3 and kinds.count("slash") == 1
    (escrow,) = snap["escrow"]
    assert escrow["settled"] == 3 and int(escrow["paid"]) == sum(net.paid.values())
    assert escrow["job"] == "0x" + keccak256(b"explorer-escrow-job").hex()


def test_journal_presence_and_capabilities(net: Network, snap: dict[str, Any]) -> None:
    jobs = snap["jobs"]
    assert jobs["counts"] == net.journal.counts() == {"done": 2, "failed": 1, "pending": 1}
    assert jobs["disputed"] == 1 and jobs["total"] == 4
    recent = {j["job"]: j for j in jobs["recent"]}
    done = recent["0x" + net.job_ids["done"].hex()]
    assert done["nodes"] == net.addresses[:2] and done["epoch"] == E2 and done["redundancy"] == 2
    assert recent["0x" + net.job_ids["disputed"].hex()]["disputed"].startswith(f"node {net.addresses[2]}")
    assert recent["0x" + net.job_ids["failed"].hex()]["error"] == "every eligible node failed"
    assert jobs["faults"] == [{"node": net.addresses[2], "epoch": E1, "job": "0x" + net.job_ids["disputed"].hex(), "reason": "audit failed"}]
    online = {r["address"]: r["online"] for r in snap["nodes"]}
    assert online == {net.addresses[0]: True, net.addresses[1]: True, net.addresses[2]: False, net.addresses[3]: False}
    assert snap["summary"]["online"] == 2
    assert _row(snap, net.addresses[1])["capabilities"] == {"accelerators": [EVIL], "memory_bytes": 8 << 30}


def test_the_job_listing_follows_every_journal_write(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "jobs.sqlite")
    explorer = Explorer(journal=journal, refresh_s=0)
    job = keccak256(b"explorer-listing")
    journal.add(job, "task", b"spec")
    assert explorer.snapshot()["jobs"]["disputed"] == 0
    journal.dispute(job, "a node failed its audit")  # the counts by status stay the same
    (row,) = explorer.snapshot()["jobs"]["recent"]
    assert row["disputed"] == "a node failed its audit" and explorer.snapshot()["jobs"]["disputed"] == 1
    journal.note_attempts(job, 2)
    assert explorer.snapshot()["jobs"]["recent"][0]["attempts"] == 2


def test_a_node_goes_offline_as_time_passes(net: Network) -> None:
    later = net.explorer()
    later.clock = lambda: net.now_s + 5 * HEARTBEAT_MS // 1000
    assert all(r["online"] is False for r in later.snapshot()["nodes"])


def _walk_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _walk_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _walk_keys(v)}
    return set()


def test_no_secret_reaches_the_page_or_the_json(net: Network) -> None:
    client = TestClient(explorer_app(net.explorer()))
    bodies = {"json": client.get("/api/network").text}
    for path in ("/", "/?fragment=1", f"/node/{net.addresses[0]}", f"/node/{net.addresses[2]}", f"/epoch/{E1}", f"/epoch/{E2}"):
        r = client.get(path)
        assert r.status_code == 200, path
        bodies[path] = r.text
    keys = _walk_keys(json.loads(bodies["json"]))
    for word in ("share", "key", "plaintext", "secret", "spec", "output", "seed", "signature"):
        assert not [k for k in keys if word in k.lower()], word
    secrets = [SECRET.decode(), OUTPUT.decode(), OUTPUT.hex(), SECRET.hex()]
    for ident in net.idents:
        card = ident.card()
        secrets += [ident.chain_key.hex(), card.signing_key.hex(), card.box_key.hex(), card.signature.hex()]
    for where, body in bodies.items():
        for s in secrets:
            assert s.lower() not in body.lower(), (where, s[:12])


# --- the pages -------------------------------------------------------------------------------------
def test_page_shows_nodes_epochs_and_escapes_node_strings(net: Network) -> None:
    client = TestClient(explorer_app(net.explorer()))
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"] and r.headers["x-content-type-options"] == "nosniff"
    html = r.text
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script") == 1  # the page's own script file, nothing inline
    for a in net.addresses:
        assert f'data-address="{a}"' in html
    assert f'data-address="{net.addresses[3]}" data-status="revoked"' in html
    assert 'class="badge st-slashed">slashed<' in html
    assert f'data-epoch="{E1}"' in html and f'data-epoch="{E2}"' in html
    assert html.count("<rect") >= 8 + 2  # the heat map's cells and the work chart's bars
    assert client.get("/static/explorer.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/../_explorer.py").status_code == 404 and client.get("/static/x.py").status_code == 404
    assert client.get("/node/0x0000000000000000000000000000000000000001").status_code == 404
    assert client.get("/epoch/999").status_code == 404
    assert client.post("/api/network").status_code == 405  # read-only


def test_epoch_and_node_views(net: Network) -> None:
    client = TestClient(explorer_app(net.explorer()))
    html = client.get(f"/epoch/{E1}").text
    for a in net.addresses:
        assert f'data-address="{a}"' in html
    assert html.count(">failed<") == 1 and html.count(">passed<") == 3
    assert html.count(">voided<") == 1 and html.count("/255<") == 3  # the failed audit voids node 2's claimed availability
    node = client.get(f"/node/{net.addresses[2]}").text
    assert "slashed" in node and f"epochs {E1}" in node


def test_mounts_in_a_gateway_app(net: Network) -> None:
    explorer = net.explorer()
    app = FastAPI()
    app.include_router(explorer_router(explorer), prefix="/explorer")
    app.mount("/mounted", explorer_app(explorer))
    client = TestClient(app)
    for base in ("/explorer", "/mounted"):
        html = client.get(base + "/").text
        assert f'src="{base}/static/explorer.js"' in html and f'data-revision-url="{base}/api/revision"' in html
        assert f'href="{base}/node/{net.addresses[0]}"' in html
        assert client.get(base + "/api/revision").json()["revision"] == client.get(base + "/api/network").json()["revision"]


def test_live_refresh_follows_a_revocation_and_heartbeats(tmp_path: Path) -> None:
    chain = Chain.in_process()
    dep = chain.deploy(epoch_length=EPOCH)
    chain.advance_time(3 * HEARTBEAT_MS // 1000)  # a few heartbeat slots after genesis
    ident = NodeIdentity.from_seed(keccak256(b"explorer-live"))
    dep.admit_node(ident.address)
    now = {"s": chain.timestamp()}
    monitor = HeartbeatMonitor(ChainRegistry(dep, ttl_s=0), epoch_ms=EPOCH * 1000, interval_ms=HEARTBEAT_MS,
                               genesis_ms=dep.genesis_time * 1000)
    monitor.add_card(ident.card())
    explorer = Explorer(deployment=dep, cards=[ident.card()], monitors=[monitor], clock=lambda: now["s"], refresh_s=0)
    client = TestClient(explorer_app(explorer))
    first = client.get("/api/revision").json()
    (row,) = explorer.snapshot()["nodes"]
    assert row["status"] == "active" and row["online"] is False
    t = now["s"] * 1000
    assert monitor.receive(make_heartbeat(ident, seq=1, now_ms=t), now_ms=t)
    now["s"] += HEARTBEAT_MS // 1000
    second = client.get("/api/revision").json()
    assert second["revision"] != first["revision"] and second["online"] == 1
    dep.revoke_node(ident.address)
    third = client.get("/api/revision").json()
    assert third["revision"] != second["revision"] and third["head_block"] == chain.block_number()
    assert 'data-status="revoked"' in client.get("/?fragment=1").text


def test_chain_outage_keeps_the_last_view(net: Network) -> None:
    explorer = net.explorer(refresh_s=0)
    before = explorer.snapshot()
    reader = explorer.reader
    assert reader is not None
    reader.deployment = _Unreachable(net.dep)
    try:
        after = explorer.snapshot()
        assert after["errors"] and after["errors"][0].startswith("chain:")
        assert after["nodes"] == before["nodes"] and after["epochs"] == before["epochs"]
        assert "chain:" in TestClient(explorer_app(explorer)).get("/").text
    finally:
        reader.deployment = net.dep
    assert explorer.snapshot()["errors"] == []


class _Unreachable:
    """A deployment whose chain node stopped answering (every request fails as Chain reports it)."""

    def __init__(self, dep: Deployment) -> None:
        from edil.proofs import ChainUnavailableError

        class _Chain:
            reorg_depth = 0

            def block_number(self) -> int:
                raise ChainUnavailableError("the chain node does not answer", reason="timeout")

        self.chain = _Chain()


# --- services, metrics, the heartbeat log ----------------------------------------------------------
@dataclass(frozen=True)
class _ServiceState:
    service_id: str
    spec: dict[str, Any]
    replicas: tuple[str, ...]
    state: str
    version: int


class _Reconciler:
    def __init__(self, services: list[_ServiceState]) -> None:
        self.services = services

    def list(self) -> list[_ServiceState]:
        return list(self.services)


def test_services_with_latency_percentiles_from_metrics(net: Network) -> None:
    import numpy as np
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    buckets = tuple(x / 1000 for x in range(5, 205, 5))  # 5 ms buckets up to 200 ms
    hist = Histogram("edil_gateway_request_seconds", "latency", ["service", "status"], buckets=buckets, registry=registry)
    rng = np.random.default_rng(7)
    samples = rng.gamma(4.0, 0.01, size=2000)
    for k, s in enumerate(samples):
        hist.labels(service="digits<b>", status="200" if k % 10 else "500").observe(float(s))
    services = [_ServiceState("digits<b>", {"owner_key": "0xsecret"}, (net.addresses[0], net.addresses[1]), "running", 3),
                _ServiceState("idle", {}, (), "pending", 1)]
    explorer = Explorer(reconciler=_Reconciler(services), metrics=registry)
    rows = {s["service"]: s for s in explorer.snapshot()["services"]}
    digits = rows["digits<b>"]
    assert digits["replicas"] == 2 and digits["nodes"] == net.addresses[:2] and digits["state"] == "running" and digits["version"] == "3"
    assert digits["latency"]["requests"] == 2000 and rows["idle"]["latency"] is None
    for q in (50, 95, 99):  # within one 5 ms bucket of the samples' own percentile
        assert abs(digits["latency"][f"p{q}_ms"] - 1000 * np.percentile(samples, q)) <= 5.0
    html = TestClient(explorer_app(explorer)).get("/").text
    assert "digits&lt;b&gt;" in html and "digits<b>" not in html and "0xsecret" not in html


def test_services_of_a_deeploy_reconciler(net: Network, tmp_path: Path) -> None:
    from edil import runtime as rt

    journal = rt.Journal(tmp_path / "services.sqlite")
    owner_key = keccak256(b"explorer service owner")
    cards = [i.card(c) for i, c in zip(net.idents[:2], CAPS)]
    rec = rt.Reconciler(journal, rt.StaticRegistry(net.addresses[:2]), chain_id=net.chain.chain_id)
    spec = rt.ServiceSpec(
        name="lr-service", model_cid=rt.content_id(b"explorer model", manifest=True), scheme="ckks",
        owner=Account.from_key(owner_key).address, replicas=2, redundancy=1, min_availability=0.0, version=1,
        params={"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 40, 60], "global_scale_bits": 40},
    )
    sid = rec.deploy(rt.SignedServiceSpec.sign(spec, owner_key, chain_id=net.chain.chain_id))
    rec.reconcile(nodes=cards)
    (row,) = Explorer(reconciler=rec).snapshot()["services"]
    (state,) = rec.list()
    assert row["service"] == sid and row["name"] == "lr-service" and row["state"] == state.state == "running"
    assert row["replicas"] == 2 and row["nodes"] == list(state.replicas) and row["latency"] is None
    assert "lr-service" in TestClient(explorer_app(Explorer(reconciler=rec))).get("/").text


def test_histogram_quantile_matches_prometheus() -> None:
    buckets = [(0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (float("inf"), 40.0)]
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.15)
    assert histogram_quantile(1.0, buckets) == pytest.approx(0.4)
    assert histogram_quantile(0.5, [(float("inf"), 0.0)]) is None
    assert histogram_quantile(0.99, [(0.1, 1.0), (float("inf"), 5.0)]) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        histogram_quantile(1.5, buckets)


def test_heartbeat_log_of_the_coordinator_daemon(net: Network, tmp_path: Path) -> None:
    from edil.app._coordinator import _card_record

    folder = tmp_path / "jobs.sqlite.coordinator"
    folder.mkdir()
    cards = [i.card(c) for i, c in zip(net.idents, CAPS)]
    forged = dict(_card_record(cards[1]), address=net.addresses[0])  # node 1's card claiming node 0's address
    (folder / "cards.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*map(_card_record, cards), forged]) + '{"partial')
    now_ms = net.now_s * 1000
    beats = [{"t": now_ms - 30_000, "hb": make_heartbeat(net.idents[0], seq=1, now_ms=now_ms - 30_000).hex()}, {"t": 1, "hb": "zz"}]
    (folder / "heartbeats.jsonl").write_text("".join(json.dumps(b) + "\n" for b in beats))
    log = HeartbeatLog(folder, net.dep, heartbeat_s=HEARTBEAT_MS // 1000)
    net.explorer()  # the shared reader
    explorer = Explorer(reader=net.reader, heartbeat_log=log, clock=lambda: net.now_s)
    rows = {r["address"]: r for r in explorer.snapshot()["nodes"]}
    assert [rows[a]["online"] for a in net.addresses] == [True, False, False, False]
    assert rows[net.addresses[0]]["capabilities"]["accelerators"] == ["gpu"]  # the forged card did not replace it
    with open(folder / "heartbeats.jsonl", "a") as f:  # appended later: read at the next refresh
        f.write(json.dumps({"t": now_ms - 20_000, "hb": make_heartbeat(net.idents[1], seq=1, now_ms=now_ms - 20_000).hex()}) + "\n")
    explorer.refresh(force=True)
    assert [r["online"] for r in explorer.snapshot()["nodes"] if r["address"] in net.addresses[:2]] == [True, True]


def test_cli_refuses_a_missing_deployment_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edil.app.cli import main

    assert main(["explorer", "--deployment", str(tmp_path / "none.json"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edil explorer: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.anvil
def test_cli_refuses_a_journal_that_is_not_a_database_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edil.app.cli import main
    from tests._chain_fixtures import ANVIL_KEYS, anvil_node

    (tmp_path / "owner.key").write_text(ANVIL_KEYS[0])
    (tmp_path / "jobs.sqlite").write_bytes(b"not a database " * 100)
    deployment = str(tmp_path / "deployment.json")
    with anvil_node() as rpc:
        assert main(["chain", "deploy", "--rpc", rpc, "--key-file", str(tmp_path / "owner.key"), "--out", deployment]) == 0
        capsys.readouterr()
        assert main(["explorer", "--deployment", deployment, "--journal", str(tmp_path / "jobs.sqlite"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edil explorer: ") and err.count("\n") == 1 and "journal" in err and "Traceback" not in err
