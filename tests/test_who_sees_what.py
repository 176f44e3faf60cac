"""The README's table of what each party sees, checked row by row against what nodes receive.

The Masked rows are checked as properties over random fault schedules in
``tests/test_runtime_privacy.py``; this file checks the table itself, the opt-ins, the HE and
plaintext rows on real nodes, and the journal's file mode.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edil import CKKS, Paillier, Plain, UnsupportedOperationError
from edil import runtime as rt
from edil.proofs import Eip712Domain
from edil.runtime.testing import FaultyNode
from tests import _workloads as wl

README = Path(__file__).resolve().parents[1] / "README.md"
DOMAIN = Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "11" * 20)
SEEDS = [bytes([0xE0 + i]) * 32 for i in range(2)]


def _table() -> dict[str, list[str]]:
    text = README.read_text()
    section = text.split("## What each party sees", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header == ["scheme", "a node", "the coordinator", "the journal", "the gateway"]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in r.strip("|").split("|")] for r in rows[2:])}


def test_the_table_has_a_row_per_scheme_and_disclosure() -> None:
    rows = _table()
    names = [re.sub(r"[`()]", "", k) for k in rows]
    for scheme in ("Plain", "Masked, model private", "Masked, model_public=True", "CKKS", "Paillier"):
        assert any(n.startswith(scheme) for n in names), (scheme, names)
    node = {re.sub(r"[`()]", "", k): v[0] for k, v in rows.items()}
    assert "no secret key" in next(v for k, v in node.items() if k.startswith("CKKS"))
    assert "never two shares of one sharing" in next(v for k, v in node.items() if k.startswith("Masked, model private"))
    replicated = next(v for k, v in rows.items() if re.sub(r"[`()]", "", k).startswith("Replicated"))
    assert "two of the three additive components" in replicated[0] and "never leaves it" in replicated[0]
    assert "cannot read" in replicated[1] and "no input" in replicated[2]


class RecordingNode(FaultyNode):
    def __init__(self, *args: Any, log: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = log

    def _run_task(self, body: Any) -> bytes:
        self.log.append(rt.Task.from_wire(body["task"]))
        return super()._run_task(body)


@pytest.fixture(scope="module")
def env():
    log: list[rt.Task] = []
    ex = rt.LocalExecutor()
    registry = rt.StaticRegistry(rt.NodeIdentity.from_seed(s).address for s in SEEDS)
    sched = rt.Scheduler(ex, registry, rt.Journal(":memory:"), identity=rt.CoordinatorIdentity.generate(), domain=DOMAIN)
    for s in SEEDS:
        config = dataclasses.replace(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()), node_factory=functools.partial(RecordingNode, log=log))
        sched.launch(config)
    yield sched, log
    ex.close()


def test_plain_needs_an_explicit_opt_in_and_then_sends_the_data(env) -> None:
    sched, log = env
    x, _ = wl.breast_cancer()
    _, model = wl.logreg_breast_cancer()
    with pytest.raises(UnsupportedOperationError, match="allow_plaintext"):
        rt.Task.plain(model, x[:5])
    job = sched.submit(rt.Task.plain(model, x[:5], allow_plaintext=True))
    sched.run()
    np.testing.assert_array_equal(rt.array_from_bytes(log[-1].input), x[:5])  # the row says: in the clear
    np.testing.assert_allclose(rt.array_from_bytes(sched.result(job)), model.forward(x[:5]))


@pytest.mark.parametrize("kind", ["ckks", "paillier"])
def test_he_nodes_get_no_secret_key_and_the_model_only_when_public(env, kind: str) -> None:
    sched, log = env
    x, _ = wl.breast_cancer()
    _, model = wl.logreg_breast_cancer()
    scheme = CKKS.for_model(model) if kind == "ckks" else Paillier(key_bits=1024)
    enc = scheme.encode(x[:4])
    with pytest.raises(UnsupportedOperationError, match="model_public"):
        rt.Task.for_scheme(scheme, model, enc)
    job = sched.submit(rt.Task.for_scheme(scheme, model, enc, model_public=True))
    sched.run()
    task = log[-1]
    node_scheme = type(scheme).from_public_context(task.context)
    with pytest.raises(UnsupportedOperationError, match="cannot decrypt|secret key"):  # no secret key on a node
        node_scheme.decode(node_scheme.deserialize(task.input))
    assert rt.model_from_bytes(task.model).layers[0].weight.shape == model.layers[0].weight.shape  # public: in the clear
    out = scheme.decode(scheme.deserialize(sched.result(job)))
    np.testing.assert_allclose(out, model.forward(x[:4]), atol=1e-2)


def test_plain_scheme_tasks_need_the_opt_in_too() -> None:
    x, _ = wl.breast_cancer()
    _, model = wl.logreg_breast_cancer()
    p = Plain()
    with pytest.raises(UnsupportedOperationError):
        rt.Task.for_scheme(p, model, p.encode(x[:2]))


def test_the_journal_file_is_readable_by_its_owner_only(tmp_path) -> None:
    path = tmp_path / "jobs.sqlite"
    j = rt.Journal(str(path))
    j.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_the_gateway_column_against_a_real_gateway(env, tmp_path) -> None:
    """The gateway column: ciphertexts and public contexts only for CKKS and Paillier, 422 for Masked and Plain."""
    import hashlib
    import json
    import struct

    import msgspec
    from eth_account import Account
    from fastapi.testclient import TestClient

    import edil.client
    from edil import SerializationError
    from edil._ckks import _KIND_CONTEXT, _MAGIC, _VERSION
    from edil.app._gateway import Gateway, create_app

    column = {re.sub(r"[`()]", "", k): v[3] for k, v in _table().items()}

    def cell(scheme: str) -> str:
        return next(v for k, v in column.items() if k.startswith(scheme))

    assert "never a secret key" in cell("CKKS") and "secret key is refused" in cell("CKKS")
    assert cell("Paillier").startswith("as for `CKKS`") and "never its primes" in cell("Paillier")
    assert "422" in cell("Plain") and "422" in cell("Masked, model private") and cell("Masked, model_public=True") == "as above"
    assert "sealed to that party" in cell("Replicated") and "never a pair in the clear" in cell("Replicated")  # tests/test_gateway_replicated.py

    sched, log = env
    x, _ = wl.breast_cancer()
    _, model = wl.logreg_breast_cancer()
    fs = rt.R1FS(rt.LocalBlobStore(tmp_path))
    cid = fs.put(rt.model_to_bytes(model), [sched.identity.box_key], name="lr")
    services = rt.Reconciler(sched.journal, sched.registry, chain_id=DOMAIN.chain_id)
    owner_key = hashlib.sha256(b"who-sees-what-owner").digest()
    ids = {}
    for scheme, params in (("ckks", {"poly_modulus_degree": 4096, "precision_bits": 25}), ("paillier", {"key_bits": 1024}),
                           ("masked", {"parties": 2}), ("plain", {})):
        spec = rt.ServiceSpec(name=f"who-{scheme}", model_cid=cid, scheme=scheme, owner=Account.from_key(owner_key).address,
                              params=params, replicas=2)
        ids[scheme] = services.deploy(rt.SignedServiceSpec.sign(spec, owner_key, chain_id=DOMAIN.chain_id))
    services.reconcile(nodes=[sched.card(a) for a in sched.nodes])
    gw = Gateway(sched, services, models=lambda c: fs.get(c, sched.identity))
    bodies: list[bytes] = []
    with TestClient(create_app(gw)) as http:
        http.event_hooks = {"request": [lambda r: bodies.append(r.read()) if r.method == "POST" else None]}
        c = edil.client.connect("http://testserver", http=http)
        ck, pa = c.scheme(ids["ckks"]), Paillier(key_bits=1024)
        np.testing.assert_allclose(c.predict(ids["ckks"], x[:3]), model.forward(x[:3]), atol=1e-2)
        ck_task = log[-1]
        np.testing.assert_allclose(c.predict(ids["paillier"], x[:3], scheme=pa), model.forward(x[:3]), atol=1e-3)
        for scheme in ("masked", "plain"):  # listed, never served
            r = http.post(f"/v1/services/{ids[scheme]}:predict", content=bodies[0], headers={"content-type": "application/msgpack"})
            assert r.status_code == 422 and r.json()["error"] == "UnsupportedOperationError", r.text
        # A context that holds the secret key is refused before anything else is done with it.
        body = ck._ctx.serialize(save_secret_key=True)
        header = json.dumps(ck._p, sort_keys=True).encode()
        payload = _MAGIC + _KIND_CONTEXT + struct.pack("<HI", _VERSION, len(header)) + header + body
        private = payload + hashlib.sha256(payload).digest()
        jobs = len(sched.journal.jobs())
        sent = msgspec.msgpack.encode({"scheme": "ckks", "context": private, "input": ck.serialize(ck.encode(x[:1]))})
        r = http.post(f"/v1/services/{ids['ckks']}:predict", content=sent, headers={"content-type": "application/msgpack"})
        assert r.status_code == 400 and r.json()["error"] == SerializationError.__name__ and "secret key" in r.json()["message"]
        assert len(sched.journal.jobs()) == jobs  # refused: no task was made of it
    ck_body, pa_body = (msgspec.msgpack.decode(b) for b in bodies[:2])
    assert ck.is_private and not CKKS.from_public_context(ck_body["context"]).is_private
    assert ck_task.context == ck_body["context"]  # the node gets the client's public context as the gateway got it
    for p in (pa._priv.p, pa._priv.q):  # the Paillier secret primes appear nowhere in what was sent
        for form in (str(p).encode(), format(p, "x").encode(), p.to_bytes((p.bit_length() + 7) // 8, "big")):
            assert form not in bodies[1]
    held = list(gw._contexts.values())  # what the gateway keeps: the contexts it rebuilt, all public
    assert {type(s).__name__ for s in held} == {"CKKS", "Paillier"} and not any(s.is_private for s in held)
