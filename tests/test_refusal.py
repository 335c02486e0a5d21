"""Refusal detectors and policy: conformal coverage, Mahalanobis distance, key novelty."""

import base64
import copy
import doctest
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from syntra.errors import InvalidConfig
from syntra.learning import refusal
from syntra.learning.refusal import (
    Assessment,
    ConformalInterval,
    KeyNovelty,
    MahalanobisOOD,
    RefusalConfigError,
    RefusalInputError,
    RefusalPolicy,
    RefusalStateError,
)

# --- oracles written from the definitions, not from the code under test ----------------


def brute_force_quantile(residuals, coverage_text):
    """Smallest residual r with #(residuals <= r) >= (n + 1) * coverage; inf if none."""
    coverage = Fraction(coverage_text)
    n = len(residuals)
    for candidate in sorted(residuals):
        if Fraction(sum(1 for r in residuals if r <= candidate), n + 1) >= coverage:
            return candidate
    return math.inf


def json_roundtrip(state):
    """Through real JSON: bytes as base64 strings, floats as JSON numbers."""

    def encode(value):
        if isinstance(value, bytes):
            return {"__bytes__": base64.b64encode(value).decode()}
        raise TypeError(value)

    def decode(obj):
        if set(obj) == {"__bytes__"}:
            return base64.b64decode(obj["__bytes__"])
        return obj

    return json.loads(json.dumps(state, default=encode), object_hook=decode)


# --- conformal interval ----------------------------------------------------------------


@settings(deadline=None, max_examples=150)
@given(
    residuals=st.lists(st.floats(0.0, 100.0, allow_nan=False), max_size=60),
    permille=st.integers(1, 999),
)
def test_conformal_quantile_matches_brute_force(residuals, permille):
    coverage_text = f"0.{permille:03d}"
    conformal = ConformalInterval(float(coverage_text), window=1000, min_calibration=1000)
    for residual in residuals:
        conformal.add_residual(residual)
    expected = brute_force_quantile(residuals, coverage_text)
    assert conformal.quantile == expected
    low, high, width = conformal.interval(2.5)
    assert (low, high, width) == (2.5 - expected, 2.5 + expected, 2 * expected)
    n = len(residuals)
    # and numpy's inverted-CDF quantile over the residuals plus +inf, away from exact ties
    product = (n + 1) * Fraction(coverage_text)
    if product.denominator != 1 and n:
        oracle = np.quantile(np.append(residuals, np.inf), float(coverage_text), method="inverted_cdf")
        assert conformal.quantile == oracle


def test_conformal_rank_is_exact_for_decimal_coverage():
    # (n + 1) * 0.7 is exactly 7 for n = 9, though 10 * 0.7 == 7.000000000000001 in floats
    conformal = ConformalInterval(0.7, window=100, min_calibration=10)
    assert conformal.rank(9) == 7
    for residual in range(1, 10):
        conformal.add_residual(float(residual))
    assert conformal.quantile == 7.0
    assert ConformalInterval(0.9, window=100, min_calibration=10).rank(100) == 91


@settings(deadline=None, max_examples=80)
@given(
    residuals=st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=40),
    window=st.integers(10, 15),
)
def test_conformal_window_keeps_the_latest_residuals(residuals, window):
    conformal = ConformalInterval(0.9, window=window, min_calibration=9)
    for residual in residuals:
        conformal.add_residual(residual)
    kept = residuals[-window:]
    assert conformal.size == len(kept)
    assert conformal.residuals() == kept
    assert conformal.quantile == brute_force_quantile(kept, "0.9")
    assert conformal.calibrated == (len(kept) >= 9)


def _coverage_experiment(coverage, noise, calibration_size, trials, tests, seed):
    rng = np.random.default_rng(seed)
    prediction = 3.0
    covered = 0
    for _ in range(trials):
        conformal = ConformalInterval(coverage, window=500, min_calibration=50)
        for reward in prediction + noise(rng, calibration_size):
            conformal.observe(prediction, float(reward))
        low, high, _ = conformal.interval(prediction)
        fresh = prediction + noise(rng, tests)
        covered += int(np.count_nonzero((fresh >= low) & (fresh <= high)))
    return covered / (trials * tests)


