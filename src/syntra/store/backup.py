"""Backup bundles of a durable store, and restoring one after verifying it.

:func:`write_backup` writes a tar archive of one consistent moment of a running engine:
the point where a checkpoint taken for the bundle (at WAL sequence S) and the durable end
of the WAL and of the budget journal were captured together, under the locks that
:meth:`Engine.checkpoint <syntra.engine.Engine.checkpoint>` takes. Traffic pauses only
while those are captured; the files are copied afterwards from descriptors opened
meanwhile (WAL and journal files are append-only, so a prefix captured once stays valid,
and a descriptor keeps a segment readable even if retention removes it).

Members, in this order, named relative to the store directory::

    checkpoints/ckpt-<S>.ckpt           the checkpoint taken for the bundle
    wal/wal-<N>.seg                     the WAL segment holding record S, cut right after it
    budget/journal/wal-<N>.seg          the budget journal through its last durable record
    budget/journal.d/<tool>/wal-<N>.seg journals of `syntra budget` runs, as far as written
    sandboxes/<t>/<j>/<c>/...           program capsules' sandbox files (regular files)
    backup.json                         the manifest (below)

The manifest holds the format, S, the WAL head digest at S, the engine's state digest at
S, the capsule count, the budget arena's capacities, and every other member's size and
BLAKE3. Left out: the budget arena (a cache the owner rebuilds from the journals at open;
restore creates an empty one with the recorded capacities), the Arrow logs (derived from
WAL segments, written again as segments seal; the history before S's segment is not in a
bundle), lock files, and links or special files under ``sandboxes/``.

:func:`stage_restore` extracts a bundle into a staging directory, refusing anything that
could write outside it, then verifies it (manifest digests, :func:`syntra.verify.verify_store`,
the checkpoint against the manifest, an :meth:`Engine.open <syntra.engine.Engine.open>`).
:func:`swap_in` then replaces the store directory by renames, keeping the old one.

>>> import io, tempfile
>>> from pathlib import Path
>>> from syntra import Engine
>>> with tempfile.TemporaryDirectory() as root:
...     with Engine.open(Path(root) / "store", durability="none") as eng:
...         cap = eng.install("tenants/acme/jobs/llm/capsules/router", options=["a", "b"])
...         cap.feedback(cap.decide("vip").decision_id, 1.0)
...         bundle = io.BytesIO()
...         info = write_backup(eng, bundle)
...     staged = stage_restore(io.BytesIO(bundle.getvalue()), Path(root) / "staged",
...                            expected_blake3=info.blake3, max_bytes=1 << 30)
>>> (staged.wal_sequence, staged.capsules) == (info.wal_sequence, 1)
True
>>> staged.state_digest == info.state_digest
True
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
import tarfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import blake3
from syntra_core.budget import Arena, BudgetError
from syntra_core.wal import LOCK_FILE, WalCorrupt
from syntra_core.wal_format import segment_number

from syntra.budget import ARENA_FILE
from syntra.budget.journal import TOOL_JOURNALS
from syntra.engine import BUDGET_DIRECTORY, SANDBOX_DIRECTORY, Engine, state_digest_of
from syntra.errors import (
    InvalidArgument,
    InvalidConfig,
    StorageCorrupt,
    StorageError,
    SyntraError,
)
from syntra.store import checkpoint as ckpt
from syntra.store.files import fsync_directory, make_directory
from syntra.verify import verify_store

MANIFEST = "backup.json"
FORMAT = 1
# docs/wal-format.md: a 96-byte segment header; a frame is a 20-byte header, the payload
# and a 32-byte digest.
SEGMENT_HEADER_BYTES = 96
FRAME_OVERHEAD_BYTES = 52
_COPY_BYTES = 1 << 20
# A manifest lists one entry per member; this bounds what is read into memory.
_MAX_MANIFEST_BYTES = 16 << 20
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
# Every member a bundle may hold (the manifest aside), relative to the store directory.
_LAYOUT = (
    re.compile(r"checkpoints/ckpt-\d{20}\.ckpt"),
    re.compile(r"wal/wal-\d{16}\.seg"),
    re.compile(r"budget/journal/wal-\d{16}\.seg"),
    re.compile(r"budget/journal\.d/[A-Za-z0-9_.-]+/wal-\d{16}\.seg"),
    re.compile(r"sandboxes/[^/]+/[^/]+/[^/]+/.+"),
)


class BackupInvalid(SyntraError):
    """A backup bundle is malformed, damaged or unsafe; the message names the member and
    the check. Nothing outside the staging directory was touched."""


@dataclass(frozen=True)
class BackupInfo:
    """What :func:`write_backup` wrote: the WAL sequence the bundle ends at and the chain's
    head digest there, the archive's size and BLAKE3 (hex), the capsules installed, and the
    engine's :meth:`~syntra.engine.Engine.state_digest` at that sequence."""

    wal_sequence: int
    head_digest: bytes
    size_bytes: int
    blake3: str
    capsules: int
    state_digest: bytes


