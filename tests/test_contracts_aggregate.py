"""One aggregate root per epoch: posted once by an oracle at constant gas, per-node batch roots
claimed by the nodes themselves with inclusion proofs, then audited and paid as usual."""

from __future__ import annotations

import pytest

from edil import ChainError
from edil.proofs import (
    AggregateEpoch,
    AuditAttestation,
    Chain,
    ChainAuthorizationError,
    ChainReplayError,
    ChainVerificationError,
    EpochStatus,
    sign_audit,
)
from edil.proofs._hashing import keccak256
from tests._chain_fixtures import make_key
from tests._economy import Economy, build_economy, root_of


@pytest.fixture(scope="module")
def econ() -> Economy:
    econ = build_economy(Chain.in_process())
    for o in econ.oracles:  # oracles send the aggregate posts
        econ.chain.fund(o.address, 10**18)
    return econ


def _fake_nodes(n: int) -> list[tuple[str, bytes]]:
    return [(make_key(f"agg-{n}-{i}").address, keccak256(b"agg-root-%d-%d" % (n, i))) for i in range(n)]


def post_audit_only(econ: Economy, node, epoch: int, root: bytes, units: int) -> None:
    dep = econ.dep
    report = b"\x42" * 32
    sigs = [sign_audit(o, dep.poai_domain, node.address, epoch, root, 1, units, True, report) for o in econ.oracles[:2]]
    dep.record_audit(AuditAttestation(node.address, epoch, root, 1, units, True, report), sigs)


def test_posting_costs_the_same_for_3_30_and_300_nodes(econ):
    dep = econ.dep
    start = dep.current_epoch()
    dep.advance_to_epoch(start + 4)
    gas = {}
    for k, n in enumerate((3, 30, 300)):
        agg = AggregateEpoch(start + k, _fake_nodes(n))
        gas[n] = dep.post_aggregate_root(econ.oracles[0], agg.epoch, agg.root).gas_used
        assert dep.aggregate_root(econ.oracles[0].address, agg.epoch) == agg.root
    assert max(gas.values()) <= 60_000, gas
    assert max(gas.values()) - min(gas.values()) <= 64, gas  # the same call; only calldata bytes differ


def test_nodes_claim_their_roots_from_the_aggregate(econ):
    dep = econ.dep
    epoch = dep.current_epoch()
    dep.advance_to_epoch(epoch + 1)
    pairs = [(n.address, root_of(n.address, epoch)) for n in econ.nodes] + _fake_nodes(29)
    agg = AggregateEpoch(epoch, pairs)
    oracle = econ.oracles[1]
    with pytest.raises(ChainAuthorizationError):
        dep.post_aggregate_root(econ.nodes[0], epoch, agg.root)  # oracles only
    n0, n1, n2 = econ.nodes
    r0, p0 = agg.proof(n0.address)
    with pytest.raises(ChainError) as info:
        dep.claim_epoch_root(n0, oracle.address, epoch, r0, p0)
    assert info.value.error_name == "AggregateNotPosted"
    dep.post_aggregate_root(oracle, epoch, agg.root)
    with pytest.raises(ChainReplayError):
        dep.post_aggregate_root(oracle, epoch, agg.root)
    n0, n1, n2 = econ.nodes
    root, proof = agg.proof(n0.address)
    claim_gas = dep.claim_epoch_root(n0, oracle.address, epoch, root, proof).gas_used
    assert dep.epoch_record(n0.address, epoch).root == root
    assert dep.epoch_status(n0.address, epoch) == EpochStatus.POSTED
    assert claim_gas <= 95_000  # a direct root post (~76k) plus a depth-5 proof
    with pytest.raises(ChainReplayError):
        dep.claim_epoch_root(n0, oracle.address, epoch, root, proof)
    # Another node's leaf, or a root the aggregate does not hold for the caller, is refused.
    with pytest.raises(ChainVerificationError):
        dep.claim_epoch_root(n1, oracle.address, epoch, root, proof)
    r1, p1 = agg.proof(n1.address)
    with pytest.raises(ChainVerificationError):
        dep.claim_epoch_root(n1, oracle.address, epoch, keccak256(b"other"), p1)
    dep.claim_epoch_root(n1, oracle.address, epoch, r1, p1)
    # Only an admitted node claims (the fake leaves belong to keys the registry does not list).
    stranger = make_key(f"agg-{29}-0")
    dep.chain.fund(stranger.address, 10**18)
    r, p = agg.proof(stranger.address)
    with pytest.raises(ChainAuthorizationError):
        dep.claim_epoch_root(stranger, oracle.address, epoch, r, p)
    with pytest.raises(KeyError):
        agg.proof(make_key("nobody").address)
    # A claimed root is audited and paid like a posted one.
    post_audit_only(econ, n1, epoch, r1, 40)
    assert dep.verified_work_units(n1.address, epoch) == 40
    # A node that was left out (or an aggregate that is wrong) still posts directly.
    dep.post_epoch_root(n2, epoch, root_of(n2.address, epoch))


def test_aggregate_input_is_checked():
    with pytest.raises(ValueError):
        AggregateEpoch(1, [])
    a = make_key("dup").address
    with pytest.raises(ValueError):
        AggregateEpoch(1, [(a, b"\x01" * 32), (a.lower(), b"\x02" * 32)])
