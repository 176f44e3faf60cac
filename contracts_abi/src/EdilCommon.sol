// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @title Shared primitives of the EDIL contracts: signatures, Merkle proofs, EIP-712 domains.
/// @notice Every hashing rule here is mirrored byte for byte by the Python package `edil.proofs`.

/// @dev ECDSA recovery that fails closed: a malformed, high-s or wrong-v signature recovers to
///      address(0) instead of reverting, so a bad oracle signature simply does not count.
library EdilSig {
    // secp256k1n / 2: signatures with a larger s are the malleated twin of a low-s one (EIP-2).
    uint256 internal constant HALF_ORDER = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    function recover(bytes32 digest, bytes calldata signature) internal pure returns (address signer) {
        if (signature.length != 65) return address(0);
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly ("memory-safe") {
            r := calldataload(signature.offset)
            s := calldataload(add(signature.offset, 32))
            v := byte(0, calldataload(add(signature.offset, 64)))
        }
        if (uint256(s) > HALF_ORDER || (v != 27 && v != 28)) return address(0);
        signer = ecrecover(digest, v, r, s);
    }
}

/// @dev Positional binary Merkle tree, padded to a power of two.
///      leaf node  = keccak256(0x00 || leaf)
///      inner node = keccak256(0x01 || left || right)
///      An empty (padding) subtree is bytes32(0) at every level.
///      Distinct prefixes for leaves and inner nodes rule out second-preimage tricks that
///      pass an inner node off as a leaf; bit i of `index` says whether the node at level i is
///      a right child (1) or a left child (0).
library EdilMerkle {
    uint256 internal constant MAX_DEPTH = 64;

    /// @return ok false when the index does not fit the proof depth or the depth exceeds MAX_DEPTH.
    /// @return root the root the proof leads to (zero when !ok).
    function computeRoot(bytes32 leaf, uint256 index, bytes32[] calldata proof)
        internal
        pure
        returns (bool ok, bytes32 root)
    {
        uint256 depth = proof.length;
        if (depth > MAX_DEPTH || (index >> depth) != 0) return (false, bytes32(0));
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore8(ptr, 0)
            mstore(add(ptr, 1), leaf)
            root := keccak256(ptr, 33)
            mstore8(ptr, 1)
            let p := proof.offset
            let end := add(p, shl(5, depth))
            for {} lt(p, end) { p := add(p, 32) } {
                switch and(index, 1)
                case 0 {
                    mstore(add(ptr, 1), root)
                    mstore(add(ptr, 33), calldataload(p))
                }
                default {
                    mstore(add(ptr, 1), calldataload(p))
                    mstore(add(ptr, 33), root)
                }
                root := keccak256(ptr, 65)
                index := shr(1, index)
            }
        }
        ok = true;
    }
}

/// @dev Minimal EIP-712 domain: EIP712Domain(string name,string version,uint256 chainId,address verifyingContract).
abstract contract EdilEIP712 {
    bytes32 private constant _DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private immutable _hashedName;
    bytes32 private immutable _hashedVersion;
    bytes32 private immutable _cachedSeparator;
    uint256 private immutable _cachedChainId;

    constructor(string memory name, string memory version) {
        _hashedName = keccak256(bytes(name));
        _hashedVersion = keccak256(bytes(version));
        _cachedChainId = block.chainid;
        _cachedSeparator = _buildSeparator();
    }

    /// @notice The EIP-712 domain separator of this contract on the current chain.
    function domainSeparator() public view returns (bytes32) {
        // Recomputed after a chain split so that signatures cannot be replayed across forks.
        return block.chainid == _cachedChainId ? _cachedSeparator : _buildSeparator();
    }

    function _buildSeparator() private view returns (bytes32) {
        return keccak256(abi.encode(_DOMAIN_TYPEHASH, _hashedName, _hashedVersion, block.chainid, address(this)));
    }

    function _hashTypedData(bytes32 structHash) internal view returns (bytes32 digest) {
        bytes32 separator = domainSeparator();
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, hex"1901")
            mstore(add(ptr, 0x02), separator)
            mstore(add(ptr, 0x22), structHash)
            digest := keccak256(ptr, 0x42)
        }
    }
}
