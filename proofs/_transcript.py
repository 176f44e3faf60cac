"""PoAI transcripts (EIP-712), their signatures, epoch batches and the oracles' attestations.

A node declares nothing but its epoch root; the task count and work units that count on chain are
recounted from the signed batch by the auditing oracles (:func:`batch_figures`) and signed in the
audit attestation (:class:`AuditAttestation`, :func:`attest_audit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edil import ParameterError, ShapeError, UnsupportedOperationError, VerificationError

from ._hashing import (
    EIP712_DOMAIN_FIELDS,
    UINT128_MAX,
    Eip712Domain,
    address_word,
    check_address,
    check_bytes32,
    check_uint,
    consteq,
    hash_uint_array,
    keccak256,
    recover_signer,
    sign_digest,
    word,
)
from ._merkle import InclusionProof, MerkleTree, compute_root

TRANSCRIPT_TYPE = (
    "Transcript(bytes32 jobId,uint64 epoch,address node,bytes32 schemeParamsHash,bytes32 modelCommitment,"
    "bytes32 inputCommitment,bytes32 outputCommitment,uint256 workUnits,uint64 startedAt,uint64 endedAt)"
)
AVAILABILITY_TYPE = "AvailabilityClaim(address node,uint64[] epochs,uint8[] availabilities)"
AUDIT_TYPE = (
    "AuditAttestation(address node,uint64 epoch,bytes32 root,uint64 taskCount,uint128 workUnits,bool passed,"
    "bytes32 reportHash)"
)

TRANSCRIPT_TYPEHASH = keccak256(TRANSCRIPT_TYPE.encode())
AVAILABILITY_TYPEHASH = keccak256(AVAILABILITY_TYPE.encode())
AUDIT_TYPEHASH = keccak256(AUDIT_TYPE.encode())

_TRANSCRIPT_FIELDS = [
    {"name": "jobId", "type": "bytes32"},
    {"name": "epoch", "type": "uint64"},
    {"name": "node", "type": "address"},
    {"name": "schemeParamsHash", "type": "bytes32"},
    {"name": "modelCommitment", "type": "bytes32"},
    {"name": "inputCommitment", "type": "bytes32"},
    {"name": "outputCommitment", "type": "bytes32"},
    {"name": "workUnits", "type": "uint256"},
    {"name": "startedAt", "type": "uint64"},
    {"name": "endedAt", "type": "uint64"},
]

_AUDIT_FIELDS = [
    {"name": "node", "type": "address"},
    {"name": "epoch", "type": "uint64"},
    {"name": "root", "type": "bytes32"},
    {"name": "taskCount", "type": "uint64"},
    {"name": "workUnits", "type": "uint128"},
    {"name": "passed", "type": "bool"},
    {"name": "reportHash", "type": "bytes32"},
]


def _check_domain(domain: Any) -> Eip712Domain:
    if not isinstance(domain, Eip712Domain):
        raise UnsupportedOperationError(f"domain must be an Eip712Domain, got {type(domain).__name__}")
    return domain


@dataclass(frozen=True, slots=True)
class Transcript:
    """The PoAI record of one task, signed by the node that ran it.

    Times are injected by the caller (never read here) as integer **milliseconds** since the Unix
    epoch. ``job_id`` may be given as a ``str``: it is then replaced by ``keccak256(utf-8 bytes)``.

    Args:
        job_id: 32-byte job identifier (or a string, hashed).
        epoch: the epoch the task ran in (uint64).
        node: the node's chain address (its signing key's address).
        scheme_params_hash: 32-byte hash of the scheme parameters (e.g. :func:`commit_json`).
        model_commitment: 32-byte commitment to the encoded model.
        input_commitment: 32-byte commitment to the encoded input.
        output_commitment: 32-byte commitment to the encoded output.
        work_units: multiply-accumulates performed (uint256; an epoch's total must fit uint128).
        started_at: start time, ms since the Unix epoch (uint64).
        ended_at: end time, ms since the Unix epoch, ``>= started_at``.

    Raises:
        UnsupportedOperationError, ParameterError: a field of the wrong type or range.

    Example:
        >>> t = Transcript("job-1", 3, "0x" + "ab" * 20, b"\\x01" * 32, b"\\x02" * 32,
        ...                b"\\x03" * 32, b"\\x04" * 32, 1000, 1_700_000_000_000, 1_700_000_000_250)
        >>> len(t.job_id)
        32
    """

    job_id: bytes
    epoch: int
    node: str
    scheme_params_hash: bytes
    model_commitment: bytes
    input_commitment: bytes
    output_commitment: bytes
    work_units: int
    started_at: int
    ended_at: int

    def __post_init__(self) -> None:
        job_id = self.job_id
        if isinstance(job_id, str):
            job_id = keccak256(job_id.encode("utf-8"))
        object.__setattr__(self, "job_id", check_bytes32(job_id, "job_id"))
        check_uint(self.epoch, "epoch", 64)
        object.__setattr__(self, "node", check_address(self.node, "node"))
        for name in ("scheme_params_hash", "model_commitment", "input_commitment", "output_commitment"):
            object.__setattr__(self, name, check_bytes32(getattr(self, name), name))
        check_uint(self.work_units, "work_units", 256)
        check_uint(self.started_at, "started_at", 64)
        check_uint(self.ended_at, "ended_at", 64)
        if self.ended_at < self.started_at:
            raise ParameterError("ended_at is before started_at")

    def struct_hash(self) -> bytes:
        """EIP-712 ``hashStruct`` of the transcript."""
        return keccak256(
            TRANSCRIPT_TYPEHASH
            + self.job_id
            + word(self.epoch)
            + address_word(self.node)
            + self.scheme_params_hash
            + self.model_commitment
            + self.input_commitment
            + self.output_commitment
            + word(self.work_units)
            + word(self.started_at)
            + word(self.ended_at)
        )

    def digest(self, domain: Eip712Domain) -> bytes:
        """The EIP-712 digest under ``domain``: what the node signs and the epoch tree's leaf."""
        return _check_domain(domain).hash_struct(self.struct_hash())

    def typed_data(self, domain: Eip712Domain) -> dict[str, Any]:
        """The transcript as an EIP-712 ``full_message`` for ``eth_account`` and wallets."""
        return {
            "types": {"EIP712Domain": EIP712_DOMAIN_FIELDS, "Transcript": _TRANSCRIPT_FIELDS},
            "primaryType": "Transcript",
            "domain": _check_domain(domain).as_dict(),
            "message": {
                "jobId": self.job_id,
                "epoch": self.epoch,
                "node": self.node,
                "schemeParamsHash": self.scheme_params_hash,
                "modelCommitment": self.model_commitment,
                "inputCommitment": self.input_commitment,
                "outputCommitment": self.output_commitment,
                "workUnits": self.work_units,
                "startedAt": self.started_at,
                "endedAt": self.ended_at,
            },
        }

    def as_abi_tuple(self) -> tuple[Any, ...]:
        """The transcript as the Solidity ``PoAIVerifier.Transcript`` struct tuple."""
        return (
            self.job_id,
            self.epoch,
            self.node,
            self.scheme_params_hash,
            self.model_commitment,
            self.input_commitment,
            self.output_commitment,
            self.work_units,
            self.started_at,
            self.ended_at,
        )


@dataclass(frozen=True, slots=True)
class SignedTranscript:
    """A transcript and its node's 65-byte ``r || s || v`` EIP-712 signature."""

    transcript: Transcript
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.transcript, Transcript):
            raise UnsupportedOperationError("transcript must be a Transcript")
        if not isinstance(self.signature, bytes | bytearray) or len(self.signature) != 65:
            raise ParameterError("signature must be 65 bytes")
        object.__setattr__(self, "signature", bytes(self.signature))


