"""Replicated shares sealed end to end between a client and the three parties of a session.

A client that asks a gateway for a ``Replicated`` inference must not let the gateway read any
party's pair of components: the gateway relays, the parties compute. This module holds what
both ends need (the client in :mod:`edil.client`, the nodes in :mod:`edil.runtime`):

* :func:`session_key_digest`: what a node signs with its chain key to say "this X25519 key is
  mine, for party ``i`` of session ``s`` of service ``id``"; :func:`session_key_signer`
  recovers the signer's address (fail closed, as :func:`edil.proofs.recover_signer` does).
* :func:`seal_pair` / :func:`open_pair`: one party's pair ``(x_i, x_{i+1})`` sealed with
  AES-256-GCM under a key that X25519 between the client's ephemeral key and the party's session
  key gives (HKDF-SHA256, with the direction, session, request id, party index and both public
  keys in its info, and the same fields as associated data). Inputs go client -> party, outputs
  party -> client, under distinct keys; a pair sealed for one party, request or direction does not
  open as another.
"""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._errors import ParameterError, SerializationError, ShapeError, VerificationError

__all__ = ["open_pair", "pair_from_bytes", "pair_to_bytes", "seal_pair", "session_key_digest", "session_key_signer"]

_KEY_TAG = b"EDIL/replicated/session-key/v1"
_SEAL_TAG = b"EDIL/replicated/client-seal/v1"
_PAIR_MAGIC = b"EDRP"
#: Bound on the components a sealed pair may hold (each array), so untrusted bytes cannot ask for more.
MAX_PAIR_ELEMENTS = 1 << 24
_MAX_DIMS = 8
_HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def session_key_digest(service_id: str, session: bytes, party: int, public: bytes) -> bytes:
    """The 32-byte digest a node signs (chain key) for its session key.

    Args:
        service_id: the service the session serves (``""`` for a coordinator's own session).
        session: the session id.
        party: the party index (0, 1 or 2).
        public: the node's X25519 session public key (32 bytes).
    """
    if party not in (0, 1, 2) or len(public) != 32:
        raise ParameterError("party must be 0, 1 or 2 and public 32 bytes")
    body = _field(service_id.encode()) + _field(bytes(session)) + bytes([party]) + bytes(public)
    return hashlib.sha256(_KEY_TAG + body).digest()


def session_key_signer(digest: bytes, signature: Any) -> str:
    """The checksum address whose chain key made ``signature`` over ``digest``.

    Raises:
        VerificationError: not a 65-byte low-s ``r || s || v`` signature that recovers a key.
    """
    from eth_keys import keys
    from eth_keys.exceptions import BadSignature
    from eth_keys.exceptions import ValidationError as KeysValidationError

    if not isinstance(signature, bytes | bytearray) or len(signature) != 65:
        raise VerificationError("a session key signature must be 65 bytes r || s || v")
    sig = bytes(signature)
    r, s, v = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
    if v not in (27, 28) or s > _HALF_ORDER or not 0 < r < _N or s == 0:
        raise VerificationError("a session key signature is malformed or malleated (high s / bad v)")
    try:
        return str(keys.Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(digest).to_checksum_address())
    except (BadSignature, KeysValidationError, ValueError) as exc:
        raise VerificationError("a session key signature does not recover a public key") from exc


def pair_to_bytes(pair: Any) -> bytes:
    """A pair of equal-shape ``uint64`` arrays as bytes (shape header, then both arrays little-endian)."""
    a, b = (np.ascontiguousarray(np.asarray(v, np.uint64)) for v in pair)
    if a.shape != b.shape or a.ndim > _MAX_DIMS:
        raise ShapeError("a pair is two arrays of one shape")
    head = _PAIR_MAGIC + bytes([a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape)
    return head + a.astype("<u8").tobytes() + b.astype("<u8").tobytes()


def pair_from_bytes(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`pair_to_bytes`, for untrusted bytes.

    Raises:
        SerializationError: anything else (a wrong header, size or bound).
    """
    data = bytes(data)
    if len(data) < 5 or data[:4] != _PAIR_MAGIC or data[4] > _MAX_DIMS:
        raise SerializationError("not a replicated pair")
    ndim = data[4]
    if len(data) < 5 + 4 * ndim:
        raise SerializationError("a replicated pair's header is cut short")
    shape = struct.unpack(f">{ndim}I", data[5:5 + 4 * ndim])
    n = math.prod(shape)
    body = data[5 + 4 * ndim:]
    if n > MAX_PAIR_ELEMENTS or len(body) != 16 * n:
        raise SerializationError(f"a replicated pair of shape {shape} holds {len(body)} bytes")
    a = np.frombuffer(body[:8 * n], "<u8").astype(np.uint64).reshape(shape)
    b = np.frombuffer(body[8 * n:], "<u8").astype(np.uint64).reshape(shape)
    return a, b


def _aead(own: X25519PrivateKey, peer_public: bytes, *, own_is_client: bool, to_party: bool, session: bytes,
          request: bytes, party: int) -> tuple[AESGCM, bytes]:
    mine = own.public_key().public_bytes_raw()
    client_pub, party_pub = (mine, bytes(peer_public)) if own_is_client else (bytes(peer_public), mine)
    try:
        shared = own.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public)))
    except ValueError:  # not 32 bytes, or a point of small order (an all-zero agreement)
        raise VerificationError("a replicated seal's peer key is not an X25519 key of large order") from None
    if party not in (0, 1, 2):
        raise ParameterError("party must be 0, 1 or 2")
    ad = (_SEAL_TAG + (b"to-party" if to_party else b"to-client") + _field(bytes(session)) + _field(bytes(request))
          + bytes([party]) + client_pub + party_pub)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=ad).derive(shared)
    return AESGCM(key), ad


def seal_pair(own: X25519PrivateKey, peer_public: bytes, pair: Any, *, to_party: bool, session: bytes, request: bytes,
              party: int) -> bytes:
    """Seal ``pair`` from ``own`` to ``peer_public`` (``to_party``: the client seals an input pair;
    otherwise a party seals its output pair to the client).

    The key is used once (it binds both public keys, the request and the direction), so the nonce is fixed.

    Raises:
        VerificationError: ``peer_public`` is not a usable X25519 key.
    """
    aead, ad = _aead(own, peer_public, own_is_client=to_party, to_party=to_party, session=session, request=request, party=party)
    return aead.encrypt(bytes(12), pair_to_bytes(pair), ad)


def open_pair(own: X25519PrivateKey, peer_public: bytes, data: bytes, *, to_party: bool, session: bytes, request: bytes,
              party: int) -> tuple[np.ndarray, np.ndarray]:
    """Open what :func:`seal_pair` sealed (``to_party``: a party opens the client's input pair).

    Raises:
        VerificationError: bytes not sealed between these keys for this session, request, party and direction.
        SerializationError: a sealed body that is not a pair.
    """
    aead, ad = _aead(own, peer_public, own_is_client=not to_party, to_party=to_party, session=session, request=request, party=party)
    try:
        body = aead.decrypt(bytes(12), bytes(data), ad)
    except (InvalidTag, ValueError):
        raise VerificationError(f"party {party}'s sealed pair was not sealed for this session, request and party") from None
    return pair_from_bytes(body)
