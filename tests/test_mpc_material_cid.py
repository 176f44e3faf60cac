"""A Masked party's dealer material over the inline limit travels by R1FS CID, sealed to that party alone."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest

from edil import AuthorizationError, Masked
from edil import runtime as rt
from edil.models import Dense, ReLU, Sequential
from edil.proofs import Eip712Domain
from edil.runtime._blobs import INPUT_INLINE_LIMIT
from edil.runtime._r1fs import R1FS

DOMAIN = Eip712Domain("EDIL PoAI", "1", 1337, "0x" + "11" * 20)


def _model() -> Sequential:
    """Batch 32 through 32 -> 64 -> 4: the last party's corrections are about 280 KB (over 256 KiB)."""
    rng = np.random.default_rng(21)
    return Sequential((Dense(rng.normal(size=(32, 64)) * 0.2, rng.normal(size=64) * 0.1), ReLU(),
                       Dense(rng.normal(size=(64, 4)) * 0.2, rng.normal(size=4) * 0.1)))


def _run(blobs: Any) -> tuple[Any, rt.Scheduler, Any, np.ndarray, Any]:
    seeds = [bytes([0xC0 + i]) * 32 for i in range(3)]
    addrs = [rt.NodeIdentity.from_seed(s).address for s in seeds]
    ex = rt.LocalExecutor(blobs=blobs)
    sched = rt.Scheduler(ex, rt.StaticRegistry(addrs), rt.Journal(":memory:"), identity=rt.CoordinatorIdentity.generate(), domain=DOMAIN)
    for s in seeds:
        sched.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()))
    scheme = Masked(3, key=jax.random.key(21))
    x = np.random.default_rng(22).normal(size=(32, 32))
    y = sched.run_masked(scheme, _model(), scheme.encode(x), key=b"material-by-cid-0", model_public=True)
    return ex, sched, scheme, x, y


def test_large_dealer_material_travels_by_cid_to_its_party_alone_and_the_bus_carries_less(tmp_path) -> None:
    ex0, inline, scheme, x, y0 = _run(None)
    ex0.close()
    ex, sched, _, _, y = _run(tmp_path / "r1fs")
    try:
        want = _model().forward(x)
        for got in (y0, y):
            np.testing.assert_allclose(scheme.decode(got), want, atol=2e-3)  # fixed point, 16 fractional bits
        assert inline.stats["material_by_cid"] == 0 and sched.stats["material_by_cid"] == 1  # the last party's only
        saved = inline.stats["bytes_sent"] - sched.stats["bytes_sent"]
        assert saved > INPUT_INLINE_LIMIT, (inline.stats["bytes_sent"], sched.stats["bytes_sent"])
        rec = sched.results()[-1]
        fetched = [ex.node(a).blobs.fetches for a in rec.nodes]
        assert fetched == [0, 0, 1]  # fetched once, by the party it is for
        assert all(ex.node(a).blobs.hits == 0 and not ex.node(a).blobs._cache for a in rec.nodes)  # noqa: SLF001 - used once, not kept
        fs = R1FS(sched.blobs.fs.store)
        (entry,) = [e for e in fs.ls() if e.name == "mpc-material"]
        last = sched.card(rec.nodes[2])
        assert fs.manifest(entry.cid).recipients == [bytes(last.box_key)]  # sealed to that party alone
        with pytest.raises(AuthorizationError):
            fs.get(entry.cid, ex.node(rec.nodes[0]).identity)
        assert not entry.pinned and sched.stats["blob_unpins"] == 1  # the job is done: gc may remove it
    finally:
        ex.close()
