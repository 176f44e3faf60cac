"""Overhead of the private-inference schemes: plaintext vs Masked vs CKKS vs Paillier, and the
peer baselines measured in the same run.

Workloads
    * logistic regression on breast cancer (all 569 samples): Plain, Masked (2 parties),
      CKKS (batch-packed), Paillier (packed) and the TenSEAL tutorial's way (one ciphertext per
      sample, ``enc_x.dot(w) + b``, the parameters of TenSEAL Tutorial 1);
    * the digits MLP 64-32-10 with a degree-4 polynomial activation (all 1797 samples): Plain,
      Masked, CKKS;
    * Paillier aggregation of a 10,000-value vector: packed vs one value per ciphertext (plain
      phe usage).

Per-sample baselines that cost ~10 ms per sample are timed on a subsample (stated in the
output) and reported per sample; every ratio compares per-sample (or per-value) times of the
same run on the same machine.

Every time is the median of several runs of the whole encrypt -> compute -> decrypt pipeline after
a warm-up run (5, 3 with ``--quick``; 3 for the slow Paillier and one-ciphertext-per-sample
baselines, whose warm-up runs on a few samples), with its interquartile range (``*_iqr_*``) and
the number of runs (``repeats``); ratios are ratios of medians.

Run: ``python -m benchmarks.he [--quick]``. Writes ``results/he.json`` and ``results/he.md``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import tenseal as ts

from benchmarks._common import markdown_table, measure_steps, parser, timed, write
from edil import CKKS, Masked, Paillier, Plain, models
from edil.app import breast_cancer_logreg, digits_mlp


def _timed_row(t: dict[str, dict[str, float]], n: int, repeats: int) -> dict[str, Any]:
    """Per-sample server and end-to-end times and per-stage seconds, each with its spread."""
    return {
        **timed("server_ms_per_sample", t["server"], per=n),
        **timed("e2e_ms_per_sample", t["total"], per=n),
        **timed("encrypt_s", t["encrypt"]),
        **timed("server_s", t["server"]),
        **timed("decrypt_s", t["decrypt"]),
        "repeats": repeats,
    }


def _ready(v: Any) -> Any:
    """``v`` once computed: JAX dispatches asynchronously, so a step's time must include the wait."""
    jax.block_until_ready(getattr(v, "shares", v))
    return v


def _scheme_row(name: str, scheme: Any, model: Any, x: np.ndarray, repeats: int, size_of: Any = None,
                warmup_samples: int | None = None) -> dict[str, Any]:
    """Encrypt, evaluate and decrypt all of ``x``, ``repeats`` times after a warm-up run (on the
    first ``warmup_samples`` samples if given: for schemes with nothing to compile)."""
    em = models.encode_model(model, scheme)
    last: dict[str, Any] = {}

    def server(enc: Any) -> Any:
        last["enc"], last["out"] = enc, _ready(em(enc))
        return last["out"]

    steps = [("encrypt", lambda v: _ready(scheme.encode(v))), ("server", server), ("decrypt", scheme.decode)]
    if warmup_samples is not None:
        measure_steps(steps, repeats=1, warmup=0, first=x[:warmup_samples])
    t, logits = measure_steps(steps, repeats=repeats, warmup=0 if warmup_samples is not None else 1, first=x)
    pred = model.labels(logits)
    n = len(x)
    row = {
        "scheme": name,
        "samples": n,
        **_timed_row(t, n, repeats),
        "agreement": float(np.mean(pred == model.predict(x))),
        "max_abs_err": float(np.max(np.abs(logits - model.forward(x)))),
    }
    if size_of is not None:
        row["input_bytes"] = size_of(last["enc"])
        row["output_bytes"] = size_of(last["out"])
    return row


