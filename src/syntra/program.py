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
from dataclasses import dataclass, fields, replace
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
LIMIT_CEILINGS = {"max_seconds": 10.0, "max_steps": 100_000_000}
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
        for name, value in limits.items():
            # A run holds the capsule's lock: no limit may let it hold it for long.
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not value <= LIMIT_CEILINGS.get(name, 10**9):
                raise InvalidConfig(f"limits.{name} must be at most {LIMIT_CEILINGS.get(name, 10**9)}, got {value!r}")
        try:
            limits = lycan.Limits(**limits)
        except (TypeError, ValueError) as exc:
            raise InvalidConfig(f"limits: {exc}") from None
        return cls(program, limits, _policy(entry.get("policy"), sandbox), _context_path(entry.get("context")))

    def with_policy(self, policy: Mapping[str, Any] | None, sandbox: Path | None) -> ProgramSpec:
        """This program under I/O ``policy`` instead (None: every I/O capability refused),
        checked exactly as an install checks it (a relative root is created under
        ``sandbox``). Raises :class:`~syntra.errors.InvalidConfig` naming the field."""
        return replace(self, policy=_policy(policy, sandbox))

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
    if not isinstance(data, Mapping):
        raise InvalidConfig(f"policy must be a mapping, got {type(data).__name__}")
    root = data.get("root")
    try:
        # Every other field first, so a bad policy creates no directory.
        Policy.from_dict({k: v for k, v in data.items() if k not in ("root", "sqlite")})
        if sandbox is not None and root is not None:
            _make_sandbox(sandbox, root)
        return Policy.from_dict(dict(data), base_dir=None if sandbox is None else str(sandbox))
    except PolicyError as exc:
        raise InvalidConfig(f"policy: {exc}") from None


def _make_sandbox(sandbox: Path, root: object) -> None:
    """Create a durable capsule's sandbox directory, refusing a root outside it."""
    if not isinstance(root, str) or not root or os.path.isabs(root):
        raise InvalidConfig(f"policy: root must be a path inside the capsule's sandbox directory, got {root!r}")
    resolved = os.path.normpath(sandbox / root)
    if resolved != str(sandbox) and not resolved.startswith(str(sandbox) + os.sep):
        raise InvalidConfig(f"policy: root {root!r} leaves the capsule's sandbox directory")
    make_directory(Path(resolved))
    # A link planted anywhere on the way would take the files elsewhere: the real path of
    # the root must be under the real path of the store's sandboxes directory.
    sandboxes = os.path.realpath(sandbox.parents[2])
    if not os.path.realpath(resolved).startswith(sandboxes + os.sep):
        raise InvalidConfig(f"policy: the sandbox directory {resolved} resolves outside {sandboxes}")


class _Stop(Exception):
    """Ends a run at the choice node: the decision was refused, nothing more to compute."""


def run_decision(capsule, spec: ProgramSpec, context_key: str, input_value: object, **decide_inputs):
    """Run ``capsule``'s program and decide at its choice node (the caller holds the lock).

    Returns (decision, budget ticket, error) like ``Capsule._decide_budgeted``: when the
    program fails (for any reason) after the decision was made, the decision becomes a
    refusal (its hold, if any, released) so the ledger and the log stay in step, and the
    error is returned for the caller to raise once it has logged the refusal. A failure
    before the choice node decides nothing and raises ProgramError at once.
    ``decide_inputs`` (features, metrics, ts_ns) go to the decision at the choice node.
    """
    made: list = []

    def chooser(node) -> int:
        if made:
            raise lycan.ExecutionError("the choice node was reached a second time in one run")
        d, ticket, error = capsule._decide_in_program(context_key, **decide_inputs)
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
    except Exception as exc:   # a Lycan error, or one a kernel let through (an OSError, say)
        if not made:
            raise ProgramError(capsule.name, exc) from None
        d, ticket, error = made[0]
        refused, undo_error = capsule._refuse_after_program(d, exc)
        return refused, None, error or undo_error or ProgramError(capsule.name, exc)
    if not made:
        raise ProgramError(capsule.name, "the program finished without reaching its choice node")
    d, ticket, error = made[0]
    try:
        output = result.to_json()
        logged = json.dumps({k: output[k] for k in ("result", "published", "stdout")},
                            separators=(",", ":"), allow_nan=False)
    except (lycan.LycanError, ValueError) as exc:   # a function value, or NaN that escaped
        refused, undo_error = capsule._refuse_after_program(d, exc)
        return refused, None, undo_error or ProgramError(capsule.name, exc)
    if len(logged) > MAX_RESULT_BYTES:
        cause = f"its result is {len(logged)} bytes of JSON, more than {MAX_RESULT_BYTES}"
        refused, undo_error = capsule._refuse_after_program(d, cause)
        return refused, None, undo_error or ProgramError(capsule.name, cause)
    return with_output(d, output["result"], output["published"], output["stdout"], logged), ticket, error
