"""The HTTP gateway and the client SDK: ciphertexts in and out, keys only at the client.

A loopback uvicorn server runs the gateway over a scheduler with in-process nodes
(LocalExecutor, models in R1FS). CKKS and Paillier predictions are compared with the plaintext
model; every request is a journaled job with a PoAI transcript; refusals are one-line 4xx JSON;
a replica whose node crashes under concurrent load loses no request and returns no wrong one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from concurrent.futures import Future
from typing import Any, cast

import httpx
import msgspec
import numpy as np
import pytest
from eth_account import Account
from sklearn.linear_model import LinearRegression, LogisticRegression

import edil.client
from edil import CKKS, EdilError, Paillier, SchemeMismatchError, SerializationError, ShapeError, VerificationError, models
from edil import runtime as rt
from edil.app._gateway import Gateway, GatewayServer, PredictRequest, create_app
from edil.proofs import Eip712Domain
from edil.runtime.testing import Faults, FaultyNode, faulty
from tests._workloads import breast_cancer

DOMAIN = Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "11" * 20)
#: CKKS at N=4096, 25 fractional bits: logits agree with the plaintext model to this absolute tolerance.
CKKS_TOL = 1e-2
#: Paillier fixed point (16 fractional bits, weights rounded too): absolute tolerance on the outputs.
PAILLIER_TOL = 1e-3
CKKS_PARAMS = {"poly_modulus_degree": 4096, "precision_bits": 25}
FEATURES = 4
OWNER_KEY = hashlib.sha256(b"gateway-test-service-owner").digest()


def _seed(i: int) -> bytes:
    return hashlib.sha256(b"gateway-test-node-%d" % i).digest()


def _lr() -> tuple[LogisticRegression, models.Sequential, np.ndarray]:
    x, y = breast_cancer()
    x = x[:, :FEATURES]
    est = LogisticRegression(max_iter=1000).fit(x, y)
    return est, models.from_sklearn(est), x


def _linear() -> tuple[models.Sequential, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, FEATURES))
    y = x @ np.array([[0.5, -1.0], [1.5, 0.25], [-0.75, 0.5], [0.1, 2.0]]) + np.array([0.2, -0.3])
    return models.from_sklearn(LinearRegression().fit(x, y)), x


class Net:
    """Nodes, a scheduler, a gateway and its HTTP server on loopback."""

    def __init__(self, tmp: Any) -> None:
        self.ex = rt.LocalExecutor(blobs=tmp / "r1fs")
        self.registry = rt.StaticRegistry()
        self.coord = rt.CoordinatorIdentity.generate()
        self.sched = rt.Scheduler(
            self.ex, self.registry, rt.Journal(str(tmp / "jobs.sqlite")), identity=self.coord, domain=DOMAIN,
            timeout_s=20.0, backoff_s=0.05, cooldown_s=5.0,
        )
        self.nodes = []
        for i in range(3):
            cfg = faulty(rt.NodeConfig(seed=_seed(i), capabilities=rt.Capabilities((), 1 << 30)), None)
            self.registry.admit(rt.NodeIdentity.from_seed(cfg.seed).address)
            self.nodes.append(self.sched.launch(cfg).address)
        self.est, self.lr, self.x = _lr()
        self.linear, self.xl = _linear()
        fs = rt.R1FS(self.ex.blob_store)
        readers = [self.coord.box_key] + [self.sched.card(a).box_key for a in self.nodes]
        lr_cid = fs.put(rt.model_to_bytes(self.lr), readers, name="lr")
        lin_cid = fs.put(rt.model_to_bytes(self.linear), readers, name="linear")
        # Deeploy: owner-signed specs, placed by the reconciler on the admitted nodes (its state in the journal)
        self.services = rt.Reconciler(self.sched.journal, self.registry, chain_id=DOMAIN.chain_id)
        owner = Account.from_key(OWNER_KEY).address
        self.ids = {}
        specs: list[tuple[str, str, str, Any, dict[str, Any], int, int]] = [
            ("lr", "breast-cancer-lr", lr_cid, "ckks", dict(CKKS_PARAMS), 3, 1),
            ("voted", "breast-cancer-lr-voted", lr_cid, "ckks", dict(CKKS_PARAMS), 3, 2),  # two replicas must agree
            ("linear", "linear", lin_cid, "paillier", {"key_bits": 1024}, 2, 1),
            ("shares", "masked-lr", lr_cid, "masked", {"parties": 3}, 3, 1),
        ]
        for key, name, cid, scheme, params, replicas, redundancy in specs:
            spec = rt.ServiceSpec(name=name, model_cid=cid, scheme=scheme, owner=owner, params=params, replicas=replicas,
                                  redundancy=redundancy)
            self.ids[key] = self.services.deploy(rt.SignedServiceSpec.sign(spec, OWNER_KEY, chain_id=DOMAIN.chain_id))
        self.services.reconcile(nodes=[self.sched.card(a) for a in self.nodes])
        assert all(len(self.replicas(k)) == n for k, n in (("lr", 3), ("voted", 3), ("linear", 2), ("shares", 3)))
        self.gw = Gateway(self.sched, self.services, request_timeout_s=60.0, attempt_timeout_s=25.0, replica_cooldown_s=30.0)
        self.server = GatewayServer(create_app(self.gw)).start()
        self.url = self.server.url

    def replicas(self, key: str) -> tuple[str, ...]:
        state = self.services.get(self.ids[key])
        assert state is not None
        return tuple(state.replicas)

    def node(self, replica: str) -> str:
        """The executor's address of a replica (the reconciler keeps addresses in lower case)."""
        return next(a for a in self.nodes if a.lower() == replica.lower())

    def close(self) -> None:
        self.server.stop()
        self.ex.close()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    n = Net(tmp_path_factory.mktemp("gateway"))
    yield n
    n.close()