NOISES = {
    "gaussian": lambda rng, size: rng.normal(0.0, 0.7, size),
    "uniform": lambda rng, size: rng.uniform(-2.0, 2.0, size),
}


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
@pytest.mark.parametrize("noise", sorted(NOISES))
@pytest.mark.parametrize("calibration_size", [60, 500])
def test_conformal_empirical_coverage(coverage, noise, calibration_size):
    trials, tests = 400, 500
    observed = _coverage_experiment(coverage, NOISES[noise], calibration_size, trials, tests, seed=11)
    # The coverage given the calibration set is Beta(k, n + 1 - k) with k the conformal rank
    # (variance about c(1-c)/(n+2)); the fresh points add binomial noise. With these sizes
    # the standard error of the average is at most ~0.003, so +-2pp is beyond 6 sigma.
    n = calibration_size
    standard_error = math.sqrt(coverage * (1 - coverage) * (1 / ((n + 2) * trials) + 1 / (trials * tests)))
    assert standard_error < 0.02 / 6
    assert abs(observed - coverage) <= 0.02
    # finite-sample guarantee: coverage <= P(covered) <= coverage + 1/(n+1) for continuous noise
    assert coverage - 5 * standard_error <= observed <= coverage + 1 / (n + 1) + 5 * standard_error


def test_policy_online_coverage_on_a_stationary_stream():
    rng = np.random.default_rng(5)
    policy = RefusalPolicy({"enabled": True, "coverage": 0.9, "window": 500, "min_calibration": 50})
    hits = steps = 0
    for step in range(20_000):
        prediction = 1.0
        reward = prediction + float(rng.normal(0.0, 2.0))
        verdict = policy.assess(prediction)
        if step >= 500:
            steps += 1
            hits += verdict.interval_low <= reward <= verdict.interval_high
        policy.observe(prediction, reward)
    assert abs(hits / steps - 0.9) <= 0.02


def test_conformal_bad_inputs_change_nothing():
    conformal = ConformalInterval(0.9, window=20, min_calibration=10)
    for residual in (0.5, 0.25):
        conformal.add_residual(residual)
    before = conformal.export_state()
    for bad in (math.nan, math.inf, -math.inf, -0.5, 1e300, "0.5", True, None):
        with pytest.raises(RefusalInputError):
            conformal.add_residual(bad)
    for prediction, reward in ((math.nan, 1.0), (1.0, math.nan), (math.inf, 1.0), (1.0, 1e16)):
        with pytest.raises(RefusalInputError):
            conformal.observe(prediction, reward)
    with pytest.raises(RefusalInputError, match="prediction"):
        conformal.interval(math.nan)
    assert conformal.export_state() == before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"coverage": 1.5}, "coverage must be in (0, 1), got 1.5"),
        ({"coverage": 0.0}, "coverage must be in (0, 1)"),
        ({"coverage": math.nan}, "coverage must be in (0, 1)"),
        ({"window": 0}, "window must be an integer in [1, 1000000], got 0"),
        ({"window": 5.0}, "window must be an integer"),
        ({"coverage": 0.99, "window": 50, "min_calibration": 10}, "window must be >= 99"),
        ({"coverage": 0.95, "min_calibration": 10}, "min_calibration must be in [19, window=500]"),
        ({"window": 100, "min_calibration": 101}, "min_calibration must be in [9, window=100]"),
    ],
)
def test_conformal_constructor_validation(kwargs, message):
    with pytest.raises(RefusalConfigError) as caught:
        ConformalInterval(**kwargs)
    assert message in str(caught.value)


# --- Mahalanobis -----------------------------------------------------------------------


def _correlated_data(rng, n, dim, offset=0.0, bias=True):
    mixing = rng.normal(size=(dim, dim))
    data = rng.normal(size=(n, dim)) @ mixing + offset
    if bias:
        data[:, 0] = 1.0
    return data


def _oracle_distance(points_seen, x, ridge):
    covariance = np.cov(points_seen, rowvar=False) + ridge * np.eye(points_seen.shape[1])
    return scipy_mahalanobis(x, points_seen.mean(axis=0), np.linalg.inv(covariance))


