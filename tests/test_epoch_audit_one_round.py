"""Epoch audits of Masked parties check their committed ring products in one round each.

A node commits, with its result, every ring product of its party program as ``C + 2^64 H``; the
epoch audit replays the party with those products, each checked by the one-round audit modulo a
random prime (seeded from the posted root and its beacon), and recomputes only the rest.
"""

from __future__ import annotations

import numpy as np
import pytest

from edil import Masked, SerializationError, VerificationError
from edil import runtime as rt
from edil.hazmat import mpc, ring
from edil.proofs import EpochStatus, transcript_from_wire
from edil.runtime import _wire
from edil.runtime._epochs import audit_masked_party
from edil.runtime._products import ProductAudit, products_from_wire, products_to_wire, record_products, wide_product
from edil.runtime.testing import Faults, faulty
from tests.test_runtime_chain import chain, dep  # noqa: F401 - pytest fixtures
from tests.test_runtime_conformance import small_model

SEED = bytes(range(32))


@pytest.mark.parametrize("shape", [(3, 5, 4), (1, 1, 1), (6, 33, 2), (2, 0, 3)])
def test_wide_product_is_the_exact_integer_product(shape) -> None:
    m, k, n = shape
    rng = np.random.default_rng(k)
    a = rng.integers(0, 1 << 64, size=(m, k), dtype=np.uint64)
    b = rng.integers(0, 1 << 64, size=(k, n), dtype=np.uint64)
    if k:
        a[0], b[:, 0] = np.uint64(2**64 - 1), np.uint64(2**64 - 1)  # the largest terms: every carry
    c, h = wide_product(a, b)
    exact = [[sum(int(a[i, t]) * int(b[t, j]) for t in range(k)) for j in range(n)] for i in range(m)]
    got = [[int(c[i, j]) + (int(h[i, j, 0]) << 64) + (int(h[i, j, 1]) << 128) for j in range(n)] for i in range(m)]
    assert got == exact


def _run_program(p: mpc.Party, x: np.ndarray, layers, weights) -> np.ndarray:
    """A host party program run with every opening zero (the products depend on the inputs only)."""
    step = mpc.model(p, x, layers, weights)
    with np.errstate(over="ignore"):
        try:
            contrib = next(step)
            while True:
                contrib = step.send(tuple(np.zeros_like(c) for c in contrib))
        except StopIteration as stop:
            return np.asarray(stop.value, dtype=np.uint64)


def _program():
    scheme = Masked(2)
    model = small_model(1)
    layers, weights = scheme.program(model, private_weights=False)
    x = np.random.default_rng(5).integers(0, 1 << 64, size=(3, 4), dtype=np.uint64)
    return scheme, layers, list(weights), x


def _dealer(kind, *shapes):
    return tuple(np.ones(s, np.uint64) for s in mpc.material_shapes(kind, shapes))


def test_a_product_off_by_one_entry_fails_its_audit_with_verification_error() -> None:
    scheme, layers, weights, x = _program()
    recorded: list = []
    p = mpc.host_party(0, 2, scheme.frac_bits, _dealer)
    record_products(p, recorded)
    honest = _run_program(p, x, layers, weights)
    assert len(recorded) == 2  # one product per public dense layer
    back = products_from_wire(products_to_wire(recorded))
    assert all(np.array_equal(c, c2) and np.array_equal(h, h2) for (c, h), (c2, h2) in zip(recorded, back))

    q = mpc.host_party(0, 2, scheme.frac_bits, _dealer)
    audit = ProductAudit(q, back, seed=SEED)
    assert np.array_equal(_run_program(q, x, layers, weights), honest)
    audit.finish()
    assert audit.audited == 2

    c0, h0 = back[1]
    lie = c0.copy()
    lie[1, 0] += np.uint64(1)
    q = mpc.host_party(0, 2, scheme.frac_bits, _dealer)
    ProductAudit(q, [back[0], (lie, h0)], seed=SEED)
    with pytest.raises(VerificationError, match="ring product 2: one-round audit failed"):
        _run_program(q, x, layers, weights)

    q = mpc.host_party(0, 2, scheme.frac_bits, _dealer)
    ProductAudit(q, back[:1], seed=SEED)
    with pytest.raises(VerificationError, match="committed to 1 ring products; its program computes more"):
        _run_program(q, x, layers, weights)
    q = mpc.host_party(0, 2, scheme.frac_bits, _dealer)
    extra = ProductAudit(q, [*back, back[0]], seed=SEED)
    _run_program(q, x, layers, weights)
    with pytest.raises(VerificationError, match="committed to 3 ring products; its program computes 2"):
        extra.finish()


