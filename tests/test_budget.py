"""The budget arena and the durable Budget, against docs/budget-arena.md.

Expected numbers are worked out from the spec by hand (or by the small pure-Python model
below, written from the spec), never copied from a run of the implementation. File bytes
are decoded here with struct from the layout tables, not through the module.
"""

import os
import shutil
import struct
import threading
import time

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from syntra_core.budget import (
    AccountExists,
    AccountsFull,
    AccountState,
    AmountOverflow,
    Arena,
    ArenaCorrupt,
    BudgetError,
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
from syntra_core.wal import Wal, WalError, scan

from syntra.budget import Budget, BudgetLocked, journal
from syntra.budget.verify import check_invariants
from syntra.errors import StorageCorrupt, StorageError

I64_MAX = 2**63 - 1
MAX_ID = 2**61 - 1
SEC = 10**9
NOW = 1_700_000_000 * SEC  # a fixed "now" for every expiry test: no sleeping

# docs/budget-arena.md, "Layout" and "The journal"
HEADER = struct.Struct("<8sIIIIIIQQQQ64s")
ACCOUNT = struct.Struct("<qqqqqqqq64s")
RESERVATION = struct.Struct("<QqqqqQQQ")
OPEN_REC = struct.Struct("<Iqq")
TOP_UP_REC = struct.Struct("<Iq")
RESERVE_REC = struct.Struct("<QIqqQQ")
COMMIT_REC = struct.Struct("<Qq")
ID_REC = struct.Struct("<Q")
R_OPEN, R_TOP_UP, R_RESERVE, R_COMMIT, R_RELEASE, R_EXPIRE = 1, 2, 3, 4, 5, 6


def acct(index, name, initial, remaining, reserved, committed, cap=I64_MAX, topped=0):
    return AccountState(index, name, initial, remaining, reserved, committed, cap, topped)


def snapshot(arena):
    return arena.accounts(), arena.reservations(), arena.next_reservation_id


@pytest.fixture
def arena():
    a = Arena.anonymous(accounts=4, reservations=8)
    yield a
    a.close()


def refused(arena, exc_type, fn, *args, **kwargs):
    """Call fn, expect exc_type, and check that no account, hold or id moved."""
    before = snapshot(arena)
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    assert type(info.value) is exc_type
    assert snapshot(arena) == before
    assert check_invariants(arena.accounts(), arena.reservations()) == []
    return info.value


# ---------------------------------------------------------------------------------------
# Field effects of each operation


def test_open_account_fields(arena):
    assert arena.open_account("llm", 1000) == 0
    assert arena.open_account("b.x-Y_9", 0, exposure_cap=300) == 1
    assert arena.account(0) == acct(0, "llm", 1000, 1000, 0, 0)
    assert arena.account(1) == acct(1, "b.x-Y_9", 0, 0, 0, 0, cap=300)
    assert arena.accounts() == [arena.account(0), arena.account(1)]
    assert arena.find_account("b.x-Y_9") == 1
    assert arena.open_account("n" * 64, 5) == 2  # 64 bytes is the longest name


def test_top_up_fields(arena):
    arena.open_account("a", 1000)
    assert arena.top_up(0, 250) is None
    assert arena.account(0) == acct(0, "a", 1000, 1250, 0, 0, topped=250)
    arena.top_up(0, 1)
    assert arena.account(0) == acct(0, "a", 1000, 1251, 0, 0, topped=251)


def test_reserve_fields(arena):
    arena.open_account("a", 1000)
    rid = arena.reserve(0, 400, ttl=5, ref_a=7, ref_b=9, now_ns=NOW)
    assert rid == 1  # next_reservation_id starts at 1
    assert arena.next_reservation_id == 2
    assert arena.account(0) == acct(0, "a", 1000, 600, 400, 0)
    hold = ReservationState(1, 0, 400, NOW + 5 * SEC, "held", 0, 7, 9)
    assert arena.reservation(1) == hold
    assert arena.reservations() == [hold]
    assert arena.reserve(0, 600, ttl=0.5, now_ns=NOW) == 2  # exactly the rest
    assert arena.reservation(2).expires_ns == NOW + SEC // 2
    assert arena.account(0) == acct(0, "a", 1000, 0, 1000, 0)


def test_reserve_deadline_saturates(arena):
    arena.open_account("a", 10)
    rid = arena.reserve(0, 1, ttl=10, now_ns=I64_MAX - SEC)
    assert arena.reservation(rid).expires_ns == I64_MAX


@pytest.mark.parametrize(
    "actual, remaining, committed",
    [
        (0, 1000, 0),      # nothing spent: all of it comes back
        (150, 850, 150),   # below the hold: 250 comes back
        (400, 600, 400),   # at the hold
        (700, 300, 700),   # above: the 300 overrun comes out of remaining
        (1000, 0, 1000),   # above, taking every last microcent
    ],
)
def test_commit_fields(arena, actual, remaining, committed):
    arena.open_account("a", 1000)
    rid = arena.reserve(0, 400, ttl=5, ref_a=3, now_ns=NOW)
    assert arena.commit(rid, actual, now_ns=NOW) == actual
    assert arena.account(0) == acct(0, "a", 1000, remaining, 0, committed)
    assert arena.reservation(rid) == ReservationState(rid, 0, 400, NOW + 5 * SEC, "committed", actual, 3, 0)
    assert arena.reservations() == []
    assert check_invariants(arena.accounts(), arena.reservations()) == []


def test_commit_overrun_refused_keeps_hold_then_commit_works(arena):
    arena.open_account("a", 1000)
    rid = arena.reserve(0, 400, ttl=5, now_ns=NOW)
    # remaining is 600: an overrun of 601 is not there
    refused(arena, InsufficientFunds, arena.commit, rid, 1001, now_ns=NOW)
    assert arena.reservation(rid).state == "held"
    assert arena.account(0) == acct(0, "a", 1000, 600, 400, 0)
    assert arena.commit(rid, 1000, now_ns=NOW) == 1000  # overrun 600: exactly there
    assert arena.account(0) == acct(0, "a", 1000, 0, 0, 1000)


def test_commit_overrun_refused_then_release_works(arena):
    arena.open_account("a", 1000)
    other = arena.reserve(0, 500, ttl=5, now_ns=NOW)
    rid = arena.reserve(0, 400, ttl=5, now_ns=NOW)
    refused(arena, InsufficientFunds, arena.commit, rid, 501, now_ns=NOW)  # remaining 100
    assert arena.release(rid, now_ns=NOW) == 400
    assert arena.account(0) == acct(0, "a", 1000, 500, 500, 0)
    assert arena.commit(other, 0, now_ns=NOW) == 0
    assert arena.account(0) == acct(0, "a", 1000, 1000, 0, 0)


def test_release_fields(arena):
    arena.open_account("a", 1000)
    rid = arena.reserve(0, 400, ttl=5, ref_b=11, now_ns=NOW)
    assert arena.release(rid, now_ns=NOW) == 400
    assert arena.account(0) == acct(0, "a", 1000, 1000, 0, 0)
    assert arena.reservation(rid) == ReservationState(rid, 0, 400, NOW + 5 * SEC, "released", 0, 0, 11)
    assert arena.reservations() == []


def test_second_commit_or_release_moves_nothing(arena):
    arena.open_account("a", 1000)
    committed = arena.reserve(0, 400, ttl=5, now_ns=NOW)
    released = arena.reserve(0, 100, ttl=5, now_ns=NOW)
    arena.commit(committed, 300, now_ns=NOW)
    arena.release(released, now_ns=NOW)
    assert arena.account(0) == acct(0, "a", 1000, 700, 0, 300)
    for rid in (committed, released):
        refused(arena, ReservationSettled, arena.commit, rid, 300, now_ns=NOW)
        refused(arena, ReservationSettled, arena.commit, rid, 0, now_ns=NOW)
        refused(arena, ReservationSettled, arena.release, rid, now_ns=NOW)
        # long after its deadline it is still settled, not expired
        refused(arena, ReservationSettled, arena.release, rid, now_ns=NOW + 100 * SEC)
    assert arena.expire_due(NOW + 100 * SEC) == []
    assert arena.reservation(committed).settled == 300
    assert arena.reservation(released).state == "released"
    assert arena.account(0) == acct(0, "a", 1000, 700, 0, 300)


# ---------------------------------------------------------------------------------------
# Refusals: the right type, and no field moves


def test_insufficient_funds(arena):
    arena.open_account("a", 1000)
    arena.reserve(0, 600, ttl=5, now_ns=NOW)
    refused(arena, InsufficientFunds, arena.reserve, 0, 401, ttl=5, now_ns=NOW)
    assert arena.next_reservation_id == 2  # refused before an id was taken
    arena.reserve(0, 400, ttl=5, now_ns=NOW)
    refused(arena, InsufficientFunds, arena.reserve, 0, 1, ttl=5, now_ns=NOW)
    arena.open_account("empty", 0)
    refused(arena, InsufficientFunds, arena.reserve, 1, 1, ttl=5, now_ns=NOW)


def test_exposure_cap(arena):
    arena.open_account("a", 1000, exposure_cap=300)
    arena.reserve(0, 200, ttl=5, now_ns=NOW)
    refused(arena, ExposureCapExceeded, arena.reserve, 0, 101, ttl=5, now_ns=NOW)
    arena.reserve(0, 100, ttl=5, now_ns=NOW)  # exactly at the cap
    assert arena.account(0) == acct(0, "a", 1000, 700, 300, 0, cap=300)
    refused(arena, ExposureCapExceeded, arena.reserve, 0, 1, ttl=5, now_ns=NOW)


def test_exposure_cap_is_checked_before_funds(arena):
    arena.open_account("poor", 50, exposure_cap=100)
    refused(arena, ExposureCapExceeded, arena.reserve, 0, 150, ttl=5, now_ns=NOW)
    refused(arena, InsufficientFunds, arena.reserve, 0, 100, ttl=5, now_ns=NOW)


def test_reservations_full_and_slot_reuse():
    with Arena.anonymous(accounts=1, reservations=2) as arena:
        arena.open_account("a", 1000)
        first = arena.reserve(0, 100, ttl=5, now_ns=NOW)   # id 1, slot 1
        second = arena.reserve(0, 200, ttl=5, now_ns=NOW)  # id 2, slot 0
        assert (first, second) == (1, 2)
        before_accounts, before_holds = arena.accounts(), arena.reservations()
        with pytest.raises(ReservationsFull):
            arena.reserve(0, 50, ttl=5, now_ns=NOW)
        assert (arena.accounts(), arena.reservations()) == (before_accounts, before_holds)
        assert arena.account(0) == acct(0, "a", 1000, 700, 300, 0)
        # two tries (R = 2): ids 3 and 4 landed on held slots and are never handed out
        assert arena.next_reservation_id == 5
        arena.release(first, now_ns=NOW)
        reused = arena.reserve(0, 50, ttl=5, now_ns=NOW)
        assert reused == 5 and reused % 2 == first % 2  # slot 1 again
        assert arena.reservation(first) is None
        refused(arena, ReservationSettled, arena.commit, first, 10, now_ns=NOW)
        refused(arena, ReservationSettled, arena.release, first, now_ns=NOW)
        refused(arena, ReservationSettled, arena.commit, 3, 10, now_ns=NOW)  # skipped id
        refused(arena, UnknownReservation, arena.commit, 6, 10, now_ns=NOW)
        assert arena.reservation(5) == ReservationState(5, 0, 50, NOW + 5 * SEC, "held", 0, 0, 0)
        assert arena.account(0) == acct(0, "a", 1000, 750, 250, 0)


def test_reservations_full_with_a_single_slot():
    with Arena.anonymous(accounts=1, reservations=1) as arena:
        arena.open_account("a", 10)
        assert arena.reserve(0, 1, ttl=1, now_ns=NOW) == 1
        with pytest.raises(ReservationsFull):
            arena.reserve(0, 1, ttl=1, now_ns=NOW)
        assert arena.next_reservation_id == 3
        assert arena.account(0) == acct(0, "a", 10, 9, 1, 0)
        # a lapsed hold keeps its slot until something expires it
        with pytest.raises(ReservationsFull):
            arena.reserve(0, 1, ttl=1, now_ns=NOW + 5 * SEC)
        assert [h.id for h in arena.expire_due(NOW + 5 * SEC)] == [1]
        assert arena.next_reservation_id == 4  # id 3 was burned by the second refusal
        assert arena.reserve(0, 1, ttl=1, now_ns=NOW + 5 * SEC) == 4


def test_unknown_account(arena):
    arena.open_account("a", 1000)
    for index in (1, 3, 4, 99, -1):
        refused(arena, UnknownAccount, arena.reserve, index, 10, ttl=5, now_ns=NOW)
        refused(arena, UnknownAccount, arena.top_up, index, 10)
        with pytest.raises(UnknownAccount):
            arena.account(index)
    with pytest.raises(UnknownAccount):
        arena.find_account("nope")


BAD_AMOUNTS = [0, -1, -(2**63), 2**63, 2**64, 1.5, 1.0, float("nan"), float("inf"),
               float("-inf"), True, False, "5", None]


@pytest.mark.parametrize("bad", BAD_AMOUNTS, ids=repr)
def test_invalid_amounts(arena, bad):
    arena.open_account("a", 1000)
    rid = arena.reserve(0, 100, ttl=5, now_ns=NOW)
    refused(arena, InvalidAmount, arena.reserve, 0, bad, ttl=5, now_ns=NOW)
    refused(arena, InvalidAmount, arena.top_up, 0, bad)
    if bad != 0 or isinstance(bad, bool):  # zero is a valid commit
        refused(arena, InvalidAmount, arena.commit, rid, bad, now_ns=NOW)
    # invalid arguments are refused before the hold is looked at, so it is not expired
    if bad != 0 or isinstance(bad, bool):
        refused(arena, InvalidAmount, arena.commit, rid, bad, now_ns=NOW + 10 * SEC)
    assert arena.reservation(rid).state == "held"
    if bad != 0 or isinstance(bad, bool):
        with pytest.raises(InvalidAmount):
            arena.open_account("b", bad)
    if bad is not None:  # None is "no cap"
        with pytest.raises(InvalidAmount):
            arena.open_account("c", 10, exposure_cap=bad)
    assert [a.name for a in arena.accounts()] == ["a"]


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), True, "5", None,
                                 10 * 365 * 86400 + 1])
