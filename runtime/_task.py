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

What a task discloses is declared by its maker and enforced before anything leaves the
coordinator: a task's model weights reach the node in the clear, so every task must be built with
``model_public=True``; a ``plain`` task (and a ``fedtrain`` step) also sends its input in the
clear, so it needs ``allow_plaintext=True``. :meth:`Task.check_disclosure` refuses anything
else (``Scheduler.submit`` calls it), and the declaration is part of the task's bytes, so the
journal records it with the job.

The scheme contract the runtime relies on is :class:`SchemeContract`; a task is checked
against its scheme (``check_model``, input shape, scheme of the encoded input) when it is built,
so a task that cannot run is refused before dispatch instead of failing on every node.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import msgspec
import numpy as np

from edil import EdilError, Plain, SchemeMismatchError, SerializationError, ShapeError, UnsupportedOperationError
from edil.models import Dense, Flatten, Polynomial, ReLU, Sequential, encode_model

from . import _wire
from ._deps import commit_bytes, commit_json, decode_tensor, encode_tensor

__all__ = [
    "PlainRunner",
    "Runner",
    "SchemeContract",
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
        raise UnsupportedOperationError(f"expected a Sequential, got {type(model).__name__}")
    layers: list[dict[str, Any]] = []
    for layer in model.layers:
        if isinstance(layer, Dense):
            layers.append({"t": "dense", "w": array_to_bytes(layer.weight), "b": array_to_bytes(layer.bias)})
        elif isinstance(layer, Polynomial):
            layers.append({"t": "poly", "c": [float(c) for c in layer.coeffs]})
        elif isinstance(layer, Flatten):
            layers.append({"t": "flatten"})
        elif isinstance(layer, ReLU):  # exact: the secret-sharing schemes compare (Replicated services)
            layers.append({"t": "relu"})
        else:  # never let an unknown layer travel as something else
            raise UnsupportedOperationError(f"a {type(layer).__name__} layer cannot be sent to a node")
    return _wire.dumps({"v": 1, "kind": model.kind, "layers": layers})


#: Bounds on a model read from bytes: layers, and coefficients of one polynomial activation.
MAX_LAYERS, MAX_POLY_COEFFS = 1024, 1024


class _DenseRecord(msgspec.Struct, tag_field="t", tag="dense", forbid_unknown_fields=True):
    w: bytes
    b: bytes


class _PolyRecord(msgspec.Struct, tag_field="t", tag="poly", forbid_unknown_fields=True):
    c: Annotated[list[float], msgspec.Meta(min_length=1, max_length=MAX_POLY_COEFFS)]


class _FlattenRecord(msgspec.Struct, tag_field="t", tag="flatten", forbid_unknown_fields=True):
    pass


class _ReluRecord(msgspec.Struct, tag_field="t", tag="relu", forbid_unknown_fields=True):
    pass


class _ModelRecord(msgspec.Struct, forbid_unknown_fields=True):
    """A serialized model as it travels, with strict types (see :func:`model_to_bytes`)."""

    v: Literal[1]
    kind: Literal["regression", "binary", "multiclass"]
    layers: Annotated[list[_DenseRecord | _PolyRecord | _FlattenRecord | _ReluRecord], msgspec.Meta(max_length=MAX_LAYERS)]


def _weights(data: bytes, what: str) -> np.ndarray:
    arr = array_from_bytes(data)
    if arr.dtype.kind not in "biuf":  # complex weights would silently lose their imaginary part
        raise SerializationError(f"model {what} of dtype {arr.dtype} is not real")
    return arr


def model_from_bytes(data: bytes) -> Sequential:
    """Inverse of :func:`model_to_bytes`.

    Raises:
        SerializationError: not a model record (strict types, at most :data:`MAX_LAYERS` layers
            and :data:`MAX_POLY_COEFFS` coefficients per polynomial, real tensors for weights).
        ShapeError, EncodingError: weights that do not chain, or non-finite values.
    """
    rec = _wire.typed(_wire.loads(data), _ModelRecord, "model")
    layers: list[Any] = []
    try:
        for spec in rec.layers:
            if isinstance(spec, _DenseRecord):
                layers.append(Dense(_weights(spec.w, "weight"), _weights(spec.b, "bias")))
            elif isinstance(spec, _PolyRecord):
                layers.append(Polynomial(tuple(spec.c)))
            elif isinstance(spec, _ReluRecord):
                layers.append(ReLU())
            else:
                layers.append(Flatten())
        return Sequential(tuple(layers), kind=rec.kind)
    except EdilError:
        raise
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"bad model bytes: {exc}") from None


