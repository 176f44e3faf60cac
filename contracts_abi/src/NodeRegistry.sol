// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {EdilSig} from "./EdilCommon.sol";

/// @title dAuth node registry: KYC'd node operators, oracles, the m-of-n oracle quorum and the epoch clock.
/// @notice The owner admits and revokes nodes and oracles. Epoch e covers
///         [genesisTime + e * epochLength, genesisTime + (e + 1) * epochLength).
///         With licensing on (requireLicence, set by the owner), a node counts as a node (isNode)
///         only while it is admitted and bound to a live operator licence: revoking the licence,
///         or unbinding the node from it, takes the node out at once. The licence contract the
///         owner names (once) reports each binding here (setLicensed, NodeLicensed events), so
///         isNode reads one word per node whether licensing is on or off, and one request for
///         this contract's events replays who is a node. Licensing is off until the owner turns
///         it on, so a registry without licences works as before.
contract NodeRegistry {
    error NotOwner(address caller);
    error ZeroAddress();
    error InvalidEpochLength();
    error NodeAlreadyAdmitted(address node);
    error NodeNotAdmitted(address node);
    error OracleAlreadyAdmitted(address oracle);
    error OracleNotAdmitted(address oracle);
    error InvalidQuorum(uint256 quorum, uint256 oracleCount);
    error QuorumNotConfigured();
    error QuorumNotMet(uint256 valid, uint256 required);
    error TooManySignatures(uint256 count, uint256 max);
    error LicenceAlreadySet(address licence);
    error NotLicence(address caller);

    event NodeAdmitted(address indexed node);
    event NodeRevoked(address indexed node);
    event OracleAdmitted(address indexed oracle);
    event OracleRevoked(address indexed oracle);
    event QuorumSet(uint256 quorum, uint256 oracleCount);
    event LicensingSet(address indexed licence, bool required);
    event NodeLicensed(address indexed node, bool licensed);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    uint256 public constant MAX_SIGNATURES = 32;

    uint64 public immutable genesisTime;
    uint64 public immutable epochLength;

    address public owner;
    uint32 public oracleCount;
    uint32 public quorum;
    /// @notice The operator-licence contract nodes are bound to (set once) and whether isNode needs a licence.
    address public licence;
    bool public requireLicence;
    // Per node: bit 0 admitted by the owner, bit 1 bound to a live licence (reported by `licence`).
    mapping(address => uint256) private _status;

    uint256 private constant ADMITTED = 1;
    uint256 private constant LICENSED = 2;
    mapping(address => bool) public isOracle;

    constructor(address owner_, uint64 genesisTime_, uint64 epochLength_) {
        if (owner_ == address(0)) revert ZeroAddress();
        if (epochLength_ == 0) revert InvalidEpochLength();
        owner = owner_;
        genesisTime = genesisTime_;
        epochLength = epochLength_;
        emit OwnershipTransferred(address(0), owner_);
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    /// @notice The epoch the chain is in now (0 before genesis).
    function currentEpoch() public view returns (uint64) {
        if (block.timestamp < genesisTime) return 0;
        return uint64((block.timestamp - genesisTime) / epochLength);
    }

    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) revert ZeroAddress();
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }

    function admitNode(address node) external onlyOwner {
        if (node == address(0)) revert ZeroAddress();
        uint256 status = _status[node];
        if (status & ADMITTED != 0) revert NodeAlreadyAdmitted(node);
        _status[node] = status | ADMITTED;
        emit NodeAdmitted(node);
    }

    function revokeNode(address node) external onlyOwner {
        uint256 status = _status[node];
        if (status & ADMITTED == 0) revert NodeNotAdmitted(node);
        _status[node] = status & ~ADMITTED;
        emit NodeRevoked(node);
    }

    /// @notice Name the licence contract (once: the bindings it reported stay valid) and turn
    ///         licensing on or off. Turning it on needs a licence contract.
    function setLicensing(address licence_, bool required) external onlyOwner {
        address current = licence;
        if (current != address(0) && licence_ != current) revert LicenceAlreadySet(current);
        if (required && licence_ == address(0)) revert ZeroAddress();
        licence = licence_;
        requireLicence = required;
        emit LicensingSet(licence_, required);
    }

    /// @notice Record that `node` is (or is no longer) bound to a live licence: the named licence
    ///         contract only, on every binding, unbinding and revocation.
    function setLicensed(address node, bool licensed_) external {
        if (msg.sender != licence || msg.sender == address(0)) revert NotLicence(msg.sender);
        uint256 status = _status[node];
        _status[node] = licensed_ ? status | LICENSED : status & ~LICENSED;
        emit NodeLicensed(node, licensed_);
    }

    /// @notice Whether the owner admitted `node` (isNode also asks for a licence when licensing is on).
    function admitted(address node) external view returns (bool) {
        return _status[node] & ADMITTED != 0;
    }

    /// @notice Whether `node` is bound to a live licence of the named licence contract.
    function licensed(address node) external view returns (bool) {
        return _status[node] & LICENSED != 0;
    }

    /// @notice Whether `node` is a node now: admitted and, with licensing on, bound to a live licence.
    function isNode(address node) public view returns (bool) {
        uint256 status = _status[node];
        if (status & ADMITTED == 0) return false;
        return !requireLicence || status & LICENSED != 0;
    }

    function admitOracle(address oracle) external onlyOwner {
        if (oracle == address(0)) revert ZeroAddress();
        if (isOracle[oracle]) revert OracleAlreadyAdmitted(oracle);
        isOracle[oracle] = true;
        oracleCount += 1;
        emit OracleAdmitted(oracle);
    }

    /// @dev Refuses to leave fewer oracles than the quorum needs: lower the quorum first.
    function revokeOracle(address oracle) external onlyOwner {
        if (!isOracle[oracle]) revert OracleNotAdmitted(oracle);
        uint32 remaining = oracleCount - 1;
        if (remaining < quorum) revert InvalidQuorum(quorum, remaining);
        isOracle[oracle] = false;
        oracleCount = remaining;
        emit OracleRevoked(oracle);
    }

    /// @notice Set m of the m-of-n oracle quorum; 1 <= m <= n.
    function setQuorum(uint32 m) external onlyOwner {
        if (m == 0 || m > oracleCount) revert InvalidQuorum(m, oracleCount);
        quorum = m;
        emit QuorumSet(m, oracleCount);
    }

    /// @notice Number of distinct admitted oracles that signed `digest`. Malformed, malleated,
    ///         non-oracle and repeated signatures are skipped, never counted.
    function countOracleSignatures(bytes32 digest, bytes[] calldata signatures) public view returns (uint256 valid) {
        uint256 n = signatures.length;
        if (n > MAX_SIGNATURES) revert TooManySignatures(n, MAX_SIGNATURES);
        address[] memory counted = new address[](n);
        for (uint256 i; i < n; ++i) {
            address signer = EdilSig.recover(digest, signatures[i]);
            if (signer == address(0) || !isOracle[signer]) continue;
            bool repeated;
            for (uint256 j; j < valid; ++j) {
                if (counted[j] == signer) {
                    repeated = true;
                    break;
                }
            }
            if (!repeated) counted[valid++] = signer;
        }
    }

    /// @notice Revert unless at least `quorum` distinct oracles signed `digest`.
    function requireQuorum(bytes32 digest, bytes[] calldata signatures) external view {
        uint256 m = quorum;
        if (m == 0) revert QuorumNotConfigured();
        uint256 valid = countOracleSignatures(digest, signatures);
        if (valid < m) revert QuorumNotMet(valid, m);
    }
}

/// @notice Base of the contracts that follow one registry: they share its epoch clock
///         (genesis time and epoch length, fixed at deployment).
abstract contract RegistryBound {
    NodeRegistry public immutable registry;
    uint64 public immutable genesisTime;
    uint64 public immutable epochLength;

    constructor(NodeRegistry registry_) {
        registry = registry_;
        genesisTime = registry_.genesisTime();
        epochLength = registry_.epochLength();
    }

    function currentEpoch() public view returns (uint64) {
        if (block.timestamp < genesisTime) return 0;
        return uint64((block.timestamp - genesisTime) / epochLength);
    }
}