def test_invalid_ttl(arena, ttl):
    arena.open_account("a", 1000)
    refused(arena, InvalidAmount, arena.reserve, 0, 10, ttl=ttl, now_ns=NOW)


def test_amount_overflow(arena):
    arena.open_account("a", 2**62)
    refused(arena, AmountOverflow, arena.top_up, 0, 2**62)  # 2**63 > 2**63-1
    arena.top_up(0, 2**62 - 1)                                # exactly 2**63-1
    assert arena.account(0) == acct(0, "a", 2**62, I64_MAX, 0, 0, topped=2**62 - 1)
    refused(arena, AmountOverflow, arena.top_up, 0, 1)
    refused(arena, AmountOverflow, arena.top_up, 0, I64_MAX)
    # spending does not make room: funding (initial + top-ups) is what is bounded
    rid = arena.reserve(0, 10, ttl=5, now_ns=NOW)
    arena.commit(rid, 10, now_ns=NOW)
    refused(arena, AmountOverflow, arena.top_up, 0, 1)
    arena.open_account("b", 0)
    arena.top_up(1, I64_MAX)
    assert arena.account(1) == acct(1, "b", 0, I64_MAX, 0, 0, topped=I64_MAX)
    refused(arena, AmountOverflow, arena.top_up, 1, 1)


