"""Drift scope in capsules whose options do differently in different contexts.

A capsule-scope drift (back to warmup, everything learned discarded) must answer a change
of the capsule as a whole, not a change of the contexts an option is played in: learning
moves each option towards the contexts where it does well, which moves its pooled mean
although nothing in the world changed.
"""

import random

import pytest

from syntra import Engine
from syntra.demo import WORLDS

NAME = "tenants/t/jobs/j/capsules/c"
ANOMALY = next(world for world in WORLDS if world.example == "anomaly-routing")
# One DecideBatch of the demo: this many rounds (a decision per context each) are decided
# before their feedback arrives.
BATCH_ROUNDS = 25
# Option 0 is the best everywhere, at a rate that depends on the context; the others vary too.
SHARED_BEST = {"eu": (0.9, 0.5, 0.3), "us": (0.7, 0.6, 0.2), "apac": (0.8, 0.3, 0.5), "latam": (0.6, 0.4, 0.1)}


@pytest.fixture
def engines():
    """Engines a test opens, closed whatever happens."""
    opened = []
    try:
        yield opened
    finally:
        for engine in opened:
            engine.close()


def capsule(engines, options, seed):
    engine = Engine.memory(seed=seed)
    engines.append(engine)
    # learning={}: the default learning config (the meta-bandit, warmup, drift detection).
    return engine.install(NAME, options=list(options), reward={"type": "bernoulli"}, learning={})


def drive(cap, means, rounds, rng):
    """``rounds`` rounds of one decision per context, decided a batch at a time as the demo
    does, with Bernoulli rewards of ``means[context][option]``."""
    contexts = list(means)
    done = 0
    while done < rounds:
        batch = min(BATCH_ROUNDS, rounds - done)
        decided = [(context, cap.decide(context)) for _ in range(batch) for context in contexts]
        for context, decision in decided:
            rate = means[context][decision.option_index]
            cap.feedback(decision.decision_id, 1.0 if rng.random() < rate else 0.0)
        done += batch


def capsule_drifts(cap):
    return [e for e in cap.report()["drift_events"] if e["scope"] == "capsule"]


def test_a_stationary_world_with_context_dependent_rates_never_drifts_at_capsule_scope(engines):
    # The anomaly world's `primary` succeeds 95% of the time when healthy and 5% when a
    # dependency is down: when the capsule detectors read pooled rewards, 11 of these 40
    # runs restarted the capsule.
    restarted = []
    for seed in range(40):
        cap = capsule(engines, ANOMALY.options, seed)
        drive(cap, ANOMALY.true_means, 800, random.Random(seed))
        restarted += [(seed, e["sequence"]) for e in capsule_drifts(cap)]
        assert cap.lifecycle == "active"
    assert restarted == []


def test_a_shift_of_one_option_in_every_context_drifts_at_capsule_scope_promptly(engines):
    shifted = {context: (rates[0] - 0.5, *rates[1:]) for context, rates in SHARED_BEST.items()}
    for seed in range(6):
        cap = capsule(engines, ("a", "b", "c"), seed)
        rng = random.Random(seed)
        drive(cap, SHARED_BEST, 500, rng)
        assert cap.report()["drift_events"] == []
        change = 500 * len(SHARED_BEST)   # the first decision after the shift (sequences start at 0)
        drive(cap, shifted, 100, rng)
        events = cap.report()["drift_events"]
        assert events, f"seed {seed}: no drift detected"
        first = events[0]
        assert (first["scope"], first["option"], first["to"]) == ("capsule", "a", "warmup")
        assert 0 <= first["sequence"] - change < 200, f"seed {seed}: detected at {first['sequence']}"


def test_a_shift_in_a_single_context_capsule_still_drifts_at_capsule_scope(engines):
    before, after = {"only": (0.3, 0.8, 0.5)}, {"only": (0.3, 0.2, 0.5)}
    for seed in range(6):
        cap = capsule(engines, ("a", "b", "c"), seed)
        rng = random.Random(seed)
        drive(cap, before, 600, rng)
        assert cap.report()["drift_events"] == []
        drive(cap, after, 150, rng)
        events = cap.report()["drift_events"]
        assert events and events[0]["scope"] == "capsule" and events[0]["option"] == "b"
        assert 0 <= events[0]["sequence"] - 600 < 150


def test_a_shift_in_one_context_of_several_stays_at_context_scope(engines):
    shifted = dict(SHARED_BEST, us=(0.1, 0.6, 0.2))
    for seed in range(4):
        cap = capsule(engines, ("a", "b", "c"), seed)
        rng = random.Random(seed)
        drive(cap, SHARED_BEST, 500, rng)
        drive(cap, shifted, 150, rng)
        events = cap.report()["drift_events"]
        assert events, f"seed {seed}: no drift detected"
        assert all(e["scope"] == "context" and e["context"] == "us" for e in events), events


def test_the_detectors_mode_survives_a_restart_and_replays_bit_for_bit(tmp_path, engines):
    store = tmp_path / "store"
    engine = Engine.open(store, seed=3, durability="none")
    engines.append(engine)
    cap = engine.install(NAME, options=["a", "b", "c"], reward={"type": "bernoulli"}, learning={})
    drive(cap, SHARED_BEST, 60, random.Random(3))
    state = cap._policy.export_state()
    assert state["capsule_surprise"] is True
    engine.close()
    reopened = Engine.open(store, seed=3, durability="none")
    engines.append(reopened)
    assert reopened.capsule(NAME)._policy.export_state() == state


def test_a_state_from_before_surprises_restarts_the_capsule_windows(engines):
    cap = capsule(engines, ("a", "b", "c"), 5)
    drive(cap, SHARED_BEST, 40, random.Random(5))
    policy = cap._policy
    state = policy.export_state()
    legacy = {k: v for k, v in state.items() if k != "capsule_surprise"}
    policy.import_state(legacy)   # as a checkpoint written before this field existed
    assert policy.capsule_surprise is False and policy.capsule_detectors[0].width > 0
    drive(cap, SHARED_BEST, 1, random.Random(6))
    # Its windows held rewards, not surprises: they start again rather than mix the two.
    assert policy.capsule_surprise is True
    assert all(d.width <= len(SHARED_BEST) for d in policy.capsule_detectors)
