"""syntra author: YAML capsule specs to capsule directories, and Engine.install_dir."""

import json
import random
import textwrap
from pathlib import Path

import pytest

from syntra import Engine
from syntra.authoring import AuthoringError, author
from syntra.errors import InvalidContext
from syntra.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = sorted(p.name for p in EXAMPLES.iterdir() if (p / "capsule.yaml").is_file())

SPEC = """
name: tiers
version: 2
options: [small, large]
program: |
  ($ words (!cap "json.len" (!cap "runtime.inputGet" "prompt")))
  (!cap "runtime.publish" "words" words)
  (choice (A "small" words) (A "large" words))
reward: {type: continuous, range: [0, 10]}
algorithm: ucb
settings: {exploration: 1.5}
contextSpec: {kind: discrete, key: user.tier}
limits: {max_steps: 10000}
"""


def write_spec(directory, text=SPEC):
    path = directory / "capsule.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_author_writes_a_directory_that_installs_and_decides(tmp_path):
    manifest = author(write_spec(tmp_path), tmp_path / "out")
    assert manifest["options"] == ["small", "large"] and manifest["version"] == "2"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "learning.json", "manifest.json", "program.lyc", "program.lycs", "reward_spec.json"]
    assert json.loads((tmp_path / "out" / "reward_spec.json").read_text()) == {"type": "continuous", "range": [0, 10]}
    engine = Engine.memory(seed=1)
    cap = engine.install_dir("tenants/t/jobs/j/capsules/tiers", tmp_path / "out")
    assert cap.algorithm == "ucb1" and cap.settings == {"exploration": 1.5}
    d = cap.decide(input={"prompt": "a b c", "user": {"tier": "gold"}})
    assert d.context_key == "gold" and d.value == [d.option, 5] and d.published == {"words": 5}
    cap.feedback(d.decision_id, 7.5)
    assert cap.report()["contexts"]["gold"]["pulls"][d.option] == 1


@pytest.mark.parametrize("change, path, message", [
    ("options: [small, small]", "options[1]", "repeats 'small'"),
    ("options: [only]", "options", "list of 2 to"),
    ("reward: {type: continuous, range: [0, high]}", "reward.range[1]", "must be a finite number"),
    ("reward: {type: continuous, range: [5, 1]}", "reward.range", "low < high"),
    ("reward: {type: sometimes}", "reward.type", "bernoulli, continuous or sparse"),
    ("reward: {type: sparse}", "reward.range", "must be \\[low, high\\]"),
    ("reward: {type: bernoulli, components: [{name: cost, weight: 0, normalize: budget, budget: 5}]}",
     "reward.components[0].weight", "positive number"),
    ("reward: {type: bernoulli, components: [{name: x, weight: 1, normalize: minmax}]}",
     "reward.components[0].range", "must be \\[low, high\\]"),
    ("reward: {type: bernoulli, components: [{name: x, weight: 1, normalize: zscore}]}",
     "reward.components[0].normalize", "minmax or budget"),
    ("learning: {min_exploration: 1.5}", "learning.min_exploration", "in \\[0, 1\\)"),
    ("learning: {warmup: 3}", "learning", "must be {min_exploration}"),
    ("contextSpec: {kind: features, features: [{name: hour, type: cyclic, period: -24}]}",
     "contextSpec.features[0].period", "positive number"),
    ("contextSpec: {kind: features, features: [{name: plan, type: categorical, values: [a, a]}]}",
     "contextSpec.features[0].values", "distinct strings"),
    ("contextSpec: {kind: features, features: [{name: x, type: vector}]}",
     "contextSpec.features[0].type", "continuous, cyclic, categorical or boolean"),
    ("algorithm: magic", "algorithm", "must be one of"),
    ("contextSpec: {kind: embedding}", "contextSpec.kind", "must be 'discrete'"),
    ("contextSpec: {kind: discrete, key: '../x'}", "contextSpec.key", "dot path"),
    ("limits: {max_steps: 0}", "limits", "must be a positive number"),
    ("colour: red", "colour", "unknown field"),
    ("name: 'two words'", "name", "must be 1-128"),
])
def test_a_bad_field_is_named_by_its_yaml_path(tmp_path, change, path, message):
    key = change.split(":")[0]
    lines = [line for line in SPEC.splitlines() if not line.startswith(key + ":")]
    spec = write_spec(tmp_path, "\n".join(lines) + "\n" + change + "\n")
    with pytest.raises(AuthoringError, match=message) as raised:
        author(spec, tmp_path / "out")
    assert raised.value.path == path
    assert not (tmp_path / "out").exists()


