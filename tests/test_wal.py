"""The write-ahead log: round trips, crash recovery, damage detection, group commit.

The files are parsed and the chain recomputed here from docs/wal-format.md, not through
the module, so a bug shared by the writer and the reader cannot hide. Most tests use
``durability="none"`` for speed; the ones about acknowledgement and batching sync for real.

SYNTRA_WAL_CONTENTION_APPENDS shrinks the 8-thread contention test for local runs; CI
runs the full 8 x 10_000.
"""

import asyncio
import errno
import logging
import os
import random
import struct
import threading
import time

import blake3
import pytest

from syntra_core.wal import (
    MAX_PAYLOAD,
    SegmentInfo,
    Wal,
    WalClosed,
    WalCorrupt,
    WalError,
    WalRecord,
    encode_batch,
    scan,
    scan_segment,
    verify,
)

# --- an independent reader, from docs/wal-format.md ---------------------------------------

HEADER = struct.Struct("<8sHHIQQ32s32s")  # magic, version, size, reserved, number, first, prev, sum
FRAME = struct.Struct("<IIHHQ")  # length, ~length, type, reserved, sequence
HEADER_SIZE = 96
OVERHEAD = 52
ZERO = bytes(32)
JOIN = 10.0  # seconds a test waits for a thread before calling it hung


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def chain_digest(previous, rtype, sequence, payload):
    return blake3.blake3(previous + struct.pack("<HQ", rtype, sequence) + payload).digest()


def segment_paths(directory):
    return sorted(
        os.path.join(directory, n) for n in os.listdir(directory)
        if n.startswith("wal-") and n.endswith(".seg")
    )


def parse_segment(path):
    """(header dict, [frame dicts]) of one segment file; asserts the layout."""
    data = read_bytes(path)
    magic, version, size, reserved, number, first, previous, checksum = HEADER.unpack_from(data)
    assert (magic, version, size, reserved) == (b"SYNTRWAL", 1, HEADER_SIZE, 0)
    assert checksum == blake3.blake3(data[:64]).digest()
    assert os.path.basename(path) == f"wal-{number:016d}.seg"
    frames, pos = [], HEADER_SIZE
    while pos < len(data):
        length, check, rtype, zero, sequence = FRAME.unpack_from(data, pos)
        assert check == length ^ 0xFFFFFFFF and zero == 0
        payload = data[pos + 20:pos + 20 + length]
        digest = data[pos + 20 + length:pos + OVERHEAD + length]
        assert len(digest) == 32
        frames.append(dict(offset=pos, end=pos + OVERHEAD + length, rtype=rtype,
                           sequence=sequence, payload=payload, digest=digest))
        pos += OVERHEAD + length
    header = dict(number=number, first=first, previous=previous)
    return header, frames


def check_chain(directory):
    """Recompute the whole chain; return (records, head digest). Asserts every link."""
    records, head, expected_sequence, expected_number = [], None, None, None
    for path in segment_paths(directory):
        header, frames = parse_segment(path)
        if head is None:
            head, expected_sequence = header["previous"], header["first"]
        else:
            assert header["number"] == expected_number
            assert header["first"] == expected_sequence
            assert header["previous"] == head
        expected_number = header["number"] + 1
        for f in frames:
            assert f["sequence"] == expected_sequence
            head = chain_digest(head, f["rtype"], f["sequence"], f["payload"])
            assert f["digest"] == head, f"digest of sequence {f['sequence']}"
            records.append((f["sequence"], f["rtype"], f["payload"]))
            expected_sequence += 1
    return records, head


def record_spans(directory):
    """{path: [(start, end)]}: the header and every frame, as byte ranges."""
    spans = {}
    for path in segment_paths(directory):
        _, frames = parse_segment(path)
        spans[path] = [(0, HEADER_SIZE)] + [(f["offset"], f["end"]) for f in frames]
    return spans


def fill(wal, count, seed=0, max_size=120):
    rng = random.Random(seed)
    written = []
    for _ in range(count):
        rtype, payload = rng.randrange(65536), rng.randbytes(rng.randrange(max_size))
        written.append((wal.append(rtype, payload), rtype, payload))
    return written


