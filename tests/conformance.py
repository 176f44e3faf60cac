"""The scheme conformance suite: one behaviour spec, subclassed for every scheme.

Subclass :class:`SchemeConformance`, implement ``make_scheme`` and set the class attributes
that describe what the scheme supports and how close it must stay to ``Plain`` (the
reference). Every test either checks a result against the plaintext reference within the
stated tolerance, or checks that an unsupported operation raises
:class:`edil.UnsupportedOperationError` cleanly.

Attributes to set:
    atol: absolute tolerance of linear operations on values of magnitude <= 4.
    poly_atol: absolute tolerance of a degree-4 polynomial on [-2, 2].
    supports_mul / supports_matmul / supports_poly / supports_private_weights: capabilities.
    max_disagreement: fraction of model predictions allowed to differ from ``Plain``.
    mlp_samples: how many digits samples the MLP test runs (``None`` = all 1797).
"""

from __future__ import annotations

import numpy as np
import pytest

import edil
from edil import Plain, models
from tests import _workloads as wl

RNG = np.random.default_rng(20261125)
X = RNG.uniform(-4, 4, size=(6, 5))
Y = RNG.uniform(-4, 4, size=(6, 5))
W = RNG.uniform(-2, 2, size=(5, 3))
COEFFS = [0.1, 0.5, 0.25, -0.05, 0.01]


