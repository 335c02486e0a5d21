"""S-expressions to a ``Program`` (the in-memory form of a ``.lyc`` file).

Each function compiles to stack code. Variables live in numbered slots; the compiler resolves
every name, so nothing is looked up by name at run time. Lambdas capture the *values* of the
outer variables they mention when they are created.

>>> program = compile_source("($ x 2) (* x 21)")
>>> [Op(op).name for op, a, b, line in program.functions[0].code]
['CONST', 'STORE', 'POP', 'LOAD', 'CONST', 'MUL', 'RETURN']
"""

import math
import struct

from lycan.capabilities import REGISTRY
from lycan.errors import CompileError
from lycan.format import ChoiceNode, FunctionCode, Program
from lycan.opcodes import BUILTIN_IDS, BUILTINS, MAX_SLOTS, Op
from lycan.reader import List, Literal, Symbol, read
from lycan.values import INT64_MAX, INT64_MIN

BINARY_OPERATORS = {
    "+": Op.ADD, "-": Op.SUB, "*": Op.MUL, "/": Op.DIV, "%": Op.MOD, "==": Op.EQ,
    "!=": Op.NE, "<": Op.LT, ">": Op.GT, "<=": Op.LE, ">=": Op.GE,
}
UNARY_OPERATORS = {"not": Op.NOT, "neg": Op.NEG}
FORMS = {"$", "$!", "=", "F", "\\", "?", "B", "W", "each", "#", "^", "A", "I", "..",
         "choice", "!cap", "&&", "||"}
LITERAL_NAMES = {"true": Op.TRUE, "false": Op.FALSE, "null": Op.NULL}
RESERVED = FORMS | set(BINARY_OPERATORS) | set(UNARY_OPERATORS) | set(BUILTIN_IDS) | set(LITERAL_NAMES)
LEN_BUILTIN = BUILTIN_IDS["!len"]


def compile_source(text):
    """Compile Lycan source text into a ``Program``; raises ``ParseError`` or ``CompileError``."""
    forms = read(text)
    builder = _ProgramBuilder()
    builder.number_choices(forms)
    definitions = [form for form in forms if _head(form) == "F"]
    for definition in definitions:
        builder.declare(definition)
    main = _FunctionBuilder(builder, "<program>", (), None, line=1)
    main.body([form for form in forms if _head(form) != "F"], line=1)
    builder.functions[0] = main.finish()
    for definition in definitions:
        name, params, body = definition.items[1], definition.items[2], definition.items[3:]
        function = _FunctionBuilder(builder, name.name, params.items, None, definition.line)
        function.body(body, definition.line)
        builder.functions[builder.named[name.name][0]] = function.finish()
    return Program(tuple(builder.constants), tuple(builder.strings),
                   tuple(builder.functions), tuple(builder.choices))


def _head(form):
    if isinstance(form, List) and form.items and isinstance(form.items[0], Symbol):
        return form.items[0].name
    return None


def _fail(message, node):
    raise CompileError(message, node.line, node.column)


def _check_name(node, what):
    if not isinstance(node, Symbol):
        _fail(f"{what} must be a name, got {node!r}", node)
    if node.name in RESERVED:
        _fail(f"{node.name!r} is reserved and cannot be a {what}", node)
    return node.name


def _check_params(params_node):
    if not isinstance(params_node, List):
        _fail("parameters must be a list of names", params_node)
    names = [_check_name(p, "parameter") for p in params_node.items]
    for param, name in zip(params_node.items, names):
        if names.count(name) > 1:
            _fail(f"parameter {name!r} appears twice", param)
    return names


