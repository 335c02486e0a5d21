"""The example capsules in examples/: each program compiles, computes what its README says
for known inputs, and, installed in an engine and fed rewards from a seeded world in which
one option is clearly best per context, learns that option.

Expected numbers below are derived by hand (the comment beside each shows the arithmetic)
or by an independent Python/numpy reference, never copied from a run of the program.
"""

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from syntra_core.wal import scan

import lycan
from syntra import Engine
from syntra.store.records import DecisionRecord, RecordType

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ROUNDS = 240          # decisions per context: enough for Thompson to settle on a 0.85-vs-0.25 world
BEST, OTHER = 0.85, 0.25


def compile_example(name):
    return lycan.compile_bytes((EXAMPLES / name / "program.lycs").read_text())


def run_with(lyc, input_value, option):
    """Plain lycan.run, forcing the choice node to ``option``."""
    return lycan.run(lycan.load(lyc), input_value, chooser=lambda node: option)


def drive(cap, world, make_input, check, rng, rounds=ROUNDS):
    """Interleave ``rounds`` decisions per context; reward from ``world[context]`` (the best
    option succeeds with probability BEST, the others OTHER); ``check`` every decision."""
    contexts = list(world) * rounds
    rng.shuffle(contexts)
    for context in contexts:
        input_value = make_input(context, rng)
        d = cap.decide(context, input=input_value)
        check(input_value, d)
        p = BEST if d.option == world[context] else OTHER
        cap.feedback(d.decision_id, 1.0 if rng.random() < p else 0.0)


def assert_learned(cap, world):
    report = cap.report()["contexts"]
    for context, best in world.items():
        pulls = report[context]["pulls"]
        assert max(pulls, key=pulls.get) == best, (context, pulls)
        assert report[context]["best_option"] == best
        assert pulls[best] > 0.5 * ROUNDS, (context, pulls)


def name_of(example):
    return f"tenants/examples/jobs/{example}/capsules/main"


# ---- 1. predictive-autoscaling ----------------------------------------------------------------

AUTOSCALE_OPTIONS = ["hold", "forecast_match", "forecast_headroom", "p95_safe"]


def autoscale_reference(inp):
    """Independent reference: the EWMA recurrence, numpy's percentile, clamp(ceil(l/t))."""
    forecast = float(inp["history"][0])
    for v in inp["history"][1:]:
        forecast = 0.5 * v + 0.5 * forecast

    def size(load):
        return max(inp["min"], min(inp["max"], math.ceil(load / inp["target"])))

    return forecast, {
        "hold": inp["current"],
        "forecast_match": size(forecast),
        "forecast_headroom": size(forecast * 6 / 5),
        "p95_safe": size(float(np.percentile(inp["history"], 95))),
    }


def test_predictive_autoscaling():
    lyc = compile_example("predictive-autoscaling")
    known = {"history": [100, 200, 300], "current": 4, "target": 25, "min": 1, "max": 40}
    # forecast: 100 -> 0.5*200 + 50 = 150 -> 0.5*300 + 75 = 225
    # match: ceil(225/25) = 9; headroom: 225*6/5 = 270, ceil(10.8) = 11
    # p95 of [100, 200, 300]: rank 2*0.95 = 1.9 -> 200 + 0.9*100 = 290, ceil(11.6) = 12
    expected = {"hold": 4, "forecast_match": 9, "forecast_headroom": 11, "p95_safe": 12}
    for index, option in enumerate(AUTOSCALE_OPTIONS):
        result = run_with(lyc, known, index)
        assert result.value == expected[option]
        assert result.published == {"forecast": 225.0}
    # The 1.2 trap the program avoids: 100*1.2 is 120.00000000000001, ceil(/10) would be 13.
    flat = {"history": [100, 100], "current": 3, "target": 10, "min": 1, "max": 100}
    assert run_with(lyc, flat, 2).value == 12
    # Clamped to [min, max]: forecast 225 needs 9 instances, max is 5; hold is not clamped.
    assert run_with(lyc, {**known, "max": 5}, 1).value == 5
    assert run_with(lyc, {**known, "min": 20}, 3).value == 20

    cap = Engine.memory(seed=11).install(name_of("predictive-autoscaling"), options=AUTOSCALE_OPTIONS, lyc=lyc)
    # Steady load: the forecast is right. Ramping: it lags, headroom wins. Bursty: size for
    # the bursts. Change freeze: anything but holding is refused downstream.
    world = {"steady": "forecast_match", "ramping": "forecast_headroom",
             "bursty": "p95_safe", "freeze": "hold"}

    def make_input(context, rng):
        n = 16
        if context == "ramping":
            history = [200 + 25 * i + rng.randint(-5, 5) for i in range(n)]
        elif context == "bursty":
            history = [rng.choice([300, 300, 300, 900]) + rng.random() for _ in range(n)]
        else:
            history = [round(500 + rng.gauss(0, 20), 2) for _ in range(n)]
        return {"history": history, "current": rng.randint(5, 30), "target": 50, "min": 2, "max": 60}

    def check(inp, d):
        forecast, values = autoscale_reference(inp)
        assert d.published == {"forecast": forecast}
        assert d.value == values[d.option]

    drive(cap, world, make_input, check, random.Random(1))
    assert_learned(cap, world)


