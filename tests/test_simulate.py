"""The simulator: it learns, it is reproducible from its seed, and it rejects bad settings."""

import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syntra.capsule_config import MAX_OPTION_NAME, MAX_OPTIONS
from syntra.cli import main
from syntra.errors import SyntraError
from syntra.simulate import (
    CURVE_POINTS,
    InvalidSimulation,
    PlottingUnavailable,
    simulate,
)

OPTIONS = ["a", "b", "c"]
MEANS = [0.2, 0.5, 0.7]


def uniform_random_regret(means, rounds):
    """Expected pseudo-regret of choosing uniformly at random every round."""
    return rounds * sum(max(means) - m for m in means) / len(means)


@pytest.mark.parametrize("algorithm", ["thompson", "ucb1"])
@pytest.mark.parametrize("seed", [7, 8, 9])
def test_learns_the_best_arm(algorithm, seed):
    result = simulate(OPTIONS, MEANS, rounds=5000, seed=seed, algorithm=algorithm)

    assert result.best_options == ("c",)
    assert result.best_arm_share > 0.8
    baseline = uniform_random_regret(MEANS, 5000)  # 1166.7
    assert result.cumulative_regret < 0.1 * baseline
    assert result.uniform_regret == pytest.approx(baseline)
    # The best arm got thousands of plays, so its learned mean is close to the truth.
    assert result.mean_reward["c"] == pytest.approx(0.7, abs=0.04)


def test_regret_and_share_follow_from_the_pulls():
    result = simulate(OPTIONS, MEANS, rounds=3000, seed=1)

    assert sum(result.pulls.values()) == 3000
    expected = sum(result.pulls[o] * (0.7 - m) for o, m in zip(OPTIONS, MEANS))
    assert result.cumulative_regret == pytest.approx(expected)
    assert result.best_arm_share == result.pulls["c"] / 3000


def test_regret_curve_is_downsampled_monotone_and_ends_at_the_total():
    result = simulate(OPTIONS, MEANS, rounds=5000, seed=3)
    rounds = [r for r, _ in result.regret_curve]
    regret = [g for _, g in result.regret_curve]

    assert len(result.regret_curve) == CURVE_POINTS
    assert rounds == sorted(set(rounds)) and rounds[0] >= 1
    assert result.regret_curve[-1] == (5000, result.cumulative_regret)
    assert all(a <= b for a, b in zip(regret, regret[1:]))


def test_short_runs_record_every_round():
    result = simulate(OPTIONS, MEANS, rounds=5, seed=3)
    assert [r for r, _ in result.regret_curve] == [1, 2, 3, 4, 5]


def test_same_seed_gives_the_same_result():
    first = simulate(OPTIONS, MEANS, rounds=2000, seed=11)
    second = simulate(OPTIONS, MEANS, rounds=2000, seed=11)
    assert first == second


def test_different_seeds_give_different_runs():
    runs = {tuple(simulate(OPTIONS, MEANS, rounds=2000, seed=s).pulls.values()) for s in range(4)}
    assert len(runs) == 4


def test_the_world_does_not_depend_on_the_algorithm():
    # A fair comparison: both rules face worlds drawn from the same stream.
    thompson = simulate(["only"], [0.5], rounds=500, seed=5, algorithm="thompson")
    ucb1 = simulate(["only"], [0.5], rounds=500, seed=5, algorithm="ucb1")
    assert thompson.mean_reward == ucb1.mean_reward


def test_the_world_depends_on_the_seed():
    worlds = {simulate(["only"], [0.5], rounds=500, seed=s).mean_reward["only"] for s in range(4)}
    assert len(worlds) == 4


def test_a_tie_counts_every_best_arm():
    result = simulate(["x", "y", "z"], [0.6, 0.6, 0.1], rounds=2000, seed=2)
    assert result.best_options == ("x", "y")
    assert result.best_arm_share == (result.pulls["x"] + result.pulls["y"]) / 2000
    assert result.cumulative_regret == pytest.approx(result.pulls["z"] * 0.5)


