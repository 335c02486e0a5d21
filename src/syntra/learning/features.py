"""Contexts: a discrete key, or typed features encoded into a fixed-length vector.

A capsule's ``contextSpec`` says what a decision's context is:

* ``{"kind": "discrete", "key": path}``: a string key (at most 256 characters of valid
  Unicode). The learner keeps separate statistics per key; a program capsule reads the key
  from ``input[path]`` (``key`` is a dotted path, or null when the caller passes the key).
* ``{"kind": "features", "features": {name: spec, ...}, "bias": true}``: a mapping of
  named, typed features encoded into a vector of floats for the linear rules (LinUCB,
  linear Thompson sampling). Each feature type is a standard encoding (Hastie, Tibshirani
  and Friedman, *The Elements of Statistical Learning*, 2nd ed., section 2.3.1 for dummy
  variables; cyclic time as a point on the unit circle, as in feature-engineering practice):

  ==============  ==========================================  =======================
  type            spec                                        columns
  ==============  ==========================================  =======================
  ``continuous``  ``{"range": [lo, hi], "clip": true}``       ``(v - lo) / (hi - lo)``
  ``cyclic``      ``{"period": P}``                           ``sin(2πv/P), cos(2πv/P)``
  ``categorical`` ``{"values": ["a", "b", ...]}``             one-hot, one per value
  ``boolean``     ``{}``                                      1.0 for true, 0.0 for false
  ==============  ==========================================  =======================

  Columns follow the spec's feature order (a JSON object keeps its order); a bias column
  of 1.0 comes last when ``bias`` is true (the default), so a linear model has an
  intercept. With ``clip`` (the default) a continuous value outside its range is clipped
  to [0, 1]; without it, such a value is refused.

Nothing is ever filled in silently: a missing, unknown, non-finite or wrongly typed
feature raises :class:`~syntra.errors.InvalidContext` naming the feature.

>>> encoder = ContextEncoder.from_spec({"kind": "features", "features": {
...     "hour": {"type": "cyclic", "period": 24},
...     "load": {"type": "continuous", "range": [0, 200]},
...     "tier": {"type": "categorical", "values": ["free", "pro"]},
...     "mobile": {"type": "boolean"}}})
>>> encoder.columns
('hour.sin', 'hour.cos', 'load', 'tier=free', 'tier=pro', 'mobile', '(bias)')
>>> encoder.encode({"hour": 6, "load": 50, "tier": "pro", "mobile": True}).round(6).tolist()
[1.0, 0.0, 0.25, 0.0, 1.0, 1.0, 1.0]
>>> encoder.regime_key({"hour": 6, "load": 50, "tier": "pro", "mobile": True})
'hour=q1|load=q1|tier=pro|mobile=true'
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from syntra.errors import InvalidConfig, InvalidContext

MAX_CONTEXT_KEY = 256
MAX_COLUMNS = 256            # a linear rule keeps a columns x columns matrix per option
MAX_CATEGORY_LENGTH = 256
FEATURE_TYPES = ("continuous", "cyclic", "categorical", "boolean")
BIAS_COLUMN = "(bias)"       # parentheses: no feature name can collide with it
CONTEXT_KINDS = ("discrete", "features")
# A dotted path into a program's input (``a.b.c``): the same form ``syntra author`` accepts.
KEY_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*\Z")
_REGIME_SAFE = re.compile(r"[A-Za-z0-9_.:-]{1,32}\Z")

_FEATURE_FIELDS = {
    "continuous": ("type", "range", "clip"),
    "cyclic": ("type", "period"),
    "categorical": ("type", "values"),
    "boolean": ("type",),
}
_TAU = 2.0 * math.pi


def _fail(prefix: str, path: str, message: str) -> InvalidConfig:
    return InvalidConfig(f"{prefix}{path} {message}")


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or None if it is not a real, finite number (bools aren't)."""
    if type(value) is float:   # the common case, without the abstract-class checks
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One typed feature: how a value of ``name`` becomes columns."""

    name: str
    type: str
    low: float = 0.0              # continuous
    high: float = 1.0
    clip: bool = True
    period: float = 1.0           # cyclic
    values: tuple[str, ...] = ()  # categorical

    @property
    def width(self) -> int:
        """How many columns this feature takes."""
        return {"continuous": 1, "cyclic": 2, "categorical": len(self.values), "boolean": 1}[self.type]

    @property
    def columns(self) -> tuple[str, ...]:
        if self.type == "cyclic":
            return (f"{self.name}.sin", f"{self.name}.cos")
        if self.type == "categorical":
            return tuple(f"{self.name}={value}" for value in self.values)
        return (self.name,)

    def to_dict(self) -> dict[str, Any]:
        if self.type == "continuous":
            return {"type": "continuous", "range": [self.low, self.high], "clip": self.clip}
        if self.type == "cyclic":
            return {"type": "cyclic", "period": self.period}
        if self.type == "categorical":
            return {"type": "categorical", "values": list(self.values)}
        return {"type": "boolean"}


def _parse_feature(prefix: str, where: str, name: str, spec: Mapping) -> FeatureSpec:
    kind = spec.get("type")
    if kind not in FEATURE_TYPES:
        raise _fail(prefix, f"{where}.type", f"must be one of {', '.join(FEATURE_TYPES)}, got {kind!r}")
    allowed = _FEATURE_FIELDS[kind]
    unknown = [key for key in spec if key not in allowed]
    if unknown:
        raise _fail(prefix, f"{where}.{unknown[0]}",
                    f"is not a field of a {kind} feature (fields: {', '.join(allowed)})")
    if kind == "continuous":
        bounds = spec.get("range")
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            raise _fail(prefix, f"{where}.range", f"must be [low, high], got {bounds!r}")
        low, high = _finite(bounds[0]), _finite(bounds[1])
        for i, (raw, number) in enumerate(zip(bounds, (low, high))):
            if number is None:
                raise _fail(prefix, f"{where}.range[{i}]", f"must be a finite number, got {raw!r}")
        if not low < high or not math.isfinite(high - low):
            raise _fail(prefix, f"{where}.range", f"must have low < high with a finite width, got {list(bounds)!r}")
        clip = spec.get("clip", True)
        if type(clip) is not bool:
            raise _fail(prefix, f"{where}.clip", f"must be true or false, got {clip!r}")
        return FeatureSpec(name, kind, low=low, high=high, clip=clip)
    if kind == "cyclic":
        period = _finite(spec.get("period"))
        if period is None or period <= 0:
            raise _fail(prefix, f"{where}.period", f"must be > 0 (a finite number), got {spec.get('period')!r}")
        return FeatureSpec(name, kind, period=period)
    if kind == "categorical":
        values = spec.get("values")
        if not isinstance(values, (list, tuple)) or not values:
            raise _fail(prefix, f"{where}.values", f"must be a non-empty list of strings, got {values!r}")
        for i, value in enumerate(values):
            if type(value) is not str or not 1 <= len(value) <= MAX_CATEGORY_LENGTH or not _is_text(value):
                raise _fail(prefix, f"{where}.values[{i}]",
                            f"must be a string of 1-{MAX_CATEGORY_LENGTH} characters, got {value!r}")
            if value in values[:i]:
                raise _fail(prefix, f"{where}.values[{i}]", f"repeats {value!r}")
        return FeatureSpec(name, kind, values=tuple(values))
    return FeatureSpec(name, kind)


def _is_text(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class ContextSpec:
    """A parsed ``contextSpec``: ``kind`` discrete (with ``key``) or features."""

    kind: str = "discrete"
    key: str | None = None
    features: tuple[FeatureSpec, ...] = ()
    bias: bool = True

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None, *, prefix: str = "", path: str = "contextSpec") -> ContextSpec:
        """Check ``spec`` (a ``contextSpec`` object); errors name ``path`` and the field,
        after ``prefix`` (``"learning.json: "``)."""
        if spec is None:
            return cls()
        if not isinstance(spec, Mapping):
            raise _fail(prefix, path, f"must be an object, got {type(spec).__name__}")
        kind = spec.get("kind", "discrete")
        if kind not in CONTEXT_KINDS:
            raise _fail(prefix, f"{path}.kind", f"must be 'discrete' or 'features', got {kind!r}")
        allowed = ("kind", "key") if kind == "discrete" else ("kind", "features", "bias")
        unknown = [key for key in spec if key not in allowed]
        if unknown:
            raise _fail(prefix, f"{path}.{unknown[0]}",
                        f"is not a field of a {kind} context (fields: {', '.join(allowed)})")
        if kind == "discrete":
            key = spec.get("key")
            if key is not None and (type(key) is not str or not KEY_PATH.match(key)):
                raise _fail(prefix, f"{path}.key", f"must be null or a dotted path into the input (a.b.c), got {key!r}")
            return cls("discrete", key)
        bias = spec.get("bias", True)
        if type(bias) is not bool:
            raise _fail(prefix, f"{path}.bias", f"must be true or false, got {bias!r}")
        features = _parse_features(prefix, f"{path}.features", spec.get("features"))
        width = sum(f.width for f in features) + bias
        if width > MAX_COLUMNS:
            raise _fail(prefix, f"{path}.features", f"encode into {width} columns; at most {MAX_COLUMNS} are allowed")
        return cls("features", None, features, bias)

    @property
    def dim(self) -> int:
        return sum(f.width for f in self.features) + (self.bias if self.kind == "features" else 0)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "discrete":
            return {"kind": "discrete", "key": self.key}
        # A list, not an object: the column order is the features' order, and stored configs
        # are JSON with sorted keys, which would reorder an object's.
        return {"kind": "features", "features": [{"name": f.name, **f.to_dict()} for f in self.features],
                "bias": self.bias}


def _parse_features(prefix: str, path: str, features: object) -> tuple[FeatureSpec, ...]:
    """Features as ``{name: spec}`` or as the ``[{name, type, ...}]`` list ``syntra author`` writes."""
    if isinstance(features, Mapping):
        entries = []
        for name, spec in features.items():
            where = f"{path}.{name}"
            if type(name) is not str or not KEY_PATH.match(name):
                raise _fail(prefix, where, f"is not a valid feature name (a dotted path a.b.c), got {name!r}")
            entries.append((where, name, spec))
    elif isinstance(features, (list, tuple)):
        entries = []
        for i, spec in enumerate(features):
            where = f"{path}[{i}]"
            if not isinstance(spec, Mapping):
                raise _fail(prefix, where, f"must be an object, got {type(spec).__name__}")
            name = spec.get("name")
            if type(name) is not str or not KEY_PATH.match(name):
                raise _fail(prefix, f"{where}.name", f"must be a dotted path into the input (a.b.c), got {name!r}")
            entries.append((where, name, {k: v for k, v in spec.items() if k != "name"}))
    else:
        raise _fail(prefix, path, f"must be an object of named features, got {type(features).__name__}")
    if not entries:
        raise _fail(prefix, path, "must name at least one feature")
    seen: set[str] = set()
    parsed = []
    for where, name, spec in entries:
        if name in seen:
            raise _fail(prefix, where, f"repeats the feature {name!r}")
        seen.add(name)
        if not isinstance(spec, Mapping):
            raise _fail(prefix, where, f"must be an object, got {type(spec).__name__}")
        parsed.append(_parse_feature(prefix, where, name, spec))
    return tuple(parsed)


def check_context_key(key: object) -> str:
    """``key`` if it is a valid discrete context key, else :class:`InvalidContext`."""
    if type(key) is not str or len(key) > MAX_CONTEXT_KEY:
        raise InvalidContext(
            f"context_key must be a string of at most {MAX_CONTEXT_KEY} characters,"
            f" got {type(key).__name__} {str(key)[:40]!r}"
        )
    if not _is_text(key):
        raise InvalidContext(f"context_key must be valid Unicode text, got {key[:40]!r}")
    return key


# Codes of the encoders' per-feature plan.
_CONTINUOUS, _CYCLIC, _CATEGORICAL, _BOOLEAN = range(4)


class ContextEncoder:
    """Turns a decision's context into what the learner keys or regresses on.

    Build one with :meth:`from_spec`. A discrete encoder checks keys (:meth:`encode_key`);
    a features encoder turns a mapping ``{feature name: value}`` into a float64 vector of
    :attr:`dim` columns named by :attr:`columns`. An encoder never changes once built, so
    threads may share it.
    """

    __slots__ = ("_names", "_plan", "columns", "dim", "spec")

    def __init__(self, spec: ContextSpec):
        self.spec = spec
        columns: list[str] = []
        plan = []
        for feature in spec.features:
            code = {"continuous": _CONTINUOUS, "cyclic": _CYCLIC,
                    "categorical": _CATEGORICAL, "boolean": _BOOLEAN}[feature.type]
            lookup = {value: i for i, value in enumerate(feature.values)}
            plan.append((feature, code, len(columns), lookup))
            columns += feature.columns
        if spec.kind == "features" and spec.bias:
            columns.append(BIAS_COLUMN)
        self.columns: tuple[str, ...] = tuple(columns)
        self.dim = len(columns)
        self._plan = tuple(plan)
        self._names = frozenset(f.name for f in spec.features)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | ContextSpec | None) -> ContextEncoder:
        """The encoder of a ``contextSpec`` (a mapping, or an already parsed
        :class:`ContextSpec`); None is a discrete context. Raises
        :class:`~syntra.errors.InvalidConfig` naming the field at fault."""
        return cls(spec if isinstance(spec, ContextSpec) else ContextSpec.parse(spec))

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The features' names, in the spec's order (none for a discrete context)."""
        return tuple(f.name for f in self.spec.features)

    def encode_key(self, key: object) -> str:
        """A discrete context's key, checked: a string of at most 256 characters of valid Unicode."""
        if self.spec.kind != "discrete":
            raise InvalidContext("this capsule's context is typed features: pass them, not a key")
        return check_context_key(key)

    def encode(self, features: Mapping[str, Any]) -> np.ndarray:
        """The feature vector of ``features`` (a new float64 array of :attr:`dim` columns)."""
        out = np.empty(self.dim, dtype=np.float64)
        self.encode_into(features, out)
        return out

    def encode_into(self, features: Mapping[str, Any], out: np.ndarray) -> None:
        """Write the feature vector of ``features`` into ``out`` (float64, shape (dim,)).

        Every feature is checked before anything is written: on error ``out`` is unchanged.
        """
        if not (isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (self.dim,)
                and out.flags.writeable):
            raise ValueError(f"out must be a writable float64 array of shape ({self.dim},)")
        self._write(self._checked(features), out)

    def encode_with_regime(self, features: Mapping[str, Any]) -> tuple[np.ndarray, str]:
        """:meth:`encode` and :meth:`regime_key` at once, checking the features once."""
        values = self._checked(features)
        out = np.empty(self.dim, dtype=np.float64)
        self._write(values, out)
        return out, self._regime(values)

    def _write(self, values: list, out: np.ndarray) -> None:
        for (feature, code, offset, _), value in zip(self._plan, values):
            if code == _CONTINUOUS or code == _BOOLEAN:
                out[offset] = value
            elif code == _CYCLIC:
                out[offset] = math.sin(value)
                out[offset + 1] = math.cos(value)
            else:
                out[offset:offset + feature.width] = 0.0
                out[offset + value] = 1.0
        if self.spec.bias:
            out[self.dim - 1] = 1.0

    def regime_key(self, features: Mapping[str, Any]) -> str:
        """A coarse bucket of ``features`` for regime statistics, as a string.

        Per feature in spec order, ``name=bucket`` joined by ``|``: a categorical feature's
        value (or ``#i``, its position among the values, when the value is not 1-32 of
        ``[A-Za-z0-9_.:-]``), a boolean's ``true``/``false``, a continuous feature's quartile
        of its range ``q0``..``q3`` (after clipping), a cyclic feature's quarter of its
        period ``q0``..``q3``. A key longer than 256 characters becomes ``regime:`` and
        the BLAKE2b-128 hex digest of it.
        """
        return self._regime(self._checked(features))

    def _regime(self, values: list) -> str:
        parts = []
        for (feature, code, _, _), value in zip(self._plan, values):
            if code == _CATEGORICAL:
                label = feature.values[value]
                bucket = label if _REGIME_SAFE.match(label) else f"#{value}"
            elif code == _BOOLEAN:
                bucket = "true" if value else "false"
            else:
                share = value if code == _CONTINUOUS else (value / _TAU) % 1.0
                bucket = f"q{min(int(share * 4.0), 3)}"
            parts.append(f"{feature.name}={bucket}")
        key = "|".join(parts)
        if len(key) > MAX_CONTEXT_KEY:
            key = "regime:" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
        return key

    def _checked(self, features: object) -> list:
        """Per feature, its checked value: the scaled value (continuous), the phase in
        radians (cyclic), the value's index (categorical) or 0.0/1.0 (boolean)."""
        if self.spec.kind != "features":
            raise InvalidContext("this capsule's context is a discrete key: pass the key, not features")
        if not isinstance(features, Mapping):
            raise InvalidContext(f"features must be a mapping of feature name to value, got {type(features).__name__}")
        unknown = [name for name in features if name not in self._names]
        if unknown:
            raise InvalidContext(f"unknown features {', '.join(sorted(map(repr, unknown)))} (known: {sorted(self._names)})")
        values = []
        for feature, code, _, lookup in self._plan:
            name = feature.name
            if name not in features:
                raise InvalidContext(f"feature {name!r} is missing")
            raw = features[name]
            if code == _CATEGORICAL:
                index = lookup.get(raw) if type(raw) is str else None
                if index is None:
                    raise InvalidContext(
                        f"feature {name!r}: {raw!r} is not one of its categories {list(feature.values)!r}")
                values.append(index)
            elif code == _BOOLEAN:
                if not isinstance(raw, (bool, np.bool_)):
                    raise InvalidContext(f"feature {name!r} must be true or false, got {raw!r}")
                values.append(1.0 if raw else 0.0)
            else:
                number = _finite(raw)
                if number is None:
                    raise InvalidContext(f"feature {name!r} must be a finite number, got {raw!r}")
                if code == _CYCLIC:
                    # fmod is exact: the phase keeps its precision however large the value.
                    values.append(_TAU * (math.fmod(number, feature.period) / feature.period))
                    continue
                scaled = (number - feature.low) / (feature.high - feature.low)
                if feature.clip:
                    scaled = min(max(scaled, 0.0), 1.0)
                elif not 0.0 <= scaled <= 1.0:
                    raise InvalidContext(
                        f"feature {name!r} must be in [{feature.low:g}, {feature.high:g}], got {raw!r}")
                values.append(scaled)
        return values

    def __repr__(self) -> str:
        if self.spec.kind == "discrete":
            return f"ContextEncoder(discrete, key={self.spec.key!r})"
        return f"ContextEncoder(features, columns={list(self.columns)!r})"