@dataclass(frozen=True)
class RestoreInfo:
    """What a staged bundle holds: the WAL sequence and head digest it ends at, its
    capsule count and its state digest (equal to the backup's)."""

    wal_sequence: int
    head_digest: bytes
    capsules: int
    state_digest: bytes


# --- writing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """``size`` bytes from the start of the file open on ``fd``, stored as ``name``."""

    name: str
    fd: int
    size: int


class _SourceReader:
    """Reads a :class:`_Source` for tarfile, hashing what it hands out."""

    def __init__(self, source: _Source):
        self.source = source
        self.position = 0
        self.hasher = blake3.blake3()

    def read(self, size: int = -1) -> bytes:
        left = self.source.size - self.position
        size = left if size is None or size < 0 else min(size, left)
        data = os.pread(self.source.fd, size, self.position) if size else b""
        if len(data) < size:
            raise StorageError(f"{self.source.name}: the file is shorter than the {self.source.size}"
                               " bytes captured for the backup (changed while it was copied)")
        self.position += len(data)
        self.hasher.update(data)
        return data


class _CountingWriter:
    """Passes writes on to ``out``, counting and hashing them."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.size = 0
        self.hasher = blake3.blake3()

    def write(self, data) -> int:
        self.out.write(data)
        self.size += len(data)
        self.hasher.update(data)
        return len(data)


def write_backup(engine: Engine, out: BinaryIO) -> BackupInfo:
    """Write a bundle of the durable ``engine``'s store to ``out`` while it keeps serving.

    Restoring it (``stage_restore`` + ``swap_in``, or extracting it and ``Engine.open``)
    gives exactly the engine's state at the returned ``wal_sequence``, budget included:
    every call acknowledged before ``write_backup`` was called is in it, none that started
    after it returned. Takes a checkpoint in the store as a side effect. Raises
    InvalidConfig for an in-memory engine, StorageError if the store is closed or failed
    or a file cannot be read or written (StorageCorrupt if the WAL read back is damaged).
    """
    store = getattr(engine, "_store", None)
    if store is None:
        raise InvalidConfig("an in-memory engine has no store to back up")
    try:
        with ExitStack() as files:
            return _write_bundle(_capture(engine, store, files), out)
    except WalCorrupt as exc:
        raise StorageCorrupt(f"backup failed: the log is damaged: {exc}") from None
    except OSError as exc:
        raise StorageError(f"backup failed: {exc}") from None


@dataclass
class _Moment:
    """What a bundle holds, captured at one WAL sequence."""

    sequence: int
    head: bytes
    state_digest: bytes
    capsules: int
    journal_sequence: int
    arena: dict[str, int]
    created_ns: int
    sources: list[_Source]


def _capture(engine: Engine, store, files: ExitStack) -> _Moment:
    """Take the bundle's checkpoint and open every file it copies (closed by ``files``).

    The moment Engine.checkpoint takes: with every change applied and both logs flushed,
    the WAL head is exactly the state exported.
    """
    budget = engine.budget
    journal = budget._wal
    with store.checkpoint_lock:   # also keeps retention and pruning off the files below
        store.check()   # a failed WAL's flush would raise its own error, not StorageError
        with engine._quiesced() as (sequence, head):
            engine_state, capsule_states = engine._snapshot()
            journal_sequence = journal.durable_sequence if journal is not None else 0
            created_ns = time.time_ns()
        checkpoint = store.write_checkpoint(sequence, head, engine_state, capsule_states)
        root = Path(os.path.abspath(store.path))   # the logs name their files by absolute path
        sources = [_open_source(files, root, checkpoint)]
        sources += [_open_source(files, root, Path(path), size)
                    for path, size in _log_through(store.wal, sequence, sequence, head)]
        if journal is not None:
            sources += [_open_source(files, root, Path(path), size)
                        for path, size in _log_through(journal, 1, journal_sequence, None)]
        if budget.directory is not None:
            sources += _tool_journals(files, root, Path(budget.directory))
        sources += _sandbox_files(files, root)
    state_digest = state_digest_of(engine_state, capsule_states)
    arena = {"accounts": budget.arena.account_capacity, "reservations": budget.arena.reservation_capacity}
    return _Moment(sequence, head, state_digest, len(capsule_states), journal_sequence, arena,
                   created_ns, sources)


def _log_through(wal, first: int, last: int, head: bytes | None) -> list[tuple[str, int | None]]:
    """(path, bytes to copy; None: all) of ``wal``'s segments holding records ``first`` to
    ``last``, the one holding ``last`` cut right after it (records past ``last`` may have
    been written since it was captured). An empty log: its first segment's header."""
    segments = wal.segments
    if last == 0:
        return [(segments[0].path, SEGMENT_HEADER_BYTES)]
    record = next(iter(wal.read(from_sequence=last)), None)   # read back and verified
    if record is None:
        raise StorageError(f"the log in {wal.directory} no longer holds record {last}")
    if head is not None and record.digest != head:
        raise StorageError(f"WAL record {last} has digest {record.digest.hex()}, not the head"
                           f" {head.hex()} captured for the backup")
    kept: list[tuple[str, int | None]] = [
        (s.path, None) for s in segments
        if s.path != record.segment and s.last_sequence >= first and s.first_sequence <= last]
    kept.append((record.segment, record.offset + FRAME_OVERHEAD_BYTES + len(record.payload)))
    return kept


