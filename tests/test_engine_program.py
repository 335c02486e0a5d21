"""Program capsules: the engine runs a Lycan program and decides at its choice node."""

import json

import lycan
import pytest
from syntra_core.wal import scan

from syntra import Engine
from syntra.errors import InvalidConfig, InvalidContext, ProgramError
from syntra.store.records import RecordType, DecisionRecord

NAME = "tenants/acme/jobs/fleet/capsules/autoscale"
# Scale to the recommendation, or hold at the current size; publishes what it computed.
AUTOSCALE = lycan.compile_bytes('''
($ history (!cap "runtime.inputGet" "load"))
($ forecast (!cap "series.ewmaForecast" history 0.5))
(!cap "runtime.publish" "forecast" forecast)
(!p "forecast" forecast)
(choice
  (!cap "runtime.inputGet" "current")
  (!cap "ops.autoScaleRecommend" forecast 25 1 40))
''')
OPTIONS = ["hold", "recommend"]
INPUT = {"load": [100, 200, 300], "current": 4}


def install(engine, lyc=AUTOSCALE, options=OPTIONS, **kwargs):
    return engine.install(NAME, options=options, lyc=lyc, **kwargs)


def test_a_decision_carries_what_the_program_computed():
    cap = install(Engine.memory(seed=3))
    seen = set()
    for _ in range(40):
        d = cap.decide("eu", input=INPUT)
        # forecast: 100, then 150, then 225; ceil(225 / 25) = 9 instances.
        assert d.value == {"hold": 4, "recommend": 9}[d.option]
        assert d.published == {"forecast": 225.0}
        assert d.stdout == "forecast 225.0\n"
        assert json.loads(d.result_json) == {"result": d.value, "published": d.published, "stdout": d.stdout}
        cap.feedback(d.decision_id, float(d.option == "recommend"))
        seen.add(d.option)
    assert seen == set(OPTIONS)
    assert cap.report()["contexts"]["eu"]["pulls"]["recommend"] > 20


@pytest.mark.parametrize("source, options, limits, message", [
    ('(choice 1 2 3)', OPTIONS, None, "choice node has 3 options, the capsule names 2"),
    ('(choice 1 2) (choice 3 4)', OPTIONS, None, "exactly one choice node, this one has 2"),
    ('(+ 1 2)', OPTIONS, None, "exactly one choice node, this one has 0"),
    ('(choice 1 2)', OPTIONS, {"max_steps": -1}, "max_steps must be a positive number"),
    ('(choice 1 2)', OPTIONS, {"max_fun": 3}, "limits must map some of"),
])
def test_install_checks_the_program(source, options, limits, message):
    engine = Engine.memory()
    with pytest.raises(InvalidConfig, match=message):
        install(engine, lycan.compile_bytes(source), options, limits=limits)
    assert NAME not in engine


def test_install_refuses_bytes_that_are_not_a_program():
    engine = Engine.memory()
    blob = bytearray(AUTOSCALE)
    blob[-1] ^= 0xFF
    for bad in (b"", b"not a program", bytes(blob), "text"):
        with pytest.raises(InvalidConfig):
            install(engine, bad)
    with pytest.raises(InvalidConfig, match="need lyc"):
        engine.install(NAME, options=OPTIONS, limits={"max_steps": 10})


def test_a_failure_before_the_choice_decides_nothing():
    cap = install(Engine.memory())
    with pytest.raises(ProgramError, match="ewmaForecast: argument .values.") as raised:
        cap.decide("eu", input={"current": 4})       # no "load": the EWMA has nothing to read
    assert isinstance(raised.value.cause, lycan.LycanError)
    assert (cap.decisions, cap.pending) == (0, 0)


def test_a_limit_stops_a_runaway_program():
    cap = install(Engine.memory(), lycan.compile_bytes('(W true 1) (choice 1 2)'))
    with pytest.raises(ProgramError) as raised:
        cap.decide("eu")
    assert isinstance(raised.value.cause, lycan.LimitExceeded)
    assert cap.decisions == 0


