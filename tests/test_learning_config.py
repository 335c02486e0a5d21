"""learning.json: defaults, merging, every field's checks, round trips and cross-field rules."""

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syntra.errors import InvalidConfig
from syntra.learning.config import DEFAULTS, LearningConfig, continuous_options
from syntra.learning.rewards import RewardSpec

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "learning.md"

FEATURES = {"kind": "features", "features": {"load": {"type": "continuous", "range": [0, 1]}}}

# The schema as documented in the brief and docs/learning.md, written out independently.
DOCUMENTED_DEFAULTS = {
    "algorithm": "auto",
    "settings": {},
    "candidates": None,
    "meta": {"method": "exp3ix", "estimator": "snips", "weight_cap": 20.0, "exploration_floor": 0.05,
             "learning_rate": None, "prior_trials": 200},
    "warmup": {"feedbacks": 30},
    "contextSpec": {"kind": "discrete", "key": None},
    "optionFeatures": None,
    "linear": {"alpha": 1.0, "v": 0.5, "regularization": 1.0, "reinvert_every": 256, "samples": 64},
    "drift": {"enabled": True, "capsule_delta": 0.002, "context_delta": 0.002, "clock": 32, "min_window": 5,
              "grace_period": 10},
    "refusal": {"enabled": False, "coverage": 0.9, "window": 500, "min_calibration": 50,
                "max_interval_width": None, "ood_threshold": 3.0, "refuse_uncalibrated": False},
    "regimes": {"enabled": False, "metric": None, "z_threshold": 3.0, "min_samples": 30,
                "anomaly_raise_bps": 1000, "step_bps": 100, "domain": None,
                "default_floors_bps": {"support": 5500, "coding": 7200, "compliance": 9200, "security": 9200},
                "default_floor_bps": 5000, "min_floor_bps": 0, "max_floor_bps": 10000},
    "feedback": {"reward_wait_seconds": None, "default_reward": None, "signals": None, "fusion": "weighted_mean"},
    "actions": {"kind": "discrete"},
    "learning": {"min_exploration": 0.0},
    "limits": None,
}


def _plain(value):
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


# --- defaults and merging -----------------------------------------------------------------


def test_defaults_are_the_documented_schema():
    assert LearningConfig.parse(None).to_dict() == DOCUMENTED_DEFAULTS
    assert LearningConfig.parse({}) == LearningConfig.parse(None)
    assert _plain(DEFAULTS) == DOCUMENTED_DEFAULTS


def test_to_dict_is_plain_json():
    config = LearningConfig.parse({
        "algorithm": "linucb", "contextSpec": FEATURES, "optionFeatures": {"a": [1, 2], "b": [3, 4]},
        "feedback": {"signals": {"click": {"weight": 2}}}, "limits": {"max_steps": 10, "nested": {"x": [1, 2]}},
        "actions": {"kind": "hierarchical", "levels": [{"name": "m", "options": ["s", "l"]},
                                                        {"name": "e", "options": ["lo", "hi"]}]},
    })
    out = config.to_dict()
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    assert out["feedback"]["signals"] == {"click": {"weight": 2.0, "required": True}}
    assert out["limits"] == {"max_steps": 10, "nested": {"x": [1, 2]}}


def test_partial_sections_keep_their_other_defaults():
    config = LearningConfig.parse({"drift": {"capsule_delta": 0.01}, "meta": {"method": "thompson"}})
    out = config.to_dict()
    assert out["drift"] == {**DOCUMENTED_DEFAULTS["drift"], "capsule_delta": 0.01}
    assert out["meta"] == {**DOCUMENTED_DEFAULTS["meta"], "method": "thompson"}
    for section in ("warmup", "linear", "refusal", "regimes", "feedback"):
        assert out[section] == DOCUMENTED_DEFAULTS[section]
    assert config.drift.capsule_delta == 0.01 and config.drift.clock == 32
    assert config.meta.method == "thompson" and config.meta.weight_cap == 20.0


def test_null_sections_are_defaults():
    assert LearningConfig.parse({"meta": None, "contextSpec": None, "actions": None, "settings": None}) \
        == LearningConfig.parse({})


def test_open_mappings_replace_the_default_and_domain_floors_add():
    config = LearningConfig.parse({"algorithm": "ucb1", "settings": {"exploration": 2},
                                   "regimes": {"default_floors_bps": {"legal": 8000, "support": 6000}}})
    assert dict(config.settings) == {"exploration": 2} and type(config.settings["exploration"]) is int
    assert dict(config.regimes.default_floors_bps) == {
        "support": 6000, "coding": 7200, "compliance": 9200, "security": 9200, "legal": 8000}


def test_tagged_unions_merge_over_their_kind():
    features = LearningConfig.parse({"contextSpec": FEATURES}).to_dict()["contextSpec"]
    assert features == {"kind": "features", "bias": True,
                        "features": [{"name": "load", "type": "continuous", "range": [0.0, 1.0], "clip": True}]}
    assert LearningConfig.parse({"contextSpec": {"key": "user.tier"}}).context_spec.key == "user.tier"
    actions = LearningConfig.parse({"actions": {"kind": "continuous", "range": [0, 10]}}).to_dict()["actions"]
    assert actions == {"kind": "continuous", "range": [0.0, 10.0], "buckets": 16}
    levels = [{"name": "model", "options": ["s", "l"]}, {"name": "effort", "options": ["lo", "hi"]}]
    hierarchical = LearningConfig.parse({"actions": {"kind": "hierarchical", "levels": levels}}).to_dict()["actions"]
    assert hierarchical == {"kind": "hierarchical", "levels": levels, "credit": "full", "discount": 0.5}


