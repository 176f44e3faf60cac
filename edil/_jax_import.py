"""JAX import: a function traced to a jaxpr, its primitives lowered onto the model IR.

:func:`from_jax` traces ``fn(params, x)`` with :func:`jax.make_jaxpr` on one example row (the
parameters become constants of the trace) and walks the equations with
:class:`edil._lowering.Lowering`. The primitives of :data:`WHITELIST` are read; any other
primitive on a value computed from the input raises :class:`~edil.UnsupportedOperationError`
naming the primitive, the equation and the whitelist. Equations on constants only (work on the
parameters, e.g. a transpose of a kernel) are evaluated at import time, whatever they are:
they never touch the input.

Linear primitives (``dot_general`` and ``conv_general_dilated`` with a constant operand,
reshapes, broadcasts, transposes, sums, products with constants) are applied, through
:func:`jax.vmap`, to the rows of the pending affine map, which composes them exactly; ``max(x,
0)`` is ReLU, ``tanh`` and ``logistic`` are activations, all three replaced by calibrated
polynomials (with ``activations="exact"``, ReLU becomes an exact :class:`~edil.models.ReLU`
layer instead and the other two are refused). Calls (``jit``, ``custom_jvp_call`` as in ``jax.nn.relu``, ``custom_vjp_call``,
``closed_call``, ``jax.checkpoint``) are walked into.

The function must map a batch to a batch row by row. After lowering, the model with exact
activations is run on the calibration rows and compared with ``fn`` itself; a function whose
rows interact (or any other mismatch) is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edil._errors import ShapeError, UnsupportedOperationError
from edil._lowering import Affine, Lowering
from edil.models import Sequential

__all__ = ["WHITELIST", "from_jax"]

#: Primitives applied to a value computed from the input as a linear map (other operands constant).
LINEAR: tuple[str, ...] = (
    "dot_general", "conv_general_dilated", "reshape", "broadcast_in_dim", "squeeze", "transpose", "reduce_sum",
    "convert_element_type", "copy",
)
#: Activations (polynomial fits) by primitive.
ACTIVATIONS = {"tanh": "tanh", "logistic": "logistic"}
#: Calls whose inner jaxpr is walked.
CALLS: tuple[str, ...] = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
                          "custom_vjp_call_jaxpr", "remat2", "checkpoint")
#: Every primitive :func:`from_jax` reads on values computed from the input.
WHITELIST: tuple[str, ...] = (*LINEAR, "add", "add_any", "sub", "neg", "mul", "div", "max", *ACTIVATIONS, *CALLS)

_ROWS = 2048  # rows of a pending matrix pushed through one vmapped primitive at a time

Value = np.ndarray | Affine


def _inner(eqn: Any) -> tuple[Any, list[Any]]:
    """The jaxpr and constants a call equation runs."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is None:
            continue
        if hasattr(sub, "jaxpr") and hasattr(sub, "consts"):
            return sub.jaxpr, list(sub.consts)
        if hasattr(sub, "eqns"):
            return sub, []
    raise UnsupportedOperationError(f"JAX call {eqn.primitive.name} without an inner jaxpr EDIL can read")


