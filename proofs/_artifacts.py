"""Compiled contract artifacts, loaded from the ``edil.contracts`` data package (no compiler needed)."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from edil import ParameterError, SerializationError

CONTRACT_NAMES = (
    "NodeRegistry",
    "AvailabilityLedger",
    "PoAIVerifier",
    "EdilToken",
    "JobEscrow",
    "StakeManager",
    "AvailabilityRewards",
    "OperatorLicence",
)


@dataclass(frozen=True, slots=True)
class Artifact:
    """ABI, bytecode and provenance of one compiled contract."""

    name: str
    abi: tuple[dict[str, Any], ...]
    bytecode: str
    deployed_bytecode: str
    compiler_version: str
    evm_version: str
    source_hash: str


@functools.cache
def load_artifact(name: str) -> Artifact:
    """Load ``contracts_abi/artifacts/<name>.json``.

    Raises:
        ParameterError: unknown contract name.
        SerializationError: missing or malformed artifact.
    """
    if name not in CONTRACT_NAMES:
        raise ParameterError(f"unknown contract {name!r}; expected one of {CONTRACT_NAMES}")
    try:
        text = resources.files("edil.contracts").joinpath("artifacts", f"{name}.json").read_text("utf-8")
        raw = json.loads(text)
        return Artifact(
            name=raw["contractName"],
            abi=tuple(raw["abi"]),
            bytecode=raw["bytecode"],
            deployed_bytecode=raw["deployedBytecode"],
            compiler_version=raw["compiler"]["version"],
            evm_version=raw["settings"]["evmVersion"],
            source_hash=raw["sourceHash"],
        )
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise SerializationError(f"contract artifact {name} is missing or malformed: {exc}") from exc


def contract_sources() -> dict[str, str]:
    """The Solidity sources shipped in ``edil.contracts/src``, by file name."""
    src = resources.files("edil.contracts").joinpath("src")
    return {p.name: p.read_text("utf-8") for p in sorted(src.iterdir(), key=lambda p: p.name) if p.name.endswith(".sol")}


def source_hash(sources: dict[str, str]) -> str:
    """sha256 over ``name \\0 content \\0`` in name order; the same rule as ``build.js``."""
    h = hashlib.sha256()
    for name in sorted(sources):
        h.update(name.encode("utf-8") + b"\0" + sources[name].encode("utf-8") + b"\0")
    return h.hexdigest()
