"""Known-answer vectors shared by ``edil.proofs`` and the Solidity contracts.

Writes ``transcripts.json``, ``merkle.json`` and ``commitments.json`` next to this file. Every
input is fixed here (labels hashed with keccak256, literal arrays): running the script twice gives
byte-identical files, and nothing is drawn at random.

Usage::

    python contracts_abi/vectors/generate.py           # rewrite the files
    python contracts_abi/vectors/generate.py --check   # exit 1 when a committed file differs

Formatting: JSON with sorted keys, two-space indent and a trailing newline; byte strings as
0x-prefixed lowercase hex, addresses as EIP-55 checksum strings, Solidity integers (``uint64``,
``uint256``, the chain id) as decimal strings so they survive parsers that read numbers as
doubles; array sizes, indices, shapes and chunk sizes are plain JSON numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from eth_account import Account

from edil.proofs import (
    AuditAttestation,
    Eip712Domain,
    MerkleTree,
    Transcript,
    commit_bytes,
    commit_json,
    commit_tensor,
    encode_tensor,
)
from edil.proofs._hashing import EIP712_DOMAIN_TYPE, UINT64_MAX, UINT128_MAX, UINT256_MAX, keccak256
from edil.proofs._merkle import EMPTY_NODE, leaf_hash
from edil.proofs._transcript import AUDIT_TYPE, AUDIT_TYPEHASH, TRANSCRIPT_TYPE, TRANSCRIPT_TYPEHASH

HERE = Path(__file__).resolve().parent

# The PoAI verifier's domain on a fresh in-process chain (``Chain.in_process()``): eth-tester's
# chain id, and the address at which the first ``chain.deploy()`` (deployer key 0x00..01, nonce 1,
# right after the registry) creates the PoAIVerifier. The chain tests deploy exactly there and
# compare digests one to one.
DOMAIN = Eip712Domain("EDIL PoAI", "1", 131277322940537, "0x2946259E0334f33A064106302415aD3391BeD384")

# Key of the node that signs nothing but posts the vector batch root in the chain tests. A public
# test key derived from a label; it never holds value.
NODE_KEY = keccak256(b"edil-vectors/node-key")
BATCH_EPOCH = 7
MERKLE_SIZES = (1, 2, 3, 5, 8, 17)

# Solidity field name, Transcript attribute, kind ("bytes32" | "address" | "uint").
TRANSCRIPT_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("jobId", "job_id", "bytes32"),
    ("epoch", "epoch", "uint"),
    ("node", "node", "address"),
    ("schemeParamsHash", "scheme_params_hash", "bytes32"),
    ("modelCommitment", "model_commitment", "bytes32"),
    ("inputCommitment", "input_commitment", "bytes32"),
    ("outputCommitment", "output_commitment", "bytes32"),
    ("workUnits", "work_units", "uint"),
    ("startedAt", "started_at", "uint"),
    ("endedAt", "ended_at", "uint"),
)


def hx(data: bytes) -> str:
    """0x-prefixed lowercase hex."""
    return "0x" + bytes(data).hex()


def unhex(text: str) -> bytes:
    """Inverse of :func:`hx`; refuses strings without the 0x prefix."""
    if not text.startswith("0x"):
        raise ValueError(f"hex string without 0x prefix: {text!r}")
    return bytes.fromhex(text[2:])


def label(text: str) -> bytes:
    """A fixed 32-byte value named by ``text``."""
    return keccak256(b"edil-vectors/" + text.encode("utf-8"))


def node_address() -> str:
    return Account.from_key(NODE_KEY).address


def transcript_to_json(t: Transcript) -> dict[str, str]:
    out: dict[str, str] = {}
    for sol, attr, kind in TRANSCRIPT_FIELDS:
        value = getattr(t, attr)
        out[sol] = hx(value) if kind == "bytes32" else value if kind == "address" else str(value)
    return out


def transcript_from_json(fields: dict[str, str]) -> Transcript:
    """The :class:`Transcript` a vector's ``transcript`` mapping describes."""
    kwargs: dict[str, Any] = {}
    for sol, attr, kind in TRANSCRIPT_FIELDS:
        value = fields[sol]
        kwargs[attr] = unhex(value) if kind == "bytes32" else value if kind == "address" else int(value)
    return Transcript(**kwargs)


