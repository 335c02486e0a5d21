"""The .lyc codec and the verifier: determinism, round trips, and each rejection."""

import dataclasses
import struct

import blake3
import pytest

import lycan
from lycan import VerifyError
from lycan.format import HEADER, MAGIC, FunctionCode, decode, encode
from lycan.opcodes import Op

SAMPLE = """
; a little of everything
(F clamp (x lo hi) (? (< x lo) lo (? (> x hi) hi x)))
($ xs (!cap "runtime.inputGet" "xs"))
($! total 0)
(each x xs (= total (+ total x)))
($ scale (\\ (v) (* v 2.5)))
(!cap "runtime.publish" "total" total)
(choice (clamp (scale total) 0 100) "fallback")
"""


def sealed(body):
    """A file around ``body`` with a correct header, so checks past the checksum are reached."""
    return HEADER.pack(MAGIC, 1, 0, len(body), blake3.blake3(body).digest()) + body


def with_code(code, slots=1, **changes):
    program = lycan.compile_source("1")
    top = dataclasses.replace(program.functions[0], code=tuple(code), slots=slots)
    return dataclasses.replace(program, functions=(top,), **changes)


def test_same_source_gives_the_same_bytes():
    assert lycan.compile_bytes(SAMPLE) == lycan.compile_bytes(SAMPLE)
    assert lycan.compile_bytes(SAMPLE) != lycan.compile_bytes(SAMPLE.replace("2.5", "2.6"))


def test_the_bytes_are_stable_across_processes():
    # The digest of a fixed program's bytes; a change here means the format changed.
    blob = lycan.compile_bytes("(+ 1 2.5)")
    assert blob[:8] == MAGIC + b"\x01\x00\x00\x00"
    assert decode(blob) == lycan.compile_source("(+ 1 2.5)")
    # The body, section by section, exactly as FORMAT.md's worked example shows it.
    expected = [
        "01 02 00 00 00",                                   # constants: 2
        "01 01 00 00 00 00 00 00 00",                       #   int 1
        "02 00 00 00 00 00 00 04 40",                       #   float 2.5
        "02 01 00 00 00",                                   # strings: 1
        "09 00 00 00 3c 70 72 6f 67 72 61 6d 3e",           #   "<program>"
        "03 01 00 00 00",                                   # functions: 1
        "00 00 00 00 00 00 00 00 00 00 04 00 00 00",        #   name 0, 0 params/captures/slots, 4 instructions
        "01 00 00 00 00 00 00 01 00 00 00",                 #   CONST 0        line 1
        "01 01 00 00 00 00 00 01 00 00 00",                 #   CONST 1        line 1
        "0b 00 00 00 00 00 00 01 00 00 00",                 #   ADD            line 1
        "20 00 00 00 00 00 00 01 00 00 00",                 #   RETURN         line 1
        "04 00 00 00 00",                                   # choice nodes: 0
    ]
    assert blob[HEADER.size:].hex(" ") == " ".join(expected)
    assert blob[12:44] == blake3.blake3(blob[HEADER.size:]).digest()


def test_round_trip_preserves_the_program():
    program = lycan.compile_source(SAMPLE)
    assert decode(encode(program)) == program
    result = lycan.run(lycan.load(encode(program)), {"xs": [10, 20]}, chooser=lambda n: 0)
    assert result.value == 75.0 and result.published == {"total": 30}


def test_the_header_and_checksum_guard_the_body():
    blob = bytearray(lycan.compile_bytes(SAMPLE))
    blob[-1] ^= 0xFF
    with pytest.raises(VerifyError) as caught:
        lycan.load(bytes(blob))
    assert caught.value.what == "bad-checksum" and caught.value.where == "offset 12"


HEADER_CASES = [
    (lambda b: b[:10], "truncated-header"),
    (lambda b: b"XLYC" + b[4:], "bad-magic"),
    (lambda b: b[:4] + b"\x02\x00" + b[6:], "bad-version"),
    (lambda b: b[:6] + b"\x01\x00" + b[8:], "bad-flags"),
    (lambda b: b + b"\x00", "bad-length"),
    (lambda b: b[:-1], "bad-length"),
]


@pytest.mark.parametrize("damage, what", HEADER_CASES)
def test_header_rejections(damage, what):
    with pytest.raises(VerifyError) as caught:
        lycan.load(damage(lycan.compile_bytes(SAMPLE)))
    assert caught.value.what == what


def body_of(source="1"):
    return lycan.compile_bytes(source)[HEADER.size:]


FRAMING_CASES = [
    (lambda body: body[:3], "truncated"),
    (lambda body: b"\x02" + body[1:], "bad-section"),
    (lambda body: b"\x01" + struct.pack("<I", 10**9) + body[5:], "count-too-large"),
    (lambda body: body + b"\x00", "trailing-bytes"),
    (lambda body: b"\x01\x01\x00\x00\x00\x07" + bytes(8) + body[5 + 9:], "bad-constant"),
    (lambda body: b"\x01\x01\x00\x00\x00\x02" + struct.pack("<d", float("nan")) + body[14:], "bad-constant"),
]


@pytest.mark.parametrize("damage, what", FRAMING_CASES)
def test_framing_rejections(damage, what):
    with pytest.raises(VerifyError) as caught:
        lycan.load(sealed(damage(body_of())))
    assert caught.value.what == what
    assert caught.value.where.startswith("offset ")


def test_a_string_that_is_not_utf8_is_rejected():
    program = lycan.compile_source('"ab"')
    body = bytearray(encode(program)[HEADER.size:])
    at = body.index(b"ab")
    body[at] = 0xFF
    with pytest.raises(VerifyError) as caught:
        lycan.load(sealed(bytes(body)))
    assert caught.value.what == "bad-string"


