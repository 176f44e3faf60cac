"""Federated EDIL: a domain encoder, load-sharded training of a head, and secure aggregation.

The data owner trains a :class:`DomainEncoder` on its own data and ships *embeddings*, never raw
inputs. :func:`split_by_load` splits them across workers in proportion to each worker's declared
load share; each worker runs :func:`train_head_task` (a pure function, so the runtime can run it
as a task) and sends a signed, weighted update; a :class:`Coordinator` combines them by weighted
federated averaging. :class:`FederatedTrainer` runs the rounds in-process.

The round loop (open a round, collect updates, validate each, handle dropouts, combine, record)
is written once, in :class:`RoundEngine`; a :class:`RoundTransport` carries the messages. The
trainer's transport calls the worker objects; :func:`edil.runtime.train_federated` supplies one
that runs each worker step as a runtime task on its node. A malformed update from an admitted
worker is refused, counted as a dropout and recorded (:class:`UpdateFault`), never raised.

Aggregation schemes (pluggable, same interface):

* :class:`PlainAggregation`: the coordinator sees each weighted update (the baseline).
* :class:`SecureAggregation`: pairwise X25519-seeded masks over the fixed-point ring
  (Bonawitz-style single masking); the coordinator learns only the weighted sum. A worker that
  drops out after the round opened is handled by seed recovery from the survivors or by redoing
  the round with the survivors.
* :class:`PaillierAggregation`: each update packed and Paillier-encrypted (``phe``); the
  coordinator multiplies ciphertexts and only the key holder decrypts the sum.

Threat model: semi-honest (honest-but-curious) coordinator and workers, no collusion between the
coordinator and workers. Every update is Ed25519-signed over (round, worker, scheme, shape,
payload): updates from workers outside the round are refused (:class:`~edil.AuthorizationError`),
from another round or sent twice (:class:`~edil.ReplayError`), of the wrong shape
(:class:`~edil.ShapeError`), with a bad signature (:class:`~edil.VerificationError`); a plain
update must be finite (:class:`~edil.EncodingError`) and a Paillier ciphertext a unit of
Z_{n^2} (:class:`~edil.VerificationError`). A uint64 masked update cannot be out of range (every
value is a ring element); a worker that masks garbage is outside the semi-honest model.

Embeddings are an encoding, not encryption: :func:`reconstruction_attack` puts a number on
what they leak.

Example:
    >>> import jax, numpy as np
    >>> from edil import federated as fed
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(120, 4)), rng.integers(0, 3, 120)
    >>> shards = fed.split_by_load(x, y, [0.25, 0.5, 0.25], key=jax.random.key(0))
    >>> workers = fed.make_workers(shards, key=jax.random.key(1))
    >>> trainer = fed.FederatedTrainer(workers, fed.SecureAggregation(), n_classes=3)
    >>> result = trainer.run(2, key=jax.random.key(2))
    >>> len(result.history)
    2
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from edil import _secagg
from edil._encoder import DomainEncoder, PrivacyReport, reconstruction_attack
from edil._errors import (
    AuthorizationError,
    EdilError,
    EncodingError,
    ParameterError,
    ReplayError,
    RuntimeTaskError,
    SchemeMismatchError,
    SerializationError,
    ShapeError,
    VerificationError,
)
from edil._fixed import FixedPoint
from edil._rounds import RoundEngine, RoundRecord, RoundTransport, UpdateFault
from edil._secagg import WorkerIdentity

__all__ = [
    "Aggregation",
    "Coordinator",
    "DomainEncoder",
    "FederatedResult",
    "FederatedTrainer",
    "FederatedWorker",
    "Head",
    "PaillierAggregation",
    "PlainAggregation",
    "PrivacyReport",
    "RoundContext",
    "RoundEngine",
    "RoundRecord",
    "RoundTransport",
    "SecureAggregation",
    "SeedReveal",
    "Shard",
    "Update",
    "UpdateFault",
    "WorkerIdentity",
    "make_workers",
    "reconstruction_attack",
    "split_by_load",
    "train_head",
    "train_head_task",
]


# --- data and heads -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Shard:
    """One worker's slice of the owner's embeddings ``x`` ``(n, d)`` and labels ``y`` ``(n,)``."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