def test_the_examples_and_what_author_writes_parse():
    for path in sorted((ROOT / "examples").glob("*/learning.json")):
        config = LearningConfig.parse(json.loads(path.read_text()))
        assert config.context_spec.kind == "discrete" and config.context_spec.key
        assert config.limits["max_steps"] == 50000
        assert LearningConfig.parse(config.to_dict()) == config


def test_author_output_parses(tmp_path):
    from syntra.authoring import author

    spec = tmp_path / "capsule.yaml"
    spec.write_text(
        "name: tiers\noptions: [small, large]\n"
        "program: |\n  (choice (A \"small\" 1) (A \"large\" 2))\n"
        "algorithm: linucb\nlearning: {min_exploration: 0.2}\n"
        "contextSpec: {kind: features, features: [{name: hour, type: cyclic, period: 24},"
        " {name: user.tier, type: categorical, values: [free, pro]}]}\n"
        "reward: {type: continuous, range: [0, 1], components: [{name: cost, weight: 1, normalize: budget,"
        " budget: 5}, {name: quality, weight: 2, normalize: minmax, range: [1, 5]}]}\n")
    author(spec, tmp_path / "out")
    learning = LearningConfig.parse(json.loads((tmp_path / "out" / "learning.json").read_text()))
    assert learning.algorithm == "linucb" and learning.meta.exploration_floor == 0.2
    assert learning.context_encoder().columns == ("hour.sin", "hour.cos", "user.tier=free", "user.tier=pro",
                                                  "(bias)")
    reward = RewardSpec.parse(json.loads((tmp_path / "out" / "reward_spec.json").read_text()))
    assert reward.combine({"cost": 1, "quality": 5}) == pytest.approx((1 * 0.8 + 2 * 1.0) / 3)


# --- every field's checks -----------------------------------------------------------------


