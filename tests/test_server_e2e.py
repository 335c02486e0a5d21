"""The gRPC service end to end: a real ``syntra serve`` process on 127.0.0.1, called through
the generated stubs (the wire contract), not through the engine."""

from __future__ import annotations

import functools
import random
import threading
import time
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

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
from tests.grpc_server import ServerProcess

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BEST, OTHER = 0.85, 0.25


class Api:
    """The four services on one channel, calling with ``metadata``."""

    def __init__(self, address: str, secret: str | None):
        self.channel = grpc.insecure_channel(address)
        self.metadata = (("authorization", f"Bearer {secret}"),) if secret else ()
        self.decisions = decision_pb2_grpc.DecisionServiceStub(self.channel)
        self.capsules = capsule_pb2_grpc.CapsuleServiceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    def call(self, method, request, timeout=30):
        return method(request, metadata=self.metadata, timeout=timeout)

    def close(self):
        self.channel.close()


def code_of(call) -> grpc.StatusCode:
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def details(exc: grpc.RpcError):
    """The google.rpc details of a failed call: (BadRequest fields, RetryInfo seconds)."""
    raw = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin")
    fields, retry = [], None
    if raw:
        status = status_pb2.Status.FromString(raw)
        for item in status.details:
            if item.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                item.Unpack(bad)
                fields += [v.field for v in bad.field_violations]
            if item.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                item.Unpack(info)
                retry = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return fields, retry


def failing(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def inline_spec(example: str) -> str:
    """The example's capsule.yaml with its program inlined (the server takes it inline)."""
    spec = yaml.safe_load((EXAMPLES / example / "capsule.yaml").read_text())
    spec["program"] = (EXAMPLES / example / spec.pop("program_file")).read_text()
    return yaml.safe_dump(spec)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("server") / "data") as process:
        yield process


@pytest.fixture(scope="module")
def admin(server):
    api = Api(server.address, server.admin_key)
    yield api
    api.close()


def install_plain(api: Api, parent: str, capsule_id: str, options=("a", "b", "c")) -> str:
    request = capsule_pb2.InstallCapsuleRequest(parent=parent, capsule_id=capsule_id, options=list(options))
    request.reward_spec.update({"type": "bernoulli"})
    return api.call(api.capsules.InstallCapsule, request).name


# --- every example, install → decide → feedback → report ------------------------------------


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.iterdir() if (p / "capsule.yaml").is_file()))
def test_each_example_learns_through_the_api(admin, example):
    spec = yaml.safe_load((EXAMPLES / example / "capsule.yaml").read_text())
    key = spec["contextSpec"]["key"]
    options = spec["options"]
    sample = __import__("json").loads((EXAMPLES / example / "sample_input.json").read_text())
    created = admin.call(admin.capsules.InstallCapsule, capsule_pb2.InstallCapsuleRequest(
        parent="tenants/examples/jobs/e2e", capsule_id=example, yaml_spec=inline_spec(example)))
    name = created.name
    assert name == f"tenants/examples/jobs/e2e/capsules/{example}"
    assert list(created.options) == options and created.program
    world = {"ctx-a": options[0], "ctx-b": options[-1]}
    rng = random.Random(example)
    for _ in range(12):   # 12 batches of 20 decisions per context
        batch = decision_pb2.DecideBatchRequest(capsule=name)
        for context in list(world) * 20:
            request = batch.requests.add()
            request.input.struct_value.update({**sample, key: context})
        answer = admin.call(admin.decisions.DecideBatch, batch)
        feedback = decision_pb2.FeedbackBatchRequest(capsule=name)
        for result in answer.results:
            assert result.WhichOneof("result") == "decision", result
            d = result.decision
            assert d.option in options and 0 < d.propensity <= 1 and d.decision_id
            mean = BEST if d.option == world[d.context_key] else OTHER
            feedback.requests.add(decision_id=d.decision_id, reward=1.0 if rng.random() < mean else 0.0)
        fed = admin.call(admin.decisions.FeedbackBatch, feedback)
        assert all(r.WhichOneof("result") == "feedback" for r in fed.results)
    report = admin.call(admin.capsules.GetReport, capsule_pb2.GetReportRequest(name=name)).report
    contexts = report["contexts"]
    for context, best in world.items():
        assert contexts[context]["best_option"] == best, contexts[context]
    assert report["decisions"] == 2 * 12 * 20 and report["pending"] == 0
    listed = admin.call(admin.capsules.ListContexts, capsule_pb2.ListContextsRequest(parent=name, page_size=1))
    assert len(listed.contexts) == 1 and listed.next_page_token
    following = admin.call(admin.capsules.ListContexts, capsule_pb2.ListContextsRequest(
        parent=name, page_size=1, page_token=listed.next_page_token))
    assert {listed.contexts[0].key, following.contexts[0].key} == set(world) and not following.next_page_token


