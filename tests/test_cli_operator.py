"""The operator flow from the command line alone, against anvil and nats-server on loopback.

``edil chain deploy`` -> ``edil coordinator init --deployment`` -> ``edil registry admit`` (two
nodes, two oracles) and ``quorum`` -> two ``edil node run`` daemons and ``edil coordinator run``
-> ``edil job submit`` of a plain and a masked job on an ONNX model (outputs compared with the
imported model's plaintext forward pass) -> ``edil job status|result`` -> ``edil epoch close``
(roots, audits recorded on chain, availability claimed) -> ``edil registry revoke|list``.
Every process the test starts is stopped in ``finally``. The argument checks at the end need no
chain: each mistake is one line on stderr, exit status 2, and nothing is written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edil import models
from edil import runtime as rt
from edil.app import main as edil_main
from edil.app._ops_cli import load_deployment, open_deployment
from tests._chain_fixtures import ANVIL_KEYS, anvil_node, make_key

EDIL = [sys.executable, "-m", "edil.app"]
RNG = np.random.default_rng(2026)


def _onnx_mlp(path: Path) -> None:
    """A 4 -> 6 -> 3 MLP with a ReLU, as an ONNX file."""
    w1, b1 = RNG.normal(size=(6, 4)).astype(np.float32) * 0.5, RNG.normal(size=6).astype(np.float32) * 0.1
    w2, b2 = RNG.normal(size=(3, 6)).astype(np.float32) * 0.5, RNG.normal(size=3).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], transB=1)],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def edil(*args: str, timeout: float = 180) -> str:
    return edil_all([list(args)], timeout=timeout)[0]


def edil_all(commands: list[list[str]], timeout: float = 180) -> list[str]:
    """Run independent ``edil`` commands side by side; each must succeed. Returns their stdout."""
    procs = [subprocess.Popen([*EDIL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in commands]
    outs = []
    for args, proc in zip(commands, procs):
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, f"edil {' '.join(args[:2])} failed ({proc.returncode}): {err.decode()[-2000:]}"
        outs.append(out.decode())
    return outs


def spawn(log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as err:
        return subprocess.Popen([*EDIL, *args], stdout=subprocess.PIPE, stderr=err, start_new_session=True)


def ready_json(proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120.0) -> dict:
    """The JSON document a daemon prints on stdout once ready, or fail with its stderr."""
    box: list[dict] = []

    def read() -> None:
        text = ""
        for line in iter(proc.stdout.readline if proc.stdout else (lambda: b""), b""):
            text += line.decode()
            try:
                box.append(json.loads(text))
                return
            except ValueError:
                continue

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert box, f"not ready; stderr: {log.read_text()[-2000:]}"
    return box[0]


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def test_operator_flow_from_the_command_line(tmp_path: Path) -> None:
    owner, coord_key = tmp_path / "owner.key", tmp_path / "coord.key"
    owner.write_text(ANVIL_KEYS[0])
    oracle_files = []
    for i in range(2):
        f = tmp_path / f"oracle{i}.key"
        f.write_text(make_key(f"cli-oracle-{i}").key.hex())
        oracle_files.append(f)
    oracles = [make_key(f"cli-oracle-{i}").address for i in range(2)]
    node_files, nodes = [], []
    for i in range(2):
        seed = os.urandom(32)
        (tmp_path / f"node{i}.key").write_text(seed.hex())
        node_files.append(tmp_path / f"node{i}.key")
        nodes.append(rt.NodeIdentity.from_seed(seed).address)
    _onnx_mlp(tmp_path / "model.onnx")
    x = RNG.normal(size=(5, 4))
    np.save(tmp_path / "x.npy", x)
    reference = models.from_onnx(str(tmp_path / "model.onnx")).forward(x)
    deployment, journal = tmp_path / "deployment.json", tmp_path / "jobs.sqlite"
    procs: list[subprocess.Popen[bytes]] = []
    with anvil_node() as rpc, rt.NatsServer() as server:
        try:
            edil("chain", "deploy", "--rpc", rpc, "--key-file", str(owner), "--out", str(deployment))
            rec = load_deployment(deployment)
            chain = ["--deployment", str(deployment), "--key-file", str(owner)]
            coordinator_json, admitted = edil_all([
                ["coordinator", "init", "--key-file", str(coord_key), "--deployment", str(deployment)],
                ["registry", "admit", *chain, "--fund", str(10**17), *[a for n in nodes for a in ("--node", n)],
                 *[a for o in oracles for a in ("--oracle", o)], "--quorum", "2"],
            ])
            (tmp_path / "coordinator.json").write_text(coordinator_json)
            assert json.loads(coordinator_json)["domain"]["verifying_contract"] == rec.addresses.verifier
            assert admitted.count(": admitted") == 4 and "quorum 2 of 2" in admitted
            for i, f in enumerate(node_files):
                procs.append(spawn(tmp_path / f"node{i}.log", "node", "run", "--key-file", str(f), "--coordinator",
                                   str(tmp_path / "coordinator.json"), "--nats", server.url))
            procs.append(spawn(tmp_path / "coordinator.log", "coordinator", "run", "--key-file", str(coord_key), "--deployment",
                               str(deployment), "--nats", server.url, "--journal", str(journal), "--heartbeat-s", "5"))
            for i, p in enumerate(procs[:2]):
                assert ready_json(p, tmp_path / f"node{i}.log")["address"] == nodes[i]
            ready = ready_json(procs[2], tmp_path / "coordinator.log")
            assert ready["chain_id"] == rec.chain_id

            job = ["--key-file", str(coord_key), "--nats", server.url]
            out_plain, out_masked = tmp_path / "plain.npy", tmp_path / "masked.npy"
            submit = [*job, "--model", str(tmp_path / "model.onnx"), "--input", str(tmp_path / "x.npy"), "--wait"]
            out_ckks = tmp_path / "ckks.npy"
            plain_id, masked_id, _ = (out.strip() for out in edil_all([
                ["job", "submit", *submit, "--scheme", "plain", "--redundancy", "2", "--out", str(out_plain)],
                ["job", "submit", *submit, "--scheme", "masked", "--parties", "2", "--out", str(out_masked)],
                ["job", "submit", *submit, "--scheme", "ckks", "--out", str(out_ckks)],
            ]))
            np.testing.assert_allclose(np.load(out_plain), reference, rtol=1e-9, atol=1e-12)  # float64 on both sides
            # 16 fractional bits and a truncation per multiplication: within 1e-2 of the plaintext model
            np.testing.assert_allclose(np.load(out_masked), reference, atol=1e-2)
            # CKKS at the default 2^40 scale: approximate arithmetic, far inside 1e-3
            np.testing.assert_allclose(np.load(out_ckks), reference, atol=1e-3)
            again = tmp_path / "again.npy"
            status, _ = edil_all([["job", "status", plain_id, *job], ["job", "result", masked_id, *job, "--out", str(again)]])
            status = json.loads(status)
            assert status["status"] == "done" and sorted(status["nodes"]) == sorted(nodes) and status["scheme"] == "plain"
            np.testing.assert_array_equal(np.load(again), np.load(out_masked))

            closed = json.loads(edil(
                "epoch", "close", *chain, "--journal", str(journal), "--advance",
                *[a for f in oracle_files for a in ("--oracle-key", str(f))], *[a for f in node_files for a in ("--node-key", str(f))],
            ))
            _, dep = open_deployment(rec, None)
            epoch = closed["epoch"]
            assert epoch == dep.current_epoch() - 1
            for a in nodes:
                row = closed["nodes"][a]
                assert row["audit"] == "passed" and row["status"] == "verified", row
                assert dep.verified_work_units(a, epoch) == row["work_units"] > 0
                assert row["availability"] > 0 and dep.is_claimed(a, epoch)  # heartbeats every 5 s reached the oracles

            edil("registry", "revoke", *chain, "--node", nodes[1])
            refused = subprocess.Popen([*EDIL, "registry", "quorum", "3", *chain], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            listed = json.loads(edil("registry", "list", "--deployment", str(deployment)))
            _, err = refused.communicate(timeout=180)
            err_line = err.decode().strip()  # 3 of 2 oracles: the registry reverts, one line
            assert refused.returncode == 2 and "InvalidQuorum" in err_line and "\n" not in err_line, err_line
            assert listed["nodes"] == [nodes[0]] and sorted(listed["oracles"]) == sorted(oracles)
            assert listed["quorum"] == {"m": 2, "n": 2}
        finally:
            codes = [stop(p) for p in procs]
    assert codes[2] == 0, (tmp_path / "coordinator.log").read_text()[-2000:]  # SIGTERM: a clean stop


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["chain", "deploy", "--rpc", "127.0.0.1:8545", "--key-file", "{owner}", "--out", "{new}"], "not a JSON-RPC URL"),
        (["chain", "deploy", "--rpc", "http://127.0.0.1:1", "--key-file", "{badkey}", "--out", "{new}"], "does not hold a private key"),
        (["coordinator", "init", "--key-file", "{new}", "--deployment", "{empty}"], "is empty"),
        (["coordinator", "init", "--key-file", "{new}", "--chain-id", "1", "--verifier", "0x12"], "bad --chain-id or --verifier"),
        (["coordinator", "run", "--key-file", "{seed}", "--deployment", "{malformed}", "--nats", "nats://127.0.0.1:1",
          "--journal", "{new}"], "not a deployment file"),
        (["coordinator", "run", "--key-file", "{seed}", "--deployment", "{malformed}", "--nats", "127.0.0.1:4222",
          "--journal", "{new}"], "not a NATS URL"),
        (["registry", "list", "--deployment", "{nourl}"], "not a JSON-RPC URL"),
        (["registry", "admit", "--deployment", "{malformed}", "--key-file", "{owner}", "--node", "0x1234"], "not a 0x-prefixed"),
        (["registry", "admit", "--deployment", "{malformed}", "--key-file", "{badkey}", "--node", "0x" + "ab" * 20],
         "does not hold a private key"),
        (["job", "submit", "--key-file", "{seed}", "--nats", "localhost:4222", "--model", "{new}", "--input", "{new}",
          "--scheme", "plain"], "not a NATS URL"),
        (["job", "status", "00" * 31, "--key-file", "{seed}", "--nats", "nats://127.0.0.1:1"], "not a job id"),
        (["epoch", "close", "--deployment", "{malformed}", "--key-file", "{owner}", "--journal", "{new}",
          "--oracle-key", "{badkey}"], "does not hold a private key"),
    ],
)
def test_mistakes_are_one_line_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    files = {
        "owner": ANVIL_KEYS[0], "badkey": "zz" * 32, "seed": "11" * 32, "empty": "",
        "malformed": '{"format": "edil-deployment/1", "chain_url": 7}',
        "nourl": json.dumps({"format": "edil-deployment/1", "chain_url": "localhost:8545", "chain_id": 1, "deploy_block": 0,
                             "epoch_length": 600, "genesis_time": 0, "addresses": {"registry": "0x" + "11" * 20,
                                                                                   "ledger": "0x" + "22" * 20, "verifier": "0x" + "33" * 20}}),
    }
    paths = {"new": str(tmp_path / "new")}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        paths[name] = str(tmp_path / name)
    code = edil_main([a.format(**paths) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err, err
    assert not (tmp_path / "new").exists()


def test_a_subprocess_mistake_prints_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "deployment.json").write_text("[]")
    r = subprocess.run([*EDIL, "registry", "list", "--deployment", str(tmp_path / "deployment.json")], capture_output=True, timeout=120)
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and err.startswith("edil registry: ") and "not a deployment file" in err, err
    assert "\n" not in err and "Traceback" not in err