@pytest.mark.parametrize("dim", [1, 3, 8, 16])
def test_mahalanobis_matches_scipy(dim):
    rng = np.random.default_rng(dim)
    data = _correlated_data(rng, 300, dim, bias=dim > 1)
    ood = MahalanobisOOD(dim, min_samples=30, ridge=1e-6, refresh_every=1)
    for row in data:
        ood.update(row)
    assert ood.count == 300 and ood.ready
    np.testing.assert_allclose(ood.mean, data.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ood.covariance, np.cov(data, rowvar=False), rtol=1e-9, atol=1e-12)
    probes = np.vstack([data[:5], data[:5] + rng.normal(size=(5, dim)) * 3])
    if dim > 1:
        probes[:, 0] = 1.0
    for probe in probes:
        expected = _oracle_distance(data, probe, 1e-6)
        assert abs(ood.score(probe) - expected) <= 1e-6 * max(1.0, expected)


def test_mahalanobis_stable_with_large_offsets():
    rng = np.random.default_rng(3)
    data = _correlated_data(rng, 2000, 4, offset=1e9, bias=False)
    ood = MahalanobisOOD(4, min_samples=30, refresh_every=7)
    for row in data:
        ood.update(row)
    np.testing.assert_allclose(ood.covariance, np.cov(data, rowvar=False), rtol=1e-6)
    ood.refresh()
    for probe in data[:10] + rng.normal(size=(10, 4)):
        expected = _oracle_distance(data, probe, 1e-6)
        assert abs(ood.score(probe) - expected) <= 1e-6 * max(1.0, expected)