def test_private_weights_commit_the_three_beaver_products() -> None:
    """A shared layer's local products (e @ b, a @ g, e @ g) are committed and audited too."""
    scheme = Masked(2)
    layers, weights = scheme.program(small_model(2), private_weights=True)
    x = np.random.default_rng(6).integers(0, 1 << 64, size=(2, 4), dtype=np.uint64)
    recorded: list = []
    p = mpc.host_party(1, 2, scheme.frac_bits, _dealer)
    record_products(p, recorded)
    honest = _run_program(p, x, layers, list(weights))
    assert len(recorded) == 6
    for i, (c, h) in enumerate(recorded):
        assert h.shape == c.shape + (2,), i
    q = mpc.host_party(1, 2, scheme.frac_bits, _dealer)
    audit = ProductAudit(q, recorded, seed=SEED)
    assert np.array_equal(_run_program(q, x, layers, list(weights)), honest)
    audit.finish()


def test_malformed_products_are_refused() -> None:
    good = products_to_wire([(np.zeros((2, 3), np.uint64), np.zeros((2, 3, 2), np.uint64))])
    assert len(products_from_wire(good)) == 1
    for bad in (b"\x00", _wire.dumps([[good]]), products_to_wire([(np.zeros((2, 3), np.uint64), np.zeros((2, 3), np.uint64))]),
                _wire.dumps([[rt.array_to_bytes(np.zeros((2, 3))), rt.array_to_bytes(np.zeros((2, 3, 2)))]])):
        with pytest.raises(SerializationError):
            products_from_wire(bad)


def test_products_that_are_not_tensor_bytes_raise_serialization_error() -> None:
    h = rt.array_to_bytes(np.zeros((2, 3, 2), np.uint64))
    for bad in ([[5, h]], [[None, None]], [[rt.array_to_bytes(np.zeros((2, 3), np.uint64)), "h"]]):
        with pytest.raises(SerializationError):  # untrusted bytes: an EdilError, never a TypeError
            products_from_wire(_wire.dumps(bad))


def _node(chain, dep, seed: bytes) -> rt.NodeIdentity:  # noqa: F811 - `chain`, `dep` are the fixtures
    ident = rt.NodeIdentity.from_seed(seed)
    dep.admit_node(ident.address)
    chain.fund(ident.address, 10**18)
    return ident


def test_epoch_audit_checks_committed_products_and_voids_a_node_that_lied_about_one(chain, dep) -> None:  # noqa: F811
    """Three parties, check="none" (nothing within the job): the epoch audit passes the honest
    parties through the product audit and voids the one whose first product was off by one entry."""
    import jax

    journal = rt.Journal(":memory:")
    seeds = [bytes([0x90 + i]) * 32 for i in range(3)]
    ids = [_node(chain, dep, s) for s in seeds]
    ex = rt.LocalExecutor()
    sched = rt.Scheduler(ex, rt.ChainRegistry(dep, ttl_s=0.0), journal,
                         identity=rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2), domain=dep.poai_domain,
                         epoch=dep.current_epoch, timeout_s=10)
    for i, s in enumerate(seeds):
        sched.launch(faulty(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()), Faults("product") if i == 2 else None))
    model, x = small_model(2), np.random.default_rng(7).normal(size=(4, 4))
    scheme = Masked(3, key=jax.random.key(3))
    epoch = dep.current_epoch()
    y = sched.run_masked(scheme, model, scheme.encode(x), key=b"dealer-seed-0001", check="none", job_id="masked-product")
    # One ring element off before truncation: the result still looks right (tolerance of the fixed-point encoding).
    np.testing.assert_allclose(scheme.decode(y), model.forward(x), atol=1e-2)
    jid = sched.status("masked-product").job_id
    rec = _wire.loads(journal.result(jid).output)
    committed = [products_from_wire(b) for b in rec["products"]]
    assert [len(c) for c in committed] == [6, 6, 6]  # weights shared: three local products per dense layer
    assert all(h.shape == c.shape + (2,) for party in committed for c, h in party)

    dep.advance_to_epoch(epoch + 1)
    batches = [rt.close_epoch(dep, journal, i.chain_key, i.address, epoch) for i in ids]
    chain.mine()
    oracle_keys = [chain.accounts[1].key, chain.accounts[2].key]
    reports = [rt.audit_epoch(dep, journal, b, oracle_keys) for b in batches]
    assert [r.passed for r in reports] == [True, True, False], reports
    assert "ring product 1: one-round audit failed" in reports[2].failures[0], reports[2]
    assert dep.epoch_status(ids[2].address, epoch) is EpochStatus.VOIDED
    assert dep.verified_work_units(ids[0].address, epoch) == model.work_units(4)
    assert ids[2].address in sched.status("masked-product").disputed
    ex.close()


