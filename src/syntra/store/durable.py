"""The durable store behind ``Engine.open``: a WAL, checkpoints and their schedule.

Layout of a store directory::

    wal/           hash-chained WAL segments (syntra_core.wal)
    checkpoints/   ckpt-<wal sequence>.ckpt files (syntra.store.checkpoint)

Every state change is applied in memory and submitted to the WAL under the capsule's lock,
so the order in the log is the order of application; the caller is acknowledged only
after the sync that covers its record. Checkpoints are taken by a background thread every
``checkpoint_every`` records or ``checkpoint_interval`` seconds, and on close.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from syntra.errors import InvalidConfig, StorageCorrupt, StorageError
from syntra.store import checkpoint as ckpt
from syntra.store.files import make_directory
from syntra_core.wal import Wal, WalCorrupt, WalError

log = logging.getLogger("syntra.store")

RETENTION_POLICIES = ("keep", "delete", "archive")


class DurableStore:
    """Owns the WAL and the checkpoint files of one engine directory."""

    OPTIONS = frozenset({
        "durability", "commit_window_us", "segment_bytes", "checkpoint_every", "checkpoint_interval",
        "keep_checkpoints", "retention", "archive_dir", "signing_key", "verify_key",
    })

    def __init__(
        self,
        path: str | Path,
        *,
        durability: str = "fsync",
        commit_window_us: int = 200,
        segment_bytes: int = 64 << 20,
        checkpoint_every: int = 100_000,
        checkpoint_interval: float = 300.0,
        keep_checkpoints: int = 3,
        retention: str = "keep",
        archive_dir: str | Path | None = None,
        signing_key: object = None,
        verify_key: object = None,
    ):
        if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise InvalidConfig(f"checkpoint_every must be an integer >= 1, got {checkpoint_every!r}")
        if not isinstance(checkpoint_interval, (int, float)) or not 0 < checkpoint_interval < float("inf"):
            raise InvalidConfig(f"checkpoint_interval must be a positive number of seconds, got {checkpoint_interval!r}")
        if not isinstance(keep_checkpoints, int) or keep_checkpoints < 1:
            raise InvalidConfig(f"keep_checkpoints must be an integer >= 1, got {keep_checkpoints!r}")
        if retention not in RETENTION_POLICIES:
            raise InvalidConfig(f"retention must be one of {RETENTION_POLICIES}, got {retention!r}")
        if (retention == "archive") != (archive_dir is not None):
            raise InvalidConfig("archive_dir goes with retention='archive', and only with it")
        self.path = Path(path)
        self.checkpoint_dir = self.path / "checkpoints"
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = float(checkpoint_interval)
        self.keep_checkpoints = keep_checkpoints
        self.retention = retention
        self.archive_dir = Path(archive_dir) if archive_dir is not None else None
        self.signing_key = ckpt.load_signing_key(signing_key)
        verify = ckpt.load_verify_key(verify_key)
        self.verify_key = verify or (self.signing_key.public_key() if self.signing_key else None)
        # Called with each SegmentInfo once the WAL seals it (the Arrow logs hook in here).
        self.seal_handlers: list[Callable[[Any], None]] = []
        try:
            make_directory(self.path)
            self.wal = Wal.open(
                self.path / "wal", durability=durability, commit_window_us=commit_window_us,
                segment_bytes=segment_bytes, on_seal=self._sealed,
            )
        except WalCorrupt as exc:
            raise StorageCorrupt(f"WAL damaged: {exc}") from None
        except WalError as exc:  # e.g. the store is already open in another engine
            raise StorageError(f"cannot open store {str(self.path)!r}: {exc}") from None
        except OSError as exc:
            raise StorageError(f"cannot open store {str(self.path)!r}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise InvalidConfig(str(exc)) from None
        self.last_checkpoint_sequence = 0
        # Returns the WAL sequence through which every sealed segment has its Arrow logs;
        # retention never deletes a segment above it. Set by whoever writes the logs.
        self.log_watermark: Callable[[], int] | None = None
        # One checkpoint at a time: background, explicit and close-time ones may race.
        self.checkpoint_lock = threading.Lock()
        self.failure: BaseException | None = None
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def _sealed(self, segment) -> None:
        for handler in list(self.seal_handlers):
            try:
                handler(segment)
            except Exception:  # the WAL is the record of truth; the next open catches up
                log.exception("seal handler failed for segment %s", segment.number)

    # --- writing -----------------------------------------------------------------------

    def check(self) -> None:
        """Raise if the store can no longer acknowledge anything."""
        if self.failure is not None:
            raise StorageError(f"the store failed and refuses further work: {self.failure}")
        if self._closed:
            raise StorageError("the engine is closed")

    def submit(self, rtype: int, payload: bytes):
        try:
            ticket = self.wal.submit(rtype, payload)
        except WalError as exc:
            self.failure = exc
            raise StorageError(f"WAL write failed: {exc}") from None
        if ticket.sequence - self.last_checkpoint_sequence >= self.checkpoint_every:
            self._wake.set()
        return ticket

    def wait(self, ticket) -> None:
        try:
            ticket.wait()
        except WalError as exc:
            self.failure = exc
            raise StorageError(f"WAL sync failed, nothing acknowledged: {exc}") from None

    async def wait_async(self, ticket) -> None:
        try:
            await ticket.wait_async()
        except WalError as exc:
            self.failure = exc
            raise StorageError(f"WAL sync failed, nothing acknowledged: {exc}") from None

    def record(self, rtype: int, payload: bytes) -> int:
        """Append one record and wait until it is durable; returns its sequence."""
        ticket = self.submit(rtype, payload)
        self.wait(ticket)
        return ticket.sequence

    # --- checkpoints -------------------------------------------------------------------

    def load_checkpoint(self) -> ckpt.Checkpoint | None:
        latest = ckpt.load_latest(self.checkpoint_dir, self.verify_key)
        if latest is None:
            return None
        durable = self.wal.durable_sequence
        if latest.wal_sequence > durable:
            raise StorageCorrupt(
                f"checkpoint {latest.path.name} covers WAL sequence {latest.wal_sequence} but the"
                f" WAL ends at {durable}: records were cut from the end of the log"
            )
        # The engine checks the head digest against the log as it starts replaying there.
        self.last_checkpoint_sequence = latest.wal_sequence
        return latest

    def write_checkpoint(self, sequence: int, head_digest: bytes, engine: dict, capsules: list) -> Path:
        """Write, prune and apply retention; the caller holds ``checkpoint_lock``."""
        try:
            path = ckpt.write_checkpoint(
                self.checkpoint_dir, wal_sequence=sequence, head_digest=head_digest,
                engine=engine, capsules=capsules, signing_key=self.signing_key,
            )
            ckpt.prune(self.checkpoint_dir, self.keep_checkpoints)
        except OSError as exc:
            raise StorageError(f"cannot write a checkpoint in {str(self.checkpoint_dir)!r}: {exc}") from None
        self.last_checkpoint_sequence = max(self.last_checkpoint_sequence, sequence)
        if self.retention != "keep":
            kept = ckpt.list_checkpoints(self.checkpoint_dir)
            oldest = ckpt.sequence_of(kept[-1])
            # Keep every segment the oldest kept checkpoint still needs for a fallback, and
            # every segment whose Arrow logs are not written yet.
            if self.log_watermark is not None:
                oldest = min(oldest, self.log_watermark())
            self.wal.retain(oldest + 1, archive_dir=self.archive_dir)
        return path

    def start_checkpointer(self, take_checkpoint: Callable[[], object]) -> None:
        def run() -> None:
            last = time.monotonic()
            while not self._closed:
                self._wake.wait(timeout=min(self.checkpoint_interval, 1.0))
                self._wake.clear()
                if self._closed or self.failure is not None:
                    return
                behind = self.wal.next_sequence - 1 - self.last_checkpoint_sequence
                interval_due = time.monotonic() - last >= self.checkpoint_interval
                if behind >= self.checkpoint_every or (behind > 0 and interval_due):
                    try:
                        take_checkpoint()
                    except Exception:  # the WAL still holds everything; try again later
                        log.exception("background checkpoint failed")
                    last = time.monotonic()

        self._thread = threading.Thread(target=run, name="syntra-checkpointer", daemon=True)
        self._thread.start()

    def close(self, final_checkpoint: Callable[[], object] | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if final_checkpoint is not None and self.failure is None:
                final_checkpoint()
        finally:
            self.wal.close()
