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
:meth:`~SegmentLogWriter.catch_up` checks every file at open and writes any that a crash
left out or that is damaged; its ``handled_through`` tells retention which segments are
safe to remove. :func:`read_log` joins the files with the records of segments that have
none yet (or only a damaged one), converted on the fly, so the live segment's tail is
readable too. Where retention removed a segment whose file is missing or damaged, the rows
are lost: :func:`read_log` says so (:class:`LogGaps`) rather than skip them silently.

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
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc

from syntra.errors import StorageCorrupt, StorageError, SyntraError
from syntra.names import CapsuleName
from syntra.store import checkpoint as ckpt
from syntra.store.records import (
    PROPENSITY_SCALE,
    DecisionRecord,
    FeedbackRecord,
    RecordType,
    decode_json,
)
from syntra.store.files import make_directory, write_atomically
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


def _write_arrow(table: pa.Table) -> Callable[[BinaryIO], None]:
    def write(file: BinaryIO) -> None:
        with pa.ipc.new_file(file, table.schema) as writer:
            writer.write_table(table)
    return write


def read_arrow(path: str | os.PathLike) -> pa.Table:
    """Read one Arrow IPC file, unchecked (see :func:`read_log_file` for a checked read)."""
    with pa.memory_map(os.fspath(path)) as source:
        return pa.ipc.open_file(source).read_all()


def read_log_file(path: str | os.PathLike, kind: str, *, full: bool = True,
                  within: tuple[int, int] | None = None, after: int = 0) -> pa.Table:
    """Read the ``kind`` log file at ``path``, or raise :class:`StorageCorrupt` naming it.

    The file must open as an Arrow IPC file with the schema of ``kind`` (names, types,
    nullability and the ``syntra.log`` metadata; the field docs may differ), and its
    ``wal_sequence`` must be free of nulls, strictly increasing, greater than ``after`` and,
    with ``within=(first, last)``, inside that range of a segment. ``full`` also validates
    every value (UTF-8, offsets), which reads the whole file.
    """
    expected = SCHEMAS[kind]
    try:
        table = read_arrow(path)
        table.validate(full=full)
    except (pa.ArrowException, OSError) as exc:
        raise StorageCorrupt(f"Arrow log {path} cannot be read: {exc}") from None
    metadata = table.schema.metadata or {}
    if not table.schema.equals(expected) or metadata.get(b"syntra.log") != kind.encode():
        raise StorageCorrupt(f"Arrow log {path} does not have the schema of the {kind} log")
    if metadata.get(b"syntra.log_format") != LOG_FORMAT.encode():
        raise StorageCorrupt(f"Arrow log {path} is not in log format {LOG_FORMAT}")
    sequences = table.column("wal_sequence")
    if not table.num_rows:
        return table
    if sequences.null_count or (len(sequences) > 1 and not pc.all(
            pc.less(sequences[:-1], sequences[1:])).as_py()):
        raise StorageCorrupt(f"Arrow log {path}: its wal_sequence column is not strictly"
                             " increasing")
    low, high = sequences[0].as_py(), sequences[-1].as_py()
    if low <= after or (within is not None and not within[0] <= low <= high <= within[1]):
        where = (f"WAL sequences {within[0]}-{within[1]}" if within is not None
                 else f"WAL sequences after {after}")
        raise StorageCorrupt(f"Arrow log {path} holds rows for WAL sequences {low}-{high},"
                             f" outside its segment's {where}")
    return table


def log_path(store_path: str | os.PathLike, kind: str, segment_path: str | os.PathLike) -> Path:
    """Where the ``kind`` log of a WAL segment goes: logs/<kind>/<segment name>.arrow."""
    return Path(store_path) / LOGS_DIR / kind / (Path(segment_path).stem + SUFFIX)


def log_files(store_path: str | os.PathLike, kind: str) -> dict[int, Path]:
    """{segment number: path} of the ``kind`` log files in a store."""
    return _numbered_files(Path(store_path) / LOGS_DIR / kind, _LOG_FILE)