# --- round trip ------------------------------------------------------------------------

def test_round_trip_varied_records_and_independent_chain(tmp_path):
    rng = random.Random(1)
    sizes = [0, 1, 41, 100, 4095, 4096, 4097, 70_000, MAX_PAYLOAD]
    records = [(t, rng.randbytes(n)) for t, n in zip([0, 1, 65535, 2, 7, 9, 300, 12, 5], sizes)]
    records += [(rng.randrange(65536), rng.randbytes(rng.randrange(200))) for _ in range(50)]
    with Wal.open(tmp_path) as wal:
        assert (wal.next_sequence, wal.durable_sequence, wal.head_digest) == (1, 0, ZERO)
        sequences = [wal.append(t, p) for t, p in records]
        head = wal.head_digest
    assert sequences == list(range(1, len(records) + 1))

    with Wal.open(tmp_path) as wal:
        assert wal.recovery.records == len(records) and wal.recovery.truncated_bytes == 0
        read = list(wal.read())
        assert wal.head_digest == head
        assert [r.sequence for r in list(wal.read(from_sequence=40))] == list(range(40, 60))
    assert [(r.rtype, r.payload) for r in read] == records
    assert [r.sequence for r in read] == sequences

    independent, independent_head = check_chain(tmp_path)
    assert independent == [(s, t, p) for s, (t, p) in zip(sequences, records)]
    assert independent_head == head == read[-1].digest
    assert verify(tmp_path).head_digest == head
    assert [r.digest for r in scan(tmp_path)] == [r.digest for r in read]


def test_format_example_in_the_doc(tmp_path):
    with Wal.open(tmp_path, durability="none") as wal:
        wal.append(1, b"hi")
    data = (tmp_path / "wal-0000000000000001.seg").read_bytes()
    assert data[:16] == bytes.fromhex("53594e545257414c 0100 6000 00000000".replace(" ", ""))
    assert data[16:32] == bytes.fromhex("0100000000000000" "0100000000000000")
    assert data[96:118] == bytes.fromhex(
        "02000000" "fdffffff" "0100" "0000" "0100000000000000" "6869")
    assert data[118:] == chain_digest(ZERO, 1, 1, b"hi")
    frames, head = encode_batch(ZERO, 1, [(1, b"hi")])
    assert frames == data[96:] and head == data[118:]


def test_submit_order_is_file_order_and_payload_is_copied(tmp_path):
    buffer = bytearray(b"before")
    with Wal.open(tmp_path, durability="none") as wal:
        tickets = [wal.submit(3, str(i).encode()) for i in range(500)]
        ticket = wal.submit(4, buffer)
        buffer[:] = b"after!"
        wal.flush()
        assert all(t.done for t in tickets)
        assert ticket.wait() == 501 and wal.durable_sequence == 501
    records, _ = check_chain(tmp_path)
    assert [p for _, _, p in records[:500]] == [str(i).encode() for i in range(500)]
    assert records[500] == (501, 4, b"before")


# --- torn tails ------------------------------------------------------------------------

def _pristine_log(directory, count=5):
    with Wal.open(directory, durability="none") as wal:
        written = fill(wal, count - 1, seed=3)
        written.append((wal.append(77, b"the last record, cut everywhere"), 77,
                        b"the last record, cut everywhere"))
    path = segment_paths(directory)[0]
    _, frames = parse_segment(path)
    return path, read_bytes(path), frames[-1], written


