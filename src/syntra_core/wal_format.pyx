"""The write-ahead log's on-disk format, and the verified read of it.

Everything about the bytes lives here: the segment header and record frame codecs, the
BLAKE3 chain (:class:`ChainHasher`), laying a batch out as frames (:func:`encode_batch`,
the flusher's :class:`FrameBuffer`), segment file names (:func:`segment_name`,
:func:`segment_number`), a checked read of one header (:func:`read_segment_header`), and
the walk that checks a log record by record, shared by :func:`scan`, :func:`scan_segment`,
:func:`verify`, ``Wal.read`` and the recovery scan of ``Wal.open``. The writer
(:mod:`syntra_core.wal`) is built on top of this module and re-exports its public names,
so callers import everything from ``syntra_core.wal``. docs/wal-format.md defines the
files byte by byte.

A frame is a 20-byte header, the payload and the record's 32-byte digest, which chains it
to the record before:

>>> import struct, tempfile
>>> from syntra_core.wal_format import ZERO_DIGEST, ChainHasher, encode_batch, segment_name
>>> frames, head = encode_batch(ZERO_DIGEST, 1, [(7, b"hello")])
>>> len(frames)
57
>>> struct.unpack_from("<IIHHQ", frames)  # length, its complement, type, reserved, sequence
(5, 4294967290, 7, 0, 1)
>>> frames[20:25], frames[25:] == head == ChainHasher().digest(ZERO_DIGEST, 7, 1, b"hello")
(b'hello', True)
>>> segment_name(1)
'wal-0000000000000001.seg'

The writer puts exactly those bytes after the 96-byte segment header, and the read side
checks them back:

>>> from syntra_core.wal import Wal
>>> from syntra_core.wal_format import scan, verify
>>> with tempfile.TemporaryDirectory() as directory:
...     with Wal.open(directory, durability="none") as wal:
...         _ = wal.append(7, b"hello")
...     records = list(scan(directory))
...     summary = verify(directory)
>>> [(r.sequence, r.rtype, r.payload, r.offset) for r in records]
[(1, 7, b'hello', 96)]
>>> records[0].digest == summary.head_digest == head
True
"""

from cpython.buffer cimport PyBUF_READ
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, UINT64_MAX
from libc.string cimport memcmp, memcpy, memset

import dataclasses
import os
import re
import time
from collections import namedtuple

import blake3

MAX_PAYLOAD = MAX_PAYLOAD_C
# Payloads above this are hashed straight from where they are instead of being copied
# behind the chain prefix first.
cdef Py_ssize_t COPY_HASH_LIMIT = 4096

cdef const char* SEGMENT_MAGIC = b"SYNTRWAL"
ZERO_DIGEST = bytes(DIGEST_SIZE)

_SEGMENT_NAME = re.compile(r"^wal-(\d{16})\.seg$")


# ---------------------------------------------------------------------------------------
# Errors and result types
# ---------------------------------------------------------------------------------------

class WalError(Exception):
    """The log cannot do what was asked. When the flusher hit an OSError, ``cause`` is it."""

    def __init__(self, message, cause=None):
        super().__init__(message)
        self.cause = cause
        if cause is not None:
            self.__cause__ = cause


class WalClosed(WalError):
    """The log was closed: nothing more can be submitted."""


class WalCorrupt(WalError):
    """Damage in the log: the scan stopped at ``segment`` (a file path), ``offset``.

    ``sequence`` is the sequence expected at that position (None in a segment header),
    ``expected`` and ``actual`` the digests compared (None when the check was not a digest
    comparison) and ``reason`` what failed.
    """

    def __init__(self, reason, *, segment, offset, sequence=None, expected=None,
                 actual=None):
        self.reason = reason
        self.segment = segment
        self.offset = offset
        self.sequence = sequence
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"corrupt WAL: segment {segment}, offset {offset}, sequence {sequence}: "
            f"{reason}; expected {_hex(expected)}, actual {_hex(actual)}"
        )

    def __reduce__(self):
        return (_rebuild_corrupt, (self.reason, self.segment, self.offset, self.sequence,
                                   self.expected, self.actual))


def _rebuild_corrupt(reason, segment, offset, sequence, expected, actual):
    return WalCorrupt(reason, segment=segment, offset=offset, sequence=sequence,
                      expected=expected, actual=actual)


