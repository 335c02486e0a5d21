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

Concurrency: in memory, a plain capsule's ``decide`` and ``feedback`` run in compiled code
that holds the GIL for the whole call, so each call is atomic with respect to other Python
threads (this relies on the GIL). A budgeted or program capsule, and every durable one,
takes its own lock, so the order of its records in the log is the order in which they were
applied (a program runs whole under it, bounded by its limits).

Decision ids carry a tag derived from a random per-engine nonce, so an id is unknown to
every engine but the one that issued it (and to a reinstalled capsule). The same seed and
the same calls give the same options and propensities, not the same ids.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import blake3

from syntra.budget import Budget
from syntra.budget.gate import BudgetSpec
from syntra.program import ProgramSpec
from syntra.capsule import Capsule, RewardSpec
from syntra.capsule_config import _check_options, _check_settings, checked_learning
from syntra.durable_capsule import DurableCapsule
from syntra.errors import (
    CapsuleExists,
    InvalidConfig,
    StorageCorrupt,
    StorageError,
    SyntraError,
    UnknownCapsule,
)
from syntra.learning.config import LearningConfig
from syntra.names import CapsuleName
from syntra.store.records import (
    REFUSED_OPTION,
    DecisionRecord,
    FeedbackRecord,
    RecordType,
    decode_json,
    encode_json,
    install_config,
)
from syntra.store.state import encode_state


def _derive(label: bytes, *parts: bytes, size: int) -> bytes:
    hasher = blake3.blake3(b"syntra." + label + b"\x00")
    for part in parts:
        hasher.update(len(part).to_bytes(4, "little") + part)
    return hasher.digest(size)


def state_digest_of(engine: dict[str, Any], capsules: list[dict[str, Any]]) -> bytes:
    """The :meth:`Engine.state_digest` of an exported state (a checkpoint's engine and
    capsules, or :meth:`Engine._snapshot`'s)."""
    return blake3.blake3(encode_state({"engine": engine, "capsules": capsules})).digest()


_log = logging.getLogger("syntra.engine")


def _action_options(actions, options: Iterable[str] | None) -> tuple[str, ...]:
    """The options an action shape generates (continuous buckets, hierarchical leaves);
    ``options``, if given too, must be exactly those."""
    generated = tuple(actions.options())
    if options is not None and tuple(options) != generated:
        raise InvalidConfig(f"learning.json: actions of kind {actions.kind!r} generate the"
                            f" options {list(generated)[:8]}...; pass no options (or exactly those)")
    return generated

BUDGET_DIRECTORY = "budget"
SANDBOX_DIRECTORY = "sandboxes"


