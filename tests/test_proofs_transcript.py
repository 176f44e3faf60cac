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
    AuditAttestation,
    Eip712Domain,
    EpochBatch,
    SignedTranscript,
    Transcript,
    attest_audit,
    audit_digest,
    availability_digest,
    batch_figures,
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
    with pytest.raises(AttributeError):
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
    count, work = (7, 10**30) if passed else (0, 0)
    message = {
        "types": {
            "EIP712Domain": EIP712_DOMAIN_FIELDS,
            "AuditAttestation": [
                {"name": "node", "type": "address"},
                {"name": "epoch", "type": "uint64"},
                {"name": "root", "type": "bytes32"},
                {"name": "taskCount", "type": "uint64"},
                {"name": "workUnits", "type": "uint128"},
                {"name": "passed", "type": "bool"},
                {"name": "reportHash", "type": "bytes32"},
            ],
        },
        "primaryType": "AuditAttestation",
        "domain": DOMAIN.as_dict(),
        "message": {"node": NODE.address, "epoch": 9, "root": root, "taskCount": count, "workUnits": work,
                    "passed": passed, "reportHash": report},
    }
    digest = audit_digest(DOMAIN, NODE.address, 9, root, count, work, passed, report)
    assert digest == eth_account_digest(message)
    att = AuditAttestation(NODE.address, 9, root, count, work, passed, report)
    assert att.digest(DOMAIN) == digest
    assert _hash_eip191_message(encode_typed_data(full_message=att.typed_data(DOMAIN))) == digest
    sig = sign_audit(OTHER, DOMAIN, NODE.address, 9, root, count, work, passed, report)
    assert recover_signer(digest, sig) == OTHER.address
    assert recover_signer(audit_digest(DOMAIN, NODE.address, 9, root, count, work, not passed, report), sig) != OTHER.address
    if passed:  # the figures are signed: another count or another total is another digest
        assert recover_signer(audit_digest(DOMAIN, NODE.address, 9, root, count + 1, work, True, report), sig) != OTHER.address
        assert recover_signer(audit_digest(DOMAIN, NODE.address, 9, root, count, work - 1, True, report), sig) != OTHER.address


def test_audit_attestation_field_rules():
    root, report = commit_bytes(b"root"), commit_bytes(b"report")
    with pytest.raises(ValueError, match="no work"):
        AuditAttestation(NODE.address, 1, root, 3, 0, False, report)
    with pytest.raises(ValueError, match="no work"):
        AuditAttestation(NODE.address, 1, root, 0, 5, False, report)
    with pytest.raises(ValueError, match="non-empty"):
        AuditAttestation(NODE.address, 1, root, 0, 0, True, report)
    with pytest.raises(ValueError):
        AuditAttestation(NODE.address, 1, root, 2**64, 1, True, report)
    with pytest.raises(ValueError):
        AuditAttestation(NODE.address, 1, root, 1, 2**128, True, report)
    with pytest.raises(TypeError):
        AuditAttestation(NODE.address, 1, root, 1, 1, 1, report)  # type: ignore[arg-type]


def _signed_batch(n: int = 4, epoch: int = 5) -> list[SignedTranscript]:
    return [sign_transcript(make(job_id=f"job-{i}", epoch=epoch, work_units=1000 * (i + 1)), NODE, DOMAIN)
            for i in range(n)]


def test_oracles_recount_the_batch_and_refuse_other_figures():
    signed = _signed_batch()
    root = EpochBatch(signed, DOMAIN).root
    assert batch_figures(signed, DOMAIN, node=NODE.address, epoch=5, root=root) == (4, 10_000)
    report = commit_bytes(b"report")
    honest = AuditAttestation(NODE.address, 5, root, 4, 10_000, True, report)
    sig = attest_audit(OTHER, DOMAIN, honest, signed)
    assert recover_signer(honest.digest(DOMAIN), sig) == OTHER.address
    # The node's own claim of 10^30 work units, or one task more, is refused by an honest oracle.
    for count, work in ((4, 10**30), (5, 10_000), (3, 10_000), (4, 9_999)):
        with pytest.raises(VerificationError, match="differ from the batch"):
            attest_audit(OTHER, DOMAIN, replace(honest, task_count=count, work_units=work), signed)
    # A batch that is not the one under the posted root is refused, whatever the figures.
    with pytest.raises(VerificationError, match="root posted"):
        attest_audit(OTHER, DOMAIN, replace(honest, root=commit_bytes(b"other root")), signed)
    with pytest.raises(VerificationError, match="root posted"):
        batch_figures(signed[:3], DOMAIN, node=NODE.address, epoch=5, root=root)
    with pytest.raises(VerificationError, match="root posted"):
        batch_figures(signed[::-1], DOMAIN, node=NODE.address, epoch=5, root=root)
    # Every signature is checked: a transcript with inflated work and the old signature is refused.
    forged = SignedTranscript(replace(signed[1].transcript, work_units=10**30), signed[1].signature)
    with pytest.raises(VerificationError, match="transcript 1"):
        batch_figures([signed[0], forged, *signed[2:]], DOMAIN, node=NODE.address, epoch=5, root=root)
    # A transcript of another node, even validly signed by it, or of another epoch, is not in the batch.
    foreign = sign_transcript(make(job_id="x", epoch=5, node=OTHER.address), OTHER, DOMAIN)
    with pytest.raises(VerificationError, match="not of node"):
        batch_figures([*signed, foreign], DOMAIN, node=NODE.address, epoch=5, root=root)
    with pytest.raises(VerificationError, match="not of node"):
        batch_figures(_signed_batch(2, epoch=6), DOMAIN, node=NODE.address, epoch=5, root=root)
    with pytest.raises(VerificationError, match="no transcript"):
        batch_figures([], DOMAIN, node=NODE.address, epoch=5, root=root)
    with pytest.raises(TypeError):
        batch_figures([s.transcript for s in signed], DOMAIN, node=NODE.address, epoch=5, root=root)  # type: ignore[misc]
    # A failing attestation attests no work and needs no recount.
    failing = AuditAttestation(NODE.address, 5, root, 0, 0, False, report)
    assert recover_signer(failing.digest(DOMAIN), attest_audit(OTHER, DOMAIN, failing, [])) == OTHER.address


def test_availability_input_checks():
    with pytest.raises(ValueError):
        availability_digest(LEDGER, NODE.address, [1, 2], [255])
    with pytest.raises(ValueError):
        availability_digest(LEDGER, NODE.address, [1], [256])
    with pytest.raises(ValueError):
        availability_digest(LEDGER, NODE.address, [], [])
    with pytest.raises(TypeError):
        audit_digest(DOMAIN, NODE.address, 1, bytes(32), 1, 1, 1, bytes(32))  # type: ignore[arg-type]


def test_signatures_use_the_native_secp256k1_backend():
    """eth-keys signs through libsecp256k1 (coincurve), not its pure-Python fallback (~30x slower)."""
    from eth_keys.backends import get_backend

    assert type(get_backend()).__name__ == "CoinCurveECCBackend"
