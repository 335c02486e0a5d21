"""Exporting a log to one Arrow IPC or Parquet file: :func:`export_log`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow.compute as pc

from syntra.store.files import write_atomically
from syntra.store.logs.layout import _write_arrow
from syntra.store.logs.reader import Gap, LogGaps, _read_log

# Export formats by file extension.
EXPORT_FORMATS = {".arrow": "arrow", ".parquet": "parquet"}


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
