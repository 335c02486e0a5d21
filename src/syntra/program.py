"""Capsules that run a Lycan program: the learning layer picks at the program's choice node.

A program capsule is installed with ``.lyc`` bytes (``Engine.install(name, lyc=...,
options=[...])``). Its program must have exactly one choice node, whose options are the
capsule's options, in order. ``cap.decide(context_key, input={...})`` runs the program on
the request input; when the run reaches the choice node the capsule decides (the rule
picks, a budget holds the cost), the chosen expression is evaluated, and the run goes on.
The decision carries the program's result, published values and stdout, and the same
three are logged with it.

The whole run happens under the capsule's lock, so its decision and its log record stay in
sequence order; the limits (``limits`` at install, :class:`lycan.Limits` fields) bound how
long that can be. Its I/O capabilities are refused unless the install gave a ``policy``
(``lycan/README.md``); in a durable engine each capsule's sandbox lives under the store's
``sandboxes/<tenant>/<job>/<capsule>/``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import blake3
import lycan
from lycan.policy import Policy, PolicyError
from syntra_core.learner import with_output

from syntra.errors import InvalidConfig, InvalidContext, ProgramError
from syntra.store.files import make_directory

# What a capsule's program may use unless its install says otherwise: a decision is on the
# caller's critical path, so far less than lycan's stand-alone defaults.
DEFAULT_LIMITS = {"max_steps": 100_000, "max_seconds": 0.05}
MAX_PROGRAM_BYTES = 1 << 20
# The logged result (value, published values, stdout) of one decision, as JSON.
MAX_RESULT_BYTES = 64 << 10


@dataclass(frozen=True)
class ProgramSpec:
    program: lycan.Program
    limits: lycan.Limits
    policy: Policy | None  # None: every I/O capability is refused
    context_key: tuple[str, ...] | None  # where in the input the context key is, if anywhere

    @classmethod
    def install(cls, lyc: object, options: tuple[str, ...], limits: Mapping[str, Any] | None,
                policy: Mapping[str, Any] | None, sandbox: Path | None,
                context: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Check ``lyc`` against ``options``, ``limits`` and ``policy``; the config entry to
        store."""
        if not isinstance(lyc, (bytes, bytearray)) or not 0 < len(lyc) <= MAX_PROGRAM_BYTES:
            raise InvalidConfig(f"lyc must be the bytes of a compiled program, at most {MAX_PROGRAM_BYTES} bytes")
        entry = {"lyc": base64.b64encode(bytes(lyc)).decode(), "digest": blake3.blake3(bytes(lyc)).hexdigest(),
                 "limits": {**DEFAULT_LIMITS, **dict(limits or {})}}
        if policy is not None:
            entry["policy"] = policy
        if context is not None:
            entry["context"] = dict(context)
        cls.parse(entry, options, sandbox)
        return entry

    @classmethod
    def parse(cls, entry: Mapping[str, Any], options: tuple[str, ...], sandbox: Path | None) -> ProgramSpec:
        """The spec a config entry describes. A policy's relative ``root`` is a directory
        under ``sandbox`` (the capsule's own, in a durable engine's store), created if
        missing; an in-memory engine has none, so its policies name absolute roots."""
        lyc = base64.b64decode(entry["lyc"])
        if blake3.blake3(lyc).hexdigest() != entry["digest"]:
            raise InvalidConfig("the program's bytes do not match its digest")
        try:
            program = lycan.load(lyc)
        except lycan.LycanError as exc:
            raise InvalidConfig(f"lyc: {exc}") from None
        if len(program.choices) != 1:
            raise InvalidConfig(f"a capsule's program needs exactly one choice node, this one has {len(program.choices)}")
        if program.choices[0].options != len(options):
            raise InvalidConfig(
                f"the program's choice node has {program.choices[0].options} options, the capsule names {len(options)}")
        limits = entry.get("limits", {})
        known = {f.name for f in fields(lycan.Limits)}
        if not isinstance(limits, Mapping) or set(limits) - known:
            raise InvalidConfig(f"limits must map some of {sorted(known)} to numbers, got {limits!r}")
        try:
            limits = lycan.Limits(**limits)
        except (TypeError, ValueError) as exc:
            raise InvalidConfig(f"limits: {exc}") from None
        return cls(program, limits, _policy(entry.get("policy"), sandbox), _context_path(entry.get("context")))

    def context_of(self, input_value: object) -> str:
        """The context key the input names (``contextSpec`` kind discrete)."""
        value = input_value
        for part in self.context_key:
            if not isinstance(value, Mapping) or part not in value:
                raise InvalidContext(f"the input has no {'.'.join(self.context_key)!r}, which contextSpec names")
            value = value[part]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise InvalidContext(f"input {'.'.join(self.context_key)!r} must be a string or an integer to key a"
                                 f" context, got {type(value).__name__}")
        return str(value)


