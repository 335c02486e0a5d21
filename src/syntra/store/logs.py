"""Arrow IPC logs of decisions, feedback and audit events: one file of each per WAL segment.

Layout inside a store directory::

    logs/decisions/wal-0000000000000001.arrow
    logs/feedback/wal-0000000000000001.arrow
    logs/audit/wal-0000000000000001.arrow

Each file is in the Arrow IPC *file* format (random access, uncompressed, so readers can
memory-map it) with the schema of its kind: :data:`DECISIONS_SCHEMA`,
:data:`FEEDBACK_SCHEMA` or :data:`AUDIT_SCHEMA`. ``pyarrow.ipc.open_file`` and
``polars.read_ipc`` read a file directly; DuckDB queries a table from :func:`read_log` (a
replacement scan of the Python variable) or a Parquet export (``SELECT ... FROM
'decisions.parquet'``).

The logs are derived from the WAL, which stays the record of truth. :class:`SegmentLogWriter`
writes a segment's three files once the WAL seals it, atomically and idempotently, and its
:meth:`~SegmentLogWriter.catch_up` writes any that a crash left out. :func:`read_log` joins
the files with the records of segments that have none yet, converted on the fly, so the
live segment's tail is readable too.

Example:

>>> import tempfile
>>> from syntra import Engine
>>> from syntra.store.logs import read_log
>>> with tempfile.TemporaryDirectory() as store:
...     with Engine.open(store, durability="none") as eng:
...         cap = eng.install("tenants/acme/jobs/llm/capsules/router", options=["a", "b"])
...         d = cap.decide("vip")
...         cap.feedback(d.decision_id, 1.0)
...     decisions = read_log(store, "decisions")
...     feedback = read_log(store, "feedback")
...     audit = read_log(store, "audit")
>>> decisions.column("decision_id").to_pylist() == [d.decision_id]
True
>>> feedback.column("reward_micros").to_pylist()
[1000000]
>>> audit.column("kind").to_pylist()
['engine_created', 'capsule_installed']
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc

from syntra.errors import StorageCorrupt, SyntraError
from syntra.names import CapsuleName
from syntra.store import checkpoint as ckpt
from syntra.store.records import (
    PROPENSITY_SCALE,
    DecisionRecord,
    FeedbackRecord,
    RecordType,
    decode_json,
)
from syntra_core.wal import WalCorrupt, WalRecord, scan_segment

log = logging.getLogger("syntra.store")

LOGS_DIR = "logs"
WAL_DIR = "wal"
CHECKPOINTS_DIR = "checkpoints"
SUFFIX = ".arrow"
REWARD_SCALE = 1_000_000  # rewards are also logged in micro-units
LOG_FORMAT = "1"
# Export formats by file extension.
EXPORT_FORMATS = {".arrow": "arrow", ".parquet": "parquet"}

_SEGMENT_FILE = re.compile(r"^wal-(\d{16})\.seg$")
_LOG_FILE = re.compile(r"^wal-(\d{16})\.arrow$")


class NotAStore(SyntraError, ValueError):
    """The directory does not exist or holds no Syntra store (no ``wal/`` directory)."""


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
    _field("option_index", pa.uint16(), "index of the chosen option in the capsule's options"),
    _field("option", pa.string(), "name of the chosen option"),
    _field("propensity_ppb", pa.uint32(), "probability of choosing that option, in parts per"
           " billion: round(propensity * 1e9)"),
    _field("candidate_rule", pa.string(), "the decision rule that chose (the capsule's algorithm)"),
    _field("refused", pa.bool_(), "true if the engine refused to decide (never, today)"),
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
            if rtype == RecordType.DECISION:
                self._decision(record)
            elif rtype == RecordType.FEEDBACK:
                self._feedback(record)
            elif rtype in _AUDIT_KINDS or rtype == RecordType.AUDIT:
                self._audit(record)
            else:
                raise StorageCorrupt(f"unknown record type {rtype}")
        except (StorageCorrupt, ValueError, OverflowError) as exc:
            # A payload the chain vouches for can still hold values no row can: say where.
            raise StorageCorrupt(f"{_where(record)}: {exc}") from None

    def tables(self) -> dict[str, pa.Table]:
        return {kind: pa.Table.from_pydict(self._columns[kind], schema=SCHEMAS[kind])
                for kind in LOG_KINDS}

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
        if entry.option_index >= len(options):
            raise StorageCorrupt(
                f"option index {entry.option_index} is out of range: capsule uid"
                f" {entry.capsule_uid} has {len(options)} options"
            )
        columns = self._common("decisions", record, f"{entry.sequence:016x}-{config['tag']}",
                               entry.ts_ns, name)
        columns["context_key"].append(entry.context_key)
        columns["features"].append(None)
        columns["option_index"].append(entry.option_index)
        columns["option"].append(options[entry.option_index])
        ppb = round(entry.propensity * PROPENSITY_SCALE)
        if not 0 <= ppb <= PROPENSITY_SCALE:
            raise StorageCorrupt(f"propensity {entry.propensity!r} is not a probability")
        columns["propensity_ppb"].append(ppb)
        columns["candidate_rule"].append(config["algorithm"])
        columns["refused"].append(False)

    def _feedback(self, record: WalRecord) -> None:
        entry = FeedbackRecord.decode(record.payload)
        config, name = self._config(entry.capsule_uid, record)
        columns = self._common("feedback", record, f"{entry.sequence:016x}-{config['tag']}",
                               entry.ts_ns, name)
        columns["reward_micros"].append(round(entry.reward * REWARD_SCALE))
        columns["reward"].append(entry.reward)

    def _audit(self, record: WalRecord) -> None:
        body = decode_json(record.payload, record.rtype)
        name = None
        try:
            if record.rtype == RecordType.CAPSULE_INSTALLED:
                config = {key: value for key, value in body.items() if key != "ts_ns"}
                self._installed[config["uid"]] = config
                name = CapsuleName.parse(config["name"])
            elif record.rtype == RecordType.CAPSULE_UNINSTALLED:
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


# --- reading WAL segments ----------------------------------------------------------------


def segment_records(path: str | os.PathLike, *, sealed: bool = True) -> list[WalRecord]:
    """The verified records of one segment file, read-only (the segments before it are not
    re-hashed). Raises :class:`~syntra_core.wal.WalCorrupt` (naming ``path``) on damage.
    """
    return list(scan_segment(path, sealed=sealed))


def _segment_number(name: str, pattern: re.Pattern) -> int | None:
    match = pattern.match(name)
    return int(match.group(1)) if match else None


def wal_segments(store_path: str | os.PathLike) -> dict[int, Path]:
    """{segment number: path} of the WAL segment files in a store."""
    return _numbered_files(Path(store_path) / WAL_DIR, _SEGMENT_FILE)


def _numbered_files(directory: Path, pattern: re.Pattern) -> dict[int, Path]:
    found = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return found
    for name in names:
        number = _segment_number(name, pattern)
        if number is not None:
            found[number] = directory / name
    return dict(sorted(found.items()))


def check_store(store_path: str | os.PathLike) -> Path:
    """``store_path`` as a Path, or :class:`NotAStore` if it is not a store directory."""
    path = Path(store_path)
    if not path.is_dir():
        raise NotAStore(f"{str(path)!r} does not exist or is not a directory")
    if not (path / WAL_DIR).is_dir():
        raise NotAStore(f"{str(path)!r} is not a Syntra store: it has no {WAL_DIR}/ directory")
    return path


# --- writing -----------------------------------------------------------------------------


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_directory(directory: Path) -> None:
    """Create ``directory`` (and missing parents) durably: each new entry's parent is synced."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        _fsync_directory(path.parent)


