"""Words of an AES-CTR keystream: the one expander behind the dealer's and the PRF's streams.

A :class:`CtrWords` holds one AES key (a ``cryptography`` ``algorithms.AES*`` object: AES-256
for :class:`edil._dealer.Stream`, AES-128 for :class:`edil._replicated.KeyStream`) and hands out
the words of its counter-mode keystream from counter zero, in order, each once. Word ``j`` is the
little-endian ``uint64`` of keystream bytes ``8 j .. 8 j + 8``: half ``j mod 2`` of the AES block
under counter ``floor(j / 2)`` (a 128-bit big-endian counter). So any range of words can be
expanded on its own, from its own counter (:meth:`CtrWords.fill`), and equals the same range of
one sequential expansion (tested); :func:`fill_ranges` expands several reserved ranges side by side
on threads (AES-CTR in ``cryptography`` releases the GIL).

Keystream is produced by encrypting a shared all-zero plaintext directly into the caller's
storage: a sequential draw (:meth:`CtrWords.next_into`) reads its first :data:`CHUNK` bytes again
and again (they stay in a core's cache); a part of :func:`fill_ranges` is encrypted in one call
(measured about a tenth faster on threads than in chunks). :func:`buffer` makes 64-byte aligned
room for a count of words and the one spare block ``update_into`` asks for, so JAX on a CPU takes
the words without a copy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

__all__ = ["CHUNK", "PIECE", "CtrWords", "aligned", "buffer", "fill_ranges", "words"]

#: A sequential draw encrypts this many zero bytes at a time: a plaintext that stays in a core's
#: cache, read again and again, instead of one as large as the output.
CHUNK = 1 << 18
#: Below twice this many words, :func:`fill_ranges` expands everything on the calling thread (a
#: thread hand-off costs more); above, ranges are cut into parts of at least half of it.
PIECE = 1 << 17

#: A range to expand: ``(stream, first word, output with 16 bytes of room past the words, words)``.
Range = tuple["CtrWords", int, memoryview, int]


def aligned(raw: np.ndarray, count: int) -> np.ndarray:
    """The 64-byte aligned window of ``raw`` (``uint8``, at least ``8 * count + 80`` bytes) for ``count`` words and one block more."""
    start = -raw.ctypes.data % 64
    return raw[start : start + 8 * count + 16]


def buffer(count: int) -> np.ndarray:
    """Fresh room for ``count`` words and one block more, 64-byte aligned."""
    return aligned(np.empty(8 * count + 16 + 64, np.uint8), count)


def words(out: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` words of ``out`` (a :func:`buffer`) as ``uint64``, without a copy."""
    return out[: 8 * count].view("<u8").astype(np.uint64, copy=False)


