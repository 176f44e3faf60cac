"""``edil deploy`` and ``edil service``: private-inference services (Deeploy) from the command line.

* ``edil deploy spec.json --journal jobs.sqlite [--key-file owner.key] [--chain-id N |
  --deployment deployment.json] [--signed-out signed.json]``: journal a service spec. The file is
  ``{"format": "edil-service/1", "spec": {...}}``, signed here with the owner's key (the chain id
  from ``--chain-id``, ``--deployment`` or the file's ``chain_id``), or already signed (it holds
  ``chain_id`` and ``signature``; no ``--key-file``). Prints the service id and state as JSON.
* ``edil service ls --journal jobs.sqlite [--json]``: every service, its state and replicas.
* ``edil service status ID --journal jobs.sqlite``: one service as JSON, with its recent changes.
* ``edil service scale ID N --journal jobs.sqlite --key-file owner.key``: a new spec version with
  ``N`` replicas, signed with the owner's key.
* ``edil service rm ID --journal jobs.sqlite --key-file owner.key``: the owner's signed removal.

Chains: ``edil deploy`` journals a spec only for the chain of ``--chain-id`` or ``--deployment``
(a signed file for another chain is refused); with neither, for the chain the signed file names.
``scale`` and ``rm`` sign for the chain the service's spec is signed for, and no later version of
a service may name another chain. ``edil gateway`` places and serves only the services signed for
its own chain, so a spec journaled for another chain runs nowhere there.

The journal is the coordinator's (``edil coordinator run --journal``): the process that holds the
node view (coordinator or gateway) places the replicas with :class:`edil.runtime.Reconciler`.
Every argument and file is checked before the journal is opened or written; a mistake or a
refusal is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec

from edil import EdilError
from edil.runtime import Journal, Reconciler, ServiceSpec, ServiceState, SignedServiceSpec, StaticRegistry

from ._ops_cli import _write_new, guarded, load_deployment, read_chain_key, read_record

__all__ = ["COMMANDS", "add_parsers", "main"]

#: Top-level commands this module parses and runs.
COMMANDS = ("deploy", "service")

_SPEC_FORMAT = "edil-service/1"
_EVENTS_SHOWN = 20


class _SpecFile(msgspec.Struct, forbid_unknown_fields=True):
    """``spec.json``: a spec, signed (``chain_id`` and ``signature``) or not."""

    format: str
    spec: ServiceSpec
    chain_id: Annotated[int, msgspec.Meta(ge=1, le=(1 << 63) - 1)] | None = None
    signature: Annotated[str, msgspec.Meta(pattern=r"\A0x[0-9a-fA-F]{130}\Z")] | None = None


def add_parsers(sub: Any) -> None:
    """Add ``deploy`` and ``service`` to the ``edil`` subparsers."""

    def journal_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--journal", required=True, type=Path, help="the coordinator's journal (`edil coordinator run --journal`)")

    dep = sub.add_parser(
        "deploy", help="journal a private-inference service from an owner-signed spec",
        description="Journal a service spec (signed here with --key-file, or already signed); prints its service id.",
    )
    dep.add_argument("spec", type=Path, help='spec file: {"format": "edil-service/1", "spec": {...}} (+ "chain_id", "signature" when signed)')
    journal_option(dep)
    dep.add_argument("--key-file", type=Path, default=None, help="the owner's private key (64 hex digits): signs an unsigned spec")
    dep.add_argument("--chain-id", type=int, default=None, help="chain id the signature is for (EIP-712 domain)")
    dep.add_argument("--deployment", type=Path, default=None, help="deployment.json: take the chain id from it")
    dep.add_argument("--signed-out", type=Path, default=None, help="also write the signed spec here (refuses to overwrite)")

    svc = sub.add_parser("service", help="list, inspect, scale and remove services", description="Services in the journal.")
    ssub = svc.add_subparsers(dest="service_command", required=True)
    ls = ssub.add_parser("ls", help="list services", description="List every service, its state and replicas.")
    ls.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    journal_option(ls)
    st = ssub.add_parser("status", help="one service as JSON", description="Print a service's state and recent changes.")
    st.add_argument("service_id", help="the service id (64 hex digits) `edil deploy` printed")
    journal_option(st)
    sc = ssub.add_parser("scale", help="set a service's replicas (owner only)", description="Sign a new spec version with N replicas.")
    sc.add_argument("service_id", help="the service id (64 hex digits)")
    sc.add_argument("replicas", type=int, help="replicas, 1..256 (at least the spec's redundancy)")
    rm = ssub.add_parser("rm", help="remove a service (owner only)", description="Sign the service's removal.")
    rm.add_argument("service_id", help="the service id (64 hex digits)")
    for p in (sc, rm):
        journal_option(p)
        p.add_argument("--key-file", required=True, type=Path, help="the owner's private key (64 hex digits)")


def main(args: argparse.Namespace) -> int:
    """Run a parsed ``deploy`` or ``service`` command; errors are one line."""
    fn = _deploy if args.command == "deploy" else _service
    return guarded(f"edil {args.command}", fn, args)


# --- helpers -----------------------------------------------------------------------------------
def _check_service_id(text: str) -> str:
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise EdilError(f"{text[:80]!r} is not a service id (64 lower-case hex digits)")
    return text


def _open_journal(path: Path, *, create: bool, chain_id: int | None = None) -> Reconciler:
    if create:
        if not path.parent.is_dir():
            raise EdilError(f"cannot create the journal {path}: no directory {path.parent}")
    elif not path.is_file():
        raise EdilError(f"no journal at {path}")
    try:
        journal = Journal(str(path))
    except sqlite3.Error as exc:
        raise EdilError(f"cannot open the journal {path}: {exc}") from None
    # No placement happens here (the coordinator places with its node view): an empty registry suffices.
    # chain_id: `edil deploy` pins to the signed spec's chain; `edil service` leaves it None, as it lists
    # every service and signs scale/rm for the chain each service's own spec names.
    return Reconciler(journal, StaticRegistry(), chain_id=chain_id)


def _state_json(state: ServiceState, *, events: list[tuple[int, str, str, str | None, int, str]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "service_id": state.service_id,
        "name": state.spec.name,
        "owner": state.spec.owner,
        "version": state.version,
        "state": state.state,
        "updating": state.updating,
        "replicas": [{"node": n, "version": v} for n, v in zip(state.replicas, state.replica_versions, strict=True)],
        "chain_id": state.signed.chain_id,
        "spec": msgspec.to_builtins(state.spec),
    }
    if events is not None:
        out["events"] = [
            {"at_ms": at, "kind": kind, "node": node, "version": ver, "reason": why} for at, _sid, kind, node, ver, why in events
        ]
    return out


def _run(reconciler: Reconciler, fn: Any) -> Any:
    """Run ``fn()`` on the open journal, a database failure as one line, and close it."""
    try:
        return fn()
    except sqlite3.Error as exc:
        raise EdilError(f"journal {reconciler.journal.path}: {exc}") from None
    finally:
        reconciler.journal.close()


# --- commands ----------------------------------------------------------------------------------
def _deploy(args: argparse.Namespace) -> int:
    if args.chain_id is not None and args.deployment is not None:
        raise EdilError("give --chain-id or --deployment, not both")
    if args.chain_id is not None and not 1 <= args.chain_id < 1 << 63:
        raise EdilError("--chain-id must be in [1, 2^63)")
    if args.signed_out is not None:
        if args.signed_out.exists():
            raise EdilError(f"{args.signed_out} exists; refusing to overwrite it")
        if not args.signed_out.parent.is_dir():
            raise EdilError(f"cannot create {args.signed_out}: no directory {args.signed_out.parent}")
    rec: _SpecFile = read_record(args.spec, _SpecFile, "service spec file", _SPEC_FORMAT)
    chain_id = args.chain_id if args.deployment is None else load_deployment(args.deployment).chain_id
    if (rec.chain_id is None) != (rec.signature is None):
        raise EdilError(f"{args.spec}: a signed spec has both chain_id and signature")
    if rec.chain_id is not None and chain_id is not None and rec.chain_id != chain_id:
        raise EdilError(f"{args.spec} names chain {rec.chain_id}, but the deployment is chain {chain_id}")
    if rec.signature is not None:
        if args.key_file is not None:
            raise EdilError(f"{args.spec} is signed already; drop --key-file")
        assert rec.chain_id is not None
        signed = SignedServiceSpec(spec=rec.spec, chain_id=rec.chain_id, signature=rec.signature)
    else:
        if args.key_file is None:
            raise EdilError(f"{args.spec} is not signed: give the owner's --key-file")
        chain_id = chain_id if chain_id is not None else rec.chain_id
        if chain_id is None:
            raise EdilError("name the chain the signature is for: --chain-id N or --deployment deployment.json")
        signed = SignedServiceSpec.sign(rec.spec, read_chain_key(args.key_file), chain_id=chain_id)
    signed.verify(chain_id=chain_id)  # refused here, before the journal is opened or created
    reconciler = _open_journal(args.journal, create=True, chain_id=signed.chain_id)

    def go() -> ServiceState:
        sid = reconciler.deploy(signed)
        state = reconciler.get(sid)
        assert state is not None
        return state

    state = _run(reconciler, go)
    if args.signed_out is not None:
        _write_new(args.signed_out, signed.to_json().decode() + "\n")
    print(json.dumps({"service_id": state.service_id, "version": state.version, "state": state.state}))
    print(f"edil deploy: {state.spec.name} v{state.version} journaled; the coordinator places its replicas", file=sys.stderr)
    return 0


def _service(args: argparse.Namespace) -> int:
    cmd = args.service_command
    sid = _check_service_id(args.service_id) if cmd in ("status", "scale", "rm") else None
    key = read_chain_key(args.key_file) if cmd in ("scale", "rm") else None
    if cmd == "scale" and not 1 <= args.replicas <= 256:
        raise EdilError("replicas must be in 1..256")
    reconciler = _open_journal(args.journal, create=False)
    if cmd == "ls":
        states = _run(reconciler, reconciler.list)
        if args.json:
            print(json.dumps([_state_json(s) for s in states], indent=2))
        else:
            print(f"{'SERVICE':<16} {'NAME':<24} {'SCHEME':<8} {'VERSION':>7} {'STATE':<9} REPLICAS")
            for s in states:
                print(f"{s.service_id[:16]:<16} {s.spec.name[:24]:<24} {s.spec.scheme:<8} {s.version:>7} {s.state:<9} "
                      f"{len(s.replicas)}/{s.spec.replicas}")
        return 0
    assert sid is not None

    def go() -> dict[str, Any]:
        if cmd == "status":
            state = reconciler.get(sid)
            if state is None:
                raise EdilError(f"no service {sid} in {args.journal}")
            return _state_json(state, events=reconciler.events(sid)[-_EVENTS_SHOWN:])
        assert key is not None
        if reconciler.get(sid) is None:
            raise EdilError(f"no service {sid} in {args.journal}")
        state = reconciler.scale(sid, args.replicas, signed_by=key) if cmd == "scale" else reconciler.remove(sid, signed_by=key)
        return _state_json(state)

    print(json.dumps(_run(reconciler, go), indent=2))
    return 0
