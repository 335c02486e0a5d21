"""Lycan semantics, table-driven: each row is a small program and what it must give."""

import math

import pytest

import lycan
from lycan import CompileError, ExecutionError, ParseError


def evaluate(source, input_value=None, chooser=None):
    # Through the bytes, so every row also round-trips the codec and the verifier.
    return lycan.run(lycan.load(lycan.compile_bytes(source)), input_value, chooser=chooser).value


VALUES = [
    # literals and comments
    ("42", 42), ("-7", -7), ("2.5", 2.5), ("1e3", 1000.0), ('"hi"', "hi"),
    ('"a\\"b\\n"', 'a"b\n'), ("true", True), ("false", False), ("null", None),
    ("1 ; a comment\n 2", 2), ("", None),
    # int and float arithmetic
    ("(+ 2 3)", 5), ("(- 2 5)", -3), ("(* 4 5)", 20), ("(+ 1 0.5)", 1.5), ("(* 2 1.5)", 3.0),
    ("(/ 7 2)", 3.5), ("(/ 6 3)", 2.0), ("(% 7 3)", 1), ("(% -7 3)", 2), ("(% 7 -3)", -2),
    ("(% 7.5 2)", 1.5), ("(neg 5)", -5), ("(neg 2.5)", -2.5), ('(+ "ab" "cd")', "abcd"),
    ("(+ 9223372036854775806 1)", 9223372036854775807),
    # comparison and logic
    ("(== 1 1.0)", True), ("(== 1 true)", False), ('(== "a" "a")', True), ("(!= 1 2)", True),
    ("(== (A 1 (A 2)) (A 1 (A 2)))", True), ("(== (A 1) (A 1 2))", False), ("(== null null)", True),
    ("(< 1 2)", True), ("(> 1 2)", False), ("(<= 2 2)", True), ("(>= 1 2.5)", False),
    ('(< "apple" "banana")', True), ("(&& true false)", False), ("(|| false true)", True),
    ("(not false)", True), ("(&& false (/ 1 0))", False), ("(|| true (/ 1 0))", True),
    # bindings, mutation, blocks and scopes
    ("($ x 5) (* x x)", 25), ("($! x 1) (= x (+ x 1)) x", 2), ("($ x 3)", 3),
    ("($ x 1) (B ($ x 2) x)", 2), ("($ x 1) (B ($ x 2) x) x", 1), ("(B)", None),
    ("(B 1 2 3)", 3),
    # conditionals
    ("(? true 1 2)", 1), ("(? false 1 2)", 2), ("(? false 1)", None), ("(? (< 1 2) \"y\" \"n\")", "y"),
    # loops
    ("($! i 0) (W (< i 5) (= i (+ i 1))) i", 5), ("(W false 1)", None),
    ("($! s 0) (each x (A 1 2 3) (= s (+ s x))) s", 6), ("($! n 0) (# 4 (= n (+ n 2))) n", 8),
    ("($! n 0) (# 0 (= n 1)) n", 0), ("($! s 0) (each x (.. 0 0) (= s 1)) s", 0),
    ("($! s \"\") (each w (A \"a\" \"b\") (= s (+ s w))) s", "ab"),
    # functions, recursion, lambdas, early return
    ("(F sq (x) (* x x)) (sq 9)", 81), ("(F f (n) (? (<= n 1) 1 (* n (f (- n 1))))) (f 5)", 120),
    ("(F even (n) (? (== n 0) true (odd (- n 1)))) (F odd (n) (? (== n 0) false (even (- n 1)))) (even 10)", True),
    ("((\\ (x y) (- x y)) 10 4)", 6), ("($ k 10) ($ add (\\ (x) (+ x k))) (add 5)", 15),
    ("($! k 1) ($ get (\\ () k)) (= k 2) (get)", 1),  # lambdas capture values, not variables
    ("($ mk (\\ (a) (\\ (b) (+ a b)))) ((mk 3) 4)", 7),
    ("(F twice (g x) (g (g x))) (twice (\\ (v) (* v 3)) 2)", 18),
    ("(F inc (x) (+ x 1)) ($ g inc) (g 1)", 2),
    ("(F first-big (xs) (each x xs (? (> x 10) (^ x))) -1) (first-big (A 3 12 40))", 12),
    ("(F first-big (xs) (each x xs (? (> x 10) (^ x))) -1) (first-big (A 3))", -1),
    ("(^ 5) 6", 5), ("(F f () (^)) (f)", None),
    # arrays, indexing, ranges
    ("(A)", []), ("(A 1 \"two\" (A 3))", [1, "two", [3]]), ("(I (A 5 6 7) 1)", 6),
    ("(.. 2 5)", [2, 3, 4]), ("(.. 5 2)", []), ('(I "hey" 1)', "e"),
    ('(I (!cap "runtime.input") "k")', 7),
    # builtins
    ("(!len (A 1 2))", 2), ('(!len "abc")', 3), ("(!abs -3)", 3), ("(!abs -2.5)", 2.5),
    ("(!floor 2.7)", 2), ("(!floor -2.5)", -3), ("(!round 2.5)", 2), ("(!round 3.5)", 4),
    ("(!round 7)", 7), ("(!sqrt 16)", 4.0), ("(!ln 1)", 0.0), ("(!exp 0)", 1.0),
    ("(!min 3 1 2)", 1), ("(!max 3 1.5)", 3), ("(!min (A 4 2 8))", 2),
    ('(!num "42")', 42), ('(!num "2.5")', 2.5), ("(!num 3)", 3), ("(!str 1.5)", "1.5"),
    ("(!str (A 1 true null))", "[1,true,null]"), ("(!str false)", "false"), ('(!str "s")', "s"),
    ("(!p 1)", None),
]


