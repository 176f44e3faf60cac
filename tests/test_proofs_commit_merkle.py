"""Commitments and Merkle trees: known answers, round trips, and tampering that must fail closed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import edil.proofs as proofs
from edil import EncodingError, SerializationError, VerificationError
from edil.proofs import (
    InclusionProof,
    MerkleTree,
    commit_bytes,
    commit_json,
    commit_tensor,
    compute_root,
    decode_tensor,
    encode_tensor,
    verify_chunk,
    verify_inclusion,
)
from edil.proofs._merkle import EMPTY_NODE, inner_hash, leaf_hash

dtypes = st.sampled_from([np.uint8, np.int32, np.uint64, np.int64, np.float32, np.float64, np.bool_])


def test_public_surface_is_curated():
    public = {n for n in dir(proofs) if not n.startswith("_")}
    assert public == set(proofs.__all__)
    assert sorted(proofs.__all__) == list(proofs.__all__)


def test_commit_bytes_known_answers():
    assert commit_bytes(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert commit_bytes(b"abc").hex() == "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"
    with pytest.raises(TypeError):
        commit_bytes("abc")  # type: ignore[arg-type]


def test_commit_json_is_canonical():
    assert commit_json({"b": 1, "a": [1, 2]}) == commit_json({"a": [1, 2], "b": 1})
    assert commit_json({"a": 1}) != commit_json({"a": 2})
    with pytest.raises(EncodingError):
        commit_json({"x": float("nan")})


@settings(max_examples=40, deadline=None)
@given(arr=hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, max_side=6)))
def test_encode_decode_round_trip(arr):
    out = decode_tensor(encode_tensor(arr))
    assert out.dtype == arr.dtype.newbyteorder("<") and out.shape == arr.shape
    assert out.tobytes() == np.ascontiguousarray(arr).tobytes()


def test_encoding_binds_dtype_and_shape():
    a = np.arange(12, dtype=np.uint32)
    roots = {
        commit_tensor(a).root,
        commit_tensor(a.reshape(3, 4)).root,
        commit_tensor(a.reshape(4, 3)).root,
        commit_tensor(a.view(np.int32)).root,
        commit_tensor(a.view(np.float32)).root,
    }
    assert len(roots) == 5  # same payload bytes, five different commitments
    big_endian = a.astype(">u4")
    assert commit_tensor(big_endian).root == commit_tensor(a).root  # canonical little-endian
    assert commit_tensor(np.asfortranarray(a.reshape(3, 4))).root == commit_tensor(a.reshape(3, 4)).root


def test_encoding_rejects_non_numeric():
    with pytest.raises(EncodingError):
        encode_tensor(np.array(["a", "b"]))
    with pytest.raises(EncodingError):
        encode_tensor(np.array([object()]))
    with pytest.raises(TypeError):
        encode_tensor([1, 2, 3])


def test_decode_rejects_corruption():
    data = encode_tensor(np.arange(5, dtype=np.int64))
    for bad in (data[:-1], data + b"\x00", b"XXXX" + data[4:], data[:6]):
        with pytest.raises(SerializationError):
            decode_tensor(bad)


@settings(max_examples=30, deadline=None)
@given(
    arr=hnp.arrays(np.uint64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=40)),
    chunk_size=st.integers(1, 200),
    data=st.data(),
)
def test_every_chunk_opens(arr, chunk_size, data):
    c = commit_tensor(arr, chunk_size=chunk_size)
    assert c.num_chunks == max(1, -(-arr.nbytes // chunk_size))
    i = data.draw(st.integers(0, c.num_chunks - 1))
    opening = c.open(i)
    verify_chunk(c.root, opening)
    c.verify_chunk(opening)


def test_tampered_chunk_openings_fail():
    arr = np.arange(100, dtype=np.uint64)
    c = commit_tensor(arr, chunk_size=64)
    op = c.open(3)
    from dataclasses import replace

    flipped = bytes([op.data[0] ^ 1]) + op.data[1:]
    other_header = encode_tensor(arr.reshape(10, 10))[: len(op.header) + 8]
    bad = [
        replace(op, data=flipped),
        replace(op, data=op.data[:-1]),
        replace(op, index=4),
        replace(op, proof=c.open(4).proof),
        replace(op, chunk_size=32),
        replace(op, payload_len=op.payload_len - 8),
        replace(op, header=other_header),
        replace(op, header=b"junk"),
        replace(op, proof=InclusionProof(3, op.proof.siblings[:-1])),
    ]
    for opening in bad:
        with pytest.raises(VerificationError):
            verify_chunk(c.root, opening)
    with pytest.raises(VerificationError):
        verify_chunk(commit_tensor(arr + np.uint64(1), chunk_size=64).root, op)
    with pytest.raises(IndexError):
        c.open(c.num_chunks)


def test_merkle_hashing_rule():
    a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
    assert MerkleTree([a]).root == leaf_hash(a)
    assert MerkleTree([a, b]).root == inner_hash(leaf_hash(a), leaf_hash(b))
    assert MerkleTree([a, b, c]).root == inner_hash(
        inner_hash(leaf_hash(a), leaf_hash(b)), inner_hash(leaf_hash(c), EMPTY_NODE)
    )
    assert leaf_hash(a) != inner_hash(a[:16], a[16:])  # distinct prefixes


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 300), data=st.data())
def test_every_proof_verifies_and_has_ceil_log2_depth(size, data):
    leaves = [commit_bytes(b"%d" % i) for i in range(size)]
    tree = MerkleTree(leaves)
    assert tree.depth == (size - 1).bit_length()
    i = data.draw(st.integers(0, size - 1))
    proof = tree.proof(i)
    verify_inclusion(leaves[i], proof, tree.root)
    assert compute_root(leaves[i], proof) == tree.root
    # Any other leaf, index or sibling fails.
    j = data.draw(st.integers(0, size - 1))
    if j != i:
        with pytest.raises(VerificationError):
            verify_inclusion(leaves[j], proof, tree.root)
        with pytest.raises(VerificationError):
            verify_inclusion(leaves[i], InclusionProof(j, proof.siblings), tree.root)
    if proof.depth:
        k = data.draw(st.integers(0, proof.depth - 1))
        sibs = list(proof.siblings)
        sibs[k] = bytes([sibs[k][0] ^ 1]) + sibs[k][1:]
        with pytest.raises(VerificationError):
            verify_inclusion(leaves[i], InclusionProof(i, tuple(sibs)), tree.root)


def test_index_beyond_depth_and_inner_node_leaf_are_rejected():
    leaves = [commit_bytes(b"%d" % i) for i in range(8)]
    tree = MerkleTree(leaves)
    proof = tree.proof(5)
    with pytest.raises(VerificationError):
        verify_inclusion(leaves[5], InclusionProof(5 + 8, proof.siblings), tree.root)
    inner = inner_hash(leaf_hash(leaves[4]), leaf_hash(leaves[5]))
    with pytest.raises(VerificationError):
        verify_inclusion(inner, InclusionProof(2, proof.siblings[1:]), tree.root)
    with pytest.raises(ValueError):
        MerkleTree([])
    with pytest.raises(IndexError):
        tree.proof(8)
    with pytest.raises(ValueError):
        InclusionProof(-1, ())