# ---- 2. anomaly-routing -----------------------------------------------------------------------

ROUTING_OPTIONS = ["primary", "secondary", "degraded_cache_only", "circuit_break"]


def test_anomaly_routing():
    lyc = compile_example("anomaly-routing")
    recent = [90, 110, 90, 110]          # mean 100, population std dev sqrt(400/4) = 10
    cases = [
        # current 135: z = 35/10 = 3.5, round half to even -> 4: ttl 30*4, breaker 10*4
        (135, 3.5, [["primary", 0], ["secondary", 0], ["cache_only", 120], ["circuit_open", 40]]),
        # current 125: z = 2.5 -> 2: ttl 60, breaker 20
        (125, 2.5, [["primary", 0], ["secondary", 0], ["cache_only", 60], ["circuit_open", 20]]),
        # current 40: z = -6 -> |z| 6: ttl min(300, 180), breaker 60
        (40, -6.0, [["primary", 0], ["secondary", 0], ["cache_only", 180], ["circuit_open", 60]]),
        # current 300: z = 20: ttl capped at 300, breaker capped at 120
        (300, 20.0, [["primary", 0], ["secondary", 0], ["cache_only", 300], ["circuit_open", 120]]),
        # current 101: z = 0.1 -> severity at least 1: ttl 30, breaker max(5, 10) = 10
        (101, 0.1, [["primary", 0], ["secondary", 0], ["cache_only", 30], ["circuit_open", 10]]),
    ]
    for current, z, values in cases:
        for index, value in enumerate(values):
            result = run_with(lyc, {"recent": recent, "current": current}, index)
            assert result.published["z"] == pytest.approx(z, abs=1e-12)
            assert lycan.values.to_json(result.value) == value
    # A flat window has no spread: z is 0, not a division by zero.
    assert run_with(lyc, {"recent": [50, 50, 50], "current": 80}, 2).published == {"z": 0.0}

    cap = Engine.memory(seed=12).install(name_of("anomaly-routing"), options=ROUTING_OPTIONS, lyc=lyc)
    world = {"healthy": "primary", "primary_degraded": "secondary",
             "both_regions_slow": "degraded_cache_only", "dependency_down": "circuit_break"}
    shift = {"healthy": 0, "primary_degraded": 60, "both_regions_slow": 150, "dependency_down": 900}

    def make_input(context, rng):
        window = [100 + rng.gauss(0, 10) for _ in range(20)]
        return {"recent": window, "current": 100 + shift[context] + rng.gauss(0, 10)}

    def check(inp, d):
        mean = sum(inp["recent"]) / len(inp["recent"])
        sd = math.sqrt(sum((v - mean) ** 2 for v in inp["recent"]) / len(inp["recent"]))
        assert d.published["z"] == pytest.approx((inp["current"] - mean) / sd, rel=1e-9)
        assert d.value[0] == {"primary": "primary", "secondary": "secondary",
                              "degraded_cache_only": "cache_only", "circuit_break": "circuit_open"}[d.option]

    drive(cap, world, make_input, check, random.Random(2))
    assert_learned(cap, world)


# ---- 3. seasonal-fraud-threshold (durable: reopened and checked) ------------------------------

