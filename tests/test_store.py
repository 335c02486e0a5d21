"""The durable engine: Engine.open, checkpoints, recovery and deterministic replay."""

import logging
import random
import shutil

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from syntra import (
    DuplicateFeedback,
    Engine,
    InvalidConfig,
    InvalidReward,
    UnknownCapsule,
    UnknownDecision,
)
from syntra.errors import StorageCorrupt, StorageError

NAME = "tenants/acme/jobs/llm/capsules/router"
OTHER = "tenants/acme/jobs/retry/capsules/policy"
OPTIONS = ["cheap_fast", "balanced", "expensive_accurate"]
# Tests sync for real, but keep the window short so they run fast.
FAST = {"commit_window_us": 50}


def drive(engine, rounds, seed=0, feedback_every=1):
    """Decide in several contexts of two capsules and give feedback to most decisions."""
    world = random.Random(seed)
    pending = []
    for i in range(rounds):
        cap = engine.capsule(NAME if i % 3 else OTHER)
        d = cap.decide(f"ctx{i % 4}")
        pending.append((cap, d))
        if i % feedback_every == 0:
            target_cap, target = pending.pop(world.randrange(len(pending)))
            target_cap.feedback(target.decision_id, float(world.random() < 0.3 + 0.2 * target.option_index))
    return pending


def install_both(engine):
    engine.install(NAME, options=OPTIONS)
    engine.install(OTHER, options=["none", "fixed", "backoff"], algorithm="ucb1")


def copy_without_checkpoints(source, target):
    shutil.copytree(source, target)
    shutil.rmtree(target / "checkpoints", ignore_errors=True)


def test_reopen_restores_the_exact_state(tmp_path):
    with Engine.open(tmp_path / "db", seed=5, **FAST) as eng:
        install_both(eng)
        left = drive(eng, 300, feedback_every=2)
        digest = eng.state_digest()
        nonce = eng.nonce
    with Engine.open(tmp_path / "db", **FAST) as again:
        assert again.state_digest() == digest
        assert again.seed == 5 and again.nonce == nonce
        # Pending decisions survive and still accept feedback exactly once.
        cap, d = left[0]
        again.capsule(cap.name).feedback(d.decision_id, 1.0)
        with pytest.raises(DuplicateFeedback):
            again.capsule(cap.name).feedback(d.decision_id, 1.0)


def test_a_crash_without_close_loses_nothing_acknowledged(tmp_path):
    eng = Engine.open(tmp_path / "db", **FAST)
    install_both(eng)
    drive(eng, 200)
    digest = eng.state_digest()
    # No close(): no final checkpoint, the WAL alone must carry everything.
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "db", crashed)
    with Engine.open(crashed, **FAST) as recovered:
        assert recovered.state_digest() == digest
    eng.close()


def test_decisions_continue_identically_after_recovery(tmp_path):
    with Engine.open(tmp_path / "a", seed=9, **FAST) as eng:
        install_both(eng)
        drive(eng, 150)
        shutil.copytree(tmp_path / "a", tmp_path / "b")
        continued = [(d.sequence, d.option, d.decision_id) for d in
                     (eng.capsule(NAME).decide("ctx1") for _ in range(50))]
    with Engine.open(tmp_path / "b", **FAST) as reopened:
        again = [(d.sequence, d.option, d.decision_id) for d in
                 (reopened.capsule(NAME).decide("ctx1") for _ in range(50))]
    assert again == continued


def test_checkpoint_plus_tail_equals_full_replay(tmp_path):
    with Engine.open(tmp_path / "db", checkpoint_every=10**9, **FAST) as eng:
        install_both(eng)
        drive(eng, 200)
        eng.checkpoint()
        drive(eng, 200, seed=1)
        digest = eng.state_digest()
        copy_without_checkpoints(tmp_path / "db", tmp_path / "full")
        with Engine.open(tmp_path / "full", **FAST) as full:
            assert full.state_digest() == digest
    with Engine.open(tmp_path / "db", **FAST) as from_checkpoint:
        assert from_checkpoint.state_digest() == digest


