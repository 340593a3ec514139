"""Where a kernel's memory comes from, and how participants' records cross kexec.

A kernel boots with nothing allocatable; it reads the previous kernel's KHO
root (which needs no allocation), then takes every page that is neither
preserved nor in the scratch area.  The scratch area is never preserved and
never handed out: it is where a real kernel keeps its early-boot allocations,
so a preserved page can never be overwritten by the kernel that inherits it.
Everything else the previous kernel wrote reads as zero.

Participants' records are KHO nodes named ``kind:name``, written during
prepare (and rewritten by freeze only when they changed), so kexec itself has
only the root left to write.
"""

from __future__ import annotations

import itertools

import attrs

from luo_core._logging import get_logger
from luo_core.abi import HandedOver, MemRange
from luo_core.abi._kho import find_containing
from luo_core.errors import HandoffError
from luo_core.kernel._alloc import PageAllocator
from luo_core.kernel._kho import KexecHandover
from luo_core.kernel._participants import Key, label
from luo_core.platform import PhysicalMemory

log = get_logger("luo")


@attrs.frozen
class HandoffRecord:
    """One KHO node as the next kernel reads it: whose, and its sealed bytes."""

    kind: str
    name: str
    compatible: str
    data: bytes

    @property
    def key(self) -> Key:
        return (self.kind, self.name)


def boot_allocator(memory: PhysicalMemory) -> PageAllocator:
    """The allocator of a kernel that has not yet read the handoff: nothing free."""
    return PageAllocator(memory.size, page_size=memory.PAGE_SIZE, free=[])


def claim_memory(
    allocator: PageAllocator, memory: PhysicalMemory, scratch: MemRange, handed: HandedOver | None
) -> None:
    """Take all memory but the scratch area and what the previous kernel preserved.

    A kernel booting from a handoff also zeroes every byte the previous
    kernel did not preserve, the scratch area included: only the handoff
    crosses kexec, so memory a driver wrote and did not preserve must not
    come back.  (Real RAM keeps stale contents; a driver that relied on them
    would work by accident.  See the fidelity table.)
    """
    taken = sorted([scratch, *(handed.preserved if handed else ())])
    for a, b in itertools.pairwise(taken):
        if a.overlaps(b):
            raise HandoffError(f"preserved range {b} overlaps {a}")
    free: list[MemRange] = []
    cursor = 0
    for area in taken:
        if area.start > cursor:
            free.append(MemRange(cursor, area.start - cursor))
        cursor = max(cursor, area.end)
    if cursor < allocator.size:
        free.append(MemRange(cursor, allocator.size - cursor))
    for area in free:
        allocator.release(area.start, area.size)
    if handed is not None:
        for area in sorted([scratch, *free]):
            memory.fill(area.start, area.size)  # whole pages: holes punched, not written


def read_records(
    memory: PhysicalMemory, handed: HandedOver
) -> tuple[dict[Key, HandoffRecord], set[Key]]:
    """Every node of the handoff as a record, and the keys of corrupted nodes
    (logged; their participants cannot be restored)."""
    records: dict[Key, HandoffRecord] = {}
    corrupted: set[Key] = set()
    for name, node in handed.nodes.items():
        kind, _, participant = name.partition(":")
        try:
            blob = handed.read(memory, name)
        except HandoffError as exc:
            log.error("handoff_node_corrupted", node=name, error=str(exc))
            corrupted.add((kind, participant))
            continue
        records[(kind, participant)] = HandoffRecord(kind, participant, node.compatible, blob)
    return records, corrupted


def publish(kho: KexecHandover, key: Key, compatible: str, data: bytes) -> None:
    """Write (or rewrite) one participant's record as a KHO node."""
    name = label(key)
    if kho.has_node(name):
        kho.remove_node(name)
    kho.add_node(name, compatible, data)


def kho_owned(handed: HandedOver) -> list[MemRange]:
    """Preserved ranges holding the root or node blobs (the rest are participants')."""
    spans = [handed.root] + [MemRange(n.phys, max(n.length, 1)) for n in handed.nodes.values()]
    owned = {find_containing(handed.preserved, span) for span in spans}
    return sorted(r for r in owned if r is not None)
