"""The durable capsule: a :class:`~syntra.capsule.Capsule` whose every decision, feedback
and operator action is in the engine's WAL before it is acknowledged.

It is apart from :mod:`syntra.capsule` because it adds only the logging (records submitted
under the capsule's lock, group-commit waits after it), over the same deciding and
learning; the engine creates one for every capsule of an engine with a store.
"""

from __future__ import annotations

import time
from typing import Any

from syntra_core.learner import Decision

from syntra.capsule import (
    _ITEM_ERRORS,
    ACTION_FIELDS,
    DECIDE_FIELDS,
    FEEDBACK_FIELDS,
    Capsule,
    Learned,
    _bad_item,
    _batch,
)
from syntra.capsule_config import MAX_CONTEXT_KEY, _check_context, _plain_inputs
from syntra.errors import StorageError, SyntraError
from syntra.learning.rewards import RewardSpec
from syntra.store.records import (
    REFUSED_OPTION,
    FeedbackRecord,
    RecordType,
    encode_decision,
    encode_json,
)


def _inputs_json(features, metrics, refusal) -> str | None:
    """What a decision was made from beyond its key, as logged (None when nothing)."""
    inputs = {}
    if features is not None:
        inputs["features"] = dict(features)
    if metrics is not None:
        inputs["metrics"] = dict(metrics)
    if refusal is not None:
        inputs["refusal"] = refusal
    return encode_json(inputs).decode() if inputs else None


