"""syntra.Engine and Capsule through the public in-process API."""

import math
import threading

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from syntra import (
    CapsuleExists,
    Decision,
    DuplicateFeedback,
    Engine,
    InvalidConfig,
    InvalidContext,
    InvalidName,
    InvalidReward,
    UnknownCapsule,
    UnknownDecision,
)

NAME = "tenants/acme/jobs/llm/capsules/router"
OPTIONS = ["cheap_fast", "balanced", "expensive_accurate"]


@pytest.fixture
def cap():
    return Engine.memory(seed=7).install(NAME, options=OPTIONS, reward={"type": "bernoulli"})


def test_decide_and_feedback(cap):
    d = cap.decide(context_key="support")
    assert isinstance(d, Decision)
    assert d.option == OPTIONS[d.option_index]
    assert 0.0 < d.propensity <= 1.0
    assert d.capsule == NAME and d.context_key == "support" and d.sequence == 0
    assert cap.is_pending(d.decision_id) and cap.pending == 1
    cap.feedback(d.decision_id, reward=1.0)
    assert not cap.is_pending(d.decision_id) and cap.pending == 0
    report = cap.report()
    assert report["contexts"]["support"]["pulls"][d.option] == 1
    assert report["contexts"]["support"]["mean_reward"][d.option] == 1.0
    assert report["decisions"] == 1


def test_engine_lookup_and_listing():
    eng = Engine.memory()
    first = eng.install("tenants/a/jobs/j/capsules/z", options=["x", "y"])
    second = eng.install("tenants/a/jobs/j/capsules/b", options=["x", "y"])
    assert eng.capsule("tenants/a/jobs/j/capsules/z") is first
    assert eng.capsules() == [second, first]
    assert "tenants/a/jobs/j/capsules/b" in eng
    with pytest.raises(CapsuleExists):
        eng.install("tenants/a/jobs/j/capsules/b", options=["x"])
    with pytest.raises(UnknownCapsule, match="nope"):
        eng.capsule("tenants/a/jobs/j/capsules/nope")
    with pytest.raises(InvalidName):
        eng.capsule("not a name")
    eng.uninstall("tenants/a/jobs/j/capsules/b")
    assert eng.capsules() == [first]
    with pytest.raises(UnknownCapsule):
        eng.uninstall("tenants/a/jobs/j/capsules/b")


@pytest.mark.parametrize("name", [
    "", "tenants/a/jobs/b", "tenants/a/jobs/b/capsules/", "tenants/a b/jobs/b/capsules/c",
    "tenants/a/jobs/b/capsules/c/extra", "tenants/" + "x" * 129 + "/jobs/b/capsules/c", None, 42,
])
def test_invalid_names(name):
    with pytest.raises(InvalidName):
        Engine.memory().install(name, options=["a"])


@pytest.mark.parametrize("kwargs,message", [
    ({"options": []}, "1 to 256"),
    ({"options": [f"o{i}" for i in range(257)]}, "1 to 256"),
    ({"options": ["a", "a"]}, "unique"),
    ({"options": ["a", ""]}, "1-128"),
    ({"options": "abc"}, "list"),
    ({"options": ["a", 3]}, "strings"),
    ({"options": ["a"], "reward": {"type": "poisson"}}, "reward.type"),
    ({"options": ["a"], "reward": {"type": "continuous"}}, "reward.range"),
    ({"options": ["a"], "reward": {"type": "continuous", "range": [1, 1]}}, "low < high"),
    ({"options": ["a"], "reward": {"type": "continuous", "range": [0, math.inf]}}, "finite"),
    ({"options": ["a"], "reward": {"type": "bernoulli", "range": [0, 1]}}, "no range"),
    ({"options": ["a"], "reward": {"typo": 1}}, "unknown fields"),
    ({"options": ["a"], "algorithm": "magic"}, "algorithm"),
    ({"options": ["a"], "settings": {"exploration": 1.0}}, "unknown thompson settings"),
    ({"options": ["a"], "settings": {"samples": 0}}, "samples"),
    ({"options": ["a"], "algorithm": "ucb1", "settings": {"exploration": -1}}, "exploration"),
])
def test_invalid_configs(kwargs, message):
    with pytest.raises(InvalidConfig, match=message):
        Engine.memory().install(NAME, **kwargs)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True])
