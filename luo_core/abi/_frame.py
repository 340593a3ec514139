"""The one frame every luo byte format is wrapped in, and its one hardened decoder.

Layout (little endian)::

    magic (4 bytes) | u16 format | u16 flags (0) | u32 body length B | body (B bytes)
    | u32 CRC-32 of everything before it

Records, the KHO root, luo's meta record, saved handoff images, boot
parameters and the messages between processes are all frames; only the magic,
the format and what the body means differ (:data:`KINDS`).  Reading one is
reading hostile input: the header is checked field by field, the declared
length against the kind's limit and against the bytes actually there, and the
checksum before the body is looked at.  Every failure is one line of the
kind's error type, naming the kind.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

import attrs

from luo_core.errors import HandoffError, LiveUpdateError

HEADER: Final = struct.Struct("<4sHHI")
CRC: Final = struct.Struct("<I")
OVERHEAD: Final = HEADER.size + CRC.size
"""Frame bytes around the body (16)."""


@attrs.frozen
class FrameKind:
    """One use of the frame: its magic, format, size limit and error type."""

    what: str
    magic: bytes
    format: int
    max_body: int
    error: type[LiveUpdateError] = HandoffError

    def pack(self, body: bytes | bytearray | memoryview, *, max_body: int | None = None) -> bytes:
        """``body`` in a frame of this kind."""
        limit = self.max_body if max_body is None else max_body
        if len(body) > limit:
            raise self.error(
                f"{self.what} body of {len(body)} bytes exceeds the {limit}-byte limit"
            )
        head = HEADER.pack(self.magic, self.format, 0, len(body))
        crc = zlib.crc32(body, zlib.crc32(head))
        return b"".join((head, body, CRC.pack(crc)))

    def size(self, header: bytes | bytearray | memoryview, *, max_body: int | None = None) -> int:
        """The whole frame's size, from its first :data:`HEADER` bytes (checked)."""
        if len(header) < HEADER.size:
            raise self.error(
                f"{self.what} truncated: {len(header)} bytes is shorter than a frame header"
            )
        magic, fmt, flags, length = HEADER.unpack_from(header)
        length = int(length)
        if magic != self.magic:
            raise self.error(f"not a luo {self.what}: magic {magic!r}, expected {self.magic!r}")
        if fmt != self.format:
            raise self.error(
                f"{self.what} format {fmt} is not supported (this reads {self.format})"
            )
        if flags != 0:
            raise self.error(f"{self.what} flags {flags:#x} are not supported (expected 0)")
        limit = self.max_body if max_body is None else max_body
        if length > limit:
            raise self.error(f"{self.what} body of {length} bytes exceeds the {limit}-byte limit")
        return HEADER.size + length + CRC.size

    def unpack(
        self, blob: bytes | bytearray | memoryview, *, max_body: int | None = None
    ) -> bytes:
        """The body of a frame that must be exactly ``blob``; anything else is refused."""
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise self.error(f"{self.what} must be bytes, not {type(blob).__name__}")
        blob = bytes(blob)  # one copy, so later checks see the bytes the checksum saw
        if len(blob) < OVERHEAD:
            raise self.error(f"{self.what} truncated: {len(blob)} bytes is shorter than a frame")
        total = self.size(blob, max_body=max_body)
        if total != len(blob):
            raise self.error(
                f"{self.what} body length {total - OVERHEAD} does not match the "
                f"{self.what} size ({len(blob)} bytes, expected {total})"
            )
        end = total - CRC.size
        if zlib.crc32(memoryview(blob)[:end]) != CRC.unpack_from(blob, end)[0]:
            raise self.error(f"{self.what} checksum mismatch: the {self.what} is corrupted")
        return blob[HEADER.size : end]
