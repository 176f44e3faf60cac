from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edil
from edil import FixedPoint
from edil._fixed import TRUNCATION_BOUND, Headroom


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 24), st.floats(-1.0, 1.0))
def test_decode_encode_round_trip_within_half_ulp(frac_bits: int, unit: float) -> None:
    fp = FixedPoint(frac_bits)
    x = unit * fp.max_abs * 0.999
    assert abs(fp.decode(fp.encode([x]))[0] - x) <= 2.0 ** (-frac_bits - 1) * (1 + 1e-9)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(bad: float) -> None:
    with pytest.raises(edil.EncodingError, match="non-finite"):
        FixedPoint(16).encode([1.0, bad])


def test_out_of_range_rejected_never_wrapped() -> None:
    fp = FixedPoint(16)
    with pytest.raises(edil.OverflowRangeError, match="32768"):
        fp.encode([fp.max_abs])
    with pytest.raises(edil.EncodingError):
        fp.encode([-1e30])


def test_bad_frac_bits_and_types() -> None:
    with pytest.raises(ValueError):
        FixedPoint(0)
    with pytest.raises(TypeError):
        FixedPoint(16.0)  # type: ignore[arg-type]
    with pytest.raises(edil.EncodingError):
        FixedPoint(16).encode("abc")
    with pytest.raises(edil.EncodingError):
        FixedPoint(16).decode(np.array([1.0]))


def test_negative_values_are_twos_complement() -> None:
    assert FixedPoint(16).encode([-1.0])[0] == np.uint64((1 << 64) - (1 << 16))


# --- precision checks: underflow (check_resolution) ------------------------------------------------
def _suggested_frac_bits(message: str) -> int:
    m = re.search(r"frac_bits >= (\d+)", message)
    assert m, message
    return int(m.group(1))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 24), st.floats(-8.0, 8.0, allow_nan=False), st.integers(-30, 0))
def test_check_resolution_refuses_exactly_the_values_that_lose_over_half(frac_bits: int, mantissa: float, exp: int) -> None:
    # Reference: the encoder itself. A value is refused iff it is nonzero and its round trip
    # loses more than half of its magnitude.
    fp = FixedPoint(frac_bits)
    v = mantissa * 2.0**exp
    back = float(fp.decode(fp.encode([v]))[0])
    underflows = v != 0.0 and abs(back - v) > abs(v) / 2
    if underflows:
        with pytest.raises(edil.EncodingError, match="underflows") as err:
            fp.check_resolution([v], "layer 1 weight")
        if "no frac_bits up to 28" in str(err.value):
            with pytest.raises(edil.EncodingError):
                FixedPoint(28).check_resolution([v], "layer 1 weight")
            return
        need = _suggested_frac_bits(str(err.value))
        FixedPoint(need).check_resolution([v], "layer 1 weight")  # the suggestion holds it...
        if need - 1 > frac_bits:
            with pytest.raises(edil.EncodingError):  # ...and is the smallest that does
                FixedPoint(need - 1).check_resolution([v], "layer 1 weight")
    else:
        fp.check_resolution([v], "layer 1 weight")


def test_check_resolution_names_the_value_and_its_place() -> None:
    w = np.full((5, 9), 0.25)
    w[3, 7] = 3e-6  # 0.2 units at 16 bits: encodes to 0
    w[1, 2] = -1e-7
    with pytest.raises(edil.EncodingError) as err:
        FixedPoint(16).check_resolution(w, "layer 2 weight")
    msg = str(err.value)
    assert "layer 2 weight [3, 7]" in msg and "3e-06" in msg and "(and 1 more)" in msg
    assert "frac_bits=16" in msg
    need = _suggested_frac_bits(msg)
    FixedPoint(need).check_resolution(w, "layer 2 weight")
    assert need > 16
    # Zeros are exact, never refused; ordinary values are rounded, never refused.
    FixedPoint(16).check_resolution(np.zeros((3, 3)), "bias")
    FixedPoint(16).check_resolution([1.0, -0.3, 2.0**-16], "bias")


def test_check_resolution_with_a_bound_refuses_only_losses_that_show() -> None:
    fp = FixedPoint(16)
    # The digits MLP's ReLU fit: its x^3 coefficient is a least-squares numerical zero.
    fit = (0.4305, 0.5, 0.1116, 4.36e-18, -0.001034)
    fp.check_resolution(fit, "layer 2 polynomial coefficient", bound=7.35 ** np.arange(5))
    with pytest.raises(edil.EncodingError, match=r"polynomial coefficient \[3\]"):
        fp.check_resolution(fit, "layer 2 polynomial coefficient")  # without a bound every underflow is refused
    # A wide interval: x^4 reaches 3.3e6, so dropping c4 = -5.3e-6 would move the output by ~17.
    wide = (2.5, 0.5, 0.0192, -2.8e-19, -5.28e-6)
    with pytest.raises(edil.EncodingError, match=r"coefficient \[4\].*no frac_bits up to 28"):
        fp.check_resolution(wide, "layer 2 polynomial coefficient", bound=42.65 ** np.arange(5))
    with pytest.raises(edil.EncodingError) as err:
        fp.check_resolution(wide, "layer 2 polynomial coefficient", bound=6.0 ** np.arange(5))
    need = _suggested_frac_bits(str(err.value))
    # at the suggestion, what the coefficient loses times 6^4 is below one unit of 2^-16
    y = wide[4] * 2.0**need
    assert abs(np.rint(y) - y) * 2.0**-need * 6.0**4 < 2.0**-16


