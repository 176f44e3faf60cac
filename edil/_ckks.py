"""``CKKS``: approximate homomorphic encryption (TenSEAL / Microsoft SEAL), batch-packed.

Layout
    A value of shape ``(batch, *rest)`` (two or more axes) is *batched*: the batch axis lives
    in the slots of a ciphertext and there is one ciphertext vector per element of ``rest``
    (per feature). A batch larger than the slot count (``poly_modulus_degree / 2``) spans
    several ciphertexts, transparently (TenSEAL chunks). A dense layer is then a sum of
    ciphertext x public-scalar products: no rotations, no Galois keys. Values with fewer than
    two axes (a bias, a single row) are *unbatched*: one ciphertext per element, the value
    replicated in every slot, so they broadcast over a batch.

Levels, rescaling and the public factor
    Every product consumes one level of the coefficient-modulus chain. Three things keep the
    depth and the cost low, all exact bookkeeping rather than approximation:

    * *Deferred rescaling*: a dense layer multiplies without rescaling, adds the products at
      scale ``Delta^2`` and rescales each output once (instead of once per product) when the
      level has room for ``Delta^3``; otherwise it rescales per product.
    * *Public factors*: every column carries a public float ``factor`` and the plaintext value
      is ``factor * decrypt(ciphertext)``. A public per-column scalar (``mul_public`` by a row,
      the leading coefficient of a polynomial) only changes the factor (no level); the next
      dense layer folds the factor into its weights for free.
    * *Exact rescale accounting*: SEAL divides by the actual prime ``q`` (not ``Delta``) and
      TenSEAL relabels the scale as ``Delta``; the factor absorbs the exact ratio ``q / Delta``,
      so no systematic drift accumulates.

    With these, a dense layer costs 1 level and a degree-``d`` polynomial ``ceil(log2 d)``
    levels for well-conditioned coefficients (:func:`poly_depth`; degree 2 and 4 cost 1 and 2).
    A large constant term next to a small leading coefficient (a fit over a wide activation
    interval) costs one more level where it is absorbed: the ciphertext first moves to a larger
    public factor so that the constant does not crowd the integer headroom.

Depth: one count
    :func:`required_depth` counts the levels of a whole :class:`edil.models.Sequential` by
    running the evaluator itself on placeholder ciphertexts (public bookkeeping only, no keys),
    so the count is what the evaluation takes. :meth:`CKKS.for_model`, :meth:`CKKS.check_model`,
    :meth:`CKKS.polyval`'s up-front refusal and :attr:`edil.models.Sequential.mult_depth` all use it.

Parameters
    ``CKKS(depth, precision_bits=30, int_bits=15)`` builds the chain
    ``[precision_bits + int_bits] + [precision_bits] * depth + [special]`` and picks the smallest
    ``poly_modulus_degree`` whose 128-bit-security budget holds it (and for which SEAL finds
    enough distinct primes of each size); a computation that runs out
    of levels raises :class:`~edil.ParameterError` naming the depth it needs.

Keys and threat model
    The client's :class:`CKKS` holds the secret key. :meth:`CKKS.public_context_bytes` is what a
    node receives (public, relinearization and optionally Galois keys; never the secret key);
    :meth:`CKKS.from_public_context` builds the node's scheme, which can compute but whose
    :meth:`~CKKS.decode` raises :class:`~edil.UnsupportedOperationError`. Semi-honest nodes
    learn nothing about inputs beyond shapes (RLWE, 128-bit security per the HE standard);
    the model weights are public to the node (``encode_weights`` is unsupported). Key
    generation uses SEAL's CSPRNG and cannot be seeded from outside.

Precision
    ``precision_bits`` (the scale ``Delta = 2^precision_bits``) bounds the error of each
    operation to roughly ``2^-(precision_bits - 12)`` absolute for values of magnitude ~1
    (encoding and rescale rounding amplified by the ring dimension); values must stay below
    ``2^(int_bits - 1)``.

Example:
    >>> from edil import CKKS
    >>> s = CKKS(depth=1)
    >>> x = s.encode([[1.0, 2.0], [3.0, 4.0]])
    >>> s.decode(s.matmul_public(x, [[1.0], [0.5]])).round(3).tolist()
    [[2.0], [5.0]]
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

from edil._errors import (
    EdilError,
    EncodingError,
    ParameterError,
    SchemeMismatchError,
    SerializationError,
    ShapeError,
    UnsupportedOperationError,
)
from edil._scheme import Encoded, Envelope, Scheme, json_from_untrusted, shape_from_untrusted

__all__ = ["CKKS", "CKKSTensor", "poly_depth", "required_depth"]

#: Largest total coefficient-modulus bits for 128-bit security (HomomorphicEncryption.org).
MAX_MODULUS_BITS = {4096: 109, 8192: 218, 16384: 438, 32768: 881}

_MAGIC = b"EDILCKKS"
_VERSION = 1
_KIND_TENSOR = b"T"
_KIND_CONTEXT = b"C"
_DIGEST = 32
_ENVELOPE = Envelope("CKKS", _MAGIC, _VERSION)


# --- depth planning ------------------------------------------------------------------------------
@functools.cache
def _poly_plan(d: int) -> tuple[int, int]:
    """(levels, split) for a generic degree-``d`` polynomial: ``p = q(x) * x^split + r(x)``."""
    if d <= 1:
        return 0, 0
    best: tuple[int, int] | None = None
    m, j = 2, 1
    while m <= d:
        qd = d - m
        l_prod = j if qd == 0 else max(_poly_plan(qd)[0], j) + 1
        rd = m - 1
        if rd == 0:
            lvl = l_prod
        else:
            l_r = _poly_plan(rd)[0]
            lvl = max(l_prod, l_r) + (1 if l_prod == l_r else 0)
        if best is None or lvl < best[0]:
            best = (lvl, m)
        m, j = m * 2, j + 1
    assert best is not None
    return best


def poly_depth(degree: int) -> int:
    """Levels the structure of :meth:`CKKS.polyval` takes for a degree-``d`` polynomial (at most ``ceil(log2 d)``).

    This is the count for well-conditioned coefficients. A large constant term next to a small
    leading coefficient can cost :meth:`CKKS.polyval` up to one more level per split (see
    :meth:`CKKS._absorb`); :func:`required_depth` counts those too.
    """
    if not isinstance(degree, int) or degree < 0:
        raise ParameterError(f"degree must be an int >= 0, got {degree!r}")
    return max(_poly_plan(d)[0] for d in range(1, degree + 1)) if degree >= 1 else 0


#: Default scale and headroom bits of :class:`CKKS` (shared by :func:`required_depth`).
DEFAULT_PRECISION_BITS = 30
DEFAULT_INT_BITS = 15


def _refuse_comparisons(model: Any) -> None:
    """Refuse, by name, the layers CKKS cannot evaluate: an exact ReLU or a max pooling needs a
    comparison, which CKKS ciphertexts do not support (only sums, products and polynomials)."""
    from edil import models

    for i, layer in enumerate(model.layers):
        if isinstance(layer, models.ReLU):
            raise UnsupportedOperationError(
                f"scheme 'ckks' cannot run layer {i}, an exact ReLU: it needs a comparison, which CKKS lacks; import "
                "the model with activations='polynomial' (a fitted polynomial ReLU, which CKKS evaluates), or run it "
                "under Masked"
            )
        if isinstance(layer, models.MaxPool):
            where = f" ({layer.name})" if layer.name else ""
            raise UnsupportedOperationError(
                f"scheme 'ckks' cannot run layer {i}, a MaxPool{where}: it needs a comparison, which CKKS lacks; "
                "replace max pooling with average pooling (linear), or run the model under Masked"
            )


def required_depth(
    model: Any,
    *,
    precision_bits: int = DEFAULT_PRECISION_BITS,
    int_bits: int = DEFAULT_INT_BITS,
    poly_modulus_degree: int | None = None,
) -> int:
    """Rescale levels the :class:`CKKS` evaluation of a model consumes: EDIL's one depth count.

    The count is not a formula: it is the evaluator itself (:class:`edil.models.EncodedModel`
    driving :meth:`CKKS.matmul_public`, :meth:`CKKS.add_public` and :meth:`CKKS.polyval`) run
    on placeholder ciphertexts that carry only the public bookkeeping of every column (its
    factor and its level), for a freshly encoded input. Every level the evaluation takes is
    counted, including those :meth:`CKKS.polyval` spends to make room for a large constant term
    next to a small leading coefficient (wide activation intervals), so the count cannot drift
    from the evaluator. :meth:`CKKS.for_model`, :meth:`CKKS.check_model` and
    :attr:`edil.models.Sequential.mult_depth` all use it.

    The bookkeeping depends on the exact primes of the modulus chain (a rescale multiplies a
    public factor by ``q / Delta``), so the count is taken for the chain that
    ``CKKS(depth, ...)`` builds with these keyword arguments, and taken again with a longer
    chain when the first estimate (an ideal chain of primes equal to ``Delta``) was short.

    Args:
        model: an :class:`edil.models.Sequential`.
        precision_bits: ``precision_bits`` of the scheme that will run the model.
        int_bits: ``int_bits`` of that scheme.
        poly_modulus_degree: the forced ring dimension of that scheme, if any.

    Returns:
        The smallest depth ``d`` found such that ``CKKS(d, precision_bits=..., int_bits=...,
        poly_modulus_degree=...)`` holds the model; when no parameters hold it, the count on the
        ideal chain (which :meth:`CKKS.choose_parameters` then refuses with a
        :class:`~edil.ParameterError`).

    Raises:
        UnsupportedOperationError: ``model`` is not a :class:`edil.models.Sequential`.
        ParameterError: parameters out of range.
    """
    from edil import models

    if not isinstance(model, models.Sequential):
        raise UnsupportedOperationError(f"required_depth needs a models.Sequential, got {type(model).__name__}")
    _refuse_comparisons(model)
    n, bits = CKKS.choose_parameters(0, precision_bits=precision_bits, int_bits=int_bits, poly_modulus_degree=poly_modulus_degree)
    need = CKKS._planner(n, bits, precision_bits, None).levels_consumed(model)
    for _ in range(8):  # in practice the ideal-chain estimate is exact, or one longer chain settles it
        try:
            n, bits = CKKS.choose_parameters(need, precision_bits=precision_bits, int_bits=int_bits, poly_modulus_degree=poly_modulus_degree)
        except ParameterError:
            return need
        got = CKKS._planner(n, bits, precision_bits, _chain_primes(n, bits)).levels_consumed(model)
        if got <= need:
            return need
        need = got
    return need


def _chain_primes(n: int, bits: Sequence[int]) -> list[int]:
    """The data primes SEAL chooses for ``coeff_mod_bit_sizes = bits`` (the special prime dropped)."""
    return [m.value() for m in sealapi.CoeffModulus.Create(n, list(bits))][:-1]


class _Shadow:
    """A placeholder for a TenSEAL vector in a dry run (:meth:`CKKS.levels_consumed`).

    Every ciphertext operation the evaluator performs returns the placeholder, so the
    evaluator's own code computes the public bookkeeping (factors, levels) and nothing else.
    """

    __slots__ = ()

    def _same(self, *_: Any) -> _Shadow:
        return self

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _same
    neg = square = _same


_SHADOW = _Shadow()


# --- TenSEAL vector protobuf (CKKSVectorProto: sizes=1 packed uint32, ciphertexts=2, scale=3) -----
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise SerializationError("truncated or malformed ciphertext vector")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _pb_parse(buf: bytes) -> tuple[list[int], list[bytes], float]:
    sizes: list[int] = []
    cts: list[bytes] = []
    scale = 0.0
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if field == 1 and wire == 2:
            n, i = _read_varint(buf, i)
            end = i + n
            if end > len(buf):
                raise SerializationError("truncated ciphertext vector")
            while i < end:
                v, i = _read_varint(buf, i)
                sizes.append(v)
        elif field == 1 and wire == 0:
            v, i = _read_varint(buf, i)
            sizes.append(v)
        elif field == 2 and wire == 2:
            n, i = _read_varint(buf, i)
            if i + n > len(buf):
                raise SerializationError("truncated ciphertext vector")
            cts.append(bytes(buf[i : i + n]))
            i += n
        elif field == 3 and wire == 1:
            if i + 8 > len(buf):
                raise SerializationError("truncated ciphertext vector")
            (scale,) = struct.unpack("<d", buf[i : i + 8])
            i += 8
        else:
            raise SerializationError(f"unexpected field {field} (wire type {wire}) in a ciphertext vector")
    return sizes, cts, scale


def _pb_build(sizes: Sequence[int], cts: Sequence[bytes], scale: float) -> bytes:
    packed = b"".join(_varint(int(s)) for s in sizes)
    out = [b"\x0a", _varint(len(packed)), packed]
    for c in cts:
        out += [b"\x12", _varint(len(c)), c]
    out += [b"\x19", struct.pack("<d", scale)]
    return b"".join(out)


# --- the encoded value ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class CKKSTensor(Encoded):
    """A CKKS-encrypted tensor: one TenSEAL vector per column, plus public bookkeeping.

    Attributes:
        columns: one ``tenseal.CKKSVector`` per element of ``shape[1:]`` (batched) or of
            ``shape`` (unbatched).
        factors: public per-column multipliers; the value is ``factors[j] * decrypt(columns[j])``.
        levels: rescales each column has gone through (its position in the modulus chain).
        batched: whether axis 0 lives in the slots.
        clean: whether the slots past the batch are known to be zero (needed by ``sum(axis=0)``).
        chunks: ciphertexts per column (a batch larger than the slot count spans several).
    """

    columns: tuple[Any, ...]
    factors: np.ndarray
    levels: np.ndarray
    batched: bool
    clean: bool = True
    chunks: int = 1

    @property
    def batch(self) -> int:
        return self.shape[0] if self.batched else 1

    @property
    def n_ciphertexts(self) -> int:
        return len(self.columns) * self.chunks


def _ro(a: Any, dtype: Any) -> np.ndarray:
    arr = np.array(a, dtype=dtype)
    arr.setflags(write=False)
    return arr


class CKKS(Scheme):
    """CKKS on TenSEAL with batch packing (see the module docstring).

    Args:
        depth: multiplicative depth the parameters must hold (levels of the modulus chain).
        precision_bits: bits of the scale ``Delta`` (fractional precision), 20..50.
        int_bits: headroom bits for the integer part of every intermediate value.
        poly_modulus_degree: force a ring dimension (else the smallest that fits is chosen).
        galois_keys: also generate Galois (rotation) keys, needed only by ``sum(axis=0)``
            of a batched value (they are large: ~65 MB at ``N = 8192``).
        n_threads: TenSEAL worker threads (default: TenSEAL's choice).

    Raises:
        ParameterError: no ring dimension up to 32768 holds ``depth`` at this precision; the
            message names the depth and the largest that would fit.
        ParameterError: arguments out of range.
    """

    name = "ckks"
    _ctx: Any  # the TenSEAL context; None in a dry run (placeholder ciphertexts, see required_depth)
    _deepest: int = 0  # deepest level a dry run reached

    def __init__(
        self,
        depth: int = 2,
        *,
        precision_bits: int = DEFAULT_PRECISION_BITS,
        int_bits: int = DEFAULT_INT_BITS,
        poly_modulus_degree: int | None = None,
        galois_keys: bool = False,
        n_threads: int | None = None,
    ) -> None:
        super().__init__()
        n, bits = self.choose_parameters(depth, precision_bits=precision_bits, int_bits=int_bits, poly_modulus_degree=poly_modulus_degree)
        kw = {} if n_threads is None else {"n_threads": int(n_threads)}
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=bits, **kw)
        ctx.global_scale = float(2**precision_bits)
        if not ctx.has_relin_keys():
            ctx.generate_relin_keys()
        if galois_keys:
            ctx.generate_galois_keys()
        self._init_from(ctx, {"poly_modulus_degree": n, "coeff_mod_bit_sizes": bits, "precision_bits": precision_bits, "depth": depth})

    # --- parameters ------------------------------------------------------------------------------
    @staticmethod
    def choose_parameters(
        depth: int,
        *,
        precision_bits: int = DEFAULT_PRECISION_BITS,
        int_bits: int = DEFAULT_INT_BITS,
        poly_modulus_degree: int | None = None,
    ) -> tuple[int, list[int]]:
        """``(poly_modulus_degree, coeff_mod_bit_sizes)`` for ``depth`` levels at this precision.

        Raises:
            ParameterError: the chain does not fit any (or the forced) ring dimension.
        """
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ParameterError(f"depth must be an int >= 0, got {depth!r}")
        if not isinstance(precision_bits, int) or not 20 <= precision_bits <= 50:
            raise ParameterError(f"precision_bits must be an int in [20, 50], got {precision_bits!r}")
        if not isinstance(int_bits, int) or not 4 <= int_bits <= 60 - precision_bits:
            raise ParameterError(f"int_bits must be an int in [4, {60 - precision_bits}], got {int_bits!r}")
        first = precision_bits + int_bits
        special = max(first, precision_bits)
        bits = [first] + [precision_bits] * depth + [special]
        total = sum(bits)
        candidates = [poly_modulus_degree] if poly_modulus_degree is not None else sorted(MAX_MODULUS_BITS)
        too_few_primes = []
        for n in candidates:
            if n not in MAX_MODULUS_BITS:
                raise ParameterError(f"poly_modulus_degree must be one of {sorted(MAX_MODULUS_BITS)}, got {n!r}")
            if total <= MAX_MODULUS_BITS[n]:
                try:
                    _chain_primes(n, bits)
                except (RuntimeError, ValueError):
                    # SEAL needs distinct primes = 1 mod 2N of each size: small sizes run out.
                    too_few_primes.append(n)
                    continue
                return n, bits
        n_max = candidates[-1]
        fit = max(0, (MAX_MODULUS_BITS[n_max] - first - special) // precision_bits)
        primes_note = (
            f" (poly_modulus_degree {', '.join(map(str, too_few_primes))} would hold the bits, but has too few "
            f"{precision_bits}-bit primes = 1 mod 2N for {depth} levels: raise precision_bits)"
            if too_few_primes
            else ""
        )
        raise ParameterError(
            f"CKKS: multiplicative depth {depth} needs {total} modulus bits at precision_bits={precision_bits}, "
            f"int_bits={int_bits}; poly_modulus_degree={n_max} allows {MAX_MODULUS_BITS[n_max]} bits (depth <= {fit}) "
            f"at 128-bit security{primes_note}. Lower the precision, or shorten the model."
        )

    @classmethod
    def for_depth(cls, depth: int, **kwargs: Any) -> CKKS:
        """A client scheme whose parameters hold ``depth`` levels (see :class:`CKKS` for kwargs)."""
        return cls(depth, **kwargs)

    @classmethod
    def for_model(cls, model: Any, **kwargs: Any) -> CKKS:
        """A client scheme whose chain holds every level ``model``'s evaluation takes (:func:`required_depth`).

        Args:
            model: an :class:`edil.models.Sequential`.
            **kwargs: the other :class:`CKKS` arguments (``precision_bits``, ``int_bits``,
                ``poly_modulus_degree``, ``galois_keys``, ``n_threads``).

        Raises:
            ParameterError: no parameters at this precision hold the model's depth; the message
                names the depth and what would shorten it.
        """
        depth = required_depth(
            model,
            precision_bits=kwargs.get("precision_bits", DEFAULT_PRECISION_BITS),
            int_bits=kwargs.get("int_bits", DEFAULT_INT_BITS),
            poly_modulus_degree=kwargs.get("poly_modulus_degree"),
        )
        try:
            return cls(depth, **kwargs)
        except ParameterError as exc:
            raise ParameterError(
                f"CKKS: the model's evaluation consumes {depth} rescale levels, more than any parameters hold: {exc} "
                "To shorten it: lower-degree activation polynomials, fewer layers, or narrower activation "
                "intervals (a large constant term next to a small leading coefficient costs a level per "
                "polynomial); or lower precision_bits or int_bits."
            ) from None

    def check_model(self, model: Any) -> None:
        """Raise :class:`~edil.ParameterError` unless these parameters hold every level ``model``'s evaluation takes.

        The count is :meth:`levels_consumed` on this scheme's own chain (exact, no encryption).
        """
        need = self.levels_consumed(model)
        if need > self.depth:
            raise ParameterError(
                f"CKKS: the model needs multiplicative depth {need} (rescale levels), these parameters provide "
                f"{self.depth}; create the scheme with CKKS.for_model(model), which sizes the chain from the model"
            )

    def levels_consumed(self, model: Any) -> int:
        """Rescale levels the evaluation of ``model`` takes on this scheme's chain, for a freshly encoded input.

        The evaluator itself runs on placeholder ciphertexts (see :func:`required_depth`);
        nothing is encrypted and no key is needed, so a node's scheme can answer too. The count
        may exceed :attr:`depth` (then the real evaluation would run out of levels).

        Raises:
            UnsupportedOperationError: ``model`` is not a :class:`edil.models.Sequential`.
        """
        from edil import models

        if not isinstance(model, models.Sequential):
            raise UnsupportedOperationError(f"levels_consumed needs a models.Sequential, got {type(model).__name__}")
        _refuse_comparisons(model)
        twin = self._twin()
        has_dense = any(isinstance(la, models.Dense) for la in model.layers)
        k = model.in_features if has_dense else 1  # without a dense layer every op is elementwise
        x = twin._wrap((1, k), [_SHADOW] * k, np.ones(k), np.zeros(k, dtype=np.int64), True, True)
        enc = models.encode_model(model, twin)
        out = enc(x) if has_dense else enc.run_layers(x)
        assert isinstance(out, CKKSTensor)
        return max(twin._deepest, int(out.levels.max(initial=0)))

    def _twin(self) -> CKKS:
        """A fresh dry-run twin of this scheme: same chain, same primes, no keys."""
        return self._planner(self.poly_modulus_degree, self._p["coeff_mod_bit_sizes"], self.precision_bits, self._primes)

    @classmethod
    def _planner(cls, n: int, bits: Sequence[int], precision_bits: int, primes: Sequence[int] | None) -> CKKS:
        """A keyless twin whose ciphertexts are :class:`_Shadow` placeholders (a dry run).

        ``primes`` are the chain's data primes; ``None`` stands for an ideal chain whose primes
        all equal ``Delta``. Levels past the chain rescale by ``Delta`` and are counted, never refused.
        """
        self = cls.__new__(cls)
        Scheme.__init__(self)
        self._ctx = None
        params = {"poly_modulus_degree": n, "coeff_mod_bit_sizes": list(bits), "precision_bits": precision_bits, "depth": len(bits) - 2}
        if primes is None:
            primes = [2 ** (bits[0])] + [2**precision_bits] * (len(bits) - 2)
        self._set_params(params, list(primes))
        self._fingerprint = hashlib.sha256(b"edil-ckks-dry-run" + json.dumps(params, sort_keys=True).encode()).digest()
        self._deepest = 0
        return self

    def _init_from(self, ctx: Any, params: dict[str, Any], public_bytes: bytes | None = None) -> None:
        self._ctx = ctx
        bits = list(params["coeff_mod_bit_sizes"])
        # data primes; the last one SEAL creates is the special (key-switching) prime
        self._set_params(params, _chain_primes(int(params["poly_modulus_degree"]), bits))
        if public_bytes is None:
            public_bytes = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=True)
        self._fingerprint = hashlib.sha256(public_bytes).digest()

    def _set_params(self, params: dict[str, Any], primes: list[int]) -> None:
        """The public parameters and the bookkeeping derived from them (shared with dry runs)."""
        self._p = dict(params)
        self.depth = int(params["depth"])
        self.precision_bits = int(params["precision_bits"])
        self.poly_modulus_degree = int(params["poly_modulus_degree"])
        self.slots = self.poly_modulus_degree // 2
        self._delta = float(2**self.precision_bits)
        self._primes = primes
        self._log_q = [math.log2(q) for q in self._primes]
        self.int_bits = list(params["coeff_mod_bit_sizes"])[0] - self.precision_bits

    @property
    def is_private(self) -> bool:
        """Whether this instance holds the secret key (client side)."""
        return self._ctx is not None and bool(self._ctx.is_private())

    @property
    def has_galois_keys(self) -> bool:
        return self._ctx is not None and bool(self._ctx.has_galois_keys())

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the public context: binds ciphertexts to their keys."""
        return self._fingerprint

    @property
    def scheme_id(self) -> str:
        bits = "-".join(map(str, self._p["coeff_mod_bit_sizes"]))
        return f"ckks/N={self.poly_modulus_degree}/q={bits}/delta=2^{self.precision_bits}/ctx={self._fingerprint[:8].hex()}"

    @property
    def params(self) -> dict[str, Any]:
        return {
            "scheme": self.name,
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self._p["coeff_mod_bit_sizes"]),
            "precision_bits": self.precision_bits,
            "depth": self.depth,
            "security_bits": 128,
            "context": self._fingerprint.hex(),
        }

    # --- public context (what travels to nodes) ---------------------------------------------------
    def public_context_bytes(self) -> bytes:
        """The context a node needs to compute: public, relinearization (and Galois) keys only."""
        body = self._ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=True)
        header = json.dumps(self._p, sort_keys=True).encode()
        return _ENVELOPE.seal(_KIND_CONTEXT, header, body)

    @classmethod
    def from_public_context(cls, data: bytes) -> CKKS:
        """The node side: a scheme that computes on ciphertexts but cannot decrypt.

        Raises:
            SerializationError: corrupt, truncated or non-CKKS bytes, or a context that holds a
                secret key (only public contexts may leave the client).
        """
        body, header = _open_envelope(data, _KIND_CONTEXT)
        # Every header value is bounded before anything is sized or built from it; the SEAL body
        # is then checked against the header, so the parameters the node reports (and the
        # transcript hashes) are those of the keys it computes with.
        params = _context_params(header)
        try:
            ctx = ts.context_from(body)
        except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError on bad input
            raise SerializationError(f"corrupt CKKS context: {type(exc).__name__}: {exc}") from None
        _check_context(ctx, params)
        self = cls.__new__(cls)
        Scheme.__init__(self)
        try:
            self._init_from(ctx, params, public_bytes=body)
        except (KeyError, TypeError, ValueError) as exc:
            raise SerializationError(f"corrupt CKKS context parameters: {exc}") from None
        return self

    # --- serialization of values -----------------------------------------------------------------
    def serialize(self, value: Encoded) -> bytes:
        """Bytes of an encoded value, bound to this context by its fingerprint."""
        t = self._t(value)
        blobs = [v.serialize() for v in t.columns]
        meta = {
            "shape": [int(d) for d in t.shape],
            "batched": bool(t.batched),
            "clean": bool(t.clean),
            "factors": [float(f).hex() for f in t.factors],
            "levels": [int(v) for v in t.levels],
            "lens": [len(b) for b in blobs],
        }
        header = json.dumps(meta, sort_keys=True).encode()
        out = _ENVELOPE.seal(_KIND_TENSOR, header, blobs, prefix=self._fingerprint)
        self._count("bytes_serialized", len(out))
        return out

    def declared_shape(self, data: bytes) -> tuple[int, ...]:
        """The shape serialized bytes declare, checked as :meth:`deserialize` checks it, without the body.

        The envelope's framing (magic, kind, version, lengths), the context fingerprint and
        metadata that agrees with the payload's length are checked; neither the checksum over the
        payload nor the ciphertexts, which are most of :meth:`deserialize`'s time. For a relay
        that refuses a wrong shape or context early and computes nothing (a gateway); whoever
        computes on the value deserializes it, which checks both.

        Raises:
            SerializationError: corrupt or truncated bytes, or not a CKKS tensor.
            SchemeMismatchError: a value made under another context (other keys).
        """
        return self._tensor_meta(data, checksum=False)[1]

    def _tensor_meta(
        self, data: bytes, *, checksum: bool = True
    ) -> tuple[memoryview, tuple[int, ...], bool, bool, list[int], np.ndarray, np.ndarray]:
        """``(body, shape, batched, clean, lens, factors, levels)`` of serialized bytes: everything but the ciphertexts checked."""
        body, header = _open_tensor(data, checksum=checksum)
        if len(header) < _DIGEST:
            raise SerializationError("truncated CKKS tensor")
        # The fingerprint sits between the fixed header and the JSON metadata.
        fp, meta_raw = header[:_DIGEST], header[_DIGEST:]
        if fp != self._fingerprint:
            raise SchemeMismatchError(
                f"ciphertext made under CKKS context {fp[:8].hex()} given to context {self._fingerprint[:8].hex()}"
            )
        meta = json_from_untrusted(meta_raw, type=_TensorMeta)
        shape, batched, clean, lens = shape_from_untrusted(meta.shape), meta.batched, meta.clean, meta.lens
        factors = np.array([_float_from_hex(f) for f in meta.factors], dtype=np.float64)
        levels = np.array(meta.levels, dtype=np.int64)
        cols = _n_columns(shape, batched)
        if not (len(factors) == len(levels) == len(lens) == cols) or sum(lens) != len(body) or min(lens, default=1) <= 0:
            raise SerializationError("CKKS tensor metadata does not match its payload")
        if not np.all(np.isfinite(factors)) or np.any(levels < 0) or np.any(levels > self.depth):
            raise SerializationError("CKKS tensor metadata out of range")
        return body, shape, batched, clean, lens, factors, levels

    def deserialize(self, data: bytes) -> CKKSTensor:
        """Inverse of :meth:`serialize`.

        Raises:
            SerializationError: corrupt or truncated bytes, or not a CKKS tensor.
            SchemeMismatchError: a ciphertext made under another context (other keys).
        """
        body, shape, batched, clean, lens, factors, levels = self._tensor_meta(data)
        vecs: list[Any] = []
        pos = 0
        expect = self._vector_size(shape, batched)
        for n in lens:
            blob = bytes(body[pos : pos + n])
            pos += n
            try:
                vec = ts.ckks_vector_from(self._ctx, blob)
                size = vec.size()
            except Exception as exc:
                raise SerializationError(f"corrupt ciphertext: {exc}") from None
            if size != expect:
                raise SerializationError(f"ciphertext vector holds {size} slots, expected {expect}")
            # Fail closed on metadata that disagrees with the ciphertexts (their level decides
            # the public factor, so a wrong level would decode to a wrong value).
            lv = int(levels[len(vecs)])
            for ct in vec.data.ciphertext():
                if ct.coeff_modulus_size() != len(self._primes) - lv or not math.isclose(ct.scale, self._delta, rel_tol=1e-9):
                    raise SerializationError("ciphertext level or scale does not match its metadata")
                if ct.size() != 2:  # every value EDIL sends is relinearized; others break later products
                    raise SerializationError(f"ciphertext has {ct.size()} polynomials, expected 2")
            vecs.append(vec)
        return self._wrap(shape, vecs, factors, levels, batched, clean)

    # --- internals ----------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        self.stats.extra[key] = self.stats.extra.get(key, 0) + n

    def _t(self, value: Encoded) -> CKKSTensor:
        self.check(value)
        if not isinstance(value, CKKSTensor):
            raise UnsupportedOperationError(f"expected a CKKSTensor, got {type(value).__name__}")
        return value

    def _vector_size(self, shape: tuple[int, ...], batched: bool) -> int:
        if not batched:
            return self.slots
        return -(-shape[0] // self.slots) * self.slots

    def _wrap(self, shape: tuple[int, ...], cols: list[Any], factors: Any, levels: Any, batched: bool, clean: bool) -> CKKSTensor:
        chunks = self._vector_size(tuple(shape), batched) // self.slots
        # Plain Python types only: the metadata is serialized as JSON (a numpy bool from a
        # comparison, e.g. a zero bias column, would not be).
        shape = tuple(int(d) for d in shape)
        return CKKSTensor(self.scheme_id, shape, tuple(cols), _ro(factors, np.float64), _ro(levels, np.int64), bool(batched), bool(clean), int(chunks))

    def _prime(self, level: int) -> float:
        """The prime a rescale drops from a ciphertext that has been rescaled ``level`` times.

        Every level-consuming operation asks for it first, so a dry run (no context) records
        here the deepest level the evaluation reaches.
        """
        if self._ctx is None:
            self._deepest = max(self._deepest, level + 1)
            if level >= self.depth:
                return self._delta
        elif level >= self.depth:
            raise ParameterError(
                f"CKKS: out of levels: this operation needs multiplicative depth >= {level + 1}, the parameters "
                f"provide {self.depth}. For a model, CKKS.for_model(model) sizes the chain from the whole "
                "evaluation (CKKS.check_model tells beforehand whether a scheme holds it)"
            )
        return float(self._primes[len(self._primes) - 1 - level])

    def _bits_at(self, level: int) -> float:
        return sum(self._log_q[: len(self._primes) - level])

    def _pad(self, values: np.ndarray, size: int) -> list[float]:
        out = np.zeros(size)
        out[: values.shape[0]] = values
        return out.tolist()

    def _encrypt(self, values: list[float]) -> Any:
        self.stats.ciphertexts += -(-len(values) // self.slots)
        return ts.ckks_vector(self._ctx, values)

    def _zero_like(self, vec: Any) -> Any:
        # TenSEAL turns a product by 0 into a fresh encryption of zero at the top level.
        return vec * 0.0

    def _scale_col(self, vec: Any, level: int, s: float) -> Any:
        """``vec * s`` with a rescale: plaintext ``raw * s * Delta / q``."""
        self._prime(level)
        self._count("plain_mults")
        self._count("rescales")
        return vec * float(s)

    def _match(self, vec: Any, f: float, lv: int, target: float) -> tuple[Any, int] | None:
        """Re-express ``f * raw`` with factor ``target`` (one level); ``None`` if it rounds to 0."""
        q = self._prime(lv)
        s = f * q / (target * self._delta)
        if abs(s) * self._delta < 0.5:
            return None
        return self._scale_col(vec, lv, s), lv + 1

    def _combine(self, va: Any, fa: float, la: int, vb: Any, fb: float, lb: int, sign: float) -> tuple[Any, float, int]:
        """``fa*raw_a + sign*fb*raw_b`` as one ciphertext with a common factor."""
        if fa != fb:
            # Rescale the operand that has more levels left; the other is mod-switched by TenSEAL.
            if lb <= la:
                m = self._match(vb, fb, lb, fa)
                if m is None:
                    return va, fa, la
                vb, lb = m
            else:
                m = self._match(va, fa, la, fb)
                if m is None:
                    return (vb if sign > 0 else vb.neg()), fb, lb
                va, la = m
                fa = fb
        out = va + vb if sign > 0 else va - vb
        return out, fa, max(la, lb)

    def _mul_cols(self, va: Any, fa: float, la: int, vb: Any, fb: float, lb: int) -> tuple[Any, float, int]:
        lv = max(la, lb)
        q = self._prime(lv)
        self._count("ct_mults")
        self._count("rescales")
        out = va.square() if va is vb else va * vb
        return out, fa * fb * q / self._delta, lv + 1

    def _tile(self, vec: Any, chunks: int) -> Any:
        """An unbatched (one-chunk, replicated) vector repeated over ``chunks`` chunks."""
        if chunks == 1:
            return vec
        sizes, cts, scale = _pb_parse(vec.serialize())
        return ts.ckks_vector_from(self._ctx, _pb_build([self.slots] * chunks, cts * chunks, scale))

    def _broadcast_index(self, a: CKKSTensor, b: CKKSTensor, op: str) -> np.ndarray:
        """For each column of ``a``, the column of ``b`` that broadcasts onto it."""
        try:
            out = np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise ShapeError(f"{op}: shapes {a.shape} and {b.shape} do not broadcast") from None
        if out != a.shape:
            raise ShapeError(f"{op}: operand of shape {b.shape} would grow {a.shape} to {out}")
        a_rest = a.shape[1:] if a.batched else a.shape
        if b.batched:
            if not a.batched or b.shape[0] != a.shape[0] or len(b.shape) != len(a.shape):
                raise UnsupportedOperationError(
                    f"scheme 'ckks' cannot broadcast a batched value of shape {b.shape} over the batch axis of {a.shape}"
                )
            b_rest = b.shape[1:]
        else:
            b_rest = b.shape
        idx = np.arange(max(1, int(np.prod(b_rest, dtype=np.int64)))).reshape(b_rest)
        return np.broadcast_to(idx, a_rest).ravel()

    # --- encode / decode ----------------------------------------------------------------------
    def encode(self, x: Any) -> CKKSTensor:
        """Encrypt a real array under the client's public key.

        Arrays with two or more axes are batched (axis 0 in the slots); scalars and vectors
        are unbatched rows (one replicated ciphertext per element).

        Raises:
            EncodingError: non-numeric, NaN or inf, or an empty array.
            OverflowRangeError: ``|x| >= 2^(int_bits - 1)``.
        """
        arr = self.real_array(x, nonempty=True)
        self.check_int_bits(arr, self.int_bits)
        if arr.ndim >= 2:
            batch = arr.shape[0]
            cols_arr = arr.reshape(batch, -1)
            size = self._vector_size(arr.shape, True)
            cols = [self._encrypt(self._pad(cols_arr[:, j], size)) for j in range(cols_arr.shape[1])]
            batched = True
        else:
            cols = [self._encrypt([float(v)] * self.slots) for v in arr.ravel()]
            batched = False
        n = len(cols)
        return self._wrap(arr.shape, cols, np.ones(n), np.zeros(n, dtype=np.int64), batched, True)

    def decode(self, value: Encoded) -> np.ndarray:
        """Decrypt (client side only).

        Raises:
            UnsupportedOperationError: this instance holds only the public context (a node).
        """
        t = self._t(value)
        if not self.is_private:
            raise UnsupportedOperationError(
                "scheme 'ckks' on a node holds only the public context: decryption needs the client's secret key"
            )
        if t.batched:
            out = np.empty((t.batch, len(t.columns)))
            for j, (vec, f) in enumerate(zip(t.columns, t.factors)):
                out[:, j] = np.asarray(vec.decrypt()[: t.batch]) * f
        else:
            out = np.array([vec.decrypt()[0] * f for vec, f in zip(t.columns, t.factors)])
        return out.reshape(t.shape)

    # --- linear operations --------------------------------------------------------------------
    def _add_sub(self, a: Encoded, b: Encoded, sign: float, op: str) -> CKKSTensor:
        ta, tb = self._t(a), self._t(b)
        idx = self._broadcast_index(ta, tb, op)
        chunks = self._vector_size(ta.shape, ta.batched) // self.slots
        cols, fs, lvs = [], [], []
        tiled: dict[int, Any] = {}
        for j, k in enumerate(idx):
            vb = tb.columns[k]
            if ta.batched and not tb.batched:
                vb = tiled.setdefault(int(k), self._tile(vb, chunks))
            v, f, lv = self._combine(ta.columns[j], float(ta.factors[j]), int(ta.levels[j]), vb, float(tb.factors[k]), int(tb.levels[k]), sign)
            cols.append(v)
            fs.append(f)
            lvs.append(lv)
        clean = ta.clean and (tb.clean if tb.batched else not ta.batched)
        return self._wrap(ta.shape, cols, fs, lvs, ta.batched, clean)

    def add(self, a: Encoded, b: Encoded) -> CKKSTensor:
        """Encrypted + encrypted; ``b`` may broadcast to ``a``'s shape (e.g. a bias row)."""
        return self._add_sub(a, b, 1.0, "add")

    def sub(self, a: Encoded, b: Encoded) -> CKKSTensor:
        """Encrypted - encrypted; ``b`` may broadcast to ``a``'s shape."""
        return self._add_sub(a, b, -1.0, "sub")

    def _public_columns(self, t: CKKSTensor, p: Any, op: str) -> list[np.ndarray]:
        arr = np.broadcast_to(self.public_array(p, t.shape, op), t.shape)
        if t.batched:
            m = arr.reshape(t.batch, -1)
            return [m[:, j] for j in range(m.shape[1])]
        return [arr.reshape(-1)[j : j + 1] for j in range(len(t.columns))]

    def add_public(self, a: Encoded, p: Any) -> CKKSTensor:
        """Encrypted + public array (broadcast). No level is consumed."""
        t = self._t(a)
        cols, clean = [], t.clean
        size = self._vector_size(t.shape, t.batched)
        for vec, f, pc in zip(t.columns, t.factors, self._public_columns(t, p, "add_public")):
            if np.all(pc == pc[0]):
                c = float(pc[0]) / f
                cols.append(vec + c if c != 0.0 else vec)
                clean = clean and (c == 0.0 or not t.batched)
            else:
                cols.append(vec + self._pad(pc / f, size))
        return self._wrap(t.shape, cols, t.factors, t.levels, t.batched, clean)

    def mul_public(self, a: Encoded, p: Any) -> CKKSTensor:
        """Encrypted * public array (broadcast).

        A public value that is constant along the batch axis only updates the column's public
        factor (no level); otherwise one plaintext product (one level).
        """
        t = self._t(a)
        cols, fs, lvs = [], [], []
        size = self._vector_size(t.shape, t.batched)
        for vec, f, lv, pc in zip(t.columns, t.factors, t.levels, self._public_columns(t, p, "mul_public")):
            if np.all(pc == pc[0]):
                c = float(pc[0])
                if c == 0.0:
                    cols.append(self._zero_like(vec))
                    fs.append(1.0)
                    lvs.append(0)
                else:
                    cols.append(vec)
                    fs.append(f * c)
                    lvs.append(int(lv))
            else:
                q = self._prime(int(lv))
                self._count("plain_mults")
                self._count("rescales")
                cols.append(vec * self._pad(pc, size))
                fs.append(f * q / self._delta)
                lvs.append(int(lv) + 1)
        return self._wrap(t.shape, cols, fs, lvs, t.batched, t.clean)

    def matmul_public(self, a: Encoded, w: Any) -> CKKSTensor:
        """Encrypted ``(batch, k)`` @ public ``(k, n)``: sums of ciphertext x scalar, no rotations.

        One level. Products are summed at scale ``Delta^2`` and each output is rescaled once
        when the level has room (deferred rescaling); the input columns' public factors are
        folded into the weights.
        """
        t = self._t(a)
        try:
            w_arr = np.asarray(w, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise UnsupportedOperationError(f"matmul_public: weights of type {type(w).__name__} are not numeric") from exc
        self.check_matmul_shapes(t.shape, w_arr.shape, "matmul_public")
        if not t.batched:
            raise UnsupportedOperationError("scheme 'ckks' computes matmul_public on batched (batch, k) values only")
        if not np.all(np.isfinite(w_arr)):
            raise EncodingError("matmul_public: weights hold non-finite values")
        wf = w_arr * t.factors[:, None]
        lv = int(t.levels.max())
        ctx = self._ctx
        q = self._prime(lv)
        defer = self._bits_at(lv) > 3 * self.precision_bits + 1
        min_w = 0.5 / self._delta  # weights below this encode to 0
        live = np.abs(wf) >= min_w
        n = wf.shape[1]
        out_levels = np.where(live.any(axis=0), lv + 1, 0)
        if ctx is None:  # a dry run: the bookkeeping above is all there is
            cols = [_SHADOW] * n
            return self._wrap((t.shape[0], n), cols, np.full(n, q / self._delta), out_levels, True, t.clean)
        cols = []
        # The hot loop talks to TenSEAL's C++ vectors directly (the Python wrappers cost ~20%).
        xs = [col.data for col in t.columns]
        for j in range(n):
            nz = np.flatnonzero(live[:, j]).tolist()
            if not nz:
                cols.append(self._zero_like(t.columns[0]))
                continue
            if defer:
                ctx.auto_rescale = False
                try:
                    acc = xs[nz[0]].mul_plain(float(wf[nz[0], j]))
                    for i in nz[1:]:
                        acc.add_(xs[i].mul_plain(float(wf[i, j])))
                finally:
                    ctx.auto_rescale = True
                # Multiplying by the constant plaintext 1 (2^-precision at scale Delta) makes
                # TenSEAL rescale once: raw * Delta^2 / q, relabelled at scale Delta.
                acc.mul_plain_(1.0 / self._delta)
                self._count("rescales")
            else:
                acc = xs[nz[0]].mul_plain(float(wf[nz[0], j]))
                for i in nz[1:]:
                    acc.add_(xs[i].mul_plain(float(wf[i, j])))
                self._count("rescales", len(nz))
            self._count("plain_mults", len(nz))
            cols.append(ts.CKKSVector._wrap(acc))
        return self._wrap((t.shape[0], n), cols, np.full(n, q / self._delta), out_levels, True, t.clean)

    def sum(self, a: Encoded, axis: int) -> CKKSTensor:
        """Sum along one axis. Over the batch axis this rotates (needs ``galois_keys=True``)."""
        t = self._t(a)
        ax = self.check_axis(t.shape, axis, "sum")
        if t.batched and ax == 0:
            return self._sum_batch(t)
        grid_shape = t.shape[1:] if t.batched else t.shape
        g = ax - 1 if t.batched else ax
        idx = np.moveaxis(np.arange(len(t.columns)).reshape(grid_shape), g, -1)
        out_shape = t.shape[:ax] + t.shape[ax + 1 :]
        cols, fs, lvs = [], [], []
        for group in idx.reshape(-1, idx.shape[-1]):
            k0 = int(group[0])
            v, f, lv = t.columns[k0], float(t.factors[k0]), int(t.levels[k0])
            for k in group[1:]:
                v, f, lv = self._combine(v, f, lv, t.columns[k], float(t.factors[k]), int(t.levels[k]), 1.0)
            cols.append(v)
            fs.append(f)
            lvs.append(lv)
        batched = t.batched and len(out_shape) >= 1
        return self._wrap(out_shape, cols, fs, lvs, batched, t.clean)

    def _sum_batch(self, t: CKKSTensor) -> CKKSTensor:
        if not self.has_galois_keys:
            raise UnsupportedOperationError(
                "scheme 'ckks' sums over the batch axis with rotations: create the client scheme with "
                "CKKS(..., galois_keys=True) so that the public context carries Galois keys"
            )
        size = self._vector_size(t.shape, True)
        mask = [1.0] * t.batch + [0.0] * (size - t.batch)
        cols, fs, lvs = [], [], []
        for vec, f, lv in zip(t.columns, t.factors, t.levels):
            lv = int(lv)
            if not t.clean:
                q = self._prime(lv)
                vec = vec * mask
                f, lv = f * q / self._delta, lv + 1
                self._count("plain_mults")
                self._count("rescales")
            try:
                s = vec.sum()
            except Exception as exc:
                raise EdilError(f"TenSEAL failed to sum a ciphertext: {exc}") from None
            self._count("rotation_sums")
            # Each chunk was summed over all its slots, so the total sits in every slot: an
            # unbatched (replicated) value. Restore the full-slot size TenSEAL dropped.
            sizes, cts, scale = _pb_parse(s.serialize())
            cols.append(ts.ckks_vector_from(self._ctx, _pb_build([self.slots], cts, scale)))
            fs.append(f)
            lvs.append(lv)
        return self._wrap(t.shape[1:], cols, fs, lvs, False, True)

    # --- products and polynomials ---------------------------------------------------------------
    def mul(self, a: Encoded, b: Encoded) -> CKKSTensor:
        """Encrypted * encrypted, elementwise (one level, relinearized)."""
        ta, tb = self._t(a), self._t(b)
        idx = self._broadcast_index(ta, tb, "mul")
        chunks = self._vector_size(ta.shape, ta.batched) // self.slots
        cols, fs, lvs = [], [], []
        for j, k in enumerate(idx):
            vb = tb.columns[k]
            if ta.batched and not tb.batched:
                vb = self._tile(vb, chunks)
            v, f, lv = self._mul_cols(ta.columns[j], float(ta.factors[j]), int(ta.levels[j]), vb, float(tb.factors[k]), int(tb.levels[k]))
            cols.append(v)
            fs.append(f)
            lvs.append(lv)
        return self._wrap(ta.shape, cols, fs, lvs, ta.batched, ta.clean or tb.clean)

    def polyval(self, a: Encoded, coeffs: Sequence[float]) -> CKKSTensor:
        """``sum(coeffs[i] * a**i)`` elementwise, in ``ceil(log2 d)`` levels (:func:`poly_depth`) plus
        one where a large constant term is absorbed next to a small leading coefficient.

        Raises:
            ParameterError: not enough levels left (checked before any ciphertext operation,
                with the exact count).
        """
        t = self._t(a)
        c = [float(v) for v in np.asarray(coeffs, dtype=np.float64).ravel()]
        if not c:
            raise ParameterError("polyval needs at least one coefficient")
        if not all(math.isfinite(v) for v in c):
            raise EncodingError("polyval: non-finite coefficients")
        # Coefficients below float64 resolution relative to the largest are numerical zeros
        # (least-squares fits leave ~1e-18 where the exact fit is 0); keeping them would make a
        # public factor vanish.
        peak = max(abs(v) for v in c)
        c = [v if abs(v) > 1e-14 * peak else 0.0 for v in c]
        while len(c) > 1 and c[-1] == 0.0:
            c.pop()
        if self._ctx is not None:
            # Refuse up front, with the exact count: the same evaluation on placeholders.
            twin = self._twin()
            twin.polyval(twin._wrap(t.shape, [_SHADOW] * len(t.columns), t.factors, t.levels, t.batched, t.clean), c)
            have = int(t.levels.max())
            need = max(twin._deepest, have)
            if need > self.depth:
                raise ParameterError(
                    f"CKKS: this degree-{len(c) - 1} polynomial needs {need - have} more levels, the value has "
                    f"{self.depth - have} left: the computation needs multiplicative depth >= {need}, the "
                    f"parameters provide {self.depth}. For a model, CKKS.for_model(model) sizes the chain from "
                    "the whole evaluation"
                )
        cols, fs, lvs = [], [], []
        clean = t.clean
        for vec, f, lv in zip(t.columns, t.factors, t.levels):
            powers: dict[int, tuple[Any, float, int]] = {1: (vec, float(f), int(lv))}
            v, fo, lo, const = self._poly_eval(c, powers)
            if v is None:  # a constant polynomial
                v, fo, lo = self._zero_like(vec), 1.0, 0
            if const != 0.0:
                v, fo, lo = self._absorb(v, fo, lo, const)
                clean = clean and not t.batched
            cols.append(v)
            fs.append(fo)
            lvs.append(lo)
        return self._wrap(t.shape, cols, fs, lvs, t.batched, clean)

    def _absorb(self, v: Any, f: float, lv: int, const: float) -> tuple[Any, float, int]:
        """``f * raw + const`` as one ciphertext. When ``|const / f|`` would crowd the integer
        headroom (a tiny leading coefficient next to a large constant), first move the
        ciphertext to a larger factor (one level)."""
        if const == 0.0:
            return v, f, lv
        if abs(const / f) >= 2.0 ** (self.int_bits - 4):
            g = math.copysign(abs(const) / 8.0, f)
            matched = self._match(v, f, lv, g)
            if matched is None:  # the non-constant part is below the encoding precision
                return self._zero_like(v) + const / g, g, 0
            v, lv = matched
            f = g
        return v + const / f, f, lv

    def _power(self, powers: dict[int, tuple[Any, float, int]], m: int) -> tuple[Any, float, int]:
        if m not in powers:
            v, f, lv = self._power(powers, m // 2)
            powers[m] = self._mul_cols(v, f, lv, v, f, lv)
        return powers[m]

    def _poly_eval(self, c: list[float], powers: dict[int, tuple[Any, float, int]]) -> tuple[Any, float, int, float]:
        """Evaluate ``c`` (lowest first) on one column: ``(vec, factor, level, const)``.

        The value is ``factor * decrypt(vec) + const``; the constant stays pending so that it
        is added once, relative to the final factor (adding it relative to the factor of a
        tiny linear coefficient would blow the plaintext up).
        """
        while len(c) > 1 and c[-1] == 0.0:
            c = c[:-1]
        d = len(c) - 1
        if d == 0:
            return None, 1.0, 0, c[0]
        if d == 1:
            v, f, lv = powers[1]
            return v, f * c[1], lv, c[0]
        _, m = _poly_plan(d)
        pv, pf, pl = self._power(powers, m)
        q, r = c[m:], c[:m]
        if len(q) == 1:
            v, f, lv = pv, pf * q[0], pl
        else:
            qv, qf, ql, qc = self._poly_eval(q, powers)
            if len(q) == 2:
                # A linear factor: one real scalar product (no extra depth: x^m is deeper) to a
                # well-conditioned factor, so that a tiny slope next to a large constant is safe.
                g = max(abs(qf), abs(qc))
                matched = self._match(qv, qf, ql, g)
                if matched is None:
                    qv = None
                else:
                    qv, ql = matched
                    qf = g
            if qv is None:
                v, f, lv = pv, pf * qc, pl
            else:
                qv, qf, ql = self._absorb(qv, qf, ql, qc)
                v, f, lv = self._mul_cols(qv, qf, ql, pv, pf, pl)
        rv, rf, rl, rc = self._poly_eval(r, powers)
        if rv is None:
            return v, f, lv, rc
        v, f, lv = self._combine(v, f, lv, rv, rf, rl, 1.0)
        return v, f, lv, rc


def _n_columns(shape: tuple[int, ...], batched: bool) -> int:
    rest = shape[1:] if batched else shape
    return math.prod(rest)


def _open_envelope(data: Any, kind: bytes) -> tuple[bytes, bytes]:
    """Check magic, kind, version and digest; return ``(body, header)``.

    For tensors the header is ``fingerprint || json``; for contexts it is the JSON parameters.
    """
    prefix, header, body = _ENVELOPE.open(data, kind, prefix_len=_DIGEST if kind == _KIND_TENSOR else 0)
    return body, prefix + header


def _open_tensor(data: Any, *, checksum: bool = True) -> tuple[memoryview, bytes]:
    """:func:`_open_envelope` of a tensor, its body a view (megabytes of ciphertexts, taken apart once)."""
    prefix, header, body = _ENVELOPE.open(data, _KIND_TENSOR, prefix_len=_DIGEST, view=True, checksum=checksum)
    return body, prefix + header


# --- decoding untrusted contexts and tensors ------------------------------------------------------
#: Most primes a context header may list (the 128-bit budget of N = 32768 holds ~44 at 20 bits).
_MAX_CHAIN = 64


class _ContextHeader(msgspec.Struct, forbid_unknown_fields=True):
    """The JSON header of a public context (``CKKS._p``), with strict types."""

    poly_modulus_degree: int
    coeff_mod_bit_sizes: Annotated[list[int], msgspec.Meta(min_length=2, max_length=_MAX_CHAIN)]
    precision_bits: int
    depth: int


class _TensorMeta(msgspec.Struct, forbid_unknown_fields=True):
    """The JSON metadata of a serialized :class:`CKKSTensor`, with strict types and ranges."""

    shape: list[int]
    batched: bool
    clean: bool
    factors: list[Annotated[str, msgspec.Meta(max_length=32)]]  # float.hex(): at most 24 characters
    levels: list[Annotated[int, msgspec.Meta(ge=0, le=_MAX_CHAIN)]]
    lens: list[Annotated[int, msgspec.Meta(ge=1, le=1 << 40)]]


def _float_from_hex(text: str) -> float:
    try:
        return float.fromhex(text)
    except (ValueError, OverflowError):
        raise SerializationError(f"CKKS tensor factor {text!r} is not a hex float") from None


def _context_params(header: bytes) -> dict[str, Any]:
    """The parameters a context header declares, refused unless :class:`CKKS` itself builds them.

    Raises:
        SerializationError: malformed JSON, unknown keys, values out of range, or a modulus
            chain that ``CKKS(depth, precision_bits=..., int_bits=..., poly_modulus_degree=...)``
            would not build.
    """
    h = json_from_untrusted(header, type=_ContextHeader)
    n, bits, prec, depth = h.poly_modulus_degree, list(h.coeff_mod_bit_sizes), h.precision_bits, h.depth
    # Cheap range checks first: nothing below allocates or loops in proportion to a header value.
    if n not in MAX_MODULUS_BITS or not 20 <= prec <= 50 or depth != len(bits) - 2:
        raise SerializationError(f"CKKS context header out of range: N={n}, precision_bits={prec}, depth={depth}")
    if any(not 1 <= b <= 60 for b in bits) or sum(bits) > MAX_MODULUS_BITS[n]:
        raise SerializationError(f"CKKS context header has a modulus chain {bits} that N={n} cannot hold at 128-bit security")
    try:
        _, expected = CKKS.choose_parameters(depth, precision_bits=prec, int_bits=bits[0] - prec, poly_modulus_degree=n)
    except (ValueError, ParameterError) as exc:
        raise SerializationError(f"CKKS context header is not a chain CKKS builds: {exc}") from None
    if list(expected) != bits:
        raise SerializationError(f"CKKS context header chain {bits} is not the chain CKKS builds ({list(expected)})")
    return {"poly_modulus_degree": n, "coeff_mod_bit_sizes": bits, "precision_bits": prec, "depth": depth}


def _check_context(ctx: Any, params: dict[str, Any]) -> None:
    """Refuse a loaded TenSEAL context that is not exactly the one its header declares.

    Checked: CKKS scheme, ring dimension, every prime of the chain (so every bit size), the
    global scale, the automatic rescale/relinearize/mod-switch flags the evaluator relies on,
    the presence of the public and relinearization keys, and the absence of a secret key.

    Raises:
        SerializationError: any mismatch.
    """
    n, bits = params["poly_modulus_degree"], params["coeff_mod_bit_sizes"]
    try:
        seal = ctx.seal_context().data
        parms = seal.key_context_data().parms()
        got = (
            bool(seal.parameters_set()),
            parms.scheme().name,
            int(parms.poly_modulus_degree()),
            [m.value() for m in parms.coeff_modulus()],
        )
        scale = float(ctx.global_scale)
        flags = (bool(ctx.auto_rescale), bool(ctx.auto_relin), bool(ctx.auto_mod_switch))
        keys = (bool(ctx.has_public_key()), bool(ctx.has_relin_keys()))
        private = bool(ctx.is_private()) or bool(ctx.has_secret_key())
    except Exception as exc:  # noqa: BLE001 - TenSEAL raises bare ValueError/RuntimeError
        raise SerializationError(f"CKKS context cannot be inspected: {type(exc).__name__}: {exc}") from None
    if private:
        raise SerializationError("refusing a CKKS context that holds a secret key: only public contexts are sent to nodes")
    primes = [m.value() for m in sealapi.CoeffModulus.Create(n, list(bits))]
    if got != (True, "CKKS", n, primes):
        raise SerializationError(
            f"CKKS context body does not match its header: header N={n}, bits={bits}; body scheme={got[1]}, "
            f"N={got[2]}, {len(got[3])} primes"
        )
    if scale != float(2 ** params["precision_bits"]):
        raise SerializationError(f"CKKS context scale {scale:g} does not match precision_bits={params['precision_bits']}")
    if flags != (True, True, True) or keys != (True, True):
        raise SerializationError("CKKS context lacks the public or relinearization key, or has automatic rescaling turned off")
