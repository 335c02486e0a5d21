"""The server: ``syntra serve``.

One process serves the four ``syntra.v1`` services on grpc.aio, plus ``grpc.health.v1``
and server reflection, and the ops HTTP port (``/metrics``, ``/healthz``, ``/readyz``).

Layout of ``--data DIR``: ``DIR/store`` is the engine's durable store (WAL, checkpoints,
budget, logs); ``DIR/tokens.json`` holds API tokens (hashes only). A restore swaps
``DIR/store`` and keeps the tokens.

Lifecycle: the port opens at once with health NOT_SERVING and every call UNAVAILABLE;
the store is recovered on a worker thread; then health turns SERVING. SIGTERM (or SIGINT)
stops accepting calls, lets those in flight finish (``grace`` seconds), then closes the
engine, which flushes the WAL and writes a checkpoint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from syntra.engine import Engine
from syntra.errors import InvalidConfig
from syntra.server.admin import AdminServicer
from syntra.server.audit import AuditServicer
from syntra.server.auth import MIN_ADMIN_KEY_CHARS, FailedAuthLimiter, TokenStore
from syntra.server.capsules import CapsuleServicer
from syntra.server.decisions import DecisionServicer
from syntra.server.ops import Metrics, OpsServer
from syntra.server.ratelimit import RateLimiter
from syntra.server.rpc import RESTORING, SERVING, STOPPING, ServiceState
from syntra.store.backup import swap_in
from syntra.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    capsule_pb2,
    capsule_pb2_grpc,
    decision_pb2,
    decision_pb2_grpc,
)

_log = logging.getLogger("syntra.server")

SERVICES = (
    decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name,
    capsule_pb2.DESCRIPTOR.services_by_name["CapsuleService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
ADMIN_KEY_ENV = "SYNTRA_ADMIN_KEY"
STORE_DIRECTORY = "store"
TOKENS_FILE = "tokens.json"


@dataclasses.dataclass
class ServerConfig:
    """How ``syntra serve`` runs. ``admin_key`` is required unless ``dev_mode``, which also
    restricts ``listen`` and ``ops_listen`` to loopback. Bearer tokens cross the wire, so
    a non-loopback ``listen`` needs TLS (``tls_cert`` and ``tls_key``, PEM files) unless
    ``plaintext`` says a TLS-terminating proxy sits in front."""

    data: Path = Path("syntra-data")
    listen: str = "127.0.0.1:7443"
    ops_listen: str | None = "127.0.0.1:9464"
    admin_key: str | None = None
    dev_mode: bool = False
    # Decisions and feedback items per second per principal, and the burst it may spend.
    rate: float = 100_000.0
    burst: float = 200_000.0
    max_message_bytes: int = 8 << 20
    max_restore_bytes: int = 16 << 30
    grace_seconds: float = 10.0
    durability: str = "fsync"
    commit_window_us: int = 200
    workers: int = 4
    tls_cert: Path | None = None
    tls_key: Path | None = None
    plaintext: bool = False

    def check(self) -> None:
        if self.admin_key is None and not self.dev_mode:
            raise InvalidConfig(f"no admin key: set {ADMIN_KEY_ENV} or pass --admin-key-file"
                                " (or --dev-mode, on loopback only, for development)")
        if self.admin_key is not None and len(self.admin_key) < MIN_ADMIN_KEY_CHARS:
            raise InvalidConfig(f"the admin key must be at least {MIN_ADMIN_KEY_CHARS} characters")
        loopback = {}
        for option, address in (("--listen", self.listen), ("--ops-listen", self.ops_listen)):
            if address is not None:
                loopback[option] = _loopback(split_address(address, option)[0])
                if self.dev_mode and not loopback[option]:
                    raise InvalidConfig(f"{option} {address}: dev mode serves on loopback only")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidConfig("TLS needs both --tls-cert and --tls-key")
        if self.tls_cert is None and not self.plaintext and not loopback["--listen"]:
            raise InvalidConfig(f"--listen {self.listen}: tokens would cross the network in plaintext; give"
                                " --tls-cert and --tls-key, or --plaintext behind a TLS-terminating proxy")

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials from the PEM files, or None for plaintext."""
        if self.tls_cert is None:
            return None
        try:
            chain, key = Path(self.tls_cert).read_bytes(), Path(self.tls_key).read_bytes()
        except OSError as exc:
            raise InvalidConfig(f"cannot read the TLS certificate or key: {exc}") from None
        return grpc.ssl_server_credentials([(key, chain)])


