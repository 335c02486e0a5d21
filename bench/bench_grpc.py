"""The gRPC service's throughput (issue 6 targets), each side measured in the same run by
the same client.

Three processes: ``syntra serve`` (durability fsync, the default commit window, ``--rate
0``; a fresh one per benchmark), a bare grpc.aio echo server and the asyncio load client
(``bench/grpc_load.py``). A plain capsule (options a, b, c; Bernoulli reward) is
installed first.

* ``grpc_echo_unary`` / ``syntra_decide_unary``: 16 unary calls in flight, the same
  serialized ``DecideRequest`` to each server. Decide runs with echo rounds interleaved
  and reports the ratio Decide/echo in calls per second (target >= 0.90); each side its
  p50/p99 latency.
* ``syntra_decide_batch``: ``DecideBatch`` of 1000 requests, 2 calls in flight.
* ``syntra_decide_stream``: one ``DecideStream``, messages of 1000 requests, 4 in flight.
  Both target >= 100k decisions/s.

Every run checks what came back (echo: the same bytes; Syntra: real decisions) and that
the server's report counts the decisions the client received. ``extra_info`` also holds
the CPU each process spent per call (which tells a slow server from a starved one on a
busy machine) and, for Syntra, the WAL's records per group commit, mean fsync time and
the segments sealed during the run. Each side runs ``SYNTRA_BENCH_GRPC_SECONDS``
(default 3) in 3 rounds after a warm-up; with --benchmark-disable, a few calls only.

    .venv/bin/python -m pytest bench/bench_grpc.py -q --benchmark-json=grpc.json
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest

# grpc_load is ``bench.grpc_load`` (also a CLI, and the load client's entry point).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench.grpc_load import (
    EchoServerProcess,
    Load,
    LoadClient,
    Meter,
    decisions_made,
    describe,
    install_plain_capsule,
)
from tests.grpc_server import ServerProcess

SECONDS = float(os.environ.get("SYNTRA_BENCH_GRPC_SECONDS", "3"))
ROUNDS = 3
WARM_SECONDS = 0.5
IN_FLIGHT = 16
BATCH = 1000
DECIDE_RATIO_TARGET = 0.90
DECISIONS_TARGET = 100_000
# label -> (load kind, calls or messages in flight, calls per round with --benchmark-disable)
UNARY = {"grpc_echo_unary": ("unary", IN_FLIGHT, 200), "syntra_decide_unary": ("unary", IN_FLIGHT, 200)}
MANY = {"syntra_decide_batch": ("batch", 2, 3), "syntra_decide_stream": ("stream", 4, 3)}


@dataclasses.dataclass
class Rig:
    echo: EchoServerProcess
    server: ServerProcess
    client: LoadClient
    capsule: str


@pytest.fixture(scope="module")
def echo_and_client():
    with EchoServerProcess() as echo, LoadClient() as client:
        yield echo, client


@pytest.fixture
def rig(echo_and_client, tmp_path):
    """A fresh ``syntra serve`` per benchmark, so no figure depends on how many decisions
    (pending, in the WAL segment) an earlier one left behind."""
    echo, client = echo_and_client
    with ServerProcess(tmp_path / "data", args=("--rate", "0")) as server:
        yield Rig(echo, server, client, install_plain_capsule(server.address, server.admin_key, "plain"))


class Side:
    """One side of a comparison: a :class:`Meter` over ROUNDS rounds of a fixed number of
    calls, sized to last SECONDS in all."""

    def __init__(self, rig: Rig, label: str, kind: str, in_flight: int, *, echo: bool = False):
        load = Load(rig.echo.address if echo else rig.server.address, kind=kind, capsule=rig.capsule,
                    token=rig.server.admin_key, calls=1, in_flight=in_flight, batch=BATCH, echo=echo, tag=label)
        if echo:
            self.meter = Meter(rig.client, load, rig.echo.process.pid)
        else:
            self.meter = Meter(rig.client, load, rig.server.process.pid, ops_address=rig.server.ops_address,
                               data=rig.server.data)
        self.rig = rig

    @property
    def load(self) -> Load:
        return self.meter.load

    def size(self, benchmark, smoke_calls: int) -> None:
        """Calls per round: a few with --benchmark-disable, else as many as fill
        SECONDS / ROUNDS at the rate a warm-up reached."""
        calls = smoke_calls
        if not benchmark.disabled:
            client = self.rig.client
            client.run(dataclasses.replace(self.load, calls=0, seconds=WARM_SECONDS / 2))
            probe = client.run(dataclasses.replace(self.load, calls=0, seconds=WARM_SECONDS))
            calls = max(1, round(probe.calls_per_second * SECONDS / ROUNDS))
        self.meter.load = dataclasses.replace(self.load, calls=calls)
        self.rig.client.latency(self.load.tag)

    def round(self) -> None:
        self.meter.run()

    def figures(self) -> dict:
        results = self.meter.results
        calls = sum(r.calls for r in results)
        per_call = 1 if self.load.kind == "unary" else BATCH
        assert calls == self.load.calls * len(results) and sum(r.decisions for r in results) == calls * per_call
        figures = {"calls_per_round": self.load.calls, **self.meter.figures()}
        if not self.load.echo:   # every decision is a WAL record
            assert self.meter.wal["records"] >= calls * per_call
        return figures


def measure(benchmark, side: Side, smoke_calls: int, interleaved: Side | None = None) -> dict:
    """Time ``side`` over ROUNDS rounds (``interleaved``, if given, runs untimed before
    each), check the server made every decision the client counted, return the figures."""
    side.size(benchmark, smoke_calls)
    if interleaved is not None:
        interleaved.size(benchmark, smoke_calls)
    rig = side.rig
    before = None if side.load.echo else decisions_made(rig.server.address, rig.server.admin_key, rig.capsule)
    benchmark.pedantic(side.round, setup=interleaved and interleaved.round, rounds=ROUNDS, iterations=1)
    figures = side.figures()
    if before is not None:
        made = decisions_made(rig.server.address, rig.server.admin_key, rig.capsule) - before
        per_call = 1 if side.load.kind == "unary" else BATCH
        assert made == figures["calls_per_round"] * len(side.meter.results) * per_call
    return figures


def say(request, line: str) -> None:
    """Print ``line`` on the terminal now, past pytest's output capture."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if capture is None or reporter is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


