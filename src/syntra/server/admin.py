"""``syntra.v1.AdminService``: tokens, backup and restore.

A token's secret exists only in the CreateToken response; the server keeps its hash. Who
may grant a scope may create, see and revoke tokens that carry it: ``admin`` any,
``tenant_admin`` those within its tenant.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import blake3
import grpc
from google.protobuf import timestamp_pb2

from syntra.server.auth import InvalidScope, InvalidTokenRequest, Scope, UnknownToken
from syntra.server.rpc import ServiceState, streaming, unary
from syntra.server.status import RpcFailure, invalid, not_found
from syntra.store.backup import BackupInvalid, stage_restore, write_backup
from syntra.v1 import admin_pb2, admin_pb2_grpc

CHUNK_BYTES = 256 << 10
MAX_DISPLAY_NAME = 128
MAX_SCOPES = 32
TOKEN_PREFIX = "tokens/"


def _timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def token_message(info) -> admin_pb2.Token:
    return admin_pb2.Token(
        name=TOKEN_PREFIX + info.id, display_name=info.display_name,
        scopes=[admin_pb2.Scope(role=s.role, resource=s.resource) for s in info.scopes],
        create_time=_timestamp(info.create_time), expire_time=_timestamp(info.expire_time),
        revoke_time=_timestamp(info.revoke_time), creator=info.creator)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """``restore`` is the server's: it closes the engine, swaps the store and reopens it."""

    def __init__(self, state: ServiceState, restore, max_restore_bytes: int):
        self.state = state
        self._restore = restore
        self._max_restore_bytes = max_restore_bytes

    def _granter(self, context):
        principal = self.state.principal(context)
        if not principal.is_admin and not any(s.role == "tenant_admin" for s in principal.scopes):
            raise RpcFailure(grpc.StatusCode.PERMISSION_DENIED, f"{principal.name} may not manage tokens")
        return principal

    @unary
    async def CreateToken(self, request, context):
        principal = self._granter(context)
        if not request.scopes:
            raise invalid("scopes", "at least one scope is required")
        if len(request.scopes) > MAX_SCOPES:
            raise invalid("scopes", f"at most {MAX_SCOPES}")
        if len(request.display_name) > MAX_DISPLAY_NAME:
            raise invalid("display_name", f"at most {MAX_DISPLAY_NAME} characters")
        scopes = []
        for index, given in enumerate(request.scopes):
            try:
                scope = Scope.parse(given.role, given.resource)
            except InvalidScope as exc:
                raise invalid(f"scopes[{index}].{exc.field}", str(exc)) from None
            if not principal.may_grant(scope):
                raise RpcFailure(grpc.StatusCode.PERMISSION_DENIED, f"{principal.name} may not grant {scope}")
            scopes.append(scope)
        if request.ttl_seconds < 0:
            raise invalid("ttl_seconds", "must not be negative")
        try:
            info, secret = await self.state.run_blocking(
                self.state.tokens.create, scopes, request.ttl_seconds, request.display_name, principal.name)
        except InvalidTokenRequest as exc:
            raise invalid(exc.field, str(exc)) from None
        return admin_pb2.CreateTokenResponse(token=token_message(info), secret=secret)

    @unary
    async def ListTokens(self, request, context):
        principal = self._granter(context)
        tokens = self.state.tokens.list(show_inactive=request.show_inactive)
        return admin_pb2.ListTokensResponse(
            tokens=[token_message(t) for t in tokens if principal.may_manage(t)])

    @unary
    async def RevokeToken(self, request, context):
        principal = self._granter(context)
        if not request.name.startswith(TOKEN_PREFIX):
            raise invalid("name", "must be tokens/{id}")
        token_id = request.name[len(TOKEN_PREFIX):]
        try:
            info = self.state.tokens.get(token_id)
            # Not found either way: a tenant admin must not learn other tenants' token ids.
            if not principal.may_manage(info):
                raise UnknownToken(token_id)
            info = await self.state.run_blocking(self.state.tokens.revoke, token_id)
        except (UnknownToken, InvalidTokenRequest):
            raise not_found(f"no token {request.name!r}") from None
        return token_message(info)

    @streaming
    async def Backup(self, request, context):
        engine = self.state.live_engine()
        self.state.authorize(context, "admin", "")
        with tempfile.TemporaryFile(dir=engine.path.parent) as bundle:
            info = await self.state.run_blocking(write_backup, engine, bundle)
            yield admin_pb2.BackupChunk(manifest=admin_pb2.BackupManifest(
                wal_sequence=info.wal_sequence, head_digest=info.head_digest.hex(),
                size_bytes=info.size_bytes, blake3=info.blake3))
            bundle.seek(0)
            while chunk := await self.state.run_blocking(bundle.read, CHUNK_BYTES):
                yield admin_pb2.BackupChunk(data=chunk)

    @unary
    async def Restore(self, request_iterator, context):
        engine = self.state.live_engine()
        self.state.authorize(context, "admin", "")
        data_dir = Path(engine.path)
        staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.restore-", dir=data_dir.parent))
        try:
            with tempfile.TemporaryFile(dir=data_dir.parent) as bundle:
                manifest = await self._receive(request_iterator, bundle)
                bundle.seek(0)
                try:
                    info = await self.state.run_blocking(stage_restore, bundle, staging, expected_blake3=manifest.blake3,
                                                  max_bytes=self._max_restore_bytes)
                except BackupInvalid as exc:
                    raise invalid("data", f"the bundle does not verify: {exc}") from None
            await self._restore(staging)
        finally:
            if staging.exists():
                await self.state.run_blocking(_remove_tree, staging)
        return admin_pb2.RestoreResponse(wal_sequence=info.wal_sequence, head_digest=info.head_digest.hex(),
                                         capsules=info.capsules)

    async def _receive(self, request_iterator, bundle) -> admin_pb2.BackupManifest:
        manifest = None
        size = 0
        digest = blake3.blake3()
        async for chunk in request_iterator:
            kind = chunk.WhichOneof("chunk")
            if kind == "manifest":
                if manifest is not None or size:
                    raise invalid("manifest", "comes once, first")
                manifest = chunk.manifest
            elif kind == "data":
                if manifest is None:
                    raise invalid("manifest", "must come before the data")
                size += len(chunk.data)
                if size > min(manifest.size_bytes, self._max_restore_bytes):
                    raise invalid("data", f"more bytes than the manifest's {manifest.size_bytes} (or the"
                                          f" server's limit of {self._max_restore_bytes})")
                digest.update(chunk.data)
                await self.state.run_blocking(bundle.write, chunk.data)
        if manifest is None:
            raise invalid("manifest", "is required")
        if size != manifest.size_bytes:
            raise invalid("data", f"the bundle is {size} bytes, the manifest says {manifest.size_bytes} (truncated?)")
        if digest.hexdigest() != manifest.blake3:
            raise invalid("data", "the bundle's BLAKE3 does not match the manifest's")
        await self.state.run_blocking(bundle.flush)
        await self.state.run_blocking(os.fsync, bundle.fileno())
        return manifest


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
