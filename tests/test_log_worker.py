"""Converting sealed WAL segments to Arrow logs in a worker process (syntra.store.logs.worker).

The worker path must write exactly what the in-process path writes, keep the parent's
threads running while it converts, survive being killed, and hand errors back typed.
"""

import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from syntra import Engine
from syntra.errors import InvalidConfig, StorageCorrupt
from syntra.store.logs import LOG_KINDS, LogWriteFailed, SegmentLogWriter, log_path
from syntra.store.logs.worker import LogWorker, WorkerDied
from syntra_core.wal import Wal

ROUTER = "tenants/acme/jobs/llm/capsules/router"
OPTIONS = ["cheap", "balanced", "accurate"]


def sealed_segments(path):
    with Wal.open(path / "wal", durability="none") as wal:
        return [segment for segment in wal.segments if segment.sealed]


def engine_writer(engine):
    """The SegmentLogWriter that Engine.open attached to ``engine``'s store."""
    writers = [getattr(handler, "__self__", None) for handler in engine._store.seal_handlers]
    [writer] = [w for w in writers if isinstance(w, SegmentLogWriter)]
    return writer


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """A store with two sealed segments of ~90k records each, whose logs the engine wrote
    (through its worker: they are over the offload threshold)."""
    path = tmp_path_factory.mktemp("large") / "db"
    engine = Engine.open(path, durability="none", segment_bytes=8 << 20)
    try:
        router = engine.install(ROUTER, options=OPTIONS)
        requests = [{"context_key": f"ctx{i % 7}"} for i in range(1000)]
        for round_number in range(195):
            decisions = router.decide_many(requests)
            if round_number % 4 == 0:
                router.feedback_many([{"decision_id": d.decision_id, "reward": 1.0}
                                      for d in decisions[:100]])
        writer = engine_writer(engine)
    finally:
        engine.close()  # waits for the seal handler, so both segments have their logs
    sealed = sealed_segments(path)
    assert len(sealed) == 2 and all(s.last_sequence - s.first_sequence > 80_000 for s in sealed)
    return SimpleNamespace(path=path, sealed=sealed, resolve=engine.capsule_config,
                           writer=writer)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A store with small sealed segments (a few dozen records each)."""
    path = tmp_path_factory.mktemp("small") / "db"
    with Engine.open(path, durability="none", segment_bytes=4096) as engine:
        router = engine.install(ROUTER, options=OPTIONS)
        for i in range(200):
            decision = router.decide(f"ctx{i % 3}")
            router.feedback(decision.decision_id, 1.0)
        resolve = engine.capsule_config
    sealed = sealed_segments(path)
    assert len(sealed) > 3
    return SimpleNamespace(path=path, sealed=sealed, resolve=resolve)


def log_bytes(store_path, segment):
    return {kind: log_path(store_path, kind, segment.path).read_bytes() for kind in LOG_KINDS}


def leftovers(store_path):
    return sorted(p.name for p in Path(store_path, "logs").rglob(".*") if p.is_file()
                  and p.name != ".checked.json")


def test_the_engine_writes_large_segments_through_its_worker_byte_for_byte(large, tmp_path):
    assert large.writer.worker.jobs == len(large.sealed) == 2
    in_process = SegmentLogWriter(tmp_path, large.resolve, offload_records=None)
    for segment in large.sealed:
        assert len(in_process.write(segment)) == 3
        assert log_bytes(large.path, segment) == log_bytes(tmp_path, segment)
    assert in_process.worker.jobs == 0 and in_process.worker.pid is None


def test_the_engine_stops_its_worker_when_it_closes(large):
    # The worker lives as long as the WAL's seal thread, which Engine.close ends.
    deadline = time.monotonic() + 10
    while large.writer.worker.pid is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert large.writer.worker.pid is None


def rate_of_a_thread_during(write) -> float:
    """Iterations per second of a thread that, like a server's I/O threads, gives the GIL
    up and needs it back on every iteration, while ``write()`` runs."""
    stop = threading.Event()
    count = 0

    def tick():
        nonlocal count
        while not stop.is_set():
            time.sleep(0)
            count += 1

    thread = threading.Thread(target=tick)
    started = time.perf_counter()
    thread.start()
    try:
        write()
    finally:
        stop.set()
        thread.join()
    return count / (time.perf_counter() - started)


def test_a_parent_thread_keeps_running_while_the_worker_converts(large, tmp_path):
    segment = large.sealed[0]
    in_process = SegmentLogWriter(tmp_path / "here", large.resolve, offload_records=None)
    offloaded = SegmentLogWriter(tmp_path / "worker", large.resolve, offload_records=0)
    try:
        here = rate_of_a_thread_during(lambda: in_process.write(segment))
        away = rate_of_a_thread_during(lambda: offloaded.write(segment))
    finally:
        offloaded.close()
    assert offloaded.worker.jobs == 1
    assert away > 4 * here, (here, away)
    assert log_bytes(tmp_path / "here", segment) == log_bytes(tmp_path / "worker", segment)


def test_killing_the_worker_mid_conversion_falls_back_and_the_logs_are_complete(
        large, tmp_path, caplog):
    first, second = large.sealed
    # The first segment's logs are there already: the worker only checks them.
    for kind in LOG_KINDS:
        target = log_path(tmp_path, kind, first.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log_path(large.path, kind, first.path), target)
    killed = []

    def resolve(uid):
        # The second segment has no install record: its first decision asks for the config,
        # halfway into reading the segment.
        if not killed:
            killed.append(writer.worker.pid)
            os.kill(killed[0], signal.SIGKILL)
        return large.resolve(uid)

    writer = SegmentLogWriter(tmp_path, resolve, offload_records=0)
    try:
        assert writer.write(first) == []
        caplog.set_level(logging.WARNING, logger="syntra.store")
        assert len(writer.write(second)) == 3
        assert killed and killed[0] is not None
        [warning] = [r.getMessage() for r in caplog.records if r.name == "syntra.store"]
        assert f"Arrow log worker failed on WAL segment {second.path}" in warning
        assert f"(pid {killed[0]}) ended with exit code -9" in warning
        assert "converting it in this process" in warning
        assert log_bytes(tmp_path, second) == log_bytes(large.path, second)
        assert writer.handled_through == second.last_sequence
        assert leftovers(tmp_path) == []
        # The next large segment gets a new worker.
        assert writer.write(first) == []
        assert writer.worker.pid not in (None, killed[0])
    finally:
        writer.close()


def test_errors_come_back_from_the_worker_typed_and_worded_as_in_process(small, tmp_path):
    segment = small.sealed[2]  # its capsule was installed in the first segment

    def unknown(uid):
        raise KeyError(uid)

    def failure(writer):
        with pytest.raises(Exception) as caught:
            writer.write(segment)
        return type(caught.value), str(caught.value)

    in_process = SegmentLogWriter(tmp_path, unknown, offload_records=None)
    offloaded = SegmentLogWriter(tmp_path, unknown, offload_records=0)
    try:
        expected = failure(in_process)
        assert expected[0] is StorageCorrupt and "capsule uid 1 is unknown" in expected[1]
        assert failure(offloaded) == expected
        assert offloaded.handled_through == 0 and not (tmp_path / "logs").exists()
        worker = offloaded.worker.pid
        assert worker is not None  # a failed job leaves the worker running

        # No directory can be made under a file: the files cannot be written.
        blocked = tmp_path / "blocked"
        blocked.mkdir()
        (blocked / "logs").write_bytes(b"not a directory")
        in_process = SegmentLogWriter(blocked, small.resolve, offload_records=None)
        offloaded.store_path = blocked  # the same worker, another store
        offloaded._resolve = small.resolve
        expected = failure(in_process)
        assert expected[0] is LogWriteFailed and "cannot write Arrow log" in expected[1]
        assert failure(offloaded) == expected
        assert offloaded.worker.pid == worker and offloaded.worker.jobs == 2
    finally:
        offloaded.close()


def test_what_the_worker_logs_is_logged_in_the_parent(small, tmp_path, caplog):
    segment = small.sealed[1]
    for kind in LOG_KINDS:
        target = log_path(tmp_path, kind, segment.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log_path(small.path, kind, segment.path), target)
    damaged = log_path(tmp_path, "feedback", segment.path)
    damaged.write_bytes(b"garbage")
    caplog.set_level(logging.WARNING, logger="syntra.store")
    writer = SegmentLogWriter(tmp_path, small.resolve, offload_records=0)
    try:
        assert writer.write(segment) == [damaged]
    finally:
        writer.close()
    assert writer.worker.jobs == 1
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("syntra.store", logging.WARNING, (f"Arrow log {damaged} cannot be read: File is too"
                                           " small: 7; rewriting it from the WAL"))]
    assert log_bytes(tmp_path, segment) == log_bytes(small.path, segment)


def test_after_close_segments_are_converted_in_process(small, tmp_path, caplog):
    writer = SegmentLogWriter(tmp_path, small.resolve, offload_records=0)
    assert len(writer.write(small.sealed[0])) == 3
    pid = writer.worker.pid
    assert pid is not None
    writer.close()
    writer.close()  # idempotent
    assert writer.worker.closed and writer.worker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone, and reaped
    caplog.set_level(logging.WARNING, logger="syntra.store")
    assert len(writer.write(small.sealed[1])) == 3
    assert writer.worker.jobs == 1 and not caplog.records
    assert log_bytes(tmp_path, small.sealed[1]) == log_bytes(small.path, small.sealed[1])
    assert writer.handled_through == small.sealed[1].last_sequence
    with pytest.raises(WorkerDied, match="shut down"):
        writer.worker.run((tmp_path, small.sealed[1]), small.resolve)


def test_a_worker_that_died_idle_is_replaced_with_a_warning(small, tmp_path, caplog):
    writer = SegmentLogWriter(tmp_path, small.resolve, offload_records=0)
    try:
        assert len(writer.write(small.sealed[0])) == 3
        first = writer.worker.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while writer.worker.pid is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        caplog.set_level(logging.WARNING, logger="syntra.store")
        assert len(writer.write(small.sealed[1])) == 3
        assert writer.worker.pid not in (None, first) and writer.worker.jobs == 2
        assert [r.getMessage() for r in caplog.records] == [
            f"the syntra-log-worker process (pid {first}) ended with exit code -9: it died"
            " while idle"]
        assert log_bytes(tmp_path, small.sealed[1]) == log_bytes(small.path, small.sealed[1])
    finally:
        writer.close()


def test_small_segments_stay_in_process_by_default(small, tmp_path):
    writer = SegmentLogWriter(tmp_path, small.resolve)
    assert len(writer.write(small.sealed[0])) == 3
    assert writer.worker.jobs == 0 and writer.worker.pid is None


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_offload_records_must_be_a_count_or_none(tmp_path, bad):
    with pytest.raises(InvalidConfig, match=f"offload_records must be None or an integer >= 0,"
                       f" got {bad!r}"):
        SegmentLogWriter(tmp_path, {}.__getitem__, offload_records=bad)


def test_a_worker_whose_child_cannot_start_raises_worker_died(tmp_path):
    def local_job(*, resolve):  # a closure: it cannot be sent to another process
        return None

    worker = LogWorker(local_job)
    try:
        with pytest.raises(WorkerDied, match="cannot start it"):
            worker.run((), {}.__getitem__)
        assert worker.pid is None and worker.jobs == 0
    finally:
        worker.close()
