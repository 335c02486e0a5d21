"""A deterministic encoding for nested state: JSON for structure, raw bytes kept raw.

``encode_state`` writes u16 version, u16 reserved, u32 header length, a JSON header in which
every bytes value is replaced by ``{"$blob": [offset, length]}``, then the blobs. The same
state always encodes to the same bytes, so a digest of the encoding identifies the state.

>>> decode_state(encode_state({"rows": [b"\\x00\\x01", 2]}))
{'rows': [b'\\x00\\x01', 2]}
"""

from __future__ import annotations

import json
import struct
from typing import Any

VERSION = 1
PREFIX = struct.Struct("<HHI")


def _split_blobs(value: Any, blobs: list[bytes], offset: list[int]) -> Any:
    if isinstance(value, (bytes, bytearray)):
        ref = {"$blob": [offset[0], len(value)]}
        blobs.append(bytes(value))
        offset[0] += len(value)
        return ref
    if isinstance(value, dict):
        # Sorted, so the blob order (like the JSON, written with sort_keys) is canonical.
        return {key: _split_blobs(value[key], blobs, offset) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_split_blobs(item, blobs, offset) for item in value]
    return value


def _join_blobs(value: Any, blob_area: bytes) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$blob"}:
            start, length = value["$blob"]
            if not (isinstance(start, int) and isinstance(length, int)
                    and 0 <= start and start + length <= len(blob_area)):
                raise ValueError(f"blob reference {value['$blob']} outside the file")
            return blob_area[start:start + length]
        return {key: _join_blobs(item, blob_area) for key, item in value.items()}
    if isinstance(value, list):
        return [_join_blobs(item, blob_area) for item in value]
    return value


def encode_state(state: dict[str, Any]) -> bytes:
    """Encode ``state`` (dicts, lists, str, int, float, bool, None and bytes)."""
    blobs: list[bytes] = []
    header = _split_blobs(state, blobs, [0])
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return b"".join([PREFIX.pack(VERSION, 0, len(header_bytes)), header_bytes, *blobs])


def decode_state(data: bytes) -> dict[str, Any]:
    """Invert :func:`encode_state`. Raises ValueError on anything malformed."""
    try:
        version, _, header_len = PREFIX.unpack_from(data)
    except struct.error:
        raise ValueError("state encoding is truncated") from None
    if version != VERSION:
        raise ValueError(f"unsupported state encoding version {version}")
    header = json.loads(data[PREFIX.size:PREFIX.size + header_len])
    return _join_blobs(header, data[PREFIX.size + header_len:])
