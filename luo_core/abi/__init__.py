"""Everything that crosses a boundary, as bytes, read as hostile.

Versioned state schemas and their deterministic CBOR codec, record envelopes,
the KHO root layout, saved handoff images and ABI manifest entries.  Nothing
here imports the kernel or the hardware side.
"""

from luo_core.abi._codec import decode_state, encode_state
from luo_core.abi._envelope import Sealed, decode_record, encode_record, seal, unseal
from luo_core.abi._image import load_image, save_image
from luo_core.abi._kho import HandedOver, KhoNode, MemRange, read_root
from luo_core.abi._manifest import Finding, compare_entries, manifest_entry
from luo_core.abi._schema import Schema, schema_of, section, state
from luo_core.abi._types import PhysAddr, PhysRange, s8, s16, s32, s64, u8, u16, u32, u64

__all__ = [
    "Finding",
    "HandedOver",
    "KhoNode",
    "MemRange",
    "PhysAddr",
    "PhysRange",
    "Schema",
    "Sealed",
    "compare_entries",
    "decode_record",
    "decode_state",
    "encode_record",
    "encode_state",
    "load_image",
    "manifest_entry",
    "read_root",
    "s8",
    "s16",
    "s32",
    "s64",
    "save_image",
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
