"""Budgets in a shared arena: accounts and reservations moved by lock-free CAS loops.

An :class:`Arena` maps a budget file (``docs/budget-arena.md`` defines every byte) and moves
money with single-word atomic steps, so any number of threads and processes can reserve,
commit and release against the same accounts without a lock. The per-operation work is
``nogil`` C that allocates nothing; the methods here only check their arguments and turn a
refusal into its exception.

The arena alone is not durable: :class:`syntra.budget.Budget` journals every operation that
moves money and rebuilds the arena from that journal after a crash.

Example:

>>> from syntra_core.budget import Arena, InsufficientFunds
>>> arena = Arena.anonymous(accounts=4, reservations=16)
>>> llm = arena.open_account("llm", 1_000)
>>> hold = arena.reserve(llm, 600, ttl=30)
>>> arena.commit(hold, 450)          # spent less than held: the rest comes back
450
>>> arena.account(llm).remaining, arena.account(llm).committed
(550, 450)
>>> try:
...     arena.reserve(llm, 600, ttl=30)
... except InsufficientFunds as refusal:
...     print(refusal.reason)
insufficient_funds
>>> arena.close()
"""

import math
import mmap
import operator
import os
import time
from collections import namedtuple

from libc.stdint cimport INT64_MAX, UINT64_MAX, int64_t, uint64_t
from libc.string cimport memcmp, memcpy, memset
from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer

MAGIC = b"SYNBUDGT"
cdef bytes _MAGIC = MAGIC
VERSION = 1
HEADER_BYTES = HEADER_BYTES_C
ACCOUNT_BYTES = ACCOUNT_BYTES_C
RESERVATION_BYTES = RESERVATION_BYTES_C
NAME_BYTES = NAME_BYTES_C
MAX_ACCOUNTS = 4096
MAX_RESERVATIONS = 1 << 24
MAX_RESERVATION_ID = (1 << 61) - 1
NO_CAP = INT64_MAX
MAX_TTL_SECONDS = 10 * 365 * 86400
HOLD_STATES = ("free", "claimed", "held", "settling", "committed", "released", "expired")
SETTLE_KINDS = {HOLD_COMMITTED: "commit", HOLD_RELEASED: "release", HOLD_EXPIRED: "expire"}
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")

# Where each field lives, for readers that are not this module (the atomics2 path, tests).
HEADER_FIELDS = {"magic": 0, "version": 8, "header_bytes": 12, "account_capacity": 16,
                 "account_bytes": 20, "reservation_capacity": 24, "reservation_bytes": 28,
                 "accounts_offset": 32, "reservations_offset": 40, "file_bytes": 48,
                 "next_reservation_id": 56}
ACCOUNT_FIELDS = {"state": 0, "initial": 8, "remaining": 16, "reserved": 24, "committed": 32,
                  "exposure_cap": 40, "topped_up": 48, "name_length": 56, "name": 64}
RESERVATION_FIELDS = {"word": 0, "account": 8, "amount": 16, "expires_ns": 24, "settled": 32,
                      "ref_a": 40, "ref_b": 48}

AccountState = namedtuple(
    "AccountState",
    "index name initial remaining reserved committed exposure_cap topped_up")
ReservationState = namedtuple(
    "ReservationState", "id account amount expires_ns state settled ref_a ref_b")


# ---------------------------------------------------------------------------------------
# Refusals and errors. Each carries ``reason``, the stable string a caller can branch on.

class BudgetError(Exception):
    """Base class of every budget error."""
    reason = "budget_error"


class BudgetRefused(BudgetError):
    """The arena said no: the money or the room is not there. Nothing changed."""
    reason = "refused"


class InsufficientFunds(BudgetRefused):
    reason = "insufficient_funds"


class ExposureCapExceeded(BudgetRefused):
    reason = "exposure_cap_exceeded"


class ReservationsFull(BudgetRefused):
    reason = "reservations_full"


class InvalidAmount(BudgetError, ValueError):
    reason = "invalid_amount"


class AmountOverflow(BudgetError, ValueError):
    reason = "overflow"


class InvalidName(BudgetError, ValueError):
    reason = "invalid_name"


class UnknownAccount(BudgetError, LookupError):
    reason = "unknown_account"


class AccountExists(BudgetError):
    reason = "account_exists"


class AccountsFull(BudgetError):
    reason = "accounts_full"


class UnknownReservation(BudgetError, LookupError):
    reason = "unknown_reservation"


class ReservationSettled(BudgetError):
    """The reservation was committed or released before: nothing moved this time."""
    reason = "already_settled"


class ReservationExpired(BudgetError):
    """The hold lapsed. ``expired_here`` is True when this call did the expiry (and so
    moved the money back), False when an earlier caller had."""
    reason = "expired"

    def __init__(self, message, reservation_id, account, amount, expired_here):
        super().__init__(message)
        self.reservation_id = reservation_id
        self.account = account
        self.amount = amount
        self.expired_here = expired_here


class ArenaBusy(BudgetError):
    """A word stayed mid-change past the spin bound: a writer died inside an operation."""
    reason = "busy"


class ArenaCorrupt(BudgetError):
    """The file is not a budget arena this version can read."""
    reason = "corrupt"


# ---------------------------------------------------------------------------------------
# The operations: C over the mapping, no GIL, no allocation, no exceptions.

cdef inline AccountSlot* _account(ArenaView* a, int64_t account) noexcept nogil:
    if account < 0 or <uint64_t>account >= a.account_capacity:
        return NULL
    cdef AccountSlot* s = a.accounts + account
    if syn_load(&s.state) != ACCOUNT_OPEN:
        return NULL
    return s


