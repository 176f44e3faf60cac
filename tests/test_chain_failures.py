"""Chain outages and misbehaving JSON-RPC nodes: timeouts, the error tree, the cached registry view.

Every transport failure here is real: loopback HTTP servers that refuse, hang, trickle or answer
garbage, and a forwarding proxy in front of a real anvil node that can be taken down and brought
back. Nothing inside web3 is replaced; request counts come from web3's public middleware hook or
from the proxy itself.
"""

from __future__ import annotations

import contextlib
import gzip
import inspect
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eth_account import Account
from web3.middleware import Web3Middleware

import edil
from edil import ChainError
from edil import runtime as rt
from edil.proofs import Chain, ChainResponseError, ChainUnavailableError, load_artifact
from tests._chain_fixtures import ANVIL_KEYS, anvil_node
from tests.test_runtime_conformance import small_model

SECRET = "v3/SECRET-API-KEY"


# --- loopback servers ----------------------------------------------------------------------------


class QuietServer(ThreadingHTTPServer):
    """A threading HTTP server that does not print the broken pipes these tests cause on purpose."""

    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class FakeNode:
    """A loopback HTTP server that answers ``eth_chainId`` properly and everything else with
    whatever ``answer(method, request_id)`` returns: ``(status, headers, body bytes)``."""

    def __init__(self, answer: Callable[[str, Any], tuple[int, dict[str, str], bytes]]) -> None:
        self.answer = answer
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if req["method"] == "eth_chainId":
                    status, headers, body = 200, {}, json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": "0x539"}).encode()
                else:
                    status, headers, body = outer.answer(req["method"], req["id"])
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{SECRET}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def fake_node(answer: Callable[[str, Any], tuple[int, dict[str, str], bytes]]) -> Iterator[FakeNode]:
    node = FakeNode(answer)
    try:
        yield node
    finally:
        node.close()


def rpc_result(result: Any) -> Callable[[str, Any], tuple[int, dict[str, str], bytes]]:
    return lambda method, rid: (200, {}, json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode())


