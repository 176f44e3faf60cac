// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {EdilEIP712, EdilMerkle} from "./EdilCommon.sol";
import {NodeRegistry, RegistryBound} from "./NodeRegistry.sol";

/// @title Proof-of-AI verifier: epoch roots of signed task transcripts, inclusion checks, audits.
/// @notice A registered node posts one Merkle root per ended epoch over the EIP-712 digests of its
///         transcripts (constant gas, whatever the number of tasks). Anyone checks inclusion.
///         An oracle quorum attests an audit; a failed audit voids the node's work for the epoch,
///         a passed one makes it verified work.
contract PoAIVerifier is EdilEIP712, RegistryBound {
    enum Status {
        None,
        Posted,
        Verified,
        Voided
    }

    struct EpochMeta {
        uint64 taskCount;
        uint128 workUnits;
        uint48 postedBlock;
        Status status;
    }

    struct Transcript {
        bytes32 jobId;
        uint64 epoch;
        address node;
        bytes32 schemeParamsHash;
        bytes32 modelCommitment;
        bytes32 inputCommitment;
        bytes32 outputCommitment;
        uint256 workUnits;
        uint64 startedAt;
        uint64 endedAt;
    }

    error NodeNotAdmitted(address node);
    error EpochNotEnded(uint64 epoch, uint64 current);
    error ZeroRoot();
    error EmptyBatch();
    error RootAlreadyPosted(address node, uint64 epoch);
    error RootNotPosted(address node, uint64 epoch);
    error AuditAlreadyRecorded(address node, uint64 epoch, Status status);
    error ProofTooDeep(uint256 depth, uint256 max);
    error IndexOutOfRange(uint256 index, uint256 depth);

    event EpochRootPosted(address indexed node, uint64 indexed epoch, bytes32 root, uint64 taskCount, uint128 workUnits);
    event AuditRecorded(address indexed node, uint64 indexed epoch, bool passed, bytes32 reportHash);

    bytes32 public constant TRANSCRIPT_TYPEHASH = keccak256(
        "Transcript(bytes32 jobId,uint64 epoch,address node,bytes32 schemeParamsHash,bytes32 modelCommitment,"
        "bytes32 inputCommitment,bytes32 outputCommitment,uint256 workUnits,uint64 startedAt,uint64 endedAt)"
    );
    bytes32 public constant AUDIT_TYPEHASH =
        keccak256("AuditAttestation(address node,uint64 epoch,bytes32 root,bool passed,bytes32 reportHash)");


    mapping(address => mapping(uint64 => bytes32)) private _roots;
    mapping(address => mapping(uint64 => EpochMeta)) private _meta;

    constructor(NodeRegistry registry_) EdilEIP712("EDIL PoAI", "1") RegistryBound(registry_) {}

    /// @notice Post the caller's batch root for an ended epoch, once.
    function postEpochRoot(uint64 epoch, bytes32 root, uint64 taskCount, uint128 workUnits) external {
        if (!registry.isNode(msg.sender)) revert NodeNotAdmitted(msg.sender);
        uint64 current = currentEpoch();
        if (epoch >= current) revert EpochNotEnded(epoch, current);
        if (root == bytes32(0)) revert ZeroRoot();
        if (taskCount == 0) revert EmptyBatch();
        mapping(uint64 => bytes32) storage roots = _roots[msg.sender];
        if (roots[epoch] != bytes32(0)) revert RootAlreadyPosted(msg.sender, epoch);
        roots[epoch] = root;
        _meta[msg.sender][epoch] = EpochMeta(taskCount, workUnits, uint48(block.number), Status.Posted);
        emit EpochRootPosted(msg.sender, epoch, root, taskCount, workUnits);
    }

    /// @notice Whether `leaf` sits at `index` of the tree whose root `node` posted for `epoch`.
    function verifyInclusion(address node, uint64 epoch, bytes32 leaf, uint256 index, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        bytes32 root = _roots[node][epoch];
        if (root == bytes32(0)) return false;
        (bool ok, bytes32 computed) = EdilMerkle.computeRoot(leaf, index, proof);
        return ok && computed == root;
    }

    /// @notice Whether the transcript `t` (its EIP-712 digest) is in the batch its node posted for its epoch.
    function verifyTranscriptInclusion(Transcript calldata t, uint256 index, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        bytes32 root = _roots[t.node][t.epoch];
        if (root == bytes32(0)) return false;
        (bool ok, bytes32 computed) = EdilMerkle.computeRoot(transcriptDigest(t), index, proof);
        return ok && computed == root;
    }

    /// @notice The Merkle root a proof leads to (reverts on a malformed proof). For cross-checks.
    function computeRoot(bytes32 leaf, uint256 index, bytes32[] calldata proof) external pure returns (bytes32) {
        if (proof.length > EdilMerkle.MAX_DEPTH) revert ProofTooDeep(proof.length, EdilMerkle.MAX_DEPTH);
        (bool ok, bytes32 root) = EdilMerkle.computeRoot(leaf, index, proof);
        if (!ok) revert IndexOutOfRange(index, proof.length);
        return root;
    }

    /// @notice EIP-712 digest of a transcript under this contract's domain.
    function transcriptDigest(Transcript calldata t) public view returns (bytes32) {
        return _hashTypedData(
            keccak256(
                abi.encode(
                    TRANSCRIPT_TYPEHASH,
                    t.jobId,
                    t.epoch,
                    t.node,
                    t.schemeParamsHash,
                    t.modelCommitment,
                    t.inputCommitment,
                    t.outputCommitment,
                    t.workUnits,
                    t.startedAt,
                    t.endedAt
                )
            )
        );
    }

    /// @notice EIP-712 digest the oracles sign to attest an audit of (node, epoch).
    function auditDigest(address node, uint64 epoch, bool passed, bytes32 reportHash) public view returns (bytes32) {
        return _hashTypedData(
            keccak256(abi.encode(AUDIT_TYPEHASH, node, epoch, _roots[node][epoch], passed, reportHash))
        );
    }

    /// @notice Record an audit attested by a quorum of oracles. A pass verifies the epoch's work,
    ///         a failure voids it; a failure may overturn a pass, nothing overturns a failure.
    function recordAudit(address node, uint64 epoch, bool passed, bytes32 reportHash, bytes[] calldata signatures)
        external
    {
        EpochMeta storage meta = _meta[node][epoch];
        Status status = meta.status;
        if (status == Status.None) revert RootNotPosted(node, epoch);
        if (status == Status.Voided || (status == Status.Verified && passed)) {
            revert AuditAlreadyRecorded(node, epoch, status);
        }
        registry.requireQuorum(auditDigest(node, epoch, passed, reportHash), signatures);
        meta.status = passed ? Status.Verified : Status.Voided;
        emit AuditRecorded(node, epoch, passed, reportHash);
    }

    /// @notice Work units of (node, epoch) once an audit quorum verified them; 0 otherwise.
    function verifiedWorkUnits(address node, uint64 epoch) external view returns (uint256) {
        EpochMeta storage meta = _meta[node][epoch];
        return meta.status == Status.Verified ? meta.workUnits : 0;
    }

    function epochRecord(address node, uint64 epoch)
        external
        view
        returns (bytes32 root, uint64 taskCount, uint128 workUnits, uint48 postedBlock, Status status)
    {
        EpochMeta storage meta = _meta[node][epoch];
        return (_roots[node][epoch], meta.taskCount, meta.workUnits, meta.postedBlock, meta.status);
    }
}
