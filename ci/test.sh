#!/usr/bin/env bash
# The test command: set up, then run the test suite, then run every benchmark once
# (timings off) so a broken benchmark fails CI. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash ci/setup.sh
.venv/bin/python -m pytest -n 2 "$@" tests
.venv/bin/python -m pytest -q --benchmark-disable bench
