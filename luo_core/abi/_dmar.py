"""VT-d DMA remapping's root and context tables, and a PCI function's requester id.

Legacy mode, as Linux writes it (``drivers/iommu/intel/iommu.h``: ``struct
root_entry``, ``struct context_entry``, ``context_set_present``,
``context_set_translation_type``, ``context_set_address_root``,
``context_set_address_width``, ``context_set_domain_id``):

* the root table is one 4 KiB page of 256 16-byte entries, one per PCI bus;
  an entry's ``lo`` bit 0 is present, bits 63:12 the context table's address;
* a context table is one page of 256 16-byte entries, one per device and
  function (``devfn``); ``lo`` bit 0 is present, bit 1 fault processing
  disable, bits 3:2 the translation type (0: second-level tables only),
  bits 63:12 the second-level page table's address (:mod:`._iopgtable`);
  ``hi`` bits 2:0 the address width (2: 48 bits, 4 levels), bits 23:8 the
  domain id.

A device's requester id is ``bus << 8 | device << 3 | function``.
"""

from __future__ import annotations

import re
import struct
from typing import Final

import attrs

from luo_core.errors import InvalidArgumentError

ROOT_ENTRIES: Final = 256
CONTEXT_ENTRIES: Final = 256
ENTRY_SIZE: Final = 16
PAIR: Final = struct.Struct("<QQ")
PAGE_MASK: Final = ~0xFFF & (2**64 - 1)
PRESENT: Final = 1 << 0
TT_MULTI_LEVEL: Final = 0
"""``CONTEXT_TT_MULTI_LEVEL``: untranslated requests go through the second-level tables."""
AGAW_48: Final = 2
"""The address width of a 4-level table (48 bits)."""
CONTEXT_LO_RESERVED: Final = 0xFF0
"""Bits 11:4 of ``lo``, reserved in legacy mode (QEMU ``VTD_CONTEXT_ENTRY_RSVD_LO``)."""
_PCI_NAME: Final = re.compile(r"[0-9a-f]{4}:([0-9a-f]{2}):([01][0-9a-f])\.([0-7])")


def requester_id(name: str) -> int | None:
    """The requester id of the PCI function named ``DDDD:BB:DD.F``; ``None`` for others."""
    match = _PCI_NAME.fullmatch(name)
    if match is None or int(match[2], 16) > 0x1F:
        return None
    return int(match[1], 16) << 8 | int(match[2], 16) << 3 | int(match[3])


def encode_root_entry(context_table: int | None) -> bytes:
    """The root entry pointing at ``context_table`` (``None``: not present)."""
    if context_table is None:
        return bytes(ENTRY_SIZE)
    return PAIR.pack(_page(context_table, "context table") | PRESENT, 0)


def decode_root_entry(raw: bytes) -> int | None:
    """The context table a root entry points at; ``None`` if not present."""
    lo, _hi = PAIR.unpack(raw)
    return int(lo & PAGE_MASK) if lo & PRESENT else None


@attrs.frozen
class ContextEntry:
    """A present context entry: the domain and its second-level page table."""

    pgtable: int
    domain_id: int
    translation_type: int = TT_MULTI_LEVEL
    address_width: int = AGAW_48

    def encode(self) -> bytes:
        if not 0 <= self.domain_id < 1 << 16:
            raise InvalidArgumentError(f"domain id {self.domain_id} is not 16 bits")
        lo = _page(self.pgtable, "page table") | (self.translation_type & 3) << 2 | PRESENT
        hi = self.address_width & 7 | self.domain_id << 8
        return PAIR.pack(lo, hi)


def decode_context_entry(raw: bytes) -> ContextEntry | None:
    """The context entry in ``raw``; ``None`` if not present (nothing else is checked)."""
    lo, hi = PAIR.unpack(raw)
    if not lo & PRESENT:
        return None
    return ContextEntry(
        pgtable=int(lo & PAGE_MASK),
        domain_id=int(hi >> 8 & 0xFFFF),
        translation_type=int(lo >> 2 & 3),
        address_width=int(hi & 7),
    )


def root_entry_address(root_table: int, rid: int) -> int:
    return root_table + (rid >> 8) * ENTRY_SIZE


def context_entry_address(context_table: int, rid: int) -> int:
    return context_table + (rid & 0xFF) * ENTRY_SIZE


def _page(addr: object, what: str) -> int:
    if type(addr) is not int or addr < 0 or addr & 0xFFF or addr >= 1 << 52:
        raise InvalidArgumentError(f"{what} {addr!r} is not a page-aligned 52-bit address")
    return addr
