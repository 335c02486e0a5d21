"""What each client method sends and how it reads the answer, shared by :class:`Client`
and :class:`AsyncClient`: they differ only in how they wait.

A :class:`Unary` names the stub method, carries the request and parses the response.
Streaming calls share their pieces here too (:class:`BackupReceiver`, :func:`restore_manifest`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import IO, Any

import blake3
import grpc

from syntra.client import _convert as convert
from syntra.client._errors import SyntraRpcError, malformed, status_code
from syntra.errors import InvalidArgument
from syntra.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    capsule_pb2,
    capsule_pb2_grpc,
    decision_pb2,
    decision_pb2_grpc,
)

RESTORE_CHUNK_BYTES = 256 << 10
MEMORY_SUFFIX = "/memory"
# The stub class behind each name a Unary's ``stub`` gives.
STUBS = {"decisions": decision_pb2_grpc.DecisionServiceStub, "capsules": capsule_pb2_grpc.CapsuleServiceStub,
         "audit": audit_pb2_grpc.AuditServiceStub, "admin": admin_pb2_grpc.AdminServiceStub}


@dataclasses.dataclass(frozen=True)
class Unary:
    """One unary call: ``stub`` (decisions, capsules, audit or admin) and ``method`` name the
    stub method; ``parse`` turns the response into what the client method returns."""

    stub: str
    method: str
    request: Any
    parse: Callable[[Any], Any]
    # Set on calls applied exactly once (Feedback, FeedbackBatch), which the client retries
    # itself: parses the answer to a retried attempt, where ALREADY_EXISTS means an earlier
    # attempt landed and its reply was lost.
    parse_retried: Callable[[Any], Any] | None = None
    # What a retried Feedback that got ALREADY_EXISTS stands for (its lost reply).
    landed: Any = None


class Attempts:
    """The client's own retries of an exactly-once call (:attr:`Unary.parse_retried` set):
    UNAVAILABLE is retried on gRPC's backoff schedule within the call's deadline."""

    def __init__(self, call: Unary, delays, seconds: float):
        self.call = call
        self.deadline = time.monotonic() + seconds
        self._delays = delays
        self.retried = False

    def remaining(self) -> float:
        """The time the next attempt may take."""
        return max(self.deadline - time.monotonic(), 0.001)

    def landed(self, error: SyntraRpcError) -> bool:
        """Whether ``error`` says an earlier attempt was applied (its reply was lost)."""
        return self.retried and error.code is grpc.StatusCode.ALREADY_EXISTS and self.call.landed is not None

    def delay_after(self, error: SyntraRpcError) -> float:
        """The wait before retrying after ``error``; raises ``error`` when it is final."""
        delay = next(self._delays, None) if error.code is grpc.StatusCode.UNAVAILABLE else None
        if delay is None or time.monotonic() + delay >= self.deadline:
            raise error
        self.retried = True
        return delay

    def answer(self, response: Any) -> Any:
        parse = self.call.parse_retried if self.retried else self.call.parse
        return parse(self.call.landed if response is None else response)


# --- decisions ------------------------------------------------------------------------------

def decide(capsule: str, context_key: str, features, metrics, input) -> Unary:
    request = convert.decide_request(capsule, context_key, features, metrics, input)
    return Unary("decisions", "Decide", request, convert.decision_from)


def check_fallback(fallback: Any) -> None:
    if fallback is not None and (not isinstance(fallback, str) or not fallback):
        raise InvalidArgument("fallback", f"must be an option name, got {fallback!r}")


def feedback(decision: convert.Decision | str, reward, capsule, components, signal, cost_microcents,
             taken_option, taken_propensity) -> Unary | None:
    """The Feedback call, or None when there is nothing to report: a fallback decision, or
    one a budget refused (it has no id)."""
    if isinstance(decision, convert.Decision):
        if decision.fallback or not decision.decision_id:
            return None
        decision_id, capsule = decision.decision_id, capsule or decision.capsule
    elif isinstance(decision, str):
        decision_id = decision
        if not capsule:
            raise InvalidArgument("capsule", "is required when the decision is given by its id")
    else:
        raise InvalidArgument("decision", f"must be a Decision or a decision id, got {type(decision).__name__}")
    request = convert.feedback_request(capsule, decision_id, reward, components, signal, cost_microcents,
                                       taken_option, taken_propensity)
    landed = decision_pb2.FeedbackResponse(decision_id=decision_id)
    return Unary("decisions", "Feedback", request, _recorded, parse_retried=_recorded, landed=landed)


def _recorded(response: decision_pb2.FeedbackResponse) -> bool:
    return True


def decide_batch(capsule: str, requests: Any) -> Unary:
    request = convert.decide_batch_request(capsule, requests)
    return Unary("decisions", "DecideBatch", request, lambda response: decide_results(response, len(request.requests)))


def decide_results(response: decision_pb2.DecideBatchResponse, expected: int) -> list:
    """One Decision or SyntraRpcError per request, in request order."""
    _check_count(response.results, expected)
    results: list[convert.Decision | SyntraRpcError] = []
    for result in response.results:
        kind = result.WhichOneof("result")
        if kind == "error":
            results.append(item_error(result.error))
        elif kind == "decision":
            try:
                results.append(convert.decision_from(result.decision))
            except SyntraRpcError as error:
                results.append(error)
        else:
            results.append(malformed("a batch result holds neither a decision nor an error"))
    return results


def feedback_batch(capsule: str, items: Any) -> Unary:
    request = convert.feedback_batch_request(capsule, items)
    expected = len(request.requests)
    return Unary("decisions", "FeedbackBatch", request,
                 lambda response: feedback_results(response, expected, retried=False),
                 parse_retried=lambda response: feedback_results(response, expected, retried=True))


def feedback_results(response: decision_pb2.FeedbackBatchResponse, expected: int, *, retried: bool) -> list:
    """None (recorded) or a SyntraRpcError per item. After a retried attempt, an item's
    ALREADY_EXISTS means the lost attempt recorded it."""
    _check_count(response.results, expected)
    results: list[SyntraRpcError | None] = []
    for result in response.results:
        kind = result.WhichOneof("result")
        if kind == "error":
            error = item_error(result.error)
            results.append(None if retried and error.code is grpc.StatusCode.ALREADY_EXISTS else error)
        elif kind == "feedback":
            results.append(None)
        else:
            results.append(malformed("a batch result holds neither feedback nor an error"))
    return results


def _check_count(results, expected: int) -> None:
    if len(results) != expected:
        raise malformed(f"{len(results)} results for {expected} requests")


def item_error(error: decision_pb2.ItemError) -> SyntraRpcError:
    return SyntraRpcError(status_code(error.code), error.message, error.field or None)


# --- capsules -------------------------------------------------------------------------------

def install_capsule(parent: str, capsule_id: str, *, yaml_spec, lyc, options, reward, learning, limits,
                    context, policy, budget, shadow) -> Unary:
    if yaml_spec is not None and lyc is not None:
        raise InvalidArgument("lyc", "give yaml_spec or lyc, not both")
    request = capsule_pb2.InstallCapsuleRequest(parent=convert.text(parent, "parent"),
                                                capsule_id=convert.text(capsule_id, "capsule_id"), shadow=bool(shadow))
    if yaml_spec is not None:
        request.yaml_spec = convert.text(yaml_spec, "yaml_spec")
    if lyc is not None:
        if not isinstance(lyc, bytes | bytearray | memoryview):
            raise InvalidArgument("lyc", f"must be bytes (a compiled .lyc), got {type(lyc).__name__}")
        request.lyc = bytes(lyc)
    if options is not None:
        if isinstance(options, str) or not all(isinstance(option, str) for option in options):
            raise InvalidArgument("options", f"must be a list of option names, got {options!r}")
        request.options.extend(options)
    for field, value in (("reward_spec", reward), ("learning_config", learning), ("limits", limits),
                         ("context_spec", context), ("policy", policy), ("budget", budget)):
        if value is not None:
            convert.fill_struct(getattr(request, field), value, field)
    return Unary("capsules", "InstallCapsule", request, convert.capsule_dict)


def by_name(method: str, name: str, parse: Callable[[Any], Any] = convert.capsule_dict) -> Unary:
    """A call whose request is just the capsule's name (Get, Delete, Freeze, Unfreeze)."""
    request = getattr(capsule_pb2, f"{method}Request")(name=convert.text(name, "name"))
    return Unary("capsules", method, request, parse)


