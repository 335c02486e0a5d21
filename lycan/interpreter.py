"""Runs a verified ``Program`` under hard limits.

The machine keeps its own frame stack (no Python recursion), counts every instruction
against ``Limits.max_steps``, and checks the wall clock every 1024 steps, so no program can
hang its caller or overflow the Python stack.

>>> from lycan.compiler import compile_source
>>> program = compile_source('(F fact (n) (? (<= n 1) 1 (* n (fact (- n 1))))) (fact 10)')
>>> run(program).value
3628800
>>> result = run(compile_source('(choice "small" "large")'), chooser=lambda node: 1)
>>> result.value, result.choices
('large', (ChoiceMade(node=0, index=1),))
"""

import math
import re
import time
from dataclasses import dataclass, fields

from lycan import values
from lycan.capabilities import REGISTRY, RunContext
from lycan.errors import ExecutionError, LimitExceeded
from lycan.format import Program, decode
from lycan.opcodes import BUILTINS, Op
from lycan.policy import Policy
from lycan.values import Array, Function, Map, display, is_number, type_name
from lycan.verifier import verify

_CLOCK_EVERY = 1024  # steps between wall-clock checks: cheap, and still milliseconds apart
_HOT_OPS = tuple(int(op) for op in (Op.LOAD, Op.STORE, Op.CONST, Op.POP, Op.JUMP, Op.JUMP_IF_FALSE))
# The other opcodes the loop and its helpers test, as plain ints too (module globals beat
# enum attributes).
_CALL = int(Op.CALL)
_CALL_VALUE = int(Op.CALL_VALUE)
_FALSE = int(Op.FALSE)
_GE = int(Op.GE)
_NEG = int(Op.NEG)
_NOT = int(Op.NOT)
_NULL = int(Op.NULL)
_RETURN = int(Op.RETURN)
_STRING = int(Op.STRING)
_TRUE = int(Op.TRUE)
_ADD = int(Op.ADD)
_ARRAY = int(Op.ARRAY)
_BUILTIN = int(Op.BUILTIN)
_CAPABILITY = int(Op.CAPABILITY)
_CHOICE = int(Op.CHOICE)
_CLOSURE = int(Op.CLOSURE)
_DIV = int(Op.DIV)
_EQ = int(Op.EQ)
_EXPECT_ARRAY = int(Op.EXPECT_ARRAY)
_EXPECT_COUNT = int(Op.EXPECT_COUNT)
_INDEX = int(Op.INDEX)
_MOD = int(Op.MOD)
_MUL = int(Op.MUL)
_NE = int(Op.NE)
_RANGE = int(Op.RANGE)
_SUB = int(Op.SUB)


