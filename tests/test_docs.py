"""Every runnable example in a module docstring runs and gives what it shows.

Modules are discovered, not listed, so a new module's examples are run without anyone
remembering to add it here.
"""

import doctest
import importlib
import pkgutil

import pytest

import syntra
import syntra_core

# Modules whose docstring must show how to use them: the entry points a reader starts from.
MUST_HAVE_EXAMPLES = {
    "syntra", "syntra.engine", "syntra_core.rng", "syntra_core.bandits",
    "syntra_core.learner", "syntra_core.kernel",
}


def _all_modules():
    names = []
    for package in (syntra, syntra_core):
        names.append(package.__name__)
        prefix = f"{package.__name__}."
        names += [info.name for info in pkgutil.walk_packages(package.__path__, prefix)]
    return sorted(names)


MODULES = _all_modules()


def _examples(module):
    finder = doctest.DocTestFinder()
    return sum(len(test.examples) for test in finder.find(module))


def test_discovery_finds_the_modules_with_examples():
    assert MUST_HAVE_EXAMPLES <= set(MODULES)
    assert "syntra.simulate" in MODULES  # the module the old hand-kept list missed


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    if name in MUST_HAVE_EXAMPLES:
        assert _examples(module) > 0, f"{name} has no runnable example"
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