@contextlib.contextmanager
def raw_server(serve: Callable[[socket.socket], None]) -> Iterator[str]:
    """A loopback TCP server that hands every accepted connection to ``serve`` (in a thread)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conns.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/{SECRET}"
    finally:
        stop.set()
        listener.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()


def _assert_one_line(exc: BaseException, port_url: str) -> None:
    text = str(exc)
    assert "\n" not in text and 0 < len(text) <= 300, text
    assert SECRET not in text and "SECRET" not in text  # the URL's path (an API key) never leaks
    host = port_url.split("/")[2]
    assert host in text, text


# --- (a) refused, (b) silent, (c) garbage --------------------------------------------------------


def test_default_request_timeout_is_at_most_ten_seconds() -> None:
    default = inspect.signature(Chain.from_url).parameters["request_timeout"].default
    assert 0 < default <= 10
    with pytest.raises(ValueError):
        Chain.from_url("http://127.0.0.1:1", ANVIL_KEYS, request_timeout=0)
    with pytest.raises(ValueError):
        Chain.from_url("http://127.0.0.1:1", ANVIL_KEYS, request_timeout=float("inf"))


def test_new_error_classes_are_exported_chain_errors() -> None:
    for cls in (ChainUnavailableError, ChainResponseError):
        assert issubclass(cls, edil.ChainError) and issubclass(cls, edil.EdilError)
        assert cls.__name__ in edil.proofs.__all__
    assert not issubclass(ChainUnavailableError, ChainResponseError)
    assert not issubclass(ChainResponseError, ChainUnavailableError)


def test_refused_connection_is_chain_unavailable() -> None:
    # A bound socket that does not listen: the kernel refuses connections to it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/{SECRET}"
        t0 = time.monotonic()
        with pytest.raises(ChainUnavailableError, match="refused") as info:
            Chain.from_url(url, ANVIL_KEYS, request_timeout=2)
        assert time.monotonic() - t0 < 2.0
    _assert_one_line(info.value, url)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def _never_answer(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while conn.recv(65536):
            pass


def test_a_node_that_accepts_and_never_answers_fails_within_the_timeout() -> None:
    with raw_server(_never_answer) as url:
        t0 = time.monotonic()
        with pytest.raises(ChainUnavailableError, match="did not answer eth_chainId within 1.5 s") as info:
            Chain.from_url(url, ANVIL_KEYS, request_timeout=1.5)
        elapsed = time.monotonic() - t0
    assert 1.4 <= elapsed < 4.0, elapsed  # the deadline, not web3's retries (152 s before)
    _assert_one_line(info.value, url)


def test_a_node_that_freezes_after_connecting_times_out_each_call() -> None:
    frozen = threading.Event()

    def answer(method: str, rid: Any) -> tuple[int, dict[str, str], bytes]:
        frozen.wait(20)
        return 200, {}, b""

    with fake_node(answer) as node:
        chain = Chain.from_url(node.url, ANVIL_KEYS, request_timeout=1.0)
        for _ in range(2):
            t0 = time.monotonic()
            with pytest.raises(ChainUnavailableError, match="within 1 s"):
                chain.block_number()
            assert 0.9 <= time.monotonic() - t0 < 3.0
        frozen.set()


def _trickle(conn: socket.socket) -> None:
    """Send an HTTP header at once, then one body byte every 0.2 s: each read succeeds."""
    with contextlib.suppress(OSError):
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(500):
            conn.sendall(b" ")
            time.sleep(0.2)


def test_a_node_that_trickles_bytes_cannot_hold_the_caller_past_the_deadline() -> None:
    with raw_server(_trickle) as url:
        t0 = time.monotonic()
        with pytest.raises(ChainUnavailableError, match="did not answer"):
            Chain.from_url(url, ANVIL_KEYS, request_timeout=1.5)
        assert time.monotonic() - t0 < 3.0


def _close_without_answer(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.recv(65536)
        conn.close()


def test_a_node_that_hangs_up_is_chain_unavailable() -> None:
    with raw_server(_close_without_answer) as url:
        with pytest.raises(ChainUnavailableError, match="unreachable") as info:
            Chain.from_url(url, ANVIL_KEYS, request_timeout=2)
    _assert_one_line(info.value, url)


def _body(
    status: int, body: bytes, headers: dict[str, str] | None = None
) -> Callable[[str, Any], tuple[int, dict[str, str], bytes]]:
    return lambda method, rid: (status, headers or {}, body)


def _envelope(**fields: Any) -> Callable[[str, Any], tuple[int, dict[str, str], bytes]]:
    return lambda method, rid: (200, {}, json.dumps({"jsonrpc": "2.0", "id": rid, **fields}).encode())


GARBAGE: dict[str, tuple[Callable[[str, Any], tuple[int, dict[str, str], bytes]], type[ChainError], str]] = {
    "html": (_body(200, b"<html><body>It works!</body></html>"), ChainResponseError, "not JSON"),
    "not utf-8": (_body(200, b"\xff\xfe\x00garbage"), ChainResponseError, "not JSON"),
    "http 502": (_body(502, b"<html>Bad Gateway</html>"), ChainUnavailableError, "HTTP 502"),
    "http 429 json": (_body(429, b'{"message": "rate limited"}'), ChainUnavailableError, "HTTP 429"),
    "json array": (_body(200, b"[1, 2, 3]"), ChainResponseError, "JSON list"),
    "wrong id": (
        lambda m, rid: (200, {}, json.dumps({"jsonrpc": "2.0", "id": rid + 7, "result": "0x1"}).encode()),
        ChainResponseError,
        "another request",
    ),
    "no jsonrpc": (
        lambda m, rid: (200, {}, json.dumps({"id": rid, "result": "0x1"}).encode()),
        ChainResponseError,
        "not JSON-RPC 2.0",
    ),
    "no result": (_envelope(), ChainResponseError, "neither a result nor an error"),
    "bad error object": (_envelope(error="boom"), ChainResponseError, "error object"),
    "result not hex": (_envelope(result="0xzz"), ChainResponseError, "malformed answer"),
    "result object": (_envelope(result={"a": [1, 2]}), ChainResponseError, "malformed answer"),
    "deep nesting": (_body(200, b"[" * 30_000 + b"]" * 30_000), ChainResponseError, "nested deeper"),
    "oversized": (_envelope(result="0x" + "00" * 40_000), ChainResponseError, "more than 65536 bytes"),
    "gzip": (
        lambda m, rid: (
            200,
            {"Content-Encoding": "gzip"},
            gzip.compress(json.dumps({"jsonrpc": "2.0", "id": rid, "result": "0x1"}).encode()),
        ),
        ChainResponseError,
        "gzip-encoded",
    ),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_a_node_that_answers_garbage_raises_a_chain_error_subclass(case: str) -> None:
    answer, cls, message = GARBAGE[case]
    with fake_node(answer) as node:
        chain = Chain.from_url(node.url, ANVIL_KEYS, request_timeout=5, max_response_bytes=65536)
        with pytest.raises(cls, match=message) as info:
            chain.block_number()
    assert type(info.value) is cls
    _assert_one_line(info.value, node.url)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    deep_text = "[{" * 5_000
    with fake_node(rpc_result(deep_text)) as node:
        chain = Chain.from_url(node.url, ANVIL_KEYS, request_timeout=5)
        answer = chain.w3.provider.make_request("web3_clientVersion", [])
    assert answer["result"] == deep_text


def test_an_unterminated_string_of_escaped_quotes_is_refused_in_linear_time() -> None:
    body = b'{"jsonrpc": "2.0", "id": 1, "result": "' + b'\\"' * 30_000  # never closes
    with fake_node(_body(200, body)) as node:
        chain = Chain.from_url(node.url, ANVIL_KEYS, request_timeout=5, max_response_bytes=65536)
        t0 = time.monotonic()
        with pytest.raises(ChainResponseError, match="not JSON"):
            chain.block_number()
        assert time.monotonic() - t0 < 1.0  # a quadratic string scan would take minutes here


def test_a_json_rpc_error_object_is_a_plain_chain_error_with_the_nodes_message() -> None:
    with fake_node(_envelope(error={"code": -32000, "message": "header not found\nsecond line"})) as node:
        chain = Chain.from_url(node.url, ANVIL_KEYS, request_timeout=5)
        with pytest.raises(ChainError, match="refused eth_blockNumber: header not found second line") as info:
            chain.block_number()
    assert type(info.value) is ChainError


def test_a_view_call_with_an_undecodable_result_is_a_response_error() -> None:
    registry_abi = list(load_artifact("NodeRegistry").abi)
    with fake_node(rpc_result("0x1234")) as node:  # isNode returns 32 bytes; 2 bytes do not decode
        chain = Chain.from_url(node.url, ANVIL_KEYS, request_timeout=5)
        contract = chain.w3.eth.contract(address="0x" + "11" * 20, abi=registry_abi)
        with pytest.raises(ChainResponseError, match="isNode"):
            chain.call(contract.functions.isNode("0x" + "22" * 20))


# --- the registry view -----------------------------------------------------------------------


class Clock:
    """Monotonic seconds under the test's control; each reading advances it by ``step``."""

    def __init__(self, step: float = 0.0) -> None:
        self.t, self.step = 1000.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def count_requests(w3: Any) -> list[str]:
    """Methods of every JSON-RPC request sent through ``w3`` from now on (web3's middleware hook)."""
    seen: list[str] = []

    class Count(Web3Middleware):
        def wrap_make_request(self, make_request: Any) -> Any:
            def inner(method: str, params: Any) -> Any:
                seen.append(str(method))
                return make_request(method, params)

            return inner

    w3.middleware_onion.add(Count, name="count-requests")
    return seen


