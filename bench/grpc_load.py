"""gRPC load generator for the decision service, and the bare grpcio echo server it is
compared against.

Three processes take part in a measurement, so none steals the others' event loop:

* ``syntra serve`` (``tests/grpc_server.py``'s :class:`ServerProcess`);
* the echo server (:class:`EchoServerProcess`): grpc.aio with one generic handler that
  returns the request bytes, the least a Python gRPC server can do per call;
* the client (:class:`LoadClient`): a grpc.aio channel driven by asyncio, run as a
  subprocess that takes one :class:`Load` per line of JSON on stdin and answers with the
  counts it measured.

The client sends identical bytes to both servers (a serialized ``DecideRequest`` on the
``Decide`` method path, with the same bearer token), so the echo run measures exactly the
client and transport cost that a ``Decide`` call also pays.

Run the whole comparison (the figures quoted in the closing notes)::

    .venv/bin/python -m bench.grpc_load measure --seconds 6 --repeat 3

Each side's line gives its rate, p50/p99 latency, the CPU the server and the client
spent per call (on a shared machine: a slow server or a starved one?) and, for Syntra,
the WAL's records per group commit, mean fsync and segments sealed meanwhile.

Where a server spends its time::

    .venv/bin/python -m bench.grpc_load profile-server --kind unary --seconds 6
    .venv/bin/python -m bench.grpc_load profile-server --kind stream --preload 800000

runs ``syntra serve`` in-process under the load, samples every thread's stack (the
WAL flusher, the log writer and the checkpointer too) and cProfiles the event loop
thread. ``echo-server`` and ``client`` are what the benchmark starts.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Self

import grpc

ROOT = Path(__file__).resolve().parents[1]
DECIDE = "/syntra.v1.DecisionService/Decide"
DECIDE_BATCH = "/syntra.v1.DecisionService/DecideBatch"
DECIDE_STREAM = "/syntra.v1.DecisionService/DecideStream"
# The echo server answers this one with how many calls it has echoed (not counting this).
ECHO_COUNT = "/syntra.bench.Echo/Count"
KINDS = ("unary", "batch", "stream")
MAX_BATCH = 10_000   # the server's limit per DecideBatch / DecideStream message
READY_PREFIX = "listening on "
START_TIMEOUT = 60.0
BENCH_PARENT = "tenants/bench/jobs/grpc"
PLAIN_OPTIONS = ("a", "b", "c")


class LoadError(RuntimeError):
    """A measured call failed: ``code`` is the gRPC status code's name (for a failed
    item of a batch, the item's code), ``message`` what the server said."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class Load:
    """One measured run of the client.

    ``kind`` is ``unary`` (``Decide``, one decision per call), ``batch`` (``DecideBatch``
    of ``batch`` requests per call) or ``stream`` (one ``DecideStream`` whose messages
    carry ``batch`` requests each). ``in_flight`` calls (stream: messages) are outstanding
    at any time. The run makes exactly ``calls`` calls (stream: messages) or, with
    ``seconds``, as many as fit in that time. ``echo`` says the server is the echo server,
    so a reply must equal its request. Latencies accumulate under ``tag`` until read with
    :meth:`LoadClient.latency`.
    """

    address: str
    kind: str = "unary"
    capsule: str = ""
    token: str = ""
    calls: int = 0
    seconds: float = 0.0
    in_flight: int = 16
    batch: int = 1000
    echo: bool = False
    tag: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.address:
            raise ValueError("address is required (HOST:PORT)")
        if (self.calls > 0) == (self.seconds > 0) or self.calls < 0 or self.seconds < 0:
            raise ValueError(f"give exactly one of calls > 0 or seconds > 0, got calls={self.calls!r}, "
                             f"seconds={self.seconds!r}")
        if self.in_flight < 1:
            raise ValueError(f"in_flight must be >= 1, got {self.in_flight!r}")
        if not 1 <= self.batch <= MAX_BATCH:
            raise ValueError(f"batch must be in 1..{MAX_BATCH}, got {self.batch!r}")
        if self.echo and self.kind != "unary":
            raise ValueError(f"echo applies to kind 'unary' only, got kind {self.kind!r}")


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What one run did: calls completed (stream: messages answered), decisions received,
    and the seconds from the first call sent to the last answer."""

    calls: int
    decisions: int
    seconds: float

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds

    @property
    def decisions_per_second(self) -> float:
        return self.decisions / self.seconds


# --- the echo server ----------------------------------------------------------------------


class _EchoHandler(grpc.GenericRpcHandler):
    """Every unary method returns its request bytes (no (de)serialization at all)."""

    def __init__(self):
        self.calls = 0
        self._echo = grpc.unary_unary_rpc_method_handler(self._echo_call)
        self._count = grpc.unary_unary_rpc_method_handler(self._count_call)

    def service(self, handler_call_details):
        return self._count if handler_call_details.method == ECHO_COUNT else self._echo

    async def _echo_call(self, request: bytes, context) -> bytes:
        self.calls += 1
        return request

    async def _count_call(self, request: bytes, context) -> bytes:
        return str(self.calls).encode()


async def serve_echo(listen: str) -> None:
    """Serve the echo handler on ``listen`` until SIGTERM or SIGINT; print the address."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_EchoHandler(),))
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"{READY_PREFIX}{listen.rpartition(':')[0]}:{port}", flush=True)
    await stop.wait()
    await server.stop(1.0)


