"""Batches: many decisions or outcomes in one call, each item succeeding or failing alone.

A batch must decide exactly as the same calls one by one would (checked against a twin
engine with the same seed), put each bad item's error in its slot without touching the
others, and, on a durable engine, acknowledge only once every record is synced, with one
wait for the whole batch rather than one per item.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from syntra_core.budget import InsufficientFunds

from syntra import Engine
from syntra.errors import (
    DuplicateFeedback,
    InvalidArgument,
    InvalidContext,
    InvalidFeedback,
    InvalidReward,
    StorageError,
    UnknownDecision,
)
from syntra.verify import verify_store

NAME = "tenants/acme/jobs/batch/capsules/router"
OPTIONS = ["a", "b", "c"]
FAST = {"durability": "none"}


def requests_for(n: int, seed: int = 1) -> list[dict]:
    world = random.Random(seed)
    return [{"context_key": f"k{world.randrange(4)}"} for _ in range(n)]


def seen(d):
    return d.option, d.propensity, d.context_key, d.sequence


@pytest.fixture(params=["memory", "durable"])
def engines(request, tmp_path):
    """(engine under test, an in-memory twin with the same seed)."""
    engine = Engine.memory(seed=4) if request.param == "memory" else Engine.open(tmp_path / "db", seed=4, **FAST)
    try:
        yield engine, Engine.memory(seed=4)
    finally:
        engine.close()


@pytest.mark.parametrize("learning", [None, {}], ids=["plain", "auto"])
def test_a_batch_decides_and_learns_as_the_same_calls_one_by_one(engines, learning):
    engine, twin = engines
    extra = {} if learning is None else {"learning": learning}
    cap = engine.install(NAME, options=OPTIONS, **extra)
    single = twin.install(NAME, options=OPTIONS, **extra)
    world = random.Random(3)
    for round_ in range(5):
        batch = requests_for(50, seed=round_)
        decided = cap.decide_many(batch)
        assert [seen(d) for d in decided] == [seen(single.decide(**r)) for r in batch]
        rewards = [float(world.random() < 0.3 + 0.3 * d.option_index) for d in decided]
        assert cap.feedback_many([{"decision_id": d.decision_id, "reward": r}
                                  for d, r in zip(decided, rewards)]) == [None] * len(decided)
        twin_decided = single._learner   # the twin's pending decisions, fed the same rewards
        for d, r in zip(decided, rewards):
            single.feedback(twin_decided.decision_id(d.sequence), r)
    assert cap.report()["contexts"] == single.report()["contexts"]
    assert cap.pending == 0


def test_a_bad_item_fails_alone(engines):
    engine, twin = engines
    cap = engine.install(NAME, options=OPTIONS)
    single = twin.install(NAME, options=OPTIONS)
    batch = [{"context_key": "k"}, "k", {"context_key": 5}, {"context_key": "k", "colour": "red"},
             {"context_key": "x" * 300}, {"context_key": "k", "features": {"f": 1.0}},
             {"context_key": "k", "input": {"a": 1}}, {}, {"context_key": "j"}]
    out = cap.decide_many(batch)
    assert len(out) == len(batch)
    assert isinstance(out[1], InvalidArgument) and out[1].field == "item"
    assert isinstance(out[2], InvalidContext) and isinstance(out[4], InvalidContext)
    assert isinstance(out[3], InvalidArgument) and out[3].field == "colour"
    assert isinstance(out[5], InvalidContext) and isinstance(out[6], InvalidContext)
    good = [out[0], out[7], out[8]]
    assert [seen(d) for d in good] == [seen(single.decide("k")), seen(single.decide("")), seen(single.decide("j"))]
    assert cap.decisions == 3


def test_bad_feedback_items_fail_alone_and_change_nothing(engines):
    engine, _ = engines
    cap = engine.install(NAME, options=OPTIONS)
    first, second, third = cap.decide_many(requests_for(3))
    foreign = Engine.memory().install(NAME, options=OPTIONS).decide("k").decision_id
    out = cap.feedback_many([
        {"decision_id": first.decision_id, "reward": 1.0},
        {"decision_id": first.decision_id, "reward": 1.0},            # a duplicate in the same batch
        {"decision_id": second.decision_id, "reward": 0.5},           # not 0 or 1
        {"decision_id": second.decision_id, "reward": float("nan")},
        {"decision_id": foreign, "reward": 1.0},
        {"decision_id": "nope", "reward": 1.0},
        {"decision_id": third.decision_id, "reward": 1.0, "taken_option": "a"},
        {"reward": 1.0},
        {"decision_id": third.decision_id, "reward": 1.0, "weight": 2},
        None,
        {"decision_id": second.decision_id, "reward": 0.0},
    ])
    assert out[0] is None and out[10] is None
    assert isinstance(out[1], DuplicateFeedback)
    assert isinstance(out[2], InvalidReward) and isinstance(out[3], InvalidReward)
    assert isinstance(out[4], UnknownDecision) and isinstance(out[5], UnknownDecision)
    assert isinstance(out[6], InvalidFeedback) and out[6].field == "taken_option"
    assert isinstance(out[7], InvalidArgument) and out[7].field == "decision_id"
    assert isinstance(out[8], InvalidArgument) and out[8].field == "weight"
    assert isinstance(out[9], InvalidArgument) and out[9].field == "item"
    assert cap.pending == 1 and cap.is_pending(third.decision_id)
    assert sum(sum(c["pulls"].values()) for c in cap.report()["contexts"].values()) == 2


def test_a_batch_must_be_a_list(engines):
    engine, _ = engines
    cap = engine.install(NAME, options=OPTIONS)
    for batch in ({"context_key": "k"}, "k", None):
        with pytest.raises(InvalidArgument, match="must be a list"):
            cap.decide_many(batch)
        with pytest.raises(InvalidArgument, match="must be a list"):
            cap.feedback_many(batch)
    assert cap.decide_many([]) == [] and cap.feedback_many([]) == []


def test_async_batches_decide_and_learn_like_sync_ones(engines):
    engine, twin = engines
    cap = engine.install(NAME, options=OPTIONS, learning={})
    single = twin.install(NAME, options=OPTIONS, learning={})

    async def run():
        decided = await cap.decide_many_async(requests_for(40))
        outcomes = await cap.feedback_many_async([{"decision_id": d.decision_id, "reward": 1.0} for d in decided])
        return decided, outcomes

    decided, outcomes = asyncio.run(run())
    expected = single.decide_many(requests_for(40))
    assert [seen(d) for d in decided] == [seen(d) for d in expected]
    assert outcomes == [None] * 40
    single.feedback_many([{"decision_id": d.decision_id, "reward": 1.0} for d in expected])
    assert cap.report()["contexts"] == single.report()["contexts"]


def test_a_durable_batch_is_synced_before_it_returns_with_one_wait(tmp_path):
    engine = Engine.open(tmp_path, seed=2, durability="fsync", commit_window_us=200)
    cap = engine.install(NAME, options=OPTIONS)
    wal = engine._store.wal
    syncs = wal.stats.syncs
    decided = cap.decide_many(requests_for(300))
    assert wal.durable_sequence == wal.next_sequence - 1       # every record synced on return
    outcomes = cap.feedback_many([{"decision_id": d.decision_id, "reward": 1.0} for d in decided])
    assert wal.durable_sequence == wal.next_sequence - 1 and outcomes == [None] * 300
    # 600 records, all submitted before the one wait: a handful of group commits, not 600.
    assert wal.stats.syncs - syncs <= 10, wal.stats
    digest = engine.state_digest()
    engine.close(checkpoint=False)
    engine = Engine.open(tmp_path)
    assert engine.state_digest() == digest
    engine.close()
    assert verify_store(tmp_path).ok


def test_a_failing_store_fails_the_whole_batch(tmp_path):
    engine = Engine.open(tmp_path, seed=2, **FAST)
    cap = engine.install(NAME, options=OPTIONS)
    d = cap.decide("k")
    engine.close()
    with pytest.raises(StorageError):
        cap.decide_many(requests_for(3))
    with pytest.raises(StorageError):
        cap.feedback_many([{"decision_id": d.decision_id, "reward": 1.0}])


def test_budgeted_batches_hold_and_settle_every_item(tmp_path):
    engine = Engine.open(tmp_path, seed=2, **FAST)
    engine.budget.open_account("llm", 100_000)
    costs = {"a": 1_000, "b": 2_000, "c": 3_000}
    cap = engine.install(NAME, options=OPTIONS, budget={"account": "llm", "costs": costs})
    decided = cap.decide_many(requests_for(10))
    held = sum(d.cost for d in decided)
    account = engine.budget.account("llm")
    assert held == sum(costs[d.option] for d in decided) and account.reserved == held
    spare = account.remaining
    out = cap.feedback_many([{"decision_id": d.decision_id, "reward": 1.0, "cost": 500} for d in decided[:9]]
                            + [{"decision_id": decided[9].decision_id, "reward": 1.0,
                                "cost": decided[9].cost + spare + 10_000}])
    assert out[:9] == [None] * 9 and isinstance(out[9], InsufficientFunds)
    account = engine.budget.account("llm")
    assert (account.committed, account.reserved) == (9 * 500, decided[9].cost)
    assert cap.is_pending(decided[9].decision_id)
    engine.close()
