"""Every limit stops a run with LimitExceeded naming the limit, quickly, never a hang."""

import time

import pytest

import lycan
from lycan import LimitExceeded, Limits


def run(source, limits, input_value=None):
    return lycan.run(lycan.compile_source(source), input_value, limits=limits)


CASES = [
    ("(W true 1)", Limits(max_steps=10_000), "max_steps"),
    ("($! i 0) (W true (= i (+ i 1)))", Limits(max_steps=10**9, max_seconds=0.2), "max_seconds"),
    ("(F f (n) (f (+ n 1))) (f 0)", Limits(), "max_call_depth"),
    ("(F f (n) (+ 1 (f n))) (f 0)", Limits(max_call_depth=50), "max_call_depth"),
    ("($ g (\\ (h) (h h))) (g g)", Limits(), "max_call_depth"),
    ("(.. 0 1000)", Limits(max_array_length=999), "max_array_length"),
    ("(A 1 2 3)", Limits(max_array_length=2), "max_array_length"),
    ('($! s "ab") (W true (= s (+ s s)))', Limits(max_string_length=10_000), "max_string_length"),
    ("(!str (.. 0 100))", Limits(max_string_length=50), "max_string_length"),
    ('(W true (!p "spam"))', Limits(max_output_bytes=1_000), "max_output_bytes"),
]


@pytest.mark.parametrize("source, limits, limit", CASES)
def test_limit_is_enforced(source, limits, limit):
    started = time.monotonic()
    with pytest.raises(LimitExceeded) as caught:
        run(source, limits)
    assert caught.value.limit == limit
    assert limit in str(caught.value)
    assert time.monotonic() - started < 5


def test_nesting_is_limited():
    with pytest.raises(lycan.ExecutionError, match="max_nesting"):
        run("($! a (A)) (W true (= a (A a)))", Limits(max_nesting=16))


def test_input_is_held_to_the_limits():
    with pytest.raises(lycan.ExecutionError, match="max_array_length"):
        run("1", Limits(max_array_length=3), {"xs": [1, 2, 3, 4]})
    with pytest.raises(lycan.ExecutionError, match="max_nesting"):
        run("1", Limits(max_nesting=3), [[[[1]]]])


def test_step_count_is_exact_and_reported():
    result = run("(+ 1 2)", Limits(max_steps=4))
    assert result.steps == 4  # CONST, CONST, ADD, RETURN
    with pytest.raises(LimitExceeded):
        run("(+ 1 2)", Limits(max_steps=3))


def test_deep_recursion_within_the_limit_works():
    result = run("(F down (n) (? (== n 0) 0 (+ 1 (down (- n 1))))) (down 150)", Limits())
    assert result.value == 150


def test_a_deep_call_chain_does_not_touch_the_python_stack():
    # Far deeper than Python's own recursion limit: the machine keeps its own frames.
    limits = Limits(max_call_depth=5_000, max_steps=10**6)
    assert run("(F down (n) (? (== n 0) 0 (+ 1 (down (- n 1))))) (down 4000)", limits).value == 4000


@pytest.mark.parametrize("field", ["max_steps", "max_seconds", "max_call_depth", "max_nesting"])
def test_limits_must_be_positive(field):
    with pytest.raises(ValueError, match=field):
        Limits(**{field: 0})
