"""The capability registry and its pure kernels.

A capability is how a program reaches past plain arithmetic: reading its input, publishing a
value, or running a numeric kernel. Each entry says what it takes, what it gives, whether it
is pure and what effects it has, so the engine can audit a program before running it.

Kernels reject bad arguments with ``CapabilityError`` naming the kernel and the argument.

>>> REGISTRY["stats.percentile"].signature()
'stats.percentile(values: array<number>, p: number) -> float'
>>> call("stats.percentile", None, [1, 2, 3, 4], 50)
2.5
"""

import math
from dataclasses import dataclass

from lycan import sandbox
from lycan.errors import CapabilityError, ExecutionError
from lycan.values import Array, Map, from_json, is_number, to_json, type_name


@dataclass(frozen=True)
class Input:
    name: str
    type: str


@dataclass(frozen=True)
class Capability:
    name: str
    inputs: tuple    # of Input
    output: str
    pure: bool
    effects: tuple   # of str; empty for a pure capability
    kernel: object   # kernel(context, *arguments) -> value
    summary: str

    def signature(self):
        args = ", ".join(f"{i.name}: {i.type}" for i in self.inputs)
        return f"{self.name}({args}) -> {self.output}"


class RunContext:
    """What a kernel may see of the run: its input, the values published so far, the I/O
    ``policy`` (None: every I/O capability is denied), the run's ``limits`` and its
    ``deadline`` (a ``time.monotonic()`` value; I/O kernels never wait past it)."""

    def __init__(self, input_value, policy=None, limits=None, deadline=None):
        self.input = input_value
        self.published = {}
        self.policy = policy
        self.limits = limits
        self.deadline = deadline


def call(name, context, *arguments):
    """Run one capability by name on plain JSON-like arguments (lists, dicts, numbers).

    The interpreter calls kernels directly with Lycan values; this is for tools and tests.
    ``context`` may be None for kernels that do not read the run.
    """
    converted = [from_json(a, 64, 10**7, 10**7) for a in arguments]
    result = REGISTRY[name].kernel(context or RunContext(None), *converted)
    return to_json(result)


# ---- argument checks ------------------------------------------------------------------------

def _number(capability, argument, value):
    if not is_number(value):
        raise CapabilityError(capability, argument, f"must be a number, got {type_name(value)}")
    if not math.isfinite(value):
        raise CapabilityError(capability, argument, f"must be finite, got {value}")
    return value


def _numbers(capability, argument, values):
    if not isinstance(values, Array):
        raise CapabilityError(capability, argument, f"must be an array of numbers, got {type_name(values)}")
    if not values:
        raise CapabilityError(capability, argument, "must not be empty")
    for value in values:
        kind = type(value)
        if (kind is not int and kind is not float) or value - value != 0:   # not a finite number
            position = next(i for i, v in enumerate(values) if v is value)
            raise CapabilityError(capability, argument,
                                  f"element {position} must be a finite number, got {type_name(value)} {value!r}")
    return values


def _finite(capability, argument, compute):
    try:
        result = float(compute())
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise CapabilityError(capability, argument, "overflows a float")
    return result


def _integer(capability, argument, value):
    if type(value) is not int:
        raise CapabilityError(capability, argument, f"must be an int, got {type_name(value)}")
    return value


def _key(capability, container, key):
    """(found, element) for a map key or an array index."""
    if isinstance(container, Map):
        if type(key) is not str:
            raise CapabilityError(capability, "key", f"must be a string for a map, got {type_name(key)}")
        return (True, container[key]) if key in container else (False, None)
    if isinstance(container, Array):
        if type(key) is not int:
            raise CapabilityError(capability, "key", f"must be an int for an array, got {type_name(key)}")
        return (True, container[key]) if 0 <= key < len(container) else (False, None)
    raise CapabilityError(capability, "value", f"must be a map or an array, got {type_name(container)}")


# ---- runtime --------------------------------------------------------------------------------

def runtime_input(context):
    return context.input


