"""Regret of Syntra next to River, Vowpal Wabbit and MABWiser on three simulated worlds.

The worlds, the contenders and the regret accounting live in :mod:`bench.worlds`:
a 5-arm Bernoulli world (2,200 rounds), a logistic contextual world (10 features, 3,000
rounds) and a Bernoulli world whose means are reversed half-way (4,000 rounds). Each
``test_regret`` runs one world for every contender over several seeds (one timed pass:
the figure of merit is regret, not speed), records each contender's mean expected regret
and its standard error in ``benchmark.extra_info`` and prints the table. Contenders the
installed software cannot run (a peer that is not installed, a Syntra algorithm or
learning option the engine does not have yet) appear as skipped rows with the reason.

Targets, reported and not asserted (the ``test_target_*`` items skip with the reason when
the engine cannot run what they compare yet):

* Bernoulli and linear worlds: the regret of Syntra's ``auto`` <= the best peer's best default;
* drift world: the regret of a Syntra rule with drift detection <= 0.5x the same rule without.

``--benchmark-disable`` (how CI runs bench/) or the ``CI`` environment variable selects a
reduced seed count so that the file stays well under a minute; the full counts otherwise.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The worlds module is ``bench.worlds`` (also a CLI); the repository root makes it importable
# however pytest was started.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench.worlds import FAMILIES, FULL_SEEDS, WORLDS, Report, evaluate, format_table  # noqa: E402

CI_SEEDS = {"bernoulli": 3, "linear": 2, "drift": 3}
PEER_MODULES = ("river", "vowpalwabbit", "mabwiser")

_reports: dict[tuple[str, int], Report] = {}


def _seed_count(config, world: str) -> int:
    reduced = bool(os.environ.get("CI")) or bool(config.getoption("benchmark_disable", default=False))
    return CI_SEEDS[world] if reduced else FULL_SEEDS[world]


def _report(config, world: str) -> Report:
    """The world's report from this session's ``test_regret``, or a fresh run without it."""
    key = (world, _seed_count(config, world))
    if key not in _reports:
        _reports[key] = evaluate(*key)
    return _reports[key]


@pytest.mark.parametrize("world", WORLDS)
def test_regret(benchmark, request, capsys, world):
    seeds = _seed_count(request.config, world)
    report = benchmark.pedantic(evaluate, args=(world, seeds), rounds=1, iterations=1)
    _reports[(world, seeds)] = report
    benchmark.extra_info.update(report.extra_info())
    with capsys.disabled():
        print("\n" + format_table(report))

    assert report.best("syntra") is not None, f"no Syntra contender ran: {report.skipped}"
    if world != "drift":
        # Whatever else, in a stationary world each contender's best default beats playing at
        # random: one that does not is being fed wrong rewards or contexts by its adapter.
        # (Single rules may not: greedy, which never explores, can lock onto a poor arm.)
        bests = [b for b in map(report.best, FAMILIES) if b is not None]
        worse = [(b.family, b.policy, round(b.mean, 1)) for b in bests if b.mean >= report.uniform_regret]
        assert not worse, f"no better than uniform ({report.uniform_regret:.1f}): {worse}"


def _report_target(request, capsys, world: str, index: int) -> None:
    for module in PEER_MODULES if world != "drift" else ():
        pytest.importorskip(module)
    target = _report(request.config, world).targets()[index]
    if target.status == "not evaluated":
        pytest.skip(f"{target.description}: {target.detail}")
    request.node.user_properties.append(("target", f"{target.status}: {target.detail}"))
    with capsys.disabled():
        print(f"\ntarget {target.status}: {target.description} ({target.detail})")


@pytest.mark.parametrize("world", ["bernoulli", "linear"])
def test_target_auto_vs_best_peer(request, capsys, world):
    _report_target(request, capsys, world, 0)


@pytest.mark.parametrize("rule_index", [0, 1], ids=["auto", "thompson"])
def test_target_drift_detection(request, capsys, rule_index):
    _report_target(request, capsys, "drift", rule_index)
