"""examples/retry-tuning/retry_client.py against a real ``syntra serve`` and a local HTTP
server: calls come back as requests' own responses and exceptions, retries really happen as
the policy says, feedback lands, the capsule learns to retry a flaky endpoint and not a dead
one, and a Syntra that goes down never fails a call."""

from __future__ import annotations

import doctest
import importlib.util
import io
import logging
import random
import socket
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

import lycan
from syntra.cli_api import read_capsule_spec
from syntra.client import Client
from syntra.errors import InvalidArgument
from tests.grpc_server import ServerProcess

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "retry-tuning"
JOB = "tenants/acme/jobs/http"
CAPSULE = f"{JOB}/capsules/retry-tuning"
FLAKY_FAILURE_RATE = 0.5


def _load_retry_client():
    # The example lives in a directory whose name is no package name.
    spec = importlib.util.spec_from_file_location("retry_client", EXAMPLE / "retry_client.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


retry_client = _load_retry_client()
RetryClient = retry_client.RetryClient


# --- a local HTTP dependency ------------------------------------------------------------------

def flaky_answers(path: str):
    """The statuses /flaky... answers at ``path``, in order: its own seeded generator, so a
    test can replay it."""
    rng = random.Random(path)
    while True:
        yield 503 if rng.random() < FLAKY_FAILURE_RATE else 200


class Dependency(ThreadingHTTPServer):
    """/ok... always answers 200, /down... always 503, /flaky... 503 half the time
    (deterministic per path); it counts the attempts each path received."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.flaky: dict[str, object] = {}

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def status_for(self, path: str) -> int:
        with self.lock:
            self.attempts[path] += 1
            if path.startswith("/ok"):
                return 200
            if path.startswith("/down"):
                return 503
            if path.startswith("/flaky"):
                return next(self.flaky.setdefault(path, flaky_answers(path)))
            return 404


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive: requests reuses its connections
    disable_nagle_algorithm = True   # headers and body go in two writes: no 40 ms wait for an ACK

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        status = self.server.status_for(path)
        body = f"{status} {path}".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def dependency():
    server = Dependency()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/nobody"


# --- Syntra -----------------------------------------------------------------------------------

def install_capsule(client: Client) -> str:
    yaml_spec, policy = read_capsule_spec(EXAMPLE / "capsule.yaml")
    return client.install_capsule(JOB, yaml_spec=yaml_spec, policy=policy)["name"]


@pytest.fixture(scope="module")
def syntra_server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("retry") / "data", durability="none") as process:
        yield process


@pytest.fixture(scope="module")
def syntra(syntra_server):
    with Client(syntra_server.address, token=syntra_server.admin_key, timeout=10) as client:
        assert install_capsule(client) == CAPSULE
        yield client


def pulls(client: Client, endpoint: str) -> dict[str, int]:
    return client.report(CAPSULE)["contexts"][endpoint]["pulls"]


# --- the policy table and endpoints, without servers ------------------------------------------

def test_the_local_policy_table_is_the_programs():
    program = lycan.load(lycan.compile_bytes((EXAMPLE / "program.lycs").read_text(encoding="utf-8")))
    # Halves on both sides of even numbers: the program rounds half to even.
    for failure_rate in (0.0, 0.05, 0.15, 0.25, 0.35, 0.5, 0.99, 1.0):
        for p99_ms in (0.0, 2.5, 3.5, 249, 251, 1000):
            given = {"endpoint": "e", "failure_rate": failure_rate, "p99_ms": p99_ms}
            for index, option in enumerate(retry_client.OPTIONS):
                value = lycan.run(program, given, chooser=lambda node, index=index: index).value
                policy = retry_client.retry_policy(option, failure_rate, p99_ms)
                assert (policy.attempts, policy.base_delay_ms, policy.multiplier) == tuple(value), (option, given)
    assert retry_client.retry_policy("fixed_3x", 0.1, 3.5) == retry_client.RetryPolicy(3, 4, 1)
    with pytest.raises(InvalidArgument) as raised:
        retry_client.retry_policy("hedged", 0.1, 10)
    assert raised.value.field == "option"


def test_the_docstring_examples_run():
    result = doctest.testmod(retry_client, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0


def test_policy_values_out_of_bounds_are_no_policy():
    from_value = retry_client.RetryPolicy.from_value
    assert from_value([4.0, 125.0, 2.0]) == retry_client.RetryPolicy(4, 125.0, 2.0)
    for bad in (None, [1, 0], [1, 0, 1, 0], [0, 0, 1], [11, 0, 1], [2.5, 0, 1], [2, -1, 1], [2, 0, -1],
                [2, float("nan"), 1], [True, 0, 1], ["3", 0, 1], {"attempts": 3}):
        assert from_value(bad) is None, bad
    huge = retry_client.RetryPolicy(10, 1e9, 10)
    assert huge.delay_before(9) == retry_client.MAX_DELAY_SECONDS


def test_endpoints():
    endpoint_of = retry_client.endpoint_of
    assert endpoint_of("HTTPS://u:secret@Api.Example.com/v1/items?x=1#f") == "https://api.example.com/v1/items"
    assert endpoint_of("http://[::1]:8080") == "http://[::1]:8080/"
    long = endpoint_of("http://h/" + "a" * 400)
    assert len(long) == retry_client.MAX_CONTEXT_KEY and long.startswith("http://h/aaa")
    assert endpoint_of(long) == long
    assert long != endpoint_of("http://h/" + "a" * 401)


@pytest.mark.parametrize(("arguments", "field"), [
    ({"capsule": ""}, "capsule"),
    ({"session": object()}, "session"),
    ({"window": 0}, "window"),
    ({"window": True}, "window"),
    ({"deadline": 0}, "deadline"),
    ({"deadline": float("inf")}, "deadline"),
    ({"fallback": "hedged"}, "fallback"),
    ({"default_p99_ms": -1}, "default_p99_ms"),
    ({"down_after": 0}, "down_after"),
])
def test_bad_arguments_are_refused_by_name(arguments, field):
    with Client("127.0.0.1:9") as client:   # never called: a channel connects lazily
        arguments = {"capsule": CAPSULE, **arguments}
        with pytest.raises(InvalidArgument) as raised:
            RetryClient(client, arguments.pop("capsule"), **arguments)
        assert raised.value.field == field
    with pytest.raises(InvalidArgument) as raised:
        RetryClient("127.0.0.1:7443", CAPSULE)
    assert raised.value.field == "syntra"


# --- against a real Syntra ----------------------------------------------------------------------

def test_a_bad_request_raises_as_requests_does_and_decides_nothing(syntra, dependency):
    decisions = syntra.get_capsule(CAPSULE)["decisions"]
    with RetryClient(syntra, CAPSULE) as http:
        with pytest.raises(requests.exceptions.MissingSchema):
            http.get("127.0.0.1/ok")
        with pytest.raises(requests.exceptions.InvalidURL):
            http.get("http://")
        with pytest.raises(InvalidArgument) as raised:
            http.request(None, dependency.url("/ok"))
        assert raised.value.field == "method"
    assert syntra.get_capsule(CAPSULE)["decisions"] == decisions


def test_calls_answer_like_requests_and_report_each_outcome(syntra, dependency):
    ok, down, dead = dependency.url("/ok/plain"), dependency.url("/down/plain"), closed_port_url()
    with RetryClient(syntra, CAPSULE, default_p99_ms=5) as http:
        response = http.get(ok, params={"q": "1"})
        assert type(response) is requests.Response
        assert response.status_code == 200 and response.text == "200 /ok/plain"
        assert response.request.url == ok + "?q=1"
        assert http.post(ok, json={"a": 1}).status_code == 200
        assert http.put(ok, data=b"x").status_code == 200
        assert http.patch(ok, data="y").status_code == 200
        assert http.delete(ok).status_code == 200
        head = http.head(ok)
        assert head.status_code == 200 and head.text == ""

        answered = http.get(down)   # 503 is an answer: returned, not raised, as requests does
        assert type(answered) is requests.Response and answered.status_code == 503
        with pytest.raises(requests.ConnectionError):
            http.get(dead, timeout=2)
        # A body that cannot be sent twice goes once, without a decision.
        decisions = syntra.get_capsule(CAPSULE)["decisions"]
        assert http.post(dependency.url("/down/stream"), data=io.BytesIO(b"once")).status_code == 503
        assert dependency.attempts["/down/stream"] == 1
        assert syntra.get_capsule(CAPSULE)["decisions"] == decisions

        assert http.stats(ok).samples == 6 and http.stats(ok).failure_rate == 0.0
        assert http.stats(down).failure_rate == 1.0 and http.stats(down).p99_ms == 5
        assert http.stats(dead).samples == http.stats(dead).failure_streak >= 1

    assert dependency.attempts["/ok/plain"] == 6
    assert syntra.get_capsule(CAPSULE)["pending"] == 0   # every decision got its feedback
    assert sum(pulls(syntra, retry_client.endpoint_of(ok)).values()) == 6
    assert sum(pulls(syntra, retry_client.endpoint_of(down)).values()) == 1
    assert sum(pulls(syntra, retry_client.endpoint_of(dead)).values()) == 1


def test_the_capsule_learns_to_retry_flaky_and_not_dead_endpoints(syntra, dependency):
    calls = 300
    flaky, down, ok = dependency.url("/flaky"), dependency.url("/down"), dependency.url("/ok")
    statuses: dict[str, Counter[int]] = {url: Counter() for url in (flaky, down, ok)}
    started = time.monotonic()
    # Delays scale with p99: local calls take about a millisecond, a dead endpoint (no
    # successes, so the default p99) waits 10 ms for fixed_3x and 5+10+...+80 for backoff.
    with RetryClient(syntra, CAPSULE, deadline=0.25, default_p99_ms=10) as http:
        for _ in range(calls):
            for url, counts in statuses.items():
                counts[http.get(url).status_code] += 1
    elapsed = time.monotonic() - started

    assert statuses[ok] == {200: calls} and statuses[down] == {503: calls}
    assert statuses[flaky][200] > 0.9 * calls   # a single try would succeed half the time
    assert dependency.attempts["/ok"] == calls
    assert dependency.attempts["/flaky"] > 1.3 * calls   # retries really happened
    assert dependency.attempts["/down"] > calls

    assert syntra.get_capsule(CAPSULE)["pending"] == 0
    learned = {url: pulls(syntra, retry_client.endpoint_of(url)) for url in statuses}
    assert all(sum(counts.values()) == calls for counts in learned.values()), learned
    assert max(learned[flaky], key=learned[flaky].get) in ("fixed_3x", "exponential_backoff"), learned
    assert max(learned[down], key=learned[down].get) == "no_retry", learned
    assert learned[down]["no_retry"] > 0.7 * calls, learned
    assert elapsed < 40, elapsed


def test_threads_share_one_client(syntra, dependency):
    url = dependency.url("/ok/threads")
    threads, per_thread = 4, 20
    statuses: list[int] = []
    errors: list[BaseException] = []
    with RetryClient(syntra, CAPSULE, window=1000) as http:
        def work():
            try:
                for _ in range(per_thread):
                    statuses.append(http.get(url).status_code)
            except BaseException as error:  # noqa: BLE001  reported below
                errors.append(error)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        assert not errors
        assert statuses == [200] * threads * per_thread
        assert http.stats(url).samples == threads * per_thread
    assert dependency.attempts["/ok/threads"] == threads * per_thread
    assert sum(pulls(syntra, retry_client.endpoint_of(url)).values()) == threads * per_thread


# --- Syntra going down ------------------------------------------------------------------------

def test_syntra_going_down_never_fails_a_call(tmp_path, dependency, caplog):
    caplog.set_level(logging.WARNING, logger="retry_client")
    with ServerProcess(tmp_path / "data", durability="none") as server, \
            Client(server.address, token=server.admin_key, timeout=2, retries=0) as client:
        install_capsule(client)
        p99_ms = 30
        with RetryClient(client, CAPSULE, fallback="fixed_3x", default_p99_ms=p99_ms) as http:
            # Decided while Syntra is up; it is gone before the outcome can be reported.
            def stop_syntra(response, **kwargs):
                server.terminate()   # returns None: a hook's value would replace the response

            assert http.get(dependency.url("/ok/last"), hooks={"response": stop_syntra}).status_code == 200
            assert server.process.poll() is not None
            assert any("feedback on decision" in record.getMessage() for record in caplog.records)
            caplog.clear()

            # Now every call runs the fallback's policy: fixed_3x waits one p99 between tries.
            started = time.monotonic()
            assert http.get(dependency.url("/down/fallback")).status_code == 503
            assert time.monotonic() - started >= 2 * p99_ms / 1000
            assert dependency.attempts["/down/fallback"] == 3

            dead = closed_port_url()
            with pytest.raises(requests.ConnectionError):
                http.get(dead)
            assert http.stats(dead).samples == 3

            calls = 40
            flaky = dependency.url("/flaky/fallback")
            statuses = Counter(http.get(flaky).status_code for _ in range(calls))
            answers = flaky_answers("/flaky/fallback")
            expected_attempts, expected_statuses = 0, Counter()
            for _ in range(calls):   # the seeded answers, replayed: up to 3 tries each
                for tries in range(1, 4):
                    status = next(answers)
                    if status == 200 or tries == 3:
                        break
                expected_attempts += tries
                expected_statuses[status] += 1
            assert dependency.attempts["/flaky/fallback"] == expected_attempts
            assert statuses == expected_statuses
            assert not caplog.records   # fallback decisions report nothing, so nothing failed
