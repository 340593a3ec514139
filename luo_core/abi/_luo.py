"""The sessions handoff, in the kernel's layout: the ``LUO`` KHO entry and its packed arrays.

This is ``include/linux/kho/abi/luo.h`` (6.19): one KHO entry named ``LUO``
(compatible ``luo-v1``) holds a small tree — the kernel's is an FDT, ours is a
frame (magic ``LUOF``) around a canonical CBOR map::

    {"compatible": "luo-v1", "liveupdate-number": N,
     "luo-session": {"compatible": "luo-session-v2", "luo-session-header": PHYS},
     "luo-flb":     {"compatible": "luo-flb-v1",     "luo-flb-header": PHYS}}

The physical addresses point at packed little-endian structures in preserved
memory, byte for byte the kernel's:

* ``struct luo_session_header_ser { u64 count; }`` followed by ``count`` x
  ``struct luo_session_ser { char name[64]; u64 files; u64 count; }``;
* at each session's ``files``: ``count`` x ``struct luo_file_ser { char
  compatible[48]; u64 data; u64 token; }``;
* ``struct luo_flb_header_ser { u64 pgcnt; u64 count; }`` followed by
  ``count`` x ``struct luo_flb_ser { char name[48]; u64 data; u64 count; }``.

Strings are NUL-terminated inside their fields.  ``memfd-v1``'s own data
(``mm/memfd_luo.c``) is ``struct memfd_luo_ser { u64 pos; u64 size; u64
nr_folios; u64 folios; }`` with ``nr_folios`` x ``struct memfd_luo_folio_ser
{ u64 pfn:52, flags:12; u64 index; }`` at ``folios``.  Everything here is read
as hostile: counts are bounded by the bytes there, strings must end in their
field, and each failure is one :class:`~luo_core.errors.HandoffError` line.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final

import attrs

from luo_core.abi._cbor import decode_canonical, encode_canonical
from luo_core.abi._frame import FrameKind
from luo_core.abi._kho import Memory, MemRange, find_containing
from luo_core.abi._types import is_u64
from luo_core.errors import HandoffError

KHO_ENTRY: Final = "LUO"
COMPATIBLE: Final = "luo-v1"
SESSION_NODE: Final = "luo-session"
SESSION_COMPATIBLE: Final = "luo-session-v2"
SESSION_HEADER: Final = "luo-session-header"
FLB_NODE: Final = "luo-flb"
FLB_COMPATIBLE: Final = "luo-flb-v1"
FLB_HEADER: Final = "luo-flb-header"

SESSION_NAME_LENGTH: Final = 64
"""``LIVEUPDATE_SESSION_NAME_LENGTH``: a name is at most 63 bytes and a NUL."""
HNDL_COMPAT_LENGTH: Final = 48
FLB_COMPAT_LENGTH: Final = 48

SESSION_HEADER_SER: Final = struct.Struct("<Q")
SESSION_SER: Final = struct.Struct(f"<{SESSION_NAME_LENGTH}sQQ")
FILE_SER: Final = struct.Struct(f"<{HNDL_COMPAT_LENGTH}sQQ")
FLB_HEADER_SER: Final = struct.Struct("<QQ")
FLB_SER: Final = struct.Struct(f"<{FLB_COMPAT_LENGTH}sQQ")
MEMFD_SER: Final = struct.Struct("<QQQQ")
MEMFD_FOLIO_SER: Final = struct.Struct("<QQ")
MEMFD_FOLIO_UPTODATE: Final = 1 << 1
MEMFD_FOLIO_DIRTY: Final = 1 << 0

TREE: Final = FrameKind("LUO tree", b"LUOF", 1, max_body=4096)


@attrs.frozen
class SessionSer:
    """``struct luo_session_ser``: a session's name and where its files are."""

    name: str
    files: int
    count: int


@attrs.frozen
class FileSer:
    """``struct luo_file_ser``: one preserved file."""

    compatible: str
    data: int
    token: int


@attrs.frozen
class FlbSer:
    """``struct luo_flb_ser``: one preserved File-Lifecycle-Bound object."""

    name: str
    data: int
    count: int


@attrs.frozen
class MemfdSer:
    """``struct memfd_luo_ser``: a memfd's position, size and pages."""

    pos: int
    size: int
    nr_folios: int
    folios: int