def test_context_key_is_used():
    result = simulate(OPTIONS, MEANS, rounds=100, seed=2, context="support")
    assert result.context == "support"
    assert sum(result.pulls.values()) == 100


def test_progress_reports_every_round_once_and_starts_with_zero():
    reports = []
    simulate(OPTIONS, MEANS, rounds=12_345, seed=2, progress=reports.append)
    assert reports[0] == 0
    assert sum(reports) == 12_345
    assert len(reports) <= CURVE_POINTS + 1  # in chunks, not per round


@pytest.mark.parametrize(
    ("options", "means", "rounds", "seed", "message"),
    [
        ([], [], 10, 0, "1 to 256 options, got 0"),
        ("abc", MEANS, 10, 0, "a list of option names"),
        (["a", "b"], [0.2, 0.5, 0.7], 10, 0, "2 options need 2 true rewards, got 3"),
        (["a", "b", "c"], [0.2, 0.5], 10, 0, "3 options need 3 true rewards, got 2"),
        (["a", "a", "b"], MEANS, 10, 0, "unique, repeated: ['a']"),
        (["a", "", "b"], MEANS, 10, 0, "1-128 characters, got ''"),
        (["a", 7, "b"], MEANS, 10, 0, "1-128 characters, got 7"),
        (OPTIONS, [0.2, 1.5, 0.7], 10, 0, "in [0, 1], got 1.5"),
        (OPTIONS, [-0.1, 0.5, 0.7], 10, 0, "in [0, 1], got -0.1"),
        (OPTIONS, [0.2, math.nan, 0.7], 10, 0, "got nan"),
        (OPTIONS, [0.2, math.inf, 0.7], 10, 0, "got inf"),
        (OPTIONS, [0.2, "x", 0.7], 10, 0, "must be numbers"),
        (OPTIONS, MEANS, 0, 0, "rounds must be an integer in 1.."),
        (OPTIONS, MEANS, 10**8 + 1, 0, "rounds must be an integer in 1.."),
        (OPTIONS, MEANS, 10.5, 0, "rounds must be an integer"),
        (OPTIONS, MEANS, 10, -1, "seed must be an integer"),
        (OPTIONS, MEANS, 10, 2**64, "seed must be an integer"),
    ],
)
def test_invalid_settings_are_rejected(options, means, rounds, seed, message):
    with pytest.raises(InvalidSimulation, match=re.escape(message)) as caught:
        simulate(options, means, rounds=rounds, seed=seed)
    assert isinstance(caught.value, SyntraError) and isinstance(caught.value, ValueError)


def test_unknown_algorithm_and_oversized_context_are_rejected():
    with pytest.raises(InvalidSimulation, match="algorithm must be one of"):
        simulate(OPTIONS, MEANS, rounds=10, algorithm="epsilon")
    with pytest.raises(InvalidSimulation, match="context_key must be a string of at most 256"):
        simulate(OPTIONS, MEANS, rounds=10, context="k" * 257)
    with pytest.raises(InvalidSimulation, match="context_key must be a string"):
        simulate(OPTIONS, MEANS, rounds=10, context=5)


def test_options_follow_the_engines_limits_exactly():
    # Whatever the engine accepts runs; whatever it refuses is an InvalidSimulation up front.
    longest = ["x" * MAX_OPTION_NAME, "y"]
    assert simulate(longest, [0.5, 0.5], rounds=10).options == tuple(longest)
    with pytest.raises(InvalidSimulation, match=f"1-{MAX_OPTION_NAME} characters"):
        simulate(["x" * 200, "y"], [0.5, 0.5], rounds=10)
    most = [f"o{i}" for i in range(MAX_OPTIONS)]
    assert len(simulate(most, [0.5] * MAX_OPTIONS, rounds=10).pulls) == MAX_OPTIONS
    too_many = f"1 to {MAX_OPTIONS} options, got {MAX_OPTIONS + 1}"
    with pytest.raises(InvalidSimulation, match=too_many):
        simulate(most + ["extra"], [0.5] * (MAX_OPTIONS + 1), rounds=10)


