"""Domains: one second-level page table each, in pages of the kernel's allocator.

A :class:`Domain` maps IOVAs with :class:`~luo_core.abi._iopgtable.PageTableWriter`
over pages :class:`TablePages` hands out, and remembers every table page it
uses, so that a live update can preserve them in place and the next kernel
can adopt them without rewriting a byte.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from luo_core.abi._iopgtable import PAGE_SIZE, PageTableWriter
from luo_core.errors import BusyError, InvalidArgumentError
from luo_core.kernel._alloc import PageAllocator
from luo_core.kernel._kho import KexecHandover
from luo_core.platform import PhysicalMemory
from luo_iommu._records import DomainRecord, MappingRecord
from luo_iommu._tables import Run, merge


@attrs.frozen
class IoMapping:
    """A run of IOVA pages mapped to contiguous physical pages with the same rights."""

    iova: int
    phys: int
    length: int
    read: bool
    write: bool


class TablePages:
    """Every table page one kernel's IOMMU uses: allocated here or adopted from the
    previous kernel (reserved, so given back with ``release``, not ``free``), and
    preserved with KHO by count (a page several owners preserve is preserved once)."""

    def __init__(self, memory: PhysicalMemory, mm: PageAllocator, kho: KexecHandover) -> None:
        self._memory = memory
        self._mm = mm
        self._kho = kho
        self._adopted: set[int] = set()
        self._preserved: dict[int, int] = {}
        self.tracking: list[int] | None = None
        """While a live update is prepared: new pages are preserved at once and listed here."""

    def alloc(self) -> int:
        """A zeroed page for a table."""
        phys = self._mm.alloc(PAGE_SIZE)
        self._memory.fill(phys, PAGE_SIZE)
        if self.tracking is not None:
            try:
                self.preserve([phys])
            except BaseException:
                self._mm.free(phys)
                raise
            self.tracking.append(phys)
        return phys

    def adopt(self, phys: int) -> None:
        self._adopted.add(phys)

    def free(self, phys: int) -> None:
        if phys in self._preserved:
            raise BusyError(f"table page {phys:#x} is preserved for a live update")
        if phys in self._adopted:
            self._adopted.discard(phys)
            self._mm.release(phys, PAGE_SIZE)
        else:
            self._mm.free(phys)

    def preserve(self, pages: list[int]) -> None:
        """Preserve each page (once, whoever asks first); all or none."""
        done: list[int] = []
        try:
            for phys in pages:
                if phys not in self._preserved:
                    self._kho.preserve(phys, PAGE_SIZE)
                self._preserved[phys] = self._preserved.get(phys, 0) + 1
                done.append(phys)
        except BaseException:
            self.unpreserve(done)
            raise

    def unpreserve(self, pages: list[int]) -> None:
        for phys in pages:
            count = self._preserved.get(phys, 0) - 1
            if count > 0:
                self._preserved[phys] = count
            elif count == 0:
                del self._preserved[phys]
                self._kho.unpreserve(phys, PAGE_SIZE)

    def preserved(self, phys: int) -> bool:
        return phys in self._preserved


class Domain:
    """An IOMMU domain: ``id`` (the context entries' domain id) and ``pgtable`` (its root)."""

    def __init__(
        self,
        domain_id: int,
        pages: TablePages,
        memory: PhysicalMemory,
        mutable: Callable[[Domain], None],
        *,
        root: int | None = None,
        table_pages: set[int] | None = None,
        runs: list[Run] | None = None,
    ) -> None:
        self.id = domain_id
        self._pages = pages
        self._mutable = mutable
        self._table_pages: set[int] = set(table_pages or ())
        # What is mapped, as runs (what records and mappings() show) and, made from them
        # only when the domain changes, page by page: an adopted domain of many pages is
        # taken over in the blackout without expanding it.
        self._runs: list[Run] | None = list(runs or ())
        self._leaves: dict[int, tuple[int, bool, bool]] | None = None
        self._writer = PageTableWriter(memory, self._new_table, root)
        self._table_pages.add(self._writer.root)

    def _pages_mapped(self) -> dict[int, tuple[int, bool, bool]]:
        if self._leaves is None:
            self._leaves = leaves_of(self._runs or [])
        return self._leaves

    @property
    def pgtable(self) -> int:
        return self._writer.root

    @property
    def table_pages(self) -> list[int]:
        """Every page of this domain's tables, its root included, in address order."""
        return sorted(self._table_pages)

    def _new_table(self) -> int:
        phys = self._pages.alloc()
        self._table_pages.add(phys)
        return phys

    def map(
        self, iova: int, phys: int, length: int, *, read: bool = True, write: bool = True
    ) -> None:
        """Map ``length`` bytes at ``iova`` to ``phys``; ``EEXIST`` if a page is mapped,
        ``EBUSY`` while the domain is preserved for a live update."""
        self._mutable(self)
        leaves = self._pages_mapped()
        self._writer.map(iova, phys, length, read=read, write=write)
        for n in range(0, length, PAGE_SIZE):
            leaves[iova + n] = (phys + n, read, write)
        self._runs = None

    def unmap(self, iova: int, length: int) -> None:
        """Unmap ``length`` bytes at ``iova`` (pages not mapped are skipped)."""
        self._mutable(self)
        leaves = self._pages_mapped()
        self._writer.unmap(iova, length)
        for n in range(0, length, PAGE_SIZE):
            leaves.pop(iova + n, None)
        self._runs = None

    def runs(self) -> list[Run]:
        if self._runs is None:
            leaves = self._pages_mapped()
            self._runs = merge(sorted((i, p, r, w) for i, (p, r, w) in leaves.items()))
        return list(self._runs)

    def mappings(self) -> list[IoMapping]:
        """What the domain maps, as maximal runs, in IOVA order."""
        return [IoMapping(*run) for run in self.runs()]

    def record(self) -> DomainRecord:
        return DomainRecord(
            id=self.id,
            pgtable=self.pgtable,
            pages=self.table_pages,
            mappings=[MappingRecord(*run) for run in self.runs()],
        )

    def release(self) -> None:
        """Give every table page back (the domain is gone)."""
        for phys in self.table_pages:
            self._pages.free(phys)
        self._table_pages.clear()
        self._leaves, self._runs = None, []

    def __repr__(self) -> str:
        return f"<Domain {self.id} pgtable={self.pgtable:#x}>"


def leaves_of(runs: list[Run]) -> dict[int, tuple[int, bool, bool]]:
    """Runs as single pages ``iova -> (phys, read, write)``."""
    leaves: dict[int, tuple[int, bool, bool]] = {}
    for iova, phys, length, read, write in runs:
        if length % PAGE_SIZE:
            raise InvalidArgumentError(f"mapping at {iova:#x} is not whole pages")
        for n in range(0, length, PAGE_SIZE):
            leaves[iova + n] = (phys + n, read, write)
    return leaves