def split_address(address: str, option: str = "address") -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise InvalidConfig(f"{option} must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SyntraServer:
    """The running service. ``await start()``, then ``await wait()`` until ``stop()``."""

    def __init__(self, config: ServerConfig):
        config.check()
        self.config = config
        self.data = Path(config.data)
        self.data.mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics(lambda: self.state.engine)
        self.state = ServiceState(
            TokenStore(self.data / TOKENS_FILE, config.admin_key),
            limiter=RateLimiter(config.rate, config.burst), metrics=self.metrics,
            failed_auth=FailedAuthLimiter(), workers=config.workers)
        self.health = health_aio.HealthServicer()
        self.port: int | None = None
        self.ops: OpsServer | None = None
        self._server: grpc.aio.Server | None = None
        self._stopped = asyncio.Event()
        self._restore_lock = asyncio.Lock()

    @property
    def store_path(self) -> Path:
        return self.data / STORE_DIRECTORY

    async def start(self) -> None:
        options = [("grpc.max_receive_message_length", self.config.max_message_bytes),
                   ("grpc.max_send_message_length", self.config.max_message_bytes)]
        server = self._server = grpc.aio.server(options=options)
        decision_pb2_grpc.add_DecisionServiceServicer_to_server(DecisionServicer(self.state), server)
        capsule_pb2_grpc.add_CapsuleServiceServicer_to_server(CapsuleServicer(self.state), server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(self.state), server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.state, self.restore, self.config.max_restore_bytes), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            SERVICES + (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        host, port = split_address(self.config.listen, "--listen")
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        credentials = self.config.server_credentials()
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await server.start()
        if self.config.ops_listen is not None:
            ops_host, ops_port = split_address(self.config.ops_listen, "--ops-listen")
            self.ops = OpsServer(ops_host, ops_port, self.metrics, self._ready)
            self.ops.start()
        engine = await self.state.run_blocking(self._open_engine)
        self.state.engine = engine
        self.state.phase = SERVING
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        _log.info("serving", extra={"fields": {"listen": f"{host}:{self.port}", "data": str(self.data),
                                               "ops": self.ops and f"{ops_host}:{self.ops.port}"}})

    def _open_engine(self) -> Engine:
        return Engine.open(self.store_path, durability=self.config.durability,
                           commit_window_us=self.config.commit_window_us)

    def _ready(self) -> tuple[bool, str]:
        engine = self.state.engine
        if engine is None or self.state.phase != SERVING:
            return False, self.state.phase
        return engine.ready()

    async def _set_health(self, status) -> None:
        for service in ("",) + SERVICES:
            await self.health.set(service, status)

    async def restore(self, staging: Path) -> None:
        """Swap the store for the verified one in ``staging`` and serve from it."""
        async with self._restore_lock:
            self.state.phase = RESTORING
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            engine, self.state.engine = self.state.engine, None
            try:
                await self.state.run_blocking(engine.close)
                old = await self.state.run_blocking(swap_in, staging, self.store_path)
                _log.warning("store restored", extra={"fields": {"previous_store_kept_at": str(old)}})
            finally:
                # Whatever happened, serve from whatever store is in place now.
                engine = await self.state.run_blocking(self._open_engine)
                self.state.engine = engine
                self.state.phase = SERVING
                await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        """Stop accepting, drain the calls in flight, flush the WAL and checkpoint."""
        if self.state.phase == STOPPING:
            return
        self.state.phase = STOPPING
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self.config.grace_seconds)
        engine, self.state.engine = self.state.engine, None
        if engine is not None:
            await self.state.run_blocking(engine.close)
        if self.ops is not None:
            self.ops.stop()
        self.state.executor.shutdown(wait=True)
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()


async def serve(config: ServerConfig, *, announce=None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully. ``announce(server)`` is
    called once the service is SERVING."""
    server = SyntraServer(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
        if announce is not None:
            announce(server)
        await stop.wait()
        _log.info("stopping: draining calls in flight, then flushing the WAL and checkpointing")
    finally:
        await server.stop()
    _log.info("stopped")


def admin_key_from(key_file: str | None) -> str | None:
    """The admin key: the file's contents (stripped) if given, else ``SYNTRA_ADMIN_KEY``."""
    if key_file is not None:
        try:
            return Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InvalidConfig(f"cannot read the admin key file {key_file}: {exc.strerror}") from None
    return os.environ.get(ADMIN_KEY_ENV) or None


def dev_admin_key() -> str:
    """A fresh admin key for a dev-mode server that was given none (shown once)."""
    return "syn_dev_" + secrets.token_urlsafe(32)


def print_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
