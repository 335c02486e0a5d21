"""Child process for test_learning_durable.py: a learning capsule under traffic from 4 threads.

The capsule decides from features, runs ``auto`` (the meta-bandit over the linear rules and
Thompson sampling) and may refuse. Prints ``D <id>`` once a decision is acknowledged
(refused ones too: they keep their id) and ``F <id>`` once its feedback is, flushing each
line, until it is killed. Some decisions never get feedback.
"""

import random
import sys
import threading

from syntra import Engine

NAME = "tenants/t/jobs/j/capsules/learner"
LEARNING = {
    "contextSpec": {"kind": "features", "features": {
        "hour": {"type": "cyclic", "period": 24},
        "load": {"type": "continuous", "range": [0, 100]},
        "mobile": {"type": "boolean"},
        "tier": {"type": "categorical", "values": ["free", "pro", "enterprise"]},
    }},
    "warmup": {"feedbacks": 10},
    "linear": {"samples": 8},
    "refusal": {"enabled": True, "window": 40, "min_calibration": 10, "max_interval_width": 0.9,
                "ood_threshold": 2.5},
}


def main(path: str) -> None:
    engine = Engine.open(path, seed=29, checkpoint_every=150, commit_window_us=100)
    if NAME not in engine:
        cap = engine.install(NAME, options=["a", "b", "c"], learning=LEARNING)
        # Past warmup before the first kill, so every run exercises the active policy.
        world = random.Random(0)
        for _ in range(12):
            d = cap.decide(features=features(world))
            cap.feedback(d.decision_id, float(world.random() < 0.5))
    cap = engine.capsule(NAME)
    lock = threading.Lock()

    def emit(line: str) -> None:
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def worker(index: int) -> None:
        world = random.Random(index * 7919 + len(path))
        while True:
            d = cap.decide(features=features(world))
            emit(f"D {d.decision_id}")
            if world.random() < 0.7:
                cap.feedback(d.decision_id, float(world.random() < 0.3 + 0.2 * d.option_index))
                emit(f"F {d.decision_id}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(4)]
    print("READY", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def features(world: random.Random) -> dict:
    tier = "enterprise" if world.random() < 0.03 else world.choice(["free", "pro"])
    return {"hour": world.uniform(0, 24), "load": world.uniform(0, 100), "tier": tier,
            "mobile": world.random() < 0.4}


if __name__ == "__main__":
    main(sys.argv[1])