def test_the_program_must_fit_the_options(tmp_path):
    spec = write_spec(tmp_path, SPEC.replace('(choice (A "small" words) (A "large" words))', "(choice 1 2 3)"))
    with pytest.raises(AuthoringError, match="one choice node with 2 options") as raised:
        author(spec, tmp_path / "out")
    assert raised.value.path == "program"
    broken = write_spec(tmp_path, SPEC.replace("(choice", "(choice (("))
    with pytest.raises(AuthoringError) as raised:
        author(broken, tmp_path / "out")
    assert raised.value.path == "program"


def test_a_tampered_directory_is_refused(tmp_path):
    author(write_spec(tmp_path), tmp_path / "out")
    learning = tmp_path / "out" / "learning.json"
    learning.write_text(learning.read_text().replace("ucb1", "thompson"))
    with pytest.raises(AuthoringError, match="does not match the manifest") as raised:
        Engine.memory().install_dir("tenants/t/jobs/j/capsules/tiers", tmp_path / "out")
    assert raised.value.path == "learning.json"


def test_a_policy_beside_the_spec_goes_with_the_capsule(tmp_path):
    spec = write_spec(tmp_path, SPEC.replace('($ words', '($ note (!cap "file.readText" "note.txt"))\n  ($ words'))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "note.txt").write_text("hi")
    (tmp_path / "policy.json").write_text(json.dumps({"root": str(tmp_path / "data"), "read": True}))
    author(spec, tmp_path / "out")
    cap = Engine.memory().install_dir("tenants/t/jobs/j/capsules/tiers", tmp_path / "out")
    assert cap.decide(input={"prompt": "x", "user": {"tier": "free"}}).published == {"words": 1}


def test_the_command_line(tmp_path, capsys):
    assert main(["author", str(write_spec(tmp_path)), "--out-dir", str(tmp_path / "out")]) == 0
    assert "wrote tiers 2 (2 options)" in capsys.readouterr().out
    bad = write_spec(tmp_path, SPEC + "algorithm: magic\n")
    assert main(["author", str(bad), "--out-dir", str(tmp_path / "out2")]) == 2
    assert "algorithm: must be one of" in capsys.readouterr().err


@pytest.mark.parametrize("name", NAMES)
def test_each_example_authors_installs_and_learns(tmp_path, name):
    """Every example's capsule.yaml builds; its committed learning.json is what the build
    writes; and the capsule, installed from the directory, takes its context from the
    input its contextSpec names."""
    assert len(NAMES) == 5
    manifest = author(EXAMPLES / name / "capsule.yaml", tmp_path / name)
    assert (tmp_path / name / "learning.json").read_text() == (EXAMPLES / name / "learning.json").read_text()
    key = json.loads((EXAMPLES / name / "learning.json").read_text())["contextSpec"]["key"]
    engine = Engine.open(tmp_path / "store", seed=5)
    cap = engine.install_dir(f"tenants/examples/jobs/demo/capsules/{name}", tmp_path / name)
    assert list(cap.options) == manifest["options"]
    rng = random.Random(name)
    inputs = json.loads((EXAMPLES / name / "sample_input.json").read_text())
    for _ in range(20):
        d = cap.decide(input={**inputs, key: rng.choice(["a", "b"])})
        assert d.context_key in ("a", "b") and d.option in manifest["options"]
        cap.feedback(d.decision_id, float(rng.random() < 0.5))
    engine.close()


