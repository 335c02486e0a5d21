"""Shadow mode: a capsule that only suggests, while the caller's own policy acts.

The caller reports, with each outcome, the option it took and the probability its policy
had of taking it. Learning credits that option, and the meta-bandit weighs its candidates
by that propensity, so what the capsule learns is unbiased whatever it suggested. The
world here is a seeded Bernoulli bandit whose best option is known; the logging policy
picks uniformly at random, so a capsule that credited its suggestions instead (or ignored
the propensity) would learn the logging policy's average, not the best option.
"""

from __future__ import annotations

import math
import random

import pytest
from syntra_core.wal import scan

from syntra import Engine
from syntra.errors import InvalidConfig, InvalidFeedback, InvalidReward
from syntra.store.logs import read_log
from syntra.store.records import FeedbackRecord, RecordType
from syntra.verify import verify_store

NAME = "tenants/acme/jobs/shadow/capsules/router"
OPTIONS = ["o0", "o1", "o2", "o3"]
MEANS = [0.2, 0.3, 0.7, 0.4]          # o2 is best; the uniform logging policy averages 0.4
BEST = "o2"
FAST = {"durability": "none"}


def install(engine, **kwargs):
    return engine.install(NAME, options=OPTIONS, shadow=True, **kwargs)


def drive(cap, steps: int, seed: int = 5, contexts=("k",)) -> None:
    """Decide, then act as a uniform logging policy would and report what it took."""
    world = random.Random(seed)
    for _ in range(steps):
        key = world.choice(contexts)
        d = cap.decide(key)
        taken = world.randrange(len(OPTIONS))
        reward = float(world.random() < MEANS[taken])
        cap.feedback(d.decision_id, reward, taken_option=OPTIONS[taken], taken_propensity=1 / len(OPTIONS))


@pytest.mark.parametrize("learning", [None, {}], ids=["plain-thompson", "auto"])
def test_a_shadow_capsule_fed_by_a_uniform_logger_learns_the_best_option(learning):
    cap = install(Engine.memory(seed=3), **({} if learning is None else {"learning": learning}))
    assert cap.shadow and cap.config["shadow"] is True
    drive(cap, 2400)
    context = cap.report()["contexts"]["k"]
    # Each option was credited what the logger took: about a quarter each, not the suggestions.
    assert all(500 <= pulls <= 700 for pulls in context["pulls"].values()), context["pulls"]
    assert context["best_option"] == BEST
    suggestions = [cap.decide("k").option for _ in range(200)]
    assert suggestions.count(BEST) >= 180


def test_the_meta_bandit_values_its_candidates_off_policy_with_the_taken_propensity():
    cap = install(Engine.memory(seed=3), learning={})
    drive(cap, 3000)
    candidates = cap.report()["candidates"]
    # Every candidate has converged on o2 (mean 0.7): importance weighting by the logger's
    # propensity estimates that value, not the logger's own average of 0.4.
    for name, entry in candidates.items():
        assert entry["value"] == pytest.approx(0.7, abs=0.06), (name, entry)


def test_the_propensity_is_what_the_meta_bandit_weighs_by():
    # Twin capsules, same seed, same decisions and outcomes: only the propensity the caller
    # reports differs, so their meta-bandit statistics must differ and nothing else may.
    twins = []
    for propensity in (0.25, 0.05):
        cap = install(Engine.memory(seed=9), learning={"warmup": {"feedbacks": 0}})
        world = random.Random(2)
        for _ in range(40):
            d = cap.decide("k")
            taken = world.randrange(len(OPTIONS))
            cap.feedback(d.decision_id, float(world.random() < MEANS[taken]), taken_option=OPTIONS[taken],
                         taken_propensity=propensity)
        twins.append(cap)
    first, second = (c._policy.meta.export_state() for c in twins)
    assert first["weight_sum"] != second["weight_sum"]
    assert twins[0].report()["contexts"] == twins[1].report()["contexts"]


def test_the_taken_option_is_credited_not_the_suggestion():
    for learning in (None, {"warmup": {"feedbacks": 0}}):
        cap = install(Engine.memory(seed=1), **({} if learning is None else {"learning": learning}))
        d = cap.decide("k")
        taken = OPTIONS[(d.option_index + 1) % len(OPTIONS)]
        cap.feedback(d.decision_id, 1.0, taken_option=taken, taken_propensity=0.5)
        pulls = cap.report()["contexts"]["k"]["pulls"]
        assert pulls == {o: int(o == taken) for o in OPTIONS}
        assert cap.pending == 0


@pytest.mark.parametrize("kwargs, field, message", [
    ({}, "taken_option", "must name the option"),
    ({"taken_option": "o1"}, "taken_propensity", "must give the probability"),
    ({"taken_propensity": 0.5}, "taken_option", "must name the option"),
    ({"taken_option": "o9", "taken_propensity": 0.5}, "taken_option", "not an option"),
    ({"taken_option": 1, "taken_propensity": 0.5}, "taken_option", "not an option"),
    ({"taken_option": "o1", "taken_propensity": math.nan}, "taken_propensity", r"\(0, 1\]"),
    ({"taken_option": "o1", "taken_propensity": math.inf}, "taken_propensity", r"\(0, 1\]"),
    ({"taken_option": "o1", "taken_propensity": 0.0}, "taken_propensity", r"\(0, 1\]"),
    ({"taken_option": "o1", "taken_propensity": -0.1}, "taken_propensity", r"\(0, 1\]"),
    ({"taken_option": "o1", "taken_propensity": 1.5}, "taken_propensity", r"\(0, 1\]"),
    ({"taken_option": "o1", "taken_propensity": True}, "taken_propensity", r"\(0, 1\]"),
    ({"taken_option": "o1", "taken_propensity": "0.5"}, "taken_propensity", r"\(0, 1\]"),
    ({"taken_option": "o1", "taken_propensity": 10**400}, "taken_propensity", r"\(0, 1\]"),
])
def test_a_shadow_feedback_without_a_valid_taken_action_changes_nothing(kwargs, field, message):
    engine = Engine.memory(seed=2)
    cap = install(engine, learning={})
    d = cap.decide("k")
    before = engine.state_digest()
    with pytest.raises(InvalidFeedback, match=message) as raised:
        cap.feedback(d.decision_id, 1.0, **kwargs)
    assert raised.value.field == field and isinstance(raised.value, InvalidReward)
    assert engine.state_digest() == before and cap.is_pending(d.decision_id)
    cap.feedback(d.decision_id, 1.0, taken_option="o1", taken_propensity=1)   # an int propensity is fine
    assert not cap.is_pending(d.decision_id)


