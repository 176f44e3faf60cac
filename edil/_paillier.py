"""``Paillier``: additively homomorphic encryption (phe + gmpy2) with packed fixed-point slots.

What it can do
    Encrypted linear scoring (``W . Enc(x) + b``: :meth:`Paillier.matmul_public` then
    :meth:`~Paillier.add_public`) and encrypted aggregation (:meth:`~Paillier.add`,
    :meth:`~Paillier.sum`). Products of two ciphertexts and polynomial activations are beyond an
    additive scheme and raise :class:`~edil.UnsupportedOperationError`.

Packing (the batch axis)
    A plaintext of Paillier is an integer mod ``n`` (``key_bits`` bits), far wider than one
    fixed-point value. Values of shape ``(batch, *rest)`` are packed *along the batch axis*:
    for each column (element of ``rest``) ``slots_per_ciphertext`` consecutive samples share
    one plaintext, ``slot_bits`` bits each. A public scalar times a ciphertext scales every slot
    by the same number, which is exactly what a linear layer needs (``W[i, j] * Enc(x_i)``
    scales the same feature of every packed sample), and adding two ciphertexts adds slot by
    slot. Values with fewer than two axes (a bias row) are *rows*: one ciphertext per element,
    the value replicated in every slot, so they broadcast over a batch.

Signed values and headroom
    Slots hold signed integers in two's-complement-free form: everything is linear mod ``n``,
    so the final plaintext is exactly ``sum_s r_s * 2^(slot_bits * s)`` for the signed slot
    results ``r_s``. The client adds the public offset ``B * sum_s 2^(slot_bits * s)`` after
    decryption and unpacks ``r_s + B`` from each slot, which is exact as long as every
    ``|r_s| <= B < 2^(slot_bits - 1)``. Every encoded value carries a public, data-independent
    bound ``B`` (from the encoding range, the weights and the number of additions); an operation
    whose bound would leave the slot raises :class:`~edil.ParameterError` *before* computing.
    The default ``slot_bits`` holds one fixed-point product layer summed ``max_additions`` times.

Fixed point
    Inputs carry ``frac_bits`` fractional bits; a product with public fixed-point weights has
    ``2 * frac_bits`` and is decoded accordingly (no truncation is ever needed). Rounding error:
    ``2^-(frac_bits+1)`` per encoded value, and per weight.

Threat model
    The node sees ciphertexts (IND-CPA under the decisional composite residuosity assumption),
    the shapes and the public bounds; the weights of ``matmul_public`` are public to it. Key
    generation and encryption randomness come from phe (``random.SystemRandom``); pass
    ``keypair=`` to reuse keys.

Example:
    >>> from edil import Paillier
    >>> s = Paillier(key_bits=1024)
    >>> x = s.encode([[1.0, 2.0], [3.0, 4.0]])
    >>> s.decode(s.matmul_public(x, [[1.0], [-0.5]])).tolist()
    [[0.0], [1.0]]
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import gmpy2
import msgspec
import numpy as np
from phe import paillier

from edil._errors import (
    EncodingError,
    ParameterError,
    SchemeMismatchError,
    SerializationError,
    ShapeError,
    UnsupportedOperationError,
)
from edil._scheme import Encoded, Envelope, Scheme, json_from_untrusted, shape_from_untrusted

__all__ = ["Paillier", "PaillierTensor"]

BATCHED, ROW, REDUCED = "batched", "row", "reduced"
_KIND_CONTEXT, _KIND_TENSOR = b"C", b"T"
_ENVELOPE = Envelope("Paillier", b"EDILPAI")
#: Modulus sizes a public context may carry; anything else is refused before a number is built.
MIN_KEY_BITS, MAX_KEY_BITS = 512, 8192
_HEX = r"\A(?:[1-9a-f][0-9a-f]*|0)\Z"  # lowercase, no prefix, no leading zeros: what format(n, "x") writes


class _ContextHeader(msgspec.Struct, forbid_unknown_fields=True):
    """The JSON of a public context, with strict types; ``n`` bounded as text."""

    n: Annotated[str, msgspec.Meta(pattern=_HEX, max_length=MAX_KEY_BITS // 4)]
    frac_bits: int
    int_bits: int
    slot_bits: int
    pack: bool


class _TensorMeta(msgspec.Struct, forbid_unknown_fields=True):
    """The JSON of a serialized :class:`PaillierTensor`, with strict types."""

    key: Annotated[str, msgspec.Meta(pattern=r"\A[0-9a-f]{64}\Z")]
    shape: list[int]
    columns: list[list[Annotated[str, msgspec.Meta(pattern=_HEX, max_length=MAX_KEY_BITS // 2)]]]
    scales: list[int]
    bounds: list[Annotated[str, msgspec.Meta(pattern=_HEX, max_length=MAX_KEY_BITS // 4)]]
    layout: Annotated[str, msgspec.Meta(max_length=16)]
    batch: int
    clean: bool


@dataclass(frozen=True, eq=False)
class PaillierTensor(Encoded):
    """Packed Paillier ciphertexts and their public bookkeeping.

    Attributes:
        columns: per column, the ciphertexts (``gmpy2.mpz``) packing it.
        scales: per column, fractional bits of the slot integers (``frac_bits`` or ``2*frac_bits``...).
        bounds: per column, a public bound on ``|slot integer|``.
        layout: ``"batched"`` (axis 0 packed in the slots), ``"row"`` (one ciphertext per
            element, replicated in every slot) or ``"reduced"`` (the slots hold partial sums
            of a summed-out batch axis; decoding adds them up).
        batch: number of packed samples (``batched``), 1 otherwise.
        clean: whether the unused slots of the last ciphertext of each column hold zero.
    """

    columns: tuple[tuple[Any, ...], ...]
    scales: tuple[int, ...]
    bounds: tuple[int, ...]
    layout: str
    batch: int
    clean: bool = True

    @property
    def n_ciphertexts(self) -> int:
        return sum(len(c) for c in self.columns)


class Paillier(Scheme):
    """Paillier with batch-axis packing (see the module docstring).

    Args:
        key_bits: modulus size (2048 for ~112-bit security; 1024 only for tests).
        frac_bits: fractional bits of the fixed-point encoding.
        int_bits: encodable range ``|x| < 2^(int_bits - 1)``.
        max_additions: how many products/values a slot must be able to accumulate; sets the
            default ``slot_bits`` headroom.
        slot_bits: bits per packed slot (default ``2*(frac_bits+int_bits) + log2(max_additions) + 1``).
        pack: pack several values per plaintext (``False``: one value per ciphertext, the
            unpacked baseline).
        keypair: ``(PaillierPublicKey, PaillierPrivateKey)`` to reuse (else generated).

    Raises:
        ParameterError: arguments out of range, or a slot wider than the plaintext.
    """

    name = "paillier"

    def __init__(
        self,
        key_bits: int = 2048,
        *,
        frac_bits: int = 16,
        int_bits: int = 16,
        max_additions: int = 1 << 12,
        slot_bits: int | None = None,
        pack: bool = True,
        keypair: tuple[Any, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(frac_bits, int) or not 1 <= frac_bits <= 48:
            raise ParameterError(f"frac_bits must be an int in [1, 48], got {frac_bits!r}")
        if not isinstance(int_bits, int) or not 2 <= int_bits <= 64:
            raise ParameterError(f"int_bits must be an int in [2, 64], got {int_bits!r}")
        if not isinstance(max_additions, int) or max_additions < 1:
            raise ParameterError(f"max_additions must be an int >= 1, got {max_additions!r}")
        if keypair is None:
            if not isinstance(key_bits, int) or key_bits < 512:
                raise ParameterError(f"key_bits must be an int >= 512, got {key_bits!r}")
            pub, priv = paillier.generate_paillier_keypair(n_length=key_bits)
        else:
            pub, priv = keypair
        self.public_key = pub
        self._priv = priv
        self.n = gmpy2.mpz(pub.n)
        self.nsquare = gmpy2.mpz(pub.nsquare)
        self.key_bits = int(self.n.bit_length())
        self.frac_bits = frac_bits
        self.int_bits = int_bits
        if slot_bits is None:
            slot_bits = 2 * (frac_bits + int_bits) + math.ceil(math.log2(max_additions)) + 1
        if not isinstance(slot_bits, int) or not 8 <= slot_bits <= self.key_bits - 2:
            raise ParameterError(f"slot_bits must be an int in [8, {self.key_bits - 2}], got {slot_bits!r}")
        self.slot_bits = slot_bits
        self.pack = bool(pack)
        self.slots_per_ciphertext = (self.key_bits - 2) // slot_bits if pack else 1
        self._weights_pow = [gmpy2.mpz(1) << (slot_bits * s) for s in range(self.slots_per_ciphertext)]
        self._replicate = sum(self._weights_pow)
        self._fingerprint = hashlib.sha256(str(int(self.n)).encode()).digest()
        self._fp = self._fingerprint.hex()[:16]

    @property
    def scheme_id(self) -> str:
        return (
            f"paillier/n={self.key_bits}/f={self.frac_bits}/slot={self.slot_bits}x{self.slots_per_ciphertext}/key={self._fp}"
        )

    @property
    def params(self) -> dict[str, Any]:
        return {
            "scheme": self.name,
            "key_bits": self.key_bits,
            "frac_bits": self.frac_bits,
            "int_bits": self.int_bits,
            "slot_bits": self.slot_bits,
            "slots_per_ciphertext": self.slots_per_ciphertext,
            "public_key": self._fingerprint.hex(),
        }

    @property
    def is_private(self) -> bool:
        """Whether this instance holds the private key (client side)."""
        return self._priv is not None

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the public modulus: binds ciphertexts to their key."""
        return self._fingerprint

    # --- public context (what travels to nodes) and values as bytes ----------------------------
    def public_context_bytes(self) -> bytes:
        """What a node needs to compute: the public modulus and the packing parameters."""
        header = {
            "n": format(int(self.n), "x"),
            "frac_bits": self.frac_bits,
            "int_bits": self.int_bits,
            "slot_bits": self.slot_bits,
            "pack": self.pack,
        }
        return _seal(_KIND_CONTEXT, json.dumps(header, sort_keys=True).encode())

    @classmethod
    def from_public_context(cls, data: bytes) -> Paillier:
        """The node side: a scheme that computes on ciphertexts but cannot decrypt.

        Raises:
            SerializationError: corrupt, truncated or non-Paillier bytes, or parameters out of range.
        """
        # The modulus is bounded as text (at most MAX_KEY_BITS / 4 hex digits) before any number
        # is built from it, and every packing parameter before the scheme sizes tables from it.
        h = json_from_untrusted(_unseal(data, _KIND_CONTEXT), type=_ContextHeader)
        n = int(h.n, 16)
        if not MIN_KEY_BITS <= n.bit_length() <= MAX_KEY_BITS or n % 2 == 0:
            raise SerializationError(f"Paillier context modulus is not an odd {MIN_KEY_BITS}..{MAX_KEY_BITS}-bit number")
        if not 1 <= h.frac_bits <= 48 or not 2 <= h.int_bits <= 64 or not 8 <= h.slot_bits <= n.bit_length() - 2:
            raise SerializationError("Paillier context packing parameters out of range")
        try:
            pub = paillier.PaillierPublicKey(n)
            return cls(frac_bits=h.frac_bits, int_bits=h.int_bits, slot_bits=h.slot_bits, pack=h.pack, keypair=(pub, None))
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"corrupt Paillier context: {type(exc).__name__}: {exc}") from None

    def serialize(self, value: Encoded) -> bytes:
        """Bytes of an encoded value, bound to this key by its fingerprint."""
        t = self._t(value)
        meta = {
            "key": self._fingerprint.hex(),
            "shape": list(t.shape),
            "columns": [[format(int(c), "x") for c in col] for col in t.columns],
            "scales": list(t.scales),
            "bounds": [format(int(b), "x") for b in t.bounds],
            "layout": t.layout,
            "batch": t.batch,
            "clean": t.clean,
        }
        out = _seal(_KIND_TENSOR, json.dumps(meta, sort_keys=True).encode())
        self._count("bytes_serialized", len(out))
        return out

    def deserialize(self, data: bytes) -> PaillierTensor:
        """Inverse of :meth:`serialize`.

        Raises:
            SerializationError: corrupt or truncated bytes, ciphertexts outside ``Z*_{n^2}``,
                or bookkeeping that does not match the shape.
            SchemeMismatchError: a value encrypted under another key.
        """
        meta = json_from_untrusted(_unseal(data, _KIND_TENSOR), type=_TensorMeta)
        key = bytes.fromhex(meta.key)
        if key != self._fingerprint:
            raise SchemeMismatchError(f"ciphertext made under Paillier key {key.hex()[:16]} given to key {self._fp}")
        shape = shape_from_untrusted(meta.shape)
        layout, batch, clean = meta.layout, meta.batch, meta.clean
        # Hex text is bounded by this key's sizes before it becomes a number: a ciphertext is
        # below n^2, a slot bound below 2^slot_bits.
        ct_digits, bound_digits = -(-self.nsquare.bit_length() // 4), -(-self.slot_bits // 4)
        if any(len(c) > ct_digits for col in meta.columns for c in col) or any(len(b) > bound_digits for b in meta.bounds):
            raise SerializationError("Paillier tensor holds a number larger than this key allows")
        cols = tuple(tuple(gmpy2.mpz(int(c, 16)) for c in col) for col in meta.columns)
        scales = tuple(meta.scales)
        bounds = tuple(int(b, 16) for b in meta.bounds)
        if layout not in (BATCHED, ROW, REDUCED) or any(s < 0 for s in shape) or batch < 1:
            raise SerializationError("Paillier tensor metadata out of range")
        grid = shape[1:] if layout == BATCHED else shape
        n_cols = math.prod(grid)
        per = self.slots_per_ciphertext
        n_ct = -(-batch // per) if layout == BATCHED else 1
        if layout == BATCHED and (not shape or shape[0] != batch):
            raise SerializationError("Paillier tensor batch does not match its shape")
        if not (len(cols) == len(scales) == len(bounds) == n_cols) or any(len(c) != n_ct for c in cols):
            raise SerializationError("Paillier tensor metadata does not match its ciphertexts")
        if any(not 0 <= s <= 4 * 48 for s in scales) or any(not 0 <= b <= self.slot_capacity for b in bounds):
            raise SerializationError("Paillier tensor scales or bounds out of range")
        for col in cols:
            for c in col:
                if not 0 < c < self.nsquare or gmpy2.gcd(c, self.n) != 1:
                    raise SerializationError("a Paillier ciphertext is not a unit modulo n^2")
        return self._wrap(shape, list(cols), list(scales), list(bounds), layout, batch, clean)

    @property
    def slot_capacity(self) -> int:
        """Largest public bound a slot can hold: ``2^(slot_bits - 1) - 1``."""
        return (1 << (self.slot_bits - 1)) - 1

    def check_model(self, model: Any) -> None:
        """Refuse, before anything is encrypted or sent, a model this additive scheme cannot run.

        Paillier evaluates dense layers with public weights (and ``Flatten``); a polynomial
        activation needs ciphertext products. The slot bound of every dense layer is computed
        from the public weights and biases exactly as :meth:`matmul_public` and
        :meth:`add_public` compute it, for an input fresh from :meth:`encode`, so a model that
        would overflow a packed slot on a node is refused here instead.

        Raises:
            UnsupportedOperationError: ``model`` is not a :class:`edil.models.Sequential`.
            UnsupportedOperationError: the model has a polynomial activation.
            ParameterError: a dense layer would overflow a packed slot.
        """
        from edil import models

        if not isinstance(model, models.Sequential):
            raise UnsupportedOperationError(f"check_model needs a models.Sequential, got {type(model).__name__}")
        scale, one = self.frac_bits, 1 << self.frac_bits
        bounds: list[int] | None = None  # per column; None: every column at the encode bound
        for i, layer in enumerate(model.layers):
            if isinstance(layer, models.Polynomial):
                raise UnsupportedOperationError(
                    f"scheme 'paillier' cannot run layer {i}, a degree-{layer.degree} polynomial activation: it needs "
                    "ciphertext products, which Paillier lacks (use CKKS or Masked for models with activations)"
                )
            if isinstance(layer, models.MaxPool | models.ReLU):
                raise UnsupportedOperationError(
                    f"scheme 'paillier' cannot run layer {i}, a {type(layer).__name__}: it needs a comparison, which Paillier lacks"
                )
            if not isinstance(layer, models.Dense):
                continue
            w = np.asarray(layer.weight, dtype=np.float64)
            fresh = 1 << (self.frac_bits + self.int_bits - 1)
            b_in = bounds if bounds is not None else [fresh] * w.shape[0]
            wi = [[abs(int(round(float(v) * one))) for v in row] for row in w]
            out = [self._check_bound(sum(wi[r][j] * b_in[r] for r in range(w.shape[0])), f"layer {i} (dense)") for j in range(w.shape[1])]
            scale += self.frac_bits
            bias = np.broadcast_to(np.asarray(layer.bias, dtype=np.float64), (w.shape[1],))
            bounds = [self._check_bound(b + abs(int(round(float(v) * 2.0**scale))), f"layer {i} (bias)") for b, v in zip(out, bias)]

    # --- internals ---------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        self.stats.extra[key] = self.stats.extra.get(key, 0) + n

    def _t(self, value: Encoded) -> PaillierTensor:
        self.check(value)
        if not isinstance(value, PaillierTensor):
            raise UnsupportedOperationError(f"expected a PaillierTensor, got {type(value).__name__}")
        return value

    def _check_bound(self, bound: int, op: str) -> int:
        if bound > self.slot_capacity:
            need = int(bound).bit_length() + 1
            raise ParameterError(
                f"Paillier: {op} would overflow a packed slot: the result needs {need} slot bits, the parameters "
                f"have slot_bits={self.slot_bits}; create Paillier(slot_bits={need}) or raise max_additions"
            )
        return int(bound)

    def _encrypt_int(self, m: int) -> Any:
        self.stats.ciphertexts += 1
        return gmpy2.mpz(self.public_key.raw_encrypt(int(m % self.n)))

    def _fixed(self, x: np.ndarray, bits: int) -> list[int]:
        return [int(v) for v in np.rint(x * float(2**bits)).astype(object)] if x.size else []

    def _fixed_public(self, p: np.ndarray) -> list[int]:
        # Python ints: exact for any magnitude (float64 -> int is exact after rint).
        return [int(round(float(v) * (1 << self.frac_bits))) for v in np.ravel(p)]

    def _pack(self, ints: Sequence[int]) -> int:
        return sum(int(v) * int(w) for v, w in zip(ints, self._weights_pow))

    def _unpack(self, m: Any, bound: int, count: int) -> list[int]:
        if not self.pack:
            v = int(m)
            return [v - int(self.n) if v > int(self.n) // 2 else v]
        m = (gmpy2.mpz(m) + bound * self._replicate) % self.n
        mask = (1 << self.slot_bits) - 1
        return [int((m >> (self.slot_bits * s)) & mask) - bound for s in range(count)]

    def _scalar_mul(self, c: Any, k: int) -> Any:
        if k == 0:
            return gmpy2.mpz(1)  # an encryption of 0 with no randomness: only ever summed into others
        r = gmpy2.powmod(c, abs(k), self.nsquare) if abs(k) != 1 else c
        return gmpy2.invert(r, self.nsquare) if k < 0 else r

    def _add_ct(self, a: Any, b: Any) -> Any:
        return a * b % self.nsquare

    def _wrap(
        self, shape: tuple[int, ...], cols: list[Any], scales: list[int], bounds: list[int], layout: str, batch: int, clean: bool = True
    ) -> PaillierTensor:
        return PaillierTensor(self.scheme_id, tuple(shape), tuple(tuple(c) for c in cols), tuple(scales), tuple(bounds), layout, batch, clean)

    def _align(self, cts: tuple[Any, ...], scale: int, bound: int, target: int, op: str) -> tuple[tuple[Any, ...], int]:
        """Shift a column to ``target`` fractional bits (multiply by ``2^(target - scale)``)."""
        if scale == target:
            return cts, bound
        k = 1 << (target - scale)
        bound = self._check_bound(bound * k, op)
        return tuple(self._scalar_mul(c, k) for c in cts), bound

    # --- encode / decode ----------------------------------------------------------------------
    def encode(self, x: Any) -> PaillierTensor:
        """Encrypt a real array: packed along axis 0 when it has two or more axes.

        Raises:
            EncodingError: non-numeric, NaN/inf or empty input.
            OverflowRangeError: ``|x| >= 2^(int_bits - 1)``.
        """
        arr = self.real_array(x, nonempty=True)
        self.check_int_bits(arr, self.int_bits)
        bound = self._check_bound(1 << (self.frac_bits + self.int_bits - 1), "encode")
        per = self.slots_per_ciphertext
        if arr.ndim >= 2:
            batch = arr.shape[0]
            m = arr.reshape(batch, -1)
            cols = []
            for j in range(m.shape[1]):
                ints = self._fixed(m[:, j], self.frac_bits)
                cols.append(tuple(self._encrypt_int(self._pack(ints[s : s + per])) for s in range(0, batch, per)))
            layout = BATCHED
        else:
            batch = 1
            cols = [(self._encrypt_int(v * (self._replicate if self.pack else 1)),) for v in self._fixed(arr.ravel(), self.frac_bits)]
            layout = ROW
        n = len(cols)
        return self._wrap(arr.shape, cols, [self.frac_bits] * n, [bound] * n, layout, batch)

    def decode(self, value: Encoded) -> np.ndarray:
        """Decrypt and unpack (client side; needs the private key)."""
        t = self._t(value)
        if self._priv is None:
            raise UnsupportedOperationError("scheme 'paillier' without the private key cannot decrypt")
        per = self.slots_per_ciphertext
        out = []
        for cts, scale, bound in zip(t.columns, t.scales, t.bounds):
            if t.layout == BATCHED:
                vals: list[int] = []
                for i, c in enumerate(cts):
                    count = min(per, t.batch - i * per)
                    vals += self._unpack(self._priv.raw_decrypt(int(c)), bound, count)
                out.append(np.array([float(v) / 2.0**scale for v in vals]))
            elif t.layout == ROW:
                out.append(np.array([float(self._unpack(self._priv.raw_decrypt(int(cts[0])), bound, 1)[0]) / 2.0**scale]))
            else:
                total = sum(sum(self._unpack(self._priv.raw_decrypt(int(c)), bound, per)) for c in cts)
                out.append(np.array([float(total) / 2.0**scale]))
        if t.layout == BATCHED:
            return np.stack(out, axis=1).reshape(t.shape)
        return np.array([o[0] for o in out]).reshape(t.shape)

    # --- linear operations --------------------------------------------------------------------
    def _pairs(self, a: PaillierTensor, b: PaillierTensor, op: str) -> np.ndarray:
        try:
            out = np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise ShapeError(f"{op}: shapes {a.shape} and {b.shape} do not broadcast") from None
        if out != a.shape:
            raise ShapeError(f"{op}: operand of shape {b.shape} would grow {a.shape} to {out}")
        if b.layout == BATCHED and not (a.layout == BATCHED and b.shape[0] == a.shape[0] and len(a.shape) == len(b.shape)):
            raise UnsupportedOperationError(f"scheme 'paillier' cannot broadcast a packed value of shape {b.shape} over {a.shape}")
        if a.layout == REDUCED or b.layout == REDUCED:
            if a.layout != b.layout or a.shape != b.shape:
                raise UnsupportedOperationError("scheme 'paillier' adds a summed-out (reduced) value only to another of the same shape")
        a_rest = a.shape[1:] if a.layout == BATCHED else a.shape
        b_rest = b.shape[1:] if b.layout == BATCHED else b.shape
        idx = np.arange(max(1, int(np.prod(b_rest, dtype=np.int64)))).reshape(b_rest)
        return np.broadcast_to(idx, a_rest).ravel()

    def _add_sub(self, a: Encoded, b: Encoded, sign: int, op: str) -> PaillierTensor:
        ta, tb = self._t(a), self._t(b)
        idx = self._pairs(ta, tb, op)
        cols, scales, bounds = [], [], []
        for j, k in enumerate(idx):
            sa, sb = ta.scales[j], tb.scales[k]
            target = max(sa, sb)
            ca, ba = self._align(ta.columns[j], sa, ta.bounds[j], target, op)
            cb, bb = self._align(tb.columns[k], sb, tb.bounds[k], target, op)
            bound = self._check_bound(ba + bb, op)
            if sign < 0:
                cb = tuple(gmpy2.invert(c, self.nsquare) for c in cb)
            if len(cb) == 1 and len(ca) > 1:
                cb = cb * len(ca)
            cols.append(tuple(self._add_ct(x, y) for x, y in zip(ca, cb)))
            scales.append(target)
            bounds.append(bound)
        self._count("ct_adds", sum(len(c) for c in cols))
        clean = ta.clean and (tb.clean if tb.layout == BATCHED else ta.layout != BATCHED or ta.batch % self.slots_per_ciphertext == 0)
        return self._wrap(ta.shape, cols, scales, bounds, ta.layout, ta.batch, clean)

    def add(self, a: Encoded, b: Encoded) -> PaillierTensor:
        """Encrypted + encrypted (slot-wise); ``b`` may broadcast to ``a`` (a bias row).

        Raises:
            ParameterError: the sum could overflow a packed slot.
        """
        return self._add_sub(a, b, 1, "add")

    def sub(self, a: Encoded, b: Encoded) -> PaillierTensor:
        """Encrypted - encrypted (slot-wise); ``b`` may broadcast to ``a``."""
        return self._add_sub(a, b, -1, "sub")

    def _public_cols(self, t: PaillierTensor, p: Any, op: str) -> list[np.ndarray]:
        if t.layout == REDUCED:
            raise UnsupportedOperationError(f"scheme 'paillier' cannot {op} on a summed-out (reduced) value")
        arr = np.broadcast_to(self.public_array(p, t.shape, op), t.shape)
        if t.layout == BATCHED:
            m = arr.reshape(t.batch, -1)
            return [m[:, j] for j in range(m.shape[1])]
        return [arr.reshape(-1)[j : j + 1] for j in range(len(t.columns))]

    def add_public(self, a: Encoded, p: Any) -> PaillierTensor:
        """Encrypted + public (broadcast): the public value is packed and added, no encryption."""
        t = self._t(a)
        per = self.slots_per_ciphertext
        cols, bounds = [], []
        for cts, scale, bound, pc in zip(t.columns, t.scales, t.bounds, self._public_cols(t, p, "add_public")):
            ints = [int(round(float(v) * 2.0**scale)) for v in pc]
            bound = self._check_bound(bound + max(abs(v) for v in ints), "add_public")
            new = []
            for i, c in enumerate(cts):
                chunk = ints[i * per : (i + 1) * per] if t.layout == BATCHED else ints
                m = self._pack(chunk) if t.layout == BATCHED else chunk[0] * (self._replicate if self.pack else 1)
                # (1 + n m) is the noiseless encryption of m: multiplying adds m to the plaintext.
                new.append(self._add_ct(c, (1 + self.n * (m % self.n)) % self.nsquare))
            cols.append(tuple(new))
            bounds.append(bound)
        return self._wrap(t.shape, cols, list(t.scales), bounds, t.layout, t.batch, t.clean)

    def mul_public(self, a: Encoded, p: Any) -> PaillierTensor:
        """Encrypted * public scalar per column (constant along the packed batch axis).

        Raises:
            UnsupportedOperationError: the public value varies along the packed batch axis
                (packed slots share one scalar per ciphertext).
            ParameterError: the product could overflow a packed slot.
        """
        t = self._t(a)
        cols, scales, bounds = [], [], []
        for cts, scale, bound, pc in zip(t.columns, t.scales, t.bounds, self._public_cols(t, p, "mul_public")):
            if self.pack and not np.all(pc == pc[0]):
                raise UnsupportedOperationError(
                    "scheme 'paillier' multiplies packed values by one public scalar per column; this value varies along "
                    "the batch axis (use Paillier(pack=False) for per-element public products)"
                )
            if self.pack:
                ks = [self._fixed_public(pc[:1])[0]] * len(cts)
            else:
                ks = self._fixed_public(pc)
            bound = self._check_bound(bound * max(abs(k) for k in ks), "mul_public")
            cols.append(tuple(self._scalar_mul(c, k) for c, k in zip(cts, ks)))
            scales.append(scale + self.frac_bits)
            bounds.append(bound)
        return self._wrap(t.shape, cols, scales, bounds, t.layout, t.batch, t.clean)

    def matmul_public(self, a: Encoded, w: Any) -> PaillierTensor:
        """Encrypted ``(batch, k)`` @ public ``(k, n)``: ``W[i, j] * Enc(x_i)`` summed over ``i``.

        Weights are fixed point with ``frac_bits`` bits; the result has ``scale + frac_bits``
        fractional bits (decoded accordingly). Negative weights use modular inversion.

        Raises:
            ParameterError: the public bound of a result slot exceeds the slot headroom.
        """
        t = self._t(a)
        try:
            w_arr = np.asarray(w, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise UnsupportedOperationError(f"matmul_public: weights of type {type(w).__name__} are not numeric") from exc
        self.check_matmul_shapes(t.shape, w_arr.shape, "matmul_public")
        if t.layout != BATCHED:
            raise UnsupportedOperationError("scheme 'paillier' computes matmul_public on packed (batch, k) values only")
        if not np.all(np.isfinite(w_arr)):
            raise EncodingError("matmul_public: weights hold non-finite values")
        target = max(t.scales)
        cols_in, bounds_in = [], []
        for cts, scale, bound in zip(t.columns, t.scales, t.bounds):
            c, b = self._align(cts, scale, bound, target, "matmul_public")
            cols_in.append(c)
            bounds_in.append(b)
        wi = [[int(round(float(v) * (1 << self.frac_bits))) for v in row] for row in w_arr]
        k, n = w_arr.shape
        nct = len(cols_in[0])
        out_cols, bounds = [], []
        for j in range(n):
            bound = self._check_bound(sum(abs(wi[i][j]) * bounds_in[i] for i in range(k)), "matmul_public")
            acc = [gmpy2.mpz(1)] * nct
            for i in range(k):
                if wi[i][j] == 0:
                    continue
                for s in range(nct):
                    acc[s] = self._add_ct(acc[s], self._scalar_mul(cols_in[i][s], wi[i][j]))
            self._count("scalar_mults", nct * sum(1 for i in range(k) if wi[i][j] != 0))
            out_cols.append(tuple(acc))
            bounds.append(bound)
        return self._wrap((t.shape[0], n), out_cols, [target + self.frac_bits] * n, bounds, BATCHED, t.batch, t.clean)

    def sum(self, a: Encoded, axis: int) -> PaillierTensor:
        """Sum along one axis (encrypted aggregation).

        Over the packed batch axis the ciphertexts of each column are added slot-wise into one
        ciphertext whose slots hold partial sums; the client adds the slots after decryption
        (a ``"reduced"`` value).
        """
        t = self._t(a)
        ax = self.check_axis(t.shape, axis, "sum")
        if t.layout == REDUCED:
            raise UnsupportedOperationError("scheme 'paillier' cannot sum a reduced value again")
        if t.layout == BATCHED and ax == 0:
            if not t.clean:
                raise UnsupportedOperationError(
                    "scheme 'paillier' cannot sum over the batch axis after a broadcast row filled the unused slots"
                )
            per = self.slots_per_ciphertext
            cols: list[tuple[Any, ...]] = []
            bounds = []
            for cts, bound in zip(t.columns, t.bounds):
                b = self._check_bound(bound * math.ceil(t.batch / per), "sum")
                total_ct = cts[0]
                for c in cts[1:]:
                    total_ct = self._add_ct(total_ct, c)
                self._count("ct_adds", len(cts) - 1)
                cols.append((total_ct,))
                bounds.append(b)
            return self._wrap(t.shape[1:], cols, list(t.scales), bounds, REDUCED, 1)
        grid = t.shape[1:] if t.layout == BATCHED else t.shape
        g = ax - 1 if t.layout == BATCHED else ax
        idx = np.moveaxis(np.arange(len(t.columns)).reshape(grid), g, -1)
        out_shape = t.shape[:ax] + t.shape[ax + 1 :]
        cols = []
        scales, bounds = [], []
        for group in idx.reshape(-1, idx.shape[-1]):
            target = max(t.scales[k] for k in group)
            acc: tuple[Any, ...] | None = None
            total = 0
            for k in group:
                c, b = self._align(t.columns[k], t.scales[k], t.bounds[k], target, "sum")
                total += b
                acc = c if acc is None else tuple(self._add_ct(x, y) for x, y in zip(acc, c))
            if acc is not None:  # every group holds at least one column
                cols.append(acc)
            scales.append(target)
            bounds.append(self._check_bound(total, "sum"))
        layout = t.layout if (t.layout == ROW or len(out_shape) >= 1) else ROW
        return self._wrap(out_shape, cols, scales, bounds, layout, t.batch if layout == BATCHED else 1, t.clean)

    # --- what an additive scheme cannot do -----------------------------------------------------
    def mul(self, a: Encoded, b: Encoded) -> PaillierTensor:
        raise self.unsupported("mul: Paillier is only additively homomorphic (no ciphertext x ciphertext products)")

    def matmul(self, a: Encoded, b: Encoded) -> PaillierTensor:
        raise self.unsupported("matmul of two encrypted matrices: Paillier is only additively homomorphic")

    def polyval(self, a: Encoded, coeffs: Sequence[float]) -> PaillierTensor:
        raise self.unsupported("polyval: polynomial activations need ciphertext products, which Paillier lacks")


def _seal(kind: bytes, body: bytes) -> bytes:
    return _ENVELOPE.seal(kind, body)


def _unseal(data: Any, kind: bytes) -> bytes:
    """The JSON a Paillier payload carries (its whole content: nothing may follow it)."""
    _, header, rest = _ENVELOPE.open(data, kind)
    if rest:
        raise SerializationError("unsupported or truncated Paillier payload (bytes after its content)")
    return header
