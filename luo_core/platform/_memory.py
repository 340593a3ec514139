"""The emulated machine's physical memory: one sparse memfd mapping every actor shares.

Physical memory is hardware.  It outlives every kernel, and the hardware process,
the old kernel and the next kernel all reach it through the same file
descriptor, so a byte written by one is seen by the others without copying.
The mapping is sparse: a page costs nothing until it is first touched (read or
written through the mapping), so a 64 GiB machine is cheap to emulate.
Nothing here imports the kernel side.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import weakref
from types import TracebackType
from typing import Final

from luo_core.errors import PhysicalMemoryError

_FILL_CHUNK = 1 << 20


class PhysicalMemory:
    """Byte-addressed physical memory of ``size`` bytes, backed by a shared memfd.

    With ``fd`` given, attach to memory another process created (passed with
    ``pass_fds``, say); ``size`` must then be that memory's size.  The fd is
    duplicated, so closing this object never closes the caller's descriptor.
    """

    PAGE_SIZE: Final = 4096

    def __init__(self, size: int, *, fd: int | None = None, name: str = "luo-phys") -> None:
        if size <= 0 or size % self.PAGE_SIZE:
            raise PhysicalMemoryError(
                f"physical memory size {size:#x} is not a positive multiple of the "
                f"page size {self.PAGE_SIZE:#x}",
                errno=errno.EINVAL,
            )
        if fd is None:
            own_fd = os.memfd_create(name, os.MFD_CLOEXEC)
            try:
                os.ftruncate(own_fd, size)
            except OSError:
                os.close(own_fd)
                raise
        else:
            own_fd = _attach(fd, size)
        try:
            self._map = mmap.mmap(
                own_fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError:
            os.close(own_fd)
            raise
        self._size = size
        self._fd = own_fd
        self._whole: memoryview | None = memoryview(self._map)
        self._close_fd = weakref.finalize(self, os.close, own_fd)

    @property
    def size(self) -> int:
        return self._size

    @property
    def fd(self) -> int:
        """The memfd to hand to another process; it stays open until :meth:`close`."""
        self._live()
        return self._fd

    def read(self, phys: int, length: int) -> bytes:
        """A copy of ``length`` bytes at ``phys``."""
        self._check(phys, length)
        return self._map[phys : phys + length]

    def write(self, phys: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``phys``."""
        raw = memoryview(data).cast("B")
        self._check(phys, raw.nbytes)
        self._map[phys : phys + raw.nbytes] = raw

    def view(self, phys: int, length: int) -> memoryview:
        """A writable, zero-copy window onto ``length`` bytes at ``phys``.

        The window stays valid after :meth:`close`; the mapping goes away when
        the last window is released.
        """
        whole = self._check(phys, length)
        return whole[phys : phys + length]

    def fill(self, phys: int, length: int, byte: int = 0) -> None:
        """Set ``length`` bytes at ``phys`` to ``byte``; zeroing whole pages frees them."""
        if not 0 <= byte <= 0xFF:
            raise PhysicalMemoryError(f"fill byte {byte} is not in 0..255", errno=errno.EINVAL)
        self._check(phys, length)
        end = phys + length
        if byte == 0:
            first = -(-phys // self.PAGE_SIZE) * self.PAGE_SIZE
            last = end // self.PAGE_SIZE * self.PAGE_SIZE
            if first < last and self._punch(first, last - first):
                self._set(phys, first, 0)
                self._set(last, end, 0)
                return
        self._set(phys, end, byte)

    def resident_bytes(self) -> int:
        """How many bytes of this memory are actually backed by host RAM."""
        self._live()
        return os.fstat(self._fd).st_blocks * 512

    def close(self) -> None:
        """Unmap and close the fd; safe to call twice."""
        if self._whole is None:
            return
        self._whole.release()
        self._whole = None
        # with views still out, the mapping is unmapped when the last one goes
        with contextlib.suppress(BufferError):
            self._map.close()
        self._close_fd()

    def __enter__(self) -> PhysicalMemory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._whole is None else f"fd={self._fd}"
        return f"PhysicalMemory(size={self._size:#x}, {state})"

    def _live(self) -> memoryview:
        if self._whole is None:
            raise PhysicalMemoryError("physical memory is closed", errno=errno.EBADF)
        return self._whole

    def _check(self, phys: int, length: int) -> memoryview:
        whole = self._live()
        if phys < 0 or length < 0 or phys + length > self._size:
            raise PhysicalMemoryError(
                f"physical access at {phys:#x} length {length:#x} is outside "
                f"memory [0x0, {self._size:#x})"
            )
        return whole

    def _set(self, start: int, end: int, byte: int) -> None:
        pattern = memoryview(bytes([byte]) * min(end - start, _FILL_CHUNK))
        for at in range(start, end, _FILL_CHUNK):
            n = min(end - at, _FILL_CHUNK)
            self._map[at : at + n] = pattern[:n]

    def _punch(self, start: int, length: int) -> bool:
        """Give whole pages back to the host; they read as zero afterwards."""
        try:
            self._map.madvise(mmap.MADV_REMOVE, start, length)
        except OSError:
            return False
        return True


def _attach(fd: int, size: int) -> int:
    try:
        actual = os.fstat(fd).st_size
    except OSError as error:
        raise PhysicalMemoryError(
            f"cannot attach physical memory fd {fd}: {error.strerror}", errno=error.errno
        ) from None
    if actual != size:
        raise PhysicalMemoryError(
            f"physical memory fd {fd} holds {actual:#x} bytes, not {size:#x}",
            errno=errno.EINVAL,
        )
    return os.dup(fd)
