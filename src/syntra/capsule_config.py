"""Install-time checks and config helpers for capsules.

What a capsule's options, rule settings, context keys, rewards and learning config must be,
checked before anything is installed or changed, and the helpers that derive what a capsule
runs from its config (:func:`learning_of`, :func:`candidate_names`). They are apart from
:mod:`syntra.capsule` because the engine, the simulator, the CLI and authoring check inputs
with them without touching a running capsule.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from syntra_core.bandits import (
    DEFAULT_SAMPLES,
    MAX_ARMS,
    UCB1,
    BetaThompson,
    EpsilonGreedy,
    GaussianThompson,
    Greedy,
    Softmax,
)

from syntra.errors import InvalidConfig, InvalidContext, InvalidReward
from syntra.learning.config import LearningConfig
from syntra.learning.rewards import RewardSpec

MAX_OPTIONS = MAX_ARMS
MAX_OPTION_NAME = 128
MAX_CONTEXT_KEY = 256
# Rewards are summed in float64: bounding them keeps sums and squares finite.
MAX_REWARD_MAGNITUDE = 1e12
# Posterior draws per Thompson refresh (samples x options) stay within a few milliseconds.
MAX_THOMPSON_DRAWS = 1 << 20


@dataclass(frozen=True, slots=True)
class Setting:
    kind: type  # int or float
    low: float
    high: float
    low_inclusive: bool = True


# Each algorithm's rule class and the settings it accepts.
ALGORITHMS: dict[str, tuple[type, dict[str, Setting]]] = {
    "thompson": (BetaThompson, {
        "prior_a": Setting(float, 0.0, 1e9, low_inclusive=False),
        "prior_b": Setting(float, 0.0, 1e9, low_inclusive=False),
        "samples": Setting(int, 1, 100_000),
        "max_staleness": Setting(float, 0.0, 1.0),
    }),
    "ucb1": (UCB1, {"exploration": Setting(float, 0.0, 100.0)}),
    "gaussian_thompson": (GaussianThompson, {
        "prior_mean": Setting(float, -MAX_REWARD_MAGNITUDE, MAX_REWARD_MAGNITUDE),
        "prior_strength": Setting(float, 0.0, 1e9, low_inclusive=False),
        "samples": Setting(int, 1, 100_000),
        "max_staleness": Setting(float, 0.0, 1.0),
    }),
    "epsilon_greedy": (EpsilonGreedy, {
        "epsilon": Setting(float, 0.0, 1.0),
        "decay": Setting(float, 0.0, 1e9),
    }),
    "softmax": (Softmax, {"temperature": Setting(float, 0.0, 1e9, low_inclusive=False)}),
    "greedy": (Greedy, {}),
    # The meta-bandit and the linear rules take their settings from learning.json's meta
    # and linear sections.
    "auto": (None, {}),
    "linucb": (None, {}),
    "lints": (None, {}),
}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_settings(algorithm: object, settings: Mapping[str, Any] | None, n_options: int) -> dict[str, Any]:
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise InvalidConfig(f"algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
    if settings is not None and not isinstance(settings, Mapping):
        raise InvalidConfig(f"settings must be a mapping, got {type(settings).__name__}")
    allowed = ALGORITHMS[algorithm][1]
    checked = {}
    for name, value in (settings or {}).items():
        spec = allowed.get(name)
        if spec is None:
            raise InvalidConfig(f"unknown {algorithm} settings: {name!r} (allowed: {sorted(allowed)})")
        if not (isinstance(value, int) if spec.kind is int else _is_number(value)) or isinstance(value, bool):
            raise InvalidConfig(f"{algorithm} setting {name} must be {spec.kind.__name__}, got {value!r}")
        try:
            number = spec.kind(value)
        except OverflowError:
            number = float("inf")
        above_low = number > spec.low or (spec.low_inclusive and number == spec.low)
        if not (above_low and number <= spec.high):
            bracket = "[" if spec.low_inclusive else "("
            raise InvalidConfig(
                f"{algorithm} setting {name} must be in {bracket}{spec.low:g}, {spec.high:g}], got {value!r}"
            )
        checked[name] = number
    if algorithm == "thompson" and checked.get("samples", DEFAULT_SAMPLES) * n_options > MAX_THOMPSON_DRAWS:
        raise InvalidConfig(
            f"thompson samples x options must be at most {MAX_THOMPSON_DRAWS}, got"
            f" {checked.get('samples', DEFAULT_SAMPLES)} x {n_options}"
        )
    return checked


def _check_options(options: object) -> tuple[str, ...]:
    if isinstance(options, str) or not isinstance(options, Iterable):
        raise InvalidConfig("options must be a list of option names")
    names = tuple(options)
    if not 1 <= len(names) <= MAX_OPTIONS:
        raise InvalidConfig(f"a capsule needs 1 to {MAX_OPTIONS} options, got {len(names)}")
    for name in names:
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_OPTION_NAME:
            raise InvalidConfig(
                f"option names must be strings of 1-{MAX_OPTION_NAME} characters, got {name!r}"
            )
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise InvalidConfig(f"option names must be unique, repeated: {duplicates}")
    return names


def _check_context(context_key: object) -> None:
    if type(context_key) is not str or len(context_key) > MAX_CONTEXT_KEY:
        raise InvalidContext(
            f"context_key must be a string of at most {MAX_CONTEXT_KEY} characters,"
            f" got {type(context_key).__name__} {str(context_key)[:40]!r}"
        )
    try:
        context_key.encode()
    except UnicodeEncodeError:
        raise InvalidContext(f"context_key must be valid Unicode text, got {context_key[:40]!r}") from None


def _check_reward(reward: object) -> float:
    """The reward as a float, refusing bools, non-numbers and values too large for float64."""
    if isinstance(reward, bool) or not isinstance(reward, numbers.Real):
        raise InvalidReward(f"reward must be a number, got {type(reward).__name__}")
    try:
        return float(reward)
    except OverflowError:
        raise InvalidReward(f"reward {reward!r} is too large") from None



# learning.json's sections whose fields a partial update merges one by one.
_SECTIONS = ("meta", "warmup", "linear", "drift", "refusal", "regimes", "feedback", "learning")


def _merged(current: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` (a partial learning config) over ``current`` (a full one)."""
    merged = dict(current)
    for key, value in update.items():
        if key in _SECTIONS and isinstance(value, Mapping) and isinstance(current.get(key), Mapping):
            merged[key] = {**current[key], **value}
        else:
            merged[key] = value
    if "algorithm" in update and "settings" not in update and update["algorithm"] != current["algorithm"]:
        merged["settings"] = {}
    legacy = update.get("learning")
    if isinstance(legacy, Mapping) and "min_exploration" in legacy and "exploration_floor" not in (
            update.get("meta") or {}):
        # The legacy floor, named by the update, sets the meta floor (which is always set now).
        merged["meta"] = {**merged["meta"], "exploration_floor": legacy["min_exploration"]}
    return merged


