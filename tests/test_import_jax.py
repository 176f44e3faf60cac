"""JAX import: known answers per primitive against JAX itself, the refusals, and a CNN written
as a JAX function under Plain, Masked and CKKS against JAX on held-out digits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import imports as workloads
from edil import Plain, ShapeError, UnsupportedOperationError, models
from edil._jax_import import WHITELIST

RNG = np.random.default_rng(61)


def w(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def primitives(fn: Callable[..., Any], params: Any, x: np.ndarray) -> set[str]:
    """Every primitive of the trace, calls walked into."""
    found: set[str] = set()

    def walk(jaxpr: Any) -> None:
        for eqn in jaxpr.eqns:
            found.add(eqn.primitive.name)
            for v in eqn.params.values():
                inner = getattr(v, "jaxpr", v)
                if hasattr(inner, "eqns"):
                    walk(inner)

    walk(jax.make_jaxpr(lambda a: fn(params, a))(x[:1]).jaxpr)
    return found


# (function, params, per-sample input shape)
CASES: dict[str, tuple[Callable[..., Any], Any, tuple[int, ...]]] = {
    "dense": (lambda p, x: x @ p["w"] + p["b"], {"w": w(5, 3), "b": w(3)}, (5,)),
    "einsum": (lambda p, x: jnp.einsum("bij,jk->bik", x, p["w"]).reshape(x.shape[0], -1), {"w": w(4, 2)}, (3, 4)),
    "conv": (lambda p, x: jax.lax.conv_general_dilated(x, p["k"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
             .reshape(x.shape[0], -1), {"k": w(3, 3, 2, 4)}, (7, 7, 2)),
    "layout": (lambda p, x: (jnp.transpose(x, (0, 2, 1)).reshape(x.shape[0], -1)[:, None, :].squeeze(1)
                             + p["b"][None, :]).sum(axis=1, keepdims=True) * jnp.ones((1, 3)),
               {"b": w(6)}, (2, 3)),
    "arithmetic": (lambda p, x: (1.5 - x) * p["m"] / 4.0 - (-x) + x @ p["w"] - x @ p["w2"],
                   {"m": w(4), "w": w(4, 4), "w2": w(4, 4)}, (4,)),
    "relu": (lambda p, x: jnp.maximum(jax.nn.relu(x @ p["w"]) @ p["v"], 0.0), {"w": w(4, 3) * 0.5, "v": w(3, 3) * 0.3}, (4,)),
    "tanh": (lambda p, x: jax.checkpoint(jnp.tanh)(x @ p["w"]), {"w": w(4, 3) * 0.5}, (4,)),
    "logistic": (lambda p, x: jax.jit(jax.nn.sigmoid)(x @ p["w"]), {"w": w(4, 3)}, (4,)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_known_answer_against_jax(name: str) -> None:
    fn, params, shape = CASES[name]
    x = RNG.normal(size=(25, *shape)).astype(np.float32)
    model = models.from_jax(fn, params, x, degree=10)
    ref = np.asarray(fn(params, jnp.asarray(x)), dtype=np.float64).reshape(len(x), -1)
    got = models.encode_model(model, Plain()).infer(x.reshape(len(x), -1))
    polys = model.approximations
    # Linear primitives are exact up to JAX's float32; an activation is within its fit's error
    # (in the relu case the first ReLU's error goes through v, then the second ReLU adds its own).
    errors = [p.max_error for p in polys]
    fit = errors[0] * float(np.abs(params["v"]).sum(axis=0).max()) + errors[1] if name == "relu" else sum(errors)
    tol = 1e-4 * max(1.0, float(np.max(np.abs(ref)))) + fit
    assert all(p.max_error < 0.2 for p in polys), [p.max_error for p in polys]
    np.testing.assert_allclose(got, ref, atol=tol, rtol=1e-4)


def test_every_whitelisted_data_primitive_is_exercised() -> None:
    seen: set[str] = set()
    for fn, params, shape in CASES.values():
        seen |= primitives(fn, params, RNG.normal(size=(2, *shape)).astype(np.float32))
    # calls other than custom_jvp_call (jit, remat...) are walked into alike; aliases (add_any, copy)
    # and dtype conversions (no-ops between float types here) are not exercised
    required = {"dot_general", "conv_general_dilated", "reshape", "broadcast_in_dim", "squeeze", "transpose", "reduce_sum",
                "add", "sub", "neg", "mul", "div", "max", "tanh", "logistic", "custom_jvp_call"}
    assert required <= set(WHITELIST) and required <= seen, required - seen


def test_relu_is_a_polynomial_between_two_dense_layers() -> None:
    fn, params, shape = CASES["relu"]
    model = models.from_jax(lambda p, x: jax.nn.relu(x @ p["w"]) @ p["v"], params, RNG.normal(size=(9, *shape)).astype(np.float32))
    assert [type(la).__name__ for la in model.layers] == ["Dense", "Polynomial", "Dense"]
    assert model.approximations[0].activation == "relu"


@pytest.mark.parametrize("fn, why", [
    (lambda p, x: jnp.exp(x @ p["w"]), "exp"),
    (lambda p, x: jnp.sin(x), "sin"),
    (lambda p, x: (x @ p["w"]) * (x @ p["w"]), "two values"),
    (lambda p, x: jnp.maximum(x @ p["w"], 1.0), "non-zero"),
    (lambda p, x: 2.0 / (x @ p["w"]), "division by a value"),
    (lambda p, x: jnp.tanh(x @ p["w"]) + x @ p["w"], "sequential"),
    (lambda p, x: x - x.mean(axis=0, keepdims=True), "batch axis"),
    (lambda p, x: x * x.shape[0], "row by row"),  # traced on one row, checked on six
    (lambda p, x: x.sum(axis=0), "batch axis"),
])
def test_unsupported_primitives_and_functions_are_refused(fn: Callable[..., Any], why: str) -> None:
    params = {"w": w(4, 4)}
    with pytest.raises(UnsupportedOperationError, match=why) as err:
        models.from_jax(fn, params, RNG.normal(size=(6, 4)).astype(np.float32))
    if why in ("exp", "sin"):
        assert "dot_general" in str(err.value) and "conv_general_dilated" in str(err.value)  # the whitelist is named


def test_work_on_parameters_is_folded_at_import() -> None:
    params = {"w": w(3, 5), "log_scale": np.float32(0.3)}
    fn = lambda p, x: (x @ p["w"].T) * jnp.exp(p["log_scale"])  # noqa: E731 - exp touches a parameter only
    x = RNG.normal(size=(7, 5)).astype(np.float32)
    model = models.from_jax(fn, params, x)
    assert len(model.layers) == 1
    np.testing.assert_allclose(model.forward(x), np.asarray(fn(params, x)), atol=1e-5)


def test_example_needs_a_batch_axis() -> None:
    with pytest.raises(ShapeError):
        models.from_jax(lambda p, x: x, {}, np.float32(1.0))


def test_jax_cnn_agrees_with_jax_under_every_scheme() -> None:
    x_tr, x_te, _, _ = workloads.digits_split()
    params = workloads.cnn_params()
    ref = np.asarray(workloads.cnn_jax(params, jnp.asarray(x_te)), dtype=np.float64)
    model = models.from_jax(workloads.cnn_jax, params, x_tr, degree=8, kind="multiclass")
    assert [type(la).__name__ for la in model.layers] == ["Dense", "Polynomial", "Dense"]
    flat = x_te.reshape(len(x_te), -1)
    found = {}
    for name in ("plain", "masked", "ckks"):
        logits = models.encode_model(model, workloads.make_scheme(name, model)).infer(flat)
        found[name] = float(np.mean(logits.argmax(axis=1) == ref.argmax(axis=1)))
        # logits within a few units of the activation's fit error times the head's weights
        assert np.max(np.abs(logits - ref)) < 3.0
    assert min(found.values()) >= 0.99, found