def test_a_huge_string_length_is_refused_before_reading():
    program = lycan.compile_source('"ab"')
    body = bytearray(encode(program)[HEADER.size:])
    at = body.index(b"ab") - 4
    body[at:at + 4] = struct.pack("<I", 2**32 - 1)
    with pytest.raises(VerifyError) as caught:
        lycan.load(sealed(bytes(body)))
    assert caught.value.what == "count-too-large"


RETURN = (Op.RETURN, 0, 0, 1)
NULL = (Op.NULL, 0, 0, 1)

PROGRAM_CASES = [
    (with_code([(99, 0, 0, 1), RETURN]), "bad-opcode", "function 0 instruction 0"),
    (with_code([(Op.CONST, 5, 0, 1), RETURN]), "constant-out-of-range", "function 0 instruction 0"),
    (with_code([(Op.STRING, 9, 0, 1), RETURN]), "string-out-of-range", "function 0 instruction 0"),
    (with_code([(Op.LOAD, 1, 0, 1), RETURN]), "slot-out-of-range", "function 0 instruction 0"),
    (with_code([NULL, (Op.STORE, 3, 0, 1), RETURN]), "slot-out-of-range", "function 0 instruction 1"),
    (with_code([(Op.JUMP, 7, 0, 1), RETURN]), "jump-out-of-range", "function 0 instruction 0"),
    (with_code([(Op.TRUE, 0, 0, 1), (Op.JUMP_IF_FALSE, 3, 0, 1), RETURN]), "jump-out-of-range",
     "function 0 instruction 1"),
    (with_code([(Op.CALL, 4, 0, 1), RETURN]), "function-out-of-range", "function 0 instruction 0"),
    (with_code([(Op.CLOSURE, 0, 0, 1), RETURN]), "bad-closure", "function 0 instruction 0"),
    (with_code([(Op.BUILTIN, 50, 1, 1), RETURN]), "builtin-out-of-range", "function 0 instruction 0"),
    (with_code([NULL, NULL, (Op.BUILTIN, 1, 2, 1), RETURN]), "bad-arity", "function 0 instruction 2"),
    (with_code([(Op.CHOICE, 0, 0, 1), RETURN]), "choice-out-of-range", "function 0 instruction 0"),
    (with_code([(Op.CAPABILITY, 0, 0, 1), RETURN], strings=("no.such", "<program>")),
     "unknown-capability", "function 0 instruction 0"),
    (with_code([(Op.CAPABILITY, 0, 2, 1), RETURN], strings=("stats.mean", "<program>")),
     "bad-arity", "function 0 instruction 0"),
    (with_code([RETURN]), "stack-underflow", "function 0 instruction 0"),
    (with_code([(Op.ADD, 0, 0, 1), RETURN]), "stack-underflow", "function 0 instruction 0"),
    (with_code([NULL]), "falls-off-end", "function 0 instruction 1"),
    (with_code([]), "empty-code", "function 0"),
    (with_code([(Op.TRUE, 0, 0, 1), (Op.JUMP_IF_FALSE, 3, 0, 1), NULL, NULL, RETURN]),
     "stack-mismatch", "function 0 instruction 3"),
    (with_code([RETURN], slots=5000), "bad-slots", "function 0"),
    (dataclasses.replace(lycan.compile_source("1"), functions=()), "no-functions", "function table"),
]


@pytest.mark.parametrize("program, what, where", PROGRAM_CASES)
def test_program_rejections(program, what, where):
    with pytest.raises(VerifyError) as caught:
        lycan.load(encode(program))
    assert (caught.value.what, caught.value.where) == (what, where)


def test_calls_and_choices_are_checked_against_their_targets():
    program = lycan.compile_source("(F f (x) x) (f (choice 1 2))")
    call_at = next(i for i, ins in enumerate(program.functions[0].code) if ins[0] == Op.CALL)
    code = list(program.functions[0].code)
    code[call_at] = (Op.CALL, 1, 2, 1)
    bad_call = dataclasses.replace(program, functions=(
        dataclasses.replace(program.functions[0], code=tuple(code)), program.functions[1]))
    with pytest.raises(VerifyError, match="takes 1 arguments, call passes 2"):
        lycan.load(encode(bad_call))

    choice_at = next(i for i, ins in enumerate(program.functions[0].code) if ins[0] == Op.CHOICE)
    code = list(program.functions[0].code)
    code[choice_at + 1] = NULL
    bad_table = dataclasses.replace(program, functions=(
        dataclasses.replace(program.functions[0], code=tuple(code)), program.functions[1]))
    with pytest.raises(VerifyError) as caught:
        lycan.load(encode(bad_table))
    assert caught.value.what == "bad-choice"


def test_a_function_with_too_few_slots_is_rejected():
    program = lycan.compile_source("(F f (a b) a) (f 1 2)")
    broken = dataclasses.replace(program.functions[1], slots=1)
    program = dataclasses.replace(program, functions=(program.functions[0], broken))
    with pytest.raises(VerifyError) as caught:
        lycan.load(encode(program))
    assert (caught.value.what, caught.value.where) == ("bad-slots", "function 1")


def test_compiled_programs_always_verify():
    for source in [SAMPLE, "(F f (n) (? (<= n 0) 0 (f (- n 1)))) (f 3)",
                   "($ a 1) ((\\ (x) ((\\ (y) (+ a (+ x y))) 2)) 3)",
                   "(|| (&& true false) (choice true false))"]:
        assert isinstance(lycan.load(lycan.compile_bytes(source)), lycan.Program)


def test_function_code_is_plain_data():
    top = lycan.compile_source("(+ 1 2)").functions[0]
    assert isinstance(top, FunctionCode)
    assert all(type(x) is int for instruction in top.code for x in instruction)
