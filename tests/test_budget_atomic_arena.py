"""The pure-Python budget arena (syntra.budget.atomic_arena) against docs/budget-arena.md.

Each test works on a fresh arena file; the byte-level checks read the file the way another
implementation would, so a layout slip shows here and not only when the two meet.
"""

import gc
import math
import multiprocessing
import re
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from syntra_core.budget import (
    MAX_RESERVATION_ID,
    MAX_TTL_SECONDS,
    NO_CAP,
    AccountExists,
    AccountsFull,
    AccountState,
    AmountOverflow,
    ArenaBusy,
    ArenaCorrupt,
    ExposureCapExceeded,
    InsufficientFunds,
    InvalidAmount,
    InvalidName,
    ReservationExpired,
    ReservationSettled,
    ReservationsFull,
    ReservationState,
    UnknownAccount,
    UnknownReservation,
)

from syntra.budget import atomic_arena
from syntra.budget.atomic_arena import AtomicArena

INT64_MAX = (1 << 63) - 1
NOW = 1_700_000_000_000_000_000
SECOND = 1_000_000_000
HEADER = struct.Struct("<8sIIIIIIQQQQ")


@pytest.fixture
def arena(tmp_path):
    with AtomicArena.create(tmp_path / "arena", accounts=4, reservations=8) as arena:
        yield arena


def word_at(path, offset):
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack("<Q", f.read(8))[0]


def write_at(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def slot_offset(accounts, slot):
    return 128 + 128 * accounts + 64 * slot


def balanced(state):
    return state.remaining + state.reserved + state.committed == state.initial + state.topped_up


# -- the file -----------------------------------------------------------------------------

def test_create_writes_the_documented_header(tmp_path):
    path = tmp_path / "arena"
    AtomicArena.create(path, accounts=3, reservations=5).close()
    data = path.read_bytes()
    assert len(data) == 128 + 128 * 3 + 64 * 5
    assert HEADER.unpack_from(data) == (b"SYNBUDGT", 1, 128, 3, 128, 5, 64, 128, 128 + 384,
                                        len(data), 1)
    assert data[88:] == bytes(len(data) - 88)   # reserved header bytes and every slot


def test_create_refuses_an_existing_file_and_bad_capacities(tmp_path):
    path = tmp_path / "arena"
    AtomicArena.create(path, accounts=1, reservations=1).close()
    with pytest.raises(FileExistsError):
        AtomicArena.create(path)
    for accounts, reservations in [(0, 8), (4097, 8), (4, 0), (4, (1 << 24) + 1)]:
        with pytest.raises(ValueError, match="accounts|reservations"):
            AtomicArena.create(tmp_path / "other", accounts=accounts, reservations=reservations)
    assert not (tmp_path / "other").exists()


def test_open_exposes_the_geometry(tmp_path):
    path = tmp_path / "arena"
    AtomicArena.create(path, accounts=7, reservations=9).close()
    with AtomicArena.open(path) as arena:
        assert (arena.path, arena.account_capacity, arena.reservation_capacity) == (str(path), 7, 9)
        assert arena.next_reservation_id == 1
        assert arena.accounts() == [] and arena.reservations() == []
        assert "accounts=7" in repr(arena)


@pytest.mark.parametrize("offset, data, message", [
    (0, b"SYNBUDGX", "bad magic"),
    (8, struct.pack("<I", 2), "version 2"),
    (12, struct.pack("<I", 64), "header_bytes is 64"),
    (20, struct.pack("<I", 256), "account_bytes is 256"),
    (28, struct.pack("<I", 32), "reservation_bytes is 32"),
    (32, struct.pack("<Q", 0), "accounts_offset is 0"),
    (16, struct.pack("<I", 0), "account_capacity is 0"),
    (24, struct.pack("<I", (1 << 24) + 1), "reservation_capacity"),
    (16, struct.pack("<I", 5), "reservations_offset is 640, the capacities give 768"),
    (40, struct.pack("<Q", 999), "reservations_offset is 999"),
    (48, struct.pack("<Q", 4200), "file_bytes is 4200"),
])
def test_a_damaged_header_is_corrupt(tmp_path, offset, data, message):
    path = tmp_path / "arena"
    AtomicArena.create(path, accounts=4, reservations=8).close()
    write_at(path, offset, data)
    with pytest.raises(ArenaCorrupt, match=message):
        AtomicArena.open(path)


def test_a_file_of_the_wrong_size_is_corrupt(tmp_path):
    path = tmp_path / "arena"
    AtomicArena.create(path, accounts=4, reservations=8).close()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 64)
    with pytest.raises(ArenaCorrupt, match=f"file is {size - 64} bytes, header says {size}"):
        AtomicArena.open(path)
    with open(path, "r+b") as f:
        f.truncate(size + 8)
    with pytest.raises(ArenaCorrupt, match=f"file is {size + 8} bytes"):
        AtomicArena.open(path)
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ArenaCorrupt, match="file is 100 bytes, shorter than the 128-byte"):
        AtomicArena.open(path)
    path.write_bytes(b"")
    with pytest.raises(ArenaCorrupt, match="file is 0 bytes"):
        AtomicArena.open(path)


