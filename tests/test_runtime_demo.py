"""The main job's runtime step and the CLI around it (``edil demo``, ``edil node``)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from fractions import Fraction

import httpx
import pytest

from edil.app import cli, run_runtime_demo
from tests._chain_fixtures import REPO, anvil_node


def _check_run(rows: list[dict], details: dict) -> None:
    assert [r["scheme"] for r in rows] == ["runtime plain r=2", "runtime masked n=3", "runtime ckks", "runtime paillier"]
    for r in rows:
        # Same (polynomial) model decoded from each scheme vs run in plaintext: plain and Paillier
        # are exact up to fixed point, Masked within 2^-16 per value, CKKS within ~1e-4: argmax
        # agrees on all samples in practice; allow one flip for CKKS noise.
        assert r["agreement"] >= 1 - 1.5 / r["samples"], r
        assert r["accuracy"] > 0.9 and r["bytes"] > 0
    assert details["refused"] and details["included"]
    assert details["heartbeats_rejected"] == {"bad_signature": 1, "unregistered": 1}
    everyone = details["nodes"]
    assert len(everyone) == 4
    cheater = everyone[details["cheater"]]
    nodes = {a: n for a, n in everyone.items() if a != details["cheater"]}
    for n in nodes.values():
        assert n["passed"] and n["tasks"] > 0 and n["verified"] == n["work_units"] > 0 and n["gas"] > 0
    assert sorted(n["availability"] for n in nodes.values()) == [230, 255, 255]  # node 3 missed 1 of 10 slots
    assert sum(n["reward"] for n in nodes.values()) == Fraction(230 + 255 + 255, 255)
    # The money: each honest node is paid its attested share of the deposit (rounding down; the
    # last slot's remainder goes back to the client) and its share of the pool.
    from edil.app._runtime_demo import DEPOSIT, REWARD_POOL, STAKE

    total_planned = sum(n["work_units"] for n in everyone.values())  # the escrow's plan: each node's journaled work
    for n in nodes.values():
        assert n["paid"] == DEPOSIT * n["verified"] // total_planned
        assert n["avail_reward"] == REWARD_POOL * n["availability"] // (230 + 255 + 255)
        assert n["stake"] == STAKE and n["slashed"] == 0
    # The cheater did work (one job) but returned a wrong output: its audit failed, so nothing is
    # verified, it is paid nothing, its stake is slashed by the deployment's 10 %, and its share of
    # the deposit went back to the client.
    assert cheater["tasks"] == 1 and cheater["work_units"] > 0 and not cheater["passed"] and cheater["verified"] == 0
    assert cheater["paid"] == 0 and cheater["avail_reward"] == 0 and cheater["availability"] == 0
    assert cheater["slashed"] == STAKE // 10 and cheater["stake"] == STAKE - STAKE // 10
    share = DEPOSIT * cheater["work_units"] // total_planned
    assert details["deposit"] == DEPOSIT
    assert sum(n["paid"] for n in everyone.values()) + details["returned"] == DEPOSIT
    assert share <= details["returned"] < share + 4


def test_runtime_demo_in_process_chain_local_executor() -> None:
    """The demo, then its explorer (``serve_port``) over the same chain and journal, while the nodes are up."""
    lines: list[str] = []
    details: dict = {}
    stop = threading.Event()
    seen: dict = {}

    def browse() -> None:  # what a person opening the printed address gets
        try:
            deadline = time.monotonic() + 900
            while "explorer" not in details and time.monotonic() < deadline:
                time.sleep(0.2)
            with httpx.Client(base_url=details["explorer"], timeout=60) as web:
                seen["page"] = web.get("/").text
                seen["network"] = web.get("/api/network").json()
        finally:
            stop.set()

    watcher = threading.Thread(target=browse, daemon=True)
    watcher.start()
    rows = run_runtime_demo(lines.append, samples=120, paillier_key_bits=1024, details=details, serve_port=0, serve_until=stop)
    watcher.join(60)
    _check_run(rows, details)
    assert any("in-process EVM" in line for line in lines)
    assert any(line.startswith("explorer: http://127.0.0.1:") for line in lines)
    # The page shows the demo's four nodes, and the cheater as slashed by the amount the demo measured.
    page, network = seen["page"], seen["network"]
    for address in details["nodes"]:
        assert address.lower() in page.lower()
    shown = {n["address"].lower(): n for n in network["nodes"]}
    cheater = details["cheater"].lower()
    assert int(shown[cheater]["slashed"]) == details["nodes"][details["cheater"]]["slashed"] > 0
    assert all(int(n["slashed"]) == 0 for a, n in shown.items() if a != cheater)


def test_cli_demo_on_anvil_with_the_ray_executor() -> None:
    """``edil demo --chain URL --executor ray``, as a user runs it (a subprocess with its own Ray)."""
    pytest.importorskip("ray")
    with anvil_node() as url:
        env = {**os.environ, "EDIL_CHAIN_KEY": "", "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            [sys.executable, "-m", "edil.app", "demo", "--no-masked", "--no-he", "--no-federated", "--chain", url, "--executor", "ray", "--samples", "60"],
            capture_output=True, text=True, timeout=600, env=env, cwd=REPO,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert f"chain: {url}" in out and "executor: ray, 3 nodes up" in out
    assert out.count(" passed ") == 3 and out.count(" VOIDED ") == 1 and "of its stake slashed" in out
    assert "runtime paillier" in out and "runtime masked n=3" in out


def test_cli_demo_refuses_a_remote_chain_without_a_key(capsys) -> None:
    env_key = os.environ.pop("EDIL_CHAIN_KEY", None)
    try:
        rc = cli.main(["demo", "--no-masked", "--no-he", "--no-federated", "--chain", "https://rpc.example.org"])
    finally:
        if env_key is not None:
            os.environ["EDIL_CHAIN_KEY"] = env_key
    assert rc == 1 and "pass a funded private key" in capsys.readouterr().err
    from tests._chain_fixtures import _free_port

    rc = cli.main(["demo", "--no-masked", "--no-he", "--no-federated", "--chain", f"http://127.0.0.1:{_free_port()}"])
    err = capsys.readouterr().err
    assert rc == 1 and "ChainUnavailableError" in err and "unreachable" in err, err
    rc = cli.main(["demo", "--no-masked", "--no-he", "--no-federated", "--executor", "ray", "--ray-address", f"127.0.0.1:{_free_port()}"])
    assert rc == 1 and "no Ray cluster answers" in capsys.readouterr().err
    assert cli.main(["demo", "--no-masked", "--no-he", "--no-federated", "--executor", "ray", "--ray-address", "nonsense"]) == 1
    assert "not host:port" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--ray-address", "127.0.0.1:6379"])  # needs --executor ray


def test_cli_bench_outside_a_source_checkout(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # no benchmarks/ here: a clear refusal, not an ImportError
    assert cli.main(["bench", "--quick"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_cli_node_init_and_show(tmp_path, capsys) -> None:
    key = tmp_path / "node.key"
    assert cli.main(["node", "init", "--key-file", str(key)]) == 0
    card = json.loads(capsys.readouterr().out)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert cli.main(["node", "show", "--key-file", str(key)]) == 0
    assert json.loads(capsys.readouterr().out)["address"] == card["address"]
    assert cli.main(["node", "init", "--key-file", str(key)]) == 2  # never overwrites a key
    assert "refusing to overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad.key"
    bad.write_text("not hex\n")
    assert cli.main(["node", "show", "--key-file", str(bad)]) == 2
    assert "hex seed" in capsys.readouterr().err
    coord = tmp_path / "coordinator.json"
    coord.write_text("{}")
    assert cli.main(["node", "serve", "--key-file", str(key), "--coordinator", str(coord)]) == 2
    assert "bad coordinator keys" in capsys.readouterr().err
    from edil import runtime as rt
    from edil.proofs import Eip712Domain
    from tests._chain_fixtures import _free_port

    keys = rt.CoordinatorKeys(b"\x01" * 32, b"\x02" * 32, Eip712Domain("EDIL PoAI", "1", 1, "0x" + "11" * 20))
    coord.write_text(json.dumps(keys.to_json()))
    argv = ["node", "serve", "--key-file", str(key), "--coordinator", str(coord), "--ray-address", f"127.0.0.1:{_free_port()}"]
    assert cli.main(argv) == 2
    assert "no Ray cluster answers" in capsys.readouterr().err


def test_cli_coordinator_keys_for_node_operators(tmp_path, capsys) -> None:
    from edil import runtime as rt

    key = tmp_path / "coord.key"
    args = ["--key-file", str(key), "--chain-id", "31337", "--verifier", "0x" + "12" * 20]
    assert cli.main(["coordinator", "init", *args]) == 0
    made = rt.CoordinatorKeys.from_json(json.loads(capsys.readouterr().out))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert cli.main(["coordinator", "show", *args]) == 0
    assert rt.CoordinatorKeys.from_json(json.loads(capsys.readouterr().out)) == made
    seed = bytes.fromhex(key.read_text().strip())
    assert made.verify_key == rt.CoordinatorIdentity.from_seed(seed).verify_key and made.domain.chain_id == 31337
    assert cli.main(["coordinator", "init", *args]) == 2 and "refusing to overwrite" in capsys.readouterr().err
    assert cli.main(["coordinator", "show", "--key-file", str(key), "--chain-id", "1", "--verifier", "nope"]) == 2
    assert "bad --chain-id or --verifier" in capsys.readouterr().err


def test_cli_demo_refuses_a_chain_whose_clock_cannot_move(capsys) -> None:
    """A public chain answers, but the demo must move time to close an epoch: fail before any work."""
    import http.server
    import threading

    class Rpc(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            result = {"eth_chainId": "0x1", "web3_clientVersion": "Geth/v1.14.0-stable/linux-amd64/go1.22"}.get(req["method"])
            body = json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": result}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Rpc)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        rc = cli.main(["demo", "--no-masked", "--no-he", "--no-federated", "--chain", url])
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert rc == 1 and "only development nodes allow" in err and "Geth" in err
