# ADWIN change detection over an exponential histogram of buckets (Bifet & Gavalda 2007).
#
# All bucket storage is allocated at construction, so update_c allocates nothing, holds no
# GIL and cannot raise.

from libc.stdint cimport int64_t


cdef enum:
    # Level i holds buckets of 2**i values; a full level 63 alone would exceed 2**63 values,
    # so 64 levels cover every window an int64 width can count.
    ADWIN_MAX_LEVELS = 64


cdef class AdwinCore:
    cdef readonly double delta
    cdef readonly int64_t clock
    cdef readonly int max_buckets
    cdef readonly int64_t min_window_length
    cdef readonly int64_t grace_period
    cdef readonly bint reset_on_drift

    cdef readonly int64_t width          # values in the window
    cdef readonly double total           # their sum
    cdef double m2                       # their sum of squared deviations from the mean
    cdef int64_t tick                    # updates since the window (re)started: sets the clock phase
    cdef readonly int64_t n_detections   # since construction or reset()
    cdef readonly bint drift_detected    # by the last update

    # Level i's buckets are row i of both arrays (stride max_buckets + 1), oldest first.
    cdef int n_levels                    # levels in use, >= 1; the top one is never empty
    cdef int64_t counts[ADWIN_MAX_LEVELS]
    cdef double* bucket_totals
    cdef double* bucket_m2

    cdef bint update_c(self, double value) noexcept nogil
    cdef void clear_window(self) noexcept nogil
    cdef void insert(self, double value) noexcept nogil
    cdef void merge_full_levels(self) noexcept nogil
    cdef bint check_for_change(self) noexcept nogil
    cdef bint has_significant_cut(self) noexcept nogil
    cdef void drop_oldest_bucket(self) noexcept nogil
