"""The Arrow IPC logs: one file per kind per sealed segment, the live tail, readers, export."""

import json
import random
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest

from syntra import Engine, cli
from syntra.cli import main
from syntra.errors import StorageCorrupt
from syntra.store import logs
from syntra.store.logs import (
    AUDIT_SCHEMA,
    DECISIONS_SCHEMA,
    FEEDBACK_SCHEMA,
    LOG_KINDS,
    LogWriteFailed,
    SegmentLogWriter,
    StoreConfigs,
    log_path,
    read_log,
    read_log_file,
)
from syntra_core.wal import Wal, scan

ROUTER = "tenants/acme/jobs/llm/capsules/router"
RETRY = "tenants/acme/jobs/retry/capsules/policy"
ROUNDS = 300
DECISION, FEEDBACK = 10, 11

# The column types the logs promise to offline readers, spelled out independently of
# the module's constants.
EXPECTED_TYPES = {
    "decisions": [
        ("wal_sequence", pa.uint64()), ("decision_id", pa.string()),
        ("ts_ns", pa.timestamp("ns", tz="UTC")), ("tenant", pa.string()), ("job", pa.string()),
        ("capsule", pa.string()), ("context_key", pa.string()),
        ("features", pa.list_(pa.float64())), ("option_index", pa.uint16()),
        ("option", pa.string()), ("propensity_ppb", pa.uint32()),
        ("candidate_rule", pa.string()), ("refused", pa.bool_()), ("program_result", pa.string()),
        ("digest", pa.binary(32)),
    ],
    "feedback": [
        ("wal_sequence", pa.uint64()), ("decision_id", pa.string()),
        ("ts_ns", pa.timestamp("ns", tz="UTC")), ("tenant", pa.string()), ("job", pa.string()),
        ("capsule", pa.string()), ("reward_micros", pa.int64()), ("reward", pa.float64()),
        ("cost_microcents", pa.int64()), ("digest", pa.binary(32)),
    ],
    "audit": [
        ("wal_sequence", pa.uint64()), ("ts_ns", pa.timestamp("ns", tz="UTC")),
        ("kind", pa.string()), ("tenant", pa.string()), ("job", pa.string()),
        ("capsule", pa.string()), ("details", pa.string()), ("digest", pa.binary(32)),
    ],
}
SCHEMAS = {"decisions": DECISIONS_SCHEMA, "feedback": FEEDBACK_SCHEMA, "audit": AUDIT_SCHEMA}


