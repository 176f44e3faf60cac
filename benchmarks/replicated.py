"""Replicated 3-party sharing (no dealer) against plaintext JAX and 2-party ``Masked``, in one run.

Workload: the MLP 64-128-10 of ``benchmarks.inference`` (scikit-learn, degree-4 ReLU
approximation) on all 1797 digits, data shared and model public (and, for ``Replicated``,
model shared too). Rows:

* plaintext JAX float32 jit (the float model with its real ReLU): the baseline;
* ``Masked`` n=2, offline+online (dealer material drawn inline) and online only;
* ``Replicated`` (three parties, no offline phase): the whole protocol, which includes each
  run's PRF expansion (AES-128-CTR under the pairwise keys, on as many threads as CPUs, up to
  four, overlapping XLA's products of the first layer, into word buffers kept from the previous
  run), and that expansion alone;
* ``Replicated``'s per-party critical path, an extra row, not a whole-protocol time: the three
  party programs run separately (:func:`edil.hazmat.replicated.run_parties` on host parties, as
  one party per node runs them), each party's own compute timed; the row is the slowest
  party's, with what each party sends. In a deployment the parties compute on separate
  machines at the same time, so a run takes this plus the network's latency for its rounds.

``agreement`` is the fraction of rows whose label equals the plaintext model's (the same
polynomial model in float64); ``rounds`` and ``bytes_by_party`` are the protocol's messages.
Every time is the median of several runs after a warm-up (7, 3 with ``--quick``; at least 20 for
JAX), with its interquartile range; ``x_jax`` is a ratio of medians from this one run.

Run: ``python -m benchmarks.replicated [--quick]``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from benchmarks._common import markdown_table, measure, parser, summarize, timed, write
from benchmarks.inference import jax_forward, online_time
from edil import Masked, Replicated, models
from edil.hazmat import replicated as rep


def mlp_digits() -> tuple[models.Sequential, np.ndarray, np.ndarray]:
    """The inference benchmark's MLP 64-128-10 on digits (same recipe and seed)."""
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-2, max_iter=300, random_state=0).fit(x, y)
    return models.from_sklearn(mlp, degree=4, calibration=x), x, y


def per_party_row(s: Replicated, er: models.EncodedModel, enc: object, repeats: int, row: Callable[..., dict]) -> dict:
    """The slowest party's own compute when each party runs its program on its own pair and streams."""
    spec, weights = s._model_spec(er)  # noqa: SLF001 - the program a node runs (as runtime.program_of)
    ws = [np.asarray(w) for w in weights]
    shares = s.party_shares(enc)  # type: ignore[arg-type]
    runs: list[list[float]] = []
    last: tuple[list, rep.Cost] | None = None
    for _ in range(repeats + 1):  # the first run compiles the ring kernels
        busy, cost = [0.0, 0.0, 0.0], rep.Cost()
        parties = [rep.host_party(i, s.frac_bits, s.party_streams(i)) for i in range(3)]
        outs = rep.run_parties([rep.model(p, shares[i], spec, ws) for i, p in enumerate(parties)],
                               cost=cost, busy=busy, clock=time.perf_counter)
        runs.append(busy)
        last = (outs, cost)
    assert last is not None
    outs, cost = last
    per_party = [summarize([r[i] for r in runs[1:]]) for i in range(3)]
    slowest = max(range(3), key=lambda i: per_party[i]["median_s"])
    labels = er.model.labels(s.decode(s.from_components(np.stack([o[0] for o in outs]))))
    return row(f"  per-party critical path (party {slowest}'s own compute; parties on separate machines)",
               per_party[slowest], labels, rounds=cost.rounds, bytes_by_party=" / ".join(str(b) for b in cost.sent))


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__ or "").parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    model, x, y = mlp_digits()
    reference = model.predict(x)
    base = {"workload": "mlp64-128-10/digits", "samples": len(x)}
    rows = []

    xf = jnp.asarray(x, jnp.float32)
    f_float = jax_forward(model, "relu")
    t_jax = measure(lambda: f_float(xf).block_until_ready(), repeats=max(repeats, 20))
    jax_ms = t_jax["median_s"]

    def row(variant: str, t: dict, labels: np.ndarray | None, **extra: object) -> dict:
        out = {**base, "variant": variant, **timed("ms", t), "x_jax": t["median_s"] / jax_ms, "repeats": t["repeats"], **extra}
        if labels is not None:
            out["agreement"] = float(np.mean(labels == reference))
            out["accuracy"] = float(np.mean(labels == y))
        return out

    rows.append(row("plaintext JAX f32 jit", t_jax, model.labels(np.asarray(f_float(xf))), rounds=0, bytes_by_party="-"))

    # Masked, two parties and a dealer.
    m = Masked(2, key=jax.random.key(2))
    em = models.encode_model(model, m)
    enc = m.encode(x)
    m.stats.reset()
    labels = model.labels(m.decode(em(enc)))
    rounds, opened = m.stats.openings, m.stats.bytes_opened
    t_full = measure(lambda: jax.block_until_ready(em(enc).shares), repeats=repeats)

    t_online = online_time(em, enc, len(x), repeats)
    per_party = f"{opened // 2} (each)"
    rows.append(row("masked n=2 model public (offline+online)", t_full, labels, rounds=rounds, bytes_by_party=per_party))
    rows.append(row("masked n=2 model public (online only)", t_online, labels, rounds=rounds, bytes_by_party=per_party))

    # Replicated, three parties, no dealer.
    for private in (False, True):
        s = Replicated(seed=b"benchmark-replicated-seed-000001")
        er = models.encode_model(model, s, private_weights=private)
        enc_r = s.encode(x)
        s.stats.reset()
        labels = model.labels(s.decode(er(enc_r)))
        sent = [s.stats.extra[f"bytes_sent_by_party_{i}"] for i in range(3)]
        rounds = s.stats.openings
        t_rep = measure(lambda: jax.block_until_ready(er(enc_r).components), repeats=repeats)
        label = "replicated n=3 " + ("model shared" if private else "model public")
        rows.append(row(label + " (whole protocol, no offline phase)", t_rep, labels, rounds=rounds,
                        bytes_by_party=" / ".join(str(b) for b in sent)))
        if not private:
            words = s.prf_words(er, len(x))
            # The run's own expansion (the three pairwise streams side by side), on fresh streams,
            # into buffers reused from run to run as the protocol's runs reuse theirs.
            held = [rep.KeyStream._buffer(n) for n in words]  # noqa: SLF001
            t_prf = measure(lambda: rep.KeyStream.expand_into([s.party_streams(i)[i] for i in range(3)], words, held),
                            repeats=repeats)
            rows.append(row("  of which PRF expansion (AES-128-CTR)", t_prf, None, rounds="-", bytes_by_party="-"))
            rows.append(per_party_row(s, er, enc_r, repeats, row))

    cols = ["workload", "variant", "samples", "agreement", "accuracy", "ms", "x_jax", "rounds", "bytes_by_party", "repeats"]
    table = (markdown_table(rows, cols) + "\nms: median ± interquartile range of `repeats` runs after a warm-up. "
             "agreement: labels equal to the plaintext model's.\n")
    write("replicated", {"rows": rows}, table)
    print(table)
    return {"rows": rows}


if __name__ == "__main__":
    main()
