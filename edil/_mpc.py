"""The ``Masked`` protocol, written once: each party's steps as a generator of openings.

A party program is a Python generator. It computes locally on its share, *yields* the
contributions it sends to the other parties (a tuple of ring arrays), *receives* the opened
values (their sums over all parties) and finally *returns* its output share. The same program
text runs in three places, through three drivers:

* the in-process simulator (:func:`run_stacked`): every party's arrays are stacked on axis 0,
  an opening is a sum over that axis, and the whole model traces into one XLA program;
* a node of the runtime: one party's numpy arrays, openings relayed over the network
  (``edil.runtime`` feeds the generator one opening per round);
* an audit replay: one party's view (share, dealer material, recorded openings) is fed back
  and every contribution is compared with the one the node committed to.

Party-specific terms (the public constant that only party 0 adds) go through
:meth:`Party.on_first`, so no step branches on *who* runs it. The control flow of every step
depends only on shapes, never on values, so running a program on zeros gives the exact list of
dealer material it will consume (:func:`plan`).

Dealer material (Beaver triples, square pairs, truncation masks) comes from one definition of
each correlation (:func:`correlation`) and one additive split (:func:`split`), fed by either
JAX's counter-based PRNG (:class:`JaxDealer`, inside the simulator's jit) or per-party AES-CTR
streams under a 256-bit seed (:func:`deal`, :mod:`edil._dealer`: the runtime's seed-compressed
dealer, each party's :class:`PartyDealer` and its auditors).

Threat model and error bounds: see :mod:`edil._masked`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edil._dealer import PartyDealer, deal, deal_all, zero_sharing
from edil._errors import ShapeError, VerificationError
from edil.hazmat.ring import _matmul

__all__ = [
    "JaxDealer",
    "Party",
    "PartyDealer",
    "ReplayDealer",
    "correlation",
    "deal",
    "deal_all",
    "model",
    "plan",
    "polyval",
    "run_stacked",
    "split",
    "trunc",
    "zero_sharing",
]

U64 = np.uint64
Arrays = tuple[Any, ...]
Step = Generator[Arrays, Arrays, Any]
Dealer = Callable[..., Arrays]
#: A layer of a model program: ``("public", small)``, ``("private",)``, ``("poly", coeffs)``
#: (fixed-point coefficients as Python ints) or ``("flatten",)``.
Layer = tuple[Any, ...]


def _c(v: int) -> np.uint64:
    """A Python int as a ring constant (two's complement for negatives)."""
    return U64(int(v) % (1 << 64))


class Party:
    """Where a party program runs, and what it may use there.

    Args:
        n: number of parties.
        f: fractional bits of the fixed-point encoding.
        dealer: ``dealer(kind, *shapes) -> arrays``: this party's (or, stacked, every party's)
            share of the next piece of correlated randomness.
        matmul: ring product of two arrays (broadcasting leading axes): ``public @ share``,
            ``share @ public`` and ``share @ share`` of a Beaver product.
        matmul_public: ``matmul_public(share, w, small)``: a share times public fixed-point
            weights given as signed int64 (``small``: ``|w| < 2^22``, half the GEMMs).
        stacked: arrays hold every party on axis 0 (the simulator); ``party`` is then unused.
        party: this party's index (a node).
    """

    def __init__(
        self,
        *,
        n: int,
        f: int,
        dealer: Dealer,
        matmul: Callable[[Any, Any], Any],
        matmul_public: Callable[[Any, Any, bool], Any],
        stacked: bool = False,
        party: int = 0,
    ) -> None:
        self.n, self.f, self.dealer, self.stacked, self.party = n, f, dealer, stacked, party
        self.matmul, self.matmul_public = matmul, matmul_public
        self._first = (np.arange(n) == 0).astype(U64) if stacked else None
        self.opened = 0  # elements opened (counted by the driver)
        self.rounds = 0
        self.triples = 0

    def shape(self, x: Any) -> tuple[int, ...]:
        """The logical shape of a share (without the party axis)."""
        return tuple(x.shape[1:]) if self.stacked else tuple(x.shape)

    def on_first(self, v: Any, like: Any) -> Any:
        """``v`` added by party 0 only: the way public constants enter an additive sharing."""
        if self._first is not None:
            return self._first.reshape((self.n,) + (1,) * (like.ndim - 1)) * v
        return v if self.party == 0 else U64(0)

    def rows(self, b: Any) -> Any:
        """A shared bias ``(out,)`` aligned to broadcast against shared rows ``(batch, out)``."""
        return b[:, None, :] if self.stacked else b

    def flatten(self, x: Any) -> Any:
        return x.reshape((x.shape[0], x.shape[1], -1)) if self.stacked else x.reshape((x.shape[0], -1))


# --- protocol steps: each yields contributions and receives openings ---------------------------
def trunc(p: Party, x: Any) -> Step:
    """Dealer-assisted truncation by ``f`` bits (error bound in :mod:`edil._masked`).

    Opens ``c = x + 2^62 + r`` for a uniform ``r``; the wrap of that sum is
    ``msb(r) * (1 - msb(c))``, linear in the shared bit ``msb(r)``.
    """
    f = p.f
    r, rhi, msb = p.dealer("trunc", p.shape(x))
    (c,) = yield (x + r + p.on_first(U64(1 << 62), x),)
    out = msb * ((U64(1) - (c >> U64(63))) << U64(64 - f)) - rhi
    return out + p.on_first((c >> U64(f)) - U64(1 << (62 - f)), out)


def mul(p: Party, x: Any, y: Any) -> Step:
    """Elementwise Beaver product (``2f`` fractional bits: truncate afterwards)."""
    shape = p.shape(x)
    a, b, c = p.dealer("mul", shape)
    p.triples += math.prod(shape)
    e, g = yield (x - a, y - b)
    z = c + e * b + g * a
    return z + p.on_first(e * g, z)


def square(p: Party, x: Any) -> Step:
    """``x * x`` with a square pair ``(a, a^2)``: one opened value per element instead of two."""
    shape = p.shape(x)
    a, aa = p.dealer("square", shape)
    p.triples += math.prod(shape)
    (e,) = yield (x - a,)
    z = aa + U64(2) * e * a
    return z + p.on_first(e * e, z)


def matmul(p: Party, x: Any, y: Any) -> Step:
    """Shared ``(m, k) @ (k, n)`` with a matrix Beaver triple (truncate afterwards)."""
    xs, ys = p.shape(x), p.shape(y)
    a, b, c = p.dealer("matmul", xs, ys)
    p.triples += xs[0] * ys[1]
    e, g = yield (x - a, y - b)
    z = c + p.matmul(e, b) + p.matmul(a, g)
    return z + p.on_first(p.matmul(e, g), z)


def polyval(p: Party, x: Any, coeffs: Sequence[int]) -> Step:
    """``sum(c_i x^i)`` for fixed-point coefficients (Python ints with ``f`` fractional bits).

    Even powers come from squares, odd ones from a Beaver product with ``x``, each truncated;
    the public-coefficient combination is truncated once. Degree ``d`` costs ``d - 1``
    products and ``d`` truncations.
    """
    powers = [x]
    for i in range(2, len(coeffs)):
        if i % 2 == 0:
            q = yield from square(p, powers[i // 2 - 1])
        else:
            q = yield from mul(p, powers[i - 2], x)
        powers.append((yield from trunc(p, q)))
    acc = x * U64(0)
    for c, q in zip(coeffs[1:], powers):
        acc = acc + q * _c(c)
    if len(coeffs) > 1:
        acc = yield from trunc(p, acc)
    return acc + p.on_first(_c(coeffs[0]), acc)


def model(p: Party, x: Any, layers: Sequence[Layer], weights: Sequence[Any]) -> Step:
    """A whole model: public dense layers, shared (private) dense layers, polynomials, flatten.

    ``weights`` holds, per dense layer, the weight and bias: public fixed-point int64 arrays for
    ``("public", small)`` layers, shares for ``("private",)`` layers.
    """
    it = iter(weights)
    for layer in layers:
        tag = layer[0]
        if tag == "public":
            w, b = next(it), next(it)
            x = yield from trunc(p, p.matmul_public(x, w, layer[1]))
            x = x + p.on_first(b, x)
        elif tag == "private":
            w, b = next(it), next(it)
            z = yield from matmul(p, x, w)
            x = (yield from trunc(p, z)) + p.rows(b)
        elif tag == "poly":
            x = yield from polyval(p, x, layer[1])
        elif tag == "flatten":
            x = p.flatten(x)
        else:
            raise ShapeError(f"unknown layer {tag!r} in a masked model program")
    return x


# --- drivers -------------------------------------------------------------------------------------
def run_stacked(step: Step, p: Party) -> Any:
    """Run a program on stacked shares: an opening is the sum over the party axis."""
    try:
        contrib = next(step)
        while True:
            p.rounds += 1
            p.opened += sum(math.prod(c.shape[1:]) for c in contrib)
            contrib = step.send(tuple(jnp.sum(c, axis=0, dtype=jnp.uint64) for c in contrib))
    except StopIteration as stop:
        return stop.value


def run_party(step: Step, openings: Iterator[Arrays], *, sent: Sequence[bytes] | None = None,
              commit: Callable[[Arrays], bytes] | None = None, consteq: Callable[[bytes, bytes], bool] | None = None) -> Any:
    """Replay one party from recorded openings; with ``sent``, check each contribution.

    Args:
        step: the party's program.
        openings: the opened values, round by round.
        sent: commitments the coordinator recorded to what the party sent, round by round.
        commit, consteq: how a contribution is committed and compared (given with ``sent``).

    Returns:
        The party's output share.

    Raises:
        VerificationError: a contribution differs from its commitment, or the record holds
            another number of rounds than the program.
        ShapeError: an opening does not fit the program.
    """
    rnd = 0
    with np.errstate(over="ignore"):
        try:
            contrib = next(step)
            while True:
                if sent is not None and commit is not None and consteq is not None:
                    if rnd >= len(sent) or not consteq(commit(contrib), sent[rnd]):
                        raise VerificationError(f"the party's contribution in round {rnd + 1} is not the protocol's")
                try:
                    opened = next(openings)
                except StopIteration:
                    raise ShapeError("the session record holds fewer openings than the program needs") from None
                if len(opened) != len(contrib) or any(o.shape != c.shape for o, c in zip(opened, contrib)):
                    raise ShapeError("an opening does not match the party's contribution")
                rnd += 1
                contrib = step.send(tuple(np.asarray(o, dtype=U64) for o in opened))
        except StopIteration as stop:
            if next(openings, None) is not None or (sent is not None and len(sent) != rnd):
                raise VerificationError("the record holds another number of rounds than the protocol") from None
            return stop.value


# --- dealer material -----------------------------------------------------------------------------
def correlation(kind: str, shapes: Sequence[tuple[int, ...]], uniform: Callable[[tuple[int, ...]], Any], f: int,
                ring_matmul: Callable[[Any, Any], Any]) -> Arrays:
    """The secrets of one piece of correlated randomness (before they are split into shares)."""
    if kind == "trunc":
        r = uniform(shapes[0])
        return (r, r >> U64(f), r >> U64(63))
    if kind == "square":
        a = uniform(shapes[0])
        return (a, a * a)
    if kind == "mul":
        a, b = uniform(shapes[0]), uniform(shapes[0])
        return (a, b, a * b)
    if kind == "matmul":
        a, b = uniform(shapes[0]), uniform(shapes[1])
        return (a, b, ring_matmul(a, b))
    raise ShapeError(f"unknown dealer material {kind!r}")


def split(secret: Any, n: int, uniform: Callable[[tuple[int, ...]], Any], stack: Callable[[list[Any]], Any]) -> Any:
    """Additive sharing: ``n - 1`` uniform shares and the difference, stacked on axis 0."""
    others = [uniform(tuple(secret.shape)) for _ in range(n - 1)]
    first = secret
    for o in others:
        first = first - o
    return stack([first, *others])


class JaxDealer:
    """Material drawn inline from a JAX key (offline and online fused); ``record`` keeps it."""

    def __init__(self, key: jax.Array, n: int, f: int, *, record: bool = False) -> None:
        self.key, self.n, self.f = key, n, f
        self.material: list[Arrays] | None = [] if record else None

    def _uniform(self, shape: tuple[int, ...]) -> jax.Array:
        self.key, sub = jax.random.split(self.key)
        return jax.random.bits(sub, shape, jnp.uint64)

    def __call__(self, kind: str, *shapes: tuple[int, ...]) -> Arrays:
        secrets = correlation(kind, shapes, self._uniform, self.f, _matmul)
        material = tuple(split(s, self.n, self._uniform, jnp.stack) for s in secrets)
        if self.material is not None:
            self.material.append(material)
        return material

    def share(self, secret: jax.Array) -> jax.Array:
        """An additive sharing of ``secret`` from the same key stream."""
        return split(secret, self.n, self._uniform, jnp.stack)


class ReplayDealer:
    """Hands back recorded material in order (the online phase)."""

    def __init__(self, material: Sequence[Arrays]) -> None:
        self._it = iter(material)

    def __call__(self, kind: str, *shapes: tuple[int, ...]) -> Arrays:
        return next(self._it)


# The runtime's dealer (seed-compressed, AES-CTR streams) lives in edil._dealer; ``deal`` and
# ``zero_sharing`` stay importable from here.


def _np_matmul(a: Any, b: Any) -> np.ndarray:
    from edil.hazmat import ring

    return ring.to_numpy(ring.matmul(a, b))


def plan(layers: Sequence[Layer], weight_shapes: Sequence[tuple[int, ...]], batch: int, in_features: int,
         f: int) -> list[tuple[str, tuple[tuple[int, ...], ...]]]:
    """The dealer material a model program consumes, in order: ``[(kind, shapes), ...]``.

    The program's control flow depends on shapes only, so one run on zeros is the plan (no
    second description that could drift).
    """
    items: list[tuple[str, tuple[tuple[int, ...], ...]]] = []

    def record(kind: str, *shapes: tuple[int, ...]) -> Arrays:
        items.append((kind, tuple(tuple(s) for s in shapes)))
        count = {"trunc": 3, "square": 2}.get(kind, 3)
        if kind == "matmul":
            return (np.zeros(shapes[0], U64), np.zeros(shapes[1], U64), np.zeros((shapes[0][0], shapes[1][1]), U64))
        return tuple(np.zeros(shapes[0], U64) for _ in range(count))

    p = Party(n=2, f=f, dealer=record, matmul=lambda a, b: np.zeros(a.shape[:-1] + b.shape[-1:], U64),
              matmul_public=lambda x, w, small: np.zeros(x.shape[:-1] + w.shape[-1:], U64), party=1)
    weights = [np.zeros(s, U64) for s in weight_shapes]
    step = model(p, np.zeros((batch, in_features), U64), layers, weights)
    try:
        contrib = next(step)
        while True:
            contrib = step.send(tuple(np.zeros_like(c) for c in contrib))
    except StopIteration:
        pass
    return items


def count_openings(program: Callable[..., Step], n: int, f: int, *shapes: jax.ShapeDtypeStruct) -> tuple[int, int, int]:
    """(elements opened, rounds, triples) of ``program`` on stacked inputs of these shapes, by tracing only."""
    box: dict[str, Party] = {}

    def traced(key: jax.Array, *args: jax.Array) -> jax.Array:
        p = stacked_party(JaxDealer(key, n, f), n, f)
        box["p"] = p
        return run_stacked(program(p, *args), p)

    jax.eval_shape(traced, jax.ShapeDtypeStruct((), jax.random.key(0).dtype), *shapes)
    p = box["p"]
    return p.opened, p.rounds, p.triples


def stacked_party(dealer: Dealer, n: int, f: int) -> Party:
    """A :class:`Party` over stacked JAX shares (the simulator)."""
    from edil.hazmat.ring import _matmul_small

    def matmul_public(x: jax.Array, w: jax.Array, small: bool) -> jax.Array:
        return _matmul_small(x, w) if small else _matmul(x, w.astype(jnp.uint64))

    return Party(n=n, f=f, dealer=dealer, matmul=_matmul, matmul_public=matmul_public, stacked=True)


# --- a party on a host (a node, an auditor): numpy arrays, ring kernels for large products ------
_SMALL_PRODUCT = 1 << 20  # below this many multiply-adds a numpy product beats a kernel launch


def _host_matmul(a: Any, b: Any) -> np.ndarray:
    a, b = np.asarray(a, dtype=U64), np.asarray(b, dtype=U64)
    if a.shape[-2] * a.shape[-1] * b.shape[-1] < _SMALL_PRODUCT:
        with np.errstate(over="ignore"):
            return np.matmul(a, b)
    return _np_matmul(a, b)


def _host_matmul_public(x: Any, w: Any, small: bool) -> np.ndarray:
    """``x @ w mod 2^64`` for a share and public fixed-point weights (signed int64).

    Large products go through the bit-exact JAX ring kernels (the node's accelerator when it
    has one; half the GEMMs when the weights are small, which is decided here from the weights,
    not from what the sender claimed).
    """
    from edil.hazmat import ring

    w = np.asarray(w)
    w = np.ascontiguousarray(w).view(np.int64) if w.dtype == U64 else w.astype(np.int64)
    x = np.asarray(x, dtype=U64)
    if x.shape[0] * x.shape[1] * w.shape[1] < _SMALL_PRODUCT:
        with np.errstate(over="ignore"):
            return np.matmul(x, w.astype(U64))
    if w.size == 0 or int(np.max(np.abs(w))) < (1 << ring.SMALL_BITS):
        return ring.to_numpy(ring.matmul_small(x, w))
    return ring.to_numpy(ring.matmul(x, w.astype(U64)))


def host_party(party: int, n: int, f: int, dealer: Dealer) -> Party:
    """A :class:`Party` over one party's numpy arrays (a node, or an auditor replaying it)."""
    return Party(n=n, f=f, dealer=dealer, matmul=_host_matmul, matmul_public=_host_matmul_public, party=party)


def material_shapes(kind: str, shapes: Sequence[tuple[int, ...]]) -> tuple[tuple[int, ...], ...]:
    """The shapes of one party's arrays in a piece of material (to check what a dealer sent)."""
    if kind == "trunc":
        return (shapes[0],) * 3
    if kind == "square":
        return (shapes[0],) * 2
    if kind == "mul":
        return (shapes[0],) * 3
    if kind == "matmul":
        return (shapes[0], shapes[1], (shapes[0][0], shapes[1][1]))
    raise ShapeError(f"unknown dealer material {kind!r}")
