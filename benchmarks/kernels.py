"""Ring matmul kernel: EDIL's limb-split float64 GEMM vs XLA uint64 dot vs float64 dot.

Times are medians of 7 runs (3 with ``--quick``) after a warm-up, with their interquartile range
(``*_iqr_ms``); ratios are ratios of medians.

Run: ``python -m benchmarks.kernels [--quick]``. Writes ``results/kernels.json`` and ``.md``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import markdown_table, measure, parser, timed, write
from edil.hazmat import ring


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__ or "").parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    shapes = [(1797, 64, 128), (1024, 512, 512) if args.quick else (4096, 512, 512)]
    rows = []
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        naive = jax.jit(lambda a, b: a @ b)
        f64 = jax.jit(lambda a, b: a @ b)
        for m, k, n in shapes:
            a = jnp.asarray(rng.integers(0, 1 << 64, size=(m, k), dtype=np.uint64))
            b = jnp.asarray(rng.integers(0, 1 << 64, size=(k, n), dtype=np.uint64))
            af, bf = a.astype(jnp.float64), b.astype(jnp.float64)
            exact = bool(np.array_equal(np.asarray(ring.matmul(a, b)), np.asarray(naive(a, b))))
            t_ring = measure(lambda: ring.matmul(a, b).block_until_ready(), repeats=repeats)
            t_u64 = measure(lambda: naive(a, b).block_until_ready(), repeats=repeats)
            t_f64 = measure(lambda: f64(af, bf).block_until_ready(), repeats=repeats)
            rows.append({
                "shape": f"{m}x{k} @ {k}x{n}",
                **timed("edil_ring_ms", t_ring),
                **timed("jnp_uint64_ms", t_u64),
                **timed("float64_ms", t_f64),
                "speedup_vs_uint64": t_u64["median_s"] / t_ring["median_s"],
                "cost_vs_float64": t_ring["median_s"] / t_f64["median_s"],
                "bit_exact": exact,
                "repeats": repeats,
                "timings": {"ring": t_ring, "uint64": t_u64, "float64": t_f64},
            })
    cols = ["shape", "edil_ring_ms", "jnp_uint64_ms", "float64_ms", "speedup_vs_uint64", "cost_vs_float64", "bit_exact",
            "repeats"]
    table = markdown_table(rows, cols) + f"\nTimes: median ± interquartile range of {repeats} runs after a warm-up; ratios of medians.\n"
    write("kernels", {"rows": rows}, table)
    print(table)
    return {"rows": rows}


if __name__ == "__main__":
    main()
