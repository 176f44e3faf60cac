"""CKKS (TenSEAL): conformance, serialization and tampering, node-side privacy, parameters."""

from __future__ import annotations

import functools
import hashlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import edil
from edil import models
from edil._ckks import _KIND_CONTEXT, _MAGIC, _VERSION, CKKS, CKKSTensor, poly_depth, required_depth
from tests import _workloads as wl
from tests.conformance import SchemeConformance

RNG = np.random.default_rng(3)
X = RNG.uniform(-4, 4, size=(6, 5))
W = RNG.uniform(-2, 2, size=(5, 3))


@functools.cache
def client() -> CKKS:
    """One client scheme for the whole module: depth 4 (the digits MLP), Galois keys for sums."""
    return CKKS(depth=4, galois_keys=True)


@functools.cache
def small() -> CKKS:
    """A cheaper client (no Galois keys) for serialization and property tests."""
    return CKKS(depth=2)


@functools.cache
def deep() -> CKKS:
    return CKKS(depth=3)


class TestCKKSConformance(SchemeConformance):
    # precision_bits=30: each op errs by ~1e-5; a sum over the batch axis rotates over all
    # 4096 slots and gathers ~3e-3 of key-switching noise, hence atol (x6 in the sum test).
    atol = 1e-3
    poly_atol = 1e-3
    supports_mul = True
    supports_matmul = False  # model weights are public under CKKS (no encrypted x encrypted matmul)
    supports_poly = True
    supports_private_weights = False
    # Stated bound: at most 0.5% of predictions may differ from Plain (measured: 0 on both models).
    max_disagreement = 0.005
    mlp_samples = None  # the full 1797-sample digits set

    def make_scheme(self) -> edil.Scheme:
        return client()


# --- parameters and depth ----------------------------------------------------------------------
def test_poly_depth_is_at_most_log2_and_monotone() -> None:
    depths = [poly_depth(d) for d in range(1, 17)]
    assert depths[:4] == [0, 1, 2, 2]
    assert all(a <= b for a, b in zip(depths, depths[1:]))
    assert all(dep <= max(0, int(np.ceil(np.log2(d)))) for d, dep in zip(range(1, 17), depths))


def test_required_depth_of_the_workloads() -> None:
    assert required_depth(wl.logreg_breast_cancer()[1]) == 1
    assert required_depth(wl.mlp_digits()[1]) == 4  # dense 1 + degree-4 polynomial 2 + dense 1


def test_parameters_grow_with_depth() -> None:
    n1, bits1 = CKKS.choose_parameters(1)
    n8, bits8 = CKKS.choose_parameters(8)
    assert n1 == 8192 and len(bits1) == 3
    assert n8 == 16384 and len(bits8) == 10


def test_depth_that_does_not_fit_names_the_depth() -> None:
    with pytest.raises(edil.ParameterError, match="depth 40"):
        CKKS.choose_parameters(40)


def test_running_out_of_levels_names_the_depth_needed() -> None:
    s = CKKS(depth=1)
    h = s.matmul_public(s.encode(X), W)
    with pytest.raises(edil.ParameterError, match="depth >= 2"):
        s.polyval(h, [0.0, 0.0, 1.0])
    with pytest.raises(edil.ParameterError, match="needs multiplicative depth 4"):
        s.check_model(wl.mlp_digits()[1])


def test_model_sized_scheme_runs_the_model() -> None:
    _, model = wl.logreg_breast_cancer()
    x, _ = wl.breast_cancer()
    s = CKKS.for_model(model)
    s.check_model(model)
    got = models.encode_model(model, s).infer(x[:50])
    np.testing.assert_allclose(got, model.forward(x[:50]), atol=1e-3)


def test_encode_range_is_checked() -> None:
    s = small()
    with pytest.raises(edil.OverflowRangeError):
        s.encode([[2.0**20]])
    with pytest.raises(edil.EncodingError):
        s.encode(np.zeros((0, 3)))


def test_batch_larger_than_the_slots_spans_ciphertexts() -> None:
    s = small()
    x = RNG.uniform(-1, 1, size=(s.slots + 3, 2))
    enc = s.encode(x)
    assert enc.chunks == 2 and enc.n_ciphertexts == 4
    out = s.add(s.matmul_public(enc, [[1.0], [-2.0]]), s.encode([0.5]))
    np.testing.assert_allclose(s.decode(out), x @ [[1.0], [-2.0]] + 0.5, atol=1e-3)