def test_the_policy_is_under_the_manifest_too(tmp_path):
    (tmp_path / "policy.json").write_text(json.dumps({"hosts": ["api.example.com"]}))
    author(write_spec(tmp_path), tmp_path / "out")
    assert "policy.json" in json.loads((tmp_path / "out" / "manifest.json").read_text())["files"]
    (tmp_path / "out" / "policy.json").write_text(json.dumps({"root": "/", "write": True}))
    with pytest.raises(AuthoringError, match="does not match") as raised:
        Engine.memory().install_dir("tenants/t/jobs/j/capsules/tiers", tmp_path / "out")
    assert raised.value.path == "policy.json"
    (tmp_path / "policy.json").unlink()
    author(write_spec(tmp_path), tmp_path / "out")        # rebuilt without a policy
    assert not (tmp_path / "out" / "policy.json").exists()
    with pytest.raises(AuthoringError, match="spec's own directory"):
        author(write_spec(tmp_path), tmp_path)


@pytest.mark.parametrize("manifest", ["[]", "{}", "not json", '{"options": ["a", "b"]}'])
def test_a_malformed_directory_is_an_authoring_error(tmp_path, manifest):
    author(write_spec(tmp_path), tmp_path / "out")
    (tmp_path / "out" / "manifest.json").write_text(manifest)
    with pytest.raises(AuthoringError):
        Engine.memory().install_dir("tenants/t/jobs/j/capsules/tiers", tmp_path / "out")


FULL = SPEC.replace("algorithm: ucb\n", "algorithm: auto\n").replace("settings: {exploration: 1.5}\n", "").replace(
    "reward: {type: continuous, range: [0, 10]}",
    "reward: {type: sparse, range: [0, 1], components: [{name: quality, weight: 0.7, normalize: minmax, "
    "range: [0, 1]}, {name: cost, weight: 0.3, normalize: budget, budget: 5000}]}").replace(
    "contextSpec: {kind: discrete, key: user.tier}",
    "learning: {min_exploration: 0.05}\ncontextSpec: {kind: features, features: [{name: load, type: continuous, "
    "range: [0, 100]}, {name: hour, type: cyclic, period: 24}, {name: plan, type: categorical, values: [free, pro]}, "
    "{name: beta, type: boolean}]}")


def test_the_full_spec_installs_and_decides_from_the_features_in_its_input(tmp_path):
    author(write_spec(tmp_path, FULL), tmp_path / "out")
    learning = json.loads((tmp_path / "out" / "learning.json").read_text())
    assert learning["algorithm"] == "auto" and learning["learning"] == {"min_exploration": 0.05}
    assert [f["type"] for f in learning["contextSpec"]["features"]] == ["continuous", "cyclic", "categorical", "boolean"]
    reward = json.loads((tmp_path / "out" / "reward_spec.json").read_text())
    assert reward["type"] == "sparse" and [c["normalize"] for c in reward["components"]] == ["minmax", "budget"]
    cap = Engine.memory(seed=2).install_dir("tenants/t/jobs/j/capsules/tiers", tmp_path / "out")
    assert cap.learning["meta"]["exploration_floor"] == 0.05   # the legacy floor, carried over
    assert cap.lifecycle == "warmup" and cap.reward.kind == "sparse"
    features = {"load": 40, "hour": 6, "plan": "pro", "beta": False}
    d = cap.decide(input={"prompt": "a b", **features})
    assert d.option in ("small", "large") and d.value == [d.option, 3]   # len("a b")
    # The reward comes from its components: quality 0.5 (minmax over [0, 1]) and a cost of
    # 2500 against a budget of 5000 (0.5): 0.7 * 0.5 + 0.3 * 0.5.
    cap.feedback(d.decision_id, components={"quality": 0.5, "cost": 2500})
    pulls = sum(sum(c["pulls"].values()) for c in cap.report()["contexts"].values())
    assert pulls == 1
    sums = [float(cap._learner.table.reward_sums(k).sum()) for k in cap._learner.table.contexts]
    assert sum(sums) == pytest.approx(0.5)
    with pytest.raises(InvalidContext, match="hour"):
        cap.decide(input={"prompt": "a", "load": 1, "plan": "pro", "beta": True})