def sign_transcript(transcript: Transcript, private_key: Any, domain: Eip712Domain) -> SignedTranscript:
    """Sign a transcript with the node's chain key.

    Args:
        transcript: the record; its ``node`` must be the key's address.
        private_key: 32 bytes, 0x-hex, or an eth-account ``LocalAccount``.
        domain: the PoAI verifier's EIP-712 domain.

    Returns:
        The :class:`SignedTranscript`.

    Raises:
        ParameterError: the key's address is not ``transcript.node``.
    """
    if not isinstance(transcript, Transcript):
        raise UnsupportedOperationError("transcript must be a Transcript")
    digest = transcript.digest(domain)
    signature = sign_digest(digest, private_key)
    if recover_signer(digest, signature) != transcript.node:
        raise ParameterError("the signing key does not belong to transcript.node")
    return SignedTranscript(transcript, signature)


def verify_transcript(
    signed: SignedTranscript, domain: Eip712Domain, expected_signer: str | None = None
) -> str:
    """Check a signed transcript; fail closed.

    The signer must be the transcript's ``node`` (and ``expected_signer`` when given).

    Returns:
        The signer's checksum address.

    Raises:
        VerificationError: bad, malleated or foreign signature, or a tampered field.
    """
    if not isinstance(signed, SignedTranscript):
        raise UnsupportedOperationError("signed must be a SignedTranscript")
    signer = recover_signer(signed.transcript.digest(domain), signed.signature)
    if not consteq(bytes.fromhex(signer[2:]), bytes.fromhex(signed.transcript.node[2:])):
        raise VerificationError("transcript signature is not by the transcript's node")
    if expected_signer is not None:
        expected = check_address(expected_signer, "expected_signer")
        if not consteq(bytes.fromhex(signer[2:]), bytes.fromhex(expected[2:])):
            raise VerificationError("transcript signed by an unexpected node")
    return signer


