"""Compacting the budget journal: the same state from far fewer records, crash-safe."""

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from syntra_core.wal import scan

from syntra.budget import Budget, journal
from syntra.budget.journal import MAIN_JOURNAL, NEXT_JOURNAL, PREVIOUS_JOURNAL, TOOL_JOURNALS


def state_of(budget):
    return budget.accounts(), budget.reservations(), budget.spend(), budget.arena.next_reservation_id


def records_in(directory):
    return sum(1 for _ in scan(directory))


def churn(budget, rounds, seed=1):
    """A history much longer than its live state: holds come and go."""
    rng = random.Random(seed)
    open_holds = []
    for _ in range(rounds):
        op = rng.random()
        name = rng.choice(["llm", "search"])
        if op < 0.5 or not open_holds:
            open_holds.append(budget.reserve(name, rng.randrange(1, 50), ttl=600, ref_a=rng.randrange(3)))
        elif op < 0.8:
            budget.commit(open_holds.pop(rng.randrange(len(open_holds))), rng.randrange(0, 40))
        elif op < 0.95:
            budget.release(open_holds.pop(rng.randrange(len(open_holds))))
        else:
            budget.top_up(name, rng.randrange(1, 100))


@pytest.fixture
def history(tmp_path):
    """A budget directory with ~600 journal records, a few open holds, and its state."""
    directory = tmp_path / "budget"
    with Budget.open(directory, durability="none") as budget:
        budget.open_account("llm", 1_000_000, exposure_cap=500_000)
        budget.open_account("search", 50_000)
        churn(budget, 400)
        expected = state_of(budget)
    return directory, expected


def test_compaction_keeps_the_state_and_drops_the_history(history):
    directory, expected = history
    before = records_in(directory / MAIN_JOURNAL)
    with Budget.open(directory, compact_after=10) as budget:
        assert state_of(budget) == expected
        assert budget.verify() == []
    after = records_in(directory / MAIN_JOURNAL)
    live = 2 + 2 + len(expected[1]) + len({(h.account, h.ref_a) for h in expected[1]})
    assert after < before / 4 and after <= 2 * 2 + 6 + len(expected[1]) + 1, (before, after, live)
    # The compacted generation keeps working: new records go after it, and it reopens.
    with Budget.open(directory, compact_after=10) as budget:
        assert state_of(budget) == expected
        hold = budget.reserve("llm", 7, ttl=60)
        assert hold >= expected[3]
        budget.commit(hold, 7)
        expected = state_of(budget)
    with Budget.open(directory) as budget:
        assert state_of(budget) == expected


def test_a_short_journal_is_left_alone(history):
    directory, expected = history
    before = records_in(directory / MAIN_JOURNAL)
    with Budget.open(directory) as budget:   # default threshold: far above 600 records
        assert state_of(budget) == expected
    assert records_in(directory / MAIN_JOURNAL) == before


def test_tool_journals_are_folded_in_once(history):
    directory, expected = history
    with Budget.open(directory) as owner:
        # A live owner: the command journals on the side.
        subprocess.run([sys.executable, "-m", "syntra.cli", "budget", "top-up", str(directory), "search", "333"],
                       check=True, capture_output=True)
        assert owner.account("search").topped_up == expected[0][1].topped_up + 333
        expected = state_of(owner)
    assert len(list((directory / TOOL_JOURNALS).iterdir())) == 1
    with Budget.open(directory, compact_after=10) as budget:
        assert state_of(budget) == expected
    assert list((directory / TOOL_JOURNALS).iterdir()) == []
    with Budget.open(directory) as budget:
        assert state_of(budget) == expected


@pytest.mark.parametrize("crash_at", ["first rename", "second rename", "cleanup"])
def test_a_crash_inside_compaction_loses_and_doubles_nothing(history, monkeypatch, crash_at):
    directory, expected = history
    with Budget.open(directory) as owner:
        subprocess.run([sys.executable, "-m", "syntra.cli", "budget", "top-up", str(directory), "llm", "5"],
                       check=True, capture_output=True)
        expected = state_of(owner)

    class Crash(Exception):
        pass

    renames = []
    real_rename, real_rmtree = Path.rename, shutil.rmtree

    def rename(self, target):
        renames.append(self.name)
        if (crash_at, len(renames)) in (("first rename", 1), ("second rename", 2)):
            raise Crash()
        return real_rename(self, target)

    def rmtree(path, *args, **kwargs):
        if crash_at == "cleanup" and Path(path).name == PREVIOUS_JOURNAL:
            raise Crash()
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(Path, "rename", rename)
    monkeypatch.setattr(journal.shutil, "rmtree", rmtree)
    with pytest.raises(Crash):
        Budget.open(directory, compact_after=10)
    monkeypatch.undo()

    left = {p.name for p in directory.iterdir()}
    assert NEXT_JOURNAL in left or PREVIOUS_JOURNAL in left
    with Budget.replica(directory) as replica:   # a reader sees the right generation too
        assert state_of(replica)[:3] == expected[:3]
    with Budget.open(directory) as budget:
        assert state_of(budget) == expected
        assert budget.verify() == []
    left = {p.name for p in directory.iterdir()}
    assert NEXT_JOURNAL not in left and PREVIOUS_JOURNAL not in left
    with Budget.open(directory) as budget:
        assert state_of(budget) == expected
