"""The per-capsule policy (lycan/policy.py): parsing, validation, deny-all, and the CLI flag."""

import json

import pytest

import lycan
from lycan import CapabilityError
from lycan.capabilities import REGISTRY
from lycan.cli import main
from lycan.policy import CapabilityDenied, IOLimits, Policy, PolicyError

IO_CALLS = {
    "file.exists": '(!cap "file.exists" "a.txt")',
    "file.readText": '(!cap "file.readText" "a.txt")',
    "file.writeText": '(!cap "file.writeText" "a.txt" "x")',
    "sql.sqliteQuery": '(!cap "sql.sqliteQuery" "m.db" "SELECT 1" null)',
    "http.get": '(!cap "http.get" "https://api.example.com/")',
    "http.post": '(!cap "http.post" "https://api.example.com/" "x")',
}


@pytest.mark.parametrize("kernel", sorted(IO_CALLS))
def test_deny_all_is_the_default(kernel, tmp_path):
    with pytest.raises(CapabilityDenied) as caught:
        lycan.run(lycan.compile_source(IO_CALLS[kernel]))
    assert isinstance(caught.value, CapabilityError) and caught.value.capability == kernel
    assert f"{kernel}: denied: no policy was given" in str(caught.value)
    # An empty policy grants nothing either.
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(CapabilityDenied) as caught:
        lycan.run(lycan.compile_source(IO_CALLS[kernel]), policy=Policy.from_dict({}))
    assert caught.value.capability == kernel
    assert (tmp_path / "a.txt").read_text() == "x"


def test_io_kernels_are_registered_as_impure_with_effects():
    effects = {"file.exists": ("filesystem-read",), "file.readText": ("filesystem-read",),
               "file.writeText": ("filesystem-write",), "sql.sqliteQuery": ("database-read",),
               "http.get": ("network",), "http.post": ("network",)}
    for name, expected in effects.items():
        capability = REGISTRY[name]
        assert not capability.pure and capability.effects == expected and capability.summary
    assert [i.name for i in REGISTRY["sql.sqliteQuery"].inputs] == ["db", "query", "params"]
    assert REGISTRY["http.post"].signature() == "http.post(url: string, body: string|array|map) -> map"


def test_a_full_policy_parses(tmp_path):
    (tmp_path / "sandbox").mkdir()
    (tmp_path / "policy.json").write_text(json.dumps({
        "version": 1, "root": "sandbox", "read": True, "write": False,
        "hosts": ["API.Example.com.", "*.metrics.example.org", "93.184.215.14", "[2606:4700::1111]"],
        "sqlite": ["data/m.db"],
        "limits": {"http_timeout_seconds": 2.5, "http_max_response_bytes": 1000,
                   "http_max_request_bytes": 10, "file_max_bytes": 20, "sql_max_rows": 5,
                   "sql_max_seconds": 1}}))
    policy = Policy.load(tmp_path / "policy.json")
    assert policy.root == str((tmp_path / "sandbox").resolve())
    assert policy.policy_path == str((tmp_path / "policy.json").resolve())
    assert (policy.read, policy.write) == (True, False)
    assert policy.hosts == ("api.example.com", "*.metrics.example.org", "93.184.215.14", "2606:4700::1111")
    assert policy.sqlite == (("data", "m.db"),)
    assert policy.limits == IOLimits(2.5, 1000, 10, 20, 5, 1)


def test_defaults():
    policy = Policy.from_dict({})
    assert (policy.root, policy.read, policy.write, policy.hosts, policy.sqlite) == (None, False, False, (), ())
    assert policy.limits == IOLimits()
    assert Policy() == Policy.from_dict({})


def test_host_matching():
    policy = Policy.from_dict({"hosts": ["api.example.com", "*.example.org", "::ffff:8.8.8.8"]})
    assert policy.host_allowed("api.example.com") and policy.host_allowed("API.EXAMPLE.COM.")
    assert policy.host_allowed("a.example.org") and policy.host_allowed("a.b.example.org")
    assert not policy.host_allowed("example.org")          # the wildcard needs a label before it
    assert not policy.host_allowed("evilexample.org")      # a suffix, not a substring
    assert not policy.host_allowed("example.org.evil.com")
    assert not policy.host_allowed("x.api.example.com")    # exact names are exact
    assert policy.host_allowed("::ffff:808:808")           # IP literals compare as addresses


