"""The per-capsule I/O policy: what a capsule's file, SQLite and HTTP capabilities may touch.

Deny-all is the default. A run without a policy (``run(..., policy=None)``) has every I/O
capability refused; a policy grants exactly what it names and nothing more. A policy is a
JSON object (``policy.json``); every field is optional:

.. code-block:: json

    {
      "version": 1,
      "root": "sandbox",
      "read": true,
      "write": false,
      "hosts": ["api.example.com", "*.metrics.example.org"],
      "sqlite": ["data/metrics.db"],
      "limits": {"http_timeout_seconds": 5, "http_max_response_bytes": 1048576,
                 "http_max_request_bytes": 1048576, "file_max_bytes": 1048576,
                 "sql_max_rows": 1000, "sql_max_seconds": 1}
    }

Parsing checks every field; an unknown field or a bad value raises ``PolicyError`` naming
the field (``limits.sql_max_rows``, ``hosts[2]``).

>>> policy = Policy.from_dict({"hosts": ["api.example.com", "*.example.org"]})
>>> policy.host_allowed("API.example.com"), policy.host_allowed("a.b.example.org")
(True, True)
>>> policy.host_allowed("example.org"), policy.host_allowed("evil.com")
(False, False)
>>> Policy.from_dict({"limits": {"sql_max_rows": 0}})
Traceback (most recent call last):
...
lycan.policy.PolicyError: policy field 'limits.sql_max_rows': must be an int in [1, 1000000], got 0
>>> Policy.from_dict({"hosts": [], "colour": "red"})
Traceback (most recent call last):
...
lycan.policy.PolicyError: policy field 'colour': unknown field (known: hosts, limits, read, root, sqlite, version, write)
"""

import ipaddress
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field

from lycan.errors import CapabilityError, ExecutionError, LycanError


class PolicyError(LycanError):
    """A policy file or dict is malformed; ``field`` names the offending field."""

    def __init__(self, field, message):
        super().__init__(f"policy field {field!r}: {message}")
        self.field = field
        self.reason = message


class CapabilityDenied(CapabilityError):
    """An I/O capability was refused by the policy (or by the absence of one).

    A ``CapabilityError``: ``capability`` names the kernel, ``argument`` the argument the
    refusal is about (``None`` when it is about the call as a whole), ``denial`` the reason.
    """

    def __init__(self, capability, reason, argument=None):
        ExecutionError.__init__(self, f"{capability}: denied: {reason}")
        self.capability = capability
        self.argument = argument
        self.denial = reason


@dataclass(frozen=True)
class IOLimits:
    """Size and time bounds for I/O; every field has a safe default."""

    http_timeout_seconds: float = 5.0          # whole request: connect, send, read
    http_max_response_bytes: int = 1_048_576   # response body
    http_max_request_bytes: int = 1_048_576    # http.post body
    file_max_bytes: int = 1_048_576            # file.readText and file.writeText
    sql_max_rows: int = 1_000                  # rows one sql.sqliteQuery may return
    sql_max_seconds: float = 1.0               # one sql.sqliteQuery


# field -> (kind, lowest, highest)
_LIMIT_BOUNDS = {
    "http_timeout_seconds": ("seconds", 0, 600),
    "http_max_response_bytes": ("int", 1, 1 << 30),
    "http_max_request_bytes": ("int", 1, 1 << 30),
    "file_max_bytes": ("int", 1, 1 << 30),
    "sql_max_rows": ("int", 1, 1_000_000),
    "sql_max_seconds": ("seconds", 0, 600),
}

_FIELDS = ("hosts", "limits", "read", "root", "sqlite", "version", "write")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


@dataclass(frozen=True)
class Policy:
    """A parsed, validated policy. Build one with ``from_dict`` or ``load``."""

    root: str = None            # real path of the sandbox directory; None: no file access
    read: bool = False
    write: bool = False
    hosts: tuple = ()           # normalized names, "*.suffix" patterns or IP literals
    sqlite: tuple = ()          # sandbox-relative paths, as tuples of components
    limits: IOLimits = field(default_factory=IOLimits)
    policy_path: str = None     # real path of the policy file, when loaded from one

    @classmethod
    def load(cls, path):
        """Read and validate ``policy.json``; a relative ``root`` is relative to its directory."""
        real = os.path.realpath(path)
        try:
            with open(real, encoding="utf-8") as file:
                data = json.load(file, parse_constant=_reject_constant)
        except json.JSONDecodeError as error:
            raise PolicyError("<file>", f"{path} is not valid JSON: {error}") from None
        except _ConstantError as error:
            raise PolicyError("<file>", str(error)) from None
        return cls.from_dict(data, base_dir=os.path.dirname(real), policy_path=real)

    @classmethod
    def from_dict(cls, data, base_dir=None, policy_path=None):
        """Validate a policy given as parsed JSON. A relative ``root`` needs ``base_dir``."""
        if not isinstance(data, dict):
            raise PolicyError("<policy>", f"must be a JSON object, got {type(data).__name__}")
        for name in data:
            if name not in _FIELDS:
                raise PolicyError(name, f"unknown field (known: {', '.join(_FIELDS)})")
        if "version" in data and (type(data["version"]) is not int or data["version"] != 1):
            raise PolicyError("version", f"must be 1, got {data['version']!r}")
        read = _flag(data, "read")
        write = _flag(data, "write")
        root = _root(data.get("root"), base_dir)
        hosts = _hosts(data.get("hosts", []))
        sqlite = _sqlite(data.get("sqlite", []))
        if sqlite and root is None:
            raise PolicyError("sqlite", "needs a root: databases are paths inside the sandbox")
        limits = _limits(data.get("limits", {}))
        return cls(root, read, write, hosts, sqlite, limits, policy_path)

    def host_allowed(self, host):
        """Whether ``host`` (a name or IP literal) matches the allowed-hosts list."""
        host = _normal_host(host)
        try:
            host = str(ipaddress.ip_address(host))  # the same address, however it is written
        except ValueError:
            pass
        for pattern in self.hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern:
                return True
        return False

    def database_allowed(self, parts):
        return tuple(parts) in self.sqlite


