"""``Plain``: the plaintext reference scheme. Every other scheme is tested against it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edil._scheme import Encoded, Scheme

__all__ = ["Plain", "PlainTensor"]


@dataclass(frozen=True)
class PlainTensor(Encoded):
    """A plaintext value (float64), wrapped so it travels like any encoded value."""

    data: np.ndarray


class Plain(Scheme):
    """The reference scheme: float64 numpy, no privacy. Supports every operation.

    Example:
        >>> from edil import Plain
        >>> s = Plain()
        >>> s.decode(s.polyval(s.encode([2.0]), [1.0, 0.0, 1.0])).tolist()
        [5.0]
    """

    name = "plain"

    @property
    def scheme_id(self) -> str:
        return "plain"

    def _wrap(self, data: np.ndarray) -> PlainTensor:
        return PlainTensor(self.scheme_id, tuple(data.shape), data)

    def encode(self, x: Any) -> PlainTensor:
        arr = self.real_array(x)
        arr.setflags(write=False)
        return self._wrap(arr)

    def encode_weights(self, w: Any) -> PlainTensor:
        """Weights in the clear, as :meth:`encode` (Plain hides nothing)."""
        return self.encode(w)

    def decode(self, value: Encoded) -> np.ndarray:
        self.check(value)
        return np.array(value.data)  # type: ignore[attr-defined]

    def add(self, a: Encoded, b: Encoded) -> PlainTensor:
        self.check(a, b)
        self.check_broadcast(a, b, "add")
        return self._wrap(a.data + b.data)  # type: ignore[attr-defined]

    def sub(self, a: Encoded, b: Encoded) -> PlainTensor:
        self.check(a, b)
        self.check_broadcast(a, b, "sub")
        return self._wrap(a.data - b.data)  # type: ignore[attr-defined]

    def add_public(self, a: Encoded, p: Any) -> PlainTensor:
        self.check(a)
        return self._wrap(a.data + self.public_array(p, a.shape, "add_public"))  # type: ignore[attr-defined]

    def mul_public(self, a: Encoded, p: Any) -> PlainTensor:
        self.check(a)
        return self._wrap(a.data * self.public_array(p, a.shape, "mul_public"))  # type: ignore[attr-defined]

    def matmul_public(self, a: Encoded, w: Any) -> PlainTensor:
        self.check(a)
        w = np.asarray(w, dtype=np.float64)
        self.check_matmul_shapes(a.shape, w.shape, "matmul_public")
        return self._wrap(a.data @ w)  # type: ignore[attr-defined]

    def sum(self, a: Encoded, axis: int) -> PlainTensor:
        self.check(a)
        ax = self.check_axis(a.shape, axis, "sum")
        return self._wrap(a.data.sum(axis=ax))  # type: ignore[attr-defined]

    def mul(self, a: Encoded, b: Encoded) -> PlainTensor:
        self.check(a, b)
        self.check_same_shape(a, b, "mul")
        return self._wrap(a.data * b.data)  # type: ignore[attr-defined]

    def matmul(self, a: Encoded, b: Encoded) -> PlainTensor:
        self.check(a, b)
        self.check_matmul_shapes(a.shape, b.shape, "matmul")
        return self._wrap(a.data @ b.data)  # type: ignore[attr-defined]

    def maximum(self, a: Encoded, b: Encoded) -> PlainTensor:
        """Elementwise maximum: a comparison, which only the plaintext scheme has (MaxPool uses it)."""
        self.check(a, b)
        self.check_same_shape(a, b, "maximum")
        return self._wrap(np.maximum(a.data, b.data))  # type: ignore[attr-defined]

    def polyval(self, a: Encoded, coeffs: Sequence[float]) -> PlainTensor:
        self.check(a)
        c = np.asarray(coeffs, dtype=np.float64)
        return self._wrap(np.asarray(np.polynomial.polynomial.polyval(a.data, c)))  # type: ignore[attr-defined]


def params_hash(params: dict[str, Any]) -> bytes:
    """SHA-256 of the canonical JSON of a scheme's public parameters."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, separators=(",", ":")).encode()).digest()
