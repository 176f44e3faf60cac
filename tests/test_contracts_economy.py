"""The on-chain economy: reward token, job escrow paid for attested work, stake slashed on failed audits."""

from __future__ import annotations

import itertools

import pytest

from edil import AuthorizationError, ChainError, ReplayError
from edil.proofs import (
    Chain,
    ChainAuthorizationError,
    ChainFundsError,
    ChainReplayError,
    ChainTooEarlyError,
    ChainVerificationError,
    KycAttestation,
    sign_kyc_attestation,
)
from edil.proofs._hashing import keccak256
from tests._chain_fixtures import ANVIL_KEYS, anvil_node, make_key
from tests._economy import EPOCH, Economy, build_economy, claim_availability, post_and_audit, root_of

_jobs = itertools.count(1)


def _job_id() -> bytes:
    return keccak256(b"econ-job-%d" % next(_jobs))


@pytest.fixture(scope="module")
def econ() -> Economy:
    return build_economy(Chain.in_process())


def _open_job(econ: Economy, planned: list[int], amount: int, *, deadline_epochs: int = 2):
    dep = econ.dep
    epoch = dep.current_epoch()
    job_id = _job_id()
    deadline = dep.genesis_time + (epoch + deadline_epochs) * EPOCH
    dep.create_job(econ.client, job_id, epoch, [n.address for n in econ.nodes[: len(planned)]], planned, amount,
                   start_deadline=deadline)
    return job_id, epoch


class TestToken:
    def test_owner_mints_and_others_cannot(self, econ):
        dep = econ.dep
        before = dep.token_balance(econ.treasury.address)
        dep.mint(econ.treasury.address, 5)
        assert dep.token_balance(econ.treasury.address) == before + 5
        with pytest.raises(ChainAuthorizationError) as info:
            dep.chain.transact(dep.token.functions.mint(econ.client.address, 1), econ.client)
        assert info.value.error_name == "OwnableUnauthorizedAccount"

    def test_deposit_needs_allowance_and_balance(self, econ):
        dep = econ.dep
        epoch = dep.current_epoch()
        with pytest.raises(ChainFundsError) as info:
            dep.create_job(econ.client, _job_id(), epoch, [econ.nodes[0].address], [1], 10, start_deadline=0, approve=False)
        assert info.value.error_name == "ERC20InsufficientAllowance"
        poor = econ.nodes[0]
        with pytest.raises(ChainFundsError) as info:
            dep.create_job(poor, _job_id(), epoch, [econ.nodes[1].address], [1], 10**30, start_deadline=0)
        assert info.value.error_name == "ERC20InsufficientBalance"


