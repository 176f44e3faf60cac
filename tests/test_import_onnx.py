"""ONNX import: a known-answer test per whitelisted operator against onnxruntime, the refusals,
and imported models (a CNN written with onnx.helper, an MLP converted by skl2onnx) under Plain,
Masked and CKKS against onnxruntime on held-out digits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks import imports as workloads
from edil import (
    CKKS,
    EncodingError,
    Masked,
    Paillier,
    Plain,
    SerializationError,
    ShapeError,
    UnsupportedOperationError,
    models,
)
from edil import runtime as rt
from edil._onnx import WHITELIST

RNG = np.random.default_rng(16)


def const(name: str, a: Any, dtype: Any = np.float32) -> Any:
    return numpy_helper.from_array(np.asarray(a, dtype=dtype), name)


def build(nodes: list[Any], in_shape: tuple[int, ...], inits: Sequence[Any] = (), *, outputs: tuple[str, ...] = ("y",),
          out_rank: int = 2, opset: int = 17) -> Any:
    """A one-input graph; output sizes (of rank ``out_rank``) are left to onnxruntime."""
    dims = ["N", *(f"d{i}" for i in range(1, out_rank))]
    graph = helper.make_graph(
        nodes, "kat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, dims) for o in outputs], list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def reference(model: Any, x: np.ndarray, output: str = "y") -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[names.index(output)], dtype=np.float64)


def w(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


# --- one case per operator: (graph, input shape, tolerance kind) -------------------------------------
def case_gemm() -> Any:
    return build([helper.make_node("Gemm", ["x", "B", "C"], ["y"], transB=1, alpha=0.5, beta=2.0)], (6,),
                 [const("B", w(4, 6)), const("C", w(4))])


def case_matmul() -> Any:
    # per-sample (3, 5) @ (5, 4), then a constant (2, 3) on the left of the computed (3, 4)
    return build([helper.make_node("MatMul", ["x", "B"], ["h"]), helper.make_node("MatMul", ["A", "h"], ["y"])], (3, 5),
                 [const("B", w(5, 4)), const("A", w(2, 3))], out_rank=3)


def case_add() -> Any:
    # a computed value plus a constant, and the sum of two values computed from the same input
    return build([helper.make_node("Gemm", ["x", "B1"], ["a"]), helper.make_node("Gemm", ["x", "B2"], ["b"]),
                  helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Add", ["s", "C"], ["y"])], (5,),
                 [const("B1", w(5, 3)), const("B2", w(5, 3)), const("C", w(1, 3))])


def case_sub() -> Any:
    return build([helper.make_node("Sub", ["C", "x"], ["a"]), helper.make_node("Gemm", ["x", "B"], ["b"]),
                  helper.make_node("Sub", ["a", "b"], ["c"]), helper.make_node("Sub", ["c", "D"], ["y"])], (4,),
                 [const("C", w(4)), const("B", w(4, 4)), const("D", w(4))])


def case_mul_div() -> Any:
    return build([helper.make_node("Mul", ["x", "M"], ["a"]), helper.make_node("Div", ["a", "D"], ["y"])], (2, 3),
                 [const("M", w(1, 3)), const("D", RNG.uniform(0.5, 2.0, size=(2, 1)))], out_rank=3)


def case_activations(op: str) -> Callable[[], Any]:
    return lambda: build([helper.make_node("Gemm", ["x", "B", "C"], ["h"]), helper.make_node(op, ["h"], ["y"])], (4,),
                         [const("B", w(4, 3) * 0.5), const("C", w(3) * 0.1)])


def case_softmax() -> Any:
    return build([helper.make_node("Gemm", ["x", "B", "C"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=-1)], (5,),
                 [const("B", w(5, 4)), const("C", w(4))])


def case_conv() -> Any:
    return build([helper.make_node("Conv", ["x", "K", "b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
                  helper.make_node("Conv", ["c", "K2"], ["y"], kernel_shape=[2, 2])], (2, 7, 7),
                 [const("K", w(3, 2, 3, 3)), const("b", w(3)), const("K2", w(2, 3, 2, 2))], out_rank=4)


def case_average_pool() -> Any:
    return build([helper.make_node("AveragePool", ["x"], ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                  helper.make_node("AveragePool", ["x"], ["b"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                   count_include_pad=1),
                  helper.make_node("Sub", ["a", "b"], ["d"]), helper.make_node("Add", ["d", "a"], ["y"])], (2, 6, 6), out_rank=4)


def case_global_average_pool() -> Any:
    return build([helper.make_node("GlobalAveragePool", ["x"], ["y"])], (3, 4, 5), out_rank=4)


def case_max_pool() -> Any:
    return build([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                   name="pool1")], (2, 6, 6), out_rank=4)


def case_batch_norm() -> Any:
    stats = [const("s", RNG.uniform(0.5, 2, 3)), const("bb", w(3)), const("m", w(3)), const("v", RNG.uniform(0.5, 2, 3))]
    return build([helper.make_node("Conv", ["x", "K", "b"], ["c"], pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["y"], epsilon=1e-3)], (2, 5, 5),
                 [const("K", w(3, 2, 3, 3)), const("b", w(3)), *stats], out_rank=4)


def case_flatten_reshape() -> Any:
    return build([helper.make_node("Flatten", ["x"], ["f"]),
                  helper.make_node("Reshape", ["f", "shape"], ["r"]),
                  helper.make_node("MatMul", ["r", "B"], ["m"]),
                  helper.make_node("Reshape", ["m", "shape2"], ["y"])], (2, 3, 4),
                 [const("shape", [0, 4, -1], np.int64), const("B", w(6, 2)), const("shape2", [-1, 8], np.int64)])


def case_no_ops() -> Any:
    value = helper.make_tensor("v", TensorProto.FLOAT, [3], w(3).tolist())
    return build([helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT),
                  helper.make_node("Identity", ["c"], ["i"]),
                  helper.make_node("Dropout", ["i"], ["d"]),
                  helper.make_node("Constant", [], ["k"], value=value),
                  helper.make_node("Add", ["d", "k"], ["y"])], (3,))


CASES: dict[str, tuple[Callable[[], Any], tuple[int, ...]]] = {
    "gemm": (case_gemm, (6,)), "matmul": (case_matmul, (3, 5)), "add": (case_add, (5,)), "sub": (case_sub, (4,)),
    "mul_div": (case_mul_div, (2, 3)), "relu": (case_activations("Relu"), (4,)),
    "sigmoid": (case_activations("Sigmoid"), (4,)), "tanh": (case_activations("Tanh"), (4,)),
    "softmax": (case_softmax, (5,)), "conv": (case_conv, (2, 7, 7)), "average_pool": (case_average_pool, (2, 6, 6)),
    "global_average_pool": (case_global_average_pool, (3, 4, 5)), "max_pool": (case_max_pool, (2, 6, 6)),
    "batch_norm": (case_batch_norm, (2, 5, 5)), "flatten_reshape": (case_flatten_reshape, (2, 3, 4)),
    "no_ops": (case_no_ops, (3,)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_known_answer_against_onnxruntime(name: str) -> None:
    build_case, shape = CASES[name]
    graph = build_case()
    x = RNG.normal(size=(20, *shape)).astype(np.float32)
    model = models.from_onnx(graph, calibration=x, degree=10)
    ref = reference(graph, x)
    got = models.encode_model(model, Plain()).infer(x.reshape(len(x), -1))
    if name == "softmax":
        assert model.kind == "multiclass"
        got = workloads.softmax(got)
    polys = model.approximations
    # Linear operators are exact up to onnxruntime's float32; an activation is within its fit's error.
    tol = 1e-4 + sum(p.max_error for p in polys)
    assert all(p.max_error < 0.2 for p in polys), [p.max_error for p in polys]  # a tolerance that still tells
    assert got.shape == (len(x), ref[0].size)
    np.testing.assert_allclose(got, ref.reshape(len(x), -1), atol=tol, rtol=1e-4)
    assert len(polys) == (1 if name in ("relu", "sigmoid", "tanh") else 0)


def test_every_whitelisted_operator_has_a_known_answer_test() -> None:
    covered = {node.op_type for make, _ in CASES.values() for node in make().graph.node}
    assert covered >= set(WHITELIST), set(WHITELIST) - covered


def test_batch_norm_folds_into_the_convolution() -> None:
    model = models.from_onnx(case_batch_norm())
    assert [type(la).__name__ for la in model.layers] == ["Dense"]


def test_max_pool_runs_under_plain_and_masked_and_is_refused_by_schemes_without_comparison() -> None:
    graph = case_max_pool()
    x = RNG.normal(size=(6, 2, 6, 6)).astype(np.float32)
    model = models.from_onnx(graph)
    assert any(isinstance(la, models.MaxPool) for la in model.layers)
    np.testing.assert_allclose(models.encode_model(model, Plain()).infer(x.reshape(6, -1)), reference(graph, x).reshape(6, -1),
                               atol=1e-6)
    masked = Masked(2, key=jax.random.key(0))  # exact comparison: max pooling runs under Masked too
    np.testing.assert_allclose(models.encode_model(model, masked).infer(x.reshape(6, -1)), reference(graph, x).reshape(6, -1),
                               atol=1e-3)
    for scheme in (CKKS(2), Paillier(key_bits=512)):
        with pytest.raises(UnsupportedOperationError, match="MaxPool.*pool1"):
            models.encode_model(model, scheme)
    with pytest.raises(UnsupportedOperationError, match="MaxPool"):
        CKKS.for_model(model)
    with pytest.raises(UnsupportedOperationError, match="MaxPool"):
        Paillier(key_bits=512).check_model(model)
    layers, _ = masked.program(model, private_weights=False)  # what runtime nodes run: an exact max-pooling layer
    assert [la[0] for la in layers].count("maxpool") == 1
    with pytest.raises(UnsupportedOperationError, match="MaxPool"):  # never travels as another layer
        rt.model_to_bytes(model)


def test_unsupported_operator_names_operator_node_and_whitelist() -> None:
    graph = build([helper.make_node("Gemm", ["x", "B"], ["h"]), helper.make_node("Exp", ["h"], ["y"], name="my_exp")], (3,),
                  [const("B", w(3, 2))])
    with pytest.raises(UnsupportedOperationError) as err:
        models.from_onnx(graph)
    msg = str(err.value)
    assert "Exp" in msg and "my_exp" in msg and "Gemm" in msg and "GlobalAveragePool" in msg


@pytest.mark.parametrize("nodes, inits, why", [
    ([helper.make_node("Conv", ["x", "K"], ["y"], group=2)], [const("K", w(2, 1, 3, 3))], "group"),
    ([helper.make_node("Conv", ["x", "K"], ["y"], strides=[1, 2])], [const("K", w(2, 2, 3, 3))], "strides"),
    ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], ceil_mode=1)], [], "ceil_mode"),
    ([helper.make_node("Mul", ["x", "x"], ["y"])], [], "Mul of two values"),
    ([helper.make_node("Div", ["D", "x"], ["y"])], [const("D", w(2, 6, 6))], "division by a value"),
    ([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "x"], ["y"])], [], "sequential"),
    ([helper.make_node("Softmax", ["x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])], [], "Softmax"),
    ([helper.make_node("Add", ["x", "C"], ["y"])], [const("C", w(3, 2, 6, 6))], "batch axis"),
])
def test_unsupported_attributes_and_graphs_are_refused(nodes: list[Any], inits: list[Any], why: str) -> None:
    graph = build(nodes, (2, 6, 6), inits, out_rank=4)
    with pytest.raises(UnsupportedOperationError, match=why):
        models.from_onnx(graph)


def test_loading_from_path_bytes_and_refusing_garbage(tmp_path: Any) -> None:
    graph = case_gemm()
    path = tmp_path / "gemm.onnx"
    onnx.save(graph, str(path))
    x = RNG.normal(size=(4, 6)).astype(np.float32)
    for source in (path, str(path), graph.SerializeToString()):
        np.testing.assert_allclose(models.from_onnx(source).forward(x), reference(graph, x), atol=1e-5)
    with pytest.raises(SerializationError):
        models.from_onnx(b"\x08\x07garbage-bytes" * 3)


def test_several_outputs_need_a_choice() -> None:
    graph = build([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["x"], ["y"])], (3,), outputs=("a", "y"))
    with pytest.raises(EncodingError, match="output="):
        models.from_onnx(graph)
    x = RNG.normal(size=(3, 3)).astype(np.float32)
    np.testing.assert_allclose(models.from_onnx(graph, output="y").forward(x), x, atol=0)


# --- imported models under every scheme ---------------------------------------------------------------
def _schemes_agree(model: models.Sequential, x: np.ndarray, ref_labels: np.ndarray, ref_probs: np.ndarray) -> dict[str, float]:
    found = {}
    for name in ("plain", "masked", "ckks"):
        scheme = workloads.make_scheme(name, model)
        if name == "ckks":
            assert scheme.depth == model.mult_depth  # the depth accounting holds for imported models
        logits = models.encode_model(model, scheme).infer(x)
        found[name] = float(np.mean(model.labels(logits) == ref_labels))
        # probabilities stay within the activation fit's reach of onnxruntime's
        assert np.max(np.abs(workloads.softmax(logits) - ref_probs)) < 0.5
    return found


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x_tr, x_te, _, _ = workloads.digits_split()
    return x_tr, x_te


def test_onnx_cnn_agrees_with_onnxruntime_under_every_scheme(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x_tr, x_te = digits
    graph = workloads.cnn_onnx(workloads.cnn_params())
    ops = [n.op_type for n in graph.graph.node]
    assert {"Conv", "BatchNormalization", "AveragePool", "Relu", "Gemm", "Softmax"} <= set(ops)
    ref = reference(graph, x_te, "probabilities")
    model = models.from_onnx(graph, calibration=x_tr, degree=8)
    assert [type(la).__name__ for la in model.layers] == ["Dense", "Polynomial", "Dense"]  # conv+bn+pool folded
    found = _schemes_agree(model, x_te.reshape(len(x_te), -1), ref.argmax(axis=1), ref)
    assert min(found.values()) >= 0.99, found


def test_skl2onnx_mlp_agrees_with_onnxruntime_under_every_scheme(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x_tr, x_te = digits
    clf, graph = workloads.skl2onnx_mlp()
    flat_tr, flat_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    ref = reference(graph, flat_te, "probabilities")
    labels = reference(graph, flat_te, "label")  # onnxruntime's own labels (ArgMax, ArrayFeatureExtractor...)
    model = models.from_onnx(graph, output="probabilities", calibration=flat_tr, degree=6, classes=clf.classes_.tolist())
    found = _schemes_agree(model, flat_te, labels, ref)
    assert min(found.values()) >= 0.99, found


def test_corrupted_models_raise_only_edil_errors() -> None:
    """Flipped bytes of a valid model: every outcome is a model or an EdilError, never a bare error."""
    from edil import EdilError

    good = bytearray(case_conv().SerializeToString())
    rng = np.random.default_rng(7)
    outcomes = {"model": 0, "refused": 0}
    for _ in range(150):
        bad = bytearray(good)
        for pos in rng.integers(0, len(bad), size=int(rng.integers(1, 4))):
            bad[pos] = int(rng.integers(0, 256))
        try:
            models.from_onnx(bytes(bad))
            outcomes["model"] += 1
        except EdilError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0


def test_huge_lowered_layers_are_refused() -> None:
    graph = build([helper.make_node("Identity", ["x"], ["y"])], (4096, 4096), out_rank=3)
    with pytest.raises(ShapeError, match="limit"):
        models.from_onnx(graph)


def test_max_pool_layer_checks_its_index_and_chains_through_sequential() -> None:
    idx = np.array([[0, 1], [2, 3], [4, 5], [6, 7]])
    with pytest.raises(ShapeError):
        models.MaxPool(idx, 7)  # index 7 is outside 7 inputs
    with pytest.raises(ShapeError):
        models.MaxPool(np.zeros((0, 2), dtype=np.int64), 4)
    dense_in, dense_out = models.Dense(w(3, 8), w(8)), models.Dense(w(4, 2), w(2))
    model = models.Sequential((dense_in, models.MaxPool(idx, 8), dense_out))
    x = RNG.normal(size=(5, 3))
    h = x @ dense_in.weight + dense_in.bias
    np.testing.assert_allclose(model.forward(x), h.reshape(5, 4, 2).max(axis=2) @ dense_out.weight + dense_out.bias)
    assert model.work_units(5) == 5 * (3 * 8 + 8 + 4 * 2)  # one comparison per window tap
    with pytest.raises(ShapeError, match="do not chain"):
        models.Sequential((dense_in, models.MaxPool(idx, 8), models.Dense(w(5, 2), w(2))))