def _tutorial_logreg(model: Any, x: np.ndarray, n: int, repeats: int) -> dict[str, Any]:
    """TenSEAL Tutorial 1 style: one ciphertext per sample, ``enc_x.dot(w) + b``; timed
    ``repeats`` times on the first ``n`` samples after a warm-up on 2 samples."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[40, 21, 21, 21, 21, 21, 21, 40])
    ctx.global_scale = 2**21
    ctx.generate_galois_keys()
    dense = model.layers[0]
    w, b = dense.weight[:, 0].tolist(), float(dense.bias[0])
    xs = x[:n]
    last: dict[str, Any] = {}

    def server(encs: list) -> list:
        last["encs"], last["outs"] = encs, [e.dot(w) + b for e in encs]
        return last["outs"]

    steps = [("encrypt", lambda rows: [ts.ckks_vector(ctx, row.tolist()) for row in rows]), ("server", server),
             ("decrypt", lambda outs: np.array([o.decrypt()[0] for o in outs]))]
    measure_steps(steps, repeats=1, warmup=0, first=xs[:2])
    t, logits = measure_steps(steps, repeats=repeats, warmup=0, first=xs)
    encs, outs = last["encs"], last["outs"]
    agree = float(np.mean((logits > 0) == (model.forward(xs)[:, 0] > 0)))
    return {
        "scheme": "tenseal-tutorial (1 ct/sample)",
        "samples": n,
        **_timed_row(t, n, repeats),
        "agreement": agree,
        "max_abs_err": float(np.max(np.abs(logits - model.forward(xs)[:, 0]))),
        "input_bytes": sum(len(e.serialize()) for e in encs) * len(x) // n,
        "output_bytes": sum(len(o.serialize()) for o in outs) * len(x) // n,
        "note": f"timed on the first {n} samples; sizes scaled to all {len(x)}",
    }


def _paillier_aggregation(key_bits: int, n_values: int, n_unpacked: int, repeats: int) -> list[dict[str, Any]]:
    """Encrypt, sum and decrypt, ``repeats`` times after a warm-up on 100 values."""
    from phe import paillier

    rng = np.random.default_rng(0)
    values = rng.uniform(-1000, 1000, size=(n_values, 1))
    keypair = paillier.generate_paillier_keypair(n_length=key_bits)
    rows = []
    for pack, count in ((True, n_values), (False, n_unpacked)):
        s = Paillier(keypair=keypair, pack=pack, max_additions=n_values)
        v = values[:count]
        steps = [("encrypt", s.encode), ("sum", lambda enc: s.sum(enc, axis=0)), ("decrypt", s.decode)]
        measure_steps(steps, repeats=1, warmup=0, first=v[:100])
        t, got = measure_steps(steps, repeats=repeats, warmup=0, first=v)
        rows.append({
            "scheme": "paillier packed" if pack else "phe unpacked (1 value/ct)",
            "values": count,
            "ciphertexts_for_10k": -(-n_values // s.slots_per_ciphertext),
            "slots_per_ciphertext": s.slots_per_ciphertext,
            **timed("encrypt_s", t["encrypt"]),
            **timed("sum_s", t["sum"]),
            **timed("decrypt_s", t["decrypt"]),
            **timed("us_per_value", t["total"], per=count),
            "repeats": repeats,
            "abs_err": float(abs(got[0] - v.sum())),
            "note": "" if count == n_values else f"timed on {count} values, per-value cost scaled to {n_values}",
        })
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser(__doc__ or "").parse_args(argv)
    quick = args.quick
    repeats = args.repeats or (3 if quick else 5)
    slow = args.repeats or 3  # Paillier over whole datasets, one CKKS ciphertext per sample
    key_bits = 1024 if quick else 2048

    xb, yb, _, lr = breast_cancer_logreg()
    xd, yd, estd, mlp = digits_mlp()

    # --- logistic regression, breast cancer -----------------------------------------------------
    ckks_lr = CKKS.for_model(lr)
    ckks_size = lambda e: len(ckks_lr.serialize(e))  # noqa: E731
    pai = Paillier(key_bits=key_bits)
    pai_size = lambda e: e.n_ciphertexts * 2 * pai.key_bits // 8  # noqa: E731
    lr_rows = [
        _scheme_row("plain", Plain(), lr, xb, repeats),
        _scheme_row("masked (2 parties)", Masked(2, key=jax.random.key(0)), lr, xb, repeats),
        _scheme_row("ckks (batch-packed)", ckks_lr, lr, xb, repeats, ckks_size),
        _scheme_row(f"paillier packed ({key_bits}-bit)", pai, lr, xb, slow, pai_size, warmup_samples=8),
        _tutorial_logreg(lr, xb, 20 if quick else 60, slow),
    ]
    ours, tut = lr_rows[2], lr_rows[4]
    lr_summary = {
        "ckks_server_ms_per_sample": ours["server_ms_per_sample"],
        "server_speedup_vs_tutorial": tut["server_ms_per_sample"] / ours["server_ms_per_sample"],
        "e2e_speedup_vs_tutorial": tut["e2e_ms_per_sample"] / ours["e2e_ms_per_sample"],
        "ckks_agreement_with_plaintext": ours["agreement"],
        "public_context_bytes": len(ckks_lr.public_context_bytes()),
        "ckks_params": ckks_lr.params,
    }

    # --- MLP, digits ------------------------------------------------------------------------------
    ckks_mlp = CKKS.for_model(mlp)
    mlp_rows = [
        _scheme_row("plain", Plain(), mlp, xd, repeats),
        _scheme_row("masked (2 parties)", Masked(2, key=jax.random.key(1)), mlp, xd, repeats),
        _scheme_row("ckks (batch-packed)", ckks_mlp, mlp, xd, repeats, lambda e: len(ckks_mlp.serialize(e))),
    ]
    # Accuracy of the encrypted predictions against the labels vs the float (sklearn) model.
    logits = ckks_mlp.decode(models.encode_model(mlp, ckks_mlp)(ckks_mlp.encode(xd)))
    mlp_summary = {
        "ckks_server_ms_per_sample": mlp_rows[2]["server_ms_per_sample"],
        "ckks_accuracy": float(np.mean(mlp.labels(logits) == yd)),
        "float_accuracy": float(np.mean(estd.predict(xd) == yd)),
        "public_context_bytes": len(ckks_mlp.public_context_bytes()),
        "ckks_params": ckks_mlp.params,
    }
    mlp_summary["accuracy_delta_points"] = 100 * (mlp_summary["ckks_accuracy"] - mlp_summary["float_accuracy"])

    # --- Paillier aggregation ---------------------------------------------------------------------
    agg = _paillier_aggregation(key_bits, 10_000, 1000 if quick else 2000, slow)
    agg_summary = {
        "ciphertext_reduction": agg[1]["ciphertexts_for_10k"] / agg[0]["ciphertexts_for_10k"],
        "speedup_encrypt_sum_decrypt": agg[1]["us_per_value"] / agg[0]["us_per_value"],
        "key_bits": key_bits,
    }

    cols = ["scheme", "samples", "server_ms_per_sample", "e2e_ms_per_sample", "agreement", "max_abs_err", "input_bytes",
            "repeats"]
    table = (
        "## Logistic regression, breast cancer (569 samples)\n\n" + markdown_table(lr_rows, cols)
        + "\n" + "\n".join(f"- {k}: {v}" for k, v in lr_summary.items() if k != "ckks_params")
        + "\n\n## MLP 64-32-10, digits (1797 samples)\n\n" + markdown_table(mlp_rows, cols)
        + "\n" + "\n".join(f"- {k}: {v}" for k, v in mlp_summary.items() if k != "ckks_params")
        + "\n\n## Paillier aggregation of 10,000 values\n\n"
        + markdown_table(agg, ["scheme", "values", "ciphertexts_for_10k", "slots_per_ciphertext", "us_per_value", "abs_err",
                               "repeats", "note"])
        + "\n" + "\n".join(f"- {k}: {v}" for k, v in agg_summary.items())
        + f"\n\nTutorial baseline: {tut['note']}. Machine: {__import__('os').cpu_count()} CPUs.\n"
        + "Times: median ± interquartile range of `repeats` runs after a warm-up; ratios of medians.\n"
    )
    payload = {"quick": quick, "logreg": {"rows": lr_rows, "summary": lr_summary}, "mlp": {"rows": mlp_rows, "summary": mlp_summary},
               "paillier_aggregation": {"rows": agg, "summary": agg_summary}}
    write("he", payload, table)
    print(table)
    return payload


if __name__ == "__main__":
    main()
