"""Between Python values and the ``syntra.v1`` messages, in both directions.

Requests are built here without judging their values: the server checks them and names
the field at fault. Answers become plain dicts and :class:`Decision` objects; an answer
that breaks the API's promises (a decision without an option) is refused as malformed.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from syntra.client._errors import SyntraRpcError, malformed
from syntra.errors import InvalidArgument
from syntra.v1 import admin_pb2, audit_pb2, capsule_pb2, decision_pb2

DECIDE_KEYS = ("context_key", "features", "metrics", "input", "capsule")
FEEDBACK_KEYS = ("decision_id", "reward", "components", "signal", "cost_microcents", "taken_option",
                 "taken_propensity", "capsule")


@dataclasses.dataclass(frozen=True)
class Decision:
    """A capsule's decision, or (``fallback=True``) the caller's fallback option standing in
    for one the service could not give; ``error`` then says why ("UNAVAILABLE: ...").

    ``option`` is None when the capsule refused (see ``refused`` and ``refusal``);
    ``decision_id`` is empty when a budget refused, and for a fallback.
    """

    decision_id: str
    capsule: str
    option: str | None
    option_index: int
    propensity: float
    context_key: str
    refused: bool = False
    refusal: str | None = None
    confidence: dict[str, Any] | None = None
    value: Any = None
    shadow: bool = False
    sequence: int = 0
    cost_microcents: int = 0
    substituted_for: str | None = None
    fallback: bool = False
    error: str | None = None


def fallback_decision(capsule: str, context_key: str, option: str, error: SyntraRpcError) -> Decision:
    """The decision the caller's fallback ``option`` makes when the service gave none."""
    return Decision(decision_id="", capsule=capsule, option=option, option_index=-1, propensity=1.0,
                    context_key=context_key, fallback=True, error=str(error))


# --- Python values to protobuf --------------------------------------------------------------

def text(value: Any, field: str) -> str:
    """``value`` if it is a string ("" for None): protobuf's own type errors name no field."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(field, f"must be a string, got {type(value).__name__}")
    return value


def count(value: Any, field: str) -> int:
    """``value`` if it is a non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(field, f"must be a non-negative integer, got {value!r}")
    return value


def fill_struct(target: struct_pb2.Struct, data: Mapping[str, Any] | None, field: str) -> None:
    """Copy a JSON-like mapping into ``target``; ``field`` names it in a type error."""
    if data is None:
        return
    if not isinstance(data, Mapping):
        raise InvalidArgument(field, f"must be a mapping, got {type(data).__name__}")
    try:
        target.update(dict(data))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(field, f"must hold only JSON values: {exc}") from None


def fill_value(target: struct_pb2.Value, data: Any, field: str) -> None:
    """Copy a JSON-like value (None, bool, number, str, list, mapping) into ``target``."""
    holder = struct_pb2.Struct()
    try:
        holder.update({"value": data})
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(field, f"must be a JSON value: {exc}") from None
    target.CopyFrom(holder.fields["value"])


def _number_map(target, data: Mapping[str, Any] | None, field: str) -> None:
    if data is None:
        return
    if not isinstance(data, Mapping):
        raise InvalidArgument(field, f"must be a mapping of names to numbers, got {type(data).__name__}")
    for key, number in data.items():
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise InvalidArgument(f"{field}.{key}", f"must be a number, got {type(number).__name__}")
        target[str(key)] = float(number)


def decide_request(capsule: str, context_key: str = "", features=None, metrics=None, input=None,
                   *, field: str = "") -> decision_pb2.DecideRequest:
    request = decision_pb2.DecideRequest(capsule=text(capsule, f"{field}capsule"),
                                         context_key=text(context_key, f"{field}context_key"))
    fill_struct(request.features, features, f"{field}features")
    _number_map(request.metrics, metrics, f"{field}metrics")
    if input is not None:
        fill_value(request.input, input, f"{field}input")
    return request


