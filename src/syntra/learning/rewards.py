"""Rewards: what a capsule's feedback looks like (``reward_spec.json``), and how parts of it
combine into the one number the learner sees.

A reward is one of:

* ``bernoulli``: exactly 0 or 1 (success or failure);
* ``continuous``: a number in ``range: [low, high]``;
* ``sparse``: a number in ``range: [0, high]`` (default ``[0, 1]``) that is mostly zero,
  such as revenue per visit. The learner keeps continuous statistics over the range (so
  ``type`` is ``"continuous"``), and ``kind`` stays ``"sparse"`` so the automatic
  algorithm choice favours posterior sampling, which keeps exploring an option whose few
  non-zero rewards have not shown up yet.

A reward may instead be built from named ``components`` (a multi-objective reward as a
weighted sum scalarisation, Roijers et al., "A Survey of Multi-Objective Sequential
Decision-Making", JAIR 48, 2013): each component's raw value is normalized to [0, 1] and
the reward is their weighted mean, so its range is [0, 1].

* ``minmax`` with ``range: [lo, hi]``: ``(v - lo) / (hi - lo)``. A value outside the range
  is refused (a range that real values overrun is a wrong spec, not data to clip).
* ``budget`` with ``budget: B``: for a cost (``lower_is_better``, the default)
  ``max(0, 1 - v / B)``, a full score at no cost and none at or beyond the budget; else
  ``min(1, v / B)``. A negative value is refused.

>>> spec = RewardSpec.parse({"type": "continuous", "components": {
...     "quality": {"weight": 3, "normalize": "minmax", "range": [1, 5]},
...     "latency_ms": {"weight": 1, "normalize": "budget", "budget": 800}}})
>>> spec.combine({"quality": 4, "latency_ms": 200})      # (3 * 0.75 + 1 * 0.75) / 4
0.75
>>> spec.check(0.75), spec.normalize(0.75)
(0.75, 0.75)
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from syntra.errors import InvalidConfig, InvalidReward

# Rewards are summed in float64: bounding them keeps sums and squares finite.
MAX_REWARD_MAGNITUDE = 1e12
MAX_COMPONENTS = 64
# A component's weight: within a ratio of 1e12 of any other, so the weighted mean neither
# overflows nor loses a weight to underflow.
MIN_WEIGHT, MAX_WEIGHT = 1e-6, 1e6
REWARD_TYPES = ("bernoulli", "continuous", "sparse")
NORMALIZERS = ("minmax", "budget")
FUSIONS = ("weighted_mean", "min", "product")
COMPONENT_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")

_COMPONENT_FIELDS = {
    "minmax": ("weight", "normalize", "range"),
    "budget": ("weight", "normalize", "budget", "lower_is_better"),
}


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive(value: object) -> float | None:
    """``value`` as a float if it is a finite number > 0, else None."""
    if not _is_number(value):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if 0.0 < number < math.inf else None


def _bounds(where: str, bounds: object) -> tuple[float, float]:
    """A ``[low, high]`` range (finite, within ±1e12, low < high), as the original spec checked it."""
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or not all(map(_is_number, bounds)):
        raise InvalidConfig(f"{where} must be [low, high] numbers, got {bounds!r}")
    if not all(abs(b) <= MAX_REWARD_MAGNITUDE for b in bounds) or not bounds[0] < bounds[1]:
        raise InvalidConfig(
            f"{where} must have low < high, both within ±{MAX_REWARD_MAGNITUDE:g}"
            f" (and finite), got {bounds!r}"
        )
    return float(bounds[0]), float(bounds[1])


@dataclass(frozen=True, slots=True)
class RewardComponent:
    """One named part of a reward and how its raw value maps onto [0, 1]."""

    name: str
    weight: float
    normalize: str
    low: float = 0.0               # minmax
    high: float = 1.0
    budget: float = 1.0            # budget
    lower_is_better: bool = True

    def score(self, value: float, raw: object = None) -> float:
        """The normalized value in [0, 1]; ``value`` is already a finite float (``raw``, what
        the caller passed, for the error message)."""
        shown = value if raw is None else raw
        if self.normalize == "minmax":
            if not self.low <= value <= self.high:
                raise InvalidReward(
                    f"reward component {self.name!r}: {shown!r} outside its range [{self.low:g}, {self.high:g}]")
            return (value - self.low) / (self.high - self.low)
        if value < 0:
            raise InvalidReward(f"reward component {self.name!r}: a budgeted value must be >= 0, got {shown!r}")
        if self.lower_is_better:
            return max(0.0, 1.0 - value / self.budget)
        return min(1.0, value / self.budget)

    def to_dict(self) -> dict[str, Any]:
        if self.normalize == "minmax":
            return {"weight": self.weight, "normalize": "minmax", "range": [self.low, self.high]}
        return {"weight": self.weight, "normalize": "budget", "budget": self.budget,
                "lower_is_better": self.lower_is_better}


def _parse_component(where: str, name: str, spec: object) -> RewardComponent:
    if not isinstance(spec, Mapping):
        raise InvalidConfig(f"{where} must be an object, got {type(spec).__name__}")
    weight = _positive(spec.get("weight"))
    if weight is None or not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        raise InvalidConfig(f"{where}.weight must be a finite number in [{MIN_WEIGHT:g}, {MAX_WEIGHT:g}],"
                            f" got {spec.get('weight')!r}")
    normalize = spec.get("normalize")
    if normalize not in NORMALIZERS:
        raise InvalidConfig(f"{where}.normalize must be 'minmax' or 'budget', got {normalize!r}")
    allowed = _COMPONENT_FIELDS[normalize]
    unknown = [key for key in spec if key not in allowed]
    if unknown:
        raise InvalidConfig(f"{where}.{unknown[0]} is not a field of a {normalize} component"
                            f" (fields: {', '.join(allowed)})")
    if normalize == "minmax":
        low, high = _bounds(f"{where}.range", spec.get("range"))
        return RewardComponent(name, weight, normalize, low=low, high=high)
    budget = _positive(spec.get("budget"))
    if budget is None:
        raise InvalidConfig(f"{where}.budget must be a finite number > 0, got {spec.get('budget')!r}")
    lower_is_better = spec.get("lower_is_better", True)
    if type(lower_is_better) is not bool:
        raise InvalidConfig(f"{where}.lower_is_better must be true or false, got {lower_is_better!r}")
    return RewardComponent(name, weight, normalize, budget=budget, lower_is_better=lower_is_better)


def _parse_components(value: object) -> tuple[RewardComponent, ...]:
    """Components as ``{name: spec}``, or as the ``[{name, ...}]`` list ``syntra author`` writes."""
    if isinstance(value, Mapping):
        entries = [(f"reward.components.{name}", name, spec) for name, spec in value.items()]
    elif isinstance(value, (list, tuple)):
        entries = []
        for i, spec in enumerate(value):
            where = f"reward.components[{i}]"
            if not isinstance(spec, Mapping):
                raise InvalidConfig(f"{where} must be an object, got {type(spec).__name__}")
            entries.append((where, spec.get("name"), {k: v for k, v in spec.items() if k != "name"}))
    else:
        raise InvalidConfig(f"reward.components must be an object of named components, got {type(value).__name__}")
    if not 1 <= len(entries) <= MAX_COMPONENTS:
        raise InvalidConfig(f"reward.components must name 1 to {MAX_COMPONENTS} components, got {len(entries)}")
    components, seen = [], set()
    for where, name, spec in entries:
        if type(name) is not str or not COMPONENT_NAME.match(name):
            raise InvalidConfig(f"{where} has an invalid name: 1-128 of [A-Za-z0-9_-], got {name!r}")
        if name in seen:
            raise InvalidConfig(f"{where} repeats the component {name!r}")
        seen.add(name)
        components.append(_parse_component(where, name, spec))
    return tuple(components)


def _as_float(value: object, what: str) -> float:
    """``value`` as a finite float, refusing bools, non-numbers, NaN, infinities and values
    too large for float64 (``what`` names it in the error)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidReward(f"{what} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidReward(f"{what} {value!r} is too large") from None
    if not math.isfinite(number):
        raise InvalidReward(f"{what} must be finite, got {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class RewardSpec:
    """How rewards look.

    ``type`` is how the learner keeps statistics: ``bernoulli`` (exactly 0 or 1) or
    ``continuous`` in ``[low, high]``. ``kind`` is what the spec declared: ``bernoulli``,
    ``continuous`` or ``sparse`` (a sparse reward has continuous statistics).
    ``components``, when there are any, combine into the reward (its range is then [0, 1]).
    """

    type: str = "bernoulli"
    low: float = 0.0
    high: float = 1.0
    kind: str | None = None
    components: tuple[RewardComponent, ...] = ()

    def __post_init__(self) -> None:
        if self.kind is None:
            object.__setattr__(self, "kind", self.type)

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> RewardSpec:
        """Check a reward spec (``reward_spec.json``); None is a bernoulli reward. Raises
        :class:`~syntra.errors.InvalidConfig` naming the field at fault."""
        if spec is None:
            return cls()
        if not isinstance(spec, Mapping):
            raise InvalidConfig(f"reward spec must be a mapping, got {type(spec).__name__}")
        unknown = set(spec) - {"type", "range", "components"}
        if unknown:
            raise InvalidConfig(f"reward spec has unknown fields: {sorted(map(str, unknown))}")
        has_components = "components" in spec
        kind = spec.get("type", "continuous" if has_components else "bernoulli")
        if kind not in REWARD_TYPES:
            raise InvalidConfig(f"reward.type must be 'bernoulli', 'continuous' or 'sparse', got {kind!r}")
        if kind == "bernoulli":
            if "range" in spec:
                raise InvalidConfig("a bernoulli reward has no range: it is 0 or 1")
            if has_components:
                raise InvalidConfig("reward.components: a bernoulli reward has no components"
                                    " (they combine to a weighted mean in [0, 1], not to 0 or 1)")
            return cls()
        components = _parse_components(spec["components"]) if has_components else ()
        if components:
            if "range" in spec and _bounds("reward.range", spec["range"]) != (0.0, 1.0):
                raise InvalidConfig(f"reward.range must be [0, 1] with components (their weighted mean),"
                                    f" got {spec['range']!r}")
            low, high = 0.0, 1.0
        elif kind == "sparse":
            low, high = _bounds("reward.range", spec.get("range", [0, 1]))
            if low != 0.0:
                raise InvalidConfig(f"reward.range of a sparse reward must be [0, high], got {spec['range']!r}")
        else:
            low, high = _bounds("reward.range", spec.get("range"))
        return cls("continuous", low, high, kind, components)

    def to_dict(self) -> dict[str, Any]:
        if self.type == "bernoulli":
            return {"type": "bernoulli"}
        out: dict[str, Any] = {"type": self.kind, "range": [self.low, self.high]}
        if self.components:
            out["components"] = {c.name: c.to_dict() for c in self.components}
        return out

    def check(self, reward: object) -> float:
        """``reward`` as a float if this spec allows it, else :class:`InvalidReward`."""
        value = _as_float(reward, "reward")
        if self.type == "bernoulli":
            if value != 0.0 and value != 1.0:
                raise InvalidReward(f"a bernoulli reward must be 0 or 1, got {reward!r}")
        elif not self.low <= value <= self.high:
            raise InvalidReward(f"reward {reward!r} outside the range [{self.low}, {self.high}]")
        return value + 0.0   # -0.0 becomes 0.0

    def normalize(self, reward: object) -> float:
        """``reward`` (checked) mapped onto [0, 1]: ``(reward - low) / (high - low)``."""
        value = self.check(reward)
        return min(1.0, max(0.0, (value - self.low) / (self.high - self.low)))

    def combine(self, components: Mapping[str, Any]) -> float:
        """The reward of raw component values ``{name: value}``: the weighted mean of the
        normalized components, in [0, 1]. Every component must be given, and no other."""
        if not self.components:
            raise InvalidReward("this reward has no components: report the reward itself")
        if not isinstance(components, Mapping):
            raise InvalidReward(f"reward components must be a mapping of name to value, got {type(components).__name__}")
        known = {c.name for c in self.components}
        unknown = [name for name in components if name not in known]
        if unknown:
            raise InvalidReward(f"unknown reward components {', '.join(sorted(map(repr, unknown)))} (known: {sorted(known)})")
        weighted, total = [], []
        for component in self.components:
            if component.name not in components:
                raise InvalidReward(f"reward component {component.name!r} is missing")
            raw = components[component.name]
            value = _as_float(raw, f"reward component {component.name!r}")
            weighted.append(component.weight * component.score(value, raw))
            total.append(component.weight)
        return min(1.0, math.fsum(weighted) / math.fsum(total))

    def fuse_signals(self, signals_config: Mapping[str, Any], fusion: str,
                     signals: Mapping[str, Any]) -> float | None:
        """:func:`fuse_signals` with this spec's range."""
        return fuse_signals(signals_config, fusion, signals, reward=self)


def _signal_setting(config: object, field: str, default: Any) -> Any:
    if isinstance(config, Mapping):
        return config.get(field, default)
    return getattr(config, field, default)


def fuse_signals(signals_config: Mapping[str, Any], fusion: str, signals: Mapping[str, Any],
                 *, reward: RewardSpec) -> float | None:
    """Fuse several feedback signals about one decision into one reward.

    ``signals_config`` maps each signal's name to its ``weight`` and whether it is
    ``required`` (``feedback.signals`` of learning.json, as mappings or parsed objects);
    ``signals`` holds those that have arrived, each a reward within ``reward``'s range.
    Returns None until every required signal has arrived; then the fused reward: every
    arrived signal is normalized to [0, 1], fused (``weighted_mean`` of them, their ``min``,
    or their ``product``; weights matter only to the mean) and mapped back onto the range.
    For a bernoulli reward only ``min`` and ``product`` (both a logical AND) keep it 0 or 1.

    >>> spec = RewardSpec.parse({"type": "continuous", "range": [0, 10]})
    >>> config = {"clicked": {"weight": 1, "required": True}, "rated": {"weight": 3, "required": False}}
    >>> fuse_signals(config, "weighted_mean", {}, reward=spec) is None
    True
    >>> fuse_signals(config, "weighted_mean", {"clicked": 10, "rated": 2}, reward=spec)
    4.0
    """
    if fusion not in FUSIONS:
        raise InvalidConfig(f"feedback.fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    if reward.type == "bernoulli" and fusion == "weighted_mean":
        raise InvalidConfig("feedback.fusion weighted_mean cannot fuse bernoulli rewards (the mean of 0s and 1s"
                            " is neither): use min or product")
    if not isinstance(signals_config, Mapping) or not signals_config:
        raise InvalidConfig("feedback.signals must name at least one signal")
    if not isinstance(signals, Mapping):
        raise InvalidReward(f"signals must be a mapping of signal name to reward, got {type(signals).__name__}")
    unknown = [name for name in signals if name not in signals_config]
    if unknown:
        raise InvalidReward(f"unknown signals {', '.join(sorted(map(repr, unknown)))} (known: {sorted(signals_config)})")
    scores, weights = [], []
    for name, value in signals.items():
        try:
            scores.append(reward.normalize(value))
        except InvalidReward as exc:
            raise InvalidReward(f"signal {name!r}: {exc}") from None
        weights.append(float(_signal_setting(signals_config[name], "weight", 1.0)))
    for name, config in signals_config.items():
        if _signal_setting(config, "required", True) and name not in signals:
            return None
    if not scores:
        return None
    if fusion == "weighted_mean":
        fused = math.fsum(w * s for w, s in zip(weights, scores)) / math.fsum(weights)
    elif fusion == "min":
        fused = min(scores)
    else:
        fused = math.prod(scores)
    fused = min(1.0, max(0.0, fused))
    return min(reward.high, reward.low + fused * (reward.high - reward.low))
