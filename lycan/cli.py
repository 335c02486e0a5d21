"""The ``lycan`` command: compile, run, inspect and list capabilities.

Every failure prints one line to stderr and exits with status 2.

>>> main(["caps"]) == 0  # doctest: +ELLIPSIS
file.exists(path: string) -> bool  [effects: filesystem-read] ...
json.get(value: map|array, key: string|int) -> any  [pure] ...
True
"""

import argparse
import json
import sys

from lycan import compile_bytes, load, run
from lycan.capabilities import REGISTRY
from lycan.errors import LycanError
from lycan.interpreter import Limits
from lycan.opcodes import BUILTINS, Op
from lycan.policy import Policy


def main(argv=None):
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, or a usage error already printed on one line
        return exit.code
    try:
        return args.handler(args)
    except (LycanError, OSError, ValueError, UnicodeError) as error:
        message = " ".join(str(error).split())  # one line, whatever the error text holds
        print(f"lycan: error: {message}", file=sys.stderr)
        return 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse would print the usage too; every lycan failure is one line.
        print(f"lycan: error: {message}", file=sys.stderr)
        sys.exit(2)


def _parser():
    parser = _Parser(prog="lycan", description="The Lycan capsule language.")
    commands = parser.add_subparsers(dest="command", required=True)

    compile_ = commands.add_parser("compile", help="compile a .lycs source file to .lyc")
    compile_.add_argument("source")
    compile_.add_argument("-o", "--output", required=True)
    compile_.set_defaults(handler=_compile)

    run_ = commands.add_parser("run", help="verify and run a .lyc file, printing JSON")
    run_.add_argument("program")
    run_.add_argument("--input", help="a JSON file holding the run's input (default: null)")
    run_.add_argument("--choose", default="",
                      help="comma-separated option index per choice node, in node order (default 0)")
    run_.add_argument("--max-steps", type=int, default=Limits.max_steps)
    run_.add_argument("--max-seconds", type=float, default=Limits.max_seconds)
    run_.add_argument("--policy", help="a policy.json granting I/O capabilities (default: deny all I/O)")
    run_.set_defaults(handler=_run)

    inspect = commands.add_parser("inspect", help="verify a .lyc file and show its contents")
    inspect.add_argument("program")
    inspect.set_defaults(handler=_inspect)

    caps = commands.add_parser("caps", help="list the capabilities")
    caps.set_defaults(handler=_caps)
    return parser


def _compile(args):
    with open(args.source, encoding="utf-8") as source:
        blob = compile_bytes(source.read())
    with open(args.output, "wb") as output:
        output.write(blob)
    return 0


def _read_program(path):
    with open(path, "rb") as file:
        return load(file.read())


def _run(args):
    program = _read_program(args.program)
    input_value = None
    if args.input:
        with open(args.input, encoding="utf-8") as file:
            input_value = json.load(file, parse_constant=_reject_constant)
    picks = [int(part) for part in args.choose.split(",") if part.strip()]
    policy = Policy.load(args.policy) if args.policy else None
    result = run(program, input_value,
                 chooser=lambda node: picks[node.index] if node.index < len(picks) else 0,
                 limits=Limits(max_steps=args.max_steps, max_seconds=args.max_seconds),
                 policy=policy)
    print(json.dumps(result.to_json(), ensure_ascii=False))
    return 0


def _reject_constant(name):
    raise ValueError(f"input holds {name}, which is not a finite number")


def _inspect(args):
    program = _read_program(args.program)
    print(f"lycan program: {len(program.constants)} constants, {len(program.strings)} strings, "
          f"{len(program.functions)} functions, {len(program.choices)} choice nodes")
    for index, value in enumerate(program.constants):
        print(f"constant {index}: {value!r}")
    for index, text in enumerate(program.strings):
        print(f"string {index}: {json.dumps(text, ensure_ascii=False)}")
    for index, choice in enumerate(program.choices):
        print(f"choice {index}: {choice.options} options at line {choice.line}, column {choice.column}")
    for index, function in enumerate(program.functions):
        print(f"function {index} {program.strings[function.name]}: {function.params} params, "
              f"{function.captures} captures, {function.slots} slots")
        for pc, (op, a, b, line) in enumerate(function.code):
            print(f"  {pc:5d}  {Op(op).name:<13} {_operands(program, Op(op), a, b):<28} ; line {line}")
    return 0


def _operands(program, op, a, b):
    if op == Op.CONST:
        return f"{a} ({program.constants[a]!r})"
    if op in (Op.STRING, Op.CAPABILITY):
        text = json.dumps(program.strings[a], ensure_ascii=False)
        return f"{a} ({text})" + (f" args={b}" if op == Op.CAPABILITY else "")
    if op == Op.BUILTIN:
        return f"{a} ({BUILTINS[a][0]}) args={b}"
    if op in (Op.CALL, Op.CLOSURE):
        return f"{a} ({program.function_name(a)}) {'args' if op == Op.CALL else 'captures'}={b}"
    if op == Op.CALL_VALUE:
        return f"args={b}"
    if op in (Op.LOAD, Op.STORE, Op.JUMP, Op.JUMP_IF_FALSE, Op.ARRAY, Op.CHOICE):
        return str(a)
    return ""


def _caps(args):
    for name in sorted(REGISTRY):
        capability = REGISTRY[name]
        kind = "pure" if capability.pure else "effects: " + ", ".join(capability.effects)
        print(f"{capability.signature()}  [{kind}]  {capability.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
