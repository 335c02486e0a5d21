"""Reward specs: types, the old spec's contract, components, checks and fused signals."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syntra.errors import InvalidConfig, InvalidReward
from syntra.learning.config import LearningConfig
from syntra.learning.rewards import RewardSpec, fuse_signals

COMPONENTS = {
    "quality": {"weight": 3, "normalize": "minmax", "range": [1, 5]},
    "latency_ms": {"weight": 1, "normalize": "budget", "budget": 800},
    "tokens": {"weight": 2, "normalize": "budget", "budget": 1000, "lower_is_better": False},
}


# --- types and the old contract ------------------------------------------------------------


def test_bernoulli_is_the_default():
    for spec in (RewardSpec.parse(None), RewardSpec.parse({}), RewardSpec.parse({"type": "bernoulli"})):
        assert (spec.type, spec.kind, spec.low, spec.high, spec.components) == ("bernoulli", "bernoulli", 0.0, 1.0, ())
        assert spec.to_dict() == {"type": "bernoulli"}
        assert spec == RewardSpec()


def test_continuous():
    spec = RewardSpec.parse({"type": "continuous", "range": [-1, 2]})
    assert (spec.type, spec.kind, spec.low, spec.high) == ("continuous", "continuous", -1.0, 2.0)
    assert spec.to_dict() == {"type": "continuous", "range": [-1.0, 2.0]}
    assert spec == RewardSpec("continuous", -1.0, 2.0)
    assert RewardSpec.parse({"type": "continuous", "range": (0, 1)}).high == 1.0


def test_sparse_has_continuous_statistics_and_a_sparse_kind():
    default = RewardSpec.parse({"type": "sparse"})
    assert (default.type, default.kind, default.low, default.high) == ("continuous", "sparse", 0.0, 1.0)
    revenue = RewardSpec.parse({"type": "sparse", "range": [0, 250]})
    assert (revenue.low, revenue.high) == (0.0, 250.0)
    assert revenue.to_dict() == {"type": "sparse", "range": [0.0, 250.0]}
    assert RewardSpec.parse(revenue.to_dict()) == revenue
    assert revenue.check(0) == 0.0 and revenue.normalize(125) == 0.5
    with pytest.raises(InvalidConfig, match=r"reward.range of a sparse reward must be \[0, high\]"):
        RewardSpec.parse({"type": "sparse", "range": [1, 5]})


# The old RewardSpec's refusals (tests/test_engine.py), with its messages.
@pytest.mark.parametrize("spec, message", [
    ({"type": "poisson"}, "reward.type must be 'bernoulli', 'continuous' or 'sparse', got 'poisson'"),
    ({"type": "continuous"}, "reward.range must be [low, high] numbers, got None"),
    ({"type": "continuous", "range": [1, 1]},
     "reward.range must have low < high, both within ±1e+12 (and finite), got [1, 1]"),
    ({"type": "continuous", "range": [0, math.inf]}, "finite"),
    ({"type": "continuous", "range": [0, 1e308]}, "reward.range"),
    ({"type": "continuous", "range": [-10**400, 0]}, "reward.range"),
    ({"type": "continuous", "range": [0, 1e13]}, "reward.range"),
    ({"type": "continuous", "range": [True, 2]}, "reward.range must be [low, high] numbers"),
    ({"type": "continuous", "range": [0, 1, 2]}, "reward.range must be [low, high] numbers"),
    ({"type": "bernoulli", "range": [0, 1]}, "a bernoulli reward has no range: it is 0 or 1"),
    ({"typo": 1}, "reward spec has unknown fields: ['typo']"),
    ([1], "reward spec must be a mapping, got list"),
])
def test_old_refusals_and_messages(spec, message):
    with pytest.raises(InvalidConfig) as error:
        RewardSpec.parse(spec)
    assert message in str(error.value)


# --- check and normalize ----------------------------------------------------------------------


def test_check_bernoulli():
    spec = RewardSpec()
    assert spec.check(0) == 0.0 and spec.check(1.0) == 1.0 and type(spec.check(1)) is float
    for reward, message in [(0.5, "must be 0 or 1, got 0.5"), (2, "must be 0 or 1"), (True, "must be a number, got bool"),
                            (math.nan, "must be finite, got nan"), ("1", "must be a number, got str"),
                            (None, "must be a number")]:
        with pytest.raises(InvalidReward, match=message):
            spec.check(reward)


def test_check_continuous():
    spec = RewardSpec.parse({"type": "continuous", "range": [-1, 1]})
    assert spec.check(-1) == -1.0 and spec.check(0.25) == 0.25 and spec.check(np.float32(0.5)) == 0.5
    assert math.copysign(1.0, spec.check(-0.0)) == 1.0
    for reward, message in [(1.5, r"reward 1.5 outside the range \[-1.0, 1.0\]"), (-2, "outside the range"),
                            (math.inf, "must be finite"), (-math.inf, "must be finite"),
                            (10**400, "is too large"), ([1.0], "must be a number, got list")]:
        with pytest.raises(InvalidReward, match=message):
            spec.check(reward)


@pytest.mark.parametrize("low, high, reward, expected", [
    (0, 1, 0.3, 0.3), (-1, 1, 0, 0.5), (-1, 1, 1, 1.0), (10, 20, 12.5, 0.25), (0, 1e12, 1e12, 1.0),
])
def test_normalize(low, high, reward, expected):
    spec = RewardSpec.parse({"type": "continuous", "range": [low, high]})
    assert spec.normalize(reward) == pytest.approx(expected)
    with pytest.raises(InvalidReward):
        spec.normalize(high + (high - low))


def test_normalize_bernoulli():
    assert RewardSpec().normalize(1) == 1.0 and RewardSpec().normalize(0) == 0.0


# --- components -------------------------------------------------------------------------------


def test_components_parse_and_round_trip():
    spec = RewardSpec.parse({"type": "continuous", "components": COMPONENTS})
    assert (spec.type, spec.kind, spec.low, spec.high) == ("continuous", "continuous", 0.0, 1.0)
    assert [c.name for c in spec.components] == ["quality", "latency_ms", "tokens"]
    assert spec.to_dict() == {"type": "continuous", "range": [0.0, 1.0], "components": {
        "quality": {"weight": 3.0, "normalize": "minmax", "range": [1.0, 5.0]},
        "latency_ms": {"weight": 1.0, "normalize": "budget", "budget": 800.0, "lower_is_better": True},
        "tokens": {"weight": 2.0, "normalize": "budget", "budget": 1000.0, "lower_is_better": False}}}
    assert RewardSpec.parse(spec.to_dict()) == spec
    # Without a type, components make a continuous reward; the range may be restated as [0, 1].
    assert RewardSpec.parse({"components": COMPONENTS}) == spec
    assert RewardSpec.parse({"type": "continuous", "range": [0, 1], "components": COMPONENTS}) == spec
    sparse = RewardSpec.parse({"type": "sparse", "components": COMPONENTS})
    assert (sparse.type, sparse.kind, sparse.low, sparse.high) == ("continuous", "sparse", 0.0, 1.0)


def test_the_list_form_author_writes():
    listed = RewardSpec.parse({"type": "continuous", "range": [0, 1], "components": [
        {"name": "quality", "weight": 3, "normalize": "minmax", "range": [1, 5]},
        {"name": "latency_ms", "weight": 1, "normalize": "budget", "budget": 800},
        {"name": "tokens", "weight": 2, "normalize": "budget", "budget": 1000, "lower_is_better": False}]})
    assert listed == RewardSpec.parse({"components": COMPONENTS})


def test_combine_by_hand():
    spec = RewardSpec.parse({"components": COMPONENTS})
    # quality 4 -> 3/4; latency 200 of 800 -> 1 - 1/4; tokens 500 of 1000 (higher better) -> 1/2.
    expected = Fraction(3 * 3, 4) + Fraction(3, 4) + 2 * Fraction(1, 2)
    assert spec.combine({"quality": 4, "latency_ms": 200, "tokens": 500}) == pytest.approx(float(expected / 6))
    # The ends: best quality, no latency, tokens beyond the budget (capped at 1) -> 1.
    assert spec.combine({"quality": 5, "latency_ms": 0, "tokens": 5000}) == 1.0
    # Worst quality, latency beyond the budget (floored at 0), no tokens -> 0.
    assert spec.combine({"quality": 1, "latency_ms": 10**6, "tokens": 0}) == 0.0


@pytest.mark.parametrize("values, message", [
    ({"quality": 4, "latency_ms": 200}, "reward component 'tokens' is missing"),
    ({"quality": 4, "latency_ms": 200, "tokens": 1, "cost": 2}, "unknown reward components 'cost' \\(known: "),
    ({"quality": 6, "latency_ms": 200, "tokens": 1}, r"reward component 'quality': 6 outside its range \[1, 5\]"),
    ({"quality": 0.5, "latency_ms": 200, "tokens": 1}, "reward component 'quality': 0.5 outside its range"),
    ({"quality": math.nan, "latency_ms": 200, "tokens": 1}, "reward component 'quality' must be finite"),
    ({"quality": 4, "latency_ms": math.inf, "tokens": 1}, "reward component 'latency_ms' must be finite"),
    ({"quality": 4, "latency_ms": -1, "tokens": 1}, "reward component 'latency_ms': a budgeted value must be >= 0"),
    ({"quality": 4, "latency_ms": 200, "tokens": 10**400}, "reward component 'tokens' 10* is too large"),
    ({"quality": True, "latency_ms": 200, "tokens": 1}, "reward component 'quality' must be a number, got bool"),
    ({"quality": "4", "latency_ms": 200, "tokens": 1}, "reward component 'quality' must be a number, got str"),
])
def test_combine_refusals_name_the_component(values, message):
    spec = RewardSpec.parse({"components": COMPONENTS})
    with pytest.raises(InvalidReward, match=message):
        spec.combine(values)


def test_combine_without_components_or_with_a_non_mapping():
    with pytest.raises(InvalidReward, match="no components"):
        RewardSpec.parse({"type": "continuous", "range": [0, 1]}).combine({"a": 1})
    with pytest.raises(InvalidReward, match="mapping of name to value"):
        RewardSpec.parse({"components": COMPONENTS}).combine([("quality", 4)])


@pytest.mark.parametrize("spec, message", [
    ({"type": "bernoulli", "components": COMPONENTS}, "a bernoulli reward has no components"),
    ({"components": COMPONENTS, "range": [0, 2]}, r"reward.range must be \[0, 1\] with components"),
    ({"components": {}}, "reward.components must name 1 to 64 components, got 0"),
    ({"components": {f"c{i}": {"weight": 1, "normalize": "budget", "budget": 1} for i in range(65)}}, "1 to 64"),
    ({"components": 3}, "reward.components must be an object"),
    ({"components": {"q": {"weight": 0, "normalize": "budget", "budget": 1}}}, "reward.components.q.weight must be"),
    ({"components": {"q": {"weight": -1, "normalize": "budget", "budget": 1}}}, "reward.components.q.weight"),
    ({"components": {"q": {"weight": math.nan, "normalize": "budget", "budget": 1}}}, "reward.components.q.weight"),
    ({"components": {"q": {"weight": True, "normalize": "budget", "budget": 1}}}, "reward.components.q.weight"),
    ({"components": {"q": {"normalize": "budget", "budget": 1}}}, "reward.components.q.weight"),
    ({"components": {"q": {"weight": 1, "normalize": "zscore"}}}, "reward.components.q.normalize must be 'minmax'"),
    ({"components": {"q": {"weight": 1, "normalize": "minmax"}}}, r"reward.components.q.range must be \[low, high\]"),
    ({"components": {"q": {"weight": 1, "normalize": "minmax", "range": [2, 1]}}}, "reward.components.q.range"),
    ({"components": {"q": {"weight": 1, "normalize": "minmax", "range": [0, 1], "budget": 3}}},
     "reward.components.q.budget is not a field of a minmax component"),
    ({"components": {"q": {"weight": 1, "normalize": "budget", "budget": 0}}}, "reward.components.q.budget must be"),
    ({"components": {"q": {"weight": 1, "normalize": "budget", "budget": math.inf}}}, "reward.components.q.budget"),
    ({"components": {"q": {"weight": 1, "normalize": "budget", "budget": 1, "lower_is_better": 1}}},
     "reward.components.q.lower_is_better must be true or false"),
    ({"components": {"q": {"weight": 1, "normalize": "budget", "budget": 1, "range": [0, 1]}}},
     "reward.components.q.range is not a field of a budget component"),
    ({"components": {"bad name": {"weight": 1, "normalize": "budget", "budget": 1}}},
     "reward.components.bad name has an invalid name"),
    ({"components": {"q": 1}}, "reward.components.q must be an object"),
    ({"components": [{"name": "q", "weight": 1, "normalize": "budget", "budget": 1}] * 2},
     "reward.components\\[1\\] repeats the component 'q'"),
    ({"components": [{"weight": 1, "normalize": "budget", "budget": 1}]}, "reward.components\\[0\\] has an invalid name"),
    ({"components": ["q"]}, "reward.components\\[0\\] must be an object"),
])
def test_component_spec_refusals(spec, message):
    with pytest.raises(InvalidConfig, match=message):
        RewardSpec.parse(spec)


def test_specs_are_immutable():
    spec = RewardSpec.parse({"components": COMPONENTS})
    with pytest.raises(AttributeError):
        spec.low = 3.0
    with pytest.raises(AttributeError):
        spec.components[0].weight = 10.0


weights = st.floats(0.01, 100)


@settings(deadline=None, max_examples=150)
@given(st.lists(st.tuples(weights, st.booleans(), st.floats(0, 1)), min_size=1, max_size=6),
       st.floats(-1e6, 1e6), st.floats(1e-3, 1e6), st.floats(0, 1), st.floats(1e-3, 1e6), st.floats(0, 2))
def test_combine_is_the_weighted_mean_of_normalized_components(parts, low, width, where, budget, spend):
    components, values, scores, ws = {}, {}, [], []
    for i, (weight, minmax, share) in enumerate(parts):
        name = f"c{i}"
        if minmax:
            high = low + width   # as a float: the range the spec really has
            components[name] = {"weight": weight, "normalize": "minmax", "range": [low, high]}
            values[name] = min(low + share * width, high)
            scores.append((values[name] - low) / (high - low))
        else:
            lower = i % 2 == 0
            components[name] = {"weight": weight, "normalize": "budget", "budget": budget, "lower_is_better": lower}
            values[name] = spend * budget
            scores.append(max(0.0, 1 - spend) if lower else min(1.0, spend))
        ws.append(weight)
    reward = RewardSpec.parse({"components": components}).combine(values)
    assert 0.0 <= reward <= 1.0
    assert reward == pytest.approx(np.average(scores, weights=ws), abs=1e-9)


# --- fused signals ----------------------------------------------------------------------------


SIGNALS = {"clicked": {"weight": 1, "required": True}, "bought": {"weight": 1, "required": True},
           "rated": {"weight": 2, "required": False}}


def test_fusion_waits_for_every_required_signal():
    spec = RewardSpec.parse({"type": "continuous", "range": [0, 10]})
    assert fuse_signals(SIGNALS, "weighted_mean", {}, reward=spec) is None
    assert fuse_signals(SIGNALS, "weighted_mean", {"clicked": 10}, reward=spec) is None
    assert fuse_signals(SIGNALS, "weighted_mean", {"clicked": 10, "rated": 0}, reward=spec) is None
    assert fuse_signals(SIGNALS, "weighted_mean", {"clicked": 10, "bought": 4}, reward=spec) == pytest.approx(7.0)


@pytest.mark.parametrize("fusion, expected", [
    # normalized: clicked 1.0, bought 0.4, rated 0.5 (weights 1, 1, 2)
    ("weighted_mean", 10 * (1.0 + 0.4 + 2 * 0.5) / 4),
    ("min", 4.0),
    ("product", 10 * 1.0 * 0.4 * 0.5),
])
def test_fusions_by_hand(fusion, expected):
    spec = RewardSpec.parse({"type": "continuous", "range": [0, 10]})
    fused = fuse_signals(SIGNALS, fusion, {"clicked": 10, "bought": 4, "rated": 5}, reward=spec)
    assert fused == pytest.approx(expected)
    assert spec.fuse_signals(SIGNALS, fusion, {"clicked": 10, "bought": 4, "rated": 5}) == fused


def test_fusion_maps_back_onto_a_shifted_range():
    spec = RewardSpec.parse({"type": "continuous", "range": [-1, 1]})
    config = {"a": {"weight": 1}, "b": {"weight": 3}}
    # normalized 0 and 1 -> weighted mean 3/4 -> -1 + 2 * 3/4
    assert fuse_signals(config, "weighted_mean", {"a": -1, "b": 1}, reward=spec) == pytest.approx(0.5)
    assert fuse_signals(config, "min", {"a": -1, "b": 1}, reward=spec) == -1.0
    assert fuse_signals(config, "product", {"a": 0, "b": 0}, reward=spec) == pytest.approx(-0.5)


def test_bernoulli_signals_fuse_as_and():
    spec = RewardSpec()
    config = {"a": {}, "b": {}}
    for a, b in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        assert fuse_signals(config, "min", {"a": a, "b": b}, reward=spec) == float(a and b)
        assert fuse_signals(config, "product", {"a": a, "b": b}, reward=spec) == float(a and b)
    with pytest.raises(InvalidConfig, match="weighted_mean cannot fuse bernoulli"):
        fuse_signals(config, "weighted_mean", {"a": 1, "b": 1}, reward=spec)


def test_fusion_refusals():
    spec = RewardSpec.parse({"type": "continuous", "range": [0, 10]})
    with pytest.raises(InvalidReward, match="unknown signals 'viewed' \\(known: "):
        fuse_signals(SIGNALS, "min", {"viewed": 1}, reward=spec)
    with pytest.raises(InvalidReward, match=r"signal 'bought': reward 11 outside the range \[0.0, 10.0\]"):
        fuse_signals(SIGNALS, "min", {"clicked": 1, "bought": 11}, reward=spec)
    with pytest.raises(InvalidReward, match="signal 'clicked': reward must be finite"):
        fuse_signals(SIGNALS, "min", {"clicked": math.nan, "bought": 1}, reward=spec)
    with pytest.raises(InvalidReward, match="signals must be a mapping"):
        fuse_signals(SIGNALS, "min", [("clicked", 1)], reward=spec)
    with pytest.raises(InvalidConfig, match="feedback.fusion must be one of"):
        fuse_signals(SIGNALS, "max", {"clicked": 1}, reward=spec)
    with pytest.raises(InvalidConfig, match="at least one signal"):
        fuse_signals({}, "min", {}, reward=spec)


def test_fusion_with_parsed_learning_config():
    config = LearningConfig.parse({"feedback": {"fusion": "weighted_mean", "signals": {
        "clicked": {"weight": 1}, "rated": {"weight": 3, "required": False}}}})
    spec = RewardSpec.parse({"type": "continuous", "range": [0, 1]})
    signals, fusion = config.feedback.signals, config.feedback.fusion
    assert spec.fuse_signals(signals, fusion, {"rated": 1}) is None
    assert spec.fuse_signals(signals, fusion, {"clicked": 0}) == 0.0
    assert spec.fuse_signals(signals, fusion, {"clicked": 0, "rated": 1}) == pytest.approx(0.75)
    # The same through to_dict(), the plain form a capsule keeps.
    plain = config.to_dict()["feedback"]["signals"]
    assert spec.fuse_signals(plain, fusion, {"clicked": 0, "rated": 1}) == pytest.approx(0.75)


@settings(deadline=None, max_examples=100)
@given(st.floats(-1e6, 1e6), st.floats(1e-3, 1e6), st.lists(st.floats(0, 1), min_size=1, max_size=5),
       st.sampled_from(["weighted_mean", "min", "product"]))
def test_fused_rewards_stay_in_the_range(low, width, shares, fusion):
    spec = RewardSpec.parse({"type": "continuous", "range": [low, low + width]})
    high = spec.high
    config = {f"s{i}": {"weight": i + 1} for i in range(len(shares))}
    signals = {f"s{i}": min(low + share * width, high) for i, share in enumerate(shares)}
    fused = fuse_signals(config, fusion, signals, reward=spec)
    assert low <= fused <= high
    spec.check(fused)