cdef inline uint64_t _word(uint64_t id, int state) noexcept nogil:
    return (id << STATE_BITS) | <uint64_t>state


# Operations that free money (top-up, commit, release, expiry) come in two phases, so a
# journal can make the freeing durable in between: money that other callers can see and
# spend must never be undone by a crash. Taking money (reserve, an overrun) needs no such
# care: a crash only gives back what nobody was told they had.

cdef BudgetStatus top_up_begin_c(ArenaView* a, int64_t account, int64_t amount) noexcept nogil:
    """Claim room for ``amount`` in the account's funding; nothing is spendable yet."""
    if amount <= 0:
        return BUDGET_INVALID_AMOUNT
    cdef AccountSlot* s = _account(a, account)
    if s == NULL:
        return BUDGET_UNKNOWN_ACCOUNT
    cdef int64_t initial = syn_load(&s.initial)
    cdef int64_t topped = syn_load(&s.topped_up)
    while True:
        # Funding is what every other field sums to, so bounding it bounds them all.
        if amount > INT64_MAX - initial - topped:
            return BUDGET_OVERFLOW
        if syn_cas(&s.topped_up, &topped, topped + amount):
            return BUDGET_OK


cdef void top_up_finish_c(ArenaView* a, int64_t account, int64_t amount) noexcept nogil:
    syn_fetch_add(&a.accounts[account].remaining, amount)


cdef void top_up_abort_c(ArenaView* a, int64_t account, int64_t amount) noexcept nogil:
    syn_fetch_add(&a.accounts[account].topped_up, -amount)


cdef BudgetStatus top_up_c(ArenaView* a, int64_t account, int64_t amount) noexcept nogil:
    cdef BudgetStatus status = top_up_begin_c(a, account, amount)
    if status == BUDGET_OK:
        top_up_finish_c(a, account, amount)
    return status


cdef BudgetStatus reserve_c(ArenaView* a, int64_t account, int64_t amount, int64_t ttl_ns,
                            int64_t now_ns, uint64_t ref_a, uint64_t ref_b,
                            uint64_t* out_id) noexcept nogil:
    if amount <= 0 or ttl_ns <= 0:
        return BUDGET_INVALID_AMOUNT
    cdef AccountSlot* s = _account(a, account)
    if s == NULL:
        return BUDGET_UNKNOWN_ACCOUNT

    # Exposure first, then funds: a refusal after the first step undoes it, so a racing
    # reserve may see a cap it would have fitted under, never the other way round.
    cdef int64_t cap = syn_load(&s.exposure_cap)
    cdef int64_t held = syn_load(&s.reserved)
    while True:
        if amount > cap - held:
            return BUDGET_EXPOSURE_CAP
        if syn_cas(&s.reserved, &held, held + amount):
            break
    cdef int64_t free = syn_load(&s.remaining)
    while True:
        if free < amount:
            syn_fetch_add(&s.reserved, -amount)
            return BUDGET_INSUFFICIENT_FUNDS
        if syn_cas(&s.remaining, &free, free - amount):
            break

    cdef uint64_t tries, id, word, state
    cdef ReservationSlot* slot = NULL
    for tries in range(a.reservation_capacity):
        id = syn_fetch_add_u(&a.header.next_reservation_id, 1)
        if id == 0 or id > SYN_MAX_RESERVATION_ID:
            break
        slot = a.reservations + id % a.reservation_capacity
        word = syn_load_u(&slot.word)
        state = word & 7
        if (state == HOLD_FREE or state >= HOLD_COMMITTED) and \
                syn_cas_u(&slot.word, &word, _word(id, HOLD_CLAIMED)):
            break
        slot = NULL
    if slot == NULL:
        syn_fetch_add(&s.reserved, -amount)
        syn_fetch_add(&s.remaining, amount)
        return BUDGET_RESERVATIONS_FULL

    syn_store(&slot.account, account)
    syn_store(&slot.amount, amount)
    syn_store(&slot.expires_ns, now_ns + ttl_ns if ttl_ns <= INT64_MAX - now_ns else INT64_MAX)
    syn_store(&slot.settled, 0)
    syn_store_u(&slot.ref_a, ref_a)
    syn_store_u(&slot.ref_b, ref_b)
    syn_store_u(&slot.word, _word(id, HOLD_HELD))
    out_id[0] = id
    return BUDGET_OK