def _hex(value):
    return None if value is None else bytes(value).hex()


WalRecord = namedtuple("WalRecord", "sequence rtype payload digest segment offset",
                       module=__name__)
WalRecord.__doc__ = """One verified record: ``segment`` is the file path, ``offset`` where
its frame starts, ``digest`` its chain value."""

SegmentInfo = namedtuple("SegmentInfo", "number path first_sequence last_sequence sealed",
                         module=__name__)
SegmentInfo.__doc__ = """A segment file. ``last_sequence`` is ``first_sequence - 1`` while
it holds no record; only the live (last) segment is unsealed."""

SegmentHeader = namedtuple("SegmentHeader", "number first_sequence previous_digest")
SegmentHeader.__doc__ = """A checked segment header (:func:`read_segment_header`):
the segment ``number``, the ``first_sequence`` it holds and ``previous_digest``, the chain
value before that record."""


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """A clean :func:`verify`: the chain checks out from the first record to the head."""
    segments: int
    records: int
    first_sequence: int
    last_sequence: int
    head_digest: bytes
    torn_tail_bytes: int
    # The chain value before the first record: the first segment header's previous digest
    # (ZERO_DIGEST unless retention removed the start of the log).
    anchor_digest: bytes = ZERO_DIGEST


# ---------------------------------------------------------------------------------------
# Byte layout (little-endian, whatever the host)
# ---------------------------------------------------------------------------------------

cdef inline void _put_u16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)


cdef inline void _put_u32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)
    p[2] = <uint8_t>(v >> 16)
    p[3] = <uint8_t>(v >> 24)


cdef inline void _put_u64(uint8_t* p, uint64_t v) noexcept nogil:
    _put_u32(p, <uint32_t>v)
    _put_u32(p + 4, <uint32_t>(v >> 32))


cdef inline uint16_t _get_u16(const uint8_t* p) noexcept nogil:
    return <uint16_t>(p[0] | (<uint16_t>p[1] << 8))


cdef inline uint32_t _get_u32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
            | (<uint32_t>p[3] << 24))


cdef inline uint64_t _get_u64(const uint8_t* p) noexcept nogil:
    return <uint64_t>_get_u32(p) | (<uint64_t>_get_u32(p + 4) << 32)


cdef inline bint _all_zero(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] != 0:
            return False
    return True


cdef void encode_frame(uint8_t* out, uint16_t rtype, uint64_t sequence,
                       const uint8_t* payload, uint32_t length) noexcept nogil:
    # The digest goes after the payload; the caller appends it once it is computed.
    _put_u32(out, length)
    _put_u32(out + 4, <uint32_t>(~length))
    _put_u16(out + 8, rtype)
    _put_u16(out + 10, 0)
    _put_u64(out + 12, sequence)
    memcpy(out + FRAME_HEADER_SIZE, payload, length)


cdef FrameStatus decode_frame(const uint8_t* data, Py_ssize_t size, Py_ssize_t pos,
                              uint64_t expected_sequence, FrameView* out) noexcept nogil:
    cdef Py_ssize_t left = size - pos
    cdef const uint8_t* p = data + pos
    cdef uint32_t length
    if left <= 0:
        return FRAME_END
    if left < FRAME_HEADER_SIZE:
        return FRAME_ZERO_TAIL if _all_zero(p, left) else FRAME_TORN
    length = _get_u32(p)
    # The complement tells a flipped length bit (damage) from a cut frame (a torn tail).
    if _get_u32(p + 4) != <uint32_t>(~length):
        return FRAME_ZERO_TAIL if _all_zero(p, left) else FRAME_BAD_LENGTH
    if length > MAX_PAYLOAD_C:
        return FRAME_BAD_LENGTH
    if left < <Py_ssize_t>length + FRAME_OVERHEAD:
        return FRAME_TORN
    if _get_u16(p + 10) != 0:
        return FRAME_BAD_RESERVED
    if _get_u64(p + 12) != expected_sequence:
        return FRAME_BAD_SEQUENCE
    out.length = length
    out.rtype = _get_u16(p + 8)
    out.sequence = expected_sequence
    out.payload_offset = pos + FRAME_HEADER_SIZE
    out.digest_offset = out.payload_offset + length
    out.end = out.digest_offset + DIGEST_SIZE
    return FRAME_OK


