"""Metrics, the ops HTTP port, the WAL's group-commit histograms and JSON logs."""

import io
import json
import logging
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from syntra_core.wal import Wal

from syntra import Engine
from syntra.server import jsonlog
from syntra.server.ops import Metrics, OpsServer

PLAIN = "tenants/acme/jobs/llm/capsules/plain"
LEARNING = "tenants/acme/jobs/llm/capsules/learning"


# --- helpers -----------------------------------------------------------------------------


def get(port, path, accept=None):
    """(status, content type, body) of GET http://127.0.0.1:port/path."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def samples(text):
    """{(sample name, frozenset of labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(found, name, **labels):
    return found[(name, frozenset(labels.items()))]


class Readiness:
    def __init__(self):
        self.state = (False, "recovering the store")

    def __call__(self):
        return self.state


@pytest.fixture
def engine(tmp_path):
    engine = Engine.open(tmp_path / "store", seed=7)
    try:
        yield engine
    finally:
        engine.close(checkpoint=False)


@pytest.fixture
def ops(engine):
    """A running ops server over ``engine``, its metrics and its readiness switch."""
    current = {"engine": engine}
    metrics = Metrics(lambda: current["engine"])
    ready = Readiness()
    server = OpsServer("127.0.0.1", 0, metrics, ready)
    server.start()
    try:
        yield server, metrics, ready, current
    finally:
        server.stop()


# --- the HTTP port -----------------------------------------------------------------------


def test_health_readiness_and_unknown_paths(ops):
    server, _, ready, _ = ops
    assert server.port != 0
    assert get(server.port, "/healthz")[::2] == (200, "ok\n")
    assert get(server.port, "/readyz")[::2] == (503, "recovering the store\n")
    ready.state = (True, "ok")
    assert get(server.port, "/readyz")[::2] == (200, "ok\n")
    assert get(server.port, "/readyz?verbose=1")[0] == 200
    status, _, body = get(server.port, "/admin")
    assert status == 404 and "/admin" in body


def test_a_failing_readiness_check_reads_as_not_ready(engine):
    def broken():
        raise RuntimeError("store handle gone")

    with OpsServer("127.0.0.1", 0, Metrics(), broken) as server:
        status, _, body = get(server.port, "/readyz")
    assert status == 503 and "store handle gone" in body


def test_stop_releases_the_port_and_start_is_once():
    server = OpsServer("127.0.0.1", 0, Metrics(), lambda: (True, ""))
    server.start()
    port = server.port
    with pytest.raises(RuntimeError, match="already started"):
        server.start()
    assert get(port, "/healthz")[0] == 200
    server.stop()
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_openmetrics_on_request(ops):
    server, metrics, _, _ = ops
    metrics.decided(PLAIN)
    status, content_type, body = get(server.port, "/metrics", accept="application/openmetrics-text")
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")
    status, content_type, _ = get(server.port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")


# --- counters ----------------------------------------------------------------------------


def test_counters_move():
    metrics = Metrics()
    for _ in range(3):
        metrics.decided(PLAIN)
    metrics.decided(PLAIN, n=1000)
    metrics.decided(LEARNING)
    metrics.fed_back(PLAIN, 2)
    metrics.refused(PLAIN, "ood")
    metrics.refused(PLAIN, "ood")
    metrics.refused(PLAIN, "budget")
    metrics.rpc("/syntra.v1.DecisionService/Decide", "OK", 80e-6)
    metrics.rpc("/syntra.v1.DecisionService/Decide", "OK", 0.3)
    metrics.rpc("/syntra.v1.DecisionService/Decide", "INVALID_ARGUMENT", 40e-6)
    metrics.limited()
    metrics.auth_failed("expired")
    found = samples(metrics.exposition()[0].decode())
    decide = "/syntra.v1.DecisionService/Decide"
    assert value(found, "syntra_decisions_total", capsule=PLAIN) == 1003
    assert value(found, "syntra_decisions_total", capsule=LEARNING) == 1
    assert value(found, "syntra_feedback_total", capsule=PLAIN) == 2
    assert value(found, "syntra_refusals_total", capsule=PLAIN, reason="ood") == 2
    assert value(found, "syntra_refusals_total", capsule=PLAIN, reason="budget") == 1
    assert value(found, "syntra_rpc_total", method=decide, code="OK") == 2
    assert value(found, "syntra_rpc_total", method=decide, code="INVALID_ARGUMENT") == 1
    assert value(found, "syntra_rpc_duration_seconds_count", method=decide) == 3
    assert value(found, "syntra_rpc_duration_seconds_sum", method=decide) == pytest.approx(0.30012)
    assert value(found, "syntra_rpc_duration_seconds_bucket", method=decide, le="5e-05") == 1
    assert value(found, "syntra_rpc_duration_seconds_bucket", method=decide, le="0.0001") == 2
    assert value(found, "syntra_rpc_duration_seconds_bucket", method=decide, le="0.25") == 2
    assert value(found, "syntra_rpc_duration_seconds_bucket", method=decide, le="0.5") == 3
    assert value(found, "syntra_rate_limited_total") == 1
    assert value(found, "syntra_auth_failures_total", reason="expired") == 1


def test_forget_capsule_drops_its_series():
    metrics = Metrics()
    metrics.decided(PLAIN)
    metrics.fed_back(PLAIN)
    metrics.refused(PLAIN, "ood")
    metrics.decided(LEARNING)
    metrics.forget_capsule(PLAIN)
    metrics.forget_capsule("tenants/a/jobs/b/capsules/never-seen")
    text = metrics.exposition()[0].decode()
    assert PLAIN not in text and LEARNING in text
    metrics.decided(PLAIN)  # a reinstalled capsule counts from zero
    assert value(samples(metrics.exposition()[0].decode()), "syntra_decisions_total", capsule=PLAIN) == 1


def test_counting_is_cheap():
    metrics = Metrics()
    rounds = 20000
    started = time.perf_counter()
    for _ in range(rounds):
        metrics.decided(PLAIN)
    per_call = (time.perf_counter() - started) / rounds
    assert per_call < 10e-6, f"{per_call * 1e6:.2f} us per decided()"


# --- live engine state -------------------------------------------------------------------


def test_scrape_of_a_durable_engine(ops, engine):
    server, metrics, _, _ = ops
    plain = engine.install(PLAIN, options=["a", "b"])
    learning = engine.install(LEARNING, options=["x", "y", "z"], learning={})
    for i in range(12):
        decision = plain.decide()
        metrics.decided(PLAIN)
        if i % 2:
            plain.feedback(decision.decision_id, 1.0)
            metrics.fed_back(PLAIN)
    for _ in range(5):
        decision = learning.decide()
        metrics.decided(LEARNING)
        learning.feedback(decision.decision_id, 0.0)
        metrics.fed_back(LEARNING)
    learning.decide()

    # The engine keeps no public handle on its log; the test reads the one it writes.
    wal = engine._store.wal
    wal.flush()
    before = wal.stats
    status, _, body = get(server.port, "/metrics")
    assert status == 200
    assert wal.stats == before, "something wrote to the WAL during the scrape"
    found = samples(body)

    assert value(found, "syntra_decisions_total", capsule=PLAIN) == 12
    assert value(found, "syntra_feedback_total", capsule=PLAIN) == 6
    assert value(found, "syntra_decisions_total", capsule=LEARNING) == 5

    # The WAL histograms agree with the WAL's own counters.
    assert before.syncs > 0 and before.batches > 0
    assert value(found, "syntra_wal_batch_records_count") == before.batches
    assert value(found, "syntra_wal_batch_records_sum") == before.records
    assert value(found, "syntra_wal_batch_records_bucket", le="+Inf") == before.batches
    assert value(found, "syntra_wal_fsync_seconds_count") == before.syncs
    assert value(found, "syntra_wal_fsync_seconds_bucket", le="+Inf") == before.syncs
    assert 0 < value(found, "syntra_wal_fsync_seconds_sum") < 60

    # Lifecycle: one state each, at 1.
    assert value(found, "syntra_capsule_lifecycle", capsule=PLAIN, state="active") == 1
    assert value(found, "syntra_capsule_lifecycle", capsule=PLAIN, state="warmup") == 0
    assert value(found, "syntra_capsule_lifecycle", capsule=LEARNING, state="warmup") == 1
    assert value(found, "syntra_capsule_lifecycle", capsule=LEARNING, state="frozen") == 0
    assert value(found, "syntra_capsule_decisions", capsule=PLAIN) == 12
    assert value(found, "syntra_capsule_pending", capsule=PLAIN) == 6
    assert value(found, "syntra_capsule_decisions", capsule=LEARNING) == 6
    assert value(found, "syntra_capsule_pending", capsule=LEARNING) == 1

    # Meta-bandit shares: each candidate of the learning capsule, summing to one.
    candidates = learning.report()["candidates"]
    assert len(candidates) > 1
    shares = {c: value(found, "syntra_meta_share", capsule=LEARNING, candidate=c) for c in candidates}
    assert shares == pytest.approx({c: entry["share"] for c, entry in candidates.items()})
    assert sum(shares.values()) == pytest.approx(1.0)
    assert value(found, "syntra_meta_share", capsule=PLAIN, candidate="thompson") == 1.0

    # Freezing shows at the next scrape; uninstalling drops the capsule's live series.
    plain.freeze()
    engine.uninstall(LEARNING)
    found = samples(get(server.port, "/metrics")[2])
    assert value(found, "syntra_capsule_lifecycle", capsule=PLAIN, state="frozen") == 1
    assert value(found, "syntra_capsule_lifecycle", capsule=PLAIN, state="active") == 0
    assert not any(dict(labels).get("capsule") == LEARNING and name.startswith("syntra_capsule")
                   for name, labels in found)


def test_no_engine_means_counters_only(ops):
    server, metrics, _, current = ops
    current["engine"] = None  # recovering
    metrics.decided(PLAIN)
    status, _, body = get(server.port, "/metrics")
    assert status == 200
    assert "syntra_decisions_total" in body
    assert "syntra_wal_" not in body and "syntra_capsule_lifecycle{" not in body


def test_an_in_memory_engine_has_no_wal_series():
    engine = Engine.memory()
    engine.install(PLAIN, options=["a", "b"]).decide()
    found = samples(Metrics(lambda: engine).exposition()[0].decode())
    assert value(found, "syntra_capsule_decisions", capsule=PLAIN) == 1
    assert not any(name.startswith("syntra_wal_") for name, _ in found)


# --- the WAL's own histograms ------------------------------------------------------------


def test_wal_histograms_count_each_sync_and_batch(tmp_path):
    # Tiny segments: rotations add syncs beyond one per batch.
    with Wal.open(tmp_path / "wal", segment_bytes=400) as wal:
        for _ in range(30):
            wal.append(1, b"x" * 40)
        tickets = [wal.submit(2, b"y") for _ in range(200)]
        tickets[-1].wait()
        stats, histograms = wal.stats, wal.histograms
    bounds, cumulative, total = histograms["batch_records"]
    assert bounds[0] == 1 and bounds[-1] == float("inf") and len(bounds) == len(cumulative)
    assert list(cumulative) == sorted(cumulative)
    assert cumulative[-1] == stats.batches and total == stats.records == 230
    assert cumulative[0] >= 30  # every append went alone
    bounds, cumulative, total = histograms["fsync_seconds"]
    assert stats.syncs > stats.batches  # rotations synced too
    assert cumulative[-1] == stats.syncs and list(cumulative) == sorted(cumulative)
    assert 0 < total < 60
    assert bounds[0] == pytest.approx(25e-6) and bounds[-2] == pytest.approx(2.5)


def test_wal_histograms_without_fsync(tmp_path):
    with Wal.open(tmp_path / "wal", durability="none", max_batch_records=3) as wal:
        tickets = [wal.submit(1, b"z") for _ in range(10)]
        tickets[-1].wait()
        histograms = wal.histograms
        stats = wal.stats
    _, fsyncs, fsync_total = histograms["fsync_seconds"]
    assert fsyncs[-1] == 0 and fsync_total == 0
    bounds, batches, total = histograms["batch_records"]
    assert total == 10 and batches[-1] == stats.batches >= 4  # at most 3 a batch
    assert batches[bounds.index(4.0)] == batches[-1]  # none above 3


# --- JSON logs ---------------------------------------------------------------------------


@pytest.fixture
def log_output():
    out = io.StringIO()
    jsonlog.configure(out, "INFO")
    try:
        yield out
    finally:
        jsonlog.unconfigure()


def lines(out):
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_the_request_id_and_fields(log_output):
    log = logging.getLogger("syntra.server.test")
    log.info("outside")
    with jsonlog.request_scope() as rid:
        log.warning("decided %s", "a", extra={"fields": {"capsule": PLAIN, "latency_us": 41, "msg": "clash"}})
        log.debug("not at INFO")
    token = jsonlog.set_request_id("fixed-id")
    try:
        log.error("explicit")
    finally:
        jsonlog.request_id.reset(token)
    first, second, third = lines(log_output)
    assert "request_id" not in first and first["msg"] == "outside" and first["level"] == "INFO"
    assert len(rid) == 16 and int(rid, 16) >= 0
    assert second["request_id"] == rid and second["msg"] == "decided a"
    assert (second["capsule"], second["latency_us"], second["field_msg"]) == (PLAIN, 41, "clash")
    assert second["logger"] == "syntra.server.test" and second["level"] == "WARNING"
    assert second["ts"].endswith("+00:00")
    assert third["request_id"] == "fixed-id"


def test_request_ids_do_not_leak_across_threads(log_output):
    log = logging.getLogger("syntra.server.test")
    with jsonlog.request_scope("main-request"):
        worker = threading.Thread(target=log.info, args=("from a worker",))
        worker.start()
        worker.join()
        log.info("from main")
    by_msg = {line["msg"]: line for line in lines(log_output)}
    assert "request_id" not in by_msg["from a worker"]
    assert by_msg["from main"]["request_id"] == "main-request"


def test_exceptions_and_odd_values_stay_valid_json(log_output):
    log = logging.getLogger("syntra")
    try:
        raise ValueError("bad reward")
    except ValueError:
        log.exception("feedback failed", extra={"fields": {"raw": b"\x00\xff", "when": object()}})
    (line,) = lines(log_output)
    assert "ValueError: bad reward" in line["exc"] and line["level"] == "ERROR"
    assert line["raw"] == repr(b"\x00\xff")


def test_token_secrets_are_scrubbed(log_output):
    secret = "syn_0123456789abcdef_" + "Q" * 43
    logging.getLogger("syntra").warning("client sent %s", secret, extra={"fields": {"meta": {"auth": secret}}})
    text = log_output.getvalue()
    assert "Q" * 43 not in text
    assert "syn_0123456789abcdef_[redacted]" in json.loads(text)["msg"]


def test_configure_twice_writes_each_record_once_and_unconfigure_restores():
    logger = logging.getLogger("syntra")
    level, propagate = logger.level, logger.propagate
    first, second = io.StringIO(), io.StringIO()
    jsonlog.configure(first)
    jsonlog.configure(second, "debug")
    try:
        logger.debug("once")
        assert first.getvalue() == "" and len(lines(second)) == 1
        assert not logger.propagate
    finally:
        jsonlog.unconfigure()
    assert (logger.level, logger.propagate) == (level, propagate)
    assert not any(isinstance(h.formatter, jsonlog.JsonFormatter) for h in logger.handlers)


def test_configure_rejects_an_unknown_level():
    with pytest.raises(ValueError, match="LOUD"):
        jsonlog.configure(io.StringIO(), "LOUD")


def test_redact_drops_credentials():
    metadata = (
        ("authorization", "Bearer syn_0123456789abcdef_" + "Q" * 43),
        ("Cookie", "session=1"),
        ("x-request-id", "abc"),
        ("trace-bin", b"\x01\x02\x03"),
        ("x-request-id", "def"),
    )
    assert jsonlog.redact(metadata) == {
        "authorization": "[redacted]",
        "cookie": "[redacted]",
        "x-request-id": ["abc", "def"],
        "trace-bin": "<3 bytes>",
    }
    assert jsonlog.redact({"Authorization": "k" * 40}) == {"authorization": "[redacted]"}