class LogWriteFailed(StorageError):
    """The Arrow logs of a WAL segment could not be written (I/O error, disk full).

    The WAL still holds the segment's records; the next :meth:`SegmentLogWriter.catch_up`
    tries again, and retention must keep the segment until then.
    """


def _covers(sequences: list[pa.ChunkedArray], first: int, last: int) -> bool:
    """Whether ``sequences`` (each in [first, last]) hold every sequence of the range once."""
    total = sum(len(s) for s in sequences)
    if total != last - first + 1:
        return False
    if not total:
        return True
    merged = pa.chunked_array([chunk for s in sequences for chunk in s.chunks], pa.uint64())
    return len(pc.unique(merged)) == total


class SegmentLogWriter:
    """Writes the Arrow logs of sealed WAL segments into ``<store_path>/logs/``.

    ``resolve(uid)`` returns the install config of any capsule ever installed (an engine
    passes ``engine.capsule_config``); install records in the segment itself are used
    first, so a capsule installed just before a seal needs no lookup. Thread-safe.

    ``handled_through`` is the last WAL sequence through which every segment, from the
    first one :meth:`catch_up` saw, has complete and valid log files: a segment whose logs
    failed holds it back until a later catch-up writes them. Retention must never remove a
    segment above it. It is 0 until :meth:`catch_up` runs.
    """

    def __init__(self, store_path: str | os.PathLike, resolve: Resolve):
        self.store_path = Path(store_path)
        self._resolve = resolve
        self._lock = threading.Lock()
        self.handled_through = 0
        self._next = 1  # number of the segment handled_through waits for
        self._done: dict[int, int] = {}  # segment number -> last sequence, beyond _next

    def write(self, segment) -> list[Path]:
        """Make the log files of a sealed segment (a ``SegmentInfo``) complete and valid;
        return the files written.

        A file that exists is kept if it checks out (:func:`read_log_file`, and the three
        files together hold each sequence of the segment once); a missing or bad one is
        written from the WAL, atomically. Returns [] when all three were fine. On success
        the segment counts as handled (see ``handled_through``). Raises, and the segment
        stays unhandled, :class:`StorageCorrupt` if the segment's records cannot be read
        or converted, :class:`LogWriteFailed` if a file cannot be written.
        """
        if not segment.sealed:
            raise ValueError(
                f"segment {segment.number} is live: only sealed segments get log files")
        with self._lock:
            self._done.pop(segment.number, None)
            written = self._write(segment)
            if segment.number >= self._next:
                self._done[segment.number] = segment.last_sequence
            while self._next in self._done:
                self.handled_through = self._done.pop(self._next)
                self._next += 1
            return written

    def _write(self, segment) -> list[Path]:
        paths = {kind: log_path(self.store_path, kind, segment.path) for kind in LOG_KINDS}
        span = (segment.first_sequence, segment.last_sequence)
        kept: dict[str, pa.Table] = {}
        for kind, path in paths.items():
            if not os.path.exists(path):
                continue
            try:
                kept[kind] = read_log_file(path, kind, full=False, within=span)
            except StorageCorrupt as exc:
                log.warning("%s; rewriting it from the WAL", exc)
        if len(kept) == len(paths) and _covers(
                [table.column("wal_sequence") for table in kept.values()], *span):
            return []
        tables = self._convert(segment)
        written = []
        for kind, path in paths.items():
            if kind in kept and kept[kind].equals(tables[kind]):
                continue
            if kind in kept:  # readable, but not this segment's rows
                log.warning("Arrow log %s does not match its WAL segment; rewriting it", path)
            try:
                make_directory(path.parent)
                write_atomically(path, _write_arrow(tables[kind]))
            except OSError as exc:
                raise LogWriteFailed(f"cannot write Arrow log {path}: {exc}") from None
            written.append(path)
        return written

    def _convert(self, segment) -> dict[str, pa.Table]:
        try:
            records = segment_records(segment.path)
        except WalCorrupt as exc:
            raise StorageCorrupt(f"WAL damaged: {exc}") from None
        except OSError as exc:
            raise LogWriteFailed(f"cannot read WAL segment {segment.path}: {exc}") from None
        return convert(records, self._resolve)

    def catch_up(self, wal) -> int:
        """Check the log files of every sealed segment of ``wal``, write the missing or bad
        ones, and return ``handled_through``.

        Run at open, so a crash between a seal and its logs loses no log for good, and a
        damaged file is replaced while its segment is still there. A segment that fails is
        logged at ERROR and holds the watermark back (later segments are still written):
        the WAL keeps its records, and the next catch-up tries again.
        """
        self._remove_leftovers()
        segments = list(wal.segments)
        if not segments:
            return self.handled_through
        with self._lock:
            # Start over from the first segment there is: each is checked again below, and
            # what a seal handler finished meanwhile is kept.
            self._next = segments[0].number
            self.handled_through = segments[0].first_sequence - 1
            self._done = {n: last for n, last in self._done.items() if n >= self._next}
        for segment in segments:
            if not segment.sealed:
                continue
            try:
                self.write(segment)
            except Exception as exc:  # noqa: BLE001 (one segment must not stop the others)
                log.error("cannot write the Arrow logs of WAL segment %s: %s: %s",
                          segment.path, type(exc).__name__, exc)
        return self.handled_through

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
        for path in log_files(self.store_path, "audit").values():
            try:
                table = read_log_file(path, "audit", full=False)
            except StorageCorrupt as exc:
                log.warning("capsule configs: skipping %s", exc)  # the checkpoints may have them
                continue
            table = table.filter(pc.field("kind") == "capsule_installed")
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


