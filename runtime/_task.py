"""Tasks: pure functions of an encoded model and an encoded input, and the per-scheme runners.

A :class:`Task` carries only bytes and public parameters, so it can be sealed to a node, stored
in the journal and replayed by an auditor. A node turns it into output bytes with the
:class:`Runner` registered for the task's scheme:

* ``"plain"``: :class:`PlainRunner` (the reference);
* ``"ckks"`` and ``"paillier"``: :class:`SchemeRunner`. The task carries the scheme's *public*
  context (``public_context_bytes()``: public and evaluation keys, no secret key); the node
  rebuilds a compute-only scheme from it, checks that it has exactly the task's public
  parameters (which hold the context's fingerprint, so the transcript's parameter hash binds
  the keys), and evaluates the model on the ciphertexts. Evaluation is deterministic, so an
  auditor recomputes the same output bytes;
* ``Masked`` does not run as one task: each party's share runs on a different node through
  :mod:`edil.runtime._mpc`, exchanging only openings.

Models travel as :func:`model_to_bytes` (canonical tensors, no pickle).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edil import Plain, SchemeMismatchError, SerializationError
from edil.models import Dense, Flatten, Polynomial, Sequential, encode_model

from . import _wire
from ._deps import commit_bytes, commit_json

try:
    from edil.proofs import decode_tensor, encode_tensor  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    from edil.proofs._commit import decode_tensor, encode_tensor

__all__ = [
    "PlainRunner",
    "Runner",
    "SchemeRunner",
    "Task",
    "array_from_bytes",
    "array_to_bytes",
    "default_runners",
    "model_from_bytes",
    "model_to_bytes",
]


def array_to_bytes(a: Any) -> bytes:
    """Canonical tensor bytes (``edil.proofs`` encoding: dtype, shape, little-endian data)."""
    return encode_tensor(np.asarray(a))


def array_from_bytes(data: bytes) -> np.ndarray:
    """Inverse of :func:`array_to_bytes`. Raises :class:`~edil.SerializationError`."""
    return decode_tensor(data)


def model_to_bytes(model: Sequential) -> bytes:
    """Serialize a :class:`~edil.models.Sequential` (weights as canonical tensors)."""
    if not isinstance(model, Sequential):
        raise TypeError(f"expected a Sequential, got {type(model).__name__}")
    layers: list[dict[str, Any]] = []
    for layer in model.layers:
        if isinstance(layer, Dense):
            layers.append({"t": "dense", "w": array_to_bytes(layer.weight), "b": array_to_bytes(layer.bias)})
        elif isinstance(layer, Polynomial):
            layers.append({"t": "poly", "c": [float(c) for c in layer.coeffs]})
        else:
            layers.append({"t": "flatten"})
    return _wire.dumps({"v": 1, "kind": model.kind, "layers": layers})


def model_from_bytes(data: bytes) -> Sequential:
    """Inverse of :func:`model_to_bytes`. Raises :class:`~edil.SerializationError`."""
    d = _wire.loads(data)
    try:
        layers: list[Any] = []
        for spec in d["layers"]:
            t = spec["t"]
            if t == "dense":
                layers.append(Dense(array_from_bytes(spec["w"]), array_from_bytes(spec["b"])))
            elif t == "poly":
                layers.append(Polynomial(tuple(float(c) for c in spec["c"])))
            elif t == "flatten":
                layers.append(Flatten())
            else:
                raise SerializationError(f"unknown layer type {t!r}")
        return Sequential(tuple(layers), kind=str(d["kind"]))
    except (KeyError, TypeError) as exc:
        raise SerializationError(f"bad model bytes: {exc}") from None
    except ValueError as exc:
        raise SerializationError(f"bad model bytes: {exc}") from None


@dataclass(frozen=True)
class Task:
    """One unit of work: ``output = model(input)`` under ``scheme``.

    Attributes:
        scheme: runner name (``"plain"``, or a registered scheme name).
        params: the scheme's public parameters (JSON-able; hashed into the transcript).
        model: serialized model (:func:`model_to_bytes`).
        input: serialized encoded input.
        work_units: multiply-accumulates the task performs (PoAI).
        needs_gpu: place only on nodes that advertise a GPU.
        context: the scheme's public context (HE schemes; empty for ``plain``).
        node: run only on this node address (empty: any eligible node). A pinned task is
            never moved to another node; it fails if its node cannot run it.
    """

    scheme: str
    params: dict[str, Any]
    model: bytes
    input: bytes
    work_units: int
    needs_gpu: bool = False
    context: bytes = b""
    node: str = ""
    _wire_cache: bytes | None = field(default=None, repr=False, compare=False)

    @classmethod
    def plain(cls, model: Sequential, x: Any, *, needs_gpu: bool = False) -> Task:
        """A plaintext-reference task of ``model`` on the float64 batch ``x``."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError(f"input must be a (batch, features) array, got shape {arr.shape}")
        return cls("plain", {"scheme": "plain"}, model_to_bytes(model), array_to_bytes(arr), model.work_units(arr.shape[0]), needs_gpu)

    @classmethod
    def for_scheme(cls, scheme: Any, model: Sequential, x: Any, *, needs_gpu: bool = False) -> Task:
        """A task for any scheme whose encoded values ``serialize()`` to bytes (e.g. HE schemes)."""
        if isinstance(scheme, Plain):
            return cls.plain(model, scheme.decode(x), needs_gpu=needs_gpu)
        if not hasattr(scheme, "serialize") or not hasattr(scheme, "public_context_bytes"):
            raise TypeError(f"{type(scheme).__name__} has no public context; run Masked with Scheduler.run_masked")
        if hasattr(scheme, "check_model"):
            scheme.check_model(model)
        return cls(
            scheme.name, dict(scheme.params), model_to_bytes(model), scheme.serialize(x), model.work_units(x.shape[0]), needs_gpu,
            scheme.public_context_bytes(),
        )

    @property
    def params_hash(self) -> bytes:
        return commit_json(self.params)

    @property
    def model_commitment(self) -> bytes:
        return commit_bytes(self.model)

    @property
    def input_commitment(self) -> bytes:
        return commit_bytes(self.input)

    def to_wire(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "params": self.params,
            "model": self.model,
            "input": self.input,
            "work_units": self.work_units,
            "needs_gpu": self.needs_gpu,
            "context": self.context,
            "node": self.node,
        }

    def to_bytes(self) -> bytes:
        return _wire.dumps(self.to_wire())

    @classmethod
    def from_wire(cls, d: Any) -> Task:
        try:
            return cls(
                str(d["scheme"]), dict(d["params"]), bytes(d["model"]), bytes(d["input"]), int(d["work_units"]), bool(d["needs_gpu"]),
                bytes(d.get("context", b"")), str(d.get("node", "")),
            )
        except (KeyError, TypeError, ValueError):
            raise SerializationError("bad task record") from None

    @classmethod
    def from_bytes(cls, data: bytes) -> Task:
        return cls.from_wire(_wire.loads(data))