class TestEscrow:
    def test_pays_attested_work_pro_rata_and_returns_the_rest(self, econ):
        dep = econ.dep
        n0, n1, n2 = econ.nodes
        client0 = dep.token_balance(econ.client.address)
        job_id, epoch = _open_job(econ, [100, 100, 200], 4000)
        assert dep.token_balance(econ.client.address) == client0 - 4000
        assert dep.job(job_id).remaining == 4000
        dep.advance_to_epoch(epoch + 1)
        post_and_audit(econ, n0, epoch, 100)  # all its planned work, attested
        post_and_audit(econ, n1, epoch, 50)  # half
        post_and_audit(econ, n2, epoch, None)  # failed audit
        with pytest.raises(ChainTooEarlyError) as info:
            dep.settle_job(job_id, n0.address)
        assert info.value.error_name == "AuditWindowOpen"
        dep.advance_to_epoch(epoch + 2)
        assert dep.chain.timestamp() >= dep.job_settle_after(job_id)
        dep.mint(n0.address, 1)  # a node that holds tokens already: the common case the gas target is for
        balances = [dep.token_balance(n.address) for n in econ.nodes]
        gas = dep.settle_job(job_id, n0.address, sender=econ.client).gas_used
        dep.settle_job(job_id, n1.address)
        dep.settle_job(job_id, n2.address)
        paid = [dep.token_balance(n.address) - b for n, b in zip(econ.nodes, balances)]
        assert paid == [1000, 500, 0]
        # Half of n1's share and all of the failed n2's share went back to the client.
        assert dep.token_balance(econ.client.address) == client0 - 1500
        info_ = dep.job(job_id)
        assert info_.remaining == 0 and info_.closed and info_.settled_count == 3
        assert gas <= 80_000
        for node in (n0, n2):
            with pytest.raises(ChainReplayError):
                dep.settle_job(job_id, node.address)

    def test_unaudited_or_silent_nodes_are_not_paid(self, econ):
        dep = econ.dep
        n0, n1, _ = econ.nodes
        client0 = dep.token_balance(econ.client.address)
        job_id, epoch = _open_job(econ, [7, 3], 1001)
        dep.advance_to_epoch(epoch + 1)
        dep.post_epoch_root(n0, epoch, root_of(n0.address, epoch))  # posted, never audited
        dep.advance_to_epoch(epoch + 2)
        before = [dep.token_balance(n.address) for n in (n0, n1)]
        dep.settle_job(job_id, n0.address)
        dep.settle_job(job_id, n1.address)
        assert [dep.token_balance(n.address) for n in (n0, n1)] == before
        assert dep.token_balance(econ.client.address) == client0  # every token back, rounding included

    def test_attested_units_are_paid_once_across_jobs(self, econ):
        dep = econ.dep
        n0 = econ.nodes[0]
        a, epoch = _open_job(econ, [80], 800)
        b, _ = _open_job(econ, [80], 8000)
        dep.advance_to_epoch(epoch + 1)
        post_and_audit(econ, n0, epoch, 100)
        dep.advance_to_epoch(epoch + 2)
        before = dep.token_balance(n0.address)
        dep.settle_job(a, n0.address)
        dep.settle_job(b, n0.address)
        # 80 units at 10 per unit in job a, the remaining 20 at 100 per unit in job b.
        assert dep.token_balance(n0.address) - before == 800 + 2000
        assert dep.escrow_reserved_units(n0.address, epoch) == 160
        assert dep.job_slot(a, n0.address) == (80, 0, True) and dep.job_slot(b, n0.address) == (80, 80, True)

    def test_unstarted_job_is_refunded_after_its_deadline(self, econ):
        dep = econ.dep
        client0 = dep.token_balance(econ.client.address)
        job_id, epoch = _open_job(econ, [5, 5], 999, deadline_epochs=3)
        dep.advance_to_epoch(epoch + 2)
        with pytest.raises(ChainTooEarlyError):
            dep.refund_unstarted(job_id)
        dep.advance_to_epoch(epoch + 3)
        dep.refund_unstarted(job_id, sender=econ.nodes[2])
        assert dep.token_balance(econ.client.address) == client0
        with pytest.raises(ChainReplayError):
            dep.refund_unstarted(job_id)
        with pytest.raises(ChainReplayError) as info:
            dep.settle_job(job_id, econ.nodes[0].address)
        assert info.value.error_name == "JobClosed"

    def test_started_job_is_not_refunded(self, econ):
        dep = econ.dep
        job_id, epoch = _open_job(econ, [5, 5], 999, deadline_epochs=2)
        dep.advance_to_epoch(epoch + 1)
        dep.post_epoch_root(econ.nodes[1], epoch, root_of(econ.nodes[1].address, epoch))
        dep.advance_to_epoch(epoch + 2)
        with pytest.raises(ChainVerificationError) as info:
            dep.refund_unstarted(job_id)
        assert info.value.error_args["node"] == econ.nodes[1].address

    def test_malformed_jobs_are_refused(self, econ):
        dep = econ.dep
        epoch = dep.current_epoch()
        nodes = [n.address for n in econ.nodes]
        job_id = _job_id()
        for args, name in (
            ((epoch, nodes[:2], [1, 0], 10), "ZeroPlannedUnits"),
            ((epoch, [nodes[0], nodes[0]], [1, 1], 10), "DuplicateNode"),
            ((epoch - 1, nodes[:1], [1], 10), "EpochAlreadyEnded"),
            ((epoch, [], [], 10), "EmptyJob"),
            ((epoch, nodes[:1], [1], 0), "ZeroAmount"),
        ):
            with pytest.raises(ChainError) as info:
                dep.create_job(econ.client, job_id, *args, start_deadline=0)
            assert info.value.error_name == name
        dep.create_job(econ.client, job_id, epoch, nodes[:1], [1], 10, start_deadline=0)
        with pytest.raises(ReplayError):
            dep.create_job(econ.client, job_id, epoch, nodes[:1], [1], 10, start_deadline=0)
        with pytest.raises(ChainError) as info:
            dep.settle_job(job_id, econ.nodes[2].address)
        assert info.value.error_name in {"AuditWindowOpen", "NotInJob"}


