"""Commitments: keccak256 over canonical bytes, and chunked Merkle commitments to tensors.

Canonical tensor encoding (``encode_tensor``)::

    header  = b"EDT1" || u8 len(dtype) || dtype (ASCII numpy descr, little-endian, e.g. "<u8")
              || u8 ndim || ndim x u64 big-endian dims
    payload = the array's C-order little-endian bytes

A tensor commitment splits the payload into ``chunk_size``-byte chunks (the last may be shorter;
an empty payload is one empty chunk), builds a :class:`MerkleTree` over them and binds the header
(dtype and shape), the chunk size and the payload length into the root::

    root = keccak256(0x02 || keccak256(header) || u64 chunk_size || u64 payload_len || chunk_root)

so one chunk can be opened later and checked against the 32-byte root alone. Encoding is
bytes-exact: ``-0.0`` and ``0.0``, or two NaN payloads, commit differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edil import EncodingError, ParameterError, SerializationError, UnsupportedOperationError, VerificationError

from ._hashing import check_bytes32, consteq, keccak256
from ._merkle import InclusionProof, MerkleTree, compute_root

TENSOR_MAGIC = b"EDT1"
DEFAULT_CHUNK_SIZE = 4096
_TENSOR_ROOT_TAG = b"\x02"
_KINDS = "biufc"  # bool, signed, unsigned, float, complex
# The dtype strings a canonical header may carry: numeric, little-endian (or byte-sized). Parsing
# is a set lookup, so a crafted string never reaches numpy's dtype parser.
_DTYPES = {np.dtype(c).newbyteorder("<").str: np.dtype(c).newbyteorder("<") for c in "?bBhHiIlLqQefdgFDG"}
#: Most axes a decoded tensor may have (numpy itself allows 64).
MAX_TENSOR_NDIM = 32
#: Largest ``elements * itemsize`` a decoded tensor's shape may describe, even when it is empty
#: (numpy refuses sizes past 2^63; a zero axis makes the payload empty whatever the others are).
_MAX_TENSOR_BYTES = 1 << 62


def commit_bytes(data: bytes) -> bytes:
    """``keccak256(data)``: Solidity recomputes it as ``keccak256(data)``.

    Example:
        >>> commit_bytes(b"").hex()[:8]
        'c5d24601'
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UnsupportedOperationError(f"commit_bytes needs bytes, got {type(data).__name__}")
    return keccak256(bytes(data))


def commit_json(value: Any) -> bytes:
    """keccak256 of canonical JSON (sorted keys, no whitespace, UTF-8, no NaN).

    Handy for ``Transcript.scheme_params_hash``: hash a scheme's parameter mapping.

    Raises:
        EncodingError: the value is not JSON-serialisable or holds NaN/inf.
    """
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EncodingError(f"value has no canonical JSON form: {exc}") from exc
    return keccak256(text.encode("utf-8"))


def _canonical_array(array: Any) -> np.ndarray:
    if hasattr(array, "__jax_array__") or type(array).__module__.startswith("jax"):
        array = np.asarray(array)
    if not isinstance(array, np.ndarray | np.generic):
        raise UnsupportedOperationError(f"expected a numpy or JAX array, got {type(array).__name__}")
    arr = np.asarray(array)
    if arr.dtype.kind not in _KINDS or arr.dtype.fields is not None or arr.dtype.subdtype is not None:
        raise EncodingError(f"dtype {arr.dtype} has no canonical encoding (numeric dtypes only)")
    # astype keeps 0-d arrays 0-d (ascontiguousarray would promote them to 1-d).
    return arr.astype(arr.dtype.newbyteorder("<"), order="C", copy=False)


def tensor_header(array: Any) -> bytes:
    """The canonical header (dtype and shape) of an array."""
    arr = _canonical_array(array)
    descr = arr.dtype.str.encode("ascii")
    if arr.ndim > 255:
        raise EncodingError("more than 255 dimensions")
    return (
        TENSOR_MAGIC
        + bytes([len(descr)])
        + descr
        + bytes([arr.ndim])
        + b"".join(int(d).to_bytes(8, "big") for d in arr.shape)
    )


