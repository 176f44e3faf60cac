"""Placement: among the nodes that may take a task, which ones, and in what order.

The scheduler filters the hard constraints (admission by the registry, suspension, capabilities,
free slots, pinning); :class:`Placement` applies the soft policy on what is left: it drops nodes
below the minimum availability or stake, and ranks the rest by load, past failures and
availability, rotating ties so that equal nodes share the work. Views that fail count against
the node (availability 0, stake 0): placement fails closed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from edil import ParameterError

__all__ = ["Placement"]


class Placement:
    """The soft placement policy of a :class:`~edil.runtime.Scheduler`.

    Args:
        availability: ``availability(address) -> [0, 1]`` (e.g. the share of recent heartbeat
            slots an oracle saw); ``None``: every node counts as fully available.
        min_availability: nodes less available than this are skipped.
        stake: ``stake(address) -> int``, a node's bonded stake; ``None``: no stake view.
        min_stake: nodes with less bonded stake than this are skipped (needs ``stake``).
        stats: counters the policy adds to (skipped nodes, view errors).

    Raises:
        ParameterError: a negative ``min_stake``, or ``min_stake`` without a stake view.
    """

    def __init__(
        self,
        *,
        availability: Callable[[str], float] | None = None,
        min_availability: float = 0.0,
        stake: Callable[[str], int] | None = None,
        min_stake: int = 0,
        stats: Counter[str] | None = None,
    ) -> None:
        if isinstance(min_stake, bool) or not isinstance(min_stake, int) or min_stake < 0:
            raise ParameterError("min_stake must be an int >= 0")
        if min_stake > 0 and stake is None:
            raise ParameterError("min_stake needs a stake view")
        self.availability, self.min_availability = availability, float(min_availability)
        self.stake, self.min_stake = stake, min_stake
        self.stats: Counter[str] = Counter() if stats is None else stats
        self._rr = 0

    def availability_of(self, addr: str) -> float:
        if self.availability is None:
            return 1.0
        try:
            return float(self.availability(addr))
        except Exception:  # noqa: BLE001 - a broken availability view must not stop scheduling
            self.stats["availability_errors"] += 1
            return 0.0

    def stake_of(self, addr: str) -> int:
        if self.stake is None:
            return 0
        try:
            return int(self.stake(addr))
        except Exception:  # noqa: BLE001 - fail closed: a stake that cannot be read counts as none
            self.stats["stake_errors"] += 1
            return 0

    def rank(self, candidates: Iterable[str], *, load: Counter[str], failures: Counter[str]) -> list[str]:
        """The candidates that pass the policy, best first."""
        out = list(candidates)
        avail: dict[str, Any] = {a: self.availability_of(a) for a in out}
        if self.min_availability > 0:
            low = [a for a in out if avail[a] < self.min_availability]
            self.stats["skipped_unavailable"] += len(low)
            out = [a for a in out if a not in low]
        if self.min_stake > 0:
            short = [a for a in out if self.stake_of(a) < self.min_stake]
            self.stats["skipped_unstaked"] += len(short)
            out = [a for a in out if a not in short]
        self._rr += 1
        rr = self._rr
        return sorted(out, key=lambda a: (load[a], failures[a], -avail[a], (hash(a) + rr) % 997))
