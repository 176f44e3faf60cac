"""Homomorphic-encryption demo workloads: the digits MLP under CKKS, logistic regression under
Paillier and CKKS. Used by the CLI demo and by ``benchmarks/he.py``.

Each workload is built from datasets scikit-learn ships (no download): breast cancer
(standardized) with ``LogisticRegression``, digits (scaled to [0, 1]) with a 64-32-10
``MLPClassifier`` whose ReLU is replaced by a degree-4 least-squares polynomial.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["breast_cancer_logreg", "digits_mlp", "run_he_demo"]


@functools.cache
def breast_cancer_logreg() -> tuple[np.ndarray, np.ndarray, Any, Any]:
    """``(x, y, estimator, model)`` for logistic regression on breast cancer."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from edil import models

    x, y = load_breast_cancer(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    est = LogisticRegression(max_iter=1000).fit(x, y)
    return x, y, est, models.from_sklearn(est)


@functools.cache
def digits_mlp(hidden: int = 32, degree: int = 4) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    """``(x, y, estimator, model)`` for the 64-hidden-10 MLP on digits (polynomial activation)."""
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from edil import models

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=1e-2, max_iter=300, random_state=0).fit(x, y)
    return x, y, est, models.from_sklearn(est, degree=degree, calibration=x)


def _run(scheme: Any, model: Any, x: np.ndarray, y: np.ndarray, est: Any, workload: str, size_of: Callable[[Any], int]) -> dict[str, Any]:
    from edil import models

    enc_model = models.encode_model(model, scheme)
    t0 = time.perf_counter()
    enc = scheme.encode(x)
    t1 = time.perf_counter()
    out = enc_model(enc)
    t2 = time.perf_counter()
    logits = scheme.decode(out)
    t3 = time.perf_counter()
    pred = model.labels(logits)
    return {
        "scheme": scheme.name,
        "workload": workload,
        "samples": int(len(x)),
        "accuracy": float(np.mean(pred == y)),
        "plaintext_accuracy": float(np.mean(model.predict(x) == y)),
        "float_accuracy": float(np.mean(est.predict(x) == y)),
        "agreement_with_plaintext": float(np.mean(pred == model.predict(x))),
        "seconds": t3 - t0,
        "encrypt_s": t1 - t0,
        "server_s": t2 - t1,
        "decrypt_s": t3 - t2,
        "bytes": {"input": size_of(enc), "output": size_of(out)},
    }


def run_he_demo(print_fn: Callable[[str], Any] = print, *, paillier_key_bits: int = 2048) -> list[dict[str, Any]]:
    """Run the HE workloads end to end and return one row per (scheme, workload).

    Rows: ``{scheme, workload, samples, accuracy, plaintext_accuracy, float_accuracy,
    agreement_with_plaintext, seconds, encrypt_s, server_s, decrypt_s, bytes}`` where
    ``plaintext_accuracy`` is the same (polynomial) model run in plaintext, ``float_accuracy``
    the original scikit-learn estimator, ``seconds`` client encrypt + node compute + client
    decrypt, and ``bytes`` the serialized ciphertext sizes of the input and the output.
    """
    from edil import CKKS, Paillier

    rows = []
    xd, yd, estd, mlp = digits_mlp()
    ckks = CKKS.for_model(mlp)
    rows.append(_run(ckks, mlp, xd, yd, estd, "digits MLP 64-32-10 (poly deg 4)", lambda e: len(ckks.serialize(e))))
    xb, yb, estb, lr = breast_cancer_logreg()
    ckks_lr = CKKS.for_model(lr)
    rows.append(_run(ckks_lr, lr, xb, yb, estb, "breast cancer logistic regression", lambda e: len(ckks_lr.serialize(e))))
    pai = Paillier(key_bits=paillier_key_bits)
    ct_bytes = 2 * pai.key_bits // 8
    rows.append(_run(pai, lr, xb, yb, estb, "breast cancer logistic regression", lambda e: e.n_ciphertexts * ct_bytes))
    for r in rows:
        print_fn(
            f"{r['scheme']:>8} | {r['workload']:<36} | acc {r['accuracy']:.4f} (plaintext {r['plaintext_accuracy']:.4f}) "
            f"| {r['seconds']:.2f} s | in {r['bytes']['input'] / 1e6:.1f} MB"
        )
    return rows
