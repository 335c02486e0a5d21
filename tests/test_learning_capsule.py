"""The learning layer through a capsule's public API: lifecycle, meta-bandit, contexts,
rewards, delayed feedback, drift, refusal, regimes, action shapes, config updates."""

import json
import math
import random

import numpy as np
import pytest

from syntra import Engine
from syntra.errors import (
    DuplicateFeedback,
    FailedPrecondition,
    FeedbackExpired,
    InvalidConfig,
    InvalidContext,
    InvalidReward,
    UnknownDecision,
)
from syntra.learning.meta import MetaBandit

NAME = "tenants/t/jobs/j/capsules/c"


_ENGINES = []


@pytest.fixture(autouse=True)
def _close_engines():
    """Close what each test opened: a reward wait runs a thread until its engine closes."""
    yield
    while _ENGINES:
        _ENGINES.pop().close()


def install(learning, options=("a", "b", "c"), reward=None, seed=1, **kwargs):
    engine = Engine.memory(seed=seed)
    _ENGINES.append(engine)
    return engine.install(NAME, options=list(options), reward=reward or {"type": "bernoulli"},
                          learning=learning, **kwargs)


def play(cap, means, rounds, *, seed=0, context="", features=None):
    """Bernoulli rewards with the options' ``means``; returns the options served."""
    world = random.Random(seed)
    served = []
    for _ in range(rounds):
        d = cap.decide(context, features=features(world) if features else None)
        served.append(d.option_index)
        cap.feedback(d.decision_id, 1.0 if world.random() < means[d.option_index] else 0.0)
    return served


def pulls(cap, context=""):
    return dict(cap.report()["contexts"][context]["pulls"])


# --- lifecycle ------------------------------------------------------------------------------


def test_warmup_is_uniform_then_hands_over_to_the_initial_candidate():
    cap = install({"warmup": {"feedbacks": 12}})
    assert cap.lifecycle == "warmup" and cap.report()["warmup_remaining"] == 12
    decisions = [cap.decide("") for _ in range(12)]
    assert all(d.propensity == pytest.approx(1 / 3) for d in decisions)
    for d in decisions[:11]:
        cap.feedback(d.decision_id, 1.0)
    assert cap.lifecycle == "warmup"
    cap.feedback(decisions[11].decision_id, 0.0)
    report = cap.report()
    assert cap.lifecycle == "active" and report["reward_kind"] == "binary"
    assert report["initial_candidate"] == "thompson"


@pytest.mark.parametrize("reward, values, kind, initial", [
    ({"type": "continuous", "range": [0, 10]}, [2.5, 7.0, 3.3, 9.1], "continuous", "gaussian_thompson"),
    ({"type": "sparse", "range": [0, 10]}, [0, 0, 0, 0, 0, 0, 0, 0, 0, 4.0], "sparse", "thompson"),
    # Binary rewards under a continuous spec: Beta-Thompson, if it is a candidate.
    ({"type": "continuous", "range": [0, 1]}, [0, 1, 1, 0], "binary", "thompson"),
])
def test_warmup_characterizes_the_rewards(reward, values, kind, initial):
    cap = install({"warmup": {"feedbacks": 20},
                   "candidates": ["gaussian_thompson", "ucb1", "thompson"]}, reward=reward)
    for i in range(20):
        cap.feedback(cap.decide("").decision_id, float(values[i % len(values)]))
    report = cap.report()
    assert report["lifecycle"] == "active" and report["reward_kind"] == kind
    assert report["initial_candidate"] == initial


def test_frozen_serves_logs_and_learns_nothing_until_unfrozen():
    cap = install({"warmup": {"feedbacks": 0}})
    play(cap, [0.1, 0.2, 0.9], 300)
    before = pulls(cap)
    cap.freeze()
    assert cap.lifecycle == "frozen"
    with pytest.raises(FailedPrecondition):
        cap.freeze()
    served = play(cap, [0.1, 0.2, 0.9], 200, seed=1)
    assert pulls(cap) == before and cap.pending == 0          # recorded, not trained
    assert np.bincount(served, minlength=3).argmax() == 2        # still serving what it learned
    cap.unfreeze()
    assert cap.lifecycle == "active"
    with pytest.raises(FailedPrecondition):
        cap.unfreeze()
    play(cap, [0.1, 0.2, 0.9], 50, seed=2)
    assert sum(pulls(cap).values()) == sum(before.values()) + 50


