"""``edil registry attestor`` and ``edil registry licence``: KYC attestors and operator licences.

* ``edil registry attestor add|remove ADDR --deployment deployment.json --key-file owner.key``:
  list or delist a KYC attestor on the OperatorLicence contract (the registry owner only).
* ``edil registry licence attest --deployment ... --attestor-key attestor.key --holder ADDR
  (--kyc-hash HEX | --kyc-record FILE) [--expiry UNIX | --valid-for S] [--nonce N]``: sign a KYC
  attestation offline (the EIP-712 domain comes from ``deployment.json``: chain id and licence
  address) and print it as JSON (``edil-kyc-attestation/1``); nothing is sent.
* ``edil registry licence mint ATTESTATION.json --deployment ... --key-file any.key``: mint the
  licence the attestation grants (anyone may submit it); prints the licence id.
* ``edil registry licence bind|unbind LICENCE --node ADDR... --key-file holder.key``: bind nodes to
  the holder's licence, or unbind them.
* ``edil registry licence revoke LICENCE --key-file owner-or-attestor.key``: revoke a licence;
  its nodes are unbound, and with licensing on they stop being nodes (``isNode`` false: no root,
  no claim, no task from the scheduler, no bus permissions).
* ``edil registry licence require on|off --key-file owner.key``: turn licensing on or off.
* ``edil registry licence list --deployment ... [--holder ADDR]``: every licence with its holder,
  KYC hash, whether it is revoked and its nodes, and whether licensing is on (view calls only).

Wiring: ``edil.app._ops_cli`` builds ``edil registry`` and calls :func:`add_registry_subcommands`
with its subparsers; each parser added here carries ``registry_handler``, which ``_ops_cli.main``
runs with one-line errors. :func:`registry_main` runs a parsed command of this module directly.
Argument and file mistakes are found before any network access; every error is one line on
stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec

from edil import EdilError

__all__ = ["ATTESTATION_FORMAT", "add_registry_subcommands", "read_attestation", "registry_main"]

#: The ``format`` of the attestation JSON ``licence attest`` prints and ``licence mint`` reads.
ATTESTATION_FORMAT = "edil-kyc-attestation/1"
#: Default lifetime of an attestation (``--valid-for``): seven days.
DEFAULT_VALIDITY_S = 7 * 24 * 3600
_MAX_ATTESTATION_BYTES = 1 << 14

_Address = Annotated[str, msgspec.Meta(pattern=r"\A0x[0-9a-fA-F]{40}\Z")]
_Hex32 = Annotated[str, msgspec.Meta(pattern=r"\A0x[0-9a-fA-F]{64}\Z")]


class _Attestation(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    chain_id: Annotated[int, msgspec.Meta(ge=1, le=(1 << 63) - 1)]
    licence: _Address
    operator: _Address
    kyc_hash: _Hex32
    # uint64 and uint256: KycAttestation checks the upper bounds.
    expiry: Annotated[int, msgspec.Meta(ge=0)]
    nonce: Annotated[int, msgspec.Meta(ge=0)]
    attestor: _Address
    signature: Annotated[str, msgspec.Meta(pattern=r"\A0x[0-9a-fA-F]{130}\Z")]


def _ops() -> Any:
    from edil.app import _ops_cli

    return _ops_cli


def _address(value: str, what: str) -> str:
    from eth_utils import is_hex_address, to_checksum_address

    if not isinstance(value, str) or not is_hex_address(value):
        raise EdilError(f"{what} {value!r} is not a 0x-prefixed 20-byte address")
    return str(to_checksum_address(value))


def _licence_id(value: str) -> int:
    try:
        n = int(value, 10)
    except ValueError:
        n = 0
    if not 1 <= n < 1 << 256:
        raise EdilError(f"licence {value!r} is not a licence id (a positive integer)")
    return n


# --- parsers -----------------------------------------------------------------------------------
def add_registry_subcommands(registry_subparsers: Any) -> None:
    """Add ``attestor`` and ``licence`` to the ``edil registry`` subparsers.

    Args:
        registry_subparsers: what ``add_subparsers`` returned for ``edil registry``.
    """
    add_chain_options = _ops().add_chain_options
    att = registry_subparsers.add_parser(
        "attestor", help="list or delist KYC attestors (owner only)",
        description="KYC attestors sign the attestations operator licences are minted with.",
    )
    asub = att.add_subparsers(dest="attestor_command", required=True)
    for name, text in (("add", "list a KYC attestor"), ("remove", "delist a KYC attestor")):
        p = asub.add_parser(name, help=text + " (owner only)", description=text[0].upper() + text[1:] + ".")
        p.add_argument("attestor", metavar="ADDR", help="the attestor's chain address")
        add_chain_options(p)
        p.set_defaults(registry_handler=_attestor)

    lic = registry_subparsers.add_parser(
        "licence", help="operator licences: attest, mint, bind, unbind, revoke, require, list",
        description="Operator licences (ERC-721), minted on a KYC attestation; each binds node addresses.",
    )
    lsub = lic.add_subparsers(dest="licence_command", required=True)
    attest = lsub.add_parser(
        "attest", help="sign a KYC attestation for a holder (offline) and print it as JSON",
        description="Sign a KYC attestation with the attestor's key; nothing is sent to the chain.",
    )
    attest.add_argument("--deployment", required=True, type=Path, help="deployment.json (chain id and licence address)")
    attest.add_argument("--attestor-key", required=True, type=Path, help="the KYC attestor's private key (64 hex digits)")
    attest.add_argument("--holder", required=True, metavar="ADDR", help="the operator the licence is minted to")
    kyc = attest.add_mutually_exclusive_group(required=True)
    kyc.add_argument("--kyc-hash", metavar="HEX", help="32-byte commitment to the off-chain KYC record (0x + 64 hex digits)")
    kyc.add_argument("--kyc-record", type=Path, metavar="FILE", help="the KYC record; its keccak256 is the commitment")
    when = attest.add_mutually_exclusive_group()
    when.add_argument("--expiry", type=int, metavar="UNIX", help="Unix time after which the attestation mints nothing")
    when.add_argument("--valid-for", type=int, metavar="S", help=f"seconds from now it stays valid (default {DEFAULT_VALIDITY_S})")
    attest.add_argument("--nonce", type=int, default=None, help="tells attestations apart, 0..2**64-1 (default: random)")
    attest.add_argument("--out", type=Path, default=None, help="also write the attestation to this file (refuses to overwrite)")
    attest.set_defaults(registry_handler=_attest)

    mint = lsub.add_parser("mint", help="mint the licence an attestation grants", description="Mint an operator licence.")
    mint.add_argument("attestation", type=Path, help="the JSON `edil registry licence attest` printed")
    add_chain_options(mint, key_help="a funded key that sends the mint (anyone may)")
    mint.set_defaults(registry_handler=_mint)

    for name, text in (("bind", "bind nodes to a licence (its holder only)"), ("unbind", "unbind nodes from a licence (its holder only)")):
        p = lsub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("licence", help="the licence id")
        p.add_argument("--node", action="append", default=[], required=True, metavar="ADDR", help="a node's chain address (repeatable)")
        add_chain_options(p, key_help="the licence holder's private key")
        p.set_defaults(registry_handler=_bind)

    revoke = lsub.add_parser(
        "revoke", help="revoke a licence: its nodes are unbound (owner or a listed attestor)",
        description="Revoke an operator licence; with licensing on its nodes stop being nodes.",
    )
    revoke.add_argument("licence", help="the licence id")
    add_chain_options(revoke, key_help="the registry owner's or a listed attestor's private key")
    revoke.set_defaults(registry_handler=_revoke)

    require = lsub.add_parser(
        "require", help="turn licensing on or off (owner only)",
        description="With licensing on, a node is a node only while it is admitted and bound to a live licence.",
    )
    require.add_argument("state", choices=("on", "off"))
    add_chain_options(require)
    require.set_defaults(registry_handler=_require)

    ls = lsub.add_parser("list", help="list licences, their holders and nodes", description="List operator licences.")
    ls.add_argument("--holder", metavar="ADDR", default=None, help="only this holder's licences")
    add_chain_options(ls, key_required=False, key_help="any key (optional: only view calls are made)")
    ls.set_defaults(registry_handler=_list)


def registry_main(args: argparse.Namespace) -> int | None:
    """Run a parsed ``edil registry attestor|licence`` command with one-line errors; ``None`` for
    any other command (it is not this module's)."""
    if getattr(args, "registry_command", None) not in ("attestor", "licence"):
        return None
    ops = _ops()
    result: int = ops.guarded(f"edil registry {args.registry_command}", args.registry_handler, args)
    return result


# --- commands ----------------------------------------------------------------------------------
def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    """Check the arguments and files, then connect and bind the licence contract."""
    ops = _ops()
    if args.rpc is not None:
        ops.check_rpc_url(args.rpc)
    key = ops.read_chain_key(args.key_file) if args.key_file is not None else None
    rec = ops.load_deployment(args.deployment)
    if rec.addresses.licence is None:
        raise EdilError(f"{args.deployment} names no licence contract (deploy with `edil chain deploy`)")
    chain, dep = ops.open_deployment(rec, key, args.rpc)
    return chain, dep


def _attestor(args: argparse.Namespace) -> int:
    attestor = _address(args.attestor, "attestor")
    _, dep = _open(args)
    listed = args.attestor_command == "add"
    if bool(dep.chain.call(dep.licence.functions.isAttestor(attestor))) != listed:
        dep.set_attestor(attestor, listed)
    state = bool(dep.chain.call(dep.licence.functions.isAttestor(attestor)))
    print(f"attestor {attestor}: {'listed' if state else 'not listed'}")
    return 0


def _kyc_hash(args: argparse.Namespace) -> bytes:
    from edil.proofs import keccak256

    if args.kyc_record is not None:
        try:
            return keccak256(args.kyc_record.read_bytes())
        except OSError as exc:
            raise EdilError(f"cannot read KYC record {args.kyc_record}: {exc.strerror}") from None
    text = args.kyc_hash
    digits = text[2:] if text[:2].lower() == "0x" else text
    if len(digits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise EdilError(f"--kyc-hash {text!r} is not 32 bytes of hex (0x + 64 hex digits)")
    return bytes.fromhex(digits)


def _attest(args: argparse.Namespace) -> int:
    from eth_account import Account

    from edil.proofs import Eip712Domain, KycAttestation, sign_kyc_attestation

    ops = _ops()
    holder = _address(args.holder, "--holder")
    key = ops.read_chain_key(args.attestor_key)
    rec = ops.load_deployment(args.deployment)
    if rec.addresses.licence is None:
        raise EdilError(f"{args.deployment} names no licence contract (deploy with `edil chain deploy`)")
    kyc_hash = _kyc_hash(args)
    if args.expiry is not None:
        expiry = args.expiry
    else:
        valid_for = DEFAULT_VALIDITY_S if args.valid_for is None else args.valid_for
        if valid_for < 1:
            raise EdilError("--valid-for must be at least 1 second")
        expiry = int(time.time()) + valid_for  # the command line is where the clock is read
    if not 0 <= expiry < 1 << 64:
        raise EdilError("--expiry must be a Unix time (0 <= expiry < 2**64)")
    nonce = secrets.randbits(64) if args.nonce is None else args.nonce  # the command line is where randomness is drawn
    if not 0 <= nonce < 1 << 64:
        raise EdilError("--nonce must be in 0..2**64-1")
    if args.out is not None:
        ops._check_new_file(args.out)
    licence = _address(rec.addresses.licence, "licence")
    attestation = KycAttestation(holder, kyc_hash, expiry, nonce)
    domain = Eip712Domain("EDIL OperatorLicence", "1", rec.chain_id, licence)
    signature = sign_kyc_attestation(key, domain, attestation)
    record = {
        "format": ATTESTATION_FORMAT, "chain_id": rec.chain_id, "licence": licence, "operator": holder,
        "kyc_hash": "0x" + kyc_hash.hex(), "expiry": expiry, "nonce": nonce,
        "attestor": Account.from_key(key).address, "signature": "0x" + signature.hex(),
    }
    text = json.dumps(record, indent=2)
    if args.out is not None:
        ops._write_new(args.out, text + "\n")
    print(text)
    return 0


def read_attestation(path: Path) -> tuple[Any, bytes, _Attestation]:
    """Read and check an attestation file as ``licence attest`` writes it.

    Returns:
        ``(KycAttestation, signature, record)``.

    Raises:
        EdilError: unreadable, empty, too large, not JSON, not an attestation, or a signature that does
            not recover to the named attestor.
    """
    from edil.app._ops_cli import read_record
    from edil.proofs import Eip712Domain, KycAttestation, recover_signer

    rec: _Attestation = read_record(path, _Attestation, "KYC attestation", ATTESTATION_FORMAT, limit=_MAX_ATTESTATION_BYTES)
    attestation = KycAttestation(_address(rec.operator, "operator"), bytes.fromhex(rec.kyc_hash[2:]), rec.expiry, rec.nonce)
    signature = bytes.fromhex(rec.signature[2:])
    domain = Eip712Domain("EDIL OperatorLicence", "1", rec.chain_id, _address(rec.licence, "licence"))
    try:
        signer = recover_signer(attestation.digest(domain), signature)
    except EdilError:
        signer = None
    if signer is None or signer.lower() != rec.attestor.lower():
        raise EdilError(f"{path}: the signature is not the attestor {rec.attestor}'s")
    return attestation, signature, rec


def _mint(args: argparse.Namespace) -> int:
    attestation, signature, rec = read_attestation(args.attestation)
    deployment = _ops().load_deployment(args.deployment)
    if (rec.chain_id, rec.licence.lower()) != (deployment.chain_id, str(deployment.addresses.licence).lower()):
        raise EdilError(f"{args.attestation} is for the licences {rec.licence} on chain {rec.chain_id}, not this deployment's")
    _, dep = _open(args)
    licence_id = dep.mint_licence(attestation, signature, sender=dep.owner)
    print(json.dumps({"licence": licence_id, "holder": attestation.operator, "attestor": rec.attestor}))
    return 0


def _bind(args: argparse.Namespace) -> int:
    licence_id = _licence_id(args.licence)
    nodes = [_address(a, "--node") for a in args.node]
    if args.key_file is None:
        raise EdilError("--key-file (the licence holder's key) is required")
    _, dep = _open(args)
    bind = args.licence_command == "bind"
    for node in nodes:
        bound = dep.licence_of_node(node)
        if bind and bound != licence_id:
            dep.bind_node(dep.owner, licence_id, node)
        elif not bind and bound == licence_id:
            dep.unbind_node(dep.owner, licence_id, node)
        now = dep.licence_of_node(node)
        state = f"bound to licence {now}" if now else "not bound"
        print(f"node {node}: {state}; {'a node' if dep.is_node(node) else 'not a node'}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    licence_id = _licence_id(args.licence)
    _, dep = _open(args)
    nodes = dep.licence_nodes(licence_id)
    dep.revoke_licence(licence_id, sender=dep.owner)
    print(json.dumps({"licence": licence_id, "revoked": True, "unbound": nodes,
                      "nodes_still_nodes": [n for n in nodes if dep.is_node(n)]}))
    return 0


def _require(args: argparse.Namespace) -> int:
    _, dep = _open(args)
    on = args.state == "on"
    if dep.licence_required() != on:
        dep.set_licensing(on)
    print(f"licensing {'on' if dep.licence_required() else 'off'}: licence {dep.licence.address}")
    return 0


def _list(args: argparse.Namespace) -> int:
    holder = _address(args.holder, "--holder") if args.holder is not None else None
    chain, dep = _open(args)
    rows = []
    for licence_id in range(1, dep.licence_count() + 1):
        info = dep.licence_info(licence_id)
        if holder is not None and info["holder"] != holder:
            continue
        rows.append({"licence": licence_id, **info})
    print(json.dumps({"chain_id": chain.chain_id, "licence_contract": dep.licence.address,
                      "licensing": dep.licence_required(), "licences": rows}, indent=2))
    return 0

