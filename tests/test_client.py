"""syntra.client against a real ``syntra serve`` on 127.0.0.1: the blocking and asyncio
clients install, decide, report outcomes and read back what the server learned; errors
carry the status code, message and the field at fault."""

from __future__ import annotations

import asyncio
import io
import math

import grpc
import pytest

from syntra.client import AsyncClient, Client, Decision, SyntraRpcError
from syntra.errors import InvalidArgument
from tests.grpc_server import ServerProcess

JOB = "tenants/acme/jobs/web"
BERNOULLI = {"type": "bernoulli"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("client") / "data", durability="none") as process:
        yield process


@pytest.fixture
def client(server):
    with Client(server.address, token=server.admin_key, timeout=10) as made:
        yield made


def install(client, capsule_id: str, options=("red", "green", "blue")) -> str:
    capsule = client.install_capsule(JOB, capsule_id, options=list(options), reward=BERNOULLI)
    return capsule["name"]


def pulls_by_option(client, name: str, key: str) -> dict[str, int]:
    context = next(c for c in client.list_contexts(name) if c["key"] == key)
    return {stats["option"]: stats["pulls"] for stats in context["options"]}


# --- the blocking client --------------------------------------------------------------------

def test_install_decide_feedback_report(client):
    capsule = client.install_capsule(JOB, "checkout", options=["red", "green", "blue"], reward=BERNOULLI,
                                     learning={"algorithm": "thompson"})
    name = f"{JOB}/capsules/checkout"
    assert capsule["name"] == name
    assert capsule["options"] == ["red", "green", "blue"]
    assert capsule["reward_spec"]["type"] == "bernoulli"
    assert capsule["algorithm"] == "thompson"
    assert capsule["shadow"] is False and capsule["program"] is False

    decision = client.decide(name, "home")
    assert isinstance(decision, Decision)
    assert decision.capsule == name and decision.context_key == "home"
    assert decision.option in capsule["options"]
    assert capsule["options"][decision.option_index] == decision.option
    assert decision.decision_id and 0 < decision.propensity <= 1
    assert decision.fallback is False and decision.error is None and decision.refused is False
    assert client.get_capsule(name)["pending"] == 1

    assert client.feedback(decision, reward=1.0) is True
    after = client.get_capsule(name)
    assert after["decisions"] == 1 and after["pending"] == 0

    report = client.report(name)
    assert report["name"] == name and report["decisions"] == 1
    assert report["contexts"]["home"]["pulls"][decision.option] == 1
    assert report["contexts"]["home"]["mean_reward"][decision.option] == 1.0
    contexts = client.list_contexts(name)
    assert [c["key"] for c in contexts] == ["home"]
    chosen = next(s for s in contexts[0]["options"] if s["option"] == decision.option)
    assert chosen == {"option": decision.option, "pulls": 1, "mean_reward": 1.0}
    assert all(s["mean_reward"] is None for s in contexts[0]["options"] if s["option"] != decision.option)
    assert name in [c["name"] for c in client.list_capsules(JOB)]


def test_feedback_by_decision_id_needs_the_capsule(client):
    name = install(client, "by-id")
    decision = client.decide(name, "k")
    with pytest.raises(InvalidArgument) as raised:
        client.feedback(decision.decision_id, 0.0)
    assert raised.value.field == "capsule"
    assert client.get_capsule(name)["pending"] == 1   # nothing was sent
    assert client.feedback(decision.decision_id, 0.0, capsule=name) is True
    assert pulls_by_option(client, name, "k")[decision.option] == 1


def test_errors_carry_code_message_and_field(client):
    name = install(client, "errors")
    decision = client.decide(name, "k")
    with pytest.raises(SyntraRpcError) as raised:
        client.feedback(decision, reward=math.nan)
    error = raised.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == "reward" and "finite" in error.message
    assert str(error).startswith("INVALID_ARGUMENT: reward")
    assert client.get_capsule(name)["pending"] == 1   # the bad feedback changed nothing

    with pytest.raises(SyntraRpcError) as raised:
        client.decide(f"{JOB}/capsules/nowhere", "k")
    assert raised.value.code is grpc.StatusCode.NOT_FOUND
    assert "nowhere" in raised.value.message

    # A bad request raises even with a fallback: it is the caller's bug.
    with pytest.raises(SyntraRpcError) as raised:
        client.decide("not a capsule name", "k", fallback="red")
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT and raised.value.field == "capsule"

    assert client.feedback(decision, reward=0.0) is True
    with pytest.raises(SyntraRpcError) as raised:   # a first attempt: a real duplicate
        client.feedback(decision, reward=1.0)
    assert raised.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert pulls_by_option(client, name, "k")[decision.option] == 1


