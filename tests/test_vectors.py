"""Known-answer vectors in ``contracts_abi/vectors``: in step with ``edil.proofs`` and with the contracts.

Three layers: the committed JSON is what ``generate.py`` writes from today's code (drift fails
with the command that regenerates it); the JSON read back through the public API gives the same
answers (and eth-account's independent EIP-712 encoder agrees); the contracts on the in-process
EVM give the same digests and roots, and reject every tampered vector that Python rejects.
"""

from __future__ import annotations

import importlib.util
import json
import tomllib
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data

from edil import ChainError, VerificationError
from edil.proofs import (
    Chain,
    ChunkOpening,
    Deployment,
    Eip712Domain,
    EpochBatch,
    InclusionProof,
    MerkleTree,
    commit_tensor,
    compute_root,
    decode_tensor,
    encode_tensor,
    verify_chunk,
    verify_inclusion,
    verify_transcript_inclusion,
)
from edil.proofs._hashing import keccak256
from edil.proofs._merkle import leaf_hash

REPO = Path(__file__).resolve().parents[1]
VECTOR_DIR = REPO / "contracts_abi" / "vectors"
FILES = ("commitments.json", "merkle.json", "transcripts.json")
REGENERATE = "vectors are stale: run `python contracts_abi/vectors/generate.py` and commit the JSON it writes"
MERKLE_EPOCH_BASE = 100  # the tree of n leaves is posted as the vector node's root for epoch 100 + n


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("edil_vector_generator", VECTOR_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
unhex = gen.unhex


def _flip(data: bytes, at: int = 0) -> bytes:
    """``data`` with one bit of byte ``at`` flipped."""
    at %= len(data)
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _proof(entry: dict[str, Any]) -> InclusionProof:
    return InclusionProof(entry["index"], tuple(unhex(s) for s in entry["siblings"]))


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    """The vector files as the installed package ships them."""
    base = resources.files("edil.contracts").joinpath("vectors")
    return {name: json.loads(base.joinpath(name).read_text("utf-8")) for name in FILES}


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    return gen.build()


# -- (a) the committed files are what the Python code computes now ------------------------------


@pytest.mark.parametrize("name", FILES)
def test_committed_vectors_match_the_generator(name, vectors, generated):
    assert vectors[name] == generated[name], f"{name}: {REGENERATE}"
    assert (VECTOR_DIR / name).read_text("utf-8") == gen.render(generated[name]), f"{name} formatting: {REGENERATE}"


def test_generator_check_mode(tmp_path, monkeypatch, capsys):
    assert gen.main(["--check"]) == 0
    for name in FILES:
        (tmp_path / name).write_text((VECTOR_DIR / name).read_text("utf-8"), "utf-8")
    stale = tmp_path / "merkle.json"
    stale.write_text(stale.read_text("utf-8").replace('"size": 17', '"size": 18'), "utf-8")
    monkeypatch.setattr(gen, "HERE", tmp_path)
    assert gen.main(["--check"]) == 1
    assert "merkle.json" in capsys.readouterr().err
    assert '"size": 18' in stale.read_text("utf-8")  # --check writes nothing
    (tmp_path / "commitments.json").unlink()
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0  # a plain run repairs both


def test_vectors_ship_as_package_data():
    data = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]["package-data"]
    assert "vectors/*.json" in data["edil.contracts"]


def test_transcripts_read_back(vectors):
    doc = vectors["transcripts.json"]
    d = doc["domain"]
    domain = Eip712Domain(d["name"], d["version"], int(d["chain_id"]), d["verifying_contract"])
    assert domain == gen.DOMAIN
    assert unhex(d["separator"]) == domain.separator
    assert unhex(d["typehash"]) == keccak256(d["type"].encode())
    assert unhex(doc["transcript_typehash"]) == keccak256(doc["transcript_type"].encode())
    by_name = {}
    for v in doc["vectors"]:
        t = gen.transcript_from_json(v["transcript"])
        by_name[v["name"]] = t
        assert gen.transcript_to_json(t) == v["transcript"]
        assert t.struct_hash() == unhex(v["struct_hash"]), v["name"]
        assert t.digest(domain) == unhex(v["digest"]), v["name"]
        # eth-account's EIP-712 encoder is an independent implementation of the same rule.
        assert _hash_eip191_message(encode_typed_data(full_message=t.typed_data(domain))) == unhex(v["digest"])
    assert len(by_name) == len(doc["vectors"])
    b = doc["batch"]
    batch = EpochBatch([by_name[m] for m in b["members"]], domain)
    assert (batch.node, batch.epoch) == (b["node"], int(b["epoch"]))
    assert b["node"] == Account.from_key(gen.NODE_KEY).address
    assert batch.root == unhex(b["root"])
    assert (batch.task_count, batch.work_units) == (b["task_count"], int(b["work_units"]))
    for i, entry in enumerate(b["proofs"]):
        assert entry["index"] == i and unhex(entry["leaf"]) == batch.digest(i)
        assert batch.proof(i) == _proof(entry)
        verify_transcript_inclusion(by_name[b["members"][i]], _proof(entry), batch.root, domain)


