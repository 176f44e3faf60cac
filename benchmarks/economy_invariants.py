"""Long campaign of the economy's invariants: the Hypothesis state machine of
tests/_economy_machine.py (deposits, audits, settlements, refunds, stakes, unbonding, slashes,
availability reward pools and operator licence revocations on py-evm, checked against a
plain-Python model after every step) over many random runs.

    python -m benchmarks.economy_invariants [--runs 500] [--steps 25] [--workers 2] [--quick]
        [--max-seconds S]

Workers split the runs, each with fresh randomness (no example database), in batches of
``BATCH`` runs with a progress line on stderr after each; with ``--max-seconds`` a worker starts
no batch past that time, and the result says how many runs were made. A failure reports the
falsifying steps and the blob that replays it. Writes ``benchmarks/results/economy_invariants.json``
and ``.md``; exits 1 if an invariant failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
import traceback
from typing import Any

from benchmarks._common import write

#: Runs per batch: a worker reports progress (and checks its time budget) between batches.
BATCH = 10


def _campaign(job: tuple[int, int, float, int]) -> dict[str, Any]:
    runs, steps, max_seconds, worker = job
    from hypothesis import HealthCheck, settings
    from hypothesis.stateful import run_state_machine_as_test

    from tests._economy_machine import EconomyMachine

    start = time.perf_counter()
    failure = None
    done = 0
    while done < runs and failure is None and time.perf_counter() - start < max_seconds:
        batch = min(BATCH, runs - done)
        try:
            run_state_machine_as_test(
                EconomyMachine,
                settings=settings(
                    max_examples=batch,
                    stateful_step_count=steps,
                    deadline=None,
                    database=None,
                    print_blob=True,
                    suppress_health_check=list(HealthCheck),
                ),
            )
        except Exception:  # noqa: BLE001 - the falsifying example is the result
            failure = traceback.format_exc(limit=20)
        done += batch
        print(f"worker {worker}: {done}/{runs} runs, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return {"runs": done, "seconds": time.perf_counter() - start, "failure": failure}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=500, help="random runs in all (each up to --steps steps)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="20 runs")
    p.add_argument("--max-seconds", type=float, default=float("inf"), help="start no batch of runs after this long")
    args = p.parse_args(argv)
    runs = 20 if args.quick else args.runs
    workers = max(1, min(args.workers, runs))
    shares = [runs // workers + (1 if i < runs % workers else 0) for i in range(workers)]
    start = time.perf_counter()
    if workers == 1:
        parts = [_campaign((shares[0], args.steps, args.max_seconds, 0))]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_campaign, [(n, args.steps, args.max_seconds, i) for i, n in enumerate(shares)])
    failures = [p["failure"] for p in parts if p["failure"]]
    runs = sum(p["runs"] for p in parts)
    result = {
        "runs": runs,
        "steps_per_run": args.steps,
        "workers": workers,
        "seconds": time.perf_counter() - start,
        "failures": failures,
        "met": {"invariants_hold_over_500_runs": not failures and runs >= 500},
    }
    table = (
        "| measure | value | target |\n| --- | --- | --- |\n"
        f"| Random stateful runs (up to {args.steps} steps each) | {runs} | >= 500 |\n"
        f"| Runs that broke an invariant | {len(failures)} | 0 |\n"
        f"| Wall time (s), {workers} workers | {result['seconds']:.0f} | |\n"
    )
    write("economy_invariants", result, table)
    print(table)
    for f in failures:
        print(f, file=sys.stderr)
    if failures:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
