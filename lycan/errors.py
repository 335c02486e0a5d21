"""The exceptions Lycan raises. Every failure a program, a file or a caller can cause is one
of these, so callers catch ``LycanError`` and nothing else.
"""


class LycanError(Exception):
    """Base class of every error Lycan raises on purpose."""


class ParseError(LycanError):
    """The source text is not well-formed s-expressions."""

    def __init__(self, message, line, column):
        super().__init__(f"line {line}, column {column}: {message}")
        self.reason = message
        self.line = line
        self.column = column


class CompileError(LycanError):
    """The s-expressions are well-formed but are not a valid program."""

    def __init__(self, message, line, column):
        super().__init__(f"line {line}, column {column}: {message}")
        self.reason = message
        self.line = line
        self.column = column


class VerifyError(LycanError):
    """A ``.lyc`` file was rejected before running.

    ``what`` is a short stable code (``"bad-magic"``, ``"slot-out-of-range"``, ...) that tests
    and callers can match on; ``where`` says where in the file the problem is.
    """

    def __init__(self, what, where, detail):
        super().__init__(f"{what} at {where}: {detail}")
        self.what = what
        self.where = where
        self.detail = detail


class ExecutionError(LycanError):
    """A program failed while running: a type error, a bad number, a bad choice.

    The interpreter fills in ``function`` and ``line`` as the error leaves the instruction
    that raised it.
    """

    def __init__(self, message):
        super().__init__(message)
        self.reason = message
        self.function = None
        self.line = None

    def locate(self, function, line):
        self.function = function
        self.line = line
        self.args = (f"line {line} in {function}: {self.reason}",)


class LimitExceeded(ExecutionError):
    """A run went past one of its ``Limits``; ``limit`` names the field."""

    def __init__(self, limit, message):
        super().__init__(message)
        self.limit = limit


class CapabilityError(ExecutionError):
    """A capability kernel was given a bad argument; names the kernel and the argument."""

    def __init__(self, capability, argument, message):
        super().__init__(f"{capability}: argument {argument!r} {message}")
        self.capability = capability
        self.argument = argument
