"""Seedable random streams for decisions.

The generator is xoshiro256** (Blackman and Vigna, 2018): 256 bits of state, period
2**256 - 1, and it passes BigCrush. Its state is filled by splitmix64, as its authors
recommend, from a key that mixes the capsule seed with the decision sequence. So every
decision owns an independent stream, and the randomness behind any decision can be
re-derived exactly from ``(seed, sequence)`` alone: a replay needs no saved RNG state.

Distributions:

* uniform on [0, 1) with 53 random bits;
* standard normal by Marsaglia's polar method (the second value of each pair is kept);
* gamma by Marsaglia and Tsang (2000), with the ``U ** (1/shape)`` boost for shape < 1;
* beta as ``X / (X + Y)`` with ``X ~ Gamma(a)`` and ``Y ~ Gamma(b)``.

Example:

>>> from syntra_core.rng import RandomStream
>>> a = RandomStream(seed=7, sequence=42)
>>> b = RandomStream(seed=7, sequence=42)
>>> a.random() == b.random()
True
>>> 0.0 <= RandomStream(seed=7, sequence=43).beta(2.0, 5.0) < 1.0
True
"""

from libc.math cimport log, sqrt, pow, isfinite
from libc.stdint cimport uint64_t

import numpy as np


cdef extern from "wide.h":
    uint64_t syntra_mul_u64(uint64_t a, uint64_t b, uint64_t* lo) noexcept nogil

# splitmix64's increment (2**64 / golden ratio).
cdef uint64_t SPLITMIX_GAMMA = 0x9E3779B97F4A7C15ULL
# An odd constant that keeps the sequence term of the key apart from the seed term.
cdef uint64_t SEQUENCE_MIX = 0xD1B54A32D192ED03ULL


cdef inline uint64_t _rotl(uint64_t x, int k) noexcept nogil:
    return (x << k) | (x >> (64 - k))


