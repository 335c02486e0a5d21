"""``syntra.v1.AuditService``: read the hash-chained log, and verify it.

ReadLog streams WAL records as they are on disk (synced and verified as they are read),
each with its chained digest, so a reader can check what it was sent against a later
VerifyChain or its own copy of the chain.
"""

from __future__ import annotations

import asyncio
import itertools
import json

from syntra_core.learner import format_decision_id

from syntra.errors import StorageCorrupt
from syntra.names import JOB_NAME, TENANT_NAME
from syntra.server.convert import capsule_name, fill_struct
from syntra.server.rpc import ServiceState, streaming, unary
from syntra.server.status import invalid
from syntra.store.records import (
    REFUSED_OPTION,
    DecisionRecord,
    FeedbackRecord,
    RecordType,
    decode_json,
)
from syntra.v1 import audit_pb2, audit_pb2_grpc
from syntra.verify import verify_store

KINDS = {
    RecordType.DECISION: "decision",
    RecordType.FEEDBACK: "feedback",
    RecordType.AUDIT: "audit",
    RecordType.LEARNING: "learning",
    RecordType.CAPSULE_INSTALLED: "install",
    RecordType.CAPSULE_UNINSTALLED: "uninstall",
    RecordType.ENGINE_CREATED: "engine",
}
READ_CHUNK = 512
FOLLOW_POLL_SECONDS = 0.05


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, state: ServiceState):
        self.state = state

    @streaming
    async def ReadLog(self, request, context):
        engine = self.state.live_engine()
        parent = request.parent
        if parent and not (TENANT_NAME.fullmatch(parent) or JOB_NAME.fullmatch(parent)):
            capsule_name(parent, "parent")   # a capsule, installed or not: an uninstalled one's log stays
        unknown = set(request.kinds) - set(KINDS.values())
        if unknown:
            raise invalid("kinds", f"unknown kinds {sorted(unknown)}; known: {sorted(KINDS.values())}")
        self.state.authorize(context, "read", parent)
        kinds = set(request.kinds)
        prefix = parent + "/" if parent else ""
        sent = 0
        position = max(request.start_sequence, 1)
        while True:
            records = engine.read_log(position)
            while True:
                chunk = await self.state.run_blocking(_take, records, READ_CHUNK)
                for record in chunk:
                    position = record.sequence + 1
                    entry = _entry(engine, record)
                    if kinds and entry.kind not in kinds:
                        continue
                    if prefix and not (entry.capsule + "/").startswith(prefix):
                        continue
                    yield entry
                    sent += 1
                    if request.limit and sent >= request.limit:
                        return
                if len(chunk) < READ_CHUNK:
                    break
            if not request.follow:
                return
            while engine.durable_sequence < position:
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
                if self.state.engine is not engine:   # restored or stopping: the stream ends
                    return

    @unary
    async def VerifyChain(self, request, context):
        engine = self.state.live_engine()
        self.state.authorize(context, "admin", "")
        report = await self.state.run_blocking(verify_store, engine.path)
        head = ""
        if report.ok and report.last_sequence:
            last = await self.state.run_blocking(lambda: next(engine.read_log(report.last_sequence), None))
            head = last.digest.hex() if last is not None else ""
        return audit_pb2.VerifyChainResponse(
            ok=report.ok, records=report.records, head_digest=head,
            checkpoints=report.checkpoints,
            problems=[_problem(p) for p in report.problems], notes=list(report.notes))


def _take(records, count: int) -> list:
    return list(itertools.islice(records, count))


def _problem(problem) -> str:
    where = ", ".join(f"{k} {v}" for k, v in (("segment", problem.segment), ("sequence", problem.sequence),
                                              ("checkpoint", problem.checkpoint)) if v is not None)
    return f"{problem.area}: {problem.message}" + (f" ({where})" if where else "")


def _entry(engine, record) -> audit_pb2.LogEntry:
    kind = KINDS.get(record.rtype, "unknown")
    entry = audit_pb2.LogEntry(sequence=record.sequence, kind=kind, digest=record.digest.hex())
    if record.rtype == RecordType.DECISION:
        d = DecisionRecord.decode(record.payload)
        config = engine.capsule_config(d.capsule_uid)
        refused = d.option_index == REFUSED_OPTION
        body = {"decision_id": format_decision_id(d.sequence, config["tag"]), "sequence": d.sequence,
                "option": None if refused else config["options"][d.option_index],
                "option_index": d.option_index if not refused else -1, "propensity": d.propensity,
                "context_key": d.context_key, "refused": refused}
        for name, text in (("result", d.result), ("inputs", d.inputs)):
            if text:
                body[name] = json.loads(text)
        entry.capsule, entry.time_unix_nanos = config["name"], d.ts_ns
    elif record.rtype == RecordType.FEEDBACK:
        f = FeedbackRecord.decode(record.payload)
        config = engine.capsule_config(f.capsule_uid)
        body = {"decision_id": format_decision_id(f.sequence, config["tag"]), "sequence": f.sequence,
                "reward": f.reward}
        if f.cost is not None:
            body["cost_microcents"] = f.cost
        if f.detail:
            body["detail"] = json.loads(f.detail)
        entry.capsule, entry.time_unix_nanos = config["name"], f.ts_ns
    else:
        try:
            body = decode_json(record.payload, record.rtype)
        except StorageCorrupt:
            body = {}
        entry.capsule = str(body.get("name") or body.get("capsule") or "")
        if isinstance(body.get("ts_ns"), int):
            entry.time_unix_nanos = body["ts_ns"]
    fill_struct(entry.body, body)
    return entry