cdef void encode_segment_header(uint8_t* out, const SegmentHeaderC* header) noexcept nogil:
    # The checksum (bytes 64..95) is BLAKE3, so the caller fills it in.
    memcpy(out, SEGMENT_MAGIC, 8)
    _put_u16(out + 8, FORMAT_VERSION)
    _put_u16(out + 10, SEGMENT_HEADER_SIZE)
    _put_u32(out + 12, 0)
    _put_u64(out + 16, header.number)
    _put_u64(out + 24, header.first_sequence)
    memcpy(out + 32, header.previous_digest, DIGEST_SIZE)
    memset(out + 64, 0, DIGEST_SIZE)


cdef HeaderStatus decode_segment_header(const uint8_t* data, Py_ssize_t size,
                                        SegmentHeaderC* out) noexcept nogil:
    if size < SEGMENT_HEADER_SIZE:
        return HEADER_SHORT
    if memcmp(data, SEGMENT_MAGIC, 8) != 0:
        return HEADER_BAD_MAGIC
    if _get_u16(data + 8) != FORMAT_VERSION:
        return HEADER_BAD_VERSION
    if _get_u16(data + 10) != SEGMENT_HEADER_SIZE or _get_u32(data + 12) != 0:
        return HEADER_BAD_LAYOUT
    out.number = _get_u64(data + 16)
    out.first_sequence = _get_u64(data + 24)
    memcpy(out.previous_digest, data + 32, DIGEST_SIZE)
    return HEADER_OK


cdef void chain_prefix(uint8_t* out, const uint8_t* previous_digest, uint16_t rtype,
                       uint64_t sequence) noexcept nogil:
    memcpy(out, previous_digest, DIGEST_SIZE)
    _put_u16(out + DIGEST_SIZE, rtype)
    _put_u64(out + DIGEST_SIZE + 2, sequence)


# ---------------------------------------------------------------------------------------
# Hashing and batch encoding
# ---------------------------------------------------------------------------------------

cdef class ChainHasher:
    """Computes chain digests with one reusable BLAKE3 hasher.

    Not thread-safe: the flusher and every scan own one each.
    """

    def __cinit__(self):
        hasher = blake3.blake3()
        # Bound once: a lookup per record would cost as much as hashing 100 bytes.
        self._update = hasher.update
        self._digest = hasher.digest
        self._reset = hasher.reset
        self.scratch = NULL
        self.scratch_capacity = 0

    def __dealloc__(self):
        PyMem_Free(self.scratch)

    cdef int link(self, const uint8_t* previous_digest, uint16_t rtype, uint64_t sequence,
                  const uint8_t* payload, uint32_t length, uint8_t* digest_out) except -1:
        # digest_out may alias previous_digest: the prefix is copied before hashing.
        cdef Py_ssize_t need = CHAIN_PREFIX_SIZE + (length if length <= COPY_HASH_LIMIT else 0)
        cdef uint8_t* grown
        if need > self.scratch_capacity:
            grown = <uint8_t*>PyMem_Realloc(self.scratch, need)
            if grown == NULL:
                raise MemoryError()
            self.scratch = grown
            self.scratch_capacity = need
        chain_prefix(self.scratch, previous_digest, rtype, sequence)
        if length <= COPY_HASH_LIMIT:
            # One call into the hasher is cheaper than two for small payloads.
            memcpy(self.scratch + CHAIN_PREFIX_SIZE, payload, length)
            self._update(PyMemoryView_FromMemory(<char*>self.scratch, need, PyBUF_READ))
        else:
            self._update(PyMemoryView_FromMemory(<char*>self.scratch, CHAIN_PREFIX_SIZE,
                                                 PyBUF_READ))
            self._update(PyMemoryView_FromMemory(<char*>payload, length, PyBUF_READ))
        digest = self._digest()
        self._reset()
        memcpy(digest_out, PyBytes_AS_STRING(digest), DIGEST_SIZE)
        return 0

    cdef int header_checksum(self, const uint8_t* header, uint8_t* out) except -1:
        self._update(PyMemoryView_FromMemory(<char*>header, 64, PyBUF_READ))
        digest = self._digest()
        self._reset()
        memcpy(out, PyBytes_AS_STRING(digest), DIGEST_SIZE)
        return 0

    def digest(self, bytes previous_digest not None, int rtype, uint64_t sequence,
               payload):
        """The chain digest of one record after ``previous_digest`` (for tools and tests)."""
        if len(previous_digest) != DIGEST_SIZE:
            raise ValueError("previous_digest must be 32 bytes")
        cdef bytes data = bytes(payload)
        cdef uint8_t out[32]
        self.link(<const uint8_t*>PyBytes_AS_STRING(previous_digest), <uint16_t>rtype,
                  sequence, <const uint8_t*>PyBytes_AS_STRING(data),
                  <uint32_t>PyBytes_GET_SIZE(data), out)
        return PyBytes_FromStringAndSize(<char*>out, DIGEST_SIZE)


