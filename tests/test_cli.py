"""The ``syntra`` command: output, exit codes and error messages, in process and as a program."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import syntra.simulate
from syntra import __version__
from syntra.cli import main
from syntra.simulate import simulate

SRC = Path(__file__).resolve().parents[1] / "src"
SIMULATE = ["simulate", "--options", "a,b,c", "--true-arm-rewards", "0.2,0.5,0.7"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_program(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m syntra.cli`` as a user would, with this checkout importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "syntra.cli", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )


# --- simulate ----------------------------------------------------------------------------


def test_simulate_prints_regret_share_and_learned_means(capsys):
    code = main([*SIMULATE, "--rounds", "5000", "--seed", "7"])
    out, err = capsys.readouterr()

    assert code == 0
    assert err == ""  # no progress bar on a short run
    expected = simulate(["a", "b", "c"], [0.2, 0.5, 0.7], rounds=5000, seed=7)
    assert "5,000 rounds of thompson on 3 options (seed 7)" in out
    assert f"cumulative regret  {expected.cumulative_regret:,.1f}" in out
    assert f"best-arm share     {expected.best_arm_share:.1%}" in out
    table = [line.split() for line in out.splitlines()]
    rows = {cells[0]: cells for cells in table if cells[:1] in (["a"], ["b"], ["c"])}
    assert rows["c"][1] == "*"  # the best option is marked
    assert rows["c"][3] == f"{expected.pulls['c']:,}"
    assert rows["a"][2] == f"{expected.pulls['a']:,}"
    assert rows["c"][-1] == f"{expected.mean_reward['c']:.3f}"


def test_simulate_json_is_one_consistent_object(capsys):
    code = main([*SIMULATE, "--rounds", "4000", "--seed", "3", "--algorithm", "ucb1", "--json"])
    out, err = capsys.readouterr()

    assert code == 0 and err == ""
    result = json.loads(out)
    assert {
        "options", "true_means", "rounds", "seed", "algorithm", "cumulative_regret",
        "best_arm_share", "pulls", "mean_reward", "regret_curve",
    } <= result.keys()
    assert result["options"] == ["a", "b", "c"]
    assert result["true_means"] == [0.2, 0.5, 0.7]
    assert (result["rounds"], result["seed"], result["algorithm"]) == (4000, 3, "ucb1")
    assert sum(result["pulls"].values()) == 4000
    best = result["best_options"][0]
    assert best == "c"
    assert result["best_arm_share"] == result["pulls"][best] / 4000
    regret = sum(result["pulls"][o] * (0.7 - m) for o, m in zip("abc", [0.2, 0.5, 0.7]))
    assert result["cumulative_regret"] == pytest.approx(regret)
    curve = result["regret_curve"]
    assert 1 < len(curve) <= 200
    assert curve[-1] == [4000, result["cumulative_regret"]]


def test_simulate_json_is_reproducible_from_the_seed(capsys):
    main([*SIMULATE, "--rounds", "1000", "--seed", "5", "--json"])
    first = capsys.readouterr().out
    main([*SIMULATE, "--rounds", "1000", "--seed", "5", "--json"])
    assert capsys.readouterr().out == first


def test_simulate_plot_writes_a_png(tmp_path, capsys):
    target = tmp_path / "regret.png"
    code = main([*SIMULATE, "--rounds", "2000", "--plot", str(target)])

    assert code == 0
    assert target.read_bytes().startswith(PNG_MAGIC)
    assert target.stat().st_size > 5000  # a drawn chart, not an empty canvas
    assert f"regret curve written to {target}" in capsys.readouterr().out


def test_simulate_plot_without_matplotlib_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    # A None entry makes the import fail, as if matplotlib were not installed.
    for module in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    target = tmp_path / "regret.png"

    code = main([*SIMULATE, "--rounds", "2000", "--plot", str(target)])
    out, err = capsys.readouterr()

    assert code == 2
    assert "pip install 'syntra[plot]'" in err
    assert "Traceback" not in err
    assert out == ""  # it failed before running, not after
    assert not target.exists()


def test_simulate_plot_onto_a_directory_fails_before_the_run(tmp_path, capsys):
    blocked = tmp_path / "taken.png"
    blocked.mkdir()  # a directory where the file should go

    code = main([*SIMULATE, "--rounds", "100", "--plot", str(blocked)])
    out, err = capsys.readouterr()

    assert code == 2
    assert out == ""  # refused up front: nothing ran
    assert f"error: cannot write the plot to {str(blocked)!r}: it is a directory" in err
    assert "Traceback" not in err


def test_simulate_plot_in_a_directory_that_refuses_files_fails_before_the_run(
        tmp_path, capsys, monkeypatch):
    # A read-only mount refuses even root, whatever the permission bits say.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(syntra.simulate.tempfile, "NamedTemporaryFile", read_only)
    target = tmp_path / "regret.png"

    code = main([*SIMULATE, "--rounds", "100", "--plot", str(target)])
    out, err = capsys.readouterr()

    assert code == 2
    assert out == ""
    assert f"cannot write the plot to {str(target)!r}: Read-only file system" in err
    assert not target.exists()


def test_simulate_plot_over_a_read_only_file_fails_before_the_run(tmp_path, capsys, monkeypatch):
    target = tmp_path / "regret.png"
    target.write_bytes(b"keep me")
    real_access = os.access
    # chmod cannot stop root, so say what a non-root user would be told.
    monkeypatch.setattr(syntra.simulate.os, "access",
                        lambda path, mode: False if path == target else real_access(path, mode))

    code = main([*SIMULATE, "--rounds", "100", "--plot", str(target)])
    out, err = capsys.readouterr()

    assert code == 2 and out == ""
    assert f"cannot write the plot to {str(target)!r}: permission denied" in err
    assert target.read_bytes() == b"keep me"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_simulate_plot_in_a_read_only_directory_fails_before_the_run(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main([*SIMULATE, "--rounds", "100", "--plot", str(locked / "regret.png")])
    finally:
        locked.chmod(0o700)
    out, err = capsys.readouterr()

    assert code == 2 and out == ""
    assert "cannot write the plot to" in err and "Permission denied" in err
    assert list(locked.iterdir()) == []  # the probe file is gone too


def test_simulate_probe_leaves_no_file_behind(tmp_path, capsys):
    target = tmp_path / "regret.png"
    assert main([*SIMULATE, "--rounds", "100", "--plot", str(target)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["regret.png"]


@pytest.mark.parametrize("as_json", [False, True])
def test_simulate_plot_failing_late_still_prints_the_result(as_json, tmp_path, capsys,
                                                           monkeypatch):
    def disk_full(result, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(syntra.simulate, "plot_regret", disk_full)
    target = tmp_path / "regret.png"
    args = [*SIMULATE, "--rounds", "1000", "--seed", "4", "--plot", str(target)]

    code = main(args + ["--json"] if as_json else args)
    out, err = capsys.readouterr()

    assert code == 1
    assert err.startswith(f"syntra simulate: error: cannot write {target}: ")
    assert "No space left on device" in err and "Traceback" not in err
    expected = simulate(["a", "b", "c"], [0.2, 0.5, 0.7], rounds=1000, seed=4)
    if as_json:
        assert json.loads(out) == json.loads(json.dumps(expected.to_dict()))
    else:
        assert f"cumulative regret  {expected.cumulative_regret:,.1f}" in out
        assert "regret curve written" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--options", "a,b", "--true-arm-rewards", "0.2,0.5,0.7"],
         "2 options need 2 true rewards, got 3"),
        (["--options", "a,a,b", "--true-arm-rewards", "0.2,0.5,0.7"], "unique, repeated: ['a']"),
        (["--options", "", "--true-arm-rewards", "0.5"], "1 to 256 options, got 0"),
        (["--options", "a,,b", "--true-arm-rewards", "0.2,0.5,0.7"], "1-128 characters, got ''"),
        # The engine's limit, not a copy of it: a name the engine would refuse is refused here.
        (["--options", "a," + "b" * 200, "--true-arm-rewards", "0.2,0.5"],
         "1-128 characters, got 'bbbb"),
        ([*SIMULATE[1:], "--context", "k" * 257], "at most 256 characters"),
        (["--options", "a,b", "--true-arm-rewards", "0.2,1.5"], "in [0, 1], got 1.5"),
        (["--options", "a,b", "--true-arm-rewards", "0.2,nan"], "got nan"),
        (["--options", "a,b", "--true-arm-rewards", "0.2,inf"], "got inf"),
        (["--options", "a,b", "--true-arm-rewards", "0.2,x"], "'x' is not a number"),
        ([*SIMULATE[1:], "--rounds", "0"], "rounds must be an integer in 1..100_000_000"),
        ([*SIMULATE[1:], "--rounds", str(10**9)], "rounds must be an integer in 1..100_000_000"),
        ([*SIMULATE[1:], "--rounds", "ten"], "invalid int value: 'ten'"),
        ([*SIMULATE[1:], "--seed", "-1"], "seed must be an integer in [0, 2**64)"),
        ([*SIMULATE[1:], "--algorithm", "bandit"], "invalid choice: 'bandit'"),
        ([*SIMULATE[1:], "--plot", "out.xyz"], "cannot write a .xyz plot"),
        ([*SIMULATE[1:], "--plot", "/no/such/dir/out.png"], "does not exist"),
        (["--true-arm-rewards", "0.5"], "the following arguments are required: --options"),
    ],
)
def test_simulate_bad_arguments_exit_2_with_a_message(args, message, capsys):
    code = main(["simulate", *args])
    out, err = capsys.readouterr()

    assert code == 2
    assert out == ""
    assert err.startswith("usage: syntra simulate")  # reported as a usage error
    assert "syntra simulate: error:" in err and message in err
    assert "Traceback" not in err


# --- the command itself ------------------------------------------------------------------


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"syntra {__version__}"


def test_a_command_is_required(capsys):
    assert main([]) == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_program_simulate_json():
    done = run_program(*SIMULATE, "--rounds", "3000", "--seed", "7", "--json")

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    result = json.loads(done.stdout)
    assert sum(result["pulls"].values()) == 3000
    assert result["best_arm_share"] > 0.8


def test_program_shows_a_progress_bar_on_long_runs_only_in_text_mode():
    text = run_program(*SIMULATE, "--rounds", "20000")
    assert text.returncode == 0, text.stderr
    assert "20.0k/20.0k" in text.stderr and "round" in text.stderr  # tqdm's bar, finished
    assert "cumulative regret" in text.stdout

    quiet = run_program(*SIMULATE, "--rounds", "20000", "--json")
    assert quiet.returncode == 0
    assert quiet.stderr == ""
    assert json.loads(quiet.stdout)["rounds"] == 20000


def test_program_bad_arguments_exit_2_without_a_traceback():
    done = run_program("simulate", "--options", "a,b", "--true-arm-rewards", "0.2,0.5,0.7")
    assert done.returncode == 2
    assert "2 options need 2 true rewards, got 3" in done.stderr
    assert "Traceback" not in done.stderr
