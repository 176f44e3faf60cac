"""Committed contract artifacts: loadable without a compiler, and in step with the sources."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edil import ParameterError
from edil.proofs import load_artifact
from edil.proofs._artifacts import CONTRACT_NAMES, contract_sources, source_hash

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_artifact_loads_with_pinned_compiler_and_evm(name):
    art = load_artifact(name)
    pinned = json.loads((REPO / "package.json").read_text())["devDependencies"]["solc"]
    assert art.name == name
    assert art.compiler_version.startswith(pinned + "+commit.")
    assert art.evm_version == "cancun"
    assert art.bytecode.startswith("0x") and len(art.bytecode) > 1000
    assert any(item.get("type") == "function" for item in art.abi)


def test_source_hash_matches_shipped_sources():
    sources = contract_sources()
    assert set(sources) >= {f"{n}.sol" for n in CONTRACT_NAMES} | {"EdilCommon.sol"}
    digest = source_hash(sources)
    for name in CONTRACT_NAMES:
        assert load_artifact(name).source_hash == digest, "sources changed: run `make contracts`"


def test_unknown_artifact_is_refused():
    with pytest.raises(ParameterError, match="unknown contract 'Nope'"):
        load_artifact("Nope")


@pytest.mark.slow
def test_recompile_matches_committed_artifacts():
    node = shutil.which("node")
    assert node is not None, "node is required (installed with npm by `make test`)"
    result = subprocess.run(
        [node, "contracts_abi/build.js", "--check"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"artifacts drift from sources:\n{result.stderr}{result.stdout}"
