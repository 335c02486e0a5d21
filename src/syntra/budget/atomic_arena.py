"""The budget arena in pure Python: docs/budget-arena.md over the ``atomics2`` package.

:class:`AtomicArena` maps the same file as the engine's :class:`syntra_core.budget.Arena`
and moves money with the same single-word atomic steps, in the same order, so a tool in
another process (``syntra budget``) can read and top up the arena of a running server
while the server reserves and commits against it. It raises the Cython module's exceptions
and returns its record types; only the speed differs (a reserve and its commit take about
a tenth of a millisecond here, a fraction of a microsecond there).

An atomics2 view costs far more to make than to use, so views are made on first use and
kept: the header's and every account's words for as long as the arena is open,
reservation words in a bounded least-recently-used set. A plain read of the mapping (one
aligned 8-byte load, as good as a relaxed atomic load) stands in wherever no other field is
read on the strength of it: as the first guess of a CAS loop, which the CAS then checks,
and to pick candidate slots in a sweep, which are then re-checked atomically.

An AtomicArena is for one thread: evicting a cached view closes it, so two threads
sharing one could close a view under each other. Open one per thread.

Example::

    import os, tempfile
    from syntra.budget.atomic_arena import AtomicArena

    path = os.path.join(tempfile.mkdtemp(), "arena")
    with AtomicArena.create(path, accounts=4, reservations=16) as arena:
        llm = arena.open_account("llm", 1_000)
        hold = arena.reserve(llm, 600, ttl=30)
        arena.commit(hold, 450)                 # 450: spent less than held
        print(arena.account(llm).remaining)     # 550: the other 150 came back
"""

from __future__ import annotations

import mmap
import operator
import os
import re
import struct
import time
from collections import OrderedDict
from typing import Self

