"""Bit-exactness of the JAX ring kernels against a naive reference, extremes included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edil.hazmat import ring

U64_MAX = (1 << 64) - 1
# Uniform ring elements, with the extremes drawn often.
elements = st.one_of(st.sampled_from([0, 1, U64_MAX, U64_MAX - 1, 1 << 63, (1 << 63) - 1]), st.integers(0, U64_MAX))


def _python_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Independent reference in exact Python integers."""
    m, k = a.shape
    n = b.shape[1]
    out = np.zeros((m, n), dtype=np.uint64)
    for i in range(m):
        for j in range(n):
            out[i, j] = sum(int(a[i, t]) * int(b[t, j]) for t in range(k)) % (1 << 64)
    return out


@st.composite
def matmul_operands(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    m, k, n = draw(st.integers(1, 6)), draw(st.integers(1, 9)), draw(st.integers(1, 6))
    a = draw(hnp.arrays(np.uint64, (m, k), elements=elements))
    b = draw(hnp.arrays(np.uint64, (k, n), elements=elements))
    return a, b


@settings(max_examples=60, deadline=None)
@given(matmul_operands())
def test_matmul_is_bit_exact(ops: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = ops
    np.testing.assert_array_equal(ring.to_numpy(ring.matmul(a, b)), _python_matmul(a, b))


@pytest.mark.parametrize("k", [1, 511, 512, 513, 1500])
def test_matmul_bit_exact_across_inner_chunks(k: int) -> None:
    rng = np.random.default_rng(k)
    a = rng.integers(0, 1 << 64, size=(7, k), dtype=np.uint64)
    b = rng.integers(0, 1 << 64, size=(k, 5), dtype=np.uint64)
    a[0, :] = U64_MAX  # worst case for the limb sums
    b[:, 0] = U64_MAX
    np.testing.assert_array_equal(ring.to_numpy(ring.matmul(a, b)), ring.matmul_reference(a, b))


def test_matmul_all_max_values() -> None:
    a = np.full((3, 600), U64_MAX, dtype=np.uint64)
    np.testing.assert_array_equal(ring.to_numpy(ring.matmul(a, a.T)), ring.matmul_reference(a, a.T))


def test_matmul_batched_leading_axis() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 1 << 64, size=(3, 4, 8), dtype=np.uint64)
    b = rng.integers(0, 1 << 64, size=(8, 2), dtype=np.uint64)
    np.testing.assert_array_equal(ring.to_numpy(ring.matmul(a, b)), ring.matmul_reference(a, b))


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(np.uint64, (5, 7), elements=elements),
    hnp.arrays(np.int64, (7, 3), elements=st.integers(-(1 << 22) + 1, (1 << 22) - 1)),
)
def test_matmul_small_is_bit_exact(a: np.ndarray, w: np.ndarray) -> None:
    np.testing.assert_array_equal(ring.to_numpy(ring.matmul_small(a, w)), _python_matmul(a, w.view(np.uint64)))


def test_matmul_small_refuses_large_weights() -> None:
    with pytest.raises(ValueError, match="2\\^22"):
        ring.matmul_small(np.ones((2, 2), np.uint64), np.full((2, 2), 1 << 22))
    with pytest.raises(TypeError):
        ring.matmul_small(np.ones((2, 2), np.uint64), np.ones((2, 2)))


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.uint64, (4, 3), elements=elements), hnp.arrays(np.uint64, (4, 3), elements=elements))
def test_elementwise_ops_wrap_mod_2_64(a: np.ndarray, b: np.ndarray) -> None:
    ai = [[int(v) for v in row] for row in a]
    bi = [[int(v) for v in row] for row in b]
    mod = 1 << 64
    for fn, op in ((ring.add, int.__add__), (ring.sub, int.__sub__), (ring.mul, int.__mul__)):
        expect = np.array([[op(x, y) % mod for x, y in zip(r, s)] for r, s in zip(ai, bi)], dtype=np.uint64)
        np.testing.assert_array_equal(ring.to_numpy(fn(a, b)), expect)
    np.testing.assert_array_equal(ring.to_numpy(ring.neg(a)), np.array([[(-x) % mod for x in r] for r in ai], dtype=np.uint64))
    np.testing.assert_array_equal(ring.to_numpy(ring.scale(a, -3)), np.array([[(-3 * x) % mod for x in r] for r in ai], dtype=np.uint64))
