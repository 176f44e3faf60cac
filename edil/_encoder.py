"""The domain encoder: a small JAX auto-encoder whose embeddings leave the data owner.

An embedding is an *encoding*, not encryption. :func:`reconstruction_attack` measures how much
of the input an attacker recovers from embeddings alone, against a baseline that only knows
public data of the same domain. Publish that number next to any use of the encoder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edil._errors import EncodingError, ParameterError, SerializationError, ShapeError, UnsupportedOperationError
from edil._scheme import json_from_untrusted

_FORMAT = "edil.domain_encoder.v1"

Layers = tuple[tuple[np.ndarray, np.ndarray], ...]


def _init_mlp(key: jax.Array, sizes: list[int]) -> list[tuple[jax.Array, jax.Array]]:
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (jax.random.normal(k, (a, b), jnp.float32) * jnp.sqrt(1.0 / a), jnp.zeros((b,), jnp.float32))
        for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]


def _mlp(params: Any, x: jax.Array, *, final_tanh: bool) -> jax.Array:
    for i, (w, b) in enumerate(params):
        x = x @ w + b
        if i < len(params) - 1 or final_tanh:
            x = jnp.tanh(x)
    return x


def _adam(loss_fn: Any, params: Any, *, steps: int, lr: float) -> tuple[Any, jax.Array]:
    """Full-batch Adam for ``steps`` steps inside one ``lax.scan`` (deterministic)."""
    grad = jax.value_and_grad(loss_fn)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)

    def step(carry: Any, t: jax.Array) -> tuple[Any, jax.Array]:
        p, m, v = carry
        loss, g = grad(p)
        m = jax.tree_util.tree_map(lambda m_, g_: 0.9 * m_ + 0.1 * g_, m, g)
        v = jax.tree_util.tree_map(lambda v_, g_: 0.999 * v_ + 0.001 * g_ * g_, v, g)
        c1 = 1.0 - 0.9 ** (t + 1.0)
        c2 = 1.0 - 0.999 ** (t + 1.0)
        p = jax.tree_util.tree_map(lambda p_, m_, v_: p_ - lr * (m_ / c1) / (jnp.sqrt(v_ / c2) + 1e-8), p, m, v)
        return (p, m, v), loss

    (params, _, _), losses = jax.lax.scan(step, (params, zeros, zeros), jnp.arange(steps, dtype=jnp.float32))
    return params, losses


def _check_training(*, lr: Any, **sizes: Any) -> None:
    """Refuse sizes and step counts that are not ints >= 1, and a step size that is not a finite positive number."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise UnsupportedOperationError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ParameterError(f"{name} must be >= 1, got {value}")
    try:  # a Python, NumPy or JAX scalar; not a flag or a string that float() would also read
        step = float(lr) if not isinstance(lr, bool | str | bytes) else None
    except (TypeError, ValueError):
        step = None
    if step is None:
        raise UnsupportedOperationError(f"lr must be a number, got {type(lr).__name__}")
    if not (math.isfinite(step) and step > 0):
        raise ParameterError(f"lr must be a finite number > 0, got {lr}")


def _as_2d(x: Any, in_dim: int | None, what: str) -> jax.Array:
    try:
        arr = np.asarray(x, dtype=np.float32)
    except TypeError as exc:  # objects that have no float value
        raise UnsupportedOperationError(f"{what} cannot be read as a float array: {exc}") from None
    except ValueError as exc:  # ragged rows, strings that are not numbers
        raise EncodingError(f"{what} cannot be read as a float array: {exc}") from None
    if arr.ndim != 2 or (in_dim is not None and arr.shape[1] != in_dim):
        want = f"(n, {in_dim})" if in_dim is not None else "(n, d)"
        raise ShapeError(f"{what} must have shape {want}, got {arr.shape}")
    return jnp.asarray(arr)


