"""ADWIN drift detection: parity with river, the paper's guarantees, state and validation.

River's ``drift.ADWIN`` is the oracle for detection positions and window statistics:
``reset_on_drift=True`` is compared with it through its public API, and the paper's
behaviour (``reset_on_drift=False``, the window keeps what follows the cut) with the
``AdaptiveWindowing`` class river's ADWIN runs on. numpy recomputes the window's
statistics independently.
"""

import copy
import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syntra.errors import InvalidConfig
from syntra.learning.drift import MAX_ABS_VALUE, Adwin

PARAMETER_SETS = [
    {},  # river's defaults: delta 0.002, clock 32, 5 buckets, min length 5, grace 10
    {"delta": 0.05, "clock": 1, "max_buckets": 3, "min_window_length": 2, "grace_period": 0},
    {"delta": 1e-4, "clock": 8, "max_buckets": 2, "min_window_length": 10, "grace_period": 50},
    {"delta": 0.3, "clock": 5, "max_buckets": 9, "min_window_length": 1, "grace_period": 3},
]


STREAM_KINDS = ["bernoulli_shifts", "gaussian_gradual", "stationary", "heavy_tailed"]


def _river_adwin(params):
    drift = pytest.importorskip("river.drift")
    return drift.ADWIN(**params)


def _river_adaptive_window(params):
    # The detector behind river's ADWIN, without ADWIN's reset after each detection.
    rust = pytest.importorskip("river._river_rust.drift")
    return rust.AdaptiveWindowing(**params)


