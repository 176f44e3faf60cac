"""Polynomial activations with fewer truncations: Masked's scaled square and unit top power,
Replicated's fused and skipped truncation of ``Q``; each against numpy, with its openings counted."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edil
from edil import Masked, Replicated, models
from edil import _mpc as mpc
from edil import _replicated as rep
from edil._fixed import FixedPoint, square_split
from edil.hazmat import ring

F = 16
RELU4 = models.fit_activation("relu", 4, (-5.75, 5.75))
X = np.linspace(-5.75, 5.75, 2001)


def _close(got: np.ndarray, coeffs: tuple[float, ...], ulps: float) -> None:
    """Within the fixed-point errors of the inputs on ``X``: each coefficient carries up to one unit
    (``2^-f``: its rounding, or ``S``'s for the split's top term), ``x`` half a unit (weighed by
    the derivative), and the evaluation itself ``ulps`` units."""
    _close_at(got, X, coeffs, ulps)


def _enc(coeffs: tuple[float, ...]) -> tuple[int, ...]:
    return tuple(int(v) for v in FixedPoint(F).encode(np.asarray(coeffs)).view(np.int64))


def test_square_split_applies_to_relu_shaped_degree_four_only() -> None:
    c = _enc(RELU4.coeffs)
    assert c[3] == 0  # the fit is even apart from x: no x^3
    big_s, c2 = square_split(c, F)  # type: ignore[misc]
    s = big_s / 2**F
    assert abs(s * s - abs(c[4]) / 2**F) < 2 * s / 2**F  # S^2 / 2^2f is c_4 to S's rounding
    assert abs(c2 / 2**F - (c[2] / 2**F) / s) < 1e-3
    assert square_split(c[:4], F) is None  # degree 3
    assert square_split((*c[:3], 5, c[4]), F) is None  # an x^3 term
    assert square_split((*c[:4], 0), F) is None  # no x^4
    assert square_split((*c[:4], -(1 << F)), F) is None  # -x^4: the unit top power, no split needed
    assert square_split((0, 0, 1 << F, 0, 1), F) is None  # c_2 / s = 256 > 16: u's error would weigh too much


@settings(max_examples=30, deadline=None)
@given(st.integers(-(2**61), 2**61), st.integers(2, 3), st.integers(0, 2**32))
def test_truncation_by_2f_is_floor_or_floor_plus_one(value: int, n: int, seed: int) -> None:
    secret = np.array([value % (1 << 64)] * 32, dtype=np.uint64)
    with jax.enable_x64(True):
        shares = mpc.JaxDealer(jax.random.key(seed), n, F).share(ring.asarray(secret))
        p = mpc.stacked_party(mpc.JaxDealer(jax.random.key(seed + 1), n, F), n, F)
        out = mpc.run_stacked(mpc.trunc(p, shares, double=True), p)
    got = ring.to_numpy(np.sum(np.asarray(out), axis=0, dtype=np.uint64)).view(np.int64)
    low = value >> (2 * F)
    assert set(got.tolist()) <= {low, low + 1}


def test_masked_relu_fit_opens_four_values_per_element_and_matches_numpy() -> None:
    s = Masked(2, key=jax.random.key(0))
    a = s.encode(X)
    s.stats.reset()
    got = s.decode(s.polyval(a, RELU4.coeffs))
    # x^2, its 2f truncation u, u^2, the final truncation (five before: x^4 was truncated alone)
    assert s.stats.bytes_opened == 4 * X.size * 2 * 1 * 8
    assert s.stats.openings == 4
    # u = s x^2 carries one unit, weighed by c_2 / s (about 3), and u^2 twice u's: 8 units in all
    _close(got, RELU4.coeffs, 8)


def test_masked_unit_top_power_is_not_truncated_alone() -> None:
    s = Masked(2, key=jax.random.key(1))
    a = s.encode(X)
    s.stats.reset()
    got = s.decode(s.polyval(a, (0.25, 0.5, 1.0)))  # x^2 with coefficient exactly 1: square, one truncation
    assert s.stats.openings == 2
    _close(got, (0.25, 0.5, 1.0), 2)
    s.stats.reset()
    got = s.decode(s.polyval(a, (0.0, 0.5, 0.1, 0.0, -1.0 / 64)))  # c_2 / s = 0.8: split applies
    assert s.stats.openings == 4
    _close(got, (0.0, 0.5, 0.1, 0.0, -1.0 / 64), 8)
    s.stats.reset()
    got = s.decode(s.polyval(a, (0.0, 0.5, 0.1, 0.01, -1.0 / 64)))  # an x^3 term: powers x^2, x^3, x^4
    assert s.stats.openings == 7
    _close(got, (0.0, 0.5, 0.1, 0.01, -1.0 / 64), 8)


def test_headroom_covers_the_scaled_square() -> None:
    fp = FixedPoint(F)
    c = _enc(RELU4.coeffs)
    big_s, _ = square_split(c, F)  # type: ignore[misc]
    h = fp.poly_headroom(5.75, RELU4.coeffs)
    units = int(np.ceil(5.75 * 2**F)) + 1
    assert h.product >= big_s * units * units  # S x^2 before its 2f truncation
    assert h.fits
    # a bound so wide that S x^2 passes 2^62 is refused before anything runs
    with pytest.raises(edil.OverflowRangeError, match="polynomial"):
        fp.check_headroom(fp.poly_headroom(2.0**15 - 1, RELU4.coeffs), "layer 2 (polynomial)")


def _replicated() -> Replicated:
    return Replicated(seed=b"test-polynomial-steps-0000000001")


@pytest.mark.parametrize(("coeffs", "rounds", "ulps"), [
    (RELU4.coeffs, 4, 8),  # Q = c_4 x^2 truncated with x^2: 2 + 2 rounds (5 before)
    ((0.25, 0.5, 1.0), 2, 2),  # Q = x: no truncation of its own (3 before)
    ((0.0, 0.5, 0.1, 0.01, -1.0 / 64), 5, 8),  # Q = c_3 x + c_4 x^2: truncated apart
])
def test_replicated_polynomial_rounds_and_values(coeffs: tuple[float, ...], rounds: int, ulps: float) -> None:
    s = _replicated()
    a = s.encode(X)
    s.stats.reset()
    got = s.decode(s.polyval(a, coeffs))
    assert s.stats.openings == rounds
    _close(got, coeffs, ulps)


@pytest.mark.parametrize("coeffs", [RELU4.coeffs, (0.25, 0.5, 1.0), (0.0, 0.5, 0.1, 0.0, -1.0)])
def test_replicated_separate_parties_compute_the_polynomial_bit_identically(coeffs: tuple[float, ...]) -> None:
    sim, host = _replicated(), _replicated()
    enc = sim.encode(X[:64])
    want = np.asarray(sim.polyval(enc, coeffs).components)  # type: ignore[attr-defined]
    shares = sim.party_shares(enc)
    ps = [rep.host_party(i, host.frac_bits, host.party_streams(i)) for i in range(3)]
    outs = rep.run_parties([rep.polyval(p, shares[i], host._coeffs(coeffs)) for i, p in enumerate(ps)])  # noqa: SLF001
    np.testing.assert_array_equal(np.stack([o[0] for o in outs]), want)


def test_fused_truncation_refuses_a_coefficient_of_one_or_more() -> None:
    s = _replicated()
    p = rep.host_party(0, s.frac_bits, s.party_streams(0))
    with pytest.raises(edil.ParameterError, match="2\\^16"):
        next(rep.trunc_product_scaled(p, np.zeros(4, np.uint64), 1 << F))


# --- a fitted activation's sum left at 2f fractional bits for the dense layer after it ---------------------
def _mlp(scale: float = 1.0) -> models.Sequential:
    rng = np.random.default_rng(0)
    return models.Sequential((
        models.Dense(rng.normal(0, 0.3, (8, 16)), rng.normal(0, 0.1, 16)), RELU4,
        models.Dense(rng.normal(0, 0.3, (16, 3)) * scale, np.zeros(3)),
    ), kind="multiclass")


def test_masked_folds_the_activation_into_the_next_dense_layer() -> None:
    model = _mlp()
    s = Masked(2, key=jax.random.key(2))
    layers, _ = s.program(model, private_weights=False)
    assert [la[0] for la in layers] == ["public", "poly2f", "public"]
    x = np.random.default_rng(1).uniform(-1, 1, (64, 8))
    s.stats.reset()
    got = s.decode(models.encode_model(model, s)(s.encode(x)))
    # dense truncation, x^2, u, u^2, the last dense layer's 2f truncation: the sum is never truncated
    assert s.stats.openings == 5
    assert s.stats.bytes_opened == (64 * 16 * 4 + 64 * 3) * 2 * 8
    np.testing.assert_allclose(got, model.forward(x), atol=2e-3)
    shared = Masked(2, key=jax.random.key(3))  # the same with the weights shared (Beaver matrix products)
    got = shared.decode(models.encode_model(model, shared, private_weights=True)(shared.encode(x)))
    assert [la[0] for la in shared.program(model, private_weights=True)[0]] == ["private", "poly2f", "private"]
    np.testing.assert_allclose(got, model.forward(x), atol=2e-3)


def test_no_fold_where_the_folded_product_could_overflow() -> None:
    model = _mlp(scale=2000.0)  # weights of thousands: 2^16 times the activation's sum no longer fits 2^62
    fp = FixedPoint(F)
    assert not fp.folds(model.layers[1], model.layers[2])
    assert fp.dense_headroom(6.0, model.layers[2].weight).fits  # truncated first, it fits
    s = Masked(2, key=jax.random.key(4))
    assert [la[0] for la in s.program(model, private_weights=False)[0]] == ["public", "poly", "public"]
    x = np.random.default_rng(2).uniform(-1, 1, (16, 8))
    got = s.decode(models.encode_model(model, s)(s.encode(x)))
    np.testing.assert_allclose(got, model.forward(x), rtol=1e-3, atol=2.0)


def test_folded_dense_headroom_bounds_the_product() -> None:
    fp = FixedPoint(F)
    w = np.full((16, 2), 0.5)
    h = fp.folded_dense_headroom(5.75, RELU4.coeffs, w)
    acc = fp._poly_bounds(5.75, RELU4.coeffs)[1]  # noqa: SLF001
    c0 = int(round(RELU4.coeffs[0] * 2**F))
    assert h.product == 16 * (1 << (F - 1)) * (acc + c0 * 2**F)
    assert h.output >= 16 * 0.5 * float(np.max(np.abs(RELU4(X))))  # the real output's bound


def test_a_poly2f_layer_must_feed_a_dense_layer() -> None:
    from edil.runtime import _mpc_session as session

    coeffs = list(_enc(RELU4.coeffs))
    with pytest.raises(edil.SerializationError, match="followed by a dense layer"):
        session.layers_from_wire([["public", False], ["poly2f", coeffs]])
    with pytest.raises(edil.SerializationError, match="followed by a dense layer"):
        session.layers_from_wire([["public", False], ["poly2f", coeffs], ["relu"]])
    wire = session.layers_to_wire((("public", False), ("poly2f", tuple(coeffs)), ("public", True)))
    assert session.layers_from_wire(wire) == (("public", False), ("poly2f", tuple(coeffs)), ("public", True))
    s = Masked(2, key=jax.random.key(5))
    with jax.enable_x64(True):
        p = mpc.stacked_party(mpc.JaxDealer(jax.random.key(6), 2, F), 2, F)
        with pytest.raises(edil.ShapeError, match="followed by a dense layer"):
            mpc.run_stacked(mpc.model(p, s.encode(X[:4, None]).shares, (("poly2f", tuple(coeffs)), ("relu",)), []), p)


def test_dealer_words_is_what_a_run_expands(monkeypatch: pytest.MonkeyPatch) -> None:
    from edil import _masked as masked_impl
    from edil._dealer import Stream

    drawn: list[int] = []

    class Counting(Stream):
        def words_into(self, buf: np.ndarray, count: int) -> np.ndarray:
            drawn.append(count)
            return super().words_into(buf, count)

    monkeypatch.setattr(masked_impl, "Stream", Counting)
    model = _mlp()
    s = Masked(2, key=jax.random.key(7))
    em = models.encode_model(model, s)
    for batch in (5, 3000):  # one block, and row blocks in parts
        drawn.clear()
        em(s.encode(np.zeros((batch, 8))))
        assert sum(drawn) == s.dealer_words(em, batch) > 0
    assert s.dealer_words(em, 3000) > 500 * s.dealer_words(em, 5)


def test_a_model_of_elementwise_layers_runs_on_any_width() -> None:
    """A model of a fitted activation alone fixes no input width: it runs, and asking its width says why not."""
    model = models.Sequential((models.fit_activation("relu", 4, (-4.0, 4.0)),))
    x = np.linspace(-3.9, 3.9, 40).reshape(4, 10)
    assert not model.sized and _mlp().sized
    with pytest.raises(edil.ShapeError, match="no Dense or MaxPool"):
        _ = model.in_features
    for s in (Masked(2, key=jax.random.key(8)), _replicated()):
        got = s.decode(models.encode_model(model, s)(s.encode(x)))
        # the coefficients' rounding (half a unit each, times |x|^k) and 8 units of evaluation
        _close_at(got, x, model.layers[0].coeffs, 8)
    with pytest.raises(edil.ShapeError, match="a \\(batch, features\\) input"):
        models.encode_model(model, Masked(2, key=jax.random.key(9)))(Masked(2, key=jax.random.key(9)).encode(x[0]))


def _close_at(got: np.ndarray, x: np.ndarray, coeffs: tuple[float, ...], ulps: float) -> None:
    """:func:`_close` at inputs ``x``."""
    c = np.asarray(coeffs)
    k = np.arange(c.size)
    bound = sum(np.abs(x) ** i for i in k) * 2.0**-F + np.abs(np.polynomial.polynomial.polyval(np.abs(x), np.abs(c[1:]) * k[1:])) \
        * 2.0 ** -(F + 1) + ulps * 2.0**-F
    assert np.all(np.abs(got - np.polynomial.polynomial.polyval(x, c)) <= bound)
