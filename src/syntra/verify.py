"""``syntra verify``: check a store end to end without changing it.

:func:`verify_store` checks, in order:

1. **The WAL chain.** Every segment header and every record, with
   :func:`syntra_core.wal.verify`: digests chained from the first record to the head,
   sequences strictly consecutive within and across segments, segment numbers without gaps.
   The first damage is reported exactly: segment, offset, sequence, expected and actual
   digest.
2. **Every checkpoint.** Its digest; with a public key, a present and valid ed25519
   signature. Its head digest must equal the digest of the WAL record at its sequence, and
   it must not point past the end of the log (that would mean records were cut from the
   end).
3. **A full replay.** The log is replayed into a fresh in-memory engine, which re-derives
   every decision: a logged decision that replay does not reproduce is reported with its
   record. At each checkpoint's sequence, the replayed state must equal the checkpoint's.
   The seed and nonce come from the ENGINE_CREATED record; if retention removed the start
   of the log, replay starts from the oldest checkpoint that the log still reaches.
4. **The Arrow logs.** Every file under ``logs/`` opens as an Arrow IPC file with the
   schema of its kind and every value valid; one whose WAL segment is still there must
   hold exactly that segment's records of its kind (WAL sequences and digests). A sealed
   segment without its files is a note, not a failure: the next open writes them.

Not yet checked: kernel decision digests. The log holds no kernel policy snapshot yet, so
there is nothing to re-verify them against; once such records exist, replay will re-verify
each kernel decision digest too.

Damage is reported in the returned :class:`VerifyReport`, never raised. Only a path that is
not a store raises (:class:`~syntra.store.logs.NotAStore`).

Example:

>>> import tempfile
>>> from syntra import Engine
>>> from syntra.verify import verify_store
>>> with tempfile.TemporaryDirectory() as store:
...     with Engine.open(store, durability="none") as eng:
...         cap = eng.install("tenants/acme/jobs/llm/capsules/router", options=["a", "b"])
...         cap.feedback(cap.decide("vip").decision_id, 1.0)
...     report = verify_store(store)
>>> report.ok, report.records, report.decisions, report.feedback, report.checkpoints
(True, 4, 1, 1, 1)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from syntra.budget import Budget
from syntra.engine import BUDGET_DIRECTORY, Engine, state_digest_of
from syntra.errors import StorageCorrupt, StorageError
from syntra.store import checkpoint as ckpt
from syntra.store.logs import (
    CHECKPOINTS_DIR,
    LOG_KINDS,
    WAL_DIR,
    check_store,
    log_files,
    read_log_file,
    wal_segments,
)
from syntra.store.records import RecordType, decode_json, log_kind
from syntra_core.wal import WalCorrupt, scan
from syntra_core.wal import verify as verify_chain
from syntra_core.wal_format import segment_number


@dataclass(frozen=True)
class Problem:
    """One thing that does not check out.

    ``area`` is "wal" (the chain), "checkpoint", "replay" or "logs" (an Arrow log file).
    The other fields say where, as far as they apply: the segment file and the offset of
    the record's frame, its sequence, the digest computed (``expected``) and the one stored
    (``actual``), the checkpoint file, the Arrow log file.
    """

    area: str
    message: str
    segment: str | None = None
    offset: int | None = None
    sequence: int | None = None
    expected: bytes | None = None
    actual: bytes | None = None
    checkpoint: str | None = None
    log: str | None = None


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_store` found. ``ok`` when ``problems`` is empty."""

    path: Path
    segments: int = 0
    records: int = 0
    first_sequence: int = 0
    last_sequence: int = 0
    decisions: int = 0
    feedback: int = 0
    audit: int = 0
    checkpoints: int = 0  # checkpoints that passed every check
    signatures_checked: bool = False
    replayed_from: int | None = None  # replay started after this sequence (None: no replay)
    replayed: int = 0  # records replayed
    log_files: int = 0  # Arrow log files that passed every check
    log_files_orphaned: int = 0  # of those, files whose WAL segment is gone (schema only)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not a failure

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(store_path: str | os.PathLike, public_key: object = None) -> VerifyReport:
    """Check the store in ``store_path``; see the module docstring for what is checked.

    ``public_key``: an ed25519 public key (key object, PEM bytes or PEM file path). With
    one, every checkpoint must carry a valid signature. Raises
    :class:`~syntra.store.logs.NotAStore` for a path that is not a store and
    :class:`~syntra.errors.InvalidConfig` for a key that cannot be loaded.
    """
    path = check_store(store_path)
    key = ckpt.load_verify_key(public_key)
    return _Verification(path, key).run()


