"""The ``Scheme`` interface every encoding implements, and the encoded-value base type.

A scheme turns plaintext arrays into *encoded* values (shares, ciphertexts, or the plaintext
itself for the reference) and computes on them. Every operation a model needs is a method
here; a scheme that cannot do one raises :class:`~edil.UnsupportedOperationError` naming the
scheme and the operation, so callers see a clean refusal instead of a library traceback.

Conventions shared by all schemes:

* Encoded values are immutable and remember which scheme instance (``scheme_id``) made them;
  mixing values across schemes or parameter sets raises :class:`~edil.SchemeMismatchError`.
* Shapes follow numpy: ``matmul_public(x, w)`` takes ``x`` of shape ``(batch, k)`` and ``w`` of
  shape ``(k, n)``; elementwise public operands broadcast against the encoded shape.
* ``polyval(x, coeffs)`` evaluates ``sum(coeffs[i] * x**i)`` (lowest degree first).
"""

from __future__ import annotations

import abc
import builtins
import hashlib
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, overload

import numpy as np

from edil._errors import (
    EncodingError,
    OverflowRangeError,
    SchemeMismatchError,
    ShapeError,
    UnsupportedOperationError,
)

__all__ = ["Encoded", "Scheme", "SchemeStats"]


@dataclass(frozen=True)
class Encoded:
    """Base of every encoded value. Subclasses add the payload (shares, ciphertexts...)."""

    scheme_id: str
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass
class SchemeStats:
    """Running cost counters of a scheme instance (reset with :meth:`reset`).

    Attributes:
        bytes_opened: bytes sent between parties to open masked values (``Masked``).
        openings: number of opening rounds.
        triples: Beaver triples (elementwise count) consumed.
        ciphertexts: ciphertexts produced by ``encode`` (HE schemes).
    """

    bytes_opened: int = 0
    openings: int = 0
    triples: int = 0
    ciphertexts: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.bytes_opened = self.openings = self.triples = self.ciphertexts = 0
        self.extra.clear()