def test_reopen_after_close_sees_the_same_state(tmp_path):
    path = tmp_path / "arena"
    with AtomicArena.create(path, accounts=4, reservations=8) as arena:
        a = arena.open_account("a", 1_000, exposure_cap=700)
        b = arena.open_account("b.2-x_", 50)
        arena.top_up(b, 25)
        kept = arena.reserve(a, 300, 60, ref_a=7, ref_b=9, now_ns=NOW)
        spent = arena.reserve(a, 200, 60, now_ns=NOW)
        arena.commit(spent, 150, now_ns=NOW)
        before = (arena.accounts(), arena.reservations(), arena.next_reservation_id)
    assert arena.closed
    with AtomicArena.open(path) as again:
        assert (again.accounts(), again.reservations(), again.next_reservation_id) == before
        assert again.find_account("b.2-x_") == b
        assert again.reservation(spent).state == "committed"
        assert again.release(kept, now_ns=NOW) == 300
        assert again.account(a).remaining == 850


def test_closed_arena_refuses_every_call(tmp_path):
    arena = AtomicArena.create(tmp_path / "arena", accounts=1, reservations=1)
    arena.close()
    arena.close()   # idempotent
    for call in (lambda: arena.accounts(), lambda: arena.next_reservation_id,
                 lambda: arena.top_up(0, 1), lambda: arena.reservation(1)):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_an_unclosed_arena_is_collected_quietly(tmp_path, monkeypatch):
    complaints = []
    monkeypatch.setattr(sys, "unraisablehook", complaints.append)
    arena = AtomicArena.create(tmp_path / "arena", accounts=2, reservations=4)
    account = arena.open_account("a", 10)
    arena.commit(arena.reserve(account, 5, 1), 5)
    del arena
    gc.collect()
    assert complaints == []


# -- accounts ------------------------------------------------------------------------------

def test_open_account_fills_the_slot(arena):
    assert arena.open_account("llm", 1_000) == 0
    assert arena.open_account("tools", 0, exposure_cap=5) == 1
    assert arena.account(0) == AccountState(0, "llm", 1_000, 1_000, 0, 0, NO_CAP, 0)
    assert arena.account(1) == AccountState(1, "tools", 0, 0, 0, 0, 5, 0)
    assert [a.name for a in arena.accounts()] == ["llm", "tools"]
    assert arena.find_account("tools") == 1
    slot = 128 + 128
    assert word_at(arena.path, slot) == 2                       # open
    assert word_at(arena.path, slot + 56) == 5                  # name_length
    assert Path(arena.path).read_bytes()[slot + 64:slot + 128] == b"tools".ljust(64, b"\0")


