"""Epoch close: post each node's Merkle root on chain, audit sampled transcripts, record it.

1. :func:`epoch_batch` builds a node's :class:`~edil.proofs.EpochBatch` from the journal
   (every transcript signature is checked here, secp256k1, fail closed).
2. The node posts the root (:func:`close_epoch`), one transaction per node per epoch, and
   declares nothing else: no task count, no work units.
3. Oracles take the node's whole batch of signed transcripts from the journal and recount it
   (:func:`edil.proofs.batch_figures`: every signature is the node's, the tree over the digests
   has the posted root); these recounted figures, not the node's word, are what they attest.
   They derive audit randomness from the posted root and the *next* block's hash
   (``audit_beacon``), so the node could not know which transcripts will be checked when it
   committed, and recompute a sample whose size follows from a detection target
   (:func:`edil.proofs.audit_sample_size`: by default a node that cheats on 5% of its tasks is
   caught with probability >= 0.99; small batches are audited whole). A transcript whose
   recomputed output commitment differs, or one the scheduler already caught in the minority of
   a redundant run, fails the audit. A ``Masked`` party is audited by replaying its program from
   its own view (its share, its dealer material re-derived from the session seed, and the public
   openings) and comparing every contribution it sent (committed in the record) and its output
   share. Its ring products are not recomputed: the node committed to each as ``C + 2^64 H`` (sent
   with its result and recorded by the coordinator before the root was posted), and each is
   checked with the one-round audit (:func:`edil.proofs.matmul_audit_one_round`, error < 2^-44)
   under randomness drawn from the same posted root and beacon; the steps between products are
   still recomputed (:mod:`edil.runtime._products`). Records without committed products are
   replayed in full. One party's view is uniform, but the journal holds every share and the
   dealer seed: oracles that audit Masked sessions from it must be trusted with the data (the
   data owner's side).
4. A quorum of oracle signatures records the verdict with the attested task count and work units;
   a failed audit voids the node's work (and its availability) for that epoch on chain, and every
   job whose accepted result the node contributed to in that epoch is marked disputed in the
   journal (``Scheduler.result`` then refuses it unless asked otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edil import EdilError, RuntimeTaskError, ShapeError, VerificationError

from ._deps import (
    DEFAULT_CHEAT_FRACTION,
    DEFAULT_DETECTION,
    AuditAttestation,
    Eip712Domain,
    EpochBatch,
    SignedTranscript,
    attest_audit,
    audit_detection,
    audit_sample_size,
    audit_seed,
    batch_figures,
    commit_bytes,
    commit_json,
    consteq,
    sample_indices,
    transcript_from_wire,
)
from ._journal import Journal
from ._products import ProductAudit, product_seed, products_from_wire
from ._task import Runner, Task, array_to_bytes, default_runners

__all__ = ["AuditReport", "audit_epoch", "audit_masked_party", "close_epoch", "epoch_batch"]


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
    """The oracles' findings on one node's epoch.

    Attributes:
        node, epoch: the audited batch.
        sampled: indices of the recomputed transcripts, in draw order.
        failures: why the audit fails (empty when it passes).
        task_count, work_units: the batch as the oracles recounted it from the signed transcripts
            (0 when it could not be recounted); attested on chain only when the audit passes.
        cheat_fraction: the cheating rate the sample was sized for.
        detection: probability that this sample catches a node cheating at that rate.
    """

    node: str
    epoch: int
    sampled: tuple[int, ...]
    failures: tuple[str, ...]
    task_count: int = 0
    work_units: int = 0
    cheat_fraction: float = DEFAULT_CHEAT_FRACTION
    detection: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def report_hash(self) -> bytes:
        return commit_json(
            {
                "node": self.node,
                "epoch": self.epoch,
                "sampled": list(self.sampled),
                "failures": list(self.failures),
                "task_count": self.task_count,
                "work_units": str(self.work_units),
                "cheat_fraction": repr(self.cheat_fraction),
                "detection": repr(self.detection),
            }
        )


def _signed_batch(rows: Sequence[tuple[bytes, bytes, bool]]) -> tuple[list[SignedTranscript], list[str]]:
    """Decode a node's journaled transcript records; a record that does not decode is a finding."""
    signed: list[SignedTranscript] = []
    problems: list[str] = []
    for jid, rec, _ in rows:
        try:
            signed.append(transcript_from_wire(_wire_loads(rec)))
        except EdilError as exc:
            problems.append(f"job {jid.hex()[:16]}: transcript record cannot be decoded ({exc})")
    return signed, problems


