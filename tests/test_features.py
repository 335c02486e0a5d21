"""Context encoders: discrete keys, and typed features against hand-computed encodings."""

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syntra.errors import InvalidConfig, InvalidContext
from syntra.learning.features import ContextEncoder, ContextSpec

SPEC = {"kind": "features", "features": {
    "hour": {"type": "cyclic", "period": 24},
    "load": {"type": "continuous", "range": [0, 200]},
    "tier": {"type": "categorical", "values": ["free", "pro", "enterprise"]},
    "mobile": {"type": "boolean"},
}}
GOOD = {"hour": 6, "load": 50, "tier": "pro", "mobile": True}


@pytest.fixture(scope="module")
def encoder():
    return ContextEncoder.from_spec(SPEC)


# --- discrete -------------------------------------------------------------------------------


def test_discrete_keys():
    encoder = ContextEncoder.from_spec({"kind": "discrete", "key": "user.tier"})
    assert encoder.kind == "discrete" and encoder.dim == 0 and encoder.columns == ()
    assert encoder.spec.key == "user.tier"
    assert encoder.encode_key("checkout") == "checkout"
    assert encoder.encode_key("") == ""
    assert encoder.encode_key("é" * 256) == "é" * 256
    assert ContextEncoder.from_spec(None).kind == "discrete"


@pytest.mark.parametrize("key, message", [
    (None, "string of at most 256"), (3, "string of at most 256"), (b"bytes", "string of at most 256"),
    ("x" * 257, "string of at most 256"), ("bad\ud800", "valid Unicode"),
])
def test_bad_discrete_keys(key, message):
    with pytest.raises(InvalidContext, match=message):
        ContextEncoder.from_spec(None).encode_key(key)


def test_the_wrong_kind_of_context_is_refused(encoder):
    with pytest.raises(InvalidContext, match="pass the key, not features"):
        ContextEncoder.from_spec(None).encode({"a": 1})
    with pytest.raises(InvalidContext, match="pass the key, not features"):
        ContextEncoder.from_spec(None).regime_key({"a": 1})
    with pytest.raises(InvalidContext, match="pass them, not a key"):
        encoder.encode_key("k")


# --- features: hand-computed encodings -------------------------------------------------------


def test_columns_follow_the_spec_order(encoder):
    assert encoder.columns == ("hour.sin", "hour.cos", "load", "tier=free", "tier=pro", "tier=enterprise",
                               "mobile", "(bias)")
    assert encoder.dim == 8


def test_encoding_by_hand(encoder):
    x = encoder.encode(GOOD)
    assert x.dtype == np.float64 and x.shape == (8,)
    # 6 h of 24 is a quarter turn: sin 1, cos 0.
    np.testing.assert_allclose(x, [1.0, 0.0, 0.25, 0.0, 1.0, 0.0, 1.0, 1.0], atol=1e-15)


@pytest.mark.parametrize("hour, sin, cos", [
    (0, 0.0, 1.0), (3, math.sqrt(0.5), math.sqrt(0.5)), (4, math.sqrt(3) / 2, 0.5), (12, 0.0, -1.0),
    (18, -1.0, 0.0), (24, 0.0, 1.0), (30, 1.0, 0.0), (-6, -1.0, 0.0), (24 * 10**9 + 6, 1.0, 0.0),
    (2.5, 0.6087614290087207, 0.7933533402912352),   # sin/cos of 37.5 degrees
])
def test_cyclic_features(encoder, hour, sin, cos):
    x = encoder.encode({**GOOD, "hour": hour})
    assert x[0] == pytest.approx(sin, abs=1e-12) and x[1] == pytest.approx(cos, abs=1e-12)


def test_cyclic_matches_numpy_for_moderate_values():
    encoder = ContextEncoder.from_spec({"kind": "features", "features": {"t": {"type": "cyclic", "period": 7.5}}})
    for v in np.linspace(-100, 100, 57):
        x = encoder.encode({"t": float(v)})
        assert x[0] == pytest.approx(np.sin(2 * np.pi * v / 7.5), abs=1e-12)
        assert x[1] == pytest.approx(np.cos(2 * np.pi * v / 7.5), abs=1e-12)


@pytest.mark.parametrize("load, scaled", [(0, 0.0), (200, 1.0), (150, 0.75), (-10, 0.0), (1e300, 1.0),
                                          (-1e300, 0.0), (10**30, 1.0), (np.float32(100), 0.5), (np.int64(20), 0.1)])
