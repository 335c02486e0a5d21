"""Regression tests for the learning layer's review fixes, through the public API:
linear models on the [0, 1] scale, metric values refused before any state changes, bounded
waits and weights, a frozen capsule that learns nothing, drift and warmup events, the
overdue scan, and level tables reset by context drift."""

import random
import time

import pytest

from syntra import Engine
from syntra.errors import InvalidConfig, InvalidContext

NAME = "tenants/t/jobs/j/capsules/c"
FEATURES = {"kind": "features", "features": {"u": {"type": "continuous", "range": [0, 1]}}}


_ENGINES = []


@pytest.fixture(autouse=True)
def _close_engines():
    """Close what each test opened: a reward wait runs a thread until its engine closes."""
    yield
    while _ENGINES:
        _ENGINES.pop().close()


def install(learning, options=("a", "b", "c"), reward=None, seed=1):
    engine = Engine.memory(seed=seed)
    _ENGINES.append(engine)
    cap = engine.install(NAME, options=None if options is None else list(options),
                         reward=reward or {"type": "bernoulli"}, learning=learning)
    return engine, cap


# --- 1. linear models learn rewards on the [0, 1] scale ---------------------------------


@pytest.mark.parametrize("algorithm", ["linucb", "lints"])
def test_linear_models_choose_the_same_whatever_the_reward_units(algorithm):
    """The same Bernoulli world reported in [0, 1] and in [0, 1000] is the same problem:
    alpha and v are widths on the scaled reward, so the choices are identical."""
    runs = []
    for scale in (1.0, 1000.0):
        _, cap = install({"algorithm": algorithm, "contextSpec": FEATURES, "warmup": {"feedbacks": 0},
                          "drift": {"enabled": False}},
                         reward={"type": "continuous", "range": [0, scale]})
        world, served = random.Random(5), []
        for _ in range(300):
            d = cap.decide(features={"u": world.random()})
            served.append(d.option_index)
            cap.feedback(d.decision_id, scale * float(world.random() < (0.4, 0.5, 0.6)[d.option_index]))
        runs.append(served)
    assert runs[0] == runs[1]


def test_linear_model_takes_a_reward_beyond_its_raw_limit_inside_the_declared_range():
    _, cap = install({"algorithm": "linucb", "contextSpec": FEATURES, "warmup": {"feedbacks": 0},
                      "drift": {"enabled": False}}, options=("a", "b"),
                     reward={"type": "continuous", "range": [0, 1e10]})
    d = cap.decide(features={"u": 0.5})
    cap.feedback(d.decision_id, 5e9)   # the model's own limit is 1e9 in magnitude
    assert not cap.is_pending(d.decision_id)
    again = cap.decide(features={"u": 0.5})
    cap.feedback(again.decision_id, 1e10)
    assert cap.decisions == 2


@pytest.mark.parametrize("algorithm", ["linucb", "lints"])
def test_linear_prediction_is_in_reward_units(algorithm):
    """The refusal interval is built around the prediction: in reward units, it centres
    on the reward every option pays (8e9 of [0, 1e10])."""
    _, cap = install({"algorithm": algorithm, "contextSpec": FEATURES, "warmup": {"feedbacks": 0},
                      "drift": {"enabled": False},
                      "refusal": {"enabled": True, "coverage": 0.9, "window": 100, "min_calibration": 20}},
                     reward={"type": "continuous", "range": [0, 1e10]})
    world = random.Random(3)
    for _ in range(200):
        d = cap.decide(features={"u": world.random()})
        cap.feedback(d.decision_id, 8e9)
    d = cap.decide(features={"u": 0.5})
    low, high = d.confidence["intervalLow"], d.confidence["intervalHigh"]
    assert low is not None and high is not None
    assert abs((low + high) / 2 - 8e9) < 5e8 and high - low < 2e9


@pytest.mark.parametrize("regularization", [1e-300, 1e-7])
def test_linear_regularization_is_bounded(regularization):
    with pytest.raises(InvalidConfig, match="linear.regularization"):
        install({"algorithm": "linucb", "contextSpec": FEATURES, "linear": {"regularization": regularization}})


# --- 2. metric values refused before anything changes -----------------------------------


@pytest.mark.parametrize("value", [1e300, -1e16, 10**400])
def test_metric_out_of_range_is_refused_before_any_state_changes(value):
    engine, cap = install({"algorithm": "thompson", "warmup": {"feedbacks": 0}, "drift": {"enabled": False},
                           "regimes": {"enabled": True, "metric": "latency_ms", "min_samples": 2}})
    for i in range(40):
        d = cap.decide("k", metrics={"latency_ms": 100.0 + i})
        cap.feedback(d.decision_id, float(d.option == "a"))
    before = engine.state_digest()
    with pytest.raises(InvalidContext, match="metrics.latency_ms"):
        cap.decide("k", metrics={"latency_ms": value})
    assert engine.state_digest() == before
    assert cap.decide("k", metrics={"latency_ms": 1e15}).option in ("a", "b", "c")   # the bound itself is fine


