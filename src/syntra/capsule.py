"""Capsules: what one installed capsule is, and how its inputs are checked.

A :class:`Capsule` holds its options, reward spec and rule over a compiled
:class:`~syntra_core.learner.Learner`; a :class:`DurableCapsule` also writes every decision
and feedback to the engine's WAL before it returns. Both are created by
:class:`syntra.engine.Engine`, never directly. The ``_check_*`` helpers validate what callers
pass in and are shared with the simulator.
"""

from __future__ import annotations

import numbers
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from syntra_core.bandits import DEFAULT_SAMPLES, MAX_ARMS, UCB1, ArmTable, BetaThompson
from syntra_core.learner import Decision, FeedbackStatus, Learner

from syntra.budget.gate import BudgetSpec, CapsuleBudget, learned_quality_bps
from syntra.program import ProgramSpec, run_decision
from syntra.errors import (
    DuplicateFeedback,
    InvalidConfig,
    InvalidContext,
    InvalidReward,
    UnknownCapsule,
    UnknownDecision,
)
from syntra.store.records import REFUSED_OPTION, DecisionRecord, FeedbackRecord, RecordType

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
            if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or not all(map(_is_number, bounds)):
                raise InvalidConfig(f"reward.range must be [low, high] numbers, got {bounds!r}")
            if not all(abs(b) <= MAX_REWARD_MAGNITUDE for b in bounds) or not bounds[0] < bounds[1]:
                raise InvalidConfig(
                    f"reward.range must have low < high, both within ±{MAX_REWARD_MAGNITUDE:g}"
                    f" (and finite), got {bounds!r}"
                )
            return cls("continuous", float(bounds[0]), float(bounds[1]))
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


class _Uninstalled:
    """Stands in for the learner of an uninstalled capsule: refuses work, keeps the report."""

    def __init__(self, name: str, learner: Learner):
        self.name = name
        self.table = learner.table
        self.next_sequence = learner.next_sequence
        self.pending = learner.pending

    def decide(self, context_key):
        raise UnknownCapsule(self.name)

    def feedback(self, decision_id, reward):
        raise UnknownCapsule(self.name)

    def check_feedback(self, decision_id, reward):
        raise UnknownCapsule(self.name)

    def is_pending(self, decision_id):
        return False


