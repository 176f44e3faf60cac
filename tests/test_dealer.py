"""The runtime's seed-compressed dealer: correct correlations, and each party's material from its seed alone."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edil import ParameterError, SerializationError, ShapeError, _dealer
from edil.hazmat import mpc, ring

F = 16
ITEMS = [
    ("trunc", ((5, 3),)),
    ("square", ((4,),)),
    ("mul", ((2, 3),)),
    ("matmul", ((5, 4), (4, 3))),
    ("trunc", ((5, 3),)),
]


def _total(dealt: _dealer.Dealt, item: int, slot: int) -> np.ndarray:
    return np.sum(np.stack([m[item][slot] for m in dealt.material]), axis=0, dtype=np.uint64)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(2, 5), seed=st.binary(min_size=16, max_size=40))
def test_shares_sum_to_the_correlations(n: int, seed: bytes) -> None:
    d = mpc.deal_all(ITEMS, n, F, seed=seed)
    assert len(d.material) == len(d.seeds) == n and all(len(m) == len(ITEMS) for m in d.material)
    with np.errstate(over="ignore"):
        for t, (kind, _) in enumerate(ITEMS):
            if kind == "trunc":
                r = _total(d, t, 0)
                assert np.array_equal(_total(d, t, 1), r >> np.uint64(F))
                assert np.array_equal(_total(d, t, 2), r >> np.uint64(63))
            elif kind == "square":
                assert np.array_equal(_total(d, t, 1), _total(d, t, 0) * _total(d, t, 0))
            elif kind == "mul":
                assert np.array_equal(_total(d, t, 2), _total(d, t, 0) * _total(d, t, 1))
            else:
                assert np.array_equal(_total(d, t, 2), ring.matmul_reference(_total(d, t, 0), _total(d, t, 1)))
    # the derived values only travel, as the last party's corrections: trunc 2 + square 1 + mul 1 + matmul 1 + trunc 2
    assert len(d.corrections) == 7
    assert all(c is d.material[n - 1][t][j] for c, (t, j) in zip(d.corrections, [(0, 1), (0, 2), (1, 1), (2, 2), (3, 2), (4, 1), (4, 2)]))


@pytest.mark.parametrize("n", [2, 3])
def test_each_party_expands_its_material_from_its_seed(n: int) -> None:
    d = mpc.deal_all(ITEMS, n, F, seed=b"\x05" * 32)
    for i in range(n):
        dealer = mpc.PartyDealer(i, n, F, d.seeds[i], d.corrections if i == n - 1 else ())
        mine = [dealer(kind, *shapes) for kind, shapes in ITEMS]
        assert dealer.finished()
        for got, want in zip(mine, d.material[i]):
            assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))
        # an auditor replaying one party re-derives the same material
        alone = mpc.deal(ITEMS, n, F, seed=b"\x05" * 32, parties=[i])
        assert all(not alone[j] for j in range(n) if j != i)
        assert all(np.array_equal(g, w) for got, want in zip(alone[i], d.material[i]) for g, w in zip(got, want))


def test_fresh_seeds_fresh_material() -> None:
    a, b = mpc.deal_all(ITEMS, 2, F, seed=b"\x01" * 32), mpc.deal_all(ITEMS, 2, F, seed=b"\x02" * 32)
    assert len({*a.seeds, *b.seeds}) == 4
    assert not np.array_equal(a.material[0][0][0], b.material[0][0][0])
    again = mpc.deal_all(ITEMS, 2, F, seed=b"\x01" * 32)
    assert again.seeds == a.seeds and np.array_equal(again.corrections[0], a.corrections[0])


def test_party_dealer_fails_closed() -> None:
    d = mpc.deal_all(ITEMS, 3, F, seed=b"\x07" * 32)
    with pytest.raises(ParameterError):
        mpc.PartyDealer(0, 3, F, d.seeds[0], d.corrections)  # corrections go to the last party only
    with pytest.raises(ParameterError):
        mpc.PartyDealer(3, 3, F, d.seeds[0])
    short = mpc.PartyDealer(2, 3, F, d.seeds[2], d.corrections[:2])  # a truncation pair's two corrections
    short("trunc", (5, 3))
    with pytest.raises(ShapeError, match="exhausted"):
        short("trunc", (5, 3))
    wrong = mpc.PartyDealer(2, 3, F, d.seeds[2], [np.zeros((2, 2), np.uint64)] * 2)
    with pytest.raises(ShapeError, match="shape"):
        wrong("trunc", (5, 3))


def test_stream_is_aes_256_ctr() -> None:
    # FIPS-197 / NIST: AES-256 of the zero block under the zero key; the stream's first two words.
    first = _dealer.Stream(bytes(32)).uniform((2,))
    assert first.tobytes() == bytes.fromhex("dc95c078a2408989ad48a21492842087")
    s = _dealer.Stream(b"\x09" * 32)
    x, y = s.uniform((3, 4)), s.uniform((0,))
    assert x.dtype == np.uint64 and x.shape == (3, 4) and y.shape == (0,)
    with pytest.raises(ParameterError):
        _dealer.Stream(b"short")


def test_zero_sharing_sums_to_zero() -> None:
    z = mpc.zero_sharing((4, 5), 3, seed=b"\x03" * 32)
    assert z.shape == (3, 4, 5) and not np.any(z[1] == 0)
    assert not np.any(np.sum(z, axis=0, dtype=np.uint64))


def test_only_the_last_party_is_sent_arrays() -> None:
    from edil.runtime._mpc_session import material_from_wire, material_to_wire

    d = mpc.deal_all(ITEMS, 3, F, seed=b"\x04" * 32)
    wires = [material_to_wire(d, i) for i in range(3)]
    assert [len(w["corrections"]) for w in wires] == [0, 0, 7]
    seed, corr = material_from_wire(wires[2], 2, 3)
    assert seed == d.seeds[2] and all(np.array_equal(a, b) for a, b in zip(corr, d.corrections))
    for bad, party in [
        ([], 0),
        ({"seed": b"x" * 31, "corrections": []}, 0),
        ({"seed": b"x" * 32}, 0),
        (wires[2], 0),  # corrections for a party that takes none
        ({"seed": b"x" * 32, "corrections": [b"junk"]}, 2),
    ]:
        with pytest.raises(SerializationError):
            material_from_wire(bad, party, 3)