@attrs.frozen
class LuoTree:
    """The ``LUO`` entry: the live-update number and where the two arrays are."""

    liveupdate_number: int
    session_header: int
    flb_header: int


# -- names ---------------------------------------------------------------------------


def c_string(text: str, size: int, what: str) -> bytes:
    """``text`` as the kernel stores it in a ``char[size]`` (NUL-terminated), or ``ValueError``."""
    raw = text.encode()
    if b"\0" in raw or len(raw) >= size:
        raise ValueError(f"{what} {text!r} must be under {size} bytes with no NUL")
    return raw


def read_c_string(raw: bytes, what: str) -> str:
    end = raw.find(b"\0")
    if end < 0:
        raise HandoffError(f"{what} is not NUL-terminated within its {len(raw)} bytes")
    try:
        return raw[:end].decode()
    except UnicodeDecodeError:
        raise HandoffError(f"{what} is not valid UTF-8") from None


# -- the tree ------------------------------------------------------------------------


def pack_tree(tree: LuoTree) -> bytes:
    return TREE.pack(
        encode_canonical(
            {
                "compatible": COMPATIBLE,
                "liveupdate-number": tree.liveupdate_number,
                SESSION_NODE: {
                    "compatible": SESSION_COMPATIBLE,
                    SESSION_HEADER: tree.session_header,
                },
                FLB_NODE: {"compatible": FLB_COMPATIBLE, FLB_HEADER: tree.flb_header},
            }
        )
    )


def unpack_tree(blob: bytes) -> LuoTree:
    """The ``LUO`` entry, checked as ``luo_early_startup`` and the setup_incoming calls do."""
    try:
        body = decode_canonical(TREE.unpack(blob), max_depth=3, max_items=64)
    except HandoffError as exc:
        raise HandoffError(f"LUO tree: {exc}") from None
    if body.get("compatible") != COMPATIBLE:
        raise HandoffError(f"LUO tree is incompatible with {COMPATIBLE!r}")
    number = body.get("liveupdate-number")
    if not (isinstance(number, int) and is_u64(number)):
        raise HandoffError("LUO tree: liveupdate-number is not a u64")
    sessions = _subnode(body, SESSION_NODE, SESSION_COMPATIBLE, SESSION_HEADER)
    flbs = _subnode(body, FLB_NODE, FLB_COMPATIBLE, FLB_HEADER)
    return LuoTree(number, sessions, flbs)


def _subnode(body: dict[str, object], name: str, compatible: str, prop: str) -> int:
    node = body.get(name)
    if not isinstance(node, dict):
        raise HandoffError(f"LUO tree has no {name!r} node")
    if node.get("compatible") != compatible:
        raise HandoffError(f"LUO tree: node {name!r} is incompatible with {compatible!r}")
    value = node.get(prop)
    if not (isinstance(value, int) and is_u64(value)):
        raise HandoffError(f"LUO tree: {name}/{prop} is not a u64 address")
    return value


# -- the arrays ----------------------------------------------------------------------


def pack_sessions(sessions: list[SessionSer]) -> bytes:
    parts = [SESSION_HEADER_SER.pack(len(sessions))]
    for s in sessions:
        name = c_string(s.name, SESSION_NAME_LENGTH, "session name")
        parts.append(SESSION_SER.pack(name, s.files, s.count))
    return b"".join(parts)


def sessions_size(count: int) -> int:
    return SESSION_HEADER_SER.size + count * SESSION_SER.size


def session_count(header: bytes, available: int) -> int:
    """The header's ``count``, refused if its entries would not fit in ``available`` bytes."""
    (count,) = SESSION_HEADER_SER.unpack_from(header)
    if sessions_size(count) > available:
        raise HandoffError(
            f"session header claims {count} sessions; {available} preserved bytes hold fewer"
        )
    return int(count)


def unpack_sessions(blob: bytes, count: int) -> list[SessionSer]:
    found: list[SessionSer] = []
    for i in range(count):
        raw, files, n = SESSION_SER.unpack_from(
            blob, SESSION_HEADER_SER.size + i * SESSION_SER.size
        )
        name = read_c_string(raw, f"session {i} name")
        if not name:
            raise HandoffError(f"session {i} has an empty name")
        found.append(SessionSer(name, files, n))
    return found


