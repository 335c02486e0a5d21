"""Budget arena: the cost of a reserve+commit pair, four ways, in one run.

* ``budget_pair_nogil``: ``reserve_commit_loop``, the C operations in one nogil loop
  (target <= 100 ns a pair).
* ``budget_pair_python``: ``Arena.reserve`` then ``Arena.commit`` from Python (target <= 1 us).
* ``budget_pair_dict_lock``: the reference for that: the same bookkeeping as a plain Python
  dict of balances under a ``threading.Lock``, which is what in-process code would do
  without the arena (and which no other process can share).
* ``budget_pair_atomics``: the pure-Python ``atomics2`` implementation over the same memory.
* ``budget_pair_journaled`` / ``budget_pair_journaled_nosync``: ``Budget.reserve`` +
  ``Budget.commit`` from 16 threads, each record synced (group commit) before the call
  returns, and the same without the sync.
* ``budget_open_full_journal`` / ``budget_open_compacted``: opening a budget whose journal
  holds 10,000 settled holds, with and without a compaction first.

    .venv/bin/python -m pytest bench/bench_budget.py -q
"""

import shutil
import threading

import pytest
from syntra_core.budget import Arena, reserve_commit_loop

from syntra.budget import Budget
from syntra.budget.atomic_arena import AtomicArena

FUNDS = 10**15
CALLERS = 16


@pytest.fixture
def arena():
    a = Arena.anonymous()
    a.open_account("bench", FUNDS)
    yield a
    a.close()


def test_nogil_loop(benchmark, record_unit_time, arena):
    rounds = 1_000_000
    granted = benchmark.pedantic(reserve_commit_loop, args=(arena, 0, 5, rounds), rounds=5, iterations=1)
    assert granted == rounds
    record_unit_time("budget_pair_nogil", rounds)


def test_from_python(benchmark, record_unit_time, arena):
    pairs = 20_000
    reserve, commit = arena.reserve, arena.commit

    def run():
        for _ in range(pairs):
            commit(reserve(0, 5, 60), 5)

    benchmark.pedantic(run, rounds=5, iterations=1)
    assert arena.account(0).committed == 5 * pairs * (1 if benchmark.disabled else 5)
    record_unit_time("budget_pair_python", pairs)


def test_dict_under_a_lock(benchmark, record_unit_time):
    pairs = 20_000
    balances = {"bench": [FUNDS, 0, 0]}   # remaining, reserved, committed
    holds = {}
    lock = threading.Lock()
    next_id = iter(range(1, 1 << 62))

    def reserve(account, amount):
        with lock:
            funds = balances[account]
            if funds[0] < amount:
                raise ValueError("insufficient funds")
            funds[0] -= amount
            funds[1] += amount
            rid = next(next_id)
            holds[rid] = (account, amount)
            return rid

    def commit(rid, actual):
        with lock:
            account, amount = holds.pop(rid)
            funds = balances[account]
            funds[1] -= amount
            funds[0] += amount - actual
            funds[2] += actual

    def run():
        for _ in range(pairs):
            commit(reserve("bench", 5), 5)

    benchmark.pedantic(run, rounds=5, iterations=1)
    record_unit_time("budget_pair_dict_lock", pairs)


def test_atomics_path(benchmark, record_unit_time, tmp_path):
    pairs = 300
    Arena.create(tmp_path / "arena", accounts=4, reservations=1024).close()
    arena = AtomicArena.open(tmp_path / "arena")
    try:
        account = arena.open_account("bench", FUNDS)

        def run():
            for _ in range(pairs):
                arena.commit(arena.reserve(account, 5, 60), 5)

        benchmark.pedantic(run, rounds=3, iterations=1)
    finally:
        arena.close()
    record_unit_time("budget_pair_atomics", pairs)


@pytest.mark.parametrize("durability, label, per_caller", [
    ("fsync", "budget_pair_journaled", 40),
    ("none", "budget_pair_journaled_nosync", 400),
])
def test_journaled(benchmark, record_unit_time, tmp_path, durability, label, per_caller):
    budget = Budget.open(tmp_path / "budget", durability=durability)
    budget.open_account("bench", FUNDS)

    def run():
        barrier = threading.Barrier(CALLERS)

        def caller():
            barrier.wait()
            for _ in range(per_caller):
                budget.commit(budget.reserve("bench", 5, 60), 5)

        threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    try:
        benchmark.pedantic(run, rounds=3, iterations=1)
        assert budget.verify() == []
    finally:
        budget.close()
    record_unit_time(label, CALLERS * per_caller)


@pytest.fixture(scope="module")
def long_history(tmp_path_factory):
    """A budget whose journal holds 10,000 settled holds' worth of records (and 20 open)."""
    directory = tmp_path_factory.mktemp("history") / "budget"
    with Budget.open(directory, durability="none") as budget:
        budget.open_account("bench", FUNDS)
        for _ in range(10_000):
            budget.commit(budget.reserve("bench", 5, 60), 5)
        for _ in range(20):
            budget.reserve("bench", 5, 600)
    return directory


@pytest.mark.parametrize("compacted, label", [(False, "budget_open_full_journal"),
                                              (True, "budget_open_compacted")])
def test_open(benchmark, record_unit_time, tmp_path, long_history, compacted, label):
    """Opening rebuilds the arena from the journal: from the whole history, or from the
    generation a compaction wrote (the first open compacts; this times the ones after)."""
    directory = tmp_path / "budget"
    shutil.copytree(long_history, directory)
    if compacted:
        Budget.open(directory, compact_after=1_000).close()

    def reopen():
        Budget.open(directory, compact_after=10**9).close()

    benchmark.pedantic(reopen, rounds=3, iterations=1)
    record_unit_time(label, 1)
