"""Checkpoints: the learned state of every capsule at one WAL position.

File layout (little-endian)::

    magic      8 bytes  b"SYNCKPT\\x00"
    version    u16      1
    reserved   u16      0
    head_len   u32      length of the JSON header
    header     JSON     wal_sequence, head_digest (hex), created_ns, engine, capsules;
                        every bytes value in it is replaced by {"$blob": [offset, length]}
    blobs      ...      the raw state arrays the header points into
    digest     32 bytes BLAKE3 of everything above
    sig_len    u16      0, or 64 with an ed25519 signature of the digest
    signature  sig_len bytes

A checkpoint is written to a temporary file, synced, renamed into place, and the directory
is synced (``syntra.store.files.write_atomically``), so a crash leaves either the old set of checkpoints or the new one. Loading
checks the digest and, when a verification key is configured, requires a valid signature.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from syntra.errors import InvalidConfig, StorageCorrupt
from syntra.store.files import fsync_directory, make_directory, remove_leftovers, write_atomically
from syntra.store.state import PREFIX, decode_state, encode_state

log = logging.getLogger("syntra.store")

MAGIC = b"SYNCKPT\x00"
VERSION = 1
_SIG_LEN = struct.Struct("<H")
DIGEST_SIZE = 32
SUFFIX = ".ckpt"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    path: Path
    wal_sequence: int  # the last WAL record whose effect the state includes
    head_digest: bytes  # that record's chain digest (32 zero bytes for an empty log)
    created_ns: int
    engine: dict[str, Any]
    capsules: list[dict[str, Any]]


def load_signing_key(source: object) -> Ed25519PrivateKey | None:
    """An ed25519 private key from a key object, PEM bytes or a PEM file path."""
    if source is None or isinstance(source, Ed25519PrivateKey):
        return source
    pem = _read_key_source(source, "signing_key")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidConfig(f"signing_key is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidConfig("signing_key must be an ed25519 key")
    return key


def load_verify_key(source: object) -> Ed25519PublicKey | None:
    """An ed25519 public key from a key object, PEM bytes or a PEM file path."""
    if source is None or isinstance(source, Ed25519PublicKey):
        return source
    pem = _read_key_source(source, "verify_key")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise InvalidConfig(f"verify_key is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidConfig("verify_key must be an ed25519 key")
    return key


def _read_key_source(source: object, field: str) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, (str, os.PathLike)):
        try:
            return Path(source).read_bytes()
        except OSError as exc:
            raise InvalidConfig(f"cannot read {field} {str(source)!r}: {exc.strerror}") from None
    raise InvalidConfig(f"{field} must be a key, PEM bytes or a path, got {type(source).__name__}")


def write_checkpoint(directory: Path, *, wal_sequence: int, head_digest: bytes,
                     engine: dict[str, Any], capsules: list[dict[str, Any]],
                     signing_key: Ed25519PrivateKey | None = None) -> Path:
    """Write one checkpoint atomically and return its path."""
    body = MAGIC + encode_state(
        {"wal_sequence": wal_sequence, "head_digest": head_digest.hex(),
         "created_ns": time.time_ns(), "engine": engine, "capsules": capsules},
    )
    digest = blake3.blake3(body).digest()
    signature = signing_key.sign(digest) if signing_key is not None else b""
    data = body + digest + _SIG_LEN.pack(len(signature)) + signature

    make_directory(directory)
    final = directory / f"ckpt-{wal_sequence:020d}{SUFFIX}"
    write_atomically(final, lambda file: file.write(data))
    return final


def read_checkpoint(path: Path, verify_key: Ed25519PublicKey | None = None) -> Checkpoint:
    """Load and check one checkpoint. Raises StorageCorrupt naming the problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StorageCorrupt(f"checkpoint {path.name}: cannot read: {exc.strerror}") from None
    try:
        if len(data) < len(MAGIC) + PREFIX.size + DIGEST_SIZE + _SIG_LEN.size:
            raise ValueError(f"truncated ({len(data)} bytes)")
        magic = data[:len(MAGIC)]
        version, _, header_len = PREFIX.unpack_from(data, len(MAGIC))
        if magic != MAGIC:
            raise ValueError("not a checkpoint (bad magic)")
        if version != VERSION:
            raise ValueError(f"unsupported version {version}")
        body_end = _find_body_end(data, len(MAGIC) + PREFIX.size + header_len)
        digest = data[body_end:body_end + DIGEST_SIZE]
        (sig_len,) = _SIG_LEN.unpack_from(data, body_end + DIGEST_SIZE)
        signature = data[body_end + DIGEST_SIZE + _SIG_LEN.size:]
        if len(signature) != sig_len:
            raise ValueError("signature length mismatch")
        if verify_key is not None:
            if not signature:
                raise ValueError("unsigned, but a verification key is configured")
            verify_key.verify(signature, digest)
        state = decode_state(data[len(MAGIC):body_end])
        named = sequence_of(path)
        if named is None:
            raise ValueError("not named ckpt-<wal sequence>.ckpt")
        if named != int(state["wal_sequence"]):
            raise ValueError(f"holds WAL sequence {state['wal_sequence']}, but its name says {named}")
        return Checkpoint(
            path=path,
            wal_sequence=int(state["wal_sequence"]),
            head_digest=bytes.fromhex(state["head_digest"]),
            created_ns=int(state["created_ns"]),
            engine=state["engine"],
            capsules=state["capsules"],
        )
    except InvalidSignature:
        raise StorageCorrupt(f"checkpoint {path.name}: bad signature") from None
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise StorageCorrupt(f"checkpoint {path.name}: {exc}") from None


