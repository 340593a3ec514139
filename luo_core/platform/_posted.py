"""The hardware posting interrupts: a vector's PIR bit set, then one notification unless ON or SN.

As VT-d posts an interrupt (VT-d spec, "Interrupt Posting"): set the
vector's bit in the descriptor's PIR, then, if ON and SN are both clear, set
ON and send the notification vector NV to NDST.  While ON is set, further
posts only add bits (they coalesce per vector); while SN is set, nothing is
sent and the bits wait for the owner's next drain.  Nothing is lost while no
kernel listens: the bits stay in physical memory, which outlives kernels.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable

from luo_core.abi._posted import (
    CONTROL,
    PI_DESC_ALIGN,
    PI_DESC_SIZE,
    POSTED_INTR_ON,
    POSTED_INTR_SN,
    VECTORS,
)
from luo_core.errors import PhysicalMemoryError
from luo_core.platform._atomic import AtomicWords
from luo_core.platform._memory import PhysicalMemory

Notify = Callable[[int, int], None]
"""``notify(nv, ndst)``: deliver the notification vector to its destination."""


class Poster:
    """The machine's interrupt-posting unit: posts vectors into descriptors in ``ram``.

    One poster serialises all posting, as the IOMMU's posting unit does with
    its locked update of the descriptor; the drainer (the descriptor's owner,
    in any process) runs concurrently with it.
    """

    def __init__(self, ram: PhysicalMemory, notify: Notify) -> None:
        self._ram = ram
        self._notify = notify
        self._lock = threading.Lock()
        self._descs: dict[int, AtomicWords] = {}
        self.posted = 0
        """Every post."""
        self.notified = 0
        """Posts that found ON and SN clear, set ON and sent a notification."""
        self.suppressed = 0
        """Posts that found SN set (and ON clear): the bit waits, nothing was sent."""

    def post(self, desc_phys: int, vector: int) -> bool:
        """Post ``vector`` into the descriptor at ``desc_phys``; whether it sent a notification."""
        if type(vector) is not int or not 0 <= vector < VECTORS:
            raise PhysicalMemoryError(f"vector {vector!r} is not in 0..255", errno=errno.EINVAL)
        with self._lock:
            desc = self._desc(desc_phys)
            self.posted += 1
            desc.set_bit(4 * (vector // 32), vector % 32)
            # ON is read after the PIR bit is set (the set is a full barrier):
            # the order drain() counts on to never miss a bit.
            control = desc.load(CONTROL)
            if control >> POSTED_INTR_ON & 1:
                return False
            if control >> POSTED_INTR_SN & 1:
                self.suppressed += 1
                return False
            # Only this poster sets ON, so it cannot have been set since the read.
            desc.set_bit(CONTROL, POSTED_INTR_ON)
            self.notified += 1
            nv, ndst = control >> 16 & 0xFF, desc.load(CONTROL + 4)
        self._notify(nv, ndst)
        return True

    def _desc(self, phys: int) -> AtomicWords:
        desc = self._descs.get(phys)
        if desc is None:
            if phys % PI_DESC_ALIGN:
                raise PhysicalMemoryError(
                    f"a posted-interrupt descriptor at {phys:#x} is not 64-byte aligned",
                    errno=errno.EINVAL,
                )
            desc = self._descs[phys] = AtomicWords(self._ram.view(phys, PI_DESC_SIZE))
        return desc
