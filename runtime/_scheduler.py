"""The scheduler: dAuth-gated placement, redundancy, retries and the durable journal.

Flow of one job: :meth:`Scheduler.submit` journals it (``pending``); :meth:`Scheduler.run`
places it on eligible nodes (admitted by the registry *now*, capable, not suspended, least
loaded), seals it to each, waits with a timeout, authenticates each reply (Ed25519 key of the
node it was sent to, fresh nonce), checks the node's transcript against the task and the
returned output, compares output commitments across the ``redundancy`` replicas in constant
time, and records the result once in the journal. A node that raises, times out or sends an
unverifiable reply is suspended and the job goes elsewhere. When replicas disagree the
majority wins (a tie asks one more node); nodes in the minority are recorded as faulty for
the epoch, and their transcripts are kept with ``agreed = False`` for the audit to void.

Transcript signatures (secp256k1, ~0.3 ms to verify with libsecp256k1) are checked when an epoch batch is
built (:mod:`edil.runtime._epochs`), not on the hot path: a reply is already authenticated by
the node's Ed25519 key, which its card binds to its chain address.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edil import AuthorizationError, EdilError, RuntimeTaskError, SerializationError, VerificationError

from . import _wire
from ._availability import Registry
from ._deps import Eip712Domain, commit_bytes, commit_json, consteq, keccak256, verify_transcript
from ._executor import CoordinatorKeys, Executor, NodeConfig
from ._identity import CoordinatorIdentity, NodeCard
from ._journal import Journal, ResultRecord
from ._mpc import deal, dealer_seed, material_to_wire, open_contributions, plan
from ._node import transcript_from_wire
from ._task import Task, array_from_bytes, array_to_bytes, model_from_bytes, model_to_bytes
from ._transport import Message, ReplayGuard, open_envelope, seal_envelope

__all__ = ["Scheduler", "StaticRegistry"]


class StaticRegistry:
    """An in-memory dAuth registry: the double for tests and single-operator setups."""

    def __init__(self, addresses: Iterable[str] = ()) -> None:
        self._admitted = {a.lower() for a in addresses}

    def admit(self, address: str) -> None:
        self._admitted.add(address.lower())

    def revoke(self, address: str) -> None:
        self._admitted.discard(address.lower())

    def is_admitted(self, address: str) -> bool:
        return address.lower() in self._admitted


@dataclass
class _Job:
    job_id: bytes
    task: Task
    needed: int
    tried: set[str] = field(default_factory=set)
    outstanding: int = 0
    replies: dict[str, tuple[bytes, bytes, bytes]] = field(default_factory=dict)  # addr -> (output, commitment, transcript)
    dispatches: int = 0
    errors: list[str] = field(default_factory=list)


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
        timeout_s: per-dispatch reply timeout.
        max_attempts: dispatches allowed per job beyond its redundancy.
        slots_per_node: jobs in flight per node.
        cooldown_s: how long a failed node is suspended.
        verify_transcripts: also check each transcript's secp256k1 signature on arrival.
        availability: ``availability(address) -> [0, 1]``, e.g. the share of recent heartbeat
            slots an oracle saw (:meth:`HeartbeatMonitor.recent`); placement prefers more
            available nodes and skips those below ``min_availability``.
        min_availability: nodes less available than this get no task (default 0: none skipped).
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
        timeout_s: float = 30.0,
        max_attempts: int = 3,
        slots_per_node: int = 2,
        cooldown_s: float = 60.0,
        verify_transcripts: bool = False,
        availability: Callable[[str], float] | None = None,
        min_availability: float = 0.0,
    ) -> None:
        if max_attempts < 1 or slots_per_node < 1 or timeout_s <= 0:
            raise ValueError("max_attempts and slots_per_node must be >= 1 and timeout_s > 0")
        self.executor, self.registry, self.journal = executor, registry, journal
        self.identity, self.domain, self.epoch, self.clock = identity, domain, epoch, clock
        if nonce is None:
            prefix, counter = os.urandom(8), iter(range(1 << 62))
            nonce = lambda: prefix + next(counter).to_bytes(8, "big")  # noqa: E731
        self._nonce = nonce
        self.timeout_s, self.max_attempts, self.slots = timeout_s, max_attempts, slots_per_node
        self.cooldown_s, self.verify_transcripts = cooldown_s, verify_transcripts
        self.availability, self.min_availability = availability, float(min_availability)
        self._cards: dict[str, NodeCard] = {}
        self._load: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._suspended: dict[str, float] = {}
        self._guard = ReplayGuard()
        self._rr = 0
        self._lock = threading.Lock()
        self.stats: Counter[str] = Counter()
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
        return tuple(self._cards)

    def card(self, address: str) -> NodeCard:
        """The admitted node's verified card (its public keys and capabilities)."""
        for addr, card in self._cards.items():
            if addr.lower() == address.lower():
                return card
        raise KeyError(f"node {address} is not admitted to this scheduler")

    def _eligible(self, needs_gpu: bool, exclude: set[str], *, respect_slots: bool = True, pin: str = "") -> list[str]:
        now = time.monotonic()
        out = []
        for addr, card in self._cards.items():
            if pin and addr.lower() != pin.lower():
                continue
            if addr in exclude or self._suspended.get(addr, 0.0) > now:
                continue
            if needs_gpu and not card.capabilities.gpu:
                continue
            if respect_slots and self._load[addr] >= self.slots:
                continue
            if not self.registry.is_admitted(addr):  # revocation takes effect at once
                self.stats["skipped_revoked"] += 1
                continue
            out.append(addr)
        avail = {a: self._availability_of(a) for a in out}
        if self.min_availability > 0:
            low = [a for a in out if avail[a] < self.min_availability]
            self.stats["skipped_unavailable"] += len(low)
            out = [a for a in out if a not in low]
        self._rr += 1
        rr = self._rr
        return sorted(out, key=lambda a: (self._load[a], self._failures[a], -avail[a], (hash(a) + rr) % 997))

    def _availability_of(self, addr: str) -> float:
        if self.availability is None:
            return 1.0
        try:
            return float(self.availability(addr))
        except Exception:  # noqa: BLE001 - a broken availability view must not stop scheduling
            self.stats["availability_errors"] += 1
            return 0.0

    def _suspend(self, addr: str, why: str) -> None:
        self._failures[addr] += 1
        self._suspended[addr] = time.monotonic() + self.cooldown_s
        self.stats[why] += 1

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

    def _check_transcript(self, addr: str, record: Any, job_id: bytes, epoch: int, params: bytes, model: bytes, inp: bytes, output: bytes, work: int) -> bytes:
        st = transcript_from_wire(record)
        t = st.transcript
        ok = t.node.lower() == addr.lower() and t.epoch == epoch and t.work_units == work
        for a, b in ((t.job_id, job_id), (t.scheme_params_hash, params), (t.model_commitment, model), (t.input_commitment, inp), (t.output_commitment, commit_bytes(output))):
            ok &= consteq(a, b)
        if not ok:
            raise VerificationError("transcript does not match the task or the returned output")
        if self.verify_transcripts:
            verify_transcript(st, self.domain, expected_signer=addr)
        return _wire.dumps(record)

    # --- jobs -----------------------------------------------------------------------------------
    def submit(self, task: Task, *, job_id: bytes | str | None = None, redundancy: int = 1) -> bytes:
        """Journal a task; returns its 32-byte job id (idempotent for a given ``job_id``)."""
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
            raise ValueError("redundancy must be >= 1")
        ids = [self._job_id(j) for j in job_ids] if job_ids is not None else [self._job_id(None) for _ in tasks]
        if len(ids) != len(tasks):
            raise ValueError("one job id per task")
        for t in tasks:
            if not isinstance(t, Task):
                raise TypeError(f"expected Task, got {type(t).__name__}")
        self.journal.add_many([(j, "task", t.to_bytes(), redundancy) for j, t in zip(ids, tasks)])
        return ids

    def _job_id(self, job_id: bytes | str | None) -> bytes:
        if job_id is None:
            return keccak256(b"EDIL/job" + self._nonce())
        if isinstance(job_id, str):
            return keccak256(job_id.encode("utf-8"))
        if not isinstance(job_id, bytes) or len(job_id) != 32:
            raise ValueError("job_id must be 32 bytes or a str")
        return job_id

    def result(self, job_id: bytes | str) -> bytes:
        """The recorded output bytes of a finished job.

        Raises:
            RuntimeTaskError: the job failed or is not finished.
        """
        jid = self._job_id(job_id)
        rec = self.journal.result(jid)
        if rec is None:
            job = self.journal.job(jid)
            raise RuntimeTaskError(f"job {jid.hex()[:16]} has no result ({'unknown' if job is None else job.status}: {job and job.error})")
        return rec.output

    def results(self) -> list[ResultRecord]:
        return self.journal.results()

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
        jobs = {r.job_id: _Job(r.job_id, Task.from_bytes(r.spec), r.redundancy) for r in pending if r.kind == "task"}
        inflight: dict[Future[bytes], tuple[bytes, str, float]] = {}
        ready: deque[bytes] = deque(jobs)  # jobs that may need another dispatch
        stalled: dict[bytes, None] = {}  # jobs that found no eligible node last time
        while jobs:
            if overall is not None and time.monotonic() > overall:
                break
            epoch = self.epoch()
            if stalled and len(inflight) < self.slots * len(self._cards):
                ready.extend(stalled)
                stalled.clear()
            free = self.slots * len(self._cards) - len(inflight)
            while ready and free > 0:
                jid = ready.popleft()
                job = jobs.get(jid)
                if job is None:
                    continue
                while job.outstanding + len(job.replies) < job.needed and free > 0:
                    if job.dispatches >= job.needed + self.max_attempts - 1:
                        break
                    cands = self._eligible(job.task.needs_gpu, job.tried, pin=job.task.node)
                    if not cands:
                        stalled[jid] = None
                        break
                    addr = cands[0]
                    fut = self._send(addr, "task", {"job_id": jid, "epoch": epoch, "task": job.task.to_wire()})
                    job.tried.add(addr)
                    job.outstanding += 1
                    job.dispatches += 1
                    free -= 1
                    self._load[addr] += 1
                    inflight[fut] = (jid, addr, time.monotonic() + self.timeout_s)
                if job.outstanding == 0 and len(job.replies) < job.needed and (
                    job.dispatches >= job.needed + self.max_attempts - 1
                    or not self._eligible(job.task.needs_gpu, job.tried, respect_slots=False, pin=job.task.node)
                ):
                    stalled.pop(jid, None)
                    self._give_up(job, jobs)
            if not inflight:
                if not ready:
                    for jid in list(stalled):  # nothing runs and nothing can be placed
                        if jid in jobs:
                            self._give_up(jobs[jid], jobs)
                    stalled.clear()
                continue
            now = time.monotonic()
            next_deadline = min(d for _, _, d in inflight.values())
            done, _ = wait(list(inflight), timeout=max(0.0, next_deadline - now), return_when=FIRST_COMPLETED)
            now = time.monotonic()
            for fut in [f for f, (_, _, d) in inflight.items() if f in done or d <= now]:
                jid, addr, _ = inflight.pop(fut)
                self._load[addr] -= 1
                job = jobs.get(jid)
                if fut not in done:  # abandoned: a late reply is never opened
                    fut.cancel()
                    self._suspend(addr, "timeouts")
                    if job is not None:
                        job.errors.append(f"{addr}: timeout")
                if job is None:
                    continue
                job.outstanding -= 1
                if fut in done:
                    self._on_reply(job, addr, fut, epoch, jobs)
                if jid in jobs and job.outstanding + len(job.replies) < job.needed:
                    ready.append(jid)
        return self.journal.counts()

    def _give_up(self, job: _Job, jobs: dict[bytes, _Job]) -> None:
        reason = "; ".join(job.errors) or "no eligible node"
        self.journal.fail(job.job_id, f"no node completed the task: {reason}")
        self.stats["failed_jobs"] += 1
        jobs.pop(job.job_id, None)

    def _on_reply(self, job: _Job, addr: str, fut: Future[bytes], epoch: int, jobs: dict[bytes, _Job]) -> None:
        try:
            msg = self._open(addr, fut.result(), ("result",))
            body = msg.body
            if not consteq(bytes(body["job_id"]), job.job_id):
                raise VerificationError("reply is for another job")
            output = bytes(body["output"])
            t = job.task
            rec = self._check_transcript(
                addr, body["transcript"], job.job_id, epoch, t.params_hash, t.model_commitment, t.input_commitment, output, t.work_units
            )
        except (EdilError, KeyError, TypeError, ValueError, RuntimeError, OSError, Exception) as exc:  # noqa: BLE001 - any node failure
            job.errors.append(f"{addr}: {type(exc).__name__}: {exc}")
            self._suspend(addr, "bad_replies" if isinstance(exc, VerificationError | SerializationError) else "node_errors")
            return
        self.stats["replies"] += 1
        job.replies[addr] = (output, commit_bytes(output), rec)
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
        jobs.pop(job.job_id, None)

    # --- Masked: one share per node -------------------------------------------------------------
    def run_masked(self, scheme: Any, model: Any, x: Any, *, job_id: bytes | str | None = None, key: bytes | None = None) -> Any:
        """Masked inference with party ``i``'s share on the ``i``-th of ``n`` distinct nodes.

        Nodes exchange only openings, relayed by this coordinator (also the dealer). A party
        that fails or times out restarts the session on a new node set with fresh dealer
        randomness. The job is journaled like any other.

        Args:
            scheme: the :class:`~edil.Masked` scheme that shared ``x``.
            model: a :class:`~edil.models.Sequential` with public weights.
            x: a :class:`~edil.SharedTensor` of shape ``(batch, in_features)``.
            job_id: optional job id (idempotent).
            key: dealer seed (>= 16 bytes); fresh randomness is derived per attempt.

        Returns:
            The output as a :class:`~edil.SharedTensor` of ``scheme`` (``scheme.decode`` it).

        Raises:
            RuntimeTaskError: fewer than ``n`` eligible nodes, or every attempt failed.
        """
        shares = scheme.split(x)
        jid = self._job_id(job_id)
        spec = _wire.dumps(
            {
                "model": model_to_bytes(model),
                "n": scheme.n_parties,
                "frac_bits": scheme.frac_bits,
                "params": scheme.params,
                "shares": [array_to_bytes(s.data) for s in shares],
                "work_units": model.work_units(x.shape[0]),
                "key": key if key is not None else os.urandom(32),
            }
        )
        self.journal.add(jid, "masked", spec)
        rec = self.journal.job(jid)
        if rec is not None and rec.status == "pending":
            self._resume_masked(rec)
        return self._masked_output(scheme, jid)

    def _masked_output(self, scheme: Any, jid: bytes) -> Any:
        from edil import Share

        rec = _wire.loads(self.result(jid))
        arrays = [array_from_bytes(b) for b in (rec["shares"] if isinstance(rec, dict) else rec)]  # a list: older records
        return scheme.join([Share(scheme.scheme_id, i, len(arrays), jid[:8], a) for i, a in enumerate(arrays)])

    def _resume_masked(self, rec: Any) -> None:
        d = _wire.loads(rec.spec)
        n, f = int(d["n"]), int(d["frac_bits"])
        model = model_from_bytes(d["model"])
        shares = [array_from_bytes(s) for s in d["shares"]]
        items = plan(model, shares[0].shape[0], f)
        errors: list[str] = []
        tried: set[str] = set()
        for attempt in range(self.max_attempts):
            nodes = self._eligible(False, set(), respect_slots=False)[:n]
            if len(nodes) < n:
                errors.append(f"only {len(nodes)} eligible nodes for {n} parties")
                break
            seed = dealer_seed(bytes(d["key"]), rec.job_id, attempt)
            material = deal(items, n, f, seed=seed)
            tried.update(nodes)
            try:
                outs, openings, contribs = self._masked_session(rec.job_id, nodes, d, shares, items, material)
            except (EdilError, Exception) as exc:  # noqa: BLE001 - any party failure restarts the session
                errors.append(str(exc))
                continue
            epoch = self.epoch()
            # The record keeps what an auditor needs to replay any one party (its share, its
            # dealer material from seed and attempt, the public openings, and a commitment to
            # every contribution the party sent), see _epochs.
            output = _wire.dumps(
                {"shares": [o[0] for o in outs], "attempt": attempt, "openings": openings, "contributions": contribs}
            )
            transcripts = [(addr, o[1], True) for addr, o in zip(nodes, outs)]
            if self.journal.complete(rec.job_id, output=output, output_commitment=commit_bytes(output), nodes=nodes, epoch=epoch, transcripts=transcripts):
                self.stats["completed"] += 1
            return
        self.journal.fail(rec.job_id, "masked session failed: " + "; ".join(errors))

    def _masked_session(
        self, jid: bytes, nodes: list[str], d: dict[str, Any], shares: list[np.ndarray], items: Any, material: Any
    ) -> tuple[list[tuple[bytes, bytes]], list[bytes], list[list[bytes]]]:
        epoch = self.epoch()
        sid = keccak256(b"EDIL/mpc" + jid + self._nonce())
        params_hash, model_c = commit_json(d["params"]), commit_bytes(d["model"])
        share_bytes = [array_to_bytes(s) for s in shares]
        futs = [
            self._send(
                addr,
                "mpc_start",
                {
                    "session": sid, "job_id": jid, "epoch": epoch, "party": i, "n": int(d["n"]), "frac_bits": int(d["frac_bits"]),
                    "model": d["model"], "share": share_bytes[i], "material": material_to_wire(material[i], items),
                    "params": d["params"], "work_units": int(d["work_units"]),
                },
            )
            for i, addr in enumerate(nodes)
        ]
        openings: list[bytes] = []
        contribs: list[list[bytes]] = [[] for _ in nodes]  # per party, per round: commit of what it sent
        while True:
            msgs = []
            for addr, fut in zip(nodes, futs):
                try:
                    reply = fut.result(timeout=self.timeout_s)
                    msgs.append(self._open(addr, reply, ("mpc_contrib", "mpc_result")))
                except Exception as exc:
                    self._suspend(addr, "timeouts" if isinstance(exc, TimeoutError) else "node_errors")
                    for f in futs:
                        f.cancel()
                    raise RuntimeTaskError(f"party {addr} failed: {type(exc).__name__}: {exc}") from exc
            kinds = {m.kind for m in msgs}
            if any(not consteq(bytes(m.body["session"]), sid) for m in msgs) or len(kinds) != 1:
                raise VerificationError("parties are out of step")
            if kinds == {"mpc_result"}:
                outs = []
                for i, (addr, m) in enumerate(zip(nodes, msgs)):
                    out = bytes(m.body["output"])
                    rec = self._check_transcript(addr, m.body["transcript"], jid, epoch, params_hash, model_c, commit_bytes(share_bytes[i]), out, int(d["work_units"]))
                    outs.append((out, rec))
                return outs, openings, contribs
            for i, m in enumerate(msgs):
                contribs[i].append(commit_bytes(bytes(m.body["contribution"])))
            opened = open_contributions([array_from_bytes(m.body["contribution"]) for m in msgs])
            self.stats["openings"] += 1
            ob = array_to_bytes(opened)
            openings.append(ob)
            futs = [self._send(addr, "mpc_step", {"session": sid, "opened": ob}) for addr in nodes]
