"""The pieces of :mod:`edil.proofs` the runtime uses, imported in one place."""

from __future__ import annotations

try:  # the curated public surface, once edil.proofs exports it
    from edil.proofs import (  # type: ignore[attr-defined]
        Eip712Domain,
        EpochBatch,
        SignedTranscript,
        Transcript,
        commit_bytes,
        commit_json,
        sign_transcript,
        verify_transcript,
    )
except ImportError:  # pragma: no cover - while edil.proofs/__init__.py is being written
    from edil.proofs._commit import commit_bytes, commit_json
    from edil.proofs._hashing import Eip712Domain
    from edil.proofs._transcript import (
        EpochBatch,
        SignedTranscript,
        Transcript,
        sign_transcript,
        verify_transcript,
    )

from edil.proofs._hashing import consteq, keccak256, recover_signer, sign_digest

__all__ = [
    "Eip712Domain",
    "EpochBatch",
    "SignedTranscript",
    "Transcript",
    "commit_bytes",
    "commit_json",
    "consteq",
    "keccak256",
    "recover_signer",
    "sign_digest",
    "sign_transcript",
    "verify_transcript",
]
