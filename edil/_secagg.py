"""Secure-aggregation primitives: identities, signed updates, pairwise masks, Paillier packing.

Hazardous on their own; :mod:`edil.federated` composes them into a protocol.

Masks (Bonawitz et al., CCS 2017, single masking): workers ``i`` and ``j`` agree on an X25519
shared secret; ``blake2b(secret; round, i, j)`` seeds a threefry key whose ``jax.random.bits``
stream ``m_ij`` over ``uint64`` is the mask. The worker that sorts first adds ``m_ij``, the other
subtracts it, so the masks cancel in the ring sum. threefry is used because it is bit-identical on
every JAX backend: two workers on different hardware must expand the same mask.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing
import numpy as np

from edil._errors import ParameterError, UnsupportedOperationError, VerificationError

_PERSON_MASK = b"edil-secagg-m1"
_SIGN_TAG = b"edil/federated/update/v1"
_REVEAL_TAG = b"edil/federated/reveal/v1"
_U64_NEG1 = np.uint64(2**64 - 1)


@dataclass(frozen=True, eq=False)
class WorkerIdentity:
    """A worker's long-term keys: Ed25519 for signing updates, X25519 for mask agreement.

    Derived deterministically from a 32-byte ``seed`` so that tests are reproducible; in
    production the seed comes from ``os.urandom(32)``.
    """

    worker_id: str
    signing_key: nacl.signing.SigningKey
    dh_key: nacl.public.PrivateKey

    @classmethod
    def from_seed(cls, worker_id: str, *, seed: bytes) -> WorkerIdentity:
        """Derive both key pairs from ``seed`` (32 bytes).

        Raises:
            UnsupportedOperationError: ``worker_id`` is not a non-empty str or ``seed`` is not bytes.
            ParameterError: ``seed`` is not 32 bytes long.
        """
        if not isinstance(worker_id, str) or not worker_id:
            raise UnsupportedOperationError("worker_id must be a non-empty str")
        if not isinstance(seed, bytes):
            raise UnsupportedOperationError(f"seed must be 32 bytes, got a {type(seed).__name__}")
        if len(seed) != 32:
            raise ParameterError(f"seed must be 32 bytes, got {len(seed)}")
        sign_seed = hashlib.blake2b(seed, digest_size=32, person=b"edil-id-sign").digest()
        dh_seed = hashlib.blake2b(seed, digest_size=32, person=b"edil-id-dh").digest()
        return cls(worker_id, nacl.signing.SigningKey(sign_seed), nacl.public.PrivateKey(dh_seed))

    @property
    def verify_key(self) -> bytes:
        """Ed25519 public key (32 bytes)."""
        return bytes(self.signing_key.verify_key)

    @property
    def dh_public(self) -> bytes:
        """X25519 public key (32 bytes)."""
        return bytes(self.dh_key.public_key)


def _lp(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def pair_seed(own: nacl.public.PrivateKey, peer_public: bytes, round_id: int, a: str, b: str) -> bytes:
    """The 8-byte mask seed that workers ``a`` and ``b`` share for ``round_id``.

    Per-round seeds (not the long-term secret) are what survivors reveal after a dropout, so a
    reveal does not unmask the pair's other rounds.
    """
    secret = nacl.bindings.crypto_scalarmult(bytes(own), peer_public)
    lo, hi = sorted((a, b))
    h = hashlib.blake2b(key=secret, digest_size=8, person=_PERSON_MASK)
    h.update(struct.pack(">Q", round_id) + _lp(lo.encode()) + _lp(hi.encode()))
    return h.digest()


@functools.partial(jax.jit, static_argnums=(2,))
def _mask_sum(key_data: jax.Array, signs: jax.Array, size: int) -> jax.Array:
    keys = jax.random.wrap_key_data(key_data, impl="threefry2x32")
    bits = jax.vmap(lambda k: jax.random.bits(k, (size,), jnp.uint64))(keys)
    return jnp.sum(bits * signs[:, None], axis=0, dtype=jnp.uint64)


def signed_mask_sum(seeds: Sequence[bytes], signs: Sequence[int], size: int) -> np.ndarray:
    """``sum_k signs[k] * expand(seeds[k])`` over ``uint64`` (wrapping), ``signs`` in {+1, -1}."""
    if not seeds:
        return np.zeros(size, np.uint64)
    key_data = np.frombuffer(b"".join(seeds), dtype=">u4").astype(np.uint32).reshape(len(seeds), 2)
    sg = np.array([np.uint64(1) if s > 0 else _U64_NEG1 for s in signs], dtype=np.uint64)
    with jax.enable_x64(True):
        return np.asarray(_mask_sum(jnp.asarray(key_data), jnp.asarray(sg), size))


def update_message(round_id: int, worker_id: str, scheme: str, shape: tuple[int, ...], payload: bytes) -> bytes:
    """Canonical bytes an update's signature covers (round, worker, scheme, shape, payload)."""
    dims = b"".join(struct.pack(">Q", d) for d in shape)
    return (_SIGN_TAG + struct.pack(">Q", round_id) + _lp(worker_id.encode()) + _lp(scheme.encode())
            + _lp(dims) + hashlib.blake2b(payload, digest_size=32).digest())


