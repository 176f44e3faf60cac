"""Bring your own model: imported models under each scheme vs their reference runtime.

Workloads (all on data scikit-learn ships, 25% held out, nothing downloaded):

- ``onnx-cnn/digits``: a CNN on digits 8x8 in NCHW (Conv 3x3, 4 channels, padding 1 ->
  BatchNormalization -> AveragePool 2x2 -> Relu -> Flatten -> Gemm 10 -> Softmax), trained with
  JAX and written with ``onnx.helper``; reference: onnxruntime. Pooling before the activation
  (as good as after it for a monotone activation and max pooling) lets the convolution, the
  batch norm and the pooling fold into one dense layer, and leaves 4x fewer activations.
- ``onnx-cnn-maxpool/digits``: the same network with MaxPool in place of AveragePool (trained
  so); it runs under Plain and Masked (exact secure comparison), and CKKS refuses it.
- ``skl2onnx-mlp/digits``: an ``MLPClassifier`` (64-32-10, ReLU) converted by skl2onnx;
  reference: onnxruntime.
- ``jax-cnn/digits``: the CNN as a JAX function of its parameters (``models.from_jax``);
  reference: JAX.
- ``ridge/diabetes`` and ``mlp-regressor/diabetes``: scikit-learn regressors
  (``models.from_sklearn``); reference: scikit-learn.

Each runs under Plain, Masked (2 parties, model public) and batch-packed CKKS
(``CKKS.for_model``) on the held-out rows. ``activations``: ``polynomial`` (the default import:
each ReLU a calibrated polynomial, which every scheme runs) or ``exact`` (``activations="exact"``:
an exact ReLU layer, a secure comparison under Masked; CKKS refuses it), for every classifier. ``agreement`` is the share of labels equal to the
reference's and ``accuracy`` the share equal to the true labels (``accuracy_reference``: the
reference's own); ``r2`` is the coefficient of determination against the true targets, with
``r2_reference`` the reference's own; ``max_abs_err`` compares outputs with the reference's
(for a model ending in Softmax, the probabilities recomputed from the model's logits). ``s``
is the time of one run over all held-out rows (encode, evaluate, decode) after one warm-up
run, median ± IQR of the repeats.

Run: ``python -m benchmarks.imports [--quick]`` (``--quick``: fewer training steps and repeats).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.datasets import load_diabetes, load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import StandardScaler

from benchmarks._common import markdown_table, parser, summarize, timed, write
from edil import CKKS, Masked, Plain, Scheme, UnsupportedOperationError, models


@functools.cache
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits 8x8 scaled to [0, 1] as ``(n, 1, 8, 8)`` float32: train, test images and labels."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return x_tr, x_te, y_tr, y_te


@functools.cache
def cnn_params(steps: int = 300, pool: str = "average") -> dict[str, np.ndarray]:
    """Train the CNN (conv -> batch norm -> 2x2 pooling -> ReLU -> dense) on the digits train split.

    ``pool`` is ``"average"`` or ``"max"``.
    Full-batch Adam on the cross-entropy; the batch-norm statistics are those of the whole
    training set (what a full batch sees), returned as the inference-time mean and variance.
    """
    import jax
    import jax.numpy as jnp

    x_tr, _, y_tr, _ = digits_split()
    xs, onehot = jnp.asarray(x_tr), jax.nn.one_hot(jnp.asarray(y_tr), 10)
    k1, k2 = jax.random.split(jax.random.key(0))
    p = {"k": jax.random.normal(k1, (4, 1, 3, 3)) / 3.0, "kb": jnp.zeros(4), "g": jnp.ones(4), "beta": jnp.zeros(4),
         "w": jax.random.normal(k2, (64, 10)) / 8.0, "c": jnp.zeros(10)}

    def conv(p: Any, x: Any) -> Any:
        y = jax.lax.conv_general_dilated(x, p["k"], (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + p["kb"][None, :, None, None]

    def loss(p: Any) -> Any:
        z = conv(p, xs)
        mean, var = z.mean(axis=(0, 2, 3), keepdims=True), z.var(axis=(0, 2, 3), keepdims=True)
        z = (z - mean) / jnp.sqrt(var + 1e-5) * p["g"][None, :, None, None] + p["beta"][None, :, None, None]
        windows = z.reshape(len(xs), 4, 4, 2, 4, 2)
        pooled = windows.max(axis=(3, 5)) if pool == "max" else windows.mean(axis=(3, 5))
        h = jax.nn.relu(pooled).reshape(len(xs), -1)
        logits = h @ p["w"] + p["c"]
        return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=1)) + 1e-4 * jnp.sum(p["w"] ** 2)

    grad = jax.jit(jax.grad(loss))
    m = jax.tree.map(jnp.zeros_like, p)
    v = jax.tree.map(jnp.zeros_like, p)
    for t in range(1, steps + 1):
        g = grad(p)
        m = jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = jax.tree.map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        lr = 0.02 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        p = jax.tree.map(lambda a, mm, vv: a - lr * mm / (jnp.sqrt(vv) + 1e-8), p, m, v)
    z = conv(p, xs)
    out = {k: np.asarray(val, np.float32) for k, val in p.items()}
    out["mean"] = np.asarray(z.mean(axis=(0, 2, 3)), np.float32)
    out["var"] = np.asarray(z.var(axis=(0, 2, 3)), np.float32)
    return out


def cnn_onnx(params: dict[str, np.ndarray], *, pool: str = "AveragePool") -> Any:
    """The trained CNN as an ONNX model built with ``onnx.helper`` (opset 17)."""
    from onnx import TensorProto, checker, helper, numpy_helper

    def t(name: str, a: np.ndarray) -> Any:
        return numpy_helper.from_array(np.asarray(a, np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "k", "kb"], ["conv"], pads=[1, 1, 1, 1], strides=[1, 1], kernel_shape=[3, 3], name="conv"),
        helper.make_node("BatchNormalization", ["conv", "g", "beta", "mean", "var"], ["bn"], epsilon=1e-5, name="bn"),
        helper.make_node(pool, ["bn"], ["pool"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Relu", ["pool"], ["relu"], name="relu"),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["flat", "w", "c"], ["logits"], name="dense"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "cnn_digits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        [t(k, params[k]) for k in ("k", "kb", "g", "beta", "mean", "var", "w", "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    checker.check_model(model)
    return model


def cnn_jax(params: dict[str, np.ndarray], x: Any) -> Any:
    """The trained CNN as a JAX function (inference form of batch norm), NCHW input."""
    import jax
    import jax.numpy as jnp

    z = jax.lax.conv_general_dilated(x, params["k"], (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
    z = z + params["kb"][None, :, None, None]
    a = params["g"] / jnp.sqrt(params["var"] + 1e-5)
    z = z * a[None, :, None, None] + (params["beta"] - params["mean"] * a)[None, :, None, None]
    h = jax.nn.relu(z.reshape(x.shape[0], 4, 4, 2, 4, 2).sum(axis=(3, 5)) * 0.25)
    return h.reshape(x.shape[0], -1) @ params["w"] + params["c"]


@functools.cache
def skl2onnx_mlp() -> tuple[MLPClassifier, Any]:
    """An MLPClassifier (64-32-10, ReLU) on the digits train split and its skl2onnx conversion."""
    from skl2onnx import to_onnx

    x_tr, _, y_tr, _ = digits_split()
    xf = x_tr.reshape(len(x_tr), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(32,), alpha=1e-3, max_iter=400, random_state=0).fit(xf, y_tr)
    onx = to_onnx(clf, xf[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    return clf, onx


@functools.cache
def diabetes_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Diabetes (442 rows), features standardized on the train split, the target in hundreds
    (a network fitted to targets near 1 keeps its pre-activations, and so the polynomial
    intervals, small)."""
    x, y = load_diabetes(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y / 100.0, test_size=0.25, random_state=0)
    sc = StandardScaler().fit(x_tr)
    return sc.transform(x_tr), sc.transform(x_te), y_tr, y_te