def test_the_product_audit_uses_the_committed_products_and_old_records_are_replayed(chain, dep) -> None:  # noqa: F811
    """The same honest record passes; with one committed entry changed it fails the product audit
    (though the contributions are the node's); without products (an older record) it is replayed."""
    import jax

    journal = rt.Journal(":memory:")
    seeds = [bytes([0xA0 + i]) * 32 for i in range(2)]
    ids = [_node(chain, dep, s) for s in seeds]
    ex = rt.LocalExecutor()
    sched = rt.Scheduler(ex, rt.ChainRegistry(dep, ttl_s=0.0), journal,
                         identity=rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2), domain=dep.poai_domain,
                         epoch=dep.current_epoch, timeout_s=10)
    for s in seeds:
        sched.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()))
    model, x = small_model(2), np.random.default_rng(8).normal(size=(4, 4))
    scheme = Masked(2, key=jax.random.key(4))
    y = sched.run_masked(scheme, model, scheme.encode(x), key=b"dealer-seed-0002", check="none", job_id="masked-honest")
    np.testing.assert_allclose(scheme.decode(y), model.forward(x), atol=1e-2)
    jid = sched.status("masked-honest").job_id
    res, job = journal.result(jid), journal.job(jid)
    rows = {ids[k].address: journal.transcripts(ids[k].address, dep.current_epoch()) for k in range(2)}
    signed = {a: transcript_from_wire(_wire.loads(r[0][1])).transcript for a, r in rows.items()}
    rec = _wire.loads(res.output)
    for t in signed.values():
        assert audit_masked_party(job.spec, res.output, res.nodes, t, seed=SEED) is None
    party = [a.lower() for a in res.nodes].index(ids[0].address.lower())
    products = products_from_wire(rec["products"][party])
    c, h = products[1]
    c = c.copy()
    c[0, 1] += np.uint64(1)
    tampered = dict(rec, products=[products_to_wire([products[0], (c, h)]) if i == party else b for i, b in enumerate(rec["products"])])
    why = audit_masked_party(job.spec, _wire.dumps(tampered), res.nodes, signed[ids[0].address], seed=SEED)
    assert why is not None and "ring product 2: one-round audit failed" in why
    garbled = dict(rec, products=[b"\x01" if i == party else b for i, b in enumerate(rec["products"])])
    why = audit_masked_party(job.spec, _wire.dumps(garbled), res.nodes, signed[ids[0].address], seed=SEED)
    assert why is not None and "cannot be replayed" in why
    old = {k: v for k, v in rec.items() if k != "products"}
    assert audit_masked_party(job.spec, _wire.dumps(old), res.nodes, signed[ids[0].address], seed=SEED) is None
    # An old record is replayed in full: a changed contribution commitment still fails it.
    contribs = [list(cs) for cs in old["contributions"]]
    contribs[party][0] = bytes(32)
    why = audit_masked_party(job.spec, _wire.dumps(dict(old, contributions=contribs)), res.nodes, signed[ids[0].address], seed=SEED)
    assert why is not None and "contribution in round 1 is not the protocol's" in why
    ex.close()


def test_committed_products_equal_the_ring_product() -> None:
    """What a node commits to is the ring product of its operands (C) and the exact high part (H)."""
    rng = np.random.default_rng(9)
    a = rng.integers(0, 1 << 64, size=(4, 7), dtype=np.uint64)
    b = rng.integers(0, 1 << 64, size=(7, 5), dtype=np.uint64)
    c, h = wide_product(a, b)
    assert np.array_equal(c, ring.matmul_reference(a, b))
    ref_c, ref_h = ring.matmul_wide_reference(a, b)
    assert np.array_equal(c, ref_c) and np.array_equal(h, ref_h)


