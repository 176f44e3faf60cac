"""KYC attestors and operator licences from the command line, and what a revoked licence does.

Against anvil on loopback: ``edil chain deploy --require-licence`` -> ``edil registry admit`` ->
``edil registry attestor add`` -> ``edil registry licence attest`` (signed offline with the
attestor's key) -> ``licence mint`` -> ``licence bind`` -> a scheduler on the chain's registry
view places work on the licensed nodes -> ``licence revoke`` -> the revoked licence's node is no
node on chain (``isNode`` false), the registry view (what the scheduler and the bus follow) drops
it and it gets no further task, while the other licence's node keeps working. On the in-process
EVM: the event-driven registry view agrees with ``isNode`` through bindings, unbindings,
licence revocations and licensing switches, still in two requests per refresh. Mistakes are one
line on stderr, exit status 2. The scheduling gate is also checked on the in-process EVM.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from eth_account import Account

from edil import AuthorizationError
from edil import runtime as rt
from edil.app import main as edil_main
from edil.app._ops_cli import load_deployment, open_deployment
from edil.proofs import (
    Chain,
    ChainAuthorizationError,
    ChainReplayError,
    KycAttestation,
    keccak256,
    sign_kyc_attestation,
)
from tests._chain_fixtures import ANVIL_KEYS, anvil_node, make_key
from tests.test_runtime_conformance import small_model

EDIL = [sys.executable, "-m", "edil.app"]
SEEDS = [b"licensed-node-1." * 2, b"licensed-node-2." * 2, b"unlicensed-node." * 2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``edil ARGV`` in this process (against the real chain); it must succeed. Returns stdout."""
    code = edil_main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, f"edil {' '.join(argv[:3])} failed ({code}): {err}"
    return out


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``edil ARGV``; it must fail with one line on stderr and status 2. Returns that line."""
    code = edil_main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2 and err and "\n" not in err and "Traceback" not in err, (code, err)
    return err


def _tasks(n: int, start: int = 0) -> list[rt.Task]:
    return [rt.Task.plain(small_model(), np.full((1, 4), float(i)), allow_plaintext=True) for i in range(start, start + n)]


@pytest.mark.anvil
def test_licences_from_the_command_line_gate_scheduling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    owner, holder = tmp_path / "owner.key", tmp_path / "holder.key"
    owner.write_text(ANVIL_KEYS[0])
    holder.write_text(ANVIL_KEYS[1])
    attestor, rogue = make_key("cli-kyc-attestor"), make_key("cli-rogue-attestor")
    (tmp_path / "attestor.key").write_text(attestor.key.hex())
    (tmp_path / "rogue.key").write_text(rogue.key.hex())
    (tmp_path / "kyc.txt").write_text("passport 123, verified 2026-11-30")
    operator = Account.from_key(ANVIL_KEYS[1]).address
    n1, n2, n3 = (rt.NodeIdentity.from_seed(s).address for s in SEEDS)
    d = str(tmp_path / "deployment.json")

    with anvil_node() as rpc:
        run(capsys, "chain", "deploy", "--rpc", rpc, "--key-file", str(owner), "--out", d, "--epoch-length", "600",
            "--require-licence")
        on = ["--deployment", d]
        run(capsys, "registry", "admit", "--node", n1, "--node", n2, "--node", n3, "--fund", str(10**18), *on,
            "--key-file", str(owner))
        assert "attestor " + attestor.address + ": listed" in run(
            capsys, "registry", "attestor", "add", attestor.address, *on, "--key-file", str(owner))

        # Two attestations for one operator, signed offline; the second with the record's hash.
        att1, att2, forged = (str(tmp_path / f"{n}.json") for n in ("att1", "att2", "forged"))
        record = json.loads(run(capsys, "registry", "licence", "attest", *on, "--attestor-key", str(tmp_path / "attestor.key"),
                                "--holder", operator, "--kyc-record", str(tmp_path / "kyc.txt"), "--nonce", "1", "--out", att1))
        assert record["kyc_hash"] == "0x" + keccak256(b"passport 123, verified 2026-11-30").hex()
        assert record["attestor"] == attestor.address and record["operator"] == operator
        run(capsys, "registry", "licence", "attest", *on, "--attestor-key", str(tmp_path / "attestor.key"),
            "--holder", operator, "--kyc-hash", "0x" + "ab" * 32, "--valid-for", "600", "--out", att2)
        run(capsys, "registry", "licence", "attest", *on, "--attestor-key", str(tmp_path / "rogue.key"),
            "--holder", operator, "--kyc-hash", "0x" + "cd" * 32, "--out", forged)
        assert "UnknownAttestor" in fails(capsys, "registry", "licence", "mint", forged, *on, "--key-file", str(holder))
        assert json.loads(run(capsys, "registry", "licence", "mint", att1, *on, "--key-file", str(holder)))["licence"] == 1
        assert "AttestationUsed" in fails(capsys, "registry", "licence", "mint", att1, *on, "--key-file", str(holder))
        assert json.loads(run(capsys, "registry", "licence", "mint", att2, *on, "--key-file", str(owner)))["licence"] == 2
        # Only the holder binds; licence 1 takes n1, licence 2 takes n2; n3 stays unlicensed.
        assert "NotLicenceHolder" in fails(capsys, "registry", "licence", "bind", "1", "--node", n1, *on, "--key-file", str(owner))
        assert "a node" in run(capsys, "registry", "licence", "bind", "1", "--node", n1, *on, "--key-file", str(holder))
        run(capsys, "registry", "licence", "bind", "2", "--node", n2, *on, "--key-file", str(holder))
        listing = json.loads(run(capsys, "registry", "licence", "list", *on))
        assert listing["licensing"] is True
        assert [(r["licence"], r["holder"], r["nodes"], r["revoked"]) for r in listing["licences"]] == [
            (1, operator, [n1], False), (2, operator, [n2], False)]
        assert listing["licences"][0]["kyc_hash"] == record["kyc_hash"]

        _, dep = open_deployment(load_deployment(Path(d)), bytes.fromhex(ANVIL_KEYS[0][2:]))
        assert [dep.is_node(a) for a in (n1, n2, n3)] == [True, True, False]
        assert dep.is_admitted(n3)  # admitted by the owner, but holds no licence
        listed = json.loads(run(capsys, "registry", "list", *on))
        assert listed["nodes"] == [n1, n2] and listed["admitted_without_licence"] == [n3]
        registry = rt.ChainRegistry(dep, ttl_s=0.0)  # what the scheduler and the NATS bus's permissions follow
        assert registry.admitted() == {n1.lower(), n2.lower()}
        ex = rt.LocalExecutor()
        try:
            sched = rt.Scheduler(ex, registry, rt.Journal(":memory:"), identity=rt.CoordinatorIdentity.from_seed(b"c" * 32),
                                 domain=dep.poai_domain, epoch=dep.current_epoch, timeout_s=10)
            for s in SEEDS[:2]:
                sched.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()))
            with pytest.raises(AuthorizationError):
                sched.launch(rt.NodeConfig(seed=SEEDS[2], capabilities=rt.Capabilities()))
            sched.submit_many(_tasks(6))
            assert sched.run() == {"done": 6}
            before = ex.node(n1).completed
            assert before > 0 and ex.node(n2).completed > 0  # both licensed nodes got work

            revoked = json.loads(run(capsys, "registry", "licence", "revoke", "1", *on, "--key-file", str(owner)))
            assert revoked == {"licence": 1, "revoked": True, "unbound": [n1], "nodes_still_nodes": []}
            assert not dep.is_node(n1) and dep.is_admitted(n1) and dep.is_node(n2)
            assert registry.admitted() == {n2.lower()}
            sched.submit_many(_tasks(6, 6))
            assert sched.run() == {"done": 12}
            assert ex.node(n1).completed == before  # the revoked licence's node got no new task
            assert "LicenceRevoked" in fails(capsys, "registry", "licence", "bind", "1", "--node", n1, *on, "--key-file", str(holder))
        finally:
            ex.close()

        # Unbinding takes a node out as well; licensing off lets admitted nodes in without a licence.
        assert "not a node" in run(capsys, "registry", "licence", "unbind", "2", "--node", n2, *on, "--key-file", str(holder))
        assert registry.admitted() == frozenset()
        assert "licensing off" in run(capsys, "registry", "licence", "require", "off", *on, "--key-file", str(owner))
        assert registry.admitted() == {n1.lower(), n2.lower(), n3.lower()}
        run(capsys, "registry", "licence", "require", "on", *on, "--key-file", str(owner))
        assert registry.admitted() == frozenset() and not dep.is_node(n3)
        assert "attestor " + attestor.address + ": not listed" in run(
            capsys, "registry", "attestor", "remove", attestor.address, *on, "--key-file", str(owner))


def test_the_registry_view_follows_licences(capsys: pytest.CaptureFixture[str]) -> None:
    """The event-driven view answers what ``isNode`` answers through every licence event."""
    chain = Chain.in_process()
    dep = chain.deploy(epoch_length=60)
    assert not dep.licence_required()  # default: licensing off, admitted nodes are nodes
    nodes = [make_key(f"view-node-{i}").address for i in range(5)]
    for a in nodes:
        dep.admit_node(a)
    attestor, op = make_key("view-attestor"), chain.accounts[1]
    dep.set_attestor(attestor.address)
    ids = []
    for i in range(2):
        att = KycAttestation(op.address, keccak256(b"view-kyc-%d" % i), chain.timestamp() + 600, i)
        ids.append(dep.mint_licence(att, sign_kyc_attestation(attestor.key, dep.licence_domain, att)))
    reg = rt.ChainRegistry(dep, ttl_s=0.0)

    def agrees() -> frozenset[str]:
        view = reg.admitted()
        assert view == {a.lower() for a in nodes if dep.is_node(a)}
        return view

    assert len(agrees()) == 5
    # Only the named licence contract reports bindings, and the owner names it once.
    with pytest.raises(ChainAuthorizationError) as info:
        chain.transact(dep.registry.functions.setLicensed(nodes[0], True), op)
    assert info.value.error_name == "NotLicence"
    with pytest.raises(ChainReplayError):
        chain.transact(dep.registry.functions.setLicensing(op.address, True), dep.owner)
    dep.set_licensing(True)
    assert agrees() == frozenset()
    for a in nodes[:3]:
        dep.bind_node(op, ids[0], a)
    dep.bind_node(op, ids[1], nodes[3])
    assert len(agrees()) == 4
    dep.unbind_node(op, ids[0], nodes[2])
    assert nodes[2].lower() not in agrees()
    dep.revoke_licence(ids[0])  # one revocation takes out every node of the licence
    assert agrees() == {nodes[3].lower()}
    dep.revoke_node(nodes[3])
    assert agrees() == frozenset()
    dep.set_licensing(False)
    assert len(agrees()) == 4
    # A fresh view replays the whole history to the same answer, in two requests.
    fresh = rt.ChainRegistry(dep, ttl_s=0.0)
    assert fresh.admitted() == reg.admitted() and fresh.requests == 2


def test_a_revoked_licence_stops_scheduling_on_the_in_process_chain() -> None:
    """The same gate without anvil: licensed nodes get work; a revoked licence's node gets none."""
    chain = Chain.in_process()
    dep = chain.deploy(epoch_length=60, require_licence=True)
    a, b = (rt.NodeIdentity.from_seed(s).address for s in SEEDS[:2])
    attestor, op = make_key("sched-attestor"), chain.accounts[1]
    dep.set_attestor(attestor.address)
    for i, node in enumerate((a, b)):
        dep.admit_node(node)
        att = KycAttestation(op.address, keccak256(b"sched-kyc-%d" % i), chain.timestamp() + 600, i)
        dep.bind_node(op, dep.mint_licence(att, sign_kyc_attestation(attestor.key, dep.licence_domain, att)), node)
    ex = rt.LocalExecutor()
    try:
        sched = rt.Scheduler(ex, rt.ChainRegistry(dep, ttl_s=0.0), rt.Journal(":memory:"),
                             identity=rt.CoordinatorIdentity.from_seed(b"c" * 32), domain=dep.poai_domain,
                             epoch=dep.current_epoch, timeout_s=10)
        for s in SEEDS[:2]:
            sched.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()))
        sched.submit_many(_tasks(4))
        assert sched.run() == {"done": 4}
        before = ex.node(a).completed
        assert before > 0 and ex.node(b).completed > 0
        dep.revoke_licence(dep.licence_of_node(a))
        assert not dep.is_node(a) and dep.is_admitted(a) and dep.is_node(b)
        sched.submit_many(_tasks(4, 4))
        assert sched.run() == {"done": 8}
        assert ex.node(a).completed == before and ex.node(b).completed == 8 - before
    finally:
        ex.close()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["registry", "licence", "attest", "--deployment", "{dep}", "--attestor-key", "{key}", "--holder", "0x12",
          "--kyc-hash", "0x" + "00" * 32], "not a 0x-prefixed 20-byte address"),
        (["registry", "licence", "attest", "--deployment", "{dep}", "--attestor-key", "{key}", "--holder", "0x" + "11" * 20,
          "--kyc-hash", "0xabc"], "not 32 bytes of hex"),
        (["registry", "licence", "attest", "--deployment", "{nolicence}", "--attestor-key", "{key}", "--holder",
          "0x" + "11" * 20, "--kyc-hash", "0x" + "00" * 32], "names no licence contract"),
        (["registry", "licence", "attest", "--deployment", "{dep}", "--attestor-key", "{badkey}", "--holder", "0x" + "11" * 20,
          "--kyc-hash", "0x" + "00" * 32], "does not hold a private key"),
        (["registry", "licence", "mint", "{garbage}", "--deployment", "{dep}", "--key-file", "{key}"], "not a KYC attestation"),
        (["registry", "licence", "mint", "{tampered}", "--deployment", "{dep}", "--key-file", "{key}"], "not the attestor"),
        (["registry", "licence", "bind", "first", "--node", "0x" + "11" * 20, "--deployment", "{dep}", "--key-file", "{key}"],
         "not a licence id"),
        (["registry", "attestor", "add", "nobody", "--deployment", "{dep}", "--key-file", "{key}"], "not a 0x-prefixed"),
    ],
)
def test_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    addresses = {"registry": "0x" + "11" * 20, "ledger": "0x" + "22" * 20, "verifier": "0x" + "33" * 20}
    record = {"format": "edil-deployment/1", "chain_url": "http://127.0.0.1:1", "chain_id": 31337, "deploy_block": 0,
              "epoch_length": 600, "genesis_time": 0, "addresses": {**addresses, "licence": "0x" + "44" * 20}}
    key = make_key("mistake-attestor")
    (tmp_path / "dep").write_text(json.dumps(record))
    (tmp_path / "nolicence").write_text(json.dumps({**record, "addresses": addresses}))
    (tmp_path / "key").write_text(key.key.hex())
    (tmp_path / "badkey").write_text("zz" * 32)
    (tmp_path / "garbage").write_text('{"format": "edil-kyc-attestation/1"}')
    # A genuine attestation whose holder was changed afterwards: its signature no longer matches.
    att = KycAttestation("0x" + "55" * 20, bytes(32), 2**40, 7)
    from edil.proofs import Eip712Domain

    sig = sign_kyc_attestation(key.key, Eip712Domain("EDIL OperatorLicence", "1", 31337, "0x" + "44" * 20), att)
    tampered = {"format": "edil-kyc-attestation/1", "chain_id": 31337, "licence": "0x" + "44" * 20, "operator": "0x" + "66" * 20,
                "kyc_hash": "0x" + "00" * 32, "expiry": 2**40, "nonce": 7, "attestor": key.address, "signature": "0x" + sig.hex()}
    (tmp_path / "tampered").write_text(json.dumps(tampered))
    paths = {n: str(tmp_path / n) for n in ("dep", "nolicence", "key", "badkey", "garbage", "tampered")}
    assert needle in fails(capsys, *[a.format(**paths) for a in argv])


def test_a_subprocess_mistake_prints_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "att.json").write_text("[]")
    (tmp_path / "dep.json").write_text("{}")
    r = subprocess.run([*EDIL, "registry", "licence", "mint", str(tmp_path / "att.json"), "--deployment", str(tmp_path / "dep.json"),
                        "--key-file", str(tmp_path / "none.key")], capture_output=True, timeout=120)
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and err.startswith("edil registry: ") and "not a KYC attestation" in err, err
    assert "\n" not in err and "Traceback" not in err
