"""The IOMMU: walks the page tables in physical memory and does a device's DMA through them.

A device's DMA is translated as VT-d does in legacy mode: its requester id
selects a root entry (by bus) and a context entry (by device and function)
in the root table the kernel's driver enabled (:meth:`Iommu.set_root_table`,
the ``RTADDR`` register and ``GCMD.TE``), and the context entry names the
domain's second-level page table (:mod:`luo_core.abi._dmar`).  The page
tables are in the format of :mod:`luo_core.abi._iopgtable` (VT-d second
level, 4 levels, 4 KiB pages).  No context or IOTLB cache is modelled: every
translation reads the tables.  They are written by a kernel, so the walk
reads hostile memory: it takes at most four entry reads per page, checks
every table pointer against physical memory and every entry's reserved bits,
and turns whatever it finds into a translation or a fault, never a crash.

A fault is what VT-d's fault recording does: counted, recorded (device, IOVA,
access, reason) in a bounded log, and raised as
:class:`~luo_core.errors.IommuFaultError`.  A transfer is translated page by
page before its first byte moves, so a transfer that faults anywhere moves
nothing.
"""

from __future__ import annotations

import collections
import enum
import threading
from typing import Final

import attrs

from luo_core._logging import get_logger
from luo_core.abi._dmar import (
    AGAW_48,
    CONTEXT_LO_RESERVED,
    ENTRY_SIZE,
    TT_MULTI_LEVEL,
    context_entry_address,
    decode_context_entry,
    decode_root_entry,
    root_entry_address,
)
from luo_core.abi._iopgtable import (
    ENTRY,
    IOVA_BITS,
    LEVELS,
    PAGE_SIZE,
    decode_pte,
    entry_address,
    reserved_mask,
)
from luo_core.errors import InvalidArgumentError, IommuFaultError
from luo_core.platform._memory import PhysicalMemory

log = get_logger("luo.hw")

MAX_TRANSFER: Final = 16 << 20
"""The longest single DMA a model may ask for (bytes); longer is a model bug."""


class FaultReason(enum.StrEnum):
    """Why a translation failed; the QEMU fault reason it stands for is in the comment."""

    READ = "read not permitted or not mapped"  # VTD_FR_READ
    WRITE = "write not permitted or not mapped"  # VTD_FR_WRITE
    RESERVED = "reserved bits set in a page-table entry"  # VTD_FR_PAGING_ENTRY_RSVD
    TABLE = "page-table pointer outside physical memory"  # VTD_FR_PAGING_ENTRY_INV
    WIDTH = f"IOVA beyond the {IOVA_BITS}-bit address width"  # VTD_FR_ADDR_BEYOND_MGAW
    TARGET = "mapped page outside physical memory"
    DISABLED = "DMA remapping is not enabled"
    NO_REQUESTER = "the device has no PCI requester id"
    ROOT = "root entry not present"  # VTD_FR_ROOT_ENTRY_P
    CONTEXT = "context entry not present"  # VTD_FR_CONTEXT_ENTRY_P
    CONTEXT_INVALID = "context entry reserved bits, type or width"  # VTD_FR_CONTEXT_ENTRY_RSVD


@attrs.frozen
class Fault:
    """One recorded fault; ``iova`` is the faulting page's, as VT-d records it."""

    device: str
    iova: int
    write: bool
    reason: FaultReason