# --- 3. bounded waits and weights ---------------------------------------------------------


@pytest.mark.parametrize("wait", [1e300, 1e10, 1e-300, 1e-4])
def test_reward_wait_is_bounded(wait):
    with pytest.raises(InvalidConfig, match="feedback.reward_wait_seconds"):
        install({"feedback": {"reward_wait_seconds": wait, "default_reward": 0}})
    for bound in (1e-3, 1e9):   # the bounds themselves are fine
        _, cap = install({"feedback": {"reward_wait_seconds": bound, "default_reward": 0}})
        assert cap.reward_wait_seconds == bound


@pytest.mark.parametrize("weight", [1e300, 1e7, 1e-300])
def test_signal_weights_are_bounded(weight):
    with pytest.raises(InvalidConfig, match="feedback.signals.t.weight"):
        install({"feedback": {"signals": {"s": {"weight": 1}, "t": {"weight": weight}}, "fusion": "weighted_mean"}},
                reward={"type": "continuous", "range": [0, 1]})
    _extreme_accepted_weights_fuse_to_the_weighted_mean()


@pytest.mark.parametrize("weight", [1e300, 1e7, 1e-300])
def test_reward_component_weights_are_bounded(weight):
    reward = {"components": {"q": {"weight": weight, "normalize": "minmax", "range": [0, 1]},
                             "r": {"weight": 1, "normalize": "minmax", "range": [0, 1]}}}
    with pytest.raises(InvalidConfig, match="reward.components.q.weight"):
        install({}, reward=reward)


def _extreme_accepted_weights_fuse_to_the_weighted_mean():
    """At the weight bounds (1e6 and 1e-6) the fused reward is the weighted mean."""
    _, cap = install({"feedback": {"signals": {"s": {"weight": 1e6}, "t": {"weight": 1e-6}},
                                   "fusion": "weighted_mean"}},
                     reward={"type": "continuous", "range": [0, 1]})
    d = cap.decide("k")
    cap.feedback(d.decision_id, signal="s", reward=1.0)
    cap.feedback(d.decision_id, signal="t", reward=0.0)
    assert not cap.is_pending(d.decision_id)
    mean = cap.report()["contexts"]["k"]["mean_reward"][d.option]
    assert mean == pytest.approx(1e6 / (1e6 + 1e-6), rel=1e-12)


# --- 4. frozen learns nothing --------------------------------------------------------------


def _trained_then_frozen():
    engine, cap = install({"warmup": {"feedbacks": 3}, "drift": {"enabled": False},
                           "refusal": {"enabled": True, "coverage": 0.9, "window": 30, "min_calibration": 9,
                                       "ood_threshold": 2.5},
                           "regimes": {"enabled": True, "metric": "lat", "min_samples": 3}}, options=("a", "b"))
    for i in range(20):
        d = cap.decide(f"k{i % 2}", metrics={"lat": 100.0 + i})
        cap.feedback(d.decision_id, float(d.option == "a"))
    cap.freeze()
    return engine, cap


def test_frozen_keeps_regime_statistics_and_meta_trials():
    _, cap = _trained_then_frozen()
    before = cap.report()
    for i in range(10):
        cap.decide(f"k{i % 2}", metrics={"lat": 5000.0})
        cap.decide(f"new{i}", metrics={"lat": 5000.0})
    after = cap.report()
    assert after["regimes"] == before["regimes"]
    assert {k: v["trials"] for k, v in after["candidates"].items()} == \
        {k: v["trials"] for k, v in before["candidates"].items()}


def test_frozen_regime_floor_still_sees_the_anomaly():
    """Read-only, the z-score still flags a wild metric: the floor is raised for it."""
    _, cap = _trained_then_frozen()
    floors = cap.report()["regimes"]["k0"]["floor_bps"]
    d = cap.decide("k0", metrics={"lat": 1e6})
    assert cap.report()["regimes"]["k0"]["anomalies"] == 0 and d.option in ("a", "b")
    assert cap.report()["regimes"]["k0"]["floor_bps"] == floors


def test_frozen_does_not_count_contexts_as_seen():
    """A never-seen key stays never seen while frozen: novelty 1.0 every time (counted, it
    would drop to the rare-key score 0.5)."""
    _, cap = _trained_then_frozen()
    scores = [cap.decide("unseen", metrics={"lat": 100.0}).confidence["oodScore"] for _ in range(3)]
    assert scores == [1.0, 1.0, 1.0]
    cap.unfreeze()
    scores = [cap.decide("unseen", metrics={"lat": 100.0}).confidence["oodScore"] for _ in range(2)]
    assert scores == [1.0, 0.5]