def test_open_account_refusals(arena):
    arena.open_account("a", 1)
    with pytest.raises(AccountExists, match="'a'"):
        arena.open_account("a", 5)
    for name in ["b", "c", "d"]:
        arena.open_account(name, 1)
    with pytest.raises(AccountsFull):
        arena.open_account("e", 1)


@pytest.mark.parametrize("name", ["", "x" * 65, "a b", "a/b", "é", "a\n", 5, None, b"ab"])
def test_invalid_names(arena, name):
    with pytest.raises(InvalidName):
        arena.open_account(name, 1)
    with pytest.raises(InvalidName):
        arena.find_account(name)


def test_longest_name(arena):
    name = "A-z_0.9" * 9 + "x"
    assert len(name) == 64
    assert arena.account(arena.open_account(name, 1)).name == name


def test_open_account_checks_its_amounts(arena):
    with pytest.raises(InvalidAmount, match="initial"):
        arena.open_account("a", -1)
    with pytest.raises(InvalidAmount, match="exposure_cap"):
        arena.open_account("a", 1, exposure_cap=0)
    with pytest.raises(InvalidAmount, match="exposure_cap"):
        arena.open_account("a", 1, exposure_cap=1.0)
    assert arena.accounts() == []
    assert arena.account(arena.open_account("a", INT64_MAX, INT64_MAX)).initial == INT64_MAX


def test_unknown_accounts(arena):
    arena.open_account("a", 10)
    with pytest.raises(UnknownAccount, match="'b'"):
        arena.find_account("b")
    for index in (-1, 1, 3, 4, 10**30):
        with pytest.raises(UnknownAccount):
            arena.account(index)
        with pytest.raises(UnknownAccount):
            arena.top_up(index, 1)
        with pytest.raises(UnknownAccount):
            arena.reserve(index, 1, 1)


def test_top_up(arena):
    a = arena.open_account("a", 100)
    arena.top_up(a, 50)
    arena.top_up(a, np.int64(5))
    assert arena.account(a) == AccountState(a, "a", 100, 155, 0, 0, NO_CAP, 55)


def test_top_up_overflow_changes_nothing(arena):
    a = arena.open_account("a", INT64_MAX - 10)
    arena.top_up(a, 10)
    with pytest.raises(AmountOverflow, match=f"account {a}"):
        arena.top_up(a, 1)
    b = arena.open_account("b", 0)
    arena.top_up(b, INT64_MAX)
    with pytest.raises(AmountOverflow):
        arena.top_up(b, 1)
    assert arena.account(a).remaining == INT64_MAX and arena.account(a).topped_up == 10
    assert arena.account(b).topped_up == INT64_MAX


# -- amounts --------------------------------------------------------------------------------

BAD_AMOUNTS = [math.nan, math.inf, -math.inf, -1, 0, 2**63, 1.5, 1.0, True, False, "5", None,
               np.float64(3)]


@pytest.mark.parametrize("bad", BAD_AMOUNTS, ids=repr)
def test_invalid_amounts_are_refused_everywhere(arena, bad):
    a = arena.open_account("a", 1_000)
    hold = arena.reserve(a, 100, 60)
    before = arena.account(a)
    with pytest.raises(InvalidAmount, match=f"amount.*{re.escape(repr(bad))}"):
        arena.top_up(a, bad)
    with pytest.raises(InvalidAmount, match="amount"):
        arena.reserve(a, bad, 60)
    if not (type(bad) is int and bad == 0):
        with pytest.raises(InvalidAmount, match="actual"):
            arena.commit(hold, bad)
    assert arena.account(a) == before
    assert arena.reservation(hold).state == "held"


@pytest.mark.parametrize("ttl", [0, -1, 0.0, math.nan, math.inf, -math.inf, MAX_TTL_SECONDS + 1,
                                 MAX_TTL_SECONDS + 0.5, 10**400, "5", None, True])
def test_invalid_ttls(arena, ttl):
    a = arena.open_account("a", 1_000)
    with pytest.raises(InvalidAmount, match="ttl"):
        arena.reserve(a, 1, ttl)
    assert arena.account(a).remaining == 1_000 and arena.next_reservation_id == 1


