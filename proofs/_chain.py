"""The chain client: one code path for the in-process EVM and any JSON-RPC node.

``Chain.in_process()`` runs py-evm inside the Python process (web3's ``EthereumTesterProvider``, no
server); ``Chain.from_url()`` talks JSON-RPC to anvil, a testnet or mainnet. Both sign every
transaction locally with eth-account keys and go through the same :meth:`Chain.transact`, so the
contract logic is exercised identically. Only moving the clock differs (eth-tester's time travel vs
anvil's ``evm_setNextBlockTimestamp``), and a public chain refuses it.

Reverts become exceptions of the EDIL tree carrying the decoded reason::

    ChainError                         any revert; .reason, .error_name, .error_args
    ├── ChainAuthorizationError        also AuthorizationError (NotOwner, NodeNotAdmitted, ...)
    ├── ChainVerificationError         also VerificationError (QuorumNotMet, ...)
    └── ChainReplayError               also ReplayError (EpochAlreadyClaimed, RootAlreadyPosted, ...)
"""

from __future__ import annotations

import ast

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from fractions import Fraction
from typing import Any

from eth_abi import decode as abi_decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from eth_tester.exceptions import TransactionFailed
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception

from edil import AuthorizationError, ChainError, ReplayError, VerificationError

from ._artifacts import CONTRACT_NAMES, load_artifact
from ._hashing import Eip712Domain, check_address, check_bytes32, check_uint, keccak256, private_key_bytes
from ._merkle import InclusionProof
from ._transcript import EpochBatch, Transcript

_FORKS = ("shanghai", "cancun", "prague")


class ChainAuthorizationError(ChainError, AuthorizationError):
    """The chain refused a caller or subject that dAuth does not admit."""


class ChainVerificationError(ChainError, VerificationError):
    """The chain rejected signatures or a proof (e.g. an oracle quorum was not met)."""


class ChainReplayError(ChainError, ReplayError):
    """The chain refused something already recorded (a claimed epoch, a posted root)."""