cdef BudgetStatus settle_begin_c(ArenaView* a, uint64_t id, int64_t actual, int64_t now_ns,
                                 int64_t wait_ns, Settlement* out) noexcept nogil:
    """Claim reservation ``id`` for settling: its word goes held -> settling.

    ``actual`` is the amount to commit, or -1 to release. A word another caller is changing
    is waited on for up to ``wait_ns`` (then BUDGET_BUSY; 0 returns BUDGET_BUSY at once). On BUDGET_OK, ``out.state`` says
    what :func:`settle_finish_c` will make of it: HOLD_COMMITTED, HOLD_RELEASED, or
    HOLD_EXPIRED when the hold is past its deadline (an expiry, whatever was asked). For a
    commit above the hold, the overrun has already been taken from ``remaining``. Any other
    status changed nothing.
    """
    out.id = 0
    if id == 0 or id > SYN_MAX_RESERVATION_ID:
        return BUDGET_UNKNOWN_RESERVATION
    cdef ReservationSlot* slot = a.reservations + id % a.reservation_capacity
    cdef uint64_t word = syn_load_u(&slot.word)
    cdef uint64_t state
    cdef int64_t spins = 0, deadline = 0
    while True:
        if word >> STATE_BITS != id:
            if id >= syn_load_u(&a.header.next_reservation_id):
                return BUDGET_UNKNOWN_RESERVATION
            return BUDGET_ALREADY_SETTLED   # settled, and its slot reused since
        state = word & 7
        if state == HOLD_HELD:
            if syn_cas_u(&slot.word, &word, _word(id, HOLD_SETTLING)):
                break
            continue
        if state == HOLD_EXPIRED:
            out.account = syn_load(&slot.account)
            out.amount = syn_load(&slot.amount)
            if syn_load_u(&slot.word) != word:
                return BUDGET_ALREADY_SETTLED   # reused while we read: it expired long ago
            return BUDGET_EXPIRED
        if state == HOLD_COMMITTED or state == HOLD_RELEASED:
            return BUDGET_ALREADY_SETTLED
        # Claimed or settling: another caller is changing it.
        if wait_ns == 0 or not syn_backoff(&spins, &deadline, wait_ns):
            return BUDGET_BUSY
        word = syn_load_u(&slot.word)

    # Ours while settling: the fields cannot change under us.
    _fill(slot, id, out)
    if out.expires_ns <= now_ns:
        out.state = HOLD_EXPIRED
        return BUDGET_OK
    if actual < 0:
        out.state = HOLD_RELEASED
        return BUDGET_OK
    cdef int64_t overrun = actual - out.amount
    cdef int64_t free
    if overrun > 0:
        free = syn_load(&a.accounts[out.account].remaining)
        while True:
            if free < overrun:
                syn_store_u(&slot.word, _word(id, HOLD_HELD))   # the hold stays
                out.id = 0
                return BUDGET_INSUFFICIENT_FUNDS
            if syn_cas(&a.accounts[out.account].remaining, &free, free - overrun):
                break
    out.state = HOLD_COMMITTED
    out.settled = actual
    return BUDGET_OK


cdef inline void _fill(ReservationSlot* slot, uint64_t id, Settlement* out) noexcept nogil:
    out.id = id
    out.account = syn_load(&slot.account)
    out.amount = syn_load(&slot.amount)
    out.expires_ns = syn_load(&slot.expires_ns)
    out.ref_a = syn_load_u(&slot.ref_a)
    out.ref_b = syn_load_u(&slot.ref_b)
    out.settled = 0


cdef void settle_finish_c(ArenaView* a, Settlement* taken) noexcept nogil:
    """Move the money of a settlement :func:`settle_begin_c` claimed, and close the hold."""
    cdef ReservationSlot* slot = a.reservations + taken.id % a.reservation_capacity
    cdef AccountSlot* s = a.accounts + taken.account
    syn_fetch_add(&s.reserved, -taken.amount)
    if taken.state == HOLD_COMMITTED:
        if taken.settled < taken.amount:
            syn_fetch_add(&s.remaining, taken.amount - taken.settled)
        syn_fetch_add(&s.committed, taken.settled)
    else:
        syn_fetch_add(&s.remaining, taken.amount)
    syn_store(&slot.settled, taken.settled)
    syn_store_u(&slot.word, _word(taken.id, taken.state))


cdef void settle_abort_c(ArenaView* a, Settlement* taken) noexcept nogil:
    """Undo :func:`settle_begin_c`: the overrun goes back and the hold is held again."""
    if taken.state == HOLD_COMMITTED and taken.settled > taken.amount:
        syn_fetch_add(&a.accounts[taken.account].remaining, taken.settled - taken.amount)
    syn_store_u(&(a.reservations + taken.id % a.reservation_capacity).word,
                _word(taken.id, HOLD_HELD))


cdef BudgetStatus settle_c(ArenaView* a, uint64_t id, int64_t actual, int64_t now_ns,
                           Settlement* out) noexcept nogil:
    """Both phases at once, for callers with no journal. A due hold is expired and reported
    as BUDGET_EXPIRED with ``out.id`` set (this call moved the money)."""
    cdef BudgetStatus status = settle_begin_c(a, id, actual, now_ns, SYN_WAIT_NS, out)
    if status != BUDGET_OK:
        return status
    settle_finish_c(a, out)
    return BUDGET_EXPIRED if out.state == HOLD_EXPIRED else BUDGET_OK


cdef BudgetStatus commit_c(ArenaView* a, uint64_t id, int64_t actual, int64_t now_ns,
                           Settlement* out) noexcept nogil:
    if actual < 0:
        out.id = 0
        return BUDGET_INVALID_AMOUNT
    return settle_c(a, id, actual, now_ns, out)


cdef BudgetStatus release_c(ArenaView* a, uint64_t id, int64_t now_ns,
                            Settlement* out) noexcept nogil:
    return settle_c(a, id, -1, now_ns, out)


cdef int64_t _opened_state(AccountSlot* s, int64_t wait_ns) noexcept nogil:
    """The slot's state once it is no longer being opened; -1 if that took over wait_ns."""
    cdef int64_t spins = 0, deadline = 0
    cdef int64_t state = syn_load(&s.state)
    while state == ACCOUNT_OPENING:
        if not syn_backoff(&spins, &deadline, wait_ns):
            return -1
        state = syn_load(&s.state)
    return state


cdef bint expire_begin_c(ArenaView* a, ReservationSlot* slot, int64_t now_ns,
                         Settlement* out) noexcept nogil:
    """Claim the hold in ``slot`` for expiry if it is due; True if this call did."""
    cdef uint64_t word = syn_load_u(&slot.word)
    while word & 7 == HOLD_HELD:
        if syn_load(&slot.expires_ns) > now_ns:
            return False
        if syn_cas_u(&slot.word, &word, _word(word >> STATE_BITS, HOLD_SETTLING)):
            _fill(slot, word >> STATE_BITS, out)
            out.state = HOLD_EXPIRED
            return True
    return False


