"""Ring matmul kernels and the work audit, side by side in one run.

Table 1, products: EDIL's Z_2^64 kernels (balanced int8 digits with int32 accumulation, and
float64 limbs), its Z_2^32 int8 kernel, XLA's naive uint64 dot, and float32 / float64 GEMMs of
the same shape (the yardsticks: ``*_vs_float32`` are ratios of medians to the float32 GEMM;
targets: Z_2^64 <= 6x, Z_2^32 <= 3x). ``edil_ring_ms`` is ``ring.matmul`` with the kernel its
rule picks (``kernel``).

Table 2, audits of a claimed ``C = A @ B``: recomputing it (``ring.matmul``), 20 rounds of
Freivalds over Z_2^64 (error <= 2^-20) and 48 (<= 2^-48, the one-round audit's bound), and the
one-round audit modulo a random prime (error < 2^-48), which also needs the high part ``H`` of the integer product (``node_wide_ms``: what
computing ``C`` and ``H`` together costs the node).

Times are medians of 7 runs (3 with ``--quick``) after a warm-up, with their interquartile range
(``*_iqr_ms``); ratios are ratios of medians. Every product is checked bit-exact first.

Run: ``python -m benchmarks.kernels [--quick]``. Writes ``results/kernels.json`` and ``.md``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import markdown_table, measure, parser, timed, write
from edil.hazmat import ring, ring32
from edil.proofs import freivalds_audit, matmul_audit_one_round

SEED = bytes(range(32))


def _products(m: int, k: int, n: int, rng: np.random.Generator, repeats: int) -> dict[str, Any]:
    with jax.enable_x64(True):
        naive = jax.jit(lambda a, b: a @ b)
        gemm = jax.jit(lambda a, b: a @ b)
        a = jnp.asarray(rng.integers(0, 1 << 64, size=(m, k), dtype=np.uint64))
        b = jnp.asarray(rng.integers(0, 1 << 64, size=(k, n), dtype=np.uint64))
        a32, b32 = a.astype(jnp.uint32), b.astype(jnp.uint32)
        af, bf = a.astype(jnp.float32), b.astype(jnp.float32)
        ad, bd = a.astype(jnp.float64), b.astype(jnp.float64)
        ref = np.asarray(naive(a, b))
        exact = all(np.array_equal(np.asarray(ring.matmul(a, b, kernel=kern)), ref) for kern in ring.KERNELS)
        exact = exact and np.array_equal(ring32.to_numpy(ring32.matmul(a32, b32)), ring32.matmul_reference(a32, b32))
        t = {
            "float32": measure(lambda: gemm(af, bf).block_until_ready(), repeats=repeats),
            "int8": measure(lambda: ring.matmul(a, b, kernel="int8").block_until_ready(), repeats=repeats),
            "float64_limbs": measure(lambda: ring.matmul(a, b, kernel="float64").block_until_ready(), repeats=repeats),
            "z32": measure(lambda: ring32.matmul(a32, b32).block_until_ready(), repeats=repeats),
            "auto": measure(lambda: ring.matmul(a, b).block_until_ready(), repeats=repeats),
            "float64": measure(lambda: gemm(ad, bd).block_until_ready(), repeats=repeats),
            "uint64": measure(lambda: naive(a, b).block_until_ready(), repeats=repeats),
        }
    f32 = t["float32"]["median_s"]
    return {
        "shape": f"{m}x{k} @ {k}x{n}",
        **timed("float32_ms", t["float32"]),
        **timed("z64_int8_ms", t["int8"]),
        **timed("z64_float64_limbs_ms", t["float64_limbs"]),
        **timed("z32_int8_ms", t["z32"]),
        **timed("edil_ring_ms", t["auto"]),
        **timed("float64_ms", t["float64"]),
        **timed("jnp_uint64_ms", t["uint64"]),
        "z64_int8_vs_float32": t["int8"]["median_s"] / f32,
        "z64_float64_limbs_vs_float32": t["float64_limbs"]["median_s"] / f32,
        "z32_int8_vs_float32": t["z32"]["median_s"] / f32,
        "speedup_vs_uint64": t["uint64"]["median_s"] / t["auto"]["median_s"],
        "cost_vs_float64": t["auto"]["median_s"] / t["float64"]["median_s"],
        "kernel": ring.kernel_for(m * k * n),
        "bit_exact": bool(exact),
        "repeats": repeats,
        "timings": t,
    }


def _audits(m: int, k: int, n: int, rng: np.random.Generator, repeats: int) -> dict[str, Any]:
    with jax.enable_x64(True):
        a = ring.asarray(rng.integers(0, 1 << 64, size=(m, k), dtype=np.uint64))
        b = ring.asarray(rng.integers(0, 1 << 64, size=(k, n), dtype=np.uint64))
        c, h = ring.matmul_wide(a, b)
        freivalds_audit(a, b, c, seed=SEED, rounds=20)
        matmul_audit_one_round(a, b, c, h, seed=SEED)
        t = {
            "recompute": measure(lambda: ring.matmul(a, b).block_until_ready(), repeats=repeats),
            "wide": measure(lambda: jax.block_until_ready(ring.matmul_wide(a, b)), repeats=repeats),
            "freivalds20": measure(lambda: freivalds_audit(a, b, c, seed=SEED, rounds=20), repeats=repeats),
            "freivalds48": measure(lambda: freivalds_audit(a, b, c, seed=SEED, rounds=48), repeats=repeats),
            "one_round": measure(lambda: matmul_audit_one_round(a, b, c, h, seed=SEED), repeats=repeats),
        }
    rec = t["recompute"]["median_s"]
    return {
        "shape": f"{m}x{k} @ {k}x{n}",
        **timed("recompute_ms", t["recompute"]),
        **timed("node_wide_ms", t["wide"]),
        **timed("freivalds20_ms", t["freivalds20"]),
        **timed("freivalds48_ms", t["freivalds48"]),
        **timed("one_round_ms", t["one_round"]),
        "freivalds20_vs_recompute": t["freivalds20"]["median_s"] / rec,
        "one_round_vs_recompute": t["one_round"]["median_s"] / rec,
        "repeats": repeats,
        "timings": t,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__ or "").parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    shapes = [(1797, 64, 128), (256, 256, 256)] if args.quick else [(1797, 64, 128), (1024, 512, 512), (4096, 512, 512)]
    rng = np.random.default_rng(0)
    rows = [_products(m, k, n, rng, repeats) for m, k, n in shapes]
    audits = [_audits(m, k, n, rng, repeats) for m, k, n in shapes[:2]]
    cols = ["shape", "float32_ms", "z64_int8_ms", "z64_float64_limbs_ms", "z32_int8_ms", "jnp_uint64_ms",
            "z64_int8_vs_float32", "z64_float64_limbs_vs_float32", "z32_int8_vs_float32", "kernel", "bit_exact"]
    audit_cols = ["shape", "recompute_ms", "node_wide_ms", "freivalds20_ms", "freivalds48_ms", "one_round_ms",
                  "freivalds20_vs_recompute", "one_round_vs_recompute"]
    note = f"\nTimes: median ± interquartile range of {repeats} runs after a warm-up; ratios of medians.\n"
    table = (markdown_table(rows, cols) + note + "\n## Audits of a ring product\n\n" + markdown_table(audits, audit_cols) + note)
    write("kernels", {"rows": rows, "audits": audits}, table)
    print(table)
    return {"rows": rows, "audits": audits}


if __name__ == "__main__":
    main()
