"""The EDIL contracts on an EVM, run identically on the in-process EVM and on a real anvil node."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edil import AuthorizationError, ChainError, ReplayError, VerificationError
from edil.proofs import (
    AuditAttestation,
    ChainAuthorizationError,
    ChainReplayError,
    ChainVerificationError,
    EpochBatch,
    EpochStatus,
    InclusionProof,
    MerkleTree,
    Transcript,
    attest_audit,
    commit_bytes,
    sign_audit,
    sign_availability,
    sign_transcript,
)
from edil.proofs._hashing import SECP256K1_N
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


def _signed(dep, node, epoch: int, n: int = 5):
    return [sign_transcript(t, node, dep.poai_domain) for t in _transcripts(node.address, epoch, n)]


def _attest(dep, oracles, batch: EpochBatch, signed, passed: bool, report: bytes = b"\x42" * 32):
    """The attestation honest oracles sign for a posted batch, and their signatures."""
    count, work = (batch.task_count, batch.work_units) if passed else (0, 0)
    att = AuditAttestation(batch.node, batch.epoch, batch.root, count, work, passed, report)
    return att, [attest_audit(o, dep.poai_domain, att, signed) for o in oracles]


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
        # The node posted its root alone: no figure counts before oracles attest one.
        assert (record.root, record.task_count, record.work_units) == (batch.root, 0, 0)
        assert record.status is EpochStatus.POSTED and dep.epoch_status(node.address, epoch) is EpochStatus.POSTED
        assert dep.epoch_status(node.address, epoch + 10_000) is EpochStatus.NONE
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
            dep.post_epoch_root(stranger, epoch, b"\x11" * 32)
        assert info.value.error_name == "NodeNotAdmitted"
        revoked = actors.nodes[2]
        dep.revoke_node(revoked.address)
        try:
            with pytest.raises(ChainAuthorizationError):
                dep.post_epoch_root(revoked, epoch, b"\x11" * 32)
        finally:
            dep.admit_node(revoked.address)
        dep.post_epoch_root(revoked, epoch, b"\x11" * 32)  # re-admitted: accepted

    def test_future_current_replayed_and_empty_roots_revert(self, deployment, actors):
        dep, node = deployment, actors.nodes[1]
        current = dep.current_epoch()
        for bad_epoch in (current, current + 5):
            with pytest.raises(ChainError) as info:
                dep.post_epoch_root(node, bad_epoch, b"\x22" * 32)
            assert info.value.error_name == "EpochNotEnded"
        epoch = next(_epochs)
        with pytest.raises(ChainError, match="ZeroRoot"):
            dep.post_epoch_root(node, epoch, bytes(32))
        dep.post_epoch_root(node, epoch, b"\x22" * 32)
        with pytest.raises(ChainReplayError) as info:
            dep.post_epoch_root(node, epoch, b"\x33" * 32)
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
        signed = _signed(dep, node, epoch, 3)
        batch = EpochBatch(signed, dep.poai_domain)
        dep.post_batch(node, batch)
        dep.chain.mine()
        assert len(dep.audit_beacon(node.address, epoch)) == 32
        assert dep.verified_work_units(node.address, epoch) == 0
        att, good = _attest(dep, oracles[:3], batch, signed, True)
        report = att.report_hash
        # One valid signature repeated, malleated, or from a non-oracle does not make a quorum of 2.
        for sigs in ([good[0], good[0]], [good[0], _malleate(good[0])],
                     [good[0], attest_audit(actors.outsider, dep.poai_domain, att, signed)],
                     [good[0], b"\x00" * 65], [good[0]]):
            with pytest.raises(ChainVerificationError) as info:
                dep.record_audit(att, sigs)
            assert info.value.error_args == {"valid": 1, "required": 2}
        # Signatures over another root do not count either.
        wrong_root = [sign_audit(o, dep.poai_domain, node.address, epoch, b"\x01" * 32, 3, batch.work_units, True,
                                 report) for o in oracles[:3]]
        with pytest.raises(VerificationError):
            dep.record_audit(att, wrong_root)
        result = dep.record_audit(att, good[:2], sender=actors.outsider)
        assert 21_000 < result.gas_used <= 100_000
        assert dep.verified_work_units(node.address, epoch) == batch.work_units
        record = dep.epoch_record(node.address, epoch)
        assert (record.task_count, record.work_units, record.status) == (3, batch.work_units, EpochStatus.VERIFIED)
        with pytest.raises(ChainReplayError):
            dep.record_audit(att, good[:2])
        # A failed audit overturns the pass, voids the epoch's work for good and attests no work.
        fail, fail_sigs = _attest(dep, oracles[1:3], batch, signed, False)
        assert dep.record_audit(fail, fail_sigs).gas_used <= 100_000
        assert dep.verified_work_units(node.address, epoch) == 0
        record = dep.epoch_record(node.address, epoch)
        assert (record.task_count, record.work_units, record.status) == (0, 0, EpochStatus.VOIDED)
        with pytest.raises(ChainReplayError):
            dep.record_audit(att, good[:2])

    def test_only_attested_figures_count(self, deployment, actors):
        """A node that wants 10^30 work units gets exactly what an oracle quorum recounted."""
        dep, node, oracles = deployment, actors.nodes[0], actors.oracles
        epoch = next(_epochs)
        signed = _signed(dep, node, epoch, 5)
        batch = EpochBatch(signed, dep.poai_domain)
        # The verifier takes no declared figure: the former post with a task count and work units is refused.
        legacy = dep.chain.w3.eth.contract(address=dep.verifier.address, abi=[{
            "type": "function", "name": "postEpochRoot", "stateMutability": "nonpayable", "outputs": [],
            "inputs": [{"name": "epoch", "type": "uint64"}, {"name": "root", "type": "bytes32"},
                       {"name": "taskCount", "type": "uint64"}, {"name": "workUnits", "type": "uint128"}]}])
        with pytest.raises(ChainError):
            dep.chain.transact(legacy.functions.postEpochRoot(epoch, batch.root, 5, 10**30), node)
        assert dep.epoch_status(node.address, epoch) is EpochStatus.NONE
        dep.post_batch(node, batch)
        dep.chain.mine()
        honest, _ = _attest(dep, oracles[:1], batch, signed, True)
        inflated = AuditAttestation(node.address, epoch, batch.root, 5, 10**30, True, honest.report_hash)
        # Honest oracles recount the batch and refuse to sign the inflated figures ...
        for o in oracles[:3]:
            with pytest.raises(VerificationError, match="differ from the batch"):
                attest_audit(o, dep.poai_domain, inflated, signed)
        # ... and one corrupt oracle's signature is below the quorum.
        corrupt = sign_audit(oracles[0], dep.poai_domain, node.address, epoch, batch.root, 5, 10**30, True,
                             honest.report_hash)
        with pytest.raises(ChainVerificationError) as info:
            dep.record_audit(inflated, [corrupt])
        assert info.value.error_args == {"valid": 1, "required": 2}
        # Honest signatures over the true figures do not make the inflated attestation pass either.
        honest, sigs = _attest(dep, oracles[:3], batch, signed, True)
        with pytest.raises(ChainVerificationError):
            dep.record_audit(inflated, [corrupt, *sigs])
        dep.record_audit(honest, sigs[:2])
        assert dep.verified_work_units(node.address, epoch) == batch.work_units == sum(1000 + i for i in range(5))
        record = dep.epoch_record(node.address, epoch)
        assert (record.task_count, record.work_units) == (5, batch.work_units)

    def test_attestation_shapes_the_contract_refuses(self, deployment, actors):
        dep, node, oracles = deployment, actors.nodes[0], actors.oracles
        epoch = next(_epochs)
        signed = _signed(dep, node, epoch, 2)
        batch = EpochBatch(signed, dep.poai_domain)
        dep.post_batch(node, batch)
        report = commit_bytes(b"report")

        def raw(count: int, work: int, passed: bool):
            sigs = [sign_audit(o, dep.poai_domain, node.address, epoch, batch.root, count, work, passed, report)
                    for o in oracles[:2]]
            fn = dep.verifier.functions.recordAudit(node.address, epoch, count, work, passed, report, sigs)
            return dep.chain.transact(fn, actors.outsider)

        with pytest.raises(ChainError) as info:
            raw(2, batch.work_units, False)  # a failure that still claims work
        assert info.value.error_name == "FiguresOnFailedAudit"
        with pytest.raises(ChainError) as info:
            raw(0, 0, True)  # a pass of an empty batch
        assert info.value.error_name == "EmptyBatch"
        assert dep.epoch_status(node.address, epoch) is EpochStatus.POSTED
        raw(2, batch.work_units, True)
        assert dep.verified_work_units(node.address, epoch) == batch.work_units

    def test_audit_digest_matches_solidity(self, deployment, actors):
        dep, node = deployment, actors.nodes[0]
        epoch = next(_epochs)
        signed = _signed(dep, node, epoch, 3)
        batch = EpochBatch(signed, dep.poai_domain)
        dep.post_batch(node, batch)
        for passed in (True, False):
            att, _ = _attest(dep, [], batch, signed, passed)
            assert dep.audit_digest(att) == att.digest(dep.poai_domain)

    def test_audit_of_missing_root_reverts(self, deployment, actors):
        att = AuditAttestation(actors.nodes[0].address, 999_999, bytes(32), 1, 1, True, bytes(32))
        with pytest.raises(ChainError, match="RootNotPosted"):
            deployment.record_audit(att, [])

    def test_post_root_gas_is_constant_and_bounded(self, deployment, actors):
        dep, node = deployment, actors.nodes[1]
        gas = []
        for count in (1, 1_000, 100_000):
            gas.append(dep.post_epoch_root(node, next(_epochs), commit_bytes(b"%d" % count)).gas_used)
        assert max(gas) <= 80_000
        # Only calldata bytes of the epoch and root differ (16 gas per non-zero byte): no dependence on size.
        assert max(gas) - min(gas) <= 16 * 8

    def test_inclusion_check_gas_at_depth_17(self, deployment, actors):
        dep, node = deployment, actors.nodes[1]
        epoch = next(_epochs)
        leaves = [commit_bytes(b"%d" % i) for i in range(2**16 + 1)]  # depth 17
        tree = MerkleTree(leaves)
        dep.post_epoch_root(node, epoch, tree.root)
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

    def test_voided_epochs_earn_no_availability(self, deployment, actors):
        dep, node, oracles = deployment, actors.nodes[1], actors.oracles
        voided, verified, pending, idle, late = (next(_epochs) for _ in range(5))
        batches = {}
        for e in (voided, verified, pending, late):
            signed = _signed(dep, node, e, 2)
            batches[e] = (EpochBatch(signed, dep.poai_domain), signed)
            dep.post_batch(node, batches[e][0])
        dep.chain.mine()
        for e, passed in ((voided, False), (verified, True)):
            dep.record_audit(*_attest(dep, oracles[:2], *batches[e], passed))
        assert [dep.epoch_status(node.address, e) for e in (voided, verified, pending, idle)] == [
            EpochStatus.VOIDED, EpochStatus.VERIFIED, EpochStatus.POSTED, EpochStatus.NONE]
        epochs = [voided, verified, pending, idle]
        avail = [255, 200, 100, 50]
        sigs = [sign_availability(o, dep.ledger_domain, node.address, epochs, avail) for o in oracles[:2]]
        before = dep.reward_units(node.address)
        result = dep.claim_availability(node, epochs, avail, sigs)
        assert result.gas_used <= 150_000
        # The voided epoch is claimed (it cannot be claimed again) but earns nothing.
        assert dep.reward_units(node.address) - before == Fraction(200 + 100 + 50, 255)
        assert all(dep.is_claimed(node.address, e) for e in epochs)
        assert [dep.earned_availability(node.address, e) for e in epochs] == [0, 200, 100, 50]
        with pytest.raises(ChainReplayError):
            dep.claim_availability(node, [voided], [255],
                                   [sign_availability(o, dep.ledger_domain, node.address, [voided], [255])
                                    for o in oracles[:2]])
        # Forfeiting needs a voided epoch ...
        for e in (verified, pending, idle):
            with pytest.raises(ChainError) as info:
                dep.forfeit_availability(node.address, [e], sender=actors.outsider)
            assert info.value.error_name == "EpochNotVoided"
        # ... so when the pending epoch's audit fails after the claim, anyone takes its reward back, once.
        dep.record_audit(*_attest(dep, oracles[:2], *batches[pending], False))
        dep.forfeit_availability(node.address, [pending], sender=actors.outsider)
        assert dep.reward_units(node.address) - before == Fraction(200 + 50, 255)
        assert dep.earned_availability(node.address, pending) == 0 and dep.is_claimed(node.address, pending)
        dep.forfeit_availability(node.address, [pending, voided], sender=actors.outsider)
        assert dep.reward_units(node.address) - before == Fraction(200 + 50, 255)
        # A voided epoch that was never claimed has nothing to forfeit.
        dep.record_audit(*_attest(dep, oracles[:2], *batches[late], False))
        with pytest.raises(ChainError) as info:
            dep.forfeit_availability(node.address, [late])
        assert info.value.error_name == "EpochNotClaimed"

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
