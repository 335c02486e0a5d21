"""The gRPC load harness (bench/grpc_load.py) measures real calls: what the client counts
is what the servers did, and a failed call stops the run with its status code."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench.grpc_load import (
    EchoServerProcess,
    Load,
    LoadClient,
    LoadError,
    Meter,
    StackSampler,
    decisions_made,
    install_plain_capsule,
)
from tests.grpc_server import ServerProcess

CAPSULE = "tenants/bench/jobs/grpc/capsules/plain"


@pytest.fixture(scope="module")
def client():
    with LoadClient() as load_client:
        yield load_client


@pytest.fixture(scope="module")
def echo():
    with EchoServerProcess() as server:
        yield server


@pytest.fixture(scope="module")
def syntra(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("grpc-load") / "data", args=("--rate", "0")) as server:
        install_plain_capsule(server.address, server.admin_key, "plain")
        yield server


def test_echo_server_answers_every_call_the_client_counts(client, echo):
    before = echo.calls
    result = client.run(Load(echo.address, capsule=CAPSULE, token="t" * 40, calls=347, in_flight=16,
                             echo=True, tag="echo"))
    assert result.calls == 347 and result.decisions == 347 and result.seconds > 0
    assert echo.calls - before == 347
    latency = client.latency("echo")
    assert latency["count"] == 347 and 0 < latency["p50_us"] <= latency["p99_us"]
    assert client.latency("echo")["count"] == 0   # reading cleared them


def test_a_timed_run_counts_what_the_server_saw(client, echo):
    before = echo.calls
    result = client.run(Load(echo.address, capsule=CAPSULE, seconds=0.3, in_flight=4, echo=True))
    assert result.calls > 0 and result.seconds >= 0.3
    assert echo.calls - before == result.calls


@pytest.mark.parametrize("kind, calls, in_flight", [("unary", 150, 16), ("batch", 3, 2), ("stream", 5, 3)])
def test_syntra_made_every_decision_the_client_counts(client, syntra, kind, calls, in_flight):
    before = decisions_made(syntra.address, syntra.admin_key, CAPSULE)
    result = client.run(Load(syntra.address, kind=kind, capsule=CAPSULE, token=syntra.admin_key, calls=calls,
                             in_flight=in_flight, batch=200))
    per_call = 1 if kind == "unary" else 200
    assert result.calls == calls and result.decisions == calls * per_call
    assert decisions_made(syntra.address, syntra.admin_key, CAPSULE) - before == calls * per_call


def test_a_failed_call_stops_the_run_with_its_code(client, syntra):
    missing = Load(syntra.address, capsule=CAPSULE + "-missing", token=syntra.admin_key, calls=20)
    with pytest.raises(LoadError) as caught:
        client.run(missing)
    assert caught.value.code == "NOT_FOUND"
    with pytest.raises(LoadError) as caught:
        client.run(dataclasses.replace(missing, capsule=CAPSULE, token="not-a-token-" + "x" * 30))
    assert caught.value.code == "UNAUTHENTICATED"


def test_a_failed_batch_item_stops_the_run(client, syntra):
    with pytest.raises(LoadError) as caught:
        client.run(Load(syntra.address, kind="batch", capsule="bad name", token=syntra.admin_key, calls=1, batch=2))
    assert caught.value.code == "INVALID_ARGUMENT" and "requests[0]" in caught.value.message


def test_a_reply_that_is_not_the_echo_fails_the_run(client, syntra):
    # The Syntra server answers Decide with a Decision, not with the request's bytes.
    with pytest.raises(LoadError) as caught:
        client.run(Load(syntra.address, capsule=CAPSULE, token=syntra.admin_key, calls=1, echo=True))
    assert caught.value.code == "DATA_LOSS"


@pytest.mark.parametrize("changes, field", [
    ({"kind": "bidi"}, "kind"), ({"calls": 0}, "calls"), ({"calls": 5, "seconds": 1.0}, "calls"),
    ({"in_flight": 0}, "in_flight"), ({"batch": 10_001}, "batch"), ({"address": ""}, "address"),
    ({"kind": "batch", "echo": True}, "echo"),
])
def test_a_bad_load_is_refused_before_any_call(changes, field):
    arguments = {"address": "127.0.0.1:1", "capsule": CAPSULE, "calls": 1} | changes
    with pytest.raises(ValueError, match=field):
        Load(**arguments)


def test_the_echo_server_is_a_plain_grpc_server(echo):
    with grpc.insecure_channel(echo.address) as channel:
        assert channel.unary_unary("/any.Service/Method")(b"\x01\x02payload", timeout=10) == b"\x01\x02payload"


def test_the_meter_sees_the_servers_wal_commit_every_decision(client, syntra):
    load = Load(syntra.address, kind="batch", capsule=CAPSULE, token=syntra.admin_key, calls=2, in_flight=1,
                batch=300, tag="meter")
    meter = Meter(client, load, syntra.process.pid, ops_address=syntra.ops_address, data=syntra.data)
    meter.run()
    meter.run()
    # Every decision is one WAL record; a batch is one or a few group commits, each synced.
    wal = meter.wal
    assert wal["records"] == 1200 and 2 <= wal["batches"] <= wal["syncs"] and wal["segments"] == 0
    figures = meter.figures()
    assert figures["decisions_per_second"] / figures["calls_per_second"] == pytest.approx(300, rel=1e-2)
    assert figures["wal_records_per_batch"] == round(1200 / wal["batches"], 1) and figures["count"] == 4


def _spin_until(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))


def test_the_stack_sampler_finds_a_busy_thread():
    stop = threading.Event()
    busy = threading.Thread(target=_spin_until, args=(stop,), name="busy-worker")
    with StackSampler(interval=0.001) as sampler:
        busy.start()
        time.sleep(0.3)
        stop.set()
        busy.join()
    on_stack = {where: n for (thread, where), n in sampler.inclusive.items() if thread == "busy-worker"}
    assert sampler.samples > 20
    assert on_stack["tests/test_bench_grpc.py:_spin_until"] >= sampler.samples // 2
    assert "tests/test_bench_grpc.py:_spin_until" in sampler.report(5)
