"""``syntra.v1.CapsuleService``: capsules as resources.

Installing, deleting and changing a capsule needs ``tenant_admin`` on its tenant (or
``admin``); reading it needs ``read`` on it or its job. Work that writes the WAL
synchronously or runs under a capsule's lock for long runs on the worker threads.
"""

from __future__ import annotations

import base64
import binascii

from syntra.authoring import install_arguments
from syntra.names import JOB_NAME, TENANT_NAME
from syntra.server.convert import (
    capsule_message,
    capsule_name,
    fill_struct,
    struct_to_dict,
)
from syntra.server.rpc import ServiceState, unary
from syntra.server.status import invalid
from syntra.v1 import capsule_pb2, capsule_pb2_grpc

DEFAULT_PAGE = 50
MAX_PAGE = 1000
MAX_SPEC_BYTES = 1 << 20
MEMORY_SUFFIX = "/memory"


def page_size(value: int) -> int:
    if value < 0:
        raise invalid("page_size", f"must not be negative, got {value}")
    return min(value or DEFAULT_PAGE, MAX_PAGE)


def encode_page_token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode()


def decode_page_token(token: str) -> str | None:
    if not token:
        return None
    try:
        last = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        last = None
    if last is None or encode_page_token(last) != token:
        raise invalid("page_token", "is not a token from a previous response")
    return last


def _scope_prefix(parent: str) -> str:
    """The name prefix of what ``parent`` (a tenant, a job or empty) holds."""
    if not parent:
        return ""
    if JOB_NAME.fullmatch(parent) or TENANT_NAME.fullmatch(parent):
        return parent + "/"
    raise invalid("parent", f"must be tenants/{{tenant}} or tenants/{{tenant}}/jobs/{{job}}, got {parent[:200]!r}")


