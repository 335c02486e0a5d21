"""``syntra demo``: the example capsules learning on a real server, then the proof.

:class:`Demo` starts ``syntra serve --dev-mode`` as a child process on loopback, with a
fresh admin key that only the child's environment and this process ever hold. Through the
gRPC client (:mod:`syntra.client`) it installs every example capsule in ``examples/``
(``capsule.yaml``, program inlined) and drives simulated traffic at each: every example
has a :class:`World` here whose contexts have their own true reward rates, unknown to the
capsule. Each capsule's traffic comes from a thread of its own, in batches (one
DecideBatch, then one FeedbackBatch with the world's rewards), so the server's group
commit sees concurrent writers while every capsule still sees its calls in a fixed order:
the same seed gives the same result.

A context's *learned best* is the option its capsule played most (a tie goes to the higher
mean reward): the option the capsule has come to prefer. The highest raw mean would not
do, since an option played once and lucky once has a mean of 1. The demo succeeds when
every context's learned best is the world's true best.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from syntra.errors import SyntraError

DEFAULT_ROUNDS = 800
MAX_ROUNDS = 100_000
# Rounds (one decision per context each) per DecideBatch: the feedback of a batch arrives
# after all its decisions, so a capsule learns with a lag of at most this many rounds.
BATCH_ROUNDS = 25
DEFAULT_DATA = "syntra-data/demo"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
CALL_TIMEOUT = 30.0
TENANT = "tenants/demo"
MAX_TOKEN_TTL = 365 * 86_400  # the server's limit
SERVER_LOG = "server.log"
# What `syntra serve` prints once it serves: "... listening on HOST:PORT, ops http://HOST:PORT, ..."
_READY = re.compile(r"listening on (\S+):(\d+), ops http://(\S+):(\d+)")
# Entries of a directory the demo may recreate: a demo data directory (store, tokens and
# the server's log) or an engine store written directly there (the in-process demo's).
_DEMO_ENTRIES = {"store", "tokens.json", SERVER_LOG, "wal", "checkpoints"}


class DemoFailed(SyntraError):
    """The demo could not run to its end: the server did not start or stop, or the
    examples do not match the demo's worlds."""


# --- the worlds ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class World:
    """What an example capsule faces: ``true_means[context][i]`` is the probability that
    option ``i`` (in the spec's order) earns a reward of 1 in that context."""

    example: str  # the directory under examples/
    title: str
    job: str
    options: tuple[str, ...]
    meaning: str  # what a reward of 1 stands for
    context_field: str  # the input field the capsule's contextSpec keys its context by
    true_means: dict[str, tuple[float, ...]]
    # The program's input for one request in a context (the context in context_field).
    make_input: Callable[[str, random.Random], dict[str, Any]] = field(repr=False)

    def true_best(self, context: str) -> str:
        means = self.true_means[context]
        return self.options[max(range(len(means)), key=means.__getitem__)]


_WORDS = ("alpha", "beta", "gamma", "delta", "epsilon")


def _llm_input(task: str, rng: random.Random) -> dict[str, Any]:
    prompt = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 60)))
    return {"task": task, "prompt": prompt, "max_output": rng.choice([64, 256, 1024])}


_RETRY_FAILURES = {"search": 0.08, "payments": 0.3, "inventory": 0.02}


def _retry_input(endpoint: str, rng: random.Random) -> dict[str, Any]:
    rate = _RETRY_FAILURES[endpoint]
    return {"endpoint": endpoint, "failure_rate": round(rate * rng.uniform(0.8, 1.2), 4),
            "p99_ms": round(rng.uniform(50, 2000), 1)}


def _autoscale_input(service: str, rng: random.Random) -> dict[str, Any]:
    n = 16
    if service == "ramping":
        history = [200 + 25 * i + rng.randint(-5, 5) for i in range(n)]
    elif service == "bursty":
        history = [rng.choice([300, 300, 300, 900]) + round(rng.random(), 3) for _ in range(n)]
    else:
        history = [round(500 + rng.gauss(0, 20), 2) for _ in range(n)]
    return {"service": service, "history": history, "current": rng.randint(5, 30),
            "target": 50, "min": 2, "max": 60}


_LATENCY_SHIFT = {"healthy": 0, "primary_degraded": 60, "both_regions_slow": 150, "dependency_down": 900}


