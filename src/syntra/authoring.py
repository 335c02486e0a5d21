"""Authoring program capsules from YAML: ``syntra author capsule.yaml --out-dir DIR``.

A spec names the capsule and its options, holds (or points to) its Lycan program, and says
how it learns. ``author`` checks every field, compiles the program, and writes a capsule
directory that ``Engine.install_dir`` installs:

    program.lycs      the source
    program.lyc       the compiled program
    learning.json     algorithm, its settings, contextSpec, program limits
    reward_spec.json  the reward's type (and range)
    manifest.json     name, version, options, and the BLAKE3 of every file above

A spec (every field but ``program``/``program_file`` and ``options`` is optional)::

    name: predictive-autoscaling
    version: 1.0.0
    options: [hold, forecast_match, forecast_headroom, p95_safe]
    program_file: program.lycs         # or program: | (the source inline)
    reward: {type: continuous, range: [0, 1]}
    algorithm: thompson                # auto, thompson, ucb (ucb1), ... : SPEC_ALGORITHMS
    settings: {samples: 128}
    learning: {min_exploration: 0.05}
    contextSpec: {kind: discrete, key: service}   # the context key is input["service"]
    limits: {max_steps: 50000, max_seconds: 0.02}

Rewards can also be ``sparse`` (with a range) and list weighted ``components``, each
normalized by ``minmax`` (a ``range``) or by a ``budget``; contexts can be typed
``features`` (``continuous`` with a range, ``cyclic`` with a period, ``categorical`` with
values, ``boolean``). The directory records all of it. ``Engine.install_dir`` installs
what this engine runs (thompson or ucb1, no exploration floor, a discrete context, a
bernoulli or continuous reward without components) and refuses the rest, naming the file.

A spec sent over the wire (gRPC's InstallCapsule) has no directory: ``install_arguments``
checks and compiles it in memory, its program inline, and returns the ``Engine.install``
arguments the directory would have given.

An error names the YAML path of the field at fault (``reward.range[1]``, ``options[2]``).
A ``policy.json`` beside the spec is copied into the directory, under the manifest's
digests like every other file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import lycan
import yaml

from syntra.capsule_config import MAX_OPTION_NAME, MAX_OPTIONS
from syntra.errors import SyntraError
from syntra.store.files import make_directory, write_atomically

FILES = ("program.lycs", "program.lyc", "learning.json", "reward_spec.json")
MANIFEST = "manifest.json"
POLICY = "policy.json"
_FIELDS = {"name", "version", "options", "program", "program_file", "reward", "algorithm",
           "settings", "learning", "contextSpec", "limits"}
# What a spec may ask for: the learning layer's algorithms, ``auto`` letting it choose.
SPEC_ALGORITHMS = ("auto", "thompson", "gaussian_thompson", "ucb1", "epsilon_greedy", "softmax",
                   "greedy", "linucb", "lints")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")
_ALGORITHM_NAMES = {"ucb": "ucb1"}  # the spec's short names for the engine's algorithms
_KEY_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*\Z")


class AuthoringError(SyntraError, ValueError):
    """A capsule spec or directory is invalid; ``path`` names the field (``reward.range``)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


@dataclass(frozen=True)
class _Compiled:
    """A checked spec with its program compiled: what a capsule directory holds."""

    name: str
    version: str
    options: list[str]
    source: str
    lyc: bytes
    learning: dict[str, Any]   # learning.json: algorithm, settings, learning, contextSpec, limits
    reward: dict[str, Any]     # reward_spec.json