@pytest.mark.parametrize("source, expected", VALUES)
def test_program_value(source, expected):
    value = evaluate(source, {"k": 7})
    assert lycan.values.to_json(value) == expected
    assert type(lycan.values.to_json(value)) is type(expected)  # 2.0 is not 2


ERRORS = [
    # run-time errors
    ("(/ 1 0)", ExecutionError, "division by zero"),
    ("(/ 1.5 0.0)", ExecutionError, "division by zero"),
    ("(% 5 0)", ExecutionError, "modulo by zero"),
    ("(+ 9223372036854775807 1)", ExecutionError, "integer overflow"),
    ("(* -9223372036854775808 -1)", ExecutionError, "integer overflow"),
    ("(neg -9223372036854775808)", ExecutionError, "integer overflow"),
    ("(* 1e308 10)", ExecutionError, "not a finite number"),
    ("(!exp 1000)", ExecutionError, "overflows"),
    ("(!sqrt -1)", ExecutionError, "negative"),
    ("(!ln 0)", ExecutionError, "!ln needs a number > 0"),
    ("(!floor 1e300)", ExecutionError, "outside int64"),
    ('(+ 1 "a")', ExecutionError, "+ needs numbers, got int and string"),
    ("(< 1 \"a\")", ExecutionError, "compares two numbers or two strings"),
    ("(? 1 2 3)", ExecutionError, "condition must be a bool, got int"),
    ("(not 0)", ExecutionError, "not needs a bool"),
    ("(&& 1 true)", ExecutionError, "condition must be a bool"),
    ("(I (A 1) 3)", ExecutionError, "index 3 is out of range"),
    ("(I (A 1) -1)", ExecutionError, "index -1 is out of range"),
    ("(I 5 0)", ExecutionError, "cannot index into a int"),
    ('(I (!cap "runtime.input") "nope")', ExecutionError, "no key 'nope'"),
    ("(each x 5 x)", ExecutionError, "each needs an array, got int"),
    ("(# -1 1)", ExecutionError, "# needs a count"),
    ("(# 1.5 1)", ExecutionError, "# needs a count"),
    ("(.. 1 2.0)", ExecutionError, ".. needs two ints"),
    ("($ f 5) (f 1)", ExecutionError, "cannot call a int"),
    ("((\\ (x) x) 1 2)", ExecutionError, "takes 1 arguments, got 2"),
    ('(!num "abc")', ExecutionError, "cannot read 'abc'"),
    ('(!num "nan")', ExecutionError, "cannot read"),
    ("(!min (A))", ExecutionError, "empty array"),
    ("(choice 1 2)", ExecutionError, "no chooser"),
    # compile errors
    ("(foo 1)", CompileError, "unknown function 'foo'"),
    ("x", CompileError, "unknown name 'x'"),
    ("($ x 1) (= x 2)", CompileError, "bind it with $!"),
    ("($ x 1) ($ x 2)", CompileError, "already bound in this scope"),
    ("($! k 1) ((\\ () (= k 2)))", CompileError, "a lambda holds a copy"),
    ("(B (F f () 1))", CompileError, "only at the top level"),
    ("(F f () 1) (F f () 2)", CompileError, "defined twice"),
    ("(F f (x) x) (f)", CompileError, "f takes 1 arguments, got 0"),
    ("(+ 1 2 3)", CompileError, "+ takes 2 arguments, got 3"),
    ("(? true)", CompileError, "? takes 2 to 3 arguments"),
    ("($ + 1)", CompileError, "reserved"),
    ("(F g (a a) a)", CompileError, "appears twice"),
    ('(!cap "nope.nope")', CompileError, "unknown capability 'nope.nope'"),
    ('(!cap "stats.mean")', CompileError, "takes 1 arguments (values), got 0"),
    ("(choice 1)", CompileError, "choice takes at least 2 arguments"),
    ("99999999999999999999", CompileError, "outside int64"),
    ("1e999", CompileError, "not finite"),
    ("()", CompileError, "empty list"),
    ("(? true ($ y 1) 2) y", CompileError, "unknown name 'y'"),  # branch bindings stay in the branch
    # parse errors
    ("(+ 1 2", ParseError, "never closed"),
    (")", ParseError, "unexpected ')'"),
    ('"abc', ParseError, "string is never closed"),
    ('"\\q"', ParseError, "unknown escape"),
    ("(" * 200 + ")" * 200, ParseError, "nest deeper"),
]


