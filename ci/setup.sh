#!/usr/bin/env bash
# Set up a fresh clone: a virtualenv in .venv with syntra built and installed (editable),
# plus everything the tests and benchmarks need. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# Editable, so the Cython extensions are compiled into src/ and tests see the working tree.
.venv/bin/python -m pip install --quiet -e ".[dev]"