def test_simulation_errors_are_syntra_errors():
    assert issubclass(InvalidSimulation, SyntraError) and issubclass(InvalidSimulation, ValueError)
    assert issubclass(PlottingUnavailable, SyntraError)


def test_invalid_settings_report_no_progress():
    reports = []
    with pytest.raises(InvalidSimulation):
        simulate(OPTIONS, [0.2, 0.5], rounds=50_000, progress=reports.append)
    assert reports == []


@settings(max_examples=30, deadline=None)
@given(
    means=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6),
    rounds=st.integers(1, 300),
    seed=st.integers(0, 2**64 - 1),
)
def test_any_valid_world_gives_a_consistent_result(means, rounds, seed):
    options = [f"opt{i}" for i in range(len(means))]
    result = simulate(options, means, rounds=rounds, seed=seed)

    assert sum(result.pulls.values()) == rounds
    assert 0.0 <= result.best_arm_share <= 1.0
    worst_gap = max(means) - min(means)
    assert -1e-9 <= result.cumulative_regret <= rounds * worst_gap + 1e-9
    assert result.regret_curve[-1] == (rounds, result.cumulative_regret)
    for option in options:
        learned = result.mean_reward[option]
        assert (learned is None) == (result.pulls[option] == 0)
        assert learned is None or 0.0 <= learned <= 1.0


# --- the learning layer's variations -----------------------------------------------------------


def test_auto_learns_and_reports_its_candidates():
    result = simulate(["a", "b", "c"], [0.1, 0.3, 0.8], rounds=1500, seed=2, algorithm="auto")
    assert result.best_arm_share > 0.8 and result.learning["lifecycle"] == "active"
    assert set(result.learning["candidates"]) == {"thompson", "greedy", "epsilon_greedy"}
    assert result.cumulative_regret < result.uniform_regret / 4


def test_context_features_make_the_best_option_depend_on_them():
    linear = simulate(["a", "b", "c"], [0.4, 0.5, 0.45], rounds=2000, seed=3, algorithm="linucb",
                      context_features=3)
    blind = simulate(["a", "b", "c"], [0.4, 0.5, 0.45], rounds=2000, seed=3, algorithm="thompson",
                     context_features=3)
    # The same world for both; the rule that reads the features does better.
    assert linear.context_features == 3 and linear.cumulative_regret < blind.cumulative_regret


def test_drift_at_reverses_the_world_and_detection_recovers():
    on = simulate(["a", "b", "c"], [0.1, 0.2, 0.8], rounds=3000, seed=4, algorithm="thompson", drift_at=1500)
    assert on.drift_at == 1500 and on.learning["drift_events"]
    assert on.learning["drift_events"][0]["sequence"] >= 1500
    # Most plays after the drift went to the new best option ("a"), so "a" was played far
    # more than a learner stuck on "c" would have.
    assert on.pulls["a"] > 800


@pytest.mark.parametrize("kwargs, message", [
    ({"context_features": -1}, "context features"),
    ({"context_features": 65}, "context features"),
    ({"drift_at": 0}, "drift round"),
    ({"drift_at": 5000}, "drift round"),
    ({"algorithm": "linucb"}, "features"),
])
def test_learning_variations_are_checked(kwargs, message):
    with pytest.raises(InvalidSimulation, match=message):
        simulate(["a", "b"], [0.1, 0.9], rounds=100, seed=0, **kwargs)


def test_the_cli_runs_the_variations(capsys):
    code = main(["simulate", "--options", "a,b", "--true-arm-rewards", "0.2,0.7", "--rounds", "600",
                 "--algorithm", "auto", "--context-features", "2", "--drift-at", "300", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["context_features"] == 2 and result["drift_at"] == 300
    assert result["learning"]["lifecycle"] in ("warmup", "active")