def test_a_plain_capsule_can_be_frozen_too():
    cap = Engine.memory().install(NAME, options=["a", "b"])
    d = cap.decide("k")
    cap.freeze()
    cap.feedback(d.decision_id, 1.0)
    assert pulls(cap, "k") == {"a": 0, "b": 0}
    cap.unfreeze()
    d = cap.decide("k")
    cap.feedback(d.decision_id, 1.0)
    assert sum(pulls(cap, "k").values()) == 1


# --- meta-bandit ------------------------------------------------------------------------------


class FixedPolicy:
    """A candidate that always plays its arm (with a little spread)."""

    def __init__(self, arm, arms=4, spread=0.04):
        self.p = np.full(arms, spread / (arms - 1))
        self.p[arm] = 1 - spread


@pytest.mark.parametrize("method", ["exp3ix", "thompson"])
@pytest.mark.parametrize("estimator", ["ips", "snips"])
def test_the_meta_bandit_converges_to_the_clear_winner_and_keeps_its_floor(method, estimator):
    means = [0.2, 0.3, 0.8, 0.4]
    candidates = [FixedPolicy(0), FixedPolicy(2), FixedPolicy(3)]   # the second plays the best arm
    meta = MetaBandit(["low", "best", "mid"], method=method, estimator=estimator, exploration_floor=0.06, seed=3)
    world = np.random.default_rng(5)
    for _ in range(3000):
        shares = np.array(meta.shares())
        mixture = shares @ np.array([c.p for c in candidates])
        arm = world.choice(4, p=mixture)
        reward = float(world.random() < means[arm])
        meta.observe([c.p[arm] for c in candidates], mixture[arm], reward)
    shares = meta.shares()
    assert shares[1] > 0.9 and min(shares) >= 0.06 / 3 - 1e-12 and math.isclose(sum(shares), 1.0)
    values = meta.values()
    assert values[1] == pytest.approx(0.8 * 0.96 + 0.04 / 3 * (0.2 + 0.3 + 0.4), abs=0.06)


def test_meta_bandit_settings_are_checked():
    with pytest.raises(ValueError, match="meta.weight_cap"):
        MetaBandit(["a"], weight_cap=0.5)
    with pytest.raises(ValueError, match="meta.exploration_floor"):
        MetaBandit(["a"], exploration_floor=0.9)
    with pytest.raises(ValueError, match="logging probability"):
        MetaBandit(["a"]).observe([1.0], 0.0, 1.0)


def test_auto_reports_every_candidate_and_learns_the_best_option():
    cap = install({})
    play(cap, [0.1, 0.3, 0.7], 1500)
    report = cap.report()
    candidates = report["candidates"]
    assert set(candidates) == {"thompson", "greedy", "epsilon_greedy"}
    assert math.isclose(sum(c["share"] for c in candidates.values()), 1.0)
    assert sum(c["trials"] for c in candidates.values()) == 1500 - 30   # served after the warmup
    assert all(c["share"] >= 0.05 / 3 - 1e-12 and c["value"] is not None for c in candidates.values())
    assert report["contexts"][""]["best_option"] == "c"


def test_a_decision_propensity_is_the_mixture_probability_exactly():
    cap = install({"warmup": {"feedbacks": 0}, "candidates": ["thompson", "greedy"]}, options=("a", "b"))
    play(cap, [0.2, 0.6], 200)
    counts = np.zeros(2)
    draws = 4000
    props = {}
    state = cap._policy.export_state(), cap._learner.export_state()
    for _ in range(draws):
        # Deciding without feedback changes no statistics the distribution depends on.
        d = cap.decide("")
        counts[d.option_index] += 1
        props[d.option_index] = d.propensity
    freq = counts / draws
    for arm, p in props.items():
        assert abs(freq[arm] - p) < 4.5 * math.sqrt(p * (1 - p) / draws) + 1e-9
    assert state[1]["table"] == cap._learner.export_state()["table"]


# --- contexts -----------------------------------------------------------------------------------

FEATURES = {"contextSpec": {"kind": "features", "features": {
    "load": {"type": "continuous", "range": [0, 100]},
    "hour": {"type": "cyclic", "period": 24},
    "plan": {"type": "categorical", "values": ["free", "pro"]},
    "beta": {"type": "boolean"}}}}
GOOD = {"load": 50, "hour": 3, "plan": "pro", "beta": True}


