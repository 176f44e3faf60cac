"""The ``Masked`` protocol, written once: each party's steps as a generator of openings.

A party program is a Python generator. It computes locally on its share, *yields* the
contributions it sends to the other parties (a tuple of ring arrays), *receives* the opened
values and finally *returns* its output share. An opened value is the sum of the parties'
contributions mod 2^64 (additive sharing) or, for the words of a binary (XOR) sharing, their
XOR: a plain tuple is opened by sums, a :class:`Tagged` tuple names the kind of each array. The same program
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
:class:`JaxDealer` inside the simulator's jit (its words JAX's counter-based PRNG, or for
:class:`~edil.Masked` one block of AES-CTR keystream drawn before the run) or per-party AES-CTR
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
from edil._fixed import square_split
from edil.hazmat.ring import _matmul

__all__ = [
    "ADD",
    "JaxDealer",
    "Party",
    "PartyDealer",
    "ReplayDealer",
    "Tagged",
    "XOR",
    "add_bits",
    "and_",
    "argmax",
    "combine",
    "correlation",
    "deal",
    "deal_all",
    "exp",
    "kinds_of",
    "ltz",
    "max_",
    "model",
    "plan",
    "polyval",
    "reciprocal",
    "relu",
    "run_stacked",
    "schedule",
    "select",
    "sigmoid",
    "softmax",
    "split",
    "tanh",
    "to_arith",
    "to_binary",
    "tournament",
    "trunc",
    "zero_sharing",
]

U64 = np.uint64
Arrays = tuple[Any, ...]
Step = Generator[Arrays, Arrays, Any]
Dealer = Callable[..., Arrays]
#: A layer of a model program: ``("public", small)``, ``("private",)``, ``("poly", coeffs)``
#: (fixed-point coefficients as Python ints), ``("poly2f", coeffs)`` (the same, its sum left at
#: ``2f`` fractional bits for the dense layer that must follow, which truncates by ``2f``),
#: ``("relu",)`` (exact), ``("maxpool", index)`` (exact maxima over the public windows ``index``,
#: a tuple of equal-length tuples of input columns) or ``("flatten",)``.
Layer = tuple[Any, ...]

#: How a shared array is combined: a sum mod 2^64 (additive) or a XOR (binary sharing of words).
ADD, XOR = "add", "xor"


class Tagged(tuple[Any, ...]):
    """Arrays, each tagged with its sharing: ``ADD`` (sum mod 2^64) or ``XOR`` (bitwise).

    What a step yields (the kind says how each contribution is opened) and what
    :func:`correlation` returns (the kind says how the dealer splits each secret). A plain
    tuple means every array is additive.

    Raises:
        ShapeError: not one known kind per array.
    """

    kinds: tuple[str, ...]

    def __new__(cls, arrays: Sequence[Any], kinds: Sequence[str]) -> Tagged:
        self = super().__new__(cls, arrays)
        ks = tuple(kinds)
        if len(ks) != len(self) or any(k not in (ADD, XOR) for k in ks):
            raise ShapeError(f"need one of {ADD!r}/{XOR!r} per array, got {ks!r} for {len(self)} arrays")
        self.kinds = ks
        return self


def kinds_of(arrays: Sequence[Any]) -> tuple[str, ...]:
    """The sharing of each array of a contribution or a correlation (``ADD`` unless tagged)."""
    return arrays.kinds if isinstance(arrays, Tagged) else (ADD,) * len(arrays)


def xor(*arrays: Any) -> Tagged:
    """Contributions opened by XOR (words of a binary sharing)."""
    return Tagged(arrays, (XOR,) * len(arrays))


def combine(contributions: Sequence[Sequence[np.ndarray]], kinds: Sequence[str]) -> tuple[np.ndarray, ...]:
    """One round's opened values from every party's contribution (host arrays, ``[party][array]``).

    Raises:
        ShapeError: parties sent different numbers or shapes of arrays, or kinds do not fit.
    """
    if not contributions or any(len(c) != len(kinds) for c in contributions):
        raise ShapeError("every party must send one array per opened value")
    out: list[Any] = []
    with np.errstate(over="ignore"):
        for k, kind in enumerate(kinds):
            parts = [np.asarray(c[k], dtype=U64) for c in contributions]
            if len({a.shape for a in parts}) != 1:
                raise ShapeError("parties sent contributions of different shapes")
            stacked = np.stack(parts)
            out.append(np.bitwise_xor.reduce(stacked, axis=0) if kind == XOR else np.sum(stacked, axis=0, dtype=U64))
    return tuple(out)


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
        self.ands = 0  # binary Beaver triples (64-bit words)

    def shape(self, x: Any) -> tuple[int, ...]:
        """The logical shape of a share (without the party axis)."""
        return tuple(x.shape[1:]) if self.stacked else tuple(x.shape)

    def on_first(self, v: Any, like: Any) -> Any:
        """``v`` added by party 0 only: the way public constants enter an additive sharing."""
        if self._first is not None:
            return self._first.reshape((self.n,) + (1,) * (like.ndim - 1)) * v
        return v if self.party == 0 else U64(0)

    def own(self, x: Any, i: int) -> Any:
        """Party ``i``'s share of ``x`` as a XOR sharing: party ``i`` holds its share, the others 0."""
        if self.stacked:
            return x * (np.arange(self.n) == i).astype(U64).reshape((self.n,) + (1,) * (x.ndim - 1))
        return x if self.party == i else x * U64(0)

    @property
    def xp(self) -> Any:
        """The array module of the shares (``jax.numpy`` stacked, ``numpy`` on a host)."""
        return jnp if self.stacked else np

    def stack(self, arrays: Sequence[Any]) -> Any:
        """Shares of several same-shaped secrets as one, on a new first logical axis (one opening)."""
        return self.xp.stack(list(arrays), axis=1 if self.stacked else 0)

    def unstack(self, x: Any) -> list[Any]:
        """The inverse of :meth:`stack`."""
        return [x[:, k] for k in range(x.shape[1])] if self.stacked else [x[k] for k in range(x.shape[0])]

    def rows(self, b: Any) -> Any:
        """A shared bias ``(out,)`` aligned to broadcast against shared rows ``(batch, out)``."""
        return b[:, None, :] if self.stacked else b

    def flatten(self, x: Any) -> Any:
        return x.reshape((x.shape[0], x.shape[1], -1)) if self.stacked else x.reshape((x.shape[0], -1))

    def and_(self, x: Any, y: Any) -> Step:
        """This protocol's AND gate of XOR-shared words (a binary Beaver triple, :func:`and_`).

        The comparison circuits (:func:`add_bits`, :func:`to_binary`, :func:`ltz`) call the
        gate through the party, so another sharing (``edil._replicated``: one round with a
        zero-sharing, no dealer) runs the same circuit with its own gate.
        """
        return and_(self, x, y)


