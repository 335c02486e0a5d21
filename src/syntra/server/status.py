"""Canonical gRPC status codes for everything the service refuses.

Servicers raise :class:`RpcFailure` (or let an engine error through); the RPC wrapper in
:mod:`syntra.server.rpc` turns either into ``context.abort`` with a message, and with
``google.rpc`` details in the trailing metadata where a client can act on them:
``BadRequest`` naming the field at fault, ``RetryInfo`` saying when to retry.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from syntra_core.budget import BudgetError, BudgetRefused, UnknownAccount

import lycan
from syntra.authoring import AuthoringError
from syntra.errors import (
    CapsuleExists,
    DuplicateFeedback,
    FailedPrecondition,
    InvalidArgument,
    InvalidConfig,
    InvalidContext,
    InvalidFeedback,
    InvalidName,
    InvalidReward,
    ProgramError,
    StorageError,
    SyntraError,
    UnknownCapsule,
    UnknownDecision,
)

DETAILS_KEY = "grpc-status-details-bin"


class RpcFailure(Exception):
    """Refuse the call with ``code`` and ``message``; ``field`` names the request field at
    fault, ``retry_after`` (seconds) tells the caller when to try again."""

    def __init__(self, code: grpc.StatusCode, message: str, *, field: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        """The ``google.rpc.Status`` with this failure's details, as trailing metadata."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.field is not None:
            detail = error_details_pb2.BadRequest()
            detail.field_violations.add(field=self.field, description=self.message)
            status.details.add().Pack(detail)
        if self.retry_after is not None:
            seconds = max(self.retry_after, 0.0)
            whole = math.floor(seconds)
            delay = duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return ((DETAILS_KEY, status.SerializeToString()),)


def invalid(field: str, message: str) -> RpcFailure:
    """INVALID_ARGUMENT naming ``field``."""
    return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}", field=field)


def not_found(message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.NOT_FOUND, message)


def failure_for(exc: BaseException, field: str | None = None) -> RpcFailure | None:
    """The failure an engine error maps to, or None when ``exc`` is not one we expect
    (a bug: the caller reports INTERNAL). ``field`` is the request field the value came
    from, when the error is about one."""
    code = grpc.StatusCode
    message = str(exc)
    if isinstance(exc, RpcFailure):
        return exc
    if isinstance(exc, UnknownCapsule | UnknownDecision | UnknownAccount):
        return RpcFailure(code.NOT_FOUND, message)
    if isinstance(exc, CapsuleExists):
        return RpcFailure(code.ALREADY_EXISTS, message)
    if isinstance(exc, DuplicateFeedback):
        # Expired feedback too: the decision has its outcome, so the caller must not retry.
        return RpcFailure(code.ALREADY_EXISTS, message)
    if isinstance(exc, FailedPrecondition):
        return RpcFailure(code.FAILED_PRECONDITION, message)
    if isinstance(exc, AuthoringError):
        where = exc.path or field or "yaml_spec"
        return RpcFailure(code.INVALID_ARGUMENT, message, field=where)
    if isinstance(exc, InvalidFeedback | InvalidArgument):   # they name their own field
        where = f"{field}.{exc.field}" if field and field.endswith("]") else exc.field
        return RpcFailure(code.INVALID_ARGUMENT, message, field=where)
    if isinstance(exc, InvalidName | InvalidConfig | InvalidContext | InvalidReward):
        return RpcFailure(code.INVALID_ARGUMENT, f"{field}: {message}" if field else message, field=field)
    if isinstance(exc, ProgramError):
        if isinstance(exc.cause, lycan.LimitExceeded):
            return RpcFailure(code.RESOURCE_EXHAUSTED, message)
        return RpcFailure(code.INVALID_ARGUMENT, message, field=field or "input")
    if isinstance(exc, lycan.LycanError):
        return RpcFailure(code.INVALID_ARGUMENT, message, field=field or "lyc")
    if isinstance(exc, BudgetRefused):
        return RpcFailure(code.RESOURCE_EXHAUSTED, message)
    if isinstance(exc, BudgetError):
        return RpcFailure(code.FAILED_PRECONDITION, message)
    if isinstance(exc, StorageError):
        return RpcFailure(code.UNAVAILABLE, f"the store cannot take writes: {message}")
    if isinstance(exc, SyntraError):
        return RpcFailure(code.FAILED_PRECONDITION, message)
    return None


def item_error(exc: BaseException, field: str):
    """A batch item's failure: (code number, message, field)."""
    failure = failure_for(exc, field) or RpcFailure(grpc.StatusCode.INTERNAL, "internal error")
    return failure.code.value[0], failure.message, failure.field or ""


__all__ = ["DETAILS_KEY", "RpcFailure", "failure_for", "invalid", "item_error", "not_found"]
