"""Every benchmark the runner lists exists and takes the runner's arguments."""

from __future__ import annotations

import importlib
import inspect

import pytest

from benchmarks.__main__ import MODULES


@pytest.mark.parametrize("name", MODULES)
def test_runner_can_call_each_benchmark(name: str) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    params = inspect.signature(module.main).parameters
    assert "argv" in params, f"benchmarks.{name}.main must accept the runner's argv"
