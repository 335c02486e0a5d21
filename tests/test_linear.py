"""syntra_core.linear: LinUCB and linear Thompson sampling over a ridge-regression model.

The oracles are independent: a textbook numpy LinUCB that keeps A and b and inverts A with
np.linalg.inv at every step, np.kron for the shared variant's features, and a numpy Monte
Carlo of the Thompson win probabilities.
"""

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from syntra_core.linear import (
    LinearModel,
    LinearRule,
    LinTS,
    LinUCB,
    run_linear_logistic,
)


def _contexts(rng, rounds, d):
    """``rounds`` contexts: d-1 uniform features and a bias of 1."""
    return np.concatenate([rng.random((rounds, d - 1)), np.ones((rounds, 1))], axis=1)


class NumpyLinUCB:
    """Textbook LinUCB (Li et al. 2010): keeps A and b, inverts A at every step."""

    def __init__(self, n_models, p, ridge, alpha, features):
        self.a = np.stack([ridge * np.eye(p) for _ in range(n_models)])
        self.b = np.zeros((n_models, p))
        self.alpha = alpha
        self.features = features  # (x, arm) -> (model index, phi)

    def inverse(self, model):
        return np.linalg.inv(self.a[model])

    def theta(self, model):
        return np.linalg.inv(self.a[model]) @ self.b[model]

    def scores(self, x, n_arms):
        out = np.empty(n_arms)
        for arm in range(n_arms):
            model, phi = self.features(x, arm)
            inverse = np.linalg.inv(self.a[model])
            out[arm] = (inverse @ self.b[model]) @ phi + self.alpha * math.sqrt(phi @ inverse @ phi)
        return out

    def means(self, x, n_arms):
        return np.array([self.theta(m) @ phi for m, phi in (self.features(x, a) for a in range(n_arms))])

    def update(self, arm, x, reward):
        model, phi = self.features(x, arm)
        self.a[model] += np.outer(phi, phi)
        self.b[model] += reward * phi


def _play_against_reference(model, rule, reference, contexts, rng):
    n = model.n_arms
    near_ties = 0
    for t, x in enumerate(contexts):
        scores = reference.scores(x, n)
        arm, propensity = rule.select(x, seed=3, sequence=t)
        best = scores.max()
        assert scores[arm] >= best - 1e-9, (t, arm, scores)
        if np.sum(scores >= best - 1e-9) == 1:
            assert arm == scores.argmax() and propensity == 1.0
        else:
            near_ties += 1
        np.testing.assert_allclose(rule.predict(x), reference.means(x, n), rtol=0, atol=1e-9)
        reward = float(rng.random() < 0.2 + 0.15 * arm)
        model.update(arm, x, reward)
        reference.update(arm, x, reward)
    return near_ties


