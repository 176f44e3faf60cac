"""edil.proofs: commitments, PoAI transcripts, Merkle epoch batches, audits and the chain client.

The flow a node, an oracle and anyone else follow::

    from edil import proofs

    chain = proofs.Chain.in_process()                 # or Chain.from_url("http://...", [keys])
    dep = chain.deploy(epoch_length=3600)             # NodeRegistry, AvailabilityLedger, PoAIVerifier
    dep.admit_node(node.address); dep.admit_oracle(o.address); dep.set_quorum(1)

    # a node runs a task and signs its transcript (times: ms since the Unix epoch, injected)
    t = proofs.Transcript(job_id="job-7", epoch=e, node=node.address,
                          scheme_params_hash=proofs.commit_json(params),
                          model_commitment=proofs.commit_tensor(w).root,
                          input_commitment=proofs.commit_tensor(x).root,
                          output_commitment=proofs.commit_tensor(y).root,
                          work_units=macs, started_at=t0_ms, ended_at=t1_ms)
    signed = proofs.sign_transcript(t, node.key, dep.poai_domain)
    proofs.verify_transcript(signed, dep.poai_domain)            # raises VerificationError

    # after the epoch: one root per node per epoch, constant gas; the node declares nothing else
    batch = proofs.EpochBatch([signed, ...], dep.poai_domain)
    dep.post_batch(node, batch)
    dep.check_inclusion(node.address, e, batch.digest(0), batch.proof(0))   # -> bool, on chain

    # oracles audit with randomness fixed after the root was posted, sized for a detection target
    posted = dep.epoch_record(node.address, e).root
    seed = proofs.audit_seed(posted, node=node.address, epoch=e,
                             beacon=dep.audit_beacon(node.address, e))
    k = proofs.audit_sample_size(batch.task_count, cheat_fraction=0.05, detection=0.99)
    proofs.freivalds_audit(A, B, C, seed=seed, rounds=20)        # raises VerificationError
    proofs.matmul_audit_one_round(A, B, C, H, seed=seed)         # one round, error < 2^-44
    # they recount the whole signed batch and attest its figures; honest oracles refuse others
    count, work = proofs.batch_figures([signed, ...], dep.poai_domain, node=node.address, epoch=e, root=posted)
    att = proofs.AuditAttestation(node.address, e, posted, count, work, True, report)
    sig = proofs.attest_audit(o.key, dep.poai_domain, att, [signed, ...])
    dep.record_audit(att, [sig])
    dep.verified_work_units(node.address, e)                     # == work, the attested figure

    # Proof-of-Availability: oracles sign uint8 availability per epoch, the node claims it
    sig = proofs.sign_availability(o.key, dep.ledger_domain, node.address, [1, 2], [255, 200])
    dep.claim_availability(node, [1, 2], [255, 200], [sig])   # a voided epoch earns nothing
    dep.forfeit_availability(node.address, [2])              # once an audit voids epoch 2 later

Hashing rules (mirrored by the Solidity in ``contracts_abi/src``):

- ``commit_bytes(b) = keccak256(b)``; tensors: see :func:`commit_tensor` (dtype and shape bound in,
  chunked Merkle tree so one chunk can be opened).
- Merkle nodes: leaf ``keccak256(0x00 || leaf)``, inner ``keccak256(0x01 || left || right)``, padding
  ``bytes32(0)``; the leaves of an epoch tree are transcript EIP-712 digests.
- Transcript, availability claim and audit attestation are EIP-712 typed data under the domains of
  the verifier (``"EDIL PoAI"``) and ledger (``"EDIL AvailabilityLedger"``), version ``"1"``.

Epochs: epoch ``e`` covers ``[genesis + e * epoch_length, genesis + (e + 1) * epoch_length)`` of
block time; genesis and length are fixed at deployment. Roots and availability may be posted only
for ended epochs. ``Deployment.advance_to_epoch`` moves a development chain's clock.

Every verification fails closed with :class:`edil.VerificationError`; chain reverts raise
:class:`edil.ChainError` (subclasses also derive from ``AuthorizationError``, ``VerificationError``
or ``ReplayError``) with the decoded revert reason. Every other failure of the chain is a
``ChainError`` too: :class:`ChainUnavailableError` (unreachable, or no answer within the request
deadline, 10 s by default) and :class:`ChainResponseError` (an answer that is not well-formed).
"""

from ._artifacts import Artifact, load_artifact
from ._audit import DEFAULT_CHEAT_FRACTION, DEFAULT_DETECTION, audit_detection, audit_sample_size
from ._chain import (
    AggregateEpoch,
    Chain,
    ChainAuthorizationError,
    ChainFundsError,
    ChainReplayError,
    ChainResponseError,
    ChainTooEarlyError,
    ChainUnavailableError,
    ChainVerificationError,
    Deployment,
    EpochRecord,
    EpochStatus,
    JobInfo,
    KycAttestation,
    StakeInfo,
    TxResult,
    sign_kyc_attestation,
)
from ._commit import (
    ChunkOpening,
    TensorCommitment,
    commit_bytes,
    commit_json,
    commit_tensor,
    decode_tensor,
    encode_tensor,
    verify_chunk,
)
from ._freivalds import (
    audit_by_recomputation,
    audit_prime,
    audit_seed,
    freivalds_audit,
    matmul_audit_one_round,
    sample_indices,
)
from ._hashing import Eip712Domain, consteq, keccak256, recover_signer, sign_digest
from ._merkle import InclusionProof, MerkleTree, compute_root, verify_inclusion
from ._transcript import (
    AuditAttestation,
    EpochBatch,
    SignedTranscript,
    Transcript,
    attest_audit,
    audit_digest,
    availability_digest,
    batch_figures,
    sign_audit,
    sign_availability,
    sign_transcript,
    verify_transcript,
    verify_transcript_inclusion,
)
from ._wire import transcript_from_wire, transcript_to_wire

__all__ = [
    "AggregateEpoch",
    "Artifact",
    "AuditAttestation",
    "Chain",
    "ChainAuthorizationError",
    "ChainFundsError",
    "ChainReplayError",
    "ChainResponseError",
    "ChainTooEarlyError",
    "ChainUnavailableError",
    "ChainVerificationError",
    "ChunkOpening",
    "DEFAULT_CHEAT_FRACTION",
    "DEFAULT_DETECTION",
    "Deployment",
    "Eip712Domain",
    "EpochBatch",
    "EpochRecord",
    "EpochStatus",
    "InclusionProof",
    "JobInfo",
    "KycAttestation",
    "MerkleTree",
    "SignedTranscript",
    "StakeInfo",
    "TensorCommitment",
    "Transcript",
    "TxResult",
    "attest_audit",
    "audit_by_recomputation",
    "audit_detection",
    "audit_digest",
    "audit_prime",
    "audit_sample_size",
    "audit_seed",
    "availability_digest",
    "batch_figures",
    "commit_bytes",
    "commit_json",
    "commit_tensor",
    "compute_root",
    "consteq",
    "decode_tensor",
    "encode_tensor",
    "freivalds_audit",
    "keccak256",
    "load_artifact",
    "matmul_audit_one_round",
    "recover_signer",
    "sample_indices",
    "sign_audit",
    "sign_availability",
    "sign_digest",
    "sign_kyc_attestation",
    "sign_transcript",
    "transcript_from_wire",
    "transcript_to_wire",
    "verify_chunk",
    "verify_inclusion",
    "verify_transcript",
    "verify_transcript_inclusion",
]
