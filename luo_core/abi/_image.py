"""A handoff saved to a file: the KHO root and node blobs as they lay in memory.

The file is a frame (magic ``LUOI``, see :mod:`luo_core.abi._frame`) whose
body is the CBOR array ``[memory-size, root-phys, [[phys, bytes], ...]]``: the bytes of
the root, of every node blob and of the sessions' arrays, at their physical
addresses.  Participants' own preserved ranges (guest memory, a memfd's
pages) are not included.  Loading an image
rebuilds a sparse memory (:class:`ImageMemory`) and hands it to the same
reader the next kernel uses, so ``luo inspect`` validates exactly what a
kernel would.
"""

from __future__ import annotations

import cbor2

from luo_core.abi._cbor import decode_strict
from luo_core.abi._frame import FrameKind
from luo_core.abi._kho import Memory, read_root
from luo_core.abi._luo import FILE_SER, KHO_ENTRY, flbs_size, read_luo, sessions_size, unpack_tree
from luo_core.errors import HandoffError, PhysicalMemoryError

IMAGE = FrameKind("handoff image", b"LUOI", 2, max_body=1 << 30)
MAX_IMAGE_MEMORY = 64 << 30


def save_image(memory: Memory, root_phys: int) -> bytes:
    """The handoff rooted at ``root_phys``, as bytes for a file."""
    handed = read_root(memory, root_phys)
    regions = [[handed.root.start, memory.read(handed.root.start, handed.root.size)]]
    regions += [[n.phys, memory.read(n.phys, n.length)] for n in handed.nodes.values()]
    if KHO_ENTRY in handed.nodes:  # the sessions' arrays too (not their files' own data)
        luo = read_luo(memory, handed.preserved, unpack_tree(handed.read(memory, KHO_ENTRY)))
        spans = [(luo.tree.session_header, sessions_size(len(luo.sessions)))]
        spans += [(s.files, s.count * FILE_SER.size) for s in luo.sessions if s.count]
        spans.append((luo.tree.flb_header, flbs_size(len(luo.flbs))))
        regions += [[phys, memory.read(phys, length)] for phys, length in spans]
    body = cbor2.dumps([memory.size, root_phys, sorted(regions)])
    return IMAGE.pack(body)


def load_image(blob: bytes) -> tuple[ImageMemory, int]:
    """A fresh memory holding a saved handoff, and its root's address."""
    body = IMAGE.unpack(blob)
    try:
        size, root, regions = decode_strict(body)
        page = ImageMemory.PAGE_SIZE
        if not (isinstance(size, int) and 0 < size <= MAX_IMAGE_MEMORY and size % page == 0):
            raise ValueError(f"memory size {size!r} is not a page multiple up to 64 GiB")
        if not isinstance(root, int):
            raise ValueError("root address is not an integer")
        checked = [_region(item, size) for item in regions]
    except (ValueError, TypeError) as exc:
        raise HandoffError(f"handoff image is malformed: {exc}") from None
    except Exception as exc:  # cbor2 raises its own types on hostile input
        raise HandoffError(f"handoff image body is not valid CBOR: {exc}") from None
    memory = ImageMemory(size)
    for phys, data in checked:
        memory.write(phys, data)
    return memory, root


def _region(item: object, size: int) -> tuple[int, bytes]:
    if not (
        isinstance(item, list)
        and len(item) == 2
        and isinstance(item[0], int)
        and isinstance(item[1], bytes)
        and 0 <= item[0] <= size - len(item[1])
    ):
        raise ValueError("a memory region is malformed or outside memory")
    return item[0], item[1]


class ImageMemory:
    """The physical memory a saved handoff describes: sparse, zero where the image is silent."""

    PAGE_SIZE = 4096

    def __init__(self, size: int) -> None:
        self._size = size
        self._pages: dict[int, bytearray] = {}

    @property
    def size(self) -> int:
        return self._size

    def read(self, phys: int, length: int) -> bytes:
        self._check(phys, length)
        out = bytearray(length)
        for page, start, end in self._spans(phys, length):
            data = self._pages.get(page)
            if data is not None:
                offset = page * self.PAGE_SIZE + start - phys
                out[offset : offset + end - start] = data[start:end]
        return bytes(out)

    def write(self, phys: int, data: bytes) -> None:
        self._check(phys, len(data))
        for page, start, end in self._spans(phys, len(data)):
            offset = page * self.PAGE_SIZE + start - phys
            target = self._pages.setdefault(page, bytearray(self.PAGE_SIZE))
            target[start:end] = data[offset : offset + end - start]

    def _spans(self, phys: int, length: int) -> list[tuple[int, int, int]]:
        """``(page, start, end)`` for each page ``[phys, phys+length)`` touches."""
        spans = []
        at, stop = phys, phys + length
        while at < stop:
            page, start = divmod(at, self.PAGE_SIZE)
            end = min(self.PAGE_SIZE, start + stop - at)
            spans.append((page, start, end))
            at += end - start
        return spans

    def _check(self, phys: int, length: int) -> None:
        if phys < 0 or length < 0 or phys + length > self._size:
            raise PhysicalMemoryError(
                f"access at {phys:#x} length {length:#x} is outside the image's memory "
                f"[0x0, {self._size:#x})"
            )