def test_ttl_becomes_nanoseconds(arena):
    a = arena.open_account("a", 1_000)
    for ttl, ns in [(1, SECOND), (0.5, SECOND // 2), (1e-12, 1), (MAX_TTL_SECONDS,
                                                                    MAX_TTL_SECONDS * SECOND)]:
        assert arena.reservation(arena.reserve(a, 1, ttl, now_ns=NOW)).expires_ns == NOW + ns
    # A deadline past the end of int64 time saturates.
    late = arena.reserve(a, 1, 10, now_ns=INT64_MAX - 5)
    assert arena.reservation(late).expires_ns == INT64_MAX


@pytest.mark.parametrize("now", [-1, 2**63, 1.5, True, "0"])
def test_invalid_now(arena, now):
    a = arena.open_account("a", 10)
    with pytest.raises(ValueError, match="now_ns"):
        arena.reserve(a, 1, 1, now_ns=now)
    with pytest.raises(ValueError, match="now_ns"):
        arena.expire_due(now)


def test_numpy_integers_are_amounts(arena):
    a = arena.open_account("a", np.int64(100), exposure_cap=np.uint32(90))
    hold = arena.reserve(np.int32(a), np.int64(80), np.float64(1.5), now_ns=NOW)
    assert arena.commit(np.uint64(hold), np.int16(70), now_ns=NOW) == 70


# -- reserve ----------------------------------------------------------------------------------

def test_reserve_holds_the_amount(arena):
    a = arena.open_account("a", 1_000)
    hold = arena.reserve(a, 300, 60, ref_a=2**64 - 1, ref_b=42, now_ns=NOW)
    assert hold == 1 and arena.next_reservation_id == 2
    assert arena.account(a) == AccountState(a, "a", 1_000, 700, 300, 0, NO_CAP, 0)
    assert arena.reservation(hold) == ReservationState(
        hold, a, 300, NOW + 60 * SECOND, "held", 0, 2**64 - 1, 42)
    assert arena.reservations() == [arena.reservation(hold)]
    slot = slot_offset(4, hold % 8)
    assert word_at(arena.path, slot) == hold << 3 | 2
    assert word_at(arena.path, slot + 40) == 2**64 - 1


def test_reserve_refusals_change_nothing(arena):
    a = arena.open_account("a", 1_000, exposure_cap=500)
    arena.reserve(a, 400, 60)
    with pytest.raises(ExposureCapExceeded, match=f"account {a}"):
        arena.reserve(a, 101, 60)
    arena.reserve(a, 100, 60)   # exactly at the cap
    b = arena.open_account("b", 100)
    with pytest.raises(InsufficientFunds, match=f"account {b}"):
        arena.reserve(b, 101, 60)
    assert arena.account(a) == AccountState(a, "a", 1_000, 500, 500, 0, 500, 0)
    assert arena.account(b) == AccountState(b, "b", 100, 100, 0, 0, NO_CAP, 0)
    assert arena.next_reservation_id == 3


@pytest.mark.parametrize("ref", [-1, 2**64, 1.0, True])
def test_references_are_u64(arena, ref):
    a = arena.open_account("a", 10)
    with pytest.raises(InvalidAmount, match="ref_a"):
        arena.reserve(a, 1, 1, ref_a=ref)
    assert arena.account(a).reserved == 0


def test_reservations_full_undoes_the_hold(tmp_path):
    with AtomicArena.create(tmp_path / "arena", accounts=1, reservations=3) as arena:
        a = arena.open_account("a", 100)
        holds = [arena.reserve(a, 10, 60) for _ in range(3)]
        assert holds == [1, 2, 3]
        with pytest.raises(ReservationsFull):
            arena.reserve(a, 10, 60)
        assert arena.account(a) == AccountState(a, "a", 100, 70, 30, 0, NO_CAP, 0)
        assert arena.next_reservation_id == 7     # every slot was tried, each with an id
        # A settled slot is reused; ids whose slot was live are skipped for good.
        arena.commit(2, 10)
        assert arena.reserve(a, 10, 60) == 8      # 8 % 3 == 2, the slot of id 2
        assert arena.reservation(2) is None
        with pytest.raises(ReservationSettled):
            arena.commit(2, 1)
        with pytest.raises(ReservationSettled):   # 5 was handed out and skipped
            arena.release(5)


