"""The IOMMU page-table format in physical memory, and the writer that maps IOVAs into it.

The format is the Intel VT-d second-level (second-stage) page table with a
48-bit IOVA and 4 KiB pages, as Linux writes it and QEMU walks it:

* 4 levels (4 = the root table, 1 = the tables of leaf entries); each table is
  one 4 KiB page of 512 little-endian u64 entries; level ``n`` is indexed by
  IOVA bits ``12 + 9*(n-1)`` .. ``20 + 9*(n-1)``
  (QEMU ``hw/i386/intel_iommu.c``, ``vtd_iova_level_offset``).
* entry bit 0 is read (R), bit 1 write (W); an entry with neither is not
  present.  Bits 12..51 hold the physical address of the next table, or of
  the page at level 1 (Linux ``drivers/iommu/intel/iommu.h``:
  ``DMA_PTE_READ``, ``DMA_PTE_WRITE``, ``dma_pte_addr``; bits above the
  address width are reserved there).
* the access rights of the entries on the way down are ANDed: a read needs R,
  a write W, at every level (QEMU ``vtd_iova_to_slpte``: ``access_right_check``
  on each entry).  Linux gives every non-leaf entry R|W (``pfn_to_dma_pte``),
  and so does :class:`PageTableWriter`.
* reserved bits fault (QEMU ``vtd_slpte_nonzero_rsvd`` with the
  ``VTD_SPTE_PAGE_L*_RSVD_MASK`` masks, legacy mode): bit 11 (snoop) at every
  level, bit 7 at level 4, and bit 62 (the bits 52..61 and 63 are ignored,
  ``VTD_SL_IGN_COM``).  Bit 7 at levels 2 and 3 is a superpage
  (``DMA_PTE_LARGE_PAGE``); luo does not model superpages and treats it as
  reserved too.  Bits 2..6 and 8..10 are ignored.

Nothing here imports the kernel or the hardware side: the kernel's IOMMU
driver writes tables with :class:`PageTableWriter`, the hardware walks them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, Protocol

import attrs

from luo_core.errors import ExistsError, InvalidArgumentError

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT
LEVELS: Final = 4
STRIDE: Final = 9
ENTRIES: Final = 1 << STRIDE
ENTRY: Final = struct.Struct("<Q")
IOVA_BITS: Final = PAGE_SHIFT + LEVELS * STRIDE
"""48: IOVAs at or above ``1 << 48`` are beyond the address width."""
ADDRESS_BITS: Final = 52

PTE_READ: Final = 1 << 0
PTE_WRITE: Final = 1 << 1
PTE_LARGE: Final = 1 << 7
PTE_SNOOP: Final = 1 << 11
ADDRESS_MASK: Final = ((1 << ADDRESS_BITS) - 1) & ~(PAGE_SIZE - 1)
IGNORED_HIGH: Final = 0xBFF0_0000_0000_0000
"""Bits 52..61 and 63, which hardware ignores (QEMU ``VTD_SL_IGN_COM``)."""
_ABOVE_WIDTH: Final = ~((1 << ADDRESS_BITS) - 1 | IGNORED_HIGH) & (2**64 - 1)


def reserved_mask(level: int) -> int:
    """The bits that must be zero in an entry of table ``level`` (1..4)."""
    _check_level(level)
    large = PTE_LARGE if level > 1 else 0
    return PTE_SNOOP | large | _ABOVE_WIDTH


@attrs.frozen
class Pte:
    """One decoded entry: rights and the physical address it points to."""

    addr: int
    read: bool
    write: bool

    @property
    def present(self) -> bool:
        return self.read or self.write


def encode_pte(addr: int, *, read: bool, write: bool) -> int:
    """The u64 of an entry pointing at page-aligned ``addr`` with these rights."""
    if type(addr) is not int or addr & ~ADDRESS_MASK:
        raise InvalidArgumentError(
            f"address {addr!r} is not a page-aligned {ADDRESS_BITS}-bit physical address"
        )
    return addr | (PTE_READ if read else 0) | (PTE_WRITE if write else 0)


def decode_pte(value: int) -> Pte:
    """The rights and address an entry holds (reserved bits are not checked here)."""
    return Pte(
        addr=value & ADDRESS_MASK, read=bool(value & PTE_READ), write=bool(value & PTE_WRITE)
    )


def level_index(iova: int, level: int) -> int:
    """The index into a table of ``level`` that ``iova`` selects."""
    _check_level(level)
    return (iova >> (PAGE_SHIFT + STRIDE * (level - 1))) & (ENTRIES - 1)


def entry_address(table: int, iova: int, level: int) -> int:
    """The physical address of the entry for ``iova`` in the table at ``table``."""
    return table + level_index(iova, level) * ENTRY.size


class TableMemory(Protocol):
    """What the writer needs of physical memory (``PhysicalMemory`` has it)."""

    def read(self, phys: int, length: int) -> bytes: ...

    def write(self, phys: int, data: bytes | bytearray | memoryview) -> None: ...


class PageTableWriter:
    """Maps and unmaps IOVA ranges in one page-table tree, as an IOMMU driver does.

    ``alloc`` returns the physical address of a free page for a new table;
    the writer zeroes it before linking it in.  With no ``root``, the root
    table is allocated too.  :meth:`unmap` clears leaf entries only: a table
    it empties stays linked, and is never given back to ``alloc``'s owner.
    """

    def __init__(
        self, memory: TableMemory, alloc: Callable[[], int], root: int | None = None
    ) -> None:
        self._memory = memory
        self._alloc = alloc
        self.root = self._new_table() if root is None else _page(root, "root table")

    def map(
        self, iova: int, phys: int, length: int, *, read: bool = True, write: bool = True
    ) -> None:
        """Map ``length`` bytes at ``iova`` to ``phys`` (all page-aligned) with these rights.

        A page already mapped anywhere in the range is refused (``EEXIST``)
        before any entry is written; Linux's ``__domain_mapping`` instead
        keeps the set PTE, warns, and maps the rest.
        """
        pages = self._range(iova, length)
        _page(phys, "physical address")
        if phys + length > 1 << ADDRESS_BITS:
            raise InvalidArgumentError(f"physical range {phys:#x}+{length:#x} is beyond 52 bits")
        if not (read or write):
            raise InvalidArgumentError("a mapping needs read or write rights")
        for page in pages:
            entry = self._find_leaf(page)
            if entry is not None and decode_pte(self._entry(entry)).present:
                raise ExistsError(f"IOVA {page:#x} is already mapped; unmap it first")
        for n, page in enumerate(pages):
            pte = encode_pte(phys + n * PAGE_SIZE, read=read, write=write)
            self._memory.write(self._make_leaf(page), ENTRY.pack(pte))

    def unmap(self, iova: int, length: int) -> None:
        """Clear the leaf entries for ``length`` bytes at ``iova``; unmapped pages are skipped."""
        for page in self._range(iova, length):
            entry = self._find_leaf(page)
            if entry is not None:
                self._memory.write(entry, ENTRY.pack(0))

    def _range(self, iova: int, length: int) -> range:
        _page(iova, "IOVA")
        if type(length) is not int or length <= 0 or length % PAGE_SIZE:
            raise InvalidArgumentError(f"length {length!r} is not a positive multiple of 4 KiB")
        if iova + length > 1 << IOVA_BITS:
            raise InvalidArgumentError(
                f"IOVA range {iova:#x}+{length:#x} is beyond the {IOVA_BITS}-bit address width"
            )
        return range(iova, iova + length, PAGE_SIZE)

    def _entry(self, at: int) -> int:
        return int(ENTRY.unpack(self._memory.read(at, ENTRY.size))[0])

    def _find_leaf(self, iova: int) -> int | None:
        """The address of ``iova``'s level-1 entry; ``None`` if a table on the way is missing."""
        table = self.root
        for level in range(LEVELS, 1, -1):
            pte = decode_pte(self._entry(entry_address(table, iova, level)))
            if not pte.present:
                return None
            table = pte.addr
        return entry_address(table, iova, 1)

    def _make_leaf(self, iova: int) -> int:
        """The address of ``iova``'s level-1 entry, making the tables on the way."""
        table = self.root
        for level in range(LEVELS, 1, -1):
            at = entry_address(table, iova, level)
            pte = decode_pte(self._entry(at))
            if not pte.present:
                pte = Pte(addr=self._new_table(), read=True, write=True)
                self._memory.write(at, ENTRY.pack(encode_pte(pte.addr, read=True, write=True)))
            table = pte.addr
        return entry_address(table, iova, 1)

    def _new_table(self) -> int:
        table = _page(self._alloc(), "allocated table page")
        self._memory.write(table, bytes(PAGE_SIZE))
        return table


def _page(addr: object, what: str) -> int:
    if type(addr) is not int or addr < 0 or addr % PAGE_SIZE or addr >= 1 << ADDRESS_BITS:
        raise InvalidArgumentError(f"{what} {addr!r} is not a page-aligned 52-bit address")
    return addr


def _check_level(level: int) -> None:
    if not 1 <= level <= LEVELS:
        raise InvalidArgumentError(f"page-table level {level} is not in 1..{LEVELS}")
