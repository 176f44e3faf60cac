"""ONNX import: an explicit operator whitelist lowered onto the model IR.

:func:`from_onnx` reads the nodes that the chosen graph output depends on, in graph order, and
lowers them with :class:`edil._lowering.Lowering`: linear operators compose into dense layers,
activations become calibrated polynomials (or, with ``activations="exact"``, ReLU becomes an
exact :class:`~edil.models.ReLU` layer), ``MaxPool`` becomes a :class:`~edil.models.MaxPool`
layer (both of which only schemes with a comparison run). Every operator outside :data:`WHITELIST`,
and every attribute value the lowering does not implement, raises
:class:`~edil.UnsupportedOperationError` naming the operator, the node and the whitelist;
nothing is skipped silently.

Layout: the imported model takes the ONNX input flattened per sample in C order
(``x.reshape(len(x), -1)``, e.g. ``(channel, row, column)`` for an NCHW image) and returns the
chosen output flattened the same way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from edil._errors import EdilError, EncodingError, SerializationError, ShapeError, UnsupportedOperationError
from edil._lowering import Affine, Lowering, _check_entries, average_pool_matrix, max_pool_index, windows
from edil.models import Sequential, conv2d_as_dense

__all__ = ["WHITELIST", "from_onnx"]

#: The ONNX operators (default domain) that :func:`from_onnx` reads.
WHITELIST: tuple[str, ...] = (
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "Softmax", "Conv",
    "AveragePool", "GlobalAveragePool", "MaxPool", "BatchNormalization", "Flatten", "Reshape",
    "Identity", "Dropout", "Constant", "Cast",
)
#: Operators that pass their (first) input through unchanged: allowed after the final Softmax.
_NO_OPS = ("Identity", "Dropout", "Cast")

_FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
_ACTIVATION = {"Relu": "relu", "Sigmoid": "logistic", "Tanh": "tanh"}

Value = np.ndarray | Affine


class _Node:
    """One ONNX node with a readable name for messages and its attributes as Python values."""

    def __init__(self, proto: Any, position: int) -> None:
        from onnx import helper

        self.proto = proto
        self.op = str(proto.op_type)
        label = proto.name or f"#{position}"
        self.name = f"{label!r} ({self.op} -> {', '.join(proto.output)})"
        self.attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}

    def unsupported(self, why: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(
            f"ONNX node {self.name}: {why}; EDIL imports only these operators (with the attributes its "
            f"lowering implements): {', '.join(WHITELIST)}"
        )

    def ints(self, key: str, default: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(v) for v in self.attrs.get(key, default))


def _load(path_or_model: Any) -> Any:
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    try:
        if isinstance(path_or_model, bytes | bytearray | memoryview):
            return onnx.load_from_string(bytes(path_or_model))
        if isinstance(path_or_model, str | os.PathLike):
            return onnx.load(os.fspath(path_or_model))
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - the protobuf parser raises several types on bad bytes
        raise SerializationError(f"not an ONNX model: {exc}") from None
    raise UnsupportedOperationError(f"from_onnx needs a path, bytes or an onnx.ModelProto, got {type(path_or_model).__name__}")


def _per_sample(c: np.ndarray, rank: int, node: _Node) -> np.ndarray:
    """A constant operand of an operation on batched values of full rank ``rank``, without
    the batch axis: a leading axis of length 1 aligned with the batch is dropped."""
    if c.ndim < rank:
        return c
    if c.ndim == rank and c.shape[0] == 1:
        return c[0]
    raise node.unsupported(f"a constant operand of shape {c.shape} varies along the batch axis")


def _require(node: _Node, cond: bool, why: str) -> None:
    if not cond:
        raise node.unsupported(why)


def _pool_geometry(node: _Node, v: Affine) -> tuple[int, int, int, tuple[int, int], np.ndarray]:
    """``(channels, h, w, (oh, ow), index)`` of an AveragePool/MaxPool node on a ``(C, H, W)`` value."""
    _require(node, len(v.shape) == 3, f"pooling needs a (channels, height, width) input, got per-sample shape {v.shape}")
    c, h, w = v.shape
    kernel = node.ints("kernel_shape", ())
    _require(node, len(kernel) == 2, f"kernel_shape must have 2 entries, got {kernel}")
    strides = node.ints("strides", (1, 1))
    _require(node, node.ints("dilations", (1, 1)) == (1, 1), "dilations other than 1")
    _require(node, int(node.attrs.get("ceil_mode", 0)) == 0, "ceil_mode=1")
    pads = _pads(node, (h, w), kernel, strides)
    (oh, ow), index = windows((h, w), (kernel[0], kernel[1]), (strides[0], strides[1]), pads)
    return c, h, w, (oh, ow), index


def _pads(node: _Node, hw: tuple[int, int], kernel: Sequence[int], strides: Sequence[int]) -> tuple[int, int, int, int]:
    """Explicit ``(top, left, bottom, right)`` pads from ``pads`` or ``auto_pad``."""
    auto = node.attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("NOTSET", ""):
        p = node.ints("pads", (0, 0, 0, 0))
        _require(node, len(p) == 4, f"pads must have 4 entries for a 2-D window, got {p}")
        return p[0], p[1], p[2], p[3]
    if auto == "VALID":
        return 0, 0, 0, 0
    _require(node, auto in ("SAME_UPPER", "SAME_LOWER"), f"auto_pad={auto}")
    out: list[int] = []
    for size, k, s in zip(hw, kernel, strides):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        small, big = total // 2, total - total // 2
        out.append(small if auto == "SAME_UPPER" else big)
        out.append(big if auto == "SAME_UPPER" else small)
    return out[0], out[2], out[1], out[3]


class _Importer:
    def __init__(self, graph: Any, opset: int, lowering: Lowering, output: str, needed: set[str]) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.opset = opset
        self.low = lowering
        self.output = output
        self.needed = needed  # value names the chosen output depends on
        self.values: dict[str, Value] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.softmax = False
        self.post_softmax: set[str] = set()  # values downstream of the Softmax: only no-ops may read them

    def const(self, name: str) -> np.ndarray | None:
        v = self.values.get(name)
        return v if isinstance(v, np.ndarray) else None

    def get(self, name: str, node: _Node) -> Value:
        if name not in self.values:
            raise SerializationError(f"ONNX node {node.name} reads {name!r}, which no earlier node produces")
        return self.values[name]

    def run(self, nodes: list[_Node]) -> Value:
        for node in nodes:
            if node.proto.domain not in ("", "ai.onnx") or node.op not in WHITELIST:
                domain = f" of domain {node.proto.domain!r}" if node.proto.domain not in ("", "ai.onnx") else ""
                raise node.unsupported(f"operator {node.op}{domain} is not supported")
            inputs = [self.get(n, node) if n else None for n in node.proto.input]
            if any(n in self.post_softmax for n in node.proto.input):
                _require(node, node.op in _NO_OPS,
                         "it reads the Softmax output: Softmax is supported only as the last operation (it is monotone: "
                         "the model returns its logits)")
                self.post_softmax.update(o for o in node.proto.output if o)
            outs = self.lower(node, inputs)
            for name, value in zip(node.proto.output, outs):
                if name:
                    self.values[name] = value
        return self.values[self.output]

    def lower(self, node: _Node, ins: list[Value | None]) -> list[Value]:
        op, low = node.op, self.low
        x = ins[0] if ins else None
        if op == "Constant":
            return [self.constant(node)]
        if op == "Cast":
            to = int(node.attrs.get("to", 0))
            _require(node, to in _FLOAT_TYPES, f"Cast to ONNX type {to} (only to floating-point types: a no-op in EDIL's arithmetic)")
            if isinstance(x, np.ndarray):
                return [x.astype(np.float64)]
            return [x]  # type: ignore[list-item]
        if op in ("Identity", "Dropout"):
            _require(node, x is not None, "no input")
            _require(node, not self.used(node, 1), "the dropout mask output is used")
            return [x]  # type: ignore[list-item]
        consts = [v for v in ins if isinstance(v, np.ndarray)]
        if len(consts) == sum(v is not None for v in ins):
            return [self.fold(node, consts)]
        assert x is not None
        if op in _ACTIVATION:
            return [low.activation(self.affine(x, node), _ACTIVATION[op], node.name)]
        if op == "Softmax":
            return [self.softmax_last(node, self.affine(x, node))]
        if op in ("Add", "Sub", "Mul", "Div"):
            return [self.elementwise(node, ins[0], ins[1])]
        if op == "Gemm":
            return [self.gemm(node, ins)]
        if op == "MatMul":
            return [self.matmul(node, ins[0], ins[1])]
        v = self.affine(x, node)
        for extra in ins[1:]:
            _require(node, extra is None or isinstance(extra, np.ndarray), "a weight operand computed from the input")
        if op == "Conv":
            return [self.conv(node, v, ins)]
        if op == "AveragePool":
            c, h, w, (oh, ow), index = _pool_geometry(node, v)
            pm = average_pool_matrix(index, h * w, count_pad=bool(node.attrs.get("count_include_pad", 0)))
            return [low.linear(v, lambda r: (r.reshape(r.shape[0], c, h * w) @ pm).reshape(r.shape[0], c, oh, ow))]
        if op == "GlobalAveragePool":
            _require(node, len(v.shape) >= 2, f"needs (channels, spatial...) input, got per-sample shape {v.shape}")
            axes = tuple(range(2, len(v.shape) + 1))
            return [low.linear(v, lambda r: r.mean(axis=axes, keepdims=True))]
        if op == "MaxPool":
            _require(node, not self.used(node, 1), "the Indices output is used")
            _require(node, int(node.attrs.get("storage_order", 0)) == 0, "storage_order=1")
            c, h, w, (oh, ow), index = _pool_geometry(node, v)
            return [low.max_pool(v, max_pool_index(index, c, h * w), (c, oh, ow), node.name)]
        if op == "BatchNormalization":
            return [self.batch_norm(node, v, ins)]
        if op == "Flatten":
            rank = len(v.shape) + 1
            axis = int(node.attrs.get("axis", 1))
            axis = axis + rank if axis < 0 else axis
            _require(node, 1 <= axis <= rank and math.prod(v.shape[: axis - 1]) == 1,
                     f"Flatten axis {node.attrs.get('axis', 1)} merges the batch axis with others")
            return [low.reshape(v, (v.size,))]
        if op == "Reshape":
            return [low.reshape(v, self.reshape_target(node, v, ins))]
        raise node.unsupported(f"operator {op} on a computed value")  # pragma: no cover - every whitelisted op is above

    # --- operators -------------------------------------------------------------------------------
    def used(self, node: _Node, k: int) -> bool:
        """Whether output ``k`` of ``node`` is read by the imported part of the graph."""
        outs = node.proto.output
        return len(outs) > k and bool(outs[k]) and outs[k] in self.needed

    def affine(self, v: Value, node: _Node) -> Affine:
        if not isinstance(v, Affine):
            raise node.unsupported("an operand that should be computed from the input is a constant")
        self.low.check(v, node.name)
        return v

    def constant(self, node: _Node) -> np.ndarray:
        from onnx import numpy_helper

        a = node.attrs
        if "value" in a:
            return numpy_helper.to_array(a["value"])
        for key in ("value_float", "value_int"):
            if key in a:
                return np.asarray(a[key])
        for key in ("value_floats", "value_ints"):
            if key in a:
                return np.asarray(list(a[key]))
        raise node.unsupported(f"Constant with attribute {sorted(a)}")

    def fold(self, node: _Node, ins: list[np.ndarray]) -> np.ndarray:
        """An operator on constants only (parameters, shapes): computed now, in numpy."""
        op = node.op
        if op in ("Add", "Sub", "Mul", "Div"):
            a, b = (np.asarray(v) for v in ins)
            return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](a, b)
        if op == "MatMul":
            return np.asarray(ins[0]) @ np.asarray(ins[1])
        if op == "Reshape":
            shape = [int(d) for d in ins[1]]
            shape = [ins[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
            return np.asarray(ins[0]).reshape(shape)
        raise node.unsupported(f"operator {op} on constants only")

    def softmax_last(self, node: _Node, v: Affine) -> Affine:
        self.post_softmax.add(node.proto.output[0])
        _require(node, len(v.shape) == 1, f"Softmax over a per-sample shape {v.shape} (only (batch, classes) is supported)")
        axis = int(node.attrs.get("axis", 1 if self.opset < 13 else -1))
        _require(node, axis in (1, -1), f"Softmax axis {axis} (only the class axis of (batch, classes))")
        self.softmax = True
        return v

    def elementwise(self, node: _Node, a: Value | None, b: Value | None) -> Affine:
        op, low = node.op, self.low
        assert a is not None and b is not None
        if isinstance(a, Affine) and isinstance(b, Affine):
            _require(node, op in ("Add", "Sub"), f"{op} of two values computed from the input (only by constants)")
            return low.add(a, b if op == "Add" else low.scale(b, -1.0), node.name)
        v, c = (a, b) if isinstance(a, Affine) else (b, a)
        assert isinstance(v, Affine) and isinstance(c, np.ndarray)
        low.check(v, node.name)
        c = _per_sample(np.asarray(c, dtype=np.float64), len(v.shape) + 1, node)
        if op == "Add":
            return low.offset(v, c)
        if op == "Sub":
            return low.offset(v, -c) if v is a else low.offset(low.scale(v, -1.0), c)
        if op == "Mul":
            return low.scale(v, c)
        _require(node, v is a, "division by a value computed from the input")
        if not np.all(c != 0):
            raise EncodingError(f"ONNX node {node.name} divides by a constant holding zeros")
        return low.scale(v, 1.0 / c)

    def gemm(self, node: _Node, ins: list[Value | None]) -> Affine:
        a, b = ins[0], ins[1]
        c = ins[2] if len(ins) > 2 else None
        _require(node, isinstance(a, Affine) and isinstance(b, np.ndarray), "Gemm needs a computed A and a constant B")
        assert isinstance(a, Affine) and isinstance(b, np.ndarray)
        self.low.check(a, node.name)
        _require(node, int(node.attrs.get("transA", 0)) == 0, "transA=1 (it transposes the batch axis)")
        _require(node, len(a.shape) == 1, f"Gemm needs a (batch, k) input, got per-sample shape {a.shape}")
        bm = np.asarray(b, dtype=np.float64)
        bm = bm.T if int(node.attrs.get("transB", 0)) else bm
        if bm.ndim != 2 or bm.shape[0] != a.shape[0]:
            raise ShapeError(f"ONNX node {node.name}: B of shape {bm.shape} does not take {a.shape[0]} inputs")
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        offset = None
        if c is not None:
            _require(node, isinstance(c, np.ndarray), "a computed C operand")
            assert isinstance(c, np.ndarray)
            offset = beta * _per_sample(np.asarray(c, dtype=np.float64), 2, node)
        return self.low.linear(a, lambda r: alpha * (r @ bm), offset)

    def matmul(self, node: _Node, a: Value | None, b: Value | None) -> Affine:
        if isinstance(a, Affine) and isinstance(b, np.ndarray):
            self.low.check(a, node.name)
            bm = np.asarray(b, dtype=np.float64)
            if bm.ndim > 2:
                bm = _per_sample(bm, len(a.shape) + 1, node)
            _require(node, len(a.shape) >= 1 and bm.ndim >= 1 and a.shape[-1] == bm.shape[0 if bm.ndim == 1 else -2],
                     f"shapes {a.shape} and {bm.shape} do not multiply")
            return self.low.linear(a, lambda r: r @ bm)
        if isinstance(a, np.ndarray) and isinstance(b, Affine):
            self.low.check(b, node.name)
            am = np.asarray(a, dtype=np.float64)
            _require(node, am.ndim == 2 and len(b.shape) >= 2 and am.shape[1] == b.shape[-2],
                     f"a constant {am.shape} times a computed {b.shape}")
            return self.low.linear(b, lambda r: am @ r)
        raise node.unsupported("MatMul of two values computed from the input (only by constants)")

    def conv(self, node: _Node, v: Affine, ins: list[Value | None]) -> Affine:
        _require(node, len(v.shape) == 3, f"only 2-D convolutions: needs (channels, height, width), got per-sample shape {v.shape}")
        cin, h, w = v.shape
        kernel = np.asarray(ins[1], dtype=np.float64)
        _require(node, kernel.ndim == 4, f"a kernel of shape {kernel.shape}")
        cout, kcin, kh, kw = kernel.shape
        _require(node, int(node.attrs.get("group", 1)) == 1, f"group={node.attrs.get('group')}")
        _require(node, node.ints("dilations", (1, 1)) == (1, 1), "dilations other than 1")
        _require(node, node.ints("kernel_shape", (kh, kw)) == (kh, kw), "kernel_shape differs from the kernel")
        strides = node.ints("strides", (1, 1))
        _require(node, len(strides) == 2 and strides[0] == strides[1], f"strides {strides} (only equal strides)")
        pads = _pads(node, (h, w), (kh, kw), strides)
        _require(node, len(set(pads)) == 1, f"pads {pads} (only the same padding on every side)")
        if kcin != cin:
            raise ShapeError(f"ONNX node {node.name}: kernel {kernel.shape} takes {kcin} channels, the input has {cin}")
        bias = np.zeros(cout) if len(ins) < 3 or ins[2] is None else np.asarray(ins[2], dtype=np.float64)
        _check_entries(h * w * cin, max(h + 2 * pads[0] - kh + 1, 1) * max(w + 2 * pads[0] - kw + 1, 1) * cout)
        dense = conv2d_as_dense(kernel.transpose(2, 3, 1, 0), bias, (h, w, cin), strides[0], pads[0])
        oh, ow = (h + 2 * pads[0] - kh) // strides[0] + 1, (w + 2 * pads[0] - kw) // strides[0] + 1
        # conv2d_as_dense reads (row, column, channel) and writes (row, column, channel); ONNX
        # values are (channel, row, column): permute rows and columns of the matrix once.
        rows = np.arange(h * w * cin).reshape(h, w, cin).transpose(2, 0, 1).ravel()
        cols = np.arange(oh * ow * cout).reshape(oh, ow, cout).transpose(2, 0, 1).ravel()
        m, b = dense.weight[rows][:, cols], dense.bias[cols]
        return self.low.linear(v, lambda r: (r.reshape(r.shape[0], -1) @ m).reshape(r.shape[0], cout, oh, ow), b.reshape(cout, oh, ow))

    def batch_norm(self, node: _Node, v: Affine, ins: list[Value | None]) -> Affine:
        _require(node, int(node.attrs.get("training_mode", 0)) == 0, "training_mode=1")
        _require(node, not any(self.used(node, k) for k in range(1, len(node.proto.output))), "the running statistics outputs are used")
        _require(node, len(ins) == 5 and all(isinstance(t, np.ndarray) for t in ins[1:]), "needs constant scale, B, mean, var")
        scale, bias, mean, var = (np.asarray(t, dtype=np.float64).ravel() for t in ins[1:])
        c = v.shape[0] if v.shape else 0
        if not (scale.shape == bias.shape == mean.shape == var.shape == (c,)):
            raise ShapeError(f"ONNX node {node.name}: statistics of shape {scale.shape} for {c} channels")
        a = scale / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
        col = (c,) + (1,) * (len(v.shape) - 1)
        return self.low.offset(self.low.scale(v, a.reshape(col)), (bias - mean * a).reshape(col))

    def reshape_target(self, node: _Node, v: Affine, ins: list[Value | None]) -> tuple[int, ...]:
        _require(node, len(ins) > 1 and isinstance(ins[1], np.ndarray), "a shape computed from the input")
        _require(node, int(node.attrs.get("allowzero", 0)) == 0, "allowzero=1")
        target = [int(d) for d in np.asarray(ins[1]).ravel()]
        _require(node, len(target) >= 1, "an empty target shape")
        rest = [v.shape[i] if d == 0 and i < len(v.shape) else d for i, d in enumerate(target[1:])]
        if target[0] == -1:
            _require(node, -1 not in rest, f"target shape {target}: the batch axis and another axis are both inferred")
        if rest.count(-1) > 1 or any(d < -1 or d == 0 for d in rest):
            raise ShapeError(f"ONNX node {node.name}: bad target shape {target}")
        if -1 in rest:
            known = math.prod(d for d in rest if d != -1)
            if known == 0 or v.size % known:
                raise ShapeError(f"ONNX node {node.name}: cannot reshape {v.shape} to {target}")
            rest = [v.size // known if d == -1 else d for d in rest]
        if math.prod(rest) != v.size:
            raise ShapeError(
                f"ONNX node {node.name}: target shape {target} keeps the batch axis first, but its other axes hold "
                f"{math.prod(rest)} values per sample, not {v.size}"
            )
        return tuple(rest)


def _input_shape(graph: Any) -> tuple[str, tuple[int, ...]]:
    init = {t.name for t in graph.initializer}
    data = [i for i in graph.input if i.name not in init]
    if len(data) != 1:
        raise UnsupportedOperationError(f"the ONNX graph has {len(data)} data inputs ({[i.name for i in data]}); EDIL imports exactly one")
    inp = data[0]
    dims = list(inp.type.tensor_type.shape.dim)
    if len(dims) < 2:
        raise ShapeError(f"ONNX input {inp.name!r} must be batched (batch, ...), it has {len(dims)} axes")
    shape = []
    for d in dims[1:]:
        if not d.HasField("dim_value") or d.dim_value < 1:
            raise ShapeError(f"ONNX input {inp.name!r} must have a static shape after the batch axis, got {d}")
        shape.append(int(d.dim_value))
    return inp.name, tuple(shape)


def from_onnx(
    path_or_model: Any,
    *,
    output: str | None = None,
    calibration: Any = None,
    degree: int = 4,
    interval: tuple[float, float] = (-4.0, 4.0),
    margin: float = 1.1,
    kind: str | None = None,
    classes: Sequence[Any] | None = None,
    activations: str = "polynomial",
) -> Sequential:
    """The implementation of :func:`edil.models.from_onnx` (documented there)."""
    model = _load(path_or_model)
    try:
        return _import(model, output, calibration, degree, interval, margin, kind, classes, activations)
    except EdilError:
        raise
    except (ArithmeticError, AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        # A graph that parsed but does not hold together (a missing operand, a tensor of the
        # wrong type...): untrusted bytes end in an EDIL error, never in a bare one.
        raise SerializationError(f"malformed ONNX model: {type(exc).__name__}: {exc}") from None


def _import(
    model: Any, output: str | None, calibration: Any, degree: int, interval: tuple[float, float], margin: float,
    kind: str | None, classes: Sequence[Any] | None, activations: str = "polynomial",
) -> Sequential:
    from onnx import defs

    graph = model.graph
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), defs.onnx_opset_version())
    outputs = [o.name for o in graph.output]
    if output is None:
        if len(outputs) != 1:
            raise EncodingError(f"the ONNX graph has outputs {outputs}: choose one with output=")
        output = outputs[0]
    elif output not in outputs:
        raise EncodingError(f"{output!r} is not an output of the ONNX graph (outputs: {outputs})")
    _, in_shape = _input_shape(graph)

    # Only the nodes the chosen output depends on (skl2onnx adds label nodes: ArgMax, ZipMap...).
    needed, keep = {output}, set()
    for i in reversed(range(len(graph.node))):
        proto = graph.node[i]
        if any(o in needed for o in proto.output):
            keep.add(i)
            needed.update(n for n in proto.input if n)
    nodes = [_Node(graph.node[i], i) for i in sorted(keep)]

    low = Lowering(in_shape, calibration=calibration, degree=degree, interval=interval, margin=margin, activations=activations)
    importer = _Importer(graph, opset, low, output, needed)
    importer.values[_input_shape(graph)[0]] = low.input()
    out = importer.run(nodes)
    if importer.softmax and output not in importer.post_softmax:
        raise UnsupportedOperationError(f"the ONNX output {output!r} does not come from the final Softmax")
    if not isinstance(out, Affine):
        raise UnsupportedOperationError(f"the ONNX output {output!r} does not depend on the input")
    if kind is None:
        kind = "multiclass" if importer.softmax else "regression"
    return low.finish(out, kind=kind, classes=classes, where=f"ONNX output {output!r}")
