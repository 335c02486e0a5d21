"""Write-ahead log throughput, acknowledgement latency and hashing cost.

Sixteen writer threads append ~100-byte records three ways in one run:

* ``wal_group_commit``: durability "fsync" with the default window. One fdatasync per batch.
* ``wal_fsync_per_record``: ``max_batch_records=1, commit_window_us=0``, one fdatasync per
  record: what a log without group commit pays.
* ``wal_no_sync``: durability "none", the same machinery without the sync: the ceiling.

Each reports ns per append (``record_unit_time``). ``extra_info`` holds appends/s, the
batch size and the p50/p99 acknowledgement latency seen by the writers. The run ends with
the ratios group/per-record (target >= 10x) and group/no-sync (target >= 0.5x) (see
``bench/conftest.py``). ``test_ack_latency`` measures what durability adds to one
acknowledgement, for a lone writer and for 16. ``test_encode_and_hash`` measures the
flusher's per-record cost, with the BLAKE3 chain link on its own.

    .venv/bin/python -m pytest bench/bench_wal.py -q --benchmark-json=wal.json
"""

import threading
import time

import pytest

from syntra_core.wal import Wal, _hash_cost_ns, encode_batch

WRITERS = 16
PAYLOAD = bytes(range(100))
ZERO = bytes(32)

CONFIGS = {
    "wal_group_commit": (dict(durability="fsync"), 300),
    "wal_fsync_per_record": (dict(durability="fsync", max_batch_records=1,
                                  commit_window_us=0), 20),
    "wal_no_sync": (dict(durability="none"), 1500),
}


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_writers(wal, writers, per_writer, latencies_ns):
    """Start ``writers`` threads together; each appends ``per_writer`` records."""
    barrier = threading.Barrier(writers + 1)

    def writer():
        mine = []
        barrier.wait()
        for _ in range(per_writer):
            started = time.perf_counter_ns()
            wal.append(1, PAYLOAD)
            mine.append(time.perf_counter_ns() - started)
        latencies_ns.extend(mine)

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join()


def latency_info(prefix, latencies_ns):
    return {
        f"{prefix}_p50_us": round(percentile(latencies_ns, 0.50) / 1e3, 1),
        f"{prefix}_p99_us": round(percentile(latencies_ns, 0.99) / 1e3, 1),
    }


@pytest.mark.parametrize("label", list(CONFIGS))
def test_sixteen_writers(benchmark, record_unit_time, tmp_path, label):
    options, per_writer = CONFIGS[label]
    latencies_ns = []
    with Wal.open(tmp_path, **options) as wal:
        run_writers(wal, WRITERS, 20, [])  # warm up: threads, file, page cache
        before = wal.stats
        benchmark.pedantic(run_writers, args=(wal, WRITERS, per_writer, latencies_ns),
                           rounds=5, iterations=1)
        stats = wal.stats
    appends = WRITERS * per_writer
    per_append = record_unit_time(label, appends)
    batches = stats.batches - before.batches
    benchmark.extra_info.update(latency_info("ack", latencies_ns))
    benchmark.extra_info["records_per_batch"] = round((stats.records - before.records) / batches, 1)
    benchmark.extra_info["records_per_sync"] = (
        round((stats.records - before.records) / (stats.syncs - before.syncs), 1)
        if stats.syncs > before.syncs else None)
    if per_append is not None:
        benchmark.extra_info["appends_per_second"] = round(1 / per_append)


def test_ack_latency(benchmark, tmp_path):
    """p50/p99 of append() with fsync and with none, for 1 and 16 writers."""
    info = {}

    def measure():
        for durability in ("fsync", "none"):
            for writers, per_writer in ((1, 300), (WRITERS, 60)):
                latencies_ns = []
                directory = tmp_path / f"{durability}-{writers}-{len(info)}"
                with Wal.open(directory, durability=durability) as wal:
                    run_writers(wal, writers, 10, [])
                    run_writers(wal, writers, per_writer, latencies_ns)
                info.update(latency_info(f"{durability}_{writers}w", latencies_ns))
        for writers in (1, WRITERS):
            info[f"fsync_adds_p50_us_{writers}w"] = round(
                info[f"fsync_{writers}w_p50_us"] - info[f"none_{writers}w_p50_us"], 1)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    assert info["fsync_1w_p50_us"] > 0


def test_encode_and_hash(benchmark, record_unit_time):
    """Per-record cost of framing 100-byte records as the flusher does (plus the checks
    submit makes); the chain link (BLAKE3) alone is in extra_info."""
    records = [(1, PAYLOAD)] * 10_000
    frames, head = benchmark(encode_batch, ZERO, 1, records)
    assert len(frames) == 10_000 * (52 + len(PAYLOAD)) and len(head) == 32
    record_unit_time("wal_encode_record", len(records))
    benchmark.extra_info["hash_ns_per_record"] = round(_hash_cost_ns(len(PAYLOAD), 20_000), 1)
    benchmark.extra_info["hash_ns_per_4k_record"] = round(_hash_cost_ns(4096, 5_000), 1)
