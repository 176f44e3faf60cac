"""Federated training through the runtime: every worker step is a task with a PoAI transcript.

Each round the coordinator (the data owner's side) sends every worker node one ``fedtrain``
task *pinned* to it: the round's global head (a one-layer model), the worker's shard of
embeddings, the local-training hyper-parameters and PRNG key, and the round context (round id,
participants, their weights and X25519 public keys, the aggregation scheme). The node trains,
weights its delta by its share of the round, and protects it *on the node*:

* ``plain``: the weighted delta as float64 (the baseline);
* ``secure``: fixed point in Z_2^64 plus pairwise masks seeded by X25519 agreement between the
  node's own box key and each peer's (the same masks as :class:`edil.federated.SecureAggregation`);
  the coordinator learns only the ring sum, in which the masks cancel.

The round loop is the library's :class:`edil.federated.RoundEngine`; this module supplies its
transport (one pinned task per participant and attempt, dispatched by the
:class:`~edil.runtime.Scheduler`) and the node side (:class:`FedTrainRunner`). The scheduler keeps
a reply only with a PoAI transcript signed by the node the task was pinned to, so the transport
vouches for each update's sender and round. A worker that fails or times out is not replaced
(its masks would not cancel with another node's key): the round is redone among the survivors
under a fresh round id, so fresh masks (``redo``); seed-reveal recovery exists in the in-process
:class:`~edil.federated.FederatedTrainer`. A reply that does not decode, or holds an update of the
wrong dtype, shape or range (a non-finite plain value), counts as that worker's dropout and is
recorded with :meth:`Journal.record_fault` (reason ``"malformed federated update: ..."``);
training goes on.

Audits. A ``plain`` step is recomputed and compared within :data:`AUDIT_TOLERANCE` (float32
training agrees across machines only to about 1e-9). A masked step cannot be recomputed by
anyone but its node (the masks need the node's private key), so its audit recomputes every
participant's weighted delta of that round and checks the ring identity
``sum(payloads) == sum(encode(weighted deltas))`` within the same tolerance; a mismatch fails
the audit of every participant of the round (the scheme hides who deviated). Steps of a round that
was abandoned after a dropout cannot be summed (the missing masks never cancel); nothing of
that round was aggregated, and its steps are not held against the nodes; neither are those of a
round abandoned because a participant's update was refused as malformed, whose sender fails.

Round ids start at a random 48-bit session value shifted by 16 bits, so two training runs
between the same nodes never reuse a mask.

A coordinator that dies mid-training loses nothing finished: with ``checkpoint=`` the head and
the number of finished rounds are written atomically after every round, every worker step is in
the journal, and a restart with the same arguments resumes after the last finished round.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edil import AuthorizationError, ParameterError, RuntimeTaskError, SchemeMismatchError, SerializationError
from edil.federated import RoundRecord

from . import _wire
from ._task import Task, array_from_bytes, array_to_bytes, model_from_bytes, model_to_bytes

__all__ = ["FedTrainRunner", "fed_task", "train_federated"]

SCHEME = "fedtrain"
AGGREGATIONS = ("plain", "secure")
#: Prefix of the journal fault recorded for a refused update (the audit looks for it).
MALFORMED = "malformed federated update"
#: Bytes a canonical tensor header may add to an update's ``8 * size`` payload bytes; a longer
#: reply is refused before it is parsed.
_HEADER_ROOM = 256


def _aggregation(name: str, frac_bits: int) -> Any:
    from edil.federated import PlainAggregation, SecureAggregation

    return PlainAggregation() if name == "plain" else SecureAggregation(frac_bits)


def fed_task(
    head: Any,
    shard: Any,
    *,
    round_id: int,
    worker: str,
    weights: dict[str, float],
    dh_publics: dict[str, bytes],
    aggregation: str,
    frac_bits: int,
    epochs: int,
    lr: float,
    key_data: np.ndarray,
    batch_size: int | None = None,
    l2: float = 1e-4,
) -> Task:
    """One worker step of one round, pinned to ``worker``."""
    from edil.models import Dense, Sequential

    if aggregation not in AGGREGATIONS:
        raise ParameterError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    x, y = np.asarray(shard.x, np.float32), np.asarray(shard.y, np.int64)
    n_classes = head.weight.shape[1]
    params = {
        "scheme": SCHEME,
        "aggregation": aggregation,
        "frac_bits": int(frac_bits),
        "round": int(round_id),
        "worker": worker,
        "participants": sorted(weights),
        "weights": {k: float(v) for k, v in sorted(weights.items())},
        "dh_publics": {k: bytes(v).hex() for k, v in sorted(dh_publics.items())},
        "epochs": int(epochs),
        "lr": float(lr),
        "l2": float(l2),
        "batch_size": batch_size,
        "n_classes": int(n_classes),
        "key": [int(v) for v in np.asarray(key_data, np.uint32).ravel()],
    }
    model = model_to_bytes(Sequential((Dense(head.weight, head.bias),)))
    inp = _wire.dumps({"x": array_to_bytes(x), "y": array_to_bytes(y)})
    work = 2 * epochs * x.shape[0] * head.weight.size  # forward + weight gradient, per local epoch
    # The round's head and the worker's shard of embeddings reach the worker in the clear (the
    # encoder's embeddings are an encoding, not encryption): the step declares both.
    return Task(SCHEME, params, model, inp, int(work), node=worker, model_public=True, allow_plaintext=True)


def _dense(task: Task) -> Any:
    """The step's head: a model of exactly one dense layer, or :class:`~edil.SerializationError`."""
    from edil.models import Dense

    layers = model_from_bytes(task.model).layers
    if len(layers) != 1 or not isinstance(layers[0], Dense):
        raise SerializationError("a fedtrain model is exactly one dense layer")
    return layers[0]


