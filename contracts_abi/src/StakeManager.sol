// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {RegistryBound} from "./NodeRegistry.sol";
import {PoAIVerifier} from "./PoAIVerifier.sol";

/// @title Operator stake per node, slashed on a failed audit.
/// @notice An operator bonds tokens behind a node. Once an oracle quorum has recorded a failed
///         audit of (node, epoch) in the PoAI verifier, anyone may slash a fixed fraction
///         (slashBps / 10000) of the node's stake, bonded and unbonding alike, to the treasury,
///         once per (node, epoch). Withdrawal takes two steps: request (the amount stops counting
///         as stake but stays slashable), then withdraw after the unbonding delay.
contract StakeManager is RegistryBound {
    using SafeERC20 for IERC20;

    error ZeroAmount();
    error ZeroAddress();
    error InvalidSlashFraction(uint256 bps);
    error NotOperator(address caller, address operator);
    error InsufficientStake(uint256 requested, uint256 bonded);
    error NothingUnbonding(address node);
    error StillUnbonding(uint256 now_, uint256 availableAt);
    error EpochNotVoided(address node, uint64 epoch);
    error AlreadySlashed(address node, uint64 epoch);

    event Staked(address indexed node, address indexed operator, uint256 amount);
    event UnbondRequested(address indexed node, uint256 amount, uint256 availableAt);
    event Withdrawn(address indexed node, address indexed operator, uint256 amount);
    event Slashed(address indexed node, uint64 indexed epoch, uint256 amount, address treasury);

    uint256 public constant BPS = 10_000;

    struct Stake {
        address operator;
        uint64 unbondAt;
        uint128 bonded;
        uint128 unbonding;
    }

    IERC20 public immutable token;
    PoAIVerifier public immutable verifier;
    address public immutable treasury;
    uint16 public immutable slashBps;
    uint64 public immutable unbondingDelay;

    mapping(address => Stake) private _stakes;
    mapping(address => mapping(uint64 => bool)) public slashed;

    constructor(IERC20 token_, PoAIVerifier verifier_, address treasury_, uint16 slashBps_, uint64 unbondingDelay_)
        RegistryBound(verifier_.registry())
    {
        if (treasury_ == address(0)) revert ZeroAddress();
        if (slashBps_ == 0 || slashBps_ > BPS) revert InvalidSlashFraction(slashBps_);
        token = token_;
        verifier = verifier_;
        treasury = treasury_;
        slashBps = slashBps_;
        unbondingDelay = unbondingDelay_;
    }

    /// @notice Bond `amount` tokens (pulled from the caller) behind `node`; the first staker of a
    ///         node becomes its operator, and only the operator adds to or withdraws its stake.
    function stake(address node, uint128 amount) external {
        if (amount == 0) revert ZeroAmount();
        if (node == address(0)) revert ZeroAddress();
        Stake storage s = _stakes[node];
        if (s.operator == address(0)) s.operator = msg.sender;
        else if (s.operator != msg.sender) revert NotOperator(msg.sender, s.operator);
        s.bonded += amount;
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit Staked(node, msg.sender, amount);
    }

    /// @notice Start unbonding `amount` of `node`'s stake; it can be withdrawn after the delay
    ///         (a new request restarts the delay for everything unbonding).
    function requestUnbond(address node, uint128 amount) external {
        Stake storage s = _stakes[node];
        if (msg.sender != s.operator) revert NotOperator(msg.sender, s.operator);
        if (amount == 0) revert ZeroAmount();
        if (amount > s.bonded) revert InsufficientStake(amount, s.bonded);
        s.bonded -= amount;
        s.unbonding += amount;
        uint64 at = uint64(block.timestamp) + unbondingDelay;
        s.unbondAt = at;
        emit UnbondRequested(node, amount, at);
    }

    /// @notice Withdraw everything unbonding once the delay has passed.
    function withdraw(address node) external returns (uint256 amount) {
        Stake storage s = _stakes[node];
        if (msg.sender != s.operator) revert NotOperator(msg.sender, s.operator);
        amount = s.unbonding;
        if (amount == 0) revert NothingUnbonding(node);
        if (block.timestamp < s.unbondAt) revert StillUnbonding(block.timestamp, s.unbondAt);
        s.unbonding = 0;
        token.safeTransfer(msg.sender, amount);
        emit Withdrawn(node, msg.sender, amount);
    }

    /// @notice Slash `node` for its failed audit of `epoch` (anyone may call, once per epoch):
    ///         slashBps / 10000 of its bonded and of its unbonding stake go to the treasury.
    function slash(address node, uint64 epoch) external returns (uint256 amount) {
        if (verifier.epochStatus(node, epoch) != PoAIVerifier.Status.Voided) revert EpochNotVoided(node, epoch);
        if (slashed[node][epoch]) revert AlreadySlashed(node, epoch);
        slashed[node][epoch] = true;
        Stake storage s = _stakes[node];
        uint128 fromBonded = uint128(uint256(s.bonded) * slashBps / BPS);
        uint128 fromUnbonding = uint128(uint256(s.unbonding) * slashBps / BPS);
        s.bonded -= fromBonded;
        s.unbonding -= fromUnbonding;
        amount = uint256(fromBonded) + fromUnbonding;
        if (amount != 0) token.safeTransfer(treasury, amount);
        emit Slashed(node, epoch, amount, treasury);
    }

    /// @notice Bonded stake of `node` (what counts for scheduling; unbonding stake does not).
    function stakeOf(address node) external view returns (uint256) {
        return _stakes[node].bonded;
    }

    /// @notice Operator, bonded and unbonding stake of `node`, and when the unbonding stake frees up.
    function stakeInfo(address node)
        external
        view
        returns (address operator, uint256 bonded, uint256 unbonding, uint256 unbondAt)
    {
        Stake storage s = _stakes[node];
        return (s.operator, s.bonded, s.unbonding, s.unbondAt);
    }
}
