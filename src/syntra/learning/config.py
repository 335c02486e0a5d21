"""learning.json: how a capsule learns, with every field's default and its checks.

:class:`LearningConfig` is the parsed, immutable ``learning.json``. :meth:`LearningConfig.parse`
deep-merges a partial config over :data:`DEFAULTS`: a section (``meta``, ``drift``, ...) given
with some of its fields keeps the defaults of the others. Open mappings, whose keys you name
(``settings``, ``optionFeatures``, ``feedback.signals``, ``limits``), replace the default
whole; ``regimes.default_floors_bps`` adds to the built-in domains' floors. ``contextSpec``
and ``actions`` merge over the defaults of the ``kind`` they name. Every field is checked; an error is an
:class:`~syntra.errors.InvalidConfig` whose message names the field's dotted path and why
(``learning.json: drift.capsule_delta must be in (0, 1), got 0``), and an unknown field
anywhere is an error too. docs/learning.md describes every field.

>>> config = LearningConfig.parse({"algorithm": "auto", "drift": {"capsule_delta": 0.01}})
>>> config.drift.capsule_delta, config.drift.context_delta
(0.01, 0.002)
>>> config.candidates_for("bernoulli")
['thompson', 'greedy', 'epsilon_greedy']
>>> LearningConfig.parse(config.to_dict()) == config
True
>>> continuous_options([0, 1], 4)
(('0.125', '0.375', '0.625', '0.875'), (0.125, 0.375, 0.625, 0.875))
"""

from __future__ import annotations

import itertools
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from fractions import Fraction
from types import MappingProxyType
from typing import Any

from syntra.errors import InvalidConfig
from syntra.learning.features import ContextEncoder, ContextSpec
from syntra.learning.rewards import FUSIONS, REWARD_TYPES, RewardSpec

SOURCE = "learning.json: "
ALGORITHMS = ("auto", "thompson", "gaussian_thompson", "ucb1", "epsilon_greedy", "softmax",
              "greedy", "linucb", "lints")
LINEAR_ALGORITHMS = ("linucb", "lints")
MAX_OPTION_NAME = 128
MAX_ACTIONS = 256
MAX_OPTION_FEATURES = 256
MAX_OPTION_FEATURE = 1e6      # option features enter x xᵀ sums: keep them well scaled
MAX_ACTION_MAGNITUDE = 1e12
# A signal's weight: within a ratio of 1e12 of any other, so the weighted mean neither
# overflows nor loses a weight to underflow.
MIN_WEIGHT, MAX_WEIGHT = 1e-6, 1e6
MAX_REWARD_WAIT_SECONDS = 1e9
NAME = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")
LABEL = re.compile(r".{1,128}\Z", re.DOTALL)
_COUNT = 1_000_000_000        # the largest count any integer field takes

DEFAULTS: dict[str, Any] = {
    "algorithm": "auto",
    "settings": {},
    "candidates": None,
    "meta": {"method": "exp3ix", "estimator": "snips", "weight_cap": 20.0, "exploration_floor": 0.05,
             "learning_rate": None, "prior_trials": 200},
    "warmup": {"feedbacks": 30},
    "contextSpec": {"kind": "discrete", "key": None},
    "optionFeatures": None,
    "linear": {"alpha": 1.0, "v": 0.5, "regularization": 1.0, "reinvert_every": 256, "samples": 64},
    "drift": {"enabled": True, "capsule_delta": 0.002, "context_delta": 0.002, "clock": 32,
              "min_window": 5, "grace_period": 10},
    "refusal": {"enabled": False, "coverage": 0.9, "window": 500, "min_calibration": 50,
                "max_interval_width": None, "ood_threshold": 3.0, "refuse_uncalibrated": False},
    "regimes": {"enabled": False, "metric": None, "z_threshold": 3.0, "min_samples": 30,
                "anomaly_raise_bps": 1000, "step_bps": 100, "domain": None,
                "default_floors_bps": {"support": 5500, "coding": 7200, "compliance": 9200, "security": 9200},
                "default_floor_bps": 5000, "min_floor_bps": 0, "max_floor_bps": 10000},
    "feedback": {"reward_wait_seconds": None, "default_reward": None, "signals": None, "fusion": "weighted_mean"},
    "actions": {"kind": "discrete"},
    "learning": {"min_exploration": 0.0},
    "limits": None,
}

