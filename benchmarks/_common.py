"""Timing and reporting helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(os.environ.get("EDIL_BENCH_DIR", Path(__file__).resolve().parent / "results"))


UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6}


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and spread (seconds) of timed repetitions.

    Quartiles are linear-interpolated (numpy's default), so ``iqr_s`` is the interquartile range
    ``q3_s - q1_s``; with 3 repetitions it is half the range.
    """
    ts = sorted(float(t) for t in times)
    if not ts:
        raise ValueError("no timed repetitions")
    q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) > 1 else (ts[0], ts[0], ts[0])
    return {"median_s": statistics.median(ts), "min_s": ts[0], "max_s": ts[-1], "q1_s": q1, "q3_s": q3,
            "iqr_s": q3 - q1, "repeats": len(ts)}


def sample(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Run ``fn`` ``warmup`` times, then ``repeats`` timed times; the timed durations in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def measure(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times, then ``repeats`` timed times; median and spread in seconds."""
    return summarize(sample(fn, repeats=repeats, warmup=warmup))


def measure_steps(steps: Sequence[tuple[str, Callable[[Any], Any]]], *, repeats: int = 5, warmup: int = 1,
                  first: Any = None) -> tuple[dict[str, dict[str, float]], Any]:
    """Time a pipeline whose steps each take the previous step's result (the first takes ``first``).

    The whole pipeline runs ``warmup`` times untimed, then ``repeats`` times with every step timed.
    Returns a :func:`summarize` dict per step name, plus ``"total"`` (the per-repetition sum of the
    steps), and the last repetition's final result.
    """
    def once() -> tuple[dict[str, float], Any]:
        out, times = first, {}
        for name, step in steps:
            t0 = time.perf_counter()
            out = step(out)
            times[name] = time.perf_counter() - t0
        return times, out

    for _ in range(warmup):
        once()
    runs, out = [], None
    for _ in range(repeats):
        times, out = once()
        runs.append(times)
    result = {name: summarize([r[name] for r in runs]) for name, _ in steps}
    result["total"] = summarize([sum(r.values()) for r in runs])
    return result, out


def spread_key(key: str) -> str | None:
    """The column holding the spread of timed column ``key``: ``iqr`` goes before the unit
    (``audit_ms`` -> ``audit_iqr_ms``, ``ms`` -> ``iqr_ms``, ``e2e_ms_per_sample`` ->
    ``e2e_iqr_ms_per_sample``); ``None`` when ``key`` names no time unit."""
    parts = key.split("_")
    for i, part in enumerate(parts):
        if part in UNITS:
            return "_".join(parts[:i] + ["iqr"] + parts[i:])
    return None


def timed(key: str, t: dict[str, float], *, per: float = 1.0, scale: float = 1.0) -> dict[str, float]:
    """``{key: median, spread_key(key): iqr}`` of a :func:`summarize` dict, in the unit ``key``
    names (s, ms or us), multiplied by ``scale / per`` (``per``: e.g. samples, for per-sample times)."""
    skey = spread_key(key)
    if skey is None:
        raise ValueError(f"{key!r} names no time unit ({', '.join(UNITS)})")
    unit = key.split("_")[skey.split("_").index("iqr")]
    f = UNITS[unit] * scale / per
    return {key: t["median_s"] * f, skey: t["iqr_s"] * f}


def with_spread(value: float, spread: float, fmt: str = ".4g") -> str:
    """``"12.3 ± 0.41"``: a median and its interquartile range (2 significant digits), for Markdown cells."""
    return f"{value:{fmt}} ± {spread:.0f}" if abs(spread) >= 100 else f"{value:{fmt}} ± {spread:.2g}"


def environment() -> dict[str, Any]:
    import jax
    import numpy as np

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
        "numpy": np.__version__,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def markdown_table(rows: list[dict[str, Any]], columns: list[str], *, spread: bool = True) -> str:
    """A Markdown table of ``rows``; with ``spread``, a timed column ``X`` whose row also has
    ``spread_key(X)`` shows as ``median ± iqr``."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    def cell(r: dict[str, Any], c: str) -> str:
        v, skey = r.get(c, ""), spread_key(c) if spread else None
        if skey is not None and isinstance(r.get(skey), int | float) and isinstance(v, int | float) and math.isfinite(v):
            return with_spread(v, r[skey])
        return fmt(v)

    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(cell(r, c) for c in columns) + " |\n" for r in rows)


def write(name: str, payload: dict[str, Any], table: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "environment": environment(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=float))
    (RESULTS / f"{name}.md").write_text(f"# {name}\n\n{table}")
    return RESULTS / f"{name}.json"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer repetitions, smaller extra shapes")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repetitions after a warm-up (each benchmark's default: 5-7, quick 3)")
    return p
