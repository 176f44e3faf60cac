"""``Masked``: additive secret sharing over Z_2^64 with a trusted dealer (semi-honest).

Threat model
    ``n >= 2`` parties hold additive shares ``x = x_0 + ... + x_{n-1} mod 2^64`` of every
    secret; any ``n - 1`` of them see uniformly random ring elements, whatever the secret. The
    parties follow the protocol (semi-honest) and a *dealer* that never sees data hands out the
    offline randomness: Beaver triples and truncation pairs. The dealer is trusted not to
    collude with the parties. Nothing in the protocol itself stops a malicious party changing
    its share; on the runtime the coordinator replays every party from its recorded view before
    a job is done, and epoch audits replay sampled parties (:mod:`edil.runtime`).

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
    ``tests/test_masked.py``. The same protocol with ``r >> 2f`` truncates by ``2f`` (a square
    times a coefficient, in a polynomial: see :meth:`Masked.polyval`), with the same bound in
    units of ``2^-2f`` (``tests/test_polynomial_steps.py``).

Polynomials (``polyval``; model layers ``Polynomial``)
    Powers by square pairs and Beaver products, each truncated, then one truncation of the
    public-coefficient sum; three shortcuts drop a truncation each (:func:`edil._mpc.polyval`):
    a top power with coefficient +-1 joins the sum untruncated; a ReLU-shaped degree 4 takes
    ``u = sqrt(|c_4|) x^2`` by a ``2f`` truncation of ``x^2``'s product and adds ``+-u^2``
    untruncated; and in a model, a fitted activation followed by a dense layer leaves its sum at
    ``2f`` fractional bits (``("poly2f", ...)``), the dense layer truncating its product by ``2f``,
    wherever :meth:`~edil.FixedPoint.folds` finds that product inside the ``2^62`` window for the
    whole fit interval. The digits MLP's ReLU fit so costs two squares and one truncation per
    hidden element besides the first layer's (three truncations before), each within the bound
    above.

Comparison (``relu``, ``ltz``, ``maximum``, ``max``, ``argmax``; model layers ``ReLU``, ``MaxPool``)
    Exact, CrypTen-style, with dealer material only (no extra trust). The sign of a shared
    ``x`` is the top bit of its ring value: party ``i``'s share is read as a binary (XOR)
    sharing in which it alone holds ``x_i``; carry-save adders take the ``n`` words to two
    and a Kogge-Stone adder adds them, on packed 64-bit words with binary Beaver triples
    (openings are XORs). A bit then multiplies an additive value in one round with a daBit
    (a random bit shared both ways) and a mask pair: ``relu(x) = x - x [x < 0]``, no
    truncation, no error, for every ring value. ``max``/``argmax`` run a tournament of
    ``ceil(log2 m)`` comparison levels (``argmax`` carries one-hot rows; ties go to the first
    index, as ``numpy.argmax``). Cost of one ReLU element: at most ``8 + (n - 2)`` rounds (7 for the
    adder, up to ``n - 2`` carry-save levels, one for the selection), ``21 + 2(n - 2)``
    opened 8-byte words per party; measured in ``benchmarks/compare.py``.

Functions (``exp``, ``reciprocal``, ``sigmoid``, ``tanh``, ``softmax``; CrypTen's recipes)
    ``exp(x) = (1 + x/2^k)^(2^k)`` (``k = 8`` squarings): within 3% relative (or 2e-3
    absolute) on ``[-8, 3]``, and in ``[0, 1]`` for any ``x`` in ``[-256, 0]``.
    ``reciprocal``: Newton-Raphson (10 steps) from ``3 exp(1/2 - x) + 0.003``, within 0.2% (or
    5e-4) on ``[0.1, 100]``. ``sigmoid``: ``1 / (1 + exp(-|x|))`` by 4 Newton steps from a
    linear start on ``[1, 2]``, mirrored by the exact sign: within 5e-3 on ``[-10, 10]``.
    ``tanh(x) = 2 sigmoid(2x) - 1``: within 1e-2 on ``[-5, 5]``. ``softmax``: exact maximum,
    ``exp`` of the (non-positive) differences and one reciprocal of the sum (in ``[1, m]``):
    within 1e-2 while the inputs along the axis span less than 256. Tested against numpy at
    ``frac_bits=16`` in ``tests/test_masked_compare.py``.

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

import functools
import hashlib
import math
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edil import _mpc as mpc
from edil._dealer import Stream
from edil._errors import ParameterError, ReplayError, SchemeMismatchError, ShapeError, UnsupportedOperationError
from edil._fixed import FixedPoint
from edil._scheme import Encoded, Scheme
from edil.hazmat import ring
from edil.hazmat.ring import SMALL_BITS, x64

__all__ = ["Masked", "Preprocessed", "Share", "SharedTensor"]

_U64 = jnp.uint64


@dataclass(frozen=True, eq=False)
class SharedTensor(Encoded):
    """All ``n`` parties' shares of one secret, stacked on axis 0 (``(n, *shape)`` uint64).

    In one process the shares sit side by side; :meth:`Masked.split` gives each party its own
    :class:`Share` to ship to a different node.
    """

    shares: jax.Array
    sharing_id: bytes
    #: Largest ``|x|`` of the secret when it was encoded (the data owner's knowledge, never sent
    #: to a node); ``None`` for derived values. Models use it to check ring headroom.
    bound: float | None = None


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


def _encode_int(v: int) -> int:
    return int(v) % (1 << 64)


# --- programs: protocol compositions, compiled once per (kind, static params, parties, bits) ----
# Each program is a party program of edil._mpc (the one protocol, also run by nodes and audits),
# driven here on stacked shares so that the whole computation is one XLA program.
def _trunc_after(step: mpc.Step, p: mpc.Party) -> mpc.Step:
    return (yield from mpc.trunc(p, (yield from step)))


def _make_program(kind: str, static: tuple[Any, ...]) -> Callable[..., mpc.Step]:
    if kind == "trunc":
        return lambda p, x: mpc.trunc(p, x)
    if kind == "mul_public":
        return lambda p, x, c: mpc.trunc(p, x * c)
    if kind == "mul":
        return lambda p, x, y: _trunc_after(mpc.mul(p, x, y), p)
    if kind == "matmul":
        return lambda p, x, y: _trunc_after(mpc.matmul(p, x, y), p)
    if kind == "matmul_public":
        (small,) = static
        return lambda p, x, w: mpc.trunc(p, p.matmul_public(x, w, small))
    if kind == "poly":
        return lambda p, x: mpc.polyval(p, x, static)
    if kind == "model":
        return lambda p, x, *weights: mpc.model(p, x, static, weights)
    if kind == "maximum":
        return lambda p, x, y: _maximum(p, x, y)
    exact = {"relu": mpc.relu, "max": mpc.max_, "argmax": mpc.argmax}
    if kind in exact:
        return lambda p, x: exact[kind](p, x)
    if kind == "ltz":
        return lambda p, x: _ltz(p, x)
    smooth = {"exp": mpc.exp, "reciprocal": mpc.reciprocal, "sigmoid": mpc.sigmoid, "tanh": mpc.tanh, "softmax": mpc.softmax}
    if kind in smooth:
        return lambda p, x: smooth[kind](p, x, *static)
    raise ParameterError(f"unknown masked program {kind!r}")


def _ltz(p: mpc.Party, x: Any) -> mpc.Step:
    return (yield from mpc.to_arith(p, (yield from mpc.ltz(p, x)), 1 << p.f))


def _maximum(p: mpc.Party, x: Any, y: Any) -> mpc.Step:
    d = x - y
    return y + (yield from mpc.select(p, d, (yield from mpc.ltz(p, d)) ^ p.on_first(mpc.U64(1), d)))


def _exact_layers(model: Any) -> dict[int, tuple[Any, ...]]:
    """The program layers of a model's exact ReLU and max-pooling layers, by layer identity.

    Neither grows the bound :meth:`Masked.check_precision` propagates (``|max| <= max |x|``),
    and the comparison is exact for every ring value, so nothing more needs checking.
    """
    from edil.models import MaxPool, ReLU

    out: dict[int, tuple[Any, ...]] = {}
    for layer in model.layers:
        if isinstance(layer, ReLU):
            out[id(layer)] = ("relu",)
        elif isinstance(layer, MaxPool):
            out[id(layer)] = ("maxpool", tuple(tuple(int(v) for v in row) for row in layer.index.tolist()))
    return out


class _BlockDealer(mpc.JaxDealer):
    """:class:`~edil._mpc.JaxDealer` whose uniform words come, in order, from one block drawn beforehand.

    The block is AES-256-CTR keystream drawn on the host (:class:`~edil._dealer.Stream`, the
    runtime dealer's CSPRNG, AES-NI): about an order of magnitude less CPU time per word than
    JAX's threefry inside the program, which dominated the whole-protocol time of a model.
    Everything derived from the words (products, shifted masks, the splits) is still computed
    inside the compiled program. ``block=None`` only counts the words (:func:`_words`).
    """

    def __init__(self, block: jax.Array | None, n: int, f: int, *, record: bool = False) -> None:
        super().__init__(None, n, f, record=record)  # type: ignore[arg-type]  # no key: words come from the block
        self._block, self.used = block, 0

    def _uniform(self, shape: tuple[int, ...], kind: str = mpc.ADD) -> jax.Array:
        size = math.prod(shape)
        self.used += size
        if self._block is None:
            return jnp.zeros(shape, _U64)
        if self.used > self._block.shape[0]:
            raise ShapeError(f"the dealer block holds {self._block.shape[0]} words; the program needs more")
        return self._block[self.used - size : self.used].reshape(shape)

    def finish(self) -> None:
        """Check that the program used every word of its block (a block sized for another program fails)."""
        if self._block is not None and self.used != self._block.shape[0]:
            raise ShapeError(f"the dealer block holds {self._block.shape[0]} words; the program used {self.used}")


def _from_blocks(y: jax.Array, batch: int) -> jax.Array:
    """Per-block outputs ``(blocks, n, rows, ...)`` as stacked shares ``(n, batch, ...)`` (padding rows dropped)."""
    q, n, rows = y.shape[:3]
    return jnp.moveaxis(y, 0, 1).reshape((n, q * rows, *y.shape[3:]))[:, :batch]


@functools.lru_cache(maxsize=256)
def _compiled(kind: str, static: tuple[Any, ...], n: int, f: int, phase: str, rows: int = 0) -> Callable[..., Any]:
    """The jitted program of one phase; ``rows > 0`` runs a row-wise program one block of ``rows`` rows at a time.

    Row blocks (:func:`_row_block`) keep every intermediate of the protocol small enough to stay
    in cache and out of fresh memory, where the whole batch at once spends more time in page
    faults and memory traffic than in arithmetic. Each block draws its own disjoint words of
    the dealer block, so no randomness is shared between blocks; the openings are the same
    values the whole-batch program opens, row by row (padding rows of the last block are
    dropped).
    """
    if kind == "share":
        return jax.jit(lambda key, secret: mpc.JaxDealer(key, n, f).share(secret))
    program = _make_program(kind, static)

    def fused_one(block: jax.Array, *args: jax.Array) -> jax.Array:
        dealer = _BlockDealer(block, n, f)
        p = mpc.stacked_party(dealer, n, f)
        out = mpc.run_stacked(program(p, *args), p)
        dealer.finish()
        return out

    def offline_one(block: jax.Array, *args: jax.Array) -> list[tuple[jax.Array, ...]]:
        dealer = _BlockDealer(block, n, f, record=True)
        p = mpc.stacked_party(dealer, n, f)
        mpc.run_stacked(program(p, *args), p)  # data-dependent ops are dead code: XLA drops them
        dealer.finish()
        return dealer.material  # type: ignore[return-value]

    def online_one(material: list[tuple[jax.Array, ...]], *args: jax.Array) -> jax.Array:
        p = mpc.stacked_party(mpc.ReplayDealer(material), n, f)
        return mpc.run_stacked(program(p, *args), p)

    phases: dict[str, Callable[..., Any]] = {"fused": fused_one, "offline": offline_one, "online": online_one}
    one = phases[phase]
    if not rows:
        return jax.jit(one)

    def blocked(first: Any, x: jax.Array, *rest: jax.Array) -> Any:
        batch = x.shape[1]
        q = -(-batch // rows)
        x = jnp.pad(x, [(0, 0), (0, q * rows - batch)] + [(0, 0)] * (x.ndim - 2))  # zero rows fill the last block
        if phase != "online":
            first = first.reshape(q, -1)  # each row block its own words of the dealer block

        def block(i: jax.Array) -> Any:
            mine = jax.tree_util.tree_map(lambda a: a[i], first)
            return one(mine, jax.lax.dynamic_slice_in_dim(x, i * rows, rows, axis=1), *rest)

        out = jax.lax.map(block, jnp.arange(q))
        return out if phase == "offline" else _from_blocks(out, batch)

    return jax.jit(blocked)


#: Elements per party of the widest layer that one row block holds (a few hundred KB of ring
#: words per intermediate: the protocol's passes over a block stay in a core's cache).
_BLOCK_ELEMENTS = 1 << 16


#: At most this many runs of a fused, row-blocked program, so that drawing the dealer's words for
#: one run overlaps the previous runs.
_PARTS = 4


def _row_block(kind: str, static: tuple[Any, ...], shapes: Sequence[tuple[int, ...]]) -> int:
    """Rows per block for running ``kind`` block by block on stacked arguments of ``shapes``; 0: the whole batch at once.

    Only model programs whose every layer works row by row (public dense layers, polynomials,
    exact ReLU, max pooling, flatten) and whose batch spans more than one block: a shared
    (private) dense layer opens its weights' mask once for all rows. The widest intermediate
    row (the input, a layer's output, a max-pooling gather) sets the block size.
    """
    if kind != "model" or len(shapes[0]) != 3 or any(layer[0] == "private" for layer in static):
        return 0
    widths = [shapes[0][2], *(s[-1] for s in shapes[1:] if s)]
    widths += [len(layer[1]) * len(layer[1][0]) for layer in static if layer[0] == "maxpool" and layer[1]]
    rows = max(8, _BLOCK_ELEMENTS // max(max(widths), 1))
    batch = shapes[0][1]
    if batch <= rows:
        return 0
    return -(-batch // -(-batch // rows))  # blocks of equal size: at most one padding row per block


@functools.lru_cache(maxsize=256)
def _words(kind: str, static: tuple[Any, ...], n: int, f: int, shapes: tuple[tuple[tuple[int, ...], str], ...]) -> int:
    """How many uniform words one run of a program draws from its dealer block (by tracing only)."""
    dealer = _BlockDealer(None, n, f)

    def traced(*args: jax.Array) -> jax.Array:
        p = mpc.stacked_party(dealer, n, f)
        return mpc.run_stacked(_make_program(kind, static)(p, *args), p)

    with jax.enable_x64(True):
        jax.eval_shape(traced, *[jax.ShapeDtypeStruct(s, jnp.dtype(dt)) for s, dt in shapes])
    return dealer.used


def _run_words(kind: str, static: tuple[Any, ...], n: int, f: int, args: Sequence[Any]) -> tuple[int, int]:
    """``(words, rows)``: the dealer words one run of a program on ``args`` (arrays or shape structs)
    draws, and the rows per block it runs with (:func:`_row_block`; every row block draws the
    words of one block of rows)."""
    shapes = tuple((tuple(a.shape), str(a.dtype)) for a in args)
    rows = _row_block(kind, static, [sh for sh, _ in shapes])
    if not rows:
        return _words(kind, static, n, f, shapes), 0
    one = (((n, rows, *shapes[0][0][2:]), shapes[0][1]), *shapes[1:])
    return _words(kind, static, n, f, one) * -(-shapes[0][0][1] // rows), rows


@functools.lru_cache(maxsize=256)
def _cost(kind: str, static: tuple[Any, ...], n: int, f: int, shapes: tuple[tuple[tuple[int, ...], str], ...]) -> tuple[int, int, int]:
    structs = [jax.ShapeDtypeStruct(s, jnp.dtype(dt)) for s, dt in shapes]
    with jax.enable_x64(True):
        return mpc.count_openings(_make_program(kind, static), n, f, *structs)


@dataclass(eq=False)
class _ModelEntry:
    """What :class:`Masked` keeps per encoded model (see ``Masked._model_entry``)."""

    model: Any
    layers: list[Any]
    ids: tuple[Any, ...]
    spec: tuple[Any, ...]
    weights: list[jax.Array]
    bounds: set[float | None]


@dataclass(eq=False)
class Preprocessed:
    """Offline material (Beaver triples, truncation masks) for one run of one model.

    Single use: reusing correlated randomness would let the parties learn the inputs, so a
    second use raises :class:`~edil.ReplayError`.
    """

    scheme_id: str
    spec: tuple[Any, ...]
    input_shape: tuple[int, ...]
    material: list[tuple[jax.Array, ...]]
    used: bool = False
    #: Rows per block of the program that drew it (0: the whole batch at once); each of its
    #: arrays then leads with one entry per block.
    rows: int = 0


class Masked(Scheme):
    """Additive secret sharing among ``n_parties`` over Z_2^64, fixed point, Beaver triples.

    Args:
        n_parties: number of share holders, at least 2.
        frac_bits: fractional bits of the fixed-point encoding (default 16).
        key: JAX PRNG key for shares and the dealer's offline randomness (keyword-only; the
            dealer's words are AES-256-CTR keystream under a fresh key derived from it for every
            run). When omitted, a key is drawn from ``os.urandom``; pass one for reproducible runs.

    Raises:
        ParameterError: ``n_parties < 2`` or ``frac_bits`` out of range.
    """

    name = "masked"

    def __init__(self, n_parties: int = 2, *, frac_bits: int = 16, key: jax.Array | None = None) -> None:
        super().__init__()
        if not isinstance(n_parties, int) or isinstance(n_parties, bool) or n_parties < 2:
            raise ParameterError(f"Masked needs n_parties >= 2, got {n_parties!r}")
        self.n_parties = n_parties
        self.fp = FixedPoint(frac_bits)
        if key is None:
            key = jax.random.key(int.from_bytes(os.urandom(8), "little") >> 1)
        self._key = key
        self._counter = 0
        self._tag = hashlib.blake2b(np.asarray(jax.random.key_data(key)).tobytes(), digest_size=8).digest()
        self._block_buf = np.empty(0, np.uint8)  # host storage of the dealer's words (see _dealt)
        self._block_reader: Any = None
        self._block_lock = threading.Lock()
        # Per encoded model: its program spec, encoded weights and the input bounds already
        # checked (models and their weights are read-only, so neither changes under it).
        self._models: weakref.WeakKeyDictionary[Any, _ModelEntry] = weakref.WeakKeyDictionary()

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

    def _account(self, kind: str, static: tuple[Any, ...], args: Sequence[jax.Array]) -> None:
        shapes = tuple((tuple(a.shape), str(a.dtype)) for a in args)
        opened, rounds, triples = _cost(kind, static, self.n_parties, self.frac_bits, shapes)
        self.stats.openings += rounds
        self.stats.triples += triples
        self.stats.bytes_opened += self.n_parties * (self.n_parties - 1) * 8 * opened

    def _dealt(self, kind: str, static: tuple[Any, ...], phase: str, *args: jax.Array) -> tuple[Any, int]:
        """Run a program that draws dealer words (``fused`` or ``offline``) on a fresh block of them.

        The words are AES-256-CTR keystream under a fresh key derived from the scheme's key,
        written into host storage this scheme reuses run after run (fresh memory for tens of MB
        costs more in page faults than drawing the words) and taken by JAX without a copy where
        it can. The storage is overwritten only once the run that read it has finished. A fused
        program run in row blocks is dispatched in up to :data:`_PARTS` runs over consecutive
        words of the keystream, so drawing one part's words overlaps the runs before it.

        Returns:
            The program's output and the rows per block it ran with (:func:`_row_block`).
        """
        words, rows = _run_words(kind, static, self.n_parties, self.frac_bits, args)
        blocks = -(-args[0].shape[1] // rows) if rows else 1
        seed = hashlib.sha3_256(b"EDIL/masked/dealer-block/v1" + np.asarray(jax.random.key_data(self._next_key())).tobytes()).digest()
        with self._block_lock:
            if self._block_reader is not None:
                jax.block_until_ready(self._block_reader)  # the last run read the storage: let it finish
                self._block_reader = None
            parts = min(blocks, _PARTS) if phase == "fused" and rows else 1
            if self._block_buf.size < 8 * words + 80 * parts:
                self._block_buf = np.empty(8 * words + 80 * parts, np.uint8)
            program = _compiled(kind, static, self.n_parties, self.frac_bits, phase, rows)
            stream = Stream(seed)
            if parts > 1:
                # Runs of a few row blocks each, on consecutive words of one keystream (the words
                # one run would draw, in its order): the next part's words are drawn while the
                # previous parts run (a dispatch does not wait for its run).
                x, rest = args[0], args[1:]
                per_block, outs, start = words // blocks, [], 0
                cuts = [blocks * i // parts for i in range(parts + 1)]
                for lo, hi in zip(cuts, cuts[1:]):
                    count = per_block * (hi - lo)
                    block = jax.device_put(stream.words_into(self._block_buf[start:], count), may_alias=True)
                    outs.append(program(block, x[:, lo * rows : hi * rows], *rest))
                    start += 8 * count + 80
                out = jnp.concatenate(outs, axis=1)
            else:
                block = jax.device_put(stream.words_into(self._block_buf, words), may_alias=True)  # no copy on a CPU
                out = program(block, *args)
            self._block_reader = out
        return out, rows

    def _run(self, kind: str, static: tuple[Any, ...], *args: jax.Array) -> jax.Array:
        """Run a program with offline and online fused; count what it opens."""
        self._account(kind, static, args)
        return self._dealt(kind, static, "fused", *args)[0]

    # --- encode / decode -------------------------------------------------------------------------
    @x64
    def encode(self, x: Any) -> SharedTensor:
        """Secret-share a real array among the parties (fixed point, then additive shares).

        Raises:
            EncodingError: NaN/inf or non-numeric input.
            OverflowRangeError: a value outside ``|x| < 2^(31 - frac_bits)``.
        """
        enc = self.fp.encode(x)
        bound = float(np.max(np.abs(self.fp.decode(enc)))) if enc.size else 0.0
        shares = _compiled("share", (), self.n_parties, self.frac_bits, "fused")(self._next_key(), jnp.asarray(enc, dtype=_U64))
        return SharedTensor(self.scheme_id, tuple(shares.shape[1:]), shares, self._new_id(), bound)

    def encode_weights(self, w: Any) -> SharedTensor:
        """Secret-share model weights (the same sharing as :meth:`encode`)."""
        return self.encode(w)

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
            UnsupportedOperationError: something that is not a :class:`Share`.
            ParameterError: a party missing or present twice.
            ShapeError: shares of different shapes.
        """
        shares = list(shares)
        for s in shares:
            if not isinstance(s, Share):
                raise UnsupportedOperationError(f"expected Share objects, got {type(s).__name__}")
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
            raise ParameterError(f"need exactly one share from each of parties 0..{self.n_parties - 1}, got {parties}")
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
        pub = jnp.asarray(self.fp.encode(self.public_array(p, a.shape, "add_public")))
        return self._wrap(a.shares.at[0].add(pub))  # type: ignore[attr-defined]

    @x64
    def sum(self, a: Encoded, axis: int) -> SharedTensor:
        self.check(a)
        ax = self.check_axis(a.shape, axis, "sum")
        return self._wrap(jnp.sum(a.shares, axis=ax + 1, dtype=_U64))  # type: ignore[attr-defined]

    # --- operations that open masked values --------------------------------------------------------
    @x64
    def mul_public(self, a: Encoded, p: Any) -> SharedTensor:
        self.check(a)
        pub = jnp.asarray(self.fp.encode(self.public_array(p, a.shape, "mul_public")))
        return self._wrap(self._run("mul_public", (), a.shares, pub))  # type: ignore[attr-defined]

    def _public_weight(self, w: Any, x_shape: tuple[int, ...], op: str) -> tuple[np.ndarray, bool]:
        w_arr = np.asarray(w, dtype=np.float64)
        self.check_matmul_shapes(x_shape, w_arr.shape, op)
        w_enc = self.fp.encode(w_arr).view(np.int64)
        small = w_enc.size == 0 or int(np.max(np.abs(w_enc))) < (1 << SMALL_BITS)
        return w_enc, small

    @x64
    def matmul_public(self, a: Encoded, w: Any) -> SharedTensor:
        self.check(a)
        w_enc, small = self._public_weight(w, a.shape, "matmul_public")
        return self._wrap(self._run("matmul_public", (small,), a.shares, jnp.asarray(w_enc)))  # type: ignore[attr-defined]

    @x64
    def mul(self, a: Encoded, b: Encoded) -> SharedTensor:
        """Elementwise product of two shared values: one Beaver triple per element."""
        self.check(a, b)
        self.check_same_shape(a, b, "mul")
        return self._wrap(self._run("mul", (), a.shares, b.shares))  # type: ignore[attr-defined]

    @x64
    def matmul(self, a: Encoded, b: Encoded) -> SharedTensor:
        """Shared ``(m, k)`` @ shared ``(k, n)`` with a matrix Beaver triple (model privacy)."""
        self.check(a, b)
        self.check_matmul_shapes(a.shape, b.shape, "matmul")
        return self._wrap(self._run("matmul", (), a.shares, b.shares))  # type: ignore[attr-defined]

    def _coeffs(self, coeffs: Sequence[float]) -> tuple[int, ...]:
        c = np.asarray(coeffs, dtype=np.float64).ravel()
        if c.size == 0:
            raise ParameterError("polyval needs at least one coefficient")
        return tuple(int(v) for v in self.fp.encode(c).view(np.int64))

    @x64
    def polyval(self, a: Encoded, coeffs: Sequence[float]) -> SharedTensor:
        """``sum(coeffs[i] * a**i)``: powers by squares and Beaver products, one final truncation.

        Degree ``d`` costs at most ``d - 1`` products (only the powers a non-zero coefficient
        needs are computed; a ReLU fit has no ``x^3``) and their truncations, plus one truncation for
        the public-coefficient combination. A top power with coefficient exactly +-1 joins the
        combination untruncated; a ReLU-shaped degree 4 (``c_3 = 0``) runs as
        ``c_1 x + (c_2 / s) u +- u^2`` with ``u = s x^2``, ``s = sqrt(|c_4|)``, truncated by ``2f``
        straight from ``x^2``'s product (:func:`edil._fixed.square_split`): two squares and two
        truncations instead of three, within 8 units of ``2^-f`` of the encoded coefficients'
        polynomial on the fit's interval (``tests/test_polynomial_steps.py``).
        """
        self.check(a)
        return self._wrap(self._run("poly", self._coeffs(coeffs), a.shares))  # type: ignore[attr-defined]

    # --- exact comparison, and CrypTen-style functions built on it ---------------------------------
    def _last_axis(self, a: Encoded, axis: int, op: str) -> tuple[int, jax.Array]:
        ax = self.check_axis(a.shape, axis, op)
        return ax, jnp.moveaxis(a.shares, ax + 1, -1)  # type: ignore[attr-defined]

    @x64
    def relu(self, a: Encoded) -> SharedTensor:
        """``max(a, 0)``, exactly (see "Comparison" in the module docstring)."""
        self.check(a)
        return self._wrap(self._run("relu", (), a.shares))  # type: ignore[attr-defined]

    @x64
    def ltz(self, a: Encoded) -> SharedTensor:
        """``1.0`` where ``a < 0``, else ``0.0``, exactly."""
        self.check(a)
        return self._wrap(self._run("ltz", (), a.shares))  # type: ignore[attr-defined]

    @x64
    def maximum(self, a: Encoded, b: Encoded) -> SharedTensor:
        """Elementwise ``max(a, b)`` of two shared values of one shape, exactly."""
        self.check(a, b)
        self.check_same_shape(a, b, "maximum")
        return self._wrap(self._run("maximum", (), a.shares, b.shares))  # type: ignore[attr-defined]

    @x64
    def max(self, a: Encoded, axis: int) -> SharedTensor:
        """The maximum along ``axis``, exactly: a tournament of ``ceil(log2 m)`` comparison levels."""
        self.check(a)
        _, x = self._last_axis(a, axis, "max")
        return self._wrap(self._run("max", (), x))

    @x64
    def argmax(self, a: Encoded, axis: int, *, one_hot: bool = True) -> SharedTensor:
        """Where the maximum along ``axis`` is (the first one on ties, as ``numpy.argmax``), shared.

        Args:
            a: the shared values.
            axis: the axis to search.
            one_hot: a shared one-hot along ``axis`` (1.0 at the maximum, 0.0 elsewhere; the
                shape of ``a``); otherwise the shared index as a fixed-point integer (``axis`` dropped).
        """
        self.check(a)
        ax, x = self._last_axis(a, axis, "argmax")
        onehot = self._run("argmax", (), x)
        if one_hot:
            return self._wrap(jnp.moveaxis(onehot, -1, ax + 1))
        index = jnp.arange(onehot.shape[-1], dtype=_U64)
        return self._wrap(jnp.sum(onehot * index, axis=-1, dtype=_U64))  # integer times fixed-point 1: no truncation

    @x64
    def exp(self, a: Encoded, *, iters: int = 8) -> SharedTensor:
        """``exp(a) ~ (1 + a/2^k)^(2^k)`` with ``k = iters`` squarings (error: see "Functions")."""
        self.check(a)
        if not 1 <= iters <= self.frac_bits:
            raise ParameterError(f"iters must lie in [1, frac_bits={self.frac_bits}], got {iters}")
        return self._wrap(self._run("exp", (iters,), a.shares))  # type: ignore[attr-defined]

    @x64
    def reciprocal(self, a: Encoded, *, iters: int = 10) -> SharedTensor:
        """``1 / a`` for ``a`` in ``[0.1, 100]``, by Newton-Raphson from CrypTen's start (see "Functions")."""
        self.check(a)
        return self._wrap(self._run("reciprocal", (iters,), a.shares))  # type: ignore[attr-defined]

    @x64
    def sigmoid(self, a: Encoded) -> SharedTensor:
        """The logistic function, from an exact ``|a|`` and sign, ``exp`` and a reciprocal on ``[1, 2]``."""
        self.check(a)
        return self._wrap(self._run("sigmoid", (), a.shares))  # type: ignore[attr-defined]

    @x64
    def tanh(self, a: Encoded) -> SharedTensor:
        """``tanh(a) = 2 sigmoid(2a) - 1``."""
        self.check(a)
        return self._wrap(self._run("tanh", (), a.shares))  # type: ignore[attr-defined]

    @x64
    def softmax(self, a: Encoded, axis: int = -1) -> SharedTensor:
        """``exp(a - max) / sum`` along ``axis`` (exact maximum; ``exp`` of values in ``[-256, 0]``)."""
        self.check(a)
        ax, x = self._last_axis(a, axis, "softmax")
        return self._wrap(jnp.moveaxis(self._run("softmax", (), x), -1, ax + 1))

    # --- whole models, compiled into one protocol program -------------------------------------------
    def check_precision(self, model: Any, bound: float | None) -> None:
        """Refuse a model this fixed point would evaluate wrongly, before anything runs.

        Checked, layer by layer (see :class:`~edil.FixedPoint`, "What the checks cover"):
        *underflow*, a weight or polynomial coefficient whose encoding loses more than half of
        it in a way that can show in the layer's output; and *ring overflow*, the worst case of
        every pre-truncation value over all inputs with ``|x| <= bound``, propagated through the
        layers, must stay below ``2^62`` (the window of the truncation protocol). A polynomial
        fitted on an interval (an activation) takes its inputs to lie in that interval, the
        assumption its fit already makes; a value outside it is outside what is checked. With
        ``bound`` unknown (``None``: a value not straight from :meth:`encode`), the first layers
        are judged for inputs of magnitude 1 and overflow is checked from the first fitted
        activation on.

        Raises:
            EncodingError: a weight or coefficient underflows (the message names it and the
                ``frac_bits`` that would hold it).
            OverflowRangeError: a layer could pass ``2^62`` in the ring for some input.
        """
        self.fp.check_model(model, bound, fold=True)

    def program(self, model: Any, *, private_weights: bool, bound: float | None = None) -> tuple[tuple[Any, ...], list[np.ndarray]]:
        """``model`` as a party program of the one Masked protocol (what runtime nodes run).

        Args:
            model: a :class:`~edil.models.Sequential`.
            private_weights: dense layers become ``("private",)`` layers whose weights the
                caller shares among the parties; otherwise ``("public", small)`` layers whose
                encoded weights every party gets in the clear.
            bound: largest ``|input|`` (see :meth:`check_precision`).

        Returns:
            ``(layers, arrays)``: the program's layers (see :mod:`edil.hazmat.mpc`) and, per
            dense layer, its encoded weight and bias (public: weight as signed int64; private:
            both as ring elements, the secrets to share).

        Raises:
            EncodingError: a weight or coefficient the fixed-point encoding cannot hold.
            OverflowRangeError: the model could overflow the ring (see :meth:`check_precision`).
        """
        from edil.models import Dense, Flatten, Polynomial

        self.check_precision(model, bound)
        exact = _exact_layers(model)

        layers: list[tuple[Any, ...]] = []
        arrays: list[np.ndarray] = []
        for k, layer in enumerate(model.layers):
            if isinstance(layer, Dense):
                if private_weights:
                    layers.append(("private",))
                    arrays += [self.fp.encode(layer.weight), self.fp.encode(layer.bias)]
                else:
                    w_enc, small = self._public_weight(layer.weight, (1, layer.in_features), "dense")
                    layers.append(("public", small))
                    arrays += [w_enc, self.fp.encode(layer.bias)]
            elif isinstance(layer, Polynomial):
                layers.append((self._poly_tag(model.layers, k), self._coeffs(layer.coeffs)))
            elif isinstance(layer, Flatten):
                layers.append(("flatten",))
            elif id(layer) in exact:
                layers.append(exact[id(layer)])
            else:
                raise self.unsupported(f"a layer of type {type(layer).__name__}")
        return tuple(layers), arrays

    def _poly_tag(self, layers: Sequence[Any], k: int) -> str:
        """``"poly2f"`` when polynomial ``layers[k]`` leaves its sum at ``2f`` fractional bits for the
        dense layer after it (:meth:`~edil.FixedPoint.folds`: one truncation of its output fewer),
        else ``"poly"``."""
        from edil.models import Dense

        nxt = layers[k + 1] if k + 1 < len(layers) else None
        return "poly2f" if isinstance(nxt, Dense) and self.fp.folds(layers[k], nxt) else "poly"

    def _model_entry(self, encoded_model: Any) -> _ModelEntry:
        """The cached spec and weights of ``encoded_model`` (rebuilt if its model or weights were replaced)."""
        entry = self._models.get(encoded_model)
        layers = encoded_model._weights  # noqa: SLF001
        if entry is None or entry.model is not encoded_model.model or entry.layers is not layers or len(entry.ids) != len(layers) \
                or any(a is not b for a, b in zip(entry.ids, layers)):
            spec, weights = self._model_spec(encoded_model)
            entry = _ModelEntry(encoded_model.model, layers, tuple(layers), spec, weights, set())
            self._models[encoded_model] = entry
        for enc in layers:
            if enc is not None:
                self.check(*enc)
        return entry

    def _checked(self, encoded_model: Any, bound: float | None) -> _ModelEntry:
        """:meth:`check_precision` of the model for inputs up to ``bound``, once per model and bound."""
        entry = self._model_entry(encoded_model)
        if bound not in entry.bounds:
            self.check_precision(encoded_model.model, bound)
            entry.bounds.add(bound)
        return entry

    def _model_spec(self, encoded_model: Any) -> tuple[tuple[Any, ...], list[jax.Array]]:
        from edil.models import Dense, Polynomial

        spec: list[tuple[Any, ...]] = []
        weights: list[jax.Array] = []
        exact = _exact_layers(encoded_model.model)
        for k, (layer, enc) in enumerate(zip(encoded_model.model.layers, encoded_model._weights)):  # noqa: SLF001
            if isinstance(layer, Dense):
                if enc is None:
                    w_enc, small = self._public_weight(layer.weight, (1, layer.in_features), "dense")
                    spec.append(("public", small))
                    weights += [jnp.asarray(w_enc), jnp.asarray(self.fp.encode(layer.bias))]
                else:
                    self.check(*enc)
                    spec.append(("private",))
                    weights += [enc[0].shares, enc[1].shares]
            elif isinstance(layer, Polynomial):
                spec.append((self._poly_tag(encoded_model.model.layers, k), self._coeffs(layer.coeffs)))
            elif id(layer) in exact:
                spec.append(exact[id(layer)])
        return tuple(spec), weights

    @x64
    def run_model(self, encoded_model: Any, x: Encoded, *, preprocessed: Preprocessed | None = None) -> SharedTensor:
        """Run a whole encoded model as one compiled protocol (same openings as op by op).

        Args:
            encoded_model: an :class:`~edil.models.EncodedModel` bound to this scheme.
            x: shared ``(batch, in_features)`` input.
            preprocessed: offline material from :meth:`preprocess`; drawn inline when omitted.

        Raises:
            ReplayError: ``preprocessed`` was already used.
            ShapeError: ``preprocessed`` was made for another model or batch shape.
        """
        self.check(x)
        entry = self._checked(encoded_model, getattr(x, "bound", None))
        spec, weights = entry.spec, entry.weights
        args = (x.shares, *weights)  # type: ignore[attr-defined]
        self._account("model", spec, args)
        if preprocessed is None:
            out = self._dealt("model", spec, "fused", *args)[0]
        else:
            if preprocessed.used:
                raise ReplayError("preprocessed material was already used; reusing Beaver triples would leak the inputs")
            if preprocessed.scheme_id != self.scheme_id or preprocessed.spec != spec or preprocessed.input_shape != x.shape:
                raise ShapeError(
                    f"preprocessed material is for input {preprocessed.input_shape} of another model/scheme, got {x.shape}"
                )
            preprocessed.used = True
            out = _compiled("model", spec, self.n_parties, self.frac_bits, "online", preprocessed.rows)(preprocessed.material, *args)
        return self._wrap(out)

    @x64
    def dealer_words(self, encoded_model: Any, batch: int) -> int:
        """How many uniform 64-bit words the dealer expands (AES-256-CTR) for one run of ``encoded_model`` on ``batch`` rows.

        The count a whole-protocol run (:meth:`run_model` without ``preprocessed``) or
        :meth:`preprocess` draws: every secret of the material and ``n - 1`` shares of each.
        """
        entry = self._model_entry(encoded_model)
        x = jax.ShapeDtypeStruct((self.n_parties, batch, encoded_model.model.in_features), _U64)
        return _run_words("model", entry.spec, self.n_parties, self.frac_bits, (x, *entry.weights))[0]

    @x64
    def preprocess(self, encoded_model: Any, batch: int) -> Preprocessed:
        """Offline phase: the dealer's material for one run of ``encoded_model`` on ``batch`` rows."""
        entry = self._model_entry(encoded_model)
        spec, weights = entry.spec, entry.weights
        x = jnp.zeros((self.n_parties, batch, encoded_model.model.in_features), _U64)
        material, rows = self._dealt("model", spec, "offline", x, *weights)
        return Preprocessed(self.scheme_id, spec, (batch, encoded_model.model.in_features), material, rows=rows)
