"""dAuth views: which chain addresses the registry admits right now.

:class:`Registry` is the one question the runtime asks; :class:`StaticRegistry` answers it from
memory (tests, single-operator setups) and :class:`ChainRegistry` from the on-chain NodeRegistry,
cached with a bounded staleness.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from edil import ChainError, ParameterError
from edil.proofs import ChainUnavailableError

__all__ = ["ChainRegistry", "Registry", "StaticRegistry"]


class Registry(Protocol):
    """The dAuth view the runtime needs: is this chain address admitted right now?"""

    def is_admitted(self, address: str) -> bool: ...


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


class ChainRegistry:
    """The on-chain NodeRegistry as a :class:`Registry`, read through a cached view of the admitted set.

    Licences. With licensing on, the registry counts a node only while it is bound to a live
    operator licence, so the view also replays the registry's ``LicensingSet`` and
    ``NodeLicensed`` events (the licence contract reports every binding, unbinding and revocation
    to the registry; revoking a licence emits one per node it held): an unbinding or a licence
    revocation takes a node out of the view as a revocation does.

    Cost. The view is rebuilt from the registry's ``NodeAdmitted``/``NodeRevoked`` events (and the
    licensing events above, read in the same request): one
    refresh is one ``eth_blockNumber`` and one ``eth_getLogs`` for the blocks since the previous
    refresh (more only for a range wider than ``max_log_blocks``), whatever the number of nodes.
    Between refreshes :meth:`is_admitted` is a set lookup, so a scheduler that checks every
    node before every dispatch costs the chain nothing per task.

    Staleness. A view is used for at most ``ttl_s`` seconds (default 2 s) after the refresh that
    built it; the next answer refreshes first. A node revoked on chain therefore gets no new task
    once ``ttl_s`` has passed since the revocation was mined (plus the duration of one refresh);
    an admission is seen within the same bound. ``ttl_s=0`` refreshes before every answer.

    Reorganisations. Events of the last ``reorg_depth`` blocks are read again at every refresh on
    top of a snapshot that leaves them out, so an admission or revocation that a reorganisation
    removes (no deeper than ``reorg_depth``) is undone in the view too. The default is the chain's
    own ``reorg_depth`` (0 for the in-process EVM, 12 for a JSON-RPC chain unless configured).

    Outages (fail closed). A refresh that fails with a :class:`~edil.ChainError` does not
    propagate: the last good view keeps answering while it is younger than ``max_stale_s``
    (default 60 s), and the refresh is retried after a backoff (``max(ttl_s, 1 s)``, doubling, at
    most 30 s) so a frozen node does not cost a request deadline per answer. During an outage the
    revocation bound is therefore ``max_stale_s``, not ``ttl_s``. Once the view is
    older than ``max_stale_s`` (or if no refresh ever succeeded) no node is admitted: every
    answer raises :class:`~edil.proofs.ChainUnavailableError` until a refresh succeeds. Raising,
    rather than answering ``False``, keeps an outage apart from a revocation: the scheduler
    dispatches nothing, its jobs stay pending in the journal instead of failing for want of an
    admitted node, and :meth:`Scheduler.run` can be called again once the chain is back.

    Args:
        deployment: an ``edil.proofs.Deployment`` (``chain.block_number()`` and
            ``membership_events(from_block, to_block)`` are used).
        ttl_s: largest age of the view an answer may come from (seconds, >= 0).
        max_stale_s: largest age of the last good view served while refreshes fail (>= ``ttl_s``;
            default 60 s, or ``ttl_s`` if larger).
        reorg_depth: blocks re-read at every refresh in case a reorganisation replaced them
            (default: ``deployment.chain.reorg_depth``, else 12).
        max_log_blocks: widest block range asked in one ``eth_getLogs`` request.
        from_block: first block that can hold a registry event (default: the deployment's
            ``deploy_block`` when it has one, else 0).
        clock: monotonic seconds (injected in tests).
    """

    MAX_BACKOFF_S = 30.0

    def __init__(
        self,
        deployment: Any,
        *,
        ttl_s: float = 2.0,
        max_stale_s: float | None = None,
        reorg_depth: int | None = None,
        max_log_blocks: int = 5_000,
        from_block: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("ttl_s", ttl_s), ("max_stale_s", 60.0 if max_stale_s is None else max_stale_s)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ParameterError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        if max_stale_s is None:
            max_stale_s = max(60.0, ttl_s)
        if max_stale_s < ttl_s:
            raise ParameterError("max_stale_s must be >= ttl_s")
        start = getattr(deployment, "deploy_block", 0) if from_block is None else from_block
        if reorg_depth is None:
            reorg_depth = getattr(getattr(deployment, "chain", None), "reorg_depth", 12)
        for name, value in (("reorg_depth", reorg_depth), ("max_log_blocks", max_log_blocks), ("from_block", start)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ParameterError(f"{name} must be an int >= 0, got {value!r}")
        if max_log_blocks < 1:
            raise ParameterError("max_log_blocks must be >= 1")
        self.deployment = deployment
        self.ttl_s, self.max_stale_s = float(ttl_s), float(max_stale_s)
        self.reorg_depth, self.max_log_blocks, self.from_block = reorg_depth, max_log_blocks, start
        self._clock = clock
        self._lock = threading.Lock()
        # Events older than the reorg window, applied: ("admitted", node), ("licensed", node) and
        # ("licensing", "") (whether a licence is required).
        self._final: dict[tuple[str, str], bool] = {}
        self._final_block = start - 1  # last block whose events are in _final
        self._head = -1  # head block of the last successful refresh
        self._admitted: frozenset[str] = frozenset()
        self._fresh_at: float | None = None  # clock time of the last successful refresh
        self._retry_at = -math.inf
        self._failures = 0
        #: successful refreshes, failed refreshes, and JSON-RPC requests the refreshes made.
        self.refreshes = 0
        self.failed_refreshes = 0
        self.requests = 0
        #: the failure of the last refresh (``None`` after a successful one).
        self.last_error: ChainError | None = None

    def is_admitted(self, address: str) -> bool:
        """Whether ``address`` is admitted in a view at most ``ttl_s`` old (see the class docstring).

        Raises:
            ChainUnavailableError: the chain could not be read for more than ``max_stale_s`` (or
                never was); no node counts as admitted.
        """
        with self._lock:
            now = self._clock()
            if (self._fresh_at is None or now - self._fresh_at >= self.ttl_s) and now >= self._retry_at:
                self._refresh(now)
            if self._fresh_at is None or now - self._fresh_at > self.max_stale_s:
                age = "no view was ever read" if self._fresh_at is None else f"the last view is {now - self._fresh_at:.1f} s old"
                raise ChainUnavailableError(
                    f"the node registry cannot be read ({age}, bound {self.max_stale_s:g} s): {self.last_error}",
                    reason="registry view too stale",
                )
            return address.lower() in self._admitted

    def admitted(self) -> frozenset[str]:
        """The admitted addresses (lower case) of the current view, refreshing it as :meth:`is_admitted` does."""
        self.is_admitted("")
        return self._admitted

    def _refresh(self, now: float) -> None:
        try:
            self._read_events()
        except ChainError as exc:
            self.failed_refreshes += 1
            self._failures += 1
            self.last_error = exc
            backoff = min(max(self.ttl_s, 1.0) * 2 ** (self._failures - 1), self.MAX_BACKOFF_S)
            self._retry_at = now + backoff
            return
        self.refreshes += 1
        self._failures = 0
        self._retry_at = -math.inf
        self.last_error = None
        # The view is as old as the moment the refresh started: a revocation mined after that
        # instant may be missing from it.
        self._fresh_at = now

    def _read_events(self) -> None:
        dep = self.deployment
        head = dep.chain.block_number()
        self.requests += 1
        if head < self._head - self.reorg_depth:
            # The chain went back further than any reorganisation we allow for (a development
            # chain reset or reverted to a snapshot): rebuild the view from the first block.
            self._final, self._final_block = {}, self.from_block - 1
        final = dict(self._final)
        view = dict(self._final)
        settled = min(max(head - self.reorg_depth, self._final_block), head)
        lo = self._final_block + 1
        while lo <= head:
            hi = min(head, lo + self.max_log_blocks - 1)
            events = dep.membership_events(lo, hi)
            self.requests += 1
            for block, _index, kind, address, flag in events:
                key = (kind, "" if kind == "licensing" else address.lower())
                view[key] = flag
                if block <= settled:
                    final[key] = flag
            lo = hi + 1
        self._final, self._final_block = final, max(self._final_block, settled)
        required = view.get(("licensing", ""), False)
        self._admitted = frozenset(
            node
            for (kind, node), ok in view.items()
            if kind == "admitted" and ok and (not required or view.get(("licensed", node), False))
        )
        self._head = head
