"""The budget journal: one WAL record per operation that moved money, and the rebuild.

Records say what happened (the id handed out, the amount settled), never what was asked, so
a rebuild sums them in any order and needs no arena logic: for each account, ``remaining =
initial + top-ups - open holds - commits``. ``docs/budget-arena.md`` lists the payloads.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from syntra_core.budget import NO_CAP, AccountState, ReservationState
from syntra_core.wal import scan

from syntra.errors import StorageCorrupt

MAIN_JOURNAL = "journal"     # the arena owner's log
TOOL_JOURNALS = "journal.d"  # one log per tool run that changed a live arena


class JournalRecord(enum.IntEnum):
    OPEN = 1
    TOP_UP = 2
    RESERVE = 3
    COMMIT = 4
    RELEASE = 5
    EXPIRE = 6


_OPEN = struct.Struct("<Iqq")          # account, initial, exposure cap; then the name
_TOP_UP = struct.Struct("<Iq")         # account, amount
_RESERVE = struct.Struct("<QIqqQQ")    # id, account, amount, expires_ns, ref_a, ref_b
_COMMIT = struct.Struct("<Qq")         # id, settled
_ID = struct.Struct("<Q")              # release, expire


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
    records: int = 0


def journal_directories(budget_dir: str | Path) -> list[Path]:
    """The owner's journal and every tool journal under ``budget_dir`` that exists."""
    root = Path(budget_dir)
    found = [root / MAIN_JOURNAL] if (root / MAIN_JOURNAL).is_dir() else []
    tools = root / TOOL_JOURNALS
    if tools.is_dir():
        found += sorted(p for p in tools.iterdir() if p.is_dir())
    return found


def rebuild(directories: Iterable[str | os.PathLike]) -> Rebuilt:
    """Sum the verified records of every journal in ``directories``.

    Raises StorageCorrupt when the journals contradict each other (an account opened twice,
    a settlement of a hold no journal made) or a record does not decode; WalCorrupt from the
    scan on a damaged log.
    """
    opened: dict[int, tuple[str, int, int]] = {}
    top_ups: dict[int, int] = {}
    made: dict[int, ReservationState] = {}
    settled: dict[int, tuple[JournalRecord, int]] = {}
    out = Rebuilt()
    for directory in directories:
        for record in scan(directory):
            out.records += 1
            where = f"{directory} record {record.sequence}"
            try:
                kind = JournalRecord(record.rtype)
                _apply(kind, record.payload, opened, top_ups, made, settled, where)
            except (ValueError, struct.error) as exc:
                raise StorageCorrupt(f"budget journal {where}: {exc}") from None

    committed: dict[int, int] = dict.fromkeys(opened, 0)
    held: dict[int, int] = dict.fromkeys(opened, 0)
    for rid, hold in made.items():
        if hold.account not in opened:
            raise StorageCorrupt(f"budget journal: reservation {rid} holds unopened account {hold.account}")
        outcome = settled.get(rid)
        if outcome is None:
            held[hold.account] += hold.amount
            out.holds[rid] = hold
        elif outcome[0] is JournalRecord.COMMIT:
            committed[hold.account] += outcome[1]
            out.spend[hold.ref_a] = out.spend.get(hold.ref_a, 0) + outcome[1]
    for rid in settled.keys() - made.keys():
        # An expiry sweep can journal a hold whose reserve was never acknowledged (the
        # reserver died before its record landed): nothing to undo. Anything else is damage.
        if settled[rid][0] is not JournalRecord.EXPIRE:
            raise StorageCorrupt(f"budget journal settles reservation {rid}, which no journal reserved")
    for account, (name, initial, cap) in opened.items():
        topped = top_ups.get(account, 0)
        remaining = initial + topped - held[account] - committed[account]
        if remaining < 0:
            raise StorageCorrupt(f"budget journal overspends account {name!r} by {-remaining}")
        out.accounts[account] = AccountState(
            account, name, initial, remaining, held[account], committed[account], cap, topped)
    for account in top_ups.keys() - opened.keys():
        raise StorageCorrupt(f"budget journal tops up account {account}, which no journal opened")
    # Above every id any record names: an expiry can name a reserve no journal has.
    out.next_reservation_id = max(made.keys() | settled.keys(), default=0) + 1
    return out


def _apply(kind, payload, opened, top_ups, made, settled, where) -> None:
    if kind is JournalRecord.OPEN:
        account, initial, cap = _OPEN.unpack_from(payload)
        name = payload[_OPEN.size:].decode()
        if account in opened:
            raise ValueError(f"account {account} opened twice")
        if initial < 0 or not 0 < cap <= NO_CAP:
            raise ValueError(f"account {name!r} opened with initial {initial}, cap {cap}")
        opened[account] = (name, initial, cap)
    elif kind is JournalRecord.TOP_UP:
        account, amount = _TOP_UP.unpack(payload)
        if amount <= 0:
            raise ValueError(f"top-up of {amount}")
        top_ups[account] = top_ups.get(account, 0) + amount
    elif kind is JournalRecord.RESERVE:
        rid, account, amount, expires, ref_a, ref_b = _RESERVE.unpack(payload)
        if rid in made or amount <= 0:
            raise ValueError(f"reservation {rid} reserved twice or for {amount}")
        made[rid] = ReservationState(rid, account, amount, expires, "held", 0, ref_a, ref_b)
    else:
        if kind is JournalRecord.COMMIT:
            rid, amount = _COMMIT.unpack(payload)
        else:
            (rid,), amount = _ID.unpack(payload), 0
        if rid in settled:
            raise ValueError(f"reservation {rid} settled twice")
        settled[rid] = (kind, amount)