@pytest.fixture(scope="module")
def evm() -> Chain:
    return Chain.in_process()


def test_a_registry_refresh_costs_at_most_two_requests_whatever_the_node_count(evm: Chain) -> None:
    dep = evm.deploy(epoch_length=60)
    nodes = [Account.from_key(bytes([i + 1]) * 32).address for i in range(24)]
    for a in nodes:
        dep.admit_node(a)
    dep.revoke_node(nodes[5])
    stranger = Account.from_key(b"\x99" * 32).address
    truth = {a: dep.is_node(a) for a in (*nodes, stranger)}  # the contract's own answer, node by node
    assert sum(truth.values()) == 23
    clock = Clock()
    reg = rt.ChainRegistry(dep, clock=clock)
    assert reg.ttl_s == 2.0  # the stated default bound
    seen = count_requests(evm.w3)
    try:
        assert {a: reg.is_admitted(a) for a in truth} == truth
        assert seen == ["eth_blockNumber", "eth_getLogs"]  # the whole admitted set in two requests
        for _ in range(50):  # 50 dispatches x 25 checks within the staleness bound: no request
            clock.t += 0.01
            assert all(reg.is_admitted(a.lower()) == ok for a, ok in truth.items())
        assert len(seen) == 2
        clock.t += reg.ttl_s
        assert reg.is_admitted(nodes[0]) and seen[2:] == ["eth_blockNumber"]  # no new block, nothing to read
        dep.revoke_node(nodes[0])
        dep.admit_node(stranger)
        seen.clear()
        clock.t += reg.ttl_s
        assert not reg.is_admitted(nodes[0]) and reg.is_admitted(stranger)
        assert seen == ["eth_blockNumber", "eth_getLogs"]  # only the new blocks are read
        assert {a: reg.is_admitted(a) for a in truth} == {a: dep.is_node(a) for a in truth}
        assert reg.refreshes == 3 and reg.failed_refreshes == 0
    finally:
        evm.w3.middleware_onion.remove("count-requests")