def test_audit_attestations_read_back(vectors):
    doc = vectors["transcripts.json"]
    assert unhex(doc["audit_typehash"]) == keccak256(doc["audit_type"].encode())
    b = doc["batch"]
    by_name = {v["name"]: v for v in doc["audits"]}
    assert set(by_name) == {"batch-pass", "batch-fail", "all-max"}
    for v in doc["audits"]:
        a = gen.audit_from_json(v["attestation"])
        assert gen.audit_to_json(a) == v["attestation"]
        assert a.digest(gen.DOMAIN) == unhex(v["digest"]), v["name"]
        assert _hash_eip191_message(encode_typed_data(full_message=a.typed_data(gen.DOMAIN))) == unhex(v["digest"])
    # The passing attestation carries the batch's recounted figures, the failing one no work.
    passing = gen.audit_from_json(by_name["batch-pass"]["attestation"])
    assert (passing.node, passing.epoch, passing.root) == (b["node"], int(b["epoch"]), unhex(b["root"]))
    assert (passing.task_count, passing.work_units) == (b["task_count"], int(b["work_units"]))
    failing = gen.audit_from_json(by_name["batch-fail"]["attestation"])
    assert (failing.task_count, failing.work_units, failing.passed) == (0, 0, False)


def test_merkle_read_back(vectors):
    trees = vectors["merkle.json"]["trees"]
    assert [t["size"] for t in trees] == [1, 2, 3, 5, 8, 17]
    for t in trees:
        leaves = [unhex(x) for x in t["leaves"]]
        tree = MerkleTree(leaves)
        assert len(leaves) == t["size"] and tree.root == unhex(t["root"]) and tree.depth == t["depth"]
        assert t["depth"] == (t["size"] - 1).bit_length()
        for entry in t["proofs"]:
            leaf = unhex(entry["leaf"])
            assert leaf == leaves[entry["index"]]
            assert leaf_hash(leaf) == unhex(entry["leaf_hash"])
            assert tree.proof(entry["index"]) == _proof(entry)
            verify_inclusion(leaf, _proof(entry), tree.root)


def test_commitments_read_back(vectors):
    for v in vectors["commitments.json"]["vectors"]:
        canonical, header = unhex(v["canonical"]), unhex(v["header"])
        arr = decode_tensor(canonical)
        assert arr.dtype.str == v["dtype"] and list(arr.shape) == v["shape"], v["name"]
        assert encode_tensor(arr) == canonical
        assert canonical.startswith(header) and len(canonical) == len(header) + v["payload_len"]
        assert keccak256(header) == unhex(v["header_hash"])
        c = commit_tensor(arr, chunk_size=v["chunk_size"])
        assert c.root == unhex(v["root"]) and c.num_chunks == v["num_chunks"], v["name"]
        # The root formula, written out once more by hand.
        assert unhex(v["root"]) == keccak256(
            b"\x02" + keccak256(header) + v["chunk_size"].to_bytes(8, "big") + v["payload_len"].to_bytes(8, "big")
            + unhex(v["chunk_root"])
        )
        for chunk in v.get("chunks", []):
            opening = ChunkOpening(header, v["chunk_size"], v["payload_len"], chunk["index"], unhex(chunk["data"]),
                                   _proof(chunk))
            assert opening == c.open(chunk["index"])
            verify_chunk(c.root, opening)
            assert compute_root(opening.data, opening.proof) == unhex(v["chunk_root"])
    # the generator's inputs cover every numeric kind, 0-d and empty tensors, and multi-chunk trees
    kinds = {np.dtype(v["dtype"]).kind for v in vectors["commitments.json"]["vectors"]}
    assert kinds == set("biufc")