# The defaults of each kind of the two tagged unions.
_ACTION_DEFAULTS = {
    "discrete": {"kind": "discrete"},
    "continuous": {"kind": "continuous", "range": None, "buckets": 16},
    "hierarchical": {"kind": "hierarchical", "levels": None, "credit": "full", "discount": 0.5},
}


def _fail(path: str, message: str) -> InvalidConfig:
    return InvalidConfig(f"{SOURCE}{path} {message}")


def _bound(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --- field checks ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Real:
    """A finite number in an interval (``None`` bounds are open-ended)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_bound(self.low)}, "
                    f"{_bound(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_bound(self.low)}"
        return ""

    def check(self, path: str, value: object) -> float | None:
        if value is None and self.nullable:
            return None
        null = "null or " if self.nullable else ""
        bounds = self.describe()
        number_in = f"a finite number {bounds}".rstrip()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _fail(path, f"must be {null}{number_in}, got {value!r}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise _fail(path, f"must be {null}{number_in}, got {value!r}")
        above = self.low is None or number > self.low or (not self.low_open and number == self.low)
        below = self.high is None or number < self.high or (not self.high_open and number == self.high)
        if not (above and below):
            raise _fail(path, f"must be {null}{bounds}, got {value!r}")
        return number


@dataclass(frozen=True, slots=True)
class Integer:
    """An integer in ``[low, high]``."""

    low: int
    high: int

    def check(self, path: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _fail(path, f"must be an integer in [{self.low}, {self.high}], got {value!r}")
        if not self.low <= value <= self.high:
            raise _fail(path, f"must be in [{self.low}, {self.high}], got {value!r}")
        return int(value)


@dataclass(frozen=True, slots=True)
class Boolean:
    def check(self, path: str, value: object) -> bool:
        if type(value) is not bool:
            raise _fail(path, f"must be true or false, got {value!r}")
        return value


@dataclass(frozen=True, slots=True)
class Choice:
    choices: tuple[str, ...]

    def check(self, path: str, value: object) -> str:
        if type(value) is not str or value not in self.choices:
            raise _fail(path, f"must be one of {', '.join(self.choices)}, got {value!r}")
        return value


@dataclass(frozen=True, slots=True)
class Text:
    """A string matching ``pattern`` (``what`` says which form), or null when ``nullable``."""

    pattern: re.Pattern
    what: str
    nullable: bool = True

    def check(self, path: str, value: object) -> str | None:
        if value is None and self.nullable:
            return None
        if type(value) is not str or not self.pattern.match(value):
            raise _fail(path, f"must be {'null or ' if self.nullable else ''}{self.what}, got {value!r}")
        return value


@dataclass(frozen=True, slots=True)
class Open:
    """An open mapping or free-form value, checked by a function ``check(path, value)``."""

    function: Any

    def check(self, path: str, value: object) -> Any:
        return self.function(path, value)


def _bps(path: str, value: object) -> int:
    return Integer(0, 10_000).check(path, value)


def _floors(path: str, value: object) -> Mapping[str, int]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"must be an object of domain name to basis points, got {value!r}")
    floors = {}
    for domain, floor in value.items():
        if type(domain) is not str or not LABEL.match(domain):
            raise _fail(f"{path}.{domain}", "is not a domain name (1-128 characters)")
        floors[domain] = _bps(f"{path}.{domain}", floor)
    return MappingProxyType(floors)


@dataclass(frozen=True, slots=True)
class SignalConfig:
    """One feedback signal: its weight in a weighted mean, and whether fusion waits for it."""

    weight: float = 1.0
    required: bool = True


def _signals(path: str, value: object) -> Mapping[str, SignalConfig] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise _fail(path, f"must be null or a non-empty object of named signals, got {value!r}")
    signals = {}
    for name, spec in value.items():
        where = f"{path}.{name}"
        if type(name) is not str or not NAME.match(name):
            raise _fail(where, "is not a valid signal name (1-128 of [A-Za-z0-9_-])")
        if not isinstance(spec, Mapping):
            raise _fail(where, f"must be an object {{weight, required}}, got {spec!r}")
        unknown = [key for key in spec if key not in ("weight", "required")]
        if unknown:
            raise _fail(f"{where}.{unknown[0]}", "is not a field of a signal (fields: weight, required)")
        signals[name] = SignalConfig(Real(MIN_WEIGHT, MAX_WEIGHT).check(f"{where}.weight", spec.get("weight", 1.0)),
                                     Boolean().check(f"{where}.required", spec.get("required", True)))
    if not any(s.required for s in signals.values()):
        raise _fail(path, "needs at least one required signal (fusion waits for the required ones)")
    return MappingProxyType(signals)


# Each record section's fields, in their documented order.
SECTIONS: dict[str, dict[str, Any]] = {
    "meta": {
        "method": Choice(("exp3ix", "thompson")),
        "estimator": Choice(("ips", "snips")),
        "weight_cap": Real(1.0, 1e12),
        "exploration_floor": Real(0.0, 0.5),
        "learning_rate": Real(0.0, 1e6, low_open=True, nullable=True),
        "prior_trials": Integer(0, _COUNT),
    },
    "warmup": {"feedbacks": Integer(0, _COUNT)},
    "linear": {
        "alpha": Real(0.0, 1e6),
        "v": Real(0.0, 1e6),
        # Below ~1e-6 the ridge barely regularises: the first updates' near-singular
        # matrix makes the model non-finite (and a feedback then fails after its checks).
        "regularization": Real(1e-6, 1e12),
        "reinvert_every": Integer(1, 1_000_000),
        "samples": Integer(1, 100_000),
    },
    "drift": {
        "enabled": Boolean(),
        "capsule_delta": Real(0.0, 1.0, low_open=True, high_open=True),
        "context_delta": Real(0.0, 1.0, low_open=True, high_open=True),
        "clock": Integer(1, 1_000_000),
        "min_window": Integer(1, 1_000_000),
        "grace_period": Integer(0, _COUNT),
    },
    "refusal": {
        "enabled": Boolean(),
        "coverage": Real(0.0, 1.0, low_open=True, high_open=True),
        "window": Integer(1, 1_000_000),
        "min_calibration": Integer(1, 1_000_000),
        "max_interval_width": Real(0.0, None, low_open=True, nullable=True),
        "ood_threshold": Real(0.0, None, low_open=True),
        "refuse_uncalibrated": Boolean(),
    },
    "regimes": {
        "enabled": Boolean(),
        "metric": Text(LABEL, "a metric name (1-128 characters)"),
        "z_threshold": Real(0.0, None, low_open=True),
        "min_samples": Integer(2, _COUNT),
        "anomaly_raise_bps": Integer(0, 10_000),
        "step_bps": Integer(1, 10_000),
        "domain": Text(LABEL, "a domain name (1-128 characters)"),
        "default_floors_bps": Open(_floors),
        "default_floor_bps": Integer(0, 10_000),
        "min_floor_bps": Integer(0, 10_000),
        "max_floor_bps": Integer(0, 10_000),
    },
    "feedback": {
        # At least a millisecond (a shorter wait spins the waiter), at most ~31 years
        # (a longer one overflows the nanosecond clock arithmetic).
        "reward_wait_seconds": Real(1e-3, MAX_REWARD_WAIT_SECONDS, nullable=True),
        "default_reward": Real(nullable=True),
        "signals": Open(_signals),
        "fusion": Choice(FUSIONS),
    },
    "learning": {"min_exploration": Real(0.0, 1.0, high_open=True)},
}


def _section(name: str, given: object) -> tuple[dict[str, Any], set[str]]:
    """A record section merged over its defaults and checked: (values, fields given)."""
    if given is None:
        given = {}
    elif not isinstance(given, Mapping):
        raise _fail(name, f"must be an object, got {type(given).__name__}")
    schema = SECTIONS[name]
    unknown = [key for key in given if key not in schema]
    if unknown:
        raise _fail(f"{name}.{unknown[0]}", f"is not a field of {name} (fields: {', '.join(schema)})")
    merged = {**DEFAULTS[name], **given}
    if name == "regimes" and isinstance(given.get("default_floors_bps"), Mapping):
        # Domain floors add to (or override) the built-in domains' floors.
        merged["default_floors_bps"] = {**DEFAULTS[name]["default_floors_bps"], **given["default_floors_bps"]}
    return {key: check.check(f"{name}.{key}", merged[key]) for key, check in schema.items()}, set(given)


# --- sections ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetaConfig:
    """How ``auto`` chooses among its candidates (see docs/learning.md, ``meta``)."""

    method: str
    estimator: str
    weight_cap: float
    exploration_floor: float
    learning_rate: float | None
    prior_trials: int


@dataclass(frozen=True, slots=True)
class WarmupConfig:
    feedbacks: int


@dataclass(frozen=True, slots=True)
class LinearConfig:
    alpha: float
    v: float
    regularization: float
    reinvert_every: int
    samples: int


@dataclass(frozen=True, slots=True)
class DriftConfig:
    enabled: bool
    capsule_delta: float
    context_delta: float
    clock: int
    min_window: int
    grace_period: int


@dataclass(frozen=True, slots=True)
class RefusalConfig:
    enabled: bool
    coverage: float
    window: int
    min_calibration: int
    max_interval_width: float | None
    ood_threshold: float
    refuse_uncalibrated: bool


@dataclass(frozen=True, slots=True)
class RegimesConfig:
    enabled: bool
    metric: str | None
    z_threshold: float
    min_samples: int
    anomaly_raise_bps: int
    step_bps: int
    domain: str | None
    default_floors_bps: Mapping[str, int]
    default_floor_bps: int
    min_floor_bps: int
    max_floor_bps: int

    def floor_bps(self) -> int:
        """The starting floor: the domain's default floor, else ``default_floor_bps``."""
        return self.default_floors_bps.get(self.domain, self.default_floor_bps)


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    reward_wait_seconds: float | None
    default_reward: float | None
    signals: Mapping[str, SignalConfig] | None
    fusion: str


@dataclass(frozen=True, slots=True)
class LegacyLearning:
    """The ``learning`` block ``syntra author`` writes."""

    min_exploration: float


@dataclass(frozen=True, slots=True)
class Level:
    """One level of a hierarchical action: its name and its options."""

    name: str
    options: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ActionsConfig:
    """The shape of the options: ``discrete`` (as named), ``continuous`` (buckets of a
    range) or ``hierarchical`` (one option per level, the option being the combination)."""

    kind: str = "discrete"
    range: tuple[float, float] | None = None
    buckets: int | None = None
    levels: tuple[Level, ...] | None = None
    credit: str | None = None
    discount: float | None = None

    def options(self) -> tuple[str, ...] | None:
        """The option names this shape makes (None for discrete: they are the capsule's own)."""
        if self.kind == "continuous":
            return continuous_options(self.range, self.buckets)[0]
        if self.kind == "hierarchical":
            return tuple("/".join(leaf) for leaf in itertools.product(*(level.options for level in self.levels)))
        return None

    def values(self) -> tuple[float, ...] | None:
        """A continuous action's value per option (its bucket's midpoint), else None."""
        return continuous_options(self.range, self.buckets)[1] if self.kind == "continuous" else None

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "continuous":
            return {"kind": "continuous", "range": list(self.range), "buckets": self.buckets}
        if self.kind == "hierarchical":
            return {"kind": "hierarchical", "credit": self.credit, "discount": self.discount,
                    "levels": [{"name": level.name, "options": list(level.options)} for level in self.levels]}
        return {"kind": "discrete"}


def continuous_options(bounds, buckets: int) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """A continuous action over ``bounds`` = [lo, hi] cut into ``buckets`` equal buckets:
    (option names, values), each value its bucket's midpoint and each name the value
    formatted with as few significant digits (6 at least) as keep the names distinct."""
    low, high = _action_range("actions.range", bounds)
    buckets = Integer(2, MAX_ACTIONS).check("actions.buckets", buckets)
    # A weighted combination of the ends is exact at symmetric points (0 in [-1, 1]).
    values = tuple(low * ((2 * buckets - 2 * i - 1) / (2 * buckets)) + high * ((2 * i + 1) / (2 * buckets)) + 0.0
                   for i in range(buckets))
    if len(set(values)) != buckets:
        raise _fail("actions.range", f"is too narrow for {buckets} distinct float64 midpoints, got {list(bounds)!r}")
    for digits in range(6, 18):
        names = tuple(f"{value:.{digits}g}" for value in values)
        if len(set(names)) == buckets:
            return names, values
    raise AssertionError("17 significant digits tell distinct doubles apart")


def _action_range(path: str, bounds: object) -> tuple[float, float]:
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        raise _fail(path, f"must be [low, high], got {bounds!r}")
    checked = [Real(-MAX_ACTION_MAGNITUDE, MAX_ACTION_MAGNITUDE).check(f"{path}[{i}]", b) for i, b in enumerate(bounds)]
    if not checked[0] < checked[1]:
        raise _fail(path, f"needs low < high, got {list(bounds)!r}")
    return checked[0], checked[1]


def _actions(given: object) -> ActionsConfig:
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise _fail("actions", f"must be an object, got {type(given).__name__}")
    kind = Choice(tuple(_ACTION_DEFAULTS)).check("actions.kind", given.get("kind", "discrete"))
    allowed = _ACTION_DEFAULTS[kind]
    unknown = [key for key in given if key not in allowed]
    if unknown:
        raise _fail(f"actions.{unknown[0]}", f"is not a field of {kind} actions (fields: {', '.join(allowed)})")
    merged = {**allowed, **given}
    if kind == "discrete":
        return ActionsConfig()
    if kind == "continuous":
        bounds = _action_range("actions.range", merged["range"])
        buckets = Integer(2, MAX_ACTIONS).check("actions.buckets", merged["buckets"])
        continuous_options(bounds, buckets)   # refuses a range too narrow for its buckets
        return ActionsConfig("continuous", range=bounds, buckets=buckets)
    levels = _levels(merged["levels"])
    credit = Choice(("full", "discounted")).check("actions.credit", merged["credit"])
    discount = Real(0.0, 1.0, low_open=True).check("actions.discount", merged["discount"])
    return ActionsConfig("hierarchical", levels=levels, credit=credit, discount=discount)


def _levels(value: object) -> tuple[Level, ...]:
    if not isinstance(value, (list, tuple)) or not 2 <= len(value) <= 8:
        raise _fail("actions.levels", f"must be a list of 2 to 8 levels, got {value!r}")
    levels, leaves, width = [], 1, -1
    for i, level in enumerate(value):
        where = f"actions.levels[{i}]"
        if not isinstance(level, Mapping):
            raise _fail(where, f"must be an object {{name, options}}, got {level!r}")
        unknown = [key for key in level if key not in ("name", "options")]
        if unknown:
            raise _fail(f"{where}.{unknown[0]}", "is not a field of a level (fields: name, options)")
        name = Text(NAME, "a level name (1-128 of [A-Za-z0-9_-])", nullable=False).check(
            f"{where}.name", level.get("name"))
        if any(name == earlier.name for earlier in levels):
            raise _fail(f"{where}.name", f"repeats the level {name!r}")
        options = level.get("options")
        if not isinstance(options, (list, tuple)) or len(options) < 2:
            raise _fail(f"{where}.options", f"must be a list of 2 or more options, got {options!r}")
        for j, option in enumerate(options):
            if type(option) is not str or not 1 <= len(option) <= MAX_OPTION_NAME or "/" in option:
                raise _fail(f"{where}.options[{j}]",
                            f"must be a name of 1-{MAX_OPTION_NAME} characters without '/', got {option!r}")
            if option in options[:j]:
                raise _fail(f"{where}.options[{j}]", f"repeats {option!r}")
        leaves *= len(options)
        width += 1 + max(map(len, options))
        levels.append(Level(name, tuple(options)))
    if leaves > MAX_ACTIONS:
        raise _fail("actions.levels", f"make {leaves} leaf combinations; at most {MAX_ACTIONS} are allowed")
    if width > MAX_OPTION_NAME:
        raise _fail("actions.levels", f"make option names of up to {width} characters (levels joined with '/');"
                                      f" at most {MAX_OPTION_NAME} are allowed")
    return tuple(levels)


# --- open values -------------------------------------------------------------------------


def _settings(given: object) -> Mapping[str, int | float]:
    if given is None:
        return MappingProxyType({})
    if not isinstance(given, Mapping):
        raise _fail("settings", f"must be an object of setting name to number, got {type(given).__name__}")
    checked = {}
    for name, value in given.items():
        if type(name) is not str or not NAME.match(name):
            raise _fail(f"settings.{name}", "is not a valid setting name")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _fail(f"settings.{name}", f"must be a number, got {value!r}")
        if isinstance(value, numbers.Integral):
            checked[name] = int(value)
        else:
            checked[name] = Real().check(f"settings.{name}", value)
    return MappingProxyType(checked)


def _candidates(given: object) -> tuple[str, ...] | None:
    if given is None:
        return None
    if not isinstance(given, (list, tuple)) or not given:
        raise _fail("candidates", f"must be null or a non-empty list of algorithms, got {given!r}")
    for i, name in enumerate(given):
        if name == "auto" or name not in ALGORITHMS:
            raise _fail(f"candidates[{i}]", f"must be one of {', '.join(ALGORITHMS[1:])}, got {name!r}")
        if name in given[:i]:
            raise _fail(f"candidates[{i}]", f"repeats {name!r}")
    return tuple(given)


def _option_features(given: object) -> Mapping[str, tuple[float, ...]] | None:
    if given is None:
        return None
    if not isinstance(given, Mapping) or not given:
        raise _fail("optionFeatures", f"must be null or a non-empty object of option to numbers, got {given!r}")
    width = None
    features = {}
    for option, vector in given.items():
        where = f"optionFeatures.{option}"
        if type(option) is not str or not 1 <= len(option) <= MAX_OPTION_NAME:
            raise _fail(where, f"is not an option name (1-{MAX_OPTION_NAME} characters)")
        if not isinstance(vector, (list, tuple)) or not 1 <= len(vector) <= MAX_OPTION_FEATURES:
            raise _fail(where, f"must be a list of 1 to {MAX_OPTION_FEATURES} numbers, got {vector!r}")
        if width is None:
            width = len(vector)
        elif len(vector) != width:
            raise _fail(where, f"has {len(vector)} features; every option needs the same number ({width})")
        bound = Real(-MAX_OPTION_FEATURE, MAX_OPTION_FEATURE)
        features[option] = tuple(bound.check(f"{where}[{i}]", x) for i, x in enumerate(vector))
    return MappingProxyType(features)


def _freeze(path: str, value: object) -> Any:
    """A deep, immutable copy of a JSON value (objects become read-only mappings, lists tuples)."""
    if value is None or type(value) in (bool, str, int):
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise _fail(path, f"must be finite, got {value!r}")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _fail(f"{path}.{key}", "has a key that is not a string")
            out[key] = _freeze(f"{path}.{key}", item)
        return MappingProxyType(out)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(f"{path}[{i}]", item) for i, item in enumerate(value))
    raise _fail(path, f"must hold JSON values, got {type(value).__name__}")