import atomics2
from syntra_core.budget import (
    ACCOUNT_BYTES,
    HEADER_BYTES,
    HOLD_STATES,
    MAGIC,
    MAX_ACCOUNTS,
    MAX_RESERVATION_ID,
    MAX_RESERVATIONS,
    MAX_TTL_SECONDS,
    NAME_BYTES,
    NO_CAP,
    RESERVATION_BYTES,
    VERSION,
    create_file,
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


__all__ = ["AtomicArena"]

_INT64_MAX = (1 << 63) - 1
_U64 = (1 << 64) - 1

# magic, version, header_bytes, account_capacity, account_bytes, reservation_capacity,
# reservation_bytes, accounts_offset, reservations_offset, file_bytes, next_reservation_id.
_HEADER = struct.Struct("<8sIIIIIIQQQQ64x")
_NEXT_ID = 56

# Account slot: field offsets and states.
_STATE, _INITIAL, _REMAINING, _RESERVED, _COMMITTED, _CAP, _TOPPED_UP = 0, 8, 16, 24, 32, 40, 48
_NAME_LENGTH, _NAME = 56, 64
_EMPTY, _OPENING, _OPEN = 0, 1, 2

# Reservation slot: field offsets and the states in the low 3 bits of its word.
_WORD, _ACCOUNT, _AMOUNT, _EXPIRES, _SETTLED, _REF_A, _REF_B = 0, 8, 16, 24, 32, 40, 48
_FREE, _CLAIMED, _HELD, _SETTLING, _DONE, _RELEASED, _EXPIRED = range(7)
_STATE_BITS = 3

# A Python writer holds a word mid-change for tens of microseconds, longer if it is
# descheduled: wait by the clock, not by a count of spins.
_SPIN_SECONDS = 10.0
_NAP_SECONDS = 20e-6
_SLOT_VIEWS = 1024      # ~11 KB each
_SCAN_CHUNK = 65536     # slots per plain-read pass of a sweep

_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _signed(value: int) -> int:
    """An unsigned 64-bit word as the int64 the atomics2 views take."""
    return value - (1 << 64) if value > _INT64_MAX else value


def _word(id: int, state: int) -> int:
    return _signed(id << _STATE_BITS | state)


def _layout(accounts: int, reservations: int) -> tuple[int, int]:
    """(reservations_offset, file_bytes) of an arena with these capacities."""
    offset = HEADER_BYTES + ACCOUNT_BYTES * accounts
    return offset, offset + RESERVATION_BYTES * reservations


def _check_header(header: bytes, size: int) -> tuple[int, int]:
    """The two capacities, or ArenaCorrupt unless ``header`` (the file's first bytes)
    describes a file of ``size`` bytes exactly as version 1 lays it out."""
    if len(header) < HEADER_BYTES:
        raise ArenaCorrupt(f"file is {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    (magic, version, header_bytes, accounts, account_bytes, reservations, reservation_bytes,
     accounts_offset, reservations_offset, file_bytes) = _HEADER.unpack_from(header)[:10]
    if magic != MAGIC:
        raise ArenaCorrupt(f"bad magic {magic!r}: not a budget arena")
    if version != VERSION:
        raise ArenaCorrupt(f"arena version {version}, this build reads {VERSION}")
    for field, value, expected in (
        ("header_bytes", header_bytes, HEADER_BYTES),
        ("account_bytes", account_bytes, ACCOUNT_BYTES),
        ("reservation_bytes", reservation_bytes, RESERVATION_BYTES),
        ("accounts_offset", accounts_offset, HEADER_BYTES),
    ):
        if value != expected:
            raise ArenaCorrupt(f"{field} is {value}, version {VERSION} has {expected}")
    if not 1 <= accounts <= MAX_ACCOUNTS:
        raise ArenaCorrupt(f"account_capacity is {accounts}, outside [1, {MAX_ACCOUNTS}]")
    if not 1 <= reservations <= MAX_RESERVATIONS:
        raise ArenaCorrupt(
            f"reservation_capacity is {reservations}, outside [1, {MAX_RESERVATIONS}]")
    offset, total = _layout(accounts, reservations)
    if reservations_offset != offset:
        raise ArenaCorrupt(
            f"reservations_offset is {reservations_offset}, the capacities give {offset}")
    if file_bytes != total:
        raise ArenaCorrupt(f"file_bytes is {file_bytes}, the capacities give {total}")
    if size != total:
        raise ArenaCorrupt(f"file is {size} bytes, header says {total}")
    return accounts, reservations


def _amount(value: object, field: str, zero_ok: bool) -> int:
    """``value`` as microcents, or InvalidAmount naming ``field``."""
    if type(value) is not int:
        if isinstance(value, (bool, float)) or not hasattr(value, "__index__"):
            raise InvalidAmount(f"{field} must be an integer number of microcents, got {value!r}")
        try:
            value = operator.index(value)
        except TypeError:
            raise InvalidAmount(
                f"{field} must be an integer number of microcents, got {value!r}") from None
    low = 0 if zero_ok else 1
    if not low <= value <= _INT64_MAX:
        raise InvalidAmount(f"{field} must be in [{low}, {_INT64_MAX}] microcents, got {value!r}")
    return value


def _ttl_ns(ttl: object) -> int:
    # The range test also refuses NaN and the infinities, and never overflows on a huge int.
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) \
            or not 0 < ttl <= MAX_TTL_SECONDS:
        raise InvalidAmount(f"ttl must be seconds in (0, {MAX_TTL_SECONDS}], got {ttl!r}")
    return max(1, round(ttl * 1e9))


def _now(now_ns: object) -> int:
    if now_ns is None:
        return time.time_ns()
    if isinstance(now_ns, bool) or not isinstance(now_ns, int) or not 0 <= now_ns <= _INT64_MAX:
        raise ValueError(f"now_ns must be nanoseconds since the epoch, got {now_ns!r}")
    return now_ns


def _reference(value: object, field: str) -> int:
    if type(value) is not int or not 0 <= value <= _U64:
        raise InvalidAmount(f"{field} must be an integer in [0, 2**64), got {value!r}")
    return value


