"""Chain and audit costs of EDIL's proofs: gas of the PoAI/PoA contracts and Freivalds vs recompute.

Gas measured (py-evm; the aggregate epoch root also on anvil when the npm binary is installed):
posting an epoch root (the root alone: the node declares no figure), recording an
audit attestation (the oracles' recounted task count and work units with the verdict, 3 oracle
signatures; a pass, and a failure that voids the epoch), claiming 7 epochs of availability with 3
signatures (the ledger reads the verifier's voided epochs), and forfeiting a voided epoch's claim.

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
    AuditAttestation,
    Chain,
    EpochBatch,
    MerkleTree,
    Transcript,
    attest_audit,
    commit_bytes,
    freivalds_audit,
    keccak256,
    sign_audit,
    sign_availability,
    sign_transcript,
)

TARGETS = {
    "post_root_max_gas": 80_000,
    "inclusion_depth17_gas_above_base": 15_000,
    "record_audit_3_sigs_gas": 100_000,
    "claim_7_epochs_3_sigs_gas": 150_000,
    "freivalds_to_recompute_ratio": 0.10,
    "escrow_settle_gas": 80_000,
    "post_aggregate_max_gas": 60_000,
}


def _account(label: str):
    from eth_account import Account

    return Account.from_key(keccak256(b"edil-bench/" + label.encode()))


def _setup(fork: str, chain: Chain | None = None):
    chain = Chain.in_process(fork=fork) if chain is None else chain
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


def _audit(dep, oracles, batch: EpochBatch, signed, passed: bool) -> int:
    """Gas of recording an audit of ``batch`` attested by every oracle (each recounts it first)."""
    count, work = (batch.task_count, batch.work_units) if passed else (0, 0)
    att = AuditAttestation(batch.node, batch.epoch, batch.root, count, work, passed, commit_bytes(b"report"))
    return dep.record_audit(att, [attest_audit(o, dep.poai_domain, att, signed) for o in oracles]).gas_used


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

    # Audits of small signed batches (the oracles recount every signature; gas does not depend on size).
    audited = {}
    for epoch, passed in ((8, True), (9, False)):
        signed = [sign_transcript(t, node, dep.poai_domain) for t in _transcripts(node.address, epoch, 8)]
        batch = EpochBatch(signed, dep.poai_domain)
        dep.post_batch(node, batch)
        chain.mine()
        audited[passed] = _audit(dep, oracles, batch, signed, passed)

    epochs = list(range(10, 17))
    avail = [255, 250, 128, 255, 0, 200, 255]
    sigs = [sign_availability(o, dep.ledger_domain, node.address, epochs, avail) for o in oracles]
    claim = dep.claim_availability(node, epochs, avail, sigs).gas_used
    # An epoch claimed before its audit fails: the failed audit lets anyone take its availability back.
    forfeit_epoch = 17
    signed = [sign_transcript(t, node, dep.poai_domain) for t in _transcripts(node.address, forfeit_epoch, 2)]
    batch = EpochBatch(signed, dep.poai_domain)
    dep.post_batch(node, batch)
    sigs = [sign_availability(o, dep.ledger_domain, node.address, [forfeit_epoch], [255]) for o in oracles]
    dep.claim_availability(node, [forfeit_epoch], [255], sigs)
    _audit(dep, oracles, batch, signed, False)
    forfeit = dep.forfeit_availability(node.address, [forfeit_epoch]).gas_used
    if dep.earned_availability(node.address, forfeit_epoch) != 0:
        raise RuntimeError("a voided epoch still earns availability in the benchmark")
    return {"post_root_gas": post, "inclusion_depth": proof.depth, "inclusion_gas": inclusion,
            "record_audit_pass_3_sigs_gas": audited[True], "record_audit_fail_3_sigs_gas": audited[False],
            "claim_7_epochs_3_sigs_gas": claim, "forfeit_1_epoch_gas": forfeit}


def bench_economy_gas() -> dict[str, int]:
    """Gas of the economy: a 3-node job's deposit and settlements, a refund, stake and slash, and
    an availability claim with a 3-of-5 oracle quorum followed by its reward registration and payment."""
    chain = Chain.in_process()
    dep = chain.deploy(epoch_length=3600)
    nodes = [_account(f"econ-node-{i}") for i in range(3)]
    oracles = [_account(f"econ-oracle-{i}") for i in range(5)]
    client = _account("econ-client")
    for acct in (*nodes, client):
        chain.fund(acct.address, 10**19)
    for n in nodes:
        dep.admit_node(n.address)
        dep.mint(n.address, 1)  # nodes that hold tokens already (a first payment costs ~17k more)
    for o in oracles:
        dep.admit_oracle(o.address)
    dep.set_quorum(3)
    dep.mint(client.address, 10**24)
    dep.advance_to_epoch(20)
    epoch = 20
    addrs = [n.address for n in nodes]
    create = dep.create_job(client, b"\x01" * 32, epoch, addrs, [100, 100, 100], 3 * 10**18, start_deadline=0).gas_used
    second_job = b"\x02" * 32
    dep.create_job(client, second_job, epoch, addrs[:1], [1], 10**18, start_deadline=0)
    stake = dep.stake_tokens(client, nodes[2].address, 10**18).gas_used
    dep.fund_reward_pool(client, epoch, 10**18)
    dep.advance_to_epoch(epoch + 1)
    report = commit_bytes(b"report")
    for node, units in zip(nodes, (100, 60, None), strict=True):
        root = keccak256(b"econ-root" + node.address.encode())
        dep.post_epoch_root(node, epoch, root)
        passed = units is not None
        att = AuditAttestation(node.address, epoch, root, 1 if passed else 0, units or 0, passed, report)
        dep.record_audit(att, [sign_audit(o, dep.poai_domain, node.address, epoch, root, att.task_count,
                                          att.work_units, passed, report) for o in oracles[:3]])
    slash = dep.slash(nodes[2].address, epoch).gas_used
    avail_sigs = [sign_availability(o, dep.ledger_domain, nodes[0].address, [epoch], [255]) for o in oracles[:3]]
    avail_claim = dep.claim_availability(nodes[0], [epoch], [255], avail_sigs).gas_used
    dep.claim_availability(nodes[1], [epoch], [128],
                           [sign_availability(o, dep.ledger_domain, nodes[1].address, [epoch], [128]) for o in oracles[:3]])
    register = dep.register_for_reward(nodes[0], epoch).gas_used
    dep.register_for_reward(nodes[1], epoch)
    dep.advance_to_epoch(epoch + 2)
    settle_full = dep.settle_job(b"\x01" * 32, nodes[0].address).gas_used
    settle_partial = dep.settle_job(b"\x01" * 32, nodes[1].address).gas_used
    settle_failed = dep.settle_job(b"\x01" * 32, nodes[2].address).gas_used
    # A second job of the same node and epoch: its range of the node's units lies past the first's.
    second = dep.settle_job(second_job, nodes[0].address).gas_used
    reward = dep.claim_reward(nodes[0].address, epoch).gas_used
    if dep.token_balance(dep.escrow.address) != 0:
        raise RuntimeError("the escrow still holds tokens after every slot was settled")
    return {"create_job_3_nodes_gas": create, "settle_paid_in_full_gas": settle_full,
            "settle_paid_and_returned_gas": settle_partial, "settle_failed_audit_gas": settle_failed,
            "settle_second_job_gas": second, "stake_gas": stake, "slash_gas": slash,
            "availability_claim_1_epoch_3_of_5_gas": avail_claim, "reward_register_gas": register,
            "reward_claim_gas": reward}


def bench_aggregate_gas(chain: Chain | None = None) -> dict[str, Any]:
    """Gas of one epoch's aggregate root posted by an oracle for 3, 30 and 300 nodes, and of a
    node's claim of its batch root from the 300-node aggregate (on ``chain``: default py-evm)."""
    from edil.proofs import AggregateEpoch

    chain, dep, node, oracles = _setup("cancun", chain)
    chain.fund(oracles[0].address, 10**19)
    post: dict[str, int] = {}
    claim = 0
    for k, n in enumerate((3, 30, 300), start=1):
        pairs = [(_account(f"agg-{n}-{i}").address, keccak256(b"root-%d-%d" % (n, i))) for i in range(n - 1)]
        agg = AggregateEpoch(k, [(node.address, keccak256(b"node-root-%d" % k)), *pairs])
        post[str(n)] = dep.post_aggregate_root(oracles[0], k, agg.root).gas_used
        if n == 300:
            root, proof = agg.proof(node.address)
            claim = dep.claim_epoch_root(node, oracles[0].address, k, root, proof).gas_used
    return {"post_aggregate_gas": post, "claim_root_from_300_gas": claim}