# --- every method against every scope ------------------------------------------------------

TENANT = "tenants/acme"
JOB = "tenants/acme/jobs/llm"
CAPSULE = "tenants/acme/jobs/llm/capsules/router"
OTHER_CAPSULE = "tenants/zeta/jobs/llm/capsules/router"


def _stream(request):
    return iter([request])


def _method_table(decision_id: str):
    """(method label, role needed, resource, call(api)) for every RPC but health."""
    d, c, a, au = "decisions", "capsules", "admin", "audit"
    feedback = decision_pb2.FeedbackRequest(capsule=CAPSULE, decision_id=decision_id, reward=1.0)
    missing = CAPSULE + "-missing"
    learning = struct_pb2.Struct()
    learning.update({"drift": {"capsule_delta": 0.001}})
    spec = struct_pb2.Struct()
    spec.update({"type": "bernoulli"})
    policy = struct_pb2.Struct()
    policy.update({})
    return [
        ("Decide", "decide", d, lambda api: api.call(api.decisions.Decide, decision_pb2.DecideRequest(capsule=CAPSULE))),
        ("DecideBatch", "decide", d, lambda api: _batch_code(api.call(
            api.decisions.DecideBatch, decision_pb2.DecideBatchRequest(
                capsule=CAPSULE, requests=[decision_pb2.DecideRequest()])))),
        ("DecideStream", "decide", d, lambda api: [_batch_code(r) for r in api.decisions.DecideStream(
            _stream(decision_pb2.DecideBatchRequest(capsule=CAPSULE, requests=[decision_pb2.DecideRequest()])),
            metadata=api.metadata, timeout=30)]),
        ("Feedback", "feedback", d, lambda api: api.call(api.decisions.Feedback, feedback)),
        ("FeedbackBatch", "feedback", d, lambda api: _batch_code(api.call(
            api.decisions.FeedbackBatch, decision_pb2.FeedbackBatchRequest(capsule=CAPSULE, requests=[feedback])))),
        ("InstallCapsule", "tenant_admin", c, lambda api: api.call(api.capsules.InstallCapsule,
                                                                   capsule_pb2.InstallCapsuleRequest(
                                                                       parent=JOB, capsule_id="router",
                                                                       options=["x", "y"]))),
        ("GetCapsule", "read", c, lambda api: api.call(api.capsules.GetCapsule, capsule_pb2.GetCapsuleRequest(name=CAPSULE))),
        ("ListCapsules", "read", c, lambda api: _listed(api.call(
            api.capsules.ListCapsules, capsule_pb2.ListCapsulesRequest(parent=JOB)))),
        ("DeleteCapsule", "tenant_admin", c, lambda api: api.call(
            api.capsules.DeleteCapsule, capsule_pb2.DeleteCapsuleRequest(name=missing))),
        ("UpdateLearningConfig", "tenant_admin", c, lambda api: api.call(
            api.capsules.UpdateLearningConfig, capsule_pb2.UpdateLearningConfigRequest(name=missing,
                                                                                       learning_config=learning))),
        ("UpdateRewardSpec", "tenant_admin", c, lambda api: api.call(
            api.capsules.UpdateRewardSpec, capsule_pb2.UpdateRewardSpecRequest(name=missing, reward_spec=spec))),
        ("UpdatePolicy", "tenant_admin", c, lambda api: api.call(
            api.capsules.UpdatePolicy, capsule_pb2.UpdatePolicyRequest(name=missing, policy=policy))),
        ("FreezeCapsule", "tenant_admin", c, lambda api: api.call(
            api.capsules.FreezeCapsule, capsule_pb2.FreezeCapsuleRequest(name=missing))),
        ("UnfreezeCapsule", "tenant_admin", c, lambda api: api.call(
            api.capsules.UnfreezeCapsule, capsule_pb2.UnfreezeCapsuleRequest(name=missing))),
        ("GetReport", "read", c, lambda api: api.call(api.capsules.GetReport, capsule_pb2.GetReportRequest(name=CAPSULE))),
        ("ListContexts", "read", c, lambda api: api.call(
            api.capsules.ListContexts, capsule_pb2.ListContextsRequest(parent=CAPSULE))),
        ("GetMemory", "read", c, lambda api: api.call(
            api.capsules.GetMemory, capsule_pb2.GetMemoryRequest(name=CAPSULE + "/memory"))),
        ("ReadLog", "read", au, lambda api: list(api.audit.ReadLog(
            audit_pb2.ReadLogRequest(parent=CAPSULE, limit=1), metadata=api.metadata, timeout=30))),
        ("VerifyChain", "admin", au, lambda api: api.call(api.audit.VerifyChain, audit_pb2.VerifyChainRequest())),
        ("CreateToken", "tenant_admin", a, lambda api: api.call(api.admin.CreateToken, admin_pb2.CreateTokenRequest(
            scopes=[admin_pb2.Scope(role="read", resource=JOB)], ttl_seconds=60))),
        ("ListTokens", "token_manager", a, lambda api: api.call(api.admin.ListTokens, admin_pb2.ListTokensRequest())),
        ("RevokeToken", "token_manager", a, lambda api: api.call(
            api.admin.RevokeToken, admin_pb2.RevokeTokenRequest(name="tokens/0000000000000000"))),
        ("Backup", "admin", a, lambda api: list(api.admin.Backup(admin_pb2.BackupRequest(), metadata=api.metadata,
                                                                 timeout=60))),
        ("Restore", "admin", a, lambda api: api.admin.Restore(iter([]), metadata=api.metadata, timeout=30)),
    ]