def update(method: str, name: str, field: str, value: Any) -> Unary:
    request = getattr(capsule_pb2, f"{method}Request")(name=convert.text(name, "name"))
    if value is None:
        raise InvalidArgument(field, "is required")
    convert.fill_struct(getattr(request, field), value, field)
    return Unary("capsules", method, request, convert.capsule_dict)


def report(name: str) -> Unary:
    return Unary("capsules", "GetReport", capsule_pb2.GetReportRequest(name=convert.text(name, "name")),
                 lambda response: convert.struct_dict(response.report))


def memory(name: str) -> Unary:
    name = convert.text(name, "name")
    memory_name = name if name.endswith(MEMORY_SUFFIX) else name + MEMORY_SUFFIX
    return Unary("capsules", "GetMemory", capsule_pb2.GetMemoryRequest(name=memory_name), convert.memory_dict)


def list_capsules_page(parent: str, page_token: str) -> Unary:
    request = capsule_pb2.ListCapsulesRequest(parent=convert.text(parent, "parent"), page_token=page_token)
    return Unary("capsules", "ListCapsules", request,
                 lambda response: ([convert.capsule_dict(c) for c in response.capsules], response.next_page_token))


def list_contexts_page(name: str, page_token: str) -> Unary:
    request = capsule_pb2.ListContextsRequest(parent=convert.text(name, "name"), page_token=page_token)
    return Unary("capsules", "ListContexts", request,
                 lambda response: ([convert.context_dict(c) for c in response.contexts], response.next_page_token))


