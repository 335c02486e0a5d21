"""Operator changes to an installed capsule, and what it tells about itself.

* ``update_reward_spec``: the same reward type and range keep what was learned (a new
  spec's components and weights apply from the next feedback); another type or range
  starts the statistics afresh. Pending decisions keep waiting, their feedback checked
  against the new spec.
* ``update_policy``: a program capsule's I/O policy, checked as an install checks it.
* ``contexts`` (paged, sorted by key) and ``memory`` (the learned state a checkpoint keeps).
* ``install_arguments``: a capsule YAML sent over the wire installs as its authored
  directory would.

Every change is written ahead to the WAL: a restart, by replay or from a checkpoint, gives
the same state bit for bit, and the same decisions as an in-memory twin that never restarted.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import numpy as np
import pytest
from syntra_core.wal import scan

import lycan
from syntra import Engine
from syntra.authoring import AuthoringError, author, install_arguments
from syntra.errors import FailedPrecondition, InvalidArgument, InvalidConfig, InvalidReward, ProgramError
from syntra.store import checkpoint as ckpt
from syntra.store.records import RecordType, decode_json
from syntra.verify import verify_store

NAME = "tenants/acme/jobs/admin/capsules/router"
OPTIONS = ["a", "b", "c"]
FAST = {"durability": "none"}
COMPONENTS = {"type": "continuous", "components": {
    "quality": {"weight": 1, "normalize": "minmax", "range": [0, 10]},
    "latency_ms": {"weight": 1, "normalize": "budget", "budget": 100},
}}
# Full quality (score 1) at the whole latency budget (score 0).
OUTCOME = {"quality": 10, "latency_ms": 100}


def records(path, rtype):
    return [decode_json(r.payload, r.rtype) for r in scan(path / "wal") if r.rtype == rtype]


def total(cap, context="k"):
    """(rewards counted, their sum) over every option of ``context``."""
    table = cap._learner.table
    return int(table.pulls(context).sum()), float(table.reward_sums(context).sum())


# --- update_reward_spec ----------------------------------------------------------------------


def test_same_type_and_range_keeps_the_statistics_and_applies_the_new_weights():
    cap = Engine.memory(seed=1).install(NAME, options=OPTIONS, reward=COMPONENTS)
    first, waiting = cap.decide("k"), cap.decide("k")
    cap.feedback(first.decision_id, components=OUTCOME)              # (1*1 + 1*0) / 2
    assert total(cap) == (1, 0.5)
    heavier = {**COMPONENTS, "components": {**COMPONENTS["components"],
                                            "quality": {"weight": 3, "normalize": "minmax", "range": [0, 10]}}}
    cap.update_reward_spec(heavier)
    assert cap.reward.components[0].weight == 3.0 and cap.config["reward"]["components"]["quality"]["weight"] == 3.0
    # Kept: the earlier reward is still counted. The waiting decision gets the new weights.
    cap.feedback(waiting.decision_id, components=OUTCOME)            # (3*1 + 1*0) / 4
    assert total(cap) == (2, 1.25)


def test_another_range_starts_afresh_and_checks_pending_feedback_against_the_new_spec():
    engine = Engine.memory(seed=2)
    cap = engine.install(NAME, options=OPTIONS, learning={"warmup": {"feedbacks": 5}})
    world = random.Random(1)
    for _ in range(12):
        d = cap.decide("k")
        cap.feedback(d.decision_id, float(world.random() < 0.5))
    waiting = cap.decide("k")
    assert cap.lifecycle == "active" and total(cap)[0] == 12
    before = set(cap.report()["candidates"])

    cap.update_reward_spec({"type": "continuous", "range": [0, 10]})
    report = cap.report()
    assert report["lifecycle"] == "warmup" and report["warmup_remaining"] == 5
    assert total(cap) == (0, 0.0) and report["contexts"]["k"]["best_option"] is None
    # The candidates are the continuous reward's now (gaussian Thompson sampling, not Beta).
    assert before == {"thompson", "greedy", "epsilon_greedy"}
    assert set(report["candidates"]) == {"gaussian_thompson", "greedy", "epsilon_greedy"}
    assert cap.is_pending(waiting.decision_id)
    with pytest.raises(InvalidReward, match=r"outside the range \[0.0, 10.0\]"):
        cap.feedback(waiting.decision_id, 10.5)
    cap.feedback(waiting.decision_id, 7.5)                           # refused under [0, 1]
    assert total(cap) == (1, 7.5) and cap.pending == 0


def test_a_reset_drops_signals_sent_in_the_old_units(tmp_path):
    engine = Engine.open(tmp_path, seed=3, **FAST)
    signals = {"feedback": {"signals": {"clicked": {"weight": 1}, "rated": {"weight": 1}}, "fusion": "min"}}
    cap = engine.install(NAME, options=OPTIONS, reward={"type": "continuous", "range": [0, 1]}, learning=signals)
    d = cap.decide("k")
    cap.feedback(d.decision_id, 1.0, signal="clicked")
    cap.update_reward_spec({"type": "continuous", "range": [0, 10]})
    cap.feedback(d.decision_id, 5.0, signal="rated")                 # "clicked" must come again
    assert total(cap) == (0, 0.0) and cap.is_pending(d.decision_id)
    cap.feedback(d.decision_id, 10.0, signal="clicked")              # min(1.0, 0.5) of [0, 10]
    assert total(cap) == (1, 5.0) and not cap.is_pending(d.decision_id)
    digest = engine.state_digest()
    engine.close(checkpoint=False)
    engine = Engine.open(tmp_path, **FAST)
    assert engine.state_digest() == digest
    engine.close()


def test_a_plain_rule_starts_afresh_too_and_replays(tmp_path):
    engine = Engine.open(tmp_path, seed=3, **FAST)
    cap = engine.install(NAME, options=OPTIONS)                     # thompson, no learning config
    for _ in range(300):   # "a" always pays, the others never: the rule settles on it
        d = cap.decide("k")
        cap.feedback(d.decision_id, float(d.option == "a"))
    assert [cap.decide("k").option for _ in range(50)].count("a") >= 45
    waiting = cap.decide("k")
    cap.update_reward_spec({"type": "continuous", "range": [0, 10]})
    assert total(cap) == (0, 0.0) and cap.lifecycle == "active"
    # Fresh statistics: the rule explores every option again.
    assert {cap.decide("k").option for _ in range(60)} == set(OPTIONS)
    cap.feedback(waiting.decision_id, 9.0)
    assert total(cap) == (1, 9.0)
    digest = engine.state_digest()
    engine.close(checkpoint=False)
    engine = Engine.open(tmp_path, **FAST)
    assert engine.state_digest() == digest
    engine.close()


def test_a_reset_keeps_a_frozen_capsule_frozen():
    cap = Engine.memory(seed=2).install(NAME, options=OPTIONS, learning={"warmup": {"feedbacks": 2}})
    for _ in range(3):
        cap.feedback(cap.decide("k").decision_id, 1.0)
    cap.freeze()
    cap.update_reward_spec({"type": "sparse", "range": [0, 100]})
    assert cap.lifecycle == "frozen"
    cap.unfreeze()
    assert cap.lifecycle == "warmup"


@pytest.mark.parametrize("spec, error, message", [
    ({"type": "continuous", "range": [1, 0]}, InvalidConfig, r"reward.range"),
    ({"type": "continuous"}, InvalidConfig, r"reward.range"),
    ({"type": "gaussian"}, InvalidConfig, r"reward.type"),
    ({"type": "bernoulli", "range": [0, 1]}, InvalidConfig, r"bernoulli reward has no range"),
    ({"type": "continuous", "components": {"q": {"weight": 0, "normalize": "minmax", "range": [0, 1]}}},
     InvalidConfig, r"reward.components.q.weight"),
    ({"kind": "bernoulli"}, InvalidConfig, r"unknown fields"),
    ("bernoulli", InvalidConfig, r"must be a mapping"),
])
def test_an_invalid_reward_spec_is_refused_and_logs_nothing(tmp_path, spec, error, message):
    engine = Engine.open(tmp_path, seed=3, **FAST)
    cap = engine.install(NAME, options=OPTIONS, reward={"type": "continuous", "range": [0, 1]})
    d = cap.decide("k")
    before = engine.state_digest()
    with pytest.raises(error, match=message):
        cap.update_reward_spec(spec)
    assert engine.state_digest() == before and records(tmp_path, RecordType.LEARNING) == []
    cap.feedback(d.decision_id, 0.25)
    engine.close()


def test_a_spec_the_learning_config_does_not_fit_is_refused():
    cap = Engine.memory().install(NAME, options=OPTIONS, reward={"type": "continuous", "range": [0, 1]},
                                  learning={"feedback": {"reward_wait_seconds": 60, "default_reward": 0.5}})
    with pytest.raises(InvalidConfig, match="feedback.default_reward"):
        cap.update_reward_spec({"type": "bernoulli"})
    with pytest.raises(InvalidConfig, match="feedback.default_reward"):
        cap.update_reward_spec({"type": "continuous", "range": [1, 2]})
    assert cap.config["reward"] == {"type": "continuous", "range": [0.0, 1.0]}


def workload(engine, steps=(40, 30, 30)):
    """Decisions and feedback around three updates (kept, reset, reset while frozen);
    returns every decision as (option, propensity, refusal)."""
    cap = engine.install(NAME, options=OPTIONS, learning={"warmup": {"feedbacks": 10}})
    world = random.Random(7)
    seen = []

    def play(n, reward):
        for _ in range(n):
            d = cap.decide(world.choice(["k", "j"]))
            seen.append((d.option, d.propensity, d.refusal))
            if world.random() < 0.8:
                cap.feedback(d.decision_id, reward(d))

    play(steps[0], lambda d: float(world.random() < 0.3 + 0.2 * d.option_index))
    cap.update_reward_spec({"type": "bernoulli"})                            # kept
    play(steps[1], lambda d: float(world.random() < 0.6))
    cap.update_reward_spec({"type": "continuous", "range": [-1, 1]})         # reset
    play(steps[2], lambda d: world.uniform(-1, 1))
    cap.freeze()
    cap.update_reward_spec({"type": "continuous", "range": [0, 5]})          # reset, frozen
    cap.unfreeze()
    return cap, seen


@pytest.mark.parametrize("checkpoint", [False, True], ids=["replay", "checkpoint"])
def test_reward_spec_updates_survive_a_restart_and_match_an_in_memory_twin(tmp_path, checkpoint):
    engine = Engine.open(tmp_path, seed=8, **FAST)
    cap, durable = workload(engine)
    twin, reference = workload(Engine.memory(seed=8))
    assert durable == reference
    digest, report = engine.state_digest(), cap.report()
    assert report == {**twin.report(), "name": NAME}
    engine.close(checkpoint=checkpoint)

    engine = Engine.open(tmp_path, **FAST)
    cap = engine.capsule(NAME)
    assert engine.state_digest() == digest and cap.report() == report
    assert cap.config["reward"] == {"type": "continuous", "range": [0.0, 5.0]}
    world = random.Random(3)
    for _ in range(30):   # the restarted capsule decides exactly as the twin does
        key = world.choice(["k", "j"])
        reward = world.uniform(0, 5)
        d, t = cap.decide(key), twin.decide(key)
        assert (d.option, d.propensity) == (t.option, t.propensity)
        cap.feedback(d.decision_id, reward)
        twin.feedback(t.decision_id, reward)
    engine.close()
    assert verify_store(tmp_path).ok


def test_the_audit_trail_says_whether_statistics_were_kept(tmp_path):
    engine = Engine.open(tmp_path, seed=8, **FAST)
    workload(engine)
    engine.close()
    updates = [(b["statistics"], b["reward"]) for b in records(tmp_path, RecordType.LEARNING)
               if b["action"] == "update_reward_spec"]
    assert updates == [("kept", {"type": "bernoulli"}),
                       ("reset", {"type": "continuous", "range": [-1.0, 1.0]}),
                       ("reset", {"type": "continuous", "range": [0.0, 5.0]})]
    resets = [b["details"] for b in records(tmp_path, RecordType.AUDIT) if b["details"]["event"] == "reward_reset"]
    assert [(e["from"], e["to"]) for e in resets] == [("active", "warmup"), ("frozen", "frozen")]


# --- update_policy ---------------------------------------------------------------------------

READER = lycan.compile_bytes('''
($ text (!cap "file.readText" "limits.txt"))
(!cap "runtime.publish" "limits" text)
(choice 1 2)
''')


def test_update_policy_needs_a_program():
    cap = Engine.memory().install(NAME, options=OPTIONS)
    with pytest.raises(FailedPrecondition, match="runs no program"):
        cap.update_policy({"read": True})


def test_a_new_policy_applies_is_logged_and_replayed(tmp_path):
    engine = Engine.open(tmp_path, seed=1, **FAST)
    cap = engine.install(NAME, options=["x", "y"], lyc=READER)
    with pytest.raises(ProgramError, match="denied"):
        cap.decide("eu")
    cap.update_policy({"root": "files", "read": True})
    sandbox = tmp_path / "sandboxes" / "acme" / "admin" / "router" / "files"
    (sandbox / "limits.txt").write_text("40")
    assert cap.decide("eu").published == {"limits": "40"}
    assert cap.config["program"]["policy"] == {"root": "files", "read": True}
    engine.close(checkpoint=False)

    engine = Engine.open(tmp_path, **FAST)                # replayed: the new policy holds
    cap = engine.capsule(NAME)
    assert cap.decide("eu").published == {"limits": "40"}
    cap.update_policy(None)                               # back to refusing every I/O
    with pytest.raises(ProgramError, match="denied"):
        cap.decide("eu")
    engine.close()
    engine = Engine.open(tmp_path, **FAST)                # from the checkpoint
    with pytest.raises(ProgramError, match="denied"):
        engine.capsule(NAME).decide("eu")
    assert "policy" not in engine.capsule(NAME).config["program"]
    engine.close()
    actions = [(b["action"], b["policy"]) for b in records(tmp_path, RecordType.LEARNING)]
    assert actions == [("update_policy", {"root": "files", "read": True}), ("update_policy", None)]


@pytest.mark.parametrize("policy, message", [
    ({"root": "../../elsewhere", "read": True}, "leaves the capsule's sandbox"),
    ({"root": "files", "colour": "red"}, "unknown field"),
    ({"write": "yes"}, "policy field 'write'"),
    ({"read": {1, 2}}, "must be JSON data"),
    (["read"], "must be a mapping"),
])
def test_an_invalid_policy_is_refused_as_at_install(tmp_path, policy, message):
    engine = Engine.open(tmp_path, seed=1, **FAST)
    cap = engine.install(NAME, options=["x", "y"], lyc=READER, policy={"root": "files", "read": True})
    with pytest.raises(InvalidConfig, match=message):
        cap.update_policy(policy)
    assert cap.config["program"]["policy"] == {"root": "files", "read": True}
    assert records(tmp_path, RecordType.LEARNING) == []
    engine.close()


# --- contexts and memory ---------------------------------------------------------------------


def teach(cap, plays):
    """``plays``: (context, option index chosen by the test, reward) triples."""
    for key, _, reward in plays:
        cap.feedback(cap.decide(key).decision_id, reward)


def test_contexts_page_through_every_context_in_key_order_as_the_report_counts():
    cap = Engine.memory(seed=4).install(NAME, options=OPTIONS, reward={"type": "continuous", "range": [0, 1]})
    keys = ["b", "a", "c", "aa", "é", "B"]
    world = random.Random(2)
    for _ in range(60):
        cap.feedback(cap.decide(world.choice(keys)).decision_id, round(world.random(), 3))
    cap.decide("unrewarded")
    report = cap.report()["contexts"]

    pages, after = [], None
    while True:
        page = cap.contexts(start_after=after, limit=4)
        if not page:
            break
        pages.append([entry["key"] for entry in page])
        after = page[-1]["key"]
    assert pages == [["B", "a", "aa", "b"], ["c", "unrewarded", "é"]]
    for entry in cap.contexts(limit=100):
        expected = report[entry["key"]]
        assert [o["option"] for o in entry["options"]] == OPTIONS
        assert {o["option"]: o["pulls"] for o in entry["options"]} == expected["pulls"]
        assert {o["option"]: o["mean_reward"] for o in entry["options"]} == expected["mean_reward"]
        assert entry["best_option"] == expected["best_option"]
    unrewarded = cap.contexts(start_after="c", limit=1)[0]
    assert unrewarded["key"] == "unrewarded" and unrewarded["best_option"] is None
    assert all(o["mean_reward"] is None and o["pulls"] == 0 for o in unrewarded["options"])
    assert [e["key"] for e in cap.contexts(start_after="ab", limit=2)] == ["b", "c"]


@pytest.mark.parametrize("kwargs, field", [
    ({"limit": 0}, "limit"), ({"limit": 10_001}, "limit"), ({"limit": True}, "limit"), ({"limit": 2.0}, "limit"),
    ({"start_after": 5}, "start_after"), ({"start_after": b"a"}, "start_after"),
])
def test_contexts_refuse_bad_paging(kwargs, field):
    cap = Engine.memory().install(NAME, options=OPTIONS)
    with pytest.raises(InvalidArgument) as raised:
        cap.contexts(**kwargs)
    assert raised.value.field == field


ARM_STATS = np.dtype([("pulls", "<i8"), ("reward_sum", "<f8"), ("reward_sq", "<f8")])


def test_memory_is_the_learned_state_a_checkpoint_keeps(tmp_path):
    engine = Engine.open(tmp_path, seed=5, **FAST)
    cap = engine.install(NAME, options=OPTIONS, learning={"warmup": {"feedbacks": 3}})
    empty = cap.memory()
    assert (empty["contexts"], empty["pending"]) == (0, 0)
    world = random.Random(4)
    for _ in range(30):
        d = cap.decide(world.choice(["k", "j", "m"]))
        if world.random() < 0.7:
            cap.feedback(d.decision_id, float(world.random() < 0.5))
    memory = cap.memory()
    assert memory["contexts"] == 3 and memory["pending"] == cap.pending > 0
    assert memory["state_bytes"] > empty["state_bytes"]
    text = json.dumps(memory["state"], allow_nan=False)   # plain JSON, as GetMemory sends it
    assert memory["state_bytes"] >= len(base64.b64decode(memory["state"]["state"]["table"]["stats"]))

    # The per-arm statistics, decoded from the base64, are what the report counts.
    table = memory["state"]["state"]["table"]
    stats = np.frombuffer(base64.b64decode(table["stats"]), dtype=ARM_STATS).reshape(-1, len(OPTIONS))
    report = cap.report()["contexts"]
    for row, key in enumerate(table["contexts"]):
        assert stats["pulls"][row].tolist() == [report[key]["pulls"][o] for o in OPTIONS]

    # And the whole of it is what a checkpoint holds for the capsule, beside its config.
    path = engine.checkpoint()
    entry = ckpt.read_checkpoint(path).capsules[0]
    assert set(entry) - {"config"} == set(memory["state"])
    assert json.loads(text)["state"]["ledger"] == base64.b64encode(entry["state"]["ledger"]).decode()
    assert json.loads(text)["policy"]["pending"] == json.loads(json.dumps(entry["policy"]["pending"]))
    engine.close()


# --- a YAML spec over the wire -------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_NAMES = sorted(p.parent.name for p in EXAMPLES.glob("*/capsule.yaml"))
# What two installs of one capsule under different names differ in.
IDENTITY = {"uid", "name", "seed", "tag", "install"}


def inlined(example: str) -> str:
    """The example's capsule.yaml with its program_file replaced by the program, inline."""
    spec = (EXAMPLES / example / "capsule.yaml").read_text()
    source = (EXAMPLES / example / "program.lycs").read_text()
    block = "program: |\n" + "".join(f"  {line}\n" for line in source.splitlines())
    assert spec.count("program_file: program.lycs\n") == 1
    return spec.replace("program_file: program.lycs\n", block)


