"""Private inference overhead: plaintext (scikit-learn, JAX float32 jit) vs ``Masked``.

Workloads: logistic regression on breast cancer (569 samples) and an MLP 64-128-10 (degree-4
ReLU approximation) on all 1797 digits. ``Masked`` runs with 2 and 3 parties, data shared and
model public, and with the model shared too. Time is reported both for the whole protocol
(dealer's offline randomness drawn inline) and for the online phase alone (offline material
prepared beforehand, as in CrypTen/SPU-style benchmarks); every ratio comes from this one run.

Run: ``python -m benchmarks.inference [--quick]``.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from benchmarks._common import markdown_table, measure, parser, write
from edil import Masked, models


def workloads() -> list[tuple[str, object, models.Sequential, np.ndarray, np.ndarray]]:
    xb, yb = load_breast_cancer(return_X_y=True)
    xb = StandardScaler().fit_transform(xb)
    lr = LogisticRegression(max_iter=1000).fit(xb, yb)
    xd, yd = load_digits(return_X_y=True)
    xd = xd / 16.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-2, max_iter=300, random_state=0).fit(xd, yd)
    return [
        ("logreg/breast_cancer", lr, models.from_sklearn(lr), xb, yb),
        ("mlp64-128-10/digits", mlp, models.from_sklearn(mlp, degree=4, calibration=xd), xd, yd),
    ]


def jax_forward(model: models.Sequential, activation: str | None):
    """The same model in JAX float32, jit-compiled: the plaintext baseline."""
    params = []
    for layer in model.layers:
        if isinstance(layer, models.Dense):
            params.append(("dense", jnp.asarray(layer.weight, jnp.float32), jnp.asarray(layer.bias, jnp.float32)))
        elif isinstance(layer, models.Polynomial):
            params.append(("act", layer.activation, jnp.asarray(layer.coeffs, jnp.float32)))

    def fwd(x):
        for p in params:
            if p[0] == "dense":
                x = x @ p[1] + p[2]
            elif activation == "relu":
                x = jnp.maximum(x, 0)
            else:
                x = jnp.polyval(p[2][::-1], x)
        return x

    return jax.jit(fwd)


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__ or "").parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    rows = []
    for name, est, model, x, y in workloads():
        xf = jnp.asarray(x, jnp.float32)
        f_relu = jax_forward(model, "relu")
        t_jax = measure(lambda: f_relu(xf).block_until_ready(), repeats=max(repeats, 20))
        t_skl = measure(lambda: est.predict(x), repeats=repeats)
        float_acc = float(np.mean(est.predict(x) == y))
        base = {"workload": name, "samples": len(x), "float_accuracy": float_acc}
        rows.append({**base, "variant": "plaintext JAX f32 jit", "accuracy": float_acc,
                     "ms": t_jax["median_s"] * 1e3, "x_jax": 1.0, "bytes_opened": 0})
        rows.append({**base, "variant": "plaintext sklearn", "accuracy": float_acc,
                     "ms": t_skl["median_s"] * 1e3, "x_jax": t_skl["median_s"] / t_jax["median_s"], "bytes_opened": 0})
        for n in (2, 3):
            for private in (False, True):
                s = Masked(n, key=jax.random.key(n))
                em = models.encode_model(model, s, private_weights=private)
                enc = s.encode(x)
                jax.block_until_ready(enc.shares)
                s.stats.reset()
                out = em(enc)
                bytes_opened = s.stats.bytes_opened
                acc = float(np.mean(model.labels(s.decode(out)) == y))
                t_full = measure(lambda: jax.block_until_ready(em(enc).shares), repeats=repeats)

                def online_only() -> float:
                    pre = em.preprocess(len(x))
                    jax.block_until_ready(pre.material)
                    import time

                    t0 = time.perf_counter()
                    jax.block_until_ready(em(enc, preprocessed=pre).shares)
                    return time.perf_counter() - t0

                online_only()
                onl = sorted(online_only() for _ in range(repeats))[repeats // 2]
                label = f"masked n={n} " + ("model shared" if private else "model public")
                rows.append({**base, "variant": label + " (offline+online)", "accuracy": acc,
                             "ms": t_full["median_s"] * 1e3, "x_jax": t_full["median_s"] / t_jax["median_s"],
                             "bytes_opened": bytes_opened})
                rows.append({**base, "variant": label + " (online only)", "accuracy": acc,
                             "ms": onl * 1e3, "x_jax": onl / t_jax["median_s"], "bytes_opened": bytes_opened})
    cols = ["workload", "variant", "samples", "accuracy", "float_accuracy", "ms", "x_jax", "bytes_opened"]
    table = markdown_table(rows, cols)
    write("inference", {"rows": rows}, table)
    print(table)
    return {"rows": rows}


if __name__ == "__main__":
    main()