def test_a_failure_after_the_choice_becomes_a_logged_refusal(tmp_path):
    engine = Engine.open(tmp_path, seed=1)
    cap = install(engine, lycan.compile_bytes('($ x (choice 1 0)) (/ 10 x)'), ["one", "zero"])
    outcomes = []
    for _ in range(30):
        try:
            d = cap.decide("eu")
            outcomes.append(d.option)
            cap.feedback(d.decision_id, 1.0)
        except ProgramError as error:
            assert "division by zero" in str(error)
            outcomes.append("refused")
    assert "refused" in outcomes and "one" in outcomes
    assert cap.decisions == 30 and cap.pending == 0
    digest = engine.state_digest()
    engine.close(checkpoint=False)
    engine = Engine.open(tmp_path)
    assert engine.state_digest() == digest
    records = [DecisionRecord.decode(r.payload) for r in scan(tmp_path / "wal") if r.rtype == RecordType.DECISION]
    assert sum(r.option_index == 0xFFFF for r in records) == outcomes.count("refused")
    assert all(json.loads(r.result)["result"] == 10.0 for r in records if r.option_index == 0)
    engine.close()


def test_the_choice_node_runs_once_per_decision():
    cap = install(Engine.memory(), lycan.compile_bytes('(# 2 (choice 1 2))'))
    with pytest.raises(ProgramError, match="second time"):
        cap.decide("eu")
    assert (cap.decisions, cap.pending) == (1, 0)


def test_a_budget_refusal_stops_the_program():
    engine = Engine.memory()
    engine.budget.open_account("fleet", 50)
    cap = install(engine, budget={"account": "fleet", "costs": {"hold": 40, "recommend": 40}})
    first, second = cap.decide("eu", input=INPUT), cap.decide("eu", input=INPUT)
    assert not first.refused and first.value in (4, 9)
    assert second.refused and second.value is None and second.refusal == "budget: insufficient_funds"


def test_results_survive_in_the_log_and_replay(tmp_path):
    engine = Engine.open(tmp_path, seed=2)
    cap = install(engine)
    made = [cap.decide("eu", input=INPUT) for _ in range(5)]
    engine.close(checkpoint=False)
    logged = [DecisionRecord.decode(r.payload) for r in scan(tmp_path / "wal") if r.rtype == RecordType.DECISION]
    assert [r.result for r in logged] == [d.result_json for d in made]
    engine = Engine.open(tmp_path)
    assert engine.capsule(NAME).pending == 5
    engine.close()


def test_a_plain_capsule_takes_no_input():
    cap = Engine.memory().install(NAME, options=OPTIONS)
    with pytest.raises(InvalidContext, match="no program"):
        cap.decide("eu", input={"x": 1})


READER = lycan.compile_bytes('''
($ text (!cap "file.readText" "limits.txt"))
(!cap "runtime.publish" "limits" text)
(choice 1 2)
''')


def test_io_is_refused_without_a_policy():
    cap = install(Engine.memory(), READER)
    with pytest.raises(ProgramError, match="denied") as raised:
        cap.decide("eu")
    assert isinstance(raised.value.cause, lycan.CapabilityError)
    assert cap.decisions == 0


def test_a_policy_grants_reads_in_the_capsules_own_sandbox(tmp_path):
    engine = Engine.open(tmp_path, seed=1)
    install(engine, READER, policy={"root": "files", "read": True})
    sandbox = tmp_path / "sandboxes" / "acme" / "fleet" / "autoscale" / "files"
    assert sandbox.is_dir()                       # created at install
    (sandbox / "limits.txt").write_text("max 40 instances")
    assert engine.capsule(NAME).decide("eu").published == {"limits": "max 40 instances"}
    engine.close()
    engine = Engine.open(tmp_path)                # the policy comes back with the capsule
    assert engine.capsule(NAME).decide("eu").published == {"limits": "max 40 instances"}
    engine.close()


@pytest.mark.parametrize("policy, message", [
    ({"root": "../../elsewhere", "read": True}, "leaves the capsule's sandbox"),
    ({"root": "files", "colour": "red"}, "unknown field"),
    ({"write": "yes"}, "policy field 'write'"),
])
def test_a_bad_policy_is_refused_at_install(tmp_path, policy, message):
    engine = Engine.open(tmp_path, seed=1)
    with pytest.raises(InvalidConfig, match=message):
        install(engine, READER, policy=policy)
    assert NAME not in engine
    engine.close()