def test_batches_report_each_item(client):
    name = install(client, "batch")
    results = client.decide_batch(name, [{"context_key": "a"}, {"context_key": "b"},
                                         {"context_key": "c", "capsule": f"{JOB}/capsules/absent"}])
    assert [type(r) for r in results] == [Decision, Decision, SyntraRpcError]
    assert [r.context_key for r in results[:2]] == ["a", "b"]
    assert results[2].code is grpc.StatusCode.NOT_FOUND

    outcomes = client.feedback_batch(name, [
        {"decision_id": results[0].decision_id, "reward": 1.0},
        {"decision_id": results[1].decision_id, "reward": math.nan},
        {"decision_id": results[0].decision_id, "reward": 0.0},
    ])
    assert outcomes[0] is None
    assert outcomes[1].code is grpc.StatusCode.INVALID_ARGUMENT and outcomes[1].field == "requests[1].reward"
    assert outcomes[2].code is grpc.StatusCode.ALREADY_EXISTS   # not a retry: reported as is
    assert client.get_capsule(name)["pending"] == 1   # b's bad reward left it pending

    with pytest.raises(InvalidArgument) as raised:
        client.decide_batch(name, [{"context_key": "a", "contxt": "typo"}])
    assert raised.value.field == "requests[0].contxt"


def test_decide_stream_answers_each_batch_in_order(client):
    name = install(client, "stream")
    batches = [[{"context_key": f"s{i}"} for i in range(size)] for size in (3, 1, 5)]
    answers = list(client.decide_stream(name, iter(batches)))
    assert [len(a) for a in answers] == [3, 1, 5]
    assert [[d.context_key for d in a] for a in answers] == [[r["context_key"] for r in b] for b in batches]
    ids = [d.decision_id for a in answers for d in a]
    assert len(set(ids)) == 9
    assert client.get_capsule(name)["pending"] == 9


def test_decide_stream_raises_a_bad_batch_after_the_good_ones(client):
    name = install(client, "stream-bad")
    stream = client.decide_stream(name, [[{"context_key": "a"}], "not a batch"])
    assert len(next(stream)) == 1
    with pytest.raises(InvalidArgument) as raised:
        next(stream)
    assert raised.value.field == "requests"


def test_contexts_and_capsules_follow_pages(client):
    name = install(client, "paged")
    decisions = client.decide_batch(name, [{"context_key": f"ctx-{i:03d}"} for i in range(60)])
    assert client.feedback_batch(name, [{"decision_id": d.decision_id, "reward": 1.0} for d in decisions]) == [None] * 60
    assert [c["key"] for c in client.list_contexts(name)] == [f"ctx-{i:03d}" for i in range(60)]

    many = "tenants/acme/jobs/many"
    for i in range(51):
        client.install_capsule(many, f"c{i:02d}", options=["x", "y"], reward=BERNOULLI)
    assert [c["name"] for c in client.list_capsules(many)] == [f"{many}/capsules/c{i:02d}" for i in range(51)]


def test_capsule_lifecycle(client):
    name = install(client, "lifecycle")
    assert client.freeze(name)["lifecycle"] == "frozen"
    assert client.unfreeze(name)["lifecycle"] != "frozen"
    updated = client.update_learning_config(name, {"algorithm": "ucb1"})
    assert updated["algorithm"] == "ucb1" and updated["learning_config"]["algorithm"] == "ucb1"
    spec = client.update_reward_spec(name, {"type": "continuous", "range": [0, 10]})["reward_spec"]
    assert spec["type"] == "continuous" and spec["range"] == [0, 10]
    decision = client.decide(name, "k")
    assert client.feedback(decision, reward=7.5)
    memory = client.memory(name)
    assert memory["name"] == name + "/memory" and memory["contexts"] == 1 and memory["state_bytes"] > 0
    client.delete_capsule(name)
    with pytest.raises(SyntraRpcError) as raised:
        client.get_capsule(name)
    assert raised.value.code is grpc.StatusCode.NOT_FOUND


def test_tokens_scope_what_a_caller_may_do(server, client):
    name = install(client, "scoped")
    token, secret = client.create_token([f"decide:{name}", ("read", JOB)], ttl_seconds=600, display_name="app")
    assert token["name"].startswith("tokens/") and token["display_name"] == "app"
    assert token["scopes"] == [f"decide:{name}", f"read:{JOB}"]
    assert token["create_time"] < token["expire_time"] and token["revoke_time"] is None
    assert token["name"] in [t["name"] for t in client.list_tokens()]

    with Client(server.address, token=secret, timeout=10) as app:
        decision = app.decide(name, "k")
        with pytest.raises(SyntraRpcError) as raised:
            app.feedback(decision, reward=1.0)   # decide scope only
        assert raised.value.code is grpc.StatusCode.PERMISSION_DENIED
        revoked = client.revoke_token(token["name"])
        assert revoked["revoke_time"] is not None
        with pytest.raises(SyntraRpcError) as raised:
            app.decide(name, "k")
        assert raised.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert token["name"] not in [t["name"] for t in client.list_tokens()]
    assert token["name"] in [t["name"] for t in client.list_tokens(show_inactive=True)]
    with pytest.raises(InvalidArgument) as raised:
        client.create_token([("decide",)])
    assert raised.value.field == "scopes[0]"