def _transcripts() -> list[tuple[str, Transcript]]:
    node = node_address()
    params = commit_json({"f": 16, "n": 3, "scheme": "masked"})
    out = [
        (
            "typical",
            Transcript(
                job_id="job-7",
                epoch=42,
                node="0x" + "ab" * 20,
                scheme_params_hash=params,
                model_commitment=commit_bytes(b"model"),
                input_commitment=commit_bytes(b"input"),
                output_commitment=commit_bytes(b"output"),
                work_units=123_456_789,
                started_at=1_700_000_000_000,
                ended_at=1_700_000_000_250,
            ),
        ),
        ("all-zero", Transcript(bytes(32), 0, "0x" + "00" * 20, *(bytes(32),) * 4, 0, 0, 0)),
        (
            "all-max",
            Transcript(b"\xff" * 32, UINT64_MAX, "0x" + "ff" * 20, *(b"\xff" * 32,) * 4, UINT256_MAX,
                       UINT64_MAX, UINT64_MAX),
        ),
        (
            "distinct-fields",
            Transcript(label("job"), 0x0102030405060708, "0x" + "0123456789abcdef0123" * 2, label("params"),
                       label("model"), label("input"), label("output"), 1 << 200, 1, 2),
        ),
    ]
    # Three transcripts of one node and epoch: the epoch batch below (its tree's leaves are their digests).
    for i in range(3):
        out.append(
            (
                f"batch-{i}",
                Transcript(
                    job_id=f"batch-job-{i}",
                    epoch=BATCH_EPOCH,
                    node=node,
                    scheme_params_hash=params,
                    model_commitment=commit_bytes(b"model"),
                    input_commitment=commit_bytes(b"input-%d" % i),
                    output_commitment=commit_bytes(b"output-%d" % i),
                    work_units=1000 + i,
                    started_at=1_700_000_000_000 + 1000 * i,
                    ended_at=1_700_000_000_500 + 1000 * i,
                ),
            )
        )
    return out


# Solidity field name, AuditAttestation attribute, kind ("bytes32" | "address" | "uint" | "bool").
AUDIT_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("node", "node", "address"),
    ("epoch", "epoch", "uint"),
    ("root", "root", "bytes32"),
    ("taskCount", "task_count", "uint"),
    ("workUnits", "work_units", "uint"),
    ("passed", "passed", "bool"),
    ("reportHash", "report_hash", "bytes32"),
)


