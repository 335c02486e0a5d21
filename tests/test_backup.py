"""Backup bundles (syntra.store.backup): consistent under traffic, verified before restore."""

import io
import itertools
import json
import os
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from syntra import Engine
from syntra.budget import Budget
from syntra.budget import tool as budget_tool
from syntra.errors import (
    DuplicateFeedback,
    InvalidArgument,
    InvalidConfig,
    StorageError,
    UnknownDecision,
)
from syntra.store.backup import BackupInvalid, stage_restore, swap_in, write_backup

ROUTER = "tenants/acme/jobs/llm/capsules/router"
PRICED = "tenants/acme/jobs/llm/capsules/priced"
COSTS = {"small": 1_000, "medium": 4_000, "large": 9_000}
LIMIT = 1 << 30


def tree_digests(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative path, with its BLAKE3: equal means untouched."""
    return {str(p.relative_to(root)): blake3.blake3(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def install_both(engine: Engine):
    router = engine.install(ROUTER, options=["a", "b", "c"])
    priced = engine.install(PRICED, options=list(COSTS),
                            budget={"account": "llm", "costs": COSTS, "hold_seconds": 3600})
    return router, priced


def restore_into(bundle: bytes, staging: Path, **options) -> Engine:
    stage_restore(io.BytesIO(bundle), staging, max_bytes=LIMIT, **options)
    return Engine.open(staging, durability="none")


# --- consistency ---------------------------------------------------------------------------


def test_a_bundle_taken_under_traffic_restores_exactly_the_snapshot(tmp_path):
    engine = Engine.open(tmp_path / "store", durability="fsync", seed=3)
    engine.budget.open_account("llm", 10**12)
    capsules = install_both(engine)
    clock = itertools.count()   # one tick per event, in the order events happen
    events = []                 # (kind, capsule, decision id, tick before, tick after)
    stop = threading.Event()
    failures = []

    def traffic(worker: int) -> None:
        try:
            for turn in itertools.count():
                if stop.is_set():
                    return
                capsule = capsules[(worker + turn) % 2]
                started = next(clock)
                d = capsule.decide(f"ctx{turn % 3}")
                events.append(("decide", capsule.name, d.decision_id, started, next(clock)))
                if turn % 4 == 3:
                    continue    # left pending
                started = next(clock)
                cost = COSTS["small"] if capsule.name == PRICED else None
                capsule.feedback(d.decision_id, float(turn % 2), cost=cost)
                events.append(("feedback", capsule.name, d.decision_id, started, next(clock)))
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=traffic, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        while len(events) < 150 and not failures:
            stop.wait(0.005)
        with open(tmp_path / "bundle.tar", "wb") as out:
            before = next(clock)
            info = write_backup(engine, out)
            after = next(clock)
        # The engine keeps serving: traffic goes on after the bundle too.
        while sum(e[3] > after for e in events) < 60 and not failures:
            stop.wait(0.005)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        engine.close()
    assert not failures

    bundle = (tmp_path / "bundle.tar").read_bytes()
    assert (len(bundle), blake3.blake3(bundle).hexdigest()) == (info.size_bytes, info.blake3)
    restored = restore_into(bundle, tmp_path / "restored", expected_blake3=info.blake3)
    try:
        assert restored.state_digest() == info.state_digest
        acknowledged = [e for e in events if e[0] == "feedback" and e[4] < before]
        later = [e for e in events if e[0] == "decide" and e[3] > after]
        assert acknowledged and later
        for _, name, decision_id, _, _ in acknowledged:
            with pytest.raises(DuplicateFeedback):
                restored.capsule(name).feedback(decision_id, 1.0)
        for _, name, decision_id, _, _ in later:
            with pytest.raises(UnknownDecision):
                restored.capsule(name).feedback(decision_id, 1.0)
    finally:
        restored.close(checkpoint=False)


def test_the_wal_in_a_bundle_replays_to_the_checkpoint_it_carries(tmp_path):
    # Without the checkpoint, the WAL prefix alone must give the same state: the two were
    # captured at the same moment.
    engine = Engine.open(tmp_path / "store", durability="none")
    engine.budget.open_account("llm", 10**9)
    router, priced = install_both(engine)
    for turn in range(40):
        for capsule in (router, priced):
            d = capsule.decide(f"ctx{turn % 2}")
            if turn % 3:
                capsule.feedback(d.decision_id, 1.0, cost=500 if capsule is priced else None)
    out = io.BytesIO()
    info = write_backup(engine, out)
    engine.close()
    stage_restore(io.BytesIO(out.getvalue()), tmp_path / "staged", max_bytes=LIMIT)
    shutil.rmtree(tmp_path / "staged" / "checkpoints")
    with Engine.open(tmp_path / "staged", durability="none") as replayed:
        assert replayed.state_digest() == info.state_digest


def test_a_quiet_engine_comes_back_bit_for_bit_from_a_multi_segment_wal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # a store opened by a relative path
    engine = Engine.open("store", durability="none", segment_bytes=4096)
    router = engine.install(ROUTER, options=["a", "b"])
    for turn in range(120):
        router.feedback(router.decide(f"ctx{turn % 4}").decision_id, float(turn % 3 == 0))
    pending = router.decide("ctx0")
    digest = engine.state_digest()
    out = io.BytesIO()
    info = write_backup(engine, out)
    late = router.decide("ctx1")
    assert len(engine._store.wal.segments) > 3
    engine.close()

    assert info.state_digest == digest and info.capsules == 1
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = tar.getnames()
    # Deterministic order, relative names; just the segment holding the checkpoint's record.
    assert names[0] == f"checkpoints/ckpt-{info.wal_sequence:020d}.ckpt" and names[-1] == "backup.json"
    wal_members = [n for n in names if n.startswith("wal/")]
    assert len(wal_members) == 1 and wal_members[0] != "wal/wal-0000000000000001.seg"
    assert not any(n.startswith("/") or ".." in n for n in names)

    restored = restore_into(out.getvalue(), tmp_path / "restored")
    try:
        assert restored.state_digest() == digest
        assert restored._store.wal.durable_sequence == info.wal_sequence
        assert restored._store.wal.head_digest == info.head_digest
        capsule = restored.capsule(ROUTER)
        with pytest.raises(UnknownDecision):
            capsule.feedback(late.decision_id, 1.0)
        capsule.feedback(pending.decision_id, 1.0)   # pending at the snapshot: still pending
    finally:
        restored.close()


def test_budget_balances_holds_and_arena_capacities_come_back(tmp_path):
    store = tmp_path / "store"
    Budget.open(store / "budget", accounts=8, reservations=256).close()   # non-default capacities
    engine = Engine.open(store, durability="fsync")
    engine.budget.open_account("llm", 1_000_000)
    engine.budget.open_account("ops", 50_000, exposure_cap=20_000)
    engine.budget.top_up("llm", 7_000)
    budget_tool.top_up(store, "ops", 1_234)   # another writer: a journal under journal.d/
    _, priced = install_both(engine)
    for turn in range(12):
        d = priced.decide("ctx")
        if turn % 3 == 0:
            priced.feedback(d.decision_id, 1.0, cost=d.cost // 2)   # commits half its hold
        elif turn % 3 == 1:
            priced.feedback(d.decision_id, 0.0)                     # releases it
    engine.budget.reserve("ops", 700, ttl=3600)
    engine.budget.commit(engine.budget.reserve("ops", 900, ttl=3600), 650)
    accounts, holds, spend = engine.budget.accounts(), engine.budget.reservations(), engine.budget.spend()
    out = io.BytesIO()
    write_backup(engine, out)
    engine.budget.reserve("ops", 1_500, ttl=3600)   # after the bundle: not in it
    engine.budget.top_up("llm", 1)
    engine.close()

    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        assert any(n.startswith("budget/journal.d/") for n in tar.getnames())
    restored = restore_into(out.getvalue(), tmp_path / "restored")
    try:
        budget = restored.budget
        assert budget.account("ops").topped_up == 1_234
        assert budget.accounts() == accounts
        assert budget.reservations() == holds and len(holds) == 5   # 4 decisions pending + 1 direct
        assert budget.spend() == spend
        assert (budget.arena.account_capacity, budget.arena.reservation_capacity) == (8, 256)
        assert budget.verify() == []
    finally:
        restored.close()


def test_a_signed_store_restores_under_its_key_only(tmp_path):
    key = Ed25519PrivateKey.generate()
    engine = Engine.open(tmp_path / "store", durability="none", signing_key=key)
    engine.install(ROUTER, options=["a", "b"])
    out = io.BytesIO()
    write_backup(engine, out)
    engine.close()
    info = stage_restore(io.BytesIO(out.getvalue()), tmp_path / "good", max_bytes=LIMIT,
                         verify_key=key.public_key())
    assert info.capsules == 1
    with pytest.raises(BackupInvalid, match="bad signature"):
        stage_restore(io.BytesIO(out.getvalue()), tmp_path / "bad", max_bytes=LIMIT,
                      verify_key=Ed25519PrivateKey.generate().public_key())
    assert not (tmp_path / "bad").exists()


def test_only_a_live_durable_engine_is_backed_up(tmp_path):
    with pytest.raises(InvalidConfig, match="in-memory"):
        write_backup(Engine.memory(), io.BytesIO())
    engine = Engine.open(tmp_path / "store", durability="none")
    engine.close()
    with pytest.raises(StorageError, match="closed"):
        write_backup(engine, io.BytesIO())


# --- refusing bad bundles ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A closed store, and a valid bundle of it (bytes)."""
    root = tmp_path_factory.mktemp("source")
    engine = Engine.open(root / "store", durability="none")
    engine.budget.open_account("llm", 10**9)
    router, priced = install_both(engine)
    for turn in range(20):
        for capsule in (router, priced):
            capsule.feedback(capsule.decide("ctx").decision_id, 1.0, cost=10 if capsule is priced else None)
    out = io.BytesIO()
    write_backup(engine, out)
    engine.close()
    return root / "store", out.getvalue()


def members(bundle: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def repack(entries) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, b""


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def flip_wal_byte(bundle: bytes, *, forge_manifest: bool) -> bytes:
    """The bundle with one byte of its WAL segment's last record flipped; with
    ``forge_manifest``, the manifest's digest of that member updated to match."""
    entries = members(bundle)
    name = next(m.name for m, _ in entries if m.name.startswith("wal/"))
    out = []
    for info, data in entries:
        if info.name == name:
            data = bytearray(data)
            data[-40] ^= 0x01
            data = bytes(data)
            changed = blake3.blake3(data).hexdigest()
        out.append([info, data])
    if forge_manifest:
        manifest = json.loads(out[-1][1])
        for entry in manifest["members"]:
            if entry["name"] == name:
                entry["blake3"] = changed
        out[-1][1] = json.dumps(manifest).encode()
        out[-1][0].size = len(out[-1][1])
    return repack(out)


def with_extra(bundle: bytes, entry) -> bytes:
    entries = members(bundle)
    return repack(entries[:-1] + [entry] + entries[-1:])


ESCAPED = "/tmp/syntra-backup-test-escaped"
WAL_MEMBER = r"member 'wal/wal-0000000000000001\.seg'"
BAD_BUNDLES = {
    "truncated": (lambda b: b[:len(b) // 2], {}, r"truncated"),
    "flipped WAL byte": (lambda b: flip_wal_byte(b, forge_manifest=False), {}, WAL_MEMBER + r" has BLAKE3 .*changed"),
    "flipped WAL byte, manifest forged": (lambda b: flip_wal_byte(b, forge_manifest=True), {},
                                          r"does not verify: wal: digest mismatch.*" + WAL_MEMBER),
    "dot-dot member": (lambda b: with_extra(b, regular("wal/../../escaped", b"x")), {},
                       r"member 'wal/\.\./\.\./escaped' has a '\.\.'"),
    "absolute member": (lambda b: with_extra(b, regular(ESCAPED, b"x")), {}, rf"member '{ESCAPED}' has an absolute"),
    "symlink": (lambda b: with_extra(b, special("wal/wal-0000000000000002.seg", tarfile.SYMTYPE, "/etc/passwd")), {},
                r"is a link"),
    "hard link": (lambda b: with_extra(b, special("wal/wal-0000000000000002.seg", tarfile.LNKTYPE, "backup.json")), {},
                  r"is a link"),
    "device": (lambda b: with_extra(b, special("wal/wal-0000000000000002.seg", tarfile.CHRTYPE)), {}, r"is a device"),
    "directory": (lambda b: with_extra(b, special("sandboxes/t/j/c/d", tarfile.DIRTYPE)), {}, r"not a regular file"),
    "outside the layout": (lambda b: with_extra(b, regular("logs/wal-0000000000000001.arrow", b"x")), {},
                           r"member 'logs/wal-0000000000000001\.arrow' is outside the store layout"),
    "unlisted member": (lambda b: with_extra(b, regular("sandboxes/t/j/c/data.txt", b"x")), {},
                        r"member 'sandboxes/t/j/c/data\.txt' is not listed"),
    "no manifest": (lambda b: repack(members(b)[:-1]), {}, r"no backup\.json"),
    "oversize": (lambda b: b, {"max_bytes": 4096}, r"larger than max_bytes \(4096 bytes\)"),
    "wrong blake3": (lambda b: b, {"expected_blake3": "0" * 64}, r"BLAKE3 is [0-9a-f]{64}, expected 0{64}"),
    "not a tar": (lambda b: b"\x01" * 2048, {}, r"not a tar archive"),
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_a_bad_bundle_is_refused_naming_the_problem_and_changes_nothing(source, tmp_path, case):
    store, bundle = source
    damage, options, message = BAD_BUNDLES[case]
    before = tree_digests(store)
    staging = tmp_path / "area" / "staging"
    with pytest.raises(BackupInvalid, match=message):
        stage_restore(io.BytesIO(damage(bundle)), staging, **{"max_bytes": LIMIT, **options})
    assert not staging.exists()
    assert os.listdir(tmp_path / "area") == [] and os.listdir(tmp_path) == ["area"]
    assert not Path(ESCAPED).exists()
    assert tree_digests(store) == before


def test_a_member_larger_than_max_bytes_is_refused_before_its_data_is_read(tmp_path):
    info, _ = regular("sandboxes/t/j/c/big", b"")
    info.size = 1 << 40
    header = info.tobuf(tarfile.PAX_FORMAT)   # a header alone: the data never comes
    with pytest.raises(BackupInvalid, match=r"member 'sandboxes/t/j/c/big' is 1099511627776 bytes, over max_bytes"):
        stage_restore(io.BytesIO(header), tmp_path / "staging", max_bytes=1 << 20)
    assert not (tmp_path / "staging").exists()


def test_bad_arguments_are_refused_before_anything_is_written(source, tmp_path):
    _, bundle = source
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(InvalidArgument, match="staging_dir"):
        stage_restore(io.BytesIO(bundle), occupied, max_bytes=LIMIT)
    assert (occupied / "keep.txt").read_text() == "mine"
    with pytest.raises(InvalidArgument, match="max_bytes"):
        stage_restore(io.BytesIO(bundle), tmp_path / "s", max_bytes=0)
    with pytest.raises(BackupInvalid, match="expected_blake3"):
        stage_restore(io.BytesIO(bundle), tmp_path / "s", max_bytes=LIMIT, expected_blake3="xyz")
    assert not (tmp_path / "s").exists()


def test_sandbox_files_travel_with_the_bundle(tmp_path):
    engine = Engine.open(tmp_path / "store", durability="none")
    sandbox = tmp_path / "store" / "sandboxes" / "acme" / "llm" / "router" / "data"
    sandbox.mkdir(parents=True)
    (sandbox / "prices.json").write_text('{"a": 1}')
    os.symlink("/etc/passwd", sandbox / "link")
    out = io.BytesIO()
    write_backup(engine, out)
    engine.close()
    stage_restore(io.BytesIO(out.getvalue()), tmp_path / "staged", max_bytes=LIMIT)
    restored = tmp_path / "staged" / "sandboxes" / "acme" / "llm" / "router" / "data"
    assert (restored / "prices.json").read_text() == '{"a": 1}'
    assert not (restored / "link").exists()


# --- swapping in -----------------------------------------------------------------------------


def test_swap_in_replaces_the_store_and_keeps_the_old_one(tmp_path):
    data = tmp_path / "store"
    old = Engine.open(data, durability="none", seed=1)
    old.install(ROUTER, options=["a", "b"]).decide("ctx")
    old_digest = old.state_digest()

    other = Engine.open(tmp_path / "other", durability="none", seed=2)
    capsule = other.install(PRICED, options=["x", "y", "z"])
    capsule.feedback(capsule.decide("ctx").decision_id, 1.0)
    out = io.BytesIO()
    info = write_backup(other, out)
    other.close()
    stage_restore(io.BytesIO(out.getvalue()), tmp_path / "staged", max_bytes=LIMIT)

    with pytest.raises(StorageError, match="still open"):
        swap_in(tmp_path / "staged", data)       # the engine on it must be closed first
    assert (tmp_path / "staged").is_dir() and sorted(os.listdir(tmp_path)) == ["other", "staged", "store"]
    old.close()

    kept = swap_in(tmp_path / "staged", data)
    assert kept.parent == tmp_path and kept.name.startswith("store.before-restore-")
    assert not (tmp_path / "staged").exists()
    with Engine.open(data, durability="none") as restored:
        assert restored.state_digest() == info.state_digest and PRICED in restored
    with Engine.open(kept, durability="none") as previous:
        assert previous.state_digest() == old_digest and ROUTER in previous


def test_swap_in_refuses_a_staging_dir_that_holds_no_store(tmp_path):
    (tmp_path / "store" / "wal").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match="staging_dir"):
        swap_in(tmp_path / "empty", tmp_path / "store")
    assert sorted(os.listdir(tmp_path)) == ["empty", "store"]


# --- property: any history, any cut ----------------------------------------------------------

OPS = st.lists(st.tuples(st.sampled_from(["decide", "feedback"]), st.integers(0, 1), st.integers(0, 3)),
               min_size=1, max_size=40)


@settings(max_examples=8, deadline=None)
@given(ops=OPS, cut=st.floats(0, 1))
def test_a_bundle_restores_the_state_at_its_cut_for_any_history(ops, cut):
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        engine = Engine.open(root / "store", durability="none")
        capsules = [engine.install(ROUTER, options=["a", "b"]), engine.install(PRICED, options=["x", "y", "z"])]
        pending = []
        made = []

        def apply(op):
            kind, which, context = op
            if kind == "decide" or not pending:
                d = capsules[which].decide(f"ctx{context}")
                pending.append((which, d.decision_id))
                made.append((which, d.decision_id))
            else:
                index, decision_id = pending.pop(context % len(pending))
                capsules[index].feedback(decision_id, float(context % 2))

        split = int(cut * len(ops))
        for op in ops[:split]:
            apply(op)
        digest = engine.state_digest()
        before = len(made)
        out = io.BytesIO()
        info = write_backup(engine, out)
        for op in ops[split:]:
            apply(op)
        engine.close()

        assert info.state_digest == digest
        restored = restore_into(out.getvalue(), root / "restored")
        try:
            assert restored.state_digest() == digest
            for which, decision_id in made[before:]:
                with pytest.raises(UnknownDecision):
                    restored.capsule(capsules[which].name).feedback(decision_id, 1.0)
        finally:
            restored.close()