def test_background_checkpoints_every_n_records(tmp_path):
    with Engine.open(tmp_path / "db", checkpoint_every=50, **FAST) as eng:
        install_both(eng)
        drive(eng, 400)
        import time

        deadline = time.monotonic() + 10
        while eng._store.last_checkpoint_sequence < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert eng._store.last_checkpoint_sequence >= 300
    assert 1 <= len(list((tmp_path / "db" / "checkpoints").glob("*.ckpt"))) <= 3


def test_refused_calls_write_nothing(tmp_path):
    with Engine.open(tmp_path / "db", **FAST) as eng:
        cap = eng.install(NAME, options=OPTIONS)
        d = cap.decide("k")
        before = eng._store.wal.next_sequence
        for bad in (float("nan"), 0.5, True):
            with pytest.raises(InvalidReward):
                cap.feedback(d.decision_id, bad)
        with pytest.raises(UnknownDecision):
            cap.feedback("0" * 16 + "-" + "f" * 16, 1.0)
        with pytest.raises(InvalidConfig):
            eng.install(OTHER, options=[])
        assert eng._store.wal.next_sequence == before


def test_uninstall_and_reinstall_survive_recovery(tmp_path):
    with Engine.open(tmp_path / "db", **FAST) as eng:
        old = eng.install(NAME, options=OPTIONS)
        stale = old.decide("k")
        eng.uninstall(NAME)
        new = eng.install(NAME, options=["x", "y"])
        fresh = new.decide("k")
    with Engine.open(tmp_path / "db", **FAST) as again:
        cap = again.capsule(NAME)
        assert cap.options == ("x", "y")
        with pytest.raises(UnknownDecision):
            cap.feedback(stale.decision_id, 1.0)
        cap.feedback(fresh.decision_id, 1.0)


def test_seed_is_fixed_at_creation(tmp_path):
    Engine.open(tmp_path / "db", seed=3, **FAST).close()
    with pytest.raises(InvalidConfig, match="seed 3"):
        Engine.open(tmp_path / "db", seed=4, **FAST)
    Engine.open(tmp_path / "db", seed=3, **FAST).close()


def _checkpoints(path):
    return sorted((path / "checkpoints").glob("*.ckpt"))


def _two_checkpoints(path, **options):
    eng = Engine.open(path, checkpoint_every=10**9, **FAST, **options)
    install_both(eng)
    drive(eng, 100)
    eng.checkpoint()
    drive(eng, 100, seed=2)
    digest = eng.state_digest()
    eng.close()  # writes the second checkpoint
    assert len(_checkpoints(path)) == 2
    return digest


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    digest = _two_checkpoints(tmp_path / "db")
    latest = _checkpoints(tmp_path / "db")[-1]
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0x10
    latest.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="syntra.store"):
        with Engine.open(tmp_path / "db", **FAST) as eng:
            assert eng.state_digest() == digest
    assert latest.name in caplog.text


def test_a_torn_checkpoint_falls_back_and_tmp_files_are_ignored(tmp_path):
    digest = _two_checkpoints(tmp_path / "db")
    latest = _checkpoints(tmp_path / "db")[-1]
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 3])
    (tmp_path / "db" / "checkpoints" / "ckpt-99999999999999999999.ckpt.tmp").write_bytes(b"torn")
    with Engine.open(tmp_path / "db", **FAST) as eng:
        assert eng.state_digest() == digest


def test_no_valid_checkpoint_fails_closed(tmp_path):
    _two_checkpoints(tmp_path / "db")
    for path in _checkpoints(tmp_path / "db"):
        path.write_bytes(b"SYNCKPT\x00garbage")
    with pytest.raises(StorageCorrupt, match="no valid checkpoint"):
        Engine.open(tmp_path / "db", **FAST)


