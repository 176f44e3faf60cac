"""The EDIL exception tree.

Every error EDIL raises on purpose derives from :class:`EdilError`, so a caller can catch
the whole family with one ``except``. The tree is small and flat on purpose::

    EdilError
    ├── EncodingError (ValueError)        a value cannot be encoded/decoded faithfully
    │   └── OverflowRangeError            outside the fixed-point range; never wraps silently
    ├── ShapeError (ValueError)           operand shapes do not agree
    ├── SchemeMismatchError (ValueError)  operands from different schemes, parameters or sharings
    ├── ParameterError (ValueError)       scheme parameters cannot hold the computation, or an argument's value is invalid
    ├── UnsupportedOperationError (TypeError)  the scheme cannot do this operation, or an argument has a type it does not take
    ├── SerializationError (ValueError)   bytes are corrupt, truncated or from another context
    ├── VerificationError                 a signature, commitment, proof or audit failed
    │   └── ReplayError                   a message or claim was seen before
    ├── AuthorizationError                a node or oracle is not admitted (dAuth)
    ├── GatewayError                      the HTTP gateway refused a request, with its status (edil.client)
    ├── ObjectNotFoundError (LookupError)  no R1FS object under this CID (edil.runtime)
    ├── ChainError                        the chain reverted a call (the reason is kept)
    │   ├── ChainAuthorizationError       (also AuthorizationError) the chain refused the caller
    │   ├── ChainVerificationError        (also VerificationError) the chain rejected a signature or proof
    │   ├── ChainReplayError              (also ReplayError) the chain already recorded it
    │   ├── ChainTooEarlyError            a step whose time has not come (an escrow slot before its audit window)
    │   ├── ChainFundsError               a token movement refused: balance, allowance or stake too small
    │   ├── ChainUnavailableError         the chain node was unreachable or did not answer in time
    │   └── ChainResponseError            the chain node's answer was not well-formed JSON-RPC
    └── RuntimeTaskError                  a task could not be completed by any node

The ``Chain*`` classes live in :mod:`edil.proofs` (which owns the chain client) and
``ObjectNotFoundError`` in :mod:`edil.runtime` (R1FS), ``GatewayError`` in :mod:`edil.client`; every other class is exported by
:mod:`edil`. No package defines an error outside this tree (``tests/test_layers.py`` checks
that every exception class under ``edil``, ``edil.proofs``, ``edil.runtime`` and ``edil.app``
derives from :class:`EdilError` and is named here).

Errors that are caller mistakes also derive from the matching builtin (``ValueError`` or
``TypeError``), so generic code that catches those keeps working.
"""

from __future__ import annotations

__all__ = [
    "AuthorizationError",
    "ChainError",
    "EdilError",
    "EncodingError",
    "OverflowRangeError",
    "ParameterError",
    "ReplayError",
    "RuntimeTaskError",
    "SchemeMismatchError",
    "SerializationError",
    "ShapeError",
    "UnsupportedOperationError",
    "VerificationError",
]


class EdilError(Exception):
    """Root of every error EDIL raises on purpose."""


class EncodingError(EdilError, ValueError):
    """A value cannot be encoded or decoded faithfully (NaN, inf, wrong dtype...)."""


class OverflowRangeError(EncodingError):
    """A value lies outside the representable fixed-point range."""


class ShapeError(EdilError, ValueError):
    """Operand shapes do not agree; the message names both shapes."""


class SchemeMismatchError(EdilError, ValueError):
    """Operands come from different schemes, parameters, contexts or sharings."""


class ParameterError(EdilError, ValueError):
    """Scheme parameters cannot hold the computation (depth, headroom, precision), or an argument
    has an invalid value (out of range, empty, an unknown name or id)."""


class UnsupportedOperationError(EdilError, TypeError):
    """The scheme cannot perform this operation (e.g. ciphertext products under Paillier), or an argument
    is of a type the function does not take (a commitment of a non-array, a transcript that is not one)."""


class SerializationError(EdilError, ValueError):
    """Serialized bytes are corrupt, truncated, of the wrong kind or from another context."""


class VerificationError(EdilError):
    """A signature, commitment, inclusion proof or audit did not verify. Fail closed."""


class ReplayError(VerificationError):
    """A message, update or claim was presented a second time."""


class AuthorizationError(EdilError):
    """A node or oracle is not admitted by the on-chain registry (dAuth), or was revoked."""


class ChainError(EdilError):
    """A chain call failed or reverted; ``reason`` holds the revert reason when known."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class RuntimeTaskError(EdilError):
    """A task could not be completed by any eligible node."""
