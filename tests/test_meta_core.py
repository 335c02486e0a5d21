"""syntra_core.meta: the meta-bandit's compiled arithmetic and the candidate mixing.

Oracles are written from the formulas in the module docs (EXP3-IX in experts form with
capped importance weights, IPS/SNIPS), in numpy, and the public APIs of the rules and of
RandomStream; none is taken from the code under test.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from syntra_core.bandits import ArmTable, BetaThompson, EpsilonGreedy, Greedy, Softmax
from syntra_core.meta import CandidateMix, MetaCore, pick
from syntra_core.rng import RandomStream

from syntra.learning.meta import MetaBandit

probability = st.floats(0.0, 1.0)
observation = st.tuples(st.lists(probability, min_size=3, max_size=3), st.floats(0.01, 1.0), probability)


def reference_shares(observations, *, count, estimator, floor, cap=20.0, rate=None, initial=-1, prior=0.0):
    """EXP3-IX shares after ``observations`` [(targets, logging p, reward)], in numpy."""
    def eta(n):
        return rate if rate is not None else math.sqrt(8 * math.log(max(count, 2)) / max(n, 1))
    gain, weight = np.zeros(count), np.zeros(count)
    for n, (targets, logging, reward) in enumerate(observations, start=1):
        w = np.minimum(np.asarray(targets) / (logging + eta(n) / 2), cap)
        gain += w * reward
        weight += w
    n = len(observations)
    if estimator == "snips":
        values = np.divide(gain, weight, out=np.zeros(count), where=weight > 0)
    else:
        values = gain / n if n else np.zeros(count)
    head = np.zeros(count)
    if initial >= 0:
        head[initial] = prior
    logits = eta(n) * (values * n + head)
    q = np.exp(logits - logits.max())
    return (1 - floor) * q / q.sum() + floor / count, gain, weight


@settings(deadline=None, max_examples=60)
@given(st.lists(observation, max_size=40), st.sampled_from(["ips", "snips"]), st.floats(0.0, 0.5),
       st.sampled_from([None, 0.3]), st.sampled_from([-1, 0, 2]))
def test_exp3ix_shares_and_values_match_the_formulas(observations, estimator, floor, rate, initial):
    core = MetaCore(3, "exp3ix", estimator, 20.0, floor, rate, initial, 50)
    for targets, logging, reward in observations:
        core.observe(targets, logging, reward)
    shares, gain, weight = reference_shares(observations, count=3, estimator=estimator, floor=floor,
                                            rate=rate, initial=initial, prior=50.0)
    assert core.shares() == pytest.approx(shares, rel=1e-9, abs=1e-12)
    assert core.weighted_gain() == pytest.approx(gain, rel=1e-12)
    assert core.weight_sum() == pytest.approx(weight, rel=1e-12)
    assert math.isclose(sum(core.shares()), 1.0, rel_tol=1e-12)
    assert min(core.shares()) >= floor / 3 - 1e-15
    n = len(observations)
    for c, value in enumerate(core.values()):
        expected = (gain[c] / weight[c] if weight[c] > 0 else None) if estimator == "snips" else \
            (gain[c] / n if n else None)
        assert value == (None if expected is None else pytest.approx(expected, rel=1e-12))


def test_the_weight_cap_bounds_one_unlikely_decision():
    core = MetaCore(2, weight_cap=5.0, learning_rate=1e-9)   # ix ~ 0
    core.observe([1.0, 0.0], 1e-6, 1.0)   # w = 1e6 before the cap
    assert core.weight_sum() == [5.0, 0.0] and core.weighted_gain() == [5.0, 0.0]


@settings(deadline=None, max_examples=100)
@given(st.lists(st.floats(0.001, 10.0), min_size=1, max_size=8), st.floats(0.0, 1.0, exclude_max=True))
def test_choose_is_inversion_of_the_cumulative_shares(raw, u):
    core = MetaCore(len(raw), "thompson")
    core.load_raw(raw)
    shares = np.asarray(core.shares())
    expected = min(int(np.searchsorted(np.cumsum(shares), u, side="right")), len(raw) - 1)
    assert core.choose(u) == expected


@settings(deadline=None, max_examples=100)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=10).filter(lambda p: sum(p) > 0),
       st.floats(0.0, 1.0, exclude_max=True))
def test_pick_never_lands_on_a_zero_probability_option(weights, u):
    probabilities = np.asarray(weights) / sum(weights)
    arm = pick(probabilities, u)
    assert probabilities[arm] > 0
    cumulative = np.cumsum(probabilities)
    if u < cumulative[-1]:
        assert arm == int(np.searchsorted(cumulative, u, side="right"))
    else:   # rounding left u above the total: the last option with mass
        assert arm == max(i for i, p in enumerate(probabilities) if p > 0)


def test_pick_at_the_top_of_the_range_skips_trailing_zeros():
    assert pick(np.array([0.5, 0.5 - 1e-16, 0.0, 0.0]), 1.0 - 2**-53) == 1
    with pytest.raises(ValueError, match="positive"):
        pick(np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="u must be"):
        pick(np.ones(2) / 2, 1.0)


def _table_with_history(seed=0):
    table = ArmTable(4)
    world = np.random.default_rng(seed)
    for _ in range(60):
        arm = int(world.integers(4))
        table.update("k", arm, float(world.random() < 0.2 + 0.2 * arm))
    return table


def test_the_mixture_fills_mixes_and_draws_as_the_public_apis_say():
    table = _table_with_history()
    rules = [BetaThompson(table), EpsilonGreedy(table, epsilon=0.2), Softmax(table, temperature=0.1)]
    reference_rules = [BetaThompson(table), EpsilonGreedy(table, epsilon=0.2), Softmax(table, temperature=0.1)]
    seeds, seed = [11, 12, 13], 99
    mix = CandidateMix(table, rules, seeds, seed)
    core = MetaCore(3, exploration_floor=0.1)
    for targets, logging, reward in [([0.9, 0.2, 0.5], 0.4, 1.0), ([0.1, 0.7, 0.3], 0.3, 0.0)] * 20:
        core.observe(targets, logging, reward)
    for sequence in range(200):
        mix.fill("k", sequence)
        expected = np.array([r.distribution("k", s, sequence) for r, s in zip(reference_rules, seeds)])
        assert np.array_equal(mix.probabilities, expected)
        arm = mix.mix_pick(core, sequence)
        mixture = np.asarray(core.shares()) @ expected
        np.testing.assert_allclose(mix.mixture, mixture, rtol=1e-14)
        stream = RandomStream(seed, sequence)
        assert arm == pick(mix.mixture, stream.random())
        assert mix.candidate == core.choose(stream.random())
        assert mix.propensity == mix.mixture[arm]
        assert mix.targets(arm) == tuple(expected[:, arm])


def test_a_caller_adjusted_mixture_is_drawn_with_the_same_stream():
    table = _table_with_history(1)
    mix = CandidateMix(table, [EpsilonGreedy(table, epsilon=0.3), None], [1, 2], 5)
    mix.fill("k", 7)
    mix.probabilities[1] = [0.0, 0.0, 0.5, 0.5]   # a candidate the caller fills
    core = MetaCore(2)
    mixture = mix.mix_shares(core).copy()
    np.testing.assert_allclose(mixture, np.asarray(core.shares()) @ mix.probabilities, rtol=1e-14)
    mixture[:2] = 0.0
    mixture /= mixture.sum()
    arm = mix.pick(mixture, core, 7)
    assert arm in (2, 3) and mix.propensity == mixture[arm]
    assert arm == pick(mixture, RandomStream(5, 7).random())


def test_warmup_draws_uniformly_from_the_policy_stream():
    table = ArmTable(5)
    mix = CandidateMix(table, [None], [0], 42)
    for sequence in range(50):
        assert mix.warmup_arm(sequence) == int(RandomStream(42, sequence).integers(5, 1)[0])
        assert mix.propensity == 1 / 5 and mix.candidate == -1


def test_table_mean_reads_the_filled_context():
    table = _table_with_history(2)
    mix = CandidateMix(table, [EpsilonGreedy(table)], [3], 4)
    mix.fill("k", 0)
    pulls, sums = table.pulls("k"), table.reward_sums("k")
    for arm in range(4):
        assert mix.table_mean(arm) == sums[arm] / pulls[arm]
    mix.fill("fresh", 1)
    assert mix.table_mean(0) == 0.5


def test_a_mixture_refuses_rules_of_another_table_and_stale_thompson_shares():
    table = ArmTable(3)
    with pytest.raises(ValueError, match="another table"):
        CandidateMix(table, [EpsilonGreedy(ArmTable(3))], [0], 0)
    with pytest.raises(TypeError, match=r"rules\[0\]"):
        CandidateMix(table, ["thompson"], [0], 0)
    with pytest.raises(ValueError, match="seeds"):
        CandidateMix(table, [None, None], [0], 0)
    mix = CandidateMix(table, [None, None], [0, 1], 0)
    mix.probabilities[:] = 1 / 3
    core = MetaCore(2, "thompson")
    with pytest.raises(ValueError, match="stale"):
        mix.mix_pick(core, 0)
    core.load_raw([1.0, 3.0])
    assert 0 <= mix.mix_pick(core, 0) < 3
    with pytest.raises(ValueError, match="candidates"):
        mix.mix_pick(MetaCore(3), 0)


@pytest.mark.parametrize("kwargs, field", [
    ({"method": "ucb"}, "meta.method"), ({"estimator": "dr"}, "meta.estimator"),
    ({"weight_cap": 0.5}, "meta.weight_cap"), ({"weight_cap": math.inf}, "meta.weight_cap"),
    ({"exploration_floor": math.nan}, "meta.exploration_floor"), ({"learning_rate": 0.0}, "meta.learning_rate"),
    ({"learning_rate": math.inf}, "meta.learning_rate"), ({"prior_trials": -1}, "prior_trials"),
])
def test_settings_are_checked_by_name(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MetaCore(2, **kwargs)


@pytest.mark.parametrize("call, message", [
    (lambda c: c.observe([0.5, 0.5], 0.0, 1.0), "logging probability"),
    (lambda c: c.observe([0.5, 0.5], 0.5, 1.5), "rewards are scaled"),
    (lambda c: c.observe([0.5], 0.5, 1.0), "one probability per candidate"),
    (lambda c: c.observe([0.5, math.nan], 0.5, 1.0), r"targets\[1\]"),
    (lambda c: c.observe([-0.1, 0.5], 0.5, 1.0), r"targets\[0\]"),
])
def test_a_refused_observation_changes_nothing(call, message):
    core = MetaCore(2)
    core.observe([0.3, 0.6], 0.5, 1.0)
    before = core.export_state(), core.shares()
    with pytest.raises(ValueError, match=message):
        call(core)
    assert (core.export_state(), core.shares()) == before


@settings(deadline=None, max_examples=30)
@given(st.lists(observation, max_size=20), st.sampled_from(["exp3ix", "thompson"]))
def test_state_round_trips_bit_for_bit(observations, method):
    meta = MetaBandit(["a", "b", "c"], method=method, initial="b", prior_trials=20, seed=4)
    for index, (targets, logging, reward) in enumerate(observations):
        meta.observe(targets, logging, reward)
        meta.served(index % 3)
    copy = MetaBandit(["a", "b", "c"], method=method, initial="b", prior_trials=20, seed=4)
    copy.import_state(meta.export_state())
    assert copy.export_state() == meta.export_state()
    assert copy.shares() == meta.shares() and copy.report() == meta.report()


@pytest.mark.parametrize("change", [
    {"trials": [1, 2]}, {"trials": [1, -2, 3]}, {"trials": [1, 2.5, 3]}, {"trials": [True, 2, 3]},
    {"weighted_gain": [0.0, math.nan, 0.0]}, {"weight_sum": [0.0, -1.0, 0.0]},
    {"observations": -1}, {"observations": 2**63}, {"names": ["a", "b", "x"]}, {"weight_sum": None},
])
def test_malformed_state_is_refused_and_changes_nothing(change):
    meta = MetaBandit(["a", "b", "c"])
    meta.observe([0.2, 0.5, 0.9], 0.5, 1.0)
    before = meta.export_state(), meta.shares()
    with pytest.raises(ValueError):
        meta.import_state({**meta.export_state(), **change})
    assert (meta.export_state(), meta.shares()) == before
    with pytest.raises(ValueError):
        meta.import_state({"names": ["a", "b", "c"]})


def test_a_propensity_never_rounds_past_one():
    # Three candidates all certain of option 0, with shares whose weighted sum is a
    # rounding step over 1: the logged propensity is still a probability.
    table = ArmTable(2)
    for _ in range(10):
        table.update("k", 0, 1.0)
        table.update("k", 1, 0.0)
    core = MetaCore(3, method="thompson", exploration_floor=0.0)
    core.load_raw([0.5014295859466933, 0.794983493746024, 0.0771069862639161])
    mix = CandidateMix(table, [Greedy(table)] * 3, [1, 2, 3], 0)
    mix.fill("k", 0)
    assert mix.mix_pick(core, 0) == 0
    assert mix.mixture[0] > 1.0 and mix.propensity == 1.0