class _Denied(Exception):
    pass


def _batch_code(response):
    """A batch whose one item was refused for permission fails the table's check too."""
    for result in response.results:
        if result.WhichOneof("result") == "error" and result.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]:
            raise _Denied()
    return response


def _listed(response):
    if not response.capsules:
        raise _Denied()   # read on a job lists its capsules; without it the list is empty
    return response


# What each principal may do on CAPSULE; "token_manager" is any admin or tenant admin (each
# sees and revokes only the tokens it could have granted).
PRINCIPALS = {
    "admin": {"admin", "tenant_admin", "decide", "feedback", "read", "token_manager"},
    "tenant_admin:tenants/acme": {"tenant_admin", "decide", "feedback", "read", "token_manager"},
    "decide:tenants/acme/jobs/llm": {"decide"},
    "feedback:tenants/acme/jobs/llm/capsules/router": {"feedback"},
    "read:tenants/acme/jobs/llm": {"read"},
    "tenant_admin:tenants/zeta": {"token_manager"},
    "decide:tenants/zeta/jobs/llm": set(),
}


def _create_token(admin: Api, scope_text: str) -> str:
    role, _, resource = scope_text.partition(":")
    response = admin.call(admin.admin.CreateToken, admin_pb2.CreateTokenRequest(
        scopes=[admin_pb2.Scope(role=role, resource=resource)], ttl_seconds=600, display_name=scope_text))
    return response.secret


def test_every_method_against_every_scope(tmp_path):
    # A server of its own: the failed-auth block it provokes must not reach other tests.
    with ServerProcess(tmp_path / "data") as server:
        admin = Api(server.address, server.admin_key)
        try:
            _check_every_method_against_every_scope(server, admin)
        finally:
            admin.close()