@pytest.mark.parametrize("features, message", [
    ({k: v for k, v in GOOD.items() if k != "hour"}, "hour"),
    ({**GOOD, "colour": 1}, "colour"),
    ({**GOOD, "load": float("nan")}, "load"),
    ({**GOOD, "load": float("inf")}, "load"),
    ({**GOOD, "plan": "gold"}, "plan"),
    ({**GOOD, "beta": 1}, "beta"),
    (None, "features"),
])
def test_bad_features_are_refused_by_name_and_change_nothing(features, message):
    cap = install({**FEATURES, "algorithm": "linucb"})
    with pytest.raises(InvalidContext, match=message):
        cap.decide(features=features)
    assert cap.decisions == 0 and cap.pending == 0


def test_linucb_learns_a_feature_dependent_best_option():
    spec = {"contextSpec": {"kind": "features", "features": {"x": {"type": "continuous", "range": [0, 1]}}},
            "algorithm": "linucb", "warmup": {"feedbacks": 0}, "drift": {"enabled": False}}
    cap = install(spec, options=("left", "right"))
    world = random.Random(4)
    late = []
    for i in range(1500):
        x = world.random()
        d = cap.decide(features={"x": x})
        best = 0 if x < 0.5 else 1
        if i >= 1000:
            late.append(d.option_index == best)
        cap.feedback(d.decision_id, 1.0 if world.random() < (0.8 if d.option_index == best else 0.2) else 0.0)
    assert sum(late) / len(late) > 0.8


def test_a_discrete_capsule_refuses_features():
    cap = install({})
    with pytest.raises(InvalidContext, match="discrete"):
        cap.decide("k", features={"x": 1})


# --- rewards and feedback ------------------------------------------------------------------------


def test_components_combine_into_the_reward_and_bad_ones_change_nothing():
    reward = {"type": "continuous", "components": {
        "quality": {"weight": 3, "normalize": "minmax", "range": [1, 5]},
        "latency_ms": {"weight": 1, "normalize": "budget", "budget": 800}}}
    cap = install({"warmup": {"feedbacks": 0}}, reward=reward)
    d = cap.decide("")
    for components, message in [({"quality": 9, "latency_ms": 1}, "quality"),
                                ({"quality": 4}, "latency_ms"),
                                ({"quality": 4, "latency_ms": float("nan")}, "latency_ms"),
                                ({"quality": 4, "latency_ms": 2, "x": 1}, "unknown")]:
        with pytest.raises(InvalidReward, match=message):
            cap.feedback(d.decision_id, components=components)
    assert cap.is_pending(d.decision_id)
    with pytest.raises(InvalidReward, match="not both"):
        cap.feedback(d.decision_id, 0.5, components={"quality": 4, "latency_ms": 200})
    cap.feedback(d.decision_id, components={"quality": 4, "latency_ms": 200})
    table = cap._learner.table
    assert float(table.reward_sums("").sum()) == pytest.approx(0.75)


@pytest.mark.parametrize("reward", [float("nan"), float("inf"), -0.5, 1.5, 0.5, "1", None])
def test_a_bad_reward_is_refused_and_changes_nothing(reward):
    cap = install({})
    d = cap.decide("")
    state = cap._policy.export_state(), cap._learner.export_state()
    with pytest.raises(InvalidReward):
        cap.feedback(d.decision_id, reward)
    assert (cap._policy.export_state(), cap._learner.export_state()) == state


def test_delayed_duplicate_and_unknown_feedback():
    cap = install({"warmup": {"feedbacks": 5}})
    first = cap.decide("")
    play(cap, [0.5, 0.5, 0.5], 5000)
    cap.feedback(first.decision_id, 1.0)              # lookup works at any age
    with pytest.raises(DuplicateFeedback):
        cap.feedback(first.decision_id, 1.0)
    state = cap._policy.export_state(), cap._learner.export_state()
    for unknown in ["ffffffffffffffff-" + first.decision_id[17:], "0" * 16 + "-" + "1" * 16, "nonsense", 7]:
        with pytest.raises(UnknownDecision):
            cap.feedback(unknown, 1.0)
    assert (cap._policy.export_state(), cap._learner.export_state()) == state


