"""Capsules: what one installed capsule is.

A :class:`Capsule` holds its options, reward spec and rule over a compiled
:class:`~syntra_core.learner.Learner`; a :class:`~syntra.durable_capsule.DurableCapsule` also
writes every decision and feedback to the engine's WAL before it returns. Both are created by
:class:`syntra.engine.Engine`, never directly. What callers pass in is checked by the helpers
in :mod:`syntra.capsule_config`, shared with the simulator.
"""

from __future__ import annotations

import base64
import bisect
import json
import math
import numbers
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from syntra_core.bandits import ArmTable, Rule
from syntra_core.budget import BudgetError
from syntra_core.learner import Decision, FeedbackStatus, Learner, with_assessment

from syntra.budget.gate import BudgetSpec, CapsuleBudget, learned_quality_bps
from syntra.capsule_config import (
    MAX_CONTEXT_KEY,
    _check_context,
    _check_reward,
    _check_shadow_learning,
    _direct,
    _merged,
    _plain_inputs,
    candidate_names,
    checked_learning,
    learning_of,
)
from syntra.errors import (
    DuplicateFeedback,
    FailedPrecondition,
    FeedbackExpired,
    InvalidArgument,
    InvalidConfig,
    InvalidContext,
    InvalidFeedback,
    InvalidReward,
    StorageError,
    SyntraError,
    UnknownCapsule,
    UnknownDecision,
)
from syntra.learning.config import LearningConfig
from syntra.learning.features import ContextEncoder
from syntra.learning.policy import FROZEN, Policy
from syntra.learning.rewards import RewardSpec
from syntra.program import ProgramSpec, run_decision
from syntra.store.state import encode_state

# Most contexts one call of Capsule.contexts returns.
MAX_CONTEXTS_PAGE = 10_000
# What a batch item may hold: Capsule.decide's and Capsule.feedback's keyword arguments.
DECIDE_FIELDS = frozenset({"context_key", "features", "metrics", "input"})
FEEDBACK_FIELDS = frozenset({"decision_id", "reward", "cost", "components", "signal", "taken_option",
                             "taken_propensity"})
# A batch item's own failure goes in its slot; a store that fails fails the whole call.
_ITEM_ERRORS = (SyntraError, BudgetError)
# Operator actions (LEARNING records) and the field of the record that carries their argument.
ACTION_FIELDS = {"update_learning": "learning", "update_reward_spec": "reward", "update_policy": "policy"}


def _fresh_table(table: ArmTable, reward: RewardSpec) -> ArmTable:
    """An empty table for ``reward`` with ``table``'s contexts in the same rows (the
    ledger's pending decisions name rows), each reset once more, as a drift reset does."""
    state = table.export_state()
    fresh = ArmTable(table.n_arms, reward.low, reward.high, binary=reward.type == "bernoulli")
    fresh.import_state({
        "contexts": state["contexts"], "stats": bytes(len(state["stats"])),
        "row_pulls": bytes(len(state["row_pulls"])),
        "epochs": (np.frombuffer(state["epochs"], dtype=np.int64) + 1).tobytes(),
    })
    return fresh


def _context_stats(table: ArmTable, key: str, n_options: int,
                   shadow: bool = False) -> tuple[list[int], list[float | None], int | None]:
    """Context ``key``'s plays and mean reward per option, and its leader (None before any
    reward): the most played option, what the rule has converged on (not the best raw
    mean, which an option played once can top by luck), ties going to the higher mean. A
    shadow capsule's plays are what the caller's policy took, which says nothing of what
    the capsule learned: its leader is the best mean, ties going to the more played."""
    pulls = table.pulls(key).tolist()
    sums = table.reward_sums(key).tolist()
    means = [sums[i] / pulls[i] if pulls[i] else None for i in range(n_options)]
    if shadow:
        leader = max(range(n_options), key=lambda i: (pulls[i] > 0, means[i] or 0.0, pulls[i]))
    else:
        leader = max(range(n_options), key=lambda i: (pulls[i], means[i] or 0.0))
    return pulls, means, leader if pulls[leader] else None