# --- protocol steps: each yields contributions and receives openings ---------------------------
def trunc(p: Party, x: Any, *, double: bool = False) -> Step:
    """Dealer-assisted truncation by ``f`` bits, or ``2f`` with ``double`` (error bound in :mod:`edil._masked`).

    Opens ``c = x + 2^62 + r`` for a uniform ``r``; the wrap of that sum is
    ``msb(r) * (1 - msb(c))``, linear in the shared bit ``msb(r)``. The ``2f`` truncation
    (material ``"trunc2f"``: ``r >> 2f`` instead of ``r >> f``) brings a product with a
    coefficient back to ``f`` fractional bits in one step.
    """
    f = 2 * p.f if double else p.f
    r, rhi, msb = p.dealer("trunc2f" if double else "trunc", p.shape(x))
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


def polyval(p: Party, x: Any, coeffs: Sequence[int], *, wide: bool = False) -> Step:
    """``sum(c_i x^i)`` for fixed-point coefficients (Python ints with ``f`` fractional bits).

    Even powers come from squares, odd ones from a Beaver product with ``x``, each truncated;
    the public-coefficient combination is truncated once. Degree ``d`` costs at most ``d - 1``
    products and ``d`` truncations: a power is computed only when a non-zero coefficient needs
    it, directly or through a higher power (a ReLU fit ``c_0 + x/2 + c_2 x^2 + c_4 x^4`` has no
    odd term above ``x``, so no ``x^3``). The coefficients are public, so skipping depends on
    public values only; with every ``c_i`` (``i >= 1``) zero the result is ``c_0`` exactly.

    Two shortcuts, each one truncation fewer: the top power enters the combination as its
    untruncated product when its coefficient is exactly +-1 (``2^f``: ``x^2`` as an
    activation), and a ReLU-shaped degree 4 (``c_3 = 0``) follows
    :func:`edil._fixed.square_split`: ``u = S x^2`` truncated by ``2f`` (``trunc2f`` material),
    then ``c_1 x + C_2 u +- u^2`` truncated once, so ``x^4`` is never truncated on its own.

    With ``wide``, the sum is not truncated at all: the result carries ``2f`` fractional bits
    (``c_0`` joins it at that scale), for a dense layer that truncates its product by ``2f``
    (layer ``("poly2f", coeffs)`` of :func:`model`).
    """
    def finish(acc: Any, terms: bool) -> Step:
        if wide:
            return acc + p.on_first(_c(coeffs[0] << p.f), acc)
        if terms:
            acc = yield from trunc(p, acc)
        return acc + p.on_first(_c(coeffs[0]), acc)

    split = square_split(coeffs, p.f)
    if split is not None:  # c_0 + c_1 x + c_2 x^2 + c_4 x^4 as c_0 + c_1 x + c_2' u +- u^2, u = s x^2
        big_s, c2 = split
        z = yield from square(p, x)
        u = yield from trunc(p, z * _c(big_s), double=True)
        q = yield from square(p, u)
        acc = x * _c(coeffs[1]) + u * _c(c2)
        return (yield from finish(acc + q if coeffs[4] > 0 else acc - q, True))
    d = len(coeffs) - 1
    need = {i for i in range(2, d + 1) if coeffs[i] != 0}
    for i in range(d, 1, -1):  # a needed power needs the one it is computed from
        if i in need:
            need.add(i // 2 if i % 2 == 0 else i - 1)
    unit = 1 << p.f
    # A top power with coefficient +-1 (exactly 2^f) enters the sum as its untruncated product
    # (2f fractional bits, like every other term): one truncation fewer.
    top = d if d >= 2 and abs(coeffs[d]) == unit else 0  # the highest power: no other is computed from it
    powers = {1: x}
    raw = x * U64(0)
    for i in sorted(need - {1}):
        if i % 2 == 0:
            q = yield from square(p, powers[i // 2])
        else:
            q = yield from mul(p, powers[i - 1], x)
        if i == top:
            raw = q if coeffs[i] > 0 else raw - q
        else:
            powers[i] = yield from trunc(p, q)
    acc = raw
    terms = [i for i in range(1, d + 1) if coeffs[i] != 0 and i != top]
    for i in terms:
        acc = acc + powers[i] * _c(coeffs[i])
    return (yield from finish(acc, bool(terms) or bool(top)))


# --- secure comparison: binary sharing of words, bit decomposition, selection -----------------
# An additive secret x = x_0 + ... + x_{n-1} is turned into a XOR sharing of its bits (A2B):
# party i's share is itself a XOR sharing in which party i holds x_i and the others hold 0;
# carry-save adders take n words to 2 and a Kogge-Stone adder adds those, all on packed 64-bit
# words with binary Beaver triples. The sign is the top bit; a bit multiplies an additive value
# exactly with a daBit (one round). Everything is exact: no fixed-point error, no failure
# probability, whatever the value in the ring.
def and_(p: Party, x: Any, y: Any) -> Step:
    """``x & y`` of XOR-shared words with a binary Beaver triple ``(a, b, a & b)``: opens ``x ^ a``, ``y ^ b``.

    ``x`` may broadcast against ``y`` (one mask ``a`` of ``x`` for several products, as a matrix
    triple reuses its mask): ``x`` is then opened once for all of them.
    """
    a, b, c = p.dealer("and", p.shape(x), p.shape(y))
    p.ands += math.prod(p.shape(y))
    d, e = yield xor(x ^ a, y ^ b)
    z = c ^ (d & b) ^ (e & a)
    return z ^ p.on_first(d & e, z)


def add_bits(p: Party, a: Any, b: Any) -> Step:
    """``a + b mod 2^64`` of XOR-shared words: a Kogge-Stone adder, 7 rounds of ANDs.

    ``g``/``q`` are the generate/propagate bits of ever longer blocks; after level ``s`` bit
    ``i`` covers bits ``i-2s+1..i``, so six levels reach every carry. Both ANDs of a level go in
    one opening and share their left operand ``q`` (opened once: 3 words, not 4); the last level
    needs no propagate.
    """
    g = yield from p.and_(a, b)
    q = a ^ b
    s = 1
    while s < 64:
        if s == 32:
            g = g ^ (yield from p.and_(q, g << U64(s)))
        else:
            t, q_next = p.unstack((yield from p.and_(p.stack([q]), p.stack([g << U64(s), q << U64(s)]))))
            g, q = g ^ t, q_next
        s *= 2
    return a ^ b ^ (g << U64(1))


def to_binary(p: Party, x: Any) -> Step:
    """A XOR sharing of the additive secret ``x`` (A2B): ``n - 2`` carry-save levels at most, then one adder.

    A carry-save level turns every three words into two, ``a + b + c = (a ^ b ^ c) + 2 maj(a, b, c)``,
    with ``maj = c ^ ((a ^ c) & (b ^ c))``: one AND per triple, all triples in one opening.
    """
    words = [p.own(x, i) for i in range(p.n)]
    while len(words) > 2:
        k = len(words) // 3
        groups, rest = [words[3 * g : 3 * g + 3] for g in range(k)], words[3 * k :]
        m = p.unstack((yield from p.and_(p.stack([a ^ c for a, _, c in groups]), p.stack([b ^ c for _, b, c in groups]))))
        words = [w for (a, b, c), mg in zip(groups, m) for w in (a ^ b ^ c, (c ^ mg) << U64(1))] + rest
    return (yield from add_bits(p, words[0], words[1]))


def ltz(p: Party, x: Any) -> Step:
    """``[x < 0]`` (the top bit of the ring value) as a XOR-shared bit (bit 0 of a word)."""
    return (yield from to_binary(p, x)) >> U64(63)


def select(p: Party, x: Any, bit: Any) -> Step:
    """``x * b`` for an additive ``x`` and a XOR-shared bit ``b`` (broadcast over ``x``): exact, one round.

    With a daBit ``r`` (XOR- and additively shared) and a mask ``a`` with ``a r`` from the
    dealer, the parties open ``c = b ^ r`` (XOR) and ``e = x - a`` (sum) together; then
    ``b = c + r - 2 c r`` and ``x r = e r + a r``, so ``x b = c x + (1 - 2c) x r``, all linear.
    """
    rb, ra, a, ar = p.dealer("select", p.shape(x), p.shape(bit))
    c, e = yield Tagged(((bit ^ rb) & U64(1), x - a), (XOR, ADD))
    return c * x + (U64(1) - U64(2) * c) * (e * ra + ar)


def to_arith(p: Party, bit: Any, scale: int = 1) -> Step:
    """``scale * b`` additively shared, for a XOR-shared bit ``b`` (B2A with a daBit: one XOR opening)."""
    rb, ra = p.dealer("dabit", p.shape(bit))
    (c,) = yield xor((bit ^ rb) & U64(1))
    v = (U64(1) - U64(2) * c) * ra * _c(scale)
    return v + p.on_first(c * _c(scale), v)


def relu(p: Party, x: Any) -> Step:
    """``max(x, 0)`` exactly: ``x - x [x < 0]`` (an integer bit times ``x``: no truncation)."""
    neg = yield from ltz(p, x)
    return x - (yield from select(p, x, neg))


def tournament(p: Party, t: Any) -> Step:
    """The row of ``t`` ``(..., m, k)`` whose column 0 is largest (the first one on ties).

    A tree of ``ceil(log2 m)`` comparison levels; each level compares neighbours ``(0, 1),
    (2, 3), ...`` and keeps the winner's whole row (a value with what it carries, e.g. a one-hot).
    An odd row out moves up unchanged, last, so rows stay in index order.
    """
    while t.shape[-2] > 1:
        half = t.shape[-2] // 2
        left, right, rest = t[..., 0 : 2 * half : 2, :], t[..., 1 : 2 * half : 2, :], t[..., 2 * half :, :]
        d = left - right
        lt = yield from ltz(p, d[..., :1])
        t = p.xp.concatenate([left - (yield from select(p, d, lt)), rest], axis=-2)
    return t[..., 0, :]


def max_(p: Party, x: Any) -> Step:
    """The maximum over the last axis, exactly."""
    return (yield from tournament(p, x[..., None]))[..., 0]


def argmax(p: Party, x: Any) -> Step:
    """A one-hot of the first maximum over the last axis (fixed point: the 1 is ``2^f``)."""
    m = x.shape[-1]
    eye = np.eye(m, dtype=U64) << U64(p.f)
    onehots = p.xp.broadcast_to(p.on_first(eye, x[..., None]), x.shape + (m,))
    return (yield from tournament(p, p.xp.concatenate([x[..., None], onehots], axis=-1)))[..., 1:]


# --- non-polynomial functions (CrypTen's recipes on the exact comparison) ----------------------
def _scale(p: Party, x: Any, c: float) -> Step:
    """``c * x`` for a public real ``c`` (one truncation)."""
    return (yield from trunc(p, x * _c(round(c * (1 << p.f)))))


def _mul(p: Party, x: Any, y: Any) -> Step:
    return (yield from trunc(p, (yield from mul(p, x, y))))


def exp(p: Party, x: Any, iters: int = 8) -> Step:
    """``exp(x) ~ (1 + x / 2^k)^(2^k)``: one scaling and ``k`` squarings (``k = iters <= f``)."""
    y = yield from _scale(p, x, 2.0**-iters)
    y = y + p.on_first(U64(1 << p.f), y)
    for _ in range(iters):
        y = yield from trunc(p, (yield from square(p, y)))
    return y


def reciprocal(p: Party, x: Any, iters: int = 10, *, linear_init: tuple[float, float] | None = None) -> Step:
    """``1 / x`` for ``x > 0`` by Newton-Raphson ``y <- y (2 - x y)``.

    The start is CrypTen's ``3 exp(1/2 - x) + 0.003`` (it converges for ``x`` in about
    ``[0.01, 250]``), or ``c0 + c1 x`` when ``linear_init = (c0, c1)`` fits a known narrow range.
    """
    one = U64(1 << p.f)
    if linear_init is None:
        e = yield from exp(p, p.on_first(U64(1 << (p.f - 1)), x) - x)
        y = yield from _scale(p, e, 3.0)
        y = y + p.on_first(_c(round(0.003 * (1 << p.f))), y)
    else:
        y = yield from _scale(p, x, linear_init[1])
        y = y + p.on_first(_c(round(linear_init[0] * (1 << p.f))), y)
    for _ in range(iters):
        xy = yield from _mul(p, x, y)
        y = yield from _mul(p, y, p.on_first(U64(2) * one, xy) - xy)
    return y


def sigmoid(p: Party, x: Any, iters: int = 8) -> Step:
    """``1 / (1 + exp(-x))``: ``s = 1 / (1 + exp(-|x|))`` in ``[1/2, 1)``, then ``1 - s`` where ``x < 0``."""
    neg = yield from ltz(p, x)
    a = x - U64(2) * (yield from select(p, x, neg))
    e = yield from exp(p, U64(0) - a, iters)
    den = e + p.on_first(U64(1 << p.f), e)
    s = yield from reciprocal(p, den, 4, linear_init=(1.5, -0.5))  # exact at den = 1 and 2
    flip = p.on_first(U64(1 << p.f), s) - U64(2) * s
    return s + (yield from select(p, flip, neg))


def tanh(p: Party, x: Any, iters: int = 8) -> Step:
    """``tanh(x) = 2 sigmoid(2x) - 1``."""
    s = yield from sigmoid(p, U64(2) * x, iters)
    return U64(2) * s - p.on_first(U64(1 << p.f), s)


def softmax(p: Party, x: Any, iters: int = 8) -> Step:
    """``exp(x - max) / sum`` over the last axis (``exp`` of values <= 0; the sum lies in ``[1, m]``)."""
    m = yield from max_(p, x)
    e = yield from exp(p, x - m[..., None], iters)
    r = yield from reciprocal(p, e.sum(axis=-1, dtype=U64))
    return (yield from _mul(p, e, p.xp.broadcast_to(r[..., None], e.shape)))


def model(p: Party, x: Any, layers: Sequence[Layer], weights: Sequence[Any]) -> Step:
    """A whole model: public and shared (private) dense layers, polynomials, exact ReLU and max pooling, flatten.

    ``weights`` holds, per dense layer, the weight and bias: public fixed-point int64 arrays for
    ``("public", small)`` layers, shares for ``("private",)`` layers.
    """
    it = iter(weights)
    wide = False  # x carries 2f fractional bits (after a "poly2f" layer)
    for k, layer in enumerate(layers):
        tag = layer[0]
        if tag == "public":
            w, b = next(it), next(it)
            x = yield from trunc(p, p.matmul_public(x, w, layer[1]), double=wide)
            x = x + p.on_first(b, x)
        elif tag == "private":
            w, b = next(it), next(it)
            z = yield from matmul(p, x, w)
            x = (yield from trunc(p, z, double=wide)) + p.rows(b)
        elif tag in ("poly", "poly2f"):
            if tag == "poly2f" and (k + 1 == len(layers) or layers[k + 1][0] not in ("public", "private")):
                raise ShapeError("a polynomial left at 2f fractional bits (poly2f) must be followed by a dense layer")
            x = yield from polyval(p, x, layer[1], wide=tag == "poly2f")
        elif tag == "relu":
            x = yield from relu(p, x)
        elif tag == "maxpool":
            x = yield from max_(p, x[..., np.asarray(layer[1], dtype=np.int64)])
        elif tag == "flatten":
            x = p.flatten(x)
        else:
            raise ShapeError(f"unknown layer {tag!r} in a masked model program")
        wide = tag == "poly2f"
    return x


# --- drivers -------------------------------------------------------------------------------------
def _open_stacked(c: Any, kind: str) -> Any:
    return jnp.bitwise_xor.reduce(c, axis=0) if kind == XOR else jnp.sum(c, axis=0, dtype=jnp.uint64)


def run_stacked(step: Step, p: Party) -> Any:
    """Run a program on stacked shares: an opening is the sum (or XOR) over the party axis."""
    try:
        contrib = next(step)
        while True:
            p.rounds += 1
            p.opened += sum(math.prod(c.shape[1:]) for c in contrib)
            contrib = step.send(tuple(_open_stacked(c, k) for c, k in zip(contrib, kinds_of(contrib))))
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
def correlation(kind: str, shapes: Sequence[tuple[int, ...]], uniform: Callable[..., Any], f: int,
                ring_matmul: Callable[[Any, Any], Any]) -> Arrays:
    """The secrets of one piece of correlated randomness (before they are split into shares).

    ``uniform(shape, kind=ADD)`` draws a uniform secret that will be shared ``kind``-wise.
    Secrets are additive unless the result is :class:`Tagged`: binary triples (``"and"``) are
    XOR-shared words; a daBit is a XOR-shared uniform word whose bit 0 is also shared additively
    (``"dabit"``), and ``"select"`` adds an additive mask ``a`` of a value and ``a r``.
    """
    if kind == "and":  # shapes: x's, then y's (x's mask broadcasts against y's)
        a, b = uniform(shapes[0], XOR), uniform(shapes[1], XOR)
        return Tagged((a, b, a & b), (XOR, XOR, XOR))
    if kind == "dabit":
        rb = uniform(shapes[0], XOR)
        return Tagged((rb, rb & U64(1)), (XOR, ADD))
    if kind == "select":
        rb = uniform(shapes[1], XOR)
        ra = rb & U64(1)
        a = uniform(shapes[0])
        return Tagged((rb, ra, a, a * ra), (XOR, ADD, ADD, ADD))
    if kind in ("trunc", "trunc2f"):
        r = uniform(shapes[0])
        return (r, r >> U64(f if kind == "trunc" else 2 * f), r >> U64(63))
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


def split(secret: Any, n: int, uniform: Callable[..., Any], stack: Callable[[list[Any]], Any], kind: str = ADD) -> Any:
    """A sharing: ``n - 1`` uniform shares and the difference (or, for ``XOR``, the XOR), stacked on axis 0."""
    others = [uniform(tuple(secret.shape)) for _ in range(n - 1)]
    first = secret
    for o in others:
        first = first ^ o if kind == XOR else first - o
    return stack([first, *others])


class JaxDealer:
    """Material drawn inline from a JAX key (offline and online fused); ``record`` keeps it."""

    def __init__(self, key: jax.Array, n: int, f: int, *, record: bool = False) -> None:
        self.key, self.n, self.f = key, n, f
        self.material: list[Arrays] | None = [] if record else None

    def _uniform(self, shape: tuple[int, ...], kind: str = ADD) -> jax.Array:
        self.key, sub = jax.random.split(self.key)
        return jax.random.bits(sub, shape, jnp.uint64)

    def __call__(self, kind: str, *shapes: tuple[int, ...]) -> Arrays:
        # One PRNG call per piece of material (not one per secret and share): a threefry call is
        # what dominates compiling a long program (a comparison deals dozens of pieces).
        sizes: list[tuple[int, ...]] = []

        def count(shape: tuple[int, ...], kind: str = ADD) -> np.ndarray:
            sizes.append(tuple(shape))
            return np.zeros(shape, U64)

        correlation(kind, shapes, count, self.f, lambda a, b: np.zeros(np.shape(a)[:-1] + np.shape(b)[-1:], U64))
        sizes += [tuple(s) for s in material_shapes(kind, shapes) for _ in range(self.n - 1)]
        block = self._uniform((sum(math.prod(s) for s in sizes),))
        offset = 0

        def draw(shape: tuple[int, ...], kind: str = ADD) -> jax.Array:
            nonlocal offset
            size = math.prod(shape)
            offset += size
            return block[offset - size : offset].reshape(shape)

        secrets = correlation(kind, shapes, draw, self.f, _matmul)
        material = tuple(split(s, self.n, draw, jnp.stack, k) for s, k in zip(secrets, kinds_of(secrets)))
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


Items = list[tuple[str, tuple[tuple[int, ...], ...]]]


def schedule(layers: Sequence[Layer], weight_shapes: Sequence[tuple[int, ...]], batch: int, in_features: int,
             f: int, *, n: int = 2) -> tuple[Items, list[tuple[str, ...]]]:
    """What a model program consumes and opens: its dealer material in order, and each round's kinds.

    The program's control flow depends on shapes (and ``n``) only, so one run on zeros is the
    plan (no second description that could drift). The coordinator of a runtime session opens
    each round as this says (sum or XOR), whatever a party claims.
    """
    items: Items = []
    rounds: list[tuple[str, ...]] = []

    def record(kind: str, *shapes: tuple[int, ...]) -> Arrays:
        items.append((kind, tuple(tuple(s) for s in shapes)))
        return tuple(np.zeros(s, U64) for s in material_shapes(kind, shapes))

    p = Party(n=n, f=f, dealer=record, matmul=lambda a, b: np.zeros(a.shape[:-1] + b.shape[-1:], U64),
              matmul_public=lambda x, w, small: np.zeros(x.shape[:-1] + w.shape[-1:], U64), party=n - 1)
    weights = [np.zeros(s, U64) for s in weight_shapes]
    step = model(p, np.zeros((batch, in_features), U64), layers, weights)
    try:
        contrib = next(step)
        while True:
            rounds.append(kinds_of(contrib))
            contrib = step.send(tuple(np.zeros_like(c) for c in contrib))
    except StopIteration:
        pass
    return items, rounds


def plan(layers: Sequence[Layer], weight_shapes: Sequence[tuple[int, ...]], batch: int, in_features: int,
         f: int, *, n: int = 2) -> Items:
    """The dealer material a model program consumes, in order: ``[(kind, shapes), ...]`` (see :func:`schedule`)."""
    return schedule(layers, weight_shapes, batch, in_features, f, n=n)[0]


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


def _materialized(x: jax.Array) -> jax.Array:
    """``x``, computed once into memory before a ring kernel reads it.

    The kernels read every byte (or limb) of an operand separately; XLA would otherwise fuse
    the whole elementwise step that produced ``x`` (a truncation, the dealer's splits) into
    each of those reads, computing it up to eight times. A reduction is where XLA ends a
    fusion (an optimization barrier is dropped before fusion on CPU), and this one adds zero.
    """
    return jnp.sum(jnp.stack([x, jnp.zeros_like(x)]), axis=0, dtype=x.dtype)


def stacked_party(dealer: Dealer, n: int, f: int) -> Party:
    """A :class:`Party` over stacked JAX shares (the simulator)."""
    from edil.hazmat.ring import _matmul_small

    def matmul_public(x: jax.Array, w: jax.Array, small: bool) -> jax.Array:
        x = _materialized(x)
        return _matmul_small(x, w) if small else _matmul(x, w.astype(jnp.uint64))

    def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
        return _matmul(_materialized(a), _materialized(b))

    return Party(n=n, f=f, dealer=dealer, matmul=matmul, matmul_public=matmul_public, stacked=True)


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
    if kind in ("trunc", "trunc2f"):
        return (shapes[0],) * 3
    if kind == "square":
        return (shapes[0],) * 2
    if kind == "mul":
        return (shapes[0],) * 3
    if kind == "matmul":
        return (shapes[0], shapes[1], (shapes[0][0], shapes[1][1]))
    if kind == "and":
        return (shapes[0], shapes[1], shapes[1])
    if kind == "dabit":
        return (shapes[0],) * 2
    if kind == "select":
        return (shapes[1], shapes[1], shapes[0], shapes[0])
    raise ShapeError(f"unknown dealer material {kind!r}")
