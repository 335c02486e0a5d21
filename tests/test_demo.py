"""``syntra demo``: a real server as a child process, the example capsules installed and
taught over gRPC, the server stopped gracefully and its store verified.

Whether a context learned is judged against the worlds' true means (the test recomputes
the true best from them); the demo's own verdict is checked against that, not trusted.
"""

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

from syntra import Engine
from syntra.cli import main
from syntra.demo import DEFAULT_ROUNDS, WORLDS, prepare_data_directory
from syntra.errors import SyntraError
from syntra.verify import verify_store

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# For the runs that show the mechanics, not the learning: a few seconds each.
ROUNDS = 100


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "syntra", "demo", *args]


def demo_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


# --- the worlds ---------------------------------------------------------------------------


def test_every_example_has_a_world_with_its_options():
    examples = {path.parent.name for path in EXAMPLES.glob("*/capsule.yaml")}
    assert {world.example for world in WORLDS} == examples
    for world in WORLDS:
        spec = yaml.safe_load((EXAMPLES / world.example / "capsule.yaml").read_text())
        assert tuple(spec["options"]) == world.options, world.example
        assert spec["contextSpec"] == {"kind": "discrete", "key": world.context_field}, world.example


def test_every_world_has_a_different_best_option_per_context():
    for world in WORLDS:
        bests = set()
        for context, means in world.true_means.items():
            assert len(means) == len(world.options) and all(0 <= m <= 1 for m in means)
            ranked = sorted(means, reverse=True)
            assert ranked[0] - ranked[1] >= 0.1, (world.example, context)  # learnable in a demo's time
            bests.add(world.options[means.index(ranked[0])])
            sample = world.make_input(context, __import__("random").Random(0))
            assert sample[world.context_field] == context
        assert len(bests) > 1, world.example


def test_the_demo_recreates_only_a_directory_of_its_own(tmp_path):
    own = tmp_path / "own"
    (own / "store" / "wal").mkdir(parents=True)
    (own / "tokens.json").write_text("{}")
    prepare_data_directory(own)
    assert own.is_dir() and list(own.iterdir()) == []

    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    with pytest.raises(SyntraError, match="not a demo's"):
        prepare_data_directory(foreign)
    assert (foreign / "chapter1.tex").read_text() == "precious"


# --- runs ---------------------------------------------------------------------------------


