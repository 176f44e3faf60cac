"""The network explorer: a read-only web page of nodes, availability, epochs, work, services and payments.

Everything on the page is read, not computed from anything else:

* **the chain** (:class:`ChainIndex`, fed by :class:`ChainReader`): the events of the eight EDIL
  contracts, replayed in chain order: admissions and revocations, licences and their bindings,
  oracles and the quorum, epoch roots, audit verdicts with the attested task counts and work
  units, availability claims and forfeits, escrowed jobs and their settlements, stakes and
  slashes, availability reward pools and payouts. Gas is each transaction's ``gasUsed`` from its
  receipt, counted for every epoch the transaction touched. Sums (a node's verified work over its
  epochs, an epoch's payouts) are sums of these events, kept as they are applied;
* **the journal** (:class:`~edil.runtime.Journal`): job counts by status, recent jobs with their
  nodes and epoch, disputes and faults. A job's spec and output are never read into the page;
* **presence** (duck-typed): node cards (capabilities) and heartbeat monitors
  (:class:`~edil.runtime.HeartbeatMonitor`: a node is *online* when a verified heartbeat of it
  fills one of the last two heartbeat slots); :class:`HeartbeatLog` reads the coordinator
  daemon's heartbeat log for ``edil explorer``;
* **services** (duck-typed): a reconciler whose ``list()`` returns records with ``service_id``,
  ``replicas``, ``state`` and ``version`` (the spec is not shown: only its public identity);
* **metrics** (duck-typed): a ``prometheus_client`` registry; every histogram with a ``service``
  (or ``service_id``) label gives that service's request count and latency percentiles
  (Prometheus' ``histogram_quantile``: linear within the bucket, so as precise as the buckets).

Confirmations. Only blocks at least ``confirmations`` deep are read (default: the chain's
``reorg_depth``, 0 for the in-process EVM), so a reorganisation never leaves a removed event on
the page; the page says which block it is confirmed to.

Safety. The page is read-only (GET only). Strings from nodes (capabilities) and services are
escaped by Jinja2's autoescape; the page sends a Content-Security-Policy that allows only its own
script and stylesheet. No share, key, plaintext, job spec or output reaches the page or the JSON.

Mounting. :func:`explorer_router` returns a FastAPI ``APIRouter`` that a gateway includes with
``app.include_router(explorer_router(explorer), prefix="/explorer")``; :func:`explorer_app` wraps
it in an app of its own (``app.mount("/explorer", explorer_app(explorer))``, or ``edil explorer``).

Example:
    >>> from edil.proofs import Chain
    >>> dep = Chain.in_process().deploy(epoch_length=600)
    >>> ex = Explorer(deployment=dep)
    >>> [n["address"] for n in ex.snapshot()["nodes"]]
    []
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from edil import ChainError, EdilError, ParameterError

__all__ = [
    "ChainIndex",
    "ChainReader",
    "Explorer",
    "HeartbeatLog",
    "explorer_app",
    "explorer_router",
    "histogram_quantile",
    "serve_explorer",
]

_HERE = Path(__file__).resolve().parent
TEMPLATES = _HERE / "templates"
STATIC = _HERE / "static"
#: Files the router serves from ``static/`` (nothing else is reachable there).
STATIC_FILES = {"explorer.css": "text/css; charset=utf-8", "explorer.js": "text/javascript; charset=utf-8"}
#: The page's Content-Security-Policy: its own script and stylesheet only, no inline script.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Contracts of a deployment and the attribute that holds each (economy ones may be absent).
CONTRACTS = ("registry", "verifier", "ledger", "escrow", "stake", "rewards", "licence")
#: Events that move tokens, shown in the payments list.
PAYMENT_EVENTS = ("JobCreated", "SlotSettled", "JobRefunded", "Staked", "Slashed", "Withdrawn", "PoolFunded", "RewardPaid", "PoolReturned")


def _hex(value: Any) -> str:
    return "0x" + bytes(value).hex()


class _Node:
    """What the chain says about one node address (sums kept as events are applied)."""

    __slots__ = (
        "address", "admitted", "admitted_block", "revoked_block", "licensed", "licence", "roots", "passed", "failed",
        "verified_work", "tasks", "claims", "staked", "slashed", "slashed_epochs", "withdrawn", "paid", "rewards",
        "operator", "forfeited",
    )

    def __init__(self, address: str) -> None:
        self.address = address
        self.admitted = False
        self.admitted_block: int | None = None
        self.revoked_block: int | None = None
        self.licensed = False
        self.licence = 0
        self.roots = self.passed = self.failed = self.verified_work = self.tasks = self.claims = 0
        self.staked = self.slashed = self.withdrawn = self.paid = self.rewards = self.forfeited = 0
        self.slashed_epochs: list[int] = []
        self.operator: str | None = None


class _Epoch:
    """What the chain says about one epoch, per node and in total."""

    __slots__ = (
        "epoch", "roots", "audits", "availability", "forfeited", "aggregates", "slashes", "registered", "rewards",
        "paid", "pool", "pool_returned", "gas", "verified_work", "passed", "failed",
    )

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.roots: dict[str, bytes] = {}
        self.audits: dict[str, tuple[bool, int, int]] = {}  # node -> (passed, task count, work units)
        self.availability: dict[str, int] = {}
        self.forfeited: set[str] = set()
        self.aggregates: dict[str, bytes] = {}
        self.slashes: dict[str, int] = {}
        self.registered: dict[str, int] = {}
        self.rewards: dict[str, int] = {}
        self.paid: dict[str, int] = {}  # escrow payouts of jobs of this epoch, per node
        self.pool = 0
        self.pool_returned = 0
        self.gas = 0
        self.verified_work = self.passed = self.failed = 0


class ChainIndex:
    """The explorer's state of the chain: decoded contract events applied in chain order.

    :meth:`apply` takes one event as ``(name, args, block, log_index, tx_hash)`` with ``args``
    as web3 decodes them (checksum addresses, ``bytes`` for ``bytes32``, ints); unknown event
    names are ignored. :meth:`add_gas` adds a transaction's gas to the epochs its events touched.
    """

    RECENT_PAYMENTS = 200

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {}
        self.epochs: dict[int, _Epoch] = {}
        self.oracles: dict[str, bool] = {}
        self.quorum: tuple[int, int] = (0, 0)
        self.licensing_required = False
        self.licences: dict[int, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.totals = {"deposits": 0, "jobs": 0, "payouts": 0, "returned": 0, "refunds": 0, "staked": 0, "slashed": 0,
                       "slashes": 0, "withdrawn": 0, "pools": 0, "rewards": 0, "pool_returns": 0}
        self.payments: deque[dict[str, Any]] = deque(maxlen=self.RECENT_PAYMENTS)
        self.events = 0
        self.last_block = -1
        self._tx_epochs: dict[bytes, set[int]] = {}

    # -- helpers ---------------------------------------------------------------------------------
    def node(self, address: str) -> _Node:
        n = self.nodes.get(address)
        if n is None:
            n = self.nodes[address] = _Node(address)
        return n

    def epoch(self, number: int) -> _Epoch:
        e = self.epochs.get(number)
        if e is None:
            e = self.epochs[number] = _Epoch(number)
        return e

    def _touch(self, tx: bytes | None, *epochs: int) -> None:
        if tx is not None:
            self._tx_epochs.setdefault(tx, set()).update(epochs)

    def _pay(self, kind: str, block: int, amount: int, **fields: Any) -> None:
        self.payments.append({"kind": kind, "block": block, "amount": amount, "who": None, "epoch": None, "job": None, **fields})

    def pending_gas(self) -> list[bytes]:
        """Transactions whose gas has not been added yet."""
        return list(self._tx_epochs)

    def add_gas(self, tx: bytes, gas_used: int) -> None:
        """Add ``gas_used`` of transaction ``tx`` to every epoch its events touched (once)."""
        for e in self._tx_epochs.pop(tx, ()):
            self.epoch(e).gas += int(gas_used)

    # -- events ----------------------------------------------------------------------------------
    def apply(self, name: str, args: Mapping[str, Any], block: int, log_index: int = 0, tx: bytes | None = None) -> None:
        """Apply one decoded event (see the class docstring)."""
        handler = getattr(self, "_on_" + name, None)
        if handler is None:
            return
        handler(args, block, tx)
        self.events += 1
        self.last_block = max(self.last_block, block)

    # registry
    def _on_NodeAdmitted(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        n = self.node(a["node"])
        n.admitted, n.admitted_block, n.revoked_block = True, block, None

    def _on_NodeRevoked(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        n = self.node(a["node"])
        n.admitted, n.revoked_block = False, block

    def _on_NodeLicensed(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        self.node(a["node"]).licensed = bool(a["licensed"])

    def _on_LicensingSet(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        self.licensing_required = bool(a["required"])

    def _on_OracleAdmitted(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        self.oracles[a["oracle"]] = True

    def _on_OracleRevoked(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        self.oracles[a["oracle"]] = False

    def _on_QuorumSet(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        self.quorum = (int(a["quorum"]), int(a["oracleCount"]))

    # PoAI verifier
    def _on_EpochRootPosted(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        e = self.epoch(int(a["epoch"]))
        if a["node"] not in e.roots:
            self.node(a["node"]).roots += 1
        e.roots[a["node"]] = bytes(a["root"])
        self._touch(tx, e.epoch)

    def _on_AggregateRootPosted(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        e = self.epoch(int(a["epoch"]))
        e.aggregates[a["oracle"]] = bytes(a["aggregateRoot"])
        self._touch(tx, e.epoch)

    def _on_AuditRecorded(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        e, n = self.epoch(int(a["epoch"])), self.node(a["node"])
        old = e.audits.get(n.address)
        if old is not None:  # a later verdict (a failure voiding a pass) replaces the earlier one
            self._count_audit(e, n, old, -1)
        new = (bool(a["passed"]), int(a["taskCount"]), int(a["workUnits"]))
        e.audits[n.address] = new
        self._count_audit(e, n, new, 1)
        self._touch(tx, e.epoch)

    @staticmethod
    def _count_audit(e: _Epoch, n: _Node, audit: tuple[bool, int, int], sign: int) -> None:
        passed, tasks, work = audit
        if passed:
            e.passed += sign
            n.passed += sign
            e.verified_work += sign * work
            n.verified_work += sign * work
            n.tasks += sign * tasks
        else:
            e.failed += sign
            n.failed += sign

    # availability ledger
    def _on_AvailabilityClaimed(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        n = self.node(a["node"])
        epochs = [int(x) for x in a["epochs"]]
        for ep, value in zip(epochs, a["availabilities"]):
            self.epoch(ep).availability[n.address] = int(value)
            n.claims += 1
        self._touch(tx, *epochs)

    def _on_AvailabilityForfeited(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        n = self.node(a["node"])
        epochs = [int(x) for x in a["epochs"]]
        for ep in epochs:
            self.epoch(ep).forfeited.add(n.address)
            n.forfeited += 1
        self._touch(tx, *epochs)

    # escrow
    def _on_JobCreated(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        jid, amount = _hex(a["jobId"]), int(a["amount"])
        self.jobs[jid] = {"job": jid, "client": a["client"], "epoch": int(a["epoch"]), "amount": amount,
                          "total_planned": int(a["totalPlanned"]), "paid": 0, "returned": 0, "settled": 0, "refunded": False}
        self.totals["deposits"] += amount
        self.totals["jobs"] += 1
        self._pay("escrow deposit", block, amount, who=a["client"], epoch=int(a["epoch"]), job=jid)

    def _on_SlotSettled(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        jid, paid, returned = _hex(a["jobId"]), int(a["paid"]), int(a["returned"])
        job = self.jobs.get(jid)
        epoch = None if job is None else job["epoch"]
        if job is not None:
            job["paid"] += paid
            job["returned"] += returned
            job["settled"] += 1
            e = self.epoch(job["epoch"])
            e.paid[a["node"]] = e.paid.get(a["node"], 0) + paid
        self.node(a["node"]).paid += paid
        self.totals["payouts"] += paid
        self.totals["returned"] += returned
        self._pay("payout", block, paid, who=a["node"], epoch=epoch, job=jid, units=int(a["units"]), returned=returned)

    def _on_JobRefunded(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        jid, amount = _hex(a["jobId"]), int(a["amount"])
        job = self.jobs.get(jid)
        if job is not None:
            job["refunded"] = True
            job["returned"] += amount
        self.totals["refunds"] += amount
        self._pay("refund", block, amount, who=a["client"], epoch=None if job is None else job["epoch"], job=jid)

    # stake
    def _on_Staked(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        n, amount = self.node(a["node"]), int(a["amount"])
        n.staked += amount
        n.operator = a["operator"]
        self.totals["staked"] += amount
        self._pay("stake", block, amount, who=a["node"], epoch=None)

    def _on_Slashed(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        n, amount, ep = self.node(a["node"]), int(a["amount"]), int(a["epoch"])
        n.slashed += amount
        n.slashed_epochs.append(ep)
        self.epoch(ep).slashes[n.address] = amount
        self.totals["slashed"] += amount
        self.totals["slashes"] += 1
        self._pay("slash", block, amount, who=n.address, epoch=ep)
        self._touch(tx, ep)

    def _on_Withdrawn(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        amount = int(a["amount"])
        self.node(a["node"]).withdrawn += amount
        self.totals["withdrawn"] += amount
        self._pay("stake withdrawn", block, amount, who=a["node"], epoch=None)

    # availability rewards
    def _on_PoolFunded(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        ep, amount = int(a["epoch"]), int(a["amount"])
        self.epoch(ep).pool += amount
        self.totals["pools"] += amount
        self._pay("reward pool", block, amount, who=a["sponsor"], epoch=ep)

    def _on_Registered(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        self.epoch(int(a["epoch"])).registered[a["node"]] = int(a["availability"])

    def _on_RewardPaid(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        ep, paid = int(a["epoch"]), int(a["paid"])
        e = self.epoch(ep)
        e.rewards[a["node"]] = e.rewards.get(a["node"], 0) + paid
        self.node(a["node"]).rewards += paid
        self.totals["rewards"] += paid
        self._pay("availability reward", block, paid, who=a["node"], epoch=ep, returned=int(a["returned"]))

    def _on_PoolReturned(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        ep, amount = int(a["epoch"]), int(a["amount"])
        self.epoch(ep).pool_returned += amount
        self.totals["pool_returns"] += amount
        self._pay("pool returned", block, amount, who=a["sponsor"], epoch=ep)

    # operator licences
    def _on_LicenceMinted(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        self.licences[int(a["licenceId"])] = {"holder": a["operator"], "attestor": a["attestor"], "revoked": False, "nodes": []}

    def _on_Transfer(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        lic = self.licences.get(int(a.get("tokenId", -1)))
        if lic is not None:
            lic["holder"] = a["to"]

    def _on_NodeBound(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        lid, node = int(a["licenceId"]), a["node"]
        lic = self.licences.setdefault(lid, {"holder": None, "attestor": None, "revoked": False, "nodes": []})
        if a["bound"]:
            if node not in lic["nodes"]:
                lic["nodes"].append(node)
            self.node(node).licence = lid
        else:
            if node in lic["nodes"]:
                lic["nodes"].remove(node)
            n = self.node(node)
            if n.licence == lid and not lic["revoked"]:
                n.licence = 0

    def _on_LicenceRevokedBy(self, a: Mapping[str, Any], block: int, tx: bytes | None) -> None:
        lic = self.licences.setdefault(int(a["licenceId"]), {"holder": None, "attestor": None, "revoked": False, "nodes": []})
        lic["revoked"] = True
        lic["revoked_by"] = a["by"]


class ChainReader:
    """Reads a deployment's contract events into a :class:`ChainIndex`, incrementally.

    One :meth:`refresh` asks for the head block, then for the logs of each contract in the new
    confirmed blocks (ranges of at most ``max_log_blocks``), decodes them with the contracts'
    ABIs, applies them in chain order and reads the receipts of the new transactions that touched
    an epoch (their gas). A log that does not decode with its contract's ABI is skipped and
    counted in :attr:`skipped`.

    Args:
        deployment: an ``edil.proofs.Deployment``.
        confirmations: blocks below the head left unread (default: the chain's ``reorg_depth``).
        max_log_blocks: widest block range of one ``eth_getLogs`` request.
        gas: read the receipts' gas (one request per new transaction).
    """

    def __init__(self, deployment: Any, *, confirmations: int | None = None, max_log_blocks: int = 5_000, gas: bool = True) -> None:
        from eth_utils import event_abi_to_log_topic

        depth = getattr(deployment.chain, "reorg_depth", 12) if confirmations is None else confirmations
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ParameterError(f"confirmations must be an int >= 0, got {depth!r}")
        if isinstance(max_log_blocks, bool) or not isinstance(max_log_blocks, int) or max_log_blocks < 1:
            raise ParameterError("max_log_blocks must be an int >= 1")
        self.deployment, self.confirmations, self.max_log_blocks, self.gas = deployment, depth, max_log_blocks, gas
        self.index = ChainIndex()
        self.head = -1
        self.next_block = int(getattr(deployment, "deploy_block", 0))
        self.skipped = 0
        self.requests = 0
        self._contracts: list[tuple[Any, dict[bytes, str]]] = []
        for attr in CONTRACTS:
            contract = getattr(deployment, attr, None)
            if contract is None:
                continue
            topics = {bytes(event_abi_to_log_topic(e)): e["name"] for e in contract.abi if e.get("type") == "event"}
            self._contracts.append((contract, topics))
        self._by_address = {c.address.lower(): (c, t) for c, t in self._contracts}

    @property
    def confirmed_block(self) -> int:
        """The last block whose events are in the index."""
        return self.next_block - 1

    def refresh(self) -> int:
        """Read the confirmed blocks since the last refresh; returns how many events were applied.

        Raises:
            ChainError: the chain could not be read (the index keeps what it had).
        """
        chain = self.deployment.chain
        head = chain.block_number()
        self.requests += 1
        self.head = head
        last = head - self.confirmations
        applied = 0
        while self.next_block <= last:
            hi = min(last, self.next_block + self.max_log_blocks - 1)
            batch: list[tuple[int, int, str, Any, bytes | None]] = []
            for log in self._logs(self.next_block, hi):
                source = self._by_address.get(str(log.get("address", "")).lower())
                decoded = None if source is None else self._decode(*source, log)
                if decoded is not None:
                    batch.append(decoded)
                elif source is None:
                    self.skipped += 1
            batch.sort(key=lambda e: (e[0], e[1]))
            for block, index, name, args, tx in batch:
                self.index.apply(name, args, block, index, tx)
            applied += len(batch)
            self.next_block = hi + 1  # only once every contract's logs of the range are applied
            if self.gas:
                self._read_gas()
        return applied

    def _logs(self, lo: int, hi: int) -> list[Any]:
        """Every log of the deployment's contracts in blocks ``[lo, hi]``: one ``eth_getLogs``."""
        params = {"address": [c.address for c, _ in self._contracts], "fromBlock": lo, "toBlock": hi}
        self.requests += 1
        try:
            logs = self.deployment.chain.w3.eth.get_logs(params)
        except Exception as exc:  # noqa: BLE001 - any failure of the request: the view keeps what it had
            raise ChainError(f"eth_getLogs for blocks {lo}..{hi}: {type(exc).__name__}: {str(exc)[:160]}", reason="logs") from None
        if not isinstance(logs, list | tuple):
            raise ChainError("eth_getLogs answered with no list of logs", reason="malformed")
        return list(logs)

    def _decode(self, contract: Any, topics: dict[bytes, str], log: Mapping[str, Any]) -> tuple[int, int, str, Any, bytes | None] | None:
        try:
            if log.get("removed", False):
                return None
            name = topics.get(bytes(log["topics"][0])) if log["topics"] else None
            if name is None:
                return None
            event = contract.events[name]().process_log(log)
            return int(event["blockNumber"]), int(event["logIndex"]), name, event["args"], bytes(event["transactionHash"])
        except Exception:  # noqa: BLE001 - a log that is not what its contract's ABI says is skipped, never fatal
            self.skipped += 1
            return None

    def _read_gas(self) -> None:
        w3 = self.deployment.chain.w3
        for tx in self.index.pending_gas():
            try:
                receipt = w3.eth.get_transaction_receipt(tx)
                self.requests += 1
                gas = int(receipt["gasUsed"])
            except Exception as exc:  # noqa: BLE001 - an RPC failure of any kind: retried at the next refresh
                raise ChainError(f"reading the receipt of 0x{tx.hex()}: {type(exc).__name__}", reason="receipt") from None
            self.index.add_gas(tx, gas)


class HeartbeatLog:
    """The coordinator daemon's heartbeat log (``cards.jsonl``, ``heartbeats.jsonl`` in its state
    folder, see :mod:`edil.app._coordinator`), read incrementally into a heartbeat monitor.

    Each :meth:`refresh` reads only the lines appended since the previous one; a card must verify
    (its chain key binds its keys) and a heartbeat counts only if the monitor accepts it
    (signature of a known card, admitted node, fresh at its logged arrival time). A partial last
    line is left for the next refresh.

    Args:
        folder: the daemon's state folder (``state_dir(journal)``).
        deployment: the chain deployment (its registry and epoch clock).
        heartbeat_s: the daemon's heartbeat period in seconds (``--heartbeat-s``).
    """

    def __init__(self, folder: Path, deployment: Any, *, heartbeat_s: int = 60) -> None:
        from edil.runtime import ChainRegistry, HeartbeatMonitor

        self.folder = Path(folder)
        self.monitor = HeartbeatMonitor(
            ChainRegistry(deployment, ttl_s=2.0), epoch_ms=deployment.epoch_length * 1000, interval_ms=int(heartbeat_s) * 1000,
            genesis_ms=deployment.genesis_time * 1000,
        )
        self.cards: dict[str, Any] = {}
        self._offsets = {"cards.jsonl": 0, "heartbeats.jsonl": 0}

    def _new_lines(self, name: str) -> list[str]:
        try:
            with open(self.folder / name, "rb") as f:
                f.seek(self._offsets[name])
                data = f.read(1 << 24)
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._offsets[name] += end
        return data[:end].decode("utf-8", errors="replace").splitlines()

    def refresh(self) -> None:
        from edil.runtime import Capabilities, NodeCard

        for line in self._new_lines("cards.jsonl"):
            try:
                d = json.loads(line)
                caps = Capabilities(tuple(str(x) for x in d["capabilities"]["accelerators"]), int(d["capabilities"]["memory_bytes"]))
                card = NodeCard(d["address"], bytes.fromhex(d["signing_key"]), bytes.fromhex(d["box_key"]), caps,
                                bytes.fromhex(d["signature"])).verify()
            except (ValueError, KeyError, TypeError, EdilError):
                continue
            self.cards[card.address] = card
            self.monitor.add_card(card)
        for line in self._new_lines("heartbeats.jsonl"):
            try:
                d = json.loads(line)
                self.monitor.receive(bytes.fromhex(d["hb"]), now_ms=int(d["t"]))
            except (ValueError, KeyError, TypeError):
                continue


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: the ``q`` quantile of cumulative ``(upper bound, count)``
    buckets, linear within the bucket that holds it (``None`` without observations).

    Raises:
        ParameterError: ``q`` outside [0, 1].
    """
    if not 0.0 <= q <= 1.0:
        raise ParameterError("q must be in [0, 1]")
    bs = sorted((float(le), float(c)) for le, c in buckets)
    if not bs or bs[-1][1] <= 0:
        return None
    rank = q * bs[-1][1]
    lower, below = 0.0, 0.0
    for le, count in bs:
        if count >= rank and count > 0:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return bs[-1][0]


def _service_latency(registry: Any) -> dict[str, dict[str, Any]]:
    """Per service: request count and p50/p95/p99 seconds from every histogram with a service label."""
    out: dict[str, dict[str, Any]] = {}
    for family in registry.collect():
        if getattr(family, "type", None) != "histogram":
            continue
        per: dict[tuple[str, str, tuple[tuple[str, str], ...]], list[tuple[float, float]]] = {}
        for s in family.samples:
            labels = dict(s.labels)
            service = labels.get("service", labels.get("service_id"))
            if service is None or not s.name.endswith("_bucket"):
                continue
            le = labels.pop("le")
            per.setdefault((str(service), family.name, tuple(sorted(labels.items()))), []).append((float(le), float(s.value)))
        for (service, metric, _), buckets in per.items():
            total = max((c for _, c in buckets), default=0.0)
            merged = out.setdefault(service, {"metric": metric, "buckets": {}})
            for le, c in buckets:  # several label sets of one service (e.g. per status) add up
                merged["buckets"][le] = merged["buckets"].get(le, 0.0) + c
            merged["requests"] = merged.get("requests", 0) + int(total)
    for row in out.values():
        bs = sorted(row.pop("buckets").items())
        row.update({f"p{int(q * 100)}_ms": None if (v := histogram_quantile(q, bs)) is None else v * 1000 for q in (0.5, 0.95, 0.99)})
    return out


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _text(value: Any) -> str:
    """A short display string of a value that came from a node or a service (escaped by the template)."""
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    name = getattr(value, "name", None)  # an Enum member
    text = name if isinstance(name, str) else str(value)
    return text if len(text) <= 200 else text[:199] + "…"


class Explorer:
    """The explorer's data: the chain, the journal, presence, services and metrics, read on demand.

    Every source is optional. :meth:`snapshot` refreshes the sources at most every ``refresh_s``
    seconds (a failed chain refresh keeps the last view and says so in ``errors``) and returns
    the page's data as JSON-ready values (token amounts as decimal strings, bytes as 0x-hex).

    Args:
        deployment: an ``edil.proofs.Deployment`` (its events are the chain's figures).
        journal: an ``edil.runtime.Journal``.
        cards: node cards: a mapping or iterable of cards (``address``, ``capabilities``), an
            object with a ``cards`` mapping (``edil.runtime.Presence``, :class:`HeartbeatLog`),
            or a callable returning either.
        monitors: heartbeat monitors (``recent(node, now_ms=, window_ms=)`` and ``interval_ms``),
            or objects with a ``monitor`` (oracles, ``Presence``, :class:`HeartbeatLog`).
        reconciler: Deeploy's reconciler, or anything whose ``list()`` returns service records.
        metrics: a ``prometheus_client`` registry (``collect()``).
        heartbeat_log: the coordinator daemon's heartbeat log (its cards and its monitor serve).
        reader: a :class:`ChainReader` to share (e.g. between a gateway's views) instead of a new one.
        clock: seconds since the Unix epoch; "online" is judged at this time (a development chain
            that stamps heartbeats with its own clock passes the chain's time).
        confirmations: see :class:`ChainReader`.
        refresh_s: least time between two reads of the sources.
        heatmap_epochs: epochs shown in the availability heat map (the latest ones).
        recent_epochs: epochs listed in the epochs table; recent_jobs: jobs listed.
    """

    def __init__(
        self,
        *,
        deployment: Any = None,
        journal: Any = None,
        cards: Any = None,
        monitors: Iterable[Any] = (),
        reconciler: Any = None,
        metrics: Any = None,
        heartbeat_log: HeartbeatLog | None = None,
        reader: ChainReader | None = None,
        clock: Callable[[], float] = time.time,
        confirmations: int | None = None,
        refresh_s: float = 1.0,
        heatmap_epochs: int = 32,
        recent_epochs: int = 50,
        recent_jobs: int = 50,
    ) -> None:
        for name, value in (("heatmap_epochs", heatmap_epochs), ("recent_epochs", recent_epochs), ("recent_jobs", recent_jobs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(refresh_s, bool) or not isinstance(refresh_s, int | float) or not refresh_s >= 0:
            raise ParameterError("refresh_s must be a number of seconds >= 0")
        if reader is not None and deployment is not None and reader.deployment is not deployment:
            raise ParameterError("reader reads another deployment")
        self.deployment: Any = deployment if deployment is not None else (None if reader is None else reader.deployment)
        self.reader = reader if reader is not None or deployment is None else ChainReader(deployment, confirmations=confirmations)
        self.journal, self.reconciler, self.metrics = journal, reconciler, metrics
        self.heartbeat_log = heartbeat_log
        self._cards = cards if cards is not None else heartbeat_log
        monitors = list(monitors)
        if heartbeat_log is not None:
            monitors.append(heartbeat_log.monitor)
        self._monitors = [getattr(m, "monitor", m) for m in monitors]
        self.clock, self.refresh_s = clock, float(refresh_s)
        self.heatmap_epochs, self.recent_epochs, self.recent_jobs = heatmap_epochs, recent_epochs, recent_jobs
        self.errors: list[str] = []
        self._lock = threading.RLock()
        self._read_at = -math.inf
        self._token: dict[str, Any] | None = None
        self._chain_info: dict[str, Any] = {}
        self._jobs_cache: dict[str, Any] | None = None
        self._jobs_signature: Any = None
        self._snap_errors: list[str] = []

    # -- reading the sources -----------------------------------------------------------------------
    @property
    def index(self) -> ChainIndex:
        return self.reader.index if self.reader is not None else _EMPTY_INDEX

    def refresh(self, *, force: bool = False) -> None:
        """Read what is new in the sources (at most every ``refresh_s`` unless ``force``)."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._read_at < self.refresh_s:
                return
            self._read_at = now
            errors = []
            if self.reader is not None:
                try:
                    self.reader.refresh()
                    self._read_chain_info()
                except ChainError as exc:
                    errors.append(f"chain: {exc}")
            if self.heartbeat_log is not None:
                try:
                    self.heartbeat_log.refresh()
                except OSError as exc:
                    errors.append(f"heartbeat log: {exc.strerror}")
            self.errors = errors

    def _read_chain_info(self) -> None:
        dep = self.deployment
        if self._token is None:
            self._token = {"symbol": "", "decimals": 18}
            token = getattr(dep, "token", None)
            if token is not None:
                try:
                    self._token = {"symbol": _text(dep.chain.call(token.functions.symbol()))[:16],
                                   "decimals": int(dep.chain.call(token.functions.decimals()))}
                except ChainError:
                    self._token = None  # asked again at the next refresh
        self._chain_info = {
            "current_epoch": int(dep.current_epoch()),
            "epoch_length": int(dep.epoch_length),
            "genesis_time": int(dep.genesis_time),
            "chain_id": int(dep.chain.chain_id),
            "contracts": dict(dep.addresses),
        }

    def _card_map(self) -> dict[str, Any]:
        src: Any = self._cards
        if callable(src) and not isinstance(src, Mapping):
            src = src()
        if src is None:
            return {}
        inner = getattr(src, "cards", None)
        if inner is not None and not callable(inner):
            src = inner
        items = src.values() if isinstance(src, Mapping) else src
        return {str(_field(c, "address")): c for c in items if _field(c, "address") is not None}

    def _online(self, address: str, now_ms: int) -> bool | None:
        if not self._monitors:
            return None
        for m in self._monitors:
            if now_ms - getattr(m, "genesis_ms", 0) < m.interval_ms:
                continue  # no heartbeat slot has finished yet (a monitor then judges every node available)
            try:
                if m.recent(address, now_ms=now_ms, window_ms=2 * m.interval_ms) > 0:
                    return True
            except (ChainError, ValueError):
                continue
        return False

    # -- the snapshot ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The page's data (see the class docstring); refreshes the sources first when due."""
        self.refresh()
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        self._snap_errors = []
        idx = self.index
        now_ms = int(self.clock() * 1000)
        cards = self._card_map()
        nodes: list[dict[str, Any]] = []
        addresses = list(idx.nodes)
        addresses += [a for a in cards if a not in idx.nodes]
        for a in addresses:
            n = idx.nodes.get(a) or _Node(a)
            card = cards.get(a)
            caps = None if card is None else _field(card, "capabilities")
            lic = idx.licences.get(n.licence) if n.licence else None
            if n.revoked_block is not None and not n.admitted:
                status = "revoked"
            elif not n.admitted:
                status = "not admitted"
            elif lic is not None and lic["revoked"]:
                status = "licence revoked"
            elif idx.licensing_required and not n.licensed:
                status = "unlicensed"
            else:
                status = "active"
            nodes.append({
                "address": a, "status": status, "admitted": n.admitted, "revoked_block": n.revoked_block,
                "licensed": n.licensed, "licence": n.licence or None,
                "licence_holder": None if lic is None else lic["holder"], "licence_revoked": None if lic is None else lic["revoked"],
                "capabilities": None if caps is None else {
                    "accelerators": [_text(x) for x in _field(caps, "accelerators", ())],
                    "memory_bytes": int(_field(caps, "memory_bytes", 0) or 0),
                },
                "online": self._online(a, now_ms), "roots": n.roots, "audits_passed": n.passed, "audits_failed": n.failed,
                "tasks": n.tasks, "verified_work": n.verified_work, "claims": n.claims, "forfeited": n.forfeited,
                "staked": str(n.staked), "slashed": str(n.slashed), "slashed_epochs": list(n.slashed_epochs),
                "paid": str(n.paid), "rewards": str(n.rewards), "operator": n.operator,
            })
        order = {"active": 0, "unlicensed": 1, "licence revoked": 2, "revoked": 3, "not admitted": 4}
        nodes.sort(key=lambda r: (order[r["status"]], r["address"].lower()))
        epochs_sorted = sorted(idx.epochs)
        recent = epochs_sorted[-self.recent_epochs:]
        epochs = [self._epoch_row(idx.epochs[e]) for e in reversed(recent)]
        heat = epochs_sorted[-self.heatmap_epochs:]
        heatmap = {
            "epochs": heat,
            "rows": [
                {"node": r["address"], "status": r["status"], "cells": [self._cell(idx.epochs[e], r["address"]) for e in heat]}
                for r in nodes
            ],
        }
        jobs, services = self._jobs(), self._services()
        return {
            "revision": self._revision(idx, nodes),
            "now_ms": now_ms,
            "chain": None if self.reader is None else {
                "head_block": self.reader.head, "confirmed_block": self.reader.confirmed_block,
                "confirmations": self.reader.confirmations, "events": idx.events, "skipped_logs": self.reader.skipped,
                "licensing_required": idx.licensing_required, "quorum": list(idx.quorum),
                "oracles": [o for o, ok in idx.oracles.items() if ok], "token": self._token or {"symbol": "", "decimals": 18},
                **self._chain_info,
            },
            "summary": {
                "nodes": len(nodes), "active": sum(r["status"] == "active" for r in nodes),
                "online": sum(r["online"] is True for r in nodes), "revoked": sum(r["status"] == "revoked" for r in nodes),
                "slashed": sum(r["slashed"] != "0" for r in nodes), "epochs": len(idx.epochs),
            },
            "nodes": nodes,
            "licences": [
                {"licence": lid, "holder": lic["holder"], "revoked": lic["revoked"], "nodes": list(lic["nodes"])}
                for lid, lic in sorted(idx.licences.items())
            ],
            "epochs": epochs,
            "heatmap": heatmap,
            "jobs": jobs,
            "escrow": [self._escrow_row(j) for j in list(idx.jobs.values())[-self.recent_jobs:][::-1]],
            "services": services,
            "payments": {
                "totals": {k: str(v) if k not in ("jobs", "slashes") else v for k, v in idx.totals.items()},
                "recent": [self._payment_row(p) for p in reversed(idx.payments)],
            },
            "errors": [*self.errors, *self._snap_errors],
        }

    @staticmethod
    def _cell(e: _Epoch, node: str) -> dict[str, Any]:
        value = e.availability.get(node)
        audit = e.audits.get(node)
        voided = node in e.forfeited or (audit is not None and not audit[0])
        return {"availability": value, "voided": voided}

    @staticmethod
    def _epoch_row(e: _Epoch) -> dict[str, Any]:
        return {
            "epoch": e.epoch, "roots": len(e.roots), "aggregates": len(e.aggregates), "audits_passed": e.passed,
            "audits_failed": e.failed, "verified_work": e.verified_work, "claims": len(e.availability), "gas": e.gas,
            "slashed": str(sum(e.slashes.values())), "pool": str(e.pool), "rewards": str(sum(e.rewards.values())),
            "paid": str(sum(e.paid.values())),
        }

    @staticmethod
    def _escrow_row(j: Mapping[str, Any]) -> dict[str, Any]:
        return {k: (str(v) if k in ("amount", "paid", "returned") else v) for k, v in j.items()}

    @staticmethod
    def _payment_row(p: Mapping[str, Any]) -> dict[str, Any]:
        return {k: (str(v) if k in ("amount", "returned") else v) for k, v in p.items()}

    def epoch_detail(self, number: int) -> dict[str, Any] | None:
        """One epoch's figures per node (``None`` if the chain holds nothing for it)."""
        self.refresh()
        with self._lock:
            e = self.index.epochs.get(number)
            if e is None:
                return None
            nodes = sorted(set(e.roots) | set(e.audits) | set(e.availability) | set(e.slashes) | set(e.rewards) | set(e.paid),
                           key=str.lower)
            rows = []
            for a in nodes:
                audit = e.audits.get(a)
                rows.append({
                    "address": a, "root": None if a not in e.roots else _hex(e.roots[a]),
                    "audit": None if audit is None else ("passed" if audit[0] else "failed"),
                    "tasks": None if audit is None else audit[1], "verified_work": None if audit is None or not audit[0] else audit[2],
                    "availability": e.availability.get(a), "forfeited": a in e.forfeited,
                    "voided": a in e.forfeited or (audit is not None and not audit[0]), "registered": e.registered.get(a), "reward": str(e.rewards.get(a, 0)), "paid": str(e.paid.get(a, 0)),
                    "slashed": str(e.slashes.get(a, 0)),
                })
            return {**self._epoch_row(e), "nodes": rows, "pool_returned": str(e.pool_returned),
                    "aggregate_roots": {o: _hex(r) for o, r in e.aggregates.items()}, "errors": list(self.errors)}

    def node_detail(self, address: str) -> dict[str, Any] | None:
        """One node's row and its per-epoch history (``None`` for an address the page does not know)."""
        snap = self.snapshot()
        row = next((r for r in snap["nodes"] if r["address"].lower() == address.lower()), None)
        if row is None:
            return None
        with self._lock:
            a = row["address"]
            history = []
            for number in sorted(self.index.epochs, reverse=True):
                e = self.index.epochs[number]
                if a not in e.roots and a not in e.audits and a not in e.availability and a not in e.slashes:
                    continue
                audit = e.audits.get(a)
                history.append({
                    "epoch": number, "root": None if a not in e.roots else _hex(e.roots[a]),
                    "audit": None if audit is None else ("passed" if audit[0] else "failed"),
                    "verified_work": None if audit is None or not audit[0] else audit[2],
                    "availability": e.availability.get(a), "forfeited": a in e.forfeited,
                    "voided": a in e.forfeited or (audit is not None and not audit[0]), "reward": str(e.rewards.get(a, 0)), "paid": str(e.paid.get(a, 0)), "slashed": str(e.slashes.get(a, 0)),
                })
                if len(history) >= 500:
                    break
        return {"node": row, "history": history, "chain": snap["chain"], "revision": snap["revision"], "errors": snap["errors"]}

    def _journal_signature(self) -> Any:
        """Something that changes whenever the journal is written: the job counts and the
        modification times and sizes of its SQLite file and write-ahead log (``None``: unknown)."""
        path = str(getattr(self.journal, "path", ""))
        if path in ("", ":memory:"):
            return None
        stats: list[tuple[int, int] | None] = []
        for name in (path, path + "-wal"):
            try:
                st = Path(name).stat()
                stats.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stats.append(None)
        return (tuple(sorted(self.journal.counts().items())), tuple(stats))

    def _jobs(self) -> dict[str, Any] | None:
        if self.journal is None:
            return None
        # Listing jobs reads every job's record (its spec too) from SQLite: done again only when
        # the journal changed since the last listing.
        try:
            signature = self._journal_signature()
            if signature is None or signature != self._jobs_signature:
                self._jobs_cache = self._read_jobs()
                self._jobs_signature = signature
        except sqlite3.Error as exc:  # a locked or damaged journal: the last listing stays, with the reason
            self._snap_errors.append(f"journal: {exc}")
        return self._jobs_cache

    def _read_jobs(self) -> dict[str, Any]:
        j = self.journal
        # Only public fields: a job's spec (inputs, models) and its output never leave the journal.
        counts = {str(k): int(v) for k, v in j.counts().items()}
        results = {r.job_id: r for r in j.results()}
        recent = []
        for rec in j.jobs()[-self.recent_jobs:][::-1]:
            res = results.get(rec.job_id)
            recent.append({
                "job": "0x" + rec.job_id.hex(), "kind": _text(rec.kind), "status": _text(rec.status), "redundancy": int(rec.redundancy),
                "attempts": int(rec.attempts), "error": None if rec.error is None else _text(rec.error),
                "disputed": None if rec.disputed is None else _text(rec.disputed),
                "nodes": [] if res is None else list(res.nodes), "epoch": None if res is None else int(res.epoch),
            })
        faults = [{"node": n, "epoch": int(e), "job": None if jid is None else "0x" + jid.hex(), "reason": _text(r)}
                  for n, e, jid, r in j.faults()[-self.recent_jobs:][::-1]]
        return {"counts": counts, "total": sum(counts.values()), "disputed": len(j.disputed()), "recent": recent, "faults": faults}

    def _services(self) -> list[dict[str, Any]] | None:
        if self.reconciler is None:
            return None
        latency = {}
        if self.metrics is not None:
            try:
                latency = _service_latency(self.metrics)
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                self._snap_errors.append(f"metrics: {type(exc).__name__}")
        rows = []
        try:
            services = list(self.reconciler.list())
        except EdilError as exc:  # e.g. a journaled spec that no longer verifies: say so, show the rest of the page
            self._snap_errors.append(f"services: {exc}")
            return []
        for s in services:
            sid = _text(_field(s, "service_id"))
            replicas = _field(s, "replicas")
            if isinstance(replicas, int) and not isinstance(replicas, bool):
                count, where = replicas, []
            else:
                where = [_text(_field(r, "node", r)) for r in (replicas or ())]
                count = len(where)
            name = _field(_field(s, "spec"), "name")  # the spec's public name; nothing else of the spec is shown
            rows.append({"service": sid, "name": None if name is None else _text(name), "state": _text(_field(s, "state")),
                         "version": _text(_field(s, "version")),
                         "replicas": count, "nodes": where, "latency": latency.get(sid)})
        return rows

    def _revision(self, idx: ChainIndex, nodes: list[dict[str, Any]]) -> str:
        h = hashlib.sha256()
        h.update(f"{idx.last_block}:{idx.events}:{None if self.reader is None else self.reader.confirmed_block}".encode())
        h.update(repr([(r["address"], r["online"]) for r in nodes]).encode())
        if self.journal is not None:
            h.update(repr(sorted(self.journal.counts().items())).encode())
        h.update(repr([*self.errors, *self._snap_errors]).encode())
        return h.hexdigest()[:16]

    def revision(self) -> dict[str, Any]:
        """What the page polls: the revision of the data and the blocks read."""
        snap = self.snapshot()
        chain = snap["chain"] or {}
        return {"revision": snap["revision"], "head_block": chain.get("head_block"), "confirmed_block": chain.get("confirmed_block"),
                "online": snap["summary"]["online"], "errors": snap["errors"]}


_EMPTY_INDEX = ChainIndex()


# --- the web layer ---------------------------------------------------------------------------------
def _tokens(amount: Any, decimals: int = 18) -> str:
    """A token amount in base units (int or decimal string) as a decimal with 2 places."""
    value = int(amount)
    scale = 10 ** int(decimals)
    whole, frac = divmod(abs(value), scale)
    cents = frac * 100 // scale
    return f"{'-' if value < 0 else ''}{whole:,}.{cents:02d}"


def _short(value: Any, n: int = 10) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= n + 2 else text[:n] + "…"


def _heat_class(cell: Mapping[str, Any]) -> str:
    if cell["voided"]:
        return "hv"
    value = cell["availability"]
    if value is None:
        return "hn"
    return f"h{min(8, int(value) * 9 // 256)}"


def _heatmap_svg(heatmap: Mapping[str, Any]) -> Any:
    """The availability heat map as inline SVG: one row per node, one cell per epoch.

    Built here rather than in the template because it is the page's largest part (300 nodes x 32
    epochs are 9,600 cells); every text that enters it goes through ``markupsafe.escape``.
    """
    from markupsafe import Markup, escape

    epochs, rows = list(heatmap["epochs"]), list(heatmap["rows"])
    if not epochs or not rows:
        return Markup("")
    left, pitch, top = 130, 16, 20
    out = [
        f'<svg id="heatmap" class="heatmap" role="img" aria-label="availability per node and epoch" '
        f'width="{left + pitch * len(epochs)}" height="{top + 2 + 12 * len(rows)}">'
    ]
    for i, e in enumerate(epochs):
        if i == 0 or i == len(epochs) - 1 or int(e) % 5 == 0:
            out.append(f'<text x="{left + pitch * i}" y="12" class="hx">{escape(str(e))}</text>')
    for r, row in enumerate(rows):
        y = top + 12 * r
        node = escape(str(row["node"]))
        out.append(f'<text x="0" y="{y + 10}" class="hy">{escape(_short(row["node"], 12))}<title>{node}</title></text>')
        for i, cell in enumerate(row["cells"]):
            if cell["voided"]:
                what = "voided by a failed audit"
            elif cell["availability"] is None:
                what = "no claim"
            else:
                what = f'{int(cell["availability"])}/255'
            out.append(f'<rect x="{left + pitch * i}" y="{y}" width="{pitch - 2}" height="11" class="{_heat_class(cell)}">'
                       f"<title>{node} epoch {escape(str(epochs[i]))}: {what}</title></rect>")
    out.append("</svg>")
    return Markup("".join(out))


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["tokens"] = _tokens
    env.filters["short"] = _short
    env.filters["heat"] = _heat_class
    env.filters["heatmap_svg"] = _heatmap_svg
    return env


def explorer_router(explorer: Explorer, *, poll_ms: int = 2000) -> APIRouter:
    """The explorer's routes as a FastAPI ``APIRouter`` (GET only).

    ``/`` the page, ``/node/{address}`` and ``/epoch/{n}`` the detail views (each also as a bare
    fragment with ``?fragment=1``, which the page fetches when the data changes), ``/api/network``
    the page's data as JSON, ``/api/revision`` what the page polls, ``/static/{name}`` its script
    and stylesheet.

    Args:
        explorer: the data.
        poll_ms: how often the page asks whether the data changed.
    """
    env = _environment()
    router = APIRouter()
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
               "Cache-Control": "no-store"}

    def page(request: Request, depth: int, template: str, fragment: bool, data: dict[str, Any], chain: Any) -> HTMLResponse:
        # Where the explorer is mounted: the request's path less this view's ``depth`` last segments
        # (the same for include_router(prefix=...) and for app.mount, whose root path it includes).
        path = request.url.path
        base = path.rstrip("/") if depth == 0 else path.rsplit("/", depth)[0]
        context = {"base": base, "poll_ms": int(poll_ms), "main_template": template, "data": data, "chain": chain}
        # The fragment is the view's main part alone: the page swaps it in when the data changes.
        html = env.get_template(template if fragment else "explorer_base.html").render(**context)
        return HTMLResponse(html, headers=headers)

    @router.get("/", response_class=HTMLResponse, name="explorer_index")
    def index(request: Request, fragment: bool = False) -> HTMLResponse:
        snap = explorer.snapshot()
        return page(request, 0, "explorer.html", fragment, snap, snap["chain"])

    @router.get("/node/{address}", response_class=HTMLResponse, name="explorer_node")
    def node(request: Request, address: str, fragment: bool = False) -> HTMLResponse:
        detail = explorer.node_detail(address[:64])
        if detail is None:
            raise HTTPException(404, "no such node")
        return page(request, 2, "explorer_node.html", fragment, detail, detail["chain"])

    @router.get("/epoch/{number}", response_class=HTMLResponse, name="explorer_epoch")
    def epoch(request: Request, number: int, fragment: bool = False) -> HTMLResponse:
        snap = explorer.snapshot()
        detail = explorer.epoch_detail(number) if 0 <= number < 1 << 64 else None
        if detail is None:
            raise HTTPException(404, "no such epoch")
        detail["revision"] = snap["revision"]
        return page(request, 2, "explorer_epoch.html", fragment, detail, snap["chain"])

    @router.get("/api/network", name="explorer_network")
    def network() -> JSONResponse:
        return JSONResponse(explorer.snapshot(), headers=headers)

    @router.get("/api/revision", name="explorer_revision")
    def revision() -> JSONResponse:
        return JSONResponse(explorer.revision(), headers=headers)

    @router.get("/static/{name}", name="explorer_static")
    def static(name: str) -> Response:
        media = STATIC_FILES.get(name)
        if media is None:
            raise HTTPException(404, "no such file")
        return Response((STATIC / name).read_bytes(), media_type=media,
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=60"})

    return router


def explorer_app(explorer: Explorer, *, poll_ms: int = 2000) -> FastAPI:
    """A FastAPI app serving only the explorer at its root (mountable with ``app.mount``)."""
    app = FastAPI(title="EDIL explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(explorer_router(explorer, poll_ms=poll_ms))
    return app


def serve_explorer(explorer: Explorer, *, host: str = "127.0.0.1", port: int = 8090, print_fn: Callable[[str], Any] = print) -> None:
    """Serve the explorer with uvicorn until interrupted."""
    import uvicorn

    print_fn(f"explorer: http://{host}:{port}/")
    uvicorn.run(explorer_app(explorer), host=host, port=port, log_level="warning")


# --- edil explorer -----------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    """Add ``explorer`` to the ``edil`` subparsers."""
    from edil.runtime import HEARTBEAT_S

    p = sub.add_parser(
        "explorer", help="serve the network explorer (a read-only web page of nodes, epochs, jobs and payments)",
        description="Serve the read-only network explorer of a deployment: nodes, availability, epochs, work, jobs and payments.",
    )
    p.add_argument("--deployment", required=True, type=Path, help="deployment.json written by `edil chain deploy`")
    p.add_argument("--rpc", "--chain", dest="rpc", default=None, metavar="URL", help="JSON-RPC URL (default: the one in deployment.json)")
    p.add_argument("--journal", type=Path, default=None,
                   help="the coordinator's journal (jobs; its daemon's heartbeat log beside it gives online nodes and capabilities)")
    p.add_argument("--heartbeat-s", type=int, default=HEARTBEAT_S, help=f"the coordinator's heartbeat period (default {HEARTBEAT_S})")
    p.add_argument("--confirmations", type=int, default=None, help="blocks below the head left unread (default: the chain's reorg depth)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8090, help="port to listen on (default 8090)")


def main(args: Any) -> int:
    """Run ``edil explorer``; a mistake or a refusal is one line on stderr with status 2."""
    import sys

    from edil.app._coordinator import state_dir
    from edil.app._ops_cli import check_rpc_url, load_deployment, open_deployment
    from edil.runtime import Journal

    journal = None
    try:
        if not 0 <= args.port <= 65535:
            raise EdilError(f"--port {args.port} is not a TCP port")
        if args.heartbeat_s < 1:
            raise EdilError("--heartbeat-s must be at least 1")
        if args.confirmations is not None and args.confirmations < 0:
            raise EdilError("--confirmations must be >= 0")
        if args.rpc is not None:
            check_rpc_url(args.rpc)
        rec = load_deployment(args.deployment)
        if args.journal is not None and not args.journal.is_file():
            raise EdilError(f"no journal at {args.journal}")
        _, dep = open_deployment(rec, None, args.rpc)
        if dep.epoch_length * 1000 % (args.heartbeat_s * 1000):
            raise EdilError(f"the epoch length {dep.epoch_length} s is not a multiple of --heartbeat-s {args.heartbeat_s}")
        log = None
        if args.journal is not None:
            try:
                journal = Journal(str(args.journal))
            except sqlite3.Error as exc:  # not a database, or not one this process may open
                raise EdilError(f"cannot open the journal {args.journal}: {exc}") from None
            log = HeartbeatLog(state_dir(args.journal), dep, heartbeat_s=args.heartbeat_s)
        reconciler = None
        if journal is not None:
            from edil.runtime import ChainRegistry, Reconciler

            reconciler = Reconciler(journal, ChainRegistry(dep), chain_id=dep.chain.chain_id)
        explorer = Explorer(deployment=dep, journal=journal, heartbeat_log=log, reconciler=reconciler, confirmations=args.confirmations)
        explorer.refresh(force=True)
        for line in explorer.errors:
            print(f"edil explorer: {line}", file=sys.stderr)
        serve_explorer(explorer, host=args.host, port=args.port)
    except EdilError as exc:
        print(f"edil explorer: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if journal is not None:
            journal.close()
    return 0