def test_a_decision_that_waits_too_long_gets_the_default_reward_once():
    cap = install({"warmup": {"feedbacks": 0}, "feedback": {"reward_wait_seconds": 60, "default_reward": 0.0}})
    old = cap.decide("")
    young = cap.decide("")
    now = cap._policy.pending[young.sequence].ts_ns
    assert cap.expire_overdue(now) == 0
    assert cap.expire_overdue(now + 30 * 10**9) == 0
    wait_over = cap._policy.pending[old.sequence].ts_ns + 60 * 10**9
    assert cap.expire_overdue(max(wait_over, now + 60 * 10**9)) == 2
    assert cap.pending == 0 and sum(pulls(cap).values()) == 2
    with pytest.raises(FeedbackExpired, match="default reward"):
        cap.feedback(old.decision_id, 1.0)
    assert cap.expire_overdue(now + 10**12) == 0
    assert float(cap._learner.table.reward_sums("").sum()) == 0.0


def test_the_engine_gives_overdue_decisions_their_default_on_its_own():
    engine = Engine.memory()
    cap = engine.install(NAME, options=["a", "b"], learning={
        "warmup": {"feedbacks": 0}, "feedback": {"reward_wait_seconds": 0.05, "default_reward": 1.0}})
    d = cap.decide("")
    import time
    deadline = time.monotonic() + 10
    while cap.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    engine.close()
    assert cap.pending == 0 and float(cap._learner.table.reward_sums("").sum()) == 1.0
    with pytest.raises(FeedbackExpired):
        cap.feedback(d.decision_id, 0.0)


def test_signals_fuse_once_every_required_one_arrived():
    cap = install({"warmup": {"feedbacks": 0}, "feedback": {"signals": {
        "clicked": {"weight": 1, "required": True}, "bought": {"weight": 3, "required": True}}}},
        reward={"type": "continuous", "range": [0, 1]})
    d = cap.decide("")
    cap.feedback(d.decision_id, 1.0, signal="clicked")
    assert cap.is_pending(d.decision_id) and sum(pulls(cap).values()) == 0
    with pytest.raises(DuplicateFeedback):
        cap.feedback(d.decision_id, 1.0, signal="clicked")
    with pytest.raises(InvalidReward, match="unknown signal"):
        cap.feedback(d.decision_id, 1.0, signal="viewed")
    cap.feedback(d.decision_id, 0.0, signal="bought")
    assert not cap.is_pending(d.decision_id)
    assert float(cap._learner.table.reward_sums("").sum()) == pytest.approx(0.25)


# --- drift -----------------------------------------------------------------------------------------


def test_capsule_drift_returns_to_warmup_and_keeps_learning():
    cap = install({"warmup": {"feedbacks": 20}, "algorithm": "thompson"})
    play(cap, [0.1, 0.2, 0.9], 1500)
    assert cap.report()["drift_events"] == []
    play(cap, [0.9, 0.2, 0.1], 1500, seed=9)
    events = cap.report()["drift_events"]
    assert events and events[0]["scope"] == "capsule" and events[0]["to"] == "warmup"
    assert events[0]["sequence"] - 1500 < 400        # detected within a bounded delay
    assert cap.report()["contexts"][""]["best_option"] == "a"


def test_context_drift_resets_that_context_only():
    learning = {"warmup": {"feedbacks": 0}, "algorithm": "thompson",
                "drift": {"capsule_delta": 1e-12, "context_delta": 0.002}}
    cap = install(learning, options=("a", "b"))
    play(cap, [0.1, 0.9], 800, context="eu")
    play(cap, [0.1, 0.9], 800, context="us")
    us_before = pulls(cap, "us")
    play(cap, [0.9, 0.1], 600, context="eu", seed=3)
    events = [e for e in cap.report()["drift_events"] if e["scope"] == "context"]
    assert events and all(e["context"] == "eu" for e in events)
    assert pulls(cap, "us") == us_before
    assert sum(pulls(cap, "eu").values()) < 800 + 600


def test_drift_detection_can_be_off():
    cap = install({"warmup": {"feedbacks": 20}, "drift": {"enabled": False}})
    play(cap, [0.1, 0.2, 0.9], 800)
    play(cap, [0.9, 0.2, 0.1], 800, seed=9)
    assert cap.report()["drift_events"] == []


# --- refusal ------------------------------------------------------------------------------------------


