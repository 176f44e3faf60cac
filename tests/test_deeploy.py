"""Deeploy: owner-signed service specs (EIP-712), the reconciler's placements in the journal, the CLI.

Real keys (secp256k1 owners, node identities with signed cards), real SQLite journals and the
in-memory dAuth registry; the availability view is a dict or a real HeartbeatMonitor fed signed
heartbeats.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from eth_account import Account

from edil import AuthorizationError, EdilError, ParameterError, ReplayError, SerializationError, VerificationError
from edil import runtime as rt
from edil.app import main as edil_main
from edil.proofs import ChainUnavailableError, keccak256

CHAIN_ID = 31337
MODEL_V1 = rt.content_id(b"model weights v1", manifest=True)
MODEL_V2 = rt.content_id(b"model weights v2", manifest=True)
GIB = 1 << 30


def key_of(label: str) -> bytes:
    return keccak256(b"test key " + label.encode())


OWNER_KEY, OTHER_KEY = key_of("owner"), key_of("other")
OWNER, OTHER = Account.from_key(OWNER_KEY).address, Account.from_key(OTHER_KEY).address


def card(label: str, *, gpu: bool = False, memory_gib: int = 16) -> rt.NodeCard:
    ident = rt.NodeIdentity.from_seed(f"deeploy test node {label}".encode())
    return ident.card(rt.Capabilities(("cuda",) if gpu else (), memory_gib * GIB))


def spec(**fields: object) -> rt.ServiceSpec:
    base: dict[str, object] = {
        "name": "lr-service", "model_cid": MODEL_V1, "scheme": "ckks", "owner": OWNER,
        "params": {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 40, 60], "global_scale_bits": 40},
        "replicas": 2, "redundancy": 1, "min_availability": 0.5, "version": 1,
    }
    base.update(fields)
    return rt.ServiceSpec(**base)  # type: ignore[arg-type]


def signed(**fields: object) -> rt.SignedServiceSpec:
    return rt.SignedServiceSpec.sign(spec(**fields), OWNER_KEY, chain_id=CHAIN_ID)


def addr(c: rt.NodeCard) -> str:
    return c.address.lower()


# --- signatures ------------------------------------------------------------------------------
def test_a_signed_spec_round_trips_and_verifies() -> None:
    s = signed()
    back = rt.SignedServiceSpec.from_json(s.to_json())
    assert back == s
    assert back.verify(chain_id=CHAIN_ID) == s.spec
    assert back.signer() == OWNER.lower()
    assert s.spec.service_id == rt.service_id_of(OWNER, "lr-service") == rt.service_id_of(OWNER.lower(), "lr-service")
    assert rt.service_id_of(OTHER, "lr-service") != s.spec.service_id
    # The id is stable across versions; the revision moves only with model or parameters.
    assert spec(version=2, replicas=3).service_id == s.spec.service_id
    assert spec(version=2, replicas=3).revision == s.spec.revision != spec(model_cid=MODEL_V2).revision


def test_a_spec_signed_by_anyone_but_its_owner_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AuthorizationError):
        rt.SignedServiceSpec.sign(spec(), OTHER_KEY, chain_id=CHAIN_ID)
    # The other key signs its own spec, then the owner field is swapped to the victim's.
    forged_src = rt.SignedServiceSpec.sign(spec(owner=OTHER), OTHER_KEY, chain_id=CHAIN_ID)
    forged = rt.SignedServiceSpec(spec=spec(), chain_id=CHAIN_ID, signature=forged_src.signature)
    with pytest.raises(VerificationError, match="not by its owner"):
        forged.verify()
    rec = rt.Reconciler(rt.Journal(tmp_path / "j.sqlite"), rt.StaticRegistry())
    with pytest.raises(VerificationError):
        rec.deploy(forged)
    assert rec.list() == [] and rec.events() == []


@pytest.mark.parametrize(
    "change",
    [
        {"replicas": 3}, {"redundancy": 2}, {"model_cid": MODEL_V2}, {"scheme": "plain"}, {"name": "lr-service2"},
        {"min_availability": 0.25}, {"version": 2}, {"resources": rt.Resources(needs_gpu=True)},
        {"resources": rt.Resources(min_memory_mb=1)}, {"params": {"poly_modulus_degree": 4096}},
        {"params": {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 40, 59], "global_scale_bits": 40}},
    ],
)
def test_a_tampered_field_breaks_the_signature(change: dict[str, object]) -> None:
    s = signed()
    fields = msgspec.structs.asdict(s.spec)
    fields.update(change)
    tampered = rt.SignedServiceSpec(spec=rt.ServiceSpec(**fields), chain_id=CHAIN_ID, signature=s.signature)
    with pytest.raises(VerificationError):
        tampered.verify()
    # The same through JSON, as a gateway would receive it.
    with pytest.raises(VerificationError):
        rt.SignedServiceSpec.from_json(tampered.to_json()).verify()


def test_another_chain_or_a_mangled_signature_is_refused(tmp_path: Path) -> None:
    s = signed()
    with pytest.raises(VerificationError, match="chain"):
        s.verify(chain_id=1)
    other_chain = rt.SignedServiceSpec(spec=s.spec, chain_id=1, signature=s.signature)
    with pytest.raises(VerificationError):
        other_chain.verify()
    for sig in ("0x" + "00" * 65, s.signature[:-2] + ("1b" if s.signature[-2:] != "1b" else "1c"), "0x" + "ff" * 65):
        with pytest.raises(VerificationError):
            rt.SignedServiceSpec(spec=s.spec, chain_id=CHAIN_ID, signature=sig).verify()
    rec = rt.Reconciler(rt.Journal(tmp_path / "j.sqlite"), rt.StaticRegistry(), chain_id=1)
    with pytest.raises(VerificationError, match="chain"):
        rec.deploy(s)


def test_a_reconciler_pinned_to_a_chain_neither_places_nor_serves_another_chains_journaled_service(tmp_path: Path) -> None:
    """Another tool (an unpinned reconciler, `edil deploy` of a signed file) journaled and placed a
    service signed for chain A: a reconciler pinned to chain B (as `edil gateway` is) refuses to
    serve it, does not list it, evicts its replicas and places none; its own chain's service runs."""
    nodes = [card("pin-a"), card("pin-b")]
    registry = rt.StaticRegistry([c.address for c in nodes])
    journal = rt.Journal(tmp_path / "j.sqlite")
    anywhere = rt.Reconciler(journal, registry)  # pins nothing: takes chain 1's spec
    foreign = anywhere.deploy(rt.SignedServiceSpec.sign(spec(), OWNER_KEY, chain_id=1))
    assert anywhere.reconcile(nodes=nodes) and len(anywhere.get(foreign).replicas) == 2
    own = anywhere.deploy(rt.SignedServiceSpec.sign(spec(name="own-chain"), OWNER_KEY, chain_id=CHAIN_ID))

    pinned = rt.Reconciler(journal, registry, chain_id=CHAIN_ID)
    with pytest.raises(VerificationError, match=f"signed for chain 1, but this deployment is chain {CHAIN_ID}"):
        pinned.get(foreign)
    assert [s.service_id for s in pinned.list()] == [own]
    changes = pinned.reconcile(nodes=nodes)
    evicted = sorted((c.action, c.node) for c in changes if c.service_id == foreign)
    assert evicted == [("evict", addr(c)) for c in sorted(nodes, key=addr)]
    assert all(c.reason == f"signed for chain 1, not {CHAIN_ID}" for c in changes if c.service_id == foreign)
    assert len(pinned.get(own).replicas) == 2
    assert anywhere.get(foreign).replicas == () and not pinned.reconcile(nodes=nodes)  # and it stays unplaced
    # Its owner cannot move it onto chain B either: a new version or a removal for chain B is refused.
    with pytest.raises(VerificationError, match="lives on chain 1"):
        pinned.deploy(rt.SignedServiceSpec.sign(spec(version=2), OWNER_KEY, chain_id=CHAIN_ID))
    removal = rt.SignedRemoval.sign(foreign, owner=OWNER, version=2, key=OWNER_KEY, chain_id=1)
    with pytest.raises(VerificationError, match="chain"):
        pinned.remove(foreign, removal=removal)


SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _rsv(signature: str) -> tuple[int, int, int]:
    raw = bytes.fromhex(signature[2:])
    return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64]


def _sig(r: int, s: int, v: int) -> str:
    return "0x" + (r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])).hex()


def test_owners_sign_canonically_and_only_the_canonical_signature_verifies() -> None:
    for i in range(50):  # EIP-2: the signer always picks the low s, and v is 27 or 28
        key = key_of(f"canonical {i}")
        s = rt.SignedServiceSpec.sign(
            spec(owner=Account.from_key(key).address, name=f"svc-{i}", params={"n": i}, version=i + 1), key, chain_id=CHAIN_ID
        )
        r, low, v = _rsv(s.signature)
        assert 1 <= low <= SECP256K1_N // 2 and v in (27, 28)
    s = signed()
    r, low, v = _rsv(s.signature)
    # The mirror signature (n - s, other v) recovers the same signer: refused, so a spec has one signature.
    mirror = rt.SignedServiceSpec(spec=s.spec, chain_id=CHAIN_ID, signature=_sig(r, SECP256K1_N - low, 55 - v))
    with pytest.raises(VerificationError, match="canonical"):
        mirror.verify()
    with pytest.raises(VerificationError, match="canonical"):
        rt.SignedServiceSpec.from_json(mirror.to_json()).verify()
    for bad in (_sig(r, low, 29), _sig(r, low, 2), _sig(0, low, v), _sig(r, 0, v), _sig(SECP256K1_N, low, v)):
        with pytest.raises(VerificationError):
            rt.SignedServiceSpec(spec=s.spec, chain_id=CHAIN_ID, signature=bad).verify()
    # v as 0/1, or upper-case hex: the same signature spelled differently, kept in the one canonical spelling.
    for spelling in (_sig(r, low, v - 27), s.signature.upper().replace("0X", "0x")):
        other = rt.SignedServiceSpec(spec=s.spec, chain_id=CHAIN_ID, signature=spelling)
        assert other.signature == s.signature and other.to_json() == s.to_json()
        assert rt.SignedServiceSpec.from_json(json.dumps({**json.loads(s.to_json()), "signature": spelling})) == s
        assert other.verify() == s.spec
    removal = rt.SignedRemoval.sign(s.spec.service_id, owner=OWNER, version=2, key=OWNER_KEY, chain_id=CHAIN_ID)
    r, low, v = _rsv(removal.signature)
    assert low <= SECP256K1_N // 2 and v in (27, 28)
    with pytest.raises(VerificationError, match="canonical"):
        msgspec.structs.replace(removal, signature=_sig(r, SECP256K1_N - low, 55 - v)).verify()


