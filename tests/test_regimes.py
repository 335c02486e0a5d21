"""Regime monitor: Welford statistics, z-score anomalies, calibrated quality floors."""

import copy
import doctest
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from syntra.errors import InvalidConfig
from syntra.learning import regimes
from syntra.learning.regimes import (
    RegimeAssessment,
    RegimeConfigError,
    RegimeInputError,
    RegimeMonitor,
    RegimeStateError,
)

BASE = {"enabled": True, "metric": "latency_ms"}


def monitor(**overrides):
    return RegimeMonitor({**BASE, **overrides})


# --- statistics ------------------------------------------------------------------------


@settings(deadline=None, max_examples=100)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=200))
def test_welford_matches_numpy(values):
    m = monitor()
    for value in values:
        m.assess("r", value)
    row = m.report()["r"]
    assert row["count"] == len(values)
    scale = max(1.0, float(np.max(np.abs(values))))
    assert row["mean"] == pytest.approx(float(np.mean(values)), rel=1e-12, abs=1e-12 * scale)
    assert row["std"] == pytest.approx(float(np.std(values, ddof=1)), rel=1e-9, abs=1e-9 * scale)


def test_welford_keeps_precision_at_large_offsets():
    rng = np.random.default_rng(0)
    values = 1e9 + rng.normal(0.0, 1.0, 20_000)
    m = monitor()
    for value in values:
        m.assess("big", float(value))
    row = m.report()["big"]
    assert row["mean"] == pytest.approx(float(np.mean(values)), rel=1e-14)
    assert row["std"] ** 2 == pytest.approx(float(np.var(values, ddof=1)), rel=1e-6)
    # the textbook one-pass formula E[v^2] - E[v]^2 loses every digit here
    naive = (float(np.sum(values * values)) - len(values) * float(np.mean(values)) ** 2) / (len(values) - 1)
    assert abs(naive - float(np.var(values, ddof=1))) > 1.0


def test_z_score_uses_the_history_before_the_value():
    rng = np.random.default_rng(1)
    history = rng.normal(100.0, 5.0, 40).tolist()
    m = monitor(min_samples=30, z_threshold=3.0)
    for value in history:
        m.assess("eu", value)
    for probe in (104.0, 80.0, 131.0, 99.5):
        expected = (probe - np.mean(history)) / np.std(history, ddof=1)
        verdict = m.assess("eu", probe)
        assert verdict.z_score == pytest.approx(expected, rel=1e-12)
        assert verdict.anomalous == (abs(expected) > 3.0)
        history.append(probe)      # the value joins the history afterwards
    assert m.report()["eu"]["anomalies"] == 2
    assert m.report()["eu"]["count"] == 44


def test_no_z_score_before_min_samples():
    m = monitor(min_samples=10)
    for value in range(9):
        verdict = m.assess("r", float(value))
        assert (verdict.z_score, verdict.anomalous) == (0.0, False)
    verdict = m.assess("r", 1e6)     # the 10th value: 9 seen, still warming up
    assert (verdict.z_score, verdict.anomalous) == (0.0, False)
    assert m.assess("r", 1e6).anomalous is False  # 10 seen, but 1e6 already inflated the spread
    assert m.assess("r", 1e7).anomalous is True


def test_constant_history():
    m = monitor(min_samples=3)
    for _ in range(5):
        m.assess("flat", 7.0)
    same = m.assess("flat", 7.0)
    assert (same.z_score, same.anomalous) == (0.0, False)
    other = m.assess("flat", 7.5)
    assert other.z_score == math.inf and other.anomalous


def test_regimes_are_independent():
    m = monitor(min_samples=3)
    for value in (1.0, 2.0, 3.0):
        m.assess("a", value)
        m.assess("b", value * 100)
    assert m.assess("a", 200.0).anomalous
    assert not m.assess("b", 200.0).anomalous
    assert m.regimes == ("a", "b")


# --- floors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "domain, floor",
    [("support", 5500), ("coding", 7200), ("compliance", 9200), ("security", 9200),
     ("legal", 5000), (None, 5000)],
)
def test_domain_day_one_floors(domain, floor):
    m = monitor(domain=domain)
    assert m.day_one_floor_bps == floor
    assert m.floor("never-seen") == floor
    assert m.assess("r", 1.0).floor_bps == floor


def test_domain_floors_merge_over_defaults():
    m = monitor(domain="coding", default_floors_bps={"support": 6000, "legal": 8000}, default_floor_bps=4000)
    assert m.day_one_floor_bps == 7200
    assert monitor(domain="legal", default_floors_bps={"legal": 8000}).day_one_floor_bps == 8000
    assert monitor(domain="support", default_floors_bps={"support": 6000}).day_one_floor_bps == 6000
    assert monitor(domain="other", default_floor_bps=4000).day_one_floor_bps == 4000


