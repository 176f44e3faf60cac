"""Masked parties talk to each other over NATS: sealed, signed, per-session subjects, no opening through the coordinator.

The bus is guarded (:class:`~edil.runtime.BusAdmission`): every node is an NKey user that may
publish peer traffic only as itself and hear only what is addressed to it. The coordinator sends
each party its start (input share, model view, dealer seed) and collects output shares.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
import pytest

from edil import Masked, ReplayError, RuntimeTaskError, VerificationError
from edil import runtime as rt
from edil.models import Dense, ReLU, Sequential
from edil.proofs import Eip712Domain, commit_bytes, transcript_from_wire
from edil.runtime import _wire
from edil.runtime._mpc_session import PEER_KIND, Peer, PeerInbox, audit_party, peer_statement, peer_subject, statement_holds
from edil.runtime._nats import nkey_seed
from edil.runtime._transport import seal_envelope
from tests.test_runtime_conformance import fresh_seed

DOMAIN = Eip712Domain("EDIL PoAI", "1", 1337, "0x" + "11" * 20)
WAIT_S = 4.0  # how long a round waits for a silent peer in the fault test (the scheduler's timeout_s)


def relu_model() -> Sequential:
    """A ReLU between two dense layers: a secure comparison, so a session of many rounds."""
    rng = np.random.default_rng(11)
    return Sequential((Dense(rng.normal(size=(4, 3)), rng.normal(size=3)), ReLU(), Dense(rng.normal(size=(3, 2)), rng.normal(size=2))))


# --- the party's inbox, without a bus ----------------------------------------------------------------
def _parties(k: int = 3) -> tuple[list[rt.NodeIdentity], list[Peer]]:
    ids = [rt.NodeIdentity.from_seed(bytes([0x70 + i]) * 32) for i in range(k)]
    return ids, [Peer(i.address.lower(), bytes(i.signing.verify_key), bytes(i.box.public_key)) for i in ids]


def _msg(ids: list[rt.NodeIdentity], peers: list[Peer], sid: bytes, frm: int, to: int, rnd: int, *, signer: int | None = None,
         body_sid: bytes | None = None, now_ms: int = 1_000_000) -> bytes:
    contribution = b"c%d-%d" % (frm, rnd)
    statement = peer_statement(body_sid or sid, rnd, frm, commit_bytes(contribution))
    body = {"session": body_sid or sid, "round": rnd, "from": frm, "to": to, "contribution": contribution,
            "sig": ids[frm if signer is None else signer].signing.sign(statement).signature}
    return seal_envelope(PEER_KIND, body, signing_key=ids[frm if signer is None else signer].signing, recipient_box_key=peers[to].box_key,
                         nonce=os.urandom(16), now_ms=now_ms)


def test_a_party_takes_each_peer_contribution_once_in_its_round_and_refuses_the_rest() -> None:
    ids, peers = _parties()
    sid = b"\x05" * 32
    inbox = PeerInbox(sid, 0, peers, ids[0].box)
    subj = [peer_subject(sid, p.address, peers[0].address) for p in peers]
    now = 1_000_000
    first = _msg(ids, peers, sid, 1, 0, 1)
    inbox.accept(subj[1], first, now_ms=now)
    assert inbox.take() is None and inbox.missing() == [2]  # round 1 waits for party 2
    with pytest.raises(ReplayError):  # the same message again, as a replayer on the bus would send it
        inbox.accept(subj[1], first, now_ms=now)
    with pytest.raises(ReplayError):  # a second, freshly signed contribution of party 1 for round 1
        inbox.accept(subj[1], _msg(ids, peers, sid, 1, 0, 1), now_ms=now)
    with pytest.raises(VerificationError, match="out of order"):  # two rounds ahead cannot happen honestly
        inbox.accept(subj[2], _msg(ids, peers, sid, 2, 0, 3), now_ms=now)
    with pytest.raises(VerificationError):  # signed by party 1, on party 2's subject
        inbox.accept(subj[2], _msg(ids, peers, sid, 2, 0, 1, signer=1), now_ms=now)
    with pytest.raises(VerificationError):  # a message of another session on this session's subject
        inbox.accept(subj[2], _msg(ids, peers, sid, 2, 0, 1, body_sid=b"\x06" * 32), now_ms=now)
    with pytest.raises(VerificationError):  # sealed to party 1: party 0 cannot open it
        inbox.accept(subj[2], _msg(ids, peers, sid, 2, 1, 1), now_ms=now)
    with pytest.raises(VerificationError):  # stale beyond the freshness window
        inbox.accept(subj[2], _msg(ids, peers, sid, 2, 0, 1, now_ms=now - 10 * 60_000), now_ms=now)
    inbox.accept(subj[2], _msg(ids, peers, sid, 2, 0, 2), now_ms=now)  # party 2 one round ahead: kept for round 2
    assert inbox.take() is None
    inbox.accept(subj[2], _msg(ids, peers, sid, 2, 0, 1), now_ms=now)
    assert inbox.take() == {1: b"c1-1", 2: b"c2-1"} and inbox.round == 2
    with pytest.raises(ReplayError):  # round 1 is closed
        inbox.accept(subj[1], _msg(ids, peers, sid, 1, 0, 1), now_ms=now)
    inbox.accept(subj[1], _msg(ids, peers, sid, 1, 0, 2), now_ms=now)
    assert inbox.take() == {1: b"c1-2", 2: b"c2-2"}


# --- parties in threads, linked by queues: the party side, the coordinator's check, the auditor's replay --
class _Hub:
    """Peer links over in-memory queues, one per receiver (what the bus does, minus the bus)."""

    def __init__(self, addresses: list[str]) -> None:
        self.queues: dict[str, queue.Queue[tuple[str, bytes]]] = {a.lower(): queue.Queue() for a in addresses}

    def link(self, address: str) -> Any:
        queues = self.queues

        class Link:
            def open(self, session: bytes, senders: Any = None) -> queue.Queue[tuple[str, bytes]]:
                return queues[address.lower()]

            def close(self, session: bytes) -> None:
                pass

            def send(self, subject: str, data: bytes) -> None:
                queues[subject.split(".")[4]].put((subject, data))

        return Link()


def _local_session(tamper: int | None = None, *, reshape: bool = False, equivocate: int | None = None,
                   ) -> tuple[Any, Any, list[str], Any, list[tuple[np.ndarray, dict[str, Any]]]]:
    """A 3-party session of :func:`relu_model` run by :func:`run_direct_party` in three threads
    (``reshape``: the tampering party's round-2 contribution loses its last row instead;
    ``equivocate``: that party sends its lowest-index peer a shifted contribution in round 2,
    its other peer the protocol's, and commits to the protocol's)."""
    from edil.hazmat import mpc
    from edil.runtime._mpc_session import (
        PartySession,
        _arrays_from_bytes,
        _arrays_to_bytes,
        material_to_wire,
        new_job,
        run_direct_party,
    )

    model, x = relu_model(), np.random.default_rng(14).normal(size=(4, 4))
    scheme = Masked(3, key=jax.random.key(10))
    job = new_job(scheme, model, scheme.encode(x), model_public=False, key=b"local-direct-0001", check="replay")
    jid = b"\x09" * 32
    views, dealt = job.views(jid, 0), job.dealt(jid, 0)
    ids, peers = _parties()
    hub = _Hub([p.address for p in peers])
    sid = b"\x0a" * 32
    now = lambda: int(time.time() * 1000)  # noqa: E731
    results: list[Any] = [None] * 3

    def party(i: int) -> None:
        sess = PartySession(i, 3, job.frac_bits, views[i][0], views[i][1], material_to_wire(dealt, i))
        link = hub.link(peers[i].address)
        rounds = [0]

        def outgoing(b: bytes) -> bytes:  # a consistent lie in round 2 (what every peer gets)
            rounds[0] += 1
            if i != tamper or rounds[0] != 2:
                return b
            arrays = _arrays_from_bytes(b)
            if reshape:
                return _arrays_to_bytes(mpc.Tagged([a[:-1] for a in arrays], mpc.kinds_of(arrays)))
            with np.errstate(over="ignore"):
                return _arrays_to_bytes(mpc.Tagged([a + np.uint64(1 << 40) for a in arrays], mpc.kinds_of(arrays)))

        def to_peer(b: bytes, me: int, peer: int) -> bytes:
            if i != equivocate or rounds[0] != 2 or peer != (1 if me == 0 else 0):
                return b
            arrays = _arrays_from_bytes(b)
            with np.errstate(over="ignore"):
                return _arrays_to_bytes(mpc.Tagged([a + np.uint64(1 << 40) for a in arrays], mpc.kinds_of(arrays)))

        body = {"session": sid, "peers": [[p.address, p.signing_key, p.box_key] for p in peers], "peer_timeout_ms": 30_000,
                "deadline_ms": now() + 60_000}
        try:
            results[i] = run_direct_party(sess, body, link=link, identity=ids[i], outgoing=outgoing, clock_ms=now,
                                          nonce=lambda: os.urandom(16), to_peer=to_peer)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            results[i] = exc

    threads = [threading.Thread(target=party, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return job, (views, dealt), [p.address for p in peers], (model, x, scheme), results


SID = b"\x0a" * 32  # the session id of _local_session


def _keys() -> list[bytes]:
    return [p.signing_key for p in _parties()[1]]


def _traces(results: list[Any]) -> list[Any]:
    from edil.runtime._mpc_session import _trace_from_wire

    return [_trace_from_wire(_wire.loads(_wire.dumps(t)), 3) for _, t in results]  # as the coordinator reads them


def test_parties_open_every_round_among_themselves_as_the_coordinator_and_the_auditor_do() -> None:
    from edil.runtime._mpc_session import _judge, _simulate, _Trace, replay

    job, (views, dealt), nodes, (model, x, scheme), results = _local_session()
    assert all(isinstance(r, tuple) for r in results), results
    sim = _simulate(job, views, dealt.material, job.schedule()[1])
    openings, contribs, outs = sim
    assert len(openings) > 10
    traces = _traces(results)
    shares = [rt.array_to_bytes(out) for out, _ in results]
    judge = functools.partial(_judge, session=SID, keys=_keys())
    assert judge(nodes, sim, traces, shares) == []  # every party's contributions and openings are the protocol's
    # each party reports, per round, every peer's contribution as the protocol's, with the peer's signed statement
    for i, t in enumerate(traces):
        assert len(t.received) == len(openings)
        for r, row in enumerate(t.received):
            peers = [j for j in range(3) if j != i]
            assert [d for d, _ in row] == [contribs[j][r] for j in peers]
            assert all(statement_holds(_keys()[j], SID, r + 1, j, d, g) for j, (d, g) in zip(peers, row))
    assert all(t["refused"] == 0 for _, t in results)
    for i in range(3):  # the record (these openings) replays every party as the auditor does
        np.testing.assert_array_equal(replay(job, i, views[i][0], views[i][1], dealt.material[i], openings, contribs[i]), results[i][0])
    y = scheme.join([edil_share(scheme, i, r[0]) for i, r in enumerate(results)])
    np.testing.assert_allclose(scheme.decode(y), model.forward(x), atol=1e-3)  # fixed point, 16 fractional bits
    # an honest record with one output share changed names its party
    assert [a for a, _ in judge(nodes, sim, traces, [shares[0], shares[1], shares[0]])] == [nodes[2]]
    # a party that reports another opening than the protocol's contributions it received (by its own evidence) make
    lying = _Trace(traces[1].contributions, (b"\x00" * 32, *traces[1].openings[1:]), 0, traces[1].received)
    assert [a for a, _ in judge(nodes, sim, [traces[0], lying, traces[2]], shares)] == [nodes[1]]
    # a party that reports a contribution its peer never signed frames no one but itself
    row = list(traces[2].received[3])
    row[0] = (b"\x01" * 32, row[0][1])
    framing = dataclasses.replace(traces[2], received=(*traces[2].received[:3], tuple(row), *traces[2].received[4:]))
    assert judge(nodes, sim, [traces[0], traces[1], framing], shares) == [
        (nodes[2], "it reports a contribution of party 0 in round 4 that party did not sign")]


def test_a_party_that_lies_in_one_round_is_named_by_the_coordinators_check() -> None:
    from edil.runtime._mpc_session import _judge, _simulate

    job, (views, dealt), nodes, _, results = _local_session(tamper=1)
    assert all(isinstance(r, tuple) for r in results), results
    sim = _simulate(job, views, dealt.material, job.schedule()[1])
    judged = _judge(nodes, sim, _traces(results), [rt.array_to_bytes(out) for out, _ in results], session=SID, keys=_keys())
    assert judged == [(nodes[1], "its contribution in round 2 is not the protocol's")]


def _proof(why: str) -> list[tuple[bytes, bytes, bytes]]:
    """``(session, commitment, signature)`` of every statement a finding quotes."""
    session = bytes.fromhex(re.search(r"over session ([0-9a-f]{64})", why).group(1))
    return [(session, bytes.fromhex(d), bytes.fromhex(g)) for d, g in re.findall(r"([0-9a-f]{64}) signed ([0-9a-f]{128})", why)]


def test_a_party_that_sends_its_peers_different_contributions_is_named_with_its_two_signed_statements() -> None:
    from edil.runtime._mpc_session import _judge, _simulate

    job, (views, dealt), nodes, _, results = _local_session(equivocate=1)
    assert all(isinstance(r, tuple) for r in results), results  # the honest parties cannot tell: they finish
    sim = _simulate(job, views, dealt.material, job.schedule()[1])
    traces = _traces(results)
    assert traces[1].contributions[:2] == tuple(sim[1][1][:2])  # it committed to the protocol's contribution in round 2
    assert traces[0].openings[1] != traces[2].openings[1]  # its two peers opened round 2 differently
    ((who, why),) = _judge(nodes, sim, traces, [rt.array_to_bytes(out) for out, _ in results], session=SID, keys=_keys())
    assert who == nodes[1] and "equivocated in round 2" in why, why
    proof = _proof(why)  # two statements for one round, both signed by party 1: what anyone can check
    assert len(proof) == 2 and proof[0][1] != proof[1][1] and all(s == SID for s, _, _ in proof)
    assert all(statement_holds(_keys()[1], SID, 2, 1, d, g) for _, d, g in proof)
    assert not statement_holds(_keys()[0], SID, 2, 1, proof[0][1], proof[0][2])  # and no one else's


class _Suspensions:
    """What :func:`_gather` needs of a scheduler: it records whom it suspends."""

    def __init__(self) -> None:
        self.suspended: list[tuple[str, str]] = []

    def _suspend(self, addr: str, why: str) -> None:
        self.suspended.append((addr, why))


def test_a_peer_contribution_of_the_wrong_shape_names_that_peer_and_raises_no_numpy_error() -> None:
    from concurrent.futures import Future

    from edil import EdilError
    from edil.runtime._mpc_session import _gather

    _, _, nodes, _, results = _local_session(tamper=1, reshape=True)
    assert all(isinstance(r, EdilError) for r in results), results  # never a numpy ValueError from untrusted bytes
    for i in (0, 2):  # the honest parties refuse to open the round and name the peer that sent it
        assert isinstance(results[i], RuntimeTaskError) and nodes[1].lower() in str(results[i]).lower(), results[i]
    futs: list[Future[bytes]] = []
    for r in results:
        f: Future[bytes] = Future()
        f.set_exception(r)
        futs.append(f)
    sched, excluded = _Suspensions(), set()
    with pytest.raises(RuntimeTaskError):
        _gather(sched, nodes, futs, 1.0, 0.1, excluded)
    assert excluded == {nodes[1]} and [a for a, _ in sched.suspended] == [nodes[1]]  # only the party that sent it


def test_ring_arrays_from_the_wire_that_are_not_bytes_raise_serialization_error() -> None:
    from edil import SerializationError
    from edil.runtime._mpc_session import _arrays_from_bytes

    for bad in ([5], [None, b""], {"arrays": [7], "kinds": [0]}):
        with pytest.raises(SerializationError):
            _arrays_from_bytes(_wire.dumps(bad))


class _HugeSessionNode(rt.EdgeNode):
    """A node whose relayed contributions name their session by a number (``bytes(n)`` is n zero bytes)."""

    def _reply(self, kind: str, body: Any) -> bytes:
        return super()._reply(kind, {**body, "session": 200_000_000} if kind == "mpc_contrib" else body)


def test_a_relayed_party_with_a_malformed_reply_is_suspended_and_the_coordinator_allocates_nothing_for_it() -> None:
    import tracemalloc

    seeds = [bytes([0xB0 + i]) * 32 for i in range(4)]
    addrs = [rt.NodeIdentity.from_seed(s).address for s in seeds]
    ex = rt.LocalExecutor()
    sched = rt.Scheduler(ex, rt.StaticRegistry(addrs), rt.Journal(":memory:"), identity=rt.CoordinatorIdentity.generate(),
                         domain=DOMAIN, availability=lambda a: 1.0 if a == addrs[0] else 0.5)  # the bad node is placed first
    for i, s in enumerate(seeds):
        sched.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities(), node_factory=_HugeSessionNode if i == 0 else None))
    model, x = relu_model(), np.random.default_rng(15).normal(size=(2, 4))
    scheme = Masked(3, key=jax.random.key(11))
    try:
        tracemalloc.start()
        try:
            y = sched.run_masked(scheme, model, scheme.encode(x), key=b"relayed-bad-reply")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        np.testing.assert_allclose(scheme.decode(y), model.forward(x), atol=1e-3)  # fixed point, 16 fractional bits
        assert addrs[0] not in sched.results()[-1].nodes
        assert peak < 50_000_000, peak
    finally:
        ex.close()


def edil_share(scheme: Masked, i: int, data: np.ndarray) -> Any:
    from edil import Share

    return Share(scheme.scheme_id, i, 3, b"\x09" * 8, data)


# --- the guarded bus with four node daemons ----------------------------------------------------------
class Spy:
    """A full-access connection (the coordinator's NKey) listening to ``edil.mpc.>``; ``action`` sees the first message."""

    def __init__(self, url: str, seed: str, action: Callable[[Any, str, bytes], Any] | None = None) -> None:
        self.seen: list[tuple[str, int]] = []
        self.action = action
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc = self._run(self._connect(url, seed))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _connect(self, url: str, seed: str) -> Any:
        import nats

        nc = await nats.connect(url, nkeys_seed_str=seed, allow_reconnect=False)

        async def cb(msg: Any) -> None:
            self.seen.append((msg.subject, len(msg.data)))
            if self.action is not None:
                action, self.action = self.action, None
                await action(nc, msg.subject, bytes(msg.data))

        await nc.subscribe("edil.mpc.>", cb=cb)
        await nc.flush()
        return nc

    def close(self) -> None:
        self._run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def bus():
    ident = rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2)
    registry = rt.StaticRegistry()
    server = rt.NatsServer()
    admission = rt.BusAdmission(server, registry, ident.verify_key)
    seeds = [fresh_seed() for _ in range(5)]  # the fifth is admitted, launched by the test that needs it
    for s in seeds:
        card = rt.NodeIdentity.from_seed(s).card(rt.Capabilities((), 1 << 30))
        admission.add_card(card)
        registry.admit(card.address)
    admission.sync()
    server.start()
    ex = rt.NatsExecutor(server.url, identity=ident, blobs=True)  # large dealer material by R1FS CID
    sched = rt.Scheduler(ex, registry, rt.Journal(":memory:"), identity=ident, domain=DOMAIN, timeout_s=30.0)
    try:
        sched.launch(rt.NodeConfig(seed=seeds[0], capabilities=rt.Capabilities((), 1 << 30)))
        with ThreadPoolExecutor(3) as pool:  # the other processes start side by side
            cards = list(pool.map(lambda s: ex.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities((), 1 << 30)), sched.coordinator_keys), seeds[1:4]))
        for card in cards:
            sched.add_node(card)
        yield sched, ex, server, seeds, nkey_seed(bytes(ident.signing)), registry
    finally:
        ex.close()
        server.stop()