def _open_source(files: ExitStack, root: Path, path: Path, size: int | None = None) -> _Source:
    path = Path(os.path.abspath(path))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    files.callback(os.close, fd)
    if size is None:
        size = os.fstat(fd).st_size
    return _Source(path.relative_to(root).as_posix(), fd, size)


def _tool_journals(files: ExitStack, root: Path, budget_dir: Path) -> list[_Source]:
    """The segments of every tool journal, as far as written now: their writers are other
    processes, so a last frame may be cut short, which a scan treats as a torn tail."""
    tools = budget_dir / TOOL_JOURNALS
    if not tools.is_dir():
        return []
    sources = []
    for directory in sorted(p for p in tools.iterdir() if p.is_dir() and not p.is_symlink()):
        for path in sorted(directory.iterdir()):
            if segment_number(path.name) is not None and path.is_file() and not path.is_symlink():
                sources.append(_open_source(files, root, path))
    return sources


def _sandbox_files(files: ExitStack, root: Path) -> list[_Source]:
    """Every regular file under ``sandboxes/`` (links are not followed or kept)."""
    sources = []
    for directory, subdirectories, names in os.walk(root / SANDBOX_DIRECTORY):
        subdirectories.sort()
        for name in sorted(names):
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                sources.append(_open_source(files, root, path))
    return sources