def test_continuous_features_scale_and_clip(encoder, load, scaled):
    assert encoder.encode({**GOOD, "load": load})[2] == pytest.approx(scaled, abs=1e-15)


def test_unclipped_continuous_features_refuse_values_outside_the_range():
    encoder = ContextEncoder.from_spec({"kind": "features", "bias": False, "features": {
        "temp": {"type": "continuous", "range": [-20, 40], "clip": False}}})
    assert encoder.columns == ("temp",)
    assert encoder.encode({"temp": 10}).tolist() == [0.5]
    assert encoder.encode({"temp": -20}).tolist() == [0.0]
    assert encoder.encode({"temp": 40}).tolist() == [1.0]
    with pytest.raises(InvalidContext, match=r"feature 'temp' must be in \[-20, 40\], got 41"):
        encoder.encode({"temp": 41})


@pytest.mark.parametrize("tier, position", [("free", 3), ("pro", 4), ("enterprise", 5)])
def test_categorical_one_hot(encoder, tier, position):
    x = encoder.encode({**GOOD, "tier": tier})
    expected = np.zeros(3)
    expected[position - 3] = 1.0
    assert x[3:6].tolist() == expected.tolist()


def test_boolean_features(encoder):
    assert encoder.encode({**GOOD, "mobile": False})[6] == 0.0
    assert encoder.encode({**GOOD, "mobile": np.bool_(True)})[6] == 1.0


def test_without_bias_there_is_no_bias_column():
    encoder = ContextEncoder.from_spec({**SPEC, "bias": False})
    assert encoder.dim == 7 and "(bias)" not in encoder.columns
    assert encoder.encode(GOOD).tolist()[2:] == [0.25, 0.0, 1.0, 0.0, 1.0]


# --- features: refusals -----------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"hour": math.nan}, "feature 'hour' must be a finite number, got nan"),
    ({"hour": math.inf}, "feature 'hour' must be a finite number"),
    ({"load": -math.inf}, "feature 'load' must be a finite number"),
    ({"load": 10**400}, "feature 'load' must be a finite number"),
    ({"load": "50"}, "feature 'load' must be a finite number"),
    ({"load": None}, "feature 'load' must be a finite number"),
    ({"load": True}, "feature 'load' must be a finite number"),
    ({"hour": np.float64("nan")}, "feature 'hour' must be a finite number"),
    ({"tier": "gold"}, "feature 'tier': 'gold' is not one of its categories"),
    ({"tier": 1}, "feature 'tier': 1 is not one of its categories"),
    ({"mobile": 1}, "feature 'mobile' must be true or false, got 1"),
    ({"mobile": "true"}, "feature 'mobile' must be true or false"),
    ({"extra": 1}, "unknown features 'extra' \\(known: "),
    ({7: 1}, "unknown features 7 \\(known: "),
])
def test_bad_features_are_named(encoder, change, message):
    with pytest.raises(InvalidContext, match=message):
        encoder.encode({**GOOD, **change})
    with pytest.raises(InvalidContext, match=message):
        encoder.regime_key({**GOOD, **change})


@pytest.mark.parametrize("name", ["hour", "load", "tier", "mobile"])
def test_missing_features_are_named(encoder, name):
    features = {k: v for k, v in GOOD.items() if k != name}
    with pytest.raises(InvalidContext, match=f"feature '{name}' is missing"):
        encoder.encode(features)


def test_features_must_be_a_mapping(encoder):
    with pytest.raises(InvalidContext, match="mapping of feature name"):
        encoder.encode([("hour", 1)])


def test_encode_into_writes_in_place_and_nothing_on_error(encoder):
    out = np.full(encoder.dim, 7.0)
    assert encoder.encode_into(GOOD, out) is None
    np.testing.assert_allclose(out, encoder.encode(GOOD))
    before = out.copy()
    # The last feature is the bad one: the earlier ones must not have been written either.
    with pytest.raises(InvalidContext, match="mobile"):
        encoder.encode_into({"hour": 0, "load": 200, "tier": "free", "mobile": 0}, out)
    assert out.tolist() == before.tolist()
    # A categorical block is fully rewritten: no stale one from the previous encoding.
    encoder.encode_into({**GOOD, "tier": "enterprise"}, out)
    assert out[3:6].tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("out", [np.zeros(8, dtype=np.float32), np.zeros(7), np.zeros((8, 1)), [0.0] * 8])
