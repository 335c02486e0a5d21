# The write-ahead log's writer: Wal (recovery, group commit, rotation, retention) and
# Ticket. The on-disk format, its codecs and the verified walk are in wal_format.pxd;
# docs/wal-format.md defines every byte.

from libc.stdint cimport int64_t, uint8_t, uint64_t
from syntra_core.wal_format cimport ChainHasher, FrameBuffer


# Splitting a batch across segments: how many frames from ``start`` fit in ``room`` bytes.
cdef Py_ssize_t frames_that_fit(const int64_t* ends, Py_ssize_t start, Py_ssize_t count,
                                int64_t begin, int64_t room) noexcept nogil


# Finite upper bounds of the group-commit histograms (Wal.histograms); each also has a
# last, +Inf bucket.
cdef enum:
    FSYNC_BOUNDS = 16
    BATCH_BOUNDS = 14


cdef class Wal:
    cdef readonly str directory
    cdef readonly str durability
    cdef readonly int64_t commit_window_us
    cdef readonly Py_ssize_t max_batch_records
    cdef readonly int64_t segment_bytes
    cdef readonly object recovery
    cdef object _on_seal
    cdef bint _sync

    # Shared state, guarded by _lock. _wakeup is a lock held while the flusher sleeps on
    # it; whoever finds a flag below set clears it and releases _wakeup.
    cdef object _lock
    cdef object _wakeup
    cdef int64_t _first_pending_ns      # when the oldest queued record was submitted
    cdef int _state
    cdef object _error                  # what poisoned the log, or None
    cdef uint64_t _next_sequence
    cdef uint64_t _durable_sequence
    cdef bytes _head_digest
    cdef list _queue_types
    cdef list _queue_payloads
    cdef set _batch_threads             # threads with a record in the batch being gathered
    cdef dict _writers                  # thread ident -> when it last submitted (ns)
    cdef Py_ssize_t _known_writers      # threads that submitted lately: worth waiting for
    cdef int64_t _last_commit_ns        # how long the last write + sync + wake took
    cdef bint _flusher_idle             # waiting for a first record
    cdef bint _flusher_gathering        # waiting out the commit window
    cdef list _waiters                  # heap of (sequence, tie-breaker, lock or (loop, future))
    cdef uint64_t _waiter_count
    cdef list _sealed                   # SegmentInfo of the sealed segments, oldest first
    cdef object _live                   # (number, path, first_sequence) of the live segment
    cdef uint64_t _stat_batches
    cdef uint64_t _stat_records
    cdef uint64_t _stat_syncs
    cdef uint64_t _stat_bytes
    cdef uint64_t _stat_sealed
    cdef uint64_t _stat_windows_expired
    # Group-commit histograms, per bucket (not cumulative; the last is +Inf), in C so
    # recording one allocates nothing. fsync: written by the flusher only, GIL held;
    # batch: under _lock, with _stat_batches.
    cdef uint64_t _fsync_buckets[FSYNC_BOUNDS + 1]
    cdef uint64_t _fsync_sum_ns
    cdef uint64_t _batch_buckets[BATCH_BOUNDS + 1]
    cdef uint64_t _batch_sum

    # The flusher's own state: no lock.
    cdef int _fd
    cdef int64_t _segment_size
    cdef uint64_t _segment_number
    cdef uint64_t _segment_first
    cdef str _segment_path
    cdef uint8_t _chain[32]             # digest of the last record framed
    cdef ChainHasher _hasher
    cdef FrameBuffer _frames

    cdef object _flusher
    cdef object _notifier
    cdef object _seal_queue
    cdef object _close_lock
    cdef object _retain_lock
    cdef object _lock_fd

    cdef _recover(self)
    cdef _check_writable(self)
    cdef _wait_for(self, uint64_t sequence, object timeout)
    cdef object _future_for(self, uint64_t sequence)
    cdef _count_known_writers(self, int64_t window_ns)
    cdef bint _batch_complete(self)
    cdef _wake_flusher(self)
    cdef _sleep(self, int64_t timeout_ns)
    cdef tuple _next_batch(self)
    cdef _commit(self, list types, list payloads, uint64_t first_sequence)
    cdef _write_all(self, Py_ssize_t start, Py_ssize_t stop)
    cdef _rotate(self, uint64_t first_sequence, const uint8_t* previous_digest)
    cdef _sync_data(self)
    cdef _publish(self, uint64_t durable, list sealed, object live)
    cdef _poison(self, object exc)


cdef class Ticket:
    cdef readonly uint64_t sequence
    cdef Wal _wal
