"""The end-to-end demo on embedded defaults (``make demo`` / ``edil demo``)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

Row = dict[str, Any]


def _digits_mlp(hidden: int = 128, degree: int = 4) -> tuple[Any, Any, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    from edil import models

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_train, _, y_train, _ = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=1e-2, max_iter=300, random_state=0).fit(x_train, y_train)
    model = models.from_sklearn(est, degree=degree, calibration=x_train)
    return est, model, x, y, x_train


def masked_rows(print_fn: Callable[[str], None] = print) -> list[Row]:
    """Private inference of a digits MLP under Masked (3 parties) on all 1797 samples."""
    import jax

    from edil import Masked, models

    est, model, x, y, _ = _digits_mlp()
    change = models.accuracy_change(est, model, x, y)
    act = model.approximations[0]
    print_fn(
        f"MLP 64-128-10 trained on 75% of digits; ReLU -> degree-{act.degree} least squares on "
        f"[{act.interval[0]:.2f}, {act.interval[1]:.2f}] (max error {act.max_error:.3f}); "
        f"float accuracy {change['float_accuracy']:.4f}, polynomial model {change['model_accuracy']:.4f}"
    )
    rows: list[Row] = []
    t0 = time.perf_counter()
    plain_pred = est.predict(x)
    rows.append({"scheme": "plaintext (sklearn)", "workload": "mlp/digits", "samples": len(x),
                 "accuracy": float(np.mean(plain_pred == y)), "seconds": time.perf_counter() - t0, "bytes": 0})
    for private in (False, True):
        scheme = Masked(3, key=jax.random.key(2026))
        enc_model = models.encode_model(model, scheme, private_weights=private)
        enc_model.infer(x)  # compile for this batch shape once, outside the timing
        scheme.stats.reset()
        t0 = time.perf_counter()
        pred = enc_model.predict(x)
        seconds = time.perf_counter() - t0
        rows.append({
            "scheme": "masked n=3" + (" (model shared)" if private else ""),
            "workload": "mlp/digits", "samples": len(x),
            "accuracy": float(np.mean(pred == y)), "seconds": seconds,
            "bytes": scheme.stats.bytes_opened,
        })
    return rows


def format_table(rows: list[Row]) -> str:
    cols = ["scheme", "workload", "samples", "accuracy", "seconds", "bytes"]
    widths = {c: max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in cols}
    line = "  ".join(c.ljust(widths[c]) for c in cols)
    out = [line, "-" * len(line)]
    out += ["  ".join(_fmt(r.get(c, "")).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        return " / ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int) and v >= 10_000:
        return f"{v / 1e6:.2f} MB"
    return str(v)


def run_demo(
    print_fn: Callable[[str], None] = print,
    *,
    with_masked: bool = True,
    with_he: bool = True,
    with_federated: bool = True,
    with_runtime: bool = True,
    runtime_options: dict[str, Any] | None = None,
) -> list[Row]:
    """Every step of the demo, printed as it goes; returns the summary rows.

    Args:
        runtime_options: keyword arguments of :func:`edil.app.run_runtime_demo`
            (``chain_url``, ``chain_keys``, ``executor``, ``ray_address``, ...).
    """
    from tqdm import tqdm

    say = tqdm.write if print_fn is print else print_fn  # keep the progress bars intact under printed lines
    steps: list[tuple[str, Callable[[], list[Row]]]] = []
    if with_masked:
        steps.append(("masked inference", lambda: masked_rows(say)))
    if with_he:
        from edil.app._he_demo import run_he_demo

        steps.append(("homomorphic inference", lambda: run_he_demo(say)))
    if with_federated:
        from edil.app._federated_demo import run_federated_demo

        steps.append(("federated training", lambda: run_federated_demo(say)))
    if with_runtime:
        from edil.app._runtime_demo import run_runtime_demo

        steps.append(("edge runtime + chain", lambda: run_runtime_demo(say, **(runtime_options or {}))))
    rows: list[Row] = []
    for name, step in tqdm(steps, desc="EDIL demo", unit="step", disable=None):  # bars in terminals; lines in logs
        say(f"\n== {name} ==")
        rows += step()
    say("\n" + format_table(rows))
    return rows
