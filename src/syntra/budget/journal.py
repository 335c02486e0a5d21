"""The budget journal: one WAL record per operation that moved money, the rebuild, and
compaction.

Records say what happened (the id handed out, the amount settled), never what was asked, so
a rebuild sums them in any order and needs no arena logic: for each account, ``remaining =
initial + top-ups - open holds - commits``. ``docs/budget-arena.md`` lists the payloads.

Compaction replaces the owner's journal with a new generation that states the same sums in
as few records as the live state needs (an open and a top-up per account, what was spent
per reference, the open holds, the next id), and folds the tool journals in: it names how
far it read each one, so their records up to there are not counted again even if their
directories outlive the swap.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from syntra_core.budget import NO_CAP, AccountState, ReservationState
from syntra_core.wal import Wal, scan

from syntra.errors import StorageCorrupt
from syntra.store.files import fsync_directory

log = logging.getLogger("syntra.budget")

MAIN_JOURNAL = "journal"     # the arena owner's log
TOOL_JOURNALS = "journal.d"  # one log per tool run that changed a live arena
# A compaction builds the next generation beside the journal, then swaps it in.
NEXT_JOURNAL = "journal.next"
PREVIOUS_JOURNAL = "journal.prev"


class JournalRecord(enum.IntEnum):
    OPEN = 1
    TOP_UP = 2
    RESERVE = 3
    COMMIT = 4
    RELEASE = 5
    EXPIRE = 6
    SPENT = 7      # a compaction's sum of the commits under one reference on one account
    NEXT_ID = 8    # a compaction's floor for the ids handed out next
    FOLDED = 9     # a compaction read a tool journal up to here


_OPEN = struct.Struct("<Iqq")          # account, initial, exposure cap; then the name
_TOP_UP = struct.Struct("<Iq")         # account, amount
_RESERVE = struct.Struct("<QIqqQQ")    # id, account, amount, expires_ns, ref_a, ref_b
_COMMIT = struct.Struct("<Qq")         # id, settled
_ID = struct.Struct("<Q")              # release, expire, next id
_SPENT = struct.Struct("<IQq")         # account, ref_a, amount
_FOLDED = struct.Struct("<Q")          # last sequence read; then the tool journal's name


def encode_open(account: int, name: str, initial: int, exposure_cap: int) -> bytes:
    return _OPEN.pack(account, initial, exposure_cap) + name.encode()


def encode_top_up(account: int, amount: int) -> bytes:
    return _TOP_UP.pack(account, amount)


def encode_reserve(hold: ReservationState) -> bytes:
    return _RESERVE.pack(hold.id, hold.account, hold.amount, hold.expires_ns, hold.ref_a, hold.ref_b)


def encode_commit(reservation: int, settled: int) -> bytes:
    return _COMMIT.pack(reservation, settled)


def encode_id(reservation: int) -> bytes:
    return _ID.pack(reservation)


@dataclass
class Rebuilt:
    """The state a set of journals adds up to."""

    accounts: dict[int, AccountState] = field(default_factory=dict)
    holds: dict[int, ReservationState] = field(default_factory=dict)  # open ones, by id
    next_reservation_id: int = 1
    spend: dict[int, int] = field(default_factory=dict)  # ref_a -> microcents committed
    # (account, ref_a) -> microcents committed: what a compaction writes back.
    spent: dict[tuple[int, int], int] = field(default_factory=dict)
    tool_heads: dict[str, int] = field(default_factory=dict)  # tool journal -> last sequence
    records: int = 0

    def live_records(self) -> int:
        """How many records a compaction of this state writes."""
        return 2 * len(self.accounts) + len(self.spent) + len(self.holds) + len(self.tool_heads) + 1


def finish_interrupted_compaction(budget_dir: Path) -> None:
    """Bring a compaction a crash interrupted to its end, or undo it (owner only)."""
    main, nxt, prev = (budget_dir / n for n in (MAIN_JOURNAL, NEXT_JOURNAL, PREVIOUS_JOURNAL))
    if prev.is_dir() and nxt.is_dir() and not main.exists():
        nxt.rename(main)            # the new generation was complete: swap it in
        fsync_directory(budget_dir)
    if nxt.is_dir() and main.is_dir():
        shutil.rmtree(nxt)          # it was never swapped in: the old journal stands
    if prev.is_dir() and main.is_dir():
        shutil.rmtree(prev)
    fsync_directory(budget_dir)


def journal_directories(budget_dir: str | Path) -> list[Path]:
    """The owner's journal first, then every tool journal under ``budget_dir``.

    If a compaction was interrupted between its two renames, the complete new generation
    stands in for the owner's journal (readers change nothing; the owner finishes the swap).
    """
    root = Path(budget_dir)
    main = root / MAIN_JOURNAL
    if not main.is_dir() and (root / PREVIOUS_JOURNAL).is_dir() and (root / NEXT_JOURNAL).is_dir():
        main = root / NEXT_JOURNAL
    found = [main] if main.is_dir() else []
    tools = root / TOOL_JOURNALS
    if tools.is_dir():
        found += sorted(p for p in tools.iterdir() if p.is_dir())
    return found


class _Sums:
    """What the records of a rebuild add up to, before they are checked against each other."""

    def __init__(self):
        self.opened: dict[int, tuple[str, int, int]] = {}
        self.top_ups: dict[int, int] = {}
        self.made: dict[int, ReservationState] = {}
        self.settled: dict[int, tuple[JournalRecord, int]] = {}
        self.spent: dict[tuple[int, int], int] = {}
        self.next_id_floor = 1
        self.folded: dict[str, int] = {}

    def apply(self, kind: JournalRecord, payload: bytes) -> None:
        if kind is JournalRecord.OPEN:
            account, initial, cap = _OPEN.unpack_from(payload)
            name = payload[_OPEN.size:].decode()
            if account in self.opened:
                raise ValueError(f"account {account} opened twice")
            if initial < 0 or not 0 < cap <= NO_CAP:
                raise ValueError(f"account {name!r} opened with initial {initial}, cap {cap}")
            self.opened[account] = (name, initial, cap)
        elif kind is JournalRecord.TOP_UP:
            account, amount = _TOP_UP.unpack(payload)
            if amount <= 0:
                raise ValueError(f"top-up of {amount}")
            self.top_ups[account] = self.top_ups.get(account, 0) + amount
        elif kind is JournalRecord.RESERVE:
            rid, account, amount, expires, ref_a, ref_b = _RESERVE.unpack(payload)
            if rid in self.made or amount <= 0:
                raise ValueError(f"reservation {rid} reserved twice or for {amount}")
            self.made[rid] = ReservationState(rid, account, amount, expires, "held", 0, ref_a, ref_b)
        elif kind is JournalRecord.SPENT:
            account, ref_a, amount = _SPENT.unpack(payload)
            if amount < 0 or (account, ref_a) in self.spent:
                raise ValueError(f"spent {amount} on account {account} under {ref_a} twice or below 0")
            self.spent[(account, ref_a)] = amount
        elif kind is JournalRecord.NEXT_ID:
            (floor,) = _ID.unpack(payload)
            self.next_id_floor = max(self.next_id_floor, floor)
        elif kind is JournalRecord.FOLDED:
            (last,) = _FOLDED.unpack_from(payload)
            self.folded[payload[_FOLDED.size:].decode()] = last
        else:
            if kind is JournalRecord.COMMIT:
                rid, amount = _COMMIT.unpack(payload)
            else:
                (rid,), amount = _ID.unpack(payload), 0
            if rid in self.settled:
                raise ValueError(f"reservation {rid} settled twice")
            self.settled[rid] = (kind, amount)


def rebuild(directories: Iterable[str | os.PathLike]) -> Rebuilt:
    """Sum the verified records of every journal in ``directories`` (the owner's first, as
    :func:`journal_directories` lists them).

    Raises StorageCorrupt when the journals contradict each other (an account opened twice,
    a settlement of a hold no journal made) or a record does not decode; WalCorrupt from the
    scan on a damaged log.
    """
    sums = _Sums()
    out = Rebuilt()
    for position, directory in enumerate(directories):
        directory = Path(directory)
        # The owner's journal says how far a compaction folded each tool journal in.
        skip_through = sums.folded.get(directory.name, 0) if position else 0
        for record in scan(directory):
            if position:
                out.tool_heads[directory.name] = record.sequence
            if record.sequence <= skip_through:
                continue
            out.records += 1
            try:
                sums.apply(JournalRecord(record.rtype), record.payload)
            except (ValueError, struct.error) as exc:
                raise StorageCorrupt(f"budget journal {directory} record {record.sequence}: {exc}") from None
    _total(sums, out)
    return out


def _total(sums: _Sums, out: Rebuilt) -> None:
    opened = sums.opened
    committed: dict[int, int] = dict.fromkeys(opened, 0)
    held: dict[int, int] = dict.fromkeys(opened, 0)
    out.spent = dict(sums.spent)
    for rid, hold in sums.made.items():
        if hold.account not in opened:
            raise StorageCorrupt(f"budget journal: reservation {rid} holds unopened account {hold.account}")
        outcome = sums.settled.get(rid)
        if outcome is None:
            held[hold.account] += hold.amount
            out.holds[rid] = hold
        elif outcome[0] is JournalRecord.COMMIT:
            key = (hold.account, hold.ref_a)
            out.spent[key] = out.spent.get(key, 0) + outcome[1]
    for rid in sums.settled.keys() - sums.made.keys():
        # An expiry sweep can journal a hold whose reserve was never acknowledged (the
        # reserver died before its record landed): nothing to undo. Anything else is damage.
        if sums.settled[rid][0] is not JournalRecord.EXPIRE:
            raise StorageCorrupt(f"budget journal settles reservation {rid}, which no journal reserved")
    for (account, ref_a), amount in out.spent.items():
        if account not in opened:
            raise StorageCorrupt(f"budget journal spends on account {account}, which no journal opened")
        committed[account] += amount
        out.spend[ref_a] = out.spend.get(ref_a, 0) + amount
    for account in sums.top_ups.keys() - opened.keys():
        raise StorageCorrupt(f"budget journal tops up account {account}, which no journal opened")
    for account, (name, initial, cap) in opened.items():
        topped = sums.top_ups.get(account, 0)
        remaining = initial + topped - held[account] - committed[account]
        if remaining < 0:
            raise StorageCorrupt(f"budget journal overspends account {name!r} by {-remaining}")
        out.accounts[account] = AccountState(
            account, name, initial, remaining, held[account], committed[account], cap, topped)
    # Above every id any record names: an expiry can name a reserve no journal has.
    out.next_reservation_id = max(max(sums.made.keys() | sums.settled.keys(), default=0) + 1,
                                  sums.next_id_floor)


def compact(budget_dir: Path, state: Rebuilt) -> None:
    """Replace the owner's journal with a generation that holds just ``state``, and drop
    the tool journals it folds in. The caller owns the budget and holds the rebuild lock;
    a crash at any point leaves either generation whole (see
    :func:`finish_interrupted_compaction`)."""
    nxt = budget_dir / NEXT_JOURNAL
    shutil.rmtree(nxt, ignore_errors=True)
    with Wal.open(nxt) as wal:
        for name, last in sorted(state.tool_heads.items()):
            wal.submit(JournalRecord.FOLDED, _FOLDED.pack(last) + name.encode())
        for a in state.accounts.values():
            wal.submit(JournalRecord.OPEN, encode_open(a.index, a.name, a.initial, a.exposure_cap))
            if a.topped_up:
                wal.submit(JournalRecord.TOP_UP, encode_top_up(a.index, a.topped_up))
        for (account, ref_a), amount in sorted(state.spent.items()):
            wal.submit(JournalRecord.SPENT, _SPENT.pack(account, ref_a, amount))
        for hold in state.holds.values():
            wal.submit(JournalRecord.RESERVE, encode_reserve(hold))
        wal.append(JournalRecord.NEXT_ID, encode_id(state.next_reservation_id))
    main, prev = budget_dir / MAIN_JOURNAL, budget_dir / PREVIOUS_JOURNAL
    if main.is_dir():
        main.rename(prev)
        fsync_directory(budget_dir)
    nxt.rename(main)
    fsync_directory(budget_dir)
    shutil.rmtree(prev, ignore_errors=True)
    tools = budget_dir / TOOL_JOURNALS
    for name in state.tool_heads:
        shutil.rmtree(tools / name, ignore_errors=True)
    fsync_directory(budget_dir)
    log.info("budget %s: compacted %d journal records into %d", budget_dir, state.records,
             state.live_records())