class EpochBatch:
    """One node's transcripts for one epoch and the Merkle tree over their EIP-712 digests.

    The node posts only the ``root`` on chain (constant gas whatever the number of tasks);
    ``task_count`` and ``work_units`` count on chain only once auditing oracles have recounted
    them from the signed transcripts (:func:`batch_figures`) and attested them
    (:class:`AuditAttestation`). ``proof(i)`` shows transcript ``i`` is in the batch.

    Args:
        transcripts: the epoch's transcripts (signed or not), in order; all of ``node`` and ``epoch``.
        domain: the PoAI verifier's EIP-712 domain.
        verify_signatures: check every signed transcript's signature first.

    Raises:
        ParameterError: empty, mixed nodes or epochs, or total work above uint128.
        VerificationError: a bad signature (with ``verify_signatures``).
    """

    __slots__ = ("_digests", "_index", "_tree", "domain", "epoch", "node", "transcripts", "work_units")

    def __init__(
        self,
        transcripts: Sequence[Transcript | SignedTranscript],
        domain: Eip712Domain,
        *,
        verify_signatures: bool = True,
    ) -> None:
        _check_domain(domain)
        if not transcripts:
            raise ParameterError("an epoch batch needs at least one transcript")
        plain: list[Transcript] = []
        for item in transcripts:
            if isinstance(item, SignedTranscript):
                if verify_signatures:
                    verify_transcript(item, domain)
                plain.append(item.transcript)
            elif isinstance(item, Transcript):
                plain.append(item)
            else:
                raise UnsupportedOperationError(f"expected Transcript or SignedTranscript, got {type(item).__name__}")
        node, epoch = plain[0].node, plain[0].epoch
        if any(t.node != node or t.epoch != epoch for t in plain):
            raise ParameterError("all transcripts of a batch must share node and epoch")
        total = sum(t.work_units for t in plain)
        if total > UINT128_MAX:
            raise ParameterError("total work units of the epoch exceed uint128")
        self.node = node
        self.epoch = epoch
        self.domain = domain
        self.transcripts = tuple(plain)
        self.work_units = total
        self._digests = [t.digest(domain) for t in plain]
        self._tree = MerkleTree(self._digests)

    @property
    def root(self) -> bytes:
        return self._tree.root

    @property
    def task_count(self) -> int:
        return len(self._digests)

    @property
    def depth(self) -> int:
        return self._tree.depth

    def digest(self, index: int) -> bytes:
        """Leaf ``index``: the EIP-712 digest of transcript ``index``."""
        return self._digests[index]

    def proof(self, index: int) -> InclusionProof:
        """Inclusion proof of transcript ``index``."""
        return self._tree.proof(index)


def verify_transcript_inclusion(
    transcript: Transcript, proof: InclusionProof, root: bytes, domain: Eip712Domain
) -> None:
    """Check that ``transcript`` is in the batch with ``root``; fail closed.

    Raises:
        VerificationError: the proof does not lead to ``root``.
    """
    if not isinstance(transcript, Transcript):
        raise UnsupportedOperationError("transcript must be a Transcript")
    if not consteq(compute_root(transcript.digest(domain), proof), check_bytes32(root, "root")):
        raise VerificationError("transcript is not included under the given root")


def _check_availability(epochs: Sequence[int], availabilities: Sequence[int]) -> None:
    if len(epochs) != len(availabilities) or not epochs:
        raise ShapeError("epochs and availabilities must be non-empty and of equal length")
    for e in epochs:
        check_uint(e, "epoch", 64)
    for a in availabilities:
        check_uint(a, "availability", 8)


def availability_digest(
    domain: Eip712Domain, node: str, epochs: Sequence[int], availabilities: Sequence[int]
) -> bytes:
    """EIP-712 digest of ``AvailabilityClaim(address node,uint64[] epochs,uint8[] availabilities)``.

    Args:
        domain: the availability ledger's domain.
        node: the node's address.
        epochs: ended epochs, strictly increasing (the ledger checks the order).
        availabilities: 0..255 per epoch (255 = available the whole epoch).
    """
    _check_availability(epochs, availabilities)
    struct = keccak256(
        AVAILABILITY_TYPEHASH
        + address_word(check_address(node, "node"))
        + hash_uint_array(epochs)
        + hash_uint_array(availabilities)
    )
    return _check_domain(domain).hash_struct(struct)


