"""The schemas of the three logs and the conversion of WAL records into their rows.

:data:`DECISIONS_SCHEMA`, :data:`FEEDBACK_SCHEMA` and :data:`AUDIT_SCHEMA` carry a ``doc``
for every field, so a file explains itself; :func:`convert` (built on :class:`_Converter`)
turns the records of a WAL segment into the three tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from syntra.errors import StorageCorrupt
from syntra.names import CapsuleName
from syntra.store.records import (
    REFUSED_OPTION,
    AUDIT_TYPES,
    PROPENSITY_SCALE,
    DecisionRecord,
    FeedbackRecord,
    RecordType,
    decode_json,
    install_config,
    log_kind,
)
from syntra_core.learner import format_decision_id
from syntra_core.wal import WalRecord

REWARD_SCALE = 1_000_000  # rewards are also logged in micro-units
LOG_FORMAT = "2"  # 2: feedback gained cost_microcents; decisions a nullable option and program_result


def _field(name: str, kind: pa.DataType, doc: str, *, nullable: bool = False) -> pa.Field:
    # The description travels inside every file, so a reader needs no copy of this module.
    return pa.field(name, kind, nullable=nullable, metadata={"doc": doc})


def _schema(kind: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"syntra.log": kind, "syntra.log_format": LOG_FORMAT})


_WAL_SEQUENCE = _field("wal_sequence", pa.uint64(), "sequence of the WAL record the row comes from")
_DIGEST = _field("digest", pa.binary(32), "BLAKE3 chain digest of that WAL record")
_TS_NS = _field("ts_ns", pa.timestamp("ns", tz="UTC"), "when the engine logged it")
_DECISION_ID = _field("decision_id", pa.string(), "<capsule sequence: 16 hex>-<capsule tag>")
_NAME_PARTS = [
    _field("tenant", pa.string(), "tenant of the capsule name"),
    _field("job", pa.string(), "job of the capsule name"),
    _field("capsule", pa.string(), "last part of the capsule name"),
]

#: One row per DECISION record.
DECISIONS_SCHEMA = _schema("decisions", [
    _WAL_SEQUENCE,
    _DECISION_ID,
    _TS_NS,
    *_NAME_PARTS,
    _field("context_key", pa.string(), "the context key the decision was made for"),
    _field("features", pa.list_(pa.float64()), "typed context features; null for a discrete"
           " context (every context is discrete today)", nullable=True),
    _field("option_index", pa.uint16(), "index of the chosen option in the capsule's options;"
           " 65535 when the decision was refused"),
    _field("option", pa.string(), "name of the chosen option; null when refused", nullable=True),
    _field("propensity_ppb", pa.uint32(), "probability of choosing that option, in parts per"
           " billion: round(propensity * 1e9)"),
    _field("candidate_rule", pa.string(), "the decision rule that chose (the capsule's algorithm)"),
    _field("refused", pa.bool_(), "true if the engine refused to decide (no option fit the"
           " capsule's budget, or its program failed after choosing)"),
    _field("program_result", pa.string(), "a program capsule's result, published values and"
           " stdout, as JSON; null for other capsules", nullable=True),
    _DIGEST,
])

#: One row per FEEDBACK record.
FEEDBACK_SCHEMA = _schema("feedback", [
    _WAL_SEQUENCE,
    _DECISION_ID,
    _TS_NS,
    *_NAME_PARTS,
    _field("reward_micros", pa.int64(), "the reward in micro-units: round(reward * 1e6)"),
    _field("reward", pa.float64(), "the exact reward that was applied"),
    _field("cost_microcents", pa.int64(), "what the decision actually cost, when the feedback"
           " of a budgeted capsule reported it; null otherwise", nullable=True),
    _DIGEST,
])

#: One row per ENGINE_CREATED, CAPSULE_INSTALLED, CAPSULE_UNINSTALLED or AUDIT record.
AUDIT_SCHEMA = _schema("audit", [
    _WAL_SEQUENCE,
    _field("ts_ns", pa.timestamp("ns", tz="UTC"), "when it happened; null if the record has"
           " no time (engine_created)", nullable=True),
    _field("kind", pa.string(), "engine_created, capsule_installed, capsule_uninstalled, or the"
           " kind an AUDIT record names"),
    _field("tenant", pa.string(), "tenant of the capsule; null for engine events", nullable=True),
    _field("job", pa.string(), "job of the capsule; null for engine events", nullable=True),
    _field("capsule", pa.string(), "last part of the capsule name; null for engine events",
           nullable=True),
    _field("details", pa.string(), "the record's JSON body, exactly as logged"),
    _DIGEST,
])

SCHEMAS: dict[str, pa.Schema] = {
    "decisions": DECISIONS_SCHEMA,
    "feedback": FEEDBACK_SCHEMA,
    "audit": AUDIT_SCHEMA,
}
LOG_KINDS = tuple(SCHEMAS)

_AUDIT_KINDS = {
    RecordType.ENGINE_CREATED: "engine_created",
    RecordType.CAPSULE_INSTALLED: "capsule_installed",
    RecordType.CAPSULE_UNINSTALLED: "capsule_uninstalled",
    RecordType.LEARNING: "learning",
}

Resolve = Callable[[int], dict[str, Any]]


# --- converting WAL records into rows ----------------------------------------------------


def _where(record: WalRecord) -> str:
    return f"WAL record {record.sequence} ({Path(record.segment).name}, offset {record.offset})"


class _Converter:
    """Turns WAL records into the columns of the three logs.

    Capsule configs come from the install records seen so far (``installed``, which the
    caller may share across segments) and otherwise from ``resolve``.
    """

    def __init__(self, resolve: Resolve, installed: dict[int, dict[str, Any]] | None = None):
        self._resolve = resolve
        self._installed = installed if installed is not None else {}
        self._names: dict[int, CapsuleName] = {}
        self._columns = {kind: {name: [] for name in schema.names}
                         for kind, schema in SCHEMAS.items()}

    def add_all(self, records: Iterable[WalRecord]) -> _Converter:
        for record in records:
            self.add(record)
        return self

    def add(self, record: WalRecord) -> None:
        rtype = record.rtype
        try:
            kind = log_kind(rtype)
            if kind == "decisions":
                self._decision(record)
            elif kind == "feedback":
                self._feedback(record)
            elif rtype in AUDIT_TYPES:
                self._audit(record)
            else:
                raise StorageCorrupt(f"unknown record type {rtype}")
        except (StorageCorrupt, ValueError, OverflowError) as exc:
            # A payload the chain vouches for can still hold values no row can: say where.
            raise StorageCorrupt(f"{_where(record)}: {exc}") from None

    def tables(self) -> dict[str, pa.Table]:
        try:
            return {kind: pa.Table.from_pydict(self._columns[kind], schema=SCHEMAS[kind])
                    for kind in LOG_KINDS}
        except (pa.ArrowException, OverflowError) as exc:  # a value no column can hold
            raise StorageCorrupt(f"WAL records cannot be turned into log rows: {exc}") from None

    def _config(self, uid: int, record: WalRecord) -> tuple[dict[str, Any], CapsuleName]:
        config = self._installed.get(uid)
        if config is None:
            try:
                config = self._resolve(uid)
            except KeyError:
                raise StorageCorrupt(
                    f"capsule uid {uid} is unknown: no install record or checkpoint has it"
                ) from None
        name = self._names.get(uid)
        if name is None:
            try:
                name = self._names[uid] = CapsuleName.parse(config["name"])
            except (KeyError, ValueError) as exc:
                raise StorageCorrupt(f"capsule uid {uid} has a bad install config: {exc}") from None
        return config, name

    def _common(self, kind: str, record: WalRecord, decision_id: str, ts_ns: int,
                name: CapsuleName) -> dict[str, list]:
        columns = self._columns[kind]
        columns["wal_sequence"].append(record.sequence)
        columns["decision_id"].append(decision_id)
        columns["ts_ns"].append(ts_ns)
        columns["tenant"].append(name.tenant)
        columns["job"].append(name.job)
        columns["capsule"].append(name.capsule)
        columns["digest"].append(record.digest)
        return columns

    def _decision(self, record: WalRecord) -> None:
        entry = DecisionRecord.decode(record.payload)
        config, name = self._config(entry.capsule_uid, record)
        options = config["options"]
        refused = entry.option_index == REFUSED_OPTION
        if entry.option_index >= len(options) and not refused:
            raise StorageCorrupt(
                f"option index {entry.option_index} is out of range: capsule uid"
                f" {entry.capsule_uid} has {len(options)} options"
            )
        decision_id = format_decision_id(entry.sequence, config["tag"])
        columns = self._common("decisions", record, decision_id, entry.ts_ns, name)
        columns["context_key"].append(entry.context_key)
        columns["features"].append(None)
        columns["option_index"].append(entry.option_index)
        columns["option"].append(None if refused else options[entry.option_index])
        ppb = entry.propensity_ppb
        if not 0 <= ppb <= PROPENSITY_SCALE:
            raise StorageCorrupt(f"propensity {entry.propensity!r} is not a probability")
        columns["propensity_ppb"].append(ppb)
        columns["candidate_rule"].append(config["algorithm"])
        columns["refused"].append(refused)
        columns["program_result"].append(entry.result)

    def _feedback(self, record: WalRecord) -> None:
        entry = FeedbackRecord.decode(record.payload)
        config, name = self._config(entry.capsule_uid, record)
        decision_id = format_decision_id(entry.sequence, config["tag"])
        columns = self._common("feedback", record, decision_id, entry.ts_ns, name)
        columns["reward_micros"].append(round(entry.reward * REWARD_SCALE))
        columns["reward"].append(entry.reward)
        columns["cost_microcents"].append(entry.cost)

    def _audit(self, record: WalRecord) -> None:
        body = decode_json(record.payload, record.rtype)
        name = None
        try:
            if record.rtype == RecordType.CAPSULE_INSTALLED:
                config = install_config(record.payload)
                self._installed[config["uid"]] = config
                name = CapsuleName.parse(config["name"])
            elif record.rtype in (RecordType.CAPSULE_UNINSTALLED, RecordType.LEARNING):
                name = CapsuleName.parse(body["name"])
            elif record.rtype == RecordType.AUDIT and body.get("capsule") is not None:
                name = CapsuleName.parse(body["capsule"])
            kind = _AUDIT_KINDS.get(record.rtype) or body["kind"]
            if not isinstance(kind, str) or not kind:
                raise ValueError(f"kind must be a non-empty string, got {kind!r}")
            ts_ns = body.get("ts_ns")
            if ts_ns is not None and (isinstance(ts_ns, bool) or not isinstance(ts_ns, int)):
                raise ValueError(f"ts_ns must be an integer, got {ts_ns!r}")
        except (KeyError, ValueError) as exc:
            raise StorageCorrupt(f"bad {RecordType(record.rtype).name} body: {exc}") from None
        columns = self._columns["audit"]
        columns["wal_sequence"].append(record.sequence)
        columns["ts_ns"].append(ts_ns)
        columns["kind"].append(kind)
        columns["tenant"].append(name.tenant if name else None)
        columns["job"].append(name.job if name else None)
        columns["capsule"].append(name.capsule if name else None)
        columns["details"].append(record.payload.decode())
        columns["digest"].append(record.digest)


def convert(records: Iterable[WalRecord], resolve: Resolve) -> dict[str, pa.Table]:
    """The decisions, feedback and audit tables of ``records`` (keyed by kind).

    ``resolve(uid)`` returns the install config of a capsule whose install record is not
    among ``records``; it raises KeyError for a uid it does not know.
    """
    return _Converter(resolve).add_all(records).tables()
