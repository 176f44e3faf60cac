"""The chain client: one code path for the in-process EVM and any JSON-RPC node.

``Chain.in_process()`` runs py-evm inside the Python process (web3's ``EthereumTesterProvider``, no
server); ``Chain.from_url()`` talks JSON-RPC to anvil, a testnet or mainnet. Both sign every
transaction locally with eth-account keys and go through the same :meth:`Chain.transact`, so the
contract logic is exercised identically. Only moving the clock differs (eth-tester's time travel vs
anvil's ``evm_setNextBlockTimestamp``), and a public chain refuses it.

Every failure of the chain is an exception of the EDIL tree; reverts carry the decoded reason::

    ChainError                         any revert (.reason, .error_name, .error_args), or a JSON-RPC
    │                                  error object the node sent instead of a result
    ├── ChainAuthorizationError        also AuthorizationError (NotOwner, NodeNotAdmitted, ...)
    ├── ChainVerificationError         also VerificationError (QuorumNotMet, ...)
    ├── ChainReplayError               also ReplayError (EpochAlreadyClaimed, RootAlreadyPosted, ...)
    ├── ChainUnavailableError          the node cannot be reached or did not answer in time
    │                                  (connection refused or reset, timeout, HTTP error status)
    └── ChainResponseError             the node answered, but not with a well-formed JSON-RPC answer
                                       (not JSON, too large or deeply nested, wrong id, bad result)

JSON-RPC transport (``Chain.from_url``): every request has one deadline (``request_timeout``,
default :data:`DEFAULT_RPC_TIMEOUT_S` = 10 s) that covers connecting, sending and reading the whole
answer; there are no hidden retries (a caller that wants them retries on
:class:`ChainUnavailableError`); answers are bounded in size and nesting before they are parsed.
Error messages name the endpoint as ``scheme://host:port`` only, so an API key in a URL's path or
query never reaches a log.
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import math
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from fractions import Fraction
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
from eth_abi import decode as abi_decode
from eth_abi.exceptions import EncodingError as AbiEncodingError
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester import exceptions as tester_exceptions
from eth_tester.exceptions import TransactionFailed
from eth_typing import ChecksumAddress, HexAddress, HexStr
from web3 import Web3
from web3.exceptions import ContractLogicError, MismatchedABI, TimeExhausted, Web3RPCError, Web3ValidationError
from web3.logs import DISCARD
from web3.providers.base import JSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from edil import (
    AuthorizationError,
    ChainError,
    ParameterError,
    ReplayError,
    SerializationError,
    ShapeError,
    UnsupportedOperationError,
    VerificationError,
)

from ._artifacts import CONTRACT_NAMES, load_artifact
from ._hashing import (
    Eip712Domain,
    address_word,
    check_address,
    check_bytes32,
    check_uint,
    keccak256,
    private_key_bytes,
    sign_digest,
    word,
)
from ._merkle import InclusionProof, MerkleTree
from ._transcript import AuditAttestation, EpochBatch, Transcript

_FORKS = ("shanghai", "cancun", "prague")


class ChainAuthorizationError(ChainError, AuthorizationError):
    """The chain refused a caller or subject that dAuth does not admit."""


class ChainVerificationError(ChainError, VerificationError):
    """The chain rejected signatures or a proof (e.g. an oracle quorum was not met)."""


class ChainReplayError(ChainError, ReplayError):
    """The chain refused something already recorded (a claimed epoch, a posted root)."""


class ChainTooEarlyError(ChainError):
    """The chain refused a step whose time has not come: an escrow slot before its epoch's audit
    window has passed, a refund before the job's start deadline, a withdrawal before unbonding ends."""


class ChainFundsError(ChainError):
    """The chain refused a token movement: balance, allowance or stake too small."""


class ChainUnavailableError(ChainError):
    """The chain node could not be reached or did not answer in time: connection refused or
    reset, no complete answer before the request deadline, or an HTTP error status.

    Transient: retrying later may succeed. A transaction whose sending failed this way may still
    have reached the node (and be mined); re-check its nonce before sending it again.
    """


class ChainResponseError(ChainError):
    """The chain node answered, but not with a well-formed JSON-RPC answer: not JSON, too large or
    too deeply nested, an answer to another request, or a result that does not decode."""


_ERROR_CLASSES: dict[str, type[ChainError]] = {
    "NotOwner": ChainAuthorizationError,
    "NodeNotAdmitted": ChainAuthorizationError,
    "OracleNotAdmitted": ChainAuthorizationError,
    "QuorumNotMet": ChainVerificationError,
    "QuorumNotConfigured": ChainVerificationError,
    "EpochAlreadyClaimed": ChainReplayError,
    "RootAlreadyPosted": ChainReplayError,
    "AuditAlreadyRecorded": ChainReplayError,
    "JobExists": ChainReplayError,
    "AlreadySettled": ChainReplayError,
    "AlreadySlashed": ChainReplayError,
    "JobClosed": ChainReplayError,
    "PoolExists": ChainReplayError,
    "AlreadyRegistered": ChainReplayError,
    "AlreadyPaid": ChainReplayError,
    "RegistrationOpen": ChainTooEarlyError,
    "NotAdmin": ChainAuthorizationError,
    "NotAttestor": ChainAuthorizationError,
    "NotLicenceHolder": ChainAuthorizationError,
    "UnknownAttestor": ChainAuthorizationError,
    "LicenceRevoked": ChainAuthorizationError,
    "AttestationUsed": ChainReplayError,
    "NodeAlreadyBound": ChainReplayError,
    "NodeNotLicensed": ChainAuthorizationError,
    "NotLicence": ChainAuthorizationError,
    "LicenceAlreadySet": ChainReplayError,
    "AttestationExpired": ChainVerificationError,
    "AggregateAlreadyPosted": ChainReplayError,
    "NotOracle": ChainAuthorizationError,
    "NotInAggregate": ChainVerificationError,
    "NotOperator": ChainAuthorizationError,
    "OwnableUnauthorizedAccount": ChainAuthorizationError,
    "JobStarted": ChainVerificationError,
    "AuditWindowOpen": ChainTooEarlyError,
    "StartDeadlineNotReached": ChainTooEarlyError,
    "StillUnbonding": ChainTooEarlyError,
    "InsufficientStake": ChainFundsError,
    "ERC20InsufficientBalance": ChainFundsError,
    "ERC20InsufficientAllowance": ChainFundsError,
}


@functools.cache
def _error_table() -> dict[str, tuple[str, list[str], list[str]]]:
    table: dict[str, tuple[str, list[str], list[str]]] = {}
    for name in CONTRACT_NAMES:
        for item in load_artifact(name).abi:
            if item.get("type") != "error":
                continue
            types = [i["type"] for i in item["inputs"]]
            selector = keccak256(f"{item['name']}({','.join(types)})".encode())[:4].hex()
            table[selector] = (item["name"], types, [i["name"] for i in item["inputs"]])
    return table


def _format_arg(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


# Exceptions that mean "the EVM reverted": web3's for JSON-RPC nodes, eth-tester's in process.
_REVERTS = (ContractLogicError, TransactionFailed)


#: Revert data longer than this is not decoded (a contract's custom errors are a few words).
_MAX_REVERT_BYTES = 32_768
# What ``repr(bytes)`` produces, and nothing else: printable ASCII but the quote and backslash,
# and the escapes \\ \' \" \t \n \r \xHH. Parsed by hand: ``ast.literal_eval`` would compile
# arbitrary text from the RPC (deep nesting reaches the C parser's limits).
_REPR_CHAR = r"""[ !#-&(-\[\]-~]|\\[\\'"tnr]|\\x[0-9a-fA-F]{2}"""
_BYTES_REPR = re.compile(rf"b'((?:{_REPR_CHAR}|\")*)'|b\"((?:{_REPR_CHAR}|')*)\"")
_REPR_ESCAPE = re.compile(r"""\\(x[0-9a-fA-F]{2}|[\\'"tnr])""")
_REPR_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "t": "\t", "n": "\n", "r": "\r"}
_HEX_PAIRS = re.compile(r"(?:[0-9a-fA-F]{2})*")


def _bytes_from_repr(text: str) -> bytes | None:
    """The bytes whose ``repr`` is ``text``, or ``None`` when ``text`` is not such a repr."""
    if len(text) > 4 * _MAX_REVERT_BYTES + 3:
        return None
    m = _BYTES_REPR.fullmatch(text)
    if m is None:
        return None
    inner = m.group(1) if m.group(1) is not None else m.group(2)

    def unescape(e: re.Match[str]) -> str:
        code = e.group(1)
        return chr(int(code[1:], 16)) if code[0] == "x" else _REPR_ESCAPES[code]

    return _REPR_ESCAPE.sub(unescape, inner).encode("latin-1")


def _revert_data(exc: BaseException) -> str | None:
    """The raw revert data as 0x-hex, from web3's ``.data`` or eth-tester's chained exceptions."""
    data = getattr(exc, "data", None)
    if isinstance(data, str) and data.startswith("0x"):
        return data
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TransactionFailed) and current.args:
            first = current.args[0]
            if isinstance(first, Exception) and first.args:
                first = first.args[0]
            if isinstance(first, bytes | bytearray):
                return "0x" + bytes(first).hex()
            if isinstance(first, str):  # eth_call reverts: the data arrives as the repr of bytes
                raw = _bytes_from_repr(first.removeprefix("execution reverted: "))
                if raw is not None:
                    return "0x" + raw.hex()
        current = current.__cause__ or current.__context__
    return None


def translate_revert(exc: BaseException) -> ChainError:
    """Turn a web3 or eth-tester revert into the matching :class:`ChainError` subclass with the decoded reason."""
    data = _revert_data(exc)
    name: str | None = None
    args: dict[str, Any] = {}
    reason = getattr(exc, "message", None) or str(exc)
    if (
        isinstance(data, str)
        and data.startswith("0x")
        and 10 <= len(data) <= 2 + 2 * _MAX_REVERT_BYTES
        and _HEX_PAIRS.fullmatch(data, 2) is not None
    ):
        selector, payload = data[2:10].lower(), bytes.fromhex(data[10:])
        if selector == "08c379a0":  # Error(string)
            try:
                reason = abi_decode(["string"], payload)[0]
            except Exception:  # noqa: BLE001 - a malformed payload keeps the raw message
                pass
        elif selector in _error_table():
            name, types, names = _error_table()[selector]
            try:
                values = abi_decode(types, payload)
                args = {
                    k: (check_address(v) if t == "address" else v)
                    for k, t, v in zip(names, types, values, strict=True)
                }
            except Exception:  # noqa: BLE001
                args = {}
            reason = f"{name}(" + ", ".join(f"{k}={_format_arg(v)}" for k, v in args.items()) + ")"
    cls = _ERROR_CLASSES.get(name or "", ChainError)
    err = cls(f"chain reverted: {reason}", reason=reason)
    err.error_name = name  # type: ignore[attr-defined]
    err.error_args = args  # type: ignore[attr-defined]
    return err


