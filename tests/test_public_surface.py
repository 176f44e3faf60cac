"""The public surface is curated: an accidental export fails here."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import edil

EXPECTED = {
    "AuthorizationError", "ChainError", "EdilError", "Encoded", "EncodingError", "FixedPoint",
    "Masked", "OverflowRangeError", "ParameterError", "Plain", "PlainTensor", "ReplayError",
    "RuntimeTaskError", "Scheme", "SchemeMismatchError", "SchemeStats", "SerializationError",
    "ShapeError", "Share", "SharedTensor", "UnsupportedOperationError", "VerificationError",
    "__version__", "models", "encode_model", "CKKS", "CKKSTensor", "Paillier", "PaillierTensor",
    "Replicated", "ReplicatedTensor",
}


def test_all_is_exactly_the_curated_list() -> None:
    assert set(edil.__all__) == EXPECTED


def test_every_public_name_exists() -> None:
    for name in edil.__all__:
        assert hasattr(edil, name), name


def test_public_module_attributes_are_in_all() -> None:
    public = {n for n in vars(edil) if not n.startswith("_")}
    allowed = set(edil.__all__) | {"hazmat", "models", "runtime", "proofs", "contracts", "app", "federated", "client"}
    assert public <= allowed, public - allowed


def test_error_tree() -> None:
    for name in edil._errors.__all__:
        cls = getattr(edil, name)
        assert issubclass(cls, edil.EdilError)
    assert issubclass(edil.ShapeError, ValueError)
    assert issubclass(edil.UnsupportedOperationError, TypeError)
    assert issubclass(edil.ReplayError, edil.VerificationError)


@pytest.mark.slow
def test_wheel_builds_and_imports_subpackages(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(root)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("edil-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "edil/py.typed" in names
    assert any(n.startswith("edil/runtime/") for n in names)
    assert any(n.startswith("edil/proofs/") for n in names)
    assert "edil/app/cli.py" in names and "edil/app/__main__.py" in names
    assert not any(n in names for n in ("edil/cli.py", "edil/__main__.py", "edil/runtime/_demo.py", "edil/runtime/_cli.py"))
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "edil = edil.app.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "import edil, edil.runtime, edil.proofs, edil.contracts, edil.app; print(edil.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=True)
    assert str(site) in out.stdout


def test_client_module_surface() -> None:
    import edil.client

    assert set(edil.client.__all__) == {"Client", "GatewayError", "MAX_CONTEXT_BYTES", "MAX_INPUT_BYTES", "connect"}
    assert issubclass(edil.client.GatewayError, edil.EdilError)
    assert edil.client.GatewayError("x", status=404).status == 404