class FedTrainRunner:
    """Runs ``fedtrain`` tasks; holds the node's identity to mask under ``secure`` aggregation.

    Args:
        identity: the node's :class:`~edil.runtime.NodeIdentity` (``None`` for an auditor, which
            can recompute ``plain`` steps and the unprotected deltas only).
    """

    def __init__(self, identity: Any | None = None) -> None:
        self.identity = identity

    @staticmethod
    def weighted_delta(task: Task) -> np.ndarray:
        """The step's unprotected update: the trained delta times the worker's round weight."""
        import jax

        from edil.federated import Head, Shard, train_head_task

        p = task.params
        try:
            dense = _dense(task)
            d = _wire.loads(task.input)
            x, y = array_from_bytes(d["x"]), array_from_bytes(d["y"])
            key = jax.random.wrap_key_data(jax.numpy.asarray(np.asarray(p["key"], np.uint32)))
            weights = {str(k): float(v) for k, v in p["weights"].items()}
            share = weights[p["worker"]] / sum(weights.values())
            epochs, lr, l2, bs = int(p["epochs"]), float(p["lr"]), float(p["l2"]), p["batch_size"]
        except (KeyError, TypeError, ValueError) as exc:
            raise SerializationError(f"bad fedtrain task: {exc}") from None
        head = Head(np.asarray(dense.weight, np.float64), np.asarray(dense.bias, np.float64))
        delta = train_head_task(head, Shard(x, y), epochs=epochs, lr=lr, key=key, batch_size=None if bs is None else int(bs), l2=l2)
        return delta * share

    @staticmethod
    def round_context(task: Task) -> Any:
        from edil.federated import RoundContext

        p = task.params
        try:
            return RoundContext(
                int(p["round"]), tuple(p["participants"]), {str(k): float(v) for k, v in p["weights"].items()},
                {str(k): bytes.fromhex(v) for k, v in p["dh_publics"].items()},
                _dense(task).weight.size + int(p["n_classes"]), str(p["aggregation"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SerializationError(f"bad fedtrain round context: {exc}") from None

    def run(self, task: Task) -> bytes:
        from edil.federated import WorkerIdentity

        agg = task.params.get("aggregation")
        if agg == "plain":
            return array_to_bytes(self.weighted_delta(task))
        if agg != "secure":
            raise SchemeMismatchError(f"unknown fedtrain aggregation {agg!r}")
        if self.identity is None:
            raise RuntimeTaskError("a masked update can only be made by its own node (its X25519 key)")
        me = self.identity.address
        if str(task.params.get("worker", "")).lower() != me.lower():
            raise AuthorizationError(f"fedtrain task is for {task.params.get('worker')}, not this node {me}")
        ctx = self.round_context(task)
        if me not in ctx.participants or ctx.dh_publics.get(me) != bytes(self.identity.box.public_key):
            raise AuthorizationError("the round context does not list this node with its own X25519 key")
        weighted = self.weighted_delta(task)
        me_ = WorkerIdentity(me, self.identity.signing, self.identity.box)
        return array_to_bytes(_aggregation("secure", int(task.params["frac_bits"])).protect(ctx, me_, weighted))


#: Largest deviation an audit tolerates per parameter of a recomputed step. Local training is
#: float32 JAX, whose reductions depend on the machine (threads, vector units, accelerator), so
#: an honest node and its auditor agree only to about 1e-9; any lie that matters is far larger.
AUDIT_TOLERANCE = 1e-6


def audit_fed_step(journal: Any, task: Task, transcript: Any) -> str | None:
    """Audit one ``fedtrain`` transcript's step (see the module docstring); ``None`` if it passes.

    A plain step's recorded update is compared with the recomputed one within
    :data:`AUDIT_TOLERANCE`. A masked step is checked through its round: every participant's
    recorded payload, summed in the ring, must equal the sum of the recomputed, fixed-point
    weighted deltas within the same tolerance per participant. A round cut short by a failed
    participant was abandoned (and redone under another id): its survivors' payloads can never be
    summed without the missing masks, the coordinator used none of them, and they are not held
    against the nodes; neither is a round that has not finished yet.
    """
    from edil import EdilError, FixedPoint

    from ._deps import commit_bytes, consteq

    own = journal.result(transcript.job_id)
    if own is None or not consteq(commit_bytes(own.output), transcript.output_commitment):
        return "the transcript does not commit to the recorded update"
    refused = {bytes(j) for _, _, j, why in journal.faults() if j is not None and why.startswith(MALFORMED)}
    if bytes(transcript.job_id) in refused:
        return "the coordinator refused this step's update as malformed"
    try:
        size = FedTrainRunner.round_context(task).size
        if task.params.get("aggregation") == "plain":
            got = _update(own.output, np.float64, size)
            want = FedTrainRunner.weighted_delta(task)
            if not np.allclose(got, want, rtol=0.0, atol=AUDIT_TOLERANCE):
                return "recomputed update differs"
            return None
        round_id = int(task.params["round"])
        members: list[tuple[Task, Any]] = []
        for job in journal.jobs("task"):
            try:
                t = Task.from_bytes(job.spec)
            except SerializationError:
                continue
            if t.scheme == SCHEME and t.params.get("aggregation") == "secure" and int(t.params.get("round", -1)) == round_id:
                members.append((t, job))
        if any(job.status == "failed" or bytes(job.job_id) in refused for _, job in members):
            return None  # abandoned round (a dropout or a refused update): nothing of it was aggregated
        if any(job.status != "done" for _, job in members):
            return None  # not finished: nothing of it was aggregated yet
        if sorted(str(t.params["worker"]).lower() for t, _ in members) != sorted(p.lower() for p in task.params["participants"]):
            return "the round's record does not match its participants"
        frac = int(task.params["frac_bits"])
        fp = FixedPoint(frac)
        total = np.zeros(size, np.uint64)
        expect = np.zeros(size, np.uint64)
        with np.errstate(over="ignore"):
            for t, job in members:
                rec = journal.result(job.job_id)
                if rec is None:
                    return "a participant's update is missing from the record"
                total = total + _update(rec.output, np.uint64, size)
                expect = expect + fp.encode(FedTrainRunner.weighted_delta(t))
            diff = (total - expect).view(np.int64)
        ulps = len(members) * (1 + int(np.ceil(AUDIT_TOLERANCE * 2**frac)))
        if int(np.max(np.abs(diff))) > ulps:
            return "round aggregate does not match the recomputed updates"
        return None
    except (EdilError, KeyError, TypeError, ValueError) as exc:
        return f"the round cannot be checked ({type(exc).__name__}: {exc})"


def _update(output: bytes, dtype: Any, size: int) -> np.ndarray:
    """A recorded update, refused unless it is a ``(size,)`` vector of ``dtype``."""
    from edil import ShapeError

    arr = array_from_bytes(output)
    if arr.dtype != np.dtype(dtype) or arr.shape != (size,):
        raise ShapeError(f"an update must be a ({size},) {np.dtype(dtype)} vector, got {arr.shape} {arr.dtype}")
    return arr


@dataclass(frozen=True)
class RuntimeRound(RoundRecord):
    """One logical round through the runtime: a :class:`~edil.federated.RoundRecord` plus its job ids."""

    jobs: tuple[bytes, ...] = ()


class _RuntimeTransport:
    """The runtime's :class:`~edil.federated.RoundTransport` for one logical round.

    Each attempt sends every participant one ``fedtrain`` task pinned to its node, runs the
    scheduler, and brings back each node's recorded output (a node whose job failed has none).
    """

    authenticates_senders = True  # the scheduler keeps a reply only with a transcript signed by the pinned node

    def __init__(self, sched: Any, head: Any, shards: Mapping[str, Any], nodes: Sequence[str], rkey: Any, *,
                 aggregation: str, frac_bits: int, epochs: int, lr: float, batch_size: int | None) -> None:
        self._sched, self._head, self._shards, self._nodes, self._rkey = sched, head, shards, list(nodes), rkey
        self._aggregation, self._frac_bits, self._epochs, self._lr, self._batch_size = aggregation, frac_bits, epochs, lr, batch_size
        self._where: dict[tuple[int, str], tuple[bytes, int]] = {}  # (round id, node) -> (job id, epoch)
        self.jobs: list[bytes] = []

    def collect(self, ctx: Any) -> dict[str, bytes]:
        import jax

        nodes = [a for a in self._nodes if a in ctx.participants]
        tasks = [
            fed_task(self._head, self._shards[a], round_id=ctx.round_id, worker=a, weights=dict(ctx.weights),
                     dh_publics=dict(ctx.dh_publics), aggregation=self._aggregation, frac_bits=self._frac_bits,
                     epochs=self._epochs, lr=self._lr, batch_size=self._batch_size,
                     key_data=np.asarray(jax.random.key_data(jax.random.fold_in(self._rkey, self._nodes.index(a)))))
            for a in nodes
        ]
        jobs = self._sched.submit_many(tasks)
        self.jobs += jobs
        self._sched.run()
        replies: dict[str, bytes] = {}
        for a, j in zip(nodes, jobs):
            rec = self._sched.journal.result(j)
            if rec is not None:
                replies[a] = rec.output
                self._where[(ctx.round_id, a)] = (j, rec.epoch)
        return replies

    def decode(self, ctx: Any, worker_id: str, reply: bytes) -> Any:
        from edil.federated import Update

        if len(reply) > 8 * ctx.size + _HEADER_ROOM:
            raise SerializationError(f"an update of {len(reply)} bytes for {ctx.size} parameters")
        # round and sender are those of the pinned job the scheduler accepted the reply for
        return Update(ctx.round_id, worker_id, ctx.scheme, array_from_bytes(reply), b"")

    def refused(self, ctx: Any, fault: Any) -> None:
        job, epoch = self._where[(ctx.round_id, fault.worker_id)]
        self._sched.journal.record_fault(fault.worker_id, epoch, job, f"{MALFORMED}: {fault.reason}")

    def reveals(self, ctx: Any, dropped: Sequence[str], survivors: Sequence[str]) -> None:
        return None  # no reveal round trip through the runtime: the engine redoes the round


def train_federated(
    sched: Any,
    x: Any,
    y: Any,
    *,
    shares: Sequence[float],
    n_classes: int,
    rounds: int,
    key: Any,
    aggregation: str = "secure",
    workers: Sequence[str] | None = None,
    local_epochs: int = 10,
    lr: float = 1.0,
    batch_size: int | None = None,
    frac_bits: int = 20,
    eval_data: tuple[Any, Any] | None = None,
    progress: bool = False,
    print_fn: Callable[[str], None] | None = None,
    checkpoint: str | Path | None = None,
) -> tuple[Any, list[RuntimeRound]]:
    """Federated averaging of a softmax head with each worker step a runtime task.

    Args:
        sched: a :class:`~edil.runtime.Scheduler` with the worker nodes admitted.
        x, y: the data owner's embeddings and labels.
        shares: declared load share per worker (the data is split in proportion).
        n_classes: classes of the head.
        rounds: logical rounds.
        key: JAX PRNG key (sharding and local training).
        aggregation: ``"secure"`` (pairwise masks on the nodes) or ``"plain"``.
        workers: node addresses, one per share (default: the scheduler's first nodes).
        checkpoint: a file where the head and the finished rounds are saved (atomically) after
            every round; a coordinator restarted with the same arguments resumes after the last
            finished round (a round cut short is redone under a fresh round id, so fresh masks).

    Returns:
        ``(head, history)``: ``history`` holds the rounds run by this call; a malformed update
        appears in its round's ``faults`` (and in the journal's faults) as a dropout.

    Raises:
        RuntimeTaskError: fewer than 2 workers left in a round.
        AuthorizationError: a named worker is not admitted to ``sched``.
        SerializationError: the checkpoint belongs to another training run or is corrupt.
    """
    import jax

    from edil.federated import Coordinator, Head, RoundEngine, split_by_load

    if aggregation not in AGGREGATIONS:
        raise ParameterError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if workers is not None:
        try:
            nodes = [sched.card(a).address for a in workers]  # checksum case, whatever case was given
        except AuthorizationError as exc:
            raise AuthorizationError(f"a worker is not a node admitted to this scheduler: {exc}") from None
    else:
        nodes = list(sched.nodes[: len(shares)])
    if len(nodes) != len(shares) or len(nodes) < 2:
        raise RuntimeTaskError(f"need one admitted node per load share (>= 2), have {len(nodes)} for {len(shares)} shares")
    shards = dict(zip(nodes, split_by_load(x, y, list(shares), key=jax.random.fold_in(key, 1 << 20))))
    head = Head.zeros(np.asarray(x).shape[1], n_classes)
    registry = {a: (sched.card(a).signing_key, sched.card(a).box_key) for a in nodes}
    # a random session offset: masks derive from round ids, two runs between these nodes never share one
    coord = Coordinator(_aggregation(aggregation, frac_bits), registry, head.size,
                        first_round=int.from_bytes(os.urandom(6), "big") << 16)
    engine = RoundEngine(coord, dropout="redo")
    weights = {a: float(len(shards[a])) for a in nodes}
    config = {
        "nodes": [a.lower() for a in nodes], "shares": [float(v) for v in shares], "n_classes": int(n_classes),
        "aggregation": aggregation, "local_epochs": int(local_epochs), "lr": float(lr), "batch_size": batch_size,
        "frac_bits": int(frac_bits), "key": [int(v) for v in np.asarray(jax.random.key_data(key)).ravel()],
        "data": _digest(np.asarray(x, np.float32).tobytes() + np.asarray(y, np.int64).tobytes()),
    }
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        start, head = _load_checkpoint(Path(checkpoint), config, head)

    def step(r: int) -> RuntimeRound:
        nonlocal head
        transport = _RuntimeTransport(sched, head, shards, nodes, jax.random.fold_in(key, r), aggregation=aggregation,
                                      frac_bits=frac_bits, epochs=local_epochs, lr=lr, batch_size=batch_size)
        head, rec = engine.round(r, head, weights, transport, eval_data=eval_data)
        if checkpoint is not None:
            _save_checkpoint(Path(checkpoint), config, r + 1, head)
        fields = {f.name: getattr(rec, f.name) for f in dataclasses.fields(RoundRecord)}
        return RuntimeRound(**fields, jobs=tuple(transport.jobs))

    history = engine.run(range(start, rounds), step, label=f"federated via runtime ({aggregation})", progress=progress,
                         print_fn=print_fn)
    return head, history


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _save_checkpoint(path: Path, config: dict[str, Any], done: int, head: Any) -> None:
    """Write the training state atomically (a crash leaves the old or the new file, never half)."""
    body = {"config": config, "rounds_done": done, "weight": head.weight.tolist(), "bias": head.bias.tolist()}
    raw = json.dumps(body, sort_keys=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps({"state": body, "sha256": _digest(raw.encode())}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_checkpoint(path: Path, config: dict[str, Any], head: Any) -> tuple[int, Any]:
    try:
        doc = json.loads(path.read_text())
        body = doc["state"]
        if _digest(json.dumps(body, sort_keys=True).encode()) != doc["sha256"]:
            raise SerializationError("its checksum does not match its state")
        weight, bias = np.asarray(body["weight"], np.float64), np.asarray(body["bias"], np.float64)
        done = int(body["rounds_done"])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise SerializationError(f"corrupt federated checkpoint {path}: {exc}") from None
    if body["config"] != json.loads(json.dumps(config)):
        raise SerializationError(f"checkpoint {path} belongs to another training run (other data, nodes or settings)")
    if weight.shape != head.weight.shape or bias.shape != head.bias.shape or done < 0:
        raise SerializationError(f"checkpoint {path} does not fit this head")
    return done, type(head)(weight, bias)