def test_tail_cut_at_every_offset_of_the_last_record(tmp_path, caplog):
    path, pristine, last, written = _pristine_log(tmp_path)
    start, end = last["offset"], last["end"]
    for cut in range(start, end):
        with open(path, "wb") as f:
            f.write(pristine[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="syntra.wal"):
            with Wal.open(tmp_path, durability="none") as wal:
                assert wal.recovery.last_sequence == len(written) - 1
                assert wal.recovery.truncated_bytes == cut - start
                assert wal.head_digest == parse_segment_digest(pristine, len(written) - 1)
                assert wal.append(5, b"after the cut") == len(written)
        assert os.path.getsize(path) == start + OVERHEAD + len(b"after the cut")
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        if cut == start:
            assert messages == []  # nothing torn: the record simply never arrived
        else:
            assert len(messages) == 1
            assert path in messages[0] and f"{cut - start} bytes" in messages[0]
            assert f"offset {start}" in messages[0]
        records, _ = check_chain(tmp_path)
        assert [r[0] for r in records] == list(range(1, len(written) + 1))
        assert records[-1][2] == b"after the cut"


def parse_segment_digest(data, sequence):
    """The digest stored for ``sequence`` in a one-segment file's bytes."""
    pos = HEADER_SIZE
    while True:
        length, _, _, _, seq = FRAME.unpack_from(data, pos)
        if seq == sequence:
            return data[pos + 20 + length:pos + OVERHEAD + length]
        pos += OVERHEAD + length


def test_zero_filled_tail_is_cut_and_garbage_is_not(tmp_path, caplog):
    path, pristine, _, written = _pristine_log(tmp_path)
    with open(path, "ab") as f:
        f.write(bytes(4096))
    assert verify(tmp_path).torn_tail_bytes == 4096
    assert len(list(scan(tmp_path))) == len(written)
    with caplog.at_level(logging.WARNING, logger="syntra.wal"):
        with Wal.open(tmp_path, durability="none") as wal:
            assert wal.recovery.truncated_bytes == 4096
            assert wal.recovery.truncated_offset == len(pristine)
            assert wal.recovery.truncated_segment == path
    assert "zero-filled" in caplog.text and os.path.getsize(path) == len(pristine)

    # The start of a frame whose body never arrived (zeros where it should be) is torn too ...
    with open(path, "ab") as f:
        f.write(FRAME.pack(200, 200 ^ 0xFFFFFFFF, 1, 0, len(written) + 1) + b"partial" + bytes(100))
    with Wal.open(tmp_path, durability="none") as wal:
        assert wal.recovery.truncated_bytes == 127
    # ... but bytes that claim to be a frame and are not one are damage, never cut.
    with open(path, "ab") as f:
        f.write(b"\x01" * 30)
    with pytest.raises(WalCorrupt, match="complement") as caught:
        Wal.open(tmp_path, durability="none")
    assert caught.value.offset == len(pristine) and caught.value.segment == path
    assert os.path.getsize(path) == len(pristine) + 30


# --- damage ----------------------------------------------------------------------------

def _three_segment_log(directory):
    with Wal.open(directory, durability="none", segment_bytes=700) as wal:
        fill(wal, 24, seed=5)
        assert len(wal.segments) >= 3
    return {p: read_bytes(p) for p in segment_paths(directory)}


def _assert_detected(directory, path, position, spans):
    start, end = next((s, e) for s, e in spans[path] if s <= position < e)
    for check in (lambda: verify(directory),
                  lambda: Wal.open(directory, durability="none").close()):
        with pytest.raises(WalCorrupt) as caught:
            check()
        err = caught.value
        assert err.segment == path, (position, str(err))
        assert start <= err.offset < end, (position, start, end, str(err))


def test_every_random_bit_flip_is_detected(tmp_path):
    pristine = _three_segment_log(tmp_path)
    spans = record_spans(tmp_path)
    rng = random.Random(2024)
    paths = sorted(pristine)
    weights = [len(pristine[p]) for p in paths]
    for _ in range(1000):
        path = rng.choices(paths, weights)[0]
        position = rng.randrange(len(pristine[path]))
        damaged = bytearray(pristine[path])
        damaged[position] ^= 1 << rng.randrange(8)
        with open(path, "r+b") as f:
            f.seek(position)
            f.write(damaged[position:position + 1])
        _assert_detected(tmp_path, path, position, spans)
        with open(path, "r+b") as f:
            f.seek(position)
            f.write(pristine[path][position:position + 1])
    assert verify(tmp_path).records == 24  # restored each time


def test_flips_in_the_last_length_field_and_every_header_field(tmp_path):
    pristine = _three_segment_log(tmp_path)
    spans = record_spans(tmp_path)
    last_path = max(pristine)
    last_start = spans[last_path][-1][0]
    targets = [(last_path, last_start + byte, bit) for byte in range(8) for bit in range(8)]
    targets += [(p, offset, 0) for p in pristine for offset in (0, 8, 10, 12, 16, 24, 32, 63, 64, 95)]
    for path, position, bit in targets:
        damaged = bytearray(pristine[path])
        damaged[position] ^= 1 << bit
        write_bytes(path, damaged)
        _assert_detected(tmp_path, path, position, spans)
        write_bytes(path, pristine[path])


def test_corrupt_error_names_everything(tmp_path):
    pristine = _three_segment_log(tmp_path)
    path = min(pristine)
    _, frames = parse_segment(path)
    victim = next(f for f in frames[1:] if f["payload"])
    damaged = bytearray(pristine[path])
    damaged[victim["offset"] + 20] ^= 0x10  # the first payload byte
    write_bytes(path, damaged)
    with pytest.raises(WalCorrupt) as caught:
        list(scan(tmp_path))
    err = caught.value
    assert (err.segment, err.offset, err.sequence) == (path, victim["offset"], victim["sequence"])
    assert err.actual == bytes(damaged[victim["end"] - 32:victim["end"]])
    assert err.expected != err.actual and len(err.expected) == 32
    for part in (path, str(err.offset), str(err.sequence), err.expected.hex(), err.actual.hex(),
                 err.reason):
        assert part in str(err)
    assert isinstance(err, WalError)


def test_damage_in_a_sealed_segment_is_never_cut(tmp_path):
    pristine = _three_segment_log(tmp_path)
    first, middle, after = sorted(pristine)[:3]
    # A torn or zero tail is legal only at the end of the last segment.
    write_bytes(first, pristine[first][:-5])
    with pytest.raises(WalCorrupt, match="sealed segment") as caught:
        Wal.open(tmp_path, durability="none")
    assert caught.value.segment == first
    write_bytes(first, pristine[first] + bytes(64))
    with pytest.raises(WalCorrupt, match="zero-filled"):
        Wal.open(tmp_path, durability="none")
    write_bytes(first, pristine[first])
    # A missing segment in the middle breaks the numbering.
    os.rename(middle, str(tmp_path / "aside"))
    with pytest.raises(WalCorrupt, match="gap") as caught:
        verify(tmp_path)
    assert caught.value.segment == after
    os.rename(str(tmp_path / "aside"), middle)
    assert pristine == {p: read_bytes(p) for p in segment_paths(tmp_path)}
    assert verify(tmp_path).records == 24


# --- group commit under contention -------------------------------------------------------

def test_eight_threads_ten_thousand_appends_each(tmp_path):
    per_thread = int(os.environ.get("SYNTRA_WAL_CONTENTION_APPENDS", "10000"))
    if os.environ.get("CI"):
        per_thread = 10_000
    errors = []

    with Wal.open(tmp_path) as wal:  # durability="fsync"
        def writer(index):
            try:
                for i in range(per_thread):
                    wal.append(index, f"{index}:{i}".encode())
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads) and not errors
        stats = wal.stats
        assert wal.durable_sequence == 8 * per_thread
    records, head = check_chain(tmp_path)
    assert head == verify(tmp_path).head_digest
    assert [r[0] for r in records] == list(range(1, 8 * per_thread + 1))
    for index in range(8):
        mine = [p for _, t, p in records if t == index]
        # Each thread's records are all there, once, in the order it appended them.
        assert mine == [f"{index}:{i}".encode() for i in range(per_thread)]
    assert stats.records == 8 * per_thread
    assert stats.syncs < stats.records / 2, stats  # batching happened
    assert stats.batches == stats.syncs


