"""The posted-interrupt descriptor's bytes in physical memory, and draining it without loss.

The layout is Linux's ``struct pi_desc`` (``arch/x86/include/asm/posted_intr.h``;
KVM's copy in ``arch/x86/kvm/vmx/posted_intr.h`` before 6.10), itself the
Intel VT-d / VMX posted-interrupt descriptor: 64 bytes, 64-byte aligned,
little-endian.

======  ======  ==============================================================
offset  size    field
======  ======  ==============================================================
0       32      PIR, 256 bits: bit ``v`` (bit ``v % 32`` of ``u32 pir[v // 32]``)
                requests vector ``v``
32      2       ``notifications``: bit 0 ON (outstanding notification),
                bit 1 SN (suppress notification); the rest reserved
34      1       NV, the notification vector
35      1       reserved
36      4       NDST, the notification destination (an APIC ID)
40      24      reserved
======  ======  ==============================================================

The poster (the IOMMU, or the hardware model here) only sets bits: a PIR bit,
then ON.  The owner of the descriptor (one CPU or vCPU: one drainer) clears
them, in :func:`drain`.  Both reach the words through :class:`AtomicBits`
(:class:`luo_core.platform._atomic.AtomicWords` on shared memory).
"""

from __future__ import annotations

import struct
from typing import Final, Protocol

import attrs

from luo_core.errors import DecodeError, FieldValueError

PI_DESC_SIZE: Final = 64
PI_DESC_ALIGN: Final = 64
VECTORS: Final = 256
PIR_WORDS: Final = VECTORS // 32
CONTROL: Final = 32
"""Byte offset of the 32-bit word that holds ON, SN and NV (and is operated on atomically)."""
POSTED_INTR_ON: Final = 0
POSTED_INTR_SN: Final = 1
_LAYOUT: Final = struct.Struct(f"<{PIR_WORDS}IHBBI24x")
_NOTIFICATIONS_RESERVED: Final = 0xFFFF & ~(1 << POSTED_INTR_ON | 1 << POSTED_INTR_SN)


class AtomicBits(Protocol):
    """What draining needs of a descriptor's memory: word loads, atomic bit set and clear."""

    def load(self, offset: int) -> int: ...

    def set_bit(self, offset: int, bit: int) -> None: ...

    def clear_bit(self, offset: int, bit: int) -> None: ...


@attrs.frozen
class PiDesc:
    """One posted-interrupt descriptor, decoded: the requested vectors and the control fields."""

    pir: frozenset[int] = frozenset()
    on: bool = False
    sn: bool = False
    nv: int = 0
    ndst: int = 0

    def encode(self) -> bytes:
        """The descriptor's 64 bytes; reserved fields are zero."""
        if not all(type(v) is int and 0 <= v < VECTORS for v in self.pir):
            raise FieldValueError(f"PIR vectors {sorted(self.pir)} are not all in 0..255")
        if not (0 <= self.nv <= 0xFF and 0 <= self.ndst <= 0xFFFF_FFFF):
            raise FieldValueError(f"NV {self.nv} or NDST {self.ndst} does not fit u8 / u32")
        words = [0] * PIR_WORDS
        for vector in self.pir:
            words[vector // 32] |= 1 << vector % 32
        notifications = self.on << POSTED_INTR_ON | self.sn << POSTED_INTR_SN
        return _LAYOUT.pack(*words, notifications, self.nv, 0, self.ndst)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> PiDesc:
        """Read 64 bytes back as hostile input: reserved bits must be zero."""
        if len(data) != PI_DESC_SIZE:
            raise DecodeError(f"a posted-interrupt descriptor is 64 bytes, not {len(data)}")
        *words, notifications, nv, reserved, ndst = _LAYOUT.unpack(data)
        if notifications & _NOTIFICATIONS_RESERVED or reserved or any(bytes(data)[40:]):
            raise DecodeError("a posted-interrupt descriptor has reserved bits set")
        pir = frozenset(32 * i + bit for i, word in enumerate(words) for bit in _bits(word))
        return cls(
            pir=pir,
            on=bool(notifications >> POSTED_INTR_ON & 1),
            sn=bool(notifications >> POSTED_INTR_SN & 1),
            nv=nv,
            ndst=ndst,
        )


def drain(desc: AtomicBits) -> list[int]:
    """Take the requested vectors out of a descriptor, in ascending order; ON is left clear.

    What the owner of the descriptor runs when its notification arrives, as
    KVM's ``pi_test_and_clear_on`` then ``xchg`` of each PIR word.  No posted
    vector is lost, by the order of the steps:

    1. ON is cleared first.  A poster sets its PIR bit, then reads ON
       (:mod:`luo_core.platform._posted`).  If its read comes after this
       clear, it finds ON clear and notifies again (unless SN is set), so a
       later drain sees its bit; if its read came before, its bit was set
       before step 2 reads the word, so this drain sees it.
    2. Each PIR word is read once.
    3. Only the bits that were read are cleared (``ANDN`` one bit at a time,
       standing in for ``xchg``): a bit set after the read stays set for the
       next drain.  A torn read cannot lose a bit either: only the poster
       sets bits and only the drainer clears them, so a bit read as set is
       set until this clear, and a bit missed is left alone.

    Each atomic operation is a full barrier (:mod:`luo_core.platform._atomic`),
    so step 2's loads are not hoisted above step 1.  There must be one drainer
    per descriptor; two would each return the bits both read.
    """
    desc.clear_bit(CONTROL, POSTED_INTR_ON)
    vectors: list[int] = []
    for index in range(PIR_WORDS):
        offset = 4 * index
        for bit in _bits(desc.load(offset)):
            desc.clear_bit(offset, bit)
            vectors.append(32 * index + bit)
    return vectors


def _bits(word: int) -> list[int]:
    return [bit for bit in range(32) if word >> bit & 1]