def _key_files(tmp_path, name):
    key = Ed25519PrivateKey.generate()
    private = tmp_path / f"{name}.pem"
    private.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public = tmp_path / f"{name}.pub"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def test_signed_checkpoints_verify_and_a_bad_signature_falls_back(tmp_path):
    private, public = _key_files(tmp_path, "signer")
    digest = _two_checkpoints(tmp_path / "db", signing_key=private)
    with Engine.open(tmp_path / "db", verify_key=public, **FAST) as eng:
        assert eng.state_digest() == digest
    # Re-sign the latest checkpoint with another key: it must be refused, the older used.
    _, wrong_public = _key_files(tmp_path, "intruder")
    with pytest.raises(StorageCorrupt, match="bad signature"):
        Engine.open(tmp_path / "db", verify_key=wrong_public, **FAST)
    latest = _checkpoints(tmp_path / "db")[-1]
    data = bytearray(latest.read_bytes())
    data[-1] ^= 0x01  # the signature's last byte
    latest.write_bytes(bytes(data))
    with Engine.open(tmp_path / "db", verify_key=public, **FAST) as eng:
        assert eng.state_digest() == digest


def test_unsigned_checkpoints_are_refused_when_a_key_is_configured(tmp_path):
    _, public = _key_files(tmp_path, "signer")
    _two_checkpoints(tmp_path / "db")
    with pytest.raises(StorageCorrupt, match="unsigned"):
        Engine.open(tmp_path / "db", verify_key=public, **FAST)


@pytest.mark.parametrize("source", ["missing.pem", b"not a key", 42])
def test_bad_keys_are_config_errors(tmp_path, source):
    with pytest.raises(InvalidConfig):
        Engine.open(tmp_path / "db", signing_key=source, **FAST)


def test_records_cut_from_the_end_are_detected(tmp_path):
    with Engine.open(tmp_path / "db", segment_bytes=4096, **FAST) as eng:
        install_both(eng)
        drive(eng, 300)
    segments = sorted((tmp_path / "db" / "wal").glob("*.seg"))
    assert len(segments) > 2
    segments[-1].unlink()  # the checkpoint says the log went further
    with pytest.raises(StorageCorrupt, match="cut"):
        Engine.open(tmp_path / "db", **FAST)


@pytest.mark.parametrize("policy", ["delete", "archive"])
def test_retention_removes_segments_before_the_oldest_kept_checkpoint(tmp_path, policy):
    options = {"retention": policy, "keep_checkpoints": 1, "segment_bytes": 4096, "checkpoint_every": 10**9}
    if policy == "archive":
        options["archive_dir"] = tmp_path / "archive"
    with Engine.open(tmp_path / "db", **options, **FAST) as eng:
        install_both(eng)
        drive(eng, 300)
        eng.checkpoint()
        drive(eng, 50, seed=3)
        digest = eng.state_digest()
    remaining = sorted((tmp_path / "db" / "wal").glob("*.seg"))
    assert remaining and remaining[0].name != "wal-0000000000000001.seg"
    if policy == "archive":
        assert sorted((tmp_path / "archive").glob("*.seg"))
    with Engine.open(tmp_path / "db", **FAST) as again:
        assert again.state_digest() == digest


def test_invalid_store_options(tmp_path):
    for options in ({"durability": "maybe"}, {"checkpoint_every": 0}, {"retention": "forever"},
                    {"retention": "archive"}, {"keep_checkpoints": 0}):
        with pytest.raises(InvalidConfig):
            Engine.open(tmp_path / "db", **options)


def test_a_closed_engine_refuses_work(tmp_path):
    eng = Engine.open(tmp_path / "db", **FAST)
    cap = eng.install(NAME, options=OPTIONS)
    eng.close()
    eng.close()
    with pytest.raises(StorageError, match="closed"):
        cap.decide("k")


def test_uninstalled_capsules_cannot_log(tmp_path):
    with Engine.open(tmp_path / "db", **FAST) as eng:
        cap = eng.install(NAME, options=OPTIONS)
        eng.uninstall(NAME)
        with pytest.raises(UnknownCapsule):
            cap.decide("k")
    Engine.open(tmp_path / "db", **FAST).close()


