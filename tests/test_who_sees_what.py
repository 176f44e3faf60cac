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
    assert header == ["scheme", "a node", "the coordinator", "the journal"]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in r.strip("|").split("|")] for r in rows[2:])}


def test_the_table_has_a_row_per_scheme_and_disclosure() -> None:
    rows = _table()
    names = [re.sub(r"[`()]", "", k) for k in rows]
    for scheme in ("Plain", "Masked, model private", "Masked, model_public=True", "CKKS", "Paillier"):
        assert any(n.startswith(scheme) for n in names), (scheme, names)
    node = {re.sub(r"[`()]", "", k): v[0] for k, v in rows.items()}
    assert "no secret key" in next(v for k, v in node.items() if k.startswith("CKKS"))
    assert "never two shares of one sharing" in next(v for k, v in node.items() if k.startswith("Masked, model private"))


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
