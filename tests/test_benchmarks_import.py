"""Every benchmark module imports against the current library (`python -m benchmarks NAME`
would otherwise fail only when run): the API drift a refactor leaves behind shows here."""

import importlib

import pytest

from benchmarks.__main__ import available


@pytest.mark.parametrize("name", available())
def test_benchmark_imports(name):
    module = importlib.import_module(f"benchmarks.bench_{name}")
    assert callable(module.main)