def audit_to_json(a: AuditAttestation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sol, attr, kind in AUDIT_FIELDS:
        value = getattr(a, attr)
        out[sol] = hx(value) if kind == "bytes32" else value if kind in ("address", "bool") else str(value)
    return out


def audit_from_json(fields: dict[str, Any]) -> AuditAttestation:
    """The :class:`AuditAttestation` an audit vector's ``attestation`` mapping describes."""
    kwargs: dict[str, Any] = {}
    for sol, attr, kind in AUDIT_FIELDS:
        value = fields[sol]
        kwargs[attr] = unhex(value) if kind == "bytes32" else value if kind in ("address", "bool") else int(value)
    return AuditAttestation(**kwargs)


def _audits(batch_root: bytes, batch: list[tuple[str, Transcript]]) -> list[tuple[str, AuditAttestation]]:
    """Attestations of the vector batch (its recounted figures, or no work on a failure), and extremes."""
    node, work = batch[0][1].node, sum(t.work_units for _, t in batch)
    return [
        ("batch-pass", AuditAttestation(node, BATCH_EPOCH, batch_root, len(batch), work, True, label("report/pass"))),
        ("batch-fail", AuditAttestation(node, BATCH_EPOCH, batch_root, 0, 0, False, label("report/fail"))),
        ("all-max", AuditAttestation("0x" + "ff" * 20, UINT64_MAX, b"\xff" * 32, UINT64_MAX, UINT128_MAX, True,
                                     b"\xff" * 32)),
    ]


def _proof_json(tree: MerkleTree, index: int, leaf: bytes) -> dict[str, Any]:
    proof = tree.proof(index)
    return {
        "index": index,
        "leaf": hx(leaf),
        "leaf_hash": hx(leaf_hash(leaf)),
        "siblings": [hx(s) for s in proof.siblings],
    }


def transcripts() -> dict[str, Any]:
    vectors = _transcripts()
    batch = [(name, t) for name, t in vectors if name.startswith("batch-")]
    digests = [t.digest(DOMAIN) for _, t in batch]
    tree = MerkleTree(digests)
    return {
        "description": (
            "PoAI transcripts (EIP-712 struct Transcript) -> hashStruct and digest under the fixed PoAIVerifier "
            "domain, one epoch batch (a Merkle tree over the digests of the batch-* transcripts), and audit "
            "attestations (EIP-712 struct AuditAttestation: the oracles' recount of the batch and verdict) -> "
            "digest. Regenerate with: python contracts_abi/vectors/generate.py"
        ),
        "domain": {
            "chain_id": str(DOMAIN.chain_id),
            "name": DOMAIN.name,
            "separator": hx(DOMAIN.separator),
            "type": EIP712_DOMAIN_TYPE,
            "typehash": hx(keccak256(EIP712_DOMAIN_TYPE.encode())),
            "verifying_contract": DOMAIN.verifying_contract,
            "version": DOMAIN.version,
        },
        "transcript_type": TRANSCRIPT_TYPE,
        "transcript_typehash": hx(TRANSCRIPT_TYPEHASH),
        "audit_type": AUDIT_TYPE,
        "audit_typehash": hx(AUDIT_TYPEHASH),
        "audits": [
            {"attestation": audit_to_json(a), "digest": hx(a.digest(DOMAIN)), "name": name}
            for name, a in _audits(tree.root, batch)
        ],
        "vectors": [
            {
                "digest": hx(t.digest(DOMAIN)),
                "name": name,
                "struct_hash": hx(t.struct_hash()),
                "transcript": transcript_to_json(t),
            }
            for name, t in vectors
        ],
        "batch": {
            "epoch": str(BATCH_EPOCH),
            "members": [name for name, _ in batch],
            "node": batch[0][1].node,
            "proofs": [_proof_json(tree, i, d) for i, d in enumerate(digests)],
            "root": hx(tree.root),
            "task_count": len(batch),
            "work_units": str(sum(t.work_units for _, t in batch)),
        },
    }


def merkle_leaves(size: int) -> list[bytes]:
    return [label(f"merkle/{size}/{i}") for i in range(size)]


def merkle() -> dict[str, Any]:
    trees = []
    for size in MERKLE_SIZES:
        leaves = merkle_leaves(size)
        tree = MerkleTree(leaves)
        indices = sorted({i for i in (0, 1, size // 2, size - 1) if 0 <= i < size})
        trees.append(
            {
                "depth": tree.depth,
                "leaves": [hx(leaf) for leaf in leaves],
                "proofs": [_proof_json(tree, i, leaves[i]) for i in indices],
                "root": hx(tree.root),
                "size": size,
            }
        )
    return {
        "description": (
            "Positional binary Merkle trees over 32-byte leaves (EdilMerkle / edil.proofs.MerkleTree): leaves -> "
            "root, and inclusion proofs (siblings from the leaf level up; bit i of index set = right child at "
            "level i). Regenerate with: python contracts_abi/vectors/generate.py"
        ),
        "hashing": {
            "empty": hx(EMPTY_NODE),
            "inner": "keccak256(0x01 || left || right)",
            "leaf": "keccak256(0x00 || leaf)",
            "padding": "an odd level is padded with the empty node up to an even length",
        },
        "trees": trees,
    }


def _f32(bits: list[int]) -> np.ndarray:
    return np.array(bits, dtype="<u4").view("<f4")


# name -> (array builder, chunk size). Builders return fresh arrays with exact bit patterns.
TENSORS: dict[str, tuple[Callable[[], np.ndarray], int]] = {
    "bool-3": (lambda: np.array([True, False, True]), 4096),
    "uint8-6": (lambda: np.arange(6, dtype=np.uint8), 4096),
    "int16-2x5-chunk8": (lambda: np.arange(-5, 5, dtype="<i2").reshape(2, 5), 8),
    "int32-2x3": (lambda: np.array([[1, -2, 3], [-4, 5, -6]], dtype="<i4"), 4096),
    "uint64-3x4-chunk32": (lambda: np.arange(12, dtype="<u8").reshape(3, 4) * np.uint64(0x0101010101010101), 32),
    "int64-scalar": (lambda: np.array(-1, dtype="<i8"), 4096),
    "float16-4": (lambda: np.array([0.5, -2.0, 65504.0, -0.0], dtype="<f2"), 4096),
    # +0, -0, +inf, -inf, quiet NaN, smallest subnormal, 1.0
    "float32-special-7": (
        lambda: _f32([0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x00000001, 0x3F800000]),
        4096,
    ),
    "float64-2x2": (lambda: np.array([[1.5, -2.25], [3.141592653589793, 1e300]], dtype="<f8"), 4096),
    "complex64-2": (lambda: np.array([1 + 2j, -0.5 - 0.25j], dtype="<c8"), 4096),
    "float32-empty": (lambda: np.zeros(0, dtype="<f4"), 4096),
    "uint32-2x0x3": (lambda: np.zeros((2, 0, 3), dtype="<u4"), 4096),
}


def commitments() -> dict[str, Any]:
    vectors = []
    for name, (build, chunk_size) in TENSORS.items():
        arr = build()
        c = commit_tensor(arr, chunk_size=chunk_size)
        canonical = encode_tensor(arr)
        payload = canonical[len(c.header):]
        chunks = [payload[i : i + chunk_size] for i in range(0, len(payload), chunk_size)] or [b""]
        tree = MerkleTree(chunks)
        entry: dict[str, Any] = {
            "canonical": hx(canonical),
            "chunk_root": hx(tree.root),
            "chunk_size": chunk_size,
            "dtype": c.dtype,
            "header": hx(c.header),
            "header_hash": hx(keccak256(c.header)),
            "name": name,
            "num_chunks": c.num_chunks,
            "payload_len": c.payload_len,
            "root": hx(c.root),
            "shape": list(c.shape),
        }
        if len(chunks) > 1:
            entry["chunks"] = [
                {"data": hx(chunk), "index": i, "siblings": [hx(s) for s in tree.proof(i).siblings]}
                for i, chunk in enumerate(chunks)
            ]
        vectors.append(entry)
    return {
        "description": (
            "Canonical tensor bytes (EDT1 header: dtype and shape, then the C-order little-endian payload) and "
            "tensor commitment roots: root = keccak256(0x02 || keccak256(header) || u64be chunk_size || "
            "u64be payload_len || chunk_root), chunk_root the Merkle root over the payload's chunk_size-byte "
            "chunks (one empty chunk for an empty payload). Regenerate with: python contracts_abi/vectors/generate.py"
        ),
        "vectors": vectors,
    }


def build() -> dict[str, dict[str, Any]]:
    """Every vector file, by file name."""
    return {"commitments.json": commitments(), "merkle.json": merkle(), "transcripts.json": transcripts()}


def render(document: dict[str, Any]) -> str:
    """The exact text of a vector file."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, document in build().items():
        path = HERE / name
        text = render(document)
        if args.check:
            if not path.is_file() or path.read_text("utf-8") != text:
                stale.append(name)
        elif not path.is_file() or path.read_text("utf-8") != text:
            path.write_text(text, "utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"stale vectors: {', '.join(stale)}; run python contracts_abi/vectors/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
