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
    DECISION = 10            # binary, see DecisionRecord
    FEEDBACK = 11            # binary, see FeedbackRecord


AUDIT_TYPES = frozenset({RecordType.ENGINE_CREATED, RecordType.CAPSULE_INSTALLED,
                         RecordType.CAPSULE_UNINSTALLED, RecordType.AUDIT})


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
# capsule, the run's output as JSON in UTF-8.
_DECISION = struct.Struct("<IQQdIHH")
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

    def __post_init__(self) -> None:
        if self.propensity_ppb is None:
            object.__setattr__(self, "propensity_ppb",
                               round(self.propensity * PROPENSITY_SCALE))

    def encode(self) -> bytes:
        key = self.context_key.encode()
        head = _DECISION.pack(
            self.capsule_uid, self.sequence, self.ts_ns, self.propensity,
            self.propensity_ppb, self.option_index, len(key),
        ) + key
        return head if self.result is None else head + self.result.encode()

    @classmethod
    def decode(cls, payload: bytes) -> DecisionRecord:
        try:
            (uid, sequence, ts_ns, propensity, ppb, option,
             key_length) = _DECISION.unpack_from(payload)
            end = _DECISION.size + key_length
            if len(payload) < end:
                raise ValueError(f"context key is {len(payload) - _DECISION.size} bytes, header says {key_length}")
            key = payload[_DECISION.size:end].decode()
            result = payload[end:].decode() if len(payload) > end else None
            return cls(uid, sequence, ts_ns, propensity, option, key, ppb, result)
        except (struct.error, ValueError) as exc:
            raise StorageCorrupt(f"bad decision record: {exc}") from None


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    capsule_uid: int
    sequence: int  # the decision's sequence within its capsule
    ts_ns: int
    reward: float  # stored as the exact float64 that was applied, so replay is bit-identical
    # Microcents the decision actually cost, for a budgeted capsule's feedback that said;
    # recovery commits it if the budget journal lost its own record of it.
    cost: int | None = None

    def encode(self) -> bytes:
        base = _FEEDBACK.pack(self.capsule_uid, self.sequence, self.ts_ns, self.reward)
        return base if self.cost is None else base + _COST.pack(self.cost)

    @classmethod
    def decode(cls, payload: bytes) -> FeedbackRecord:
        if len(payload) == _FEEDBACK.size:
            return cls(*_FEEDBACK.unpack(payload))
        if len(payload) == _FEEDBACK.size + _COST.size:
            (cost,) = _COST.unpack_from(payload, _FEEDBACK.size)
            if cost < 0:
                raise StorageCorrupt(f"bad feedback record: cost {cost} is negative")
            return cls(*_FEEDBACK.unpack_from(payload), cost)
        raise StorageCorrupt(
            f"bad feedback record: {len(payload)} bytes, expected {_FEEDBACK.size} or"
            f" {_FEEDBACK.size + _COST.size}")


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