@pytest.mark.parametrize("source, error, fragment", ERRORS)
def test_program_error(source, error, fragment):
    with pytest.raises(error) as caught:
        evaluate(source, {"k": 7})
    assert fragment in str(caught.value)


def test_errors_name_the_line_and_function():
    with pytest.raises(ExecutionError) as caught:
        evaluate("(F bad (x)\n  (/ x 0))\n(bad 1)")
    assert (caught.value.function, caught.value.line) == ("bad", 2)
    assert str(caught.value) == "line 2 in bad: division by zero"


def test_compile_errors_give_line_and_column():
    with pytest.raises(CompileError) as caught:
        lycan.compile_source("(+ 1 2)\n  (nope)")
    assert (caught.value.line, caught.value.column) == (2, 4)


def test_choice_records_each_evaluation_and_uses_the_chosen_value():
    source = "(F pick () (choice 10 20 30)) (A (pick) (pick) (choice \"x\" \"y\"))"
    seen = []

    def chooser(node):
        seen.append((node.index, node.options, node.line))
        return {0: 2, 1: 1}[node.index]

    result = lycan.run(lycan.compile_source(source), chooser=chooser)
    assert lycan.values.to_json(result.value) == [30, 30, "y"]
    assert [(c.node, c.index) for c in result.choices] == [(0, 2), (0, 2), (1, 1)]
    assert seen == [(0, 3, 1), (0, 3, 1), (1, 2, 1)]


@pytest.mark.parametrize("picked", [2, -1, True, "0", None])
def test_a_bad_pick_is_an_execution_error(picked):
    with pytest.raises(ExecutionError, match="the chooser picked"):
        lycan.run(lycan.compile_source("(choice 1 2)"), chooser=lambda node: picked)


def test_only_the_chosen_option_runs():
    result = lycan.run(lycan.compile_source('(choice (!p "a") (!p "b"))'), chooser=lambda n: 1)
    assert result.stdout == "b\n"


def test_print_joins_values_with_spaces():
    result = lycan.run(lycan.compile_source('(!p "x" 1 2.5 true null (A 1 "s")) (!p)'))
    assert result.stdout == 'x 1 2.5 true null [1,"s"]\n\n'


def test_input_is_a_read_only_map():
    result = lycan.run(lycan.compile_source('(!cap "runtime.input")'), {"a": [1, {"b": None}]})
    assert isinstance(result.value, lycan.values.Map)
    assert lycan.values.to_json(result.value) == {"a": [1, {"b": None}]}
    with pytest.raises(TypeError):
        result.value["a"] = 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, 2**63, {1: 2}, object()])
def test_input_must_be_finite_json(bad):
    with pytest.raises(ExecutionError):
        lycan.run(lycan.compile_source("1"), {"x": bad})


def test_a_function_result_has_no_json_form():
    result = lycan.run(lycan.compile_source("(\\ (x) x)"))
    assert isinstance(result.value, lycan.values.Function)
    with pytest.raises(ExecutionError, match="no JSON form"):
        result.to_json()