cdef class FrameBuffer:
    """One batch laid out as frames in a reused buffer, ready for a single write."""

    def __dealloc__(self):
        PyMem_Free(self.data)
        PyMem_Free(self.ends)

    cdef Py_ssize_t encode(self, list types, list payloads, uint64_t first_sequence,
                           uint8_t* chain, ChainHasher hasher) except -1:
        """Frame every record, chaining from ``chain`` (left at the last digest)."""
        cdef Py_ssize_t n = len(payloads)
        cdef Py_ssize_t i, total = 0, offset = 0
        cdef bytes payload
        cdef const uint8_t* data
        cdef uint32_t length
        cdef uint16_t rtype
        cdef void* grown
        for i in range(n):
            total += PyBytes_GET_SIZE(<bytes>payloads[i]) + FRAME_OVERHEAD
        if total > self.capacity:
            grown = PyMem_Realloc(self.data, total)
            if grown == NULL:
                raise MemoryError()
            self.data = <uint8_t*>grown
            self.capacity = total
        if n > self.ends_capacity:
            grown = PyMem_Realloc(self.ends, n * sizeof(int64_t))
            if grown == NULL:
                raise MemoryError()
            self.ends = <int64_t*>grown
            self.ends_capacity = n
        for i in range(n):
            payload = <bytes>payloads[i]
            data = <const uint8_t*>PyBytes_AS_STRING(payload)
            length = <uint32_t>PyBytes_GET_SIZE(payload)
            rtype = types[i]
            encode_frame(self.data + offset, rtype, first_sequence + i, data, length)
            hasher.link(chain, rtype, first_sequence + i, data, length, chain)
            memcpy(self.data + offset + FRAME_HEADER_SIZE + length, chain, DIGEST_SIZE)
            offset += FRAME_OVERHEAD + length
            self.ends[i] = offset
        self.size = offset
        return offset


def encode_batch(bytes previous_digest not None, uint64_t first_sequence, records):
    """Frame ``records`` ((rtype, payload) pairs) as the flusher would.

    Returns ``(frames, head_digest)``: the bytes that follow a record whose digest is
    ``previous_digest``, and the digest of the last record. For tools and benchmarks.
    """
    if len(previous_digest) != DIGEST_SIZE:
        raise ValueError("previous_digest must be 32 bytes")
    cdef list types = []
    cdef list payloads = []
    for rtype, payload in records:
        types.append(_checked_type(rtype))
        payloads.append(_checked_payload(payload))
    cdef uint8_t chain[32]
    memcpy(chain, PyBytes_AS_STRING(previous_digest), DIGEST_SIZE)
    cdef FrameBuffer frames = FrameBuffer()
    cdef Py_ssize_t size = frames.encode(types, payloads, first_sequence, chain,
                                         ChainHasher())
    return (PyBytes_FromStringAndSize(<char*>frames.data, size),
            PyBytes_FromStringAndSize(<char*>chain, DIGEST_SIZE))


def _hash_cost_ns(Py_ssize_t payload_bytes, Py_ssize_t rounds):
    """Mean ns for one chain link over a ``payload_bytes`` payload, as the flusher does it."""
    cdef ChainHasher hasher = ChainHasher()
    cdef bytes payload = bytes(payload_bytes)
    cdef uint8_t chain[32]
    cdef Py_ssize_t i
    memset(chain, 0, DIGEST_SIZE)
    start = time.perf_counter_ns()
    for i in range(rounds):
        hasher.link(chain, 7, <uint64_t>(i + 1), <const uint8_t*>PyBytes_AS_STRING(payload),
                    <uint32_t>payload_bytes, chain)
    return (time.perf_counter_ns() - start) / rounds


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------