BAD = [
    # top level
    ({"algoritm": "auto"}, "algoritm", "not a learning.json field"),
    ({"algorithm": "magic"}, "algorithm", "must be one of"),
    ({"algorithm": ["thompson"]}, "algorithm", "must be one of"),
    ({"algorithm": "thompson", "settings": []}, "settings", "must be an object"),
    ({"algorithm": "thompson", "settings": {"samples": "many"}}, "settings.samples", "must be a number"),
    ({"algorithm": "thompson", "settings": {"samples": True}}, "settings.samples", "must be a number"),
    ({"algorithm": "thompson", "settings": {"prior_a": math.nan}}, "settings.prior_a", "finite"),
    ({"algorithm": "thompson", "settings": {"bad name": 1}}, "settings.bad name", "not a valid setting name"),
    ({"candidates": []}, "candidates", "non-empty list"),
    ({"candidates": "thompson"}, "candidates", "non-empty list"),
    ({"candidates": ["thompson", "auto"]}, "candidates[1]", "must be one of"),
    ({"candidates": ["thompson", "magic"]}, "candidates[1]", "must be one of"),
    ({"candidates": ["ucb1", "ucb1"]}, "candidates[1]", "repeats"),
    ({"limits": [1]}, "limits", "null or an object"),
    ({"limits": {"max_seconds": math.inf}}, "limits.max_seconds", "finite"),
    ({"limits": {"x": {1, 2}}}, "limits.x", "JSON values"),
    # meta
    ({"meta": []}, "meta", "must be an object"),
    ({"meta": {"extra": 1}}, "meta.extra", "not a field of meta"),
    ({"meta": {"method": "hedge"}}, "meta.method", "exp3ix, thompson"),
    ({"meta": {"estimator": "dr"}}, "meta.estimator", "ips, snips"),
    ({"meta": {"weight_cap": 0.5}}, "meta.weight_cap", ">= 1|in \\[1"),
    ({"meta": {"weight_cap": math.inf}}, "meta.weight_cap", "finite"),
    ({"meta": {"weight_cap": "20"}}, "meta.weight_cap", "number"),
    ({"meta": {"exploration_floor": 0.6}}, "meta.exploration_floor", "in \\[0, 0.5\\]"),
    ({"meta": {"exploration_floor": -0.1}}, "meta.exploration_floor", "in \\[0, 0.5\\]"),
    ({"meta": {"exploration_floor": math.nan}}, "meta.exploration_floor", "finite"),
    ({"meta": {"learning_rate": 0}}, "meta.learning_rate", "null or in \\(0"),
    ({"meta": {"learning_rate": True}}, "meta.learning_rate", "number"),
    ({"meta": {"prior_trials": -1}}, "meta.prior_trials", "in \\[0, "),
    ({"meta": {"prior_trials": 1.5}}, "meta.prior_trials", "integer"),
    ({"meta": {"prior_trials": 10**400}}, "meta.prior_trials", "in \\[0, "),
    # warmup
    ({"warmup": {"feedbacks": -1}}, "warmup.feedbacks", "in \\[0, "),
    ({"warmup": {"feedbacks": 30.0}}, "warmup.feedbacks", "integer"),
    ({"warmup": {"feedbacks": False}}, "warmup.feedbacks", "integer"),
    ({"warmup": {"rounds": 3}}, "warmup.rounds", "not a field of warmup"),
    # contextSpec
    ({"contextSpec": "discrete"}, "contextSpec", "must be an object"),
    ({"contextSpec": {"kind": "graph"}}, "contextSpec.kind", "'discrete' or 'features'"),
    ({"contextSpec": {"kind": "discrete", "key": "a..b"}}, "contextSpec.key", "dotted path"),
    ({"contextSpec": {"kind": "discrete", "key": 3}}, "contextSpec.key", "dotted path"),
    ({"contextSpec": {"kind": "discrete", "features": {}}}, "contextSpec.features", "not a field of a discrete"),
    ({"contextSpec": {"kind": "features", "key": "a", "features": {}}}, "contextSpec.key", "not a field"),
    ({"contextSpec": {"kind": "features"}}, "contextSpec.features", "object of named features"),
    ({"contextSpec": {"kind": "features", "features": {}}}, "contextSpec.features", "at least one"),
    ({"contextSpec": {"kind": "features", "bias": 1, "features": {"x": {"type": "boolean"}}}},
     "contextSpec.bias", "true or false"),
    ({"contextSpec": {"kind": "features", "features": {"hour": {"type": "cyclic", "period": 0}}}},
     "contextSpec.features.hour.period", "must be > 0"),
    # optionFeatures
    ({"optionFeatures": []}, "optionFeatures", "non-empty object"),
    ({"optionFeatures": {}}, "optionFeatures", "non-empty object"),
    ({"optionFeatures": {"a": []}}, "optionFeatures.a", "list of 1 to 256"),
    ({"optionFeatures": {"a": [1, 2], "b": [1]}}, "optionFeatures.b", "same number"),
    ({"optionFeatures": {"a": [1, math.nan]}}, "optionFeatures.a[1]", "finite"),
    ({"optionFeatures": {"a": [1, 1e7]}}, "optionFeatures.a[1]", "in \\[-1e\\+06, 1e\\+06\\]"),
    ({"optionFeatures": {"a": ["x"]}}, "optionFeatures.a[0]", "number"),
    # linear
    ({"linear": {"alpha": -1}}, "linear.alpha", "in \\[0, "),
    ({"linear": {"v": math.inf}}, "linear.v", "finite"),
    ({"linear": {"regularization": 0}}, "linear.regularization", "in \\[1e-06"),
    ({"linear": {"reinvert_every": 0}}, "linear.reinvert_every", "in \\[1, "),
    ({"linear": {"samples": 0}}, "linear.samples", "in \\[1, 100000\\]"),
    ({"linear": {"lambda": 1}}, "linear.lambda", "not a field of linear"),
    # drift
    ({"drift": {"enabled": "yes"}}, "drift.enabled", "true or false"),
    ({"drift": {"capsule_delta": 0}}, "drift.capsule_delta", "must be in \\(0, 1\\), got 0"),
    ({"drift": {"capsule_delta": 1}}, "drift.capsule_delta", "must be in \\(0, 1\\)"),
    ({"drift": {"context_delta": -0.5}}, "drift.context_delta", "must be in \\(0, 1\\)"),
    ({"drift": {"clock": 0}}, "drift.clock", "in \\[1, "),
    ({"drift": {"min_window": 0}}, "drift.min_window", "in \\[1, "),
    ({"drift": {"grace_period": -1}}, "drift.grace_period", "in \\[0, "),
    # refusal
    ({"refusal": {"enabled": 1}}, "refusal.enabled", "true or false"),
    ({"refusal": {"coverage": 1.0}}, "refusal.coverage", "in \\(0, 1\\)"),
    ({"refusal": {"window": 0}}, "refusal.window", "in \\[1, "),
    ({"refusal": {"min_calibration": 0}}, "refusal.min_calibration", "in \\[1, "),
    ({"refusal": {"max_interval_width": 0}}, "refusal.max_interval_width", "null or > 0"),
    ({"refusal": {"ood_threshold": 0}}, "refusal.ood_threshold", "> 0"),
    ({"refusal": {"refuse_uncalibrated": None}}, "refusal.refuse_uncalibrated", "true or false"),
    # regimes
    ({"regimes": {"metric": ""}}, "regimes.metric", "metric name"),
    ({"regimes": {"metric": 7}}, "regimes.metric", "metric name"),
    ({"regimes": {"z_threshold": 0}}, "regimes.z_threshold", "> 0"),
    ({"regimes": {"min_samples": 1}}, "regimes.min_samples", "in \\[2, "),
    ({"regimes": {"anomaly_raise_bps": 10001}}, "regimes.anomaly_raise_bps", "in \\[0, 10000\\]"),
    ({"regimes": {"step_bps": 0}}, "regimes.step_bps", "in \\[1, 10000\\]"),
    ({"regimes": {"domain": ""}}, "regimes.domain", "domain name"),
    ({"regimes": {"default_floors_bps": [1]}}, "regimes.default_floors_bps", "object of domain"),
    ({"regimes": {"default_floors_bps": {"legal": 10001}}}, "regimes.default_floors_bps.legal", "in \\[0, 10000\\]"),
    ({"regimes": {"default_floor_bps": -1}}, "regimes.default_floor_bps", "in \\[0, 10000\\]"),
    ({"regimes": {"min_floor_bps": 1.5}}, "regimes.min_floor_bps", "integer"),
    ({"regimes": {"max_floor_bps": 20000}}, "regimes.max_floor_bps", "in \\[0, 10000\\]"),
    # feedback
    ({"feedback": {"reward_wait_seconds": 0, "default_reward": 0}}, "feedback.reward_wait_seconds",
     "null or in \\[0.001"),
    ({"feedback": {"reward_wait_seconds": 5, "default_reward": math.nan}}, "feedback.default_reward", "finite"),
    ({"feedback": {"fusion": "max"}}, "feedback.fusion", "weighted_mean, min, product"),
    ({"feedback": {"signals": {}}}, "feedback.signals", "non-empty object"),
    ({"feedback": {"signals": {"a b": {}}}}, "feedback.signals.a b", "not a valid signal name"),
    ({"feedback": {"signals": {"click": 1}}}, "feedback.signals.click", "must be an object"),
    ({"feedback": {"signals": {"click": {"weight": 0}}}}, "feedback.signals.click.weight", "in \\[1e-06"),
    ({"feedback": {"signals": {"click": {"required": "yes"}}}}, "feedback.signals.click.required", "true or false"),
    ({"feedback": {"signals": {"click": {"priority": 1}}}}, "feedback.signals.click.priority", "not a field"),
    ({"feedback": {"signals": {"click": {"required": False}}}}, "feedback.signals", "at least one required"),
    # actions
    ({"actions": "discrete"}, "actions", "must be an object"),
    ({"actions": {"kind": "tree"}}, "actions.kind", "discrete, continuous, hierarchical"),
    ({"actions": {"kind": "discrete", "buckets": 4}}, "actions.buckets", "not a field of discrete actions"),
    ({"actions": {"kind": "continuous"}}, "actions.range", "must be \\[low, high\\]"),
    ({"actions": {"kind": "continuous", "range": [1, 1]}}, "actions.range", "low < high"),
    ({"actions": {"kind": "continuous", "range": [0, math.inf]}}, "actions.range[1]", "finite|in \\["),
    ({"actions": {"kind": "continuous", "range": [0, 1e13]}}, "actions.range[1]", "in \\["),
    ({"actions": {"kind": "continuous", "range": [0, 1], "buckets": 1}}, "actions.buckets", "in \\[2, 256\\]"),
    ({"actions": {"kind": "continuous", "range": [0, 1], "buckets": 257}}, "actions.buckets", "in \\[2, 256\\]"),
    ({"actions": {"kind": "continuous", "range": [1, 1 + 1e-15], "buckets": 64}}, "actions.range", "too narrow"),
    ({"actions": {"kind": "continuous", "range": [0, 1], "levels": []}}, "actions.levels", "not a field"),
    ({"actions": {"kind": "hierarchical"}}, "actions.levels", "2 to 8 levels"),
    ({"actions": {"kind": "hierarchical", "levels": [{"name": "a", "options": ["x", "y"]}]}},
     "actions.levels", "2 to 8 levels"),
    ({"actions": {"kind": "hierarchical", "levels": [{"name": "a", "options": ["x", "y"]}] * 2}},
     "actions.levels[1].name", "repeats"),
    ({"actions": {"kind": "hierarchical", "levels": [{"name": "a", "options": ["x", "y"]},
                                                      {"name": "b", "options": ["x"]}]}},
     "actions.levels[1].options", "2 or more"),
    ({"actions": {"kind": "hierarchical", "levels": [{"name": "a", "options": ["x", "y"]},
                                                      {"name": "b", "options": ["p", "q/r"]}]}},
     "actions.levels[1].options[1]", "without '/'"),
    ({"actions": {"kind": "hierarchical", "levels": [{"name": "a", "options": ["x", "x"]},
                                                      {"name": "b", "options": ["p", "q"]}]}},
     "actions.levels[0].options[1]", "repeats"),
    ({"actions": {"kind": "hierarchical", "levels": [{"name": "a", "options": ["x", "y"], "weight": 1},
                                                      {"name": "b", "options": ["p", "q"]}]}},
     "actions.levels[0].weight", "not a field of a level"),
    ({"actions": {"kind": "hierarchical",
                  "levels": [{"name": f"l{i}", "options": ["a", "b", "c"]} for i in range(6)]}},
     "actions.levels", "729 leaf combinations"),
    ({"actions": {"kind": "hierarchical",
                  "levels": [{"name": "a", "options": ["x" * 100, "y"]}, {"name": "b", "options": ["p" * 40, "q"]}]}},
     "actions.levels", "at most 128"),
    ({"actions": {"kind": "hierarchical", "credit": "partial",
                  "levels": [{"name": "a", "options": ["x", "y"]}, {"name": "b", "options": ["p", "q"]}]}},
     "actions.credit", "full, discounted"),
    ({"actions": {"kind": "hierarchical", "discount": 0,
                  "levels": [{"name": "a", "options": ["x", "y"]}, {"name": "b", "options": ["p", "q"]}]}},
     "actions.discount", "in \\(0, 1\\]"),
    # learning (legacy)
    ({"learning": {"min_exploration": 1.0}}, "learning.min_exploration", "in \\[0, 1\\)"),
    ({"learning": {"min_exploration": 0.7}}, "learning.min_exploration", "meta.exploration_floor"),
    ({"learning": {"floor": 0.1}}, "learning.floor", "not a field of learning"),
]


