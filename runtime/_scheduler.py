"""The scheduler: dAuth-gated placement, redundancy, retries and the durable journal.

Flow of one job: :meth:`Scheduler.submit` journals it (``pending``); :meth:`Scheduler.run`
places it on eligible nodes (admitted by the registry *now*, capable, not suspended, least
loaded), seals it to each, waits with a timeout, authenticates each reply (Ed25519 key of the
node it was sent to, fresh nonce), checks the node's transcript against the task and the
returned output, compares output commitments across the ``redundancy`` replicas in constant
time, and records the result once in the journal. When replicas disagree the
majority wins (a tie asks one more node); nodes in the minority are recorded as faulty for
the epoch, and their transcripts are kept with ``agreed = False`` for the audit to void.

Failures. A task is checked against its scheme when it is built (:meth:`Task.for_scheme`) and its
disclosure declarations when it is submitted, so a task that cannot run is refused before
anything is journaled or sent. A node that cannot run a task answers with a signed ``error``
reply naming the error class; when a second node fails the same task with the same class (or
the task is pinned to its only node) the task, not the nodes, is at fault: the job fails with
that error and no node is suspended. Everything else is a node fault (a timeout, a crash, an
unauthenticated or unverifiable reply): the node is suspended (``backoff_s``, doubling with each
consecutive fault, at most ``cooldown_s``) and the job is dispatched again, preferably elsewhere,
after its own exponential backoff, within its budget (``max_attempts`` dispatches and, when set,
``job_budget_s`` seconds); a job pinned to one node fails at its node's first fault. A job whose budget is spent fails with the list of its errors; a
failed job goes back to ``pending`` with :meth:`Scheduler.retry` / :meth:`Scheduler.retry_failed`.
Every dispatch waits at most ``timeout_s`` (default 10 s).

Transcript signatures (secp256k1, ~0.3 ms to verify with libsecp256k1) are checked when an epoch batch is
built (:mod:`edil.runtime._epochs`), not on the hot path: a reply is already authenticated by
the node's Ed25519 key, which its card binds to its chain address.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from edil import (
    AuthorizationError,
    EdilError,
    ParameterError,
    RuntimeTaskError,
    SerializationError,
    UnsupportedOperationError,
    VerificationError,
)

from . import _wire
from ._blobs import TaskBlobs
from ._deps import Eip712Domain, commit_bytes, consteq, keccak256, transcript_from_wire, verify_transcript
from ._executor import CoordinatorKeys, Executor, NodeConfig
from ._identity import CoordinatorIdentity, NodeCard
from ._journal import JobRecord, Journal, ResultRecord
from ._mpc_session import masked_output, run_masked_job
from ._mpc_session import new_job as new_masked_job
from ._placement import Placement
from ._registry import Registry
from ._replicated_session import run_replicated_job
from ._task import Task
from ._transport import Message, ReplayGuard, open_envelope, seal_envelope

__all__ = ["Scheduler"]


@dataclass
class _Job:
    job_id: bytes
    task: Task
    needed: int
    tried: set[str] = field(default_factory=set)  # nodes holding it now or that answered it: never sent it again
    outstanding: int = 0
    replies: dict[str, tuple[bytes, bytes, bytes]] = field(default_factory=dict)  # addr -> (output, commitment, transcript)
    dispatches: int = 0
    errors: list[str] = field(default_factory=list)
    refusals: dict[str, str] = field(default_factory=dict)  # addr -> error class of its signed error reply
    faulted: set[str] = field(default_factory=set)  # nodes that faulted on it (tried again only last)
    faults: int = 0
    not_before: float = 0.0  # monotonic time before which it is not dispatched again (backoff)
    started: float | None = None  # monotonic time of its first dispatch in this run (time budget)
    queued: float = 0.0  # monotonic time it joined this run (the journal keeps no submit time): bounds a wait for live nodes


#: How often a job whose every candidate node has stale heartbeats looks again.
STALE_RECHECK_S = 0.5


def _field_bytes(body: Any, name: str) -> bytes:
    """A node reply's byte field, refused unless it is bytes (``bytes(n)`` of a number would allocate n bytes)."""
    value = body[name]
    if not isinstance(value, bytes):
        raise SerializationError(f"reply field {name!r} is {type(value).__name__}, not bytes")
    return value


