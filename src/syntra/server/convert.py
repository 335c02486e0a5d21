"""Between protobuf messages and the engine's Python values, checking as it goes.

Every check names the request field at fault (``requests[3].features.load``), so a caller
gets INVALID_ARGUMENT with the field, not a bare "bad request".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2

from syntra.errors import SyntraError
from syntra.names import CapsuleName
from syntra.server.status import invalid
from syntra.v1 import capsule_pb2, decision_pb2

# Request bodies are capped by the server's max message size; these cap what one decision
# may carry within it, so a single request cannot make the engine do unbounded work.
MAX_FEATURES = 256
MAX_METRICS = 64
MAX_COMPONENTS = 64
MAX_JSON_DEPTH = 32


def capsule_name(name: str, field: str) -> str:
    """``name`` if it is a capsule's resource name, else INVALID_ARGUMENT naming ``field``."""
    if not name:
        raise invalid(field, "is required (tenants/{tenant}/jobs/{job}/capsules/{capsule})")
    try:
        CapsuleName.parse(name)
    except SyntraError as exc:
        raise invalid(field, str(exc)) from None
    return name


def finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise invalid(field, f"must be a finite number, got {value!r}")
    return value


def struct_to_dict(message: struct_pb2.Struct, field: str, *, integral: bool = False) -> dict[str, Any]:
    """A Struct as a plain dict. JSON numbers arrive as doubles: with ``integral``, whole
    ones become ints (configs count things: buckets, samples). NaN and Inf are refused."""
    return {key: _value(value, f"{field}.{key}", integral, 1) for key, value in message.fields.items()}


def value_to_python(message: struct_pb2.Value, field: str) -> Any:
    """A program input as JSON-like data: whole numbers become ints, as a JSON parser
    gives them (Lycan tells 3 from 3.0; a Value holds only doubles)."""
    return _value(message, field, True, 0)


def _value(value: struct_pb2.Value, field: str, integral: bool, depth: int) -> Any:
    if depth > MAX_JSON_DEPTH:
        raise invalid(field, f"is nested deeper than {MAX_JSON_DEPTH} levels")
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = finite(value.number_value, field)
        if integral and number.is_integer() and abs(number) < 2**53:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: _value(v, f"{field}.{k}", integral, depth + 1) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_value(v, f"{field}[{i}]", integral, depth + 1) for i, v in enumerate(value.list_value.values)]
    return None


def _jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, bytes as hex and non-finite floats as strings, so
    a Struct can hold it."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def fill_struct(target: struct_pb2.Struct, data: Mapping[str, Any] | None) -> None:
    if data:
        target.update(_jsonable(data))


def fill_value(target: struct_pb2.Value, data: Any) -> None:
    plain = _jsonable(data)
    if plain is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(plain, bool):
        target.bool_value = plain
    elif isinstance(plain, int | float):
        target.number_value = plain
    elif isinstance(plain, str):
        target.string_value = plain
    elif isinstance(plain, dict):
        target.struct_value.update(plain)
    else:
        target.list_value.extend(plain)


def decide_arguments(request: decision_pb2.DecideRequest, field: str) -> dict[str, Any]:
    """The keyword arguments of ``Capsule.decide`` a DecideRequest carries."""
    arguments: dict[str, Any] = {"context_key": request.context_key}
    if request.HasField("features"):
        if len(request.features.fields) > MAX_FEATURES:
            raise invalid(f"{field}features", f"at most {MAX_FEATURES} features, got {len(request.features.fields)}")
        arguments["features"] = struct_to_dict(request.features, f"{field}features")
    if request.metrics:
        if len(request.metrics) > MAX_METRICS:
            raise invalid(f"{field}metrics", f"at most {MAX_METRICS} metrics, got {len(request.metrics)}")
        arguments["metrics"] = {k: finite(v, f"{field}metrics.{k}") for k, v in request.metrics.items()}
    if request.HasField("input"):
        arguments["input"] = value_to_python(request.input, f"{field}input")
    return arguments


def feedback_arguments(request: decision_pb2.FeedbackRequest, field: str) -> dict[str, Any]:
    """The keyword arguments of ``Capsule.feedback`` a FeedbackRequest carries."""
    arguments: dict[str, Any] = {}
    if request.HasField("reward"):
        arguments["reward"] = finite(request.reward, f"{field}reward")
    if request.components:
        if len(request.components) > MAX_COMPONENTS:
            raise invalid(f"{field}components", f"at most {MAX_COMPONENTS} components")
        arguments["components"] = {k: finite(v, f"{field}components.{k}") for k, v in request.components.items()}
    if request.signal:
        arguments["signal"] = request.signal
    if request.HasField("cost_microcents"):
        arguments["cost"] = request.cost_microcents
    if request.taken_option:
        arguments["taken_option"] = request.taken_option
    if request.HasField("taken_propensity"):
        arguments["taken_propensity"] = finite(request.taken_propensity, f"{field}taken_propensity")
    return arguments


def decision_message(d, shadow: bool = False) -> decision_pb2.Decision:
    """The wire form of an engine Decision."""
    message = decision_pb2.Decision(
        decision_id=d.decision_id or "",
        capsule=d.capsule,
        option=d.option or "",
        option_index=d.option_index if d.option is not None else -1,
        propensity=d.propensity,
        context_key=d.context_key if type(d.context_key) is str else str(d.context_key),
        refused=d.refused,
        refusal=d.refusal or "",
        shadow=shadow,
        substituted_for=d.substituted_for or "",
        cost_microcents=d.cost,
        sequence=d.sequence,
    )
    if d.confidence:
        fill_struct(message.confidence, d.confidence)
    if d.value is not None:
        fill_value(message.value, d.value)
    return message


def capsule_message(capsule) -> capsule_pb2.Capsule:
    """The wire form of an installed capsule."""
    config = capsule.config
    message = capsule_pb2.Capsule(
        name=capsule.name,
        options=list(capsule.options),
        algorithm=capsule.learning["algorithm"],
        lifecycle=capsule.lifecycle,
        shadow=bool(config.get("shadow", False)),
        program="program" in config,
        decisions=capsule.decisions,
        pending=capsule.pending,
    )
    fill_struct(message.reward_spec, config["reward"])
    fill_struct(message.learning_config, config.get("learning"))
    program = config.get("program")
    if isinstance(program, Mapping) and program.get("policy") is not None:
        fill_struct(message.policy, program["policy"])
    fill_struct(message.budget, config.get("budget"))
    return message
