"""Structured logs: one JSON object per line on the ``syntra`` logger, tagged with the
request id of the call being served.

>>> import io, json, logging
>>> out = io.StringIO()
>>> handler = configure(out, "INFO")
>>> with request_scope("5eed"):
...     logging.getLogger("syntra.demo").info("decided %s", "x", extra={"fields": {"n": 1}})
>>> line = json.loads(out.getvalue())
>>> line["msg"], line["request_id"], line["n"], line["logger"]
('decided x', '5eed', 1, 'syntra.demo')
>>> unconfigure()
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any, TextIO

# The id of the request being served in this thread or task (None outside a request).
request_id: ContextVar[str | None] = ContextVar("syntra_request_id", default=None)

# Metadata keys whose values are credentials: never logged.
SENSITIVE_KEYS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
REDACTED = "[redacted]"
# Keys every line has; an extra field of the same name is written as "field_<name>".
RESERVED = frozenset({"ts", "level", "logger", "msg", "request_id", "exc"})
# A token secret that slipped into a message keeps its id and loses its secret part.
_TOKEN_SECRET = re.compile(r"\b(syn_[0-9a-f]{16}_)[A-Za-z0-9_-]{43}")
_LOGGER = "syntra"


def new_request_id() -> str:
    """A fresh request id: 16 random hex digits."""
    return secrets.token_hex(8)


def set_request_id(value: str | None) -> Token:
    """Make ``value`` the current request id; pass the result to ``request_id.reset``."""
    return request_id.set(value)


@contextlib.contextmanager
def request_scope(value: str | None = None) -> Iterator[str]:
    """Tag the logs within the block with ``value`` (a new id if None); yields the id."""
    rid = value if value is not None else new_request_id()
    token = request_id.set(rid)
    try:
        yield rid
    finally:
        request_id.reset(token)


def redact(metadata: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Call metadata fit to log: credential values (authorization, cookies, API keys)
    replaced by "[redacted]", binary values by their length. Keys are lower-cased, and a
    repeated key keeps a list of its values."""
    pairs = metadata.items() if isinstance(metadata, Mapping) else metadata
    out: dict[str, Any] = {}
    for key, value in pairs:
        key = str(key).lower()
        if key in SENSITIVE_KEYS:
            value = REDACTED
        elif isinstance(value, (bytes, bytearray)):
            value = f"<{len(value)} bytes>"
        if key in out:
            previous = out[key]
            out[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[key] = value
    return out


def scrub(text: str) -> str:
    """``text`` with the secret part of any Syntra token in it replaced."""
    return _TOKEN_SECRET.sub(lambda m: m.group(1) + REDACTED, text) if "syn_" in text else text


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON: ts (UTC, ISO 8601), level, logger, msg,
    request_id when set, the record's ``extra={"fields": {...}}``, and exc on errors."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            line["request_id"] = rid
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                key = str(key)
                line[f"field_{key}" if key in RESERVED else key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        # Scrubbing the encoded line reaches nested fields too; JSON leaves a token's
        # characters as they are.
        return scrub(json.dumps(line, default=repr, ensure_ascii=False))


def configure(stream: TextIO = sys.stderr, level: str | int = "INFO") -> logging.Handler:
    """Log the ``syntra`` logger tree as JSON lines to ``stream`` at ``level``; returns the
    handler. Calling it again replaces the previous JSON handler. The tree stops
    propagating to the root logger, so each record is written once."""
    if isinstance(level, str):
        number = logging.getLevelNamesMapping().get(level.upper())
        if number is None:
            raise ValueError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        level = number
    unconfigure()
    logger = logging.getLogger(_LOGGER)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    # Marks the handler unconfigure removes, with the settings it restores.
    handler._syntra_restore = (logger.level, logger.propagate)  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler


def unconfigure() -> None:
    """Remove the handler :func:`configure` installed, restoring the logger's level and
    propagation as they were before."""
    logger = logging.getLogger(_LOGGER)
    for handler in list(logger.handlers):
        restore = getattr(handler, "_syntra_restore", None)
        if restore is not None:
            logger.removeHandler(handler)
            handler.close()
            logger.setLevel(restore[0])
            logger.propagate = restore[1]
