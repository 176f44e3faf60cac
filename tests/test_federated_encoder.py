"""The domain encoder, the privacy evaluation, and the digits accuracy target."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import edil
from edil import federated as fed


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return train_test_split(x / 16.0, y, test_size=0.25, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def encoder(digits):
    return fed.DomainEncoder.train(digits[0], embed_dim=16, hidden=64, epochs=600, key=jax.random.key(0))


def test_encoder_is_deterministic_given_a_key(digits) -> None:
    x = digits[0][:200]
    a = fed.DomainEncoder.train(x, embed_dim=4, hidden=8, epochs=20, key=jax.random.key(1))
    b = fed.DomainEncoder.train(x, embed_dim=4, hidden=8, epochs=20, key=jax.random.key(1))
    c = fed.DomainEncoder.train(x, embed_dim=4, hidden=8, epochs=20, key=jax.random.key(2))
    assert np.array_equal(a.encode(x), b.encode(x))
    assert not np.array_equal(a.encode(x), c.encode(x))
    assert a.encode(x).shape == (200, 4) and np.all(np.abs(a.encode(x)) <= 1)


def test_encoder_save_load_roundtrip(encoder, digits, tmp_path: Path) -> None:
    path = tmp_path / "enc.npz"
    encoder.save(path)
    loaded = fed.DomainEncoder.load(path)
    x = digits[1]
    assert np.array_equal(loaded.encode(x), encoder.encode(x))
    assert np.array_equal(loaded.decode(encoder.encode(x)), encoder.decode(encoder.encode(x)))


def test_encoder_load_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(edil.SerializationError):
        fed.DomainEncoder.load(bad)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(edil.SerializationError):
        fed.DomainEncoder.load(tmp_path / "other.npz")


def test_encoder_rejects_wrong_width(encoder) -> None:
    with pytest.raises(edil.ShapeError):
        encoder.encode(np.zeros((3, 63)))
    with pytest.raises(edil.ShapeError):
        encoder.decode(np.zeros((3, 15)))


def test_reconstruction_attack_reports_honest_numbers(encoder, digits) -> None:
    x_private, x_public = digits[0], digits[1]
    rep = fed.reconstruction_attack(encoder, x_public, x_private, epochs=600, key=jax.random.key(3))
    assert rep.baseline_mse > 0 and rep.public_samples == len(x_public)
    # embeddings are an encoding: the attacker does much better than guessing from public data
    assert rep.attack_mse < 0.6 * rep.baseline_mse
    assert rep.attack_to_baseline == pytest.approx(rep.attack_mse / rep.baseline_mse)


def test_federated_accuracy_within_two_points_of_centralized(encoder, digits) -> None:
    x_tr, x_te, y_tr, y_te = digits
    z_tr, z_te = encoder.encode(x_tr), encoder.encode(x_te)
    central = fed.train_head(z_tr, y_tr, n_classes=10, epochs=200, lr=1.0, key=jax.random.key(4))
    shards = fed.split_by_load(z_tr, y_tr, [25, 50, 25], key=jax.random.key(5))
    trainer = fed.FederatedTrainer(fed.make_workers(shards, key=jax.random.key(6)), fed.SecureAggregation(),
                                   n_classes=10, local_epochs=10, lr=1.0)
    res = trainer.run(20, key=jax.random.key(7), eval_data=(z_te, y_te))
    acc_central = central.accuracy(z_te, y_te)
    assert res.history[-1].accuracy == pytest.approx(res.head.accuracy(z_te, y_te))
    assert acc_central > 0.85
    assert res.history[-1].accuracy >= acc_central - 0.02


def test_federated_demo_rows() -> None:
    from edil.app import run_federated_demo

    lines: list[str] = []
    rows = run_federated_demo(lines.append, rounds=3, encoder_epochs=50, progress=False)
    assert [r["scheme"] for r in rows] == ["centralized (plaintext)", "federated 3 workers (plain, in-process)",
                                           "federated 3 nodes (secure, runtime)"]
    assert set(rows[0]) == {"scheme", "workload", "samples", "accuracy", "seconds", "bytes"}
    assert sum(line.startswith("round ") for line in lines) == 3
    assert "9 worker steps, each with a signed PoAI transcript" in "\n".join(lines)
    # the runtime's secure aggregation gives the in-process plain result up to fixed point / key order
    assert abs(rows[2]["accuracy"] - rows[1]["accuracy"]) <= 0.02
    assert "337/673/337" in "\n".join(lines)