def test_fdatasync_is_called_once_per_batch(tmp_path, monkeypatch):
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    with Wal.open(tmp_path) as wal:
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=lambda: (barrier.wait(),
                                                    [wal.append(1, b"x") for _ in range(200)]))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(JOIN)
        assert len(calls) == wal.stats.syncs == wal.stats.batches < 800


def test_a_lone_writer_does_not_wait_out_the_window(tmp_path):
    with Wal.open(tmp_path, durability="none", commit_window_us=100_000) as wal:
        started = time.perf_counter()
        for i in range(20):
            wal.append(1, b"alone")
        # Waiting out a 100 ms window each time would take 2 s.
        assert time.perf_counter() - started < 1.0
        assert wal.stats.windows_expired == 0 and wal.stats.batches == 20


def test_wait_timeout(tmp_path, monkeypatch):
    release = threading.Event()
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (release.wait(JOIN), real(fd))[1])
    with Wal.open(tmp_path) as wal:
        ticket = wal.submit(1, b"slow")
        with pytest.raises(TimeoutError):
            ticket.wait(timeout=0.05)
        assert not ticket.done
        release.set()
        assert ticket.wait(timeout=JOIN) == 1 and ticket.done


# --- rotation and retention ----------------------------------------------------------------

def test_rotation_seals_segments_and_keeps_the_chain(tmp_path):
    sealed = []
    with Wal.open(tmp_path, durability="none", segment_bytes=1024,
                  on_seal=lambda info: sealed.append((info, threading.current_thread()))) as wal:
        written = fill(wal, 300, seed=9)
        big = wal.append(2, bytes(3000))  # larger than a segment: gets one to itself
        segments = wal.segments
    assert len(segments) > 20
    assert [info for info, _ in sealed] == segments[:-1]
    assert all(info.sealed for info in segments[:-1]) and not segments[-1].sealed
    assert all(thread is not threading.main_thread() for _, thread in sealed)
    assert [s.number for s in segments] == list(range(1, len(segments) + 1))
    assert segments[-1] == SegmentInfo(segments[-1].number, segments[-1].path, big, big, False)
    assert os.path.getsize(segments[-1].path) == HEADER_SIZE + OVERHEAD + 3000
    for info in segments:
        header, frames = parse_segment(info.path)
        assert header["first"] == info.first_sequence
        assert [f["sequence"] for f in frames] == list(range(info.first_sequence,
                                                             info.last_sequence + 1))
        assert info.sealed is False or os.path.getsize(info.path) <= 1024
    records, head = check_chain(tmp_path)
    assert [r[1:] for r in records[:-1]] == [(t, p) for _, t, p in written]

    with Wal.open(tmp_path, durability="none", segment_bytes=1024) as wal:
        assert wal.recovery.segments == len(segments) and wal.head_digest == head
        assert wal.append(1, b"next") == big + 1
        assert wal.segments[-1].number == len(segments) + 1  # the big record's segment is full
    assert verify(tmp_path).records == big + 1


