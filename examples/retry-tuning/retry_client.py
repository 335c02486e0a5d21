"""RetryClient: ``requests`` with the retry policy a Syntra capsule learns per endpoint.

A drop-in for ``requests.get``/``post``/... (same arguments, a real ``requests.Response``
back, requests' own exceptions after the policy's last attempt). For every logical call it
asks the retry-tuning capsule (examples/retry-tuning) which retry policy to use against the
endpoint, given the endpoint's recent failure rate and p99 latency, runs the call under
that policy and reports whether it worked out, so the capsule learns per endpoint (hard
down, flaky, healthy) which policy suits it.

Run a server and install the capsule once::

    SYNTRA_ADMIN_KEY=... syntra serve --data ./syntra-data
    syntra capsule install tenants/acme/jobs/http --spec examples/retry-tuning/capsule.yaml

then, with this directory on ``sys.path``::

    import syntra.client
    from retry_client import RetryClient

    syntra_client = syntra.client.Client("127.0.0.1:7443", token=secret, timeout=0.2)
    http = RetryClient(syntra_client, "tenants/acme/jobs/http/capsules/retry-tuning", deadline=2.0)
    response = http.get("https://inventory.internal/items", params={"sku": "A-1"}, timeout=1.5)
    response.raise_for_status()

The policy table the program computes is also here, for the fallback and for capsules
whose decisions carry no value:

>>> retry_policy("exponential_backoff", failure_rate=0.25, p99_ms=250)
RetryPolicy(attempts=4, base_delay_ms=125, multiplier=2)
>>> [retry_policy("exponential_backoff", 0.25, 250).delay_before(i) for i in (1, 2, 3)]
[0.125, 0.25, 0.5]
>>> endpoint_of("https://user:pw@API.example.com:8443/v1/items?page=2#top")
'https://api.example.com:8443/v1/items'
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import math
import numbers
import threading
import time
import urllib.parse
from typing import Any, Self

import requests

from syntra.client import Client, Decision
from syntra.errors import InvalidArgument

logger = logging.getLogger(__name__)

OPTIONS = ("no_retry", "fixed_3x", "exponential_backoff")
# The p99 an endpoint is assumed to have before any of its calls has succeeded.
DEFAULT_P99_MS = 100.0
# An endpoint whose last this-many attempts all failed is down (a circuit breaker's test).
DOWN_AFTER = 10
# Bounds on what a capsule's answer may make a caller do: a wrong program must not make
# a caller try a hundred times or sleep for minutes.
MAX_ATTEMPTS = 10
MAX_DELAY_SECONDS = 30.0
# Endpoints whose windows are kept; the least recently used is forgotten beyond this
# (URLs with ids in their path would otherwise grow the table without bound).
MAX_ENDPOINTS = 1024
# Syntra's limit on a context key; a longer endpoint is cut and tagged with its hash.
MAX_CONTEXT_KEY = 256

# Transient failures worth another try. An SSLError is a ConnectionError too, but a
# certificate problem does not go away by trying again.
RETRIED_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
NEVER_RETRIED_ERRORS = (requests.exceptions.SSLError,)


def failed_status(status: int) -> bool:
    """Whether an HTTP status is a failure of the dependency (5xx, or 429 Too Many Requests)."""
    return status >= 500 or status == 429


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Try up to ``attempts`` times; before retry i (1-based) wait
    ``base_delay_ms * multiplier ** (i - 1)`` milliseconds."""

    attempts: int
    base_delay_ms: float
    multiplier: float

    def delay_before(self, retry: int) -> float:
        """Seconds to wait before retry ``retry`` (1 is the second attempt)."""
        return min(self.base_delay_ms * self.multiplier ** (retry - 1) / 1000.0, MAX_DELAY_SECONDS)

    @classmethod
    def from_value(cls, value: Any) -> RetryPolicy | None:
        """The policy in a decision's value ``[attempts, base_delay_ms, multiplier]``, or
        None when the value is not one (absent, or out of bounds)."""
        if not isinstance(value, list | tuple) or len(value) != 3:
            return None
        if not all(isinstance(part, numbers.Real) and not isinstance(part, bool) and math.isfinite(part)
                   for part in value):
            return None
        attempts, base_delay_ms, multiplier = value
        if attempts != int(attempts) or not 1 <= attempts <= MAX_ATTEMPTS or base_delay_ms < 0 or multiplier < 0:
            return None
        return cls(int(attempts), base_delay_ms, multiplier)


