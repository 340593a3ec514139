"""The interrupt-remapping table entry (IRTE) in physical memory, and the MSI that names one.

An IRTE is 128 bits, two little-endian u64 (``low``, ``high``), in the
layout of Linux's ``struct irte`` (``include/linux/dmar.h``), which is the
Intel VT-d one (QEMU ``union VTD_IR_TableEntry``,
``include/hw/i386/intel_iommu.h``).  Bit 15, IM (Linux ``pst``), picks the
format:

=========  ======================  ============================================
bits       remapped (IM = 0)       posted (IM = 1)
=========  ======================  ============================================
0          P, present              P, present
1          FPD                     FPD
2..7       DM, RH, TM, DLM (3)     reserved
8..11      available to software   available to software
12..14     reserved                reserved (12..13), URG, urgent (14)
16..23     vector                  vector (posted into PIR)
24..31     reserved                reserved
32..63     destination ID          reserved (32..37), PDA bits 6..31 (38..63)
64..79     SID, source ID          SID
80..83     SQ (2), SVT (2)         SQ, SVT
84..127    reserved                reserved (84..95), PDA bits 32..63 (96..127)
=========  ======================  ============================================

Linux writes a posted entry in ``intel_ir_set_vcpu_affinity``
(``drivers/iommu/intel/irq_remapping.c``): ``p_pst = 1``, ``p_urgent``,
``p_vector``, and the descriptor address split as ``pda_l = pda >> 6`` and
``pda_h = pda >> 32`` (``PDA_LOW_BIT``, ``PDA_HIGH_BIT``): the descriptor is
64-byte aligned by construction.  Hardware ignores every field of an entry
whose P is clear, and faults on reserved bits of a present one (QEMU
``vtd_irte_get``: the present check comes first).

A device raises a remapped interrupt by a DWORD write (the MSI) whose
address is, in its low 32 bits (Linux ``struct x86_msi_addr_lo``, the
``dmar_*`` fields; QEMU ``union VTD_IR_MSIAddress``): bits 31..20 ``0xFEE``,
19..5 handle bits 0..14, 4 the interrupt format (1: remappable), 3 SHV
(subhandle valid), 2 handle bit 15, 1..0 ignored; its high 32 bits are
zero.  With SHV set the data's bits 15..0 are the subhandle, added to the
handle to give the entry's index, and bits 31..16 are reserved; without
SHV the data is not used (QEMU ``vtd_interrupt_remap_msi``).  Linux always
sets SHV (``fill_msi_msg``).
"""

from __future__ import annotations

import struct
from typing import Final

import attrs

from luo_core.errors import DecodeError, FieldValueError

IRTE_SIZE: Final = 16
MAX_ENTRIES: Final = 1 << 16
"""The largest table VT-d can describe (IRTA size 15: ``2**(15 + 1)`` entries)."""
_LAYOUT: Final = struct.Struct("<QQ")

IRTE_PRESENT: Final = 1 << 0
IRTE_FPD: Final = 1 << 1
IRTE_DEST_MODE: Final = 1 << 2
IRTE_REDIR_HINT: Final = 1 << 3
IRTE_TRIGGER_MODE: Final = 1 << 4
IRTE_URGENT: Final = 1 << 14
IRTE_IM: Final = 1 << 15
"""Interrupt mode: set for the posted format (Linux ``pst``, QEMU ``irte_mode``)."""
DELIVERY_SHIFT: Final = 5
AVAIL_SHIFT: Final = 8
VECTOR_SHIFT: Final = 16
DEST_SHIFT: Final = 32
PDA_LOW_SHIFT: Final = 38
PDA_LOW_BIT: Final = 26
PDA_HIGH_BIT: Final = 32
PDA_ALIGN: Final = 64
SQ_SHIFT: Final = 16
SVT_SHIFT: Final = 18

REMAPPED_RESERVED_LOW: Final = 0x7 << 12 | 0xFF << 24
POSTED_RESERVED_LOW: Final = 0x3F << 2 | 0x3 << 12 | 0x3FFF << 24
REMAPPED_RESERVED_HIGH: Final = ((1 << 44) - 1) << 20
POSTED_RESERVED_HIGH: Final = 0xFFF << 20

