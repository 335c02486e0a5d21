"""Failed calls as :class:`SyntraRpcError`: the status code, message and the server's
``google.rpc`` details (``BadRequest`` naming the field at fault, ``RetryInfo``)."""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from syntra.errors import SyntraError

_CODES = {code.value[0]: code for code in grpc.StatusCode}


class SyntraRpcError(SyntraError):
    """A call the service refused or could not answer.

    ``code`` is the ``grpc.StatusCode``; ``field`` the request field at fault, when the
    server named one (``reward``, ``requests[3].context_key``); ``retry_after`` the seconds
    the server asked the caller to wait before retrying (rate limits).
    """

    def __init__(self, code: grpc.StatusCode, message: str, field: str | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (f"SyntraRpcError({self.code.name}, {self.message!r}, field={self.field!r}, "
                f"retry_after={self.retry_after!r})")


def status_code(number: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of a canonical code number (UNKNOWN for one it is not)."""
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


def error_from_rpc(error: grpc.RpcError) -> SyntraRpcError:
    """The :class:`SyntraRpcError` a failed call (sync or asyncio) stands for."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    if not isinstance(code, grpc.StatusCode):
        return SyntraRpcError(grpc.StatusCode.UNKNOWN, str(error))
    message = error.details() or ""
    field = retry_after = None
    try:
        status = rpc_status.from_call(error)
    except (ValueError, DecodeError):
        status = None   # details that contradict the status: a broken peer; keep the status
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            if bad_request.field_violations:
                field = bad_request.field_violations[0].field
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry_info = error_details_pb2.RetryInfo()
            detail.Unpack(retry_info)
            retry_after = retry_info.retry_delay.ToNanoseconds() / 1e9
    return SyntraRpcError(code, message, field, retry_after)


def malformed(what: str) -> SyntraRpcError:
    """The error for an answer the service should never give (a broken peer)."""
    return SyntraRpcError(grpc.StatusCode.INTERNAL, f"malformed response: {what}")


def falls_back(error: SyntraRpcError) -> bool:
    """Whether ``decide(..., fallback=...)`` answers ``error`` with the fallback option.

    Every failure does (unreachable, slow, refusing, broken) except INVALID_ARGUMENT: a
    bad request is the caller's bug and must be seen.
    """
    return error.code is not grpc.StatusCode.INVALID_ARGUMENT


__all__ = ["SyntraRpcError", "error_from_rpc", "falls_back", "malformed", "status_code"]
