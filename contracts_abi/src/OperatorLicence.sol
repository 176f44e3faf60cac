// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {NodeRegistry} from "./NodeRegistry.sol";

/// @title Operator licences: non-transferable ERC-721 tokens minted on a KYC attestation.
/// @notice The registry's owner lists KYC attestors. A licence is minted to an operator only with
///         an EIP-712 attestation KycAttestation(address operator,bytes32 kycHash,uint64 expiry,
///         uint256 nonce) signed by a listed attestor (each attestation mints once, before its
///         expiry); kycHash commits to the off-chain KYC record. The operator binds up to
///         maxNodesPerLicence node addresses to it. The registry's owner or any attestor revokes a
///         licence, which unbinds all its nodes at once: isLicensedNode turns false for them. Each
///         binding, unbinding and revocation is reported to the registry (NodeRegistry.setLicensed),
///         which must name this contract as its licence: with licensing on there, only bound nodes
///         are nodes.
contract OperatorLicence is ERC721, EIP712 {
    error NotAdmin(address caller);
    error NotAttestor(address caller);
    error ZeroAddress();
    error AttestorAlreadyListed(address attestor);
    error AttestorNotListed(address attestor);
    error AttestationExpired(uint64 expiry, uint256 now_);
    error AttestationUsed(bytes32 digest);
    error UnknownAttestor(address signer);
    error NotLicenceHolder(address caller, uint256 licenceId);
    error LicenceRevoked(uint256 licenceId);
    error LicenceFull(uint256 licenceId, uint256 max);
    error NodeAlreadyBound(address node, uint256 licenceId);
    error NodeNotBound(address node, uint256 licenceId);
    error NotTransferable(uint256 licenceId);

    event AttestorListed(address indexed attestor, bool listed);
    event LicenceMinted(uint256 indexed licenceId, address indexed operator, address indexed attestor, bytes32 kycHash);
    event NodeBound(uint256 indexed licenceId, address indexed node, bool bound);
    event LicenceRevokedBy(uint256 indexed licenceId, address indexed by);

    bytes32 public constant KYC_TYPEHASH =
        keccak256("KycAttestation(address operator,bytes32 kycHash,uint64 expiry,uint256 nonce)");

    NodeRegistry public immutable registry;
    uint256 public immutable maxNodesPerLicence;

    uint256 public licenceCount;
    mapping(address => bool) public isAttestor;
    mapping(bytes32 => bool) public attestationUsed;
    mapping(uint256 => bool) public revoked;
    mapping(uint256 => bytes32) public kycHashOf;
    /// @notice Licence a node is bound to (0: none; licence ids start at 1).
    mapping(address => uint256) public licenceOfNode;
    mapping(uint256 => address[]) private _nodes;

    constructor(NodeRegistry registry_, uint256 maxNodesPerLicence_)
        ERC721("EDIL Operator Licence", "EDIL-OP")
        EIP712("EDIL OperatorLicence", "1")
    {
        registry = registry_;
        maxNodesPerLicence = maxNodesPerLicence_;
    }

    modifier onlyAdmin() {
        if (msg.sender != registry.owner()) revert NotAdmin(msg.sender);
        _;
    }

    /// @notice List or delist a KYC attestor (the registry's owner only).
    function setAttestor(address attestor, bool listed) external onlyAdmin {
        if (attestor == address(0)) revert ZeroAddress();
        if (listed == isAttestor[attestor]) {
            if (listed) revert AttestorAlreadyListed(attestor);
            revert AttestorNotListed(attestor);
        }
        isAttestor[attestor] = listed;
        emit AttestorListed(attestor, listed);
    }

    /// @notice EIP-712 digest an attestor signs for `operator`.
    function attestationDigest(address operator, bytes32 kycHash, uint64 expiry, uint256 nonce)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(KYC_TYPEHASH, operator, kycHash, expiry, nonce)));
    }

    /// @notice The EIP-712 domain separator of licence attestations.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice Mint a licence to `operator` with a listed attestor's signature (anyone may submit it).
    function mint(address operator, bytes32 kycHash, uint64 expiry, uint256 nonce, bytes calldata signature)
        external
        returns (uint256 licenceId)
    {
        if (operator == address(0)) revert ZeroAddress();
        if (block.timestamp > expiry) revert AttestationExpired(expiry, block.timestamp);
        bytes32 digest = attestationDigest(operator, kycHash, expiry, nonce);
        if (attestationUsed[digest]) revert AttestationUsed(digest);
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
        if (err != ECDSA.RecoverError.NoError || !isAttestor[signer]) revert UnknownAttestor(signer);
        attestationUsed[digest] = true;
        licenceId = ++licenceCount;
        kycHashOf[licenceId] = kycHash;
        _mint(operator, licenceId);
        emit LicenceMinted(licenceId, operator, signer, kycHash);
    }

    /// @notice Bind `node` to the caller's licence `licenceId` (at most maxNodesPerLicence nodes).
    function bindNode(uint256 licenceId, address node) external {
        if (ownerOf(licenceId) != msg.sender) revert NotLicenceHolder(msg.sender, licenceId);
        if (revoked[licenceId]) revert LicenceRevoked(licenceId);
        if (node == address(0)) revert ZeroAddress();
        uint256 bound = licenceOfNode[node];
        if (bound != 0) revert NodeAlreadyBound(node, bound);
        address[] storage nodes = _nodes[licenceId];
        if (nodes.length >= maxNodesPerLicence) revert LicenceFull(licenceId, maxNodesPerLicence);
        nodes.push(node);
        licenceOfNode[node] = licenceId;
        registry.setLicensed(node, true);
        emit NodeBound(licenceId, node, true);
    }

    /// @notice Unbind `node` from the caller's licence.
    function unbindNode(uint256 licenceId, address node) external {
        if (ownerOf(licenceId) != msg.sender) revert NotLicenceHolder(msg.sender, licenceId);
        if (licenceOfNode[node] != licenceId) revert NodeNotBound(node, licenceId);
        address[] storage nodes = _nodes[licenceId];
        for (uint256 i; i < nodes.length; ++i) {
            if (nodes[i] == node) {
                nodes[i] = nodes[nodes.length - 1];
                nodes.pop();
                break;
            }
        }
        delete licenceOfNode[node];
        registry.setLicensed(node, false);
        emit NodeBound(licenceId, node, false);
    }

    /// @notice Revoke a licence (the registry's owner or a listed attestor): all its nodes are unbound.
    function revoke(uint256 licenceId) external {
        if (msg.sender != registry.owner() && !isAttestor[msg.sender]) revert NotAttestor(msg.sender);
        _requireOwned(licenceId);
        if (revoked[licenceId]) revert LicenceRevoked(licenceId);
        revoked[licenceId] = true;
        address[] storage nodes = _nodes[licenceId];
        for (uint256 i; i < nodes.length; ++i) {
            delete licenceOfNode[nodes[i]];
            registry.setLicensed(nodes[i], false);
            emit NodeBound(licenceId, nodes[i], false);
        }
        delete _nodes[licenceId];
        emit LicenceRevokedBy(licenceId, msg.sender);
    }

    /// @notice Whether `node` is bound to a licence that is not revoked.
    function isLicensedNode(address node) external view returns (bool) {
        return licenceOfNode[node] != 0;
    }

    /// @notice Nodes bound to `licenceId`.
    function nodesOf(uint256 licenceId) external view returns (address[] memory) {
        return _nodes[licenceId];
    }

    /// @dev Licences follow a KYC'd person: they are minted, never transferred.
    function _update(address to, uint256 tokenId, address auth) internal override returns (address) {
        address from = _ownerOf(tokenId);
        if (from != address(0)) revert NotTransferable(tokenId);
        return super._update(to, tokenId, auth);
    }
}