@pytest.mark.parametrize("label", list(UNARY))
def test_unary_16_in_flight(benchmark, record_unit_time, rig, request, label):
    """Echo alone, then Decide with echo rounds interleaved (so a machine whose load drifts
    shifts both alike): the ratio comes from the interleaved pair."""
    kind, in_flight, smoke_calls = UNARY[label]
    echo = label.startswith("grpc_echo")
    side = Side(rig, label, kind, in_flight, echo=echo)
    reference = None if echo else Side(rig, "grpc_echo_interleaved", kind, in_flight, echo=True)
    figures = measure(benchmark, side, smoke_calls, interleaved=reference)
    record_unit_time(label, figures["calls_per_round"])
    benchmark.extra_info.update(figures)
    if reference is not None:
        echo_figures = reference.figures()
        ratio = figures["calls_per_second"] / echo_figures["calls_per_second"]
        benchmark.extra_info.update({f"echo_{key}": value for key, value in echo_figures.items()})
        benchmark.extra_info.update(ratio_vs_echo=round(ratio, 3), ratio_target=DECIDE_RATIO_TARGET)
        if "server_cpu_us_per_call" in figures and "server_cpu_us_per_call" in echo_figures:
            # The ratio a server with a core to itself would reach: server CPU per call.
            benchmark.extra_info["server_cpu_ratio_vs_echo"] = round(
                echo_figures["server_cpu_us_per_call"] / figures["server_cpu_us_per_call"], 3)
    if benchmark.disabled:
        return
    say(request, "\n" + describe(label, figures))
    if reference is not None:
        info = benchmark.extra_info
        say(request, describe("grpc_echo_interleaved", echo_figures))
        say(request, f"Decide (fsync) / bare grpc.aio echo, 16 in flight: {info['ratio_vs_echo']:.3f} in calls/s"
                     f" (target >= {DECIDE_RATIO_TARGET}); by server CPU per call:"
                     f" {info.get('server_cpu_ratio_vs_echo')}")


@pytest.mark.parametrize("label", list(MANY))
def test_decisions_per_second(benchmark, record_unit_time, rig, request, label):
    kind, in_flight, smoke_calls = MANY[label]
    figures = measure(benchmark, Side(rig, label, kind, in_flight), smoke_calls)
    record_unit_time(label, figures["calls_per_round"] * BATCH)
    benchmark.extra_info.update(figures, batch=BATCH, in_flight=in_flight,
                                decisions_target=DECISIONS_TARGET)
    if not benchmark.disabled:
        say(request, "\n" + describe(label, figures) + f"  (target >= {DECISIONS_TARGET:,} decisions/s)")