def pack_files(files: list[FileSer]) -> bytes:
    return b"".join(
        FILE_SER.pack(
            c_string(f.compatible, HNDL_COMPAT_LENGTH, "handler compatible"), f.data, f.token
        )
        for f in files
    )


def unpack_files(blob: bytes, count: int, session: str) -> list[FileSer]:
    if count * FILE_SER.size > len(blob):
        raise HandoffError(f"session {session!r} claims {count} files; its array holds fewer")
    found = []
    for i in range(count):
        raw, data, token = FILE_SER.unpack_from(blob, i * FILE_SER.size)
        found.append(
            FileSer(read_c_string(raw, f"session {session!r} file {i} handler"), data, token)
        )
    return found


def pack_flbs(flbs: list[FlbSer], pgcnt: int) -> bytes:
    parts = [FLB_HEADER_SER.pack(pgcnt, len(flbs))]
    for f in flbs:
        parts.append(
            FLB_SER.pack(c_string(f.name, FLB_COMPAT_LENGTH, "FLB compatible"), f.data, f.count)
        )
    return b"".join(parts)


def flbs_size(count: int) -> int:
    return FLB_HEADER_SER.size + count * FLB_SER.size


def unpack_flbs(blob: bytes) -> list[FlbSer]:
    if len(blob) < FLB_HEADER_SER.size:
        raise HandoffError("FLB header truncated")
    _pgcnt, count = FLB_HEADER_SER.unpack_from(blob)
    if flbs_size(count) > len(blob):
        raise HandoffError(f"FLB header claims {count} objects; its block holds fewer")
    found = []
    for i in range(count):
        raw, data, n = FLB_SER.unpack_from(blob, FLB_HEADER_SER.size + i * FLB_SER.size)
        found.append(FlbSer(read_c_string(raw, f"FLB {i} name"), data, n))
    return found


# -- the whole of it -----------------------------------------------------------------


@attrs.frozen
class LuoHandoff:
    """Everything the ``LUO`` entry leads to: sessions and their files, and the FLBs."""

    tree: LuoTree
    sessions: list[SessionSer]
    files: dict[str, list[FileSer]]
    flbs: list[FlbSer]


def read_luo(memory: Memory, preserved: Sequence[MemRange], tree: LuoTree) -> LuoHandoff:
    """Follow the tree's addresses into preserved memory; memory not preserved is refused."""
    sessions, files = read_sessions(memory, preserved, tree)
    return LuoHandoff(tree, sessions, files, read_flbs(memory, preserved, tree))


def _reader(memory: Memory, preserved: Sequence[MemRange]) -> Any:
    def read(phys: int, length: int, what: str, *, to_end: bool = False) -> bytes:
        found = find_containing(preserved, MemRange(phys, max(length, 1)))
        if found is None:
            raise HandoffError(f"{what} at {phys:#x} was not preserved")
        return memory.read(phys, found.end - phys if to_end else length)

    return read


def read_sessions(
    memory: Memory, preserved: Sequence[MemRange], tree: LuoTree
) -> tuple[list[SessionSer], dict[str, list[FileSer]]]:
    """The sessions and their files, as ``luo_session_deserialize`` reads them."""
    read = _reader(memory, preserved)
    header = tree.session_header
    block = read(header, SESSION_HEADER_SER.size, "session header", to_end=True)
    count = session_count(block, len(block))
    sessions = unpack_sessions(block, count)
    files: dict[str, list[FileSer]] = {}
    for s in sessions:
        if s.name in files:
            raise HandoffError(f"session {s.name!r} appears twice")
        what = f"files of session {s.name!r}"
        raw = read(s.files, s.count * FILE_SER.size, what) if s.count else b""
        files[s.name] = unpack_files(raw, s.count, s.name)
    return sessions, files


def read_flbs(memory: Memory, preserved: Sequence[MemRange], tree: LuoTree) -> list[FlbSer]:
    """The FLBs, as ``luo_flb_setup_incoming`` finds them at boot."""
    read = _reader(memory, preserved)
    return unpack_flbs(read(tree.flb_header, FLB_HEADER_SER.size, "FLB header", to_end=True))