@pytest.mark.parametrize(
    "name",
    ["sk", "SK", "owner_sk", "sk.hex", "userSk", "password", "db_password", "Passphrase", "wallet-mnemonic",
     "api_token", "apiToken", "ACCESS_TOKEN", "passwd", "secret_key", "private", "seed"],
)
def test_parameter_names_of_secrets_are_refused(name: str) -> None:
    with pytest.raises(ParameterError, match="secret"):
        spec(params={name: "00"})


def test_scheme_parameter_names_stay_allowed() -> None:
    names = [
        "depth", "precision_bits", "int_bits", "poly_modulus_degree", "key_bits", "frac_bits", "max_additions",
        "slot_bits", "pack", "global_scale_bits", "coeff_mod_bit_sizes", "mask_bits", "task", "disk_mb", "max_tokens",
    ]
    assert set(spec(params={n: 1 for n in names}).params) == set(names)


def test_a_version_that_does_not_increase_is_a_replay(tmp_path: Path) -> None:
    rec = rt.Reconciler(rt.Journal(tmp_path / "j.sqlite"), rt.StaticRegistry())
    v1 = signed()
    sid = rec.deploy(v1)
    with pytest.raises(ReplayError):
        rec.deploy(v1)  # the same signed spec again
    rec.deploy(signed(version=3, replicas=3))
    for old in (v1, signed(version=2), signed(version=3, replicas=1)):
        with pytest.raises(ReplayError):
            rec.deploy(old)
    state = rec.get(sid)
    assert state is not None and state.version == 3 and state.spec.replicas == 3
    assert [e[2] for e in rec.events(sid)] == ["deploy", "deploy"]
    # Once a service lives on one chain, a spec for another chain does not update it.
    foreign = rt.SignedServiceSpec.sign(spec(version=9), OWNER_KEY, chain_id=5)
    with pytest.raises(VerificationError, match="chain"):
        rec.deploy(foreign)


def test_invalid_specs_are_refused_however_they_are_built() -> None:
    for bad in (
        {"replicas": 0}, {"replicas": 257}, {"redundancy": 3}, {"min_availability": 1.5}, {"min_availability": 0.1234567},
        {"model_cid": rt.content_id(b"a chunk")}, {"model_cid": "not a cid"}, {"name": "Upper Case"}, {"scheme": "rsa"},
        {"owner": "0x1234"}, {"owner": OWNER[:2] + OWNER[2:].swapcase()}, {"version": 0},
        {"params": {"secret_key": "00"}}, {"params": {"x": float("nan")}}, {"params": {"x": {"nested": 1}}},
        {"params": {f"k{i}": i for i in range(65)}},
    ):
        with pytest.raises(ParameterError):
            spec(**bad)
        assert issubclass(ParameterError, EdilError) and issubclass(ParameterError, ValueError)
    with pytest.raises(ParameterError):
        rt.Resources(min_memory_mb=-1)