@pytest.mark.parametrize("reinvert_every", [0, 256, 7])
def test_disjoint_linucb_matches_the_numpy_reference(reinvert_every):
    rng = np.random.default_rng(11)
    d, n, ridge, alpha = 6, 4, 1.5, 0.7
    model = LinearModel(d, n, ridge=ridge, reinvert_every=reinvert_every)
    rule = LinUCB(model, alpha=alpha)
    reference = NumpyLinUCB(n, d, ridge, alpha, lambda x, arm: (arm, x))
    near_ties = _play_against_reference(model, rule, reference, _contexts(rng, 600, d), rng)
    assert near_ties < 20  # only the untrained start ties
    for arm in range(n):
        np.testing.assert_allclose(model.a_inverse[arm], reference.inverse(arm), rtol=0, atol=1e-9)
        np.testing.assert_allclose(model.theta[arm], reference.theta(arm), rtol=0, atol=1e-9)
        np.testing.assert_allclose(model.a[arm], reference.a[arm], rtol=1e-13, atol=0)
        np.testing.assert_allclose(model.b[arm], reference.b[arm], rtol=1e-13, atol=0)
    assert model.counts.sum() == 600 and model.counts.min() > 0
    if reinvert_every:
        assert model.reinversions == sum(c // reinvert_every for c in model.counts)
    else:
        assert model.reinversions == 0


@pytest.mark.parametrize("reinvert_every", [0, 50])
def test_shared_linucb_matches_a_numpy_reference_on_kronecker_features(reinvert_every):
    rng = np.random.default_rng(12)
    d, m, n, ridge, alpha = 4, 3, 5, 1.0, 1.2
    embeddings = rng.normal(size=(n, m))
    model = LinearModel(d, n, ridge=ridge, reinvert_every=reinvert_every, embeddings=embeddings)
    assert model.shared and model.model_dim == d * m
    np.testing.assert_array_equal(model.embeddings, embeddings)
    rule = LinUCB(model, alpha=alpha)
    reference = NumpyLinUCB(1, d * m, ridge, alpha, lambda x, arm: (0, np.kron(x, embeddings[arm])))
    near_ties = _play_against_reference(model, rule, reference, _contexts(rng, 400, d), rng)
    assert near_ties == 0  # different embeddings: no ties even untrained
    np.testing.assert_allclose(model.a_inverse, reference.inverse(0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(model.theta, reference.theta(0), rtol=0, atol=1e-9)
    assert model.a_inverse.shape == (d * m, d * m) and model.theta.shape == (d * m,)
    assert model.reinversions == (400 // reinvert_every if reinvert_every else 0)


def test_sherman_morrison_drift_is_bounded_by_reinversion():
    # Nearly collinear features on scales 0.1..1000 and a tiny ridge: cond(A) is ~1e12.
    def run(reinvert_every):
        rng = np.random.default_rng(1)
        model = LinearModel(6, 1, ridge=1e-3, reinvert_every=reinvert_every)
        scales = np.array([1e3, 1e2, 10.0, 1.0, 0.1, 1.0])
        worst = 0.0
        for t in range(1, 10_001):
            x = (1.0 + 1e-2 * rng.random(6)) * scales
            x[-1] = 1.0
            model.update(0, x, float(rng.random()))
            if t > 1024 and (t % 500 == 0 or t % 256 == 255):  # also just before re-inversions
                residual = model.a_inverse[0] @ model.a[0] - np.eye(6)
                worst = max(worst, np.abs(residual).max())
        final = np.abs(model.a_inverse[0] @ model.a[0] - np.eye(6)).max()
        return worst, final, model

    worst, final, model = run(256)
    _, drifted, _ = run(0)
    assert np.linalg.cond(model.a[0]) > 1e12
    assert model.reinversions == 10_000 // 256
    assert worst < 2e-5
    assert final < 2e-6  # 16 updates after the last re-inversion
    assert drifted > 10 * final


@pytest.mark.parametrize("shared", [False, True])
def test_lints_distribution_and_propensities(shared):
    rng = np.random.default_rng(5)
    d, n = 4, 3
    embeddings = rng.normal(size=(n, 2)) if shared else None
    model = LinearModel(d, n, embeddings=embeddings)
    rule = LinTS(model, v=0.5, samples=64)
    for x in _contexts(rng, 60, d):
        model.update(int(rng.integers(n)), x, float(rng.random()))
    x = np.array([0.3, 0.6, 0.1, 1.0])
    floor = 1.0 / (n * 65)
    chosen = np.zeros(n)
    expected = np.zeros(n)
    draws = 3000
    for sequence in range(draws):
        probs = rule.distribution(x, seed=9, sequence=sequence)
        assert probs.sum() == pytest.approx(1.0, abs=1e-12)
        assert probs.min() >= floor - 1e-15
        arm, propensity = rule.select(x, seed=9, sequence=sequence)
        assert propensity == probs[arm]
        into = np.empty(n)
        rule.distribution_into(x, 9, sequence, into)
        np.testing.assert_array_equal(into, probs)
        chosen[arm] += 1
        expected += probs
    expected /= draws
    # Each select draws from its distribution, so frequencies match the mean distribution.
    tolerance = 4.5 * np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(chosen / draws - expected) <= tolerance), (chosen / draws, expected)


def test_lints_win_probabilities_match_a_numpy_monte_carlo():
    rng = np.random.default_rng(8)
    d, n, ridge, v, samples = 5, 4, 1.0, 0.8, 100_000
    model = LinearModel(d, n, ridge=ridge)
    rule = LinTS(model, v=v, samples=samples)
    a = np.stack([ridge * np.eye(d)] * n)
    b = np.zeros((n, d))
    for x in _contexts(rng, 40, d):
        arm = int(rng.integers(n))
        reward = float(rng.random() < 0.3 + 0.1 * arm)
        model.update(arm, x, reward)
        a[arm] += np.outer(x, x)
        b[arm] += reward * x
    x = np.array([0.2, 0.9, 0.4, 0.5, 1.0])
    means = np.array([np.linalg.solve(a[k], b[k]) @ x for k in range(n)])
    spreads = np.array([v * math.sqrt(x @ np.linalg.solve(a[k], x)) for k in range(n)])
    np.testing.assert_allclose(rule.predict(x), means, atol=1e-12)
    draws = np.random.default_rng(0).normal(means, spreads, size=(400_000, n))
    wins = np.bincount(draws.argmax(axis=1), minlength=n) / len(draws)
    expected = (wins * samples + 1.0 / n) / (samples + 1)
    assert expected.max() < 0.9  # a real contest between the arms
    np.testing.assert_allclose(rule.distribution(x, 1, 2), expected, atol=0.008)


def test_linucb_breaks_ties_uniformly_and_says_so():
    model = LinearModel(3, 4)
    rule = LinUCB(model)
    x = [0.5, 0.5, 1.0]
    np.testing.assert_array_equal(rule.distribution(x, 1, 0), [0.25] * 4)
    picks = np.zeros(4)
    for sequence in range(4000):
        arm, propensity = rule.select(x, 1, sequence)
        assert propensity == 0.25
        picks[arm] += 1
    assert np.all(np.abs(picks / 4000 - 0.25) < 4.5 * math.sqrt(0.25 * 0.75 / 4000))
    model.update(2, x, 1.0)  # arm 2 now has the best mean and the others the wider bound
    model.update(0, x, 0.0)
    model.update(1, x, 0.0)
    model.update(3, x, 0.0)
    for _ in range(20):
        model.update(2, x, 1.0)
    np.testing.assert_array_equal(rule.distribution(x, 1, 0), [0.0, 0.0, 1.0, 0.0])
    assert rule.select(x, 1, 0) == (2, 1.0)


def _contextual_world():
    rng = np.random.default_rng(2024)
    theta = rng.normal(0.0, 2.0, size=(5, 10))
    theta[:, 9] = -theta[:, :9].sum(axis=1) / 2  # centred logits: each arm best somewhere
    return theta


@pytest.mark.parametrize("make_rule", [LinUCB, LinTS], ids=["LinUCB", "LinTS"])
def test_both_rules_learn_a_linear_logistic_world(make_rule):
    theta = _contextual_world()
    model = LinearModel(10, 5)
    rule = make_rule(model)
    quarters = [run_linear_logistic(rule, theta, 2000, seed=q + 1) for q in range(4)]
    regret = [r for _, _, r in quarters]
    for plays, _, _ in quarters:
        assert plays.sum() == 2000
    assert model.counts.sum() == 8000
    # Sublinear: the last quarter costs a fraction of the first.
    assert regret[3] < regret[0] / 2.5
    contexts = _contexts(np.random.default_rng(77), 2000, 10)
    success = 1.0 / (1.0 + np.exp(-contexts @ theta.T))
    best = success.argmax(axis=1)
    assert np.bincount(best, minlength=5).min() > 100  # a contextual world, no single winner
    uniform_regret = (success.max(axis=1) - success.mean(axis=1)).mean()
    picks = np.array([rule.select(x, 5, i)[0] for i, x in enumerate(contexts)])
    assert (picks == best).mean() > 0.75
    assert regret[3] / 2000 < 0.1 * uniform_regret


def test_run_linear_logistic_accounts_regret_and_reward():
    # Only the bias matters: arm a pays with the constant probability sigmoid(c_a).
    bias = np.array([-1.0, 0.0, 0.5, 1.5])
    theta = np.zeros((4, 3))
    theta[:, 2] = bias
    chance = 1.0 / (1.0 + np.exp(-bias))
    rule = LinUCB(LinearModel(3, 4), alpha=2.0)
    plays, reward, regret = run_linear_logistic(rule, theta, 5000, seed=4)
    assert plays.sum() == 5000 and plays.argmax() == 3
    np.testing.assert_array_equal(rule.model.counts, plays)
    assert regret == pytest.approx(plays @ (chance.max() - chance), rel=1e-9)
    expected = plays @ chance
    assert abs(reward - expected) < 4 * math.sqrt(plays @ (chance * (1 - chance)))
    with pytest.raises(ValueError, match="theta_true must have shape"):
        run_linear_logistic(rule, np.zeros((4, 2)), 10, seed=1)
    with pytest.raises(ValueError, match="theta_true must be finite"):
        run_linear_logistic(rule, np.full((4, 3), np.nan), 10, seed=1)
    with pytest.raises(ValueError, match="rounds"):
        run_linear_logistic(rule, theta, -1, seed=1)


def test_c_loop_allocates_nothing_per_round():
    theta = _contextual_world()

    def peak(rounds):
        rule = LinTS(LinearModel(10, 5), samples=16)
        run_linear_logistic(rule, theta, 10, seed=1)
        tracemalloc.start()
        try:
            run_linear_logistic(rule, theta, rounds, seed=2)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # tracemalloc sees every thread's allocations (pytest-xdist's own included): the least
    # growth of three tries is the loop's.
    assert min(peak(20_000) - peak(100) for _ in range(3)) < 1024


@pytest.mark.parametrize("kwargs,error,message", [
    ({"dim": 0}, ValueError, "dim must be in 1..256"),
    ({"dim": 257}, ValueError, "dim must be in 1..256"),
    ({"dim": 2.0}, TypeError, "dim must be an integer"),
    ({"dim": True}, TypeError, "dim must be an integer"),
    ({"n_arms": 0}, ValueError, "n_arms must be in 1..256"),
    ({"n_arms": 300}, ValueError, "n_arms must be in 1..256"),
    ({"ridge": 0.0}, ValueError, "ridge must be a finite number > 0"),
    ({"ridge": -1.0}, ValueError, "ridge"),
    ({"ridge": float("nan")}, ValueError, "ridge"),
    ({"ridge": float("inf")}, ValueError, "ridge"),
    ({"ridge": "1"}, TypeError, "ridge must be a real number"),
    ({"reinvert_every": -1}, ValueError, "reinvert_every"),
    ({"reinvert_every": 2.5}, TypeError, "reinvert_every must be an integer"),
    ({"embeddings": np.ones((2, 2))}, ValueError, r"embeddings must have shape \(n_arms=3, m\)"),
    ({"embeddings": np.ones(3)}, ValueError, "embeddings must have shape"),
    ({"embeddings": np.ones((3, 0))}, ValueError, "embeddings must have 1..256 columns"),
    ({"embeddings": np.ones((3, 300))}, ValueError, "embeddings must have 1..256 columns"),
    ({"dim": 8, "embeddings": np.ones((3, 200))}, ValueError, "exceeds the model limit 1024"),
    ({"embeddings": [[1.0], [float("nan")], [2.0]]}, ValueError, r"embeddings\[1, 0\] must be finite"),
    ({"embeddings": [[1.0], [1e7], [2.0]]}, ValueError, r"embeddings\[1, 0\]"),
    ({"embeddings": [["a"], ["b"], ["c"]]}, TypeError, "embeddings must hold real numbers"),
])
def test_bad_model_settings_are_refused(kwargs, error, message):
    settings_ = {"dim": 3, "n_arms": 3, **kwargs}
    with pytest.raises(error, match=message):
        LinearModel(**settings_)


@pytest.mark.parametrize("make_rule,error,message", [
    (lambda m: LinUCB(m, alpha=-0.1), ValueError, "alpha must be a finite number >= 0"),
    (lambda m: LinUCB(m, alpha=float("nan")), ValueError, "alpha"),
    (lambda m: LinTS(m, v=0.0), ValueError, "v must be a finite number > 0"),
    (lambda m: LinTS(m, v=float("inf")), ValueError, "v must be"),
    (lambda m: LinTS(m, samples=0), ValueError, "samples must be in 1..100000"),
    (lambda m: LinTS(m, samples=100_001), ValueError, "samples must be in 1..100000"),
    (lambda m: LinTS(m, samples=1.5), TypeError, "samples must be an integer"),
    (lambda m: LinearRule(m), TypeError, "abstract"),
    (lambda m: LinUCB(None), TypeError, "model"),
])
def test_bad_rule_settings_are_refused(make_rule, error, message):
    with pytest.raises(error, match=message):
        make_rule(LinearModel(3, 2))


def test_zero_alpha_is_greedy():
    model = LinearModel(2, 2)
    rule = LinUCB(model, alpha=0.0)
    model.update(0, [1.0, 1.0], 1.0)
    model.update(1, [0.0, 1.0], 0.5)  # less data, so a wider bound, but a lower mean
    assert rule.select([1.0, 1.0], 0, 0) == (0, 1.0)
    assert LinUCB(model, alpha=100.0).select([1.0, 1.0], 0, 0) == (1, 1.0)


BAD_CONTEXTS = [
    ([0.5, 1.0], ValueError, r"x must be a 1-D vector of 3 numbers, got shape \(2,\)"),
    (np.ones((3, 1)), ValueError, "x must be a 1-D vector of 3 numbers"),
    ([0.5, float("nan"), 1.0], ValueError, r"x\[1\] must be finite"),
    (np.array([0.5, 0.2, np.inf]), ValueError, r"x\[2\] must be finite"),
    ([0.5, 2e6, 1.0], ValueError, r"x\[1\] = 2000000.0 exceeds the feature limit"),
    (["a", "b", "c"], TypeError, "x must hold real numbers"),
    ([0.5, None, 1.0], TypeError, "x must hold real numbers"),
    (None, TypeError, "x must hold real numbers"),
    (np.ones(3, dtype=complex), TypeError, "x must hold real numbers"),
]


def _trained(n_arms=3):
    model = LinearModel(3, n_arms, reinvert_every=4)
    rng = np.random.default_rng(3)
    for t, x in enumerate(_contexts(rng, 30, 3)):
        model.update(t % n_arms, x, float(rng.random()))
    return model


@pytest.mark.parametrize("x,error,message", BAD_CONTEXTS)
def test_bad_contexts_are_refused_everywhere_without_side_effects(x, error, message):
    model = _trained()
    before = model.export_state()
    calls = (lambda rule: rule.select(x, 1, 2), lambda rule: rule.distribution(x, 1, 2),
             lambda rule: rule.predict(x), lambda rule: rule.distribution_into(x, 1, 2, np.empty(3)),
             lambda rule: rule.update(0, x, 1.0), lambda rule: rule.model.update(0, x, 1.0))
    for rule in (LinUCB(model), LinTS(model)):
        for call in calls:
            with pytest.raises(error, match=message):
                call(rule)
    assert model.export_state() == before


@pytest.mark.parametrize("arm,reward,error,message", [
    (3, 1.0, ValueError, "arm 3 out of range 0..2"),
    (-1, 1.0, ValueError, "arm -1 out of range"),
    (2**70, 1.0, ValueError, "out of range"),
    (1.0, 1.0, TypeError, "arm must be an integer"),
    (True, 1.0, TypeError, "arm must be an integer"),
    ("1", 1.0, TypeError, "arm must be an integer"),
    (0, float("nan"), ValueError, "reward must be finite"),
    (0, float("-inf"), ValueError, "reward must be finite"),
    (0, 1e10, ValueError, "exceeds the reward limit"),
    (0, "1", TypeError, "reward must be a real number"),
    (0, None, TypeError, "reward must be a real number"),
])
def test_bad_updates_are_refused_without_side_effects(arm, reward, error, message):
    model = _trained()
    before = model.export_state()
    with pytest.raises(error, match=message):
        model.update(arm, [0.1, 0.2, 1.0], reward)
    assert model.export_state() == before


def test_numpy_scalars_and_plain_lists_are_accepted():
    model = LinearModel(3, 2)
    model.update(np.int64(1), [0, 1, 1], np.float32(0.5))
    model.update(0, np.array([1, 0, 1], dtype=np.int32), 1)
    np.testing.assert_array_equal(model.counts, [1, 1])
    np.testing.assert_array_equal(model.b, [[1.0, 0.0, 1.0], [0.0, 0.5, 0.5]])
    strided = np.array([0.3, 9.0, 0.8, 9.0, 1.0])[::2]  # a view, not contiguous
    rule = LinUCB(model)
    np.testing.assert_array_equal(rule.predict(strided), rule.predict([0.3, 0.8, 1.0]))
    assert rule.predict(strided)[1] == pytest.approx(model.theta[1] @ [0.3, 0.8, 1.0], abs=1e-15)
    with pytest.raises(ValueError, match="out must have 2 entries"):
        LinUCB(model).distribution_into([0, 1, 1], 1, 1, np.empty(3))


@pytest.mark.parametrize("shared", [False, True])
def test_export_import_round_trip_gives_identical_decisions(shared):
    embeddings = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]) if shared else None
    model = LinearModel(3, 3, reinvert_every=4, embeddings=embeddings)
    rng = np.random.default_rng(3)
    for t, x in enumerate(_contexts(rng, 30, 3)):
        model.update(t % 3, x, float(rng.random()))
    state = model.export_state()
    assert all(isinstance(v, (str, int, float, bytes)) for v in state.values())
    copy = LinearModel(3, 3, reinvert_every=4, embeddings=embeddings)
    copy.import_state(state)
    assert copy.export_state() == state
    for make_rule in (LinUCB, LinTS):
        a, b = make_rule(model), make_rule(copy)
        assert a.export_state() == {}
        b.import_state(a.export_state())
        for t, x in enumerate(_contexts(rng, 20, 3)):
            assert a.select(x, 7, t) == b.select(x, 7, t)
            np.testing.assert_array_equal(a.distribution(x, 7, t), b.distribution(x, 7, t))
            model.update(t % 3, x, 0.25)
            copy.update(t % 3, x, 0.25)
    assert model.export_state() == copy.export_state()  # re-inversions happened identically
    with pytest.raises(ValueError, match="keeps no state"):
        LinUCB(copy).import_state({"alpha": 2.0})


def _tampered(state, **changes):
    broken = dict(state)
    broken.update(changes)
    return broken


def test_malformed_state_is_refused_and_changes_nothing():
    source = _trained()
    state = source.export_state()
    nan_a = np.frombuffer(state["a"], dtype=np.float64).copy()
    nan_a[4] = np.nan
    negative = np.frombuffer(state["counts"], dtype=np.int64).copy()
    negative[0] = -1
    cases = [
        ([1, 2], "must be a mapping"),
        ({k: v for k, v in state.items() if k != "theta"}, r"lacks \['theta'\]"),
        (_tampered(state, dim=4), "dim is 4"),
        (_tampered(state, ridge=2.0), "ridge is 2.0"),
        (_tampered(state, variant="shared"), "variant"),
        (_tampered(state, a=state["a"][:-8]), "a has"),
        (_tampered(state, b="text"), "b must be bytes"),
        (_tampered(state, a=nan_a.tobytes()), "a holds non-finite values"),
        (_tampered(state, counts=negative.tobytes()), "counts must be >= 0"),
        (_tampered(state, reinversions=-1), "reinversions"),
        (_tampered(state, reinversions=1.0), "reinversions"),
    ]
    target = _trained(3)
    target.update(0, [0.3, 0.3, 1.0], 1.0)
    before = target.export_state()
    for broken, message in cases:
        with pytest.raises(ValueError, match=message):
            target.import_state(broken)
        assert target.export_state() == before
    shared = LinearModel(3, 3, embeddings=np.eye(3))
    other = LinearModel(3, 3, embeddings=2 * np.eye(3)).export_state()
    with pytest.raises(ValueError, match="embeddings differ"):
        shared.import_state(other)


def test_reset_returns_to_the_prior():
    model = _trained()
    rule = LinTS(model)
    x = [0.2, 0.7, 1.0]
    trained = rule.distribution(x, 1, 1)
    rule.reset()
    np.testing.assert_array_equal(model.a_inverse, np.stack([np.eye(3) / 1.0] * 3))
    np.testing.assert_array_equal(model.a, np.stack([np.eye(3)] * 3))
    assert not model.theta.any() and not model.b.any() and not model.counts.any()
    assert model.reinversions == 0
    fresh = LinTS(LinearModel(3, 3, reinvert_every=4))
    np.testing.assert_array_equal(rule.distribution(x, 1, 1), fresh.distribution(x, 1, 1))
    assert not np.array_equal(trained, fresh.distribution(x, 1, 1))
    assert model.export_state() == fresh.model.export_state()


vectors = st.integers(1, 6).flatmap(
    lambda d: st.tuples(
        st.just(d),
        st.floats(0.5, 4.0),
        st.lists(
            st.tuples(st.lists(st.floats(-2.0, 2.0), min_size=d, max_size=d), st.floats(-1.0, 1.0)),
            min_size=1, max_size=40,
        ),
    )
)


@settings(deadline=None, max_examples=60)
@given(vectors, st.sampled_from([0, 1, 3]))
def test_sherman_morrison_and_cholesky_match_the_exact_inverse(case, reinvert_every):
    d, ridge, observations = case
    model = LinearModel(d, 1, ridge=ridge, reinvert_every=reinvert_every)
    a = ridge * np.eye(d)
    b = np.zeros(d)
    for x, reward in observations:
        model.update(0, x, reward)
        a += np.outer(x, x)
        b += reward * np.asarray(x)
    np.testing.assert_allclose(model.a_inverse[0], np.linalg.inv(a), rtol=0, atol=1e-9)
    np.testing.assert_allclose(model.theta[0], np.linalg.solve(a, b), rtol=0, atol=1e-9)
    inverse = model.a_inverse[0]
    np.testing.assert_array_equal(inverse, inverse.T)  # symmetric to the bit
