"""How a client reaches the service: its checked settings, the channel options that make
gRPC retry UNAVAILABLE with exponential backoff, and the bearer-token metadata."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from syntra.errors import InvalidArgument

DEFAULT_TARGET = "127.0.0.1:7443"
TOKEN_ENV = "SYNTRA_TOKEN"
# gRPC makes at most 5 attempts of a call, whatever a retry policy asks for.
MAX_RETRIES = 4
BACKOFF_MULTIPLIER = 2.0
# gRPC's own retry backoff is jittered by +-20%; the client's Feedback retries match it.
BACKOFF_JITTER = 0.2
# The server accepts messages up to 8 MiB; a report or memory answer may be that large.
MAX_MESSAGE_BYTES = 8 << 20

_SERVICES = ("DecisionService", "CapsuleService", "AuditService", "AdminService")
# Applied exactly once by the server: the client retries these itself, so it knows
# whether an ALREADY_EXISTS answers a retry (an earlier attempt landed) or a first try.
CLIENT_RETRIED = ("Feedback", "FeedbackBatch")


@dataclasses.dataclass(frozen=True)
class Settings:
    """A client's constructor arguments, checked."""

    target: str
    token: str | None
    timeout: float
    retries: int
    initial_backoff: float
    max_backoff: float
    # False: plaintext; True: TLS trusting the system's roots; bytes: TLS trusting these PEM roots.
    tls: bool | bytes = False

    @classmethod
    def check(cls, target: str, token: str | None, timeout: float, retries: int, initial_backoff: float,
              max_backoff: float, tls: bool | bytes = False) -> Settings:
        if not isinstance(target, str) or not target:
            raise InvalidArgument("target", f"must be a non-empty 'host:port', got {target!r}")
        if token is None:
            token = os.environ.get(TOKEN_ENV) or None
        elif not isinstance(token, str):
            raise InvalidArgument("token", f"must be a string, got {type(token).__name__}")
        _positive(timeout, "timeout")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
            raise InvalidArgument("retries", f"must be an integer from 0 to {MAX_RETRIES}, got {retries!r}")
        _positive(initial_backoff, "initial_backoff")
        _positive(max_backoff, "max_backoff")
        if max_backoff < initial_backoff:
            raise InvalidArgument("max_backoff", f"must be at least initial_backoff ({initial_backoff}), "
                                                 f"got {max_backoff}")
        if not isinstance(tls, bool | bytes):
            raise InvalidArgument("tls", f"must be True, False or PEM root certificates (bytes), got {type(tls).__name__}")
        return cls(target, token or None, float(timeout), retries, float(initial_backoff), float(max_backoff), tls)

    def credentials(self):
        """The channel's TLS credentials, or None for plaintext."""
        if self.tls is False:
            return None
        return grpc.ssl_channel_credentials(root_certificates=None if self.tls is True else self.tls)

    def call_timeout(self, timeout: float | None) -> float:
        """A call's deadline in seconds: its own ``timeout`` or the client's."""
        if timeout is None:
            return self.timeout
        _positive(timeout, "timeout")
        return float(timeout)

    @functools.cached_property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The bearer-token metadata every call sends (made once: decide is a hot path)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def service_config(self) -> str:
        """The gRPC service config: retry UNAVAILABLE with exponential backoff, except the
        calls the client retries itself."""
        configs: list[dict[str, Any]] = [
            {"name": [{"service": f"syntra.v1.{service}"} for service in _SERVICES]},
            {"name": [{"service": "syntra.v1.DecisionService", "method": method} for method in CLIENT_RETRIED]},
        ]
        if self.retries:
            configs[0]["retryPolicy"] = {
                "maxAttempts": self.retries + 1,
                "initialBackoff": f"{self.initial_backoff:.6f}s",
                "maxBackoff": f"{self.max_backoff:.6f}s",
                "backoffMultiplier": BACKOFF_MULTIPLIER,
                "retryableStatusCodes": ["UNAVAILABLE"],
            }
        return json.dumps({"methodConfig": configs})

    def channel_options(self, extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
        """Options for a channel the client owns; ``extra`` (the caller's) come last and win."""
        return [
            ("grpc.service_config", self.service_config()),
            ("grpc.enable_retries", 1),
            # Reconnect on the retry schedule, so a retry can reach a server that came back.
            ("grpc.initial_reconnect_backoff_ms", max(1, int(self.initial_backoff * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(1, int(self.max_backoff * 1000))),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            *extra,
        ]

    def backoff_delays(self) -> Iterator[float]:
        """The waits before each retry the client makes itself (gRPC's schedule)."""
        delay = self.initial_backoff
        for _ in range(self.retries):
            yield delay * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
            delay = min(delay * BACKOFF_MULTIPLIER, self.max_backoff)


def _positive(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or value == float("inf"):
        raise InvalidArgument(field, f"must be a positive number of seconds, got {value!r}")