class CtrWords:
    """The words of AES-CTR from counter zero under one key, each handed out once.

    A draw first reserves its range (:meth:`reserve`), so no range is handed out twice; a key
    drives exactly one stream, so the fixed counter start never repeats a keystream.

    Args:
        aes: the cipher key (``algorithms.AES``, ``AES128`` or ``AES256``).
    """

    #: The shared all-zero plaintext (never written), at least :data:`CHUNK` bytes, grown on demand.
    _zeros = memoryview(bytes(CHUNK))

    def __init__(self, aes: algorithms.AES | algorithms.AES128 | algorithms.AES256) -> None:
        self._aes = aes
        self.drawn = 0  # words reserved so far
        self._enc: CipherContext | None = None  # of :meth:`next_into`, positioned at word ``self._at``
        self._at = 0

    def reserve(self, count: int) -> int:
        """The first word of the next ``count`` words, which no later draw will get again."""
        start = self.drawn
        self.drawn += count
        return start

    def _encryptor(self, start: int) -> CipherContext:
        """An encryptor positioned at word ``start``."""
        block, half = divmod(start, 2)
        enc = Cipher(self._aes, modes.CTR(block.to_bytes(16, "big"))).encryptor()
        if half:
            enc.update(bytes(8))  # the first half of the block belongs to word start - 1
        return enc

    @staticmethod
    def _plaintext(size: int) -> memoryview:
        """At least ``size`` zero bytes: the shared plaintext, grown first where it is shorter."""
        if len(CtrWords._zeros) < size:
            CtrWords._zeros = memoryview(bytes(max(size, 2 * len(CtrWords._zeros))))
        return CtrWords._zeros

    def fill(self, start: int, out: memoryview, count: int) -> None:
        """Words ``start .. start + count`` (a reserved range) into ``out`` (room for 16 bytes more), from their own counter."""
        size = 8 * count  # CTR writes exactly these bytes; update_into asks for one block of room more
        self._encryptor(start).update_into(CtrWords._plaintext(size)[:size], out)

    def next_into(self, out: memoryview, count: int) -> None:
        """The next ``count`` words into ``out`` (room for 16 bytes more), reserved and expanded in one pass.

        Consecutive draws continue one encryptor (no key schedule per draw); after a range
        taken otherwise (:meth:`reserve`) or a draw that failed, a new one starts at the next word.
        """
        start = self.drawn  # reserved as :meth:`reserve` does, without a call per draw
        self.drawn = start + count
        enc = self._enc if self._enc is not None and self._at == start else self._encryptor(start)
        self._enc = None  # kept again only once every word is written
        size, zeros = 8 * count, CtrWords._zeros
        if size <= CHUNK:  # most draws: one call
            enc.update_into(zeros[:size], out)
        else:
            for off in range(0, size, CHUNK):  # CTR writes exactly the piece; update_into asks for one block of room more
                piece = min(CHUNK, size - off)
                enc.update_into(zeros[:piece], out[off : off + piece + 16])
        self._enc, self._at = enc, start + count


def fill_ranges(ranges: Sequence[Range], threads: int, pool: Callable[[], Executor]) -> None:
    """Expand reserved ``ranges`` on up to ``threads`` threads: the calling one and helpers from ``pool()``.

    The ranges, end to end, are cut into parts of about an eighth of a thread's share (at least
    ``PIECE // 2`` words); the calling thread and the helpers take parts until none is left, each
    expanded from its own counter into its place in its output. The caller then waits only for
    parts in progress, never for a helper the scheduler has not started (on a loaded machine it
    expands everything itself). The first error of any part is raised here.

    Args:
        ranges: ``(stream, first word, output, words)``; each output has 16 bytes of room past its words.
        threads: the most threads to use (below ``2 * PIECE`` words in all, one).
        pool: the helper threads (called only when helpers are used).
    """
    total = sum(r[3] for r in ranges)
    workers = threads if total >= 2 * PIECE else 1
    size = max(PIECE // 2, -(-total // (8 * workers)))
    parts = [(s, start + off, view[8 * off : 8 * (off + min(size, n - off)) + 16], min(size, n - off))
             for s, start, view, n in ranges for off in range(0, n, size)]
    CtrWords._plaintext(8 * max((p[3] for p in parts), default=0))  # grown here, before any thread reads it
    if workers == 1 or len(parts) < 2:
        for s, start, view, k in parts:
            s.fill(start, view, k)
        return
    cond = threading.Condition()
    taken = done = 0
    error: BaseException | None = None

    def work() -> None:
        nonlocal taken, done, error
        while True:
            with cond:
                if taken >= len(parts) or error is not None:
                    return
                i, taken = taken, taken + 1
            s, start, view, k = parts[i]
            try:
                s.fill(start, view, k)
            except BaseException as exc:  # handed to the caller below
                with cond:
                    error = exc
                    cond.notify_all()
                return
            with cond:
                done += 1
                cond.notify_all()

    helpers = pool()
    for _ in range(workers - 1):
        helpers.submit(work)
    work()
    with cond:  # parts taken by helpers and still running
        cond.wait_for(lambda: error is not None or done == taken)
        if error is not None:
            raise error
