"""Where a store keeps its WAL segments and Arrow log files, and reading each, checked.

:func:`read_log_file` reads one log file and checks it against the schema of its kind
and the WAL sequences of its segment; :func:`segment_records` reads one WAL segment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc

from syntra.errors import StorageCorrupt, SyntraError
from syntra.store.logs.schemas import LOG_FORMAT, SCHEMAS
from syntra_core.wal import WalRecord, scan_segment
from syntra_core.wal_format import segment_number

LOGS_DIR = "logs"
WAL_DIR = "wal"
CHECKPOINTS_DIR = "checkpoints"
SUFFIX = ".arrow"

_LOG_FILE = re.compile(r"^wal-(\d{16})\.arrow$")


class NotAStore(SyntraError, ValueError):
    """The directory does not exist or holds no Syntra store (no ``wal/`` directory)."""


# --- reading WAL segments ----------------------------------------------------------------


def segment_records(path: str | os.PathLike, *, sealed: bool = True) -> list[WalRecord]:
    """The verified records of one segment file, read-only (the segments before it are not
    re-hashed). Raises :class:`~syntra_core.wal.WalCorrupt` (naming ``path``) on damage.
    """
    return list(scan_segment(path, sealed=sealed))


def wal_segments(store_path: str | os.PathLike) -> dict[int, Path]:
    """{segment number: path} of the WAL segment files in a store."""
    return _numbered_files(Path(store_path) / WAL_DIR, segment_number)


def _log_file_number(name: str) -> int | None:
    match = _LOG_FILE.match(name)
    return int(match.group(1)) if match else None


def _numbered_files(directory: Path, number_of: Callable[[str], int | None]) -> dict[int, Path]:
    """{number: path} of the files in ``directory`` that ``number_of`` gives a number."""
    found = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return found
    for name in names:
        number = number_of(name)
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


# --- log files ---------------------------------------------------------------------------


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
    try:
        table = read_arrow(path)
        table.validate(full=full)
    except (pa.ArrowException, OSError) as exc:
        raise StorageCorrupt(f"Arrow log {path} cannot be read: {exc}") from None
    _check_schema(path, table.schema, kind)
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


def check_log_file_schema(path: str | os.PathLike, kind: str) -> None:
    """Check only that the ``kind`` log file at ``path`` opens as an Arrow IPC file (its
    footer) with the schema of ``kind``, without reading its rows; raise
    :class:`StorageCorrupt` naming it. :func:`read_log_file` checks the rows too."""
    try:
        with pa.memory_map(os.fspath(path)) as source:
            schema = pa.ipc.open_file(source).schema
    except (pa.ArrowException, OSError) as exc:
        raise StorageCorrupt(f"Arrow log {path} cannot be read: {exc}") from None
    _check_schema(path, schema, kind)


def _check_schema(path: str | os.PathLike, schema: pa.Schema, kind: str) -> None:
    metadata = schema.metadata or {}
    if not schema.equals(SCHEMAS[kind]) or metadata.get(b"syntra.log") != kind.encode():
        raise StorageCorrupt(f"Arrow log {path} does not have the schema of the {kind} log")
    if metadata.get(b"syntra.log_format") != LOG_FORMAT.encode():
        raise StorageCorrupt(f"Arrow log {path} is not in log format {LOG_FORMAT}")


def log_path(store_path: str | os.PathLike, kind: str, segment_path: str | os.PathLike) -> Path:
    """Where the ``kind`` log of a WAL segment goes: logs/<kind>/<segment name>.arrow."""
    return Path(store_path) / LOGS_DIR / kind / (Path(segment_path).stem + SUFFIX)


def log_files(store_path: str | os.PathLike, kind: str) -> dict[int, Path]:
    """{segment number: path} of the ``kind`` log files in a store."""
    return _numbered_files(Path(store_path) / LOGS_DIR / kind, _log_file_number)


def _covers(sequences: list[pa.ChunkedArray], first: int, last: int) -> bool:
    """Whether ``sequences`` (each in [first, last]) hold every sequence of the range once."""
    total = sum(len(s) for s in sequences)
    if total != last - first + 1:
        return False
    if not total:
        return True
    merged = pa.chunked_array([chunk for s in sequences for chunk in s.chunks], pa.uint64())
    return len(pc.unique(merged)) == total

