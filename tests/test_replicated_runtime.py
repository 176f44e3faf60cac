"""Replicated on runtime nodes: one party per node, pairwise keys only the pairs hold, sealed relayed
messages, signed transcripts; the same results as in process; a lying or crashing node is replaced."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from edil import Replicated, SerializationError, VerificationError, models
from edil import _replicated as rep
from edil import runtime as rt
from edil.proofs import Eip712Domain, transcript_from_wire
from edil.runtime import _replicated_session as rs
from edil.runtime.testing import Faults, faulty

F = 16


def scheme(tag: int) -> Replicated:
    return Replicated(seed=b"test-rep-runtime" + tag.to_bytes(16, "big"))


def relu_net() -> models.Sequential:
    rng = np.random.default_rng(4)
    return models.Sequential((models.Dense(rng.normal(size=(6, 8)) / 2, rng.normal(size=8) / 4), models.ReLU(),
                              models.Dense(rng.normal(size=(8, 4)) / 2, rng.normal(size=4) / 4)), kind="multiclass")


def scheduler(n: int, faults: dict[int, Faults] | None = None, factories: dict[int, Any] | None = None,
              ) -> tuple[rt.Scheduler, rt.LocalExecutor, rt.Journal, list[str]]:
    seeds = [bytes([0xA0 + i]) * 32 for i in range(n)]
    journal = rt.Journal(":memory:")
    domain = Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "11" * 20)
    addrs = [rt.NodeIdentity.from_seed(s).address for s in seeds]
    bad = {addrs[i] for i in (faults or {}) | (factories or {})}
    ex = rt.LocalExecutor()
    sched = rt.Scheduler(ex, rt.StaticRegistry(addrs), journal, identity=rt.CoordinatorIdentity.generate(), domain=domain,
                         availability=lambda a: 1.0 if a in bad else 0.5)  # faulty nodes are placed first
    for i, s in enumerate(seeds):
        if i in (factories or {}):
            sched.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities(), node_factory=(factories or {})[i]))
            continue
        sched.launch(faulty(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()), (faults or {}).get(i)))
    return sched, ex, journal, addrs


def test_three_nodes_compute_what_the_scheme_computes_and_sign_transcripts() -> None:
    model = relu_net()
    x = np.random.default_rng(5).normal(size=(5, 6))
    sched, ex, journal, _ = scheduler(3)
    try:
        s = scheme(1)
        y = sched.run_replicated(s, model, s.encode(x), job_id="rep-1")
        local = scheme(2)
        want = local.decode(models.encode_model(model, local)(local.encode(x)))
        np.testing.assert_allclose(s.decode(y), model.forward(x), atol=1e-3)
        np.testing.assert_allclose(s.decode(y), want, atol=1e-3)
        onehot = sched.run_replicated(s, model, s.encode(x), output="argmax", job_id="rep-2")
        np.testing.assert_array_equal(s.decode(onehot), np.eye(4)[model.forward(x).argmax(axis=1)])
        res = journal.results()
        assert len(res) == 2 and all(len(r.nodes) == 3 for r in res)
        for addr in res[0].nodes:  # every party returned a transcript signed by its node
            assert len(journal.transcripts(addr, res[0].epoch)) == 2
        assert sched.stats["openings"] >= 2 * (1 + 9 + 1)  # every protocol round went through the relay
        # the epoch audit's check of a replicated party: its transcript commits to its recorded pair
        rows = journal.transcripts(res[0].nodes[1], res[0].epoch)
        signed = [transcript_from_wire(rt._wire.loads(r[1])).transcript for r in rows]  # noqa: SLF001
        assert [rs.audit_party(journal, t) for t in signed] == [None, None]
        forged = dataclasses.replace(signed[0], output_commitment=b"\x00" * 32)
        assert rs.audit_party(journal, forged) == "transcript does not commit to the recorded output pair"
        # The README's journal cell for Replicated: the public parameters and the output sharings, no input.
        for job in journal.jobs("replicated"):
            assert set(rt._wire.loads(job.spec)) == {"params"}  # noqa: SLF001
        for r in res:
            assert set(rt._wire.loads(r.output)) == {"shares", "attempt"}  # noqa: SLF001
    finally:
        ex.close()


def test_a_crashing_node_and_a_lying_node_are_replaced() -> None:
    model = relu_net()
    x = np.random.default_rng(6).normal(size=(3, 6))
    # six nodes: a liar about one component cannot be told from the neighbour it disagrees with, so both leave
    sched, ex, journal, addrs = scheduler(6, {0: Faults("crash"), 1: Faults("wrong")})
    try:
        s = scheme(3)
        y = sched.run_replicated(s, model, s.encode(x), job_id="rep-3")
        np.testing.assert_allclose(s.decode(y), model.forward(x), atol=1e-3)
        assert not {addrs[0], addrs[1]} & set(journal.results()[-1].nodes)
        assert addrs[1] in [f[0] for f in journal.faults()]
    finally:
        ex.close()


def test_a_job_run_again_with_its_key_never_deals_a_sharing_twice(monkeypatch) -> None:
    # A caller retrying a failed job with the same id and key must not re-deal the same sharing: the
    # pairs could land on other nodes, and a node holding two pairs of one sharing holds the input.
    seeds: list[bytes] = []
    real = rs._fresh_pairs  # noqa: SLF001

    def spy(secret: np.ndarray, seed: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
        seeds.append(seed)
        return real(secret, seed)

    monkeypatch.setattr(rs, "_fresh_pairs", spy)
    model = relu_net()
    x = np.random.default_rng(9).normal(size=(2, 6))
    sched, ex, journal, _ = scheduler(3)
    try:
        s = scheme(5)
        for _ in range(2):
            y = sched.run_replicated(s, model, s.encode(x), job_id="rep-again", key=b"k" * 16)
            np.testing.assert_allclose(s.decode(y), model.forward(x), atol=1e-3)
        assert len(seeds) == 2 and seeds[0] != seeds[1]
    finally:
        ex.close()


class _BadReplies(rt.EdgeNode):
    """A node whose replicated replies carry what a byzantine node may send: ``field`` set to ``value``."""

    field, value, kind = "public", b"\x01" * 31, "rep_hello"

    def _reply(self, kind: str, body: Any) -> bytes:
        if kind == self.kind:
            body = {**body, self.field: self.value}
        return super()._reply(kind, body)


class _HugeSession(_BadReplies):
    # ``bytes(n)`` of a number is n zero bytes: a reply must never make the coordinator allocate what it names
    field, value, kind = "session", 200_000_000, "rep_round"


class _LowOrderPublic(_BadReplies):
    # 32 bytes, but a point of small order: every peer's key agreement with it fails, not this node's
    value = b"\x00" * 32


@pytest.mark.parametrize("node", [_BadReplies, _HugeSession, _LowOrderPublic])
def test_a_node_that_sends_a_malformed_field_is_blamed_and_the_coordinator_allocates_nothing_for_it(node) -> None:
    import tracemalloc

    model = relu_net()
    x = np.random.default_rng(10).normal(size=(2, 6))
    sched, ex, journal, addrs = scheduler(4, factories={0: node})  # the bad node is placed first
    bad = addrs[0]
    try:
        s = scheme(6)
        tracemalloc.start()
        try:
            y = sched.run_replicated(s, model, s.encode(x), job_id="rep-bad-field")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        np.testing.assert_allclose(s.decode(y), model.forward(x), atol=1e-3)
        assert bad not in journal.results()[-1].nodes and bad in [f[0] for f in journal.faults()]
        assert peak < 50_000_000, peak
    finally:
        ex.close()


def test_messages_are_sealed_under_the_pairwise_key() -> None:
    k = rs._message_key(b"\x01" * 32)  # noqa: SLF001
    sid = b"s" * 32
    msg = (np.arange(6, dtype=np.uint64).reshape(2, 3),)
    sealed = rs.seal(k, sid, 3, msg)
    np.testing.assert_array_equal(rs.unseal(k, sid, 3, sealed, msg)[0], msg[0])
    for bad in (lambda: rs.unseal(k, sid, 4, sealed, msg),  # another round
                lambda: rs.unseal(k, b"t" * 32, 3, sealed, msg),  # another session
                lambda: rs.unseal(rs._message_key(b"\x02" * 32), sid, 3, sealed, msg),  # noqa: SLF001 - another pair's key
                lambda: rs.unseal(k, sid, 3, sealed[:-1] + bytes([sealed[-1] ^ 1]), msg)):  # altered by the relay
        with pytest.raises(VerificationError):
            bad()
    with pytest.raises(SerializationError):
        rs.unseal(k, sid, 3, sealed, (np.zeros((3, 2), np.uint64),))  # a shape the round does not have


def test_a_node_refuses_keys_that_are_not_its_own_and_bad_models() -> None:
    party = rs._Party(b"s" * 32, 1, b"\x05" * 32)  # noqa: SLF001
    others = [rep.party_private_key(b"\x06" * 32, i).public_key().public_bytes_raw() for i in range(3)]
    share = (np.zeros((1, 6), np.uint64), np.zeros((1, 6), np.uint64))
    with pytest.raises(VerificationError):
        party.start(others, F, rs.model_to_bytes((("relu",),), []), share)
    for bad in (b"", b"\x00" * 7, rs.model_to_bytes((("private",),), []), rs.model_to_bytes((("public", True),), [])):
        with pytest.raises(SerializationError):
            rs.model_from_bytes(bad)
    layers = (("public", True), ("poly", (1, -2, 3)), ("maxpool", ((0, 1), (1, 2))), ("relu",), ("flatten",), ("argmax",))
    weights = [np.ones((3, 3), np.int64), np.zeros(3, np.uint64)]
    back, w = rs.model_from_bytes(rs.model_to_bytes(layers, weights))
    assert back == layers and all(np.array_equal(a, b) for a, b in zip(w, weights))


def test_three_nodes_over_nats() -> None:
    """The same session through NATS node daemons (the coordinator relays the sealed messages on the bus)."""
    model = relu_net()
    x = np.random.default_rng(7).normal(size=(2, 6))
    with rt.NatsServer() as server:
        ex = rt.NatsExecutor(server.url)
        registry = rt.StaticRegistry()
        sched = rt.Scheduler(ex, registry, rt.Journal(":memory:"), identity=rt.CoordinatorIdentity.generate(),
                             domain=Eip712Domain("EDIL PoAI", "1", 1337, "0x" + "11" * 20), timeout_s=60.0)
        try:
            for i in range(3):
                cfg = rt.NodeConfig(seed=bytes([0xB0 + i]) * 32, capabilities=rt.Capabilities((), 1 << 30))
                registry.admit(rt.NodeIdentity.from_seed(cfg.seed).address)
                sched.launch(cfg)
            s = scheme(5)
            y = sched.run_replicated(s, model, s.encode(x), output="argmax")
            np.testing.assert_array_equal(s.decode(y), np.eye(4)[model.forward(x).argmax(axis=1)])
        finally:
            ex.close()
