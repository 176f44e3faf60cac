"""The package layers hold: every import in edil/, proofs/, runtime/ and app/ points down, never into another package's privates.

Layers, bottom up (a layer may import itself and the layers below it)::

    edil (with edil.hazmat)  <-  edil.contracts (data)  <-  edil.proofs  <-  edil.runtime  <-  edil.app

``benchmarks`` and ``tests`` are never imported by a package. A module or name starting with one
underscore (``_x``, not ``__x__``) is private to its layer: ``edil.runtime`` may not import
``edil.proofs._hashing`` nor ``from edil.proofs import _hashing`` nor ``from edil import _mpc``.
The scan is static (``ast``), so imports inside functions and ``TYPE_CHECKING`` blocks count too.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import edil
from edil import _errors

ROOT = Path(__file__).resolve().parents[1]

#: source folder -> import name, as pyproject.toml's package-dir maps them
PACKAGE_DIRS = {"edil": "edil", "proofs": "edil.proofs", "runtime": "edil.runtime", "app": "edil.app"}
#: layer -> rank; a module may import layers of rank <= its own
RANKS = {"edil": 0, "edil.contracts": 1, "edil.proofs": 2, "edil.runtime": 3, "edil.app": 4}
NEVER = ("benchmarks", "tests")


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    target: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: imports {self.target}: {self.why}"


def layer_of(module: str) -> str | None:
    """The layer owning ``module`` (``None``: not part of EDIL)."""
    if module != "edil" and not module.startswith("edil."):
        return None
    for name in sorted(RANKS, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return "edil"  # pragma: no cover - "edil" matches every edil.* name


def _is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def module_names() -> dict[str, Path]:
    """Every module of the four packages by import name."""
    out: dict[str, Path] = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = [p for p in rel if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _resolve_relative(current: str, is_package: bool, level: int, module: str | None) -> str:
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([module] if module else []))


def _targets(tree: ast.AST, current: str, is_package: bool, known: set[str]) -> list[tuple[int, str, str | None]]:
    """``(line, imported module, imported name or None)`` for every import-like node of ``tree``."""
    out: list[tuple[int, str, str | None]] = []
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}  # only whole dotted chains
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = _resolve_relative(current, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                # ``from edil import proofs`` imports the subpackage edil.proofs
                out.append((node.lineno, sub, None) if sub in known else (node.lineno, module, alias.name))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__"):
                out.append((node.lineno, node.args[0].value, None))
        elif isinstance(node, ast.Attribute) and id(node) not in inner:
            # a dotted path written out, e.g. ``edil.proofs._hashing.keccak256``
            parts: list[str] = []
            cur: ast.expr = node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "edil":
                out.append((node.lineno, ".".join(["edil", *reversed(parts)]), None))
    return out


def check_source(source: str, module: str, *, is_package: bool = False, file: str = "<string>", known: set[str] | None = None) -> list[Violation]:
    """The forbidden imports of one module's source (``module``: its import name)."""
    known = set(module_names()) if known is None else known
    own = layer_of(module)
    assert own is not None, module
    tree = ast.parse(source, filename=file)
    found: list[Violation] = []
    for line, target, name in _targets(tree, module, is_package, known):
        top = target.split(".")[0]
        if top in NEVER:
            found.append(Violation(file, line, target, f"{own} must not import {top} (not part of the installed packages)"))
            continue
        theirs = layer_of(target)
        if theirs is None:
            continue
        if RANKS[theirs] > RANKS[own]:
            found.append(Violation(file, line, target, f"upward dependency: {own} (layer {RANKS[own]}) must not import {theirs} (layer {RANKS[theirs]})"))
            continue
        if theirs == own:
            continue
        rest = target[len(theirs):].lstrip(".").split(".") if target != theirs else []
        private = [p for p in rest if _is_private(p)]
        if name is not None and _is_private(name):
            private.append(name)
        if private:
            shown = target + (f" ({name})" if name else "")
            found.append(Violation(file, line, shown, f"private {private[0]!r} of {theirs}; import a name {theirs} exports instead"))
    return found


