"""Replicated: the cheaper local steps (public products, polynomials) and per-party timing of the host driver."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edil import Replicated
from edil import _replicated as rep

F = 16


def scheme(tag: int) -> Replicated:
    return Replicated(seed=b"test-replicated-local-" + tag.to_bytes(10, "big"))


def parties(s: Replicated) -> list[rep.Party]:
    return [rep.host_party(i, s.frac_bits, s.party_streams(i)) for i in range(3)]


def test_truncating_a_public_product_computes_one_product_per_party_and_the_same_result() -> None:
    """``trunc_local`` gives, word for word, what truncating every component's product gives."""
    s = scheme(1)
    rng = np.random.default_rng(1)
    x = s.encode(rng.uniform(-3, 3, (9, 7)))
    w = s.fp.encode(rng.uniform(-1, 1, (7, 5))).view(np.int64)
    shares = s.party_shares(x)
    calls = [0, 0, 0]

    def product(i: int, p: rep.Party):
        def fn(v: np.ndarray) -> np.ndarray:
            calls[i] += 1
            return p.matmul_public(v, w, True)
        return fn

    ps = parties(s)
    fast = rep.run_parties([rep.trunc_local(p, shares[i], product(i, p), (9, 5)) for i, p in enumerate(ps)])
    assert calls == [0, 1, 1]  # party 0 computes nothing, parties 1 and 2 one product each
    ps = parties(s)  # fresh streams from their start: the same draws again
    slow = rep.run_parties([rep.trunc(p, p.local(lambda v, p=p: p.matmul_public(v, w, True), shares[i]))
                            for i, p in enumerate(ps)])
    for f_pair, s_pair in zip(fast, slow):
        for a, b in zip(f_pair, s_pair):
            np.testing.assert_array_equal(a, b)
    got = s.fp.decode(sum(np.asarray(o[0], np.uint64) for o in fast))  # components 0, 1, 2
    want = s.fp.decode(np.asarray(s.open_ring(x))) @ s.fp.decode(w.view(np.uint64))
    np.testing.assert_allclose(got, want, atol=2.0 ** -F * 2)  # one truncation: within one ulp, plus encoding