def _sched(dep: Any, executor: Any, registry: Any, journal: Any = None) -> rt.Scheduler:
    return rt.Scheduler(
        executor,
        registry,
        journal or rt.Journal(":memory:"),
        identity=rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2),
        domain=dep.poai_domain,
        timeout_s=10,
    )


def test_a_node_revoked_on_chain_gets_no_new_task_after_the_staleness_bound(evm: Chain) -> None:
    dep = evm.deploy(epoch_length=60)
    seeds = [b"r" * 32, b"s" * 32]
    a, b = (rt.NodeIdentity.from_seed(s).address for s in seeds)
    for addr in (a, b):
        dep.admit_node(addr)
    clock = Clock()
    reg = rt.ChainRegistry(dep, ttl_s=2.0, clock=clock)
    ex = rt.LocalExecutor()
    try:
        sched = _sched(dep, ex, reg)
        for s in seeds:
            sched.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()))
        model = small_model()
        sched.submit_many([rt.Task.plain(model, np.full((1, 4), float(i)), allow_plaintext=True) for i in range(6)])
        assert sched.run() == {"done": 6}
        before = ex.node(a).completed
        assert before > 0 and ex.node(b).completed > 0  # both nodes were working

        clock.t += 0.5
        dep.revoke_node(a)  # mined now; the view may still hold it for up to ttl_s
        clock.t += 1.0
        assert reg.is_admitted(a)  # within the stated staleness
        clock.t += 0.5 + 1e-6  # ttl_s after the refresh that built the view
        sched.submit_many([rt.Task.plain(model, np.full((1, 4), float(i)), allow_plaintext=True) for i in range(6, 12)])
        assert sched.run() == {"done": 12}
        assert ex.node(a).completed == before  # the revoked node got no new task
        assert not reg.is_admitted(a) and reg.is_admitted(b)

        c = rt.NodeIdentity.from_seed(b"t" * 32).address
        dep.admit_node(c)  # admissions are seen within the same bound
        assert not reg.is_admitted(c)
        clock.t += 2.0
        assert reg.is_admitted(c)
    finally:
        ex.close()


