"""Chain and audit costs of EDIL's proofs: gas of the PoAI/PoA contracts and Freivalds vs recompute.

    python -m benchmarks.chain [--quick]

Writes ``benchmarks/results/chain.json`` and ``benchmarks/results/chain.md``. Gas is measured on
the in-process EVM (py-evm) at the contracts' compile target (cancun); the inclusion check is also
measured under prague, whose EIP-7623 calldata floor prices proof-heavy calls higher. Times are
medians, with their interquartile range (``*_iqr_ms``), of all timed runs of three interleaved
rounds (each after 2 warm-up runs); the audit/recompute ratios are ratios of medians.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks._common import parser, sample, summarize, timed, with_spread, write
from edil.hazmat import ring
from edil.proofs import (
    Chain,
    EpochBatch,
    MerkleTree,
    Transcript,
    commit_bytes,
    freivalds_audit,
    sign_availability,
)
from edil.proofs._hashing import keccak256

TARGETS = {
    "post_root_max_gas": 80_000,
    "inclusion_depth17_gas_above_base": 15_000,
    "claim_7_epochs_3_sigs_gas": 150_000,
    "freivalds_to_recompute_ratio": 0.10,
}


def _account(label: str):
    from eth_account import Account

    return Account.from_key(keccak256(b"edil-bench/" + label.encode()))


def _setup(fork: str):
    chain = Chain.in_process(fork=fork)
    dep = chain.deploy(epoch_length=3600)
    node = _account("node")
    oracles = [_account(f"oracle-{i}") for i in range(3)]
    chain.fund(node.address, 10**19)
    dep.admit_node(node.address)
    for o in oracles:
        dep.admit_oracle(o.address)
    dep.set_quorum(3)
    dep.advance_to_epoch(20)
    return chain, dep, node, oracles


def _transcripts(node: str, epoch: int, n: int) -> list[Transcript]:
    params, model = commit_bytes(b"masked"), commit_bytes(b"model")
    return [
        Transcript(i.to_bytes(32, "big"), epoch, node, params, model, commit_bytes(b"in%d" % i),
                   commit_bytes(b"out%d" % i), 1797 * 64 * 128, 1_700_000_000_000 + i, 1_700_000_000_100 + i)
        for i in range(n)
    ]


def bench_gas(sizes: list[int]) -> dict[str, Any]:
    chain, dep, node, oracles = _setup("cancun")
    post: dict[str, int] = {}
    batches: dict[int, EpochBatch] = {}
    for epoch, n in enumerate(sizes, start=1):
        batch = EpochBatch(_transcripts(node.address, epoch, n), dep.poai_domain)
        batches[n] = batch
        post[str(n)] = dep.post_batch(node, batch).gas_used
    biggest = batches[max(sizes)]
    idx = biggest.task_count - 1
    proof = biggest.proof(idx)
    fn = dep.verifier.functions.verifyInclusion(node.address, biggest.epoch, biggest.digest(idx), idx,
                                                list(proof.siblings))
    if not dep.chain.call(fn):
        raise RuntimeError("inclusion check failed in the benchmark")
    inclusion = chain.transact(fn, node).gas_used

    epochs = list(range(10, 17))
    avail = [255, 250, 128, 255, 0, 200, 255]
    sigs = [sign_availability(o, dep.ledger_domain, node.address, epochs, avail) for o in oracles]
    claim = dep.claim_availability(node, epochs, avail, sigs).gas_used
    return {"post_root_gas": post, "inclusion_depth": proof.depth, "inclusion_gas": inclusion,
            "claim_7_epochs_3_sigs_gas": claim}


def bench_inclusion_prague(n: int) -> dict[str, int]:
    chain, dep, node, _ = _setup("prague")
    leaves = [commit_bytes(b"%d" % i) for i in range(n)]
    tree = MerkleTree(leaves)
    dep.post_epoch_root(node, 1, tree.root, n, 1)
    proof = tree.proof(n - 1)
    fn = dep.verifier.functions.verifyInclusion(node.address, 1, leaves[-1], n - 1, list(proof.siblings))
    return {"depth": proof.depth, "gas": chain.transact(fn, node).gas_used}


def bench_freivalds(reps: int) -> dict[str, Any]:
    import jax

    m, p, n, k = 1797, 64, 128, 20
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**64, (m, p), dtype=np.uint64)
    b = rng.integers(0, 2**64, (p, n), dtype=np.uint64)
    with jax.enable_x64(True):
        aj, bj = ring.asarray(a), ring.asarray(b)
        cj = ring.matmul(aj, bj).block_until_ready()
    if not np.array_equal(ring.to_numpy(cj), ring.matmul_reference(a, b)):
        raise RuntimeError("ring.matmul disagrees with the reference")
    seed = bytes(32)
    # Interleave the measurements so that load from other processes hits them alike; pool the runs.
    recompute: list[float] = []
    audit: list[float] = []
    reference: list[float] = []
    for _ in range(3):
        recompute += sample(lambda: ring.matmul(aj, bj).block_until_ready(), repeats=reps, warmup=2)
        audit += sample(lambda: freivalds_audit(aj, bj, cj, seed=seed, rounds=k), repeats=reps, warmup=2)
        reference += sample(lambda: ring.matmul_reference(a, b), repeats=max(3, reps // 5), warmup=2)
    t_re, t_au, t_ref = summarize(recompute), summarize(audit), summarize(reference)
    return {
        "shape": [m, p, n], "rounds": k,
        **timed("recompute_ring_matmul_ms", t_re), **timed("audit_ms", t_au),
        **timed("recompute_numpy_reference_ms", t_ref),
        "ratio_vs_ring_matmul": t_au["median_s"] / t_re["median_s"],
        "ratio_vs_numpy_reference": t_au["median_s"] / t_ref["median_s"],
        "flop_ratio": (2 * k * m * (n + p) + 6 * k * p * n) / (6 * m * p * n),
        "repeats": t_au["repeats"], "reference_repeats": t_ref["repeats"],
    }


def _markdown(r: dict[str, Any]) -> str:
    g, f = r["gas"], r["freivalds"]
    rows = [
        ("Post epoch root, 1 / 1,000 / 100,000 transcripts (gas)",
         " / ".join(f"{v:,}" for v in g["post_root_gas"].values()), "<= 80,000, constant"),
        (f"Inclusion check, depth {g['inclusion_depth']}, gas above 21,000 (cancun)",
         f"{g['inclusion_gas'] - 21_000:,}", "<= 15,000"),
        (f"Inclusion check, depth {r['inclusion_prague']['depth']}, gas above 21,000 (prague, EIP-7623 floor)",
         f"{r['inclusion_prague']['gas'] - 21_000:,}", "(informative)"),
        ("Availability claim, 7 epochs, 3 oracle signatures (gas)", f"{g['claim_7_epochs_3_sigs_gas']:,}", "<= 150,000"),
        (f"Freivalds k={f['rounds']} on {f['shape'][0]}x{f['shape'][1]} @ {f['shape'][1]}x{f['shape'][2]} (ms, "
         f"median ± IQR of {f['repeats']} runs)", with_spread(f["audit_ms"], f["audit_iqr_ms"], ".3f"), ""),
        (f"Recompute with ring.matmul (ms, median ± IQR of {f['repeats']} runs)",
         with_spread(f["recompute_ring_matmul_ms"], f["recompute_ring_matmul_iqr_ms"], ".3f"), ""),
        (f"Recompute with the numpy uint64 reference (ms, median ± IQR of {f['reference_repeats']}"
         " runs)", with_spread(f["recompute_numpy_reference_ms"], f["recompute_numpy_reference_iqr_ms"], ".3f"), ""),
        ("Audit / recompute (ring.matmul)", f"{f['ratio_vs_ring_matmul']:.1%}", "<= 10%"),
        ("Audit / recompute (numpy uint64 reference)", f"{f['ratio_vs_numpy_reference']:.1%}", ""),
        ("Audit / recompute in float64 flops", f"{f['flop_ratio']:.1%}", ""),
    ]
    lines = ["| measure | value | target |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser(__doc__ or "").parse_args(argv)
    sizes = [1, 1_000, 100_000]
    result: dict[str, Any] = {
        "quick": args.quick,
        "targets": TARGETS,
        "gas": bench_gas(sizes),
        "inclusion_prague": bench_inclusion_prague(100_000),
        "freivalds": bench_freivalds(10 if args.quick else 50),
    }
    g = result["gas"]
    result["met"] = {
        "post_root_max_gas": max(g["post_root_gas"].values()) <= TARGETS["post_root_max_gas"],
        "post_root_constant": max(g["post_root_gas"].values()) - min(g["post_root_gas"].values()) <= 128,
        "inclusion_depth17_gas_above_base": g["inclusion_gas"] - 21_000 <= TARGETS["inclusion_depth17_gas_above_base"],
        "claim_7_epochs_3_sigs_gas": g["claim_7_epochs_3_sigs_gas"] <= TARGETS["claim_7_epochs_3_sigs_gas"],
        "freivalds_to_recompute_ratio": result["freivalds"]["ratio_vs_ring_matmul"]
        <= TARGETS["freivalds_to_recompute_ratio"],
    }
    write("chain", result, _markdown(result))
    print(_markdown(result))
    return result


if __name__ == "__main__":
    main()