def test_untrusted_json_raises_only_serialization_errors() -> None:
    good = signed().to_json()
    doc = json.loads(good)
    cases: list[bytes] = [
        b"", b"{", b"[]", b"null", b'{"spec": 1}', b"x" * (1 << 19), good.replace(b"edil-service/1", b"edil-service/2"),
        json.dumps({**doc, "extra": 1}).encode(), json.dumps({**doc, "chain_id": 0}).encode(),
        json.dumps({**doc, "signature": "0x12"}).encode(),
        json.dumps({**doc, "spec": {**doc["spec"], "replicas": 0}}).encode(),
        json.dumps({**doc, "spec": {**doc["spec"], "replicas": "2"}}).encode(),
        json.dumps({**doc, "spec": {**doc["spec"], "params": {"x": [[1]]}}}).encode(),
        json.dumps({**doc, "spec": {**doc["spec"], "params": {"x": "[" * 5000}}}).encode(),
        json.dumps({**doc, "spec": {**doc["spec"], "model_cid": "b" + "a" * 58}}).encode(),
        json.dumps({**doc, "spec": {**doc["spec"], "redundancy": 5}}).encode(),
        b'{"spec": {"params": ' + b"[" * 20000 + b"]" * 20000 + b"}}",
    ]
    for data in cases:
        with pytest.raises(SerializationError):
            rt.SignedServiceSpec.from_json(data)
    # Bit flips anywhere: decoding fails with SerializationError, or what decodes does not verify
    # unless it means the same spec.
    for i in range(0, len(good), 3):
        flipped = bytearray(good)
        flipped[i] ^= 0x01
        try:
            s = rt.SignedServiceSpec.from_json(bytes(flipped))
        except SerializationError:
            continue
        try:
            verified = s.verify()
        except VerificationError:
            continue
        assert verified.typed_message() == signed().spec.typed_message()
    for data in (b"{", json.dumps({"service_id": "00" * 32}).encode()):
        with pytest.raises(SerializationError):
            rt.SignedRemoval.from_json(data)
    # A str that is not UTF-8 encodable (a lone surrogate) is malformed input too.
    for text in ("\ud800", good.decode().replace("lr-service", "lr-\udcffservice")):
        with pytest.raises(SerializationError):
            rt.SignedServiceSpec.from_json(text)
        with pytest.raises(SerializationError):
            rt.SignedRemoval.from_json(text)


# --- placement -------------------------------------------------------------------------------
def test_placement_meets_the_resources_on_distinct_admitted_nodes(tmp_path: Path) -> None:
    a, b, c, d, e = card("a", gpu=True), card("b", gpu=True, memory_gib=4), card("c"), card("d", gpu=True), card("e", gpu=True)
    registry = rt.StaticRegistry([x.address for x in (a, b, c, d)])  # e is not admitted
    rec = rt.Reconciler(rt.Journal(tmp_path / "j.sqlite"), registry, clock=lambda: 1000.0)
    sid = rec.deploy(signed(resources=rt.Resources(needs_gpu=True, min_memory_mb=8192)))
    assert rec.get(sid).state == "pending"  # type: ignore[union-attr]
    changes = rec.reconcile(nodes=[a, b, c, d, e])
    state = rec.get(sid)
    assert state is not None and state.state == "running"
    assert set(state.replicas) == {addr(a), addr(d)} and len(set(state.replicas)) == 2
    assert [(ch.action, ch.node) for ch in changes] == [("place", n) for n in sorted({addr(a), addr(d)})]
    assert all(ch.version == 1 and ch.reason == "initial placement" for ch in changes)
    assert rec.reconcile(nodes=[a, b, c, d, e]) == []  # settled: nothing moves
    # Three replicas wanted, two nodes fit: degraded, never two replicas on one node.
    rec.scale(sid, 3, signed_by=OWNER_KEY)
    assert rec.reconcile(nodes=[a, b, c, d, e]) == []
    state = rec.get(sid)
    assert state is not None and state.state == "degraded" and len(state.replicas) == 2 and state.version == 2
    # A new model is not rolled onto a degraded service (it would drop below replicas - 1) ...
    rec.deploy(signed(version=3, replicas=3, model_cid=MODEL_V2, resources=rt.Resources(needs_gpu=True, min_memory_mb=8192)))
    assert rec.reconcile(nodes=[a, b, c, d, e]) == [] and rec.get(sid).updating  # type: ignore[union-attr]
    # ... until it is scaled to what the nodes hold: then one replica per call.
    rec.scale(sid, 2, signed_by=OWNER_KEY)
    assert [ch.action for ch in rec.reconcile(nodes=[a, b, c, d, e])] == ["evict", "place"]
    assert [ch.action for ch in rec.reconcile(nodes=[a, b, c, d, e])] == ["evict", "place"]
    state = rec.get(sid)
    assert state is not None and not state.updating and state.state == "running" and set(state.replicas) == {addr(a), addr(d)}
    # A CPU service spreads over the least loaded nodes first.
    cpu = rt.SignedServiceSpec.sign(spec(name="cpu-svc", replicas=2), OWNER_KEY, chain_id=CHAIN_ID)
    sid2 = rec.deploy(cpu)
    rec.reconcile(nodes=[a, b, c, d, e])
    state2 = rec.get(sid2)
    assert state2 is not None and set(state2.replicas) == {addr(b), addr(c)}