def test_the_bus_lets_a_party_send_only_as_itself_and_hear_only_what_is_for_it(bus) -> None:
    import nats

    sched, _, server, seeds, coord_seed, _ = bus
    a, b, c = (rt.NodeIdentity.from_seed(s).address for s in seeds[:3])
    sid = b"\x01" * 32
    spy = Spy(server.url, coord_seed)

    async def probe() -> list[str]:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        as_a = await nats.connect(server.url, allow_reconnect=False, error_cb=on_error, nkeys_seed_str=nkey_seed(bytes(rt.NodeIdentity.from_seed(seeds[0]).signing)))
        await as_a.publish(peer_subject(sid, b, c), b"as b")  # sending as another node: refused
        await as_a.subscribe(f"edil.mpc.*.*.{b.lower()}")  # hearing what is for another node: refused
        await as_a.subscribe("edil.mpc.>")  # hearing everything: refused
        await as_a.publish(peer_subject(sid, a, b), b"as a")  # its own: allowed
        await as_a.flush()
        await asyncio.sleep(0.5)
        await as_a.close()
        return errors

    try:
        errors = asyncio.run(probe())
    finally:
        spy.close()
    assert len([e for e in errors if "permissions violation" in e.lower()]) == 3, errors
    assert spy.seen == [(peer_subject(sid, a, b), 4)]  # the forged message never reached the bus