def test_check_resolution_along_an_axis_adds_up_the_dropped_terms() -> None:
    # 256 weights of 1e-6 feeding one output: each alone is invisible (0.07 units), together
    # they move that output by 17 units.
    w = np.full((256, 2), 0.3)
    w[:, 0] = 1e-6
    fp = FixedPoint(16)
    fp.check_resolution(w, "layer 1 weight", bound=1.0)
    with pytest.raises(edil.EncodingError, match=r"layer 1 weight \[\d+, 0\].*and 255 more") as err:
        fp.check_resolution(w, "layer 1 weight", bound=1.0, axis=0)
    FixedPoint(_suggested_frac_bits(str(err.value))).check_resolution(w, "layer 1 weight", bound=1.0, axis=0)
    with pytest.raises(ValueError):
        fp.check_resolution(w, "layer 1 weight", axis=0)
    with pytest.raises(ValueError):
        fp.check_resolution(w, "layer 1 weight", bound=-1.0)
    with pytest.raises(edil.EncodingError):
        fp.check_resolution([np.nan], "layer 1 weight")


# --- precision checks: ring headroom ---------------------------------------------------------------
def _trunc(v: int, f: int) -> int:
    """The worst of the protocol's two outcomes ``floor(v / 2^f) + {0, 1}``, in magnitude."""
    lo = v >> f
    return max(lo, lo + 1, key=abs)


@settings(max_examples=60, deadline=None)
@given(st.integers(8, 20), st.floats(0.01, 50.0), st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_dense_headroom_bounds_every_pre_truncation_dot_product(frac_bits: int, bound: float, k: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    fp = FixedPoint(frac_bits)
    w = rng.normal(scale=3.0, size=(k, n))
    b = rng.normal(size=n)
    h = fp.dense_headroom(bound, w, b)
    w_enc = [[int(v) for v in row] for row in fp.encode(w).view(np.int64)]
    b_enc = [int(v) for v in fp.encode(b).view(np.int64)]
    # inputs at the corners of the box (where the dot products peak), with a truncation carry
    for _ in range(20):
        x = rng.choice([-1.0, 1.0], size=k) * bound
        x_enc = [int(v) + int(rng.integers(-1, 2)) for v in fp.encode(x).view(np.int64)]
        for j in range(n):
            dot = sum(xi * w_enc[i][j] for i, xi in enumerate(x_enc))
            assert abs(dot) <= h.product
            assert abs(_trunc(dot, frac_bits) + b_enc[j]) <= h.output * fp.scale
    # sign-aligned inputs reach the bound up to the rounding of the input (tight)
    j = int(np.argmax(np.abs(w).sum(axis=0)))
    x_enc = [int(np.sign(w_enc[i][j]) or 1) * int(fp.encode([bound])[0]) for i in range(k)]
    worst = abs(sum(xi * w_enc[i][j] for i, xi in enumerate(x_enc)))
    assert worst <= h.product <= worst + 2 * sum(abs(w_enc[i][j]) for i in range(k))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(8, 20), st.floats(0.01, 40.0), st.lists(st.floats(-3.0, 3.0), min_size=1, max_size=7), st.integers(0, 2**32 - 1)
)
def test_poly_headroom_bounds_every_step_of_the_protocol(frac_bits: int, bound: float, coeffs: list[float], seed: int) -> None:
    rng = np.random.default_rng(seed)
    fp = FixedPoint(frac_bits)
    h = fp.poly_headroom(bound, coeffs)
    c = [int(v) for v in fp.encode(coeffs).view(np.int64)]
    for x in (bound, -bound, *rng.uniform(-bound, bound, size=6)):
        # The steps of edil._mpc.polyval on plain integers, each truncation with its worst carry.
        xe = int(fp.encode([x])[0].view(np.int64)) + int(rng.integers(-1, 2))
        powers, seen = [xe], []
        for i in range(2, len(c)):
            q = powers[i // 2 - 1] ** 2 if i % 2 == 0 else powers[i - 2] * xe
            seen.append(q)
            powers.append(_trunc(q, frac_bits))
        acc = sum(ck * pk for ck, pk in zip(c[1:], powers))
        seen.append(acc)
        assert max(abs(v) for v in seen) <= h.product
        out = (_trunc(acc, frac_bits) if len(c) > 1 else 0) + c[0]
        assert abs(out) <= h.output * fp.scale


def test_check_headroom_refuses_a_layer_that_could_wrap_and_suggests_frac_bits() -> None:
    fp = FixedPoint(16)
    w = np.full((1000, 2), 30000.0)
    h = fp.dense_headroom(30000.0, w)
    assert not h.fits and h.bits > 62
    with pytest.raises(edil.OverflowRangeError, match=r"layer 1 \(dense\).*2\^62") as err:
        fp.check_headroom(h, "layer 1 (dense)")
    m = re.search(r"frac_bits <= (\d+)", str(err.value))
    assert m
    fewer = FixedPoint(int(m.group(1)))
    assert fewer.dense_headroom(30000.0, w).fits
    # a layer that fits passes, and the limit is exactly 2^62
    fp.check_headroom(fp.dense_headroom(1.0, np.ones((64, 32))), "layer 1 (dense)")
    assert TRUNCATION_BOUND == 2**62
    edge = Headroom(TRUNCATION_BOUND - 1, 1.0, 16)
    assert edge.fits and not Headroom(TRUNCATION_BOUND, 1.0, 16).fits
    fp.check_headroom(edge, "edge")
    # a degree-8 polynomial over a wide interval: x^8 alone is 2^(8*log2(40) + 32) > 2^62
    with pytest.raises(edil.OverflowRangeError):
        fp.check_headroom(fp.poly_headroom(40.0, [0.0] * 8 + [1e-9]), "layer 2 (polynomial)")