@pytest.mark.parametrize("config, path, reason", BAD, ids=[b[1] + ":" + str(i) for i, b in enumerate(BAD)])
def test_every_invalid_field_is_named(config, path, reason):
    with pytest.raises(InvalidConfig) as error:
        LearningConfig.parse(config)
    message = str(error.value)
    assert message.startswith(f"learning.json: {path} "), message
    assert re.search(reason, message), message


def test_a_non_mapping_config_is_refused():
    for config in ([], "auto", 3):
        with pytest.raises(InvalidConfig, match="learning.json must be an object"):
            LearningConfig.parse(config)


def test_the_briefs_example_message():
    with pytest.raises(InvalidConfig) as error:
        LearningConfig.parse({"drift": {"capsule_delta": 0}})
    assert str(error.value) == "learning.json: drift.capsule_delta must be in (0, 1), got 0"


# --- cross-field checks -------------------------------------------------------------------


CROSS = [
    ({"algorithm": "linucb"}, "algorithm", "contextSpec.kind 'features'"),
    ({"algorithm": "lints", "contextSpec": {"kind": "discrete", "key": "k"}}, "algorithm", "contextSpec.kind"),
    ({"algorithm": "thompson", "candidates": ["thompson"]}, "candidates", "only for algorithm auto"),
    ({"candidates": ["thompson", "linucb"]}, "candidates[1]", "contextSpec.kind 'features'"),
    ({"settings": {"exploration": 1}}, "settings", "auto with a single candidate"),
    ({"candidates": ["ucb1", "softmax"], "settings": {"exploration": 1}}, "settings", "single candidate"),
    ({"refusal": {"min_calibration": 600}}, "refusal.min_calibration", "refusal.window = 500"),
    ({"refusal": {"coverage": 0.99}}, "refusal.min_calibration", "in \\[99, "),
    ({"refusal": {"coverage": 0.99, "window": 50, "min_calibration": 50}}, "refusal.window", ">= 99"),
    ({"regimes": {"min_floor_bps": 6000, "max_floor_bps": 5000}}, "regimes.min_floor_bps", "at most"),
    ({"regimes": {"min_floor_bps": 6000}}, "regimes.default_floor_bps", "within"),
    ({"regimes": {"domain": "support", "max_floor_bps": 5000}}, "regimes.default_floors_bps.support", "within"),
    ({"feedback": {"reward_wait_seconds": 60}}, "feedback.default_reward", "is required"),
    ({"feedback": {"default_reward": 0}}, "feedback.default_reward", "only used with"),
]