class _ProgramBuilder:
    """The program-wide tables: constants, strings, functions and choice nodes."""

    def __init__(self):
        self.constants, self._constant_index = [], {}
        self.strings, self._string_index = [], {}
        self.functions = [None]  # slot 0 is the top level, filled in last
        self.named = {}          # function name -> (index, parameter count)
        self.choices = []
        self.choice_numbers = {}  # id(choice list node) -> its number

    def number_choices(self, forms):
        # Choice nodes are numbered in source order, whatever order functions compile in,
        # so a node keeps its number when code around it moves between functions.
        pending = list(reversed(forms))
        while pending:
            node = pending.pop()
            if isinstance(node, List):
                if _head(node) == "choice":
                    self.choice_numbers[id(node)] = len(self.choice_numbers)
                pending.extend(reversed(node.items))
        self.choices = [None] * len(self.choice_numbers)

    def declare(self, definition):
        if len(definition.items) < 4:
            _fail("F needs a name, a parameter list and a body: (F name (args) body)", definition)
        name = _check_name(definition.items[1], "function name")
        if name in self.named:
            _fail(f"function {name!r} is defined twice", definition.items[1])
        params = _check_params(definition.items[2])
        self.named[name] = (len(self.functions), len(params))
        self.functions.append(None)

    def constant(self, value):
        # Key by type and exact bits so 1 and 1.0, or 0.0 and -0.0, stay distinct.
        key = (type(value), struct.pack("<d", value) if type(value) is float else value)
        if key not in self._constant_index:
            self._constant_index[key] = len(self.constants)
            self.constants.append(value)
        return self._constant_index[key]

    def string(self, text):
        if text not in self._string_index:
            self._string_index[text] = len(self.strings)
            self.strings.append(text)
        return self._string_index[text]


class _Binding:
    __slots__ = ("captured", "mutable", "slot")

    def __init__(self, slot, mutable, captured=False):
        self.slot = slot
        self.mutable = mutable
        self.captured = captured


