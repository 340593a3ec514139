"""guest_memfd: guest memory as physical pages of the kernel's allocator, behind a file.

``virt/kvm/guest_memfd.c``: a guest_memfd is a file whose pages belong to the
kernel, never mapped by the VMM; memslots bind ranges of it
(``kvm_gmem_bind``), and the pages outlive any one descriptor
(``kvm_gmem_release``: "its lifetime is associated with the inode, not the
file").  Here the pages come from ``kernel.mm`` so that devices can DMA into
them through the IOMMU, and the file is an eventfd the pack made and knows
again by ``same_file``.

Preserving a guest_memfd is preserving its pages in place (``kho.preserve``,
nothing copied), as the posted series does ("liveupdate: kvm: Guest_memfd
preservation", Tarun Sahu, RFC v1 2026-05-18, v2 2026-06-05).  Two things
may hand the same pages over: a session (the ``guest-memfd-v1`` file
handler) and a VM in the kvm device's record; the pages are preserved once,
while either holds them (:meth:`Gmem.hold`).
"""

from __future__ import annotations

import os

from luo_core import PhysRange
from luo_core.abi import MemRange
from luo_core.abi._kho import find_containing
from luo_core.errors import HandoffError
from luo_core.kernel._kho import KexecHandover
from luo_core.kernel.sessions._fileid import same_file
from luo_kvm._records import GmemRecord


class Gmem:
    """One guest_memfd: ``size`` bytes in physical runs ``pages``.

    ``inherited`` pages were preserved by the previous kernel and are reserved
    in this one (given back with ``mm.release``); the others were allocated
    here (``mm.free``).
    """

    def __init__(self, size: int, pages: list[tuple[int, int]], *, inherited: bool) -> None:
        self.size = size
        self.pages = pages
        self.inherited = inherited
        self.fd: int | None = None
        """The pack's own descriptor of the file (``None``: no file, e.g. not yet retrieved)."""
        self._holds = 0

    @property
    def key(self) -> int:
        """What names these pages in both kernels: the first page's address."""
        return self.pages[0][0]

    def record(self) -> GmemRecord:
        return GmemRecord(self.size, [PhysRange(start, length) for start, length in self.pages])

    def phys(self, offset: int) -> int:
        """The physical address of byte ``offset``, and how many bytes follow in that run."""
        return self.run(offset)[0]

    def run(self, offset: int) -> tuple[int, int]:
        at = 0
        for start, length in self.pages:
            if offset < at + length:
                return start + offset - at, at + length - offset
            at += length
        raise IndexError(offset)

    def is_file(self, fd: int) -> bool:
        return self.fd is not None and same_file(self.fd, fd)

    def attach_file(self) -> int:
        """A new file over these pages: the caller's descriptor (the pack keeps a dup)."""
        fd = os.eventfd(0, os.EFD_CLOEXEC)
        self.fd = os.dup(fd)
        return fd

    def close_file(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def hold(self, kho: KexecHandover) -> None:
        """Preserve the pages for the next kernel, once however many hold them."""
        if not self._holds:
            for start, length in self.pages:
                kho.preserve(start, length)
        self._holds += 1

    def let_go(self, kho: KexecHandover) -> None:
        self._holds -= 1
        if not self._holds:
            for start, length in self.pages:
                kho.unpreserve(start, length)

    @property
    def held(self) -> bool:
        return self._holds > 0


def check_pages(
    size: int, pages: list[PhysRange], preserved: tuple[MemRange, ...], page_size: int, what: str
) -> list[tuple[int, int]]:
    """A handed-over guest_memfd's pages, checked as hostile input."""
    if not pages or size <= 0 or size % page_size:
        raise HandoffError(f"{what}: a guest_memfd of {size:#x} bytes in {len(pages)} runs")
    runs = sorted((p.start, p.size) for p in pages)
    if sum(length for _, length in runs) != size:
        raise HandoffError(f"{what}: its pages do not add up to its size {size:#x}")
    end = 0
    for start, length in runs:
        if start % page_size or length <= 0 or length % page_size:
            raise HandoffError(f"{what}: pages at {start:#x}+{length:#x} are not page aligned")
        if start < end:
            raise HandoffError(f"{what}: pages at {start:#x} overlap")
        end = start + length
        if find_containing(preserved, MemRange(start, length)) is None:
            raise HandoffError(
                f"{what}: pages at {start:#x}+{length:#x} are outside preserved memory"
            )
    return [(p.start, p.size) for p in pages]