def encode_tensor(array: Any) -> bytes:
    """Canonical bytes of a numeric array: header (dtype, shape) followed by the C-order payload.

    Raises:
        UnsupportedOperationError: not an array.
        EncodingError: a non-numeric dtype.
    """
    arr = _canonical_array(array)
    return tensor_header(arr) + arr.tobytes(order="C")


def parse_tensor_header(data: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """Parse a canonical header; returns ``(dtype, shape, header_length)``.

    Raises:
        SerializationError: malformed header.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SerializationError("a tensor header must be bytes")
    data = bytes(data)
    if len(data) < 6 or data[:4] != TENSOR_MAGIC:
        raise SerializationError("not a canonical EDIL tensor (bad magic or truncated)")
    n = data[4]
    if len(data) < 5 + n + 1:
        raise SerializationError("truncated tensor header")
    descr = data[5 : 5 + n]
    dtype = _DTYPES.get(descr.decode("latin-1"))
    if dtype is None:
        raise SerializationError(f"non-canonical dtype in tensor header: {descr[:16]!r}")
    pos = 5 + n
    ndim = data[pos]
    pos += 1
    if ndim > MAX_TENSOR_NDIM:
        raise SerializationError(f"tensor header has {ndim} axes (at most {MAX_TENSOR_NDIM})")
    if len(data) < pos + 8 * ndim:
        raise SerializationError("truncated tensor header")
    shape = tuple(int.from_bytes(data[pos + 8 * i : pos + 8 * i + 8], "big") for i in range(ndim))
    if _payload_len(dtype, tuple(d for d in shape if d)) > _MAX_TENSOR_BYTES:
        raise SerializationError(f"tensor header describes an impossibly large shape {shape}")
    return dtype, shape, pos + 8 * ndim


def _payload_len(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count * dtype.itemsize


def decode_tensor(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_tensor`.

    Raises:
        SerializationError: truncated, trailing or malformed bytes.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UnsupportedOperationError("decode_tensor needs bytes")
    data = bytes(data)
    dtype, shape, pos = parse_tensor_header(data)
    payload = data[pos:]
    if len(payload) != _payload_len(dtype, shape):
        raise SerializationError("tensor payload length does not match its header")
    return np.frombuffer(payload, dtype=dtype).reshape(shape).copy()


def _tensor_root(header_hash: bytes, chunk_size: int, payload_len: int, chunk_root: bytes) -> bytes:
    return keccak256(
        _TENSOR_ROOT_TAG + header_hash + chunk_size.to_bytes(8, "big") + payload_len.to_bytes(8, "big") + chunk_root
    )


@dataclass(frozen=True, slots=True)
class ChunkOpening:
    """One chunk of a committed tensor with what is needed to check it against the root alone.

    Args:
        header: the canonical header (dtype and shape).
        chunk_size: the chunk size the commitment used.
        payload_len: total payload length in bytes.
        index: chunk index.
        data: the chunk's bytes.
        proof: Merkle proof of the chunk in the chunk tree.
    """

    header: bytes
    chunk_size: int
    payload_len: int
    index: int
    data: bytes
    proof: InclusionProof


@dataclass(frozen=True, slots=True)
class TensorCommitment:
    """A Merkle commitment to a tensor; ``root`` is the 32-byte value to publish.

    Created by :func:`commit_tensor`, which keeps the chunks so that :meth:`open` can reveal one.
    Equality compares the public part (root and metadata) only.
    """

    root: bytes
    header: bytes
    dtype: str
    shape: tuple[int, ...]
    chunk_size: int
    payload_len: int
    num_chunks: int
    _tree: MerkleTree | None = field(default=None, repr=False, compare=False)
    _payload: bytes | None = field(default=None, repr=False, compare=False)

    def open(self, index: int) -> ChunkOpening:
        """Reveal chunk ``index`` with its proof.

        Raises:
            UnsupportedOperationError: this commitment was not built here (it holds no data).
            IndexError: no such chunk.
        """
        if self._tree is None or self._payload is None:
            raise UnsupportedOperationError("this commitment holds no data to open")
        if isinstance(index, bool) or not isinstance(index, int):
            raise UnsupportedOperationError("chunk index must be an int")
        if not 0 <= index < self.num_chunks:
            raise IndexError(f"chunk {index} outside [0, {self.num_chunks})")
        start = index * self.chunk_size
        return ChunkOpening(
            self.header,
            self.chunk_size,
            self.payload_len,
            index,
            self._payload[start : start + self.chunk_size],
            self._tree.proof(index),
        )

    def verify_chunk(self, opening: ChunkOpening) -> None:
        """Check ``opening`` against this commitment's root (see :func:`verify_chunk`)."""
        verify_chunk(self.root, opening)


def commit_tensor(array: Any, chunk_size: int = DEFAULT_CHUNK_SIZE) -> TensorCommitment:
    """Commit to a numeric array (dtype and shape bound in) with a Merkle tree over its chunks.

    Args:
        array: a numpy or JAX array of a numeric dtype.
        chunk_size: bytes per chunk (>= 1).

    Returns:
        The :class:`TensorCommitment`; ``.root`` is what transcripts carry.

    Raises:
        UnsupportedOperationError: not an array.
        EncodingError: non-numeric dtype.
        ParameterError: ``chunk_size`` < 1.

    Example:
        >>> import numpy as np
        >>> c = commit_tensor(np.arange(1000, dtype=np.uint64), chunk_size=1024)
        >>> c.num_chunks
        8
        >>> c.verify_chunk(c.open(3))
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise UnsupportedOperationError("chunk_size must be an int")
    if not 1 <= chunk_size < (1 << 63):
        raise ParameterError("chunk_size must be >= 1")
    arr = _canonical_array(array)
    header = tensor_header(arr)
    payload = arr.tobytes(order="C")
    chunks = [payload[i : i + chunk_size] for i in range(0, len(payload), chunk_size)] or [b""]
    tree = MerkleTree(chunks)
    root = _tensor_root(keccak256(header), chunk_size, len(payload), tree.root)
    return TensorCommitment(
        root=root,
        header=header,
        dtype=arr.dtype.str,
        shape=tuple(int(d) for d in arr.shape),
        chunk_size=chunk_size,
        payload_len=len(payload),
        num_chunks=len(chunks),
        _tree=tree,
        _payload=payload,
    )


def verify_chunk(root: bytes, opening: ChunkOpening) -> None:
    """Check one opened chunk against a tensor commitment root; fail closed.

    Raises:
        VerificationError: wrong data, proof, header, sizes or index.
    """
    root = check_bytes32(root, "root")
    if not isinstance(opening, ChunkOpening):
        raise UnsupportedOperationError("opening must be a ChunkOpening")
    size, total, index = opening.chunk_size, opening.payload_len, opening.index
    num_chunks = max(1, -(-total // size)) if size > 0 else 0
    if size < 1 or total < 0 or not 0 <= index < num_chunks:
        raise VerificationError("chunk opening has inconsistent sizes or index")
    try:
        dtype, shape, header_len = parse_tensor_header(opening.header)
    except SerializationError as exc:
        raise VerificationError(f"chunk opening carries a malformed header: {exc}") from exc
    if header_len != len(opening.header) or _payload_len(dtype, shape) != total:
        raise VerificationError("header shape and dtype do not match the payload length")
    expected_len = min(size, total - index * size) if total else 0
    if len(opening.data) != expected_len or opening.proof.index != index:
        raise VerificationError("chunk length or proof index does not match the opening")
    # The tree depth is fixed by the chunk count: a shorter or longer proof is rejected outright.
    if opening.proof.depth != max(0, (num_chunks - 1).bit_length()):
        raise VerificationError("proof depth does not match the number of chunks")
    chunk_root = compute_root(opening.data, opening.proof)
    if not consteq(_tensor_root(keccak256(opening.header), size, total, chunk_root), root):
        raise VerificationError("chunk does not open the tensor commitment")