def open_engine(path, **options):
    """Engine.open with the Arrow log writer attached.

    TODO: once Engine.open attaches the writer itself, this is plain Engine.open.
    """
    engine = Engine.open(path, segment_bytes=4096, commit_window_us=50, **options)
    store = engine._store
    writers = [getattr(h, "__self__", None) for h in store.seal_handlers]
    if not any(isinstance(w, SegmentLogWriter) for w in writers):
        writer = SegmentLogWriter(path, engine.capsule_config)
        store.seal_handlers.append(writer.write)
        writer.catch_up(store.wal)
    return engine


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with many sealed segments and a live tail, and what the engine returned."""
    path = tmp_path_factory.mktemp("logs") / "db"
    world = random.Random(3)
    decisions, rewards = {}, {}
    engine = open_engine(path)
    try:
        router = engine.install(ROUTER, options=["cheap", "balanced", "accurate"])
        retry = engine.install(RETRY, options=["none", "fixed", "backoff"], algorithm="ucb1",
                               reward={"type": "continuous", "range": [0, 10]})
        for i in range(ROUNDS):
            cap = router if i % 3 else retry
            d = cap.decide(f"ctx{i % 4}")
            decisions[d.decision_id] = (cap.name, d)
            if i % 5:  # leave some pending
                reward = float(world.random() < 0.5) if cap is router else world.uniform(0, 10)
                cap.feedback(d.decision_id, reward)
                rewards[d.decision_id] = reward
        engine.uninstall(RETRY)
        tail = [router.decide("tail") for _ in range(3)]
        for d in tail:
            decisions[d.decision_id] = (ROUTER, d)
        # The last record is always in the live segment, which no seal has written out.
        live_first = engine._store.wal.segments[-1].first_sequence
    finally:
        engine.close()  # waits for every seal handler
    records = list(scan(path / "wal"))
    sealed = sorted({r.segment for r in records if r.sequence < live_first})
    return SimpleNamespace(path=path, decisions=decisions, rewards=rewards, tail=tail,
                           records=records, sealed=sealed, live_first=live_first)


def read_file(path):
    with pa.memory_map(str(path)) as source:
        return pyarrow.ipc.open_file(source).read_all()


def sealed_table(store, kind):
    return pa.concat_tables([read_file(log_path(store.path, kind, seg)) for seg in store.sealed])


def test_every_sealed_segment_has_three_files_with_the_exact_schemas(store):
    assert len(store.sealed) >= 5
    for segment in store.sealed:
        for kind in LOG_KINDS:
            path = log_path(store.path, kind, segment)
            assert path.parent == store.path / "logs" / kind
            assert path.name == Path(segment).stem + ".arrow"
            schema = pyarrow.ipc.open_file(pa.memory_map(str(path))).schema
            assert [(f.name, f.type) for f in schema] == EXPECTED_TYPES[kind]
            assert schema.equals(SCHEMAS[kind], check_metadata=True)
    # The live segment has none: it is read from the WAL.
    live = Path(store.records[-1].segment)
    assert not any(log_path(store.path, kind, live).exists() for kind in LOG_KINDS)


def test_row_counts_match_the_records_of_each_segment(store):
    for segment in store.sealed:
        in_wal = Counter(r.rtype for r in store.records if r.segment == segment)
        assert read_file(log_path(store.path, "decisions", segment)).num_rows == in_wal[DECISION]
        assert read_file(log_path(store.path, "feedback", segment)).num_rows == in_wal[FEEDBACK]
        audit = read_file(log_path(store.path, "audit", segment)).num_rows
        assert audit == sum(in_wal.values()) - in_wal[DECISION] - in_wal[FEEDBACK]


def test_decision_rows_match_what_the_engine_returned(store):
    table = read_log(store.path, "decisions").drop_columns(["ts_ns"])
    rows = table.to_pylist()
    assert [r["decision_id"] for r in rows] == list(store.decisions)  # every one, in order
    digests = {r.sequence: r.digest for r in store.records}
    for row in rows:
        name, d = store.decisions[row["decision_id"]]
        tenant, job, capsule = name.split("/")[1::2]
        assert (row["tenant"], row["job"], row["capsule"]) == (tenant, job, capsule)
        assert (row["option"], row["option_index"]) == (d.option, d.option_index)
        assert row["propensity_ppb"] == round(d.propensity * 1e9)
        assert row["context_key"] == d.context_key
        assert row["candidate_rule"] == ("ucb1" if name == RETRY else "thompson")
        assert row["features"] is None and row["refused"] is False
        assert row["digest"] == digests[row["wal_sequence"]]


def test_feedback_rows_carry_the_exact_reward_and_micro_units(store):
    table = read_log(store.path, "feedback").drop_columns(["ts_ns"])
    rows = table.to_pylist()
    assert {r["decision_id"]: r["reward"] for r in rows} == store.rewards
    assert len(rows) == len(store.rewards)
    for row in rows:
        assert row["reward_micros"] == round(store.rewards[row["decision_id"]] * 1_000_000)
    assert any(r["reward_micros"] % 1_000_000 for r in rows)  # continuous rewards are in there


def test_timestamps_are_utc_nanoseconds_in_logging_order(store):
    stamps = read_log(store.path, "decisions").column("ts_ns").cast(pa.int64()).to_pylist()
    assert stamps == sorted(stamps)
    assert stamps[0] > 1_600_000_000 * 10**9  # epoch nanoseconds, not seconds or micros


def test_the_audit_log_holds_engine_creation_installs_and_uninstalls(store):
    audit = read_log(store.path, "audit")
    kinds = audit.column("kind").to_pylist()
    assert kinds == ["engine_created", "capsule_installed", "capsule_installed",
                     "capsule_uninstalled"]
    details = [json.loads(text) for text in audit.column("details").to_pylist()]
    assert set(details[0]) >= {"seed", "nonce"}
    assert details[1]["name"] == ROUTER
    assert details[1]["options"] == ["cheap", "balanced", "accurate"]
    assert details[2]["algorithm"] == "ucb1" and details[3]["name"] == RETRY
    assert audit.column("capsule").to_pylist() == [None, "router", "policy", "policy"]
    # Engine creation carries no time; installs and uninstalls do.
    assert audit.column("ts_ns").null_count == 1 and audit.column("ts_ns")[0].as_py() is None


def test_read_log_includes_the_live_tail(store):
    decisions = read_log(store.path, "decisions")
    live = decisions.filter(pa.compute.greater_equal(decisions["wal_sequence"], store.live_first))
    in_live_segment = [r for r in store.records if r.sequence >= store.live_first]
    assert live.num_rows == sum(r.rtype == DECISION for r in in_live_segment) > 0
    assert live.column("decision_id").to_pylist()[-1] == store.tail[-1].decision_id
    # No file holds them: read_log converted them from the WAL.
    filed = set(sealed_table(store, "decisions").column("decision_id").to_pylist())
    assert not filed & set(live.column("decision_id").to_pylist())
    assert len(filed) + live.num_rows == len(store.decisions)


def test_read_log_sees_a_running_engines_latest_decisions(tmp_path):
    engine = open_engine(tmp_path / "db")
    try:
        cap = engine.install(ROUTER, options=["a", "b"])
        made = [cap.decide("x").decision_id for _ in range(80)]  # seals a few segments
        assert read_log(tmp_path / "db", "decisions").column("decision_id").to_pylist() == made
    finally:
        engine.close()


def test_logs_outlive_the_wal_segments_retention_removes(store, tmp_path):
    path = tmp_path / "db"
    shutil.copytree(store.path, path)
    before = read_log(path, "decisions")
    for segment in store.sealed:
        Path(segment.replace(str(store.path), str(path))).unlink()
    assert read_log(path, "decisions").equals(before)
    # Without the audit logs, the live tail's capsules are found in the checkpoints.
    shutil.rmtree(path / "logs" / "audit")
    assert read_log(path, "decisions").equals(before)
    shutil.rmtree(path / "checkpoints")
    with pytest.raises(StorageCorrupt, match="capsule uid 1 is unknown"):
        read_log(path, "decisions")


def test_since_keeps_only_later_sequences(store):
    since = store.live_first - 100
    table = read_log(store.path, "feedback", since=since)
    expected = sum(1 for r in store.records if r.rtype == FEEDBACK and r.sequence > since)
    assert table.num_rows == expected > 0
    assert min(table.column("wal_sequence").to_pylist()) > since


def test_polars_reads_a_log_file_directly(store):
    path = log_path(store.path, "decisions", store.sealed[1])
    frame = pl.read_ipc(path)
    assert frame.height == read_file(path).num_rows > 0
    assert frame.columns == DECISIONS_SCHEMA.names
    assert frame.schema["wal_sequence"] == pl.UInt64
    assert frame.schema["ts_ns"] == pl.Datetime("ns", "UTC")
    assert frame["decision_id"].to_list() == read_file(path).column("decision_id").to_pylist()


def test_duckdb_queries_the_parquet_export_and_a_pyarrow_table(store, tmp_path):
    out = tmp_path / "decisions.parquet"
    assert main(["logs", "export", str(store.path), "--out", str(out)]) == 0
    by_option = Counter(d.option for _, d in store.decisions.values())

    query = f"SELECT option, count(*) FROM '{out}' GROUP BY option"
    assert dict(duckdb.sql(query).fetchall()) == by_option

    decisions = read_log(store.path, "decisions")  # noqa: F841 (DuckDB finds it by name)
    from_table = duckdb.sql("SELECT option, count(*) FROM decisions GROUP BY option").fetchall()
    assert dict(from_table) == by_option
    [(ppb,)] = duckdb.sql(f"SELECT sum(propensity_ppb) FROM '{out}'").fetchall()
    assert ppb == sum(round(d.propensity * 1e9) for _, d in store.decisions.values())


def copy_store(store, target):
    """A private copy of the module's store, and its sealed segments' paths in the copy."""
    shutil.copytree(store.path, target)
    return [Path(segment.replace(str(store.path), str(target))) for segment in store.sealed]


def span(store, number):
    """(first, last) WAL sequence of sealed segment ``number`` (counted from 0)."""
    sequences = [r.sequence for r in store.records if r.segment == store.sealed[number]]
    return sequences[0], sequences[-1]


def catch_up(path, writer=None):
    with Wal.open(path / "wal", durability="none") as wal:
        writer = writer or SegmentLogWriter(path, StoreConfigs(path))
        return writer.catch_up(wal), writer, list(wal.segments)


def test_catch_up_rewrites_a_deleted_file_identically_and_returns_the_watermark(store, tmp_path):
    path = tmp_path / "db"
    sealed = copy_store(store, path)
    victim = log_path(path, "feedback", sealed[2])
    original = victim.read_bytes()
    siblings = {kind: log_path(path, kind, sealed[2]) for kind in ("decisions", "audit")}
    inodes = {kind: sibling.stat().st_ino for kind, sibling in siblings.items()}
    victim.unlink()
    through, writer, _ = catch_up(path)
    assert through == writer.handled_through == store.live_first - 1  # every sealed segment
    assert victim.read_bytes() == original
    # A valid file is kept, not rewritten: neither its siblings nor, next time, itself.
    assert {kind: sibling.stat().st_ino for kind, sibling in siblings.items()} == inodes
    inode = victim.stat().st_ino
    assert catch_up(path)[0] == store.live_first - 1
    assert victim.stat().st_ino == inode


def test_catch_up_rewrites_damaged_files_and_read_log_never_trusts_them(store, tmp_path,
                                                                       capsys):
    path = tmp_path / "db"
    sealed = copy_store(store, path)
    originals = {(kind, n): log_path(path, kind, sealed[n]).read_bytes()
                 for kind in LOG_KINDS for n in range(4)}
    # Read from the untouched store: overwriting a memory-mapped file in place pulls the
    # pages from under any table still reading it.
    before = {kind: read_log(store.path, kind) for kind in LOG_KINDS}
    log_path(path, "decisions", sealed[0]).write_bytes(b"garbage")
    # Cut short: the footer is gone.
    log_path(path, "feedback", sealed[0]).write_bytes(originals["feedback", 0][:200])
    # The audit file holds the installs: read_log must then find the configs elsewhere.
    log_path(path, "audit", sealed[0]).write_bytes(originals["decisions", 0])  # wrong schema
    # Valid files of the right kind, but not this segment's rows.
    log_path(path, "decisions", sealed[1]).write_bytes(originals["decisions", 2])
    empty = pa.BufferOutputStream()
    with pyarrow.ipc.new_file(empty, FEEDBACK_SCHEMA) as writer:
        writer.write_table(FEEDBACK_SCHEMA.empty_table())
    log_path(path, "feedback", sealed[3]).write_bytes(empty.getvalue().to_pybytes())

    for kind in LOG_KINDS:  # read from the WAL instead
        assert read_log(path, kind).equals(before[kind])
    out = tmp_path / "decisions.arrow"
    assert main(["logs", "export", str(path), "--out", str(out)]) == 0
    assert read_file(out).equals(before["decisions"])
    garbage = log_path(path, "decisions", sealed[0])
    assert (f"syntra logs export: warning: Arrow log {garbage} cannot be read: File is too"
            " small: 7; reading its segment from the WAL instead") in capsys.readouterr().err
    assert catch_up(path)[0] == store.live_first - 1
    for (kind, n), data in originals.items():
        assert log_path(path, kind, sealed[n]).read_bytes() == data, (kind, n)


def test_read_log_file_checks_what_a_file_holds(store, tmp_path):
    path = log_path(store.path, "decisions", store.sealed[1])
    first, last = span(store, 1)
    table = read_log_file(path, "decisions", within=(first, last), after=first - 1)
    assert table.num_rows > 1
    low, high = table["wal_sequence"][0].as_py(), table["wal_sequence"][-1].as_py()
    with pytest.raises(StorageCorrupt, match=f"holds rows for WAL sequences {low}-{high},"
                       f" outside its segment's WAL sequences {high}-{last + 5}"):
        read_log_file(path, "decisions", within=(high, last + 5))
    with pytest.raises(StorageCorrupt, match=f"outside its segment's WAL sequences after {low}"):
        read_log_file(path, "decisions", after=low)
    with pytest.raises(StorageCorrupt, match=f"Arrow log {path} does not have the schema of"
                       " the feedback log"):
        read_log_file(path, "feedback")
    backwards = tmp_path / "backwards.arrow"
    with pyarrow.ipc.new_file(str(backwards), DECISIONS_SCHEMA) as writer:
        writer.write_table(table.take(list(range(table.num_rows))[::-1]))
    with pytest.raises(StorageCorrupt, match="wal_sequence column is not strictly increasing"):
        read_log_file(backwards, "decisions")
    garbage = tmp_path / "garbage.arrow"
    garbage.write_bytes(b"garbage")
    with pytest.raises(StorageCorrupt, match=f"Arrow log {garbage} cannot be read"):
        read_log_file(garbage, "decisions")


def failing_for(segment, real):
    def write_atomically(path, write, **options):
        if Path(path).stem == segment.stem:
            raise PermissionError(13, "Permission denied", str(path))
        real(path, write, **options)
    return write_atomically


def test_a_segment_whose_logs_cannot_be_written_holds_the_watermark_back(store, tmp_path,
                                                                         monkeypatch):
    path = tmp_path / "db"
    sealed = copy_store(store, path)
    for n in (2, 4):
        for kind in LOG_KINDS:
            log_path(path, kind, sealed[n]).unlink()
    monkeypatch.setattr(logs.writer, "write_atomically",
                        failing_for(sealed[2], logs.writer.write_atomically))

    through, writer, segments = catch_up(path)

    assert through == writer.handled_through == span(store, 1)[1]  # just below segment 2
    assert not log_path(path, "audit", sealed[2]).exists()
    assert log_path(path, "audit", sealed[4]).exists()  # later segments are still written
    info = next(s for s in segments if Path(s.path) == sealed[2])
    with pytest.raises(LogWriteFailed, match=f"cannot write Arrow log .*{sealed[2].stem}"):
        writer.write(info)
    assert writer.handled_through == span(store, 1)[1]
    # Once the segment is written (a later seal or catch-up), the watermark passes it and
    # every segment already done behind it.
    monkeypatch.undo()
    assert len(writer.write(info)) == 3
    assert writer.handled_through == store.live_first - 1


def test_the_watermark_stops_at_the_first_segment_when_it_fails(store, tmp_path, monkeypatch):
    path = tmp_path / "db"
    sealed = copy_store(store, path)
    log_path(path, "decisions", sealed[0]).write_bytes(b"garbage")
    monkeypatch.setattr(logs.writer, "write_atomically",
                        failing_for(sealed[0], logs.writer.write_atomically))
    assert catch_up(path)[0] == 0  # the log starts at 1: nothing is handled


def test_a_removed_segment_without_its_log_is_a_named_gap(store, tmp_path, capsys):
    path = tmp_path / "db"
    sealed = copy_store(store, path)
    before = read_log(store.path, "decisions")
    for segment in sealed[:3]:  # as retention would
        segment.unlink()
    log_path(path, "decisions", sealed[1]).unlink()
    first, last = span(store, 1)
    kept = before.filter(pa.compute.invert(pa.compute.is_in(
        before["wal_sequence"], pa.array(range(first, last + 1), pa.uint64()))))
    assert kept.num_rows < before.num_rows

    with pytest.raises(StorageCorrupt, match=f"WAL sequences {first}-{last} .segment 2, removed"
                       r" from the WAL: logs/decisions/wal-0000000000000002.arrow is missing"):
        read_log(path, "decisions")
    assert read_log(path, "decisions", allow_gaps=True).equals(kept)
    assert read_log(path, "decisions", since=last).equals(  # the gap is before: no loss
        before.filter(pa.compute.greater(before["wal_sequence"], last)))
    assert read_log(path, "feedback").num_rows == len(store.rewards)  # its files are all there

    out = tmp_path / "decisions.arrow"
    assert main(["logs", "export", str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"error: the decisions log is missing rows: WAL sequences {first}-{last}" in err
    assert "--allow-gaps" in err and not out.exists()
    assert main(["logs", "export", str(path), "--out", str(out), "--allow-gaps"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(f"syntra logs export: warning: the decisions log is missing"
                                   f" rows, left out: WAL sequences {first}-{last}")
    assert len(captured.err.splitlines()) == 1
    assert read_file(out).equals(kept)


def test_a_damaged_log_of_a_removed_segment_is_named_without_a_traceback(store, tmp_path,
                                                                         capsys):
    path = tmp_path / "db"
    sealed = copy_store(store, path)
    sealed[0].unlink()
    victim = log_path(path, "feedback", sealed[0])
    victim.write_bytes(b"garbage")
    first, last = span(store, 0)
    with pytest.raises(StorageCorrupt, match=f"WAL sequences {first}-{last} .segment 1, removed"
                       f" from the WAL: Arrow log {victim} cannot be read"):
        read_log(path, "feedback")
    out = tmp_path / "feedback.parquet"
    assert main(["logs", "export", str(path), "--kind", "feedback", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"Arrow log {victim} cannot be read" in err and "Traceback" not in err


def test_writer_refuses_the_live_segment(store):
    with Wal.open(store.path / "wal", durability="none") as wal:
        live = wal.segments[-1]
    with pytest.raises(ValueError, match="live"):
        SegmentLogWriter(store.path, StoreConfigs(store.path)).write(live)


# --- syntra logs export ----------------------------------------------------------------


def test_export_arrow_equals_read_log(store, tmp_path, capsys):
    out = tmp_path / "feedback.arrow"
    assert main(["logs", "export", str(store.path), "--kind", "feedback", "--out", str(out)]) == 0
    exported = read_file(out)
    assert exported.equals(read_log(store.path, "feedback"))
    assert f"wrote {exported.num_rows:,} feedback rows" in capsys.readouterr().out


def test_export_parquet_with_since(store, tmp_path):
    out = tmp_path / "audit.parquet"
    since = 3  # after the engine record and both installs
    assert main(["logs", "export", str(store.path), "--kind", "audit", "--since", str(since),
                 "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.column("kind").to_pylist() == ["capsule_uninstalled"]
    assert table.schema.field("digest").type == pa.binary(32)


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/x.csv"], "must end in .arrow or .parquet"),
    (["--out", "{tmp}/x.arrow", "--since", "-1"], "not a WAL sequence"),
    (["--out", "{tmp}/x.arrow", "--since", "ten"], "not a WAL sequence"),
    (["--out", "{tmp}/x.arrow", "--kind", "bogus"], "invalid choice"),
])
def test_export_usage_errors_exit_2(store, tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["logs", "export", str(store.path), *args]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_export_of_a_missing_store_exits_2(tmp_path, capsys):
    assert main(["logs", "export", str(tmp_path / "nope"), "--out", str(tmp_path / "x.arrow")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["logs", "export", str(tmp_path), "--out", str(tmp_path / "x.arrow")]) == 2
    assert "not a Syntra store" in capsys.readouterr().err


def test_the_cli_offers_every_log_kind():
    assert cli.LOG_KINDS == LOG_KINDS
