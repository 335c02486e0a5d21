"""Several processes, both arena implementations, one arena file: is every microcent exact?

tests/budget_contention_worker.py does the moving. The storm runs 8 processes at once (4 on
the Cython ``Arena``, 4 on the atomics2 ``AtomicArena``) doing random reserves, commits,
releases, top-ups and expiry sweeps on 4 accounts, and settling one another's holds. Each
worker writes what the arena acknowledged to it; the expected state of the arena is derived
from those acknowledgements alone and compared with what the arena says, read through both
implementations. The race has two processes settle the same 500 holds, one committing and
the other releasing each.
"""

import collections
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from syntra_core.budget import NO_CAP, Arena

from syntra.budget.atomic_arena import AtomicArena
from syntra.budget.verify import check_invariants

WORKER = Path(__file__).with_name("budget_contention_worker.py")
SRC = Path(__file__).resolve().parents[1] / "src"

# name, initial, exposure cap (None: none). a2 is poor, so reserves and overruns run out of
# funds there; a1 and a3 have caps the big holds run into. The storm spends ~5M per account.
ACCOUNTS = [("a0", 50_000_000, None), ("a1", 10_000_000, 150_000), ("a2", 200_000, None),
            ("a3", 8_000_000, 60_000)]
RESERVATIONS = 2048         # ~5x the live holds at the peak, so slots are reused often
STORM_WORKERS = ["cython", "atomic"] * 4
# 10,000 per process as specified: the atomics2 workers take ~60-500 us an op (sweeps and
# reservations() scans cost most), so the storm runs ~20 s on 2 cores.
STORM_OPS = 10_000
RACE_HOLDS = 500
NOW = 1_700_000_000_000_000_000
TIMEOUT = 150.0


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(SRC)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def _run_workers(tmp_path, mode, config):
    """Start every worker, release them together through the start file, wait for them
    all, and return their results (asserting each exited 0)."""
    config = dict(config, start=str(tmp_path / "start"), ready=str(tmp_path / "ready.{}"),
                  result=str(tmp_path / "result.{}.json"), progress=str(tmp_path / "progress"))
    n = len(config["workers"])
    with open(config["progress"], "wb") as f:
        f.write(bytes(8 * n))
    config_path = tmp_path / f"{mode}.json"
    config_path.write_text(json.dumps(config))
    procs = [subprocess.Popen([sys.executable, str(WORKER), mode, str(config_path), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
             for i in range(n)]
    try:
        deadline = time.monotonic() + 60
        while not all(os.path.exists(config["ready"].format(i)) for i in range(n)):
            dead = [p for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                pytest.fail("a worker died or hung before the barrier: "
                            + "".join(p.communicate()[1].decode() for p in dead))
            time.sleep(0.005)
        open(config["start"], "w").close()
        outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, (out, err)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"worker {i} exited {p.returncode}:\n{err.decode()}"
    results = [json.loads(Path(config["result"].format(i)).read_text()) for i in range(n)]
    for r in results:
        assert r["failures"] == [], (f"worker {r['worker']} ({r['impl']}): "
                                     f"{len(r['failures'])} failures, first: {r['failures'][:5]}")
    return results


def _open(impl, path):
    return Arena.open(path) if impl == "cython" else AtomicArena.open(path)


# ---------------------------------------------------------------------------------------
# The storm.

def _expected(results):
    """What the arena must hold, from the workers' acknowledgements only."""
    reserves = {}
    for r in results:
        for rid, account, amount in r["reserves"]:
            assert rid not in reserves, f"reservation id {rid} handed out twice"
            reserves[rid] = (account, amount)
    settled = {}
    for r in results:
        for rid, kind, account, amount, actual in r["settlements"]:
            assert rid not in settled, (
                f"reservation {rid} settled twice: {settled[rid]} and {(r['worker'], kind)}")
            assert rid in reserves, f"worker {r['worker']} settled {rid}, which nobody reserved"
            assert reserves[rid] == (account, amount), (
                f"{kind} of {rid} saw {(account, amount)}, it was reserved as {reserves[rid]}")
            if kind == "commit":
                assert actual >= 0
            else:
                assert actual == 0
            settled[rid] = (r["worker"], kind, actual)
    n = len(ACCOUNTS)
    topped = [sum(r["tallies"]["topped_up"][i] for r in results) for i in range(n)]
    committed = [sum(r["tallies"]["committed"][i] for r in results) for i in range(n)]
    reserved_total = [sum(r["tallies"]["reserved"][i] for r in results) for i in range(n)]
    # The tallies and the itemised lists must tell the same story.
    for i in range(n):
        assert reserved_total[i] == sum(a for acc, a in reserves.values() if acc == i)
        assert committed[i] == sum(actual for rid, (_, kind, actual) in settled.items()
                                   if kind == "commit" and reserves[rid][0] == i)
    open_holds = {rid: hold for rid, hold in reserves.items() if rid not in settled}
    held = [sum(a for acc, a in open_holds.values() if acc == i) for i in range(n)]
    accounts = []
    for i, (name, initial, cap) in enumerate(ACCOUNTS):
        accounts.append({
            "index": i, "name": name, "initial": initial, "topped_up": topped[i],
            "committed": committed[i], "reserved": held[i],
            "remaining": initial + topped[i] - committed[i] - held[i],
            "exposure_cap": NO_CAP if cap is None else cap})
    return accounts, reserves, settled, open_holds


def _check_storm(reader, results):
    """Every check of the storm, reading the arena through ``reader``; returns a snapshot
    of everything read, to compare across implementations."""
    accounts, holds = reader.accounts(), reader.reservations()
    assert check_invariants(accounts, holds) == []
    expected, reserves, settled, open_holds = _expected(results)
    assert [a._asdict() for a in accounts] == expected
    for a in accounts:
        assert a.remaining >= 0
        assert a.remaining + a.reserved + a.committed == a.initial + a.topped_up
    # The open holds are exactly those reserved and never settled, as they were reserved.
    assert {h.id: (h.account, h.amount) for h in holds} == open_holds
    assert all(h.state == "held" and h.settled == 0 for h in holds)
    assert len({h.id % RESERVATIONS for h in holds}) == len(holds)
    # Every id ever handed out: its slot either moved on to a later id, or says how it
    # ended, and that must be what the worker that ended it was told.
    seen = []
    for rid in sorted(reserves):
        state = reader.reservation(rid)
        seen.append(state)
        if state is None:
            continue
        assert (state.account, state.amount) == reserves[rid]
        if rid in settled:
            _, kind, actual = settled[rid]
            assert (state.state, state.settled) == (
                {"commit": "committed", "release": "released", "expire": "expired"}[kind],
                actual), f"reservation {rid}: arena says {state}, its settler {settled[rid]}"
        else:
            assert state.state == "held"
    return accounts, holds, seen


@pytest.mark.slow
def test_storm_of_processes_on_both_implementations_keeps_money_exact(tmp_path):
    """8 processes x 10,000 random operations: 4 on the Cython arena, 4 on atomics2.

    Measured on 2 cores (load average ~5 from other work): 19-21 s for the test, nearly
    all of it the atomics2 workers; the Cython ones are paced to them so that the two kinds
    overlap from the first operation to the last.
    """
    path = str(tmp_path / "arena")
    arena = Arena.create(path, accounts=len(ACCOUNTS), reservations=RESERVATIONS)
    for name, initial, cap in ACCOUNTS:
        arena.open_account(name, initial, cap)
    workers = [{"impl": impl, "seed": 7919 * (i + 1)} for i, impl in enumerate(STORM_WORKERS)]
    results = _run_workers(tmp_path, "storm", {
        "arena": path, "ops": STORM_OPS, "workers": workers,
        "accounts": [list(a) for a in ACCOUNTS]})

    snapshots = []
    try:
        for impl in ("cython", "atomic"):
            reader = _open(impl, path)
            try:
                snapshots.append(_check_storm(reader, results))
            finally:
                reader.close()
    finally:
        arena.close()
    assert snapshots[0] == snapshots[1]

    # The storm must actually have stormed: every kind of outcome, from both sides.
    counts = collections.Counter()
    by_impl = {"cython": collections.Counter(), "atomic": collections.Counter()}
    for r in results:
        counts.update(r["counts"])
        by_impl[r["impl"]].update(r["counts"])
        assert r["samples"] >= STORM_OPS // 25
    for impl, c in by_impl.items():
        for what in ("reserve_ok", "commit_own_ok", "release_own_ok", "top_up_ok",
                     "commit_other_ok", "release_other_ok", "expire_calls"):
            assert c[what] > 0, f"{impl} workers never got {what}: {dict(c)}"
    for what in ("reserve_insufficient", "reserve_cap", "commit_own_insufficient",
                 "expired_by_sweep"):
        assert counts[what] > 0, f"no {what} in the storm: {dict(counts)}"
    assert counts["commit_own_settled"] + counts["release_own_settled"] > 0   # stolen holds
    assert sum(v for k, v in counts.items() if "expired_here" in k) > 0
    _, reserves, settled, _ = _expected(results)
    assert max(reserves) > 2 * RESERVATIONS                                   # slots reused
    settlers = collections.defaultdict(set)
    for worker, _, _ in settled.values():
        settlers[results[worker]["impl"]].add(worker)
    assert len(settlers["cython"]) == 4 and len(settlers["atomic"]) == 4


# ---------------------------------------------------------------------------------------
# The race.

@pytest.mark.slow
@pytest.mark.parametrize("committer", ["cython", "atomic"])
def test_two_implementations_race_to_settle_the_same_holds(tmp_path, committer):
    """One process commits each of 500 holds while the other releases it: each is settled
    exactly once, and the account ends exactly where the winners' acknowledgements say."""
    path = str(tmp_path / "arena")
    arena = Arena.create(path, accounts=1, reservations=1024)
    initial = 10_000_000
    account = arena.open_account("race", initial)
    rng = random.Random(20240611 + (committer == "atomic"))
    holds = []
    for _ in range(RACE_HOLDS):
        amount = rng.randint(1, 5_000)
        rid = arena.reserve(account, amount, ttl=600)
        # Below, equal or above the hold; the overruns always fit (10M vs 500 x 5,000).
        actual = rng.choice([rng.randrange(0, amount), amount, amount + rng.randint(1, amount)])
        holds.append([rid, account, amount, actual])
    assert arena.account(account).reserved == sum(h[2] for h in holds)

    releaser = "atomic" if committer == "cython" else "cython"
    # The atomics2 racer takes ~50-100 us to reach its CAS; the Cython one waits a random
    # while first, up to 150 us to begin with, then adapted to keep the race even.
    jitter = {"cython": 150e-6, "atomic": 0.0}
    workers = [{"impl": committer, "role": "commit", "seed": 1, "jitter_s": jitter[committer]},
               {"impl": releaser, "role": "release", "seed": 2, "jitter_s": jitter[releaser]}]
    try:
        results = _run_workers(tmp_path, "race", {"arena": path, "workers": workers,
                                                  "holds": holds})
        committed_ids, released_ids = results[0]["won"], results[1]["won"]
        assert len(committed_ids) == len(set(committed_ids))
        assert len(released_ids) == len(set(released_ids))
        assert not set(committed_ids) & set(released_ids), "a hold was settled twice"
        assert set(committed_ids) | set(released_ids) == {h[0] for h in holds}
        assert results[0]["lost"] == len(released_ids)
        assert results[1]["lost"] == len(committed_ids)
        # Both sides won some: the race was a race, not one process going first.
        assert committed_ids and released_ids, (len(committed_ids), len(released_ids))

        by_id = {h[0]: h for h in holds}
        spent = sum(by_id[rid][3] for rid in committed_ids)
        for impl in ("cython", "atomic"):
            reader = _open(impl, path)
            try:
                a = reader.account(account)
                assert (a.remaining, a.reserved, a.committed, a.topped_up) == (
                    initial - spent, 0, spent, 0)
                assert reader.reservations() == []
                assert check_invariants(reader.accounts(), reader.reservations()) == []
                for rid in committed_ids:
                    state = reader.reservation(rid)
                    assert (state.state, state.settled) == ("committed", by_id[rid][3])
                for rid in released_ids:
                    state = reader.reservation(rid)
                    assert (state.state, state.settled) == ("released", 0)
            finally:
                reader.close()
    finally:
        arena.close()


# ---------------------------------------------------------------------------------------
# Two implementations on one file must also agree on what a reservation id is.

@pytest.mark.parametrize("op", ["commit", "release", "reservation"])
@pytest.mark.parametrize("bad_id", [True, 1.0, "1", np.uint64(1)],
                         ids=["True", "1.0", "str", "numpy"])
def test_both_implementations_treat_a_non_int_reservation_id_alike(tmp_path, op, bad_id):
    """Any integer type but bool is a reservation id, in both implementations; anything
    else is an unknown reservation, and moves no money."""
    outcomes = {}
    for impl in ("cython", "atomic"):
        path = str(tmp_path / f"arena-{impl}")
        Arena.create(path, accounts=1, reservations=8).close()
        arena = _open(impl, path)
        try:
            account = arena.open_account("a", 1_000)
            assert arena.reserve(account, 100, ttl=600, now_ns=NOW) == 1
            try:
                if op == "commit":
                    outcome = ("returned", arena.commit(bad_id, 40, now_ns=NOW))
                elif op == "release":
                    outcome = ("returned", arena.release(bad_id, now_ns=NOW))
                else:
                    outcome = ("returned", arena.reservation(bad_id))
            except Exception as exc:  # noqa: BLE001 - whatever it is, compare it
                outcome = ("raised", type(exc).__name__)
            outcomes[impl] = (outcome, arena.account(account), arena.reservation(1))
        finally:
            arena.close()
    assert outcomes["atomic"] == outcomes["cython"]
