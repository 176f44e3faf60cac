"""Exact secure comparison under ``Masked``: deep ReLU nets and the cost of one ReLU.

Two parts. (1) A 64-64-64-64-10 ReLU MLP (three hidden layers, scikit-learn, trained on a
stratified 75% of digits) runs on the other 450 rows under ``Masked`` (n = 2, public model) with
exact ReLU layers and with its degree-4 polynomial twin (calibrated on the training rows); the
table gives each one's label agreement with the float model, its accuracy, time and openings
(exact ReLU also with n = 3 parties).
(2) ``Masked.relu`` on a (256, 64) tensor, n = 2 and 3: time, rounds and bytes per element.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from benchmarks._common import markdown_table, measure, parser, timed, write
from edil import EncodingError, Masked, models


def deep_net(hidden: tuple[int, ...] = (64, 64, 64)) -> tuple[MLPClassifier, np.ndarray, np.ndarray, np.ndarray]:
    """The ReLU MLP, its training rows (for calibration) and the held-out rows and labels."""
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden, alpha=1e-2, max_iter=300, random_state=0).fit(x_tr, y_tr)
    for w in clf.coefs_:  # below the fixed-point resolution: zero in the float model too
        w[np.abs(w) < 2.0**-14] = 0.0
    return clf, x_tr, x_te, y_te


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__ or "").parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    clf, x_tr, x_te, y_te = deep_net()
    float_pred = clf.predict(x_te)
    rows = [{"variant": "float (sklearn)", "agreement": 1.0, "accuracy": float(np.mean(float_pred == y_te))}]
    poly = models.from_sklearn(clf, degree=4, calibration=x_tr)
    plain = poly.predict(x_te)  # the polynomial model in float64: the best any scheme can do with it
    rows.append({"variant": "degree-4 polynomial, float64", "agreement": float(np.mean(plain == float_pred)),
                 "accuracy": float(np.mean(plain == y_te))})
    exact = models.from_sklearn(clf, activations="exact")
    for name, model, n in (("Masked exact ReLU", exact, 2), ("Masked exact ReLU, n = 3", exact, 3),
                           ("Masked degree-4 polynomial", poly, 2)):
        s = Masked(n, key=jax.random.key(0))
        em = models.encode_model(model, s)
        try:
            labels = em.predict(x_te)
        except EncodingError as exc:  # the precision check refuses what f = 16 cannot evaluate
            rows.append({"variant": name, "agreement": "refused", "accuracy": str(exc).split(":")[0]})
            continue
        s.stats.reset()
        t = measure(lambda em=em: em.predict(x_te), repeats=repeats)
        rows.append({"variant": name, "agreement": float(np.mean(labels == float_pred)),
                     "accuracy": float(np.mean(labels == y_te)), **timed("ms", t),
                     "rounds": s.stats.openings // (repeats + 1), "MB_opened": s.stats.bytes_opened / (repeats + 1) / 1e6})
    relu_rows = []
    shape = (64, 64) if args.quick else (256, 64)
    elements = shape[0] * shape[1]
    x = np.random.default_rng(0).normal(scale=4.0, size=shape)
    for n in (2, 3):
        s = Masked(n, key=jax.random.key(n))
        a = s.encode(x)
        assert np.array_equal(s.decode(s.relu(a)), np.maximum(s.decode(a), 0))
        s.stats.reset()
        t = measure(lambda s=s, a=a: jax.block_until_ready(s.relu(a).shares), repeats=repeats)
        runs = repeats + 1
        relu_rows.append({"n": n, "elements": elements, **timed("us_per_element", t, per=elements),
                          "rounds": s.stats.openings // runs, "bytes_per_element": s.stats.bytes_opened / runs / elements})
    table = markdown_table(rows, ["variant", "agreement", "accuracy", "ms", "rounds", "MB_opened"]) + "\n" + markdown_table(
        relu_rows, ["n", "elements", "us_per_element", "rounds", "bytes_per_element"])
    payload = {"deep_net": rows, "relu": relu_rows, "hidden": [64, 64, 64], "rows": len(x_te)}
    print(table)
    write("compare", payload, table)
    return payload


if __name__ == "__main__":
    main()