def test_the_default_demo_learns_stops_the_server_and_verifies_the_store(tmp_path, capsys):
    """The README's first command: at the default settings every context learns."""
    data = tmp_path / "demo"
    (data / "store").mkdir(parents=True)
    (data / "store" / "stale").write_text("from an earlier run")

    assert main(["demo", "--duration", "0", "--data", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["seed"], report["rounds_per_context"]) == (0, DEFAULT_ROUNDS)

    worlds = {world.example: world for world in WORLDS}
    assert [s["example"] for s in report["scenarios"]] == list(worlds)
    for scenario in report["scenarios"]:
        world = worlds[scenario["example"]]
        assert scenario["name"] == f"tenants/demo/jobs/{world.job}/capsules/{world.example}"
        assert [c["context"] for c in scenario["contexts"]] == list(world.true_means)
        for context in scenario["contexts"]:
            means = world.true_means[context["context"]]
            truth = world.options[max(range(len(means)), key=means.__getitem__)]
            assert context["true_best"] == truth
            assert context["learned"] == (context["learned_best"] == truth)
            assert sum(context["pulls"].values()) == DEFAULT_ROUNDS
            assert context["pulls"][context["learned_best"]] == max(context["pulls"].values())
    assert report["contexts"] == sum(len(w.true_means) for w in WORLDS)
    assert report["learned_true_best"] == report["contexts"]
    assert report["ok"] is True

    # The server stopped gracefully, and is gone.
    assert report["server"]["exit_code"] == 0 and report["server"]["stopped_by"] == "duration"
    assert gone(report["server"]["pid"])
    # The store verifies on its own, and holds every decision the demo made.
    store = Path(report["store"]["path"])
    assert store == data / "store" and report["store"]["verified"] is True
    assert not (store / "stale").exists()
    assert verify_store(store).ok
    with Engine.open(store) as engine:
        assert sum(c.decisions for c in engine.capsules()) == DEFAULT_ROUNDS * report["contexts"]
    # The admin key was in the child's environment only: nothing on disk holds one.
    for path in data.rglob("*"):
        if path.is_file():
            assert b"syn_demo_" not in path.read_bytes(), path


def test_demo_is_deterministic_for_a_seed(tmp_path, capsys):
    def pulls(seed: int, data: Path) -> dict:
        main(["demo", "--duration", "0.2", "--rounds", "40", "--seed", str(seed), "--data", str(data), "--json"])
        report = json.loads(capsys.readouterr().out)
        assert report["server"]["stopped_by"] == "duration"
        return {s["example"]: [c["pulls"] for c in s["contexts"]] for s in report["scenarios"]}

    first = pulls(3, tmp_path / "a")
    assert pulls(3, tmp_path / "b") == first
    assert pulls(4, tmp_path / "c") != first


@pytest.mark.parametrize(("args", "message"), [
    (["--rounds", "0"], "rounds must be an integer"),
    (["--seed", "-5"], "seed must be an integer"),
    (["--duration", "-1"], "--duration must be a number of seconds >= 0"),
])
def test_demo_bad_arguments_exit_2_before_anything_starts(tmp_path, capsys, args, message):
    data = tmp_path / "demo"
    assert main(["demo", "--data", str(data), *args]) == 2
    err = capsys.readouterr().err
    assert "syntra demo: error:" in err and message in err
    assert not data.exists()


def test_demo_refuses_a_foreign_data_directory(tmp_path, capsys):
    data = tmp_path / "mine"
    data.mkdir()
    (data / "notes.txt").write_text("keep me")
    assert main(["demo", "--duration", "0", "--rounds", "10", "--data", str(data)]) == 1
    assert "not a demo's" in capsys.readouterr().err
    assert (data / "notes.txt").read_text() == "keep me"


def test_demo_serves_until_sigterm_and_a_visitor_token_works(tmp_path, capsys):
    """Text mode, stdout a pipe: a line per capsule, the addresses and a token to try;
    the demo keeps serving until SIGTERM, then stops the server and verifies the store."""
    demo = subprocess.Popen(demo_command("--duration", "120", "--rounds", str(ROUNDS), "--data", str(tmp_path / "d")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=demo_env())
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(line.startswith("try it:") for line in lines):
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
        text = "".join(lines)
        assert "try it:" in text, text + demo.stderr.read()
        server_pid = int(re.search(r"\(pid (\d+)\)", text).group(1))
        for world in WORLDS:
            assert f"  {world.example}: {ROUNDS * len(world.true_means):,} decisions in " in text
        report_contexts = sum(len(w.true_means) for w in WORLDS)
        assert re.search(rf"\n\d+ of {report_contexts} contexts learned their true best option", text)
        try_it = re.search(r"SYNTRA_SERVER=(\S+) SYNTRA_TOKEN=(\S+) syntra report (\S+)", text)
        address, token, name = try_it.groups()
        assert f"serving: gRPC {address}, metrics http://" in text
        # The admin key is not on the server's command line.
        assert b"syn_demo_" not in Path(f"/proc/{server_pid}/cmdline").read_bytes()

        assert main(["report", name, "--server", address, "--token", token, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        world = next(w for w in WORLDS if name.endswith("/" + w.example))
        assert set(report["contexts"]) == set(world.true_means)
        # The token is the tenant's, not an admin's.
        assert main(["token", "create", "--scope", "admin", "--server", address, "--token", token]) == 2
        assert "PERMISSION_DENIED" in capsys.readouterr().err

        demo.send_signal(signal.SIGTERM)
        out, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    # Exit 0 only if every context learned (a hundred rounds may not be enough for all).
    learned_all = f"{report_contexts} of {report_contexts} contexts learned" in text
    assert demo.returncode == (0 if learned_all else 1), err
    assert "stopping the server (SIGTERM), interrupted" in out
    assert "stopped (exit code 0)" in out and re.search(r"store \S+: OK: ", out)
    assert gone(server_pid)


def test_demo_on_a_terminal_shows_progress_bars(tmp_path):
    leader, follower = pty.openpty()
    # A terminal of 120 columns (a fresh pseudo-terminal has none, and tqdm draws nothing).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    demo = subprocess.Popen(demo_command("--duration", "0", "--rounds", "40", "--data", str(tmp_path / "d")),
                            stdout=follower, stderr=subprocess.PIPE, env=demo_env())
    os.close(follower)
    output = b""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the terminal closed: the demo is done
                    break
                if not chunk:
                    break
                output += chunk
            elif demo.poll() is not None:
                break
        demo.wait(timeout=60)
    finally:
        os.close(leader)
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    text = output.decode(errors="replace")
    for world in WORLDS:  # a tqdm bar per capsule, run to its end
        total = 40 * len(world.true_means)
        assert re.search(rf"{world.example}: 100%.*{total}/{total}", text), text
    assert "  llm-routing: 120 decisions in" not in text  # bars instead of the plain lines
    assert "stopped (exit code 0)" in text