def feedback_request(capsule: str, decision_id: str, reward=None, components=None, signal=None,
                     cost_microcents=None, taken_option=None, taken_propensity=None,
                     *, field: str = "") -> decision_pb2.FeedbackRequest:
    request = decision_pb2.FeedbackRequest(
        capsule=text(capsule, f"{field}capsule"), decision_id=text(decision_id, f"{field}decision_id"),
        signal=text(signal, f"{field}signal"), taken_option=text(taken_option, f"{field}taken_option"))
    if reward is not None:
        request.reward = _float(reward, f"{field}reward")
    _number_map(request.components, components, f"{field}components")
    if cost_microcents is not None:
        if isinstance(cost_microcents, bool) or not isinstance(cost_microcents, int):
            raise InvalidArgument(f"{field}cost_microcents", f"must be an integer, got {cost_microcents!r}")
        request.cost_microcents = cost_microcents
    if taken_propensity is not None:
        request.taken_propensity = _float(taken_propensity, f"{field}taken_propensity")
    return request


def _float(value: Any, field: str) -> float:
    # NaN and infinities go through: the server refuses them, naming the field.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(field, f"must be a number, got {type(value).__name__}")
    return float(value)


def batch_items(items: Any, known: tuple[str, ...]) -> list[Mapping[str, Any]]:
    """``items`` checked to be a list of dicts with only ``known`` keys."""
    if isinstance(items, str | bytes | Mapping) or not hasattr(items, "__iter__"):
        raise InvalidArgument("requests", f"must be a list of dicts, got {type(items).__name__}")
    items = list(items)
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidArgument(f"requests[{index}]", f"must be a dict, got {type(item).__name__}")
        unknown = sorted(set(item) - set(known))
        if unknown:
            raise InvalidArgument(f"requests[{index}].{unknown[0]}", f"is not a field; known: {', '.join(known)}")
    return items


def decide_batch_request(capsule: str, items: Any) -> decision_pb2.DecideBatchRequest:
    requests = [decide_request(item.get("capsule", ""), item.get("context_key", ""), item.get("features"),
                               item.get("metrics"), item.get("input"), field=f"requests[{index}].")
                for index, item in enumerate(batch_items(items, DECIDE_KEYS))]
    return decision_pb2.DecideBatchRequest(capsule=text(capsule, "capsule"), requests=requests)


def feedback_batch_request(capsule: str, items: Any) -> decision_pb2.FeedbackBatchRequest:
    requests = [feedback_request(item.get("capsule", ""), item.get("decision_id", ""), item.get("reward"),
                                 item.get("components"), item.get("signal"), item.get("cost_microcents"),
                                 item.get("taken_option"), item.get("taken_propensity"),
                                 field=f"requests[{index}].")
                for index, item in enumerate(batch_items(items, FEEDBACK_KEYS))]
    return decision_pb2.FeedbackBatchRequest(capsule=text(capsule, "capsule"), requests=requests)


def scope_message(scope: Any, index: int) -> admin_pb2.Scope:
    """A scope from ``"role:resource"``, ``"admin"`` or a ``(role, resource)`` pair."""
    if isinstance(scope, str):
        role, _, resource = scope.partition(":")
        return admin_pb2.Scope(role=role, resource=resource)
    if isinstance(scope, tuple | list) and len(scope) == 2 and all(isinstance(part, str) for part in scope):
        return admin_pb2.Scope(role=scope[0], resource=scope[1])
    raise InvalidArgument(f"scopes[{index}]", f"must be 'role:resource' or a (role, resource) pair, got {scope!r}")


# --- protobuf to Python values --------------------------------------------------------------

