"""The kernel's page allocator: a buddy allocator handing out physical addresses.

Every page of the pool is in exactly one of three states: free (in a buddy
free list), allocated (inside a block handed out by ``alloc``), or reserved
(taken out of the pool: firmware holes, memory preserved by the previous
kernel).  Free blocks are kept per order as block starts, never one object per
page, so a 64 GiB pool is a few dozen entries.  The lowest address of the
smallest order that fits wins, so the same calls always give the same addresses.
"""

from __future__ import annotations

import bisect
import errno
import heapq
import threading
from collections.abc import Iterable, Iterator
from typing import Final

from luo_core.errors import AllocatorError, OutOfMemoryError

MAX_ORDER: Final = 18
"""The largest block is ``2**MAX_ORDER`` pages: 1 GiB with 4 KiB pages."""


class _FreeList:
    """Free blocks of one order: a set answers "is it free", a heap finds the lowest."""

    __slots__ = ("_blocks", "_heap")

    def __init__(self) -> None:
        self._blocks: set[int] = set()
        self._heap: list[int] = []  # may hold stale starts; the set is the truth

    def __contains__(self, start: int) -> bool:
        return start in self._blocks

    def __len__(self) -> int:
        return len(self._blocks)

    def add(self, start: int) -> None:
        self._blocks.add(start)
        if len(self._heap) > 2 * len(self._blocks) + 64:
            self._heap = sorted(self._blocks)  # drop stale entries; a sorted list is a heap
        else:
            heapq.heappush(self._heap, start)

    def remove(self, start: int) -> None:
        self._blocks.remove(start)

    def pop_lowest(self) -> int:
        while True:
            start = heapq.heappop(self._heap)
            if start in self._blocks:
                self._blocks.remove(start)
                return start


