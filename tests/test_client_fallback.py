"""syntra.client when the service fails: down, slow, refusing, broken, or losing replies.

The faults are real: a port nothing listens on, a TCP proxy between client and server
that stalls or cuts the server's replies, servers that refuse (scopes, bogus tokens, a
rate limit), and a tiny gRPC server standing in for a broken peer. With ``fallback=`` the
caller gets its fallback option and no exception; retries reach a server that came up
late, and a retried feedback whose first reply was lost counts once, as a success.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent import futures

import grpc
import pytest

from syntra.client import AsyncClient, Client, SyntraRpcError
from syntra.v1 import decision_pb2, decision_pb2_grpc
from tests.grpc_server import ServerProcess

JOB = "tenants/acme/jobs/app"
CAPSULE = f"{JOB}/capsules/button"
# Each test's client gets its own connection, so a fault injected on one cannot leak.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
HTTP2_FRAME_HEADER = 9


class FaultyProxy:
    """A TCP proxy from 127.0.0.1 to ``upstream`` that fails like a network can.

    Each new connection takes the next fault from ``faults`` (then plain forwarding):
    ``"stall"`` forwards everything but the server's replies (HTTP/2 frames on a stream:
    the call hangs until its deadline), ``"cut"`` drops the connection as the server's
    first reply arrives (the server did the work; the client never hears of it).
    """

    def __init__(self, upstream: str, faults: tuple[str, ...] = ()):
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.faults = list(faults)
        self.connections = 0
        self.cut = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return   # closed
            with self._lock:
                self.connections += 1
                fault = self.faults.pop(0) if self.faults else "forward"
            upstream = socket.create_connection(self.upstream)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client, fault), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass

    def _replies(self, upstream: socket.socket, client: socket.socket, fault: str) -> None:
        if fault == "forward":
            return self._pipe(upstream, client)
        pending = b""
        try:
            while data := upstream.recv(65536):
                pending += data
                forward = bytearray()
                while len(pending) >= HTTP2_FRAME_HEADER:
                    size = HTTP2_FRAME_HEADER + int.from_bytes(pending[:3], "big")
                    if len(pending) < size:
                        break
                    frame, pending = pending[:size], pending[size:]
                    on_stream = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
                    if on_stream and fault == "cut":
                        client.sendall(forward)
                        self.cut += 1
                        for end in (client, upstream):
                            _hang_up(end)
                        return
                    if not on_stream:   # connection frames (settings, pings) keep it alive
                        forward += frame
                client.sendall(forward)
        except OSError:
            pass

    def close(self) -> None:
        self._listener.close()
        for end in self._sockets:
            _hang_up(end)


def _hang_up(end: socket.socket) -> None:
    # shutdown() ends the connection even while another thread is blocked reading it.
    try:
        end.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    end.close()


def closed_port() -> str:
    """An address nothing listens on: a port bound, then closed."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("fallback") / "data", durability="none") as process:
        with Client(process.address, token=process.admin_key, timeout=10) as admin:
            admin.install_capsule(JOB, "button", options=["blue", "green"], reward={"type": "bernoulli"})
        yield process


@pytest.fixture
def admin(server):
    with Client(server.address, token=server.admin_key, timeout=10, options=OWN_CONNECTION) as made:
        yield made


@pytest.fixture
def proxy_factory(server):
    made: list[FaultyProxy] = []

    def make(*faults: str, upstream: str | None = None) -> FaultyProxy:
        made.append(FaultyProxy(upstream or server.address, faults))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def assert_fell_back(decision, code: str) -> None:
    assert decision.fallback is True and decision.option == "green"
    assert decision.decision_id == "" and decision.propensity == 1.0 and decision.capsule == CAPSULE
    assert decision.error.startswith(f"{code}: "), decision.error


# --- down, slow, refusing -------------------------------------------------------------------

def test_down_service_falls_back_after_its_retries(server):
    with Client(closed_port(), token=server.admin_key, timeout=2, retries=2, options=OWN_CONNECTION) as client:
        started = time.monotonic()
        decision = client.decide(CAPSULE, "home", fallback="green")
        assert time.monotonic() - started < 2
        assert_fell_back(decision, "UNAVAILABLE")
        assert client.feedback(decision, reward=1.0) is False   # nothing to record, nothing sent
        with pytest.raises(SyntraRpcError) as raised:
            client.decide(CAPSULE, "home")
        assert raised.value.code is grpc.StatusCode.UNAVAILABLE


