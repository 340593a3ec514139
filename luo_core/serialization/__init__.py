"""Serialization: the handoff container that carries preserved state across kexec."""

from luo_core.serialization._handoff import (
    FORMAT_VERSION,
    MAGIC,
    HandoffRecord,
    decode_handoff,
    encode_handoff,
)

__all__ = ["FORMAT_VERSION", "MAGIC", "HandoffRecord", "decode_handoff", "encode_handoff"]