@dataclass(frozen=True)
class Limits:
    """Every bound a run is held to; exceeding one raises ``LimitExceeded(limit=<field>)``."""

    max_steps: int = 1_000_000        # instructions executed
    max_seconds: float = 1.0          # wall clock for the whole run
    max_call_depth: int = 200         # nested function calls
    max_array_length: int = 100_000   # elements in one array (also input arrays and objects)
    max_string_length: int = 100_000  # characters in one string
    max_output_bytes: int = 65_536    # UTF-8 bytes printed by !p
    max_nesting: int = 64             # arrays inside arrays (also input nesting)

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if not is_number(value) or not value > 0:
                raise ValueError(f"Limits.{field.name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class ChoiceMade:
    node: int
    index: int


@dataclass(frozen=True)
class RunResult:
    value: object
    published: dict
    stdout: str
    choices: tuple   # of ChoiceMade, in the order they were made
    steps: int

    def to_json(self):
        """The result as plain JSON data; a function value has no JSON form."""
        return {
            "result": values.to_json(self.value),
            "published": {name: values.to_json(v) for name, v in self.published.items()},
            "stdout": self.stdout,
            "choices": [{"node": c.node, "index": c.index} for c in self.choices],
            "steps": self.steps,
        }


def run(program, input=None, *, chooser=None, limits=None, capabilities=REGISTRY, policy=None,
        verified=False):
    """Verify and run a program (a ``Program`` or ``.lyc`` bytes) on JSON-like ``input``.

    ``chooser(node)`` is called at each choice node with its ``ChoiceNode`` and returns the
    index of the option to take. ``policy`` (a ``lycan.policy.Policy``) grants the I/O
    capabilities; without one every I/O capability is denied. ``verified=True`` skips the
    verification, for a ``Program`` that ``lycan.load`` or ``lycan.verify`` (with the same
    capabilities) already returned: a host that runs one program many times checks it once.
    """
    if policy is not None and not isinstance(policy, Policy):
        raise TypeError(f"policy must be a lycan.policy.Policy or None, got {type(policy).__name__}")
    if not isinstance(program, Program):
        program = decode(program)
        verified = False
    if not verified:
        verify(program, capabilities)
    return _Machine(program, chooser, limits or Limits(), capabilities, policy).run(input)


class _Frame:
    __slots__ = ("code", "function", "pc", "slots", "stack")

    def __init__(self, function, code, slots):
        self.function = function
        self.code = code
        self.slots = slots
        self.stack = []
        self.pc = 0


class _Machine:
    def __init__(self, program, chooser, limits, capabilities, policy=None):
        self.policy = policy
        self.program = program
        self.chooser = chooser
        self.limits = limits
        self.capabilities = capabilities
        self.output = []
        self.output_bytes = 0
        self.choices = []

    def run(self, input_value):
        limits = self.limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.context = RunContext(values.from_json(
            input_value, limits.max_nesting, limits.max_array_length, limits.max_string_length),
            policy=self.policy, limits=limits, deadline=self.deadline)
        self.steps = 0
        frame = self.new_frame(0, [])
        self.frames = [frame]
        try:
            value = self.execute(frame)
        except ExecutionError as error:
            if error.line is None:
                current = self.frames[-1]
                error.locate(self.program.function_name(current.function),
                             current.code[max(current.pc - 1, 0)][3])
            raise
        return RunResult(value, dict(self.context.published), "".join(self.output),
                         tuple(self.choices), self.steps)

    def new_frame(self, index, arguments):
        function = self.program.functions[index]
        slots = arguments + [None] * (function.slots - len(arguments))
        return _Frame(index, function.code, slots)

    def call(self, index, arguments):
        if len(self.frames) >= self.limits.max_call_depth:
            raise LimitExceeded("max_call_depth",
                                f"calls nest deeper than max_call_depth {self.limits.max_call_depth}")
        frame = self.new_frame(index, arguments)
        self.frames.append(frame)
        return frame

    def execute(self, frame):
        program, limits = self.program, self.limits
        constants, strings = program.constants, program.strings
        max_steps = limits.max_steps
        code, slots, stack = frame.code, frame.slots, frame.stack
        pc = 0
        # The hottest opcodes as plain ints: comparing with IntEnum members costs an attribute
        # lookup and an enum __eq__ per instruction.
        LOAD, STORE, CONST, POP, JUMP, JUMP_IF_FALSE = _HOT_OPS
        # One comparison a step: against whichever comes first, the step limit or the next
        # look at the clock.
        steps = self.steps
        checkpoint = min(max_steps, steps + _CLOCK_EVERY)
        while True:
            op, a, b, _ = code[pc]
            pc += 1
            frame.pc = pc
            steps += 1
            if steps > checkpoint:
                self.steps = steps
                if steps > max_steps:
                    raise LimitExceeded("max_steps", f"ran more than max_steps {max_steps} steps")
                if time.monotonic() > self.deadline:
                    raise LimitExceeded("max_seconds", f"ran longer than max_seconds {limits.max_seconds}")
                checkpoint = min(max_steps, steps + _CLOCK_EVERY)

            if op == LOAD:
                stack.append(slots[a])
            elif op == STORE:
                slots[a] = stack[-1]
            elif op == CONST:
                stack.append(constants[a])
            elif op == POP:
                stack.pop()
            elif op == JUMP:
                pc = a
            elif op == JUMP_IF_FALSE:
                condition = stack.pop()
                if condition is False:
                    pc = a
                elif condition is not True:
                    raise ExecutionError(f"a condition must be a bool, got {type_name(condition)}")
            elif op <= _FALSE:
                stack.append(strings[a] if op == _STRING else
                             None if op == _NULL else op == _TRUE)
            elif op <= _GE:
                right = stack.pop()
                stack[-1] = self.binary(op, stack[-1], right)
            elif op == _NOT:
                if type(stack[-1]) is not bool:
                    raise ExecutionError(f"not needs a bool, got {type_name(stack[-1])}")
                stack[-1] = not stack[-1]
            elif op == _NEG:
                stack[-1] = values.negate(stack[-1])
            elif op == _CALL or op == _CALL_VALUE:
                arguments = stack[len(stack) - b:]
                del stack[len(stack) - b:]
                if op == _CALL:
                    index = a
                else:
                    callee = stack.pop()
                    index = self.callable_index(callee, b)
                    arguments += callee.captures
                frame = self.call(index, arguments)
                code, slots, stack, pc = frame.code, frame.slots, frame.stack, 0
            elif op == _RETURN:
                value = stack.pop()
                self.frames.pop()
                if not self.frames:
                    self.steps = steps
                    return value
                frame = self.frames[-1]
                code, slots, stack, pc = frame.code, frame.slots, frame.stack, frame.pc
                stack.append(value)
            else:
                self.steps = steps
                pc = self.other(op, a, b, stack, pc)

    def callable_index(self, callee, argc):
        if not isinstance(callee, Function):
            raise ExecutionError(f"cannot call a {type_name(callee)}")
        params = self.program.functions[callee.index].params
        if params != argc:
            raise ExecutionError(f"{callee.name} takes {params} arguments, got {argc}")
        return callee.index

    def binary(self, op, left, right):
        if op == _ADD:
            return self.string_checked(values.add(left, right))
        if op == _SUB:
            return values.subtract(left, right)
        if op == _MUL:
            return values.multiply(left, right)
        if op == _DIV:
            return values.divide(left, right)
        if op == _MOD:
            return values.modulo(left, right)
        if op == _EQ:
            return values.equal(left, right)
        if op == _NE:
            return not values.equal(left, right)
        return values.compare(_COMPARISONS[op], left, right)

    def other(self, op, a, b, stack, pc):
        """The less frequent instructions; returns the next pc."""
        limits = self.limits
        if op == _ARRAY:
            items = stack[len(stack) - a:]
            del stack[len(stack) - a:]
            stack.append(self.array(items))
        elif op == _INDEX:
            key = stack.pop()
            stack[-1] = index_into(stack[-1], key)
        elif op == _RANGE:
            end = stack.pop()
            start = stack[-1]
            if type(start) is not int or type(end) is not int:
                raise ExecutionError(f".. needs two ints, got {type_name(start)} and {type_name(end)}")
            if end - start > limits.max_array_length:
                self.array_too_long(end - start)
            stack[-1] = values.make_array(range(start, end), limits.max_nesting)
        elif op == _BUILTIN:
            arguments = stack[len(stack) - b:]
            del stack[len(stack) - b:]
            stack.append(getattr(self, _BUILTIN_METHODS[a])(*arguments))
        elif op == _CAPABILITY:
            arguments = stack[len(stack) - b:]
            del stack[len(stack) - b:]
            result = self.capabilities[self.program.strings[a]].kernel(self.context, *arguments)
            stack.append(result)
        elif op == _CLOSURE:
            captured = tuple(stack[len(stack) - b:])
            del stack[len(stack) - b:]
            stack.append(Function(a, self.program.function_name(a), captured))
        elif op == _CHOICE:
            return pc + self.choose(a)
        elif op == _EXPECT_ARRAY:
            if not isinstance(stack[-1], Array):
                raise ExecutionError(f"each needs an array, got {type_name(stack[-1])}")
        elif op == _EXPECT_COUNT:
            count = stack[-1]
            if type(count) is not int or count < 0:
                raise ExecutionError(f"# needs a count (an int >= 0), got {type_name(count)} {display(count)}")
        return pc

    def choose(self, index):
        node = self.program.choices[index]
        if self.chooser is None:
            raise ExecutionError(f"choice node {index} was reached but no chooser was given")
        picked = self.chooser(node)
        if type(picked) is not int or not 0 <= picked < node.options:
            raise ExecutionError(f"the chooser picked {picked!r} at choice node {index}, "
                                 f"which has options 0 to {node.options - 1}")
        self.choices.append(ChoiceMade(index, picked))
        return picked

    # ---- size checks ----

    def array(self, items):
        if len(items) > self.limits.max_array_length:
            self.array_too_long(len(items))
        return values.make_array(items, self.limits.max_nesting)

    def array_too_long(self, length):
        raise LimitExceeded("max_array_length",
                            f"an array of {length} elements is longer than max_array_length "
                            f"{self.limits.max_array_length}")

    def string_checked(self, value):
        if type(value) is str and len(value) > self.limits.max_string_length:
            raise LimitExceeded("max_string_length",
                                f"a string of {len(value)} characters is longer than max_string_length "
                                f"{self.limits.max_string_length}")
        return value

    # ---- builtins ----

    def builtin_print(self, *arguments):
        text = " ".join(display(v) for v in arguments) + "\n"
        self.output_bytes += len(text.encode("utf-8"))
        if self.output_bytes > self.limits.max_output_bytes:
            raise LimitExceeded("max_output_bytes",
                                f"printed more than max_output_bytes {self.limits.max_output_bytes}")
        self.output.append(text)

    def builtin_num(self, value):
        if is_number(value):
            return value
        if type(value) is str:
            text = value.strip()
            if _INT_TEXT.match(text):
                return values.checked_int(int(text))
            if _FLOAT_TEXT.match(text):
                number = float(text)
                if math.isfinite(number):
                    return number
            raise ExecutionError(f"!num cannot read {value!r} as a number")
        raise ExecutionError(f"!num needs a number or a string, got {type_name(value)}")

    def builtin_str(self, value):
        return self.string_checked(display(value))

    def builtin_len(self, value):
        if type(value) is str or isinstance(value, (Array, Map)):
            return len(value)
        raise ExecutionError(f"!len needs a string, array or map, got {type_name(value)}")

    def builtin_abs(self, value):
        number = _number("!abs", value)
        return values.checked_int(abs(number)) if type(number) is int else abs(number)

    def builtin_floor(self, value):
        return values.checked_int(math.floor(_number("!floor", value)))

    def builtin_round(self, value):
        return values.checked_int(round(_number("!round", value)))

    def builtin_sqrt(self, value):
        number = _number("!sqrt", value)
        if number < 0:
            raise ExecutionError(f"!sqrt of a negative number ({number})")
        return math.sqrt(number)

    def builtin_ln(self, value):
        number = _number("!ln", value)
        if number <= 0:
            raise ExecutionError(f"!ln needs a number > 0, got {number}")
        return math.log(number)

    def builtin_exp(self, value):
        try:
            return math.exp(_number("!exp", value))
        except OverflowError:
            raise ExecutionError(f"!exp({value}) overflows a float") from None

    def builtin_min(self, *arguments):
        return min(_extremum_arguments("!min", arguments))

    def builtin_max(self, *arguments):
        return max(_extremum_arguments("!max", arguments))


_COMPARISONS = {Op.LT: "<", Op.GT: ">", Op.LE: "<=", Op.GE: ">="}
_BUILTIN_METHODS = tuple("builtin_" + {"p": "print"}.get(name[1:], name[1:]) for name, _, _ in BUILTINS)
_INT_TEXT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")


def _number(name, value):
    if not is_number(value):
        raise ExecutionError(f"{name} needs a number, got {type_name(value)}")
    return value


def _extremum_arguments(name, arguments):
    # (!min a b c) or (!min array): one array argument means its elements.
    if len(arguments) == 1 and isinstance(arguments[0], Array):
        arguments = arguments[0]
        if not arguments:
            raise ExecutionError(f"{name} of an empty array")
    for argument in arguments:
        _number(name, argument)
    return arguments


def index_into(container, key):
    """``(I container key)``: arrays and strings by int position, maps by string key."""
    if isinstance(container, (Array, str)):
        if type(key) is not int:
            raise ExecutionError(f"{type_name(container)} index must be an int, got {type_name(key)}")
        if not 0 <= key < len(container):
            raise ExecutionError(f"index {key} is out of range: the {type_name(container)} has length {len(container)}")
        return container[key]
    if isinstance(container, Map):
        if type(key) is not str:
            raise ExecutionError(f"a map key must be a string, got {type_name(key)}")
        if key not in container:
            raise ExecutionError(f"the map has no key {key!r}")
        return container[key]
    raise ExecutionError(f"cannot index into a {type_name(container)}")
