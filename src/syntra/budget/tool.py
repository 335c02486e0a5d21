"""What ``syntra budget`` does: open, top up, show and verify a budget directory.

The commands work on a live arena, one a running server owns, through the pure-Python
:class:`~syntra.budget.atomic_arena.AtomicArena` over the same shared memory. A command that
moves money journals it, synced before it reports success, so the owner's next rebuild
includes it: in a log of its own (``journal.d/<writer>/``) while an owner is running, since
the owner's log has one writer. When no owner is running, the command takes the owner lock
for its duration, first brings the arena up to date with the journals as an owner would,
and writes to the owner's log.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from syntra_core.budget import NO_CAP, AccountState, ReservationState
from syntra_core.wal import Wal

from syntra.budget import ARENA_FILE, journal, lock_owner, lock_rebuild, rebuild_arena
from syntra.budget.atomic_arena import AtomicArena
from syntra.budget.journal import JournalRecord
from syntra.budget.verify import check_invariants
from syntra.errors import StorageError
from syntra.store.files import make_directory

ENGINE_BUDGET = "budget"  # where an engine store keeps its budget


def budget_directory(path: str | os.PathLike) -> Path:
    """``path`` itself, or the budget inside it when ``path`` is an engine store."""
    path = Path(path)
    inner = path / ENGINE_BUDGET
    if not (path / ARENA_FILE).exists() and (inner / ARENA_FILE).exists():
        return inner
    return path


@dataclass(frozen=True)
class Snapshot:
    accounts: list[AccountState]
    holds: list[ReservationState]
    live_owner: bool


class _Session:
    """An attached arena plus this tool run's journal, opened on its first record."""

    def __init__(self, arena: AtomicArena, journal_directory: Path):
        self.arena = arena
        self._journal_directory = journal_directory
        self._wal: Wal | None = None

    def journal(self, kind: JournalRecord, payload: bytes, undo) -> None:
        """Append a record and wait for its sync; if that fails, run ``undo`` and raise."""
        try:
            if self._wal is None:
                make_directory(self._journal_directory.parent)
                self._wal = Wal.open(self._journal_directory)
            self._wal.append(kind, payload)
        except BaseException:
            undo()
            raise

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()
        self.arena.close()


@contextmanager
def _attached(directory: Path, *, create: bool = False) -> Iterator[_Session]:
    if not create and not (directory / ARENA_FILE).exists():
        raise StorageError(f"no budget arena in {str(directory)!r}")
    make_directory(directory)
    lock_fd = lock_owner(directory)
    try:
        if lock_fd is not None:
            # Nobody owns it: make the arena what the journals say before changing it.
            rebuild_arena(directory, accounts=64, reservations=65536)[0].close()
            log_directory = directory / journal.MAIN_JOURNAL
        else:
            log_directory = directory / journal.TOOL_JOURNALS / f"tool-{time.time_ns()}-{os.getpid()}"
        # Held until the operation is journaled and finished: an owner restarting meanwhile
        # waits to rebuild, so it neither loses nor doubles what the tool is doing.
        rebuild_fd = lock_rebuild(directory, exclusive=False)
        try:
            session = _Session(AtomicArena.open(directory / ARENA_FILE), log_directory)
            try:
                yield session
            finally:
                session.close()
        finally:
            os.close(rebuild_fd)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


def open_account(path: str | os.PathLike, name: str, initial: int, exposure_cap: int | None) -> AccountState:
    """Open account ``name`` (creating the budget directory if needed), journaled."""
    with _attached(budget_directory(path), create=True) as session:
        # Journaled before it opens: nobody may spend money a crash could take back.
        arena = session.arena
        index = arena.begin_open_account(name, initial, exposure_cap)
        cap = NO_CAP if exposure_cap is None else exposure_cap
        session.journal(JournalRecord.OPEN, journal.encode_open(index, name, initial, cap),
                        lambda: arena.abort_open_account(index))
        arena.finish_open_account(index)
        return arena.account(index)


def top_up(path: str | os.PathLike, name: str, amount: int) -> AccountState:
    """Add ``amount`` microcents to account ``name``, journaled."""
    with _attached(budget_directory(path)) as session:
        arena = session.arena
        index = arena.find_account(name)
        arena.begin_top_up(index, amount)
        session.journal(JournalRecord.TOP_UP, journal.encode_top_up(index, amount),
                        lambda: arena.abort_top_up(index, amount))
        arena.finish_top_up(index, amount)
        return arena.account(index)


def snapshot(path: str | os.PathLike) -> Snapshot:
    """Read the arena as it is now, without locking or rebuilding anything."""
    directory = budget_directory(path)
    if not (directory / ARENA_FILE).exists():
        raise StorageError(f"no budget arena in {str(directory)!r}")
    lock_fd = lock_owner(directory)
    if lock_fd is not None:
        os.close(lock_fd)
    arena = AtomicArena.open(directory / ARENA_FILE)
    try:
        return Snapshot(arena.accounts(), arena.reservations(), live_owner=lock_fd is None)
    finally:
        arena.close()


def verify(path: str | os.PathLike) -> tuple[Snapshot, list[str]]:
    """The arena now and every violation of the conservation invariant in it."""
    state = snapshot(path)
    return state, check_invariants(state.accounts, state.holds)