def _anomaly_input(endpoint: str, rng: random.Random) -> dict[str, Any]:
    window = [round(100 + rng.gauss(0, 10), 2) for _ in range(20)]
    return {"endpoint": endpoint, "recent": window,
            "current": round(100 + _LATENCY_SHIFT[endpoint] + rng.gauss(0, 10), 2)}


_FRAUD_BASE = {"weekday_morning": 0.002, "weekday_evening": 0.01, "payday_night": 0.02, "bot_campaign": 0.05}


def _fraud_input(slot: str, rng: random.Random) -> dict[str, Any]:
    return {"slot": slot, "rates": [round(_FRAUD_BASE[slot] * rng.uniform(0.8, 1.2), 5) for _ in range(8)]}


WORLDS = (
    World(
        example="llm-routing", title="LLM tier routing", job="llm",
        options=("small", "medium", "large"), meaning="answer accepted", context_field="task",
        # Chit-chat users leave if the answer is slow; legal answers must be right.
        true_means={
            "chit_chat": (0.85, 0.68, 0.60),
            "code_review": (0.45, 0.78, 0.60),
            "legal": (0.30, 0.55, 0.82),
        },
        make_input=_llm_input,
    ),
    World(
        example="retry-tuning", title="Retry policy", job="http",
        options=("no_retry", "fixed_3x", "exponential_backoff"),
        meaning="call succeeded within its latency budget", context_field="endpoint",
        # Search blips clear fast; payments throttle, so backing off wins; inventory calls
        # are slow, so any retry blows the SLO.
        true_means={
            "search": (0.75, 0.93, 0.78),
            "payments": (0.66, 0.60, 0.86),
            "inventory": (0.92, 0.72, 0.76),
        },
        make_input=_retry_input,
    ),
    World(
        example="predictive-autoscaling", title="Predictive autoscaling", job="fleet",
        options=("hold", "forecast_match", "forecast_headroom", "p95_safe"),
        meaning="latency objective met at the lowest instance count", context_field="service",
        # Steady load: the forecast is right. Ramping: it lags, headroom wins. Bursty: size
        # for the bursts. Change freeze: anything but holding is refused downstream.
        true_means={
            "steady": (0.55, 0.86, 0.68, 0.60),
            "ramping": (0.30, 0.62, 0.86, 0.68),
            "bursty": (0.35, 0.50, 0.66, 0.86),
            "freeze": (0.90, 0.40, 0.35, 0.30),
        },
        make_input=_autoscale_input,
    ),
    World(
        example="anomaly-routing", title="Anomaly routing", job="edge",
        options=("primary", "secondary", "degraded_cache_only", "circuit_break"),
        meaning="request answered within its deadline", context_field="endpoint",
        true_means={
            "healthy": (0.95, 0.78, 0.60, 0.20),
            "primary_degraded": (0.55, 0.88, 0.70, 0.30),
            "both_regions_slow": (0.40, 0.45, 0.82, 0.35),
            "dependency_down": (0.05, 0.10, 0.40, 0.78),
        },
        make_input=_anomaly_input,
    ),
    World(
        example="seasonal-fraud-threshold", title="Fraud threshold", job="payments",
        options=("loose", "baseline", "tight", "very_tight"),
        meaning="fraud blocked and legitimate payments passed", context_field="slot",
        # Quiet slots reward a loose threshold (few false holds), campaigns a tight one.
        true_means={
            "weekday_morning": (0.90, 0.74, 0.60, 0.45),
            "weekday_evening": (0.70, 0.88, 0.70, 0.55),
            "payday_night": (0.55, 0.68, 0.86, 0.66),
            "bot_campaign": (0.30, 0.45, 0.66, 0.86),
        },
        make_input=_fraud_input,
    ),
)


def examples_directory() -> Path:
    """``examples/`` of this source checkout (the demo installs what is there)."""
    return Path(__file__).resolve().parents[2] / "examples"


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContextOutcome:
    """What one context learned, next to the truth. ``learned_best`` is the most-played
    option (ties to the higher mean), None before any play; ``mean_reward`` is the mean of
    the rewards the world paid there."""

    context: str
    learned_best: str | None
    true_best: str
    pulls: dict[str, int]
    mean_reward: float
    true_means: dict[str, float]

    @property
    def learned(self) -> bool:
        return self.learned_best == self.true_best

    @property
    def true_best_share(self) -> float:
        total = sum(self.pulls.values())
        return self.pulls[self.true_best] / total if total else 0.0