def _write_bundle(moment: _Moment, out: BinaryIO) -> BackupInfo:
    writer = _CountingWriter(out)
    mtime = moment.created_ns // 1_000_000_000
    members = []
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for source in moment.sources:
            reader = _SourceReader(source)
            tar.addfile(_member(source.name, source.size, mtime), reader)
            members.append({"name": source.name, "size": source.size, "blake3": reader.hasher.hexdigest()})
        manifest = json.dumps({
            "format": FORMAT,
            "wal_sequence": moment.sequence,
            "head_digest": moment.head.hex(),
            "state_digest": moment.state_digest.hex(),
            "capsules": moment.capsules,
            "budget_journal_sequence": moment.journal_sequence,
            "budget_arena": moment.arena,
            "created_ns": moment.created_ns,
            "members": members,
        }, indent=1, sort_keys=True).encode()
        tar.addfile(_member(MANIFEST, len(manifest), mtime), io.BytesIO(manifest))
    return BackupInfo(moment.sequence, moment.head, writer.size, writer.hasher.hexdigest(),
                      moment.capsules, moment.state_digest)


def _member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    return info


# --- restoring ----------------------------------------------------------------------------


class _LimitedReader:
    """Reads the bundle for tarfile: at most ``limit`` bytes, hashing them."""

    def __init__(self, source: BinaryIO, limit: int):
        self.source = source
        self.limit = limit
        self.size = 0
        self.hasher = blake3.blake3()

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.limit + 1 - self.size
        data = self.source.read(min(size, self.limit + 1 - self.size))
        self.size += len(data)
        if self.size > self.limit:
            raise BackupInvalid(f"the bundle is larger than max_bytes ({self.limit} bytes)")
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        """Read (and hash) whatever follows the archive's end."""
        while self.read(_COPY_BYTES):
            pass