class DurableCapsule(Capsule):
    """A capsule whose decisions and feedback are in the WAL before they are acknowledged."""

    __slots__ = ("_store",)

    def __init__(self, config: dict[str, Any], store, budget=None, sandbox=None):
        super().__init__(config, budget, sandbox)
        self._store = store

    def _checked_inputs(self, context_key: str, input: object, features, metrics):
        """A decision's features and metrics as logged, once its inputs are checked."""
        _check_context(context_key)
        return _plain_inputs(self._features_in(input, features), "features"), _plain_inputs(metrics, "metrics")

    def _submit_decision(self, context_key: str, input: object, features, metrics):
        features, metrics = self._checked_inputs(context_key, input, features, metrics)
        with self._lock:
            self._store.check()
            d, ticket, budget_ticket, error = self._log_decision(context_key, input, features, metrics)
        if error is not None:
            raise error
        return d, ticket, budget_ticket

    def _log_decision(self, context_key: str, input: object, features, metrics):
        """Decide (inputs checked, the lock held) and submit the record: (decision, its
        ticket, the budget's ticket, the error to raise once it is logged)."""
        ts_ns = time.time_ns()
        d, budget_ticket, error = self._decide_locked(context_key, input, features, metrics, ts_ns)
        # d.context_key, not context_key: a program capsule may take it from the input.
        learning_refusal = d.refusal if d.refused and d.decision_id is not None else None
        ticket = self._store.submit(RecordType.DECISION, encode_decision(
            self.uid, d.sequence, ts_ns, d.propensity,
            REFUSED_OPTION if d.decision_id is None else d.option_index, d.context_key,
            d.result_json, _inputs_json(features, metrics, learning_refusal),
        ))
        return d, ticket, budget_ticket, error

    def _submit_decisions(self, requests):
        """Decide and submit every request under one hold of the lock: (results, the last
        WAL ticket, the last budget ticket). Waiting on the last covers them all."""
        results: list[Any] = []
        append = results.append
        ticket = budget_ticket = None
        requests = _batch(requests, "requests")
        with self._lock:
            self._store.check()
            # The learner alone decides (no program, budget or policy), and the lock holds it so.
            plain = self._plain
            learner, submit, uid = self._learner, self._store.submit, self.uid
            for request in requests:
                if plain and type(request) is dict and len(request) == 1:
                    # The common item, {"context_key": k}, in the fewest steps.
                    context_key = request.get("context_key")
                    if type(context_key) is str and len(context_key) <= MAX_CONTEXT_KEY and context_key.isascii():
                        ts_ns = time.time_ns()
                        d = learner.decide(context_key)
                        ticket = submit(RecordType.DECISION, encode_decision(
                            uid, d.sequence, ts_ns, d.propensity, d.option_index, context_key))
                        append(d)
                        continue
                if type(request) is not dict or not request.keys() <= DECIDE_FIELDS:
                    append(_bad_item(request, DECIDE_FIELDS))
                    continue
                try:
                    context_key, input = request.get("context_key", ""), request.get("input")
                    features, metrics = self._checked_inputs(context_key, input, request.get("features"),
                                                             request.get("metrics"))
                    d, ticket, held, error = self._log_decision(context_key, input, features, metrics)
                except _ITEM_ERRORS as exc:
                    if isinstance(exc, StorageError):
                        raise
                    append(exc)
                    continue
                if held is not None:
                    budget_ticket = held
                append(d if error is None else error)
        return results, ticket, budget_ticket

    def _submit_feedbacks(self, items):
        """Apply and submit every feedback under one hold of the lock: (results, the last
        WAL ticket, the budget claims to finish once it is durable)."""
        results: list[Any] = []
        append = results.append
        ticket = None
        claims = []
        items = _batch(items, "items")
        with self._lock:
            self._store.check()
            for item in items:
                if type(item) is not dict or "decision_id" not in item or not item.keys() <= FEEDBACK_FIELDS:
                    append(_bad_item(item, FEEDBACK_FIELDS, "decision_id"))
                    continue
                get = item.get
                try:
                    learned = self._learn(item["decision_id"], get("reward"), get("cost"), get("components"),
                                          get("signal"), get("taken_option"), get("taken_propensity"))
                except _ITEM_ERRORS as exc:
                    if isinstance(exc, StorageError):
                        raise
                    append(exc)
                    continue
                ticket = self._log_learned(learned)
                if learned.claim is not None:
                    claims.append(learned.claim)
                append(None)
        return results, ticket, claims

    def _log_learned(self, learned: Learned):
        """Submit the feedback record and the audit events of ``learned``; the last ticket."""
        detail = None if learned.detail is None else encode_json(learned.detail).decode()
        ts_ns = learned.ts_ns if learned.ts_ns is not None else time.time_ns()
        ticket = self._store.submit(RecordType.FEEDBACK, FeedbackRecord(
            self.uid, learned.sequence, ts_ns, learned.reward, learned.cost, detail,
        ).encode())
        for event in learned.events:
            ticket = self._store.submit(RecordType.AUDIT, encode_json(
                {"kind": "lifecycle", "capsule": self.name, "uid": self.uid, "details": event,
                 "ts_ns": time.time_ns()}))
        return ticket

    def _submit_feedback(self, decision_id, reward, cost, components, signal, taken_option, taken_propensity):
        with self._lock:
            self._store.check()
            learned = self._learn(decision_id, reward, cost, components, signal, taken_option, taken_propensity)
            # The cost is logged too: if the budget journal loses its settlement (the two
            # logs sync apart), recovery settles the hold from this record.
            ticket = self._log_learned(learned)
        return ticket, learned.claim

    def decide(self, context_key: str = "", *, input: object = None, features=None, metrics=None) -> Decision:
        d, ticket, budget_ticket = self._submit_decision(context_key, input, features, metrics)
        self._store.wait(ticket)
        if budget_ticket is not None:
            self._budget.budget.wait(budget_ticket)
        return d

    def feedback(self, decision_id: str, reward: float | None = None, *, cost: int | None = None,
                 components=None, signal=None, taken_option=None, taken_propensity=None) -> None:
        ticket, claim = self._submit_feedback(decision_id, reward, cost, components, signal, taken_option,
                                              taken_propensity)
        self._store.wait(ticket)
        if claim is not None:
            self._budget.finish(claim)

    def decide_many(self, requests: list[dict[str, Any]]) -> list[Decision | SyntraError]:
        results, ticket, budget_ticket = self._submit_decisions(requests)
        if ticket is not None:   # one group commit covers every record before it
            self._store.wait(ticket)
        if budget_ticket is not None:
            self._budget.budget.wait(budget_ticket)
        return results

    async def decide_many_async(self, requests: list[dict[str, Any]]) -> list[Decision | SyntraError]:
        results, ticket, budget_ticket = self._submit_decisions(requests)
        if ticket is not None:
            await self._store.wait_async(ticket)
        if budget_ticket is not None:
            await self._budget.budget.wait_async(budget_ticket)
        return results

    def feedback_many(self, items: list[dict[str, Any]]) -> list[None | SyntraError]:
        results, ticket, claims = self._submit_feedbacks(items)
        if ticket is not None:
            self._store.wait(ticket)
        for claim in claims:
            self._budget.finish(claim)
        return results

    async def feedback_many_async(self, items: list[dict[str, Any]]) -> list[None | SyntraError]:
        results, ticket, claims = self._submit_feedbacks(items)
        if ticket is not None:
            await self._store.wait_async(ticket)
        for claim in claims:
            await self._budget.finish_async(claim)
        return results

    async def decide_async(self, context_key: str = "", *, input: object = None, features=None,
                           metrics=None) -> Decision:
        d, ticket, budget_ticket = self._submit_decision(context_key, input, features, metrics)
        await self._store.wait_async(ticket)
        if budget_ticket is not None:
            await self._budget.budget.wait_async(budget_ticket)
        return d

    async def feedback_async(self, decision_id: str, reward: float | None = None, *, cost: int | None = None,
                             components=None, signal=None, taken_option=None, taken_propensity=None) -> None:
        ticket, claim = self._submit_feedback(decision_id, reward, cost, components, signal, taken_option,
                                              taken_propensity)
        await self._store.wait_async(ticket)
        if claim is not None:
            await self._budget.finish_async(claim)

    def _expire(self, sequence: int, now_ns: int) -> Learned:
        self._store.check()
        learned = super()._expire(sequence, now_ns)
        learned.claim = (learned.claim, self._log_learned(learned))
        return learned

    def _finish_expiry(self, learned: Learned) -> None:
        claim, ticket = learned.claim
        self._store.wait(ticket)
        if claim is not None:
            self._budget.finish(claim)

    def _change(self, action: str, argument):
        # Written ahead: an action the log does not have must not have happened.
        self._store.check()
        self._policy.check_action(action)
        body = {"uid": self.uid, "name": self.name, "action": action, "ts_ns": time.time_ns()}
        field = ACTION_FIELDS.get(action)
        if field is not None:
            body[field] = argument
        if action == "update_reward_spec":   # the audit trail says whether learning starts afresh
            body["statistics"] = self._reward_statistics(RewardSpec.parse(argument))
        self._store.record(RecordType.LEARNING, encode_json(body))
        event = super()._change(action, argument)
        for derived in event.get("events", ()):   # an update that ended warmup, say
            self._store.record(RecordType.AUDIT, encode_json(
                {"kind": "lifecycle", "capsule": self.name, "uid": self.uid, "details": derived,
                 "ts_ns": time.time_ns()}))
        return event