# -- (b) the same vectors on the contracts --------------------------------------------------------


@pytest.fixture(scope="module")
def dep(vectors) -> Deployment:
    """A fresh in-process chain whose first deployment has the vectors' PoAI domain; the vector node
    admitted, its batch root posted for the batch epoch and each Merkle vector's root for epoch 100 + n."""
    chain = Chain.in_process()
    deployment = chain.deploy(epoch_length=3600)
    node = Account.from_key(gen.NODE_KEY)
    chain.fund(node.address, 10**18)
    deployment.admit_node(node.address)
    deployment.advance_to_epoch(MERKLE_EPOCH_BASE + 100)
    b = vectors["transcripts.json"]["batch"]
    deployment.post_epoch_root(node, int(b["epoch"]), unhex(b["root"]))
    for t in vectors["merkle.json"]["trees"]:
        deployment.post_epoch_root(node, MERKLE_EPOCH_BASE + t["size"], unhex(t["root"]))
    return deployment


def test_fresh_deployment_has_the_vector_domain(dep, vectors):
    d = vectors["transcripts.json"]["domain"]
    assert dep.poai_domain == gen.DOMAIN, "a fresh in-process deployment no longer has the vectors' domain"
    assert bytes(dep.chain.call(dep.verifier.functions.domainSeparator())) == unhex(d["separator"])


def test_transcript_digests_on_chain(dep, vectors):
    for v in vectors["transcripts.json"]["vectors"]:
        assert dep.transcript_digest(gen.transcript_from_json(v["transcript"])) == unhex(v["digest"]), v["name"]


def test_transcript_batch_on_chain(dep, vectors):
    doc = vectors["transcripts.json"]
    b = doc["batch"]
    by_name = {v["name"]: gen.transcript_from_json(v["transcript"]) for v in doc["vectors"]}
    assert dep.epoch_record(b["node"], int(b["epoch"])).root == unhex(b["root"])
    for entry, member in zip(b["proofs"], b["members"], strict=True):
        assert dep.check_transcript_inclusion(by_name[member], _proof(entry))
        assert dep.check_inclusion(b["node"], int(b["epoch"]), unhex(entry["leaf"]), _proof(entry))


def test_audit_digests_on_chain(dep, vectors):
    """The verifier hashes the root it holds for (node, epoch): the batch attestations match it."""
    checked = 0
    for v in vectors["transcripts.json"]["audits"]:
        if not v["name"].startswith("batch-"):
            continue
        a = gen.audit_from_json(v["attestation"])
        assert dep.audit_digest(a) == unhex(v["digest"]), v["name"]
        checked += 1
    assert checked == 2


def test_merkle_roots_on_chain(dep, vectors):
    node = vectors["transcripts.json"]["batch"]["node"]
    for t in vectors["merkle.json"]["trees"]:
        epoch = MERKLE_EPOCH_BASE + t["size"]
        assert dep.epoch_record(node, epoch).root == unhex(t["root"])
        for entry in t["proofs"]:
            leaf = unhex(entry["leaf"])
            assert dep.compute_root(leaf, _proof(entry)) == unhex(t["root"]), (t["size"], entry["index"])
            assert dep.check_inclusion(node, epoch, leaf, _proof(entry)), (t["size"], entry["index"])


def test_commitment_chunk_trees_on_chain(dep, vectors):
    """A tensor's chunk tree is the contracts' Merkle tree: 32-byte chunks fold to the chunk root on chain."""
    checked = 0
    for v in vectors["commitments.json"]["vectors"]:
        if v["chunk_size"] != 32 or v["payload_len"] % 32:
            continue
        for chunk in v["chunks"]:
            assert dep.compute_root(unhex(chunk["data"]), _proof(chunk)) == unhex(v["chunk_root"]), v["name"]
            checked += 1
    assert checked >= 3


# -- (c) tampered vectors fail on chain and in Python ---------------------------------------------