FRAUD_OPTIONS = ["loose", "baseline", "tight", "very_tight"]


def test_seasonal_fraud_threshold_durable(tmp_path):
    lyc = compile_example("seasonal-fraud-threshold")
    known = {"rates": [0.02, 0.04, 0.04, 0.03]}
    # forecast: 0.02 -> 0.03 -> 0.035 -> 0.0325
    # thresholds 1 - k*0.0325: k=5 0.8375, k=10 0.675, k=20 0.35, k=40 -0.3 -> floor 0.05
    expected = [0.8375, 0.675, 0.35, 0.05]
    for index, threshold in enumerate(expected):
        result = run_with(lyc, known, index)
        assert result.value == pytest.approx(threshold, abs=1e-12)
        assert result.published["forecast"] == pytest.approx(0.0325, abs=1e-15)
    # No fraud at all: 1 - 0 = 1, capped at 0.99 for every option.
    assert [run_with(lyc, {"rates": [0, 0]}, i).value for i in range(4)] == [0.99] * 4
    # Rounded to 4 decimals: forecast 0.01234 (one lag), loose 1 - 0.0617 = 0.9383
    assert run_with(lyc, {"rates": [0.01234]}, 0).value == pytest.approx(0.9383, abs=1e-12)

    engine = Engine.open(tmp_path, seed=13, durability="none")
    cap = engine.install(name_of("seasonal-fraud-threshold"), options=FRAUD_OPTIONS, lyc=lyc)
    # Quiet slots reward a loose threshold (few false holds), campaign slots a tight one.
    world = {"weekday_morning": "loose", "weekday_evening": "baseline",
             "payday_night": "tight", "bot_campaign": "very_tight"}
    base = {"weekday_morning": 0.002, "weekday_evening": 0.01, "payday_night": 0.02, "bot_campaign": 0.05}

    def make_input(context, rng):
        return {"rates": [round(base[context] * rng.uniform(0.8, 1.2), 5) for _ in range(8)]}

    def check(inp, d):
        forecast = inp["rates"][0]
        for r in inp["rates"][1:]:
            forecast = 0.5 * r + 0.5 * forecast
        k = {"loose": 5, "baseline": 10, "tight": 20, "very_tight": 40}[d.option]
        assert d.published == {"forecast": forecast}
        # round(raw * 10000) / 10000 with ties to even, as the program documents; not Python's
        # round(raw, 4), which rounds the decimal value (0.92495 -> 0.9249 vs 9249.5 -> 0.925).
        assert d.value == round(max(0.05, min(0.99, 1 - k * forecast)) * 10000) / 10000

    drive(cap, world, make_input, check, random.Random(3))
    assert_learned(cap, world)
    report = cap.report()
    last = cap.decide("bot_campaign", input=known)          # left pending across the reopen
    digest = engine.state_digest()
    engine.close()

    engine = Engine.open(tmp_path)
    assert engine.state_digest() == digest
    cap = engine.capsule(name_of("seasonal-fraud-threshold"))
    assert cap.pending == 1
    cap.feedback(last.decision_id, 1.0)
    assert cap.report()["contexts"]["weekday_morning"] == report["contexts"]["weekday_morning"]
    d = cap.decide("weekday_morning", input=known)
    assert d.value == pytest.approx(expected[FRAUD_OPTIONS.index(d.option)], abs=1e-12)
    assert d.published["forecast"] == pytest.approx(0.0325, abs=1e-15)
    engine.close(checkpoint=False)
    # Every decision's program result is in the WAL, and the last one is what the caller saw.
    logged = [DecisionRecord.decode(r.payload) for r in scan(tmp_path / "wal") if r.rtype == RecordType.DECISION]
    assert len(logged) == len(world) * ROUNDS + 2
    assert json.loads(logged[-1].result) == {"result": d.value, "published": d.published, "stdout": ""}


# ---- 4. llm-routing ---------------------------------------------------------------------------

LLM_OPTIONS = ["small", "medium", "large"]