def test_refusal_flags_out_of_distribution_features_and_refused_feedback_does_not_train():
    spec = {"contextSpec": {"kind": "features", "features": {
        "x": {"type": "continuous", "range": [0, 100], "clip": False},
        "y": {"type": "continuous", "range": [0, 100], "clip": False}}},
        "refusal": {"enabled": True, "ood_threshold": 4.0}, "warmup": {"feedbacks": 0}}
    cap = install(spec, options=("a", "b"))
    world = np.random.default_rng(1)
    refused = 0
    for _ in range(300):
        d = cap.decide(features={"x": float(world.normal(50, 2)), "y": float(world.normal(50, 2))})
        refused += d.refused
        cap.feedback(d.decision_id, float(world.random() < 0.5))
    # A Mahalanobis distance over 4 in 2-D is a ~3e-4 event once the estimate settles.
    assert refused <= 6
    trained = sum(int(cap._learner.table.pulls(k).sum()) for k in cap._learner.table.contexts)
    assert cap.report()["refusals"] == ({"ood": refused} if refused else {})
    far = cap.decide(features={"x": 99.0, "y": 1.0})
    assert far.refused and far.refusal == "ood" and far.decision_id is not None
    assert far.confidence["oodScore"] > 4.0 and far.confidence["coverage"] == 0.9
    cap.feedback(far.decision_id, 1.0)
    assert not cap.is_pending(far.decision_id)
    assert sum(int(cap._learner.table.pulls(k).sum()) for k in cap._learner.table.contexts) == trained
    assert cap.report()["refusals"] == {"ood": refused + 1}


def test_refusal_says_when_the_interval_is_too_wide():
    spec = {"refusal": {"enabled": True, "max_interval_width": 0.5, "min_calibration": 50},
            "warmup": {"feedbacks": 0}}
    cap = install(spec, options=("a", "b"), reward={"type": "continuous", "range": [0, 1]})
    world = np.random.default_rng(2)
    refused = 0
    for _ in range(400):
        d = cap.decide("k")
        refused += d.refused
        if d.refused:
            assert d.refusal == "interval_too_wide" and d.confidence["intervalWidth"] > 0.5
        cap.feedback(d.decision_id, float(world.random()))   # uniform noise: wide intervals
    assert refused > 0


# --- regimes and floors ------------------------------------------------------------------------------


def test_an_anomalous_request_raises_the_floor_and_excludes_weak_options():
    # A 1 bps step keeps the floor near support's day-one 5500 bps (it drifts a few hundred
    # down as successes outnumber failures), so the test sees the anomaly's raise.
    spec = {"warmup": {"feedbacks": 0}, "algorithm": "epsilon_greedy", "settings": {"epsilon": 0.5},
            "regimes": {"enabled": True, "metric": "latency_ms", "domain": "support", "z_threshold": 3.0,
                        "step_bps": 1, "anomaly_raise_bps": 2500}}
    cap = install(spec, options=("weak", "strong"))
    world = np.random.default_rng(3)
    served = set()
    for _ in range(400):
        d = cap.decide("k", metrics={"latency_ms": float(world.normal(100, 5))})
        served.add(d.option)
        cap.feedback(d.decision_id, float(world.random() < (0.9 if d.option == "strong" else 0.6)))
    assert served == {"weak", "strong"}   # weak (~6000 bps) clears the normal floor
    with pytest.raises(InvalidContext, match="latency_ms"):
        cap.decide("k")
    # An anomaly adds 2500 bps to the floor (~5300 by now): ~7800 > weak's ~6000.
    before = cap.report()["regimes"]["k"]["anomalies"]
    # A few: each anomalous value joins the regime's statistics and widens them.
    served = {cap.decide("k", metrics={"latency_ms": 1000.0}).option for _ in range(8)}
    assert served == {"strong"}
    assert cap.report()["regimes"]["k"]["anomalies"] == before + 8


# --- action shapes --------------------------------------------------------------------------------------


def test_continuous_actions_return_the_bucket_value():
    cap = Engine.memory().install(NAME, learning={"actions": {"kind": "continuous", "range": [0, 1], "buckets": 4},
                                                  "warmup": {"feedbacks": 0}})
    assert cap.options == ("0.125", "0.375", "0.625", "0.875")
    world = random.Random(0)
    for _ in range(800):
        d = cap.decide("")
        assert d.value == float(d.option)
        cap.feedback(d.decision_id, 1.0 if world.random() < 1 - abs(d.value - 0.6) else 0.0)
    assert cap.report()["contexts"][""]["best_option"] == "0.625"


