"""Shared set-up of the economy tests: a deployment with a token, funded actors and audit helpers."""

from __future__ import annotations

from dataclasses import dataclass

from eth_account.signers.local import LocalAccount

from edil.proofs import AuditAttestation, Chain, Deployment, TxResult, sign_audit, sign_availability
from edil.proofs._hashing import keccak256
from tests._chain_fixtures import make_key

EPOCH = 600
CLIENT_FUNDS = 10**24


@dataclass(frozen=True)
class Economy:
    chain: Chain
    dep: Deployment
    nodes: tuple[LocalAccount, ...]
    oracles: tuple[LocalAccount, ...]
    client: LocalAccount
    operator: LocalAccount
    treasury: LocalAccount


def build_economy(
    chain: Chain, *, n_nodes: int = 3, n_oracles: int = 3, quorum: int = 2, slash_bps: int = 1000, require_licence: bool = False
) -> Economy:
    """Deploy everything, admit nodes and oracles, fund accounts with gas and the client and operator with tokens."""
    treasury = make_key("treasury")
    dep = chain.deploy(
        epoch_length=EPOCH,
        treasury=treasury.address,
        slash_bps=slash_bps,
        unbonding_delay=3 * EPOCH,
        require_licence=require_licence,
    )
    nodes = tuple(make_key(f"econ-node-{i}") for i in range(n_nodes))
    oracles = tuple(make_key(f"econ-oracle-{i}") for i in range(n_oracles))
    client, operator = make_key("econ-client"), make_key("econ-operator")
    for acct in (*nodes, client, operator):
        chain.fund(acct.address, 10**19)
    for node in nodes:
        dep.admit_node(node.address)
    for o in oracles:
        dep.admit_oracle(o.address)
    dep.set_quorum(quorum)
    dep.mint(client.address, CLIENT_FUNDS)
    dep.mint(operator.address, CLIENT_FUNDS)
    dep.advance_to_epoch(10)
    return Economy(chain, dep, nodes, oracles, client, operator, treasury)


def root_of(node: str, epoch: int) -> bytes:
    return keccak256(b"econ-root/" + bytes.fromhex(node[2:]) + epoch.to_bytes(8, "big"))


def post_and_audit(
    econ: Economy, node: LocalAccount, epoch: int, work_units: int | None, *, signers: int | None = None
) -> TxResult:
    """Post ``node``'s root for ``epoch`` and record a quorum's audit: a pass with ``work_units``,
    or a failure when ``work_units`` is None. ``signers`` oracles sign (default: the quorum)."""
    dep = econ.dep
    root = root_of(node.address, epoch)
    dep.post_epoch_root(node, epoch, root)
    passed = work_units is not None
    count, work = (1, work_units) if passed else (0, 0)
    report = b"\x42" * 32
    m = dep.quorum()[0] if signers is None else signers
    sigs = [sign_audit(o, dep.poai_domain, node.address, epoch, root, count, work, passed, report) for o in econ.oracles[:m]]
    return dep.record_audit(AuditAttestation(node.address, epoch, root, count, work, passed, report), sigs)


def claim_availability(econ: Economy, node: LocalAccount, epochs: list[int], availabilities: list[int]) -> TxResult:
    """Claim ``node``'s availability with signatures of a quorum of the oracles."""
    dep = econ.dep
    m = dep.quorum()[0]
    sigs = [sign_availability(o, dep.ledger_domain, node.address, epochs, availabilities) for o in econ.oracles[:m]]
    return dep.claim_availability(node, epochs, availabilities, sigs)