class CapsuleServicer(capsule_pb2_grpc.CapsuleServiceServicer):
    def __init__(self, state: ServiceState):
        self.state = state

    def _capsule(self, context, role: str, name: str, field: str = "name"):
        return self.state.capsule(context, role, name, field)[1]

    @unary
    async def InstallCapsule(self, request, context):
        engine = self.state.live_engine()
        if not JOB_NAME.fullmatch(request.parent):
            raise invalid("parent", f"must be tenants/{{tenant}}/jobs/{{job}}, got {request.parent[:200]!r}")
        source = request.WhichOneof("source")
        arguments = {}
        capsule_id = request.capsule_id
        if source == "yaml_spec":
            if len(request.yaml_spec) > MAX_SPEC_BYTES:
                raise invalid("yaml_spec", f"must be at most {MAX_SPEC_BYTES} bytes")
            given = (["options"] if request.options else []) + [
                f for f in ("reward_spec", "learning_config", "limits", "context_spec") if request.HasField(f)]
            if given:
                raise invalid(given[0], "comes from the YAML spec; give it there")
            policy = struct_to_dict(request.policy, "policy", integral=True) if request.HasField("policy") else None
            spec_name, arguments = install_arguments(request.yaml_spec, policy=policy)
            capsule_id = capsule_id or spec_name
        else:
            arguments["options"] = list(request.options)
            for field, argument in (("reward_spec", "reward"), ("learning_config", "learning")):
                if request.HasField(field):
                    arguments[argument] = struct_to_dict(getattr(request, field), field, integral=True)
            if source == "lyc":
                arguments["lyc"] = request.lyc
                for field, argument in (("limits", "limits"), ("context_spec", "context"), ("policy", "policy")):
                    if request.HasField(field):
                        arguments[argument] = struct_to_dict(getattr(request, field), field, integral=True)
            else:
                for field in ("limits", "context_spec", "policy"):
                    if request.HasField(field):
                        raise invalid(field, "belongs to a program: give lyc or yaml_spec")
        if request.HasField("budget"):
            arguments["budget"] = struct_to_dict(request.budget, "budget", integral=True)
        if request.shadow:
            arguments["shadow"] = True
        name = capsule_name(f"{request.parent}/capsules/{capsule_id}", "capsule_id")
        self.state.authorize(context, "tenant_admin", name)
        capsule = await self.state.run_blocking(engine.install, name, **arguments)
        return capsule_message(capsule)

    @unary
    async def GetCapsule(self, request, context):
        return capsule_message(self._capsule(context, "read", request.name))

    @unary
    async def ListCapsules(self, request, context):
        engine = self.state.live_engine()
        prefix = _scope_prefix(request.parent)
        principal = self.state.principal(context)
        size = page_size(request.page_size)
        after = decode_page_token(request.page_token)
        listed = []
        more = False
        for capsule in engine.capsules():   # sorted by name
            name = capsule.name
            if not name.startswith(prefix) or (after is not None and name <= after):
                continue
            if not principal.allows("read", name):
                continue
            if len(listed) == size:
                more = True
                break
            listed.append(capsule)
        return capsule_pb2.ListCapsulesResponse(
            capsules=[capsule_message(c) for c in listed],
            next_page_token=encode_page_token(listed[-1].name) if more else "")

    @unary
    async def DeleteCapsule(self, request, context):
        capsule = self._capsule(context, "tenant_admin", request.name)
        await self.state.run_blocking(self.state.live_engine().uninstall, capsule.name)
        return capsule_pb2.DeleteCapsuleResponse()

    @unary
    async def UpdateLearningConfig(self, request, context):
        capsule = self._capsule(context, "tenant_admin", request.name)
        config = struct_to_dict(request.learning_config, "learning_config", integral=True)
        await self.state.run_blocking(capsule.update_learning, config)
        return capsule_message(capsule)

    @unary
    async def UpdateRewardSpec(self, request, context):
        capsule = self._capsule(context, "tenant_admin", request.name)
        if not request.HasField("reward_spec"):
            raise invalid("reward_spec", "is required")
        spec = struct_to_dict(request.reward_spec, "reward_spec", integral=True)
        await self.state.run_blocking(capsule.update_reward_spec, spec)
        return capsule_message(capsule)

    @unary
    async def UpdatePolicy(self, request, context):
        capsule = self._capsule(context, "tenant_admin", request.name)
        if not request.HasField("policy"):
            raise invalid("policy", "is required")
        policy = struct_to_dict(request.policy, "policy", integral=True)
        await self.state.run_blocking(capsule.update_policy, policy)
        return capsule_message(capsule)

    @unary
    async def FreezeCapsule(self, request, context):
        capsule = self._capsule(context, "tenant_admin", request.name)
        await self.state.run_blocking(capsule.freeze)
        return capsule_message(capsule)

    @unary
    async def UnfreezeCapsule(self, request, context):
        capsule = self._capsule(context, "tenant_admin", request.name)
        await self.state.run_blocking(capsule.unfreeze)
        return capsule_message(capsule)

    @unary
    async def GetReport(self, request, context):
        capsule = self._capsule(context, "read", request.name)
        report = await self.state.run_blocking(capsule.report)
        message = capsule_pb2.Report(name=capsule.name)
        fill_struct(message.report, report)
        return message

    @unary
    async def ListContexts(self, request, context):
        capsule = self._capsule(context, "read", request.parent, "parent")
        size = page_size(request.page_size)
        after = decode_page_token(request.page_token)
        # One more than asked: whether it exists says whether there is a next page.
        found = await self.state.run_blocking(capsule.contexts, start_after=after, limit=size + 1)
        page = found[:size]
        contexts = []
        for entry in page:
            item = capsule_pb2.Context(key=str(entry["key"]), best_option=entry["best_option"] or "")
            for stats in entry["options"]:
                option = item.options.add(option=stats["option"], pulls=stats["pulls"])
                if stats["mean_reward"] is not None:
                    option.mean_reward = stats["mean_reward"]
            contexts.append(item)
        more = len(found) > size
        return capsule_pb2.ListContextsResponse(
            contexts=contexts, next_page_token=encode_page_token(str(page[-1]["key"])) if more else "")

    @unary
    async def GetMemory(self, request, context):
        if not request.name.endswith(MEMORY_SUFFIX):
            raise invalid("name", "must be tenants/{tenant}/jobs/{job}/capsules/{capsule}/memory")
        capsule = self._capsule(context, "read", request.name[: -len(MEMORY_SUFFIX)])
        memory = await self.state.run_blocking(capsule.memory)
        message = capsule_pb2.Memory(name=request.name, contexts=memory["contexts"], pending=memory["pending"],
                                     state_bytes=memory["state_bytes"])
        fill_struct(message.state, memory["state"])
        return message


__all__ = ["CapsuleServicer"]
