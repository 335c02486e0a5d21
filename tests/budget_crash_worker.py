"""Child process for test_budget_crash.py: 8 threads of durable budget operations.

``budget_crash_worker.py DIR ACKS SEED`` owns the budget in DIR, opens (or finds) four
accounts and then runs reserve / commit / release / top-up from 8 threads until it is
killed. After a call returns, one line describing what was acknowledged is appended to
ACKS with a single ``os.write`` on an O_APPEND descriptor:

    O <account> <index>          the account is open (opened now or found)
    R <id> <index> <amount>      reserve acknowledged
    C <id> <settled>             commit acknowledged
    L <id>                       release acknowledged
    T <index> <amount>           top-up acknowledged

Refusals (no funds, over the cap, already settled, expired) are expected and not written.
Anything else is a failure: it is printed to stderr and the process exits with status 3,
which the test reports.
"""

import os
import random
import sys
import threading
import traceback

from syntra_core.budget import (
    BudgetRefused,
    ReservationExpired,
    ReservationSettled,
    UnknownAccount,
)

from syntra.budget import Budget

ACCOUNTS = [("a0", 2_000_000, None), ("a1", 1_000_000, 300_000), ("a2", 200_000, None),
            ("a3", 50_000, 40_000)]
TTLS = [0.002, 0.05, 1.0, 30.0, 600.0]
THREADS = 8


def main(directory: str, ack_path: str, seed: int) -> None:
    budget = Budget.open(directory, durability="fsync", commit_window_us=200)
    ack_fd = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def ack(line: str) -> None:
        os.write(ack_fd, (line + "\n").encode())

    for name, initial, cap in ACCOUNTS:
        try:
            index = budget.account(name).index
        except UnknownAccount:
            index = budget.open_account(name, initial, cap).index
        ack(f"O {name} {index}")
    names = {budget.account(name).index: name for name, _, _ in ACCOUNTS}
    indexes = sorted(names)

    pool: list[tuple[int, int]] = []  # acknowledged holds (id, amount) nobody settled yet
    pool_lock = threading.Lock()

    def take(rng: random.Random):
        with pool_lock:
            if not pool:
                return None
            # Each hold is settled by one thread (racing settlements of one id are
            # test_budget.py's business; here the point is what a kill leaves behind).
            i = rng.randrange(len(pool))
            pool[i], pool[-1] = pool[-1], pool[i]
            return pool.pop()

    def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        try:
            while True:
                op = rng.random()
                try:
                    if op < 0.42:
                        index = rng.choice(indexes)
                        amount = rng.randint(1, 20_000)
                        rid = budget.reserve(names[index], amount, ttl=rng.choice(TTLS),
                                             ref_a=n, ref_b=rng.getrandbits(64))
                        ack(f"R {rid} {index} {amount}")
                        with pool_lock:
                            pool.append((rid, amount))
                    elif op < 0.70:
                        held = take(rng)
                        if held is None:
                            continue
                        rid, amount = held
                        actual = rng.choice([0, amount, rng.randint(0, 2 * amount),
                                             rng.randint(1, amount)])
                        settled = budget.commit(rid, actual)
                        ack(f"C {rid} {settled}")
                    elif op < 0.88:
                        held = take(rng)
                        if held is None:
                            continue
                        budget.release(held[0])
                        ack(f"L {held[0]}")
                    else:
                        index = rng.choice(indexes)
                        amount = rng.randint(1, 30_000)
                        budget.top_up(names[index], amount)
                        ack(f"T {index} {amount}")
                except (BudgetRefused, ReservationSettled, ReservationExpired):
                    pass
        except BaseException:  # noqa: BLE001 - anything but a refusal fails the test
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(3)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