@functools.cache
def regressors() -> tuple[Ridge, MLPRegressor]:
    x_tr, _, y_tr, _ = diabetes_split()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPRegressor(hidden_layer_sizes=(16,), activation="tanh", alpha=10.0, learning_rate_init=0.01,
                           max_iter=2000, random_state=0).fit(x_tr, y_tr)
    return Ridge(alpha=1.0).fit(x_tr, y_tr), mlp


@dataclass
class Imported:
    """An imported model and its reference on held-out rows.

    ``reference`` is what the reference runtime outputs (probabilities, logits or predictions);
    ``compare`` maps the EDIL model's outputs to the same quantity.
    """

    name: str
    source: str
    model: models.Sequential
    x: np.ndarray
    reference: np.ndarray
    ref_labels: np.ndarray
    y: np.ndarray
    compare: Callable[[np.ndarray], np.ndarray]
    schemes: tuple[str, ...] = ("plain", "masked", "ckks")
    activations: str = "polynomial"


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def onnx_reference(onx: Any, x: np.ndarray, output: str) -> np.ndarray:
    """What onnxruntime computes for ``output`` of ``onx`` on ``x``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[names.index(output)], dtype=np.float64)


def workloads(quick: bool = False, *, cnn_degree: int = 8, mlp_degree: int = 6,
              exact: bool = True) -> list[Imported]:
    """Every imported model with its reference outputs on the held-out rows.

    ReLU after batch norm spans a wide calibrated interval (about +-11 here): the CNNs use
    degree-8 polynomials (degree 4 agrees on 96% of labels, 6 on 98.7%, 8 on 99.3%); the MLPs
    degree 6. With ``exact``, every classifier also comes imported with ``activations="exact"``
    (run under Plain and Masked).
    """
    import jax.numpy as jnp

    x_tr, x_te, _, y_te = digits_split()
    flat_tr, flat_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    steps = 150 if quick else 300
    params = cnn_params(steps)
    out: list[Imported] = []
    acts = ("polynomial", "exact") if exact else ("polynomial",)
    for pool, name, schemes in (("AveragePool", "onnx-cnn/digits", ("plain", "masked", "ckks")),
                                ("MaxPool", "onnx-cnn-maxpool/digits", ("plain", "masked"))):
        onx = cnn_onnx(params if pool == "AveragePool" else cnn_params(steps, "max"), pool=pool)
        ref = onnx_reference(onx, x_te, "probabilities")
        for act in acts:
            model = models.from_onnx(onx, calibration=x_tr, degree=cnn_degree, activations=act)
            out.append(Imported(name, "onnx", model, flat_te, ref, ref.argmax(axis=1), y_te, softmax,
                                schemes if act == "polynomial" else ("plain", "masked"), act))
    clf, onx = skl2onnx_mlp()
    ref = onnx_reference(onx, flat_te, "probabilities")
    for act in acts:
        model = models.from_onnx(onx, output="probabilities", calibration=flat_tr, degree=mlp_degree,
                                 classes=clf.classes_.tolist(), activations=act)
        out.append(Imported("skl2onnx-mlp/digits", "skl2onnx", model, flat_te, ref, clf.classes_[ref.argmax(axis=1)], y_te,
                            softmax, ("plain", "masked", "ckks") if act == "polynomial" else ("plain", "masked"), act))
    ref = np.asarray(cnn_jax(params, jnp.asarray(x_te)), dtype=np.float64)
    for act in acts:
        model = models.from_jax(cnn_jax, params, x_tr, degree=cnn_degree, kind="multiclass", activations=act)
        out.append(Imported("jax-cnn/digits", "jax", model, flat_te, ref, ref.argmax(axis=1), y_te, lambda z: z,
                            ("plain", "masked", "ckks") if act == "polynomial" else ("plain", "masked"), act))
    d_tr, d_te, _, dy_te = diabetes_split()
    for est, name in zip(regressors(), ("ridge/diabetes", "mlp-regressor/diabetes")):
        model = models.from_sklearn(est, degree=mlp_degree, calibration=d_tr)
        ref = np.asarray(est.predict(d_te), dtype=np.float64)
        out.append(Imported(name, "sklearn", model, d_te, ref, ref, dy_te, lambda z: z[:, 0]))
    return out


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1.0 - np.sum((y - pred) ** 2) / np.sum((y - np.mean(y)) ** 2))


def make_scheme(name: str, model: models.Sequential) -> Scheme:
    if name == "plain":
        return Plain()
    if name == "masked":
        import jax

        return Masked(2, key=jax.random.key(0))
    return CKKS.for_model(model)


def evaluate(wl: Imported, scheme_name: str, repeats: int) -> dict[str, Any]:
    """One row: the imported model under ``scheme_name`` vs the reference on the held-out rows."""
    scheme = make_scheme(scheme_name, wl.model)
    em = models.encode_model(wl.model, scheme)
    outputs = em.infer(wl.x)  # warm-up: compiles the Masked program, builds CKKS keys' caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outputs = em.infer(wl.x)
        times.append(time.perf_counter() - t0)
    got = wl.compare(outputs)
    labels = wl.model.labels(outputs)
    row: dict[str, Any] = {"model": wl.name, "source": wl.source, "activations": wl.activations, "scheme": scheme_name,
                           "samples": len(wl.x)}
    if wl.model.kind == "regression":
        row.update(agreement="", r2=r2(wl.y, labels), r2_reference=r2(wl.y, wl.reference))
    else:
        row.update(agreement=float(np.mean(labels == wl.ref_labels)), accuracy=float(np.mean(labels == wl.y)),
                   accuracy_reference=float(np.mean(wl.ref_labels == wl.y)), r2="", r2_reference="")
    row["max_abs_err"] = float(np.max(np.abs(got - wl.reference)))
    if scheme_name == "ckks":
        row["ckks_depth"] = scheme.depth  # type: ignore[attr-defined]
    return {**row, **timed("s", summarize(times)), "repeats": repeats}


def refused(wl: Imported, scheme_name: str) -> str | None:
    """The error a scheme outside ``wl.schemes`` raises when the model is encoded for it (for CKKS,
    also when its parameters are sized for it)."""
    try:
        if scheme_name == "ckks":
            CKKS.for_model(wl.model)
        models.encode_model(wl.model, Masked(2) if scheme_name == "masked" else CKKS(2))
    except UnsupportedOperationError as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser(__doc__ or "").parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    rows = []
    for wl in workloads(args.quick):
        for scheme_name in wl.schemes:
            if args.quick and scheme_name == "ckks" and wl.name != "ridge/diabetes":
                continue  # keeps the quick run (the test suite's) small: the full run measures CKKS on every model
            rows.append(evaluate(wl, scheme_name, repeats))
        for scheme_name in ("masked", "ckks"):
            if scheme_name not in wl.schemes:
                why = "refused: needs a comparison" if refused(wl, scheme_name) else "NOT REFUSED"
                rows.append({"model": wl.name, "source": wl.source, "activations": wl.activations, "scheme": scheme_name,
                             "samples": len(wl.x), "agreement": why})
    cols = ["model", "source", "activations", "scheme", "samples", "agreement", "accuracy", "accuracy_reference", "r2", "r2_reference",
            "max_abs_err", "s", "ckks_depth", "repeats"]
    table = markdown_table(rows, cols) + (
        "\nagreement: share of labels equal to the reference runtime's (onnxruntime, JAX, scikit-learn); r2 against "
        "the true targets; max_abs_err against the reference's outputs (probabilities for Softmax models, logits or "
        "predictions otherwise); s: encode + evaluate + decode over the held-out rows, median ± IQR.\n"
    )
    write("imports", {"rows": rows}, table)
    print(table)
    return {"rows": rows}


if __name__ == "__main__":
    main()
