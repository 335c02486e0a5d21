"""Regimes: per-context statistics of a request metric, anomaly flags and quality floors.

A *regime* is a context bucket, a string the caller chooses (for example a coarse key of
the request's features). For each regime :class:`RegimeMonitor` keeps

* the running mean and variance of one request metric (say ``latency_ms``) by Welford's
  method (Welford, "Note on a method for calculating corrected sums of squares and
  products", *Technometrics* 4(3), 1962; Knuth, *TAOCP* vol. 2, 3rd ed., section 4.2.2):
  ``delta = v - mean; mean += delta / n; M2 += delta * (v - mean)``. It never forms
  ``sum(v^2)``, so a metric around 1e9 with unit noise keeps its variance to about 1e-8
  relative error, where the textbook ``E[v^2] - E[v]^2`` would lose every digit;
* a z-score test of each new value against the regime's history: ``z = (v - mean) / s``
  with ``s`` the sample standard deviation (``ddof=1``), 0 until ``min_samples`` values,
  and the value anomalous when ``|z| > z_threshold`` (a Shewhart-style control limit). The
  z-score uses the statistics *before* the value is added, so an outlier cannot dilute its
  own score; the value is added afterwards, anomalous or not. When every earlier value was
  equal (``s == 0``), a different value has an infinite z-score and is anomalous;
* a quality floor in basis points: the domain's day-one floor to start with, calibrated by
  outcomes. A failure raises it by ``2 * step_bps``, a success lowers it by ``step_bps``,
  clamped to ``[min_floor_bps, max_floor_bps]``. With failure probability ``p`` the floor
  drifts by ``step_bps * (3p - 1)`` per outcome, so it rises while more than one outcome
  in three fails and relaxes below that. While a regime's current value is anomalous its
  floor is raised by ``anomaly_raise_bps`` for that decision (clamped to the maximum).

With ``enabled`` false the monitor runs in shadow: it learns, flags and reports as usual,
but :meth:`RegimeMonitor.assess` and :meth:`RegimeMonitor.floor` return the day-one floor.

Example:

>>> monitor = RegimeMonitor({"enabled": True, "metric": "latency_ms", "min_samples": 5,
...                          "domain": "support"})
>>> for latency in (100.0, 102.0, 98.0, 101.0, 99.0):
...     _ = monitor.assess("eu/mobile", latency)
>>> verdict = monitor.assess("eu/mobile", 160.0)
>>> verdict.anomalous, verdict.floor_bps        # support starts at 5500, +1000 while anomalous
(True, 6500)
>>> monitor.record_outcome("eu/mobile", success=False)
>>> monitor.floor("eu/mobile")
5700
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from syntra.errors import InvalidConfig, SyntraError

#: Largest magnitude accepted for a metric value.
MAX_MAGNITUDE = 1e15
_BPS_MAX = 10_000
_COUNT_MAX = 2**62

DEFAULT_FLOORS_BPS = {"support": 5500, "coding": 7200, "compliance": 9200, "security": 9200}

DEFAULT_CONFIG = {
    "enabled": False,
    "metric": None,
    "z_threshold": 3.0,
    "min_samples": 30,
    "anomaly_raise_bps": 1000,
    "step_bps": 100,
    "domain": None,
    "default_floors_bps": DEFAULT_FLOORS_BPS,
    "default_floor_bps": 5000,
    "min_floor_bps": 0,
    "max_floor_bps": 10000,
}


class RegimeConfigError(InvalidConfig):
    """A regimes setting is invalid."""


class RegimeInputError(SyntraError, ValueError):
    """A regime name, metric value or outcome is not acceptable."""


class RegimeStateError(SyntraError, ValueError):
    """An exported regimes state is malformed or does not fit this configuration."""


def _int(value, field, low, high):
    if type(value) is bool or not isinstance(value, int):
        raise RegimeConfigError(f"{field} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise RegimeConfigError(f"{field} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def _name(value, field):
    if value is None:
        return None
    if type(value) is not str or not value:
        raise RegimeConfigError(f"{field} must be null or a non-empty string, got {value!r}")
    return value


def validate_config(config):
    """The complete regimes settings: ``config`` over :data:`DEFAULT_CONFIG`, each one checked.

    ``default_floors_bps`` is merged over :data:`DEFAULT_FLOORS_BPS`. Raises
    :class:`RegimeConfigError` naming the first bad field (``regimes.<field>``).
    """
    if not isinstance(config, Mapping):
        raise RegimeConfigError(f"regimes config must be a mapping, got {type(config).__name__}")
    for field in config:
        if field not in DEFAULT_CONFIG:
            raise RegimeConfigError(
                f"regimes.{field} is not a regimes setting (known: {', '.join(DEFAULT_CONFIG)})"
            )
    merged = {**DEFAULT_CONFIG, **config}
    enabled = merged["enabled"]
    if type(enabled) is not bool:
        raise RegimeConfigError(f"regimes.enabled must be true or false, got {enabled!r}")
    threshold = merged["z_threshold"]
    if type(threshold) is bool or not isinstance(threshold, (int, float)) or not (
        math.isfinite(threshold) and threshold > 0
    ):
        raise RegimeConfigError(f"regimes.z_threshold must be a finite number > 0, got {threshold!r}")
    settings = {
        "enabled": enabled,
        "metric": _name(merged["metric"], "regimes.metric"),
        "z_threshold": float(threshold),
        "min_samples": _int(merged["min_samples"], "regimes.min_samples", 2, _COUNT_MAX),
        "anomaly_raise_bps": _int(merged["anomaly_raise_bps"], "regimes.anomaly_raise_bps", 0, _BPS_MAX),
        "step_bps": _int(merged["step_bps"], "regimes.step_bps", 1, _BPS_MAX),
        "domain": _name(merged["domain"], "regimes.domain"),
        "default_floor_bps": _int(merged["default_floor_bps"], "regimes.default_floor_bps", 0, _BPS_MAX),
        "min_floor_bps": _int(merged["min_floor_bps"], "regimes.min_floor_bps", 0, _BPS_MAX),
        "max_floor_bps": _int(merged["max_floor_bps"], "regimes.max_floor_bps", 0, _BPS_MAX),
    }
    given_floors = merged["default_floors_bps"]
    if not isinstance(given_floors, Mapping):
        raise RegimeConfigError(
            f"regimes.default_floors_bps must be a mapping of domain to basis points, got {given_floors!r}"
        )
    floors = dict(DEFAULT_FLOORS_BPS)
    for domain, floor in given_floors.items():
        if type(domain) is not str or not domain:
            raise RegimeConfigError(f"regimes.default_floors_bps has a key that is not a domain name: {domain!r}")
        floors[domain] = _int(floor, f"regimes.default_floors_bps.{domain}", 0, _BPS_MAX)
    settings["default_floors_bps"] = floors
    low, high = settings["min_floor_bps"], settings["max_floor_bps"]
    if low > high:
        raise RegimeConfigError(
            f"regimes.min_floor_bps must be <= regimes.max_floor_bps ({high}), got {low}"
        )
    # Only the floors this monitor can start from must fit the clamp range; a floor of
    # another domain is never used here.
    if settings["domain"] in floors:
        field, floor = f"regimes.default_floors_bps.{settings['domain']}", floors[settings["domain"]]
    else:
        field, floor = "regimes.default_floor_bps", settings["default_floor_bps"]
    if not low <= floor <= high:
        raise RegimeConfigError(
            f"{field} must be within [regimes.min_floor_bps, regimes.max_floor_bps] = [{low}, {high}], got {floor}"
        )
    return settings


def _checked_metric(metric_value):
    """``metric_value`` as a float; :class:`RegimeInputError` unless a number of magnitude
    at most :data:`MAX_MAGNITUDE`."""
    value = metric_value
    if type(value) is not float:
        if type(value) is bool or not isinstance(value, (int, float, np.integer, np.floating)):
            raise RegimeInputError(f"metric value must be a number, got {metric_value!r}")
        try:
            value = float(value)
        except OverflowError:   # an int beyond any float
            value = math.inf
    if not -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:  # False for NaN
        raise RegimeInputError(
            f"metric value must be finite with magnitude <= {MAX_MAGNITUDE:g}, got {metric_value!r}"
        )
    return value


@dataclass(frozen=True, slots=True)
class RegimeAssessment:
    """One metric value judged against its regime's history."""

    regime: str
    z_score: float
    anomalous: bool
    floor_bps: int


