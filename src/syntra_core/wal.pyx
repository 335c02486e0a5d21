"""The write-ahead log: hash-chained records, group commit, fail-closed recovery.

A record is a type (u16) and a payload (at most :data:`MAX_PAYLOAD` bytes); the log gives
it the next sequence number and a 32-byte BLAKE3 digest chained to the previous record's,
so changing one byte anywhere breaks every later digest. docs/wal-format.md defines the
files byte by byte.

Writers call :meth:`Wal.submit`, which assigns the sequence at once, in call order, and
queues the record; one flusher thread writes everything queued with one ``write`` and one
``fdatasync`` and then wakes every waiter that sync covers. So "submit order == sequence
order == file order", and a record is acknowledged (:meth:`Ticket.wait`) only once it is
durable. The flusher computes the digests, so writers never hash.

:meth:`Wal.open` scans every segment first. At the end of the last segment, bytes that do
not make a complete frame, or that are all zero, are a torn tail from a crash: they are cut
and a WARNING on logger ``syntra.wal`` says where. Anything else that does not check out
raises :class:`WalCorrupt` naming the file and offset: the log fails closed.

Example:

>>> import tempfile
>>> from syntra_core.wal import Wal, verify
>>> with tempfile.TemporaryDirectory() as directory:
...     with Wal.open(directory, durability="none") as wal:
...         first = wal.append(1, b"hello")
...         ticket = wal.submit(2, b"world")
...         second = ticket.wait()
...         records = [(r.sequence, r.rtype, r.payload) for r in wal.read()]
...     summary = verify(directory)
>>> first, second, records
(1, 2, [(1, 1, b'hello'), (2, 2, b'world')])
>>> summary.records, summary.last_sequence, len(summary.head_digest)
(2, 2, 32)
"""

from cpython.buffer cimport PyBUF_READ
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.pythread cimport (
    NOWAIT_LOCK,
    PY_LOCK_ACQUIRED,
    PY_LOCK_FAILURE,
    PyLockStatus,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_get_thread_ident,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, UINT64_MAX
from libc.string cimport memcmp, memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport close as c_close

import asyncio
import dataclasses
import errno
import fcntl
import heapq
import logging
import os
import queue
import re
import shutil
import threading
import time
from _thread import allocate_lock
from collections import namedtuple

import blake3

cdef extern from "pythread.h":
    PyLockStatus PyThread_acquire_lock_timed(PyThread_type_lock lock, long long microseconds,
                                             int intr_flag) nogil

MAX_PAYLOAD = MAX_PAYLOAD_C
# A batch stops growing at this many bytes of frames (a larger record still goes alone),
# so one burst of big payloads cannot make the flusher allocate without bound.
BATCH_BYTES = 8 << 20
# Payloads above this are hashed straight from where they are instead of being copied
# behind the chain prefix first.
cdef Py_ssize_t COPY_HASH_LIMIT = 4096

cdef const char* SEGMENT_MAGIC = b"SYNTRWAL"
ZERO_DIGEST = bytes(DIGEST_SIZE)
LOCK_FILE = "wal.lock"
DURABILITY_MODES = ("fsync", "none")

logger = logging.getLogger("syntra.wal")

_SEGMENT_NAME = re.compile(r"^wal-(\d{16})\.seg$")
_LEFTOVER_NAME = re.compile(r"^wal-(\d{16})\.seg\.tmp$")

cdef enum:
    STATE_OPEN = 0
    STATE_CLOSING = 1
    STATE_CLOSED = 2


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


@dataclasses.dataclass(frozen=True)
class RecoveryInfo:
    """What :meth:`Wal.open` found. ``truncated_*`` describe the torn tail it cut, if any."""
    segments: int
    records: int
    first_sequence: int
    last_sequence: int
    truncated_bytes: int = 0
    truncated_segment: object = None
    truncated_offset: object = None


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """A clean :func:`verify`: the chain checks out from the first record to the head."""
    segments: int
    records: int
    first_sequence: int
    last_sequence: int
    head_digest: bytes
    torn_tail_bytes: int


@dataclasses.dataclass(frozen=True)
class WalStats:
    """Counters since open. ``syncs`` counts fdatasync calls on segment data;
    ``windows_expired`` the batches that waited out the whole commit window (some known
    writer did not come back in time)."""
    batches: int
    records: int
    syncs: int
    bytes_written: int
    segments_sealed: int
    windows_expired: int


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


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return <int64_t>now.tv_sec * 1000000000 + now.tv_nsec


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


cdef void encode_segment_header(uint8_t* out, const SegmentHeader* header) noexcept nogil:
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
                                        SegmentHeader* out) noexcept nogil:
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


