"""The in-process engine: the one place where a decision is made.

The gRPC service, the CLI, the simulator and in-process users all go through
:class:`Engine`. ``Engine.memory()`` keeps everything in memory. ``Engine.open(path)`` is
durable: every install, decision and feedback is in the hash-chained write-ahead log before
the call returns, and reopening the directory recovers the learned state bit for bit from
the latest valid checkpoint plus a replay of the log after it.

>>> from syntra import Engine
>>> eng = Engine.memory(seed=7)
>>> cap = eng.install("tenants/acme/jobs/llm/capsules/router",
...                   options=["cheap_fast", "balanced", "expensive_accurate"],
...                   reward={"type": "bernoulli"})
>>> d = cap.decide(context_key="support")
>>> d.option in cap.options
True
>>> cap.feedback(d.decision_id, reward=1.0)
>>> cap.report()["contexts"]["support"]["pulls"][d.option]
1

Concurrency: in memory, ``decide`` and ``feedback`` run in compiled code that holds the GIL
from start to end, so each call is atomic with respect to other Python threads (this relies
on the GIL). A durable capsule also takes its own lock, so the order of its records in the
log is the order in which they were applied.

Decision ids carry a tag derived from a random per-engine nonce, so an id is unknown to
every engine but the one that issued it (and to a reinstalled capsule). The same seed and
the same calls give the same options and propensities, not the same ids.
"""

from __future__ import annotations

import numbers
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from syntra.errors import (
    CapsuleExists,
    DuplicateFeedback,
    InvalidConfig,
    InvalidContext,
    InvalidReward,
    StorageCorrupt,
    UnknownCapsule,
    UnknownDecision,
)
from syntra.names import CapsuleName
from syntra.store.state import encode_state
from syntra.store.records import (
    DecisionRecord,
    FeedbackRecord,
    RecordType,
    decode_json,
    encode_json,
)
from syntra_core.bandits import ArmTable, BetaThompson, UCB1
from syntra_core.learner import Decision, FeedbackStatus, Learner

MAX_OPTIONS = 256
MAX_OPTION_NAME = 128
MAX_CONTEXT_KEY = 256
# Rewards are summed in float64: bounding them keeps sums and squares finite.
MAX_REWARD_MAGNITUDE = 1e12
# Posterior draws per Thompson refresh (samples x options) stay within a few milliseconds.
MAX_THOMPSON_DRAWS = 1 << 20


@dataclass(frozen=True, slots=True)
class Setting:
    kind: type  # int or float
    low: float
    high: float
    low_inclusive: bool = True


