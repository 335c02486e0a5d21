"""Kill -9 an engine whose capsule holds costs on a budget; nothing acknowledged is lost.

After each kill the reopened engine must hold exactly the money its decisions and feedback
were acknowledged for: every acknowledged decision still pending has its hold, every
acknowledged feedback's cost is spent, the budget conserves its money, and the learned
state from checkpoint + log equals a full replay.
"""

import random
import shutil
from pathlib import Path

import pytest
from killing import run_and_kill

from syntra import DuplicateFeedback, Engine

WORKER = Path(__file__).with_name("budget_engine_worker.py")
NAME = "tenants/t/jobs/j/capsules/spend"
KILLS = 5


@pytest.mark.slow
def test_kill_minus_nine_keeps_every_acknowledged_hold_and_spend(tmp_path):
    rng = random.Random(7)
    path = tmp_path / "db"
    decided: dict[str, int] = {}    # acknowledged decision -> the cost it held
    spent: dict[str, int] = {}      # acknowledged feedback -> the cost it committed
    for round_ in range(KILLS):
        for kind, decision_id, cost in map(str.split, run_and_kill(WORKER, path, rng.uniform(0.3, 0.8), fields=3)):
            if kind == "D":
                decided[decision_id] = int(cost)
            elif kind == "F":
                spent[decision_id] = int(cost)
        assert decided, "the worker acknowledged no decision"
        with Engine.open(path) as engine:
            cap = engine.capsule(NAME)
            assert engine.budget.verify() == []
            holds = {h.ref_b: h for h in engine.budget.reservations()}
            for decision_id, cost in decided.items():
                sequence = int(decision_id[:16], 16)
                if cap.is_pending(decision_id):
                    # Not settled: its hold is there, for exactly its cost.
                    assert holds[sequence].amount == cost, decision_id
                else:
                    assert sequence not in holds, decision_id
            for decision_id in spent:
                assert not cap.is_pending(decision_id)
                with pytest.raises(DuplicateFeedback):
                    cap.feedback(decision_id, 1.0, cost=1)
            account = engine.budget.account("spend")
            # Feedback that was synced but not yet acknowledged when the kill came spends
            # too, so the acknowledged costs are a lower bound.
            assert account.committed >= sum(spent.values())
            assert sum(h.amount for h in holds.values()) == account.reserved
            recovered = engine.state_digest()
            full = tmp_path / f"full{round_}"
            shutil.copytree(path, full)
            shutil.rmtree(full / "checkpoints", ignore_errors=True)
        with Engine.open(full) as replayed:
            assert replayed.state_digest() == recovered
        shutil.rmtree(full)
