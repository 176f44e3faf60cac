"""``Replicated``: 2-out-of-3 replicated secret sharing over Z_2^64 (ABY3-style), no dealer.

Threat model
    Three parties, honest majority, semi-honest: any *one* party may try to learn from what it
    sees, but all follow the protocol and no two collude. There is no dealer and no offline
    phase: every piece of randomness comes from pseudorandom functions keyed by pairwise keys
    the parties agree on once.

Sharing
    A secret ``x`` is split as ``x = x_0 + x_1 + x_2 mod 2^64``; party ``i`` holds the pair
    ``(x_i, x_{i+1})`` (indices mod 3). Any single pair is two uniformly random ring elements,
    whatever ``x``; any two parties together hold all three components. Linear operations
    (adding, public scaling, public matrix products, sums) act on each component locally.

Keys and zero-sharings
    Party ``i`` draws an X25519 key pair from its own seed (:func:`party_private_key`). Key
    ``k_i`` belongs to the pair of parties ``(i, i+1)``: both compute it from their X25519 shared
    secret with HKDF-SHA256, the pair index and both public keys in the ``info``
    (:func:`pair_key`). ``F(k, .)`` is AES-128 in counter mode under a 128-bit key derived
    from ``k`` with HKDF-SHA256 (:class:`KeyStream`; the X25519 agreement gives about 128-bit
    security, so a 256-bit AES key would buy nothing and cost 1.5 times the rounds):
    both holders of ``k_i`` draw the same words in the same order, because every program's draws
    depend only on shapes. A zero-sharing is ``alpha_i = F(k_i) - F(k_{i-1})`` (it sums to 0
    and needs no message).

Multiplication (:func:`mul`, :func:`matmul`)
    ``z_i = x_i y_i + x_i y_{i+1} + x_{i+1} y_i + alpha_i`` is an additive (3-out-of-3) sharing
    of ``x y``; party ``i`` sends ``z_i`` to party ``i-1`` (*reshare*): one round, one ring
    element per output element per party. A matrix product is the same with ring matmuls of the
    shares (the bit-exact kernels of :mod:`edil.hazmat.ring`), so its messages have the
    output's size, not the operands'. A product by *public* fixed-point weights ``W`` is local
    but needs truncating, which reads only two additive parts of it (below), so
    (:func:`trunc_local`) party 2 computes ``(x_2 + x_0) W``, party 1 ``x_1 W`` and party 0
    nothing: one ring product per party, not one per component it holds.

Truncation without a dealer (ABY3's share truncation, Pi_trunc1)
    Fixed point carries ``f`` fractional bits; a product carries ``2f`` and is truncated by
    ``f``. The value is first written as a *two*-party sharing ``x = A + B`` with ``A`` held by
    one party and ``B`` by another, ``A`` re-randomised by a fresh pairwise PRF word; each
    holder shifts its part arithmetically (``A >> f`` and ``(B >> f) + 1``), and the results
    are turned back into a replicated sharing with one more fresh PRF word. Concretely
    (:func:`trunc`, for a replicated ``x``): ``A = x_2 + x_0 + t`` at party 2 and
    ``B = x_1 - t`` at party 1 with ``t = F(k_1)``; the output components are ``(u, B', A' - u)``
    with ``u = F(k_2)``; party 1 sends ``B'`` to party 0 and party 2 sends ``A' - u`` to party 1:
    one round, two ring elements per element. After a product (:func:`mul_trunc`,
    :func:`matmul_trunc`) the resharing and the truncation are fused: party 0 sends its masked
    ``z_0`` to party 2 (so party 2 holds ``A = z_0 + z_2``, party 1 ``B = z_1``), then the same
    second round: two rounds and three ring elements per element in all, instead of the
    reshare's three plus the truncation's two.

    Error bound. Write ``a``, ``b`` for the signed (two's complement) values of ``A`` and
    ``B``. When ``a + b = x`` holds over the integers (no signed overflow),
    ``floor(a / 2^f) + floor(b / 2^f) + 1`` lies in ``{floor(x / 2^f), floor(x / 2^f) + 1}``:
    the result is within one unit in the last place (``2^-f``) of ``x / 2^f``, and it is
    ``floor + 1`` with probability ``((x mod 2^f) + 1) / 2^f`` (stochastic rounding, biased by
    ``2^-f`` of an ulp on average). The
    sum overflows, and the result is off by ``2^(64-f)`` (``2^(64-2f)`` in reals: garbage), only
    when ``a`` falls in an interval of ``|x| + 1`` ring values next to ``-2^63`` / ``2^63``.
    ``A`` is uniform given ``x`` (it holds a fresh PRF word), so one truncation fails with
    probability at most ``(|x| + 1) / 2^64``, which is ``<= 2^(l - 64)`` for a value of
    ``l`` bits (``|x| < 2^l``) in the 64-bit ring. Example: a product of two values below 16
    in magnitude with ``f = 16`` has ``l <= 40`` bits, failure probability ``<= 2^-24`` per
    element. Measured in ``tests/test_replicated.py``. For the digits MLP 64-128-10 on all 1797
    rows (largest pre-truncation value 27.4 in reals, the square in the activation, ``2^36.8``
    in the ring), the bound summed over every truncated element of a run is ``1.5e-4``: the
    chance that any truncation of the run fails. Models are checked like ``Masked``'s
    (every pre-truncation value below ``2^62``, :meth:`Replicated.check_precision`), which
    bounds the failure probability per element by ``2^-2``; the realistic bound is the one
    above with the values' actual magnitude.

Comparison without a dealer (``relu``, ``ltz``, ``maximum``, ``max``, ``argmax``; layers ``ReLU``, ``MaxPool``)
    Exact for every ring value, no failure probability. The sign is the top bit of the ring
    value, found by the circuit ``Masked`` runs (:func:`edil._mpc.ltz`) with this sharing's AND
    gate. *A2B*: each component ``x_j`` is, locally, a XOR sharing whose component ``j`` is
    ``x_j`` (:meth:`Party.own`); one carry-save level takes the three words to two (one AND
    round) and a Kogge-Stone adder adds them (seven AND rounds). *AND gate* (:func:`and_`):
    ``z_i = x_i y_i ^ x_i y_{i+1} ^ x_{i+1} y_i`` masked by a XOR zero-sharing from the pairwise
    PRFs, sent to party ``i - 1``: one round, one word per party. *Bit injection*: chosen over
    ABY3's three-party OT, a daBit from the pairwise PRFs (:func:`dabit`): each pair draws a bit,
    XOR-shared for free; its additive sharing takes two exact products, which run beside the
    adder (input independent) and add no round. A selection ``x * b`` (:func:`select`) opens
    ``c = b ^ r`` and reshares ``x r`` in one round, then ``x b = c x + (1 - 2c) x r`` locally.
    ``relu(x) = x - x [x < 0]``.

    Cost of one exact ReLU element: **9 rounds** (8 for the sign, 1 for the selection) and
    **17 words = 136 bytes sent per party** (13 AND words: 1 carry-save + 12 in the adder; 2 for
    the daBit; 2 in the selection), 408 bytes over the three parties; ``max``/``argmax`` over
    ``m`` values: ``ceil(log2 m)`` levels of 9 rounds (ties go to the first index, as
    ``numpy.argmax``). Counted in :attr:`Scheme.stats` and tested in
    ``tests/test_replicated_compare.py``. The simulator runs a program that compares op by op
    instead of as one XLA program (see ``_compiled``).

Communication
    Counted per run in :attr:`Scheme.stats`: ``openings`` counts communication rounds,
    ``bytes_opened`` the bytes all parties sent to each other, and
    ``extra["bytes_sent_by_party_<i>"]`` each party's share of them; ``extra["bytes_to_client"]``
    counts decoding (24 bytes per element: the client needs all three components).

Simulation and one party per node
    Every protocol step is a *party program* (a generator, as in :mod:`edil._mpc`): it computes
    on its own pair only, draws from its own two pairwise streams, yields ``(senders, messages)``
    (every message goes to the party's predecessor ``i-1``) and receives what its successor
    ``i+1`` sent. Party-specific roles go through :meth:`Party.select`, so one program text
    serves every party. :func:`run_stacked` drives it on :class:`Rows` (the three parties'
    arrays side by side; a message arrives by a rotation of the rows) inside one XLA program,
    with the PRF words expanded beforehand in the order the program draws them (the draws
    depend only on shapes); :func:`run_parties` runs three separate programs on host arrays
    (:func:`host_party`), each with only its own pair and its own two streams, relaying the
    messages: what a deployment with one party per node runs. Both give bit-identical results
    (tested). ``run_parties`` can time each party's own compute (``busy``): the per-party
    critical path of ``benchmarks/replicated.py``.

    The simulator's costs: the PRF words of a run are expanded on up to four threads
    (:meth:`KeyStream.expand`: ranges reserved in each stream, then cut into pieces expanded
    from their own counters; AES-CTR releases the GIL) into buffers kept from earlier runs
    (:class:`_WordPool`: a fresh buffer's pages cost the kernel's zeroing, a third of the AES
    time), while XLA already computes the first public layer's products
    (:func:`_first_products`, a program of its own); the rest is one XLA program. In programs
    without comparisons, rounds are not materialised: XLA fuses each party's elementwise work
    across rounds (about half the work, measured on the digits MLP); the int8 ring kernels
    keep materialised inputs and outputs (:func:`_materialize`).

Example:
    >>> from edil import Replicated
    >>> s = Replicated(seed=bytes(32))
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
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edil import _ctr
from edil import _mpc as mpc
from edil._errors import ParameterError, SerializationError, ShapeError, VerificationError
from edil._fixed import FixedPoint
from edil._scheme import Encoded, Scheme
from edil.hazmat import ring
from edil.hazmat.ring import SMALL_BITS, _matmul, _matmul_small, x64

__all__ = [
    "KeyStream",
    "Party",
    "Replicated",
    "ReplicatedTensor",
    "host_party",
    "matmul",
    "matmul_trunc",
    "model",
    "mul",
    "mul_trunc",
    "pair_key",
    "party_private_key",
    "polyval",
    "reshare",
    "run_parties",
    "run_stacked",
    "trunc",
    "trunc_local",
]

U64 = np.uint64
N_PARTIES = 3
Pair = tuple[Any, Any]
#: What a step yields each round: the parties that send, and their messages (to their predecessors).
Round = tuple[tuple[int, ...], tuple[Any, ...]]
Step = Generator[Round, tuple[Any, ...], Any]
EVERYONE = (0, 1, 2)
#: v2: the PRF became AES-128 under a key derived from the pair key. Parties of different
#: versions derive different pair keys, so their sealed messages fail to open (fail closed)
#: instead of mixing two streams into a wrong result.
_PAIR_TAG = b"EDIL/replicated/pair-key/v2"
_PARTY_TAG = b"EDIL/replicated/party-key/v1"
_CLIENT_TAG = b"EDIL/replicated/client-stream/v1"
_PRF_TAG = b"EDIL/replicated/prf-key/aes-128-ctr/v2"


# --- keys and streams ------------------------------------------------------------------------------
def _hkdf(material: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(material)


def party_private_key(seed: bytes, party: int) -> X25519PrivateKey:
    """Party ``party``'s X25519 key pair, drawn from ``seed`` (HKDF-SHA256; its own seed on a node).

    Raises:
        ParameterError: a seed shorter than 16 bytes or a party index not in ``{0, 1, 2}``.
    """
    if not isinstance(seed, bytes) or len(seed) < 16:
        raise ParameterError("a replicated-sharing seed must be at least 16 fresh bytes")
    if party not in EVERYONE:
        raise ParameterError(f"party must be 0, 1 or 2, got {party!r}")
    return X25519PrivateKey.from_private_bytes(_hkdf(seed, _PARTY_TAG + bytes([party])))


def pair_key(own: X25519PrivateKey, peer_public: bytes, pair: int, low_public: bytes, high_public: bytes) -> bytes:
    """The 32-byte PRF key ``k_pair`` of parties ``pair`` and ``pair + 1`` (mod 3).

    Both parties of the pair compute the same key: X25519 of one's private key and the other's
    public key, then HKDF-SHA256 with the pair index and both public keys (party ``pair``'s
    first) in the ``info``, binding the key to who agreed on it.

    Args:
        own: this party's private key.
        peer_public: the other party's 32-byte public key (untrusted bytes).
        pair: the pair's index ``i`` (parties ``i`` and ``i + 1``).
        low_public, high_public: the public keys of parties ``pair`` and ``pair + 1``.

    Raises:
        SerializationError: a public key that is not 32 bytes, or one of small order (the
            shared secret would be all zeros).
        ParameterError: a pair index not in ``{0, 1, 2}``.
    """
    if pair not in EVERYONE:
        raise ParameterError(f"pair must be 0, 1 or 2, got {pair!r}")
    keys = (peer_public, low_public, high_public)
    if not all(isinstance(k, bytes) and len(k) == 32 for k in keys):
        raise SerializationError("an X25519 public key must be 32 bytes")
    try:
        secret = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:  # an all-zero shared secret (a small-order point)
        raise SerializationError("X25519 public key of small order refused") from None
    return _hkdf(secret, _PAIR_TAG + bytes([pair]) + low_public + high_public)


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


class KeyStream:
    """``F(k, .)``: uniform ring elements from AES-128-CTR, counter from zero, under ``HKDF(k)``.

    The 32-byte key ``k`` (a pair key, or a seed's stream key) is not used as a cipher key
    itself: the AES-128 key is HKDF-SHA256 of ``k`` with its own ``info``
    (:data:`_PRF_TAG`), so it is independent of anything else derived from ``k`` (the
    runtime's message keys) and of the AES-256 streams of earlier versions.

    One key drives exactly one stream (a fixed counter start never repeats a keystream under
    another use of the key). Both holders of a pairwise key keep one stream each and draw in
    the same order. Word ``j`` of the stream is half ``j mod 2`` of the AES block under counter
    ``floor(j / 2)``, so a range of words can be expanded on its own, from its own counter
    (:meth:`expand` expands ranges side by side); every draw reserves the next range first,
    so no range is handed out twice (:class:`edil._ctr.CtrWords` does both).

    Raises:
        ParameterError: a key that is not 32 bytes.
    """

    #: Below this many words a draw is expanded in one piece (a thread hand-off costs more).
    _PIECE = _ctr.PIECE

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != 32:
            raise ParameterError("a PRF key must be 32 bytes")
        self._ctr = _ctr.CtrWords(algorithms.AES128(_hkdf(key, _PRF_TAG, 16)))

    @property
    def drawn(self) -> int:
        """Words drawn so far."""
        return self._ctr.drawn

    @staticmethod
    def _buffer(count: int) -> np.ndarray:
        """Room for ``count`` words and one block more, 64-byte aligned (JAX on a CPU takes it without a copy)."""
        return _ctr.buffer(count)

    def words(self, count: int) -> np.ndarray:
        """The next ``count`` words of the stream as ``uint64`` (little-endian keystream)."""
        return KeyStream.expand([self], [count])[0]

    def uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.words(math.prod(shape)).reshape(shape)

    @staticmethod
    def expand(streams: Sequence[KeyStream], counts: Sequence[int]) -> list[np.ndarray]:
        """The next ``counts[i]`` words of each ``streams[i]``, expanded on up to :func:`_aes_threads` threads.

        The same words as drawing them one stream after another (tested): each stream reserves
        its range first, then :func:`edil._ctr.fill_ranges` expands the ranges side by side.
        """
        return KeyStream.expand_into(streams, counts, [KeyStream._buffer(n) for n in counts])

    @staticmethod
    def expand_into(streams: Sequence[KeyStream], counts: Sequence[int], outs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """:meth:`expand` into buffers of :meth:`_buffer`'s shape for these counts (:class:`_WordPool` reuses them).

        Raises:
            ParameterError: a buffer whose size does not fit its count.
        """
        if len(outs) != len(counts) or any(out.nbytes != 8 * n + 16 for out, n in zip(outs, counts)):
            raise ParameterError("PRF word buffers do not match the counts")
        _ctr.fill_ranges([(s._ctr, s._ctr.reserve(n), out.data, n) for s, n, out in zip(streams, counts, outs)],
                         _aes_threads(), _aes_pool)
        return [_ctr.words(out, n) for out, n in zip(outs, counts)]


@functools.cache
def _aes_threads() -> int:
    """Threads that expand PRF words at once: the CPUs this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


class _WordPool:
    """PRF word buffers kept between runs of :meth:`Replicated._run`, so that a run writes into memory already mapped.

    A fresh buffer of a run's words (megabytes) is mapped page by page as AES first writes it:
    the kernel zeroes every page, which cost about as much as a third of the AES itself
    (measured on the digits MLP: 1.5-1.8 ms of 18.7 MB). JAX reads the buffers in place
    (``may_alias``; the JAX arrays that alias them are kept too, so a run hands them to its
    program without a transfer), so a buffer goes back to the pool with the run's output and
    is written again only once that output is ready: the program that read it has finished. A
    buffer is taken by one run at a time (under a lock); at most :attr:`LIMIT` bytes are kept.
    """

    LIMIT = 1 << 26  # 64 MiB: three sets of the digits MLP's words

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[tuple[int, ...], list[tuple[list[np.ndarray], tuple[jax.Array, ...] | None, Any]]] = {}
        self._bytes = 0

    def take(self, counts: tuple[int, ...]) -> tuple[list[np.ndarray], tuple[jax.Array, ...] | None]:
        """Buffers for ``counts`` words (:meth:`KeyStream._buffer`) no program reads any more, and
        the JAX arrays that alias them (``None``: none yet)."""
        with self._lock:
            kept = self._free.get(counts)
            entry = kept.pop() if kept else None
            if entry is not None:
                self._bytes -= sum(b.nbytes for b in entry[0])
        if entry is None:
            return [KeyStream._buffer(n) for n in counts], None
        buffers, arrays, reader = entry
        try:
            jax.block_until_ready(reader)  # the output of the program that read them (normally ready long ago)
        except Exception:  # noqa: BLE001 - deleted by its holder: whether the program finished is unknown
            return [KeyStream._buffer(n) for n in counts], None
        return buffers, arrays

    def give(self, counts: tuple[int, ...], buffers: list[np.ndarray], arrays: tuple[jax.Array, ...] | None,
             reader: Any) -> None:
        """Return ``buffers`` (and ``arrays``, JAX arrays reading them in place, or ``None``), read by
        the program whose output is ``reader``."""
        size = sum(b.nbytes for b in buffers)
        with self._lock:
            if self._bytes + size > self.LIMIT:
                self._free.clear()
                self._bytes = 0
            if size <= self.LIMIT:
                self._free.setdefault(counts, []).append((buffers, arrays, reader))
                self._bytes += size


_WORD_POOL = _WordPool()


@functools.cache
def _aes_pool() -> ThreadPoolExecutor:
    """The helper threads of :meth:`KeyStream.expand` (the calling thread expands one piece itself)."""
    return ThreadPoolExecutor(max_workers=max(1, _aes_threads() - 1), thread_name_prefix="edil-prf")


# --- a party, wherever it runs ---------------------------------------------------------------------
def _holders(pair: int) -> tuple[int, int]:
    return (pair, (pair + 1) % N_PARTIES)


class Rows:
    """The three parties' arrays of one value, side by side (the simulator's representation).

    Arithmetic applies row by row, so a role-specific value (:meth:`Party.select`) costs only
    the row that uses it: XLA drops the rows nobody reads. A public operand broadcasts to
    every row. Numpy scalars on the left defer to these methods (``__array_ufunc__ = None``).
    """

    __slots__ = ("r",)
    __array_ufunc__ = None

    def __init__(self, rows: Any) -> None:
        self.r = tuple(rows)

    def map(self, fn: Callable[[Any], Any]) -> Rows:
        return Rows(fn(a) for a in self.r)

    def _zip(self, other: Any, fn: Callable[[Any, Any], Any]) -> Rows:
        if isinstance(other, Rows):
            return Rows(fn(a, b) for a, b in zip(self.r, other.r))
        return Rows(fn(a, other) for a in self.r)

    def __add__(self, o: Any) -> Rows:
        return self._zip(o, lambda a, b: a + b)

    def __radd__(self, o: Any) -> Rows:
        return self._zip(o, lambda a, b: b + a)

    def __sub__(self, o: Any) -> Rows:
        return self._zip(o, lambda a, b: a - b)

    def __rsub__(self, o: Any) -> Rows:
        return self._zip(o, lambda a, b: b - a)

    def __mul__(self, o: Any) -> Rows:
        return self._zip(o, lambda a, b: a * b)

    def __rmul__(self, o: Any) -> Rows:
        return self._zip(o, lambda a, b: b * a)

    def __xor__(self, o: Any) -> Rows:
        return self._zip(o, lambda a, b: a ^ b)

    def __and__(self, o: Any) -> Rows:
        return self._zip(o, lambda a, b: a & b)

    def __lshift__(self, o: Any) -> Rows:
        return self._zip(o, lambda a, b: a << b)

    def __rshift__(self, o: Any) -> Rows:
        return self._zip(o, lambda a, b: a >> b)

    def __getitem__(self, index: Any) -> Rows:
        return self.map(lambda a: a[index])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.r[0].shape)

    def from_next(self) -> Rows:
        """Row ``i`` takes row ``i + 1``: what each party receives from its successor."""
        return Rows(self.r[1:] + self.r[:1])


def _lift(fn: Callable[..., Any], *vs: Any) -> Any:
    """``fn`` on raw arrays: row by row for :class:`Rows`, once for a host array."""
    if isinstance(vs[0], Rows):
        return Rows(fn(*(v.r[i] for v in vs)) for i in EVERYONE)
    return fn(*vs)


def _pmap(fn: Callable[..., Any], *pairs: Pair) -> Pair:
    """A linear map (slicing, gathering, concatenating) on both components of pairs."""
    return (_lift(fn, *(q[0] for q in pairs)), _lift(fn, *(q[1] for q in pairs)))


class Bits:
    """A replicated XOR sharing of 64-bit words: this party's two components (or :class:`Rows`).

    The secret is ``b_0 ^ b_1 ^ b_2``; party ``i`` holds ``(b_i, b_{i+1})``. XOR, shifts and
    AND with a public mask act on each component (linear over XOR); an AND of two shared words
    is a round (:func:`and_`).
    """

    __slots__ = ("a", "b")
    __array_ufunc__ = None

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b

    def __xor__(self, o: Bits) -> Bits:
        return Bits(self.a ^ o.a, self.b ^ o.b)

    def __and__(self, mask: Any) -> Bits:
        return Bits(self.a & mask, self.b & mask)

    def __lshift__(self, s: Any) -> Bits:
        return Bits(self.a << s, self.b << s)

    def __rshift__(self, s: Any) -> Bits:
        return Bits(self.a >> s, self.b >> s)

    def __getitem__(self, index: Any) -> Bits:
        return Bits(self.a[index], self.b[index])


class Party:
    """Where a party program runs, and what it may use there.

    Args:
        f: fractional bits.
        draw: ``draw(pair, shape)``: the next words of ``F(k_pair)`` for a holder of that key,
            zeros for the party that does not hold it (it never uses them).
        matmul: ring product of two share arrays (leading axes broadcast).
        matmul_public: ``matmul_public(share, w, small)``: a share times public fixed-point
            weights (signed int64; ``small``: their kernel class, :func:`weight_class`).
        stacked: values are :class:`Rows` of all three parties (the simulator).
        party: this party's index (one party on a host).
        materialize: simulated, messages are buffers XLA computes once (:func:`_materialize`);
            off for programs without comparisons (see :func:`run_stacked`).
    """

    n = N_PARTIES  # read by the shared comparison circuit (edil._mpc.to_binary)

    def __init__(self, *, f: int, draw: Callable[[int, tuple[int, ...]], Any], matmul: Callable[[Any, Any], Any],
                 matmul_public: Callable[[Any, Any, int], Any], stacked: bool = False, party: int = 0,
                 materialize: bool = True) -> None:
        self.f, self.draw, self.stacked, self.party, self.materialize = f, draw, stacked, party, materialize
        self.matmul, self.matmul_public = matmul, matmul_public

    @property
    def xp(self) -> Any:
        """The array module of one component (``jax.numpy`` simulated, ``numpy`` on a host)."""
        return jnp if self.stacked else np

    # --- what the shared comparison circuit of edil._mpc asks of a party ---------------------------
    def own(self, x: Pair, j: int) -> Bits:
        """Summand ``x_j`` of the arithmetic secret as a XOR sharing whose component ``j`` is ``x_j``.

        Local: party ``i`` holds ``(x_i, x_{i+1})``, so it knows the components ``i`` and ``i + 1``
        of this sharing (``x_j`` where the index is ``j``, zero elsewhere).
        """
        zero = x[0] * U64(0)
        first = self.select(*(x[0] if i == j else zero for i in EVERYONE))
        second = self.select(*(x[1] if (i + 1) % N_PARTIES == j else zero for i in EVERYONE))
        return Bits(first, second)

    def stack(self, values: Sequence[Bits]) -> Bits:
        """Several same-shaped sharings as one on a new first axis (their ANDs go in one round)."""
        st = lambda *a: self.xp.stack(a)  # noqa: E731
        return Bits(_lift(st, *(v.a for v in values)), _lift(st, *(v.b for v in values)))

    def unstack(self, v: Bits) -> list[Bits]:
        """The inverse of :meth:`stack`."""
        return [v[k] for k in range(self.shape(v.a)[0])]

    def and_(self, x: Bits, y: Bits) -> Step:
        """The AND gate of this sharing (:func:`and_`)."""
        return and_(self, x, y)

    def sent(self, m: Any) -> Any:
        """A message as the sender keeps it: materialised when simulated, as on a network.

        The driver materialises what travels; the sender's own copy is the same buffer, so XLA
        does not fuse the expression behind it into every later use. On a host: ``m`` as it is.
        """
        return Rows(_materialize(m.r)) if self.stacked and self.materialize else m

    def shape(self, v: Any) -> tuple[int, ...]:
        """The shape of a share array."""
        return tuple(v.shape)

    def pair(self, v: Any) -> Pair:
        """A program argument as this party's pair: stacked components ``(3, ...)`` become
        ``(x_i, x_{i+1})`` row by row; on a host the argument already is the pair."""
        if self.stacked:
            first = Rows(v[i] for i in EVERYONE)
            return (first, first.from_next())
        a, b = v
        return (a, b)

    def select(self, v0: Any, v1: Any, v2: Any) -> Any:
        """``v_i`` for party ``i``: a role-specific value (all three computed from this party's data)."""
        if self.stacked:
            return Rows(v.r[i] if isinstance(v, Rows) else v for i, v in enumerate((v0, v1, v2)))
        return (v0, v1, v2)[self.party]

    def role(self, *fns: Callable[[], Any]) -> Any:
        """``fns[i]()`` for party ``i``, computed only where it is used (:meth:`select`, lazily).

        On a host only this party's function runs; simulated, each row takes its own party's
        result and XLA drops the rows nobody reads.
        """
        if self.stacked:
            return self.select(*(fn() for fn in fns))
        return fns[self.party]()

    def zeros(self, shape: tuple[int, ...]) -> Any:
        """A placeholder of ring zeros (what a party that computes nothing in a step holds)."""
        if self.stacked:
            z = jnp.zeros(shape, jnp.uint64)
            return Rows((z, z, z))
        return np.zeros(shape, U64)

    def local(self, fn: Callable[[Any], Any], x: Pair) -> Pair:
        """A linear map applied to both components (simulated: once per component, then passed on)."""
        if self.stacked:
            y = fn(x[0])
            return (y, y.from_next())
        return (fn(x[0]), fn(x[1]))

    def ashr(self, v: Any, bits: int) -> Any:
        """Arithmetic (sign-extending) right shift of ring elements read as signed."""
        if self.stacked:
            return v.map(lambda a: jax.lax.bitcast_convert_type(
                jax.lax.bitcast_convert_type(a, jnp.int64) >> jnp.int64(bits), jnp.uint64))
        return (np.asarray(v, U64).view(np.int64) >> np.int64(bits)).view(U64)

    def add_public(self, x: Pair, c: Any) -> Pair:
        """``x + c`` for a public ring constant: it joins component 0 (party 0's first, party 2's second)."""
        a, b = x
        return (self.role(lambda: a + c, lambda: a, lambda: a), self.role(lambda: b, lambda: b, lambda: b + c))

    def flatten(self, v: Any) -> Any:
        if self.stacked:
            return v.map(lambda a: a.reshape((a.shape[0], -1)))
        return v.reshape((v.shape[0], -1))


def _padd(x: Pair, y: Pair) -> Pair:
    return (x[0] + y[0], x[1] + y[1])


def _pscale(x: Pair, c: Any) -> Pair:
    return (x[0] * c, x[1] * c)


def _product(x: Pair, y: Pair) -> Any:
    """This party's additive share of ``x * y``: ``x_i y_i + x_i y_{i+1} + x_{i+1} y_i``."""
    (a, b), (c, d) = x, y
    return a * (c + d) + b * c


def _matproduct(p: Party, x: Pair, y: Pair) -> Any:
    """This party's additive share of ``x @ y`` (two ring matmuls of its shares)."""
    (a, b), (c, d) = x, y
    return p.matmul(a, c + d) + p.matmul(b, c)


def _c(v: int) -> np.uint64:
    return U64(int(v) % (1 << 64))


# --- protocol steps ----------------------------------------------------------------------------------
def reshare(p: Party, z: Any) -> Step:
    """An additive (3-out-of-3) sharing made replicated: ``z_i + alpha_i`` goes to party ``i-1``. One round."""
    shape = p.shape(z)
    k0, k1, k2 = p.draw(0, shape), p.draw(1, shape), p.draw(2, shape)
    # alpha_i = F(k_i) - F(k_{i-1}): sums to zero
    m = p.sent(p.role(lambda: z + (k0 - k2), lambda: z + (k1 - k0), lambda: z + (k2 - k1)))
    (r,) = yield (EVERYONE, (m,))
    return (m, r)


def mul(p: Party, x: Pair, y: Pair) -> Step:
    """Exact ring product ``x * y`` (no truncation): one round, one element per party."""
    return (yield from reshare(p, _product(x, y)))


def matmul(p: Party, x: Pair, y: Pair) -> Step:
    """Exact ring matrix product ``x @ y`` (no truncation): one round, one output element per party."""
    return (yield from reshare(p, _matproduct(p, x, y)))


def trunc(p: Party, x: Pair) -> Step:
    """Share truncation by ``f`` bits of a replicated value (module docstring: error bound). One round.

    ``A = x_2 + x_0 + t`` at party 2, ``B = x_1 - t`` at party 1, ``t = F(k_1)``; outputs
    ``(u, B', A' - u)`` with ``u = F(k_2)``. Party 1 sends ``B'`` to party 0, party 2 sends
    ``A' - u`` to party 1; party 0 sends nothing.
    """
    a, b = x
    shape = p.shape(a)
    t, u = p.draw(1, shape), p.draw(2, shape)
    # Party 1: B' (+1: the lost carry; the result is floor or floor + 1); party 2: A' - u; party 0
    # computes nothing and sends nothing (its message only keeps the round's shape).
    m = p.role(lambda: p.zeros(shape), lambda: p.ashr(a - t, p.f) + U64(1), lambda: p.ashr(a + b + t, p.f) - u)
    (r,) = yield ((1, 2), (m,))
    return (p.select(u, m, m), p.select(r, r, u))


def trunc_local(p: Party, x: Pair, fn: Callable[[Any], Any], shape: tuple[int, ...]) -> Step:
    """:func:`trunc` of ``fn(x)`` for a ring-linear ``fn`` (a product by public weights), bit-identical.

    :func:`trunc` reads ``A = y_2 + y_0`` at party 2 and ``y_1`` at party 1 only, and ``fn``
    is linear modulo 2^64, so party 2 computes ``fn(x_2 + x_0)``, party 1 ``fn(x_1)`` and party
    0 nothing: one product per party and two in all, instead of one per component (three, two
    per party). ``shape`` is the shape of ``fn``'s output. Same draws, messages and result.
    """
    a, b = x
    return (yield from trunc_given(p, lambda: fn(a), lambda: fn(a + b), shape))


def trunc_given(p: Party, at_1: Callable[[], Any], at_2: Callable[[], Any], shape: tuple[int, ...]) -> Step:
    """The round of :func:`trunc_local` on its two products: ``at_1()`` at party 1, ``at_2()`` at party 2.

    Party 1 sends ``B'``, party 2 ``A' - u``; party 0 neither computes nor sends (its message
    keeps the shape). Draws ``t = F(k_1)``, then ``u = F(k_2)``, of ``shape``.
    """
    t, u = p.draw(1, shape), p.draw(2, shape)
    m = p.role(lambda: p.zeros(shape), lambda: p.ashr(at_1() - t, p.f) + U64(1), lambda: p.ashr(at_2() + t, p.f) - u)
    (r,) = yield ((1, 2), (m,))
    return (p.select(u, m, m), p.select(r, r, u))


def trunc_product(p: Party, z: Any) -> Step:
    """Resharing fused with truncation, from an additive (3-out-of-3) sharing ``z``. Two rounds.

    Masks ``F(k_0)``, ``F(k_1) - F(k_0)``, ``-F(k_1)`` (a zero-sharing); party 0 sends its
    masked ``z_0`` to party 2, which then holds ``A = z_0 + z_2``; party 1 holds ``B = z_1``.
    Then the second round of :func:`trunc` with ``u = F(k_2)``.
    """
    shape = p.shape(z)
    part = yield from _shifted_halves(p, z)
    u = p.draw(2, shape)
    # Party 1: B'; party 2: A' - u; party 0 sends nothing.
    m2 = p.role(lambda: part, lambda: part, lambda: part - u)
    (r2,) = yield ((1, 2), (m2,))
    return (p.select(u, m2, m2), p.select(r2, r2, u))


def _shifted_halves(p: Party, z: Any) -> Step:
    """The first round of :func:`trunc_product`, then each holder's shifted part of ``z``.

    Masks ``F(k_0)``, ``F(k_1) - F(k_0)``, ``-F(k_1)`` (a zero-sharing); party 0 sends its masked
    ``z_0`` to party 2, which then holds ``A = z_0 + z_2``; party 1 holds ``B = z_1``. Returns
    ``A' = A >> f`` at party 2, ``B' = (B >> f) + 1`` at party 1 and zeros at party 0.
    """
    shape = p.shape(z)
    k0, k1 = p.draw(0, shape), p.draw(1, shape)
    m = p.role(lambda: z + k0, lambda: z + (k1 - k0), lambda: z - k1)
    (r,) = yield ((0,), (m,))
    return p.role(lambda: p.zeros(shape), lambda: p.ashr(m, p.f) + U64(1), lambda: p.ashr(m + r, p.f))


def trunc_product_scaled(p: Party, z: Any, c: int) -> Step:
    """:func:`trunc_product` of ``z`` together with the truncated ``c * trunc(z)``, in its two rounds.

    After the first round party 2 holds ``A`` and party 1 ``B`` with ``A + B = z`` over the
    integers (unless the share truncation fails, as for :func:`trunc_product`). Each shifts its
    part, ``A' = A >> f`` and ``B' = (B >> f) + 1``, a two-party sharing of ``y = trunc(z)``
    that again holds over the integers, and shifts its part of the public multiple again:
    ``(c A') >> f`` and ``((c B') >> f) + 1``. With ``|c| < 2^f`` neither product reaches
    ``2^63`` (``|A'|, |B'| <= 2^(63-f)``), so this second truncation has no failure case at all:
    the result is ``floor(c y / 2^f)`` or one more, as a separate truncation would give. Both
    become replicated in the second round (one more PRF word, ``u2 = F(k_2)``, and one more
    element from each sender): one round and one PRF word fewer than truncating ``c y`` apart.
    """
    if not -(1 << p.f) < c < (1 << p.f):
        raise ParameterError(f"trunc_product_scaled needs |c| < 2^{p.f}, got {c}")
    shape = p.shape(z)
    part = yield from _shifted_halves(p, z)
    u, u2 = p.draw(2, shape), p.draw(2, shape)
    cc, f = _c(c), p.f
    # Party 1: B' and its shifted multiple; party 2: A' and its shifted multiple, masked by u and
    # u2; party 0 computes nothing and sends nothing (its messages keep the round's shape).
    m2 = p.role(lambda: part, lambda: part, lambda: part - u)
    q2 = p.role(lambda: part, lambda: p.ashr(part * cc, f) + U64(1), lambda: p.ashr(part * cc, f) - u2)
    r2, rq = yield ((1, 2), (m2, q2))
    return (p.select(u, m2, m2), p.select(r2, r2, u)), (p.select(u2, q2, q2), p.select(rq, rq, u2))


def mul_trunc(p: Party, x: Pair, y: Pair) -> Step:
    """Fixed-point product ``x * y`` truncated by ``f`` bits."""
    return (yield from trunc_product(p, _product(x, y)))


def matmul_trunc(p: Party, x: Pair, y: Pair) -> Step:
    """Fixed-point matrix product ``x @ y`` truncated by ``f`` bits."""
    return (yield from trunc_product(p, _matproduct(p, x, y)))


def parallel(steps: Sequence[Step]) -> Step:
    """Run steps side by side: their messages of one round travel together.

    Raises:
        ShapeError: the steps do not send in the same pattern.
    """
    results: list[Any] = [None] * len(steps)
    pending: dict[int, Round] = {}
    for i, s in enumerate(steps):
        try:
            pending[i] = next(s)
        except StopIteration as stop:
            results[i] = stop.value
    while pending:
        senders = {rnd[0] for rnd in pending.values()}
        if len(senders) != 1:
            raise ShapeError("steps run in parallel must send in the same pattern")
        order = sorted(pending)
        received = yield (senders.pop(), tuple(m for i in order for m in pending[i][1]))
        pos, nxt = 0, {}
        for i in order:
            n = len(pending[i][1])
            try:
                nxt[i] = steps[i].send(tuple(received[pos : pos + n]))
            except StopIteration as stop:
                results[i] = stop.value
            pos += n
        pending = nxt
    return results


def polyval(p: Party, x: Pair, coeffs: Sequence[int]) -> Step:
    """``sum(c_i x^i)`` for fixed-point coefficients (Python ints with ``f`` fractional bits).

    Split at ``h = ceil(d / 2)`` for degree ``d``: ``p(x) = c_0 + L(x) + x^h Q(x)`` with
    ``L = sum_{i<=h} c_i x^i`` and ``Q = sum_{i>h} c_i x^(i-h)``, both linear in the powers
    ``x .. x^h``. The powers come by doubling (``x^2``, then ``x^3, x^4`` side by side, ...,
    each a truncated product, two rounds per level), ``Q`` is truncated (one round), and the
    product ``x^h Q`` is reshared and truncated together with ``L`` (:func:`trunc_product`,
    two rounds): ``d - h + 1`` products instead of ``d - 1`` in the same rounds as powers up to
    ``x^d``. The result errs by about ``|x^h|`` ulps more than its inputs (``Q``'s truncation).

    ``Q`` needs no round of its own when it is one term: ``+-x^k`` (coefficient exactly
    ``2^f``) is a power already truncated, and ``c x^h`` with ``|c| < 2^f`` is truncated with
    ``x^h`` itself when that is the last level's only product (:func:`trunc_product_scaled`,
    exact). A degree-4 ReLU fit (``c_3 = 0``) so takes two products, four rounds and 7 PRF
    words per element (11 for powers up to ``x^4``); ``x^2`` (a square activation) two rounds.
    """
    d = len(coeffs) - 1
    zero = _pscale(x, U64(0))
    if d < 2:
        acc = zero if d < 1 else (yield from trunc(p, _pscale(x, _c(coeffs[1]))))
        return p.add_public(acc, _c(coeffs[0]))
    h = (d + 1) // 2
    unit = 1 << p.f
    # Q's one term, when it has one: its power and coefficient.
    single = [i for i in range(h + 1, d + 1) if coeffs[i] != 0]
    lone = (single[0] - h, coeffs[single[0]]) if len(single) == 1 else None
    # Q = c x^h with |c| < 2^f: when x^h is the only product of the last doubling level, Q's
    # truncation joins that product's (trunc_product_scaled).
    fused = lone is not None and lone[0] == h > 1 and abs(lone[1]) < unit
    powers = {1: x}
    q_fused: Pair | None = None
    have = 1
    while have < h:
        ks = list(range(have + 1, min(2 * have, h) + 1))
        if fused and ks == [h]:
            powers[h], q_fused = yield from trunc_product_scaled(p, _product(powers[have], powers[h - have]), coeffs[d])
        else:
            outs = yield from parallel([mul_trunc(p, powers[have], powers[k - have]) for k in ks])
            powers.update(zip(ks, outs))
        have = ks[-1]
    low, q = zero, zero
    for i in range(1, h + 1):
        low = _padd(low, _pscale(powers[i], _c(coeffs[i])))
    if q_fused is not None:
        q = q_fused
    elif lone is not None and abs(lone[1]) == unit:  # Q = +-x^k: already f fractional bits
        q = powers[lone[0]] if lone[1] > 0 else _pscale(powers[lone[0]], _c(-1))
    else:
        for i in range(h + 1, d + 1):
            q = _padd(q, _pscale(powers[i - h], _c(coeffs[i])))
        q = yield from trunc(p, q)
    # low's first component is this party's additive share of it: it joins the product's.
    acc = yield from trunc_product(p, _product(powers[h], q) + low[0])
    return p.add_public(acc, _c(coeffs[0]))


# --- exact comparison: the shared circuit of edil._mpc with this sharing's AND gate ------------------
def _psub(x: Pair, y: Pair) -> Pair:
    return (x[0] - y[0], x[1] - y[1])


def _zero_share(p: Party, shape: tuple[int, ...]) -> Any:
    """``alpha_i = F(k_i) - F(k_{i-1})``: additive shares of zero, no message."""
    k0, k1, k2 = p.draw(0, shape), p.draw(1, shape), p.draw(2, shape)
    return p.role(lambda: k0 - k2, lambda: k1 - k0, lambda: k2 - k1)


def and_(p: Party, x: Bits, y: Bits) -> Step:
    """``x & y`` of XOR-shared words: ``z_i = x_i y_i ^ x_i y_{i+1} ^ x_{i+1} y_i ^ alpha_i``, resharing.

    The XOR zero-sharing ``alpha_i = F(k_i) ^ F(k_{i-1})`` masks ``z_i``, which goes to party
    ``i - 1``: one round, one word per output word per party. ``x`` may broadcast against ``y``.
    """
    z = (x.a & (y.a ^ y.b)) ^ (x.b & y.a)
    shape = p.shape(z)
    k0, k1, k2 = p.draw(0, shape), p.draw(1, shape), p.draw(2, shape)
    m = p.sent(z ^ p.select(k0 ^ k2, k1 ^ k0, k2 ^ k1))
    (r,) = yield (EVERYONE, (m,))
    return Bits(m, r)


def ltz(p: Party, x: Pair) -> Step:
    """``[x < 0]`` (the ring value's top bit) as a XOR-shared bit in bit 0 of a word (A2B, then the top bit).

    :func:`edil._mpc.ltz`, the circuit ``Masked`` runs, on this party: each component ``x_j``
    is a XOR sharing held locally (:meth:`Party.own`), one carry-save level takes the three
    words to two (one round), a Kogge-Stone adder adds them (seven rounds).
    """
    circuit: Any = mpc.ltz  # written against edil._mpc.Party; this Party offers the same interface
    return (yield from circuit(p, x))


def dabit(p: Party, shape: tuple[int, ...]) -> Step:
    """A uniform bit ``r`` shared both ways: XOR (bit 0 of a word) and additively, without a dealer.

    Each pair ``(j, j+1)`` draws a bit ``r_j`` from ``F(k_j)``: component ``j + 1`` of the XOR
    sharing and, locally, an additive sharing whose component ``j + 1`` is ``r_j``. The
    additive ``r = r_0 ^ r_1 ^ r_2`` takes two exact products (``a ^ b = a + b - 2ab``): two
    rounds, one element per party each. No party knows ``r``: each misses one ``r_j``. The
    draws do not depend on any input, so a comparison runs this beside its adder
    (:func:`parallel`) and its rounds cost no latency.
    """
    v = [p.draw(j, shape) & U64(1) for j in EVERYONE]
    rb = Bits(p.select(v[2], v[0], v[1]), p.select(v[0], v[1], v[2]))
    zero = v[0] * U64(0)

    def single(j: int) -> Pair:
        return (p.select(*(v[j] if i == (j + 1) % N_PARTIES else zero for i in EVERYONE)),
                p.select(*(v[j] if i == j else zero for i in EVERYONE)))

    acc = single(0)
    for j in (1, 2):
        t = single(j)
        prod = yield from mul(p, acc, t)
        acc = _psub(_padd(acc, t), _pscale(prod, U64(2)))
    return rb, acc


def select(p: Party, x: Pair, bit: Bits, r: tuple[Bits, Pair]) -> Step:
    """``x * b`` for an additive ``x`` and a XOR-shared bit ``b`` (broadcast over ``x``): exact, one round.

    With a daBit ``r`` the parties open ``c = b ^ r`` (party ``i + 1`` sends party ``i`` the
    component it misses) while resharing ``x r``, in one round; then ``b = c + r - 2 c r`` and
    ``x b = c x + (1 - 2c) x r``, all local.
    """
    rb, ra = r
    c = (bit ^ rb) & U64(1)
    xr = _product(x, ra)
    m = p.sent(xr + _zero_share(p, p.shape(xr)))
    oc, got = yield (EVERYONE, (c.b, m))
    cv = c.a ^ c.b ^ oc
    return _padd(_pscale(x, cv), _pscale((m, got), U64(1) - U64(2) * cv))


def _sign_and_dabit(p: Party, x: Pair) -> Step:
    """The sign of ``x`` and a daBit of its shape, computed side by side (eight rounds)."""
    neg, r = yield from parallel([ltz(p, x), dabit(p, p.shape(x[0]))])
    return neg, r


def relu(p: Party, x: Pair) -> Step:
    """``max(x, 0) = x - x [x < 0]`` exactly, for every ring value: nine rounds (module docstring)."""
    neg, r = yield from _sign_and_dabit(p, x)
    return _psub(x, (yield from select(p, x, neg, r)))


def ltz_arith(p: Party, x: Pair, scale: int) -> Step:
    """``scale * [x < 0]`` additively shared: the sign, then the daBit's bit made public-XORed (one opening)."""
    neg, (rb, ra) = yield from _sign_and_dabit(p, x)
    c = (neg ^ rb) & U64(1)
    (oc,) = yield (EVERYONE, (c.b,))
    cv = c.a ^ c.b ^ oc
    bit = p.add_public(_pscale(ra, U64(1) - U64(2) * cv), cv)  # c ^ r = c + (1 - 2c) r
    return _pscale(bit, _c(scale))


def maximum(p: Party, x: Pair, y: Pair) -> Step:
    """Elementwise ``max(x, y) = x - (x - y) [x < y]``, exactly."""
    d = _psub(x, y)
    neg, r = yield from _sign_and_dabit(p, d)
    return _psub(x, (yield from select(p, d, neg, r)))


def tournament(p: Party, t: Pair) -> Step:
    """The row of ``t`` ``(..., m, k)`` whose column 0 is largest (the first one on ties).

    As :func:`edil._mpc.tournament`: ``ceil(log2 m)`` levels, each comparing neighbours and
    keeping the winner's whole row; an odd row out moves up unchanged, last.
    """
    xp = p.xp
    while p.shape(t[0])[-2] > 1:
        end = 2 * (p.shape(t[0])[-2] // 2)
        left = _pmap(lambda a, end=end: a[..., 0:end:2, :], t)
        right = _pmap(lambda a, end=end: a[..., 1:end:2, :], t)
        rest = _pmap(lambda a, end=end: a[..., end:, :], t)
        d = _psub(left, right)
        neg, r = yield from _sign_and_dabit(p, _pmap(lambda a: a[..., :1], d))
        won = _psub(left, (yield from select(p, d, neg, r)))
        t = _pmap(lambda a, b: xp.concatenate([a, b], axis=-2), won, rest)
    return _pmap(lambda a: a[..., 0, :], t)


def max_(p: Party, x: Pair) -> Step:
    """The maximum over the last axis, exactly."""
    return _pmap(lambda a: a[..., 0], (yield from tournament(p, _pmap(lambda a: a[..., None], x))))


def argmax(p: Party, x: Pair) -> Step:
    """A one-hot of the first maximum over the last axis (fixed point: the 1 is ``2^f``)."""
    xp = p.xp
    m = p.shape(x[0])[-1]
    eye = np.eye(m, dtype=U64) << U64(p.f)
    zeros = _pmap(lambda a: xp.zeros((*a.shape, m), U64), x)
    rows = _pmap(lambda a, o: xp.concatenate([a[..., None], o], axis=-1), x, p.add_public(zeros, eye))
    return _pmap(lambda a: a[..., 1:], (yield from tournament(p, rows)))


#: A layer of a model program, as in :mod:`edil._mpc`: ``("public", small)``, ``("private",)``,
#: ``("poly", coeffs)``, ``("relu",)``, ``("maxpool", index)``, ``("flatten",)``, or a last
#: ``("argmax",)`` (a shared one-hot of the first largest output in place of the outputs).
Layer = tuple[Any, ...]


def model(p: Party, x: Pair, layers: Sequence[Layer], weights: Sequence[Any]) -> Step:
    """A whole model: public and shared dense layers, polynomials, exact ReLU and max pooling, flatten, argmax.

    ``weights`` holds, per dense layer, weight and bias: public fixed-point arrays (weight as
    signed int64) for ``("public", small)``, shares (see :meth:`Party.pair`) for ``("private",)``.
    """
    it = iter(weights)
    for layer in layers:
        tag = layer[0]
        if tag == "public":
            w, bias, small = next(it), next(it), int(layer[1])

            def product(v: Any, w: Any = w, small: int = small) -> Any:
                return p.matmul_public(v, w, small)

            x = yield from trunc_local(p, x, product, (*p.shape(x[0])[:-1], np.shape(w)[-1]))
            x = p.add_public(x, bias)
        elif tag == "private":
            w, bias = p.pair(next(it)), p.pair(next(it))
            x = yield from matmul_trunc(p, x, w)
            x = _padd(x, bias)
        elif tag == "poly":
            x = yield from polyval(p, x, layer[1])
        elif tag == "relu":
            x = yield from relu(p, x)
        elif tag == "maxpool":
            index = np.asarray(layer[1], dtype=np.int64)
            x = yield from max_(p, _pmap(lambda a, index=index: a[..., index], x))
        elif tag == "argmax":
            x = yield from argmax(p, x)
        elif tag == "flatten":
            x = (p.flatten(x[0]), p.flatten(x[1]))
        else:
            raise ShapeError(f"unknown layer {tag!r} in a replicated model program")
    return x


# --- drivers -------------------------------------------------------------------------------------------
@dataclass
class Cost:
    """Rounds and bytes a run sent (counted by the drivers): ``sent[i]`` is party ``i``'s bytes."""

    rounds: int = 0
    sent: list[int] = field(default_factory=lambda: [0, 0, 0])

    def add(self, senders: Sequence[int], elements: int) -> None:
        self.rounds += 1
        for i in senders:
            self.sent[i] += 8 * elements


def run_stacked(step: Step, cost: Cost, *, materialize: bool = True) -> Any:
    """Run a program on :class:`Rows`: party ``i`` receives row ``i + 1`` of every message.

    With ``materialize``, what is sent is a buffer XLA computes once, as on a network
    (:func:`_materialize`): a comparison circuit needs it (hundreds of word operations whose
    values feed several later rounds; fused, XLA recomputes shared producers once per consumer).
    Without, XLA fuses each party's work across rounds into a few loops: programs of products,
    truncations and polynomials only, whose round messages each feed few consumers (measured on
    the digits MLP: half the CPU work of the materialised program, bit-identical results).
    """
    try:
        rnd = next(step)
        while True:
            senders, msgs = rnd
            cost.add(senders, sum(math.prod(m.shape) for m in msgs))
            if materialize:  # rows nobody sends stay outside the boundary, so XLA can drop them
                sent = _materialize(tuple(m.r[i] for m in msgs for i in senders))
                it = iter(sent)
                msgs = tuple(Rows(next(it) if i in senders else r for i, r in enumerate(m.r)) for m in msgs)
            rnd = step.send(tuple(m.from_next() for m in msgs))
    except StopIteration as stop:
        return stop.value


def run_parties(steps: Sequence[Step], *, views: list[list[np.ndarray]] | None = None, cost: Cost | None = None,
                busy: list[float] | None = None, clock: Callable[[], float] | None = None) -> list[Any]:
    """Run three separate party programs in lockstep, relaying each message to the sender's predecessor.

    A party whose successor does not send in a round receives zeros it never uses. With
    ``views``, ``views[i]`` collects every message party ``i`` received. With ``busy`` and
    ``clock`` (seconds, e.g. ``time.perf_counter``), ``busy[i]`` accumulates the time party
    ``i``'s own program computed (its share of the work when parties run on separate machines,
    relaying excluded).

    Returns:
        Each party's output pair.

    Raises:
        ShapeError: the programs do not run the same rounds.
        ParameterError: not one program per party.
    """
    if len(steps) != N_PARTIES:
        raise ParameterError("run_parties needs one program per party")
    outs: list[Any] = [None] * N_PARTIES
    timed = busy is not None and clock is not None

    def advance(i: int, s: Step, got: tuple[Any, ...] | None) -> Round | None:
        start = clock() if timed else 0.0  # type: ignore[misc]
        try:
            return next(s) if got is None else s.send(got)
        except StopIteration as stop:
            outs[i] = stop.value
            return None
        finally:
            if timed:
                busy[i] += clock() - start  # type: ignore[index, misc]

    with np.errstate(over="ignore"):
        rounds: list[Round | None] = [advance(i, s, None) for i, s in enumerate(steps)]
        while any(r is not None for r in rounds):
            if any(r is None for r in rounds) or len({r[0] for r in rounds if r is not None}) != 1:
                raise ShapeError("the party programs do not run the same rounds")
            senders = rounds[0][0]  # type: ignore[index]
            msgs = [r[1] for r in rounds if r is not None]
            if cost is not None:
                cost.add(senders, sum(int(np.size(m)) for m in msgs[0]))
            nxt: list[Round | None] = []
            for i, s in enumerate(steps):
                succ = (i + 1) % N_PARTIES
                if succ in senders:
                    got = tuple(np.asarray(m, U64) for m in msgs[succ])
                    if views is not None:
                        views[i].extend(got)
                else:
                    got = tuple(np.zeros(np.shape(m), U64) for m in msgs[i])
                nxt.append(advance(i, s, got))
            rounds = nxt
    return outs


# --- stacked parties (the simulator) ---------------------------------------------------------------------
class _Counter:
    """Counts the words each key's stream must supply (tracing only)."""

    def __init__(self) -> None:
        self.words = [0, 0, 0]

    def __call__(self, pair: int, shape: tuple[int, ...]) -> Rows:
        self.words[pair] += math.prod(shape)
        return Rows(jnp.zeros(shape, jnp.uint64) for _ in EVERYONE)


class _Buffers:
    """Hands out the pre-expanded words of each key's stream, in draw order, to its two holders' rows."""

    def __init__(self, buffers: Sequence[jax.Array]) -> None:
        self.buffers, self.offsets = buffers, [0, 0, 0]

    def __call__(self, pair: int, shape: tuple[int, ...]) -> Rows:
        n, off = math.prod(shape), self.offsets[pair]
        self.offsets[pair] = off + n
        v = self.buffers[pair][off : off + n].reshape(shape)
        return Rows(v if i in _holders(pair) else jnp.zeros_like(v) for i in EVERYONE)


def _materialize(values: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """``values`` as buffers XLA computes once, inside a traced program.

    XLA on a CPU drops ``optimization_barrier`` before fusing, and then fuses a whole chain of
    rounds into its consumer, recomputed per consumer element: into a ring kernel's int8
    digits, eight times per ring element (measured: two such fusions took most of a run of the
    digits MLP). A conditional is a boundary no fusion crosses; its predicate is always true
    but read from the data, so XLA cannot fold it away.
    """
    first = next((v for v in values if v.size), None)
    if first is None:
        return values
    keep = (first.ravel()[0] | jnp.ones((), first.dtype)) != jnp.zeros((), first.dtype)
    return tuple(jax.lax.cond(keep, lambda vs: vs, lambda vs: tuple(v ^ jnp.ones((), v.dtype) for v in vs), values))


def _rows_matmul(a: Rows, b: Rows) -> Rows:
    a, b = Rows(_materialize(a.r)), Rows(_materialize(b.r))
    return Rows(_materialize((_matmul(x, y),))[0] for x, y in zip(a.r, b.r))


#: Kernel classes of public weights (the second field of a ``("public", class)`` layer): any
#: int64, ``|w| < 2^22`` (:func:`edil.hazmat.ring.matmul_small`), and ``K max|w| <= 2^22``
#: (:func:`matmul_halves`). A truthy class read from the wire is handled as at least small.
FULL, SMALL, HALVES = 0, 1, 2
_HALVES_BOUND = 1 << 22


def _fits_halves(w: np.ndarray) -> bool:
    return w.size == 0 or w.shape[0] * int(np.max(np.abs(w))) <= _HALVES_BOUND


def weight_class(w: np.ndarray) -> int:
    """The cheapest exact kernel class for public signed int64 weights ``w`` ``(K, N)``.

    ``HALVES`` implies ``SMALL`` (a node that reads the class as a flag from the wire runs the
    small kernel, exact too).
    """
    if w.size == 0:
        return HALVES
    if int(np.max(np.abs(w))) >= (1 << SMALL_BITS):
        return FULL
    return HALVES if _fits_halves(w) else SMALL


def matmul_halves(a: jax.Array, w: jax.Array) -> jax.Array:
    """``a @ w mod 2^64`` for ring ``a`` ``(..., M, K)`` and public ``w`` with ``K max|w| <= 2^22``: one float64 GEMM.

    ``a = lo + 2^32 hi (mod 2^64)`` with ``lo``, ``hi`` signed 32-bit (``|lo|, |hi| <= 2^31``),
    so every partial sum of ``lo @ w`` and ``hi @ w`` is an integer of magnitude at most
    ``K 2^31 max|w| <= 2^53``: exact in float64. Only ``hi @ w mod 2^32`` matters. The two
    halves are stacked along M into one GEMM (two multiply-adds per term, against 21 int8
    digit blocks of the small kernel, measured about 1.3-1.5x faster on a 2-core CPU for the
    digits MLP's layers). The caller checks the bound (:func:`weight_class`).
    """
    lo = jax.lax.bitcast_convert_type(a.astype(jnp.uint32), jnp.int32)
    hi = ((a - lo.astype(jnp.int64).astype(jnp.uint64)) >> jnp.uint64(32)).astype(jnp.uint32)
    halves = jnp.concatenate([lo, jax.lax.bitcast_convert_type(hi, jnp.int32)], axis=-2).astype(jnp.float64)
    p = jnp.matmul(halves, w.astype(jnp.float64), precision=jax.lax.Precision.HIGHEST)
    p = p.astype(jnp.int64).astype(jnp.uint64)
    m = a.shape[-2]
    return p[..., :m, :] + (p[..., m:, :] << jnp.uint64(32))


_matmul_halves = jax.jit(matmul_halves)


@x64
def matmul_public_halves(a: Any, w: Any) -> jax.Array:
    """:func:`matmul_halves` on host arrays (``uint64`` ``a``, signed int64 ``w``), compiled.

    Raises:
        ParameterError: ``w`` outside the kernel's bound (:func:`weight_class`).
    """
    w = np.asarray(w, np.int64)
    if not _fits_halves(w):
        raise ParameterError("matmul_public_halves needs K * max|w| <= 2^22")
    return _matmul_halves(jnp.asarray(np.asarray(a, U64)), jnp.asarray(w))


def _rows_matmul_public(x: Rows, w: jax.Array, small: int) -> Rows:
    """Every row times public weights (one product per row: three row-sized products ran faster
    than one of the rows stacked, whose operands leave the cache), each row's input computed once."""
    if small == HALVES:
        # Its input is read by one conversion and its output recombined from two halves: XLA
        # fuses both with their neighbours, which costs less than materialising them (measured).
        return x.map(lambda a: _matmul_halves(a, w))
    # Inputs and outputs one row at a time, so that XLA still drops the rows nobody reads; an
    # input left unmaterialised is recomputed into each of its int8 digits, an output
    # recombined from its digit products by every consumer.
    wu = w.astype(jnp.uint64)
    kernel: Callable[[jax.Array], jax.Array] = (lambda a: _matmul_small(a, w)) if small else (lambda a: _matmul(a, wu))
    return x.map(lambda a: _materialize((kernel(_materialize((a,))[0]),))[0])


def _kernel_public(a: jax.Array, w: jax.Array, small: int) -> jax.Array:
    """``a @ w mod 2^64`` for public signed weights of kernel class ``small`` (:func:`weight_class`)."""
    if small == HALVES:
        return matmul_halves(a, w)
    return _matmul_small(a, w) if small else _matmul(a, w.astype(jnp.uint64))


@functools.partial(jax.jit, static_argnums=2)
def _first_products(x: jax.Array, w: jax.Array, small: int) -> tuple[jax.Array, jax.Array]:
    """The two products of :func:`trunc_local` for stacked components ``x``: ``x_1 w`` (party 1's)
    and ``(x_2 + x_0) w`` (party 2's), as a program of its own (:meth:`Replicated._run`)."""
    return _kernel_public(x[1], w, small), _kernel_public(x[2] + x[0], w, small)


def _model_given(p: Party, y1: Any, y2: Any, layers: Sequence[Layer], weights: Sequence[Any]) -> Step:
    """:func:`model` whose first layer is public, its products ``y1`` (party 1's) and ``y2`` (party 2's)
    given (:func:`_first_products`): the same draws, messages and result (simulator only)."""
    x = yield from trunc_given(p, lambda: Rows((y1, y1, y2)), lambda: Rows((y2, y1, y2)), tuple(y1.shape))
    x = p.add_public(x, weights[1])
    return (yield from model(p, x, layers[1:], weights[2:]))


def stacked_party(f: int, draw: Callable[[int, tuple[int, ...]], Any], *, materialize: bool = True) -> Party:
    return Party(f=f, draw=draw, matmul=_rows_matmul, matmul_public=_rows_matmul_public, stacked=True,
                 materialize=materialize)


# --- one party on a host -------------------------------------------------------------------------------------
_SMALL_PRODUCT = 1 << 18  # below this many multiply-adds numpy's integer matmul beats a kernel call


def _host_matmul(a: Any, b: Any) -> np.ndarray:
    a, b = np.asarray(a, U64), np.asarray(b, U64)
    if a.shape[-2] * a.shape[-1] * b.shape[-1] < _SMALL_PRODUCT:
        return np.matmul(a, b)
    return ring.to_numpy(ring.matmul(a, b))


def _host_matmul_public(x: Any, w: Any, small: int) -> np.ndarray:
    x, w = np.asarray(x, U64), np.asarray(w, np.int64)
    if small and x.shape[-2] * x.shape[-1] * w.shape[-1] >= _SMALL_PRODUCT:
        if small == HALVES and _fits_halves(w):  # checked again: the class may come from the wire
            return ring.to_numpy(matmul_public_halves(x, w))
        return ring.to_numpy(ring.matmul_small(x, w))  # three digits of w instead of eight
    return _host_matmul(x, w.view(U64))


def host_party(party: int, f: int, streams: dict[int, KeyStream]) -> Party:
    """Party ``party`` on a host: numpy arrays, its own two streams ``{pair: stream}``.

    Raises:
        ParameterError: streams for pairs the party does not belong to, or not both of its own.
    """
    mine = {party, (party - 1) % N_PARTIES}
    if set(streams) != mine:
        raise ParameterError(f"party {party} holds the keys of pairs {sorted(mine)}, got {sorted(streams)}")

    def draw(pair: int, shape: tuple[int, ...]) -> np.ndarray:
        return streams[pair].uniform(shape) if pair in streams else np.zeros(shape, U64)

    return Party(f=f, draw=draw, matmul=_host_matmul, matmul_public=_host_matmul_public, party=party)


# --- programs the scheme compiles ------------------------------------------------------------------------------
def _make_program(kind: str, static: tuple[Any, ...]) -> Callable[..., Step]:
    if kind == "trunc":
        return lambda p, x: trunc(p, p.pair(x))
    if kind == "mul_public":
        return lambda p, x, c: trunc(p, _pscale(p.pair(x), c))
    if kind == "matmul_public":
        (small,) = static
        return lambda p, x, w: trunc_local(p, p.pair(x), lambda v: p.matmul_public(v, w, small),
                                           (*x.shape[1:-1], w.shape[-1]))
    if kind == "mul":
        return lambda p, x, y: mul_trunc(p, p.pair(x), p.pair(y))
    if kind == "matmul":
        return lambda p, x, y: matmul_trunc(p, p.pair(x), p.pair(y))
    if kind == "mul_exact":
        return lambda p, x, y: mul(p, p.pair(x), p.pair(y))
    if kind == "matmul_exact":
        return lambda p, x, y: matmul(p, p.pair(x), p.pair(y))
    if kind == "poly":
        return lambda p, x: polyval(p, p.pair(x), static)
    if kind == "model":
        return lambda p, x, *weights: model(p, p.pair(x), static, weights)
    if kind == "model_given":  # the simulator's model whose first (public) layer's products are given
        return lambda p, y1, y2, *weights: _model_given(p, y1, y2, static, weights)
    if kind == "maximum":
        return lambda p, x, y: maximum(p, p.pair(x), p.pair(y))
    if kind == "ltz":
        return lambda p, x: ltz_arith(p, p.pair(x), 1 << p.f)
    exact = {"relu": relu, "max": max_, "argmax": argmax}
    if kind in exact:
        return lambda p, x: exact[kind](p, p.pair(x))
    raise ParameterError(f"unknown replicated program {kind!r}")


#: Chained comparison levels of a program or model layer (2: one or more; a tournament may chain several).
_LEVELS = {"relu": 1, "ltz": 1, "maximum": 1, "max": 2, "argmax": 2, "maxpool": 2}


def _comparison_levels(kind: str, static: tuple[Any, ...]) -> int:
    if kind in ("model", "model_given"):
        return sum(_LEVELS.get(layer[0], 0) for layer in static)
    return _LEVELS.get(kind, 0)


@functools.lru_cache(maxsize=256)
def _compiled(kind: str, static: tuple[Any, ...], f: int) -> Callable[..., Any]:
    """The simulator of a program: one XLA program, or op by op for chained comparisons.

    A comparison is hundreds of small word operations; XLA's compile time grows faster than
    linearly with chained comparisons (about 3 s for one ReLU layer, 15-30 s for two, more for
    three, measured on a loaded 2-core machine), while running them op by op takes under a
    second for a deep net on a few hundred rows. So a program with at most one comparison
    level is compiled (it then runs many times faster) and one that chains more runs op by
    op. Products stay inside compiled ring kernels either way. Messages are materialised only
    in programs with a comparison (:func:`run_stacked`).
    """
    program = _make_program(kind, static)
    levels = _comparison_levels(kind, static)

    def run(buffers: tuple[jax.Array, ...], *args: jax.Array) -> jax.Array:
        p = stacked_party(f, _Buffers(buffers), materialize=levels > 0)
        return jnp.stack(run_stacked(program(p, *args), Cost(), materialize=levels > 0)[0].r)

    return run if levels > 1 else jax.jit(run)


@functools.lru_cache(maxsize=256)
def _plan(kind: str, static: tuple[Any, ...], f: int, shapes: tuple[tuple[tuple[int, ...], str], ...]) -> tuple[tuple[int, ...], Cost]:
    """(words each key's stream supplies, rounds and bytes) of a program on these shapes, by tracing only."""
    program = _make_program(kind, static)
    counter, cost = _Counter(), Cost()

    def traced(*args: jax.Array) -> jax.Array:
        return jnp.stack(run_stacked(program(stacked_party(f, counter), *args), cost)[0].r)

    with jax.enable_x64(True):
        jax.eval_shape(traced, *[jax.ShapeDtypeStruct(s, jnp.dtype(dt)) for s, dt in shapes])
    return tuple(counter.words), cost


# --- the scheme ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ReplicatedTensor(Encoded):
    """The three components ``(x_0, x_1, x_2)`` of a replicated sharing, stacked on axis 0.

    Party ``i`` holds rows ``i`` and ``i + 1`` (:meth:`Replicated.party_shares`).
    """

    components: jax.Array
    sharing_id: bytes
    #: Largest ``|x|`` when it was encoded (the data owner's knowledge); ``None`` for derived values.
    bound: float | None = None


class Replicated(Scheme):
    """ABY3-style 2-out-of-3 replicated sharing among three parties over Z_2^64 (module docstring).

    Args:
        frac_bits: fractional bits of the fixed-point encoding (default 16).
        seed: secret randomness (keyword-only, at least 16 bytes) from which the simulated
            parties' X25519 key pairs and the client's sharing randomness are derived; drawn
            from ``os.urandom`` when omitted.

    Raises:
        ParameterError: ``frac_bits`` out of range or a short seed.
        VerificationError: the two parties of a pair derived different keys (cannot happen
            with a correct X25519; checked because everything rests on it).
    """

    name = "replicated"

    def __init__(self, *, frac_bits: int = 16, seed: bytes | None = None) -> None:
        super().__init__()
        self.fp = FixedPoint(frac_bits)
        if seed is None:
            seed = os.urandom(32)
        privates = [party_private_key(seed, i) for i in EVERYONE]
        publics = [_public(k) for k in privates]
        keys = []
        for i in EVERYONE:
            j = (i + 1) % N_PARTIES
            mine = pair_key(privates[i], publics[j], i, publics[i], publics[j])
            theirs = pair_key(privates[j], publics[i], i, publics[i], publics[j])
            if mine != theirs:
                raise VerificationError(f"parties {i} and {j} derived different pairwise keys")
            keys.append(mine)
        self.public_keys = tuple(publics)
        self._streams = [KeyStream(k) for k in keys]
        self._client = KeyStream(_hkdf(seed, _CLIENT_TAG))
        self._tag = hashlib.blake2b(b"".join(publics), digest_size=8).digest()
        self._counter = 0
        self._pair_keys = tuple(keys)
        self._checked: dict[tuple[int, float | None], tuple[Any]] = {}  # models check_precision passed
        self._programs: dict[int, tuple[Any, tuple[Any, ...], tuple[jax.Array, ...]]] = {}  # see _program

    @property
    def frac_bits(self) -> int:
        return self.fp.frac_bits

    @property
    def scheme_id(self) -> str:
        return f"replicated/n=3/f={self.frac_bits}/ring=64"

    @property
    def params(self) -> dict[str, Any]:
        return {"scheme": self.name, "n_parties": N_PARTIES, "frac_bits": self.frac_bits, "ring_bits": 64}

    def party_streams(self, party: int) -> dict[int, KeyStream]:
        """Fresh streams of ``party``'s two pairwise keys, from their start (to run it on its own)."""
        return {pair: KeyStream(self._pair_keys[pair]) for pair in EVERYONE if party in _holders(pair)}

    # --- internals -----------------------------------------------------------------------------------
    def _new_id(self) -> bytes:
        self._counter += 1
        return hashlib.blake2b(self._tag + self._counter.to_bytes(8, "little"), digest_size=8).digest()

    def _wrap(self, components: jax.Array, bound: float | None = None) -> ReplicatedTensor:
        return ReplicatedTensor(self.scheme_id, tuple(components.shape[1:]), components, self._new_id(), bound)

    def _run(self, kind: str, static: tuple[Any, ...], *args: Any) -> jax.Array:
        """Expand the PRF words the program draws, run it as one XLA program, count its messages.

        A model whose first layer has public weights computes that layer's products first, in
        a program of their own (:func:`_first_products`), dispatched before the words are
        expanded: XLA computes them while AES runs. Bit-identical to the one-program run.
        """
        shapes = tuple((tuple(a.shape), str(a.dtype)) for a in args)
        f = self.frac_bits
        words, cost = _plan(kind, static, f, shapes)
        self.stats.openings += cost.rounds
        self.stats.bytes_opened += sum(cost.sent)
        for i, b in enumerate(cost.sent):
            key = f"bytes_sent_by_party_{i}"
            self.stats.extra[key] = self.stats.extra.get(key, 0) + b
        first = None
        if kind == "model" and static and static[0][0] == "public" and _comparison_levels(kind, static) == 0:
            first = _first_products(args[0], args[1], int(static[0][1]))  # dispatched; runs during the expansion
        # 64-byte aligned buffers no other run holds: JAX takes them without a copy. A compiled
        # program's buffers are reused once its output is ready (_WordPool); op by op, a read of
        # a word no output depends on may still be queued then, so those buffers are fresh.
        compiled = _comparison_levels(kind, static) <= 1
        held, buffers = _WORD_POOL.take(words) if compiled else ([KeyStream._buffer(n) for n in words], None)
        views = KeyStream.expand_into(self._streams, words, held)
        in_place = buffers is not None  # arrays that read ``held`` in place: they now hold this run's words
        if buffers is None:
            buffers = jax.device_put(tuple(views), may_alias=True)
            in_place = all(v.size == 0 or b.unsafe_buffer_pointer() == v.ctypes.data for b, v in zip(buffers, views))
        if first is not None:
            out = _compiled("model_given", static, f)(buffers, *first, *args[1:])
        else:
            out = _compiled(kind, static, f)(buffers, *args)
        if compiled:
            # Arrays that copied the words would hand a later run these words again: only kept in place.
            _WORD_POOL.give(words, held, buffers if in_place else None, out)
        return out

    def _components(self, v: Encoded) -> jax.Array:
        return v.components  # type: ignore[attr-defined]

    # --- encode / decode ---------------------------------------------------------------------------
    @x64
    def share_ring(self, secret: Any) -> ReplicatedTensor:
        """Share ring elements as they are (no fixed-point encoding): ``x_0, x_1`` uniform, ``x_2`` the rest."""
        secret = np.asarray(secret, U64)
        x0, x1 = self._client.uniform(secret.shape), self._client.uniform(secret.shape)
        return self._wrap(jnp.asarray(np.stack([x0, x1, secret - x0 - x1])))

    @x64
    def encode(self, x: Any) -> ReplicatedTensor:
        """Secret-share a real array (fixed point, then three components from the client's stream).

        Raises:
            EncodingError: NaN/inf or non-numeric input.
            OverflowRangeError: a value outside ``|x| < 2^(31 - frac_bits)``.
        """
        enc = self.fp.encode(x)
        bound = float(np.max(np.abs(self.fp.decode(enc)))) if enc.size else 0.0
        out = self.share_ring(enc)
        return ReplicatedTensor(out.scheme_id, out.shape, out.components, out.sharing_id, bound)

    def encode_weights(self, w: Any) -> ReplicatedTensor:
        """Secret-share model weights (the same sharing as :meth:`encode`)."""
        return self.encode(w)

    @x64
    def open_ring(self, value: Encoded) -> np.ndarray:
        """The secret as ring elements (``uint64``), without fixed-point decoding."""
        self.check(value)
        self.stats.extra["bytes_to_client"] = self.stats.extra.get("bytes_to_client", 0) + 24 * math.prod(value.shape)
        return ring.to_numpy(jnp.sum(self._components(value), axis=0, dtype=jnp.uint64))

    def decode(self, value: Encoded) -> np.ndarray:
        return self.fp.decode(self.open_ring(value))

    @x64
    def from_components(self, components: Any) -> ReplicatedTensor:
        """A tensor of this scheme from its three components ``(3, ...)`` (e.g. parties' outputs on nodes).

        Raises:
            ShapeError: not three ring arrays.
        """
        c = np.asarray(components)
        if c.dtype != U64 or c.ndim < 1 or c.shape[0] != N_PARTIES:
            raise ShapeError(f"need three uint64 components stacked on axis 0, got {c.dtype} {c.shape}")
        return self._wrap(jnp.asarray(c))

    def party_shares(self, value: Encoded) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each party's pair ``(x_i, x_{i+1})``: what would be sent to node ``i``."""
        self.check(value)
        c = ring.to_numpy(self._components(value))
        return [(c[i], c[(i + 1) % N_PARTIES]) for i in EVERYONE]

    # --- local operations ----------------------------------------------------------------------------
    def _aligned(self, a: Encoded, b: Encoded) -> jax.Array:
        pad = (1,) * (len(a.shape) - len(b.shape))
        return self._components(b).reshape((N_PARTIES, *pad, *b.shape))

    @x64
    def add(self, a: Encoded, b: Encoded) -> ReplicatedTensor:
        self.check(a, b)
        self.check_broadcast(a, b, "add")
        return self._wrap(self._components(a) + self._aligned(a, b))

    @x64
    def sub(self, a: Encoded, b: Encoded) -> ReplicatedTensor:
        self.check(a, b)
        self.check_broadcast(a, b, "sub")
        return self._wrap(self._components(a) - self._aligned(a, b))

    @x64
    def add_public(self, a: Encoded, p: Any) -> ReplicatedTensor:
        self.check(a)
        pub = jnp.asarray(self.fp.encode(self.public_array(p, a.shape, "add_public")))
        return self._wrap(self._components(a).at[0].add(pub))

    @x64
    def sum(self, a: Encoded, axis: int) -> ReplicatedTensor:
        self.check(a)
        ax = self.check_axis(a.shape, axis, "sum")
        return self._wrap(jnp.sum(self._components(a), axis=ax + 1, dtype=jnp.uint64))

    # --- operations with communication ---------------------------------------------------------------
    @x64
    def mul_public(self, a: Encoded, p: Any) -> ReplicatedTensor:
        self.check(a)
        pub = jnp.asarray(self.fp.encode(self.public_array(p, a.shape, "mul_public")))
        return self._wrap(self._run("mul_public", (), self._components(a), pub))

    def _public_weight(self, w: Any, x_shape: tuple[int, ...], op: str) -> tuple[np.ndarray, int]:
        """The encoded weights and their kernel class (:func:`weight_class`)."""
        w_arr = np.asarray(w, dtype=np.float64)
        self.check_matmul_shapes(x_shape, w_arr.shape, op)
        w_enc = self.fp.encode(w_arr).view(np.int64)
        return w_enc, weight_class(w_enc)

    @x64
    def matmul_public(self, a: Encoded, w: Any) -> ReplicatedTensor:
        self.check(a)
        w_enc, small = self._public_weight(w, a.shape, "matmul_public")
        return self._wrap(self._run("matmul_public", (small,), self._components(a), jnp.asarray(w_enc)))

    @x64
    def mul(self, a: Encoded, b: Encoded) -> ReplicatedTensor:
        """Elementwise product: local products, resharing fused with truncation (two rounds)."""
        self.check(a, b)
        self.check_same_shape(a, b, "mul")
        return self._wrap(self._run("mul", (), self._components(a), self._components(b)))

    @x64
    def matmul(self, a: Encoded, b: Encoded) -> ReplicatedTensor:
        """Shared ``(m, k) @ (k, n)``: messages of the output's size only (two rounds)."""
        self.check(a, b)
        self.check_matmul_shapes(a.shape, b.shape, "matmul")
        return self._wrap(self._run("matmul", (), self._components(a), self._components(b)))

    @x64
    def mul_ring(self, a: Encoded, b: Encoded) -> ReplicatedTensor:
        """Exact product in Z_2^64 (no truncation): one round, one element per party."""
        self.check(a, b)
        self.check_same_shape(a, b, "mul_ring")
        return self._wrap(self._run("mul_exact", (), self._components(a), self._components(b)))

    @x64
    def matmul_ring(self, a: Encoded, b: Encoded) -> ReplicatedTensor:
        """Exact matrix product in Z_2^64 (no truncation): one round."""
        self.check(a, b)
        self.check_matmul_shapes(a.shape, b.shape, "matmul_ring")
        return self._wrap(self._run("matmul_exact", (), self._components(a), self._components(b)))

    @x64
    def truncate(self, a: Encoded) -> ReplicatedTensor:
        """Share truncation by ``frac_bits`` of ring values (one round; error bound in the module docstring)."""
        self.check(a)
        return self._wrap(self._run("trunc", (), self._components(a)))

    def _coeffs(self, coeffs: Sequence[float]) -> tuple[int, ...]:
        c = np.asarray(coeffs, dtype=np.float64).ravel()
        if c.size == 0:
            raise ParameterError("polyval needs at least one coefficient")
        return tuple(int(v) for v in self.fp.encode(c).view(np.int64))

    @x64
    def polyval(self, a: Encoded, coeffs: Sequence[float]) -> ReplicatedTensor:
        """``sum(coeffs[i] * a**i)``: powers by doubling (truncated products), one final truncation."""
        self.check(a)
        return self._wrap(self._run("poly", self._coeffs(coeffs), self._components(a)))

    # --- exact comparison (module docstring: "Comparison") -------------------------------------------
    def _last_axis(self, a: Encoded, axis: int, op: str) -> tuple[int, jax.Array]:
        self.check(a)
        ax = self.check_axis(a.shape, axis, op)
        return ax, jnp.moveaxis(self._components(a), ax + 1, -1)

    @x64
    def relu(self, a: Encoded) -> ReplicatedTensor:
        """``max(a, 0)``, exactly, for every ring value (nine rounds, no truncation)."""
        self.check(a)
        return self._wrap(self._run("relu", (), self._components(a)))

    @x64
    def ltz(self, a: Encoded) -> ReplicatedTensor:
        """``1.0`` where ``a < 0``, else ``0.0``, exactly."""
        self.check(a)
        return self._wrap(self._run("ltz", (), self._components(a)))

    @x64
    def maximum(self, a: Encoded, b: Encoded) -> ReplicatedTensor:
        """Elementwise ``max(a, b)`` of two shared values of one shape, exactly."""
        self.check(a, b)
        self.check_same_shape(a, b, "maximum")
        return self._wrap(self._run("maximum", (), self._components(a), self._components(b)))

    @x64
    def max(self, a: Encoded, axis: int) -> ReplicatedTensor:
        """The maximum along ``axis``, exactly: ``ceil(log2 m)`` comparison levels."""
        _, x = self._last_axis(a, axis, "max")
        return self._wrap(self._run("max", (), x))

    @x64
    def argmax(self, a: Encoded, axis: int, *, one_hot: bool = True) -> ReplicatedTensor:
        """Where the maximum along ``axis`` is (the first one on ties, as ``numpy.argmax``), shared.

        Args:
            a: the shared values.
            axis: the axis to search.
            one_hot: a shared one-hot along ``axis`` (1.0 at the maximum; the shape of ``a``);
                otherwise the shared index as a fixed-point integer (``axis`` dropped).
        """
        ax, x = self._last_axis(a, axis, "argmax")
        onehot = self._run("argmax", (), x)
        if one_hot:
            return self._wrap(jnp.moveaxis(onehot, -1, ax + 1))
        index = jnp.arange(onehot.shape[-1], dtype=jnp.uint64)
        return self._wrap(jnp.sum(onehot * index, axis=-1, dtype=jnp.uint64))  # an integer times a fixed-point 1: exact

    # --- whole models --------------------------------------------------------------------------------
    def check_precision(self, model: Any, bound: float | None) -> None:
        """Refuse a model the fixed point would evaluate wrongly (:meth:`~edil.FixedPoint.check_model`).

        Raises:
            EncodingError: a weight or coefficient underflows.
            OverflowRangeError: a pre-truncation value could pass ``2^62`` for some input.
        """
        key = (id(model), bound)
        if self._checked.get(key, (None,))[0] is model:  # layers are immutable: the verdict stands
            return
        self.fp.check_model(model, bound)
        if len(self._checked) >= 16:
            self._checked.clear()
        self._checked[key] = (model,)  # holds the model, so its id is not reused while cached

    def _model_spec(self, encoded_model: Any) -> tuple[tuple[Any, ...], list[Any]]:
        from edil._masked import _exact_layers
        from edil.models import Dense, Flatten, Polynomial

        spec: list[tuple[Any, ...]] = []
        weights: list[Any] = []
        exact = _exact_layers(encoded_model.model)
        for layer, enc in zip(encoded_model.model.layers, encoded_model._weights):  # noqa: SLF001
            if isinstance(layer, Dense):
                if enc is None:
                    w_enc, small = self._public_weight(layer.weight, (1, layer.in_features), "dense")
                    spec.append(("public", small))
                    weights += [w_enc, self.fp.encode(layer.bias)]  # numpy: no 32-bit JAX conversion outside x64
                else:
                    self.check(*enc)
                    spec.append(("private",))
                    weights += [self._components(enc[0]), self._components(enc[1])]
            elif isinstance(layer, Polynomial):
                spec.append(("poly", self._coeffs(layer.coeffs)))
            elif isinstance(layer, Flatten):
                spec.append(("flatten",))
            elif id(layer) in exact:
                spec.append(exact[id(layer)])
            else:
                raise self.unsupported(f"a layer of type {type(layer).__name__}")
        return tuple(spec), weights

    def _program(self, encoded_model: Any) -> tuple[tuple[Any, ...], tuple[jax.Array, ...]]:
        """:meth:`_model_spec` with the weights as device arrays, kept per encoded model.

        An encoded model's layers and shared weights do not change (as :meth:`check_precision`
        relies on), so a run reuses them instead of encoding and transferring them again.
        """
        hit = self._programs.get(id(encoded_model))
        if hit is not None and hit[0] is encoded_model:
            return hit[1], hit[2]
        spec, weights = self._model_spec(encoded_model)
        with jax.enable_x64(True):
            device = tuple(jnp.asarray(w) for w in weights)
        if len(self._programs) >= 16:
            self._programs.clear()
        self._programs[id(encoded_model)] = (encoded_model, spec, device)  # holds it: its id is not reused
        return spec, device

    def prf_words(self, encoded_model: Any, batch: int) -> tuple[int, ...]:
        """The words each pairwise stream ``F(k_0), F(k_1), F(k_2)`` supplies for one run on ``batch`` rows."""
        spec, weights = self._model_spec(encoded_model)
        shapes = ((N_PARTIES, batch, encoded_model.model.in_features), "uint64"), *(
            (tuple(np.shape(w)), str(np.asarray(w).dtype)) for w in weights)
        return _plan("model", spec, self.frac_bits, tuple(shapes))[0]

    @x64
    def run_model(self, encoded_model: Any, x: Encoded) -> ReplicatedTensor:
        """Run a whole encoded model as one compiled protocol program (no offline phase).

        Raises:
            EncodingError, OverflowRangeError: see :meth:`check_precision`.
            UnsupportedOperationError: a layer this scheme cannot run.
        """
        self.check(x)
        self.check_precision(encoded_model.model, getattr(x, "bound", None))
        spec, weights = self._program(encoded_model)
        return self._wrap(self._run("model", spec, self._components(x), *weights))
