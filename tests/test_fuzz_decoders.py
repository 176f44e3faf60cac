"""Hostile bytes: every decoder of untrusted input raises only EdilError subclasses, bounded.

The fuzzing runs in subprocesses (``python -m benchmarks.fuzz``), so a segfault fails a test
instead of killing pytest; the long campaign is ``python -m benchmarks.fuzz``. The other tests
pin each fix with a crafted input (none of them can crash the interpreter: the inputs that
could are only ever decoded in a subprocess).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edil import CKKS, ChainError, EdilError, Paillier, SerializationError, VerificationError

ROOT = Path(__file__).resolve().parents[1]
SLICE_CASES, SLICE_SEED = 60, 20240611


def _fuzz(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.fuzz", "--no-write", "--json", str(out), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_every_decoder_survives_a_bounded_fuzz_slice(tmp_path: Path) -> None:
    from benchmarks.fuzz import DECODER_NAMES

    proc, result = _fuzz(tmp_path, "--quick", "--cases", str(SLICE_CASES), "--seed", str(SLICE_SEED))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert result["problems"] == []
    assert result["recursion_limit"] >= 100_000  # fuzzed under the limit the chain stack sets
    rows = {r["decoder"]: r for r in result["rows"]}
    assert sorted(rows) == sorted(DECODER_NAMES)
    for name, r in rows.items():
        assert r["cases"] == SLICE_CASES, name
        assert (r["other_exceptions"], r["crashes"], r["hangs"]) == (0, 0, 0), (name, r["examples"])
        seeds, total = (int(x) for x in r["valid_accepted"].split("/"))
        assert seeds == total > 0, name  # its own valid payloads still decode: the fuzzing is not vacuous
        if name != "chain_revert":  # translating a revert never raises: it always yields a ChainError
            assert r["edil_rejections"] >= SLICE_CASES // 4, name  # mutations reach the checks and are refused


def test_the_harness_counts_crashes_hangs_and_escaped_exceptions(tmp_path: Path) -> None:
    proc, result = _fuzz(
        tmp_path,
        "--quick",
        "--decoders",
        "_selftest",
        "--cases",
        "5",
        env={"EDIL_FUZZ_SELFTEST": "1", "EDIL_FUZZ_HANG_S": "0.5"},
    )
    assert proc.returncode == 1
    (row,) = result["rows"]
    assert (row["cases"], row["accepted"], row["edil_rejections"]) == (5, 1, 1)
    assert (row["other_exceptions"], row["crashes"], row["hangs"]) == (1, 1, 1)
    assert any("ValueError" in e for e in row["examples"]) and any("status -11" in e for e in row["examples"])


# --- JSON: the nesting guard ----------------------------------------------------------------------
def test_json_depth_skips_strings_and_cannot_be_fooled() -> None:
    from edil._scheme import json_depth, json_from_untrusted

    assert json_depth(b'["]]]]]]", [[[]]]]') == 4
    assert json_depth(b'{"a\\"[[[": [1]}') == 2
    assert json_depth(b'"\\\\" [[]]') == 2  # an escaped backslash ends the string
    assert json_depth(b'"unterminated [[[[') == 0
    fooled = b'["' + b"]" * 5000 + b'", ' + b"[" * 5000 + b"]" * 5001
    assert json_depth(fooled) == 5001
    with pytest.raises(SerializationError, match="nested deeper"):
        json_from_untrusted(fooled)
    assert json_from_untrusted(b'{"a": [1, 2.5, "]"]}') == {"a": [1, 2.5, "]"]}
    for bad in (b"NaN", b"9" * 5000, b"[1,", "text".encode("utf-16"), "not bytes"):
        with pytest.raises(SerializationError):
            json_from_untrusted(bad)  # type: ignore[arg-type]


def test_json_guard_holds_under_the_raised_recursion_limit() -> None:
    # In a subprocess: before the fix this input crashed the interpreter.
    code = (
        "import sys, edil.proofs\n"
        "assert sys.getrecursionlimit() >= 100000\n"
        "from edil import SerializationError\n"
        "from edil._scheme import json_from_untrusted\n"
        "bomb = b'[\"' + b']' * 60000 + b'\", ' + b'[' * 60000 + b']' * 60001\n"
        "try:\n"
        "    json_from_untrusted(bomb)\n"
        "except SerializationError:\n"
        "    print('refused')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "refused", proc.stderr[-2000:]


# --- the wire codec and runtime records -------------------------------------------------------------
def _wire_int(text: bytes) -> bytes:
    return b"EW1i" + struct.pack(">I", len(text)) + text


def test_wire_codec_refuses_non_canonical_integers_and_impossible_counts() -> None:
    from edil.runtime import _wire

    assert _wire.loads(_wire_int(b"-12")) == -12 and _wire.loads(_wire.dumps(-(2**300))) == -(2**300)
    assert _wire.loads(_wire_int(b"-" + b"9" * 4300)) == -int("9" * 4300)
    for text in (b"+1", b" 1", b"1_0", b"01", b"-0", b"", b"\xd9\xa1", b"9" * 4301, b"9" * 4302, b"-" + b"9" * 4301):
        with pytest.raises(SerializationError):
            _wire.loads(_wire_int(text))
    for tag in (b"l", b"d"):
        with pytest.raises(SerializationError, match="count"):
            _wire.loads(b"EW1" + tag + struct.pack(">I", 0xFFFFFFFF) + b"N" * 10)


def test_runtime_records_are_typed_strictly() -> None:
    from edil.runtime import Capabilities, NodeCard, NodeIdentity, Task, _wire, make_heartbeat, model_from_bytes, parse_heartbeat

    ident = NodeIdentity.from_seed(b"edil-test-hostile-input-node-000")
    hb = make_heartbeat(ident, seq=3, now_ms=1_000)
    assert parse_heartbeat(hb).seq == 3
    for seq in (float("inf"), -1, 2**63, "3", True):
        msg = _wire.dumps({"tag": "EDIL/heartbeat/v1", "node": ident.address, "seq": seq, "ts": 1_000})
        with pytest.raises(SerializationError):
            parse_heartbeat(bytes(ident.signing.sign(msg)))

    card = ident.card(Capabilities(("gpu",), 1 << 30)).to_wire()
    assert NodeCard.from_wire(card).verify().address == ident.address
    for key, value in (
        ("signing_key", 10**12),
        ("signing_key", -1),
        ("box_key", b"\x00" * 31),
        ("address", "0xzz"),
        ("signature", "sig"),
        ("capabilities", {"accelerators": ["gpu"], "memory_bytes": float("inf")}),
    ):
        with pytest.raises(SerializationError):
            NodeCard.from_wire({**card, key: value})
    forged = NodeCard(card["address"][:-1] + "Z", card["signing_key"], card["box_key"], Capabilities(), card["signature"])
    with pytest.raises(VerificationError):
        forged.verify()

    model = _wire.loads(_wire.dumps({"v": 1, "kind": "binary", "layers": [{"t": "poly", "c": [0.5, 1.0]}]}))
    assert model_from_bytes(_wire.dumps(model)).layers[0].coeffs == (0.5, 1.0)
    for layers in (
        [{"t": "poly", "c": [1.0] * 2000}],
        [{"t": "poly", "c": [2**1100]}],
        [{"t": "nope"}],
        [{"t": "dense", "w": b"EDT1", "b": b""}],
    ):
        with pytest.raises(EdilError):
            model_from_bytes(_wire.dumps({"v": 1, "kind": "binary", "layers": layers}))

    task = {"scheme": "plain", "params": {"scheme": "plain"}, "model": b"m", "input": b"i", "work_units": 5, "needs_gpu": False}
    assert Task.from_wire(task).work_units == 5
    for key, value in (("work_units", 2**256), ("work_units", float("inf")), ("model", 10**9), ("needs_gpu", 1), ("zz", 1)):
        with pytest.raises(SerializationError):
            Task.from_wire({**task, key: value})


def test_coordinator_keys_decode_from_json_text_strictly() -> None:
    from edil.proofs import Eip712Domain
    from edil.runtime import CoordinatorIdentity, CoordinatorKeys

    c = CoordinatorIdentity.from_seed(b"edil-test-hostile-input-coord-00")
    keys = CoordinatorKeys(c.verify_key, c.box_key, Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "11" * 20))
    doc = keys.to_json()
    assert CoordinatorKeys.from_json(doc) == keys == CoordinatorKeys.from_json(json.dumps(doc).encode())
    assert CoordinatorKeys.from_json(json.dumps(doc)) == keys
    bad_texts = [
        json.dumps({**doc, "domain": {**doc["domain"], "chain_id": 1e400}}),
        json.dumps({**doc, "domain": {**doc["domain"], "chain_id": 2**256}}),
        json.dumps({**doc, "verify_key": doc["verify_key"][:-2]}),
        json.dumps({**doc, "extra": 1}),
        '{"verify_key": ' + "[" * 100_000,
    ]
    for text in bad_texts:
        with pytest.raises(SerializationError):
            CoordinatorKeys.from_json(text)


# --- tensors ---------------------------------------------------------------------------------------
def _tensor(descr: bytes, dims: list[int], payload: bytes = b"") -> bytes:
    return b"EDT1" + bytes([len(descr)]) + descr + bytes([len(dims)]) + b"".join(d.to_bytes(8, "big") for d in dims) + payload


def test_tensor_headers_are_bounded_before_allocation() -> None:
    from edil.proofs import decode_tensor

    assert decode_tensor(_tensor(b"<f8", [0, 1 << 20, 1 << 20])).shape == (0, 1 << 20, 1 << 20)
    for data in (
        _tensor(b"<f8", [0, 1 << 62, 1 << 62]),  # an empty array whose shape numpy cannot hold
        _tensor(b"<f8", [1] * 33),  # more axes than allowed
        _tensor(b"O", [1], b"\x00" * 8),
        _tensor(b"(2,)<i4", [1], b"\x00" * 8),
        _tensor(b"[('a','<i4')]", [1], b"\x00" * 4),
        _tensor(b">f8", [1], b"\x00" * 8),
        _tensor(b"<f8", [(1 << 64) - 1], b"\x00" * 8),
        b"EDT1",
    ):
        with pytest.raises(SerializationError):
            decode_tensor(data)


# --- chain revert data -----------------------------------------------------------------------------
def test_revert_data_is_parsed_without_evaluating_text() -> None:
    from eth_tester.exceptions import TransactionFailed
    from web3.exceptions import ContractLogicError

    from edil.proofs._chain import _bytes_from_repr, translate_revert

    rng = np.random.default_rng(0)
    for raw in (b"", b"'\"\\", bytes(range(256)), rng.bytes(300)):
        assert _bytes_from_repr(repr(raw)) == raw
    for text in ("b'' + (" * 3, "b'\\u1234'", "b'abc", "b'''", 'b"a"b"', "b'\\q'", "(b'')"):
        assert _bytes_from_repr(text) is None
    error_string = "0x08c379a0" + "00" * 31 + "20" + "00" * 31 + "05" + "68656c6c6f" + "00" * 27
    cases = [
        ContractLogicError("execution reverted", data=error_string),
        ContractLogicError("execution reverted", data="0x08c379a0zz"),
        ContractLogicError("execution reverted", data="0x123"),
        ContractLogicError("execution reverted", data="0x08c379a0" + "ff" * 40_000),
        TransactionFailed("execution reverted: b'' + " + "(" * 100_000),
        TransactionFailed("execution reverted: " + repr(bytes.fromhex(error_string[2:]))),
    ]
    reasons = [translate_revert(exc) for exc in cases]
    assert all(isinstance(r, ChainError) for r in reasons)
    assert reasons[0].reason == "hello" and reasons[5].reason == "hello"


# --- CKKS and Paillier contexts ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckks() -> CKKS:
    return CKKS.for_depth(1)


def _reseal(data: bytes, magic: bytes, header: bytes | None = None, body: bytes | None = None) -> bytes:
    from benchmarks.fuzz import _split_envelope, seal_envelope_bytes

    kind, prefix, h, b = _split_envelope(data, magic)
    return seal_envelope_bytes(magic, kind, h if header is None else header, b if body is None else body, prefix)


def test_ckks_context_header_values_are_bounded_before_use(ckks: CKKS) -> None:
    good = ckks.public_context_bytes()
    assert CKKS.from_public_context(good).params == ckks.params
    header = json.loads(_reseal_parts(good)[0])
    for change in (
        {"precision_bits": 10**9},
        {"precision_bits": 10**400},
        {"depth": 10**12},
        {"poly_modulus_degree": 2**40},
        {"coeff_mod_bit_sizes": [45] * 10_000},
        {"coeff_mod_bit_sizes": [45, 30, 50]},
        {"precision_bits": 29},
        {"extra": 1},
        {"depth": "1"},
    ):
        t0 = time.perf_counter()
        with pytest.raises(SerializationError):
            CKKS.from_public_context(_reseal(good, b"EDILCKKS", header=json.dumps({**header, **change}).encode()))
        assert time.perf_counter() - t0 < 5.0, change


def _reseal_parts(data: bytes) -> tuple[bytes, bytes]:
    from benchmarks.fuzz import _split_envelope

    _, _, header, body = _split_envelope(data, b"EDILCKKS")
    return header, body


def test_ckks_context_body_must_match_its_header(ckks: CKKS) -> None:
    import tenseal as ts

    good = ckks.public_context_bytes()

    def public(ctx: object) -> bytes:
        return ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=True)  # type: ignore[attr-defined]

    def ckks_ctx(bits: list[int], scale: float) -> object:
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=bits)
        ctx.global_scale = scale
        ctx.generate_relin_keys()
        return ctx

    deeper = _reseal_parts(CKKS.for_depth(2).public_context_bytes())[1]
    private = ckks_ctx([45, 30, 45], 2.0**30)
    no_relin = ckks_ctx([45, 30, 45], 2.0**30)
    bodies = {
        "another chain": deeper,
        "other primes": public(ckks_ctx([50, 30, 50], 2.0**30)),
        "other scale": public(ckks_ctx([45, 30, 45], 2.0**25)),
        "BFV": ts.context(ts.SCHEME_TYPE.BFV, 8192, plain_modulus=1032193, coeff_mod_bit_sizes=[45, 30, 45]).serialize(
            save_secret_key=False
        ),
        "secret key": private.serialize(save_secret_key=True),  # type: ignore[attr-defined]
        "no relinearization key": no_relin.serialize(save_public_key=True, save_secret_key=False, save_relin_keys=False),  # type: ignore[attr-defined]
    }
    accepted = []
    for what, body in bodies.items():
        try:
            CKKS.from_public_context(_reseal(good, b"EDILCKKS", body=body))
            accepted.append(what)
        except SerializationError:
            pass
    assert accepted == []


def test_ckks_tensor_metadata_is_typed(ckks: CKKS) -> None:
    from benchmarks.fuzz import _split_envelope, seal_envelope_bytes

    node = CKKS.from_public_context(ckks.public_context_bytes())
    data = ckks.serialize(ckks.encode(np.array([[0.5], [1.5]])))
    assert np.allclose(ckks.decode(ckks.deserialize(node.serialize(node.deserialize(data)))), [[0.5], [1.5]], atol=1e-3)
    _, fp, meta_raw, body = _split_envelope(data, b"EDILCKKS", prefix_len=32)
    meta = json.loads(meta_raw)
    for change in (
        {"factors": ["0x1p99999999"]},
        {"factors": ["x" * 100]},
        {"levels": [10**30]},
        {"lens": [-1]},
        {"shape": [2] * 50},
        {"batched": 1},
        {"zz": 0},
    ):
        with pytest.raises(SerializationError):
            node.deserialize(seal_envelope_bytes(b"EDILCKKS", b"T", json.dumps({**meta, **change}).encode(), body, fp))


def test_paillier_context_refuses_a_huge_modulus_before_building_it() -> None:
    client = Paillier(key_bits=1024)
    good = client.public_context_bytes()
    assert Paillier.from_public_context(good).params == client.params
    header = json.loads(_paillier_parts(good))
    for change in (
        {"n": "f" * 2_000_000},
        {"n": "f" * 2049},
        {"n": "0x" + header["n"]},
        {"n": "0" + header["n"]},
        {"n": header["n"][:-1] + "2"},
        {"n": "1" * 100},
        {"slot_bits": 10**6},
        {"frac_bits": 10**20},
        {"pack": 1},
        {"int_bits": 2.0},
    ):
        t0 = time.perf_counter()
        with pytest.raises(SerializationError):
            Paillier.from_public_context(_reseal(good, b"EDILPAI", header=json.dumps({**header, **change}).encode()))
        assert time.perf_counter() - t0 < 2.0, change  # refused from the text: no 10^6-digit number is built


def _paillier_parts(data: bytes) -> bytes:
    from benchmarks.fuzz import _split_envelope

    return _split_envelope(data, b"EDILPAI")[2]