MSI_HEAD: Final = 0xFEE
MSI_FORMAT_REMAP: Final = 1 << 4
MSI_SHV: Final = 1 << 3
MSI_HANDLE_15: Final = 1 << 2
MSI_HANDLE_SHIFT: Final = 5
MSI_SUBHANDLE_MASK: Final = 0xFFFF


def _source(sid: int, sq: int, svt: int) -> int:
    if not (0 <= sid <= 0xFFFF and 0 <= sq <= 3 and 0 <= svt <= 3):
        raise FieldValueError(f"SID {sid:#x}, SQ {sq} or SVT {svt} does not fit 16/2/2 bits")
    return sid | sq << SQ_SHIFT | svt << SVT_SHIFT


def _common(vector: int, avail: int) -> None:
    if not (0 <= vector <= 0xFF and 0 <= avail <= 0xF):
        raise FieldValueError(f"vector {vector} or avail {avail} does not fit 8/4 bits")


@attrs.frozen
class RemappedIrte:
    """A present remapped-format entry: the vector and where it goes."""

    vector: int
    dest_id: int = 0
    dest_mode: bool = False
    redir_hint: bool = False
    trigger_mode: bool = False
    delivery_mode: int = 0
    fpd: bool = False
    avail: int = 0
    sid: int = 0
    sq: int = 0
    svt: int = 0

    def encode(self) -> bytes:
        """The entry's 16 bytes; reserved bits are zero."""
        _common(self.vector, self.avail)
        if not (0 <= self.delivery_mode <= 7 and 0 <= self.dest_id <= 0xFFFF_FFFF):
            raise FieldValueError(
                f"delivery mode {self.delivery_mode} or destination {self.dest_id:#x} "
                "does not fit 3/32 bits"
            )
        low = (
            IRTE_PRESENT
            | (IRTE_FPD if self.fpd else 0)
            | (IRTE_DEST_MODE if self.dest_mode else 0)
            | (IRTE_REDIR_HINT if self.redir_hint else 0)
            | (IRTE_TRIGGER_MODE if self.trigger_mode else 0)
            | self.delivery_mode << DELIVERY_SHIFT
            | self.avail << AVAIL_SHIFT
            | self.vector << VECTOR_SHIFT
            | self.dest_id << DEST_SHIFT
        )
        return _LAYOUT.pack(low, _source(self.sid, self.sq, self.svt))


@attrs.frozen
class PostedIrte:
    """A present posted-format entry: the vector to post into the descriptor at ``pda``."""

    vector: int
    pda: int
    urgent: bool = False
    fpd: bool = False
    avail: int = 0
    sid: int = 0
    sq: int = 0
    svt: int = 0

    def encode(self) -> bytes:
        """The entry's 16 bytes, ``pda`` split as Linux splits it; reserved bits are zero."""
        _common(self.vector, self.avail)
        if type(self.pda) is not int or not 0 <= self.pda < 1 << 64 or self.pda % PDA_ALIGN:
            raise FieldValueError(
                f"posted-descriptor address {self.pda!r} is not a 64-byte aligned u64"
            )
        pda_l = (self.pda >> (32 - PDA_LOW_BIT)) & ((1 << PDA_LOW_BIT) - 1)
        pda_h = (self.pda >> 32) & ((1 << PDA_HIGH_BIT) - 1)
        low = (
            IRTE_PRESENT
            | IRTE_IM
            | (IRTE_FPD if self.fpd else 0)
            | (IRTE_URGENT if self.urgent else 0)
            | self.avail << AVAIL_SHIFT
            | self.vector << VECTOR_SHIFT
            | pda_l << PDA_LOW_SHIFT
        )
        high = _source(self.sid, self.sq, self.svt) | pda_h << DEST_SHIFT
        return _LAYOUT.pack(low, high)


Irte = RemappedIrte | PostedIrte


