"""Node and coordinator identities, capabilities, and the signed node card.

A node has three keys, each for what it does best:

* a secp256k1 **chain key**: its address in the on-chain registry (dAuth), signs PoAI
  transcripts (EIP-712) and availability claims;
* an Ed25519 **signing key** (PyNaCl): fast signatures on every reply and heartbeat;
* an X25519 **box key** (PyNaCl): payloads for the node are sealed to it.

The :class:`NodeCard` binds the two PyNaCl public keys and the advertised capabilities to the
chain address with one secp256k1 signature, checked once when the scheduler admits the node;
after that every message is authenticated with the fast Ed25519 key alone.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import nacl.public
import nacl.signing
from eth_keys import keys as _eth_keys

from edil import ParameterError, UnsupportedOperationError, VerificationError

from . import _wire
from ._deps import consteq, keccak256, recover_signer, sign_digest

__all__ = ["Capabilities", "CoordinatorIdentity", "NodeCard", "NodeIdentity", "detect_capabilities"]

_SECP_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_CARD_TAG = b"EDIL/node-card/v1"


def _fixed_bytes(n: int) -> Any:
    return Annotated[bytes, msgspec.Meta(min_length=n, max_length=n)]


class _CapabilitiesRecord(msgspec.Struct, forbid_unknown_fields=True):
    """Capabilities as they travel, with strict types and sizes (a card is read before it is trusted)."""

    accelerators: Annotated[list[Annotated[str, msgspec.Meta(max_length=32)]], msgspec.Meta(max_length=16)]
    memory_bytes: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class _NodeCardRecord(msgspec.Struct, forbid_unknown_fields=True):
    address: Annotated[str, msgspec.Meta(pattern=r"\A0x[0-9a-fA-F]{40}\Z")]
    signing_key: _fixed_bytes(32)  # type: ignore[valid-type]
    box_key: _fixed_bytes(32)  # type: ignore[valid-type]
    capabilities: _CapabilitiesRecord
    signature: _fixed_bytes(65)  # type: ignore[valid-type]


def _derive(seed: bytes, label: bytes) -> bytes:
    return hashlib.blake2b(seed, key=label, digest_size=32).digest()


def _check_seed(seed: Any) -> bytes:
    if not isinstance(seed, bytes | bytearray):
        raise UnsupportedOperationError(f"an identity seed must be at least 16 bytes, got {type(seed).__name__}")
    if len(seed) < 16:
        raise ParameterError(f"an identity seed must be at least 16 bytes, got {len(seed)}")
    return bytes(seed)


@dataclass(frozen=True)
class Capabilities:
    """What a node advertises: accelerator platforms JAX sees, and memory in bytes."""

    accelerators: tuple[str, ...] = ()
    memory_bytes: int = 0

    @property
    def gpu(self) -> bool:
        return any(a in ("gpu", "cuda", "rocm") for a in self.accelerators)

    def to_wire(self) -> dict[str, Any]:
        return {"accelerators": list(self.accelerators), "memory_bytes": int(self.memory_bytes)}

    @classmethod
    def from_wire(cls, d: Any) -> Capabilities:
        """Inverse of :meth:`to_wire`.

        Raises:
            SerializationError: not a capabilities record (at most 16 accelerator names of at
                most 32 characters, ``memory_bytes`` an int in ``[0, 2^63)``).
        """
        rec = _wire.typed(d, _CapabilitiesRecord, "capabilities record")
        return cls(tuple(rec.accelerators), rec.memory_bytes)


def detect_capabilities() -> Capabilities:
    """Accelerators JAX sees on this machine (platform names other than ``cpu``) and RAM."""
    import jax

    accels = tuple(sorted({d.platform for d in jax.devices() if d.platform != "cpu"}))
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        mem = 0
    return Capabilities(accels, int(mem))


@dataclass(frozen=True)
class NodeCard:
    """A node's public identity, bound to its chain address by a secp256k1 signature.

    Attributes:
        address: checksum chain address (the dAuth registry entry).
        signing_key: Ed25519 public key (32 bytes).
        box_key: X25519 public key (32 bytes).
        capabilities: advertised capabilities.
        signature: 65-byte chain-key signature over all of the above.
    """

    address: str
    signing_key: bytes
    box_key: bytes
    capabilities: Capabilities
    signature: bytes = field(repr=False)

    @staticmethod
    def _digest(address: str, signing_key: bytes, box_key: bytes, caps: Capabilities) -> bytes:
        body = _wire.dumps([address, signing_key, box_key, caps.to_wire()])
        return keccak256(_CARD_TAG + body)

    def verify(self) -> NodeCard:
        """Check the binding signature; returns ``self``. Raises :class:`~edil.VerificationError`."""
        if not isinstance(self.signing_key, bytes) or len(self.signing_key) != 32 or not isinstance(self.box_key, bytes) or len(self.box_key) != 32:
            raise VerificationError("node card keys must be 32 bytes")
        if not isinstance(self.address, str) or re.fullmatch("0x[0-9a-fA-F]{40}", self.address) is None:
            raise VerificationError("node card address is not a 0x-hex chain address")
        signer = recover_signer(self._digest(self.address, self.signing_key, self.box_key, self.capabilities), self.signature)
        if not consteq(bytes.fromhex(signer[2:]), bytes.fromhex(self.address[2:])):
            raise VerificationError("node card is not signed by its chain address")
        return self

    def to_wire(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "signing_key": self.signing_key,
            "box_key": self.box_key,
            "capabilities": self.capabilities.to_wire(),
            "signature": self.signature,
        }

    @classmethod
    def from_wire(cls, d: Any) -> NodeCard:
        """Inverse of :meth:`to_wire`; the signature is checked by :meth:`verify`, not here.

        Raises:
            SerializationError: not a node card record (a 0x-hex address, 32-byte keys, a
                65-byte signature, a capabilities record).
        """
        rec = _wire.typed(d, _NodeCardRecord, "node card")
        caps = Capabilities(tuple(rec.capabilities.accelerators), rec.capabilities.memory_bytes)
        return cls(rec.address, rec.signing_key, rec.box_key, caps, rec.signature)


class NodeIdentity:
    """A node's three private keys. Build with :meth:`from_seed` (reproducible) or :meth:`generate`.

    Example:
        >>> ident = NodeIdentity.from_seed(b"node-0" * 4)
        >>> card = ident.card()
        >>> card.verify().address == ident.address
        True
    """

    def __init__(self, chain_key: bytes, signing_seed: bytes, box_seed: bytes) -> None:
        self._chain_key = _eth_keys.PrivateKey(chain_key)
        self.signing = nacl.signing.SigningKey(signing_seed)
        self.box = nacl.public.PrivateKey(box_seed)
        self.address: str = self._chain_key.public_key.to_checksum_address()

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeIdentity:
        """Derive all three keys from one secret seed (>= 16 bytes).

        Raises:
            ParameterError: a seed shorter than 16 bytes.
            UnsupportedOperationError: a seed that is not bytes.
        """
        seed = _check_seed(seed)
        k = int.from_bytes(_derive(seed, b"chain"), "big") % (_SECP_N - 1) + 1
        return cls(k.to_bytes(32, "big"), _derive(seed, b"ed25519"), _derive(seed, b"x25519"))

    @classmethod
    def generate(cls) -> NodeIdentity:
        """Fresh random keys from ``os.urandom``."""
        return cls.from_seed(os.urandom(32))

    @property
    def chain_key(self) -> bytes:
        """The secp256k1 private key (32 bytes): what signs transcripts and chain transactions."""
        return self._chain_key.to_bytes()

    def card(self, capabilities: Capabilities | None = None) -> NodeCard:
        """The signed public card for ``capabilities`` (detected when omitted)."""
        caps = detect_capabilities() if capabilities is None else capabilities
        sk, bk = bytes(self.signing.verify_key), bytes(self.box.public_key)
        sig = sign_digest(NodeCard._digest(self.address, sk, bk, caps), self.chain_key)
        return NodeCard(self.address, sk, bk, caps, sig)

    def __repr__(self) -> str:
        return f"NodeIdentity(address={self.address})"


class CoordinatorIdentity:
    """The coordinator's Ed25519 signing key and X25519 box key (nodes trust its verify key)."""

    def __init__(self, signing_seed: bytes, box_seed: bytes) -> None:
        self.signing = nacl.signing.SigningKey(signing_seed)
        self.box = nacl.public.PrivateKey(box_seed)

    @classmethod
    def from_seed(cls, seed: bytes) -> CoordinatorIdentity:
        """Derive both keys from one secret seed (>= 16 bytes).

        Raises:
            ParameterError: a seed shorter than 16 bytes.
            UnsupportedOperationError: a seed that is not bytes.
        """
        seed = _check_seed(seed)
        return cls(_derive(seed, b"coord-ed25519"), _derive(seed, b"coord-x25519"))

    @classmethod
    def generate(cls) -> CoordinatorIdentity:
        return cls.from_seed(os.urandom(32))

    @property
    def verify_key(self) -> bytes:
        return bytes(self.signing.verify_key)

    @property
    def box_key(self) -> bytes:
        return bytes(self.box.public_key)

    def __repr__(self) -> str:
        return f"CoordinatorIdentity(verify_key={self.verify_key.hex()[:16]}...)"
