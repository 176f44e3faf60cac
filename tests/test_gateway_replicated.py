"""Replicated (3-party) services through the HTTP gateway: the client shares and reconstructs, the gateway only relays.

A loopback uvicorn gateway over a scheduler with three in-process nodes (LocalExecutor, the model
in R1FS) serves a ``replicated`` Deeploy service. The client's prediction matches the plaintext
model within the fixed-point tolerance; what the gateway forwards and keeps is sealed (no bytes of
the input's or output's shares, and each party's key opens only that party's pair); session keys
not signed by the party's node are refused by the client and by the peers; a tampered sealed
output is refused; a node whose output pair disagrees with its neighbours' copies is named.
A client's sealed pair that does not open (or is malformed) is answered 422 and blames no node;
one client opening many sessions does not push out another's.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account

import edil
import edil.client
from edil import ParameterError, Replicated, RuntimeTaskError, VerificationError, models
from edil import _client_replicated as crep
from edil import runtime as rt
from edil.app._gateway import Gateway, GatewayServer, create_app
from edil.hazmat import replicated as hz
from edil.proofs import Eip712Domain, transcript_from_wire
from edil.runtime import _replicated_session as rs

DOMAIN = Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "11" * 20)
OWNER_KEY = hashlib.sha256(b"gateway-replicated-test-owner").digest()
#: 16 fractional bits, exact ReLU, ABY3 truncation: outputs agree with the float model to this absolute tolerance.
TOL = 2e-3
#: Session private keys the test nodes drew, by (node address, session id): what only each node holds.
KEYS: dict[tuple[str, bytes], X25519PrivateKey] = {}
#: Node addresses (lower case) that lie about both components of their output pair while listed here.
LIARS: set[str] = set()


class _Node(rt.EdgeNode):
    """An honest node that lets the test read its session keys, and lies on demand (``LIARS``)."""

    def _reply(self, kind: str, body: Any) -> bytes:
        if kind == "rep_hello":
            sid = bytes(body["session"])
            sess = rs._sessions(self).get(sid)  # noqa: SLF001
            assert sess is not None
            KEYS[(self.address.lower(), sid)] = sess.key
        return super()._reply(kind, body)

    def _outgoing(self, kind: str, data: bytes) -> bytes:
        if kind == "mpc_result" and self.address.lower() in LIARS:
            a, b = rs._pair_from_bytes(data)  # noqa: SLF001
            with np.errstate(over="ignore"):
                return rs._pair_bytes((a + np.uint64(1), b + np.uint64(1)))  # noqa: SLF001
        return super()._outgoing(kind, data)


def _net_model() -> models.Sequential:
    rng = np.random.default_rng(11)
    return models.Sequential((models.Dense(rng.normal(size=(6, 8)) / 2, rng.normal(size=8) / 4), models.ReLU(),
                              models.Dense(rng.normal(size=(8, 3)) / 2, rng.normal(size=3) / 4)), kind="multiclass")


class Net:
    def __init__(self, tmp: Any) -> None:
        self.ex = rt.LocalExecutor(blobs=tmp / "r1fs")
        self.registry = rt.StaticRegistry()
        self.coord = rt.CoordinatorIdentity.generate()
        self.sched = rt.Scheduler(self.ex, self.registry, rt.Journal(str(tmp / "jobs.sqlite")), identity=self.coord,
                                  domain=DOMAIN, timeout_s=20.0, backoff_s=0.05, cooldown_s=0.05)
        self.nodes = []
        for i in range(3):
            seed = hashlib.sha256(b"gateway-replicated-node-%d" % i).digest()
            self.registry.admit(rt.NodeIdentity.from_seed(seed).address)
            self.nodes.append(self.sched.launch(rt.NodeConfig(seed=seed, capabilities=rt.Capabilities(), node_factory=_Node)).address)
        self.model = _net_model()
        fs = rt.R1FS(self.ex.blob_store)
        cid = fs.put(rt.model_to_bytes(self.model), [self.coord.box_key] + [self.sched.card(a).box_key for a in self.nodes], name="net")
        self.services = rt.Reconciler(self.sched.journal, self.registry, chain_id=DOMAIN.chain_id)
        spec = rt.ServiceSpec(name="rep-net", model_cid=cid, scheme="replicated", owner=Account.from_key(OWNER_KEY).address,
                              params={"frac_bits": 16}, replicas=3)
        self.sid = self.services.deploy(rt.SignedServiceSpec.sign(spec, OWNER_KEY, chain_id=DOMAIN.chain_id))
        self.services.reconcile(nodes=[self.sched.card(a) for a in self.nodes])
        self.gw = Gateway(self.sched, self.services, request_timeout_s=60.0, attempt_timeout_s=25.0)
        self.server = GatewayServer(create_app(self.gw)).start()
        self.x = np.random.default_rng(12).normal(size=(3, 6))

    def close(self) -> None:
        self.server.stop()
        self.ex.close()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    n = Net(tmp_path_factory.mktemp("gateway-replicated"))
    yield n
    n.close()


@pytest.fixture()
def client(net: Net) -> Any:
    with edil.client.connect(net.server.url) as c:
        yield c


def test_a_client_prediction_equals_the_plaintext_model_and_is_audited_like_any_job(net: Net, client: Any) -> None:
    info = client.service(net.sid)
    assert info["scheme"] == "replicated" and info["parties"] == sorted(info["replicas"]) and len(info["parties"]) == 3
    y = client.predict(net.sid, net.x, key=b"k" * 32)
    np.testing.assert_allclose(y, net.model.forward(net.x), atol=TOL)
    assert np.max(np.abs(net.model.forward(net.x))) > 10 * TOL  # the comparison is not trivially small
    # the job is journaled with its three parties' signed transcripts, which pass the epoch audit's check
    job_id = bytes.fromhex(client.last["job_id"])
    res = net.sched.journal.result(job_id)
    assert res is not None and [n.lower() for n in res.nodes] == info["parties"]
    for node in res.nodes:
        rows = [r for r in net.sched.journal.transcripts(node, res.epoch) if r[0] == job_id]
        assert len(rows) == 1
        t = transcript_from_wire(rt._wire.loads(rows[0][1])).transcript  # noqa: SLF001
        assert rs.audit_party(net.sched.journal, t) is None
    # a second request opens a second session (a session serves one request)
    y2 = client.predict(net.sid, net.x[:1])
    np.testing.assert_allclose(y2, net.model.forward(net.x[:1]), atol=TOL)


def test_the_gateway_forwards_and_keeps_only_sealed_pairs(net: Net, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, str, Any]] = []
    real_send = net.sched._send  # noqa: SLF001

    def spy(addr: str, kind: str, body: Any) -> Any:
        sent.append((addr, kind, body))
        return real_send(addr, kind, body)

    monkeypatch.setattr(net.sched, "_send", spy)
    key = hashlib.sha256(b"marker request").digest()
    x = np.random.default_rng(13).normal(size=(2, 6))
    y = client.predict(net.sid, x, key=key)
    np.testing.assert_allclose(y, net.model.forward(x), atol=TOL)
    monkeypatch.undo()
    # The client's sharing of this request (its key makes it reproducible here).
    pairs = crep.share(edil.FixedPoint(16).encode(x), key)
    components = [pairs[0][0], pairs[1][0], pairs[2][0]]
    starts = [(a, b) for a, k, b in sent if k == "rep_start"]
    assert len(starts) == 3
    forwarded = b"".join(rt._wire.dumps(b) for _, _, b in sent)  # noqa: SLF001 - every body the gateway sent
    for c in components:  # no component's bytes (uniform words: a marker) in anything it forwarded
        assert c.tobytes()[:16] not in forwarded and c.tobytes()[-16:] not in forwarded
    assert all("share" not in b for _, b in starts)  # no pair in the clear: only sealed_input
    ephemeral = X25519PrivateKey.from_private_bytes(crep._derive(key, b"ephemeral"))  # noqa: SLF001
    request, client_pub = crep._derive(key, b"request", 16), ephemeral.public_key().public_bytes_raw()  # noqa: SLF001
    sid = bytes(starts[0][1]["session"])
    for i, (addr, body) in enumerate(starts):
        assert int(body["party"]) == i and bytes(body["client"]) == client_pub
        own = KEYS[(addr.lower(), sid)]
        for j, (_, other) in enumerate(starts):  # party i's key opens party i's pair, and no other
            if j == i:
                a, b = hz.open_pair(own, client_pub, bytes(other["sealed_input"]), to_party=True, session=sid, request=request, party=j)
                np.testing.assert_array_equal(a, pairs[i][0])
                np.testing.assert_array_equal(b, pairs[i][1])
            else:
                for party in (i, j):
                    with pytest.raises(VerificationError):
                        hz.open_pair(own, client_pub, bytes(other["sealed_input"]), to_party=True, session=sid, request=request, party=party)
    # What the journal keeps of the request: sealed outputs, which only the client's key opens.
    res = net.sched.journal.result(bytes.fromhex(client.last["job_id"]))
    assert res is not None
    record = rt._wire.loads(res.output)  # noqa: SLF001
    assert set(record) == {"sealed", "attempt"}
    for i, sealed in enumerate(record["sealed"]):
        out = hz.open_pair(ephemeral, starts_public(net, sid, starts[i][0]), bytes(sealed), to_party=False, session=sid,
                           request=request, party=i)
        assert out[0].tobytes()[:16] not in res.output and out[1].tobytes()[:16] not in res.output


def starts_public(net: Net, sid: bytes, addr: str) -> bytes:
    return KEYS[(addr.lower(), sid)].public_key().public_bytes_raw()


def _tamper_session(net: Net, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    real = net.gw.replicated.open

    def tampered(service_id: str, *args: Any) -> dict[str, Any]:
        s = real(service_id, *args)
        p = s["parties"][1]
        if how == "swap":  # the gateway's own key in place of party 1's, the node's signature kept
            p["public"] = X25519PrivateKey.generate().public_key().public_bytes_raw().hex()
        elif how == "unsigned":
            p["signature"] = ""
        else:  # party 0's signed key and signature presented as party 1's
            p["public"], p["signature"] = s["parties"][0]["public"], s["parties"][0]["signature"]
        return s

    monkeypatch.setattr(net.gw.replicated, "open", tampered)


@pytest.mark.parametrize("how", ["swap", "unsigned", "moved"])
def test_a_session_key_not_signed_by_its_node_is_refused_before_anything_is_sealed(
        net: Net, client: Any, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    _tamper_session(net, monkeypatch, how)
    jobs = len(net.sched.journal.results())
    with pytest.raises(VerificationError, match="party 1"):
        client.predict(net.sid, net.x)
    assert len(net.sched.journal.results()) == jobs  # nothing was sent to :predict


def test_a_node_not_trusted_by_the_client_is_refused(net: Net, client: Any) -> None:
    parties = client.service(net.sid)["parties"]
    with pytest.raises(VerificationError, match="party 2's node .* is not one of the service's trusted nodes"):
        client.predict(net.sid, net.x, nodes=parties[:2])


def test_peers_refuse_a_relayed_key_their_peer_did_not_sign(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    """A coordinator that swaps a party's session key for its own (to read that pair's messages) is refused by the peers."""
    real = rs._hello_replies  # noqa: SLF001

    def swapping(*args: Any) -> Any:
        got = real(*args)
        assert not isinstance(got, rs._Blame)  # noqa: SLF001 - honest nodes
        publics, signatures = got
        return [publics[0], X25519PrivateKey.generate().public_key().public_bytes_raw(), publics[2]], signatures

    monkeypatch.setattr(rs, "_hello_replies", swapping)
    s = Replicated(seed=b"peer-check-seed-" * 2)
    with pytest.raises(RuntimeTaskError, match="not signed"):
        net.sched.run_replicated(s, net.model, s.encode(net.x), key=b"q" * 32)


def test_a_tampered_sealed_output_is_refused(net: Net, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = net.gw.replicated.predict

    def tampering(*args: Any) -> Any:
        reply = real(*args)
        reply.sealed[2] = reply.sealed[2][:-1] + bytes([reply.sealed[2][-1] ^ 1])
        return reply

    monkeypatch.setattr(net.gw.replicated, "predict", tampering)
    with pytest.raises(VerificationError, match="party 2's output .* does not open"):
        client.predict(net.sid, net.x)


def test_a_node_returning_inconsistent_shares_is_named(net: Net, client: Any) -> None:
    parties = client.service(net.sid)["parties"]
    LIARS.add(parties[1])
    try:
        with pytest.raises(VerificationError, match="party 1 .*returned an output pair inconsistent") as err:
            client.predict(net.sid, net.x)
        assert parties[1].lower() in str(err.value).lower() and "party 0" not in str(err.value) and "party 2" not in str(err.value)
    finally:
        LIARS.clear()
    np.testing.assert_allclose(client.predict(net.sid, net.x), net.model.forward(net.x), atol=TOL)  # honest again


def test_a_replicated_service_has_three_replicas_and_redundancy_one(net: Net) -> None:
    owner = Account.from_key(OWNER_KEY).address
    state = net.services.get(net.sid)
    assert state is not None and state.spec.replicas == 3 and state.spec.redundancy == 1
    cid = state.spec.model_cid
    for replicas, redundancy in ((2, 1), (4, 1), (3, 2)):
        with pytest.raises(ParameterError):
            rt.ServiceSpec(name="r", model_cid=cid, scheme="replicated", owner=owner, replicas=replicas, redundancy=redundancy)


def test_the_sealed_pair_format_is_refused_when_altered() -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    pa, pb = (k.public_key().public_bytes_raw() for k in (a, b))
    pair = (np.arange(6, dtype=np.uint64).reshape(2, 3), np.arange(6, 12, dtype=np.uint64).reshape(2, 3))
    sealed = hz.seal_pair(a, pb, pair, to_party=True, session=b"s" * 32, request=b"r" * 16, party=1)
    got = hz.open_pair(b, pa, sealed, to_party=True, session=b"s" * 32, request=b"r" * 16, party=1)
    assert all(np.array_equal(x, y) for x, y in zip(got, pair))
    for kw in ({"request": b"t" * 16}, {"session": b"u" * 32}, {"party": 2}, {"to_party": False}):
        args: dict[str, Any] = {"to_party": True, "session": b"s" * 32, "request": b"r" * 16, "party": 1, **kw}
        with pytest.raises(VerificationError):
            hz.open_pair(b, pa, sealed, **args)
    with pytest.raises(VerificationError):
        hz.open_pair(b, bytes(32), sealed, to_party=True, session=b"s" * 32, request=b"r" * 16, party=1)  # a low-order key


# --- a bad client's input is its own fault; sessions are bounded per client ------------------------
def _http(net: Net, host: str) -> httpx.Client:
    """An HTTP client whose requests come from ``host`` (a loopback address: the gateway's per-client bound keys on it)."""
    return httpx.Client(base_url=net.server.url, transport=httpx.HTTPTransport(local_address=host), timeout=90.0)


def _open(http: httpx.Client, net: Net) -> httpx.Response:
    return http.post(f"/v1/services/{net.sid}:session")


def _sealed_predict(http: httpx.Client, net: Net, session: dict[str, Any], x: np.ndarray, key: bytes,
                    party1: Any = None) -> tuple[httpx.Response, Any]:
    """The client's side of ``:predict`` on an opened ``session`` (as :mod:`edil._client_replicated` does it), with
    party 1's sealed pair replaced by ``party1(sealed, seal)`` when given; returns the response and the opened output."""
    sid, nodes, publics = crep.check_session(session, net.sid, net.nodes)
    ephemeral = X25519PrivateKey.from_private_bytes(crep._derive(key, b"ephemeral"))  # noqa: SLF001
    request = crep._derive(key, b"request", 16)  # noqa: SLF001
    pairs = crep.share(edil.FixedPoint(16).encode(x), key)

    def seal(i: int, pair: Any) -> bytes:
        return hz.seal_pair(ephemeral, publics[i], pair, to_party=True, session=sid, request=request, party=i)

    sealed = [seal(i, pairs[i]) for i in range(3)]
    if party1 is not None:
        sealed[1] = party1(sealed[1], lambda pair: seal(1, pair), pairs[1])
    body = {"scheme": "replicated", "session": sid, "request": request, "client": ephemeral.public_key().public_bytes_raw(),
            "shape": list(x.shape), "sealed": sealed}
    resp = http.post(f"/v1/services/{net.sid}:predict", content=msgspec.msgpack.encode(body),
                     headers={"content-type": "application/msgpack", "accept": "application/msgpack"})
    if resp.status_code != 200:
        return resp, None
    reply = msgspec.msgpack.decode(resp.content)
    outs = [hz.open_pair(ephemeral, publics[i], bytes(reply["sealed"][i]), to_party=False, session=sid, request=request, party=i)
            for i in range(3)]
    return resp, edil.FixedPoint(16).decode(crep.reconstruct(outs, nodes))


def _garbage(sealed: bytes, seal: Any, pair: Any) -> bytes:  # random bytes of the right size: they do not open
    return hashlib.shake_256(b"garbage" + sealed).digest(len(sealed))


def _transposed(sealed: bytes, seal: Any, pair: Any) -> bytes:  # opens, but to a pair of another shape (same size)
    return bytes(seal((np.ascontiguousarray(pair[0].T), np.ascontiguousarray(pair[1].T))))


@pytest.mark.parametrize(("tamper", "reason"), [(_garbage, "sealed_input_unopened"), (_transposed, "sealed_input_malformed")])
def test_a_pair_its_party_cannot_open_is_the_clients_fault_and_no_node_is_blamed(net: Net, tamper: Any, reason: str) -> None:
    sched = net.sched
    before = (dict(sched._failures), len(sched.journal.faults()), sched.stats["node_errors"], sched.stats["byzantine"])  # noqa: SLF001
    x = np.random.default_rng(14).normal(size=(3, 6))
    with _http(net, "127.0.0.4") as http:
        opened = _open(http, net)
        assert opened.status_code == 200
        session = opened.json()
        party1 = session["parties"][1]["node"]
        resp, _ = _sealed_predict(http, net, session, x, b"g" * 32, party1=tamper)
        assert resp.status_code == 422, resp.text
        err = resp.json()
        assert err["error"] == "GatewayError" and "\n" not in err["message"]
        assert f"party 1 (node {party1}) refused the client's sealed input: {reason}" in err["message"]
        assert "party 0" not in err["message"] and "party 2" not in err["message"]
        # No node is suspended, counted as failing or recorded as faulty; all three stay eligible.
        after = (dict(sched._failures), len(sched.journal.faults()), sched.stats["node_errors"], sched.stats["byzantine"])  # noqa: SLF001
        assert after == before
        assert set(sched._eligible(False, set(), respect_slots=False)) >= set(net.nodes)  # noqa: SLF001
        job = sched.journal.job(hashlib.sha256(b"EDIL/gateway/replicated" + bytes.fromhex(session["session"])
                                               + crep._derive(b"g" * 32, b"request", 16)).digest())  # noqa: SLF001
        assert job is not None and job.status == "failed" and reason in (job.error or "")
        # The session was used: it cannot be replayed; the other parties dropped it too.
        again, _ = _sealed_predict(http, net, session, x, b"g" * 32)
        assert again.status_code == 409
        sid = bytes.fromhex(session["session"])
        deadline = time.monotonic() + 10  # rep_end is not awaited by the relay
        while any(rs._sessions(net.ex.node(a)).get(sid) is not None for a in net.nodes) and time.monotonic() < deadline:  # noqa: SLF001
            time.sleep(0.02)
        assert all(rs._sessions(net.ex.node(a)).get(sid) is None for a in net.nodes)  # noqa: SLF001
        # A following honest request succeeds on the same three nodes.
        resp, y = _sealed_predict(http, net, _open(http, net).json(), x, b"h" * 32)
        assert resp.status_code == 200
        np.testing.assert_allclose(y, net.model.forward(x), atol=TOL)
        assert sorted(n.lower() for n in msgspec.msgpack.decode(resp.content)["nodes"]) == sorted(n.lower() for n in net.nodes)


def test_a_forged_refusal_blames_its_node(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal that is not signed for this input (a node that refuses without cause, carelessly) is the node's fault."""
    real = rs._refuse  # noqa: SLF001

    def unsigned(node: Any, sess: Any, job_id: bytes, sealed: bytes, reason: str, why: str) -> bytes:
        return real(node, sess, job_id, sealed + b"x", reason, why)  # commits to bytes it was not sent

    monkeypatch.setattr(rs, "_refuse", unsigned)
    faults = len(net.sched.journal.faults())
    with _http(net, "127.0.0.5") as http:
        resp, _ = _sealed_predict(http, net, _open(http, net).json(), net.x, b"f" * 32, party1=_garbage)
    assert resp.status_code == 503 and "refusal of another session, job or input" in resp.json()["message"]
    assert len(net.sched.journal.faults()) == faults + 1


def test_one_client_opening_many_sessions_does_not_push_out_anothers(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    serving = net.gw.replicated
    with _http(net, "127.0.0.2") as flooder, _http(net, "127.0.0.3") as victim:
        held = _open(victim, net)
        assert held.status_code == 200
        codes = [_open(flooder, net).status_code for _ in range(serving.max_per_client + 4)]
        assert codes == [200] * serving.max_per_client + [429] * 4
        refused = _open(flooder, net).json()
        assert refused["error"] == "GatewayError" and "open sessions" in refused["message"]
        # The victim's session is still open at the gateway and on the three nodes: its request runs.
        resp, y = _sealed_predict(victim, net, held.json(), net.x, b"v" * 32)
        assert resp.status_code == 200
        np.testing.assert_allclose(y, net.model.forward(net.x), atol=TOL)
        # Sessions expire after the TTL: the flooder's slots come back, an expired session is refused.
        stale = _open(victim, net)
        real_clock = net.gw.clock
        monkeypatch.setattr(net.gw, "clock", lambda: real_clock() + serving.session_ttl_s + 1)
        assert _open(flooder, net).status_code == 200
        resp, _ = _sealed_predict(victim, net, stale.json(), net.x, b"w" * 32)
        assert resp.status_code == 409


def test_a_node_forgets_a_session_after_its_ttl_and_keeps_started_ones_through_a_burst_of_hellos() -> None:
    coord = rt.CoordinatorIdentity.from_seed(b"ttl-coordinator-" * 2)
    now = [1000.0]
    node = rt.EdgeNode(rt.NodeIdentity.from_seed(b"\x43" * 32), coordinator_key=coord.verify_key,
                       coordinator_box_key=coord.box_key, domain=DOMAIN, clock=lambda: now[0])
    rs.handle(node, "rep_hello", {"session": b"a" * 32, "party": 0, "version": rs.PROTOCOL_VERSION, "ttl_s": 5.0})
    store = rs._sessions(node)  # noqa: SLF001
    assert store.get(b"a" * 32, now[0]) is not None
    now[0] += 6
    with pytest.raises(edil.EdilError, match="unknown or expired"):
        rs.handle(node, "rep_step", {"session": b"a" * 32, "sealed": b""})
    for bad in (0, -1, 10_000, True, "5"):
        with pytest.raises(edil.SerializationError, match="ttl_s"):
            rs.handle(node, "rep_hello", {"session": b"b" * 32, "party": 0, "version": rs.PROTOCOL_VERSION, "ttl_s": bad})
    rs.handle(node, "rep_hello", {"session": b"s" * 32, "party": 1, "version": rs.PROTOCOL_VERSION})
    running = store.get(b"s" * 32)
    assert running is not None
    running.program = iter(())  # as after rep_start: a running session
    for k in range(rs._MAX_SESSIONS + 5):  # noqa: SLF001
        rs.handle(node, "rep_hello", {"session": k.to_bytes(32, "big"), "party": 2, "version": rs.PROTOCOL_VERSION})
    assert store.get(b"s" * 32, now[0]) is running and len(store._by_id) == rs._MAX_SESSIONS  # noqa: SLF001
    assert store.get((0).to_bytes(32, "big")) is None  # the oldest hello went first
