"""The blocking client, :class:`Client`."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Iterator
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


class Client:
    """A blocking client of a Syntra server's ``syntra.v1`` API.

    ``token`` is the bearer secret (default: the SYNTRA_TOKEN environment variable).
    ``timeout`` is each unary call's deadline in seconds (every method takes ``timeout=``
    to override it); streaming calls have none unless given. UNAVAILABLE is retried up to
    ``retries`` times with exponential backoff from ``initial_backoff`` to ``max_backoff``
    seconds, by gRPC's retry policy on the channel the client makes (a ``channel`` the
    caller passes is the caller's: its options, its lifetime). Failures raise
    :class:`SyntraRpcError`; bad arguments raise :class:`syntra.errors.InvalidArgument`.
    One client may be shared by many threads (a gRPC channel is).
    """

    def __init__(self, target: str = DEFAULT_TARGET, *, token: str | None = None, timeout: float = 1.0,
                 retries: int = 3, initial_backoff: float = 0.05, max_backoff: float = 1.0,
                 channel: grpc.Channel | None = None, options: Iterable[tuple[str, Any]] = (),
                 tls: bool | bytes = False):
        self._settings = Settings.check(target, token, timeout, retries, initial_backoff, max_backoff, tls)
        self._owns_channel = channel is None
        if channel is None:
            channel_options = self._settings.channel_options(tuple(options))
            credentials = self._settings.credentials()
            channel = (grpc.insecure_channel(target, options=channel_options) if credentials is None
                       else grpc.secure_channel(target, credentials, options=channel_options))
        self._channel = channel
        self._stubs = {name: stub(channel) for name, stub in calls.STUBS.items()}

    # --- plumbing -------------------------------------------------------------------------

    def _invoke(self, call: calls.Unary, seconds: float) -> Any:
        method = getattr(self._stubs[call.stub], call.method)
        try:
            return method(call.request, timeout=seconds, metadata=self._settings.metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None

    def _unary(self, call: calls.Unary, timeout: float | None) -> Any:
        seconds = self._settings.call_timeout(timeout)
        if call.parse_retried is None:
            return call.parse(self._invoke(call, seconds))
        attempts = calls.Attempts(call, self._settings.backoff_delays(), seconds)
        while True:
            try:
                response = self._invoke(call, attempts.remaining())
                break
            except SyntraRpcError as error:
                if attempts.landed(error):
                    response = None
                    break
                time.sleep(attempts.delay_after(error))
        return attempts.answer(response)

    def _all_pages(self, page_call, timeout: float | None) -> list[dict]:
        """Every item of a paged list call; ``page_call(page_token)`` makes one page's call."""
        found: list[dict] = []
        page_token = ""
        while True:
            page, page_token = self._unary(page_call(page_token), timeout)
            found.extend(page)
            if not page_token:
                return found

    def _stream_timeout(self, timeout: float | None) -> float | None:
        return None if timeout is None else self._settings.call_timeout(timeout)

    def close(self) -> None:
        """Close the channel, if the client made it."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- decisions ------------------------------------------------------------------------

    def decide(self, capsule: str, context_key: str = "", *, features: dict | None = None,
               metrics: dict | None = None, input: Any = None, fallback: str | None = None,
               timeout: float | None = None) -> Decision:
        """Ask ``capsule`` to decide in ``context_key`` (with ``features``, ``metrics`` or a
        program's ``input``, as the capsule takes them).

        With ``fallback`` (an option name), any failure but INVALID_ARGUMENT (unreachable,
        too slow, refused, a malformed answer) returns ``Decision(option=fallback,
        fallback=True, error="CODE: message")`` instead of raising.
        """
        calls.check_fallback(fallback)
        call = calls.decide(capsule, context_key, features, metrics, input)
        try:
            return self._unary(call, timeout)
        except SyntraRpcError as error:
            if fallback is None or not falls_back(error):
                raise
            return fallback_decision(capsule, context_key, fallback, error)

    def feedback(self, decision: Decision | str, reward: float | None = None, *, capsule: str | None = None,
                 components: dict | None = None, signal: str | None = None, cost_microcents: int | None = None,
                 taken_option: str | None = None, taken_propensity: float | None = None,
                 timeout: float | None = None) -> bool:
        """Report how ``decision`` (a Decision, or its id with ``capsule=``) worked out.

        True once recorded. False, sending nothing, for a fallback decision or one a budget
        refused (there is nothing to record). Retried on UNAVAILABLE; when a retry finds the
        outcome already recorded (the earlier attempt's reply was lost), that is success.
        """
        call = calls.feedback(decision, reward, capsule, components, signal, cost_microcents, taken_option,
                              taken_propensity)
        if call is None:
            return False
        return self._unary(call, timeout)

    def decide_batch(self, capsule: str, requests: list[dict], timeout: float | None = None
                     ) -> list[Decision | SyntraRpcError]:
        """Many decisions in one call (dict keys: context_key, features, metrics, input,
        capsule); each item is its Decision or its own error."""
        return self._unary(calls.decide_batch(capsule, requests), timeout)

    def feedback_batch(self, capsule: str, items: list[dict], timeout: float | None = None
                       ) -> list[SyntraRpcError | None]:
        """Many outcomes in one call (dict keys: decision_id, reward, components, signal,
        cost_microcents, taken_option, taken_propensity, capsule); None per recorded item."""
        return self._unary(calls.feedback_batch(capsule, items), timeout)

    def decide_stream(self, capsule: str, batches: Iterable[list[dict]], *, timeout: float | None = None
                      ) -> Iterator[list[Decision | SyntraRpcError]]:
        """Decide over one bidirectional stream: one result list per batch, in order."""
        sizes: collections.deque[int] = collections.deque()
        failures: list[BaseException] = []

        def requests():
            try:
                for batch in batches:
                    request = decide_batch_request(capsule, batch)
                    sizes.append(len(request.requests))
                    yield request
            except Exception as exc:  # noqa: BLE001  gRPC would swallow it: end the stream, raise it below
                failures.append(exc)

        stream = self._stubs["decisions"].DecideStream(requests(), timeout=self._stream_timeout(timeout),
                                                       metadata=self._settings.metadata)
        return self._decide_stream(stream, sizes, failures)

    def _decide_stream(self, stream, sizes, failures) -> Iterator[list[Decision | SyntraRpcError]]:
        try:
            for response in stream:
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

    def install_capsule(self, parent: str, capsule_id: str = "", *, yaml_spec: str | None = None,
                        lyc: bytes | None = None, options: list[str] | None = None, reward: dict | None = None,
                        learning: dict | None = None, limits: dict | None = None, context: dict | None = None,
                        policy: dict | None = None, budget: dict | None = None, shadow: bool = False,
                        timeout: float | None = None) -> dict:
        """Install a capsule under ``parent`` (tenants/{t}/jobs/{j}): from a YAML spec, from
        compiled Lycan, or (neither) as a plain bandit over ``options``. Returns it."""
        return self._unary(calls.install_capsule(
            parent, capsule_id, yaml_spec=yaml_spec, lyc=lyc, options=options, reward=reward, learning=learning,
            limits=limits, context=context, policy=policy, budget=budget, shadow=shadow), timeout)

    def get_capsule(self, name: str, *, timeout: float | None = None) -> dict:
        return self._unary(calls.by_name("GetCapsule", name), timeout)

    def list_capsules(self, parent: str = "", *, timeout: float | None = None) -> list[dict]:
        """Every capsule under ``parent`` the caller may read (all pages)."""
        return self._all_pages(lambda page_token: calls.list_capsules_page(parent, page_token), timeout)

    def delete_capsule(self, name: str, *, timeout: float | None = None) -> None:
        self._unary(calls.by_name("DeleteCapsule", name, parse=lambda response: None), timeout)

    def freeze(self, name: str, *, timeout: float | None = None) -> dict:
        return self._unary(calls.by_name("FreezeCapsule", name), timeout)

    def unfreeze(self, name: str, *, timeout: float | None = None) -> dict:
        return self._unary(calls.by_name("UnfreezeCapsule", name), timeout)

    def update_learning_config(self, name: str, config: dict, *, timeout: float | None = None) -> dict:
        return self._unary(calls.update("UpdateLearningConfig", name, "learning_config", config), timeout)

    def update_reward_spec(self, name: str, spec: dict, *, timeout: float | None = None) -> dict:
        return self._unary(calls.update("UpdateRewardSpec", name, "reward_spec", spec), timeout)

    def update_policy(self, name: str, policy: dict, *, timeout: float | None = None) -> dict:
        return self._unary(calls.update("UpdatePolicy", name, "policy", policy), timeout)

    def report(self, name: str, *, timeout: float | None = None) -> dict:
        """What the capsule has learned (``Capsule.report()``)."""
        return self._unary(calls.report(name), timeout)

    def list_contexts(self, name: str, *, timeout: float | None = None) -> list[dict]:
        """Every context the capsule has seen (all pages)."""
        return self._all_pages(lambda page_token: calls.list_contexts_page(name, page_token), timeout)

    def memory(self, name: str, *, timeout: float | None = None) -> dict:
        """The capsule's learned memory (``name`` is the capsule's, with or without /memory)."""
        return self._unary(calls.memory(name), timeout)

    # --- audit ----------------------------------------------------------------------------

    def read_log(self, parent: str = "", *, start_sequence: int = 1, kinds: Iterable[str] = (), limit: int = 0,
                 follow: bool = False, timeout: float | None = None) -> Iterator[dict]:
        """The log's entries under ``parent`` from ``start_sequence``, oldest first; with
        ``follow``, new ones as they become durable (until the iterator is closed)."""
        request = calls.read_log_request(parent, start_sequence, kinds, limit, follow)
        stream = self._stubs["audit"].ReadLog(request, timeout=self._stream_timeout(timeout),
                                              metadata=self._settings.metadata)
        return self._read_log(stream)

    def _read_log(self, stream) -> Iterator[dict]:
        try:
            for entry in stream:
                yield log_entry_dict(entry)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        finally:
            stream.cancel()

    def verify_chain(self, *, timeout: float | None = None) -> dict:
        """Check the whole chain on the server (admin): ok, records, head_digest, problems."""
        return self._unary(calls.verify_chain(), timeout)

    # --- admin ----------------------------------------------------------------------------

    def create_token(self, scopes: list, *, ttl_seconds: int = 0, display_name: str = "",
                     timeout: float | None = None) -> tuple[dict, str]:
        """A new token with ``scopes`` ("role:resource", "admin", or (role, resource)):
        its dict and its secret (shown only here)."""
        return self._unary(calls.create_token(scopes, ttl_seconds, display_name), timeout)

    def list_tokens(self, show_inactive: bool = False, *, timeout: float | None = None) -> list[dict]:
        return self._unary(calls.list_tokens(show_inactive), timeout)

    def revoke_token(self, name: str, *, timeout: float | None = None) -> dict:
        return self._unary(calls.revoke_token(name), timeout)

    def backup(self, out: IO[bytes], *, timeout: float | None = None) -> dict:
        """Write a backup bundle to ``out``; returns its manifest, once the bytes received
        match it (size and BLAKE3; DATA_LOSS if not)."""
        receiver = calls.BackupReceiver()
        stream = self._stubs["admin"].Backup(admin_pb2.BackupRequest(), timeout=self._stream_timeout(timeout),
                                             metadata=self._settings.metadata)
        try:
            for chunk in stream:
                data = receiver.chunk(chunk)
                if data:
                    out.write(data)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        finally:
            stream.cancel()
        return receiver.finish()

    def restore(self, source: IO[bytes], *, timeout: float | None = None) -> dict:
        """Replace the server's store with the bundle in ``source`` (a seekable binary file)."""
        manifest = calls.restore_manifest(source)

        def chunks():
            yield admin_pb2.RestoreChunk(manifest=manifest)
            while data := source.read(calls.RESTORE_CHUNK_BYTES):
                yield admin_pb2.RestoreChunk(data=data)

        try:
            response = self._stubs["admin"].Restore(chunks(), timeout=self._stream_timeout(timeout),
                                                    metadata=self._settings.metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        return calls.restore_dict(response)