def test_llm_routing():
    lyc = compile_example("llm-routing")
    # 10 characters -> ceil(10/4) = 3 prompt tokens, + 100 output = 103;
    # costs 103*1, 103*5, 103*30
    known = {"prompt": "x" * 10, "max_output": 100}
    expected = [["lyra-small", 103, 103], ["lyra-medium", 103, 515], ["lyra-large", 103, 3090]]
    for index, value in enumerate(expected):
        result = run_with(lyc, known, index)
        assert lycan.values.to_json(result.value) == value
        assert result.published == {"estimated_tokens": 103}
    # Exact multiples of 4 do not round up (8 -> 2); the empty prompt is 0 tokens; length
    # counts characters, not bytes ("héllo" is 5 -> 2).
    assert run_with(lyc, {"prompt": "abcdefgh", "max_output": 0}, 0).published == {"estimated_tokens": 2}
    assert run_with(lyc, {"prompt": "", "max_output": 7}, 0).published == {"estimated_tokens": 7}
    assert run_with(lyc, {"prompt": "héllo", "max_output": 0}, 0).published == {"estimated_tokens": 2}

    cap = Engine.memory(seed=14).install(name_of("llm-routing"), options=LLM_OPTIONS, lyc=lyc)
    world = {"chit_chat": "small", "summarize": "medium", "code_review": "large"}
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]

    def make_input(context, rng):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))
        return {"prompt": prompt, "max_output": rng.choice([64, 256, 1024])}

    def check(inp, d):
        tokens = -(-len(inp["prompt"]) // 4) + inp["max_output"]
        price = {"small": 1, "medium": 5, "large": 30}[d.option]
        assert d.published == {"estimated_tokens": tokens}
        assert d.value == [f"lyra-{d.option}", tokens, tokens * price]

    drive(cap, world, make_input, check, random.Random(4))
    assert_learned(cap, world)


# ---- 5. retry-tuning --------------------------------------------------------------------------

RETRY_OPTIONS = ["no_retry", "fixed_3x", "exponential_backoff"]


def test_retry_tuning():
    lyc = compile_example("retry-tuning")
    cases = [
        # 10*0.25 = 2.5 rounds (half to even) to 2: 4 attempts; base round(125.0) = 125
        # expected attempts 1 + 0.25 + 0.0625 + 0.015625 = 1.328125
        ({"failure_rate": 0.25, "p99_ms": 250}, 1.328125, [[1, 0, 1], [3, 250, 1], [4, 125, 2]]),
        # 10*0.5 = 5 -> 7 attempts, capped at 6; p99 301: fixed 301, base round(150.5) = 150
        # expected attempts 1 + .5 + .25 + .125 + .0625 + .03125 = 1.96875
        ({"failure_rate": 0.5, "p99_ms": 301}, 1.96875, [[1, 0, 1], [3, 301, 1], [6, 150, 2]]),
        # no failures: 2 attempts at least; p99 80.6: fixed round(80.6) = 81, base round(40.3) = 40
        # expected attempts 1 + 0 = 1
        ({"failure_rate": 0, "p99_ms": 80.6}, 1.0, [[1, 0, 1], [3, 81, 1], [2, 40, 2]]),
    ]
    for inp, expected_attempts, values in cases:
        for index, value in enumerate(values):
            result = run_with(lyc, inp, index)
            assert lycan.values.to_json(result.value) == value
            assert result.published == {"expected_attempts": expected_attempts}

    cap = Engine.memory(seed=15).install(name_of("retry-tuning"), options=RETRY_OPTIONS, lyc=lyc)
    world = {"hard_down": "no_retry", "slow_but_up": "fixed_3x", "flaky": "exponential_backoff"}

    def make_input(context, rng):
        rate = {"hard_down": 0.95, "slow_but_up": 0.02, "flaky": 0.3}[context]
        return {"failure_rate": round(rate * rng.uniform(0.9, 1.0), 3), "p99_ms": rng.uniform(50, 2000)}

    def check(inp, d):
        rate, p99 = inp["failure_rate"], inp["p99_ms"]
        attempts = max(2, min(6, 2 + round(10 * rate)))
        assert d.published["expected_attempts"] == pytest.approx(sum(rate ** i for i in range(attempts)), rel=1e-12)
        assert d.value == {"no_retry": [1, 0, 1], "fixed_3x": [3, round(p99), 1],
                           "exponential_backoff": [attempts, round(p99 / 2), 2]}[d.option]

    drive(cap, world, make_input, check, random.Random(5))
    assert_learned(cap, world)