def test_public_factors_absorb_rescale_drift() -> None:
    # Three chained products: without the exact q/Delta bookkeeping the 30-bit primes would
    # leave a relative drift of ~1e-4 per level.
    s = CKKS(depth=3)
    x = RNG.uniform(1, 3, size=(4, 2))
    enc = s.encode(x)
    y = s.matmul_public(enc, np.eye(2))
    y = s.mul(y, y)
    y = s.mul_public(y, np.full((4, 2), 0.5))
    np.testing.assert_allclose(s.decode(y), 0.5 * x**2, rtol=1e-5)


# --- keys: the node cannot decrypt ----------------------------------------------------------------
def test_node_computes_but_cannot_decrypt() -> None:
    s = small()
    ctx_bytes = s.public_context_bytes()
    node = CKKS.from_public_context(ctx_bytes)
    assert s.is_private and not node.is_private
    assert node.scheme_id == s.scheme_id and node.fingerprint == s.fingerprint
    enc = node.deserialize(s.serialize(s.encode(X)))
    out = node.add_public(node.matmul_public(enc, W), [0.5, -1.0, 2.0])
    with pytest.raises(edil.UnsupportedOperationError, match="secret key"):
        node.decode(out)
    # Not only our guard: TenSEAL itself holds no secret key on the node side.
    with pytest.raises(ValueError, match="secret"):
        out.columns[0].decrypt()
    with pytest.raises(ValueError, match="[Ss]ecret"):
        node._ctx.secret_key()
    back = s.deserialize(node.serialize(out))
    np.testing.assert_allclose(s.decode(back), X @ W + [0.5, -1.0, 2.0], atol=1e-3)


def test_a_private_context_is_refused_by_nodes() -> None:
    s = small()
    body = s._ctx.serialize(save_secret_key=True)
    header = json.dumps(s._p, sort_keys=True).encode()  # a valid header: the secret key alone is refused
    payload = _MAGIC + _KIND_CONTEXT + struct.pack("<HI", _VERSION, len(header)) + header + body
    with pytest.raises(edil.SerializationError, match="secret key"):
        CKKS.from_public_context(payload + hashlib.sha256(payload).digest())


# --- serialization and tampering ----------------------------------------------------------------
def test_serialize_round_trip_and_sizes() -> None:
    s = small()
    enc = s.encode(X)
    data = s.serialize(enc)
    back = s.deserialize(data)
    assert isinstance(back, CKKSTensor) and back.shape == X.shape
    np.testing.assert_allclose(s.decode(back), X, atol=1e-4)
    # one ciphertext per feature; a fresh N=8192 ciphertext with 3 data primes is ~300 KB
    per_ct = len(data) / enc.n_ciphertexts
    assert 100_000 < per_ct < 600_000
    assert len(s.public_context_bytes()) < 20_000_000


@pytest.mark.parametrize("where", [0, 9, 60, -1, -40, "middle"])
def test_corrupted_bytes_raise_serialization_error(where: int | str) -> None:
    s = small()
    data = bytearray(s.serialize(s.encode(X[:2])))
    i = len(data) // 2 if where == "middle" else int(where)  # type: ignore[arg-type]
    data[i] ^= 0x5A
    with pytest.raises(edil.SerializationError):
        s.deserialize(bytes(data))


@pytest.mark.parametrize("keep", [0, 5, 20, 100, 5000, -1])
def test_truncated_bytes_raise_serialization_error(keep: int) -> None:
    s = small()
    data = s.serialize(s.encode(X[:2]))
    with pytest.raises(edil.SerializationError):
        s.deserialize(data[:keep])


@pytest.mark.parametrize("offset", [200, 1000, 5000, 50_000])
def test_tampered_ciphertext_with_a_recomputed_checksum_never_crashes(offset: int) -> None:
    # The digest catches accidental corruption, it is not a MAC: someone who recomputes it can
    # make SEAL parse a modified ciphertext (integrity against malicious nodes comes from
    # redundancy and audits, not from serialization). What we guarantee: an EdilError or a
    # well-formed value, never a TenSEAL/SEAL exception or a crash.
    s = small()
    data = bytearray(s.serialize(s.encode(X[:2])))
    data[len(data) - 32 - offset] ^= 0xFF
    payload = bytes(data[:-32])
    try:
        out = s.deserialize(payload + hashlib.sha256(payload).digest())
    except edil.SerializationError:
        return
    assert isinstance(out, CKKSTensor) and out.shape == (2, 5)