def test_public_product_simulated_equals_host_parties() -> None:
    s = scheme(2)
    rng = np.random.default_rng(2)
    xv, wv = rng.uniform(-2, 2, (6, 4)), rng.uniform(-1, 1, (4, 3))
    x = s.encode(xv)
    sim = s.matmul_public(x, wv)
    np.testing.assert_allclose(s.decode(sim), xv @ wv, atol=1e-4)
    assert s.stats.extra["bytes_sent_by_party_0"] == 0  # party 0 sends nothing in a truncation


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4, 5, 6])
def test_polynomial_of_every_small_degree_matches_float_and_keeps_its_rounds(degree: int) -> None:
    """Split evaluation ``c_0 + L(x) + x^h Q(x)``: values within tolerance of float, rounds as by powers."""
    s = scheme(10 + degree)
    rng = np.random.default_rng(degree)
    coeffs = rng.uniform(-1, 1, degree + 1) / np.arange(1, degree + 2)
    x = rng.uniform(-1.5, 1.5, 400)
    s.stats.reset()
    got = s.decode(s.polyval(s.encode(x), coeffs))
    want = np.polynomial.polynomial.polyval(x, coeffs)
    # Each truncation errs by < 1 ulp (2^-16); encoding the coefficients by 2^-17 each, times |x|^i <= 1.5^i.
    np.testing.assert_allclose(got, want, atol=2e-3)
    levels = 0 if degree < 2 else int(np.ceil(np.log2((degree + 1) // 2)))
    expected = 0 if degree == 0 else 1 if degree == 1 else 2 * levels + 3
    assert s.stats.openings == expected


def test_polynomial_simulated_equals_host_parties() -> None:
    s = scheme(20)
    coeffs = s._coeffs([0.3, 0.5, 0.14, 0.0, -0.002])  # noqa: SLF001 - the fixed-point coefficients the program takes
    x = s.encode(np.linspace(-5, 5, 300))
    ps = parties(s)
    shares = s.party_shares(x)
    outs = rep.run_parties([rep.polyval(p, shares[i], coeffs) for i, p in enumerate(ps)])
    host = np.stack([o[0] for o in outs])
    # The simulator, on fresh streams of the same keys (a new scheme of the same seed).
    s2 = scheme(20)
    sim = s2.polyval(s2.encode(np.linspace(-5, 5, 300)), [0.3, 0.5, 0.14, 0.0, -0.002])
    np.testing.assert_array_equal(host, np.asarray(sim.components))


def test_run_parties_times_each_party_on_an_injected_clock() -> None:
    s = scheme(30)
    ticks = itertools.count()
    busy = [0.0, 0.0, 0.0]
    x = s.encode(np.ones((3, 4)))
    shares = s.party_shares(x)
    outs = rep.run_parties([rep.trunc(p, shares[i]) for i, p in enumerate(parties(s))],
                           busy=busy, clock=lambda: float(next(ticks)))
    assert len(outs) == 3
    # Each party is advanced twice (to its one round, then to its end), each advance reads the clock twice.
    assert busy == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("k", [1, 7, 64, 128])
def test_float64_halves_kernel_is_exact_at_its_bound(k: int) -> None:
    """``a @ w mod 2^64`` for ``K max|w| = 2^22`` exactly, with the halves at their extremes."""
    rng = np.random.default_rng(k)
    bound = (1 << 22) // k
    w = rng.integers(-bound, bound + 1, (k, 5))
    w[0, 0], w[-1, -1] = bound, -bound
    extremes = np.array([0, 1 << 31, (1 << 32) - 1, (1 << 63) + (1 << 31), (1 << 64) - 1, 0x8000_0000_8000_0000], np.uint64)
    a = rng.integers(0, 1 << 64, (11, k), dtype=np.uint64, endpoint=False)
    a[: len(extremes), 0] = extremes
    a[-1, :] = np.uint64(1 << 31) | np.uint64(1 << 63)  # every term at the largest magnitude of both halves
    assert rep.weight_class(w) == (rep.HALVES if bound < 1 << 22 else rep.FULL)  # HALVES implies SMALL
    got = np.asarray(rep.matmul_public_halves(a, w), np.uint64)
    with np.errstate(over="ignore"):
        want = np.matmul(a, w.astype(np.int64).view(np.uint64))
    np.testing.assert_array_equal(got, want)


def test_weight_classes() -> None:
    assert rep.weight_class(np.full((64, 3), 1 << 16)) == rep.HALVES
    assert rep.weight_class(np.full((64, 3), (1 << 16) + 1)) == rep.SMALL
    assert rep.weight_class(np.full((2, 3), -(1 << 22) + 1)) == rep.SMALL
    assert rep.weight_class(np.full((4, 3), 1 << 22)) == rep.FULL
    assert rep.weight_class(np.zeros((0, 3), np.int64)) == rep.HALVES


def test_public_products_of_every_weight_class_agree() -> None:
    """The simulator (float64 halves) and host parties forced onto the int8 kernels: equal words."""
    s = scheme(40)
    rng = np.random.default_rng(40)
    x = s.encode(rng.uniform(-2, 2, (300, 64)))  # 300 * 64 * 16 multiply-adds: large enough for the kernels
    wv = rng.uniform(-0.5, 0.5, (64, 16))
    w = s.fp.encode(wv).view(np.int64)
    assert rep.weight_class(w) == rep.HALVES
    shares = s.party_shares(x)
    outs = []
    for cls in (rep.SMALL, rep.FULL):
        ps = parties(s)  # fresh streams from their start, as the simulator's below
        res = rep.run_parties([rep.trunc_local(p, shares[i], lambda v, p=p, cls=cls: p.matmul_public(v, w, cls), (300, 16))
                               for i, p in enumerate(ps)])
        outs.append(np.stack([r[0] for r in res]))
    sim = s.matmul_public(x, wv)  # the scheme's streams are still at their start
    np.testing.assert_array_equal(outs[0], np.asarray(sim.components))
    np.testing.assert_array_equal(outs[1], np.asarray(sim.components))
    np.testing.assert_allclose(s.decode(sim), s.decode(x) @ wv, atol=1e-3)
