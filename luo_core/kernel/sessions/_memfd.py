"""The built-in ``memfd-v1`` file handler (``mm/memfd_luo.c``): contents, size and position.

``preserve`` allocates preserved pages for the whole file (holes included),
copies the contents there, writes a ``struct memfd_luo_ser`` pointing at a
folio array, and freezes the size: from then on the file must not grow or
shrink until it is unpreserved. ``freeze`` copies the contents again, and the
position — the kernel pins the file's own pages instead, which Python cannot
do to an OS memfd, so luo copies on the kexec path (a memcpy that grows with
the file, about 15 ms for 64 MiB here). A file resized while preserved fails
freeze with ``EPERM`` and the kexec is refused (the kernel refuses the resize
itself). In the next kernel ``retrieve`` builds a new memfd from the
preserved pages (position and size restored, seals and ``FD_CLOEXEC`` not, as
upstream) and frees them; ``finish`` of a file never retrieved frees them
too.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from typing import Any, Final

from luo_core.abi._luo import (
    MEMFD_FOLIO_DIRTY,
    MEMFD_FOLIO_SER,
    MEMFD_FOLIO_UPTODATE,
    MEMFD_SER,
    MemfdSer,
)
from luo_core.errors import HandoffError, LiveUpdateError
from luo_core.kernel.sessions._memory import Incoming, Outgoing
from luo_core.kernel.sessions._records import FileHandler, FileHandlerOps, LiveFile

COMPATIBLE: Final = "memfd-v1"
_PFN_BITS: Final = 52


def is_memfd(fd: int) -> bool:
    """A shmem file with no name in any directory: what ``memfd_create`` makes."""
    try:
        st = os.fstat(fd)
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 0 and target.startswith("/memfd:")


class MemfdOps(FileHandlerOps):
    """``memfd_luo_file_ops`` over this kernel's preserved memory."""

    def __init__(self, outgoing: Outgoing, incoming: Incoming | None) -> None:
        self._out = outgoing
        self._in = incoming
        self._held: dict[int, tuple[int, int, int]] = {}  # ser -> (size, pages, folio array)

    @property
    def page(self) -> int:
        return self._out.memory.PAGE_SIZE

    def can_preserve(self, file: LiveFile) -> bool:
        return is_memfd(file.fd)

    def preserve(self, file: LiveFile) -> int:
        size = os.fstat(file.fd).st_size
        pos = os.lseek(file.fd, 0, os.SEEK_CUR)
        nr = -(-size // self.page)
        out = self._out
        pages = out.alloc_preserve(nr * self.page) if nr else 0
        folios = out.alloc_preserve(nr * MEMFD_FOLIO_SER.size) if nr else 0
        ser = out.alloc_preserve(MEMFD_SER.size)
        flags = MEMFD_FOLIO_DIRTY | MEMFD_FOLIO_UPTODATE
        if nr:
            first = pages // self.page
            out.memory.write(
                folios,
                b"".join(
                    MEMFD_FOLIO_SER.pack((first + i) | flags << _PFN_BITS, i) for i in range(nr)
                ),
            )
        out.memory.write(ser, MEMFD_SER.pack(pos, size, nr, folios))
        self._held[ser] = (size, pages, folios)
        # Copied now too, while the workload runs: the pages are then in place, and
        # freeze's copy costs a memcpy, not a page fault per page.
        self._copy(file.fd, pages, size)
        return ser

    def _copy(self, fd: int, pages: int, size: int) -> None:
        if size:
            with mmap.mmap(fd, size, prot=mmap.PROT_READ) as contents:
                self._out.memory.write(pages, memoryview(contents))

    def freeze(self, file: LiveFile, data: Any) -> None:
        size, pages, folios = self._held[data]
        now = os.fstat(file.fd).st_size
        if now != size:
            raise LiveUpdateError(
                f"memfd resized while preserved ({size} -> {now} bytes)", errno=errno.EPERM
            )
        self._copy(file.fd, pages, size)
        pos = os.lseek(file.fd, 0, os.SEEK_CUR)
        nr = -(-size // self.page)
        self._out.memory.write(data, MEMFD_SER.pack(pos, size, nr, folios))
        return None

    def unpreserve(self, file: LiveFile, data: Any) -> None:
        _, pages, folios = self._held.pop(data)
        for phys in (pages, folios):
            if phys:
                self._out.unpreserve_free(phys)
        self._out.unpreserve_free(data)

    # -- the next kernel ------------------------------------------------------------------

    def _read(self, data: int) -> tuple[MemfdSer, list[int]]:
        """The preserved structure and its page frames, checked (hostile input)."""
        if self._in is None:
            raise HandoffError("memfd-v1: nothing was handed over to this kernel")
        ser = MemfdSer(*MEMFD_SER.unpack(self._in.read(data, MEMFD_SER.size, "memfd_luo_ser")))
        if (
            ser.size > ser.nr_folios * self.page
            or ser.nr_folios > (ser.size + self.page - 1) // self.page
        ):
            raise HandoffError(
                f"memfd-v1: {ser.nr_folios} folios cannot hold {ser.size} bytes exactly"
            )
        raw = (
            self._in.read(ser.folios, ser.nr_folios * MEMFD_FOLIO_SER.size, "memfd folios")
            if ser.nr_folios
            else b""
        )
        pfns = []
        for i in range(ser.nr_folios):
            word, index = MEMFD_FOLIO_SER.unpack_from(raw, i * MEMFD_FOLIO_SER.size)
            if index != i:
                raise HandoffError(f"memfd-v1: folio {i} has index {index}")
            pfns.append(word & ((1 << _PFN_BITS) - 1))
        if len(set(pfns)) != len(pfns):
            raise HandoffError("memfd-v1: two folios share a page frame")
        return ser, pfns

    def retrieve(self, data: Any) -> int:
        ser, pfns = self._read(data)
        incoming = self._in
        if incoming is None:  # _read refused it already
            raise HandoffError("memfd-v1: nothing was handed over to this kernel")
        fd = os.memfd_create("", os.MFD_CLOEXEC)
        try:
            for index, pfn, count in _runs(pfns):
                at = index * self.page
                length = min(count * self.page, ser.size - at)
                os.pwrite(fd, incoming.read(pfn * self.page, length, "memfd folios"), at)
            os.ftruncate(fd, ser.size)
            os.lseek(fd, ser.pos, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        self._discard(data, ser, pfns)
        return fd

    def finish(self, file: LiveFile | None, data: Any, retrieved: bool) -> None:
        if not retrieved:
            ser, pfns = self._read(data)
            self._discard(data, ser, pfns)

    def _discard(self, data: int, ser: MemfdSer, pfns: list[int]) -> None:
        if self._in is None:
            return
        for _, pfn, count in _runs(pfns):
            self._in.free(pfn * self.page, count * self.page, "memfd folios")
        if ser.nr_folios:
            self._in.free(ser.folios, ser.nr_folios * MEMFD_FOLIO_SER.size, "memfd folios")
        self._in.free(data, MEMFD_SER.size, "memfd_luo_ser")


def _runs(pfns: list[int]) -> list[tuple[int, int, int]]:
    """Consecutive page frames as ``(first index, first pfn, count)``: one read and one
    free per run, not per page."""
    runs: list[tuple[int, int, int]] = []
    for index, pfn in enumerate(pfns):
        if runs and runs[-1][1] + runs[-1][2] == pfn:
            first, start, count = runs[-1]
            runs[-1] = (first, start, count + 1)
        else:
            runs.append((index, pfn, 1))
    return runs


def memfd_handler(outgoing: Outgoing, incoming: Incoming | None) -> FileHandler:
    """The ``memfd-v1`` handler of one kernel."""
    return FileHandler(compatible=COMPATIBLE, ops=MemfdOps(outgoing, incoming))