def _check_every_method_against_every_scope(server, admin):
    install_plain(admin, JOB, "router")
    install_plain(admin, "tenants/zeta/jobs/llm", "router")
    decision_id = admin.call(admin.decisions.Decide, decision_pb2.DecideRequest(capsule=CAPSULE)).decision_id
    table = _method_table(decision_id)
    outcomes = {}
    for scope_text, roles in PRINCIPALS.items():
        api = Api(server.address, _create_token(admin, scope_text))
        try:
            for label, role, _, call in table:
                try:
                    call(api)
                    code = grpc.StatusCode.OK
                except _Denied:
                    code = grpc.StatusCode.PERMISSION_DENIED
                except grpc.RpcError as exc:
                    code = exc.code()
                allowed = role in roles
                outcomes[scope_text, label] = code
                if allowed:
                    assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), (
                        scope_text, label, code)
                else:
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (scope_text, label, code)
        finally:
            api.close()
    # Without a token, or with a bogus one, every method is UNAUTHENTICATED, until this peer
    # has failed 10 times in a minute: then it is refused outright (and not logged each time).
    codes = []
    for secret in (None, "syn_0123456789abcdef_" + "A" * 43, "not-a-token"):
        api = Api(server.address, secret)
        try:
            codes += [code_of(functools.partial(call, api)) for _, _, _, call in table]
        finally:
            api.close()
    assert codes[:10] == [grpc.StatusCode.UNAUTHENTICATED] * 10
    assert set(codes[10:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    # A valid token still gets through from the blocked peer.
    assert admin.call(admin.capsules.GetCapsule, capsule_pb2.GetCapsuleRequest(name=CAPSULE)).name == CAPSULE
    # A decide token cannot reach the other tenant's capsule of the same name.
    api = Api(server.address, _create_token(admin, "decide:tenants/acme/jobs/llm"))
    try:
        assert code_of(lambda: api.call(api.decisions.Decide, decision_pb2.DecideRequest(capsule=OTHER_CAPSULE))) \
            == grpc.StatusCode.PERMISSION_DENIED
    finally:
        api.close()


def test_revoked_and_expired_tokens_stop_working(server, admin):
    install_plain(admin, "tenants/revoke/jobs/j", "c")
    created = admin.call(admin.admin.CreateToken, admin_pb2.CreateTokenRequest(
        scopes=[admin_pb2.Scope(role="decide", resource="tenants/revoke/jobs/j")], ttl_seconds=2))
    api = Api(server.address, created.secret)
    try:
        request = decision_pb2.DecideRequest(capsule="tenants/revoke/jobs/j/capsules/c")
        assert api.call(api.decisions.Decide, request).decision_id
        time.sleep(2.2)   # expiry is kept in whole seconds: at most 2 s after creation
        assert code_of(lambda: api.call(api.decisions.Decide, request)) == grpc.StatusCode.UNAUTHENTICATED
        second = admin.call(admin.admin.CreateToken, admin_pb2.CreateTokenRequest(
            scopes=[admin_pb2.Scope(role="decide", resource="tenants/revoke/jobs/j")], ttl_seconds=600))
        api2 = Api(server.address, second.secret)
        assert api2.call(api2.decisions.Decide, request).decision_id
        admin.call(admin.admin.RevokeToken, admin_pb2.RevokeTokenRequest(name=second.token.name))
        assert code_of(lambda: api2.call(api2.decisions.Decide, request)) == grpc.StatusCode.UNAUTHENTICATED
        api2.close()
    finally:
        api.close()
    listed = admin.call(admin.admin.ListTokens, admin_pb2.ListTokensRequest(show_inactive=True))
    assert second.secret not in str(listed)   # only hashes are kept
    assert second.token.name in [t.name for t in listed.tokens]
    assert not (server.data / "tokens.json").read_text().count(second.secret.rsplit("_", 1)[1])


# --- bad input ---------------------------------------------------------------------------------


def test_malformed_oversized_and_non_finite_requests(admin):
    name = install_plain(admin, "tenants/bad/jobs/input", "c", options=("a", "b"))
    decide = admin.decisions.Decide
    nan_reward = failing(lambda: admin.call(admin.decisions.Feedback, decision_pb2.FeedbackRequest(
        capsule=name, decision_id=admin.call(decide, decision_pb2.DecideRequest(capsule=name)).decision_id,
        reward=float("nan"))))
    assert nan_reward.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(nan_reward)[0] == ["reward"]
    inf_metric = failing(lambda: admin.call(decide, decision_pb2.DecideRequest(capsule=name, metrics={"load": float("inf")})))
    assert inf_metric.code() == grpc.StatusCode.INVALID_ARGUMENT and details(inf_metric)[0] == ["metrics.load"]
    bad_name = failing(lambda: admin.call(decide, decision_pb2.DecideRequest(capsule="tenants/x/capsules/y")))
    assert bad_name.code() == grpc.StatusCode.INVALID_ARGUMENT and details(bad_name)[0] == ["capsule"]
    missing = failing(lambda: admin.call(decide, decision_pb2.DecideRequest(capsule=name + "x")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    unknown_id = failing(lambda: admin.call(admin.decisions.Feedback, decision_pb2.FeedbackRequest(
        capsule=name, decision_id="d-0000000000000000-0000000000000001", reward=1.0)))
    assert unknown_id.code() == grpc.StatusCode.NOT_FOUND
    d = admin.call(decide, decision_pb2.DecideRequest(capsule=name))
    admin.call(admin.decisions.Feedback, decision_pb2.FeedbackRequest(capsule=name, decision_id=d.decision_id, reward=1.0))
    again = failing(lambda: admin.call(admin.decisions.Feedback, decision_pb2.FeedbackRequest(
        capsule=name, decision_id=d.decision_id, reward=0.0)))
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS
    out_of_range = failing(lambda: admin.call(admin.decisions.Feedback, decision_pb2.FeedbackRequest(
        capsule=name, decision_id=admin.call(decide, decision_pb2.DecideRequest(capsule=name)).decision_id,
        reward=0.5)))
    assert out_of_range.code() == grpc.StatusCode.INVALID_ARGUMENT
    exists = failing(lambda: install_plain(admin, "tenants/bad/jobs/input", "c"))
    assert exists.code() == grpc.StatusCode.ALREADY_EXISTS
    admin.call(admin.capsules.FreezeCapsule, capsule_pb2.FreezeCapsuleRequest(name=name))
    frozen_twice = failing(lambda: admin.call(admin.capsules.FreezeCapsule, capsule_pb2.FreezeCapsuleRequest(name=name)))
    assert frozen_twice.code() == grpc.StatusCode.FAILED_PRECONDITION
    admin.call(admin.capsules.UnfreezeCapsule, capsule_pb2.UnfreezeCapsuleRequest(name=name))
    too_many = decision_pb2.DecideBatchRequest(capsule=name, requests=[decision_pb2.DecideRequest()] * 10_001)
    huge_batch = failing(lambda: admin.call(admin.decisions.DecideBatch, too_many))
    assert huge_batch.code() == grpc.StatusCode.INVALID_ARGUMENT and details(huge_batch)[0] == ["requests"]
    oversized = decision_pb2.DecideRequest(capsule=name, context_key="k" * (9 << 20))
    assert failing(lambda: admin.call(decide, oversized)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    long_key = failing(lambda: admin.call(decide, decision_pb2.DecideRequest(capsule=name, context_key="k" * 5000)))
    assert long_key.code() == grpc.StatusCode.INVALID_ARGUMENT
    garbage = admin.channel.unary_unary("/syntra.v1.DecisionService/Decide",
                                        request_serializer=lambda raw: raw,
                                        response_deserializer=decision_pb2.Decision.FromString)
    assert code_of(lambda: garbage(b"\xff\xff\xff", metadata=admin.metadata, timeout=10)) != grpc.StatusCode.OK
    # A batch item that fails its checks fails alone.
    mixed = decision_pb2.DecideBatchRequest(capsule=name, requests=[
        decision_pb2.DecideRequest(), decision_pb2.DecideRequest(capsule="nope"), decision_pb2.DecideRequest()])
    results = admin.call(admin.decisions.DecideBatch, mixed).results
    assert [r.WhichOneof("result") for r in results] == ["decision", "error", "decision"]
    assert results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert results[1].error.field == "requests[1].capsule"
    # After all of it the server still serves.
    assert admin.call(decide, decision_pb2.DecideRequest(capsule=name)).decision_id


# --- operations -------------------------------------------------------------------------------


def test_health_and_reflection_are_listed(server):
    channel = grpc.insecure_channel(server.address)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "syntra.v1.DecisionService", "syntra.v1.AdminService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        listed = {s.name for s in answers[0].list_services_response.service}
        assert {"syntra.v1.DecisionService", "syntra.v1.CapsuleService", "syntra.v1.AuditService",
                "syntra.v1.AdminService", "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= listed
    finally:
        channel.close()


def test_rate_limit_returns_retry_delay(tmp_path):
    # Half a token a second: the three calls of the burst leave the fourth short of one,
    # however slowly a loaded machine makes them (unless they take two seconds).
    with ServerProcess(tmp_path / "data", args=("--rate", "0.5", "--burst", "3")) as server:
        api = Api(server.address, server.admin_key)
        try:
            name = install_plain(api, "tenants/rl/jobs/j", "c")
            request = decision_pb2.DecideRequest(capsule=name)
            for _ in range(3):
                api.call(api.decisions.Decide, request)
            limited = failing(lambda: api.call(api.decisions.Decide, request))
            assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            retry = details(limited)[1]
            assert retry is not None and 0 < retry <= 2.0 + 1e-6   # one token at 0.5 per second
            time.sleep(retry + 0.05)
            assert api.call(api.decisions.Decide, request).decision_id
            # Install and read calls are not rate limited.
            assert api.call(api.capsules.GetCapsule, capsule_pb2.GetCapsuleRequest(name=name)).name == name
        finally:
            api.close()


def test_kill_9_mid_traffic_loses_nothing_acknowledged(tmp_path):
    server = ServerProcess(tmp_path / "data").start()
    acknowledged: list[str] = []
    fed: list[str] = []
    stop = threading.Event()
    try:
        api = Api(server.address, server.admin_key)
        name = install_plain(api, "tenants/crash/jobs/j", "c")

        def traffic():
            rng = random.Random(3)
            while not stop.is_set():
                try:
                    d = api.call(api.decisions.Decide, decision_pb2.DecideRequest(capsule=name, context_key="k"),
                                 timeout=5)
                    acknowledged.append(d.decision_id)
                    if rng.random() < 0.5:
                        api.call(api.decisions.Feedback, decision_pb2.FeedbackRequest(
                            capsule=name, decision_id=d.decision_id, reward=1.0), timeout=5)
                        fed.append(d.decision_id)
                except grpc.RpcError:
                    return

        workers = [threading.Thread(target=traffic) for _ in range(4)]
        for worker in workers:
            worker.start()
        time.sleep(1.5)
        server.kill()
        stop.set()
        for worker in workers:
            worker.join(30)
        api.close()
        assert len(acknowledged) > 20
        server.start()
        api = Api(server.address, server.admin_key)
        logged = {e.body["decision_id"]: e.kind for e in api.audit.ReadLog(
            audit_pb2.ReadLogRequest(parent=name, kinds=["decision"]), metadata=api.metadata, timeout=60)}
        feedback = {e.body["decision_id"] for e in api.audit.ReadLog(
            audit_pb2.ReadLogRequest(parent=name, kinds=["feedback"]), metadata=api.metadata, timeout=60)}
        assert set(acknowledged) <= set(logged)
        assert set(fed) <= feedback
        # A fed decision refuses a second outcome; an unfed acknowledged one takes its first.
        first = failing(lambda: api.call(api.decisions.Feedback, decision_pb2.FeedbackRequest(
            capsule=name, decision_id=fed[0], reward=0.0)))
        assert first.code() == grpc.StatusCode.ALREADY_EXISTS
        unfed = next(i for i in acknowledged if i not in feedback)
        api.call(api.decisions.Feedback, decision_pb2.FeedbackRequest(capsule=name, decision_id=unfed, reward=0.0))
        verified = api.call(api.audit.VerifyChain, audit_pb2.VerifyChainRequest(), timeout=120)
        assert verified.ok, verified.problems
        api.close()
        assert server.terminate() == 0
    finally:
        stop.set()
        server.kill()


def test_sigterm_drains_flushes_and_checkpoints(tmp_path):
    server = ServerProcess(tmp_path / "data").start()
    try:
        api = Api(server.address, server.admin_key)
        name = install_plain(api, "tenants/stop/jobs/j", "c")
        ids = [api.call(api.decisions.Decide, decision_pb2.DecideRequest(capsule=name)).decision_id for _ in range(50)]
        api.close()
        checkpoints = tmp_path / "data" / "store" / "checkpoints"
        before = set(checkpoints.iterdir()) if checkpoints.exists() else set()
        assert server.terminate() == 0
        assert set(checkpoints.iterdir()) - before, "no checkpoint was written on shutdown"
        server.start()
        api = Api(server.address, server.admin_key)
        capsule = api.call(api.capsules.GetCapsule, capsule_pb2.GetCapsuleRequest(name=name))
        assert capsule.decisions == 50 and capsule.pending == 50
        api.call(api.decisions.Feedback, decision_pb2.FeedbackRequest(capsule=name, decision_id=ids[-1], reward=1.0))
        api.close()
    finally:
        server.terminate()
        server.kill()