# ---------------------------------------------------------------------------------------
# Python boundary.

cdef inline int64_t _amount(object value, str field, bint zero_ok) except? -1:
    """``value`` as int64 microcents, or InvalidAmount naming ``field``."""
    if type(value) is not int:
        try:
            if isinstance(value, (bool, float)):
                raise TypeError
            value = operator.index(value)
        except TypeError:
            raise InvalidAmount(f"{field} must be an integer number of microcents, got {value!r}") from None
    if value < 0 or (value == 0 and not zero_ok) or value > INT64_MAX:
        low = 0 if zero_ok else 1
        raise InvalidAmount(f"{field} must be in [{low}, {INT64_MAX}] microcents, got {value!r}")
    return <int64_t>value


cdef inline int64_t _ttl_ns(object ttl) except? -1:
    # The range test first: it also rules out NaN and ints too large for a float.
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= MAX_TTL_SECONDS:
        raise InvalidAmount(f"ttl must be seconds in (0, {MAX_TTL_SECONDS}], got {ttl!r}")
    return max(1, <int64_t>round(ttl * 1e9))


def ttl_ns(ttl):
    """``ttl`` seconds as the nanoseconds a reservation is held for (InvalidAmount if it is
    not a finite number in (0, MAX_TTL_SECONDS])."""
    return _ttl_ns(ttl)


cdef inline int64_t _account_index(object value) except? -2:
    """An account index, or -1 (which no account has) for anything that cannot be one."""
    if type(value) is not int:
        if isinstance(value, bool):
            return -1
        try:
            value = operator.index(value)
        except TypeError:
            return -1
    return value if 0 <= value < MAX_ACCOUNTS else -1


cdef inline uint64_t _reference(object value, str field) except? 0:
    if type(value) is int and 0 <= value <= UINT64_MAX:
        return <uint64_t>value
    raise InvalidAmount(f"{field} must be an integer in [0, 2**64), got {value!r}")


cdef inline uint64_t _reservation_id(object value) except? 0:
    """A reservation id as given by reserve, or 0 (which no reservation has) for anything
    that cannot be one, so the lookup reports it unknown: any integer type but bool is an
    id."""
    if type(value) is not int:
        if isinstance(value, bool):
            return 0
        try:
            value = operator.index(value)
        except TypeError:
            return 0
    if 0 < value <= SYN_MAX_RESERVATION_ID:
        return <uint64_t>value
    return 0


cdef inline int64_t _now(object now_ns) except? -1:
    if now_ns is None:
        return syn_now_ns()
    if isinstance(now_ns, bool) or not isinstance(now_ns, int) or not 0 <= now_ns <= INT64_MAX:
        raise ValueError(f"now_ns must be nanoseconds since the epoch, got {now_ns!r}")
    return <int64_t>now_ns


cdef bytes _check_name(object name):
    if not isinstance(name, str) or not 1 <= len(name) <= NAME_BYTES_C \
            or not _NAME_CHARS.issuperset(name):
        raise InvalidName(
            f"account names are 1-{NAME_BYTES_C} characters of [A-Za-z0-9_.-], got {name!r}")
    return name.encode()


cdef object _raise(BudgetStatus status, str subject, Settlement* taken, object reservation=None):
    """Raise the exception for ``status``; ``subject`` is "account N" or "reservation N"."""
    if status == BUDGET_INSUFFICIENT_FUNDS:
        raise InsufficientFunds(f"{subject}: insufficient funds")
    if status == BUDGET_EXPOSURE_CAP:
        raise ExposureCapExceeded(f"{subject}: the account's exposure cap would be exceeded")
    if status == BUDGET_UNKNOWN_ACCOUNT:
        raise UnknownAccount(f"{subject} is not open in this arena")
    if status == BUDGET_OVERFLOW:
        raise AmountOverflow(f"{subject}: its funding would exceed {INT64_MAX} microcents")
    if status == BUDGET_UNKNOWN_RESERVATION:
        raise UnknownReservation(f"{subject} was never made in this arena")
    if status == BUDGET_ALREADY_SETTLED:
        raise ReservationSettled(f"{subject} is already settled; nothing moved")
    if status == BUDGET_EXPIRED:
        raise ReservationExpired(
            f"{subject} expired" + (" now; its hold was released" if taken.id else " earlier"),
            reservation, taken.account, taken.amount, taken.id != 0)
    if status == BUDGET_RESERVATIONS_FULL:
        raise ReservationsFull(f"{subject}: every reservation slot holds a live reservation")
    if status == BUDGET_BUSY:
        raise ArenaBusy(f"{subject}: a writer stopped mid-operation; reopen the budget to rebuild it")
    raise InvalidAmount(f"{subject}: invalid amount")


def _layout(int accounts, Py_ssize_t reservations):
    """(reservations_offset, file_bytes) of an arena with these capacities."""
    if not 1 <= accounts <= MAX_ACCOUNTS:
        raise ValueError(f"accounts must be in [1, {MAX_ACCOUNTS}], got {accounts}")
    if not 1 <= reservations <= MAX_RESERVATIONS:
        raise ValueError(f"reservations must be in [1, {MAX_RESERVATIONS}], got {reservations}")
    offset = HEADER_BYTES_C + ACCOUNT_BYTES_C * accounts
    return offset, offset + RESERVATION_BYTES_C * reservations


