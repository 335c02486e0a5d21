"""ADWIN: change detection with an adaptive window (the compiled core).

ADWIN (Bifet and Gavalda, "Learning from Time-Changing Data with Adaptive Windowing",
SIAM International Conference on Data Mining, 2007) keeps a window ``W`` of the most recent
values and drops its oldest part whenever some split ``W = W0 . W1`` (``W0`` older) shows
means that differ by more than

    eps_cut = sqrt(2 / m * var(W) * d) + 2 / (3 m) * d,
    1 / m = 1 / (n0 - L + 1) + 1 / (n1 - L + 1),   d = ln(2 ln(n) / delta),

where ``n0``, ``n1`` are the sub-window lengths (each at least ``L = min_window_length``),
``n`` the window length and ``var(W)`` its variance. Then the probability of a false alarm
at each check is at most ``delta`` (Theorem 3.1 of the paper, with ``delta / ln n`` per
tested split since ADWIN2 tests O(log n) of them).

This is the paper's ADWIN2: the window is an exponential histogram. Level ``i`` holds at
most ``max_buckets`` buckets of ``2**i`` values, each summarised by its sum and its sum of
squared deviations, so memory and the splits tested are O(log n). A new value enters
level 0; when a level holds ``max_buckets + 1`` buckets its two oldest merge into one of
the next level (the variance of the union by Chan et al.'s pairwise formula). Every
``clock`` updates, once the window holds more than ``grace_period`` values, the splits at
bucket boundaries are tested from the oldest; on a significant one the oldest bucket is
dropped and the test repeats. The arithmetic follows river's ``drift.ADWIN`` step by step,
so both report drift at the same positions.

Values must be finite and at most ``MAX_ABS_VALUE`` in magnitude (sums of squares of
larger ones overflow). The Python methods refuse others with ValueError; the C entry
point ``update_c`` ignores them (no state change, no drift reported).

Example:

>>> from syntra_core.drift import AdwinCore
>>> detector = AdwinCore(delta=0.002)
>>> stream = [float(i % 5 == 0) for i in range(1000)] + [float(i % 5 != 0) for i in range(1000)]
>>> detector.feed(stream).tolist()     # the first cut drops part of the old values
[1055, 1087, 1343]
>>> detector.width, detector.n_detections
(976, 3)
>>> river_like = AdwinCore(delta=0.002, reset_on_drift=True)
>>> river_like.feed(stream).tolist()  # the window restarts after 1055 and stays stable
[1055]
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport fabs, isfinite, ldexp, log, sqrt
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memmove

import numbers

import numpy as np

# Largest value magnitude accepted: squared deviations of larger ones can overflow.
MAX_ABS_VALUE = 1e100
cdef double _MAX_ABS_VALUE = MAX_ABS_VALUE

# Bounds of the integer parameters (river keeps clock and lengths in 32 bits).
MAX_BUCKETS_LIMIT = 1024
MAX_INT32 = 2**31 - 1

_PARAMETERS = ("delta", "clock", "max_buckets", "min_window_length", "grace_period",
               "reset_on_drift")


def _integer_parameter(str name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return int(value)


cdef inline bint _acceptable(double value) noexcept nogil:
    return isfinite(value) and fabs(value) <= _MAX_ABS_VALUE


cdef class AdwinCore:
    """ADWIN2 over a preallocated exponential histogram (see the module docs).

    ``reset_on_drift=False`` keeps the paper's behaviour: a detection drops the older
    sub-window and the rest carries on. ``reset_on_drift=True`` empties the whole window at
    the next update after a detection, as river's ``drift.ADWIN`` does.
    ``n_detections`` counts detections since construction or :meth:`reset` either way.
    """

    def __cinit__(self, delta=0.002, clock=32, max_buckets=5, min_window_length=5,
                  grace_period=10, reset_on_drift=False):
        if (isinstance(delta, bool) or not isinstance(delta, numbers.Real)
                or not (isfinite(delta) and 0.0 < delta < 1.0)):
            raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
        clock = _integer_parameter("clock", clock, 1, MAX_INT32)
        # With one bucket per level a merge can empty a level below the top one, which
        # the window's oldest-first order (and river's) does not allow for.
        max_buckets = _integer_parameter("max_buckets", max_buckets, 2, MAX_BUCKETS_LIMIT)
        min_window_length = _integer_parameter("min_window_length", min_window_length, 1, MAX_INT32)
        grace_period = _integer_parameter("grace_period", grace_period, 0, MAX_INT32)
        if not isinstance(reset_on_drift, bool):
            raise ValueError(f"reset_on_drift must be a bool, got {reset_on_drift!r}")
        self.delta = delta
        self.clock = clock
        self.max_buckets = max_buckets
        self.min_window_length = min_window_length
        self.grace_period = grace_period
        self.reset_on_drift = reset_on_drift
        cdef size_t slots = ADWIN_MAX_LEVELS * (max_buckets + 1)
        self.bucket_totals = <double*>PyMem_Malloc(slots * sizeof(double))
        self.bucket_m2 = <double*>PyMem_Malloc(slots * sizeof(double))
        if self.bucket_totals == NULL or self.bucket_m2 == NULL:
            raise MemoryError()
        self.clear_window()
        self.n_detections = 0

    def __dealloc__(self):
        PyMem_Free(self.bucket_totals)
        PyMem_Free(self.bucket_m2)

    # ---- hot path ------------------------------------------------------------------

    cdef bint update_c(self, double value) noexcept nogil:
        """Add ``value``; True if the window was cut because of a change.

        A non-finite or too large value is ignored: nothing changes and False is returned.
        """
        if not _acceptable(value):
            return False
        if self.drift_detected and self.reset_on_drift:
            self.clear_window()
        self.insert(value)
        self.drift_detected = self.check_for_change()
        if self.drift_detected:
            self.n_detections += 1
        return self.drift_detected

    cdef void clear_window(self) noexcept nogil:
        self.width = 0
        self.total = 0.0
        self.m2 = 0.0
        self.tick = 0
        self.drift_detected = False
        self.n_levels = 1
        self.counts[0] = 0

    cdef void insert(self, double value) noexcept nogil:
        cdef double deviation
        self.width += 1
        if self.width > 1:
            # Welford's update of the sum of squared deviations.
            deviation = value - self.total / <double>(self.width - 1)
            self.m2 += <double>(self.width - 1) * deviation * deviation / <double>self.width
        self.total += value
        self.bucket_totals[self.counts[0]] = value
        self.bucket_m2[self.counts[0]] = 0.0
        self.counts[0] += 1
        self.merge_full_levels()

    cdef void merge_full_levels(self) noexcept nogil:
        cdef int stride = self.max_buckets + 1
        cdef int level = 0
        cdef double* totals
        cdef double* m2s
        cdef double size, mean_gap
        cdef int64_t slot
        # The top level cannot fill up while the width fits in an int64 (see the .pxd).
        while level + 1 < ADWIN_MAX_LEVELS and self.counts[level] == stride:
            totals = self.bucket_totals + level * stride
            m2s = self.bucket_m2 + level * stride
            size = ldexp(1.0, level)
            mean_gap = totals[0] / size - totals[1] / size
            if level + 1 == self.n_levels:
                self.counts[level + 1] = 0
                self.n_levels += 1
            slot = (level + 1) * stride + self.counts[level + 1]
            self.bucket_totals[slot] = totals[0] + totals[1]
            self.bucket_m2[slot] = m2s[0] + m2s[1] + size * 0.5 * mean_gap * mean_gap
            self.counts[level + 1] += 1
            memmove(totals, totals + 2, (stride - 2) * sizeof(double))
            memmove(m2s, m2s + 2, (stride - 2) * sizeof(double))
            self.counts[level] -= 2
            level += 1

    cdef bint check_for_change(self) noexcept nogil:
        cdef bint cut = False
        self.tick += 1
        if self.tick % self.clock != 0 or self.width <= self.grace_period:
            return False
        while self.has_significant_cut():
            cut = True
            self.drop_oldest_bucket()
        return cut

    cdef bint has_significant_cut(self) noexcept nogil:
        """Whether some split at a bucket boundary has means further apart than eps_cut."""
        cdef int stride = self.max_buckets + 1
        cdef double n = <double>self.width
        cdef double shortest = <double>self.min_window_length
        cdef double log_term = log(2.0 * log(n) / self.delta)
        cdef double window_variance = self.m2 / n
        cdef double n_old = 0.0, n_new = n, sum_old = 0.0, sum_new = self.total
        cdef double size, bucket_total, inverse_m, eps_cut
        cdef int level
        cdef int64_t k
        # W0 grows from the oldest bucket; both sums are updated incrementally, the newer
        # one by subtraction, exactly as river does (the rounding must match).
        for level in range(self.n_levels - 1, -1, -1):
            size = ldexp(1.0, level)
            for k in range(self.counts[level]):
                bucket_total = self.bucket_totals[level * stride + k]
                n_old += size
                n_new -= size
                sum_old += bucket_total
                sum_new -= bucket_total
                if n_new < shortest:
                    return False  # W1 only gets shorter from here
                if n_old < shortest:
                    continue
                inverse_m = 1.0 / (n_old - shortest + 1.0) + 1.0 / (n_new - shortest + 1.0)
                eps_cut = (sqrt(2.0 * inverse_m * window_variance * log_term)
                           + 2.0 / 3.0 * log_term * inverse_m)
                if fabs(sum_old / n_old - sum_new / n_new) > eps_cut:
                    return True
        return False

    cdef void drop_oldest_bucket(self) noexcept nogil:
        cdef int stride = self.max_buckets + 1
        cdef int top = self.n_levels - 1
        cdef double* totals = self.bucket_totals + top * stride
        cdef double* m2s = self.bucket_m2 + top * stride
        cdef double size = ldexp(1.0, top)
        cdef double bucket_total = totals[0]
        cdef double bucket_m2 = m2s[0]
        cdef double rest, mean_gap
        self.width -= (<int64_t>1) << top
        self.total -= bucket_total
        rest = <double>self.width
        mean_gap = bucket_total / size - self.total / rest
        # The pairwise variance formula run backwards.
        self.m2 -= bucket_m2 + size * rest * mean_gap * mean_gap / (size + rest)
        memmove(totals, totals + 1, (stride - 1) * sizeof(double))
        memmove(m2s, m2s + 1, (stride - 1) * sizeof(double))
        self.counts[top] -= 1
        if self.counts[top] == 0 and top > 0:
            self.n_levels -= 1

    # ---- Python interface ----------------------------------------------------------

    def update(self, double value):
        """Add ``value``; True if a change was detected. ValueError if it is not acceptable."""
        if not _acceptable(value):
            raise ValueError(f"value must be finite with magnitude <= {MAX_ABS_VALUE:g}, got {value!r}")
        return self.update_c(value)

    def feed(self, values):
        """Run every value of a 1-D array through :meth:`update` in one C loop.

        Returns the int64 indices (into ``values``) of the updates that detected a change.
        Refuses the whole array, changing nothing, if any value is not acceptable.
        """
        array = np.ascontiguousarray(values, dtype=np.float64)
        if array.ndim != 1:
            raise ValueError(f"values must be one-dimensional, got shape {array.shape}")
        cdef const double[::1] data = array
        cdef Py_ssize_t n = data.shape[0], i, found = 0, bad = -1
        with nogil:
            for i in range(n):
                if not _acceptable(data[i]):
                    bad = i
                    break
        if bad >= 0:
            raise ValueError(f"values[{bad}] must be finite with magnitude <= "
                             f"{MAX_ABS_VALUE:g}, got {data[bad]!r}")
        # Changes are only reported on clock ticks, so at most one per `clock` updates.
        indices = np.empty(n // self.clock + 1, dtype=np.int64)
        cdef int64_t[::1] out = indices
        with nogil:
            for i in range(n):
                if self.update_c(data[i]):
                    out[found] = i
                    found += 1
        return indices[:found].copy()

    def reset(self):
        """Forget everything: an empty window, the clock restarted, no detections."""
        self.clear_window()
        self.n_detections = 0

    @property
    def estimation(self):
        """Mean of the window (0.0 when it is empty)."""
        return self.total / self.width if self.width else 0.0

    @property
    def variance(self):
        """Population variance of the window (0.0 when it is empty)."""
        return self.m2 / self.width if self.width else 0.0

    @property
    def n_buckets(self):
        """Buckets the window is stored in: O(max_buckets * log2(width))."""
        cdef int level
        cdef int64_t buckets = 0
        for level in range(self.n_levels):
            buckets += self.counts[level]
        return buckets

    def bucket_counts(self):
        """Buckets per level, level 0 (single values) first."""
        return [self.counts[level] for level in range(self.n_levels)]

    def export_state(self):
        """The exact state: parameters, scalars and the bucket arrays as raw bytes.

        :meth:`import_state` on a detector with the same parameters restores it bit for bit.
        """
        cdef int stride = self.max_buckets + 1
        cdef int level
        totals = bytearray()
        m2s = bytearray()
        for level in range(self.n_levels):
            totals += (<char*>(self.bucket_totals + level * stride))[:self.counts[level] * sizeof(double)]
            m2s += (<char*>(self.bucket_m2 + level * stride))[:self.counts[level] * sizeof(double)]
        return {
            "delta": self.delta,
            "clock": self.clock,
            "max_buckets": self.max_buckets,
            "min_window_length": self.min_window_length,
            "grace_period": self.grace_period,
            "reset_on_drift": bool(self.reset_on_drift),
            "width": self.width,
            "total": self.total,
            "m2": self.m2,
            "tick": self.tick,
            "n_detections": self.n_detections,
            "drift_detected": bool(self.drift_detected),
            "counts": (<char*>self.counts)[:self.n_levels * sizeof(int64_t)],
            "bucket_totals": bytes(totals),
            "bucket_m2": bytes(m2s),
        }

    def import_state(self, state):
        """Load :meth:`export_state` output. ValueError, changing nothing, if it does not fit."""
        if not isinstance(state, dict):
            raise ValueError(f"ADWIN state must be a dict, got {type(state).__name__}")
        expected = set(_PARAMETERS) | {"width", "total", "m2", "tick", "n_detections",
                                       "drift_detected", "counts", "bucket_totals", "bucket_m2"}
        if set(state) != expected:
            raise ValueError(f"ADWIN state keys must be {sorted(expected)}, got {sorted(state)}")
        for name in _PARAMETERS:
            if state[name] != getattr(self, name) or type(state[name]) is not type(getattr(self, name)):
                raise ValueError(f"ADWIN state has {name}={state[name]!r}, this detector "
                                 f"{getattr(self, name)!r}")
        for name in ("width", "tick", "n_detections"):
            if type(state[name]) is not int or not 0 <= state[name] < 2**63:
                raise ValueError(f"ADWIN state: {name} must be an int in 0..2**63-1, got {state[name]!r}")
        for name in ("total", "m2"):
            if type(state[name]) is not float or not np.isfinite(state[name]):
                raise ValueError(f"ADWIN state: {name} must be a finite float, got {state[name]!r}")
        if type(state["drift_detected"]) is not bool:
            raise ValueError("ADWIN state: drift_detected must be a bool")
        for name in ("counts", "bucket_totals", "bucket_m2"):
            if not isinstance(state[name], bytes):
                raise ValueError(f"ADWIN state: {name} must be bytes")
        raw_counts = state["counts"]
        if len(raw_counts) % 8 or not 1 <= len(raw_counts) // 8 <= ADWIN_MAX_LEVELS:
            raise ValueError(f"ADWIN state: counts must hold 1..{ADWIN_MAX_LEVELS} int64 values")
        counts = np.frombuffer(raw_counts, dtype=np.int64)
        levels = len(counts)
        if ((counts < 0) | (counts > self.max_buckets)).any():
            raise ValueError(f"ADWIN state: bucket counts must be in 0..{self.max_buckets}")
        if levels > 1 and (counts[levels - 1] == 0 or (counts[:levels - 1] == 0).any()):
            raise ValueError("ADWIN state: only level 0 of a single-level window may be empty")
        if sum(int(c) << level for level, c in enumerate(counts)) != state["width"]:
            raise ValueError("ADWIN state: bucket counts do not add up to the width")
        entries = int(counts.sum())
        for name in ("bucket_totals", "bucket_m2"):
            if len(state[name]) != entries * 8:
                raise ValueError(f"ADWIN state: {name} must hold {entries} float64 values")
        bucket_totals = np.frombuffer(state["bucket_totals"], dtype=np.float64)
        bucket_m2 = np.frombuffer(state["bucket_m2"], dtype=np.float64)
        if not (np.isfinite(bucket_totals).all() and np.isfinite(bucket_m2).all()
                and (bucket_m2 >= 0.0).all()):
            raise ValueError("ADWIN state: bucket sums must be finite, squared deviations >= 0")

        cdef int stride = self.max_buckets + 1
        cdef int level
        cdef Py_ssize_t offset = 0
        cdef const char* raw_totals = state["bucket_totals"]
        cdef const char* raw_m2 = state["bucket_m2"]
        cdef Py_ssize_t length
        for level in range(levels):
            self.counts[level] = counts[level]
            length = self.counts[level] * sizeof(double)
            memcpy(self.bucket_totals + level * stride, raw_totals + offset, length)
            memcpy(self.bucket_m2 + level * stride, raw_m2 + offset, length)
            offset += length
        self.n_levels = levels
        self.width = state["width"]
        self.total = state["total"]
        self.m2 = state["m2"]
        self.tick = state["tick"]
        self.n_detections = state["n_detections"]
        self.drift_detected = state["drift_detected"]