class Runner(Protocol):
    """Executes a task: ``run(task) -> output bytes`` (a pure function of the task's bytes)."""

    def run(self, task: Task) -> bytes: ...


class PlainRunner:
    """Runs plaintext-reference tasks with :class:`~edil.Plain`."""

    def run(self, task: Task) -> bytes:
        scheme = Plain()
        m = encode_model(model_from_bytes(task.model), scheme)
        return array_to_bytes(scheme.decode(m(scheme.encode(array_from_bytes(task.input)))))


class SchemeRunner:
    """Runs tasks of a scheme rebuilt on the node from the task's public context.

    Args:
        from_context: ``from_context(context_bytes) -> scheme``; the scheme must offer
            ``params``, ``serialize(value) -> bytes`` and ``deserialize(bytes) -> value``. It
            must refuse a context that holds a secret key (both HE schemes do).
        cache_size: rebuilt schemes kept, keyed by the context's SHA-256 (rebuilding a CKKS
            context costs far more than most tasks).

    Raises (from :meth:`run`):
        SerializationError: the context or the input is malformed.
        SchemeMismatchError: the context's parameters are not the task's (a task cannot pair a
            parameter hash with other keys).
    """

    def __init__(self, from_context: Callable[[bytes], Any], *, cache_size: int = 4) -> None:
        self.from_context = from_context
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    def scheme(self, context: bytes) -> Any:
        key = hashlib.sha256(context).digest()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        scheme = self.from_context(context)
        with self._lock:
            self._cache[key] = scheme
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return scheme

    def run(self, task: Task) -> bytes:
        if not task.context:
            raise SerializationError(f"a {task.scheme!r} task must carry the scheme's public context")
        scheme = self.scheme(task.context)
        if dict(scheme.params) != dict(task.params):
            raise SchemeMismatchError(f"the task's public context does not have the task's {task.scheme!r} parameters")
        m = encode_model(model_from_bytes(task.model), scheme)
        return bytes(scheme.serialize(m(scheme.deserialize(task.input))))


def _ckks_from_context(data: bytes) -> Any:
    from edil import CKKS

    return CKKS.from_public_context(data)


def _paillier_from_context(data: bytes) -> Any:
    from edil import Paillier

    return Paillier.from_public_context(data)


def default_runners() -> dict[str, Runner]:
    """A fresh runner per built-in scheme: ``plain``, ``ckks``, ``paillier``, ``fedtrain``."""
    from ._federated import FedTrainRunner

    return {
        "plain": PlainRunner(),
        "ckks": SchemeRunner(_ckks_from_context),
        "paillier": SchemeRunner(_paillier_from_context),
        "fedtrain": FedTrainRunner(None),  # recomputes plain steps; a node replaces it with its own keys
    }