def retry_policy(option: str, failure_rate: float, p99_ms: float) -> RetryPolicy:
    """The policy ``option`` stands for, by the formula of examples/retry-tuning/program.lycs.

    ``no_retry`` is ``[1, 0, 1]``; ``fixed_3x`` is ``[3, round(p99), 1]``;
    ``exponential_backoff`` is ``[n, round(p99 / 2), 2]`` with
    ``n = clamp(2 + round(10 * failure_rate), 2, 6)``. ``round`` is half to even, as in
    Lycan. Raises :class:`InvalidArgument` for an option that is none of :data:`OPTIONS`.
    """
    if option == "no_retry":
        return RetryPolicy(1, 0, 1)
    if option == "fixed_3x":
        return RetryPolicy(3, round(p99_ms), 1)
    if option == "exponential_backoff":
        return RetryPolicy(max(2, min(6, 2 + round(10 * failure_rate))), round(p99_ms / 2), 2)
    raise InvalidArgument("option", f"must be one of {', '.join(OPTIONS)}, got {option!r}")


def endpoint_of(url: str) -> str:
    """The endpoint a URL calls: ``scheme://host[:port]/path``, without credentials, query
    or fragment, at most :data:`MAX_CONTEXT_KEY` ASCII characters (a longer one is cut and
    ends with ``~`` and a hash of the whole, so an endpoint is its own endpoint)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"   # an IPv6 address
    port = f":{parts.port}" if parts.port is not None else ""
    endpoint = f"{parts.scheme}://{host}{port}{parts.path or '/'}"
    if len(endpoint) > MAX_CONTEXT_KEY or not endpoint.isascii():
        digest = hashlib.blake2b(endpoint.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
        endpoint = endpoint.encode("ascii", "backslashreplace").decode("ascii")
        endpoint = f"{endpoint[:MAX_CONTEXT_KEY - len(digest) - 1]}~{digest}"
    return endpoint


@dataclasses.dataclass(frozen=True)
class EndpointStats:
    """What the window of an endpoint's recent attempts says about it."""

    endpoint: str
    failure_rate: float        # failed attempts / attempts in the window (0 with none)
    p99_ms: float              # p99 latency of the window's successful attempts
    samples: int               # attempts in the window
    failure_streak: int        # failed attempts in a row, up to the latest


class _Window:
    """An endpoint's recent attempts: (succeeded, latency ms) pairs, the latest last."""

    def __init__(self, size: int):
        self.attempts: collections.deque[tuple[bool, float]] = collections.deque(maxlen=size)
        self.failure_streak = 0

    def record(self, succeeded: bool, latency_ms: float) -> None:
        self.attempts.append((succeeded, latency_ms))
        self.failure_streak = 0 if succeeded else self.failure_streak + 1

    def stats(self, endpoint: str, default_p99_ms: float) -> EndpointStats:
        latencies = sorted(latency for succeeded, latency in self.attempts if succeeded)
        failures = len(self.attempts) - len(latencies)
        failure_rate = failures / len(self.attempts) if self.attempts else 0.0
        # Nearest-rank percentile: a value some attempt really took.
        p99 = latencies[math.ceil(0.99 * len(latencies)) - 1] if latencies else default_p99_ms
        return EndpointStats(endpoint, failure_rate, p99, len(self.attempts), self.failure_streak)


@dataclasses.dataclass
class _Outcome:
    """How a logical call went, filled in as its attempts run."""

    attempts: int = 0
    succeeded: bool = False
    seconds: float = 0.0


