"""The handoff container: every participant's preserved bytes, in one blob.

This is the only thing that crosses a kexec.  Layout (little endian)::

    magic "LUOH" | u16 format | u32 body length | body (canonical CBOR) | u32 CRC-32

The body is an array of ``[kind, name, compatible, data]`` records, at most
one per ``(kind, name)``.  Reading treats the blob as hostile: anything
malformed raises :class:`~luo_core.HandoffError`.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Iterable

import attrs
import cbor2

from luo_core._errors import HandoffError

MAGIC = b"LUOH"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHI")
_CRC = struct.Struct("<I")
MAX_HANDOFF_BYTES = 1 << 30


@attrs.frozen
class HandoffRecord:
    """One participant's preserved data, as the next kernel receives it."""

    kind: str
    name: str
    compatible: str
    data: bytes

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)


def encode_handoff(records: Iterable[HandoffRecord]) -> bytes:
    """Serialise records into one blob; the same records give the same bytes."""
    ordered = sorted(records, key=lambda r: r.key)
    for a, b in itertools.pairwise(ordered):
        if a.key == b.key:
            raise HandoffError(f"two handoff records for {a.kind} {a.name!r}")
    body = cbor2.dumps([[r.kind, r.name, r.compatible, r.data] for r in ordered], canonical=True)
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, len(body))
    return head + body + _CRC.pack(zlib.crc32(head + body))


def decode_handoff(blob: bytes) -> dict[tuple[str, str], HandoffRecord]:
    """Parse a blob from :func:`encode_handoff`, refusing anything malformed."""
    if len(blob) < _HEADER.size + _CRC.size:
        raise HandoffError(f"handoff truncated: {len(blob)} bytes is shorter than a header")
    magic, version, length = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise HandoffError(f"not a luo handoff: magic {magic!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise HandoffError(
            f"handoff format {version} is not supported (this reads {FORMAT_VERSION})"
        )
    if length != len(blob) - _HEADER.size - _CRC.size or length > MAX_HANDOFF_BYTES:
        raise HandoffError(f"handoff body length {length} does not match the blob size")
    end = _HEADER.size + length
    (crc,) = _CRC.unpack_from(blob, end)
    if zlib.crc32(blob[:end]) != crc:
        raise HandoffError("handoff checksum mismatch: the blob is corrupted")
    try:
        body = cbor2.loads(blob[_HEADER.size : end])
    except Exception as exc:  # cbor2 raises several types on hostile input
        raise HandoffError(f"handoff body is not valid CBOR: {exc}") from None
    if not isinstance(body, list):
        raise HandoffError("handoff body is not a list of records")
    records: dict[tuple[str, str], HandoffRecord] = {}
    for index, item in enumerate(body):
        if not (
            isinstance(item, list)
            and len(item) == 4
            and all(isinstance(field, str) for field in item[:3])
            and isinstance(item[3], bytes)
        ):
            raise HandoffError(f"handoff record {index} is malformed")
        record = HandoffRecord(*item)
        if record.key in records:
            raise HandoffError(f"duplicate handoff record for {record.kind} {record.name!r}")
        records[record.key] = record
    return records