@pytest.mark.parametrize("credit", ["full", "discounted"])
def test_hierarchical_decisions_learn_every_level(credit):
    learning = {"warmup": {"feedbacks": 0}, "actions": {"kind": "hierarchical", "credit": credit, "levels": [
        {"name": "tier", "options": ["small", "large"]}, {"name": "style", "options": ["terse", "verbose"]}]}}
    cap = Engine.memory(seed=2).install(NAME, learning=learning)
    means = {"small/terse": 0.2, "small/verbose": 0.3, "large/terse": 0.4, "large/verbose": 0.85}
    world = random.Random(1)
    for _ in range(1200):
        d = cap.decide("k")
        tier, style = d.option.split("/")
        cap.feedback(d.decision_id, 1.0 if world.random() < means[d.option] else 0.0)
    levels = cap.report()["levels"]
    assert levels["tier"]["k|"]["large"] > levels["tier"]["k|"]["small"]
    assert cap.report()["contexts"]["k"]["best_option"] == "large/verbose"
    sums = cap._policy.hierarchy.tables[0].reward_sums("k|").sum()
    leaf_sum = cap._learner.table.reward_sums("k").sum()
    if credit == "full":
        assert sums == leaf_sum
    else:
        assert sums == pytest.approx(0.5 * leaf_sum)


# --- config ---------------------------------------------------------------------------------------------


def test_update_learning_replaces_the_config_atomically_and_keeps_what_fits():
    cap = install({"warmup": {"feedbacks": 10}})
    play(cap, [0.1, 0.2, 0.9], 300)
    learned = cap._learner.export_state()["table"]
    with pytest.raises(InvalidConfig, match="meta.exploration_floor"):
        cap.update_learning({"meta": {"exploration_floor": 2}})
    with pytest.raises(InvalidConfig, match="contextSpec"):
        cap.update_learning(FEATURES)
    assert cap.learning["meta"]["exploration_floor"] == 0.05
    cap.update_learning({"meta": {"exploration_floor": 0.2}, "warmup": {"feedbacks": 10}})
    assert cap.learning["meta"]["exploration_floor"] == 0.2 and cap.lifecycle == "active"
    assert cap._learner.export_state()["table"] == learned
    assert min(c["share"] for c in cap.report()["candidates"].values()) >= 0.05 - 1e-12
    cap.update_learning({"algorithm": "ucb1", "warmup": {"feedbacks": 10}})
    assert cap.report()["algorithm"] == "ucb1" and list(cap.report()["candidates"]) == ["ucb1"]
    play(cap, [0.1, 0.2, 0.9], 50)


def test_install_checks_the_learning_config_by_field():
    with pytest.raises(InvalidConfig, match="drift.capsule_delta"):
        install({"drift": {"capsule_delta": 0}})
    with pytest.raises(InvalidConfig, match="linucb"):
        install({"algorithm": "linucb"})
    with pytest.raises(InvalidConfig, match="optionFeatures"):
        install({**FEATURES, "optionFeatures": {"zzz": [1.0]}})


def test_the_regime_floor_feeds_the_budget_kernels_quality_gate():
    engine = Engine.memory(seed=5)
    engine.budget.open_account("llm", 1_000_000)
    costs = {"small": 1_000, "medium": 4_000, "large": 9_000}
    cap = engine.install(NAME, options=list(costs), reward={"type": "continuous", "range": [0, 1]},
                         budget={"account": "llm", "costs": costs},
                         learning={"algorithm": "thompson", "warmup": {"feedbacks": 0}, "drift": {"enabled": False},
                                   "regimes": {"enabled": True, "metric": "latency_ms", "domain": "support",
                                               "step_bps": 1, "anomaly_raise_bps": 3000}})
    quality = {"small": 0.6, "medium": 0.3, "large": 0.95}
    world = random.Random(0)
    for _ in range(300):
        d = cap.decide("k", metrics={"latency_ms": 100.0 + world.random()})
        cap.feedback(d.decision_id, quality[d.option], cost=0)
    # Leave funds for the small option only: the rule's choice (large) must be swapped.
    engine.budget.reserve("llm", engine.budget.available("llm") - 2_000, 3600)
    normal = cap.decide("k", metrics={"latency_ms": 100.5})
    assert normal.option == "small" and normal.substituted_for == "large"   # 6000 bps clears ~5500
    cap.feedback(normal.decision_id, 0.6, cost=0)
    anomalous = cap.decide("k", metrics={"latency_ms": 5000.0})
    # The floor is now ~8500 bps: small (6000) may not substitute, and nothing else fits.
    assert anomalous.refused and anomalous.refusal.startswith("budget")


