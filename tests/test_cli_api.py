"""The API commands of ``syntra`` (capsule, decide, feedback, report, token, backup,
restore) driven through ``syntra.cli.main`` against a real ``syntra serve`` process.

Every expectation comes from the request the test made (the options it installed, the
rewards it sent, the scopes it granted), never from a previous run's output.
"""

import json
import shutil
import socket
import tarfile
from pathlib import Path

import pytest

from syntra.cli import main
from tests.grpc_server import ServerProcess

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
JOB = "tenants/cli/jobs/web"
PLAIN = f"{JOB}/capsules/cta"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("cli-api") / "data", durability="none")
    try:
        process.start()
        yield process
    finally:
        try:
            process.terminate()
        finally:
            process.kill()


@pytest.fixture
def cli(server, capsys):
    """``syntra ARGS --server ADDRESS --token ADMIN``: (exit code, stdout, stderr)."""

    def run(*args, token=server.admin_key, server_address=server.address):
        connection = ["--server", server_address] + (["--token", token] if token is not None else [])
        code = main([*args, *connection])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def run_json(cli, *args, **kwargs):
    code, out, err = cli(*args, "--json", **kwargs)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def plain_capsule(server):
    """A plain Bernoulli capsule over blue, green, red (installed once, through the CLI)."""
    code = main(["capsule", "install", JOB, "--id", "cta", "--options", "blue,green,red",
                 "--reward", '{"type": "bernoulli"}', "--server", server.address, "--token", server.admin_key])
    assert code == 0
    return PLAIN


# --- capsules -----------------------------------------------------------------------------


def test_install_a_plain_capsule_and_show_it(cli, plain_capsule):
    capsule = run_json(cli, "capsule", "get", plain_capsule)
    assert capsule["name"] == plain_capsule
    assert capsule["options"] == ["blue", "green", "red"]
    assert capsule["reward_spec"] == {"type": "bernoulli"}
    assert capsule["program"] is False and capsule["shadow"] is False

    code, out, err = cli("capsule", "get", plain_capsule)
    assert code == 0 and err == ""
    rows = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert rows["name"] == plain_capsule
    assert rows["options"] == "blue, green, red"
    assert rows["program"] == "no"
    assert json.loads(rows["reward"]) == {"type": "bernoulli"}


def test_install_from_a_spec_inlines_the_program_and_sends_the_policy(cli, tmp_path):
    spec_dir = tmp_path / "llm"
    shutil.copytree(EXAMPLES / "llm-routing", spec_dir)
    policy = {"version": 1, "hosts": ["api.example.com"]}
    (spec_dir / "policy.json").write_text(json.dumps(policy))

    capsule = run_json(cli, "capsule", "install", "tenants/cli/jobs/llm", "--spec", str(spec_dir / "capsule.yaml"))
    assert capsule["name"] == "tenants/cli/jobs/llm/capsules/llm-routing"  # the spec's name
    assert capsule["options"] == ["small", "medium", "large"]
    assert capsule["program"] is True
    assert capsule["policy"]["hosts"] == ["api.example.com"]

    # The program runs on the server: 10 characters -> 3 prompt tokens, + 100 = 103, and the
    # context key comes from the input's "task" (the spec's contextSpec).
    decision = run_json(cli, "decide", capsule["name"], "--input",
                        '{"task": "legal", "prompt": "xxxxxxxxxx", "max_output": 100}')
    assert decision["context_key"] == "legal"
    price = {"small": 1, "medium": 5, "large": 30}[decision["option"]]
    assert decision["value"] == [f"lyra-{decision['option']}", 103, 103 * price]


def test_install_from_compiled_lycan_source(cli, tmp_path):
    program = tmp_path / "pick.lycs"
    program.write_text('(choice "a" "b")')
    capsule = run_json(cli, "capsule", "install", JOB, "--id", "lyc-pick", "--options", "a,b",
                       "--lyc", str(program))
    assert capsule["program"] is True and capsule["options"] == ["a", "b"]
    decision = run_json(cli, "decide", capsule["name"], "--context", "x")
    assert decision["value"] == decision["option"]


@pytest.mark.parametrize(("args", "message"), [
    (["--spec", "SPEC", "--reward", '{"type": "bernoulli"}'], "--reward cannot go with --spec"),
    (["--options", "a,b"], "--id is required unless --spec"),
    (["--id", "x", "--options", "a,b", "--policy", "{}"], "--policy is for a program capsule"),
    (["--id", "x", "--options", "a,,b"], "is not a comma-separated list"),
    (["--id", "x", "--options", "a,b", "--learning", "[1]"], "must be a JSON object, got list"),
    (["--id", "x", "--options", "a,b", "--learning", "@/nonexistent/learning.json"], "cannot read"),
    (["--id", "x", "--lyc", "prog.lyc"], "one of the arguments --spec --options is required"),
])
def test_install_usage_errors_exit_2_and_install_nothing(cli, args, message):
    args = [str(EXAMPLES / "llm-routing" / "capsule.yaml") if a == "SPEC" else a for a in args]
    code, out, err = cli("capsule", "install", "tenants/cli/jobs/usage", *args)
    assert code == 2 and out == ""
    assert "syntra capsule install: error:" in err and message in err
    assert run_json(cli, "capsule", "list", "tenants/cli/jobs/usage") == []


