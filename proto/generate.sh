#!/usr/bin/env bash
# Regenerate the Python stubs of proto/syntra/v1 into src/syntra/v1 (committed, and checked
# by tests/test_proto_stubs.py). OUT overrides the output root (the test writes elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-src}
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -m grpc_tools.protoc -Iproto --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
    proto/syntra/v1/*.proto
