"""Capsule administration, the audit log, backup/restore and shadow mode through a real
``syntra serve`` process (the wire contract, via the generated stubs)."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time

import grpc
import pytest
from google.protobuf import struct_pb2

from syntra.v1 import admin_pb2, audit_pb2, capsule_pb2, decision_pb2
from tests.grpc_server import ServerProcess
from tests.test_server_e2e import Api, failing, install_plain


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("admin-server") / "data") as process:
        yield process


@pytest.fixture(scope="module")
def admin(server):
    api = Api(server.address, server.admin_key)
    yield api
    api.close()


def struct(data) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(data)
    return message


def decide(api, name, context="k", **fields):
    return api.call(api.decisions.Decide, decision_pb2.DecideRequest(capsule=name, context_key=context, **fields))


def feedback(api, name, decision_id, reward, **fields):
    return api.call(api.decisions.Feedback, decision_pb2.FeedbackRequest(
        capsule=name, decision_id=decision_id, reward=reward, **fields))


def test_list_capsules_pages_and_filters_by_parent(admin):
    names = [install_plain(admin, f"tenants/list/jobs/j{i % 2}", f"c{i}") for i in range(5)]
    seen, token = [], ""
    while True:
        page = admin.call(admin.capsules.ListCapsules, capsule_pb2.ListCapsulesRequest(
            parent="tenants/list", page_size=2, page_token=token))
        assert len(page.capsules) <= 2
        seen += [c.name for c in page.capsules]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(names)
    job = admin.call(admin.capsules.ListCapsules, capsule_pb2.ListCapsulesRequest(parent="tenants/list/jobs/j1"))
    assert [c.name for c in job.capsules] == sorted(n for n in names if "/j1/" in n)
    bad = failing(lambda: admin.call(admin.capsules.ListCapsules, capsule_pb2.ListCapsulesRequest(page_token="%%%")))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_learning_reward_and_lifecycle_updates(admin):
    request = capsule_pb2.InstallCapsuleRequest(parent="tenants/upd/jobs/j", capsule_id="c", options=["a", "b"],
                                                learning_config=struct({"warmup": {"feedbacks": 10}}))
    created = admin.call(admin.capsules.InstallCapsule, request)
    assert created.algorithm == "auto" and created.lifecycle == "warmup"
    assert created.learning_config["warmup"]["feedbacks"] == 10
    name = created.name
    updated = admin.call(admin.capsules.UpdateLearningConfig, capsule_pb2.UpdateLearningConfigRequest(
        name=name, learning_config=struct({"drift": {"capsule_delta": 0.01}})))
    assert updated.learning_config["drift"]["capsule_delta"] == 0.01
    bad = failing(lambda: admin.call(admin.capsules.UpdateLearningConfig, capsule_pb2.UpdateLearningConfigRequest(
        name=name, learning_config=struct({"drift": {"capsule_delta": "high"}}))))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "drift.capsule_delta" in bad.details()
    frozen = admin.call(admin.capsules.FreezeCapsule, capsule_pb2.FreezeCapsuleRequest(name=name))
    assert frozen.lifecycle == "frozen"
    assert decide(admin, name).option in ("a", "b")   # a frozen capsule still serves
    admin.call(admin.capsules.UnfreezeCapsule, capsule_pb2.UnfreezeCapsuleRequest(name=name))
    for _ in range(3):
        d = decide(admin, name)
        feedback(admin, name, d.decision_id, 1.0)
    continuous = admin.call(admin.capsules.UpdateRewardSpec, capsule_pb2.UpdateRewardSpecRequest(
        name=name, reward_spec=struct({"type": "continuous", "range": [0, 10]})))
    assert continuous.reward_spec["type"] == "continuous"
    d = decide(admin, name)
    feedback(admin, name, d.decision_id, 7.5)   # a reward the old bernoulli spec refused
    no_program = failing(lambda: admin.call(admin.capsules.UpdatePolicy, capsule_pb2.UpdatePolicyRequest(
        name=name, policy=struct({}))))
    assert no_program.code() == grpc.StatusCode.FAILED_PRECONDITION
    memory = admin.call(admin.capsules.GetMemory, capsule_pb2.GetMemoryRequest(name=name + "/memory"))
    assert memory.contexts == 1 and memory.state_bytes > 0 and memory.pending == 1   # the frozen one
    assert failing(lambda: admin.call(admin.capsules.GetMemory, capsule_pb2.GetMemoryRequest(name=name))).code() \
        == grpc.StatusCode.INVALID_ARGUMENT
    admin.call(admin.capsules.DeleteCapsule, capsule_pb2.DeleteCapsuleRequest(name=name))
    assert failing(lambda: decide(admin, name)).code() == grpc.StatusCode.NOT_FOUND


def test_shadow_capsule_suggests_and_learns_from_the_action_taken(admin):
    created = admin.call(admin.capsules.InstallCapsule, capsule_pb2.InstallCapsuleRequest(
        parent="tenants/shadow/jobs/j", capsule_id="c", options=["a", "b", "c"], shadow=True))
    assert created.shadow
    name = created.name
    rng = random.Random(5)
    means = {"a": 0.2, "b": 0.8, "c": 0.3}
    for _ in range(300):
        d = decide(admin, name)
        assert d.shadow and d.option in means
        taken = rng.choice("abc")     # the caller's own (uniform) policy decides
        reward = 1.0 if rng.random() < means[taken] else 0.0
        feedback(admin, name, d.decision_id, reward, taken_option=taken, taken_propensity=1 / 3)
    report = admin.call(admin.capsules.GetReport, capsule_pb2.GetReportRequest(name=name)).report
    assert report["contexts"]["k"]["best_option"] == "b"
    d = decide(admin, name)
    missing = failing(lambda: feedback(admin, name, d.decision_id, 1.0))
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT and "taken_option" in missing.details()
    bad = failing(lambda: feedback(admin, name, d.decision_id, 1.0, taken_option="a", taken_propensity=float("nan")))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_read_log_streams_and_follows(admin):
    name = install_plain(admin, "tenants/log/jobs/j", "c")
    ids = [decide(admin, name).decision_id for _ in range(3)]
    feedback(admin, name, ids[0], 1.0)
    entries = list(admin.audit.ReadLog(audit_pb2.ReadLogRequest(parent=name), metadata=admin.metadata, timeout=30))
    kinds = [e.kind for e in entries]
    assert kinds == ["install", "decision", "decision", "decision", "feedback"]
    assert [e.body["decision_id"] for e in entries if e.kind == "decision"] == ids
    assert entries[-1].body["reward"] == 1.0 and all(len(e.digest) == 64 for e in entries)
    assert all(a.sequence < b.sequence for a, b in itertools.pairwise(entries))
    only = list(admin.audit.ReadLog(audit_pb2.ReadLogRequest(
        parent=name, kinds=["feedback"], start_sequence=entries[1].sequence), metadata=admin.metadata, timeout=30))
    assert [e.body["decision_id"] for e in only] == [ids[0]]
    # follow: a decision made after the stream opened arrives on it.
    stream = admin.audit.ReadLog(audit_pb2.ReadLogRequest(
        parent=name, kinds=["decision"], start_sequence=entries[-1].sequence + 1, follow=True),
        metadata=admin.metadata, timeout=30)
    later = []
    timer = threading.Timer(0.3, lambda: later.append(decide(admin, name).decision_id))
    timer.start()
    first = next(stream)
    stream.cancel()
    timer.join(30)   # the entry may reach the stream before the Decide answer reaches the timer
    assert first.body["decision_id"] == later[0]
    bad = failing(lambda: list(admin.audit.ReadLog(audit_pb2.ReadLogRequest(kinds=["nope"]),
                                                   metadata=admin.metadata, timeout=10)))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    verified = admin.call(admin.audit.VerifyChain, audit_pb2.VerifyChainRequest(), timeout=120)
    assert verified.ok and verified.records >= len(entries) and len(verified.head_digest) == 64


def _backup(api) -> tuple[admin_pb2.BackupManifest, bytes]:
    chunks = list(api.admin.Backup(admin_pb2.BackupRequest(), metadata=api.metadata, timeout=120))
    assert chunks[0].WhichOneof("chunk") == "manifest"
    data = b"".join(c.data for c in chunks[1:])
    return chunks[0].manifest, data


def _restore(api, manifest, data, chunk=100_000):
    pieces = [admin_pb2.RestoreChunk(manifest=manifest)]
    pieces += [admin_pb2.RestoreChunk(data=data[i:i + chunk]) for i in range(0, len(data), chunk)]
    return api.admin.Restore(iter(pieces), metadata=api.metadata, timeout=120)


def test_backup_then_restore_brings_back_exactly_that_state(tmp_path):
    with ServerProcess(tmp_path / "data") as server:
        api = Api(server.address, server.admin_key)
        try:
            name = install_plain(api, "tenants/bk/jobs/j", "c")
            kept = [decide(api, name).decision_id for _ in range(20)]
            for decision_id in kept[:10]:
                feedback(api, name, decision_id, 1.0)
            manifest, data = _backup(api)
            assert manifest.size_bytes == len(data) and len(manifest.blake3) == 64
            later = [decide(api, name).decision_id for _ in range(5)]
            install_plain(api, "tenants/bk/jobs/j", "after")
            # A damaged bundle is refused and nothing changes.
            damaged = bytearray(data)
            damaged[len(damaged) // 2] ^= 0xFF
            refused = failing(lambda: _restore(api, manifest, bytes(damaged)))
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
            truncated = failing(lambda: _restore(api, manifest, data[:-100]))
            assert truncated.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in truncated.details()
            assert decide(api, name).decision_id   # still serving the live store
            restored = _restore(api, manifest, data)
            assert restored.wal_sequence == manifest.wal_sequence and restored.head_digest == manifest.head_digest
            capsule = api.call(api.capsules.GetCapsule, capsule_pb2.GetCapsuleRequest(name=name))
            assert capsule.decisions == 20 and capsule.pending == 10
            assert failing(lambda: api.call(api.capsules.GetCapsule, capsule_pb2.GetCapsuleRequest(
                name="tenants/bk/jobs/j/capsules/after"))).code() == grpc.StatusCode.NOT_FOUND
            assert failing(lambda: feedback(api, name, kept[0], 0.0)).code() == grpc.StatusCode.ALREADY_EXISTS
            feedback(api, name, kept[15], 0.0)           # pending at the snapshot: still pending
            assert failing(lambda: feedback(api, name, later[0], 1.0)).code() == grpc.StatusCode.NOT_FOUND
            assert any(p.name.startswith("store.before-restore-") for p in (tmp_path / "data").iterdir())
            # Tokens survive a restore: they are the server's, not the store's.
            assert api.call(api.audit.VerifyChain, audit_pb2.VerifyChainRequest(), timeout=120).ok
        finally:
            api.close()


def test_not_serving_until_recovered_then_unavailable_while_stopping(tmp_path):
    """In process: hold recovery back and watch health and calls before and after."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from syntra.server.app import ServerConfig, SyntraServer

    release = threading.Event()

    class SlowRecovery(SyntraServer):
        def _open_engine(self):
            release.wait(30)
            return super()._open_engine()

    async def scenario():
        key = "k" * 40
        server = SlowRecovery(ServerConfig(data=tmp_path / "data", listen="127.0.0.1:0", ops_listen=None,
                                           admin_key=key))
        starting = asyncio.create_task(server.start())
        while server.port is None or server._server is None:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        metadata = (("authorization", f"Bearer {key}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = (await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            from syntra.v1 import capsule_pb2_grpc

            capsules = capsule_pb2_grpc.CapsuleServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await capsules.ListCapsules(capsule_pb2.ListCapsulesRequest(), metadata=metadata, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            release.set()
            await starting
            status = (await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            assert (await capsules.ListCapsules(capsule_pb2.ListCapsulesRequest(), metadata=metadata,
                                                timeout=5)).capsules == []
        await server.stop()

    asyncio.run(scenario())


def test_concurrent_clients_in_several_processes(server, admin, tmp_path):
    """Four client processes decide and feed back at once; every acknowledged call counts."""
    import subprocess
    import sys

    name = install_plain(admin, "tenants/procs/jobs/j", "c")
    script = tmp_path / "client.py"
    script.write_text(
        "import sys, grpc\n"
        "from syntra.v1 import decision_pb2, decision_pb2_grpc\n"
        "address, key, name, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])\n"
        "stub = decision_pb2_grpc.DecisionServiceStub(grpc.insecure_channel(address))\n"
        "md = (('authorization', 'Bearer ' + key),)\n"
        "for i in range(n):\n"
        "    d = stub.Decide(decision_pb2.DecideRequest(capsule=name, context_key='k'), metadata=md, timeout=30)\n"
        "    stub.Feedback(decision_pb2.FeedbackRequest(capsule=name, decision_id=d.decision_id, reward=1.0),"
        " metadata=md, timeout=30)\n"
        "print('done', n)\n")
    started = time.monotonic()
    children = [subprocess.Popen([sys.executable, str(script), server.address, server.admin_key, name, "100"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [child.communicate(timeout=120) for child in children]
    assert all(child.returncode == 0 for child in children), outputs
    assert time.monotonic() - started < 120
    capsule = admin.call(admin.capsules.GetCapsule, capsule_pb2.GetCapsuleRequest(name=name))
    assert capsule.decisions == 400 and capsule.pending == 0
    report = admin.call(admin.capsules.GetReport, capsule_pb2.GetReportRequest(name=name)).report
    assert sum(report["contexts"]["k"]["pulls"].values()) == 400


def test_logs_are_json_with_request_ids_and_never_hold_secrets(server, admin):
    import json

    name = install_plain(admin, "tenants/logs/jobs/j", "c")
    created = admin.call(admin.admin.CreateToken, admin_pb2.CreateTokenRequest(
        scopes=[admin_pb2.Scope(role="read", resource="tenants/logs/jobs/j")], ttl_seconds=60))
    refused = Api(server.address, created.secret)
    try:
        failing(lambda: decide(refused, name))                    # PERMISSION_DENIED, logged
    finally:
        refused.close()
    bogus = Api(server.address, "syn_0123456789abcdef_" + "B" * 43)
    try:
        failing(lambda: decide(bogus, name))                      # UNAUTHENTICATED, logged
    finally:
        bogus.close()
    time.sleep(0.3)   # the log lines cross a pipe
    lines = [json.loads(line) for line in server.stderr_lines if line.startswith("{")]
    assert len(lines) == len([line for line in server.stderr_lines if line.strip()])   # every line is JSON
    installed = [e for e in lines if e.get("method") == "InstallCapsule" and e.get("parent") == "tenants/logs/jobs/j"]
    assert any(e.get("principal") == "admin-key" and e.get("request_id") for e in installed)
    assert any(e.get("code") == "PERMISSION_DENIED" and e.get("request_id") for e in lines)
    assert any(e.get("msg") == "authentication failed" and e.get("reason") for e in lines)
    text = "".join(server.stderr_lines)
    assert server.admin_key not in text
    assert created.secret.rsplit("_", 1)[1] not in text and "B" * 43 not in text


def test_the_ops_port_serves_metrics_health_and_readiness(server, admin):
    import urllib.request

    name = install_plain(admin, "tenants/ops/jobs/j", "c")
    for _ in range(5):
        feedback(admin, name, decide(admin, name).decision_id, 1.0)
    learning = admin.call(admin.capsules.InstallCapsule, capsule_pb2.InstallCapsuleRequest(
        parent="tenants/ops/jobs/j", capsule_id="auto", options=["a", "b"], learning_config=struct({}))).name
    base = f"http://{server.ops_address}"
    with urllib.request.urlopen(base + "/healthz", timeout=10) as answer:
        assert answer.status == 200
    with urllib.request.urlopen(base + "/readyz", timeout=10) as answer:
        assert answer.status == 200
    with urllib.request.urlopen(base + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples[f'syntra_decisions_total{{capsule="{name}"}}'] == 5
    assert samples[f'syntra_feedback_total{{capsule="{name}"}}'] == 5
    assert samples[f'syntra_capsule_lifecycle{{capsule="{name}",state="active"}}'] == 1
    assert samples['syntra_rpc_duration_seconds_count{method="Decide"}'] >= 5
    assert samples["syntra_wal_fsync_seconds_count"] >= 1 and samples["syntra_wal_batch_records_sum"] >= 10
    shares = [v for k, v in samples.items() if k.startswith("syntra_meta_share{") and f'capsule="{learning}"' in k]
    assert len(shares) >= 2 and abs(sum(shares) - 1) < 1e-6
