"""luo's own handoff record: when freeze began, and the timings of every phase so far.

Statistics cross kexec as data like everything else, so the next kernel can
report the whole update, blackout included.  The record is a frame (magic
``LUOM``) whose body is the CBOR map :meth:`UpdateStats.to_wire` writes:
``{"freeze-start": ns, "restore-end": null, "phases": [...], "threads-left": [...]}``.
"""

from __future__ import annotations

from typing import Final

import cbor2

from luo_core.abi._cbor import decode_canonical
from luo_core.abi._frame import FrameKind
from luo_core.abi._stats import UpdateStats
from luo_core.errors import HandoffError

META_NODE: Final = "luo:meta"
META_COMPATIBLE: Final = "luo-meta-v1"
META: Final = FrameKind("meta record", b"LUOM", 1, max_body=16 << 20)


def write_meta(stats: UpdateStats) -> bytes:
    """The meta record the old kernel adds to its handoff."""
    if stats.freeze_start_ns is None:
        raise HandoffError("the meta record needs the time freeze started")
    # cbor2's canonical form (in C: this is written on the kexec path) is the
    # deterministic form the reader checks, for keys as short as these.
    return META.pack(cbor2.dumps(stats.to_wire(), canonical=True))


def read_meta(blob: bytes) -> UpdateStats:
    """The previous kernel's statistics, or :class:`HandoffError`."""
    body = META.unpack(blob)
    try:
        stats = UpdateStats.from_wire(decode_canonical(body))
        if stats.freeze_start_ns is None:
            raise ValueError("freeze-start is missing")
        if list(stats.phases)[-1:] != ["kexec"]:
            raise ValueError("the phases do not end with kexec")
    except Exception as exc:
        raise HandoffError(f"meta record is malformed: {type(exc).__name__}: {exc}") from None
    return stats
