"""What a demo run moved and lost: totals that each source of counters adds to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

NicSample = Mapping[str, Mapping[str, Any]]
"""Each NIC's registers (its ``counters`` control), by device name."""


@attrs.define
class Counters:
    """Totals of a run.  A source (the NICs' hardware counters, the remapping
    hardware, a VM's guest counters) measures its part and :meth:`add`\\ s it;
    a total no source reports stays zero, and the report says which have none."""

    packets_sent: int = 0
    packets_received: int = 0
    packets_lost: int = 0
    packets_duplicated: int = 0
    io_submitted: int = 0
    io_completed: int = 0
    io_lost: int = 0
    interrupts_raised: int = 0
    interrupts_delivered: int = 0
    interrupts_lost: int = 0
    interrupts_spurious: int = 0
    dma_faults: int = 0
    interrupt_faults: int = 0
    sources: set[str] = attrs.field(factory=set)
    """Which kinds of totals some source reported: ``packets``, ``io``, ``interrupts``."""

    def add(self, other: Counters) -> None:
        for field in attrs.fields(Counters):
            if field.name != "sources":
                setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        self.sources |= other.sources

    def to_json(self) -> dict[str, Any]:
        return {
            "packets": {
                "sent": self.packets_sent,
                "received": self.packets_received,
                "lost": self.packets_lost,
                "duplicated": self.packets_duplicated,
            },
            "io": {
                "submitted": self.io_submitted,
                "completed": self.io_completed,
                "lost": self.io_lost,
            },
            "interrupts": {
                "raised": self.interrupts_raised,
                "delivered": self.interrupts_delivered,
                "lost": self.interrupts_lost,
                "spurious": self.interrupts_spurious,
            },
            "dma_faults": self.dma_faults,
            "interrupt_faults": self.interrupt_faults,
        }


def nic_traffic(before: NicSample, after: NicSample, reset: frozenset[str]) -> Counters:
    """The frames the NICs' links delivered between two samples.

    A NIC in ``reset`` was reset in between (its counters started again from
    zero), and so was one whose counter went back.  A counter cannot show a
    duplicate: ``packets_duplicated`` stays zero.
    """
    total = Counters(sources={"packets"})
    for nic, now in after.items():
        then = before.get(nic)
        if then is None:
            continue
        received, dropped = now["rx_frames"], now["rx_dropped"]
        if nic not in reset and received >= then["rx_frames"] and dropped >= then["rx_dropped"]:
            received -= then["rx_frames"]
            dropped -= then["rx_dropped"]
        total.packets_received += received
        total.packets_lost += dropped
        total.packets_sent += received + dropped
    return total


def hardware_faults(before: Mapping[str, int], after: Mapping[str, int]) -> Counters:
    """The remapping faults between two of the hardware's ``stats``."""
    return Counters(
        dma_faults=after["dma-faults"] - before["dma-faults"],
        interrupt_faults=after["interrupt-faults"] - before["interrupt-faults"],
    )
