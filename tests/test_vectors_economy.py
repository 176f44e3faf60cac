"""Known-answer vectors of the economy's hashing rules: the KYC attestation digest of operator
licences and the leaf of the aggregate epoch root.

Fixed inputs, fixed expected bytes (written here once, computed with eth_abi and keccak alone from
the rules in OperatorLicence.sol and PoAIVerifier.sol); each is recomputed independently of
``edil.proofs``, compared with ``edil.proofs`` and with the contracts on the in-process EVM, and a
changed input changes the answer.
"""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

from edil.proofs import AggregateEpoch, Chain, Eip712Domain, EpochStatus, KycAttestation, sign_kyc_attestation

# --- KYC attestation (EIP-712, domain "EDIL OperatorLicence" "1") -------------------------------
KYC_TYPE = b"KycAttestation(address operator,bytes32 kycHash,uint64 expiry,uint256 nonce)"
KYC_TYPEHASH = "bd4a641cc0ab4bb1d2d5beb1a0a66aa67055ea2e47d59e2952b2eadbc804b040"
KYC_OPERATOR = to_checksum_address("0x" + "a1" * 20)
KYC_HASH = keccak(b"kyc record: vector operator")
KYC_EXPIRY, KYC_NONCE = 2_000_000_000, 42
#: The OperatorLicence of a first deployment (Chain.deploy) on a fresh Chain.in_process().
KYC_CHAIN_ID = 131277322940537
KYC_CONTRACT = "0xB9816fC57977D5A786E654c7CF76767be63b966e"
KYC_STRUCT_HASH = "f48f5e3fcd44d2fa533b973e9ce8ea5b3007595798bf575bcbab00f5759cfaec"
KYC_SEPARATOR = "0a22a0053a493a05e679e4f19e6b1af7ab2944996d96ed87b8d5706f68e6e5d8"
KYC_DIGEST = "73cebd7334d62d9eb6b63188845a7f968698ce25f753461950e56b671e056251"

# --- aggregate epoch root: leaf keccak256(node ++ batchRoot), EdilMerkle tree over the leaves ---
AGG_NODE_KEYS = [keccak(b"edil-vector/aggregate-node-%d" % i) for i in range(3)]
AGG_ROOTS = [keccak(b"edil-vector/batch-root-%d" % i) for i in range(3)]
AGG_NODES = [
    "0x04EF35c2060E13D25a8623000C45E512EACAFF9c",
    "0x4B307EEBD60197195764b9Aa45d000a1E674f9Ca",
    "0x5c3b686dF46D66aFa3AeaC7617a3Fea6b4Bf11DA",
]
AGG_LEAVES = [
    "43e9a3055d9bd4b38a3d7bfb38939acd98471683b1617375060d4eb9524de693",
    "61e8bf106a7a65a35532838e704623ed6967e96a96439ac7349fd6cb052f8abe",
    "e2005000ecaa28871446aca12f30380d61b38ce401fefc6ea88882bb919c2c6a",
]
AGG_ROOT = "3214160b72f899554146f05ad2b710e77440a04eb8a3c8e99fe524450f10a66a"


