"""Imported models with exact activations (``activations="exact"``): ReLU as an exact layer under
Masked against onnxruntime and JAX, next to the polynomial twins; max pooling exact under Masked;
a shared argmax output in place of the logits; and the schemes without a comparison refusing
the layers they cannot run."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks import imports as workloads
from edil import CKKS, Masked, Paillier, Plain, UnsupportedOperationError, models

RNG = np.random.default_rng(23)


def masked() -> Masked:
    return Masked(2, key=jax.random.key(0))


def agreement(model: models.Sequential, x: np.ndarray, ref_labels: np.ndarray) -> float:
    """Share of held-out labels under Masked equal to the reference runtime's."""
    return float(np.mean(models.encode_model(model, masked()).predict(x) == ref_labels))


def layer_names(model: models.Sequential) -> list[str]:
    return [type(la).__name__ for la in model.layers]


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x_tr, x_te, _, _ = workloads.digits_split()
    return x_tr, x_te


# --- imported models under Masked: exact ReLU vs the polynomial twin ------------------------------------
# Measured on the 450 held-out digits: exact ReLU agrees with the reference on every label (1.000) for
# all four models; the polynomial twins agree on 0.993 (CNNs, degree 8) and 0.996 (MLP, degree 6).
def test_onnx_cnn_exact_relu_agrees_with_onnxruntime_at_least_as_well_as_polynomials(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x_tr, x_te = digits
    graph = workloads.cnn_onnx(workloads.cnn_params())
    ref = workloads.onnx_reference(graph, x_te, "probabilities")
    flat = x_te.reshape(len(x_te), -1)
    exact = models.from_onnx(graph, calibration=x_tr, degree=8, activations="exact")
    poly = models.from_onnx(graph, calibration=x_tr, degree=8)  # the default is unchanged
    assert layer_names(exact) == ["Dense", "ReLU", "Dense"] and layer_names(poly) == ["Dense", "Polynomial", "Dense"]
    assert exact.approximations == ()  # nothing fitted
    logits = models.encode_model(exact, masked()).infer(flat)
    # exact up to the fixed point (f = 16) and onnxruntime's float32
    np.testing.assert_allclose(workloads.softmax(logits), ref, atol=1e-3)
    got = {"exact": float(np.mean(exact.labels(logits) == ref.argmax(axis=1))),
           "polynomial": agreement(poly, flat, ref.argmax(axis=1))}
    assert got["exact"] >= max(got["polynomial"], 0.995), got


def test_onnx_max_pool_cnn_is_exact_under_masked(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x_tr, x_te = digits
    # the average-pooling CNN's weights behind a MaxPool (no second training): onnxruntime runs the same graph
    graph = workloads.cnn_onnx(workloads.cnn_params(), pool="MaxPool")
    x = x_te
    ref = workloads.onnx_reference(graph, x, "probabilities")
    model = models.from_onnx(graph, calibration=x_tr, activations="exact")
    assert layer_names(model) == ["Dense", "MaxPool", "ReLU", "Dense"]
    logits = models.encode_model(model, masked()).infer(x.reshape(len(x), -1))
    np.testing.assert_allclose(workloads.softmax(logits), ref, atol=1e-3)
    assert float(np.mean(logits.argmax(axis=1) == ref.argmax(axis=1))) >= 0.995
    layers, _ = masked().program(model, private_weights=False)  # what runtime nodes run: both layers exact
    assert [la[0] for la in layers] == ["public", "maxpool", "relu", "public"]


def test_skl2onnx_mlp_exact_relu_agrees_with_onnxruntime_at_least_as_well_as_polynomials(
        digits: tuple[np.ndarray, np.ndarray]) -> None:
    x_tr, x_te = digits
    clf, graph = workloads.skl2onnx_mlp()
    flat_tr, flat_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    labels = workloads.onnx_reference(graph, flat_te, "label")
    kw: dict[str, Any] = {"output": "probabilities", "calibration": flat_tr, "classes": clf.classes_.tolist()}
    exact = models.from_onnx(graph, activations="exact", **kw)
    poly = models.from_onnx(graph, degree=6, **kw)
    assert layer_names(exact) == ["Dense", "ReLU", "Dense"]
    got = {"exact": agreement(exact, flat_te, labels), "polynomial": agreement(poly, flat_te, labels)}
    assert got["exact"] >= max(got["polynomial"], 0.995), got


def test_jax_cnn_exact_relu_agrees_with_jax_at_least_as_well_as_polynomials(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x_tr, x_te = digits
    params = workloads.cnn_params()
    ref = np.asarray(workloads.cnn_jax(params, jnp.asarray(x_te)), dtype=np.float64)
    flat = x_te.reshape(len(x_te), -1)
    exact = models.from_jax(workloads.cnn_jax, params, x_tr, kind="multiclass", activations="exact")
    poly = models.from_jax(workloads.cnn_jax, params, x_tr, degree=8, kind="multiclass")
    assert layer_names(exact) == ["Dense", "ReLU", "Dense"] and layer_names(poly) == ["Dense", "Polynomial", "Dense"]
    logits = models.encode_model(exact, masked()).infer(flat)
    np.testing.assert_allclose(logits, ref, atol=2e-3)  # no fit error: fixed point and float32 only
    got = {"exact": float(np.mean(logits.argmax(axis=1) == ref.argmax(axis=1))),
           "polynomial": agreement(poly, flat, ref.argmax(axis=1))}
    assert got["exact"] >= max(got["polynomial"], 0.995), got


def test_exact_relu_import_is_exact_in_float() -> None:
    """Under Plain the exact import equals the reference to float precision (a polynomial would not)."""
    w1, w2 = RNG.normal(size=(4, 5)), RNG.normal(size=(5, 3))
    fn = lambda p, x: jnp.maximum(jax.nn.relu(x @ p["a"]) @ p["b"], 0.0)  # noqa: E731 - relu twice, two spellings
    x = RNG.normal(size=(30, 4)).astype(np.float32)
    model = models.from_jax(fn, {"a": w1.astype(np.float32), "b": w2.astype(np.float32)}, x, activations="exact")
    assert layer_names(model) == ["Dense", "ReLU", "Dense", "ReLU"]
    ref = np.maximum(np.maximum(x @ w1, 0) @ w2, 0)
    np.testing.assert_allclose(models.encode_model(model, Plain()).infer(x), ref, atol=1e-4)
    assert np.any(ref == 0) and np.any(ref > 0)  # both sides of the kink are exercised
    graph = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "A"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(w1.astype(np.float32), "A")]), opset_imports=[helper.make_opsetid("", 17)])
    onnx_model = models.from_onnx(graph, activations="exact")
    np.testing.assert_allclose(onnx_model.forward(x), np.maximum(x @ w1, 0), atol=1e-4)