def test_slow_service_falls_back_at_the_deadline(server, admin, proxy_factory):
    proxy = proxy_factory("stall")
    pending = admin.get_capsule(CAPSULE)["pending"]
    with Client(proxy.address, token=server.admin_key, timeout=0.5, options=OWN_CONNECTION) as client:
        started = time.monotonic()
        decision = client.decide(CAPSULE, "home", fallback="green")
        assert 0.5 <= time.monotonic() - started < 3
    assert_fell_back(decision, "DEADLINE_EXCEEDED")
    # The server did decide: only its reply was held back.
    assert admin.get_capsule(CAPSULE)["pending"] == pending + 1


def test_refusing_service_falls_back(server, admin):
    _, read_secret = admin.create_token([f"read:{JOB}"], ttl_seconds=600)
    bogus = "syn_0123456789abcdef_" + "A" * 43
    for token, code in ((read_secret, "PERMISSION_DENIED"), (bogus, "UNAUTHENTICATED"),
                        (server.admin_key, "NOT_FOUND")):
        capsule = CAPSULE if code != "NOT_FOUND" else f"{JOB}/capsules/absent"
        with Client(server.address, token=token, timeout=5, options=OWN_CONNECTION) as client:
            decision = client.decide(capsule, "home", fallback="green")
            assert decision.fallback and decision.option == "green" and decision.error.startswith(code)
            with pytest.raises(SyntraRpcError) as raised:
                client.decide(capsule, "home")
            assert raised.value.code.name == code


def test_rate_limited_service_falls_back_and_says_when_to_retry(tmp_path):
    limit = ("--rate", "0.1", "--burst", "1")   # one decision now, the next in 10 s
    with (ServerProcess(tmp_path / "data", durability="none", args=limit) as limited,
          Client(limited.address, token=limited.admin_key, timeout=5, options=OWN_CONNECTION) as client):
        client.install_capsule(JOB, "button", options=["blue", "green"], reward={"type": "bernoulli"})
        assert client.decide(CAPSULE, "home", fallback="green").fallback is False
        assert_fell_back(client.decide(CAPSULE, "home", fallback="green"), "RESOURCE_EXHAUSTED")
        with pytest.raises(SyntraRpcError) as raised:
            client.decide(CAPSULE, "home")
        assert raised.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert 0 < raised.value.retry_after <= 10.0


def test_bad_requests_raise_even_with_a_fallback(server):
    with (Client(server.address, token=server.admin_key, timeout=5, options=OWN_CONNECTION) as client,
          pytest.raises(SyntraRpcError) as raised):
        client.decide(CAPSULE, "x" * 300, fallback="green")
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "context_key" in raised.value.message


# --- broken peers ---------------------------------------------------------------------------

class EmptyDecisions(decision_pb2_grpc.DecisionServiceServicer):
    """A peer that answers every Decide with an empty Decision: no option, no id."""

    def Decide(self, request, context):
        return decision_pb2.Decision()


def garbage_decisions(server: grpc.Server) -> None:
    """A peer whose Decide answers are bytes that are no Decision at all."""
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: b"\xff\xff\xff\xff",
                                                  request_deserializer=None, response_serializer=None)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "syntra.v1.DecisionService", {"Decide": handler}),))


@pytest.fixture
def broken_peer():
    """Start a broken peer (a function that adds its handlers to a grpc.Server)."""
    servers: list[grpc.Server] = []

    def start(add_handlers) -> str:
        peer = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        add_handlers(peer)
        port = peer.add_insecure_port("127.0.0.1:0")
        peer.start()
        servers.append(peer)
        return f"127.0.0.1:{port}"

    yield start
    for peer in servers:
        peer.stop(grace=None)


def test_malformed_answers_fall_back(broken_peer):
    empty = broken_peer(lambda peer: decision_pb2_grpc.add_DecisionServiceServicer_to_server(EmptyDecisions(), peer))
    garbage = broken_peer(garbage_decisions)
    for address in (empty, garbage):
        with Client(address, timeout=5, options=OWN_CONNECTION) as client:
            decision = client.decide(CAPSULE, "home", fallback="green")
            assert_fell_back(decision, "INTERNAL")
            assert client.feedback(decision, reward=1.0) is False
            with pytest.raises(SyntraRpcError) as raised:
                client.decide(CAPSULE, "home")
            assert raised.value.code is grpc.StatusCode.INTERNAL
    with Client(empty, timeout=5) as client:
        assert "no option" in client.decide(CAPSULE, "home", fallback="green").error


