"""Child process for test_engine_budget_crash.py: budgeted decisions from 4 threads.

Prints ``D <id> <cost>`` once a decision is acknowledged (``R`` for a refusal) and
``F <id> <cost>`` once its feedback, committing ``cost``, is, until it is killed.
"""

import random
import sys
import threading

from syntra import Engine

NAME = "tenants/t/jobs/j/capsules/spend"
COSTS = {"small": 100, "medium": 700, "large": 2_500}


def main(path: str) -> None:
    engine = Engine.open(path, checkpoint_every=300, commit_window_us=100)
    if not engine.budget.accounts():
        engine.budget.open_account("spend", 2_000_000, exposure_cap=60_000)
    if NAME not in engine:
        engine.install(NAME, options=list(COSTS), budget={"account": "spend", "costs": COSTS})
    cap = engine.capsule(NAME)
    lock = threading.Lock()

    def emit(line: str) -> None:
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def worker(index: int) -> None:
        rng = random.Random(index * 7919 + len(path))
        while True:
            d = cap.decide(f"ctx{rng.randrange(3)}")
            if d.refused:
                emit("R - 0")
                continue
            emit(f"D {d.decision_id} {d.cost}")
            if rng.random() < 0.6:
                actual = rng.randrange(0, 2 * d.cost)
                cap.feedback(d.decision_id, float(rng.random() < 0.5), cost=actual)
                emit(f"F {d.decision_id} {actual}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(4)]
    print("READY", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main(sys.argv[1])