def test_install_a_spec_whose_program_file_is_missing(cli, tmp_path):
    spec = tmp_path / "capsule.yaml"
    spec.write_text("name: broken\noptions: [a, b]\nprogram_file: missing.lycs\n")
    code, _, err = cli("capsule", "install", "tenants/cli/jobs/usage", "--spec", str(spec))
    assert code == 2
    assert "--spec: program_file: cannot read" in err and "missing.lycs" in err


def test_the_server_names_the_field_at_fault(cli):
    code, out, err = cli("capsule", "install", "tenants/cli", "--id", "x", "--options", "a,b")
    assert code == 2 and out == ""
    assert err.startswith("syntra capsule install: error: INVALID_ARGUMENT: parent: must be tenants/")


def test_list_capsules_as_a_table_and_as_json(cli, plain_capsule):
    listed = run_json(cli, "capsule", "list", JOB)
    assert plain_capsule in [c["name"] for c in listed]
    assert all(c["name"].startswith(JOB + "/") for c in listed)
    assert run_json(cli, "capsule", "list", "tenants/nobody") == []

    code, out, _ = cli("capsule", "list", JOB)
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split() == ["name", "options", "algorithm", "lifecycle", "decisions", "pending"]
    row = next(line.split() for line in lines if line.startswith(plain_capsule))
    assert row[1] == "3"
    code, out, _ = cli("capsule", "list", "tenants/nobody")
    assert (code, out) == (0, "no capsules\n")


def test_freeze_and_unfreeze(cli):
    run_json(cli, "capsule", "install", "tenants/cli/jobs/frost", "--spec", str(EXAMPLES / "retry-tuning" / "capsule.yaml"))
    name = "tenants/cli/jobs/frost/capsules/retry-tuning"
    assert run_json(cli, "capsule", "freeze", name)["lifecycle"] == "frozen"
    code, out, _ = cli("capsule", "unfreeze", name)
    assert code == 0 and out.startswith(f"{name} is ") and "frozen" not in out
    assert run_json(cli, "capsule", "get", name)["lifecycle"] != "frozen"


def test_delete_then_the_capsule_is_not_found(cli):
    name = f"{JOB}/capsules/doomed"
    run_json(cli, "capsule", "install", JOB, "--id", "doomed", "--options", "a,b")
    assert run_json(cli, "capsule", "delete", name) == {"deleted": name}
    code, out, err = cli("capsule", "get", name)
    assert code == 2 and out == ""
    assert err.startswith("syntra capsule get: error: NOT_FOUND: ")


# --- decide, feedback, report -------------------------------------------------------------


def test_decide_feedback_and_report(cli):
    run_json(cli, "capsule", "install", JOB, "--id", "loop", "--options", "x,y")
    name = f"{JOB}/capsules/loop"
    rewards = {"home": [1.0, 1.0, 0.0], "search": [0.0]}
    for context, outcome in rewards.items():
        for reward in outcome:
            decision = run_json(cli, "decide", name, "--context", context)
            assert decision["context_key"] == context and decision["option"] in ("x", "y")
            assert 0 < decision["propensity"] <= 1
            code, out, err = cli("feedback", name, decision["decision_id"], "--reward", str(reward))
            assert (code, err) == (0, "") and decision["decision_id"] in out

    report = run_json(cli, "report", name)
    assert sum(report["contexts"]["home"]["pulls"].values()) == 3
    assert sum(report["contexts"]["search"]["pulls"].values()) == 1
    assert report["decisions"] == 4 and report["pending"] == 0

    code, out, _ = cli("report", name)
    assert code == 0
    assert out.splitlines()[0].startswith(f"{name}  (")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("home", "search"))}
    assert rows["home"][1:3] == ["3", f"{2 / 3:.3f}"]  # 3 plays, mean of 1, 1, 0
    assert rows["search"][1:3] == ["1", "0.000"]


def test_decide_text_output(cli, plain_capsule):
    code, out, err = cli("decide", plain_capsule, "--context", "home")
    assert code == 0 and err == ""
    rows = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert rows["context"] == "home"
    assert rows["option"].split()[0] in ("blue", "green", "red")
    assert len(rows["decision_id"]) > 8