def test_a_session_runs_peer_to_peer_and_no_opening_passes_through_the_coordinator(bus) -> None:
    sched, _, server, _, coord_seed, _ = bus
    replayed: list[str] = []

    async def replay(nc: Any, subject: str, data: bytes) -> None:  # the first peer message, twice more, verbatim
        for _ in range(2):
            await nc.publish(subject, data)
        replayed.append(subject)

    spy = Spy(server.url, coord_seed, replay)
    model, x = relu_model(), np.random.default_rng(12).normal(size=(5, 4))
    scheme = Masked(3, key=jax.random.key(8))
    before = dict(sched.stats)
    try:
        y = sched.run_masked(scheme, model, scheme.encode(x), key=b"direct-session-01")
        time.sleep(0.3)  # the spy's last deliveries
    finally:
        spy.close()
    np.testing.assert_allclose(scheme.decode(y), model.forward(x), atol=1e-3)  # fixed point, 16 fractional bits
    rec = sched.results()[-1]
    rounds = sched.stats["openings"] - before.get("openings", 0)
    assert rounds > 10  # a comparison: many rounds, none of them relayed
    # The coordinator sent one start per party and nothing else; it received one result per party.
    assert sched.stats["sent"] - before.get("sent", 0) == 3
    assert sched.stats["peer_sessions"] - before.get("peer_sessions", 0) == 1
    # Every opening round crossed the bus between the parties themselves: each party to each other one.
    parties = {a.lower() for a in rec.nodes}
    subjects = [s.split(".") for s, _ in spy.seen]
    assert len({s[2] for s in subjects}) == 1 and len(subjects) == 3 * 2 * rounds + 2  # plus the spy's two replays
    assert all(s[3] in parties and s[4] in parties and s[3] != s[4] for s in subjects)
    output = _wire.loads(sched.journal.result(rec.job_id).output)
    assert len(output["openings"]) == rounds and len(replayed) == 1
    # The replayed messages were refused by their receiver (a ReplayError there), and the session went on.
    assert sched.stats["peer_refused"] - before.get("peer_refused", 0) >= 1
    # The auditor replays every party from the record: the openings are the ones the parties saw.
    job = sched.journal.job(rec.job_id)
    for addr in rec.nodes:
        ((_, record, ok),) = [r for r in sched.journal.transcripts(addr, 0) if r[0] == rec.job_id]
        t = transcript_from_wire(_wire.loads(record)).transcript
        assert ok and audit_party(job.spec, sched.journal.result(rec.job_id).output, rec.nodes, t) is None
    forged = dict(output, openings=[output["openings"][1], output["openings"][0], *output["openings"][2:]])
    t = transcript_from_wire(_wire.loads(sched.journal.transcripts(rec.nodes[0], 0)[-1][1])).transcript
    assert audit_party(job.spec, _wire.dumps(forged), rec.nodes, t) is not None  # other openings: the replay fails


