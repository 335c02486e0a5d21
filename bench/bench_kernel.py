"""Throughput of the decision kernel.

``prescribe_batch`` over 10_000 requests for catalogs of 4, 22 and 64 options, reported as
ns per decision (the target for 22 options is 200 ns). A second group runs the pure-Python
reference from ``tests/kernel_reference.py`` on a smaller batch of the same workload; the
run ends with the kernel's speed-up over it (see ``bench/conftest.py``).

The workload is built so most options clear the cheap gates and reach the money path
(cost, utility, ranking), which is the expensive case.

    PYTHONPATH=src .venv/bin/python -m pytest bench/bench_kernel.py -q \\
        --benchmark-json=kernel.json    # extra_info lands in the JSON
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from syntra_core.kernel import (
    REQUEST_DTYPE,
    Option,
    PolicySnapshot,
    decisions_from_batch,
    prescribe_batch,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import kernel_reference as ref  # noqa: E402

BATCH = 10_000
REFERENCE_BATCH = 200
OPTION_COUNTS = [4, 22, 64]
TARGET_NS_22 = 200


def workload(n_options, n_requests, seed=0):
    """(policy spec, PolicySnapshot, REQUEST_DTYPE rows) for a plausible catalog."""
    rng = np.random.default_rng(seed)

    def draw(low, high):
        return int(rng.integers(low, high, endpoint=True))

    options = [
        dict(
            option_id=1000 + i,
            enabled=i % 16 != 15,
            quality_bps=draw(6000, 10_000),
            risk_ceiling_bps=draw(4000, 10_000),
            p95_latency_ms=draw(100, 3000),
            capabilities=draw(0, 15) | 1,
            provider_id=i % 8,
            region_mask=draw(0, 15) | 1,
            input_cost_per_million=draw(100_000, 20_000_000),
            output_cost_per_million=draw(400_000, 80_000_000),
        )
        for i in range(n_options)
    ]
    pspec = dict(
        options=options,
        hard_risk_limit_bps=8000,
        minimum_confidence_bps=5000,
        risk_penalty_multiplier_bps=15_000,
        latency_penalty_microcents_per_ms=5,
    )
    policy = PolicySnapshot([Option(**o) for o in options],
                            **{k: v for k, v in pspec.items() if k != "options"})

    n = n_requests
    rows = np.zeros(n, dtype=REQUEST_DTYPE)
    rows["sequence"] = np.arange(n)
    rows["requested_option"] = rng.choice([o["option_id"] for o in options], n)
    rows["input_units"] = rng.integers(100, 8000, n)
    rows["output_units"] = rng.integers(50, 2000, n)
    rows["business_value_microcents"] = rng.integers(10**6, 10**9, n)
    rows["budget_limit_microcents"] = rng.integers(10**5, 10**8, n)
    rows["risk_bps"] = rng.integers(0, 3000, n)
    rows["confidence_bps"] = rng.integers(6000, 10_001, n)
    rows["minimum_quality_bps"] = rng.integers(0, 7000, n)
    rows["max_p95_latency_ms"] = rng.integers(500, 5000, n)
    rows["required_capabilities"] = rng.integers(0, 2, n)
    rows["allowed_provider_mask"] = np.where(rng.random(n) < 0.9, np.uint64(2**64 - 1),
                                             np.uint64(0b1111_0111))
    rows["required_region_mask"] = rng.integers(0, 2, n)
    return pspec, policy, rows


def describe(benchmark, out, n_options):
    benchmark.extra_info["options"] = n_options
    benchmark.extra_info["eligible_fraction"] = round(
        float(out["options_eligible"].mean()) / n_options, 3)
    benchmark.extra_info["reject_fraction"] = round(float((out["action"] == 2).mean()), 3)


@pytest.mark.benchmark(group="kernel")
@pytest.mark.parametrize("n_options", OPTION_COUNTS)
def test_prescribe_batch(benchmark, record_unit_time, n_options):
    _, policy, rows = workload(n_options, BATCH)
    out = benchmark(prescribe_batch, policy, rows)
    describe(benchmark, out, n_options)
    seconds = record_unit_time(f"kernel_{n_options}_options", BATCH)
    if seconds is not None and n_options == 22:
        benchmark.extra_info["target_ns_per_decision"] = TARGET_NS_22
        benchmark.extra_info["meets_target"] = seconds * 1e9 <= TARGET_NS_22


@pytest.mark.benchmark(group="reference")
@pytest.mark.parametrize("n_options", OPTION_COUNTS)
def test_reference_side_by_side(benchmark, record_unit_time, n_options):
    pspec, policy, rows = workload(n_options, REFERENCE_BATCH)
    names = REQUEST_DTYPE.names
    rspecs = [{name: int(row[name]) for name in names} for row in rows]

    def run_reference():
        return [ref.prescribe(pspec, rspec) for rspec in rspecs]

    expected = benchmark.pedantic(run_reference, rounds=3, iterations=1)
    out = prescribe_batch(policy, rows)
    assert [d.to_dict() for d in decisions_from_batch(out)] == expected
    describe(benchmark, out, n_options)
    record_unit_time(f"reference_{n_options}_options", REFERENCE_BATCH)