def _limits(given: object) -> Any:
    if given is not None and not isinstance(given, Mapping):
        raise _fail("limits", f"must be null or an object, got {type(given).__name__}")
    return _freeze("limits", given)


def _thaw(value: Any) -> Any:
    """Plain JSON types of a parsed value (read-only mappings, tuples, section records)."""
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _thaw(getattr(value, f.name)) for f in fields(value)}
    return value


# Read-only, so that no caller can change what every later parse merges over.
DEFAULTS = _freeze("DEFAULTS", DEFAULTS)


# --- the whole file ----------------------------------------------------------------------


_TOP = tuple(DEFAULTS)


@dataclass(frozen=True, slots=True)
class LearningConfig:
    """A parsed, checked learning.json with every default filled in. Immutable."""

    algorithm: str
    settings: Mapping[str, int | float]
    candidates: tuple[str, ...] | None
    meta: MetaConfig
    warmup: WarmupConfig
    context_spec: ContextSpec
    option_features: Mapping[str, tuple[float, ...]] | None
    linear: LinearConfig
    drift: DriftConfig
    refusal: RefusalConfig
    regimes: RegimesConfig
    feedback: FeedbackConfig
    actions: ActionsConfig
    learning: LegacyLearning
    limits: Any

    continuous_options = staticmethod(continuous_options)

    @classmethod
    def parse(cls, config: Mapping[str, Any] | None = None) -> LearningConfig:
        """Merge ``config`` (a partial learning.json; None is all defaults) over
        :data:`DEFAULTS` and check every field and how the fields fit together."""
        if config is None:
            config = {}
        if not isinstance(config, Mapping):
            raise InvalidConfig(f"learning.json must be an object, got {type(config).__name__}")
        unknown = [key for key in config if key not in DEFAULTS]
        if unknown:
            raise _fail(str(unknown[0]), f"is not a learning.json field (fields: {', '.join(_TOP)})")
        algorithm = Choice(ALGORITHMS).check("algorithm", config.get("algorithm", DEFAULTS["algorithm"]))
        sections, given = {}, {}
        for name in SECTIONS:
            sections[name], given[name] = _section(name, config.get(name))
        meta = dict(sections["meta"])
        if "min_exploration" in given["learning"] and "exploration_floor" not in given["meta"]:
            floor = sections["learning"]["min_exploration"]
            if floor > 0.5:
                raise _fail("learning.min_exploration", f"sets meta.exploration_floor, which must be in [0, 0.5],"
                                                        f" got {floor!r}")
            meta["exploration_floor"] = floor
        context_spec = ContextSpec.parse(config.get("contextSpec", DEFAULTS["contextSpec"]), prefix=SOURCE)
        parsed = cls(
            algorithm=algorithm,
            settings=_settings(config.get("settings")),
            candidates=_candidates(config.get("candidates")),
            meta=MetaConfig(**meta),
            warmup=WarmupConfig(**sections["warmup"]),
            context_spec=context_spec,
            option_features=_option_features(config.get("optionFeatures")),
            linear=LinearConfig(**sections["linear"]),
            drift=DriftConfig(**sections["drift"]),
            refusal=RefusalConfig(**sections["refusal"]),
            regimes=RegimesConfig(**sections["regimes"]),
            feedback=FeedbackConfig(**sections["feedback"]),
            actions=_actions(config.get("actions")),
            learning=LegacyLearning(**sections["learning"]),
            limits=_limits(config.get("limits")),
        )
        parsed._check_together()
        return parsed

    def _check_together(self) -> None:
        kind = self.context_spec.kind
        if self.algorithm in LINEAR_ALGORITHMS and kind != "features":
            raise _fail("algorithm", f"{self.algorithm} needs contextSpec.kind 'features' (a linear model reads"
                                     f" feature vectors), got {kind!r}")
        if self.candidates is not None:
            if self.algorithm != "auto":
                raise _fail("candidates", f"are only for algorithm auto, got algorithm {self.algorithm!r}")
            for i, name in enumerate(self.candidates):
                if name in LINEAR_ALGORITHMS and kind != "features":
                    raise _fail(f"candidates[{i}]", f"{name} needs contextSpec.kind 'features', got {kind!r}")
        if self.algorithm == "auto" and self.settings and (self.candidates is None or len(self.candidates) != 1):
            raise _fail("settings", "are for one algorithm: a fixed one, or auto with a single candidate (several"
                                    f" candidates each run their defaults), got {dict(self.settings)!r}")
        refusal = self.refusal
        smallest = _smallest_calibration(refusal.coverage)
        if refusal.window < smallest:
            raise _fail("refusal.window", f"must be >= {smallest} for refusal.coverage {refusal.coverage!r} (the"
                                          f" conformal rank ceil((n + 1) * coverage) exceeds a smaller n),"
                                          f" got {refusal.window}")
        if not smallest <= refusal.min_calibration <= refusal.window:
            raise _fail("refusal.min_calibration", f"must be in [{smallest}, refusal.window = {refusal.window}] for"
                                                   f" refusal.coverage {refusal.coverage!r},"
                                                   f" got {refusal.min_calibration}")
        if refusal.enabled and refusal.refuse_uncalibrated and self.warmup.feedbacks < refusal.min_calibration:
            # Only served decisions calibrate, and warmup is what serves while uncalibrated.
            raise _fail("refusal.refuse_uncalibrated", f"needs warmup.feedbacks >= refusal.min_calibration"
                                                       f" ({refusal.min_calibration}), or the capsule would refuse"
                                                       f" for ever; got warmup.feedbacks {self.warmup.feedbacks}")
        regimes = self.regimes
        if regimes.min_floor_bps > regimes.max_floor_bps:
            raise _fail("regimes.min_floor_bps", f"must be at most regimes.max_floor_bps ({regimes.max_floor_bps}),"
                                                 f" got {regimes.min_floor_bps}")
        # Only the floor a capsule starts from must fit the band: other domains' are unused.
        low, high = regimes.min_floor_bps, regimes.max_floor_bps
        if regimes.domain in regimes.default_floors_bps:
            path = f"regimes.default_floors_bps.{regimes.domain}"
        else:
            path = "regimes.default_floor_bps"
        floor = regimes.floor_bps()
        if not low <= floor <= high:
            raise _fail(path, f"must be within [regimes.min_floor_bps, regimes.max_floor_bps] = [{low}, {high}],"
                              f" got {floor}")
        feedback = self.feedback
        if feedback.reward_wait_seconds is not None and feedback.default_reward is None:
            raise _fail("feedback.default_reward", "is required with feedback.reward_wait_seconds (the reward a"
                                                   " decision gets when none arrives in time)")
        if feedback.default_reward is not None and feedback.reward_wait_seconds is None:
            raise _fail("feedback.default_reward", "is only used with feedback.reward_wait_seconds, which is null")

    def to_dict(self) -> dict[str, Any]:
        """The whole config as JSON types: ``parse(to_dict())`` gives back an equal config."""
        out = {"algorithm": self.algorithm, "settings": dict(self.settings),
               "candidates": None if self.candidates is None else list(self.candidates)}
        for name in ("meta", "warmup"):
            out[name] = _thaw(getattr(self, name))
        out["contextSpec"] = self.context_spec.to_dict()
        out["optionFeatures"] = _thaw(self.option_features)
        for name in ("linear", "drift", "refusal", "regimes", "feedback"):
            out[name] = _thaw(getattr(self, name))
        out["actions"] = self.actions.to_dict()
        out["learning"] = _thaw(self.learning)
        out["limits"] = _thaw(self.limits)
        return out

    def context_encoder(self) -> ContextEncoder:
        """The encoder of this config's ``contextSpec``."""
        return ContextEncoder.from_spec(self.context_spec)

    @staticmethod
    def default_candidates(reward_kind: str, context_kind: str) -> list[str]:
        """The algorithms ``auto`` chooses among when ``candidates`` is null.

        A discrete context gets the reward's posterior sampler (Beta Thompson sampling for
        bernoulli and sparse rewards, the Bernoulli trick of Agrawal and Goyal 2012 on
        [0, 1]-scaled values; Gaussian Thompson sampling for continuous ones), greedy and
        epsilon-greedy. They read the same statistics, so greedy exploits what the sampler
        explored: on the 5-arm Bernoulli benchmark the trio's regret is below Thompson
        sampling's alone. UCB1 and softmax explore more than the sampler on the same
        statistics, which costs regret whenever they serve; name them in ``candidates``
        to have them. A features context gets LinUCB and linear Thompson sampling.
        """
        if reward_kind not in REWARD_TYPES:
            raise InvalidConfig(f"reward kind must be one of {', '.join(REWARD_TYPES)}, got {reward_kind!r}")
        if context_kind not in ("discrete", "features"):
            raise InvalidConfig(f"context kind must be 'discrete' or 'features', got {context_kind!r}")
        if context_kind == "features":
            return ["linucb", "lints"]
        thompson = "gaussian_thompson" if reward_kind == "continuous" else "thompson"
        return [thompson, "greedy", "epsilon_greedy"]

    def candidates_for(self, reward_kind: str) -> list[str]:
        """What ``auto`` chooses among for a reward of ``reward_kind``: ``candidates``, or
        the defaults for the reward and this config's context kind. A fixed algorithm is
        its own single candidate."""
        if self.algorithm != "auto":
            return [self.algorithm]
        if self.candidates is not None:
            return list(self.candidates)
        return self.default_candidates(reward_kind, self.context_spec.kind)

    def check_options(self, options: tuple[str, ...]) -> None:
        """Check the parts of this config that name options against the capsule's
        ``options`` (at install): ``optionFeatures`` must give every option, and no other,
        and a continuous or hierarchical action shape must make exactly these options."""
        options = tuple(options)
        if self.option_features is not None:
            for name in self.option_features:
                if name not in options:
                    raise _fail(f"optionFeatures.{name}", f"is not an option (options: {_listing(options)})")
            missing = [name for name in options if name not in self.option_features]
            if missing:
                raise _fail("optionFeatures", f"has no features for the options {_listing(missing)}")
        expected = self.actions.options()
        if expected is not None and options != expected:
            shape = (f"{self.actions.buckets} buckets of [{self.actions.range[0]:g}, {self.actions.range[1]:g}]"
                     if self.actions.kind == "continuous" else "one option per level combination, joined with '/'")
            raise _fail("actions", f"{self.actions.kind} actions ({shape}) make the options {_listing(expected)},"
                                   f" got {_listing(options)}")

    def check_reward(self, reward: RewardSpec) -> None:
        """Check the parts of this config that depend on the capsule's reward spec:
        ``feedback.default_reward`` must be a reward it allows, and fused signals of a
        bernoulli reward cannot use a weighted mean."""
        feedback = self.feedback
        if feedback.default_reward is not None:
            if reward.type == "bernoulli" and feedback.default_reward not in (0.0, 1.0):
                raise _fail("feedback.default_reward", f"must be 0 or 1 for a bernoulli reward,"
                                                       f" got {feedback.default_reward!r}")
            if not reward.low <= feedback.default_reward <= reward.high:
                raise _fail("feedback.default_reward", f"must be within the reward range [{reward.low:g},"
                                                       f" {reward.high:g}], got {feedback.default_reward!r}")
        if feedback.signals is not None and reward.type == "bernoulli" and feedback.fusion == "weighted_mean":
            raise _fail("feedback.fusion", "weighted_mean cannot fuse bernoulli rewards (a mean of 0s and 1s is"
                                           " neither): use min or product")


def _smallest_calibration(coverage: float) -> int:
    """The fewest residuals whose conformal rank ceil((n + 1) * coverage) is at most n:
    n >= c / (1 - c), with the coverage read as the decimal it was written as."""
    c = Fraction(repr(coverage))
    return math.ceil(c / (1 - c))


def _listing(names, limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(map(repr, names[:limit]))
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"
