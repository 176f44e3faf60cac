"""The shared AES-CTR word expander: any range expanded from its own counter is that range of the sequential stream."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from edil import _ctr

KEYS = {"aes-128": bytes(range(16)), "aes-256": bytes(range(100, 132))}
WORDS = 3 * _ctr.CHUNK // 8 + 37  # sequential expansion crosses several plaintext chunks


def _sequential(key: bytes, count: int) -> np.ndarray:
    """Words 0 .. count of AES-CTR from counter zero, in one call (the reference)."""
    raw = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(8 * count))
    return np.frombuffer(raw, "<u8")


@pytest.mark.parametrize("name", sorted(KEYS))
def test_a_range_from_its_own_start_is_that_range_of_the_sequential_stream(name: str) -> None:
    key = KEYS[name]
    full = _sequential(key, WORDS)
    aes = algorithms.AES128(key) if len(key) == 16 else algorithms.AES256(key)
    s = _ctr.CtrWords(aes)
    half_chunk = _ctr.CHUNK // 16
    for start, count in ((0, 1), (1, 1), (7, 2), (2, 5), (half_chunk - 1, _ctr.CHUNK // 8 + 3), (1001, WORDS - 1001), (WORDS, 0)):
        out = _ctr.buffer(count)
        out[:] = 0xAB  # every word is overwritten
        s.fill(start, out.data, count)
        np.testing.assert_array_equal(_ctr.words(out, count), full[start : start + count])
    assert s.drawn == 0  # fill writes a range, it reserves none

    seq = _ctr.CtrWords(aes)
    pieces = []
    for count in (3, _ctr.CHUNK // 8 + 1, 0, 5):  # consecutive draws, odd starts included
        out = _ctr.buffer(count)
        seq.next_into(out.data, count)
        pieces.append(_ctr.words(out, count).copy())
    taken = seq.reserve(4)  # a range handed elsewhere: the next draw starts after it
    out = _ctr.buffer(6)
    seq.next_into(out.data, 6)
    pieces.append(_ctr.words(out, 6))
    got = np.concatenate(pieces)
    np.testing.assert_array_equal(got[:taken], full[:taken])
    np.testing.assert_array_equal(got[taken:], full[taken + 4 : taken + 10])
    assert seq.drawn == taken + 10


@pytest.mark.parametrize("name", sorted(KEYS))
def test_threaded_ranges_equal_one_stream_drawn_in_order(name: str) -> None:
    key = KEYS[name]
    aes = algorithms.AES128(key) if len(key) == 16 else algorithms.AES256(key)
    streams = [_ctr.CtrWords(aes), _ctr.CtrWords(aes)]
    counts = [[3, 2 * _ctr.PIECE + 1], [_ctr.PIECE + 7, 0]]
    outs: list[list[np.ndarray]] = [[], []]
    with ThreadPoolExecutor(max_workers=3) as pool:
        for draw in counts:
            bufs = [_ctr.buffer(n) for n in draw]
            _ctr.fill_ranges([(s, s.reserve(n), b.data, n) for s, n, b in zip(streams, draw, bufs)], 4, lambda: pool)
            for i, (b, n) in enumerate(zip(bufs, draw)):
                assert b.ctypes.data % 64 == 0
                outs[i].append(_ctr.words(b, n))
    for i, s in enumerate(streams):
        got = np.concatenate(outs[i])
        assert s.drawn == got.size
        np.testing.assert_array_equal(got, _sequential(key, got.size))


def test_a_failed_draw_does_not_shift_the_next_one() -> None:
    s = _ctr.CtrWords(algorithms.AES256(KEYS["aes-256"]))
    full = _sequential(KEYS["aes-256"], 10)
    first = _ctr.buffer(3)
    s.next_into(first.data, 3)
    with pytest.raises(ValueError):  # cryptography's own refusal of a buffer too small for the words
        s.next_into(memoryview(bytearray(8 * 3)), 4)
    out = _ctr.buffer(3)
    s.next_into(out.data, 3)  # the failed draw's words are never handed out
    np.testing.assert_array_equal(_ctr.words(first, 3), full[:3])
    np.testing.assert_array_equal(_ctr.words(out, 3), full[7:])
    assert s.drawn == 10


def test_the_client_sharing_draws_the_plain_aes256_ctr_keystream() -> None:
    from edil._client_replicated import _uniform

    key = bytes(range(32))
    for shape in ((5,), (3, 7), (40000,)):
        n = int(np.prod(shape))
        raw = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(8 * n))
        assert np.array_equal(_uniform(key, shape), np.frombuffer(raw, "<u8").astype(np.uint64).reshape(shape))
