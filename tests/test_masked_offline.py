"""Masked's cheaper offline phase: polynomials skip the powers no coefficient needs; the in-process
dealer draws its words as one AES-256-CTR block into reused storage that no run can see overwritten;
row-wise models run block by block, each block on its own words."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import edil
from edil import Masked, _dealer, models
from edil import _masked as masked_impl
from edil import _mpc as mpc
from edil._fixed import square_split
from tests import _workloads as wl


def _poly(x: np.ndarray, coeffs: list[float]) -> np.ndarray:
    return np.polynomial.polynomial.polyval(x, np.asarray(coeffs))


def test_a_relu_fit_without_odd_terms_skips_the_cube() -> None:
    # c_0 + x/2 + c_2 x^2 + c_4 x^4 (the shape of every ReLU fit): x^2 and x^4 only.
    s = Masked(2, key=jax.random.key(0))
    x = np.linspace(-3, 3, 24).reshape(4, 6)
    coeffs = [0.3, 0.5, 0.2, 0.0, -0.004]
    a = s.encode(x)
    s.stats.reset()
    out = s.decode(s.polyval(a, coeffs))
    # square, truncate s x^2 by 2f, square, truncate the combination: 4 rounds (7 with the cube)
    assert s.stats.openings == 4
    assert s.stats.triples == 2 * x.size
    np.testing.assert_allclose(out, _poly(x, coeffs), atol=2e-3)


@settings(max_examples=8, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.25, -0.5, 0.125]), min_size=2, max_size=6), st.integers(0, 2**32))
@example([0.0, 0.0, 0.0, 0.0, 0.25], 0)  # ReLU-shaped degree 4: the scaled square
@example([0.0, 0.25, -1.0], 1)  # a top power of coefficient -1
@example([0.125, 0.0, 0.0, 0.5], 2)  # x^3 alone: x^2, then x^3
def test_sparse_polynomials_match_numpy_and_cost_only_the_powers_they_need(coeffs: list[float], seed: int) -> None:
    s = Masked(2, key=jax.random.key(seed))
    x = np.linspace(-1.5, 1.5, 12).reshape(3, 4)
    a = s.encode(x)
    s.stats.reset()
    out = s.decode(s.polyval(a, coeffs))
    np.testing.assert_allclose(out, _poly(x, coeffs), atol=5e-3)
    d = len(coeffs) - 1
    need = {i for i in range(2, d + 1) if coeffs[i] != 0}
    for i in range(d, 1, -1):
        if i in need:
            need.add(i // 2 if i % 2 == 0 else i - 1)
    products = len(need - {1})
    final = any(c != 0 for c in coeffs[1:])
    # a top power of coefficient +-1, or a ReLU-shaped degree 4 (square_split), saves one truncation
    enc = tuple(int(v) for v in s.fp.encode(np.asarray(coeffs)).view(np.int64))
    saved = int(square_split(enc, s.frac_bits) is not None or (d >= 2 and abs(coeffs[d]) == 1.0))
    assert s.stats.triples == products * x.size
    assert s.stats.openings == 2 * products + int(final) - saved


def test_a_constant_polynomial_is_exact_and_opens_nothing() -> None:
    s = Masked(3, key=jax.random.key(1))
    a = s.encode(np.ones((2, 3)))
    s.stats.reset()
    out = s.decode(s.polyval(a, [0.75, 0.0, 0.0]))
    assert s.stats.openings == 0
    np.testing.assert_array_equal(out, np.full((2, 3), 0.75))


def test_the_node_program_plans_the_same_skipped_powers() -> None:
    # A runtime node runs the same program: its plan has no Beaver product for the absent cube,
    # and x^4 is not truncated on its own (u = s x^2 is truncated by 2f, u^2 joins the sum).
    coeffs = tuple(int(c) for c in Masked(2).fp.encode(np.array([0.1, 0.5, 0.2, 0.0, -0.01])).view(np.int64))
    items = mpc.plan((("poly", coeffs),), [], 3, 4, 16)
    assert [kind for kind, _ in items] == ["square", "trunc2f", "square", "trunc"]
    with_cube = tuple(int(c) for c in Masked(2).fp.encode(np.array([0.1, 0.5, 0.2, 0.05, -0.01])).view(np.int64))
    items = mpc.plan((("poly", with_cube),), [], 3, 4, 16)
    assert [kind for kind, _ in items] == ["square", "trunc", "mul", "trunc", "square", "trunc", "trunc"]


def test_preprocessed_material_survives_later_runs_that_reuse_the_dealer_storage() -> None:
    x, _ = wl.digits()
    _, model = wl.mlp_digits()
    s = Masked(2, key=jax.random.key(3))
    em = models.encode_model(model, s)
    first = em.preprocess(40)
    enc = s.encode(x[:40])
    # every later run overwrites the scheme's host storage of dealer words
    second = em.preprocess(40)
    fused = [em(enc) for _ in range(2)]
    ref = model.forward(x[:40])
    np.testing.assert_allclose(s.decode(em(enc, preprocessed=first)), ref, atol=0.02)
    np.testing.assert_allclose(s.decode(em(enc, preprocessed=second)), ref, atol=0.02)
    for out in fused:
        np.testing.assert_allclose(s.decode(out), ref, atol=0.02)


def test_runs_dispatched_back_to_back_each_see_their_own_words() -> None:
    s = Masked(2, key=jax.random.key(4))
    x = np.linspace(-2, 2, 3000).reshape(30, 100)
    a = s.encode(x)
    outs = [s.mul(a, a) for _ in range(4)]  # no waiting in between: storage reuse must wait itself
    for out in outs:
        np.testing.assert_allclose(s.decode(out), x * x, atol=1e-3)
    # fresh words per run: two runs of the same product give different shares
    assert not np.array_equal(np.asarray(outs[0].shares[0]), np.asarray(outs[1].shares[0]))


def test_same_key_reproduces_every_run() -> None:
    x = np.linspace(-1, 1, 12).reshape(3, 4)
    runs = []
    for _ in range(2):
        s = Masked(2, key=jax.random.key(9))
        a = s.encode(x)
        runs.append(np.asarray(s.polyval(s.mul(a, a), [0.1, 0.5, 0.25]).shares))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_stream_words_into_reused_storage_continue_the_keystream() -> None:
    seed = b"\x07" * 32
    expected = _dealer.Stream(seed).uniform((70,))
    s = _dealer.Stream(seed)
    buf = np.empty(8 * 50 + 80, np.uint8)
    head = s.words_into(buf, 50).copy()
    tail = s.words_into(buf, 20)
    np.testing.assert_array_equal(np.concatenate([head, tail]), expected)
    assert tail.ctypes.data % 64 == 0
    with pytest.raises(edil.ParameterError):
        s.words_into(np.empty(8 * 50, np.uint8), 50)  # no room for the spare block and alignment
    with pytest.raises(edil.ParameterError):
        s.words_into(np.empty(8 * 50 + 80, np.uint64), 50)


def _mlp_runs(s: Masked, em: models.EncodedModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    enc = s.encode(x)
    s.stats.reset()
    fused = s.decode(em(enc))
    stats = (s.stats.openings, s.stats.triples, s.stats.bytes_opened)
    online = s.decode(em(enc, preprocessed=em.preprocess(len(x))))
    return fused, online, stats


def test_row_blocks_give_the_whole_batch_result_and_the_same_openings(monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = wl.digits()
    x = x[:53]  # 53 rows in blocks of 8: seven blocks, the last padded with three zero rows
    _, model = wl.mlp_digits()
    ref = model.forward(x)
    s = Masked(2, key=jax.random.key(5))
    em = models.encode_model(model, s)
    monkeypatch.setattr(masked_impl, "_BLOCK_ELEMENTS", 8 * 64)
    widths = [(2, 53, 64), (64, 32), (32,), (32, 10), (10,)]
    assert masked_impl._row_block("model", (("public", True), ("poly", (1, 2)), ("public", True)), widths) == 8
    blocked = _mlp_runs(s, em, x)
    monkeypatch.setattr(masked_impl, "_BLOCK_ELEMENTS", 1 << 40)
    whole = _mlp_runs(s, em, x)
    for out in (*blocked[:2], *whole[:2]):
        np.testing.assert_allclose(out, ref, atol=0.02)
    assert blocked[2] == whole[2]  # counted from the protocol, not from how the simulator schedules it


def test_row_blocks_draw_disjoint_fresh_words_and_correct_material(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every block draws its own words of the dealer block: no mask repeats across blocks, and
    # each block's truncation material is the correlation (r, r >> f, msb r).
    x, _ = wl.digits()
    _, model = wl.mlp_digits()
    s = Masked(2, key=jax.random.key(6))
    em = models.encode_model(model, s)
    monkeypatch.setattr(masked_impl, "_BLOCK_ELEMENTS", 16 * 64)
    pre = em.preprocess(40)
    assert pre.rows == 14  # 40 rows: three blocks of 14 (two padding rows)
    r, rhi, msb = (np.asarray(a) for a in pre.material[0])  # the first layer's truncation
    assert r.shape == (3, 2, 14, 32)
    with np.errstate(over="ignore"):
        secret = r.sum(axis=1, dtype=np.uint64)
        np.testing.assert_array_equal(rhi.sum(axis=1, dtype=np.uint64), secret >> np.uint64(s.frac_bits))
        np.testing.assert_array_equal(msb.sum(axis=1, dtype=np.uint64), secret >> np.uint64(63))
    words = np.concatenate([r.ravel(), rhi[:, 1].ravel(), msb[:, 1].ravel()])
    assert np.unique(words).size == words.size
    enc = s.encode(x[:40])
    np.testing.assert_allclose(s.decode(em(enc, preprocessed=pre)), model.forward(x[:40]), atol=0.02)
    with pytest.raises(edil.ReplayError):
        em(enc, preprocessed=pre)


def test_shared_weights_run_the_whole_batch_at_once() -> None:
    # A shared dense layer opens its weights' mask once for all rows: never split into blocks.
    shapes = [(2, 100_000, 64), (2, 64, 32), (2, 32)]
    assert masked_impl._row_block("model", (("private",),), shapes) == 0
    assert masked_impl._row_block("model", (("public", True),), [(2, 100_000, 64), (64, 32), (32,)]) > 0


def test_exact_relu_and_max_pooling_run_in_row_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    model = models.Sequential((
        models.Dense(rng.normal(size=(6, 8)) / 2, rng.normal(size=8) / 4),
        models.ReLU(),
        models.MaxPool(np.array([[0, 1], [2, 3], [4, 5], [6, 7]]), 8),
        models.Dense(rng.normal(size=(4, 3)) / 2, np.zeros(3)),
    ))
    x = rng.uniform(-2, 2, size=(21, 6))
    s = Masked(3, key=jax.random.key(8))
    em = models.encode_model(model, s)
    monkeypatch.setattr(masked_impl, "_BLOCK_ELEMENTS", 8 * 8)
    pre = em.preprocess(len(x))
    assert pre.rows == 7  # widest row: 8 (the ReLU's input and the pooling gather): 21 rows in three blocks
    enc = s.encode(x)
    for out in (em(enc), em(enc, preprocessed=pre)):
        np.testing.assert_allclose(s.decode(out), model.forward(x), atol=1e-3)


def test_a_fused_run_in_parts_draws_exactly_the_words_of_one_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # The parts take consecutive words of one keystream in block order: the same shares, bit for bit.
    x, _ = wl.digits()
    _, model = wl.mlp_digits()
    monkeypatch.setattr(masked_impl, "_BLOCK_ELEMENTS", 8 * 64)
    outs = []
    for parts in (1, 3):
        monkeypatch.setattr(masked_impl, "_PARTS", parts)
        s = Masked(2, key=jax.random.key(10))
        em = models.encode_model(model, s)
        outs.append(np.asarray(em(s.encode(x[:45])).shares))  # six blocks of 8 (three padding rows)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(Masked(2).fp.decode(outs[1].sum(axis=0, dtype=np.uint64)), model.forward(x[:45]), atol=0.02)
