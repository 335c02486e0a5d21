"""Kill -9 a process writing durable decisions from 8 threads; nothing acknowledged is lost."""

import random
import shutil
from pathlib import Path

import pytest
from killing import run_and_kill

from syntra import DuplicateFeedback, Engine

WRITER = Path(__file__).with_name("crash_writer.py")
KILLS = 20


@pytest.mark.slow
def test_kill_minus_nine_loses_nothing_acknowledged(tmp_path):
    rng = random.Random(2026)
    path = tmp_path / "db"
    acked_decisions: dict[str, str] = {}
    acked_feedback: set[str] = set()
    for round_ in range(KILLS):
        for line in run_and_kill(WRITER, path, rng.uniform(0.05, 0.5), fields=3):
            kind, capsule, decision_id = line.split(" ")
            if kind == "D":
                acked_decisions[decision_id] = capsule
            else:
                acked_feedback.add(decision_id)
        assert acked_decisions, "the writer acknowledged nothing"
        with Engine.open(path) as engine:
            for decision_id, capsule in acked_decisions.items():
                cap = engine.capsule(capsule)
                if decision_id in acked_feedback or not cap.is_pending(decision_id):
                    # Its feedback is durable (acknowledged, or synced just before the
                    # kill): a second one is a duplicate, never an unknown decision.
                    with pytest.raises(DuplicateFeedback):
                        cap.feedback(decision_id, 1.0)
            recovered = engine.state_digest()
            # The state from checkpoint + tail equals a full replay of the log.
            full = tmp_path / f"full{round_}"
            shutil.copytree(path, full)
            shutil.rmtree(full / "checkpoints", ignore_errors=True)
        with Engine.open(full) as replayed:
            assert replayed.state_digest() == recovered
        shutil.rmtree(full)