def _find_body_end(data: bytes, blobs_start: int) -> int:
    # The trailer is digest + u16 signature length + signature of 0 or 64 bytes; the body
    # ends where a trailer's digest matches what precedes it.
    for sig_len in (0, 64):
        end = len(data) - sig_len - _SIG_LEN.size - DIGEST_SIZE
        if (end >= blobs_start
                and _SIG_LEN.unpack_from(data, end + DIGEST_SIZE)[0] == sig_len
                and blake3.blake3(data[:end]).digest() == data[end:end + DIGEST_SIZE]):
            return end
    raise ValueError("digest mismatch: the file is torn or damaged")


def sequence_of(path: Path) -> int | None:
    """The WAL sequence a checkpoint file's name says it covers (None if not so named)."""
    stem = path.name.removesuffix(SUFFIX)
    prefix, _, digits = stem.partition("-")
    return int(digits) if prefix == "ckpt" and digits.isdigit() else None


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files, newest first (temporary files are ignored)."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"ckpt-*{SUFFIX}"), reverse=True)


def load_latest(directory: Path, verify_key: Ed25519PublicKey | None = None) -> Checkpoint | None:
    """The newest valid checkpoint, falling back past damaged ones.

    Returns None when there is no checkpoint at all. Raises StorageCorrupt when checkpoints
    exist but none is valid: recovery must not silently start over.
    """
    problems = []
    for path in list_checkpoints(directory):
        try:
            return read_checkpoint(path, verify_key)
        except StorageCorrupt as exc:
            log.warning("skipping checkpoint: %s", exc)
            problems.append(str(exc))
    if problems:
        raise StorageCorrupt(
            "no valid checkpoint: " + "; ".join(problems)
            + ". If they are damaged (not merely unsigned or signed by another key), moving them"
            " away forces a full replay from the first WAL segment."
        )
    return None


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and stale temporary files)."""
    removed = list_checkpoints(directory)[keep:]
    for path in removed:
        path.unlink(missing_ok=True)
    removed += remove_leftovers(directory)
    if removed:
        fsync_directory(directory)
    return removed
