"""Placement skips nodes without enough bonded stake on the StakeManager (``min_stake``)."""

from __future__ import annotations

import numpy as np
import pytest
from eth_account import Account

from edil import runtime as rt
from edil.proofs import Chain, Eip712Domain
from tests._economy import build_economy, post_and_audit
from tests.test_runtime_conformance import small_model


def _scheduler(registry, **kw) -> rt.Scheduler:
    return rt.Scheduler(
        rt.LocalExecutor(), registry, rt.Journal(":memory:"), identity=rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2),
        domain=Eip712Domain("EDIL PoAI", "1", 1, "0x" + "11" * 20), **kw,
    )


def test_min_stake_needs_a_stake_view_and_is_off_by_default() -> None:
    registry = rt.StaticRegistry([])
    with pytest.raises(ValueError):
        _scheduler(registry, min_stake=1)
    with pytest.raises(ValueError):
        _scheduler(registry, stake=lambda a: 0, min_stake=-1)
    assert _scheduler(registry).placement.min_stake == 0


def test_nodes_below_min_stake_get_no_task_and_a_slashed_node_drops_out() -> None:
    econ = build_economy(Chain.in_process(), slash_bps=5000)
    dep = econ.dep
    staked, bare = rt.NodeIdentity.from_seed(b"s" * 32), rt.NodeIdentity.from_seed(b"b" * 32)
    dep.stake_tokens(econ.operator, staked.address, 150)
    dep.stake_tokens(econ.operator, bare.address, 99)
    registry = rt.StaticRegistry([staked.address, bare.address])
    sched = _scheduler(registry, stake=dep.stake_of, min_stake=100)
    for seed in (b"s" * 32, b"b" * 32):
        sched.launch(rt.NodeConfig(seed=seed, capabilities=rt.Capabilities()))
    sched.submit_many([rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True) for _ in range(4)])
    assert sched.run() == {"done": 4}
    assert {n for r in sched.results() for n in r.nodes} == {staked.address}
    assert sched.stats["skipped_unstaked"] > 0
    # The staked node's audit fails on chain: half its stake is slashed, it falls below the bar
    # and the next job goes nowhere but to a node that is staked enough.
    node = Account.from_key(staked.chain_key)
    dep.admit_node(node.address)
    dep.chain.fund(node.address, 10**18)
    epoch = dep.current_epoch() - 1
    post_and_audit(econ, node, epoch, None)
    dep.slash(node.address, epoch)
    assert dep.stake_of(staked.address) == 75
    dep.stake_tokens(econ.operator, bare.address, 1)
    sched.submit_many([rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True) for _ in range(2)])
    assert sched.run() == {"done": 6}  # counts of the whole journal
    assert {n for r in sched.results()[-2:] for n in r.nodes} == {bare.address}
    sched.executor.close()


def test_an_unreadable_stake_counts_as_none() -> None:
    def broken(address: str) -> int:
        raise ConnectionError("chain down")

    sched = _scheduler(rt.StaticRegistry([]), stake=broken, min_stake=1)
    assert sched.placement.stake_of("0x" + "22" * 20) == 0 and sched.stats["stake_errors"] == 1
