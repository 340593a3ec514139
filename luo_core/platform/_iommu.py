"""The IOMMU: walks the page tables in physical memory and does a device's DMA through them.

The tables are in the format of :mod:`luo_core.abi._iopgtable` (VT-d second
level, 4 levels, 4 KiB pages).  They are written by a kernel, so the walk
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

    @property
    def faults(self) -> int:
        """How many faults there were, including those the log no longer holds."""
        return self._faults

    @property
    def fault_log(self) -> list[Fault]:
        """The last :attr:`LOG_SIZE` faults, oldest first."""
        with self._lock:
            return list(self._log)

    def translate(self, root: int, iova: int, *, write: bool, device: str = "") -> int:
        """The physical address of ``iova`` under the tables at ``root``, or a fault."""
        found = self._walk(root, iova, write)
        if isinstance(found, FaultReason):
            raise self._fault(device, iova, write, found)
        return found

    def dma_read(self, root: int, iova: int, length: int, *, device: str = "") -> bytes:
        """``length`` bytes from ``iova``: all of them, or a fault."""
        return b"".join(
            self._ram.read(phys, n)
            for phys, n in self._segments(root, iova, length, False, device)
        )

    def dma_write(
        self, root: int, iova: int, data: bytes | bytearray | memoryview, *, device: str = ""
    ) -> None:
        """Store ``data`` at ``iova``: all of it, or (on a fault) none of it."""
        raw = memoryview(data).cast("B")
        done = 0
        for phys, n in self._segments(root, iova, raw.nbytes, True, device):
            self._ram.write(phys, raw[done : done + n])
            done += n

    def _segments(
        self, root: int, iova: int, length: int, write: bool, device: str
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
class DeviceDma:
    """One device's DMA through the page tables at ``root``: what a model holds."""

    iommu: Iommu
    root: int
    device: str

    def read(self, iova: int, length: int) -> bytes:
        return self.iommu.dma_read(self.root, iova, length, device=self.device)

    def write(self, iova: int, data: bytes | bytearray | memoryview) -> None:
        self.iommu.dma_write(self.root, iova, data, device=self.device)

    def translate(self, iova: int, *, write: bool) -> int:
        return self.iommu.translate(self.root, iova, write=write, device=self.device)