def test_replicas_move_off_dead_revoked_and_unavailable_nodes(tmp_path: Path) -> None:
    nodes = [card(str(i)) for i in range(6)]
    registry = rt.StaticRegistry([n.address for n in nodes])
    avail = {addr(n): 1.0 for n in nodes}
    rec = rt.Reconciler(rt.Journal(tmp_path / "j.sqlite"), registry, availability=lambda a: avail[a.lower()])
    sid = rec.deploy(signed(replicas=3, min_availability=0.9))
    rec.reconcile(nodes=nodes)
    first = rec.get(sid).replicas  # type: ignore[union-attr]
    assert len(first) == 3

    def step(live: list[rt.NodeCard], gone: str, reason: str) -> tuple[str, ...]:
        changes = rec.reconcile(nodes=live)
        state = rec.get(sid)
        assert state is not None and state.state == "running" and len(set(state.replicas)) == 3
        assert gone not in state.replicas
        evicts = [ch for ch in changes if ch.action == "evict"]
        assert [(ch.node, ch.reason) for ch in evicts] == [(gone, reason)]
        assert [ch.reason for ch in changes if ch.action == "place"] == ["replace an evicted replica"]
        assert all(n in {addr(x) for x in live} for n in state.replicas)
        return state.replicas

    dead = first[0]
    live = [n for n in nodes if addr(n) != dead]
    now = step(live, dead, "node gone")
    revoked = now[0]
    registry.revoke(revoked)
    now = step(live, revoked, "revoked")
    slow = now[0]
    avail[slow] = 0.4
    now = step(live, slow, "availability 0.40 < 0.9")
    assert rec.reconcile(nodes=live) == []
    kinds = [(e[2], e[3]) for e in rec.events(sid)]
    assert ("evict", dead) in kinds and ("evict", revoked) in kinds and ("evict", slow) in kinds
    # Six nodes, three out, three replicas: the fourth loss leaves the service degraded, not doubled up.
    avail[now[0]] = 0.0
    rec.reconcile(nodes=live)
    state = rec.get(sid)
    assert state is not None and state.state == "degraded" and len(state.replicas) == 2 and now[0] not in state.replicas


def test_availability_from_a_heartbeat_monitor(tmp_path: Path) -> None:
    idents = [rt.NodeIdentity.from_seed(f"heartbeat test node {i}".encode()) for i in range(3)]
    cards = [i.card(rt.Capabilities((), 8 * GIB)) for i in idents]
    registry = rt.StaticRegistry([c.address for c in cards])
    monitor = rt.HeartbeatMonitor(registry, epoch_ms=60_000, interval_ms=1_000)
    for c in cards:
        monitor.add_card(c)
    for t in range(30):  # node 0 beats every second, node 1 every third second, node 2 never
        for k, ident in enumerate(idents[:2]):
            if k == 0 or t % 3 == 0:
                assert monitor.receive(rt.make_heartbeat(ident, seq=t, now_ms=t * 1000 + 10), now_ms=t * 1000 + 20)
    rec = rt.Reconciler(rt.Journal(tmp_path / "j.sqlite"), registry, availability=monitor, clock=lambda: 30.0)
    sid = rec.deploy(signed(replicas=2, min_availability=0.5))
    rec.reconcile(nodes=cards)
    state = rec.get(sid)
    # Over the last minute (30 finished slots since genesis) node 0 has every slot, node 1 a third.
    assert state is not None and state.replicas == (addr(cards[0]),) and state.state == "degraded"
    assert monitor.recent(cards[1].address, now_ms=30_000) == pytest.approx(1 / 3, abs=0.01)