class Capsule:
    """An installed capsule: its options, reward spec, rule and learned state.

    ``config`` is everything needed to rebuild it empty (it is what the WAL's install
    record and every checkpoint carry): uid, name, options, reward, algorithm, settings,
    budget, install (how many earlier installs the name had), seed and tag.

    A capsule with a ``budget`` holds each decision's cost on a budget account (see
    :mod:`syntra.budget.gate`); its decide and feedback are serialised by its lock.
    """

    __slots__ = ("name", "uid", "options", "reward", "algorithm", "settings", "config", "_learner",
                 "_lock", "_budget", "_program", "_plain")

    def __init__(self, config: dict[str, Any], budget=None, sandbox=None):
        self.config = config
        self.name = config["name"]
        self.uid = config["uid"]
        self.options = tuple(config["options"])
        self.reward = RewardSpec.parse(config["reward"])
        self.algorithm = config["algorithm"]
        self.settings = dict(config["settings"])
        reward = self.reward
        table = ArmTable(len(self.options), reward.low, reward.high, binary=reward.type == "bernoulli")
        rule_class, _ = ALGORITHMS[self.algorithm]
        try:
            rule = rule_class(table, **self.settings)
        except (TypeError, ValueError) as exc:
            raise InvalidConfig(f"{self.algorithm} settings: {exc}") from None
        self._learner = Learner(self.name, self.options, rule, config["seed"], config["tag"])
        self._lock = threading.Lock()
        spec = BudgetSpec.parse(config.get("budget"), self.options)
        self._budget = None if spec is None else CapsuleBudget(spec, budget, self.uid, self.options)
        program = config.get("program")
        self._program = None if program is None else ProgramSpec.parse(program, self.options, sandbox)
        self._plain = self._budget is None and self._program is None   # decide's fast path

    def decide(self, context_key: str = "", *, input: object = None) -> Decision:
        """Choose an option for ``context_key`` (a string naming the context).

        A budgeted capsule returns a decision with ``refused`` set when no option's cost
        fits its account. A program capsule runs its program on ``input`` (JSON-like data)
        and decides at its choice node; other capsules take no input.
        """
        if type(context_key) is not str or len(context_key) > MAX_CONTEXT_KEY or not context_key.isascii():
            _check_context(context_key)
        if self._plain and input is None:
            return self._learner.decide(context_key)
        with self._lock:
            d, _, error = self._decide_locked(context_key, input)
        if error is not None:
            raise error
        return d

    def feedback(self, decision_id: str, reward: float, *, cost: int | None = None) -> None:
        """Report the reward of a decision. Applied exactly once; errors change nothing.

        ``cost`` (budgeted capsules only) is what the decision actually cost in microcents:
        it is committed against the hold; without it the hold is released.
        """
        if cost is None and self._budget is None:
            # The common case in one call: a refused update changes nothing, so the slow
            # path may ask the learner again to find the right error.
            if type(decision_id) is str and type(reward) is float and not self._learner.feedback(decision_id, reward):
                return
            self._apply_feedback(decision_id, reward)
            return
        with self._lock:
            _, claim = self._settle_and_apply(decision_id, reward, cost)
        self._budget.finish(claim)

    async def decide_async(self, context_key: str = "", *, input: object = None) -> Decision:
        """:meth:`decide` for asyncio callers: a durable capsule awaits its sync without
        blocking the event loop."""
        return self.decide(context_key, input=input)

    async def feedback_async(self, decision_id: str, reward: float, *, cost: int | None = None) -> None:
        """:meth:`feedback` for asyncio callers."""
        self.feedback(decision_id, reward, cost=cost)

    def _decide_locked(self, context_key: str, input: object):
        """Decide, running the program if there is one (the caller holds the lock):
        (decision, budget ticket, error to raise once the decision is logged)."""
        if self._program is not None:
            if self._program.context_key is not None and not context_key:
                context_key = self._program.context_of(input)
                _check_context(context_key)
            return run_decision(self, self._program, context_key, input)
        if input is not None:
            raise InvalidContext(f"capsule {self.name!r} has no program, so its decisions take no input")
        return self._decide_in_program(context_key)

    def _decide_in_program(self, context_key: str):
        """The decision itself, at a program's choice node or for a plain capsule."""
        if self._budget is None:
            return self._learner.decide(context_key), None, None
        return self._decide_budgeted(context_key)

    def _refuse_after_program(self, d: Decision, cause: object) -> tuple[Decision, Exception | None]:
        """Undo decision ``d`` (the latest, pending) after its program failed: give its
        hold back and make it a refusal, whatever else fails. Returns the refusal and the
        error giving the hold back raised, if it did."""
        undo_error = None
        if self._budget is not None:
            try:
                self._budget.finish(self._budget.settle(self._learner, d.sequence, None))
            except Exception as exc:   # the hold lapses on its own; the ledger must not wait
                undo_error = exc
            self._budget.refusals += 1
            if d.substituted_for:       # the log will say refused: replay never sees the swap
                self._budget.substitutions -= 1
        kind = type(cause).__name__ if isinstance(cause, Exception) else "error"
        return self._learner.refuse_last(d, f"program: {kind}"), undo_error

    def _decide_budgeted(self, context_key: str):
        """Decide and hold the cost (the caller holds the lock): (decision, budget ticket,
        error). When the budget fails (its journal, say), the decision is a refusal, so the
        ledger and the log stay in step, and the error is returned for the caller to raise
        once it has logged that refusal."""
        d = self._learner.decide(context_key)
        reward = self.reward
        try:
            d, ticket = self._budget.hold(
                self._learner, d,
                lambda: learned_quality_bps(self._learner.table, context_key, reward.low, reward.high))
        except Exception as error:
            self._budget.refusals += 1
            return self._learner.refuse_last(d, "budget: unavailable"), None, error
        return d, ticket, None

    def _settle_and_apply(self, decision_id: str, reward: float, cost: int | None):
        """Claim the budget settlement, then learn (the caller holds the lock): (reward,
        claim). Pass the claim to ``self._budget.finish`` once the feedback is durable.

        Everything that can refuse is checked before anything changes."""
        if self._budget is None:
            raise InvalidReward(f"capsule {self.name!r} has no budget, so its feedback takes no cost")
        if cost is not None and (type(cost) is not int or not 0 <= cost < 2**63):
            raise InvalidReward(f"cost must be integer microcents in [0, 2**63), got {cost!r}")
        reward = self._checked(decision_id, reward)
        status = self._learner.check_feedback(decision_id, reward)
        if status:
            self._raise_for(status, decision_id, reward)
        claim = self._budget.settle(self._learner, int(decision_id[:16], 16), cost)
        return self._apply_feedback(decision_id, reward), claim

    def _apply_feedback(self, decision_id: str, reward: float) -> float:
        if type(decision_id) is not str or type(reward) is not float:  # the common case skips a call
            reward = self._checked(decision_id, reward)
        status = self._learner.feedback(decision_id, reward)
        if status:
            self._raise_for(status, decision_id, reward)
        return reward

    def _checked(self, decision_id: object, reward: object) -> float:
        """The reward as a float, once the id's and the reward's types are right."""
        if type(decision_id) is not str:
            raise UnknownDecision(self.name, decision_id, "decision ids are strings")
        return reward if type(reward) is float else _check_reward(reward)

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

    def _retire(self) -> None:
        # A stale reference to an uninstalled capsule must not decide or learn (a durable
        # one would log records for a capsule that replay no longer knows).
        self._learner = _Uninstalled(self.name, self._learner)
        if self._budget is not None:
            self._budget.release_all()

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
        """What the capsule has learned, per context: plays, mean reward and the leader
        (``best_option``: the most played option, ties going to the higher mean)."""
        table = self._learner.table
        contexts = {}
        for key in table.contexts:
            pulls = table.pulls(key)
            sums = table.reward_sums(key)
            means = {
                option: (float(sums[i] / pulls[i]) if pulls[i] else None)
                for i, option in enumerate(self.options)
            }
            # The leader is the most played option (what the rule has converged on), not the
            # best raw mean, which an option played once can top by luck.
            leader = max(range(len(self.options)), key=lambda i: (pulls[i], means[self.options[i]] or 0.0))
            contexts[key] = {
                "pulls": {option: int(pulls[i]) for i, option in enumerate(self.options)},
                "mean_reward": means,
                "best_option": self.options[leader] if pulls[leader] else None,
            }
        report = {
            "name": self.name,
            "algorithm": self.algorithm,
            "reward": self.reward.to_dict(),
            "decisions": self.decisions,
            "pending": self.pending,
            "contexts": contexts,
        }
        if self._budget is not None:
            report["budget"] = self._budget.report()
        return report

    def __repr__(self) -> str:
        return f"Capsule({self.name!r}, options={list(self.options)!r}, algorithm={self.algorithm!r})"


