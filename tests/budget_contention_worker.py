"""Child process for test_budget_contention.py: money moved by several processes at once.

``budget_contention_worker.py storm CONFIG N`` is worker N of the storm;
``budget_contention_worker.py race CONFIG N`` is racer N of the settle race. CONFIG is a
JSON file the test wrote (arena path, barrier files, progress file, per-worker settings).

Each worker opens the arena with its implementation ("cython": syntra_core.budget.Arena,
"atomic": syntra.budget.atomic_arena.AtomicArena), touches its ready file, waits for the
start file (the barrier), runs, and writes a JSON result file describing exactly what the
arena acknowledged to it. Any exception that is not one of the refusals the operation may
legitimately get is recorded in ``failures``; the test asserts there are none. The process
exits 0 unless the harness itself broke (then 3, with a traceback on stderr).

Pacing: the Cython arena is ~300x faster than the atomics2 one, so left alone the Cython
workers would finish before the Python ones had started. Every worker publishes how many
operations it has done in a small shared "progress" file (one int64 per worker); a Cython
worker does not start operation k until some atomics2 worker has done k, so the two kinds
interleave for the whole run.
"""

import json
import mmap
import os
import random
import sys
import time
import traceback

from syntra_core.budget import (
    Arena,
    ExposureCapExceeded,
    InsufficientFunds,
    ReservationExpired,
    ReservationSettled,
    ReservationsFull,
    UnknownReservation,
)

from syntra.budget.atomic_arena import AtomicArena

IMPLEMENTATIONS = {"cython": Arena, "atomic": AtomicArena}
BARRIER_TIMEOUT = 60.0
PACE_TIMEOUT = 60.0
MAX_FAILURES = 50           # keep the result file small if something goes badly wrong
MAX_OWN_HOLDS = 48          # past this, a reserve turns into a settle
SAMPLE_EVERY = 25           # ops between account() samples
PIN = 1 << 62               # in ref_b: a hold nobody settles, so some are open at the end
PIN_CHANCE = 0.005

# ttl choices: (weight, seconds). 1e-4 s lapses before an atomics2 commit can get to it.
TTLS = [(0.20, 1e-4), (0.10, 0.003), (0.70, 60.0)]


class Progress:
    """One int64 per worker in a shared file; plain aligned 8-byte loads and stores."""

    def __init__(self, path):
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), os.fstat(f.fileno()).st_size)
        self._words = memoryview(self._map).cast("q")

    def set(self, worker, value):
        self._words[worker] = value

    def get(self, worker):
        return self._words[worker]


def barrier(config, me):
    with open(config["ready"].format(me), "w"):
        pass
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while not os.path.exists(config["start"]):
        if time.monotonic() > deadline:
            raise TimeoutError("start file never appeared")
        time.sleep(0.0005)


def pace(progress, leaders, k, nap=0.00005):
    """Wait until one of ``leaders`` has done ``k`` operations; between
    looks, sleep ``nap`` seconds (0: spin, yielding the CPU each time)."""
    if not leaders:
        return
    deadline = None
    while max(progress.get(j) for j in leaders) < k:
        if deadline is None:
            deadline = time.monotonic() + PACE_TIMEOUT
        elif time.monotonic() > deadline:
            raise TimeoutError(f"workers {leaders} stopped before operation {k}")
        if nap:
            time.sleep(nap)
        else:
            os.sched_yield()    # spin, but let a descheduled racer have the core


def pick_ttl(rng):
    r = rng.random()
    for weight, ttl in TTLS:
        if r < weight:
            return ttl
        r -= weight
    return TTLS[-1][1]


def pick_actual(rng, amount):
    """Below, equal to, or above the hold (each a third of the time)."""
    r = rng.random()
    if r < 1 / 3:
        return rng.randrange(0, amount)
    if r < 2 / 3:
        return amount
    return amount + rng.randint(1, amount)


# ---------------------------------------------------------------------------------------
# The storm.