class _Verification:
    def __init__(self, path: Path, key):
        self.path = path
        self.key = key
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self.counts = {"decisions": 0, "feedback": 0, "audit": 0}
        self.chain = None  # syntra_core.wal.VerifyResult once the chain checked out
        self.replayed_from: int | None = None
        self.replayed = 0
        self.logs = _LogCheck(path, self.problems, self.notes)
        self.scanned = False  # whether every record went through self.logs
        self.budget = None  # what the budget journals add up to; budgeted capsules replay on it

    def run(self) -> VerifyReport:
        self._check_budget()
        try:
            return self._run()
        finally:
            if self.budget is not None:
                self.budget.close()

    def _check_budget(self) -> None:
        directory = self.path / BUDGET_DIRECTORY
        if not directory.is_dir():
            return
        try:
            self.budget = Budget.replica(directory)
        except (StorageError, WalCorrupt, OSError) as exc:
            self.problems.append(Problem("budget", f"the budget journal does not rebuild: {exc}"))
            return
        problems = self.budget.verify()
        if problems:
            self.problems.append(Problem("budget", problems[0]))
        accounts, holds = self.budget.accounts(), self.budget.reservations()
        if accounts:
            self.notes.append(f"budget: {_plural(len(accounts), 'account')} and {_plural(len(holds), 'open hold')}"
                              " rebuilt from the budget journal; every account conserves its money")

    def _run(self) -> VerifyReport:
        self._check_chain()
        checkpoints = self._read_checkpoints()
        passed = checkpoints
        if self.chain is not None:
            passed = self._check_against_log(checkpoints)
            if self.replayed_from is None:  # no replay, so no scan fed the log check yet
                self._scan_for_logs()
        self.logs.finish(self.scanned)
        chain = self.chain
        return VerifyReport(
            path=self.path,
            segments=chain.segments if chain else len(wal_segments(self.path)),
            records=chain.records if chain else 0,
            first_sequence=chain.first_sequence if chain else 0,
            last_sequence=chain.last_sequence if chain else 0,
            decisions=self.counts["decisions"],
            feedback=self.counts["feedback"],
            audit=self.counts["audit"],
            checkpoints=len(passed),
            signatures_checked=self.key is not None,
            replayed_from=self.replayed_from,
            replayed=self.replayed,
            log_files=self.logs.valid,
            log_files_orphaned=self.logs.orphaned,
            problems=self.problems,
            notes=self.notes,
        )

    # --- the chain ---------------------------------------------------------------------

    def _check_chain(self) -> None:
        try:
            chain = verify_chain(self.path / WAL_DIR)
        except WalCorrupt as exc:
            self.problems.append(Problem(
                "wal", exc.reason, segment=exc.segment, offset=exc.offset,
                sequence=exc.sequence, expected=exc.expected, actual=exc.actual,
            ))
            return
        except OSError as exc:
            self.problems.append(Problem("wal", f"cannot read the WAL: {exc}"))
            return
        if chain.segments == 0:
            self.problems.append(Problem("wal", f"{WAL_DIR}/ holds no segment file"))
            return
        if chain.torn_tail_bytes:
            self.notes.append(
                f"{chain.torn_tail_bytes} bytes after the last record are a torn tail (a crash"
                " cut a write short); the next open truncates them"
            )
        self.chain = chain

    # --- checkpoints -------------------------------------------------------------------

    def _read_checkpoints(self) -> list[ckpt.Checkpoint]:
        """The checkpoints whose files check out (digest, signature, name), oldest first."""
        valid = []
        for path in sorted(ckpt.list_checkpoints(self.path / CHECKPOINTS_DIR)):
            try:
                valid.append(ckpt.read_checkpoint(path, self.key))
            except StorageCorrupt as exc:
                self.problems.append(Problem("checkpoint", str(exc), checkpoint=path.name))
        return valid

    def _check_against_log(self, checkpoints: list[ckpt.Checkpoint]) -> list[ckpt.Checkpoint]:
        """Check heads and states against the WAL (replaying it); return those that pass."""
        first, last = self.chain.first_sequence, self.chain.last_sequence
        placed = []
        for checkpoint in checkpoints:
            if checkpoint.wal_sequence > last:
                self._bad(checkpoint, f"covers WAL sequence {checkpoint.wal_sequence} but the"
                          f" WAL ends at {last}: records were cut from the end of the log")
            elif checkpoint.wal_sequence < first - 1:
                self.notes.append(
                    f"checkpoint {checkpoint.path.name} is older than the log, which starts at"
                    f" sequence {first}: its head cannot be checked and it is not counted"
                )
            else:
                placed.append(checkpoint)

        # The digest before the first record is the first segment header's link.
        digests = {first - 1: self.chain.anchor_digest}
        wanted = {c.wal_sequence for c in placed}
        start = None
        if first > 1:
            start = next((c for c in placed if c.wal_sequence >= first - 1), None)
            if start is None:
                self.problems.append(Problem(
                    "replay", f"the log starts at sequence {first} (retention removed the"
                    f" segments before it) and no valid checkpoint covers sequence {first - 1}:"
                    " there is nothing to replay from", sequence=first))
        states = self._replay(start, wanted, digests) if first == 1 or start else {}

        passed = []
        for checkpoint in placed:
            head = digests.get(checkpoint.wal_sequence)
            if head is not None and head != checkpoint.head_digest:
                self._bad(checkpoint, f"head digest {checkpoint.head_digest.hex()} differs from"
                          f" the digest {head.hex()} of WAL record {checkpoint.wal_sequence}",
                          sequence=checkpoint.wal_sequence, expected=head,
                          actual=checkpoint.head_digest)
                continue
            state = states.get(checkpoint.wal_sequence)
            if state is not None and state != _checkpoint_state(checkpoint):
                self._bad(checkpoint, "its learned state differs from a replay of the log up to"
                          f" WAL sequence {checkpoint.wal_sequence}",
                          sequence=checkpoint.wal_sequence)
                continue
            passed.append(checkpoint)
        return passed

    def _bad(self, checkpoint: ckpt.Checkpoint, why: str, **where: Any) -> None:
        self.problems.append(Problem("checkpoint", f"checkpoint {checkpoint.path.name}: {why}",
                                     checkpoint=checkpoint.path.name, **where))

    # --- replay ------------------------------------------------------------------------

    def _replay(self, start: ckpt.Checkpoint | None, wanted: set[int],
                digests: dict[int, bytes]) -> dict[int, bytes]:
        """Replay the log after ``start`` (from the first record if None), counting records
        and noting the digest of each ``wanted`` sequence; return the replayed state digest
        at each wanted sequence replay reached."""
        self.replayed_from = start.wal_sequence if start else 0
        states: dict[int, bytes] = {}
        engine = None
        failed = False
        try:
            for record in scan(self.path / WAL_DIR):
                self.logs.add(record)
                self.counts[log_kind(record.rtype)] += 1
                if record.sequence in wanted:
                    digests[record.sequence] = record.digest
                if failed or record.sequence <= self.replayed_from:
                    continue
                try:
                    if engine is None:
                        engine = (_engine_from_first(record, self.budget, self.path) if start is None
                                  else _engine_from_checkpoint(start, digests, self.budget, self.path))
                    engine._replay(record)
                except Exception as exc:  # any failure here is the log's, to be reported
                    failed = True
                    self.problems.append(Problem(
                        "replay", _replay_message(record, exc), segment=record.segment,
                        offset=record.offset, sequence=record.sequence))
                    continue
                self.replayed += 1
                if record.sequence in wanted:
                    states[record.sequence] = engine.state_digest()
        except (WalCorrupt, OSError) as exc:  # changed since the chain was checked
            self.problems.append(Problem("wal", f"the WAL changed while it was verified: {exc}"))
        else:
            self.scanned = True
        return states

    def _scan_for_logs(self) -> None:
        try:
            for record in scan(self.path / WAL_DIR):
                self.logs.add(record)
        except (WalCorrupt, OSError) as exc:  # changed since the chain was checked
            self.problems.append(Problem("wal", f"the WAL changed while it was verified: {exc}"))
        else:
            self.scanned = True


