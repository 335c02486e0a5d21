"""The ops HTTP port: Prometheus ``/metrics``, ``/healthz`` and ``/readyz``.

:class:`Metrics` owns the registry. The servicers count through its cheap methods
(:meth:`Metrics.decided`, :meth:`Metrics.rpc`, ...), and at each scrape a collector reads
live state from the engine: the WAL's group-commit histograms, each capsule's lifecycle,
decision and pending counts and its meta-bandit shares. :class:`OpsServer` serves them
over plain HTTP on a daemon thread.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from syntra.learning.policy import ACTIVE, FROZEN, WARMUP

logger = logging.getLogger("syntra.ops")

LIFECYCLE_STATES = (WARMUP, ACTIVE, FROZEN)
# RPC latency from an in-memory decide (~50 us) to a slow, synced batch (~1 s).
RPC_BUCKETS = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0)

EngineGetter = Callable[[], Any]


class Metrics:
    """Syntra's Prometheus metrics, in a registry of their own (:attr:`registry`).

    ``engine_getter()`` returns the current :class:`syntra.Engine`, or None while there is
    none (recovering, restoring); the live-state metrics are read from it at each scrape.
    The counting methods cache their labelled children, so a call costs a dict lookup and
    an increment.
    """

    def __init__(self, engine_getter: EngineGetter | None = None):
        self.registry = CollectorRegistry()
        registry = self.registry
        self.decisions = Counter(
            "syntra_decisions_total", "Decisions served, per capsule.", ["capsule"], registry=registry
        )
        self.feedback = Counter(
            "syntra_feedback_total", "Feedback applied, per capsule.", ["capsule"], registry=registry
        )
        self.refusals = Counter(
            "syntra_refusals_total", "Decisions refused, per capsule and reason.", ["capsule", "reason"],
            registry=registry,
        )
        self.rpcs = Counter(
            "syntra_rpc_total", "RPCs finished, per method and status code.", ["method", "code"], registry=registry
        )
        self.rpc_duration = Histogram(
            "syntra_rpc_duration_seconds", "RPC handling time, per method.", ["method"], buckets=RPC_BUCKETS,
            registry=registry,
        )
        self.rate_limited = Counter(
            "syntra_rate_limited_total", "Calls refused by the rate limiter.", registry=registry
        )
        self.auth_failures = Counter(
            "syntra_auth_failures_total", "Failed authentications, per reason.", ["reason"], registry=registry
        )
        self._decided: dict[str, Any] = {}
        self._fed_back: dict[str, Any] = {}
        self._refused: dict[tuple[str, str], Any] = {}
        self._rpc_counts: dict[tuple[str, str], Any] = {}
        self._rpc_durations: dict[str, Any] = {}
        self._auth_failed: dict[str, Any] = {}
        if engine_getter is not None:
            registry.register(_EngineCollector(engine_getter))

    # --- the hot path -------------------------------------------------------------------

    def decided(self, capsule: str, n: int = 1) -> None:
        """Count ``n`` decisions served by ``capsule``."""
        child = self._decided.get(capsule)
        if child is None:
            child = self._decided[capsule] = self.decisions.labels(capsule)
        child.inc(n)

    def fed_back(self, capsule: str, n: int = 1) -> None:
        """Count ``n`` feedbacks applied to ``capsule``."""
        child = self._fed_back.get(capsule)
        if child is None:
            child = self._fed_back[capsule] = self.feedback.labels(capsule)
        child.inc(n)

    def refused(self, capsule: str, reason: str, n: int = 1) -> None:
        """Count ``n`` refusals of ``capsule`` for ``reason``."""
        key = (capsule, reason)
        child = self._refused.get(key)
        if child is None:
            child = self._refused[key] = self.refusals.labels(capsule, reason)
        child.inc(n)

    def rpc(self, method: str, code: str, seconds: float) -> None:
        """Count one finished RPC of ``method`` with status ``code`` that took ``seconds``."""
        key = (method, code)
        counter = self._rpc_counts.get(key)
        if counter is None:
            counter = self._rpc_counts[key] = self.rpcs.labels(method, code)
        counter.inc()
        duration = self._rpc_durations.get(method)
        if duration is None:
            duration = self._rpc_durations[method] = self.rpc_duration.labels(method)
        duration.observe(seconds)

    def limited(self, n: int = 1) -> None:
        """Count ``n`` calls refused by the rate limiter."""
        self.rate_limited.inc(n)

    def auth_failed(self, reason: str) -> None:
        """Count one failed authentication (reason: syntra.server.auth.Unauthenticated.reason)."""
        child = self._auth_failed.get(reason)
        if child is None:
            child = self._auth_failed[reason] = self.auth_failures.labels(reason)
        child.inc()

    def forget_capsule(self, capsule: str) -> None:
        """Drop an uninstalled capsule's series, so label sets do not pile up."""
        if self._decided.pop(capsule, None) is not None:
            self.decisions.remove(capsule)
        if self._fed_back.pop(capsule, None) is not None:
            self.feedback.remove(capsule)
        for key in [key for key in self._refused if key[0] == capsule]:
            del self._refused[key]
            self.refusals.remove(*key)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the text format ``accept`` asks for (Prometheus text by
        default, OpenMetrics when requested): (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _EngineCollector:
    """Reads the engine's live state at scrape time (no bookkeeping on the hot path)."""

    def __init__(self, engine_getter: EngineGetter):
        self._engine_getter = engine_getter

    def describe(self) -> list[Metric]:
        return []   # the series depend on what is installed: nothing to check up front

    def collect(self) -> Iterator[Metric]:
        engine = self._engine_getter()
        if engine is None:
            return
        yield from _wal_metrics(engine)
        yield from _capsule_metrics(engine)


def _wal_metrics(engine: Any) -> Iterator[Metric]:
    if not engine.durable:
        return
    histograms = engine.wal_histograms
    for name, key, text in (
        ("syntra_wal_fsync_seconds", "fsync_seconds", "Latency of each fdatasync of WAL segment data."),
        ("syntra_wal_batch_records", "batch_records", "Records per WAL group commit."),
    ):
        bounds, cumulative, total = histograms[key]
        buckets = [(floatToGoString(bound), count) for bound, count in zip(bounds, cumulative)]
        yield HistogramMetricFamily(name, text, buckets=buckets, sum_value=total)


def _capsule_metrics(engine: Any) -> Iterator[Metric]:
    lifecycle = GaugeMetricFamily(
        "syntra_capsule_lifecycle", "1 for the capsule's current lifecycle state, else 0.", labels=["capsule", "state"]
    )
    decisions = GaugeMetricFamily(
        "syntra_capsule_decisions", "Decisions the capsule has made since it was installed.", labels=["capsule"]
    )
    pending = GaugeMetricFamily("syntra_capsule_pending", "Decisions awaiting feedback.", labels=["capsule"])
    shares = GaugeMetricFamily(
        "syntra_meta_share", "The meta-bandit's share of each candidate rule.", labels=["capsule", "candidate"]
    )
    for capsule in engine.capsules():
        name = capsule.name
        # Not report(): it walks every context under the capsule's lock, stalling its decisions.
        current = capsule.lifecycle
        for state in LIFECYCLE_STATES:
            lifecycle.add_metric([name, state], 1.0 if state == current else 0.0)
        decisions.add_metric([name], capsule.decisions)
        pending.add_metric([name], capsule.pending)
        for candidate, entry in capsule.candidates().items():
            shares.add_metric([name, candidate], entry["share"])
    yield from (lifecycle, decisions, pending, shares)


class _OpsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: Metrics, ready: Callable[[], tuple[bool, str]]):
        self.metrics = metrics
        self.ready = ready
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _OpsHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host's FQDN: a DNS lookup we never need.
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.server_address[0]
        self.server_port = self.server_address[1]


