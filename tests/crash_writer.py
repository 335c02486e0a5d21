"""Child process for test_crash.py: 8 threads of durable decisions and feedback.

Prints ``D <capsule> <id>`` after a decision is acknowledged and ``F <capsule> <id>`` after
its feedback is, flushing each line, until it is killed.
"""

import random
import sys
import threading

from syntra import Engine

NAMES = ["tenants/t/jobs/j/capsules/a", "tenants/t/jobs/j/capsules/b"]


def main(path: str) -> None:
    engine = Engine.open(path, checkpoint_every=400, commit_window_us=100)
    for name in NAMES:
        if name not in engine:
            engine.install(name, options=["x", "y", "z"])
    print("READY", flush=True)
    lock = threading.Lock()

    def emit(line: str) -> None:
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def worker(index: int) -> None:
        rng = random.Random(index)
        cap = engine.capsule(NAMES[index % 2])
        while True:
            d = cap.decide(f"ctx{rng.randrange(3)}")
            emit(f"D {cap.name} {d.decision_id}")
            if rng.random() < 0.7:
                cap.feedback(d.decision_id, float(rng.random() < 0.5))
                emit(f"F {cap.name} {d.decision_id}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main(sys.argv[1])