def test_an_in_memory_engine_needs_an_absolute_root(tmp_path):
    with pytest.raises(InvalidConfig, match="must be absolute"):
        install(Engine.memory(), READER, policy={"root": "files", "read": True})
    (tmp_path / "limits.txt").write_text("7")
    cap = install(Engine.memory(), READER, policy={"root": str(tmp_path), "read": True})
    assert cap.decide("eu").published == {"limits": "7"}


def test_a_context_taken_from_the_input_is_logged_and_replayed(tmp_path):
    engine = Engine.open(tmp_path, seed=4)
    cap = install(engine, context={"kind": "discrete", "key": "region"})
    for region in ["eu", "us", "eu", "ap"] * 5:
        d = cap.decide(input={**INPUT, "region": region})
        assert d.context_key == region
        cap.feedback(d.decision_id, float(d.option == "recommend"))
    with pytest.raises(InvalidContext, match="region"):
        cap.decide(input=INPUT)
    digest, contexts = engine.state_digest(), sorted(cap.report()["contexts"])
    engine.close(checkpoint=False)
    engine = Engine.open(tmp_path)
    assert engine.state_digest() == digest
    assert sorted(engine.capsule(NAME).report()["contexts"]) == contexts == ["ap", "eu", "us"]
    engine.close()


def test_any_failure_after_the_choice_is_a_refusal_even_an_os_error(tmp_path):
    engine = Engine.open(tmp_path, seed=4)
    after = lycan.compile_bytes('($ x (choice 1 2)) (!cap "file.exists" "a.txt")')
    cap = install(engine, after, policy={"root": "files", "read": True})
    assert cap.decide("eu").value is False                # the sandbox is there: it runs
    sandbox = tmp_path / "sandboxes" / "acme" / "fleet" / "autoscale" / "files"
    sandbox.rmdir()                                       # now the kernel cannot open it
    with pytest.raises(ProgramError):
        cap.decide("eu")
    assert cap.pending == 1                               # only the first, which succeeded
    digest = engine.state_digest()
    engine.close(checkpoint=False)
    sandbox.mkdir()
    engine = Engine.open(tmp_path)
    assert engine.state_digest() == digest
    engine.close()


def test_budget_counts_match_after_a_program_fails_on_a_substitute(tmp_path):
    engine = Engine.open(tmp_path, seed=4)
    engine.budget.open_account("fleet", 10_000_000)
    failing = lycan.compile_bytes('($ x (choice 0 1)) (/ 10 x)')   # option "hold" (0) fails
    cap = install(engine, failing, budget={"account": "fleet", "costs": {"hold": 10, "recommend": 9_000_000}})
    engine.budget.reserve("fleet", 10_000_000 - 5_000_000, ttl=600)   # "recommend" no longer fits
    for _ in range(12):
        try:
            cap.decide("eu")
        except ProgramError:
            pass
    counts = cap.report()["budget"]
    assert counts["refusals"] > 0                         # the failing substitute was served
    digest = engine.state_digest()
    engine.close(checkpoint=False)
    engine = Engine.open(tmp_path)
    assert engine.capsule(NAME).report()["budget"] == counts
    assert engine.state_digest() == digest
    engine.close()


@pytest.mark.parametrize("policy, message", [
    ({"root": "/", "write": True}, "inside the capsule's sandbox"),
    ({"root": "/tmp", "read": True}, "inside the capsule's sandbox"),
])
def test_a_durable_engine_keeps_roots_inside_the_sandbox(tmp_path, policy, message):
    engine = Engine.open(tmp_path, seed=1)
    with pytest.raises(InvalidConfig, match=message):
        install(engine, READER, policy=policy)
    engine.close()


def test_a_failed_install_creates_no_sandbox(tmp_path):
    engine = Engine.open(tmp_path, seed=1)
    with pytest.raises(InvalidConfig):
        install(engine, READER, policy={"root": "files", "read": "yes"})
    with pytest.raises(InvalidConfig, match="max_seconds must be at most"):
        install(engine, READER, policy={"root": "files", "read": True}, limits={"max_seconds": float("inf")})
    assert not (tmp_path / "sandboxes").exists()
    engine.close()
