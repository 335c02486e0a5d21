"""What every RPC shares: the service's state, authentication, and the wrappers that turn
failures into canonical status codes, count them and log them.

A servicer method does its work and raises :class:`RpcFailure` (or lets an engine error
through); :func:`unary` and :func:`streaming` do the rest, the same way for every method.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from syntra.server import jsonlog
from syntra.server.auth import FailedAuthLimiter, Principal, TokenStore, Unauthenticated
from syntra.server.convert import capsule_name
from syntra.server.ops import Metrics
from syntra.server.ratelimit import RateLimiter
from syntra.server.status import RpcFailure, failure_for

_log = logging.getLogger("syntra.server")

RECOVERING, SERVING, RESTORING, STOPPING = "recovering", "serving", "restoring", "stopping"
_BEARER = "bearer "
# Calls that change what the service is (not decisions and feedback): each success is
# logged, with who made it, so the log says who did what to which resource.
LOGGED_ON_SUCCESS = frozenset({
    "InstallCapsule", "DeleteCapsule", "UpdateLearningConfig", "UpdateRewardSpec", "UpdatePolicy",
    "FreezeCapsule", "UnfreezeCapsule", "CreateToken", "RevokeToken", "Backup", "Restore",
})
# Who the current call authenticated as (for the log lines above).
_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("syntra_caller", default=None)


class ServiceState:
    """The engine the servicers call, and everything that guards it.

    ``engine`` is None while the store is being recovered or restored: calls then fail
    with UNAVAILABLE, which clients retry.
    """

    def __init__(self, tokens: TokenStore, *, limiter: RateLimiter, metrics: Metrics,
                 failed_auth: FailedAuthLimiter | None = None, workers: int = 4):
        self.engine = None
        self.phase = RECOVERING
        self.tokens = tokens
        self.limiter = limiter
        self.metrics = metrics
        self.failed_auth = failed_auth or FailedAuthLimiter()
        # Work that blocks (program runs, installs, checkpoints, backups) runs here, so the
        # event loop keeps serving decisions meanwhile.
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="syntra-rpc")

    def live_engine(self):
        engine = self.engine
        if engine is None or self.phase != SERVING:
            raise RpcFailure(grpc.StatusCode.UNAVAILABLE, f"the service is {self.phase}; retry shortly")
        return engine

    async def run_blocking(self, function, *args, **kwargs) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(function, *args, **kwargs))

    # --- authentication -------------------------------------------------------------------

    def principal(self, context: grpc.aio.ServicerContext) -> Principal:
        """Who is calling, from the ``authorization: Bearer <token>`` metadata."""
        secret = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                if value[:7].lower() == _BEARER:
                    secret = value[7:].strip()
                break
        if secret:
            try:
                principal = self.tokens.authenticate(secret)
                _caller.set(principal.name)
                return principal
            except Unauthenticated as exc:
                reason = exc.reason
        else:
            reason = "no bearer token"
        raise self._failed_auth(context, reason)

    def _failed_auth(self, context, reason: str) -> RpcFailure:
        peer = _peer_host(context.peer())
        wait = self.failed_auth.blocked(peer)
        self.metrics.auth_failed(reason)
        if wait > 0:   # counted, not logged: a flood must not flood the log too
            return RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              "too many failed authentication attempts from this peer", retry_after=wait)
        self.failed_auth.record_failure(peer)
        _log.warning("authentication failed", extra={"fields": {"peer": peer, "reason": reason}})
        return RpcFailure(grpc.StatusCode.UNAUTHENTICATED, f"authentication failed: {reason}")

    def authorize(self, context, role: str, resource: str) -> Principal:
        """The caller, if it may act as ``role`` on ``resource``; PERMISSION_DENIED if not."""
        principal = self.principal(context)
        if not principal.allows(role, resource):
            what = f"{role} on {resource}" if resource else role
            raise RpcFailure(grpc.StatusCode.PERMISSION_DENIED, f"{principal.name} may not {what}")
        return principal

    def capsule(self, context, role: str, name: str, field: str):
        """(caller, capsule ``name``) if the caller may act as ``role`` on it: a malformed
        name is INVALID_ARGUMENT, a forbidden one PERMISSION_DENIED (before NOT_FOUND, so
        a caller learns nothing of capsules it may not touch)."""
        engine = self.live_engine()
        if name not in engine:
            capsule_name(name, field)
        principal = self.authorize(context, role, name)
        return principal, engine.capsule(name)

    def limit(self, principal: Principal, items: int = 1) -> None:
        """Spend ``items`` of the caller's decide/feedback rate, or refuse with the delay."""
        wait = self.limiter.take(principal.name, items)
        if wait:
            self.metrics.limited()
            raise RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"rate limit reached for {principal.name}; retry in {wait:.3f} s", retry_after=wait)