def _context_path(spec: object) -> tuple[str, ...] | None:
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or spec.get("kind") != "discrete" or set(spec) != {"kind", "key"} \
            or not isinstance(spec["key"], str) or not all(spec["key"].split(".")):
        raise InvalidConfig(f"context must be {{'kind': 'discrete', 'key': 'a.b'}}, got {spec!r}")
    return tuple(spec["key"].split("."))


def _policy(data: object, sandbox: Path | None) -> Policy | None:
    if data is None:
        return None
    root = data.get("root") if isinstance(data, Mapping) else None
    if sandbox is not None and isinstance(root, str) and root and not os.path.isabs(root):
        resolved = os.path.normpath(sandbox / root)
        if resolved != str(sandbox) and not resolved.startswith(str(sandbox) + os.sep):
            raise InvalidConfig(f"policy: root {root!r} leaves the capsule's sandbox directory")
        make_directory(Path(resolved))
    try:
        return Policy.from_dict(data, base_dir=None if sandbox is None else str(sandbox))
    except PolicyError as exc:
        raise InvalidConfig(f"policy: {exc}") from None


class _Stop(Exception):
    """Ends a run at the choice node: the decision was refused, nothing more to compute."""


def run_decision(capsule, spec: ProgramSpec, context_key: str, input_value: object):
    """Run ``capsule``'s program and decide at its choice node (the caller holds the lock).

    Returns (decision, budget ticket, error) like ``Capsule._decide_budgeted``: when the
    program fails after the decision was made, the decision becomes a refusal (its hold, if
    any, released) so the ledger and the log stay in step, and the error is returned for the
    caller to raise once it has logged the refusal. A failure before the choice node decides
    nothing and raises ProgramError at once.
    """
    made: list = []

    def chooser(node) -> int:
        if made:
            raise lycan.ExecutionError("the choice node was reached a second time in one run")
        d, ticket, error = capsule._decide_in_program(context_key)
        made.append((d, ticket, error))
        if d.refused:
            raise _Stop()
        return d.option_index

    try:
        # Verified once, at install (or when the capsule was rebuilt): not on every decision.
        result = lycan.run(spec.program, input_value, chooser=chooser, limits=spec.limits,
                           policy=spec.policy, verified=True)
    except _Stop:
        return made[0]
    except lycan.LycanError as exc:
        if not made:
            raise ProgramError(capsule.name, exc) from None
        d, ticket, error = made[0]
        return capsule._refuse_after_program(d, exc), None, error or ProgramError(capsule.name, exc)
    if not made:
        raise ProgramError(capsule.name, "the program finished without reaching its choice node")
    d, ticket, error = made[0]
    try:
        output = result.to_json()
        logged = json.dumps({k: output[k] for k in ("result", "published", "stdout")},
                            separators=(",", ":"), allow_nan=False)
    except (lycan.LycanError, ValueError) as exc:   # a function value, or NaN that escaped
        return capsule._refuse_after_program(d, exc), None, ProgramError(capsule.name, exc)
    if len(logged) > MAX_RESULT_BYTES:
        exc = f"its result is {len(logged)} bytes of JSON, more than {MAX_RESULT_BYTES}"
        return capsule._refuse_after_program(d, exc), None, ProgramError(capsule.name, exc)
    return with_output(d, output["result"], output["published"], output["stdout"], logged), ticket, error