# -- JSON-RPC transport: deadlines, bounded answers, one error tree -------------------------------

#: Default deadline of one JSON-RPC request (connect, send, read the whole answer), in seconds.
DEFAULT_RPC_TIMEOUT_S = 10.0
#: Default cap on one JSON-RPC answer; larger answers are refused before they are parsed.
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
# Deepest JSON nesting accepted in an answer (blocks with access lists need < 10). Checked before
# parsing: importing py-evm raises Python's recursion limit, so a deeply nested answer would
# otherwise overflow the C stack inside the JSON parser instead of raising RecursionError.
_MAX_JSON_DEPTH = 64
# A JSON string, or an unterminated one up to the end: every match attempt that starts at a quote
# succeeds, so the scan stays linear on hostile input (e.g. a quote followed by escaped quotes).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_READ_CHUNK = 64 * 1024


def _one_line(text: object, limit: int = 200) -> str:
    """``text`` on one line, at most ``limit`` characters (node messages are untrusted and unbounded)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _endpoint_label(url: str) -> str:
    """``scheme://host:port`` of an RPC URL: paths and queries often hold API keys."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _os_cause(exc: BaseException) -> str:
    """The innermost OS-level reason of a connection failure (e.g. 'Connection refused')."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.strerror:
            return str(cur.strerror)
        todo.extend(a for a in cur.args if isinstance(a, BaseException))
        for nxt in (cur.__cause__, cur.__context__, getattr(cur, "reason", None)):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return type(exc).__name__


def _json_depth(raw: bytes) -> int:
    """Deepest bracket nesting of JSON text, brackets inside strings ignored."""
    outside = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    step = np.isin(outside, (0x5B, 0x7B)).astype(np.int64) - np.isin(outside, (0x5D, 0x7D)).astype(np.int64)
    return int(np.cumsum(step).max(initial=0))


def _parse_bounded_json(raw: bytes) -> Any:
    """Parse JSON of bounded nesting. Raises SerializationError, or UnicodeDecodeError (both ValueErrors)."""
    text = raw.decode("utf-8")
    if _json_depth(raw) > _MAX_JSON_DEPTH:
        raise SerializationError(f"nested deeper than {_MAX_JSON_DEPTH}")
    return json.loads(text)


def _rpc_envelope_problem(obj: Any, request_id: int) -> str | None:
    """Why ``obj`` is not a JSON-RPC 2.0 answer to request ``request_id`` (None if it is one)."""
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__} instead of a JSON-RPC object"
    if obj.get("jsonrpc") != "2.0":
        return "not JSON-RPC 2.0"
    rid = obj.get("id")
    if type(rid) is not int or rid != request_id:
        return "an answer to another request (id mismatch)"
    if ("result" in obj) == ("error" in obj):
        return "neither a result nor an error" if "result" not in obj else "both a result and an error"
    if "error" in obj:
        err = obj["error"]
        if not isinstance(err, dict) or type(err.get("code")) is not int or not isinstance(err.get("message"), str):
            return "an error object without an integer code and a string message"
    return None


class _DeadlineSocket(socket.socket):
    """A TCP socket whose every read waits at most until ``deadline`` (monotonic seconds).

    ``http.client`` reads through ``recv_into``; arming the timeout before each read makes the
    request deadline cover the whole answer, however slowly the node trickles it out.
    """

    deadline = math.inf

    def _arm(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        self.settimeout(remaining)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        return super().recv_into(buffer, nbytes, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        return super().recv(bufsize, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._arm()
        super().sendall(data, flags)


class _DeadlineSSLSocket(ssl.SSLSocket):
    """The TLS counterpart of :class:`_DeadlineSocket` (installed as the context's socket class)."""

    deadline = math.inf

    def _arm(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        self.settimeout(remaining)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        self._arm()
        return super().recv_into(buffer, nbytes, flags)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        self._arm()
        return super().recv(buflen, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._arm()
        super().sendall(data, flags)


def _set_deadline(sock: Any, deadline: float) -> None:
    sock.deadline = deadline
    sock.settimeout(max(deadline - time.monotonic(), 1e-3))


class _HttpJsonRpcProvider(JSONBaseProvider):
    """JSON-RPC over HTTP(S): one deadline per request, a bounded answer, no retries.

    Failures are raised as :class:`ChainUnavailableError` (transport, deadline, HTTP status) or
    :class:`ChainResponseError` (an answer that is not a JSON-RPC 2.0 answer to this request);
    a well-formed JSON-RPC error object is passed on to web3 (reverts carry their data in it).
    Idle keep-alive connections are reused; environment proxies are not used.
    """

    _POOL = 4

    def __init__(self, url: str, *, timeout_s: float, max_response_bytes: int) -> None:
        super().__init__()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ParameterError("url must be an http(s) JSON-RPC endpoint")
        self.endpoint_uri = url
        self.label = _endpoint_label(url)
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", "Accept-Encoding": "identity"}
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
        self._tls: ssl.SSLContext | None = None
        if self._https:
            self._tls = ssl.create_default_context()
            self._tls.sslsocket_class = _DeadlineSSLSocket
        self._idle: list[http.client.HTTPConnection] = []
        self._idle_lock = threading.Lock()

    def __str__(self) -> str:
        return f"JSON-RPC endpoint {self.label}"

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        body = self.encode_rpc_request(method, params)
        request_id = json.loads(body)["id"]  # our own bytes: the id web3 just assigned
        status, raw = self._post(str(method), body)
        try:
            obj = _parse_bounded_json(raw)
        except ValueError as exc:
            if not 200 <= status < 300:
                raise ChainUnavailableError(
                    f"chain node {self.label} answered {method} with HTTP {status}", reason=f"http {status}"
                ) from None
            raise ChainResponseError(
                f"chain node {self.label} sent a malformed answer to {method}: not JSON ({_one_line(exc, 80)})",
                reason="malformed",
            ) from None
        problem = _rpc_envelope_problem(obj, request_id)
        if problem is not None:
            if not 200 <= status < 300:
                raise ChainUnavailableError(
                    f"chain node {self.label} answered {method} with HTTP {status}", reason=f"http {status}"
                )
            raise ChainResponseError(
                f"chain node {self.label} sent a malformed answer to {method}: {problem}", reason="malformed"
            )
        # Some nodes send a JSON-RPC error (e.g. a revert with its data) with an HTTP error status:
        # the error object is the answer.
        return obj

    def make_batch_request(self, batch_requests: Any) -> Any:
        raise ChainError("batched JSON-RPC requests are not used by EDIL's chain client", reason="unsupported")

    def is_connected(self, show_traceback: bool = False) -> bool:
        try:
            self.make_request(RPCEndpoint("web3_clientVersion"), [])
        except ChainError:
            if show_traceback:
                raise
            return False
        return True

    # -- connections -----------------------------------------------------------------------------

    def _connect(self, deadline: float) -> http.client.HTTPConnection:
        remaining = max(deadline - time.monotonic(), 1e-3)
        error: OSError = ConnectionRefusedError(111, "no address to connect to")
        for family, kind, proto, _, address in socket.getaddrinfo(self._host, self._port, 0, socket.SOCK_STREAM):
            sock = _DeadlineSocket(family, kind, proto)
            try:
                sock.settimeout(max(deadline - time.monotonic(), 1e-3))
                sock.connect(address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn_sock: Any = sock
                if self._tls is not None:
                    sock.settimeout(max(deadline - time.monotonic(), 1e-3))  # bounds the TLS handshake
                    conn_sock = self._tls.wrap_socket(sock, server_hostname=self._host)
            except OSError as exc:
                sock.close()
                error = exc
                if isinstance(exc, TimeoutError) or time.monotonic() >= deadline:
                    raise
                continue
            except BaseException:
                sock.close()
                raise
            conn_cls = http.client.HTTPSConnection if self._tls is not None else http.client.HTTPConnection
            conn = conn_cls(self._host, self._port, timeout=remaining)
            conn.sock = conn_sock
            return conn
        raise error

    def _take(self) -> http.client.HTTPConnection | None:
        with self._idle_lock:
            while self._idle:
                conn = self._idle.pop()
                sock = conn.sock
                # A kept-alive connection the node has closed (or that holds stray bytes) is readable.
                if sock is not None and not select.select([sock], [], [], 0)[0]:
                    return conn
                conn.close()
        return None

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._idle_lock:
            if len(self._idle) < self._POOL:
                self._idle.append(conn)
                return
        conn.close()

    def _timeout(self, method: str) -> ChainUnavailableError:
        return ChainUnavailableError(
            f"chain node {self.label} did not answer {method} within {self.timeout_s:g} s", reason="timeout"
        )

    def _post(self, method: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body``; return (HTTP status, answer bytes), all of it before the deadline."""
        deadline = time.monotonic() + self.timeout_s
        conn: http.client.HTTPConnection | None = None
        try:
            conn = self._take() or self._connect(deadline)
            _set_deadline(conn.sock, deadline)
            conn.request("POST", self._path, body=body, headers=self._headers)
            resp = conn.getresponse()
            encoding = (resp.getheader("Content-Encoding") or "").strip().lower()
            if encoding not in ("", "identity"):
                raise ChainResponseError(
                    f"chain node {self.label} sent a {_one_line(encoding, 40)}-encoded answer to {method}; only identity encoding is accepted",
                    reason="malformed",
                )
            declared = resp.getheader("Content-Length")
            if declared is not None and declared.strip().isdigit() and int(declared) > self.max_response_bytes:
                raise self._too_large(method)
            chunks: list[bytes] = []
            size = 0
            while chunk := resp.read(_READ_CHUNK):
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise self._too_large(method)
                chunks.append(chunk)
            status = resp.status
            if resp.will_close:
                conn.close()
            else:
                self._give_back(conn)
            conn = None
            return status, b"".join(chunks)
        except ChainError:
            raise
        except TimeoutError:  # socket.timeout is TimeoutError
            raise self._timeout(method) from None
        except (http.client.RemoteDisconnected, http.client.IncompleteRead, OSError) as exc:
            if time.monotonic() >= deadline:
                raise self._timeout(method) from None
            cause = (
                "closed the connection without a complete answer"
                if isinstance(exc, http.client.HTTPException)
                else _os_cause(exc)
            )
            raise ChainUnavailableError(
                f"chain node {self.label} is unreachable ({method}): {_one_line(cause, 80)}", reason="unreachable"
            ) from None
        except http.client.HTTPException as exc:
            raise ChainResponseError(
                f"chain node {self.label} sent something that is not an HTTP answer to {method} ({type(exc).__name__})",
                reason="malformed",
            ) from None
        finally:
            if conn is not None:
                conn.close()

    def _too_large(self, method: str) -> ChainResponseError:
        return ChainResponseError(
            f"chain node {self.label} sent more than {self.max_response_bytes} bytes in answer to {method}", reason="too large"
        )


# Raised while a call's arguments are encoded, before anything is sent: the caller's mistake.
_CALLER_MISTAKES = (Web3ValidationError, MismatchedABI, AbiEncodingError)


@contextmanager
def _chain_errors(what: str, where: str = "the chain node") -> Iterator[None]:
    """Turn every failure of a chain request into the EDIL error tree (see the module docstring).

    Args:
        what: the request, as the message names it.
        where: the node, as the message names it (never a URL with its path).
    """
    try:
        yield
    except ChainError:
        raise
    except _REVERTS as exc:
        raise translate_revert(exc) from exc
    except _CALLER_MISTAKES:
        raise
    except Web3RPCError as exc:
        response = getattr(exc, "rpc_response", None)
        error = response.get("error") if isinstance(response, Mapping) else None
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            message = _one_line(f"{error['message']} (code {error.get('code')})")
        else:
            message = _one_line(getattr(exc, "message", None) or exc)
        raise ChainError(f"{where} refused {what}: {message}", reason=message) from exc
    except tester_exceptions.ValidationError as exc:  # the in-process EVM refusing a transaction
        message = _one_line(exc)
        raise ChainError(f"{where} refused {what}: {message}", reason=message) from exc
    except OSError as exc:  # transport failures of providers other than ours (requests' errors are OSErrors)
        raise ChainUnavailableError(
            f"{where} is unreachable ({what}): {_one_line(_os_cause(exc), 80)}", reason="unreachable"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a malformed result can fail anywhere in web3's result formatting
        raise ChainResponseError(
            f"{where} sent a malformed answer to {what}: {type(exc).__name__}: {_one_line(exc, 120)}", reason="malformed"
        ) from exc


@dataclass(frozen=True, slots=True)
class TxResult:
    """A mined, successful transaction.

    Attributes:
        tx_hash: the 32-byte transaction hash.
        receipt: the full receipt as web3 returned it.
        gas_used: gas charged, the 21,000 base cost included.
        block_number: the block that included it.
    """

    tx_hash: bytes
    receipt: Mapping[str, Any]
    gas_used: int
    block_number: int


class _Clock:
    def mine(self, w3: Web3) -> None:
        raise NotImplementedError

    def mine_at(self, w3: Web3, timestamp: int) -> None:
        raise NotImplementedError


class _TesterClock(_Clock):
    def __init__(self, tester: Any) -> None:
        self._tester = tester

    def mine(self, w3: Web3) -> None:
        self._tester.mine_blocks(1)

    def mine_at(self, w3: Web3, timestamp: int) -> None:
        # eth-tester's time travel mines a block about one second short of the target; top it up.
        self._tester.time_travel(timestamp)
        while int(w3.eth.get_block("latest")["timestamp"]) < timestamp:
            self._tester.mine_blocks(1)


class _DevRpcClock(_Clock):
    """anvil/hardhat development RPC."""

    def _rpc(self, w3: Web3, method: str, params: list[Any]) -> None:
        response = w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if isinstance(response, Mapping) and response.get("error"):
            raise ChainError(f"{method} refused: {response['error']}", reason=str(response["error"]))

    def mine(self, w3: Web3) -> None:
        self._rpc(w3, "evm_mine", [])

    def mine_at(self, w3: Web3, timestamp: int) -> None:
        self._rpc(w3, "evm_setNextBlockTimestamp", [timestamp])
        self._rpc(w3, "evm_mine", [])


Signer = LocalAccount | bytes | str


class Chain:
    """An EVM chain with locally held signing keys.

    Build one with :meth:`in_process` or :meth:`from_url`; deploy the EDIL contracts with
    :meth:`deploy` or bind deployed ones with :meth:`attach`.

    Attributes:
        w3: the underlying ``Web3`` object.
        accounts: funded signing accounts; ``accounts[0]`` is the default sender.
        chain_id: EIP-155 chain id.
        gas_log: every transaction this object sent, as ``(function, sender, gas_used)``
            (``"constructor"`` for deployments, ``"transfer"`` for :meth:`fund`).
        reorg_depth: how many of the latest blocks a reorganisation may still replace; views
            built from events re-read that many blocks (0 for the in-process EVM, which never forks).
    """

    def __init__(
        self, w3: Web3, accounts: Sequence[LocalAccount], clock: _Clock, *, receipt_timeout: float = 120.0, reorg_depth: int = 12
    ):
        if not accounts:
            raise ParameterError("a Chain needs at least one signing account")
        if isinstance(reorg_depth, bool) or not isinstance(reorg_depth, int) or reorg_depth < 0:
            raise ParameterError("reorg_depth must be an int >= 0")
        self.reorg_depth = reorg_depth
        self.w3 = w3
        self.accounts: tuple[LocalAccount, ...] = tuple(accounts)
        label = getattr(w3.provider, "label", None)
        self._where = f"chain node {label}" if isinstance(label, str) else "the chain"
        with self._errors("eth_chainId"):
            self.chain_id: int = int(w3.eth.chain_id)
        self._clock = clock
        self._receipt_timeout = receipt_timeout
        self.gas_log: list[tuple[str, str, int]] = []

    @classmethod
    def in_process(cls, *, fork: str = "cancun") -> Chain:
        """A fresh in-process EVM (py-evm) with ten funded accounts; no server, nothing to install.

        Args:
            fork: ``"cancun"`` (default: the contracts' compile target), ``"shanghai"`` or ``"prague"``.
        """
        from eth.vm.forks import CancunVM, PragueVM, ShanghaiVM
        from eth_tester import EthereumTester, PyEVMBackend
        from web3 import EthereumTesterProvider

        vms = {"shanghai": ShanghaiVM, "cancun": CancunVM, "prague": PragueVM}
        if fork not in vms:
            raise ParameterError(f"fork must be one of {_FORKS}, got {fork!r}")
        backend = PyEVMBackend(vm_configuration=((0, vms[fork]),))
        tester = EthereumTester(backend)
        w3 = Web3(EthereumTesterProvider(tester))
        accounts = [Account.from_key(k.to_bytes()) for k in backend.account_keys]
        return cls(w3, accounts, _TesterClock(tester), reorg_depth=0)

    @classmethod
    def from_url(
        cls,
        url: str,
        private_keys: Sequence[Any],
        *,
        request_timeout: float = DEFAULT_RPC_TIMEOUT_S,
        receipt_timeout: float = 120.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        reorg_depth: int = 12,
    ) -> Chain:
        """A JSON-RPC chain (anvil, a testnet, mainnet) with the given funded signing keys.

        Time can be moved only on development nodes (anvil, hardhat).

        Args:
            url: the node's ``http(s)://`` JSON-RPC endpoint.
            private_keys: funded signing keys; the first is the default sender.
            request_timeout: deadline of each JSON-RPC request in seconds (connect, send and read
                the whole answer); no request is retried behind the caller's back.
            receipt_timeout: how long :meth:`transact` waits for a transaction to be mined.
            max_response_bytes: larger answers are refused (:class:`ChainResponseError`).
            reorg_depth: how many of the latest blocks a reorganisation may replace on this chain.

        Raises:
            ParameterError: a malformed URL or a non-positive timeout or bound.
            ChainUnavailableError: nothing answers at ``url`` within ``request_timeout``.
            ChainResponseError: something answers, but not as an EVM JSON-RPC node.
        """
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ParameterError("url must be an http(s) JSON-RPC endpoint")
        for name, value in (("request_timeout", request_timeout), ("receipt_timeout", receipt_timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ParameterError(f"{name} must be a positive number of seconds, got {value!r}")
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int) or max_response_bytes < 1024:
            raise ParameterError("max_response_bytes must be an int >= 1024")
        provider = _HttpJsonRpcProvider(url, timeout_s=float(request_timeout), max_response_bytes=max_response_bytes)
        w3 = Web3(provider)
        accounts = [Account.from_key(private_key_bytes(k)) for k in private_keys]
        return cls(w3, accounts, _DevRpcClock(), receipt_timeout=float(receipt_timeout), reorg_depth=reorg_depth)

    def _errors(self, what: str) -> Any:
        """Context manager: failures of the request ``what`` become :class:`ChainError` subclasses."""
        return _chain_errors(what, self._where)

    # -- accounts and transactions -------------------------------------------------------------

    @property
    def default_account(self) -> LocalAccount:
        return self.accounts[0]

    @staticmethod
    def account(signer: Signer) -> LocalAccount:
        """A ``LocalAccount`` from an account or a private key."""
        if isinstance(signer, LocalAccount):
            return signer
        return Account.from_key(private_key_bytes(signer))

    def transact(self, call: Any, sender: Signer | None = None, *, value: int = 0) -> TxResult:
        """Sign and send a contract call (or constructor) from ``sender``; wait for its receipt.

        Raises:
            ChainError: the call reverts (subclass by reason) or the transaction fails on chain.
        """
        account = self.account(sender) if sender is not None else self.default_account
        label = str(getattr(call, "fn_name", "constructor"))
        with self._errors(f"preparing {label}"):
            nonce = self.w3.eth.get_transaction_count(account.address, "pending")
            tx = call.build_transaction({"from": account.address, "nonce": nonce, "chainId": self.chain_id, "value": value})
        return self._send(account, tx, label)

    def _send(self, account: LocalAccount, tx: Mapping[str, Any], label: str) -> TxResult:
        signed = account.sign_transaction(dict(tx))
        with self._errors(f"sending {label}"):
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            try:
                receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self._receipt_timeout)
            except TimeExhausted:
                raise ChainError(
                    f"{label}: transaction was not mined within {self._receipt_timeout:g} s", reason="timeout"
                ) from None
            status, gas_used, block = int(receipt["status"]), int(receipt["gasUsed"]), int(receipt["blockNumber"])
        if status != 1:
            raise ChainError(f"{label}: transaction reverted on chain", reason="status 0")
        self.gas_log.append((label, account.address, gas_used))
        return TxResult(bytes(tx_hash), receipt, gas_used, block)

    def call(self, call: Any) -> Any:
        """Run a view function.

        Raises:
            ChainError: the call reverts (subclass by reason), or a JSON-RPC error.
            ChainUnavailableError: the node cannot be reached or did not answer in time.
            ChainResponseError: the answer is malformed or does not decode.
        """
        with self._errors(str(getattr(call, "fn_name", "eth_call"))):
            return call.call()

    def block_number(self) -> int:
        """Number of the latest block (one ``eth_blockNumber`` request)."""
        with self._errors("eth_blockNumber"):
            number = self.w3.eth.block_number
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ChainResponseError(
                f"{self._where} sent a malformed answer to eth_blockNumber: {_one_line(repr(number), 80)}", reason="malformed"
            )
        return number

    def block_hash(self, number: int) -> bytes:
        """Hash of block ``number``.

        Raises:
            ChainError: the block does not exist (yet), or any failure of the request.
        """
        check_uint(number, "block number", 64)
        with self._errors("eth_getBlockByNumber"):
            value = bytes(self.w3.eth.get_block(number)["hash"])
        if len(value) != 32:
            raise ChainResponseError(
                f"{self._where} sent a malformed answer to eth_getBlockByNumber: a hash of {len(value)} bytes", reason="malformed"
            )
        return value

    def logs(self, address: str, topics: Sequence[Any], from_block: int, to_block: int) -> list[Mapping[str, Any]]:
        """Event logs of ``address`` matching ``topics`` in blocks ``[from_block, to_block]`` (one
        ``eth_getLogs`` request; nodes may refuse wide ranges, so callers keep ranges short)."""
        check_uint(from_block, "from_block", 64)
        check_uint(to_block, "to_block", 64)
        params = {"address": check_address(address), "fromBlock": from_block, "toBlock": to_block, "topics": list(topics)}
        with self._errors("eth_getLogs"):
            logs = self.w3.eth.get_logs(params)  # type: ignore[arg-type]
            if not isinstance(logs, list | tuple):
                raise ChainResponseError(
                    f"{self._where} sent a malformed answer to eth_getLogs: a {type(logs).__name__}, not a list of logs",
                    reason="malformed",
                )
            return list(logs)

    def fund(self, address: str, wei: int, *, sender: Signer | None = None) -> TxResult:
        """Send ``wei`` to ``address`` (e.g. gas money for a fresh node key)."""
        account = self.account(sender) if sender is not None else self.default_account
        to, amount = check_address(address), check_uint(wei, "wei", 256)
        with self._errors("preparing transfer"):
            tx = {
                "to": to,
                "value": amount,
                "nonce": self.w3.eth.get_transaction_count(account.address, "pending"),
                "chainId": self.chain_id,
                "gas": 21_000,
                "maxFeePerGas": 2 * int(self.w3.eth.get_block("latest")["baseFeePerGas"]) + 10**9,
                "maxPriorityFeePerGas": 10**9,
            }
        return self._send(account, tx, "transfer")

    # -- time ----------------------------------------------------------------------------------

    def timestamp(self) -> int:
        """Timestamp of the latest block."""
        with self._errors("eth_getBlockByNumber"):
            return int(self.w3.eth.get_block("latest")["timestamp"])

    def mine(self) -> None:
        """Mine one block (development chains only)."""
        with self._errors("mining a block"):
            self._clock.mine(self.w3)

    def advance_time(self, seconds: int) -> int:
        """Mine a block ``seconds`` after the latest one (development chains only); returns its timestamp."""
        check_uint(seconds, "seconds", 64)
        target = self.timestamp() + max(1, seconds)
        with self._errors("moving the chain's clock"):
            self._clock.mine_at(self.w3, target)
        return target

    # -- contracts -----------------------------------------------------------------------------

    def deploy(
        self,
        *,
        epoch_length: int = 3600,
        genesis_time: int | None = None,
        owner: Signer | None = None,
        token: str | None = None,
        audit_window: int | None = None,
        treasury: str | None = None,
        slash_bps: int = 1000,
        unbonding_delay: int | None = None,
        registration_window: int | None = None,
        max_nodes_per_licence: int = 8,
        require_licence: bool = False,
    ) -> Deployment:
        """Deploy NodeRegistry, PoAIVerifier and AvailabilityLedger, then the economy: an ERC-20
        (EdilToken, unless ``token`` names one), JobEscrow, StakeManager, AvailabilityRewards and
        OperatorLicence.

        Args:
            epoch_length: seconds per epoch.
            genesis_time: Unix time at which epoch 0 starts (default: the latest block's time).
            owner: the registry owner and deployer, minter of the EdilToken (default ``accounts[0]``).
            token: address of an ERC-20 to pay and stake in (default: deploy an EdilToken).
            audit_window: seconds after an epoch's end before escrowed payments of that epoch
                are settled (default: one epoch).
            treasury: receives slashed stake (default: the owner).
            slash_bps: fraction of a node's stake slashed per failed audit, in 1/10000 (1..10000).
            unbonding_delay: seconds between an unbonding request and the withdrawal (default: 7 epochs).
            registration_window: seconds after an epoch's end during which nodes register for its
                availability reward pool (default: one epoch).
            max_nodes_per_licence: node addresses one operator licence binds at most.
            require_licence: licensing on: the registry counts a node as a node (``isNode``: what
                roots, claims, :class:`~edil.runtime.ChainRegistry` and the bus follow) only while it
                is admitted and bound to a live licence, and the escrow takes only licensed nodes
                into jobs and pays nothing to a node whose licence is revoked by settlement. Default
                off, so deployments and callers that never mint licences work as before; the owner
                can turn the registry's part on later (:meth:`Deployment.set_licensing`).

        Returns:
            A :class:`Deployment` bound to the eight contracts.
        """
        owner_acct = self.account(owner) if owner is not None else self.default_account
        check_uint(epoch_length, "epoch_length", 64)
        if epoch_length == 0:
            raise ParameterError("epoch_length must be > 0")
        check_uint(slash_bps, "slash_bps", 16)
        if not 1 <= slash_bps <= 10_000:
            raise ParameterError("slash_bps must be in 1..10000")
        window = epoch_length if audit_window is None else check_uint(audit_window, "audit_window", 64)
        delay = 7 * epoch_length if unbonding_delay is None else check_uint(unbonding_delay, "unbonding_delay", 64)
        registration = (
            epoch_length if registration_window is None else check_uint(registration_window, "registration_window", 64)
        )
        sink = owner_acct.address if treasury is None else check_address(treasury)
        genesis = self.timestamp() if genesis_time is None else check_uint(genesis_time, "genesis_time", 64)
        first_block = self.block_number() + 1  # no block before this one holds a registry event
        registry = self._deploy_one("NodeRegistry", owner_acct, owner_acct.address, genesis, epoch_length)
        # The verifier first: the ledger is bound to it (a voided epoch earns no availability).
        verifier = self._deploy_one("PoAIVerifier", owner_acct, registry)
        ledger = self._deploy_one("AvailabilityLedger", owner_acct, registry, verifier)
        # The economy after the three core contracts, so their addresses do not move.
        if token is None:
            token = self._deploy_one("EdilToken", owner_acct, owner_acct.address, "EDIL Reward", "EDIL")
        else:
            token = check_address(token)
        licence = self._deploy_one(
            "OperatorLicence", owner_acct, registry, check_uint(max_nodes_per_licence, "max_nodes_per_licence", 32)
        )
        required = licence if require_licence else "0x" + "00" * 20
        escrow = self._deploy_one("JobEscrow", owner_acct, token, verifier, window, required)
        stake = self._deploy_one("StakeManager", owner_acct, token, verifier, sink, slash_bps, delay)
        rewards = self._deploy_one("AvailabilityRewards", owner_acct, token, ledger, registration)
        # The registry names its licence contract now (it can never name another one), so that
        # licensing can be switched on later without a new deployment.
        registry_contract = self.w3.eth.contract(address=_checksum(registry), abi=list(load_artifact("NodeRegistry").abi))
        self.transact(registry_contract.functions.setLicensing(_checksum(licence), bool(require_licence)), owner_acct)
        deployment = self.attach(
            owner=owner_acct, registry=registry, ledger=ledger, verifier=verifier, token=token, escrow=escrow, stake=stake,
            rewards=rewards, licence=licence,
        )
        deployment.deploy_block = first_block
        return deployment

    def _deploy_one(self, name: str, sender: LocalAccount, *args: Any) -> str:
        art = load_artifact(name)
        factory = self.w3.eth.contract(abi=list(art.abi), bytecode=art.bytecode)
        result = self.transact(factory.constructor(*args), sender)
        address = result.receipt["contractAddress"]
        if not address:
            raise ChainError(f"deploying {name} returned no contract address", reason=None)
        return str(address)

    def attach(
        self,
        *,
        registry: str,
        ledger: str,
        verifier: str,
        owner: Signer | None = None,
        token: str | None = None,
        escrow: str | None = None,
        stake: str | None = None,
        rewards: str | None = None,
        licence: str | None = None,
    ) -> Deployment:
        """Bind already deployed contracts (the economy ones are optional)."""
        owner_acct = self.account(owner) if owner is not None else self.default_account
        return Deployment(
            self,
            owner_acct,
            registry=registry,
            ledger=ledger,
            verifier=verifier,
            token=token,
            escrow=escrow,
            stake=stake,
            rewards=rewards,
            licence=licence,
        )


class EpochStatus(IntEnum):
    """Status of one node's epoch on the PoAI verifier."""

    NONE = 0
    POSTED = 1
    VERIFIED = 2
    VOIDED = 3


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """What the PoAI verifier holds for (node, epoch).

    ``task_count`` and ``work_units`` are the figures an oracle quorum attested with a passing
    audit: 0 while the epoch is only posted, and after a failed audit. Nothing the node declares
    is recorded.
    """

    root: bytes
    task_count: int
    work_units: int
    posted_block: int
    status: EpochStatus


@functools.cache
def _node_event_topics() -> tuple[bytes, bytes]:
    """topic0 of the registry's ``NodeAdmitted(address)`` and ``NodeRevoked(address)`` events."""
    return keccak256(b"NodeAdmitted(address)"), keccak256(b"NodeRevoked(address)")


@functools.cache
def _licensing_event_topics() -> tuple[bytes, bytes]:
    """topic0 of the registry's ``LicensingSet(address,bool)`` and ``NodeLicensed(address,bool)`` events."""
    return keccak256(b"LicensingSet(address,bool)"), keccak256(b"NodeLicensed(address,bool)")


#: One registry event that changes who ``isNode`` counts: ``(block, log_index, kind, address,
#: flag)`` with kind ``"admitted"`` (a node admitted/revoked by the owner), ``"licensed"`` (a node
#: bound to, or unbound from, a live licence: the licence contract reports each binding, unbinding
#: and revocation to the registry) or ``"licensing"`` (address: the licence contract, flag:
#: whether a licence is required).
MembershipEvent = tuple[int, int, str, str, bool]


def _addr(value: Any) -> str:
    if isinstance(value, LocalAccount):
        return value.address
    return check_address(value)


def _checksum(value: Any) -> ChecksumAddress:
    """A checked address in the type web3 asks for (``check_address`` already checksums it)."""
    return ChecksumAddress(HexAddress(HexStr(check_address(value))))


class Deployment:
    """The three EDIL contracts on one chain, with typed methods.

    Every transaction returns a :class:`TxResult` (receipt and gas used). Owner operations are
    sent from ``owner``; node operations from the node's own account.

    Attributes:
        chain: the :class:`Chain`.
        owner: the registry owner's account.
        registry, ledger, verifier: web3 contract objects.
        ledger_domain: EIP-712 domain of availability claims (oracles sign in it).
        poai_domain: EIP-712 domain of transcripts and audit attestations.
        deploy_block: no earlier block holds an event of these contracts (set by
            :meth:`Chain.deploy`; 0, i.e. unknown, for :meth:`Chain.attach`).
    """

    deploy_block: int = 0

    def __init__(
        self,
        chain: Chain,
        owner: LocalAccount,
        *,
        registry: str,
        ledger: str,
        verifier: str,
        token: str | None = None,
        escrow: str | None = None,
        stake: str | None = None,
        rewards: str | None = None,
        licence: str | None = None,
    ) -> None:
        w3 = chain.w3
        self.chain = chain
        self.owner = owner
        self.registry = w3.eth.contract(address=_checksum(registry), abi=list(load_artifact("NodeRegistry").abi))
        self.ledger = w3.eth.contract(address=_checksum(ledger), abi=list(load_artifact("AvailabilityLedger").abi))
        self.verifier = w3.eth.contract(address=_checksum(verifier), abi=list(load_artifact("PoAIVerifier").abi))
        self.genesis_time = int(chain.call(self.registry.functions.genesisTime()))
        self.epoch_length = int(chain.call(self.registry.functions.epochLength()))
        self.ledger_domain = Eip712Domain("EDIL AvailabilityLedger", "1", chain.chain_id, self.ledger.address)
        bound = check_address(chain.call(self.ledger.functions.verifier()))
        if bound != self.verifier.address:
            raise ChainError(
                f"the availability ledger is bound to the PoAI verifier {bound}, not {self.verifier.address}",
                reason="VerifierMismatch",
            )
        self.poai_domain = Eip712Domain("EDIL PoAI", "1", chain.chain_id, self.verifier.address)
        self.token = self._bind("EdilToken", token)
        self.escrow = self._bind("JobEscrow", escrow)
        self.stake = self._bind("StakeManager", stake)
        self.rewards = self._bind("AvailabilityRewards", rewards)
        named = check_address(chain.call(self.registry.functions.licence()))
        if licence is None and int(named, 16) != 0:
            licence = named  # the licence contract the registry follows
        self.licence = self._bind("OperatorLicence", licence)
        self.licence_domain: Eip712Domain | None = None
        if self.licence is not None and int(named, 16) != 0 and named != self.licence.address:
            raise ChainError(f"the NodeRegistry follows the licences of {named}", reason="LicenceMismatch")
        if self.licence is not None:
            if check_address(chain.call(self.licence.functions.registry())) != self.registry.address:
                raise ChainError("the OperatorLicence follows another registry", reason="RegistryMismatch")
            self.licence_domain = Eip712Domain("EDIL OperatorLicence", "1", chain.chain_id, self.licence.address)
        if self.escrow is not None and self.licence is not None:
            required = check_address(chain.call(self.escrow.functions.licence()))
            if int(required, 16) != 0 and required != self.licence.address:
                raise ChainError(f"the JobEscrow requires the licences of {required}", reason="LicenceMismatch")
        if self.rewards is not None:
            bound = check_address(chain.call(self.rewards.functions.ledger()))
            if bound != self.ledger.address:
                raise ChainError(
                    f"the AvailabilityRewards is bound to the ledger {bound}, not {self.ledger.address}",
                    reason="LedgerMismatch",
                )
        for name, contract in (("JobEscrow", self.escrow), ("StakeManager", self.stake)):
            if contract is None:
                continue
            bound = check_address(chain.call(contract.functions.verifier()))
            if bound != self.verifier.address:
                raise ChainError(
                    f"the {name} is bound to the PoAI verifier {bound}, not {self.verifier.address}",
                    reason="VerifierMismatch",
                )
            if self.token is not None and check_address(chain.call(contract.functions.token())) != self.token.address:
                raise ChainError(f"the {name} pays in another token than {self.token.address}", reason="TokenMismatch")

    def _bind(self, name: str, address: str | None) -> Any:
        if address is None:
            return None
        # Any ERC-20 binds through the EdilToken ABI (a superset of IERC20's).
        return self.chain.w3.eth.contract(address=_checksum(address), abi=list(load_artifact(name).abi))

    @property
    def addresses(self) -> dict[str, str]:
        out: dict[str, str] = {"registry": self.registry.address, "ledger": self.ledger.address, "verifier": self.verifier.address}
        for key, contract in (("token", self.token), ("escrow", self.escrow), ("stake", self.stake), ("rewards", self.rewards),
                               ("licence", self.licence)):
            if contract is not None:
                out[key] = contract.address
        return out

    def _owner_tx(self, fn: Callable[..., Any], *args: Any) -> TxResult:
        return self.chain.transact(fn(*args), self.owner)

    # -- dAuth ---------------------------------------------------------------------------------

    def admit_node(self, node: Any) -> TxResult:
        """Admit a KYC'd node operator (owner only)."""
        return self._owner_tx(self.registry.functions.admitNode, _addr(node))

    def revoke_node(self, node: Any) -> TxResult:
        return self._owner_tx(self.registry.functions.revokeNode, _addr(node))

    def admit_oracle(self, oracle: Any) -> TxResult:
        return self._owner_tx(self.registry.functions.admitOracle, _addr(oracle))

    def revoke_oracle(self, oracle: Any) -> TxResult:
        return self._owner_tx(self.registry.functions.revokeOracle, _addr(oracle))

    def set_quorum(self, m: int) -> TxResult:
        """Set m of the m-of-n oracle quorum (1 <= m <= number of oracles)."""
        return self._owner_tx(self.registry.functions.setQuorum, check_uint(m, "quorum", 32))

    def is_node(self, node: Any) -> bool:
        return bool(self.chain.call(self.registry.functions.isNode(_addr(node))))

    def node_admissions(self, from_block: int, to_block: int) -> list[tuple[int, int, str, bool]]:
        """The registry's ``NodeAdmitted``/``NodeRevoked`` events in blocks ``[from_block, to_block]``,
        in chain order, from one ``eth_getLogs`` request (a registry view replays them instead of
        asking ``isNode`` per node).

        Returns:
            ``(block, log_index, node_address, admitted)`` tuples sorted by block and log index.

        Raises:
            ChainResponseError: a log that is not one of the two events of this registry in the range.
            ChainError: any other failure of the request (see :meth:`Chain.logs`).
        """
        admitted_topic, revoked_topic = _node_event_topics()
        logs = self.chain.logs(
            self.registry.address, [["0x" + admitted_topic.hex(), "0x" + revoked_topic.hex()]], from_block, to_block
        )
        out: list[tuple[int, int, str, bool]] = []
        for log in logs:
            try:
                topics = [bytes(t) for t in log["topics"]]
                block, index = log["blockNumber"], log["logIndex"]
                ok = (
                    len(topics) == 2
                    and topics[0] in (admitted_topic, revoked_topic)
                    and len(topics[1]) == 32
                    and not any(topics[1][:12])
                    and type(block) is int
                    and type(index) is int
                    and from_block <= block <= to_block
                    and index >= 0
                    and str(log["address"]).lower() == self.registry.address.lower()
                )
                if ok and not log.get("removed", False):
                    out.append((block, index, Web3.to_checksum_address(topics[1][12:]), topics[0] == admitted_topic))
            except (KeyError, TypeError, ValueError, AttributeError):
                ok = False
            if not ok:
                raise ChainResponseError(
                    f"the chain node sent a log that is not a registry admission event in blocks {from_block}..{to_block}",
                    reason="malformed",
                )
        out.sort(key=lambda e: (e[0], e[1]))
        return out

    def is_admitted(self, node: Any) -> bool:
        """Whether the owner admitted ``node`` (:meth:`is_node` also asks for a licence when licensing is on)."""
        return bool(self.chain.call(self.registry.functions.admitted(_addr(node))))

    def is_registry_licensed(self, node: Any) -> bool:
        """Whether the registry holds ``node`` as bound to a live licence (what :meth:`is_node` reads)."""
        return bool(self.chain.call(self.registry.functions.licensed(_addr(node))))

    def set_licensing(self, required: bool) -> TxResult:
        """Turn licensing on or off (owner only): with it on, a node is a node (:meth:`is_node`)
        only while it is admitted and bound to a live licence of :attr:`licence`."""
        licence = self._need(self.licence, "OperatorLicence")
        return self._owner_tx(self.registry.functions.setLicensing, licence.address, bool(required))

    def licence_required(self) -> bool:
        """Whether the registry counts only licensed nodes as nodes."""
        return bool(self.chain.call(self.registry.functions.requireLicence()))

    def membership_events(self, from_block: int, to_block: int) -> list[MembershipEvent]:
        """Every registry event in blocks ``[from_block, to_block]`` that changes who
        :meth:`is_node` counts: admissions, revocations, licensing switches and licence bindings
        (a revoked licence unbinds each of its nodes with one), in chain order, from one
        ``eth_getLogs`` request. Replaying them answers :meth:`is_node` for every node: admitted,
        and bound to a live licence when the last switch requires one.

        Returns:
            :data:`MembershipEvent` tuples sorted by block and log index.

        Raises:
            ChainResponseError: a log that is not one of these events of these contracts in the range.
            ChainError: any other failure of the request (see :meth:`Chain.logs`).
        """
        admitted_topic, revoked_topic = _node_event_topics()
        licensing_topic, bound_topic = _licensing_event_topics()
        wanted = [admitted_topic, revoked_topic, licensing_topic, bound_topic]
        logs = self.chain.logs(self.registry.address, [["0x" + t.hex() for t in wanted]], from_block, to_block)
        out: list[MembershipEvent] = []
        for log in logs:
            event: MembershipEvent | None = None
            try:
                topics = [bytes(t) for t in log["topics"]]
                data = bytes(log["data"])
                block, index = log["blockNumber"], log["logIndex"]
                source = str(log["address"]).lower()
                ok = (
                    type(block) is int and type(index) is int and from_block <= block <= to_block and index >= 0
                    and len(topics) >= 2 and all(len(t) == 32 for t in topics)
                )
                ok = ok and source == self.registry.address.lower() and len(topics) == 2
                flag = len(data) == 32 and data[:31] == bytes(31) and data[31] in (0, 1)
                if ok and topics[0] in (admitted_topic, revoked_topic) and not data:
                    subject, kind, value = topics[1], "admitted", topics[0] == admitted_topic
                elif ok and topics[0] == licensing_topic and flag:
                    subject, kind, value = topics[1], "licensing", data[31] == 1
                elif ok and topics[0] == bound_topic and flag:
                    subject, kind, value = topics[1], "licensed", data[31] == 1
                else:
                    subject, kind, value = b"", "", False
                if kind and not any(subject[:12]):
                    event = (block, index, kind, Web3.to_checksum_address(subject[12:]), value)
            except (KeyError, TypeError, ValueError, AttributeError):
                event = None
            if event is None:
                raise ChainResponseError(
                    f"the chain node sent a log that is not a registry membership event in blocks {from_block}..{to_block}",
                    reason="malformed",
                )
            if not log.get("removed", False):
                out.append(event)
        out.sort(key=lambda e: (e[0], e[1]))
        return out

    def is_oracle(self, oracle: Any) -> bool:
        return bool(self.chain.call(self.registry.functions.isOracle(_addr(oracle))))

    def quorum(self) -> tuple[int, int]:
        """``(m, n)``: signatures required and oracles admitted."""
        reg = self.registry.functions
        return int(self.chain.call(reg.quorum())), int(self.chain.call(reg.oracleCount()))

    # -- epochs --------------------------------------------------------------------------------

    def current_epoch(self) -> int:
        """The epoch of the latest block: ``(timestamp - genesis) // epoch_length``."""
        return int(self.chain.call(self.registry.functions.currentEpoch()))

    def advance_to_epoch(self, epoch: int) -> int:
        """Mine a block at the start of ``epoch`` (development chains); returns the current epoch.

        Raises:
            ParameterError: ``epoch`` is already in the past.
        """
        check_uint(epoch, "epoch", 64)
        now = self.current_epoch()
        if epoch < now:
            raise ParameterError(f"epoch {epoch} is in the past (current {now})")
        if epoch > now:
            self.chain.advance_time(self.genesis_time + epoch * self.epoch_length - self.chain.timestamp())
        return self.current_epoch()

    # -- PoAI ----------------------------------------------------------------------------------

    def post_epoch_root(self, node: Signer, epoch: int, root: bytes) -> TxResult:
        """Post ``node``'s batch root for an ended epoch (sent from the node's account).

        The root is all the node declares: the epoch's task count and work units are recorded
        only from an audit attestation (:meth:`record_audit`).

        Raises:
            ChainAuthorizationError: the node is not admitted (or was revoked).
            ChainReplayError: a root for this epoch is already posted.
            ChainError: the epoch has not ended, or a zero root.
        """
        fn = self.verifier.functions.postEpochRoot(check_uint(epoch, "epoch", 64), check_bytes32(root, "root"))
        return self.chain.transact(fn, node)

    def post_batch(self, node: Signer, batch: EpochBatch) -> TxResult:
        """Post an :class:`EpochBatch`'s root (its figures are the oracles' to attest)."""
        return self.post_epoch_root(node, batch.epoch, batch.root)

    def check_inclusion(self, node: Any, epoch: int, leaf: bytes, proof: InclusionProof) -> bool:
        """Whether the chain accepts ``leaf`` at ``proof.index`` under (node, epoch)'s posted root."""
        fn = self.verifier.functions.verifyInclusion(
            _addr(node), check_uint(epoch, "epoch", 64), check_bytes32(leaf, "leaf"), proof.index, list(proof.siblings)
        )
        return bool(self.chain.call(fn))

    def check_transcript_inclusion(self, transcript: Transcript, proof: InclusionProof) -> bool:
        """Whether the chain accepts ``transcript`` (digest recomputed on chain) in its node's epoch batch."""
        fn = self.verifier.functions.verifyTranscriptInclusion(
            transcript.as_abi_tuple(), proof.index, list(proof.siblings)
        )
        return bool(self.chain.call(fn))

    def transcript_digest(self, transcript: Transcript) -> bytes:
        """The transcript's EIP-712 digest as the verifier contract computes it."""
        return bytes(self.chain.call(self.verifier.functions.transcriptDigest(transcript.as_abi_tuple())))

    def compute_root(self, leaf: bytes, proof: InclusionProof) -> bytes:
        """The root the contract derives from ``leaf`` and ``proof`` (cross-check helper)."""
        fn = self.verifier.functions.computeRoot(check_bytes32(leaf, "leaf"), proof.index, list(proof.siblings))
        return bytes(self.chain.call(fn))

    def epoch_record(self, node: Any, epoch: int) -> EpochRecord:
        root, count, work, block, status = self.chain.call(
            self.verifier.functions.epochRecord(_addr(node), check_uint(epoch, "epoch", 64))
        )
        return EpochRecord(bytes(root), int(count), int(work), int(block), EpochStatus(int(status)))

    def epoch_status(self, node: Any, epoch: int) -> EpochStatus:
        """Audit status of (node, epoch) on the PoAI verifier."""
        fn = self.verifier.functions.epochStatus(_addr(node), check_uint(epoch, "epoch", 64))
        return EpochStatus(int(self.chain.call(fn)))

    def verified_work_units(self, node: Any, epoch: int) -> int:
        """Work units of (node, epoch) that an oracle quorum attested with a passing audit; 0 if
        unaudited or voided. What the node declared never counts."""
        return int(
            self.chain.call(self.verifier.functions.verifiedWorkUnits(_addr(node), check_uint(epoch, "epoch", 64)))
        )

    def audit_beacon(self, node: Any, epoch: int) -> bytes:
        """Hash of the block after the one that included (node, epoch)'s root: audit randomness
        that the node could not know when it committed.

        Raises:
            ChainError: no root posted, or that block is not mined yet.
        """
        record = self.epoch_record(node, epoch)
        if record.status == EpochStatus.NONE:
            raise ChainError("no root posted for this node and epoch", reason="RootNotPosted")
        number = record.posted_block + 1
        if self.chain.block_number() < number:
            raise ChainError("the beacon block is not mined yet", reason="BeaconNotReady")
        return self.chain.block_hash(number)

    def audit_digest(self, attestation: AuditAttestation) -> bytes:
        """The attestation's EIP-712 digest as the verifier computes it (with the root it holds)."""
        if not isinstance(attestation, AuditAttestation):
            raise UnsupportedOperationError("attestation must be an AuditAttestation")
        fn = self.verifier.functions.auditDigest(
            attestation.node, attestation.epoch, attestation.task_count, attestation.work_units,
            attestation.passed, attestation.report_hash,
        )
        return bytes(self.chain.call(fn))

    def record_audit(
        self, attestation: AuditAttestation, signatures: Sequence[bytes], *, sender: Signer | None = None
    ) -> TxResult:
        """Record an audit attested by oracle signatures (see ``attest_audit``); anyone may submit it.

        A pass records the attestation's task count and work units as the epoch's verified work;
        a failure voids the epoch (and its availability, see :meth:`forfeit_availability`).

        Raises:
            ChainVerificationError: fewer than quorum distinct valid oracle signatures over this
                attestation (figures, verdict, report and the root posted on chain).
            ChainReplayError: the epoch was already voided (or verified again with a pass).
            ChainError: no root posted for (node, epoch).
        """
        if not isinstance(attestation, AuditAttestation):
            raise UnsupportedOperationError("attestation must be an AuditAttestation")
        fn = self.verifier.functions.recordAudit(
            attestation.node, attestation.epoch, attestation.task_count, attestation.work_units,
            attestation.passed, attestation.report_hash, [bytes(s) for s in signatures],
        )
        return self.chain.transact(fn, sender)

    def post_aggregate_root(self, oracle: Signer, epoch: int, root: bytes) -> TxResult:
        """Post an ended epoch's aggregate root (:class:`AggregateEpoch`) from an admitted oracle's
        account, once per oracle and epoch: constant gas whatever the number of nodes.

        Raises:
            ChainAuthorizationError: the sender is not an admitted oracle.
            ChainReplayError: this oracle posted the epoch's aggregate already.
            ChainError: the epoch has not ended, or a zero root.
        """
        fn = self.verifier.functions.postAggregateRoot(check_uint(epoch, "epoch", 64), check_bytes32(root, "root"))
        return self.chain.transact(fn, oracle)

    def claim_epoch_root(self, node: Signer, oracle: Any, epoch: int, root: bytes, proof: InclusionProof) -> TxResult:
        """Take ``root`` as ``node``'s batch root of ``epoch`` from the aggregate ``oracle`` posted
        (sent from the node's account; ``root`` and ``proof`` from :meth:`AggregateEpoch.proof`).
        Audits follow as for :meth:`post_epoch_root`.

        Raises:
            ChainVerificationError: the proof does not lead to that aggregate root.
            ChainReplayError: the node holds a root for this epoch already.
            ChainAuthorizationError: the node is not admitted.
            ChainError: that oracle posted no aggregate for the epoch.
        """
        fn = self.verifier.functions.claimEpochRoot(
            _addr(oracle), check_uint(epoch, "epoch", 64), check_bytes32(root, "root"), proof.index, list(proof.siblings)
        )
        return self.chain.transact(fn, node)

    def aggregate_root(self, oracle: Any, epoch: int) -> bytes:
        """The aggregate root ``oracle`` posted for ``epoch`` (32 zero bytes when none)."""
        fn = self.verifier.functions.aggregateRoot(_addr(oracle), check_uint(epoch, "epoch", 64))
        return bytes(self.chain.call(fn))

    # -- PoA -----------------------------------------------------------------------------------

    def claim_availability(
        self,
        node: Any,
        epochs: Sequence[int],
        availabilities: Sequence[int],
        oracle_signatures: Sequence[bytes],
        *,
        sender: Signer | None = None,
    ) -> TxResult:
        """Claim ``node``'s availability for ended epochs with oracle signatures (``sign_availability``).

        Sent from ``sender``, or from ``node`` itself when it is an account, else the default account.
        An epoch that a failed PoAI audit has voided is marked claimed and earns nothing.

        Raises:
            ChainVerificationError: below quorum.
            ChainReplayError: an epoch was claimed before.
            ChainAuthorizationError: the node is not admitted.
            ChainError: an epoch not ended yet, unsorted epochs, length mismatch.
        """
        if sender is None and isinstance(node, LocalAccount):
            sender = node
        fn = self.ledger.functions.claimAvailability(
            _addr(node),
            [check_uint(e, "epoch", 64) for e in epochs],
            [check_uint(a, "availability", 8) for a in availabilities],
            [bytes(s) for s in oracle_signatures],
        )
        return self.chain.transact(fn, sender)

    def forfeit_availability(self, node: Any, epochs: Sequence[int], *, sender: Signer | None = None) -> TxResult:
        """Take back the availability that claimed ``epochs`` of ``node`` earned, once a failed PoAI
        audit has voided each of them (anyone may send it; a claim may have preceded the audit).

        Raises:
            ChainError: an epoch not voided (``EpochNotVoided``) or not claimed (``EpochNotClaimed``).
        """
        fn = self.ledger.functions.forfeitAvailability(_addr(node), [check_uint(e, "epoch", 64) for e in epochs])
        return self.chain.transact(fn, sender)

    def is_claimed(self, node: Any, epoch: int) -> bool:
        return bool(self.chain.call(self.ledger.functions.isClaimed(_addr(node), check_uint(epoch, "epoch", 64))))

    def earned_availability(self, node: Any, epoch: int) -> int:
        """Availability (0..255) that ``node``'s ``epoch`` earns now: 0 if unclaimed, voided or forfeited."""
        fn = self.ledger.functions.earnedAvailability(_addr(node), check_uint(epoch, "epoch", 64))
        return int(self.chain.call(fn))

    def reward_units(self, node: Any) -> Fraction:
        """Accrued reward units: the sum of claimed availability / 255, epochs voided by a failed
        PoAI audit excluded (they earn nothing)."""
        numerator, denominator = self.chain.call(self.ledger.functions.rewardUnits(_addr(node)))
        return Fraction(int(numerator), int(denominator))

    # -- economy: token, escrow, stake -----------------------------------------------------------

    def _need(self, contract: Any, name: str) -> Any:
        if contract is None:
            raise ChainError(f"this deployment has no {name} bound (pass it to Chain.attach)", reason="NotDeployed")
        return contract

    def token_balance(self, holder: Any) -> int:
        """ERC-20 balance of ``holder`` in the deployment's token."""
        return int(self.chain.call(self._need(self.token, "token").functions.balanceOf(_addr(holder))))

    def mint(self, to: Any, amount: int) -> TxResult:
        """Mint EdilToken to ``to`` (owner only; only for a deployed EdilToken)."""
        fn = self._need(self.token, "token").functions.mint(_addr(to), check_uint(amount, "amount", 256))
        return self.chain.transact(fn, self.owner)

    def approve(self, holder: Signer, spender: Any, amount: int) -> TxResult:
        """Let ``spender`` (e.g. ``self.escrow.address``) pull up to ``amount`` of ``holder``'s tokens."""
        fn = self._need(self.token, "token").functions.approve(_addr(spender), check_uint(amount, "amount", 256))
        return self.chain.transact(fn, holder)

    def create_job(
        self,
        client: Signer,
        job_id: bytes,
        epoch: int,
        nodes: Sequence[Any],
        planned_units: Sequence[int],
        amount: int,
        *,
        start_deadline: int,
        approve: bool = True,
    ) -> TxResult:
        """Escrow ``amount`` tokens of ``client`` for job ``job_id`` run in ``epoch`` (not ended) by
        ``nodes`` with ``planned_units`` work units each; the job is refundable if no node has
        posted a root for ``epoch`` by ``start_deadline`` (Unix time).

        Args:
            approve: first approve the escrow for ``amount`` (one more transaction).

        Raises:
            ChainReplayError: ``job_id`` exists.
            ChainFundsError: the client's balance or allowance is too small.
            ChainError: an ended epoch, no nodes, a duplicate node, zero planned units or amount.
        """
        escrow = self._need(self.escrow, "JobEscrow")
        if len(nodes) != len(planned_units):
            raise ShapeError("nodes and planned_units differ in length")
        if approve:
            self.approve(client, escrow.address, amount)
        fn = escrow.functions.createJob(
            check_bytes32(job_id, "job_id"),
            check_uint(epoch, "epoch", 64),
            check_uint(start_deadline, "start_deadline", 64),
            [_addr(n) for n in nodes],
            [check_uint(u, "planned units", 64) for u in planned_units],
            check_uint(amount, "amount", 128),
        )
        return self.chain.transact(fn, client)

    def settle_job(self, job_id: bytes, node: Any, *, sender: Signer | None = None) -> TxResult:
        """Settle ``node``'s slot of ``job_id`` once its epoch's audit window has passed: the node
        is paid for its attested work units (up to its plan); the rest of its share returns to the
        client. Anyone may send it.

        Raises:
            ChainTooEarlyError: the audit window has not passed.
            ChainReplayError: the slot is already settled or the job refunded.
            ChainError: the node is not in the job, or an unknown job.
        """
        fn = self._need(self.escrow, "JobEscrow").functions.settle(check_bytes32(job_id, "job_id"), _addr(node))
        return self.chain.transact(fn, sender)

    def refund_unstarted(self, job_id: bytes, *, sender: Signer | None = None) -> TxResult:
        """Refund a job none of whose nodes posted a root for its epoch by its start deadline.

        Raises:
            ChainTooEarlyError: before the start deadline.
            ChainVerificationError: a node of the job started (``JobStarted``).
            ChainReplayError: a slot was settled or the job was already refunded.
        """
        fn = self._need(self.escrow, "JobEscrow").functions.refundUnstarted(check_bytes32(job_id, "job_id"))
        return self.chain.transact(fn, sender)

    def job(self, job_id: bytes) -> JobInfo:
        """What the escrow holds for ``job_id`` (a zero client for an unknown job)."""
        raw = self.chain.call(self._need(self.escrow, "JobEscrow").functions.jobOf(check_bytes32(job_id, "job_id")))
        client, epoch, deadline, amount, remaining, total, count, settled, closed = raw
        return JobInfo(
            check_address(client), int(epoch), int(deadline), int(amount), int(remaining), int(total),
            int(count), int(settled), bool(closed),
        )

    def job_slot(self, job_id: bytes, node: Any) -> tuple[int, int, bool]:
        """``(planned units, offset of the job's range among the node's units, settled)`` of ``node`` in ``job_id``."""
        fn = self._need(self.escrow, "JobEscrow").functions.slotOf(check_bytes32(job_id, "job_id"), _addr(node))
        planned, offset, settled = self.chain.call(fn)
        return int(planned), int(offset), bool(settled)

    def job_settle_after(self, job_id: bytes) -> int:
        """Unix time after which the job's slots can be settled."""
        fn = self._need(self.escrow, "JobEscrow").functions.settleAfter(check_bytes32(job_id, "job_id"))
        return int(self.chain.call(fn))

    def escrow_reserved_units(self, node: Any, epoch: int) -> int:
        """Work units of (node, epoch) that escrowed jobs have planned so far; the node's attested
        units of the epoch pay these jobs in creation order, each unit at most once."""
        fn = self._need(self.escrow, "JobEscrow").functions.reservedUnits(_addr(node), check_uint(epoch, "epoch", 64))
        return int(self.chain.call(fn))

    def stake_tokens(self, operator: Signer, node: Any, amount: int, *, approve: bool = True) -> TxResult:
        """Bond ``amount`` of ``operator``'s tokens behind ``node`` (the first staker is its operator).

        Raises:
            ChainAuthorizationError: ``node`` has another operator.
            ChainFundsError: balance or allowance too small.
        """
        stake = self._need(self.stake, "StakeManager")
        if approve:
            self.approve(operator, stake.address, amount)
        return self.chain.transact(stake.functions.stake(_addr(node), check_uint(amount, "amount", 128)), operator)

    def request_unbond(self, operator: Signer, node: Any, amount: int) -> TxResult:
        """Start unbonding ``amount`` of ``node``'s stake (it stays slashable until withdrawn).

        Raises:
            ChainAuthorizationError: not the node's operator.
            ChainFundsError: more than the bonded stake.
        """
        fn = self._need(self.stake, "StakeManager").functions.requestUnbond(
            _addr(node), check_uint(amount, "amount", 128)
        )
        return self.chain.transact(fn, operator)

    def withdraw_stake(self, operator: Signer, node: Any) -> TxResult:
        """Withdraw ``node``'s unbonding stake after the unbonding delay.

        Raises:
            ChainTooEarlyError: the delay has not passed.
            ChainAuthorizationError: not the node's operator.
        """
        fn = self._need(self.stake, "StakeManager").functions.withdraw(_addr(node))
        return self.chain.transact(fn, operator)

    def slash(self, node: Any, epoch: int, *, sender: Signer | None = None) -> TxResult:
        """Slash ``node`` for the failed audit of ``epoch`` (anyone may send it, once per epoch).

        Raises:
            ChainError: the epoch is not voided (``EpochNotVoided``).
            ChainReplayError: already slashed for this epoch.
        """
        fn = self._need(self.stake, "StakeManager").functions.slash(_addr(node), check_uint(epoch, "epoch", 64))
        return self.chain.transact(fn, sender)

    def stake_of(self, node: Any) -> int:
        """Bonded stake of ``node`` (unbonding stake does not count)."""
        return int(self.chain.call(self._need(self.stake, "StakeManager").functions.stakeOf(_addr(node))))

    def is_slashed(self, node: Any, epoch: int) -> bool:
        """Whether ``node`` was slashed for ``epoch`` already."""
        fn = self._need(self.stake, "StakeManager").functions.slashed(_addr(node), check_uint(epoch, "epoch", 64))
        return bool(self.chain.call(fn))

    def stake_info(self, node: Any) -> StakeInfo:
        """Operator, bonded and unbonding stake of ``node``, and when the unbonding stake frees up."""
        operator, bonded, unbonding, at = self.chain.call(
            self._need(self.stake, "StakeManager").functions.stakeInfo(_addr(node))
        )
        return StakeInfo(check_address(operator), int(bonded), int(unbonding), int(at))

    def fund_reward_pool(self, sponsor: Signer, epoch: int, amount: int, *, approve: bool = True) -> TxResult:
        """Fund ``epoch``'s availability reward pool with ``amount`` of ``sponsor``'s tokens (once per epoch).

        Raises:
            ChainReplayError: the epoch already has a pool.
            ChainFundsError: balance or allowance too small.
            ChainError: registration for the epoch has closed.
        """
        rewards = self._need(self.rewards, "AvailabilityRewards")
        if approve:
            self.approve(sponsor, rewards.address, amount)
        fn = rewards.functions.fundEpoch(check_uint(epoch, "epoch", 64), check_uint(amount, "amount", 128))
        return self.chain.transact(fn, sponsor)

    def register_for_reward(self, node: Any, epoch: int, *, sender: Signer | None = None) -> TxResult:
        """Register the availability ``node`` earns for ``epoch`` (claimed in the ledger with an
        oracle quorum) in the epoch's pool, during its registration window. Sent from ``sender``,
        or from ``node`` itself when it is an account.

        Raises:
            ChainReplayError: already registered.
            ChainError: no pool, the epoch not ended, registration closed, or nothing earned
                (unclaimed, or voided by a failed PoAI audit: ``NothingEarned``).
        """
        if sender is None and isinstance(node, LocalAccount):
            sender = node
        fn = self._need(self.rewards, "AvailabilityRewards").functions.register(_addr(node), check_uint(epoch, "epoch", 64))
        return self.chain.transact(fn, sender)

    def claim_reward(self, node: Any, epoch: int, *, sender: Signer | None = None) -> TxResult:
        """Pay ``node`` its pro-rata share of ``epoch``'s pool once registration has closed (to the
        sponsor instead if the epoch was voided since). Anyone may send it.

        Raises:
            ChainTooEarlyError: registration is still open.
            ChainReplayError: already paid.
            ChainError: the node did not register.
        """
        fn = self._need(self.rewards, "AvailabilityRewards").functions.claim(_addr(node), check_uint(epoch, "epoch", 64))
        return self.chain.transact(fn, sender)

    def return_unclaimed_pool(self, epoch: int, *, sender: Signer | None = None) -> TxResult:
        """Return a pool nobody registered for to its sponsor, after registration closed."""
        fn = self._need(self.rewards, "AvailabilityRewards").functions.returnUnclaimedPool(check_uint(epoch, "epoch", 64))
        return self.chain.transact(fn, sender)

    def reward_entry(self, node: Any, epoch: int) -> tuple[int, bool]:
        """``(availability registered, reward paid)`` of ``node`` in ``epoch``'s pool."""
        fn = self._need(self.rewards, "AvailabilityRewards").functions.entryOf(_addr(node), check_uint(epoch, "epoch", 64))
        availability, paid = self.chain.call(fn)
        return int(availability), bool(paid)

    def reward_pool(self, epoch: int) -> tuple[str, int, int, bool]:
        """``(sponsor, amount, total registered availability, returned whole)`` of ``epoch``'s pool."""
        sponsor, amount, total, returned = self.chain.call(
            self._need(self.rewards, "AvailabilityRewards").functions.poolOf(check_uint(epoch, "epoch", 64))
        )
        return check_address(sponsor), int(amount), int(total), bool(returned)

    # -- operator licences (KYC) -------------------------------------------------------------------

    def set_attestor(self, attestor: Any, listed: bool = True) -> TxResult:
        """List (or delist) a KYC attestor on the licence contract (registry owner only)."""
        fn = self._need(self.licence, "OperatorLicence").functions.setAttestor(_addr(attestor), bool(listed))
        return self.chain.transact(fn, self.owner)

    def mint_licence(self, attestation: KycAttestation, signature: bytes, *, sender: Signer | None = None) -> int:
        """Mint the licence ``attestation`` grants (signed by a listed attestor, see
        :func:`sign_kyc_attestation`); anyone may submit it. Returns the licence id.

        Raises:
            ChainAuthorizationError: the signer is not a listed attestor (``UnknownAttestor``).
            ChainReplayError: the attestation was used already.
            ChainVerificationError: it has expired.
        """
        licence = self._need(self.licence, "OperatorLicence")
        a = attestation
        result = self.chain.transact(
            licence.functions.mint(a.operator, a.kyc_hash, a.expiry, a.nonce, bytes(signature)), sender
        )
        # The receipt also holds the ERC-721 Transfer event, which this event's ABI skips.
        minted = licence.events.LicenceMinted().process_receipt(result.receipt, errors=DISCARD)
        if len(minted) != 1:
            raise ChainResponseError("the mint's receipt holds no single LicenceMinted event", reason="malformed")
        return int(minted[0]["args"]["licenceId"])

    def bind_node(self, holder: Signer, licence_id: int, node: Any) -> TxResult:
        """Bind ``node`` to ``holder``'s licence (at most the licence's node limit).

        Raises:
            ChainAuthorizationError: not the holder, or the licence is revoked.
            ChainReplayError: the node is bound already.
            ChainError: the licence is full (``LicenceFull``).
        """
        fn = self._need(self.licence, "OperatorLicence").functions.bindNode(check_uint(licence_id, "licence_id", 256), _addr(node))
        return self.chain.transact(fn, holder)

    def unbind_node(self, holder: Signer, licence_id: int, node: Any) -> TxResult:
        fn = self._need(self.licence, "OperatorLicence").functions.unbindNode(
            check_uint(licence_id, "licence_id", 256), _addr(node)
        )
        return self.chain.transact(fn, holder)

    def revoke_licence(self, licence_id: int, *, sender: Signer | None = None) -> TxResult:
        """Revoke a licence (registry owner by default, or a listed attestor): its nodes are unbound."""
        fn = self._need(self.licence, "OperatorLicence").functions.revoke(check_uint(licence_id, "licence_id", 256))
        return self.chain.transact(fn, sender if sender is not None else self.owner)

    def is_licensed_node(self, node: Any) -> bool:
        """Whether ``node`` is bound to a licence that is not revoked."""
        return bool(self.chain.call(self._need(self.licence, "OperatorLicence").functions.isLicensedNode(_addr(node))))

    def licence_nodes(self, licence_id: int) -> list[str]:
        fn = self._need(self.licence, "OperatorLicence").functions.nodesOf(check_uint(licence_id, "licence_id", 256))
        return [check_address(a) for a in self.chain.call(fn)]

    def licence_holder(self, licence_id: int) -> str:
        fn = self._need(self.licence, "OperatorLicence").functions.ownerOf(check_uint(licence_id, "licence_id", 256))
        return check_address(self.chain.call(fn))

    def licence_of_node(self, node: Any) -> int:
        """The licence ``node`` is bound to (0: none; a revoked licence binds nothing)."""
        return int(self.chain.call(self._need(self.licence, "OperatorLicence").functions.licenceOfNode(_addr(node))))

    def licence_count(self) -> int:
        """Licences minted so far (their ids are 1..count)."""
        return int(self.chain.call(self._need(self.licence, "OperatorLicence").functions.licenceCount()))

    def licence_info(self, licence_id: int) -> dict[str, Any]:
        """Holder, KYC hash, revocation and bound nodes of ``licence_id``.

        Raises:
            ChainError: no such licence (``ERC721NonexistentToken``).
        """
        fns = self._need(self.licence, "OperatorLicence").functions
        lid = check_uint(licence_id, "licence_id", 256)
        return {
            "holder": self.licence_holder(lid),
            "kyc_hash": "0x" + bytes(self.chain.call(fns.kycHashOf(lid))).hex(),
            "revoked": bool(self.chain.call(fns.revoked(lid))),
            "nodes": self.licence_nodes(lid),
        }


class AggregateEpoch:
    """One epoch's aggregate root: a Merkle tree over the leaves ``keccak256(node ++ batch_root)``
    of every node, in the given order. An oracle posts its root once (constant gas for any number
    of nodes); each node claims its own batch root with :meth:`proof`.

    Args:
        epoch: the ended epoch.
        roots: ``(node address, batch root)`` pairs, one per node.

    Raises:
        ParameterError: no roots, a repeated node, a malformed address or root.
    """

    def __init__(self, epoch: int, roots: Sequence[tuple[str, bytes]]) -> None:
        self.epoch = check_uint(epoch, "epoch", 64)
        self.nodes = [check_address(a) for a, _ in roots]
        self.roots = [check_bytes32(r, "root") for _, r in roots]
        if not self.nodes:
            raise ParameterError("an aggregate needs at least one node root")
        if len({a.lower() for a in self.nodes}) != len(self.nodes):
            raise ParameterError("a node appears twice in the aggregate")
        self._index = {a.lower(): i for i, a in enumerate(self.nodes)}
        self.tree = MerkleTree([keccak256(address_word(a)[12:] + r) for a, r in zip(self.nodes, self.roots)])

    @property
    def root(self) -> bytes:
        return self.tree.root

    def proof(self, node: str) -> tuple[bytes, InclusionProof]:
        """``(batch root, inclusion proof)`` of ``node``'s leaf.

        Raises:
            KeyError: the node is not in the aggregate.
        """
        i = self._index[check_address(node).lower()]
        return self.roots[i], self.tree.proof(i)


KYC_TYPEHASH = keccak256(b"KycAttestation(address operator,bytes32 kycHash,uint64 expiry,uint256 nonce)")


@dataclass(frozen=True, slots=True)
class KycAttestation:
    """What a KYC attestor signs to grant ``operator`` a licence: ``kyc_hash`` commits to the
    off-chain KYC record, ``expiry`` (Unix time) bounds its use, ``nonce`` tells attestations apart."""

    operator: str
    kyc_hash: bytes
    expiry: int
    nonce: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "operator", check_address(self.operator))
        check_bytes32(self.kyc_hash, "kyc_hash")
        check_uint(self.expiry, "expiry", 64)
        check_uint(self.nonce, "nonce", 256)

    def digest(self, domain: Eip712Domain) -> bytes:
        """EIP-712 digest in the licence contract's ``domain``."""
        struct = keccak256(
            KYC_TYPEHASH + address_word(self.operator) + self.kyc_hash + word(self.expiry) + word(self.nonce)
        )
        return domain.hash_struct(struct)


def sign_kyc_attestation(private_key: Any, domain: Eip712Domain, attestation: KycAttestation) -> bytes:
    """A KYC attestor's 65-byte signature on ``attestation`` (``Deployment.licence_domain``)."""
    return sign_digest(attestation.digest(domain), private_key)


@dataclass(frozen=True, slots=True)
class JobInfo:
    """An escrowed job: its client, epoch, start deadline, deposit and what is still held.

    ``total_planned`` prices each planned work unit at ``amount / total_planned``; ``closed`` once
    every slot is settled or the job was refunded.
    """

    client: str
    epoch: int
    start_deadline: int
    amount: int
    remaining: int
    total_planned: int
    node_count: int
    settled_count: int
    closed: bool


@dataclass(frozen=True, slots=True)
class StakeInfo:
    """A node's stake: its operator, bonded and unbonding amounts, and when unbonding ends."""

    operator: str
    bonded: int
    unbonding: int
    unbond_at: int