def runtime_input_get(context, path):
    if type(path) is not str:
        raise CapabilityError("runtime.inputGet", "path", f"must be a string, got {type_name(path)}")
    value = context.input
    for part in path.split(".") if path else ():
        if isinstance(value, Array):
            if not part.isdigit() or not part.isascii():
                return None
            found, value = _key("runtime.inputGet", value, int(part))
        elif isinstance(value, Map):
            found, value = _key("runtime.inputGet", value, part)
        else:
            return None
        if not found:
            return None
    return value


def runtime_publish(context, name, value):
    if type(name) is not str or not name:
        raise CapabilityError("runtime.publish", "name", "must be a non-empty string")
    if name in context.published:
        raise CapabilityError("runtime.publish", "name", f"{name!r} is already published")
    try:
        to_json(value)
    except ExecutionError:
        raise CapabilityError("runtime.publish", "value", f"must have a JSON form, got {type_name(value)}") from None
    context.published[name] = value
    return value


# ---- json -----------------------------------------------------------------------------------

def json_get(context, container, key):
    return _key("json.get", container, key)[1]


def json_has(context, container, key):
    return _key("json.has", container, key)[0]


def json_len(context, value):
    if isinstance(value, (Array, Map)) or type(value) is str:
        return len(value)
    raise CapabilityError("json.len", "value", f"must be an array, map or string, got {type_name(value)}")


# ---- stats ----------------------------------------------------------------------------------

def stats_mean(context, values):
    _numbers("stats.mean", "values", values)
    return _finite("stats.mean", "values", lambda: _mean(values))


def _mean(values):
    n = len(values)
    try:
        total = math.fsum(values)   # exactly rounded: ordinary inputs give the textbook answer
    except OverflowError:
        total = math.inf
    if math.isfinite(total):
        return total / n
    # The sum overflowed although every value is finite: summing shares keeps it in range.
    return math.fsum(v / n for v in values)


def stats_std_dev(context, values):
    """Population standard deviation (divides by n)."""
    _numbers("stats.stdDev", "values", values)

    def std_dev():
        mean = _mean(values)
        try:
            spread = math.fsum((v - mean) ** 2 for v in values)
        except OverflowError:
            spread = math.inf
        if math.isfinite(spread):
            return math.sqrt(spread / len(values))
        # The squares overflowed: scale to [-1, 1] first, where they cannot.
        scale = max(abs(v) for v in values)
        scaled = [v / scale for v in values]
        centre = _mean(scaled)
        return scale * math.sqrt(math.fsum((v - centre) ** 2 for v in scaled) / len(scaled))

    return _finite("stats.stdDev", "values", std_dev)


def stats_min(context, values):
    return min(_numbers("stats.min", "values", values))


def stats_max(context, values):
    return max(_numbers("stats.max", "values", values))


def stats_percentile(context, values, p):
    """Linear interpolation between the two nearest ranks (numpy's default method)."""
    ordered = sorted(_numbers("stats.percentile", "values", values))
    _number("stats.percentile", "p", p)
    if not 0 <= p <= 100:
        raise CapabilityError("stats.percentile", "p", f"must be in [0, 100], got {p}")
    rank = (len(ordered) - 1) * (p / 100)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    a, b = ordered[low], ordered[high]
    # numpy's lerp: from the nearer end, so results match it to the last bit.
    return _finite("stats.percentile", "values",
                   lambda: a + (b - a) * fraction if fraction < 0.5 else b - (b - a) * (1 - fraction))


# ---- series and ops -------------------------------------------------------------------------

def series_ewma_forecast(context, values, alpha):
    """One-step EWMA forecast: f0 = v0, ft = alpha*vt + (1 - alpha)*f(t-1); returns the last f."""
    _numbers("series.ewmaForecast", "values", values)
    _number("series.ewmaForecast", "alpha", alpha)
    if not 0 <= alpha <= 1:
        raise CapabilityError("series.ewmaForecast", "alpha", f"must be in [0, 1], got {alpha}")

    def forecast():
        level = float(values[0])
        for value in values[1:]:
            level = alpha * value + (1 - alpha) * level
        return level

    return _finite("series.ewmaForecast", "values", forecast)