def stage_restore(source: BinaryIO, staging_dir: Path, *, expected_blake3: str | None = None,
                  max_bytes: int, verify_key: object = None) -> RestoreInfo:
    """Extract the bundle read from ``source`` into ``staging_dir`` and verify it.

    ``staging_dir`` must be absent or an empty directory. Every member must be a regular
    file whose name is relative, has no ``..`` and lies in the store layout (see the module
    docs); the bundle (and so each member) must fit in ``max_bytes``; with
    ``expected_blake3`` the whole bundle must hash to it. Then: every member's size and
    BLAKE3 must match the manifest, :func:`~syntra.verify.verify_store` must pass (with
    ``verify_key``, checkpoints must be signed by it) and end at the manifest's sequence,
    the checkpoint must hold the manifest's head and state digests, and ``Engine.open``
    must open the staged store (it is closed again without a checkpoint).

    Any problem raises :class:`BackupInvalid` naming the member and the check (StorageError
    for an I/O failure); either way ``staging_dir`` is removed and nothing else is touched.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise InvalidArgument("max_bytes", f"must be a positive number of bytes, got {max_bytes!r}")
    if expected_blake3 is not None and not (isinstance(expected_blake3, str)
                                            and _HEX_DIGEST.fullmatch(expected_blake3)):
        raise BackupInvalid(f"expected_blake3 {expected_blake3!r} is not a BLAKE3 digest (64 lowercase hex digits)")
    verify_key = ckpt.load_verify_key(verify_key)
    staging = Path(staging_dir)
    if staging.exists() and (not staging.is_dir() or staging.is_symlink() or any(staging.iterdir())):
        raise InvalidArgument("staging_dir", f"{str(staging)!r} must be absent or an empty directory")
    try:
        make_directory(staging)
        manifest = _extract(source, staging, max_bytes, expected_blake3)
        info = _verify_staged(staging, manifest, verify_key)
        _sync_tree(staging)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise StorageError(f"cannot stage the restore in {str(staging)!r}: {exc}") from None
        raise
    return info


def _extract(source: BinaryIO, staging: Path, max_bytes: int, expected_blake3: str | None) -> dict[str, Any]:
    """Write every member into ``staging``, each checked before it is written; return the
    manifest once every member matches it."""
    reader = _LimitedReader(source, max_bytes)
    extracted: dict[str, tuple[int, str]] = {}
    manifest_bytes = None
    current = None
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                current = member.name
                name = _checked_member(member, max_bytes)
                if name in extracted or (name == MANIFEST and manifest_bytes is not None):
                    raise BackupInvalid(f"member {name!r} appears twice")
                data = tar.extractfile(member)
                if name == MANIFEST:
                    if member.size > _MAX_MANIFEST_BYTES:
                        raise BackupInvalid(f"member {MANIFEST!r} is {member.size} bytes, over {_MAX_MANIFEST_BYTES}")
                    manifest_bytes = data.read()
                else:
                    extracted[name] = _write_member(staging, name, data, member.size, extracted)
                current = None
        reader.drain()
    except (tarfile.TarError, EOFError) as exc:
        where = f" in member {current!r}" if current is not None else ""
        raise BackupInvalid(f"the bundle is truncated or not a tar archive{where}: {exc}") from None
    if expected_blake3 is not None and reader.hasher.hexdigest() != expected_blake3:
        raise BackupInvalid(f"the bundle's BLAKE3 is {reader.hasher.hexdigest()}, expected {expected_blake3}")
    if manifest_bytes is None:
        raise BackupInvalid(f"the bundle has no {MANIFEST} (it comes last: the bundle is truncated?)")
    manifest = _parse_manifest(manifest_bytes)
    _check_members(manifest, extracted)
    return manifest


def _checked_member(member: tarfile.TarInfo, max_bytes: int) -> str:
    """The member's name once it is safe to write: a regular file in the store layout."""
    name = member.name
    path = PurePosixPath(name)
    if "\x00" in name or "\\" in name or path.is_absolute():
        raise BackupInvalid(f"member {name!r} has an absolute or unsafe path")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise BackupInvalid(f"member {name!r} has a '..', '.' or empty path component")
    if member.issym() or member.islnk():
        raise BackupInvalid(f"member {name!r} is a link ({member.linkname!r}); bundles hold regular files only")
    if member.ischr() or member.isblk() or member.isfifo():
        raise BackupInvalid(f"member {name!r} is a device or FIFO; bundles hold regular files only")
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.sparse is not None:
        raise BackupInvalid(f"member {name!r} is not a regular file (tar type {member.type!r})")
    if name != MANIFEST and not any(pattern.fullmatch(name) for pattern in _LAYOUT):
        raise BackupInvalid(f"member {name!r} is outside the store layout")
    if member.size > max_bytes:
        raise BackupInvalid(f"member {name!r} is {member.size} bytes, over max_bytes ({max_bytes})")
    return name


def _write_member(staging: Path, name: str, data: BinaryIO, size: int,
                  extracted: dict[str, tuple[int, str]]) -> tuple[int, str]:
    """Create ``staging/name`` with the member's data (synced); (size, BLAKE3 hex)."""
    target = staging.joinpath(*name.split("/"))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except (FileExistsError, NotADirectoryError):
        other = next((n for n in extracted if name.startswith(n + "/") or n.startswith(name + "/")), None)
        raise BackupInvalid(f"member {name!r} collides with member {other!r}") from None
    hasher = blake3.blake3()
    written = 0
    with os.fdopen(fd, "wb") as file:
        while written < size:
            chunk = data.read(min(_COPY_BYTES, size - written))
            if not chunk:
                raise BackupInvalid(f"the bundle ends inside member {name!r} (truncated)")
            file.write(chunk)
            hasher.update(chunk)
            written += len(chunk)
        file.flush()
        os.fsync(file.fileno())
    return written, hasher.hexdigest()