def test_ids_near_the_top_of_the_word(tmp_path):
    path = tmp_path / "arena"
    AtomicArena.create(path, accounts=1, reservations=4).close()
    write_at(path, 56, struct.pack("<Q", MAX_RESERVATION_ID - 1))
    with AtomicArena.open(path) as arena:
        a = arena.open_account("a", 100)
        first = arena.reserve(a, 10, 60, now_ns=NOW)
        last = arena.reserve(a, 10, 60, now_ns=NOW)
        assert (first, last) == (MAX_RESERVATION_ID - 1, MAX_RESERVATION_ID)
        assert word_at(path, slot_offset(1, last % 4)) == last << 3 | 2
        assert arena.reservation(last).state == "held"
        with pytest.raises(ReservationsFull):     # no id is left
            arena.reserve(a, 10, 60)
        assert arena.commit(last, 4, now_ns=NOW) == 4
        assert word_at(path, slot_offset(1, last % 4)) == last << 3 | 4
        assert arena.release(first, now_ns=NOW) == 10
        assert arena.account(a) == AccountState(a, "a", 100, 96, 0, 4, NO_CAP, 0)


# -- commit and release ---------------------------------------------------------------------

@pytest.mark.parametrize("actual, remaining", [(300, 700), (120, 880), (0, 1_000)])
def test_commit_at_or_under_the_hold(arena, actual, remaining):
    a = arena.open_account("a", 1_000)
    hold = arena.reserve(a, 300, 60, now_ns=NOW)
    assert arena.commit(hold, actual, now_ns=NOW) == actual
    assert arena.account(a) == AccountState(a, "a", 1_000, remaining, 0, actual, NO_CAP, 0)
    assert arena.reservation(hold).state == "committed"
    assert arena.reservation(hold).settled == actual
    assert arena.reservations() == []


def test_commit_over_the_hold_takes_the_overrun(arena):
    a = arena.open_account("a", 1_000, exposure_cap=300)
    hold = arena.reserve(a, 300, 60, now_ns=NOW)
    assert arena.commit(hold, 1_000, now_ns=NOW) == 1_000   # the cap bounds holds, not spend
    assert arena.account(a) == AccountState(a, "a", 1_000, 0, 0, 1_000, 300, 0)


def test_a_refused_overrun_keeps_the_hold(arena):
    a = arena.open_account("a", 1_000)
    hold = arena.reserve(a, 300, 60, now_ns=NOW)
    before = arena.account(a)
    with pytest.raises(InsufficientFunds, match=f"reservation {hold}"):
        arena.commit(hold, 1_001, now_ns=NOW)
    assert arena.account(a) == before
    assert arena.reservation(hold).state == "held"
    assert arena.commit(hold, 1_000, now_ns=NOW) == 1_000


def test_release(arena):
    a = arena.open_account("a", 1_000)
    hold = arena.reserve(a, 300, 60, ref_a=1, now_ns=NOW)
    assert arena.release(hold, now_ns=NOW) == 300
    assert arena.account(a) == AccountState(a, "a", 1_000, 1_000, 0, 0, NO_CAP, 0)
    assert arena.reservation(hold) == ReservationState(
        hold, a, 300, NOW + 60 * SECOND, "released", 0, 1, 0)