cdef object _checked_type(object rtype):
    if isinstance(rtype, bool) or not isinstance(rtype, int):
        raise TypeError(f"rtype must be an int in 0..65535, not {type(rtype).__name__}")
    if not 0 <= rtype <= 0xFFFF:
        raise ValueError(f"rtype must be in 0..65535, got {rtype}")
    return int(rtype)


cdef bytes _checked_payload(object payload):
    cdef bytes data
    if isinstance(payload, bytes):
        data = payload
    elif isinstance(payload, str):
        raise TypeError("payload must be bytes-like (bytes, bytearray, memoryview), not str: "
                        "encode it first")
    else:
        try:
            view = memoryview(payload)
        except TypeError:
            raise TypeError(f"payload must be bytes-like (bytes, bytearray, memoryview), "
                            f"not {type(payload).__name__}") from None
        if view.nbytes > MAX_PAYLOAD_C:
            raise ValueError(f"payload is {view.nbytes} bytes; the limit is MAX_PAYLOAD = "
                             f"{MAX_PAYLOAD_C} bytes (16 MiB)")
        # A copy: the caller may reuse its buffer before the flusher gets to it.
        data = view.tobytes()
    if PyBytes_GET_SIZE(data) > MAX_PAYLOAD_C:
        raise ValueError(f"payload is {PyBytes_GET_SIZE(data)} bytes; the limit is "
                         f"MAX_PAYLOAD = {MAX_PAYLOAD_C} bytes (16 MiB)")
    return data


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------

def segment_name(uint64_t number):
    """The file name of segment ``number``: names sort in segment order."""
    return f"wal-{number:016d}.seg"


def segment_number(path):
    """The number of the segment file ``path`` (a name or a path) is named for, or None
    if it is not named like a segment (``wal-<16 digits>.seg``)."""
    match = _SEGMENT_NAME.match(os.path.basename(os.fspath(path)))
    return int(match.group(1)) if match else None


def _segment_files(str directory):
    """[(number, path)] of the segment files in ``directory``, in order."""
    found = []
    for name in os.listdir(directory):
        number = segment_number(name)
        if number is not None:
            found.append((number, os.path.join(directory, name)))
    found.sort()
    return found


def read_segment_header(path):
    """The :class:`SegmentHeader` of the segment file at ``path``, checked as a scan checks
    it (size, magic, version, layout, checksum, and the number its file name says); reads
    only the header. Raises :class:`WalCorrupt` naming ``path`` on damage, OSError if the
    file cannot be read, ValueError if it is not named like a segment.
    """
    cdef SegmentHeaderC header
    path = os.fspath(path)
    number = segment_number(path)
    if number is None:
        raise ValueError(f"{path} is not named like a WAL segment (wal-<16 digits>.seg)")
    with open(path, "rb") as f:
        data = f.read(SEGMENT_HEADER_SIZE)
    _check_header(path, data, number, ChainHasher(), &header)
    return SegmentHeader(
        header.number, header.first_sequence,
        PyBytes_FromStringAndSize(<char*>header.previous_digest, DIGEST_SIZE))


def _read_file(str path):
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------------------
# The scan: shared by recovery, verify, scan and Wal.read
# ---------------------------------------------------------------------------------------

cdef int _check_header(str path, bytes data, uint64_t number, ChainHasher hasher,
                       SegmentHeaderC* header) except -1:
    """Decode the segment header at the start of ``data`` into ``header``, checking it on
    its own (layout, checksum, the ``number`` its file is named for); raise WalCorrupt."""
    cdef const uint8_t* base = <const uint8_t*>PyBytes_AS_STRING(data)
    cdef uint8_t checksum[32]
    cdef HeaderStatus status = decode_segment_header(base, PyBytes_GET_SIZE(data), header)
    if status == HEADER_SHORT:
        raise WalCorrupt(f"segment header is {len(data)} bytes, not "
                         f"{SEGMENT_HEADER_SIZE}", segment=path, offset=0)
    if status == HEADER_BAD_MAGIC:
        raise WalCorrupt(f"bad magic {data[:8]!r}", segment=path, offset=0)
    if status == HEADER_BAD_VERSION:
        raise WalCorrupt(f"unsupported format version {_get_u16(base + 8)}",
                         segment=path, offset=8)
    if status == HEADER_BAD_LAYOUT:
        raise WalCorrupt("header size or reserved field is not as format version 1 "
                         "defines", segment=path, offset=10)
    hasher.header_checksum(base, checksum)
    if memcmp(checksum, base + 64, DIGEST_SIZE) != 0:
        raise WalCorrupt("segment header checksum mismatch", segment=path, offset=64,
                         expected=PyBytes_FromStringAndSize(<char*>checksum, DIGEST_SIZE),
                         actual=data[64:96])
    if header.number != number:
        raise WalCorrupt(f"header says segment {header.number} but the file is named "
                         f"for segment {number}", segment=path, offset=16)
    return 0