class TestStake:
    def test_stake_slash_unbond_withdraw(self, econ):
        dep = econ.dep
        node = econ.nodes[2]
        op = econ.operator
        dep.stake_tokens(op, node.address, 10_000)
        assert dep.stake_of(node.address) == 10_000
        assert dep.stake_info(node.address).operator == op.address
        with pytest.raises(AuthorizationError):
            dep.stake_tokens(econ.client, node.address, 1)
        epoch = dep.current_epoch()
        dep.advance_to_epoch(epoch + 1)
        post_and_audit(econ, node, epoch, 10)
        with pytest.raises(ChainError) as info:
            dep.slash(node.address, epoch)  # a passed audit is not slashable
        assert info.value.error_name == "EpochNotVoided"
        dep.request_unbond(op, node.address, 4_000)
        assert dep.stake_of(node.address) == 6_000
        bad = epoch + 1
        dep.advance_to_epoch(bad + 1)
        post_and_audit(econ, node, bad, None)
        treasury0 = dep.token_balance(econ.treasury.address)
        dep.slash(node.address, bad, sender=econ.client)
        # 10 % of the bonded and of the unbonding stake.
        assert dep.token_balance(econ.treasury.address) - treasury0 == 600 + 400
        info_ = dep.stake_info(node.address)
        assert (info_.bonded, info_.unbonding) == (5_400, 3_600)
        assert dep.is_slashed(node.address, bad) and not dep.is_slashed(node.address, epoch)
        with pytest.raises(ChainReplayError):
            dep.slash(node.address, bad)
        with pytest.raises(ChainTooEarlyError):
            dep.withdraw_stake(op, node.address)
        with pytest.raises(ChainAuthorizationError):
            dep.withdraw_stake(econ.client, node.address)
        with pytest.raises(ChainFundsError):
            dep.request_unbond(op, node.address, 5_401)
        dep.chain.advance_time(3 * EPOCH)
        op0 = dep.token_balance(op.address)
        dep.withdraw_stake(op, node.address)
        assert dep.token_balance(op.address) - op0 == 3_600
        assert dep.stake_info(node.address).unbonding == 0

    def test_attach_binds_the_economy(self, econ):
        dep = econ.dep
        again = dep.chain.attach(**dep.addresses)
        assert again.stake_of(econ.nodes[0].address) == dep.stake_of(econ.nodes[0].address)
        assert again.addresses == dep.addresses
        bare = dep.chain.attach(registry=dep.registry.address, ledger=dep.ledger.address, verifier=dep.verifier.address)
        with pytest.raises(ChainError):
            bare.stake_of(econ.nodes[0].address)