# --- 5. the capsule-scope drift event names the lifecycle entered -------------------------


def test_capsule_drift_event_reports_the_lifecycle_entered():
    for warmup, entered in ((0, "active"), (5, "warmup")):
        _drift_enters(warmup, entered)


def _drift_enters(warmup, entered):
    _, cap = install({"warmup": {"feedbacks": warmup}, "drift": {
        "capsule_delta": 0.3, "clock": 1, "grace_period": 2, "min_window": 1}}, options=("a", "b"))
    for i in range(200):
        d = cap.decide("k")
        cap.feedback(d.decision_id, 1.0 if i < 100 else 0.0)
        events = [e for e in cap.report()["drift_events"] if e["scope"] == "capsule"]
        if events:
            break
    assert events, "no capsule drift detected"
    assert events[0]["to"] == entered == cap.lifecycle


# --- 6. the overdue scan stops at the first decision not yet due --------------------------


def _pending_capsule(n):
    _, cap = install({"warmup": {"feedbacks": 0}, "drift": {"enabled": False},
                      "feedback": {"reward_wait_seconds": 3600, "default_reward": 0}}, options=("a", "b"))
    for _ in range(n):
        cap.decide("k")
    return cap


def _fastest(fn, repeats=7):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def test_nothing_overdue_costs_the_same_however_many_are_pending():
    few, many = _pending_capsule(200), _pending_capsule(40_000)
    t_few = _fastest(few.expire_overdue)
    t_many = _fastest(many.expire_overdue)
    assert many.expire_overdue() == 0 and many.pending == 40_000
    # A full scan is ~200x the work; a scan that stops at the first entry is the same.
    assert t_many < 10 * t_few + 2e-4
    _overdue_expires_exactly_the_due_decisions()


def _overdue_expires_exactly_the_due_decisions():
    cap = _pending_capsule(0)
    first = [cap.decide("k") for _ in range(600)]
    cut = time.time_ns()
    time.sleep(0.002)
    later = [cap.decide("k") for _ in range(5)]
    assert cap.expire_overdue(cut + 3600 * 10**9) == 600
    assert not any(cap.is_pending(d.decision_id) for d in first)
    assert all(cap.is_pending(d.decision_id) for d in later)


# --- 7. an update that ends warmup finishes it as a feedback would -----------------------


def _warm(feedbacks_seen, warmup):
    _, cap = install({"warmup": {"feedbacks": warmup}})
    world = random.Random(0)
    for _ in range(feedbacks_seen):
        d = cap.decide("k")
        cap.feedback(d.decision_id, float(world.random() < 0.5))
    return cap


def test_update_that_ends_warmup_characterises_and_gives_the_head_start():
    updated = _warm(20, 30)
    assert updated.lifecycle == "warmup"
    updated.update_learning({"warmup": {"feedbacks": 0}})
    finished = _warm(20, 20)
    mine, theirs = updated.report(), finished.report()
    assert updated.lifecycle == "active"
    assert (mine["reward_kind"], mine["initial_candidate"]) == ("binary", "thompson")
    assert {k: v["share"] for k, v in mine["candidates"].items()} == \
        {k: v["share"] for k, v in theirs["candidates"].items()}


def test_update_that_ends_warmup_while_frozen_stays_frozen_then_resumes_active():
    cap = _warm(10, 30)
    cap.freeze()
    cap.update_learning({"warmup": {"feedbacks": 5}})
    assert cap.lifecycle == "frozen" and cap.report()["reward_kind"] == "binary"
    cap.unfreeze()
    assert cap.lifecycle == "active"


# --- 9. context drift resets the hierarchy's level rows of that context -------------------


def test_context_drift_resets_the_level_tables_of_its_context():
    actions = {"kind": "hierarchical", "levels": [
        {"name": "m", "options": ["s", "l"]}, {"name": "e", "options": ["lo", "hi"]}]}
    _, cap = install({"actions": actions, "warmup": {"feedbacks": 0}, "drift": {
        "capsule_delta": 1e-12, "context_delta": 0.3, "clock": 1, "grace_period": 2, "min_window": 1}},
        options=None)
    for i in range(300):
        d = cap.decide("k")
        cap.feedback(d.decision_id, 1.0 if i < 150 else 0.0)
        if any(e["scope"] == "context" for e in cap.report()["drift_events"]):
            break
    drifts = [e for e in cap.report()["drift_events"] if e["scope"] == "context"]
    assert drifts, "no context drift detected"
    levels = cap.report()["levels"]
    plays = sum(n for rows in levels.values() for key, row in rows.items() if key.startswith("k|")
                for n in row.values())
    assert plays == 0
