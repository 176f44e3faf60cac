"""Operator commands: the chain, the registry, the coordinator daemon, jobs and epoch close.

Every command checks its arguments and files (URL schemes, key files, ``deployment.json``)
before it reads the network or writes anything, and reports a mistake or a refusal as one line
on stderr with exit status 2 (a job that ran and failed: status 1).

* ``edil chain deploy --rpc URL --key-file owner.key [--out deployment.json] [--epoch-length S]``:
  deploy the EDIL contracts from the owner's funded account and write ``deployment.json``
  (``chain_url``, ``chain_id``, ``deploy_block``, the epoch clock and the contract ``addresses``,
  the file ``edil oracle run`` also reads; refuses to overwrite).
* ``edil registry admit|revoke --deployment deployment.json --key-file owner.key
  [--node ADDR]... [--oracle ADDR]... [--rpc URL]``: admit or revoke nodes and oracles (owner
  only); ``admit --fund WEI`` also sends each admitted node gas money, ``admit --quorum M`` then
  sets the oracle quorum.
* ``edil registry quorum M --deployment ... --key-file owner.key``: the m-of-n oracle quorum.
* ``edil registry list --deployment deployment.json``: admitted nodes and oracles, and the quorum
  (read from the registry's events, each confirmed with a view call).
* ``edil coordinator run --key-file coord.key --deployment deployment.json --nats URL --journal
  jobs.sqlite``: the coordinator daemon (:mod:`edil.app._coordinator`): attaches every node the
  registry admits that runs ``edil node run``, schedules jobs through JetStream with the journal,
  logs the nodes' signed heartbeats and serves the ``edil job`` commands over NATS.
* ``edil job submit --key-file coord.key --nats URL --model model.onnx --input x.npy
  --scheme plain|masked|ckks [--parties N] [--redundancy R] [--wait --out y.npy]``, ``edil job
  status JOB``, ``edil job result JOB --out y.npy``: jobs on an ONNX model and a ``.npy`` batch (a
  CKKS job is encrypted by the submitting process, which keeps the secret key and waits for the
  result: ``--wait --out`` are required).
* ``edil epoch close --deployment ... --journal jobs.sqlite --key-file owner.key --oracle-key K
  [--oracle-key K]... [--node-key node.key]... [--epoch N] [--advance] [--nats URL]``: post the roots of the
  nodes whose keys are given, audit every posted batch with the oracles' keys and record the
  verdicts (:func:`edil.runtime.close_epoch`, :func:`edil.runtime.audit_epoch`), then claim each
  given node's availability from the heartbeats the coordinator logged
  (:func:`edil.runtime.make_oracles`, :func:`edil.runtime.settle_availability`), or, with
  ``--nats URL``, from the attestations the oracle processes (``edil oracle run``) published on the
  bus, read with the node's own bus credentials (:func:`edil.runtime.claim_from_bus`; then
  ``--oracle-key`` is needed only when there are batches to audit).

Other modules add ``registry`` subcommands through :func:`add_registry_subcommands` of
``edil.app._registry_cli`` when that module exists: it receives the ``registry`` subparsers and
gives each parser it adds ``set_defaults(registry_handler=fn)``, ``fn(args) -> int``; the shared
options and the deployment loader are :func:`add_chain_options` and :func:`open_deployment`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec

from edil import EdilError

__all__ = [
    "COMMANDS",
    "add_chain_options",
    "add_coordinator_run",
    "add_parsers",
    "check_rpc_url",
    "load_deployment",
    "main",
    "open_deployment",
    "read_chain_key",
]

#: Top-level commands this module parses and runs.
COMMANDS = ("chain", "registry", "job", "epoch")

_SECP_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_MAX_CONFIG_BYTES = 1 << 16
DEPLOYMENT_FORMAT = "edil-deployment/1"


# --- arguments and files, checked before any work ----------------------------------------------
def check_rpc_url(url: Any) -> str:
    """Validate a JSON-RPC URL (``http(s)://host[:port]``); returns it.

    Raises:
        EdilError: no ``http://``/``https://`` scheme, or no host.
    """
    from urllib.parse import urlparse

    try:
        parsed = urlparse(url) if isinstance(url, str) else None
        ok = parsed is not None and parsed.scheme in ("http", "https") and bool(parsed.hostname)
        if ok and parsed is not None:
            parsed.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        ok = False
    if not ok:
        raise EdilError(f"--rpc {url!r} is not a JSON-RPC URL such as http://127.0.0.1:8545")
    return str(url)


def read_chain_key(path: Path) -> bytes:
    """A secp256k1 private key from a file holding 64 hex digits (``0x`` optional).

    Raises:
        EdilError: unreadable, not 32 bytes of hex, or not a valid secp256k1 scalar.
    """
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise EdilError(f"cannot read key file {path}: {exc.strerror}") from None
    except UnicodeError:
        raise EdilError(f"key file {path} is not text") from None
    digits = text[2:] if text[:2].lower() == "0x" else text
    if len(digits) != 64 or any(c not in string.hexdigits for c in digits):
        raise EdilError(f"key file {path} does not hold a private key (64 hex digits)")
    key = bytes.fromhex(digits)
    if not 0 < int.from_bytes(key, "big") < _SECP_N:
        raise EdilError(f"key file {path} holds a value outside the secp256k1 key range")
    return key


def _check_address(value: str, what: str) -> str:
    from eth_utils import is_hex_address, to_checksum_address

    if not isinstance(value, str) or not is_hex_address(value):
        raise EdilError(f"{what} {value!r} is not a 0x-prefixed 20-byte address")
    return str(to_checksum_address(value))


_Address = Annotated[str, msgspec.Meta(pattern=r"\A0x[0-9a-fA-F]{40}\Z")]
_UInt = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class _Contracts(msgspec.Struct, forbid_unknown_fields=True):
    registry: _Address
    ledger: _Address
    verifier: _Address
    token: _Address | None = None
    escrow: _Address | None = None
    stake: _Address | None = None
    rewards: _Address | None = None
    licence: _Address | None = None


class _DeploymentRecord(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    chain_url: Annotated[str, msgspec.Meta(max_length=2048)]
    chain_id: Annotated[int, msgspec.Meta(ge=1, le=(1 << 63) - 1)]
    deploy_block: _UInt
    epoch_length: Annotated[int, msgspec.Meta(ge=1, le=(1 << 63) - 1)]
    genesis_time: _UInt
    addresses: _Contracts


def _read_small(path: Path, what: str, limit: int = _MAX_CONFIG_BYTES) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise EdilError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not data.strip():
        raise EdilError(f"{what} {path} is empty")
    if len(data) > limit:
        raise EdilError(f"{what} {path} is larger than {limit} bytes")
    return data


def read_record(path: Path, record_type: type[Any], what: str, fmt: str, *, limit: int = _MAX_CONFIG_BYTES) -> Any:
    """A small JSON record file, read with a size bound and decoded strictly (msgspec), its ``format`` checked.

    Raises:
        EdilError: unreadable, empty, too large, not JSON, not a ``record_type`` or another format.
    """
    data = _read_small(path, what, limit)
    try:
        rec = msgspec.json.decode(data, type=record_type, strict=True)
    except msgspec.DecodeError as exc:
        raise EdilError(f"{path} is not a {what}: {exc}") from None
    if rec.format != fmt:
        raise EdilError(f"{path} is not a {what}: format {rec.format!r}, expected {fmt!r}")
    return rec


def poai_domain_from_args(args: Any) -> Any:
    """The PoAI EIP-712 domain from ``--deployment``, or from ``--chain-id`` and ``--verifier``.

    Raises:
        EdilError: both or neither given, or a bad chain id or verifier (one line).
    """
    from edil.proofs import Eip712Domain

    if args.deployment is not None:
        if args.chain_id is not None or args.verifier is not None:
            raise EdilError("give --deployment or --chain-id and --verifier, not both")
        rec = load_deployment(args.deployment)
        chain_id, verifier = rec.chain_id, rec.addresses.verifier
    elif args.chain_id is None or args.verifier is None:
        raise EdilError("give --deployment, or both --chain-id and --verifier")
    else:
        chain_id, verifier = args.chain_id, args.verifier
    try:
        return Eip712Domain("EDIL PoAI", "1", chain_id, verifier)
    except (TypeError, ValueError) as exc:
        raise EdilError(f"bad --chain-id or --verifier: {exc}") from None


def load_deployment(path: Path) -> _DeploymentRecord:
    """Read and check ``deployment.json`` (as ``edil chain deploy`` writes it), strictly.

    Raises:
        EdilError: unreadable, empty, not JSON, or not a deployment record.
    """
    rec: _DeploymentRecord = read_record(path, _DeploymentRecord, "deployment file", DEPLOYMENT_FORMAT)
    check_rpc_url(rec.chain_url)
    return rec


def deployment_json(chain_id: int, rpc: str, dep: Any) -> dict[str, Any]:
    """The ``deployment.json`` record of a deployment."""
    return {
        "format": DEPLOYMENT_FORMAT, "chain_url": rpc, "chain_id": chain_id, "deploy_block": dep.deploy_block,
        "epoch_length": dep.epoch_length, "genesis_time": dep.genesis_time, "addresses": dep.addresses,
    }


#: A key that never holds funds: the sender of view calls when no key is given (nothing is sent from it).
def _read_only_key() -> bytes:
    from edil.proofs import keccak256

    return keccak256(b"EDIL/read-only view account")


def open_deployment(rec: _DeploymentRecord, key: bytes | None, rpc: str | None = None) -> tuple[Any, Any]:
    """Connect to the deployment's chain and bind its contracts; ``key`` sends (and owns).

    Raises:
        EdilError: the chain does not answer, has another chain id, or the contracts do not match.
    """
    from edil.proofs import Chain

    url = check_rpc_url(rpc) if rpc else rec.chain_url
    chain = Chain.from_url(url, [key if key is not None else _read_only_key()])
    if chain.chain_id != rec.chain_id:
        raise EdilError(f"{url} is chain {chain.chain_id}, but the deployment is on chain {rec.chain_id}")
    contracts = {k: v for k, v in msgspec.structs.asdict(rec.addresses).items() if v is not None}
    dep = chain.attach(owner=key, **contracts) if key is not None else chain.attach(**contracts)
    if (dep.genesis_time, dep.epoch_length) != (rec.genesis_time, rec.epoch_length):
        raise EdilError("the registry's epoch clock differs from the deployment file's")
    dep.deploy_block = rec.deploy_block
    return chain, dep


def add_chain_options(p: argparse.ArgumentParser, *, key_required: bool = True, key_help: str = "the registry owner's private key") -> None:
    """``--deployment``, ``--key-file`` and ``--rpc``: what every command on a deployment takes."""
    p.add_argument("--deployment", required=True, type=Path, help="deployment.json written by `edil chain deploy`")
    p.add_argument("--key-file", required=key_required, type=Path, default=None, help=f"{key_help} (64 hex digits)")
    p.add_argument("--rpc", default=None, help="JSON-RPC URL (default: the one in deployment.json)")


def _open_from_args(args: argparse.Namespace) -> tuple[Any, Any]:
    """Check every argument first (URL, key, deployment file), then connect."""
    if args.rpc is not None:
        check_rpc_url(args.rpc)
    key = read_chain_key(args.key_file) if args.key_file is not None else None
    rec = load_deployment(args.deployment)
    return open_deployment(rec, key, args.rpc)


def _write_new(path: Path, text: str) -> None:
    """Write a new file (refuses to overwrite one)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise EdilError(f"{path} exists; refusing to overwrite it") from None
    except OSError as exc:
        raise EdilError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _check_new_file(path: Path) -> None:
    if path.exists():
        raise EdilError(f"{path} exists; refusing to overwrite it")
    if not path.parent.is_dir():
        raise EdilError(f"cannot create {path}: no directory {path.parent}")


# --- parsers -----------------------------------------------------------------------------------
def add_parsers(sub: Any) -> None:
    """Add ``chain``, ``registry``, ``job`` and ``epoch`` to the ``edil`` subparsers."""
    from edil.runtime import EPOCH_LENGTH_S, HEARTBEAT_S

    chain = sub.add_parser("chain", help="deploy the EDIL contracts", description="Deploy the EDIL contracts and write deployment.json.")
    csub = chain.add_subparsers(dest="chain_command", required=True)
    dep = csub.add_parser(
        "deploy", help="deploy the contracts from the owner's account and write deployment.json",
        description="Deploy NodeRegistry, PoAIVerifier, AvailabilityLedger and the economy contracts; write their addresses.",
    )
    dep.add_argument("--rpc", required=True, help="JSON-RPC URL of the chain, e.g. http://127.0.0.1:8545")
    dep.add_argument("--key-file", required=True, type=Path, help="the owner's funded private key (64 hex digits); it owns the registry")
    dep.add_argument("--out", type=Path, default=Path("deployment.json"), help="where to write the deployment (refuses to overwrite)")
    dep.add_argument("--epoch-length", type=int, default=EPOCH_LENGTH_S, help=f"seconds per epoch (default {EPOCH_LENGTH_S})")
    dep.add_argument("--require-licence", action="store_true", help="licensing on: only nodes bound to a live operator licence are nodes, and the escrow takes only them into jobs")

    reg = sub.add_parser("registry", help="admit, revoke and list nodes and oracles", description="The on-chain dAuth registry.")
    rsub = reg.add_subparsers(dest="registry_command", required=True)
    for name, text in (("admit", "admit nodes and oracles (owner only)"), ("revoke", "revoke nodes and oracles (owner only)")):
        p = rsub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("--node", action="append", default=[], metavar="ADDR", help="a node's chain address (repeatable)")
        p.add_argument("--oracle", action="append", default=[], metavar="ADDR", help="an oracle's chain address (repeatable)")
        if name == "admit":
            p.add_argument("--fund", type=int, default=0, metavar="WEI", help="also send each admitted node this much gas money")
            p.add_argument("--quorum", type=int, default=None, metavar="M", help="then set the oracle quorum to M (as `registry quorum M`)")
        add_chain_options(p)
        p.set_defaults(registry_handler=_registry_change)
    q = rsub.add_parser("quorum", help="set m of the m-of-n oracle quorum (owner only)", description="Set the oracle quorum.")
    q.add_argument("m", type=int, help="signatures required, 1..number of oracles")
    add_chain_options(q)
    q.set_defaults(registry_handler=_registry_quorum)
    ls = rsub.add_parser("list", help="list admitted nodes and oracles and the quorum", description="List the registry.")
    add_chain_options(ls, key_required=False, key_help="any key (optional: only view calls are made)")
    ls.set_defaults(registry_handler=_registry_list)
    if importlib.util.find_spec("edil.app._registry_cli") is not None:
        importlib.import_module("edil.app._registry_cli").add_registry_subcommands(rsub)

    job = sub.add_parser("job", help="submit jobs to a running coordinator and fetch their results",
                         description="Jobs for `edil coordinator run`, over NATS, sealed with the coordinator's key.")
    jsub = job.add_subparsers(dest="job_command", required=True)
    submit = jsub.add_parser("submit", help="submit a model and an input batch; prints the job id",
                             description="Submit an ONNX model and a .npy batch (rows are samples).")
    submit.add_argument("--model", required=True, type=Path, help="an ONNX model (imported with edil.models.from_onnx)")
    submit.add_argument("--input", required=True, type=Path, help="a .npy array, (batch, features) or (batch, *ONNX input shape)")
    submit.add_argument(
        "--scheme", required=True, choices=("plain", "masked", "ckks"),
        help="plain (nodes see data and model), masked (secret-shared) or ckks (encrypted here; needs --wait)",
    )
    submit.add_argument("--parties", type=int, default=3, help="masked: number of parties, one node each (default 3)")
    submit.add_argument("--redundancy", type=int, default=1, help="plain, ckks: nodes that run each task (default 1)")
    submit.add_argument("--wait", action="store_true", help="wait for the result and write it to --out")
    submit.add_argument("--out", type=Path, default=None, help="with --wait: where to write the output .npy")
    submit.add_argument("--timeout", type=float, default=600.0, help="with --wait: seconds to wait (default 600)")
    status = jsub.add_parser("status", help="print a job's status as JSON", description="Print a job's status.")
    status.add_argument("job", help="the job id (64 hex digits) `edil job submit` printed")
    result = jsub.add_parser("result", help="write a finished job's output to a .npy file", description="Fetch a job's output.")
    result.add_argument("job", help="the job id (64 hex digits)")
    result.add_argument("--out", required=True, type=Path, help="where to write the output .npy (refuses to overwrite)")
    for p in (submit, status, result):
        p.add_argument("--key-file", required=True, type=Path, help="the coordinator's secret seed (requests are sealed and signed with it)")
        p.add_argument("--nats", required=True, help="NATS server URL, e.g. nats://127.0.0.1:4222")

    epoch = sub.add_parser("epoch", help="close an epoch: roots, audits, availability claims", description="Epoch operations.")
    esub = epoch.add_subparsers(dest="epoch_command", required=True)
    close = esub.add_parser(
        "close", help="post roots, audit them with the oracles' keys, record verdicts, claim availability",
        description="Close an ended epoch from the coordinator's journal: roots, audits, attestations and availability claims.",
    )
    add_chain_options(close, key_help="a funded key that sends the audit records")
    close.add_argument("--journal", required=True, type=Path, help="the coordinator's journal (`edil coordinator run --journal`)")
    close.add_argument("--oracle-key", action="append", default=[], type=Path,
                       help="an oracle's private key (repeatable; at least the quorum; with --nats only to audit batches)")
    close.add_argument("--nats", default=None,
                       help="claim availability with the oracles' attestations on this NATS server (default: from the coordinator's heartbeat log)")
    close.add_argument("--node-key", action="append", default=[], type=Path, help="a node's secret seed: post its root and claim its availability (repeatable)")
    close.add_argument("--epoch", type=int, default=None, help="the epoch to close (default: the last ended one)")
    close.add_argument("--advance", action="store_true", help="development chains only: move the clock past the current epoch, then close it")
    close.add_argument("--heartbeat-s", type=int, default=HEARTBEAT_S, help=f"heartbeat slot in seconds (default {HEARTBEAT_S})")


def add_coordinator_run(csub: Any) -> None:
    """Add ``run`` to the ``edil coordinator`` subparsers."""
    from edil.runtime import HEARTBEAT_S

    run = csub.add_parser(
        "run", help="run the coordinator daemon (until SIGTERM or Ctrl-C)",
        description="Attach admitted nodes over NATS, schedule jobs with the journal, serve `edil job` requests.",
    )
    run.add_argument("--key-file", required=True, type=Path, help="the coordinator's secret seed (`edil coordinator init`)")
    run.add_argument("--deployment", required=True, type=Path, help="deployment.json written by `edil chain deploy`")
    run.add_argument("--nats", required=True, help="NATS server URL, e.g. nats://127.0.0.1:4222")
    run.add_argument("--journal", required=True, type=Path, help="SQLite journal of jobs (created if missing; resumed if present)")
    run.add_argument("--rpc", default=None, help="JSON-RPC URL (default: the one in deployment.json)")
    run.add_argument("--heartbeat-s", type=float, default=float(HEARTBEAT_S), help=f"seconds between heartbeat polls (default {HEARTBEAT_S})")
    run.add_argument("--task-timeout", type=float, default=60.0, help="seconds a node may take per task (default 60)")


# --- commands ----------------------------------------------------------------------------------
def _registry_change(args: argparse.Namespace) -> int:
    nodes = [_check_address(a, "--node") for a in args.node]
    oracles = [_check_address(a, "--oracle") for a in args.oracle]
    if not nodes and not oracles and getattr(args, "quorum", None) is None:
        raise EdilError("name at least one --node or --oracle")
    fund, quorum = getattr(args, "fund", 0), getattr(args, "quorum", None)
    if fund < 0:
        raise EdilError("--fund must be >= 0")
    if quorum is not None and quorum < 1:
        raise EdilError("the quorum must be at least 1")
    chain, dep = _open_from_args(args)
    admit = args.registry_command == "admit"
    for a in nodes:
        if admit:
            if not dep.is_admitted(a):
                dep.admit_node(a)
            if fund:
                chain.fund(a, fund)
        elif dep.is_admitted(a):
            dep.revoke_node(a)
        state = "admitted" if dep.is_node(a) else "admitted, not counted until bound to a licence" if dep.is_admitted(a) else "not admitted"
        print(f"node {a}: {state}")
    for a in oracles:
        if admit and not dep.is_oracle(a):
            dep.admit_oracle(a)
        elif not admit and dep.is_oracle(a):
            dep.revoke_oracle(a)
        print(f"oracle {a}: {'admitted' if dep.is_oracle(a) else 'not admitted'}")
    if quorum is not None:
        dep.set_quorum(quorum)
        m, n = dep.quorum()
        print(f"quorum {m} of {n} oracles")
    return 0


def _registry_quorum(args: argparse.Namespace) -> int:
    if args.m < 1:
        raise EdilError("the quorum must be at least 1")
    _, dep = _open_from_args(args)
    dep.set_quorum(args.m)
    m, n = dep.quorum()
    print(f"quorum {m} of {n} oracles")
    return 0


def _registry_events(chain: Any, dep: Any, names: tuple[str, str]) -> list[str]:
    """Addresses named by the registry's (admitted, revoked) events ``names``, in first-seen order."""
    from edil.proofs import keccak256

    topics = [["0x" + keccak256(f"{n}(address)".encode()).hex() for n in names]]
    seen: dict[str, None] = {}
    head, lo = chain.block_number(), dep.deploy_block
    while lo <= head:
        hi = min(head, lo + 4_999)
        for log in chain.logs(dep.registry.address, topics, lo, hi):
            topic = bytes(log["topics"][1])
            seen[_check_address("0x" + topic[12:].hex(), "event address")] = None
        lo = hi + 1
    return list(seen)


def _registry_list(args: argparse.Namespace) -> int:
    chain, dep = _open_from_args(args)
    admitted = [a for a in _registry_events(chain, dep, ("NodeAdmitted", "NodeRevoked")) if dep.is_admitted(a)]
    nodes = [a for a in admitted if dep.is_node(a)]  # what the registry counts (licensed, when licensing is on)
    oracles = [a for a in _registry_events(chain, dep, ("OracleAdmitted", "OracleRevoked")) if dep.is_oracle(a)]
    m, n = dep.quorum()
    print(json.dumps({"chain_id": chain.chain_id, "registry": dep.registry.address, "nodes": nodes,
                      "admitted_without_licence": [a for a in admitted if a not in nodes], "oracles": oracles,
                      "quorum": {"m": m, "n": n}}, indent=2))
    return 0


def _chain_deploy(args: argparse.Namespace) -> int:
    from edil.proofs import Chain

    url = check_rpc_url(args.rpc)
    key = read_chain_key(args.key_file)
    if args.epoch_length < 1:
        raise EdilError("--epoch-length must be at least 1 second")
    _check_new_file(args.out)
    chain = Chain.from_url(url, [key])
    dep = chain.deploy(epoch_length=args.epoch_length, require_licence=args.require_licence)
    text = json.dumps(deployment_json(chain.chain_id, url, dep), indent=2)
    _write_new(args.out, text + "\n")
    print(text)
    print(f"edil chain: deployed on chain {chain.chain_id}; wrote {args.out}", file=sys.stderr)
    return 0


def _is_dev_chain(chain: Any) -> bool:
    from edil.app._runtime_demo import DEV_NODES

    try:
        version = str(chain.w3.client_version).lower()
    except Exception:  # noqa: BLE001 - a node that does not say what it is cannot be moved
        return False
    return any(dev in version for dev in DEV_NODES)


def _epoch_close(args: argparse.Namespace) -> int:
    from eth_account import Account
    from eth_utils import to_checksum_address

    from edil.app._coordinator import read_heartbeat_log, state_dir
    from edil.app._node_cli import read_seed
    from edil.proofs import EpochStatus
    from edil.runtime import (
        Journal,
        NodeIdentity,
        audit_epoch,
        check_nats_url,
        claim_from_bus,
        close_epoch,
        epoch_batch,
        make_oracles,
        settle_availability,
    )

    if args.rpc is not None:
        check_rpc_url(args.rpc)
    if args.nats is not None:
        check_nats_url(args.nats)
    oracle_keys = [read_chain_key(p) for p in args.oracle_key]
    nodes = [NodeIdentity.from_seed(read_seed(p)) for p in args.node_key]
    if args.heartbeat_s < 1:
        raise EdilError("--heartbeat-s must be at least 1")
    if not args.journal.is_file():
        raise EdilError(f"no journal at {args.journal}")
    chain, dep = _open_from_args(args)
    if args.nats is None and dep.epoch_length % args.heartbeat_s:
        raise EdilError(f"the epoch length {dep.epoch_length} s is not a multiple of --heartbeat-s {args.heartbeat_s}")
    m, _ = dep.quorum()
    if args.nats is None and len(oracle_keys) < max(m, 1):
        raise EdilError(f"the registry needs {m} oracle signatures; {len(oracle_keys)} --oracle-key given")
    if args.advance:
        if not _is_dev_chain(chain):
            raise EdilError("--advance moves the chain's clock, which only development chains (anvil, hardhat, ganache) allow")
        epoch = dep.current_epoch() if args.epoch is None else args.epoch
        dep.advance_to_epoch(max(epoch + 1, dep.current_epoch()))
    else:
        epoch = dep.current_epoch() - 1 if args.epoch is None else args.epoch
    if epoch < 0 or epoch >= dep.current_epoch():
        raise EdilError(f"epoch {epoch} has not ended (the chain is in epoch {dep.current_epoch()})")
    journal = Journal(str(args.journal))
    try:
        for ident in nodes:
            if dep.epoch_status(ident.address, epoch) == EpochStatus.NONE:
                close_epoch(dep, journal, ident.chain_key, ident.address, epoch)
        # Every node with work in the journal for this epoch, and every node whose key was given.
        names = {r_node for r in journal.results() if r.epoch == epoch for r_node in r.nodes}
        names |= {i.address for i in nodes}
        candidates = sorted({to_checksum_address(a) for a in names})
        batches = {}
        for a in candidates:
            if dep.epoch_status(a, epoch) == EpochStatus.POSTED:
                batch = epoch_batch(journal, a, epoch, dep.poai_domain)
                if batch is not None:
                    batches[a] = batch
        if batches and len(oracle_keys) < max(m, 1):  # only with --nats: the claims need no oracle key, audits do
            raise EdilError(f"auditing {len(batches)} batch(es) needs {m} oracle signatures; {len(oracle_keys)} --oracle-key given")
        if batches:
            _wait_for_beacon(chain, dep, epoch, list(batches))
        rows: dict[str, dict[str, Any]] = {}
        for a, batch in batches.items():
            report = audit_epoch(dep, journal, batch, oracle_keys)
            rows[a] = {"tasks": report.task_count, "work_units": report.work_units, "audit": "passed" if report.passed else "failed",
                       "findings": list(report.failures[:3])}
        for a in candidates:
            rec = dep.epoch_record(a, epoch)
            row = rows.setdefault(a, {"audit": rec.status.name.lower()})
            row["status"] = rec.status.name.lower()
            row["verified_work_units"] = dep.verified_work_units(a, epoch)
        if nodes and args.nats is not None:
            for ident in nodes:
                row = rows.setdefault(ident.address, {})
                if dep.is_claimed(ident.address, epoch):
                    row["availability"] = "already claimed"
                    continue
                row["availability"] = claim_from_bus(dep, Account.from_key(ident.chain_key), args.nats, [epoch], identity=ident)[0]
                row["earned_availability"] = dep.earned_availability(ident.address, epoch)
        elif nodes:
            cards, beats = read_heartbeat_log(state_dir(args.journal))
            oracles = make_oracles(dep, oracle_keys, cards, epoch_length_s=dep.epoch_length, heartbeat_s=args.heartbeat_s)
            for t, hb in beats:
                for o in oracles:
                    o.monitor.receive(hb, now_ms=t)
            for ident in nodes:
                row = rows.setdefault(ident.address, {})
                if dep.is_claimed(ident.address, epoch):
                    row["availability"] = "already claimed"
                    continue
                row["availability"] = settle_availability(dep, Account.from_key(ident.chain_key), [epoch], oracles)[0]
                row["earned_availability"] = dep.earned_availability(ident.address, epoch)
    finally:
        journal.close()
    print(json.dumps({"epoch": epoch, "nodes": rows}, indent=2))
    return 0


def _wait_for_beacon(chain: Any, dep: Any, epoch: int, nodes: list[str], timeout_s: float = 300.0) -> None:
    """The audit beacon is the block after the latest root: mine it (development chains) or wait for it."""
    last = max(dep.epoch_record(a, epoch).posted_block for a in nodes)
    if chain.block_number() > last:
        return
    if _is_dev_chain(chain):
        chain.mine()
        return
    deadline = time.monotonic() + timeout_s
    while chain.block_number() <= last:
        if time.monotonic() > deadline:
            raise EdilError(f"no block after {last} within {timeout_s:g} s: the audit beacon is not there yet")
        time.sleep(2.0)


def main(args: argparse.Namespace) -> int:
    """Run a parsed ``chain``, ``registry``, ``job`` or ``epoch`` command; errors are one line."""
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "chain": _chain_deploy,
        "registry": lambda a: a.registry_handler(a),
        "job": _job,
        "epoch": _epoch_close,
    }
    return guarded(f"edil {args.command}", handlers[args.command], args)


def _job(args: argparse.Namespace) -> int:
    from edil.app import _coordinator

    return _coordinator.job_main(args)


def guarded(prog: str, fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``fn(args)``; an error becomes one line on stderr and exit status 2, never a traceback."""
    try:
        return fn(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (EdilError, ValueError, TypeError, OSError) as exc:
        name = "" if type(exc) is EdilError else f"{type(exc).__name__}: "
        print(f"{prog}: {name}{_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:1000]