def checked_learning(parsed: LearningConfig, options: tuple[str, ...], reward: RewardSpec) -> dict[str, Any]:
    """A parsed learning config as a capsule with ``options`` and ``reward`` runs it (the
    full config as JSON), once its option names, reward and rule settings are checked."""
    parsed.check_options(options)
    parsed.check_reward(reward)
    config = parsed.to_dict()
    check_rule_settings(config, len(options))
    return config


def check_rule_settings(learning: Mapping[str, Any], n_options: int) -> None:
    """Check a learning config's ``settings`` against the rule they are for: the fixed
    algorithm, or auto's single candidate."""
    algorithm = learning["algorithm"]
    if algorithm == "auto" and learning["candidates"] and len(learning["candidates"]) == 1:
        algorithm = learning["candidates"][0]
    _check_settings(algorithm, learning["settings"], n_options)


def _plain_inputs(values: Mapping[str, Any] | None, what: str) -> dict[str, Any] | None:
    """Features or metrics as plain JSON values (numpy scalars become Python ones), so the
    decision is logged exactly as it was made; anything else is the encoder's to refuse."""
    if values is None:
        return None
    if not isinstance(values, Mapping):
        raise InvalidContext(f"{what} must be a mapping of name to value, got {type(values).__name__}")
    out = {}
    for name, value in values.items():
        if not isinstance(name, str):
            raise InvalidContext(f"{what} names must be strings, got {name!r}")
        kind = type(value)
        if kind is float or kind is str or kind is bool or kind is int:   # already plain
            out[name] = value
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, numbers.Real) and not isinstance(value, int):   # Fraction, Decimal
            try:
                value = float(value)
            except (OverflowError, ValueError):
                raise InvalidContext(f"{what}.{name} is not a finite float64, got {value!r}") from None
        out[name] = value
    return out


def learning_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The full learning config of capsule ``config``.

    A capsule installed without one (and every capsule logged before the learning layer)
    runs exactly the rule it names, from its first decision: no warmup, no drift reset.
    """
    learning = config.get("learning")
    if learning is not None:
        return learning
    return LearningConfig.parse({
        "algorithm": config["algorithm"], "settings": dict(config["settings"]),
        "warmup": {"feedbacks": 0}, "drift": {"enabled": False},
    }).to_dict()


def candidate_names(learning: Mapping[str, Any], reward: RewardSpec) -> list[str]:
    """The rules a capsule's policy runs: the one it names, or auto's candidates."""
    if learning["algorithm"] != "auto":
        return [learning["algorithm"]]
    if learning["candidates"]:
        return list(learning["candidates"])
    return list(LearningConfig.default_candidates(reward.kind, learning["contextSpec"]["kind"]))


def _direct(learning: Mapping[str, Any], names: list[str]) -> bool:
    """Whether the policy is exactly its one rule, so the learner may decide alone (the
    compiled fast path: one call, no Python per decision)."""
    return (len(names) == 1 and learning["algorithm"] not in ("linucb", "lints")
            and learning["warmup"]["feedbacks"] == 0 and not learning["drift"]["enabled"]
            and not learning["refusal"]["enabled"] and not learning["regimes"]["enabled"]
            and learning["contextSpec"]["kind"] == "discrete"
            and learning["feedback"]["reward_wait_seconds"] is None
            and not learning["feedback"]["signals"]
            and learning["actions"]["kind"] == "discrete")


def _check_shadow_learning(learning: Mapping[str, Any]) -> None:
    """A shadow capsule's feedback names the action taken, once: it fuses no signals."""
    if learning["feedback"]["signals"]:
        raise InvalidConfig("learning.json: feedback.signals cannot be used by a shadow capsule (each feedback"
                            " names the option taken, so a decision takes one feedback)")