def test_invalid_seed(seed):
    with pytest.raises(InvalidConfig, match="seed"):
        Engine(seed=seed)


@pytest.mark.parametrize("context", [None, 3, b"bytes", "x" * 257])
def test_invalid_context(cap, context):
    with pytest.raises(InvalidContext):
        cap.decide(context)
    assert cap.decisions == 0


@pytest.mark.parametrize("reward,exc,message", [
    (float("nan"), InvalidReward, "finite"),
    (float("inf"), InvalidReward, "finite"),
    (0.5, InvalidReward, "0 or 1"),
    (2.0, InvalidReward, "outside"),
    ("1", InvalidReward, "number"),
    (None, InvalidReward, "needs reward="),
])
def test_invalid_reward_changes_nothing(cap, reward, exc, message):
    d = cap.decide("k")
    with pytest.raises(exc, match=message):
        cap.feedback(d.decision_id, reward)
    assert cap.is_pending(d.decision_id)
    assert sum(cap.report()["contexts"]["k"]["pulls"].values()) == 0
    cap.feedback(d.decision_id, 0.0)  # a corrected reward is still accepted
    assert sum(cap.report()["contexts"]["k"]["pulls"].values()) == 1


def test_duplicate_feedback_is_applied_once(cap):
    d = cap.decide("k")
    cap.feedback(d.decision_id, 1.0)
    with pytest.raises(DuplicateFeedback, match=d.decision_id):
        cap.feedback(d.decision_id, 1.0)
    assert cap.report()["contexts"]["k"]["pulls"][d.option] == 1


def test_unknown_decisions(cap):
    d = cap.decide("k")
    future = f"{d.sequence + 5:016x}" + d.decision_id[16:]
    for bad in [future, "nonsense", "", d.decision_id.upper(), d.decision_id + "0", 12, None]:
        with pytest.raises(UnknownDecision):
            cap.feedback(bad, 1.0)
    assert cap.is_pending(d.decision_id)
    assert not cap.is_pending(future) and not cap.is_pending(12)


def test_ids_from_another_capsule_or_install_are_unknown():
    eng = Engine.memory(seed=1)
    first = eng.install(NAME, options=OPTIONS)
    other = eng.install("tenants/acme/jobs/llm/capsules/other", options=OPTIONS)
    d = first.decide("k")
    with pytest.raises(UnknownDecision):
        other.feedback(d.decision_id, 1.0)
    eng.uninstall(NAME)
    reinstalled = eng.install(NAME, options=OPTIONS)
    with pytest.raises(UnknownDecision):
        reinstalled.feedback(d.decision_id, 1.0)


def test_ids_from_another_engine_with_the_same_seed_are_unknown():
    first = Engine.memory(seed=7).install(NAME, options=OPTIONS)
    second = Engine.memory(seed=7).install(NAME, options=OPTIONS)
    d = first.decide("k")
    second.decide("k")
    with pytest.raises(UnknownDecision):
        second.feedback(d.decision_id, 1.0)
    assert second.pending == 1


def test_an_uninstalled_capsule_refuses_work():
    eng = Engine.memory()
    cap = eng.install(NAME, options=OPTIONS)
    d = cap.decide("k")
    eng.uninstall(NAME)
    with pytest.raises(UnknownCapsule):
        cap.decide("k")
    with pytest.raises(UnknownCapsule):
        cap.feedback(d.decision_id, 1.0)
    assert cap.report()["decisions"] == 1


@pytest.mark.parametrize("settings,message", [
    ({"samples": 2.5}, "samples must be int"),
    ({"samples": True}, "samples must be int"),
    ({"samples": 2**40}, r"samples must be in \[1, 100000\]"),
    ({"samples": 10_000}, "samples x options"),
    ({"prior_a": 10**400}, r"prior_a must be in \(0"),
    ({"prior_a": True}, "prior_a must be float"),
    ({"prior_b": 0.0}, r"prior_b must be in \(0"),
    ({"max_staleness": float("nan")}, "max_staleness must be in"),
])
def test_settings_are_checked_strictly(settings, message):
    with pytest.raises(InvalidConfig, match=message):
        Engine.memory().install(NAME, options=[f"o{i}" for i in range(200)], settings=settings)


