"""Lycan, the capsule language.

Lycan programs compute from a decision's input (forecasts, percentiles, z-scores, sandboxed
reads) before a ``choice`` node hands the pick to Syntra's learning layer. This package does
not depend on ``syntra`` or ``syntra_core``.

The life of a program: source text is compiled to ``.lyc`` bytes, the bytes are decoded and
verified, and the verified program runs under ``Limits`` with a chooser for its choice nodes.

>>> import lycan
>>> source = '''
... ($ load (!cap "runtime.inputGet" "cpu.recent"))
... ($ forecast (!cap "series.ewmaForecast" load 0.5))
... (!cap "runtime.publish" "forecast" forecast)
... (choice "hold" (!cap "ops.autoScaleRecommend" forecast 25 1 10))
... '''
>>> blob = lycan.compile_bytes(source)
>>> program = lycan.load(blob)
>>> result = lycan.run(program, {"cpu": {"recent": [40, 60, 80]}}, chooser=lambda node: 1)
>>> result.value, result.published, result.choices
(3, {'forecast': 65.0}, (ChoiceMade(node=0, index=1),))

See ``lycan/README.md`` for the language and ``lycan/FORMAT.md`` for the ``.lyc`` bytes.
"""

from lycan.capabilities import REGISTRY, Capability
from lycan.compiler import compile_source
from lycan.errors import (
    CapabilityError,
    CompileError,
    ExecutionError,
    LimitExceeded,
    LycanError,
    ParseError,
    VerifyError,
)
from lycan.format import ChoiceNode, Program, decode, encode
from lycan.interpreter import ChoiceMade, Limits, RunResult, run
from lycan.verifier import verify

__version__ = "0.1.0"

__all__ = [
    "REGISTRY", "Capability", "CapabilityError", "ChoiceMade", "ChoiceNode", "CompileError",
    "ExecutionError", "LimitExceeded", "Limits", "LycanError", "ParseError", "Program",
    "RunResult", "VerifyError", "compile_bytes", "compile_source", "decode", "encode", "load",
    "run", "verify",
]


def compile_bytes(source):
    """Compile source text straight to ``.lyc`` bytes."""
    return encode(compile_source(source))


def load(data):
    """Decode and verify ``.lyc`` bytes; raises ``VerifyError`` for anything malformed."""
    return verify(decode(data))