def test_a_party_that_equivocates_over_the_bus_is_named_with_the_proof_and_the_job_moves_on(bus) -> None:
    from edil.runtime.testing import Faults, faulty

    sched, ex, _, seeds, _, registry = bus
    card = ex.launch(faulty(rt.NodeConfig(seed=seeds[4], capabilities=rt.Capabilities((), 1 << 30)), Faults("equivocate")),
                     sched.coordinator_keys)
    bad = card.address
    sched.add_node(card)
    sched.placement.availability = lambda a: 1.0 if a == bad else 0.5  # placed in the first attempt
    model, x = relu_model(), np.random.default_rng(16).normal(size=(3, 4))
    scheme = Masked(3, key=jax.random.key(12))
    before = dict(sched.stats)
    try:
        y = sched.run_masked(scheme, model, scheme.encode(x), key=b"direct-equivocate")
    finally:
        sched.placement.availability = None
        registry.revoke(bad)  # out of the later tests' sessions
        ex.kill(bad)
    np.testing.assert_allclose(scheme.decode(y), model.forward(x), atol=1e-3)  # fixed point, 16 fractional bits
    rec = sched.results()[-1]
    assert bad not in rec.nodes and sched.journal.job(rec.job_id).attempts == 2
    # The first attempt failed with the equivocating party named, and only it: the honest parties are not blamed.
    faults = [f for f in sched.journal.faults() if f[2] == rec.job_id]
    assert [(f[0], f[1]) for f in faults] == [(bad, 0)], faults
    why = faults[0][3]
    assert "attempt 0" in why and "equivocated in round 1" in why, why
    assert sched.stats["masked_cheaters"] - before.get("masked_cheaters", 0) == 1
    assert sched.stats["byzantine"] - before.get("byzantine", 0) == 1
    # The proof: two statements of one round signed by the equivocating node, over different contributions.
    proof = _proof(why)
    assert len(proof) == 2 and proof[0][1] != proof[1][1]
    as_party = [i for i in range(3) if all(statement_holds(card.signing_key, s, 1, i, d, g) for s, d, g in proof)]
    assert len(as_party) == 1  # both as the same party of that session, in round 1