def test_encode_into_refuses_a_wrong_buffer(encoder, out):
    with pytest.raises(ValueError, match="float64 array of shape"):
        encoder.encode_into(GOOD, out)


def test_encode_into_refuses_a_read_only_buffer(encoder):
    out = np.zeros(8)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        encoder.encode_into(GOOD, out)


# --- regime keys ------------------------------------------------------------------------------


def test_regime_keys_by_hand(encoder):
    assert encoder.regime_key(GOOD) == "hour=q1|load=q1|tier=pro|mobile=true"
    assert encoder.regime_key({"hour": 23, "load": 199, "tier": "free", "mobile": False}) \
        == "hour=q3|load=q3|tier=free|mobile=false"
    assert encoder.regime_key({"hour": -1, "load": 1e9, "tier": "enterprise", "mobile": False}) \
        == "hour=q3|load=q3|tier=enterprise|mobile=false"
    assert encoder.regime_key({"hour": 12, "load": 100, "tier": "free", "mobile": False}) \
        == "hour=q2|load=q2|tier=free|mobile=false"


def test_regime_keys_escape_unsafe_categories_and_hash_long_keys():
    odd = ContextEncoder.from_spec({"kind": "features", "features": {
        "city": {"type": "categorical", "values": ["a|b=c", "ok"]}}})
    assert odd.regime_key({"city": "a|b=c"}) == "city=#0"
    assert odd.regime_key({"city": "ok"}) == "city=ok"
    many = ContextEncoder.from_spec({"kind": "features", "features": {
        f"feature_with_a_long_name_{i}": {"type": "boolean"} for i in range(12)}})
    first = many.regime_key({f"feature_with_a_long_name_{i}": True for i in range(12)})
    second = many.regime_key({f"feature_with_a_long_name_{i}": i != 3 for i in range(12)})
    assert re.fullmatch(r"regime:[0-9a-f]{32}", first) and re.fullmatch(r"regime:[0-9a-f]{32}", second)
    assert first != second
    assert first == many.regime_key({f"feature_with_a_long_name_{i}": True for i in range(12)})


# --- spec validation -------------------------------------------------------------------------


def features(**specs):
    return {"kind": "features", "features": specs}


BAD_SPECS = [
    (features(hour={"type": "cyclic", "period": 0}), "contextSpec.features.hour.period", "must be > 0"),
    (features(hour={"type": "cyclic", "period": -24}), "contextSpec.features.hour.period", "must be > 0"),
    (features(hour={"type": "cyclic", "period": math.inf}), "contextSpec.features.hour.period", "must be > 0"),
    (features(hour={"type": "cyclic"}), "contextSpec.features.hour.period", "must be > 0"),
    (features(hour={"type": "cyclic", "period": 24, "range": [0, 1]}), "contextSpec.features.hour.range",
     "not a field of a cyclic feature"),
    (features(x={"type": "continuous"}), "contextSpec.features.x.range", "must be \\[low, high\\]"),
    (features(x={"type": "continuous", "range": [1, 1]}), "contextSpec.features.x.range", "low < high"),
    (features(x={"type": "continuous", "range": [-1e308, 1e308]}), "contextSpec.features.x.range", "finite width"),
    (features(x={"type": "continuous", "range": [0, math.nan]}), "contextSpec.features.x.range[1]", "finite"),
    (features(x={"type": "continuous", "range": [True, 2]}), "contextSpec.features.x.range[0]", "finite"),
    (features(x={"type": "continuous", "range": [0, 1], "clip": "no"}), "contextSpec.features.x.clip",
     "true or false"),
    (features(x={"type": "categorical", "values": []}), "contextSpec.features.x.values", "non-empty list"),
    (features(x={"type": "categorical", "values": ["a", "a"]}), "contextSpec.features.x.values[1]", "repeats"),
    (features(x={"type": "categorical", "values": ["a", ""]}), "contextSpec.features.x.values[1]", "1-256"),
    (features(x={"type": "categorical", "values": ["a", 3]}), "contextSpec.features.x.values[1]", "string"),
    (features(x={"type": "categorical", "values": [f"v{i}" for i in range(256)]}), "contextSpec.features",
     "257 columns"),
    (features(x={"type": "integer"}), "contextSpec.features.x.type", "continuous, cyclic"),
    (features(x={"type": "boolean", "default": False}), "contextSpec.features.x.default", "not a field"),
    (features(x="boolean"), "contextSpec.features.x", "must be an object"),
    ({"kind": "features", "features": {"bad name": {"type": "boolean"}}}, "contextSpec.features.bad name",
     "not a valid feature name"),
    ({"kind": "features", "features": [{"name": "hour", "type": "cyclic", "period": 0}]},
     "contextSpec.features[0].period", "must be > 0"),
    ({"kind": "features", "features": [{"name": "a", "type": "boolean"}, {"name": "a", "type": "boolean"}]},
     "contextSpec.features[1]", "repeats the feature 'a'"),
    ({"kind": "features", "features": [{"type": "boolean"}]}, "contextSpec.features[0].name", "dotted path"),
    ({"kind": "features", "features": ["hour"]}, "contextSpec.features[0]", "must be an object"),
    ({"kind": "features", "features": "hour"}, "contextSpec.features", "object of named features"),
]