@pytest.mark.parametrize("spare", [True, False])
def test_a_rollout_replaces_one_replica_at_a_time(tmp_path: Path, spare: bool) -> None:
    replicas = 3
    nodes = [card(str(i)) for i in range(replicas + (2 if spare else 0))]
    rec = rt.Reconciler(rt.Journal(tmp_path / "j.sqlite"), rt.StaticRegistry([n.address for n in nodes]))
    sid = rec.deploy(signed(replicas=replicas))
    rec.reconcile(nodes=nodes)
    new = rt.SignedServiceSpec.sign(spec(replicas=replicas, model_cid=MODEL_V2, version=2), OWNER_KEY, chain_id=CHAIN_ID)
    rec.deploy(new)
    state = rec.get(sid)
    assert state is not None and state.updating and state.state == "running"
    revision = new.spec.revision

    def serving() -> dict[str, int]:
        s = rec.get(sid)
        assert s is not None
        return dict(zip(s.replicas, s.replica_versions, strict=True))

    steps = 0
    while rec.get(sid).updating:  # type: ignore[union-attr]
        before = serving()
        changes = rec.reconcile(nodes=nodes)
        after = serving()
        steps += 1
        assert len(after) == replicas and len(set(after)) == replicas
        kept = {n for n, v in before.items() if after.get(n) == v}
        assert len(kept) >= replicas - 1  # at most one replica disturbed per call
        assert [ch.action for ch in changes] == ["evict", "place"]
        assert all(ch.reason == "rollout to version 2" for ch in changes)
        assert (changes[0].node == changes[1].node) is (not spare)
        assert steps <= replicas
    assert steps == replicas
    final = rec.get(sid)
    assert final is not None and set(final.replica_versions) == {2} and final.state == "running"
    assert {p[2] for p in rec.journal.service(sid).placements} == {revision}  # type: ignore[union-attr]
    assert rec.reconcile(nodes=nodes) == []


def test_scaling_does_not_restart_replicas(tmp_path: Path) -> None:
    nodes = [card(str(i)) for i in range(5)]
    rec = rt.Reconciler(rt.Journal(tmp_path / "j.sqlite"), rt.StaticRegistry([n.address for n in nodes]))
    sid = rec.deploy(signed(replicas=2, redundancy=2))
    rec.reconcile(nodes=nodes)
    before = set(rec.get(sid).replicas)  # type: ignore[union-attr]
    with pytest.raises(ParameterError):
        rec.scale(sid, 1, signed_by=OWNER_KEY)  # below the redundancy
    with pytest.raises(AuthorizationError):
        rec.scale(sid, 4, signed_by=OTHER_KEY)
    rec.scale(sid, 4, signed_by=OWNER_KEY)
    changes = rec.reconcile(nodes=nodes)
    assert [ch.action for ch in changes] == ["place", "place"] and all(ch.reason == "scale up to 4" for ch in changes)
    state = rec.get(sid)
    assert state is not None and before < set(state.replicas) and not state.updating and state.version == 2
    rec.scale(sid, 2, signed_by=OWNER_KEY)
    changes = rec.reconcile(nodes=nodes)
    assert [ch.action for ch in changes] == ["evict", "evict"] and all(ch.reason == "scale down to 2" for ch in changes)
    assert len(rec.get(sid).replicas) == 2  # type: ignore[union-attr]