def test_no_forbidden_import_in_the_packages() -> None:
    known = set(module_names())
    violations: list[Violation] = []
    for module, path in module_names().items():
        violations += check_source(
            path.read_text("utf-8"), module, is_package=path.name == "__init__.py", file=str(path.relative_to(ROOT)), known=known
        )
    assert not violations, "forbidden imports:\n" + "\n".join(map(str, violations))


def test_every_package_folder_is_scanned() -> None:
    names = module_names()
    for package in PACKAGE_DIRS.values():
        assert package in names, package
    # the moved application modules live in edil.app, nowhere else
    assert {"edil.app.cli", "edil.app.__main__"} <= set(names)
    assert not {"edil.cli", "edil.__main__", "edil.runtime._demo", "edil.runtime._cli"} & set(names)


@pytest.mark.parametrize(
    ("module", "source", "why"),
    [
        ("edil.models", "from edil import runtime", "upward"),
        ("edil._ckks", "import edil.proofs", "upward"),
        ("edil._ckks", "def f():\n    from edil.app import cli", "upward"),
        ("edil.proofs._chain", "from edil.runtime import Scheduler", "upward"),
        ("edil.runtime._node", "from edil.app._demo import run_demo", "upward"),
        ("edil.runtime._node", "import benchmarks.e2e", "benchmarks"),
        ("edil.proofs._chain", "from tests._chain_fixtures import REPO", "tests"),
        ("edil.runtime._deps", "from edil.proofs._hashing import keccak256", "private '_hashing'"),
        ("edil.runtime._deps", "from edil.proofs import _commit", "private '_commit'"),
        ("edil.runtime._task", "from edil import _mpc as mpc", "private '_mpc'"),
        ("edil.app.cli", "import edil.runtime._wire", "private '_wire'"),
        ("edil.app.cli", "import importlib\nimportlib.import_module('edil.proofs._merkle')", "private '_merkle'"),
        ("edil.app.cli", "import edil.proofs\nx = edil.proofs._hashing.keccak256", "private '_hashing'"),
        ("edil.hazmat.ring", "from edil.runtime import Task", "upward"),
    ],
)
def test_the_check_catches(module: str, source: str, why: str) -> None:
    (violation,) = check_source(textwrap.dedent(source), module)
    assert why in violation.why, violation


@pytest.mark.parametrize(
    ("module", "source", "is_package"),
    [
        ("edil.runtime._node", "from ._wire import dumps\nfrom . import _wire", False),  # own privates
        ("edil.runtime", "from ._node import EdgeNode", True),
        ("edil.app.cli", "from edil import runtime as rt\nfrom edil.proofs import keccak256", False),
        ("edil._masked", "from edil import _mpc as mpc\nfrom edil.hazmat import ring", False),  # edil.hazmat is in edil's layer
        ("edil.proofs._artifacts", "from edil import SerializationError\nimport numpy", False),
        ("edil.app.cli", "from edil.runtime import __version__", False),  # dunders are public
    ],
)
def test_the_check_allows(module: str, source: str, is_package: bool) -> None:
    assert check_source(source, module, is_package=is_package) == []


def test_relative_imports_resolve_against_the_package() -> None:
    # ``from .. import _x`` in edil.runtime.sub would reach edil._x: another layer's private module
    (v,) = check_source("from .. import _mpc", "edil.runtime._x", known={"edil._mpc"})
    assert v.target == "edil._mpc" and "private" in v.why


def test_every_exception_class_is_in_the_one_tree() -> None:
    """Every exception class the packages define derives from EdilError and is named in edil._errors' tree."""
    doc = _errors.__doc__ or ""
    block = doc[doc.index("::") : doc.index("\n\n", doc.index("::") + 3)]  # the drawn tree
    drawn = set(re.findall(r"^\s*(?:[│├└─ ]*)(\w+)", block[2:], flags=re.M))
    seen = []
    for module in module_names():
        if module.endswith("__main__"):
            continue  # running it would start the command line
        mod = importlib.import_module(module)
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == mod.__name__:
                seen.append(cls)
                assert issubclass(cls, edil.EdilError), f"{module}.{cls.__name__} is not an EdilError"
                assert cls.__name__ in drawn, f"{module}.{cls.__name__} is missing from the tree in edil/_errors.py"
    names = {c.__name__ for c in seen}
    assert {"EdilError", "ChainError", "ChainAuthorizationError", "ChainReplayError", "ChainVerificationError"} <= names