def reveal_message(round_id: int, worker_id: str, dropped: str, seed: bytes) -> bytes:
    """Canonical bytes a survivor signs when it reveals its mask seed with a dropped worker."""
    return _REVEAL_TAG + struct.pack(">Q", round_id) + _lp(worker_id.encode()) + _lp(dropped.encode()) + _lp(seed)


def sign(identity: WorkerIdentity, message: bytes) -> bytes:
    """Detached Ed25519 signature (64 bytes)."""
    return identity.signing_key.sign(message).signature


def verify(verify_key: bytes, message: bytes, signature: bytes, *, what: str) -> None:
    """Check a detached Ed25519 signature; fail closed.

    Raises:
        VerificationError: the signature does not verify.
    """
    try:
        nacl.signing.VerifyKey(verify_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError) as exc:
        raise VerificationError(f"bad signature on {what}") from exc


def digest_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a, b)


# --- Paillier packing (phe) -------------------------------------------------------------------

_SLOT_BYTES = 9  # 64-bit ring element + 8 bits of carry headroom: sums of up to 256 updates


def slots_per_plaintext(n_bits: int) -> int:
    """Ring elements packed in one Paillier plaintext of an ``n_bits`` modulus."""
    return (n_bits - 2) // (8 * _SLOT_BYTES)


def pack(values: np.ndarray, slots: int) -> list[int]:
    """Pack ``uint64`` ring elements into integers, ``slots`` per integer, 72-bit slots."""
    n = len(values)
    padded = np.zeros(((n + slots - 1) // slots) * slots, dtype=np.uint64)
    padded[:n] = values
    lay = np.zeros((len(padded), _SLOT_BYTES), dtype=np.uint8)
    lay[:, :8] = padded.astype("<u8").view(np.uint8).reshape(-1, 8)
    raw = lay.reshape(-1, slots * _SLOT_BYTES)
    return [int.from_bytes(row.tobytes(), "little") for row in raw]


def unpack(ints: Sequence[int], slots: int, size: int) -> np.ndarray:
    """Inverse of :func:`pack` after summation: each slot taken mod 2^64 (the carry byte dropped)."""
    width = slots * _SLOT_BYTES
    raw = b"".join(int(v).to_bytes(width, "little") for v in ints)
    lay = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _SLOT_BYTES)
    return np.ascontiguousarray(lay[:, :8]).view("<u8").reshape(-1)[:size].astype(np.uint64)


MAX_PACKED_ADDENDS = 2 ** (8 * (_SLOT_BYTES - 8))