def split_by_load(x: Any, y: Any, shares: Sequence[float], *, key: jax.Array) -> tuple[Shard, ...]:
    """Shuffle ``(x, y)`` and split it in proportion to each worker's declared load share.

    Counts are rounded by largest remainder, so they sum to ``len(x)`` and each differs from
    ``share * len(x)`` by less than one sample.

    Args:
        x: ``(n, d)`` embeddings.
        y: ``(n,)`` integer labels.
        shares: one positive load share per worker (normalized here).
        key: JAX PRNG key for the shuffle.

    Returns:
        One :class:`Shard` per share, in order.

    Raises:
        ShapeError: ``x`` and ``y`` disagree in length or ``x`` is not 2-D.
        ParameterError: a share is not positive and finite, or a shard would be empty.
    """
    xa, ya = np.asarray(x, np.float32), np.asarray(y)
    if xa.ndim != 2 or ya.shape != (xa.shape[0],):
        raise ShapeError(f"need x (n, d) and y (n,), got {xa.shape} and {ya.shape}")
    sh = np.asarray(shares, np.float64)
    if sh.ndim != 1 or sh.size == 0 or not np.all(np.isfinite(sh)) or np.any(sh <= 0):
        raise ParameterError(f"load shares must be positive and finite, got {list(shares)}")
    n = xa.shape[0]
    exact = sh / sh.sum() * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if np.any(counts == 0):
        raise ParameterError(f"{n} samples cannot fill {len(sh)} shards with shares {list(shares)}")
    perm = np.asarray(jax.random.permutation(key, n))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return tuple(Shard(xa[perm[a:b]], ya[perm[a:b]]) for a, b in zip(bounds[:-1], bounds[1:]))


@dataclass(frozen=True, eq=False)
class Head:
    """A softmax-regression head: ``logits = x @ weight + bias``."""

    weight: np.ndarray
    bias: np.ndarray

    @classmethod
    def zeros(cls, in_dim: int, n_classes: int) -> Head:
        """The all-zero head (a deterministic starting point for every scheme)."""
        return cls(np.zeros((in_dim, n_classes), np.float64), np.zeros((n_classes,), np.float64))

    @property
    def size(self) -> int:
        """Number of parameters."""
        return int(self.weight.size + self.bias.size)

    def flatten(self) -> np.ndarray:
        """Parameters as one float64 vector (weight row-major, then bias)."""
        return np.concatenate([self.weight.ravel(), self.bias.ravel()]).astype(np.float64)

    def unflatten(self, vec: np.ndarray) -> Head:
        """A head of this shape holding ``vec``.

        Raises:
            ShapeError: ``vec`` does not have :attr:`size` entries.
        """
        v = np.asarray(vec, np.float64)
        if v.shape != (self.size,):
            raise ShapeError(f"a head with {self.size} parameters cannot hold a vector of shape {v.shape}")
        return Head(v[: self.weight.size].reshape(self.weight.shape), v[self.weight.size :].copy())

    def predict(self, x: Any) -> np.ndarray:
        """Class predictions for ``x`` ``(n, in_dim)``."""
        return np.argmax(np.asarray(x, np.float64) @ self.weight + self.bias, axis=-1)

    def accuracy(self, x: Any, y: Any) -> float:
        """Fraction of ``x`` classified as ``y``."""
        return float(np.mean(self.predict(x) == np.asarray(y)))