def test_async_client_falls_back_too(server, proxy_factory, broken_peer):
    stalled = proxy_factory("stall")
    empty = broken_peer(lambda peer: decision_pb2_grpc.add_DecisionServiceServicer_to_server(EmptyDecisions(), peer))

    async def scenario():
        for address, timeout, code in ((closed_port(), 2, "UNAVAILABLE"), (stalled.address, 0.5, "DEADLINE_EXCEEDED"),
                                       (empty, 5, "INTERNAL")):
            async with AsyncClient(address, token=server.admin_key, timeout=timeout, options=OWN_CONNECTION) as client:
                decision = await client.decide(CAPSULE, "home", fallback="green")
                assert_fell_back(decision, code)
                assert await client.feedback(decision, reward=1.0) is False
        async with AsyncClient(server.address, token="syn_0123456789abcdef_" + "B" * 43,
                               options=OWN_CONNECTION) as client:
            assert_fell_back(await client.decide(CAPSULE, "home", fallback="green"), "UNAUTHENTICATED")

    asyncio.run(scenario())


# --- retries --------------------------------------------------------------------------------

def test_a_call_reaches_a_server_that_starts_after_its_first_attempt(tmp_path):
    admin_key = "test-admin-" + "k" * 48
    answers: list = []
    with socket.create_server(("127.0.0.1", 0)) as reserved:
        address = f"127.0.0.1:{reserved.getsockname()[1]}"
        # Backoff 1, 2, 4, 8 s: room for a server that starts slowly on a loaded machine.
        with Client(address, token=admin_key, timeout=60, retries=4, initial_backoff=1.0, max_backoff=10.0,
                    options=OWN_CONNECTION) as client:
            caller = threading.Thread(target=lambda: answers.append(_capture(client.list_capsules)), daemon=True)
            caller.start()
            # The first attempt connects to the reserved port, where nobody speaks gRPC.
            reserved.settimeout(10)
            first_attempt, _ = reserved.accept()
            first_attempt.close()
            reserved.close()
            assert answers == []
            with ServerProcess(tmp_path / "data", durability="none", admin_key=admin_key,
                               args=("--listen", address)):
                caller.join(60)
    assert answers == [[]], answers   # the call succeeded: an empty store has no capsules


def _capture(function):
    try:
        return function()
    except Exception as exc:  # noqa: BLE001  the test asserts on it
        return exc


def feedback_records(admin: Client, decisions) -> list[str]:
    """The decision ids of the log's feedback records for ``decisions``, one per record."""
    wanted = {d.decision_id for d in decisions}
    return sorted(e["body"]["decision_id"] for e in admin.read_log(CAPSULE, kinds=["feedback"])
                  if e["body"]["decision_id"] in wanted)


def test_a_retried_feedback_whose_reply_was_lost_counts_once(server, admin, proxy_factory):
    proxy = proxy_factory("cut")
    decision = admin.decide(CAPSULE, "lost-reply")
    with Client(proxy.address, token=server.admin_key, timeout=10, options=OWN_CONNECTION) as client:
        assert client.feedback(decision, reward=1.0) is True
    assert proxy.cut == 1 and proxy.connections == 2
    assert feedback_records(admin, [decision]) == [decision.decision_id]
    with pytest.raises(SyntraRpcError) as raised:   # a fresh attempt: a real duplicate
        admin.feedback(decision, reward=1.0)
    assert raised.value.code is grpc.StatusCode.ALREADY_EXISTS


def test_a_retried_feedback_batch_whose_reply_was_lost_counts_once(server, admin, proxy_factory):
    proxy = proxy_factory("cut")
    decisions = admin.decide_batch(CAPSULE, [{"context_key": "lost-batch"}] * 3)

    async def scenario():
        async with AsyncClient(proxy.address, token=server.admin_key, timeout=10, options=OWN_CONNECTION) as client:
            return await client.feedback_batch(CAPSULE, [{"decision_id": d.decision_id, "reward": 0.0}
                                                         for d in decisions])

    assert asyncio.run(scenario()) == [None, None, None]
    assert proxy.cut == 1 and proxy.connections == 2
    assert feedback_records(admin, decisions) == sorted(d.decision_id for d in decisions)