def test_a_failing_disk_fails_closed(tmp_path, monkeypatch):
    import os

    eng = Engine.open(tmp_path / "db", **FAST)
    cap = eng.install(NAME, options=OPTIONS)
    cap.decide("k")

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(StorageError):
        cap.decide("k")
    monkeypatch.undo()
    with pytest.raises(StorageError, match="refuses"):
        cap.decide("k")
    with pytest.raises(StorageError):
        eng.install(OTHER, options=OPTIONS)
    eng.close()
    with Engine.open(tmp_path / "db", **FAST) as again:
        # The refused decision was written but never confirmed: it may or may not be there.
        assert again.capsule(NAME).decisions in (1, 2)


def test_uninstall_while_other_threads_decide_keeps_the_store_openable(tmp_path):
    import threading

    for attempt in range(5):
        path = tmp_path / f"db{attempt}"
        eng = Engine.open(path, **FAST)
        cap = eng.install(NAME, options=OPTIONS)
        stop = threading.Event()

        def hammer(cap=cap, stop=stop):
            while not stop.is_set():
                try:
                    d = cap.decide("k")
                    cap.feedback(d.decision_id, 1.0)
                except UnknownCapsule:
                    return

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        eng.uninstall(NAME)
        stop.set()
        for t in threads:
            t.join()
        digest = eng.state_digest()
        eng.close(checkpoint=False)
        with Engine.open(path, **FAST) as again:
            assert again.state_digest() == digest
            assert NAME not in again


def test_replay_refuses_a_gap_after_a_fallback_checkpoint(tmp_path):
    path = tmp_path / "db"
    eng = Engine.open(path, segment_bytes=4096, checkpoint_every=10**9, **FAST)
    install_both(eng)
    drive(eng, 100)
    older = eng.checkpoint()
    drive(eng, 300, seed=1)
    newer = eng.checkpoint()
    eng.close(checkpoint=False)
    older_sequence = int(older.name.split("-")[1].split(".")[0])
    # The newest checkpoint is torn, and the segments just after the older one are gone:
    # replaying from the older checkpoint would silently skip records.
    newer.write_bytes(newer.read_bytes()[:100])
    from syntra_core.wal import scan

    segments = sorted((path / "wal").glob("*.seg"))
    last_of = {}
    for record in scan(path / "wal"):
        last_of[record.segment] = record.sequence
    for segment in segments:
        if last_of[str(segment)] <= older_sequence + 30:
            segment.unlink()
    with pytest.raises(StorageCorrupt, match="missing"):
        Engine.open(path, **FAST)


def test_concurrent_checkpoints_are_serialized(tmp_path):
    import threading

    with Engine.open(tmp_path / "db", checkpoint_every=25, **FAST) as eng:
        install_both(eng)
        errors = []
        seen = []

        def checkpoints():
            try:
                for _ in range(15):
                    eng.checkpoint()
                    seen.append(eng._store.last_checkpoint_sequence)
            except Exception as exc:  # reported below
                errors.append(exc)

        workers = [threading.Thread(target=checkpoints) for _ in range(3)]
        for t in workers:
            t.start()
        drive(eng, 300)
        for t in workers:
            t.join()
        assert not errors
        digest = eng.state_digest()
    with Engine.open(tmp_path / "db", **FAST) as again:
        assert again.state_digest() == digest


def test_a_store_open_twice_is_refused(tmp_path):
    with Engine.open(tmp_path / "db", **FAST):
        with pytest.raises(StorageError, match="cannot open store"):
            Engine.open(tmp_path / "db", **FAST)


