"""``Masked``: additive secret sharing over Z_2^64 with a trusted dealer (semi-honest).

Threat model
    ``n >= 2`` parties hold additive shares ``x = x_0 + ... + x_{n-1} mod 2^64`` of every
    secret; any ``n - 1`` of them see uniformly random ring elements, whatever the secret. The
    parties follow the protocol (semi-honest) and a *dealer* that never sees data hands out the
    offline randomness: Beaver triples and truncation pairs. The dealer is trusted not to
    collude with the parties. Nothing here protects against a malicious party changing its
    share; that is what redundancy and Freivalds audits in :mod:`edil.proofs` are for.

Fixed point
    Reals carry ``frac_bits`` fractional bits (default 16). A product of two encoded values has
    ``2*frac_bits`` and is *truncated* back with the dealer-assisted protocol below.

Truncation (``trunc``)
    For a shared ``x`` with ``|x| < 2^62`` (as a signed ring value), the dealer deals shares of
    a uniform ``r``, of ``r >> f`` and of ``msb(r)``. The parties open ``c = x + 2^62 + r``,
    which is uniform and so hides ``x`` perfectly. Because ``x + 2^62`` lies in ``[0, 2^63)``,
    the addition wrapped exactly when ``msb(r) = 1`` and ``msb(c) = 0``, a *linear* function of
    the shared bit ``msb(r)``; the parties then compute
    ``(c >> f) - (r >> f) + wrap * 2^(64-f) - 2^(62-f)`` locally. Error bound: the result
    equals ``floor(x / 2^f) + b`` with an unknown carry ``b`` in ``{0, 1}`` (the borrow between
    the dropped low bits of ``c`` and ``r``), so ``|trunc(x) - x / 2^f| < 1`` unit in the last
    place (``2^-f``), with no probabilistic failure as long as ``|x| < 2^62``. Tested in
    ``tests/test_masked.py``.

Communication
    Every opening is counted in :attr:`Scheme.stats`: each of the ``n`` parties sends its
    8-byte share of each opened element to the ``n - 1`` others, ``n (n-1) 8`` bytes per
    element. Reconstruction towards the client (``decode``) is counted separately as
    ``stats.extra["bytes_to_client"]`` (``8 n`` bytes per element).

Example:
    >>> import jax
    >>> from edil import Masked
    >>> s = Masked(n_parties=3, key=jax.random.key(0))
    >>> x = s.encode([[1.0, 2.0]])
    >>> s.decode(s.matmul_public(x, [[1.0], [0.5]])).round(3).tolist()
    [[2.0]]
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edil._errors import SchemeMismatchError, ShapeError
from edil._fixed import FixedPoint
from edil._scheme import Encoded, Scheme
from edil.hazmat import ring
from edil.hazmat.ring import SMALL_BITS, _matmul, _matmul_small, x64

__all__ = ["Masked", "Share", "SharedTensor"]

_U64 = jnp.uint64


@dataclass(frozen=True, eq=False)
class SharedTensor(Encoded):
    """All ``n`` parties' shares of one secret, stacked on axis 0 (``(n, *shape)`` uint64).

    In one process the shares sit side by side; :meth:`Masked.split` gives each party its own
    :class:`Share` to ship to a different node.
    """

    shares: jax.Array
    sharing_id: bytes


@dataclass(frozen=True, eq=False)
class Share:
    """One party's share of one secret: what a single node holds."""

    scheme_id: str
    party: int
    n_parties: int
    sharing_id: bytes
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