# --- the Arrow logs ----------------------------------------------------------------------


class _LogCheck:
    """Checks the Arrow log files, one WAL segment at a time as the scan passes it, so
    only one segment's (sequence, digest) pairs are held at once."""

    def __init__(self, path: Path, problems: list[Problem], notes: list[str]):
        self.path = path
        self.problems = problems
        self.notes = notes
        self.files = {kind: log_files(path, kind) for kind in LOG_KINDS}
        self.valid = 0
        self.orphaned = 0
        self._checked: set[tuple[str, int]] = set()
        self._segment: str | None = None
        self._rows: dict[str, list[tuple[int, bytes]]] = {}

    def add(self, record) -> None:
        if record.segment != self._segment:
            self._compare()
            self._segment = record.segment
            self._rows = {kind: [] for kind in LOG_KINDS}
        self._rows[log_kind(record.rtype)].append((record.sequence, record.digest))

    def finish(self, scanned: bool) -> None:
        """Check what the scan did not reach; ``scanned``: it saw every record."""
        if scanned:
            self._compare()
        segments = wal_segments(self.path)
        for kind, files in self.files.items():
            for number, path in files.items():
                if (kind, number) not in self._checked and self._read(kind, path) is not None:
                    self.valid += 1
                    self.orphaned += number not in segments
        sealed = list(segments)[:-1]  # the last one is live: no files until it is sealed
        unlogged = [n for n in sealed if any(n not in files for files in self.files.values())]
        if unlogged:
            self.notes.append(
                f"{len(unlogged)} sealed WAL segment{'s' if len(unlogged) > 1 else ''}"
                f" ({_ranges(unlogged)}) lack some Arrow log files: the next open writes them"
                " from the WAL")

    def _compare(self) -> None:
        if self._segment is None:
            return
        number = segment_number(self._segment)
        for kind, expected in self._rows.items():
            path = self.files[kind].get(number)
            if path is None:
                continue
            self._checked.add((kind, number))
            table = self._read(kind, path)
            if table is not None and self._matches(kind, path, table, expected):
                self.valid += 1
        self._segment = None

    def _read(self, kind: str, path: Path):
        try:
            return read_log_file(path, kind, full=True)
        except StorageCorrupt as exc:
            self.problems.append(Problem("logs", str(exc), log=str(path)))
            return None

    def _matches(self, kind: str, path: Path, table, expected: list[tuple[int, bytes]]) -> bool:
        rows = list(zip(table.column("wal_sequence").to_pylist(),
                        table.column("digest").to_pylist()))
        if rows == expected:
            return True
        i = next((i for i, (row, want) in enumerate(zip(rows, expected)) if row != want),
                 min(len(rows), len(expected)))
        row = rows[i] if i < len(rows) else None
        want = expected[i] if i < len(expected) else None
        where = {"log": str(path), "segment": self._segment}
        if row and want and row[0] == want[0]:
            self.problems.append(Problem(
                "logs", f"Arrow log {path}: the row for WAL sequence {row[0]} has a digest"
                " other than its WAL record's", sequence=row[0], expected=want[1],
                actual=row[1], **where))
        else:
            sequence = min(x[0] for x in (row, want) if x)
            self.problems.append(Problem(
                "logs", f"Arrow log {path}: its {len(rows)} rows are not the {len(expected)}"
                f" {kind} records of its WAL segment; the first difference is at WAL sequence"
                f" {sequence}", sequence=sequence, **where))
        return False


