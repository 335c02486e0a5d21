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
:meth:`~SegmentLogWriter.catch_up` checks the files at open (the rows only of segments
it has not checked before or whose files changed since) and writes any that a crash left
out or that is damaged; its ``handled_through`` tells retention which segments are safe to
remove. ``syntra verify`` checks every row of every file. :func:`read_log` joins the files with the records of segments that have
none yet (or only a damaged one), converted on the fly, so the live segment's tail is
readable too. Where retention removed a segment whose file is missing or damaged, the rows
are lost: :func:`read_log` says so (:class:`LogGaps`) rather than skip them silently.

The code lives in six modules; everything public is re-exported here:

- :mod:`~syntra.store.logs.schemas`: the three schemas and WAL record -> row conversion;
- :mod:`~syntra.store.logs.layout`: where segments and log files are, reading one, checked;
- :mod:`~syntra.store.logs.writer`: :class:`SegmentLogWriter`;
- :mod:`~syntra.store.logs.worker`: the process large seals are converted in (internal to the writer);
- :mod:`~syntra.store.logs.reader`: :func:`read_log`, :class:`StoreConfigs`, :class:`LogGaps`;
- :mod:`~syntra.store.logs.export`: :func:`export_log`.

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

from syntra.store.logs.export import EXPORT_FORMATS, Export, export_format, export_log
from syntra.store.logs.layout import (
    CHECKPOINTS_DIR,
    LOGS_DIR,
    SUFFIX,
    WAL_DIR,
    NotAStore,
    check_store,
    log_files,
    log_path,
    read_arrow,
    read_log_file,
    segment_records,
    wal_segments,
)
from syntra.store.logs.reader import Gap, LogGaps, StoreConfigs, read_log
from syntra.store.logs.schemas import (
    AUDIT_SCHEMA,
    DECISIONS_SCHEMA,
    FEEDBACK_SCHEMA,
    LOG_FORMAT,
    LOG_KINDS,
    REWARD_SCALE,
    SCHEMAS,
    Resolve,
    convert,
)
from syntra.store.logs.writer import LogWriteFailed, SegmentLogWriter

__all__ = [
    "AUDIT_SCHEMA", "CHECKPOINTS_DIR", "DECISIONS_SCHEMA", "EXPORT_FORMATS", "FEEDBACK_SCHEMA",
    "LOGS_DIR", "LOG_FORMAT", "LOG_KINDS", "REWARD_SCALE", "SCHEMAS", "SUFFIX", "WAL_DIR",
    "Export", "Gap", "LogGaps", "LogWriteFailed", "NotAStore", "Resolve", "SegmentLogWriter",
    "StoreConfigs", "check_store", "convert", "export_format", "export_log", "log_files",
    "log_path", "read_arrow", "read_log", "read_log_file", "segment_records", "wal_segments",
]
