"""The two arena implementations agree exactly on the same memory.

One random sequence of operations runs twice: once entirely through the Cython ``Arena``,
once alternating between the Cython ``Arena`` and the ``atomics2`` ``AtomicArena`` mapped on
the same file. Every result and every refusal must match, and so must the files, byte for
byte.
"""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from syntra_core.budget import Arena, BudgetError, InvalidAmount, UnknownAccount

from syntra.budget.atomic_arena import AtomicArena
from syntra.budget.verify import check_invariants

NOW = 1_800_000_000 * 10**9
SECOND = 10**9


def play(arenas, seed, steps):
    """Run ``steps`` seeded operations, taking turns over ``arenas``; the outcome of each."""
    rng = random.Random(seed)
    now, holds, outcomes = NOW, [], []
    first = arenas[0]
    for name, funds, cap in (("a", 5_000, None), ("b", 800, 600), ("c", 0, None)):
        outcomes.append(first.open_account(name, funds, cap))
    for step in range(steps):
        arena = arenas[step % len(arenas)]
        now += rng.choice([0, 0, 1, 30]) * SECOND
        op = rng.choice(["reserve", "reserve", "commit", "release", "top_up", "expire", "bad"])
        account, amount = rng.randrange(3), rng.choice([1, 50, 200, 700, 2_000, 2**63 - 1])
        try:
            if op == "reserve":
                rid = arena.reserve(account, amount, rng.choice([5, 60]), ref_a=step, now_ns=now)
                holds.append(rid)
                outcome = ("reserved", rid)
            elif op in ("commit", "release") and holds:
                rid = rng.choice(holds)
                if op == "commit":
                    outcome = ("committed", arena.commit(rid, rng.choice([0, amount, 100]), now_ns=now))
                else:
                    outcome = ("released", arena.release(rid, now_ns=now))
            elif op == "top_up":
                outcome = ("topped", arena.top_up(account, amount))
            elif op == "expire":
                outcome = ("expired", [h.id for h in arena.expire_due(now_ns=now)])
            else:
                outcome = ("bad", arena.reserve(account, rng.choice([0, -5, 1.5, float("nan")]), 5, now_ns=now))
        except BudgetError as refusal:
            outcome = ("refused", type(refusal).__name__)
        outcomes.append(outcome)
    return outcomes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_mixed_implementations_match_the_cython_one(tmp_path_factory, seed):
    directory = tmp_path_factory.mktemp("interop")
    alone, mixed = directory / "alone", directory / "mixed"
    with Arena.create(alone, accounts=4, reservations=8) as arena:
        expected = play([arena], seed, 120)
    with Arena.create(mixed, accounts=4, reservations=8) as native, AtomicArena.open(mixed) as python:
        got = play([native, python], seed, 120)
        assert native.accounts() == python.accounts()
        assert native.reservations() == python.reservations()
        assert check_invariants(python.accounts(), python.reservations()) == []
    assert got == expected
    assert mixed.read_bytes() == alone.read_bytes()


@pytest.mark.parametrize("writer", [Arena, AtomicArena])
def test_each_reads_what_the_other_wrote(tmp_path, writer):
    path = tmp_path / "arena"
    Arena.create(path, accounts=2, reservations=4).close()
    reader = AtomicArena if writer is Arena else Arena
    with writer.open(path) as w:
        account = w.open_account("llm", 1_000, 900)
        hold = w.reserve(account, 300, 60, ref_a=7, ref_b=9)
        w.commit(w.reserve(account, 100, 60), 40)
        w.top_up(account, 5)
    with reader.open(path) as r:
        assert r.find_account("llm") == account
        assert r.account(account) == (account, "llm", 1_000, 665, 300, 40, 900, 5)
        assert [tuple(h)[:3] + tuple(h)[4:] for h in r.reservations()] == [(hold, account, 300, "held", 0, 7, 9)]
        assert r.release(hold) == 300


@pytest.mark.parametrize("implementation", [Arena, AtomicArena])
@pytest.mark.parametrize("account", [True, -1, 2**63, 1.5, "0", None])
def test_a_bad_account_is_unknown_in_both(tmp_path, implementation, account):
    path = tmp_path / "arena"
    Arena.create(path, accounts=2, reservations=4).close()
    with implementation.open(path) as arena:
        arena.open_account("a", 100)
        arena.open_account("b", 100)
        for call in (lambda: arena.reserve(account, 5, 60), lambda: arena.top_up(account, 5),
                     lambda: arena.account(account)):
            with pytest.raises(UnknownAccount):
                call()
        assert [a.remaining for a in arena.accounts()] == [100, 100]


@pytest.mark.parametrize("implementation", [Arena, AtomicArena])
@pytest.mark.parametrize("ref", [-1, 2**64, 1.0, True])
def test_a_bad_reference_is_an_invalid_amount_in_both(tmp_path, implementation, ref):
    path = tmp_path / "arena"
    Arena.create(path, accounts=1, reservations=4).close()
    with implementation.open(path) as arena:
        account = arena.open_account("a", 100)
        with pytest.raises(InvalidAmount, match="ref_b"):
            arena.reserve(account, 5, 60, ref_b=ref)
        assert arena.account(account).reserved == 0