# --- through a real node that goes down ---------------------------------------------------------


class Proxy:
    """A loopback HTTP forwarder in front of a JSON-RPC node; ``mode`` decides each request's fate:
    ``up`` forwards, ``hang`` reads it and never answers, ``hangup`` closes the connection,
    ``garbage`` answers 200 with non-JSON. ``down_after`` switches to ``hangup`` after that many
    forwarded requests. :meth:`stop` closes the port (connections are refused); :meth:`start`
    opens it again."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.mode, self.forwarded, self.seen = upstream, "up", 0, 0
        self.down_after: int | None = None
        self.release = threading.Event()
        self.port = 0
        self.server: QuietServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.seen += 1
                mode = proxy.mode
                if mode == "up" and proxy.down_after is not None and proxy.forwarded >= proxy.down_after:
                    mode = "hangup"
                if mode == "hang":
                    proxy.release.wait(30)
                    return
                if mode == "hangup":
                    self.close_connection = True
                    return
                if mode == "garbage":
                    payload, status = b"<html>maintenance</html>", 200
                else:
                    proxy.forwarded += 1
                    req = urllib.request.Request(proxy.upstream, body, {"Content-Type": "application/json"})
                    try:
                        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
                            payload, status = resp.read(), resp.status
                    except urllib.error.HTTPError as err:
                        payload, status = err.read(), err.code
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        server = QuietServer(("127.0.0.1", self.port), Handler)
        self.server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.server = None

    def close(self) -> None:
        self.release.set()
        if self.server is not None:
            self.stop()


@pytest.fixture(scope="module")
def anvil() -> Iterator[str]:
    with anvil_node() as url:
        yield url


@pytest.fixture
def proxy(anvil: str) -> Iterator[Proxy]:
    p = Proxy(anvil)
    try:
        yield p
    finally:
        p.close()


def _deploy_via(proxy: Proxy, n_nodes: int) -> tuple[Chain, Any, list[bytes]]:
    chain = Chain.from_url(proxy.url, ANVIL_KEYS, request_timeout=1.0)
    dep = chain.deploy(epoch_length=3600)
    seeds = [bytes([0xA0 + i]) * 32 for i in range(n_nodes)]
    for s in seeds:
        dep.admit_node(rt.NodeIdentity.from_seed(s).address)
    return chain, dep, seeds


def test_an_outage_keeps_the_last_good_view_then_fails_closed(proxy: Proxy) -> None:
    _, dep, seeds = _deploy_via(proxy, 1)
    node = rt.NodeIdentity.from_seed(seeds[0]).address
    stranger = Account.from_key(b"\x77" * 32).address
    clock = Clock()
    reg = rt.ChainRegistry(dep, ttl_s=2.0, max_stale_s=10.0, clock=clock)
    assert reg.is_admitted(node) and not reg.is_admitted(stranger)

    proxy.mode = "hang"  # a frozen node: the refresh costs one request deadline (1 s), not more
    clock.t += 3.0
    t0 = time.monotonic()
    assert reg.is_admitted(node)  # the last good view (3 s old) still answers
    assert 0.9 <= time.monotonic() - t0 < 3.0
    assert reg.failed_refreshes == 1 and isinstance(reg.last_error, ChainUnavailableError)
    seen = proxy.seen
    clock.t += 0.5
    t0 = time.monotonic()
    assert reg.is_admitted(node) and not reg.is_admitted(stranger)  # backing off: no request, no wait
    assert time.monotonic() - t0 < 0.2 and proxy.seen == seen

    proxy.mode = "garbage"
    clock.t = 1000.0 + 10.5  # past the hard bound; the retry fails again
    for addr in (node, stranger):
        with pytest.raises(ChainUnavailableError, match="cannot be read"):
            reg.is_admitted(addr)  # fail closed: nobody is admitted
    assert isinstance(reg.last_error, ChainResponseError)

    proxy.mode = "up"
    clock.t += 0.5  # still within the backoff: no retry yet
    with pytest.raises(ChainUnavailableError):
        reg.is_admitted(node)
    clock.t += reg.MAX_BACKOFF_S
    assert reg.is_admitted(node) and not reg.is_admitted(stranger)
    assert reg.last_error is None


def test_the_view_undoes_an_admission_that_a_reorganisation_removed(proxy: Proxy) -> None:
    chain, dep, _ = _deploy_via(proxy, 0)
    newcomer = Account.from_key(b"\x55" * 32).address
    clock = Clock()
    reg = rt.ChainRegistry(dep, ttl_s=0.0, reorg_depth=12, clock=clock)
    assert not reg.is_admitted(newcomer)
    snapshot = chain.w3.provider.make_request("evm_snapshot", [])["result"]
    dep.admit_node(newcomer)
    chain.mine()
    assert reg.is_admitted(newcomer)
    # anvil drops the blocks after the snapshot, as a reorganisation would, and the chain grows again
    assert chain.w3.provider.make_request("evm_revert", [snapshot])["result"] is True
    for _ in range(3):
        chain.mine()
    assert not dep.is_node(newcomer)
    assert not reg.is_admitted(newcomer)


@pytest.mark.parametrize("coordinator", ["same", "restarted"])
def test_run_resumes_from_the_journal_after_a_chain_outage(proxy: Proxy, tmp_path: Path, coordinator: str) -> None:
    _, dep, seeds = _deploy_via(proxy, 2)
    journal_path = tmp_path / "jobs.sqlite"
    model = small_model()
    inputs = [np.full((1, 4), float(i)) for i in range(8)]
    clock = Clock(step=0.001)

    def scheduler() -> tuple[rt.Scheduler, rt.LocalExecutor]:
        ex = rt.LocalExecutor()
        # ttl 0 and no grace: every dispatch reads the chain, and the first failed read fails closed
        registry = rt.ChainRegistry(dep, ttl_s=0.0, max_stale_s=0.0, clock=clock)
        sched = _sched(dep, ex, registry, rt.Journal(journal_path))
        for s in seeds:
            sched.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()))
        return sched, ex

    sched, ex = scheduler()
    ids = sched.submit_many([rt.Task.plain(model, x, allow_plaintext=True) for x in inputs])
    # The chain goes away mid-run: each dispatch reads it 4 times (2 nodes x 2 requests), so the
    # first 6 dispatches go out and the 5th and 6th only after replies completed jobs.
    proxy.down_after = proxy.forwarded + 26
    try:
        with pytest.raises(ChainUnavailableError, match="node registry cannot be read"):
            sched.run()
        counts = sched.journal.counts()
        assert counts.get("done", 0) >= 1 and counts.get("pending", 0) >= 1 and "failed" not in counts, counts
        clock.t += 60
        with pytest.raises(ChainUnavailableError):
            sched.run()  # still down: the run refuses again, and nothing is given up
        assert "failed" not in sched.journal.counts()

        proxy.down_after = None  # the chain is back
        clock.t += 60  # past the registry's retry backoff
        if coordinator == "restarted":
            ex.close()
            sched.journal.close()
            sched, ex = scheduler()  # a new coordinator process on the same journal
        assert sched.run() == {"done": 8}
        for jid, x in zip(ids, inputs, strict=True):
            out = rt.array_from_bytes(sched.result(jid))
            np.testing.assert_allclose(out, model.forward(x), rtol=1e-12, atol=1e-12)
    finally:
        ex.close()
        sched.journal.close()