def test_tampered_merkle_vectors_fail_everywhere(dep, vectors):
    node = vectors["transcripts.json"]["batch"]["node"]
    tampered = 0
    for t in vectors["merkle.json"]["trees"]:
        root, epoch = unhex(t["root"]), MERKLE_EPOCH_BASE + t["size"]
        for entry in t["proofs"]:
            leaf, proof = unhex(entry["leaf"]), _proof(entry)
            cases = [(_flip(leaf, entry["index"]), proof)]
            for k, sibling in enumerate(proof.siblings):
                sibs = list(proof.siblings)
                sibs[k] = _flip(sibling, k + 7)
                cases.append((leaf, InclusionProof(proof.index, tuple(sibs))))
            for bad_leaf, bad_proof in cases:
                with pytest.raises(VerificationError):
                    verify_inclusion(bad_leaf, bad_proof, root)
                assert dep.compute_root(bad_leaf, bad_proof) != root
                assert not dep.check_inclusion(node, epoch, bad_leaf, bad_proof)
                tampered += 1
    assert tampered > 50
    # An index that does not fit the proof depth: refused by both sides.
    t = vectors["merkle.json"]["trees"][-1]
    entry = t["proofs"][0]
    leaf, proof = unhex(entry["leaf"]), _proof(entry)
    beyond = InclusionProof(proof.index + (1 << proof.depth), proof.siblings)
    with pytest.raises(VerificationError):
        verify_inclusion(leaf, beyond, unhex(t["root"]))
    with pytest.raises(ChainError) as err:
        dep.compute_root(leaf, beyond)
    assert err.value.error_name == "IndexOutOfRange"  # decoded from an eth_call revert too
    assert not dep.check_inclusion(node, MERKLE_EPOCH_BASE + t["size"], leaf, beyond)


def test_tampered_transcript_vectors_fail_everywhere(dep, vectors):
    doc = vectors["transcripts.json"]
    b = doc["batch"]
    by_name = {v["name"]: v for v in doc["vectors"]}
    for i, (entry, member) in enumerate(zip(b["proofs"], b["members"], strict=True)):
        fields = dict(by_name[member]["transcript"])
        fields["outputCommitment"] = gen.hx(_flip(unhex(fields["outputCommitment"]), i))
        bad = gen.transcript_from_json(fields)
        digest = unhex(by_name[member]["digest"])
        assert bad.digest(gen.DOMAIN) != digest and dep.transcript_digest(bad) != digest
        with pytest.raises(VerificationError):
            verify_transcript_inclusion(bad, _proof(entry), unhex(b["root"]), gen.DOMAIN)
        assert not dep.check_transcript_inclusion(bad, _proof(entry))
        # the genuine transcript under a proof with one flipped byte
        sibs = list(_proof(entry).siblings)
        sibs[-1] = _flip(sibs[-1], 31)
        forged = InclusionProof(entry["index"], tuple(sibs))
        good = gen.transcript_from_json(by_name[member]["transcript"])
        with pytest.raises(VerificationError):
            verify_transcript_inclusion(good, forged, unhex(b["root"]), gen.DOMAIN)
        assert not dep.check_transcript_inclusion(good, forged)


def test_tampered_commitment_vectors_fail_everywhere(dep, vectors):
    for v in vectors["commitments.json"]["vectors"]:
        canonical, root = unhex(v["canonical"]), unhex(v["root"])
        if v["payload_len"]:
            bad = decode_tensor(_flip(canonical, len(canonical) - 1))
            assert commit_tensor(bad, chunk_size=v["chunk_size"]).root != root, v["name"]
        header = unhex(v["header"])
        for chunk in v.get("chunks", []):
            good = ChunkOpening(header, v["chunk_size"], v["payload_len"], chunk["index"], unhex(chunk["data"]),
                                _proof(chunk))
            flipped_siblings = InclusionProof(good.index, tuple(_flip(s) for s in good.proof.siblings))
            for bad_opening in (replace(good, data=_flip(good.data, chunk["index"])),
                                replace(good, proof=flipped_siblings)):
                with pytest.raises(VerificationError):
                    verify_chunk(root, bad_opening)
                if len(bad_opening.data) == 32:
                    assert dep.compute_root(bad_opening.data, bad_opening.proof) != unhex(v["chunk_root"])


def test_revert_text_that_is_not_a_payload_still_becomes_a_chain_error():
    from eth_tester.exceptions import TransactionFailed

    from edil.proofs._chain import translate_revert

    for text in ["b''" + "+b''" * 200_000, "b'" + "x" * 100_000 + "'", "b'\\x01\\x02'", "execution reverted: not bytes"]:
        err = translate_revert(TransactionFailed(text))
        assert isinstance(err, ChainError) and err.error_name is None
