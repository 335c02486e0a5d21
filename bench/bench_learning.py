"""The cost of learning: one decide + feedback round of an ``auto`` capsule.

An ``auto`` capsule (``learning={}``) serves each decision from a mixture of candidate rules
(thompson, greedy, epsilon-greedy by default) weighed by a meta-bandit, and learns from
every reward: the shared statistics, each candidate's off-policy value, the shares, and
two ADWIN drift detectors. Its per-decision and per-feedback arithmetic runs in C
(``syntra_core.meta``); what is left is the Python around it. On the 5-arm Bernoulli world
of ``bench_thompson`` (means 0.1 .. 0.5):

* ``learning_plain_round``: a plain thompson capsule (no ``learning=``), the compiled fast
  path, as the floor;
* ``learning_auto_round``: the ``auto`` capsule through ``cap.decide`` + ``cap.feedback``;
* ``learning_river_round``: River's ``bandit.ThompsonSampling`` (Beta prior) pull + update,
  one rule and no meta-bandit, drift detection or durability hooks.

Each variant is warmed up first (the auto capsule past its warmup), so the numbers describe
steady state.
"""

import random

import pytest

from syntra import Engine

MEANS = [0.1, 0.2, 0.3, 0.4, 0.5]
ARMS = list(range(len(MEANS)))
ROUNDS = 2_000
WARMUP_ROUNDS = 2_000


def _install(learning):
    extra = {} if learning is None else {"learning": learning}
    return Engine.memory(seed=7).install(
        "tenants/bench/jobs/learning/capsules/five", options=[f"arm{i}" for i in ARMS], **extra)


def _capsule_rounds(cap, rounds):
    world = random.Random(11)

    def play():
        for _ in range(rounds):
            d = cap.decide("")
            cap.feedback(d.decision_id, 1.0 if world.random() < MEANS[d.option_index] else 0.0)

    return play


def _best_option_by_pulls(cap):
    pulls = cap.report()["contexts"][""]["pulls"]
    return max(pulls, key=pulls.get)


def test_plain_thompson_round(benchmark, record_unit_time):
    cap = _install(None)
    _capsule_rounds(cap, WARMUP_ROUNDS)()
    benchmark(_capsule_rounds(cap, ROUNDS))
    record_unit_time("learning_plain_round", ROUNDS)
    assert _best_option_by_pulls(cap) == "arm4"


def test_auto_round(benchmark, record_unit_time):
    cap = _install({})
    _capsule_rounds(cap, WARMUP_ROUNDS)()
    assert cap.report()["lifecycle"] == "active"
    benchmark(_capsule_rounds(cap, ROUNDS))
    record_unit_time("learning_auto_round", ROUNDS)
    report = cap.report()
    assert _best_option_by_pulls(cap) == "arm4"
    # Every decision after the warmup was served by a candidate the meta-bandit chose.
    warmup = cap.learning["warmup"]["feedbacks"]
    assert sum(c["trials"] for c in report["candidates"].values()) == report["decisions"] - warmup


def test_river_round(benchmark, record_unit_time):
    bandit = pytest.importorskip("river.bandit")
    proba = pytest.importorskip("river.proba")
    policy = bandit.ThompsonSampling(reward_obj=proba.Beta(), seed=3)
    world = random.Random(11)

    def rounds():
        for _ in range(ROUNDS):
            arm = policy.pull(ARMS)
            policy.update(arm, 1.0 if world.random() < MEANS[arm] else 0.0)

    for _ in range(WARMUP_ROUNDS // ROUNDS):
        rounds()
    benchmark(rounds)
    record_unit_time("learning_river_round", ROUNDS)
