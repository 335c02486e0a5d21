"""Reading a whole log from a store directory: :func:`read_log`.

It joins the log files with the rows of segments that have none (or only a damaged one),
converted from the WAL on the fly, finds capsule configs without an engine
(:class:`StoreConfigs`), and names the rows retention lost for good (:class:`LogGaps`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from syntra.errors import StorageCorrupt, StorageError
from syntra.store import checkpoint as ckpt
from syntra.store.logs.layout import (
    CHECKPOINTS_DIR,
    _covers,
    check_store,
    log_files,
    log_path,
    read_log_file,
    segment_records,
    wal_segments,
)
from syntra.store.logs.schemas import LOG_KINDS, SCHEMAS, _Converter
from syntra.store.records import install_config
from syntra_core.wal import WalCorrupt, segment_name
from syntra_core.wal_format import read_segment_header

log = logging.getLogger("syntra.store")


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
                self._learn(install_config(details))

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
        return str(self._log_path(self.kind, number).relative_to(self.store))

    def _log_path(self, kind: str, number: int) -> Path:
        return log_path(self.store, kind, segment_name(number))

    def span(self, number: int) -> tuple[int | None, int | None]:
        """(first, last) sequence of segment ``number``, each None where nothing tells."""
        if number not in self._spans:
            self._spans[number] = self._find_span(number)
        return self._spans[number]

    def _find_span(self, number: int) -> tuple[int | None, int | None]:
        path = self.segments.get(number)
        if path is not None:
            try:
                first = read_segment_header(path).first_sequence
                if number == self.live:
                    return first, None
                if number + 1 in self.segments:
                    following = read_segment_header(self.segments[number + 1])
                    return first, following.first_sequence - 1
                records = segment_records(path)
                return first, (records[-1].sequence if records else first - 1)
            except (StorageCorrupt, WalCorrupt, OSError):
                pass  # unreadable or removed meanwhile: let its log files tell
        # The three files of a segment together hold each of its sequences once.
        bounds = []
        for kind in LOG_KINDS:
            try:
                table = read_log_file(self._log_path(kind, number), kind, full=False)
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