@settings(deadline=None, max_examples=100)
@given(failures=st.integers(0, 10), successes=st.integers(0, 25))
def test_floor_after_failures_then_successes(failures, successes):
    m = monitor(domain="support", step_bps=100)
    for _ in range(failures):
        m.record_outcome("r", False)
    for _ in range(successes):
        m.record_outcome("r", True)
    # no clamp is reached from 5500 here: 5500 + 2000 = 7500 at most, 7500 - 2500 = 5000 at least
    assert m.floor("r") == 5500 + 2 * 100 * failures - 100 * successes
    if failures + successes == 0:
        assert m.report() == {}
        return
    row = m.report()["r"]
    assert (row["failures"], row["successes"], row["floor_bps"]) == (failures, successes, m.floor("r"))


@settings(deadline=None, max_examples=100)
@given(outcomes=st.lists(st.booleans(), max_size=80), step=st.integers(1, 700))
def test_floor_stays_clamped(outcomes, step):
    low, high = 5000, 6000
    m = monitor(domain="support", step_bps=step, min_floor_bps=low, max_floor_bps=high)
    expected = 5500
    for success in outcomes:
        m.record_outcome("r", success)
        expected = max(low, expected - step) if success else min(high, expected + 2 * step)
        assert m.floor("r") == expected
        assert low <= m.floor("r") <= high


def test_anomaly_raises_the_floor_for_that_decision_only():
    m = monitor(domain="coding", min_samples=3, anomaly_raise_bps=1000)
    for value in (10.0, 11.0, 9.0):
        m.assess("r", value)
    verdict = m.assess("r", 50.0)
    assert verdict.anomalous and verdict.floor_bps == 8200
    assert m.floor("r") == 7200
    assert m.assess("r", 10.0).floor_bps == 7200
    # the raise is clamped at the maximum
    capped = monitor(domain="security", min_samples=3, max_floor_bps=9500)
    for value in (10.0, 11.0, 9.0):
        capped.assess("r", value)
    assert capped.assess("r", 50.0).floor_bps == 9500


def test_numpy_bool_outcomes_are_accepted():
    m = monitor(domain="support")
    m.record_outcome("r", np.float64(0.7) >= 0.5)
    assert m.floor("r") == 5400


def test_shadow_mode_learns_but_binds_nothing():
    shadow = RegimeMonitor({**BASE, "enabled": False, "domain": "support", "min_samples": 3})
    for value in (10.0, 11.0, 9.0):
        shadow.assess("r", value)
    shadow.record_outcome("r", False)
    verdict = shadow.assess("r", 99.0)
    assert verdict.anomalous and verdict.floor_bps == 5500
    assert shadow.floor("r") == 5500
    assert shadow.report()["r"]["floor_bps"] == 5700 and shadow.report()["r"]["anomalies"] == 1


# --- reports, errors, state ------------------------------------------------------------


def test_report():
    m = monitor(domain="support")
    for value in (2.0, 4.0, 9.0):
        m.assess("x", value)
    m.record_outcome("only-outcomes", True)
    report = m.report()
    assert report["x"]["count"] == 3 and report["x"]["mean"] == 5.0
    assert report["x"]["std"] == pytest.approx(float(np.std([2.0, 4.0, 9.0], ddof=1)), rel=1e-15)
    assert report["only-outcomes"] == {"count": 0, "mean": 0.0, "std": 0.0, "floor_bps": 5400,
                                       "anomalies": 0, "successes": 1, "failures": 0}
    json.dumps(report)


