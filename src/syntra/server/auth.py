"""Who may call what: scopes, principals, API tokens and the failed-login limiter.

Pure logic, no gRPC: the servicers turn a bearer secret into a :class:`Principal` with
:meth:`TokenStore.authenticate` and ask :meth:`Principal.allows` before each call.

A scope is a role on a resource (proto/syntra/v1/admin.proto, message Scope):

- ``admin`` on ``""``: everything.
- ``tenant_admin`` on ``tenants/{t}``: every role on that tenant and what lies under it.
- ``decide``, ``feedback``, ``read`` on a job ``tenants/{t}/jobs/{j}`` or a capsule
  ``tenants/{t}/jobs/{j}/capsules/{c}``: that role there and under it.

>>> Principal("ops", [Scope.from_text("read:tenants/a/jobs/b")]).allows(
...     "read", "tenants/a/jobs/b/capsules/c")
True
>>> str(Scope.parse("tenant_admin", "tenants/a"))
'tenant_admin:tenants/a'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from syntra.errors import InvalidConfig, StorageCorrupt, SyntraError
from syntra.names import NAME_PART, TENANT_NAME
from syntra.store.files import make_directory, write_atomically

ROLES = ("admin", "tenant_admin", "decide", "feedback", "read")
ADMIN_KEY_PRINCIPAL = "admin-key"
MIN_ADMIN_KEY_CHARS = 32
DEFAULT_TTL_SECONDS = 30 * 86400
MAX_TTL_SECONDS = 365 * 86400
MAX_SCOPES = 64
MAX_DISPLAY_NAME_CHARS = 256
TOKEN_FILE_FORMAT = 1

_JOB_OR_CAPSULE = re.compile(rf"tenants/{NAME_PART}/jobs/{NAME_PART}(?:/capsules/{NAME_PART})?")
_ANY_RESOURCE = re.compile(rf"tenants/{NAME_PART}(?:/jobs/{NAME_PART}(?:/capsules/{NAME_PART})?)?")
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")
# syn_<16 hex id>_<43 base64url characters: 32 bytes unpadded>
_SECRET = re.compile(r"syn_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")
_ROLES_UNDER_TENANT_ADMIN = ("tenant_admin", "decide", "feedback", "read")

# Unauthenticated.reason is one of these (a fixed set: it labels a metric).
MISSING, MALFORMED, UNKNOWN, REVOKED, EXPIRED = "missing", "malformed", "unknown", "revoked", "expired"


class InvalidScope(SyntraError, ValueError):
    """A scope's role or resource is invalid; ``field`` is "role" or "resource"."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class InvalidTokenRequest(SyntraError, ValueError):
    """A token request argument is invalid; ``field`` names it (proto field name)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class Unauthenticated(SyntraError):
    """The caller's credentials do not authenticate. ``reason`` is one of missing,
    malformed, unknown, revoked, expired; neither it nor the message holds the secret."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class UnknownToken(SyntraError, LookupError):
    """No token has this id."""

    def __init__(self, token_id: str):
        super().__init__(f"no token tokens/{token_id}")
        self.token_id = token_id


