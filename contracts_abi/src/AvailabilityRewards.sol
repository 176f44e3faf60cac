// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {AvailabilityLedger} from "./AvailabilityLedger.sol";
import {RegistryBound} from "./NodeRegistry.sol";

/// @title Epoch reward pools paid pro rata to availability.
/// @notice A sponsor funds one pool per epoch. After the epoch ends, during the registration
///         window, each node registers the availability it earns for the epoch in the
///         AvailabilityLedger (claimed there with an oracle quorum; zero for an epoch its PoAI
///         audit voided). After the window the pool is split pro rata to the registered
///         availability: a node is paid pool * own / total, once. A node whose epoch is voided
///         after it registered (the ledger forfeits that availability) is paid nothing and its
///         share goes back to the sponsor, as does the share of a node the registry no longer
///         counts as a node when it is claimed (revoked, or its operator licence revoked while
///         licensing is on). A pool nobody registered for goes back to the sponsor.
///         Rounding leaves at most one token unit per claim in the contract.
contract AvailabilityRewards is RegistryBound {
    using SafeERC20 for IERC20;

    error ZeroAmount();
    error PoolExists(uint64 epoch);
    error NoPool(uint64 epoch);
    error EpochNotEnded(uint64 epoch, uint64 current);
    error RegistrationClosed(uint64 epoch, uint256 closedAt);
    error RegistrationOpen(uint64 epoch, uint256 closesAt);
    error NothingEarned(address node, uint64 epoch);
    error AlreadyRegistered(address node, uint64 epoch);
    error NotRegistered(address node, uint64 epoch);
    error AlreadyPaid(address node, uint64 epoch);
    error PoolInUse(uint64 epoch);

    event PoolFunded(uint64 indexed epoch, address indexed sponsor, uint256 amount);
    event Registered(address indexed node, uint64 indexed epoch, uint256 availability);
    event RewardPaid(address indexed node, uint64 indexed epoch, uint256 paid, uint256 returned);
    event PoolReturned(uint64 indexed epoch, address indexed sponsor, uint256 amount);

    struct Pool {
        address sponsor;
        bool returned;
        uint128 amount;
        uint128 totalAvailability;
    }

    IERC20 public immutable token;
    AvailabilityLedger public immutable ledger;
    /// @notice Seconds after an epoch's end during which nodes register for its pool.
    uint64 public immutable registrationWindow;

    mapping(uint64 => Pool) private _pools;
    // Per node and epoch: registered availability (bits 0..7) and bit 8 once paid.
    mapping(address => mapping(uint64 => uint256)) private _entries;

    uint256 private constant PAID = 0x100;

    constructor(IERC20 token_, AvailabilityLedger ledger_, uint64 registrationWindow_) RegistryBound(ledger_.registry()) {
        token = token_;
        ledger = ledger_;
        registrationWindow = registrationWindow_;
    }

    /// @notice Fund the pool of `epoch` with `amount` tokens pulled from the caller (once per epoch).
    function fundEpoch(uint64 epoch, uint128 amount) external {
        if (amount == 0) revert ZeroAmount();
        Pool storage pool = _pools[epoch];
        if (pool.sponsor != address(0)) revert PoolExists(epoch);
        uint256 closes = registrationClosesAt(epoch);
        if (block.timestamp >= closes) revert RegistrationClosed(epoch, closes);
        pool.sponsor = msg.sender;
        pool.amount = amount;
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit PoolFunded(epoch, msg.sender, amount);
    }

    /// @notice Unix time at which registration for `epoch`'s pool closes and payment opens.
    function registrationClosesAt(uint64 epoch) public view returns (uint256) {
        return uint256(genesisTime) + (uint256(epoch) + 1) * epochLength + registrationWindow;
    }

    /// @notice Register the availability `node` earns for `epoch` in the ledger (anyone may call).
    function register(address node, uint64 epoch) external returns (uint256 availability) {
        Pool storage pool = _pools[epoch];
        if (pool.sponsor == address(0)) revert NoPool(epoch);
        uint64 current = currentEpoch();
        if (epoch >= current) revert EpochNotEnded(epoch, current);
        uint256 closes = registrationClosesAt(epoch);
        if (block.timestamp >= closes) revert RegistrationClosed(epoch, closes);
        if (_entries[node][epoch] != 0) revert AlreadyRegistered(node, epoch);
        availability = ledger.earnedAvailability(node, epoch);
        if (availability == 0) revert NothingEarned(node, epoch);
        _entries[node][epoch] = availability;
        pool.totalAvailability += uint128(availability);
        emit Registered(node, epoch, availability);
    }

    /// @notice Pay `node` its share of `epoch`'s pool once registration has closed (anyone may
    ///         call; the tokens go to the node, or back to the sponsor if the epoch was voided since).
    function claim(address node, uint64 epoch) external returns (uint256 paid, uint256 returned) {
        uint256 closes = registrationClosesAt(epoch);
        if (block.timestamp < closes) revert RegistrationOpen(epoch, closes);
        uint256 entry = _entries[node][epoch];
        if (entry == 0) revert NotRegistered(node, epoch);
        if (entry & PAID != 0) revert AlreadyPaid(node, epoch);
        _entries[node][epoch] = entry | PAID;
        Pool storage pool = _pools[epoch];
        uint256 share = uint256(pool.amount) * (entry & 0xff) / pool.totalAvailability;
        // Availability forfeited after registration (a later failed audit) earns nothing, nor does
        // a node that is no node any more (revoked, or its licence revoked with licensing on).
        if (ledger.earnedAvailability(node, epoch) == 0 || !registry.isNode(node)) {
            returned = share;
            if (share != 0) token.safeTransfer(pool.sponsor, share);
        } else {
            paid = share;
            if (share != 0) token.safeTransfer(node, share);
        }
        emit RewardPaid(node, epoch, paid, returned);
    }

    /// @notice Return a pool nobody registered for to its sponsor, once registration has closed.
    function returnUnclaimedPool(uint64 epoch) external returns (uint256 amount) {
        Pool storage pool = _pools[epoch];
        if (pool.sponsor == address(0)) revert NoPool(epoch);
        uint256 closes = registrationClosesAt(epoch);
        if (block.timestamp < closes) revert RegistrationOpen(epoch, closes);
        if (pool.totalAvailability != 0 || pool.returned) revert PoolInUse(epoch);
        pool.returned = true;
        amount = pool.amount;
        token.safeTransfer(pool.sponsor, amount);
        emit PoolReturned(epoch, pool.sponsor, amount);
    }

    /// @notice The pool of `epoch`: sponsor, amount, total registered availability, returned whole.
    function poolOf(uint64 epoch)
        external
        view
        returns (address sponsor, uint256 amount, uint256 totalAvailability, bool returned)
    {
        Pool storage pool = _pools[epoch];
        return (pool.sponsor, pool.amount, pool.totalAvailability, pool.returned);
    }

    /// @notice Availability `node` registered for `epoch` and whether its reward was paid.
    function entryOf(address node, uint64 epoch) external view returns (uint256 availability, bool paid) {
        uint256 entry = _entries[node][epoch];
        return (entry & 0xff, entry & PAID != 0);
    }
}