@pytest.mark.parametrize("algorithm", [["thompson"], 3, "bandit"])
def test_bad_algorithm_types(algorithm):
    with pytest.raises(InvalidConfig, match="algorithm"):
        Engine.memory().install(NAME, options=OPTIONS, algorithm=algorithm)


@pytest.mark.parametrize("bounds", [[0, 1e308], [-10**400, 0], [0, 1e13], [True, 2]])
def test_reward_ranges_are_bounded(bounds):
    with pytest.raises(InvalidConfig, match="reward.range"):
        Engine.memory().install(NAME, options=OPTIONS, reward={"type": "continuous", "range": bounds})


@pytest.mark.parametrize("reward", [True, False, 10**400, [1.0]])
def test_rewards_of_the_wrong_kind_are_refused(cap, reward):
    d = cap.decide("k")
    with pytest.raises(InvalidReward):
        cap.feedback(d.decision_id, reward)
    assert cap.is_pending(d.decision_id)


def test_numpy_rewards_are_accepted(cap):
    import numpy as np

    d = cap.decide("k")
    cap.feedback(d.decision_id, np.float64(1.0))
    assert not cap.is_pending(d.decision_id)


def test_context_keys_must_be_valid_unicode(cap):
    with pytest.raises(InvalidContext, match="Unicode"):
        cap.decide("bad\ud800")
    assert cap.decide("caf\u00e9").context_key == "caf\u00e9"


def test_report_leader_is_the_most_played_option(cap):
    lucky = cap.decide("k")
    cap.feedback(lucky.decision_id, 1.0)
    other = next(i for i in range(3) if i != lucky.option_index)
    for _ in range(500):
        d = cap.decide("k")
        if d.option_index == other:
            cap.feedback(d.decision_id, 0.0)
    pulls = cap.report()["contexts"]["k"]["pulls"]
    assert cap.report()["contexts"]["k"]["best_option"] == max(pulls, key=pulls.get)


@pytest.mark.parametrize("winner", ["cheap_fast", "balanced"])
def test_report_leader_breaks_a_tie_on_plays_by_the_higher_mean(cap, winner):
    # With no feedback yet, every decision is drawn from the same (uniform) probabilities.
    decisions = [cap.decide("k") for _ in range(600)]
    for option in ("cheap_fast", "balanced"):
        chosen = [d for d in decisions if d.option == option][:50]
        assert len(chosen) == 50
        for d in chosen:
            cap.feedback(d.decision_id, 1.0 if option == winner else 0.0)
    context = cap.report()["contexts"]["k"]
    assert context["pulls"]["cheap_fast"] == context["pulls"]["balanced"] == 50
    assert context["best_option"] == winner


def test_continuous_rewards(cap):
    eng = Engine.memory()
    c = eng.install(NAME, options=["a", "b"], reward={"type": "continuous", "range": [-5, 5]})
    d = c.decide()
    c.feedback(d.decision_id, -2.5)
    assert c.report()["contexts"][""]["mean_reward"][d.option] == -2.5
    with pytest.raises(InvalidReward, match="outside"):
        c.feedback(c.decide().decision_id, 5.5)


def _trace(seed, algorithm):
    cap = Engine.memory(seed=seed).install(NAME, options=OPTIONS, algorithm=algorithm)
    out = []
    for i in range(200):
        d = cap.decide(f"ctx{i % 3}")
        cap.feedback(d.decision_id, float(d.option_index == i % 3))
        out.append((d.sequence, d.option, d.propensity))
    return out


@pytest.mark.parametrize("algorithm", ["thompson", "ucb1"])
def test_same_seed_same_decisions(algorithm):
    assert _trace(3, algorithm) == _trace(3, algorithm)


def test_different_seed_different_decisions():
    assert [o for _, o, _ in _trace(3, "thompson")] != [o for _, o, _ in _trace(4, "thompson")]


