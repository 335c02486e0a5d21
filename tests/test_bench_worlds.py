"""The regret benchmark's worlds and accounting (bench/worlds.py), checked independently.

Expected figures come from the worlds' definitions (means 0.1 .. 0.5, reversal at half-time,
a logistic model evaluated with scipy), never from the module's own helpers.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench import worlds  # noqa: E402
from bench.worlds import Contender, Report, Score, Unavailable  # noqa: E402

MEANS = [0.1, 0.2, 0.3, 0.4, 0.5]
BEST = 4
# Per-round regret of a uniform choice: 0.5 - mean(MEANS), with variance mean(gap^2) - 0.2^2.
UNIFORM_GAP = 0.5 - sum(MEANS) / 5
UNIFORM_GAP_VARIANCE = sum((0.5 - m) ** 2 for m in MEANS) / 5 - UNIFORM_GAP**2


class Scripted:
    """Plays a given arm sequence and records what the runner fed it."""

    def __init__(self, arms):
        self.arms = list(arms)
        self.seen = []
        self.closed = False
        self._t = 0

    def choose(self, context):
        arm = self.arms[self._t]
        self._t += 1
        return arm

    def learn(self, arm, context, reward):
        self.seen.append((arm, None if context is None else np.array(context), reward))

    def close(self):
        self.closed = True


class Always:
    def __init__(self, arm):
        self.arm = arm

    def choose(self, context):
        return self.arm

    def learn(self, arm, context, reward):
        pass


def scripted_contender(label, arms_for):
    return Contender("test", label, lambda world, seed: Scripted(arms_for(world, seed)))


# ---------------------------------------------------------------------------------------
# The worlds


def test_bernoulli_world_is_five_fixed_arms_over_2200_rounds():
    world = worlds.bernoulli_world(1)
    assert (world.rounds, world.arm_count, world.contextual) == (2_200, 5, False)
    assert world.context(0) is None
    np.testing.assert_array_equal(world.expected, np.tile(MEANS, (2_200, 1)))


def test_drift_world_reverses_the_means_at_half_time():
    world = worlds.drift_world(1)
    assert (world.rounds, world.arm_count) == (4_000, 5)
    np.testing.assert_array_equal(world.expected[:2_000], np.tile(MEANS, (2_000, 1)))
    np.testing.assert_array_equal(world.expected[2_000:], np.tile(MEANS[::-1], (2_000, 1)))
    with pytest.raises(ValueError, match="drift_at"):
        worlds.drift_world(1, rounds=100, drift_at=101)


def test_linear_world_is_logistic_in_the_context_with_a_bias():
    world = worlds.linear_world(1)
    assert (world.rounds, world.arm_count, world.contexts.shape) == (3_000, 5, (3_000, 10))
    features, bias = world.contexts[:, :9], world.contexts[:, 9]
    assert features.min() >= 0.0 and features.max() < 1.0
    np.testing.assert_array_equal(bias, 1.0)
    theta = worlds.linear_theta()
    np.testing.assert_array_equal(theta, worlds.linear_theta())  # drawn once, the same every time
    np.testing.assert_allclose(world.expected, expit(world.contexts @ theta.T), rtol=1e-12)
    np.testing.assert_array_equal(world.context(7), world.contexts[7])


@pytest.mark.parametrize("kind", worlds.WORLDS)
def test_a_world_is_a_function_of_its_seed(kind):
    a, b, other = worlds.make_world(kind, 3), worlds.make_world(kind, 3), worlds.make_world(kind, 4)
    np.testing.assert_array_equal(a.expected, b.expected)
    np.testing.assert_array_equal(a.uniforms, b.uniforms)
    assert not np.array_equal(a.uniforms, other.uniforms)
    if kind == "linear":
        np.testing.assert_array_equal(a.contexts, b.contexts)
        assert not np.array_equal(a.contexts, other.contexts)
    with pytest.raises(ValueError, match="world must be one of"):
        worlds.make_world("no such world", 1)


def test_the_linear_worlds_best_arm_depends_on_the_context_and_can_be_learned():
    world = worlds.linear_world(1, rounds=20_000)
    best = world.expected.argmax(axis=1)
    shares = np.bincount(best, minlength=5) / world.rounds
    assert shares.min() >= 0.10, shares
    # Knowing the context is worth a lot over the best single arm.
    assert world.expected.max(axis=1).mean() - world.expected.mean(axis=0).max() >= 0.15

    # Learnable: per-arm least squares on 3,000 uniformly explored rounds, played greedily
    # on fresh contexts, loses under a tenth of what playing at random does.
    explore = worlds.linear_world(2)
    arms = np.random.default_rng(0).integers(5, size=explore.rounds)
    rewards = np.array([explore.reward(t, a) for t, a in enumerate(arms)])
    coef = np.array([np.linalg.lstsq(explore.contexts[arms == a], rewards[arms == a], rcond=None)[0]
                     for a in range(5)])
    test = worlds.linear_world(3)
    greedy = (test.contexts @ coef.T).argmax(axis=1)
    uniform_per_round = np.mean(test.expected.max(axis=1) - test.expected.mean(axis=1))
    assert test.regret_of(greedy) / test.rounds <= 0.1 * uniform_per_round


@pytest.mark.parametrize("arm", range(5))
def test_bernoulli_rewards_come_at_the_arms_mean(arm):
    world = worlds.bernoulli_world(5, rounds=20_000)
    rewards = [world.reward(t, arm) for t in range(world.rounds)]
    assert set(rewards) <= {0.0, 1.0}
    p, n = MEANS[arm], world.rounds
    assert abs(sum(rewards) - n * p) <= 5 * math.sqrt(n * p * (1 - p))


def test_linear_rewards_come_at_the_logistic_probability():
    world = worlds.linear_world(6, rounds=20_000)
    p = expit(world.contexts @ worlds.linear_theta().T)
    for arm in range(5):
        total = sum(world.reward(t, arm) for t in range(world.rounds))
        column = p[:, arm]
        assert abs(total - column.sum()) <= 5 * math.sqrt(np.sum(column * (1 - column)))


def test_a_reward_is_the_same_whoever_asks_for_it():
    world = worlds.bernoulli_world(2)
    first = [world.reward(t, t % 5) for t in range(world.rounds)]
    assert first == [world.reward(t, t % 5) for t in range(world.rounds)]


# ---------------------------------------------------------------------------------------
# Regret accounting


@pytest.mark.parametrize("kind", worlds.WORLDS)
def test_the_oracle_has_zero_regret(kind):
    world = worlds.make_world(kind, 8)
    if kind == "bernoulli":
        oracle = [BEST] * world.rounds
    elif kind == "drift":
        oracle = [BEST] * 2_000 + [0] * 2_000
    else:
        oracle = list(expit(world.contexts @ worlds.linear_theta().T).argmax(axis=1))
    result = worlds.play(world, Scripted(oracle))
    assert result.regret == 0.0
    assert worlds.play(world, Scripted([(a + 1) % 5 for a in oracle])).regret > 0.0


@settings(deadline=None, max_examples=15)
@given(arm=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_a_fixed_arm_loses_its_gap_every_round(arm, seed):
    stationary = worlds.bernoulli_world(seed)
    assert worlds.play(stationary, Always(arm)).regret == pytest.approx(2_200 * (0.5 - MEANS[arm]))
    drifting = worlds.drift_world(seed)
    expected = 2_000 * (0.5 - MEANS[arm]) + 2_000 * (0.5 - MEANS[4 - arm])
    assert worlds.play(drifting, Always(arm)).regret == pytest.approx(expected)


def test_uniform_regret_is_the_analytic_value():
    assert worlds.bernoulli_world(1).uniform_regret() == pytest.approx(2_200 * UNIFORM_GAP)
    assert worlds.drift_world(1).uniform_regret() == pytest.approx(4_000 * UNIFORM_GAP)
    world = worlds.linear_world(1)
    p = expit(world.contexts @ worlds.linear_theta().T)
    assert world.uniform_regret() == pytest.approx(float(np.sum(p.max(axis=1) - p.mean(axis=1))))


def test_a_uniform_policy_loses_the_analytic_regret_on_average():
    runs = 10
    regrets = [worlds.play(worlds.bernoulli_world(seed), worlds.UniformPolicy(5, seed)).regret
               for seed in range(runs)]
    sd_of_mean = math.sqrt(2_200 * UNIFORM_GAP_VARIANCE / runs)
    assert abs(np.mean(regrets) - 2_200 * UNIFORM_GAP) <= 5 * sd_of_mean

    world = worlds.linear_world(4)
    p = expit(world.contexts @ worlds.linear_theta().T)
    gaps = p.max(axis=1, keepdims=True) - p
    regret = worlds.play(world, worlds.UniformPolicy(5, 4)).regret
    assert abs(regret - gaps.mean(axis=1).sum()) <= 5 * math.sqrt(gaps.var(axis=1).sum())


def test_play_feeds_each_round_the_chosen_arms_reward_and_context():
    world = worlds.linear_world(9, rounds=400)
    arms = list(np.random.default_rng(1).integers(5, size=world.rounds))
    policy = Scripted(arms)
    result = worlds.play(world, policy)
    assert policy.closed
    assert [arm for arm, _, _ in policy.seen] == arms
    p = expit(world.contexts @ worlds.linear_theta().T)
    regret = rewards = 0.0
    for t, (arm, context, reward) in enumerate(policy.seen):
        np.testing.assert_array_equal(context, world.contexts[t])
        assert reward == (1.0 if world.uniforms[t, arm] < p[t, arm] else 0.0)
        regret += max(p[t]) - p[t, arm]
        rewards += reward
    assert result.regret == pytest.approx(regret)
    assert result.reward == rewards
    np.testing.assert_array_equal(result.arms, arms)
    np.testing.assert_array_equal(result.pulls, np.bincount(arms, minlength=5))


def test_play_refuses_an_arm_out_of_range_and_still_closes_the_policy():
    policy = Scripted([0, 5])
    with pytest.raises(ValueError, match="outside"):
        worlds.play(worlds.bernoulli_world(1, rounds=2), policy)
    assert policy.closed


def test_regret_needs_one_arm_per_round():
    with pytest.raises(ValueError, match="one arm per round"):
        worlds.bernoulli_world(1, rounds=10).regret_of(np.zeros(9, dtype=int))


# ---------------------------------------------------------------------------------------
# Scores, targets, the table and the runner


def test_a_score_is_the_mean_and_standard_error_over_seeds():
    score = Score("x", "p", (1.0, 2.0, 6.0))
    assert score.mean == 3.0
    assert score.stderr == pytest.approx(math.sqrt(7.0) / math.sqrt(3.0))  # sample sd sqrt(7)
    assert Score("x", "p", (4.0,)).stderr == 0.0


def _report(world="bernoulli", auto=None, peers=(), extra=(), skipped=()):
    scores = [Score("syntra", "auto", auto)] if auto is not None else []
    scores += [Score(f, p, r) for f, p, r in peers] + [Score(f, p, r) for f, p, r in extra]
    return Report(world, 2, 100, 40.0, scores, list(skipped))


def test_best_defaults_reference_and_the_auto_target():
    report = _report(auto=(10.0, 12.0), peers=[("river", "a", (30.0, 30.0)), ("river", "b", (8.0, 10.0)),
                                               ("vw", "c", (20.0, 20.0))])
    assert report.best("river").policy == "b"
    assert report.best("mabwiser") is None
    assert report.best_peer().policy == "b"
    (target,) = report.targets()
    assert target.status == "NOT met"  # auto 11 against river b's 9
    better = _report(auto=(5.0, 5.0), peers=[("vw", "c", (20.0, 20.0))])
    assert better.targets()[0].status == "met"
    missing = _report(peers=[("vw", "c", (20.0, 20.0))], skipped=[("syntra", "auto", "no such algorithm")])
    assert missing.targets()[0].status == "not evaluated"
    assert missing.targets()[0].detail == "no such algorithm"


def test_the_drift_target_compares_the_same_rule_with_and_without_detection():
    def drift(on, off):
        return _report("drift", extra=[("syntra", "auto, drift on", on), ("syntra", "auto, drift off", off)],
                       skipped=[("syntra", "thompson, drift on", "refused")])

    auto, thompson = drift((50.0, 50.0), (100.0, 100.0)).targets()
    assert auto.status == "met"
    assert (thompson.status, thompson.detail) == ("not evaluated", "refused")
    assert drift((51.0, 51.0), (100.0, 100.0)).targets()[0].status == "NOT met"


def test_the_table_lists_every_row_with_its_ratio_to_auto():
    report = _report(auto=(10.0, 10.0), peers=[("river", "a", (20.0, 20.0)), ("vw", "c", (5.0, 5.0))],
                     skipped=[("mabwiser", "d", "not installed")])
    lines = worlds.format_table(report).splitlines()
    assert lines[1].split() == ["contender", "policy", "mean", "regret", "stderr", "ratio", "to",
                                "syntra", "auto"]
    rows = {tuple(line.split()[:2]): line.split() for line in lines[3:6]}
    assert rows[("syntra", "auto")][-3:] == ["10.0", "0.0", "1.00"]
    assert rows[("river", "a")][-3:] == ["20.0", "0.0", "2.00"]
    assert rows[("vw", "c")][-3:] == ["5.0", "0.0", "0.50"]
    assert any(line.startswith("reference") and line.split()[-1] == "4.00" for line in lines)
    assert "skipped mabwiser d: not installed" in lines
    assert any(line.startswith("target NOT met") for line in lines)
    info = report.extra_info()
    json.dumps(info)
    assert info["vw/c"]["ratio_to_auto"] == 0.5
    assert info["best_default"] == {"syntra": "auto", "river": "a", "vw": "c"}


def test_evaluate_runs_each_contender_on_every_seed_and_reports_the_unavailable():
    def refuse(world, seed):
        raise Unavailable("not here")

    oracle = scripted_contender("oracle", lambda world, seed: [BEST] * world.rounds)
    uniform = Contender("test", "uniform", lambda world, seed: worlds.UniformPolicy(world.arm_count, seed))
    report = worlds.evaluate("bernoulli", 3, [oracle, uniform, Contender("test", "refusing", refuse)])
    assert (report.seeds, report.rounds, report.uniform_regret) == (3, 2_200, pytest.approx(440.0))
    assert report.score("test", "oracle").regrets == (0.0, 0.0, 0.0)
    uniform_regrets = report.score("test", "uniform").regrets
    assert len(set(uniform_regrets)) == 3  # each seed its own world and policy
    assert report.skipped == [("test", "refusing", "not here")]
    with pytest.raises(ValueError, match="seeds"):
        worlds.evaluate("bernoulli", 0, [oracle])


def test_the_cli_prints_the_table(monkeypatch, capsys):
    uniform = Contender("test", "uniform", lambda world, seed: worlds.UniformPolicy(world.arm_count, seed))
    monkeypatch.setattr(worlds, "contenders", lambda kind: [uniform])
    assert worlds.main(["--world", "drift", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("drift world: expected regret over 4,000 rounds, mean of 2 seeds")
    assert "uniform random (analytic)" in out
    with pytest.raises(SystemExit):
        worlds.main(["--world", "drift", "--seeds", "0"])


# ---------------------------------------------------------------------------------------
# The Syntra contender (the public Engine API; the peers are exercised by bench/)


def test_syntra_thompson_learns_the_bernoulli_world():
    (thompson,) = [c for c in worlds.contenders("bernoulli") if (c.family, c.policy) == ("syntra", "thompson")]
    report = worlds.evaluate("bernoulli", 2, [thompson])
    assert report.skipped == []
    assert report.score("syntra", "thompson").mean < 0.25 * report.uniform_regret


def test_a_syntra_algorithm_the_engine_lacks_is_reported_unavailable():
    refused = Contender("syntra", "nope", lambda world, seed: worlds.SyntraPolicy(world.arm_count, seed,
                                                                                  "no_such_algorithm"))
    report = worlds.evaluate("bernoulli", 1, [refused])
    assert report.scores == []
    ((family, policy, reason),) = report.skipped
    assert (family, policy) == ("syntra", "nope") and "no_such_algorithm" in reason