@dataclass(frozen=True, slots=True)
class ScenarioOutcome:
    """One example capsule after its traffic."""

    title: str
    example: str
    name: str
    meaning: str
    options: tuple[str, ...]
    contexts: tuple[ContextOutcome, ...]
    decisions: int
    seconds: float
    # Decision sequences at which drift detection sent the whole capsule back to warmup.
    drift_at: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class DemoResult:
    seed: int
    rounds: int  # per context
    scenarios: tuple[ScenarioOutcome, ...]

    @property
    def contexts(self) -> int:
        return sum(len(s.contexts) for s in self.scenarios)

    @property
    def learned(self) -> int:
        """How many contexts learned their true best option."""
        return sum(c.learned for s in self.scenarios for c in s.contexts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "rounds_per_context": self.rounds,
            "contexts": self.contexts,
            "learned_true_best": self.learned,
            "scenarios": [
                {
                    "title": s.title,
                    "example": s.example,
                    "name": s.name,
                    "meaning": s.meaning,
                    "options": list(s.options),
                    "decisions": s.decisions,
                    "seconds": round(s.seconds, 3),
                    "drift_at": list(s.drift_at),
                    "contexts": [
                        {
                            "context": c.context,
                            "learned_best": c.learned_best,
                            "true_best": c.true_best,
                            "learned": c.learned,
                            "true_best_share": c.true_best_share,
                            "mean_reward": c.mean_reward,
                            "pulls": dict(c.pulls),
                            "true_means": dict(c.true_means),
                        }
                        for c in s.contexts
                    ],
                }
                for s in self.scenarios
            ],
        }


# --- the server ---------------------------------------------------------------------------


def prepare_data_directory(data: Path) -> None:
    """Recreate ``data`` empty. The demo owns it, but only a directory that is missing,
    empty or holds a demo's (or an engine store's) files is removed: never a user's."""
    if data.exists():
        if not data.is_dir():
            raise DemoFailed(f"{data} is not a directory")
        entries = {entry.name for entry in data.iterdir()}
        if entries and not entries & _DEMO_ENTRIES:
            raise DemoFailed(f"{data} holds files that are not a demo's ({', '.join(sorted(entries)[:3])}, ...);"
                             " give --data a new directory")
    try:
        if data.exists():
            shutil.rmtree(data)
        data.mkdir(parents=True)
    except OSError as exc:
        raise DemoFailed(f"cannot recreate {data}: {exc.strerror or exc}") from None