def test_a_slow_on_seal_does_not_stall_appends(tmp_path):
    started, release = threading.Event(), threading.Event()
    calls = []

    def on_seal(info):
        calls.append(info)
        started.set()
        release.wait(JOIN)

    with Wal.open(tmp_path, durability="none", segment_bytes=512, on_seal=on_seal) as wal:
        fill(wal, 20, seed=1)
        assert started.wait(JOIN)  # the first callback is running, and blocked
        began = time.perf_counter()
        fill(wal, 200, seed=2)  # many more rotations meanwhile
        assert time.perf_counter() - began < JOIN / 2 and len(calls) == 1
        assert len(wal.segments) > 10
        release.set()
    assert calls == wal.segments[:-1]


def test_retention_deletes_or_archives_old_segments(tmp_path):
    directory, archive = tmp_path / "wal", tmp_path / "archive"
    with Wal.open(directory, durability="none", segment_bytes=800) as wal:
        written = fill(wal, 200, seed=4)
        before = wal.segments
        cut = before[5].last_sequence + 1
        removed = wal.retain(cut)  # delete
        assert removed == before[:5 + 1] and all(not os.path.exists(s.path) for s in removed)
        assert wal.segments == before[6:]
        archived = wal.retain(before[9].first_sequence, archive_dir=archive)
        assert archived == before[6:9]
        assert sorted(os.listdir(archive)) == [os.path.basename(s.path) for s in archived]
        first_left = before[9].first_sequence
        assert wal.segments[0] == before[9]
        assert [r.sequence for r in wal.read()][0] == first_left
        wal.append(1, b"still writing")
        assert wal.retain(0) == []
    result = verify(directory)
    assert result.first_sequence == first_left and result.last_sequence == len(written) + 1
    with Wal.open(directory, durability="none") as wal:
        assert wal.recovery.first_sequence == first_left
        assert all(r.sequence >= first_left for r in wal.read())
    # The archive is itself a valid, verifiable prefix of the log.
    assert verify(archive).first_sequence == before[6].first_sequence
    assert [r.sequence for r in scan(archive)] == list(range(before[6].first_sequence,
                                                            before[8].last_sequence + 1))