def test_masked_sessions_started_side_by_side_on_overlapping_nodes_do_not_wait_for_each_other(bus) -> None:
    """Four sessions of three parties on four nodes at once: each pair shares two nodes at least.
    A node is in one direct session at a time; sessions whose starts reached two nodes in
    different orders would each wait there for the other until the peer timeout."""
    sched = bus[0]
    model, scheme = relu_model(), Masked(3, key=jax.random.key(13))
    xs = [np.random.default_rng(20 + k).normal(size=(2, 4)) for k in range(4)]
    encoded = [scheme.encode(x) for x in xs]
    before = dict(sched.stats)
    sched.timeout_s = WAIT_S
    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            ys = list(pool.map(lambda k: sched.run_masked(scheme, model, encoded[k], key=b"side-by-side-run-%02d" % k), range(4)))
        elapsed = time.monotonic() - t0
    finally:
        sched.timeout_s = 30.0
    for x, y in zip(xs, ys):
        np.testing.assert_allclose(scheme.decode(y), model.forward(x), atol=1e-3)  # fixed point, 16 fractional bits
    assert sched.stats["timeouts"] == before.get("timeouts", 0) and sched.stats["node_errors"] == before.get("node_errors", 0)
    assert [sched.journal.job(r.job_id).attempts for r in sched.results()[-4:]] == [1] * 4  # none failed and ran again
    assert elapsed < WAIT_S * 4, elapsed