def _jsonable(value: Any) -> Any:
    """Exported state as plain JSON: bytes as base64 text, tuples as lists, and the
    non-finite floats JSON has no literal for as the strings "nan", "inf" and "-inf"."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _batch(items: object, what: str) -> list | tuple:
    if not isinstance(items, (list, tuple)):
        raise InvalidArgument(what, f"must be a list of dicts, got {type(items).__name__}")
    return items


def _bad_item(item: object, allowed: frozenset, required: str | None = None) -> InvalidArgument:
    """The error of a batch item that is not a dict of ``allowed`` fields (with ``required``)."""
    if type(item) is not dict:
        return InvalidArgument("item", f"must be a dict, got {type(item).__name__}")
    unknown = sorted(map(str, item.keys() - allowed))
    if unknown:
        return InvalidArgument(unknown[0], f"is not a field of this batch's items (fields: {sorted(allowed)})")
    return InvalidArgument(required, "is required")


class _Uninstalled:
    """Stands in for the learner of an uninstalled capsule: refuses work, keeps the report."""

    def __init__(self, name: str, learner: Learner):
        self.name = name
        self.table = learner.table
        self.next_sequence = learner.next_sequence
        self.pending = learner.pending

    def __getattr__(self, attribute):
        raise UnknownCapsule(self.name)

    def is_pending(self, decision_id):
        return False


class Learned:
    """What one feedback did, for a durable capsule to log: the decision's sequence, the
    reward applied, how it came about (``detail``), the lifecycle events it caused and the
    budget claim to finish once it is durable."""

    __slots__ = ("sequence", "reward", "detail", "events", "claim", "cost", "ts_ns")

    def __init__(self, sequence, reward, detail, events, claim, cost, ts_ns=None):
        self.sequence, self.reward, self.detail = sequence, reward, detail
        self.events, self.claim, self.cost = events, claim, cost
        self.ts_ns = ts_ns   # when it was applied, if that is part of the state (expiry)


class Capsule:
    """An installed capsule: its options, reward spec, learning policy and learned state.

    ``config`` is everything needed to rebuild it empty (it is what the WAL's install
    record and every checkpoint carry): uid, name, options, reward, algorithm, settings,
    learning, budget, program, shadow, install (how many earlier installs the name had),
    seed and tag. Operator actions that change it (a new learning config, reward spec or
    I/O policy) update it in place, so a checkpoint rebuilds what runs now.

    A capsule with a ``budget`` holds each decision's cost on a budget account (see
    :mod:`syntra.budget.gate`). Anything beyond a plain rule's decide and feedback is
    serialised by the capsule's lock.
    """

    __slots__ = ("name", "uid", "options", "reward", "algorithm", "settings", "config", "learning",
                 "encoder", "shadow", "_learner", "_lock", "_budget", "_program", "_plain", "_fast_feedback",
                 "_policy", "_direct", "_action_values", "_retired", "_wake", "_sandbox")

    def __init__(self, config: dict[str, Any], budget=None, sandbox=None):
        self.config = config
        self.name = config["name"]
        self.uid = config["uid"]
        self.options = tuple(config["options"])
        self.reward = RewardSpec.parse(config["reward"])
        self.algorithm = config["algorithm"]
        self.settings = dict(config["settings"])
        self.learning = learning_of(config)
        self.encoder = ContextEncoder.from_spec(self.learning["contextSpec"])
        # A shadow capsule only suggests: its feedback says what the caller took.
        self.shadow = config.get("shadow", False) is True
        if self.shadow:
            _check_shadow_learning(self.learning)
        reward = self.reward
        table = ArmTable(len(self.options), reward.low, reward.high, binary=reward.type == "bernoulli")
        names = candidate_names(self.learning, reward)
        self._policy = Policy(self.learning, self.options, reward, table, config["seed"], self.encoder, names,
                              tuned=config.get("learning") is not None, shadow=self.shadow)
        first = self._policy.candidates[0]
        rule = first.rule if not first.linear else Rule(table)
        self._learner = Learner(self.name, self.options, rule, config["seed"], config["tag"])
        self._direct = _direct(self.learning, names)
        self._lock = threading.Lock()
        spec = BudgetSpec.parse(config.get("budget"), self.options)
        self._budget = None if spec is None else CapsuleBudget(spec, budget, self.uid, self.options)
        program = config.get("program")
        self._sandbox = sandbox
        self._program = None if program is None else ProgramSpec.parse(program, self.options, sandbox)
        actions = self.learning["actions"]
        self._retired = False
        self._wake = None   # the engine's hook: a reward wait may start with an update
        self._action_values = None
        if actions["kind"] == "continuous":
            self._action_values = LearningConfig.continuous_options(actions["range"], actions["buckets"])[1]
        self._replan()

    def _replan(self) -> None:
        # decide's and feedback's one-call fast path: the learner alone, training.
        # Not while the policy awaits answers of its own: the fast path would not tell it.
        self._plain = (self._direct and self._budget is None and self._program is None
                       and self._policy.lifecycle != FROZEN and not self._policy.pending)
        # feedback's one-call path, the learner's own (bound once: it is the hottest call). A
        # shadow capsule's feedback credits the option taken: never this path.
        self._fast_feedback = self._learner.try_feedback if self._plain and not self.shadow else None

    # --- deciding -----------------------------------------------------------------------

    def decide(self, context_key: str = "", *, input: object = None, features: Mapping[str, Any] | None = None,
               metrics: Mapping[str, Any] | None = None) -> Decision:
        """Choose an option for ``context_key`` (a string naming the context).

        A capsule whose ``contextSpec`` is of kind ``features`` decides from
        ``features={name: value}``; one whose regimes monitor a metric takes it in
        ``metrics``. A budgeted capsule returns a decision with ``refused`` set when no
        option's cost fits its account; a capsule with refusal on refuses (keeping the id,
        so the outcome can still be reported) when it cannot stand behind its choice. A
        program capsule runs its program on ``input`` (JSON-like data).
        """
        if type(context_key) is not str or len(context_key) > MAX_CONTEXT_KEY or not context_key.isascii():
            _check_context(context_key)
        if self._plain and input is None and features is None and metrics is None:
            return self._learner.decide(context_key)
        features, metrics = _plain_inputs(features, "features"), _plain_inputs(metrics, "metrics")
        with self._lock:
            d, _, error = self._decide_locked(context_key, input, features, metrics, time.time_ns())
        if error is not None:
            raise error
        return d

    async def decide_async(self, context_key: str = "", *, input: object = None,
                           features: Mapping[str, Any] | None = None,
                           metrics: Mapping[str, Any] | None = None) -> Decision:
        """:meth:`decide` for asyncio callers: a durable capsule awaits its sync without
        blocking the event loop."""
        return self.decide(context_key, input=input, features=features, metrics=metrics)

    def decide_many(self, requests: list[dict[str, Any]]) -> list[Decision | SyntraError]:
        """Decide for each request, a dict of :meth:`decide`'s arguments (any of
        ``context_key``, ``features``, ``metrics``, ``input``), in order. Each item succeeds
        or fails on its own: a bad one gets its exception in its slot (the others are
        unaffected). A failing store fails the whole call
        (:class:`~syntra.errors.StorageError`)."""
        results: list[Any] = []
        append = results.append
        decide = self.decide
        for request in _batch(requests, "requests"):
            if type(request) is not dict or not request.keys() <= DECIDE_FIELDS:
                append(_bad_item(request, DECIDE_FIELDS))
                continue
            try:
                append(decide(**request))
            except _ITEM_ERRORS as exc:
                if isinstance(exc, StorageError):
                    raise
                append(exc)
        return results

    async def decide_many_async(self, requests: list[dict[str, Any]]) -> list[Decision | SyntraError]:
        """:meth:`decide_many` for asyncio callers: a durable capsule awaits its one sync
        without blocking the event loop."""
        return self.decide_many(requests)

    def feedback_many(self, items: list[dict[str, Any]]) -> list[None | SyntraError]:
        """Report each outcome in ``items``, dicts of :meth:`feedback`'s arguments with its
        ``decision_id``, in order: None in the slot of each one applied, the exception of
        each one refused (which changed nothing; the others are unaffected). A failing
        store fails the whole call."""
        results: list[Any] = []
        append = results.append
        feedback = self.feedback
        for item in _batch(items, "items"):
            if type(item) is not dict or "decision_id" not in item or not item.keys() <= FEEDBACK_FIELDS:
                append(_bad_item(item, FEEDBACK_FIELDS, "decision_id"))
                continue
            try:
                feedback(**item)
            except _ITEM_ERRORS as exc:
                if isinstance(exc, StorageError):
                    raise
                append(exc)
            else:
                append(None)
        return results

    async def feedback_many_async(self, items: list[dict[str, Any]]) -> list[None | SyntraError]:
        """:meth:`feedback_many` for asyncio callers."""
        return self.feedback_many(items)

    def _decide_locked(self, context_key: str, input: object, features=None, metrics=None, ts_ns: int = 0):
        """Decide, running the program if there is one (the caller holds the lock):
        (decision, budget ticket, error to raise once the decision is logged)."""
        if self._program is not None:
            if self._program.context_key is not None and not context_key:
                context_key = self._program.context_of(input)
                _check_context(context_key)
            features = self._features_in(input, features)
            if not self._direct:   # bad features fail here, before the program runs
                self._policy.encode(context_key, features, metrics)
            return run_decision(self, self._program, context_key, input,
                                features=features, metrics=metrics, ts_ns=ts_ns)
        if input is not None:
            raise InvalidContext(f"capsule {self.name!r} has no program, so its decisions take no input")
        return self._decide_in_program(context_key, features, metrics, ts_ns)

    def _features_in(self, input: object, features):
        """A program capsule's features: as given, or else taken from its input by name."""
        if features is None and self._program is not None and self.encoder.kind == "features" \
                and isinstance(input, Mapping):
            return {name: input[name] for name in self.encoder.feature_names if name in input}
        return features

    def _decide_in_program(self, context_key: str, features=None, metrics=None, ts_ns: int = 0):
        """The decision itself, at a program's choice node or for a plain capsule."""
        d = self._choose(context_key, features, metrics, ts_ns or time.time_ns())
        if self._budget is None or d.refused:
            return d, None, None
        reward = self.reward
        try:
            floor = None if self._direct else self._policy.floor_bps
            d, ticket = self._budget.hold(
                self._learner, d,
                lambda: learned_quality_bps(self._learner.table, d.context_key, reward.low, reward.high),
                floor or 0)
        except Exception as error:
            self._budget.refusals += 1
            self._policy.forget(d.sequence)
            return self._learner.refuse_last(d, "budget: unavailable"), None, error
        self._after_budget(d)
        return d, ticket, None

    def _choose(self, context_key: str, features, metrics, ts_ns: int) -> Decision:
        """The learning policy's decision, recorded in the ledger."""
        if self._direct:
            if features is not None or metrics is not None:
                raise InvalidContext(f"capsule {self.name!r} decides from a context key alone")
            return self._learner.decide(context_key)
        policy = self._policy
        key, x, regime, metric = policy.encode(context_key, features, metrics)
        _check_context(key)
        choice = policy.choose(self._learner.next_sequence, key, x, regime, metric, ts_ns)
        d = self._learner.decide_with(key, choice.arm, choice.propensity)
        value = None if self._action_values is None else self._action_values[choice.arm]
        if choice.refusal is not None or choice.confidence is not None or value is not None:
            d = with_assessment(d, choice.refusal, choice.confidence, value)
        return d

    def _after_budget(self, d: Decision) -> None:
        """Tell the policy what the budget did to decision ``d``."""
        if d.refused:
            self._policy.forget(d.sequence)
        elif d.substituted_for and not self._direct:
            self._policy.substituted(d.sequence, d.option_index)

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
        self._policy.forget(d.sequence)
        kind = type(cause).__name__ if isinstance(cause, Exception) else "error"
        return self._learner.refuse_last(d, f"program: {kind}"), undo_error

    # --- feedback -----------------------------------------------------------------------

    def feedback(self, decision_id: str, reward: float | None = None, *, cost: int | None = None,
                 components: Mapping[str, Any] | None = None, signal: str | None = None,
                 taken_option: str | None = None, taken_propensity: float | None = None) -> None:
        """Report the outcome of a decision. Applied exactly once; errors change nothing.

        Give the ``reward``, or its ``components`` when the reward spec combines them.
        ``signal`` names one of several signals (``feedback.signals``) that fuse into the
        reward once every required one has arrived. ``cost`` (budgeted capsules only) is
        what the decision actually cost in microcents: it is committed against the hold;
        without it the hold is released. Feedback on a refused decision, or to a frozen
        capsule, is recorded but does not train.

        A shadow capsule's feedback must name ``taken_option``, the option the caller's own
        policy took, and ``taken_propensity``, the probability in (0, 1] it had of taking
        it: the reward trains that option, and the meta-bandit weighs its candidates by
        that propensity, so learning stays unbiased whatever the suggestion was. Other
        capsules take neither (:class:`~syntra.errors.InvalidFeedback`).
        """
        fast = self._fast_feedback
        if (fast is not None and cost is None and components is None and signal is None
                and taken_option is None and taken_propensity is None):
            # The common case in one call: a refused update changes nothing, so the slow
            # path may ask the learner again to find the right error.
            if type(decision_id) is str and type(reward) is float and fast(decision_id, reward):
                return
        with self._lock:
            learned = self._learn(decision_id, reward, cost, components, signal, taken_option, taken_propensity)
        if learned.claim is not None:
            self._budget.finish(learned.claim)

    async def feedback_async(self, decision_id: str, reward: float | None = None, *, cost: int | None = None,
                             components: Mapping[str, Any] | None = None, signal: str | None = None,
                             taken_option: str | None = None, taken_propensity: float | None = None) -> None:
        """:meth:`feedback` for asyncio callers."""
        self.feedback(decision_id, reward, cost=cost, components=components, signal=signal,
                      taken_option=taken_option, taken_propensity=taken_propensity)

    def _learn(self, decision_id: str, reward, cost, components, signal, taken_option=None,
               taken_propensity=None) -> Learned:
        """Check and apply one feedback (the caller holds the lock). Everything that can
        refuse is checked before anything changes."""
        if type(decision_id) is not str:
            raise UnknownDecision(self.name, decision_id, "decision ids are strings")
        if cost is not None and self._budget is None:
            raise InvalidReward(f"capsule {self.name!r} has no budget, so its feedback takes no cost")
        if cost is not None and (type(cost) is not int or not 0 <= cost < 2**63):
            raise InvalidReward(f"cost must be integer microcents in [0, 2**63), got {cost!r}")
        detail = None
        taken = None
        if self.shadow or taken_option is not None or taken_propensity is not None:
            taken = self._check_taken(taken_option, taken_propensity)
        if components is not None:
            if reward is not None:
                raise InvalidReward("pass reward= or components=, not both")
            reward = self.reward.combine(components)
            detail = {"components": {str(k): float(v) for k, v in components.items()}}
        elif reward is None:
            raise InvalidReward("feedback needs reward= (or components= when the reward spec has them)")
        reward = reward if type(reward) is float else _check_reward(reward)
        sequence = self._sequence_of(decision_id)
        status = self._learner.check_feedback(decision_id, reward)
        if status:
            self._raise_for(status, decision_id, reward)
        if signal is not None:   # a shadow capsule fuses none: this refuses it
            # The log keeps the signal's own value; replay fuses again and checks the result.
            fused = self._signal(decision_id, sequence, signal, reward, cost)
            detail = {"signal": signal, "fused": fused}
            if fused is None:
                return Learned(sequence, reward, detail, [], None, None)
            learned = self._apply(sequence, fused, cost, detail)
            learned.reward = reward
            return learned
        if taken is not None:   # logged, so replay credits the same option
            detail = {**(detail or {}), "taken_option": self.options[taken[0]], "taken_propensity": taken[1]}
        return self._apply(sequence, reward, cost, detail, taken)

    def _apply(self, sequence: int, reward: float, cost: int | None, detail: dict | None,
               taken: tuple[int, float] | None = None) -> Learned:
        """Settle decision ``sequence`` (pending; ``reward`` checked) and learn from it."""
        claim = None
        if self._budget is not None:
            claim = self._budget.settle(self._learner, sequence, cost)
        trains = self._policy.trains(sequence)
        if taken is None and not self.shadow:   # the common case, without a call
            status = self._learner.settle_at(sequence, reward, trains)
        else:
            trains, status = self._settle(sequence, reward, taken, trains)
        if status:   # checked already: only a bug gets here
            raise AssertionError(f"feedback for sequence {sequence} failed after its checks: {status}")
        events = self._policy.learn(sequence, reward, trains, taken)
        if self._direct and not self._plain and not self._policy.pending:
            self._replan()
        return Learned(sequence, reward, detail, events, claim, cost)

    def _settle(self, sequence: int, reward: float, taken: tuple[int, float] | None,
                trains: bool) -> tuple[bool, int]:
        """Complete decision ``sequence`` in the ledger, training (if ``trains``) the option
        taken: the one decided, unless ``taken`` says otherwise. (Whether it trained, status.)"""
        if taken is not None:
            return trains, self._learner.settle_taken(sequence, taken[0], taken[1], reward, trains)
        if self.shadow:   # a default reward after the wait: nobody said what was taken
            trains = False
        return trains, self._learner.settle_at(sequence, reward, trains)

    def _check_taken(self, option: object, propensity: object) -> tuple[int, float]:
        """A shadow capsule's taken option and propensity as (arm, probability); refuses
        them on any other capsule, and anything missing, unknown or out of range."""
        if not self.shadow:
            field = "taken_option" if option is not None else "taken_propensity"
            raise InvalidFeedback(field, f"capsule {self.name!r} is not in shadow mode: the option it decided is"
                                         f" the option taken")
        if option is None:
            raise InvalidFeedback("taken_option", f"capsule {self.name!r} is in shadow mode: feedback must name the"
                                                  f" option the caller took")
        if propensity is None:
            raise InvalidFeedback("taken_propensity", f"capsule {self.name!r} is in shadow mode: feedback must give"
                                                      f" the probability the caller's policy had of taking"
                                                      f" {option!r}")
        if type(option) is not str or option not in self.options:
            shown = list(self.options[:8]) + (["..."] if len(self.options) > 8 else [])
            raise InvalidFeedback("taken_option", f"{str(option)[:140]!r} is not an option of capsule"
                                                  f" {self.name!r} (options: {shown})")
        number = math.nan
        if isinstance(propensity, numbers.Real) and not isinstance(propensity, bool):
            try:
                number = float(propensity)
            except OverflowError:
                pass
        if not 0.0 < number <= 1.0:   # False for NaN
            raise InvalidFeedback("taken_propensity", f"must be a finite number in (0, 1], got {propensity!r:.40}")
        return self.options.index(option), number

    def _sequence_of(self, decision_id: str) -> int:
        try:
            sequence = self._learner.sequence_of(decision_id)
        except ValueError:
            raise UnknownDecision(self.name, decision_id, "not a Syntra decision id") from None
        except KeyError:
            raise UnknownDecision(self.name, decision_id) from None
        expired = self._policy.expired.get(sequence)
        if expired is not None:
            raise FeedbackExpired(self.name, decision_id, expired)
        return sequence

    def _signal(self, decision_id: str, sequence: int, name: object, value: float, cost) -> float | None:
        config = self.learning["feedback"]
        signals = config["signals"]
        if not signals:
            raise InvalidReward(f"capsule {self.name!r} fuses no signals (feedback.signals is not set)")
        if not isinstance(name, str) or name not in signals:
            raise InvalidReward(f"unknown signal {name!r}; this capsule fuses {sorted(signals)}")
        entry = self._policy.pending.get(sequence)
        if entry is None:
            raise InvalidReward(f"decision {decision_id!r} was made before this capsule fused signals:"
                                f" report its reward without signal=")
        if name in entry.signals:
            raise DuplicateFeedback(self.name, f"{decision_id} (signal {name!r})")
        if cost is not None and self.reward.fuse_signals(signals, config["fusion"],
                                                         {**entry.signals, name: value}) is None:
            raise InvalidReward("a cost goes with the signal that completes the reward, and this one does not")
        return self._policy.signal(sequence, name, value)

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

    # --- waiting for rewards --------------------------------------------------------------

    @property
    def reward_wait_seconds(self) -> float | None:
        """How long a decision waits for its reward before it gets the default (or None)."""
        return self.learning["feedback"]["reward_wait_seconds"]

    def expire_overdue(self, now_ns: int | None = None) -> int:
        """Give every decision whose reward wait has run out its default reward (logged,
        once each). Returns how many. The engine calls this periodically."""
        if now_ns is None:
            now_ns = time.time_ns()
        elif type(now_ns) is not int or not 0 <= now_ns < 2**63:
            raise InvalidConfig(f"now_ns must be integer nanoseconds in [0, 2**63), got {now_ns!r}")
        done = 0
        while True:
            with self._lock:
                overdue = self._policy.overdue(now_ns, 256)
                learned = [self._expire(sequence, now_ns) for sequence in overdue]
            for item in learned:
                self._finish_expiry(item)
            done += len(learned)
            if len(overdue) < 256:
                return done

    def _expire(self, sequence: int, now_ns: int) -> Learned:
        learned = self._apply(sequence, float(self.learning["feedback"]["default_reward"]), None, {"default": True})
        self._policy.expire(sequence, now_ns)
        learned.ts_ns = now_ns   # logged, so replay records the same expiry time
        return learned

    def _finish_expiry(self, learned: Learned) -> None:
        if learned.claim is not None:
            self._budget.finish(learned.claim)

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def lifecycle(self) -> str:
        """``warmup``, ``active`` or ``frozen``."""
        return self._policy.lifecycle

    def freeze(self) -> None:
        """Serve from the current state and learn nothing until :meth:`unfreeze`; every
        decision and feedback is still logged. Audited."""
        with self._lock:
            self._check_installed()
            self._change("freeze", None)

    def unfreeze(self) -> None:
        """Resume learning where :meth:`freeze` stopped it. Audited."""
        with self._lock:
            self._check_installed()
            self._change("unfreeze", None)

    def update_learning(self, learning: Mapping[str, Any]) -> None:
        """Replace the learning config atomically, keeping what was learned wherever the
        new config still fits it. Audited.

        A partial config changes what it names: each section it gives (``meta``,
        ``drift``, ...) merges over the current one, field by field, and every other field
        keeps its current value (``settings`` start afresh when ``algorithm`` changes).

        ``contextSpec``, ``actions`` and ``optionFeatures`` shape what has been learned and
        cannot change; install a new capsule for that.
        """
        with self._lock:
            self._check_installed()
            config = self._checked_learning(learning)   # merged over the config it replaces
            self._change("update_learning", config)
        if self._wake is not None:
            self._wake()

    def _check_installed(self) -> None:
        if self._retired:   # a stale reference: its actions would name a capsule replay does not know
            raise UnknownCapsule(self.name)

    def _checked_learning(self, learning: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(learning, Mapping):
            raise InvalidConfig(f"learning config must be a mapping, got {type(learning).__name__}")
        config = checked_learning(LearningConfig.parse(_merged(self.learning, learning)), self.options, self.reward)
        for fixed in ("contextSpec", "actions", "optionFeatures"):
            if config[fixed] != self.learning[fixed]:
                raise InvalidConfig(f"learning.json: {fixed} cannot change on an installed capsule"
                                    f" (it shapes what was learned); install a new capsule")
        if self.shadow:
            _check_shadow_learning(config)
        names = candidate_names(config, self.reward)
        Policy(config, self.options, self.reward, ArmTable(len(self.options), self.reward.low, self.reward.high),
               self.config["seed"], self.encoder, names)   # every setting checked before anything changes
        return config

    def update_reward_spec(self, spec: Mapping[str, Any]) -> None:
        """Replace the reward spec atomically. Audited.

        When the new spec has the reward's type and range, what was learned stays and the
        new spec (its components and their weights) applies from the next feedback on.
        Otherwise the statistics start afresh: the policy returns to warmup (or straight on,
        without one) as a capsule-scope drift would. The audit event says which
        (``statistics``: ``kept`` or ``reset``).

        Decisions still awaiting their reward keep awaiting it, and their feedback is
        checked against the new spec (components, range) when it comes.
        """
        with self._lock:
            self._check_installed()
            reward = self._checked_reward(spec)
            self._change("update_reward_spec", reward.to_dict())

    def update_policy(self, policy: Mapping[str, Any] | None) -> None:
        """Replace a program capsule's I/O policy (what its capabilities may reach; None
        refuses every one), checked exactly as an install checks it. Audited.
        :class:`~syntra.errors.FailedPrecondition` for a capsule without a program."""
        with self._lock:
            self._check_installed()
            if self._program is None:
                raise FailedPrecondition(f"capsule {self.name!r} runs no program, so it has no I/O policy")
            if policy is not None:
                if not isinstance(policy, Mapping):
                    raise InvalidConfig(f"policy must be a mapping, got {type(policy).__name__}")
                try:   # a copy as JSON: what is logged is what applies
                    policy = json.loads(json.dumps(policy, allow_nan=False))
                except (TypeError, ValueError) as exc:
                    raise InvalidConfig(f"policy must be JSON data: {exc}") from None
            self._program.with_policy(policy, self._sandbox)   # checked before anything is logged
            self._change("update_policy", policy)

    def _checked_reward(self, spec: Mapping[str, Any]) -> RewardSpec:
        if not isinstance(spec, Mapping):
            raise InvalidConfig(f"reward spec must be a mapping, got {type(spec).__name__}")
        reward = RewardSpec.parse(spec)
        # The learning config's default reward and signal fusion must suit the new spec.
        checked_learning(LearningConfig.parse(self.learning), self.options, reward)
        names = candidate_names(self.learning, reward)
        Policy(self.learning, self.options, reward, ArmTable(len(self.options), reward.low, reward.high),
               self.config["seed"], self.encoder, names)   # every setting checked before anything changes
        return reward

    def _reward_statistics(self, reward: RewardSpec) -> str:
        """``kept`` if what was learned still fits ``reward`` (same type and range), else ``reset``."""
        same = (reward.kind, reward.low, reward.high) == (self.reward.kind, self.reward.low, self.reward.high)
        return "kept" if same else "reset"

    def _change(self, action: str, argument: Any) -> dict[str, Any]:
        """Apply an operator action (the caller holds the lock); returns its audit event.
        ``argument`` is the learning config, reward spec or policy the action installs."""
        self._policy.check_action(action)
        if action == "freeze":
            event = self._policy.freeze()
        elif action == "unfreeze":
            event = self._policy.unfreeze()
        elif action == "update_learning":
            event = self._relearn(argument)
        elif action == "update_reward_spec":
            event = self._rereward(RewardSpec.parse(argument))
        elif action == "update_policy":
            event = self._repolicy(argument)
        else:
            raise ValueError(f"unknown action {action!r}")
        self._replan()
        return event

    def _replay_change(self, body: Mapping[str, Any]) -> None:
        """Apply a logged operator action (a LEARNING record's ``body``) as it was applied live."""
        action = body["action"]
        field = ACTION_FIELDS.get(action)
        argument = body[field] if field is not None else None
        if action == "update_reward_spec":
            statistics = self._reward_statistics(RewardSpec.parse(argument))
            if statistics != body["statistics"]:
                raise ValueError(f"the reward spec update {statistics} the statistics,"
                                 f" the log says {body['statistics']}")
        Capsule._change(self, action, argument)   # logged already

    def _rereward(self, reward: RewardSpec) -> dict[str, Any]:
        statistics = self._reward_statistics(reward)
        events: list[dict[str, Any]] = []
        if statistics == "kept":
            self._policy.reward = reward
        else:
            old = self._policy
            table = _fresh_table(self._learner.table, reward)
            names = candidate_names(self.learning, reward)
            policy = Policy(self.learning, self.options, reward, table, self.config["seed"], self.encoder, names,
                            tuned=self.config.get("learning") is not None, shadow=self.shadow)
            events = policy.restart_after_reward(old)
            first = policy.candidates[0]
            self._learner.replace_table(first.rule if not first.linear else Rule(table))
            self._policy = policy
            self._direct = _direct(self.learning, names)
        self.reward = reward
        self.config["reward"] = reward.to_dict()   # what checkpoints rebuild the capsule from
        return {"event": "update_reward_spec", "reward": reward.to_dict(), "statistics": statistics,
                "events": events}

    def _repolicy(self, policy: Mapping[str, Any] | None) -> dict[str, Any]:
        self._program = self._program.with_policy(policy, self._sandbox)
        entry = {key: value for key, value in self.config["program"].items() if key != "policy"}
        if policy is not None:
            entry["policy"] = policy
        self.config["program"] = entry
        return {"event": "update_policy", "policy": policy}

    def _relearn(self, config: dict[str, Any]) -> dict[str, Any]:
        names = candidate_names(config, self.reward)
        old = self._policy
        policy = Policy(config, self.options, self.reward, old.table, self.config["seed"], self.encoder, names,
                        shadow=self.shadow)
        events = policy.carry_over(old)
        first = policy.candidates[0]
        self._learner.replace_rule(first.rule if not first.linear else Rule(old.table))
        self._policy = policy
        self._direct = _direct(config, names)
        self.learning = config
        # The config checkpoints rebuild the capsule from (shared with the engine's record
        # of it): it must say what runs now.
        self.config["learning"] = config
        return {"event": "update_learning", "learning": config, "events": events}

    # --- replay -------------------------------------------------------------------------------

    def _replay_decision(self, entry) -> tuple[Decision, str | None]:
        """Decide again as logged decision ``entry`` was decided: (decision, the learning
        refusal the log records)."""
        inputs = json.loads(entry.inputs) if entry.inputs else {}
        return self._choose(entry.context_key, inputs.get("features"), inputs.get("metrics"), entry.ts_ns), \
            inputs.get("refusal")

    def _replay_feedback(self, entry) -> None:
        """Apply logged feedback ``entry`` as it was applied live (the budget is reconciled
        after replay, not here). Raises ValueError if it does not apply the same way."""
        detail = json.loads(entry.detail) if entry.detail else {}
        sequence, reward = entry.sequence, entry.reward
        if "signal" in detail:
            fused = self._policy.signal(sequence, detail["signal"], reward)
            if fused != detail["fused"]:
                raise ValueError(f"signals fused to {fused}, the log says {detail['fused']}")
            if fused is None:
                return
            reward = fused
        taken = None
        if "taken_option" in detail:
            taken = (self.options.index(detail["taken_option"]), float(detail["taken_propensity"]))
        trains, status = self._settle(sequence, reward, taken, self._policy.trains(sequence))
        if status:
            raise ValueError(f"feedback status {status}")
        self._policy.learn(sequence, reward, trains, taken)
        if detail.get("default"):
            self._policy.expire(sequence, entry.ts_ns)

    # --- reporting -------------------------------------------------------------------------

    def _retire(self) -> None:
        # A stale reference to an uninstalled capsule must not decide or learn (a durable
        # one would log records for a capsule that replay no longer knows).
        self._learner = _Uninstalled(self.name, self._learner)
        self._retired = True
        self._plain, self._fast_feedback = False, None
        self._policy.pending.clear()
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

    def candidates(self) -> dict[str, Any]:
        """The meta-bandit's candidate rules: trials, estimated value and share of each (the
        ``candidates`` of :meth:`report`, without walking every context)."""
        with self._lock:
            return self._policy.meta.report()

    def report(self) -> dict[str, Any]:
        """What the capsule has learned: per context, plays, mean reward and the leader
        (``best_option``: the most played option, ties going to the higher mean; for a
        shadow capsule, whose plays are the caller's, the best mean reward); the
        learning policy's lifecycle, candidates (trials, estimated value, share), drift
        events and refusals."""
        with self._lock:
            return self._report()

    def _report(self) -> dict[str, Any]:
        table = self._learner.table
        options = self.options
        contexts = {}
        for key in table.contexts:
            pulls, means, leader = _context_stats(table, key, len(options), self.shadow)
            contexts[key] = {
                "pulls": dict(zip(options, pulls)),
                "mean_reward": dict(zip(options, means)),
                "best_option": None if leader is None else options[leader],
            }
        report = {
            "name": self.name,
            "algorithm": self.learning["algorithm"],
            "reward": self.reward.to_dict(),
            "decisions": self.decisions,
            "pending": self.pending,
            "contexts": contexts,
            **self._policy.report(),
        }
        if self._budget is not None:
            report["budget"] = self._budget.report()
        return report

    def contexts(self, start_after: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The contexts this capsule has learned in, sorted by key, from the first after
        ``start_after`` (None: from the start), at most ``limit`` (1 to
        :data:`MAX_CONTEXTS_PAGE`). Each is ``{"key", "options": [{"option", "pulls",
        "mean_reward"}], "best_option"}`` with the options in order, as :meth:`report`
        counts them (``mean_reward`` None before the option's first reward)."""
        if start_after is not None and type(start_after) is not str:
            raise InvalidArgument("start_after", f"must be a context key (a string) or None, got"
                                                 f" {type(start_after).__name__}")
        if type(limit) is not int or not 1 <= limit <= MAX_CONTEXTS_PAGE:
            raise InvalidArgument("limit", f"must be an integer in [1, {MAX_CONTEXTS_PAGE}], got {limit!r}")
        options = self.options
        with self._lock:
            table = self._learner.table
            keys = sorted(table.contexts)
            start = 0 if start_after is None else bisect.bisect_right(keys, start_after)
            page = []
            for key in keys[start:start + limit]:
                pulls, means, leader = _context_stats(table, key, len(options), self.shadow)
                page.append({
                    "key": key,
                    "options": [{"option": option, "pulls": count, "mean_reward": mean}
                                for option, count, mean in zip(options, pulls, means)],
                    "best_option": None if leader is None else options[leader],
                })
            return page

    def memory(self) -> dict[str, Any]:
        """The learned memory: ``contexts`` (how many), ``pending`` (decisions awaiting
        feedback), ``state_bytes`` (the size of the learned state in a checkpoint's
        encoding) and ``state``, that state as JSON (what a checkpoint keeps for this
        capsule beside its config: ``state``, the ledger and per-arm statistics;
        ``policy``, the learning policy's; ``budget``, its counters; bytes as base64)."""
        with self._lock:
            state = self._checkpoint_state()
            return {"contexts": len(self._learner.table), "pending": self.pending,
                    "state_bytes": len(encode_state(state)), "state": _jsonable(state)}

    def _checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of this capsule beside its config (the caller holds the lock)."""
        state = {"state": self._learner.export_state(), "policy": self._policy.export_state()}
        if self._budget is not None:
            state["budget"] = self._budget.counters()
        return state

    def __repr__(self) -> str:
        return f"Capsule({self.name!r}, options={list(self.options)!r}, algorithm={self.learning['algorithm']!r})"

