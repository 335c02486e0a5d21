"""Writing the Arrow logs of sealed WAL segments: :class:`SegmentLogWriter`.

It writes a segment's three files once the WAL seals it, checks them all at open
(:meth:`~SegmentLogWriter.catch_up`), and tells retention through ``handled_through``
which segments are safe to remove. A large sealed segment is converted in a worker
process (:mod:`~syntra.store.logs.worker`), so the conversion does not hold the serving
process's GIL for seconds; :func:`write_segment_logs` is what runs there.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from syntra.errors import InvalidConfig, StorageCorrupt, StorageError
from syntra.store.files import make_directory, remove_leftovers, write_atomically
from syntra.store.logs.layout import (
    LOGS_DIR,
    _covers,
    _write_arrow,
    check_log_file_schema,
    log_path,
    read_log_file,
    segment_records,
)
from syntra.store.logs.schemas import LOG_KINDS, Resolve, convert
from syntra.store.logs.worker import LogWorker, WorkerDied
from syntra_core.wal import WalCorrupt
from syntra_core.wal_format import SegmentInfo

log = logging.getLogger("syntra.store")

# What the last catch-up that handled every sealed segment vouches for (see catch_up).
_CHECKED = ".checked.json"
# How long before a catch-up started its note says it checked the files: a file's mtime
# comes from a coarser clock than time.time_ns(), and may lag it by a tick.
_CLOCK_MARGIN_NS = 1_000_000_000
# Sealed segments of at least this many records are converted in the worker process: a
# smaller one holds the GIL for less than ~70 ms, not worth a round trip to another process.
OFFLOAD_RECORDS = 10_000


class LogWriteFailed(StorageError):
    """The Arrow logs of a WAL segment could not be written (I/O error, disk full).

    The WAL still holds the segment's records; the next :meth:`SegmentLogWriter.catch_up`
    tries again, and retention must keep the segment until then.
    """


class SegmentLogWriter:
    """Writes the Arrow logs of sealed WAL segments into ``<store_path>/logs/``.

    ``resolve(uid)`` returns the install config of any capsule ever installed (an engine
    passes ``engine.capsule_config``); install records in the segment itself are used
    first, so a capsule installed just before a seal needs no lookup. Thread-safe.

    ``handled_through`` is the last WAL sequence through which every segment, from the
    first one :meth:`catch_up` saw, has complete and valid log files: a segment whose logs
    failed holds it back until a later catch-up writes them. Retention must never remove a
    segment above it. It is 0 until :meth:`catch_up` runs.

    :meth:`write` converts a segment of ``offload_records`` records or more in a worker
    process (started by the first such segment, stopped with the thread that hands it
    segments, by :meth:`close`, or with the writer), asking ``resolve`` for the configs it
    needs; ``offload_records=None`` keeps every conversion in this process. If the worker
    dies, the segment is converted here instead, with a warning. :meth:`catch_up` always
    converts here: it runs at open, before anything is served.
    """

    def __init__(self, store_path: str | os.PathLike, resolve: Resolve, *,
                 offload_records: int | None = OFFLOAD_RECORDS):
        if offload_records is not None and (
                not isinstance(offload_records, int) or isinstance(offload_records, bool)
                or offload_records < 0):
            raise InvalidConfig(f"offload_records must be None or an integer >= 0,"
                             f" got {offload_records!r}")
        self.store_path = Path(store_path)
        self._resolve = resolve
        self._lock = threading.Lock()
        self.handled_through = 0
        self._next = 1  # number of the segment handled_through waits for
        self._done: dict[int, int] = {}  # segment number -> last sequence, beyond _next
        self.offload_records = offload_records
        self.worker = LogWorker(write_segment_logs)
        weakref.finalize(self, self.worker.close)

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
        return self._handle(segment, self._write_sealed)

    def close(self) -> None:
        """Stop the worker process, after the segment it is converting. Idempotent; later
        :meth:`write` calls convert in this process."""
        self.worker.close()

    def _write_sealed(self, segment) -> list[Path]:
        """:meth:`_write` in the worker process if the segment is large enough."""
        records = segment.last_sequence - segment.first_sequence + 1
        if self.offload_records is None or records < self.offload_records:
            return self._write(segment)
        # A plain SegmentInfo pickles whatever type the caller passed.
        info = SegmentInfo(segment.number, os.fspath(segment.path), segment.first_sequence,
                           segment.last_sequence, segment.sealed)
        try:
            return self.worker.run((self.store_path, info), self._resolve)
        except WorkerDied as exc:
            if not self.worker.closed:
                log.warning("Arrow log worker failed on WAL segment %s (%s); converting it in"
                            " this process", segment.path, exc)
                # What it was writing when it died: nothing else writes here (we hold the lock).
                self._remove_leftovers()
            return self._write(segment)

    def _handle(self, segment, check: Callable[[object], list[Path]]) -> list[Path]:
        """Run ``check(segment)`` and count the segment as handled if it does not raise."""
        if not segment.sealed:
            raise ValueError(
                f"segment {segment.number} is live: only sealed segments get log files")
        with self._lock:
            self._done.pop(segment.number, None)
            written = check(segment)
            if segment.number >= self._next:
                self._done[segment.number] = segment.last_sequence
            while self._next in self._done:
                self.handled_through = self._done.pop(self._next)
                self._next += 1
            return written

    def _paths(self, segment) -> dict[str, Path]:
        return _log_paths(self.store_path, segment)

    def _write(self, segment) -> list[Path]:
        return write_segment_logs(self.store_path, segment, resolve=self._resolve)

    def catch_up(self, wal) -> int:
        """Check the log files of every sealed segment of ``wal``, write the missing or bad
        ones, and return ``handled_through``.

        Run at open, so a crash between a seal and its logs loses no log for good, and a
        damaged file is replaced while its segment is still there. A segment that fails is
        logged at ERROR and holds the watermark back (later segments are still written):
        the WAL keeps its records, and the next catch-up tries again.

        So that an open does not re-read the whole history, a catch-up that handled every
        sealed segment leaves a note (``logs/.checked.json``: the last segment it handled
        and when it started). The next catch-up reads the rows of a segment (as
        :meth:`write` does) only if the segment is past that note or one of its files was
        modified since; for the others it checks that the three files exist and open with
        the schema of their kind, and writes them again from the WAL if not. A file whose
        rows were altered without a newer modification time is left to ``syntra verify``,
        which checks every row.
        """
        self._remove_leftovers()
        segments = list(wal.segments)
        if not segments:
            return self.handled_through
        started = time.time_ns()
        checked = self._read_checked(segments)
        with self._lock:
            # Start over from the first segment there is: each is checked again below, and
            # what a seal handler finished meanwhile is kept.
            self._next = segments[0].number
            self.handled_through = segments[0].first_sequence - 1
            self._done = {n: last for n, last in self._done.items() if n >= self._next}
        failed = False
        for segment in segments:
            if not segment.sealed:
                continue
            check = self._write
            if checked is not None and self._unchanged(segment, *checked):
                check = self._check_files
            try:
                self._handle(segment, check)
            except Exception as exc:  # noqa: BLE001 (one segment must not stop the others)
                failed = True
                log.error("cannot write the Arrow logs of WAL segment %s: %s: %s",
                          segment.path, type(exc).__name__, exc)
        sealed = [segment for segment in segments if segment.sealed]
        if sealed and not failed:
            self._write_checked(sealed[-1], started - _CLOCK_MARGIN_NS)
        return self.handled_through

    def _unchanged(self, segment, through: int, since_ns: int) -> bool:
        """Whether an earlier catch-up read the rows of ``segment``'s files and none of
        them was modified since (a missing file counts as changed)."""
        if segment.number > through:
            return False
        try:
            return all(os.stat(path).st_mtime_ns < since_ns
                       for path in self._paths(segment).values())
        except OSError:
            return False

    def _check_files(self, segment) -> list[Path]:
        """The cheap check of catch_up: every file opens with its schema; else
        :meth:`_write`, which reads them all and rewrites the bad ones."""
        try:
            for kind, path in self._paths(segment).items():
                check_log_file_schema(path, kind)
        except StorageCorrupt:
            return self._write(segment)  # which says what it rewrites, and why
        return []

    def _read_checked(self, segments) -> tuple[int, int] | None:
        """(last segment, time in ns) of the note of the last complete catch-up, or None
        if there is none, it cannot be read, or it is about another log than ``wal``'s."""
        try:
            with open(self.store_path / LOGS_DIR / _CHECKED, "rb") as file:
                note = json.load(file)
            through, last_sequence, since_ns = (
                note["segment"], note["last_sequence"], note["checked_ns"])
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if not all(isinstance(n, int) and not isinstance(n, bool)
                   for n in (through, last_sequence, since_ns)):
            return None
        # The segment it names must still end where it did (or be gone to retention).
        same = next((s for s in segments if s.number == through), None)
        if same is not None and (not same.sealed or same.last_sequence != last_sequence):
            return None
        if same is None and (segments[0].number <= through):
            return None
        return through, since_ns

    def _write_checked(self, last, since_ns: int) -> None:
        note = json.dumps({"segment": last.number, "last_sequence": last.last_sequence,
                           "checked_ns": since_ns}).encode()
        try:
            # Not synced: a note lost in a crash only makes the next catch-up read more.
            write_atomically(self.store_path / LOGS_DIR / _CHECKED,
                             lambda file: file.write(note), sync=False)
        except OSError as exc:
            log.warning("cannot note the Arrow logs checked: %s", exc)

    def _remove_leftovers(self) -> None:
        remove_leftovers(self.store_path / LOGS_DIR)
        for kind in LOG_KINDS:
            remove_leftovers(self.store_path / LOGS_DIR / kind)


def _log_paths(store_path: Path, segment) -> dict[str, Path]:
    return {kind: log_path(store_path, kind, segment.path) for kind in LOG_KINDS}


def write_segment_logs(store_path: Path, segment, *, resolve: Resolve) -> list[Path]:
    """Make the three log files of sealed ``segment`` in ``store_path`` complete and valid;
    return the files written (see :meth:`SegmentLogWriter.write`, which adds the
    bookkeeping). Also the job of the worker process, so it uses nothing of the writer's.
    """
    paths = _log_paths(store_path, segment)
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
    tables = _convert(segment, resolve)
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


def _convert(segment, resolve: Resolve) -> dict[str, pa.Table]:
    try:
        records = segment_records(segment.path)
    except WalCorrupt as exc:
        raise StorageCorrupt(f"WAL damaged: {exc}") from None
    except OSError as exc:
        raise LogWriteFailed(f"cannot read WAL segment {segment.path}: {exc}") from None
    return convert(records, resolve)
