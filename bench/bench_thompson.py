"""Thompson sampling on a 5-arm Bernoulli world (means 0.1 .. 0.5), four ways.

* ``capsule_round``: ``cap.decide`` + ``cap.feedback`` through the public engine API;
* ``raw_rule_round``: the compiled rule in a C loop (``syntra_core.bandits.run_bernoulli``);
* ``river_round``: River's ``bandit.ThompsonSampling`` with a Beta prior;
* ``python_round``: a plain-Python Beta-Bernoulli Thompson reference.

Every variant plays against the same world and runs long-lived, so the numbers describe
steady state. Targets: capsule rounds >= 10x River's rate; raw rule >= 2M rounds/s.
"""

import random

import pytest

from syntra import Engine
from syntra_core.bandits import ArmTable, BetaThompson, run_bernoulli

MEANS = [0.1, 0.2, 0.3, 0.4, 0.5]
ARMS = list(range(len(MEANS)))
ROUNDS = 2_000
C_ROUNDS = 200_000


def _warm(step, rounds=20_000):
    for _ in range(rounds):
        step()


def test_capsule_round(benchmark, record_unit_time):
    cap = Engine.memory(seed=7).install(
        "tenants/bench/jobs/thompson/capsules/five", options=[f"arm{i}" for i in ARMS]
    )
    world = random.Random(11)

    def rounds():
        for _ in range(ROUNDS):
            d = cap.decide("ctx")
            cap.feedback(d.decision_id, 1.0 if world.random() < MEANS[d.option_index] else 0.0)

    rounds()
    benchmark(rounds)
    record_unit_time("capsule_round", ROUNDS)
    pulls = cap.report()["contexts"]["ctx"]["pulls"]
    assert max(pulls, key=pulls.get) == "arm4"


def test_raw_rule_c_loop(benchmark, record_unit_time):
    rule = BetaThompson(ArmTable(len(MEANS)))
    run_bernoulli(rule, MEANS, C_ROUNDS, seed=1)
    sequence = iter(range(2, 10**9))
    plays = benchmark(lambda: run_bernoulli(rule, MEANS, C_ROUNDS, seed=next(sequence)))
    record_unit_time("raw_rule_round", C_ROUNDS)
    assert plays.argmax() == 4


def test_river_thompson(benchmark, record_unit_time):
    bandit = pytest.importorskip("river.bandit")
    proba = pytest.importorskip("river.proba")
    policy = bandit.ThompsonSampling(reward_obj=proba.Beta(), seed=3)
    world = random.Random(11)

    def rounds():
        for _ in range(ROUNDS):
            arm = policy.pull(ARMS)
            policy.update(arm, 1.0 if world.random() < MEANS[arm] else 0.0)

    rounds()
    benchmark(rounds)
    record_unit_time("river_round", ROUNDS)


def test_python_reference(benchmark, record_unit_time):
    rng = random.Random(5)
    successes = [0] * len(MEANS)
    failures = [0] * len(MEANS)

    def rounds():
        for _ in range(ROUNDS):
            draws = [rng.betavariate(1 + successes[k], 1 + failures[k]) for k in ARMS]
            arm = max(ARMS, key=draws.__getitem__)
            if rng.random() < MEANS[arm]:
                successes[arm] += 1
            else:
                failures[arm] += 1

    rounds()
    benchmark(rounds)
    record_unit_time("python_round", ROUNDS)
