"""The instruction set shared by the compiler, the verifier and the interpreter.

Every instruction is ``(op, a, b, line)``. ``STACK_EFFECT[op]`` gives (values popped, values
pushed) as a function of ``a`` and ``b``; the verifier uses it to prove that no instruction
can find the stack too short. See FORMAT.md for the meaning of each operand.
"""

import enum


class Op(enum.IntEnum):
    CONST = 1          # push constants[a]
    STRING = 2         # push strings[a]
    NULL = 3
    TRUE = 4
    FALSE = 5
    LOAD = 6           # push slots[a]
    STORE = 7          # slots[a] = top (the value stays on the stack)
    POP = 8
    JUMP = 9           # pc = a
    JUMP_IF_FALSE = 10 # pop a bool; pc = a if it is false
    ADD = 11
    SUB = 12
    MUL = 13
    DIV = 14
    MOD = 15
    EQ = 16
    NE = 17
    LT = 18
    GT = 19
    LE = 20
    GE = 21
    NOT = 22
    NEG = 23
    ARRAY = 24         # pop a values, push them as an array
    INDEX = 25         # pop index, container; push the element
    RANGE = 26         # pop end, start; push [start, end)
    BUILTIN = 27       # call builtin a with b arguments
    CAPABILITY = 28    # call the capability named strings[a] with b arguments
    CALL = 29          # call function a with b arguments
    CALL_VALUE = 30    # pop b arguments and a function value; call it
    CLOSURE = 31       # pop b captured values; push function a closed over them
    RETURN = 32        # pop the result and leave the function
    CHOICE = 33        # ask the chooser at choice node a; jump via the next options JUMPs
    EXPECT_ARRAY = 34  # the top must be an array (for `each`)
    EXPECT_COUNT = 35  # the top must be an int >= 0 (for `#`)


BINARY = frozenset({Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.MOD, Op.EQ, Op.NE, Op.LT, Op.GT,
                    Op.LE, Op.GE, Op.INDEX, Op.RANGE})
UNARY = frozenset({Op.NOT, Op.NEG, Op.EXPECT_ARRAY, Op.EXPECT_COUNT, Op.STORE})
PUSH = frozenset({Op.CONST, Op.STRING, Op.NULL, Op.TRUE, Op.FALSE, Op.LOAD})


def stack_effect(op, a, b):
    """(popped, pushed) for one instruction."""
    if op in PUSH:
        return 0, 1
    if op in BINARY:
        return 2, 1
    if op in UNARY:
        return 1, 1
    if op in (Op.POP, Op.JUMP_IF_FALSE, Op.RETURN):
        return 1, 0
    if op in (Op.JUMP, Op.CHOICE):
        return 0, 0
    if op == Op.ARRAY:
        return a, 1
    if op in (Op.BUILTIN, Op.CAPABILITY, Op.CALL, Op.CLOSURE):
        return b, 1
    if op == Op.CALL_VALUE:
        return b + 1, 1
    raise ValueError(f"unknown opcode {op}")


# Builtins by id: name, least and most arguments (None: no upper bound).
BUILTINS = (
    ("!p", 0, None),
    ("!num", 1, 1),
    ("!str", 1, 1),
    ("!len", 1, 1),
    ("!abs", 1, 1),
    ("!floor", 1, 1),
    ("!round", 1, 1),
    ("!sqrt", 1, 1),
    ("!ln", 1, 1),
    ("!exp", 1, 1),
    ("!min", 1, None),
    ("!max", 1, None),
)
BUILTIN_IDS = {name: index for index, (name, _, _) in enumerate(BUILTINS)}

MAX_SLOTS = 4096  # slots per function; bounds the memory one call frame can ask for