cdef class _Walk:
    """State of one pass over a list of segment files, checked from the first on.

    The first file's header anchors the chain (earlier segments may have been retained
    away); every later header must continue it exactly.

    Its fields are declared in wal_format.pxd, where Wal.open reads what the pass found.
    """

    def __cinit__(self, list files, bint tail_allowed):
        self.files = files
        self.tail_allowed = tail_allowed
        self.hasher = ChainHasher()
        memset(self.chain, 0, DIGEST_SIZE)
        memset(self.anchor, 0, DIGEST_SIZE)
        self.next_sequence = 1
        self.first_sequence = 1
        self.infos = []
        self.tail_path = None
        self.tail_offset = 0
        self.tail_bytes = 0
        self.tail_kind = None

    cdef head_digest(self):
        return PyBytes_FromStringAndSize(<char*>self.chain, DIGEST_SIZE)

    cdef check_header(self, Py_ssize_t index, uint64_t number, str path, bytes data):
        cdef SegmentHeaderC header
        _check_header(path, data, number, self.hasher, &header)
        if index == 0:
            if header.first_sequence == 0:
                raise WalCorrupt("first sequence 0 (sequences start at 1)", segment=path,
                                 offset=24)
            memcpy(self.chain, header.previous_digest, DIGEST_SIZE)
            memcpy(self.anchor, header.previous_digest, DIGEST_SIZE)
            self.next_sequence = header.first_sequence
            self.first_sequence = header.first_sequence
        else:
            if number != self.previous_number + 1:
                raise WalCorrupt(f"segment number gap: segment {number} follows segment "
                                 f"{self.previous_number}", segment=path, offset=16)
            if header.first_sequence != self.next_sequence:
                raise WalCorrupt(f"segment starts at sequence {header.first_sequence} but "
                                 f"the previous one ended before {self.next_sequence}",
                                 segment=path, offset=24, sequence=self.next_sequence)
            if memcmp(header.previous_digest, self.chain, DIGEST_SIZE) != 0:
                raise WalCorrupt("previous-digest link does not match the last digest of "
                                 "the previous segment", segment=path, offset=32,
                                 expected=self.head_digest(), actual=data[32:64])
        self.previous_number = number

    cdef frame_error(self, FrameStatus status, str path, bytes data, Py_ssize_t pos,
                     bint last):
        """The WalCorrupt for a frame that failed, or None if it is a legal torn tail."""
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(data) + pos
        cdef Py_ssize_t left = PyBytes_GET_SIZE(data) - pos
        cdef uint32_t length, check
        if status == FRAME_TORN or status == FRAME_ZERO_TAIL:
            kind = "zero-filled tail" if status == FRAME_ZERO_TAIL else "incomplete frame"
            if last and self.tail_allowed:
                self.tail_path = path
                self.tail_offset = pos
                self.tail_bytes = left
                self.tail_kind = kind
                return None
            # Only the live segment may end torn: every sealed one was synced whole.
            return WalCorrupt(f"{kind} ({left} bytes) in a sealed segment", segment=path,
                              offset=pos, sequence=self.next_sequence)
        if status == FRAME_BAD_LENGTH:
            length = _get_u32(p)
            check = _get_u32(p + 4)
            if check == <uint32_t>(~length):
                reason = f"length field {length} exceeds MAX_PAYLOAD"
            else:
                reason = (f"length field {length} does not match its complement "
                          f"{check:#010x}")
            return WalCorrupt(reason, segment=path, offset=pos, sequence=self.next_sequence)
        if status == FRAME_BAD_RESERVED:
            return WalCorrupt(f"reserved field is {_get_u16(p + 10)}, not 0", segment=path,
                              offset=pos, sequence=self.next_sequence)
        return WalCorrupt(f"sequence field is {_get_u64(p + 12)} where {self.next_sequence} "
                          "was expected", segment=path, offset=pos, sequence=self.next_sequence)


