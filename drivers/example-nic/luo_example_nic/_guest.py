"""The example NIC's driver inside a VM: receives by DMA ring and MSI, counts by sequence.

A NIC passed through to a VM is driven by the guest's own driver, through
its registers (the BAR the VMM maps into the guest) and a receive ring in
guest memory.  Everything this driver knows lives in guest memory — the
ring, the buffers and its own page of state — never in the Python object,
which the VMM rebuilds in every kernel: so a live update, which keeps guest
memory intact, keeps the driver's place in the ring and its counters.

Guest memory layout from ``base`` (a guest-physical address, which is also
the IOVA the NIC uses: the VMM maps guest memory 1:1 into the device's IOMMU
domain, as VFIO does for a VM): one page of driver state, the descriptor
ring, then one 64-byte buffer per descriptor.

Frames are accounted by the link's sequence number: a frame whose number is
the next expected is received; a gap is counted lost (the NIC dropped them:
the ring was full, or the NIC was reset); a number seen before is a
duplicate.  An interrupt that finds no new frame is spurious.
"""

from __future__ import annotations

import struct
from typing import Any, Final, Protocol

import attrs

from luo_example_nic._model import CTRL_ENABLE, CTRL_IRQ, DD, FRAME, FRAME_SIZE, RX_DESC

STATE: Final = struct.Struct("<4sIIIQQQQQQ")
"""Driver state page: magic, ring size, next descriptor to clean, whether a frame was
seen yet, next expected sequence, received, lost, duplicated, interrupts handled,
spurious interrupts."""
MAGIC: Final = b"gNIC"
PAGE: Final = 4096


class GuestMemory(Protocol):
    """Guest memory by guest-physical address."""

    def read(self, gpa: int, length: int) -> bytes: ...

    def write(self, gpa: int, data: bytes) -> None: ...


class NicRegisters(Protocol):
    """The NIC's BAR 0 as the guest reaches it."""

    def __getitem__(self, name: str) -> int: ...

    def __setitem__(self, name: str, value: int) -> None: ...


@attrs.frozen
class GuestNicStats:
    received: int
    lost: int
    duplicated: int
    interrupts: int
    spurious: int
    next_seq: int


def footprint(ring: int) -> int:
    """Guest memory the driver needs for a ring of ``ring`` descriptors (bytes, page multiple)."""
    size = PAGE + ring * RX_DESC.size + ring * FRAME_SIZE
    return (size + PAGE - 1) // PAGE * PAGE


class GuestNic:
    """The guest's driver for one passed-through example NIC (``vector``: its MSI's)."""

    def __init__(self, name: str, regs: NicRegisters, base: int, vector: int) -> None:
        self.name = name
        self.regs = regs
        self.base = base
        self.vector = vector

    # -- the layout --------------------------------------------------------------

    def _desc(self, index: int) -> int:
        return self.base + PAGE + index * RX_DESC.size

    def _buffer(self, ring: int, index: int) -> int:
        return self.base + PAGE + ring * RX_DESC.size + index * FRAME_SIZE

    def _state(self, mem: GuestMemory) -> list[int | bytes]:
        return list(STATE.unpack(mem.read(self.base, STATE.size)))

    # -- what the guest does -----------------------------------------------------

    def setup(self, mem: GuestMemory, ring: int, irq_handle: int) -> None:
        """Probe: lay out the ring, give the NIC every descriptor but one, enable it."""
        for i in range(ring):
            mem.write(self._desc(i), RX_DESC.pack(self._buffer(ring, i), 0, 0, 0, 0, 0))
        mem.write(self.base, STATE.pack(MAGIC, ring, 0, 0, 0, 0, 0, 0, 0, 0))
        regs = self.regs
        regs["rx_ring"] = self._desc(0)
        regs["rx_ring_size"] = ring
        regs["irq_handle"] = irq_handle
        regs["rx_tail"] = ring - 1
        regs["ctrl"] = CTRL_ENABLE | CTRL_IRQ

    def seen(self, mem: GuestMemory) -> bool:
        """Whether the driver has seen a frame yet (its sequence baseline is set)."""
        return bool(self._state(mem)[3])

    def attached(self, mem: GuestMemory) -> bool:
        """Whether guest memory holds this driver's state (it was set up before)."""
        return mem.read(self.base, 4) == MAGIC

    def interrupt(self, mem: GuestMemory) -> list[int]:
        """The MSI fired: clean the ring; the sequence numbers of the frames found."""
        found = self.clean(mem)
        state = self._state(mem)
        state[8] = int(state[8]) + 1
        if not found:
            state[9] = int(state[9]) + 1
        mem.write(self.base, STATE.pack(*state))
        return found

    def clean(self, mem: GuestMemory) -> list[int]:
        """Take every completed descriptor, account its frame, give it back to the NIC;
        the frames' sequence numbers, in ring order."""
        state = self._state(mem)
        ring, at, seen = int(state[1]), int(state[2]), int(state[3])
        expected, received, lost, dup = (int(v) for v in state[4:8])
        found: list[int] = []
        while len(found) < ring:
            addr, _length, _csum, status, _err, _special = RX_DESC.unpack(
                mem.read(self._desc(at), RX_DESC.size)
            )
            if not status & DD:
                break
            seq = FRAME.unpack(mem.read(addr, FRAME.size))[0]
            if not seen:  # the frames before the first are not this driver's to count
                expected, seen = seq, 1
            if seq >= expected:
                lost += seq - expected
                received += 1
                expected = seq + 1
            else:
                dup += 1
            mem.write(self._desc(at), RX_DESC.pack(addr, 0, 0, 0, 0, 0))
            last, at = at, (at + 1) % ring
            found.append(seq)
        if found:
            state[2], state[3], state[4:8] = at, seen, [expected, received, lost, dup]
            mem.write(self.base, STATE.pack(*state))
            self.regs["rx_tail"] = last
        return found

    def stats(self, mem: GuestMemory) -> GuestNicStats:
        state = self._state(mem)
        expected, received, lost, dup, irqs, spurious = (int(v) for v in state[4:10])
        return GuestNicStats(received, lost, dup, irqs, spurious, expected)


RING: Final = 1024
"""Receive descriptors a guest gives its NIC: half a second of frames at the demo's 2 000
per second, so a blackout of a few hundred milliseconds (an in-process run on a loaded
machine) overflows nothing."""


class GuestNicDriver:
    """The guest's driver for a passed-through example NIC, as a VM runs it (a
    ``luo_kvm.GuestDriver``): frames are counted on the VM's packet ``stream``."""

    def __init__(self, name: str, regs: NicRegisters, base: int, vector: int, stream: int) -> None:
        self.nic = GuestNic(name, regs, base, vector)
        self.name = name
        self.vector = vector
        self.stream = stream

    def setup(self, guest: Any, irq_handle: int) -> None:
        self.nic.setup(guest, RING, irq_handle)

    def attached(self, guest: Any) -> bool:
        return self.nic.attached(guest)

    def interrupt(self, vector: int, guest: Any) -> None:
        if vector != self.vector:
            return
        first = not self.nic.seen(guest)
        seqs = self.nic.interrupt(guest)
        if not seqs:
            guest.interrupt_spurious()
            return
        if first:  # frames before the first one the guest saw are not its to count
            guest.packet_baseline(seqs[0], self.stream)
        for seq in seqs:
            guest.packet(seq + 1, self.stream)

    def poll(self, guest: Any) -> None:
        return None  # interrupt driven: the ring is cleaned when the MSI fires


FOOTPRINT: Final = footprint(RING)
