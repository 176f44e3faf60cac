"""Every workload under every scheme through the runtime and the chain, one epoch each.

Three edge nodes (local executor) behind the scheduler and an SQLite journal, the contracts on the
in-process EVM, two oracles (quorum 2). For each (workload, scheme) the tasks run in an epoch of
their own, which is then closed as in production: every node that worked posts its Merkle root,
the oracles audit up to 2 sampled transcripts per node (recomputation, Masked party replay, or
the masked-round sum check) and record the verdict, and every node claims its availability.

Per row:

* ``accuracy`` on the labels and ``agreement`` with the same model run in plaintext;
* ``batch_s`` (median of ``repeats`` runs after a warm-up run, with ``batch_iqr_s``), per-sample
  latency and throughput, client side included (encode, schedule, nodes, decode);
* ``bytes_moved``: sealed envelopes to and from the nodes; ``context_bytes``: the public
  context each HE task carries (keys); ``input_bytes``: the encoded input;
* ``proof_share``: the nodes' time committing (params, model, input, output) and signing PoAI
  transcripts, as a share of their compute + proof time;
* ``gas_epoch``: gas of closing the epoch (roots, audit records, availability claims) and
  ``gas_per_node``; a root costs the same whatever the epoch holds, so this does not grow with
  the workload; ``audit_s``: the oracles' audit time.

Workloads: logistic regression on breast cancer (569), the 64-32-10 MLP on digits (1797), the
square-activation CNN (conv 3x3x8 as one dense layer) on the 450 held-out digits, the learned
encoder (the owner ships 16-d embeddings, the node runs the head on them) on the held-out digits,
and federated training of that head (3 nodes, 25/50/25, secure aggregation, 5 rounds).

Run: ``python -m benchmarks.e2e [--quick]``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from eth_account import Account

from benchmarks._common import markdown_table, parser, write
from edil import CKKS, Masked, Paillier, models
from edil import federated as fed
from edil import runtime as rt
from edil.app import breast_cancer_logreg, digits_mlp
from edil.proofs import Chain
from edil.runtime import EPOCH_LENGTH_S, beat_through_epoch, make_oracles


class Bench:
    """The chain, the nodes and the scheduler shared by every row."""

    def __init__(self) -> None:
        self.chain = Chain.in_process()
        self.dep = self.chain.deploy(epoch_length=EPOCH_LENGTH_S)
        self.oracles = [Account.from_key(bytes([0xA0 + i]) * 32) for i in range(2)]
        for o in self.oracles:
            self.dep.admit_oracle(o.address)
        self.dep.set_quorum(2)
        seeds = [bytes([0x10 + i]) * 32 for i in range(3)]
        self.ids = [rt.NodeIdentity.from_seed(s) for s in seeds]
        for i in self.ids:
            self.dep.admit_node(i.address)
            self.chain.fund(i.address, 10**18)
        self.journal = rt.Journal(":memory:")
        self.ex = rt.LocalExecutor()
        self.sched = rt.Scheduler(
            self.ex, rt.ChainRegistry(self.dep), self.journal, identity=rt.CoordinatorIdentity.from_seed(b"e2e-coordinator!" * 2),
            domain=self.dep.poai_domain, epoch=self.dep.current_epoch, timeout_s=600.0,
        )
        # dev_clock: close_epoch moves the development chain's clock and asks each node to beat at the chain's time.
        self.cards = [self.sched.launch(rt.NodeConfig(seed=s, capabilities=rt.Capabilities(), dev_clock=True)) for s in seeds]

    def node_times(self) -> tuple[float, float]:
        nodes = [self.ex.node(c.address) for c in self.cards]
        return sum(n.compute_s for n in nodes), sum(n.proof_s for n in nodes)

    def close_epoch(self, epoch: int) -> dict[str, Any]:
        """Roots, audits and availability claims for ``epoch``; gas and audit time."""
        dep, chain = self.dep, self.chain
        dep.advance_to_epoch(epoch + 1)
        start = len(chain.gas_log)
        batches = [b for i in self.ids if (b := rt.close_epoch(dep, self.journal, i.chain_key, i.address, epoch)) is not None]
        chain.mine()
        t0 = time.perf_counter()
        reports = [rt.audit_epoch(dep, self.journal, b, [o.key for o in self.oracles]) for b in batches]
        audit_s = time.perf_counter() - t0
        oracles = make_oracles(dep, [o.key for o in self.oracles], self.cards, registry_ttl_s=60)
        beat_through_epoch(self.ex, self.cards, oracles, dep, epoch)
        for ident in self.ids:
            rt.settle_availability(dep, Account.from_key(ident.chain_key), [epoch], oracles)
        gas = sum(g for _, _, g in chain.gas_log[start:])
        return {
            "gas_epoch": gas, "gas_per_node": gas / len(self.ids), "audit_s": audit_s,
            "audits_passed": all(r.passed for r in reports), "tasks": sum(b.task_count for b in batches),
        }


def _digits_cnn(quick: bool) -> tuple[Any, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    model = models.train_cnn(jax.random.key(0), x_tr, y_tr, in_shape=(8, 8), channels=8, steps=200 if quick else 400)
    return model, x_te, y_te


def _encoder_head(quick: bool) -> tuple[Any, Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    enc = fed.DomainEncoder.train(x_tr, embed_dim=16, hidden=64, epochs=300 if quick else 1500, key=jax.random.key(0))
    z_tr = enc.encode(x_tr)
    head = fed.train_head(z_tr, y_tr, n_classes=10, epochs=200, lr=1.0, key=jax.random.key(4))
    model = models.Sequential((models.Dense(head.weight, head.bias),), kind="multiclass", classes=tuple(range(10)))
    return enc, model, x_te, y_te, z_tr, y_tr


def main(argv: list[str] | None = None) -> None:
    from tqdm import tqdm

    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    cap = 120 if quick else None
    key_bits = 1024 if quick else 2048
    bench = Bench()
    sched = bench.sched

    xb, yb, _, logreg = breast_cancer_logreg()
    xd, yd, _, mlp = digits_mlp()
    cnn, xc, yc = _digits_cnn(quick)
    enc, head, xe, ye, z_tr, y_tr = _encoder_head(quick)
    if cap is not None:
        xb, yb, xd, yd, xc, yc, xe, ye = xb[:cap], yb[:cap], xd[:cap], yd[:cap], xc[:cap], yc[:cap], xe[:cap], ye[:cap]

    def run_plain(model: Any, x: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        parts = np.array_split(np.arange(len(x)), 4)
        jobs = sched.submit_many([rt.Task.plain(model, x[p], allow_plaintext=True) for p in parts])
        sched.run()
        return np.concatenate([rt.array_from_bytes(sched.result(j)) for j in jobs]), {"input_bytes": int(x.nbytes)}

    def run_masked(n: int) -> Callable[[Any, np.ndarray], tuple[np.ndarray, dict[str, int]]]:
        def go(model: Any, x: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
            s = Masked(n, key=jax.random.key(n))
            enc_x = s.encode(x)
            return s.decode(sched.run_masked(s, model, enc_x)), {"input_bytes": int(x.size * 8 * n)}

        return go

    ckks_cache: dict[int, Any] = {}

    def run_ckks(model: Any, x: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        s = ckks_cache.setdefault(id(model), CKKS.for_model(model))
        parts = np.array_split(np.arange(len(x)), -(-len(x) // s.slots))
        tasks = [rt.Task.for_scheme(s, model, s.encode(x[p]), model_public=True) for p in parts]
        jobs = sched.submit_many(tasks)
        sched.run()
        out = np.concatenate([s.decode(s.deserialize(sched.result(j))) for j in jobs])
        return out, {"input_bytes": sum(len(t.input) for t in tasks), "context_bytes": len(tasks[0].context)}

    pai = Paillier(key_bits=key_bits)

    def run_paillier(model: Any, x: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        task = rt.Task.for_scheme(pai, model, pai.encode(x), model_public=True)
        job = sched.submit(task)
        sched.run()
        return pai.decode(pai.deserialize(sched.result(job))), {"input_bytes": len(task.input), "context_bytes": len(task.context)}

    def run_encoder(model: Any, x: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        z = enc.encode(x)  # the data owner's side: only embeddings leave it
        out, _ = run_plain(model, z)
        return out, {"input_bytes": int(np.asarray(z, np.float64).nbytes)}

    plan: list[tuple[str, Any, np.ndarray, np.ndarray, list[tuple[str, Callable[..., Any]]]]] = [
        ("logreg/breast-cancer", logreg, xb, yb,
         [("plain", run_plain), ("masked n=2", run_masked(2)), ("masked n=3", run_masked(3)), ("ckks", run_ckks), (f"paillier {key_bits}", run_paillier)]),
        ("mlp 64-32-10/digits", mlp, xd, yd, [("plain", run_plain), ("masked n=2", run_masked(2)), ("masked n=3", run_masked(3)), ("ckks", run_ckks)]),
        ("cnn 3x3x8/digits", cnn, xc, yc, [("plain", run_plain), ("masked n=2", run_masked(2)), ("masked n=3", run_masked(3)), ("ckks", run_ckks)]),
        ("encoder 64->16 + head/digits", head, xe, ye, [("learned encoder", run_encoder)]),
    ]
    rows: list[dict[str, Any]] = []
    total = sum(len(p[4]) for p in plan) + 1
    with tqdm(total=total, desc="e2e", unit="row") as bar:
        for workload, model, x, y, schemes in plan:
            ref = model.forward(enc.encode(x) if model is head else x)  # the same model in plaintext
            ref_labels = model.labels(ref)
            for name, fn in schemes:
                epoch = bench.dep.current_epoch()
                fn(model, x)  # warm-up (compilation, context parsing), inside the same epoch
                times = []
                c0, p0 = bench.node_times()
                moved0 = sched.stats["bytes_sent"] + sched.stats["bytes_received"]
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    out, sizes = fn(model, x)
                    times.append(time.perf_counter() - t0)
                compute, proof = (a - b for a, b in zip(bench.node_times(), (c0, p0)))
                moved = (sched.stats["bytes_sent"] + sched.stats["bytes_received"] - moved0) / repeats
                pred = model.labels(out)
                times.sort()
                med = statistics.median(times)
                row = {
                    "workload": workload, "scheme": name, "samples": len(x),
                    "accuracy": float(np.mean(pred == y)), "agreement": float(np.mean(pred == ref_labels)),
                    "max_abs_err": float(np.max(np.abs(np.asarray(out, np.float64) - ref))),
                    "batch_s": med, "batch_iqr_s": times[(3 * len(times)) // 4] - times[len(times) // 4],
                    "per_sample_ms": 1e3 * med / len(x), "throughput_sps": len(x) / med,
                    "bytes_moved": int(moved), "input_bytes": sizes.get("input_bytes", 0), "context_bytes": sizes.get("context_bytes", 0),
                    "node_compute_s": compute / repeats, "node_proof_s": proof / repeats,
                    "proof_share": proof / (compute + proof) if compute + proof > 0 else 0.0, "repeats": repeats,
                }
                row |= bench.close_epoch(epoch)
                rows.append(row)
                bar.update()

        # federated training through the runtime, its own epoch
        epoch = bench.dep.current_epoch()
        c0, p0 = bench.node_times()
        moved0 = sched.stats["bytes_sent"] + sched.stats["bytes_received"]
        rounds = 2 if quick else 5
        zte, yte = enc.encode(xe), ye
        t0 = time.perf_counter()
        fhead, hist = rt.train_federated(sched, z_tr, y_tr, shares=[25, 50, 25], n_classes=10, rounds=rounds, key=jax.random.key(7),
                                         aggregation="secure", local_epochs=10, lr=1.0)
        seconds = time.perf_counter() - t0
        compute, proof = (a - b for a, b in zip(bench.node_times(), (c0, p0)))
        rows.append({
            "workload": "federated head/digits embeddings", "scheme": f"secure aggregation, 3 nodes, {rounds} rounds", "samples": len(z_tr),
            "accuracy": fhead.accuracy(zte, yte), "agreement": "", "max_abs_err": "",
            "batch_s": seconds / rounds, "batch_iqr_s": float(np.subtract(*np.percentile([h.seconds for h in hist], [75, 25]))),
            "per_sample_ms": 1e3 * seconds / rounds / len(z_tr), "throughput_sps": len(z_tr) * rounds / seconds,
            "bytes_moved": int((sched.stats["bytes_sent"] + sched.stats["bytes_received"] - moved0) / rounds),
            "input_bytes": int(np.asarray(z_tr, np.float32).nbytes), "context_bytes": 0,
            "node_compute_s": compute / rounds, "node_proof_s": proof / rounds,
            "proof_share": proof / (compute + proof) if compute + proof > 0 else 0.0, "repeats": rounds,
        } | bench.close_epoch(epoch))
        bar.update()
    bench.ex.close()

    cols = ["workload", "scheme", "samples", "accuracy", "agreement", "batch_s", "per_sample_ms", "throughput_sps",
            "bytes_moved", "context_bytes", "proof_share", "gas_epoch", "gas_per_node", "audits_passed", "repeats"]
    table = markdown_table(rows, cols)
    notes = (
        "\nbatch_s: median over `repeats` runs after a warm-up (federated: per round, IQR over rounds); "
        "proof_share: node time committing + signing transcripts / (compute + proof); "
        "gas_epoch: roots + audit records + availability claims of the epoch the row ran in (3 nodes).\n"
    )
    path = write("e2e", {"quick": quick, "rows": rows}, table + notes)
    print(table + notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
