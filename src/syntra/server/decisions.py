"""``syntra.v1.DecisionService``: Decide, DecideBatch, DecideStream, Feedback, FeedbackBatch.

A decision is acknowledged only once its WAL record is synced: the servicer awaits the
group commit without blocking the event loop, so many calls in flight share one fsync.
A batch is checked item by item (a bad item gets its own error), then each capsule's items
go to the engine together and wait for one commit.
"""

from __future__ import annotations

from typing import Any

import grpc

from syntra.errors import InvalidContext, SyntraError
from syntra.server.coalesce import Coalescer
from syntra.server.convert import (
    capsule_name,
    decide_arguments,
    decision_message,
    feedback_arguments,
)
from syntra.server.rpc import ServiceState, streaming, unary
from syntra.server.status import RpcFailure, failure_for, invalid, item_error
from syntra.v1 import decision_pb2, decision_pb2_grpc

MAX_BATCH = 10_000
MAX_DECISION_ID = 64


class DecisionServicer(decision_pb2_grpc.DecisionServiceServicer):
    def __init__(self, state: ServiceState):
        self.state = state
        self._decides = Coalescer("decide_many_async")
        self._feedbacks = Coalescer("feedback_many_async")

    # --- deciding -------------------------------------------------------------------------

    @unary
    async def Decide(self, request, context):
        principal, capsule = self.state.capsule(context, "decide", request.capsule, "capsule")
        self.state.limit(principal)
        arguments = decide_arguments(request, "")
        try:
            if "program" in capsule.config:   # a program may run for its time limit: off the loop
                d = await self.state.run_blocking(capsule.decide, **arguments)
            else:
                d = await self._decides.submit(capsule, arguments)
        except InvalidContext as exc:
            raise failure_for(exc, "features" if "features" in arguments else "context_key") from None
        self._count(capsule, (d,))
        return decision_message(d, capsule.shadow)

    @unary
    async def DecideBatch(self, request, context):
        return await self._decide_batch(request, context)

    @streaming
    async def DecideStream(self, request_iterator, context):
        async for batch in request_iterator:
            yield await self._decide_batch(batch, context)

    async def _decide_batch(self, request, context) -> decision_pb2.DecideBatchResponse:
        results, groups = self._batch(context, "decide", request, decide_arguments, decision_pb2.DecideResult)
        for capsule, indices, arguments in groups.values():
            if "program" in capsule.config:
                decided = await self.state.run_blocking(capsule.decide_many, arguments)
            else:
                decided = await capsule.decide_many_async(arguments)
            shadow = capsule.shadow
            made = []
            for index, outcome in zip(indices, decided):
                if isinstance(outcome, BaseException):
                    results[index] = decision_pb2.DecideResult(error=_item_error(outcome, f"requests[{index}]"))
                else:
                    made.append(outcome)
                    results[index] = decision_pb2.DecideResult(decision=decision_message(outcome, shadow))
            self._count(capsule, made)
        return decision_pb2.DecideBatchResponse(results=results)

    def _batch(self, context, role: str, request, convert, result_type):
        """A batch's checks: the caller, the batch's size (spent from its rate), each item's
        capsule, permission and fields. See :func:`_group` for what it returns."""
        engine = self.state.live_engine()
        principal = self.state.principal(context)
        items = len(request.requests)
        if items > MAX_BATCH:
            raise invalid("requests", f"at most {MAX_BATCH} per batch, got {items}")
        self.state.limit(principal, max(items, 1))
        return _group(engine, principal, role, request, convert, result_type)

    def _count(self, capsule, decisions) -> None:
        metrics = self.state.metrics
        metrics.decided(capsule.name, len(decisions))
        for d in decisions:
            if d.refused:
                metrics.refused(capsule.name, d.refusal or "refused")

    # --- feedback -------------------------------------------------------------------------

    @unary
    async def Feedback(self, request, context):
        principal, capsule = self.state.capsule(context, "feedback", request.capsule, "capsule")
        self.state.limit(principal)
        arguments = feedback_arguments(request, "")
        arguments["decision_id"] = decision_id = _decision_id(request.decision_id, "decision_id")
        await self._feedbacks.submit(capsule, arguments)
        self.state.metrics.fed_back(capsule.name)
        return decision_pb2.FeedbackResponse(decision_id=decision_id)

    @unary
    async def FeedbackBatch(self, request, context):
        results, groups = self._batch(context, "feedback", request, _feedback_item, decision_pb2.FeedbackResult)
        for capsule, indices, arguments in groups.values():
            outcomes = await capsule.feedback_many_async(arguments)
            applied = 0
            for index, outcome, item in zip(indices, outcomes, arguments):
                if isinstance(outcome, BaseException):
                    results[index] = decision_pb2.FeedbackResult(error=_item_error(outcome, f"requests[{index}]"))
                else:
                    applied += 1
                    results[index] = decision_pb2.FeedbackResult(
                        feedback=decision_pb2.FeedbackResponse(decision_id=item["decision_id"]))
            self.state.metrics.fed_back(capsule.name, applied)
        return decision_pb2.FeedbackBatchResponse(results=results)


def _group(engine, principal, role: str, request, convert, result_type):
    """Check a batch's items: the results list (holding the errors of items that failed
    their checks) and, per capsule, (capsule, item indices, engine arguments)."""
    results: list[Any] = [None] * len(request.requests)
    groups: dict[str, tuple[Any, list[int], list[dict]]] = {}
    for index, item in enumerate(request.requests):
        field = f"requests[{index}]."
        try:
            name = item.capsule or request.capsule
            group = groups.get(name)
            if group is None:
                if name not in engine:
                    capsule_name(name, f"{field}capsule")
                if not principal.allows(role, name):
                    raise RpcFailure(grpc.StatusCode.PERMISSION_DENIED, f"{principal.name} may not {role} on {name}")
                group = groups[name] = (engine.capsule(name), [], [])
            group[2].append(convert(item, field))
            group[1].append(index)
        except (RpcFailure, SyntraError) as exc:
            results[index] = result_type(error=_item_error(exc, f"{field}capsule"))
    return results, groups


def _feedback_item(item, field: str) -> dict[str, Any]:
    arguments = feedback_arguments(item, field)
    arguments["decision_id"] = _decision_id(item.decision_id, f"{field}decision_id")
    return arguments


def _decision_id(value: str, field: str) -> str:
    if not value:
        raise invalid(field, "is required")
    if len(value) > MAX_DECISION_ID:
        raise invalid(field, f"is not a Syntra decision id (longer than {MAX_DECISION_ID} characters)")
    return value


def _item_error(exc: BaseException, field: str) -> decision_pb2.ItemError:
    code, message, where = item_error(exc, field)
    return decision_pb2.ItemError(code=code, message=message, field=where)
