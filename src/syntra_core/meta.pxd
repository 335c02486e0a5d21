# The meta-bandit's arithmetic, and the per-decision mixing of candidate rules.
#
# MetaCore keeps the off-policy statistics of each candidate in C arrays; CandidateMix
# fills every candidate's play probabilities, mixes them by the shares and draws the
# option. Per-decision and per-feedback work runs in `noexcept nogil` functions that
# allocate nothing: every buffer is allocated with the object.

from libc.stdint cimport int64_t, uint64_t
from syntra_core.bandits cimport ArmTable


cdef class MetaCore:
    cdef readonly int n_candidates
    cdef readonly bint exp3ix             # else thompson: shares come from load_raw
    cdef readonly bint snips              # else ips
    cdef readonly double weight_cap
    cdef readonly double exploration_floor
    cdef readonly double learning_rate    # 0.0: the anytime Hedge rate
    cdef readonly int initial             # the candidate with the head start; -1 for none
    cdef readonly double prior_trials
    cdef readonly int64_t observations
    cdef readonly bint stale              # an observation came after the shares were computed
    cdef int64_t* trials_                 # decisions each candidate served
    cdef double* weighted_gain_           # sum of w_c * r
    cdef double* weight_sum_              # sum of w_c
    cdef double* shares_
    cdef double* scratch                  # n_candidates: gains, then raw weights

    cdef double rate_c(self, int64_t n) noexcept nogil
    cdef void observe_c(self, const double* targets, double logging_probability, double reward) noexcept nogil
    cdef void refresh_c(self) noexcept nogil
    cdef void load_raw_c(self, const double* raw) noexcept nogil
    cdef int choose_c(self, double u) noexcept nogil


cdef int pick_c(const double* probabilities, int n, double u) noexcept nogil
cdef int mix_pick_c(const double* probs, int n_candidates, int n_arms, const double* shares, double u,
                    double* mixture) noexcept nogil
cdef void draw_uniforms_c(uint64_t seed, uint64_t sequence, int k, double* out) noexcept nogil


cdef class CandidateMix:
    cdef readonly int n_candidates
    cdef readonly int n_arms
    cdef readonly object probabilities    # (n_candidates, n_arms) float64, row c = candidate c
    cdef readonly object mixture          # (n_arms,) float64
    cdef readonly uint64_t seed           # the policy's own stream: (seed, sequence)
    cdef readonly double propensity       # of the option last drawn
    cdef readonly int candidate           # the candidate last drawn to serve; -1 in warmup
    cdef ArmTable table
    cdef list rules                       # a bandits.Rule per candidate, None for the others
    cdef bint has_rules
    cdef Py_ssize_t row                   # the table row of the last fill; -1 before any
    cdef uint64_t* seeds                  # each candidate's stream seed
    cdef double* probs                    # probabilities' data
    cdef double* mix                      # mixture's data