class _Regime:
    """One regime's running statistics and floor."""

    __slots__ = ("count", "mean", "m2", "floor", "anomalies", "successes", "failures")

    def __init__(self, floor):
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.floor = floor
        self.anomalies = 0
        self.successes = 0
        self.failures = 0


class RegimeMonitor:
    """Per-regime metric statistics, anomaly flags and calibrated quality floors.

    ``config`` holds the regimes settings (see :data:`DEFAULT_CONFIG` and the module docs);
    :attr:`day_one_floor_bps` is the floor a new regime starts from: the floor of
    ``domain`` in ``default_floors_bps``, else ``default_floor_bps``.
    """

    def __init__(self, config):
        self.settings = s = validate_config(config)
        self.enabled = s["enabled"]
        self.metric = s["metric"]
        self.z_threshold = s["z_threshold"]
        self.min_samples = s["min_samples"]
        self.anomaly_raise_bps = s["anomaly_raise_bps"]
        self.step_bps = s["step_bps"]
        self.domain = s["domain"]
        self.min_floor_bps = s["min_floor_bps"]
        self.max_floor_bps = s["max_floor_bps"]
        self.day_one_floor_bps = s["default_floors_bps"].get(self.domain, s["default_floor_bps"])
        self._regimes = {}

    @property
    def regimes(self):
        """The regimes seen so far, in order of first sight."""
        return tuple(self._regimes)

    def _regime(self, regime):
        stats = self._regimes.get(regime)
        if stats is None:
            if type(regime) is not str:
                raise RegimeInputError(f"regime must be a string, got {regime!r}")
            stats = self._regimes[regime] = _Regime(self.day_one_floor_bps)
        return stats

    def assess(self, regime, metric_value):
        """Judge ``metric_value`` against ``regime``'s history, then add it to that history.

        Returns a :class:`RegimeAssessment`; its ``floor_bps`` is the regime's calibrated
        floor, plus ``anomaly_raise_bps`` when the value is anomalous (at most the maximum).
        """
        value = _checked_metric(metric_value)
        stats = self._regime(regime)
        z, anomalous = self._score(stats, value)
        n = stats.count
        # Welford's update, after the score
        n += 1
        delta = value - stats.mean
        stats.mean += delta / n
        stats.m2 += delta * (value - stats.mean)
        stats.count = n
        if anomalous:
            stats.anomalies += 1
        return self._verdict(regime, stats.floor, z, anomalous)

    def peek(self, regime, metric_value):
        """What :meth:`assess` would return, without adding the value to any history (nor
        creating the regime): for a capsule that serves but learns nothing (frozen).

        >>> monitor = RegimeMonitor({"enabled": True, "metric": "latency_ms", "min_samples": 2})
        >>> monitor.peek("eu", 100.0).floor_bps, monitor.regimes
        (5000, ())
        """
        value = _checked_metric(metric_value)
        if type(regime) is not str:
            raise RegimeInputError(f"regime must be a string, got {regime!r}")
        stats = self._regimes.get(regime)
        if stats is None:
            return self._verdict(regime, self.day_one_floor_bps, 0.0, False)
        z, anomalous = self._score(stats, value)
        return self._verdict(regime, stats.floor, z, anomalous)

    def _score(self, stats, value):
        """(z-score, anomalous) of ``value`` against ``stats`` as they are."""
        n = stats.count
        if n < self.min_samples:
            return 0.0, False
        z = 0.0
        variance = stats.m2 / (n - 1)
        if variance > 0.0:
            z = (value - stats.mean) / math.sqrt(variance)
        elif value != stats.mean:
            z = math.copysign(math.inf, value - stats.mean)
        return z, abs(z) > self.z_threshold

    def _verdict(self, regime, floor, z, anomalous):
        if not self.enabled:
            return RegimeAssessment(regime, z, anomalous, self.day_one_floor_bps)
        if anomalous:
            floor = min(floor + self.anomaly_raise_bps, self.max_floor_bps)
        return RegimeAssessment(regime, z, anomalous, floor)

    def floor(self, regime):
        """The calibrated floor of ``regime`` (the day-one floor for a regime not seen yet)."""
        if type(regime) is not str:
            raise RegimeInputError(f"regime must be a string, got {regime!r}")
        stats = self._regimes.get(regime)
        if stats is None or not self.enabled:
            return self.day_one_floor_bps
        return stats.floor

    def record_outcome(self, regime, success):
        """Calibrate ``regime``'s floor: a failure raises it by ``2 * step_bps``, a success
        lowers it by ``step_bps``, within ``[min_floor_bps, max_floor_bps]``."""
        if type(success) is not bool:
            if not isinstance(success, np.bool_):
                raise RegimeInputError(f"success must be true or false, got {success!r}")
            success = bool(success)
        stats = self._regime(regime)
        if success:
            stats.successes += 1
            stats.floor = max(stats.floor - self.step_bps, self.min_floor_bps)
        else:
            stats.failures += 1
            stats.floor = min(stats.floor + 2 * self.step_bps, self.max_floor_bps)

    def report(self):
        """Per regime: ``count``, ``mean``, ``std`` (sample, 0 below two values),
        ``floor_bps``, ``anomalies``, ``successes``, ``failures``."""
        out = {}
        for name, stats in self._regimes.items():
            std = math.sqrt(stats.m2 / (stats.count - 1)) if stats.count >= 2 else 0.0
            out[name] = {
                "count": stats.count,
                "mean": stats.mean,
                "std": std,
                "floor_bps": stats.floor,
                "anomalies": stats.anomalies,
                "successes": stats.successes,
                "failures": stats.failures,
            }
        return out

    def export_state(self):
        """Every regime's statistics as JSON types (floats round-trip exactly through JSON)."""
        return {
            "regimes": {
                name: {
                    "count": stats.count,
                    "mean": stats.mean,
                    "m2": stats.m2,
                    "floor_bps": stats.floor,
                    "anomalies": stats.anomalies,
                    "successes": stats.successes,
                    "failures": stats.failures,
                }
                for name, stats in self._regimes.items()
            }
        }

    def import_state(self, state):
        """Restore :meth:`export_state` output, replacing every regime. Checks all before changing."""
        if not isinstance(state, Mapping) or set(state) != {"regimes"}:
            raise RegimeStateError("regimes state must be a mapping with the single field 'regimes'")
        given = state["regimes"]
        if not isinstance(given, Mapping):
            raise RegimeStateError("regimes state field 'regimes' must be a mapping")
        fields = ("count", "mean", "m2", "floor_bps", "anomalies", "successes", "failures")
        restored = {}
        for name, entry in given.items():
            if type(name) is not str:
                raise RegimeStateError(f"regime names must be strings, got {name!r}")
            if not isinstance(entry, Mapping) or set(entry) != set(fields):
                raise RegimeStateError(f"regime {name!r} must have exactly the fields {', '.join(fields)}")
            for field in ("count", "anomalies", "successes", "failures", "floor_bps"):
                if type(entry[field]) is not int or entry[field] < 0:
                    raise RegimeStateError(f"regime {name!r}: {field} must be an integer >= 0, got {entry[field]!r}")
            for field in ("mean", "m2"):
                value = entry[field]
                if type(value) not in (int, float) or not -MAX_MAGNITUDE**2 <= value <= MAX_MAGNITUDE**2:
                    raise RegimeStateError(f"regime {name!r}: {field} must be a finite number, got {value!r}")
            count, mean, m2 = entry["count"], float(entry["mean"]), float(entry["m2"])
            if m2 < 0.0 or abs(mean) > MAX_MAGNITUDE or entry["anomalies"] > count:
                raise RegimeStateError(f"regime {name!r}: inconsistent statistics {dict(entry)!r}")
            if count == 0 and (mean != 0.0 or m2 != 0.0):
                raise RegimeStateError(f"regime {name!r}: no values but a non-zero mean or M2")
            if not self.min_floor_bps <= entry["floor_bps"] <= self.max_floor_bps:
                raise RegimeStateError(
                    f"regime {name!r}: floor_bps {entry['floor_bps']} is outside "
                    f"[{self.min_floor_bps}, {self.max_floor_bps}]"
                )
            stats = _Regime(entry["floor_bps"])
            stats.count, stats.mean, stats.m2 = count, mean, m2
            stats.anomalies = entry["anomalies"]
            stats.successes = entry["successes"]
            stats.failures = entry["failures"]
            restored[name] = stats
        self._regimes = restored
