from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.tree import DecisionTreeClassifier

import edil
from edil import Masked, Plain, models
from tests import _workloads as wl


def test_relu_fit_reports_its_error_over_the_interval() -> None:
    p = models.fit_activation("relu", 4, (-5.0, 5.0))
    grid = np.linspace(-5, 5, 1001)
    err = np.max(np.abs(p(grid) - np.maximum(grid, 0)))
    assert p.interval == (-5.0, 5.0) and p.degree == 4
    assert err <= p.max_error + 1e-9
    assert 0.05 < p.max_error < 0.5  # a quartic cannot follow the kink exactly; it is reported


@pytest.mark.parametrize("name", ["relu", "tanh", "logistic"])
def test_higher_degree_fits_better(name: str) -> None:
    errs = [models.fit_activation(name, d, (-4, 4)).max_error for d in (2, 4, 6)]
    assert errs[0] >= errs[1] >= errs[2]


def test_mlp_accuracy_change_is_reported_and_small() -> None:
    x, y = wl.digits()
    est, model = wl.mlp_digits()
    report = models.accuracy_change(est, model, x, y)
    assert report["float_accuracy"] > 0.95
    assert abs(report["delta"]) <= 0.01
    assert model.approximations and model.approximations[0].activation == "relu"


def test_linear_regression_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    y = x @ [1.0, -2.0, 0.5] + 3.0
    est = LinearRegression().fit(x, y)
    model = models.from_sklearn(est)
    np.testing.assert_allclose(model.predict(x), est.predict(x), atol=1e-9)
    np.testing.assert_allclose(models.encode_model(model, Masked(2)).predict(x), est.predict(x), atol=1e-3)


def test_logistic_regression_multiclass_predictions() -> None:
    x, y = wl.digits()
    est = LogisticRegression(max_iter=500).fit(x, y)
    model = models.from_sklearn(est)
    assert np.mean(model.predict(x) == est.predict(x)) == 1.0
    assert model.kind == "multiclass" and model.classes == tuple(range(10))


def test_work_units_and_depth() -> None:
    _, model = wl.mlp_digits()
    assert model.work_units(10) == 10 * (64 * 32 + 32 * 4 + 32 * 10)
    assert model.mult_depth == 1 + 2 + 1  # the CKKS count: dense, degree-4 polynomial (2 levels), dense


def test_unknown_estimator_is_rejected() -> None:
    with pytest.raises(edil.UnsupportedOperationError, match="DecisionTreeClassifier"):
        models.from_sklearn(DecisionTreeClassifier().fit([[0], [1]], [0, 1]))


def test_unfitted_estimator_is_rejected() -> None:
    with pytest.raises(edil.EncodingError, match="not fitted"):
        models.from_sklearn(LogisticRegression())
    with pytest.raises(edil.EncodingError, match="not fitted"):
        models.from_sklearn(MLPClassifier())


def test_bad_activation_and_interval() -> None:
    with pytest.raises(edil.UnsupportedOperationError, match="softplus"):
        models.fit_activation("softplus", 3, (-1, 1))
    with pytest.raises(ValueError):
        models.fit_activation("relu", 3, (1, -1))
    with pytest.raises(ValueError):
        models.fit_activation("relu", 0, (-1, 1))


def test_layer_validation() -> None:
    with pytest.raises(edil.ShapeError):
        models.Dense(np.ones((3, 2)), np.ones(3))
    with pytest.raises(edil.ShapeError):
        models.Sequential((models.Dense(np.ones((3, 2)), np.ones(2)), models.Dense(np.ones((3, 2)), np.ones(2))))
    with pytest.raises(edil.EncodingError):
        models.Dense(np.full((1, 1), np.nan), np.ones(1))
    with pytest.raises(TypeError):
        models.Sequential(("relu",))  # type: ignore[arg-type]


def test_encoded_model_checks_input_shape_and_types() -> None:
    _, model = wl.logreg_breast_cancer()
    enc = models.encode_model(model, Plain())
    with pytest.raises(edil.ShapeError, match="30"):
        enc.infer(np.ones((2, 5)))
    with pytest.raises(TypeError):
        models.encode_model("model", Plain())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        models.encode_model(model, "masked")  # type: ignore[arg-type]
    with pytest.raises(edil.SchemeMismatchError):
        enc(Masked(2).encode(np.ones((2, 30))))


def test_masked_model_shared_weights_match_plain() -> None:
    x, _ = wl.digits()
    _, model = wl.mlp_digits()
    s = Masked(2)
    got = models.encode_model(model, s, private_weights=True).infer(x[:200])
    np.testing.assert_allclose(got, model.forward(x[:200]), atol=0.05)