def _random_ring(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.bits(key, shape, _U64)


def _split_secret(key: jax.Array, secret: jax.Array, n: int) -> jax.Array:
    """Additive sharing: ``n - 1`` uniform shares and the difference."""
    others = _random_ring(key, (n - 1, *secret.shape))
    first = secret - jnp.sum(others, axis=0, dtype=_U64)
    return jnp.concatenate([first[None], others], axis=0)


def _add_public_party0(shares: jax.Array, p: jax.Array) -> jax.Array:
    return shares.at[0].add(p)


@partial(jax.jit, static_argnames=("f",))
def _trunc(shares: jax.Array, key: jax.Array, f: int) -> jax.Array:
    """Dealer-assisted truncation by ``f`` bits; see the module docstring for the error bound."""
    n = shares.shape[0]
    k_r, k_sr, k_sh, k_sm = jax.random.split(key, 4)
    shape = shares.shape[1:]
    r = _random_ring(k_r, shape)
    r_sh = _split_secret(k_sr, r, n)
    rhi_sh = _split_secret(k_sh, r >> _U64(f), n)
    msb_sh = _split_secret(k_sm, r >> _U64(63), n)
    offset = _U64(1 << 62)
    c = jnp.sum(shares + r_sh, axis=0, dtype=_U64) + offset  # the opening
    not_msb_c = _U64(1) - (c >> _U64(63))
    out = msb_sh * (not_msb_c << _U64(64 - f)) - rhi_sh
    return out.at[0].add((c >> _U64(f)) - _U64(1 << (62 - f)))


@jax.jit
def _beaver_mul(x: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array:
    n = x.shape[0]
    k_a, k_b, k_sa, k_sb, k_sc = jax.random.split(key, 5)
    a = _random_ring(k_a, x.shape[1:])
    b = _random_ring(k_b, y.shape[1:])
    a_sh, b_sh, c_sh = _split_secret(k_sa, a, n), _split_secret(k_sb, b, n), _split_secret(k_sc, a * b, n)
    e = jnp.sum(x - a_sh, axis=0, dtype=_U64)
    d = jnp.sum(y - b_sh, axis=0, dtype=_U64)
    z = c_sh + e * b_sh + d * a_sh
    return z.at[0].add(e * d)


@jax.jit
def _beaver_matmul(x: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array:
    n = x.shape[0]
    k_a, k_b, k_sa, k_sb, k_sc = jax.random.split(key, 5)
    a = _random_ring(k_a, x.shape[1:])
    b = _random_ring(k_b, y.shape[1:])
    a_sh, b_sh, c_sh = _split_secret(k_sa, a, n), _split_secret(k_sb, b, n), _split_secret(k_sc, _matmul(a, b), n)
    e = jnp.sum(x - a_sh, axis=0, dtype=_U64)
    d = jnp.sum(y - b_sh, axis=0, dtype=_U64)
    z = c_sh + _matmul(e, b_sh) + _matmul(a_sh, d)
    return z.at[0].add(_matmul(e, d))


class Masked(Scheme):
    """Additive secret sharing among ``n_parties`` over Z_2^64, fixed point, Beaver triples.

    Args:
        n_parties: number of share holders, at least 2.
        frac_bits: fractional bits of the fixed-point encoding (default 16).
        key: JAX PRNG key for shares and the dealer's offline randomness (keyword-only). When
            omitted, a key is drawn from ``os.urandom``; pass one for reproducible runs.

    Raises:
        ValueError: ``n_parties < 2`` or ``frac_bits`` out of range.
    """

    name = "masked"

    def __init__(self, n_parties: int = 2, *, frac_bits: int = 16, key: jax.Array | None = None) -> None:
        super().__init__()
        if not isinstance(n_parties, int) or isinstance(n_parties, bool) or n_parties < 2:
            raise ValueError(f"Masked needs n_parties >= 2, got {n_parties!r}")
        self.n_parties = n_parties
        self.fp = FixedPoint(frac_bits)
        if key is None:
            key = jax.random.key(int.from_bytes(os.urandom(8), "little") >> 1)
        self._key = key
        self._counter = 0
        self._tag = hashlib.blake2b(np.asarray(jax.random.key_data(key)).tobytes(), digest_size=8).digest()

    @property
    def frac_bits(self) -> int:
        return self.fp.frac_bits

    @property
    def scheme_id(self) -> str:
        return f"masked/n={self.n_parties}/f={self.frac_bits}/ring=64"

    @property
    def params(self) -> dict[str, Any]:
        return {"scheme": self.name, "n_parties": self.n_parties, "frac_bits": self.frac_bits, "ring_bits": 64}

    # --- internals -----------------------------------------------------------------------------
    def _next_key(self) -> jax.Array:
        self._key, sub = jax.random.split(self._key)
        return sub

    def _new_id(self) -> bytes:
        self._counter += 1
        return hashlib.blake2b(self._tag + self._counter.to_bytes(8, "little"), digest_size=8).digest()

    def _wrap(self, shares: jax.Array) -> SharedTensor:
        return SharedTensor(self.scheme_id, tuple(shares.shape[1:]), shares, self._new_id())

    def _count_opening(self, elements: int, rounds: int = 1) -> None:
        self.stats.openings += rounds
        self.stats.bytes_opened += self.n_parties * (self.n_parties - 1) * 8 * elements

    @x64
    def _truncate(self, shares: jax.Array) -> jax.Array:
        self._count_opening(int(np.prod(shares.shape[1:])))
        return _trunc(shares, self._next_key(), self.frac_bits)

    # --- encode / decode -------------------------------------------------------------------------
    @x64
    def encode(self, x: Any) -> SharedTensor:
        """Secret-share a real array among the parties (fixed point, then additive shares).

        Raises:
            EncodingError: NaN/inf or non-numeric input.
            OverflowRangeError: a value outside ``|x| < 2^(31 - frac_bits)``.
        """
        secret = jnp.asarray(self.fp.encode(x), dtype=_U64)
        return self._wrap(_split_secret(self._next_key(), secret, self.n_parties))

    encode_weights = encode

    @x64
    def decode(self, value: Encoded) -> np.ndarray:
        self.check(value)
        shares: jax.Array = value.shares  # type: ignore[attr-defined]
        elements = int(np.prod(value.shape))
        self.stats.extra["bytes_to_client"] = self.stats.extra.get("bytes_to_client", 0) + 8 * self.n_parties * elements
        return self.fp.decode(np.asarray(jnp.sum(shares, axis=0, dtype=_U64)))

    def split(self, value: Encoded) -> list[Share]:
        """Each party's :class:`Share` of ``value``: what would be sent to node ``i``."""
        self.check(value)
        data = ring.to_numpy(value.shares)  # type: ignore[attr-defined]
        return [
            Share(self.scheme_id, i, self.n_parties, value.sharing_id, data[i])  # type: ignore[attr-defined]
            for i in range(self.n_parties)
        ]

    def join(self, shares: Sequence[Share]) -> SharedTensor:
        """Reassemble the parties' shares of one sharing into a :class:`SharedTensor`.

        Raises:
            SchemeMismatchError: shares of another scheme or of different sharings.
            ValueError: a party missing or present twice.
            ShapeError: shares of different shapes.
        """
        shares = list(shares)
        for s in shares:
            if not isinstance(s, Share):
                raise TypeError(f"expected Share objects, got {type(s).__name__}")
            if s.scheme_id != self.scheme_id:
                raise SchemeMismatchError(f"share of {s.scheme_id!r} given to {self.scheme_id!r}")
        ids = {s.sharing_id for s in shares}
        if len(ids) > 1:
            raise SchemeMismatchError(
                f"shares come from {len(ids)} different sharings ({', '.join(sorted(i.hex() for i in ids))}); "
                "they cannot be combined"
            )
        parties = sorted(s.party for s in shares)
        if parties != list(range(self.n_parties)):
            raise ValueError(f"need exactly one share from each of parties 0..{self.n_parties - 1}, got {parties}")
        shapes = {s.shape for s in shares}
        if len(shapes) > 1:
            raise ShapeError(f"shares have different shapes: {sorted(shapes)}")
        ordered = sorted(shares, key=lambda s: s.party)
        stacked = ring.asarray(np.stack([s.data for s in ordered]))
        return SharedTensor(self.scheme_id, ordered[0].shape, stacked, ordered[0].sharing_id)

    def reconstruct(self, shares: Sequence[Share]) -> np.ndarray:
        """Open a secret from all parties' shares (see :meth:`join` for the errors)."""
        return self.decode(self.join(shares))

    # --- linear operations (local, no communication) -------------------------------------------
    def _aligned(self, a: Encoded, b: Encoded) -> jax.Array:
        """``b``'s shares reshaped so they broadcast against ``a``'s behind the party axis."""
        pad = (1,) * (len(a.shape) - len(b.shape))
        return b.shares.reshape((self.n_parties, *pad, *b.shape))  # type: ignore[attr-defined]

    @x64
    def add(self, a: Encoded, b: Encoded) -> SharedTensor:
        self.check(a, b)
        self.check_broadcast(a, b, "add")
        return self._wrap(a.shares + self._aligned(a, b))  # type: ignore[attr-defined]

    @x64
    def sub(self, a: Encoded, b: Encoded) -> SharedTensor:
        self.check(a, b)
        self.check_broadcast(a, b, "sub")
        return self._wrap(a.shares - self._aligned(a, b))  # type: ignore[attr-defined]

    @x64
    def add_public(self, a: Encoded, p: Any) -> SharedTensor:
        self.check(a)
        pub = self.fp.encode(self.public_array(p, a.shape, "add_public"))
        return self._wrap(_add_public_party0(a.shares, jnp.asarray(np.broadcast_to(pub, a.shape))))  # type: ignore[attr-defined]

    @x64
    def mul_public(self, a: Encoded, p: Any) -> SharedTensor:
        self.check(a)
        pub = jnp.asarray(self.fp.encode(self.public_array(p, a.shape, "mul_public")))
        return self._wrap(self._truncate(a.shares * pub))  # type: ignore[attr-defined]

    @x64
    def matmul_public(self, a: Encoded, w: Any) -> SharedTensor:
        self.check(a)
        w_arr = np.asarray(w, dtype=np.float64)
        self.check_matmul_shapes(a.shape, w_arr.shape, "matmul_public")
        w_enc = self.fp.encode(w_arr).view(np.int64)
        shares: jax.Array = a.shares  # type: ignore[attr-defined]
        if w_enc.size == 0 or int(np.max(np.abs(w_enc))) < (1 << SMALL_BITS):
            prod = _matmul_small(shares, jnp.asarray(w_enc))
        else:
            prod = _matmul(shares, jnp.asarray(w_enc.view(np.uint64)))
        return self._wrap(self._truncate(prod))

    @x64
    def sum(self, a: Encoded, axis: int) -> SharedTensor:
        self.check(a)
        ax = self.check_axis(a.shape, axis, "sum")
        return self._wrap(jnp.sum(a.shares, axis=ax + 1, dtype=_U64))  # type: ignore[attr-defined]

    # --- products of shared values (Beaver triples) ------------------------------------------
    @x64
    def _mul_shares(self, x: jax.Array, y: jax.Array) -> jax.Array:
        elements = int(np.prod(x.shape[1:]))
        self._count_opening(2 * elements)
        self.stats.triples += elements
        return self._truncate(_beaver_mul(x, y, self._next_key()))

    def mul(self, a: Encoded, b: Encoded) -> SharedTensor:
        """Elementwise product of two shared values: one Beaver triple per element."""
        self.check(a, b)
        self.check_same_shape(a, b, "mul")
        return self._wrap(self._mul_shares(a.shares, b.shares))  # type: ignore[attr-defined]

    @x64
    def matmul(self, a: Encoded, b: Encoded) -> SharedTensor:
        """Shared ``(m, k)`` @ shared ``(k, n)`` with a matrix Beaver triple (model privacy)."""
        self.check(a, b)
        self.check_matmul_shapes(a.shape, b.shape, "matmul")
        m, k = a.shape
        n = b.shape[1]
        self._count_opening(m * k + k * n)
        self.stats.triples += m * n
        return self._wrap(self._truncate(_beaver_matmul(a.shares, b.shares, self._next_key())))  # type: ignore[attr-defined]

    @x64
    def polyval(self, a: Encoded, coeffs: Sequence[float]) -> SharedTensor:
        """``sum(coeffs[i] * a**i)``: powers by Beaver products, then one truncation.

        Degree ``d`` costs ``d - 1`` Beaver products (and their truncations) plus one final
        truncation for the public-coefficient combination.
        """
        self.check(a)
        c = [float(v) for v in np.asarray(coeffs, dtype=np.float64).ravel()]
        if not c:
            raise ValueError("polyval needs at least one coefficient")
        x: jax.Array = a.shares  # type: ignore[attr-defined]
        powers = [x]
        for i in range(2, len(c)):
            half = powers[i // 2 - 1]
            other = powers[i - i // 2 - 1]
            powers.append(self._mul_shares(half, other))
        c_enc = self.fp.encode(c).view(np.int64)
        acc = jnp.zeros_like(x)
        for ci, p in zip(c_enc[1:], powers):
            acc = acc + p * _U64(int(ci) % (1 << 64))
        if len(c) > 1:
            self._count_opening(int(np.prod(a.shape)))
            acc = _trunc(acc, self._next_key(), self.frac_bits)
        acc = acc.at[0].add(_U64(int(c_enc[0]) % (1 << 64)))
        return self._wrap(acc)