@dataclass(frozen=True)
class Gap:
    """WAL sequences whose rows a log has lost: retention removed their segments from the
    WAL and their log files are missing or damaged. ``segments`` are the first and last
    segment number; ``reasons`` says what is wrong with each file."""
    kind: str
    first_sequence: int
    last_sequence: int | None  # None: no later segment tells where the loss ends
    segments: tuple[int, int]
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        first, last = self.segments
        segments = f"segment {first}" if first == last else f"segments {first}-{last}"
        sequences = (f"from {self.first_sequence}" if self.last_sequence is None
                     else f"{self.first_sequence}-{self.last_sequence}")
        return (f"WAL sequences {sequences} ({segments}, removed from the WAL:"
                f" {'; '.join(self.reasons)})")


class LogGaps(StorageCorrupt):
    """Rows of a log are lost for good (see :class:`Gap`); ``gaps`` lists them."""

    def __init__(self, kind: str, gaps: list[Gap]):
        super().__init__(f"the {kind} log is missing rows: {', '.join(map(str, gaps))}")
        self.gaps = gaps


def read_log(store_path: str | os.PathLike, kind: str = "decisions",
             since: int | None = None, *, allow_gaps: bool = False) -> pa.Table:
    """Every row of the ``kind`` log ("decisions", "feedback" or "audit"), in WAL order.

    Joins the log files with the rows of every segment that has none (the live one, and
    any a crash left without logs), converted from the WAL on the fly. A log file that
    cannot be read (see :func:`read_log_file`) is replaced the same way while its segment
    is in the WAL. Files of segments that retention removed from the WAL are kept and
    included. With ``since``, only rows with ``wal_sequence > since``. Works while an
    engine has the store open.

    Raises :class:`StorageCorrupt` if the WAL is damaged, :class:`StorageError` if the
    store cannot be read, and :class:`LogGaps` if rows after ``since`` are lost (a removed segment whose file is missing or damaged); with
    ``allow_gaps=True`` the rows that are left are returned and the gaps logged.
    """
    table, gaps = _read_log(store_path, kind, since)
    if gaps and not allow_gaps:
        raise LogGaps(kind, gaps)
    for gap in gaps:
        log.warning("the %s log is missing rows: %s", kind, gap)
    return table


