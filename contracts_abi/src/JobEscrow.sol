// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {RegistryBound} from "./NodeRegistry.sol";
import {OperatorLicence} from "./OperatorLicence.sol";
import {PoAIVerifier} from "./PoAIVerifier.sol";

/// @title Escrowed payment of a job's verified work.
/// @notice A client deposits tokens for a job run in one epoch by a fixed set of nodes, each with
///         the work units the scheduler planned for it; the deposit prices every planned unit at
///         amount / totalPlanned. Once the epoch has ended and its audit window has passed, each
///         node's slot is settled once (by anyone): the node is paid for its work units that an
///         oracle quorum attested with a passing audit (PoAIVerifier.verifiedWorkUnits), up to its
///         plan, and the rest of its share goes back to the client (all of it when its audit
///         failed, was never recorded, or it posted nothing). A node's attested units of an epoch
///         fill its jobs of that epoch in the order they were created: each job reserves the range
///         [offset, offset + planned) of the node's units at deposit and pays only the attested units
///         inside it, so two jobs never pay the same unit twice (and settling writes no shared word).
///         A job that no node has started (no root posted for its epoch) by its start deadline is
///         refunded in full. With an operator-licence contract set at deployment, only licensed
///         nodes take part in jobs, and a node whose licence is revoked (or that was unbound from
///         it) by the time its slot is settled earns nothing: its share goes back to the client.
contract JobEscrow is RegistryBound {
    using SafeERC20 for IERC20;

    error ZeroAmount();
    error JobExists(bytes32 jobId);
    error UnknownJob(bytes32 jobId);
    error EmptyJob();
    error TooManyNodes(uint256 count, uint256 max);
    error NodeUnitsMismatch(uint256 nodes, uint256 units);
    error DuplicateNode(address node);
    error ZeroPlannedUnits(address node);
    error EpochAlreadyEnded(uint64 epoch, uint64 current);
    error NotInJob(bytes32 jobId, address node);
    error AuditWindowOpen(uint256 now_, uint256 settleAfter);
    error AlreadySettled(bytes32 jobId, address node);
    error JobClosed(bytes32 jobId);
    error StartDeadlineNotReached(uint256 now_, uint256 deadline);
    error JobStarted(bytes32 jobId, address node);
    error NodeNotLicensed(address node);

    event JobCreated(bytes32 indexed jobId, address indexed client, uint64 epoch, uint256 amount, uint256 totalPlanned);
    event SlotSettled(bytes32 indexed jobId, address indexed node, uint256 units, uint256 paid, uint256 returned);
    event JobRefunded(bytes32 indexed jobId, address indexed client, uint256 amount);

    uint256 public constant MAX_NODES = 64;

    /// @dev Three storage words; what a settlement writes (settledCount, closed, remaining) shares one.
    struct Job {
        address client;
        uint64 epoch;
        uint32 nodeCount;
        uint64 startDeadline;
        uint32 settledCount;
        bool closed;
        uint128 remaining;
        uint128 amount;
        uint128 totalPlanned;
    }

    IERC20 public immutable token;
    PoAIVerifier public immutable verifier;
    /// @notice Seconds after an epoch's end during which audits are recorded before payment.
    uint64 public immutable auditWindow;
    /// @notice Operator licences nodes must hold (address(0): none required).
    OperatorLicence public immutable licence;

    mapping(bytes32 => Job) private _jobs;
    mapping(bytes32 => address[]) private _nodes;
    // Per job and node: planned units in bits 0..63, the offset of the job's range among the
    // node's units of the epoch in bits 64..191, bit 255 set once the slot is settled.
    mapping(bytes32 => mapping(address => uint256)) private _slots;
    // Units of (node, epoch) that jobs have reserved so far: the next job's offset.
    mapping(address => mapping(uint64 => uint256)) private _reserved;

    uint256 private constant SETTLED = 1 << 255;
    uint256 private constant UNITS = type(uint64).max;
    uint256 private constant OFFSET_SHIFT = 64;

    constructor(IERC20 token_, PoAIVerifier verifier_, uint64 auditWindow_, OperatorLicence licence_)
        RegistryBound(verifier_.registry())
    {
        licence = licence_;
        token = token_;
        verifier = verifier_;
        auditWindow = auditWindow_;
    }

    /// @notice Deposit `amount` tokens (pulled from the caller, who approved them) for job `jobId`
    ///         run in `epoch` (not yet ended) by `nodes` with `plannedUnits` work units each.
    function createJob(
        bytes32 jobId,
        uint64 epoch,
        uint64 startDeadline,
        address[] calldata nodes,
        uint64[] calldata plannedUnits,
        uint128 amount
    ) external {
        if (amount == 0) revert ZeroAmount();
        uint256 n = nodes.length;
        if (n == 0) revert EmptyJob();
        if (n > MAX_NODES) revert TooManyNodes(n, MAX_NODES);
        if (n != plannedUnits.length) revert NodeUnitsMismatch(n, plannedUnits.length);
        if (_jobs[jobId].client != address(0)) revert JobExists(jobId);
        uint64 current = currentEpoch();
        if (epoch < current) revert EpochAlreadyEnded(epoch, current);
        uint256 total = _reserveSlots(jobId, epoch, nodes, plannedUnits);
        _nodes[jobId] = nodes;
        // total < 64 * 2**64: it fits in 128 bits.
        _jobs[jobId] = Job(msg.sender, epoch, uint32(n), startDeadline, 0, false, amount, amount, uint128(total));
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit JobCreated(jobId, msg.sender, epoch, amount, total);
    }

    /// @dev Record each node's slot (planned units and the offset of the job's range among the
    ///      node's units of `epoch`) and reserve that range; returns the sum of the planned units.
    function _reserveSlots(bytes32 jobId, uint64 epoch, address[] calldata nodes, uint64[] calldata plannedUnits)
        private
        returns (uint256 total)
    {
        mapping(address => uint256) storage slots = _slots[jobId];
        for (uint256 i; i < nodes.length; ++i) {
            address node = nodes[i];
            uint64 units = plannedUnits[i];
            if (units == 0) revert ZeroPlannedUnits(node);
            if (address(licence) != address(0) && !licence.isLicensedNode(node)) revert NodeNotLicensed(node);
            if (slots[node] != 0) revert DuplicateNode(node);
            uint256 offset = _reserved[node][epoch];
            // A node's units of one epoch stay far below 2**128 (the verifier records uint128).
            _reserved[node][epoch] = offset + units;
            slots[node] = units | (offset << OFFSET_SHIFT);
            total += units;
        }
    }

    /// @notice Unix time after which the job's slots can be settled (its epoch's end plus the audit window).
    function settleAfter(bytes32 jobId) public view returns (uint256) {
        Job storage job = _jobs[jobId];
        if (job.client == address(0)) revert UnknownJob(jobId);
        return uint256(genesisTime) + (uint256(job.epoch) + 1) * epochLength + auditWindow;
    }

    /// @notice Settle `node`'s slot of `jobId` once: pay the node for its attested units (up to its
    ///         plan, not already paid by another job), return the rest of its share to the client.
    function settle(bytes32 jobId, address node) external returns (uint256 paid, uint256 returned) {
        uint256 after_ = settleAfter(jobId);
        if (block.timestamp < after_) revert AuditWindowOpen(block.timestamp, after_);
        Job storage job = _jobs[jobId];
        if (job.closed) revert JobClosed(jobId);
        uint256 slot = _slots[jobId][node];
        if (slot == 0) revert NotInJob(jobId, node);
        if (slot & SETTLED != 0) revert AlreadySettled(jobId, node);
        uint256 planned = slot & UNITS;
        _slots[jobId][node] = slot | SETTLED;
        uint256 units = _attestedInRange(node, job.epoch, slot >> OFFSET_SHIFT & type(uint128).max, planned);
        uint256 amount = job.amount;
        uint256 total = job.totalPlanned;
        paid = amount * units / total;
        uint256 remaining = job.remaining;
        uint32 settledCount = job.settledCount + 1;
        // The last slot takes the rounding remainder, so a job always ends with nothing held.
        returned = settledCount == job.nodeCount ? remaining - paid : amount * planned / total - paid;
        job.remaining = uint128(remaining - paid - returned);
        job.settledCount = settledCount;
        if (settledCount == job.nodeCount) job.closed = true;
        if (paid != 0) token.safeTransfer(node, paid);
        if (returned != 0) token.safeTransfer(job.client, returned);
        emit SlotSettled(jobId, node, units, paid, returned);
    }

    /// @dev Attested units of (node, epoch) inside the job's range [offset, offset + planned); none
    ///      for a node that no longer holds a licence when licences are required.
    function _attestedInRange(address node, uint64 epoch, uint256 offset, uint256 planned)
        private
        view
        returns (uint256 units)
    {
        if (address(licence) != address(0) && !licence.isLicensedNode(node)) return 0;
        uint256 verified = verifier.verifiedWorkUnits(node, epoch);
        units = verified > offset ? verified - offset : 0;
        if (units > planned) units = planned;
    }

    /// @notice Refund the whole deposit of a job that none of its nodes started (posted a root for
    ///         its epoch) by its start deadline. Anyone may call; the tokens go to the client.
    function refundUnstarted(bytes32 jobId) external returns (uint256 refunded) {
        Job storage job = _jobs[jobId];
        if (job.client == address(0)) revert UnknownJob(jobId);
        if (job.closed || job.settledCount != 0) revert JobClosed(jobId);
        if (block.timestamp < job.startDeadline) revert StartDeadlineNotReached(block.timestamp, job.startDeadline);
        address[] storage nodes = _nodes[jobId];
        uint64 epoch = job.epoch;
        for (uint256 i; i < nodes.length; ++i) {
            if (verifier.epochStatus(nodes[i], epoch) != PoAIVerifier.Status.None) revert JobStarted(jobId, nodes[i]);
        }
        refunded = job.remaining;
        job.remaining = 0;
        job.closed = true;
        token.safeTransfer(job.client, refunded);
        emit JobRefunded(jobId, job.client, refunded);
    }

    /// @notice What the escrow holds for `jobId`.
    function jobOf(bytes32 jobId)
        external
        view
        returns (
            address client,
            uint64 epoch,
            uint64 startDeadline,
            uint256 amount,
            uint256 remaining,
            uint256 totalPlanned,
            uint256 nodeCount,
            uint256 settledCount,
            bool closed
        )
    {
        Job storage j = _jobs[jobId];
        return (j.client, j.epoch, j.startDeadline, j.amount, j.remaining, j.totalPlanned, j.nodeCount, j.settledCount, j.closed);
    }

    /// @notice Planned units of `node` in `jobId`, where its range starts among the node's units
    ///         of the epoch, and whether its slot is settled.
    function slotOf(bytes32 jobId, address node) external view returns (uint256 planned, uint256 offset, bool settled) {
        uint256 slot = _slots[jobId][node];
        return (slot & UNITS, slot >> OFFSET_SHIFT & type(uint128).max, slot & SETTLED != 0);
    }

    /// @notice Work units of (node, epoch) that jobs of this escrow have planned (reserved) so far.
    function reservedUnits(address node, uint64 epoch) external view returns (uint256) {
        return _reserved[node][epoch];
    }
}
