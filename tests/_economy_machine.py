"""A Hypothesis state machine over the economy contracts on py-evm, with a plain-Python model.

Every step is a real transaction; the model predicts each outcome (payment, refund, slash, or the
exact revert) and the invariants compare the chain with it after every step:

- conservation: every account's token balance equals its start plus what the model moved, and
  the escrow and stake contracts hold exactly the open jobs' remainders and the stakes
  (paid + refunded + slashed + held == deposited + minted, with nothing minted while it runs);
- nothing is paid twice: a slot settles once, and a node is never paid for more attested units of
  an epoch than the oracles attested, over all its jobs;
- no payment without an attested audit: a node earns only for a (node, epoch) with a passing audit;
- slashing never exceeds stake;
- availability rewards: a pool is paid pro rata to the registered availability, once per node,
  nothing for an epoch voided since registration, and a pool nobody registered for goes back whole
  (the reward contract holds exactly the pools' undistributed remainders);
- licences: every node runs under an operator licence (one licence holds two nodes); once a
  licence is revoked its nodes are no nodes (``isNode`` false), take no new job, post no root,
  and earn nothing after the revocation, from the escrow or the reward pools (their token balance
  stays what it was at revocation).

Each example starts from the same deployed chain (an EVM snapshot, reverted afterwards).
Used by tests/test_economy_invariants.py (a bounded run) and benchmarks/economy_invariants.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from edil import ChainError
from edil.proofs import Chain, EpochStatus, KycAttestation, sign_kyc_attestation
from edil.proofs._hashing import keccak256
from tests._chain_fixtures import make_key
from tests._economy import EPOCH, Economy, build_economy, claim_availability, post_and_audit

N_NODES = 3
SLASH_BPS = 2500
UNBONDING = 3 * EPOCH


#: Licence i binds the nodes LICENCE_NODES[i] (licence ids 1 and 2).
LICENCE_NODES = ((0, 1), (2,))


def _one_pass_gas_estimate(state, transaction) -> int:
    """Gas estimate of the machine's chain: one run at the block gas limit (a revert raises as in
    py-evm's own binary search, so reverts keep their decoded reason) and that limit as the answer.
    The machine checks balances, not gas (benchmarks/chain.py measures gas), and this spares the
    dozen re-executions per transaction of the binary search: about 40 % of a run's time."""
    from eth.vm.spoof import SpoofTransaction

    snapshot = state.snapshot()
    try:
        computation = state.apply_transaction(SpoofTransaction(transaction, gas=state.gas_limit, gas_price=0))
    finally:
        state.revert(snapshot)
    if computation.is_error:
        raise computation.error
    return int(state.gas_limit)


@functools.cache
def shared_economy() -> Economy:
    """One deployment for every example (each reverts to a snapshot of it), licensing on: the
    operator holds two KYC-attested licences, the first binding nodes 0 and 1, the second node 2."""
    chain = Chain.in_process()
    _tester(chain).backend.chain.gas_estimator = _one_pass_gas_estimate
    econ = build_economy(chain, n_nodes=N_NODES, slash_bps=SLASH_BPS, require_licence=True)
    dep = econ.dep
    attestor = make_key("machine-kyc-attestor")
    dep.set_attestor(attestor.address)
    for i, nodes in enumerate(LICENCE_NODES):
        att = KycAttestation(econ.operator.address, keccak256(b"machine-kyc-%d" % i), dep.chain.timestamp() + 3600, i)
        licence_id = dep.mint_licence(att, sign_kyc_attestation(attestor.key, dep.licence_domain, att))
        assert licence_id == i + 1
        for n in nodes:
            dep.bind_node(econ.operator, licence_id, econ.nodes[n].address)
    return econ


def _tester(chain: Chain):
    return chain._clock._tester  # type: ignore[attr-defined]  # the in-process EVM's snapshots


@dataclass
class JobModel:
    job_id: bytes
    epoch: int
    deadline: int
    amount: int
    nodes: list[int]
    planned: dict[int, int]
    offsets: dict[int, int]
    remaining: int
    settled: set[int] = field(default_factory=set)
    closed: bool = False


