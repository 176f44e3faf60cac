"""The examples in the package's docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

# edil.runtime, edil.proofs and edil.app live in their own folders (mapped into the package on
# install), so each is walked from its own path.
ROOTS = ("edil", "edil.runtime", "edil.proofs", "edil.app")
MODULES = sorted({
    m.name
    for root in ROOTS
    for m in pkgutil.walk_packages(importlib.import_module(root).__path__, root + ".")
    if not m.name.endswith("__main__")
} | set(ROOTS))


def test_every_package_is_walked() -> None:
    for sub in ("edil.hazmat.mpc", "edil.runtime._mpc_session", "edil.proofs._freivalds", "edil.app.cli"):
        assert sub in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"