def _ranges(numbers: list[int]) -> str:
    """1, 2, 3, 5 -> "1-3, 5"."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


# --- engines for replay ------------------------------------------------------------------


def _engine_from_first(record, budget, store_path: Path):
    if record.rtype != RecordType.ENGINE_CREATED:
        raise StorageCorrupt(
            f"the log starts with a {_type_name(record.rtype)} record, not ENGINE_CREATED")
    identity = decode_json(record.payload, record.rtype)
    try:
        return Engine._from_identity(identity, budget=budget, store_path=store_path)
    except (KeyError, TypeError, ValueError) as exc:
        raise StorageCorrupt(f"bad ENGINE_CREATED record: {exc!r}") from None


def _engine_from_checkpoint(start: ckpt.Checkpoint, digests: dict[int, bytes], budget, store_path: Path):
    if digests.get(start.wal_sequence) != start.head_digest:
        raise StorageCorrupt(f"checkpoint {start.path.name}, the one to replay from, does not"
                             " match the log (see its own problem)")
    engine = Engine._from_identity(start.engine, budget=budget, store_path=store_path)
    engine._load_checkpoint(start)
    return engine


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _type_name(rtype: int) -> str:
    try:
        return RecordType(rtype).name
    except ValueError:
        return f"type-{rtype}"


def _replay_message(record, exc: Exception) -> str:
    what = str(exc) if isinstance(exc, StorageCorrupt) else f"{type(exc).__name__}: {exc}"
    return f"replay of {_type_name(record.rtype)} record {record.sequence} failed: {what}"


def _checkpoint_state(checkpoint: ckpt.Checkpoint) -> bytes:
    """The :meth:`Engine.state_digest` of the state a checkpoint holds."""
    return state_digest_of(checkpoint.engine, checkpoint.capsules)


__all__ = ["Problem", "VerifyReport", "verify_store"]
