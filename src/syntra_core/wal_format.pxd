# The on-disk format of the write-ahead log: frame and segment-header codecs, the chain
# hasher, batch framing and the verified walk over segment files that recovery, scan,
# verify and Wal.read share. docs/wal-format.md defines every byte; keep the two in step.
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


ctypedef struct SegmentHeaderC:
    uint64_t number
    uint64_t first_sequence
    uint8_t previous_digest[32]     # chain value before this segment's first record


cdef void encode_frame(uint8_t* out, uint16_t rtype, uint64_t sequence,
                       const uint8_t* payload, uint32_t length) noexcept nogil
cdef FrameStatus decode_frame(const uint8_t* data, Py_ssize_t size, Py_ssize_t pos,
                              uint64_t expected_sequence, FrameView* out) noexcept nogil
cdef void encode_segment_header(uint8_t* out, const SegmentHeaderC* header) noexcept nogil
cdef HeaderStatus decode_segment_header(const uint8_t* data, Py_ssize_t size,
                                        SegmentHeaderC* out) noexcept nogil
cdef void chain_prefix(uint8_t* out, const uint8_t* previous_digest, uint16_t rtype,
                       uint64_t sequence) noexcept nogil


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


# Argument checks shared by encode_batch and Wal.submit: a record is checked the same way
# whoever frames it.
cdef object _checked_type(object rtype)
cdef bytes _checked_payload(object payload)


# State of one pass over a list of segment files (see _Walk in wal_format.pyx). Wal.open
# reads what the pass found (the tail it may cut, the chain, the segments) from here.
cdef class _Walk:
    cdef list files                 # [(number, path)], in order
    cdef bint tail_allowed          # a torn tail at the end of the last file is legal
    cdef ChainHasher hasher
    cdef uint8_t chain[32]          # digest of the last record checked
    cdef uint8_t anchor[32]         # the first header's previous digest: the chain's start
    cdef uint64_t next_sequence
    cdef uint64_t first_sequence
    cdef uint64_t previous_number
    cdef list infos                 # SegmentInfo of every file walked through
    cdef object tail_path           # the torn tail found (tail_bytes 0: none)
    cdef Py_ssize_t tail_offset
    cdef Py_ssize_t tail_bytes
    cdef str tail_kind

    cdef head_digest(self)
    cdef check_header(self, Py_ssize_t index, uint64_t number, str path, bytes data)
    cdef frame_error(self, FrameStatus status, str path, bytes data, Py_ssize_t pos,
                     bint last)


cdef _Walk _walk_all(list files, bint tail_allowed)