#: Runner names whose task input is plaintext: the node reads the data itself.
PLAINTEXT_SCHEMES = frozenset({"plain", "fedtrain"})


@runtime_checkable
class SchemeContract(Protocol):
    """What the runtime needs of a scheme whose tasks run whole on one node (CKKS, Paillier).

    The coordinator side holds the keys; a node rebuilds a compute-only scheme with
    :meth:`from_public_context` and must never be able to decrypt.
    """

    @property
    def name(self) -> str:
        """The runner name tasks of this scheme carry (``"ckks"``, ``"paillier"``)."""
        ...

    @property
    def params(self) -> dict[str, Any]:
        """Public parameters (JSON-able), including a fingerprint of the public context."""
        ...

    def public_context_bytes(self) -> bytes:
        """The public (and evaluation) keys a node computes with; never a secret key."""
        ...

    @classmethod
    def from_public_context(cls, data: bytes) -> SchemeContract:
        """The node side; raises :class:`~edil.SerializationError` on bad or secret-bearing bytes."""
        ...

    def serialize(self, value: Any) -> bytes:
        """Bytes of an encoded value, bound to this context."""
        ...

    def deserialize(self, data: bytes) -> Any:
        """Inverse of :meth:`serialize`; raises only :class:`~edil.EdilError` subclasses."""
        ...

    def check_model(self, model: Any) -> None:
        """Raise (:class:`~edil.UnsupportedOperationError`, :class:`~edil.ParameterError`) unless
        the scheme can evaluate ``model`` with these parameters."""
        ...


#: An R1FS file CID (canonical base32 CIDv1, messagepack codec, sha2-256), or empty (inline bytes).
_FileCid = Annotated[str, msgspec.Meta(pattern=r"\A(b[a-z2-7]{60})?\Z")]