@pytest.mark.parametrize("config, path, reason", CROSS)
def test_cross_field_checks(config, path, reason):
    with pytest.raises(InvalidConfig) as error:
        LearningConfig.parse(config)
    message = str(error.value)
    assert message.startswith(f"learning.json: {path} "), message
    assert re.search(reason, message), message


def test_what_the_cross_field_checks_allow():
    assert LearningConfig.parse({"algorithm": "linucb", "contextSpec": FEATURES}).algorithm == "linucb"
    assert LearningConfig.parse({"candidates": ["lints", "ucb1"], "contextSpec": FEATURES}).candidates \
        == ("lints", "ucb1")
    # Scalar rules suit either context kind.
    assert LearningConfig.parse({"candidates": ["ucb1"], "contextSpec": FEATURES}).candidates == ("ucb1",)
    single = LearningConfig.parse({"candidates": ["ucb1"], "settings": {"exploration": 1.5}})
    assert dict(single.settings) == {"exploration": 1.5}
    # Only the starting floor must fit the band: another domain's floor may lie outside it.
    coding = LearningConfig.parse({"regimes": {"domain": "coding", "min_floor_bps": 7000}})
    assert coding.regimes.floor_bps() == 7200
    waiting = LearningConfig.parse({"feedback": {"reward_wait_seconds": 1.5, "default_reward": 0}})
    assert waiting.feedback.reward_wait_seconds == 1.5 and waiting.feedback.default_reward == 0.0
    assert LearningConfig.parse({"refusal": {"coverage": 0.99, "min_calibration": 99}}).refusal.min_calibration == 99


def test_legacy_min_exploration_sets_the_exploration_floor_unless_it_is_given():
    assert LearningConfig.parse({"learning": {"min_exploration": 0.1}}).meta.exploration_floor == 0.1
    assert LearningConfig.parse({"learning": {"min_exploration": 0}}).meta.exploration_floor == 0.0
    assert LearningConfig.parse({"learning": {}}).meta.exploration_floor == 0.05
    both = LearningConfig.parse({"learning": {"min_exploration": 0.1}, "meta": {"exploration_floor": 0.2}})
    assert both.meta.exploration_floor == 0.2 and both.learning.min_exploration == 0.1
    # A floor beyond meta's range is fine when meta's floor is given explicitly.
    assert LearningConfig.parse({"learning": {"min_exploration": 0.7},
                                 "meta": {"exploration_floor": 0.1}}).meta.exploration_floor == 0.1