class _FunctionBuilder:
    """Compiles one function. Slots get provisional ids and are renumbered in ``finish``
    because a lambda only learns what it captures while its body is being compiled."""

    def __init__(self, program, name, params, parent, line):
        self.program = program
        self.name = name
        self.parent = parent
        self.code = []
        self.slot_kinds = []       # provisional id -> "param" | "capture" | "local"
        self.captured = {}         # name -> binding inside this function
        self.capture_sources = []  # the parent's binding for each capture, in order
        names = _check_params(List(tuple(params), line, 0)) if params else []
        self.params = len(names)
        self.scopes = [{name: _Binding(self.new_slot("param"), False) for name in names}]

    # ---- bookkeeping ----

    def new_slot(self, kind):
        self.slot_kinds.append(kind)
        return len(self.slot_kinds) - 1

    def emit(self, op, node, a=0, b=0):
        self.code.append([op, a, b, node.line])
        return len(self.code) - 1

    def here(self):
        return len(self.code)

    def patch(self, at, target):
        self.code[at][1] = target

    def lookup(self, name):
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        if name in self.captured:
            return self.captured[name]
        outer = self.parent.lookup(name) if self.parent else None
        if outer is None:
            return None
        binding = _Binding(self.new_slot("capture"), False, captured=True)
        self.captured[name] = binding
        self.capture_sources.append(outer)
        return binding

    def finish(self):
        order = {"param": [], "capture": [], "local": []}
        for provisional, kind in enumerate(self.slot_kinds):
            order[kind].append(provisional)
        final = order["param"] + order["capture"] + order["local"]
        renumber = {provisional: index for index, provisional in enumerate(final)}
        if len(final) > MAX_SLOTS:
            raise CompileError(f"function {self.name} needs {len(final)} slots, more than {MAX_SLOTS}", 0, 0)
        for instruction in self.code:
            if instruction[0] in (Op.LOAD, Op.STORE):
                instruction[1] = renumber[instruction[1]]
        return FunctionCode(self.program.string(self.name), self.params, len(order["capture"]),
                            len(final), tuple(tuple(int(x) for x in i) for i in self.code))

    # ---- bodies and scopes ----

    def body(self, forms, line):
        """A function body: its value is the last form's, returned."""
        node = forms[0] if forms else Symbol("", line, 0)
        self.block(forms, node)
        self.emit(Op.RETURN, node)

    def block(self, forms, node):
        """Forms in a fresh scope; leaves the last one's value (null when empty)."""
        self.scopes.append({})
        if not forms:
            self.emit(Op.NULL, node)
        for position, form in enumerate(forms):
            self.expression(form)
            if position < len(forms) - 1:
                self.emit(Op.POP, form)
        self.scopes.pop()

    def scoped(self, node):
        # Code that may not run (a branch, an option) gets its own scope, so a binding made
        # there cannot be read later by code that skipped it.
        self.block([node], node)

    # ---- expressions ----

    def expression(self, node):
        if isinstance(node, Literal):
            return self.literal(node)
        if isinstance(node, Symbol):
            return self.reference(node)
        if not node.items:
            _fail("an empty list () is not an expression", node)
        head, args = node.items[0], node.items[1:]
        if isinstance(head, Symbol):
            name = head.name
            if name in FORMS:
                return getattr(self, "form_" + _FORM_METHODS[name])(node, args)
            if name in BINARY_OPERATORS:
                self.arity(node, args, 2, 2)
                return self.operands(args, BINARY_OPERATORS[name], node)
            if name in UNARY_OPERATORS:
                self.arity(node, args, 1, 1)
                return self.operands(args, UNARY_OPERATORS[name], node)
            if name in BUILTIN_IDS:
                _, least, most = BUILTINS[BUILTIN_IDS[name]]
                self.arity(node, args, least, most)
                for arg in args:
                    self.expression(arg)
                return self.emit(Op.BUILTIN, node, BUILTIN_IDS[name], len(args))
        return self.call(node, head, args)

    def arity(self, node, args, least, most):
        name = node.items[0].name
        if len(args) < least or (most is not None and len(args) > most):
            wanted = str(least) if least == most else f"at least {least}" if most is None else f"{least} to {most}"
            _fail(f"{name} takes {wanted} arguments, got {len(args)}", node)
        if len(args) > 0xFFFF:
            _fail(f"{name} has more than 65535 arguments", node)

    def operands(self, args, op, node, a=0, b=0):
        for arg in args:
            self.expression(arg)
        return self.emit(op, node, a, b)

    def literal(self, node):
        value = node.value
        if type(value) is str:
            return self.emit(Op.STRING, node, self.program.string(value))
        if type(value) is int and not INT64_MIN <= value <= INT64_MAX:
            _fail(f"integer {value} is outside int64", node)
        if type(value) is float and not math.isfinite(value):
            _fail(f"number {value} is not finite", node)
        return self.emit(Op.CONST, node, self.program.constant(value))

    def reference(self, node):
        if node.name in LITERAL_NAMES:
            return self.emit(LITERAL_NAMES[node.name], node)
        binding = self.lookup(node.name)
        if binding is not None:
            return self.emit(Op.LOAD, node, binding.slot)
        if node.name in self.program.named:
            return self.emit(Op.CLOSURE, node, self.program.named[node.name][0], 0)
        if node.name in RESERVED:
            _fail(f"{node.name!r} is not a value; call it as ({node.name} ...)", node)
        _fail(f"unknown name {node.name!r}", node)

    def call(self, node, head, args):
        binding = self.lookup(head.name) if isinstance(head, Symbol) else None
        if isinstance(head, Symbol) and binding is None:
            if head.name not in self.program.named:
                _fail(f"unknown function {head.name!r}", head)
            index, params = self.program.named[head.name]
            if len(args) != params:
                _fail(f"{head.name} takes {params} arguments, got {len(args)}", node)
            return self.operands(args, Op.CALL, node, index, len(args))
        self.expression(head)
        if len(args) > 0xFFFF:
            _fail("a call has more than 65535 arguments", node)
        for arg in args:
            self.expression(arg)
        return self.emit(Op.CALL_VALUE, node, 0, len(args))

    # ---- special forms ----

    def form_bind(self, node, args):
        self.arity(node, args, 2, 2)
        name = _check_name(args[0], "variable name")
        if name in self.scopes[-1]:
            _fail(f"{name!r} is already bound in this scope; use ($! {name} ...) and (= {name} ...) to change a value", args[0])
        self.expression(args[1])
        binding = _Binding(self.new_slot("local"), node.items[0].name == "$!")
        self.scopes[-1][name] = binding
        return self.emit(Op.STORE, node, binding.slot)

    def form_assign(self, node, args):
        self.arity(node, args, 2, 2)
        name = _check_name(args[0], "variable name")
        binding = self.lookup(name)
        if binding is None:
            _fail(f"cannot assign unknown variable {name!r}", args[0])
        if binding.captured:
            _fail(f"cannot assign {name!r}: a lambda holds a copy of it, not the variable", args[0])
        if not binding.mutable:
            _fail(f"cannot assign {name!r}: bind it with $! to make it mutable", args[0])
        self.expression(args[1])
        return self.emit(Op.STORE, node, binding.slot)

    def form_function(self, node, args):
        _fail("F defines functions only at the top level", node)

    def form_lambda(self, node, args):
        if len(args) < 2:
            _fail("a lambda needs a parameter list and a body: (\\ (x) body)", node)
        if not isinstance(args[0], List):
            _fail("parameters must be a list of names", args[0])
        lambda_ = _FunctionBuilder(self.program, f"lambda@{node.line}:{node.column}",
                                   args[0].items, self, node.line)
        index = len(self.program.functions)
        self.program.functions.append(None)
        lambda_.body(args[1:], node.line)
        self.program.functions[index] = lambda_.finish()
        for source in lambda_.capture_sources:
            self.emit(Op.LOAD, node, source.slot)
        return self.emit(Op.CLOSURE, node, index, len(lambda_.capture_sources))

    def form_if(self, node, args):
        self.arity(node, args, 2, 3)
        self.scoped(args[0])
        to_else = self.emit(Op.JUMP_IF_FALSE, node)
        self.scoped(args[1])
        to_end = self.emit(Op.JUMP, node)
        self.patch(to_else, self.here())
        if len(args) == 3:
            self.scoped(args[2])
        else:
            self.emit(Op.NULL, node)
        self.patch(to_end, self.here())

    def form_and(self, node, args):
        self.arity(node, args, 2, 2)
        self.scoped(args[0])
        first_false = self.emit(Op.JUMP_IF_FALSE, node)
        self.scoped(args[1])
        second_false = self.emit(Op.JUMP_IF_FALSE, node)
        self.emit(Op.TRUE, node)
        to_end = self.emit(Op.JUMP, node)
        self.patch(first_false, self.here())
        self.patch(second_false, self.here())
        self.emit(Op.FALSE, node)
        self.patch(to_end, self.here())

    def form_or(self, node, args):
        self.arity(node, args, 2, 2)
        self.scoped(args[0])
        to_second = self.emit(Op.JUMP_IF_FALSE, node)
        self.emit(Op.TRUE, node)
        first_true = self.emit(Op.JUMP, node)
        self.patch(to_second, self.here())
        self.scoped(args[1])
        second_false = self.emit(Op.JUMP_IF_FALSE, node)
        self.emit(Op.TRUE, node)
        second_true = self.emit(Op.JUMP, node)
        self.patch(second_false, self.here())
        self.emit(Op.FALSE, node)
        self.patch(first_true, self.here())
        self.patch(second_true, self.here())

    def form_block(self, node, args):
        self.block(list(args), node)

    def form_while(self, node, args):
        self.arity(node, args, 1, None)
        start = self.here()
        self.scoped(args[0])
        to_end = self.emit(Op.JUMP_IF_FALSE, node)
        self.loop_body(node, args[1:], start)
        self.patch(to_end, self.here())
        self.emit(Op.NULL, node)

    def form_each(self, node, args):
        self.arity(node, args, 2, None)
        name = _check_name(args[0], "loop variable")
        array, index = self.new_slot("local"), self.new_slot("local")
        self.expression(args[1])
        self.emit(Op.EXPECT_ARRAY, node)
        self.store_and_pop(array, node)
        self.emit(Op.CONST, node, self.program.constant(0))
        self.store_and_pop(index, node)
        start = self.here()
        self.emit(Op.LOAD, node, index)
        self.emit(Op.LOAD, node, array)
        self.emit(Op.BUILTIN, node, LEN_BUILTIN, 1)
        self.emit(Op.LT, node)
        to_end = self.emit(Op.JUMP_IF_FALSE, node)
        element = _Binding(self.new_slot("local"), False)
        self.scopes.append({name: element})
        self.emit(Op.LOAD, node, array)
        self.emit(Op.LOAD, node, index)
        self.emit(Op.INDEX, node)
        self.store_and_pop(element.slot, node)
        self.counted_body(node, args[2:], index, start)
        self.scopes.pop()
        self.patch(to_end, self.here())
        self.emit(Op.NULL, node)

    def form_repeat(self, node, args):
        self.arity(node, args, 1, None)
        count, index = self.new_slot("local"), self.new_slot("local")
        self.expression(args[0])
        self.emit(Op.EXPECT_COUNT, node)
        self.store_and_pop(count, node)
        self.emit(Op.CONST, node, self.program.constant(0))
        self.store_and_pop(index, node)
        start = self.here()
        self.emit(Op.LOAD, node, index)
        self.emit(Op.LOAD, node, count)
        self.emit(Op.LT, node)
        to_end = self.emit(Op.JUMP_IF_FALSE, node)
        self.counted_body(node, args[1:], index, start)
        self.patch(to_end, self.here())
        self.emit(Op.NULL, node)

    def store_and_pop(self, slot, node):
        self.emit(Op.STORE, node, slot)
        self.emit(Op.POP, node)

    def loop_body(self, node, forms, start):
        self.block(list(forms), node)
        self.emit(Op.POP, node)
        self.emit(Op.JUMP, node, start)

    def counted_body(self, node, forms, index, start):
        self.block(list(forms), node)
        self.emit(Op.POP, node)
        self.emit(Op.LOAD, node, index)
        self.emit(Op.CONST, node, self.program.constant(1))
        self.emit(Op.ADD, node)
        self.store_and_pop(index, node)
        self.emit(Op.JUMP, node, start)

    def form_return(self, node, args):
        self.arity(node, args, 0, 1)
        if args:
            self.expression(args[0])
        else:
            self.emit(Op.NULL, node)
        return self.emit(Op.RETURN, node)

    def form_array(self, node, args):
        self.arity(node, args, 0, None)
        return self.operands(args, Op.ARRAY, node, len(args))

    def form_index(self, node, args):
        self.arity(node, args, 2, 2)
        return self.operands(args, Op.INDEX, node)

    def form_range(self, node, args):
        self.arity(node, args, 2, 2)
        return self.operands(args, Op.RANGE, node)

    def form_choice(self, node, args):
        self.arity(node, args, 2, None)
        choice = ChoiceNode(self.program.choice_numbers[id(node)], len(args), node.line, node.column)
        self.program.choices[choice.index] = choice
        self.emit(Op.CHOICE, node, choice.index)
        table = [self.emit(Op.JUMP, option) for option in args]
        ends = []
        for entry, option in zip(table, args):
            self.patch(entry, self.here())
            self.scoped(option)
            ends.append(self.emit(Op.JUMP, option))
        for end in ends:
            self.patch(end, self.here())

    def form_capability(self, node, args):
        if not args or not isinstance(args[0], Literal) or type(args[0].value) is not str:
            _fail('!cap needs a capability name string first: (!cap "stats.mean" xs)', node)
        name = args[0].value
        if name not in REGISTRY:
            _fail(f"unknown capability {name!r}", args[0])
        inputs = REGISTRY[name].inputs
        if len(args) - 1 != len(inputs):
            _fail(f"capability {name} takes {len(inputs)} arguments ({', '.join(i.name for i in inputs)}), got {len(args) - 1}", node)
        for arg in args[1:]:
            self.expression(arg)
        return self.emit(Op.CAPABILITY, node, self.program.string(name), len(args) - 1)


_FORM_METHODS = {
    "$": "bind", "$!": "bind", "=": "assign", "F": "function", "\\": "lambda", "?": "if",
    "B": "block", "W": "while", "each": "each", "#": "repeat", "^": "return", "A": "array",
    "I": "index", "..": "range", "choice": "choice", "!cap": "capability", "&&": "and",
    "||": "or",
}