def author(spec_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Check the spec at ``spec_path``, compile its program and write the capsule directory
    ``out_dir``; returns the manifest."""
    spec_path = Path(spec_path)
    try:
        text = spec_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AuthoringError("", f"cannot read {spec_path}: {exc.strerror}") from None
    spec = _compile(_parse(text, str(spec_path)), spec_path.parent)
    contents = {
        "program.lycs": spec.source.encode(),
        "program.lyc": spec.lyc,
        "learning.json": _json(spec.learning),
        "reward_spec.json": _json(spec.reward),
    }
    manifest = {"name": spec.name, "version": spec.version, "options": spec.options,
                "lycan_format": lycan.__version__,
                "files": {f: blake3.blake3(contents[f]).hexdigest() for f in FILES}}
    policy = spec_path.parent / POLICY
    if policy.is_file():
        contents[POLICY] = policy.read_bytes()
        manifest["files"][POLICY] = blake3.blake3(contents[POLICY]).hexdigest()
    out_dir = Path(out_dir)
    if out_dir.resolve() == spec_path.parent.resolve():
        raise AuthoringError("", "the output directory must not be the spec's own directory")
    make_directory(out_dir)
    for filename, data in contents.items():
        write_atomically(out_dir / filename, lambda file, data=data: file.write(data))
    if POLICY not in contents:
        (out_dir / POLICY).unlink(missing_ok=True)   # an earlier build's, no longer the spec's
    manifest_bytes = _json(manifest)
    write_atomically(out_dir / MANIFEST, lambda file: file.write(manifest_bytes))
    return manifest


def install_arguments(spec_text: str, *, policy: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The spec's name and the ``Engine.install`` arguments of the capsule YAML
    ``spec_text`` (a spec sent over the wire), compiled in memory: what installing the
    directory ``author`` would write gives, with ``policy`` as its I/O policy. The program
    must be inline (``program: |``); ``program_file`` is refused, as there is no directory
    to read it from."""
    if not isinstance(spec_text, str):
        raise AuthoringError("", f"the spec must be YAML text, got {type(spec_text).__name__}")
    spec = _compile(_parse(spec_text, "the spec"), None)
    # Through JSON, as the directory's files are: the two installs are the same.
    learning = json.loads(_json(spec.learning))
    return spec.name, _arguments(spec.options, spec.lyc, json.loads(_json(spec.reward)), learning, policy)


def _parse(text: str, source: str) -> dict[str, Any]:
    """The fields of spec ``text`` (``source`` names it in errors), unknown ones refused."""
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AuthoringError("", f"{source} is not valid YAML: {exc}") from None
    if not isinstance(spec, dict):
        raise AuthoringError("", f"{source} must hold a mapping of fields")
    for key in spec:
        if key not in _FIELDS:
            raise AuthoringError(str(key), f"unknown field (known: {', '.join(sorted(_FIELDS))})")
    return spec


def _compile(spec: Mapping[str, Any], base: Path | None) -> _Compiled:
    """Check every field of ``spec`` and compile its program (``program_file`` relative to
    ``base``; with no base, only an inline program)."""
    name = _required(spec, "name", str)
    if not _NAME.match(name):
        raise AuthoringError("name", f"must be 1-128 of [A-Za-z0-9_-], got {name!r}")
    version = spec.get("version", "0")
    if not isinstance(version, (str, int)) or isinstance(version, bool):
        raise AuthoringError("version", f"must be a string or an integer, got {version!r}")
    options = _options(spec.get("options"))
    source = _source(spec, base)
    try:
        compiled = lycan.compile_bytes(source)
    except lycan.LycanError as exc:
        raise AuthoringError("program", str(exc)) from None
    program = lycan.load(compiled)
    if len(program.choices) != 1 or program.choices[0].options != len(options):
        found = [c.options for c in program.choices]
        raise AuthoringError("program", f"needs one choice node with {len(options)} options (one per entry of "
                                        f"options), has choice nodes with {found}")
    learning = {
        "algorithm": _algorithm(spec.get("algorithm", "thompson")),
        "settings": _settings(spec),
        "learning": _learning(spec.get("learning")),
        "contextSpec": _context_spec(spec.get("contextSpec")),
        "limits": _limits(spec.get("limits")),
    }
    reward = _reward(spec.get("reward", {"type": "bernoulli"}))
    return _Compiled(name, str(version), options, source, compiled, learning, reward)


def _arguments(options: list[str], lyc: bytes, reward: Any, learning: dict[str, Any],
               policy: Any) -> dict[str, Any]:
    """``Engine.install``'s arguments for a compiled capsule and its learning.json."""
    context = learning.get("contextSpec")
    arguments = {
        "options": options,
        "lyc": lyc,
        "reward": reward,
        "learning": {k: v for k, v in learning.items() if k != "limits"},
        "limits": learning.get("limits"),
        # The program reads a discrete context's key from its input; features go to the
        # learning layer.
        "context": context if isinstance(context, dict) and context.get("kind") == "discrete" else None,
    }
    if policy is not None:
        arguments["policy"] = policy
    return arguments


def read_capsule_dir(path: str | Path) -> dict[str, Any]:
    """The ``Engine.install`` arguments a capsule directory holds, after checking every
    file (the policy too, when there is one) against the manifest."""
    path = Path(path)
    manifest = _read_json(path, MANIFEST)
    digests = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(digests, dict) or not isinstance(manifest.get("options"), list):
        raise AuthoringError(MANIFEST, "must be an object with options and the files' digests")
    names = FILES + ((POLICY,) if POLICY in digests else ())
    if (path / POLICY).exists() and POLICY not in digests:
        raise AuthoringError(POLICY, "is not in the manifest")
    for filename in names:
        try:
            data = (path / filename).read_bytes()
        except OSError as exc:
            raise AuthoringError(filename, f"cannot be read: {exc.strerror}") from None
        if blake3.blake3(data).hexdigest() != digests.get(filename):
            raise AuthoringError(filename, "does not match the manifest's digest")
    learning = _read_json(path, "learning.json")
    if not isinstance(learning, dict):
        raise AuthoringError("learning.json", "must be a JSON object")
    return _arguments(manifest["options"], (path / "program.lyc").read_bytes(), _read_json(path, "reward_spec.json"),
                      learning, _read_json(path, POLICY) if POLICY in digests else None)


def _read_json(directory: Path, filename: str) -> Any:
    try:
        return json.loads((directory / filename).read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuthoringError(filename, f"cannot be read: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AuthoringError(filename, f"is not valid JSON: {exc}") from None


# --- fields -------------------------------------------------------------------------------


def _required(spec: Mapping, key: str, kind: type) -> Any:
    if key not in spec:
        raise AuthoringError(key, "is required")
    value = spec[key]
    if not isinstance(value, kind):
        raise AuthoringError(key, f"must be a {kind.__name__}, got {value!r}")
    return value


def _options(value: object) -> list[str]:
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_OPTIONS:
        raise AuthoringError("options", f"must be a list of 2 to {MAX_OPTIONS} option names, got {value!r}")
    for i, option in enumerate(value):
        if not isinstance(option, str) or not 1 <= len(option) <= MAX_OPTION_NAME:
            raise AuthoringError(f"options[{i}]", f"must be a name of 1-{MAX_OPTION_NAME} characters, got {option!r}")
        if option in value[:i]:
            raise AuthoringError(f"options[{i}]", f"repeats {option!r}")
    return value


def _source(spec: Mapping, base: Path | None) -> str:
    if ("program" in spec) == ("program_file" in spec):
        raise AuthoringError("program", "give exactly one of program (the source) and program_file")
    if "program" in spec:
        return _required(spec, "program", str)
    if base is None:
        raise AuthoringError("program_file", "a spec sent without its directory must hold its program inline"
                                             " (program: |)")
    relative = _required(spec, "program_file", str)
    try:
        return (base / relative).read_text(encoding="utf-8")
    except OSError as exc:
        raise AuthoringError("program_file", f"cannot read {relative}: {exc.strerror}") from None


def _algorithm(value: object) -> str:
    value = _ALGORITHM_NAMES.get(value, value) if isinstance(value, str) else value
    if value not in SPEC_ALGORITHMS:
        raise AuthoringError("algorithm", f"must be one of {', '.join(SPEC_ALGORITHMS)} (or ucb), got {value!r}")
    return value


def _learning(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - {"min_exploration"}:
        raise AuthoringError("learning", f"must be {{min_exploration}}, got {value!r}")
    floor = value.get("min_exploration", 0.0)
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < 1:
        raise AuthoringError("learning.min_exploration", f"must be a number in [0, 1), got {floor!r}")
    return {"min_exploration": float(floor)}


def _settings(spec: Mapping) -> dict[str, Any]:
    """The rule's settings: names to numbers (the engine checks which, against the rule)."""
    value = spec.get("settings", {})
    if not isinstance(value, dict):
        raise AuthoringError("settings", f"must be a mapping, got {value!r}")
    for key, setting in value.items():
        if not isinstance(key, str) or isinstance(setting, bool) or not isinstance(setting, (int, float)):
            raise AuthoringError(f"settings.{key}", f"must be a number, got {setting!r}")
    return value


def _context_spec(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("kind") not in ("discrete", "features"):
        raise AuthoringError("contextSpec.kind", "must be 'discrete' (a key) or 'features' (typed features),"
                                                 f" got {value.get('kind') if isinstance(value, dict) else value!r}")
    if value["kind"] == "discrete":
        if set(value) != {"kind", "key"}:
            raise AuthoringError("contextSpec", f"a discrete context is {{kind, key}}, got {sorted(value)}")
        return {"kind": "discrete", "key": _path("contextSpec.key", value.get("key"))}
    if set(value) != {"kind", "features"} or not isinstance(value["features"], list) or not value["features"]:
        raise AuthoringError("contextSpec.features", "must be a non-empty list of features")
    seen = set()
    features = [_feature(f"contextSpec.features[{i}]", f, seen) for i, f in enumerate(value["features"])]
    return {"kind": "features", "features": features}


def _feature(where: str, value: object, seen: set) -> dict[str, Any]:
    """One typed feature: continuous (a range, to [0,1]), cyclic (a period, to sin and cos),
    categorical (values, one-hot) or boolean; ``name`` is its path in the input."""
    if not isinstance(value, dict):
        raise AuthoringError(where, f"must be a mapping, got {value!r}")
    name = _path(f"{where}.name", value.get("name"))
    if name in seen:
        raise AuthoringError(f"{where}.name", f"repeats {name!r}")
    seen.add(name)
    kind = value.get("type")
    shape = {"continuous": {"range"}, "cyclic": {"period"}, "categorical": {"values"}, "boolean": set()}
    if kind not in shape:
        raise AuthoringError(f"{where}.type", f"must be continuous, cyclic, categorical or boolean, got {kind!r}")
    if set(value) != {"name", "type"} | shape[kind]:
        raise AuthoringError(where, f"a {kind} feature is {{name, type{''.join(', ' + k for k in shape[kind])}}}")
    out = {"name": name, "type": kind}
    if kind == "continuous":
        out["range"] = _range(f"{where}.range", value["range"])
    elif kind == "cyclic":
        period = value["period"]
        if isinstance(period, bool) or not isinstance(period, (int, float)) or not 0 < period < float("inf"):
            raise AuthoringError(f"{where}.period", f"must be a positive number, got {period!r}")
        out["period"] = period
    elif kind == "categorical":
        values = value["values"]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values) \
                or len(set(values)) != len(values):
            raise AuthoringError(f"{where}.values", f"must be a list of distinct strings, got {values!r}")
        out["values"] = values
    return out


def _path(where: str, value: object) -> str:
    if not isinstance(value, str) or not _KEY_PATH.match(value):
        raise AuthoringError(where, f"must be a dot path into the input (a.b.c), got {value!r}")
    return value


def _limits(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AuthoringError("limits", f"must be a mapping, got {value!r}")
    try:
        lycan.Limits(**value)
    except (TypeError, ValueError) as exc:
        raise AuthoringError("limits", str(exc)) from None
    return value


def _reward(value: object) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) - {"type", "range", "components"}:
        raise AuthoringError("reward", f"must be {{type, range, components}}, got {value!r}")
    kind = value.get("type", "bernoulli")
    if kind not in ("bernoulli", "continuous", "sparse"):
        raise AuthoringError("reward.type", f"must be bernoulli, continuous or sparse, got {kind!r}")
    out: dict[str, Any] = {"type": kind}
    if kind == "bernoulli":
        if "range" in value:
            raise AuthoringError("reward.range", "a bernoulli reward has no range: it is 0 or 1")
    else:
        out["range"] = _range("reward.range", value.get("range"))
    if "components" in value:
        out["components"] = _components(value["components"])
    return out


def _components(value: object) -> list[dict[str, Any]]:
    """Weighted reward components, each normalized by min-max (a range) or by a budget."""
    if not isinstance(value, list) or not value:
        raise AuthoringError("reward.components", f"must be a non-empty list, got {value!r}")
    out, names = [], set()
    for i, component in enumerate(value):
        where = f"reward.components[{i}]"
        if not isinstance(component, dict):
            raise AuthoringError(where, f"must be a mapping, got {component!r}")
        name = component.get("name")
        if not isinstance(name, str) or not _NAME.match(name) or name in names:
            raise AuthoringError(f"{where}.name", f"must be a new name of [A-Za-z0-9_-], got {name!r}")
        names.add(name)
        weight = component.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < float("inf"):
            raise AuthoringError(f"{where}.weight", f"must be a positive number, got {weight!r}")
        normalize = component.get("normalize")
        if normalize == "minmax":
            extra = {"range": _range(f"{where}.range", component.get("range"))}
        elif normalize == "budget":
            budget = component.get("budget")
            if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < float("inf"):
                raise AuthoringError(f"{where}.budget", f"must be a positive number, got {budget!r}")
            extra = {"budget": budget}
        else:
            raise AuthoringError(f"{where}.normalize", f"must be minmax or budget, got {normalize!r}")
        if set(component) != {"name", "weight", "normalize"} | set(extra):
            raise AuthoringError(where, f"a {normalize} component is {{name, weight, normalize, {next(iter(extra))}}}")
        out.append({"name": name, "weight": weight, "normalize": normalize, **extra})
    return out


def _range(where: str, bounds: object) -> list[float]:
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise AuthoringError(where, f"must be [low, high], got {bounds!r}")
    for i, bound in enumerate(bounds):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or bound != bound \
                or abs(bound) == float("inf"):
            raise AuthoringError(f"{where}[{i}]", f"must be a finite number, got {bound!r}")
    if not bounds[0] < bounds[1]:
        raise AuthoringError(where, f"needs low < high, got {bounds!r}")
    return bounds


def _json(data: object) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