# --- round trips and immutability ---------------------------------------------------------


ROUND_TRIPS = [
    {},
    {"algorithm": "thompson", "settings": {"samples": 128, "prior_a": 0.5}, "learning": {"min_exploration": 0.1}},
    {"algorithm": "auto", "candidates": ["linucb", "ucb1"], "contextSpec": {
        "kind": "features", "bias": False, "features": {
            "hour": {"type": "cyclic", "period": 24}, "tier": {"type": "categorical", "values": ["a", "b"]},
            "load": {"type": "continuous", "range": [-1, 1], "clip": False}, "vip": {"type": "boolean"}}},
     "optionFeatures": {"x": [1, 2.5], "y": [0, -3]}, "linear": {"alpha": 0.25}},
    {"actions": {"kind": "continuous", "range": [-5, 5], "buckets": 7}, "refusal": {"enabled": True}},
    {"actions": {"kind": "hierarchical", "credit": "discounted", "discount": 0.25,
                 "levels": [{"name": "a", "options": ["x", "y"]}, {"name": "b", "options": ["p", "q", "r"]}]}},
    {"feedback": {"reward_wait_seconds": 30, "default_reward": 0.5, "fusion": "min",
                  "signals": {"click": {"weight": 1}, "dwell": {"weight": 2.5, "required": False}}},
     "regimes": {"enabled": True, "metric": "latency_ms", "domain": "legal", "default_floors_bps": {"legal": 9100}},
     "limits": {"max_steps": 100, "max_seconds": 0.5}},
]


@pytest.mark.parametrize("config", ROUND_TRIPS)
def test_round_trip(config):
    parsed = LearningConfig.parse(config)
    again = LearningConfig.parse(parsed.to_dict())
    assert again == parsed
    assert again.to_dict() == parsed.to_dict()
    assert json.loads(json.dumps(parsed.to_dict(), allow_nan=False)) == parsed.to_dict()


def test_both_forms_give_the_list_form_which_keeps_the_column_order():
    listed = LearningConfig.parse({"contextSpec": {"kind": "features", "features": [
        {"name": "hour", "type": "cyclic", "period": 24}, {"name": "vip", "type": "boolean"}]}})
    named = LearningConfig.parse({"contextSpec": {"kind": "features", "features": {
        "hour": {"type": "cyclic", "period": 24}, "vip": {"type": "boolean"}}}})
    assert listed == named
    assert [f["name"] for f in listed.to_dict()["contextSpec"]["features"]] == ["hour", "vip"]
    # Stored configs are JSON with sorted keys: the list keeps "vip" before "hour" where an
    # object would not.
    reverse = LearningConfig.parse({"contextSpec": {"kind": "features", "features": {
        "vip": {"type": "boolean"}, "hour": {"type": "cyclic", "period": 24}}}})
    stored = json.loads(json.dumps(reverse.to_dict(), sort_keys=True))
    assert LearningConfig.parse(stored).context_encoder().columns == reverse.context_encoder().columns


def test_configs_are_immutable_and_independent_of_their_inputs():
    source = {"algorithm": "ucb1", "settings": {"exploration": 1.0}, "limits": {"nested": {"a": [1]}},
              "regimes": {"default_floors_bps": {"legal": 8000}}}
    config = LearningConfig.parse(source)
    before = config.to_dict()
    source["settings"]["exploration"] = 5.0
    source["limits"]["nested"]["a"].append(2)
    source["regimes"]["default_floors_bps"]["legal"] = 1
    assert config.to_dict() == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.algorithm = "thompson"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.drift.enabled = False
    with pytest.raises(TypeError):
        config.settings["exploration"] = 3.0
    with pytest.raises(TypeError):
        config.limits["nested"]["b"] = 1
    with pytest.raises(TypeError):
        config.regimes.default_floors_bps["legal"] = 1
    out = config.to_dict()
    out["meta"]["method"] = "thompson"
    out["regimes"]["default_floors_bps"]["support"] = 1
    assert config.to_dict() == before
    assert LearningConfig.parse({}).to_dict() == DOCUMENTED_DEFAULTS
    with pytest.raises(TypeError):
        DEFAULTS["meta"]["method"] = "thompson"


SECTION_VALUES = {
    "meta": st.fixed_dictionaries({}, optional={
        "method": st.sampled_from(["exp3ix", "thompson"]), "estimator": st.sampled_from(["ips", "snips"]),
        "weight_cap": st.floats(1, 1e12), "exploration_floor": st.floats(0, 0.5),
        "learning_rate": st.none() | st.floats(1e-9, 1e6), "prior_trials": st.integers(0, 10**9)}),
    "warmup": st.fixed_dictionaries({}, optional={"feedbacks": st.integers(0, 10**9)}),
    "linear": st.fixed_dictionaries({}, optional={
        "alpha": st.floats(0, 1e6), "v": st.floats(0, 1e6), "regularization": st.floats(1e-6, 1e12),
        "reinvert_every": st.integers(1, 10**6), "samples": st.integers(1, 100_000)}),
    "drift": st.fixed_dictionaries({}, optional={
        "enabled": st.booleans(), "capsule_delta": st.floats(1e-9, 0.999), "context_delta": st.floats(1e-9, 0.999),
        "clock": st.integers(1, 10**6), "min_window": st.integers(1, 10**6), "grace_period": st.integers(0, 10**9)}),
}