def ops_auto_scale_recommend(context, load, target, minimum, maximum):
    """clamp(ceil(load / target), min, max)."""
    name = "ops.autoScaleRecommend"
    _number(name, "load", load)
    _number(name, "target", target)
    _integer(name, "min", minimum)
    _integer(name, "max", maximum)
    if not target > 0:
        raise CapabilityError(name, "target", f"must be > 0, got {target}")
    if minimum < 0:
        raise CapabilityError(name, "min", f"must be >= 0, got {minimum}")
    if minimum > maximum:
        raise CapabilityError(name, "max", f"must be >= min ({minimum}), got {maximum}")
    if type(load) is int and type(target) is int:
        needed = -(-load // target)  # exact ceiling for ints
    else:
        quotient = load / target
        needed = maximum if math.isinf(quotient) else math.ceil(quotient)
    return max(minimum, min(maximum, needed))


def _entry(name, inputs, output, kernel, summary, effects=()):
    parsed = tuple(Input(*part.split(": ")) for part in inputs)
    return Capability(name, parsed, output, not effects, tuple(effects), kernel, summary)


_NUMBERS = "values: array<number>"
REGISTRY = {entry.name: entry for entry in (
    _entry("runtime.input", (), "any", runtime_input, "the run's whole input"),
    _entry("runtime.inputGet", ("path: string",), "any", runtime_input_get,
           "the input value at a dot path such as 'load.0.cpu'; null when missing"),
    _entry("runtime.publish", ("name: string", "value: any"), "any", runtime_publish,
           "adds a named value to the run's published values (once per name); returns the value",
           effects=("publish",)),
    _entry("json.get", ("value: map|array", "key: string|int"), "any", json_get,
           "the element at a map key or array index; null when missing"),
    _entry("json.has", ("value: map|array", "key: string|int"), "bool", json_has,
           "whether the map key or array index exists"),
    _entry("json.len", ("value: map|array|string",), "int", json_len, "the number of elements"),
    _entry("stats.mean", (_NUMBERS,), "float", stats_mean, "arithmetic mean"),
    _entry("stats.stdDev", (_NUMBERS,), "float", stats_std_dev, "population standard deviation"),
    _entry("stats.min", (_NUMBERS,), "number", stats_min, "the smallest value"),
    _entry("stats.max", (_NUMBERS,), "number", stats_max, "the largest value"),
    _entry("stats.percentile", (_NUMBERS, "p: number"), "float", stats_percentile,
           "the p-th percentile (p in [0, 100]), linear interpolation"),
    _entry("series.ewmaForecast", (_NUMBERS, "alpha: number"), "float", series_ewma_forecast,
           "one-step EWMA forecast, alpha in [0, 1]"),
    _entry("ops.autoScaleRecommend", ("load: number", "target: number", "min: int", "max: int"),
           "int", ops_auto_scale_recommend, "clamp(ceil(load / target), min, max)"),
    # I/O (lycan/sandbox/): refused unless the run's policy grants them.
    _entry("file.exists", ("path: string",), "bool", sandbox.file_exists,
           "whether a file or directory exists at a sandbox-relative path (policy: read)",
           effects=("filesystem-read",)),
    _entry("file.readText", ("path: string",), "string", sandbox.file_read_text,
           "the UTF-8 text of a sandboxed file (policy: read, file_max_bytes)",
           effects=("filesystem-read",)),
    _entry("file.writeText", ("path: string", "text: string"), "int", sandbox.file_write_text,
           "atomically writes a sandboxed file, never the policy; gives the bytes written (policy: write)",
           effects=("filesystem-write",)),
    _entry("sql.sqliteQuery", ("db: string", "query: string", "params: array|null"), "array<map>",
           sandbox.sql_sqlite_query,
           "rows of a read-only SELECT/WITH query on a database the policy lists (sql_max_rows)",
           effects=("database-read",)),
    _entry("http.get", ("url: string",), "map", sandbox.http_get,
           "GET from an allowed public host; gives {status, headers, body}; redirects not followed",
           effects=("network",)),
    _entry("http.post", ("url: string", "body: string|array|map"), "map", sandbox.http_post,
           "POST text or JSON to an allowed public host; gives {status, headers, body}",
           effects=("network",)),
)}
