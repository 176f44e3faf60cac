from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edil
from edil import FixedPoint


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