def test_large_dealer_material_reaches_its_party_over_the_bus_by_cid(bus) -> None:
    from tests.test_mpc_material_cid import _model

    sched = bus[0]
    scheme = Masked(3, key=jax.random.key(14))
    x = np.random.default_rng(23).normal(size=(32, 32))
    before = dict(sched.stats)
    y = sched.run_masked(scheme, _model(), scheme.encode(x), key=b"direct-material-by-cid", model_public=True)
    np.testing.assert_allclose(scheme.decode(y), _model().forward(x), atol=2e-3)  # fixed point, 16 fractional bits
    delta = {k: sched.stats[k] - before.get(k, 0) for k in ("material_by_cid", "blob_fallbacks", "blob_unpins", "bytes_sent", "sent")}
    assert delta["material_by_cid"] == 1 and delta["blob_fallbacks"] == 0 and delta["blob_unpins"] == 1, delta
    assert delta["sent"] == 3 and delta["bytes_sent"] < 3 * 64 * 1024, delta  # three starts, none carrying the corrections


def test_a_silent_party_fails_the_session_within_the_bound_and_the_job_moves_on(bus) -> None:
    sched, ex, server, _, coord_seed, _ = bus
    stopped: list[str] = []

    async def freeze(nc: Any, subject: str, data: bytes) -> None:  # the first party to speak goes silent mid-session
        addr = next(a for a in ex._procs if a.lower() == subject.split(".")[3])  # noqa: SLF001
        os.kill(ex.pid(addr), signal.SIGSTOP)
        stopped.append(addr)

    model, x = relu_model(), np.random.default_rng(13).normal(size=(3, 4))
    scheme = Masked(3, key=jax.random.key(9))
    sched.run_masked(scheme, model, scheme.encode(x), key=b"direct-session-warm")  # every node warm: the wait measures silence
    sched.timeout_s, sched.max_attempts = WAIT_S, 1
    spy = Spy(server.url, coord_seed, freeze)
    try:
        t0 = time.monotonic()
        with pytest.raises(RuntimeTaskError, match="went silent") as err:
            sched.run_masked(scheme, model, scheme.encode(x), key=b"direct-session-02")
        elapsed = time.monotonic() - t0
        (addr,) = stopped
        assert addr in str(err.value) and sched.stats["timeouts"] >= 1
        # Peers wait WAIT_S after their last progress, then the coordinator WAIT_S more for the rest.
        assert elapsed < 2 * WAIT_S + 10, elapsed
        sched.max_attempts = 3  # retried as any job: the silent node, still stopped, ends up in no session
        y = sched.run_masked(scheme, model, scheme.encode(x), key=b"direct-session-03")
        np.testing.assert_allclose(scheme.decode(y), model.forward(x), atol=1e-3)
        assert addr not in sched.results()[-1].nodes
    finally:
        spy.close()
        sched.timeout_s, sched.max_attempts = 30.0, 3
        for a in stopped:
            ex.kill(a)  # SIGKILL ends a stopped process too



