"""Source text to s-expressions.

The reader knows only syntax: lists, symbols, numbers and strings, each with the line and
column it starts at. Meaning (``$``, ``?``, ``true``...) is the compiler's business. It is
iterative, so deeply nested input is refused with ``ParseError`` instead of overflowing the
Python stack.

>>> read('(+ 1 2.5) ; a comment')
[List([Symbol('+'), 1, 2.5])]
"""

import re
from dataclasses import dataclass

from lycan.errors import ParseError

MAX_NESTING = 100  # deeper source than this is refused; keeps the compiler's recursion shallow

_INT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT = re.compile(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?=[eE]))([eE][+-]?[0-9]+)?\Z")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
_DELIMITERS = frozenset('();"') | frozenset(" \t\r\n")


@dataclass(frozen=True)
class Symbol:
    name: str
    line: int = 0
    column: int = 0

    def __repr__(self):
        return f"Symbol({self.name!r})"


@dataclass(frozen=True)
class Literal:
    """A number or string written in the source."""

    value: object
    line: int = 0
    column: int = 0

    def __repr__(self):
        return repr(self.value)


@dataclass(frozen=True)
class List:
    items: tuple
    line: int = 0
    column: int = 0

    def __repr__(self):
        return f"List({list(self.items)!r})"


def read(text):
    """Parse the whole text into a list of top-level forms."""
    forms = []
    open_lists = []  # (line, column, items) for each "(" not yet closed
    i, line, line_start = 0, 1, 0
    size = len(text)
    while i < size:
        char = text[i]
        column = i - line_start + 1
        if char == "\n":
            i, line, line_start = i + 1, line + 1, i + 1
            continue
        if char in " \t\r":
            i += 1
            continue
        if char == ";":
            while i < size and text[i] != "\n":
                i += 1
            continue
        if char == "(":
            if len(open_lists) >= MAX_NESTING:
                raise ParseError(f"lists nest deeper than {MAX_NESTING}", line, column)
            open_lists.append((line, column, []))
            i += 1
            continue
        if char == ")":
            if not open_lists:
                raise ParseError("unexpected ')'", line, column)
            start_line, start_column, items = open_lists.pop()
            node = List(tuple(items), start_line, start_column)
            i += 1
        elif char == '"':
            value, i, line, line_start = _read_string(text, i, line, line_start)
            node = Literal(value, line, column)
        else:
            end = i
            while end < size and text[end] not in _DELIMITERS:
                end += 1
            node = _atom(text[i:end], line, column)
            i = end
        (open_lists[-1][2] if open_lists else forms).append(node)
    if open_lists:
        start_line, start_column, _ = open_lists[-1]
        raise ParseError("'(' is never closed", start_line, start_column)
    return forms


def _read_string(text, i, line, line_start):
    start_line, start_column = line, i - line_start + 1
    chars = []
    i += 1
    while i < len(text):
        char = text[i]
        if char == '"':
            return "".join(chars), i + 1, line, line_start
        if char == "\\":
            escaped = text[i + 1] if i + 1 < len(text) else ""
            if escaped not in _ESCAPES:
                raise ParseError(f"unknown escape \\{escaped}", line, i - line_start + 1)
            chars.append(_ESCAPES[escaped])
            i += 2
            continue
        if char == "\n":
            line, line_start = line + 1, i + 1
        chars.append(char)
        i += 1
    raise ParseError("string is never closed", start_line, start_column)


def _atom(token, line, column):
    if _INT.match(token):
        return Literal(int(token), line, column)
    if _FLOAT.match(token):
        return Literal(float(token), line, column)
    return Symbol(token, line, column)