class _ConstantError(ValueError):
    pass


def _reject_constant(name):
    raise _ConstantError(f"the policy holds {name}, which is not a finite number")


def _flag(data, name):
    value = data.get(name, False)
    if type(value) is not bool:
        raise PolicyError(name, f"must be true or false, got {value!r}")
    return value


def _root(value, base_dir):
    if value is None:
        return None
    if type(value) is not str or not value or "\x00" in value:
        raise PolicyError("root", f"must be a non-empty path string, got {value!r}")
    if not os.path.isabs(value):
        if base_dir is None:
            raise PolicyError("root", f"must be absolute when the policy is not loaded from a file, got {value!r}")
        value = os.path.join(base_dir, value)
    real = os.path.realpath(value)
    try:
        info = os.stat(real)
    except OSError as error:
        raise PolicyError("root", f"{value} cannot be used: {error.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise PolicyError("root", f"{value} is not a directory")
    if real == os.path.sep:
        raise PolicyError("root", "must not be the filesystem root")
    return real


def _normal_host(host):
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.removesuffix(".")


def _hosts(value):
    if not isinstance(value, list):
        raise PolicyError("hosts", f"must be a list of host names, got {type(value).__name__}")
    hosts = []
    for position, entry in enumerate(value):
        where = f"hosts[{position}]"
        if type(entry) is not str or not entry.isascii():
            raise PolicyError(where, f"must be an ASCII host name string, got {entry!r}")
        host = _normal_host(entry)
        try:
            hosts.append(str(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        name = host.removeprefix("*.")
        labels = name.split(".")
        if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
            raise PolicyError(where, f"must be a host name, '*.suffix' or an IP address, got {entry!r}")
        hosts.append(host)
    return tuple(hosts)


def split_path(path):
    """The components of a sandbox-relative path, or a reason it is not one.

    >>> split_path("data/a.txt")
    (('data', 'a.txt'), None)
    >>> split_path("../etc/passwd")[1]
    "holds '..'"
    """
    if type(path) is not str:
        return None, "must be a string"
    if not path:
        return None, "must not be empty"
    if "\x00" in path:
        return None, "holds a NUL character"
    if path.startswith("/") or os.path.isabs(path):
        return None, "must be relative to the sandbox, not absolute"
    if len(path.encode("utf-8", "surrogatepass")) > 4096:
        return None, "is longer than 4096 bytes"
    parts = tuple(path.split("/"))
    for part in parts:
        if part == "..":
            return None, "holds '..'"
        if part in ("", "."):
            return None, "holds an empty or '.' component"
        if len(part.encode("utf-8", "surrogatepass")) > 255:
            return None, "has a component longer than 255 bytes"
    return parts, None


def _sqlite(value):
    if not isinstance(value, list):
        raise PolicyError("sqlite", f"must be a list of database paths, got {type(value).__name__}")
    databases = []
    for position, entry in enumerate(value):
        parts, problem = split_path(entry)
        if problem:
            raise PolicyError(f"sqlite[{position}]", f"{problem}: {entry!r}")
        databases.append(parts)
    return tuple(databases)


def _limits(value):
    if not isinstance(value, dict):
        raise PolicyError("limits", f"must be an object, got {type(value).__name__}")
    chosen = {}
    for name, given in value.items():
        where = f"limits.{name}"
        if name not in _LIMIT_BOUNDS:
            raise PolicyError(where, f"unknown field (known: {', '.join(sorted(_LIMIT_BOUNDS))})")
        kind, low, high = _LIMIT_BOUNDS[name]
        if kind == "int":
            if type(given) is not int or not low <= given <= high:
                raise PolicyError(where, f"must be an int in [{low}, {high}], got {given!r}")
        elif (type(given) not in (int, float) or not math.isfinite(given)
              or not low < given <= high):
            raise PolicyError(where, f"must be a number of seconds in ({low}, {high}], got {given!r}")
        chosen[name] = given
    return IOLimits(**chosen)