def sign_availability(
    private_key: Any, domain: Eip712Domain, node: str, epochs: Sequence[int], availabilities: Sequence[int]
) -> bytes:
    """An oracle's 65-byte signature over a node's availability for ``epochs``.

    Example:
        >>> # sig = sign_availability(oracle_key, deployment.ledger_domain, node, [1, 2], [255, 128])
    """
    return sign_digest(availability_digest(domain, node, epochs, availabilities), private_key)


def audit_digest(
    domain: Eip712Domain,
    node: str,
    epoch: int,
    root: bytes,
    task_count: int,
    work_units: int,
    passed: bool,
    report_hash: bytes,
) -> bytes:
    """EIP-712 digest of ``AuditAttestation(address node,uint64 epoch,bytes32 root,uint64 taskCount,
    uint128 workUnits,bool passed,bytes32 reportHash)``.

    Args:
        domain: the PoAI verifier's domain.
        node: the audited node.
        epoch: the audited epoch.
        root: the epoch root the node posted (binds the attestation to that batch).
        task_count: transcripts in the batch, as the oracles recounted them (uint64; 0 on a failure).
        work_units: the batch's total work units, as recounted (uint128; 0 on a failure).
        passed: the audit outcome.
        report_hash: 32-byte hash of the audit report (e.g. :func:`commit_json` of the findings).

    Raises:
        UnsupportedOperationError: ``passed`` is not a bool.
        ParameterError: a field out of range.
    """
    if not isinstance(passed, bool):
        raise UnsupportedOperationError("passed must be a bool")
    check_uint(epoch, "epoch", 64)
    struct = keccak256(
        AUDIT_TYPEHASH
        + address_word(check_address(node, "node"))
        + word(epoch)
        + check_bytes32(root, "root")
        + word(check_uint(task_count, "task_count", 64))
        + word(check_uint(work_units, "work_units", 128))
        + word(int(passed))
        + check_bytes32(report_hash, "report_hash")
    )
    return _check_domain(domain).hash_struct(struct)


def sign_audit(
    private_key: Any,
    domain: Eip712Domain,
    node: str,
    epoch: int,
    root: bytes,
    task_count: int,
    work_units: int,
    passed: bool,
    report_hash: bytes,
) -> bytes:
    """An oracle's 65-byte signature over an audit attestation, with no check of the figures.

    An honest oracle signs through :func:`attest_audit`, which first recounts the batch.
    """
    return sign_digest(
        audit_digest(domain, node, epoch, root, task_count, work_units, passed, report_hash), private_key
    )


@dataclass(frozen=True, slots=True)
class AuditAttestation:
    """What a quorum of oracles signs about one node's epoch (the ``AuditAttestation`` EIP-712 struct).

    A passing attestation carries the batch's task count and work units as the oracles recounted
    them; these, and nothing the node declared, become the epoch's verified work on chain. A
    failing attestation attests no work: both figures are 0 (the contract refuses anything else).

    Args:
        node: the audited node's address.
        epoch: the audited epoch.
        root: the root the node posted on chain for that epoch.
        task_count: transcripts in the batch (uint64, >= 1 on a pass, 0 on a failure).
        work_units: their total work units (uint128, 0 on a failure).
        passed: the verdict.
        report_hash: 32-byte hash of the audit report.

    Raises:
        UnsupportedOperationError, ParameterError: a field of the wrong type or range, figures on a failure, or an
            empty batch on a pass.
    """

    node: str
    epoch: int
    root: bytes
    task_count: int
    work_units: int
    passed: bool
    report_hash: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "node", check_address(self.node, "node"))
        check_uint(self.epoch, "epoch", 64)
        object.__setattr__(self, "root", check_bytes32(self.root, "root"))
        check_uint(self.task_count, "task_count", 64)
        check_uint(self.work_units, "work_units", 128)
        if not isinstance(self.passed, bool):
            raise UnsupportedOperationError("passed must be a bool")
        object.__setattr__(self, "report_hash", check_bytes32(self.report_hash, "report_hash"))
        if self.passed and self.task_count == 0:
            raise ParameterError("a passing audit attests a non-empty batch")
        if not self.passed and (self.task_count or self.work_units):
            raise ParameterError("a failing audit attests no work: task_count and work_units must be 0")

    def digest(self, domain: Eip712Domain) -> bytes:
        """The EIP-712 digest the oracles sign (see :func:`audit_digest`)."""
        return audit_digest(
            domain, self.node, self.epoch, self.root, self.task_count, self.work_units, self.passed, self.report_hash
        )

    def typed_data(self, domain: Eip712Domain) -> dict[str, Any]:
        """The attestation as an EIP-712 ``full_message`` for ``eth_account`` and wallets."""
        return {
            "types": {"EIP712Domain": EIP712_DOMAIN_FIELDS, "AuditAttestation": _AUDIT_FIELDS},
            "primaryType": "AuditAttestation",
            "domain": _check_domain(domain).as_dict(),
            "message": {
                "node": self.node,
                "epoch": self.epoch,
                "root": self.root,
                "taskCount": self.task_count,
                "workUnits": self.work_units,
                "passed": self.passed,
                "reportHash": self.report_hash,
            },
        }