def test_removal_is_owner_signed_and_not_replayable(tmp_path: Path) -> None:
    nodes = [card(str(i)) for i in range(3)]
    rec = rt.Reconciler(rt.Journal(tmp_path / "j.sqlite"), rt.StaticRegistry([n.address for n in nodes]))
    sid = rec.deploy(signed(replicas=2))
    rec.reconcile(nodes=nodes)
    with pytest.raises(AuthorizationError):
        rec.remove(sid, signed_by=OTHER_KEY)
    forged = rt.SignedRemoval.sign(sid, owner=OTHER, version=2, key=OTHER_KEY, chain_id=CHAIN_ID)
    with pytest.raises(VerificationError):
        rec.remove(sid, removal=forged)  # names another owner
    removal = rt.SignedRemoval.sign(sid, owner=OWNER, version=2, key=OWNER_KEY, chain_id=CHAIN_ID)
    assert rt.SignedRemoval.from_json(removal.to_json()) == removal
    state = rec.remove(sid, removal=removal)
    assert state.state == "removed" and state.version == 2
    changes = rec.reconcile(nodes=nodes)
    assert {ch.action for ch in changes} == {"evict"} and len(changes) == 2
    assert rec.get(sid).replicas == ()  # type: ignore[union-attr]
    with pytest.raises(ParameterError, match="already removed"):
        rec.remove(sid, removal=removal)
    with pytest.raises(ReplayError):
        rec.deploy(signed(version=2))
    rec.deploy(signed(version=3))
    with pytest.raises(ReplayError):
        rec.remove(sid, removal=removal)  # the old removal, replayed after the redeploy
    rec.reconcile(nodes=nodes)
    assert rec.get(sid).state == "running"  # type: ignore[union-attr]


def test_an_unreadable_registry_moves_nothing(tmp_path: Path) -> None:
    nodes = [card(str(i)) for i in range(3)]
    registry = rt.StaticRegistry([n.address for n in nodes])
    rec = rt.Reconciler(rt.Journal(tmp_path / "j.sqlite"), registry)
    sid = rec.deploy(signed(replicas=2))
    rec.reconcile(nodes=nodes)
    before = rec.get(sid)

    class Down:
        def is_admitted(self, address: str) -> bool:
            raise ChainUnavailableError("registry view too stale", reason="test outage")

    down = rt.Reconciler(rec.journal, Down())
    with pytest.raises(ChainUnavailableError):
        down.reconcile(nodes=nodes[:1])
    assert rec.get(sid) == before
    with pytest.raises(ParameterError, match="nodes"):
        rec.reconcile()


def test_services_and_placements_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    nodes = [card(str(i), gpu=i % 2 == 0) for i in range(4)]
    registry = rt.StaticRegistry([n.address for n in nodes])
    rec = rt.Reconciler(rt.Journal(path), registry, nodes=lambda: nodes)
    sid = rec.deploy(signed(replicas=2))
    sid_gpu = rec.deploy(rt.SignedServiceSpec.sign(spec(name="gpu", resources=rt.Resources(needs_gpu=True)), OWNER_KEY, chain_id=CHAIN_ID))
    assert rec.reconcile()
    before, events = rec.list(), rec.events()
    rec.journal.close()
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = rt.Reconciler(rt.Journal(path), registry)
    assert again.list() == before and again.events() == events
    assert [s.service_id for s in again.list()] == [sid, sid_gpu]
    assert again.reconcile(nodes=nodes) == []  # the same view: nothing to move
    assert set(again.get(sid_gpu).replicas) <= {addr(n) for n in nodes[::2]}  # type: ignore[union-attr]


# --- the command line ------------------------------------------------------------------------
def _write_spec(path: Path, **fields: object) -> None:
    path.write_text(json.dumps({"format": "edil-service/1", "spec": msgspec.to_builtins(spec(**fields))}))


def test_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal, key, other = tmp_path / "jobs.sqlite", tmp_path / "owner.key", tmp_path / "other.key"
    key.write_text(OWNER_KEY.hex())
    other.write_text("0x" + OTHER_KEY.hex())
    _write_spec(tmp_path / "spec.json")
    j = ["--journal", str(journal)]

    def run(*argv: str) -> tuple[int, str, str]:
        code = edil_main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("deploy", str(tmp_path / "spec.json"), *j, "--key-file", str(key), "--chain-id", str(CHAIN_ID),
                         "--signed-out", str(tmp_path / "signed.json"))
    assert code == 0, err
    sid = json.loads(out)["service_id"]
    assert sid == rt.service_id_of(OWNER, "lr-service") and json.loads(out)["state"] == "pending"
    signed_file = rt.SignedServiceSpec.from_json((tmp_path / "signed.json").read_bytes())
    assert signed_file.verify(chain_id=CHAIN_ID).replicas == 2
    # The signed file deployed again is a replay: one line, status 2.
    code, out, err = run("deploy", str(tmp_path / "signed.json"), *j)
    assert code == 2 and "ReplayError" in err and err.count("\n") == 1
    code, out, err = run("service", "ls", *j)
    assert code == 0 and sid[:16] in out and "pending" in out and "0/2" in out
    # The coordinator places the replicas; the CLI then reports them.
    nodes = [card(str(i)) for i in range(3)]
    rec = rt.Reconciler(rt.Journal(journal), rt.StaticRegistry([n.address for n in nodes]))
    rec.reconcile(nodes=nodes)
    rec.journal.close()
    code, out, err = run("service", "status", sid, *j)
    status = json.loads(out)
    assert code == 0 and status["state"] == "running" and len(status["replicas"]) == 2
    assert [e["kind"] for e in status["events"]] == ["deploy", "place", "place"]
    code, out, err = run("service", "scale", sid, "3", *j, "--key-file", str(other))
    assert code == 2 and "AuthorizationError" in err and err.count("\n") == 1
    code, out, err = run("service", "scale", sid, "3", *j, "--key-file", str(key))
    assert code == 0 and json.loads(out)["version"] == 2 and json.loads(out)["spec"]["replicas"] == 3
    code, out, err = run("service", "ls", "--json", *j)
    assert code == 0 and [s["state"] for s in json.loads(out)] == ["degraded"]
    code, out, err = run("service", "rm", sid, *j, "--key-file", str(key))
    assert code == 0 and json.loads(out)["state"] == "removed"
    code, out, err = run("service", "rm", sid, *j, "--key-file", str(key))
    assert code == 2 and "already removed" in err


