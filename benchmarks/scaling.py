"""How ``Masked`` inference time, traffic and memory grow with batch, width and parties.

Times are medians of 5 runs (3 with ``--quick``; at least 10 for the plaintext baseline) after a
warm-up, with their interquartile range (``*_iqr_ms``, error bars in the plots); the overhead is a
ratio of medians.

Run: ``python -m benchmarks.scaling [--quick]``. Writes ``results/scaling.json``/``.md`` and
PNG plots under ``papers/figures/`` (under ``$EDIL_BENCH_DIR/figures/`` when that is set).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import markdown_table, measure, parser, timed, write
from edil import Masked, models

#: The report's figures; a run with ``EDIL_BENCH_DIR`` (kept away from the full run's tables) draws
#: its plots under that folder instead, so it never replaces the report's.
FIGURES = Path(os.environ["EDIL_BENCH_DIR"]) / "figures" if os.environ.get("EDIL_BENCH_DIR") else \
    Path(__file__).resolve().parents[1] / "papers" / "figures"


def _mlp(width: int, rng: np.random.Generator) -> models.Sequential:
    relu = models.fit_activation("relu", 4, (-4.0, 4.0))
    return models.Sequential((
        models.Dense(rng.normal(0, 0.2, (64, width)), np.zeros(width)),
        relu,
        models.Dense(rng.normal(0, 0.2, (width, 10)), np.zeros(10)),
    ), kind="multiclass")


def _point(batch: int, width: int, parties: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    model = _mlp(width, rng)
    x = rng.uniform(0, 1, (batch, 64))
    s = Masked(parties, key=jax.random.key(1))
    em = models.encode_model(model, s)
    enc = s.encode(x)
    s.stats.reset()
    jax.block_until_ready(em(enc).shares)
    opened = s.stats.bytes_opened
    t = measure(lambda: jax.block_until_ready(em(enc).shares), repeats=repeats)
    f = jax.jit(lambda v: model_forward_jax(model, v))
    xf = jnp.asarray(x, jnp.float32)
    tp = measure(lambda: f(xf).block_until_ready(), repeats=max(repeats, 10))
    return {
        "batch": batch, "width": width, "parties": parties,
        **timed("masked_ms", t), **timed("plain_ms", tp),
        "overhead": t["median_s"] / tp["median_s"], "bytes_opened": opened,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "repeats": t["repeats"], "timings": {"masked": t, "plain": tp},
    }


def model_forward_jax(model: models.Sequential, x: jax.Array) -> jax.Array:
    for layer in model.layers:
        if isinstance(layer, models.Dense):
            x = x @ jnp.asarray(layer.weight, jnp.float32) + jnp.asarray(layer.bias, jnp.float32)
        elif isinstance(layer, models.Polynomial):
            x = jnp.polyval(jnp.asarray(layer.coeffs[::-1], jnp.float32), x)
    return x


def _plot(rows: list[dict], key: str, fixed: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["sweep"] == key]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for which, fmt, label in (("masked", "o-", "Masked"), ("plain", "s--", "plaintext JAX f32")):
        med = np.array([r[f"{which}_ms"] for r in pts])
        quart = np.array([[r["timings"][which]["q1_s"] * 1e3, r["timings"][which]["q3_s"] * 1e3] for r in pts])
        ax.errorbar([r[key] for r in pts], med, yerr=np.abs(quart.T - med), fmt=fmt, capsize=3, label=label)
    ax.set_xlabel(key)
    ax.set_ylabel("ms per batch (median, IQR)")
    ax.set_yscale("log")
    if key != "parties":
        ax.set_xscale("log", base=2)
    ax.set_title(", ".join(f"{k}={v}" for k, v in fixed.items()))
    ax.legend()
    fig.tight_layout()
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURES / name, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__ or "").parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    batches = [64, 256, 1024] if args.quick else [64, 256, 1024, 4096]
    widths = [32, 128, 512] if args.quick else [32, 64, 128, 256, 512]
    parties = [2, 3, 4] if args.quick else [2, 3, 4, 5]
    rows = []
    for b in batches:
        rows.append({"sweep": "batch", **_point(b, 128, 2, repeats)})
    for w in widths:
        rows.append({"sweep": "width", **_point(1024, w, 2, repeats)})
    for p in parties:
        rows.append({"sweep": "parties", **_point(1024, 128, p, repeats)})
    _plot(rows, "batch", {"width": 128, "parties": 2}, "scaling_batch.png")
    _plot(rows, "width", {"batch": 1024, "parties": 2}, "scaling_width.png")
    _plot(rows, "parties", {"batch": 1024, "width": 128}, "scaling_parties.png")
    cols = ["sweep", "batch", "width", "parties", "masked_ms", "plain_ms", "overhead", "bytes_opened", "max_rss_mb"]
    table = markdown_table(rows, cols) + (
        f"\nTimes: median ± interquartile range of {repeats} runs ({max(repeats, 10)} for plaintext) after a warm-up;"
        " overhead: ratio of medians.\n")
    write("scaling", {"rows": rows}, table)
    print(table)
    return {"rows": rows}


if __name__ == "__main__":
    main()