# --- failure ----------------------------------------------------------------------------

@pytest.mark.parametrize("failing", ["fdatasync", "write"])
def test_an_io_error_poisons_the_log(tmp_path, monkeypatch, failing):
    with Wal.open(tmp_path) as wal:
        acknowledged = wal.append(1, b"safe")
        head = wal.head_digest

        def broken(*args):
            raise OSError(errno.EIO, "injected")

        monkeypatch.setattr(os, failing, broken)
        outcomes, barrier = [], threading.Barrier(4)

        def writer():
            barrier.wait()
            try:
                wal.append(2, b"doomed")
                outcomes.append("acknowledged")
            except WalError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=writer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(JOIN)
        assert not any(t.is_alive() for t in threads)  # nobody hangs
        assert len(outcomes) == 4 and all(isinstance(o, WalError) for o in outcomes)
        assert all(o.cause.errno == errno.EIO for o in outcomes)
        assert wal.durable_sequence == acknowledged and wal.head_digest == head
        with pytest.raises(WalError, match="injected"):
            wal.submit(3, b"after")
        with pytest.raises(WalError):
            wal.flush()
        monkeypatch.undo()
    # close() released everything despite the failure; the log reopens.
    with Wal.open(tmp_path, durability="none") as wal:
        assert wal.recovery.last_sequence >= acknowledged
        assert [r.payload for r in wal.read()][0] == b"safe"


def test_waiters_of_a_poisoned_log_fail_sync_and_async(tmp_path, monkeypatch):
    release = threading.Event()

    def failing(fd):
        release.wait(JOIN)
        raise OSError(errno.ENOSPC, "disk full")

    monkeypatch.setattr(os, "fdatasync", failing)
    with Wal.open(tmp_path) as wal:
        tickets = [wal.submit(1, b"x") for _ in range(5)]

        async def main():
            futures = [t.wait_async() for t in tickets]
            release.set()
            return await asyncio.gather(*futures, return_exceptions=True)

        results = asyncio.run(main())
        assert all(isinstance(r, WalError) and r.cause.errno == errno.ENOSPC for r in results)
        with pytest.raises(WalError):
            tickets[0].wait(timeout=JOIN)


# --- asyncio ----------------------------------------------------------------------------

def test_asyncio_waiters_complete_in_durability_order(tmp_path):
    async def main(wal):
        finished = []

        async def one(i):
            sequence = await wal.submit(i % 7, f"async {i}".encode()).wait_async()
            finished.append(sequence)

        await asyncio.gather(*(one(i) for i in range(300)))
        cancelled = wal.submit(1, b"cancelled").wait_async()
        cancelled.cancel()
        assert await wal.submit(1, b"after").wait_async() == 302
        ticket = wal.submit(1, b"x")
        await ticket.wait_async()
        assert await ticket.wait_async() == 303  # already durable: resolves at once
        return finished

    with Wal.open(tmp_path) as wal:
        finished = asyncio.run(main(wal))
        assert finished == sorted(finished) == list(range(1, 301))
        assert wal.stats.batches < 300
    assert verify(tmp_path).records == 303


# --- API edges --------------------------------------------------------------------------