def test_mahalanobis_refreshes_at_min_samples_then_every_k():
    rng = np.random.default_rng(8)
    data = _correlated_data(rng, 200, 3, bias=False)
    ood = MahalanobisOOD(3, min_samples=30, refresh_every=32)
    probe = np.array([0.5, -1.0, 2.0])
    for count, row in enumerate(data, start=1):
        ood.update(row)
        if count < 30:
            assert not ood.ready and ood.score(probe) == 0.0
            continue
        # the documented cadence: a refresh at min_samples, then every refresh_every vectors
        refreshed = 30 + 32 * ((count - 30) // 32)
        expected = _oracle_distance(data[:refreshed], probe, 1e-6)
        assert abs(ood.score(probe) - expected) <= 1e-6 * max(1.0, expected)
    # covariance and mean always cover every vector, buffered or not
    np.testing.assert_allclose(ood.covariance, np.cov(data, rowvar=False), rtol=1e-9)


def test_mahalanobis_outlier_above_threshold_inlier_below():
    rng = np.random.default_rng(21)
    ood = MahalanobisOOD(4, min_samples=30)
    for row in rng.normal(size=(600, 4)):
        ood.update(row)
    assert ood.score(np.zeros(4)) < 1.0
    assert ood.score(np.array([0.3, -0.2, 0.5, 0.1])) < 3.0
    assert ood.score(np.array([9.0, 0.0, 0.0, 0.0])) > 3.0
    assert ood.score(np.array([2.5, -2.5, 2.5, -2.5])) > 3.0


def test_mahalanobis_constant_features_are_harmless():
    ood = MahalanobisOOD(3, min_samples=5, refresh_every=1)
    rng = np.random.default_rng(2)
    data = np.column_stack([np.ones(50), np.full(50, 7.0), rng.normal(size=50)])
    for row in data:
        ood.update(row)
    same = ood.score(np.array([1.0, 7.0, 0.0]))
    assert math.isfinite(same) and same < 3.0
    # leaving a constant feature is maximally surprising: distance |0.01| / sqrt(ridge)
    moved = ood.score(np.array([1.0, 7.01, float(data[:, 2].mean())]))
    assert moved == pytest.approx(0.01 / math.sqrt(1e-6), rel=1e-6)


def test_mahalanobis_rejects_bad_vectors_and_changes_nothing():
    ood = MahalanobisOOD(3, min_samples=2, refresh_every=1)
    ood.update([1.0, 2.0, 3.0])
    ood.update([2.0, 2.0, 1.0])
    before = ood.export_state()
    bad = [
        [math.nan, 0.0, 0.0], [0.0, math.inf, 0.0], [0.0, 0.0, -math.inf],
        [1e16, 0.0, 0.0], [1.0, 2.0], [[1.0, 2.0, 3.0]], ["a", 1.0, 2.0], {"x": 1},
    ]
    for vector in bad:
        with pytest.raises(RefusalInputError):
            ood.update(vector)
        with pytest.raises(RefusalInputError):
            ood.score(vector)
    assert ood.export_state() == before


# --- key novelty -----------------------------------------------------------------------


def test_key_novelty_scores():
    novelty = KeyNovelty(rare_below=3)
    assert novelty.score("a") == 1.0 and novelty.count("a") == 0
    novelty.observe("a")
    assert novelty.score("a") == 0.5
    novelty.observe("a")
    assert novelty.score("a") == 0.5
    novelty.observe("a")
    assert novelty.score("a") == 0.0 and novelty.count("a") == 3
    novelty.observe("b")
    assert novelty.score("b") == 0.5 and novelty.score("c") == 1.0
    assert novelty.total == 4 and len(novelty) == 2
    with pytest.raises(RefusalInputError):
        novelty.observe(7)
    with pytest.raises(RefusalConfigError, match="rare_below"):
        KeyNovelty(rare_below=0)
    assert novelty.total == 4


# --- the policy ------------------------------------------------------------------------


def _calibrate(policy, residuals):
    for residual in residuals:
        policy.observe(0.0, residual)


def test_reasons_in_order():
    policy = RefusalPolicy({
        "enabled": True, "window": 100, "min_calibration": 20, "max_interval_width": 1.0,
        "refuse_uncalibrated": True, "ood_min_samples": 10,
    })
    for _ in range(10):
        policy.observe_context(key="known")
    # all three reasons apply: ood comes first
    unseen = policy.assess(0.0, key="unknown")
    assert (unseen.refused, unseen.reason, unseen.ood_score) == (True, "ood", 1.0)
    # not ood, still uncalibrated (19 < 20): insufficient calibration, whatever the width
    _calibrate(policy, [5.0] * 19)
    verdict = policy.assess(0.0, key="known")
    assert verdict.reason == "insufficient_calibration" and verdict.calibration_size == 19
    # calibrated, but q = 5 gives width 10 > 1
    _calibrate(policy, [5.0])
    verdict = policy.assess(0.0, key="known")
    assert verdict.reason == "interval_too_wide" and verdict.interval_width == 10.0
    # the window moves on to small residuals: served
    _calibrate(policy, [0.25] * 100)
    verdict = policy.assess(2.0, key="known")
    assert not verdict.refused and verdict.reason is None
    assert (verdict.interval_low, verdict.interval_high, verdict.interval_width) == (1.75, 2.25, 0.5)
    assert verdict.ood_score == 0.0


def test_rare_key_serves_and_unseen_key_refuses_only_after_warmup():
    policy = RefusalPolicy({"enabled": True, "ood_min_samples": 5, "rare_below": 5})
    early = policy.assess(0.0, key="first")
    assert not early.refused and early.ood_score == 1.0   # warm-up: nothing to compare with
    policy.observe_context(key="first")
    for _ in range(4):
        policy.observe_context(key="common")
    rare = policy.assess(0.0, key="first")
    assert not rare.refused and rare.ood_score == 0.5
    assert policy.assess(0.0, key="brand-new").reason == "ood"
    # once a refused key's context is counted at decision time, it is rare, not unseen
    policy.observe_context(key="brand-new")
    assert not policy.assess(0.0, key="brand-new").refused


def test_uncalibrated_width_does_not_refuse_unless_asked():
    policy = RefusalPolicy({"enabled": True, "max_interval_width": 0.5})
    verdict = policy.assess(1.0)
    assert not verdict.refused
    assert verdict.interval_width == math.inf and verdict.calibration_size == 0
    block = verdict.to_dict()
    assert block == {
        "oodScore": 0.0, "intervalWidth": None, "intervalLow": None, "intervalHigh": None,
        "coverage": 0.9, "calibrationSize": 0,
    }


def test_vector_ood_refusal_through_the_policy():
    rng = np.random.default_rng(4)
    policy = RefusalPolicy({"enabled": True, "ood_threshold": 3.0})
    data = rng.normal(size=(400, 3))
    data[:, 0] = 1.0
    for row in data:
        policy.observe_context(x=row)
    inlier = policy.assess(0.5, x=np.array([1.0, 0.1, -0.2]))
    outlier = policy.assess(0.5, x=np.array([1.0, 6.0, -6.0]))
    assert inlier.ood_score < 3.0 and inlier.reason is None
    assert outlier.ood_score > 3.0 and outlier.reason == "ood"
    policy.vectors.refresh()   # scores now cover all 400 vectors
    expected = _oracle_distance(data, [1.0, 6.0, -6.0], 1e-6)
    assert abs(policy.assess(0.5, x=[1.0, 6.0, -6.0]).ood_score - expected) <= 1e-6 * expected
    with pytest.raises(RefusalInputError, match="shape"):
        policy.assess(0.5, x=[1.0, 2.0])


def test_shadow_mode_never_refuses_but_reports():
    config = {"ood_min_samples": 2, "max_interval_width": 0.1, "refuse_uncalibrated": True}
    shadow = RefusalPolicy(dict(config, enabled=False))
    live = RefusalPolicy(dict(config, enabled=True))
    for policy in (shadow, live):
        policy.observe_context(key="a")
        policy.observe_context(key="a")
    assert live.assess(0.0, key="b").reason == "ood"
    verdict = shadow.assess(0.0, key="b")
    assert (verdict.refused, verdict.reason, verdict.ood_score) == (False, None, 1.0)


def test_assessment_is_frozen_and_its_block_is_json():
    verdict = RefusalPolicy({"enabled": True}).assess(0.5)
    assert isinstance(verdict, Assessment)
    with pytest.raises(AttributeError):
        verdict.refused = True
    json.dumps(verdict.to_dict())


def test_policy_inputs_are_checked_before_anything_changes():
    policy = RefusalPolicy({"enabled": True, "ood_min_samples": 2})
    policy.observe_context(x=[1.0, 2.0], key="a")
    policy.observe(0.5, 0.75)
    before = copy.deepcopy(policy.export_state())
    with pytest.raises(RefusalInputError, match="prediction"):
        policy.assess(math.nan)
    with pytest.raises(RefusalInputError):
        policy.assess(0.5, x=[math.nan, 1.0])
    with pytest.raises(RefusalInputError):
        policy.assess(0.5, key=3)
    with pytest.raises(RefusalInputError, match="reward"):
        policy.observe(0.5, math.inf)
    with pytest.raises(RefusalInputError):
        policy.observe(math.nan, 0.5)
    with pytest.raises(RefusalInputError):
        policy.observe_context(x=[1.0, math.inf], key="a")
    with pytest.raises(RefusalInputError):
        policy.observe_context(x=[1.0, 2.0], key=5)   # good vector, bad key: neither applied
    with pytest.raises(RefusalInputError):
        policy.observe_context(x=[1.0, 2.0, 3.0])
    assert policy.export_state() == before
    assert isinstance(RefusalInputError("x"), ValueError)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"coverage": 1.5}, "refusal.coverage must be in (0, 1), got 1.5"),
        ({"coverage": "0.9"}, "refusal.coverage must be a number"),
        ({"enabled": "yes"}, "refusal.enabled must be true or false"),
        ({"window": 0}, "refusal.window must be an integer in [1, 1000000], got 0"),
        ({"window": 40, "min_calibration": 50}, "refusal.min_calibration must be in [9, refusal.window=40]"),
        ({"coverage": 0.999}, "refusal.window must be >= 999"),
        ({"max_interval_width": 0.0}, "refusal.max_interval_width must be in (0, inf)"),
        ({"max_interval_width": math.inf}, "refusal.max_interval_width must be in (0, inf)"),
        ({"ood_threshold": math.nan}, "refusal.ood_threshold must be in (0, inf)"),
        ({"ood_threshold": -1}, "refusal.ood_threshold must be in (0, inf), got -1.0"),
        ({"refuse_uncalibrated": 1}, "refusal.refuse_uncalibrated must be true or false"),
        ({"ood_min_samples": 1}, "refusal.ood_min_samples must be an integer in [2,"),
        ({"rare_below": 0}, "refusal.rare_below must be an integer in [1,"),
        ({"covrage": 0.9}, "refusal.covrage is not a refusal setting"),
    ],
)
def test_bad_config_names_the_field(config, message):
    with pytest.raises(RefusalConfigError) as caught:
        RefusalPolicy(config)
    assert message in str(caught.value)
    assert isinstance(caught.value, InvalidConfig) and isinstance(caught.value, ValueError)


