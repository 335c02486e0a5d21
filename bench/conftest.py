"""Side-by-side reporting for the benchmarks.

A benchmark calls ``record_unit_time(label, units)`` after ``benchmark(...)`` to store its
mean time per unit (a decision, a round). At the end of the run every comparison in
``COMPARISONS`` whose two sides both ran is printed as a ratio, so the thing and its
reference are always measured in the same run on the same machine.
"""

from __future__ import annotations

import pytest

_seconds_per_unit: dict[str, float] = {}

# (what is compared, candidate label, reference label); ratio = reference time / candidate time
# Syntra's default Thompson is batched (cached probabilities); River samples every round.
# The "exact" row recomputes after every observation, so both figures appear side by side.
COMPARISONS = [
    ("Thompson 5-arm round, batched Thompson, exact propensities: cap.decide+feedback vs River",
     "capsule_round", "river_round"),
    ("Thompson 5-arm round, recomputed every observation (max_staleness=0): "
     "cap.decide+feedback vs River", "capsule_round_exact", "river_round"),
    ("Thompson 5-arm round, batched Thompson, exact propensities: cap.decide+feedback "
     "vs plain Python", "capsule_round", "python_round"),
    ("Thompson 5-arm round, batched Thompson, exact propensities: raw rule in a C loop "
     "vs River", "raw_rule_round", "river_round"),
    ("Decide (fsync) vs bare grpc.aio echo, 16 unary calls in flight", "syntra_decide_unary", "grpc_echo_unary"),
    ("WAL, 16 writers x 100 B: group commit vs fsync per record", "wal_group_commit", "wal_fsync_per_record"),
    ("WAL, 16 writers x 100 B: group commit (fsync) vs no sync", "wal_group_commit", "wal_no_sync"),
    ("budget reserve+commit: Cython arena from Python vs a Python dict under a lock",
     "budget_pair_python", "budget_pair_dict_lock"),
    ("budget reserve+commit: nogil C loop vs the same calls from Python",
     "budget_pair_nogil", "budget_pair_python"),
    ("budget reserve+commit: Cython arena from Python vs the atomics2 path",
     "budget_pair_python", "budget_pair_atomics"),
    ("budget reserve+commit, 16 callers: journaled (fsync, group commit) vs no sync",
     "budget_pair_journaled", "budget_pair_journaled_nosync"),
    ("budget open after 10k settled holds: compacted journal vs the whole history",
     "budget_open_compacted", "budget_open_full_journal"),
    ("Lycan autoscaling program (64 points): cap.decide (verified once) vs lycan.run (verifies"
     " every call)", "lycan_capsule_decide", "lycan_plain_run"),
    ("LinUCB 10-feature 5-arm round: Cython select+update from Python vs numpy Sherman-Morrison",
     "linucb_round", "numpy_linucb_round"),
    (("5-arm Bernoulli round: auto capsule (3 candidates, meta-bandit, drift) cap.decide+feedback"
      " vs River ThompsonSampling pull+update"), "learning_auto_round", "learning_river_round"),
] + [
    (f"kernel, {n} options: prescribe_batch vs the plain-Python reference",
     f"kernel_{n}_options", f"reference_{n}_options")
    for n in (4, 22, 64)
]


@pytest.fixture
def record_unit_time(benchmark):
    def record(label: str, units: int) -> float | None:
        if benchmark.disabled:
            return None
        per_unit = benchmark.stats.stats.mean / units
        _seconds_per_unit[label] = per_unit
        benchmark.extra_info["ns_per_unit"] = round(per_unit * 1e9, 1)
        benchmark.extra_info["units_per_second"] = round(1.0 / per_unit)
        return per_unit

    return record


def pytest_terminal_summary(terminalreporter):
    if not _seconds_per_unit:
        return
    terminalreporter.section("per-unit times and side-by-side ratios")
    for label, seconds in sorted(_seconds_per_unit.items()):
        terminalreporter.write_line(
            f"{label:28s} {seconds * 1e9:12.1f} ns/unit {1 / seconds:16,.0f} units/s"
        )
    for title, candidate, reference in COMPARISONS:
        if candidate in _seconds_per_unit and reference in _seconds_per_unit:
            ratio = _seconds_per_unit[reference] / _seconds_per_unit[candidate]
            terminalreporter.write_line(f"{title}: {ratio:.1f}x")
