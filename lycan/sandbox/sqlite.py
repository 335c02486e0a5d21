"""``sql.sqliteQuery``: read-only queries on the databases the policy lists."""

import math
import os
import re
import sqlite3
import time
from urllib.parse import quote

from lycan.errors import CapabilityError, LimitExceeded
from lycan.policy import CapabilityDenied
from lycan.sandbox._common import _policy, _seconds_left, _to_lycan
from lycan.sandbox.files import _lstat, _open_parent, _parts, _regular
from lycan.values import Array, is_number, type_name

_SQL_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
# Functions that reach outside the query; most are absent from a plain connection, and the
# authorizer refuses them by name in case an extension provides them.
_SQL_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}


def _authorize(action, first, second, database, trigger):
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if (second or "").lower() in _SQL_DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    return sqlite3.SQLITE_OK if action in _SQL_ALLOWED else sqlite3.SQLITE_DENY


def first_keyword(query):
    """The first word of a SQL statement after whitespace and comments, upper-cased.

    >>> first_keyword("  -- why\\n /* how */ select 1")
    'SELECT'
    """
    position = 0
    while True:
        while position < len(query) and query[position].isspace():
            position += 1
        if query.startswith("--", position):
            end = query.find("\n", position)
            position = len(query) if end < 0 else end + 1
        elif query.startswith("/*", position):
            end = query.find("*/", position + 2)
            if end < 0:
                return ""
            position = end + 2
        else:
            break
    match = re.match(r"[A-Za-z]+", query[position:])
    return match.group(0).upper() if match else ""


def _sql_params(kernel, params):
    if params is None:
        return ()
    if not isinstance(params, Array):
        raise CapabilityError(kernel, "params", f"must be an array or null, got {type_name(params)}")
    for position, value in enumerate(params):
        if value is not None and not is_number(value) and type(value) is not str:
            raise CapabilityError(kernel, "params", f"element {position} must be an int, float, "
                                                    f"string or null, got {type_name(value)}")
        if type(value) is float and not math.isfinite(value):
            raise CapabilityError(kernel, "params", f"element {position} must be finite, got {value}")
    return tuple(params)


def _database_path(kernel, policy, db):
    parts = _parts(kernel, "db", db)
    if not policy.database_allowed(parts):
        raise CapabilityDenied(kernel, f"database {db!r} is not listed in the policy's sqlite list", "db")
    directory = _open_parent(kernel, "db", policy, parts)
    if directory is None:
        raise CapabilityError(kernel, "db", f"{db!r} does not exist")
    try:
        info = _lstat(directory, parts[-1])
    finally:
        os.close(directory)
    if info is None:
        raise CapabilityError(kernel, "db", f"{db!r} does not exist")
    _regular(kernel, "db", info, db)
    real = os.path.join(policy.root, *parts)
    if os.path.realpath(real) != real:
        raise CapabilityDenied(kernel, f"{db!r} does not resolve to itself inside the sandbox", "db")
    return real


def sql_sqlite_query(context, db, query, params):
    """Rows of a read-only query as an array of maps (column name -> value)."""
    kernel = "sql.sqliteQuery"
    policy = _policy(context, kernel)
    if policy.root is None or not policy.sqlite:
        raise CapabilityDenied(kernel, "the policy lists no sqlite databases")
    real = _database_path(kernel, policy, db)
    if type(query) is not str:
        raise CapabilityError(kernel, "query", f"must be a string, got {type_name(query)}")
    if first_keyword(query) not in ("SELECT", "WITH"):
        raise CapabilityDenied(kernel, "only statements starting with SELECT or WITH are allowed", "query")
    arguments = _sql_params(kernel, params)
    max_rows = policy.limits.sql_max_rows
    seconds, binding = _seconds_left(context, kernel, policy.limits.sql_max_seconds, "sql_max_seconds")
    deadline = time.monotonic() + seconds
    try:
        connection = sqlite3.connect(f"file:{quote(real)}?mode=ro", uri=True, isolation_level=None,
                                     timeout=seconds)
    except sqlite3.Error as error:
        raise CapabilityError(kernel, "db", f"cannot open {db!r}: {error}") from None
    try:
        connection.set_authorizer(_authorize)
        connection.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 1000)
        try:
            cursor = connection.execute(query, arguments)
            names = [column[0] for column in cursor.description or ()]
            rows = cursor.fetchmany(max_rows + 1)
        except sqlite3.Error as error:
            text = str(error)
            if "not authorized" in text or "prohibited" in text:
                raise CapabilityDenied(kernel, f"the query does something other than read ({text})",
                                       "query") from None
            if "interrupted" in text and time.monotonic() > deadline:
                if binding == "max_seconds":
                    raise LimitExceeded("max_seconds", f"{kernel}: the query ran past the run's max_seconds") from None
                raise CapabilityError(kernel, "query", f"ran longer than sql_max_seconds "
                                                       f"{policy.limits.sql_max_seconds}") from None
            raise CapabilityError(kernel, "query", f"failed: {text}") from None
        except (ValueError, OverflowError) as error:  # e.g. two statements, or an int param out of range
            raise CapabilityError(kernel, "query", f"failed: {error}") from None
    finally:
        connection.close()
    if len(rows) > max_rows:
        raise CapabilityError(kernel, "query", f"returned more than sql_max_rows {max_rows} rows; "
                                               "add a LIMIT")
    if len(set(names)) != len(names):
        raise CapabilityError(kernel, "query", f"has duplicate column names {names}; use AS to rename them")
    result = []
    for row in rows:
        for name, value in zip(names, row):
            if type(value) is bytes:
                raise CapabilityError(kernel, "query", f"column {name!r} holds a blob, which is not a Lycan value")
            if type(value) is float and not math.isfinite(value):
                raise CapabilityError(kernel, "query", f"column {name!r} holds {value}, which is not finite")
        result.append(dict(zip(names, row)))
    return _to_lycan(context, kernel, result)