class TestAvailabilityRewards:
    def test_pool_is_split_pro_rata_and_voided_epochs_earn_nothing(self, econ):
        dep = econ.dep
        n0, n1, n2 = econ.nodes
        sponsor = econ.operator
        epoch = dep.current_epoch()
        sponsor0 = dep.token_balance(sponsor.address)
        dep.fund_reward_pool(sponsor, epoch, 1000)
        with pytest.raises(ChainReplayError):
            dep.fund_reward_pool(sponsor, epoch, 1)
        with pytest.raises(ChainError) as info:
            dep.register_for_reward(n0, epoch)
        assert info.value.error_name == "EpochNotEnded"
        dep.advance_to_epoch(epoch + 1)
        post_and_audit(econ, n2, epoch, None)  # n2's epoch is voided: its availability earns nothing
        for node, a in ((n0, 255), (n1, 85), (n2, 255)):
            claim_availability(econ, node, [epoch], [a])
        dep.register_for_reward(n0, epoch)
        dep.register_for_reward(n1, epoch)
        with pytest.raises(ChainError) as info:
            dep.register_for_reward(n2, epoch)
        assert info.value.error_name == "NothingEarned"
        with pytest.raises(ChainReplayError):
            dep.register_for_reward(n0, epoch)
        assert dep.reward_pool(epoch) == (sponsor.address, 1000, 340, False)
        with pytest.raises(ChainTooEarlyError):
            dep.claim_reward(n0.address, epoch)
        dep.advance_to_epoch(epoch + 2)
        before = [dep.token_balance(n.address) for n in (n0, n1)]
        dep.claim_reward(n0.address, epoch)
        dep.claim_reward(n1.address, epoch, sender=econ.client)
        got = [dep.token_balance(n.address) - b for n, b in zip((n0, n1), before)]
        assert got == [1000 * 255 // 340, 1000 * 85 // 340]
        with pytest.raises(ChainReplayError):
            dep.claim_reward(n0.address, epoch)
        assert dep.reward_entry(n0.address, epoch) == (255, True) and dep.reward_entry(n2.address, epoch) == (0, False)
        assert dep.token_balance(sponsor.address) == sponsor0 - 1000

    def test_epoch_voided_after_registration_pays_the_sponsor_back(self, econ):
        dep = econ.dep
        n0, n1, _ = econ.nodes
        sponsor = econ.operator
        epoch = dep.current_epoch()
        dep.fund_reward_pool(sponsor, epoch, 600)
        dep.advance_to_epoch(epoch + 1)
        for node in (n0, n1):
            claim_availability(econ, node, [epoch], [200])
            dep.register_for_reward(node, epoch)
        post_and_audit(econ, n1, epoch, None)
        dep.forfeit_availability(n1.address, [epoch])
        dep.advance_to_epoch(epoch + 2)
        sponsor0, n1_0, n0_0 = (dep.token_balance(a.address) for a in (sponsor, n1, n0))
        dep.claim_reward(n1.address, epoch)
        dep.claim_reward(n0.address, epoch)
        assert dep.token_balance(n1.address) == n1_0
        assert dep.token_balance(sponsor.address) - sponsor0 == 300
        assert dep.token_balance(n0.address) - n0_0 == 300

    def test_pool_without_registrations_goes_back(self, econ):
        dep = econ.dep
        epoch = dep.current_epoch()
        sponsor0 = dep.token_balance(econ.operator.address)
        dep.fund_reward_pool(econ.operator, epoch, 77)
        with pytest.raises(ChainTooEarlyError):
            dep.return_unclaimed_pool(epoch)
        dep.advance_to_epoch(epoch + 2)
        with pytest.raises(ChainError) as info:
            dep.fund_reward_pool(econ.operator, 0, 1)  # long past: nobody could register any more
        assert info.value.error_name == "RegistrationClosed"
        dep.return_unclaimed_pool(epoch)
        assert dep.token_balance(econ.operator.address) == sponsor0
        with pytest.raises(ChainError):
            dep.return_unclaimed_pool(epoch)


class TestLicences:
    def test_kyc_attested_licence_binds_nodes_and_revocation_unbinds_them(self, econ):
        dep = econ.dep
        attestor, stranger = make_key("kyc-attestor"), make_key("kyc-stranger")
        op = econ.operator
        dep.set_attestor(attestor.address)
        with pytest.raises(ChainError) as info:  # listing twice is refused
            dep.set_attestor(attestor.address)
        assert info.value.error_name == "AttestorAlreadyListed"
        dep.chain.fund(attestor.address, 10**18)
        with pytest.raises(ChainAuthorizationError):
            dep.chain.transact(dep.licence.functions.setAttestor(stranger.address, True), op)
        expiry = dep.chain.timestamp() + 3600
        att = KycAttestation(op.address, keccak256(b"kyc record of the operator"), expiry, 1)
        assert dep.chain.call(dep.licence.functions.attestationDigest(op.address, att.kyc_hash, expiry, 1)) == att.digest(
            dep.licence_domain
        )
        with pytest.raises(ChainAuthorizationError) as info:
            dep.mint_licence(att, sign_kyc_attestation(stranger.key, dep.licence_domain, att))
        assert info.value.error_name == "UnknownAttestor"
        sig = sign_kyc_attestation(attestor.key, dep.licence_domain, att)
        forged = KycAttestation(econ.client.address, att.kyc_hash, expiry, 1)  # the signature is not for this operator
        with pytest.raises(ChainAuthorizationError):
            dep.mint_licence(forged, sig)
        licence_id = dep.mint_licence(att, sig)
        assert dep.licence_holder(licence_id) == op.address
        with pytest.raises(ChainReplayError):
            dep.mint_licence(att, sig)
        late = KycAttestation(op.address, att.kyc_hash, dep.chain.timestamp() - 1, 2)
        with pytest.raises(ChainVerificationError):
            dep.mint_licence(late, sign_kyc_attestation(attestor.key, dep.licence_domain, late))
        # Up to K (8) nodes, only by the holder; a node is bound once.
        nodes = [make_key(f"licensed-{i}").address for i in range(9)]
        with pytest.raises(ChainAuthorizationError):
            dep.bind_node(econ.client, licence_id, nodes[0])
        for n in nodes[:8]:
            dep.bind_node(op, licence_id, n)
        with pytest.raises(ChainError) as info:
            dep.bind_node(op, licence_id, nodes[8])
        assert info.value.error_name == "LicenceFull"
        dep.unbind_node(op, licence_id, nodes[7])
        assert not dep.is_licensed_node(nodes[7])
        with pytest.raises(ChainReplayError):
            dep.bind_node(op, licence_id, nodes[0])
        assert sorted(dep.licence_nodes(licence_id)) == sorted(nodes[:7])
        assert all(dep.is_licensed_node(n) for n in nodes[:7])
        # Not transferable.
        with pytest.raises(ChainError) as info:
            dep.chain.transact(dep.licence.functions.transferFrom(op.address, econ.client.address, licence_id), op)
        assert info.value.error_name == "NotTransferable"
        # An attestor revokes: every node of the licence loses it at once, and it binds no more.
        with pytest.raises(ChainAuthorizationError):
            dep.revoke_licence(licence_id, sender=op)
        dep.revoke_licence(licence_id, sender=attestor)
        assert not any(dep.is_licensed_node(n) for n in nodes)
        assert dep.licence_nodes(licence_id) == []
        with pytest.raises(ChainAuthorizationError):
            dep.bind_node(op, licence_id, nodes[8])
        with pytest.raises(ChainAuthorizationError):
            dep.revoke_licence(licence_id)


def test_revoked_licence_nodes_earn_nothing_after_revocation():
    econ = build_economy(Chain.in_process(), require_licence=True)
    dep = econ.dep
    n0, n1, n2 = econ.nodes
    attestor = make_key("kyc-attestor-2")
    dep.set_attestor(attestor.address)
    expiry = dep.chain.timestamp() + 3600
    licences = []
    for i, (holder, node) in enumerate(((econ.operator, n0), (econ.client, n1))):
        att = KycAttestation(holder.address, keccak256(b"kyc-%d" % i), expiry, i)
        licence_id = dep.mint_licence(att, sign_kyc_attestation(attestor.key, dep.licence_domain, att))
        dep.bind_node(holder, licence_id, node.address)
        licences.append(licence_id)
    epoch = dep.current_epoch()
    with pytest.raises(ChainAuthorizationError) as info:
        dep.create_job(econ.client, _job_id(), epoch, [n0.address, n2.address], [1, 1], 10, start_deadline=0)
    assert info.value.error_name == "NodeNotLicensed"
    job_id = _job_id()
    dep.create_job(econ.client, job_id, epoch, [n0.address, n1.address], [10, 10], 2000, start_deadline=0)
    dep.advance_to_epoch(epoch + 1)
    post_and_audit(econ, n0, epoch, 10)
    post_and_audit(econ, n1, epoch, 10)
    dep.revoke_licence(licences[0])  # n0's operator loses its licence before the slots are settled
    dep.advance_to_epoch(epoch + 2)
    before = [dep.token_balance(n.address) for n in (n0, n1)]
    client0 = dep.token_balance(econ.client.address)
    dep.settle_job(job_id, n0.address)
    dep.settle_job(job_id, n1.address)
    assert [dep.token_balance(n.address) - b for n, b in zip((n0, n1), before)] == [0, 1000]
    assert dep.token_balance(econ.client.address) - client0 == 1000


@pytest.mark.anvil
def test_escrow_and_slash_on_anvil():
    with anvil_node() as url:
        econ = build_economy(Chain.from_url(url, ANVIL_KEYS))
        dep = econ.dep
        n0, n1, _ = econ.nodes
        job_id, epoch = _open_job(econ, [10, 10], 2000)
        dep.stake_tokens(econ.operator, n1.address, 1000)
        dep.advance_to_epoch(epoch + 1)
        post_and_audit(econ, n0, epoch, 10)
        post_and_audit(econ, n1, epoch, None)
        dep.advance_to_epoch(epoch + 2)
        client0 = dep.token_balance(econ.client.address)
        dep.settle_job(job_id, n0.address)
        dep.settle_job(job_id, n1.address)
        dep.slash(n1.address, epoch)
        assert dep.token_balance(n0.address) == 1000
        assert dep.token_balance(econ.client.address) - client0 == 1000
        assert dep.stake_of(n1.address) == 900
        assert dep.token_balance(econ.treasury.address) == 100


def test_each_error_selector_names_one_error():
    """Reverts are decoded by selector over every contract: two errors with one signature must
    also agree on their argument names, or a reason would be printed with another error's names."""
    import collections

    from edil.proofs._artifacts import CONTRACT_NAMES, load_artifact

    names = collections.defaultdict(set)
    for contract in CONTRACT_NAMES:
        for item in load_artifact(contract).abi:
            if item.get("type") == "error":
                sig = item["name"] + "(" + ",".join(i["type"] for i in item["inputs"]) + ")"
                names[sig].add(tuple(i["name"] for i in item["inputs"]))
    assert len(names) > 40
    assert {sig: n for sig, n in names.items() if len(n) > 1} == {}