@pytest.mark.parametrize("learning", [None, {}], ids=["plain", "auto"])
def test_other_capsules_refuse_a_taken_action(learning):
    engine = Engine.memory(seed=2)
    cap = engine.install(NAME, options=OPTIONS, **({} if learning is None else {"learning": learning}))
    assert not cap.shadow and "shadow" not in cap.config
    d = cap.decide("k")
    before = engine.state_digest()
    for kwargs, field in [({"taken_option": "o1"}, "taken_option"), ({"taken_propensity": 0.5}, "taken_propensity"),
                          ({"taken_option": "o1", "taken_propensity": 0.5}, "taken_option")]:
        with pytest.raises(InvalidFeedback, match="not in shadow mode") as raised:
            cap.feedback(d.decision_id, 1.0, **kwargs)
        assert raised.value.field == field
    assert engine.state_digest() == before
    cap.feedback(d.decision_id, 1.0)


def test_shadow_must_be_a_bool_and_fuses_no_signals():
    engine = Engine.memory()
    for shadow in (1, "yes", None):
        with pytest.raises(InvalidConfig, match="shadow must be True or False"):
            engine.install(NAME, options=OPTIONS, shadow=shadow)
    signals = {"feedback": {"signals": {"click": {"weight": 1, "required": True}}, "fusion": "min"}}
    with pytest.raises(InvalidConfig, match="feedback.signals cannot be used by a shadow capsule"):
        install(engine, learning=signals)
    assert NAME not in engine
    cap = install(engine, learning={})
    with pytest.raises(InvalidConfig, match="feedback.signals cannot be used by a shadow capsule"):
        cap.update_learning(signals)
    with pytest.raises(InvalidReward, match="fuses no signals"):
        cap.feedback(cap.decide("k").decision_id, 1.0, signal="click", taken_option="o1", taken_propensity=0.5)


def test_a_shadow_decision_whose_wait_ran_out_closes_without_training(tmp_path):
    engine = Engine.open(tmp_path, seed=4, **FAST)
    cap = install(engine, learning={"feedback": {"reward_wait_seconds": 3600, "default_reward": 0.0},
                                    "warmup": {"feedbacks": 0}})
    decided = [cap.decide("k") for _ in range(3)]
    cap.feedback(decided[0].decision_id, 1.0, taken_option="o3", taken_propensity=0.5)
    assert cap.expire_overdue(now_ns=2**62) == 2
    assert cap.pending == 0
    # Nobody said what the expired decisions took: only the reported one trained.
    assert cap.report()["contexts"]["k"]["pulls"] == {"o0": 0, "o1": 0, "o2": 0, "o3": 1}
    digest = engine.state_digest()
    engine.close(checkpoint=False)
    engine = Engine.open(tmp_path, **FAST)
    assert engine.state_digest() == digest
    engine.close()


@pytest.mark.parametrize("checkpoint", [False, True], ids=["replay", "checkpoint"])
def test_shadow_learning_survives_a_restart_bit_for_bit(tmp_path, checkpoint):
    engine = Engine.open(tmp_path, seed=6, **FAST)
    cap = install(engine, learning={})
    drive(cap, 300, contexts=("k", "j"))
    pending = [cap.decide("k") for _ in range(3)]   # shadow targets kept across the restart
    digest, report = engine.state_digest(), cap.report()
    engine.close(checkpoint=checkpoint)

    engine = Engine.open(tmp_path, **FAST)
    cap = engine.capsule(NAME)
    assert cap.shadow
    assert engine.state_digest() == digest and cap.report() == report
    for d in pending:
        cap.feedback(d.decision_id, 1.0, taken_option="o0", taken_propensity=0.25)
    drive(cap, 100, seed=8)
    digest, report = engine.state_digest(), cap.report()
    engine.close(checkpoint=False)

    engine = Engine.open(tmp_path, **FAST)
    assert engine.state_digest() == digest and engine.capsule(NAME).report() == report
    engine.close()
    assert verify_store(tmp_path).ok


def test_the_taken_action_is_in_the_feedback_log(tmp_path):
    engine = Engine.open(tmp_path, seed=6, **FAST)
    cap = install(engine)
    d = cap.decide("k")
    cap.feedback(d.decision_id, 1.0, taken_option="o3", taken_propensity=0.125)
    engine.close()
    rows = read_log(tmp_path, "feedback").to_pylist()
    assert len(rows) == 1 and rows[0]["decision_id"] == d.decision_id
    details = [FeedbackRecord.decode(r.payload).detail for r in scan(tmp_path / "wal")
               if r.rtype == RecordType.FEEDBACK]
    assert details == ['{"taken_option":"o3","taken_propensity":0.125}']
