"""Small helpers for files that must survive a crash."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (creations, renames, deletions) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directory(directory: Path) -> None:
    """Create ``directory`` and missing parents durably: each new entry's parent is synced."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        fsync_directory(path.parent)


def remove_leftovers(directory: Path) -> list[Path]:
    """Delete the temporary files that interrupted :func:`write_atomically` calls left."""
    if not directory.is_dir():
        return []
    leftovers = sorted(directory.glob(".*.tmp"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def write_atomically(path: Path, write: Callable[[BinaryIO], None], *, sync: bool = True) -> None:
    """Create ``path`` with ``write(file)``: a temporary file, fsync, rename, directory fsync.

    A crash leaves either no file or the complete one (and maybe a ``.<name>.*.tmp``
    leftover, which readers ignore).
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
        fsync_directory(path.parent)
