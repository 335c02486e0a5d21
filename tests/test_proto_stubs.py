"""The committed gRPC stubs are exactly what proto/generate.sh makes from the .proto files."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUBS = ROOT / "src" / "syntra" / "v1"


def test_regenerating_the_stubs_changes_nothing(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    subprocess.run(["bash", str(ROOT / "proto" / "generate.sh")], check=True, env=env, cwd=ROOT)
    generated = sorted(p.name for p in (tmp_path / "syntra" / "v1").iterdir())
    committed = sorted(p.name for p in STUBS.iterdir() if p.name.endswith((".py", ".pyi")) and p.name != "__init__.py")
    assert generated == committed
    for name in generated:
        fresh = (tmp_path / "syntra" / "v1" / name).read_bytes()
        assert fresh == (STUBS / name).read_bytes(), f"{name} is stale: run bash proto/generate.sh"


def test_every_proto_file_has_stubs():
    protos = sorted(p.stem for p in (ROOT / "proto" / "syntra" / "v1").glob("*.proto"))
    for stem in protos:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert (STUBS / f"{stem}{suffix}").is_file(), f"{stem}{suffix} is missing"