def _read_log(store_path: str | os.PathLike, kind: str,
              since: int | None) -> tuple[pa.Table, list[Gap]]:
    _check_kind(kind)
    _check_since(since)
    store = check_store(store_path)
    try:
        parts, lost = _LogReader(store, kind).read()
    except OSError as exc:  # a directory or segment we may not read: not the output's fault
        raise StorageError(f"cannot read the store {str(store)!r}: {exc}") from None
    table = pa.concat_tables(parts) if parts else SCHEMAS[kind].empty_table()
    if since is not None:
        later = pc.greater(table.column("wal_sequence"), pa.scalar(since, pa.uint64()))
        table = table.filter(later)
    # A loss that ends at or before ``since`` takes no row the caller asked for.
    gaps = [gap for gap in lost
            if since is None or gap.last_sequence is None or gap.last_sequence > since]
    return table, gaps


class _LogReader:
    """Reads one log of a store segment by segment, noting the segments whose rows are lost."""

    def __init__(self, store: Path, kind: str):
        self.store = store
        self.kind = kind
        self.segments = wal_segments(store)
        self.live = max(self.segments, default=None)
        self.configs = StoreConfigs(store)
        self._spans: dict[int, tuple[int | None, int | None]] = {}

    def read(self) -> tuple[list[pa.Table], list[Gap]]:
        files = log_files(self.store, self.kind)
        parts: list[pa.Table] = []
        lost: dict[int, str] = {}  # segment number -> why its rows are lost
        after = 0  # the last sequence read: each part must come after it
        top = max(self.segments.keys() | files.keys(), default=0)
        for number in range(1, top + 1):
            table, why = self._segment(number, files.get(number), after)
            if table is None:
                lost[number] = why
                continue
            parts.append(table)
            if table.num_rows:
                after = table.column("wal_sequence")[-1].as_py()
        return parts, self._gaps(lost)

    def _segment(self, number: int, path: Path | None, after: int) -> tuple[pa.Table | None, str]:
        """The rows of segment ``number``, or None and why they are lost."""
        in_wal = number in self.segments
        if path is not None and number != self.live:
            try:
                first, last = self.span(number) if in_wal else (None, None)
                within = (first, last) if first is not None and last is not None else None
                table = read_log_file(path, self.kind, within=within, after=after)
                if within is None or self._complete(number, table, within):
                    return table, ""
                why = f"the Arrow logs of WAL segment {number} do not hold each of its records"
            except StorageCorrupt as exc:
                why = str(exc)
            if in_wal:
                log.warning("%s; reading its segment from the WAL instead", why)
        else:
            why = f"{self._relative(number)} is missing"
        if not in_wal:
            return None, why
        try:
            # The live segment may end in a record that is still being written.
            records = segment_records(self.segments[number], sealed=number != self.live)
        except FileNotFoundError:
            # Retention removed it since the listing, after its files were written.
            path = log_path(self.store, self.kind, self.segments[number])
            try:
                return read_log_file(path, self.kind, after=after), ""
            except StorageCorrupt as exc:
                return None, f"its WAL segment was removed while it was read, and {exc}"
        except WalCorrupt as exc:
            raise StorageCorrupt(f"WAL damaged: {exc}") from None
        converter = _Converter(self.configs, installed=self.configs.installed)
        return converter.add_all(records).tables()[self.kind], ""

    def _complete(self, number: int, table: pa.Table, span: tuple[int, int]) -> bool:
        """Whether the segment's three files hold each sequence of ``span`` once: a file
        can read well and still lack rows (an empty table has the right schema)."""
        sequences = [table.column("wal_sequence")]
        for kind in LOG_KINDS:
            if kind != self.kind:
                path = log_path(self.store, kind, self.segments[number])
                try:
                    other = read_log_file(path, kind, full=False, within=span)
                except StorageCorrupt:
                    return False
                sequences.append(other.column("wal_sequence"))
        return _covers(sequences, *span)

    def _relative(self, number: int) -> str:
        return f"{LOGS_DIR}/{self.kind}/wal-{number:016d}{SUFFIX}"

    def span(self, number: int) -> tuple[int | None, int | None]:
        """(first, last) sequence of segment ``number``, each None where nothing tells."""
        if number not in self._spans:
            self._spans[number] = self._find_span(number)
        return self._spans[number]

    def _find_span(self, number: int) -> tuple[int | None, int | None]:
        path = self.segments.get(number)
        if path is not None:
            try:
                first = _segment_first_sequence(path)
                if number == self.live:
                    return first, None
                if number + 1 in self.segments:
                    return first, _segment_first_sequence(self.segments[number + 1]) - 1
                records = segment_records(path)
                return first, (records[-1].sequence if records else first - 1)
            except (StorageCorrupt, WalCorrupt, OSError):
                pass  # unreadable or removed meanwhile: let its log files tell
        # The three files of a segment together hold each of its sequences once.
        bounds = []
        for kind in LOG_KINDS:
            try:
                table = read_log_file(log_path(self.store, kind, f"wal-{number:016d}.seg"),
                                      kind, full=False)
            except StorageCorrupt:
                continue
            if table.num_rows:
                sequences = table.column("wal_sequence")
                bounds += [sequences[0].as_py(), sequences[-1].as_py()]
        return (min(bounds), max(bounds)) if bounds else (None, None)

    def _gaps(self, lost: dict[int, str]) -> list[Gap]:
        gaps = []
        numbers = sorted(lost)
        top = max(self.segments.keys() | lost.keys())
        while numbers:
            first = last = numbers.pop(0)
            while numbers and numbers[0] == last + 1:
                last = numbers.pop(0)
            before = next((end for n in range(first - 1, 0, -1)
                           if (end := self.span(n)[1]) is not None), 0)
            after = next((start for n in range(last + 1, top + 1)
                          if (start := self.span(n)[0]) is not None), None)
            reasons = tuple(lost[n] for n in range(first, last + 1))
            gaps.append(Gap(self.kind, before + 1, None if after is None else after - 1,
                            (first, last), reasons))
        return gaps


