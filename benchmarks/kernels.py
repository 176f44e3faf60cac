"""Ring matmul kernels and the work audit, side by side in one run.

Table 1, products: EDIL's Z_2^64 kernels (balanced int8 digits with int32 accumulation, and
float64 limbs), its Z_2^32 int8 kernel, XLA's naive uint64 dot, and float32 / float64 GEMMs of
the same shape (the yardsticks: ``*_vs_float32`` are ratios of medians to the float32 GEMM;
targets: Z_2^64 <= 6x, Z_2^32 <= 3x). ``edil_ring_ms`` is ``ring.matmul`` with the kernel its
rule picks (``kernel``).

Table 2, audits of a claimed ``C = A @ B``: recomputing it (``ring.matmul``), 20 rounds of
Freivalds over Z_2^64 (error <= 2^-20) and 48 (<= 2^-48), and the one-round audit modulo a random
prime (error < 2^-44, within the 2^-40 target), which also needs the high part ``H`` of the
integer product (``node_wide_ms``: what computing ``C`` and ``H`` together costs the node).
``one_round_pct_of_recompute`` is the audit's cost in percent of recomputing the product (target:
<= 5%). ``read_floor_ms`` is one jitted pass that only reads ``A``, ``B``, ``C`` and ``H`` (a sum
of each): no audit can be cheaper, since it must read every entry; ``one_round_vs_read_floor`` is
the audit's cost in such passes.

Table 3, the one-round audit against the inner dimension ``k`` (``m = n = 512``; 256 with
``--quick``): the audit and the read floor read ``8 (mk + kn + 3mn)`` bytes (``operands_mib``)
while recomputing costs ``O(mnk)``, so their share of the recompute time falls as ``k`` grows;
this table shows where the 5% target is met. The variants of tables 2 and 3 alternate round by
round in a rotating order (:func:`_alternating`).

Table 4, the epoch audit of one ``Masked`` transcript (a party of a 2-party session, one dense
layer whose product is the table's shape, run through the runtime's nodes; public weights: one
product with small weights, shared weights: the three local products of a Beaver triple):
replaying the party in full (recomputing its products) against replaying it with its committed
products, each checked in one round (:func:`edil.runtime._epochs.audit_masked_party`). Both
re-derive the party's view and dealer material, recompute the steps between products (here the
truncation) and hash every contribution, which they share.

Times are medians of 7 runs (3 with ``--quick``) after a warm-up, with their interquartile range
(``*_iqr_ms``); ratios are ratios of medians. Every product is checked bit-exact first.

Run: ``python -m benchmarks.kernels [--quick]``. Writes ``results/kernels.json`` and ``.md``.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import markdown_table, measure, parser, summarize, timed, write
from edil.hazmat import ring, ring32
from edil.proofs import freivalds_audit, matmul_audit_one_round

SEED = bytes(range(32))


def _alternating(fns: dict[str, Any], repeats: int) -> dict[str, dict[str, float]]:
    """Each of ``fns`` once as a warm-up, then ``repeats`` rounds of each once in turn; a
    :func:`summarize` dict per name.

    A busy machine weighs on every variant alike, and the order rotates from round to round: what
    runs right after a product finds the operands evicted from the caches by its temporaries, what
    runs after an audit finds them warm, and each variant takes every place equally often.
    """
    for fn in fns.values():
        fn()
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: summarize(ts) for name, ts in times.items()}


def _ring_claim(m: int, k: int, n: int, rng: np.random.Generator) -> tuple[jax.Array, ...]:
    a = ring.asarray(rng.integers(0, 1 << 64, size=(m, k), dtype=np.uint64))
    b = ring.asarray(rng.integers(0, 1 << 64, size=(k, n), dtype=np.uint64))
    c, h = ring.matmul_wide(a, b)
    return a, b, c, h


# The audit's floor: it must read every entry of A, B, C and H once.
_read = jax.jit(lambda *xs: [jnp.sum(x) for x in xs])


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
        a, b, c, h = _ring_claim(m, k, n, rng)
        freivalds_audit(a, b, c, seed=SEED, rounds=20)
        matmul_audit_one_round(a, b, c, h, seed=SEED)
        t = _alternating({
            "recompute": lambda: ring.matmul(a, b).block_until_ready(),
            "wide": lambda: jax.block_until_ready(ring.matmul_wide(a, b)),
            "freivalds20": lambda: freivalds_audit(a, b, c, seed=SEED, rounds=20),
            "freivalds48": lambda: freivalds_audit(a, b, c, seed=SEED, rounds=48),
            "one_round": lambda: matmul_audit_one_round(a, b, c, h, seed=SEED),
            "read_floor": lambda: jax.block_until_ready(_read(a, b, c, h)),
        }, repeats)
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
        "one_round_pct_of_recompute": 100 * t["one_round"]["median_s"] / rec,
        **timed("read_floor_ms", t["read_floor"]),
        "read_floor_pct_of_recompute": 100 * t["read_floor"]["median_s"] / rec,
        "one_round_vs_read_floor": t["one_round"]["median_s"] / t["read_floor"]["median_s"],
        "one_round_error_bound": "< 2^-44",
        "repeats": repeats,
        "timings": t,
    }


def _audit_sweep(m: int, k: int, n: int, rng: np.random.Generator, repeats: int) -> dict[str, Any]:
    """The one-round audit, the read floor and recomputation at one inner dimension ``k``, alternated."""
    with jax.enable_x64(True):
        a, b, c, h = _ring_claim(m, k, n, rng)
        matmul_audit_one_round(a, b, c, h, seed=SEED)
        t = _alternating({
            "recompute": lambda: ring.matmul(a, b).block_until_ready(),
            "one_round": lambda: matmul_audit_one_round(a, b, c, h, seed=SEED),
            "read_floor": lambda: jax.block_until_ready(_read(a, b, c, h)),
        }, repeats)
    rec, one, floor = (t[name]["median_s"] for name in ("recompute", "one_round", "read_floor"))
    return {
        "shape": f"{m}x{k} @ {k}x{n}",
        "k": k,
        "operands_mib": 8 * (m * k + k * n + 3 * m * n) / 2**20,
        **timed("recompute_ms", t["recompute"]),
        **timed("one_round_ms", t["one_round"]),
        **timed("read_floor_ms", t["read_floor"]),
        "one_round_pct_of_recompute": 100 * one / rec,
        "read_floor_pct_of_recompute": 100 * floor / rec,
        "one_round_vs_read_floor": one / floor,
        "repeats": repeats,
        "timings": t,
    }


def _epoch_audit(batch: int, d_in: int, d_out: int, rng: np.random.Generator, repeats: int, *, public: bool) -> dict[str, Any]:
    """Audit time of one Masked transcript: full replay against the one-round audit of its products."""
    from edil import Masked
    from edil import runtime as rt
    from edil.models import Dense, Sequential
    from edil.proofs import Eip712Domain, transcript_from_wire
    from edil.runtime import _wire
    from edil.runtime._epochs import audit_masked_party
    from edil.runtime._mpc_session import audit_party
    from edil.runtime._products import products_from_wire

    seeds = [bytes([0xE0 + i]) * 32 for i in range(2)]
    ex = rt.LocalExecutor()
    journal = rt.Journal(":memory:")
    sched = rt.Scheduler(ex, rt.StaticRegistry(rt.NodeIdentity.from_seed(s).address for s in seeds), journal,
                         identity=rt.CoordinatorIdentity.from_seed(b"coordinator-seed" * 2),
                         domain=Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "11" * 20), timeout_s=600)
    try:
        for s in seeds:
            sched.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities()))
        # Weights away from zero: none may fall below the fixed-point resolution.
        w = rng.choice([-1.0, 1.0], size=(d_in, d_out)) * rng.uniform(0.01, 0.1, size=(d_in, d_out))
        model = Sequential((Dense(w, rng.normal(size=d_out)),))
        x = rng.normal(size=(batch, d_in))
        scheme = Masked(2, key=jax.random.key(0))
        y = sched.run_masked(scheme, model, scheme.encode(x), model_public=public, check="none", job_id="epoch-audit")
        error = float(np.max(np.abs(scheme.decode(y) - model.forward(x))))
        jid = sched.status("epoch-audit").job_id
        res, spec = journal.result(jid), journal.job(jid).spec
        addr = res.nodes[0]
        t = transcript_from_wire(_wire.loads(journal.transcripts(addr, 0)[0][1])).transcript
        products = products_from_wire(_wire.loads(res.output)["products"][0])
        assert audit_party(spec, res.output, res.nodes, t) is None
        assert audit_masked_party(spec, res.output, res.nodes, t, seed=SEED) is None
        times = {
            "replay": measure(lambda: audit_party(spec, res.output, res.nodes, t), repeats=repeats),
            "one_round": measure(lambda: audit_masked_party(spec, res.output, res.nodes, t, seed=SEED), repeats=repeats),
        }
    finally:
        ex.close()
    return {
        "transcript": f"Masked n=2, x {batch}x{d_in} @ {'public' if public else 'shared'} W {d_in}x{d_out}",
        "products": len(products),
        **timed("full_replay_ms", times["replay"]),
        **timed("one_round_ms", times["one_round"]),
        "one_round_vs_replay": times["one_round"]["median_s"] / times["replay"]["median_s"],
        "max_abs_error": error,
        "repeats": repeats,
        "timings": times,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__ or "").parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    shapes = [(1797, 64, 128), (256, 256, 256)] if args.quick else [(1797, 64, 128), (1024, 512, 512), (4096, 512, 512)]
    rng = np.random.default_rng(0)
    rows = [_products(m, k, n, rng, repeats) for m, k, n in shapes]
    audits = [_audits(m, k, n, rng, repeats) for m, k, n in shapes[:2]]
    side = 256 if args.quick else 512
    sweep = [_audit_sweep(side, k, side, rng, repeats) for k in (side, 2 * side, 4 * side)]
    epoch_audits = [_epoch_audit(m, k, n, rng, repeats, public=public) for m, k, n in shapes[1:2] for public in (True, False)]
    cols = ["shape", "float32_ms", "z64_int8_ms", "z64_float64_limbs_ms", "z32_int8_ms", "jnp_uint64_ms",
            "z64_int8_vs_float32", "z64_float64_limbs_vs_float32", "z32_int8_vs_float32", "kernel", "bit_exact"]
    audit_cols = ["shape", "recompute_ms", "node_wide_ms", "freivalds20_ms", "freivalds48_ms", "one_round_ms",
                  "freivalds20_vs_recompute", "one_round_vs_recompute", "one_round_pct_of_recompute", "one_round_error_bound",
                  "read_floor_ms", "read_floor_pct_of_recompute", "one_round_vs_read_floor"]
    sweep_cols = ["shape", "k", "operands_mib", "recompute_ms", "one_round_ms", "read_floor_ms",
                  "one_round_pct_of_recompute", "read_floor_pct_of_recompute", "one_round_vs_read_floor"]
    epoch_cols = ["transcript", "products", "full_replay_ms", "one_round_ms", "one_round_vs_replay"]
    note = f"\nTimes: median ± interquartile range of {repeats} runs after a warm-up; ratios of medians.\n"
    sweep_note = ("\nRecompute, one-round audit and read floor alternate round by round, in a rotating order; medians ± "
                  f"interquartile range of {repeats} rounds after a warm-up; ratios of medians.\n")
    table = (markdown_table(rows, cols) + note + "\n## Audits of a ring product\n\n" + markdown_table(audits, audit_cols) + note
             + "\n## One-round audit against the inner dimension k\n\n" + markdown_table(sweep, sweep_cols) + sweep_note
             + "\n## Epoch audit of one Masked transcript\n\n" + markdown_table(epoch_audits, epoch_cols) + note)
    result = {"rows": rows, "audits": audits, "audit_sweep": sweep, "epoch_audits": epoch_audits}
    write("kernels", result, table)
    print(table)
    return result


if __name__ == "__main__":
    main()