def decode_irte(data: bytes | bytearray | memoryview) -> Irte | None:
    """Read 16 bytes as hostile input: ``None`` when P is clear (the rest is then
    ignored), else the entry; reserved bits set in a present entry are refused."""
    if len(data) != IRTE_SIZE:
        raise DecodeError(f"an interrupt-remapping table entry is 16 bytes, not {len(data)}")
    low, high = _LAYOUT.unpack(data)
    if not low & IRTE_PRESENT:
        return None
    posted = bool(low & IRTE_IM)
    reserved_low, reserved_high = (
        (POSTED_RESERVED_LOW, POSTED_RESERVED_HIGH)
        if posted
        else (REMAPPED_RESERVED_LOW, REMAPPED_RESERVED_HIGH)
    )
    if low & reserved_low or high & reserved_high:
        raise DecodeError(
            f"a present {'posted' if posted else 'remapped'}-format IRTE has reserved bits "
            f"set (low {low & reserved_low:#x}, high {high & reserved_high:#x})"
        )
    fpd = bool(low & IRTE_FPD)
    avail = low >> AVAIL_SHIFT & 0xF
    vector = low >> VECTOR_SHIFT & 0xFF
    sid, sq, svt = high & 0xFFFF, high >> SQ_SHIFT & 3, high >> SVT_SHIFT & 3
    if posted:
        pda = (low >> PDA_LOW_SHIFT) << (32 - PDA_LOW_BIT) | (high >> DEST_SHIFT) << 32
        return PostedIrte(
            vector=vector,
            pda=pda,
            urgent=bool(low & IRTE_URGENT),
            fpd=fpd,
            avail=avail,
            sid=sid,
            sq=sq,
            svt=svt,
        )
    return RemappedIrte(
        vector=vector,
        dest_id=low >> DEST_SHIFT,
        dest_mode=bool(low & IRTE_DEST_MODE),
        redir_hint=bool(low & IRTE_REDIR_HINT),
        trigger_mode=bool(low & IRTE_TRIGGER_MODE),
        delivery_mode=low >> DELIVERY_SHIFT & 0x7,
        fpd=fpd,
        avail=avail,
        sid=sid,
        sq=sq,
        svt=svt,
    )


@attrs.frozen
class RemappableMsi:
    """A decoded remappable-format MSI: the handle, and the subhandle when SHV is set."""

    handle: int
    shv: bool
    subhandle: int = 0

    @property
    def index(self) -> int:
        """The IRTE it names: ``handle + subhandle`` with SHV (not wrapped at 16 bits)."""
        return self.handle + self.subhandle if self.shv else self.handle


def encode_msi(handle: int, subhandle: int = 0) -> tuple[int, int]:
    """``(address, data)`` naming IRTE ``handle`` + ``subhandle``, as Linux's ``fill_msi_msg``."""
    if not (0 <= handle <= 0xFFFF and 0 <= subhandle <= MSI_SUBHANDLE_MASK):
        raise FieldValueError(f"handle {handle} or subhandle {subhandle} does not fit 16 bits")
    address = (
        MSI_HEAD << 20
        | (handle & 0x7FFF) << MSI_HANDLE_SHIFT
        | MSI_FORMAT_REMAP
        | MSI_SHV
        | (MSI_HANDLE_15 if handle & 0x8000 else 0)
    )
    return address, subhandle


def decode_msi(address: int, data: int) -> RemappableMsi | None:
    """Read an MSI (u64 address, u32 data) as hostile input.

    ``None`` for a compatibility-format MSI (interrupt format bit clear),
    which names no IRTE; a :class:`~luo_core.errors.DecodeError` when the
    address's high half is not zero, its head is not ``0xFEE``, or SHV is set
    with data bits 31..16 set.
    """
    if not (0 <= address < 1 << 64 and 0 <= data < 1 << 32):
        raise DecodeError(f"MSI address {address:#x} or data {data:#x} does not fit u64/u32")
    if address >> 32 or address >> 20 != MSI_HEAD:
        raise DecodeError(f"MSI address {address:#x} is not in 0xfee00000..0xfeefffff")
    if not address & MSI_FORMAT_REMAP:
        return None
    handle = (address >> MSI_HANDLE_SHIFT) & 0x7FFF | (0x8000 if address & MSI_HANDLE_15 else 0)
    if not address & MSI_SHV:
        return RemappableMsi(handle=handle, shv=False)
    if data & ~MSI_SUBHANDLE_MASK:
        raise DecodeError(f"MSI data {data:#x} has reserved bits 31..16 set with SHV")
    return RemappableMsi(handle=handle, shv=True, subhandle=data)