def test_feedback_errors_name_the_problem(cli, plain_capsule):
    decision = run_json(cli, "decide", plain_capsule, "--context", "err")
    code, _, err = cli("feedback", plain_capsule, decision["decision_id"], "--reward", "nan")
    assert code == 2 and err.startswith("syntra feedback: error: INVALID_ARGUMENT: ") and "reward" in err
    # The refused feedback changed nothing: the decision still takes its outcome, once.
    assert cli("feedback", plain_capsule, decision["decision_id"], "--reward", "1")[0] == 0
    code, _, err = cli("feedback", plain_capsule, decision["decision_id"], "--reward", "1")
    assert code == 2 and err.startswith("syntra feedback: error: ALREADY_EXISTS: ")
    code, _, err = cli("feedback", plain_capsule, decision["decision_id"], "--reward", "1", "--taken-option", "blue")
    assert code == 2 and "--taken-option and --taken-propensity go together" in err
    code, _, err = cli("feedback", plain_capsule, decision["decision_id"])
    assert code == 2 and "one of the arguments --reward --components is required" in err


def test_shadow_capsule_feedback_with_the_action_taken(cli):
    capsule = run_json(cli, "capsule", "install", JOB, "--id", "shadowed", "--options", "a,b", "--shadow")
    assert capsule["shadow"] is True
    decision = run_json(cli, "decide", capsule["name"], "--context", "c")
    assert decision["shadow"] is True
    assert run_json(cli, "feedback", capsule["name"], decision["decision_id"], "--reward", "1",
                    "--taken-option", "b", "--taken-propensity", "0.5") == {
        "decision_id": decision["decision_id"], "recorded": True}


@pytest.mark.parametrize(("args", "message"), [
    (["--features", "{not json"], "argument --features: not valid JSON"),
    (["--metrics", "[1, 2]"], "argument --metrics: must be a JSON object, got list"),
    (["--input", "@/nonexistent/input.json"], "argument --input: cannot read /nonexistent/input.json"),
])
def test_decide_bad_json_arguments_exit_2(cli, plain_capsule, args, message):
    code, out, err = cli("decide", plain_capsule, *args)
    assert code == 2 and out == "" and message in err


def test_decide_on_an_unknown_capsule_is_not_found(cli):
    code, out, err = cli("decide", f"{JOB}/capsules/nope", "--context", "home")
    assert code == 2 and out == ""
    assert err.startswith("syntra decide: error: NOT_FOUND: ")


# --- connection ---------------------------------------------------------------------------