def _peer_host(peer: str | None) -> str:
    """``ipv4:127.0.0.1:5123`` → ``ipv4:127.0.0.1``: a client's connections share a budget."""
    if not peer:
        return "unknown"
    host, _, port = peer.rpartition(":")
    return host if port.isdigit() and host else peer


def _failure(exc: BaseException, method: str) -> RpcFailure:
    failure = failure_for(exc)
    if failure is None:
        _log.exception("%s failed unexpectedly", method)
        failure = RpcFailure(grpc.StatusCode.INTERNAL, "internal error (logged by the server)")
    elif failure.code == grpc.StatusCode.UNAVAILABLE:
        _log.error("%s: %s", method, failure.message)
    return failure


def _request_id(context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return value[:64]
    return jsonlog.new_request_id()


def _log_success(context, method: str, request) -> None:
    jsonlog.request_id.set(_request_id(context))
    fields = {"method": method, "principal": _caller.get()}
    for name in ("name", "parent", "capsule_id"):
        value = getattr(request, name, None)
        if isinstance(value, str) and value:
            fields[name] = value
    _log.info("%s done", method, extra={"fields": fields})


async def _abort(state: ServiceState, context, method: str, failure: RpcFailure) -> None:
    request_id = _request_id(context)
    jsonlog.request_id.set(request_id)
    _log.info("%s refused", method, extra={"fields": {
        "method": method, "code": failure.code.name, "message": failure.message}})
    await context.abort(failure.code, failure.message,
                        failure.trailing_metadata() + (("x-request-id", request_id),))


class _Call:
    """One call's bookkeeping: its status code for the metrics, and the abort that turns
    a failure into that code."""

    __slots__ = ("code", "context", "name", "started", "state")

    def __init__(self, state: ServiceState, context, name: str):
        self.state, self.context, self.name = state, context, name
        self.code = "OK"
        self.started = time.perf_counter()

    def succeeded(self, request) -> None:
        if self.name in LOGGED_ON_SUCCESS:
            _log_success(self.context, self.name, request)

    async def failed(self, exc: Exception) -> None:
        """Abort with ``exc``'s status (raises grpc.aio.AbortError)."""
        failure = exc if isinstance(exc, RpcFailure) else _failure(exc, self.name)
        self.code = failure.code.name
        await _abort(self.state, self.context, self.name, failure)

    def finished(self) -> None:
        self.state.metrics.rpc(self.name, self.code, time.perf_counter() - self.started)


def unary(method):
    """Wrap a servicer method (unary or client-streaming request, one response): status
    codes, metrics, logs."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(self, request, context):
        call = _Call(self.state, context, name)
        try:
            response = await method(self, request, context)
            call.succeeded(request)
            return response
        except (asyncio.CancelledError, grpc.aio.AbortError):
            call.code = "CANCELLED"
            raise
        except Exception as exc:  # noqa: BLE001 - anything unexpected is INTERNAL, and logged
            await call.failed(exc)
        finally:
            call.finished()

    return handler


def streaming(method):
    """Wrap a servicer method that returns a stream (an async generator)."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(self, request, context):
        call = _Call(self.state, context, name)
        try:
            async for item in method(self, request, context):
                yield item
            call.succeeded(request)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            call.code = "CANCELLED"
            raise
        except Exception as exc:  # noqa: BLE001 - anything unexpected is INTERNAL, and logged
            await call.failed(exc)
        finally:
            call.finished()

    return handler


__all__ = ["RECOVERING", "RESTORING", "SERVING", "STOPPING", "ServiceState", "streaming", "unary"]
