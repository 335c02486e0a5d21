"""The ``.lyc`` codec: ``Program`` to bytes and back. FORMAT.md documents every byte.

``decode`` checks the envelope and the framing (magic, version, checksum, counts, lengths);
whether the decoded program is safe to run is ``verifier.verify``'s job.

>>> from lycan.compiler import compile_source
>>> blob = encode(compile_source("(+ 1 2)"))
>>> blob[:4], decode(blob) == compile_source("(+ 1 2)")
(b'\\x7fLYC', True)
"""

import math
import struct
from dataclasses import dataclass

import blake3

from lycan.errors import VerifyError

MAGIC = b"\x7fLYC"
VERSION = 1
HEADER = struct.Struct("<4sHHI32s")  # magic, version, flags, body length, BLAKE3(body)
SECTION = struct.Struct("<BI")       # tag, entry count
CONSTANT = struct.Struct("<B8s")     # kind, 8 payload bytes
STRING_LENGTH = struct.Struct("<I")
FUNCTION = struct.Struct("<IHHHI")   # name string, params, captures, slots, instructions
INSTRUCTION = struct.Struct("<BIHI") # op, a, b, line
CHOICE = struct.Struct("<HII")       # options, line, column

SECTION_CONSTANTS, SECTION_STRINGS, SECTION_FUNCTIONS, SECTION_CHOICES = 1, 2, 3, 4
CONSTANT_INT, CONSTANT_FLOAT = 1, 2


@dataclass(frozen=True)
class FunctionCode:
    name: int            # index into strings
    params: int
    captures: int
    slots: int           # params first, then captures, then locals
    code: tuple          # of (op, a, b, line)


@dataclass(frozen=True)
class ChoiceNode:
    index: int
    options: int
    line: int
    column: int


@dataclass(frozen=True)
class Program:
    constants: tuple     # ints and floats
    strings: tuple
    functions: tuple     # of FunctionCode; function 0 is the program's top level
    choices: tuple       # of ChoiceNode, in source order

    def function_name(self, index):
        return self.strings[self.functions[index].name]


def encode(program):
    """The ``.lyc`` bytes of a program. The same program always gives the same bytes."""
    body = bytearray()
    body += SECTION.pack(SECTION_CONSTANTS, len(program.constants))
    for value in program.constants:
        if type(value) is int:
            body += CONSTANT.pack(CONSTANT_INT, struct.pack("<q", value))
        else:
            body += CONSTANT.pack(CONSTANT_FLOAT, struct.pack("<d", value))
    body += SECTION.pack(SECTION_STRINGS, len(program.strings))
    for text in program.strings:
        data = text.encode("utf-8")
        body += STRING_LENGTH.pack(len(data)) + data
    body += SECTION.pack(SECTION_FUNCTIONS, len(program.functions))
    for function in program.functions:
        body += FUNCTION.pack(function.name, function.params, function.captures,
                              function.slots, len(function.code))
        for instruction in function.code:
            body += INSTRUCTION.pack(*instruction)
    body += SECTION.pack(SECTION_CHOICES, len(program.choices))
    for choice in program.choices:
        body += CHOICE.pack(choice.options, choice.line, choice.column)
    body = bytes(body)
    return HEADER.pack(MAGIC, VERSION, 0, len(body), blake3.blake3(body).digest()) + body


def decode(data):
    """Parse ``.lyc`` bytes into a ``Program``, or raise ``VerifyError``."""
    data = bytes(data)
    if len(data) < HEADER.size:
        raise VerifyError("truncated-header", "offset 0",
                          f"{len(data)} bytes, a header needs {HEADER.size}")
    magic, version, flags, body_length, checksum = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise VerifyError("bad-magic", "offset 0", f"expected {MAGIC!r}, found {magic!r}")
    if version != VERSION:
        raise VerifyError("bad-version", "offset 4", f"version {version}, this reader knows {VERSION}")
    if flags != 0:
        raise VerifyError("bad-flags", "offset 6", f"flags {flags:#x}, must be 0")
    body = data[HEADER.size:]
    if body_length != len(body):
        raise VerifyError("bad-length", "offset 8",
                          f"header says {body_length} body bytes, file has {len(body)}")
    if blake3.blake3(body).digest() != checksum:
        raise VerifyError("bad-checksum", "offset 12", "BLAKE3 of the body does not match")
    reader = _Reader(body, HEADER.size)
    constants = tuple(reader.constant(i) for i in range(reader.section(SECTION_CONSTANTS, CONSTANT.size)))
    strings = tuple(reader.string(i) for i in range(reader.section(SECTION_STRINGS, STRING_LENGTH.size)))
    functions = tuple(reader.function(i) for i in range(reader.section(SECTION_FUNCTIONS, FUNCTION.size)))
    choices = tuple(reader.choice(i) for i in range(reader.section(SECTION_CHOICES, CHOICE.size)))
    if reader.position != len(body):
        raise VerifyError("trailing-bytes", reader.where(),
                          f"{len(body) - reader.position} bytes after the last section")
    return Program(constants, strings, functions, choices)


class _Reader:
    """Bounds-checked reads from the body; offsets in errors are file offsets."""

    def __init__(self, body, base):
        self.body = body
        self.base = base
        self.position = 0

    def where(self):
        return f"offset {self.base + self.position}"

    def take(self, layout, what):
        if self.position + layout.size > len(self.body):
            raise VerifyError("truncated", self.where(), f"file ends inside {what}")
        values = layout.unpack_from(self.body, self.position)
        self.position += layout.size
        return values

    def count(self, count, entry_size, what):
        # Refuse a count the rest of the file cannot hold before looping over it.
        left = len(self.body) - self.position
        if count * entry_size > left:
            raise VerifyError("count-too-large", self.where(),
                              f"{count} {what} need at least {count * entry_size} bytes, {left} left")
        return count

    def section(self, expected_tag, entry_size):
        where = self.where()
        tag, count = self.take(SECTION, f"section {expected_tag} header")
        if tag != expected_tag:
            raise VerifyError("bad-section", where, f"expected section {expected_tag}, found {tag}")
        return self.count(count, entry_size, f"entries of section {tag}")

    def constant(self, index):
        where = self.where()
        kind, payload = self.take(CONSTANT, f"constant {index}")
        if kind == CONSTANT_INT:
            return struct.unpack("<q", payload)[0]
        if kind == CONSTANT_FLOAT:
            value = struct.unpack("<d", payload)[0]
            if not math.isfinite(value):
                raise VerifyError("bad-constant", where, f"constant {index} is {value}, not finite")
            return value
        raise VerifyError("bad-constant", where, f"constant {index} has unknown kind {kind}")

    def string(self, index):
        (length,) = self.take(STRING_LENGTH, f"string {index}")
        where = self.where()
        self.count(length, 1, f"bytes of string {index}")
        data = self.body[self.position:self.position + length]
        self.position += length
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise VerifyError("bad-string", where, f"string {index} is not UTF-8: {error.reason}") from None

    def function(self, index):
        name, params, captures, slots, length = self.take(FUNCTION, f"function {index}")
        self.count(length, INSTRUCTION.size, f"instructions of function {index}")
        code = tuple(self.take(INSTRUCTION, "an instruction") for _ in range(length))
        return FunctionCode(name, params, captures, slots, code)

    def choice(self, index):
        options, line, column = self.take(CHOICE, f"choice node {index}")
        return ChoiceNode(index, options, line, column)
