"""Availability from the bus on a guarded bus, from the CLI, and presence in placement.

* A node admitted by :class:`~edil.runtime.BusAdmission` reads (never writes) the oracles'
  attestations in ``EDIL_AVAILABILITY`` with its own NKey and claims with them on chain; a client
  the bus does not admit cannot even connect.
* ``edil epoch close --nats`` claims a node's availability with what the oracle processes
  published, not with the coordinator's heartbeat log.
* With a :class:`~edil.runtime.Presence` attached to a :class:`~edil.runtime.NatsExecutor`, the
  scheduler skips a daemon whose heartbeats went stale (SIGSTOP) and uses it again when they
  resume (SIGCONT).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from edil import runtime as rt
from edil.proofs import Chain
from edil.runtime._nats import nkey_seed, node_inbox
from edil.runtime._oracle import AVAILABILITY_STREAM
from tests._chain_fixtures import ANVIL_KEYS, anvil_node, make_key
from tests.test_runtime_conformance import fresh_seed
from tests.test_runtime_oracle import COORD, _account, _deploy_short_epochs, _wait_until, node_daemon


@contextmanager
def guarded_bus(dep, cards, oracle_keys) -> Iterator[rt.NatsServer]:  # noqa: ANN001
    """A server that admits only the coordinator, these nodes (if the chain admits them) and these oracles."""
    server = rt.NatsServer()
    admission = rt.BusAdmission(server, rt.ChainRegistry(dep, ttl_s=60.0), COORD.verify_key)
    for card in cards:
        admission.add_card(card)
    for k in oracle_keys:
        admission.add_oracle(k.address, rt.oracle_nkey_public(k))
    admission.sync()
    server.start()
    coordinator = None
    try:
        coordinator = rt.NatsExecutor(server.url, identity=COORD)  # creates the task and result streams
        yield server
    finally:
        if coordinator is not None:
            coordinator.close()
        server.stop()


def _run_oracles(oracles: list[rt.NatsOracle], url: str, keys: list) -> tuple[list, list, list]:  # noqa: ANN001
    """Each oracle's ``run`` on its own loop thread, connecting with its own NKey."""
    stops = [asyncio.Event() for _ in oracles]
    loops = [asyncio.new_event_loop() for _ in oracles]
    threads = [
        threading.Thread(
            target=lp.run_until_complete,
            args=(o.run(url, stop=st, nkey_seed=rt.oracle_nkey_seed(k), connect_wait_s=10),),
            daemon=True,
        )
        for o, st, lp, k in zip(oracles, stops, loops, keys)
    ]
    for t in threads:
        t.start()
    return stops, loops, threads


def _attest_first_epoch(oracles: list, seed: bytes, address: str, url: str) -> int:
    """Run the node's daemon until every oracle heard it and attested its first epoch; that epoch."""
    with node_daemon(seed, url, heartbeat_s=0.2):
        _wait_until(lambda: all(address in o.presence.cards for o in oracles), timeout_s=20)
        first = oracles[0]._first_epoch
        assert first is not None
        _wait_until(lambda: all((address, first) in o.attestations for o in oracles), timeout_s=20)
    time.sleep(0.5)  # the attestations are stored on the bus after being signed
    return first


def _stop_oracles(stops: list, loops: list, threads: list) -> None:  # noqa: ANN001
    for lp, st in zip(loops, stops):
        lp.call_soon_threadsafe(st.set)
    for t in threads:
        t.join(30)


