# One capsule's decide/feedback loop: a rule over an ArmTable plus the ledger of the
# decisions it has made.

from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint64_t
from syntra_core.bandits cimport ArmTable, Rule


ctypedef struct LedgerEntry:
    int32_t row          # context row in the ArmTable
    int16_t arm
    uint8_t state        # ENTRY_PENDING or ENTRY_DONE
    uint8_t reserved     # the struct's padding byte, kept 0 so exported state is deterministic
    double propensity    # as served; off-policy evaluation of late feedback needs it


cpdef enum FeedbackStatus:
    FEEDBACK_OK = 0
    FEEDBACK_NOT_FINITE = 1      # same values as bandits.UpdateStatus
    FEEDBACK_OUT_OF_RANGE = 2
    FEEDBACK_NOT_BINARY = 4
    FEEDBACK_MALFORMED_ID = 10
    FEEDBACK_UNKNOWN = 11
    FEEDBACK_DUPLICATE = 12


cdef class Decision:
    cdef readonly str decision_id
    cdef readonly str capsule
    cdef readonly str option
    cdef readonly int option_index
    cdef readonly double propensity
    cdef readonly uint64_t sequence
    cdef readonly object context_key
    cdef readonly bint refused
    cdef readonly str refusal           # why, when refused
    cdef readonly str substituted_for   # the option the rule preferred, when a budget swapped it
    cdef readonly int64_t cost          # microcents held for this decision; 0 without a budget
    cdef readonly object value          # a program capsule's result (None otherwise)
    cdef readonly object published      # its published values (a dict), or None
    cdef readonly str stdout            # what it printed, or None
    cdef readonly str result_json       # the three as the JSON that is logged, or None
    cdef readonly object confidence     # the learning layer's confidence block (a dict), or None


cdef class Learner:
    cdef readonly str capsule
    cdef readonly tuple options
    cdef readonly Rule rule
    cdef readonly ArmTable table
    cdef readonly uint64_t seed
    cdef readonly uint64_t next_sequence
    cdef readonly Py_ssize_t pending
    cdef readonly str tag
    cdef char tag_ascii[16]
    # Ledger window: entries[head + i] is the decision with sequence base_sequence + i.
    cdef LedgerEntry* entries
    cdef Py_ssize_t head
    cdef Py_ssize_t capacity
    cdef uint64_t base_sequence

    cdef LedgerEntry* append_entry(self) except NULL
    cdef Decision record(self, LedgerEntry* entry, Py_ssize_t row, int arm, double propensity,
                         object context_key)
    cdef void complete(self, LedgerEntry* entry) noexcept nogil
    cdef LedgerEntry* last_pending(self, Decision d) except NULL
    cdef void retire_done(self) noexcept nogil
    cdef void format_id(self, uint64_t sequence, char* out) noexcept nogil
    cdef uint64_t parse_id(self, str decision_id, bint* ok)
    cdef FeedbackStatus locate(self, str decision_id, uint64_t* sequence)
    cdef FeedbackStatus pending_entry(self, uint64_t sequence, LedgerEntry** entry) noexcept nogil
    cdef FeedbackStatus apply_feedback(self, uint64_t sequence, double reward) noexcept nogil
