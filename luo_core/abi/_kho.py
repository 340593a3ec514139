"""The KHO root's byte layout, and reading it back as hostile input.

The root is a frame (magic ``LUOK``, see :mod:`luo_core.abi._frame`).  Its
body is a CBOR array ``[liveupdate-number, nodes, preserved]`` where
``nodes`` is ``[[name, compatible, phys, length, crc32], ...]`` sorted by
name and ``preserved`` is ``[[phys, size], ...]`` sorted by address.  Arrays
only: the encoding is deterministic without any map-ordering rule.
"""

from __future__ import annotations

import bisect
import itertools
import re
import zlib
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol

import attrs
import cbor2

from luo_core.abi._frame import HEADER, FrameKind
from luo_core.abi._types import is_u64
from luo_core.errors import HandoffError, LiveUpdateError

ROOT = FrameKind("KHO root", b"LUOK", 2, max_body=16 << 20)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9,._:+-]{0,127}$")


class Memory(Protocol):
    """What reading a handoff needs of physical memory (the machine's, or a saved image's)."""

    @property
    def PAGE_SIZE(self) -> int: ...

    @property
    def size(self) -> int: ...

    def read(self, phys: int, length: int) -> bytes: ...


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise HandoffError(f"{what} {name!r} is not 1-128 chars of [a-z0-9,._:+-]")


class MemRange(NamedTuple):
    """``size`` bytes of physical memory starting at ``start``.

    A named tuple: ranges are sorted and bisected by the thousand on the
    kexec path, and tuple comparison is done in C.
    """

    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def overlaps(self, other: MemRange) -> bool:
        return self.start < other.end and other.start < self.end

    def contains(self, other: MemRange) -> bool:
        return self.start <= other.start and other.end <= self.end

    def __str__(self) -> str:
        return f"{self.start:#x}+{self.size:#x}"


def find_containing(ranges: Sequence[MemRange], span: MemRange) -> MemRange | None:
    """The range of sorted, disjoint ``ranges`` that contains ``span`` (bisect)."""
    at = bisect.bisect_right(ranges, MemRange(span.start, 1 << 65)) - 1
    if at >= 0 and ranges[at].contains(span):
        return ranges[at]
    return None


def find_overlapping(ranges: Sequence[MemRange], span: MemRange) -> MemRange | None:
    """A range of sorted, disjoint ``ranges`` overlapping ``span`` (bisect)."""
    at = bisect.bisect_right(ranges, MemRange(span.start, 1 << 65)) - 1
    for candidate in ranges[max(at, 0) : at + 2]:
        if candidate.overlaps(span):
            return candidate
    return None


@attrs.frozen
class KhoNode:
    """A named blob in preserved memory: where, how long, its checksum."""

    name: str
    compatible: str
    phys: int
    length: int
    crc: int


def encode_root(number: int, nodes: Iterable[KhoNode], preserved: list[MemRange]) -> bytes:
    body = cbor2.dumps(
        [
            number,
            [[n.name, n.compatible, n.phys, n.length, n.crc] for n in sorted(nodes, key=_name)],
            [[r.start, r.size] for r in sorted(preserved)],
        ]
    )
    return ROOT.pack(body)


def _name(node: KhoNode) -> str:
    return node.name


@attrs.frozen
class HandedOver:
    """What the previous kernel left: read from its root, validated."""

    root: MemRange
    liveupdate_number: int
    nodes: dict[str, KhoNode]
    preserved: tuple[MemRange, ...]

    def read(self, memory: Memory, name: str) -> bytes:
        """A node's blob, checked against the checksum in the root."""
        node = self.nodes[name]
        blob = memory.read(node.phys, node.length)
        if zlib.crc32(blob) != node.crc:
            raise HandoffError(f"KHO node {name!r}: checksum mismatch, the blob is corrupted")
        return blob


def read_root(memory: Memory, phys: int) -> HandedOver:
    """Parse and validate the root at ``phys``; malformed → :class:`HandoffError`."""
    try:
        return _read_root(memory, phys)
    except HandoffError:
        raise
    except LiveUpdateError as exc:  # an out-of-range read, say
        raise HandoffError(f"KHO root at {phys:#x}: {exc}") from None


def _read_root(memory: Memory, phys: int) -> HandedOver:
    where = f"KHO root at {phys:#x}"
    try:
        total = ROOT.size(memory.read(phys, HEADER.size))
        frame = memory.read(phys, total)
        # The C decoder: this read is on the blackout path.  What it returns is
        # checked by type and range below, and never printed, so a tag, a bignum
        # or a shared reference can only be refused, not explode.
        body = cbor2.loads(ROOT.unpack(frame), max_depth=4, allow_indefinite=False)
    except HandoffError as exc:
        raise HandoffError(f"{where}: {exc}") from None
    except LiveUpdateError:
        raise
    except Exception as exc:
        raise HandoffError(f"{where}: body is not valid CBOR: {exc}") from None
    if not (isinstance(body, list) and len(body) == 3):
        raise HandoffError(f"{where}: body is not [number, nodes, preserved]")
    number, raw_nodes, raw_ranges = body
    if not is_u64(number):
        raise HandoffError(f"{where}: liveupdate-number is not a u64")
    preserved = tuple(_range(item, memory, where) for item in _list(raw_ranges, where))
    for a, b in itertools.pairwise(preserved):
        if a.overlaps(b) or b < a:
            raise HandoffError(f"{where}: preserved ranges {a} and {b} overlap or are unsorted")
    root = MemRange(phys, align_up(total, memory.PAGE_SIZE))
    if find_containing(preserved, MemRange(phys, total)) is None:
        raise HandoffError(f"{where}: the root itself is not in preserved memory")
    nodes: dict[str, KhoNode] = {}
    for item in _list(raw_nodes, where):
        node = _node(item, where)
        if node.name in nodes:
            raise HandoffError(f"{where}: two nodes named {node.name!r}")
        span = MemRange(node.phys, node.length)
        if find_containing(preserved, span) is None:
            raise HandoffError(f"{where}: node {node.name!r} lies outside preserved memory")
        nodes[node.name] = node
    return HandedOver(root, number, nodes, preserved)


def _list(value: object, where: str) -> list[object]:
    if not isinstance(value, list):
        raise HandoffError(f"{where}: expected a list")
    return value


def _range(item: object, memory: Memory, where: str) -> MemRange:
    if not (type(item) is list and len(item) == 2 and is_u64(item[0]) and is_u64(item[1])):
        raise HandoffError(f"{where}: malformed preserved range ({_shape(item)})")
    start, size = item
    page = memory.PAGE_SIZE
    if size == 0 or start % page or size % page or start + size > memory.size:
        raise HandoffError(f"{where}: preserved range {start:#x}+{size:#x} is not valid memory")
    return MemRange(start, size)


def _shape(item: object) -> str:
    """What a hostile item is, said without printing it (it may be huge, or a cycle)."""
    if type(item) is list:
        return f"a list of {len(item)}: " + ", ".join(type(x).__name__ for x in item[:5])
    return f"a {type(item).__name__}"


def _node(item: object, where: str) -> KhoNode:
    if not (
        type(item) is list
        and len(item) == 5
        and type(item[0]) is str
        and type(item[1]) is str
        and is_u64(item[2])
        and is_u64(item[3])
        and is_u64(item[4])
        and _NAME.fullmatch(item[0])
        and _NAME.fullmatch(item[1])
    ):
        raise HandoffError(f"{where}: malformed node ({_shape(item)})")
    return KhoNode(item[0], item[1], item[2], item[3], item[4])