# Each algorithm's rule class and the settings it accepts.
ALGORITHMS: dict[str, tuple[type, dict[str, Setting]]] = {
    "thompson": (BetaThompson, {
        "prior_a": Setting(float, 0.0, 1e9, low_inclusive=False),
        "prior_b": Setting(float, 0.0, 1e9, low_inclusive=False),
        "samples": Setting(int, 1, 100_000),
        "max_staleness": Setting(float, 0.0, 1.0),
    }),
    "ucb1": (UCB1, {"exploration": Setting(float, 0.0, 100.0)}),
}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_settings(algorithm: object, settings: Mapping[str, Any] | None, n_options: int) -> dict[str, Any]:
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise InvalidConfig(f"algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
    if settings is not None and not isinstance(settings, Mapping):
        raise InvalidConfig(f"settings must be a mapping, got {type(settings).__name__}")
    allowed = ALGORITHMS[algorithm][1]
    checked = {}
    for name, value in (settings or {}).items():
        spec = allowed.get(name)
        if spec is None:
            raise InvalidConfig(f"unknown {algorithm} settings: {name!r} (allowed: {sorted(allowed)})")
        if not (isinstance(value, int) if spec.kind is int else _is_number(value)) or isinstance(value, bool):
            raise InvalidConfig(f"{algorithm} setting {name} must be {spec.kind.__name__}, got {value!r}")
        try:
            number = spec.kind(value)
        except OverflowError:
            number = float("inf")
        above_low = number > spec.low or (spec.low_inclusive and number == spec.low)
        if not (above_low and number <= spec.high):
            bracket = "[" if spec.low_inclusive else "("
            raise InvalidConfig(
                f"{algorithm} setting {name} must be in {bracket}{spec.low:g}, {spec.high:g}], got {value!r}"
            )
        checked[name] = number
    if algorithm == "thompson" and checked.get("samples", 128) * n_options > MAX_THOMPSON_DRAWS:
        raise InvalidConfig(
            f"thompson samples x options must be at most {MAX_THOMPSON_DRAWS}, got"
            f" {checked.get('samples', 128)} x {n_options}"
        )
    return checked


@dataclass(frozen=True, slots=True)
class RewardSpec:
    """How rewards look: ``bernoulli`` (exactly 0 or 1) or ``continuous`` in ``[low, high]``."""

    type: str = "bernoulli"
    low: float = 0.0
    high: float = 1.0

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> RewardSpec:
        if spec is None:
            return cls()
        if not isinstance(spec, Mapping):
            raise InvalidConfig(f"reward spec must be a mapping, got {type(spec).__name__}")
        unknown = set(spec) - {"type", "range"}
        if unknown:
            raise InvalidConfig(f"reward spec has unknown fields: {sorted(unknown)}")
        kind = spec.get("type", "bernoulli")
        if kind == "bernoulli":
            if "range" in spec:
                raise InvalidConfig("a bernoulli reward has no range: it is 0 or 1")
            return cls()
        if kind == "continuous":
            bounds = spec.get("range")
            if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or not all(map(_is_number, bounds)):
                raise InvalidConfig(f"reward.range must be [low, high] numbers, got {bounds!r}")
            if not all(abs(b) <= MAX_REWARD_MAGNITUDE for b in bounds) or not bounds[0] < bounds[1]:
                raise InvalidConfig(
                    f"reward.range must have low < high, both within ±{MAX_REWARD_MAGNITUDE:g}"
                    f" (and finite), got {bounds!r}"
                )
            return cls("continuous", float(bounds[0]), float(bounds[1]))
        raise InvalidConfig(f"reward.type must be 'bernoulli' or 'continuous', got {kind!r}")

    def to_dict(self) -> dict[str, Any]:
        if self.type == "bernoulli":
            return {"type": "bernoulli"}
        return {"type": self.type, "range": [self.low, self.high]}


def _check_options(options: object) -> tuple[str, ...]:
    if isinstance(options, str) or not isinstance(options, Iterable):
        raise InvalidConfig("options must be a list of option names")
    names = tuple(options)
    if not 1 <= len(names) <= MAX_OPTIONS:
        raise InvalidConfig(f"a capsule needs 1 to {MAX_OPTIONS} options, got {len(names)}")
    for name in names:
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_OPTION_NAME:
            raise InvalidConfig(
                f"option names must be strings of 1-{MAX_OPTION_NAME} characters, got {name!r}"
            )
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise InvalidConfig(f"option names must be unique, repeated: {duplicates}")
    return names


def _derive(label: bytes, *parts: bytes, size: int) -> bytes:
    hasher = blake3.blake3(b"syntra." + label + b"\x00")
    for part in parts:
        hasher.update(len(part).to_bytes(4, "little") + part)
    return hasher.digest(size)


def _check_context(context_key: object) -> None:
    if type(context_key) is not str or len(context_key) > MAX_CONTEXT_KEY:
        raise InvalidContext(
            f"context_key must be a string of at most {MAX_CONTEXT_KEY} characters,"
            f" got {type(context_key).__name__} {str(context_key)[:40]!r}"
        )
    try:
        context_key.encode()
    except UnicodeEncodeError:
        raise InvalidContext(f"context_key must be valid Unicode text, got {context_key[:40]!r}") from None


def _check_reward(reward: object) -> float:
    """The reward as a float, refusing bools, non-numbers and values too large for float64."""
    if isinstance(reward, bool) or not isinstance(reward, numbers.Real):
        raise InvalidReward(f"reward must be a number, got {type(reward).__name__}")
    try:
        return float(reward)
    except OverflowError:
        raise InvalidReward(f"reward {reward!r} is too large") from None


class _Uninstalled:
    """Stands in for the learner of an uninstalled capsule: refuses work, keeps the report."""

    def __init__(self, name: str, learner: Learner):
        self.name = name
        self.table = learner.table
        self.next_sequence = learner.next_sequence
        self.pending = learner.pending

    def decide(self, context_key):
        raise UnknownCapsule(self.name)

    def feedback(self, decision_id, reward):
        raise UnknownCapsule(self.name)

    def is_pending(self, decision_id):
        return False


class Capsule:
    """An installed capsule: its options, reward spec, rule and learned state.

    ``config`` is everything needed to rebuild it empty (it is what the WAL's install
    record and every checkpoint carry): uid, name, options, reward, algorithm, settings,
    install (how many earlier installs the name had), seed and tag.
    """

    __slots__ = ("name", "uid", "options", "reward", "algorithm", "settings", "config", "_learner")

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.name = config["name"]
        self.uid = config["uid"]
        self.options = tuple(config["options"])
        self.reward = RewardSpec.parse(config["reward"])
        self.algorithm = config["algorithm"]
        self.settings = dict(config["settings"])
        reward = self.reward
        table = ArmTable(len(self.options), reward.low, reward.high, binary=reward.type == "bernoulli")
        rule_class, _ = ALGORITHMS[self.algorithm]
        try:
            rule = rule_class(table, **self.settings)
        except (TypeError, ValueError) as exc:
            raise InvalidConfig(f"{self.algorithm} settings: {exc}") from None
        self._learner = Learner(self.name, self.options, rule, config["seed"], config["tag"])

    def decide(self, context_key: str = "") -> Decision:
        """Choose an option for ``context_key`` (a string naming the context)."""
        if type(context_key) is not str or len(context_key) > MAX_CONTEXT_KEY or not context_key.isascii():
            _check_context(context_key)
        return self._learner.decide(context_key)

    def feedback(self, decision_id: str, reward: float) -> None:
        """Report the reward of a decision. Applied exactly once; errors change nothing."""
        self._apply_feedback(decision_id, reward)

    async def decide_async(self, context_key: str = "") -> Decision:
        """:meth:`decide` for asyncio callers: a durable capsule awaits its sync without
        blocking the event loop."""
        return self.decide(context_key)

    async def feedback_async(self, decision_id: str, reward: float) -> None:
        """:meth:`feedback` for asyncio callers."""
        self.feedback(decision_id, reward)

    def _apply_feedback(self, decision_id: str, reward: float) -> float:
        if type(decision_id) is not str:
            raise UnknownDecision(self.name, decision_id, "decision ids are strings")
        if type(reward) is not float:
            reward = _check_reward(reward)
        status = self._learner.feedback(decision_id, reward)
        if status:
            self._raise_for(status, decision_id, reward)
        return reward

    def _raise_for(self, status: int, decision_id: str, reward: float) -> None:
        if status == FeedbackStatus.FEEDBACK_DUPLICATE:
            raise DuplicateFeedback(self.name, decision_id)
        if status == FeedbackStatus.FEEDBACK_UNKNOWN:
            raise UnknownDecision(self.name, decision_id)
        if status == FeedbackStatus.FEEDBACK_MALFORMED_ID:
            raise UnknownDecision(self.name, decision_id, "not a Syntra decision id")
        if status == FeedbackStatus.FEEDBACK_NOT_FINITE:
            raise InvalidReward(f"reward must be finite, got {reward!r}")
        if status == FeedbackStatus.FEEDBACK_NOT_BINARY:
            raise InvalidReward(f"a bernoulli reward must be 0 or 1, got {reward!r}")
        raise InvalidReward(
            f"reward {reward!r} outside the range [{self.reward.low}, {self.reward.high}]"
        )

    def _retire(self) -> None:
        # A stale reference to an uninstalled capsule must not decide or learn (a durable
        # one would log records for a capsule that replay no longer knows).
        self._learner = _Uninstalled(self.name, self._learner)

    def is_pending(self, decision_id: str) -> bool:
        """True if ``decision_id`` was issued here and still awaits feedback."""
        return type(decision_id) is str and self._learner.is_pending(decision_id)

    @property
    def decisions(self) -> int:
        """How many decisions this capsule has made."""
        return self._learner.next_sequence

    @property
    def pending(self) -> int:
        """How many decisions still await feedback."""
        return self._learner.pending

    def report(self) -> dict[str, Any]:
        """What the capsule has learned, per context: plays, mean reward and the leader
        (``best_option``: the most played option, ties going to the higher mean)."""
        table = self._learner.table
        contexts = {}
        for key in table.contexts:
            pulls = table.pulls(key)
            sums = table.reward_sums(key)
            means = {
                option: (float(sums[i] / pulls[i]) if pulls[i] else None)
                for i, option in enumerate(self.options)
            }
            # The leader is the most played option (what the rule has converged on), not the
            # best raw mean, which an option played once can top by luck.
            leader = max(range(len(self.options)), key=lambda i: (pulls[i], means[self.options[i]] or 0.0))
            contexts[key] = {
                "pulls": {option: int(pulls[i]) for i, option in enumerate(self.options)},
                "mean_reward": means,
                "best_option": self.options[leader] if pulls[leader] else None,
            }
        return {
            "name": self.name,
            "algorithm": self.algorithm,
            "reward": self.reward.to_dict(),
            "decisions": self.decisions,
            "pending": self.pending,
            "contexts": contexts,
        }

    def __repr__(self) -> str:
        return f"Capsule({self.name!r}, options={list(self.options)!r}, algorithm={self.algorithm!r})"


class DurableCapsule(Capsule):
    """A capsule whose decisions and feedback are in the WAL before they are acknowledged."""

    __slots__ = ("_store", "_lock")

    def __init__(self, config: dict[str, Any], store):
        super().__init__(config)
        self._store = store
        self._lock = threading.Lock()

    def _submit_decision(self, context_key: str):
        _check_context(context_key)
        with self._lock:
            self._store.check()
            d = self._learner.decide(context_key)
            ticket = self._store.submit(RecordType.DECISION, DecisionRecord(
                self.uid, d.sequence, time.time_ns(), d.propensity, d.option_index, context_key,
            ).encode())
        return d, ticket

    def _submit_feedback(self, decision_id: str, reward: float):
        with self._lock:
            self._store.check()
            reward = self._apply_feedback(decision_id, reward)
            # Applied: the id is well formed, and its first 16 hex digits are the sequence.
            return self._store.submit(RecordType.FEEDBACK, FeedbackRecord(
                self.uid, int(decision_id[:16], 16), time.time_ns(), reward,
            ).encode())

    def decide(self, context_key: str = "") -> Decision:
        d, ticket = self._submit_decision(context_key)
        self._store.wait(ticket)
        return d

    def feedback(self, decision_id: str, reward: float) -> None:
        self._store.wait(self._submit_feedback(decision_id, reward))

    async def decide_async(self, context_key: str = "") -> Decision:
        d, ticket = self._submit_decision(context_key)
        await self._store.wait_async(ticket)
        return d

    async def feedback_async(self, decision_id: str, reward: float) -> None:
        await self._store.wait_async(self._submit_feedback(decision_id, reward))


class Engine:
    """Installs capsules and routes decisions and feedback to them.

    Create one with :meth:`memory` or :meth:`open`. Every capsule's randomness derives from
    the engine seed and the capsule name, so the same seed and the same calls give the same
    decisions.
    """

    def __init__(self, *, seed: int = 0, _store=None, _nonce: bytes | None = None):
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
            raise InvalidConfig(f"seed must be an integer in [0, 2**64), got {seed!r}")
        self.seed = seed
        self.nonce = _nonce if _nonce is not None else os.urandom(8)
        self._store = _store
        self._capsules: dict[str, Capsule] = {}
        self._by_uid: dict[int, Capsule] = {}
        # Every config ever installed, uninstalled ones too: logs name capsules by uid.
        self._configs: dict[int, dict[str, Any]] = {}
        self._installs: dict[str, int] = {}
        self._next_uid = 1
        self._lock = threading.Lock()

    @classmethod
    def memory(cls, seed: int = 0) -> Engine:
        """An engine that keeps everything in memory: fast, not durable."""
        return cls(seed=seed)

    @classmethod
    def open(cls, path: str | Path, *, seed: int | None = None, **store_options: Any) -> Engine:
        """Open (or create) the durable engine stored in directory ``path``.

        ``seed`` is fixed when the store is created; passing a different one later is an
        error. Store options: ``durability`` ("fsync", the default, or "none" for tests
        and benchmarks only), ``commit_window_us``, ``segment_bytes``,
        ``checkpoint_every`` (records), ``checkpoint_interval`` (seconds),
        ``keep_checkpoints``, ``retention`` ("keep", "delete" or "archive" with
        ``archive_dir``), ``signing_key`` and ``verify_key`` (ed25519, PEM path or key).
        """
        from syntra.store.durable import DurableStore
        from syntra.store.logs import SegmentLogWriter

        unknown = set(store_options) - DurableStore.OPTIONS
        if unknown:
            raise InvalidConfig(f"unknown store options {sorted(unknown)}; allowed: {sorted(DurableStore.OPTIONS)}")
        store = DurableStore(path, **store_options)
        try:
            engine = cls._recover(store, seed)
            writer = SegmentLogWriter(path, engine.capsule_config)
            # Registered first, so a segment sealed meanwhile is written by one or the other.
            store.seal_handlers.append(writer.write)
            store.log_watermark = lambda: writer.handled_through
            writer.catch_up(store.wal)
        except BaseException:
            store.close()
            raise
        store.start_checkpointer(engine.checkpoint)
        return engine

    @classmethod
    def _recover(cls, store, seed: int | None) -> Engine:
        checkpoint = store.load_checkpoint()
        identity = checkpoint.engine if checkpoint else None
        first = next(iter(store.wal.read()), None) if checkpoint is None else None
        if first is not None:
            if first.rtype != RecordType.ENGINE_CREATED:
                raise StorageCorrupt("the WAL does not start with an engine record")
            identity = decode_json(first.payload, first.rtype)
        if identity is None:
            engine = cls(seed=seed or 0, _store=store)
            store.record(RecordType.ENGINE_CREATED, encode_json(
                {"format": 1, "seed": engine.seed, "nonce": engine.nonce.hex()}))
        else:
            if seed is not None and seed != identity["seed"]:
                raise InvalidConfig(f"this store was created with seed {identity['seed']}, not {seed}")
            engine = cls(seed=identity["seed"], _store=store, _nonce=bytes.fromhex(identity["nonce"]))
        if checkpoint is not None:
            engine._load_checkpoint(checkpoint)
        expected = store.last_checkpoint_sequence + 1
        for record in store.wal.read(from_sequence=expected):
            if record.sequence != expected:
                raise StorageCorrupt(
                    f"WAL records {expected}-{record.sequence - 1} are missing: the log after the"
                    f" checkpoint at {expected - 1} does not continue where it ends"
                )
            engine._replay(record)
            expected += 1
        return engine

    def _load_checkpoint(self, checkpoint) -> None:
        meta = checkpoint.engine
        self._next_uid = meta["next_uid"]
        self._installs = dict(meta["installs"])
        self._configs.update((config["uid"], config) for config in meta["retired"])
        for entry in checkpoint.capsules:
            capsule = self._register(entry["config"])
            try:
                capsule._learner.import_state(entry["state"])
            except (KeyError, TypeError, ValueError) as exc:
                raise StorageCorrupt(f"checkpoint {checkpoint.path.name}: capsule {capsule.name}: {exc}") from None

    def _replay(self, record) -> None:
        rtype = record.rtype
        if rtype == RecordType.DECISION:
            entry = DecisionRecord.decode(record.payload)
            d = self._replay_capsule(entry.capsule_uid, record)._learner.decide(entry.context_key)
            if d.sequence != entry.sequence or d.option_index != entry.option_index:
                raise StorageCorrupt(
                    f"replay diverged at WAL record {record.sequence}: decided option"
                    f" {d.option_index} at sequence {d.sequence}, the log says {entry.option_index}"
                    f" at {entry.sequence}"
                )
        elif rtype == RecordType.FEEDBACK:
            entry = FeedbackRecord.decode(record.payload)
            learner = self._replay_capsule(entry.capsule_uid, record)._learner
            status = learner.feedback(learner.decision_id(entry.sequence), entry.reward)
            if status:
                raise StorageCorrupt(f"replay of WAL record {record.sequence} failed with status {status}")
        elif rtype == RecordType.CAPSULE_INSTALLED:
            config = decode_json(record.payload, rtype)
            config.pop("ts_ns", None)
            self._register(config)
            self._installs[config["name"]] = config["install"] + 1
            self._next_uid = max(self._next_uid, config["uid"] + 1)
        elif rtype == RecordType.CAPSULE_UNINSTALLED:
            body = decode_json(record.payload, rtype)
            capsule = self._replay_capsule(body["uid"], record)
            del self._capsules[capsule.name], self._by_uid[capsule.uid]
        elif rtype not in (RecordType.ENGINE_CREATED, RecordType.AUDIT):
            raise StorageCorrupt(f"WAL record {record.sequence} has unknown type {rtype}")

    def _replay_capsule(self, uid: int, record) -> Capsule:
        try:
            return self._by_uid[uid]
        except KeyError:
            raise StorageCorrupt(f"WAL record {record.sequence} names unknown capsule uid {uid}") from None

    def _register(self, config: dict[str, Any]) -> Capsule:
        capsule = DurableCapsule(config, self._store) if self._store else Capsule(config)
        self._capsules[capsule.name] = capsule
        self._by_uid[capsule.uid] = capsule
        self._configs[capsule.uid] = config
        return capsule

    def capsule_config(self, uid: int) -> dict[str, Any]:
        """The install config of capsule ``uid``, installed now or in the past."""
        return self._configs[uid]

    def install(
        self,
        name: str,
        *,
        options: Iterable[str],
        reward: Mapping[str, Any] | None = None,
        algorithm: str = "thompson",
        settings: Mapping[str, Any] | None = None,
    ) -> Capsule:
        """Install a capsule under ``name`` and return it.

        ``algorithm`` is ``"thompson"`` (default) or ``"ucb1"``; ``settings`` tunes it
        (``prior_a``, ``prior_b``, ``samples``, ``max_staleness`` for Thompson;
        ``exploration`` for UCB1).
        """
        parsed = CapsuleName.parse(name)
        option_names = _check_options(options)
        spec = RewardSpec.parse(reward)
        settings = _check_settings(algorithm, settings, len(option_names))
        key = str(parsed)
        with self._lock:
            if self._store:
                self._store.check()
            if key in self._capsules:
                raise CapsuleExists(key)
            install = self._installs.get(key, 0)
            encoded = key.encode()
            config = {
                "uid": self._next_uid,
                "name": key,
                "options": list(option_names),
                "reward": spec.to_dict(),
                "algorithm": algorithm,
                "settings": settings,
                "install": install,
                "seed": int.from_bytes(
                    _derive(b"capsule-seed", self.seed.to_bytes(8, "little"), encoded, size=8), "little"
                ),
                # Ids from another engine or an earlier install of this name are unknown here.
                "tag": _derive(b"capsule-tag", self.nonce, encoded, install.to_bytes(8, "little"), size=8).hex(),
            }
            # Build first, so invalid settings fail before anything is logged.
            capsule = DurableCapsule(config, self._store) if self._store else Capsule(config)
            if self._store:
                self._store.record(RecordType.CAPSULE_INSTALLED,
                                   encode_json({**config, "ts_ns": time.time_ns()}))
            self._capsules[key] = capsule
            self._by_uid[capsule.uid] = capsule
            self._configs[capsule.uid] = config
            self._installs[key] = install + 1
            self._next_uid += 1
        return capsule

    def capsule(self, name: str) -> Capsule:
        """The capsule installed under ``name``."""
        try:
            return self._capsules[name]
        except (KeyError, TypeError):
            CapsuleName.parse(name)  # a malformed name says so precisely
            raise UnknownCapsule(name) from None

    def capsules(self) -> list[Capsule]:
        """Every installed capsule, ordered by name."""
        return [self._capsules[k] for k in sorted(self._capsules)]

    def uninstall(self, name: str) -> None:
        """Remove a capsule and everything it learned."""
        with self._lock:
            capsule = self.capsule(name)
            if not self._store:
                del self._capsules[name], self._by_uid[capsule.uid]
                capsule._retire()
                return
            # The capsule's lock too, so no decision or feedback of it lands in the log after
            # the uninstall record (replay would not know the capsule any more).
            with capsule._lock:
                self._store.check()
                self._store.record(RecordType.CAPSULE_UNINSTALLED, encode_json(
                    {"uid": capsule.uid, "name": capsule.name, "ts_ns": time.time_ns()}))
                del self._capsules[name], self._by_uid[capsule.uid]
                capsule._retire()

    def __contains__(self, name: object) -> bool:
        return name in self._capsules

    # --- durability ----------------------------------------------------------------------

    @property
    def durable(self) -> bool:
        return self._store is not None

    def _snapshot(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        retired = [c for uid, c in sorted(self._configs.items()) if uid not in self._by_uid]
        engine = {"format": 1, "seed": self.seed, "nonce": self.nonce.hex(), "next_uid": self._next_uid,
                  "installs": dict(sorted(self._installs.items())), "retired": retired}
        capsules = [{"config": c.config, "state": c._learner.export_state()} for c in self.capsules()]
        return engine, capsules

    def checkpoint(self) -> Path | None:
        """Write a checkpoint now (durable engines only); returns its path."""
        if self._store is None:
            raise InvalidConfig("an in-memory engine has no checkpoints")
        with self._store.checkpoint_lock:
            with self._lock:
                locks = [c._lock for c in self.capsules()]
                for lock in locks:
                    lock.acquire()
                try:
                    # Every change so far was applied before it was submitted; once the WAL
                    # is flushed, its head is exactly the state we export.
                    self._store.wal.flush()
                    sequence = self._store.wal.durable_sequence
                    head = self._store.wal.head_digest
                    engine, capsules = self._snapshot()
                finally:
                    for lock in locks:
                        lock.release()
            return self._store.write_checkpoint(sequence, head, engine, capsules)

    def state_digest(self) -> bytes:
        """BLAKE3 of the whole learned state: equal digests mean bit-identical state."""
        with self._lock:
            engine, capsules = self._snapshot()
        return blake3.blake3(encode_state({"engine": engine, "capsules": capsules})).digest()

    def close(self, *, checkpoint: bool = True) -> None:
        """Flush the WAL, write a final checkpoint and release the store. Idempotent.

        ``checkpoint=False`` skips the final checkpoint: the next open replays the log tail.
        """
        if self._store is not None:
            self._store.close(final_checkpoint=self.checkpoint if checkpoint else None)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