class _Walker:
    def __init__(self, low: Lowering) -> None:
        self.low = low
        self.count = 0

    def unsupported(self, eqn: Any, why: str) -> UnsupportedOperationError:
        text = str(eqn).strip().splitlines()[0]
        return UnsupportedOperationError(
            f"JAX primitive {eqn.primitive.name} (equation {self.count}: {text}): {why}; EDIL imports only these "
            f"primitives on values computed from the input: {', '.join(WHITELIST)}"
        )

    def walk(self, jaxpr: Any, consts: Sequence[Any], args: Sequence[Value]) -> list[Value]:
        from jax.extend.core import Literal

        env: dict[Any, Value] = {}

        def read(v: Any) -> Value:
            return np.asarray(v.val) if isinstance(v, Literal) else env[v]

        for var, c in zip(jaxpr.constvars, consts):
            env[var] = np.asarray(c)
        for var, a in zip(jaxpr.invars, args):
            env[var] = a
        for eqn in jaxpr.eqns:
            self.count += 1
            ins = [read(v) for v in eqn.invars]
            outs = self.equation(eqn, ins)
            for var, val in zip(eqn.outvars, outs):
                env[var] = val
        return [read(v) for v in jaxpr.outvars]

    def equation(self, eqn: Any, ins: list[Value]) -> list[Value]:
        name = eqn.primitive.name
        if name in CALLS:
            sub, consts = _inner(eqn)
            return self.walk(sub, consts, ins)
        if all(isinstance(v, np.ndarray) for v in ins):
            out = eqn.primitive.bind(*ins, **eqn.params)
            return [np.asarray(o) for o in out] if eqn.primitive.multiple_results else [np.asarray(out)]
        if name not in WHITELIST:
            raise self.unsupported(eqn, "not supported")
        lins = [i for i, v in enumerate(ins) if isinstance(v, Affine)]
        where = f"JAX equation {self.count} ({name})"
        for i in lins:
            self.low.check(ins[i], where)  # type: ignore[arg-type]
        out_shape = tuple(eqn.outvars[0].aval.shape)
        if not out_shape or out_shape[0] != 1:
            raise self.unsupported(eqn, f"its result of shape {out_shape} loses the batch axis (traced with one row)")
        per_sample = out_shape[1:]
        low = self.low
        if name in ("add", "add_any", "sub"):
            a, b = ins
            if isinstance(a, Affine) and isinstance(b, Affine):
                return [low.add(a, b if name != "sub" else low.scale(b, -1.0), where)]
            v, c = (a, b) if isinstance(a, Affine) else (b, a)
            assert isinstance(v, Affine)
            c = self.per_sample(eqn, np.asarray(c, dtype=np.float64), len(v.shape))
            if name == "sub" and v is b:
                return [low.broadcast(low.offset(low.scale(v, -1.0), c), per_sample)]
            return [low.broadcast(low.offset(v, -c if name == "sub" else c), per_sample)]
        if name == "neg":
            return [low.scale(ins[0], -1.0)]  # type: ignore[arg-type]
        if name in ("mul", "div", "max"):
            if len(lins) != 1:
                raise self.unsupported(eqn, f"{name} of two values computed from the input (only with a constant)")
            v = ins[lins[0]]
            assert isinstance(v, Affine)
            c = self.per_sample(eqn, np.asarray(ins[1 - lins[0]], dtype=np.float64), len(v.shape))
            if name == "max":
                if np.any(c != 0):
                    raise self.unsupported(eqn, "max with a non-zero constant (only max(x, 0), ReLU)")
                return [low.broadcast(low.activation(v, "relu", where), per_sample)]
            if name == "div":
                if lins[0] != 0:
                    raise self.unsupported(eqn, "division by a value computed from the input")
                if not np.all(c != 0):
                    raise self.unsupported(eqn, "division by a constant holding zeros")
                c = 1.0 / c
            return [low.broadcast(low.scale(v, c), per_sample)]
        if name in ACTIVATIONS:
            return [low.activation(ins[0], ACTIVATIONS[name], where)]  # type: ignore[arg-type]
        # A linear primitive: exactly one operand is computed from the input.
        if len(lins) != 1:
            raise self.unsupported(eqn, "applied to two values computed from the input (only with constant operands)")
        return [self.linear(eqn, ins, lins[0], per_sample)]

    def per_sample(self, eqn: Any, c: np.ndarray, rank: int) -> np.ndarray:
        """A constant operand without its batch axis (a leading 1 aligned with the batch)."""
        if c.ndim <= rank:
            return c
        if c.ndim == rank + 1 and c.shape[0] == 1:
            return c[0]
        raise self.unsupported(eqn, f"a constant of shape {c.shape} varies along the batch axis")

    def linear(self, eqn: Any, ins: list[Value], pos: int, per_sample: tuple[int, ...]) -> Affine:
        import jax
        import jax.numpy as jnp

        v = ins[pos]
        assert isinstance(v, Affine)
        aval = eqn.invars[pos].aval
        full, dtype = tuple(aval.shape), aval.dtype
        prim, params = eqn.primitive, eqn.params
        if full[1:] != v.shape:
            raise ShapeError(f"JAX equation {self.count}: operand of shape {full} for a value of per-sample shape {v.shape}")

        def one(row: Any) -> Any:
            args = list(ins)
            args[pos] = row.reshape(full)
            return prim.bind(*args, **params)

        batched = jax.jit(jax.vmap(one))

        def fn(rows: np.ndarray) -> np.ndarray:
            parts = [np.asarray(batched(jnp.asarray(rows[i : i + _ROWS], dtype=dtype)), dtype=np.float64)
                     for i in range(0, rows.shape[0], _ROWS)]
            return np.concatenate(parts).reshape(rows.shape[0], *per_sample)

        return self.low.linear(v, fn)


def from_jax(
    fn: Any,
    params: Any,
    example: Any,
    *,
    calibration: Any = None,
    degree: int = 4,
    interval: tuple[float, float] = (-4.0, 4.0),
    margin: float = 1.1,
    kind: str = "regression",
    classes: Sequence[Any] | None = None,
    rtol: float = 1e-3,
    activations: str = "polynomial",
) -> Sequential:
    """The implementation of :func:`edil.models.from_jax` (documented there)."""
    import jax
    import jax.numpy as jnp

    ex = np.asarray(example)
    if ex.ndim < 1 or ex.shape[0] < 1:
        raise ShapeError(f"example must be a non-empty batch (batch, ...), got shape {ex.shape}")
    dtype = ex.dtype if ex.dtype.kind == "f" else np.dtype(np.float32)
    row = jnp.asarray(ex[:1], dtype=dtype)
    closed = jax.make_jaxpr(lambda x: fn(params, x))(row)
    if len(closed.jaxpr.outvars) != 1:
        raise UnsupportedOperationError(f"fn must return one array, it returns {len(closed.jaxpr.outvars)}")
    calib = None if calibration is False else ex if calibration is None else np.asarray(calibration)
    if calib is not None and calib.shape[1:] != ex.shape[1:]:
        calib = calib.reshape(calib.shape[0], *ex.shape[1:])
    low = Lowering(tuple(ex.shape[1:]), calibration=calib, degree=degree, interval=interval, margin=margin,
                   activations=activations)
    walker = _Walker(low)
    (out,) = walker.walk(closed.jaxpr, closed.consts, [low.input()])
    if not isinstance(out, Affine):
        raise UnsupportedOperationError("fn's output does not depend on its input")
    model = low.finish(out, kind=kind, classes=classes, where="JAX output")
    if calib is not None and low.z is not None:
        want = np.asarray(fn(params, jnp.asarray(calib, dtype=dtype)), dtype=np.float64).reshape(len(calib), -1)
        err = float(np.max(np.abs(low.z - want))) if want.shape == low.z.shape else math.inf
        if not err <= rtol * max(1.0, float(np.max(np.abs(want)))):
            raise UnsupportedOperationError(
                f"the lowered function (exact activations) differs from fn on the calibration rows by {err:.3g}: fn must "
                "map a batch row by row with the primitives EDIL imports"
            )
    return model