class Storm:
    def __init__(self, config, me):
        self.config = config
        self.me = me
        spec = config["workers"][me]
        self.impl = spec["impl"]
        self.rng = random.Random(spec["seed"])
        self.ops = config["ops"]
        self.caps = [cap for _, _, cap in config["accounts"]]
        self.n_accounts = len(config["accounts"])
        self.arena = IMPLEMENTATIONS[self.impl].open(config["arena"])
        self.progress = Progress(config["progress"])
        self.leaders = [j for j, w in enumerate(config["workers"])
                        if w["impl"] == "atomic"] if self.impl == "cython" else []
        self.own = []                   # [id, account, amount] of my holds not known settled
        self.tallies = {k: [0] * self.n_accounts for k in ("topped_up", "committed", "reserved")}
        self.reserves = []              # [id, account, amount]
        self.settlements = []           # [id, kind, account, amount, settled]
        self.counts = {}
        self.failures = []
        self.samples = 0
        self.seq = 0

    def count(self, what):
        self.counts[what] = self.counts.get(what, 0) + 1

    def fail(self, what):
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(what)
        self.count("failure")

    def unexpected(self, op, exc):
        self.fail(f"{op}: unexpected {type(exc).__name__}: {exc}")

    def forget(self, index):
        own = self.own
        own[index], own[-1] = own[-1], own[index]
        own.pop()

    def run(self):
        barrier(self.config, self.me)
        started = time.monotonic()
        rng = self.rng
        try:
            for k in range(self.ops):
                pace(self.progress, self.leaders, k)
                r = rng.random()
                if r < 0.38:
                    if len(self.own) >= MAX_OWN_HOLDS:
                        self.settle_own(commit=rng.random() < 0.6)
                    else:
                        self.reserve()
                elif r < 0.58:
                    self.settle_own(commit=True)
                elif r < 0.70:
                    self.settle_own(commit=False)
                elif r < 0.82:
                    self.top_up()
                elif r < 0.88:
                    self.expire()
                else:
                    self.settle_other(commit=rng.random() < 0.5)
                if k % SAMPLE_EVERY == 0:
                    self.sample()
                self.progress.set(self.me, k + 1)
        finally:
            self.progress.set(self.me, self.ops)   # never leave a Cython worker waiting
        elapsed = time.monotonic() - started
        self.arena.close()
        return {
            "worker": self.me, "impl": self.impl, "ops": self.ops, "seconds": elapsed,
            "tallies": self.tallies, "reserves": self.reserves,
            "settlements": self.settlements, "counts": self.counts,
            "failures": self.failures, "samples": self.samples,
            "open_at_exit": self.own,
        }

    # -- operations --------------------------------------------------------------------

    def reserve(self):
        rng = self.rng
        account = rng.randrange(self.n_accounts)
        # Mostly small holds; now and then a big one, to run into caps and empty accounts.
        amount = rng.randint(1, 4_000) if rng.random() < 0.9 else rng.randint(20_000, 120_000)
        pinned = rng.random() < PIN_CHANCE
        if pinned:
            amount = rng.randint(1, 500)
        self.seq += 1
        try:
            rid = self.arena.reserve(account, amount, 600.0 if pinned else pick_ttl(rng),
                                     ref_a=self.me + 1, ref_b=self.seq | (PIN if pinned else 0))
        except InsufficientFunds:
            self.count("reserve_insufficient")
            return
        except ExposureCapExceeded:
            self.count("reserve_cap")
            return
        except ReservationsFull:
            self.count("reserve_full")
            return
        except Exception as exc:  # noqa: BLE001 - any other error fails the test
            self.unexpected("reserve", exc)
            return
        self.count("reserve_ok")
        self.reserves.append([rid, account, amount])
        self.tallies["reserved"][account] += amount
        if pinned:
            self.count("reserve_pinned")
        else:
            self.own.append([rid, account, amount])

    def settle_own(self, commit):
        if not self.own:
            self.count("settle_own_none")
            return
        index = self.rng.randrange(len(self.own))
        rid, account, amount = self.own[index]
        outcome = self.settle(rid, account, amount, commit, "own")
        if outcome != "kept":
            self.forget(index)

    def settle_other(self, commit):
        try:
            others = [h for h in self.arena.reservations()
                      if h.ref_a != self.me + 1 and h.state == "held" and not h.ref_b & PIN]
        except Exception as exc:  # noqa: BLE001 - any other error fails the test
            self.unexpected("reservations", exc)
            return
        if not others:
            self.count("settle_other_none")
            return
        h = self.rng.choice(others)
        if not 1 <= h.ref_a <= len(self.config["workers"]):
            self.fail(f"reservations() gave a hold with ref_a {h.ref_a}: {h}")
            return
        self.settle(h.id, h.account, h.amount, commit, "other")

    def settle(self, rid, account, amount, commit, whose):
        """Commit or release ``rid`` and record what the arena acknowledged. Returns
        "settled" (by this call, including an expiry it did), "gone" (someone else had),
        or "kept" (the hold is still held: a refused overrun)."""
        rng = self.rng
        kind = "commit" if commit else "release"
        actual = pick_actual(rng, amount) if commit else None
        try:
            if commit:
                got = self.arena.commit(rid, actual)
            else:
                got = self.arena.release(rid)
        except InsufficientFunds:
            if commit and actual > amount:
                self.count(f"{kind}_{whose}_insufficient")
                return "kept"
            self.fail(f"{kind} {rid} of {amount} at {actual}: InsufficientFunds below the hold")
            return "kept"
        except ReservationSettled:
            self.count(f"{kind}_{whose}_settled")
            return "gone"
        except ReservationExpired as exc:
            if (exc.reservation_id, exc.account, exc.amount) != (rid, account, amount):
                self.fail(f"{kind} {rid}: ReservationExpired says "
                          f"{(exc.reservation_id, exc.account, exc.amount)}, "
                          f"the hold was {(rid, account, amount)}")
            if exc.expired_here:
                self.count(f"{kind}_{whose}_expired_here")
                self.settlements.append([rid, "expire", account, amount, 0])
                return "settled"
            self.count(f"{kind}_{whose}_expired_before")
            return "gone"
        except UnknownReservation as exc:
            if whose == "own":
                self.unexpected(f"{kind} own {rid}", exc)
            else:
                self.count(f"{kind}_{whose}_unknown")
            return "gone"
        except Exception as exc:  # noqa: BLE001 - any other error fails the test
            self.unexpected(f"{kind} {whose} {rid}", exc)
            return "gone"
        if commit:
            if got != actual:
                self.fail(f"commit {rid} at {actual} returned {got}")
            self.tallies["committed"][account] += actual
            self.settlements.append([rid, "commit", account, amount, actual])
        else:
            if got != amount:
                self.fail(f"release {rid} of {amount} returned {got}")
            self.settlements.append([rid, "release", account, amount, 0])
        self.count(f"{kind}_{whose}_ok")
        return "settled"

    def top_up(self):
        account = self.rng.randrange(self.n_accounts)
        amount = self.rng.randint(1, 3_000)
        try:
            self.arena.top_up(account, amount)
        except Exception as exc:  # noqa: BLE001 - any other error fails the test
            self.unexpected("top_up", exc)
            return
        self.count("top_up_ok")
        self.tallies["topped_up"][account] += amount

    def expire(self):
        try:
            expired = self.arena.expire_due()
        except Exception as exc:  # noqa: BLE001 - any other error fails the test
            self.unexpected("expire_due", exc)
            return
        self.count("expire_calls")
        mine = {}
        for h in expired:
            if h.state != "expired" or h.settled != 0:
                self.fail(f"expire_due returned {h}")
            self.settlements.append([h.id, "expire", h.account, h.amount, 0])
            self.count("expired_by_sweep")
            if h.ref_a == self.me + 1:
                mine[h.id] = h
        if mine:
            kept = []
            for hold in self.own:
                h = mine.get(hold[0])
                if h is None:
                    kept.append(hold)
                elif (h.account, h.amount) != (hold[1], hold[2]):
                    self.fail(f"expire_due gave {h} for my hold {hold}")
            self.own = kept

    def sample(self):
        account = self.rng.randrange(self.n_accounts)
        try:
            a = self.arena.account(account)
        except Exception as exc:  # noqa: BLE001 - any other error fails the test
            self.unexpected("account", exc)
            return
        self.samples += 1
        cap = self.caps[account]
        if a.remaining < 0 or a.reserved < 0 or a.committed < 0 or a.topped_up < 0:
            self.fail(f"negative field in sample {a}")
        if cap is not None and a.reserved > cap:
            self.fail(f"reserved over the cap {cap} in sample {a}")
        if a.exposure_cap != (cap if cap is not None else (1 << 63) - 1):
            self.fail(f"exposure cap changed in sample {a}")