def test_asyncio_callers_await_durability(tmp_path):
    import asyncio

    async def traffic(eng):
        cap = eng.capsule(NAME)
        decisions = await asyncio.gather(*(cap.decide_async(f"c{i % 3}") for i in range(200)))
        await asyncio.gather(*(cap.feedback_async(d.decision_id, 1.0) for d in decisions[::2]))
        return decisions

    with Engine.open(tmp_path / "db", **FAST) as eng:
        eng.install(NAME, options=OPTIONS)
        decisions = asyncio.run(traffic(eng))
        assert len({d.decision_id for d in decisions}) == 200
        digest = eng.state_digest()
    with Engine.open(tmp_path / "db", **FAST) as again:
        assert again.state_digest() == digest
        cap = again.capsule(NAME)
        assert cap.pending == 100
        with pytest.raises(DuplicateFeedback):
            cap.feedback(decisions[0].decision_id, 1.0)


def test_memory_capsules_offer_the_async_api_too():
    import asyncio

    cap = Engine.memory().install(NAME, options=OPTIONS)

    async def one():
        d = await cap.decide_async("k")
        await cap.feedback_async(d.decision_id, 0.0)

    asyncio.run(one())
    assert cap.pending == 0 and cap.decisions == 1


def test_checkpoint_names_must_match_their_contents(tmp_path):
    _two_checkpoints(tmp_path / "db")
    first, second = _checkpoints(tmp_path / "db")
    swap = first.with_name("swap")
    first.rename(swap)
    second.rename(first)
    swap.rename(second)
    with pytest.raises(StorageCorrupt, match="name says"):
        Engine.open(tmp_path / "db", **FAST)


def test_an_empty_checkpoint_file_is_reported_as_truncated(tmp_path):
    _two_checkpoints(tmp_path / "db")
    for path in _checkpoints(tmp_path / "db"):
        path.write_bytes(b"")
    with pytest.raises(StorageCorrupt, match="truncated"):
        Engine.open(tmp_path / "db", **FAST)


def test_an_unwritable_checkpoint_directory_is_a_storage_error(tmp_path):
    eng = Engine.open(tmp_path / "db", **FAST)
    eng.install(NAME, options=OPTIONS)
    shutil.rmtree(tmp_path / "db" / "checkpoints", ignore_errors=True)
    (tmp_path / "db" / "checkpoints").write_bytes(b"not a directory")
    with pytest.raises(StorageError, match="checkpoint"):
        eng.checkpoint()
    eng.close(checkpoint=False)


def test_bad_store_option_types_are_config_errors(tmp_path):
    with pytest.raises(InvalidConfig):
        Engine.open(tmp_path / "db", segment_bytes="x")
    with pytest.raises(InvalidConfig, match="bogus"):
        Engine.open(tmp_path / "db", bogus=1)


def test_the_option_list_matches_the_store_constructor():
    import inspect

    from syntra.store.durable import DurableStore

    parameters = set(inspect.signature(DurableStore.__init__).parameters) - {"self", "path"}
    assert parameters == DurableStore.OPTIONS


def test_retention_keeps_segments_whose_logs_are_not_written(tmp_path, monkeypatch):
    from syntra.errors import StorageError as Failed
    from syntra.store import logs

    def fail(self, segment):
        raise Failed("simulated: the logs directory is not writable")

    monkeypatch.setattr(logs.SegmentLogWriter, "write", fail)
    options = {"retention": "delete", "keep_checkpoints": 1, "segment_bytes": 4096, "checkpoint_every": 10**9}
    with Engine.open(tmp_path / "db", **options, **FAST) as eng:
        install_both(eng)
        drive(eng, 300)
        eng.checkpoint()
    # No segment lost its logs for good: every segment is still there.
    assert sorted((tmp_path / "db" / "wal").glob("*.seg"))[0].name.endswith("0000000000000001.seg")
    monkeypatch.undo()
    with Engine.open(tmp_path / "db", **options, **FAST) as eng:  # catches the logs up
        eng.checkpoint()
    remaining = sorted((tmp_path / "db" / "wal").glob("*.seg"))
    assert not remaining[0].name.endswith("0000000000000001.seg")