def _to_numpy(layers: Any) -> Layers:
    return tuple((np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in layers)


@dataclass(frozen=True, eq=False)
class DomainEncoder:
    """A trained auto-encoder: ``encode`` maps inputs to bounded embeddings (tanh), ``decode`` back.

    Train it with :meth:`train` on the data owner's own data. The embeddings, never the raw
    inputs, are what leaves the data owner; they are *not* encrypted (see
    :func:`edil.federated.reconstruction_attack`).

    Example:
        >>> import jax, numpy as np
        >>> x = np.random.default_rng(0).random((64, 8))
        >>> enc = DomainEncoder.train(x, embed_dim=3, hidden=16, epochs=10, key=jax.random.key(0))
        >>> enc.encode(x).shape
        (64, 3)
    """

    encoder: Layers
    decoder: Layers

    @property
    def in_dim(self) -> int:
        """Input width."""
        return int(self.encoder[0][0].shape[0])

    @property
    def embed_dim(self) -> int:
        """Embedding width."""
        return int(self.encoder[-1][0].shape[1])

    @classmethod
    def train(
        cls,
        x: Any,
        *,
        embed_dim: int = 16,
        hidden: int = 64,
        epochs: int = 2000,
        lr: float = 1e-2,
        key: jax.Array,
    ) -> DomainEncoder:
        """Train an auto-encoder ``in -> hidden -> embed -> hidden -> in`` by full-batch Adam.

        Args:
            x: ``(n, d)`` training inputs (the owner's own data), ideally scaled to about [0, 1].
            embed_dim: embedding width.
            hidden: hidden layer width of encoder and decoder.
            epochs: full-batch Adam steps.
            lr: Adam step size.
            key: JAX PRNG key for the initial weights; same key, same data -> same encoder.

        Returns:
            The trained :class:`DomainEncoder`.

        Raises:
            ShapeError: ``x`` is not a 2-D array.
            EncodingError: ``x`` cannot be read as a float array (ragged rows, strings).
            ParameterError: a size or step count is below 1, or ``lr`` is not a finite positive number.
            UnsupportedOperationError: a size or step count is not an int, ``lr`` not a number, or
                ``x`` holds objects that have no float value.
        """
        xj = _as_2d(x, None, "x")
        _check_training(embed_dim=embed_dim, hidden=hidden, epochs=epochs, lr=lr)
        d = int(xj.shape[1])
        ke, kd = jax.random.split(key)
        params = (_init_mlp(ke, [d, hidden, embed_dim]), _init_mlp(kd, [embed_dim, hidden, d]))

        def loss(p: Any) -> jax.Array:
            z = _mlp(p[0], xj, final_tanh=True)
            return jnp.mean((_mlp(p[1], z, final_tanh=False) - xj) ** 2)

        trained, _ = jax.jit(lambda p: _adam(loss, p, steps=epochs, lr=lr))(params)
        return cls(encoder=_to_numpy(trained[0]), decoder=_to_numpy(trained[1]))

    def encode(self, x: Any) -> np.ndarray:
        """Embeddings ``(n, embed_dim)`` in ``[-1, 1]`` of inputs ``(n, in_dim)``.

        Raises:
            ShapeError: ``x`` does not have ``in_dim`` columns.
            EncodingError: ``x`` cannot be read as a float array.
        """
        return np.asarray(_mlp(self.encoder, _as_2d(x, self.in_dim, "x"), final_tanh=True))

    def decode(self, z: Any) -> np.ndarray:
        """The owner's reconstruction ``(n, in_dim)`` of embeddings ``(n, embed_dim)``.

        Raises:
            ShapeError: ``z`` does not have ``embed_dim`` columns.
            EncodingError: ``z`` cannot be read as a float array.
        """
        return np.asarray(_mlp(self.decoder, _as_2d(z, self.embed_dim, "z"), final_tanh=False))

    def save(self, path: str | Path) -> None:
        """Write the encoder to ``path`` (an ``.npz`` file, no pickle)."""
        arrays: dict[str, Any] = {}  # Any: numpy's stub reads ``**kwds`` of savez as its allow_pickle flag
        for part, layers in (("encoder", self.encoder), ("decoder", self.decoder)):
            for i, (w, b) in enumerate(layers):
                arrays[f"{part}_{i}_w"] = w
                arrays[f"{part}_{i}_b"] = b
        meta = {"format": _FORMAT, "encoder_layers": len(self.encoder), "decoder_layers": len(self.decoder)}
        with open(path, "wb") as f:
            np.savez(f, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> DomainEncoder:
        """Read an encoder written by :meth:`save`.

        Raises:
            SerializationError: the file is not a saved encoder, is truncated or inconsistent.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json_from_untrusted(bytes(data["__meta__"]))  # depth-safe: the file may come from anyone
                if meta.get("format") != _FORMAT:
                    raise SerializationError(f"{path} is not an EDIL domain encoder ({meta.get('format')!r})")
                parts = {
                    part: tuple(
                        (np.asarray(data[f"{part}_{i}_w"], np.float32), np.asarray(data[f"{part}_{i}_b"], np.float32))
                        for i in range(int(meta[f"{part}_layers"]))
                    )
                    for part in ("encoder", "decoder")
                }
        except SerializationError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to parse is a corrupt file
            raise SerializationError(f"cannot read a domain encoder from {path}: {exc}") from exc
        enc = cls(encoder=parts["encoder"], decoder=parts["decoder"])
        dims = [w.shape for w, _ in enc.encoder + enc.decoder]
        chained = all(a[1] == b[0] for a, b in zip(dims[:-1], dims[1:]))
        if not chained or dims[0][0] != dims[-1][1]:
            raise SerializationError(f"inconsistent layer shapes in {path}: {dims}")
        return enc


@dataclass(frozen=True)
class PrivacyReport:
    """How well embeddings can be inverted; MSEs are per pixel/feature on the private inputs.

    Attributes:
        attack_mse: error of an attacker's decoder trained on public data of the domain,
            applied to the private embeddings.
        baseline_mse: error of the best constant guess from public data alone (its mean).
        owner_decoder_mse: error of the owner's own decoder (what leaks if it is stolen).
        attack_to_baseline: ``attack_mse / baseline_mse``; 1.0 means embeddings reveal nothing
            to this attacker, 0.0 means perfect reconstruction.
        public_samples: samples the attacker trained on.
        private_samples: samples attacked.
    """

    attack_mse: float
    baseline_mse: float
    owner_decoder_mse: float
    attack_to_baseline: float
    public_samples: int
    private_samples: int


def reconstruction_attack(
    encoder: DomainEncoder,
    public_x: Any,
    private_x: Any,
    *,
    hidden: int = 64,
    epochs: int = 2000,
    lr: float = 1e-2,
    key: jax.Array,
) -> PrivacyReport:
    """Measure the reconstruction attack on embeddings, against a public-data baseline.

    Threat model: the attacker sees the embeddings of ``private_x`` and can obtain embeddings of
    its own ``public_x`` (same domain, disjoint samples), e.g. by querying the encoder or because
    the encoder's weights ship with the embeddings. It trains a decoder on
    ``(encode(public_x), public_x)`` and applies it to the private embeddings.

    Args:
        encoder: the owner's trained encoder.
        public_x: ``(m, d)`` public data of the same domain (the attacker's training set).
        private_x: ``(n, d)`` the owner's inputs whose embeddings leak.
        hidden: width of the attacker's decoder.
        epochs: full-batch Adam steps for the attacker.
        lr: Adam step size.
        key: JAX PRNG key for the attacker's initial weights.

    Returns:
        A :class:`PrivacyReport`.

    Raises:
        ShapeError: inputs do not have ``encoder.in_dim`` columns.
        EncodingError: an input cannot be read as a float array.
        ParameterError: ``hidden`` or ``epochs`` is below 1, or ``lr`` is not a finite positive number.
        UnsupportedOperationError: ``hidden`` or ``epochs`` is not an int, or ``lr`` not a number.
    """
    _check_training(hidden=hidden, epochs=epochs, lr=lr)
    pub = _as_2d(public_x, encoder.in_dim, "public_x")
    priv = np.asarray(_as_2d(private_x, encoder.in_dim, "private_x"))
    z_pub = jnp.asarray(encoder.encode(pub))
    params = _init_mlp(key, [encoder.embed_dim, hidden, encoder.in_dim])

    def loss(p: Any) -> jax.Array:
        return jnp.mean((_mlp(p, z_pub, final_tanh=False) - pub) ** 2)

    attacker, _ = jax.jit(lambda p: _adam(loss, p, steps=epochs, lr=lr))(params)
    z_priv = jnp.asarray(encoder.encode(priv))
    recon = np.asarray(_mlp(attacker, z_priv, final_tanh=False))
    attack = float(np.mean((recon - priv) ** 2))
    baseline = float(np.mean((np.asarray(pub).mean(axis=0) - priv) ** 2))
    owner = float(np.mean((encoder.decode(z_priv) - priv) ** 2))
    return PrivacyReport(
        attack_mse=attack,
        baseline_mse=baseline,
        owner_decoder_mse=owner,
        attack_to_baseline=attack / baseline if baseline > 0 else float("nan"),
        public_samples=int(pub.shape[0]),
        private_samples=int(priv.shape[0]),
    )
