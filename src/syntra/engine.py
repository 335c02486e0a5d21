"""The in-process engine: the one place where a decision is made.

The gRPC service, the CLI, the simulator and in-process users all go through
:class:`Engine`. This first version keeps everything in memory; the durable
``Engine.open(path)`` writes every decision and feedback to a write-ahead log.

>>> from syntra import Engine
>>> eng = Engine.memory(seed=7)
>>> cap = eng.install("tenants/acme/jobs/llm/capsules/router",
...                   options=["cheap_fast", "balanced", "expensive_accurate"],
...                   reward={"type": "bernoulli"})
>>> d = cap.decide(context_key="support")
>>> d.option in cap.options
True
>>> cap.feedback(d.decision_id, reward=1.0)
>>> cap.report()["contexts"]["support"]["pulls"][d.option]
1

Concurrency: ``decide`` and ``feedback`` run in compiled code that holds the GIL from start
to end, so each call is atomic with respect to other Python threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import blake3

from syntra.errors import (
    CapsuleExists,
    DuplicateFeedback,
    InvalidConfig,
    InvalidContext,
    InvalidReward,
    UnknownCapsule,
    UnknownDecision,
)
from syntra.names import CapsuleName
from syntra_core.bandits import ArmTable, BetaThompson, UCB1
from syntra_core.learner import Decision, FeedbackStatus, Learner

MAX_OPTIONS = 256
MAX_OPTION_NAME = 128
MAX_CONTEXT_KEY = 256

# Each algorithm's rule class and the settings it accepts.
ALGORITHMS: dict[str, tuple[type, frozenset[str]]] = {
    "thompson": (BetaThompson, frozenset({"prior_a", "prior_b", "samples", "max_staleness"})),
    "ucb1": (UCB1, frozenset({"exploration"})),
}


@dataclass(frozen=True, slots=True)
class RewardSpec:
    """How rewards look: ``bernoulli`` (exactly 0 or 1) or ``continuous`` in ``[low, high]``."""

    type: str = "bernoulli"
    low: float = 0.0
    high: float = 1.0

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> RewardSpec:
        if spec is None:
            return cls()
        if not isinstance(spec, Mapping):
            raise InvalidConfig(f"reward spec must be a mapping, got {type(spec).__name__}")
        unknown = set(spec) - {"type", "range"}
        if unknown:
            raise InvalidConfig(f"reward spec has unknown fields: {sorted(unknown)}")
        kind = spec.get("type", "bernoulli")
        if kind == "bernoulli":
            if "range" in spec:
                raise InvalidConfig("a bernoulli reward has no range: it is 0 or 1")
            return cls()
        if kind == "continuous":
            bounds = spec.get("range")
            if (
                not isinstance(bounds, (list, tuple))
                or len(bounds) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
            ):
                raise InvalidConfig(f"reward.range must be [low, high] numbers, got {bounds!r}")
            low, high = float(bounds[0]), float(bounds[1])
            if not (abs(low) < float("inf") and abs(high) < float("inf")) or not low < high:
                raise InvalidConfig(f"reward.range must be finite with low < high, got {bounds!r}")
            return cls("continuous", low, high)
        raise InvalidConfig(f"reward.type must be 'bernoulli' or 'continuous', got {kind!r}")

    def to_dict(self) -> dict[str, Any]:
        if self.type == "bernoulli":
            return {"type": "bernoulli"}
        return {"type": self.type, "range": [self.low, self.high]}


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


def _derive(label: bytes, *parts: bytes, size: int) -> bytes:
    hasher = blake3.blake3(b"syntra." + label + b"\x00")
    for part in parts:
        hasher.update(len(part).to_bytes(4, "little") + part)
    return hasher.digest(size)


class Capsule:
    """An installed capsule: its options, reward spec, rule and learned state."""

    __slots__ = ("name", "options", "reward", "algorithm", "settings", "_learner")

    def __init__(self, name: CapsuleName, options: tuple[str, ...], reward: RewardSpec,
                 algorithm: str, settings: dict[str, Any], seed: int, tag: str):
        self.name = str(name)
        self.options = options
        self.reward = reward
        self.algorithm = algorithm
        self.settings = dict(settings)
        table = ArmTable(len(options), reward.low, reward.high, binary=reward.type == "bernoulli")
        rule_class, _ = ALGORITHMS[algorithm]
        try:
            rule = rule_class(table, **settings)
        except (TypeError, ValueError) as exc:
            raise InvalidConfig(f"{algorithm} settings: {exc}") from None
        self._learner = Learner(self.name, options, rule, seed, tag)

    def decide(self, context_key: str = "") -> Decision:
        """Choose an option for ``context_key`` (a string naming the context)."""
        if type(context_key) is not str or len(context_key) > MAX_CONTEXT_KEY:
            raise InvalidContext(
                f"context_key must be a string of at most {MAX_CONTEXT_KEY} characters,"
                f" got {type(context_key).__name__} {str(context_key)[:40]!r}"
            )
        return self._learner.decide(context_key)

    def feedback(self, decision_id: str, reward: float) -> None:
        """Report the reward of a decision. Applied exactly once; errors change nothing."""
        if type(decision_id) is not str:
            raise UnknownDecision(self.name, decision_id, "decision ids are strings")
        try:
            status = self._learner.feedback(decision_id, reward)
        except TypeError:
            raise InvalidReward(f"reward must be a number, got {type(reward).__name__}") from None
        if status:
            self._raise_for(status, decision_id, reward)

    def _raise_for(self, status: int, decision_id: str, reward: float) -> None:
        if status == FeedbackStatus.FEEDBACK_DUPLICATE:
            raise DuplicateFeedback(self.name, decision_id)
        if status == FeedbackStatus.FEEDBACK_UNKNOWN:
            raise UnknownDecision(self.name, decision_id)
        if status == FeedbackStatus.FEEDBACK_MALFORMED_ID:
            raise UnknownDecision(self.name, decision_id, "not a Syntra decision id")
        if status == FeedbackStatus.FEEDBACK_NOT_FINITE:
            raise InvalidReward(f"reward must be finite, got {reward!r}")
        if status == FeedbackStatus.FEEDBACK_NOT_BINARY:
            raise InvalidReward(f"a bernoulli reward must be 0 or 1, got {reward!r}")
        raise InvalidReward(
            f"reward {reward!r} outside the range [{self.reward.low}, {self.reward.high}]"
        )

    def is_pending(self, decision_id: str) -> bool:
        """True if ``decision_id`` was issued here and still awaits feedback."""
        return type(decision_id) is str and self._learner.is_pending(decision_id)

    @property
    def decisions(self) -> int:
        """How many decisions this capsule has made."""
        return self._learner.next_sequence

    @property
    def pending(self) -> int:
        """How many decisions still await feedback."""
        return self._learner.pending

    def report(self) -> dict[str, Any]:
        """What the capsule has learned, per context: plays, mean reward and the leader."""
        table = self._learner.table
        contexts = {}
        for key in table.contexts:
            pulls = table.pulls(key)
            sums = table.reward_sums(key)
            means = {
                option: (float(sums[i] / pulls[i]) if pulls[i] else None)
                for i, option in enumerate(self.options)
            }
            observed = [(m, o) for o, m in means.items() if m is not None]
            contexts[key] = {
                "pulls": {option: int(pulls[i]) for i, option in enumerate(self.options)},
                "mean_reward": means,
                "best_option": max(observed)[1] if observed else None,
            }
        return {
            "name": self.name,
            "algorithm": self.algorithm,
            "reward": self.reward.to_dict(),
            "decisions": self.decisions,
            "pending": self.pending,
            "contexts": contexts,
        }

    def __repr__(self) -> str:
        return f"Capsule({self.name!r}, options={list(self.options)!r}, algorithm={self.algorithm!r})"


class Engine:
    """Installs capsules and routes decisions and feedback to them.

    Create one with :meth:`memory`. Every capsule's randomness derives from the engine seed
    and the capsule name, so the same seed and the same calls give the same decisions.
    """

    def __init__(self, *, seed: int = 0):
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
            raise InvalidConfig(f"seed must be an integer in [0, 2**64), got {seed!r}")
        self.seed = seed
        self._capsules: dict[str, Capsule] = {}
        self._installs: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def memory(cls, seed: int = 0) -> Engine:
        """An engine that keeps everything in memory: fast, not durable."""
        return cls(seed=seed)

    def install(
        self,
        name: str,
        *,
        options: Iterable[str],
        reward: Mapping[str, Any] | None = None,
        algorithm: str = "thompson",
        settings: Mapping[str, Any] | None = None,
    ) -> Capsule:
        """Install a capsule under ``name`` and return it.

        ``algorithm`` is ``"thompson"`` (default) or ``"ucb1"``; ``settings`` tunes it
        (``prior_a``, ``prior_b``, ``samples``, ``max_staleness`` for Thompson;
        ``exploration`` for UCB1).
        """
        parsed = CapsuleName.parse(name)
        option_names = _check_options(options)
        spec = RewardSpec.parse(reward)
        if algorithm not in ALGORITHMS:
            raise InvalidConfig(f"algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
        settings = dict(settings or {})
        unknown = set(settings) - ALGORITHMS[algorithm][1]
        if unknown:
            raise InvalidConfig(f"unknown {algorithm} settings: {sorted(unknown)}")
        key = str(parsed)
        with self._lock:
            if key in self._capsules:
                raise CapsuleExists(key)
            install = self._installs.get(key, 0)
            encoded = key.encode()
            seed = int.from_bytes(
                _derive(b"capsule-seed", self.seed.to_bytes(8, "little"), encoded, size=8), "little"
            )
            # A reinstalled capsule gets a new tag, so ids from the old install are unknown.
            tag = _derive(b"capsule-tag", encoded, install.to_bytes(8, "little"), size=4).hex()
            capsule = Capsule(parsed, option_names, spec, algorithm, settings, seed, tag)
            self._capsules[key] = capsule
            self._installs[key] = install + 1
        return capsule

    def capsule(self, name: str) -> Capsule:
        """The capsule installed under ``name``."""
        try:
            return self._capsules[name]
        except (KeyError, TypeError):
            CapsuleName.parse(name)  # a malformed name says so precisely
            raise UnknownCapsule(name) from None

    def capsules(self) -> list[Capsule]:
        """Every installed capsule, ordered by name."""
        return [self._capsules[k] for k in sorted(self._capsules)]

    def uninstall(self, name: str) -> None:
        """Remove a capsule and everything it learned."""
        with self._lock:
            self.capsule(name)
            del self._capsules[name]

    def __contains__(self, name: object) -> bool:
        return name in self._capsules
