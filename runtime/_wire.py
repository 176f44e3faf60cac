"""A tiny canonical, pickle-free binary encoding for runtime messages.

Values are ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``list``/``tuple`` and
``dict`` with ``str`` keys (sorted on encoding, so equal values encode to equal bytes and
signatures over encodings are stable). Decoding never executes code: untrusted bytes from a
node or the network can at worst raise :class:`~edil.SerializationError`.

Layout: ``b"EW1"`` then one value; a value is a 1-byte tag and a body::

    N none | T true | F false | i u32 len + ascii decimal | f 8-byte IEEE-754 big endian
    s u32 len + utf-8 | b u32 len + bytes | l u32 count + values | d u32 count + (key value)*
"""

from __future__ import annotations

import struct
from typing import Any

from edil import SerializationError

__all__ = ["dumps", "loads"]

_MAGIC = b"EW1"
_U32 = struct.Struct(">I")
_F64 = struct.Struct(">d")
_MAX_DEPTH = 32


def _enc(v: Any, out: list[bytes], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("value nests too deeply")
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
            raise TypeError("wire dict keys must be str")
        out += [b"d", _U32.pack(len(keys))]
        for k in keys:
            _enc(k, out, depth + 1)
            _enc(v[k], out, depth + 1)
    else:
        raise TypeError(f"cannot put a {type(v).__name__} on the wire")


def dumps(value: Any) -> bytes:
    """Encode ``value`` canonically. Raises ``TypeError`` on an unsupported type."""
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
            text = self.take(self.u32())
            try:
                return int(text.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise SerializationError("bad integer on the wire") from None
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
            return [self.value(depth + 1) for _ in range(self.u32())]
        if tag == b"d":
            out: dict[str, Any] = {}
            for _ in range(self.u32()):
                k = self.value(depth + 1)
                if not isinstance(k, str) or k in out:
                    raise SerializationError("bad or duplicate dict key on the wire")
                out[k] = self.value(depth + 1)
            return out
        raise SerializationError(f"unknown wire tag {tag!r}")


def loads(data: bytes) -> Any:
    """Decode bytes made by :func:`dumps`. Raises :class:`~edil.SerializationError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"loads needs bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(_MAGIC):
        raise SerializationError("not an EDIL wire message")
    r = _Reader(data)
    r.pos = len(_MAGIC)
    value = r.value(0)
    if r.pos != len(data):
        raise SerializationError("trailing bytes after wire message")
    return value
