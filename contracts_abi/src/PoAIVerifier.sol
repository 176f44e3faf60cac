// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {EdilEIP712, EdilMerkle} from "./EdilCommon.sol";
import {NodeRegistry, RegistryBound} from "./NodeRegistry.sol";

/// @title Proof-of-AI verifier: epoch roots of signed task transcripts, inclusion checks, audits.
/// @notice A registered node posts one Merkle root per ended epoch over the EIP-712 digests of its
///         transcripts (constant gas, whatever the number of tasks), and nothing else: it declares
///         no figure. Anyone checks inclusion. An oracle quorum attests an audit of the batch under
///         that root: the oracles recount the batch (every transcript signed by the node, the tree
///         over their digests equal to the posted root) and sign its task count and work units
///         with the verdict. Only these attested figures are recorded and reported: a passed audit
///         makes them the epoch's verified work, a failed one voids the epoch and attests no work.
contract PoAIVerifier is EdilEIP712, RegistryBound {
    enum Status {
        None,
        Posted,
        Verified,
        Voided
    }

    /// @dev One storage word. taskCount and workUnits are the figures an oracle quorum attested
    ///      (zero until a passing audit is recorded, and after a failing one).
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
    error FiguresOnFailedAudit(uint64 taskCount, uint128 workUnits);
    error ProofTooDeep(uint256 depth, uint256 max);
    error IndexOutOfRange(uint256 index, uint256 depth);
    error NotOracle(address caller);
    error AggregateAlreadyPosted(address oracle, uint64 epoch);
    error AggregateNotPosted(address oracle, uint64 epoch);
    error NotInAggregate(address node, uint64 epoch);

    event EpochRootPosted(address indexed node, uint64 indexed epoch, bytes32 root);
    event AggregateRootPosted(address indexed oracle, uint64 indexed epoch, bytes32 aggregateRoot);
    event AuditRecorded(
        address indexed node, uint64 indexed epoch, bool passed, uint64 taskCount, uint128 workUnits, bytes32 reportHash
    );

    bytes32 public constant TRANSCRIPT_TYPEHASH = keccak256(
        "Transcript(bytes32 jobId,uint64 epoch,address node,bytes32 schemeParamsHash,bytes32 modelCommitment,"
        "bytes32 inputCommitment,bytes32 outputCommitment,uint256 workUnits,uint64 startedAt,uint64 endedAt)"
    );
    bytes32 public constant AUDIT_TYPEHASH = keccak256(
        "AuditAttestation(address node,uint64 epoch,bytes32 root,uint64 taskCount,uint128 workUnits,bool passed,"
        "bytes32 reportHash)"
    );

    mapping(address => mapping(uint64 => bytes32)) private _roots;
    /// @notice Per oracle and epoch, the root over every node's (address, batch root) leaf.
    mapping(address => mapping(uint64 => bytes32)) public aggregateRoot;
    mapping(address => mapping(uint64 => EpochMeta)) private _meta;
    // Voided epochs of a node, one bit per epoch, 256 epochs per word: what the availability
    // ledger reads (one storage word for a whole claim) to pay nothing for a voided epoch.
    mapping(address => mapping(uint256 => uint256)) private _voidedBits;

    constructor(NodeRegistry registry_) EdilEIP712("EDIL PoAI", "1") RegistryBound(registry_) {}

    /// @notice Post the caller's batch root for an ended epoch, once. The root is all a node
    ///         declares: its task count and work units are attested later by the auditing oracles.
    function postEpochRoot(uint64 epoch, bytes32 root) external {
        if (!registry.isNode(msg.sender)) revert NodeNotAdmitted(msg.sender);
        uint64 current = currentEpoch();
        if (epoch >= current) revert EpochNotEnded(epoch, current);
        _setRoot(msg.sender, epoch, root);
    }

    function _setRoot(address node, uint64 epoch, bytes32 root) private {
        if (root == bytes32(0)) revert ZeroRoot();
        mapping(uint64 => bytes32) storage roots = _roots[node];
        if (roots[epoch] != bytes32(0)) revert RootAlreadyPosted(node, epoch);
        roots[epoch] = root;
        _meta[node][epoch] = EpochMeta(0, 0, uint48(block.number), Status.Posted);
        emit EpochRootPosted(node, epoch, root);
    }

    /// @notice Post, once per oracle and epoch and for the whole network, the Merkle root over the
    ///         leaves keccak256(node ++ batchRoot) of an ended epoch: constant gas whatever the
    ///         number of nodes. Each node then claims its own batch root from it. The aggregate
    ///         carries no trust: only a node can take a root from it, so an oracle cannot pin a
    ///         root on a node; a wrong aggregate only makes nodes claim from another oracle's, or
    ///         post directly (postEpochRoot).
    function postAggregateRoot(uint64 epoch, bytes32 root) external {
        if (!registry.isOracle(msg.sender)) revert NotOracle(msg.sender);
        uint64 current = currentEpoch();
        if (epoch >= current) revert EpochNotEnded(epoch, current);
        if (root == bytes32(0)) revert ZeroRoot();
        mapping(uint64 => bytes32) storage posted = aggregateRoot[msg.sender];
        if (posted[epoch] != bytes32(0)) revert AggregateAlreadyPosted(msg.sender, epoch);
        posted[epoch] = root;
        emit AggregateRootPosted(msg.sender, epoch, root);
    }

    /// @notice The caller (an admitted node) takes `root` as its batch root of `epoch`, proving
    ///         that keccak256(caller ++ root) sits at `index` of the aggregate `oracle` posted.
    ///         Audits follow as for a root posted with postEpochRoot (one root per node and epoch).
    function claimEpochRoot(address oracle, uint64 epoch, bytes32 root, uint256 index, bytes32[] calldata proof)
        external
    {
        if (!registry.isNode(msg.sender)) revert NodeNotAdmitted(msg.sender);
        bytes32 aggregate = aggregateRoot[oracle][epoch];
        if (aggregate == bytes32(0)) revert AggregateNotPosted(oracle, epoch);
        (bool ok, bytes32 computed) =
            EdilMerkle.computeRoot(keccak256(abi.encodePacked(msg.sender, root)), index, proof);
        if (!ok || computed != aggregate) revert NotInAggregate(msg.sender, epoch);
        _setRoot(msg.sender, epoch, root);
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

    /// @notice EIP-712 digest the oracles sign to attest an audit of (node, epoch): the posted root,
    ///         the figures they recounted from the batch under it, and the verdict.
    function auditDigest(
        address node,
        uint64 epoch,
        uint64 taskCount,
        uint128 workUnits,
        bool passed,
        bytes32 reportHash
    ) public view returns (bytes32) {
        return _hashTypedData(
            keccak256(
                abi.encode(AUDIT_TYPEHASH, node, epoch, _roots[node][epoch], taskCount, workUnits, passed, reportHash)
            )
        );
    }

    /// @notice Record an audit attested by a quorum of oracles. A pass records the attested task
    ///         count and work units as the epoch's verified work (a pass of an empty batch is
    ///         refused); a failure voids the epoch and must attest no work (zero figures). A failure
    ///         may overturn a pass, nothing overturns a failure.
    function recordAudit(
        address node,
        uint64 epoch,
        uint64 taskCount,
        uint128 workUnits,
        bool passed,
        bytes32 reportHash,
        bytes[] calldata signatures
    ) external {
        EpochMeta storage meta = _meta[node][epoch];
        Status status = meta.status;
        if (status == Status.None) revert RootNotPosted(node, epoch);
        if (status == Status.Voided || (status == Status.Verified && passed)) {
            revert AuditAlreadyRecorded(node, epoch, status);
        }
        if (passed) {
            if (taskCount == 0) revert EmptyBatch();
        } else if (taskCount != 0 || workUnits != 0) {
            revert FiguresOnFailedAudit(taskCount, workUnits);
        }
        registry.requireQuorum(auditDigest(node, epoch, taskCount, workUnits, passed, reportHash), signatures);
        meta.taskCount = taskCount;
        meta.workUnits = workUnits;
        meta.status = passed ? Status.Verified : Status.Voided;
        if (!passed) _voidedBits[node][epoch >> 8] |= 1 << (epoch & 255);
        emit AuditRecorded(node, epoch, passed, taskCount, workUnits, reportHash);
    }

    /// @notice Work units of (node, epoch) that an oracle quorum attested with a passing audit; 0 otherwise.
    function verifiedWorkUnits(address node, uint64 epoch) external view returns (uint256) {
        EpochMeta storage meta = _meta[node][epoch];
        return meta.status == Status.Verified ? meta.workUnits : 0;
    }

    /// @notice Audit status of (node, epoch): None (no root), Posted (not audited yet), Verified or Voided.
    function epochStatus(address node, uint64 epoch) external view returns (Status) {
        return _meta[node][epoch].status;
    }

    /// @notice Word `wordIndex` of `node`'s voided-epoch bitmap: bit i is set when epoch
    ///         256 * wordIndex + i was voided by a failed audit.
    function voidedEpochs(address node, uint256 wordIndex) external view returns (uint256) {
        return _voidedBits[node][wordIndex];
    }

    /// @notice What the verifier holds for (node, epoch); the figures are the attested ones.
    function epochRecord(address node, uint64 epoch)
        external
        view
        returns (bytes32 root, uint64 taskCount, uint128 workUnits, uint48 postedBlock, Status status)
    {
        EpochMeta storage meta = _meta[node][epoch];
        return (_roots[node][epoch], meta.taskCount, meta.workUnits, meta.postedBlock, meta.status);
    }
}
