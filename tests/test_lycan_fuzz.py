"""Hostile input never crashes Lycan: only its typed errors come out, and nothing hangs.

Three sources of hostile input: random bytes, random edits of valid files (caught by the
checksum), and random edits re-sealed with a fresh checksum (so the framing checks and the
verifier itself are exercised). Whatever still verifies is run under tight limits.
"""

import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

import lycan
from lycan import LycanError
from lycan.format import HEADER, MAGIC

SOURCES = [
    '(F f (n) (? (<= n 1) 1 (* n (f (- n 1))))) (f 6)',
    '($! s 0) (each x (!cap "runtime.inputGet" "xs") (= s (+ s x))) (!cap "runtime.publish" "s" s)',
    '($ k 2) ($ g (\\ (x) (* x k))) (A (g 3) (choice "a" (!str 1.5)) (.. 0 3))',
    '($! i 0) (W (< i 3) (= i (+ i 1)) (!p i)) (# 2 (!p "x")) (I (A 1 2) 1)',
    '(&& (|| false true) (not (== (!cap "stats.mean" (A 1 2)) 1.5)))',
]
VALID = [lycan.compile_bytes(source) for source in SOURCES]
TIGHT = lycan.Limits(max_steps=2_000, max_seconds=0.5, max_call_depth=20, max_array_length=100,
                     max_string_length=1_000, max_output_bytes=1_000, max_nesting=8)


def load_and_run(data):
    try:
        program = lycan.load(data)
    except LycanError:
        return
    try:
        lycan.run(program, {"xs": [1, 2.5, 3]}, chooser=lambda node: node.options - 1, limits=TIGHT)
    except LycanError:
        pass


def reseal(body):
    return HEADER.pack(MAGIC, 1, 0, len(body), blake3.blake3(body).digest()) + body


edits = st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8)


def apply(data, changes):
    data = bytearray(data)
    for position, value in changes:
        data[position % len(data)] = value
    return bytes(data)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_bytes(data):
    load_and_run(data)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_bodies_behind_a_good_header(body):
    load_and_run(reseal(body))


@settings(max_examples=200)
@given(st.sampled_from(VALID), edits)
def test_edits_of_valid_files(blob, changes):
    load_and_run(apply(blob, changes))


@settings(max_examples=600)
@given(st.sampled_from(VALID), edits, st.integers(-8, 8))
def test_resealed_edits_of_valid_files(blob, changes, resize):
    body = apply(blob[HEADER.size:], changes)
    body = body[:len(body) + resize] if resize < 0 else body + bytes(resize)
    load_and_run(reseal(body))


@settings(max_examples=300)
@given(st.text(alphabet='()$!=FW?B#^AI.."\\ ;\n abcxyz0123456789+-*/<>', max_size=80))
def test_random_source_text(text):
    try:
        blob = lycan.compile_bytes(text)
    except LycanError:
        return
    load_and_run(blob)  # whatever compiles must verify, so load_and_run must not raise
    lycan.load(blob)