def test_log_verify_backup_and_restore(client):
    name = install(client, "audited")
    decision = client.decide(name, "k")
    client.feedback(decision, reward=1.0)
    entries = list(client.read_log(name, kinds=["decision", "feedback"]))
    assert [e["kind"] for e in entries] == ["decision", "feedback"]
    assert all(e["capsule"] == name for e in entries)
    assert entries[0]["body"]["decision_id"] == decision.decision_id == entries[1]["body"]["decision_id"]
    assert entries[0]["body"]["option"] == decision.option and entries[1]["body"]["reward"] == 1
    assert entries[0]["sequence"] < entries[1]["sequence"] and len(entries[1]["digest"]) == 64
    assert list(client.read_log(name, start_sequence=entries[1]["sequence"] + 1, kinds=["decision"])) == []

    chain = client.verify_chain(timeout=30)
    assert chain["ok"] is True and chain["problems"] == [] and chain["records"] >= entries[1]["sequence"]

    bundle = io.BytesIO()
    manifest = client.backup(bundle, timeout=30)
    assert manifest["size_bytes"] == len(bundle.getvalue()) > 0
    assert manifest["wal_sequence"] >= entries[1]["sequence"]
    capsules = len(client.list_capsules())
    bundle.seek(0)
    restored = client.restore(bundle, timeout=60)
    assert restored["wal_sequence"] == manifest["wal_sequence"] and restored["capsules"] == capsules
    assert client.get_capsule(name)["decisions"] == 1


def test_token_comes_from_the_environment_and_a_given_channel_stays_open(server, monkeypatch):
    name = f"{JOB}/capsules/checkout"
    monkeypatch.setenv("SYNTRA_TOKEN", server.admin_key)
    channel = grpc.insecure_channel(server.address)
    try:
        with Client(channel=channel, timeout=10) as client:
            assert client.get_capsule(name)["name"] == name
        with Client(channel=channel, timeout=10) as client:   # the first did not close it
            assert client.get_capsule(name)["name"] == name
        monkeypatch.delenv("SYNTRA_TOKEN")
        with Client(channel=channel, timeout=10) as client, pytest.raises(SyntraRpcError) as raised:
            client.get_capsule(name)
        assert raised.value.code is grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()


# --- the asyncio client ---------------------------------------------------------------------

def test_async_client_decides_learns_and_reports_errors(server):
    async def scenario():
        async with AsyncClient(server.address, token=server.admin_key, timeout=10) as client:
            capsule = await client.install_capsule(JOB, "async", options=["a", "b"], reward=BERNOULLI)
            name = capsule["name"]
            decision = await client.decide(name, "home")
            assert decision.option in ("a", "b") and decision.decision_id and not decision.fallback
            assert await client.feedback(decision, reward=1.0) is True
            report = await client.report(name)
            assert report["contexts"]["home"]["pulls"][decision.option] == 1

            results = await client.decide_batch(name, [{"context_key": "x"}, {"context_key": "y"}])
            outcomes = await client.feedback_batch(name, [{"decision_id": d.decision_id, "reward": 0.0}
                                                          for d in results])
            assert outcomes == [None, None]

            async def batches():
                for size in (2, 3):
                    yield [{"context_key": "z"}] * size
            answers = [answer async for answer in client.decide_stream(name, batches())]
            assert [len(a) for a in answers] == [2, 3]
            assert (await client.get_capsule(name))["pending"] == 5
            answers = []
            with pytest.raises(InvalidArgument) as raised:
                async for answer in client.decide_stream(name, [[{"context_key": "z"}], [{"contxt": "z"}]]):
                    answers.append(answer)
            assert len(answers) == 1 and raised.value.field == "requests[0].contxt"

            with pytest.raises(SyntraRpcError) as raised:
                await client.feedback(answers[0][0], reward=math.inf)
            assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT and raised.value.field == "reward"
            with pytest.raises(SyntraRpcError) as raised:
                await client.decide(f"{JOB}/capsules/absent", "k")
            assert raised.value.code is grpc.StatusCode.NOT_FOUND
            entries = [e async for e in client.read_log(name, kinds=["feedback"])]
            assert len(entries) == 3
            assert [c["key"] for c in await client.list_contexts(name)] == ["home", "x", "y", "z"]

    asyncio.run(scenario())


def test_client_arguments_are_checked():
    for arguments, field in (({"timeout": 0}, "timeout"), ({"retries": 9}, "retries"),
                             ({"initial_backoff": 2.0, "max_backoff": 1.0}, "max_backoff")):
        with pytest.raises(InvalidArgument) as raised:
            Client("127.0.0.1:1", **arguments)
        assert raised.value.field == field
    with Client("127.0.0.1:1") as client:
        for call, field in ((lambda: client.decide(f"{JOB}/capsules/x", "k", fallback=""), "fallback"),
                            (lambda: client.decide(f"{JOB}/capsules/x", 7), "context_key"),
                            (lambda: client.decide(f"{JOB}/capsules/x", metrics={"load": "high"}), "metrics.load"),
                            (lambda: client.feedback("d-1", "1.0", capsule=f"{JOB}/capsules/x"), "reward"),
                            (lambda: client.read_log(limit=-1), "limit"),
                            (lambda: client.install_capsule(JOB, "x", options="ab"), "options")):
            with pytest.raises(InvalidArgument) as raised:
                call()
            assert raised.value.field == field
