"""``syntra verify``: a healthy store passes; every kind of damage is named exactly."""

import random
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.ipc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from syntra import Engine
from syntra.cli import main
from syntra.store import checkpoint as ckpt
from syntra.store.records import DecisionRecord, RecordType
from syntra.verify import verify_store
from syntra_core.wal import Wal, scan
from syntra_core.wal_format import ChainHasher

ROUTER = "tenants/acme/jobs/llm/capsules/router"
RETRY = "tenants/acme/jobs/retry/capsules/policy"
STORE = {"segment_bytes": 4096, "commit_window_us": 50}


def build(path, rounds=200, **options):
    """A store of two capsules with several segments and two checkpoints; its counts."""
    world = random.Random(1)
    decisions = feedback = 0
    with Engine.open(path, **STORE, **options) as engine:
        router = engine.install(ROUTER, options=["a", "b", "c"])
        retry = engine.install(RETRY, options=["x", "y", "z"], algorithm="ucb1")
        for i in range(rounds):
            cap = router if i % 2 else retry
            d = cap.decide(f"ctx{i % 3}")
            decisions += 1
            if i % 4:
                cap.feedback(d.decision_id, float(world.random() < 0.5))
                feedback += 1
            if i == rounds // 2:
                engine.checkpoint()
    return SimpleNamespace(path=path, decisions=decisions, feedback=feedback)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    return build(tmp_path_factory.mktemp("verify") / "db")


@pytest.fixture
def copy(healthy, tmp_path):
    """A private copy of the healthy store, to damage."""
    target = tmp_path / "db"
    shutil.copytree(healthy.path, target)
    return target