def test_ciphertext_from_another_context_is_rejected() -> None:
    other = CKKS(depth=2)
    data = other.serialize(other.encode(X))
    with pytest.raises(edil.SchemeMismatchError):
        small().deserialize(data)
    with pytest.raises(edil.SchemeMismatchError):
        small().add(small().encode(X), other.encode(X))


def test_declared_shape_checks_the_framing_context_and_metadata_but_reads_no_ciphertext() -> None:
    s = small()
    data = s.serialize(s.encode(X[:3]))
    assert s.declared_shape(data) == s.deserialize(data).shape == (3, X.shape[1])
    other = CKKS(depth=2)
    with pytest.raises(edil.SchemeMismatchError):
        s.declared_shape(other.serialize(other.encode(X[:1])))
    for bad in (data[:5], data[:100], data[:-1000], s.public_context_bytes(), b"garbage" * 20):
        with pytest.raises(edil.SerializationError):
            s.declared_shape(bad)
    # The body is not read: a flipped ciphertext byte is for deserialize (the checksum) to refuse.
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    assert s.declared_shape(bytes(flipped)) == (3, X.shape[1])
    with pytest.raises(edil.SerializationError):
        s.deserialize(bytes(flipped))


def test_wrong_kind_of_bytes_is_rejected() -> None:
    s = small()
    with pytest.raises(edil.SerializationError):
        CKKS.from_public_context(s.serialize(s.encode(X[:1])))
    with pytest.raises(edil.SerializationError):
        s.deserialize(s.public_context_bytes())
    with pytest.raises(edil.SerializationError):
        CKKS.from_public_context(b"garbage" * 20)
    with pytest.raises(TypeError):
        s.deserialize("not bytes")  # type: ignore[arg-type]


# --- serialization of every value the scheme produces ---------------------------------------------
def _special_values(s: CKKS) -> dict[str, tuple[CKKSTensor, np.ndarray]]:
    """Values whose columns are zero, constant, sparse or never encrypted, with their plaintext."""
    x = s.encode(X)
    sparse = W.copy()
    sparse[:, 1] = 0.0  # an all-zero output column: a fresh encryption of zero at level 0
    mask = np.array([0.0, 1.0, 0.0, 2.0, 0.0])
    const = np.array([1.0, -2.0, 0.0, 3.0, 0.5])
    return {
        "zeros_batched": (s.encode(np.zeros((3, 2))), np.zeros((3, 2))),
        "zeros_unbatched": (s.encode(np.zeros(4)), np.zeros(4)),
        "zero_columns": (s.mul_public(x, mask), X * mask),
        "sparse_weights": (s.matmul_public(x, sparse), X @ sparse),
        "all_zero_weights": (s.matmul_public(x, np.zeros((5, 3))), np.zeros((6, 3))),
        "zero_bias": (s.add_public(s.matmul_public(x, W), np.zeros(3)), X @ W),
        "constant_columns": (s.add_public(s.mul_public(x, np.zeros(5)), const), np.broadcast_to(const, X.shape)),
        "constant_polynomial": (s.polyval(x, [3.0]), np.full(X.shape, 3.0)),
    }


@pytest.mark.parametrize(
    "name",
    ["zeros_batched", "zeros_unbatched", "zero_columns", "sparse_weights", "all_zero_weights", "zero_bias", "constant_columns", "constant_polynomial"],
)
def test_every_kind_of_value_round_trips_through_a_node(name: str) -> None:
    s = small()
    value, expect = _special_values(s)[name]
    node = CKKS.from_public_context(s.public_context_bytes())
    on_node = node.deserialize(s.serialize(value))
    assert on_node.shape == value.shape
    back = s.deserialize(node.serialize(on_node))
    np.testing.assert_allclose(s.decode(back), expect, atol=1e-4)
    np.testing.assert_array_equal(back.levels, value.levels)