def _segment_first_sequence(path: Path) -> int:
    """The first sequence a segment's header names (docs/wal-format.md: u64 at offset 24)."""
    try:
        with open(path, "rb") as file:
            header = file.read(32)
    except OSError as exc:
        raise StorageCorrupt(f"WAL segment {path} cannot be read: {exc}") from None
    if len(header) < 32:
        raise StorageCorrupt(f"WAL damaged: segment {path} has no complete header")
    return int.from_bytes(header[24:32], "little")


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
    gaps: tuple[Gap, ...] = ()  # rows lost for good, left out (only with allow_gaps)


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
               since: int | None = None, allow_gaps: bool = False) -> Export:
    """Write the ``kind`` log (see :func:`read_log`) to ``out``: an Arrow IPC file or
    Parquet, by the extension. The file appears complete or not at all; OSError if it
    cannot be written, :class:`LogGaps` if rows are lost, unless ``allow_gaps`` (then
    :attr:`Export.gaps` lists them)."""
    fmt = export_format(out)
    table, gaps = _read_log(store_path, kind, since)
    if gaps and not allow_gaps:
        raise LogGaps(kind, gaps)
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
        gaps=tuple(gaps),
    )


__all__ = [
    "AUDIT_SCHEMA", "DECISIONS_SCHEMA", "FEEDBACK_SCHEMA", "LOG_KINDS", "SCHEMAS", "Export",
    "Gap", "LogGaps", "LogWriteFailed", "NotAStore", "SegmentLogWriter", "StoreConfigs",
    "check_store", "convert", "export_log", "export_format", "log_files", "log_path",
    "read_arrow", "read_log", "read_log_file", "segment_records", "wal_segments",
]