def _stream(kind, n, rng):
    """Streams in [0, 1] (except the Gaussian ones) with and without changes."""
    if kind == "bernoulli_shifts":
        p = np.repeat(rng.uniform(0.05, 0.95, 4), n // 4 + 1)[:n]
        return (rng.random(n) < p).astype(float)
    if kind == "gaussian_gradual":
        return rng.normal(np.linspace(0.0, rng.uniform(-2.0, 2.0), n), rng.uniform(0.1, 1.0))
    if kind == "stationary":
        return rng.random(n)
    if kind == "heavy_tailed":
        return np.clip(0.5 + 0.1 * rng.standard_t(1.5, n), 0.0, 1.0)
    raise AssertionError(kind)


def _compare_with_river(values, params, reset_on_drift, checkpoint_every=97):
    """Drive both detectors value by value; assert same detections and window statistics."""
    ours = Adwin(**params, reset_on_drift=reset_on_drift)
    if reset_on_drift:
        theirs = _river_adwin(params)

        def river_update(x):
            theirs.update(x)
            return theirs.drift_detected

        def river_stats():
            return theirs.width, theirs.total, theirs.variance
    else:
        theirs = _river_adaptive_window(params)
        river_update = theirs.update

        def river_stats():
            return theirs.get_width(), theirs.get_total(), theirs.get_variance()

    ours_at, theirs_at = [], []
    for i, x in enumerate(values.tolist()):
        if ours.update(x):
            ours_at.append(i)
        if river_update(x):
            theirs_at.append(i)
        if i % checkpoint_every == 0 or i == len(values) - 1:
            width, total, sum_squares = river_stats()
            assert ours.width == width, i
            # Same arithmetic in the same order: equal to the last bit.
            assert ours.total == total, i
            assert ours.estimation == total / width, i
            assert ours.variance == sum_squares / width, i
    assert ours_at == theirs_at
    return ours_at


@pytest.mark.parametrize("params", PARAMETER_SETS, ids=["defaults", "clock1", "strict", "loose"])
@pytest.mark.parametrize("kind", STREAM_KINDS)
@pytest.mark.parametrize("reset_on_drift", [False, True], ids=["paper", "river_reset"])
def test_detections_match_river(kind, params, reset_on_drift):
    rng = np.random.default_rng([STREAM_KINDS.index(kind), PARAMETER_SETS.index(params),
                                 reset_on_drift])
    values = _stream(kind, 3000, rng)
    detections = _compare_with_river(values, params, reset_on_drift)
    if kind == "bernoulli_shifts" and params.get("delta", 0.002) >= 0.002:
        # Not a vacuous comparison: the shifts are large enough to be detected.
        assert detections


segment = st.tuples(
    st.sampled_from(["bernoulli", "gaussian", "uniform_band"]),
    st.floats(0.0, 1.0),
    st.integers(20, 700),
)


@settings(deadline=None, max_examples=40)
@given(
    segments=st.lists(segment, min_size=1, max_size=6),
    delta=st.sampled_from([1e-6, 1e-3, 0.002, 0.02, 0.2, 0.9]),
    clock=st.integers(1, 64),
    max_buckets=st.integers(2, 8),
    min_window_length=st.integers(1, 30),
    grace_period=st.integers(0, 100),
    reset_on_drift=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_piecewise_stationary_streams_match_river(segments, delta, clock, max_buckets,
                                                  min_window_length, grace_period,
                                                  reset_on_drift, seed):
    rng = np.random.default_rng(seed)
    parts = []
    for kind, level, length in segments:
        if kind == "bernoulli":
            parts.append((rng.random(length) < level).astype(float))
        elif kind == "gaussian":
            parts.append(rng.normal(level, 0.2, length))
        else:
            parts.append(level + 0.1 * (rng.random(length) - 0.5))
    params = {"delta": delta, "clock": clock, "max_buckets": max_buckets,
                  "min_window_length": min_window_length, "grace_period": grace_period}
    _compare_with_river(np.concatenate(parts), params, reset_on_drift, checkpoint_every=53)


@pytest.mark.parametrize("reset_on_drift", [False, True])
def test_feed_equals_update_by_update(reset_on_drift):
    values = _stream("bernoulli_shifts", 20_000, np.random.default_rng(3))
    one_by_one = Adwin(reset_on_drift=reset_on_drift)
    expected = [i for i, x in enumerate(values.tolist()) if one_by_one.update(x)]
    batched = Adwin(reset_on_drift=reset_on_drift)
    found = batched.feed(values)
    assert found.dtype == np.int64 and found.tolist() == expected and len(expected) >= 3
    assert batched.export_state() == one_by_one.export_state()
    assert batched.detections == len(expected)


def test_window_statistics_are_those_of_the_latest_values():
    # ADWIN only ever drops the oldest values, so the window is the last `width` values.
    values = _stream("bernoulli_shifts", 6000, np.random.default_rng(11))
    detector = Adwin(clock=4)
    cuts = 0
    for i, x in enumerate(values.tolist()):
        cuts += detector.update(x)
        window = values[i + 1 - detector.width:i + 1]
        if i % 50 == 0:
            assert math.isclose(detector.total, window.sum(), rel_tol=1e-12, abs_tol=1e-9)
            assert math.isclose(detector.estimation, window.mean(), rel_tol=1e-12, abs_tol=1e-12)
            assert math.isclose(detector.variance, window.var(), rel_tol=1e-9, abs_tol=1e-12)
    assert cuts >= 3 and detector.width < len(values) / 2


def _detection_delay_bound(p_before, p_after, n_before, delta, clock, min_window_length):
    """Post-change values after which ADWIN must have cut (with overwhelming probability).

    Worst cases everywhere: the window variance is taken as 1/4 (its maximum for values in
    [0, 1]); the split tested is at a bucket boundary, where at least half the n1
    post-change values are in W1 (in a histogram with >= 2 buckets per size, the buckets
    newer than any given one add up to at least its size minus one) and the rest dilute
    W0; both sub-window means may be off by 4 standard deviations of a Bernoulli mean
    (probability < 1e-4 each). The smallest n1 where the gap still exceeds eps_cut, plus
    one clock period to reach the next check, bounds the delay.
    """
    for n1 in range(1, 100_000):
        in_new = n1 // 2
        in_old = n_before + n1 - in_new
        mean_new = p_after - 4 * math.sqrt(p_after * (1 - p_after) / in_new) if in_new else 0.0
        mean_old = ((p_before * n_before + p_after * (n1 - in_new)) / in_old
                    + 4 * math.sqrt(0.25 / in_old))
        width = n_before + n1
        log_term = math.log(2 * math.log(width) / delta)
        inverse_m = (1 / (in_old - min_window_length + 1)
                     + 1 / max(in_new - min_window_length + 1, 1e-300))
        eps_cut = math.sqrt(2 * inverse_m * 0.25 * log_term) + 2 / 3 * log_term * inverse_m
        if in_new >= min_window_length and mean_new - mean_old > eps_cut:
            return n1 + clock
    raise AssertionError("no bound")


def test_abrupt_shift_is_detected_within_the_bound():
    change_at, delta, clock = 1000, 0.002, 32
    bound = _detection_delay_bound(0.2, 0.8, change_at, delta, clock, min_window_length=5)
    assert bound <= 300  # "a few hundred samples" for a 0.6 shift at delta 0.002
    delays = []
    for seed in range(50):
        rng = np.random.default_rng([7, seed])
        p = np.where(np.arange(change_at + bound) < change_at, 0.2, 0.8)
        detector = Adwin(delta=delta, clock=clock)
        found = detector.feed((rng.random(len(p)) < p).astype(float))
        assert len(found) and found[0] >= change_at, (seed, found)  # no false alarm first
        delays.append(found[0] - change_at)
        # The cut dropped the old regime: the window mean moved towards the new one.
        assert detector.estimation > 0.5
    assert max(delays) < bound, delays


@pytest.mark.parametrize("delta, clock, n, grace_period", [
    (0.002, 32, 4000, 10),
    (0.01, 16, 1000, 10),
    (0.05, 32, 600, 100),
])
def test_false_alarms_stay_under_the_guarantee(delta, clock, n, grace_period):
    """Theorem 3.1: on a stationary stream each check alarms with probability <= delta.

    A stream of n values is checked at most n / clock times (every clock-th update once
    past the grace period), so by the union bound a stream raises any false alarm with
    probability <= delta * n / clock, and the expected alarms per check are <= delta.
    """
    checks_per_stream = (n - grace_period) // clock + 1
    streams, streams_with_alarm, alarms = 200, 0, 0
    rng = np.random.default_rng([int(1 / delta), clock, n])
    for s in range(streams):
        kind = s % 3
        if kind == 0:
            values = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(float)
        elif kind == 1:
            values = rng.random(n)
        else:
            values = np.clip(0.5 + 0.1 * rng.standard_t(1.5, n), 0.0, 1.0)
        found = len(Adwin(delta=delta, clock=clock, grace_period=grace_period).feed(values))
        alarms += found
        streams_with_alarm += found > 0
    assert streams_with_alarm / streams <= delta * checks_per_stream
    assert alarms / (streams * checks_per_stream) <= delta


@pytest.mark.parametrize("reset_on_drift", [False, True])
def test_export_import_mid_stream_continues_identically(reset_on_drift):
    values = _stream("bernoulli_shifts", 8000, np.random.default_rng(21))
    whole = Adwin(clock=4, reset_on_drift=reset_on_drift)
    everything = whole.feed(values).tolist()
    assert len(everything) >= 2
    # Split right at a detection too, so a pending reset travels with the state.
    for split in (1, 2500, everything[0] + 1, 6001):
        first = Adwin(clock=4, reset_on_drift=reset_on_drift)
        before = first.feed(values[:split]).tolist()
        state = copy.deepcopy(first.export_state())
        second = Adwin(clock=4, reset_on_drift=reset_on_drift)
        second.import_state(state)
        assert second.export_state() == state
        assert (second.width, second.total, second.variance, second.detections,
                second.drift_detected) == (first.width, first.total, first.variance,
                                           first.detections, first.drift_detected)
        after = [split + i for i in second.feed(values[split:]).tolist()]
        assert before + after == everything
        assert second.export_state() == whole.export_state()


def test_state_is_plain_values_and_bytes():
    detector = Adwin()
    detector.feed(np.linspace(0, 1, 5000))
    for key, value in detector.export_state().items():
        assert type(value) in (int, float, bool, bytes), key


def _corruptions(state):
    counts = np.frombuffer(state["counts"], dtype=np.int64)
    totals = np.frombuffer(state["bucket_totals"], dtype=np.float64)
    m2 = np.frombuffer(state["bucket_m2"], dtype=np.float64)
    too_many = counts.copy()
    too_many[0] = 6
    empty_middle = counts.copy()
    empty_middle[1] = 0
    nan_totals = totals.copy()
    nan_totals[0] = np.nan
    negative_m2 = m2.copy()
    negative_m2[-1] = -1.0
    return {
        "not a dict": [state],
        "missing key": {k: v for k, v in state.items() if k != "tick"},
        "extra key": {**state, "more": 1},
        "other delta": {**state, "delta": 0.01},
        "other clock": {**state, "clock": 16},
        "other reset mode": {**state, "reset_on_drift": True},
        "width mismatch": {**state, "width": state["width"] + 1},
        "negative tick": {**state, "tick": -1},
        "float width": {**state, "width": float(state["width"])},
        "nan total": {**state, "total": float("nan")},
        "infinite m2": {**state, "m2": float("inf")},
        "int drift flag": {**state, "drift_detected": 0},
        "counts not int64s": {**state, "counts": state["counts"][:-1]},
        "too many levels": {**state, "counts": bytes(8 * 65)},
        "count above max_buckets": {**state, "counts": too_many.tobytes()},
        "empty middle level": {**state, "counts": empty_middle.tobytes()},
        "short totals": {**state, "bucket_totals": state["bucket_totals"][:-8]},
        "totals not bytes": {**state, "bucket_totals": list(totals)},
        "nan bucket": {**state, "bucket_totals": nan_totals.tobytes()},
        "negative bucket m2": {**state, "bucket_m2": negative_m2.tobytes()},
    }


def test_malformed_state_raises_and_changes_nothing():
    source = Adwin()
    source.feed(_stream("stationary", 3000, np.random.default_rng(5)))
    state = source.export_state()
    assert len(np.frombuffer(state["counts"], dtype=np.int64)) >= 3
    target = Adwin()
    target.feed(_stream("stationary", 700, np.random.default_rng(6)))
    untouched = target.export_state()
    for name, bad in _corruptions(state).items():
        with pytest.raises(ValueError):
            target.import_state(bad)
        assert target.export_state() == untouched, name
    target.import_state(state)
    assert target.export_state() == state


def test_reset_forgets_everything():
    values = _stream("bernoulli_shifts", 5000, np.random.default_rng(8))
    used = Adwin(clock=2)
    assert len(used.feed(values)) > 0
    used.reset()
    fresh = Adwin(clock=2)
    assert used.export_state() == fresh.export_state()
    assert (used.width, used.total, used.estimation, used.variance, used.detections,
            used.drift_detected) == (0, 0.0, 0.0, 0.0, 0, False)
    assert used.feed(values).tolist() == fresh.feed(values).tolist()


@pytest.mark.parametrize("name, value", [
    ("delta", 0.0), ("delta", 1.0), ("delta", -0.1), ("delta", float("nan")),
    ("delta", float("inf")), ("delta", "0.1"), ("delta", True),
    ("clock", 0), ("clock", -3), ("clock", 2**31), ("clock", 1.5), ("clock", 2**70),
    ("max_buckets", 1), ("max_buckets", 0), ("max_buckets", 1025), ("max_buckets", 2**40),
    ("min_window_length", 0), ("min_window_length", -1), ("min_window_length", None),
    ("grace_period", -1), ("grace_period", 2**31), ("grace_period", False),
    ("reset_on_drift", 1), ("reset_on_drift", "yes"),
])
def test_bad_parameters_are_refused_by_name(name, value):
    with pytest.raises(InvalidConfig, match=name) as raised:
        Adwin(**{name: value})
    assert isinstance(raised.value, ValueError)


def test_parameters_at_the_limits_are_accepted():
    detector = Adwin(delta=1e-12, clock=2**31 - 1, max_buckets=1024, min_window_length=1,
                     grace_period=0, reset_on_drift=True)
    assert not detector.update(0.5)
    assert repr(detector).startswith("Adwin(delta=1e-12, clock=2147483647, max_buckets=1024")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e101, -2 * MAX_ABS_VALUE])