def write_atomically(path: Path, write: Callable[[BinaryIO], None], *, sync: bool = True) -> None:
    """Create ``path`` with ``write(file)``: a temporary file, fsync, rename, directory fsync.

    A crash leaves either no file or the complete one (and maybe a ``.*.tmp`` leftover).
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            if sync:
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if sync:
        _fsync_directory(path.parent)


def _write_arrow(table: pa.Table) -> Callable[[BinaryIO], None]:
    def write(file: BinaryIO) -> None:
        with pa.ipc.new_file(file, table.schema) as writer:
            writer.write_table(table)
    return write


def read_arrow(path: str | os.PathLike) -> pa.Table:
    """Read one Arrow IPC log file."""
    with pa.memory_map(os.fspath(path)) as source:
        return pa.ipc.open_file(source).read_all()


def log_path(store_path: str | os.PathLike, kind: str, segment_path: str | os.PathLike) -> Path:
    """Where the ``kind`` log of a WAL segment goes: logs/<kind>/<segment name>.arrow."""
    return Path(store_path) / LOGS_DIR / kind / (Path(segment_path).stem + SUFFIX)


class SegmentLogWriter:
    """Writes the Arrow logs of sealed WAL segments into ``<store_path>/logs/``.

    ``resolve(uid)`` returns the install config of any capsule ever installed (an engine
    passes ``engine.capsule_config``); install records in the segment itself are used
    first, so a capsule installed just before a seal needs no lookup. Thread-safe.
    """

    def __init__(self, store_path: str | os.PathLike, resolve: Resolve):
        self.store_path = Path(store_path)
        self._resolve = resolve
        self._lock = threading.Lock()

    def write(self, segment) -> list[Path]:
        """Write the missing log files of a sealed segment (a ``SegmentInfo``); return them.

        Idempotent: a file that exists is complete (it was renamed into place) and is kept.
        """
        if not segment.sealed:
            raise ValueError(
                f"segment {segment.number} is live: only sealed segments get log files")
        with self._lock:
            missing = {kind: log_path(self.store_path, kind, segment.path) for kind in LOG_KINDS}
            missing = {kind: path for kind, path in missing.items() if not path.exists()}
            if not missing:
                return []
            tables = convert(segment_records(segment.path), self._resolve)
            for kind, path in missing.items():
                _make_directory(path.parent)
                write_atomically(path, _write_arrow(tables[kind]))
            return list(missing.values())

    def catch_up(self, wal) -> list[Path]:
        """Write the missing log files of every sealed segment of ``wal``; return them.

        Run at open, so a crash between a seal and its logs loses no log for good. A
        segment that fails is logged at ERROR and skipped: the WAL still holds its
        records, and the next open tries again.
        """
        self._remove_leftovers()
        written = []
        for segment in wal.segments:
            if not segment.sealed:
                continue
            try:
                written += self.write(segment)
            except Exception:
                log.exception("cannot write the Arrow logs of WAL segment %s", segment.path)
        return written

    def _remove_leftovers(self) -> None:
        for kind in LOG_KINDS:
            directory = self.store_path / LOGS_DIR / kind
            if directory.is_dir():
                for leftover in directory.glob(".*.tmp"):
                    leftover.unlink(missing_ok=True)


# --- reading -----------------------------------------------------------------------------


class StoreConfigs:
    """``uid -> install config`` from a store directory alone, without a running engine.

    Looks in the install rows of the audit logs, then in the checkpoints (which keep the
    configs of capsules whose install record retention removed), each read once, when
    first needed. :func:`read_log` also feeds it the install records of the segments it
    converts.
    """

    def __init__(self, store_path: str | os.PathLike):
        self.store_path = Path(store_path)
        self.installed: dict[int, dict[str, Any]] = {}
        self._sources = [self._from_audit_logs, self._from_checkpoints]

    def __call__(self, uid: int) -> dict[str, Any]:
        while uid not in self.installed and self._sources:
            self._sources.pop(0)()
        return self.installed[uid]

    def _learn(self, config: dict[str, Any]) -> None:
        self.installed.setdefault(config["uid"], config)

    def _from_audit_logs(self) -> None:
        for path in _numbered_files(self.store_path / LOGS_DIR / "audit", _LOG_FILE).values():
            table = read_arrow(path).filter(pc.field("kind") == "capsule_installed")
            for details in table.column("details").to_pylist():
                config = json.loads(details)
                config.pop("ts_ns", None)
                self._learn(config)

    def _from_checkpoints(self) -> None:
        for path in ckpt.list_checkpoints(self.store_path / CHECKPOINTS_DIR):
            try:
                checkpoint = ckpt.read_checkpoint(path)
            except StorageCorrupt as exc:
                log.warning("capsule configs: skipping %s", exc)
                continue
            for entry in checkpoint.capsules:
                self._learn(entry["config"])
            for config in checkpoint.engine.get("retired", []):
                self._learn(config)


def _check_kind(kind: str) -> None:
    if kind not in SCHEMAS:
        raise ValueError(f"kind must be one of {', '.join(LOG_KINDS)}; got {kind!r}")


def _check_since(since: int | None) -> None:
    if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
        raise ValueError(f"since must be a WAL sequence (an integer >= 0), got {since!r}")


def read_log(store_path: str | os.PathLike, kind: str = "decisions",
             since: int | None = None) -> pa.Table:
    """Every row of the ``kind`` log ("decisions", "feedback" or "audit"), in WAL order.

    Joins the log files with the rows of every segment that has none (the live one, and
    any a crash left without logs), converted from the WAL on the fly. Files of segments
    that retention removed from the WAL are kept and included. With ``since``, only rows
    with ``wal_sequence > since``. Works while an engine has the store open.
    """
    _check_kind(kind)
    _check_since(since)
    store = check_store(store_path)
    segments = wal_segments(store)
    logged = _numbered_files(store / LOGS_DIR / kind, _LOG_FILE)
    live = max(segments, default=None)
    configs = StoreConfigs(store)
    parts = []
    for number in sorted(segments.keys() | logged.keys()):
        if number in logged and number != live:
            parts.append(read_arrow(logged[number]))
            continue
        try:
            # The live segment may end in a record that is still being written.
            records = segment_records(segments[number], sealed=number != live)
        except FileNotFoundError:
            # Retention removed it since the listing: its files are complete by now, or it
            # never had any to lose.
            path = log_path(store, kind, segments[number])
            if path.exists():
                parts.append(read_arrow(path))
            continue
        except WalCorrupt as exc:
            raise StorageCorrupt(f"WAL damaged: {exc}") from None
        converter = _Converter(configs, installed=configs.installed)
        parts.append(converter.add_all(records).tables()[kind])
    table = pa.concat_tables(parts) if parts else SCHEMAS[kind].empty_table()
    if since is not None:
        later = pc.greater(table.column("wal_sequence"), pa.scalar(since, pa.uint64()))
        table = table.filter(later)
    return table


# --- export ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Export:
    """What :func:`export_log` wrote."""
    path: Path
    format: str  # "arrow" or "parquet"
    kind: str
    rows: int
    first_sequence: int | None  # None when no row was written
    last_sequence: int | None


def export_format(path: str | os.PathLike) -> str:
    """"arrow" or "parquet", from the extension of ``path``; ValueError for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise ValueError(
            f"cannot tell the format of {str(path)!r}: the file name must end in"
            f" {' or '.join(EXPORT_FORMATS)}"
        )
    return EXPORT_FORMATS[suffix]


