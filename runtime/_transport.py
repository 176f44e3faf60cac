"""Sealed, signed, replay-protected messages between the coordinator and nodes.

An envelope is ``SealedBox(recipient X25519 key).encrypt(Ed25519-signed header || body)``:

* **confidential**: only the recipient's X25519 key opens it (PyNaCl ``SealedBox``);
* **authentic**: the sender's Ed25519 signature covers the whole message, and the recipient
  accepts only senders it trusts (a node: the coordinator; the coordinator: admitted nodes);
  since envelope version 2 (``"v": 2`` in the signed header) it signs
  ``ENVELOPE_SIG_TAG || SHA-256(header bytes)``, which binds every byte as the message itself
  did, with one hash pass instead of Ed25519's two SHA-512 passes over megabytes of task. The
  tag starts with ``EDIL``, so no wire message (``EW1...``, what every other Ed25519 signature
  of the runtime covers) is ever a signed digest. Envelopes without ``"v"`` (version 1: the
  signature over the header bytes themselves) are still accepted from older senders; any other
  version is refused;
* **bound**: the signed header names the recipient's box key, so a signed message cannot be
  re-sealed to another node;
* **fresh**: a 16-byte nonce and a millisecond timestamp; a :class:`ReplayGuard` refuses a
  nonce seen before and anything older than its window.

Every failure raises :class:`~edil.VerificationError` (:class:`~edil.ReplayError` for a
replay); nothing half-verified is ever returned. Clocks and nonces are explicit parameters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.public
import nacl.signing

from edil import ParameterError, ReplayError, SerializationError, VerificationError

from . import _wire
from ._deps import consteq

__all__ = ["Message", "ReplayGuard", "open_envelope", "seal_envelope"]

#: The envelope version :func:`seal_envelope` writes (2: the signature covers a tagged SHA-256 of the header).
ENVELOPE_VERSION = 2
#: Domain tag of a version-2 signature: ``sign(ENVELOPE_SIG_TAG || sha256(header bytes))``.
ENVELOPE_SIG_TAG = b"EDIL/envelope/v2/sha256\x00"


def _signed_digest(message: bytes) -> bytes:
    return ENVELOPE_SIG_TAG + hashlib.sha256(message).digest()


@dataclass(frozen=True)
class Message:
    """An opened, verified envelope."""

    kind: str
    body: Any
    sender: bytes
    nonce: bytes
    timestamp_ms: int


class ReplayGuard:
    """Remembers nonces for ``window_ms``; older messages are refused outright.

    Args:
        window_ms: how old (and how far in the future) a message may be.
    """

    def __init__(self, window_ms: int = 120_000) -> None:
        if window_ms <= 0:
            raise ParameterError("window_ms must be positive")
        self.window_ms = int(window_ms)
        self._seen: dict[bytes, int] = {}
        self._last_purge = 0

    def check(self, nonce: bytes, timestamp_ms: int, now_ms: int) -> None:
        """Accept ``nonce`` once. Raises :class:`~edil.ReplayError` / :class:`~edil.VerificationError`."""
        if abs(now_ms - timestamp_ms) > self.window_ms:
            raise VerificationError("message timestamp is outside the freshness window")
        if nonce in self._seen:
            raise ReplayError("message nonce was seen before (replay)")
        self._seen[nonce] = timestamp_ms
        if len(self._seen) > 4096 and now_ms - self._last_purge > self.window_ms // 4:
            cutoff = now_ms - self.window_ms
            self._seen = {n: t for n, t in self._seen.items() if t >= cutoff}
            self._last_purge = now_ms


def seal_envelope(
    kind: str,
    body: Any,
    *,
    signing_key: nacl.signing.SigningKey,
    recipient_box_key: bytes,
    nonce: bytes,
    now_ms: int,
) -> bytes:
    """Sign ``(kind, body)`` with ``signing_key`` and seal it to ``recipient_box_key``.

    Args:
        kind: message type, e.g. ``"task"``.
        body: any :mod:`wire <edil.runtime._wire>` value.
        signing_key: the sender's Ed25519 key.
        recipient_box_key: the recipient's X25519 public key (32 bytes).
        nonce: 16 fresh bytes (inject them; the coordinator uses a counter + random prefix).
        now_ms: the sender's clock in milliseconds.
    """
    if not isinstance(nonce, bytes) or len(nonce) != 16:
        raise ParameterError("nonce must be 16 bytes")
    header = {
        "kind": kind,
        "body": body,
        "from": bytes(signing_key.verify_key),
        "to": bytes(recipient_box_key),
        "nonce": nonce,
        "ts": int(now_ms),
        "v": ENVELOPE_VERSION,
    }
    message = _wire.dumps(header)
    signature = signing_key.sign(_signed_digest(message)).signature
    return nacl.public.SealedBox(nacl.public.PublicKey(bytes(recipient_box_key))).encrypt(signature + message)


def open_envelope(
    envelope: bytes,
    *,
    box_key: nacl.public.PrivateKey,
    trusted: Iterable[bytes],
    guard: ReplayGuard,
    now_ms: int,
    kinds: Iterable[str] | None = None,
) -> Message:
    """Unseal, authenticate and freshness-check an envelope; fail closed.

    Args:
        envelope: bytes made by :func:`seal_envelope`.
        box_key: the recipient's X25519 private key.
        trusted: Ed25519 public keys whose messages are accepted.
        guard: the recipient's replay guard.
        now_ms: the recipient's clock in milliseconds.
        kinds: accepted message kinds (all when ``None``).

    Raises:
        VerificationError: cannot unseal, unknown or bad signer, wrong recipient, stale.
        ReplayError: the nonce was seen before.
    """
    if not isinstance(envelope, bytes | bytearray):
        raise VerificationError("envelope must be bytes")
    try:
        signed = nacl.public.SealedBox(box_key).decrypt(bytes(envelope))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise VerificationError("envelope cannot be unsealed with this key") from None
    if len(signed) < 64:
        raise VerificationError("envelope is too short to be signed")
    try:
        message = signed[64:]
        header = _wire.loads(message)
        sender = header["from"]
        if not isinstance(header, dict) or not isinstance(sender, bytes) or len(sender) != 32:
            raise VerificationError("envelope header is malformed")
    except (SerializationError, KeyError, TypeError):
        raise VerificationError("envelope header is malformed") from None
    # Compare against every trusted key in constant time; no early exit on a match.
    match = False
    for key in trusted:
        match |= consteq(key, sender)
    if not match:
        raise VerificationError("envelope is signed by an untrusted key")
    # The version sits in the signed header: changing it changes the bytes either signature covers.
    version = header.get("v", 1)
    if type(version) is not int or version not in (1, ENVELOPE_VERSION):
        raise VerificationError("envelope version is not supported")
    try:
        nacl.signing.VerifyKey(sender).verify(_signed_digest(message) if version == ENVELOPE_VERSION else message, signed[:64])
    except (nacl.exceptions.BadSignatureError, ValueError):
        raise VerificationError("envelope signature is invalid") from None
    try:
        kind, to, nonce, ts = header["kind"], header["to"], header["nonce"], header["ts"]
    except KeyError:
        raise VerificationError("envelope header is incomplete") from None
    if not isinstance(to, bytes) or not consteq(to, bytes(box_key.public_key)):
        raise VerificationError("envelope is addressed to another recipient")
    if not isinstance(kind, str) or (kinds is not None and kind not in set(kinds)):
        raise VerificationError(f"unexpected message kind {kind!r}")
    if not isinstance(nonce, bytes) or len(nonce) != 16 or not isinstance(ts, int):
        raise VerificationError("envelope nonce or timestamp is malformed")
    guard.check(nonce, ts, int(now_ms))
    return Message(kind, header.get("body"), sender, nonce, ts)
