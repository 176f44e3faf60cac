"""Identities, sealed envelopes, replay and forgery, and the node's refusal of bad payloads."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edil import ReplayError, SerializationError, VerificationError
from edil import runtime as rt
from edil.proofs import Eip712Domain
from edil.runtime import _wire

DOMAIN = Eip712Domain("EDIL PoAI", "1", 1337, "0x" + "11" * 20)
NOW = 1_700_000_000_000


def nonces():
    i = 0
    while True:
        i += 1
        yield i.to_bytes(16, "big")


def test_identity_is_reproducible_and_card_binds_keys() -> None:
    a, b = rt.NodeIdentity.from_seed(b"s" * 32), rt.NodeIdentity.from_seed(b"s" * 32)
    assert a.address == b.address and a.chain_key == b.chain_key
    card = a.card(rt.Capabilities(("gpu",), 8 << 30))
    assert card.verify() is card and card.capabilities.gpu
    forged = dataclasses.replace(card, box_key=bytes(32))
    with pytest.raises(VerificationError):
        forged.verify()
    assert rt.NodeCard.from_wire(_wire.loads(_wire.dumps(card.to_wire()))) == card


def test_identity_rejects_short_seed() -> None:
    with pytest.raises(ValueError):
        rt.NodeIdentity.from_seed(b"short")


def _pair():
    coord = rt.CoordinatorIdentity.from_seed(b"c" * 32)
    node = rt.NodeIdentity.from_seed(b"n" * 32)
    return coord, node


def test_envelope_roundtrip_and_replay() -> None:
    coord, node = _pair()
    env = rt.seal_envelope("task", {"x": 1}, signing_key=coord.signing, recipient_box_key=bytes(node.box.public_key), nonce=b"\x01" * 16, now_ms=NOW)
    guard = rt.ReplayGuard()
    msg = rt.open_envelope(env, box_key=node.box, trusted=[coord.verify_key], guard=guard, now_ms=NOW + 5)
    assert (msg.kind, msg.body, msg.sender) == ("task", {"x": 1}, coord.verify_key)
    with pytest.raises(ReplayError):
        rt.open_envelope(env, box_key=node.box, trusted=[coord.verify_key], guard=guard, now_ms=NOW + 6)


def test_envelope_forgeries_are_rejected() -> None:
    coord, node = _pair()
    other = rt.NodeIdentity.from_seed(b"o" * 32)
    mallory = rt.CoordinatorIdentity.from_seed(b"m" * 32)
    box = bytes(node.box.public_key)
    kw = dict(box_key=node.box, trusted=[coord.verify_key], now_ms=NOW)
    forged = rt.seal_envelope("task", {}, signing_key=mallory.signing, recipient_box_key=box, nonce=b"\x02" * 16, now_ms=NOW)
    with pytest.raises(VerificationError, match="untrusted"):
        rt.open_envelope(forged, guard=rt.ReplayGuard(), **kw)
    # signed by the coordinator for another node, then re-sealed to this one
    for_other = rt.seal_envelope("task", {}, signing_key=coord.signing, recipient_box_key=bytes(other.box.public_key), nonce=b"\x03" * 16, now_ms=NOW)
    inner = __import__("nacl.public").public.SealedBox(other.box).decrypt(for_other)
    resealed = __import__("nacl.public").public.SealedBox(node.box.public_key).encrypt(inner)
    with pytest.raises(VerificationError, match="another recipient"):
        rt.open_envelope(resealed, guard=rt.ReplayGuard(), **kw)
    good = rt.seal_envelope("task", {}, signing_key=coord.signing, recipient_box_key=box, nonce=b"\x04" * 16, now_ms=NOW)
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(VerificationError):
        rt.open_envelope(tampered, guard=rt.ReplayGuard(), **kw)
    stale = rt.seal_envelope("task", {}, signing_key=coord.signing, recipient_box_key=box, nonce=b"\x05" * 16, now_ms=NOW - 10**6)
    with pytest.raises(VerificationError, match="freshness"):
        rt.open_envelope(stale, guard=rt.ReplayGuard(), **kw)
    with pytest.raises(VerificationError, match="kind"):
        rt.open_envelope(good, guard=rt.ReplayGuard(), kinds=("ping",), **kw)
    with pytest.raises(VerificationError):
        rt.open_envelope(b"garbage", guard=rt.ReplayGuard(), **kw)


def test_node_refuses_unauthenticated_payloads_and_replays() -> None:
    coord, ident = _pair()
    node = rt.EdgeNode(ident, coordinator_key=coord.verify_key, coordinator_box_key=coord.box_key, domain=DOMAIN, capabilities=rt.Capabilities(), clock=lambda: NOW / 1000)
    task = rt.Task.plain(__import__("tests.test_runtime_conformance", fromlist=["small_model"]).small_model(), np.ones((1, 4)), allow_plaintext=True)
    body = {"job_id": b"\x07" * 32, "epoch": 0, "task": task.to_wire()}
    mallory = rt.CoordinatorIdentity.from_seed(b"m" * 32)
    bad = rt.seal_envelope("task", body, signing_key=mallory.signing, recipient_box_key=node.card.box_key, nonce=b"\x01" * 16, now_ms=NOW)
    with pytest.raises(VerificationError):
        node.handle(bad)
    assert node.rejected == 1 and node.completed == 0
    good = rt.seal_envelope("task", body, signing_key=coord.signing, recipient_box_key=node.card.box_key, nonce=b"\x02" * 16, now_ms=NOW)
    reply = node.handle(good)
    msg = rt.open_envelope(reply, box_key=coord.box, trusted=[node.card.signing_key], guard=rt.ReplayGuard(), now_ms=NOW)
    assert msg.kind == "result" and node.completed == 1
    from edil.proofs import transcript_from_wire, verify_transcript

    assert verify_transcript(transcript_from_wire(msg.body["transcript"]), DOMAIN) == ident.address
    with pytest.raises(ReplayError):
        node.handle(good)
    assert node.completed == 1 and node.rejected == 2


def test_scheduler_rejects_a_reply_forged_by_another_node() -> None:
    coord, ident = _pair()
    sched = rt.Scheduler(rt.LocalExecutor(), rt.StaticRegistry([ident.address]), rt.Journal(":memory:"), identity=coord, domain=DOMAIN)
    sched.add_node(ident.card(rt.Capabilities()))
    imposter = rt.NodeIdentity.from_seed(b"i" * 32)
    fake = rt.seal_envelope("result", {}, signing_key=imposter.signing, recipient_box_key=coord.box_key, nonce=b"\x09" * 16, now_ms=int(__import__("time").time() * 1000))
    with pytest.raises(VerificationError):
        sched._open(ident.address, fake, ("result",))


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(wire_values)
def test_wire_roundtrip(value) -> None:  # noqa: ANN001
    assert _wire.loads(_wire.dumps(value)) == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_wire_fails_closed_on_garbage(data: bytes) -> None:
    try:
        _wire.loads(b"EW1" + data)
    except SerializationError:
        pass


def test_model_bytes_roundtrip() -> None:
    from tests.test_runtime_conformance import small_model

    m = small_model()
    m2 = rt.model_from_bytes(rt.model_to_bytes(m))
    x = np.random.default_rng(0).normal(size=(3, 4))
    np.testing.assert_array_equal(m.forward(x), m2.forward(x))
    with pytest.raises(SerializationError):
        rt.model_from_bytes(_wire.dumps({"v": 1, "kind": "regression", "layers": [{"t": "conv"}]}))


def test_public_surface_is_curated() -> None:
    public = {n for n in vars(rt) if not n.startswith("_")}
    # edil.runtime.testing is imported on demand only (importing it binds it on the package)
    assert public - {"testing"} == set(rt.__all__)


def test_scheme_runner_fails_closed_on_foreign_or_missing_context() -> None:
    """A node never pairs a task's parameter hash with other keys, and never gets a secret key."""
    from edil import Paillier, SchemeMismatchError
    from edil.models import Dense, Sequential

    a, b = Paillier(key_bits=1024), Paillier(key_bits=1024)
    model = Sequential((Dense(np.ones((2, 1)), np.zeros(1)),))
    task = rt.Task.for_scheme(a, model, a.encode(np.ones((3, 2))), model_public=True)
    runner = rt.default_runners()["paillier"]
    out = a.decode(a.deserialize(runner.run(task)))
    np.testing.assert_allclose(out, np.full((3, 1), 2.0), atol=1e-4)
    with pytest.raises(SchemeMismatchError):  # other keys under this task's parameter hash
        runner.run(dataclasses.replace(task, context=b.public_context_bytes()))
    with pytest.raises(SchemeMismatchError):  # a ciphertext under another key
        runner.run(dataclasses.replace(task, input=b.serialize(b.encode(np.ones((3, 2)))), params=a.params))
    with pytest.raises(SerializationError):
        runner.run(dataclasses.replace(task, context=b""))
    bad = bytearray(task.context)
    bad[20] ^= 1
    with pytest.raises(SerializationError):
        runner.run(dataclasses.replace(task, context=bytes(bad)))
    with pytest.raises(SerializationError):  # a ciphertext that is not a unit mod n^2
        forged = a.serialize(a.encode(np.ones((3, 2)))).replace(b'"columns": [["', b'"columns": [["0')
        a.deserialize(forged)


def test_ckks_context_with_a_secret_key_is_refused_by_nodes() -> None:
    import hashlib
    import json
    import struct

    from edil import CKKS
    from edil._ckks import _KIND_CONTEXT, _MAGIC, _VERSION

    s = CKKS(depth=1)
    header = json.dumps(s._p, sort_keys=True).encode()
    payload = _MAGIC + _KIND_CONTEXT + struct.pack("<HI", _VERSION, len(header)) + header + s._ctx.serialize(save_secret_key=True)
    with pytest.raises(SerializationError, match="secret key"):
        rt.default_runners()["ckks"].scheme(payload + hashlib.sha256(payload).digest())
