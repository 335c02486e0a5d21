"""Lycan values and the operators on them.

A Lycan value is one of:

======== ====================================================================
null     Python ``None``
bool     ``True`` / ``False`` (never equal to a number)
int      Python ``int`` kept inside the int64 range
float    Python ``float``, always finite
string   Python ``str``
array    ``Array``: an immutable tuple that knows how deeply it nests
map      ``Map``: a read-only string-keyed mapping (only JSON input makes these)
function ``Function``: a compiled function plus the values it captured
======== ====================================================================

>>> add(2, 3), add(2, 0.5), divide(7, 2), modulo(-7, 2)
(5, 2.5, 3.5, 1)
>>> add(2**62, 2**62)
Traceback (most recent call last):
...
lycan.errors.ExecutionError: integer overflow: 9223372036854775808 is outside int64
"""

import json
import math
from collections.abc import Mapping

from lycan.errors import ExecutionError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class Array(tuple):
    """An immutable Lycan array. ``depth`` (1 + the deepest element) bounds recursion."""

    depth = 1


class Map(Mapping):
    """A read-only map from strings to values, made from a JSON object."""

    __slots__ = ("_items", "depth")

    def __init__(self, items, depth):
        self._items = items
        self.depth = depth

    def __getitem__(self, key):
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def __repr__(self):
        return f"Map({self._items!r})"


class Function:
    """A callable value: a function index in the program plus its captured values."""

    __slots__ = ("captures", "index", "name")

    def __init__(self, index, name, captures):
        self.index = index
        self.name = name
        self.captures = captures

    def __repr__(self):
        return f"<function {self.name}>"


def depth_of(value):
    return value.depth if isinstance(value, (Array, Map)) else 0


def make_array(items, max_nesting):
    array = Array(items)
    depth = 1 + max((depth_of(item) for item in array), default=0)
    if depth > max_nesting:
        raise ExecutionError(f"array nests {depth} deep, more than max_nesting {max_nesting}")
    array.depth = depth
    return array


def type_name(value):
    if value is None:
        return "null"
    if value is True or value is False:
        return "bool"
    if type(value) is int:
        return "int"
    if type(value) is float:
        return "float"
    if type(value) is str:
        return "string"
    if isinstance(value, Array):
        return "array"
    if isinstance(value, Map):
        return "map"
    if isinstance(value, Function):
        return "function"
    raise TypeError(f"not a Lycan value: {value!r}")


def is_number(value):
    return type(value) is int or type(value) is float


# ---- numbers --------------------------------------------------------------------------------

def checked_int(value):
    if not INT64_MIN <= value <= INT64_MAX:
        raise ExecutionError(f"integer overflow: {value} is outside int64")
    return value


def checked_float(value):
    if math.isnan(value) or math.isinf(value):
        raise ExecutionError(f"arithmetic gave {value}, which is not a finite number")
    return value


def _numbers(op, a, b):
    if not (is_number(a) and is_number(b)):
        raise ExecutionError(f"{op} needs numbers, got {type_name(a)} and {type_name(b)}")


def _finish(a, b, result):
    # int op int stays int (checked against int64); any float makes the result a float.
    if type(a) is int and type(b) is int:
        return checked_int(result)
    return checked_float(float(result))


def _float_op(op, a, b, compute):
    try:
        return compute()
    except OverflowError:
        raise ExecutionError(f"{op} overflowed a float") from None


def add(a, b):
    if type(a) is str and type(b) is str:
        return a + b
    _numbers("+", a, b)
    return _finish(a, b, _float_op("+", a, b, lambda: a + b))


def subtract(a, b):
    _numbers("-", a, b)
    return _finish(a, b, _float_op("-", a, b, lambda: a - b))


def multiply(a, b):
    _numbers("*", a, b)
    return _finish(a, b, _float_op("*", a, b, lambda: a * b))


def divide(a, b):
    """True division: the result is always a float, even for two ints."""
    _numbers("/", a, b)
    if b == 0:
        raise ExecutionError("division by zero")
    return checked_float(_float_op("/", a, b, lambda: a / b))