@pytest.fixture(scope="module")
def client(net: Net) -> Any:
    with edil.client.connect(net.url) as c:
        yield c


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            total += float(m.group(2))
    return total


def _one_line_error(resp: httpx.Response, status: int, error: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "message"} and body["error"] == error, body
    assert "\n" not in body["message"] and "Traceback" not in body["message"] and body["message"]


def test_openapi_lists_the_services_and_the_colon_predict_route(net: Net) -> None:
    spec = httpx.get(net.url + "/openapi.json").json()
    assert "post" in spec["paths"]["/v1/services/{service_id}:predict"]
    assert "get" in spec["paths"]["/v1/services"] and "get" in spec["paths"]["/v1/services/{service_id}"]
    assert "PredictRequest" in spec["components"]["schemas"]
    assert httpx.get(net.url + "/docs").status_code == 200
    assert httpx.get(net.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(net.url + "/readyz").status_code == 200


def test_not_ready_without_nodes_or_live_replicas(tmp_path: Any) -> None:
    journal = rt.Journal(str(tmp_path / "jobs.sqlite"))
    sched = rt.Scheduler(rt.LocalExecutor(), rt.StaticRegistry(), journal, identity=rt.CoordinatorIdentity.generate(), domain=DOMAIN)
    gw = Gateway(sched, rt.Reconciler(journal, rt.StaticRegistry()))
    with GatewayServer(create_app(gw)) as srv, httpx.Client(base_url=srv.url) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 503 and http.get("/readyz").json() == {"ready": False}
        assert http.get("/v1/services").json() == {"services": []}
        assert "edil_gateway_requests" in http.get("/metrics").text
    journal.close()


def test_predict_bodies_held_at_once_are_bounded(tmp_path: Any) -> None:
    """Each body is bounded (413), and so are the bodies held at once: a request that would take
    the gateway over ``max_inflight_bytes`` is refused (503) until the others are done."""
    journal = rt.Journal(str(tmp_path / "jobs.sqlite"))
    sched = rt.Scheduler(rt.LocalExecutor(), rt.StaticRegistry(), journal, identity=rt.CoordinatorIdentity.generate(), domain=DOMAIN)
    gw = Gateway(sched, rt.Reconciler(journal, rt.StaticRegistry()))
    mp = {"content-type": "application/msgpack"}
    with GatewayServer(create_app(gw, max_body_bytes=10_000, max_inflight_bytes=1000)) as srv, httpx.Client(base_url=srv.url) as http:
        _one_line_error(http.post("/v1/services/x:predict", content=b"\xc1" * 20_000, headers=mp), 413, "GatewayError")
        _one_line_error(http.post("/v1/services/x:predict", content=b"\xc1" * 2000, headers=mp), 503, "GatewayError")
        _one_line_error(http.post("/v1/services/x:predict", content=b"\xc1" * 600, headers=mp), 400, "SerializationError")
        with socket.create_connection((srv.host, srv.port), timeout=30) as slow:  # a body that trickles in holds its bytes
            slow.sendall(b"POST /v1/services/x:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
                         b"Content-Length: 700\r\n\r\n" + b"\xc1" * 100)
            time.sleep(0.3)
            _one_line_error(http.post("/v1/services/x:predict", content=b"\xc1" * 600, headers=mp), 503, "GatewayError")
            slow.sendall(b"\xc1" * 600)
            assert slow.recv(65536).startswith(b"HTTP/1.1 400")
        _one_line_error(http.post("/v1/services/x:predict", content=b"\xc1" * 600, headers=mp), 400, "SerializationError")
    journal.close()


def test_service_info_gives_what_the_client_needs(net: Net, client: Any) -> None:
    assert {s["id"] for s in client.services()} == set(net.ids.values())
    info = client.service(net.ids["lr"])
    assert info["scheme"] == "ckks" and info["in_features"] == FEATURES and info["out_features"] == 1
    assert info["params"] == {**CKKS_PARAMS, "depth": net.lr.mult_depth} and info["replicas"] == list(net.replicas("lr"))
    assert sorted(info["replicas"]) == sorted(a.lower() for a in net.nodes)
    shares = client.service(net.ids["shares"])  # a Masked service names the box keys a client would share to
    assert shares["box_keys"] == {a.lower(): net.sched.card(a).box_key.hex() for a in net.nodes}


def test_ckks_lr_matches_the_plaintext_model_and_every_request_is_a_journaled_job(net: Net, client: Any) -> None:
    x = net.x[:8]
    y = client.predict(net.ids["lr"], x)
    np.testing.assert_allclose(y, net.lr.forward(x), atol=CKKS_TOL)
    assert np.array_equal((y[:, 0] > 0).astype(int), net.est.predict(x))
    job = bytes.fromhex(client.last["job_id"])
    assert net.sched.status(job).status == "done"
    rec = net.sched.journal.result(job)
    assert rec is not None and tuple(rec.nodes) == (client.last["node"],)
    # the PoAI transcript of that node for this job is in the journal, as for any task
    assert job in [j for j, _, agreed in net.sched.journal.transcripts(client.last["node"], rec.epoch) if agreed]
    # round-robin: the next requests land on the other replicas
    seen = {client.last["node"].lower()}
    for _ in range(2):
        client.predict(net.ids["lr"], x[:2])
        seen.add(client.last["node"].lower())
    assert seen == set(net.replicas("lr"))


def test_paillier_linear_with_the_clients_own_keys(net: Net, client: Any) -> None:
    s = Paillier(key_bits=1024)
    x = net.xl[:5]
    y = client.predict(net.ids["linear"], x, scheme=s)
    np.testing.assert_allclose(y, net.linear.forward(x), atol=PAILLIER_TOL)
    assert client.last["node"].lower() in net.replicas("linear")
    # the same request as JSON (bytes as base64) gets a JSON reply
    body = {"scheme": "paillier", "context": s.public_context_bytes(), "input": s.serialize(s.encode(x))}
    resp = httpx.post(net.url + f"/v1/services/{net.ids['linear']}:predict", content=msgspec.json.encode(body),
                      headers={"content-type": "application/json"}, timeout=120)
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    out = msgspec.json.decode(resp.content, type=dict[str, Any])
    np.testing.assert_allclose(s.decode(s.deserialize(base64.b64decode(out["output"]))), net.linear.forward(x), atol=PAILLIER_TOL)


def test_the_gateway_never_sees_a_secret_key(net: Net) -> None:
    bodies: list[bytes] = []

    def keep(request: httpx.Request) -> None:
        if request.method == "POST":
            bodies.append(request.read())

    with httpx.Client(event_hooks={"request": [keep]}, timeout=120) as http, edil.client.connect(net.url, http=http) as c:
        ck = c.scheme(net.ids["lr"])
        pa = Paillier(key_bits=1024)
        c.predict(net.ids["lr"], net.x[:2])
        c.predict(net.ids["linear"], net.xl[:2], scheme=pa)
    assert len(bodies) == 2
    ck_body, pa_body = (msgspec.msgpack.decode(b) for b in bodies)
    assert ck.is_private and not CKKS.from_public_context(ck_body["context"]).is_private
    secret = pa._priv  # the Paillier secret primes appear nowhere in what was sent
    for p in (secret.p, secret.q):
        for form in (str(p).encode(), format(p, "x").encode(), p.to_bytes((p.bit_length() + 7) // 8, "big")):
            assert form not in bodies[1]
    assert not any(getattr(s, "is_private", True) for s in net.gw._contexts.values())


def test_refusals_are_one_line_4xx(net: Net, client: Any) -> None:
    url = net.url + f"/v1/services/{net.ids['lr']}:predict"
    mp = {"content-type": "application/msgpack"}
    _one_line_error(httpx.post(url, content=b"\xc1garbage", headers=mp), 400, "SerializationError")
    _one_line_error(httpx.post(url, json={"scheme": "ckks", "context": "AA==", "input": "AA==", "x": 1}), 400, "SerializationError")
    _one_line_error(httpx.post(url, content=b"{}", headers={"content-type": "text/plain"}), 415, "GatewayError")
    # a declared length over the bound is refused before the body is read
    with socket.create_connection((net.server.host, net.server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/services/%s:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\nx" % (net.ids["lr"].encode(), 1 << 40))
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert msgspec.json.decode(payload)["error"] == "GatewayError"
    pa = Paillier(key_bits=1024)
    wrong = {"scheme": "paillier", "context": pa.public_context_bytes(), "input": pa.serialize(pa.encode(net.x[:2]))}
    _one_line_error(httpx.post(url, content=msgspec.msgpack.encode(wrong), headers=mp), 400, "SchemeMismatchError")
    with pytest.raises(SchemeMismatchError):
        client.predict(net.ids["lr"], net.x[:2], scheme=pa)
    with pytest.raises(ShapeError):
        client.predict(net.ids["lr"], np.zeros((2, FEATURES + 1)))
    with pytest.raises(edil.client.GatewayError) as info:
        client.predict("nope", net.x[:2])
    assert info.value.status == 404
    _one_line_error(httpx.get(net.url + "/v1/services/nope"), 404, "GatewayError")
    _one_line_error(httpx.post(net.url + f"/v1/services/{net.ids['shares']}:predict", content=msgspec.msgpack.encode(wrong), headers=mp), 422, "UnsupportedOperationError")


def test_ciphertexts_that_do_not_parse_fail_once_with_the_clients_error_and_blame_no_replica(net: Net, client: Any) -> None:
    """The gateway checks a CKKS input's envelope, context and shape up front and parses the ciphertexts
    only when a replica fails: ciphertexts no node can parse, under a valid checksum (a client can
    recompute it; it is no MAC), are refused with a one-line SerializationError after one attempt, and
    no replica is counted as failed for them."""
    s = client.scheme(net.ids["lr"])
    good = s.serialize(s.encode(net.x[:2]))
    payload = bytearray(good[:-32])
    mid = len(payload) // 2
    payload[mid : mid + 256] = bytes(256)  # inside the ciphertexts: the header and lengths stay as they were
    bad = bytes(payload) + hashlib.sha256(payload).digest()
    assert s.declared_shape(bad) == (2, FEATURES)
    with pytest.raises(SerializationError):
        s.deserialize(bad)
    url = net.url + f"/v1/services/{net.ids['lr']}:predict"
    body = msgspec.msgpack.encode({"scheme": "ckks", "context": s.public_context_bytes(), "input": bad})
    before, jobs = httpx.get(net.url + "/metrics").text, len(net.sched.journal.jobs(spec=False))
    _one_line_error(httpx.post(url, content=body, headers={"content-type": "application/msgpack"}), 400, "SerializationError")
    after = httpx.get(net.url + "/metrics").text
    assert len(net.sched.journal.jobs(spec=False)) == jobs + 1  # one replica tried, not each in turn
    for a in net.replicas("lr"):
        labels = {"service": net.ids["lr"], "node": a}
        assert _metric(after, "edil_gateway_failures_total", **labels) == _metric(before, "edil_gateway_failures_total", **labels)
    np.testing.assert_allclose(client.predict(net.ids["lr"], net.x[:2]), net.lr.forward(net.x[:2]), atol=CKKS_TOL)


def test_metrics_count_requests_latency_and_placements(net: Net, client: Any) -> None:
    before = httpx.get(net.url + "/metrics").text
    client.predict(net.ids["lr"], net.x[:2])
    with pytest.raises(ShapeError):
        client.predict(net.ids["lr"], np.zeros((2, FEATURES + 2)))
    after = httpx.get(net.url + "/metrics").text
    for name, labels, delta in (
        ("edil_gateway_requests_total", {"service": net.ids["lr"], "outcome": "ok"}, 1),
        ("edil_gateway_requests_total", {"service": net.ids["lr"], "outcome": "client_error"}, 1),
        ("edil_gateway_request_seconds_count", {"service": net.ids["lr"]}, 2),
    ):
        assert _metric(after, name, **labels) - _metric(before, name, **labels) == delta, name
    placed = sum(_metric(after, "edil_gateway_placements_total", service=net.ids["lr"], node=a) for a in net.replicas("lr"))
    assert placed >= 1


def test_redundant_service_outvotes_a_lying_replica(net: Net, client: Any) -> None:
    """Redundancy 2: each request runs on two replicas and their outputs must agree; a node that
    returns a wrong output (signed over, so only a comparison catches it) is outvoted by a third
    replica, recorded as faulty in the journal, and the client gets the right answer."""
    liar = net.replicas("voted")[1]  # not the node the load test crashes (a failed replica is tried last for a while)
    node = cast(FaultyNode, net.ex.node(net.node(liar)))
    faults_before = len(net.sched.journal.faults(net.node(liar)))
    node.faults = Faults("wrong")
    try:
        for k in range(3):  # round-robin puts the liar in the first pair of at least one request
            x = net.x[4 * k : 4 * k + 4]
            np.testing.assert_allclose(client.predict(net.ids["voted"], x), net.lr.forward(x), atol=CKKS_TOL)
    finally:
        node.faults = None
    faults = net.sched.journal.faults(net.node(liar))[faults_before:]
    assert faults and all("disagrees" in f[3] for f in faults)
    metrics = httpx.get(net.url + "/metrics").text
    assert _metric(metrics, "edil_gateway_failures_total", service=net.ids["voted"], node=liar) >= 1
    # The liar's own pinned job does not stand as good work: its transcript is not agreed (its epoch
    # audit fails, as for a redundant job's minority) and its wrong output is disputed.
    for bad_node, epoch, jid, _ in faults:
        assert jid is not None
        assert {j: ok for j, _, ok in net.sched.journal.transcripts(bad_node, epoch)}[jid] is False
        assert net.sched.status(jid).disputed
        with pytest.raises(VerificationError):
            net.sched.result(jid)


class _GivenUpJustBeforeTheReply(Future[Any]):
    """A request whose HTTP caller times out (cancels) between the worker's check and its reply."""

    def set_result(self, result: Any) -> None:
        self.cancel()
        super().set_result(result)


def test_a_request_given_up_during_its_round_does_not_fail_the_others(net: Net) -> None:
    s = CKKS(poly_modulus_degree=4096, precision_bits=25, depth=net.lr.mult_depth)
    req = PredictRequest("ckks", s.public_context_bytes(), s.serialize(s.encode(net.x[:2])))
    gone, kept = net.gw.prepare(net.ids["lr"], req), net.gw.prepare(net.ids["lr"], req)
    gone.future = _GivenUpJustBeforeTheReply()
    hold = threading.Event()
    net.gw.call_in_worker(lambda: hold.wait(30))  # both requests then join the same round
    net.gw.submit(gone)
    net.gw.submit(kept)
    hold.set()
    reply = kept.future.result(timeout=120)
    np.testing.assert_allclose(s.decode(s.deserialize(reply.output)), net.lr.forward(net.x[:2]), atol=CKKS_TOL)
    assert gone.future.cancelled()


def test_a_redundant_service_short_of_replicas_is_refused_not_downgraded(net: Net, tmp_path: Any) -> None:
    """Redundancy 2 with one replica placed: no answer from a single unchecked replica (503)."""
    voted = net.services.get(net.ids["voted"])
    assert voted is not None
    services = rt.Reconciler(rt.Journal(str(tmp_path / "svc.sqlite")), net.registry, chain_id=DOMAIN.chain_id)
    spec = msgspec.structs.replace(voted.spec, name="voted-degraded")
    sid = services.deploy(rt.SignedServiceSpec.sign(spec, OWNER_KEY, chain_id=DOMAIN.chain_id))
    services.reconcile(nodes=[net.sched.card(net.nodes[0])])  # the other nodes are gone: one replica
    state = services.get(sid)
    assert state is not None and len(state.replicas) == 1 and state.spec.redundancy == 2
    s = CKKS(poly_modulus_degree=4096, precision_bits=25, depth=net.lr.mult_depth)
    gw = Gateway(net.sched, services)
    with pytest.raises(edil.client.GatewayError) as info:
        gw.prepare(sid, PredictRequest("ckks", s.public_context_bytes(), s.serialize(s.encode(net.x[:2]))))
    assert info.value.status == 503 and "redundancy" in str(info.value)


def test_a_request_queued_before_its_service_is_removed_is_not_run(net: Net, tmp_path: Any) -> None:
    """Removal takes effect at the next dispatch round, not only for requests that arrive later."""
    lr = net.services.get(net.ids["lr"])
    assert lr is not None
    services = rt.Reconciler(rt.Journal(str(tmp_path / "svc.sqlite")), net.registry, chain_id=DOMAIN.chain_id)
    spec = msgspec.structs.replace(lr.spec, name="lr-to-remove")
    sid = services.deploy(rt.SignedServiceSpec.sign(spec, OWNER_KEY, chain_id=DOMAIN.chain_id))
    services.reconcile(nodes=[net.sched.card(a) for a in net.nodes])
    s = CKKS(poly_modulus_degree=4096, precision_bits=25, depth=net.lr.mult_depth)
    gw = Gateway(net.sched, services)  # net.gw's worker is idle meanwhile: one worker calls the scheduler at a time
    queued = gw.prepare(sid, PredictRequest("ckks", s.public_context_bytes(), s.serialize(s.encode(net.x[:2]))))
    services.remove(sid, signed_by=OWNER_KEY)
    jobs_before = len(net.sched.journal.jobs())
    gw.start()
    try:
        with pytest.raises(edil.client.GatewayError) as info:
            gw.submit(queued).result(timeout=60)
    finally:
        gw.close()
    assert info.value.status == 404 and "removed" in str(info.value)
    assert len(net.sched.journal.jobs()) == jobs_before


def test_concurrent_load_loses_nothing_when_a_replicas_node_crashes(net: Net) -> None:
    """4 clients x 6 requests on the 3-replica CKKS service; one replica's node crashes after the
    first few requests (fault injection): every request is answered, correctly, by another replica,
    each request trying at most len(replicas) replicas."""
    clients, per_client = 4, 6
    victim = net.replicas("lr")[0]
    before = httpx.get(net.url + "/metrics").text
    results: list[tuple[float, np.ndarray, np.ndarray, dict[str, Any]]] = []
    lost: list[str] = []
    done = threading.Semaphore(0)
    lock = threading.Lock()

    def one(k: int) -> None:
        rng = np.random.default_rng(k)
        with edil.client.connect(net.url) as c:
            c.scheme(net.ids["lr"])
            for _ in range(per_client):
                x = net.x[rng.choice(len(net.x), size=4, replace=False)]
                t0 = time.perf_counter()
                try:
                    y = c.predict(net.ids["lr"], x)
                except Exception as exc:  # noqa: BLE001 - counted as lost
                    with lock:
                        lost.append(f"{type(exc).__name__}: {exc}")
                    continue
                finally:
                    done.release()
                with lock:
                    results.append((time.perf_counter() - t0, x, y, dict(c.last)))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for _ in range(3):
        done.acquire(timeout=120)
    cast(FaultyNode, net.ex.node(net.node(victim))).faults = Faults("crash")  # the victim's node now fails everything it is sent
    for t in threads:
        t.join(timeout=300)
    try:
        assert not lost, lost
        assert len(results) == clients * per_client
        wrong = [r for r in results if not np.allclose(r[2], net.lr.forward(r[1]), atol=CKKS_TOL)]
        assert not wrong
        assert all(r[3]["attempts"] <= len(net.nodes) for r in results)
        after = httpx.get(net.url + "/metrics").text
        assert _metric(after, "edil_gateway_failures_total", service=net.ids["lr"], node=victim) > _metric(before, "edil_gateway_failures_total", service=net.ids["lr"], node=victim)
        moved = [r for r in results if r[3]["attempts"] > 1]
        assert moved and all(r[3]["node"].lower() != victim for r in moved)
        lat = np.array([r[0] for r in results]) * 1000
        print(f"\nload: {len(results)} requests, p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms, moved {len(moved)}")
    finally:
        cast(FaultyNode, net.ex.node(net.node(victim))).faults = None


def test_the_client_refuses_malformed_or_key_weakening_gateway_answers() -> None:
    """The gateway is not trusted with the client's keys: what it answers is untrusted JSON, and
    it cannot make the client generate Paillier keys below 2048 bits (pass ``scheme=`` for that)."""
    from fastapi import FastAPI
    from fastapi.responses import Response

    answer = {"body": b""}
    app = FastAPI()

    @app.get("/v1/services")
    def listing() -> Response:
        return Response(answer["body"], media_type="application/json")

    @app.get("/v1/services/{sid}")
    def one(sid: str) -> Response:
        return Response(answer["body"], media_type="application/json")

    with GatewayServer(app) as srv, edil.client.connect(srv.url) as c:
        for body in (b"[]", b'"x"', b"{}", b'{"services": 5}', b'{"services": [1]}'):
            answer["body"] = body
            with pytest.raises(EdilError):
                c.services()
        for body in (b"[]", b"5", b'{"scheme": "ckks", "params": 5}', b'{"scheme": "ckks", "params": [[1, 2]]}',
                     b'{"scheme": "ckks", "params": {"bogus": 1}}', b'{"scheme": "ckks", "params": {"poly_modulus_degree": "x"}}',
                     b'{"scheme": "paillier", "params": {"key_bits": 512}}', b'{"scheme": "paillier", "params": {"key_bits": 1024}}'):
            answer["body"] = body
            c._info.clear()
            with pytest.raises(EdilError):
                c.scheme("s")
        assert not c._schemes


def test_edil_gateway_serves_deployed_services_from_the_journal(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """``edil gateway`` as a process: services `edil deploy` journaled are placed on its nodes and served."""
    import os
    import signal
    import subprocess
    import sys

    from edil.app.cli import main as cli

    keys = {}
    for name in ("coord", "n1", "n2"):
        keys[name] = tmp_path / f"{name}.key"
        keys[name].write_text(hashlib.sha256(b"gateway-cli-" + name.encode()).hexdigest() + "\n")
    base = [
        "gateway", "--journal", str(tmp_path / "jobs.sqlite"), "--key-file", str(keys["coord"]), "--node-key", str(keys["n1"]),
        "--node-key", str(keys["n2"]), "--store", str(tmp_path / "r1fs"), "--port", "0", "--reconcile-s", "0.2",
    ]
    assert cli([*base, "--chain-id", "31337"]) == 2  # no verifier: refused before anything starts, in one line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--verifier" in err
    (tmp_path / "r1fs").mkdir()
    coord = rt.CoordinatorIdentity.from_seed(bytes.fromhex(keys["coord"].read_text()))
    model, x = _linear()
    cid = rt.R1FS(rt.LocalBlobStore(tmp_path / "r1fs")).put(rt.model_to_bytes(model), [coord.box_key], name="linear")
    journal = rt.Journal(str(tmp_path / "jobs.sqlite"))
    spec = rt.ServiceSpec(name="linear", model_cid=cid, scheme="paillier", owner=Account.from_key(OWNER_KEY).address,
                          params={"key_bits": 1024}, replicas=2)
    sid = rt.Reconciler(journal, rt.StaticRegistry()).deploy(rt.SignedServiceSpec.sign(spec, OWNER_KEY, chain_id=31337))
    # The same owner's spec signed for chain 1, journaled by a tool that pins no chain: the gateway of chain 31337 must not run it.
    elsewhere = rt.ServiceSpec(name="linear-elsewhere", model_cid=cid, scheme="paillier", owner=spec.owner, params={"key_bits": 1024}, replicas=2)
    foreign = rt.Reconciler(journal, rt.StaticRegistry()).deploy(rt.SignedServiceSpec.sign(elsewhere, OWNER_KEY, chain_id=1))
    journal.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edil.app", *base, "--chain-id", "31337", "--verifier", "0x" + "11" * 20],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        ready = msgspec.json.decode(proc.stdout.readline())
        with edil.client.connect(ready["url"]) as c:
            deadline = time.monotonic() + 60
            while len(c.service(sid)["replicas"]) < 2:
                assert time.monotonic() < deadline, "replicas were never placed"
                time.sleep(0.2)
            assert c.ready()
            with pytest.raises(edil.client.GatewayError, match="signed for chain 1, but this deployment is chain 31337") as refused:
                c.service(foreign)
            assert refused.value.status == 404
            # 1024-bit keys (fast) are the client's own choice: from the gateway's parameters it makes 2048 or more
            np.testing.assert_allclose(c.predict(sid, x[:3], scheme=Paillier(key_bits=1024)), model.forward(x[:3]), atol=PAILLIER_TOL)
            assert c.last["node"] in ready["nodes"]
            explored = httpx.get(ready["url"] + "/explorer/api/network").json()  # the explorer, mounted by `edil gateway`
            row = next(s for s in explored["services"] if s["service"] == sid)
            assert row["replicas"] == 2 and row["latency"]["requests"] == 1
            assert foreign not in {s["service"] for s in explored["services"]}
            assert {n["address"] for n in explored["nodes"]} == set(ready["nodes"])
            assert httpx.get(ready["url"] + "/explorer/").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert f"place {sid[:16]}" in stderr and foreign[:16] not in stderr  # placement rounds never touched it


def test_edil_gateway_refuses_an_unreadable_journal_in_one_line(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from edil.app.cli import main as cli

    for name in ("coord", "n1"):
        (tmp_path / f"{name}.key").write_text(hashlib.sha256(b"gateway-cli-" + name.encode()).hexdigest() + "\n")
    (tmp_path / "r1fs").mkdir()
    (tmp_path / "jobs.sqlite").write_bytes(b"not a database " * 100)
    rc = cli(["gateway", "--journal", str(tmp_path / "jobs.sqlite"), "--key-file", str(tmp_path / "coord.key"),
              "--node-key", str(tmp_path / "n1.key"), "--store", str(tmp_path / "r1fs"), "--port", "0",
              "--chain-id", "31337", "--verifier", "0x" + "11" * 20])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "journal" in err and "Traceback" not in err


def test_a_failed_placement_round_is_one_line_and_placement_goes_on(tmp_path: Any) -> None:
    """`edil gateway`'s placement thread: a round that fails with a non-EDIL error (here the
    journal's sqlite3 error) is logged in one line instead of ending placement for good."""
    from edil.app._gateway_cli import _place_once

    journal = rt.Journal(str(tmp_path / "jobs.sqlite"))
    reconciler = rt.Reconciler(journal, rt.StaticRegistry())
    journal.close()
    lines: list[str] = []
    for _ in range(2):
        _place_once(reconciler, lambda: [], lines.append)
    _place_once(reconciler, lambda: [], lines.append, attach=lambda: (_ for _ in ()).throw(TimeoutError("bus")))
    assert len(lines) == 3 and all(line.startswith("placement failed: ") and "\n" not in line for line in lines)


def test_the_cli_model_reader_takes_edil_models_and_onnx_files(tmp_path: Any) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edil import AuthorizationError
    from edil.app._gateway_cli import _model_reader

    rng = np.random.default_rng(7)
    weight, bias = rng.normal(size=(2, FEATURES)).astype(np.float32), rng.normal(size=2).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)], "lin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    store = rt.LocalBlobStore(tmp_path)
    coord, other = rt.CoordinatorIdentity.generate(), rt.CoordinatorIdentity.generate()
    fs = rt.R1FS(store)
    model, x = _linear()
    edil_cid = fs.put(rt.model_to_bytes(model), [coord.box_key])
    onnx_cid = fs.put(proto.SerializeToString(), [coord.box_key])
    read = _model_reader(store, [other, coord])  # the first reader is not a recipient: the next one opens it
    assert read(edil_cid) == rt.model_to_bytes(model)
    imported = rt.model_from_bytes(read(onnx_cid))
    np.testing.assert_allclose(imported.forward(x[:3]), x[:3] @ weight.T.astype(np.float64) + bias, atol=1e-5)
    with pytest.raises(AuthorizationError):
        _model_reader(store, [other])(edil_cid)


def _walk_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _walk_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _walk_keys(v)}
    return set()


def test_the_gateway_serves_the_explorer_with_its_services_and_latency(net: Net, client: Any) -> None:
    """/explorer/ of the gateway's app: its services, their replicas and latency percentiles; no secret."""
    from fastapi.testclient import TestClient

    from edil.app._gateway import gateway_explorer

    before = {s["service"]: (s["latency"] or {}).get("requests", 0)
              for s in gateway_explorer(net.gw).snapshot()["services"] or []}
    for i in range(3):
        np.testing.assert_allclose(client.predict(net.ids["lr"], net.x[i:i + 2]), net.lr.forward(net.x[i:i + 2]), atol=CKKS_TOL)
    web = TestClient(create_app(net.gw, explorer=gateway_explorer(net.gw)))  # no lifespan: the served gateway's worker runs
    data = web.get("/explorer/api/network").json()
    rows = {s["service"]: s for s in data["services"]}
    assert set(rows) == set(net.ids.values())
    for key, sid in net.ids.items():
        assert rows[sid]["replicas"] == len(net.replicas(key)) and sorted(rows[sid]["nodes"]) == sorted(net.replicas(key))
        assert rows[sid]["state"] == net.services.get(sid).state  # type: ignore[union-attr]
    lr = rows[net.ids["lr"]]["latency"]
    assert lr["requests"] >= before.get(net.ids["lr"], 0) + 3
    assert 0 < lr["p50_ms"] <= lr["p95_ms"] <= lr["p99_ms"]
    # The same figures the gateway's own /metrics gives: requests counted by the latency histogram.
    assert lr["requests"] == _metric(httpx.get(net.url + "/metrics").text, "edil_gateway_request_seconds_count", service=net.ids["lr"])
    assert {n["address"] for n in data["nodes"]} == set(net.nodes)  # the scheduler's nodes, with their capabilities
    assert data["jobs"]["counts"].get("done", 0) >= 3
    html = web.get("/explorer/")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in html.headers["content-security-policy"]
    assert 'id="services-table"' in html.text and 'src="/explorer/static/explorer.js"' in html.text
    for sid in net.ids.values():
        assert f'title="{sid}"' in html.text
    assert web.post("/explorer/api/network").status_code == 405  # read-only
    assert "/explorer/" not in web.get("/openapi.json").text  # the API's docs list the API only

    bodies = {"json": web.get("/explorer/api/network").text, "page": html.text,
              "fragment": web.get("/explorer/?fragment=1").text, "node": web.get(f"/explorer/node/{net.nodes[0]}").text}
    keys = _walk_keys(json.loads(bodies["json"]))
    for word in ("share", "key", "plaintext", "secret", "spec", "output", "seed", "signature"):
        assert not [k for k in keys if word in k.lower()], word
    secrets = [bytes(net.coord.signing).hex(), bytes(net.coord.box).hex()]
    for i in range(3):
        ident = rt.NodeIdentity.from_seed(_seed(i))
        card = ident.card()
        secrets += [_seed(i).hex(), ident.chain_key.hex(), bytes(ident.signing).hex(), bytes(ident.box).hex(),
                    card.signing_key.hex(), card.box_key.hex(), card.signature.hex()]
    for res in net.sched.journal.results()[-3:]:  # the replies' ciphertexts stay in the journal
        secrets.append(res.output[:32].hex())
    secrets.append(rt.model_to_bytes(net.lr)[-32:].hex())  # the model's weights
    for where, body in bodies.items():
        for s in secrets:
            assert s.lower() not in body.lower(), (where, s[:12])
