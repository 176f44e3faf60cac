"""``Masked`` inference with each party's share on a different node.

Node ``i`` holds only its additive share ``x_i`` (Z_2^64, fixed point) of the input and its
portion of the dealer's offline material; the model weights are public. Linear layers are
local. Each truncation and each Beaver product needs one *opening*: every party sends a masked
contribution, the coordinator (which relays through the executor) sums them mod 2^64 and sends
the opened value back. Openings are uniformly masked (``x + r`` with a fresh uniform ``r``), so
no node learns anything about ``x`` from them.

Threat model, as for :class:`edil.Masked`: semi-honest parties, a trusted dealer. Here the
dealer is the coordinator, i.e. the data owner's side, which knows the data anyway; nodes must
not collude. The protocol and its error bound are those of :mod:`edil._masked` (truncation by
opening ``c = x + 2^62 + r``, exact wrap correction, error below one unit in the last place).

The party program is a generator that asks for dealer material and yields contributions; its
control flow does not depend on values, so running it once on zeros gives the exact
:func:`plan` of material the dealer must prepare (no second description that could drift).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from edil import FixedPoint, ShapeError
from edil.models import Dense, Polynomial, Sequential

from ._task import array_from_bytes, array_to_bytes

__all__ = ["PartySession", "deal", "dealer_seed", "open_contributions", "party_program", "plan", "replay_party"]

_U64 = np.uint64
Material = tuple[np.ndarray, ...]
Dealer = Callable[[str, tuple[int, ...]], Material]
Program = Generator[np.ndarray, np.ndarray, np.ndarray]


def party_program(party: int, n: int, frac_bits: int, model: Sequential, x: np.ndarray, dealer: Dealer) -> Program:
    """Party ``party``'s side of the model: yields contributions, receives openings, returns its output share."""
    f = frac_bits
    fp = FixedPoint(f)
    first = party == 0

    def trunc(v: np.ndarray) -> Program:
        r, rhi, msb = dealer("trunc", v.shape)
        contrib = v + r
        if first:
            contrib = contrib + _U64(1 << 62)
        c = yield contrib
        out = msb * ((_U64(1) - (c >> _U64(63))) << _U64(64 - f)) - rhi
        if first:
            out = out + (c >> _U64(f)) - _U64(1 << (62 - f))
        return out

    def mul(a_: np.ndarray, b_: np.ndarray) -> Program:
        a, b, c = dealer("mul", a_.shape)
        ed = yield np.stack([a_ - a, b_ - b])
        e, d = ed[0], ed[1]
        z = c + e * b + d * a
        if first:
            z = z + e * d
        return (yield from trunc(z))

    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=_U64)
        if x.ndim != 2 or x.shape[1] != model.in_features:
            raise ShapeError(f"model expects (batch, {model.in_features}) shares, got {x.shape}")
        for layer in model.layers:
            if isinstance(layer, Dense):
                x = yield from trunc(_public_matmul(x, fp.encode(layer.weight)))
                if first:
                    x = x + fp.encode(np.broadcast_to(layer.bias, x.shape)).astype(_U64)
            elif isinstance(layer, Polynomial):
                coeffs = fp.encode(np.asarray(layer.coeffs)).astype(_U64)
                powers = [x]
                for i in range(2, len(coeffs)):
                    powers.append((yield from mul(powers[i // 2 - 1], powers[i - i // 2 - 1])))
                acc = np.zeros_like(x)
                for ci, p in zip(coeffs[1:], powers):
                    acc = acc + p * ci
                if len(coeffs) > 1:
                    acc = yield from trunc(acc)
                if first:
                    acc = acc + coeffs[0]
                x = acc
            else:
                x = x.reshape(x.shape[0], -1)
        return x


def _public_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w mod 2^64`` for a share ``x`` and public fixed-point weights ``w`` (signed ints).

    Large products go through the bit-exact JAX ring kernels (on the node's accelerator when it
    has one; half the GEMMs when the weights are small); small ones stay in numpy, where the
    kernel launch would cost more than the product.
    """
    from edil.hazmat import ring

    w = np.asarray(w)
    w = np.ascontiguousarray(w).view(np.int64) if w.dtype == _U64 else w.astype(np.int64)  # two's complement
    if x.shape[0] * x.shape[1] * w.shape[1] < (1 << 20):
        with np.errstate(over="ignore"):
            return np.matmul(x, w.astype(_U64))
    if w.size == 0 or int(np.max(np.abs(w))) < (1 << ring.SMALL_BITS):
        return ring.to_numpy(ring.matmul_small(x, w))
    return ring.to_numpy(ring.matmul(x, w.astype(_U64)))


def plan(model: Sequential, batch: int, frac_bits: int) -> list[tuple[str, tuple[int, ...]]]:
    """The dealer material the program consumes, in order: ``[(kind, shape), ...]``."""
    items: list[tuple[str, tuple[int, ...]]] = []

    def record(kind: str, shape: tuple[int, ...]) -> Material:
        items.append((kind, tuple(shape)))
        z = np.zeros(shape, dtype=_U64)
        return (z, z, z)

    prog = party_program(1, 2, frac_bits, model, np.zeros((batch, model.in_features), _U64), record)
    try:
        contrib = next(prog)
        while True:
            contrib = prog.send(np.zeros_like(contrib))
    except StopIteration:
        pass
    return items


class _Stream:
    """Uniform ring elements from SHAKE-256(seed || counter): the dealer's CSPRNG."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.counter = 0

    def uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        self.counter += 1
        size = int(np.prod(shape)) if shape else 1
        raw = hashlib.shake_256(self.seed + self.counter.to_bytes(8, "big")).digest(8 * size)
        return np.frombuffer(raw, dtype="<u8").astype(_U64).reshape(shape)


def _split(stream: _Stream, secret: np.ndarray, n: int) -> list[np.ndarray]:
    others = [stream.uniform(secret.shape) for _ in range(n - 1)]
    first = secret.copy()
    for o in others:
        first = first - o
    return [first, *others]


def deal(items: list[tuple[str, tuple[int, ...]]], n: int, frac_bits: int, *, seed: bytes) -> list[list[Material]]:
    """Offline material for ``n`` parties: ``out[party][item]`` (the dealer keeps none of it).

    Args:
        items: from :func:`plan`.
        n: number of parties.
        frac_bits: fixed-point fractional bits.
        seed: secret dealer randomness (>= 16 bytes); use a fresh one per session.
    """
    if not isinstance(seed, bytes) or len(seed) < 16:
        raise ValueError("dealer seed must be at least 16 fresh bytes")
    s = _Stream(seed)
    per_party: list[list[Material]] = [[] for _ in range(n)]
    with np.errstate(over="ignore"):
        for kind, shape in items:
            if kind == "trunc":
                r = s.uniform(shape)
                parts = [_split(s, r, n), _split(s, r >> _U64(frac_bits), n), _split(s, r >> _U64(63), n)]
            else:
                a, b = s.uniform(shape), s.uniform(shape)
                parts = [_split(s, a, n), _split(s, b, n), _split(s, a * b, n)]
            for i in range(n):
                per_party[i].append(tuple(p[i] for p in parts))
    return per_party


def dealer_seed(key: bytes, job_id: bytes, attempt: int) -> bytes:
    """The dealer seed of one session attempt (fresh per attempt, reproducible by an auditor)."""
    from ._deps import keccak256

    return keccak256(bytes(key) + bytes(job_id) + int(attempt).to_bytes(4, "big"))


def replay_party(
    party: int,
    n: int,
    frac_bits: int,
    model: Sequential,
    share: np.ndarray,
    material: list[Material],
    openings: list[np.ndarray],
    sent: list[bytes] | None = None,
) -> np.ndarray:
    """Re-run one party's program from its view (share, dealer material, public openings).

    The view of one party alone is uniform (its share, its material, masked openings). A node
    that deviated is caught in one of two places: a contribution it sent differs from the one
    the protocol gives (``sent``: the commitments the coordinator recorded, round by round), or
    its output share differs from the replayed one (the caller compares).

    Raises:
        ShapeError: the view does not fit the model (wrong number or shape of openings).
        VerificationError: a sent contribution is not the protocol's (``sent`` given).
    """
    from edil import VerificationError

    from ._deps import commit_bytes, consteq

    def check(rnd: int, contrib: np.ndarray) -> None:
        if sent is None:
            return
        if rnd >= len(sent) or not consteq(commit_bytes(array_to_bytes(np.asarray(contrib, dtype=_U64))), sent[rnd]):
            raise VerificationError(f"the party's contribution in round {rnd + 1} is not the protocol's")

    it = iter(material)

    def dealer(kind: str, shape: tuple[int, ...]) -> Material:
        try:
            m = next(it)
        except StopIteration:
            raise ShapeError("dealer material exhausted") from None
        if any(a.shape != tuple(shape) for a in m):
            raise ShapeError(f"dealer material mismatch for {kind} {shape}")
        return m

    prog = party_program(party, n, frac_bits, model, share, dealer)
    with np.errstate(over="ignore"):
        try:
            contrib = next(prog)
            for rnd, opened in enumerate(openings):
                check(rnd, contrib)
                opened = np.asarray(opened, dtype=_U64)
                if opened.shape != contrib.shape:
                    raise ShapeError("an opening does not match the party's contribution")
                contrib = prog.send(opened)
        except StopIteration as stop:
            if sent is not None and len(sent) != len(openings):
                raise VerificationError("the record holds another number of contributions than openings") from None
            return np.asarray(stop.value, dtype=_U64)
    raise ShapeError("the session record holds fewer openings than the program needs")


def open_contributions(contribs: list[np.ndarray]) -> np.ndarray:
    """The opening: sum of all parties' contributions mod 2^64."""
    shapes = {c.shape for c in contribs}
    if len(shapes) != 1:
        raise ShapeError(f"parties sent contributions of different shapes: {sorted(shapes)}")
    with np.errstate(over="ignore"):
        total = np.zeros(contribs[0].shape, dtype=_U64)
        for c in contribs:
            total = total + np.asarray(c, dtype=_U64)
    return total


def material_to_wire(material: list[Material], items: list[tuple[str, tuple[int, ...]]]) -> list[Any]:
    return [[kind, [array_to_bytes(m) for m in mat]] for (kind, _), mat in zip(items, material)]


class PartySession:
    """Node-side state of one party in one session: feeds openings to the party program."""

    def __init__(self, party: int, n: int, frac_bits: int, model: Sequential, share: np.ndarray, material: list[Any]) -> None:
        self._material = list(material)
        self._next = 0
        self._prog = party_program(party, n, frac_bits, model, share, self._dealer)
        self.rounds = 0

    def _dealer(self, kind: str, shape: tuple[int, ...]) -> Material:
        if self._next >= len(self._material):
            raise ShapeError("dealer material exhausted")
        got_kind, arrays = self._material[self._next]
        self._next += 1
        mats = tuple(array_from_bytes(a).astype(_U64) for a in arrays)
        if got_kind != kind or any(m.shape != tuple(shape) for m in mats):
            raise ShapeError(f"dealer material mismatch: expected {kind} {shape}, got {got_kind}")
        return mats

    def step(self, opened: np.ndarray | None) -> tuple[bool, np.ndarray]:
        """Advance: returns ``(done, array)``, a contribution or (when done) the output share."""
        try:
            with np.errstate(over="ignore"):
                out = next(self._prog) if opened is None else self._prog.send(np.asarray(opened, dtype=_U64))
        except StopIteration as stop:
            return True, np.asarray(stop.value, dtype=_U64)
        self.rounds += 1
        return False, out
