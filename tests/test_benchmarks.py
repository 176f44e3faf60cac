"""Every benchmark the runner lists exists and takes the runner's arguments; the end-to-end one runs."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import MODULES


@pytest.mark.parametrize("name", MODULES)
def test_runner_can_call_each_benchmark(name: str) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    params = inspect.signature(module.main).parameters
    assert "argv" in params, f"benchmarks.{name}.main must accept the runner's argv"


def test_summarize_reports_median_and_interquartile_range() -> None:
    from benchmarks._common import summarize

    t = summarize([5.0, 1.0, 2.0, 4.0, 3.0])
    assert t["median_s"] == 3.0 and t["min_s"] == 1.0 and t["max_s"] == 5.0 and t["repeats"] == 5
    assert (t["q1_s"], t["q3_s"], t["iqr_s"]) == (2.0, 4.0, 2.0)
    assert summarize([0.5])["iqr_s"] == 0.0
    with pytest.raises(ValueError):
        summarize([])


def test_measure_times_after_warmup() -> None:
    from benchmarks._common import measure, measure_steps

    calls = []
    t = measure(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and t["repeats"] == 3 and t["q1_s"] <= t["median_s"] <= t["q3_s"]
    steps, out = measure_steps([("a", lambda v: v + 1), ("b", lambda v: v * 2)], repeats=3, first=1)
    assert out == 4 and set(steps) == {"a", "b", "total"} and steps["total"]["repeats"] == 3
    assert steps["total"]["median_s"] >= max(steps["a"]["min_s"], steps["b"]["min_s"])


def test_timed_columns_carry_their_spread() -> None:
    from benchmarks._common import markdown_table, spread_key, timed

    assert spread_key("ms") == "iqr_ms"
    assert spread_key("audit_ms") == "audit_iqr_ms"
    assert spread_key("e2e_ms_per_sample") == "e2e_iqr_ms_per_sample"
    assert spread_key("us_per_value") == "iqr_us_per_value"
    assert spread_key("speedup_vs_uint64") is None and spread_key("samples") is None
    t = {"median_s": 0.02, "iqr_s": 0.004}
    assert timed("round_s", t) == {"round_s": 0.02, "round_iqr_s": 0.004}
    assert timed("server_ms_per_sample", t, per=4) == pytest.approx({"server_ms_per_sample": 5.0,
                                                                    "server_iqr_ms_per_sample": 1.0})
    with pytest.raises(ValueError):
        timed("x_jax", t)
    table = markdown_table([{"name": "a", **timed("ms", t), "x_jax": 2.0}], ["name", "ms", "x_jax"])
    assert "| a | 20 ± 4 | 2 |" in table


@pytest.mark.slow
def test_the_end_to_end_benchmark_runs_and_its_audits_pass(tmp_path: Path) -> None:
    """The benchmark that drives the whole stack (runtime, chain, audits, heartbeats) still runs (quick mode, ~1 min)."""
    env = {**os.environ, "EDIL_BENCH_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.e2e", "--quick"], env=env, capture_output=True, text=True,
                          timeout=900, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "e2e.json").read_text())["rows"]
    assert len(rows) >= 10
    assert all(r["audits_passed"] is True for r in rows)
    for r in rows:  # every private scheme labels like the plaintext model (the federated row has no agreement)
        if r.get("agreement") not in (None, ""):
            assert r["agreement"] >= 0.99, r