def test_the_peer_link_bounds_what_one_sender_can_leave_waiting_at_a_node() -> None:
    """Any admitted node may publish to any other: a flood from one sender stays within its own
    bound (per open session and for sessions not started yet), and a node outside the session's
    parties is dropped, so a real peer's contribution is neither crowded out nor late."""
    import asyncio
    import types

    from edil.runtime import _nats as nats

    me, peer, stranger = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20
    link = nats._PeerLink(None, asyncio.new_event_loop(), me)  # noqa: SLF001

    def deliver(sid: str, sender: str, data: bytes) -> None:
        msg = types.SimpleNamespace(subject=f"edil.mpc.{sid}.{sender}.{me}", data=data)
        asyncio.run(link.on_message(msg))

    # Before the session starts: the stranger fills its own early quota, the peer's message still fits.
    early = "11" * 32
    flood = b"x" * (nats.EARLY_BYTES_PER_SENDER // 3)
    for _ in range(3 * nats.EARLY_BYTES // nats.EARLY_BYTES_PER_SENDER + 3):  # more than the whole early buffer
        deliver(early, stranger, flood)
    assert link._early_by_sender[stranger] <= nats.EARLY_BYTES_PER_SENDER  # noqa: SLF001
    deliver(early, peer, b"peer-round-0")
    q = link.open(bytes.fromhex(early), [peer])
    got = [q.get_nowait() for _ in range(q.qsize())]
    assert [s.split(".")[3] for s, _ in got] == [peer]  # the stranger is not a party of this session
    # An open session: one sender may leave at most PEER_PENDING_PER_SENDER messages waiting.
    for i in range(50):
        deliver(early, peer, b"r%d" % i)
    assert q.qsize() == nats.PEER_PENDING_PER_SENDER
    q.get_nowait()
    deliver(early, peer, b"next")
    assert q.qsize() == nats.PEER_PENDING_PER_SENDER
    deliver(early, stranger, b"not a party")
    assert q.qsize() == nats.PEER_PENDING_PER_SENDER
