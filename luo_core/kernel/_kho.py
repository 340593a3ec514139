"""KHO, the old kernel's side: preserved ranges and a tree of named nodes in memory.

Participants preserve page-aligned ranges of physical memory and add named
nodes, each a blob with a ``compatible`` string, written into freshly
allocated, preserved pages.  ``finalize`` writes the root — the
``liveupdate-number``, every node's location and checksum, and the list of
preserved ranges — into preserved memory and returns its physical address,
the one value that reaches the next kernel (as a boot parameter would).
"""

from __future__ import annotations

import bisect
import errno
import zlib

import attrs

from luo_core.abi._kho import (
    KhoNode,
    MemRange,
    align_up,
    check_name,
    encode_root,
    find_overlapping,
)
from luo_core.errors import KhoError
from luo_core.kernel._alloc import PageAllocator
from luo_core.platform import PhysicalMemory


@attrs.define
class KhoRoot:
    """A finalized handoff: where the root lives and what it covers."""

    phys: int
    size: int


class KexecHandover:
    """Builds one handoff; ``finalize`` freezes it, ``abort`` thaws it."""

    def __init__(
        self, memory: PhysicalMemory, allocator: PageAllocator, scratch: MemRange
    ) -> None:
        self.memory = memory
        self.allocator = allocator
        self.scratch = scratch
        self._preserved: dict[int, int] = {}
        self._sorted: list[MemRange] = []  # the same ranges, for bisect
        self._nodes: dict[str, KhoNode] = {}
        self.root: KhoRoot | None = None

    @property
    def preserved(self) -> list[MemRange]:
        return list(self._sorted)

    @property
    def nodes(self) -> dict[str, KhoNode]:
        return dict(self._nodes)

    def _unfinalized(self, what: str) -> None:
        if self.root is not None:
            raise KhoError(f"{what}: the handoff is finalized", errno=errno.EBUSY)

    def preserve(self, phys: int, size: int) -> None:
        """Keep ``[phys, phys+size)`` intact across kexec (page aligned)."""
        self._unfinalized(f"preserve {phys:#x}+{size:#x}")
        page = self.memory.PAGE_SIZE
        if size <= 0 or phys % page or size % page or phys < 0 or phys + size > self.memory.size:
            raise KhoError(
                f"preserve {phys:#x}+{size:#x}: not a page-aligned range of physical memory",
                errno=errno.EINVAL,
            )
        if self.scratch.overlaps(MemRange(phys, size)):
            raise KhoError(
                f"preserve {phys:#x}+{size:#x}: overlaps the scratch area {self.scratch}",
                errno=errno.EINVAL,
            )
        clash = find_overlapping(self._sorted, MemRange(phys, size))
        if clash is not None:
            raise KhoError(
                f"preserve {phys:#x}+{size:#x}: overlaps preserved {clash}", errno=errno.EEXIST
            )
        self._add(phys, size)

    def unpreserve(self, phys: int, size: int) -> None:
        """Undo exactly one :meth:`preserve`."""
        self._unfinalized(f"unpreserve {phys:#x}+{size:#x}")
        if self._preserved.get(phys) != size:
            raise KhoError(
                f"unpreserve {phys:#x}+{size:#x}: no such preserved range", errno=errno.ENOENT
            )
        self._remove(phys)

    def _add(self, phys: int, size: int) -> None:
        self._preserved[phys] = size
        bisect.insort(self._sorted, MemRange(phys, size))

    def _remove(self, phys: int) -> None:
        size = self._preserved.pop(phys)
        self._sorted.remove(MemRange(phys, size))

    def has_node(self, name: str) -> bool:
        return name in self._nodes

    def add_node(self, name: str, compatible: str, blob: bytes) -> KhoNode:
        """Copy ``blob`` into new preserved pages and name it in the tree."""
        self._unfinalized(f"add node {name!r}")
        check_name(name, "node name")
        check_name(compatible, "compatible")
        if name in self._nodes:
            raise KhoError(f"add node {name!r}: already in the tree", errno=errno.EEXIST)
        size = align_up(max(len(blob), 1), self.memory.PAGE_SIZE)
        phys = self.allocator.alloc(size)
        self.memory.write(phys, blob)
        self.preserve(phys, size)
        node = KhoNode(name, compatible, phys, len(blob), zlib.crc32(blob))
        self._nodes[name] = node
        return node

    def remove_node(self, name: str) -> None:
        self._unfinalized(f"remove node {name!r}")
        node = self._nodes.pop(name, None)
        if node is None:
            raise KhoError(f"remove node {name!r}: not in the tree", errno=errno.ENOENT)
        self.unpreserve(node.phys, align_up(max(node.length, 1), self.memory.PAGE_SIZE))
        self.allocator.free(node.phys)

    def finalize(self, liveupdate_number: int) -> KhoRoot:
        """Write the root into preserved memory; no change is allowed after."""
        self._unfinalized("finalize")
        page = self.memory.PAGE_SIZE
        # The root lists itself among the preserved ranges, so size it first.
        draft = encode_root(liveupdate_number, self._nodes.values(), [*self.preserved])
        size = align_up(len(draft) + 64, page)
        phys = self.allocator.alloc(size)
        ranges = sorted([*self.preserved, MemRange(phys, size)])
        blob = encode_root(liveupdate_number, self._nodes.values(), ranges)
        assert len(blob) <= size
        self.memory.write(phys, blob)
        self._add(phys, size)
        self.root = KhoRoot(phys, size)
        return self.root

    def abort(self) -> None:
        """Undo :meth:`finalize` (the update was cancelled)."""
        if self.root is None:
            raise KhoError("abort: the handoff is not finalized", errno=errno.EINVAL)
        self._remove(self.root.phys)
        self.allocator.free(self.root.phys)
        self.root = None

    def clear(self) -> None:
        """Drop every node and the root (after a cancelled update).  Ranges preserved by
        others (the sessions' memory) stay preserved: they outlive an update."""
        if self.root is not None:
            self.abort()
        for name in list(self._nodes):
            self.remove_node(name)