def plain(value: Any) -> Any:
    """A Struct's contents as plain Python. Struct carries every number as a double: whole
    ones become ints again (these dicts count things)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def struct_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return plain(_struct(message))


def _struct(message: struct_pb2.Struct) -> dict[str, Any]:
    return {key: _value(item) for key, item in message.fields.items()}


def _value(message: struct_pb2.Value) -> Any:
    kind = message.WhichOneof("kind")
    if kind == "number_value":
        return message.number_value
    if kind == "string_value":
        return message.string_value
    if kind == "bool_value":
        return message.bool_value
    if kind == "struct_value":
        return _struct(message.struct_value)
    if kind == "list_value":
        return [_value(item) for item in message.list_value.values]
    return None


def decision_from(message: decision_pb2.Decision) -> Decision:
    """A Decision from the wire; raises a malformed-response error for one the service
    would never send (no option and not refused, or no id and not refused)."""
    if not message.refused:
        if not message.option:
            raise malformed("the decision has no option and is not refused")
        if not message.decision_id:
            raise malformed("the decision has no decision id and is not refused")
    confidence = _struct(message.confidence) if message.HasField("confidence") else None
    return Decision(
        decision_id=message.decision_id, capsule=message.capsule, option=message.option or None,
        option_index=message.option_index, propensity=message.propensity, context_key=message.context_key,
        refused=message.refused, refusal=message.refusal or None, confidence=confidence,
        value=_value(message.value) if message.HasField("value") else None, shadow=message.shadow,
        sequence=message.sequence, cost_microcents=message.cost_microcents,
        substituted_for=message.substituted_for or None)


def capsule_dict(message: capsule_pb2.Capsule) -> dict[str, Any]:
    return {
        "name": message.name, "options": list(message.options),
        "reward_spec": struct_dict(message.reward_spec), "learning_config": struct_dict(message.learning_config),
        "algorithm": message.algorithm, "lifecycle": message.lifecycle, "shadow": message.shadow,
        "program": message.program, "policy": struct_dict(message.policy), "decisions": message.decisions,
        "pending": message.pending, "budget": struct_dict(message.budget),
    }


def context_dict(message: capsule_pb2.Context) -> dict[str, Any]:
    options = [{"option": stats.option, "pulls": stats.pulls,
                "mean_reward": stats.mean_reward if stats.HasField("mean_reward") else None}
               for stats in message.options]
    return {"key": message.key, "options": options, "best_option": message.best_option or None}


def memory_dict(message: capsule_pb2.Memory) -> dict[str, Any]:
    return {"name": message.name, "contexts": message.contexts, "pending": message.pending,
            "state_bytes": message.state_bytes, "state": struct_dict(message.state)}


def log_entry_dict(message: audit_pb2.LogEntry) -> dict[str, Any]:
    return {"sequence": message.sequence, "kind": message.kind, "capsule": message.capsule,
            "time_unix_nanos": message.time_unix_nanos, "body": struct_dict(message.body),
            "digest": message.digest}


def verify_dict(message: audit_pb2.VerifyChainResponse) -> dict[str, Any]:
    return {"ok": message.ok, "records": message.records, "head_digest": message.head_digest,
            "checkpoints": message.checkpoints, "problems": list(message.problems), "notes": list(message.notes)}


def _iso(message: admin_pb2.Token, field: str) -> str | None:
    if not message.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=datetime.UTC).isoformat()


def token_dict(message: admin_pb2.Token) -> dict[str, Any]:
    scopes = [f"{s.role}:{s.resource}" if s.resource else s.role for s in message.scopes]
    return {"name": message.name, "display_name": message.display_name, "scopes": scopes,
            "create_time": _iso(message, "create_time"), "expire_time": _iso(message, "expire_time"),
            "revoke_time": _iso(message, "revoke_time"), "creator": message.creator}


def manifest_dict(message: admin_pb2.BackupManifest) -> dict[str, Any]:
    return {"wal_sequence": message.wal_sequence, "head_digest": message.head_digest,
            "size_bytes": message.size_bytes, "blake3": message.blake3}
