# The budget arena: account and reservation slots in a shared mapping, moved by CAS loops.
# docs/budget-arena.md defines every byte and every step; keep the two in step.

from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef extern from "budget_atomics.h":
    uint64_t SYN_MAX_RESERVATION_ID
    int64_t SYN_WAIT_NS
    int64_t syn_load(int64_t* p) noexcept nogil
    void syn_store(int64_t* p, int64_t v) noexcept nogil
    bint syn_cas(int64_t* p, int64_t* expected, int64_t desired) noexcept nogil
    int64_t syn_fetch_add(int64_t* p, int64_t v) noexcept nogil
    uint64_t syn_load_u(uint64_t* p) noexcept nogil
    void syn_store_u(uint64_t* p, uint64_t v) noexcept nogil
    bint syn_cas_u(uint64_t* p, uint64_t* expected, uint64_t desired) noexcept nogil
    uint64_t syn_fetch_add_u(uint64_t* p, uint64_t v) noexcept nogil
    void syn_pause() noexcept nogil
    int64_t syn_now_ns() noexcept nogil
    bint syn_backoff(int64_t* spins, int64_t* deadline, int64_t wait_ns) noexcept nogil


cdef enum:
    HEADER_BYTES_C = 128
    ACCOUNT_BYTES_C = 128
    RESERVATION_BYTES_C = 64
    NAME_BYTES_C = 64
    STATE_BITS = 3


# Account slot states.
cdef enum:
    ACCOUNT_EMPTY = 0
    ACCOUNT_OPENING = 1
    ACCOUNT_OPEN = 2


# Reservation slot states (the low STATE_BITS of the word).
cdef enum:
    HOLD_FREE = 0
    HOLD_CLAIMED = 1
    HOLD_HELD = 2
    HOLD_SETTLING = 3
    HOLD_COMMITTED = 4
    HOLD_RELEASED = 5
    HOLD_EXPIRED = 6


# What an operation did. The C functions never raise; the Python layer turns each
# non-OK status into its exception.
cpdef enum BudgetStatus:
    BUDGET_OK = 0
    BUDGET_INSUFFICIENT_FUNDS = 1
    BUDGET_EXPOSURE_CAP = 2
    BUDGET_UNKNOWN_ACCOUNT = 3
    BUDGET_INVALID_AMOUNT = 4
    BUDGET_OVERFLOW = 5
    BUDGET_UNKNOWN_RESERVATION = 6
    BUDGET_ALREADY_SETTLED = 7
    BUDGET_EXPIRED = 8
    BUDGET_RESERVATIONS_FULL = 9
    BUDGET_BUSY = 10            # a word stayed mid-change for as long as the caller would wait


ctypedef struct Header:
    char magic[8]
    uint32_t version
    uint32_t header_bytes
    uint32_t account_capacity
    uint32_t account_bytes
    uint32_t reservation_capacity
    uint32_t reservation_bytes
    uint64_t accounts_offset
    uint64_t reservations_offset
    uint64_t file_bytes
    uint64_t next_reservation_id
    char reserved[64]


ctypedef struct AccountSlot:
    int64_t state
    int64_t initial
    int64_t remaining
    int64_t reserved
    int64_t committed
    int64_t exposure_cap
    int64_t topped_up
    int64_t name_length
    char name[NAME_BYTES_C]


ctypedef struct ReservationSlot:
    uint64_t word
    int64_t account
    int64_t amount
    int64_t expires_ns
    int64_t settled
    uint64_t ref_a
    uint64_t ref_b
    uint64_t reserved


# A settled (or expired) reservation, as the operation that settled it saw it.
ctypedef struct Settlement:
    uint64_t id
    int64_t account
    int64_t amount
    int64_t settled
    int state                   # what finishing makes of the hold: HOLD_COMMITTED/RELEASED/EXPIRED
    int64_t expires_ns
    uint64_t ref_a
    uint64_t ref_b


# The mapped arena, as the C functions see it.
ctypedef struct ArenaView:
    Header* header
    AccountSlot* accounts
    ReservationSlot* reservations
    uint64_t account_capacity
    uint64_t reservation_capacity


cdef BudgetStatus top_up_begin_c(ArenaView* a, int64_t account, int64_t amount) noexcept nogil
cdef void top_up_finish_c(ArenaView* a, int64_t account, int64_t amount) noexcept nogil
cdef void top_up_abort_c(ArenaView* a, int64_t account, int64_t amount) noexcept nogil
cdef BudgetStatus top_up_c(ArenaView* a, int64_t account, int64_t amount) noexcept nogil
cdef BudgetStatus reserve_c(ArenaView* a, int64_t account, int64_t amount, int64_t ttl_ns,
                            int64_t now_ns, uint64_t ref_a, uint64_t ref_b,
                            uint64_t* out_id) noexcept nogil
cdef BudgetStatus settle_begin_c(ArenaView* a, uint64_t id, int64_t actual, int64_t now_ns,
                                 int64_t wait_ns, Settlement* out) noexcept nogil
cdef void settle_finish_c(ArenaView* a, Settlement* taken) noexcept nogil
cdef void settle_abort_c(ArenaView* a, Settlement* taken) noexcept nogil
cdef bint expire_begin_c(ArenaView* a, ReservationSlot* slot, int64_t now_ns,
                         Settlement* out) noexcept nogil
cdef BudgetStatus commit_c(ArenaView* a, uint64_t id, int64_t actual, int64_t now_ns,
                           Settlement* out) noexcept nogil
cdef BudgetStatus release_c(ArenaView* a, uint64_t id, int64_t now_ns,
                            Settlement* out) noexcept nogil


cdef class Settling:
    cdef Settlement c
    cdef object arena           # the claiming arena until finished or aborted, then None


cdef class Arena:
    cdef ArenaView view
    cdef object _mmap
    cdef Py_buffer _buffer
    cdef bint _has_buffer
    cdef dict _names                # account name -> index; accounts are never removed
    cdef int _waiting               # threads in a GIL-free wait on the mapping
    cdef readonly object path
    cdef readonly int account_capacity
    cdef readonly Py_ssize_t reservation_capacity

    cdef _attach(self, object mapping)
    cdef _check_open(self)
    cdef _opening(self, int64_t index)
    cdef int64_t _open_account(self, object account) except -1
    cdef _settling(self, Settling pending)
    cdef _settle(self, object reservation, int64_t actual, object now_ns, Settlement* taken)
    cdef _begin(self, object reservation, int64_t actual, object now_ns, Settlement* taken)