def run(capsys, *args):
    code = main(["verify", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_healthy_store_is_ok_with_exact_counts(healthy, capsys):
    records = list(scan(healthy.path / "wal"))
    segments = len(list((healthy.path / "wal").glob("wal-*.seg")))
    checkpoints = len(list((healthy.path / "checkpoints").glob("*.ckpt")))
    assert segments >= 5 and checkpoints == 2

    code, out, err = run(capsys, healthy.path)

    assert code == 0, out
    assert out.splitlines()[0] == (
        f"OK: {segments} segments, {len(records)} records, {healthy.decisions} decisions, "
        f"{healthy.feedback} feedback, {checkpoints} checkpoints verified"
    )
    assert f"replay: {len(records)} records from the start of the log" in out
    assert err == ""


def test_a_flipped_bit_names_the_record_and_both_digests(copy, capsys):
    records = list(scan(copy / "wal"))
    # A decision in a sealed segment, in the middle of the log.
    index = next(i for i, r in enumerate(records)
                 if r.rtype == RecordType.DECISION and i > len(records) // 2)
    victim, before = records[index], records[index - 1]
    data = bytearray(Path(victim.segment).read_bytes())
    data[victim.offset + 20 + 5] ^= 0x10  # a payload byte: the frame still parses
    Path(victim.segment).write_bytes(data)
    damaged = bytes(data[victim.offset + 20:victim.offset + 20 + len(victim.payload)])
    expected = ChainHasher().digest(before.digest, victim.rtype, victim.sequence, damaged)

    code, out, _ = run(capsys, copy)

    assert code == 1
    assert "WAL damaged: digest mismatch" in out
    assert re.search(rf"segment\s+{re.escape(victim.segment)}$", out, re.M)
    assert re.search(rf"offset\s+{victim.offset}$", out, re.M)
    assert re.search(rf"sequence\s+{victim.sequence}$", out, re.M)
    assert re.search(rf"expected\s+{expected.hex()}$", out, re.M)
    assert re.search(rf"actual\s+{victim.digest.hex()}$", out, re.M)


def test_a_damaged_checkpoint_is_named(copy, capsys):
    oldest = sorted((copy / "checkpoints").glob("*.ckpt"))[0]
    data = bytearray(oldest.read_bytes())
    data[len(data) // 2] ^= 0x01
    oldest.write_bytes(data)

    code, out, _ = run(capsys, copy)

    assert code == 1
    assert f"bad checkpoint: checkpoint {oldest.name}: digest mismatch" in out
    assert "WAL damaged" not in out and "1 problem in" in out


def test_records_cut_from_the_end_are_caught_by_the_last_checkpoint(copy, capsys):
    last = list(scan(copy / "wal"))[-1]
    with open(last.segment, "r+b") as segment:
        segment.truncate(last.offset)  # a clean cut: the chain that is left is valid
    newest = sorted((copy / "checkpoints").glob("*.ckpt"))[-1]

    code, out, _ = run(capsys, copy)

    assert code == 1
    assert (f"checkpoint {newest.name}: covers WAL sequence {last.sequence} but the WAL ends at"
            f" {last.sequence - 1}") in out


def test_a_checkpoint_whose_head_differs_from_the_log_is_named(copy, capsys, tmp_path):
    # The checkpoints of another store with the same history shape do not fit this log.
    other = build(tmp_path / "other", rounds=200)
    for path in (copy / "checkpoints").glob("*.ckpt"):
        path.unlink()
    for path in (other.path / "checkpoints").glob("*.ckpt"):
        shutil.copy(path, copy / "checkpoints")

    code, out, _ = run(capsys, copy)

    assert code == 1
    assert "head digest" in out and "differs from the digest" in out


def test_a_checkpoint_with_a_forged_state_is_named(copy, capsys):
    # An unsigned checkpoint's digest proves nothing about who wrote it: its state must
    # also be the one a replay of the log reaches.
    newest = sorted((copy / "checkpoints").glob("*.ckpt"))[-1]
    real = ckpt.read_checkpoint(newest)
    capsules = [dict(entry, state=dict(entry["state"])) for entry in real.capsules]
    capsules[0]["state"]["next_sequence"] += 1
    newest.unlink()
    ckpt.write_checkpoint(copy / "checkpoints", wal_sequence=real.wal_sequence,
                          head_digest=real.head_digest, engine=real.engine, capsules=capsules)

    code, out, _ = run(capsys, copy)

    assert code == 1
    assert (f"checkpoint {newest.name}: its learned state differs from a replay of the log up"
            f" to WAL sequence {real.wal_sequence}") in out


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    key = Ed25519PrivateKey.generate()
    base = tmp_path_factory.mktemp("signed")
    store = build(base / "db", rounds=60, signing_key=key)
    public = base / "public.pem"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    wrong = base / "wrong.pem"
    wrong.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return SimpleNamespace(path=store.path, public=public, wrong=wrong)


def test_a_signed_store_passes_with_its_public_key(signed, capsys):
    code, out, _ = run(capsys, signed.path, "--public-key", signed.public)
    assert code == 0, out
    assert "digests and signatures valid" in out


def test_a_signed_store_fails_with_another_key(signed, capsys):
    code, out, _ = run(capsys, signed.path, "--public-key", signed.wrong)
    assert code == 1
    names = [p.name for p in sorted((signed.path / "checkpoints").glob("*.ckpt"))]
    for name in names:
        assert f"checkpoint {name}: bad signature" in out
    assert f"{len(names)} problems in" in out


def test_an_unsigned_store_fails_when_a_key_is_given(healthy, signed, capsys):
    code, out, _ = run(capsys, healthy.path, "--public-key", signed.public)
    assert code == 1
    assert "unsigned, but a verification key is configured" in out


def test_an_unreadable_public_key_is_a_usage_error(healthy, tmp_path, capsys):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    code, _, err = run(capsys, healthy.path, "--public-key", bad)
    assert code == 2
    assert "verify_key is not a PEM public key" in err


def test_replay_catches_a_decision_altered_and_rechained(healthy, tmp_path, capsys):
    records = list(scan(healthy.path / "wal"))
    decisions = [i for i, r in enumerate(records) if r.rtype == RecordType.DECISION]
    index = decisions[len(decisions) // 2]
    original = DecisionRecord.decode(records[index].payload)
    altered = DecisionRecord(original.capsule_uid, original.sequence, original.ts_ns,
                             original.propensity, (original.option_index + 1) % 3,
                             original.context_key)
    forged = tmp_path / "forged"
    # Every digest is recomputed, so the chain checks out; only replay can tell.
    with Wal.open(forged / "wal", durability="none", segment_bytes=4096) as wal:
        for i, record in enumerate(records):
            wal.append(record.rtype, altered.encode() if i == index else record.payload)
    where = next(r for r in scan(forged / "wal") if r.sequence == records[index].sequence)

    code, out, _ = run(capsys, forged)

    assert code == 1
    assert "WAL damaged" not in out
    assert (f"replay diverged: replay of DECISION record {where.sequence} failed: replay"
            f" diverged at WAL record {where.sequence}") in out
    assert f"the log says {altered.option_index}" in out
    assert re.search(rf"segment\s+{re.escape(where.segment)}$", out, re.M)
    assert re.search(rf"offset\s+{where.offset}$", out, re.M)


def test_replay_starts_from_the_oldest_checkpoint_after_retention(tmp_path, capsys):
    store = build(tmp_path / "db", rounds=200, retention="delete", keep_checkpoints=1)
    first = next(iter(scan(store.path / "wal"))).sequence
    assert first > 1  # the start of the log is gone
    report = verify_store(store.path)
    assert report.ok, report.problems
    assert report.replayed_from >= first - 1
    code, out, _ = run(capsys, store.path)
    assert code == 0
    assert f"after the checkpoint at sequence {report.replayed_from:,}" in out


def test_a_log_cut_at_the_start_without_a_checkpoint_fails(copy, capsys):
    shutil.rmtree(copy / "checkpoints")
    min(copy.glob("wal/wal-*.seg")).unlink()

    code, out, _ = run(capsys, copy)

    assert code == 1
    assert "no valid checkpoint covers sequence" in out


def sealed_logs(path, kind):
    """The ``kind`` log files of the sealed segments (all but the last, live one)."""
    segments = sorted((path / "wal").glob("wal-*.seg"))[:-1]
    return [path / "logs" / kind / (segment.stem + ".arrow") for segment in segments]


def test_a_healthy_store_checks_every_log_file(healthy, capsys):
    sealed = len(sealed_logs(healthy.path, "decisions"))
    report = verify_store(healthy.path)
    assert report.log_files == 3 * sealed and report.log_files_orphaned == 0
    assert report.notes == []
    code, out, _ = run(capsys, healthy.path)
    assert code == 0
    assert f"logs: {3 * sealed} Arrow log files valid, rows match the WAL" in out


def test_a_garbage_log_file_is_named(copy, capsys):
    victim = sealed_logs(copy, "feedback")[1]
    victim.write_bytes(b"garbage")

    code, out, _ = run(capsys, copy)

    assert code == 1
    assert f"bad Arrow log: Arrow log {victim} cannot be read" in out
    assert re.search(rf"log\s+{re.escape(str(victim))}$", out, re.M)
    assert "1 problem in" in out


def test_a_log_file_with_another_segments_rows_is_named(copy, capsys):
    decisions = sealed_logs(copy, "decisions")
    shutil.copy(decisions[2], decisions[1])  # reads well: only the WAL tells
    first = next(r.sequence for r in scan(copy / "wal") if r.rtype == RecordType.DECISION
                 and Path(r.segment).stem == decisions[1].stem)

    code, out, _ = run(capsys, copy)

    assert code == 1
    assert (f"Arrow log {decisions[1]}: its {pa.ipc.open_file(decisions[2]).read_all().num_rows}"
            " rows are not the") in out
    assert f"the first difference is at WAL sequence {first}" in out


def test_a_log_row_with_a_wrong_digest_is_named(copy, capsys):
    victim = sealed_logs(copy, "decisions")[1]
    table = pa.ipc.open_file(pa.py_buffer(victim.read_bytes())).read_all()
    digests = table.column("digest").to_pylist()
    forged = bytes(32)
    table = table.set_column(table.schema.get_field_index("digest"), table.schema.field("digest"),
                             pa.array([forged] + digests[1:], pa.binary(32)))
    with pa.ipc.new_file(str(victim), table.schema) as writer:
        writer.write_table(table)
    sequence = table.column("wal_sequence")[0].as_py()

    code, out, _ = run(capsys, copy)

    assert code == 1
    assert (f"Arrow log {victim}: the row for WAL sequence {sequence} has a digest other than"
            " its WAL record's") in out
    assert re.search(rf"expected\s+{digests[0].hex()}$", out, re.M)
    assert re.search(rf"actual\s+{forged.hex()}$", out, re.M)


def test_a_sealed_segment_without_log_files_is_a_note(copy, capsys):
    for kind in ("decisions", "feedback", "audit"):
        sealed_logs(copy, kind)[2].unlink()
    sealed_logs(copy, "audit")[3].unlink()

    code, out, _ = run(capsys, copy)

    assert code == 0, out
    assert "note: 2 sealed WAL segments (3-4) lack some Arrow log files" in out


def test_a_missing_directory_exits_2_with_a_message(tmp_path, capsys):
    code, out, err = run(capsys, tmp_path / "nope")
    assert code == 2 and out == ""
    assert f"syntra verify: error: '{tmp_path / 'nope'}' does not exist" in err
    code, _, err = run(capsys, tmp_path)
    assert code == 2
    assert "not a Syntra store" in err