@settings(deadline=None, max_examples=60)
@given(st.fixed_dictionaries({}, optional=SECTION_VALUES))
def test_any_valid_partial_config_round_trips_and_keeps_what_was_given(config):
    parsed = LearningConfig.parse(config)
    out = parsed.to_dict()
    assert LearningConfig.parse(out) == parsed
    for section, fields in config.items():
        for name, value in fields.items():
            assert out[section][name] == value
            assert type(out[section][name]) is (type(None) if value is None else type(value))


# --- candidates -----------------------------------------------------------------------------


@pytest.mark.parametrize("reward, context, expected", [
    ("bernoulli", "discrete", ["thompson", "greedy", "epsilon_greedy"]),
    ("continuous", "discrete", ["gaussian_thompson", "greedy", "epsilon_greedy"]),
    ("sparse", "discrete", ["thompson", "greedy", "epsilon_greedy"]),
    ("bernoulli", "features", ["linucb", "lints"]),
    ("continuous", "features", ["linucb", "lints"]),
    ("sparse", "features", ["linucb", "lints"]),
])
def test_default_candidates(reward, context, expected):
    assert LearningConfig.default_candidates(reward, context) == expected
    features = {"contextSpec": FEATURES} if context == "features" else {}
    # The defaults are always a valid explicit candidate list.
    assert LearningConfig.parse({**features, "candidates": expected}).candidates_for(reward) == expected
    assert LearningConfig.parse(features).candidates_for(reward) == expected


def test_default_candidates_refuse_unknown_kinds():
    with pytest.raises(InvalidConfig, match="reward kind"):
        LearningConfig.default_candidates("poisson", "discrete")
    with pytest.raises(InvalidConfig, match="context kind"):
        LearningConfig.default_candidates("bernoulli", "graph")


def test_candidates_for_a_fixed_algorithm_or_an_explicit_list():
    assert LearningConfig.parse({"algorithm": "softmax"}).candidates_for("bernoulli") == ["softmax"]
    assert LearningConfig.parse({"candidates": ["greedy", "ucb1"]}).candidates_for("sparse") == ["greedy", "ucb1"]


# --- action shapes and options --------------------------------------------------------------


@pytest.mark.parametrize("low, high, buckets", [(0, 1, 4), (-1, 1, 3), (-5, 5, 7), (10, 20, 256), (0.1, 0.7, 6)])
def test_continuous_options_are_bucket_midpoints(low, high, buckets):
    names, values = continuous_options([low, high], buckets)
    edges = np.linspace(low, high, buckets + 1)
    np.testing.assert_allclose(values, (edges[:-1] + edges[1:]) / 2, rtol=0, atol=1e-12 * (high - low))
    assert len(set(names)) == buckets
    for name, value in zip(names, values):
        assert float(name) == pytest.approx(value, rel=5e-6, abs=1e-12)  # 6 significant digits
        assert len(name) <= 12


def test_continuous_options_name_zero_exactly_and_compactly():
    names, values = continuous_options([-1, 1], 3)
    assert names[1] == "0" and values[1] == 0.0
    assert continuous_options([0, 1], 4)[0] == ("0.125", "0.375", "0.625", "0.875")


def test_continuous_option_names_stay_distinct_in_a_narrow_range():
    names, values = continuous_options([1e6, 1e6 + 1], 256)
    assert len(set(names)) == 256
    # Each name still lies inside its own bucket (width 1/256), nearer its midpoint than any other.
    assert all(abs(float(name) - value) < 0.5 / 256 for name, value in zip(names, values))
    assert len(names[0]) > 7    # 6 significant digits could not tell them apart


def test_check_options_continuous():
    config = LearningConfig.parse({"actions": {"kind": "continuous", "range": [0, 1], "buckets": 4}})
    config.check_options(("0.125", "0.375", "0.625", "0.875"))
    assert config.actions.values() == (0.125, 0.375, 0.625, 0.875)
    with pytest.raises(InvalidConfig, match=r"learning.json: actions continuous actions \(4 buckets"):
        config.check_options(("a", "b", "c", "d"))
    with pytest.raises(InvalidConfig, match="learning.json: actions"):
        config.check_options(("0.875", "0.625", "0.375", "0.125"))


def test_check_options_hierarchical():
    levels = [{"name": "model", "options": ["s", "m", "l"]}, {"name": "effort", "options": ["lo", "hi"]},
              {"name": "tools", "options": ["no", "yes"]}]
    config = LearningConfig.parse({"actions": {"kind": "hierarchical", "levels": levels}})
    expected = []
    for model in ["s", "m", "l"]:
        for effort in ["lo", "hi"]:
            for tools in ["no", "yes"]:
                expected.append(f"{model}/{effort}/{tools}")
    config.check_options(tuple(expected))
    assert config.actions.options() == tuple(expected)
    with pytest.raises(InvalidConfig, match="learning.json: actions hierarchical actions"):
        config.check_options(tuple(reversed(expected)))
    assert config.actions.values() is None