class DemoServer:
    """``syntra serve --dev-mode`` as a child process on 127.0.0.1 free ports.

    The admin key is fresh for each server and goes to the child in its environment only.
    The child runs in its own session, so a Ctrl-C at the terminal reaches the demo, which
    then stops the server itself (SIGTERM: drain, flush, checkpoint). Its log (JSON lines
    on stderr) goes to ``DATA/server.log``.
    """

    def __init__(self, data: Path):
        self.data = Path(data)
        self.admin_key = "syn_demo_" + secrets.token_urlsafe(32)
        self.address = ""
        self.ops_address = ""
        self.process: subprocess.Popen | None = None

    @property
    def store(self) -> Path:
        """The engine store the server keeps under its data directory."""
        return self.data / "store"

    @property
    def log_path(self) -> Path:
        return self.data / SERVER_LOG

    def start(self) -> DemoServer:
        """Start the server and wait until it serves; :class:`DemoFailed` if it does not."""
        package_root = str(Path(__file__).resolve().parents[1])  # the same syntra in the child
        env = dict(os.environ, SYNTRA_ADMIN_KEY=self.admin_key, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        command = [sys.executable, "-m", "syntra", "serve", "--dev-mode", "--data", str(self.data),
                   "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=log, env=env, text=True, start_new_session=True)
        line = self._first_line()
        match = _READY.search(line)
        if match is None:
            self.kill()
            raise DemoFailed(f"the server did not start (it said {line.strip()!r}); its log:\n{self.log_tail()}")
        self.address = f"{match.group(1)}:{match.group(2)}"
        self.ops_address = f"{match.group(3)}:{match.group(4)}"
        # Nothing more is expected on stdout, but a full pipe would block the server.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()
        return self

    def _first_line(self) -> str:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        return lines[0] if lines else ""

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait for the graceful stop; returns the exit code. A server that is
        still there after ``timeout`` seconds is killed, and that is a :class:`DemoFailed`."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise DemoFailed(f"the server did not stop within {timeout:g} s of SIGTERM; killed it") from None
        return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty)"


# --- the run ------------------------------------------------------------------------------


class Demo:
    """One demo run: recreate ``data``, start the server and connect (on ``__enter__``),
    then :meth:`install`, :meth:`drive`, :meth:`serve` and :meth:`stop`. Leaving the
    ``with`` block always stops the server, whatever happened.

    ``seed`` seeds the worlds (the server's engine has its own fixed seed), ``rounds`` is
    the number of decisions per context.
    """

    def __init__(self, data: str | Path = DEFAULT_DATA, *, seed: int = 0, rounds: int = DEFAULT_ROUNDS,
                 examples: Path | None = None):
        if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= MAX_ROUNDS:
            raise ValueError(f"rounds must be an integer in 1..{MAX_ROUNDS:_}, got {rounds!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.data = Path(data)
        self.seed = seed
        self.rounds = rounds
        self.examples = examples or examples_directory()
        self.server = DemoServer(self.data)
        self.client = None
        self.installed: dict[str, str] = {}  # example -> capsule name

    def __enter__(self) -> Self:
        from syntra.client import Client

        missing = [w.example for w in WORLDS if not (self.examples / w.example / "capsule.yaml").is_file()]
        if missing:
            raise DemoFailed(f"no capsule.yaml for {', '.join(missing)} under {self.examples}"
                             " (the demo runs from a source checkout)")
        prepare_data_directory(self.data)
        previous = _raise_on_sigterm()
        try:
            self.server.start()
            self.client = Client(self.server.address, token=self.server.admin_key, timeout=CALL_TIMEOUT)
        except BaseException:
            self._close()
            _restore_sigterm(previous)
            raise
        self._previous_sigterm = previous
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._close()
        finally:
            _restore_sigterm(self._previous_sigterm)

    def _close(self) -> None:
        try:
            self._close_client()
        finally:
            try:
                self.server.stop()
            except DemoFailed:
                pass  # killed; the caller is already leaving with its own outcome

    def _close_client(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def install(self) -> dict[str, str]:
        """Install every example capsule, ``examples/<example>/capsule.yaml`` with its
        program inlined, as ``tenants/demo/jobs/<job>/capsules/<spec name>``."""
        from syntra.authoring import AuthoringError
        from syntra.cli_api import read_capsule_spec

        for world in WORLDS:
            path = self.examples / world.example / "capsule.yaml"
            try:
                spec, policy = read_capsule_spec(path)
            except AuthoringError as error:
                raise DemoFailed(f"{path}: {error}") from None
            capsule = self.client.install_capsule(f"{TENANT}/jobs/{world.job}", yaml_spec=spec, policy=policy)
            if tuple(capsule["options"]) != world.options:
                raise DemoFailed(f"examples/{world.example} has options {capsule['options']}, the demo's world"
                                 f" {list(world.options)}: update WORLDS in syntra/demo.py")
            self.installed[world.example] = capsule["name"]
        return dict(self.installed)

    def drive(self, progress: Callable[[World], Callable[[int], None] | None] | None = None,
              finished: Callable[[ScenarioOutcome], None] | None = None) -> DemoResult:
        """Drive ``rounds`` decisions per context at every installed capsule, one thread
        per capsule, and gather what each learned. ``progress(world)`` may return a
        callable told how many decisions went by; ``finished(outcome)`` hears of each
        capsule as it finishes."""
        outcomes: dict[str, ScenarioOutcome] = {}
        failures: list[BaseException] = []

        def run(world: World) -> None:
            try:
                advance = progress(world) if progress is not None else None
                outcome = self._drive_one(world, advance)
                outcomes[world.example] = outcome
                if finished is not None:
                    finished(outcome)
            except BaseException as exc:  # noqa: BLE001  re-raised in the caller's thread below
                failures.append(exc)

        threads = [threading.Thread(target=run, args=(world,), daemon=True) for world in WORLDS]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.1)  # a short join, so that Ctrl-C reaches this thread
        if failures:
            raise failures[0]
        return DemoResult(seed=self.seed, rounds=self.rounds,
                          scenarios=tuple(outcomes[w.example] for w in WORLDS))

    def _drive_one(self, world: World, advance: Callable[[int], None] | None) -> ScenarioOutcome:
        name = self.installed[world.example]
        # Each world draws from a stream of its own: threads do not change what it draws.
        rng = random.Random(f"syntra-demo/{self.seed}/{world.example}")
        contexts = list(world.true_means)
        earned = dict.fromkeys(contexts, 0.0)
        rewarded = dict.fromkeys(contexts, 0)
        started = time.perf_counter()
        done = 0
        while done < self.rounds:
            rounds = min(BATCH_ROUNDS, self.rounds - done)
            # Contexts take turns, as mixed live traffic would.
            requests = [{"input": world.make_input(context, rng)} for _ in range(rounds) for context in contexts]
            results = self.client.decide_batch(name, requests)
            feedback = []
            for request, decision in zip(requests, results, strict=True):
                if isinstance(decision, Exception):
                    raise decision
                context = request["input"][world.context_field]
                if decision.context_key != context:
                    raise DemoFailed(f"{name} decided for context {decision.context_key!r}, the input named {context!r}")
                if decision.refused:
                    continue
                mean = world.true_means[context][decision.option_index]
                reward = 1.0 if rng.random() < mean else 0.0
                earned[context] += reward
                rewarded[context] += 1
                feedback.append({"decision_id": decision.decision_id, "reward": reward})
            for error in self.client.feedback_batch(name, feedback):
                if error is not None:
                    raise error
            done += rounds
            if advance is not None:
                advance(len(requests))
        seconds = time.perf_counter() - started
        report = self.client.report(name)
        learned = report["contexts"]
        drift = report.get("drift_events", ())
        return ScenarioOutcome(
            title=world.title, example=world.example, name=name, meaning=world.meaning,
            options=world.options, decisions=self.rounds * len(contexts), seconds=seconds,
            drift_at=tuple(e["sequence"] for e in drift if e["scope"] == "capsule"),
            contexts=tuple(_outcome(world, context, learned.get(context), earned[context], rewarded[context])
                           for context in contexts))

    def visitor_token(self, duration: float | None) -> str:
        """A token for trying the server while the demo serves: tenant_admin on
        tenants/demo, expiring a minute after ``duration`` (None: in a day). The admin key
        stays in this process."""
        ttl = 86_400 if duration is None else min(int(duration) + 60, MAX_TOKEN_TTL)
        _, secret = self.client.create_token([f"tenant_admin:{TENANT}"], ttl_seconds=ttl, display_name="syntra demo")
        return secret

    def serve(self, duration: float | None) -> str:
        """Keep serving for ``duration`` seconds (None: until Ctrl-C). Returns why it
        ended: "duration", "interrupted" (Ctrl-C or SIGTERM) or "server exited"."""
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while deadline is None or time.monotonic() < deadline:
                if not self.server.running():
                    return "server exited"
                time.sleep(0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic())))
        except (KeyboardInterrupt, _Terminated):
            return "interrupted"
        return "duration"

    def stop(self) -> int:
        """Stop the server gracefully (SIGTERM); its exit code."""
        self._close_client()
        return self.server.stop()


def _outcome(world: World, context: str, learned: dict[str, Any] | None, earned: float,
             rewarded: int) -> ContextOutcome:
    pulls = dict.fromkeys(world.options, 0)
    best = None
    if learned is not None:  # the context's entry in the capsule's report
        pulls.update(learned["pulls"])
        best = learned["best_option"] or None
    return ContextOutcome(
        context=context, learned_best=best, true_best=world.true_best(context), pulls=pulls,
        mean_reward=earned / rewarded if rewarded else 0.0,
        true_means=dict(zip(world.options, world.true_means[context])))


class _Terminated(SystemExit):
    """SIGTERM reached the demo: leave through the ``with`` blocks, so the server stops too."""


def _raise_on_sigterm():
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum, frame):
        raise _Terminated(128 + signum)

    return signal.signal(signal.SIGTERM, terminate)


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