@pytest.mark.parametrize("where", ["none", "C", "H0", "H1", "C2^63"])
def test_small_operands_are_audited_in_python_integers_like_the_kernels(where) -> None:
    """Small audits run in exact Python integers (no kernel to compile per shape): same verdicts."""
    from edil.proofs import _freivalds as fr

    rng = np.random.default_rng(11)
    a = rng.integers(0, 1 << 64, size=(9, 7), dtype=np.uint64)
    b = rng.integers(0, 1 << 64, size=(7, 5), dtype=np.uint64)
    a[0], b[:, 0] = np.uint64(2**64 - 1), np.uint64(2**64 - 1)
    c, h = (np.array(v) for v in ring.matmul_wide_reference(a, b))
    with np.errstate(over="ignore"):
        if where == "C":
            c[3, 2] += np.uint64(1)
        elif where == "C2^63":
            c[0, 0] += np.uint64(1 << 63)
        elif where in ("H0", "H1"):
            h[8, 4, 0 if where == "H0" else 1] -= np.uint64(1)
    for trial in range(3):
        p = fr.audit_prime(bytes([trial]) * 32)
        r = np.random.default_rng(trial).integers(0, 1 << fr._VECTOR_BITS, size=5, dtype=np.uint64)
        small = fr._one_round_ok_small(a, b, c, h, r, p)
        with fr.jax.enable_x64(True):
            kernel = bool(fr._one_round_ok(*(ring.asarray(v) for v in (a, b, c, h)), r, p))
        assert small == kernel == (where == "none")


@pytest.mark.parametrize("shape", [(2, 0, 3), (0, 3, 2), (3, 2, 0), (3000, 0, 3), (0, 6000, 3), (9000, 2, 0)])
def test_empty_products_pass_the_audit(shape) -> None:
    # The last three are past the exact-integer path: the compiled check with an empty dimension.
    from edil.proofs import matmul_audit_one_round

    m, k, n = shape
    a, b = np.zeros((m, k), np.uint64), np.zeros((k, n), np.uint64)
    c, h = wide_product(a, b)
    matmul_audit_one_round(a, b, c, h, seed=SEED)
    if c.size:
        c[0, 0] = np.uint64(1)
        with pytest.raises(VerificationError):
            matmul_audit_one_round(a, b, c, h, seed=SEED)


def test_exact_relu_between_products_is_recomputed_and_products_are_audited() -> None:
    """A net with an exact ReLU (XOR-opened comparison rounds between its products): the product
    audit passes every honest party, and a changed entry of its second product fails it."""
    import jax

    from edil.models import Dense, ReLU, Sequential
    from edil.proofs import Eip712Domain

    rng = np.random.default_rng(12)
    model = Sequential((Dense(rng.uniform(-1, 1, size=(4, 5)), rng.uniform(-1, 1, size=5)), ReLU(),
                        Dense(rng.uniform(-1, 1, size=(5, 2)), rng.uniform(-1, 1, size=2))))
    x = rng.normal(size=(3, 4))
    seeds = [bytes([0xB0 + i]) * 32 for i in range(2)]
    journal = rt.Journal(":memory:")
    ex = rt.LocalExecutor()
    sched = rt.Scheduler(ex, rt.StaticRegistry(rt.NodeIdentity.from_seed(s).address for s in seeds), journal,
                         identity=rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2),
                         domain=Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "11" * 20))
    try:
        for s in seeds:
            sched.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()))
        scheme = Masked(2, key=jax.random.key(5))
        y = sched.run_masked(scheme, model, scheme.encode(x), model_public=True, check="none", job_id="relu")
        np.testing.assert_allclose(scheme.decode(y), model.forward(x), atol=1e-2)
        jid = sched.status("relu").job_id
        res, spec = journal.result(jid), journal.job(jid).spec
        rec = _wire.loads(res.output)
        for i, addr in enumerate(res.nodes):
            t = transcript_from_wire(_wire.loads(journal.transcripts(addr, 0)[0][1])).transcript
            assert audit_masked_party(spec, res.output, res.nodes, t, seed=SEED) is None
            products = products_from_wire(rec["products"][i])
            assert len(products) == 2
            c, h = products[1]
            c = c.copy()
            c[2, 1] -= np.uint64(1)
            lied = dict(rec, products=[products_to_wire([products[0], (c, h)]) if j == i else b for j, b in enumerate(rec["products"])])
            why = audit_masked_party(spec, _wire.dumps(lied), res.nodes, t, seed=SEED)
            assert why is not None and "ring product 2: one-round audit failed" in why
    finally:
        ex.close()