def test_an_admitted_node_claims_from_the_stream_on_a_guarded_bus_and_may_not_write_it() -> None:
    import nats
    import nats.errors

    oracle_keys = [make_key("guarded-bus-oracle-0"), make_key("guarded-bus-oracle-1")]
    seed = fresh_seed()
    node_id = rt.NodeIdentity.from_seed(seed)
    card = node_id.card(rt.Capabilities((), 1 << 30))
    chain = Chain.in_process()
    dep = _deploy_short_epochs(chain, oracle_keys, [node_id.address], epoch_s=3)
    registry = rt.ChainRegistry(dep, ttl_s=60.0)
    bus = guarded_bus(dep, [card], oracle_keys)
    server = bus.__enter__()
    oracles = [rt.NatsOracle(k, dep, slot_s=1, registry=registry, grace_s=0.3, agree_wait_s=0.6) for k in oracle_keys]
    running = _run_oracles(oracles, server.url, oracle_keys)
    try:
        first = _attest_first_epoch(oracles, seed, node_id.address, server.url)
        _stop_oracles(*running)
        dep.advance_to_epoch(max(first + 1, dep.current_epoch()))
        node_nkey = nkey_seed(bytes(node_id.signing))

        async def refused(seed: str | None) -> str:
            """A client the bus does not list cannot connect, so it reads nothing."""
            auth = {} if seed is None else {"nkeys_seed_str": seed}
            with pytest.raises(Exception) as info:  # noqa: PT011 - nats-py raises its own authorization error
                await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2, **auth)
            return str(info.value).lower()

        stranger = rt.NodeIdentity.from_seed(fresh_seed())
        for seed_str in (None, nkey_seed(bytes(stranger.signing))):
            assert "authorization" in asyncio.run(refused(seed_str))

        async def stored() -> int:
            nc = await nats.connect(server.url, nkeys_seed_str=nkey_seed(bytes(COORD.signing)))
            try:
                return int((await nc.jetstream().stream_info(AVAILABILITY_STREAM)).state.messages)
            finally:
                await nc.close()

        before = asyncio.run(stored())
        assert before >= 2  # at least the two oracles' attestations of the first epoch

        async def probe() -> list[str]:
            """What the admitted node may not do to the stream: write to it, or open a consumer on it."""
            errors: list[str] = []

            async def on_error(exc: Exception) -> None:
                errors.append(str(exc).lower())

            nc = await nats.connect(
                server.url, allow_reconnect=False, error_cb=on_error, nkeys_seed_str=node_nkey, inbox_prefix=node_inbox(node_id.address),
            )
            js = nc.jetstream(timeout=1.0)
            oracle = oracle_keys[0].address.lower()
            await nc.publish(f"edil.avail.att.{node_id.address.lower()}.{first + 5}.{oracle}", b"forged")
            for call in (js.add_consumer(AVAILABILITY_STREAM), js.delete_msg(AVAILABILITY_STREAM, 1), js.purge_stream(AVAILABILITY_STREAM)):
                with pytest.raises((nats.errors.TimeoutError, TimeoutError)):  # refused: no answer ever comes
                    await call
            await nc.flush()
            await asyncio.sleep(0.3)
            await nc.close()
            return errors

        errors = asyncio.run(probe())
        assert len([e for e in errors if "permissions violation" in e]) == 4, errors
        assert asyncio.run(stored()) == before  # nothing the node sent was stored or removed
        assert not dep.is_claimed(node_id.address, first)

        # The node's own NKey and inbox: one read-only call, and the ledger takes the oracles' quorum.
        (claimed,) = rt.claim_from_bus(dep, _account(chain, node_id), server.url, [first], identity=node_id)
        assert claimed == oracles[0].attestations[(node_id.address, first)].availability == 255
        assert dep.earned_availability(node_id.address, first) == 255

    finally:
        _stop_oracles(*running)
        bus.__exit__(None, None, None)


def test_epoch_close_with_nats_claims_with_the_oracles_attestations_on_anvil(tmp_path) -> None:
    from edil.app._ops_cli import deployment_json
    from edil.app.cli import main

    oracle_keys = [make_key("close-nats-oracle-0"), make_key("close-nats-oracle-1")]
    seed = fresh_seed()
    node_id = rt.NodeIdentity.from_seed(seed)
    card = node_id.card(rt.Capabilities((), 1 << 30))
    (tmp_path / "owner.key").write_text(ANVIL_KEYS[0])
    (tmp_path / "node.key").write_text(seed.hex())
    journal = tmp_path / "jobs.sqlite"
    rt.Journal(str(journal)).close()  # the coordinator's journal: no work this epoch, availability only
    with anvil_node() as chain_url:
        chain = Chain.from_url(chain_url, ANVIL_KEYS)
        dep = _deploy_short_epochs(chain, oracle_keys, [node_id.address], epoch_s=3)
        _account(chain, node_id)  # funded: the node's account sends its claim
        (tmp_path / "deployment.json").write_text(json.dumps(deployment_json(chain.chain_id, chain_url, dep)))
        close = ["epoch", "close", "--deployment", str(tmp_path / "deployment.json"), "--key-file", str(tmp_path / "owner.key"),
                 "--journal", str(journal), "--node-key", str(tmp_path / "node.key")]
        with guarded_bus(dep, [card], oracle_keys) as server:
            oracles = [rt.NatsOracle(k, dep, slot_s=1, registry_ttl_s=60.0, grace_s=0.3, agree_wait_s=0.6) for k in oracle_keys]
            running = _run_oracles(oracles, server.url, oracle_keys)
            try:
                first = _attest_first_epoch(oracles, seed, node_id.address, server.url)
            finally:
                _stop_oracles(*running)
            # The coordinator logged no heartbeat at all: what is claimed can only come from the bus.
            assert main([*close, "--epoch", str(first), "--advance", "--nats", server.url]) == 0
        assert dep.is_claimed(node_id.address, first)
        assert dep.earned_availability(node_id.address, first) == oracles[0].attestations[(node_id.address, first)].availability == 255


