"""Reading the IOMMU's tables back from memory, as the next kernel must: as hostile input.

A record names tables by physical address; before a kernel adopts them it
checks that every address is a page of preserved memory, walks the
second-level tables the way the hardware would (``luo_core.abi._iopgtable``),
and refuses (:class:`~luo_core.errors.HandoffError`, one line) a table the
record does not list, a record that lists a page the tables do not use, or
mappings that differ from what the tables hold.  Nothing is written.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from luo_core.abi import MemRange
from luo_core.abi._dmar import (
    ENTRY_SIZE,
    ContextEntry,
    context_entry_address,
    decode_context_entry,
    decode_root_entry,
    root_entry_address,
)
from luo_core.abi._iopgtable import (
    ADDRESS_MASK,
    ENTRIES,
    LEVELS,
    PAGE_SIZE,
    PTE_READ,
    PTE_WRITE,
    STRIDE,
)
from luo_core.abi._kho import find_containing
from luo_core.errors import HandoffError

_TABLE = struct.Struct(f"<{ENTRIES}Q")

Reader = Callable[[int, int], bytes]
"""Reads ``length`` bytes of physical memory at ``phys``."""

Run = tuple[int, int, int, bool, bool]
"""A mapping run: ``(iova, phys, length, read, write)``."""


def check_page(phys: object, preserved: Sequence[MemRange], memory_size: int, what: str) -> int:
    """``phys`` if it is a page of memory the previous kernel preserved, else a HandoffError."""
    if type(phys) is not int or phys < 0 or phys % PAGE_SIZE or phys + PAGE_SIZE > memory_size:
        raise HandoffError(f"{what} {phys!r} is not a page of physical memory")
    if find_containing(preserved, MemRange(phys, PAGE_SIZE)) is None:
        raise HandoffError(f"{what} at {phys:#x} was not preserved")
    return phys


def walk(read: Reader, root: int, pages: frozenset[int]) -> tuple[set[int], list[Run]]:
    """The table pages reachable from ``root`` and the mappings they hold, merged into runs.

    Every table pointer must be one of ``pages`` (the record's list, already
    checked to be preserved): a pointer anywhere else is refused, so a
    hostile table cannot make this read outside what was checked.
    """
    used: set[int] = {root}
    leaves: list[tuple[int, int, bool, bool]] = []
    stack: list[tuple[int, int, int]] = [(root, LEVELS, 0)]
    # Plain integer tests, not decode_pte: restore walks every entry, in the blackout.
    present, mask = PTE_READ | PTE_WRITE, ADDRESS_MASK
    while stack:
        table, level, base = stack.pop()
        entries = _TABLE.unpack(read(table, PAGE_SIZE))
        shift = 12 + STRIDE * (level - 1)
        for index, value in enumerate(entries):
            if not value & present:
                continue
            iova, addr = base | index << shift, value & mask
            if level == 1:
                leaves.append((iova, addr, bool(value & PTE_READ), bool(value & PTE_WRITE)))
                continue
            if addr not in pages:
                raise HandoffError(
                    f"page table {table:#x} points at {addr:#x}, a table the record does not list"
                )
            if addr in used:
                raise HandoffError(f"page table {addr:#x} is linked twice")
            used.add(addr)
            stack.append((addr, level - 1, iova))
    leaves.sort()
    return used, merge(leaves)


def merge(pages: Sequence[tuple[int, int, bool, bool]]) -> list[Run]:
    """Sorted single pages ``(iova, phys, read, write)`` as maximal runs."""
    runs: list[Run] = []
    for iova, phys, r, w in pages:
        if runs:
            a, p, n, rr, ww = runs[-1]
            if a + n == iova and p + n == phys and (rr, ww) == (r, w):
                runs[-1] = (a, p, n + PAGE_SIZE, r, w)
                continue
        runs.append((iova, phys, PAGE_SIZE, r, w))
    return runs


def context_table_of(read: Reader, root_table: int, bus: int) -> int | None:
    """The context table the root entry of ``bus`` names (``None``: not present)."""
    return decode_root_entry(read(root_entry_address(root_table, bus << 8), ENTRY_SIZE))


def context_of(read: Reader, context_table: int, rid: int) -> ContextEntry | None:
    return decode_context_entry(read(context_entry_address(context_table, rid), ENTRY_SIZE))
