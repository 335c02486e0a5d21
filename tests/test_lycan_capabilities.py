"""The capability kernels against numpy references, and their argument errors."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lycan
from lycan import CapabilityError
from lycan.capabilities import REGISTRY, call

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
series = st.lists(st.one_of(finite, st.integers(-10**6, 10**6)), min_size=1, max_size=50)


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=100)
@given(series)
def test_mean_std_min_max_match_numpy(values):
    data = np.array(values, dtype=float)
    assert close(call("stats.mean", None, values), data.mean())
    assert close(call("stats.stdDev", None, values), data.std(ddof=0))
    assert call("stats.min", None, values) == min(values) == data.min()
    assert call("stats.max", None, values) == max(values) == data.max()


@settings(max_examples=100)
@given(series, st.floats(min_value=0, max_value=100))
def test_percentile_matches_numpy_linear(values, p):
    expected = np.percentile(np.array(values, dtype=float), p, method="linear")
    assert math.isclose(call("stats.percentile", None, values, p), expected, rel_tol=1e-9, abs_tol=1e-6)


def ewma_reference(values, alpha):
    level = values[0]
    for value in values[1:]:
        level = alpha * value + (1 - alpha) * level
    return level


@settings(max_examples=100)
@given(series, st.floats(min_value=0, max_value=1))
def test_ewma_forecast_matches_the_recurrence(values, alpha):
    assert close(call("series.ewmaForecast", None, values, alpha), ewma_reference(values, alpha))


def test_ewma_known_values():
    assert call("series.ewmaForecast", None, [10], 0.3) == 10.0
    assert call("series.ewmaForecast", None, [10, 20], 0.5) == 15.0
    assert call("series.ewmaForecast", None, [1, 2, 3], 1) == 3.0
    assert call("series.ewmaForecast", None, [1, 2, 3], 0) == 1.0


@settings(max_examples=200)
@given(st.one_of(st.integers(-1000, 10**6), st.floats(min_value=-1e3, max_value=1e6)),
       st.one_of(st.integers(1, 1000), st.floats(min_value=0.01, max_value=1e3)),
       st.integers(0, 50), st.integers(0, 50))
def test_autoscale_matches_clamp_ceil(load, target, low, extra):
    high = low + extra
    expected = int(np.clip(np.ceil(np.float64(load) / np.float64(target)), low, high))
    got = call("ops.autoScaleRecommend", None, load, target, low, high)
    assert type(got) is int and got == expected


def test_autoscale_examples():
    assert call("ops.autoScaleRecommend", None, 250, 100, 1, 10) == 3
    assert call("ops.autoScaleRecommend", None, 300, 100, 1, 10) == 3
    assert call("ops.autoScaleRecommend", None, 0, 100, 2, 10) == 2
    assert call("ops.autoScaleRecommend", None, 10**6, 1, 1, 10) == 10
    assert call("ops.autoScaleRecommend", None, 1e300, 1e-300, 0, 7) == 7


def test_percentile_examples():
    assert call("stats.percentile", None, [5], 37) == 5.0
    assert call("stats.percentile", None, [3, 1, 2, 4], 0) == 1.0
    assert call("stats.percentile", None, [3, 1, 2, 4], 100) == 4.0
    assert call("stats.percentile", None, [1, 2, 3, 4], 25) == 1.75


BAD = [
    ("stats.mean", ([],), "values", "must not be empty"),
    ("stats.mean", ("abc",), "values", "array of numbers"),
    ("stats.stdDev", ([1, True],), "values", "element 1"),
    ("stats.min", ([1, None],), "values", "element 1"),
    ("stats.max", ([],), "values", "must not be empty"),
    ("stats.percentile", ([1, 2], 101), "p", "[0, 100]"),
    ("stats.percentile", ([1, 2], -0.5), "p", "[0, 100]"),
    ("stats.percentile", ([1, 2], "50"), "p", "must be a number"),
    ("series.ewmaForecast", ([1, 2], 1.5), "alpha", "[0, 1]"),
    ("series.ewmaForecast", ([], 0.5), "values", "must not be empty"),
    ("ops.autoScaleRecommend", (10, 0, 1, 5), "target", "must be > 0"),
    ("ops.autoScaleRecommend", (10, -1, 1, 5), "target", "must be > 0"),
    ("ops.autoScaleRecommend", (10, 5, -1, 5), "min", "must be >= 0"),
    ("ops.autoScaleRecommend", (10, 5, 6, 5), "max", "must be >= min"),
    ("ops.autoScaleRecommend", (10, 5, 1.5, 5), "min", "must be an int"),
    ("ops.autoScaleRecommend", ("10", 5, 1, 5), "load", "must be a number"),
    ("json.get", (5, 0), "value", "map or an array"),
    ("json.get", ({"a": 1}, 0), "key", "must be a string"),
    ("json.has", ([1], "0"), "key", "must be an int"),
    ("json.len", (5,), "value", "array, map or string"),
    ("runtime.inputGet", (5,), "path", "must be a string"),
]


@pytest.mark.parametrize("name, arguments, argument, fragment", BAD)
def test_bad_arguments_name_the_kernel_and_the_argument(name, arguments, argument, fragment):
    with pytest.raises(CapabilityError) as caught:
        call(name, None, *arguments)
    assert (caught.value.capability, caught.value.argument) == (name, argument)
    assert fragment in str(caught.value) and name in str(caught.value)


def test_non_finite_arguments_are_rejected_at_the_kernel():
    from lycan.capabilities import RunContext, stats_percentile
    from lycan.values import Array
    with pytest.raises(CapabilityError, match="must be finite"):
        stats_percentile(RunContext(None), Array([1.0]), math.nan)
    with pytest.raises(CapabilityError, match="element 0"):
        stats_percentile(RunContext(None), Array([math.inf]), 50)


def run(source, input_value=None):
    return lycan.run(lycan.compile_source(source), input_value)


def test_json_kernels():
    data = {"a": {"b": [10, 20]}, "n": None}
    assert call("json.get", None, data, "a") == {"b": [10, 20]}
    assert call("json.get", None, data, "zz") is None
    assert call("json.get", None, [1, 2], 1) == 2 and call("json.get", None, [1, 2], 2) is None
    assert call("json.has", None, data, "n") is True and call("json.has", None, data, "x") is False
    assert call("json.has", None, [1], 0) is True and call("json.has", None, [1], -1) is False
    assert call("json.len", None, data) == 2 and call("json.len", None, "abc") == 3


def test_runtime_kernels_read_the_input_and_publish():
    input_value = {"a": {"b": [10, {"c": "deep"}]}, "x": 1}
    assert run('(!cap "runtime.inputGet" "a.b.1.c")', input_value).value == "deep"
    assert run('(!cap "runtime.inputGet" "a.b.0")', input_value).value == 10
    for missing in ["a.zz", "a.b.9", "x.y", "a.b.-1", "a.b.x"]:
        assert run(f'(!cap "runtime.inputGet" "{missing}")', input_value).value is None
    assert lycan.values.to_json(run('(!cap "runtime.inputGet" "")', input_value).value) == input_value
    assert lycan.values.to_json(run('(!cap "runtime.input")', input_value).value) == input_value
    result = run('(!cap "runtime.publish" "p" (A 1 2)) (!cap "runtime.publish" "q" 3)')
    assert lycan.values.to_json(result.published["p"]) == [1, 2] and result.published["q"] == 3
    with pytest.raises(CapabilityError, match="already published"):
        run('(!cap "runtime.publish" "p" 1) (!cap "runtime.publish" "p" 2)')
    with pytest.raises(CapabilityError, match="JSON form"):
        run('(!cap "runtime.publish" "f" (\\ (x) x))')


def test_registry_entries_describe_themselves():
    expected = {"runtime.input", "runtime.inputGet", "runtime.publish", "json.get", "json.has",
                "json.len", "stats.mean", "stats.stdDev", "stats.min", "stats.max",
                "stats.percentile", "series.ewmaForecast", "ops.autoScaleRecommend",
                "file.exists", "file.readText", "file.writeText", "sql.sqliteQuery", "http.get",
                "http.post"}
    assert set(REGISTRY) == expected
    for capability in REGISTRY.values():
        assert capability.pure == (not capability.effects)
        assert capability.output and capability.summary
    assert REGISTRY["runtime.publish"].effects == ("publish",)
    assert [i.name for i in REGISTRY["ops.autoScaleRecommend"].inputs] == ["load", "target", "min", "max"]


def test_stats_stay_finite_where_the_answer_is():
    import numpy as np
    from lycan.capabilities import stats_mean, stats_percentile, stats_std_dev

    assert stats_std_dev(None, lycan.values.Array([1e200, -1e200])) == pytest.approx(1e200)
    assert stats_mean(None, lycan.values.Array([1e308, 1e308])) == 1e308
    assert stats_std_dev(None, lycan.values.Array([5.0, 5.0])) == 0.0
    rng = np.random.default_rng(4)
    for _ in range(300):
        data = rng.random(int(rng.integers(1, 12))).round(3).tolist()
        p = float(rng.integers(0, 101))
        assert stats_percentile(None, lycan.values.Array(data), p) == np.percentile(data, p)