class _OpsHandler(BaseHTTPRequestHandler):
    server: _OpsHTTPServer
    timeout = 10    # a client that stalls mid-request does not hold a thread for long
    server_version = "syntra-ops"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            try:
                body, content_type = self.server.metrics.exposition(self.headers.get("Accept"))
            except Exception as exc:
                logger.exception("metrics collection failed")
                self._send(500, f"metrics collection failed: {exc}\n")
                return
            self._send(200, body, content_type)
        elif path == "/healthz":
            self._send(200, "ok\n")
        elif path == "/readyz":
            try:
                ready, reason = self.server.ready()
            except Exception as exc:
                logger.exception("readiness check failed")
                ready, reason = False, f"readiness check failed: {exc}"
            self._send(200 if ready else 503, ("ok" if ready else reason or "not ready") + "\n")
        else:
            self._send(404, f"no such path {path!r}: try /metrics, /healthz or /readyz\n")

    def _send(self, status: int, body: bytes | str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


class OpsServer:
    """``/metrics``, ``/healthz`` (200 while the process runs) and ``/readyz`` (200 when
    ``ready()`` returns (True, _), else 503 with its reason) on ``host:port``; other paths
    are 404. ``port=0`` picks a free port: read :attr:`port` after :meth:`start`."""

    def __init__(self, host: str, port: int, metrics: Metrics, ready: Callable[[], tuple[bool, str]]):
        self.host = host
        self._requested_port = port
        self.metrics = metrics
        self.ready = ready
        self._server: _OpsHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        return self._server.server_address[1] if self._server is not None else self._requested_port

    def start(self) -> None:
        """Bind and serve on a daemon thread (OSError if the address is taken)."""
        if self._server is not None:
            raise RuntimeError("the ops server is already started")
        server = _OpsHTTPServer((self.host, self._requested_port), self.metrics, self.ready)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                  name=f"syntra-ops:{server.server_address[1]}", daemon=True)
        thread.start()
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Stop serving and release the port. Idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
