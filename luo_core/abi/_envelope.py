"""The record envelope: one participant's payload, sealed with its compatible and version.

Layout (little endian)::

    magic "LUOR" | u16 format | u8 n | compatible (n ASCII bytes, 1..63)
    | u32 version | u32 payload length L | payload (L bytes) | u32 CRC-32

The CRC-32 (zlib) covers every byte before it.  :func:`unseal` treats the
blob as hostile: any malformed input raises :class:`EnvelopeError` naming
what is wrong, before the payload is looked at.
"""

from __future__ import annotations

import errno
import struct
import zlib
from collections.abc import Mapping
from typing import Final

import attrs

from luo_core.abi._codec import decode_state, encode_state
from luo_core.abi._schema import COMPATIBLE, schema_of
from luo_core.errors import EnvelopeError, SchemaError

MAGIC: Final = b"LUOR"
FORMAT: Final = 1
MAX_PAYLOAD: Final = 64 << 20
"""Default limit on a record's payload: 64 MiB."""

_HEAD: Final = struct.Struct("<4sHB")
_TAIL: Final = struct.Struct("<II")
_CRC: Final = struct.Struct("<I")
OVERHEAD: Final = _HEAD.size + _TAIL.size + _CRC.size
"""Envelope bytes around the compatible and the payload (19)."""


@attrs.frozen
class Sealed:
    """An unsealed record: who wrote it, at which version, and the payload bytes."""

    compatible: str
    version: int
    payload: bytes = attrs.field(repr=lambda p: f"<{len(p)} bytes>")


def seal(
    compatible: str, version: int, payload: bytes, *, max_payload: int = MAX_PAYLOAD
) -> bytes:
    """Wrap ``payload`` in an envelope naming its ``compatible`` and ``version``."""
    if not isinstance(compatible, str) or not COMPATIBLE.match(compatible):
        raise EnvelopeError(f"compatible {compatible!r} must be 1-63 chars of [a-z0-9,._+-]")
    if type(version) is not int or not 0 <= version < 1 << 32:
        raise EnvelopeError(f"{compatible}: version {version!r} does not fit a u32")
    if not isinstance(payload, bytes):
        raise EnvelopeError(f"{compatible}: payload must be bytes, not {type(payload).__name__}")
    if len(payload) > max_payload:
        raise EnvelopeError(
            f"{compatible}: payload of {len(payload)} bytes exceeds the {max_payload}-byte limit"
        )
    name = compatible.encode("ascii")
    body = (
        _HEAD.pack(MAGIC, FORMAT, len(name)) + name + _TAIL.pack(version, len(payload)) + payload
    )
    return body + _CRC.pack(zlib.crc32(body))


def unseal(blob: bytes | bytearray | memoryview, *, max_payload: int = MAX_PAYLOAD) -> Sealed:
    """Open an envelope from :func:`seal`, refusing anything malformed."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise EnvelopeError(f"record must be bytes, not {type(blob).__name__}")
    blob = bytes(blob)  # one copy, so later checks see the bytes the checksum saw
    if len(blob) < OVERHEAD + 1:
        raise EnvelopeError(f"record truncated: {len(blob)} bytes is shorter than an envelope")
    magic, fmt, length = _HEAD.unpack_from(blob)
    if magic != MAGIC:
        raise EnvelopeError(f"not a luo record: magic {magic!r}, expected {MAGIC!r}")
    if fmt != FORMAT:
        raise EnvelopeError(f"record format {fmt} is not supported (this reads {FORMAT})")
    if not 1 <= length <= 63:
        raise EnvelopeError(f"record compatible length {length} is outside 1..63")
    if len(blob) < OVERHEAD + length:
        raise EnvelopeError(f"record truncated: {len(blob)} bytes, the header alone needs more")
    version, size = _TAIL.unpack_from(blob, _HEAD.size + length)
    if size > max_payload:
        raise EnvelopeError(f"record payload of {size} bytes exceeds the {max_payload}-byte limit")
    if len(blob) != OVERHEAD + length + size:
        raise EnvelopeError(
            f"record payload length {size} does not match the record size "
            f"({len(blob)} bytes, expected {OVERHEAD + length + size})"
        )
    end = len(blob) - _CRC.size
    (crc,) = _CRC.unpack_from(blob, end)
    if zlib.crc32(blob[:end]) != crc:
        raise EnvelopeError("record checksum mismatch: the record is corrupted")
    raw = blob[_HEAD.size : _HEAD.size + length]
    compatible = raw.decode("ascii", errors="replace")
    if not raw.isascii() or not COMPATIBLE.match(compatible):
        raise EnvelopeError(f"record compatible {compatible!r} is not a valid compatible")
    return Sealed(compatible, version, blob[end - size : end])


def encode_record(obj: object, *, version: int | None = None) -> bytes:
    """``obj`` as a sealed record: :func:`encode_state` inside an envelope."""
    schema = schema_of(type(obj))
    payload = encode_state(obj, version=version)
    return seal(schema.compatible, schema.version if version is None else version, payload)


def decode_record(
    blob: bytes, schemas: Mapping[str, type], *, max_payload: int = MAX_PAYLOAD
) -> object:
    """Unseal ``blob`` and decode it with the class ``schemas`` maps its compatible to."""
    sealed = unseal(blob, max_payload=max_payload)
    cls = schemas.get(sealed.compatible)
    if cls is None:
        raise SchemaError(
            f"no schema for compatible {sealed.compatible!r} "
            f"(known: {', '.join(sorted(schemas)) or 'none'})",
            errno=errno.ENOENT,
        )
    if schema_of(cls).compatible != sealed.compatible:
        raise SchemaError(
            f"schemas maps {sealed.compatible!r} to {cls.__name__}, "
            f"which is {schema_of(cls).compatible!r}"
        )
    return decode_state(cls, sealed.payload, sealed.version)