@pytest.mark.parametrize("first", ["commit", "release"])
def test_settling_twice_moves_nothing(arena, first):
    a = arena.open_account("a", 1_000)
    hold = arena.reserve(a, 300, 60, now_ns=NOW)
    if first == "commit":
        arena.commit(hold, 100, now_ns=NOW)
    else:
        arena.release(hold, now_ns=NOW)
    after = arena.account(a)
    with pytest.raises(ReservationSettled, match=f"reservation {hold}"):
        arena.commit(hold, 100, now_ns=NOW)
    with pytest.raises(ReservationSettled):
        arena.release(hold, now_ns=NOW)
    assert arena.account(a) == after


def test_unknown_reservations(arena):
    a = arena.open_account("a", 1_000)
    arena.reserve(a, 1, 60)
    for id in (0, 2, 3, 10**6, MAX_RESERVATION_ID + 1, -1):
        with pytest.raises(UnknownReservation):
            arena.commit(id, 1)
        with pytest.raises(UnknownReservation):
            arena.release(id)
        assert arena.reservation(id) is None


# -- expiry -----------------------------------------------------------------------------------

@pytest.mark.parametrize("touch", ["commit", "release"])
def test_a_due_hold_expires_on_touch_exactly_once(arena, touch):
    a = arena.open_account("a", 1_000)
    hold = arena.reserve(a, 300, 10, now_ns=NOW)
    call = (lambda: arena.commit(hold, 300, now_ns=NOW + 10 * SECOND)) if touch == "commit" \
        else (lambda: arena.release(hold, now_ns=NOW + 10 * SECOND))
    with pytest.raises(ReservationExpired, match="expired now") as first:
        call()
    assert (first.value.reservation_id, first.value.account, first.value.amount,
            first.value.expired_here) == (hold, a, 300, True)
    assert first.value.reason == "expired"
    assert arena.account(a) == AccountState(a, "a", 1_000, 1_000, 0, 0, NO_CAP, 0)
    assert arena.reservation(hold).state == "expired"
    with pytest.raises(ReservationExpired, match="expired earlier") as second:
        call()
    assert (second.value.amount, second.value.expired_here) == (300, False)
    assert arena.account(a).remaining == 1_000
    assert arena.expire_due(NOW + 20 * SECOND) == []


def test_a_hold_is_live_until_its_deadline(arena):
    a = arena.open_account("a", 1_000)
    hold = arena.reserve(a, 300, 10, now_ns=NOW)
    assert arena.commit(hold, 300, now_ns=NOW + 10 * SECOND - 1) == 300


def test_expire_due_sweeps_only_due_holds(arena):
    a = arena.open_account("a", 1_000)
    b = arena.open_account("b", 1_000)
    soon = arena.reserve(a, 100, 10, ref_a=5, ref_b=6, now_ns=NOW)
    later = arena.reserve(b, 200, 30, now_ns=NOW)
    gone = arena.reserve(a, 50, 1, now_ns=NOW)
    arena.release(gone, now_ns=NOW)
    assert arena.expire_due(NOW + 5 * SECOND) == []
    assert arena.expire_due(NOW + 10 * SECOND) == [
        ReservationState(soon, a, 100, NOW + 10 * SECOND, "expired", 0, 5, 6)]
    assert arena.expire_due(NOW + 10 * SECOND) == []
    assert [r.id for r in arena.reservations()] == [later]
    assert arena.account(a) == AccountState(a, "a", 1_000, 1_000, 0, 0, NO_CAP, 0)
    with pytest.raises(ReservationExpired) as touched:
        arena.commit(soon, 1, now_ns=NOW + 10 * SECOND)
    assert touched.value.expired_here is False
    assert [r.id for r in arena.expire_due(NOW + 60 * SECOND)] == [later]
    assert arena.account(b).remaining == 1_000


# -- words mid-change ---------------------------------------------------------------------------