class Engine:
    """Installs capsules and routes decisions and feedback to them.

    Create one with :meth:`memory` or :meth:`open`. Every capsule's randomness derives from
    the engine seed and the capsule name, so the same seed and the same calls give the same
    decisions.
    """

    def __init__(self, *, seed: int = 0, _store=None, _nonce: bytes | None = None, _budget=None,
                 _store_path: Path | None = None):
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
            raise InvalidConfig(f"seed must be an integer in [0, 2**64), got {seed!r}")
        self.seed = seed
        self.nonce = _nonce if _nonce is not None else os.urandom(8)
        self._store = _store
        # Where program capsules' sandboxes are: the store's, or (an in-memory engine that
        # replays a store's log, as `syntra verify` does) the store replayed.
        self._store_path = _store.path if _store is not None else _store_path
        # Accounts that budgeted capsules hold their costs on (see syntra.budget).
        self.budget = _budget if _budget is not None else Budget.memory()
        self._capsules: dict[str, Capsule] = {}
        self._by_uid: dict[int, Capsule] = {}
        # Every config ever installed, uninstalled ones too: logs name capsules by uid.
        self._configs: dict[int, dict[str, Any]] = {}
        self._installs: dict[str, int] = {}
        self._next_uid = 1
        self._lock = threading.Lock()
        # Gives decisions whose reward wait ran out their default reward (learning.json
        # feedback.reward_wait_seconds); started with the first capsule that waits.
        self._waiter: threading.Thread | None = None
        self._waiter_lock = threading.Lock()
        # Writes the Arrow logs of each sealed segment (durable engines; see Engine.open).
        self._log_writer = None
        self._stop_waiting = threading.Event()

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
            budget = Budget.open(Path(path) / BUDGET_DIRECTORY)
        except BaseException:
            store.close()
            raise
        try:
            engine = cls._recover(store, seed, budget)
            writer = SegmentLogWriter(path, engine.capsule_config)
            engine._log_writer = writer
            # Registered first, so a segment sealed meanwhile is written by one or the other.
            store.seal_handlers.append(writer.write)
            store.log_watermark = lambda: writer.handled_through
            writer.catch_up(store.wal)
        except BaseException:
            store.close()
            budget.close()
            raise
        store.start_checkpointer(engine.checkpoint)
        budget.start_sweeper()
        engine._start_waiter()
        return engine

    @classmethod
    def _from_identity(cls, identity: dict[str, Any], store=None, budget=None,
                       store_path: str | Path | None = None) -> Engine:
        """An empty engine with the seed and nonce of an engine record or checkpoint.
        Without a ``store``, ``store_path`` names the store whose log it replays (its
        program capsules' policies root their files in that store's sandboxes)."""
        return cls(seed=identity["seed"], _store=store, _nonce=bytes.fromhex(identity["nonce"]), _budget=budget,
                   _store_path=None if store_path is None else Path(store_path))

    @classmethod
    def _recover(cls, store, seed: int | None, budget) -> Engine:
        checkpoint = store.load_checkpoint()
        start = checkpoint.wal_sequence if checkpoint else 0
        # One pass over the log: the record at the checkpoint's position (if still there)
        # proves the checkpoint belongs to this chain, and replay continues from it.
        records = iter(store.wal.read(from_sequence=max(start, 1)))
        first = next(records, None)
        if checkpoint is not None:
            identity = checkpoint.engine
            if start and first is not None and first.sequence == start:
                if first.digest != checkpoint.head_digest:
                    raise StorageCorrupt(
                        f"checkpoint {checkpoint.path.name} records head digest"
                        f" {checkpoint.head_digest.hex()} but WAL record {start} has {first.digest.hex()}"
                    )
                first = next(records, None)
        elif first is not None:
            if first.rtype != RecordType.ENGINE_CREATED:
                raise StorageCorrupt("the WAL does not start with an engine record")
            identity = decode_json(first.payload, first.rtype)
        else:
            identity = None
        if identity is None:
            engine = cls(seed=seed or 0, _store=store, _budget=budget)
            store.record(RecordType.ENGINE_CREATED, encode_json(
                {"format": 1, "seed": engine.seed, "nonce": engine.nonce.hex()}))
            return engine
        if seed is not None and seed != identity["seed"]:
            raise InvalidConfig(f"this store was created with seed {identity['seed']}, not {seed}")
        engine = cls._from_identity(identity, store, budget)
        if checkpoint is not None:
            engine._load_checkpoint(checkpoint)
        expected = start + 1
        for record in itertools.chain((first,) if first is not None else (), records):
            if record.sequence != expected:
                raise StorageCorrupt(
                    f"WAL records {expected}-{record.sequence - 1} are missing: the log after the"
                    f" checkpoint at {start} does not continue where it ends"
                )
            engine._replay(record)
            expected += 1
        for capsule in engine.capsules():
            if capsule._budget is not None:
                capsule._budget.reconcile(capsule._learner)
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
                if "policy" in entry:
                    capsule._policy.import_state(entry["policy"])
                    capsule._replan()
                if capsule._budget is not None:
                    capsule._budget.load_counters(entry.get("budget", {}))
            except (KeyError, TypeError, ValueError) as exc:
                raise StorageCorrupt(f"checkpoint {checkpoint.path.name}: capsule {capsule.name}: {exc}") from None

    def _replay(self, record) -> None:
        rtype = record.rtype
        if rtype == RecordType.DECISION:
            entry = DecisionRecord.decode(record.payload)
            capsule = self._replay_capsule(entry.capsule_uid, record)
            try:
                d, refusal = capsule._replay_decision(entry)
            except (ValueError, TypeError) as exc:
                raise StorageCorrupt(f"replay of WAL record {record.sequence} failed: {exc}") from None
            budgeted = capsule._budget is not None
            refusable = budgeted or capsule._program is not None
            if d.sequence == entry.sequence and refusable and entry.option_index == REFUSED_OPTION:
                capsule._learner.refuse_last(d, "refused")
                capsule._policy.forget(d.sequence)
                if budgeted:
                    capsule._budget.refusals += 1
            elif (d.sequence == entry.sequence and budgeted and entry.option_index < len(capsule.options)
                  and d.option_index != entry.option_index):
                # The budget swapped the rule's choice for one that fit.
                d = capsule._learner.substitute_last(d, entry.option_index)
                capsule._after_budget(d)
                capsule._budget.substitutions += 1
            elif (d.sequence != entry.sequence or d.option_index != entry.option_index
                  or (d.refusal if d.decision_id is not None else None) != refusal):
                raise StorageCorrupt(
                    f"replay diverged at WAL record {record.sequence}: decided option"
                    f" {d.option_index} at sequence {d.sequence} (refusal {d.refusal!r}), the log says"
                    f" {entry.option_index} at {entry.sequence} (refusal {refusal!r})"
                )
        elif rtype == RecordType.FEEDBACK:
            entry = FeedbackRecord.decode(record.payload)
            capsule = self._replay_capsule(entry.capsule_uid, record)
            if capsule._budget is not None and entry.sequence in capsule._budget.holds:
                capsule._budget.replayed_costs[entry.sequence] = entry.cost
            try:
                capsule._replay_feedback(entry)
            except (ValueError, TypeError, KeyError) as exc:
                raise StorageCorrupt(f"replay of WAL record {record.sequence} failed: {exc}") from None
        elif rtype == RecordType.LEARNING:
            body = decode_json(record.payload, rtype)
            capsule = self._replay_capsule(body.get("uid"), record)
            try:
                capsule._replay_change(body)
            except (KeyError, ValueError, SyntraError) as exc:
                raise StorageCorrupt(f"replay of WAL record {record.sequence} failed: {exc}") from None
        elif rtype == RecordType.CAPSULE_INSTALLED:
            self._register(install_config(record.payload))
        elif rtype == RecordType.CAPSULE_UNINSTALLED:
            body = decode_json(record.payload, rtype)
            self._unregister(self._replay_capsule(body["uid"], record))
        elif rtype not in (RecordType.ENGINE_CREATED, RecordType.AUDIT):
            raise StorageCorrupt(f"WAL record {record.sequence} has unknown type {rtype}")

    def _replay_capsule(self, uid: int, record) -> Capsule:
        try:
            return self._by_uid[uid]
        except KeyError:
            raise StorageCorrupt(f"WAL record {record.sequence} names unknown capsule uid {uid}") from None

    def _build(self, config: dict[str, Any]) -> Capsule:
        if self._store:
            return DurableCapsule(config, self._store, self.budget, self._sandbox(config["name"]))
        sandbox = None if self._store_path is None else self._sandbox(config["name"])
        return Capsule(config, self.budget, sandbox)

    def _sandbox(self, name: str) -> Path:
        """The directory a program capsule's policy roots its files in (durable engines)."""
        parsed = CapsuleName.parse(name)
        return self._store_path / SANDBOX_DIRECTORY / parsed.tenant / parsed.job / parsed.capsule

    def _register(self, config: dict[str, Any], capsule: Capsule | None = None) -> Capsule:
        """Make ``capsule`` (built from ``config`` if not given) installed, with its bookkeeping."""
        capsule = capsule or self._build(config)
        capsule._wake = self._start_waiter
        self._capsules[capsule.name] = capsule
        self._by_uid[capsule.uid] = capsule
        self._configs[capsule.uid] = config
        self._installs[capsule.name] = max(self._installs.get(capsule.name, 0), config["install"] + 1)
        self._next_uid = max(self._next_uid, capsule.uid + 1)
        return capsule

    def _unregister(self, capsule: Capsule) -> None:
        del self._capsules[capsule.name], self._by_uid[capsule.uid]
        capsule._retire()

    def capsule_config(self, uid: int) -> dict[str, Any]:
        """The install config of capsule ``uid``, installed now or in the past."""
        return self._configs[uid]

    def install(
        self,
        name: str,
        *,
        options: Iterable[str] | None = None,
        reward: Mapping[str, Any] | None = None,
        algorithm: str | None = None,
        settings: Mapping[str, Any] | None = None,
        learning: Mapping[str, Any] | None = None,
        budget: Mapping[str, Any] | None = None,
        lyc: bytes | None = None,
        limits: Mapping[str, Any] | None = None,
        policy: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        shadow: bool = False,
    ) -> Capsule:
        """Install a capsule under ``name`` and return it.

        Without ``learning``, the capsule runs exactly ``algorithm`` (default
        ``"thompson"``; also ``ucb1``, ``gaussian_thompson``, ``epsilon_greedy``,
        ``softmax``, ``greedy``) tuned by ``settings`` (``prior_a``, ``prior_b``,
        ``samples``, ``max_staleness`` for Thompson; ``exploration`` for UCB1; see
        docs/learning.md), from its first decision. ``learning`` is a ``learning.json``
        config (docs/learning.md; a partial one merges with the defaults): it brings the
        learning layer, with ``auto`` (the meta-bandit over candidate rules) as its
        default algorithm, a warmup, drift detection, feature contexts, refusal, quality
        floors, reward waits and signals. ``algorithm`` and ``settings``, when given,
        override its own. ``budget`` holds each decision's cost on an account of
        :attr:`budget`: ``{"account": name, "costs": {option: microcents},
        "hold_seconds": 300, "value_microcents": ...}`` (see :mod:`syntra.budget.gate`).
        ``lyc`` makes it a program capsule: compiled Lycan whose one choice node has
        ``options`` as its options, run under ``limits`` and an I/O ``policy`` (see
        :mod:`syntra.program`; without a policy every I/O capability is refused);
        ``context={"kind": "discrete", "key": "a.b"}`` takes the context key from the input.
        ``shadow=True`` installs it in shadow mode: each decision is a suggestion the caller
        may ignore, and each feedback names the option the caller took and the probability
        its own policy had of taking it (see :meth:`Capsule.feedback`).
        """
        if type(shadow) is not bool:
            raise InvalidConfig(f"shadow must be True or False, got {shadow!r}")
        parsed = CapsuleName.parse(name)
        spec = RewardSpec.parse(reward)
        parsed_learning = self._learning_config(learning, algorithm, settings)
        if parsed_learning is not None and parsed_learning.actions.kind != "discrete":
            options = _action_options(parsed_learning.actions, options)
        option_names = _check_options(options)
        learning_config = None
        if parsed_learning is None:
            algorithm = algorithm or "thompson"
            settings = _check_settings(algorithm, settings, len(option_names))
        else:   # the settings are checked with the learning config, against their rule
            learning_config = checked_learning(parsed_learning, option_names, spec)
            algorithm, settings = learning_config["algorithm"], dict(learning_config["settings"])
        budget_spec = BudgetSpec.parse(budget, option_names)
        if (limits is not None or policy is not None or context is not None) and lyc is None:
            raise InvalidConfig("limits, policy and context belong to a program: they need lyc")
        key = str(parsed)
        with self._lock:
            if self._store:
                self._store.check()
            if key in self._capsules:
                raise CapsuleExists(key)
            if budget_spec is not None:
                budget_spec.account_index(self.budget)
            # Last of the checks: a program's policy may create its sandbox directory.
            sandbox = self._sandbox(key) if self._store else None
            program = None if lyc is None else ProgramSpec.install(lyc, option_names, limits, policy, sandbox, context)
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
            if learning_config is not None:
                config["learning"] = learning_config
            if budget_spec is not None:
                config["budget"] = budget_spec.to_dict(option_names)
            if program is not None:
                config["program"] = program
            if shadow:   # absent otherwise, so other capsules' configs are as they were
                config["shadow"] = True
            # Build first, so invalid settings fail before anything is logged.
            capsule = self._build(config)
            if self._store:
                self._store.record(RecordType.CAPSULE_INSTALLED,
                                   encode_json({**config, "ts_ns": time.time_ns()}))
            self._register(config, capsule)
        self._start_waiter()
        return capsule

    @staticmethod
    def _learning_config(learning, algorithm, settings) -> LearningConfig | None:
        """The learning config an install asks for (parsed), or None for a plain rule."""
        if learning is None:
            return None
        if not isinstance(learning, Mapping):
            raise InvalidConfig(f"learning must be a mapping (a learning.json config), got {type(learning).__name__}")
        merged = dict(learning)
        if algorithm is not None:
            merged["algorithm"] = algorithm
        if settings is not None:
            merged["settings"] = dict(settings)
        return LearningConfig.parse(merged)

    def _start_waiter(self) -> None:
        with self._waiter_lock:
            if self._waiter is not None or self._stop_waiting.is_set() \
                    or not any(c.reward_wait_seconds for c in self.capsules()):
                return
            self._waiter = threading.Thread(target=self._wait_for_rewards, name="syntra-reward-wait", daemon=True)
            self._waiter.start()

    def _wait_for_rewards(self) -> None:
        while True:
            waits = [c.reward_wait_seconds for c in self.capsules() if c.reward_wait_seconds]
            # A quarter of the shortest wait, so a default lands within 25% of its time.
            if self._stop_waiting.wait(min([w / 4 for w in waits] + [1.0])):
                return
            for capsule in self.capsules():
                if capsule.reward_wait_seconds:
                    try:
                        capsule.expire_overdue()
                    except (UnknownCapsule, StorageError):
                        pass   # uninstalled meanwhile, or the store closed: nothing to give
                    except Exception:
                        _log.exception("giving capsule %s its default rewards failed", capsule.name)

    def install_dir(self, name: str, path: str | Path, **overrides: Any) -> Capsule:
        """Install the capsule directory at ``path`` (written by ``syntra author``) under
        ``name``; every file is checked against its manifest first. ``overrides`` (a
        ``budget``, say) are passed on to :meth:`install`."""
        from syntra.authoring import read_capsule_dir

        return self.install(name, **{**read_capsule_dir(path), **overrides})

    def capsule(self, name: str) -> Capsule:
        """The capsule installed under ``name``."""
        try:
            return self._capsules[name]
        except (KeyError, TypeError):
            CapsuleName.parse(name)  # a malformed name says so precisely
            raise UnknownCapsule(name) from None

    def capsules(self) -> list[Capsule]:
        """Every installed capsule, ordered by name."""
        # One read of the values: an uninstall meanwhile cannot make a listed name vanish.
        return sorted(self._capsules.values(), key=lambda capsule: capsule.name)

    def uninstall(self, name: str) -> None:
        """Remove a capsule and everything it learned."""
        with self._lock:
            capsule = self.capsule(name)
            if not self._store:
                with capsule._lock:   # the reward-wait thread may be in the middle of it
                    self._unregister(capsule)
                return
            # The capsule's lock too, so no decision or feedback of it lands in the log after
            # the uninstall record (replay would not know the capsule any more).
            with capsule._lock:
                self._store.check()
                self._store.record(RecordType.CAPSULE_UNINSTALLED, encode_json(
                    {"uid": capsule.uid, "name": capsule.name, "ts_ns": time.time_ns()}))
                self._unregister(capsule)

    def __contains__(self, name: object) -> bool:
        return name in self._capsules

    # --- durability ----------------------------------------------------------------------

    @property
    def durable(self) -> bool:
        return self._store is not None

    @property
    def path(self) -> Path:
        """The store's directory (durable engines only)."""
        return self._durable_store().path

    @property
    def durable_sequence(self) -> int:
        """The sequence of the last WAL record synced to disk (durable engines only)."""
        return self._durable_store().wal.durable_sequence

    @property
    def wal_histograms(self) -> dict:
        """Fsync latency and records per group commit, as cumulative histograms
        (durable engines only; see ``syntra_core.wal.Wal.histograms``)."""
        return self._durable_store().wal.histograms

    def read_log(self, from_sequence: int = 1):
        """Iterate the synced WAL records from ``from_sequence`` on, each verified against
        the chain as it is read (durable engines only)."""
        return self._durable_store().wal.read(from_sequence)

    def ready(self) -> tuple[bool, str]:
        """Whether the engine can take writes now, and if not, why."""
        if self._store is None:
            return True, "in memory"
        try:
            self._store.check()
        except StorageError as exc:
            return False, str(exc)
        if self._store.wal.closed:
            return False, "the WAL is closed"
        return True, "ok"

    def _durable_store(self):
        if self._store is None:
            raise InvalidConfig("an in-memory engine has no store")
        return self._store

    def _snapshot(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        retired = [c for uid, c in sorted(self._configs.items()) if uid not in self._by_uid]
        engine = {"format": 1, "seed": self.seed, "nonce": self.nonce.hex(), "next_uid": self._next_uid,
                  "installs": dict(sorted(self._installs.items())), "retired": retired}
        capsules = []
        for c in self.capsules():
            capsules.append({"config": c.config, **c._checkpoint_state()})
        return engine, capsules

    def checkpoint(self) -> Path | None:
        """Write a checkpoint now (durable engines only); returns its path."""
        if self._store is None:
            raise InvalidConfig("an in-memory engine has no checkpoints")
        with self._store.checkpoint_lock:
            with self._quiesced() as (sequence, head):
                engine, capsules = self._snapshot()
            return self._store.write_checkpoint(sequence, head, engine, capsules)

    @contextmanager
    def _quiesced(self) -> Iterator[tuple[int, bytes]]:
        """Hold the engine's and every capsule's lock with the WAL and the budget journal
        flushed, yielding the WAL's durable sequence and head digest: the state exported
        meanwhile is exactly the log's through that record (durable engines; the caller
        holds the store's ``checkpoint_lock``, as a checkpoint or a backup does)."""
        with self._lock:
            locks = [c._lock for c in self.capsules()]
            for lock in locks:
                lock.acquire()
            try:
                # Every change so far was applied before it was submitted; once the WAL
                # is flushed, its head is exactly the state we export. The budget
                # journal too, so no settlement the state counts can be lost.
                self._store.wal.flush()
                self.budget.flush()
                yield self._store.wal.durable_sequence, self._store.wal.head_digest
            finally:
                for lock in locks:
                    lock.release()

    def state_digest(self) -> bytes:
        """BLAKE3 of the whole learned state: equal digests mean bit-identical state."""
        with self._lock:
            engine, capsules = self._snapshot()
        return state_digest_of(engine, capsules)

    def close(self, *, checkpoint: bool = True) -> None:
        """Flush the WAL, write a final checkpoint and release the store. Idempotent.

        ``checkpoint=False`` skips the final checkpoint: the next open replays the log tail.
        """
        with self._waiter_lock:
            self._stop_waiting.set()
        if self._waiter is not None and self._waiter is not threading.current_thread():
            self._waiter.join()
        try:
            if self._store is not None:
                self._store.close(final_checkpoint=self.checkpoint if checkpoint else None)
        finally:
            if self._log_writer is not None:
                self._log_writer.close()   # its worker process, if a large seal started one
            self.budget.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