@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_each_example_installs_from_its_yaml_as_from_its_authored_directory(tmp_path, example):
    assert len(EXAMPLE_NAMES) == 5
    name, arguments = install_arguments(inlined(example))
    assert name == example and "policy" not in arguments
    engine = Engine.memory(seed=5)
    cap = engine.install(f"tenants/examples/jobs/wire/capsules/{name}", **arguments)
    author(EXAMPLES / example / "capsule.yaml", tmp_path / "out")
    authored = engine.install_dir("tenants/examples/jobs/dir/capsules/main", tmp_path / "out")
    strip = lambda config: {k: v for k, v in config.items() if k not in IDENTITY}
    assert strip(cap.config) == strip(authored.config)
    inputs = json.loads((EXAMPLES / example / "sample_input.json").read_text())
    key = cap.learning["contextSpec"]["key"]
    d = cap.decide(input={**inputs, key: "a"})
    assert d.context_key == "a" and d.option in cap.options
    cap.feedback(d.decision_id, 1.0)


def test_a_yaml_spec_carries_the_policy_it_is_sent_with():
    policy = {"root": "/srv/limits", "read": True}
    _, arguments = install_arguments(inlined("llm-routing"), policy=policy)
    assert arguments["policy"] == policy


@pytest.mark.parametrize("text, path, message", [
    ((EXAMPLES / "llm-routing" / "capsule.yaml").read_text(), "program_file", "inline"),
    ("name: x\n  bad: [", "", "not valid YAML"),
    ("- a\n- b\n", "", "mapping of fields"),
    ("name: x\ncolour: red\n", "colour", "unknown field"),
    ("name: x\noptions: [a, b]\nprogram: '(choice 1 2)'\nsettings: {samples: [1, 2]}\n", "settings.samples",
     "must be a number"),
    ("name: x\noptions: [a, b]\nprogram: '(choice 1 2 3)'\n", "program", "one choice node with 2"),
    (b"name: x", "", "must be YAML text"),
])
def test_a_bad_yaml_spec_names_the_field(text, path, message):
    with pytest.raises(AuthoringError, match=message) as raised:
        install_arguments(text)
    assert raised.value.path == path
