"""The pairwise PRF streams of ``Replicated``: words expanded in parallel pieces are the stream, in order, once."""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edil import Replicated, models
from edil.hazmat import replicated as rep

KEYS = [bytes([7 * i + 1]) * 32 for i in range(3)]


def keystream(key: bytes, count: int) -> np.ndarray:
    """The first ``count`` words of AES-128-CTR from counter zero under the 16 bytes HKDF-SHA256 derives from ``key`` (the reference)."""
    aes_key = HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=b"EDIL/replicated/prf-key/aes-128-ctr/v2").derive(key)
    enc = Cipher(algorithms.AES(aes_key), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(enc.update(bytes(8 * count)), "<u8")


def test_the_prf_is_aes_128_under_a_derived_key_not_the_pair_key_itself() -> None:
    """Neither AES-256 under the pair key (the old stream) nor AES-128 under its first half: a key of its own."""
    got = rep.KeyStream(KEYS[1]).words(4)
    np.testing.assert_array_equal(got, keystream(KEYS[1], 4))
    for key in (KEYS[1], KEYS[1][:16]):
        raw = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(32))
        assert not np.array_equal(got, np.frombuffer(raw, "<u8"))


def test_expanded_words_are_each_stream_in_order_with_no_word_twice() -> None:
    """Parallel pieces start at odd and even words and cross streams; together they are the stream."""
    streams = [rep.KeyStream(k) for k in KEYS]
    big = rep.KeyStream._PIECE  # noqa: SLF001 - large enough that the expansion is cut into pieces
    drawn: list[list[np.ndarray]] = [[], [], []]
    for counts in ([3, 2 * big + 1, big], [0, 1, 5], [big + 7, 3, 2 * big]):
        for i, words in enumerate(rep.KeyStream.expand(streams, counts)):
            assert words.dtype == np.uint64 and words.shape == (counts[i],)
            drawn[i].append(words)
    for i, s in enumerate(streams):
        drawn[i].append(s.words(11))  # a plain draw continues where the expansion stopped
        got = np.concatenate(drawn[i])
        assert s.drawn == got.size
        np.testing.assert_array_equal(got, keystream(KEYS[i], got.size))
        assert np.unique(got).size == got.size  # no counter reused: 64-bit words never repeat here


def test_words_are_64_byte_aligned_for_jax() -> None:
    for words in rep.KeyStream.expand([rep.KeyStream(k) for k in KEYS], [5, 1 << 18, 9]):
        assert words.ctypes.data % 64 == 0


def test_a_run_draws_what_its_plan_says_and_continues_the_streams() -> None:
    """Two runs of a model (the first layer's products computed apart) equal the host parties' two runs."""
    rng = np.random.default_rng(5)
    model = models.Sequential((models.Dense(rng.normal(size=(6, 8)), rng.normal(size=8)), models.Polynomial((0.1, 0.5, 0.25)),
                               models.Dense(rng.normal(size=(8, 3)), rng.normal(size=3))))
    x = rng.normal(size=(5, 6))
    sim, host = Replicated(seed=bytes(range(32))), Replicated(seed=bytes(range(32)))
    em = models.encode_model(model, sim)
    enc = sim.encode(x)
    runs = [np.asarray(sim.run_model(em, enc).components) for _ in range(2)]
    spec, weights = host._model_spec(models.encode_model(model, host))  # noqa: SLF001
    assert spec[0][0] == "public"
    shares = sim.party_shares(enc)
    parties = [rep.host_party(i, sim.frac_bits, host.party_streams(i)) for i in range(3)]
    for want in runs:  # the same streams across both runs: the second run continues the first's counters
        outs = rep.run_parties([rep.model(p, shares[i], spec, [np.asarray(w) for w in weights]) for i, p in enumerate(parties)])
        np.testing.assert_array_equal(np.stack([o[0] for o in outs]), want)
    assert not np.array_equal(runs[0], runs[1])  # fresh randomness per run
    np.testing.assert_allclose(sim.decode(sim.from_components(runs[1])), model.forward(x), atol=2e-3)
    words = sim.prf_words(em, len(x))
    assert [s.drawn for s in sim._streams] == [2 * w for w in words]  # noqa: SLF001


def test_pair_keys_carry_the_version_so_parties_of_the_aes_256_version_fail_closed() -> None:
    """The pair key is HKDF under the v2 tag: a party still on v1 derives another key, so its sealed messages do not open."""
    own, peer = rep.party_private_key(bytes(range(32)), 0), rep.party_private_key(bytes(range(1, 33)), 1)
    low, high = own.public_key().public_bytes_raw(), peer.public_key().public_bytes_raw()
    secret = own.exchange(peer.public_key())
    got = rep.pair_key(own, high, 0, low, high)
    assert got == rep.pair_key(peer, low, 0, low, high)  # both holders agree

    def derive(version: bytes) -> bytes:
        info = b"EDIL/replicated/pair-key/" + version + bytes([0]) + low + high
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)

    assert got == derive(b"v2") and got != derive(b"v1")
