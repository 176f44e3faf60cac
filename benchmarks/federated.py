"""Federated EDIL: accuracy, secure-aggregation overhead, Paillier aggregation, privacy of embeddings.

* Accuracy: a softmax head on digits embeddings (domain encoder 64 -> 16), centralized vs
  federated over 3 workers with load shares 25/50/25 (plain FedAvg and masked secure aggregation).
* Time per round, 10 workers x 100,000 parameters (head 9999 -> 10), each worker 500 synthetic
  samples and 5 local full-batch epochs: plain FedAvg vs pairwise-masked secure aggregation, whole
  round and aggregation alone (local training cached).
* Paillier aggregation (2048-bit, packed 28 values per ciphertext) for 10 workers, timed on fewer
  parameters (it is ~1000x slower) and extrapolated linearly to 100,000, labelled as such.
* Privacy: an attacker trains a decoder on public digits (the test split) and inverts the owner's
  embeddings; reconstruction MSE against guessing the public mean.

Times are medians of 7 runs (3 with ``--quick``; 3 for Paillier) after a warm-up, with their
interquartile range (``*_iqr_s``); the ``*_x_plain`` ratios are ratios of medians.

Run: ``python -m benchmarks.federated [--quick]``.
"""

from __future__ import annotations

import jax
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from benchmarks._common import markdown_table, measure, measure_steps, parser, timed, write
from edil import federated as fed


def accuracy_rows(rounds: int, encoder_epochs: int) -> tuple[list[dict], fed.DomainEncoder, tuple]:
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    enc = fed.DomainEncoder.train(x_tr, embed_dim=16, hidden=64, epochs=encoder_epochs, key=jax.random.key(0))
    z_tr, z_te = enc.encode(x_tr), enc.encode(x_te)
    central = fed.train_head(z_tr, y_tr, n_classes=10, epochs=10 * rounds, lr=1.0, key=jax.random.key(4))
    acc_c = central.accuracy(z_te, y_te)
    rows = [{"setting": "centralized", "accuracy": acc_c, "delta_points": 0.0}]
    shards = fed.split_by_load(z_tr, y_tr, [25, 50, 25], key=jax.random.key(5))
    for agg in (fed.PlainAggregation(), fed.SecureAggregation()):
        tr = fed.FederatedTrainer(fed.make_workers(shards, key=jax.random.key(6)), agg, n_classes=10,
                                  local_epochs=10, lr=1.0)
        acc = tr.run(rounds, key=jax.random.key(7), eval_data=(z_te, y_te)).history[-1].accuracy
        rows.append({"setting": f"federated 25/50/25 ({agg.name})", "accuracy": acc,
                     "delta_points": 100 * (acc - acc_c)})
    return rows, enc, (x_tr, x_te)


def _workers(n_workers: int, in_dim: int, samples: int) -> list[fed.FederatedWorker]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_workers * samples, in_dim)).astype(np.float32) / np.sqrt(in_dim)
    y = rng.integers(0, 10, n_workers * samples)
    shards = fed.split_by_load(x, y, [1.0] * n_workers, key=jax.random.key(1))
    return fed.make_workers(shards, key=jax.random.key(2))


def timing_rows(repeats: int, n_workers: int = 10, in_dim: int = 9999, samples: int = 500,
                epochs: int = 5) -> list[dict]:
    workers = _workers(n_workers, in_dim, samples)
    cache: dict[int, np.ndarray] = {}

    def cached_task(head, shard, **kw):  # aggregation only: local training done once, up front
        if id(shard) not in cache:
            cache[id(shard)] = fed.train_head_task(head, shard, **kw)
        return cache[id(shard)]

    rows = []
    for agg in (fed.PlainAggregation(), fed.SecureAggregation()):
        full = fed.FederatedTrainer(workers, agg, n_classes=10, local_epochs=epochs, lr=0.5)
        t_full = measure(lambda: full.run_round(0, key=jax.random.key(0)), repeats=repeats)
        only = fed.FederatedTrainer(workers, agg, n_classes=10, local_epochs=epochs, lr=0.5, task=cached_task)
        t_agg = measure(lambda: only.run_round(0, key=jax.random.key(0)), repeats=repeats)
        rec = only.run_round(0, key=jax.random.key(0))
        rows.append({"scheme": agg.name, "workers": n_workers, "params": full.head.size,
                     **timed("round_s", t_full), **timed("aggregation_s", t_agg),
                     "upload_bytes": rec.bytes, "repeats": repeats})
    for r in rows:
        r["round_x_plain"] = r["round_s"] / rows[0]["round_s"]
        r["aggregation_x_plain"] = r["aggregation_s"] / rows[0]["aggregation_s"]
    return rows


