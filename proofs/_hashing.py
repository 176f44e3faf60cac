"""Internal byte-level helpers shared by the proof modules: keccak, addresses, EIP-712, ECDSA.

Everything here mirrors `contracts_abi/src/EdilCommon.sol`; a change on one side is a change on
the other, and the cross-check tests fail until both agree.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_hash.auto import keccak as _keccak
from eth_keys import keys as _keys
from eth_keys.exceptions import BadSignature
from eth_keys.exceptions import ValidationError as _KeysValidationError
from eth_utils import is_address, to_canonical_address, to_checksum_address

from edil import ParameterError, UnsupportedOperationError, VerificationError

UINT64_MAX = (1 << 64) - 1
UINT128_MAX = (1 << 128) - 1
UINT256_MAX = (1 << 256) - 1
# secp256k1 group order and its half: signatures with s above half are the malleated twin (EIP-2).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_ORDER = SECP256K1_N // 2

EIP712_DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"


def keccak256(data: bytes) -> bytes:
    """keccak256 (Ethereum's, not SHA3-256) of ``data``."""
    return _keccak(bytes(data))


def consteq(a: bytes, b: bytes) -> bool:
    """Constant-time equality of two byte strings."""
    return hmac.compare_digest(bytes(a), bytes(b))


def check_bytes32(value: Any, name: str) -> bytes:
    """Return ``value`` as 32 raw bytes; ``UnsupportedOperationError`` on a wrong type, ``ParameterError`` on a wrong length."""
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise UnsupportedOperationError(f"{name} must be 32 bytes, got {type(value).__name__}")
    if len(value) != 32:
        raise ParameterError(f"{name} must be 32 bytes, got {len(value)}")
    return value


def check_uint(value: Any, name: str, bits: int) -> int:
    """Return ``value`` if it is a Python int in ``[0, 2^bits)``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnsupportedOperationError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value < (1 << bits):
        raise ParameterError(f"{name} must lie in [0, 2^{bits}), got {value}")
    return value


def check_address(value: Any, name: str = "address") -> str:
    """Return ``value`` as an EIP-55 checksum address; ``UnsupportedOperationError`` on a wrong type, else ``ParameterError``."""
    if isinstance(value, bytes) and len(value) == 20:
        return to_checksum_address(value)
    if not isinstance(value, str):
        raise UnsupportedOperationError(f"{name} must be an address string, got {type(value).__name__}")
    if not is_address(value):
        raise ParameterError(f"{name} is not a valid address: {value!r}")
    return to_checksum_address(value)


def word(value: int) -> bytes:
    """ABI word of an unsigned integer (big-endian, 32 bytes)."""
    return value.to_bytes(32, "big")


def address_word(address: str) -> bytes:
    return bytes(12) + to_canonical_address(address)


@dataclass(frozen=True, slots=True)
class Eip712Domain:
    """An EIP-712 domain: ``EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)``.

    Args:
        name: the signing domain's name (each EDIL contract has its own).
        version: the domain version.
        chain_id: EIP-155 chain id, so signatures do not replay across chains.
        verifying_contract: address of the contract that verifies the signatures.

    Example:
        >>> d = Eip712Domain("EDIL PoAI", "1", 1, "0x" + "11" * 20)
        >>> len(d.separator)
        32
    """

    name: str
    version: str
    chain_id: int
    verifying_contract: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not isinstance(self.version, str):
            raise UnsupportedOperationError("domain name and version must be str")
        check_uint(self.chain_id, "chain_id", 256)
        object.__setattr__(self, "verifying_contract", check_address(self.verifying_contract, "verifying_contract"))

    @property
    def separator(self) -> bytes:
        """The 32-byte domain separator."""
        return keccak256(
            keccak256(EIP712_DOMAIN_TYPE.encode())
            + keccak256(self.name.encode())
            + keccak256(self.version.encode())
            + word(self.chain_id)
            + address_word(self.verifying_contract)
        )

    def as_dict(self) -> dict[str, Any]:
        """The domain as ``eth_account``'s typed-data ``domain`` mapping."""
        return {
            "name": self.name,
            "version": self.version,
            "chainId": self.chain_id,
            "verifyingContract": self.verifying_contract,
        }

    def hash_struct(self, struct_hash: bytes) -> bytes:
        """EIP-712 digest ``keccak256(0x1901 || separator || struct_hash)``."""
        return keccak256(b"\x19\x01" + self.separator + struct_hash)


EIP712_DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


def private_key_bytes(key: Any) -> bytes:
    """Accept 32 raw bytes, a 0x-hex string, an eth-keys key or an eth-account ``LocalAccount``."""
    if hasattr(key, "key") and not isinstance(key, bytes | str):  # LocalAccount
        key = key.key
    if isinstance(key, _keys.PrivateKey):
        return key.to_bytes()
    if isinstance(key, str):
        text = key[2:] if key.startswith(("0x", "0X")) else key
        try:
            key = bytes.fromhex(text)
        except ValueError:
            raise ParameterError("private key string is not hex") from None
    if isinstance(key, bytearray | memoryview):
        key = bytes(key)
    if not isinstance(key, bytes):
        raise UnsupportedOperationError(f"unsupported private key type {type(key).__name__}")
    if len(key) != 32:
        raise ParameterError("a private key is 32 bytes")
    return key


def sign_digest(digest: bytes, private_key: Any) -> bytes:
    """65-byte ``r || s || v`` signature (v in {27, 28}, low s) of a 32-byte digest."""
    check_bytes32(digest, "digest")
    sig = _keys.PrivateKey(private_key_bytes(private_key)).sign_msg_hash(digest)
    r, s, v = sig.r, sig.s, sig.v
    if s > HALF_ORDER:  # normalise to low s, flipping the recovery id
        s, v = SECP256K1_N - s, v ^ 1
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27 + v])


def recover_signer(digest: bytes, signature: bytes) -> str:
    """Recover the signer's checksum address, failing closed exactly as ``EdilSig.recover`` does.

    Raises:
        VerificationError: malformed signature, high s, bad v, or no recoverable key.
    """
    if not isinstance(signature, bytes | bytearray) or len(signature) != 65:
        raise VerificationError("signature must be 65 bytes r || s || v")
    signature = bytes(signature)
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28) or s > HALF_ORDER or not 0 < r < SECP256K1_N or s == 0:
        raise VerificationError("signature is malformed or malleated (high s / bad v)")
    try:
        pub = _keys.Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(digest)
    except (BadSignature, _KeysValidationError, ValueError) as exc:
        raise VerificationError("signature does not recover a public key") from exc
    return pub.to_checksum_address()


def hash_uint_array(values: Sequence[int]) -> bytes:
    """EIP-712 hash of a ``uintN[]`` (each element one 32-byte word)."""
    return keccak256(b"".join(word(v) for v in values))
