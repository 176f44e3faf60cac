"""The wire record of a signed PoAI transcript: what a node sends, a coordinator journals and an oracle audits.

A record is a mapping with exactly these keys (values as the runtime's wire codec carries them)::

    job_id  bytes (32)     epoch  int (uint64)     node   str (0x address)
    params  bytes (32)     model  bytes (32)       input  bytes (32)      output  bytes (32)
    work    int (uint256)  start  int (ms, uint64) end    int (ms, uint64)
    sig     bytes (65, r || s || v)

The field checks are those of :class:`Transcript` and :class:`SignedTranscript`; decoding never
verifies the signature (that is :func:`verify_transcript`'s job, with the expected domain).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edil import SerializationError

from ._transcript import SignedTranscript, Transcript

__all__ = ["transcript_from_wire", "transcript_to_wire"]

_FIELDS = frozenset({"job_id", "epoch", "node", "params", "model", "input", "output", "work", "start", "end", "sig"})


def transcript_to_wire(st: SignedTranscript) -> dict[str, Any]:
    """The wire record of a signed transcript (see the module docstring).

    Args:
        st: the signed transcript.

    Returns:
        A dict with the keys of the wire record.
    """
    t = st.transcript
    return {
        "job_id": t.job_id,
        "epoch": t.epoch,
        "node": t.node,
        "params": t.scheme_params_hash,
        "model": t.model_commitment,
        "input": t.input_commitment,
        "output": t.output_commitment,
        "work": t.work_units,
        "start": t.started_at,
        "end": t.ended_at,
        "sig": st.signature,
    }


def transcript_from_wire(d: Any) -> SignedTranscript:
    """Decode a wire record from an untrusted source (a node's reply, a journal row).

    Args:
        d: the decoded record.

    Returns:
        The signed transcript (its signature not yet verified).

    Raises:
        SerializationError: ``d`` is not a mapping with exactly the record's keys, or a field has
            the wrong type or range. A string ``job_id`` is refused: :class:`Transcript` would
            hash it into a different id than the one signed.
    """
    if not isinstance(d, Mapping):
        raise SerializationError(f"bad transcript record: a mapping expected, got {type(d).__name__}")
    keys = set(d)
    if keys != _FIELDS:
        missing, extra = sorted(_FIELDS - keys), len(keys - _FIELDS)
        raise SerializationError(f"bad transcript record: missing {missing}, {extra} unexpected key(s)")
    if not isinstance(d["job_id"], bytes | bytearray):
        raise SerializationError("bad transcript record: job_id must be 32 bytes")
    try:
        t = Transcript(
            bytes(d["job_id"]), d["epoch"], d["node"], d["params"], d["model"], d["input"], d["output"], d["work"], d["start"], d["end"],
        )
        return SignedTranscript(t, d["sig"])
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"bad transcript record: {exc}") from None