def test_warmup_serves_and_calibrates_so_refuse_uncalibrated_can_start():
    with pytest.raises(InvalidConfig, match="refusal.refuse_uncalibrated"):
        install({"refusal": {"enabled": True, "refuse_uncalibrated": True}})   # warmup 30 < 50
    cap = install({"warmup": {"feedbacks": 60},
                   "refusal": {"enabled": True, "refuse_uncalibrated": True, "min_calibration": 50}},
                  reward={"type": "continuous", "range": [0, 1]})
    world = random.Random(5)
    for _ in range(60):
        d = cap.decide("k")
        assert not d.refused and d.confidence is not None   # warmup serves, and says how sure it is
        cap.feedback(d.decision_id, world.random())
    after = cap.decide("k")
    assert cap.lifecycle == "active" and after.refusal != "insufficient_calibration"
    assert after.confidence["calibrationSize"] >= 50


# --- what review found: each of these failed before its fix ---------------------------------------


def test_an_uninstalled_capsules_stale_reference_takes_no_operator_action(tmp_path):
    from syntra.errors import UnknownCapsule

    engine = Engine.open(tmp_path / "db", seed=1, durability="none")
    cap = engine.install(NAME, options=["a", "b"], learning={})
    engine.uninstall(NAME)
    for action in (cap.freeze, cap.unfreeze, lambda: cap.update_learning({"warmup": {"feedbacks": 3}})):
        with pytest.raises(UnknownCapsule):
            action()
    engine.close(checkpoint=False)
    Engine.open(tmp_path / "db").close()   # the log replays: it names no unknown capsule


def test_numpy_feature_values_are_logged_as_plain_values(tmp_path):
    spec = {"contextSpec": {"kind": "features", "features": {
        "x": {"type": "continuous", "range": [0, 1]}, "vip": {"type": "boolean"}}}}
    engine = Engine.open(tmp_path / "db", seed=1, durability="none")
    cap = engine.install(NAME, options=["a", "b"], learning=spec)
    for i in range(40):
        d = cap.decide(features={"x": np.float32(i / 40), "vip": np.bool_(i % 2)})
        cap.feedback(d.decision_id, np.float64(i % 2))
    digest = engine.state_digest()
    engine.close(checkpoint=False)
    with Engine.open(tmp_path / "db") as reopened:
        assert reopened.state_digest() == digest


@pytest.mark.parametrize("now_ns", [10**30, -1, 1.5, "soon", True])
def test_expire_overdue_refuses_a_bad_clock_and_changes_nothing(now_ns):
    cap = install({"feedback": {"reward_wait_seconds": 1, "default_reward": 0}})
    d = cap.decide("")
    with pytest.raises(InvalidConfig, match="now_ns"):
        cap.expire_overdue(now_ns)
    assert cap.is_pending(d.decision_id)


@pytest.mark.parametrize("update, field", [
    ({"feedback": {"reward_wait_seconds": 5, "default_reward": 5}}, "default_reward"),
    ({"algorithm": "ucb1", "settings": {"exploration": 1000}}, "exploration"),
    ({"algorithm": "ucb1", "settings": {"exploration": 10**400}}, "exploration"),
    ({"algorithm": "thompson", "settings": {"samples": 100_000}}, "samples"),
])
def test_update_learning_checks_what_install_checks(update, field):
    cap = install({}, options=[f"o{i}" for i in range(200)])
    before = cap.learning
    with pytest.raises(InvalidConfig, match=field):
        cap.update_learning(update)
    assert cap.learning == before


def test_an_empty_legacy_block_in_an_update_keeps_the_floor():
    cap = install({"meta": {"exploration_floor": 0.3}})
    cap.update_learning({"learning": {}})
    assert cap.learning["meta"]["exploration_floor"] == 0.3
    cap.update_learning({"learning": {"min_exploration": 0.1}})
    assert cap.learning["meta"]["exploration_floor"] == 0.1


def test_auto_with_one_candidate_takes_that_rules_settings():
    cap = install({"candidates": ["ucb1"], "settings": {"exploration": 0.5}})
    assert cap.learning["settings"] == {"exploration": 0.5}
    with pytest.raises(InvalidConfig, match="exploration"):
        install({"candidates": ["ucb1"], "settings": {"exploration": 1000}})