class _Ranges:
    """Disjoint, coalesced half-open ranges kept sorted by start."""

    __slots__ = ("_ends", "_starts", "total")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.total = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    def covers(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect.bisect_left(self._starts, end)
        return i > 0 and self._ends[i - 1] > start

    def add(self, start: int, end: int) -> None:
        """Add a range that overlaps none already here."""
        self.total += end - start
        i = bisect.bisect_left(self._starts, start)
        if i < len(self._starts) and self._starts[i] == end:
            end = self._ends[i]
            del self._starts[i], self._ends[i]
        if i > 0 and self._ends[i - 1] == start:
            self._ends[i - 1] = end
        else:
            self._starts.insert(i, start)
            self._ends.insert(i, end)

    def remove(self, start: int, end: int) -> None:
        """Remove a range that lies inside one range already here."""
        self.total -= end - start
        i = bisect.bisect_right(self._starts, start) - 1
        left, right = self._starts[i], self._ends[i]
        del self._starts[i], self._ends[i]
        for piece in ((end, right), (left, start)):
            if piece[0] < piece[1]:
                self._starts.insert(i, piece[0])
                self._ends.insert(i, piece[1])


class PageAllocator:
    """A buddy allocator over the physical range ``[0, size)``.

    ``free`` lists the ``(phys, length)`` ranges available at boot; the rest of
    the range starts reserved.  ``None`` makes all of it free.
    """

    def __init__(
        self,
        size: int,
        *,
        page_size: int = 4096,
        free: Iterable[tuple[int, int]] | None = None,
    ) -> None:
        if page_size <= 0 or page_size & (page_size - 1):
            raise AllocatorError(f"page size {page_size:#x} is not a power of two")
        if size <= 0 or size % page_size:
            raise AllocatorError(
                f"pool size {size:#x} is not a positive multiple of the page size {page_size:#x}"
            )
        self._size = size
        self._page_size = page_size
        self._lock = threading.Lock()
        self._free = [_FreeList() for _ in range(MAX_ORDER + 1)]
        self._free_bytes = 0
        self._allocated_bytes = 0
        self._orders: dict[int, int] = {}  # allocation start -> order
        self._starts: list[int] = []  # allocation starts, sorted
        self._reserved = _Ranges()
        self._reserved.add(0, size)
        for phys, length in [(0, size)] if free is None else free:
            self._release(phys, length)

    @property
    def size(self) -> int:
        return self._size

    @property
    def page_size(self) -> int:
        return self._page_size

    @property
    def free_bytes(self) -> int:
        return self._free_bytes

    @property
    def allocated_bytes(self) -> int:
        return self._allocated_bytes

    @property
    def reserved_bytes(self) -> int:
        return self._reserved.total

    def alloc_pages(self, order: int = 0) -> int:
        """Allocate ``2**order`` contiguous pages aligned to their size; return the address."""
        if not 0 <= order <= MAX_ORDER:
            raise AllocatorError(f"alloc_pages: order {order} is not in 0..{MAX_ORDER}")
        with self._lock:
            for found in range(order, MAX_ORDER + 1):
                if self._free[found]:
                    break
            else:
                raise OutOfMemoryError(
                    f"out of memory: no free block of order {order} "
                    f"({self._page_size << order:#x} bytes); {self._free_bytes:#x} bytes free"
                )
            start = self._free[found].pop_lowest()
            while found > order:
                found -= 1
                self._free[found].add(start + (self._page_size << found))
            self._free_bytes -= self._page_size << order
            self._allocated_bytes += self._page_size << order
            self._orders[start] = order
            bisect.insort(self._starts, start)
            return start

    def alloc(self, size: int) -> int:
        """Allocate at least ``size`` bytes as the smallest block that fits; free with ``free``."""
        if size <= 0:
            raise AllocatorError(f"alloc: size {size:#x} is not positive")
        order = (-(-size // self._page_size) - 1).bit_length()
        if order > MAX_ORDER:
            raise AllocatorError(
                f"alloc: {size:#x} bytes exceeds the largest block "
                f"({self._page_size << MAX_ORDER:#x} bytes)"
            )
        return self.alloc_pages(order)

    def free(self, phys: int) -> None:
        """Give back the block allocated at ``phys``, merging it with free buddies."""
        with self._lock:
            order = self._orders.pop(phys, None)
            if order is None:
                raise AllocatorError(f"free: {phys:#x} is not an allocated block (double free?)")
            del self._starts[bisect.bisect_left(self._starts, phys)]
            self._allocated_bytes -= self._page_size << order
            self._add_free(phys, order)

    def reserve(self, phys: int, length: int) -> None:
        """Take the free, page-aligned range ``[phys, phys + length)`` out of the pool."""
        end = self._aligned("reserve", phys, length)
        with self._lock:
            if self._reserved.overlaps(phys, end):
                raise AllocatorError(
                    f"reserve [{phys:#x}, {end:#x}): already reserved", errno=errno.EBUSY
                )
            user = self._allocation_in(phys, end)
            if user is not None:
                raise AllocatorError(
                    f"reserve [{phys:#x}, {end:#x}): overlaps the allocation at {user:#x}",
                    errno=errno.EBUSY,
                )
            self._take_free(phys, end)
            self._reserved.add(phys, end)

    def release(self, phys: int, length: int) -> None:
        """Return the reserved, page-aligned range ``[phys, phys + length)`` to the pool."""
        with self._lock:
            self._release(phys, length)

    def is_free(self, phys: int, length: int) -> bool:
        """Whether every page touching ``[phys, phys + length)`` is free."""
        end = self._bounded("is_free", phys, length)
        mask = self._page_size - 1
        at, end = phys & ~mask, (end + mask) & ~mask
        with self._lock:
            while at < end:
                block = self._block_at(at)
                if block is None:
                    return False
                at = block[0] + (self._page_size << block[1])
        return True

    def __repr__(self) -> str:
        return (
            f"PageAllocator(size={self._size:#x}, free={self._free_bytes:#x}, "
            f"allocated={self.allocated_bytes:#x}, reserved={self.reserved_bytes:#x})"
        )

    def _release(self, phys: int, length: int) -> None:
        end = self._aligned("release", phys, length)
        if not self._reserved.covers(phys, end):
            user = self._allocation_in(phys, end)
            if user is not None:
                raise AllocatorError(
                    f"release [{phys:#x}, {end:#x}): overlaps the allocation at {user:#x}",
                    errno=errno.EBUSY,
                )
            raise AllocatorError(f"release [{phys:#x}, {end:#x}): not reserved (already free?)")
        self._reserved.remove(phys, end)
        at = phys
        while at < end:
            pages = at // self._page_size
            order = MAX_ORDER if pages == 0 else min(MAX_ORDER, (pages & -pages).bit_length() - 1)
            while at + (self._page_size << order) > end:
                order -= 1
            self._add_free(at, order)
            at += self._page_size << order

    def _add_free(self, start: int, order: int) -> None:
        self._free_bytes += self._page_size << order
        while order < MAX_ORDER:
            buddy = start ^ (self._page_size << order)
            if buddy not in self._free[order]:
                break
            self._free[order].remove(buddy)
            start = min(start, buddy)
            order += 1
        self._free[order].add(start)

    def _take_free(self, start: int, end: int) -> None:
        """Remove free ``[start, end)`` from the free lists, splitting blocks it cuts."""
        self._free_bytes -= end - start
        at = start
        while at < end:
            block = self._block_at(at)
            assert block is not None, f"{at:#x} is neither free, allocated nor reserved"
            self._free[block[1]].remove(block[0])
            pieces = [block]
            while pieces:
                first, order = pieces.pop()
                last = first + (self._page_size << order)
                if last <= start or first >= end:
                    self._free[order].add(first)  # its buddy is cut, so no merge
                elif not (start <= first and last <= end):
                    half = self._page_size << (order - 1)
                    pieces += [(first, order - 1), (first + half, order - 1)]
            at = block[0] + (self._page_size << block[1])

    def _block_at(self, phys: int) -> tuple[int, int] | None:
        """The free block containing page ``phys``, as ``(start, order)``."""
        for order in range(MAX_ORDER + 1):
            start = phys & ~((self._page_size << order) - 1)
            if start in self._free[order]:
                return start, order
        return None

    def _allocation_in(self, start: int, end: int) -> int | None:
        i = bisect.bisect_left(self._starts, end)
        if i == 0:
            return None
        last = self._starts[i - 1]
        return last if last + (self._page_size << self._orders[last]) > start else None

    def _bounded(self, what: str, phys: int, length: int) -> int:
        if phys < 0 or length <= 0 or phys + length > self._size:
            raise AllocatorError(
                f"{what}: range at {phys:#x} length {length:#x} is not inside "
                f"[0x0, {self._size:#x})"
            )
        return phys + length

    def _aligned(self, what: str, phys: int, length: int) -> int:
        end = self._bounded(what, phys, length)
        if (phys | length) & (self._page_size - 1):
            raise AllocatorError(
                f"{what}: range at {phys:#x} length {length:#x} is not page-aligned"
            )
        return end