cdef Py_ssize_t frames_that_fit(const int64_t* ends, Py_ssize_t start, Py_ssize_t count,
                                int64_t begin, int64_t room) noexcept nogil:
    """How many frames from ``start`` fit in ``room`` bytes; frame i ends at ends[i]."""
    cdef Py_ssize_t k = 0
    while start + k < count and ends[start + k] - begin <= room:
        k += 1
    return k


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


cdef _check_int(str name, object value, object low):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------

def segment_name(uint64_t number):
    """The file name of segment ``number``: names sort in segment order."""
    return f"wal-{number:016d}.seg"


def _segment_files(str directory):
    """[(number, path)] of the segment files in ``directory``, in order."""
    found = []
    for name in os.listdir(directory):
        match = _SEGMENT_NAME.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, name)))
    found.sort()
    return found


def _fsync_directory(str directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_file(str path):
    with open(path, "rb") as f:
        return f.read()


cdef str _create_segment(str directory, uint64_t number, uint64_t first_sequence,
                         const uint8_t* previous_digest, bint sync, ChainHasher hasher):
    """Create a segment holding only its header, atomically: a crash leaves either no
    file or a complete header, never a torn one."""
    cdef SegmentHeader header
    cdef uint8_t raw[SEGMENT_HEADER_SIZE]
    header.number = number
    header.first_sequence = first_sequence
    memcpy(header.previous_digest, previous_digest, DIGEST_SIZE)
    encode_segment_header(raw, &header)
    hasher.header_checksum(raw, raw + 64)
    path = os.path.join(directory, segment_name(number))
    temporary = path + ".tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = PyMemoryView_FromMemory(<char*>raw, SEGMENT_HEADER_SIZE, PyBUF_READ)
        while len(view):
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    if sync:
        _fsync_directory(directory)
    return path


# ---------------------------------------------------------------------------------------
# The scan: shared by recovery, verify, scan and Wal.read
# ---------------------------------------------------------------------------------------

cdef class _Walk:
    """State of one pass over a list of segment files, checked from the first on.

    The first file's header anchors the chain (earlier segments may have been retained
    away); every later header must continue it exactly.
    """
    cdef list files
    cdef bint tail_allowed          # a torn tail at the end of the last file is legal
    cdef ChainHasher hasher
    cdef uint8_t chain[32]
    cdef uint64_t next_sequence
    cdef uint64_t first_sequence
    cdef uint64_t previous_number
    cdef list infos
    cdef object tail_path
    cdef Py_ssize_t tail_offset
    cdef Py_ssize_t tail_bytes
    cdef str tail_kind

    def __cinit__(self, list files, bint tail_allowed):
        self.files = files
        self.tail_allowed = tail_allowed
        self.hasher = ChainHasher()
        memset(self.chain, 0, DIGEST_SIZE)
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
        cdef SegmentHeader header
        cdef const uint8_t* base = <const uint8_t*>PyBytes_AS_STRING(data)
        cdef uint8_t checksum[32]
        cdef HeaderStatus status = decode_segment_header(base, PyBytes_GET_SIZE(data),
                                                         &header)
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
        self.hasher.header_checksum(base, checksum)
        if memcmp(checksum, base + 64, DIGEST_SIZE) != 0:
            raise WalCorrupt("segment header checksum mismatch", segment=path, offset=64,
                             expected=PyBytes_FromStringAndSize(<char*>checksum, DIGEST_SIZE),
                             actual=data[64:96])
        if header.number != number:
            raise WalCorrupt(f"header says segment {header.number} but the file is named "
                             f"for segment {number}", segment=path, offset=16)
        if index == 0:
            if header.first_sequence == 0:
                raise WalCorrupt("first sequence 0 (sequences start at 1)", segment=path,
                                 offset=24)
            memcpy(self.chain, header.previous_digest, DIGEST_SIZE)
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
    match = _SEGMENT_NAME.match(os.path.basename(path))
    if match is None:
        raise ValueError(f"{path} is not named like a WAL segment (wal-<16 digits>.seg)")
    cdef _Walk walk = _Walk([(int(match.group(1)), path)], not sealed)
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
    )