def audit_epoch(
    deployment: Any,
    journal: Journal,
    batch: EpochBatch,
    oracle_keys: Sequence[Any],
    *,
    cheat_fraction: float = DEFAULT_CHEAT_FRACTION,
    detection: float = DEFAULT_DETECTION,
    runners: Mapping[str, Runner] | None = None,
    record: bool = True,
    dispute: bool = True,
) -> AuditReport:
    """Recount a posted batch, recompute a sample of it, and record the oracles' verdict.

    The oracles work from the node's whole batch of signed transcripts in the journal, not from
    ``batch``'s figures: they check every signature and that the batch's root is the root posted
    on chain, recount its task count and work units, and attest those. The sample size is
    :func:`edil.proofs.audit_sample_size` ``(N, cheat_fraction, detection)``.

    Args:
        deployment: ``edil.proofs.Deployment``; the root must be posted and one block mined since.
        journal: where the transcripts and the tasks' inputs are.
        batch: the posted batch (names the node and the epoch).
        oracle_keys: quorum of oracle private keys; each recounts the batch before it signs.
        cheat_fraction: the cheating rate to detect (default 0.05).
        detection: probability of catching a node that cheats at that rate (default 0.99).
        runners: scheme -> runner for recomputation (``plain``, ``ckks``, ``paillier`` built in).
        record: submit the verdict on chain.
        dispute: on a failed audit, mark disputed in the journal every job whose accepted result
            the node's transcript is part of (a transcript outvoted by redundant replicas did not
            shape the result, so its job is not disputed).

    Returns:
        The :class:`AuditReport`.

    Raises:
        ChainError: no root posted for (node, epoch), its beacon block not mined yet, or the
            chain refused the attestation.
        RuntimeTaskError: no runner can recompute a sampled task's scheme.
    """
    node, epoch = batch.node, batch.epoch
    domain = deployment.poai_domain
    posted = deployment.epoch_record(node, epoch).root
    beacon = deployment.audit_beacon(node, epoch)
    rows = journal.transcripts(node, epoch)
    signed, failures = _signed_batch(rows)
    count = work = 0
    if not failures:
        try:
            count, work = batch_figures(signed, domain, node=node, epoch=epoch, root=posted)
        except VerificationError as exc:
            failures.append(f"batch: {exc}")
    failures += [f"job {jid.hex()[:16]}: outvoted by redundant replicas" for jid, _, ok in rows if not ok]
    seed = audit_seed(posted, node=node, epoch=epoch, beacon=beacon)
    k = audit_sample_size(len(signed), cheat_fraction, detection)
    idx = sample_indices(seed, len(signed), k)
    runs: dict[str, Runner] = {**default_runners(), **(runners or {})}
    for i in idx:
        t = signed[i].transcript
        why = _audit_transcript(journal, t, runs, seed=seed)
        if why:
            failures.append(f"job {t.job_id.hex()[:16]}: {why}")
    report = AuditReport(
        node, epoch, tuple(idx), tuple(failures), count, work, cheat_fraction,
        float(audit_detection(len(signed), k, cheat_fraction)) if signed else 0.0,
    )
    if record:
        passed = report.passed
        attestation = AuditAttestation(
            node, epoch, posted, count if passed else 0, work if passed else 0, passed, report.report_hash
        )
        sigs = [attest_audit(key, domain, attestation, signed) for key in oracle_keys]
        deployment.record_audit(attestation, sigs)
        if not passed and deployment.is_claimed(node, epoch):
            # The node claimed this epoch's availability before the audit voided it: take it back.
            deployment.forfeit_availability(node, [epoch])
    if dispute and not report.passed:
        more = f" (and {len(failures) - 1} more finding(s))" if len(failures) > 1 else ""
        reason = f"node {node} failed its PoAI audit of epoch {epoch}: {failures[0]}{more}"
        for jid, _, ok in rows:
            if ok:
                journal.dispute(jid, reason)
    return report