def test_bad_inputs_change_nothing():
    m = monitor()
    m.assess("r", 1.0)
    m.record_outcome("r", True)
    before = copy.deepcopy(m.export_state())
    for value in (math.nan, math.inf, -math.inf, 1e16, "3", True, None):
        with pytest.raises(RegimeInputError):
            m.assess("r", value)
        with pytest.raises(RegimeInputError):
            m.assess("new", value)
    for regime in (None, 3, b"r"):
        with pytest.raises(RegimeInputError, match="regime"):
            m.assess(regime, 1.0)
        with pytest.raises(RegimeInputError, match="regime"):
            m.record_outcome(regime, True)
        with pytest.raises(RegimeInputError, match="regime"):
            m.floor(regime)
    for outcome in (1, 0.0, "yes", None):
        with pytest.raises(RegimeInputError, match="success"):
            m.record_outcome("r", outcome)
    assert m.export_state() == before
    assert isinstance(RegimeInputError("x"), ValueError)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"enabled": "true"}, "regimes.enabled must be true or false"),
        ({"metric": ""}, "regimes.metric must be null or a non-empty string"),
        ({"metric": 5}, "regimes.metric must be null or a non-empty string"),
        ({"z_threshold": 0}, "regimes.z_threshold must be a finite number > 0, got 0"),
        ({"z_threshold": math.nan}, "regimes.z_threshold must be a finite number > 0"),
        ({"min_samples": 1}, "regimes.min_samples must be an integer in [2,"),
        ({"min_samples": 30.0}, "regimes.min_samples must be an integer, got 30.0"),
        ({"anomaly_raise_bps": -1}, "regimes.anomaly_raise_bps must be an integer in [0, 10000], got -1"),
        ({"step_bps": 0}, "regimes.step_bps must be an integer in [1, 10000], got 0"),
        ({"domain": ""}, "regimes.domain must be null or a non-empty string"),
        ({"default_floors_bps": {"support": 12000}},
         "regimes.default_floors_bps.support must be an integer in [0, 10000]"),
        ({"default_floors_bps": [5500]}, "regimes.default_floors_bps must be a mapping"),
        ({"default_floor_bps": True}, "regimes.default_floor_bps must be an integer"),
        ({"min_floor_bps": 7000, "max_floor_bps": 6000},
         "regimes.min_floor_bps must be <= regimes.max_floor_bps (6000), got 7000"),
        ({"domain": "coding", "max_floor_bps": 7000},
         "regimes.default_floors_bps.coding must be within [regimes.min_floor_bps,"
         " regimes.max_floor_bps] = [0, 7000], got 7200"),
        ({"min_floor_bps": 6000}, "regimes.default_floor_bps must be within"),
        ({"z_treshold": 3.0}, "regimes.z_treshold is not a regimes setting"),
    ],
)
def test_bad_config_names_the_field(config, message):
    with pytest.raises(RegimeConfigError) as caught:
        RegimeMonitor({**BASE, **config})
    assert message in str(caught.value)
    assert isinstance(caught.value, InvalidConfig) and isinstance(caught.value, ValueError)


def test_config_must_be_a_mapping():
    with pytest.raises(RegimeConfigError, match="mapping"):
        RegimeMonitor(None)


def _drive(m, rng, steps):
    out = []
    for _ in range(steps):
        regime = f"r{int(rng.integers(0, 4))}"
        out.append(m.assess(regime, float(rng.normal(50.0, 8.0)) * (1 + 3 * (rng.uniform() < 0.02))))
        m.record_outcome(regime, bool(rng.uniform() < 0.4))
    return out


def test_state_round_trip_through_json():
    config = {**BASE, "domain": "support", "min_samples": 10}
    original = RegimeMonitor(config)
    _drive(original, np.random.default_rng(3), 300)
    state = original.export_state()
    restored = RegimeMonitor(config)
    restored.import_state(json.loads(json.dumps(state)))
    assert restored.export_state() == state
    assert restored.report() == original.report()
    left = _drive(original, np.random.default_rng(4), 200)
    right = _drive(restored, np.random.default_rng(4), 200)
    assert left == right
    assert any(v.anomalous for v in left)
    assert all(isinstance(v, RegimeAssessment) for v in left)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: s["regimes"]["r"].update(count=-1),
        lambda s: s["regimes"]["r"].update(count=1.0),
        lambda s: s["regimes"]["r"].update(m2=-1.0),
        lambda s: s["regimes"]["r"].update(mean=math.nan),
        lambda s: s["regimes"]["r"].update(mean="1"),
        lambda s: s["regimes"]["r"].update(floor_bps=20000),
        lambda s: s["regimes"]["r"].update(anomalies=99),
        lambda s: s["regimes"]["r"].pop("failures"),
        lambda s: s["regimes"].update({"z": {"count": 0, "mean": 1.0, "m2": 0.0, "floor_bps": 5000,
                                             "anomalies": 0, "successes": 0, "failures": 0}}),
        lambda s: s.update(extra=1),
        lambda s: s.update(regimes=[]),
    ],
)
def test_malformed_state_is_refused_and_changes_nothing(corrupt):
    source = monitor()
    for value in (1.0, 2.0, 4.0):
        source.assess("r", value)
    target = monitor()
    target.assess("other", 3.0)
    before = copy.deepcopy(target.export_state())
    state = copy.deepcopy(source.export_state())
    corrupt(state)
    with pytest.raises(RegimeStateError):
        target.import_state(state)
    assert target.export_state() == before


def test_doctests():
    results = doctest.testmod(regimes)
    assert results.attempted >= 5 and results.failed == 0
