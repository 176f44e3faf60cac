"""A tiny canonical, pickle-free binary encoding for runtime messages.

Values are ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``list``/``tuple`` and
``dict`` with ``str`` keys (sorted on encoding, so equal values encode to equal bytes and
signatures over encodings are stable). Decoding never executes code: untrusted bytes from a
node or the network can at worst raise :class:`~edil.SerializationError`.

Layout: ``b"EW1"`` then one value; a value is a 1-byte tag and a body::

    N none | T true | F false | i u32 len + ascii decimal | f 8-byte IEEE-754 big endian
    s u32 len + utf-8 | b u32 len + bytes | l u32 count + values | d u32 count + (key value)*

Decoding is bounded: nesting stops at 32 levels, an integer is canonical decimal of at most
4300 digits (Python's own limit for ``str(int)``), and a list or dict count is checked against
the bytes left before any item is read, so a forged length allocates nothing. :func:`typed`
then turns a decoded record into a ``msgspec.Struct`` with strict types.
"""

from __future__ import annotations

import re
import struct
from typing import Any, TypeVar

import msgspec

from edil import EncodingError, SerializationError, UnsupportedOperationError

__all__ = ["dumps", "loads", "typed"]

_T = TypeVar("_T")

_MAGIC = b"EW1"
_U32 = struct.Struct(">I")
_F64 = struct.Struct(">d")
_MAX_DEPTH = 32
_MAX_INT_DIGITS = 4300  # sys.int_info.str_digits_check_threshold's default: str(int) refuses more
_INT = re.compile(rb"-?(?:0|[1-9][0-9]*)")


def _enc(v: Any, out: list[bytes], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise EncodingError("value nests too deeply")
    if v is None:
        out.append(b"N")
    elif v is True:
        out.append(b"T")
    elif v is False:
        out.append(b"F")
    elif isinstance(v, int):
        t = str(int(v)).encode("ascii")
        out += [b"i", _U32.pack(len(t)), t]
    elif isinstance(v, float):
        out += [b"f", _F64.pack(v)]
    elif isinstance(v, str):
        t = v.encode("utf-8")
        out += [b"s", _U32.pack(len(t)), t]
    elif isinstance(v, bytes | bytearray | memoryview):
        t = bytes(v)
        out += [b"b", _U32.pack(len(t)), t]
    elif isinstance(v, list | tuple):
        out += [b"l", _U32.pack(len(v))]
        for item in v:
            _enc(item, out, depth + 1)
    elif isinstance(v, dict):
        keys = sorted(v)
        if not all(isinstance(k, str) for k in keys):
            raise UnsupportedOperationError("wire dict keys must be str")
        out += [b"d", _U32.pack(len(keys))]
        for k in keys:
            _enc(k, out, depth + 1)
            _enc(v[k], out, depth + 1)
    else:
        raise UnsupportedOperationError(f"cannot put a {type(v).__name__} on the wire")


def dumps(value: Any) -> bytes:
    """Encode ``value`` canonically.

    Raises:
        UnsupportedOperationError: an unsupported type (also a ``TypeError``).
        EncodingError: nesting deeper than the decoder accepts.
    """
    out = [_MAGIC]
    _enc(value, out, 0)
    return b"".join(out)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise SerializationError("wire message is truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def count(self, min_item: int) -> int:
        """An item count, refused when the bytes left cannot hold that many items."""
        n = self.u32()
        if n * min_item > len(self.data) - self.pos:
            raise SerializationError("wire message is truncated (count larger than the data)")
        return n

    def value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise SerializationError("wire message nests too deeply")
        tag = self.take(1)
        if tag == b"N":
            return None
        if tag == b"T":
            return True
        if tag == b"F":
            return False
        if tag == b"i":
            n = self.u32()
            if not 1 <= n <= _MAX_INT_DIGITS + 1:
                raise SerializationError("integer on the wire is empty or too long")
            text = self.take(n)
            # Canonical decimal only: no sign on zero's behalf, no "+", "_", spaces or leading zeros.
            if _INT.fullmatch(text) is None or text == b"-0" or len(text.lstrip(b"-")) > _MAX_INT_DIGITS:
                raise SerializationError("bad integer on the wire")
            try:
                return int(text)
            except ValueError:  # the interpreter's digit limit was set lower than ours
                raise SerializationError("integer on the wire has too many digits") from None
        if tag == b"f":
            return _F64.unpack(self.take(8))[0]
        if tag == b"s":
            try:
                return self.take(self.u32()).decode("utf-8")
            except UnicodeDecodeError:
                raise SerializationError("bad utf-8 on the wire") from None
        if tag == b"b":
            return self.take(self.u32())
        if tag == b"l":
            return [self.value(depth + 1) for _ in range(self.count(1))]
        if tag == b"d":
            out: dict[str, Any] = {}
            for _ in range(self.count(2)):
                k = self.value(depth + 1)
                if not isinstance(k, str) or k in out:
                    raise SerializationError("bad or duplicate dict key on the wire")
                out[k] = self.value(depth + 1)
            return out
        raise SerializationError(f"unknown wire tag {tag!r}")


def loads(data: bytes) -> Any:
    """Decode bytes made by :func:`dumps`. Raises :class:`~edil.SerializationError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UnsupportedOperationError(f"loads needs bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(_MAGIC):
        raise SerializationError("not an EDIL wire message")
    r = _Reader(data)
    r.pos = len(_MAGIC)
    value = r.value(0)
    if r.pos != len(data):
        raise SerializationError("trailing bytes after wire message")
    return value


def typed(value: Any, kind: type[_T], what: str) -> _T:
    """``value`` (decoded by :func:`loads`) as ``kind``, a ``msgspec.Struct`` or other typed form.

    Conversion is strict: no int for a float or a bool, no str for bytes; a Struct refuses
    unknown and missing fields; ``msgspec.Meta`` constraints (lengths, ranges) are enforced.

    Raises:
        SerializationError: ``value`` does not have that form.
    """
    try:
        return msgspec.convert(value, kind, strict=True)
    except (msgspec.ValidationError, ValueError, TypeError) as exc:
        raise SerializationError(f"malformed {what}: {exc}") from None
