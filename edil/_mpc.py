"""The ``Masked`` protocol, written once as pure JAX functions of stacked shares.

Every protocol step takes shares stacked on axis 0 (``(n, ...)`` uint64) and a *dealer*, the
source of offline correlated randomness (Beaver triples, square pairs, truncation masks). The
same protocol code runs with three dealers:

* :class:`LiveDealer` draws the randomness inline: offline and online fused in one XLA program
  (what single operations use).
* :class:`RecordingDealer` draws it and keeps it: jit-compiling a protocol with this dealer and
  returning only the recorded material gives the *offline phase* (XLA removes every
  data-dependent op, since the outputs do not depend on the data).
* :class:`ReplayDealer` hands back recorded material in order: the *online phase*.

:func:`count_openings` traces a protocol abstractly (``jax.eval_shape``) with a
:class:`CountingDealer` to know how many elements it opens, without running it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from edil.hazmat.ring import _matmul, _matmul_small

_U64 = jnp.uint64


def random_ring(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.bits(key, shape, _U64)


def split_secret(key: jax.Array, secret: jax.Array, n: int) -> jax.Array:
    """Additive sharing of ``secret``: ``n - 1`` uniform shares and the difference."""
    others = random_ring(key, (n - 1, *secret.shape))
    first = secret - jnp.sum(others, axis=0, dtype=_U64)
    return jnp.concatenate([first[None], others], axis=0)


def open_(shares: jax.Array) -> jax.Array:
    """Opening: every party reveals its share; the sum is the secret."""
    return jnp.sum(shares, axis=0, dtype=_U64)


# --- dealers ------------------------------------------------------------------------------------
class LiveDealer:
    """Draws correlated randomness inline from a key (offline and online fused)."""

    def __init__(self, key: jax.Array, n: int, f: int) -> None:
        self.key, self.n, self.f = key, n, f
        self.opened = 0  # elements opened (static, counted while tracing)
        self.rounds = 0
        self.triples = 0

    def _keys(self, k: int) -> list[jax.Array]:
        self.key, *subs = jax.random.split(self.key, k + 1)
        return subs

    def _emit(self, material: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        return material

    def trunc(self, shape: tuple[int, ...]) -> tuple[jax.Array, ...]:
        k_r, k_a, k_b, k_c = self._keys(4)
        r = random_ring(k_r, shape)
        mat = (
            split_secret(k_a, r, self.n),
            split_secret(k_b, r >> _U64(self.f), self.n),
            split_secret(k_c, r >> _U64(63), self.n),
        )
        return self._emit(mat)

    def square(self, shape: tuple[int, ...]) -> tuple[jax.Array, ...]:
        k_a, k_s, k_t = self._keys(3)
        a = random_ring(k_a, shape)
        return self._emit((split_secret(k_s, a, self.n), split_secret(k_t, a * a, self.n)))

    def triple(self, kind: str, xs: tuple[int, ...], ys: tuple[int, ...]) -> tuple[jax.Array, ...]:
        k_a, k_b, k_sa, k_sb, k_sc = self._keys(5)
        a, b = random_ring(k_a, xs), random_ring(k_b, ys)
        c = a * b if kind == "mul" else _matmul(a, b)
        return self._emit((split_secret(k_sa, a, self.n), split_secret(k_sb, b, self.n), split_secret(k_sc, c, self.n)))


class RecordingDealer(LiveDealer):
    """A live dealer that also keeps every piece of material it hands out (offline phase)."""

    def __init__(self, key: jax.Array, n: int, f: int) -> None:
        super().__init__(key, n, f)
        self.material: list[tuple[jax.Array, ...]] = []

    def _emit(self, material: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        self.material.append(material)
        return material


class ReplayDealer:
    """Hands back recorded material in order (online phase)."""

    def __init__(self, material: Sequence[tuple[jax.Array, ...]], n: int, f: int) -> None:
        self._it = iter(material)
        self.n, self.f = n, f
        self.opened = self.rounds = self.triples = 0

    def _next(self, *_: Any) -> tuple[jax.Array, ...]:
        return next(self._it)

    trunc = square = _next

    def triple(self, kind: str, xs: tuple[int, ...], ys: tuple[int, ...]) -> tuple[jax.Array, ...]:
        return next(self._it)


Dealer = LiveDealer | ReplayDealer


# --- protocol steps -----------------------------------------------------------------------------
def trunc(x: jax.Array, d: Dealer) -> jax.Array:
    """Dealer-assisted truncation by ``f`` bits (see ``edil._masked`` for the error bound)."""
    f = d.f
    r_sh, rhi_sh, msb_sh = d.trunc(x.shape[1:])
    d.opened += x[0].size
    d.rounds += 1
    c = open_(x + r_sh) + _U64(1 << 62)
    not_msb_c = _U64(1) - (c >> _U64(63))
    out = msb_sh * (not_msb_c << _U64(64 - f)) - rhi_sh
    return out.at[0].add((c >> _U64(f)) - _U64(1 << (62 - f)))


def mul(x: jax.Array, y: jax.Array, d: Dealer) -> jax.Array:
    """Elementwise Beaver product (``2f`` fractional bits: truncate afterwards)."""
    a, b, c = d.triple("mul", x.shape[1:], y.shape[1:])
    d.opened += x[0].size + y[0].size
    d.rounds += 1
    d.triples += x[0].size
    e, g = open_(x - a), open_(y - b)
    return (c + e * b + g * a).at[0].add(e * g)


def square(x: jax.Array, d: Dealer) -> jax.Array:
    """``x * x`` with a square pair ``(a, a^2)``: one opened value per element instead of two."""
    a, aa = d.square(x.shape[1:])
    d.opened += x[0].size
    d.rounds += 1
    d.triples += x[0].size
    e = open_(x - a)
    return (aa + _U64(2) * e * a).at[0].add(e * e)


def matmul(x: jax.Array, y: jax.Array, d: Dealer) -> jax.Array:
    """Shared ``(m, k) @ (k, n)`` with a matrix Beaver triple (truncate afterwards)."""
    a, b, c = d.triple("matmul", x.shape[1:], y.shape[1:])
    d.opened += x[0].size + y[0].size
    d.rounds += 1
    d.triples += x.shape[1] * y.shape[2]
    e, g = open_(x - a), open_(y - b)
    return (c + _matmul(e, b) + _matmul(a, g)).at[0].add(_matmul(e, g))


def matmul_public(x: jax.Array, w: jax.Array, small: bool) -> jax.Array:
    """Shares ``@`` a public encoded matrix (signed int64), local to each party."""
    return _matmul_small(x, w) if small else _matmul(x, w.astype(_U64))


def polyval(x: jax.Array, coeffs: Sequence[int], d: Dealer) -> jax.Array:
    """``sum(c_i x^i)`` for fixed-point encoded coefficients (Python ints, ``f`` bits).

    Powers come from squares (even powers) and Beaver products (odd), each truncated; the
    public-coefficient combination is then truncated once.
    """
    powers = [x]
    for i in range(2, len(coeffs)):
        if i % 2 == 0:
            p = square(powers[i // 2 - 1], d)
        else:
            p = mul(powers[i - 2], x, d)
        powers.append(trunc(p, d))
    acc = jnp.zeros_like(x)
    for c, p in zip(coeffs[1:], powers):
        acc = acc + p * _U64(c % (1 << 64))
    if len(coeffs) > 1:
        acc = trunc(acc, d)
    return acc.at[0].add(_U64(coeffs[0] % (1 << 64)))


# --- whole programs -----------------------------------------------------------------------------
Program = Callable[..., jax.Array]


def count_openings(program: Program, n: int, f: int, *shapes: jax.ShapeDtypeStruct) -> tuple[int, int, int]:
    """(elements opened, rounds, triples) of ``program`` on inputs of these shapes, by tracing only."""
    box: dict[str, LiveDealer] = {}

    def traced(key: jax.Array, *args: jax.Array) -> jax.Array:
        dealer = LiveDealer(key, n, f)
        box["d"] = dealer
        return program(dealer, *args)

    jax.eval_shape(traced, jax.ShapeDtypeStruct((), jax.random.key(0).dtype), *shapes)
    d = box["d"]
    return d.opened, d.rounds, d.triples
