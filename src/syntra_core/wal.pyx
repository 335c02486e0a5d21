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

This module is the writer. The format it writes and the read side (:func:`scan`,
:func:`scan_segment`, :func:`verify`, the errors and record types) are in
:mod:`syntra_core.wal_format`; they are re-exported here, so everything about the log is
imported from ``syntra_core.wal``.

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
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Malloc
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
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport close as c_close

from syntra_core.wal_format cimport (
    DIGEST_SIZE,
    FRAME_OVERHEAD,
    SEGMENT_HEADER_SIZE,
    SegmentHeaderC,
    _checked_payload,
    _checked_type,
    _Walk,
    _walk_all,
    encode_segment_header,
)

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
from _thread import allocate_lock

# The format and read side, used here and re-exported: callers import the whole log from
# syntra_core.wal. _rebuild_corrupt stays reachable here because a WalCorrupt pickled
# before the split names syntra_core.wal._rebuild_corrupt; _hash_cost_ns is for
# bench/bench_wal.py.
from syntra_core.wal_format import (
    MAX_PAYLOAD,
    ZERO_DIGEST,
    SegmentInfo,
    VerifyResult,
    WalClosed,
    WalCorrupt,
    WalError,
    WalRecord,
    _hash_cost_ns,
    _rebuild_corrupt,
    _segment_files,
    _walk_records,
    encode_batch,
    scan,
    scan_segment,
    segment_name,
    verify,
)

cdef extern from "pythread.h":
    PyLockStatus PyThread_acquire_lock_timed(PyThread_type_lock lock, long long microseconds,
                                             int intr_flag) nogil

# A batch stops growing at this many bytes of frames (a larger record still goes alone),
# so one burst of big payloads cannot make the flusher allocate without bound.
BATCH_BYTES = 8 << 20

LOCK_FILE = "wal.lock"
DURABILITY_MODES = ("fsync", "none")

logger = logging.getLogger("syntra.wal")

_LEFTOVER_NAME = re.compile(r"^wal-(\d{16})\.seg\.tmp$")

cdef enum:
    STATE_OPEN = 0
    STATE_CLOSING = 1
    STATE_CLOSED = 2


# ---------------------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------------------

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


# Upper bounds of the group-commit histograms: fsync latency from 25 us (a fast NVMe
# fdatasync) to 2.5 s (a stalled disk), and batch sizes in powers of two.
cdef int64_t _FSYNC_BOUNDS_NS[FSYNC_BOUNDS]
_FSYNC_BOUNDS_NS[:] = [25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
                       5_000_000, 10_000_000, 25_000_000, 50_000_000, 100_000_000,
                       250_000_000, 500_000_000, 1_000_000_000, 2_500_000_000]
cdef int64_t _BATCH_BOUNDS[BATCH_BOUNDS]
_BATCH_BOUNDS[:] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]


cdef inline void _observe(uint64_t* buckets, const int64_t* bounds, int count,
                          int64_t value) noexcept nogil:
    """Count ``value`` in the first bucket whose bound it does not exceed (the last,
    index ``count``, is +Inf): Prometheus' ``le`` buckets."""
    cdef int i = 0
    while i < count and value > bounds[i]:
        i += 1
    buckets[i] += 1


cdef tuple _histogram(const uint64_t* buckets, const int64_t* bounds, int count,
                      double scale, double total):
    """(bounds ending in inf, cumulative counts, sum) from per-bucket counts."""
    cdef uint64_t running = 0
    cdef int i
    cumulative = []
    for i in range(count + 1):
        running += buckets[i]
        cumulative.append(running)
    edges = tuple([bounds[i] * scale for i in range(count)]) + (float("inf"),)
    return (edges, tuple(cumulative), total)


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
# Time and batch geometry
# ---------------------------------------------------------------------------------------

cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return <int64_t>now.tv_sec * 1000000000 + now.tv_nsec


cdef Py_ssize_t frames_that_fit(const int64_t* ends, Py_ssize_t start, Py_ssize_t count,
                                int64_t begin, int64_t room) noexcept nogil:
    """How many frames from ``start`` fit in ``room`` bytes; frame i ends at ends[i]."""
    cdef Py_ssize_t k = 0
    while start + k < count and ends[start + k] - begin <= room:
        k += 1
    return k


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------

cdef _check_int(str name, object value, object low):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------

def _fsync_directory(str directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


cdef str _create_segment(str directory, uint64_t number, uint64_t first_sequence,
                         const uint8_t* previous_digest, bint sync, ChainHasher hasher):
    """Create a segment holding only its header, atomically: a crash leaves either no
    file or a complete header, never a torn one."""
    cdef SegmentHeaderC header
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
    def histograms(self):
        """Group-commit histograms since open, for metrics:
        ``{"fsync_seconds": (bounds, cumulative_counts, sum), "batch_records": (...)}``.

        ``bounds`` are the buckets' upper limits (inclusive, the last is ``inf``) and
        ``cumulative_counts[i]`` how many observations were at most ``bounds[i]``, as
        Prometheus histograms count. fsync_seconds has one observation per fdatasync of
        segment data (its count is ``stats.syncs``); batch_records one per group commit
        (count ``stats.batches``, sum ``stats.records``).
        """
        cdef uint64_t fsync[FSYNC_BOUNDS + 1]
        cdef uint64_t batch[BATCH_BOUNDS + 1]
        cdef uint64_t fsync_sum_ns, batch_sum
        self._lock.acquire()
        try:
            # Plain C copies: the GIL is not released between them, so the flusher cannot
            # record half an observation into the snapshot.
            memcpy(fsync, self._fsync_buckets, sizeof(fsync))
            fsync_sum_ns = self._fsync_sum_ns
            memcpy(batch, self._batch_buckets, sizeof(batch))
            batch_sum = self._batch_sum
        finally:
            self._lock.release()
        return {
            "fsync_seconds": _histogram(fsync, _FSYNC_BOUNDS_NS, FSYNC_BOUNDS, 1e-9,
                                        fsync_sum_ns * 1e-9),
            "batch_records": _histogram(batch, _BATCH_BOUNDS, BATCH_BOUNDS, 1.0,
                                        <double>batch_sum),
        }

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
            self._sync_data()
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
            self._sync_data()
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

    cdef _sync_data(self):
        """fdatasync the live segment, counting it and its latency."""
        cdef int64_t started = _now_ns()
        os.fdatasync(self._fd)
        cdef int64_t elapsed = _now_ns() - started
        self._stat_syncs += 1
        _observe(self._fsync_buckets, _FSYNC_BOUNDS_NS, FSYNC_BOUNDS, elapsed)
        self._fsync_sum_ns += elapsed

    cdef _publish(self, uint64_t durable, list sealed, object live):
        cdef list ready = []
        cdef uint64_t records = durable - self._durable_sequence
        self._lock.acquire()
        try:
            self._durable_sequence = durable
            self._head_digest = PyBytes_FromStringAndSize(<char*>self._chain, DIGEST_SIZE)
            self._stat_batches += 1
            self._stat_records += records
            _observe(self._batch_buckets, _BATCH_BOUNDS, BATCH_BOUNDS, records)
            self._batch_sum += records
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
