"""``edil gateway --nats`` with a ``replicated`` service: three `edil node run` daemons are its three parties.

A nats-server, three node daemons and the gateway, each a process of its own. The reconciler
places the service's three replicas on the daemons it hears on the bus; an ``edil.client``
prediction (the client shares and seals, the daemons compute, the gateway relays sealed pairs)
matches the plaintext model. A client whose sealed pair for party 1 does not open gets 422 and no
daemon is suspended: the next honest prediction runs on the same three daemons.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from eth_account import Account

import edil.client
from edil import models
from edil import runtime as rt
from edil.proofs import Eip712Domain
from tests.test_gateway_nats import HEARTBEAT_S, TASK_TIMEOUT_S, _edil, _stop, _wait

CHAIN_ID, VERIFIER = 31337, "0x" + "11" * 20
OWNER_KEY = hashlib.sha256(b"gateway-nats-replicated-owner").digest()
#: 16 fractional bits, exact ReLU, ABY3 truncation: outputs agree with the float model to this absolute tolerance.
TOL = 2e-3


def _net_model() -> models.Sequential:
    rng = np.random.default_rng(21)
    return models.Sequential((models.Dense(rng.normal(size=(5, 6)) / 2, rng.normal(size=6) / 4), models.ReLU(),
                              models.Dense(rng.normal(size=(6, 2)) / 2, rng.normal(size=2) / 4)), kind="multiclass")


def test_a_replicated_service_over_nats_daemons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edil import _client_replicated as crep

    domain = Eip712Domain("EDIL PoAI", "1", CHAIN_ID, VERIFIER)
    seeds = {name: hashlib.sha256(b"gateway-nats-rep-" + name.encode()).digest() for name in ("coord", "n1", "n2", "n3")}
    for name, seed in seeds.items():
        (tmp_path / f"{name}.key").write_text(seed.hex() + "\n")
    coord = rt.CoordinatorIdentity.from_seed(seeds["coord"])
    (tmp_path / "coordinator.json").write_text(json.dumps(rt.CoordinatorKeys(coord.verify_key, coord.box_key, domain).to_json()))
    addresses = [rt.NodeIdentity.from_seed(seeds[n]).address for n in ("n1", "n2", "n3")]
    model = _net_model()
    (tmp_path / "r1fs").mkdir()
    cid = rt.R1FS(rt.LocalBlobStore(tmp_path / "r1fs")).put(rt.model_to_bytes(model), [coord.box_key], name="net")
    journal = rt.Journal(str(tmp_path / "jobs.sqlite"))
    spec = rt.ServiceSpec(name="rep", model_cid=cid, scheme="replicated", owner=Account.from_key(OWNER_KEY).address,
                          params={"frac_bits": 16}, replicas=3)
    sid = rt.Reconciler(journal, rt.StaticRegistry()).deploy(rt.SignedServiceSpec.sign(spec, OWNER_KEY, chain_id=CHAIN_ID))
    journal.close()

    server = rt.NatsServer().start()
    procs: list[Any] = []
    gateway = None
    try:
        for name in ("n1", "n2", "n3"):
            procs.append(_edil("node", "run", "--key-file", str(tmp_path / f"{name}.key"), "--coordinator", str(tmp_path / "coordinator.json"),
                               "--nats", server.url, "--heartbeat-s", f"{HEARTBEAT_S:g}", log=tmp_path / f"{name}.log"))
        admit = [a for address in addresses for a in ("--node", address)]
        gateway = _edil("gateway", "--nats", server.url, *admit, "--journal", str(tmp_path / "jobs.sqlite"),
                        "--key-file", str(tmp_path / "coord.key"), "--store", str(tmp_path / "r1fs"), "--chain-id", str(CHAIN_ID),
                        "--verifier", VERIFIER, "--port", "0", "--reconcile-s", "0.3", "--heartbeat-s", f"{HEARTBEAT_S:g}",
                        "--task-timeout", f"{TASK_TIMEOUT_S:g}", log=tmp_path / "gateway.log")
        assert gateway.stdout is not None
        ready = msgspec.json.decode(gateway.stdout.readline())
        with edil.client.connect(ready["url"], timeout_s=60) as c:
            def placed() -> list[str] | None:
                p = c.service(sid)["parties"]
                return p if len(p) == 3 else None

            # Three daemons and the gateway start in their own processes: on a loaded machine that takes a while.
            parties = _wait("three parties placed on the daemons", placed, time.monotonic() + 120)
            assert {p.lower() for p in parties} == {a.lower() for a in addresses}
            x = np.random.default_rng(22).normal(size=(3, 5))
            np.testing.assert_allclose(c.predict(sid, x, key=b"n" * 32), model.forward(x), atol=TOL)
            assert sorted(n.lower() for n in c.last["nodes"]) == sorted(parties)

            # Party 1's sealed pair replaced by bytes that do not open: 422 for the client, no daemon blamed.
            real = crep.seal_pair

            def garbage(*args: Any, **kw: Any) -> bytes:
                sealed = real(*args, **kw)
                return hashlib.shake_256(sealed).digest(len(sealed)) if kw.get("party") == 1 and kw.get("to_party") else sealed

            monkeypatch.setattr(crep, "seal_pair", garbage)
            with pytest.raises(edil.client.GatewayError, match="party 1 .*sealed_input_unopened") as err:
                c.predict(sid, x, key=b"o" * 32)
            assert err.value.status == 422
            monkeypatch.undo()
            np.testing.assert_allclose(c.predict(sid, x[:1], key=b"p" * 32), model.forward(x[:1]), atol=TOL)
            assert sorted(n.lower() for n in c.last["nodes"]) == sorted(parties)  # the same three daemons, none suspended
    finally:
        if gateway is not None:
            _stop(gateway)
        for proc in procs:
            _stop(proc)
        server.stop()
    log = (tmp_path / "gateway.log").read_text()
    assert gateway.returncode == 0 and "Traceback" not in log, log[-2000:]
    journal = rt.Journal(str(tmp_path / "jobs.sqlite"))
    assert journal.faults() == []  # the refused input is no daemon's fault
    journal.close()
