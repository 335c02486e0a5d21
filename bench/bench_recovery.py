"""Recovery time: reopen a store of 1M WAL records whose latest checkpoint is at 90%.

The store is built through the durable engine by 16 threads (with durability="none", so
building it is quick); a checkpoint is taken once 90% of the records exist, the rest are
written, and the engine closes without a final checkpoint. Each benchmark round then
reopens it: the recovery scan verifies the whole hash chain, the checkpoint is loaded, and
the last 10% is replayed (every decision re-derived and checked against the log).

With --benchmark-disable (as CI runs it) the store is 20k records.
"""

import threading

from syntra import Engine

FULL_RECORDS = 1_000_000
SMOKE_RECORDS = 20_000
WRITERS = 16
NAME = "tenants/bench/jobs/recovery/capsules/router"


def _write(engine, records):
    """About ``records`` WAL records: decide + feedback pairs from WRITERS threads."""
    cap = engine.capsule(NAME)
    pairs = records // 2 // WRITERS

    def writer(index):
        for i in range(pairs):
            d = cap.decide(f"ctx{(index + i) % 8}")
            cap.feedback(d.decision_id, float((i + d.option_index) % 3 == 0))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def build_store(path, records):
    engine = Engine.open(path, durability="none", checkpoint_every=10**9, segment_bytes=64 << 20)
    engine.install(NAME, options=["cheap", "balanced", "accurate", "premium"])
    _write(engine, records * 9 // 10)
    engine.checkpoint()
    checkpoint_at = engine._store.last_checkpoint_sequence
    _write(engine, records - records * 9 // 10)
    total = engine._store.wal.durable_sequence
    digest = engine.state_digest()
    engine.close(checkpoint=False)
    return checkpoint_at, total, digest


def test_recovery_time(benchmark, record_unit_time, tmp_path):
    records = SMOKE_RECORDS if benchmark.disabled else FULL_RECORDS
    path = tmp_path / "store"
    checkpoint_at, total, digest = build_store(path, records)

    def reopen():
        engine = Engine.open(path)
        try:
            return engine.state_digest()
        finally:
            engine.close(checkpoint=False)

    assert benchmark.pedantic(reopen, rounds=3, iterations=1) == digest
    benchmark.extra_info.update(
        records=total, checkpoint_at=checkpoint_at, replayed=total - checkpoint_at)
    record_unit_time("recovery_per_record", total)