def test_signals_and_waits_added_later_handle_decisions_made_before():
    cap = Engine.memory(seed=1).install(NAME, options=["a", "b"], reward={"type": "continuous", "range": [0, 1]})
    old = cap.decide("")                      # the compiled fast path: the policy never saw it
    cap.update_learning({"feedback": {"signals": {"x": {"weight": 1}}}})
    with pytest.raises(InvalidReward, match="before this capsule fused signals"):
        cap.feedback(old.decision_id, 1.0, signal="x")
    cap.feedback(old.decision_id, 1.0)
    new = cap.decide("")
    cap.update_learning({"feedback": {"signals": None}})   # the fast path again...
    cap.feedback(new.decision_id, 0.5)                     # ...which must tell the policy
    assert cap._policy.pending == {} and cap.pending == 0


def test_a_reward_wait_turned_on_by_an_update_is_enforced():
    import time

    engine = Engine.memory()
    cap = engine.install(NAME, options=["a", "b"], learning={})
    d = cap.decide("")
    cap.update_learning({"feedback": {"reward_wait_seconds": 0.05, "default_reward": 1}})
    deadline = time.monotonic() + 10
    while cap.is_pending(d.decision_id) and time.monotonic() < deadline:
        time.sleep(0.02)
    engine.close()
    assert not cap.is_pending(d.decision_id)


def test_a_cost_goes_with_the_completing_signal_only():
    engine = Engine.memory(seed=3)
    engine.budget.open_account("llm", 1_000_000)
    cap = engine.install(NAME, options=["a", "b"], reward={"type": "continuous", "range": [0, 1]},
                         budget={"account": "llm", "costs": {"a": 100, "b": 100}},
                         learning={"feedback": {"signals": {"x": {"weight": 1}, "y": {"weight": 1}}}})
    d = cap.decide("")
    with pytest.raises(InvalidReward, match="completes"):
        cap.feedback(d.decision_id, 1.0, signal="x", cost=50)
    cap.feedback(d.decision_id, 1.0, signal="x")
    cap.feedback(d.decision_id, 0.0, signal="y", cost=50)
    assert not cap.is_pending(d.decision_id)


def test_concurrent_partial_updates_all_land():
    import threading

    cap = install({})
    barrier = threading.Barrier(2)

    def update(section, value):
        barrier.wait()
        cap.update_learning(value)

    threads = [threading.Thread(target=update, args=("meta", {"meta": {"exploration_floor": 0.2}})),
               threading.Thread(target=update, args=("drift", {"drift": {"clock": 8}}))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cap.learning["meta"]["exploration_floor"] == 0.2 and cap.learning["drift"]["clock"] == 8


def test_an_update_that_ends_warmup_is_audited(tmp_path):
    from syntra.store.records import RecordType
    from syntra_core.wal_format import scan

    engine = Engine.open(tmp_path / "db", seed=1, durability="none")
    cap = engine.install(NAME, options=["a", "b"], learning={"warmup": {"feedbacks": 50}})
    for _ in range(10):
        cap.feedback(cap.decide("").decision_id, 1.0)
    cap.update_learning({"warmup": {"feedbacks": 5}})
    assert cap.lifecycle == "active"
    engine.close()
    audits = [json.loads(r.payload) for r in scan(tmp_path / "db" / "wal") if r.rtype == RecordType.AUDIT]
    assert [a["details"]["event"] for a in audits] == ["warmup_complete"]
    assert audits[0]["details"]["reward_kind"] == "binary"


def test_a_linear_update_the_model_refuses_is_skipped_the_same_way_on_replay(tmp_path):
    spec = {"algorithm": "linucb", "warmup": {"feedbacks": 0},
            "contextSpec": {"kind": "features", "features": {"x": {"type": "continuous", "range": [0, 1]}}},
            "optionFeatures": {"a": [1e6, -1e6], "b": [-1e6, 1e6]},
            "linear": {"regularization": 1e-6}}
    engine = Engine.open(tmp_path / "db", seed=1, durability="none")
    cap = engine.install(NAME, options=["a", "b"], learning=spec)
    world = random.Random(0)
    for _ in range(30):
        d = cap.decide(features={"x": world.random()})
        cap.feedback(d.decision_id, float(world.random() < 0.5))
    assert cap.pending == 0
    digest, skipped = engine.state_digest(), cap.report()["skipped_updates"]
    assert skipped > 0   # these extremes do make the model refuse
    engine.close(checkpoint=False)
    with Engine.open(tmp_path / "db") as reopened:
        assert reopened.state_digest() == digest
        assert reopened.capsule(NAME).report()["skipped_updates"] == skipped
