"""A Hypothesis state machine over the economy contracts on py-evm, with a plain-Python model.

Every step is a real transaction; the model predicts each outcome (payment, refund, slash, or the
exact revert) and the invariants compare the chain with it after every step:

- conservation: every account's token balance equals its start plus what the model moved, and
  the escrow and stake contracts hold exactly the open jobs' remainders and the stakes
  (paid + refunded + slashed + held == deposited + minted, with nothing minted while it runs);
- nothing is paid twice: a slot settles once, and a node is never paid for more attested units of
  an epoch than the oracles attested, over all its jobs;
- no payment without an attested audit: a node earns only for a (node, epoch) with a passing audit;
- slashing never exceeds stake.

Each example starts from the same deployed chain (an EVM snapshot, reverted afterwards).
Used by tests/test_economy_invariants.py (a bounded run) and benchmarks/economy_invariants.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from edil import ChainError
from edil.proofs import Chain, EpochStatus
from edil.proofs._hashing import keccak256
from tests._economy import EPOCH, Economy, build_economy, post_and_audit

N_NODES = 3
SLASH_BPS = 2500
UNBONDING = 3 * EPOCH


@functools.cache
def shared_economy() -> Economy:
    """One deployment for every example (each reverts to a snapshot of it)."""
    return build_economy(Chain.in_process(), n_nodes=N_NODES, slash_bps=SLASH_BPS)


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
        self.create_job(nodes, planned, amount, 1)
        epoch = self.jobs[-1].epoch
        self.dep.advance_to_epoch(epoch + 1)
        for n in nodes:
            if outcomes[n] != 0 and (n, epoch) not in self.audits:
                post_and_audit(self.econ, self.econ.nodes[n], epoch, outcomes[n])
                self.audits[(n, epoch)] = outcomes[n]
        self.dep.advance_to_epoch(epoch + 2)

    @rule(epochs=st.integers(1, 2))
    def advance(self, epochs):
        self.dep.advance_to_epoch(self.dep.current_epoch() + epochs)

    @rule(node=st.integers(0, N_NODES - 1), back=st.integers(1, 3), units=st.none() | st.integers(1, 800))
    def audit(self, node, back, units):
        epoch = self.dep.current_epoch() - back
        if epoch < self.base_epoch or (node, epoch) in self.audits:
            return
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
        units = min(max(attested - job.offsets[node], 0), job.planned[node])
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
        deposited = sum(j.amount for j in self.jobs)
        paid = sum(self.delta[f"node{i}"] for i in range(N_NODES))
        returned = self.delta["client"] + deposited
        assert paid + returned + held == deposited
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
    def slashing_never_exceeds_stake(self):
        for i, s in enumerate(self.stakes):
            assert s.slashed <= s.staked
            info = self.dep.stake_info(self.econ.nodes[i].address)
            assert (info.bonded, info.unbonding) == (s.bonded, s.unbonding)
