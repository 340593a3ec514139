"""Serialization: versioned state schemas, deterministic CBOR, record envelopes, ABI manifest."""

from luo_core.serialization._codec import decode_state, encode_state
from luo_core.serialization._envelope import (
    Sealed,
    decode_record,
    encode_record,
    seal,
    unseal,
)
from luo_core.serialization._manifest import Finding, compare_entries, manifest_entry
from luo_core.serialization._schema import Schema, schema_of, section, state
from luo_core.serialization._types import (
    DecodeError,
    EnvelopeError,
    FieldValueError,
    PhysAddr,
    PhysRange,
    SchemaError,
    VersionTooNewError,
    VersionTooOldError,
    s8,
    s16,
    s32,
    s64,
    u8,
    u16,
    u32,
    u64,
)

__all__ = [
    "DecodeError",
    "EnvelopeError",
    "FieldValueError",
    "Finding",
    "PhysAddr",
    "PhysRange",
    "Schema",
    "SchemaError",
    "Sealed",
    "VersionTooNewError",
    "VersionTooOldError",
    "compare_entries",
    "decode_record",
    "decode_state",
    "encode_record",
    "encode_state",
    "manifest_entry",
    "s8",
    "s16",
    "s32",
    "s64",
    "schema_of",
    "seal",
    "section",
    "state",
    "u8",
    "u16",
    "u32",
    "u64",
    "unseal",
]