_ERROR_CLASSES: dict[str, type[ChainError]] = {
    "NotOwner": ChainAuthorizationError,
    "NodeNotAdmitted": ChainAuthorizationError,
    "OracleNotAdmitted": ChainAuthorizationError,
    "QuorumNotMet": ChainVerificationError,
    "QuorumNotConfigured": ChainVerificationError,
    "EpochAlreadyClaimed": ChainReplayError,
    "RootAlreadyPosted": ChainReplayError,
    "AuditAlreadyRecorded": ChainReplayError,
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
                text = first.removeprefix("execution reverted: ")
                if text.startswith(("b'", 'b"')) and len(text) <= 65_536:  # a revert payload, not arbitrary text
                    try:
                        raw = ast.literal_eval(text)
                    except (ValueError, SyntaxError, RecursionError, MemoryError):
                        raw = None
                    if isinstance(raw, bytes):
                        return "0x" + raw.hex()
        current = current.__cause__ or current.__context__
    return None


def translate_revert(exc: BaseException) -> ChainError:
    """Turn a web3 or eth-tester revert into the matching :class:`ChainError` subclass with the decoded reason."""
    data = _revert_data(exc)
    name: str | None = None
    args: dict[str, Any] = {}
    reason = getattr(exc, "message", None) or str(exc)
    if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
        selector, payload = data[2:10], bytes.fromhex(data[10:])
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
    """

    def __init__(self, w3: Web3, accounts: Sequence[LocalAccount], clock: _Clock, *, receipt_timeout: float = 120.0):
        if not accounts:
            raise ValueError("a Chain needs at least one signing account")
        self.w3 = w3
        self.accounts: tuple[LocalAccount, ...] = tuple(accounts)
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
            raise ValueError(f"fork must be one of {_FORKS}, got {fork!r}")
        backend = PyEVMBackend(vm_configuration=((0, vms[fork]),))
        tester = EthereumTester(backend)
        w3 = Web3(EthereumTesterProvider(tester))
        accounts = [Account.from_key(k.to_bytes()) for k in backend.account_keys]
        return cls(w3, accounts, _TesterClock(tester))

    @classmethod
    def from_url(cls, url: str, private_keys: Sequence[Any], *, request_timeout: float = 30.0) -> Chain:
        """A JSON-RPC chain (anvil, a testnet, mainnet) with the given funded signing keys.

        Time can be moved only on development nodes (anvil, hardhat).
        """
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError("url must be an http(s) JSON-RPC endpoint")
        w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": request_timeout}))
        accounts = [Account.from_key(private_key_bytes(k)) for k in private_keys]
        try:
            w3.eth.chain_id  # noqa: B018 - fail here, with a clear error, if nothing answers
        except (OSError, Web3Exception, ValueError) as exc:
            raise ChainError(f"no EVM JSON-RPC node answers at {url}: {type(exc).__name__}", reason="unreachable") from None
        return cls(w3, accounts, _DevRpcClock())

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
        try:
            nonce = self.w3.eth.get_transaction_count(account.address, "pending")
            tx = call.build_transaction(
                {"from": account.address, "nonce": nonce, "chainId": self.chain_id, "value": value}
            )
        except _REVERTS as exc:
            raise translate_revert(exc) from exc
        return self._send(account, tx, str(getattr(call, "fn_name", "constructor")))

    def _send(self, account: LocalAccount, tx: Mapping[str, Any], label: str) -> TxResult:
        signed = account.sign_transaction(dict(tx))
        try:
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self._receipt_timeout)
        except _REVERTS as exc:
            raise translate_revert(exc) from exc
        except TimeExhausted as exc:
            raise ChainError("transaction was not mined in time", reason="timeout") from exc
        except Web3Exception as exc:
            raise ChainError(f"sending the transaction failed: {exc}", reason=str(exc)) from exc
        if receipt["status"] != 1:
            raise ChainError("transaction reverted on chain", reason="status 0")
        self.gas_log.append((label, account.address, int(receipt["gasUsed"])))
        return TxResult(bytes(tx_hash), receipt, int(receipt["gasUsed"]), int(receipt["blockNumber"]))

    def call(self, call: Any) -> Any:
        """Run a view function; reverts become :class:`ChainError`."""
        try:
            return call.call()
        except _REVERTS as exc:
            raise translate_revert(exc) from exc

    def fund(self, address: str, wei: int, *, sender: Signer | None = None) -> TxResult:
        """Send ``wei`` to ``address`` (e.g. gas money for a fresh node key)."""
        account = self.account(sender) if sender is not None else self.default_account
        tx = {
            "to": check_address(address),
            "value": check_uint(wei, "wei", 256),
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
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def mine(self) -> None:
        """Mine one block (development chains only)."""
        self._clock.mine(self.w3)

    def advance_time(self, seconds: int) -> int:
        """Mine a block ``seconds`` after the latest one (development chains only); returns its timestamp."""
        check_uint(seconds, "seconds", 64)
        target = self.timestamp() + max(1, seconds)
        self._clock.mine_at(self.w3, target)
        return target

    # -- contracts -----------------------------------------------------------------------------

    def deploy(
        self,
        *,
        epoch_length: int = 3600,
        genesis_time: int | None = None,
        owner: Signer | None = None,
    ) -> Deployment:
        """Deploy NodeRegistry, AvailabilityLedger and PoAIVerifier.

        Args:
            epoch_length: seconds per epoch.
            genesis_time: Unix time at which epoch 0 starts (default: the latest block's time).
            owner: the registry owner and deployer (default ``accounts[0]``).

        Returns:
            A :class:`Deployment` bound to the three contracts.
        """
        owner_acct = self.account(owner) if owner is not None else self.default_account
        check_uint(epoch_length, "epoch_length", 64)
        if epoch_length == 0:
            raise ValueError("epoch_length must be > 0")
        genesis = self.timestamp() if genesis_time is None else check_uint(genesis_time, "genesis_time", 64)
        registry = self._deploy_one("NodeRegistry", owner_acct, owner_acct.address, genesis, epoch_length)
        ledger = self._deploy_one("AvailabilityLedger", owner_acct, registry)
        verifier = self._deploy_one("PoAIVerifier", owner_acct, registry)
        return Deployment(self, owner_acct, registry=registry, ledger=ledger, verifier=verifier)

    def _deploy_one(self, name: str, sender: LocalAccount, *args: Any) -> str:
        art = load_artifact(name)
        factory = self.w3.eth.contract(abi=list(art.abi), bytecode=art.bytecode)
        result = self.transact(factory.constructor(*args), sender)
        address = result.receipt["contractAddress"]
        if not address:
            raise ChainError(f"deploying {name} returned no contract address", reason=None)
        return str(address)

    def attach(self, *, registry: str, ledger: str, verifier: str, owner: Signer | None = None) -> Deployment:
        """Bind already deployed contracts."""
        owner_acct = self.account(owner) if owner is not None else self.default_account
        return Deployment(self, owner_acct, registry=registry, ledger=ledger, verifier=verifier)


class EpochStatus(IntEnum):
    """Status of one node's epoch on the PoAI verifier."""

    NONE = 0
    POSTED = 1
    VERIFIED = 2
    VOIDED = 3


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """What the PoAI verifier holds for (node, epoch)."""

    root: bytes
    task_count: int
    work_units: int
    posted_block: int
    status: EpochStatus


def _addr(value: Any) -> str:
    if isinstance(value, LocalAccount):
        return value.address
    return check_address(value)


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
    """

    def __init__(self, chain: Chain, owner: LocalAccount, *, registry: str, ledger: str, verifier: str) -> None:
        w3 = chain.w3
        self.chain = chain
        self.owner = owner
        self.registry = w3.eth.contract(address=check_address(registry), abi=list(load_artifact("NodeRegistry").abi))
        self.ledger = w3.eth.contract(address=check_address(ledger), abi=list(load_artifact("AvailabilityLedger").abi))
        self.verifier = w3.eth.contract(address=check_address(verifier), abi=list(load_artifact("PoAIVerifier").abi))
        self.genesis_time = int(chain.call(self.registry.functions.genesisTime()))
        self.epoch_length = int(chain.call(self.registry.functions.epochLength()))
        self.ledger_domain = Eip712Domain("EDIL AvailabilityLedger", "1", chain.chain_id, self.ledger.address)
        self.poai_domain = Eip712Domain("EDIL PoAI", "1", chain.chain_id, self.verifier.address)

    @property
    def addresses(self) -> dict[str, str]:
        return {"registry": self.registry.address, "ledger": self.ledger.address, "verifier": self.verifier.address}

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
            ValueError: ``epoch`` is already in the past.
        """
        check_uint(epoch, "epoch", 64)
        now = self.current_epoch()
        if epoch < now:
            raise ValueError(f"epoch {epoch} is in the past (current {now})")
        if epoch > now:
            self.chain.advance_time(self.genesis_time + epoch * self.epoch_length - self.chain.timestamp())
        return self.current_epoch()

    # -- PoAI ----------------------------------------------------------------------------------

    def post_epoch_root(self, node: Signer, epoch: int, root: bytes, task_count: int, work_units: int) -> TxResult:
        """Post ``node``'s batch root for an ended epoch (sent from the node's account).

        Raises:
            ChainAuthorizationError: the node is not admitted (or was revoked).
            ChainReplayError: a root for this epoch is already posted.
            ChainError: the epoch has not ended, or a zero root / empty batch.
        """
        fn = self.verifier.functions.postEpochRoot(
            check_uint(epoch, "epoch", 64),
            check_bytes32(root, "root"),
            check_uint(task_count, "task_count", 64),
            check_uint(work_units, "work_units", 128),
        )
        return self.chain.transact(fn, node)

    def post_batch(self, node: Signer, batch: EpochBatch) -> TxResult:
        """Post an :class:`EpochBatch` (its root, task count and work units)."""
        return self.post_epoch_root(node, batch.epoch, batch.root, batch.task_count, batch.work_units)

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

    def verified_work_units(self, node: Any, epoch: int) -> int:
        """Work units of (node, epoch) that an oracle quorum verified; 0 if unaudited or voided."""
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
        if int(self.chain.w3.eth.block_number) < number:
            raise ChainError("the beacon block is not mined yet", reason="BeaconNotReady")
        return bytes(self.chain.w3.eth.get_block(number)["hash"])

    def record_audit(
        self,
        node: Any,
        epoch: int,
        passed: bool,
        report_hash: bytes,
        signatures: Sequence[bytes],
        *,
        sender: Signer | None = None,
    ) -> TxResult:
        """Record an audit attested by oracle signatures (see ``sign_audit``); anyone may submit it.

        Raises:
            ChainVerificationError: fewer than quorum distinct valid oracle signatures.
            ChainReplayError: the epoch was already voided (or verified again with a pass).
        """
        if not isinstance(passed, bool):
            raise TypeError("passed must be a bool")
        fn = self.verifier.functions.recordAudit(
            _addr(node), check_uint(epoch, "epoch", 64), passed, check_bytes32(report_hash, "report_hash"),
            [bytes(s) for s in signatures],
        )
        return self.chain.transact(fn, sender)

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

    def is_claimed(self, node: Any, epoch: int) -> bool:
        return bool(self.chain.call(self.ledger.functions.isClaimed(_addr(node), check_uint(epoch, "epoch", 64))))

    def reward_units(self, node: Any) -> Fraction:
        """Accrued reward units: the sum of claimed availability / 255."""
        numerator, denominator = self.chain.call(self.ledger.functions.rewardUnits(_addr(node)))
        return Fraction(int(numerator), int(denominator))