def test_check_options_discrete_accepts_any_options():
    LearningConfig.parse({}).check_options(("a", "b"))
    assert LearningConfig.parse({}).actions.options() is None


def test_check_options_option_features():
    config = LearningConfig.parse({"optionFeatures": {"a": [1, 0], "b": [0, 1]}})
    config.check_options(("a", "b"))
    config.check_options(("b", "a"))
    with pytest.raises(InvalidConfig, match="learning.json: optionFeatures.b is not an option"):
        config.check_options(("a", "c"))
    with pytest.raises(InvalidConfig, match=r"learning.json: optionFeatures has no features for the options \['c'\]"):
        config.check_options(("a", "b", "c"))


def test_check_reward():
    waiting = {"reward_wait_seconds": 10}
    LearningConfig.parse({"feedback": {**waiting, "default_reward": 1}}).check_reward(RewardSpec())
    with pytest.raises(InvalidConfig, match="feedback.default_reward must be 0 or 1"):
        LearningConfig.parse({"feedback": {**waiting, "default_reward": 0.5}}).check_reward(RewardSpec())
    ranged = RewardSpec.parse({"type": "continuous", "range": [0, 10]})
    LearningConfig.parse({"feedback": {**waiting, "default_reward": 10}}).check_reward(ranged)
    with pytest.raises(InvalidConfig, match=r"feedback.default_reward must be within the reward range \[0, 10\]"):
        LearningConfig.parse({"feedback": {**waiting, "default_reward": 11}}).check_reward(ranged)
    signals = {"signals": {"a": {}, "b": {}}}
    with pytest.raises(InvalidConfig, match="learning.json: feedback.fusion weighted_mean cannot fuse bernoulli"):
        LearningConfig.parse({"feedback": signals}).check_reward(RewardSpec())
    LearningConfig.parse({"feedback": {**signals, "fusion": "min"}}).check_reward(RewardSpec())
    LearningConfig.parse({"feedback": signals}).check_reward(ranged)


def test_context_encoder_of_a_config():
    encoder = LearningConfig.parse({"contextSpec": FEATURES}).context_encoder()
    assert encoder.columns == ("load", "(bias)")
    assert encoder.encode({"load": 0.25}).tolist() == [0.25, 1.0]


# --- docs --------------------------------------------------------------------------------


def _paths(mapping, prefix=""):
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, Mapping) and value:
            yield from _paths(value, f"{path}.")


# Fields outside DEFAULTS: the other kinds of the tagged unions, and reward_spec.json.
EXTRA_FIELDS = ["contextSpec.features", "contextSpec.bias", "actions.range", "actions.buckets", "actions.levels",
                "actions.credit", "actions.discount"]
REWARD_FIELDS = ["type", "range", "components", "weight", "normalize", "budget", "lower_is_better",
                 "bernoulli", "continuous", "sparse", "minmax"]


def test_every_field_is_documented_by_its_dotted_path():
    text = DOCS.read_text(encoding="utf-8")
    paths = list(_paths(DEFAULTS)) + EXTRA_FIELDS
    assert len(paths) > 60
    missing = [path for path in paths if f"`{path}`" not in text]
    assert not missing, f"docs/learning.md does not mention {missing}"
    reward = text[text.index("## `reward_spec.json`"):]
    assert not [f for f in REWARD_FIELDS if f"`{f}`" not in reward and f'`"{f}"`' not in reward]
    for kind in ("continuous", "cyclic", "categorical", "boolean"):
        assert f"`{kind}`" in text[text.index("## Feature encoding"):]


def test_the_docs_json_examples_parse():
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", text, re.DOTALL)
    learning = text[:text.index("## Feature encoding")]
    parsed = 0
    for block in re.findall(r"```json\n(.*?)```", learning, re.DOTALL):
        for line in _json_values(block):
            LearningConfig.parse(line)
            parsed += 1
    reward = text[text.index("## `reward_spec.json`"):]
    for block in re.findall(r"```json\n(.*?)```", reward, re.DOTALL):
        for line in _json_values(block):
            RewardSpec.parse(line)
            parsed += 1
    assert parsed >= 20 and len(blocks) >= 15
    # The full-file example is the defaults.
    assert json.loads(blocks[0]) == DOCUMENTED_DEFAULTS


def _json_values(block):
    """The JSON values of a docs block: one document, or several each starting a line with '{'."""
    try:
        return [json.loads(block)]
    except json.JSONDecodeError:
        pass
    values, current = [], []
    for line in block.splitlines():
        if line.startswith("{") and current:
            values.append(json.loads("\n".join(current)))
            current = []
        current.append(line)
    values.append(json.loads("\n".join(current)))
    return values


def test_hierarchical_docs_example_order():
    # The order the docs show: first level varying slowest.
    config = LearningConfig.parse({"actions": {"kind": "hierarchical", "levels": [
        {"name": "model", "options": ["small", "large"]}, {"name": "effort", "options": ["low", "high"]}]}})
    assert config.actions.options() == ("small/low", "small/high", "large/low", "large/high")