@functools.partial(jax.jit, static_argnames=("epochs", "batch_size", "n_classes"))
def _train(w: jax.Array, b: jax.Array, x: jax.Array, y: jax.Array, key: jax.Array, lr: float, l2: float,
           *, epochs: int, batch_size: int | None, n_classes: int) -> tuple[jax.Array, jax.Array]:
    yo = jax.nn.one_hot(y, n_classes, dtype=jnp.float32)

    def loss(p: tuple[jax.Array, jax.Array], xb: jax.Array, yb: jax.Array) -> jax.Array:
        logp = jax.nn.log_softmax(xb @ p[0] + p[1])
        return -jnp.mean(jnp.sum(yb * logp, axis=-1)) + 0.5 * l2 * jnp.sum(p[0] ** 2)

    grad = jax.grad(loss)

    def sgd(p: Any, xb: jax.Array, yb: jax.Array) -> Any:
        return jax.tree_util.tree_map(lambda a, g: a - lr * g, p, grad(p, xb, yb))

    if batch_size is None:
        p, _ = jax.lax.scan(lambda p, _: (sgd(p, x, yo), None), (w, b), None, length=epochs)
        return p
    n = x.shape[0]
    nb = max(n // batch_size, 1)
    bs = min(batch_size, n)

    def epoch(p: Any, k: jax.Array) -> tuple[Any, None]:
        idx = jax.random.permutation(k, n)[: nb * bs].reshape(nb, bs)
        p, _ = jax.lax.scan(lambda p, i: (sgd(p, x[i], yo[i]), None), p, idx)
        return p, None

    p, _ = jax.lax.scan(epoch, (w, b), jax.random.split(key, epochs))
    return p


def _check_xy(x: Any, y: Any, in_dim: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = np.asarray(x, np.float32), np.asarray(y)
    if xa.ndim != 2 or xa.shape[1] != in_dim or ya.shape != (xa.shape[0],):
        raise ShapeError(f"need x (n, {in_dim}) and y (n,), got {xa.shape} and {ya.shape}")
    if xa.shape[0] == 0:
        raise ParameterError("cannot train on an empty shard")
    if ya.dtype.kind not in "iu" or ya.min() < 0 or ya.max() >= n_classes:
        raise ParameterError(f"labels must be integers in [0, {n_classes})")
    return xa, ya.astype(np.int32)


def train_head_task(
    head: Head,
    shard: Shard,
    *,
    epochs: int,
    lr: float,
    key: jax.Array,
    batch_size: int | None = None,
    l2: float = 1e-4,
) -> np.ndarray:
    """The worker step: train ``head`` on ``shard`` and return the parameter delta.

    A pure function of its arguments (deterministic given ``key``), so the runtime can run it as
    a task and an auditor can recompute it.

    Args:
        head: the round's global head.
        shard: this worker's embeddings and labels.
        epochs: local epochs (full-batch gradient steps when ``batch_size`` is None).
        lr: step size.
        key: JAX PRNG key; shuffles minibatches when ``batch_size`` is set.
        batch_size: minibatch size, or None for full-batch gradient descent.
        l2: L2 penalty on the weight.

    Returns:
        ``float64`` vector ``trained.flatten() - head.flatten()`` of length ``head.size``.

    Raises:
        ShapeError: the shard does not match the head's input width.
        ParameterError: empty shard, labels out of range, or a non-positive ``epochs``.
    """
    if epochs < 1:
        raise ParameterError(f"epochs must be positive, got {epochs}")
    in_dim, n_classes = head.weight.shape
    xa, ya = _check_xy(shard.x, shard.y, in_dim, n_classes)
    w, b = _train(jnp.asarray(head.weight, jnp.float32), jnp.asarray(head.bias, jnp.float32),
                  jnp.asarray(xa), jnp.asarray(ya), key, lr, l2,
                  epochs=epochs, batch_size=batch_size, n_classes=n_classes)
    trained = np.concatenate([np.asarray(w, np.float64).ravel(), np.asarray(b, np.float64)])
    return trained - head.flatten()


def train_head(x: Any, y: Any, *, n_classes: int, epochs: int, lr: float, key: jax.Array,
               batch_size: int | None = None) -> Head:
    """Centralized training of the same head on all of ``(x, y)`` (the federated baseline)."""
    xa = np.asarray(x, np.float32)
    start = Head.zeros(xa.shape[1], n_classes)
    delta = train_head_task(start, Shard(xa, np.asarray(y)), epochs=epochs, lr=lr, key=key, batch_size=batch_size)
    return start.unflatten(start.flatten() + delta)


# --- protocol messages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundContext:
    """What the coordinator announces when it opens a round.

    Attributes:
        round_id: protocol round number, strictly increasing (a redo gets a fresh id).
        participants: the workers of this round, sorted.
        weights: each participant's public weight (its sample count).
        dh_publics: each participant's X25519 public key (for mask agreement).
        size: number of parameters in an update.
        scheme: the aggregation scheme's name.
    """

    round_id: int
    participants: tuple[str, ...]
    weights: Mapping[str, float]
    dh_publics: Mapping[str, bytes]
    size: int
    scheme: str

    @property
    def total_weight(self) -> float:
        """Sum of all participants' weights."""
        return float(sum(self.weights.values()))


@dataclass(frozen=True, eq=False)
class Update:
    """A worker's signed, protected update ``weight / total_weight * delta`` for one round."""

    round_id: int
    worker_id: str
    scheme: str
    payload: Any
    signature: bytes

    def payload_bytes(self) -> bytes:
        """Canonical bytes of the payload (what the signature covers, via a hash)."""
        if isinstance(self.payload, np.ndarray):
            return self.payload.tobytes()
        out = []
        for c in self.payload:  # length-prefixed, so no two ciphertext tuples share an encoding
            raw = int(c).to_bytes((int(c).bit_length() + 7) // 8 or 1, "big")
            out.append(len(raw).to_bytes(4, "big") + raw)
        return b"".join(out)

    @property
    def nbytes(self) -> int:
        """Upload size of the payload in bytes."""
        return len(self.payload_bytes())

    def message(self) -> bytes:
        shape = self.payload.shape if isinstance(self.payload, np.ndarray) else (len(self.payload),)
        return _secagg.update_message(self.round_id, self.worker_id, self.scheme, tuple(shape), self.payload_bytes())


@dataclass(frozen=True)
class SeedReveal:
    """A survivor's signed reveal of the mask seed it shared with a dropped worker in one round."""

    round_id: int
    worker_id: str
    dropped: str
    seed: bytes
    signature: bytes


# --- aggregation schemes --------------------------------------------------------------------------


class Aggregation:
    """How a weighted update is protected by a worker and summed by the coordinator.

    Subclasses implement :meth:`protect`, :meth:`check_payload` and :meth:`combine`.
    """

    name: str = "abstract"
    #: whether a dropout after the round opened needs the survivors' seed reveals
    needs_reveals: bool = False

    def protect(self, ctx: RoundContext, identity: WorkerIdentity, weighted: np.ndarray) -> Any:
        """Worker side: turn ``weighted`` (float64, ``ctx.size``) into the payload to upload."""
        raise NotImplementedError

    def check_payload(self, ctx: RoundContext, payload: Any) -> None:
        """Coordinator side: refuse a payload of the wrong kind, shape or range.

        Raises:
            SchemeMismatchError: the payload is not of this scheme's kind or dtype.
            ShapeError: it does not hold ``ctx.size`` parameters.
            EncodingError / VerificationError: a value outside what the scheme can carry.
        """
        raise NotImplementedError

    def combine(self, ctx: RoundContext, payloads: Mapping[str, Any],
                reveals: Mapping[tuple[str, str], bytes]) -> np.ndarray:
        """Coordinator side: the float64 sum of the received weighted updates."""
        raise NotImplementedError


def _check_vector(ctx: RoundContext, payload: Any, dtype: Any) -> None:
    if not isinstance(payload, np.ndarray) or payload.dtype != dtype:
        got = payload.dtype if isinstance(payload, np.ndarray) else type(payload).__name__
        raise SchemeMismatchError(f"{ctx.scheme} updates are {np.dtype(dtype)} vectors, got {got}")
    if payload.shape != (ctx.size,):
        raise ShapeError(f"update has shape {payload.shape}, the round expects ({ctx.size},)")


class PlainAggregation(Aggregation):
    """Plain weighted FedAvg: updates travel in the clear (signed). The baseline."""

    name = "plain"

    def protect(self, ctx: RoundContext, identity: WorkerIdentity, weighted: np.ndarray) -> np.ndarray:
        return np.asarray(weighted, np.float64)

    def check_payload(self, ctx: RoundContext, payload: Any) -> None:
        _check_vector(ctx, payload, np.float64)
        if not np.all(np.isfinite(payload)):  # one NaN would poison the average of every worker
            raise EncodingError("a plain update holds non-finite values")

    def combine(self, ctx: RoundContext, payloads: Mapping[str, Any],
                reveals: Mapping[tuple[str, str], bytes]) -> np.ndarray:
        return np.sum(np.stack(list(payloads.values())), axis=0)


class SecureAggregation(Aggregation):
    """Pairwise-masked aggregation over the fixed-point ring Z_2^64 (Bonawitz-style).

    Each worker fixed-point encodes its pre-weighted update and adds, for every other
    participant, the mask expanded from their per-round X25519 seed (``+`` if its id sorts first,
    ``-`` otherwise). The masks cancel in the ring sum, so the coordinator learns the sum only.

    Limitation (single masking): a coordinator that falsely claims a worker dropped, collects the
    seeds and then uses that worker's late update could unmask it; Bonawitz's double masking
    (self-masks with Shamir-shared seeds) closes this and is not implemented. Seeds are 64-bit
    (one threefry key).

    Args:
        frac_bits: fractional bits of the fixed-point encoding (default 20: resolution ~1e-6,
            range +-2048 per weighted update entry).
    """

    name = "secure"
    needs_reveals = True

    def __init__(self, frac_bits: int = 20) -> None:
        self.fixed = FixedPoint(frac_bits)

    def _pair_seeds(self, ctx: RoundContext, identity: WorkerIdentity,
                    peers: Collection[str]) -> tuple[list[bytes], list[int]]:
        me = identity.worker_id
        seeds = [_secagg.pair_seed(identity.dh_key, ctx.dh_publics[p], ctx.round_id, me, p) for p in peers]
        signs = [1 if me < p else -1 for p in peers]
        return seeds, signs

    def protect(self, ctx: RoundContext, identity: WorkerIdentity, weighted: np.ndarray) -> np.ndarray:
        peers = [p for p in ctx.participants if p != identity.worker_id]
        seeds, signs = self._pair_seeds(ctx, identity, peers)
        return self.fixed.encode(weighted) + _secagg.signed_mask_sum(seeds, signs, ctx.size)

    def reveal(self, ctx: RoundContext, identity: WorkerIdentity, dropped: str) -> bytes:
        """The per-round seed ``identity`` shares with ``dropped`` (what a survivor reveals)."""
        return self._pair_seeds(ctx, identity, [dropped])[0][0]

    def check_payload(self, ctx: RoundContext, payload: Any) -> None:
        _check_vector(ctx, payload, np.uint64)

    def combine(self, ctx: RoundContext, payloads: Mapping[str, Any],
                reveals: Mapping[tuple[str, str], bytes]) -> np.ndarray:
        total = np.sum(np.stack(list(payloads.values())), axis=0, dtype=np.uint64)
        # Survivor s added sign(s, d) * m_sd for each dropped d: remove exactly that.
        dropped = [p for p in ctx.participants if p not in payloads]
        seeds, signs = [], []
        for d in dropped:
            for s in payloads:
                if (s, d) not in reveals:
                    raise RuntimeTaskError(f"round {ctx.round_id}: no seed reveal from {s} for dropped {d}")
                seeds.append(reveals[(s, d)])
                signs.append(-1 if s < d else 1)
        total = total + _secagg.signed_mask_sum(seeds, signs, ctx.size)
        return self.fixed.decode(total)


class PaillierAggregation(Aggregation):
    """Paillier-encrypted aggregation (``phe`` + gmpy2): the alternative to masks.

    Each worker fixed-point encodes its pre-weighted update and packs ring elements into
    plaintexts (72-bit slots: 64 bits plus carry room for up to 256 addends), then encrypts. The
    coordinator multiplies ciphertexts (adds plaintexts) and the key holder decrypts only the sum.
    Dropouts need no recovery. The key pair belongs to this object, which stands for the key
    holder (the data owner); the coordinator must never hold it. Encryption randomness comes from
    ``phe`` (OS randomness); it does not change the decrypted sum.

    Args:
        key_bits: Paillier modulus size.
        frac_bits: fractional bits of the fixed-point encoding.
    """

    name = "paillier"

    def __init__(self, key_bits: int = 2048, frac_bits: int = 20) -> None:
        import phe

        self.fixed = FixedPoint(frac_bits)
        self.public_key, self._private_key = phe.generate_paillier_keypair(n_length=key_bits)
        self.slots = _secagg.slots_per_plaintext(self.public_key.n.bit_length())

    def ciphertexts(self, size: int) -> int:
        """Ciphertexts per update of ``size`` parameters."""
        return -(-size // self.slots)

    def protect(self, ctx: RoundContext, identity: WorkerIdentity, weighted: np.ndarray) -> tuple[int, ...]:
        plain = _secagg.pack(self.fixed.encode(weighted), self.slots)
        return tuple(self.public_key.raw_encrypt(m) for m in plain)

    def check_payload(self, ctx: RoundContext, payload: Any) -> None:
        if not isinstance(payload, tuple) or not all(isinstance(c, int) for c in payload):
            raise SchemeMismatchError("paillier updates are tuples of integer ciphertexts")
        if len(payload) != self.ciphertexts(ctx.size):
            raise ShapeError(f"update has {len(payload)} ciphertexts, the round expects "
                             f"{self.ciphertexts(ctx.size)} ({ctx.size} parameters)")
        import gmpy2

        nsq, n = self.public_key.nsquare, self.public_key.n
        # a non-unit shares a factor with n: it encrypts nothing and would spoil the decrypted sum
        if any(not 0 < c < nsq or gmpy2.gcd(c, n) != 1 for c in payload):
            raise VerificationError("a ciphertext lies outside Z*_{n^2}")

    def combine(self, ctx: RoundContext, payloads: Mapping[str, Any],
                reveals: Mapping[tuple[str, str], bytes]) -> np.ndarray:
        import gmpy2

        if len(payloads) > _secagg.MAX_PACKED_ADDENDS:
            raise RuntimeTaskError("too many addends for the packed slot width")
        nsq = gmpy2.mpz(self.public_key.nsquare)
        acc = [gmpy2.mpz(c) for c in next(iter(payloads.values()))]
        for other in list(payloads.values())[1:]:
            acc = [a * c % nsq for a, c in zip(acc, other)]
        plain = [self._private_key.raw_decrypt(int(c)) for c in acc]
        return self.fixed.decode(_secagg.unpack(plain, self.slots, ctx.size))


# --- coordinator and workers ----------------------------------------------------------------------


class Coordinator:
    """Opens rounds, validates signed updates, and combines them; never sees a lone masked update
    in the clear under :class:`SecureAggregation` or :class:`PaillierAggregation`.

    Args:
        aggregation: the scheme every update of every round must use.
        registry: admitted workers, ``worker_id -> (ed25519 verify key, x25519 public key)``.
        size: parameters per update.
        first_round: the first round id. Pairwise masks are derived from the round id, so two
            sessions between the same workers must never share one: a long-lived deployment
            starts each session at a fresh random offset (the runtime does).
    """

    def __init__(self, aggregation: Aggregation, registry: Mapping[str, tuple[bytes, bytes]], size: int, *,
                 first_round: int = 0) -> None:
        if not 0 <= first_round < 2**64:  # round ids are signed as 64-bit unsigned integers
            raise ParameterError(f"first_round must be in [0, 2^64), got {first_round}")
        self.aggregation = aggregation
        self.registry = dict(registry)
        self.size = int(size)
        self._next_round = int(first_round)
        self._ctx: RoundContext | None = None
        self._received: dict[str, Update] = {}

    @property
    def current(self) -> RoundContext | None:
        """The open round, if any."""
        return self._ctx

    def open_round(self, weights: Mapping[str, float]) -> RoundContext:
        """Open a new round with ``weights`` (worker id -> public weight); earlier rounds close.

        Raises:
            AuthorizationError: a worker is not in the registry.
            ParameterError: fewer than 2 participants or a non-positive weight.
        """
        unknown = sorted(set(weights) - set(self.registry))
        if unknown:
            raise AuthorizationError(f"workers not admitted: {unknown}")
        if len(weights) < 2:
            raise ParameterError("a round needs at least 2 participants (one would have no one to hide among)")
        if any(not (w > 0 and math.isfinite(w)) for w in weights.values()):
            raise ParameterError("weights must be positive and finite")
        parts = tuple(sorted(weights))
        self._ctx = RoundContext(self._next_round, parts, dict(weights),
                                 {p: self.registry[p][1] for p in parts}, self.size, self.aggregation.name)
        self._next_round += 1
        self._received = {}
        return self._ctx

    def _open(self) -> RoundContext:
        if self._ctx is None:
            raise ReplayError("no round is open")
        return self._ctx

    def receive(self, update: Update) -> None:
        """Validate and accept one update for the open round. Fail closed.

        Raises:
            AuthorizationError: the sender is unknown or not a participant of this round.
            VerificationError: the signature does not verify.
            ReplayError: the update is for another round, or this worker already sent one.
            SchemeMismatchError: the update uses another scheme or payload kind.
            ShapeError: the payload has the wrong shape.
            EncodingError: a plain payload holds non-finite values.
            SerializationError: ``update`` is not an :class:`Update`.
        """
        self._open()
        if not isinstance(update, Update):
            raise SerializationError(f"an update must be an Update, got {type(update).__name__}")
        if update.worker_id not in self.registry:
            raise AuthorizationError(f"unknown worker {update.worker_id!r}")
        _secagg.verify(self.registry[update.worker_id][0], update.message(), update.signature,
                       what=f"update from {update.worker_id!r}")
        self._admit(update)

    def _admit(self, update: Update) -> None:
        """Every check of :meth:`receive` but the signature, then accept ``update``.

        For a transport that authenticates senders itself (:class:`RoundEngine` calls it when
        :attr:`RoundTransport.authenticates_senders` is set); same errors as :meth:`receive`.
        """
        ctx = self._open()
        if not isinstance(update, Update):
            raise SerializationError(f"an update must be an Update, got {type(update).__name__}")
        if update.worker_id not in self.registry:
            raise AuthorizationError(f"unknown worker {update.worker_id!r}")
        if update.round_id != ctx.round_id:
            raise ReplayError(f"update from {update.worker_id!r} is for round {update.round_id}, "
                              f"round {ctx.round_id} is open")
        if update.worker_id not in ctx.participants:
            raise AuthorizationError(f"worker {update.worker_id!r} is not a participant of round {ctx.round_id}")
        if update.worker_id in self._received:
            raise ReplayError(f"worker {update.worker_id!r} already sent its round-{ctx.round_id} update")
        if update.scheme != ctx.scheme:
            raise SchemeMismatchError(f"update uses scheme {update.scheme!r}, the round uses {ctx.scheme!r}")
        self.aggregation.check_payload(ctx, update.payload)
        self._received[update.worker_id] = update

    def _check_reveal(self, r: SeedReveal) -> None:
        """Refuse a seed reveal that is unexpected, forged or for another round (see :meth:`finish`)."""
        ctx = self._open()
        if not isinstance(r, SeedReveal):
            raise SerializationError(f"a seed reveal must be a SeedReveal, got {type(r).__name__}")
        if r.worker_id not in self._received or r.dropped not in self.missing():
            raise AuthorizationError(f"reveal from {r.worker_id!r} about {r.dropped!r} is not expected")
        _secagg.verify(self.registry[r.worker_id][0],
                       _secagg.reveal_message(r.round_id, r.worker_id, r.dropped, r.seed), r.signature,
                       what=f"seed reveal from {r.worker_id!r}")
        if r.round_id != ctx.round_id:
            raise ReplayError(f"seed reveal is for round {r.round_id}, round {ctx.round_id} is open")

    def missing(self) -> tuple[str, ...]:
        """Participants of the open round whose update has not arrived."""
        ctx = self._open()
        return tuple(p for p in ctx.participants if p not in self._received)

    def abandon(self) -> None:
        """Close the open round without combining anything (it will be redone under a new id)."""
        self._open()
        self._ctx = None
        self._received = {}

    def finish(self, reveals: Sequence[SeedReveal] = ()) -> tuple[np.ndarray, float]:
        """Combine the received updates and close the round.

        Args:
            reveals: for :class:`SecureAggregation` with dropouts, every survivor's signed seed
                reveal for every dropped worker.

        Returns:
            ``(mean_delta, survivor_weight_fraction)``: the weighted average of the survivors'
            deltas (renormalized over the survivors' weights), and the fraction of the round's
            weight that arrived.

        Raises:
            RuntimeTaskError: fewer than 2 updates arrived, or a needed reveal is missing.
            VerificationError / ReplayError / AuthorizationError: a reveal is forged, for
                another round, or from a worker that is not a survivor.
        """
        ctx = self._open()
        if len(self._received) < 2:
            raise RuntimeTaskError(f"round {ctx.round_id}: {len(self._received)} update(s) arrived, need 2")
        seeds: dict[tuple[str, str], bytes] = {}
        for r in reveals:
            self._check_reveal(r)
            seeds[(r.worker_id, r.dropped)] = r.seed
        payloads = {w: u.payload for w, u in sorted(self._received.items())}
        total = self.aggregation.combine(ctx, payloads, seeds)
        arrived = sum(ctx.weights[w] for w in payloads) / ctx.total_weight
        self._ctx = None
        self._received = {}
        return total / arrived, arrived


@dataclass(frozen=True, eq=False)
class FederatedWorker:
    """A worker node: its identity and its shard of the owner's embeddings."""

    identity: WorkerIdentity
    shard: Shard

    @property
    def worker_id(self) -> str:
        return self.identity.worker_id

    def make_update(self, ctx: RoundContext, aggregation: Aggregation, delta: np.ndarray) -> Update:
        """Weight ``delta`` by this worker's share of the round, protect it, and sign it.

        Raises:
            AuthorizationError: this worker is not a participant of ``ctx``.
            EncodingError / OverflowRangeError: the weighted delta is not finite or out of the
                fixed-point range (a diverged worker is refused rather than wrapped).
        """
        if self.worker_id not in ctx.participants:
            raise AuthorizationError(f"worker {self.worker_id!r} is not a participant of round {ctx.round_id}")
        weighted = np.asarray(delta, np.float64) * (ctx.weights[self.worker_id] / ctx.total_weight)
        payload = aggregation.protect(ctx, self.identity, weighted)
        unsigned = Update(ctx.round_id, self.worker_id, aggregation.name, payload, b"")
        return Update(ctx.round_id, self.worker_id, aggregation.name, payload,
                      _secagg.sign(self.identity, unsigned.message()))

    def reveal(self, ctx: RoundContext, aggregation: SecureAggregation, dropped: str) -> SeedReveal:
        """Reveal (signed) the mask seed shared with ``dropped`` for this round only."""
        seed = aggregation.reveal(ctx, self.identity, dropped)
        msg = _secagg.reveal_message(ctx.round_id, self.worker_id, dropped, seed)
        return SeedReveal(ctx.round_id, self.worker_id, dropped, seed, _secagg.sign(self.identity, msg))


def make_workers(shards: Sequence[Shard], *, key: jax.Array, prefix: str = "worker") -> list[FederatedWorker]:
    """One :class:`FederatedWorker` per shard, ids ``f"{prefix}-{i}"``, keys derived from ``key``.

    Deriving long-term keys from a JAX key is for reproducible simulations; a deployed worker
    uses :meth:`WorkerIdentity.from_seed` with ``os.urandom(32)``.
    """
    out = []
    for i, shard in enumerate(shards):
        seed = np.asarray(jax.random.bits(jax.random.fold_in(key, i), (8,), jnp.uint32)).astype("<u4").tobytes()
        out.append(FederatedWorker(WorkerIdentity.from_seed(f"{prefix}-{i}", seed=seed), shard))
    return out


# --- the trainer ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FederatedResult:
    """The trained head and the per-round history."""

    head: Head
    history: tuple[RoundRecord, ...] = field(default_factory=tuple)


class _InProcessTransport:
    """The in-process :class:`RoundTransport` of one logical round: it calls the worker objects.

    Each worker's local step runs once per logical round, on the round's starting head; a redo
    protects the same delta again under the new round's masks and weights.
    """

    authenticates_senders = False  # every update carries its worker's Ed25519 signature

    def __init__(self, trainer: FederatedTrainer, head: Head, key: jax.Array, drop: Collection[str]) -> None:
        self._trainer, self._head, self._key, self._drop = trainer, head, key, frozenset(drop)
        self._deltas: dict[str, np.ndarray] | None = None

    def _local_steps(self) -> dict[str, np.ndarray]:
        if self._deltas is None:
            t = self._trainer
            self._deltas = {
                wid: t.task(self._head, t.workers[wid].shard, epochs=t.local_epochs, lr=t.lr,
                            key=jax.random.fold_in(self._key, i), batch_size=t.batch_size)
                for i, wid in enumerate(sorted(t.workers)) if wid not in self._drop
            }
        return self._deltas

    def collect(self, ctx: RoundContext) -> dict[str, Any]:
        deltas, workers, agg = self._local_steps(), self._trainer.workers, self._trainer.aggregation
        replies: dict[str, Any] = {}
        for wid in ctx.participants:
            if wid in deltas:
                try:
                    replies[wid] = workers[wid].make_update(ctx, agg, deltas[wid])
                except EdilError as exc:  # e.g. a diverged delta out of the fixed-point range: refused
                    replies[wid] = exc
        return replies

    def decode(self, ctx: RoundContext, worker_id: str, reply: Any) -> Update:
        if isinstance(reply, EdilError):
            raise reply
        if not isinstance(reply, Update):
            raise SerializationError(f"{worker_id!r} replied with a {type(reply).__name__}, not an Update")
        return reply  # the coordinator checks its signature, round, shape and range

    def refused(self, ctx: RoundContext, fault: UpdateFault) -> None:
        """Nothing to do: the engine keeps the fault in the round's record."""

    def reveals(self, ctx: RoundContext, dropped: Sequence[str], survivors: Sequence[str]) -> list[SeedReveal] | None:
        agg = self._trainer.aggregation
        if not isinstance(agg, SecureAggregation):
            return None
        out = []
        for d in dropped:
            for s in survivors:
                try:
                    out.append(self._trainer.workers[s].reveal(ctx, agg, d))
                except EdilError:  # a survivor that cannot reveal counts as gone; the round is redone
                    continue
        return out


class FederatedTrainer:
    """Runs federated rounds in-process: local training, protected upload, weighted averaging.

    The rounds run through :class:`RoundEngine`: a worker whose update is malformed (wrong
    shape or dtype, non-finite, out of range, replayed, badly signed) counts as a dropout and the
    refusal is kept in :attr:`RoundRecord.faults`.

    Args:
        workers: the workers (each with its shard); weights are their shard sizes.
        aggregation: :class:`PlainAggregation`, :class:`SecureAggregation` or
            :class:`PaillierAggregation`.
        n_classes: number of classes of the head.
        local_epochs: local epochs per round.
        lr: local step size.
        batch_size: local minibatch size, or None for full batch.
        dropout: ``"recover"`` (survivors reveal seeds with the dropped workers) or ``"redo"``
            (the round is run again, with fresh masks, among the survivors).
        task: the worker step, ``train_head_task`` by default (a runtime can wrap it).

    Raises:
        ValueError: an unknown dropout policy, or duplicate worker ids (a ParameterError).
    """

    def __init__(
        self,
        workers: Sequence[FederatedWorker],
        aggregation: Aggregation,
        *,
        n_classes: int,
        local_epochs: int = 5,
        lr: float = 0.5,
        batch_size: int | None = None,
        dropout: Literal["recover", "redo"] = "recover",
        task: Callable[..., np.ndarray] = train_head_task,
    ) -> None:
        ids = [w.worker_id for w in workers]
        if len(set(ids)) != len(ids):
            raise ParameterError("worker ids must be unique")
        self.workers = {w.worker_id: w for w in workers}
        self.aggregation = aggregation
        in_dim = int(np.asarray(workers[0].shard.x).shape[1])
        self.head = Head.zeros(in_dim, n_classes)
        self.local_epochs, self.lr, self.batch_size = local_epochs, lr, batch_size
        self.dropout = dropout
        self.task = task
        self.coordinator = Coordinator(
            aggregation, {w.worker_id: (w.identity.verify_key, w.identity.dh_public) for w in workers},
            self.head.size)
        self.engine = RoundEngine(self.coordinator, dropout=dropout)

    def run_round(self, index: int, *, key: jax.Array, drop: Collection[str] = (),
                  eval_data: tuple[Any, Any] | None = None) -> RoundRecord:
        """Run logical round ``index``; workers in ``drop`` vanish after the round opened.

        Raises:
            RuntimeTaskError: fewer than 2 workers are left to finish the round.
        """
        weights = {w: float(len(self.workers[w].shard)) for w in sorted(self.workers)}
        transport = _InProcessTransport(self, self.head, key, drop)
        self.head, record = self.engine.round(index, self.head, weights, transport, eval_data=eval_data)
        return record

    def run(self, rounds: int, *, key: jax.Array, eval_data: tuple[Any, Any] | None = None,
            drop: Mapping[int, Collection[str]] | None = None, progress: bool = False,
            print_fn: Callable[[str], None] | None = None) -> FederatedResult:
        """Run ``rounds`` logical rounds.

        Args:
            rounds: number of rounds.
            key: JAX PRNG key; round ``r`` uses ``fold_in(key, r)``.
            eval_data: ``(x, y)`` to report accuracy after each round.
            drop: logical round -> workers that drop out during it (simulation).
            progress: show a tqdm progress bar with the latest accuracy.
            print_fn: called with one line per round.

        Returns:
            A :class:`FederatedResult`.

        Raises:
            RuntimeTaskError: fewer than 2 workers are left to finish a round.
        """
        history = self.engine.run(
            range(rounds),
            lambda r: self.run_round(r, key=jax.random.fold_in(key, r), drop=(drop or {}).get(r, ()),
                                     eval_data=eval_data),
            label=f"federated ({self.aggregation.name})", progress=progress, print_fn=print_fn)
        return FederatedResult(self.head, tuple(history))