def _reservation_id(value: object) -> int:
    """``value`` as a reservation id, or 0 (which no reservation has) when it cannot be one:
    any integer type but bool is an id."""
    if isinstance(value, bool):
        return 0
    try:
        value = operator.index(value)
    except TypeError:
        return 0
    return value if 0 < value <= MAX_RESERVATION_ID else 0


def _check_name(name: object) -> bytes:
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise InvalidName(
            f"account names are 1-{NAME_BYTES} characters of [A-Za-z0-9_.-], got {name!r}")
    return name.encode()


def _update(view, guess: int, step) -> int | None:
    """CAS ``view`` from its value v to ``step(v)``; the v it moved from, or None when
    ``step`` refused (returned None). ``guess`` is a plain read: the CAS checks it."""
    current = guess
    while True:
        desired = step(current)
        if desired is None:
            return None
        result = view.cmpxchg_strong(current, desired)
        if result.success:
            return current
        current = result.expected


class AtomicArena:
    """A mapped budget arena, opened with :meth:`create` or :meth:`open`.

    The operations of :class:`syntra_core.budget.Arena` (accounts, top-up with its two
    phases, reserve, commit, release, expiry), with the same arguments, results and
    exceptions; both can work on one file at once. What only an owner needs (two-phase
    settlement for a journal, rebuild) is the Cython arena's alone.
    """

    def __init__(self, path: str, mapping: mmap.mmap):
        """Use :meth:`create` or :meth:`open`: they check the header this trusts."""
        self.path = path
        self._mmap = mapping
        self._bytes = memoryview(mapping)
        self._words = self._bytes.cast("q")
        header = _HEADER.unpack_from(mapping)
        self.account_capacity = header[3]
        self.reservation_capacity = header[5]
        self._reservations_offset = header[8]
        self._names: dict[str, int] = {}    # accounts are never removed
        self._views: dict[int, object] = {}  # header and account words, by offset
        self._slot_views: OrderedDict[int, object] = OrderedDict()  # reservation words, LRU
        self._contexts: dict[int, tuple] = {}  # offset -> (context, buffer), to close

    @classmethod
    def create(cls, path, *, accounts: int = 64, reservations: int = 65536) -> Self:
        """A new arena file at ``path`` (FileExistsError if there is one), synced with its
        directory before it is returned."""
        accounts, reservations = operator.index(accounts), operator.index(reservations)
        if not 1 <= accounts <= MAX_ACCOUNTS:
            raise ValueError(f"accounts must be in [1, {MAX_ACCOUNTS}], got {accounts}")
        if not 1 <= reservations <= MAX_RESERVATIONS:
            raise ValueError(f"reservations must be in [1, {MAX_RESERVATIONS}], got {reservations}")
        offset, size = _layout(accounts, reservations)
        header = _HEADER.pack(MAGIC, VERSION, HEADER_BYTES, accounts, ACCOUNT_BYTES,
                              reservations, RESERVATION_BYTES, HEADER_BYTES, offset, size, 1)
        # The header is packed here, from the spec, so the two implementations check each
        # other; only the file handling is shared.
        path = os.fspath(path)
        create_file(path, header, size)
        return cls.open(path)

    @classmethod
    def open(cls, path) -> Self:
        """Map the arena file at ``path``; ArenaCorrupt if it is not one."""
        path = os.fspath(path)
        with open(path, "r+b") as file:
            size = os.fstat(file.fileno()).st_size
            _check_header(file.read(HEADER_BYTES), size)
            mapping = mmap.mmap(file.fileno(), size)
        return cls(path, mapping)

    def close(self) -> None:
        """Unmap the arena (idempotent). Its file keeps every change."""
        if self._mmap is None:
            return
        for offset in list(self._contexts):
            self._detach(offset)
        self._views.clear()
        self._slot_views.clear()
        self._words.release()
        self._bytes.release()
        self._mmap.close()
        self._mmap = None

    def __del__(self):
        # An unclosed view complains when collected; close them while they can be.
        if getattr(self, "_mmap", None) is not None:
            self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"AtomicArena({self.path!r}, accounts={self.account_capacity}, "
                f"reservations={self.reservation_capacity})")

    @property
    def closed(self) -> bool:
        return self._mmap is None

    @property
    def next_reservation_id(self) -> int:
        self._check_open()
        return self._view(_NEXT_ID).load() & _U64

    def flush(self) -> None:
        """msync the mapping, so the file holds every change even if the machine fails."""
        self._check_open()
        self._mmap.flush()

    # -- words ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._mmap is None:
            raise ValueError("the arena is closed")

    def _peek(self, offset: int) -> int:
        return self._words[offset >> 3]

    def _poke(self, offset: int, value: int) -> None:
        self._words[offset >> 3] = value

    def _view(self, offset: int):
        """The atomic view of the header or account word at ``offset``."""
        view = self._views.get(offset)
        if view is None:
            view = self._views[offset] = self._attach(offset)
        return view

    def _slot_view(self, slot: int):
        """The atomic view of reservation slot ``slot``'s word."""
        offset = self._reservations_offset + slot * RESERVATION_BYTES
        view = self._slot_views.get(offset)
        if view is not None:
            self._slot_views.move_to_end(offset)
            return view
        if len(self._slot_views) >= _SLOT_VIEWS:
            self._detach(self._slot_views.popitem(last=False)[0])
        view = self._slot_views[offset] = self._attach(offset)
        return view

    def _attach(self, offset: int):
        buffer = self._bytes[offset:offset + 8]
        try:
            context = atomics2.atomicview(buffer=buffer, atype=atomics2.INT)
            view = context.__enter__()
        except BaseException:
            buffer.release()
            raise
        self._contexts[offset] = (context, buffer)
        return view

    def _detach(self, offset: int) -> None:
        # The buffer slice pins the mapping until released: mmap.close() would refuse.
        context, buffer = self._contexts.pop(offset)
        context.__exit__(None, None, None)
        buffer.release()

    def _column(self, field: int):
        """Field ``field`` of every reservation slot in slot order, by plain reads."""
        first = (self._reservations_offset + field) >> 3
        for start in range(0, self.reservation_capacity, _SCAN_CHUNK):
            stop = min(start + _SCAN_CHUNK, self.reservation_capacity)
            with self._words[first + start * 8:first + stop * 8:8] as chunk:
                values = chunk.tolist()
            yield from values

    def _wait(self, view, busy: int, what: str) -> int:
        """Load ``view`` until it is not ``busy`` or the spin bound passes (ArenaBusy)."""
        value = view.load()
        deadline = None
        while value == busy:
            if deadline is None:
                deadline = time.monotonic() + _SPIN_SECONDS
            elif time.monotonic() > deadline:
                raise ArenaBusy(what)
            time.sleep(_NAP_SECONDS)   # lets go of the GIL: the writer may be a thread of ours
            value = view.load()
        return value

    # -- accounts ------------------------------------------------------------------------

    def _open_slot(self, account: object) -> int | None:
        """The offset of open account ``account``'s slot, else None."""
        if isinstance(account, bool):
            return None
        try:
            index = operator.index(account)
        except TypeError:
            return None
        if not 0 <= index < self.account_capacity:
            return None
        slot = HEADER_BYTES + index * ACCOUNT_BYTES
        # Acquire: the fields were written before the state said open.
        return slot if self._view(slot + _STATE).load() == _OPEN else None

    def _name_at(self, slot: int) -> bytes:
        length = self._peek(slot + _NAME_LENGTH)
        if not 1 <= length <= NAME_BYTES:
            return b""
        return self._bytes[slot + _NAME:slot + _NAME + length].tobytes()

    def open_account(self, name: str, initial: int, exposure_cap: int | None = None) -> int:
        """Open account ``name`` with ``initial`` microcents; returns its index.

        ``exposure_cap`` bounds how much may be held by open reservations at once (None: no
        bound).
        """
        index = self.begin_open_account(name, initial, exposure_cap)
        self.finish_open_account(index)
        return index

    def begin_open_account(self, name: str, initial: int, exposure_cap: int | None = None) -> int:
        """Claim and fill a slot for ``name`` without opening it: a journal makes the opening
        durable before :meth:`finish_open_account` (or :meth:`abort_open_account`)."""
        self._check_open()
        encoded = _check_name(name)
        funds = _amount(initial, "initial", zero_ok=True)
        cap = NO_CAP if exposure_cap is None else _amount(exposure_cap, "exposure_cap", False)
        index = 0
        while index < self.account_capacity:
            slot = HEADER_BYTES + index * ACCOUNT_BYTES
            state_view = self._view(slot + _STATE)
            state = self._wait(state_view, _OPENING, f"account slot {index} stayed half-opened")
            if state == _OPEN and self._name_at(slot) == encoded:
                raise AccountExists(f"account {name!r} is already open (index {index})")
            if state != _EMPTY:
                index += 1
                continue
            if not state_view.cmpxchg_strong(_EMPTY, _OPENING).success:
                continue    # another opener took this slot: look at it again
            for field, value in ((_INITIAL, funds), (_REMAINING, funds), (_RESERVED, 0),
                                 (_COMMITTED, 0), (_CAP, cap), (_TOPPED_UP, 0),
                                 (_NAME_LENGTH, len(encoded))):
                self._poke(slot + field, value)
            self._bytes[slot + _NAME:slot + _NAME + NAME_BYTES] = encoded.ljust(NAME_BYTES, b"\0")
            return index
        raise AccountsFull(f"all {self.account_capacity} account slots are in use")

    def finish_open_account(self, index: int) -> None:
        self._opening(index).store(_OPEN)     # release: publishes every field written

    def abort_open_account(self, index: int) -> None:
        view = self._opening(index)
        slot = HEADER_BYTES + index * ACCOUNT_BYTES
        self._bytes[slot + 8:slot + ACCOUNT_BYTES] = bytes(ACCOUNT_BYTES - 8)
        view.store(_EMPTY)

    def _opening(self, index: int):
        self._check_open()
        if not (isinstance(index, int) and 0 <= index < self.account_capacity):
            raise ValueError(f"account slot {index!r} is not being opened")
        view = self._view(HEADER_BYTES + index * ACCOUNT_BYTES + _STATE)
        if view.load() != _OPENING:
            raise ValueError(f"account slot {index} is not being opened")
        return view

    def find_account(self, name: str) -> int:
        """The index of open account ``name``."""
        self._check_open()
        index = self._names.get(name)
        if index is not None:
            return index
        encoded = _check_name(name)
        for index in range(self.account_capacity):
            slot = HEADER_BYTES + index * ACCOUNT_BYTES
            state = self._view(slot + _STATE).load()
            if state == _EMPTY:
                break   # accounts are opened in slot order
            if state == _OPEN and self._name_at(slot) == encoded:
                self._names[name] = index
                return index
        raise UnknownAccount(f"no open account {name!r} in this arena")

    def account(self, index: int) -> AccountState:
        """A snapshot of account ``index``: each field is one atomic read."""
        self._check_open()
        slot = self._open_slot(index)
        if slot is None:
            raise UnknownAccount(f"no open account {index} in this arena")
        return AccountState(
            operator.index(index), self._name_at(slot).decode(), self._peek(slot + _INITIAL),
            self._view(slot + _REMAINING).load(), self._view(slot + _RESERVED).load(),
            self._view(slot + _COMMITTED).load(), self._peek(slot + _CAP),
            self._view(slot + _TOPPED_UP).load())

    def accounts(self) -> list[AccountState]:
        """Snapshots of every open account, in slot order."""
        self._check_open()
        out = []
        for index in range(self.account_capacity):
            state = self._view(HEADER_BYTES + index * ACCOUNT_BYTES + _STATE).load()
            if state == _EMPTY:
                break
            if state == _OPEN:
                out.append(self.account(index))
        return out

    def top_up(self, account: int, amount: int) -> None:
        """Add ``amount`` microcents to ``account``."""
        self.begin_top_up(account, amount)
        self.finish_top_up(account, amount)

    def begin_top_up(self, account: int, amount: int) -> None:
        """Count ``amount`` into the funding (refusing an overflow) without making it
        spendable; :meth:`finish_top_up` does that, :meth:`abort_top_up` undoes this."""
        slot, amount = self._funding(account, amount)
        # Funding is what every other field sums to, so bounding it bounds them all.
        room = _INT64_MAX - self._peek(slot + _INITIAL) - amount
        if _update(self._view(slot + _TOPPED_UP), self._peek(slot + _TOPPED_UP),
                   lambda topped: topped + amount if topped <= room else None) is None:
            raise AmountOverflow(
                f"account {account}: its funding would exceed {_INT64_MAX} microcents")

    def finish_top_up(self, account: int, amount: int) -> None:
        slot, amount = self._funding(account, amount)
        self._view(slot + _REMAINING).fetch_add(amount)

    def abort_top_up(self, account: int, amount: int) -> None:
        slot, amount = self._funding(account, amount)
        self._view(slot + _TOPPED_UP).fetch_sub(amount)

    def _funding(self, account: int, amount: int) -> tuple[int, int]:
        self._check_open()
        amount = _amount(amount, "amount", zero_ok=False)
        slot = self._open_slot(account)
        if slot is None:
            raise UnknownAccount(f"account {account} is not open in this arena")
        return slot, amount

    # -- reservations --------------------------------------------------------------------

    def reserve(self, account: int, amount: int, ttl: float, *, ref_a: int = 0,
                ref_b: int = 0, now_ns: int | None = None) -> int:
        """Hold ``amount`` microcents of ``account`` for ``ttl`` seconds; returns the
        reservation id. ``ref_a``/``ref_b`` are the caller's own references, kept with it."""
        self._check_open()
        ref_a, ref_b = _reference(ref_a, "ref_a"), _reference(ref_b, "ref_b")
        amount = _amount(amount, "amount", zero_ok=False)
        ttl = _ttl_ns(ttl)
        now = _now(now_ns)
        slot = self._open_slot(account)
        if slot is None:
            raise UnknownAccount(f"account {account!r} is not open in this arena")
        index = operator.index(account)

        # Exposure first, then funds: a refusal after the first step undoes it, so a racing
        # reserve may see a cap it would have fitted under, never the other way round.
        headroom = self._peek(slot + _CAP) - amount
        reserved = self._view(slot + _RESERVED)
        if _update(reserved, self._peek(slot + _RESERVED),
                   lambda held: held + amount if held <= headroom else None) is None:
            raise ExposureCapExceeded(
                f"account {index}: the account's exposure cap would be exceeded")
        remaining = self._view(slot + _REMAINING)
        if _update(remaining, self._peek(slot + _REMAINING),
                   lambda free: free - amount if free >= amount else None) is None:
            reserved.fetch_sub(amount)
            raise InsufficientFunds(f"account {index}: insufficient funds")

        claimed = self._claim()
        if claimed is None:
            reserved.fetch_sub(amount)
            remaining.fetch_add(amount)
            raise ReservationsFull(
                f"account {index}: every reservation slot holds a live reservation")
        id, offset, word = claimed
        for field, value in ((_ACCOUNT, index), (_AMOUNT, amount),
                             (_EXPIRES, min(now + ttl, _INT64_MAX)), (_SETTLED, 0),
                             (_REF_A, _signed(ref_a)), (_REF_B, _signed(ref_b))):
            self._poke(offset + field, value)
        word.store(_word(id, _HELD))    # release: publishes every field above
        return id

    def _claim(self) -> tuple[int, int, object] | None:
        """Claim a reservation slot for a fresh id (the doc's step 3): (id, slot offset,
        view of its word), or None when every slot tried was live."""
        next_id = self._view(_NEXT_ID)
        for _ in range(self.reservation_capacity):
            id = next_id.fetch_add(1) & _U64
            if id == 0 or id > MAX_RESERVATION_ID:
                return None
            slot = id % self.reservation_capacity
            offset = self._reservations_offset + slot * RESERVATION_BYTES
            # Held, settling or claimed: skip it, and its id with it. A plain read suffices
            # to skip; the CAS checks it before the slot is taken.
            word = self._peek(offset)
            if word & 7 == _FREE or word & 7 >= _DONE:
                view = self._slot_view(slot)
                if view.cmpxchg_strong(word, _word(id, _CLAIMED)).success:
                    return id, offset, view
        return None

    def _give_back(self, offset: int, view, id: int, account: int, amount: int,
                   state: int) -> None:
        """Return a settling hold's amount to its account and leave its word in ``state``."""
        slot = HEADER_BYTES + account * ACCOUNT_BYTES
        self._view(slot + _RESERVED).fetch_sub(amount)
        self._view(slot + _REMAINING).fetch_add(amount)
        self._poke(offset + _SETTLED, 0)
        view.store(_word(id, state))

    def _take(self, reservation: object, now: int) -> tuple[int, int, object, int, int]:
        """Own ``reservation`` (its word held -> settling): (id, slot offset, view of its
        word, account, amount), or raise why not. A hold past its deadline is expired on
        the way: ReservationExpired with ``expired_here`` True."""
        id = _reservation_id(reservation)
        if not id:
            raise UnknownReservation(f"reservation {reservation!r} was never made in this arena")
        slot = id % self.reservation_capacity
        offset = self._reservations_offset + slot * RESERVATION_BYTES
        view = self._slot_view(slot)
        word = view.load() & _U64
        deadline = None
        while True:
            if word >> _STATE_BITS != id:
                if id >= self.next_reservation_id:
                    raise UnknownReservation(f"reservation {id} was never made in this arena")
                # Settled, and its slot reused since.
                raise ReservationSettled(f"reservation {id} is already settled; nothing moved")
            state = word & 7
            if state == _HELD:
                result = view.cmpxchg_strong(_signed(word), _word(id, _SETTLING))
                if result.success:
                    break
                word = result.expected & _U64
                continue
            if state == _EXPIRED:
                account, amount = self._peek(offset + _ACCOUNT), self._peek(offset + _AMOUNT)
                if view.load() & _U64 != word:
                    # Reused while we read: it expired long ago.
                    raise ReservationSettled(f"reservation {id} is already settled; nothing moved")
                raise ReservationExpired(f"reservation {id} expired earlier", id, account, amount, False)
            if state in (_DONE, _RELEASED):
                raise ReservationSettled(f"reservation {id} is already settled; nothing moved")
            # Claimed or settling: another caller is a few steps from done.
            if deadline is None:
                deadline = time.monotonic() + _SPIN_SECONDS
            elif time.monotonic() > deadline:
                raise ArenaBusy(f"reservation {id}: a writer stopped mid-operation; "
                                "reopen the budget to rebuild it")
            time.sleep(_NAP_SECONDS)   # lets go of the GIL: the writer may be a thread of ours
            word = view.load() & _U64

        account, amount = self._peek(offset + _ACCOUNT), self._peek(offset + _AMOUNT)
        if self._peek(offset + _EXPIRES) <= now:
            self._give_back(offset, view, id, account, amount, _EXPIRED)
            raise ReservationExpired(f"reservation {id} expired now; its hold was released",
                                     id, account, amount, True)
        return id, offset, view, account, amount

    def commit(self, reservation: int, actual: int, *, now_ns: int | None = None) -> int:
        """Settle ``reservation`` at ``actual`` microcents (0 allowed); returns ``actual``.

        Spending less than was held returns the rest; spending more takes the overrun from
        the account if it is there, and otherwise refuses with InsufficientFunds and keeps
        the hold.
        """
        self._check_open()
        actual = _amount(actual, "actual", zero_ok=True)
        now = _now(now_ns)
        id, offset, view, account, amount = self._take(reservation, now)
        slot = HEADER_BYTES + account * ACCOUNT_BYTES
        remaining = self._view(slot + _REMAINING)
        if actual <= amount:
            self._view(slot + _RESERVED).fetch_sub(amount)
            if actual < amount:
                remaining.fetch_add(amount - actual)
        else:
            overrun = actual - amount
            if _update(remaining, self._peek(slot + _REMAINING),
                       lambda free: free - overrun if free >= overrun else None) is None:
                view.store(_word(id, _HELD))    # the hold stays
                raise InsufficientFunds(f"reservation {id}: insufficient funds")
            self._view(slot + _RESERVED).fetch_sub(amount)
        self._view(slot + _COMMITTED).fetch_add(actual)
        self._poke(offset + _SETTLED, actual)
        view.store(_word(id, _DONE))
        return actual

    def release(self, reservation: int, *, now_ns: int | None = None) -> int:
        """Give the hold back without spending; returns the amount released."""
        self._check_open()
        now = _now(now_ns)
        id, offset, view, account, amount = self._take(reservation, now)
        self._give_back(offset, view, id, account, amount, _RELEASED)
        return amount

    def reservation(self, id: int) -> ReservationState | None:
        """A snapshot of reservation ``id``, or None once its slot carries another id."""
        self._check_open()
        id = _reservation_id(id)
        if not id:
            return None
        return self._slot_state(id % self.reservation_capacity, id)

    def _slot_state(self, slot: int, id: int) -> ReservationState | None:
        offset = self._reservations_offset + slot * RESERVATION_BYTES
        view = self._slot_view(slot)
        word = view.load() & _U64
        while word >> _STATE_BITS == id:
            state = ReservationState(
                id, self._peek(offset + _ACCOUNT), self._peek(offset + _AMOUNT),
                self._peek(offset + _EXPIRES), HOLD_STATES[word & 7],
                self._peek(offset + _SETTLED), self._peek(offset + _REF_A) & _U64,
                self._peek(offset + _REF_B) & _U64)
            # A CAS of the word onto itself fails if anything moved while the fields were
            # read, and as a release it keeps those reads from drifting past it.
            result = view.cmpxchg_strong(_signed(word), _signed(word))
            if result.success:
                return state
            word = result.expected & _U64
        return None

    def reservations(self) -> list[ReservationState]:
        """Snapshots of every held (or settling) reservation, in slot order."""
        self._check_open()
        out = []
        for slot, word in enumerate(self._column(_WORD)):
            if word & 7 in (_HELD, _SETTLING):
                state = self._slot_state(slot, (word & _U64) >> _STATE_BITS)
                if state is not None:
                    out.append(state)
        return out

    def expire_due(self, now_ns: int | None = None) -> list[ReservationState]:
        """Expire every hold whose deadline has passed; returns those this call expired."""
        self._check_open()
        now = _now(now_ns)
        out = []
        for slot, (word, expires) in enumerate(zip(self._column(_WORD), self._column(_EXPIRES))):
            # The plain reads only pick candidates; _expire_slot decides atomically.
            if word & 7 == _HELD and expires <= now:
                expired = self._expire_slot(slot, now)
                if expired is not None:
                    out.append(expired)
        return out

    def _expire_slot(self, slot: int, now: int) -> ReservationState | None:
        """Expire the hold in ``slot`` if it is due: what this call expired, else None."""
        offset = self._reservations_offset + slot * RESERVATION_BYTES
        view = self._slot_view(slot)
        word = view.load() & _U64
        while word & 7 == _HELD:
            expires = self._peek(offset + _EXPIRES)
            if expires > now:
                return None
            id = word >> _STATE_BITS
            result = view.cmpxchg_strong(_signed(word), _word(id, _SETTLING))
            if result.success:
                account, amount = self._peek(offset + _ACCOUNT), self._peek(offset + _AMOUNT)
                expired = ReservationState(
                    id, account, amount, expires, "expired", 0,
                    self._peek(offset + _REF_A) & _U64, self._peek(offset + _REF_B) & _U64)
                self._give_back(offset, view, id, account, amount, _EXPIRED)
                return expired
            word = result.expected & _U64
        return None
