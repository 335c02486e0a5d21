"""The ``lycan`` command end to end: compile, run, inspect, caps, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lycan.cli import main

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = """
; how many instances for the next minute?
($ recent (!cap "runtime.inputGet" "rps"))
($ forecast (!cap "series.ewmaForecast" recent 0.5))
(!cap "runtime.publish" "forecast" forecast)
(!p "forecast" forecast)
(choice (!cap "ops.autoScaleRecommend" forecast 100 1 20) 1 20)
"""


@pytest.fixture
def files(tmp_path):
    source = tmp_path / "prog.lycs"
    source.write_text(PROGRAM)
    (tmp_path / "in.json").write_text(json.dumps({"rps": [200, 400, 600]}))
    return tmp_path


def test_compile_run_inspect(files, capsys):
    assert main(["compile", str(files / "prog.lycs"), "-o", str(files / "prog.lyc")]) == 0
    assert (files / "prog.lyc").read_bytes()[:4] == b"\x7fLYC"

    assert main(["run", str(files / "prog.lyc"), "--input", str(files / "in.json")]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["result"] == 5  # forecast 450 rps / 100 per instance
    assert output["published"] == {"forecast": 450.0}
    assert output["stdout"] == "forecast 450.0\n"
    assert output["choices"] == [{"node": 0, "index": 0}]
    assert output["steps"] > 0

    assert main(["run", str(files / "prog.lyc"), "--input", str(files / "in.json"), "--choose", "2"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["result"] == 20 and output["choices"] == [{"node": 0, "index": 2}]

    assert main(["inspect", str(files / "prog.lyc")]) == 0
    text = capsys.readouterr().out
    assert "1 choice nodes" in text and "CAPABILITY" in text and '"series.ewmaForecast"' in text
    assert "choice 0: 3 options at line 7, column 1" in text


def test_caps_lists_every_capability(capsys):
    assert main(["caps"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 19  # 13 pure/runtime kernels + 6 I/O kernels (lycan/sandbox/)
    assert any(line.startswith("runtime.publish(name: string, value: any) -> any  [effects: publish]")
               for line in lines)


def one_line_error(capsys, argv):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lycan: error: ")
    return lines[0]


def test_errors_exit_2_with_one_line(files, capsys):
    (files / "bad.lycs").write_text("(+ 1\n")
    assert "never closed" in one_line_error(capsys, ["compile", str(files / "bad.lycs"), "-o", str(files / "x")])
    (files / "div.lycs").write_text("(/ 1 0)")
    main(["compile", str(files / "div.lycs"), "-o", str(files / "div.lyc")])
    assert "division by zero" in one_line_error(capsys, ["run", str(files / "div.lyc")])
    assert "bad-magic" in one_line_error(capsys, ["run", str(files / "prog.lycs")])
    assert "No such file" in one_line_error(capsys, ["inspect", str(files / "missing.lyc")])
    main(["compile", str(files / "prog.lycs"), "-o", str(files / "prog.lyc")])
    (files / "nan.json").write_text('{"rps": [NaN]}')
    assert "NaN" in one_line_error(capsys, ["run", str(files / "prog.lyc"), "--input", str(files / "nan.json")])
    assert "chooser picked 7" in one_line_error(
        capsys, ["run", str(files / "prog.lyc"), "--input", str(files / "in.json"), "--choose", "7"])
    assert "max_steps" in one_line_error(
        capsys, ["run", str(files / "prog.lyc"), "--input", str(files / "in.json"), "--max-steps", "3"])
    one_line_error(capsys, ["frobnicate"])


def test_the_module_runs_as_a_command(files):
    completed = subprocess.run([sys.executable, "-m", "lycan", "caps"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0 and "stats.mean" in completed.stdout