def test_commit_overrun_near_int64_max_is_refused_not_wrapped(arena):
    arena.open_account("a", 1000)
    rid = arena.reserve(0, 10, ttl=5, now_ns=NOW)
    refused(arena, InsufficientFunds, arena.commit, rid, I64_MAX, now_ns=NOW)
    assert arena.account(0) == acct(0, "a", 1000, 990, 10, 0)
    arena.open_account("rich", I64_MAX - 1)
    big = arena.reserve(1, 1, ttl=5, now_ns=NOW)
    # remaining is 2**63-3; an overrun of 2**63-2 is not there
    refused(arena, InsufficientFunds, arena.commit, big, I64_MAX, now_ns=NOW)
    assert arena.commit(big, I64_MAX - 1, now_ns=NOW) == I64_MAX - 1
    assert arena.account(1) == acct(1, "rich", I64_MAX - 1, 0, 0, I64_MAX - 1)
    arena.open_account("max", I64_MAX)
    whole = arena.reserve(2, I64_MAX, ttl=5, now_ns=NOW)
    assert arena.account(2) == acct(2, "max", I64_MAX, 0, I64_MAX, 0)
    # reserved + 1 would pass even "no cap" (2**63-1); the cap is checked before funds
    refused(arena, ExposureCapExceeded, arena.reserve, 2, 1, ttl=5, now_ns=NOW)
    assert arena.commit(whole, I64_MAX, now_ns=NOW) == I64_MAX
    assert arena.account(2) == acct(2, "max", I64_MAX, 0, 0, I64_MAX)


def test_unknown_reservation(arena):
    arena.open_account("a", 1000)
    rid = arena.reserve(0, 100, ttl=5, now_ns=NOW)
    for bad in (0, rid + 1, rid + 1000, MAX_ID, MAX_ID + 1, 2**64 - 1):
        refused(arena, UnknownReservation, arena.commit, bad, 1, now_ns=NOW)
        refused(arena, UnknownReservation, arena.release, bad, now_ns=NOW)
        assert arena.reservation(bad) is None


def test_reservation_expired_on_touch_exactly_once(arena):
    arena.open_account("a", 1000)
    rid = arena.reserve(0, 400, ttl=1, ref_a=5, now_ns=NOW)
    deadline = NOW + SEC
    # one nanosecond before its deadline it is still held
    before = arena.reserve(0, 100, ttl=1, now_ns=NOW)
    assert arena.commit(before, 100, now_ns=deadline - 1) == 100
    assert arena.account(0) == acct(0, "a", 1000, 500, 400, 100)
    with pytest.raises(ReservationExpired) as first:
        arena.commit(rid, 400, now_ns=deadline)  # expires_ns <= now: expired
    e = first.value
    assert (e.expired_here, e.reservation_id, e.account, e.amount) == (True, rid, 0, 400)
    assert e.reason == "expired"
    assert arena.account(0) == acct(0, "a", 1000, 900, 0, 100)
    assert arena.reservation(rid) == ReservationState(rid, 0, 400, deadline, "expired", 0, 5, 0)
    for call in (lambda: arena.release(rid, now_ns=deadline + 1),
                 lambda: arena.commit(rid, 0, now_ns=deadline),
                 lambda: arena.commit(rid, 400)):
        e = refused(arena, ReservationExpired, call)
        assert (e.expired_here, e.reservation_id, e.account, e.amount) == (False, rid, 0, 400)
    assert arena.expire_due(deadline + 100 * SEC) == []
    assert arena.account(0) == acct(0, "a", 1000, 900, 0, 100)


def test_release_expires_on_touch(arena):
    arena.open_account("a", 1000)
    rid = arena.reserve(0, 300, ttl=2, now_ns=NOW)
    with pytest.raises(ReservationExpired) as info:
        arena.release(rid, now_ns=NOW + 3 * SEC)
    assert info.value.expired_here is True
    assert arena.account(0) == acct(0, "a", 1000, 1000, 0, 0)


def test_expire_due(arena):
    arena.open_account("a", 1000)
    arena.open_account("b", 500)
    r1 = arena.reserve(0, 100, ttl=1, ref_a=1, ref_b=2, now_ns=NOW)
    r2 = arena.reserve(1, 200, ttl=2, now_ns=NOW)
    r3 = arena.reserve(0, 300, ttl=3, now_ns=NOW)
    assert arena.expire_due(NOW + SEC - 1) == []
    swept = arena.expire_due(NOW + 2 * SEC)
    assert sorted(swept) == [
        ReservationState(r1, 0, 100, NOW + SEC, "expired", 0, 1, 2),
        ReservationState(r2, 1, 200, NOW + 2 * SEC, "expired", 0, 0, 0),
    ]
    assert arena.expire_due(NOW + 2 * SEC) == []  # once only
    assert arena.account(0) == acct(0, "a", 1000, 700, 300, 0)
    assert arena.account(1) == acct(1, "b", 500, 500, 0, 0)
    assert [h.id for h in arena.reservations()] == [r3]
    e = refused(arena, ReservationExpired, arena.commit, r1, 50, now_ns=NOW)
    assert e.expired_here is False
    assert arena.commit(r3, 300, now_ns=NOW + 2 * SEC) == 300


def test_account_exists_accounts_full_invalid_name():
    with Arena.anonymous(accounts=2, reservations=4) as arena:
        arena.open_account("a", 10)
        before = snapshot(arena)
        with pytest.raises(AccountExists):
            arena.open_account("a", 99)
        assert snapshot(arena) == before
        arena.open_account("b", 20)
        before = snapshot(arena)
        with pytest.raises(AccountsFull):
            arena.open_account("c", 30)
        with pytest.raises(AccountExists):
            arena.open_account("b", 30)
        assert snapshot(arena) == before
    with Arena.anonymous(accounts=2, reservations=4) as arena:
        for name in ("", "n" * 65, "has space", "a/b", "ünï", "tab\t", 5, None, b"bytes"):
            with pytest.raises(InvalidName):
                arena.open_account(name, 10)
        assert arena.accounts() == []


# ---------------------------------------------------------------------------------------
# The file: the header and slots byte for byte, and refusing what is not an arena


def test_file_layout_matches_the_spec(tmp_path):
    path = tmp_path / "arena"
    arena = Arena.create(path, accounts=3, reservations=5)
    size = 128 + 128 * 3 + 64 * 5
    assert path.stat().st_size == size
    arena.open_account("llm", 1000, exposure_cap=700)
    arena.top_up(0, 25)
    rid = arena.reserve(0, 400, ttl=5, ref_a=0xABC, ref_b=0xDEF, now_ns=NOW)
    settled = arena.reserve(0, 100, ttl=5, now_ns=NOW)
    arena.commit(settled, 60, now_ns=NOW)
    arena.flush()
    arena.close()
    data = path.read_bytes()
    assert HEADER.unpack_from(data, 0) == (
        b"SYNBUDGT", 1, 128, 3, 128, 5, 64, 128, 128 + 3 * 128, size, 3, bytes(64))
    assert ACCOUNT.unpack_from(data, 128) == (
        2, 1000, 1025 - 400 - 60, 400, 60, 700, 25, 3, b"llm" + bytes(61))
    assert data[256:128 + 3 * 128] == bytes(256)  # unopened slots stay empty
    base = 128 + 3 * 128
    assert RESERVATION.unpack_from(data, base + 64 * (rid % 5)) == (
        rid << 3 | 2, 0, 400, NOW + 5 * SEC, 0, 0xABC, 0xDEF, 0)
    assert RESERVATION.unpack_from(data, base + 64 * (settled % 5)) == (
        settled << 3 | 4, 0, 100, NOW + 5 * SEC, 60, 0, 0, 0)
    reopened = Arena.open(path)
    assert reopened.account(0) == acct(0, "llm", 1000, 565, 400, 60, cap=700, topped=25)
    assert reopened.reserve(0, 1, ttl=1, now_ns=NOW) == 3
    reopened.close()


