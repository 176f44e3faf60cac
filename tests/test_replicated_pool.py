"""PRF word buffers reused between runs of ``Replicated``: the same words as fresh buffers, never overwritten early."""

from __future__ import annotations

import numpy as np
import pytest

from edil import ParameterError, Replicated, models
from edil import _replicated as impl
from edil.hazmat import replicated as rep

KEYS = [bytes([5 * i + 3]) * 32 for i in range(3)]


def _model(rng: np.random.Generator) -> models.Sequential:
    return models.Sequential((models.Dense(rng.normal(size=(6, 8)), rng.normal(size=8)), models.Polynomial((0.1, 0.5, 0.25)),
                              models.Dense(rng.normal(size=(8, 3)), rng.normal(size=3))))


def test_expand_into_reused_buffers_gives_the_stream_and_refuses_wrong_sizes() -> None:
    counts = [3, 1 << 17, 10]
    fresh = rep.KeyStream.expand([rep.KeyStream(k) for k in KEYS], counts * 1)
    streams = [rep.KeyStream(k) for k in KEYS]
    held = [rep.KeyStream._buffer(n) for n in counts]  # noqa: SLF001
    for h in held:
        h[:] = 0xAB  # stale bytes of an earlier run must all be overwritten
    got = rep.KeyStream.expand_into(streams, counts, held)
    for a, b in zip(got, fresh):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ParameterError):
        rep.KeyStream.expand_into(streams, [4, 1, 1], held)
    with pytest.raises(ParameterError):
        rep.KeyStream.expand_into(streams, counts[:2], held)


def test_runs_reuse_buffers_and_equal_the_host_parties_run_by_run() -> None:
    """Runs of two batch sizes, interleaved, the last one after its predecessor's output was deleted."""
    rng = np.random.default_rng(11)
    model = _model(rng)
    sim, host = Replicated(seed=bytes(range(1, 33))), Replicated(seed=bytes(range(1, 33)))
    em = models.encode_model(model, sim)
    spec, weights = host._model_spec(models.encode_model(model, host))  # noqa: SLF001
    ws = [np.asarray(w) for w in weights]
    parties = [rep.host_party(i, sim.frac_bits, host.party_streams(i)) for i in range(3)]
    xs = [rng.normal(size=(n, 6)) for n in (4, 7, 4, 7, 7)]
    encs = [sim.encode(x) for x in xs]
    words = sim.prf_words(em, 4)
    seen = None
    for k, (x, enc) in enumerate(zip(xs, encs)):
        out = sim.run_model(em, enc)
        got = np.asarray(out.components)
        if k == 3:
            out.components.delete()  # the pool cannot wait on it: the next run of 7 rows takes fresh buffers
        shares = sim.party_shares(enc)
        outs = rep.run_parties([rep.model(p, shares[i], spec, ws) for i, p in enumerate(parties)])
        np.testing.assert_array_equal(np.stack([o[0] for o in outs]), got)
        np.testing.assert_allclose(sim.decode(sim.from_components(got)), model.forward(x), atol=2e-3)
        if k == 0:
            kept = impl._WORD_POOL._free.get(words)  # noqa: SLF001
            assert kept, "the first run's buffers were not kept"
            seen = [b.ctypes.data for b in kept[-1][0]]
        if k == 2:  # the third run (4 rows again) wrote into the first run's memory
            kept = impl._WORD_POOL._free.get(words)  # noqa: SLF001
            assert kept and [b.ctypes.data for b in kept[-1][0]] == seen
            arrays = kept[-1][1]  # kept only if they read the buffers in place (the next run writes there)
            assert arrays is None or all(a.size == 0 or a.unsafe_buffer_pointer() == b.ctypes.data
                                         for a, b in zip(arrays, kept[-1][0]))
