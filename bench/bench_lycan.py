"""Where a program capsule's decision time goes, measured side by side in one run.

* ``lycan_capsule_decide``: the predictive-autoscaling example (examples/) on a 64-point
  history through ``cap.decide`` on an in-memory engine (target: <= 50 us per decide);
* ``lycan_trivial_decide``: the same capsule machinery with the trivial program
  ``(choice 1 2 3 4)``: about the engine's share (the rule, the learner, the result JSON)
  plus the fixed cost of a run;
* ``lycan_plain_run``: ``lycan.run`` of the autoscaling program with no engine (decoded
  once; every ``run`` verifies the program again, then interprets it);
* ``lycan_plain_run_trivial``: ``lycan.run`` of the trivial program;
* ``lycan_verify``: ``lycan.verify`` of the autoscaling program alone, the part of each
  run (and so of each decide) spent re-proving an already verified program.

Decides are timed without feedback (the pending set grows by a few thousand, which the
learner does not notice); the decision itself is what is measured.
"""

import random
from pathlib import Path

import lycan
from syntra import Engine

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "predictive-autoscaling" / "program.lycs"
OPTIONS = ["hold", "forecast_match", "forecast_headroom", "p95_safe"]
TRIVIAL = "(choice 1 2 3 4)"
DECIDES = 200
_world = random.Random(64)
INPUT = {"history": [round(500 + _world.gauss(0, 40), 2) for _ in range(64)],
         "current": 10, "target": 50, "min": 2, "max": 60}


def _capsule(source):
    return Engine.memory(seed=7).install("tenants/bench/jobs/lycan/capsules/autoscale", options=OPTIONS,
                                         lyc=lycan.compile_bytes(source))


def _decides(cap, input_value):
    def play():
        for _ in range(DECIDES):
            cap.decide("eu", input=input_value)
    return play


def test_capsule_decide_autoscaling(benchmark, record_unit_time):
    cap = _capsule(EXAMPLE.read_text())
    play = _decides(cap, INPUT)
    benchmark(play)
    record_unit_time("lycan_capsule_decide", DECIDES)
    d = cap.decide("eu", input=INPUT)
    # 64 points around 500 at 50 per instance: every sizing rule lands near 10 instances.
    assert 8 <= d.value <= 16 and set(d.published) == {"forecast"}


def test_capsule_decide_trivial(benchmark, record_unit_time):
    cap = _capsule(TRIVIAL)
    benchmark(_decides(cap, None))
    record_unit_time("lycan_trivial_decide", DECIDES)
    assert cap.decide("eu").value in (1, 2, 3, 4)


def _plain_runs(source, input_value):
    program = lycan.load(lycan.compile_bytes(source))

    def play():
        for i in range(DECIDES):
            lycan.run(program, input_value, chooser=lambda node, option=i % 4: option)
    return play


def test_plain_run_autoscaling(benchmark, record_unit_time):
    benchmark(_plain_runs(EXAMPLE.read_text(), INPUT))
    record_unit_time("lycan_plain_run", DECIDES)


def test_plain_run_trivial(benchmark, record_unit_time):
    benchmark(_plain_runs(TRIVIAL, None))
    record_unit_time("lycan_plain_run_trivial", DECIDES)


def test_verify_autoscaling(benchmark, record_unit_time):
    program = lycan.load(lycan.compile_bytes(EXAMPLE.read_text()))

    def play():
        for _ in range(DECIDES):
            lycan.verify(program)
    benchmark(play)
    record_unit_time("lycan_verify", DECIDES)
