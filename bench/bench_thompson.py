"""Thompson sampling on a 5-arm Bernoulli world (means 0.1 .. 0.5), five ways.

Syntra's Thompson is *batched*: it computes each context's play probabilities (by Monte
Carlo over the posterior), caches them, and recomputes them only once the observations
since the last refresh reach ``max_staleness`` (default 1/32) of those at it. Its
propensities are exact, but a round mostly reuses cached probabilities. River and the
plain-Python reference draw from the posterior on every round instead. So:

* ``capsule_round``: batched Thompson (default settings) through ``cap.decide`` +
  ``cap.feedback``, the public engine API;
* ``capsule_round_exact``: the same API with ``max_staleness=0.0``, which recomputes the
  probabilities after every observation: per-round posterior work, like River's;
* ``raw_rule_round``: batched Thompson in a C loop (``syntra_core.bandits.run_bernoulli``);
* ``river_round``: River's ``bandit.ThompsonSampling`` with a Beta prior;
* ``python_round``: a plain-Python Beta-Bernoulli Thompson reference.

Every variant plays against the same world and runs long-lived, so the numbers describe
steady state. Targets: batched capsule rounds >= 10x River's rate; raw rule >= 2M rounds/s.
The exact variant has no target; it is reported next to River so that the ratio above is
never read as a like-for-like comparison of per-round posterior sampling.
"""

import random

import pytest

from syntra import Engine
from syntra_core.bandits import ArmTable, BetaThompson, run_bernoulli

MEANS = [0.1, 0.2, 0.3, 0.4, 0.5]
ARMS = list(range(len(MEANS)))
ROUNDS = 2_000
# Exact rounds cost ~25x more (128 posterior samples per round): fewer keep the bench short.
EXACT_ROUNDS = 200
C_ROUNDS = 200_000


def _capsule_rounds(cap, rounds):
    world = random.Random(11)

    def play():
        for _ in range(rounds):
            d = cap.decide("ctx")
            cap.feedback(d.decision_id, 1.0 if world.random() < MEANS[d.option_index] else 0.0)

    return play


def _install(settings=None):
    return Engine.memory(seed=7).install(
        "tenants/bench/jobs/thompson/capsules/five", options=[f"arm{i}" for i in ARMS],
        settings=settings,
    )


def test_capsule_round(benchmark, record_unit_time):
    cap = _install()
    play = _capsule_rounds(cap, ROUNDS)
    play()
    benchmark(play)
    record_unit_time("capsule_round", ROUNDS)
    pulls = cap.report()["contexts"]["ctx"]["pulls"]
    assert max(pulls, key=pulls.get) == "arm4"


def test_capsule_round_exact(benchmark, record_unit_time):
    cap = _install({"max_staleness": 0.0})
    play = _capsule_rounds(cap, EXACT_ROUNDS)
    for _ in range(10):  # to the same steady state as the batched variant's warm-up
        play()
    benchmark(play)
    record_unit_time("capsule_round_exact", EXACT_ROUNDS)
    observations = sum(cap.report()["contexts"]["ctx"]["pulls"].values())
    # Exact: the last decision used probabilities computed from every earlier observation.
    assert cap._learner.rule.last_refresh("ctx") == observations - 1


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