def paillier_row(n_workers: int, params: int, repeats: int = 3, target_params: int = 100_000) -> dict:
    """One Paillier round (workers encrypt, coordinator checks and combines, key holder decrypts),
    timed ``repeats`` times after a warm-up round on 1/10 of the parameters (no compilation to warm)."""
    rng = np.random.default_rng(3)
    workers = _workers(n_workers, 4, 4)
    agg = fed.PaillierAggregation(key_bits=2048)
    registry = {w.worker_id: (w.identity.verify_key, w.identity.dh_public) for w in workers}
    weights = {w.worker_id: 1.0 for w in workers}

    def steps(size: int) -> list:
        coord = fed.Coordinator(agg, registry, size)

        def encrypt(vecs: list[np.ndarray]) -> list:
            ctx = coord.open_round(weights)
            return [w.make_update(ctx, agg, v) for w, v in zip(workers, vecs)]

        def combine(updates: list) -> tuple[np.ndarray, list]:
            for u in updates:
                coord.receive(u)
            return coord.finish()[0], updates

        return [("encrypt", encrypt), ("combine", combine)]

    warm = max(2, params // 10)
    measure_steps(steps(warm), repeats=1, warmup=0, first=[rng.normal(size=warm) * 0.01 for _ in workers])
    vecs = [rng.normal(size=params) * 0.01 for _ in workers]
    t, (mean, updates) = measure_steps(steps(params), repeats=repeats, warmup=0, first=vecs)
    err = float(np.max(np.abs(mean - np.mean(vecs, axis=0))))
    return {"scheme": "paillier-2048 packed", "workers": n_workers, "params": params, "round_s": float("nan"),
            **timed("aggregation_s", t["total"]), **timed("encrypt_s", t["encrypt"]), "max_abs_error": err,
            **timed("aggregation_s_extrapolated_100k", t["total"], scale=target_params / params),
            "upload_bytes": sum(u.nbytes for u in updates), "repeats": repeats}


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__ or "").parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    acc, enc, (x_private, x_public) = accuracy_rows(rounds=20, encoder_epochs=800 if args.quick else 2000)
    timing = timing_rows(repeats)
    timing.append(paillier_row(10, 2_000 if args.quick else 10_000, repeats=3))
    rep = fed.reconstruction_attack(enc, x_public, x_private, epochs=800 if args.quick else 2000,
                                    key=jax.random.key(11))
    privacy = [{"attacker": "decoder trained on public digits", "public_samples": rep.public_samples,
                "private_samples": rep.private_samples, "attack_mse": rep.attack_mse,
                "baseline_mse (public mean)": rep.baseline_mse, "owner_decoder_mse": rep.owner_decoder_mse,
                "attack_to_baseline": rep.attack_to_baseline}]
    table = (
        "## Accuracy (digits, 16-dim embeddings, softmax head, 20 rounds x 10 local epochs)\n\n"
        + markdown_table(acc, ["setting", "accuracy", "delta_points"])
        + "\n## Time per round (10 workers x 100,000 parameters)\n\n"
        + markdown_table(timing, ["scheme", "workers", "params", "round_s", "round_x_plain", "aggregation_s",
                                  "aggregation_x_plain", "aggregation_s_extrapolated_100k", "upload_bytes", "repeats"])
        + "\nTimes: median ± interquartile range of `repeats` runs after a warm-up; ratios of medians.\n"
        + "\n## Privacy of embeddings (reconstruction attack, per-pixel MSE, pixels in [0, 1])\n\n"
        + markdown_table(privacy, list(privacy[0]))
    )
    payload = {"quick": args.quick, "accuracy": acc, "timing": timing, "privacy": privacy}
    write("federated", payload, table)
    print(table)
    return payload


if __name__ == "__main__":
    main()