# ---------------------------------------------------------------------------------------
# The race: both racers walk the same holds in the same order, one committing each, the
# other releasing it. Neither starts hold k before the other has finished hold k-1, so the
# two really do reach for each hold at once, and either can win it.

def race(config, me):
    spec = config["workers"][me]
    impl = spec["impl"]
    rng = random.Random(spec["seed"])
    arena = IMPLEMENTATIONS[impl].open(config["arena"])
    progress = Progress(config["progress"])
    other = 1 - me
    holds = config["holds"]             # [id, account, amount, actual]
    won, lost, failures = [], 0, []
    jitter = spec["jitter_s"]
    barrier(config, me)
    try:
        for k, (rid, account, amount, actual) in enumerate(holds):
            # Both start hold k together (spinning); the Cython racer then waits a random
            # while, since the atomics2 one needs tens of microseconds to reach its CAS.
            # How long it waits adapts (longer after a win, shorter after a loss), so
            # each hold stays close to a coin toss on a machine of any speed.
            pace(progress, [other], k, nap=0)
            if jitter:
                wait_until = time.perf_counter() + rng.uniform(0, jitter)
                while time.perf_counter() < wait_until:
                    pass
            try:
                if spec["role"] == "commit":
                    got = arena.commit(rid, actual)
                    if got != actual:
                        failures.append(f"commit {rid} at {actual} returned {got}")
                else:
                    got = arena.release(rid)
                    if got != amount:
                        failures.append(f"release {rid} of {amount} returned {got}")
                won.append(rid)
                jitter = min(jitter * 1.25, 0.02)
            except ReservationSettled:
                lost += 1
                jitter = max(jitter / 1.25, 1e-6) if jitter else 0
            except Exception as exc:  # noqa: BLE001 - any other error fails the test
                failures.append(f"{spec['role']} {rid}: unexpected {type(exc).__name__}: {exc}")
            progress.set(me, k + 1)
    finally:
        progress.set(me, len(holds))
    arena.close()
    return {"worker": me, "impl": impl, "role": spec["role"], "won": won, "lost": lost,
            "failures": failures[:MAX_FAILURES], "jitter_s": jitter}


def main():
    mode, config_path, me = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(config_path) as f:
        config = json.load(f)
    try:
        result = Storm(config, me).run() if mode == "storm" else race(config, me)
    except BaseException:  # noqa: BLE001 - the harness broke: say so, exit 3
        traceback.print_exc()
        sys.exit(3)
    tmp = config["result"].format(me) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, config["result"].format(me))


if __name__ == "__main__":
    main()
