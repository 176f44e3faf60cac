// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {EdilEIP712} from "./EdilCommon.sol";
import {NodeRegistry, RegistryBound} from "./NodeRegistry.sol";
import {PoAIVerifier} from "./PoAIVerifier.sol";

/// @title Proof-of-Availability ledger.
/// @notice A node claims its availability (uint8, 0..255, per epoch as in Ratio1's design) for
///         ended epochs with EIP-712 signatures of a quorum of distinct registered oracles over
///         AvailabilityClaim(address node,uint64[] epochs,uint8[] availabilities).
///         An epoch is claimed at most once per node. Accrued reward units = availabilitySum / 255.
///         Availability of an epoch whose Proof-of-AI audit failed earns nothing: the ledger reads
///         the PoAI verifier's voided epochs when the claim is made (a voided epoch is recorded as
///         claimed with nothing earned), and anyone may later forfeit what a claimed epoch earned
///         once an audit voids it (a claim may precede the audit).
contract AvailabilityLedger is EdilEIP712, RegistryBound {
    error NodeNotAdmitted(address node);
    error EmptyClaim();
    error LengthMismatch(uint256 epochs, uint256 availabilities);
    error TooManyEpochs(uint256 count, uint256 max);
    error EpochsNotIncreasing(uint64 previous, uint64 next);
    error EpochNotEnded(uint64 epoch, uint64 current);
    error EpochAlreadyClaimed(address node, uint64 epoch);
    error EpochNotClaimed(address node, uint64 epoch);
    error EpochNotVoided(address node, uint64 epoch);
    error VerifierRegistryMismatch(address verifierRegistry, address registry);

    event AvailabilityClaimed(address indexed node, uint64[] epochs, uint8[] availabilities, uint256 added);
    event AvailabilityForfeited(address indexed node, uint64[] epochs, uint256 removed);

    bytes32 public constant AVAILABILITY_TYPEHASH =
        keccak256("AvailabilityClaim(address node,uint64[] epochs,uint8[] availabilities)");
    uint256 public constant MAX_EPOCHS_PER_CLAIM = 256;
    uint256 public constant AVAILABILITY_SCALE = 255;

    // Per node, 28 epochs per storage word in 9-bit lanes: bit 8 = claimed, bits 0..7 = the
    // availability the epoch still earns (0 when it was voided). A claim of a few consecutive
    // epochs writes one word, as the former one-bit-per-epoch bitmap did.
    uint256 private constant LANES = 28;
    uint256 private constant LANE_BITS = 9;
    uint256 private constant CLAIMED = 0x100;
    uint256 private constant EARNED = 0xff;

    struct Account {
        uint192 availabilitySum;
        uint64 epochsClaimed;
    }

    PoAIVerifier public immutable verifier;

    mapping(address => Account) private _accounts;
    mapping(address => mapping(uint256 => uint256)) private _lanes;

    constructor(NodeRegistry registry_, PoAIVerifier verifier_)
        EdilEIP712("EDIL AvailabilityLedger", "1")
        RegistryBound(registry_)
    {
        address verifierRegistry = address(verifier_.registry());
        if (verifierRegistry != address(registry_)) revert VerifierRegistryMismatch(verifierRegistry, address(registry_));
        verifier = verifier_;
    }

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

    /// @notice Claim availability of `node` for ended, strictly increasing `epochs`. An epoch the
    ///         PoAI verifier has voided is marked claimed and earns nothing.
    /// @return added the sum of the availabilities earned (reward units * 255).
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

    /// @dev Where _markClaimed is: the lanes word it edits and the voided-bitmap word it read.
    struct Cursor {
        uint256 wordIndex;
        uint256 word;
        uint256 voidIndex;
        uint256 voided;
    }

    /// @dev Mark every epoch claimed with what it earns: one storage write per touched 28-epoch
    ///      word, one verifier read per touched 256-epoch word of its voided bitmap.
    function _markClaimed(address node, uint64[] calldata epochs, uint8[] calldata availabilities)
        private
        returns (uint256 added)
    {
        uint64 current = currentEpoch();
        mapping(uint256 => uint256) storage lanes = _lanes[node];
        Cursor memory c;
        c.wordIndex = epochs[0] / LANES;
        c.word = lanes[c.wordIndex];
        c.voidIndex = epochs[0] >> 8;
        c.voided = verifier.voidedEpochs(node, c.voidIndex);
        for (uint256 i; i < epochs.length; ++i) {
            uint64 epoch = epochs[i];
            if (i != 0 && epoch <= epochs[i - 1]) revert EpochsNotIncreasing(epochs[i - 1], epoch);
            if (epoch >= current) revert EpochNotEnded(epoch, current);
            if (epoch / LANES != c.wordIndex) {
                lanes[c.wordIndex] = c.word;
                c.wordIndex = epoch / LANES;
                c.word = lanes[c.wordIndex];
            }
            if (epoch >> 8 != c.voidIndex) {
                c.voidIndex = epoch >> 8;
                c.voided = verifier.voidedEpochs(node, c.voidIndex);
            }
            uint256 earned = (c.voided >> (epoch & 255)) & 1 == 1 ? 0 : availabilities[i];
            uint256 shift = (epoch % LANES) * LANE_BITS;
            if ((c.word >> shift) & CLAIMED != 0) revert EpochAlreadyClaimed(node, epoch);
            c.word |= (CLAIMED | earned) << shift;
            added += earned;
        }
        lanes[c.wordIndex] = c.word;
    }

    /// @notice Take back what claimed `epochs` of `node` earned, once the PoAI verifier has voided
    ///         each of them (anyone may call; forfeiting an epoch twice removes nothing more).
    /// @return removed the availability removed from the node's sum.
    function forfeitAvailability(address node, uint64[] calldata epochs) external returns (uint256 removed) {
        uint256 n = epochs.length;
        if (n == 0) revert EmptyClaim();
        if (n > MAX_EPOCHS_PER_CLAIM) revert TooManyEpochs(n, MAX_EPOCHS_PER_CLAIM);
        mapping(uint256 => uint256) storage lanes = _lanes[node];
        for (uint256 i; i < n; ++i) {
            uint64 epoch = epochs[i];
            if ((verifier.voidedEpochs(node, epoch >> 8) >> (epoch & 255)) & 1 == 0) revert EpochNotVoided(node, epoch);
            uint256 wordIndex = epoch / LANES;
            uint256 word = lanes[wordIndex];
            uint256 shift = (epoch % LANES) * LANE_BITS;
            if ((word >> shift) & CLAIMED == 0) revert EpochNotClaimed(node, epoch);
            removed += (word >> shift) & EARNED;
            lanes[wordIndex] = word & ~(EARNED << shift);
        }
        _accounts[node].availabilitySum -= uint192(removed);
        emit AvailabilityForfeited(node, epochs, removed);
    }

    function isClaimed(address node, uint64 epoch) external view returns (bool) {
        return (_lanes[node][epoch / LANES] >> ((epoch % LANES) * LANE_BITS)) & CLAIMED != 0;
    }

    /// @notice Availability that `node`'s `epoch` earns now (0 when unclaimed, voided or forfeited).
    function earnedAvailability(address node, uint64 epoch) external view returns (uint256) {
        return (_lanes[node][epoch / LANES] >> ((epoch % LANES) * LANE_BITS)) & EARNED;
    }

    /// @notice Sum of earned availabilities and number of claimed epochs of `node`.
    function accountOf(address node) external view returns (uint256 availabilitySum, uint256 epochsClaimed) {
        Account storage account = _accounts[node];
        return (account.availabilitySum, account.epochsClaimed);
    }

    /// @notice Accrued reward units of `node` as a fraction numerator / 255 (voided epochs excluded).
    function rewardUnits(address node) external view returns (uint256 numerator, uint256 denominator) {
        return (_accounts[node].availabilitySum, AVAILABILITY_SCALE);
    }
}
