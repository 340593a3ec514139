"""luo's own handoff record: when freeze began, and the timings of every phase so far.

Statistics cross kexec as data like everything else, so the next kernel can
report the whole update, blackout included.
"""

from __future__ import annotations

import cbor2

from luo_core.errors import HandoffError
from luo_core.kernel._handover import HandoffRecord
from luo_core.kernel._stats import PhaseStats, UpdateStats

META_KEY = ("luo", "meta")
META_COMPATIBLE = "luo-meta-v1"


def write_meta(stats: UpdateStats) -> HandoffRecord:
    """The meta record the old kernel adds to its handoff."""
    assert stats.freeze_start_ns is not None
    body = {
        "freeze-start": stats.freeze_start_ns,
        "phases": [p.to_wire() for p in stats.phases.values()],
    }
    return HandoffRecord(*META_KEY, META_COMPATIBLE, cbor2.dumps(body, canonical=True))


def read_meta(record: HandoffRecord | None) -> UpdateStats:
    """The previous kernel's statistics, or :class:`HandoffError`."""
    if record is None or record.compatible != META_COMPATIBLE:
        raise HandoffError(f"handoff has no {META_COMPATIBLE} record")
    try:
        body = cbor2.loads(record.data)
        freeze_start = body["freeze-start"]
        if not isinstance(freeze_start, int):
            raise TypeError("freeze-start must be an integer")
        stats = UpdateStats(freeze_start_ns=freeze_start)
        for wire in body["phases"]:
            phase = PhaseStats.from_wire(wire)
            stats.phases[phase.phase] = phase
        if list(stats.phases)[-1:] != ["kexec"]:
            raise ValueError("the phases do not end with kexec")
    except Exception as exc:
        raise HandoffError(f"handoff meta record is malformed: {exc}") from None
    return stats