def test_unacceptable_values_are_refused_and_change_nothing(bad):
    detector = Adwin()
    detector.feed(np.linspace(0, 1, 300))
    before = detector.export_state()
    with pytest.raises(ValueError, match="finite"):
        detector.update(bad)
    assert detector.export_state() == before
    with pytest.raises(ValueError, match=r"values\[2\]"):
        detector.feed(np.array([0.5, 0.5, bad, 0.5]))
    assert detector.export_state() == before
    assert detector.update(MAX_ABS_VALUE) in (True, False)  # the limit itself is accepted


def test_wrong_input_types():
    detector = Adwin()
    with pytest.raises(TypeError):
        detector.update("0.5")
    with pytest.raises(TypeError):
        detector.update(True)
    with pytest.raises(ValueError, match="one-dimensional"):
        detector.feed(np.zeros((3, 2)))
    assert detector.width == 0
    assert detector.feed([0.0, 1.0]).tolist() == [] and detector.width == 2


@pytest.mark.parametrize("max_buckets", [2, 5, 10])
def test_memory_is_logarithmic_in_the_width(max_buckets):
    # An alternating stream never changes: the window grows to every value fed.
    n = 1_000_000
    detector = Adwin(max_buckets=max_buckets)
    assert len(detector.feed(np.arange(n) % 2)) == 0
    assert detector.width == n and detector.total == n // 2
    levels = detector.bucket_counts()
    assert all(1 <= count <= max_buckets for count in levels)
    assert sum((count << level) for level, count in enumerate(levels)) == n
    assert detector.n_buckets == sum(levels)
    assert detector.n_buckets <= (max_buckets + 1) * (math.log2(n) + 1)
    assert len(levels) <= math.log2(n) + 1


def test_updates_allocate_nothing():
    detector = Adwin(clock=1)
    values = np.random.default_rng(2).random(200_000).tolist()
    for x in values[:1000]:
        detector.update(x)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for x in values[1000:]:
            detector.update(x)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 1024 and detector.width > 1000
