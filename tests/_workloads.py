"""Shared, cached workloads for the tests: small sklearn models on datasets sklearn ships."""

from __future__ import annotations

import functools
import warnings

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from edil import models


@functools.cache
def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(x), y


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return x / 16.0, y


@functools.cache
def logreg_breast_cancer() -> tuple[LogisticRegression, models.Sequential]:
    x, y = breast_cancer()
    est = LogisticRegression(max_iter=1000).fit(x, y)
    return est, models.from_sklearn(est)


@functools.cache
def mlp_digits(hidden: int = 32, degree: int = 4) -> tuple[MLPClassifier, models.Sequential]:
    x, y = digits()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=1e-2, max_iter=300, random_state=0).fit(x, y)
    return est, models.from_sklearn(est, degree=degree, calibration=x)


@functools.cache
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: 75/25 stratified split of digits (random_state=0)."""
    from sklearn.model_selection import train_test_split

    x, y = digits()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return x_tr, y_tr, x_te, y_te


@functools.cache
def cnn_digits(activation: str = "square", degree: int = 4, channels: int = 8, stride: int = 1) -> models.Sequential:
    """Conv 3x3 (``channels``, ``stride``) -> activation -> dense 10, trained on the digits split."""
    import jax

    x_tr, y_tr, _, _ = digits_split()
    return models.train_cnn(
        jax.random.key(0), x_tr, y_tr, in_shape=(8, 8), channels=channels, stride=stride, activation=activation, degree=degree
    )