class TokenFileCorrupt(StorageCorrupt):
    """The tokens file cannot be read back; the message names the file and what is wrong."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


@dataclass(frozen=True, slots=True)
class Scope:
    """A role on a resource; constructing one validates it (raises :class:`InvalidScope`)."""

    role: str
    resource: str

    def __post_init__(self) -> None:
        role, resource = self.role, self.resource
        if role not in ROLES:
            raise InvalidScope("role", f"role must be one of {', '.join(ROLES)}; got {_shown(role)}")
        if not isinstance(resource, str):
            raise InvalidScope("resource", f"resource must be a string, got {type(resource).__name__}")
        if role == "admin":
            if resource:
                raise InvalidScope("resource", f"an admin scope has an empty resource, got {_shown(resource)}")
        elif role == "tenant_admin":
            if not TENANT_NAME.fullmatch(resource):
                raise InvalidScope(
                    "resource",
                    "a tenant_admin scope's resource is tenants/{tenant} with a part of 1-128"
                    f" characters from [A-Za-z0-9_-], got {_shown(resource)}",
                )
        elif not _JOB_OR_CAPSULE.fullmatch(resource):
            raise InvalidScope(
                "resource",
                f"a {role} scope's resource is a job tenants/{{tenant}}/jobs/{{job}} or a capsule"
                " tenants/{tenant}/jobs/{job}/capsules/{capsule}, parts of 1-128 characters from"
                f" [A-Za-z0-9_-]; got {_shown(resource)}",
            )

    @classmethod
    def parse(cls, role: object, resource: object) -> Scope:
        """A validated scope (the proto's Scope fields)."""
        return cls(role, resource)  # type: ignore[arg-type]

    @classmethod
    def from_text(cls, text: object) -> Scope:
        """Parse ``role:resource`` (``admin`` alone for admin), the CLI's form."""
        if not isinstance(text, str):
            raise InvalidScope("role", f"a scope must be a string role:resource, got {type(text).__name__}")
        role, _, resource = text.partition(":")
        return cls(role, resource)

    def __str__(self) -> str:
        return self.role if not self.resource else f"{self.role}:{self.resource}"

    def covers(self, resource: str) -> bool:
        """True if ``resource`` is this scope's resource or lies under it."""
        return _within(resource, self.resource)


def _within(resource: str, prefix: str) -> bool:
    # "tenants/a/jobs/b" covers "tenants/a/jobs/b/capsules/c", never "tenants/a/jobs/bc".
    return resource == prefix or (resource.startswith(prefix) and resource[len(prefix)] == "/")


class Principal:
    """An authenticated caller: a name and the scopes it holds."""

    __slots__ = ("_admin", "_grants", "name", "scopes")

    def __init__(self, name: str, scopes: Iterable[Scope]):
        self.name = name
        self.scopes = tuple(scopes)
        self._admin = any(s.role == "admin" for s in self.scopes)
        # role -> resources where it is allowed; a tenant_admin scope grants every role
        # but admin on its tenant.
        grants: dict[str, list[str]] = {}
        for scope in self.scopes:
            roles = _ROLES_UNDER_TENANT_ADMIN if scope.role == "tenant_admin" else (scope.role,)
            for role in roles:
                grants.setdefault(role, []).append(scope.resource)
        self._grants = {role: tuple(resources) for role, resources in grants.items()}

    @classmethod
    def dev(cls) -> Principal:
        """The principal of a server started without authentication (development only)."""
        return cls("dev", (Scope("admin", ""),))

    @property
    def is_admin(self) -> bool:
        return self._admin

    def allows(self, role: str, resource: str) -> bool:
        """May this principal act as ``role`` on ``resource``: a capsule name, a job, a
        tenant, or "" (global)? A malformed resource is allowed to admins only (the call
        then fails on the name), so a bad name never widens a narrower scope."""
        if self._admin:
            return True
        if role not in ROLES:
            raise InvalidScope("role", f"role must be one of {', '.join(ROLES)}; got {_shown(role)}")
        if not isinstance(resource, str) or not _ANY_RESOURCE.fullmatch(resource):
            return False
        return any(_within(resource, prefix) for prefix in self._grants.get(role, ()))

    def may_grant(self, scope: Scope) -> bool:
        """May this principal create a token holding ``scope``? Admins grant anything; a
        tenant admin grants scopes within its tenant (tenant_admin of it included)."""
        if self._admin:
            return True
        if scope.role == "admin":
            return False
        # Only a tenant_admin scope grants the tenant_admin role: these are its tenants.
        return any(_within(scope.resource, tenant) for tenant in self._grants.get("tenant_admin", ()))

    def may_manage(self, token: TokenInfo) -> bool:
        """May this principal see or revoke ``token``: could it have granted every scope?"""
        return self._admin or (bool(token.scopes) and all(self.may_grant(s) for s in token.scopes))

    def __repr__(self) -> str:
        return f"Principal({self.name!r}, [{', '.join(map(str, self.scopes))}])"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as listed: never its secret. Times are unix seconds; ``revoke_time`` is
    None until revoked. ``creator`` is a token name (tokens/{id}) or "admin-key"."""

    id: str
    display_name: str
    scopes: tuple[Scope, ...]
    create_time: int
    expire_time: int
    revoke_time: int | None
    creator: str

    @property
    def name(self) -> str:
        """The resource name, ``tokens/{id}``."""
        return f"tokens/{self.id}"

    def active(self, now: float) -> bool:
        return self.revoke_time is None and now < self.expire_time


@dataclass(frozen=True, slots=True)
class _Entry:
    # What the store keeps per token: its info, the secret's SHA-256 and its principal.
    info: TokenInfo
    secret_hash: bytes
    principal: Principal


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


class TokenStore:
    """API tokens in one JSON file (hashes only), plus the optional admin key.

    Mutations write the whole file atomically (fsync, rename) before changing memory, so
    a failed write changes nothing. One server process owns the file: it reads it once at
    open. :meth:`authenticate` works from memory, so revocation and expiry apply to the
    very next call.
    """

    def __init__(self, path: str | Path, admin_key: str | None, *, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self._clock = clock
        self._admin_hash: bytes | None = None
        if admin_key is not None:
            if not isinstance(admin_key, str):
                raise InvalidConfig(f"the admin key must be a string, got {type(admin_key).__name__}")
            if len(admin_key) < MIN_ADMIN_KEY_CHARS:
                raise InvalidConfig(
                    f"the admin key must be at least {MIN_ADMIN_KEY_CHARS} characters, got {len(admin_key)}"
                )
            self._admin_hash = _hash(admin_key)
        self._admin_principal = Principal(ADMIN_KEY_PRINCIPAL, (Scope("admin", ""),))
        self._lock = threading.Lock()
        # Replaced whole (never mutated) so authenticate reads it without the lock.
        self._entries: dict[str, _Entry] = self._load()

    # --- the file -----------------------------------------------------------------------

    def _load(self) -> dict[str, _Entry]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TokenFileCorrupt(f"tokens file {self.path} is not valid JSON (truncated or damaged): {exc}") from None
        if not isinstance(document, dict) or document.get("format") != TOKEN_FILE_FORMAT:
            raise TokenFileCorrupt(
                f"tokens file {self.path} is not a format-{TOKEN_FILE_FORMAT} token list"
                " (expected an object with format and tokens)"
            )
        tokens = document.get("tokens")
        if not isinstance(tokens, list):
            raise TokenFileCorrupt(f"tokens file {self.path}: 'tokens' must be a list")
        entries: dict[str, _Entry] = {}
        for index, item in enumerate(tokens):
            try:
                entry = _entry_from_json(item)
            except (KeyError, TypeError, ValueError) as exc:
                raise TokenFileCorrupt(f"tokens file {self.path}: token #{index} is invalid: {exc}") from None
            if entry.info.id in entries:
                raise TokenFileCorrupt(f"tokens file {self.path}: token id {entry.info.id} appears twice")
            entries[entry.info.id] = entry
        return entries

    def _save(self, entries: dict[str, _Entry]) -> None:
        document = {"format": TOKEN_FILE_FORMAT, "tokens": [_entry_to_json(e) for e in entries.values()]}
        data = json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"
        make_directory(self.path.parent)
        write_atomically(self.path, lambda file: file.write(data))

    # --- authentication -----------------------------------------------------------------

    def authenticate(self, secret: object) -> Principal:
        """The principal ``secret`` (a token secret or the admin key) stands for.

        Raises :class:`Unauthenticated`; a wrong secret for an existing id reads as an
        unknown token, so ids cannot be probed.
        """
        if not isinstance(secret, str) or not secret:
            raise Unauthenticated(MISSING, "no credentials: send authorization: Bearer <token>")
        digest = _hash(secret)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return self._admin_principal
        match = _SECRET.fullmatch(secret)
        if match is None:
            raise Unauthenticated(MALFORMED, "the bearer credential is not a Syntra token (syn_<id>_<secret>)")
        entry = self._entries.get(match.group(1))
        if entry is None or not hmac.compare_digest(digest, entry.secret_hash):
            raise Unauthenticated(UNKNOWN, "unknown token")
        info = entry.info
        if info.revoke_time is not None:
            raise Unauthenticated(REVOKED, f"token {info.name} was revoked")
        if self._clock() >= info.expire_time:
            raise Unauthenticated(EXPIRED, f"token {info.name} expired")
        return entry.principal

    # --- administration -----------------------------------------------------------------

    def create(
        self, scopes: Iterable[Scope], ttl_seconds: int, display_name: str = "", creator: str = ADMIN_KEY_PRINCIPAL
    ) -> tuple[TokenInfo, str]:
        """Create a token; return its info and its secret (shown once, never stored).

        ``ttl_seconds``: 0 means 30 days, else 1 to 365 days in seconds. Raises
        :class:`InvalidTokenRequest` (or :class:`InvalidScope`) and stores nothing.
        """
        checked = _checked_scopes(scopes)
        ttl = _checked_ttl(ttl_seconds)
        if not isinstance(display_name, str):
            raise InvalidTokenRequest("display_name", f"must be a string, got {type(display_name).__name__}")
        if len(display_name) > MAX_DISPLAY_NAME_CHARS or not display_name.isprintable():
            raise InvalidTokenRequest(
                "display_name", f"must be at most {MAX_DISPLAY_NAME_CHARS} printable characters"
            )
        if not isinstance(creator, str) or not creator:
            raise InvalidTokenRequest("creator", "must be a non-empty string")
        with self._lock:
            token_id = secrets.token_hex(8)
            while token_id in self._entries:
                token_id = secrets.token_hex(8)
            body = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
            secret = f"syn_{token_id}_{body}"
            now = int(self._clock())
            info = TokenInfo(token_id, display_name, checked, now, now + ttl, None, creator)
            entries = {**self._entries, token_id: _Entry(info, _hash(secret), Principal(info.name, checked))}
            self._save(entries)
            self._entries = entries
        return info, secret

    def list(self, show_inactive: bool = False) -> list[TokenInfo]:
        """Tokens oldest first; revoked and expired ones only with ``show_inactive``."""
        now = self._clock()
        infos = [e.info for e in self._entries.values() if show_inactive or e.info.active(now)]
        return sorted(infos, key=lambda info: (info.create_time, info.id))

    def get(self, token_id: str) -> TokenInfo:
        """The token with this id (raises :class:`UnknownToken`)."""
        _check_token_id(token_id)
        entry = self._entries.get(token_id)
        if entry is None:
            raise UnknownToken(token_id)
        return entry.info

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token now (the next call with it fails); revoking twice keeps the first
        revoke time. Raises :class:`UnknownToken`."""
        _check_token_id(token_id)
        with self._lock:
            entry = self._entries.get(token_id)
            if entry is None:
                raise UnknownToken(token_id)
            if entry.info.revoke_time is not None:
                return entry.info
            info = replace(entry.info, revoke_time=int(self._clock()))
            entries = {**self._entries, token_id: _Entry(info, entry.secret_hash, entry.principal)}
            self._save(entries)
            self._entries = entries
        return info


def _check_token_id(token_id: object) -> None:
    if not isinstance(token_id, str) or not _TOKEN_ID.fullmatch(token_id):
        raise InvalidTokenRequest("name", f"a token id is 16 lowercase hex digits, got {_shown(token_id)}")


def _checked_scopes(scopes: Iterable[Scope]) -> tuple[Scope, ...]:
    if isinstance(scopes, (str, bytes)) or not isinstance(scopes, Iterable):
        raise InvalidTokenRequest("scopes", "must be a list of scopes")
    checked: list[Scope] = []
    for scope in scopes:
        if not isinstance(scope, Scope):
            raise InvalidTokenRequest("scopes", f"each scope must be a Scope, got {type(scope).__name__}")
        if scope not in checked:
            checked.append(scope)
    if not checked:
        raise InvalidTokenRequest("scopes", "a token needs at least one scope")
    if len(checked) > MAX_SCOPES:
        raise InvalidTokenRequest("scopes", f"at most {MAX_SCOPES} scopes, got {len(checked)}")
    return tuple(checked)


def _checked_ttl(ttl_seconds: object) -> int:
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise InvalidTokenRequest("ttl_seconds", f"must be an integer, got {type(ttl_seconds).__name__}")
    if ttl_seconds == 0:
        return DEFAULT_TTL_SECONDS
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidTokenRequest(
            "ttl_seconds", f"must be 0 (30 days) or 1 to {MAX_TTL_SECONDS} (a year), got {ttl_seconds}"
        )
    return ttl_seconds


def _entry_to_json(entry: _Entry) -> dict[str, Any]:
    info = entry.info
    return {
        "id": info.id,
        "display_name": info.display_name,
        "scopes": [[s.role, s.resource] for s in info.scopes],
        "create_time": info.create_time,
        "expire_time": info.expire_time,
        "revoke_time": info.revoke_time,
        "creator": info.creator,
        "secret_sha256": entry.secret_hash.hex(),
    }


def _entry_from_json(item: Any) -> _Entry:
    if not isinstance(item, dict):
        raise TypeError("a token must be an object")
    token_id = item["id"]
    if not isinstance(token_id, str) or not _TOKEN_ID.fullmatch(token_id):
        raise ValueError(f"id must be 16 lowercase hex digits, got {_shown(token_id)}")
    times = [item["create_time"], item["expire_time"]]
    revoke_time = item["revoke_time"]
    for value in times + ([] if revoke_time is None else [revoke_time]):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"times must be integers (unix seconds), got {_shown(value)}")
    if not isinstance(item["display_name"], str) or not isinstance(item["creator"], str):
        raise TypeError("display_name and creator must be strings")
    secret_hash = bytes.fromhex(item["secret_sha256"])
    if len(secret_hash) != 32:
        raise ValueError("secret_sha256 must be 32 bytes of hex")
    scopes = tuple(Scope(role, resource) for role, resource in item["scopes"])
    info = TokenInfo(token_id, item["display_name"], scopes, times[0], times[1], revoke_time, item["creator"])
    return _Entry(info, secret_hash, Principal(info.name, scopes))


