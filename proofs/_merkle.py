"""Positional binary Merkle trees, hashed exactly as ``EdilMerkle`` in Solidity.

Hashing rule (second-preimage safe: a leaf can never pose as an inner node)::

    leaf node   = keccak256(0x00 || leaf)
    inner node  = keccak256(0x01 || left || right)
    empty node  = 32 zero bytes (padding up to the next power of two, at every level)

A tree of ``n >= 1`` leaves has depth ``ceil(log2 n)``; a proof is the list of siblings from the
leaf level up, and bit ``i`` of the leaf index says whether the path node at level ``i`` is a right
child. Every real leaf sits at the same depth, so a proof of another length cannot lead to the root
without a keccak collision across the 0x00/0x01 prefixes. A padded position holds the empty node,
which is no leaf hash, so no leaf can be proven beyond ``n``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edil import ParameterError, UnsupportedOperationError, VerificationError

from ._hashing import check_bytes32, consteq, keccak256

MAX_DEPTH = 64
EMPTY_NODE = bytes(32)
_LEAF = b"\x00"
_INNER = b"\x01"


def leaf_hash(leaf: bytes) -> bytes:
    """``keccak256(0x00 || leaf)``: the level-0 node of a leaf."""
    return keccak256(_LEAF + bytes(leaf))


def inner_hash(left: bytes, right: bytes) -> bytes:
    """``keccak256(0x01 || left || right)``: an inner node."""
    return keccak256(_INNER + left + right)


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """Where a leaf sits in a tree and the siblings on its path to the root.

    Args:
        index: position of the leaf (0-based).
        siblings: sibling nodes from the leaf level upward; its length is the tree depth.
    """

    index: int
    siblings: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, int):
            raise UnsupportedOperationError("index must be an int")
        if self.index < 0:
            raise ParameterError("index must be >= 0")
        sibs = tuple(check_bytes32(s, "sibling") for s in self.siblings)
        if len(sibs) > MAX_DEPTH:
            raise ParameterError(f"proof depth {len(sibs)} exceeds {MAX_DEPTH}")
        object.__setattr__(self, "siblings", sibs)

    @property
    def depth(self) -> int:
        return len(self.siblings)


def compute_root(leaf: bytes, proof: InclusionProof) -> bytes:
    """The root that ``proof`` leads to from ``leaf``.

    Raises:
        VerificationError: the index does not fit the proof depth.
    """
    if not isinstance(proof, InclusionProof):
        raise UnsupportedOperationError("proof must be an InclusionProof")
    if proof.index >> proof.depth:
        raise VerificationError(f"leaf index {proof.index} does not fit a tree of depth {proof.depth}")
    node = leaf_hash(leaf)
    index = proof.index
    for sibling in proof.siblings:
        node = inner_hash(node, sibling) if index & 1 == 0 else inner_hash(sibling, node)
        index >>= 1
    return node


def verify_inclusion(leaf: bytes, proof: InclusionProof, root: bytes) -> None:
    """Check that ``leaf`` sits at ``proof.index`` under ``root``; fail closed.

    Args:
        leaf: the leaf bytes (for an epoch batch: a transcript's 32-byte EIP-712 digest).
        proof: its inclusion proof.
        root: the expected 32-byte root.

    Raises:
        VerificationError: the proof does not lead to ``root``.

    Example:
        >>> tree = MerkleTree([b"a" * 32, b"b" * 32, b"c" * 32])
        >>> verify_inclusion(b"c" * 32, tree.proof(2), tree.root)
    """
    root = check_bytes32(root, "root")
    if not isinstance(leaf, bytes | bytearray):
        raise UnsupportedOperationError("leaf must be bytes")
    if not consteq(compute_root(bytes(leaf), proof), root):
        raise VerificationError("inclusion proof does not lead to the expected root")


class MerkleTree:
    """A Merkle tree over ``n >= 1`` leaves (bytes of any length; 32 bytes for Solidity checks).

    Args:
        leaves: the leaves, in order.

    Raises:
        ParameterError: no leaves.

    Example:
        >>> tree = MerkleTree([bytes([i]) * 32 for i in range(5)])
        >>> tree.depth, len(tree.proof(4).siblings)
        (3, 3)
    """

    __slots__ = ("_levels", "_size")

    def __init__(self, leaves: Sequence[bytes]) -> None:
        level = [leaf_hash(leaf) for leaf in leaves]
        if not level:
            raise ParameterError("a Merkle tree needs at least one leaf")
        self._size = len(level)
        levels = [level]
        while len(level) > 1:
            if len(level) % 2:
                level = [*level, EMPTY_NODE]
            level = [inner_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
            levels.append(level)
        self._levels = levels

    def __len__(self) -> int:
        return self._size

    @property
    def depth(self) -> int:
        """Number of levels above the leaves, ``ceil(log2 n)``."""
        return len(self._levels) - 1

    @property
    def root(self) -> bytes:
        """The 32-byte root."""
        return self._levels[-1][0]

    def proof(self, index: int) -> InclusionProof:
        """Inclusion proof of leaf ``index``.

        Raises:
            IndexError: ``index`` outside ``[0, n)``.
        """
        if isinstance(index, bool) or not isinstance(index, int):
            raise UnsupportedOperationError("index must be an int")
        if not 0 <= index < self._size:
            raise IndexError(f"leaf index {index} outside [0, {self._size})")
        siblings = []
        i = index
        for level in self._levels[:-1]:
            j = i ^ 1
            siblings.append(level[j] if j < len(level) else EMPTY_NODE)
            i >>= 1
        return InclusionProof(index, tuple(siblings))