# --- audit ----------------------------------------------------------------------------------

def read_log_request(parent: str, start_sequence: int, kinds, limit: int, follow: bool) -> audit_pb2.ReadLogRequest:
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = [convert.text(kind, f"kinds[{index}]") for index, kind in enumerate(kinds)]
    return audit_pb2.ReadLogRequest(parent=convert.text(parent, "parent"),
                                    start_sequence=convert.count(start_sequence, "start_sequence"),
                                    kinds=kinds, limit=convert.count(limit, "limit"), follow=bool(follow))


def verify_chain() -> Unary:
    return Unary("audit", "VerifyChain", audit_pb2.VerifyChainRequest(), convert.verify_dict)


# --- admin ----------------------------------------------------------------------------------

def create_token(scopes: Any, ttl_seconds: int, display_name: str) -> Unary:
    if isinstance(scopes, str):
        scopes = [scopes]
    request = admin_pb2.CreateTokenRequest(
        display_name=convert.text(display_name, "display_name"), ttl_seconds=convert.count(ttl_seconds, "ttl_seconds"),
        scopes=[convert.scope_message(scope, index) for index, scope in enumerate(scopes)])
    return Unary("admin", "CreateToken", request,
                 lambda response: (convert.token_dict(response.token), response.secret))


def list_tokens(show_inactive: bool) -> Unary:
    return Unary("admin", "ListTokens", admin_pb2.ListTokensRequest(show_inactive=bool(show_inactive)),
                 lambda response: [convert.token_dict(t) for t in response.tokens])


def revoke_token(name: str) -> Unary:
    return Unary("admin", "RevokeToken", admin_pb2.RevokeTokenRequest(name=convert.text(name, "name")), convert.token_dict)


class BackupReceiver:
    """Checks a Backup stream's bundle against its manifest, chunk by chunk."""

    def __init__(self):
        self.manifest: admin_pb2.BackupManifest | None = None
        self.size = 0
        self.digest = blake3.blake3()

    def chunk(self, chunk: admin_pb2.BackupChunk) -> bytes | None:
        """Take one chunk: the bytes to write to ``out``, or None for the manifest."""
        kind = chunk.WhichOneof("chunk")
        if kind == "manifest":
            if self.manifest is not None or self.size:
                raise malformed("the backup manifest came twice or after data")
            self.manifest = chunk.manifest
            return None
        if kind != "data" or self.manifest is None:
            raise malformed("the backup stream does not start with its manifest")
        self.size += len(chunk.data)
        self.digest.update(chunk.data)
        return chunk.data

    def finish(self) -> dict[str, Any]:
        """The manifest, once the bundle received matches it (size and BLAKE3)."""
        if self.manifest is None:
            raise malformed("the backup stream ended before its manifest")
        if self.size != self.manifest.size_bytes:
            raise SyntraRpcError(grpc.StatusCode.DATA_LOSS,
                                 f"the backup is {self.size} bytes, its manifest says {self.manifest.size_bytes}")
        if self.digest.hexdigest() != self.manifest.blake3:
            raise SyntraRpcError(grpc.StatusCode.DATA_LOSS, "the backup's BLAKE3 does not match its manifest")
        return convert.manifest_dict(self.manifest)


def restore_manifest(source: IO[bytes]) -> admin_pb2.BackupManifest:
    """The manifest of the bundle in ``source``, read to its end and then rewound to where
    it was. ``source`` must be seekable: a file opened ``rb``."""
    try:
        start = source.tell()
    except (AttributeError, OSError, ValueError):
        raise InvalidArgument("source", "must be a seekable binary file (open it with 'rb')") from None
    digest = blake3.blake3()
    size = 0
    while chunk := source.read(RESTORE_CHUNK_BYTES):
        if not isinstance(chunk, bytes | bytearray):
            raise InvalidArgument("source", "must be opened in binary mode ('rb')")
        digest.update(chunk)
        size += len(chunk)
    source.seek(start, os.SEEK_SET)
    return admin_pb2.BackupManifest(size_bytes=size, blake3=digest.hexdigest())


def restore_dict(response: admin_pb2.RestoreResponse) -> dict[str, Any]:
    return {"wal_sequence": response.wal_sequence, "head_digest": response.head_digest,
            "capsules": response.capsules}