class DurableCapsule(Capsule):
    """A capsule whose decisions and feedback are in the WAL before they are acknowledged."""

    __slots__ = ("_store",)

    def __init__(self, config: dict[str, Any], store, budget=None, sandbox=None):
        super().__init__(config, budget, sandbox)
        self._store = store

    def _submit_decision(self, context_key: str, input: object):
        _check_context(context_key)
        with self._lock:
            self._store.check()
            d, budget_ticket, error = self._decide_locked(context_key, input)
            # d.context_key, not context_key: a program capsule may take it from the input.
            ticket = self._store.submit(RecordType.DECISION, DecisionRecord(
                self.uid, d.sequence, time.time_ns(), d.propensity,
                REFUSED_OPTION if d.refused else d.option_index, d.context_key, result=d.result_json,
            ).encode())
        if error is not None:
            raise error
        return d, ticket, budget_ticket

    def _submit_feedback(self, decision_id: str, reward: float, cost: int | None):
        claim = None
        with self._lock:
            self._store.check()
            if self._budget is None and cost is None:
                reward = self._apply_feedback(decision_id, reward)
            else:
                reward, claim = self._settle_and_apply(decision_id, reward, cost)
            # Applied: the id is well formed, and its first 16 hex digits are the sequence.
            # The cost is logged too: if the budget journal loses its settlement (the two
            # logs sync apart), recovery settles the hold from this record.
            ticket = self._store.submit(RecordType.FEEDBACK, FeedbackRecord(
                self.uid, int(decision_id[:16], 16), time.time_ns(), reward, cost,
            ).encode())
        return ticket, claim

    def decide(self, context_key: str = "", *, input: object = None) -> Decision:
        d, ticket, budget_ticket = self._submit_decision(context_key, input)
        self._store.wait(ticket)
        if budget_ticket is not None:
            self._budget.budget.wait(budget_ticket)
        return d

    def feedback(self, decision_id: str, reward: float, *, cost: int | None = None) -> None:
        ticket, claim = self._submit_feedback(decision_id, reward, cost)
        self._store.wait(ticket)
        if claim is not None:
            self._budget.finish(claim)

    async def decide_async(self, context_key: str = "", *, input: object = None) -> Decision:
        d, ticket, budget_ticket = self._submit_decision(context_key, input)
        await self._store.wait_async(ticket)
        if budget_ticket is not None:
            await self._budget.budget.wait_async(budget_ticket)
        return d

    async def feedback_async(self, decision_id: str, reward: float, *, cost: int | None = None) -> None:
        ticket, claim = self._submit_feedback(decision_id, reward, cost)
        await self._store.wait_async(ticket)
        if claim is not None:
            await self._budget.finish_async(claim)
