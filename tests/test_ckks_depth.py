"""CKKS depth: one count shared by the models and the scheme, and ``for_model`` never under-provisions.

The count (:func:`edil._ckks.required_depth`) is a dry run of the evaluator itself, so these tests
compare it with real encrypted evaluations, never with hard-coded figures.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edil
from edil import CKKS, models
from edil._ckks import MAX_MODULUS_BITS, poly_depth, required_depth
from tests import _workloads as wl

# Stated tolerance of a for_model-sized scheme (precision_bits=30) on these models:
# |CKKS - forward| <= TOL * (1 + max |forward|). Measured worst over 140 random models of the
# property test's family: 1.6e-4 (a degree-5 logistic fit over [-38, 38], whose power-basis
# coefficients cancel); typical 1e-6.
TOL = 1e-3


def _structural_depth(model: models.Sequential) -> int:
    """The count from the polynomial structure alone (what required_depth used to be)."""
    return sum(
        1 if isinstance(la, models.Dense) else poly_depth(la.degree) if isinstance(la, models.Polynomial) else 0
        for la in model.layers
    )


def _close(got: np.ndarray, ref: np.ndarray, *, scale: float = 0.0) -> None:
    """``got`` within ``TOL`` of ``ref``, relative to the larger of the output and ``scale`` (the
    largest value the encrypted computation carried, see :func:`_carried`)."""
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL * (1.0 + max(float(np.max(np.abs(ref))), scale)))


def _carried(model: models.Sequential, x: np.ndarray) -> float:
    """The largest magnitude the model's polynomial terms reach on ``x``, carried to the output.

    CKKS errors are absolute at a fixed scale: each term ``c_j z^j`` is computed with an error
    proportional to its own size, and terms that cancel in the output (a degree-5 fit over
    [-33, 33] has terms of about 8 whose sum is below 1) keep their errors. Each later dense
    layer multiplies the carried size by its largest column sum of |w|.
    """
    z, carried = np.asarray(x, dtype=np.float64), 0.0
    for layer in model.layers:
        if isinstance(layer, models.Polynomial):
            terms = sum(abs(c) * np.abs(z) ** j for j, c in enumerate(layer.coeffs))
            carried = max(carried, float(np.max(terms)))
            z = layer(z)
        elif isinstance(layer, models.Dense):
            carried *= float(np.max(np.abs(layer.weight).sum(axis=0)))
            z = z @ layer.weight + layer.bias
    return carried


@functools.cache
def wide_mlp() -> models.Sequential:
    """The digits MLP calibrated on inputs x 6: its ReLU fit spans about [-43, 43] (constant 2.5, x^4 coefficient -5e-6)."""
    est, _ = wl.mlp_digits()
    x, _ = wl.digits()
    return models.from_sklearn(est, degree=4, calibration=x * 6)


# --- one count ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["logreg", "mlp", "wide_mlp", "relu12"])
def test_one_depth_count_for_models_and_ckks(name: str) -> None:
    model = {
        "logreg": lambda: wl.logreg_breast_cancer()[1],
        "mlp": lambda: wl.mlp_digits()[1],
        "wide_mlp": wide_mlp,
        "relu12": lambda: models.Sequential(
            (
                models.Dense(np.ones((2, 3)), np.zeros(3)),
                models.fit_activation("relu", 4, (-12.0, 12.0)),
                models.Dense(np.ones((3, 1)), np.zeros(1)),
            )
        ),
    }[name]()
    need = required_depth(model)
    assert model.mult_depth == need
    assert need >= _structural_depth(model)
    s = CKKS(depth=need)
    assert s.levels_consumed(model) <= need
    s.check_model(model)
    assert CKKS.for_model(model).depth == need


def test_wide_interval_costs_levels_the_structure_does_not_show_and_for_model_holds_them() -> None:
    # The reported failure: for_model sized the chain from the structure (4 levels) and the
    # evaluation ran out of levels absorbing the ReLU fit's large constant term.
    model = wide_mlp()
    x, _ = wl.digits()
    rows = x[:24] * 6
    assert required_depth(model) > _structural_depth(model)
    s = CKKS.for_model(model)
    out = models.encode_model(model, s)(s.encode(rows))
    assert int(out.levels.max()) <= s.levels_consumed(model) <= s.depth
    _close(s.decode(out), model.forward(rows))
    # ...and the count is tight: one level less runs out, and check_model says so up front.
    short = CKKS(depth=s.depth - 1)
    with pytest.raises(edil.ParameterError, match=f"needs multiplicative depth {s.depth}") as err:
        short.check_model(model)
    assert "CKKS.for_model(model)" in str(err.value)
    with pytest.raises(edil.ParameterError, match="depth >="):
        models.encode_model(model, short).infer(rows[:2])


def test_polyval_refuses_up_front_with_the_exact_count() -> None:
    # A large constant next to a small leading coefficient (30 / 2e-4 in units of the x^2
    # ciphertext): the constant is absorbed after a move to a larger factor, one level more than
    # the structure's one.
    coeffs = (30.0, 0.5, 2e-4)
    xs = np.linspace(-40, 40, 8).reshape(4, 2)
    s = CKKS(depth=1)
    x = s.encode(xs)
    assert poly_depth(2) == 1
    before = dict(s.stats.extra)
    with pytest.raises(edil.ParameterError, match="needs 2 more levels.*depth >= 2"):
        s.polyval(x, coeffs)
    assert s.stats.extra == before  # refused before any ciphertext operation
    s2 = CKKS(depth=2)
    got = s2.decode(s2.polyval(s2.encode(xs), coeffs))
    _close(got, np.polynomial.polynomial.polyval(xs, coeffs))


def test_for_model_error_beyond_every_parameter_set_does_not_recommend_itself() -> None:
    # 27 dense layers: more levels than the largest ring (N = 32768, 881 bits) holds at 30 bits.
    layer = models.Dense(np.full((2, 2), 0.5), np.zeros(2))
    model = models.Sequential((layer,) * 27)
    assert required_depth(model) == model.mult_depth == 27
    with pytest.raises(edil.ParameterError) as err:
        CKKS.for_model(model)
    msg = str(err.value)
    assert "consumes 27 rescale levels" in msg and "for_model" not in msg
    assert "precision_bits" in msg  # it says what would shorten or fit it
    # A lower precision fits it: the parameters for_model would choose exist.
    assert (
        CKKS.choose_parameters(required_depth(model, precision_bits=28, int_bits=10), precision_bits=28, int_bits=10)[0] == 32768
    )


def test_choose_parameters_only_returns_chains_seal_can_build() -> None:
    # 30 levels of 20-bit primes fit the bit budget of N = 32768, but there are not 30 primes
    # = 1 mod 65536 below 2^20: refused with a ParameterError, not a TenSEAL RuntimeError.
    with pytest.raises(edil.ParameterError, match="too few 20-bit primes"):
        CKKS.choose_parameters(30, precision_bits=20, int_bits=10)
    s = CKKS(3, precision_bits=20, int_bits=10)  # a chain it returns is one TenSEAL builds
    assert s.depth == 3 and sum(s.params["coeff_mod_bit_sizes"]) <= MAX_MODULUS_BITS[s.poly_modulus_degree]


def test_a_model_without_dense_layers_counts_its_polynomials() -> None:
    model = models.Sequential((models.Polynomial((0.0, 1.0, 1.0)), models.Polynomial((1.0, 0.5, 0.0, 0.0, 0.25))))
    s = CKKS.for_model(model)
    assert s.depth == model.mult_depth == required_depth(model) >= poly_depth(2) + poly_depth(4)
    xs = np.linspace(-1, 1, 6).reshape(3, 2)
    ref = xs
    for layer in model.layers:
        ref = layer(ref)
    enc = models.encode_model(model, s)
    _close(s.decode(enc.run_layers(s.encode(xs))), ref)


def test_required_depth_checks_its_arguments() -> None:
    with pytest.raises(TypeError):
        required_depth("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        required_depth(wl.logreg_breast_cancer()[1], precision_bits=70)
    with pytest.raises(TypeError):
        CKKS(depth=1).levels_consumed([1, 2])


# --- the property: for_model never under-provisions -----------------------------------------------
@st.composite
def small_models(draw: st.DrawFn) -> tuple[models.Sequential, np.ndarray]:
    """Dense -> polynomial (-> Dense -> polynomial) -> Dense, with inputs in [-1, 1].

    Each dense layer is scaled so that its outputs over the whole input box stay within the
    polynomial's interval ``[-R, R]`` (R random up to 40): every test input is in the calibrated
    range. Polynomials are activation fits over that interval or random coefficients with a
    constant term up to 50 in magnitude and higher terms scaled to the interval.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    width = k = draw(st.integers(1, 3))
    box = 1.0  # every input of the next dense layer lies in [-box, box]
    layers: list[models.Layer] = []
    for _ in range(draw(st.integers(1, 2))):
        h = draw(st.integers(1, 3))
        r = draw(st.floats(1.0, 40.0))
        w, b = rng.normal(size=(width, h)), rng.normal(size=h)
        reach = float(np.max(box * np.abs(w).sum(axis=0) + np.abs(b)))
        layers.append(models.Dense(w * r / reach, b * r / reach))
        degree = draw(st.integers(1, 5))
        if draw(st.booleans()):
            poly = models.fit_activation(draw(st.sampled_from(["relu", "tanh", "logistic"])), degree, (-r, r))
        else:
            size = draw(st.floats(0.1, 10.0))
            const = draw(st.floats(-50.0, 50.0))
            poly = models.Polynomial(
                (const, *(float(u) * size / r**j for j, u in enumerate(rng.uniform(-1, 1, degree), 1))), interval=(-r, r)
            )
        layers.append(poly)
        box = 1.01 * float(np.max(np.abs(poly(np.linspace(-r, r, 4001))))) + 1e-9
        width = h
    o = draw(st.integers(1, 2))
    layers.append(models.Dense(rng.normal(size=(width, o)) / np.sqrt(width), rng.normal(size=o)))
    return models.Sequential(tuple(layers)), rng.uniform(-1, 1, size=(6, k))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_models())
def test_for_model_never_under_provisions(case: tuple[models.Sequential, np.ndarray]) -> None:
    model, x = case
    s = CKKS.for_model(model)
    assert s.depth == required_depth(model) == model.mult_depth
    out = models.encode_model(model, s)(s.encode(x))  # no ParameterError: the chain holds it
    assert int(out.levels.max()) <= s.levels_consumed(model) <= s.depth
    _close(s.decode(out), model.forward(x), scale=_carried(model, x))
