"""How many transcripts an audit samples: the size that meets a stated detection target.

A node that ran ``N`` tasks in an epoch and cheated on at least a fraction ``f`` of them cheated
on at least ``m = ceil(f * N)`` transcripts. The oracles draw ``k`` of the ``N`` transcripts
uniformly without replacement (:func:`edil.proofs.sample_indices`, seeded after the root was
posted, so the node could not choose which ones to do honestly). The audit misses every cheated
transcript with the hypergeometric probability of zero hits::

    P_miss(k) = C(N - m, k) / C(N, k) = prod_{i=0}^{k-1} (N - m - i) / (N - i)

and catches the node with ``P_detect(k) = 1 - P_miss(k)``. :func:`audit_sample_size` returns the
smallest ``k`` with ``P_detect(k) >= detection``; ``k = N - m + 1`` always reaches 1 (audit all when
the epoch is small). Cheating on more than ``m`` tasks is only caught more often, so the target
holds for every node that cheats on a fraction ``>= f``. For large ``N``, ``k`` tends to
``ln(1 - detection) / ln(1 - f)``, independent of ``N``: 90 for ``f = 0.05`` and
``detection = 0.99`` (sampling with replacement would need exactly that many; without replacement
needs at most as many). Everything is computed in exact rational arithmetic, so a target met
with equality counts as met.
"""

from __future__ import annotations

import math
from fractions import Fraction
from numbers import Rational

from edil import ParameterError, UnsupportedOperationError

__all__ = ["DEFAULT_CHEAT_FRACTION", "DEFAULT_DETECTION", "audit_detection", "audit_sample_size"]

#: Default fraction of a node's tasks whose cheating an audit is sized to catch.
DEFAULT_CHEAT_FRACTION = 0.05
#: Default probability of catching such a node in one epoch's audit.
DEFAULT_DETECTION = 0.99


def _exact(value: object, name: str) -> Fraction:
    """``value`` as an exact fraction; a float by its shortest decimal form (0.07 -> 7/100)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Rational):
        raise UnsupportedOperationError(f"{name} must be a real number, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParameterError(f"{name} must be finite")
        return Fraction(repr(value))
    return Fraction(value)


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnsupportedOperationError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ParameterError(f"{name} must be >= 0")
    return value


def _cheated(tasks: int, cheat_fraction: object) -> int:
    f = _exact(cheat_fraction, "cheat_fraction")
    if not 0 < f <= 1:
        raise ParameterError("cheat_fraction must be in (0, 1]")
    return math.ceil(f * tasks)


def _missed(tasks: int, cheated: int, k: int) -> Fraction:
    """Exact P_miss(k): ``perm(N - m, k) / perm(N, k)`` (0 once k > N - m)."""
    return Fraction(math.perm(tasks - cheated, k), math.perm(tasks, k))


def audit_detection(tasks: int, samples: int, cheat_fraction: float = DEFAULT_CHEAT_FRACTION) -> Fraction:
    """Probability that ``samples`` transcripts drawn without replacement from ``tasks`` catch a node
    that cheated on a fraction ``cheat_fraction`` of them (see the module docstring).

    Args:
        tasks: transcripts in the batch (``N``).
        samples: transcripts audited (``k <= N``).
        cheat_fraction: ``f`` in ``(0, 1]``; the node cheated on ``ceil(f * N)`` transcripts.

    Returns:
        ``1 - C(N - m, k) / C(N, k)`` as an exact fraction (0 for an empty batch).

    Raises:
        UnsupportedOperationError: a non-integer count or non-real fraction (also a TypeError).
        ParameterError: ``samples > tasks``, a negative count or a fraction outside ``(0, 1]`` (also a ValueError).
    """
    n, k = _count(tasks, "tasks"), _count(samples, "samples")
    if k > n:
        raise ParameterError(f"cannot sample {k} of {n} transcripts")
    m = _cheated(n, cheat_fraction)
    if n == 0:
        return Fraction(0)
    return 1 - _missed(n, m, k)


def audit_sample_size(
    tasks: int, cheat_fraction: float = DEFAULT_CHEAT_FRACTION, detection: float = DEFAULT_DETECTION
) -> int:
    """The smallest number of transcripts to audit so that a node cheating on a fraction
    ``cheat_fraction`` of its ``tasks`` is caught with probability at least ``detection``.

    ``k = min { k : 1 - C(N - m, k) / C(N, k) >= detection }`` with ``m = ceil(f * N)``
    (hypergeometric, sampling without replacement; see the module docstring).

    Args:
        tasks: transcripts in the batch (``N >= 0``).
        cheat_fraction: ``f`` in ``(0, 1]`` (default 0.05). Floats are read by their decimal form.
        detection: target probability in ``(0, 1]`` (default 0.99); 1 means audit ``N - m + 1``.

    Returns:
        ``k`` in ``[0, N]`` (0 only for an empty batch).

    Raises:
        UnsupportedOperationError: a non-integer count or non-real parameters (also a TypeError).
        ParameterError: parameters out of range (also a ValueError).

    Example:
        >>> audit_sample_size(10_000), audit_sample_size(20), audit_sample_size(1000, 0.01, 0.95)
        (90, 20, 258)
    """
    n = _count(tasks, "tasks")
    m = _cheated(n, cheat_fraction)
    d = _exact(detection, "detection")
    if not 0 < d <= 1:
        raise ParameterError("detection must be in (0, 1]")
    if n == 0:
        return 0
    miss_allowed = 1 - d
    hi = n - m + 1  # P_miss = 0 from here on: every draw would have to avoid m of N, impossible
    if miss_allowed > 0:
        # Sampling with replacement misses with (1 - m/N)^k >= P_miss(k): its k is an upper bound
        # (computed in floats, so confirmed exactly below before it is used).
        ratio = 1 - m / n
        if ratio > 0:
            guess = math.ceil(math.log(float(miss_allowed)) / math.log(ratio)) + 1
            if 1 <= guess < hi and _missed(n, m, guess) <= miss_allowed:
                hi = guess
    lo = 1  # P_miss(0) = 1 > miss_allowed since detection > 0
    while lo < hi:  # the smallest k in [lo, hi] with P_miss(k) <= miss_allowed; P_miss is decreasing
        mid = (lo + hi) // 2
        if _missed(n, m, mid) <= miss_allowed:
            hi = mid
        else:
            lo = mid + 1
    return min(lo, n)
