"""Calls that reach the event loop together reach the engine together (server/coalesce)."""

import asyncio

from syntra import Engine
from syntra.errors import InvalidContext, UnknownDecision
from syntra.server.coalesce import Coalescer


def commits(engine) -> int:
    """Group commits so far: the count of the WAL's records-per-commit histogram."""
    return engine.wal_histograms["batch_records"][1][-1]


def test_calls_of_one_tick_share_one_batch_and_one_commit(tmp_path):
    engine = Engine.open(tmp_path / "store")
    try:
        capsule = engine.install("tenants/t/jobs/j/capsules/c", options=["a", "b"])
        decides, feedbacks = Coalescer("decide_many_async"), Coalescer("feedback_many_async")

        async def scenario():
            before = commits(engine)
            calls = [decides.submit(capsule, {"context_key": f"k{i % 3}"}) for i in range(200)]
            bad = decides.submit(capsule, {"context_key": "x" * 5000})
            made = await asyncio.gather(*calls)
            try:
                await bad
                raise AssertionError("a bad item must fail")
            except InvalidContext:
                pass
            assert commits(engine) - before <= 2   # one commit (maybe two)
            assert len({d.decision_id for d in made}) == 200
            outcomes = await asyncio.gather(
                *[feedbacks.submit(capsule, {"decision_id": d.decision_id, "reward": 1.0}) for d in made],
                feedbacks.submit(capsule, {"decision_id": "nope", "reward": 1.0}), return_exceptions=True)
            assert outcomes[:200] == [None] * 200 and isinstance(outcomes[200], UnknownDecision)

        asyncio.run(scenario())
        assert capsule.decisions == 200 and capsule.pending == 0
    finally:
        engine.close()


def test_calls_that_arrive_during_a_commit_join_the_next_batch(tmp_path):
    engine = Engine.open(tmp_path / "store")
    try:
        capsule = engine.install("tenants/t/jobs/j/capsules/c", options=["a", "b"])
        decides = Coalescer("decide_many_async")

        async def caller(n):
            for _ in range(n):
                await decides.submit(capsule, {"context_key": "k"})

        async def scenario():
            before = commits(engine)
            await asyncio.gather(*[caller(25) for _ in range(16)])
            # 400 calls from 16 callers that each wait for their answer: batches form while
            # the previous one is synced, so far fewer commits than calls.
            assert commits(engine) - before < 200

        asyncio.run(scenario())
        assert capsule.decisions == 400
    finally:
        engine.close()