def test_a_task_for_a_model_with_an_all_zero_bias_runs_on_a_node() -> None:
    # Such a model used to fail on every node: its output's metadata held a numpy bool that
    # the JSON header could not encode.
    from edil import runtime as rt

    model = models.Sequential(
        (models.Dense(W, np.zeros(3)), models.Polynomial((0.0, 1.0, 0.25)), models.Dense(RNG.normal(size=(3, 2)), np.zeros(2)))
    )
    s = CKKS.for_model(model)
    task = rt.Task.from_bytes(rt.Task.for_scheme(s, model, s.encode(X), model_public=True).to_bytes())
    out = rt.default_runners()["ckks"].run(task)
    np.testing.assert_allclose(s.decode(s.deserialize(out)), model.forward(X), atol=1e-3)


# --- scope ---------------------------------------------------------------------------------------
def test_sum_over_batch_needs_galois_keys() -> None:
    with pytest.raises(edil.UnsupportedOperationError, match="galois_keys"):
        small().sum(small().encode(X), axis=0)


def test_product_by_a_zero_column_and_constant_polynomial() -> None:
    s = small()
    enc = s.encode(X)
    np.testing.assert_allclose(s.decode(s.mul_public(enc, [0.0, 1.0, 2.0, 0.0, -1.0])), X * [0.0, 1.0, 2.0, 0.0, -1.0], atol=1e-4)
    np.testing.assert_allclose(s.decode(s.polyval(enc, [3.0])), np.full_like(X, 3.0), atol=1e-4)


# --- homomorphism laws (Hypothesis; moderate counts, HE is slow) -------------------------------
_vals = arrays(np.float64, (3, 2), elements=st.floats(-8, 8, allow_nan=False, width=64))


@settings(max_examples=8, deadline=None)
@given(_vals, _vals)
def test_add_is_homomorphic(x: np.ndarray, y: np.ndarray) -> None:
    s = small()
    np.testing.assert_allclose(s.decode(s.add(s.encode(x), s.encode(y))), x + y, atol=1e-3)


@settings(max_examples=8, deadline=None)
@given(_vals, arrays(np.float64, (2, 2), elements=st.floats(-3, 3, allow_nan=False, width=64)), st.floats(-4, 4))
def test_matmul_public_is_linear(x: np.ndarray, w: np.ndarray, b: float) -> None:
    s = small()
    got = s.decode(s.add_public(s.matmul_public(s.encode(x), w), b))
    np.testing.assert_allclose(got, x @ w + b, atol=1e-3)


@settings(max_examples=6, deadline=None)
@given(arrays(np.float64, (2, 2), elements=st.floats(-2, 2, allow_nan=False, width=64)),
       st.lists(st.floats(-1, 1), min_size=1, max_size=5))
def test_polyval_matches_numpy(x: np.ndarray, coeffs: list[float]) -> None:
    # depth 3: one level beyond the plan, for ill-conditioned coefficients (tiny leading term)
    s = deep()
    got = s.decode(s.polyval(s.encode(x), coeffs))
    np.testing.assert_allclose(got, np.polynomial.polynomial.polyval(x, coeffs), atol=2e-3)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.update(shape=[2**63 - 1, 2**63 - 1]),
        lambda m: m.update(shape=[2, True]),
        lambda m: m.update(batched="yes"),
        lambda m: m.update(clean=1),
    ],
)
def test_untrusted_tensor_metadata_is_refused_even_when_well_sealed(mutate) -> None:
    import json

    from edil._ckks import _DIGEST, _KIND_TENSOR

    s = small()
    data = s.serialize(s.encode(np.ones((2, 3))))
    fixed = len(_MAGIC) + 1 + 6
    _, hlen = struct.unpack("<HI", data[len(_MAGIC) + 1 : fixed])
    fp, meta_raw = data[fixed : fixed + _DIGEST], data[fixed + _DIGEST : fixed + _DIGEST + hlen]
    body = data[fixed + _DIGEST + hlen : -_DIGEST]

    def seal(meta: dict) -> bytes:
        header = json.dumps(meta, sort_keys=True).encode()
        payload = _MAGIC + _KIND_TENSOR + struct.pack("<HI", _VERSION, len(header)) + fp + header + body
        return payload + hashlib.sha256(payload).digest()

    meta = json.loads(meta_raw)
    np.testing.assert_allclose(s.decode(s.deserialize(seal(meta))), np.ones((2, 3)), atol=1e-4)  # the rebuild itself is valid
    mutate(meta)
    with pytest.raises(edil.SerializationError):
        s.deserialize(seal(meta))