class Scheme(abc.ABC):
    """Abstract encoding scheme. See the module docstring for the shared conventions."""

    #: Human-readable scheme name, e.g. ``"masked"``.
    name: ClassVar[str] = "scheme"

    def __init__(self) -> None:
        self.stats = SchemeStats()

    # --- identity -----------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def scheme_id(self) -> str:
        """Identifier of this scheme *and* its parameters; encoded values carry it."""

    @property
    def params(self) -> dict[str, Any]:
        """Public parameters, canonical and JSON-serializable (hashed into transcripts)."""
        return {"scheme": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if k != "scheme")
        return f"{type(self).__name__}({args})"

    # --- encode / decode ------------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, x: Any) -> Encoded:
        """Encode (share / encrypt) a real array."""

    @abc.abstractmethod
    def decode(self, value: Encoded) -> np.ndarray:
        """Decode (reconstruct / decrypt) back to a ``float64`` array."""

    def encode_weights(self, w: Any) -> Encoded:
        """Encode model weights for model privacy. Default: unsupported."""
        raise self.unsupported("encode_weights (private model weights)")

    # --- linear algebra -------------------------------------------------------------------------
    @abc.abstractmethod
    def add(self, a: Encoded, b: Encoded) -> Encoded:
        """Encoded + encoded; ``b`` may broadcast to ``a``'s shape (e.g. a bias)."""

    @abc.abstractmethod
    def sub(self, a: Encoded, b: Encoded) -> Encoded:
        """Encoded - encoded; ``b`` may broadcast to ``a``'s shape."""

    @abc.abstractmethod
    def add_public(self, a: Encoded, p: Any) -> Encoded:
        """Encoded + public array (broadcast)."""

    @abc.abstractmethod
    def mul_public(self, a: Encoded, p: Any) -> Encoded:
        """Encoded * public array, elementwise (broadcast)."""

    @abc.abstractmethod
    def matmul_public(self, a: Encoded, w: Any) -> Encoded:
        """Encoded ``(batch, k)`` @ public ``(k, n)``."""

    @abc.abstractmethod
    def sum(self, a: Encoded, axis: int) -> Encoded:
        """Sum along one axis."""

    def mul(self, a: Encoded, b: Encoded) -> Encoded:
        """Encoded * encoded, elementwise. Default: unsupported."""
        raise self.unsupported("mul (product of two encoded values)")

    def matmul(self, a: Encoded, b: Encoded) -> Encoded:
        """Encoded @ encoded (e.g. private weights). Default: unsupported."""
        raise self.unsupported("matmul (product of two encoded matrices)")

    def polyval(self, a: Encoded, coeffs: Sequence[float]) -> Encoded:
        """Evaluate ``sum(coeffs[i] * a**i)`` elementwise. Default: unsupported."""
        raise self.unsupported("polyval (polynomial activation)")

    # --- helpers for implementations ------------------------------------------------------------
    def unsupported(self, what: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(f"scheme {self.name!r} does not support {what}")

    def check(self, *values: Encoded) -> None:
        """Raise unless every value was produced by this scheme instance's parameters."""
        for v in values:
            if not isinstance(v, Encoded):
                raise UnsupportedOperationError(f"expected an encoded value of scheme {self.name!r}, got {type(v).__name__}")
            if v.scheme_id != self.scheme_id:
                raise SchemeMismatchError(
                    f"value encoded under {v.scheme_id!r} used with scheme {self.scheme_id!r}"
                )

    @staticmethod
    def check_same_shape(a: Encoded, b: Encoded, op: str) -> None:
        if a.shape != b.shape:
            raise ShapeError(f"{op}: shapes {a.shape} and {b.shape} differ")

    @staticmethod
    def check_broadcast(a: Encoded, b: Encoded, op: str) -> None:
        """Raise unless ``b``'s shape broadcasts to ``a``'s without growing it."""
        try:
            out = np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            out = None
        if out != a.shape:
            raise ShapeError(f"{op}: shape {b.shape} does not broadcast to {a.shape}")

    @staticmethod
    def real_array(x: Any, *, nonempty: bool = False) -> np.ndarray:
        """``x`` as a fresh float64 array, refusing what no scheme can encode.

        Raises:
            EncodingError: non-numeric, NaN or inf, or (with ``nonempty``) an empty array.
        """
        try:
            arr = np.array(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise EncodingError(f"cannot encode a value of type {type(x).__name__}") from exc
        if not np.all(np.isfinite(arr)):
            raise EncodingError("cannot encode non-finite values (NaN or inf)")
        if nonempty and arr.size == 0:
            raise EncodingError("cannot encode an empty array")
        return arr

    def check_int_bits(self, arr: np.ndarray, int_bits: int) -> None:
        """Raise unless ``|arr| < 2^(int_bits - 1)``, the integer range of a fixed-point slot.

        Raises:
            OverflowRangeError: a value at or beyond the bound.
        """
        bound = 2.0 ** (int_bits - 1)
        if arr.size and float(np.max(np.abs(arr))) >= bound:
            raise OverflowRangeError(
                f"{type(self).__name__}: |x| must stay below 2^{int_bits - 1} = {bound:g} (int_bits={int_bits})"
            )

    @staticmethod
    def public_array(p: Any, shape: tuple[int, ...], op: str) -> np.ndarray:
        """A public operand as float64, checked to broadcast to ``shape``."""
        try:
            arr = np.asarray(p, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise UnsupportedOperationError(f"{op}: public operand of type {type(p).__name__} is not numeric") from exc
        try:
            out = np.broadcast_shapes(arr.shape, shape)
        except ValueError:
            raise ShapeError(f"{op}: public operand of shape {arr.shape} does not broadcast to {shape}") from None
        if out != shape:
            raise ShapeError(f"{op}: public operand of shape {arr.shape} would grow {shape} to {out}")
        if not np.all(np.isfinite(arr)):
                raise EncodingError(f"{op}: public operand holds non-finite values")
        return arr

    @staticmethod
    def check_matmul_shapes(a_shape: tuple[int, ...], w_shape: tuple[int, ...], op: str) -> None:
        if len(a_shape) != 2 or len(w_shape) != 2:
            raise ShapeError(f"{op}: needs 2-D operands, got {a_shape} @ {w_shape}")
        if a_shape[1] != w_shape[0]:
            raise ShapeError(f"{op}: inner dimensions differ: {a_shape} @ {w_shape}")

    @staticmethod
    def check_axis(shape: tuple[int, ...], axis: int, op: str) -> int:
        if not isinstance(axis, int) or not -len(shape) <= axis < len(shape):
            raise ShapeError(f"{op}: axis {axis!r} out of range for shape {shape}")
        return axis % len(shape)


#: Limits on a shape read from untrusted bytes: a few axes, each < 2^31, at most 2^40 elements.
_MAX_AXES, _MAX_AXIS, _MAX_ELEMENTS = 8, (1 << 31) - 1, 1 << 40


def shape_from_untrusted(value: Any, what: str = "shape") -> tuple[int, ...]:
    """A shape from deserialized metadata, checked before anything is sized from it.

    Raises:
        SerializationError: not a short list of non-negative ints (bools refused), or a shape
            too large to be real (products are computed with Python ints, so they cannot wrap).
    """
    from edil._errors import SerializationError

    if not isinstance(value, list | tuple) or len(value) > _MAX_AXES:
        raise SerializationError(f"{what} must be a list of at most {_MAX_AXES} ints")
    if any(type(d) is not int or not 0 <= d <= _MAX_AXIS for d in value):
        raise SerializationError(f"{what} holds a value that is not an int in [0, 2^31)")
    if math.prod(value) > _MAX_ELEMENTS:
        raise SerializationError(f"{what} {tuple(value)} is too large")
    return tuple(value)


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# A JSON string: a quote, then anything but quote/backslash or a backslash escape, then a closing
# quote. The closing quote is optional so that an unterminated string ends the scan in one linear
# pass (a mandatory one would retry from every later quote: quadratic on crafted input).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
#: Largest nesting any EDIL JSON document needs (headers are 1-3 levels deep).
MAX_JSON_DEPTH = 32


def json_depth(data: bytes) -> int:
    """The deepest bracket nesting of JSON text, brackets inside strings not counted.

    Strings are removed the way a JSON parser reads them (left to right, backslash escapes
    honoured), so on every prefix a parser accepts the count is exact: a parser can never
    recurse deeper than this. On input that is not JSON the count may be off, but only where a
    parser has already stopped. Linear time: one regular-expression pass and a cumulative sum.
    """
    brackets = _JSON_STRING.sub(b"", bytes(data)).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    arr = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((arr == 0x5B) | (arr == 0x7B), 1, -1).astype(np.int64)
    return max(0, int(np.cumsum(steps).max()))


def json_from_untrusted(data: bytes, *, max_depth: int = MAX_JSON_DEPTH, type: Any = Any) -> Any:  # noqa: A002
    """Decode JSON bytes from the network: nesting bounded before parsing, then typed decoding.

    The C parsers (``json``'s and ``msgspec``'s) recurse once per nesting level and obey the
    interpreter's recursion limit, which the chain stack raises to 100,000 on import: deeply
    nested input would overflow the C stack (a crash, not an exception). The nesting is
    therefore measured first by :func:`json_depth`, which skips string contents.
    ``msgspec`` then decodes strictly into ``type`` (a ``msgspec.Struct`` refuses unknown fields,
    wrong types and out-of-range values; ``Any`` gives plain Python values).

    Args:
        data: the JSON text (bytes).
        max_depth: deepest nesting accepted.
        type: what to decode into (a ``msgspec``-supported type).

    Raises:
        SerializationError: not bytes, not UTF-8 JSON, nested deeper than ``max_depth``, or not
            of ``type``.
    """
    import msgspec

    from edil._errors import SerializationError

    if not isinstance(data, bytes | bytearray | memoryview):
        raise SerializationError(f"JSON must arrive as bytes, got {builtins.type(data).__name__}")
    data = bytes(data)
    if json_depth(data) > max_depth:
        raise SerializationError(f"JSON nested deeper than {max_depth}")
    try:
        return msgspec.json.decode(data, type=type, strict=True)
    except (msgspec.DecodeError, ValueError, OverflowError, RecursionError) as exc:
        # DecodeError covers ValidationError; ValueError: an integer past Python's digit limit.
        raise SerializationError(f"not valid JSON of the expected form: {exc}") from None


@dataclass(frozen=True)
class Envelope:
    """The checksummed byte layout serialized values and contexts travel in.

    ``magic || kind (1 byte) || version (u16 LE) || len(header) (u32 LE) || prefix || header ||
    body || sha256(everything before)``. The checksum catches corruption and truncation; it is
    not a MAC. ``prefix`` is a fixed-length field outside the header length (CKKS puts the
    context fingerprint there).
    """

    name: str
    magic: bytes
    version: int = 1

    _KINDS: ClassVar[dict[bytes, str]] = {b"T": "tensor", b"C": "context"}
    _DIGEST: ClassVar[int] = 32

    def seal(self, kind: bytes, header: bytes, body: bytes | Sequence[bytes] = b"", prefix: bytes = b"") -> bytes:
        """The envelope of ``header`` and ``body`` (bytes, or parts joined in order: a large body is copied once)."""
        parts: list[bytes | bytearray | memoryview] = [self.magic + kind + struct.pack("<HI", self.version, len(header)) + prefix + header]
        parts += [body] if isinstance(body, bytes | bytearray | memoryview) else body
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
        parts.append(digest.digest())
        return b"".join(parts)

    @overload
    def open(
        self, data: Any, kind: bytes, *, prefix_len: int = ..., view: Literal[False] = ..., checksum: bool = ...
    ) -> tuple[bytes, bytes, bytes]: ...

    @overload
    def open(
        self, data: Any, kind: bytes, *, prefix_len: int = ..., view: Literal[True], checksum: bool = ...
    ) -> tuple[bytes, bytes, memoryview]: ...

    def open(
        self, data: Any, kind: bytes, *, prefix_len: int = 0, view: bool = False, checksum: bool = True
    ) -> tuple[bytes, bytes, bytes | memoryview]:
        """Check magic, kind, checksum, version and lengths; return ``(prefix, header, body)``.

        With ``view``, ``body`` is a read-only view into the checked bytes instead of a copy
        (a large body is then copied once, by whoever takes it apart). Without ``checksum``, the
        checksum is not verified: for a reader of the framing that uses nothing of the body.

        Raises:
            UnsupportedOperationError: ``data`` is not bytes.
            SerializationError: anything else is wrong with it.
        """
        from edil._errors import SerializationError

        if not isinstance(data, bytes | bytearray | memoryview):
            raise UnsupportedOperationError(f"expected bytes, got {type(data).__name__}")
        data = memoryview(bytes(data))  # a private copy of mutable input (bytes itself is not copied), read through views
        fixed = len(self.magic) + 1 + 6
        if len(data) < fixed + self._DIGEST:
            raise SerializationError(f"truncated {self.name} payload ({len(data)} bytes)")
        if data[: len(self.magic)] != self.magic:
            raise SerializationError(f"not a {self.name} payload (bad magic)")
        got_kind = bytes(data[len(self.magic) : len(self.magic) + 1])
        if got_kind != kind:
            what = f"a {self._KINDS[got_kind]}" if got_kind in self._KINDS else "unknown"
            raise SerializationError(f"expected a {self.name} {self._KINDS.get(kind, '?')}, got {what}")
        payload, digest = data[: -self._DIGEST], data[-self._DIGEST :]
        if checksum and hashlib.sha256(payload).digest() != bytes(digest):
            raise SerializationError(f"{self.name} payload is corrupt or truncated (checksum mismatch)")
        version, hlen = struct.unpack("<HI", data[len(self.magic) + 1 : fixed])
        if version != self.version:
            raise SerializationError(f"unsupported {self.name} payload version {version}")
        end = fixed + prefix_len + hlen
        if end > len(payload):
            raise SerializationError(f"truncated {self.name} payload header")
        body = payload[end:]
        return bytes(payload[fixed : fixed + prefix_len]), bytes(payload[fixed + prefix_len : end]), body if view else bytes(body)