def test_config_must_be_a_mapping():
    with pytest.raises(RefusalConfigError, match="mapping"):
        RefusalPolicy([("enabled", True)])


# --- state -----------------------------------------------------------------------------


def _drive(policy, rng, steps, dim):
    verdicts = []
    for _ in range(steps):
        x = rng.normal(size=dim)
        x[0] = 1.0
        key = f"k{int(rng.integers(0, 12))}"
        prediction = float(rng.uniform())
        verdict = policy.assess(prediction, x=x, key=key)
        verdicts.append(verdict)
        policy.observe_context(x=x, key=key)
        if not verdict.refused:
            policy.observe(prediction, prediction + float(rng.normal(0, 0.3)))
    return verdicts


def test_state_round_trip_is_exact_through_json():
    config = {"enabled": True, "window": 60, "min_calibration": 20, "max_interval_width": 1.5,
              "ood_min_samples": 25}
    original = RefusalPolicy(config)
    _drive(original, np.random.default_rng(1), 247, 4)   # wraps the window; buffers vectors
    state = original.export_state()
    assert 0 < len(state["vectors"]["pending"]) // 32 < 32
    restored = RefusalPolicy(config)
    restored.import_state(json_roundtrip(state))
    assert restored.export_state() == state
    # the two continue identically, assessment for assessment
    left = _drive(original, np.random.default_rng(2), 150, 4)
    right = _drive(restored, np.random.default_rng(2), 150, 4)
    assert left == right
    assert any(v.refused for v in left) and any(not v.refused for v in left)