cdef inline uint64_t _splitmix64(uint64_t* x) noexcept nogil:
    x[0] += SPLITMIX_GAMMA
    cdef uint64_t z = x[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef void stream_init(Stream* st, uint64_t seed, uint64_t sequence) noexcept nogil:
    # Hash the seed first, then fold in the sequence, so (seed, seq) and (seq, seed)
    # give different streams and consecutive sequences land far apart.
    cdef uint64_t key = seed
    key = _splitmix64(&key) ^ (sequence * SEQUENCE_MIX)
    cdef int i
    for i in range(4):
        st.s[i] = _splitmix64(&key)
    if st.s[0] == 0 and st.s[1] == 0 and st.s[2] == 0 and st.s[3] == 0:
        st.s[0] = 1  # the one state xoshiro cannot leave; splitmix64 makes it ~impossible
    st.has_spare = False
    st.spare_normal = 0.0


cdef uint64_t next_u64(Stream* st) noexcept nogil:
    cdef uint64_t* s = st.s
    cdef uint64_t result = _rotl(s[1] * 5, 7) * 9
    cdef uint64_t t = s[1] << 17
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = _rotl(s[3], 45)
    return result


cdef double next_double(Stream* st) noexcept nogil:
    return <double>(next_u64(st) >> 11) * (1.0 / 9007199254740992.0)


cdef uint64_t next_below(Stream* st, uint64_t bound) noexcept nogil:
    """Uniform integer in [0, bound) by Lemire's nearly divisionless method; bound > 0."""
    cdef uint64_t low
    cdef uint64_t high = syntra_mul_u64(next_u64(st), bound, &low)
    cdef uint64_t threshold
    if low < bound:
        threshold = (0 - bound) % bound
        while low < threshold:
            high = syntra_mul_u64(next_u64(st), bound, &low)
    return high


cdef double std_normal(Stream* st) noexcept nogil:
    cdef double u, v, s, f
    if st.has_spare:
        st.has_spare = False
        return st.spare_normal
    while True:
        u = 2.0 * next_double(st) - 1.0
        v = 2.0 * next_double(st) - 1.0
        s = u * u + v * v
        if 0.0 < s < 1.0:
            break
    f = sqrt(-2.0 * log(s) / s)
    st.spare_normal = v * f
    st.has_spare = True
    return u * f


cdef double std_gamma(Stream* st, double shape) noexcept nogil:
    """Gamma(shape, 1). shape must be > 0 and finite (checked by callers)."""
    cdef double boost = 1.0
    cdef double d, c, x, v, u
    if shape < 1.0:
        # Gamma(a) = Gamma(a + 1) * U ** (1 / a)  (Marsaglia and Tsang, section 6)
        u = next_double(st)
        while u == 0.0:
            u = next_double(st)
        boost = pow(u, 1.0 / shape)
        shape += 1.0
    d = shape - 1.0 / 3.0
    c = 1.0 / sqrt(9.0 * d)
    while True:
        x = std_normal(st)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = next_double(st)
        if u < 1.0 - 0.0331 * (x * x) * (x * x):  # cheap squeeze, accepts ~98%
            return d * v * boost
        if u > 0.0 and log(u) < 0.5 * x * x + d * (1.0 - v + log(v)):
            return d * v * boost


cdef double beta(Stream* st, double a, double b) noexcept nogil:
    cdef double x = std_gamma(st, a)
    cdef double y = std_gamma(st, b)
    if x + y == 0.0:  # both underflowed: only possible for tiny shapes
        return 1.0 if next_double(st) < a / (a + b) else 0.0
    return x / (x + y)


cdef enum Distribution:
    UNIFORM
    NORMAL
    GAMMA
    BETA


cdef inline double _draw(Stream* st, Distribution kind, double a, double b) noexcept nogil:
    if kind == UNIFORM:
        return next_double(st)
    if kind == NORMAL:
        return std_normal(st)
    if kind == GAMMA:
        return std_gamma(st, a)
    return beta(st, a, b)


def _check_shape(name, double value):
    if not isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_size(Py_ssize_t size):
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")


def _check_u64(name, value):
    # int() would truncate 7.9 to 7 and take True as 1: both would silently pick a stream
    # the caller did not ask for.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if not 0 <= value < 2**64:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {value}")
    return value


cdef class RandomStream:
    """One decision's random stream, re-derivable from ``(seed, sequence)``.

    ``seed`` and ``sequence`` are integers in ``[0, 2**64)`` (Python or numpy integers; not
    floats, not bools). The array methods exist for
    tests and offline tools; rules in ``syntra_core`` use the C functions directly.
    """

    cdef Stream _st
    cdef readonly object seed
    cdef readonly object sequence

    def __cinit__(self, seed, sequence=0):
        self.seed = _check_u64("seed", seed)
        self.sequence = _check_u64("sequence", sequence)
        stream_init(&self._st, <uint64_t>self.seed, <uint64_t>self.sequence)

    def next_u64(self):
        """The next raw 64-bit output of xoshiro256**."""
        return next_u64(&self._st)

    def random(self):
        """A uniform float in [0, 1)."""
        return next_double(&self._st)

    cdef object _fill(self, Distribution kind, double a, double b, Py_ssize_t size):
        _check_size(size)
        out = np.empty(size, dtype=np.float64)
        cdef double[::1] view = out
        cdef Py_ssize_t i
        with nogil:
            for i in range(size):
                view[i] = _draw(&self._st, kind, a, b)
        return out

    def integers(self, uint64_t bound, Py_ssize_t size):
        """``size`` uniform integers in [0, bound)."""
        if bound == 0:
            raise ValueError("bound must be > 0")
        _check_size(size)
        out = np.empty(size, dtype=np.uint64)
        cdef uint64_t[::1] view = out
        cdef Py_ssize_t i
        with nogil:
            for i in range(size):
                view[i] = next_below(&self._st, bound)
        return out

    def uniform(self, Py_ssize_t size):
        """``size`` uniform floats in [0, 1)."""
        return self._fill(UNIFORM, 0.0, 0.0, size)

    def normal(self, Py_ssize_t size):
        """``size`` standard normal draws."""
        return self._fill(NORMAL, 0.0, 0.0, size)

    def gamma(self, double shape, Py_ssize_t size):
        """``size`` draws from Gamma(shape, scale=1)."""
        _check_shape("shape", shape)
        return self._fill(GAMMA, shape, 0.0, size)

    def beta(self, double a, double b, size=None):
        """One draw from Beta(a, b), or an array of ``size`` draws."""
        _check_shape("a", a)
        _check_shape("b", b)
        if size is None:
            return beta(&self._st, a, b)
        return self._fill(BETA, a, b, size)
