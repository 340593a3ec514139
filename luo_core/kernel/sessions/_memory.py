"""Preserved memory for LUO and its handlers: preserved here, restored and freed there.

:class:`Outgoing` is ``kho_alloc_preserve`` / ``kho_unpreserve_free``: pages
allocated from this kernel and marked preserved.  :class:`Incoming` is
``kho_restore_*`` / ``kho_restore_free`` in the next kernel: it reads only
memory the previous kernel preserved, and gives each range back to the
allocator once.  Handler data with a schema is kept as a sealed record at an
address (:meth:`Outgoing.put`, :meth:`Incoming.get`): the ``u64`` the kernel
passes around is that address.
"""

from __future__ import annotations

import bisect
import struct
from typing import Any, Final

from luo_core.abi import MemRange, encode_state, schema_of, seal
from luo_core.abi._envelope import RECORD
from luo_core.abi._frame import HEADER
from luo_core.abi._kho import align_up, find_containing
from luo_core.abi._types import is_u64
from luo_core.errors import HandoffError, LiveUpdateError
from luo_core.kernel._alloc import PageAllocator
from luo_core.kernel._kho import KexecHandover
from luo_core.kernel._preserved import open_sealed
from luo_core.platform import PhysicalMemory

_LENGTH: Final = struct.Struct("<Q")


class Outgoing:
    """Memory this kernel preserves for the next one, page by page."""

    def __init__(self, memory: PhysicalMemory, mm: PageAllocator, kho: KexecHandover) -> None:
        self.memory = memory
        self.mm = mm
        self.kho = kho
        self._sizes: dict[int, int] = {}

    def alloc_preserve(self, size: int) -> int:
        """Fresh zeroed pages for at least ``size`` bytes, preserved; their address."""
        length = align_up(max(size, 1), self.memory.PAGE_SIZE)
        phys = self.mm.alloc(length)
        try:
            self.memory.fill(phys, length)
            self.kho.preserve(phys, length)
        except BaseException:
            self.mm.free(phys)
            raise
        self._sizes[phys] = length
        return phys

    def unpreserve_free(self, phys: int) -> None:
        length = self._sizes.pop(phys)
        self.kho.unpreserve(phys, length)
        self.mm.free(phys)

    def put(self, schema: type[Any] | None, value: object, owner: str) -> int:
        """The ``u64`` that stands for ``value`` in the handoff."""
        if schema is None:
            if not (isinstance(value, int) and is_u64(value)):
                raise TypeError(
                    f"{owner} has no schema, so it hands over a u64 handle, not "
                    f"{type(value).__name__}; declare schema= to hand over a record"
                )
            return value
        if not isinstance(value, schema):
            raise TypeError(f"{owner} returned {type(value).__name__}, expected {schema.__name__}")
        meta = schema_of(schema)
        blob = seal(meta.compatible, meta.version, encode_state(value))
        phys = self.alloc_preserve(_LENGTH.size + len(blob))
        self.memory.write(phys, _LENGTH.pack(len(blob)) + blob)
        return phys

    def drop(self, schema: type[Any] | None, handle: int) -> None:
        """Free what :meth:`put` allocated for ``handle`` (nothing for a bare u64)."""
        if schema is not None and handle in self._sizes:
            self.unpreserve_free(handle)


class Incoming:
    """Memory the previous kernel preserved: readable until freed, freed once."""

    def __init__(
        self, memory: PhysicalMemory, mm: PageAllocator, preserved: tuple[MemRange, ...]
    ) -> None:
        self.memory = memory
        self.mm = mm
        self.preserved = preserved
        self._freed: list[MemRange] = []
        self._values: dict[int, object] = {}

    def _check(self, phys: int, length: int, what: str) -> MemRange:
        span = MemRange(phys, max(length, 1))
        if not (is_u64(phys) and is_u64(length)) or phys + length > self.memory.size:
            raise HandoffError(f"{what} at {phys:#x}+{length:#x} is outside physical memory")
        if find_containing(self.preserved, span) is None:
            raise HandoffError(f"{what} at {phys:#x}+{length:#x} was not preserved")
        at = bisect.bisect_right(self._freed, span)
        for near in self._freed[max(at - 1, 0) : at + 1]:
            if near.overlaps(span):
                raise HandoffError(f"{what} at {phys:#x} was already restored and freed")
        return span

    def read(self, phys: int, length: int, what: str) -> bytes:
        self._check(phys, length, what)
        return self.memory.read(phys, length)

    def free(self, phys: int, length: int, what: str) -> None:
        """``kho_restore_free``: give preserved pages back to this kernel's allocator."""
        page = self.memory.PAGE_SIZE
        length = align_up(max(length, 1), page)
        if phys % page:
            raise HandoffError(f"{what} at {phys:#x} is not page aligned")
        span = self._check(phys, length, what)
        try:
            self.mm.release(phys, length)
        except LiveUpdateError as exc:
            raise HandoffError(f"{what} at {phys:#x}: {exc}") from None
        bisect.insort(self._freed, span)

    def get(self, schema: type[Any] | None, handle: int, owner: str) -> Any:
        """The value ``handle`` stands for (decoded once, migrating old versions)."""
        if schema is None:
            return handle
        if handle in self._values:
            return self._values[handle]
        what = f"the data of {owner}"
        (length,) = _LENGTH.unpack(self.read(handle, _LENGTH.size, what))
        RECORD.size(self.read(handle + _LENGTH.size, min(length, HEADER.size), what))
        value = open_sealed(self.read(handle + _LENGTH.size, length, what), schema, owner)
        self._values[handle] = value
        return value

    def release(self, schema: type[Any] | None, handle: int, owner: str) -> None:
        """Free the record behind ``handle`` (after finish)."""
        if schema is None:
            return
        self._values.pop(handle, None)
        (length,) = _LENGTH.unpack(self.read(handle, _LENGTH.size, f"the data of {owner}"))
        self.free(handle, _LENGTH.size + length, f"the data of {owner}")