# ---------------------------------------------------------------------------------------
# The writer
# ---------------------------------------------------------------------------------------

cdef class Ticket:
    """A submitted record: its sequence, and a way to wait until it is durable."""

    def __repr__(self):
        return f"Ticket(sequence={self.sequence}, durable={self.done})"

    @property
    def done(self):
        """True once the record is durable."""
        return self._wal._durable_sequence >= self.sequence

    def wait(self, timeout=None):
        """Block until the record is durable; return its sequence.

        Raises :class:`WalError` if the log failed before that, TimeoutError after
        ``timeout`` seconds.
        """
        if self._wal._durable_sequence < self.sequence:
            self._wal._wait_for(self.sequence, timeout)
        return self.sequence

    def wait_async(self):
        """An asyncio future (await it) that resolves to the sequence once durable.

        No thread blocks per waiter: the flusher resolves futures through
        ``loop.call_soon_threadsafe``, once per event loop and batch.
        """
        return self._wal._future_for(self.sequence)


cdef class _Waiter:
    """A C lock one blocked writer sleeps on. The flusher releases it without holding
    the GIL, so the first writers woken run while it is still waking the others."""
    cdef PyThread_type_lock lock

    def __cinit__(self):
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError()
        PyThread_acquire_lock(self.lock, NOWAIT_LOCK)

    def __dealloc__(self):
        if self.lock != NULL:
            # Leave it unlocked before freeing it, as _thread.lock does.
            PyThread_acquire_lock(self.lock, NOWAIT_LOCK)
            PyThread_release_lock(self.lock)
            PyThread_free_lock(self.lock)

    cdef bint sleep(self, object timeout) except -1:
        """True once released; False if ``timeout`` seconds (None: no limit) ran out."""
        cdef long long micros = -1
        cdef int64_t deadline = 0
        cdef PyLockStatus status
        if timeout is not None:
            micros = max(0, <long long>(timeout * 1e6))
            deadline = _now_ns() + micros * 1000
        while True:
            with nogil:
                status = PyThread_acquire_lock_timed(self.lock, micros, 1)
            if status == PY_LOCK_ACQUIRED:
                return True
            if status == PY_LOCK_FAILURE:
                return False
            PyErr_CheckSignals()  # interrupted: let Ctrl-C raise, then sleep on
            if timeout is not None:
                micros = max(0, (deadline - _now_ns()) // 1000)


def _settle_futures(list entries, object error_factory):
    # Runs in the event loop's thread; a future may have been cancelled meanwhile.
    for sequence, future in entries:
        if future.done():
            continue
        if error_factory is None:
            future.set_result(sequence)
        else:
            future.set_exception(error_factory())


cdef _wake(list ready, object error_factory):
    """Release sync waiters, and hand futures to their loops in sequence order."""
    cdef dict by_loop = None
    cdef Py_ssize_t count = 0, i
    cdef PyThread_type_lock* locks = <PyThread_type_lock*>PyMem_Malloc(
        max(1, len(ready)) * sizeof(PyThread_type_lock))
    if locks == NULL:
        raise MemoryError()
    for sequence, waiter in ready:
        if type(waiter) is _Waiter:
            locks[count] = (<_Waiter>waiter).lock
            count += 1
        else:
            if by_loop is None:
                by_loop = {}
            loop, future = waiter
            by_loop.setdefault(loop, []).append((sequence, future))
    # ``ready`` keeps every _Waiter alive until this loop is done.
    with nogil:
        for i in range(count):
            PyThread_release_lock(locks[i])
    PyMem_Free(locks)
    if by_loop is not None:
        for loop, entries in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_futures, entries, error_factory)
            except RuntimeError:
                pass  # the loop is closed: nobody is left to wake