class FailedAuthLimiter:
    """Slows down credential guessing: a peer with ``max_failures`` failures within
    ``window_seconds`` is blocked until the oldest of them leaves the window.

    Keeps at most ``max_failures`` times per peer and ``max_peers`` peers (the ones that
    failed longest ago are forgotten first). Thread-safe.
    """

    def __init__(
        self,
        max_failures: int = 10,
        window_seconds: float = 60,
        *,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 1:
            raise InvalidConfig(f"max_failures must be an integer >= 1, got {max_failures!r}")
        if isinstance(window_seconds, bool) or not isinstance(window_seconds, (int, float)) or not window_seconds > 0:
            raise InvalidConfig(f"window_seconds must be a number > 0, got {window_seconds!r}")
        if isinstance(max_peers, bool) or not isinstance(max_peers, int) or max_peers < 1:
            raise InvalidConfig(f"max_peers must be an integer >= 1, got {max_peers!r}")
        self.max_failures = max_failures
        self.window_seconds = float(window_seconds)
        self.max_peers = max_peers
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def record_failure(self, peer: str) -> None:
        """Count one failed authentication from ``peer``."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(peer)
            if times is None:
                times = self._failures[peer] = deque(maxlen=self.max_failures)
                while len(self._failures) > self.max_peers:
                    self._failures.popitem(last=False)
            else:
                self._failures.move_to_end(peer)
            times.append(now)

    def blocked(self, peer: str) -> float:
        """Seconds ``peer`` must wait before trying again (0.0 if it may try now)."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(peer)
            if times is None:
                return 0.0
            if now - times[-1] >= self.window_seconds:
                del self._failures[peer]    # nothing recent: forget it
                return 0.0
            if len(times) < self.max_failures:
                return 0.0
            return max(0.0, times[0] + self.window_seconds - now)

    def __len__(self) -> int:
        return len(self._failures)