def _walk_records(_Walk walk, bint emit, uint64_t from_sequence, uint64_t until_sequence):
    """Check every segment of ``walk``; yield WalRecords (if ``emit``) from
    ``from_sequence`` on, and stop after ``until_sequence``."""
    cdef Py_ssize_t index, count = len(walk.files)
    cdef Py_ssize_t pos, size
    cdef uint64_t number
    cdef uint64_t segment_first
    cdef bytes data
    cdef const uint8_t* base
    cdef FrameView frame
    cdef FrameStatus status
    cdef uint8_t digest[32]
    cdef bint last
    for index in range(count):
        number, path = walk.files[index]
        last = index == count - 1
        data = _read_file(path)
        walk.check_header(index, number, path, data)
        segment_first = walk.next_sequence
        base = <const uint8_t*>PyBytes_AS_STRING(data)
        size = PyBytes_GET_SIZE(data)
        pos = SEGMENT_HEADER_SIZE
        while True:
            if walk.next_sequence > until_sequence:
                return
            status = decode_frame(base, size, pos, walk.next_sequence, &frame)
            if status == FRAME_END:
                break
            if status != FRAME_OK:
                error = walk.frame_error(status, path, data, pos, last)
                if error is not None:
                    raise error
                break
            walk.hasher.link(walk.chain, frame.rtype, frame.sequence,
                             base + frame.payload_offset, frame.length, digest)
            if memcmp(digest, base + frame.digest_offset, DIGEST_SIZE) != 0:
                raise WalCorrupt(
                    "digest mismatch: the record or one before it was changed",
                    segment=path, offset=pos, sequence=frame.sequence,
                    expected=PyBytes_FromStringAndSize(<char*>digest, DIGEST_SIZE),
                    actual=data[frame.digest_offset:frame.end])
            memcpy(walk.chain, digest, DIGEST_SIZE)
            walk.next_sequence += 1
            if emit and frame.sequence >= from_sequence:
                yield WalRecord(
                    frame.sequence, frame.rtype,
                    data[frame.payload_offset:frame.digest_offset],
                    data[frame.digest_offset:frame.end], path, pos)
            pos = frame.end
        walk.infos.append(SegmentInfo(number, path, segment_first, walk.next_sequence - 1,
                                      not last))


cdef _Walk _walk_all(list files, bint tail_allowed):
    cdef _Walk walk = _Walk(files, tail_allowed)
    for _ in _walk_records(walk, False, 1, UINT64_MAX):
        pass
    return walk


def scan(directory):
    """Yield every verified :class:`WalRecord` of the log in ``directory``, in order.

    Raises :class:`WalCorrupt` at the first bad record; a torn tail at the end of the last
    segment just ends the scan. Opens the files read-only and changes nothing.
    """
    files = _segment_files(os.fspath(directory))
    yield from _walk_records(_Walk(files, True), True, 1, UINT64_MAX)


def scan_segment(path, *, bint sealed=True):
    """Yield the verified records of one segment file, read-only, its header anchoring
    the chain (the segments before it are not read).

    Raises :class:`WalCorrupt` naming ``path`` on damage. With ``sealed`` (the default)
    an incomplete or zero tail is damage too; pass ``sealed=False`` for the live segment,
    where such a tail just ends the scan.
    """
    path = os.path.abspath(os.fspath(path))
    number = segment_number(path)
    if number is None:
        raise ValueError(f"{path} is not named like a WAL segment (wal-<16 digits>.seg)")
    cdef _Walk walk = _Walk([(number, path)], not sealed)
    yield from _walk_records(walk, True, 1, UINT64_MAX)


def verify(directory):
    """Check the whole log in ``directory``; return a :class:`VerifyResult` or raise
    :class:`WalCorrupt`. Changes nothing (a torn tail is reported, not cut)."""
    cdef list files = _segment_files(os.fspath(directory))
    cdef _Walk walk = _walk_all(files, True)
    return VerifyResult(
        segments=len(files),
        records=walk.next_sequence - walk.first_sequence,
        first_sequence=walk.first_sequence,
        last_sequence=walk.next_sequence - 1,
        head_digest=walk.head_digest(),
        torn_tail_bytes=walk.tail_bytes,
        anchor_digest=PyBytes_FromStringAndSize(<char*>walk.anchor, DIGEST_SIZE),
    )