def _audit_transcript(journal: Journal, t: Any, runs: Mapping[str, Runner], *, seed: bytes) -> str | None:
    """Why one sampled transcript fails its audit, or ``None`` when it passes (``seed``: the epoch's audit seed).

    Raises:
        RuntimeTaskError: no runner can recompute the task's scheme (the auditor's gap, not the node's).
    """
    job = journal.job(t.job_id)
    if job is None:
        return "not in the journal"
    if job.kind == "masked":
        return _replay_masked_party(journal, job, t, seed)
    if job.kind == "replicated":  # no replay without the pairwise keys: see _replicated_session.audit_party
        from ._replicated_session import audit_party as audit_replicated_party

        return audit_replicated_party(journal, t)
    task = Task.from_bytes(job.spec)
    if t.work_units != task.work_units:  # the attested total is a sum of these: each must be its task's
        return f"transcript claims {t.work_units} work units, its task {task.work_units}"
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


def _replay_masked_party(journal: Journal, job: Any, t: Any, seed: bytes) -> str | None:
    """Replay the party whose transcript is ``t``; returns why it fails, or ``None``."""
    result = journal.result(t.job_id)
    if result is None:
        return "masked session has no recorded result"
    return audit_masked_party(job.spec, result.output, result.nodes, t, seed=seed)


def audit_masked_party(spec: bytes, output: bytes, nodes: Sequence[str], transcript: Any, *, seed: bytes) -> str | None:
    """Why a ``Masked`` party fails its epoch audit, or ``None`` when it passes.

    The party's view of the recorded attempt (input share, weights, dealer material) is
    re-derived from the journal and checked against its transcript, and the party is replayed
    against the public openings, every contribution compared with its recorded commitment, as
    :func:`edil.runtime._mpc_session.audit_party` does; but each ring product is the one the
    node committed to, checked by :class:`~edil.runtime._products.ProductAudit` (one round
    modulo a random prime per product) instead of being recomputed. A record without the
    party's products (written before nodes committed to them, or a node that sent none) is
    replayed in full.

    Args:
        spec, output, nodes: the journaled job, its recorded result and its parties.
        transcript: the audited party's transcript.
        seed: the epoch's audit seed (fixed after the root was posted).
    """
    from edil.hazmat import mpc

    from ._mpc_session import (
        RecordedView,
        _arrays_from_bytes,
        contribution_commitment,
        party_model_from_bytes,
        recorded_view,
        replay_recorded,
    )

    try:
        view = recorded_view(spec, output, nodes, transcript)
    except (EdilError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        return f"masked session cannot be replayed ({type(exc).__name__}: {exc})"
    if not isinstance(view, RecordedView):
        return view
    rec, party, job = view.record, view.party, view.job
    committed = rec.get("products")
    if not isinstance(committed, list) or len(committed) != len(nodes) or committed[party] is None:
        return replay_recorded(view, transcript)
    try:
        products = products_from_wire(committed[party])
        material = iter(job.material(transcript.job_id, view.attempt, parties=[party])[party])

        def dealer(kind: str, *shapes: tuple[int, ...]) -> Any:
            m = next(material, None)
            if m is None or any(a.shape != s for a, s in zip(m, mpc.material_shapes(kind, shapes))):
                raise ShapeError(f"dealer material mismatch for {kind} {shapes}")
            return m

        layers, weights = party_model_from_bytes(view.model_bytes)
        p = mpc.host_party(party, job.n, job.frac_bits, dealer)
        audit = ProductAudit(p, products, seed=product_seed(seed, transcript.job_id, party))
        opened = (_arrays_from_bytes(bytes(o)) for o in rec["openings"])
        out = mpc.run_party(mpc.model(p, view.share, layers, weights), opened, sent=[bytes(c) for c in rec["contributions"][party]],
                            commit=contribution_commitment, consteq=consteq)
        audit.finish()
    except VerificationError as exc:
        return str(exc)
    except (EdilError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        return f"masked session cannot be replayed ({type(exc).__name__}: {exc})"
    if not consteq(commit_bytes(array_to_bytes(np.asarray(out, dtype=np.uint64))), transcript.output_commitment):
        return "replayed party output differs"
    return None