def test_learns_the_best_option_per_context():
    cap = Engine.memory(seed=2).install(NAME, options=OPTIONS)
    best = {"faq": 0, "code": 1, "legal": 2}
    import random
    world = random.Random(1)
    for _ in range(3000):
        for context, winner in best.items():
            d = cap.decide(context)
            p = 0.7 if d.option_index == winner else 0.3
            cap.feedback(d.decision_id, 1.0 if world.random() < p else 0.0)
    report = cap.report()["contexts"]
    for context, winner in best.items():
        pulls = report[context]["pulls"]
        assert max(pulls, key=pulls.get) == OPTIONS[winner]


def test_late_feedback_in_any_order():
    cap = Engine.memory(seed=5).install(NAME, options=OPTIONS)
    decisions = [cap.decide("k") for _ in range(5000)]
    # Feedback arrives out of order, with the oldest decision last.
    for d in decisions[1:][::-1]:
        cap.feedback(d.decision_id, 1.0)
    assert cap.pending == 1 and cap.is_pending(decisions[0].decision_id)
    cap.feedback(decisions[0].decision_id, 0.0)
    assert cap.pending == 0
    for d in (decisions[0], decisions[2500], decisions[-1]):
        with pytest.raises(DuplicateFeedback):
            cap.feedback(d.decision_id, 1.0)


def test_threads_share_a_capsule_safely(cap):
    errors = []

    def worker(index):
        try:
            for i in range(2000):
                d = cap.decide(f"t{index % 2}")
                cap.feedback(d.decision_id, float(i % 2))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    report = cap.report()
    assert report["decisions"] == 8000 and report["pending"] == 0
    assert sum(sum(c["pulls"].values()) for c in report["contexts"].values()) == 8000


class LedgerMachine(RuleBasedStateMachine):
    """Any interleaving of decide and feedback matches a plain model of pending decisions."""

    def __init__(self):
        super().__init__()
        self.cap = Engine.memory(seed=11).install(NAME, options=OPTIONS)
        self.pending = {}
        self.done = set()
        self.applied = {}

    @rule(context=st.sampled_from(["a", "b"]))
    def decide(self, context):
        d = self.cap.decide(context)
        assert d.decision_id not in self.pending and d.decision_id not in self.done
        self.pending[d.decision_id] = (context, d.option)

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), reward=st.sampled_from([0.0, 1.0]))
    def feedback(self, data, reward):
        decision_id = data.draw(st.sampled_from(sorted(self.pending)))
        self.cap.feedback(decision_id, reward)
        key = self.pending.pop(decision_id)
        self.done.add(decision_id)
        self.applied[key] = self.applied.get(key, 0) + 1

    @precondition(lambda self: self.done)
    @rule(data=st.data())
    def duplicate(self, data):
        decision_id = data.draw(st.sampled_from(sorted(self.done)))
        with pytest.raises(DuplicateFeedback):
            self.cap.feedback(decision_id, 1.0)

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), reward=st.sampled_from([0.5, float("nan"), -1.0]))
    def bad_reward(self, data, reward):
        decision_id = data.draw(st.sampled_from(sorted(self.pending)))
        with pytest.raises(InvalidReward):
            self.cap.feedback(decision_id, reward)

    @rule(offset=st.integers(0, 50), foreign_tag=st.booleans())
    def unknown(self, offset, foreign_tag):
        tag = "0" * 16 if foreign_tag else self.cap._learner.tag
        decision_id = f"{self.cap.decisions + offset:016x}-{tag}"
        with pytest.raises(UnknownDecision):
            self.cap.feedback(decision_id, 1.0)

    @invariant()
    def matches_model(self):
        assert self.cap.pending == len(self.pending)
        assert self.cap.decisions == len(self.pending) + len(self.done)
        contexts = self.cap.report()["contexts"]
        for (context, option), count in self.applied.items():
            assert contexts[context]["pulls"][option] == count
        for decision_id in self.pending:
            assert self.cap.is_pending(decision_id)


TestLedger = LedgerMachine.TestCase


def _trace_in_process(args):
    seed, algorithm = args
    return _trace(seed, algorithm)


def test_same_decisions_in_other_processes():
    import multiprocessing

    jobs = [(3, "thompson"), (3, "ucb1"), (99, "thompson")]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        remote = pool.map(_trace_in_process, jobs)
    assert remote == [_trace(*job) for job in jobs]
