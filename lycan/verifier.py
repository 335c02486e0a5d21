"""Proves a decoded ``Program`` safe to run, or rejects it with a precise ``VerifyError``.

After ``verify`` passes, the interpreter can trust that every operand is in range, every
jump lands on an instruction, every call passes the right number of arguments, every
capability exists, and no instruction can pop from an empty stack or run off the end of its
function. The checks are linear in the size of the program.

>>> from lycan.compiler import compile_source
>>> from lycan.format import decode, encode
>>> verify(decode(encode(compile_source("(!cap \\"stats.mean\\" (A 1 2))")))).functions[0].params
0
"""

from lycan.capabilities import REGISTRY
from lycan.errors import VerifyError
from lycan.opcodes import BUILTINS, MAX_SLOTS, Op, stack_effect

_KNOWN_OPS = frozenset(int(op) for op in Op)


def verify(program, capabilities=REGISTRY):
    """Return ``program`` unchanged if it is safe to run; raise ``VerifyError`` if not."""
    if not program.functions:
        raise VerifyError("no-functions", "function table", "a program needs at least a top level")
    top = program.functions[0]
    if top.params or top.captures:
        raise VerifyError("bad-top-level", "function 0", "the top level takes no parameters or captures")
    for index, choice in enumerate(program.choices):
        if choice.options < 1:
            raise VerifyError("bad-choice", f"choice node {index}", "a choice node needs at least one option")
    for index, function in enumerate(program.functions):
        _FunctionCheck(program, index, function, capabilities).run()
    return program


class _FunctionCheck:
    def __init__(self, program, index, function, capabilities):
        self.program = program
        self.index = index
        self.function = function
        self.capabilities = capabilities

    def fail(self, what, pc, detail):
        where = f"function {self.index}" + ("" if pc is None else f" instruction {pc}")
        raise VerifyError(what, where, detail)

    def run(self):
        function = self.function
        if function.name >= len(self.program.strings):
            self.fail("string-out-of-range", None, f"name string {function.name} of {len(self.program.strings)}")
        if function.slots < function.params + function.captures:
            self.fail("bad-slots", None, f"{function.slots} slots cannot hold {function.params} "
                                         f"parameters and {function.captures} captures")
        if function.slots > MAX_SLOTS:
            self.fail("bad-slots", None, f"{function.slots} slots, more than {MAX_SLOTS}")
        if not function.code:
            self.fail("empty-code", None, "a function needs at least one instruction")
        for pc, instruction in enumerate(function.code):
            self.operands(pc, *instruction)
        self.stack_depths()

    def operands(self, pc, op, a, b, line):
        program = self.program
        if op not in _KNOWN_OPS:
            self.fail("bad-opcode", pc, f"unknown opcode {op}")
        op = Op(op)
        limit = {
            Op.CONST: ("constant-out-of-range", len(program.constants)),
            Op.STRING: ("string-out-of-range", len(program.strings)),
            Op.CAPABILITY: ("string-out-of-range", len(program.strings)),
            Op.LOAD: ("slot-out-of-range", self.function.slots),
            Op.STORE: ("slot-out-of-range", self.function.slots),
            Op.JUMP: ("jump-out-of-range", len(self.function.code)),
            Op.JUMP_IF_FALSE: ("jump-out-of-range", len(self.function.code)),
            Op.CALL: ("function-out-of-range", len(program.functions)),
            Op.CLOSURE: ("function-out-of-range", len(program.functions)),
            Op.BUILTIN: ("builtin-out-of-range", len(BUILTINS)),
            Op.CHOICE: ("choice-out-of-range", len(program.choices)),
        }.get(op)
        if limit is not None and a >= limit[1]:
            self.fail(limit[0], pc, f"{op.name} operand {a}, only {limit[1]} exist")
        if op == Op.CALL:
            callee = program.functions[a]
            if callee.captures:
                self.fail("bad-call", pc, f"function {a} needs captures and must be called as a value")
            if b != callee.params:
                self.fail("bad-arity", pc, f"function {a} takes {callee.params} arguments, call passes {b}")
        elif op == Op.CLOSURE:
            if a == 0:
                self.fail("bad-closure", pc, "the top level cannot be made a function value")
            if b != program.functions[a].captures:
                self.fail("bad-arity", pc, f"function {a} captures {program.functions[a].captures} values, not {b}")
        elif op == Op.BUILTIN:
            name, least, most = BUILTINS[a]
            if b < least or (most is not None and b > most):
                self.fail("bad-arity", pc, f"{name} cannot take {b} arguments")
        elif op == Op.CAPABILITY:
            name = program.strings[a]
            if name not in self.capabilities:
                self.fail("unknown-capability", pc, f"no capability named {name!r}")
            if b != len(self.capabilities[name].inputs):
                self.fail("bad-arity", pc, f"{name} takes {len(self.capabilities[name].inputs)} arguments, not {b}")
        elif op == Op.CHOICE:
            options = program.choices[a].options
            table = self.function.code[pc + 1:pc + 1 + options]
            if len(table) < options or any(entry[0] != Op.JUMP for entry in table):
                self.fail("bad-choice", pc, f"choice node {a} needs {options} JUMP instructions after it")

    def stack_depths(self):
        """Walk every reachable path; the stack depth at each instruction must be the same
        on every path that reaches it, never negative, and control must never run off the end."""
        code = self.function.code
        depth_at = [None] * len(code)
        pending = [(0, 0)]
        while pending:
            pc, depth = pending.pop()
            if pc >= len(code):
                self.fail("falls-off-end", pc, "control reaches the end of the function without RETURN")
            if depth_at[pc] is not None:
                if depth_at[pc] != depth:
                    self.fail("stack-mismatch", pc, f"reached with stack depths {depth_at[pc]} and {depth}")
                continue
            depth_at[pc] = depth
            op, a, b, _ = code[pc]
            popped, pushed = stack_effect(op, a, b)
            if popped > depth:
                self.fail("stack-underflow", pc, f"{Op(op).name} pops {popped} values, stack holds {depth}")
            after = depth - popped + pushed
            if op == Op.RETURN:
                continue
            if op == Op.JUMP:
                pending.append((a, after))
            elif op == Op.JUMP_IF_FALSE:
                pending.append((a, after))
                pending.append((pc + 1, after))
            elif op == Op.CHOICE:
                options = self.program.choices[a].options
                pending.extend((pc + 1 + k, after) for k in range(options))
            else:
                pending.append((pc + 1, after))
