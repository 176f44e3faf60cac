"""The EDIL contracts on an EVM, run identically on the in-process EVM and on a real anvil node."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edil import AuthorizationError, ChainError, ReplayError, VerificationError
from edil.proofs import (
    ChainAuthorizationError,
    ChainReplayError,
    ChainVerificationError,
    EpochBatch,
    EpochStatus,
    InclusionProof,
    MerkleTree,
    Transcript,
    commit_bytes,
    sign_audit,
    sign_availability,
    sign_transcript,
)
from edil.proofs._hashing import HALF_ORDER, SECP256K1_N
from tests._chain_fixtures import START_EPOCH, actors, chain, deployment  # noqa: F401

# Epochs are handed out so that tests sharing one deployment never collide.
_epochs = itertools.count(1)


def _transcripts(node: str, epoch: int, n: int) -> list[Transcript]:
    return [
        Transcript(
            job_id=f"job-{epoch}-{i}",
            epoch=epoch,
            node=node,
            scheme_params_hash=commit_bytes(b"masked/n=3/f=16"),
            model_commitment=commit_bytes(b"model"),
            input_commitment=commit_bytes(b"input-%d" % i),
            output_commitment=commit_bytes(b"output-%d" % i),
            work_units=1000 + i,
            started_at=1_700_000_000_000 + i,
            ended_at=1_700_000_000_500 + i,
        )
        for i in range(n)
    ]


def _batch(dep, node, epoch: int, n: int = 5) -> EpochBatch:
    return EpochBatch([sign_transcript(t, node, dep.poai_domain) for t in _transcripts(node.address, epoch, n)],
                      dep.poai_domain)


def _malleate(sig: bytes) -> bytes:
    s = int.from_bytes(sig[32:64], "big")
    return sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([sig[64] ^ 1])


class TestRegistry:
    def test_roles_and_quorum(self, deployment, actors):
        dep = deployment
        assert dep.is_node(actors.nodes[0].address)
        assert not dep.is_node(actors.nodes[3].address)
        assert dep.is_oracle(actors.oracles[0].address)
        assert dep.quorum() == (2, 3)
        assert dep.current_epoch() == START_EPOCH

    def test_only_owner_administers(self, deployment, actors):
        fn = deployment.registry.functions.admitNode(actors.outsider.address)
        with pytest.raises(ChainAuthorizationError) as info:
            deployment.chain.transact(fn, actors.outsider)
        assert info.value.error_name == "NotOwner"
        assert isinstance(info.value, AuthorizationError) and isinstance(info.value, ChainError)
        assert "NotOwner" in info.value.reason

    def test_quorum_bounds(self, deployment):
        with pytest.raises(ChainError) as info:
            deployment.set_quorum(4)  # only 3 oracles
        assert info.value.error_name == "InvalidQuorum"
        with pytest.raises(ChainError):
            deployment.set_quorum(0)

    def test_admit_twice_reverts(self, deployment, actors):
        with pytest.raises(ChainError) as info:
            deployment.admit_node(actors.nodes[0].address)
        assert info.value.error_name == "NodeAlreadyAdmitted"


class TestPoAI:
    def test_post_and_check_inclusion(self, deployment, actors):
        dep, node = deployment, actors.nodes[0]
        epoch = next(_epochs)
        batch = _batch(dep, node, epoch, 7)
        result = dep.post_batch(node, batch)
        assert result.gas_used > 21_000 and result.receipt["status"] == 1
        record = dep.epoch_record(node.address, epoch)
        assert (record.root, record.task_count, record.work_units) == (batch.root, 7, batch.work_units)
        assert record.status is EpochStatus.POSTED
        for i in range(7):
            assert dep.check_inclusion(node.address, epoch, batch.digest(i), batch.proof(i))
            assert dep.check_transcript_inclusion(batch.transcripts[i], batch.proof(i))

    def test_tampered_leaf_or_proof_fails_inclusion(self, deployment, actors):
        dep, node = deployment, actors.nodes[0]
        epoch = next(_epochs)
        batch = _batch(dep, node, epoch, 6)
        dep.post_batch(node, batch)
        leaf, proof = batch.digest(3), batch.proof(3)
        bad_leaf = bytes([leaf[0] ^ 1]) + leaf[1:]
        assert not dep.check_inclusion(node.address, epoch, bad_leaf, proof)
        bad_sib = list(proof.siblings)
        bad_sib[1] = bytes([bad_sib[1][0] ^ 0x80]) + bad_sib[1][1:]
        assert not dep.check_inclusion(node.address, epoch, leaf, InclusionProof(3, tuple(bad_sib)))
        assert not dep.check_inclusion(node.address, epoch, leaf, InclusionProof(2, proof.siblings))
        assert not dep.check_inclusion(node.address, epoch, leaf, InclusionProof(3 + 8, proof.siblings))
        assert not dep.check_inclusion(node.address, epoch, leaf, InclusionProof(3, proof.siblings[:-1]))
        assert not dep.check_inclusion(node.address, epoch + 1000, leaf, proof)  # no root there
        assert not dep.check_inclusion(actors.nodes[1].address, epoch, leaf, proof)
        tampered = Transcript(**{**_fields(batch.transcripts[3]), "work_units": 10**9})
        assert not dep.check_transcript_inclusion(tampered, proof)

    def test_second_preimage_inner_node_is_not_a_leaf(self, deployment, actors):
        dep, node = deployment, actors.nodes[0]
        epoch = next(_epochs)
        batch = _batch(dep, node, epoch, 4)
        dep.post_batch(node, batch)
        # Present the level-1 node over leaves 0 and 1 as a "leaf" with the upper path only.
        from edil.proofs._merkle import inner_hash, leaf_hash

        inner = inner_hash(leaf_hash(batch.digest(0)), leaf_hash(batch.digest(1)))
        assert not dep.check_inclusion(node.address, epoch, inner, InclusionProof(0, batch.proof(0).siblings[1:]))

    def test_unregistered_and_revoked_node_cannot_post(self, deployment, actors):
        dep = deployment
        epoch = next(_epochs)
        stranger = actors.nodes[3]
        with pytest.raises(ChainAuthorizationError) as info:
            dep.post_epoch_root(stranger, epoch, b"\x11" * 32, 1, 1)
        assert info.value.error_name == "NodeNotAdmitted"
        revoked = actors.nodes[2]
        dep.revoke_node(revoked.address)
        try:
            with pytest.raises(ChainAuthorizationError):
                dep.post_epoch_root(revoked, epoch, b"\x11" * 32, 1, 1)
        finally:
            dep.admit_node(revoked.address)
        dep.post_epoch_root(revoked, epoch, b"\x11" * 32, 1, 1)  # re-admitted: accepted

    def test_future_current_replayed_and_empty_roots_revert(self, deployment, actors):
        dep, node = deployment, actors.nodes[1]
        current = dep.current_epoch()
        for bad_epoch in (current, current + 5):
            with pytest.raises(ChainError) as info:
                dep.post_epoch_root(node, bad_epoch, b"\x22" * 32, 1, 1)
            assert info.value.error_name == "EpochNotEnded"
        epoch = next(_epochs)
        with pytest.raises(ChainError, match="ZeroRoot"):
            dep.post_epoch_root(node, epoch, bytes(32), 1, 1)
        with pytest.raises(ChainError, match="EmptyBatch"):
            dep.post_epoch_root(node, epoch, b"\x22" * 32, 0, 1)
        dep.post_epoch_root(node, epoch, b"\x22" * 32, 1, 1)
        with pytest.raises(ChainReplayError) as info:
            dep.post_epoch_root(node, epoch, b"\x33" * 32, 1, 1)
        assert isinstance(info.value, ReplayError) and info.value.error_name == "RootAlreadyPosted"

    def test_transcript_digest_matches_solidity(self, deployment, actors):
        dep = deployment
        for t in _transcripts(actors.nodes[0].address, 12345, 3):
            assert dep.transcript_digest(t) == t.digest(dep.poai_domain)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(size=st.integers(1, 3000), data=st.data())
    def test_merkle_roots_agree_with_solidity(self, deployment, size, data):
        leaves = [commit_bytes(b"leaf-%d-%d" % (size, i)) for i in range(size)]
        tree = MerkleTree(leaves)
        for index in {0, size - 1, data.draw(st.integers(0, size - 1))}:
            assert deployment.compute_root(leaves[index], tree.proof(index)) == tree.root

    def test_audits_verify_or_void(self, deployment, actors):
        dep, node, oracles = deployment, actors.nodes[0], actors.oracles
        epoch = next(_epochs)
        batch = _batch(dep, node, epoch, 3)
        dep.post_batch(node, batch)
        dep.chain.mine()
        assert len(dep.audit_beacon(node.address, epoch)) == 32
        report = commit_bytes(b"report")
        assert dep.verified_work_units(node.address, epoch) == 0
        good = [sign_audit(o, dep.poai_domain, node.address, epoch, batch.root, True, report) for o in oracles[:3]]
        # One valid signature repeated, malleated, or from a non-oracle does not make a quorum of 2.
        for sigs in ([good[0], good[0]], [good[0], _malleate(good[0])],
                     [good[0], sign_audit(actors.outsider, dep.poai_domain, node.address, epoch, batch.root, True,
                                          report)],
                     [good[0], b"\x00" * 65], [good[0]]):
            with pytest.raises(ChainVerificationError) as info:
                dep.record_audit(node.address, epoch, True, report, sigs)
            assert info.value.error_args == {"valid": 1, "required": 2}
        # Signatures over another root do not count either.
        wrong_root = [sign_audit(o, dep.poai_domain, node.address, epoch, b"\x01" * 32, True, report)
                      for o in oracles[:3]]
        with pytest.raises(VerificationError):
            dep.record_audit(node.address, epoch, True, report, wrong_root)
        result = dep.record_audit(node.address, epoch, True, report, good[:2], sender=actors.outsider)
        assert result.gas_used > 21_000
        assert dep.verified_work_units(node.address, epoch) == batch.work_units
        with pytest.raises(ChainReplayError):
            dep.record_audit(node.address, epoch, True, report, good[:2])
        # A failed audit overturns the pass and voids the epoch's work for good.
        fail = [sign_audit(o, dep.poai_domain, node.address, epoch, batch.root, False, report) for o in oracles[1:3]]
        dep.record_audit(node.address, epoch, False, report, fail)
        assert dep.verified_work_units(node.address, epoch) == 0
        assert dep.epoch_record(node.address, epoch).status is EpochStatus.VOIDED
        with pytest.raises(ChainReplayError):
            dep.record_audit(node.address, epoch, True, report, good[:2])

    def test_audit_of_missing_root_reverts(self, deployment, actors):
        with pytest.raises(ChainError, match="RootNotPosted"):
            deployment.record_audit(actors.nodes[0].address, 999_999, True, bytes(32), [])

    def test_post_root_gas_is_constant_and_bounded(self, deployment, actors):
        dep, node = deployment, actors.nodes[1]
        gas = []
        for count in (1, 1_000, 100_000):
            gas.append(dep.post_epoch_root(node, next(_epochs), commit_bytes(b"%d" % count), count, count * 10**6)
                       .gas_used)
        assert max(gas) <= 80_000
        # Only calldata bytes of the counts differ (16 gas per non-zero byte): no dependence on size.
        assert max(gas) - min(gas) <= 16 * 8

    def test_inclusion_check_gas_at_depth_17(self, deployment, actors):
        dep, node = deployment, actors.nodes[1]
        epoch = next(_epochs)
        leaves = [commit_bytes(b"%d" % i) for i in range(2**16 + 1)]  # depth 17
        tree = MerkleTree(leaves)
        dep.post_epoch_root(node, epoch, tree.root, len(leaves), 1)
        proof = tree.proof(len(leaves) - 1)
        assert proof.depth == 17
        fn = dep.verifier.functions.verifyInclusion(node.address, epoch, leaves[-1], proof.index, list(proof.siblings))
        assert dep.chain.call(fn) is True
        gas = dep.chain.transact(fn, actors.outsider).gas_used
        assert gas - 21_000 <= 15_000


def _fields(t: Transcript) -> dict:
    return {f: getattr(t, f) for f in Transcript.__dataclass_fields__}


class TestAvailability:
    def test_claim_accrues_reward_units(self, deployment, actors):
        dep, node = deployment, actors.nodes[0]
        epochs = [next(_epochs) for _ in range(7)]
        avail = [255, 128, 0, 255, 17, 200, 255]
        sigs = [sign_availability(o, dep.ledger_domain, node.address, epochs, avail) for o in actors.oracles[:3]]
        before = dep.reward_units(node.address)
        result = dep.claim_availability(node, epochs, avail, sigs)
        assert result.gas_used <= 150_000
        assert dep.reward_units(node.address) - before == pytest.approx(sum(avail) / 255)
        assert (dep.reward_units(node.address) - before).denominator in (1, 3, 5, 15, 17, 51, 85, 255)
        assert all(dep.is_claimed(node.address, e) for e in epochs)
        # Replaying the claim, or any epoch of it, reverts.
        with pytest.raises(ChainReplayError) as info:
            dep.claim_availability(node, epochs, avail, sigs)
        assert info.value.error_name == "EpochAlreadyClaimed"
        e2 = [epochs[3]]
        sigs2 = [sign_availability(o, dep.ledger_domain, node.address, e2, [1]) for o in actors.oracles[:2]]
        with pytest.raises(ReplayError):
            dep.claim_availability(node, e2, [1], sigs2)

    def test_quorum_rules(self, deployment, actors):
        dep, node = deployment, actors.nodes[1]
        epochs = [next(_epochs), next(_epochs)]
        avail = [10, 20]
        good = [sign_availability(o, dep.ledger_domain, node.address, epochs, avail) for o in actors.oracles]
        outsider = sign_availability(actors.outsider, dep.ledger_domain, node.address, epochs, avail)
        other_node = sign_availability(actors.oracles[1], dep.ledger_domain, actors.nodes[0].address, epochs, avail)
        other_avail = sign_availability(actors.oracles[1], dep.ledger_domain, node.address, epochs, [10, 21])
        cases = {
            "below quorum": [good[0]],
            "duplicate": [good[0], good[0], good[0]],
            "malleated duplicate": [good[0], _malleate(good[0])],
            "non-oracle": [good[0], outsider],
            "unadmitted oracle": [good[0], good[3]],
            "other node": [good[0], other_node],
            "other availability": [good[0], other_avail],
            "garbage": [good[0], b"\x01" * 65, b"\x02" * 10],
        }
        for label, sigs in cases.items():
            with pytest.raises(ChainVerificationError) as info:
                dep.claim_availability(node, epochs, avail, sigs)
            assert info.value.error_args == {"valid": 1, "required": 2}, label
        assert not dep.is_claimed(node.address, epochs[0])
        dep.claim_availability(node, epochs, avail, [outsider, good[2], good[0]])
        assert dep.is_claimed(node.address, epochs[1])

    def test_claim_rules(self, deployment, actors):
        dep, node = deployment, actors.nodes[2]

        def claim(epochs, avail, who=node):
            sigs = [sign_availability(o, dep.ledger_domain, who.address, epochs, avail) for o in actors.oracles[:2]]
            return dep.claim_availability(who, epochs, avail, sigs)

        current = dep.current_epoch()
        with pytest.raises(ChainError, match="EpochNotEnded"):
            claim([current], [255])
        with pytest.raises(ChainError, match="EpochNotEnded"):
            claim([current + 3], [255])
        a, b = next(_epochs), next(_epochs)
        with pytest.raises(ChainError, match="EpochsNotIncreasing"):
            claim([b, a], [1, 1])
        with pytest.raises(ChainError, match="EpochsNotIncreasing"):
            claim([a, a], [1, 1])
        with pytest.raises(ChainAuthorizationError):
            claim([a], [1], who=actors.nodes[3])
        with pytest.raises(ValueError):
            claim([a], [256])
        claim([a, b], [1, 2])
