// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {EdilEIP712} from "./EdilCommon.sol";
import {NodeRegistry, RegistryBound} from "./NodeRegistry.sol";

/// @title Proof-of-Availability ledger.
/// @notice A node claims its availability (uint8, 0..255, per epoch as in Ratio1's design) for
///         ended epochs with EIP-712 signatures of a quorum of distinct registered oracles over
///         AvailabilityClaim(address node,uint64[] epochs,uint8[] availabilities).
///         An epoch is claimed at most once per node (a bitmap, one storage word per 256 epochs).
///         Accrued reward units = availabilitySum / 255.
contract AvailabilityLedger is EdilEIP712, RegistryBound {
    error NodeNotAdmitted(address node);
    error EmptyClaim();
    error LengthMismatch(uint256 epochs, uint256 availabilities);
    error TooManyEpochs(uint256 count, uint256 max);
    error EpochsNotIncreasing(uint64 previous, uint64 next);
    error EpochNotEnded(uint64 epoch, uint64 current);
    error EpochAlreadyClaimed(address node, uint64 epoch);

    event AvailabilityClaimed(address indexed node, uint64[] epochs, uint8[] availabilities, uint256 added);

    bytes32 public constant AVAILABILITY_TYPEHASH =
        keccak256("AvailabilityClaim(address node,uint64[] epochs,uint8[] availabilities)");
    uint256 public constant MAX_EPOCHS_PER_CLAIM = 256;
    uint256 public constant AVAILABILITY_SCALE = 255;

    struct Account {
        uint192 availabilitySum;
        uint64 epochsClaimed;
    }


    mapping(address => Account) private _accounts;
    mapping(address => mapping(uint256 => uint256)) private _claimedBits;

    constructor(NodeRegistry registry_) EdilEIP712("EDIL AvailabilityLedger", "1") RegistryBound(registry_) {}

    /// @notice EIP-712 digest the oracles sign for this claim.
    function claimDigest(address node, uint64[] calldata epochs, uint8[] calldata availabilities)
        public
        view
        returns (bytes32)
    {
        // abi.encodePacked pads array elements to 32 bytes, which is exactly EIP-712's encoding of arrays.
        return _hashTypedData(
            keccak256(
                abi.encode(
                    AVAILABILITY_TYPEHASH,
                    node,
                    keccak256(abi.encodePacked(epochs)),
                    keccak256(abi.encodePacked(availabilities))
                )
            )
        );
    }

    /// @notice Claim availability of `node` for ended, strictly increasing `epochs`.
    /// @return added the sum of the claimed availabilities (reward units * 255).
    function claimAvailability(
        address node,
        uint64[] calldata epochs,
        uint8[] calldata availabilities,
        bytes[] calldata signatures
    ) external returns (uint256 added) {
        if (!registry.isNode(node)) revert NodeNotAdmitted(node);
        uint256 n = epochs.length;
        if (n == 0) revert EmptyClaim();
        if (n != availabilities.length) revert LengthMismatch(n, availabilities.length);
        if (n > MAX_EPOCHS_PER_CLAIM) revert TooManyEpochs(n, MAX_EPOCHS_PER_CLAIM);
        registry.requireQuorum(claimDigest(node, epochs, availabilities), signatures);

        added = _markClaimed(node, epochs, availabilities);

        Account storage account = _accounts[node];
        account.availabilitySum += uint192(added);
        account.epochsClaimed += uint64(n);
        emit AvailabilityClaimed(node, epochs, availabilities, added);
    }

    /// @dev Set the claimed bit of every epoch, one storage write per touched 256-epoch word.
    function _markClaimed(address node, uint64[] calldata epochs, uint8[] calldata availabilities)
        private
        returns (uint256 added)
    {
        uint64 current = currentEpoch();
        mapping(uint256 => uint256) storage bits = _claimedBits[node];
        uint256 wordIndex = epochs[0] >> 8;
        uint256 word = bits[wordIndex];
        uint64 previous;
        for (uint256 i; i < epochs.length; ++i) {
            uint64 epoch = epochs[i];
            if (i != 0 && epoch <= previous) revert EpochsNotIncreasing(previous, epoch);
            if (epoch >= current) revert EpochNotEnded(epoch, current);
            if (epoch >> 8 != wordIndex) {
                bits[wordIndex] = word;
                wordIndex = epoch >> 8;
                word = bits[wordIndex];
            }
            uint256 mask = 1 << (epoch & 255);
            if (word & mask != 0) revert EpochAlreadyClaimed(node, epoch);
            word |= mask;
            added += availabilities[i];
            previous = epoch;
        }
        bits[wordIndex] = word;
    }

    function isClaimed(address node, uint64 epoch) external view returns (bool) {
        return (_claimedBits[node][epoch >> 8] >> (epoch & 255)) & 1 == 1;
    }

    /// @notice Sum of claimed availabilities and number of claimed epochs of `node`.
    function accountOf(address node) external view returns (uint256 availabilitySum, uint256 epochsClaimed) {
        Account storage account = _accounts[node];
        return (account.availabilitySum, account.epochsClaimed);
    }

    /// @notice Accrued reward units of `node` as a fraction numerator / 255.
    function rewardUnits(address node) external view returns (uint256 numerator, uint256 denominator) {
        return (_accounts[node].availabilitySum, AVAILABILITY_SCALE);
    }
}