@pytest.mark.parametrize("state", [1, 3])   # claimed, settling
def test_a_word_stuck_mid_change_is_busy(arena, monkeypatch, state):
    monkeypatch.setattr(atomic_arena, "_SPIN_SECONDS", 0.01)
    a = arena.open_account("a", 1_000)
    hold = arena.reserve(a, 300, 60, now_ns=NOW)
    write_at(arena.path, slot_offset(4, hold % 8), struct.pack("<Q", hold << 3 | state))
    with pytest.raises(ArenaBusy, match=f"reservation {hold}"):
        arena.commit(hold, 1, now_ns=NOW)
    write_at(arena.path, slot_offset(4, hold % 8), struct.pack("<Q", hold << 3 | 2))
    assert arena.release(hold, now_ns=NOW) == 300


def test_a_half_opened_account_is_busy(arena, monkeypatch):
    monkeypatch.setattr(atomic_arena, "_SPIN_SECONDS", 0.01)
    write_at(arena.path, 128, struct.pack("<q", 1))
    with pytest.raises(ArenaBusy, match="account slot 0"):
        arena.open_account("a", 1)


def test_cached_views_are_evicted_and_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic_arena, "_SLOT_VIEWS", 2)
    with AtomicArena.create(tmp_path / "arena", accounts=1, reservations=16) as arena:
        a = arena.open_account("a", 1_000)
        holds = [arena.reserve(a, 10, 60) for _ in range(10)]
        for hold in holds:
            arena.commit(hold, 5)
        assert len(arena._slot_views) == 2
        assert arena.account(a) == AccountState(a, "a", 1_000, 950, 0, 50, NO_CAP, 0)


# -- many writers ---------------------------------------------------------------------------------

def _writer(path, account, rounds):
    with AtomicArena.open(path) as arena:
        for i in range(rounds):
            hold = arena.reserve(account, 3, 60)
            if i % 2:
                arena.commit(hold, 2)
            else:
                arena.release(hold)
            arena.top_up(account, 1)


def test_processes_share_the_arena(tmp_path):
    path = tmp_path / "arena"
    with AtomicArena.create(path, accounts=1, reservations=64) as arena:
        a = arena.open_account("a", 1_000)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_writer, args=(path, a, 40)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    with AtomicArena.open(path) as arena:
        assert arena.account(a) == AccountState(a, "a", 1_000, 1_000 - 120 + 120, 0, 120,
                                                NO_CAP, 120)
        # An id whose slot another process still held was skipped, never handed out.
        assert arena.next_reservation_id >= 121


# -- the invariant ----------------------------------------------------------------------------------

OPS = st.lists(st.tuples(
    st.sampled_from(["reserve", "commit", "release", "top_up", "expire", "open"]),
    st.integers(0, 2),                     # account
    st.integers(1, 400),                   # amount
    st.integers(0, 7),                     # which hold
    st.integers(0, 3),                     # seconds that pass
), max_size=30)


@settings(max_examples=50, deadline=None)
@given(OPS)
def test_money_is_conserved(ops):
    with tempfile.TemporaryDirectory() as directory, \
            AtomicArena.create(Path(directory) / "arena", accounts=3, reservations=4) as arena:
        arena.open_account("a", 1_000, exposure_cap=600)
        holds, now = [], NOW
        for op, account, amount, pick, wait in ops:
            now += wait * SECOND
            try:
                if op == "open":
                    arena.open_account(f"n{len(arena.accounts())}", amount)
                elif op == "top_up":
                    arena.top_up(account, amount)
                elif op == "reserve":
                    holds.append(arena.reserve(account, amount, 2, now_ns=now))
                elif op == "expire":
                    arena.expire_due(now)
                elif holds and op == "commit":
                    arena.commit(holds[pick % len(holds)], amount, now_ns=now)
                elif holds:
                    arena.release(holds[pick % len(holds)], now_ns=now)
            except (UnknownAccount, AccountsFull, InsufficientFunds, ExposureCapExceeded,
                    ReservationsFull, ReservationSettled, ReservationExpired):
                pass
            live = arena.reservations()
            for state in arena.accounts():
                assert balanced(state)
                assert min(state.remaining, state.reserved, state.committed) >= 0
                assert state.reserved <= state.exposure_cap
                assert state.reserved == sum(r.amount for r in live if r.account == state.index)
