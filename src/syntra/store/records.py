"""What the engine writes to the write-ahead log, and how each payload is encoded.

Decisions and feedback are fixed binary layouts (little-endian), because one is written per
call. Installs, uninstalls and other audit events are rare and carry JSON. Every record
type is listed in ``RecordType``; the WAL itself stores only the number.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

from syntra.errors import StorageCorrupt

PROPENSITY_SCALE = 1_000_000_000  # propensities are also logged in parts per billion
# The option index a DECISION record carries when the capsule refused to decide.
REFUSED_OPTION = 0xFFFF


class RecordType(enum.IntEnum):
    ENGINE_CREATED = 1       # JSON: format, seed
    CAPSULE_INSTALLED = 2    # JSON: uid, name, options, reward, algorithm, settings, install, seed, tag
    CAPSULE_UNINSTALLED = 3  # JSON: uid, name
    AUDIT = 4                # JSON: kind, capsule, details (events that change no learned state)
    LEARNING = 5             # JSON: uid, action (freeze, unfreeze, update_learning, update_reward_spec,
                             # update_policy) and its learning, reward (+ statistics) or policy: replayed
    DECISION = 10            # binary, see DecisionRecord
    FEEDBACK = 11            # binary, see FeedbackRecord


AUDIT_TYPES = frozenset({RecordType.ENGINE_CREATED, RecordType.CAPSULE_INSTALLED,
                         RecordType.CAPSULE_UNINSTALLED, RecordType.AUDIT, RecordType.LEARNING})


def log_kind(rtype: int) -> str:
    """The Arrow log a record of type ``rtype`` goes to: "decisions", "feedback" or "audit".

    Every type but DECISION and FEEDBACK is "audit", including one this version does not
    know (not in :data:`AUDIT_TYPES`; turning it into a row fails).
    """
    if rtype == RecordType.DECISION:
        return "decisions"
    if rtype == RecordType.FEEDBACK:
        return "feedback"
    return "audit"

# u32 capsule uid, u64 decision sequence, u64 ts_ns, f64 propensity, u32 propensity ppb,
# u16 option index, u16 context key length; then the key in UTF-8; then, for a program
# capsule, the run's output as JSON in UTF-8. A key is at most 1024 bytes, so the top bit
# of its length is free: set, it says a u32 result length follows the key, then the
# result, then the learning layer's inputs (features, metrics) as JSON to the end.
_DECISION = struct.Struct("<IQQdIHH")
_HAS_INPUTS = 0x8000
_LENGTH = struct.Struct("<I")
# u32 capsule uid, u64 decision sequence, u64 ts_ns, f64 reward; then, when the feedback
# reported what the decision cost, i64 microcents.
_FEEDBACK = struct.Struct("<IQQd")
_COST = struct.Struct("<q")


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    capsule_uid: int
    sequence: int
    ts_ns: int
    propensity: float
    option_index: int
    context_key: str
    # The propensity in parts per billion, as logged; None when made: round(propensity * 1e9).
    propensity_ppb: int | None = None
    # A program capsule's result, published values and stdout, as JSON (after the key).
    result: str | None = None
    # What the learning layer decided from beyond the key (features, metrics), as JSON.
    inputs: str | None = None

    def __post_init__(self) -> None:
        if self.propensity_ppb is None:
            object.__setattr__(self, "propensity_ppb",
                               round(self.propensity * PROPENSITY_SCALE))

    def encode(self) -> bytes:
        return encode_decision(self.capsule_uid, self.sequence, self.ts_ns, self.propensity, self.option_index,
                               self.context_key, self.result, self.inputs, self.propensity_ppb)

    @classmethod
    def decode(cls, payload: bytes) -> DecisionRecord:
        try:
            (uid, sequence, ts_ns, propensity, ppb, option,
             key_length) = _DECISION.unpack_from(payload)
            has_inputs = bool(key_length & _HAS_INPUTS)
            key_length &= ~_HAS_INPUTS
            end = _DECISION.size + key_length
            if len(payload) < end:
                raise ValueError(f"context key is {len(payload) - _DECISION.size} bytes, header says {key_length}")
            key = payload[_DECISION.size:end].decode()
            if not has_inputs:
                result = payload[end:].decode() if len(payload) > end else None
                return cls(uid, sequence, ts_ns, propensity, option, key, ppb, result)
            (result_length,) = _LENGTH.unpack_from(payload, end)
            start = end + _LENGTH.size
            if len(payload) < start + result_length:
                raise ValueError(f"result is shorter than the {result_length} bytes its header says")
            result = payload[start:start + result_length].decode() or None
            inputs = payload[start + result_length:].decode()
            return cls(uid, sequence, ts_ns, propensity, option, key, ppb, result, inputs)
        except (struct.error, ValueError) as exc:
            raise StorageCorrupt(f"bad decision record: {exc}") from None


def encode_decision(capsule_uid: int, sequence: int, ts_ns: int, propensity: float, option_index: int,
                    context_key: str, result: str | None = None, inputs: str | None = None,
                    propensity_ppb: int | None = None) -> bytes:
    """A DECISION payload, as :meth:`DecisionRecord.encode` writes it, without building the
    record first (one is written per decision)."""
    key = context_key.encode()
    head = _DECISION.pack(
        capsule_uid, sequence, ts_ns, propensity,
        round(propensity * PROPENSITY_SCALE) if propensity_ppb is None else propensity_ppb,
        option_index, len(key) if inputs is None else len(key) | _HAS_INPUTS,
    ) + key
    if inputs is None:
        return head if result is None else head + result.encode()
    result_bytes = b"" if result is None else result.encode()
    return head + _LENGTH.pack(len(result_bytes)) + result_bytes + inputs.encode()


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    capsule_uid: int
    sequence: int  # the decision's sequence within its capsule
    ts_ns: int
    reward: float  # stored as the exact float64 that was applied, so replay is bit-identical
    # Microcents the decision actually cost, for a budgeted capsule's feedback that said;
    # recovery commits it if the budget journal lost its own record of it.
    cost: int | None = None
    # How the learning layer got this reward, as JSON: {"signal": name} for one signal of
    # several, {"default": true} for the reward a decision got when its wait ran out,
    # {"components": {...}} for a reward combined from components, and for a shadow
    # capsule "taken_option" and "taken_propensity" (what the caller's own policy took).
    detail: str | None = None

    def encode(self) -> bytes:
        base = _FEEDBACK.pack(self.capsule_uid, self.sequence, self.ts_ns, self.reward)
        if self.detail is None:
            return base if self.cost is None else base + _COST.pack(self.cost)
        # With a detail the cost is always there, -1 standing for none.
        return base + _COST.pack(-1 if self.cost is None else self.cost) + self.detail.encode()

    @classmethod
    def decode(cls, payload: bytes) -> FeedbackRecord:
        if len(payload) == _FEEDBACK.size:
            return cls(*_FEEDBACK.unpack(payload))
        if len(payload) >= _FEEDBACK.size + _COST.size:
            (cost,) = _COST.unpack_from(payload, _FEEDBACK.size)
            detail = None
            if len(payload) > _FEEDBACK.size + _COST.size:
                try:
                    detail = payload[_FEEDBACK.size + _COST.size:].decode()
                except UnicodeDecodeError as exc:
                    raise StorageCorrupt(f"bad feedback record: {exc}") from None
                if cost == -1:
                    cost = None
            if cost is not None and cost < 0:
                raise StorageCorrupt(f"bad feedback record: cost {cost} is negative")
            return cls(*_FEEDBACK.unpack_from(payload), cost, detail)
        raise StorageCorrupt(
            f"bad feedback record: {len(payload)} bytes, expected {_FEEDBACK.size} or more")


def encode_json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def decode_json(payload: bytes, rtype: int) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StorageCorrupt(f"bad {RecordType(rtype).name} record: {exc}") from None
    if not isinstance(body, dict):
        raise StorageCorrupt(f"bad {RecordType(rtype).name} record: not a JSON object")
    return body


def install_config(payload: bytes | str) -> dict[str, Any]:
    """The capsule config a CAPSULE_INSTALLED payload (or an audit row's ``details``)
    holds: its JSON body without the ``ts_ns`` it was logged at."""
    config = decode_json(payload, RecordType.CAPSULE_INSTALLED)
    config.pop("ts_ns", None)
    return config
