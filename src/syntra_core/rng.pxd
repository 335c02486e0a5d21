# The bit generator and the distributions every rule draws from.
#
# State is a plain C struct so callers keep one on the stack per decision: nothing here
# allocates, takes the GIL or raises.

from libc.stdint cimport uint64_t


ctypedef struct Stream:
    uint64_t s[4]        # xoshiro256** state, never all zero
    double spare_normal  # second value of the last polar-method pair
    bint has_spare


cdef void stream_init(Stream* st, uint64_t seed, uint64_t sequence) noexcept nogil
cdef uint64_t next_u64(Stream* st) noexcept nogil
cdef double next_double(Stream* st) noexcept nogil
cdef uint64_t next_below(Stream* st, uint64_t bound) noexcept nogil
cdef double std_normal(Stream* st) noexcept nogil
cdef double std_gamma(Stream* st, double shape) noexcept nogil
cdef double beta(Stream* st, double a, double b) noexcept nogil
