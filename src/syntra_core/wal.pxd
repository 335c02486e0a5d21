# The write-ahead log: frame and segment-header codecs, the recovery scan and the group
# commit writer. docs/wal-format.md defines every byte; keep the two in step.
#
# The codecs are C functions over plain byte pointers so the per-record checks of a scan
# and the frame layout of a batch run without touching Python. Hashing goes through the
# blake3 package, so it happens in the callers, with the GIL.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef enum:
    DIGEST_SIZE = 32
    SEGMENT_HEADER_SIZE = 96
    FRAME_HEADER_SIZE = 20          # length, its complement, type, reserved, sequence
    FRAME_OVERHEAD = 52             # FRAME_HEADER_SIZE + DIGEST_SIZE
    CHAIN_PREFIX_SIZE = 42          # previous digest, type, sequence: hashed before the payload
    FORMAT_VERSION = 1
    MAX_PAYLOAD_C = 16777216        # 16 MiB


# What decode_frame found at a record boundary. Torn and zero tails are legal only at the
# end of the last segment; the BAD_ ones are damage wherever they are.
cdef enum FrameStatus:
    FRAME_OK
    FRAME_END                       # no bytes left: a clean end
    FRAME_TORN                      # fewer bytes than the header, or than the length says
    FRAME_ZERO_TAIL                 # every byte left is zero
    FRAME_BAD_LENGTH                # the length and its complement disagree
    FRAME_BAD_RESERVED
    FRAME_BAD_SEQUENCE


cdef enum HeaderStatus:
    HEADER_OK
    HEADER_SHORT
    HEADER_BAD_MAGIC
    HEADER_BAD_VERSION
    HEADER_BAD_LAYOUT               # header size or reserved field not as version 1 says


ctypedef struct FrameView:
    uint32_t length                 # payload bytes
    uint16_t rtype
    uint64_t sequence
    Py_ssize_t payload_offset       # from the start of the segment
    Py_ssize_t digest_offset
    Py_ssize_t end                  # offset of the next frame


ctypedef struct SegmentHeader:
    uint64_t number
    uint64_t first_sequence
    uint8_t previous_digest[32]     # chain value before this segment's first record


cdef void encode_frame(uint8_t* out, uint16_t rtype, uint64_t sequence,
                       const uint8_t* payload, uint32_t length) noexcept nogil
cdef FrameStatus decode_frame(const uint8_t* data, Py_ssize_t size, Py_ssize_t pos,
                              uint64_t expected_sequence, FrameView* out) noexcept nogil
cdef void encode_segment_header(uint8_t* out, const SegmentHeader* header) noexcept nogil
cdef HeaderStatus decode_segment_header(const uint8_t* data, Py_ssize_t size,
                                        SegmentHeader* out) noexcept nogil
cdef void chain_prefix(uint8_t* out, const uint8_t* previous_digest, uint16_t rtype,
                       uint64_t sequence) noexcept nogil
cdef Py_ssize_t frames_that_fit(const int64_t* ends, Py_ssize_t start, Py_ssize_t count,
                                int64_t begin, int64_t room) noexcept nogil


cdef class ChainHasher:
    cdef object _update                 # bound methods of one reused blake3 hasher
    cdef object _digest
    cdef object _reset
    cdef uint8_t* scratch               # chain prefix + a small payload, hashed in one call
    cdef Py_ssize_t scratch_capacity

    cdef int link(self, const uint8_t* previous_digest, uint16_t rtype, uint64_t sequence,
                  const uint8_t* payload, uint32_t length, uint8_t* digest_out) except -1
    cdef int header_checksum(self, const uint8_t* header, uint8_t* out) except -1


cdef class FrameBuffer:
    cdef uint8_t* data                  # the frames of one batch, back to back
    cdef Py_ssize_t capacity
    cdef int64_t* ends                  # ends[i]: offset just past frame i
    cdef Py_ssize_t ends_capacity
    cdef Py_ssize_t size

    cdef Py_ssize_t encode(self, list types, list payloads, uint64_t first_sequence,
                           uint8_t* chain, ChainHasher hasher) except -1


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
    cdef _publish(self, uint64_t durable, list sealed, object live)
    cdef _poison(self, object exc)


cdef class Ticket:
    cdef readonly uint64_t sequence
    cdef Wal _wal