def _parse_manifest(data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackupInvalid(f"{MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise BackupInvalid(f"{MANIFEST} must be a JSON object")
    if manifest.get("format") != FORMAT:
        raise BackupInvalid(f"{MANIFEST}: format {manifest.get('format')!r} is not {FORMAT}")
    for key in ("wal_sequence", "capsules", "budget_journal_sequence"):
        _require(manifest, key, _is_count, "a non-negative integer")
    if manifest["wal_sequence"] < 1:
        raise BackupInvalid(f"{MANIFEST}: wal_sequence must be at least 1, got {manifest['wal_sequence']}")
    for key in ("head_digest", "state_digest"):
        _require(manifest, key, lambda v: isinstance(v, str) and _HEX_DIGEST.fullmatch(v), "64 lowercase hex digits")
    _require(manifest, "budget_arena", lambda v: isinstance(v, dict) and set(v) == {"accounts", "reservations"}
             and all(_is_count(n) and n >= 1 for n in v.values()), "{accounts, reservations}: positive integers")
    _require(manifest, "members", lambda v: isinstance(v, list) and all(
        isinstance(m, dict) and isinstance(m.get("name"), str) and _is_count(m.get("size"))
        and isinstance(m.get("blake3"), str) for m in v), "a list of {name, size, blake3}")
    return manifest


def _require(manifest: dict[str, Any], key: str, valid, what: str) -> None:
    if not valid(manifest.get(key)):
        raise BackupInvalid(f"{MANIFEST}: {key} must be {what}, got {manifest.get(key)!r}")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_members(manifest: dict[str, Any], extracted: dict[str, tuple[int, str]]) -> None:
    listed = {}
    for entry in manifest["members"]:
        if entry["name"] in listed:
            raise BackupInvalid(f"{MANIFEST} lists member {entry['name']!r} twice")
        listed[entry["name"]] = (entry["size"], entry["blake3"])
    for name in listed:
        if name not in extracted:
            raise BackupInvalid(f"member {name!r}, listed in {MANIFEST}, is not in the bundle")
    for name, (size, digest) in extracted.items():
        if name not in listed:
            raise BackupInvalid(f"member {name!r} is not listed in {MANIFEST}")
        want_size, want_digest = listed[name]
        if size != want_size:
            raise BackupInvalid(f"member {name!r} is {size} bytes, {MANIFEST} says {want_size}")
        if digest != want_digest:
            raise BackupInvalid(f"member {name!r} has BLAKE3 {digest}, {MANIFEST} says {want_digest}:"
                                " it was changed")
    checkpoints = sorted(n for n in extracted if n.startswith("checkpoints/"))
    wanted = f"checkpoints/ckpt-{manifest['wal_sequence']:020d}{ckpt.SUFFIX}"
    if checkpoints != [wanted]:
        raise BackupInvalid(f"the bundle must hold exactly one checkpoint, {wanted!r}; it holds {checkpoints}")
    if not any(n.startswith("wal/") for n in extracted):
        raise BackupInvalid("the bundle holds no WAL segment")


def _verify_staged(staging: Path, manifest: dict[str, Any], verify_key) -> RestoreInfo:
    sequence = manifest["wal_sequence"]
    capacities = manifest["budget_arena"]
    budget_dir = staging / BUDGET_DIRECTORY
    if budget_dir.is_dir():
        # An empty arena of the original capacities: opening fills it from the journals.
        try:
            Arena.create(budget_dir / ARENA_FILE, accounts=capacities["accounts"],
                         reservations=capacities["reservations"]).close()
        except (BudgetError, ValueError) as exc:
            raise BackupInvalid(f"{MANIFEST}: budget_arena {capacities}: {exc}") from None

    report = verify_store(staging, verify_key)
    if not report.ok:
        raise BackupInvalid("the staged store does not verify: "
                            + "; ".join(_describe(problem, staging) for problem in report.problems[:3]))
    if report.last_sequence != sequence:
        raise BackupInvalid(f"the bundle's WAL ends at sequence {report.last_sequence}, {MANIFEST} says {sequence}")
    checkpoint = ckpt.read_checkpoint(staging / f"checkpoints/ckpt-{sequence:020d}{ckpt.SUFFIX}", verify_key)
    state_digest = state_digest_of(checkpoint.engine, checkpoint.capsules)
    for what, found, listed in (("head digest", checkpoint.head_digest.hex(), manifest["head_digest"]),
                                ("state digest", state_digest.hex(), manifest["state_digest"]),
                                ("capsule count", len(checkpoint.capsules), manifest["capsules"])):
        if found != listed:
            raise BackupInvalid(f"checkpoint {checkpoint.path.name}: {what} {found}, {MANIFEST} says {listed}")

    try:
        Engine.open(staging, verify_key=verify_key).close(checkpoint=False)
    except SyntraError as exc:
        raise BackupInvalid(f"the staged store does not open: {exc}") from None
    return RestoreInfo(sequence, checkpoint.head_digest, len(checkpoint.capsules), state_digest)


def _describe(problem, staging: Path) -> str:
    """A verify problem, with the file it names relative to the store (a bundle member)."""
    where = ""
    if problem.segment:
        where = f" [member {Path(os.path.relpath(problem.segment, staging)).as_posix()!r}"
        where += f" offset {problem.offset}]" if problem.offset is not None else "]"
    elif problem.checkpoint:
        where = f" [member 'checkpoints/{problem.checkpoint}']"
    return f"{problem.area}: {problem.message}{where}"


def _sync_tree(root: Path) -> None:
    """fsync every directory under ``root`` and its parent: the files are synced already."""
    for directory, _, _ in os.walk(root):
        fsync_directory(Path(directory))
    fsync_directory(root.parent)


# --- swapping in --------------------------------------------------------------------------


def swap_in(staging_dir: Path, data_dir: Path) -> Path:
    """Replace the store ``data_dir`` by the staged one in ``staging_dir`` (from
    :func:`stage_restore`), by renames on the same file system with the parent directories
    synced; return where the old store is kept: ``<name>.before-restore-<UTC time>``
    beside it.

    The engine on ``data_dir`` must be closed first: an open WAL there raises StorageError
    and nothing changes. If the second rename fails the old store is put back.
    """
    staging, data = Path(staging_dir), Path(data_dir)
    for field, path in (("staging_dir", staging), ("data_dir", data)):
        if not path.is_dir() or path.is_symlink():
            raise InvalidArgument(field, f"{str(path)!r} is not a store directory")
    if not (staging / "wal").is_dir():
        raise InvalidArgument("staging_dir", f"{str(staging)!r} holds no store (no wal/ directory)")
    if staging.stat().st_dev != data.parent.stat().st_dev:
        raise InvalidArgument("staging_dir", f"{str(staging)!r} must be on the file system of {str(data)!r}")
    with _closed_store(data):
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        kept = data.with_name(f"{data.name}.before-restore-{stamp}")
        suffix = 1
        while kept.exists():   # two restores within a second
            kept = data.with_name(f"{data.name}.before-restore-{stamp}-{suffix}")
            suffix += 1
        try:
            data.rename(kept)
        except OSError as exc:
            raise StorageError(f"cannot move the store {str(data)!r} aside: {exc}") from None
        try:
            fsync_directory(data.parent)
            staging.rename(data)
        except OSError as exc:
            kept.rename(data)
            fsync_directory(data.parent)
            raise StorageError(f"cannot move the staged store {str(staging)!r} into place (the old"
                               f" store is back): {exc}") from None
        fsync_directory(data.parent)
        if staging.parent != data.parent:
            fsync_directory(staging.parent)
    return kept


@contextmanager
def _closed_store(data: Path) -> Iterator[None]:
    """Hold the store's WAL lock while it is swapped, so no engine opens it meanwhile;
    StorageError if an engine has it open now."""
    lock_path = data / "wal" / LOCK_FILE
    if not lock_path.exists():
        yield
        return
    fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(f"the store {str(data)!r} is still open in an engine: close it"
                               " before swapping a restore in") from None
        yield
    finally:
        os.close(fd)