def test_validation(tmp_path):
    with Wal.open(tmp_path, durability="none") as wal:
        for bad in (-1, 65536, 2**70):
            with pytest.raises(ValueError, match="0..65535"):
                wal.submit(bad, b"")
        for bad in (True, 1.0, "1", None):
            with pytest.raises(TypeError, match="rtype must be an int"):
                wal.submit(bad, b"")
        for bad in ("text", 5, None, [1, 2]):
            with pytest.raises(TypeError, match="payload must be bytes-like"):
                wal.submit(1, bad)
        with pytest.raises(ValueError, match=f"{MAX_PAYLOAD + 1} bytes.*MAX_PAYLOAD"):
            wal.submit(1, bytes(MAX_PAYLOAD + 1))
        with pytest.raises(ValueError, match="MAX_PAYLOAD"):
            wal.submit(1, bytearray(MAX_PAYLOAD + 1))
        assert wal.append(65535, memoryview(b"abc")) == 1
        assert wal.next_sequence == 2  # rejected records took no sequence
    for bad in ("FSYNC", "", None, "async", True):
        with pytest.raises(ValueError, match="durability must be 'fsync' or 'none'"):
            Wal.open(tmp_path, durability=bad)
    for name, bad in (("commit_window_us", -1), ("max_batch_records", 0), ("segment_bytes", 100)):
        with pytest.raises(ValueError, match=name):
            Wal.open(tmp_path, **{name: bad})
    with pytest.raises(TypeError, match="on_seal"):
        Wal.open(tmp_path, on_seal="nope")
    with pytest.raises(TypeError, match="Wal.open"):
        Wal()


def test_durability_must_be_named_to_skip_syncs(tmp_path):
    with Wal.open(tmp_path / "a") as wal:
        assert wal.durability == "fsync"
        wal.append(1, b"x")
        assert wal.stats.syncs == 1
    with Wal.open(tmp_path / "b", durability="none") as wal:
        for _ in range(10):
            wal.append(1, b"x")
        assert wal.stats.syncs == 0 and wal.durable_sequence == 10


def test_close_is_idempotent_and_final(tmp_path):
    wal = Wal.open(tmp_path, durability="none")
    ticket = wal.submit(1, b"queued before close")
    with pytest.raises(WalError, match="already open"):
        Wal.open(tmp_path, durability="none")
    wal.close()
    wal.close()
    assert wal.closed and ticket.done and ticket.wait() == 1
    with pytest.raises(WalClosed):
        wal.submit(1, b"late")
    with pytest.raises(WalClosed):
        wal.append(1, b"late")
    with pytest.raises(WalClosed):
        wal.retain(1)
    wal.flush()  # nothing pending: returns
    with Wal.open(tmp_path, durability="none") as again:  # the lock was released
        assert again.recovery.last_sequence == 1


def test_unfinished_rotation_leftovers_are_removed(tmp_path, caplog):
    with Wal.open(tmp_path, durability="none") as wal:
        wal.append(1, b"x")
    leftover = tmp_path / "wal-0000000000000002.seg.tmp"
    leftover.write_bytes(b"half a header")
    with caplog.at_level(logging.WARNING, logger="syntra.wal"):
        with Wal.open(tmp_path, durability="none") as wal:
            assert wal.recovery.segments == 1
    assert not leftover.exists() and "unfinished segment" in caplog.text


def test_records_are_named_tuples(tmp_path):
    with Wal.open(tmp_path, durability="none") as wal:
        wal.append(9, b"payload")
        (record,) = wal.read()
    assert isinstance(record, WalRecord)
    sequence, rtype, payload, digest, segment, offset = record
    assert (sequence, rtype, payload, offset) == (1, 9, b"payload", HEADER_SIZE)
    assert segment == segment_paths(tmp_path)[0] and digest == chain_digest(ZERO, 9, 1, b"payload")


def test_scan_segment_checks_one_file_from_its_own_header(tmp_path):
    pristine = _three_segment_log(tmp_path)
    paths = sorted(pristine)
    whole = list(scan(tmp_path))
    pieces = [r for path in paths for r in scan_segment(path, sealed=path != paths[-1])]
    assert pieces == whole
    # Damage in an earlier segment does not matter to a later one read alone.
    write_bytes(paths[0], pristine[paths[0]][:-1])
    assert list(scan_segment(paths[1])) == [r for r in whole if r.segment == paths[1]]
    with pytest.raises(WalCorrupt, match="sealed segment") as caught:
        list(scan_segment(paths[0]))
    assert caught.value.segment == paths[0]
    assert [r.segment for r in scan_segment(paths[0], sealed=False)] == \
        [r.segment for r in whole if r.segment == paths[0]][:-1]
    with pytest.raises(ValueError, match="not named like a WAL segment"):
        list(scan_segment(tmp_path / "wal.lock"))