def test_server_and_token_come_from_the_environment(server, plain_capsule, monkeypatch, capsys):
    monkeypatch.setenv("SYNTRA_SERVER", server.address)
    monkeypatch.setenv("SYNTRA_TOKEN", server.admin_key)
    assert main(["capsule", "get", plain_capsule, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == plain_capsule

    monkeypatch.setenv("SYNTRA_SERVER", "no-port")
    assert main(["capsule", "get", plain_capsule]) == 2
    assert "$SYNTRA_SERVER: 'no-port' is not HOST:PORT" in capsys.readouterr().err


def test_an_unreachable_server_exits_1(cli, plain_capsule):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    code, out, err = cli("capsule", "get", plain_capsule, "--timeout", "2", server_address=address)
    assert code == 1 and out == ""
    assert err.startswith(("syntra capsule get: error: UNAVAILABLE: ", "syntra capsule get: error: DEADLINE_EXCEEDED: "))


def test_a_bad_server_argument_is_a_usage_error(cli, plain_capsule):
    code, _, err = cli("capsule", "get", plain_capsule, server_address="localhost")
    assert code == 2 and "argument --server: 'localhost' is not HOST:PORT" in err


def test_without_a_token_the_server_refuses(cli, plain_capsule, monkeypatch):
    monkeypatch.delenv("SYNTRA_TOKEN", raising=False)
    code, _, err = cli("capsule", "get", plain_capsule, token=None)
    assert code == 2 and err.startswith("syntra capsule get: error: UNAUTHENTICATED: ")


# --- tokens -------------------------------------------------------------------------------


def test_a_token_acts_within_its_scope_only_and_stops_when_revoked(cli, plain_capsule):
    code, out, err = cli("token", "create", "--scope", f"read:{JOB}", "--name", "reader", "--ttl", "600")
    assert code == 0 and err == ""
    assert "will not be shown again" in out
    secret = next(line.split()[1] for line in out.splitlines() if line.startswith("secret"))
    name = out.splitlines()[0].split()[1]
    assert name.startswith("tokens/")

    # read on the job: the capsule shows; deciding needs decide, which it lacks.
    assert run_json(cli, "capsule", "get", plain_capsule, token=secret)["name"] == plain_capsule
    code, out, err = cli("decide", plain_capsule, "--context", "home", token=secret)
    assert code == 2 and out == ""
    assert err.startswith("syntra decide: error: PERMISSION_DENIED: ")
    # A reader may not mint tokens either.
    code, _, err = cli("token", "create", "--scope", f"read:{JOB}", token=secret)
    assert code == 2 and "PERMISSION_DENIED" in err

    listed = {t["name"]: t for t in run_json(cli, "token", "list")}
    assert listed[name]["scopes"] == [f"read:{JOB}"] and listed[name]["display_name"] == "reader"
    code, out, _ = cli("token", "list")
    row = next(line for line in out.splitlines() if line.startswith(name))
    assert row.split()[-1] == "active" and f"read:{JOB}" in row

    revoked = run_json(cli, "token", "revoke", name.removeprefix("tokens/"))  # the bare id is enough
    assert revoked["name"] == name and revoked["revoke_time"] is not None
    code, _, err = cli("capsule", "get", plain_capsule, token=secret)
    assert code == 2 and err.startswith("syntra capsule get: error: UNAUTHENTICATED: ")
    assert name not in {t["name"] for t in run_json(cli, "token", "list")}
    code, out, _ = cli("token", "list", "--all")
    assert next(line for line in out.splitlines() if line.startswith(name)).split()[-1] == "revoked"


def test_token_create_json_and_a_decide_scope(cli, plain_capsule):
    created = run_json(cli, "token", "create", "--scope", f"decide:{plain_capsule}", "--ttl", "600")
    assert created["token"]["scopes"] == [f"decide:{plain_capsule}"]
    decision = run_json(cli, "decide", plain_capsule, "--context", "scoped", token=created["secret"])
    assert decision["option"] in ("blue", "green", "red")
    code, _, err = cli("feedback", plain_capsule, decision["decision_id"], "--reward", "1", token=created["secret"])
    assert code == 2 and err.startswith("syntra feedback: error: PERMISSION_DENIED: ")


def test_token_errors(cli):
    code, _, err = cli("token", "create", "--scope", "nonsense:tenants/x")
    assert code == 2 and err.startswith("syntra token create: error: INVALID_ARGUMENT: scopes[0]")
    code, _, err = cli("token", "revoke", "tokens/0123456789abcdef")
    assert code == 2 and err.startswith("syntra token revoke: error: NOT_FOUND: ")


# --- backup and restore -------------------------------------------------------------------


def test_backup_then_restore_brings_a_deleted_capsule_back(cli, tmp_path):
    name = f"{JOB}/capsules/kept"
    run_json(cli, "capsule", "install", JOB, "--id", "kept", "--options", "a,b")
    bundle = tmp_path / "bundle.tar"
    manifest = run_json(cli, "backup", "--out", str(bundle))
    assert manifest["path"] == str(bundle)
    assert manifest["size_bytes"] == bundle.stat().st_size > 0
    assert manifest["wal_sequence"] > 0 and len(manifest["blake3"]) == 64
    assert list(tmp_path.iterdir()) == [bundle]  # no partial file left beside it

    run_json(cli, "capsule", "delete", name)
    restored = run_json(cli, "restore", str(bundle))
    assert restored["wal_sequence"] == manifest["wal_sequence"]
    assert restored["head_digest"] == manifest["head_digest"]
    assert restored["capsules"] >= 1
    assert run_json(cli, "capsule", "get", name)["options"] == ["a", "b"]

    code, out, _ = cli("backup", "--out", str(tmp_path / "again.tar"))
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'again.tar'}: ")


def test_a_damaged_bundle_is_refused_and_changes_nothing(cli, plain_capsule, tmp_path):
    bundle = tmp_path / "bundle.tar"
    run_json(cli, "backup", "--out", str(bundle))
    data = bytearray(bundle.read_bytes())
    # A byte of the WAL's contents (a byte of tar padding would change nothing that matters).
    with tarfile.open(bundle) as archive:
        wal = next(m for m in archive.getmembers() if m.name.startswith("wal/"))
    data[wal.offset_data + wal.size // 2] ^= 0xFF
    bundle.write_bytes(bytes(data))
    before = run_json(cli, "capsule", "list")
    code, out, err = cli("restore", str(bundle))
    assert code == 2 and out == ""
    assert err.startswith("syntra restore: error: INVALID_ARGUMENT: ")
    assert run_json(cli, "capsule", "list") == before

    code, _, err = cli("restore", str(tmp_path / "missing.tar"))
    assert code == 2 and "cannot read" in err


def test_backup_to_a_missing_directory_is_a_usage_error(cli, tmp_path):
    code, _, err = cli("backup", "--out", str(tmp_path / "no" / "such" / "bundle.tar"))
    assert code == 2 and "--out: cannot write in" in err
