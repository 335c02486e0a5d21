"""Every example in a lycan module docstring runs, and the README's examples give what they say.

tests/test_docs.py walks syntra and syntra_core; this walks lycan the same way.
"""

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import lycan

MODULES = ["lycan"] + sorted(
    info.name for info in pkgutil.walk_packages(lycan.__path__, "lycan.") if info.name != "lycan.__main__")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_package_docstring_has_an_example():
    assert doctest.testmod(lycan).attempted > 0


README = Path(lycan.__file__).with_name("README.md").read_text()
# Each example in the README is a ```lisp block whose last line is "; => <json result>".
EXAMPLES = re.findall(r"```lisp\n(.*?); => (.*?)\n```", README, re.DOTALL)


def test_readme_has_examples():
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("source, expected", EXAMPLES)
def test_readme_examples(source, expected):
    import json
    result = lycan.run(lycan.compile_source(source), {"cpu": [40, 60, 80]}, chooser=lambda node: 0)
    assert lycan.values.to_json(result.value) == json.loads(expected)