class RetryClient:
    """HTTP calls with the retry policy a retry-tuning capsule picks per endpoint.

    ``syntra`` is the Syntra client and ``capsule`` the capsule's name
    (tenants/{t}/jobs/{j}/capsules/{c}); ``session`` the ``requests.Session`` to send with
    (default: one of the client's own, closed by :meth:`close`); ``window`` how many recent
    attempts per endpoint the failure rate and p99 are computed over.

    Reward: 1 when the logical call succeeded (an answer that is not 5xx or 429) within
    ``deadline`` seconds from its first attempt (any time, without a deadline); also 1
    when the endpoint was down (its last ``down_after`` attempts had all failed) and the
    call gave up after one attempt within the deadline, since failing fast is the best a
    call to a dead dependency can do and retrying it is the retry storm the capsule should
    learn to avoid (``down_after=None``: never); else 0.

    When Syntra cannot decide (down, slow, refusing), the call runs under the ``fallback``
    option's policy (:func:`retry_policy`) and reports nothing; how long a decision may take
    is the Syntra client's ``timeout`` and ``retries``. A failed feedback is logged and never
    fails the call. Safe to share between threads (as far as ``session`` is).
    """

    def __init__(self, syntra: Client, capsule: str, *, session: requests.Session | None = None,
                 window: int = 200, deadline: float | None = None, fallback: str = "no_retry",
                 default_p99_ms: float = DEFAULT_P99_MS, down_after: int | None = DOWN_AFTER):
        if not isinstance(syntra, Client):
            raise InvalidArgument("syntra", f"must be a syntra.client.Client, got {type(syntra).__name__}")
        if not isinstance(capsule, str) or not capsule:
            raise InvalidArgument("capsule", f"must be a capsule's name, got {capsule!r}")
        if session is not None and not isinstance(session, requests.Session):
            raise InvalidArgument("session", f"must be a requests.Session, got {type(session).__name__}")
        _check_count(window, "window")
        if deadline is not None:
            _check_positive(deadline, "deadline")
        if fallback not in OPTIONS:
            raise InvalidArgument("fallback", f"must be one of {', '.join(OPTIONS)}, got {fallback!r}")
        _check_positive(default_p99_ms, "default_p99_ms")
        if down_after is not None:
            _check_count(down_after, "down_after")
        self._syntra = syntra
        self._capsule = capsule
        self._owns_session = session is None
        self._session = requests.Session() if session is None else session
        self._window = window
        self._deadline = deadline
        self._fallback = fallback
        self._default_p99_ms = float(default_p99_ms)
        self._down_after = down_after
        self._lock = threading.Lock()
        self._windows: collections.OrderedDict[str, _Window] = collections.OrderedDict()

    # --- requests' API ------------------------------------------------------------------

    def request(self, method: str, url: str, params=None, data=None, headers=None, cookies=None, files=None,
                auth=None, timeout=None, allow_redirects=True, proxies=None, hooks=None, stream=None,
                verify=None, cert=None, json=None) -> requests.Response:
        """Send a request as ``requests.Session.request`` does, under the capsule's policy.

        Returns the last attempt's response; raises the last attempt's exception. A request
        whose body cannot be sent twice (a file or a generator) is sent once, without asking
        Syntra. A decision Syntra refuses as a bad request (INVALID_ARGUMENT: a capsule name
        that is no name) raises its :class:`~syntra.client.SyntraRpcError` before anything
        is sent.
        """
        if not isinstance(method, str):
            raise InvalidArgument("method", f"must be an HTTP method name, got {type(method).__name__}")
        prepared = self._session.prepare_request(requests.Request(
            method=method.upper(), url=url, headers=headers, files=files, data=data or {}, json=json,
            params=params or {}, auth=auth, cookies=cookies, hooks=hooks))
        settings = self._session.merge_environment_settings(prepared.url, proxies or {}, stream, verify, cert)
        send_arguments = {"timeout": timeout, "allow_redirects": allow_redirects, **settings}
        endpoint = endpoint_of(prepared.url)
        if not isinstance(prepared.body, bytes | str | type(None)):
            return self._run(prepared, send_arguments, endpoint, RetryPolicy(1, 0, 1), _Outcome())

        before = self._stats_of(endpoint)
        decision = self._syntra.decide(self._capsule, input={
            "endpoint": endpoint, "failure_rate": before.failure_rate, "p99_ms": before.p99_ms},
            fallback=self._fallback)
        policy, learns = self._policy(decision, before)
        outcome = _Outcome()
        try:
            return self._run(prepared, send_arguments, endpoint, policy, outcome)
        finally:
            if learns:
                self._report(decision, self._reward(outcome, before))

    def get(self, url: str, params=None, **kwargs) -> requests.Response:
        """``requests.get``: follows redirects unless told not to."""
        kwargs.setdefault("allow_redirects", True)
        return self.request("GET", url, params=params, **kwargs)

    def head(self, url: str, **kwargs) -> requests.Response:
        """``requests.head``: does not follow redirects unless told to."""
        kwargs.setdefault("allow_redirects", False)
        return self.request("HEAD", url, **kwargs)

    def post(self, url: str, data=None, json=None, **kwargs) -> requests.Response:
        """``requests.post``. It is retried like any call: the server must take a repeated
        POST (an idempotency key), or the capsule's fallback and options must not retry."""
        return self.request("POST", url, data=data, json=json, **kwargs)

    def put(self, url: str, data=None, **kwargs) -> requests.Response:
        """``requests.put``."""
        return self.request("PUT", url, data=data, **kwargs)

    def patch(self, url: str, data=None, **kwargs) -> requests.Response:
        """``requests.patch``."""
        return self.request("PATCH", url, data=data, **kwargs)

    def delete(self, url: str, **kwargs) -> requests.Response:
        """``requests.delete``."""
        return self.request("DELETE", url, **kwargs)

    def close(self) -> None:
        """Close the session, if the client made it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- the window ---------------------------------------------------------------------

    def stats(self, url: str) -> EndpointStats:
        """What the window says about the endpoint ``url`` calls (a URL or an endpoint)."""
        return self._stats_of(endpoint_of(url))

    def _stats_of(self, endpoint: str) -> EndpointStats:
        with self._lock:
            window = self._windows.get(endpoint)
            if window is None:
                return EndpointStats(endpoint, 0.0, self._default_p99_ms, 0, 0)
            return window.stats(endpoint, self._default_p99_ms)

    def _record(self, endpoint: str, succeeded: bool, latency_ms: float) -> None:
        with self._lock:
            window = self._windows.get(endpoint)
            if window is None:
                window = self._windows[endpoint] = _Window(self._window)
                if len(self._windows) > MAX_ENDPOINTS:
                    self._windows.popitem(last=False)
            else:
                self._windows.move_to_end(endpoint)
            window.record(succeeded, latency_ms)

    # --- one logical call ---------------------------------------------------------------

    def _policy(self, decision: Decision, before: EndpointStats) -> tuple[RetryPolicy, bool]:
        """The policy to run and whether to report how it went (not for a fallback)."""
        if decision.fallback or decision.option is None:
            # No decision, or a refused one: its feedback is recorded but does not train.
            fallback = retry_policy(self._fallback, before.failure_rate, before.p99_ms)
            return fallback, not decision.fallback
        policy = RetryPolicy.from_value(decision.value)
        if policy is not None:
            return policy, True
        if decision.option in OPTIONS:   # a capsule without the program: no value
            if decision.value is not None:
                logger.warning("capsule %s answered %s with value %r, not a retry policy; using the formula",
                               self._capsule, decision.option, decision.value)
            return retry_policy(decision.option, before.failure_rate, before.p99_ms), True
        # An option the client cannot run: reporting the fallback's outcome would teach
        # the capsule about an option that never ran.
        logger.warning("capsule %s chose %r, which is no retry policy; using %s and reporting nothing",
                       self._capsule, decision.option, self._fallback)
        return retry_policy(self._fallback, before.failure_rate, before.p99_ms), False

    def _run(self, prepared: requests.PreparedRequest, send_arguments: dict, endpoint: str,
             policy: RetryPolicy, outcome: _Outcome) -> requests.Response:
        started = time.perf_counter()
        attempt = 0
        try:
            while True:
                attempt += 1
                if attempt > 1:
                    time.sleep(policy.delay_before(attempt - 1))
                outcome.attempts = attempt
                last = attempt >= policy.attempts
                sent = time.perf_counter()
                try:
                    response = self._session.send(prepared.copy(), **send_arguments)
                except RETRIED_ERRORS as error:
                    self._record(endpoint, False, 0.0)
                    if last or isinstance(error, NEVER_RETRIED_ERRORS):
                        raise
                    continue
                failed = failed_status(response.status_code)
                self._record(endpoint, not failed, (time.perf_counter() - sent) * 1000.0)
                if not failed or last:
                    outcome.succeeded = not failed
                    return response
                response.close()   # its connection goes back to the pool before the retry
        finally:
            outcome.seconds = time.perf_counter() - started

    def _reward(self, outcome: _Outcome, before: EndpointStats) -> float:
        in_time = self._deadline is None or outcome.seconds <= self._deadline
        if outcome.succeeded:
            return 1.0 if in_time else 0.0
        was_down = self._down_after is not None and before.failure_streak >= self._down_after
        return 1.0 if was_down and outcome.attempts == 1 and in_time else 0.0

    def _report(self, decision: Decision, reward: float) -> None:
        try:
            self._syntra.feedback(decision, reward=reward)
        except Exception as error:  # noqa: BLE001  the caller's request must not fail for it
            logger.warning("feedback on decision %s of %s failed: %s", decision.decision_id, self._capsule, error)


def _check_count(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(field, f"must be a positive integer, got {value!r}")


def _check_positive(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise InvalidArgument(field, f"must be a positive number, got {value!r}")