class SchemeConformance:
    atol: float = 1e-3
    poly_atol: float = 1e-2
    supports_mul: bool = True
    supports_matmul: bool = True
    supports_poly: bool = True
    supports_private_weights: bool = True
    max_disagreement: float = 0.005
    mlp_samples: int | None = None

    def make_scheme(self) -> edil.Scheme:  # pragma: no cover - abstract
        raise NotImplementedError

    @pytest.fixture
    def scheme(self) -> edil.Scheme:
        return self.make_scheme()

    # --- round trip and linear algebra ----------------------------------------------------------
    def test_round_trip(self, scheme: edil.Scheme) -> None:
        np.testing.assert_allclose(scheme.decode(scheme.encode(X)), X, atol=self.atol)

    def test_encoded_value_knows_its_shape_and_scheme(self, scheme: edil.Scheme) -> None:
        enc = scheme.encode(X)
        assert isinstance(enc, edil.Encoded)
        assert enc.shape == X.shape
        assert enc.scheme_id == scheme.scheme_id

    def test_add_sub(self, scheme: edil.Scheme) -> None:
        a, b = scheme.encode(X), scheme.encode(Y)
        np.testing.assert_allclose(scheme.decode(scheme.add(a, b)), X + Y, atol=self.atol)
        np.testing.assert_allclose(scheme.decode(scheme.sub(a, b)), X - Y, atol=self.atol)

    def test_add_broadcasts_a_bias(self, scheme: edil.Scheme) -> None:
        bias = Y[0]
        out = scheme.decode(scheme.add(scheme.encode(X), scheme.encode(bias)))
        np.testing.assert_allclose(out, X + bias, atol=self.atol)

    def test_add_public_and_mul_public(self, scheme: edil.Scheme) -> None:
        a = scheme.encode(X)
        np.testing.assert_allclose(scheme.decode(scheme.add_public(a, Y)), X + Y, atol=self.atol)
        np.testing.assert_allclose(scheme.decode(scheme.mul_public(a, Y[0])), X * Y[0], atol=self.atol * 4)

    def test_matmul_public(self, scheme: edil.Scheme) -> None:
        out = scheme.decode(scheme.matmul_public(scheme.encode(X), W))
        np.testing.assert_allclose(out, X @ W, atol=self.atol * 10)

    def test_sum(self, scheme: edil.Scheme) -> None:
        a = scheme.encode(X)
        np.testing.assert_allclose(scheme.decode(scheme.sum(a, axis=0)), X.sum(axis=0), atol=self.atol * 6)
        np.testing.assert_allclose(scheme.decode(scheme.sum(a, axis=1)), X.sum(axis=1), atol=self.atol * 6)

    # --- products of encoded values -------------------------------------------------------------
    def test_mul(self, scheme: edil.Scheme) -> None:
        a, b = scheme.encode(X), scheme.encode(Y)
        if not self.supports_mul:
            with pytest.raises(edil.UnsupportedOperationError):
                scheme.mul(a, b)
            return
        np.testing.assert_allclose(scheme.decode(scheme.mul(a, b)), X * Y, atol=self.atol * 10)

    def test_matmul_encoded(self, scheme: edil.Scheme) -> None:
        a = scheme.encode(X)
        if not self.supports_matmul:
            with pytest.raises(edil.UnsupportedOperationError):
                scheme.matmul(a, scheme.encode(W))
            return
        out = scheme.decode(scheme.matmul(a, scheme.encode_weights(W)))
        np.testing.assert_allclose(out, X @ W, atol=self.atol * 10)

    def test_polyval(self, scheme: edil.Scheme) -> None:
        x = X / 2.0  # [-2, 2]
        a = scheme.encode(x)
        if not self.supports_poly:
            with pytest.raises(edil.UnsupportedOperationError):
                scheme.polyval(a, COEFFS)
            return
        ref = np.polynomial.polynomial.polyval(x, COEFFS)
        np.testing.assert_allclose(scheme.decode(scheme.polyval(a, COEFFS)), ref, atol=self.poly_atol)

    # --- bad input --------------------------------------------------------------------------------
    def test_non_finite_input_is_rejected(self, scheme: edil.Scheme) -> None:
        for bad in (np.nan, np.inf, -np.inf):
            with pytest.raises(edil.EncodingError):
                scheme.encode(np.array([[1.0, bad]]))

    def test_value_of_another_scheme_is_rejected(self, scheme: edil.Scheme) -> None:
        other = Plain() if not isinstance(scheme, Plain) else edil.Masked(2)
        foreign = other.encode(X)
        with pytest.raises(edil.SchemeMismatchError):
            scheme.add(scheme.encode(X), foreign)
        with pytest.raises(edil.SchemeMismatchError):
            scheme.decode(foreign)

    def test_shape_mismatch_is_rejected(self, scheme: edil.Scheme) -> None:
        a = scheme.encode(X)
        with pytest.raises(edil.ShapeError):
            scheme.add(a, scheme.encode(X[:, :2]))
        with pytest.raises(edil.ShapeError):
            scheme.matmul_public(a, W[:2])
        with pytest.raises(edil.ShapeError):
            scheme.add_public(a, np.ones((2, 2)))

    def test_not_an_encoded_value_is_a_type_error(self, scheme: edil.Scheme) -> None:
        with pytest.raises(TypeError):
            scheme.add(scheme.encode(X), X)  # type: ignore[arg-type]

    # --- whole models ---------------------------------------------------------------------------
    def _agreement(self, model: models.Sequential, x: np.ndarray, **kw: bool) -> float:
        ref = model.predict(x)
        got = models.encode_model(model, self.make_scheme(), **kw).predict(x)
        return float(np.mean(got == ref))

    def test_logreg_breast_cancer_matches_plain(self) -> None:
        x, _ = wl.breast_cancer()
        _, model = wl.logreg_breast_cancer()
        assert 1.0 - self._agreement(model, x) <= self.max_disagreement

    def test_mlp_digits_matches_plain(self) -> None:
        x, _ = wl.digits()
        if self.mlp_samples is not None:
            x = x[: self.mlp_samples]
        _, model = wl.mlp_digits()
        if not self.supports_poly:
            with pytest.raises(edil.UnsupportedOperationError):
                models.encode_model(model, self.make_scheme()).predict(x[:4])
            return
        assert 1.0 - self._agreement(model, x) <= self.max_disagreement

    def test_private_weights(self) -> None:
        x, _ = wl.breast_cancer()
        _, model = wl.logreg_breast_cancer()
        if not self.supports_private_weights:
            with pytest.raises(edil.UnsupportedOperationError):
                models.encode_model(model, self.make_scheme(), private_weights=True)
            return
        assert 1.0 - self._agreement(model, x, private_weights=True) <= self.max_disagreement


class ModelPathConformance:
    """One behaviour spec for every way a whole model runs under a scheme (in process, on nodes).

    Subclass it and implement :meth:`predict`: ``predict(model, x, private_weights)`` returns the
    labels the path computes. Every path must agree with the plaintext model within
    ``max_disagreement``, with the weights public and with the weights private.
    """

    max_disagreement: float = 0.005
    samples: int = 200

    def predict(self, model: models.Sequential, x: np.ndarray, *, private_weights: bool) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _disagreement(self, model: models.Sequential, x: np.ndarray, private_weights: bool) -> float:
        return float(np.mean(self.predict(model, x, private_weights=private_weights) != model.predict(x)))

    @pytest.mark.parametrize("private_weights", [False, True])
    def test_logreg_breast_cancer(self, private_weights: bool) -> None:
        x, _ = wl.breast_cancer()
        _, model = wl.logreg_breast_cancer()
        assert self._disagreement(model, x[: self.samples], private_weights) <= self.max_disagreement

    @pytest.mark.parametrize("private_weights", [False, True])
    def test_mlp_digits(self, private_weights: bool) -> None:
        x, _ = wl.digits()
        _, model = wl.mlp_digits()
        assert self._disagreement(model, x[: self.samples], private_weights) <= self.max_disagreement