class _TaskRecord(msgspec.Struct, forbid_unknown_fields=True):
    """A task as it travels (see :meth:`Task.to_wire`), with strict types; absent optional
    fields take :class:`Task`'s defaults (older records)."""

    scheme: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    params: dict[str, Any]
    model: bytes
    input: bytes
    work_units: int
    needs_gpu: bool
    context: bytes = b""
    node: Annotated[str, msgspec.Meta(max_length=64)] = ""
    model_public: bool = False
    allow_plaintext: bool = False
    context_cid: _FileCid = ""
    model_cid: _FileCid = ""
    input_cid: _FileCid = ""


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
        model_public: the caller declared the model public (its weights reach the node in the
            clear); required by :meth:`check_disclosure`.
        allow_plaintext: the caller allowed the input to reach the node in the clear (required
            for schemes in :data:`PLAINTEXT_SCHEMES`).
        context_cid, model_cid, input_cid: the R1FS file holding ``context`` / ``model`` /
            ``input`` when the task travels without those bytes (:mod:`edil.runtime._blobs`; empty: inline). The node
            fetches the bytes before it runs the task, so commitments are over the same bytes.
    """

    scheme: str
    params: dict[str, Any]
    model: bytes
    input: bytes
    work_units: int
    needs_gpu: bool = False
    context: bytes = b""
    node: str = ""
    model_public: bool = False
    allow_plaintext: bool = False
    context_cid: str = ""
    model_cid: str = ""
    input_cid: str = ""
    _wire_cache: bytes | None = field(default=None, repr=False, compare=False)

    @classmethod
    def plain(cls, model: Sequential, x: Any, *, allow_plaintext: bool = False, needs_gpu: bool = False) -> Task:
        """A plaintext-reference task of ``model`` on the float64 batch ``x``.

        The node reads the input and the model in the clear, so the caller must say so.

        Args:
            model: the model (its weights travel in the clear).
            x: a ``(batch, in_features)`` array (it travels in the clear).
            allow_plaintext: explicit opt-in to sending data and model to nodes unprotected.
            needs_gpu: place only on nodes that advertise a GPU.

        Raises:
            UnsupportedOperationError: ``allow_plaintext`` is not set.
            ShapeError: ``x`` is not ``(batch, model.in_features)``.
        """
        if allow_plaintext is not True:
            raise UnsupportedOperationError(
                "a Plain task sends the data and the model to nodes in the clear; pass allow_plaintext=True to accept "
                "that, or use Task.for_scheme with CKKS/Paillier (data encrypted) or Scheduler.run_masked (data and "
                "model secret-shared)"
            )
        arr = np.asarray(x, dtype=np.float64)
        _check_input(model, arr.shape)
        return cls(
            "plain", {"scheme": "plain"}, model_to_bytes(model), array_to_bytes(arr), model.work_units(arr.shape[0]), needs_gpu,
            model_public=True, allow_plaintext=True,
        )

    @classmethod
    def for_scheme(
        cls, scheme: Any, model: Sequential, x: Any, *, model_public: bool = False, allow_plaintext: bool = False, needs_gpu: bool = False
    ) -> Task:
        """A task for a scheme that runs whole on one node (:class:`SchemeContract`: CKKS, Paillier).

        The task is checked against the scheme before anything is sent: the scheme must be able
        to run the model (``check_model``), and ``x`` must be an encoded ``(batch,
        in_features)`` value of this scheme instance.

        Args:
            scheme: the client's scheme (it keeps the secret key; the task carries its public context).
            model: the model. These schemes compute with public weights, so the node sees them.
            x: the encoded input (``scheme.encode(...)``).
            model_public: the caller declares the model public (required: the weights reach the
                node in the clear).
            allow_plaintext: only for :class:`~edil.Plain` (see :meth:`plain`).
            needs_gpu: place only on nodes that advertise a GPU.

        Raises:
            UnsupportedOperationError: a scheme without a public context (``Masked``: use
                ``Scheduler.run_masked``), a model the scheme cannot run (e.g. a polynomial
                activation under Paillier), or ``model_public`` not set.
            ParameterError: the scheme's parameters cannot hold the model (depth, slot headroom).
            ShapeError: ``x`` is not ``(batch, model.in_features)``.
            SchemeMismatchError: ``x`` was encoded by another scheme instance.
        """
        if isinstance(scheme, Plain):
            return cls.plain(model, scheme.decode(x), allow_plaintext=allow_plaintext, needs_gpu=needs_gpu)
        if not isinstance(scheme, SchemeContract):
            raise UnsupportedOperationError(
                f"{type(scheme).__name__} has no public context a single node can compute with; run Masked with Scheduler.run_masked"
            )
        if not isinstance(model, Sequential):
            raise UnsupportedOperationError(f"expected a Sequential, got {type(model).__name__}")
        if model_public is not True:
            raise UnsupportedOperationError(
                f"{type(scheme).__name__} tasks compute with public weights: the model reaches every node in the clear. Pass "
                "model_public=True to declare the model public, or use Scheduler.run_masked to keep the weights "
                "secret-shared (Masked with private weights)"
            )
        check = getattr(scheme, "check", None)  # Scheme.check: the value was made by this scheme instance
        if check is not None:
            check(x)
        _check_input(model, tuple(getattr(x, "shape", ())))
        scheme.check_model(model)
        return cls(
            scheme.name, dict(scheme.params), model_to_bytes(model), scheme.serialize(x), model.work_units(x.shape[0]), needs_gpu,
            scheme.public_context_bytes(), model_public=True,
        )

    def check_disclosure(self) -> None:
        """Refuse a task whose maker did not declare what it sends in the clear.

        Raises:
            UnsupportedOperationError: the model is not declared public, or the input is
                plaintext (:data:`PLAINTEXT_SCHEMES`) without ``allow_plaintext``.
        """
        if self.model_public is not True:
            raise UnsupportedOperationError(
                f"a {self.scheme!r} task carries its model in the clear; build it with model_public=True (Task.for_scheme) "
                "or allow_plaintext=True (Task.plain) to declare that"
            )
        if self.scheme in PLAINTEXT_SCHEMES and self.allow_plaintext is not True:
            raise UnsupportedOperationError(f"a {self.scheme!r} task carries its input in the clear; it needs allow_plaintext=True")

    @property
    def params_hash(self) -> bytes:
        return commit_json(self.params)

    # The commitments hash megabytes for an HE task, and the coordinator needs them for every reply
    # it checks: each is computed once per Task object. The bytes fields are immutable and
    # ``dataclasses.replace`` builds a new object, so a cached value never outlives its bytes.
    @cached_property
    def model_commitment(self) -> bytes:
        return commit_bytes(self.model)

    @cached_property
    def input_commitment(self) -> bytes:
        return commit_bytes(self.input)

    def commitments(self) -> tuple[bytes, bytes, bytes]:
        """``(params_hash, model_commitment, input_commitment)``, what a node's transcript of this task
        commits to (the model and input commitments computed once per object)."""
        return self.params_hash, self.model_commitment, self.input_commitment

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "scheme": self.scheme,
            "params": self.params,
            "model": self.model,
            "input": self.input,
            "work_units": self.work_units,
            "needs_gpu": self.needs_gpu,
            "context": self.context,
            "node": self.node,
            "model_public": self.model_public,
            "allow_plaintext": self.allow_plaintext,
        }
        # Only tasks that travel by CID carry these fields, so inline tasks keep their bytes.
        if self.context_cid:
            wire["context_cid"] = self.context_cid
        if self.model_cid:
            wire["model_cid"] = self.model_cid
        if self.input_cid:
            wire["input_cid"] = self.input_cid
        return wire

    def to_bytes(self) -> bytes:
        return _wire.dumps(self.to_wire())

    @classmethod
    def from_wire(cls, d: Any) -> Task:
        """Inverse of :meth:`to_wire`, with strict types (see ``_TaskRecord``).

        Raises:
            SerializationError: not a task record (unknown or missing fields, wrong types,
                ``work_units`` outside ``[0, 2^256)``).
        """
        rec = _wire.typed(d, _TaskRecord, "task record")
        if not 0 <= rec.work_units < (1 << 256):
            raise SerializationError("task work_units outside [0, 2^256)")
        return cls(
            scheme=rec.scheme, params=rec.params, model=rec.model, input=rec.input, work_units=rec.work_units,
            needs_gpu=rec.needs_gpu, context=rec.context, node=rec.node, model_public=rec.model_public,
            allow_plaintext=rec.allow_plaintext, context_cid=rec.context_cid, model_cid=rec.model_cid,
            input_cid=rec.input_cid,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Task:
        """Inverse of :meth:`to_bytes`. Raises :class:`~edil.SerializationError`."""
        return cls.from_wire(_wire.loads(data))


def _check_input(model: Any, shape: tuple[int, ...]) -> None:
    if not isinstance(model, Sequential):
        raise UnsupportedOperationError(f"expected a Sequential, got {type(model).__name__}")
    if len(shape) != 2 or shape[1] != model.in_features:
        raise ShapeError(f"the model expects (batch, {model.in_features}) input, got {shape}")


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
        from_context: ``from_context(context_bytes) -> scheme``, a :class:`SchemeContract`. It
            must refuse a context that holds a secret key (both HE schemes do).
        cache_size: rebuilt schemes kept, keyed by the context's SHA-256 (rebuilding a CKKS
            context costs far more than most tasks).

    Raises (from :meth:`run`):
        SerializationError: the context or the input is malformed.
        SchemeMismatchError: the context's parameters are not the task's (a task cannot pair a
            parameter hash with other keys).
        UnsupportedOperationError, ParameterError: the scheme cannot run the model (its
            ``check_model``), checked before any evaluation.
    """

    def __init__(self, from_context: Callable[[bytes], SchemeContract], *, cache_size: int = 4) -> None:
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
        model = model_from_bytes(task.model)
        scheme.check_model(model)
        m = encode_model(model, scheme)
        return bytes(scheme.serialize(m(scheme.deserialize(task.input))))


def _ckks_from_context(data: bytes) -> SchemeContract:
    from edil import CKKS

    return CKKS.from_public_context(data)


def _paillier_from_context(data: bytes) -> SchemeContract:
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
