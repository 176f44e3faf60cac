"""Paillier (phe + gmpy2): conformance, packing, headroom, unsupported operations."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from phe import paillier

import edil
from edil._paillier import Paillier, PaillierTensor
from tests import _workloads as wl
from tests.conformance import SchemeConformance

RNG = np.random.default_rng(5)
X = RNG.uniform(-4, 4, size=(6, 5))
W = RNG.uniform(-2, 2, size=(5, 3))


@functools.cache
def keys() -> tuple[object, object]:
    # 1024-bit keys keep the tests fast; the benchmark and the default use 2048.
    return paillier.generate_paillier_keypair(n_length=1024)


def scheme(**kw: object) -> Paillier:
    return Paillier(keypair=keys(), **kw)  # type: ignore[arg-type]


class TestPaillierConformance(SchemeConformance):
    # 16 fractional bits: encoding rounds by 2^-17 per value and per weight; no truncation.
    atol = 1e-4
    poly_atol = 0.0
    supports_mul = False  # additively homomorphic only
    supports_matmul = False
    supports_poly = False
    supports_private_weights = False
    max_disagreement = 0.005  # stated bound; measured 0 on breast cancer

    def make_scheme(self) -> edil.Scheme:
        return scheme()


class TestUnpackedPaillierConformance(TestPaillierConformance):
    def make_scheme(self) -> edil.Scheme:
        return scheme(pack=False)

    def test_logreg_breast_cancer_matches_plain(self) -> None:
        # one ciphertext per value is slow: the first 60 samples (the packed class runs all 569)
        x, _ = wl.breast_cancer()
        _, model = wl.logreg_breast_cancer()
        assert 1.0 - self._agreement(model, x[:60]) <= self.max_disagreement


def test_packing_divides_the_ciphertext_count() -> None:
    s = scheme()
    x = RNG.uniform(-100, 100, size=(2000, 1))
    enc = s.encode(x)
    assert s.slots_per_ciphertext >= 10
    assert enc.n_ciphertexts == -(-2000 // s.slots_per_ciphertext)
    np.testing.assert_allclose(s.decode(enc), x, atol=1e-4)
    np.testing.assert_allclose(s.decode(s.sum(enc, axis=0)), x.sum(axis=0), atol=1e-2)


def test_negative_weights_and_scale_bookkeeping() -> None:
    s = scheme()
    x = np.array([[1.5, -2.0], [-3.25, 0.5], [0.0, 7.0]])
    w = np.array([[-1.0, 0.25], [2.0, -0.5]])
    out = s.matmul_public(s.encode(x), w)
    assert isinstance(out, PaillierTensor) and set(out.scales) == {2 * s.frac_bits}
    np.testing.assert_allclose(s.decode(s.add_public(out, [1.0, -1.0])), x @ w + [1.0, -1.0], atol=1e-4)


def test_headroom_is_checked_before_overflow() -> None:
    s = scheme(slot_bits=60)  # room for values x weights and ~500 additions, not more
    enc = s.encode(X)
    with pytest.raises(edil.ParameterError, match="slot_bits"):
        s.matmul_public(enc, np.full((5, 3), 1000.0))
    big = s.matmul_public(enc, W)
    acc = big
    with pytest.raises(edil.ParameterError, match="overflow"):
        for _ in range(1 << 12):
            acc = s.add(acc, big)


def test_encode_range_is_checked() -> None:
    with pytest.raises(edil.OverflowRangeError):
        scheme().encode([[2.0**15]])


def test_products_and_activations_are_unsupported() -> None:
    s = scheme()
    a = s.encode(X)
    with pytest.raises(edil.UnsupportedOperationError, match="additive"):
        s.mul(a, a)
    with pytest.raises(edil.UnsupportedOperationError):
        s.polyval(a, [0.0, 1.0, 1.0])
    with pytest.raises(edil.UnsupportedOperationError):
        s.matmul(a, a)
    with pytest.raises(edil.UnsupportedOperationError, match="batch axis"):
        s.mul_public(a, X)  # varies along the packed axis


def test_unpacked_scheme_allows_elementwise_public_products() -> None:
    s = scheme(pack=False)
    np.testing.assert_allclose(s.decode(s.mul_public(s.encode(X), X)), X * X, atol=1e-3)


def test_values_under_another_key_are_rejected() -> None:
    other = Paillier(key_bits=1024)
    with pytest.raises(edil.SchemeMismatchError):
        scheme().add(scheme().encode(X), other.encode(X))


_vals = arrays(np.float64, (4, 2), elements=st.floats(-100, 100, allow_nan=False, width=64))


@settings(max_examples=15, deadline=None)
@given(_vals, _vals)
def test_add_sub_are_homomorphic(x: np.ndarray, y: np.ndarray) -> None:
    s = scheme()
    a, b = s.encode(x), s.encode(y)
    np.testing.assert_allclose(s.decode(s.add(a, b)), x + y, atol=1e-4)
    np.testing.assert_allclose(s.decode(s.sub(a, b)), x - y, atol=1e-4)


@settings(max_examples=15, deadline=None)
@given(_vals, arrays(np.float64, (2, 3), elements=st.floats(-10, 10, allow_nan=False, width=64)))
def test_matmul_public_is_linear(x: np.ndarray, w: np.ndarray) -> None:
    s = scheme()
    # weights are rounded to frac_bits: error <= sum |x| * 2^-17
    np.testing.assert_allclose(s.decode(s.matmul_public(s.encode(x), w)), x @ w, atol=2e-3)


def test_public_context_and_serialization_roundtrip() -> None:
    """A node rebuilt from the public context computes, serializes, and cannot decrypt."""
    s = scheme()
    node = Paillier.from_public_context(s.public_context_bytes())
    assert s.is_private and not node.is_private and node.params == s.params
    x = np.array([[0.5, -1.25], [2.0, 3.5], [-4.0, 0.0]])
    y = node.add_public(node.matmul_public(node.deserialize(s.serialize(s.encode(x))), [[1.0], [-2.0]]), [0.5])
    np.testing.assert_allclose(s.decode(s.deserialize(node.serialize(y))), x @ [[1.0], [-2.0]] + 0.5, atol=1e-4)
    with pytest.raises(edil.UnsupportedOperationError, match="private key"):
        node.decode(y)
    data = node.serialize(y)
    for bad in (data[:-1], data[:10], b"x" + data[1:], data[:40] + bytes([data[40] ^ 1]) + data[41:]):
        with pytest.raises(edil.SerializationError):
            s.deserialize(bad)
    with pytest.raises(edil.SchemeMismatchError):
        Paillier(key_bits=1024).deserialize(data)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_deserialize_fails_closed_on_any_corruption(data) -> None:
    """Any truncation, bit flip or splice of serialized bytes raises an EdilError, never something else."""
    s = _fuzz_scheme()
    blob = _fuzz_blob()
    ctx = s.public_context_bytes()
    target = data.draw(st.sampled_from(["tensor", "context"]))
    raw = bytearray(blob if target == "tensor" else ctx)
    how = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    if how == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    with pytest.raises(edil.EdilError):
        if target == "tensor":
            s.deserialize(bytes(raw))
        else:
            Paillier.from_public_context(bytes(raw))


@functools.cache
def _fuzz_scheme() -> Paillier:
    return scheme()


@functools.cache
def _fuzz_blob() -> bytes:
    s = _fuzz_scheme()
    return s.serialize(s.encode(np.arange(6.0).reshape(3, 2)))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.update(shape=[3, 5]),
        lambda m: m.update(batch=2),
        lambda m: m.update(layout="diagonal"),
        lambda m: m.update(scales=[10**6, 16]),
        lambda m: m.update(bounds=["-1", "1"]),
        lambda m: m["columns"][0].__setitem__(0, "0"),
        lambda m: m["columns"][0].__setitem__(0, "zz"),
        lambda m: m["columns"].pop(),
        lambda m: m.pop("clean"),
        lambda m: m.update(shape=[2**63 - 1, 2**63 - 1], layout="row"),  # would wrap an int64 product
        lambda m: m.update(shape=[3, 2**62, 4]),
        lambda m: m.update(shape=[3, True]),
        lambda m: m.update(batch=3.0),
        lambda m: m.update(clean="false"),
        lambda m: m.update(shape=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
    ],
)
def test_well_sealed_but_inconsistent_values_are_refused(mutate) -> None:
    """The checksum is not a MAC: metadata that passes it must still be checked against the ciphertexts."""
    import json

    from edil._paillier import _KIND_TENSOR, _seal, _unseal

    s = _fuzz_scheme()
    meta = json.loads(_unseal(_fuzz_blob(), _KIND_TENSOR))
    mutate(meta)
    with pytest.raises(edil.SerializationError):
        s.deserialize(_seal(_KIND_TENSOR, json.dumps(meta).encode()))


def test_deeply_nested_json_is_a_serialization_error() -> None:
    from edil._paillier import _KIND_CONTEXT, _KIND_TENSOR, _seal

    deep = ("[" * 100_000 + "]" * 100_000).encode()
    with pytest.raises(edil.SerializationError):
        _fuzz_scheme().deserialize(_seal(_KIND_TENSOR, deep))
    with pytest.raises(edil.SerializationError):
        Paillier.from_public_context(_seal(_KIND_CONTEXT, deep))
    ctx = json.loads(_unseal_ctx())
    ctx["pack"] = "false"
    with pytest.raises(edil.SerializationError):
        Paillier.from_public_context(_seal(_KIND_CONTEXT, json.dumps(ctx).encode()))


def _unseal_ctx() -> bytes:
    from edil._paillier import _KIND_CONTEXT, _unseal

    return _unseal(_fuzz_scheme().public_context_bytes(), _KIND_CONTEXT)
