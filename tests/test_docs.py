"""Every runnable example in a module docstring runs and gives what it shows."""

import doctest
import importlib

import pytest

MODULES = [
    "syntra", "syntra.engine", "syntra.names", "syntra.demo",
    "syntra_core.rng", "syntra_core.bandits", "syntra_core.learner", "syntra_core.kernel",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no runnable example"
    assert result.failed == 0
