"""The ring products a ``Masked`` party commits to, and their one-round audit.

A node running a party program records every ring product it computes (its share times public
weights, and the three local products of a matrix Beaver triple) as the exact integer product of
the unsigned operands, ``A @ B = C + 2^64 H``: ``C`` is the product mod 2^64 that the program uses,
``H`` its high part. It sends them with its result; the coordinator keeps them in the job's record
(:mod:`edil.runtime._mpc_session`), before the epoch's root is posted.

An auditor replaying the party from its view then does not recompute the products: for each one
it re-derives the operands ``A`` and ``B`` (the party's share, the opened masks, its dealer
material), checks the committed ``(C, H)`` with :func:`edil.proofs.matmul_audit_one_round`
(seeded after the root and its beacon, so the node could not know the test when it committed;
error < 2^-44 per product) and goes on with ``C``. Everything between the products (truncations,
comparisons, polynomials) is still recomputed, and every contribution is still compared with
the commitment the coordinator recorded, so a node that used another value than the ``C`` it
committed to fails as before, and one that committed to a wrong ``C`` fails the product audit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edil import SerializationError, ShapeError, VerificationError
from edil.hazmat import mpc, ring

from . import _wire
from ._deps import keccak256, matmul_audit_one_round
from ._task import array_from_bytes, array_to_bytes

__all__ = ["ProductAudit", "product_seed", "products_from_wire", "products_to_wire", "record_products", "wide_product"]

_U64 = np.uint64
#: Bound on the products one party may commit to (a model has far fewer; the program decides).
MAX_PRODUCTS = 4096
_SEED_TAG = b"EDIL/masked-products/v1"
# float64 sums 16-bit limb products exactly below 2^53: k (2^16 - 1)^2 < 2^53 for k < 2^21.
_HOST_MAX_K = 1 << 21
# Below this many multiply-adds, 16 float64 GEMMs on the host beat compiling the JAX kernel.
_HOST_MACS = 1 << 22

#: ``claim(index, C) -> C'``: what a node commits to for its ``index``-th product (the identity for
#: an honest node; :mod:`edil.runtime.testing` lies through it).
Claim = Callable[[int, np.ndarray], np.ndarray]


def wide_product(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(C, H)`` with ``a @ b = C + 2^64 H`` over the integers, for unsigned 64-bit matrices.

    Small products: 16-bit limbs, one float64 GEMM (every limb product and sum is exact below
    2^53), carries in uint64. Large ones: :func:`edil.hazmat.ring.matmul_wide`.

    Args:
        a: ``(m, k)`` uint64 matrix.
        b: ``(k, n)`` uint64 matrix.

    Returns:
        ``C`` ``(m, n)`` and ``H`` ``(m, n, 2)`` (``H = H[..., 0] + 2^64 H[..., 1]``), uint64.

    Raises:
        ShapeError: not two chaining matrices.
    """
    a, b = np.asarray(a, dtype=_U64), np.asarray(b, dtype=_U64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ShapeError(f"ring products are of matrices that chain, got {a.shape} @ {b.shape}")
    (m, k), n = a.shape, b.shape[1]
    if k >= _HOST_MAX_K or m * k * n >= _HOST_MACS:
        c, h = ring.matmul_wide(a, b)
        return ring.to_numpy(c), ring.to_numpy(h)
    mask = _U64(0xFFFF)
    al = np.concatenate([((a >> _U64(16 * i)) & mask).astype(np.float64) for i in range(4)], axis=0)  # (4m, k)
    bl = np.concatenate([((b >> _U64(16 * j)) & mask).astype(np.float64) for j in range(4)], axis=1)  # (k, 4n)
    prods = (al @ bl).astype(_U64).reshape(4, m, 4, n)  # prods[i, :, j, :] = a_i @ b_j < 2^53
    sums = [sum((prods[i, :, s - i, :] for i in range(max(0, s - 3), min(3, s) + 1)), np.zeros((m, n), _U64))
            for s in range(7)]  # weight 2^(16 s); at most 4 terms below 2^53 each
    digits: list[np.ndarray] = []
    carry = np.zeros((m, n), _U64)
    for s_sum in sums:
        t = s_sum + carry
        digits.append(t & mask)
        carry = t >> _U64(16)
    for _ in range(3):  # the product is below 2^(128 + 21): ten 16-bit digits hold it
        digits.append(carry & mask)
        carry = carry >> _U64(16)

    def word(ds: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((m, n), _U64)
        for i, d in enumerate(ds):
            out |= d << _U64(16 * i)
        return out

    return word(digits[0:4]), np.stack([word(digits[4:8]), word(digits[8:10])], axis=-1)


def _public_operand(w: Any) -> np.ndarray:
    """Public fixed-point weights as the ring matrix the party multiplies by (two's complement)."""
    w = np.asarray(w)
    return np.ascontiguousarray(w) if w.dtype == _U64 else w.astype(np.int64).view(_U64)


def record_products(p: mpc.Party, out: list[tuple[np.ndarray, np.ndarray]], *, claim: Claim | None = None) -> None:
    """Make the host party ``p`` compute its ring products as ``(C, H)`` and append them to ``out``.

    The program goes on with ``C`` (as claimed: ``claim`` may change it, and the program then uses
    the changed value consistently), so what the node commits to is what it computed with.
    """

    def matmul(a: Any, b: Any) -> np.ndarray:
        c, h = wide_product(a, b)
        if claim is not None:
            c = np.asarray(claim(len(out), c), dtype=_U64)
        out.append((c, h))
        return c

    def matmul_public(x: Any, w: Any, small: bool) -> np.ndarray:
        return matmul(x, _public_operand(w))

    p.matmul, p.matmul_public = matmul, matmul_public


def products_to_wire(products: Sequence[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """The products a node sends with its result: ``[[C, H], ...]`` in program order."""
    return _wire.dumps([[array_to_bytes(np.asarray(c, _U64)), array_to_bytes(np.asarray(h, _U64))] for c, h in products])


def products_from_wire(data: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Committed products from untrusted bytes, checked strictly.

    Raises:
        SerializationError: anything but a bounded list of ``[C, H]`` uint64 pairs with
            ``C`` a matrix and ``H`` of shape ``C.shape + (2,)``.
    """
    if not isinstance(data, bytes | bytearray):
        raise SerializationError("committed ring products must be bytes")
    items = _wire.loads(bytes(data))
    if not isinstance(items, list) or len(items) > MAX_PRODUCTS:
        raise SerializationError("committed ring products must be a bounded list")
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for item in items:
        if not isinstance(item, list) or len(item) != 2 or not all(isinstance(v, bytes) for v in item):
            raise SerializationError("a committed ring product is a pair [C, H] of tensor bytes")
        c, h = array_from_bytes(item[0]), array_from_bytes(item[1])
        if c.dtype != _U64 or h.dtype != _U64 or c.ndim != 2 or h.shape != c.shape + (2,):
            raise SerializationError("a committed ring product is a uint64 matrix C and its high part H (C.shape + (2,))")
        out.append((c, h))
    return out


def product_seed(seed: bytes, job_id: bytes, party: int) -> bytes:
    """The audit seed of one party's products in one job, from the epoch's audit seed."""
    return keccak256(_SEED_TAG + bytes(seed) + bytes(job_id) + int(party).to_bytes(4, "big"))


class ProductAudit:
    """Make a replayed host party take its committed products instead of recomputing them.

    Each product the program asks for is checked with the one-round audit against the operands
    the replay derived, and its committed ``C`` is handed back. :meth:`finish` checks that the
    program used every committed product.

    Args:
        p: the replayed party (its ``matmul``/``matmul_public`` are replaced).
        products: the party's committed ``(C, H)``, in program order.
        seed: >= 16 bytes fixed after the commitment (:func:`product_seed`).

    Raises (from the replay):
        VerificationError: a product fails its audit, or the program needs more products than
            were committed.
    """

    def __init__(self, p: mpc.Party, products: Sequence[tuple[np.ndarray, np.ndarray]], *, seed: bytes) -> None:
        self._products = list(products)
        self._seed = bytes(seed)
        self.audited = 0
        p.matmul, p.matmul_public = self._matmul, self._matmul_public

    def _matmul(self, a: Any, b: Any) -> np.ndarray:
        i = self.audited
        if i >= len(self._products):
            raise VerificationError(f"the party committed to {len(self._products)} ring products; its program computes more")
        c, h = self._products[i]
        a, b = np.asarray(a, dtype=_U64), np.asarray(b, dtype=_U64)
        try:
            matmul_audit_one_round(a, b, c, h, seed=keccak256(self._seed + i.to_bytes(4, "big")))
        except ShapeError as exc:
            raise VerificationError(f"ring product {i + 1} is not of the program's shape ({exc})") from None
        except VerificationError as exc:
            raise VerificationError(f"ring product {i + 1}: {exc}") from None
        self.audited += 1
        return c

    def _matmul_public(self, x: Any, w: Any, small: bool) -> np.ndarray:
        return self._matmul(x, _public_operand(w))

    def finish(self) -> None:
        """Raises VerificationError when committed products were left unused."""
        if self.audited != len(self._products):
            raise VerificationError(
                f"the party committed to {len(self._products)} ring products; its program computes {self.audited}"
            )
