"""Private inference overhead: plaintext (scikit-learn, JAX float32 jit) vs ``Masked`` (and CKKS
for the CNN).

Workloads: logistic regression on breast cancer (569 samples), an MLP 64-128-10 (degree-4
ReLU approximation) on all 1797 digits, and a CNN on digits 8x8 (conv 3x3, 8 channels, stride
1 -> square -> dense 10; the convolution lowered to one 64x288 dense layer, im2col-style),
trained with JAX on a stratified 75% of digits and run on the other 450. ``Masked`` runs with
2 and 3 parties, data shared and model public, and with the model shared too (the CNN's shared
model is skipped with ``--quick``). Time is reported both for the whole protocol (dealer's
offline randomness drawn inline) and for the online phase alone (offline material prepared
beforehand, as in CrypTen/SPU-style benchmarks); for 2 parties and a public model, two parts of
a run are also timed alone (``of which`` rows, not additive: the first layer's ring product of
every share, and the dealer's AES expansion of a run's words). The CNN also runs under batch-packed CKKS
(server time, and encrypt + server + decrypt). Every ratio comes from this one run.

Every time is the median of several runs after a warm-up (7, 3 with ``--quick``; at least 20 for
the fast JAX baseline; 3 for CKKS), reported with its interquartile range (``iqr_ms``) and the
number of runs (``repeats``); ``x_jax`` is a ratio of medians.

Run: ``python -m benchmarks.inference [--quick] [--workload mlp] [--parties 2]`` (the filters time a
subset; ``EDIL_BENCH_DIR`` keeps such a run's tables away from the full run's).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from benchmarks._common import markdown_table, measure, measure_steps, parser, summarize, timed, write
from edil import CKKS, Masked, models
from edil._dealer import Stream
from edil.hazmat import ring


@dataclass
class Workload:
    """A model to time. ``est`` is the float estimator (``None``: the model is its own float
    reference); ``activation`` is what the JAX baseline computes for the polynomial layers."""

    name: str
    est: Any
    model: models.Sequential
    x: np.ndarray
    y: np.ndarray
    activation: str | None = "relu"
    ckks: bool = False
    shared_model: bool = True


def cnn_digits(shared_model: bool = True) -> Workload:
    """Conv 3x3x8 (stride 1) -> square -> dense 10, trained on 75% of digits, run on the rest.

    The JAX baseline runs the same lowered form (a 64x288 dense layer) in float32.
    """
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    model = models.train_cnn(jax.random.key(0), x_tr, y_tr, in_shape=(8, 8), channels=8, stride=1, activation="square")
    return Workload("cnn3x3x8-10/digits", None, model, x_te, y_te, activation=None, ckks=True, shared_model=shared_model)


def _logreg() -> Workload:
    xb, yb = load_breast_cancer(return_X_y=True)
    xb = StandardScaler().fit_transform(xb)
    lr = LogisticRegression(max_iter=1000).fit(xb, yb)
    return Workload("logreg/breast_cancer", lr, models.from_sklearn(lr), xb, yb)


def _mlp() -> Workload:
    xd, yd = load_digits(return_X_y=True)
    xd = xd / 16.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-2, max_iter=300, random_state=0).fit(xd, yd)
    return Workload("mlp64-128-10/digits", mlp, models.from_sklearn(mlp, degree=4, calibration=xd), xd, yd)


def workloads(quick: bool = False, only: str = "") -> list[Workload]:
    """The workloads whose name contains ``only`` (all by default), each built only when selected."""
    builders = [("logreg/breast_cancer", _logreg), ("mlp64-128-10/digits", _mlp),
                ("cnn3x3x8-10/digits", lambda: cnn_digits(shared_model=not quick))]
    return [build() for name, build in builders if only in name]


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


def online_time(em: Any, enc: Any, rows: int, repeats: int) -> dict:
    """The online phase alone: dealer material drawn ahead (``preprocess``, not timed), then the run.

    One warm-up, then ``repeats`` timed runs, each on fresh single-use material.
    """

    def once() -> float:
        pre = em.preprocess(rows)
        jax.block_until_ready(pre.material)
        t0 = time.perf_counter()
        jax.block_until_ready(em(enc, preprocessed=pre).shares)
        return time.perf_counter() - t0

    once()
    return summarize([once() for _ in range(repeats)])


def parts_of_a_run(s: Masked, em: Any, enc: Any, model: models.Sequential, repeats: int) -> list[tuple[str, dict]]:
    """Two parts of a ``Masked`` run timed alone: the first layer's ring product and the dealer's AES.

    * the first dense layer's product, every party's share times the public encoded weights
      over Z_2^64, with the kernel the program uses (the whole batch in one call; the program
      runs it row block by row block);
    * the dealer's AES-256-CTR expansion of the words one whole-protocol run draws
      (:meth:`edil.Masked.dealer_words`), into reused storage as the run does.
    """
    layers, arrays = s.program(model, private_weights=False)
    small = bool(layers[0][1])
    with jax.enable_x64(True):
        shares = enc.shares.reshape(-1, enc.shares.shape[-1])
        w = jnp.asarray(arrays[0])
        product = jax.jit(ring._matmul_small if small else lambda a, b: ring._matmul(a, b.astype(jnp.uint64)))  # noqa: SLF001
        t_product = measure(lambda: product(shares, w).block_until_ready(), repeats=max(repeats, 20))
    words = s.dealer_words(em, enc.shape[0])
    buf = np.empty(8 * words + 80, np.uint8)
    t_aes = measure(lambda: Stream(bytes(32)).words_into(buf, words), repeats=repeats)
    kernel = ring.kernel_for(int(shares.shape[0]) * int(w.shape[0]) * int(w.shape[1]))
    return [(f"first-layer ring product (every share @ public weights, Z_2^64, {kernel} kernel)", t_product),
            (f"dealer AES-256-CTR expansion ({words:,} words a run)", t_aes)]


def ckks_rows(model: models.Sequential, x: np.ndarray, y: np.ndarray, base: dict, t_jax: float, repeats: int) -> list[dict]:
    """Batch-packed CKKS sized for the model: server time, and encrypt + server + decrypt.

    Each run encrypts, evaluates and decrypts; ``repeats`` timed runs follow one warm-up run.
    """
    s = CKKS.for_model(model)
    em = models.encode_model(model, s)
    t, logits = measure_steps([("encrypt", lambda _: s.encode(x)), ("server", em), ("decrypt", s.decode)],
                              repeats=repeats)
    acc = float(np.mean(model.labels(logits) == y))
    err = float(np.max(np.abs(logits - model.forward(x))))
    label = f"ckks N={s.poly_modulus_degree} depth={s.depth}"
    common = {**base, "accuracy": acc, "bytes_opened": 0, "max_abs_err": err, "repeats": repeats}
    return [
        {**common, "variant": label + " (server)", **timed("ms", t["server"]), "x_jax": t["server"]["median_s"] / t_jax},
        {**common, "variant": label + " (encrypt+server+decrypt)", **timed("ms", t["total"]),
         "x_jax": t["total"]["median_s"] / t_jax},
    ]


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__ or "")
    p.add_argument("--workload", default="", help="run only the workloads whose name contains this (e.g. mlp)")
    p.add_argument("--parties", type=int, nargs="*", default=[2, 3], help="Masked party counts (default: 2 3)")
    args = p.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    rows = []
    for wl in workloads(args.quick, args.workload):
        name, est, model, x, y = wl.name, wl.est, wl.model, wl.x, wl.y
        xf = jnp.asarray(x, jnp.float32)
        f_float = jax_forward(model, wl.activation)
        t_jax = measure(lambda: f_float(xf).block_until_ready(), repeats=max(repeats, 20))
        float_pred = est.predict(x) if est is not None else model.labels(np.asarray(f_float(xf)))
        float_acc = float(np.mean(float_pred == y))
        base = {"workload": name, "samples": len(x), "float_accuracy": float_acc}
        rows.append({**base, "variant": "plaintext JAX f32 jit", "accuracy": float_acc,
                     **timed("ms", t_jax), "x_jax": 1.0, "bytes_opened": 0, "repeats": t_jax["repeats"]})
        if est is not None:
            t_skl = measure(lambda: est.predict(x), repeats=repeats)
            rows.append({**base, "variant": "plaintext sklearn", "accuracy": float_acc, **timed("ms", t_skl),
                         "x_jax": t_skl["median_s"] / t_jax["median_s"], "bytes_opened": 0, "repeats": repeats})
        for n in args.parties:
            for private in (False, True) if wl.shared_model else (False,):
                s = Masked(n, key=jax.random.key(n))
                em = models.encode_model(model, s, private_weights=private)
                enc = s.encode(x)
                jax.block_until_ready(enc.shares)
                s.stats.reset()
                out = em(enc)
                bytes_opened = s.stats.bytes_opened
                decoded = s.decode(out)
                acc = float(np.mean(model.labels(decoded) == y))
                err = float(np.max(np.abs(decoded - model.forward(x))))
                t_full = measure(lambda: jax.block_until_ready(em(enc).shares), repeats=repeats)

                onl = online_time(em, enc, len(x), repeats)
                label = f"masked n={n} " + ("model shared" if private else "model public")
                rows.append({**base, "variant": label + " (offline+online)", "accuracy": acc,
                             **timed("ms", t_full), "x_jax": t_full["median_s"] / t_jax["median_s"],
                             "bytes_opened": bytes_opened, "max_abs_err": err, "repeats": repeats})
                rows.append({**base, "variant": label + " (online only)", "accuracy": acc,
                             **timed("ms", onl), "x_jax": onl["median_s"] / t_jax["median_s"],
                             "bytes_opened": bytes_opened, "max_abs_err": err, "repeats": repeats})
                if n == 2 and not private and isinstance(model.layers[0], models.Dense):
                    for variant, t_part in parts_of_a_run(s, em, enc, model, repeats):
                        rows.append({**base, "variant": "  of which " + variant, **timed("ms", t_part),
                                     "x_jax": t_part["median_s"] / t_jax["median_s"], "repeats": repeats})
        if wl.ckks:
            rows += ckks_rows(model, x, y, base, t_jax["median_s"], 3)
    cols = ["workload", "variant", "samples", "accuracy", "float_accuracy", "ms", "x_jax", "bytes_opened", "max_abs_err",
            "repeats"]
    table = markdown_table(rows, cols) + "\nms: median ± interquartile range of `repeats` runs after a warm-up.\n"
    write("inference", {"rows": rows}, table)
    print(table)
    return {"rows": rows}


if __name__ == "__main__":
    main()