cdef class Wal:
    """A write-ahead log in one directory. Create it with :meth:`Wal.open`.

    Group commit: the flusher takes the first queued record, then keeps gathering until
    ``max_batch_records``, ``commit_window_us`` after that first record, or until every
    *known writer* (a thread that submitted within the last two cycles of window + commit)
    has a record in the batch, whichever comes first. A lone writer therefore never waits
    for the window, and 16 busy writers are synced together. ``stats.windows_expired``
    counts the batches that waited out the whole window; if it is close to
    ``stats.batches`` under load, the window is shorter than the writers' turnaround.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("use Wal.open(directory, ...) to open a write-ahead log")

    def __cinit__(self):
        self._fd = -1
        self._state = STATE_CLOSED

    def __dealloc__(self):
        if self._fd >= 0:
            c_close(self._fd)

    @classmethod
    def open(cls, directory, *, durability="fsync", commit_window_us=200,
             max_batch_records=4096, segment_bytes=64 << 20, on_seal=None):
        """Open (creating if needed) the log in ``directory`` after a full recovery scan.

        ``durability`` is "fsync" (acknowledge after fdatasync) or "none" (acknowledge
        after the write, never sync: for tests and benchmarks only). ``on_seal`` is called
        with the :class:`SegmentInfo` of each segment sealed by rotation, from a background
        thread. Raises :class:`WalCorrupt` on damage, :class:`WalError` if another Wal
        has the directory open.
        """
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be 'fsync' or 'none', got {durability!r}")
        _check_int("commit_window_us", commit_window_us, 0)
        _check_int("max_batch_records", max_batch_records, 1)
        _check_int("segment_bytes", segment_bytes, SEGMENT_HEADER_SIZE + FRAME_OVERHEAD)
        if on_seal is not None and not callable(on_seal):
            raise TypeError("on_seal must be callable or None")
        directory = os.path.abspath(os.fspath(directory))
        sync = durability == "fsync"
        if not os.path.isdir(directory):
            os.makedirs(directory)
            if sync:
                _fsync_directory(os.path.dirname(directory))

        cdef Wal wal = Wal.__new__(Wal)
        wal.directory = directory
        wal.durability = durability
        wal.commit_window_us = commit_window_us
        wal.max_batch_records = max_batch_records
        wal.segment_bytes = segment_bytes
        wal._on_seal = on_seal
        wal._sync = sync
        wal._lock_fd = _lock_directory(directory)
        try:
            wal._recover()
        except BaseException:
            if wal._fd >= 0:
                os.close(wal._fd)
                wal._fd = -1
            os.close(wal._lock_fd)
            wal._lock_fd = None
            raise

        wal._lock = threading.Lock()
        wal._wakeup = allocate_lock()
        wal._wakeup.acquire()
        wal._close_lock = threading.Lock()
        wal._retain_lock = threading.Lock()
        wal._queue_types = []
        wal._queue_payloads = []
        wal._batch_threads = set()
        wal._writers = {}
        wal._known_writers = 0
        wal._waiters = []
        wal._frames = FrameBuffer()
        wal._state = STATE_OPEN
        wal._flusher = threading.Thread(target=wal._run_flusher, daemon=True,
                                        name=f"syntra-wal-flusher:{directory}")
        wal._flusher.start()
        return wal

    cdef _recover(self):
        cdef _Walk walk
        cdef uint8_t zeros[32]
        for name in os.listdir(self.directory):
            if _LEFTOVER_NAME.match(name):
                # A rotation that crashed before its rename: the segment never existed.
                os.unlink(os.path.join(self.directory, name))
                logger.warning("removed unfinished segment %s", name)
        files = _segment_files(self.directory)
        self._hasher = ChainHasher()
        if not files:
            memset(zeros, 0, DIGEST_SIZE)
            path = _create_segment(self.directory, 1, 1, zeros, self._sync, self._hasher)
            files = [(1, path)]
        walk = _walk_all(files, True)
        if walk.tail_bytes:
            fd = os.open(walk.tail_path, os.O_RDWR | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, walk.tail_offset)
                if self._sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            logger.warning(
                "recovery cut a torn tail (%s) from %s: %d bytes at offset %d",
                walk.tail_kind, walk.tail_path, walk.tail_bytes, walk.tail_offset)
        cdef Py_ssize_t count = len(walk.infos)
        live = walk.infos[count - 1]
        self._sealed = walk.infos[:count - 1]
        self._live = (live.number, live.path, live.first_sequence)
        self._segment_number = live.number
        self._segment_path = live.path
        self._segment_first = live.first_sequence
        memcpy(self._chain, walk.chain, DIGEST_SIZE)
        self._head_digest = walk.head_digest()
        self._next_sequence = walk.next_sequence
        self._durable_sequence = walk.next_sequence - 1
        self._fd = os.open(live.path, os.O_RDWR | os.O_CLOEXEC)
        self._segment_size = os.lseek(self._fd, 0, os.SEEK_END)
        self.recovery = RecoveryInfo(
            segments=len(files),
            records=walk.next_sequence - walk.first_sequence,
            first_sequence=walk.first_sequence,
            last_sequence=walk.next_sequence - 1,
            truncated_bytes=walk.tail_bytes,
            truncated_segment=walk.tail_path,
            truncated_offset=walk.tail_offset if walk.tail_bytes else None,
        )

    def __repr__(self):
        return (f"Wal({self.directory!r}, durability={self.durability!r}, "
                f"durable_sequence={self._durable_sequence})")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- state -------------------------------------------------------------------------

    @property
    def next_sequence(self):
        """The sequence the next submit will get."""
        return self._next_sequence

    @property
    def durable_sequence(self):
        """The highest durable sequence (0 if the log has none)."""
        return self._durable_sequence

    @property
    def head_digest(self):
        """The chain digest of the last durable record."""
        return self._head_digest

    @property
    def closed(self):
        return self._state == STATE_CLOSED

    @property
    def stats(self):
        """A :class:`WalStats` snapshot."""
        self._lock.acquire()
        try:
            return WalStats(self._stat_batches, self._stat_records, self._stat_syncs,
                            self._stat_bytes, self._stat_sealed, self._stat_windows_expired)
        finally:
            self._lock.release()

    @property
    def segments(self):
        """Every segment file, oldest first, as :class:`SegmentInfo`; the last is live."""
        self._lock.acquire()
        try:
            number, path, first = self._live
            # The live segment was created after the last durable record before it.
            return self._sealed + [SegmentInfo(number, path, first, self._durable_sequence,
                                               False)]
        finally:
            self._lock.release()

    # -- writing -----------------------------------------------------------------------

    cdef _check_writable(self):
        if self._error is not None:
            raise self._poison_error()
        if self._state != STATE_OPEN:
            raise WalClosed(f"the write-ahead log in {self.directory} is closed")

    def _poison_error(self):
        return WalError(f"the write-ahead log in {self.directory} failed and accepts no "
                        f"more writes: {self._error!r}", self._error)

    def submit(self, rtype, payload):
        """Queue a record and return its :class:`Ticket` at once (never waits on I/O).

        Sequences are assigned in call order, so records reach the file in submit order.
        """
        rtype = _checked_type(rtype)
        payload = _checked_payload(payload)
        cdef uint64_t sequence
        self._lock.acquire()
        try:
            self._check_writable()
            sequence = self._next_sequence
            self._next_sequence = sequence + 1
            now = _now_ns()
            if not self._queue_types:
                self._first_pending_ns = now
            self._queue_types.append(rtype)
            self._queue_payloads.append(payload)
            if self.commit_window_us > 0:
                writer = PyThread_get_thread_ident()
                self._batch_threads.add(writer)
                self._writers[writer] = now
            if self._flusher_idle or (self._flusher_gathering and self._batch_complete()):
                self._wake_flusher()
        finally:
            self._lock.release()
        cdef Ticket ticket = Ticket.__new__(Ticket)
        ticket.sequence = sequence
        ticket._wal = self
        return ticket

    def append(self, rtype, payload):
        """Submit a record and wait until it is durable; return its sequence."""
        return self.submit(rtype, payload).wait()

    def flush(self):
        """Wait until everything submitted so far is durable."""
        cdef uint64_t target = self._next_sequence - 1
        if self._error is not None:
            raise self._poison_error()
        if self._durable_sequence < target:
            self._wait_for(target, None)

    cdef _wait_for(self, uint64_t sequence, object timeout):
        cdef _Waiter waiter
        self._lock.acquire()
        try:
            if self._durable_sequence >= sequence:
                return
            if self._error is not None:
                raise self._poison_error()
            waiter = _Waiter()
            heapq.heappush(self._waiters, (sequence, self._waiter_count, waiter))
            self._waiter_count += 1
        finally:
            self._lock.release()
        if not waiter.sleep(timeout):
            if self._durable_sequence >= sequence:
                return
            if self._error is not None:
                raise self._poison_error()
            raise TimeoutError(f"sequence {sequence} was not durable after {timeout} s")
        if self._durable_sequence < sequence:
            raise self._poison_error()

    cdef object _future_for(self, uint64_t sequence):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._lock.acquire()
        try:
            if self._durable_sequence >= sequence:
                future.set_result(sequence)
            elif self._error is not None:
                future.set_exception(self._poison_error())
            else:
                heapq.heappush(self._waiters,
                               (sequence, self._waiter_count, (loop, future)))
                self._waiter_count += 1
        finally:
            self._lock.release()
        return future

    # -- the flusher -------------------------------------------------------------------

    cdef _count_known_writers(self, int64_t window_ns):
        """With _lock held: how many threads submitted within the last two cycles of
        (window + commit), forgetting the others. Those are the writers worth waiting
        for; one that went quiet drops out after two cycles whatever the request rate."""
        cdef int64_t horizon = _now_ns() - 2 * (window_ns + self._last_commit_ns)
        quiet = [writer for writer, seen in self._writers.items() if seen < horizon]
        for writer in quiet:
            del self._writers[writer]
        self._known_writers = len(self._writers)

    cdef bint _batch_complete(self):
        # Flush without waiting out the window once every known writer has a record in
        # this batch: waiting longer would only delay them (a lone writer never waits).
        return (len(self._queue_types) >= self.max_batch_records
                or len(self._batch_threads) >= self._known_writers
                or self._state != STATE_OPEN)

    def _run_flusher(self):
        cdef tuple batch
        cdef int64_t started
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                started = _now_ns()
                self._commit(batch[0], batch[1], batch[2])
                self._last_commit_ns = _now_ns() - started
        except BaseException as exc:
            self._poison(exc)

    cdef _wake_flusher(self):
        # Called with _lock held; the flags say the flusher sleeps on _wakeup.
        self._flusher_idle = False
        self._flusher_gathering = False
        self._wakeup.release()

    cdef _sleep(self, int64_t timeout_ns):
        """Flusher only, with _lock held: sleep on _wakeup until a submit (or close)
        releases it or ``timeout_ns`` passes (-1: no limit). The caller set the flag that
        says what should wake it."""
        self._lock.release()
        try:
            if timeout_ns < 0:
                woken = self._wakeup.acquire()
            else:
                woken = self._wakeup.acquire(True, timeout_ns * 1e-9)
        finally:
            self._lock.acquire()
        if self._flusher_idle or self._flusher_gathering:
            self._flusher_idle = False      # timed out and nobody released _wakeup
            self._flusher_gathering = False
        elif not woken:
            self._wakeup.acquire(False)     # a release raced the timeout: re-arm

    cdef tuple _next_batch(self):
        """Wait for records, gather a batch (up to the window), and take it off the queue.

        A plain Lock used as a semaphore wakes the flusher rather than a Condition, whose
        Python code would run (and could yield the GIL) while _lock is held.
        """
        cdef Py_ssize_t queued, n, i
        cdef int64_t total = 0, size, remaining
        cdef int64_t window_ns = self.commit_window_us * 1000
        cdef bint expecting = True
        self._lock.acquire()
        try:
            if window_ns > 0:
                self._count_known_writers(window_ns)
            while True:
                if self._queue_types:
                    if window_ns == 0 or self._batch_complete():
                        break
                    remaining = self._first_pending_ns + window_ns - _now_ns()
                    if remaining <= 0:
                        self._stat_windows_expired += 1
                        break
                    self._flusher_gathering = True
                    self._sleep(remaining)
                elif self._state != STATE_OPEN:
                    return None
                elif expecting and window_ns > 0 and self._known_writers > 1:
                    # The writers just acknowledged are on their way back. Sleep until
                    # their batch is complete rather than waking for its first record:
                    # each wake costs a GIL hand-off that every writer then waits behind.
                    expecting = False
                    self._flusher_gathering = True
                    self._sleep(window_ns)
                else:
                    self._flusher_idle = True
                    self._sleep(-1)

            queued = len(self._queue_types)
            n = min(queued, self.max_batch_records)
            for i in range(n):
                size = PyBytes_GET_SIZE(<bytes>self._queue_payloads[i]) + FRAME_OVERHEAD
                if i > 0 and total + size > BATCH_BYTES:
                    n = i
                    break
                total += size
            first = self._next_sequence - queued
            if n == queued:
                types, payloads = self._queue_types, self._queue_payloads
                self._queue_types, self._queue_payloads = [], []
            else:
                types, payloads = self._queue_types[:n], self._queue_payloads[:n]
                del self._queue_types[:n]
                del self._queue_payloads[:n]
            # Records left over (the batch hit its limits) keep their writers counted.
            self._batch_threads = set(self._batch_threads) if n < queued else set()
            return (types, payloads, first)
        finally:
            self._lock.release()

    cdef _commit(self, list types, list payloads, uint64_t first_sequence):
        """Frame, write and sync one batch (rotating as needed), then acknowledge it."""
        cdef Py_ssize_t n = len(types)
        cdef Py_ssize_t start = 0, fit
        cdef int64_t begin
        cdef uint8_t before[32]
        cdef FrameBuffer frames = self._frames
        memcpy(before, self._chain, DIGEST_SIZE)
        frames.encode(types, payloads, first_sequence, self._chain, self._hasher)
        sealed = None
        while start < n:
            begin = frames.ends[start - 1] if start > 0 else 0
            fit = frames_that_fit(frames.ends, start, n, begin,
                                  self.segment_bytes - self._segment_size)
            if fit == 0:
                if self._segment_size > SEGMENT_HEADER_SIZE:
                    if sealed is None:
                        sealed = []
                    sealed.append(SegmentInfo(self._segment_number, self._segment_path,
                                              self._segment_first,
                                              first_sequence + start - 1, True))
                    # The new header links to the digest of the last record sealed.
                    if start > 0:
                        self._rotate(first_sequence + start, frames.data + begin - DIGEST_SIZE)
                    else:
                        self._rotate(first_sequence + start, before)
                    continue
                fit = 1  # a record bigger than a whole segment gets one to itself
            self._write_all(begin, frames.ends[start + fit - 1])
            self._segment_size += frames.ends[start + fit - 1] - begin
            start += fit
        if self._sync:
            os.fdatasync(self._fd)
            self._stat_syncs += 1
        self._publish(first_sequence + n - 1, sealed,
                      (self._segment_number, self._segment_path, self._segment_first))

    cdef _write_all(self, Py_ssize_t start, Py_ssize_t stop):
        view = PyMemoryView_FromMemory(<char*>self._frames.data + start, stop - start,
                                       PyBUF_READ)
        while len(view):
            written = os.write(self._fd, view)
            if written <= 0:
                raise OSError(errno.EIO, f"write to {self._segment_path} returned {written}")
            view = view[written:]
            self._stat_bytes += written

    cdef _rotate(self, uint64_t first_sequence, const uint8_t* previous_digest):
        """Seal the live segment (synced) and continue in a new one."""
        if self._sync:
            os.fdatasync(self._fd)
            self._stat_syncs += 1
        os.close(self._fd)
        self._fd = -1
        path = _create_segment(self.directory, self._segment_number + 1, first_sequence,
                               previous_digest, self._sync, self._hasher)
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        os.lseek(self._fd, 0, os.SEEK_END)
        self._segment_number += 1
        self._segment_path = path
        self._segment_first = first_sequence
        self._segment_size = SEGMENT_HEADER_SIZE

    cdef _publish(self, uint64_t durable, list sealed, object live):
        cdef list ready = []
        cdef uint64_t records = durable - self._durable_sequence
        self._lock.acquire()
        try:
            self._durable_sequence = durable
            self._head_digest = PyBytes_FromStringAndSize(<char*>self._chain, DIGEST_SIZE)
            self._stat_batches += 1
            self._stat_records += records
            if sealed is not None:
                self._sealed.extend(sealed)
                self._stat_sealed += len(sealed)
            self._live = live
            while self._waiters and self._waiters[0][0] <= durable:
                entry = heapq.heappop(self._waiters)
                ready.append((entry[0], entry[2]))
        finally:
            self._lock.release()
        _wake(ready, None)
        if sealed is not None and self._on_seal is not None:
            if self._seal_queue is None:
                self._seal_queue = queue.SimpleQueue()
                self._notifier = threading.Thread(
                    target=_deliver_seals, args=(self._seal_queue, self._on_seal),
                    daemon=True, name=f"syntra-wal-on-seal:{self.directory}")
                self._notifier.start()
            for info in sealed:
                self._seal_queue.put(info)

    cdef _poison(self, object exc):
        cdef list ready
        self._lock.acquire()
        try:
            if self._error is None:
                self._error = exc
            ready = [(entry[0], entry[2]) for entry in sorted(self._waiters)]
            self._waiters = []
            self._queue_types = []
            self._queue_payloads = []
        finally:
            self._lock.release()
        logger.error("write-ahead log in %s failed; it acknowledges nothing more: %r",
                     self.directory, exc)
        _wake(ready, self._poison_error)  # a fresh error per waiter: tracebacks differ

    # -- closing, reading, retention ---------------------------------------------------

    def close(self):
        """Flush what was submitted, stop the flusher and release the files. Idempotent.

        On a log that failed, close just releases everything (every waiter already got
        the error).
        """
        if self._close_lock is None:
            return
        self._close_lock.acquire()
        try:
            if self._state == STATE_CLOSED:
                return
            self._lock.acquire()
            try:
                self._state = STATE_CLOSING
                if self._flusher_idle or self._flusher_gathering:
                    self._wake_flusher()
            finally:
                self._lock.release()
            current = threading.current_thread()
            if self._flusher is not current:
                self._flusher.join()
            if self._seal_queue is not None:
                self._seal_queue.put(None)
                if self._notifier is not current:
                    self._notifier.join()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            self._state = STATE_CLOSED
        finally:
            self._close_lock.release()

    def read(self, from_sequence=1):
        """Iterate the durable records from ``from_sequence`` on, read back from the files
        and verified as they go (raises :class:`WalCorrupt` on damage)."""
        _check_int("from_sequence", from_sequence, 0)
        self._lock.acquire()
        try:
            durable = self._durable_sequence
            number, path, first = self._live
            files = [(s.number, s.path) for s in self._sealed
                     if s.last_sequence >= from_sequence]
            files.append((number, path))
        finally:
            self._lock.release()
        if from_sequence > durable:
            return iter(())
        return _walk_records(_Walk(files, True), True, from_sequence, durable)

    def retain(self, before_sequence, *, archive_dir=None):
        """Delete (or move to ``archive_dir``) every sealed segment whose records all lie
        below ``before_sequence``; return their :class:`SegmentInfo`.

        The oldest go first and the directory is fsynced, so a crash midway leaves a log
        that opens: the first remaining segment's header anchors the chain.
        """
        _check_int("before_sequence", before_sequence, 0)
        self._retain_lock.acquire()
        try:
            self._lock.acquire()
            try:
                self._check_writable()
                doomed = [s for s in self._sealed if s.last_sequence < before_sequence]
            finally:
                self._lock.release()
            if not doomed:
                return []
            if archive_dir is not None:
                archive_dir = os.path.abspath(os.fspath(archive_dir))
                os.makedirs(archive_dir, exist_ok=True)
            for info in doomed:
                if archive_dir is None:
                    os.unlink(info.path)
                else:
                    _move_durably(info.path, os.path.join(archive_dir,
                                                          os.path.basename(info.path)),
                                  self._sync)
                self._lock.acquire()
                try:
                    self._sealed.remove(info)
                finally:
                    self._lock.release()
            if self._sync:
                if archive_dir is not None:
                    _fsync_directory(archive_dir)
                _fsync_directory(self.directory)
            return doomed
        finally:
            self._retain_lock.release()


def _deliver_seals(object pending, object on_seal):
    while True:
        info = pending.get()
        if info is None:
            return
        try:
            on_seal(info)
        except Exception:
            logger.exception("on_seal callback failed for %s", info.path)


def _lock_directory(str directory):
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WalError(f"{directory} is already open in another Wal ({LOCK_FILE} is "
                       "locked)") from None
    return fd


def _move_durably(str source, str target, bint sync):
    """Move a sealed segment; across file systems, copy and sync before unlinking."""
    try:
        os.replace(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    temporary = target + ".tmp"
    shutil.copyfile(source, temporary)
    if sync:
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(temporary, target)
    if sync:
        _fsync_directory(os.path.dirname(target))
    os.unlink(source)