def test_exact_activations_refuse_other_activations_and_unknown_options() -> None:
    x = RNG.normal(size=(6, 4)).astype(np.float32)
    w = {"w": RNG.normal(size=(4, 3)).astype(np.float32)}
    with pytest.raises(UnsupportedOperationError, match="'tanh' has no exact layer.*activations='polynomial'"):
        models.from_jax(lambda p, a: jnp.tanh(a @ p["w"]), w, x, activations="exact")
    graph = helper.make_model(helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"], name="sig")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]),
        opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOperationError, match="sig.*'logistic' has no exact layer"):
        models.from_onnx(graph, activations="exact")
    with pytest.raises(ValueError, match="activations"):
        models.from_onnx(graph, activations="relu")
    with pytest.raises(ValueError, match="activations"):
        models.from_jax(lambda p, a: a @ p["w"], w, x, activations="exactly")


# --- a shared argmax instead of the logits ----------------------------------------------------------------
def _small_classifier() -> tuple[models.Sequential, np.ndarray]:
    w1, b1 = RNG.normal(size=(6, 8)), RNG.normal(size=8) * 0.1
    model = models.Sequential((models.Dense(w1, b1), models.ReLU(), models.Dense(RNG.normal(size=(8, 5)), np.zeros(5))),
                              kind="multiclass", classes=tuple("abcde"))
    return model, RNG.normal(size=(40, 6))


def test_argmax_output_matches_numpy_argmax_of_the_float_model(digits: tuple[np.ndarray, np.ndarray]) -> None:
    """The imported CNN (the program compiled above, 450 rows) returning a shared one-hot or index."""
    x_tr, x_te = digits
    model = models.from_jax(workloads.cnn_jax, workloads.cnn_params(), x_tr, kind="multiclass", activations="exact")
    flat = x_te.reshape(len(x_te), -1)
    logits = model.forward(flat)
    want = logits.argmax(axis=1)
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3  # rows whose float argmax fixed point (2^-16) cannot swap
    assert clear.mean() > 0.98
    em = models.encode_model(model, masked())
    onehot = em.infer(flat, output="argmax")
    assert set(np.unique(onehot)) <= {0.0, 1.0} and np.all(onehot.sum(axis=1) == 1.0)  # exact 0/1: nothing rounded
    np.testing.assert_array_equal(onehot[clear], np.eye(10)[want[clear]])
    index = em.infer(flat, output="index")
    assert index.dtype == np.int64
    np.testing.assert_array_equal(index[clear], want[clear])
    np.testing.assert_array_equal(index, onehot.argmax(axis=1))
    np.testing.assert_array_equal(em.predict(flat, output="argmax")[clear], model.predict(flat)[clear])
    shared = em(em.scheme.encode(flat), output="argmax")
    assert shared.shape == (len(flat), 10)


def test_argmax_output_is_refused_where_it_cannot_run() -> None:
    model, x = _small_classifier()
    with pytest.raises(UnsupportedOperationError, match="secure argmax.*'plain'"):
        models.encode_model(model, Plain()).infer(x, output="argmax")
    with pytest.raises(ValueError, match="output"):
        models.encode_model(model, masked()).infer(x, output="probabilities")
    with pytest.raises(ValueError, match="output"):
        models.encode_model(model, masked()).predict(x, output="index")
    regression = models.Sequential((models.Dense(np.ones((6, 2)), np.zeros(2)),))
    with pytest.raises(ValueError, match="multiclass"):
        models.encode_model(regression, masked()).infer(x, output="argmax")


# --- schemes without a comparison refuse exact layers by name ---------------------------------------------
def test_ckks_and_paillier_refuse_exact_relu_naming_the_layer() -> None:
    model, _ = _small_classifier()
    for call in (lambda: CKKS.for_model(model), lambda: CKKS(2).check_model(model), lambda: model.mult_depth):
        with pytest.raises(UnsupportedOperationError, match="ckks' cannot run layer 1, an exact ReLU.*activations='polynomial'"):
            call()
    with pytest.raises(UnsupportedOperationError, match="layer 1, an exact ReLU.*activations='polynomial'"):
        models.encode_model(model, CKKS(2))
    with pytest.raises(UnsupportedOperationError, match="paillier' cannot run layer 1, a ReLU"):
        Paillier(key_bits=512).check_model(model)