def _header_bytes(int accounts, Py_ssize_t reservations):
    offset, size = _layout(accounts, reservations)
    cdef Header h
    memset(&h, 0, sizeof(Header))
    memcpy(h.magic, <const char*>_MAGIC, 8)
    h.version = VERSION
    h.header_bytes = HEADER_BYTES_C
    h.account_capacity = accounts
    h.account_bytes = ACCOUNT_BYTES_C
    h.reservation_capacity = reservations
    h.reservation_bytes = RESERVATION_BYTES_C
    h.accounts_offset = HEADER_BYTES_C
    h.reservations_offset = offset
    h.file_bytes = size
    h.next_reservation_id = 1
    return (<char*>&h)[:sizeof(Header)]


def create_file(path, bytes header not None, Py_ssize_t size):
    """Create the arena file ``path`` (FileExistsError if there is one): ``size`` bytes
    starting with ``header``, the rest zero, synced with its directory before returning."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        os.pwrite(fd, header, 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_header(bytes header, Py_ssize_t actual_size):
    """Raise ArenaCorrupt unless ``header`` (the file's first bytes) describes a file of
    ``actual_size`` bytes exactly as version 1 lays it out. Returns the two capacities."""
    if len(header) < HEADER_BYTES_C:
        raise ArenaCorrupt(f"file is {actual_size} bytes, shorter than the {HEADER_BYTES_C}-byte header")
    cdef const Header* h = <const Header*><const char*>header
    if memcmp(h.magic, <const char*>_MAGIC, 8) != 0:
        raise ArenaCorrupt(f"bad magic {header[:8]!r}: not a budget arena")
    if h.version != VERSION:
        raise ArenaCorrupt(f"arena version {h.version}, this build reads {VERSION}")
    if (h.header_bytes, h.account_bytes, h.reservation_bytes, h.accounts_offset) != \
            (HEADER_BYTES_C, ACCOUNT_BYTES_C, RESERVATION_BYTES_C, HEADER_BYTES_C):
        raise ArenaCorrupt("header sizes or offsets differ from version 1's layout")
    try:
        offset, size = _layout(h.account_capacity, h.reservation_capacity)
    except ValueError as exc:
        raise ArenaCorrupt(f"bad capacities: {exc}") from None
    if h.reservations_offset != offset or h.file_bytes != size:
        raise ArenaCorrupt("header offsets disagree with its capacities")
    if actual_size != size:
        raise ArenaCorrupt(f"file is {actual_size} bytes, header says {size}")
    return h.account_capacity, h.reservation_capacity


cdef class Settling:
    """A settlement :meth:`Arena.begin_settle` claimed: finish or abort it, once."""

    @property
    def kind(self):
        return SETTLE_KINDS[self.c.state]

    @property
    def id(self):
        return self.c.id

    @property
    def account(self):
        return self.c.account

    @property
    def amount(self):
        """What the hold held."""
        return self.c.amount

    @property
    def settled(self):
        """What a commit spends (0 for a release or expiry)."""
        return self.c.settled

    @property
    def ref_a(self):
        return self.c.ref_a

    def state(self):
        """The hold as a ReservationState, in the state finishing gives it."""
        return ReservationState(self.c.id, self.c.account, self.c.amount, self.c.expires_ns,
                                HOLD_STATES[self.c.state], self.c.settled, self.c.ref_a, self.c.ref_b)

    def __repr__(self):
        return f"Settling({self.kind}, id={self.c.id}, amount={self.c.amount}, settled={self.c.settled})"


cdef class Arena:
    """A mapped budget arena. Create one with :meth:`create`, :meth:`open` or
    :meth:`anonymous` (process-private, for tests and in-memory engines).

    Accounts are addressed by slot index (:meth:`find_account` maps a name to it) and
    reservations by id. Methods raise a :class:`BudgetError` subclass for every refusal and
    change nothing when they do; the ``now_ns`` arguments exist so callers can replay or
    test expiry without sleeping.
    """

    def __cinit__(self):
        self._has_buffer = False
        self._waiting = 0
        self._names = {}
        self.path = None

    @classmethod
    def create(cls, path, *, int accounts=64, Py_ssize_t reservations=65536):
        """A new arena file at ``path`` (FileExistsError if there is one), synced with its
        directory before it is returned."""
        _, size = _layout(accounts, reservations)
        path = os.fspath(path)
        create_file(path, _header_bytes(accounts, reservations), size)
        return cls.open(path)

    @classmethod
    def open(cls, path):
        """Map the arena file at ``path``; ArenaCorrupt if it is not one."""
        path = os.fspath(path)
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            check_header(f.read(HEADER_BYTES_C), size)
            mapping = mmap.mmap(f.fileno(), size)
        cdef Arena arena = cls.__new__(cls)
        arena.path = path
        arena._attach(mapping)
        return arena

    @classmethod
    def anonymous(cls, *, int accounts=64, Py_ssize_t reservations=65536):
        """A process-private arena in anonymous memory: same behaviour, nothing on disk."""
        header = _header_bytes(accounts, reservations)
        _, size = _layout(accounts, reservations)
        mapping = mmap.mmap(-1, size)
        mapping[:len(header)] = header
        cdef Arena arena = cls.__new__(cls)
        arena._attach(mapping)
        return arena

    cdef _attach(self, object mapping):
        PyObject_GetBuffer(mapping, &self._buffer, PyBUF_WRITABLE)
        self._has_buffer = True
        self._mmap = mapping
        cdef char* base = <char*>self._buffer.buf
        self.view.header = <Header*>base
        self.account_capacity = self.view.header.account_capacity
        self.reservation_capacity = self.view.header.reservation_capacity
        self.view.account_capacity = self.account_capacity
        self.view.reservation_capacity = self.reservation_capacity
        self.view.accounts = <AccountSlot*>(base + HEADER_BYTES_C)
        self.view.reservations = <ReservationSlot*>(base + self.view.header.reservations_offset)

    cdef _check_open(self):
        if not self._has_buffer:
            raise ValueError("the arena is closed")

    def close(self):
        """Unmap the arena (idempotent). Its file keeps every change.

        A thread waiting (without the GIL) on a word another caller is changing still
        reads the mapping, so closing waits for such waits to end first.
        """
        while self._waiting:
            time.sleep(0.001)
        if self._has_buffer:
            PyBuffer_Release(&self._buffer)
            self._has_buffer = False
            self.view.header = NULL
            self._mmap.close()

    def __dealloc__(self):
        if self._has_buffer:
            PyBuffer_Release(&self._buffer)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    @property
    def closed(self):
        return not self._has_buffer

    @property
    def next_reservation_id(self):
        self._check_open()
        return syn_load_u(&self.view.header.next_reservation_id)

    def flush(self):
        """msync the mapping, so the file holds every change even if the machine fails."""
        self._check_open()
        self._mmap.flush()

    # -- accounts ------------------------------------------------------------------------

    def open_account(self, name, initial, exposure_cap=None):
        """Open account ``name`` with ``initial`` microcents; returns its index.

        ``exposure_cap`` bounds how much may be held by open reservations at once (None: no
        bound).
        """
        index = self.begin_open_account(name, initial, exposure_cap)
        self.finish_open_account(index)
        return index

    def begin_open_account(self, name, initial, exposure_cap=None):
        """Claim and fill a slot for account ``name`` without opening it yet; its index.

        Nobody can use the account (and a second opener of the name waits) until
        :meth:`finish_open_account`, so a journal can make the opening durable first;
        :meth:`abort_open_account` gives the slot back.
        """
        self._check_open()
        cdef bytes encoded = _check_name(name)
        cdef int64_t funds = _amount(initial, "initial", True)
        cdef int64_t cap = NO_CAP if exposure_cap is None else _amount(exposure_cap, "exposure_cap", False)
        cdef int64_t i = 0, state, expected
        cdef AccountSlot* s
        while i < self.account_capacity:
            s = self.view.accounts + i
            state = syn_load(&s.state)
            if state == ACCOUNT_OPENING:
                # Its opener may be waiting on a journal sync, and may need the GIL to finish.
                self._waiting += 1
                try:
                    with nogil:
                        state = _opened_state(s, SYN_WAIT_NS)
                finally:
                    self._waiting -= 1
                if state < 0:
                    raise ArenaBusy(f"account slot {i} stayed half-opened")
            if state != ACCOUNT_EMPTY and state != ACCOUNT_OPEN:
                i += 1      # not a state this version writes: leave the slot alone
                continue
            if state == ACCOUNT_OPEN:
                if s.name_length == len(encoded) and s.name[:s.name_length] == encoded:
                    raise AccountExists(f"account {name!r} is already open (index {i})")
                i += 1
                continue
            expected = ACCOUNT_EMPTY
            if not syn_cas(&s.state, &expected, ACCOUNT_OPENING):
                continue    # another opener took this slot: look at it again
            syn_store(&s.initial, funds)
            syn_store(&s.remaining, funds)
            syn_store(&s.reserved, 0)
            syn_store(&s.committed, 0)
            syn_store(&s.exposure_cap, cap)
            syn_store(&s.topped_up, 0)
            memset(s.name, 0, NAME_BYTES_C)
            memcpy(s.name, <const char*>encoded, len(encoded))
            syn_store(&s.name_length, len(encoded))
            return i
        raise AccountsFull(f"all {self.account_capacity} account slots are in use")

    def finish_open_account(self, int64_t index):
        """Open the account :meth:`begin_open_account` prepared in slot ``index``."""
        self._opening(index)
        syn_store(&self.view.accounts[index].state, ACCOUNT_OPEN)

    def abort_open_account(self, int64_t index):
        """Give back the slot :meth:`begin_open_account` prepared."""
        self._opening(index)
        memset(&self.view.accounts[index].initial, 0, sizeof(AccountSlot) - sizeof(int64_t))
        syn_store(&self.view.accounts[index].state, ACCOUNT_EMPTY)

    cdef _opening(self, int64_t index):
        self._check_open()
        if not 0 <= index < self.account_capacity or \
                syn_load(&self.view.accounts[index].state) != ACCOUNT_OPENING:
            raise ValueError(f"account slot {index} is not being opened")

    def find_account(self, name):
        """The index of open account ``name``."""
        self._check_open()
        index = self._names.get(name)
        if index is not None:
            return index
        cdef bytes encoded = _check_name(name)
        cdef int64_t i
        cdef AccountSlot* s
        for i in range(self.account_capacity):
            s = self.view.accounts + i
            if syn_load(&s.state) == ACCOUNT_EMPTY:
                break
            if syn_load(&s.state) == ACCOUNT_OPEN and s.name[:s.name_length] == encoded:
                self._names[name] = i
                return i
        raise UnknownAccount(f"no open account {name!r} in this arena")

    def account(self, index):
        """A snapshot of account ``index``: each field is one atomic read."""
        self._check_open()
        cdef AccountSlot* s = _account(&self.view, _account_index(index))
        if s == NULL:
            raise UnknownAccount(f"no open account {index} in this arena")
        return AccountState(
            index, s.name[:s.name_length].decode(), syn_load(&s.initial), syn_load(&s.remaining),
            syn_load(&s.reserved), syn_load(&s.committed), syn_load(&s.exposure_cap),
            syn_load(&s.topped_up))

    def accounts(self):
        """Snapshots of every open account, in slot order."""
        self._check_open()
        cdef int64_t i
        out = []
        for i in range(self.account_capacity):
            state = syn_load(&self.view.accounts[i].state)
            if state == ACCOUNT_EMPTY:
                break
            if state == ACCOUNT_OPEN:
                out.append(self.account(i))
        return out

    def top_up(self, account, amount):
        """Add ``amount`` microcents to ``account``."""
        self._check_open()
        cdef BudgetStatus status = top_up_c(&self.view, _account_index(account), _amount(amount, "amount", False))
        if status != BUDGET_OK:
            _raise(status, f"account {account}", NULL)

    def begin_top_up(self, account, amount):
        """Count ``amount`` into the account's funding (refusing an overflow) without making
        it spendable; :meth:`finish_top_up` does that, :meth:`abort_top_up` undoes this."""
        self._check_open()
        cdef BudgetStatus status = top_up_begin_c(&self.view, _account_index(account),
                                                  _amount(amount, "amount", False))
        if status != BUDGET_OK:
            _raise(status, f"account {account}", NULL)

    def finish_top_up(self, account, amount):
        top_up_finish_c(&self.view, self._open_account(account), _amount(amount, "amount", False))

    def abort_top_up(self, account, amount):
        top_up_abort_c(&self.view, self._open_account(account), _amount(amount, "amount", False))

    cdef int64_t _open_account(self, object account) except -1:
        self._check_open()
        cdef int64_t index = _account_index(account)
        if _account(&self.view, index) == NULL:
            raise UnknownAccount(f"account {account!r} is not open in this arena")
        return index

    # -- reservations --------------------------------------------------------------------

    def reserve(self, account, amount, ttl, *, ref_a=0, ref_b=0, now_ns=None):
        """Hold ``amount`` microcents of ``account`` for ``ttl`` seconds; returns the
        reservation id. ``ref_a``/``ref_b`` are the caller's own references, kept with it."""
        self._check_open()
        cdef uint64_t id = 0
        cdef BudgetStatus status = reserve_c(
            &self.view, _account_index(account), _amount(amount, "amount", False), _ttl_ns(ttl),
            _now(now_ns), _reference(ref_a, "ref_a"), _reference(ref_b, "ref_b"), &id)
        if status != BUDGET_OK:
            _raise(status, f"account {account}", NULL)
        return id

    def commit(self, reservation, actual, *, now_ns=None):
        """Settle ``reservation`` at ``actual`` microcents (0 allowed); returns ``actual``.

        Spending less than was held returns the rest; spending more takes the overrun from
        the account if it is there, and otherwise refuses with InsufficientFunds and keeps
        the hold.
        """
        self._check_open()
        cdef Settlement taken
        self._settle(reservation, _amount(actual, "actual", True), now_ns, &taken)
        return taken.settled

    def release(self, reservation, *, now_ns=None):
        """Give the hold back without spending; returns the amount released."""
        self._check_open()
        cdef Settlement taken
        self._settle(reservation, -1, now_ns, &taken)
        return taken.amount

    cdef _settle(self, object reservation, int64_t actual, object now_ns, Settlement* taken):
        self._begin(reservation, actual, now_ns, taken)
        settle_finish_c(&self.view, taken)
        if taken.state == HOLD_EXPIRED:
            _raise(BUDGET_EXPIRED, f"reservation {reservation}", taken, reservation)

    cdef _begin(self, object reservation, int64_t actual, object now_ns, Settlement* taken):
        """settle_begin_c, raising its refusal. A word another caller is changing is waited
        on without the GIL: that caller may be a thread of ours that needs it to finish."""
        cdef uint64_t rid = _reservation_id(reservation)
        cdef int64_t now = _now(now_ns)
        cdef BudgetStatus status = settle_begin_c(&self.view, rid, actual, now, 0, taken)
        if status == BUDGET_BUSY:
            self._waiting += 1
            try:
                with nogil:
                    status = settle_begin_c(&self.view, rid, actual, now, SYN_WAIT_NS, taken)
            finally:
                self._waiting -= 1
        if status != BUDGET_OK:
            _raise(status, f"reservation {reservation}", taken, reservation)

    def begin_settle(self, reservation, actual=None, *, now_ns=None):
        """Claim ``reservation`` to commit ``actual`` microcents (None: to release it).

        Returns a :class:`Settling`, whose ``kind`` is "commit", "release", or "expire" when
        the hold turned out to be past its deadline. Nothing has been freed yet (an overrun
        has been taken): :meth:`finish` frees it, :meth:`abort` puts the hold back. Raises
        the same refusals as :meth:`commit` and :meth:`release`, changing nothing.
        """
        self._check_open()
        cdef int64_t amount = -1 if actual is None else _amount(actual, "actual", True)
        cdef Settling pending = Settling.__new__(Settling)
        self._begin(reservation, amount, now_ns, &pending.c)
        pending.arena = self
        return pending

    def begin_expire_due(self, now_ns=None):
        """Claim every hold past its deadline for expiry; the :class:`Settling` of each."""
        self._check_open()
        cdef int64_t now = _now(now_ns)
        cdef Settling pending = Settling.__new__(Settling)
        cdef Py_ssize_t i
        out = []
        for i in range(self.reservation_capacity):
            if expire_begin_c(&self.view, self.view.reservations + i, now, &pending.c):
                pending.arena = self
                out.append(pending)
                pending = Settling.__new__(Settling)
        return out

    def finish(self, Settling pending not None):
        """Free the money of a claimed settlement and close its hold."""
        self._settling(pending)
        settle_finish_c(&self.view, &pending.c)

    def abort(self, Settling pending not None):
        """Undo a claimed settlement: the overrun goes back and the hold is held again."""
        self._settling(pending)
        settle_abort_c(&self.view, &pending.c)

    cdef _settling(self, Settling pending):
        self._check_open()
        if pending.arena is not self:
            raise ValueError("that settlement was claimed in another arena, or is finished")
        pending.arena = None

    def reservation(self, id):
        """A snapshot of reservation ``id``, or None once its slot carries another id."""
        self._check_open()
        cdef uint64_t rid = _reservation_id(id)
        if rid == 0:
            return None
        return self._slot_state(rid % self.reservation_capacity, rid)

    def _slot_state(self, Py_ssize_t index, uint64_t id):
        cdef ReservationSlot* slot = self.view.reservations + index
        cdef uint64_t word, again
        while True:
            word = syn_load_u(&slot.word)
            if word >> STATE_BITS != id or id == 0:
                return None
            state = ReservationState(
                id, syn_load(&slot.account), syn_load(&slot.amount), syn_load(&slot.expires_ns),
                HOLD_STATES[word & 7], syn_load(&slot.settled), syn_load_u(&slot.ref_a),
                syn_load_u(&slot.ref_b))
            again = syn_load_u(&slot.word)
            if again == word:   # nothing moved while the fields were read
                return state

    def reservations(self):
        """Snapshots of every held (or settling) reservation, in slot order."""
        self._check_open()
        cdef Py_ssize_t i
        cdef uint64_t word
        out = []
        for i in range(self.reservation_capacity):
            word = syn_load_u(&self.view.reservations[i].word)
            if word & 7 == HOLD_HELD or word & 7 == HOLD_SETTLING:
                state = self._slot_state(i, word >> STATE_BITS)
                if state is not None:
                    out.append(state)
        return out

    def expire_due(self, now_ns=None):
        """Expire every hold whose deadline has passed; returns those this call expired."""
        self._check_open()
        out = []
        for pending in self.begin_expire_due(now_ns):
            self.finish(pending)
            out.append(pending.state())
        return out

    # -- rebuild ---------------------------------------------------------------------------

    def load(self, accounts, holds, uint64_t next_reservation_id):
        """Fill an arena with no open account from a rebuilt state: ``accounts`` are
        AccountState, ``holds`` the open ReservationState. Only for the journal's rebuild,
        with no other user of the arena."""
        self._check_open()
        if self.accounts() or syn_load_u(&self.view.header.next_reservation_id) != 1:
            raise ValueError("load needs an arena nothing has used")
        cdef AccountSlot* s
        cdef ReservationSlot* slot
        for a in accounts:
            if not 0 <= a.index < self.account_capacity:
                raise ArenaCorrupt(f"account index {a.index} outside the arena's {self.account_capacity}")
            encoded = _check_name(a.name)
            s = self.view.accounts + <int64_t>a.index
            s.initial, s.remaining, s.reserved = a.initial, a.remaining, a.reserved
            s.committed, s.exposure_cap, s.topped_up = a.committed, a.exposure_cap, a.topped_up
            memcpy(s.name, <const char*>encoded, len(encoded))
            s.name_length = len(encoded)
            syn_store(&s.state, ACCOUNT_OPEN)
        for h in holds:
            slot = self.view.reservations + <uint64_t>h.id % <uint64_t>self.reservation_capacity
            if slot.word != 0:
                raise ReservationsFull(f"reservations {h.id} and {slot.word >> STATE_BITS} share a slot")
            slot.account, slot.amount, slot.expires_ns = h.account, h.amount, h.expires_ns
            slot.settled, slot.ref_a, slot.ref_b = 0, h.ref_a, h.ref_b
            syn_store_u(&slot.word, _word(h.id, HOLD_HELD))
        syn_store_u(&self.view.header.next_reservation_id, next_reservation_id)

    def reset(self):
        """Zero every account and reservation slot (the header stays). Only for a rebuild."""
        self._check_open()
        cdef char* base = <char*>self.view.accounts
        memset(base, 0, self._buffer.len - HEADER_BYTES_C)
        syn_store_u(&self.view.header.next_reservation_id, 1)
        self._names.clear()

    def __repr__(self):
        where = self.path or "anonymous"
        return f"Arena({where!r}, accounts={self.account_capacity}, reservations={self.reservation_capacity})"


def reserve_commit_loop(Arena arena not None, int64_t account, int64_t amount, Py_ssize_t rounds):
    """Run ``rounds`` reserve+commit pairs in one nogil C loop (the benchmark's inner loop);
    returns how many reserves were granted."""
    arena._check_open()
    cdef Py_ssize_t i, granted = 0
    cdef uint64_t id
    cdef Settlement taken
    cdef int64_t now
    arena._waiting += 1     # close() waits for this loop
    try:
        with nogil:
            for i in range(rounds):
                now = syn_now_ns()
                if reserve_c(&arena.view, account, amount, 60_000_000_000, now, 0, 0, &id) == BUDGET_OK:
                    granted += 1
                    commit_c(&arena.view, id, amount, now, &taken)
    finally:
        arena._waiting -= 1
    return granted