class Iommu:
    """The machine's IOMMU in front of ``ram``; safe to use from every model's thread."""

    LOG_SIZE: Final = 64

    def __init__(self, ram: PhysicalMemory) -> None:
        self._ram = ram
        self._lock = threading.Lock()
        self._faults = 0
        self._log: collections.deque[Fault] = collections.deque(maxlen=self.LOG_SIZE)
        self._root_table: int | None = None

    @property
    def root_table(self) -> int | None:
        """The root table translation runs through (``None``: DMA remapping off)."""
        return self._root_table

    def set_root_table(self, phys: int | None) -> None:
        """``RTADDR`` with ``GCMD.TE``: translate through the root table at ``phys``, or stop.

        With remapping off every device DMA faults: luo models a platform
        that blocks DMA until its IOMMU is set up, not one that lets it through.
        """
        if phys is not None and not self._is_page(phys):
            raise InvalidArgumentError(f"root table {phys!r} is not a page of physical memory")
        self._root_table = phys

    @property
    def faults(self) -> int:
        """How many faults there were, including those the log no longer holds."""
        return self._faults

    @property
    def fault_log(self) -> list[Fault]:
        """The last :attr:`LOG_SIZE` faults, oldest first."""
        with self._lock:
            return list(self._log)

    def translate(self, root: Root, iova: int, *, write: bool, device: str = "") -> int:
        """The physical address of ``iova`` under ``root``, or a fault.

        ``root`` is a page table's address, or a :class:`Requester` to go
        through the root and context tables.
        """
        if isinstance(root, Requester):
            table = self._context(root.rid)
            if isinstance(table, FaultReason):
                raise self._fault(device, iova, write, table)
            root = table
        found = self._walk(root, iova, write)
        if isinstance(found, FaultReason):
            raise self._fault(device, iova, write, found)
        return found

    def dma_read(self, root: Root, iova: int, length: int, *, device: str = "") -> bytes:
        """``length`` bytes from ``iova``: all of them, or a fault."""
        return b"".join(
            self._ram.read(phys, n)
            for phys, n in self._segments(root, iova, length, False, device)
        )

    def dma_write(
        self, root: Root, iova: int, data: bytes | bytearray | memoryview, *, device: str = ""
    ) -> None:
        """Store ``data`` at ``iova``: all of it, or (on a fault) none of it."""
        raw = memoryview(data).cast("B")
        done = 0
        for phys, n in self._segments(root, iova, raw.nbytes, True, device):
            self._ram.write(phys, raw[done : done + n])
            done += n

    def _context(self, rid: int | None) -> int | FaultReason:
        """The page table a requester's context entry names (QEMU ``vtd_dev_to_context_entry``)."""
        root_table = self._root_table
        if root_table is None:
            return FaultReason.DISABLED
        if rid is None:
            return FaultReason.NO_REQUESTER
        root = decode_root_entry(self._ram.read(root_entry_address(root_table, rid), ENTRY_SIZE))
        if root is None:
            return FaultReason.ROOT
        if not self._is_page(root):
            return FaultReason.TABLE
        raw = self._ram.read(context_entry_address(root, rid), ENTRY_SIZE)
        context = decode_context_entry(raw)
        if context is None:
            return FaultReason.CONTEXT
        lo = int.from_bytes(raw[:8], "little")
        if (
            lo & CONTEXT_LO_RESERVED
            or context.translation_type != TT_MULTI_LEVEL
            or context.address_width != AGAW_48
        ):
            return FaultReason.CONTEXT_INVALID
        return context.pgtable

    def _segments(
        self, root: Root, iova: int, length: int, write: bool, device: str
    ) -> list[tuple[int, int]]:
        """Every page of the transfer, translated, before anything moves."""
        if type(length) is not int or not 0 <= length <= MAX_TRANSFER:
            raise InvalidArgumentError(
                f"{device or 'DMA'}: transfer length {length!r} is not in 0..{MAX_TRANSFER}"
            )
        if type(iova) is not int or iova < 0:
            raise InvalidArgumentError(f"{device or 'DMA'}: IOVA {iova!r} is not an address")
        segments: list[tuple[int, int]] = []
        at, end = iova, iova + length
        while at < end:
            n = min(end, (at // PAGE_SIZE + 1) * PAGE_SIZE) - at
            segments.append((self.translate(root, at, write=write, device=device), n))
            at += n
        return segments

    def _walk(self, root: int, iova: int, write: bool) -> int | FaultReason:
        if type(iova) is not int or not 0 <= iova < 1 << IOVA_BITS:
            return FaultReason.WIDTH
        if not self._is_page(root):
            return FaultReason.TABLE
        table = root
        for level in range(LEVELS, 0, -1):
            # Four levels, each one read of 8 bytes: a hostile table cannot make a loop.
            value = int(
                ENTRY.unpack(self._ram.read(entry_address(table, iova, level), ENTRY.size))[0]
            )
            pte = decode_pte(value)
            if not (pte.write if write else pte.read):
                return FaultReason.WRITE if write else FaultReason.READ
            if value & reserved_mask(level):
                return FaultReason.RESERVED
            if not self._is_page(pte.addr):
                return FaultReason.TABLE if level > 1 else FaultReason.TARGET
            table = pte.addr
        return table + iova % PAGE_SIZE

    def _is_page(self, addr: object) -> bool:
        return type(addr) is int and addr >= 0 and addr % PAGE_SIZE == 0 and addr < self._ram.size

    def _fault(self, device: str, iova: int, write: bool, reason: FaultReason) -> IommuFaultError:
        if type(iova) is int and iova >= 0:
            # VT-d's fault recording registers hold the page (FI, bits 63:12), not the byte.
            iova &= ~(PAGE_SIZE - 1)
        with self._lock:
            self._faults += 1
            self._log.append(Fault(device, iova, write, reason))
        log.warning("iommu_fault", device=device, iova=iova, write=write, reason=str(reason))
        return IommuFaultError(device, iova, write=write, reason=str(reason))


@attrs.frozen
class Requester:
    """A PCI requester id: DMA goes through the root and context tables (``None``: none)."""

    rid: int | None


Root = int | Requester
"""What a DMA is translated through: a page table's address, or a requester's context."""


@attrs.frozen
class DeviceDma:
    """One device's DMA through ``root``: what a model holds."""

    iommu: Iommu
    root: Root
    device: str

    def read(self, iova: int, length: int) -> bytes:
        return self.iommu.dma_read(self.root, iova, length, device=self.device)

    def write(self, iova: int, data: bytes | bytearray | memoryview) -> None:
        self.iommu.dma_write(self.root, iova, data, device=self.device)

    def translate(self, iova: int, *, write: bool) -> int:
        return self.iommu.translate(self.root, iova, write=write, device=self.device)