def bench_aggregate_gas_anvil() -> dict[str, Any]:
    """:func:`bench_aggregate_gas` on anvil (the pinned npm binary, on loopback): another EVM
    implementation's gas for the same transactions. ``{"unavailable": reason}`` without anvil."""
    try:
        from tests._chain_fixtures import ANVIL_KEYS, anvil_node
    except ImportError as exc:
        return {"unavailable": f"tests/_chain_fixtures.py cannot be imported: {exc}"}
    try:
        with anvil_node() as url:
            chain = Chain.from_url(url, ANVIL_KEYS)
            version = str(chain.w3.client_version)
            return {"client": version, **bench_aggregate_gas(chain)}
    except RuntimeError as exc:  # the binary is missing or does not start
        return {"unavailable": str(exc)}


def bench_inclusion_prague(n: int) -> dict[str, int]:
    chain, dep, node, _ = _setup("prague")
    leaves = [commit_bytes(b"%d" % i) for i in range(n)]
    tree = MerkleTree(leaves)
    dep.post_epoch_root(node, 1, tree.root)
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
    g, f, e = r["gas"], r["freivalds"], r["economy"]
    rows = [
        ("Post epoch root, 1 / 1,000 / 100,000 transcripts (gas)",
         " / ".join(f"{v:,}" for v in g["post_root_gas"].values()), "<= 80,000, constant"),
        (f"Inclusion check, depth {g['inclusion_depth']}, gas above 21,000 (cancun)",
         f"{g['inclusion_gas'] - 21_000:,}", "<= 15,000"),
        (f"Inclusion check, depth {r['inclusion_prague']['depth']}, gas above 21,000 (prague, EIP-7623 floor)",
         f"{r['inclusion_prague']['gas'] - 21_000:,}", "(informative)"),
        ("Audit record with attested figures, 3 oracle signatures: pass / fail (gas)",
         f"{g['record_audit_pass_3_sigs_gas']:,} / {g['record_audit_fail_3_sigs_gas']:,}", "<= 100,000"),
        ("Availability claim, 7 epochs, 3 oracle signatures (gas)", f"{g['claim_7_epochs_3_sigs_gas']:,}", "<= 150,000"),
        ("Forfeit the availability of 1 voided epoch (gas)", f"{g['forfeit_1_epoch_gas']:,}", "(informative)"),
        ("Post an epoch's aggregate root, 3 / 30 / 300 nodes (gas)",
         " / ".join(f"{v:,}" for v in r["aggregate"]["post_aggregate_gas"].values()), "<= 60,000, constant"),
        ("A node claims its batch root from the 300-node aggregate (gas)",
         f"{r['aggregate']['claim_root_from_300_gas']:,}", "(informative)"),
        ("Post an epoch's aggregate root, 3 / 30 / 300 nodes, on anvil (gas)",
         " / ".join(f"{v:,}" for v in r["aggregate_anvil"]["post_aggregate_gas"].values())
         if "post_aggregate_gas" in r["aggregate_anvil"] else "anvil unavailable", "<= 60,000, constant"),
        ("Escrow: deposit for a 3-node job (gas)", f"{e['create_job_3_nodes_gas']:,}", "(informative)"),
        ("Escrow: a node's payment claim, paid in full / part paid and part returned / failed audit (gas)",
         f"{e['settle_paid_in_full_gas']:,} / {e['settle_paid_and_returned_gas']:,} / {e['settle_failed_audit_gas']:,}",
         "<= 80,000"),
        ("Stake / slash after a failed audit (gas)", f"{e['stake_gas']:,} / {e['slash_gas']:,}", "(informative)"),
        ("Availability claim, 1 epoch, 3-of-5 oracle quorum (gas)", f"{e['availability_claim_1_epoch_3_of_5_gas']:,}",
         "(report)"),
        ("Availability reward: register / claim (gas)", f"{e['reward_register_gas']:,} / {e['reward_claim_gas']:,}",
         "(informative)"),
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
        "economy": bench_economy_gas(),
        "aggregate": bench_aggregate_gas(),
        "aggregate_anvil": bench_aggregate_gas_anvil(),
        "inclusion_prague": bench_inclusion_prague(100_000),
        "freivalds": bench_freivalds(10 if args.quick else 50),
    }
    g = result["gas"]
    result["met"] = {
        "post_root_max_gas": max(g["post_root_gas"].values()) <= TARGETS["post_root_max_gas"],
        "post_root_constant": max(g["post_root_gas"].values()) - min(g["post_root_gas"].values()) <= 128,
        "inclusion_depth17_gas_above_base": g["inclusion_gas"] - 21_000 <= TARGETS["inclusion_depth17_gas_above_base"],
        "record_audit_3_sigs_gas": max(g["record_audit_pass_3_sigs_gas"], g["record_audit_fail_3_sigs_gas"])
        <= TARGETS["record_audit_3_sigs_gas"],
        "claim_7_epochs_3_sigs_gas": g["claim_7_epochs_3_sigs_gas"] <= TARGETS["claim_7_epochs_3_sigs_gas"],
        "freivalds_to_recompute_ratio": result["freivalds"]["ratio_vs_ring_matmul"]
        <= TARGETS["freivalds_to_recompute_ratio"],
        "post_aggregate_max_gas": max(result["aggregate"]["post_aggregate_gas"].values()) <= TARGETS["post_aggregate_max_gas"],
        "escrow_settle_gas": max(
            result["economy"][k] for k in ("settle_paid_in_full_gas", "settle_paid_and_returned_gas", "settle_failed_audit_gas")
        )
        <= TARGETS["escrow_settle_gas"],
    }
    if "post_aggregate_gas" in result["aggregate_anvil"]:
        result["met"]["post_aggregate_max_gas_anvil"] = (
            max(result["aggregate_anvil"]["post_aggregate_gas"].values()) <= TARGETS["post_aggregate_max_gas"]
        )
    write("chain", result, _markdown(result))
    print(_markdown(result))
    return result


if __name__ == "__main__":
    main()
