# Sufficient statistics per context and the decision rules that read them.
#
# Every rule reads the same ArmTable, so every rule learns from every feedback. A rule's
# per-decision work is a `noexcept nogil` C method that allocates nothing.

from libc.stdint cimport int64_t, uint64_t
from syntra_core.rng cimport Stream


ctypedef struct ArmStats:
    int64_t pulls        # rewards observed for this arm in this context
    double reward_sum    # raw rewards, in the table's reward range
    double reward_sq


cpdef enum UpdateStatus:
    UPDATE_OK = 0
    UPDATE_NOT_FINITE = 1
    UPDATE_OUT_OF_RANGE = 2
    UPDATE_BAD_ARM = 3
    UPDATE_NOT_BINARY = 4


cdef int checked_arm(object arm, int n_arms) except -1
cdef int pick_among_best(const double* scores, int n, double best, int ties, Stream* st) noexcept nogil


cdef class ArmTable:
    cdef readonly int n_arms
    cdef readonly double reward_low
    cdef readonly double reward_high
    cdef readonly bint binary      # rewards must be exactly reward_low or reward_high
    cdef Py_ssize_t n_rows
    cdef Py_ssize_t capacity
    cdef ArmStats* stats       # n_rows x n_arms, row-major
    cdef int64_t* row_pulls    # sum of pulls over the row's arms
    cdef dict _rows            # context key -> row
    cdef list _keys            # row -> context key
    cdef int64_t* epochs       # resets of each row so far: caches keyed on row_pulls check it

    cdef Py_ssize_t row_for(self, object key) except -1
    cdef Py_ssize_t find_row(self, object key)
    cdef int _grow(self, Py_ssize_t capacity) except -1
    cdef inline ArmStats* row_stats(self, Py_ssize_t row) noexcept nogil:
        return self.stats + row * self.n_arms
    cdef UpdateStatus update_c(self, Py_ssize_t row, int arm, double reward) noexcept nogil
    cdef UpdateStatus check_reward(self, double reward) noexcept nogil
    cdef void reset_row(self, Py_ssize_t row) noexcept nogil


cdef class Rule:
    cdef readonly ArmTable table
    cdef Py_ssize_t cache_rows
    cdef int prepare(self, Py_ssize_t row) except -1
    cdef int select_c(self, Py_ssize_t row, Stream* st, double* propensity) noexcept nogil
    cdef void distribution_c(self, Py_ssize_t row, Stream* st, double* out) noexcept nogil


cdef class PosteriorSampling(Rule):
    # Thompson sampling with cached, Monte-Carlo play probabilities; subclasses give the
    # posterior of each arm's mean.
    cdef readonly int samples
    cdef readonly double max_staleness
    cdef double* win_prob          # cache_rows x n_arms
    cdef int64_t* refreshed_at     # row pulls at the last refresh; -1 = never
    cdef int64_t* refreshed_epoch  # the table's epoch of the row at the last refresh
    cdef void refresh(self, Py_ssize_t row, Stream* st) noexcept nogil
    cdef void refresh_if_due(self, Py_ssize_t row, Stream* st) noexcept nogil
    cdef void posterior(self, Py_ssize_t row, double* first, double* second) noexcept nogil
    cdef double draw_mean(self, Stream* st, double first, double second) noexcept nogil
    cdef Py_ssize_t cached_row(self, object key) except -2


cdef class BetaThompson(PosteriorSampling):
    cdef readonly double prior_a
    cdef readonly double prior_b


cdef class GaussianThompson(PosteriorSampling):
    cdef readonly double prior_mean
    cdef readonly double prior_strength


cdef class UCB1(Rule):
    cdef readonly double exploration
    cdef int scores(self, Py_ssize_t row, double* scores, double* best_score) noexcept nogil


cdef class EpsilonGreedy(Rule):
    cdef readonly double epsilon
    cdef readonly double decay


cdef class Greedy(EpsilonGreedy):
    pass


cdef class Softmax(Rule):
    cdef readonly double temperature
