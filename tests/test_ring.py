"""Bit-exactness of the JAX ring kernels against a naive reference, extremes included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edil.hazmat import ring, ring32

U64_MAX = (1 << 64) - 1
# Every balanced int8 digit -128 (the largest digit products) and every digit +127.
ALL_MINUS_128, ALL_127 = 0x7F7F7F7F7F7F7F80, 0x7F7F7F7F7F7F7F7F
EXTREMES = [0, 1, U64_MAX, U64_MAX - 1, 1 << 63, (1 << 63) - 1, ALL_MINUS_128, ALL_127, 0x8080808080808080]
# Uniform ring elements, with the extremes drawn often.
elements = st.one_of(st.sampled_from(EXTREMES), st.integers(0, U64_MAX))


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


@pytest.mark.parametrize("kernel", ring.KERNELS)
@settings(max_examples=40, deadline=None)
@given(ops=matmul_operands())
def test_matmul_is_bit_exact(kernel: str, ops: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = ops
    np.testing.assert_array_equal(ring.to_numpy(ring.matmul(a, b, kernel=kernel)), _python_matmul(a, b))


@pytest.mark.parametrize("kernel", ring.KERNELS)
@pytest.mark.parametrize("k", [1, 511, 512, 513, 1500])
def test_matmul_bit_exact_across_inner_chunks(kernel: str, k: int) -> None:
    rng = np.random.default_rng(k)
    a = rng.integers(0, 1 << 64, size=(7, k), dtype=np.uint64)
    b = rng.integers(0, 1 << 64, size=(k, 5), dtype=np.uint64)
    a[0, :] = U64_MAX  # worst case for the float64 limb sums
    b[:, 0] = U64_MAX
    a[1, :] = ALL_MINUS_128  # worst case for the int8 digit sums
    b[:, 1] = ALL_MINUS_128
    np.testing.assert_array_equal(ring.to_numpy(ring.matmul(a, b, kernel=kernel)), ring.matmul_reference(a, b))


@pytest.mark.parametrize("group", [1, 2, 4, 8])
def test_int8_kernel_exact_at_its_int32_chunk_edges(group: int) -> None:
    # Every digit product at its maximum, 2^14: one more term per column block than the chunk
    # allows would leave int32 (2^31), so an off-by-one in the bound shows as a wrong result.
    chunk = ring._i8_chunk(group)
    for k in (chunk - 1, chunk, chunk + 1):
        a = np.full((2, k), ALL_MINUS_128, dtype=np.uint64)
        b = np.full((k, 2), ALL_MINUS_128, dtype=np.uint64)
        b[:, 1] = ALL_127
        a[1, : k // 2] = U64_MAX
        with ring.jax.enable_x64(True):
            got = ring._toeplitz_products(ring.asarray(a), ring._digits(ring.asarray(b), 8), group)
        np.testing.assert_array_equal(ring.to_numpy(got), ring.matmul_reference(a, b))


def test_int8_chunk_bound_is_the_exact_int32_bound() -> None:
    for terms in (1, 2, 3, 4, 8, 9):
        chunk = ring._i8_chunk(terms)
        assert terms * chunk * 2**14 <= 2**31 - 1 < terms * (chunk + 1) * 2**14
    assert ring._i8_chunk(8) == 16383


@pytest.mark.parametrize("kernel", ring.KERNELS)
def test_matmul_all_max_values(kernel: str) -> None:
    a = np.full((3, 600), U64_MAX, dtype=np.uint64)
    np.testing.assert_array_equal(ring.to_numpy(ring.matmul(a, a.T, kernel=kernel)), ring.matmul_reference(a, a.T))


@pytest.mark.parametrize("kernel", ring.KERNELS)
@pytest.mark.parametrize(("a_shape", "b_shape"), [((3, 4, 8), (8, 2)), ((3, 2, 8), (3, 8, 5)), ((2, 1, 6), (6, 9))])
def test_matmul_batched_leading_axis(kernel: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 1 << 64, size=a_shape, dtype=np.uint64)
    b = rng.integers(0, 1 << 64, size=b_shape, dtype=np.uint64)
    np.testing.assert_array_equal(ring.to_numpy(ring.matmul(a, b, kernel=kernel)), ring.matmul_reference(a, b))


@pytest.mark.parametrize(("m", "k", "n"), [(300, 300, 200), (2, 700, 3), (3, 5, 700)])
def test_int8_kernel_exact_on_both_layouts(m: int, k: int, n: int) -> None:
    # Large products take the two-group layout, M < N the transposed one.
    rng = np.random.default_rng(m + n)
    a = rng.integers(0, 1 << 64, size=(m, k), dtype=np.uint64)
    b = rng.integers(0, 1 << 64, size=(k, n), dtype=np.uint64)
    a[0, :], b[:, 0] = ALL_MINUS_128, ALL_MINUS_128
    np.testing.assert_array_equal(ring.to_numpy(ring.matmul(a, b, kernel="int8")), ring.matmul_reference(a, b))


def test_kernel_rule_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDIL_RING_KERNEL", raising=False)
    assert ring.kernel_for(1024 * 512 * 512, "cpu") == "int8" == ring.kernel_for(64, "tpu")
    assert ring.kernel_for(64, "cpu") == "float64"
    monkeypatch.setenv("EDIL_RING_KERNEL", "float64")
    assert ring.kernel_for(1 << 30) == "float64"
    monkeypatch.setenv("EDIL_RING_KERNEL", "int4")
    with pytest.raises(ValueError, match="EDIL_RING_KERNEL"):
        ring.kernel_for(1)
    with pytest.raises(ValueError, match="kernel"):
        ring.matmul(np.ones((1, 1), np.uint64), np.ones((1, 1), np.uint64), kernel="int4")


@pytest.mark.parametrize("kernel", ring.KERNELS)
@pytest.mark.parametrize("shape", [(5, 7, 3), (2, 7, 9)])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_matmul_small_is_bit_exact(kernel: str, shape: tuple[int, int, int], data: st.DataObject) -> None:
    m, k, n = shape
    a = data.draw(hnp.arrays(np.uint64, (m, k), elements=elements))
    w = data.draw(hnp.arrays(np.int64, (k, n), elements=st.integers(-(1 << 22) + 1, (1 << 22) - 1)))
    got = ring.to_numpy(ring.matmul_small(a, w, kernel=kernel))
    np.testing.assert_array_equal(got, _python_matmul(a, w.view(np.uint64)))


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.uint64, (4, 6), elements=elements), hnp.arrays(np.uint64, (6, 3), elements=elements))
def test_matmul_wide_is_the_exact_integer_product(a: np.ndarray, b: np.ndarray) -> None:
    c, h = ring.matmul_wide(a, b)
    c, h = ring.to_numpy(c), ring.to_numpy(h)
    assert h.shape == (4, 3, 2)
    for i in range(4):
        for j in range(3):
            exact = sum(int(a[i, t]) * int(b[t, j]) for t in range(6))
            assert int(c[i, j]) + (int(h[i, j, 0]) << 64) + (int(h[i, j, 1]) << 128) == exact


def test_matmul_wide_across_its_inner_chunk() -> None:
    k = ring._i8_chunk(9) + 1
    a = np.full((2, k), U64_MAX, dtype=np.uint64)
    b = np.full((k, 2), U64_MAX, dtype=np.uint64)
    a[1], b[:, 1] = ALL_MINUS_128, 1 << 63
    c, h = ring.matmul_wide(a, b)
    ref_c, ref_h = ring.matmul_wide_reference(a, b)
    np.testing.assert_array_equal(ring.to_numpy(c), ref_c)
    np.testing.assert_array_equal(ring.to_numpy(h), ref_h)


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


U32_MAX = (1 << 32) - 1
elements32 = st.one_of(st.sampled_from([0, 1, U32_MAX, 1 << 31, (1 << 31) - 1, 0x7F7F7F80, 0x7F7F7F7F]),
                       st.integers(0, U32_MAX))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_ring32_matmul_is_bit_exact(data: st.DataObject) -> None:
    m, k, n = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 9)), data.draw(st.integers(1, 6))
    a = data.draw(hnp.arrays(np.uint32, (m, k), elements=elements32))
    b = data.draw(hnp.arrays(np.uint32, (k, n), elements=elements32))
    expect = np.array([[sum(int(a[i, t]) * int(b[t, j]) for t in range(k)) % (1 << 32) for j in range(n)] for i in range(m)],
                      dtype=np.uint32)
    np.testing.assert_array_equal(ring32.to_numpy(ring32.matmul(a, b)), expect)


@pytest.mark.parametrize(("m", "k", "n"), [(2, 32768, 3), (300, 300, 200), (2, 50, 9)])
def test_ring32_matmul_large_and_transposed(m: int, k: int, n: int) -> None:
    rng = np.random.default_rng(k)
    a = rng.integers(0, 1 << 32, size=(m, k), dtype=np.uint32)
    b = rng.integers(0, 1 << 32, size=(k, n), dtype=np.uint32)
    a[0, :], b[:, 0] = 0x7F7F7F80, 0x7F7F7F80  # every digit -128
    np.testing.assert_array_equal(ring32.to_numpy(ring32.matmul(a, b)), ring32.matmul_reference(a, b))
    assert ring32.matmul(a, b).dtype == np.uint32


def test_ring32_asarray_wraps_negatives() -> None:
    np.testing.assert_array_equal(ring32.to_numpy(ring32.asarray([[-1, 2]])), np.array([[U32_MAX, 2]], dtype=np.uint32))
