"""Build the compiled hot path in src/syntra_core.

Everything else about the package lives in pyproject.toml; this file exists only because
Cython extensions still need a setup.py hook.
"""

import os
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

CORE = Path("src/syntra_core")

extensions = [
    Extension(
        f"syntra_core.{pyx.stem}",
        [str(pyx)],
        include_dirs=[str(CORE), numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
    for pyx in sorted(CORE.glob("*.pyx"))
    # SYNTRA_BUILD_ONLY=drift,linear rebuilds just those modules (while working on them).
    if not os.environ.get("SYNTRA_BUILD_ONLY") or pyx.stem in os.environ["SYNTRA_BUILD_ONLY"].split(",")
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