@pytest.mark.parametrize("data, field", [
    ({"colour": 1}, "colour"),
    ({"version": 2}, "version"),
    ({"version": True}, "version"),
    ({"read": "yes"}, "read"),
    ({"write": 1}, "write"),
    ({"root": ""}, "root"),
    ({"root": 5}, "root"),
    ({"root": "relative/dir"}, "root"),
    ({"root": "/definitely/not/here"}, "root"),
    ({"root": "/"}, "root"),
    ({"hosts": "api.example.com"}, "hosts"),
    ({"hosts": ["ok.example.com", "http://x.com"]}, "hosts[1]"),
    ({"hosts": ["x.com:80"]}, "hosts[0]"),
    ({"hosts": ["*"]}, "hosts[0]"),
    ({"hosts": ["a b.com"]}, "hosts[0]"),
    ({"hosts": [7]}, "hosts[0]"),
    ({"hosts": ["-bad.com"]}, "hosts[0]"),
    ({"hosts": ["ex\u00e4mple.com"]}, "hosts[0]"),
    ({"sqlite": ["m.db"]}, "sqlite"),
    ({"sqlite": "m.db"}, "sqlite"),
    ({"limits": []}, "limits"),
    ({"limits": {"speed": 1}}, "limits.speed"),
    ({"limits": {"sql_max_rows": 0}}, "limits.sql_max_rows"),
    ({"limits": {"sql_max_rows": 2.0}}, "limits.sql_max_rows"),
    ({"limits": {"sql_max_rows": True}}, "limits.sql_max_rows"),
    ({"limits": {"file_max_bytes": -1}}, "limits.file_max_bytes"),
    ({"limits": {"file_max_bytes": 1 << 31}}, "limits.file_max_bytes"),
    ({"limits": {"http_max_response_bytes": "big"}}, "limits.http_max_response_bytes"),
    ({"limits": {"http_timeout_seconds": 0}}, "limits.http_timeout_seconds"),
    ({"limits": {"http_timeout_seconds": float("inf")}}, "limits.http_timeout_seconds"),
    ({"limits": {"http_timeout_seconds": float("nan")}}, "limits.http_timeout_seconds"),
    ({"limits": {"sql_max_seconds": 601}}, "limits.sql_max_seconds"),
    ([], "<policy>"),
])
def test_bad_policies_name_the_field(data, field, tmp_path):
    with pytest.raises(PolicyError) as caught:
        Policy.from_dict(data)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"policy field {field!r}: ")


def test_root_checks_against_the_filesystem(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PolicyError, match="not a directory"):
        Policy.from_dict({"root": str(tmp_path / "file")})
    policy = Policy.from_dict({"root": str(tmp_path), "sqlite": ["d/m.db"]})
    assert policy.root == str(tmp_path.resolve()) and policy.policy_path is None
    with pytest.raises(PolicyError) as caught:
        Policy.from_dict({"root": str(tmp_path), "sqlite": ["ok.db", "../escape.db"]})
    assert caught.value.field == "sqlite[1]"


def test_load_rejects_bad_json(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text("{not json")
    with pytest.raises(PolicyError, match="not valid JSON"):
        Policy.load(path)
    path.write_text('{"limits": {"sql_max_seconds": NaN}}')
    with pytest.raises(PolicyError, match="NaN"):
        Policy.load(path)
    with pytest.raises(OSError):
        Policy.load(tmp_path / "missing.json")


def test_run_takes_only_a_policy_object():
    with pytest.raises(TypeError, match="Policy"):
        lycan.run(lycan.compile_source("1"), policy={"read": True})


# ---- command line ---------------------------------------------------------------------------

@pytest.fixture
def capsule(tmp_path):
    (tmp_path / "sandbox").mkdir()
    (tmp_path / "sandbox" / "limits.json").write_text('{"max": 7}')
    (tmp_path / "prog.lycs").write_text(
        '($ text (!cap "file.readText" "limits.json"))\n'
        '(!cap "file.writeText" "seen.txt" text)\n'
        '(!cap "file.exists" "seen.txt")\n')
    assert main(["compile", str(tmp_path / "prog.lycs"), "-o", str(tmp_path / "prog.lyc")]) == 0
    return tmp_path


def test_cli_run_with_a_policy(capsule, capsys):
    (capsule / "policy.json").write_text(json.dumps({"root": "sandbox", "read": True, "write": True}))
    assert main(["run", str(capsule / "prog.lyc"), "--policy", str(capsule / "policy.json")]) == 0
    assert json.loads(capsys.readouterr().out)["result"] is True
    assert (capsule / "sandbox" / "seen.txt").read_text() == '{"max": 7}'


def test_cli_without_a_policy_denies_io(capsule, capsys):
    assert main(["run", str(capsule / "prog.lyc")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "file.readText: denied: no policy was given" in error
    assert not (capsule / "sandbox" / "seen.txt").exists()


def test_cli_rejects_a_bad_policy_on_one_line(capsule, capsys):
    (capsule / "policy.json").write_text(json.dumps({"root": "sandbox", "limits": {"file_max_bytes": 0}}))
    assert main(["run", str(capsule / "prog.lyc"), "--policy", str(capsule / "policy.json")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("lycan: error: policy field 'limits.file_max_bytes'") and error.count("\n") == 1
    (capsule / "policy.json").write_text(json.dumps({"root": "sandbox", "read": True}))
    assert main(["run", str(capsule / "prog.lyc"), "--policy", str(capsule / "policy.json")]) == 2
    assert "file.writeText: denied: the policy does not set 'write'" in capsys.readouterr().err