def _kyc_digest_independently(operator: str, kyc_hash: bytes, expiry: int, nonce: int, chain_id: int, contract: str) -> bytes:
    struct = keccak(
        encode(["bytes32", "address", "bytes32", "uint64", "uint256"], [keccak(KYC_TYPE), operator, kyc_hash, expiry, nonce])
    )
    domain_type = keccak(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
    separator = keccak(
        encode(["bytes32", "bytes32", "bytes32", "uint256", "address"],
               [domain_type, keccak(b"EDIL OperatorLicence"), keccak(b"1"), chain_id, contract])
    )
    return keccak(b"\x19\x01" + separator + struct)


def _tree_root(leaves: list[bytes]) -> bytes:
    """EdilMerkle from its rule: leaf node keccak(0x00 || leaf), inner keccak(0x01 || l || r), zero padding."""
    level = [keccak(b"\x00" + leaf) for leaf in leaves]
    while len(level) > 1:
        if len(level) % 2:
            level.append(bytes(32))
        level = [keccak(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


@pytest.fixture(scope="module")
def fresh():
    chain = Chain.in_process()
    return chain, chain.deploy(epoch_length=600)


def test_kyc_vector_recomputes_independently() -> None:
    assert keccak(KYC_TYPE).hex() == KYC_TYPEHASH
    digest = _kyc_digest_independently(KYC_OPERATOR, KYC_HASH, KYC_EXPIRY, KYC_NONCE, KYC_CHAIN_ID, KYC_CONTRACT)
    assert digest.hex() == KYC_DIGEST
    typed = encode_typed_data(full_message={
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            "KycAttestation": [{"name": "operator", "type": "address"}, {"name": "kycHash", "type": "bytes32"},
                               {"name": "expiry", "type": "uint64"}, {"name": "nonce", "type": "uint256"}],
        },
        "primaryType": "KycAttestation",
        "domain": {"name": "EDIL OperatorLicence", "version": "1", "chainId": KYC_CHAIN_ID, "verifyingContract": KYC_CONTRACT},
        "message": {"operator": KYC_OPERATOR, "kycHash": KYC_HASH, "expiry": KYC_EXPIRY, "nonce": KYC_NONCE},
    })
    assert typed.header.hex() == KYC_SEPARATOR and typed.body.hex() == KYC_STRUCT_HASH  # eth-account's own encoder
    # Every field is bound in: changing any one changes the digest.
    for changed in (
        (to_checksum_address("0x" + "a2" * 20), KYC_HASH, KYC_EXPIRY, KYC_NONCE, KYC_CHAIN_ID, KYC_CONTRACT),
        (KYC_OPERATOR, keccak(b"other record"), KYC_EXPIRY, KYC_NONCE, KYC_CHAIN_ID, KYC_CONTRACT),
        (KYC_OPERATOR, KYC_HASH, KYC_EXPIRY + 1, KYC_NONCE, KYC_CHAIN_ID, KYC_CONTRACT),
        (KYC_OPERATOR, KYC_HASH, KYC_EXPIRY, KYC_NONCE + 1, KYC_CHAIN_ID, KYC_CONTRACT),
        (KYC_OPERATOR, KYC_HASH, KYC_EXPIRY, KYC_NONCE, KYC_CHAIN_ID + 1, KYC_CONTRACT),
        (KYC_OPERATOR, KYC_HASH, KYC_EXPIRY, KYC_NONCE, KYC_CHAIN_ID, to_checksum_address("0x" + "b0" * 20)),
    ):
        assert _kyc_digest_independently(*changed).hex() != KYC_DIGEST


def test_kyc_vector_matches_edil_proofs_and_the_contract(fresh) -> None:
    chain, dep = fresh
    assert (chain.chain_id, dep.licence.address) == (KYC_CHAIN_ID, KYC_CONTRACT), (
        "the first deployment on a fresh in-process chain moved: recompute the KYC vector's domain and digest"
    )
    att = KycAttestation(KYC_OPERATOR, KYC_HASH, KYC_EXPIRY, KYC_NONCE)
    domain = Eip712Domain("EDIL OperatorLicence", "1", KYC_CHAIN_ID, KYC_CONTRACT)
    assert att.digest(domain).hex() == KYC_DIGEST
    assert dep.licence_domain == domain
    contract = dep.licence.functions
    assert bytes(chain.call(contract.KYC_TYPEHASH())).hex() == KYC_TYPEHASH
    assert bytes(chain.call(contract.domainSeparator())).hex() == KYC_SEPARATOR
    assert bytes(chain.call(contract.attestationDigest(KYC_OPERATOR, KYC_HASH, KYC_EXPIRY, KYC_NONCE))).hex() == KYC_DIGEST
    # A listed attestor's signature over the vector digest mints; the recovered signer is the attestor.
    attestor = Account.from_key(keccak(b"edil-vector/kyc-attestor"))
    dep.set_attestor(attestor.address)
    licence_id = dep.mint_licence(att, sign_kyc_attestation(attestor.key, domain, att))
    assert dep.licence_holder(licence_id) == KYC_OPERATOR
    assert dep.licence_info(licence_id)["kyc_hash"] == "0x" + KYC_HASH.hex()


def test_aggregate_leaf_vector_recomputes_independently() -> None:
    nodes = [Account.from_key(k).address for k in AGG_NODE_KEYS]
    assert nodes == AGG_NODES
    leaves = [keccak(bytes.fromhex(a[2:]) + r) for a, r in zip(AGG_NODES, AGG_ROOTS)]  # abi.encodePacked(address, bytes32)
    assert [x.hex() for x in leaves] == AGG_LEAVES
    assert _tree_root(leaves).hex() == AGG_ROOT
    assert _tree_root([leaves[1], leaves[0], leaves[2]]).hex() != AGG_ROOT  # positions are bound in
    agg = AggregateEpoch(7, list(zip(AGG_NODES, AGG_ROOTS)))
    assert agg.root.hex() == AGG_ROOT


def test_aggregate_leaf_vector_matches_the_contract(fresh) -> None:
    chain, dep = fresh
    agg = AggregateEpoch(0, list(zip(AGG_NODES, AGG_ROOTS)))
    for i, node in enumerate(AGG_NODES):
        root, proof = agg.proof(node)
        leaf = bytes.fromhex(AGG_LEAVES[i])
        assert dep.compute_root(leaf, proof).hex() == AGG_ROOT
        assert dep.compute_root(keccak(bytes.fromhex(node[2:]) + keccak(b"another root")), proof).hex() != AGG_ROOT
    # The verifier hashes the claiming node's own address with the root: each vector node claims its root.
    oracle = chain.accounts[1]
    dep.admit_oracle(oracle.address)
    for key in AGG_NODE_KEYS:
        node = Account.from_key(key)
        dep.admit_node(node.address)
        chain.fund(node.address, 10**18)
    epoch = dep.current_epoch()
    dep.advance_to_epoch(epoch + 1)
    agg = AggregateEpoch(epoch, list(zip(AGG_NODES, AGG_ROOTS)))
    assert agg.root.hex() == AGG_ROOT
    dep.post_aggregate_root(oracle, epoch, agg.root)
    for key, node, root in zip(AGG_NODE_KEYS, AGG_NODES, AGG_ROOTS):
        _, proof = agg.proof(node)
        dep.claim_epoch_root(Account.from_key(key), oracle.address, epoch, root, proof)
        record = dep.epoch_record(node, epoch)
        assert record.root == root and record.status == EpochStatus.POSTED
