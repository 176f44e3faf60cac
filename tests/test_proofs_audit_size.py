"""The audit sample size meets its stated detection target: checked against exact enumeration."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edil import ParameterError, UnsupportedOperationError
from edil.proofs import audit_detection, audit_sample_size


def _enumerated_detection(n: int, cheated: int, k: int) -> Fraction:
    """Share of all k-subsets of n transcripts that contain at least one of the first `cheated`."""
    bad = set(range(cheated))
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(1 for s in subsets if bad.intersection(s))
    return Fraction(hits, len(subsets))


def _enumerated_size(n: int, f: Fraction, target: Fraction) -> int:
    cheated = math.ceil(f * n)
    return next(k for k in range(n + 1) if _enumerated_detection(n, cheated, k) >= target)


CASES = [
    (n, f, d)
    for n in (1, 2, 3, 5, 8, 12, 16)
    for f in (Fraction(1, 20), Fraction(1, 10), Fraction(1, 4), Fraction(1, 2), Fraction(1))
    for d in (Fraction(1, 2), Fraction(9, 10), Fraction(99, 100), Fraction(1))
]


@pytest.mark.parametrize(("n", "f", "d"), CASES)
def test_sample_size_is_the_smallest_that_meets_the_target_by_enumeration(n, f, d):
    k = audit_sample_size(n, f, d)
    assert k == _enumerated_size(n, f, d)
    cheated = math.ceil(f * n)
    assert audit_detection(n, k, f) == _enumerated_detection(n, cheated, k) >= d
    if k > 0:  # one sample fewer misses the target
        assert _enumerated_detection(n, cheated, k - 1) < d


def test_ties_count_as_met_and_floats_are_read_as_decimals():
    # N = 10, one cheated task: k samples detect with probability k/10 exactly.
    assert audit_sample_size(10, 0.05, 0.9) == 9
    assert audit_sample_size(10, 0.05, 0.91) == 10
    # 0.07 * 100 is 7.000000000000001 in binary floating point; the fraction read is 7/100, so 7 tasks.
    assert audit_detection(100, 1, 0.07) == Fraction(7, 100)


def test_large_batches_need_about_ln_miss_over_ln_one_minus_f():
    # Sampling with replacement needs ceil(ln(0.01) / ln(0.95)) = 90; without replacement at most that.
    for n in (10_000, 10**6, 10**12, 2**64 - 1):
        k = audit_sample_size(n)
        assert k == 90, n
        assert audit_detection(n, k) >= Fraction(99, 100) > audit_detection(n, k - 1)
    assert audit_sample_size(1000) <= 90
    assert audit_sample_size(100) == 59  # a small epoch needs far fewer
    assert audit_sample_size(1000, 0.01, 0.95) == 258


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), f=st.fractions(Fraction(1, 1000), 1), d=st.fractions(Fraction(1, 1000), Fraction(999, 1000)))
def test_sample_size_is_minimal_and_sufficient(n, f, d):
    k = audit_sample_size(n, f, d)
    assert 1 <= k <= n
    assert audit_detection(n, k, f) >= d
    assert audit_detection(n, k - 1, f) < d


def test_small_batches_are_audited_whole_and_empty_ones_need_nothing():
    assert [audit_sample_size(n) for n in range(0, 6)] == [0, 1, 2, 3, 4, 5]
    assert audit_detection(0, 0) == 0


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((-1,), ParameterError),
        ((10, 0), ParameterError),
        ((10, 1.5), ParameterError),
        ((10, 0.05, 0), ParameterError),
        ((10, 0.05, 1.01), ParameterError),
        ((10, float("nan")), ParameterError),
        ((10.0,), UnsupportedOperationError),
        ((True,), UnsupportedOperationError),
        ((10, "0.05"), UnsupportedOperationError),
    ],
)
def test_bad_parameters_are_refused(args, error):
    # EdilError subclasses that still derive from the builtins the old code raised.
    with pytest.raises(error):
        audit_sample_size(*args)
    with pytest.raises(ValueError if error is ParameterError else TypeError):
        audit_sample_size(*args)


def test_detection_refuses_more_samples_than_tasks():
    with pytest.raises(ParameterError):
        audit_detection(3, 4)
