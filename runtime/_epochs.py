"""Epoch close: post each node's Merkle root on chain, audit sampled transcripts, record it.

1. :func:`epoch_batch` builds a node's :class:`~edil.proofs.EpochBatch` from the journal
   (every transcript signature is checked here, secp256k1, fail closed).
2. The node posts the root (:func:`close_epoch`), one transaction per node per epoch.
3. Oracles derive audit randomness from the posted root and the *next* block's hash
   (``audit_beacon``), so the node could not know which transcripts will be checked when it
   committed; they sample transcripts and recompute them (:func:`audit_epoch`). A transcript
   whose recomputed output commitment differs, or one the scheduler already caught in the
   minority of a redundant run, fails the audit. A ``Masked`` party is audited by replaying
   its program from its own view (its share, its dealer material re-derived from the session
   seed, and the public openings) and comparing every contribution it sent (committed in the
   record) and its output share. One party's view is uniform, but the journal holds every
   share and the dealer seed: oracles that audit Masked sessions from it must be trusted with
   the data (the data owner's side).
4. A quorum of oracle signatures records the result; a failed audit voids the node's work
   for that epoch on chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edil import EdilError, RuntimeTaskError

from ._deps import Eip712Domain, EpochBatch, commit_bytes, commit_json, consteq
from ._journal import Journal
from ._node import transcript_from_wire
from ._task import Runner, Task, default_runners

__all__ = ["AuditReport", "audit_epoch", "close_epoch", "epoch_batch"]


def epoch_batch(journal: Journal, node: str, epoch: int, domain: Eip712Domain) -> EpochBatch | None:
    """The node's batch for ``epoch`` from the journal (``None`` if it did no work)."""
    rows = journal.transcripts(node, epoch)
    if not rows:
        return None
    return EpochBatch([transcript_from_wire(_wire_loads(rec)) for _, rec, _ in rows], domain, verify_signatures=True)


def _wire_loads(b: bytes) -> Any:
    from . import _wire

    return _wire.loads(b)


def close_epoch(deployment: Any, journal: Journal, node_key: Any, node: str, epoch: int) -> EpochBatch | None:
    """Build and post ``node``'s root for an ended ``epoch`` (sent from ``node_key``'s account)."""
    batch = epoch_batch(journal, node, epoch, deployment.poai_domain)
    if batch is not None:
        deployment.post_batch(node_key, batch)
    return batch


@dataclass(frozen=True)
class AuditReport:
    node: str
    epoch: int
    sampled: tuple[int, ...]
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def report_hash(self) -> bytes:
        return commit_json({"node": self.node, "epoch": self.epoch, "sampled": list(self.sampled), "failures": list(self.failures)})


def audit_epoch(
    deployment: Any,
    journal: Journal,
    batch: EpochBatch,
    oracle_keys: Sequence[Any],
    *,
    samples: int = 4,
    runners: Mapping[str, Runner] | None = None,
    record: bool = True,
) -> AuditReport:
    """Sample and recompute transcripts of a posted batch, then record the oracles' verdict.

    Args:
        deployment: ``edil.proofs.Deployment``; the root must be posted and one block mined since.
        journal: where the tasks' inputs are.
        batch: the posted batch.
        oracle_keys: quorum of oracle private keys that sign the verdict.
        samples: transcripts to recompute (all when the batch is smaller).
        runners: scheme -> runner for recomputation (``plain``, ``ckks``, ``paillier`` built in).
        record: submit the verdict on chain.
    """
    from edil.proofs import audit_seed, sample_indices, sign_audit

    node, epoch = batch.node, batch.epoch
    beacon = deployment.audit_beacon(node, epoch)
    seed = audit_seed(batch.root, node=node, epoch=epoch, beacon=beacon)
    idx = sample_indices(seed, batch.task_count, min(samples, batch.task_count))
    runs: dict[str, Runner] = {**default_runners(), **(runners or {})}
    agreed = {jid: ok for jid, _, ok in journal.transcripts(node, epoch)}
    failures = [f"job {jid.hex()[:16]}: outvoted by redundant replicas" for jid, ok in agreed.items() if not ok]
    for i in idx:
        t = batch.transcripts[i]
        why = _audit_transcript(journal, t, runs)
        if why:
            failures.append(f"job {t.job_id.hex()[:16]}: {why}")
    report = AuditReport(node, epoch, tuple(idx), tuple(failures))
    if record:
        sigs = [sign_audit(k, deployment.poai_domain, node, epoch, batch.root, report.passed, report.report_hash) for k in oracle_keys]
        deployment.record_audit(node, epoch, report.passed, report.report_hash, sigs)
    return report




def _audit_transcript(journal: Journal, t: Any, runs: Mapping[str, Runner]) -> str | None:
    """Why one sampled transcript fails its audit, or ``None`` when it passes.

    Raises:
        RuntimeTaskError: no runner can recompute the task's scheme (the auditor's gap, not the node's).
    """
    job = journal.job(t.job_id)
    if job is None:
        return "not in the journal"
    if job.kind == "masked":
        return _replay_masked_party(journal, job, t)
    task = Task.from_bytes(job.spec)
    if task.scheme == "fedtrain":
        from ._federated import audit_fed_step

        return audit_fed_step(journal, task, t)
    runner = runs.get(task.scheme)
    if runner is None:
        raise RuntimeTaskError(f"no runner to recompute scheme {task.scheme!r}")
    try:
        out = runner.run(task)
    except EdilError as exc:  # a task that no honest node could run: its transcript is void
        return f"cannot be recomputed ({type(exc).__name__}: {exc})"
    if not consteq(commit_bytes(out), t.output_commitment):
        return "recomputed output differs"
    return None

def _replay_masked_party(journal: Journal, job: Any, t: Any) -> str | None:
    """Replay the party whose transcript is ``t``; returns why it fails, or ``None``."""
    from edil import EdilError, VerificationError

    from . import _wire
    from ._mpc import deal, dealer_seed, plan, replay_party
    from ._task import array_from_bytes, array_to_bytes, model_from_bytes

    result = journal.result(t.job_id)
    if result is None:
        return "masked session has no recorded result"
    nodes = [n.lower() for n in result.nodes]
    if t.node.lower() not in nodes:
        return "node was not a party of the session"
    party = nodes.index(t.node.lower())
    try:
        d, rec = _wire.loads(job.spec), _wire.loads(result.output)
        if not isinstance(rec, dict):
            return None  # a record from before sessions were recorded: it cannot be replayed, nor held against the parties
        n, f = int(d["n"]), int(d["frac_bits"])
        model = model_from_bytes(d["model"])
        share_bytes = bytes(d["shares"][party])
        if not consteq(commit_bytes(share_bytes), t.input_commitment):
            return "transcript commits to another input share"
        share = array_from_bytes(share_bytes)
        items = plan(model, share.shape[0], f)
        material = deal(items, n, f, seed=dealer_seed(bytes(d["key"]), t.job_id, int(rec["attempt"])))[party]
        sent = [bytes(c) for c in rec["contributions"][party]]
        out = replay_party(party, n, f, model, share, material, [array_from_bytes(o) for o in rec["openings"]], sent)
    except VerificationError as exc:
        return str(exc)
    except (EdilError, KeyError, TypeError, ValueError) as exc:
        return f"masked session cannot be replayed ({type(exc).__name__}: {exc})"
    if not consteq(commit_bytes(array_to_bytes(out)), t.output_commitment):
        return "replayed party output differs"
    return None