@dataclass
class PoolModel:
    epoch: int
    amount: int
    entries: dict[int, int] = field(default_factory=dict)  # node -> registered availability
    paid: set[int] = field(default_factory=set)
    held: int = 0
    returned: bool = False

    @property
    def total(self) -> int:
        return sum(self.entries.values())


@dataclass
class StakeModel:
    bonded: int = 0
    unbonding: int = 0
    unbond_at: int = 0
    staked: int = 0
    slashed: int = 0
    withdrawn: int = 0


class EconomyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.econ = econ = shared_economy()
        self.dep = econ.dep
        self.snapshot = _tester(econ.chain).take_snapshot()
        self.base_epoch = self.dep.current_epoch()
        self.accounts = {"client": econ.client.address, "operator": econ.operator.address, "treasury": econ.treasury.address}
        for i, n in enumerate(econ.nodes):
            self.accounts[f"node{i}"] = n.address
        self.start = {k: self.dep.token_balance(a) for k, a in self.accounts.items()}
        self.delta = dict.fromkeys(self.accounts, 0)
        self.start_escrow = self.dep.token_balance(self.dep.escrow.address)
        self.start_stake = self.dep.token_balance(self.dep.stake.address)
        self.jobs: list[JobModel] = []
        self.reserved: dict[tuple[int, int], int] = {}
        self.audits: dict[tuple[int, int], int | None] = {}  # (node, epoch) -> attested units, None = failed
        self.paid_units: dict[tuple[int, int], int] = {}
        self.stakes = [StakeModel() for _ in range(N_NODES)]
        self.slashed_epochs: set[tuple[int, int]] = set()
        self.counter = 0
        self.start_rewards = self.dep.token_balance(self.dep.rewards.address)
        self.pools: dict[int, PoolModel] = {}
        self.earned: dict[tuple[int, int], int] = {}  # (node, epoch) -> availability it earns in the ledger
        self.licensed = [True] * N_NODES
        self.revoked_licences: set[int] = set()
        self.balance_at_revocation: dict[int, int] = {}

    def teardown(self) -> None:
        _tester(self.econ.chain).revert_to_snapshot(self.snapshot)

    # -- helpers -------------------------------------------------------------------------------

    def _expect_revert(self, name: str, fn, *args, **kw) -> None:
        try:
            fn(*args, **kw)
        except ChainError as exc:
            assert getattr(exc, "error_name", None) == name, f"expected {name}, got {exc}"
        else:
            raise AssertionError(f"expected the chain to refuse with {name}")

    def _now(self) -> int:
        return self.econ.chain.timestamp()

    # -- escrow --------------------------------------------------------------------------------

    @rule(
        nodes=st.lists(st.integers(0, N_NODES - 1), min_size=1, max_size=N_NODES, unique=True),
        planned=st.lists(st.integers(1, 500), min_size=N_NODES, max_size=N_NODES),
        amount=st.integers(1, 10**9),
        deadline_epochs=st.integers(0, 3),
    )
    def create_job(self, nodes, planned, amount, deadline_epochs):
        self.counter += 1
        job_id = keccak256(b"machine-job-%d" % self.counter)
        epoch = self.dep.current_epoch()
        deadline = self.dep.genesis_time + (epoch + deadline_epochs) * EPOCH
        plan = {n: planned[n] for n in nodes}
        if not all(self.licensed[n] for n in nodes):
            return self._expect_revert(
                "NodeNotLicensed", self.dep.create_job, self.econ.client, job_id, epoch,
                [self.econ.nodes[n].address for n in nodes], [plan[n] for n in nodes], amount, start_deadline=deadline,
            )
        self.dep.create_job(
            self.econ.client, job_id, epoch, [self.econ.nodes[n].address for n in nodes], [plan[n] for n in nodes], amount,
            start_deadline=deadline,
        )
        offsets = {}
        for n in nodes:
            offsets[n] = self.reserved.get((n, epoch), 0)
            self.reserved[(n, epoch)] = offsets[n] + plan[n]
        self.jobs.append(JobModel(job_id, epoch, deadline, amount, list(nodes), plan, offsets, amount))
        self.delta["client"] -= amount

    @rule(
        nodes=st.lists(st.integers(0, N_NODES - 1), min_size=1, max_size=N_NODES, unique=True),
        planned=st.lists(st.integers(1, 500), min_size=N_NODES, max_size=N_NODES),
        amount=st.integers(1, 10**9),
        outcomes=st.lists(st.none() | st.just(0) | st.integers(1, 800), min_size=N_NODES, max_size=N_NODES),
    )
    def job_through_its_epoch(self, nodes, planned, amount, outcomes):
        """A job's whole life up to settlement: deposit, its epoch ends, the oracles audit each node
        (0: no root posted, None: a failed audit, else the attested units), the audit window passes."""
        count = len(self.jobs)
        self.create_job(nodes, planned, amount, 1)
        if len(self.jobs) == count:  # refused: a node of it has lost its licence
            return
        epoch = self.jobs[-1].epoch
        self.dep.advance_to_epoch(epoch + 1)
        for n in nodes:
            if outcomes[n] != 0:
                self._audit(n, epoch, outcomes[n])
        self.dep.advance_to_epoch(epoch + 2)

    @rule(epochs=st.integers(1, 2))
    def advance(self, epochs):
        self.dep.advance_to_epoch(self.dep.current_epoch() + epochs)

    @rule(node=st.integers(0, N_NODES - 1), back=st.integers(1, 3), units=st.none() | st.integers(1, 800))
    def audit(self, node, back, units):
        epoch = self.dep.current_epoch() - back
        if epoch >= self.base_epoch:
            self._audit(node, epoch, units)

    def _audit(self, node: int, epoch: int, units: int | None) -> None:
        """Post the node's root of ``epoch`` and record a quorum's audit (None: a failure). A node
        whose licence was revoked is no node: its root is refused."""
        if (node, epoch) in self.audits:
            return
        if not self.licensed[node]:
            addr = self.econ.nodes[node].address
            return self._expect_revert("NodeNotAdmitted", self.dep.post_epoch_root, self.econ.nodes[node], epoch, keccak256(addr.encode()))
        post_and_audit(self.econ, self.econ.nodes[node], epoch, units)
        self.audits[(node, epoch)] = units

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(0, 10**6), node=st.integers(0, N_NODES - 1), member=st.booleans())
    def settle(self, pick, node, member):
        job = self.jobs[pick % len(self.jobs)]
        if member:  # mostly a node of the job; sometimes any node
            node = job.nodes[node % len(job.nodes)]
        addr = self.econ.nodes[node].address
        if self._now() < self.dep.genesis_time + (job.epoch + 2) * EPOCH:  # the audit window is one epoch
            return self._expect_revert("AuditWindowOpen", self.dep.settle_job, job.job_id, addr)
        if job.closed:
            return self._expect_revert("JobClosed", self.dep.settle_job, job.job_id, addr)
        if node not in job.planned:
            return self._expect_revert("NotInJob", self.dep.settle_job, job.job_id, addr)
        if node in job.settled:
            return self._expect_revert("AlreadySettled", self.dep.settle_job, job.job_id, addr)
        attested = self.audits.get((node, job.epoch)) or 0
        # A node whose licence is revoked by settlement earns nothing: its share goes back.
        units = min(max(attested - job.offsets[node], 0), job.planned[node]) if self.licensed[node] else 0
        total = sum(job.planned.values())
        paid = job.amount * units // total
        last = len(job.settled) + 1 == len(job.planned)
        returned = job.remaining - paid if last else job.amount * job.planned[node] // total - paid
        before = self.dep.token_balance(addr)
        self.dep.settle_job(job.job_id, addr)
        assert self.dep.token_balance(addr) - before == paid
        job.settled.add(node)
        job.remaining -= paid + returned
        job.closed = last
        self.delta[f"node{node}"] += paid
        self.delta["client"] += returned
        self.paid_units[(node, job.epoch)] = self.paid_units.get((node, job.epoch), 0) + units

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(0, 10**6))
    def refund(self, pick):
        job = self.jobs[pick % len(self.jobs)]
        if job.closed or job.settled:
            return self._expect_revert("JobClosed", self.dep.refund_unstarted, job.job_id)
        if self._now() < job.deadline:
            return self._expect_revert("StartDeadlineNotReached", self.dep.refund_unstarted, job.job_id)
        if any((n, job.epoch) in self.audits for n in job.nodes):
            return self._expect_revert("JobStarted", self.dep.refund_unstarted, job.job_id)
        self.dep.refund_unstarted(job.job_id)
        self.delta["client"] += job.remaining
        job.remaining, job.closed = 0, True

    # -- stake ---------------------------------------------------------------------------------

    @rule(node=st.integers(0, N_NODES - 1), amount=st.integers(1, 10**6))
    def stake(self, node, amount):
        self.dep.stake_tokens(self.econ.operator, self.econ.nodes[node].address, amount)
        s = self.stakes[node]
        s.bonded += amount
        s.staked += amount
        self.delta["operator"] -= amount

    @rule(node=st.integers(0, N_NODES - 1), amount=st.integers(1, 10**6))
    def unbond(self, node, amount):
        s, addr = self.stakes[node], self.econ.nodes[node].address
        if s.staked == 0:
            return self._expect_revert("NotOperator", self.dep.request_unbond, self.econ.operator, addr, amount)
        if amount > s.bonded:
            return self._expect_revert("InsufficientStake", self.dep.request_unbond, self.econ.operator, addr, amount)
        self.dep.request_unbond(self.econ.operator, addr, amount)
        s.bonded -= amount
        s.unbonding += amount
        s.unbond_at = self._now() + UNBONDING

    @rule(node=st.integers(0, N_NODES - 1))
    def withdraw(self, node):
        s, addr = self.stakes[node], self.econ.nodes[node].address
        if s.staked == 0:
            return self._expect_revert("NotOperator", self.dep.withdraw_stake, self.econ.operator, addr)
        if s.unbonding == 0:
            return self._expect_revert("NothingUnbonding", self.dep.withdraw_stake, self.econ.operator, addr)
        # The transaction's block comes one second or more after the latest one.
        if self._now() + 1 < s.unbond_at:
            return self._expect_revert("StillUnbonding", self.dep.withdraw_stake, self.econ.operator, addr)
        self.dep.withdraw_stake(self.econ.operator, addr)
        self.delta["operator"] += s.unbonding
        s.withdrawn += s.unbonding
        s.unbonding = 0

    @initialize(amounts=st.lists(st.integers(0, 10**6), min_size=N_NODES, max_size=N_NODES))
    def initial_stakes(self, amounts):
        for node, amount in enumerate(amounts):
            if amount:
                self.stake(node, amount)

    @precondition(lambda self: self.audits)
    @rule(pick=st.integers(0, 10**6), other=st.booleans())
    def slash(self, pick, other):
        node, epoch = sorted(self.audits)[pick % len(self.audits)]
        if other:  # an epoch of that node that may not have been audited
            epoch = max(epoch - 1, 0)
        addr = self.econ.nodes[node].address
        if (node, epoch) not in self.audits or self.audits[(node, epoch)] is not None:
            return self._expect_revert("EpochNotVoided", self.dep.slash, addr, epoch)
        if (node, epoch) in self.slashed_epochs:
            return self._expect_revert("AlreadySlashed", self.dep.slash, addr, epoch)
        s = self.stakes[node]
        cut_b, cut_u = s.bonded * SLASH_BPS // 10_000, s.unbonding * SLASH_BPS // 10_000
        self.dep.slash(addr, epoch)
        s.bonded -= cut_b
        s.unbonding -= cut_u
        s.slashed += cut_b + cut_u
        self.slashed_epochs.add((node, epoch))
        self.delta["treasury"] += cut_b + cut_u

    # -- availability rewards --------------------------------------------------------------------

    def _closes(self, pool: PoolModel) -> int:
        return self.dep.genesis_time + (pool.epoch + 2) * EPOCH  # registration window: one epoch

    def _near(self, t: int) -> bool:
        """Within a second or two of ``t``: the next transaction's block may fall on either side."""
        return t - 2 <= self._now() < t

    @rule(
        amount=st.integers(1, 10**9),
        avails=st.lists(st.none() | st.integers(0, 255), min_size=N_NODES, max_size=N_NODES),
        outcomes=st.lists(st.none() | st.just(0) | st.integers(1, 800), min_size=N_NODES, max_size=N_NODES),
    )
    def pool_through_its_epoch(self, amount, avails, outcomes):
        """A reward pool up to its registration: funded for the current epoch, which then ends; the
        oracles audit some nodes (0: not audited now, None: a failure that voids the epoch), each
        node claims its availability with the oracle quorum (None: no claim) and registers what it
        earns. Registration stays open until the next epoch ends."""
        epoch = self.dep.current_epoch()
        if epoch in self.pools:
            return
        self.dep.fund_reward_pool(self.econ.client, epoch, amount)
        pool = self.pools[epoch] = PoolModel(epoch, amount, held=amount)
        self.delta["client"] -= amount
        self.dep.advance_to_epoch(epoch + 1)
        for n in range(N_NODES):
            if outcomes[n] != 0:
                self._audit(n, epoch, outcomes[n])
        for n in range(N_NODES):
            if avails[n] is None:
                continue
            node = self.econ.nodes[n]
            if not self.licensed[n]:
                self._expect_revert("NodeNotAdmitted", claim_availability, self.econ, node, [epoch], [avails[n]])
                continue
            claim_availability(self.econ, node, [epoch], [avails[n]])
            voided = (n, epoch) in self.audits and self.audits[(n, epoch)] is None
            earned = self.earned[(n, epoch)] = 0 if voided else avails[n]
            if earned == 0:
                self._expect_revert("NothingEarned", self.dep.register_for_reward, node.address, epoch)
                continue
            self.dep.register_for_reward(node.address, epoch)
            pool.entries[n] = earned

    @precondition(lambda self: self.pools)
    @rule(pick=st.integers(0, 10**6), node=st.integers(0, N_NODES - 1))
    def forfeit(self, pick, node):
        """Take back what a claimed epoch earned once a failed audit (after the claim) voided it."""
        epoch = sorted(self.pools)[pick % len(self.pools)]
        addr = self.econ.nodes[node].address
        if self.audits.get((node, epoch), 0) is not None:
            return self._expect_revert("EpochNotVoided", self.dep.forfeit_availability, addr, [epoch])
        if (node, epoch) not in self.earned:
            return self._expect_revert("EpochNotClaimed", self.dep.forfeit_availability, addr, [epoch])
        self.dep.forfeit_availability(addr, [epoch])
        self.earned[(node, epoch)] = 0

    @precondition(lambda self: self.pools)
    @rule(pick=st.integers(0, 10**6), node=st.integers(0, N_NODES - 1), member=st.booleans())
    def claim_reward(self, pick, node, member):
        pool = self.pools[sorted(self.pools)[pick % len(self.pools)]]
        if member and pool.entries:  # mostly a registered node; sometimes any node
            node = sorted(pool.entries)[node % len(pool.entries)]
        self._claim(pool, node)

    @precondition(lambda self: self.pools)
    @rule()
    def claim_due_rewards(self):
        """Claim every registered, unpaid reward whose registration has closed (a sweep, as a keeper would)."""
        for pool in self.pools.values():
            if self._now() >= self._closes(pool):
                for node in sorted(set(pool.entries) - pool.paid):
                    self._claim(pool, node)

    def _claim(self, pool: PoolModel, node: int) -> None:
        addr = self.econ.nodes[node].address
        closes = self._closes(pool)
        if self._near(closes):
            return
        if self._now() < closes:
            return self._expect_revert("RegistrationOpen", self.dep.claim_reward, addr, pool.epoch)
        if node not in pool.entries:
            return self._expect_revert("NotRegistered", self.dep.claim_reward, addr, pool.epoch)
        if node in pool.paid:
            return self._expect_revert("AlreadyPaid", self.dep.claim_reward, addr, pool.epoch)
        share = pool.amount * pool.entries[node] // pool.total
        self.dep.claim_reward(addr, pool.epoch)
        pool.paid.add(node)
        pool.held -= share
        # Nothing for an epoch voided since registration, nor for a node that lost its licence.
        if self.earned[(node, pool.epoch)] == 0 or not self.licensed[node]:
            self.delta["client"] += share
        else:
            self.delta[f"node{node}"] += share

    @precondition(lambda self: self.pools)
    @rule(pick=st.integers(0, 10**6))
    def return_pool(self, pick):
        pool = self.pools[sorted(self.pools)[pick % len(self.pools)]]
        closes = self._closes(pool)
        if self._near(closes):
            return
        if self._now() < closes:
            return self._expect_revert("RegistrationOpen", self.dep.return_unclaimed_pool, pool.epoch)
        if pool.entries or pool.returned:
            return self._expect_revert("PoolInUse", self.dep.return_unclaimed_pool, pool.epoch)
        self.dep.return_unclaimed_pool(pool.epoch)
        pool.returned, pool.held = True, 0
        self.delta["client"] += pool.amount

    # -- licences ------------------------------------------------------------------------------

    @rule(licence=st.integers(0, len(LICENCE_NODES) - 1), roll=st.integers(0, 3))
    def revoke_licence(self, licence, roll):
        """The registry's owner revokes an operator licence: all its nodes stop being nodes. One
        draw in four only, so that most runs keep licensed nodes working for a while."""
        if roll != 0:
            return
        if licence in self.revoked_licences:
            return self._expect_revert("LicenceRevoked", self.dep.revoke_licence, licence + 1)
        self.dep.revoke_licence(licence + 1)
        self.revoked_licences.add(licence)
        for n in LICENCE_NODES[licence]:
            self.licensed[n] = False
            self.balance_at_revocation[n] = self.dep.token_balance(self.econ.nodes[n].address)

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def conservation(self):
        dep = self.dep
        for key, addr in self.accounts.items():
            assert dep.token_balance(addr) == self.start[key] + self.delta[key], key
        held = sum(j.remaining for j in self.jobs)
        assert dep.token_balance(dep.escrow.address) - self.start_escrow == held
        stake_held = sum(s.bonded + s.unbonding for s in self.stakes)
        assert dep.token_balance(dep.stake.address) - self.start_stake == stake_held
        pools_held = sum(p.held for p in self.pools.values())
        assert dep.token_balance(dep.rewards.address) - self.start_rewards == pools_held
        deposited = sum(j.amount for j in self.jobs) + sum(p.amount for p in self.pools.values())
        paid = sum(self.delta[f"node{i}"] for i in range(N_NODES))
        returned = self.delta["client"] + deposited
        assert paid + returned + held + pools_held == deposited
        staked = sum(s.staked for s in self.stakes)
        assert sum(s.slashed + s.withdrawn for s in self.stakes) + stake_held == staked

    @invariant()
    def paid_only_for_attested_units_once(self):
        for (node, epoch), units in self.paid_units.items():
            attested = self.audits.get((node, epoch))
            assert units == 0 or attested is not None, "paid without a passing audit"
            assert units <= (attested or 0)
            if units:
                assert self.dep.epoch_status(self.econ.nodes[node].address, epoch) == EpochStatus.VERIFIED

    @invariant()
    def revoked_licences_nodes_earn_nothing(self):
        for n, ok in enumerate(self.licensed):
            addr = self.econ.nodes[n].address
            assert self.dep.is_node(addr) == ok
            if not ok:
                assert self.dep.token_balance(addr) == self.balance_at_revocation[n]

    @invariant()
    def rewards_paid_once_and_pro_rata(self):
        for pool in self.pools.values():
            if pool.entries:
                assert sum(pool.amount * a // pool.total for a in pool.entries.values()) <= pool.amount
                # Rounding leaves at most one token unit per registered node once all are paid.
                if len(pool.paid) == len(pool.entries):
                    assert 0 <= pool.held < len(pool.entries)
            for n in pool.entries:
                assert self.dep.reward_entry(self.econ.nodes[n].address, pool.epoch) == (pool.entries[n], n in pool.paid)

    @invariant()
    def slashing_never_exceeds_stake(self):
        for i, s in enumerate(self.stakes):
            assert s.slashed <= s.staked
            info = self.dep.stake_info(self.econ.nodes[i].address)
            assert (info.bonded, info.unbonding) == (s.bonded, s.unbonding)