def test_epoch_close_checks_the_nats_url_before_anything_else(tmp_path, capsys) -> None:
    from edil.app.cli import main

    (tmp_path / "owner.key").write_text(ANVIL_KEYS[0])
    journal = tmp_path / "jobs.sqlite"
    code = main(["epoch", "close", "--deployment", str(tmp_path / "missing.json"), "--key-file", str(tmp_path / "owner.key"),
                 "--journal", str(journal), "--nats", "127.0.0.1:4222"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not a NATS URL" in err and "\n" not in err and "Traceback" not in err, err
    assert not journal.exists()  # nothing written


def test_the_scheduler_skips_a_daemon_whose_heartbeats_went_stale_and_takes_it_back() -> None:
    """Two daemons (separate processes) beating every 0.2 s; stale after 1 s. A SIGSTOPped daemon
    gets no new task (a task sent to it would wait for the 30 s reply timeout), and it gets tasks
    again once SIGCONT lets it beat."""
    import os
    import signal

    import numpy as np

    from edil.proofs import Eip712Domain
    from tests.test_runtime_conformance import small_model

    domain = Eip712Domain("EDIL PoAI", "1", 1337, "0x" + "11" * 20)
    registry = rt.StaticRegistry()
    presence = rt.Presence(rt.HeartbeatMonitor(registry, epoch_ms=60_000, interval_ms=200))
    model, rng = small_model(), np.random.default_rng(12)
    with rt.NatsServer() as server:
        ex = rt.NatsExecutor(server.url, heartbeat_s=0.2, presence=presence, stale_after_s=1.0)
        stopped = None
        try:
            sched = rt.Scheduler(ex, registry, rt.Journal(":memory:"), identity=COORD, domain=domain, timeout_s=30.0)
            cards = []
            for _ in range(2):
                cfg = rt.NodeConfig(seed=fresh_seed(), capabilities=rt.Capabilities((), 1 << 30))
                registry.admit(rt.NodeIdentity.from_seed(cfg.seed).address)
                cards.append(sched.launch(cfg))
            a, b = (c.address for c in cards)
            _wait_until(lambda: ex.live(a) and ex.live(b), timeout_s=30)

            def run(n: int, redundancy: int) -> list[rt.ResultRecord]:
                xs = [rng.normal(size=(2, 4)) for _ in range(n)]
                jobs = sched.submit_many([rt.Task.plain(model, x, allow_plaintext=True) for x in xs], redundancy=redundancy)
                sched.run(timeout_s=60)
                for j, x in zip(jobs, xs):
                    np.testing.assert_allclose(rt.array_from_bytes(sched.result(j)), model.forward(x), rtol=1e-12, atol=1e-12)
                by_job = {r.job_id: r for r in sched.results()}
                return [by_job[j] for j in jobs]

            assert {n for r in run(1, 2) for n in r.nodes} == {a, b}  # warm: both run it

            os.kill(ex.pid(a), signal.SIGSTOP)
            stopped = ex.pid(a)
            _wait_until(lambda: not ex.live(a), timeout_s=10)
            assert ex.live(b)
            t0 = time.monotonic()
            records = run(4, 1)
            assert all(r.nodes == (b,) for r in records), [r.nodes for r in records]
            assert time.monotonic() - t0 < 20  # nothing waited for the stopped node's 30 s reply timeout
            assert sched.stats["skipped_stale"] > 0 and sched.stats["timeouts"] == 0, sched.stats

            os.kill(stopped, signal.SIGCONT)
            stopped = None
            _wait_until(lambda: ex.live(a), timeout_s=10)
            assert {n for r in run(2, 2) for n in r.nodes} == {a, b}  # chosen again: two replicas need both
            assert sched.stats["timeouts"] == 0, sched.stats
        finally:
            if stopped is not None:
                os.kill(stopped, signal.SIGCONT)
            ex.close()


def test_presence_freshness_follows_the_last_counted_heartbeat() -> None:
    now = [1_000_000.0]
    node_id, other = rt.NodeIdentity.from_seed(fresh_seed()), rt.NodeIdentity.from_seed(fresh_seed())
    registry = rt.StaticRegistry([node_id.address, other.address])
    presence = rt.Presence(rt.HeartbeatMonitor(registry, epoch_ms=60_000, interval_ms=1_000), clock=lambda: now[0])
    ms = int(now[0] * 1000)
    card = node_id.card(rt.Capabilities((), 1 << 30))
    assert presence.receive_announcement(node_id.address, rt.make_announcement(node_id, card, seq=1, now_ms=ms))
    assert not presence.fresh(node_id.address, within_ms=5_000)  # announced, but no heartbeat yet
    assert presence.receive_heartbeat(node_id.address, rt.make_heartbeat(node_id, seq=1, now_ms=ms))
    assert presence.last_heartbeat_ms(node_id.address.lower()) == ms
    assert presence.fresh(node_id.address, within_ms=5_000)
    now[0] += 6.0
    assert not presence.fresh(node_id.address, within_ms=5_000) and presence.fresh(node_id.address, within_ms=7_000)
    # a refused heartbeat (a replayed sequence number) does not make it fresh again
    assert not presence.receive_heartbeat(node_id.address, rt.make_heartbeat(node_id, seq=1, now_ms=int(now[0] * 1000)))
    assert not presence.fresh(node_id.address, within_ms=5_000)
    assert not presence.fresh(other.address, within_ms=5_000)  # never heard: not fresh
    with pytest.raises(ValueError, match="within_ms"):
        presence.fresh(node_id.address, within_ms=0)