@pytest.mark.parametrize(
    ("content", "extra", "needle"),
    [
        ("not json", ["--chain-id", "1"], "is not a service spec file"),
        ('{"format": "edil-service/1", "spec": {"name": "x"}}', ["--chain-id", "1"], "is not a service spec file"),
        ("REPLICAS0", ["--chain-id", "1"], "is not a service spec file"),
        ("GOOD", [], "name the chain"),
        ("GOOD", ["--chain-id", "1", "--no-key"], "not signed"),
        ("GOOD", ["--chain-id", "1", "--other-key"], "AuthorizationError"),
        ('{"format": "edil-service/2", "spec": {}}', ["--chain-id", "1"], "is not a service spec file"),
    ],
)
def test_cli_mistakes_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, extra: list[str], needle: str
) -> None:
    path, journal = tmp_path / "spec.json", tmp_path / "jobs.sqlite"
    (tmp_path / "owner.key").write_text(OWNER_KEY.hex())
    (tmp_path / "other.key").write_text(OTHER_KEY.hex())
    if content == "GOOD":
        _write_spec(path)
    elif content == "REPLICAS0":
        doc = {"format": "edil-service/1", "spec": msgspec.to_builtins(spec())}
        doc["spec"]["replicas"] = 0
        path.write_text(json.dumps(doc))
    else:
        path.write_text(content)
    key = [] if "--no-key" in extra else ["--key-file", str(tmp_path / ("other.key" if "--other-key" in extra else "owner.key"))]
    flags = [a for a in extra if a not in ("--no-key", "--other-key")]
    code = edil_main(["deploy", str(path), "--journal", str(journal), *key, *flags])
    out, err = capsys.readouterr()
    assert code == 2 and needle in err and err.count("\n") == 1 and out == ""
    assert not journal.exists()


def test_cli_service_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "jobs.sqlite"
    (tmp_path / "owner.key").write_text(OWNER_KEY.hex())
    for argv, needle in (
        (["service", "ls", "--journal", str(journal)], "no journal"),
        (["service", "status", "xyz", "--journal", str(journal)], "not a service id"),
        (["service", "scale", "ab" * 32, "0", "--journal", str(journal), "--key-file", str(tmp_path / "owner.key")], "1..256"),
        (["service", "rm", "ab" * 32, "--journal", str(journal), "--key-file", str(tmp_path / "missing.key")], "cannot read key file"),
    ):
        assert edil_main(argv) == 2
        out, err = capsys.readouterr()
        assert needle in err and err.count("\n") == 1, (argv, err)
    assert not journal.exists()
    journal.write_bytes(b"this is not a database" * 100)
    for argv in (["service", "ls"], ["service", "status", "ab" * 32]):
        assert edil_main([*argv, "--journal", str(journal)]) == 2
        err = capsys.readouterr().err
        assert "cannot open the journal" in err and err.count("\n") == 1


def test_cli_subprocess_prints_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"format": "edil-service/1", "spec": {"name": "x", "replicas": -1}}')
    proc = subprocess.run(
        [sys.executable, "-m", "edil.app", "deploy", str(path), "--journal", str(tmp_path / "j.sqlite"), "--chain-id", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("edil deploy: ")
