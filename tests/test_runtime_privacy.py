"""Privacy invariants of Masked jobs on nodes, as properties over random fault schedules.

(i)  No node ever receives two shares of one sharing: whatever crashes, retries, coordinator
     restarts and revocations happen, no set of ``n`` input shares (or weight shares) that one
     node received sums to the secret, and no two sessions reuse dealer material.
(ii) Weights leave the coordinator in the clear only when the model is declared public.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edil import FixedPoint, Masked, RuntimeTaskError
from edil import runtime as rt
from edil.proofs import Eip712Domain
from edil.runtime.testing import FaultyNode
from tests.test_runtime_conformance import small_model

DOMAIN = Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "11" * 20)
SEEDS = [bytes([0xA0 + i]) * 32 for i in range(6)]
ADDRESSES = [rt.NodeIdentity.from_seed(s).address for s in SEEDS]


class CoordinatorCrash(BaseException):
    """Raised inside the coordinator's wait, as a kill would stop it: nothing catches it."""


class RecordingNode(FaultyNode):
    """A node that keeps everything it is sent, crashes after ``crash_after`` session steps, and
    can take the coordinator down with it (``kill_coordinator``) to drill a restart."""

    def __init__(self, *args: Any, log: list[tuple[str, dict[str, Any]]], plan: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log, self.plan, self.steps = log, plan, 0

    def _mpc_start(self, body: Any) -> bytes:
        self.log.append((self.address, dict(body)))
        self._maybe_fail()
        return super()._mpc_start(body)

    def _mpc_step(self, body: Any) -> bytes:
        self._maybe_fail()
        return super()._mpc_step(body)

    def _maybe_fail(self) -> None:
        self.steps += 1
        mine = self.plan.get(self.address)
        if mine is None or self.steps <= mine[1]:
            return
        self.plan.pop(self.address)
        if mine[0] == "crash":
            raise RuntimeError("node crashed (injected)")
        raise CoordinatorCrash


def _views(log: list[tuple[str, dict[str, Any]]]) -> dict[str, list[tuple[int, np.ndarray, list[np.ndarray]]]]:
    """Per node: (party, input share, weight arrays) of every session start it received."""
    from edil.runtime._mpc_session import party_model_from_bytes

    out: dict[str, list[tuple[int, np.ndarray, list[np.ndarray]]]] = {}
    for addr, body in log:
        _, weights = party_model_from_bytes(bytes(body["model"]))
        out.setdefault(addr, []).append((int(body["party"]), rt.array_from_bytes(body["share"]), weights))
    return out


def _reconstructs(arrays: list[np.ndarray], secret: np.ndarray, n: int) -> bool:
    with np.errstate(over="ignore"):
        for combo in itertools.combinations(arrays, n):
            if all(c.shape == secret.shape for c in combo) and np.array_equal(np.sum(np.stack(combo), axis=0, dtype=np.uint64), secret):
                return True
    return False


schedules = st.fixed_dictionaries(
    {
        "n": st.sampled_from([2, 3]),
        "nodes": st.integers(4, 6),
        "model_public": st.booleans(),
        # per node: nothing, a crash after k session steps, or a coordinator kill after k steps
        "faults": st.lists(st.tuples(st.sampled_from(["ok", "crash", "kill"]), st.integers(0, 6)), min_size=6, max_size=6),
        "revoked": st.lists(st.integers(0, 5), max_size=2),
    }
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules)
def test_no_node_ever_holds_a_whole_sharing(schedule: dict[str, Any]) -> None:
    n, count = schedule["n"], schedule["nodes"]
    log: list[tuple[str, dict[str, Any]]] = []
    plan = {ADDRESSES[i]: (kind, k) for i, (kind, k) in enumerate(schedule["faults"][:count]) if kind != "ok"}
    registry = rt.StaticRegistry(ADDRESSES[:count])
    journal = rt.Journal(":memory:")
    ex = rt.LocalExecutor()
    coord = rt.CoordinatorIdentity.generate()

    def scheduler() -> rt.Scheduler:
        s = rt.Scheduler(ex, registry, journal, identity=coord, domain=DOMAIN, max_attempts=3, timeout_s=5)
        for addr in ADDRESSES[:count]:
            if addr in launched and registry.is_admitted(addr):
                s.add_node(launched[addr])
        return s

    launched: dict[str, Any] = {}
    sched = scheduler()
    for seed in SEEDS[:count]:
        config = rt.NodeConfig(seed=seed, capabilities=rt.Capabilities())
        config = dataclasses.replace(config, node_factory=functools.partial(RecordingNode, log=log, plan=plan))
        card = sched.launch(config)
        launched[card.address] = card
    for i in schedule["revoked"]:
        if i < count:
            registry.revoke(ADDRESSES[i])

    model, x = small_model(1), np.random.default_rng(0).normal(size=(3, 4))
    scheme = Masked(n, key=jax.random.key(5))
    shared = scheme.encode(x)
    secret = FixedPoint(16).encode(x)
    restarts = 0
    try:
        sched.run_masked(scheme, model, shared, model_public=schedule["model_public"], job_id="job")
    except CoordinatorCrash:
        restarts += 1
    except RuntimeTaskError:
        pass
    while restarts and journal.pending():  # restarted coordinators resume from the journal
        try:
            scheduler().run()
        except CoordinatorCrash:
            restarts += 1
    ex.close()

    views = _views(log)
    weights = [FixedPoint(16).encode(layer.weight) for layer in model.layers if hasattr(layer, "weight")]
    for addr, seen in views.items():
        # (i) no n input shares one node received reconstruct the input
        assert not _reconstructs([s for _, s, _ in seen], secret, n), f"{addr} can reconstruct the input"
        if not schedule["model_public"]:
            for j, w in enumerate(weights):
                got = [ws[2 * j] for _, _, ws in seen]
                # (ii) a private model's weights never reach a node in the clear, nor as a whole sharing
                assert not any(np.array_equal(g, w) for g in got), f"{addr} received weights in the clear"
                assert not _reconstructs(got, w, n), f"{addr} can reconstruct a weight matrix"
        else:
            assert all(np.array_equal(ws[0].view(np.int64), weights[0].view(np.int64)) for _, _, ws in seen)
    # a fresh dealer stream per session: no two session starts carry the same dealer seed
    firsts = [bytes(body["material"]["seed"]) for _, body in log]
    assert len(set(firsts)) == len(firsts)
    # each revoked node got nothing
    for i in schedule["revoked"]:
        if i < count:
            assert ADDRESSES[i] not in views


def _recording_cluster(plan: dict[str, Any], availability: Any) -> tuple[rt.Scheduler, rt.LocalExecutor, list[Any], list[Any]]:
    """Three recording nodes behind one scheduler: ``(scheduler, executor, cards, log)``."""
    log: list[tuple[str, dict[str, Any]]] = []
    ex = rt.LocalExecutor()
    sched = rt.Scheduler(ex, rt.StaticRegistry(ADDRESSES[:3]), rt.Journal(":memory:"), identity=rt.CoordinatorIdentity.generate(),
                         domain=DOMAIN, availability=availability)
    cards = []
    for seed in SEEDS[:3]:
        config = dataclasses.replace(rt.NodeConfig(seed=seed, capabilities=rt.Capabilities()),
                                     node_factory=functools.partial(RecordingNode, log=log, plan=plan))
        cards.append(sched.launch(config))
    return sched, ex, cards, log


def test_a_retry_after_a_crash_lands_shares_of_fresh_sharings() -> None:
    """The reported attack: 2 parties, one node crashes mid-session, the job moves, and an honest
    node ends up in the other party's seat. Its two shares belong to different sharings."""
    sched, ex, _, log = _recording_cluster({ADDRESSES[0]: ("crash", 1)}, lambda a: {ADDRESSES[0]: 1.0, ADDRESSES[1]: 0.9}.get(a, 0.5))
    model, x = small_model(1), np.random.default_rng(1).normal(size=(3, 4))
    scheme = Masked(2, key=jax.random.key(6))
    y = sched.run_masked(scheme, model, scheme.encode(x))
    np.testing.assert_allclose(scheme.decode(y), model.forward(x), atol=1e-3)
    views = _views(log)
    assert len(views[ADDRESSES[1]]) == 2  # the honest node took part in both attempts
    secret = FixedPoint(16).encode(x)
    assert not _reconstructs([s for _, s, _ in views[ADDRESSES[1]]], secret, 2)
    ex.close()


@pytest.mark.parametrize("public", [True, False])
def test_journaled_attempts_survive_a_restart(public: bool) -> None:
    """The attempt counter is persisted before a session starts: a restarted coordinator never
    re-deals an attempt's material or re-randomisation."""
    sched, ex, cards, log = _recording_cluster({ADDRESSES[0]: ("kill", 2)}, lambda a: 1.0 if a == ADDRESSES[0] else 0.5)
    journal = sched.journal
    model, x = small_model(2), np.random.default_rng(2).normal(size=(3, 4))
    scheme = Masked(2, key=jax.random.key(7))
    with pytest.raises(CoordinatorCrash):
        sched.run_masked(scheme, model, scheme.encode(x), model_public=public, job_id="restart")
    assert journal.jobs()[-1].attempts == 1 and journal.jobs()[-1].status == "pending"
    again = rt.Scheduler(ex, sched.registry, journal, identity=sched.identity, domain=DOMAIN)
    for c in cards:
        again.add_node(c)
    again.run()
    assert journal.jobs()[-1].status == "done" and journal.jobs()[-1].attempts == 2
    first, second = (body for _, body in log[:1]), (body for _, body in log[-1:])
    assert bytes(next(first)["material"]["seed"]) != bytes(next(second)["material"]["seed"])
    ex.close()


def test_abandoned_sessions_do_not_pile_up_on_a_node(monkeypatch) -> None:
    """A party's crash abandons the session on the other nodes; a node keeps at most
    MAX_SESSIONS open ones and drops the oldest, so its memory stays bounded."""
    from edil.runtime import _node

    monkeypatch.setattr(_node, "MAX_SESSIONS", 1)
    # party 0 crashes at its first step: the others hold an abandoned session
    sched, ex, _, _ = _recording_cluster({ADDRESSES[0]: ("crash", 1)}, lambda a: {ADDRESSES[0]: 1.0, ADDRESSES[1]: 0.9}.get(a, 0.5))
    model, x = small_model(1), np.random.default_rng(3).normal(size=(3, 4))
    scheme = Masked(2, key=jax.random.key(8))
    y = sched.run_masked(scheme, model, scheme.encode(x))
    np.testing.assert_allclose(scheme.decode(y), model.forward(x), atol=1e-3)
    honest = ex.node(ADDRESSES[1])
    assert len(honest._sessions) == 0 and len(honest._session_meta) == 0  # the abandoned one was dropped
    ex.close()