def modulo(a, b):
    """The remainder takes the sign of the divisor (floored modulo, as in Python)."""
    _numbers("%", a, b)
    if b == 0:
        raise ExecutionError("modulo by zero")
    return _finish(a, b, _float_op("%", a, b, lambda: a % b))


def negate(a):
    if not is_number(a):
        raise ExecutionError(f"neg needs a number, got {type_name(a)}")
    return checked_int(-a) if type(a) is int else -a


def equal(a, b):
    """Structural equality; 1 == 1.0, but a bool never equals a number."""
    if is_number(a) and is_number(b):
        return a == b
    kind = type_name(a)
    if kind != type_name(b):
        return False
    if kind == "array":
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if kind == "map":
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if kind == "function":
        return a is b
    return a == b


_ORDER = {"<": lambda a, b: a < b, ">": lambda a, b: a > b,
          "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}


def compare(op, a, b):
    """``<``, ``>``, ``<=``, ``>=`` on two numbers or two strings (by code point)."""
    if (is_number(a) and is_number(b)) or (type(a) is str and type(b) is str):
        return _ORDER[op](a, b)
    raise ExecutionError(f"{op} compares two numbers or two strings, got {type_name(a)} and {type_name(b)}")


# ---- conversion -----------------------------------------------------------------------------

def from_json(data, max_nesting, max_array_length, max_string_length):
    """Turn parsed JSON (dicts, lists, ...) into Lycan values, checking every limit."""

    def convert(item, depth):
        if depth > max_nesting:
            raise ExecutionError(f"input nests deeper than max_nesting {max_nesting}")
        if item is None or item is True or item is False:
            return item
        if type(item) is int:
            return checked_int(item)
        if type(item) is float:
            if not math.isfinite(item):
                raise ExecutionError(f"input holds {item}, which is not a finite number")
            return item
        if type(item) is str:
            if len(item) > max_string_length:
                raise ExecutionError(f"input string longer than max_string_length {max_string_length}")
            return item
        if isinstance(item, (list, tuple)):
            if len(item) > max_array_length:
                raise ExecutionError(f"input array longer than max_array_length {max_array_length}")
            if _plain_numbers(item):
                return Array(item)      # the common series: depth 1, nothing to convert
            return make_array([convert(x, depth + 1) for x in item], max_nesting)
        if isinstance(item, dict):
            if len(item) > max_array_length:
                raise ExecutionError(f"input object larger than max_array_length {max_array_length}")
            items = {}
            for key, value in item.items():
                if type(key) is not str:
                    raise ExecutionError(f"input object key {key!r} is not a string")
                items[key] = convert(value, depth + 1)
            return Map(items, 1 + max((depth_of(v) for v in items.values()), default=0))
        raise ExecutionError(f"input holds a {type(item).__name__}, which is not JSON")

    return convert(data, 1)


def _plain_numbers(items):
    """True if every item is a finite float or an int in int64 (the fast path of from_json)."""
    for x in items:
        kind = type(x)
        if kind is float:
            if x - x != 0.0:    # NaN or an infinity
                return False
        elif kind is not int or not INT64_MIN <= x <= INT64_MAX:
            return False
    return True


def to_json(value):
    """Turn a Lycan value into plain JSON data (lists, dicts). Functions have no JSON form."""
    if isinstance(value, Array):
        return [to_json(x) for x in value]
    if isinstance(value, Map):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, Function):
        raise ExecutionError(f"a function ({value.name}) has no JSON form")
    return value


def display(value):
    """The text ``!str`` and ``!p`` show for a value."""
    if type(value) is str:
        return value
    if isinstance(value, Function):
        return f"<function {value.name}>"
    if isinstance(value, (Array, Map)):
        return json.dumps(_displayable(value), separators=(",", ":"), ensure_ascii=False)
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    return repr(value)


def _displayable(value):
    if isinstance(value, Array):
        return [_displayable(x) for x in value]
    if isinstance(value, Map):
        return {k: _displayable(v) for k, v in value.items()}
    if isinstance(value, Function):
        return f"<function {value.name}>"
    return value