def batch_figures(
    transcripts: Sequence[SignedTranscript], domain: Eip712Domain, *, node: str, epoch: int, root: bytes
) -> tuple[int, int]:
    """An oracle's recount of a node's batch: ``(task_count, work_units)``, or a refusal.

    Every transcript must be signed by ``node`` (secp256k1, checked here), be of ``node`` and
    ``epoch``, and the Merkle tree over their EIP-712 digests, in the given order, must have the
    ``root`` the node posted. Only figures recounted this way are attested.

    Args:
        transcripts: the node's whole batch of signed transcripts, in batch order.
        domain: the PoAI verifier's domain.
        node: the audited node.
        epoch: the audited epoch.
        root: the root posted on chain for (node, epoch).

    Returns:
        The number of transcripts and the sum of their work units.

    Raises:
        UnsupportedOperationError: an item is not a :class:`SignedTranscript`.
        VerificationError: an empty batch, a foreign or badly signed transcript, a total above
            uint128, or a tree whose root is not the posted one.
    """
    node = check_address(node, "node")
    check_uint(epoch, "epoch", 64)
    root = check_bytes32(root, "root")
    if not transcripts:
        raise VerificationError("the batch holds no transcript")
    digests: list[bytes] = []
    total = 0
    for i, item in enumerate(transcripts):
        if not isinstance(item, SignedTranscript):
            raise UnsupportedOperationError(f"transcript {i} is a {type(item).__name__}, not a SignedTranscript")
        t = item.transcript
        if t.node != node or t.epoch != epoch:
            raise VerificationError(f"transcript {i} is not of node {node} in epoch {epoch}")
        try:
            verify_transcript(item, domain, node)
        except VerificationError as exc:
            raise VerificationError(f"transcript {i}: {exc}") from None
        digests.append(t.digest(domain))
        total += t.work_units
    if total > UINT128_MAX:
        raise VerificationError("the batch's total work units exceed uint128")
    if not consteq(MerkleTree(digests).root, root):
        raise VerificationError("the batch's Merkle root is not the root posted on chain")
    return len(digests), total


def attest_audit(
    private_key: Any,
    domain: Eip712Domain,
    attestation: AuditAttestation,
    transcripts: Sequence[SignedTranscript],
) -> bytes:
    """An honest oracle's signature on ``attestation``, given only after recounting the batch.

    A passing attestation is signed only when its figures equal :func:`batch_figures` of
    ``transcripts`` under the attested (posted) root; a failing one attests no work, which
    :class:`AuditAttestation` already enforces, and is signed as is.

    Args:
        private_key: the oracle's chain key.
        domain: the PoAI verifier's domain.
        attestation: the proposed attestation (root: the root posted on chain).
        transcripts: the node's whole batch of signed transcripts.

    Returns:
        The oracle's 65-byte signature.

    Raises:
        VerificationError: the batch does not recount (see :func:`batch_figures`) or its figures
            differ from the attested ones.
    """
    if not isinstance(attestation, AuditAttestation):
        raise UnsupportedOperationError("attestation must be an AuditAttestation")
    if attestation.passed:
        count, work = batch_figures(
            transcripts, domain, node=attestation.node, epoch=attestation.epoch, root=attestation.root
        )
        if (count, work) != (attestation.task_count, attestation.work_units):
            raise VerificationError(
                f"attested figures ({attestation.task_count} tasks, {attestation.work_units} work units) differ "
                f"from the batch ({count} tasks, {work} work units)"
            )
    return sign_digest(attestation.digest(domain), private_key)


def recover_oracle(digest: bytes, signature: bytes) -> str:
    """Signer of an oracle attestation; raises :class:`VerificationError` on a bad signature."""
    return recover_signer(digest, signature)

