"""The record envelope: one participant's payload, sealed with its compatible and version.

A record is a frame (magic ``LUOR``, see :mod:`luo_core.abi._frame`) whose
body is (little endian)::

    u8 n | compatible (n ASCII bytes, 1..63) | u32 version | payload

:func:`unseal` treats the blob as hostile: the frame is checked (lengths,
checksum) before the body is looked at, and any malformed input raises
:class:`EnvelopeError` naming what is wrong.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Mapping
from typing import Final

import attrs

from luo_core.abi._codec import decode_state, encode_state
from luo_core.abi._frame import OVERHEAD as FRAME_OVERHEAD
from luo_core.abi._frame import FrameKind
from luo_core.abi._schema import COMPATIBLE, schema_of
from luo_core.errors import EnvelopeError, SchemaError

MAGIC: Final = b"LUOR"
FORMAT: Final = 2
MAX_PAYLOAD: Final = 64 << 20
"""Default limit on a record's payload: 64 MiB."""

_NAME_LEN: Final = struct.Struct("<B")
_VERSION: Final = struct.Struct("<I")
_MAX_COMPATIBLE: Final = 63
OVERHEAD: Final = FRAME_OVERHEAD + _NAME_LEN.size + _VERSION.size
"""Envelope bytes around the compatible and the payload (21)."""


def _frame_limit(max_payload: int) -> int:
    return max_payload + _NAME_LEN.size + _MAX_COMPATIBLE + _VERSION.size


RECORD: Final = FrameKind("record", MAGIC, FORMAT, _frame_limit(MAX_PAYLOAD), error=EnvelopeError)


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
    if not isinstance(compatible, str) or not COMPATIBLE.fullmatch(compatible):
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
    body = _NAME_LEN.pack(len(name)) + name + _VERSION.pack(version) + payload
    return RECORD.pack(body, max_body=_frame_limit(max_payload))


def unseal(blob: bytes | bytearray | memoryview, *, max_payload: int = MAX_PAYLOAD) -> Sealed:
    """Open an envelope from :func:`seal`, refusing anything malformed."""
    body = RECORD.unpack(blob, max_body=_frame_limit(max_payload))
    length = body[0] if body else 0
    if not 1 <= length <= _MAX_COMPATIBLE:
        raise EnvelopeError(f"record compatible length {length} is outside 1..63")
    start = _NAME_LEN.size + length + _VERSION.size
    if len(body) < start:
        raise EnvelopeError(
            f"record truncated: {len(body)} body bytes, the header alone needs more"
        )
    raw = body[_NAME_LEN.size : _NAME_LEN.size + length]
    compatible = raw.decode("ascii", errors="replace")
    if not raw.isascii() or not COMPATIBLE.fullmatch(compatible):
        raise EnvelopeError(f"record compatible {compatible!r} is not a valid compatible")
    (version,) = _VERSION.unpack_from(body, start - _VERSION.size)
    payload = body[start:]
    if len(payload) > max_payload:
        raise EnvelopeError(
            f"record payload of {len(payload)} bytes exceeds the {max_payload}-byte limit"
        )
    return Sealed(compatible, version, payload)


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
