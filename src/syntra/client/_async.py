"""The asyncio client, :class:`AsyncClient`: :class:`~syntra.client.Client`'s methods as
coroutines (and async iterators for the streams), with the same arguments and behaviour."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import IO, Any, Self

import grpc

from syntra.client import _calls as calls
from syntra.client._channel import DEFAULT_TARGET, Settings
from syntra.client._convert import (
    Decision,
    decide_batch_request,
    fallback_decision,
    log_entry_dict,
)
from syntra.client._errors import SyntraRpcError, error_from_rpc, falls_back, malformed
from syntra.v1 import admin_pb2


class AsyncClient:
    """An asyncio client of a Syntra server's ``syntra.v1`` API; see :class:`Client` for
    the arguments. Its channel (a ``grpc.aio`` one, if the caller passes ``channel``) is
    made on first use, in the running event loop."""

    def __init__(self, target: str = DEFAULT_TARGET, *, token: str | None = None, timeout: float = 1.0,
                 retries: int = 3, initial_backoff: float = 0.05, max_backoff: float = 1.0,
                 channel: grpc.aio.Channel | None = None, options: Iterable[tuple[str, Any]] = (),
                 tls: bool | bytes = False):
        self._settings = Settings.check(target, token, timeout, retries, initial_backoff, max_backoff, tls)
        self._options = tuple(options)
        self._owns_channel = channel is None
        self._channel = channel
        self._stubs: dict[str, Any] = {}

    # --- plumbing -------------------------------------------------------------------------

    def _stub(self, name: str):
        if self._channel is None:
            channel_options = self._settings.channel_options(self._options)
            credentials = self._settings.credentials()
            self._channel = (grpc.aio.insecure_channel(self._settings.target, options=channel_options)
                             if credentials is None else
                             grpc.aio.secure_channel(self._settings.target, credentials, options=channel_options))
        if name not in self._stubs:
            self._stubs[name] = calls.STUBS[name](self._channel)
        return self._stubs[name]

    async def _invoke(self, call: calls.Unary, seconds: float) -> Any:
        method = getattr(self._stub(call.stub), call.method)
        try:
            return await method(call.request, timeout=seconds, metadata=self._settings.metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None

    async def _unary(self, call: calls.Unary, timeout: float | None) -> Any:
        seconds = self._settings.call_timeout(timeout)
        if call.parse_retried is None:
            return call.parse(await self._invoke(call, seconds))
        attempts = calls.Attempts(call, self._settings.backoff_delays(), seconds)
        while True:
            try:
                response = await self._invoke(call, attempts.remaining())
                break
            except SyntraRpcError as error:
                if attempts.landed(error):
                    response = None
                    break
                await asyncio.sleep(attempts.delay_after(error))
        return attempts.answer(response)

    async def _all_pages(self, page_call, timeout: float | None) -> list[dict]:
        """Every item of a paged list call; ``page_call(page_token)`` makes one page's call."""
        found: list[dict] = []
        page_token = ""
        while True:
            page, page_token = await self._unary(page_call(page_token), timeout)
            found.extend(page)
            if not page_token:
                return found

    def _stream_timeout(self, timeout: float | None) -> float | None:
        return None if timeout is None else self._settings.call_timeout(timeout)

    async def close(self) -> None:
        """Close the channel, if the client made it."""
        if self._owns_channel and self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stubs.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    # --- decisions ------------------------------------------------------------------------

    async def decide(self, capsule: str, context_key: str = "", *, features: dict | None = None,
                     metrics: dict | None = None, input: Any = None, fallback: str | None = None,
                     timeout: float | None = None) -> Decision:
        """See :meth:`Client.decide`."""
        calls.check_fallback(fallback)
        call = calls.decide(capsule, context_key, features, metrics, input)
        try:
            return await self._unary(call, timeout)
        except SyntraRpcError as error:
            if fallback is None or not falls_back(error):
                raise
            return fallback_decision(capsule, context_key, fallback, error)

    async def feedback(self, decision: Decision | str, reward: float | None = None, *, capsule: str | None = None,
                       components: dict | None = None, signal: str | None = None,
                       cost_microcents: int | None = None, taken_option: str | None = None,
                       taken_propensity: float | None = None, timeout: float | None = None) -> bool:
        """See :meth:`Client.feedback`."""
        call = calls.feedback(decision, reward, capsule, components, signal, cost_microcents, taken_option,
                              taken_propensity)
        if call is None:
            return False
        return await self._unary(call, timeout)

    async def decide_batch(self, capsule: str, requests: list[dict], timeout: float | None = None
                           ) -> list[Decision | SyntraRpcError]:
        return await self._unary(calls.decide_batch(capsule, requests), timeout)

    async def feedback_batch(self, capsule: str, items: list[dict], timeout: float | None = None
                             ) -> list[SyntraRpcError | None]:
        return await self._unary(calls.feedback_batch(capsule, items), timeout)

    async def decide_stream(self, capsule: str, batches: Iterable[list[dict]] | AsyncIterable[list[dict]], *,
                            timeout: float | None = None) -> AsyncIterator[list[Decision | SyntraRpcError]]:
        """See :meth:`Client.decide_stream`; ``batches`` may be an async iterable."""
        sizes: collections.deque[int] = collections.deque()
        failures: list[BaseException] = []

        async def each_batch():
            if isinstance(batches, AsyncIterable):
                async for batch in batches:
                    yield batch
            else:
                for batch in batches:
                    yield batch

        async def requests():
            try:
                async for batch in each_batch():
                    request = decide_batch_request(capsule, batch)
                    sizes.append(len(request.requests))
                    yield request
            except Exception as exc:  # noqa: BLE001  gRPC would swallow it: end the stream, raise it below
                failures.append(exc)

        stream = self._stub("decisions").DecideStream(requests(), timeout=self._stream_timeout(timeout),
                                                      metadata=self._settings.metadata)
        try:
            async for response in stream:
                if not sizes:
                    raise malformed("more stream responses than requests")
                yield calls.decide_results(response, sizes.popleft())
        except grpc.RpcError as error:
            if failures:
                raise failures[0] from None
            raise error_from_rpc(error) from None
        finally:
            stream.cancel()
        if failures:
            raise failures[0]

    # --- capsules -------------------------------------------------------------------------

    async def install_capsule(self, parent: str, capsule_id: str = "", *, yaml_spec: str | None = None,
                              lyc: bytes | None = None, options: list[str] | None = None,
                              reward: dict | None = None, learning: dict | None = None, limits: dict | None = None,
                              context: dict | None = None, policy: dict | None = None, budget: dict | None = None,
                              shadow: bool = False, timeout: float | None = None) -> dict:
        """See :meth:`Client.install_capsule`."""
        return await self._unary(calls.install_capsule(
            parent, capsule_id, yaml_spec=yaml_spec, lyc=lyc, options=options, reward=reward, learning=learning,
            limits=limits, context=context, policy=policy, budget=budget, shadow=shadow), timeout)

    async def get_capsule(self, name: str, *, timeout: float | None = None) -> dict:
        return await self._unary(calls.by_name("GetCapsule", name), timeout)

    async def list_capsules(self, parent: str = "", *, timeout: float | None = None) -> list[dict]:
        return await self._all_pages(lambda page_token: calls.list_capsules_page(parent, page_token), timeout)

    async def delete_capsule(self, name: str, *, timeout: float | None = None) -> None:
        await self._unary(calls.by_name("DeleteCapsule", name, parse=lambda response: None), timeout)

    async def freeze(self, name: str, *, timeout: float | None = None) -> dict:
        return await self._unary(calls.by_name("FreezeCapsule", name), timeout)

    async def unfreeze(self, name: str, *, timeout: float | None = None) -> dict:
        return await self._unary(calls.by_name("UnfreezeCapsule", name), timeout)

    async def update_learning_config(self, name: str, config: dict, *, timeout: float | None = None) -> dict:
        return await self._unary(calls.update("UpdateLearningConfig", name, "learning_config", config), timeout)

    async def update_reward_spec(self, name: str, spec: dict, *, timeout: float | None = None) -> dict:
        return await self._unary(calls.update("UpdateRewardSpec", name, "reward_spec", spec), timeout)

    async def update_policy(self, name: str, policy: dict, *, timeout: float | None = None) -> dict:
        return await self._unary(calls.update("UpdatePolicy", name, "policy", policy), timeout)

    async def report(self, name: str, *, timeout: float | None = None) -> dict:
        return await self._unary(calls.report(name), timeout)

    async def list_contexts(self, name: str, *, timeout: float | None = None) -> list[dict]:
        return await self._all_pages(lambda page_token: calls.list_contexts_page(name, page_token), timeout)

    async def memory(self, name: str, *, timeout: float | None = None) -> dict:
        return await self._unary(calls.memory(name), timeout)

    # --- audit ----------------------------------------------------------------------------

    async def read_log(self, parent: str = "", *, start_sequence: int = 1, kinds: Iterable[str] = (),
                       limit: int = 0, follow: bool = False, timeout: float | None = None) -> AsyncIterator[dict]:
        """See :meth:`Client.read_log`."""
        request = calls.read_log_request(parent, start_sequence, kinds, limit, follow)
        stream = self._stub("audit").ReadLog(request, timeout=self._stream_timeout(timeout),
                                             metadata=self._settings.metadata)
        try:
            async for entry in stream:
                yield log_entry_dict(entry)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        finally:
            stream.cancel()

    async def verify_chain(self, *, timeout: float | None = None) -> dict:
        return await self._unary(calls.verify_chain(), timeout)

    # --- admin ----------------------------------------------------------------------------

    async def create_token(self, scopes: list, *, ttl_seconds: int = 0, display_name: str = "",
                           timeout: float | None = None) -> tuple[dict, str]:
        return await self._unary(calls.create_token(scopes, ttl_seconds, display_name), timeout)

    async def list_tokens(self, show_inactive: bool = False, *, timeout: float | None = None) -> list[dict]:
        return await self._unary(calls.list_tokens(show_inactive), timeout)

    async def revoke_token(self, name: str, *, timeout: float | None = None) -> dict:
        return await self._unary(calls.revoke_token(name), timeout)

    async def backup(self, out: IO[bytes], *, timeout: float | None = None) -> dict:
        """See :meth:`Client.backup`."""
        receiver = calls.BackupReceiver()
        stream = self._stub("admin").Backup(admin_pb2.BackupRequest(), timeout=self._stream_timeout(timeout),
                                            metadata=self._settings.metadata)
        try:
            async for chunk in stream:
                data = receiver.chunk(chunk)
                if data:
                    await asyncio.to_thread(out.write, data)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        finally:
            stream.cancel()
        return receiver.finish()

    async def restore(self, source: IO[bytes], *, timeout: float | None = None) -> dict:
        """See :meth:`Client.restore`."""
        manifest = await asyncio.to_thread(calls.restore_manifest, source)

        async def chunks():
            yield admin_pb2.RestoreChunk(manifest=manifest)
            while data := await asyncio.to_thread(source.read, calls.RESTORE_CHUNK_BYTES):
                yield admin_pb2.RestoreChunk(data=data)

        try:
            response = await self._stub("admin").Restore(chunks(), timeout=self._stream_timeout(timeout),
                                                         metadata=self._settings.metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        return calls.restore_dict(response)