def export_log(store_path: str | os.PathLike, out: str | os.PathLike, *, kind: str = "decisions",
               since: int | None = None) -> Export:
    """Write the ``kind`` log (see :func:`read_log`) to ``out``: an Arrow IPC file or
    Parquet, by the extension. The file appears complete or not at all; OSError if it
    cannot be written."""
    fmt = export_format(out)
    table = read_log(store_path, kind, since)
    out = Path(out)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        def write(file: BinaryIO) -> None:
            pq.write_table(table, file)
    else:
        write = _write_arrow(table)
    write_atomically(out, write, sync=False)
    sequences = table.column("wal_sequence")
    return Export(
        path=out, format=fmt, kind=kind, rows=table.num_rows,
        first_sequence=pc.min(sequences).as_py() if table.num_rows else None,
        last_sequence=pc.max(sequences).as_py() if table.num_rows else None,
    )


__all__ = [
    "AUDIT_SCHEMA", "DECISIONS_SCHEMA", "FEEDBACK_SCHEMA", "LOG_KINDS", "SCHEMAS", "Export",
    "NotAStore", "SegmentLogWriter", "StoreConfigs", "check_store", "convert", "export_log",
    "export_format", "log_path", "read_arrow", "read_log", "segment_records", "wal_segments",
]