def test_detector_states_round_trip():
    conformal = ConformalInterval(0.8, window=7, min_calibration=5)
    for residual in np.linspace(0.0, 1.3, 11):
        conformal.add_residual(float(residual))
    twin = ConformalInterval(0.8, window=7, min_calibration=5)
    twin.import_state(json_roundtrip(conformal.export_state()))
    for residual in (0.05, 2.0, 0.7):
        conformal.add_residual(residual)
        twin.add_residual(residual)
        assert twin.residuals() == conformal.residuals() and twin.quantile == conformal.quantile

    partial = ConformalInterval(0.8, window=7, min_calibration=5)
    for residual in (0.3, 0.1):
        partial.add_residual(residual)
    twin = ConformalInterval(0.8, window=7, min_calibration=5)
    twin.import_state(json_roundtrip(partial.export_state()))
    for residual in (0.9, 0.2, 0.4, 0.6, 0.8, 0.05, 0.7):
        partial.add_residual(residual)
        twin.add_residual(residual)
        assert twin.residuals() == partial.residuals() and twin.quantile == partial.quantile
    assert twin.residuals() == [0.9, 0.2, 0.4, 0.6, 0.8, 0.05, 0.7]

    novelty = KeyNovelty(rare_below=2)
    for key in "abcab":
        novelty.observe(key)
    other = KeyNovelty(rare_below=2)
    other.import_state(json_roundtrip(novelty.export_state()))
    assert [other.score(k) for k in "abcd"] == [novelty.score(k) for k in "abcd"] == [0.0, 0.0, 0.5, 1.0]
    assert other.total == 5


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: s.update(conformal={"residuals": b"\x00" * 7}),
        lambda s: s.update(conformal={"residuals": np.array([0.1, -1.0]).tobytes()}),
        lambda s: s.update(conformal={"residuals": np.array([0.1, math.nan]).tobytes()}),
        lambda s: s.update(conformal={"residuals": np.zeros(501).tobytes()}),
        lambda s: s.update(keys={"counts": {"a": 0}}),
        lambda s: s.update(keys={"counts": {"a": 1.5}}),
        lambda s: s["vectors"].update(dim=3),
        lambda s: s["vectors"].update(mean=b"\x00" * 8),
        lambda s: s["vectors"].update(count=-1),
        lambda s: s["vectors"].update(comoment=np.arange(4.0).tobytes()),
        lambda s: s["vectors"].update(pending=np.array([1e300, 0.0]).tobytes()),
        lambda s: s.update(extra=1),
        lambda s: s.update(conformal=None),
    ],
)
def test_malformed_state_is_refused_and_changes_nothing(corrupt):
    config = {"enabled": True, "ood_min_samples": 3}
    source = RefusalPolicy(config)
    for step in range(5):
        source.observe_context(x=[1.0, float(step)], key="a")
        source.observe(0.0, 0.1 * step)
    target = RefusalPolicy(config)
    target.observe_context(x=[1.0, 5.0], key="b")
    target.observe(0.0, 0.4)
    before = copy.deepcopy(target.export_state())
    state = copy.deepcopy(source.export_state())
    corrupt(state)
    with pytest.raises(RefusalStateError):
        target.import_state(state)
    assert target.export_state() == before


def test_doctests():
    results = doctest.testmod(refusal)
    assert results.attempted >= 15 and results.failed == 0
