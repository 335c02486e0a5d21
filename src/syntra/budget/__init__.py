"""Durable budgets: a shared arena of accounts plus the journal that makes it durable.

A :class:`Budget` owns a budget directory::

    arena        the mapped arena (docs/budget-arena.md), shared with other processes
    journal/     this owner's WAL of every operation that moved money
    journal.d/   one WAL per tool run that changed the arena while an owner was live
    owner.lock   flock'ed by the owner for as long as it has the budget open
    rebuild.lock flock'ed by a rebuild (exclusively) and by attached tools (shared)

Every operation that moves money runs on the arena (lock-free, ``syntra_core.budget``),
then its record is submitted to the journal and the call returns only after the sync that
covers it. Opening the budget rebuilds the arena from the journals, so money moved by an
operation that was never acknowledged (the process died between the two) is undone.

Example:

>>> from syntra.budget import Budget
>>> budget = Budget.memory()
>>> budget.open_account("llm", 10_000).remaining
10000
>>> hold = budget.reserve("llm", 4_000, ttl=60)
>>> budget.commit(hold, 3_500)
3500
>>> budget.account("llm").committed, budget.verify()
(3500, [])
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path

from syntra_core.budget import (
    HEADER_BYTES,
    NO_CAP,
    AccountState,
    Arena,
    ArenaCorrupt,
    BudgetError,
    BudgetRefused,
    ReservationExpired,
    ReservationsFull,
    ReservationState,
    Settling,
    check_header,
    ttl_ns,
)
from syntra_core.wal import Wal, WalCorrupt, WalError

from syntra.budget import journal
from syntra.budget.journal import JournalRecord
from syntra.budget.verify import check_invariants
from syntra.errors import StorageCorrupt, StorageError
from syntra.store.files import make_directory

__all__ = ["Budget", "BudgetLocked", "BudgetError", "BudgetRefused", "check_invariants"]

log = logging.getLogger("syntra.budget")

ARENA_FILE = "arena"
OWNER_LOCK = "owner.lock"
REBUILD_LOCK = "rebuild.lock"
# Journals shorter than this are not worth compacting at open.
COMPACT_AFTER = 100_000


class BudgetLocked(StorageError):
    """Another live process owns this budget directory."""


def lock_rebuild(directory: Path, *, exclusive: bool) -> int:
    """Take the rebuild lock of ``directory`` (blocking) and return its fd.

    A rebuild rewrites the arena in place, so the owner holds this exclusively while it
    rebuilds, and a tool attached to a live arena holds it shared for as long as it is
    attached: no rebuild can happen in the middle of a tool's operation.
    """
    fd = os.open(directory / REBUILD_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_owner(directory: Path) -> int | None:
    """Take the owner lock of ``directory``; its fd, or None if a live process holds it."""
    fd = os.open(directory / OWNER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def rebuild_arena(directory: Path, *, accounts: int, reservations: int,
                  compact_after: int = COMPACT_AFTER) -> tuple[Arena, journal.Rebuilt]:
    """Map ``directory``'s arena (creating it, or replacing a corrupt one) and refill it
    with what the journals hold, compacting them first when they hold more than
    ``compact_after`` records and over twice what the live state needs. The caller must
    hold the owner lock."""
    rebuild_fd = lock_rebuild(directory, exclusive=True)
    try:
        journal.finish_interrupted_compaction(directory)
        state = journal.rebuild(journal.journal_directories(directory))
        if state.records > max(compact_after, 2 * state.live_records()):
            journal.compact(directory, state)
        return _fill_arena(directory, state, accounts, reservations), state
    finally:
        os.close(rebuild_fd)


def _fill_arena(directory: Path, state: journal.Rebuilt, accounts: int, reservations: int) -> Arena:
    path = directory / ARENA_FILE
    arena = None
    if path.exists():
        try:
            arena = Arena.open(path)
        except ArenaCorrupt as exc:
            log.warning("budget arena %s is unreadable (%s); rebuilding it from the journal", path, exc)
            path.unlink()
    if arena is None:
        arena = Arena.create(path, accounts=accounts, reservations=reservations)
    try:
        arena.reset()
        arena.load(state.accounts.values(), state.holds.values(), state.next_reservation_id)
        arena.flush()
    except BudgetError as exc:
        arena.close()
        raise StorageCorrupt(f"budget journal does not fit arena {path}: {exc}") from None
    return arena


class Budget:
    """Accounts and reservations, by account name; see the module docs.

    Use :meth:`open` for a durable budget directory and :meth:`memory` for a process-private
    one. Refusals raise a :class:`~syntra_core.budget.BudgetRefused` subclass and change
    nothing; a failed journal write raises StorageError and the budget refuses further work.
    """

    def __init__(self, arena: Arena, wal: Wal | None, directory: Path | None,
                 lock_fd: int | None, spend: dict[int, int]):
        self.arena = arena
        self.directory = directory
        self._wal = wal
        self._lock_fd = lock_fd
        self._spend = spend
        self._failure: BaseException | None = None
        self._sweeper: threading.Thread | None = None
        self._stop_sweeping = threading.Event()

    @classmethod
    def open(cls, directory: str | os.PathLike, *, accounts: int = 64, reservations: int = 65536,
             durability: str = "fsync", commit_window_us: int = 200,
             compact_after: int = COMPACT_AFTER) -> Budget:
        """Own the budget in ``directory`` (created if missing): rebuild its arena from the
        journals and open the journal for writing. BudgetLocked if another process owns it.

        ``accounts`` and ``reservations`` size a new arena file; an existing one keeps the
        capacities it was created with. A journal of more than ``compact_after`` records
        (and over twice what the live state needs) is compacted first, so opening takes time
        in proportion to the live state, not to the history.
        """
        directory = Path(directory)
        try:
            make_directory(directory)
            lock_fd = lock_owner(directory)
        except OSError as exc:
            raise StorageError(f"cannot open budget {str(directory)!r}: {exc}") from None
        if lock_fd is None:
            raise BudgetLocked(f"budget {str(directory)!r} is owned by another live process")
        try:
            arena, state = rebuild_arena(directory, accounts=accounts, reservations=reservations,
                                         compact_after=compact_after)
            try:
                wal = Wal.open(directory / journal.MAIN_JOURNAL, durability=durability,
                               commit_window_us=commit_window_us)
            except BaseException:
                arena.close()
                raise
        except WalCorrupt as exc:
            os.close(lock_fd)
            raise StorageCorrupt(f"budget journal damaged: {exc}") from None
        except (WalError, OSError) as exc:
            os.close(lock_fd)
            raise StorageError(f"cannot open budget {str(directory)!r}: {exc}") from None
        except BaseException:
            os.close(lock_fd)
            raise
        log.info("budget %s: rebuilt %d accounts and %d open holds from %d journal records",
                 directory, len(state.accounts), len(state.holds), state.records)
        return cls(arena, wal, directory, lock_fd, state.spend)

    @classmethod
    def replica(cls, directory: str | os.PathLike) -> Budget:
        """A process-private copy of the budget the journals in ``directory`` add up to, for
        reading and replay: nothing in ``directory`` is locked or changed. Raises
        StorageCorrupt (or WalCorrupt) if the journals are damaged or contradict each other."""
        directory = Path(directory)
        state = journal.rebuild(journal.journal_directories(directory))
        accounts, reservations = 64, 65536
        try:
            with open(directory / ARENA_FILE, "rb") as f:
                accounts, reservations = check_header(f.read(HEADER_BYTES), os.fstat(f.fileno()).st_size)
        except (OSError, ArenaCorrupt):
            pass  # sized for what the journals hold instead
        accounts = max(accounts, max(state.accounts, default=-1) + 1)
        budget = cls.memory(accounts=accounts, reservations=max(reservations, 2 * len(state.holds), 1))
        try:
            budget.arena.load(state.accounts.values(), state.holds.values(), state.next_reservation_id)
        except BudgetError as exc:
            budget.close()
            raise StorageCorrupt(f"budget journal in {str(directory)!r} does not fit an arena: {exc}") from None
        budget._spend = state.spend
        return budget

    @classmethod
    def memory(cls, *, accounts: int = 64, reservations: int = 65536) -> Budget:
        """A budget in process-private memory, with no journal."""
        return cls(Arena.anonymous(accounts=accounts, reservations=reservations), None, None, None, {})

    @property
    def durable(self) -> bool:
        return self._wal is not None

    # -- journal -------------------------------------------------------------------------

    def _check(self) -> None:
        if self._failure is not None:
            raise StorageError(f"the budget journal failed and refuses further work: {self._failure}")
        if self.arena.closed:
            raise StorageError("the budget is closed")

    def _submit(self, kind: JournalRecord, payload: bytes):
        """Queue a journal record; the ticket to wait on, or None without a journal."""
        if self._wal is None:
            return None
        try:
            return self._wal.submit(kind, payload)
        except WalError as exc:
            self._failure = exc
            raise StorageError(f"budget journal write failed: {exc}") from None

    def flush(self) -> None:
        """Wait until every journal record submitted so far is durable."""
        if self._wal is not None:
            try:
                self._wal.flush()
            except WalError as exc:
                self._failure = exc
                raise StorageError(f"budget journal sync failed: {exc}") from None

    def wait(self, ticket) -> None:
        """Block until ``ticket``'s record is durable."""
        if ticket is not None:
            try:
                ticket.wait()
            except WalError as exc:
                self._failure = exc
                raise StorageError(f"budget journal sync failed: {exc}") from None

    async def wait_async(self, ticket) -> None:
        if ticket is not None:
            try:
                await ticket.wait_async()
            except WalError as exc:
                self._failure = exc
                raise StorageError(f"budget journal sync failed: {exc}") from None

    # -- accounts ------------------------------------------------------------------------

    def open_account(self, name: str, initial: int, exposure_cap: int | None = None) -> AccountState:
        """Open account ``name`` with ``initial`` microcents, durably."""
        self._check()
        index = self.arena.begin_open_account(name, initial, exposure_cap)
        cap = NO_CAP if exposure_cap is None else exposure_cap
        self._durably(lambda: self.arena.abort_open_account(index),
                      JournalRecord.OPEN, journal.encode_open(index, name, initial, cap))
        self.arena.finish_open_account(index)
        return self.arena.account(index)

    def top_up(self, name: str, amount: int) -> AccountState:
        """Add ``amount`` microcents to account ``name``, durably."""
        self._check()
        index = self.arena.find_account(name)
        self.arena.begin_top_up(index, amount)
        self._durably(lambda: self.arena.abort_top_up(index, amount),
                      JournalRecord.TOP_UP, journal.encode_top_up(index, amount))
        self.arena.finish_top_up(index, amount)
        return self.arena.account(index)

    def _durably(self, undo, kind: JournalRecord, payload: bytes) -> None:
        """Journal a record and wait for its sync; on failure run ``undo`` and raise."""
        try:
            self.wait(self._submit(kind, payload))
        except BaseException:
            undo()
            raise

    def account(self, name: str) -> AccountState:
        return self.arena.account(self.arena.find_account(name))

    def accounts(self) -> list[AccountState]:
        return self.arena.accounts()

    def available(self, name: str) -> int:
        """What one more reservation on ``name`` could hold right now: the free funds,
        bounded by the room left under the exposure cap."""
        a = self.account(name)
        return max(0, min(a.remaining, a.exposure_cap - a.reserved))

    # -- reservations --------------------------------------------------------------------
    #
    # Taking money (reserve) is applied first and journaled after: a crash in between only
    # returns money nobody was told about. Freeing money (commit, release, expiry, top-up,
    # opening) is claimed first, journaled and synced, and only then made spendable, so
    # nothing acknowledged can have spent money that a crash would take back.

    def submit_reserve(self, account: int, amount: int, ttl: float, *, ref_a: int = 0,
                       ref_b: int = 0) -> tuple[int, object]:
        """Reserve on account index ``account``; (id, ticket). Not acknowledged until the
        ticket is waited on: the engine submits its own record before waiting on both."""
        self._check()
        now = time.time_ns()
        try:
            rid = self.arena.reserve(account, amount, ttl, ref_a=ref_a, ref_b=ref_b, now_ns=now)
        except ReservationsFull:
            # Lapsed holds keep their slots until touched: sweep them, then try once more.
            self.expire_due()
            rid = self.arena.reserve(account, amount, ttl, ref_a=ref_a, ref_b=ref_b, now_ns=now)
        hold = ReservationState(rid, account, amount, min(now + ttl_ns(ttl), NO_CAP), "held", 0, ref_a, ref_b)
        return rid, self._submit(JournalRecord.RESERVE, journal.encode_reserve(hold))

    def reserve(self, name: str, amount: int, ttl: float, *, ref_a: int = 0, ref_b: int = 0) -> int:
        """Hold ``amount`` microcents of ``name`` for ``ttl`` seconds; the reservation id."""
        rid, ticket = self.submit_reserve(self.arena.find_account(name), amount, ttl, ref_a=ref_a, ref_b=ref_b)
        self.wait(ticket)
        return rid

    def begin_settle(self, reservation: int, actual: int | None = None) -> tuple[Settling, object]:
        """Claim ``reservation`` to commit ``actual`` (None: release) and journal it; the
        claim and the ticket for :meth:`finish_settle`. Refusals raise and change nothing."""
        self._check()
        pending = self.arena.begin_settle(reservation, actual)
        if pending.kind == "commit":
            record = JournalRecord.COMMIT, journal.encode_commit(pending.id, pending.settled)
        else:
            kind = JournalRecord.RELEASE if pending.kind == "release" else JournalRecord.EXPIRE
            record = kind, journal.encode_id(pending.id)
        try:
            return pending, self._submit(*record)
        except BaseException:
            self.arena.abort(pending)
            raise

    def finish_settle(self, pending: Settling, ticket) -> int:
        """Once ``ticket`` is durable, free the money; returns what was committed (or, for a
        release, what was released). Raises ReservationExpired if the hold had lapsed: it
        was expired instead, which is journaled too."""
        self.wait(ticket)   # if the sync fails the hold stays claimed: nothing is freed
        return self._finish(pending)

    async def finish_settle_async(self, pending: Settling, ticket) -> int:
        await self.wait_async(ticket)
        return self._finish(pending)

    def _finish(self, pending: Settling) -> int:
        self.arena.finish(pending)
        if pending.kind == "commit":
            self._spend[pending.ref_a] = self._spend.get(pending.ref_a, 0) + pending.settled
            return pending.settled
        if pending.kind == "expire":
            raise ReservationExpired(f"reservation {pending.id} expired now; its hold was released",
                                     pending.id, pending.account, pending.amount, True)
        return pending.amount

    def commit(self, reservation: int, actual: int) -> int:
        """Settle ``reservation`` at ``actual`` microcents; returns ``actual``."""
        return self.finish_settle(*self.begin_settle(reservation, actual))

    def release(self, reservation: int) -> int:
        """Give ``reservation``'s hold back; returns the amount released."""
        return self.finish_settle(*self.begin_settle(reservation, None))

    def expire_due(self) -> list[ReservationState]:
        """Expire every lapsed hold, durably; returns those expired by this call."""
        self._check()
        claimed = self.arena.begin_expire_due()
        try:
            tickets = [self._submit(JournalRecord.EXPIRE, journal.encode_id(p.id)) for p in claimed]
        except BaseException:
            for pending in claimed:
                self.arena.abort(pending)
            raise
        for ticket in tickets:
            self.wait(ticket)
        for pending in claimed:
            self.arena.finish(pending)
        return [pending.state() for pending in claimed]

    def reservations(self) -> list[ReservationState]:
        """The open holds, in slot order."""
        return self.arena.reservations()

    def spend(self) -> dict[int, int]:
        """Microcents committed per ``ref_a``, over the life of the journal."""
        return dict(self._spend)

    def verify(self) -> list[str]:
        """The invariant violations of the arena right now (empty when it holds). Run it
        with no operation in flight."""
        return check_invariants(self.arena.accounts(), self.arena.reservations())

    # -- lifetime ------------------------------------------------------------------------

    def start_sweeper(self, interval: float = 1.0) -> None:
        """Expire lapsed holds every ``interval`` seconds from a background thread, so their
        money comes back without a caller waiting on the journal for it. Stops on close."""
        if self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep, args=(interval,),
                                             name="syntra-budget-sweeper", daemon=True)
            self._sweeper.start()

    def _sweep(self, interval: float) -> None:
        while not self._stop_sweeping.wait(interval):
            try:
                self.expire_due()
            except StorageError:
                return          # the budget refuses work now; callers see why
            except Exception:   # never let a sweep take the process down
                log.exception("budget %s: sweeping lapsed holds failed", self.directory)

    def close(self) -> None:
        """Flush the journal, sync the arena and let go of the directory (idempotent)."""
        if self.arena.closed:
            return
        if self._sweeper is not None:
            self._stop_sweeping.set()
            self._sweeper.join()
        try:
            if self._wal is not None:
                self._wal.close()
            if self.directory is not None:
                self.arena.flush()
        finally:
            self.arena.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> Budget:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = str(self.directory) if self.directory else "memory"
        return f"Budget({where!r}, accounts={len(self.arena.accounts())})"