class Scheduler:
    """Places journaled jobs on admitted nodes through an executor.

    Args:
        executor: where the nodes run (:class:`LocalExecutor`, :class:`RayExecutor`).
        registry: dAuth view (:class:`StaticRegistry`, :class:`ChainRegistry`); checked at
            admission *and* before every dispatch, so a revoked node gets nothing more.
        journal: the durable journal (a new scheduler on the same file resumes its jobs).
        identity: the coordinator's keys (nodes trust its Ed25519 key).
        domain: EIP-712 domain of the PoAI verifier.
        epoch: returns the current epoch (stamped into tasks and transcripts).
        clock: seconds since the Unix epoch.
        nonce: 16-byte nonce source (default: random prefix + counter).
        timeout_s: per-dispatch reply timeout (every node call has one).
        max_attempts: dispatches allowed per job beyond its redundancy (its attempt budget).
        slots_per_node: jobs in flight per node.
        cooldown_s: the longest a faulty node is suspended (and the longest a job backs off).
        backoff_s: first suspension of a faulty node and first delay before a job that met a
            node fault is dispatched again; both double with each further fault.
        job_budget_s: seconds a job may spend from its first dispatch in a run before it fails
            (``None``: the attempt budget alone).
        verify_transcripts: also check each transcript's secp256k1 signature on arrival.
        availability: ``availability(address) -> [0, 1]``, e.g. the share of recent heartbeat
            slots an oracle saw (:meth:`HeartbeatMonitor.recent`); placement prefers more
            available nodes and skips those below ``min_availability``.
        min_availability: nodes less available than this get no task (default 0: none skipped).
        stake: ``stake(address) -> int``, a node's bonded stake, e.g. ``Deployment.stake_of``.
        min_stake: nodes with less bonded stake than this get no task (default 0: off; a
            positive value needs ``stake``; a failing stake view counts as no stake).
        live: ``live(address) -> bool``, fresh-heartbeat knowledge (default: the executor's
            ``live``, e.g. :meth:`NatsExecutor.live` with a :class:`~edil.runtime.Presence`): a
            node it calls stale gets no new task; a job whose every candidate is stale waits for
            one to beat again, rechecked every ``STALE_RECHECK_S``, and fails (naming the stale
            nodes) once it has waited ``job_budget_s`` in the run, else at ``run``'s timeout.
    """

    def __init__(
        self,
        executor: Executor,
        registry: Registry,
        journal: Journal,
        *,
        identity: CoordinatorIdentity,
        domain: Eip712Domain,
        epoch: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.time,
        nonce: Callable[[], bytes] | None = None,
        timeout_s: float = 10.0,
        max_attempts: int = 3,
        slots_per_node: int = 2,
        cooldown_s: float = 60.0,
        backoff_s: float = 0.25,
        job_budget_s: float | None = None,
        verify_transcripts: bool = False,
        availability: Callable[[str], float] | None = None,
        min_availability: float = 0.0,
        stake: Callable[[str], int] | None = None,
        min_stake: int = 0,
        live: Callable[[str], bool] | None = None,
    ) -> None:
        if max_attempts < 1 or slots_per_node < 1 or timeout_s <= 0:
            raise ParameterError("max_attempts and slots_per_node must be >= 1 and timeout_s > 0")
        if backoff_s < 0 or cooldown_s < 0 or (job_budget_s is not None and job_budget_s <= 0):
            raise ParameterError("backoff_s and cooldown_s must be >= 0 and job_budget_s > 0 (or None)")
        self.executor, self.registry, self.journal = executor, registry, journal
        self.identity, self.domain, self.epoch, self.clock = identity, domain, epoch, clock
        if nonce is None:
            prefix, counter = os.urandom(8), iter(range(1 << 62))
            nonce = lambda: prefix + next(counter).to_bytes(8, "big")  # noqa: E731
        self._nonce = nonce
        self.timeout_s, self.max_attempts, self.slots = timeout_s, max_attempts, slots_per_node
        self.cooldown_s, self.verify_transcripts = cooldown_s, verify_transcripts
        self.backoff_s, self.job_budget_s = backoff_s, job_budget_s
        self.stats: Counter[str] = Counter()
        self.live: Callable[[str], bool] | None = live if live is not None else getattr(executor, "live", None)
        self.placement = Placement(
            availability=availability, min_availability=min_availability, stake=stake, min_stake=min_stake, stats=self.stats
        )
        self._cards: dict[str, NodeCard] = {}
        self._load: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._streak: Counter[str] = Counter()  # consecutive faults per node (sets its suspension)
        self._suspended: dict[str, float] = {}
        self._guard = ReplayGuard()
        self._lock = threading.Lock()
        store = getattr(executor, "blob_store", None)
        #: Puts HE tasks' large inputs into the executor's R1FS store and sends their CIDs (None: all inline).
        self.blobs = None if store is None else TaskBlobs(store)
        #: CPU seconds the coordinator thread spent in submit/run (its own scheduling, journaling,
        #: sealing and checking cost; waiting for nodes is not CPU time).
        self.cpu_s = 0.0

    # --- nodes ----------------------------------------------------------------------------------
    @property
    def coordinator_keys(self) -> CoordinatorKeys:
        return CoordinatorKeys(self.identity.verify_key, self.identity.box_key, self.domain)

    def add_node(self, card: NodeCard) -> None:
        """Admit a node: its card must verify and the registry must list its address.

        Raises:
            VerificationError: the card's binding signature is bad.
            AuthorizationError: the registry does not list the address (dAuth).
        """
        card.verify()
        if not self.registry.is_admitted(card.address):
            self.stats["refused_nodes"] += 1
            raise AuthorizationError(f"node {card.address} is not admitted by the registry")
        self._cards[card.address] = card

    def launch(self, config: NodeConfig) -> NodeCard:
        """Start a node on the executor and admit it (see :meth:`add_node`)."""
        card = self.executor.launch(config, self.coordinator_keys)
        self.add_node(card)
        return card

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self._cards.copy())

    def card(self, address: str) -> NodeCard:
        """The admitted node's verified card (its public keys and capabilities).

        Raises:
            AuthorizationError: ``address`` is not a node admitted to this scheduler.
        """
        for addr, card in tuple(self._cards.items()):  # a snapshot: another thread may add a node meanwhile
            if addr.lower() == address.lower():
                return card
        raise AuthorizationError(f"node {address} is not admitted to this scheduler")

    def _eligible(
        self, needs_gpu: bool, exclude: set[str], *, respect_slots: bool = True, pin: str = "", respect_suspension: bool = True
    ) -> list[str]:
        now = time.monotonic()
        out = []
        for addr, card in self._cards.items():
            if pin and addr.lower() != pin.lower():
                continue
            if addr in exclude or (respect_suspension and self._suspended.get(addr, 0.0) > now):
                continue
            if respect_suspension and not self._live(addr):  # stale heartbeats: like a suspension, until it beats again
                self.stats["skipped_stale"] += 1
                continue
            if needs_gpu and not card.capabilities.gpu:
                continue
            if respect_slots and self._load[addr] >= self.slots:
                continue
            if not self.registry.is_admitted(addr):  # revocation takes effect at once
                self.stats["skipped_revoked"] += 1
                continue
            out.append(addr)
        return self.placement.rank(out, load=self._load, failures=self._failures)

    def _live(self, addr: str) -> bool:
        return self.live is None or bool(self.live(addr))

    def _suspend(self, addr: str, why: str) -> None:
        self._failures[addr] += 1
        self._streak[addr] += 1
        self._suspended[addr] = time.monotonic() + self._backoff(self._streak[addr])
        self.stats[why] += 1

    def _backoff(self, n: int) -> float:
        """``backoff_s * 2^(n-1)``, at most ``cooldown_s``: the pause after the ``n``-th fault in a row."""
        return min(self.cooldown_s, self.backoff_s * 2.0 ** min(n - 1, 60))

    # --- messages --------------------------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _send(self, addr: str, kind: str, body: Any) -> Future[bytes]:
        env = seal_envelope(
            kind,
            body,
            signing_key=self.identity.signing,
            recipient_box_key=self._cards[addr].box_key,
            nonce=self._nonce(),
            now_ms=self._now_ms(),
        )
        self.stats["sent"] += 1
        self.stats["bytes_sent"] += len(env)
        return self.executor.submit(addr, env)

    def _open(self, addr: str, reply: bytes, kinds: tuple[str, ...]) -> Message:
        self.stats["bytes_received"] += len(reply)
        return open_envelope(
            reply,
            box_key=self.identity.box,
            trusted=(self._cards[addr].signing_key,),
            guard=self._guard,
            now_ms=self._now_ms(),
            kinds=kinds,
        )

    def _check_transcript(self, addr: str, record: Any, job_id: bytes, epoch: int, params: bytes, model: bytes, inp: bytes, output: bytes, work: int,
                          *, output_commitment: bytes | None = None) -> bytes:
        st = transcript_from_wire(record)
        t = st.transcript
        ok = t.node.lower() == addr.lower() and t.epoch == epoch and t.work_units == work
        out_c = commit_bytes(output) if output_commitment is None else output_commitment  # the caller's, hashed once
        for a, b in ((t.job_id, job_id), (t.scheme_params_hash, params), (t.model_commitment, model), (t.input_commitment, inp), (t.output_commitment, out_c)):
            ok &= consteq(a, b)
        if not ok:
            raise VerificationError("transcript does not match the task or the returned output")
        if self.verify_transcripts:
            verify_transcript(st, self.domain, expected_signer=addr)
        return _wire.dumps(record)

    def _task_wire(self, task: Task, addr: str, job_id: bytes | None = None) -> Any:
        """The task as sent to ``addr``: large HE inputs by R1FS CID when the executor has a store."""
        if self.blobs is None:
            return task.to_wire()
        pin = task.node.lower()
        boxes = [c.box_key for a, c in self._cards.items() if not pin or a.lower() == pin]
        try:
            return self.blobs.wire(task, self._cards[addr].box_key, boxes, job=job_id)
        except EdilError:  # the store is away: the inputs travel inline, as sealed as ever
            self.stats["blob_fallbacks"] += 1
            return task.to_wire()

    # --- jobs -----------------------------------------------------------------------------------
    def submit(self, task: Task, *, job_id: bytes | str | None = None, redundancy: int = 1) -> bytes:
        """Journal a task; returns its 32-byte job id (idempotent for a given ``job_id``).

        Raises:
            UnsupportedOperationError: the task does not declare what it sends in the clear
                (:meth:`Task.check_disclosure`); nothing is journaled.
        """
        return self.submit_many([task], job_ids=None if job_id is None else [job_id], redundancy=redundancy)[0]

    def submit_many(self, tasks: Sequence[Task], *, job_ids: Sequence[bytes | str] | None = None, redundancy: int = 1) -> list[bytes]:
        """Journal several tasks in one transaction."""
        t0 = time.thread_time()
        try:
            return self._submit_many(tasks, job_ids, redundancy)
        finally:
            self.cpu_s += time.thread_time() - t0

    def _submit_many(self, tasks: Sequence[Task], job_ids: Sequence[bytes | str] | None, redundancy: int) -> list[bytes]:
        if redundancy < 1:
            raise ParameterError("redundancy must be >= 1")
        ids = [self._job_id(j) for j in job_ids] if job_ids is not None else [self._job_id(None) for _ in tasks]
        if len(ids) != len(tasks):
            raise ParameterError("one job id per task")
        for t in tasks:
            if not isinstance(t, Task):
                raise UnsupportedOperationError(f"expected Task, got {type(t).__name__}")
            t.check_disclosure()
        self.journal.add_many([(j, "task", t.to_bytes(), redundancy) for j, t in zip(ids, tasks)])
        return ids

    def _job_id(self, job_id: bytes | str | None) -> bytes:
        if job_id is None:
            return keccak256(b"EDIL/job" + self._nonce())
        if isinstance(job_id, str):
            return keccak256(job_id.encode("utf-8"))
        if not isinstance(job_id, bytes) or len(job_id) != 32:
            raise ParameterError("job_id must be 32 bytes or a str")
        return job_id

    def result(self, job_id: bytes | str, *, allow_disputed: bool = False) -> bytes:
        """The recorded output bytes of a finished job.

        Args:
            job_id: the job.
            allow_disputed: return the output even if the job is disputed (a node that produced
                it failed its PoAI audit, see :meth:`status`).

        Raises:
            RuntimeTaskError: the job failed or is not finished.
            VerificationError: the job is disputed (the message names why) and ``allow_disputed`` is false.
        """
        jid = self._job_id(job_id)
        rec = self.journal.result(jid)
        if rec is None:
            job = self.journal.job(jid, spec=False)
            raise RuntimeTaskError(f"job {jid.hex()[:16]} has no result ({'unknown' if job is None else job.status}: {job and job.error})")
        if not allow_disputed:
            job = self.journal.job(jid, spec=False)  # status and dispute only: the spec is megabytes for an HE task
            if job is not None and job.disputed:
                raise VerificationError(f"the result of job {jid.hex()[:16]} is disputed: {job.disputed}")
        return rec.output

    def status(self, job_id: bytes | str) -> JobRecord:
        """The job's journal record: status, attempts, error and ``disputed`` (why its result is
        disputed, ``None`` when it is not).

        Raises:
            ParameterError: the journal does not know the job.
        """
        jid = self._job_id(job_id)
        job = self.journal.job(jid)
        if job is None:
            raise ParameterError(f"unknown job {jid.hex()}")
        return job

    def results(self) -> list[ResultRecord]:
        return self.journal.results()

    def retry(self, job_id: bytes | str) -> bool:
        """Put a failed job back to ``pending``; the next :meth:`run` places it afresh.

        Returns:
            ``True`` if the job had failed and is pending again; ``False`` if it is pending or
            done (a finished job is never re-run).

        Raises:
            ParameterError: the journal does not know the job.
        """
        jid = self._job_id(job_id)
        if self.journal.job(jid) is None:
            raise ParameterError(f"unknown job {jid.hex()}")
        return self.journal.retry(jid)

    def retry_failed(self) -> list[bytes]:
        """Put every failed job back to ``pending`` (e.g. after an outage); returns their ids."""
        return self.journal.retry_failed()

    def run(self, *, timeout_s: float | None = None) -> dict[str, int]:
        """Run every pending job of the journal to completion (or failure).

        Args:
            timeout_s: overall bound; jobs still pending then stay pending in the journal.

        Returns:
            The journal's job counts by status.
        """
        t0 = time.thread_time()
        try:
            return self._run(timeout_s)
        finally:
            self.cpu_s += time.thread_time() - t0

    def _run(self, timeout_s: float | None) -> dict[str, int]:
        overall = None if timeout_s is None else time.monotonic() + timeout_s
        pending = self.journal.pending()
        for rec in pending:
            if rec.kind == "masked":
                self._resume_masked(rec)
        jobs = self._jobs([r for r in pending if r.kind == "task"])
        inflight: dict[Future[bytes], tuple[bytes, str, float]] = {}
        ready: deque[bytes] = deque(jobs)  # jobs that may need another dispatch
        stalled: dict[bytes, None] = {}  # jobs that found no free eligible node last time
        wake: list[tuple[float, bytes]] = []  # heap of (monotonic time, job): backing off, or waiting for a suspension to end
        try:
            while jobs:
                now = time.monotonic()
                if overall is not None and now > overall:
                    break
                epoch = self.epoch()
                while wake and wake[0][0] <= now:
                    ready.append(heapq.heappop(wake)[1])
                capacity = self.slots * len(self._cards)
                if capacity == 0:  # no node at all: nothing can ever run
                    for lost in list(jobs.values()):
                        self._give_up(lost, jobs)
                    break
                if stalled and len(inflight) < capacity:
                    ready.extend(stalled)
                    stalled.clear()
                free = capacity - len(inflight)
                while ready and free > 0:
                    jid = ready.popleft()
                    job = jobs.get(jid)
                    if job is None:
                        continue
                    if job.not_before > now:
                        heapq.heappush(wake, (job.not_before, jid))
                        continue
                    cands = [""]
                    while job.outstanding + len(job.replies) < job.needed and free > 0 and not self._spent(job, now):
                        cands = self._candidates(job)
                        if not cands:
                            break
                        addr = cands[0]
                        fut = self._send(addr, "task", {"job_id": jid, "epoch": epoch, "task": self._task_wire(job.task, addr, jid)})
                        job.tried.add(addr)
                        job.outstanding += 1
                        job.dispatches += 1
                        job.started = now if job.started is None else job.started
                        free -= 1
                        self._load[addr] += 1
                        inflight[fut] = (jid, addr, time.monotonic() + self.timeout_s)
                    if job.outstanding + len(job.replies) >= job.needed:
                        continue
                    if job.outstanding > 0:
                        if not cands:
                            stalled[jid] = None  # more replicas go out when a node frees up
                        continue
                    self._place_later(job, jobs, now, stalled, wake)
                if not inflight:
                    if ready:
                        continue
                    if wake:  # nothing runs: sleep until a backoff or a suspension ends
                        until = wake[0][0] if overall is None else min(wake[0][0], overall)
                        time.sleep(max(0.0, until - time.monotonic()))
                        continue
                    for jid in list(stalled):  # nothing runs and nothing can be placed
                        if jid in jobs:
                            self._give_up(jobs[jid], jobs)
                    stalled.clear()
                    continue
                now = time.monotonic()
                next_deadline = min(d for _, _, d in inflight.values())
                if wake:
                    next_deadline = min(next_deadline, wake[0][0])
                for jid, _, _ in inflight.values():  # while the nodes work: hash what their transcripts must commit to
                    if jid in jobs:
                        jobs[jid].task.commitments()
                done, _ = wait(list(inflight), timeout=max(0.0, next_deadline - now), return_when=FIRST_COMPLETED)
                now = time.monotonic()
                for fut in [f for f, (_, _, d) in inflight.items() if f in done or d <= now]:
                    jid, addr, _ = inflight.pop(fut)
                    self._load[addr] -= 1
                    job = jobs.get(jid)
                    if fut not in done:  # abandoned: a late reply is never opened
                        fut.cancel()
                        if job is None:
                            self._suspend(addr, "timeouts")
                        else:
                            self._fault(job, addr, "timeouts", f"no reply within {self.timeout_s:g} s", now)
                    if job is None:
                        continue
                    job.outstanding -= 1
                    if fut in done:
                        self._on_reply(job, addr, fut, epoch, jobs, now)
                    if jid in jobs and job.outstanding + len(job.replies) < job.needed:
                        ready.append(jid)
        finally:  # an exception (a chain outage, say) leaves no node counted busy with abandoned work
            for fut, (_, addr, _) in inflight.items():
                fut.cancel()
                self._load[addr] -= 1
        return self.journal.counts()

    def _jobs(self, records: Sequence[Any]) -> dict[bytes, _Job]:
        jobs = {}
        for r in records:
            try:
                jobs[r.job_id] = _Job(r.job_id, Task.from_bytes(r.spec), r.redundancy, queued=time.monotonic())
            except SerializationError as exc:  # a record that does not decode fails alone
                self.journal.fail(r.job_id, f"the journaled task does not decode: {exc}")
                self.stats["failed_jobs"] += 1
        return jobs

    def _spent(self, job: _Job, now: float) -> bool:
        """Whether the job's budget (dispatches, and seconds when ``job_budget_s`` is set) is spent."""
        if job.dispatches >= job.needed + self.max_attempts - 1:
            return True
        return self.job_budget_s is not None and job.started is not None and now - job.started > self.job_budget_s

    def _candidates(self, job: _Job) -> list[str]:
        cands = self._eligible(job.task.needs_gpu, job.tried, pin=job.task.node)
        if job.faulted:  # elsewhere first: a node that already faulted on this job only when no other is free
            cands.sort(key=lambda a: a in job.faulted)
        return cands

    def _place_later(self, job: _Job, jobs: dict[bytes, _Job], now: float, stalled: dict[bytes, None], wake: list[tuple[float, bytes]]) -> None:
        """A job with nothing in flight that could not be dispatched now: wait, or fail it."""
        if self._spent(job, now):
            took = "" if job.started is None else f" in {now - job.started:.1f} s"
            job.errors.append(f"budget spent: {job.dispatches} dispatches{took}")
            self._give_up(job, jobs)
            return
        later = self._eligible(job.task.needs_gpu, job.tried, respect_slots=False, pin=job.task.node, respect_suspension=False)
        if not later:  # no node will ever take it (revoked, incapable, or every node answered it)
            self._give_up(job, jobs)
            return
        mono = time.monotonic()
        stale = [a for a in later if not self._live(a)]
        if self.job_budget_s is not None and len(stale) == len(later):
            # No candidate is live: without this the job would wait for a heartbeat until run's timeout.
            if mono - job.queued >= self.job_budget_s:
                named = ", ".join(stale[:8]) + (f" and {len(stale) - 8} more" if len(stale) > 8 else "")
                job.errors.append(f"no live node within the job's {self.job_budget_s:g} s budget: stale heartbeats from {named}")
                self._give_up(job, jobs)
                return
            heapq.heappush(wake, (min(mono + STALE_RECHECK_S, job.queued + self.job_budget_s), job.job_id))
            return
        at = min(max(mono, self._suspended.get(a, 0.0)) if self._live(a) else mono + STALE_RECHECK_S for a in later)
        if at <= mono:
            stalled[job.job_id] = None  # only busy: retried when a slot frees
        elif self.job_budget_s is not None and job.started is not None and at - job.started > self.job_budget_s:
            job.errors.append(f"every node that could run it is suspended beyond the job's {self.job_budget_s:g} s budget")
            self._give_up(job, jobs)
        else:
            heapq.heappush(wake, (at, job.job_id))  # every candidate is suspended: wait for the first to return

    def _give_up(self, job: _Job, jobs: dict[bytes, _Job]) -> None:
        reason = "; ".join(job.errors) or "no eligible node"
        self.journal.fail(job.job_id, f"no node completed the task: {reason}")
        self.stats["failed_jobs"] += 1
        jobs.pop(job.job_id, None)
        self._release_blobs(job.job_id)

    def _fault(self, job: _Job, addr: str, why: str, error: str, now: float) -> None:
        """A node fault on ``job``: suspend the node, back the job off, let it go elsewhere."""
        job.errors.append(f"{addr}: {error}")
        if not job.task.node:  # a pinned task has nowhere else to go: it fails, and its owner decides (e.g. a federated round)
            job.tried.discard(addr)
        job.faulted.add(addr)
        job.faults += 1
        job.not_before = max(job.not_before, now + self._backoff(job.faults))
        self._suspend(addr, why)

    def _refused(self, job: _Job, addr: str, body: Any, jobs: dict[bytes, _Job]) -> None:
        """A node's signed ``error`` reply: the task could not run there."""
        cls, text = body["error"], body["message"]
        if not isinstance(cls, str) or not cls.isidentifier() or len(cls) > 64 or not isinstance(text, str):
            raise SerializationError("malformed error reply")
        text = text[:500]
        self.stats["error_replies"] += 1
        job.errors.append(f"{addr}: {cls}: {text}")
        job.refusals[addr] = cls
        agree = sorted(a for a, c in job.refusals.items() if c == cls)
        if not job.replies and (len(agree) >= 2 or job.task.node):
            # The same task failed with the same error class on two nodes (or on the only node
            # it may run on) and ran nowhere: the task is at fault, not the nodes, so none is
            # suspended. Two nodes must agree so that one lying node cannot fail a job.
            where = "on its pinned node" if len(agree) < 2 else f"on {len(agree)} nodes"
            self.journal.fail(job.job_id, f"the task fails deterministically ({where}): {cls}: {text}")
            self.stats["deterministic_failures"] += 1
            self.stats["failed_jobs"] += 1
            jobs.pop(job.job_id, None)
            self._release_blobs(job.job_id)

    def _on_reply(self, job: _Job, addr: str, fut: Future[bytes], epoch: int, jobs: dict[bytes, _Job], now: float) -> None:
        try:
            msg = self._open(addr, fut.result(), ("result", "error"))
            body = msg.body
            if not consteq(_field_bytes(body, "job_id"), job.job_id):
                raise VerificationError("reply is for another job")
            if msg.kind == "error":
                self._refused(job, addr, body, jobs)
                return
            output = _field_bytes(body, "output")
            out_c = commit_bytes(output)
            t = job.task
            rec = self._check_transcript(
                addr, body["transcript"], job.job_id, epoch, *t.commitments(), output, t.work_units, output_commitment=out_c
            )
        except (EdilError, KeyError, TypeError, ValueError, RuntimeError, OSError, Exception) as exc:  # noqa: BLE001 - any node failure
            why = "bad_replies" if isinstance(exc, VerificationError | SerializationError) else "node_errors"
            self._fault(job, addr, why, f"{type(exc).__name__}: {exc}", now)
            return
        self._streak[addr] = 0
        self.stats["replies"] += 1
        job.replies[addr] = (output, out_c, rec)
        if len(job.replies) >= job.needed:
            self._decide(job, epoch, jobs)

    def _decide(self, job: _Job, epoch: int, jobs: dict[bytes, _Job]) -> None:
        groups: dict[bytes, list[str]] = {}
        for addr, (_, c, _) in job.replies.items():
            for key in groups:
                if consteq(key, c):
                    groups[key].append(addr)
                    break
            else:
                groups[c] = [addr]
        best_c, best = max(groups.items(), key=lambda kv: len(kv[1]))
        total = len(job.replies)
        unanimous = len(best) == total
        majority = len(best) * 2 > total and len(best) >= 2
        if not (unanimous or majority):
            self.stats["disagreements"] += 1
            if not self._eligible(job.task.needs_gpu, job.tried, respect_slots=False, pin=job.task.node):
                job.errors.append("replicas disagree and no node is left to break the tie")
                self._give_up(job, jobs)
            else:
                job.needed = total + 1  # ask a tie-breaker
            return
        losers = [a for a in job.replies if a not in best]
        output = job.replies[best[0]][0]
        transcripts = [(a, job.replies[a][2], a in best) for a in job.replies]
        if self.journal.complete(job.job_id, output=output, output_commitment=best_c, nodes=sorted(best), epoch=epoch, transcripts=transcripts):
            self.stats["completed"] += 1
        else:
            self.stats["duplicate_completions"] += 1
        for a in losers:
            self.journal.record_fault(a, epoch, job.job_id, "output disagrees with the redundant majority")
            self._suspend(a, "byzantine")
        for a in job.refusals:  # other nodes ran the task: its failure there was the node's
            self._suspend(a, "node_errors")
        jobs.pop(job.job_id, None)
        self._release_blobs(job.job_id)

    def _release_blobs(self, job_id: bytes) -> None:
        """The job's result or failure is journaled: unpin the R1FS files only it still used (``gc`` removes them)."""
        if self.blobs is not None:
            self.stats["blob_unpins"] += self.blobs.release(job_id)

    # --- Masked: one share per node -------------------------------------------------------------
    def run_masked(
        self,
        scheme: Any,
        model: Any,
        x: Any,
        *,
        model_public: bool = False,
        check: str = "replay",
        job_id: bytes | str | None = None,
        key: bytes | None = None,
    ) -> Any:
        """Masked inference with party ``i``'s share on the ``i``-th of ``n`` distinct nodes.

        Nodes exchange only openings, relayed by this coordinator (also the dealer). Every
        attempt re-randomises the input sharing and shares private weights afresh, so no node
        ever holds two shares of one sharing (see :mod:`edil.runtime._mpc_session`). A party
        that fails, times out or is caught deviating restarts the session on a new node set.

        Args:
            scheme: the :class:`~edil.Masked` scheme that shared ``x``.
            model: a :class:`~edil.models.Sequential`.
            x: a :class:`~edil.SharedTensor` of shape ``(batch, in_features)``.
            model_public: send the weights in the clear (the owner declares the model public);
                by default every dense layer is shared among the parties.
            check: ``"replay"`` (default) replays every party from its view before the job is
                done, catching a deviating party within the job; ``"none"`` leaves it to the
                epoch audits.
            job_id: optional job id (idempotent).
            key: secret seed of the job's randomness (>= 16 bytes; fresh random by default).

        Returns:
            The output as a :class:`~edil.SharedTensor` of ``scheme`` (``scheme.decode`` it).

        Raises:
            RuntimeTaskError: fewer than ``n`` eligible nodes, or every attempt failed.
            EncodingError: a weight the fixed-point encoding cannot hold.
        """
        job = new_masked_job(scheme, model, x, model_public=model_public, key=key, check=check)
        jid = self._job_id(job_id)
        self.journal.add(jid, "masked", job.to_bytes())
        rec = self.journal.job(jid)
        if rec is not None and rec.status == "pending":
            run_masked_job(self, rec)
        return masked_output(scheme, jid, self.result(jid))

    def _resume_masked(self, rec: Any) -> None:
        run_masked_job(self, rec)

    # --- Replicated: one party per node, no dealer ------------------------------------------------
    def run_replicated(self, scheme: Any, model: Any, x: Any, *, output: str = "logits",
                       job_id: bytes | str | None = None, key: bytes | None = None) -> Any:
        """Replicated (3-party, no dealer) inference with party ``i`` on the ``i``-th of three nodes.

        Each node draws its own X25519 key and agrees its two pairwise keys with its neighbours;
        this coordinator relays their public keys and their messages, sealed under those keys,
        and never learns them (:mod:`edil.runtime._replicated_session`). Weights are public.

        Args:
            scheme: the :class:`~edil.Replicated` scheme that shared ``x``.
            model: a :class:`~edil.models.Sequential`.
            x: a tensor of ``scheme`` of shape ``(batch, in_features)``.
            output: ``"logits"`` or ``"argmax"`` (a shared one-hot of the first largest output).
            job_id: optional job id.
            key: secret seed of the sessions' input re-sharing (>= 16 bytes; fresh random by default).

        Returns:
            The output as a tensor of ``scheme`` (``scheme.decode`` it).

        Raises:
            RuntimeTaskError: fewer than three eligible nodes, or every attempt failed.
            ValueError: an unknown ``output``, or (a ParameterError) a short ``key``.
        """
        if key is None:
            key = os.urandom(32)
        if not isinstance(key, bytes) or len(key) < 16:
            raise ParameterError("key must be at least 16 secret bytes")
        return run_replicated_job(self, scheme, model, x, output=output, job_id=self._job_id(job_id), key=key)