def echo_count(address: str) -> int:
    """How many calls the echo server at ``address`` has answered."""
    with grpc.insecure_channel(address) as channel:
        return int(channel.unary_unary(ECHO_COUNT)(b"", timeout=10))


class _Subprocess:
    """A child process of this module, started with ``python -m bench.grpc_load``; stderr
    is kept (``stderr_lines``) to explain a failure, and the process always stops."""

    def __init__(self, *arguments: str):
        self.arguments = arguments
        self.process: subprocess.Popen | None = None
        self.stderr_lines: list[str] = []

    def _spawn(self) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.grpc_load", *self.arguments], cwd=ROOT, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        threading.Thread(target=self._drain, args=(self.process.stderr,), daemon=True).start()
        return self.process

    def _drain(self, stream) -> None:
        for line in stream:
            self.stderr_lines.append(line)

    def _readline(self, timeout: float) -> str:
        """One line of the child's stdout, or "" if none came within ``timeout``."""
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        return result[0] if result else ""

    def _why(self) -> str:
        return "".join(self.stderr_lines[-30:])

    def close(self, timeout: float = 10.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()


class EchoServerProcess(_Subprocess):
    """The echo server in its own process on 127.0.0.1 (a free port): ``.address``."""

    def __init__(self):
        super().__init__("echo-server", "--listen", "127.0.0.1:0")
        self.address = ""

    def start(self) -> EchoServerProcess:
        self._spawn()
        line = self._readline(START_TIMEOUT)
        if not line.startswith(READY_PREFIX):
            self.close()
            raise RuntimeError(f"the echo server did not start: {line!r}\n{self._why()}")
        self.address = line[len(READY_PREFIX):].strip()
        return self

    @property
    def calls(self) -> int:
        return echo_count(self.address)


# --- the client ---------------------------------------------------------------------------


class LoadClient(_Subprocess):
    """The load generator in its own process. :meth:`run` sends one :class:`Load` and
    returns what it measured; connections are kept between runs (one channel per
    address), so later runs measure a warm client."""

    def __init__(self):
        super().__init__("client")
        self._lock = threading.Lock()

    def start(self) -> LoadClient:
        self._spawn()
        return self

    def _ask(self, message: dict, timeout: float) -> dict:
        with self._lock:
            try:
                self.process.stdin.write(json.dumps(message) + "\n")
                self.process.stdin.flush()
            except (BrokenPipeError, OSError):
                raise RuntimeError(f"the load client has exited:\n{self._why()}") from None
            line = self._readline(timeout)
        if not line:
            self.close()   # a late answer would be read as the next one's
            raise RuntimeError(f"the load client did not answer within {timeout:g} s:\n{self._why()}")
        answer = json.loads(line)
        if "error" in answer:
            raise LoadError(answer["error"]["code"], answer["error"]["message"])
        return answer

    def run(self, load: Load, timeout: float = 300.0) -> RunResult:
        """Run ``load``; :class:`LoadError` if any call (or batch item) failed."""
        answer = self._ask({"op": "run", "load": dataclasses.asdict(load)}, timeout + load.seconds)
        return RunResult(answer["calls"], answer["decisions"], answer["seconds"])

    def latency(self, tag: str) -> dict[str, float]:
        """p50/p99 (microseconds) and count of the call latencies gathered under ``tag``
        since the last read, which clears them."""
        return self._ask({"op": "latency", "tag": tag}, 60.0)


def percentile(ordered: list[int], q: float) -> float:
    """The ``q`` quantile of ``ordered`` (sorted ascending), nearest rank."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _decide_request(capsule: str) -> bytes:
    from syntra.v1 import decision_pb2
    return decision_pb2.DecideRequest(capsule=capsule).SerializeToString()


def _batch_request(capsule: str, size: int) -> bytes:
    from syntra.v1 import decision_pb2
    batch = decision_pb2.DecideBatchRequest(capsule=capsule)
    for _ in range(size):
        batch.requests.add()
    return batch.SerializeToString()


def _status_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return f"CODE_{code}"


def _decisions_in(reply: bytes) -> int:
    """The number of decisions in a serialized DecideBatchResponse; a failed item is a
    :class:`LoadError`."""
    from syntra.v1 import decision_pb2
    results = decision_pb2.DecideBatchResponse.FromString(reply).results
    for index, result in enumerate(results):
        if result.WhichOneof("result") != "decision":
            error = result.error
            raise LoadError(_status_name(error.code), f"requests[{index}]: {error.message} ({error.field})")
    return len(results)


class _Runner:
    """The client process's side: one event loop, one channel per address."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.latencies: dict[str, list[int]] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        if address not in self.channels:
            self.channels[address] = grpc.aio.insecure_channel(
                address, options=[("grpc.max_receive_message_length", 64 << 20),
                                  ("grpc.max_send_message_length", 64 << 20)])
        return self.channels[address]

    def run(self, load: Load) -> dict:
        return self.loop.run_until_complete(self._run(load))

    async def _run(self, load: Load) -> dict:
        metadata = (("authorization", f"Bearer {load.token}"),) if load.token else ()
        latencies = self.latencies.setdefault(load.tag, [])
        channel = self.channel(load.address)
        deadline = time.perf_counter() + load.seconds if load.seconds else None
        started = time.perf_counter()
        if load.kind == "stream":
            calls, decisions = await _stream(channel, load, metadata, deadline, latencies)
        else:
            calls, decisions = await _unary(channel, load, metadata, deadline, latencies)
        return {"calls": calls, "decisions": decisions, "seconds": time.perf_counter() - started}

    def latency(self, tag: str) -> dict:
        values = sorted(self.latencies.pop(tag, []))
        if not values:
            return {"count": 0, "p50_us": None, "p99_us": None}
        return {"count": len(values), "p50_us": round(percentile(values, 0.50) / 1e3, 1),
                "p99_us": round(percentile(values, 0.99) / 1e3, 1)}

    def close(self) -> None:
        for channel in self.channels.values():
            self.loop.run_until_complete(channel.close())
        self.loop.close()


async def _unary(channel, load: Load, metadata, deadline, latencies) -> tuple[int, int]:
    """``in_flight`` callers, each calling again as soon as its answer arrives."""
    if load.kind == "unary":
        method, payload = DECIDE, _decide_request(load.capsule)
    else:
        method, payload = DECIDE_BATCH, _batch_request(load.capsule, load.batch)
    call = channel.unary_unary(method)   # bytes in, bytes out: no client-side protobuf work
    check = _check_unary(load, payload)
    remaining = load.calls
    counts = [0, 0]   # calls, decisions

    async def caller():
        nonlocal remaining
        while (remaining > 0) if deadline is None else (time.perf_counter() < deadline):
            remaining -= 1
            sent = time.perf_counter_ns()
            reply = await call(payload, metadata=metadata)
            latencies.append(time.perf_counter_ns() - sent)
            counts[1] += check(reply)
            counts[0] += 1

    await _together(caller() for _ in range(load.in_flight))
    return counts[0], counts[1]


def _check_unary(load: Load, payload: bytes):
    """A function of one reply: the decisions it holds, or LoadError if it is not what
    the server should have sent."""
    if load.echo:
        def echoed(reply: bytes) -> int:
            if reply != payload:
                raise LoadError("DATA_LOSS", f"the echo server returned {len(reply)} bytes that differ from"
                                f" the {len(payload)} sent")
            return 1
        return echoed
    if load.kind == "batch":
        return _decisions_in
    from syntra.v1 import decision_pb2

    def decided(reply: bytes) -> int:
        decision = decision_pb2.Decision.FromString(reply)
        if not decision.decision_id or not decision.option:
            raise LoadError("DATA_LOSS", f"a Decide reply without a decision: {decision}")
        return 1
    return decided


async def _stream(channel, load: Load, metadata, deadline, latencies) -> tuple[int, int]:
    """One DecideStream; the writer keeps ``in_flight`` messages unanswered."""
    call = channel.stream_stream(DECIDE_STREAM)(metadata=metadata)
    payload = _batch_request(load.capsule, load.batch)
    window = asyncio.Semaphore(load.in_flight)
    sent_at: deque[int] = deque()
    counts = [0, 0]

    async def writer():
        written = 0
        while (written < load.calls) if deadline is None else (time.perf_counter() < deadline):
            await window.acquire()
            sent_at.append(time.perf_counter_ns())
            await call.write(payload)
            written += 1
        await call.done_writing()

    async def reader():
        async for reply in call:
            latencies.append(time.perf_counter_ns() - sent_at.popleft())
            window.release()
            counts[1] += _decisions_in(reply)
            counts[0] += 1

    try:
        await _together((writer(), reader()))
    finally:
        call.cancel()   # a no-op once the stream has ended; stops it on failure
    return counts[0], counts[1]


async def _together(coroutines) -> None:
    """Run the coroutines; the first to fail cancels the rest and its error is raised
    (a failed call as :class:`LoadError`)."""
    try:
        async with asyncio.TaskGroup() as group:
            for coroutine in coroutines:
                group.create_task(coroutine)
    except* grpc.aio.AioRpcError as failures:
        first = failures.exceptions[0]
        raise LoadError(first.code().name, first.details() or "") from None
    except* LoadError as failures:
        raise failures.exceptions[0] from None


def client_main() -> int:
    """The client process: one JSON request per stdin line, one JSON answer per line."""
    runner = _Runner()
    try:
        for line in sys.stdin:
            message = json.loads(line)
            try:
                if message["op"] == "run":
                    answer = runner.run(Load(**message["load"]))
                elif message["op"] == "latency":
                    answer = runner.latency(message["tag"])
                else:
                    raise ValueError(f"op must be run or latency, got {message['op']!r}")
            except LoadError as error:
                answer = {"error": {"code": error.code, "message": error.message}}
            except (ValueError, TypeError) as error:
                answer = {"error": {"code": "INVALID_ARGUMENT", "message": str(error)}}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        runner.close()
    return 0


# --- the Syntra side ----------------------------------------------------------------------


def install_plain_capsule(address: str, token: str, capsule_id: str) -> str:
    """Install a plain bandit (options a, b, c; Bernoulli reward) and return its name."""
    from syntra.client import Client
    with Client(address, token=token, timeout=60) as client:
        return client.install_capsule(BENCH_PARENT, capsule_id, options=list(PLAIN_OPTIONS),
                                      reward={"type": "bernoulli"})["name"]


def decisions_made(address: str, token: str, capsule: str) -> int:
    """How many decisions the server's report says ``capsule`` has made."""
    from syntra.client import Client
    with Client(address, token=token, timeout=60) as client:
        return client.report(capsule)["decisions"]


def wal_counters(ops_address: str) -> dict[str, float]:
    """The server's WAL group-commit counters from its ops port's ``/metrics``: batches,
    records in them, fdatasyncs and the seconds they took (all since it started)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{ops_address}/metrics", timeout=30) as response:
        text = response.read().decode()
    wanted = {"syntra_wal_batch_records_count": "batches", "syntra_wal_batch_records_sum": "records",
              "syntra_wal_fsync_seconds_count": "syncs", "syntra_wal_fsync_seconds_sum": "sync_seconds"}
    counters = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                counters[wanted[sample.name]] = sample.value
    return counters


def wal_segments(data: Path) -> int:
    """How many WAL segment files the store of ``syntra serve --data DATA`` holds."""
    return len(list((Path(data) / "store" / "wal").glob("wal-*.seg")))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds process ``pid`` has used (Linux /proc), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Runs one :class:`Load` again and again and adds up what the runs cost: the
    client's counts and latencies, the CPU the server and client processes spent during
    them and, given a Syntra server's ``ops_address`` and ``data``, its WAL group commits
    and the segments it sealed (a sealed segment's Arrow logs are written meanwhile)."""

    def __init__(self, client: LoadClient, load: Load, server_pid: int, *, ops_address: str = "",
                 data: Path | None = None):
        self.client = client
        self.load = load
        self.pids = {"server": server_pid, "client": client.process.pid}
        self.ops_address = ops_address
        self.data = data
        self.cpu: dict[str, float | None] = dict.fromkeys(self.pids, 0.0)
        self.wal = dict.fromkeys(("batches", "records", "syncs", "sync_seconds", "segments"), 0.0)
        self.results: list[RunResult] = []

    def _wal_now(self) -> dict[str, float] | None:
        if not self.ops_address:
            return None
        return {**wal_counters(self.ops_address), "segments": wal_segments(self.data)}

    def run(self) -> RunResult:
        cpu_before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        wal_before = self._wal_now()
        result = self.client.run(self.load)
        for name, pid in self.pids.items():
            after, before, spent = cpu_seconds(pid), cpu_before[name], self.cpu[name]
            self.cpu[name] = None if None in (after, before, spent) else spent + after - before
        if wal_before is not None:
            for key, value in self._wal_now().items():
                self.wal[key] += value - wal_before[key]
        self.results.append(result)
        return result

    def figures(self) -> dict:
        """Rates (per second), p50/p99 latency (us, per call or message), CPU per call
        (us) and the WAL's records per commit, mean fsync (ms) and segments sealed."""
        calls = sum(r.calls for r in self.results)
        decisions = sum(r.decisions for r in self.results)
        seconds = sum(r.seconds for r in self.results)
        figures = {"calls_per_second": round(calls / seconds, 1), "decisions_per_second": round(decisions / seconds, 1),
                   **self.client.latency(self.load.tag)}
        for name, spent in self.cpu.items():
            if spent is not None:
                figures[f"{name}_cpu_us_per_call"] = round(spent / calls * 1e6, 1)
        if self.ops_address:
            wal = self.wal
            figures["wal_records_per_batch"] = round(wal["records"] / max(wal["batches"], 1), 1)
            figures["wal_fsync_mean_ms"] = round(wal["sync_seconds"] / max(wal["syncs"], 1) * 1e3, 2)
            figures["wal_segments_sealed"] = int(wal["segments"])
        return figures


def describe(label: str, figures: dict) -> str:
    """One line for a terminal: the rate, latencies, CPU per call and WAL figures."""
    if figures["decisions_per_second"] != figures["calls_per_second"]:
        rate = f"{figures['decisions_per_second']:10,.0f} decisions/s"
    else:
        rate = f"{figures['calls_per_second']:10,.0f} calls/s    "
    line = (f"{label:22s} {rate}  p50 {figures['p50_us']:9,.0f} us  p99 {figures['p99_us']:9,.0f} us"
            f"  CPU/call: server {figures.get('server_cpu_us_per_call', 0):7,.0f} us,"
            f" client {figures.get('client_cpu_us_per_call', 0):5,.0f} us")
    if "wal_records_per_batch" in figures:
        line += (f"  WAL: {figures['wal_records_per_batch']:6.1f} records/commit, fsync"
                 f" {figures['wal_fsync_mean_ms']:.2f} ms, {figures['wal_segments_sealed']} sealed")
    return line


def measure_main(arguments) -> int:
    """``measure``: the echo server and the client once, then for each repeat a fresh
    ``syntra serve`` (fsync, --rate 0): echo and Decide interleaved, then DecideBatch and
    DecideStream. Prints one line per side and the ratio."""
    sys.path.insert(0, str(ROOT))
    from tests.grpc_server import ServerProcess

    seconds = arguments.seconds
    print(f"{seconds:g} s per side in {arguments.rounds} rounds; unary: {arguments.in_flight} calls in flight;"
          f" DecideBatch: {arguments.batch} per call, 2 in flight; DecideStream: {arguments.batch} per message,"
          f" 4 in flight; syntra serve --durability fsync --rate 0 (default commit window), fresh per repeat")
    with EchoServerProcess() as echo, LoadClient() as client:
        for repeat in range(arguments.repeat):
            with tempfile.TemporaryDirectory(prefix="syntra-grpc-bench-") as directory, \
                    ServerProcess(Path(directory) / "data", args=("--rate", "0")) as server:
                capsule = install_plain_capsule(server.address, server.admin_key, "plain")
                common = {"capsule": capsule, "token": server.admin_key, "seconds": seconds / arguments.rounds}
                syntra = {"ops_address": server.ops_address, "data": server.data}
                meters = {
                    "echo": Meter(client, Load(echo.address, echo=True, in_flight=arguments.in_flight, tag="echo",
                                               **common), echo.process.pid),
                    "Decide": Meter(client, Load(server.address, in_flight=arguments.in_flight, tag="decide",
                                                 **common), server.process.pid, **syntra),
                }
                for meter in meters.values():   # warm: connections, code paths
                    client.run(dataclasses.replace(meter.load, seconds=0.5, tag="warm"))
                client.latency("warm")
                for _ in range(arguments.rounds):
                    meters["echo"].run()
                    meters["Decide"].run()
                for kind, in_flight in (("batch", 2), ("stream", 4)):
                    meters[kind] = Meter(client, Load(server.address, kind=kind, in_flight=in_flight,
                                                      batch=arguments.batch, tag=kind, **common),
                                         server.process.pid, **syntra)
                    for _ in range(arguments.rounds):
                        meters[kind].run()
                figures = {label: meter.figures() for label, meter in meters.items()}
            ratio = figures["Decide"]["calls_per_second"] / figures["echo"]["calls_per_second"]
            print(f"--- repeat {repeat + 1} (load average {os.getloadavg()[0]:.1f})")
            for label, values in figures.items():
                print(describe(label, values))
            print(f"Decide / echo: {ratio:.3f} in calls/s (target >= 0.90); by server CPU per call"
                  f" {figures['echo']['server_cpu_us_per_call'] / figures['Decide']['server_cpu_us_per_call']:.3f}",
                  flush=True)
    return 0


class StackSampler:
    """Where every thread spends its time: samples all Python stacks every ``interval``
    seconds (a stand-in for py-spy, which this machine lacks). A thread blocked in C
    (fsync, epoll) shows the Python line that called it."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.samples = 0
        self.inclusive: dict[tuple[str, str], int] = {}
        self.leaf: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            self.samples += 1
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                thread = _thread_kind(names.get(ident, "?"))
                seen = set()
                leaf = True
                while frame is not None:
                    code = frame.f_code
                    where = f"{_short(code.co_filename)}:{code.co_name}"
                    if leaf:
                        key = (thread, f"{where}:{frame.f_lineno}")
                        self.leaf[key] = self.leaf.get(key, 0) + 1
                        leaf = False
                    if where not in seen:
                        seen.add(where)
                        self.inclusive[(thread, where)] = self.inclusive.get((thread, where), 0) + 1
                    frame = frame.f_back

    def report(self, top: int) -> str:
        """Per thread kind: the functions most often on the stack (share of samples) and
        the lines most often executing."""
        lines = [f"{self.samples} samples every {self.interval * 1e3:g} ms"]
        for title, table in (("on the stack (inclusive)", self.inclusive), ("executing (leaf line)", self.leaf)):
            threads = sorted({thread for thread, _ in table})
            for thread in threads:
                rows = sorted(((n, where) for (t, where), n in table.items()
                               if t == thread and not where.startswith(_PLUMBING)), reverse=True)
                if not rows:   # an idle pool thread, or the load generator's own
                    continue
                lines.append(f"--- {thread}: {title}")
                lines += [f"{n / max(self.samples, 1):7.1%}  {where}" for n, where in rows[:top]]
        return "\n".join(lines)


# Frames every thread has (thread start-up, pools, this module's own): left out of reports.
_PLUMBING = ("threading.py", "concurrent/futures/", "<frozen runpy>", "bench/grpc_load.py")
_STDLIB = sysconfig.get_paths()["stdlib"] + "/"


def _thread_kind(name: str) -> str:
    """Threads of a pool under one name: "syntra-rpc_3" -> "syntra-rpc"."""
    return name.rstrip("0123456789").rstrip("_-") or name


def _short(filename: str) -> str:
    """A source file's name from its package root: asyncio/tasks.py, syntra/capsule.py."""
    if filename.startswith(_STDLIB):
        return filename[len(_STDLIB):]
    for marker in ("/site-packages/", "/src/", f"{ROOT}/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def profile_main(arguments) -> int:
    """``profile-server``: run ``syntra serve`` in this process while the client drives
    ``--kind`` load; cProfile the event loop thread and sample every thread's stack."""
    import cProfile
    import pstats
    import secrets

    from syntra.server.app import ServerConfig, SyntraServer

    token = "bench-admin-" + secrets.token_hex(24)
    profiler = cProfile.Profile()
    sampler = StackSampler()

    async def profiled(directory: Path) -> None:
        server = SyntraServer(ServerConfig(data=directory, listen="127.0.0.1:0", ops_listen=None,
                                           admin_key=token, rate=0.0, durability=arguments.durability))
        await server.start()
        try:
            address = f"127.0.0.1:{server.port}"
            loop = asyncio.get_running_loop()
            capsule = await loop.run_in_executor(None, install_plain_capsule, address, token, "plain")
            with LoadClient() as client:
                load = Load(address, kind=arguments.kind, capsule=capsule, token=token, in_flight=arguments.in_flight,
                            batch=arguments.batch, seconds=0.5)
                await loop.run_in_executor(None, client.run, load)   # warm, unprofiled
                if arguments.preload:
                    await loop.run_in_executor(None, client.run, Load(
                        address, kind="stream", capsule=capsule, token=token, in_flight=4, batch=1000,
                        calls=max(1, arguments.preload // 1000)))
                with sampler:
                    profiler.enable()
                    result = await loop.run_in_executor(
                        None, client.run, dataclasses.replace(load, seconds=arguments.seconds))
                    profiler.disable()
            print(f"{arguments.kind}: {result.calls_per_second:,.0f} calls/s, "
                  f"{result.decisions_per_second:,.0f} decisions/s while profiled ({result.calls} calls)")
        finally:
            await server.stop()

    with tempfile.TemporaryDirectory(prefix="syntra-grpc-profile-") as directory:
        asyncio.run(profiled(Path(directory) / "data"))
    print(sampler.report(arguments.top))
    stats = pstats.Stats(profiler)
    if arguments.output:
        stats.dump_stats(arguments.output)
    print("--- cProfile of the event loop thread")
    stats.sort_stats(arguments.sort).print_stats(arguments.top)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_load", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    echo = commands.add_parser("echo-server", help="run the bare grpcio echo server")
    echo.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    commands.add_parser("client", help="run the load client (JSON lines on stdin/stdout)")
    measure = commands.add_parser("measure", help="measure Decide vs echo, DecideBatch and DecideStream")
    measure.add_argument("--seconds", type=float, default=5.0, help="seconds per side (default 5)")
    measure.add_argument("--repeat", type=int, default=3, help="how many times to measure (default 3)")
    measure.add_argument("--rounds", type=int, default=3,
                         help="rounds per side, echo and Decide alternating (default 3)")
    measure.add_argument("--in-flight", type=int, default=16, help="unary calls in flight (default 16)")
    measure.add_argument("--batch", type=int, default=1000, help="requests per batch/message (default 1000)")
    profile = commands.add_parser("profile-server", help="cProfile an in-process syntra serve under load")
    profile.add_argument("--kind", choices=KINDS, default="unary")
    profile.add_argument("--seconds", type=float, default=5.0)
    profile.add_argument("--in-flight", type=int, default=16)
    profile.add_argument("--batch", type=int, default=1000)
    profile.add_argument("--durability", choices=("fsync", "none"), default="fsync")
    profile.add_argument("--sort", default="tottime", help="pstats sort key (default tottime)")
    profile.add_argument("--top", type=int, default=40)
    profile.add_argument("--preload", type=int, default=0, metavar="DECISIONS",
                         help="make this many decisions (DecideStream) before profiling")
    profile.add_argument("--output", metavar="PATH", help="also write the raw profile here")
    arguments = parser.parse_args(argv)
    if arguments.command == "echo-server":
        asyncio.run(serve_echo(arguments.listen))
        return 0
    if arguments.command == "client":
        return client_main()
    if arguments.command == "measure":
        for name in ("seconds", "repeat", "rounds", "in_flight", "batch"):
            if getattr(arguments, name) <= 0:
                parser.error(f"--{name.replace('_', '-')} must be > 0")
        return measure_main(arguments)
    return profile_main(arguments)


if __name__ == "__main__":
    sys.exit(main())