@pytest.mark.parametrize("spec, path, reason", BAD_SPECS)
def test_bad_specs_name_the_field(spec, path, reason):
    with pytest.raises(InvalidConfig) as error:
        ContextEncoder.from_spec(spec)
    message = str(error.value)
    assert message.startswith(f"{path} "), message
    assert re.search(reason, message), message


def test_list_form_equals_object_form_and_round_trips():
    listed = ContextSpec.parse({"kind": "features", "bias": False, "features": [
        {"name": "user.hour", "type": "cyclic", "period": 24},
        {"name": "tier", "type": "categorical", "values": ["a", "b"]}]})
    named = ContextSpec.parse({"kind": "features", "bias": False, "features": {
        "user.hour": {"type": "cyclic", "period": 24}, "tier": {"type": "categorical", "values": ["a", "b"]}}})
    assert listed == named
    assert ContextSpec.parse(named.to_dict()) == named
    assert ContextEncoder.from_spec(named).columns == ("user.hour.sin", "user.hour.cos", "tier=a", "tier=b")


# --- properties ---------------------------------------------------------------------------------

PROPERTY_SPEC = {"kind": "features", "features": {
    "t": {"type": "cyclic", "period": 3600},
    "x": {"type": "continuous", "range": [-5, 5]},
    "y": {"type": "continuous", "range": [0, 1e6], "clip": False},
    "c": {"type": "categorical", "values": ["a", "b", "c", "d"]},
    "b": {"type": "boolean"},
}}
PROPERTY_ENCODER = ContextEncoder.from_spec(PROPERTY_SPEC)

numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10**300, 10**300)


@settings(deadline=None, max_examples=200)
@given(t=numbers, x=numbers, y=st.floats(0, 1e6), c=st.sampled_from("abcd"), b=st.booleans())
def test_encodings_are_always_finite_and_in_range(t, x, y, c, b):
    features = {"t": t, "x": x, "y": y, "c": c, "b": b}
    v = PROPERTY_ENCODER.encode(features)
    assert v.shape == (PROPERTY_ENCODER.dim,) and np.isfinite(v).all()
    sin, cos, scaled_x, scaled_y = v[0], v[1], v[2], v[3]
    assert -1 <= sin <= 1 and -1 <= cos <= 1 and sin * sin + cos * cos == pytest.approx(1.0)
    assert 0 <= scaled_x <= 1 and 0 <= scaled_y <= 1
    assert scaled_y == pytest.approx(y / 1e6)
    one_hot = v[4:8]
    assert one_hot.sum() == 1.0 and one_hot["abcd".index(c)] == 1.0
    assert v[8] == float(b) and v[9] == 1.0
    key = PROPERTY_ENCODER.regime_key(features)
    assert re.fullmatch(r"t=q[0-3]\|x=q[0-3]\|y=q[0-3]\|c=[a-d]\|b=(true|false)", key)


@settings(deadline=None, max_examples=100)
@given(st.floats(-1e6, 1e6), st.floats(0.5, 1e4))
def test_cyclic_encoding_agrees_with_the_angle(v, period):
    encoder = ContextEncoder.from_spec({"kind": "features", "bias": False,
                                        "features": {"v": {"type": "cyclic", "period": period}}})
    sin, cos = encoder.encode({"v": v})
    # numpy's direct angle loses ~1e-9 over 2e6 turns; the encoder reduces modulo P first.
    assert sin == pytest.approx(np.sin(2 * np.pi * v / period), abs=1e-8)
    assert cos == pytest.approx(np.cos(2 * np.pi * v / period), abs=1e-8)
