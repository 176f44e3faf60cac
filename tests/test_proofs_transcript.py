"""PoAI transcripts and oracle attestations: EIP-712 conformance, signatures that fail closed."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from edil import VerificationError
from edil.proofs import (
    Eip712Domain,
    EpochBatch,
    SignedTranscript,
    Transcript,
    audit_digest,
    availability_digest,
    commit_bytes,
    recover_signer,
    sign_audit,
    sign_availability,
    sign_transcript,
    verify_transcript,
    verify_transcript_inclusion,
)
from edil.proofs._hashing import EIP712_DOMAIN_FIELDS, SECP256K1_N

NODE = Account.from_key(b"\x01" * 32)
OTHER = Account.from_key(b"\x02" * 32)
DOMAIN = Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "5f" * 20)

b32 = st.binary(min_size=32, max_size=32)
u64 = st.integers(0, 2**64 - 1)


def make(**overrides) -> Transcript:
    base = dict(
        job_id="job-1",
        epoch=7,
        node=NODE.address,
        scheme_params_hash=commit_bytes(b"params"),
        model_commitment=commit_bytes(b"model"),
        input_commitment=commit_bytes(b"input"),
        output_commitment=commit_bytes(b"output"),
        work_units=1797 * 64 * 128,
        started_at=1_700_000_000_000,
        ended_at=1_700_000_000_042,
    )
    base.update(overrides)
    return Transcript(**base)


def eth_account_digest(full_message: dict) -> bytes:
    return _hash_eip191_message(encode_typed_data(full_message=full_message))


@settings(max_examples=30, deadline=None)
@given(job=b32, epoch=u64, params=b32, model=b32, inp=b32, out=b32, work=st.integers(0, 2**256 - 1),
       start=u64, extra=st.integers(0, 10**6), chain_id=st.integers(1, 2**64))
def test_digest_equals_eth_account_typed_data(job, epoch, params, model, inp, out, work, start, extra, chain_id):
    end = min(start + extra, 2**64 - 1)
    t = Transcript(job, epoch, NODE.address, params, model, inp, out, work, start, end)
    domain = Eip712Domain("EDIL PoAI", "1", chain_id, "0x" + "ab" * 20)
    assert t.digest(domain) == eth_account_digest(t.typed_data(domain))


def test_sign_and_verify_round_trip():
    signed = sign_transcript(make(), NODE, DOMAIN)
    assert verify_transcript(signed, DOMAIN) == NODE.address
    assert verify_transcript(signed, DOMAIN, expected_signer=NODE.address.lower()) == NODE.address
    # eth_account's own typed-data signer produces a signature we accept.
    theirs = Account.sign_typed_data(NODE.key, full_message=make().typed_data(DOMAIN)).signature
    assert verify_transcript(SignedTranscript(make(), bytes(theirs)), DOMAIN) == NODE.address


@pytest.mark.parametrize("field", [f.name for f in fields(Transcript) if f.name != "node"])
def test_any_tampered_field_fails(field):
    signed = sign_transcript(make(), NODE, DOMAIN)
    value = getattr(signed.transcript, field)
    if isinstance(value, bytes):
        new = bytes([value[0] ^ 1]) + value[1:]
    else:
        new = value + 1
    if field == "started_at":
        new = value - 1
    tampered = SignedTranscript(replace(signed.transcript, **{field: new}), signed.signature)
    with pytest.raises(VerificationError):
        verify_transcript(tampered, DOMAIN)


def test_wrong_signer_domain_or_malleated_signature_fails():
    t = make()
    signed = sign_transcript(t, NODE, DOMAIN)
    # Signed by another key but claiming NODE.
    forged = SignedTranscript(t, sign_transcript(make(node=OTHER.address), OTHER, DOMAIN).signature)
    cases = [
        (forged, DOMAIN),
        (signed, replace(DOMAIN, chain_id=1)),
        (signed, replace(DOMAIN, verifying_contract="0x" + "11" * 20)),
        (signed, replace(DOMAIN, name="EDIL AvailabilityLedger")),
        (SignedTranscript(t, b"\x00" * 65), DOMAIN),
        (SignedTranscript(t, signed.signature[:64] + b"\x1d"), DOMAIN),
    ]
    s = int.from_bytes(signed.signature[32:64], "big")
    high_s = signed.signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([signed.signature[64] ^ 1])
    cases.append((SignedTranscript(t, high_s), DOMAIN))
    for item, domain in cases:
        with pytest.raises(VerificationError):
            verify_transcript(item, domain)
    with pytest.raises(VerificationError):
        verify_transcript(signed, DOMAIN, expected_signer=OTHER.address)
    with pytest.raises(ValueError):
        sign_transcript(t, OTHER, DOMAIN)  # key does not match transcript.node


def test_field_validation():
    assert make(job_id="x").job_id == commit_bytes(b"x")
    with pytest.raises(ValueError):
        make(model_commitment=b"\x00" * 31)
    with pytest.raises(TypeError):
        make(model_commitment="00" * 32)
    with pytest.raises(ValueError):
        make(epoch=-1)
    with pytest.raises(ValueError):
        make(epoch=2**64)
    with pytest.raises(TypeError):
        make(work_units=True)
    with pytest.raises(ValueError):
        make(started_at=10, ended_at=9)
    with pytest.raises(ValueError):
        make(node="0x1234")
    with pytest.raises(Exception):
        make().epoch = 3  # frozen


def test_epoch_batch():
    ts = [make(job_id=f"j{i}", work_units=i) for i in range(9)]
    batch = EpochBatch([sign_transcript(t, NODE, DOMAIN) for t in ts], DOMAIN)
    assert (batch.task_count, batch.work_units, batch.depth) == (9, sum(range(9)), 4)
    for i, t in enumerate(ts):
        assert batch.digest(i) == t.digest(DOMAIN)
        verify_transcript_inclusion(t, batch.proof(i), batch.root, DOMAIN)
    with pytest.raises(VerificationError):
        verify_transcript_inclusion(replace(ts[2], work_units=99), batch.proof(2), batch.root, DOMAIN)
    with pytest.raises(VerificationError):
        verify_transcript_inclusion(ts[2], batch.proof(3), batch.root, DOMAIN)
    with pytest.raises(ValueError):
        EpochBatch([make(), make(epoch=8)], DOMAIN)
    with pytest.raises(ValueError):
        EpochBatch([], DOMAIN)
    bad = SignedTranscript(ts[0], sign_transcript(ts[1], NODE, DOMAIN).signature)
    with pytest.raises(VerificationError):
        EpochBatch([bad], DOMAIN)


LEDGER = Eip712Domain("EDIL AvailabilityLedger", "1", 31337, "0x" + "4c" * 20)


@settings(max_examples=25, deadline=None)
@given(pairs=st.lists(st.tuples(u64, st.integers(0, 255)), min_size=1, max_size=12))
def test_availability_digest_equals_eth_account(pairs):
    epochs, avail = [p[0] for p in pairs], [p[1] for p in pairs]
    message = {
        "types": {
            "EIP712Domain": EIP712_DOMAIN_FIELDS,
            "AvailabilityClaim": [
                {"name": "node", "type": "address"},
                {"name": "epochs", "type": "uint64[]"},
                {"name": "availabilities", "type": "uint8[]"},
            ],
        },
        "primaryType": "AvailabilityClaim",
        "domain": LEDGER.as_dict(),
        "message": {"node": NODE.address, "epochs": epochs, "availabilities": avail},
    }
    digest = availability_digest(LEDGER, NODE.address, epochs, avail)
    assert digest == eth_account_digest(message)
    assert recover_signer(digest, sign_availability(OTHER, LEDGER, NODE.address, epochs, avail)) == OTHER.address


@pytest.mark.parametrize("passed", [True, False])
def test_audit_digest_equals_eth_account(passed):
    root, report = commit_bytes(b"root"), commit_bytes(b"report")
    message = {
        "types": {
            "EIP712Domain": EIP712_DOMAIN_FIELDS,
            "AuditAttestation": [
                {"name": "node", "type": "address"},
                {"name": "epoch", "type": "uint64"},
                {"name": "root", "type": "bytes32"},
                {"name": "passed", "type": "bool"},
                {"name": "reportHash", "type": "bytes32"},
            ],
        },
        "primaryType": "AuditAttestation",
        "domain": DOMAIN.as_dict(),
        "message": {"node": NODE.address, "epoch": 9, "root": root, "passed": passed, "reportHash": report},
    }
    digest = audit_digest(DOMAIN, NODE.address, 9, root, passed, report)
    assert digest == eth_account_digest(message)
    sig = sign_audit(OTHER, DOMAIN, NODE.address, 9, root, passed, report)
    assert recover_signer(digest, sig) == OTHER.address
    assert recover_signer(audit_digest(DOMAIN, NODE.address, 9, root, not passed, report), sig) != OTHER.address


def test_availability_input_checks():
    with pytest.raises(ValueError):
        availability_digest(LEDGER, NODE.address, [1, 2], [255])
    with pytest.raises(ValueError):
        availability_digest(LEDGER, NODE.address, [1], [256])
    with pytest.raises(ValueError):
        availability_digest(LEDGER, NODE.address, [], [])
    with pytest.raises(TypeError):
        audit_digest(DOMAIN, NODE.address, 1, bytes(32), 1, bytes(32))  # type: ignore[arg-type]


def test_signatures_use_the_native_secp256k1_backend():
    """eth-keys signs through libsecp256k1 (coincurve), not its pure-Python fallback (~30x slower)."""
    from eth_keys.backends import get_backend

    assert type(get_backend()).__name__ == "CoinCurveECCBackend"