def _damage(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.fixture
def arena_file(tmp_path):
    path = tmp_path / "arena"
    Arena.create(path, accounts=2, reservations=4).close()
    return path, 128 + 2 * 128 + 4 * 64


@pytest.mark.parametrize("keep", [0, 100])
def test_open_short_file(arena_file, keep):
    path, _ = arena_file
    os.truncate(path, keep)
    with pytest.raises(ArenaCorrupt, match=rf"file is {keep} bytes, shorter than the 128-byte header"):
        Arena.open(path)


def test_open_truncated_body(arena_file):
    path, size = arena_file
    os.truncate(path, size - 64)
    with pytest.raises(ArenaCorrupt, match=rf"file is {size - 64} bytes, header says {size}"):
        Arena.open(path)


def test_open_grown_file(arena_file):
    path, size = arena_file
    with open(path, "ab") as f:
        f.write(bytes(64))
    with pytest.raises(ArenaCorrupt, match=rf"file is {size + 64} bytes, header says {size}"):
        Arena.open(path)


def test_open_bad_magic(arena_file):
    path, _ = arena_file
    _damage(path, 0, b"XYNBUDGT")
    with pytest.raises(ArenaCorrupt, match=r"bad magic b'XYNBUDGT'"):
        Arena.open(path)


def test_open_wrong_version(arena_file):
    path, _ = arena_file
    _damage(path, 8, struct.pack("<I", 2))
    with pytest.raises(ArenaCorrupt, match=r"arena version 2, this build reads 1"):
        Arena.open(path)


@pytest.mark.parametrize("offset, value", [
    (12, struct.pack("<I", 64)),     # header_bytes
    (20, struct.pack("<I", 64)),     # account_bytes
    (28, struct.pack("<I", 128)),    # reservation_bytes
    (32, struct.pack("<Q", 0)),      # accounts_offset
])
def test_open_wrong_sizes(arena_file, offset, value):
    path, _ = arena_file
    _damage(path, offset, value)
    with pytest.raises(ArenaCorrupt, match=r"header sizes or offsets differ"):
        Arena.open(path)


@pytest.mark.parametrize("offset, value", [
    (16, struct.pack("<I", 3)),      # account capacity no longer matches the offsets
    (24, struct.pack("<I", 5)),      # reservation capacity no longer matches file_bytes
    (40, struct.pack("<Q", 999)),    # reservations_offset
    (48, struct.pack("<Q", 999)),    # file_bytes
])
def test_open_inconsistent_header(arena_file, offset, value):
    path, _ = arena_file
    _damage(path, offset, value)
    with pytest.raises(ArenaCorrupt, match=r"header offsets disagree with its capacities"):
        Arena.open(path)


@pytest.mark.parametrize("offset, value", [
    (16, struct.pack("<I", 0)),
    (24, struct.pack("<I", 0)),
    (16, struct.pack("<I", 4097)),
])
def test_open_bad_capacity(arena_file, offset, value):
    path, _ = arena_file
    _damage(path, offset, value)
    with pytest.raises(ArenaCorrupt, match=r"bad capacities"):
        Arena.open(path)


def test_create_refuses_an_existing_file(arena_file):
    path, _ = arena_file
    with Arena.open(path) as a:
        a.open_account("keep", 5)
        a.flush()
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        Arena.create(path, accounts=8, reservations=8)
    assert path.read_bytes() == before
    other = path.with_name("other")
    other.write_bytes(b"not an arena")
    with pytest.raises(FileExistsError):
        Arena.create(other)
    assert other.read_bytes() == b"not an arena"


# ---------------------------------------------------------------------------------------
# Property test: random operations against a pure-Python model written from the spec

HOLD_FREED = ("committed", "released", "expired")


class Refusal(Exception):
    """What the model expects instead of a result: an error type, and for an expiry the
    (expired_here, account, amount) the arena must report."""

    def __init__(self, kind, detail=None):
        super().__init__(kind.__name__)
        self.kind = kind
        self.detail = detail


def valid_amount(value, zero_ok=False):
    """docs: amounts are integers in 1 .. 2**63-1 (0 allowed for a commit's actual)."""
    return type(value) is int and (0 if zero_ok else 1) <= value <= I64_MAX


class Model:
    """docs/budget-arena.md, "Operations", one step at a time with no concurrency."""

    def __init__(self, account_capacity, reservation_capacity):
        self.A = account_capacity
        self.R = reservation_capacity
        self.accounts = []  # each a dict of the account slot's fields
        self.slots = {}  # slot index -> dict(id, state, account, amount, expires, settled, ...)
        self.next_id = 1

    def open_account(self, name, initial, cap):
        self.accounts.append({"name": name, "initial": initial, "remaining": initial,
                              "reserved": 0, "committed": 0, "topped": 0,
                              "cap": I64_MAX if cap is None else cap})
        return len(self.accounts) - 1

    def _account(self, index):
        if not 0 <= index < len(self.accounts):
            raise Refusal(UnknownAccount)
        return self.accounts[index]

    def top_up(self, index, amount):
        if not valid_amount(amount):
            raise Refusal(InvalidAmount)
        a = self._account(index)
        if a["initial"] + a["topped"] + amount > I64_MAX:
            raise Refusal(AmountOverflow)
        a["topped"] += amount
        a["remaining"] += amount

    def reserve(self, index, amount, ttl_ok, ttl_ns, now, ref_a, ref_b):
        if not valid_amount(amount) or not ttl_ok:
            raise Refusal(InvalidAmount)
        a = self._account(index)
        if a["reserved"] + amount > a["cap"]:
            raise Refusal(ExposureCapExceeded)
        if a["remaining"] < amount:
            raise Refusal(InsufficientFunds)
        for _ in range(self.R):
            rid = self.next_id
            self.next_id += 1
            slot = self.slots.get(rid % self.R)
            if slot is None or slot["state"] in HOLD_FREED:
                break
        else:
            raise Refusal(ReservationsFull)
        a["reserved"] += amount
        a["remaining"] -= amount
        self.slots[rid % self.R] = {"id": rid, "state": "held", "account": index,
                                    "amount": amount, "expires": min(now + ttl_ns, I64_MAX),
                                    "settled": 0, "ref_a": ref_a, "ref_b": ref_b}
        return rid

    def _expire(self, slot):
        a = self.accounts[slot["account"]]
        a["reserved"] -= slot["amount"]
        a["remaining"] += slot["amount"]
        slot["state"] = "expired"

    def _find(self, rid, now):
        slot = self.slots.get(rid % self.R) if 0 < rid <= MAX_ID else None
        if slot is None or slot["id"] != rid:
            if rid == 0 or rid >= self.next_id:
                raise Refusal(UnknownReservation)
            raise Refusal(ReservationSettled)
        if slot["state"] in ("committed", "released"):
            raise Refusal(ReservationSettled)
        if slot["state"] == "expired":
            raise Refusal(ReservationExpired, (False, slot["account"], slot["amount"]))
        if slot["expires"] <= now:
            self._expire(slot)
            raise Refusal(ReservationExpired, (True, slot["account"], slot["amount"]))
        return slot

    def commit(self, rid, actual, now):
        if not valid_amount(actual, zero_ok=True):
            raise Refusal(InvalidAmount)
        slot = self._find(rid, now)
        a = self.accounts[slot["account"]]
        amount = slot["amount"]
        if actual > amount:
            if a["remaining"] < actual - amount:
                raise Refusal(InsufficientFunds)
            a["remaining"] -= actual - amount
        else:
            a["remaining"] += amount - actual
        a["reserved"] -= amount
        a["committed"] += actual
        slot["state"], slot["settled"] = "committed", actual
        return actual

    def release(self, rid, now):
        slot = self._find(rid, now)
        a = self.accounts[slot["account"]]
        a["reserved"] -= slot["amount"]
        a["remaining"] += slot["amount"]
        slot["state"] = "released"
        return slot["amount"]

    def expire_due(self, now):
        out = []
        for slot in self.slots.values():
            if slot["state"] == "held" and slot["expires"] <= now:
                self._expire(slot)
                out.append(slot["id"])
        return sorted(out)

    # what the arena must show
    def account_states(self):
        return [AccountState(i, a["name"], a["initial"], a["remaining"], a["reserved"],
                             a["committed"], a["cap"], a["topped"])
                for i, a in enumerate(self.accounts)]

    def _state(self, slot):
        return ReservationState(slot["id"], slot["account"], slot["amount"], slot["expires"],
                                slot["state"], slot["settled"], slot["ref_a"], slot["ref_b"])

    def holds(self):
        return sorted(self._state(s) for s in self.slots.values() if s["state"] == "held")

    def lookup(self, rid):
        slot = self.slots.get(rid % self.R) if 0 < rid <= MAX_ID else None
        return self._state(slot) if slot is not None and slot["id"] == rid else None


SPECIAL_AMOUNTS = [float("nan"), float("inf"), float("-inf"), -1, -(2**63), 0, I64_MAX,
                   2**63, 2**64, 1.5, 1.0, True, False, "7", None]
NORMAL = st.integers(1, 1500)
AMOUNTS = st.one_of(NORMAL, st.integers(-3, 0), st.sampled_from(SPECIAL_AMOUNTS))
# (ttl seconds passed to the arena, its length in ns, valid)
GOOD_TTLS = st.sampled_from([(1, SEC, True), (2, 2 * SEC, True), (0.5, SEC // 2, True),
                             (1e-9, 1, True), (3, 3 * SEC, True)])
TTLS = st.one_of(
    GOOD_TTLS,
    st.sampled_from([(0, 0, False), (-1, 0, False), (float("nan"), 0, False), (True, 0, False)]),
)
INITIALS = st.sampled_from([0, 1000, 5000, 10**6, 2**62, I64_MAX])
CAPS = st.sampled_from([None, None, 300, 2000, 2**62])
OPEN_INDEX = st.integers(0, 3)
ACCOUNT_INDEX = st.one_of(OPEN_INDEX, st.sampled_from([4, 5, 6, -1]))


class ArenaMachine(RuleBasedStateMachine):
    A, R = 6, 8  # four accounts open in six slots; eight reservation slots

    def __init__(self):
        super().__init__()
        self.arena = Arena.anonymous(accounts=self.A, reservations=self.R)
        self.model = Model(self.A, self.R)
        self.now = NOW
        self.issued = []
        self.refs = 0

    @initialize(initials=st.lists(INITIALS, min_size=4, max_size=4),
                caps=st.lists(CAPS, min_size=4, max_size=4))
    def open_accounts(self, initials, caps):
        for i, (initial, cap) in enumerate(zip(initials, caps)):
            assert self.arena.open_account(f"acct{i}", initial, cap) == \
                self.model.open_account(f"acct{i}", initial, cap)

    def both(self, arena_call, model_call):
        """Run one step on both; they must agree on the outcome."""
        try:
            expected = model_call()
        except Refusal as r:
            event(r.kind.__name__)
            with pytest.raises(BudgetError) as info:
                arena_call()
            assert type(info.value) is r.kind, (info.value, r.kind)
            if r.kind is ReservationExpired:
                e = info.value
                assert (e.expired_here, e.account, e.amount) == r.detail
            return None
        event("ok")
        assert arena_call() == expected
        return expected

    def pick_id(self, data):
        extra = [0, self.model.next_id, self.model.next_id + 3, MAX_ID, MAX_ID + 1]
        if not self.issued:
            return data.draw(st.sampled_from(extra))
        recent = st.sampled_from(self.issued[-4:])
        return data.draw(st.one_of(recent, recent, st.sampled_from(self.issued),
                                   st.sampled_from(extra)))

    # Each operation has a rule drawing anything (the mixed amounts, unknown accounts and
    # ids, bad ttls) and one drawing ordinary arguments, so holds pile up and get settled.

    @rule(index=ACCOUNT_INDEX, amount=AMOUNTS)
    def top_up(self, index, amount):
        self.both(lambda: self.arena.top_up(index, amount),
                  lambda: self.model.top_up(index, amount))

    @rule(index=OPEN_INDEX, amount=NORMAL)
    def top_up_normal(self, index, amount):
        self.top_up(index, amount)

    @rule(index=OPEN_INDEX, amount=NORMAL, ttl=GOOD_TTLS)
    def reserve_normal(self, index, amount, ttl):
        self.reserve(index, amount, ttl)

    @rule(index=OPEN_INDEX, amount=NORMAL, ttl=GOOD_TTLS)
    def reserve_normal_too(self, index, amount, ttl):
        self.reserve(index, amount, ttl)

    @rule(index=ACCOUNT_INDEX, amount=AMOUNTS, ttl=TTLS)
    def reserve(self, index, amount, ttl):
        seconds, ns, ok = ttl
        self.refs += 1
        ref_a, ref_b = self.refs, 2**64 - self.refs
        rid = self.both(
            lambda: self.arena.reserve(index, amount, seconds, ref_a=ref_a, ref_b=ref_b, now_ns=self.now),
            lambda: self.model.reserve(index, amount, ok, ns, self.now, ref_a, ref_b))
        if rid is not None:
            self.issued.append(rid)

    @rule(data=st.data(), actual=AMOUNTS)
    def commit(self, data, actual):
        rid = self.pick_id(data)
        self.both(lambda: self.arena.commit(rid, actual, now_ns=self.now),
                  lambda: self.model.commit(rid, actual, self.now))

    @rule(data=st.data(), extra=st.integers(-2, 2))
    def commit_near_hold(self, data, extra):
        """Commit at, just under and just over the amount held (overrun boundaries)."""
        rid = self.pick_id(data)
        hold = self.model.lookup(rid)
        actual = max(0, (hold.amount if hold else 1) + extra)
        self.both(lambda: self.arena.commit(rid, actual, now_ns=self.now),
                  lambda: self.model.commit(rid, actual, self.now))

    @rule(data=st.data(), extra=st.integers(-1, 1))
    def commit_taking_the_rest(self, data, extra):
        """Commit with an overrun of exactly the account's remaining funds, +-1."""
        rid = self.pick_id(data)
        hold = self.model.lookup(rid)
        if hold is None:
            return
        rest = self.model.accounts[hold.account]["remaining"]
        actual = max(0, min(I64_MAX, hold.amount + rest + extra))
        self.both(lambda: self.arena.commit(rid, actual, now_ns=self.now),
                  lambda: self.model.commit(rid, actual, self.now))

    @rule(index=OPEN_INDEX, extra=st.integers(-1, 1), ttl=GOOD_TTLS)
    def reserve_to_the_limit(self, index, extra, ttl):
        """Reserve exactly what is left (or under the cap), +-1."""
        a = self.model.accounts[index]
        room = min(a["remaining"], a["cap"] - a["reserved"])
        self.reserve(index, max(1, min(I64_MAX, room + extra)), ttl)

    @rule(data=st.data(), delta=st.sampled_from([-1, 0, 1]))
    def advance_to_a_deadline(self, data, delta):
        """Move the clock to one nanosecond around a hold's deadline."""
        deadlines = [h.expires_ns for h in self.model.holds() if h.expires_ns > self.now + 1]
        if deadlines:
            self.now = data.draw(st.sampled_from(deadlines)) + delta

    @rule(data=st.data(), actual=NORMAL)
    def commit_normal(self, data, actual):
        self.commit(data, actual)

    @rule(data=st.data())
    def release(self, data):
        rid = self.pick_id(data)
        self.both(lambda: self.arena.release(rid, now_ns=self.now),
                  lambda: self.model.release(rid, self.now))

    @rule()
    def expire_due(self):
        expected = self.model.expire_due(self.now)
        swept = self.arena.expire_due(self.now)
        assert sorted(h.id for h in swept) == expected
        assert all(h.state == "expired" and h.settled == 0 for h in swept)

    @rule(dt=st.sampled_from([0, 1, SEC // 2, SEC - 1, SEC, 2 * SEC]))
    def advance(self, dt):
        self.now += dt

    @invariant()
    def agrees_with_model(self):
        accounts, holds = self.arena.accounts(), self.arena.reservations()
        assert check_invariants(accounts, holds) == []
        assert accounts == self.model.account_states()
        assert sorted(holds) == self.model.holds()
        assert self.arena.next_reservation_id == self.model.next_id
        for rid in self.issued:
            assert self.arena.reservation(rid) == self.model.lookup(rid)

    def teardown(self):
        self.arena.close()


ArenaMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50,
                                          deadline=None)
TestArenaMachine = ArenaMachine.TestCase


# ---------------------------------------------------------------------------------------
# The durable Budget


def journal_records(directory):
    """(type, payload) of every record of every journal under a budget directory."""
    return [(r.rtype, bytes(r.payload))
            for d in journal.journal_directories(directory) for r in scan(d)]


def state_of(budget):
    return budget.accounts(), sorted(budget.reservations()), budget.spend()


def test_budget_reopen_gives_identical_state(tmp_path):
    d = tmp_path / "budget"
    with Budget.open(d, accounts=8, reservations=64) as budget:
        assert budget.durable
        assert budget.open_account("a", 10_000) == acct(0, "a", 10_000, 10_000, 0, 0)
        budget.open_account("b", 5_000, exposure_cap=2_000)
        assert budget.top_up("a", 500) == acct(0, "a", 10_000, 10_500, 0, 0, topped=500)
        r1 = budget.reserve("a", 4_000, ttl=600, ref_a=1, ref_b=10)
        assert budget.commit(r1, 3_500) == 3_500
        r2 = budget.reserve("b", 1_500, ttl=600, ref_a=2)
        r3 = budget.reserve("a", 1_000, ttl=600, ref_a=1)
        assert budget.release(r3) == 1_000
        r4 = budget.reserve("a", 700, ttl=600, ref_a=3, ref_b=30)
        r5 = budget.reserve("b", 100, ttl=600, ref_a=1)
        assert budget.commit(r5, 400) == 400  # overrun 300 from b's remaining
        assert (r1, r2, r3, r4, r5) == (1, 2, 3, 4, 5)
        assert budget.accounts() == [
            acct(0, "a", 10_000, 10_500 - 3_500 - 700, 700, 3_500, topped=500),
            acct(1, "b", 5_000, 5_000 - 1_500 - 400, 1_500, 400, cap=2_000),
        ]
        assert sorted(h.id for h in budget.reservations()) == [r2, r4]
        assert budget.spend() == {1: 3_900}
        assert budget.available("b") == 500  # cap 2000 - reserved 1500 < remaining 3100
        before = state_of(budget)
        assert budget.verify() == []
    with Budget.open(d, accounts=8, reservations=64) as again:
        assert state_of(again) == before
        assert again.verify() == []
        assert again.reserve("a", 1, ttl=60) == 6  # ids go on above the highest journaled
        assert again.commit(r4, 700) == 700
        assert again.spend() == {1: 3_900, 3: 700}
        with pytest.raises(ReservationSettled):
            again.commit(r1, 1)
    with Budget.open(d) as third:
        assert third.account("a").committed == 4_200
        assert third.spend() == {1: 3_900, 3: 700}


def test_unjournaled_hold_is_gone_after_reopen(tmp_path):
    d = tmp_path / "budget"
    with Budget.open(d, accounts=4, reservations=16) as budget:
        budget.open_account("a", 1_000)
        kept = budget.reserve("a", 100, ttl=600)
        index = budget.arena.find_account("a")
        ghost = budget.arena.reserve(index, 800, ttl=600)  # never journaled: not acknowledged
        budget.arena.top_up(index, 5)                       # nor this
        assert budget.account("a").remaining == 105
    with Budget.open(d, accounts=4, reservations=16) as again:
        assert again.account("a") == acct(0, "a", 1_000, 900, 100, 0)
        assert [h.id for h in again.reservations()] == [kept]
        with pytest.raises((ReservationSettled, UnknownReservation)):
            again.commit(ghost, 1)
        assert again.account("a") == acct(0, "a", 1_000, 900, 100, 0)


def test_corrupt_arena_is_rebuilt_from_the_journal(tmp_path):
    d = tmp_path / "budget"
    with Budget.open(d, accounts=4, reservations=16) as budget:
        budget.open_account("a", 1_000)
        rid = budget.reserve("a", 300, ttl=600, ref_a=9)
        budget.commit(budget.reserve("a", 50, ttl=600, ref_a=9), 20)
        before = state_of(budget)
    _damage(d / "arena", 0, b"GARBAGE!")
    with Budget.open(d, accounts=4, reservations=16) as again:
        assert state_of(again) == before
        assert again.account("a") == acct(0, "a", 1_000, 680, 300, 20)
        assert again.release(rid) == 300
    assert (d / "arena").read_bytes()[:8] == b"SYNBUDGT"


def test_second_owner_is_refused(tmp_path):
    d = tmp_path / "budget"
    with Budget.open(d, accounts=4, reservations=16) as budget:
        budget.open_account("a", 10)
        with pytest.raises(BudgetLocked):
            Budget.open(d, accounts=4, reservations=16)
        assert budget.reserve("a", 5, ttl=60) == 1  # the owner is unaffected
    with Budget.open(d, accounts=4, reservations=16) as again:
        assert again.account("a").reserved == 5


def test_damaged_journal_refuses_to_open(tmp_path):
    d = tmp_path / "budget"
    with Budget.open(d, accounts=4, reservations=16) as budget:
        budget.open_account("a", 1_000_000)
        for i in range(20):
            budget.commit(budget.reserve("a", 1_000 + i, ttl=60), 900)
    segments = sorted((d / "journal").glob("wal-*.seg"))
    assert segments
    data = bytearray(segments[0].read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0x40
    segments[0].write_bytes(bytes(data))
    with pytest.raises(StorageCorrupt):
        Budget.open(d, accounts=4, reservations=16)
    # a failed open lets go of the directory: the next attempt fails the same way
    with pytest.raises(StorageCorrupt):
        Budget.open(d, accounts=4, reservations=16)


def test_memory_budget():
    budget = Budget.memory(accounts=4, reservations=16)
    assert not budget.durable and budget.directory is None
    budget.open_account("a", 1_000, exposure_cap=600)
    rid = budget.reserve("a", 500, ttl=60, ref_a=4)
    with pytest.raises(ExposureCapExceeded):
        budget.reserve("a", 101, ttl=60)
    assert budget.commit(rid, 450) == 450
    budget.top_up("a", 10)
    assert budget.account("a") == acct(0, "a", 1_000, 560, 0, 450, cap=600, topped=10)
    assert budget.spend() == {4: 450}
    assert budget.verify() == []
    budget.close()
    budget.close()  # idempotent


def test_expiry_on_touch_is_journaled(tmp_path):
    d = tmp_path / "budget"
    with Budget.open(d, accounts=4, reservations=16) as budget:
        budget.open_account("a", 1_000)
        rid = budget.reserve("a", 400, ttl=0.001)
        time.sleep(0.01)
        with pytest.raises(ReservationExpired) as info:
            budget.commit(rid, 400)
        assert info.value.expired_here is True
        with pytest.raises(ReservationExpired) as again:
            budget.release(rid)
        assert again.value.expired_here is False
        assert budget.account("a") == acct(0, "a", 1_000, 1_000, 0, 0)
    records = journal_records(d)
    expires = [p for t, p in records if t == R_EXPIRE]
    assert expires == [ID_REC.pack(rid)]  # once, from the call that expired it
    assert not [p for t, p in records if t in (R_COMMIT, R_RELEASE)]
    with Budget.open(d, accounts=4, reservations=16) as reopened:
        assert reopened.account("a") == acct(0, "a", 1_000, 1_000, 0, 0)
        assert reopened.reservations() == []


def test_expire_due_is_journaled(tmp_path):
    d = tmp_path / "budget"
    with Budget.open(d, accounts=4, reservations=16) as budget:
        budget.open_account("a", 1_000)
        short = budget.reserve("a", 300, ttl=0.001)
        long = budget.reserve("a", 200, ttl=600)
        time.sleep(0.01)
        assert [h.id for h in budget.expire_due()] == [short]
        assert budget.expire_due() == []
    records = journal_records(d)
    assert [p for t, p in records if t == R_EXPIRE] == [ID_REC.pack(short)]
    with Budget.open(d, accounts=4, reservations=16) as reopened:
        assert reopened.account("a") == acct(0, "a", 1_000, 800, 200, 0)
        assert [h.id for h in reopened.reservations()] == [long]


def test_journal_payloads_match_the_spec(tmp_path):
    d = tmp_path / "budget"
    with Budget.open(d, accounts=4, reservations=16) as budget:
        budget.open_account("a", 1_000, exposure_cap=900)
        budget.top_up("a", 5)
        before = time.time_ns()
        rid = budget.reserve("a", 300, ttl=2, ref_a=2**64 - 1, ref_b=7)
        after = time.time_ns()
        budget.commit(rid, 250)
        second = budget.reserve("a", 10, ttl=2)
        budget.release(second)
    records = journal_records(d)
    assert [t for t, _ in records] == [R_OPEN, R_TOP_UP, R_RESERVE, R_COMMIT, R_RESERVE, R_RELEASE]
    assert records[0][1] == OPEN_REC.pack(0, 1_000, 900) + b"a"
    assert records[1][1] == TOP_UP_REC.pack(0, 5)
    rid_, account, amount, expires, ref_a, ref_b = RESERVE_REC.unpack(records[2][1])
    assert (rid_, account, amount, ref_a, ref_b) == (rid, 0, 300, 2**64 - 1, 7)
    assert before + 2 * SEC <= expires <= after + 2 * SEC
    assert records[3][1] == COMMIT_REC.pack(rid, 250)
    assert records[5][1] == ID_REC.pack(second)


def _write_journal(directory, records):
    with Wal.open(directory, durability="none") as wal:
        for rtype, payload in records:
            wal.append(rtype, payload)


def _hold(rid, account, amount):
    return RESERVE_REC.pack(rid, account, amount, NOW, 0, 0)


GOOD = [(R_OPEN, OPEN_REC.pack(0, 100, I64_MAX) + b"a"), (R_RESERVE, _hold(1, 0, 40))]


@pytest.mark.parametrize("bad, message", [
    ([(R_COMMIT, COMMIT_REC.pack(7, 5))], "settles reservation 7, which no journal reserved"),
    ([(R_RELEASE, ID_REC.pack(9))], "settles reservation 9"),
    ([(R_EXPIRE, ID_REC.pack(1)), (R_COMMIT, COMMIT_REC.pack(1, 5))], "settled twice"),
    ([(R_OPEN, OPEN_REC.pack(0, 5, I64_MAX) + b"b")], "opened twice"),
    ([(R_TOP_UP, TOP_UP_REC.pack(3, 5))], "account 3, which no journal opened"),
    ([(R_RESERVE, _hold(2, 0, 61))], "overspends account 'a' by 1"),
    ([(R_RESERVE, _hold(1, 0, 5))], "reserved twice"),
    ([(R_RESERVE, _hold(2, 5, 5))], "unopened account 5"),
    ([(R_TOP_UP, b"\x00")], "unpack requires a buffer of 12 bytes"),
    ([(99, b"")], "99 is not a valid JournalRecord"),
])
def test_rebuild_detects_contradictions(tmp_path, bad, message):
    d = tmp_path / "budget"
    _write_journal(d / "journal", GOOD + bad)
    with pytest.raises(StorageCorrupt, match=message):
        journal.rebuild(journal.journal_directories(d))
    with pytest.raises(StorageCorrupt):
        Budget.open(d, accounts=4, reservations=16)


def test_rebuild_sums_tool_journals(tmp_path):
    d = tmp_path / "budget"
    _write_journal(d / "journal", GOOD + [(R_COMMIT, COMMIT_REC.pack(1, 30))])
    _write_journal(d / "journal.d" / "tool1", [(R_TOP_UP, TOP_UP_REC.pack(0, 50))])
    state = journal.rebuild(journal.journal_directories(d))
    assert state.accounts[0] == acct(0, "a", 100, 120, 0, 30, topped=50)
    assert state.holds == {} and state.next_reservation_id == 2
    with Budget.open(d, accounts=4, reservations=16) as budget:
        assert budget.account("a") == acct(0, "a", 100, 120, 0, 30, topped=50)
        assert budget.reserve("a", 120, ttl=60) == 2


# ---------------------------------------------------------------------------------------
# Crash consistency of the journal's order. A crash keeps a prefix of the journal (records
# are sequenced at submit). Each case parks one thread just before it submits its record
# (a GIL switch can stop it there), lets the main thread try an operation that would need
# the first one's money, and copies the directory: the copy is what a kill -9 at that
# moment leaves. The money must not be spendable before its record is durable, or else the
# copy must still open with the acknowledged operation in it.

FREEING = {
    "top_up": (journal.JournalRecord.TOP_UP, 0, lambda b, rid: b.top_up("a", 1_000)),
    "release": (journal.JournalRecord.RELEASE, 1_000, lambda b, rid: b.release(rid)),
    "commit_below_hold": (journal.JournalRecord.COMMIT, 1_000, lambda b, rid: b.commit(rid, 0)),
}


def _park(budget, kind):
    """Make the next ``kind`` record submitted by a thread other than this one wait;
    returns (applied, go) events."""
    applied, go = threading.Event(), threading.Event()
    real_submit = budget._submit
    main = threading.current_thread()

    def parked_submit(record_kind, payload):
        if record_kind == kind and threading.current_thread() is not main and not go.is_set():
            applied.set()
            assert go.wait(10)
        return real_submit(record_kind, payload)

    budget._submit = parked_submit
    return applied, go


@pytest.mark.parametrize("case", sorted(FREEING))
def test_crash_before_a_freeing_record_is_journaled(tmp_path, case):
    kind, initial, freeing_op = FREEING[case]
    d = tmp_path / "budget"
    copy = tmp_path / "after-crash"
    budget = Budget.open(d, accounts=4, reservations=16)
    budget.open_account("a", initial)
    rid = budget.reserve("a", 1_000, ttl=600) if initial else None
    applied, go = _park(budget, kind)
    victim = threading.Thread(target=freeing_op, args=(budget, rid))
    victim.start()
    try:
        assert applied.wait(10)
        try:
            acked = budget.reserve("a", 1_000, ttl=600)  # needs the money being freed
        except InsufficientFunds:
            acked = None                                   # not spendable yet: right
        shutil.copytree(d, copy)                           # the disk if the process died now
    finally:
        go.set()
        victim.join(10)
    assert not victim.is_alive()
    budget.close()
    with Budget.open(copy, accounts=4, reservations=16) as recovered:
        assert recovered.verify() == []
        if acked is not None:
            assert acked in [h.id for h in recovered.reservations()]
        # the freeing op was never acknowledged, and its record is not in the copy
        held = 1_000 if initial else 0
        assert recovered.account("a") == acct(0, "a", initial, 0, held, 0)
    with Budget.open(d, accounts=4, reservations=16) as after:  # and the real end state
        assert after.verify() == []
        assert after.account("a").reserved == (1_000 if acked else 0)


def test_crash_between_reserve_and_its_journal_record_with_expiry(tmp_path):
    """An expiry swept (and journaled) between a reserve's arena step and its record."""
    d = tmp_path / "budget"
    copy = tmp_path / "after-crash"
    budget = Budget.open(d, accounts=4, reservations=16)
    budget.open_account("a", 1_000)
    applied, go = _park(budget, journal.JournalRecord.RESERVE)
    victim = threading.Thread(target=budget.reserve, args=("a", 10, 1e-6))
    victim.start()
    try:
        assert applied.wait(10)
        time.sleep(0.002)
        assert len(budget.expire_due()) == 1  # acknowledged: its EXPIRE record is synced
        shutil.copytree(d, copy)
    finally:
        go.set()
        victim.join(10)
    budget.close()
    with Budget.open(copy, accounts=4, reservations=16) as recovered:
        assert recovered.account("a") == acct(0, "a", 1_000, 1_000, 0, 0)
        assert recovered.verify() == []
        assert recovered.reserve("a", 5, ttl=60) >= 1
    with Budget.open(d, accounts=4, reservations=16) as after:
        assert after.account("a") == acct(0, "a", 1_000, 1_000, 0, 0)
        assert after.reservations() == []


# ---------------------------------------------------------------------------------------
# Threads of one durable budget racing on the same words


def test_racing_settlements_of_one_hold(tmp_path):
    """Four threads settle the same hold at once: one wins, the others are told it is
    already settled (docs: a settling word is waited on, then reported as settled)."""
    with Budget.open(tmp_path / "budget", accounts=4, reservations=64) as budget:
        budget.open_account("a", 100_000)
        committed = 0
        for _ in range(10):
            rid = budget.reserve("a", 100, ttl=600)
            barrier = threading.Barrier(4)
            outcomes = []

            def settle(i, rid=rid, barrier=barrier, outcomes=outcomes):
                barrier.wait()
                try:
                    if i % 2:
                        outcomes.append(("commit", budget.commit(rid, 60)))
                    else:
                        outcomes.append(("release", budget.release(rid)))
                except ReservationSettled:
                    outcomes.append(("settled", None))
                except BudgetError as exc:
                    outcomes.append((type(exc).__name__, str(exc)))

            threads = [threading.Thread(target=settle, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            winners = [o for o in outcomes if o[0] in ("commit", "release")]
            assert len(winners) == 1 and sorted(outcomes).count(("settled", None)) == 3, outcomes
            committed += 60 if winners[0][0] == "commit" else 0
        assert budget.account("a") == acct(0, "a", 100_000, 100_000 - committed, 0, committed)


def test_concurrent_account_opens(tmp_path):
    d = tmp_path / "budget"
    with Budget.open(d, accounts=8, reservations=16) as budget:
        barrier = threading.Barrier(4)
        outcomes = {}

        def open_one(i):
            barrier.wait()
            try:
                outcomes[i] = budget.open_account(f"n{i}", 100 * (i + 1)).index
            except BudgetError as exc:
                outcomes[i] = repr(exc)

        threads = [threading.Thread(target=open_one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(outcomes.values(), key=str) == [0, 1, 2, 3], outcomes
    with Budget.open(d, accounts=8, reservations=16) as again:
        assert sorted((a.name, a.initial) for a in again.accounts()) == \
            [("n0", 100), ("n1", 200), ("n2", 300), ("n3", 400)]


# ---------------------------------------------------------------------------------------
# A journal that fails: the operation is undone in the arena and the budget stops


class _FailingTicket:
    def wait(self, timeout=None):
        raise WalError("sync failed: disk on fire")


class _FailingWal:
    def __init__(self, at):
        self.at = at  # "submit" or "sync"

    def submit(self, rtype, payload):
        if self.at == "submit":
            raise WalError("write failed: disk on fire")
        return _FailingTicket()

    def close(self):
        pass


@pytest.fixture(params=["submit", "sync"])
def failing_budget(request):
    budget = Budget.memory(accounts=4, reservations=16)
    budget.open_account("a", 1_000)
    rid = budget.reserve("a", 400, ttl=600)
    budget._wal = _FailingWal(request.param)
    yield budget, rid, request.param
    budget.arena.close()


def _stopped(budget):
    with pytest.raises(StorageError):
        budget.reserve("a", 1, ttl=60)


def test_failed_journal_undoes_a_top_up(failing_budget):
    budget, _rid, _ = failing_budget
    with pytest.raises(StorageError):
        budget.top_up("a", 50)
    assert budget.account("a") == acct(0, "a", 1_000, 600, 400, 0)
    _stopped(budget)


def test_failed_journal_undoes_an_open(failing_budget):
    budget, _rid, _ = failing_budget
    with pytest.raises(StorageError):
        budget.open_account("b", 50)
    assert [a.name for a in budget.accounts()] == ["a"]
    assert budget.arena.open_account("b", 5) == 1  # the slot was given back
    _stopped(budget)


@pytest.mark.parametrize("settle", ["commit_over", "commit_under", "release"])
def test_failed_journal_frees_nothing(failing_budget, settle):
    budget, rid, at = failing_budget
    with pytest.raises(StorageError):
        if settle == "commit_over":
            budget.commit(rid, 500)
        elif settle == "commit_under":
            budget.commit(rid, 100)
        else:
            budget.release(rid)
    a = budget.account("a")
    assert (a.reserved, a.committed) == (400, 0)
    # a failed write puts the hold back; a failed sync leaves it claimed, the overrun taken
    assert a.remaining == (500 if at == "sync" and settle == "commit_over" else 600)
    assert budget.arena.reservation(rid).state == ("held" if at == "submit" else "settling")
    assert budget.spend() == {}
    _stopped(budget)


def test_failed_journal_expires_nothing(failing_budget):
    budget, _rid, at = failing_budget
    budget._wal = None
    short = budget.reserve("a", 100, ttl=1e-6)
    budget._wal = _FailingWal(at)
    time.sleep(0.002)
    with pytest.raises(StorageError):
        budget.expire_due()
    assert budget.account("a") == acct(0, "a", 1_000, 500, 500, 0)
    assert budget.arena.reservation(short).state == ("held" if at == "submit" else "settling")
    _stopped(budget)
