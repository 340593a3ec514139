"""The example NIC's hardware: a device model that keeps receiving frames with no kernel.

Its registers (BAR 0) are the datasheet both sides share.  The driver owns
``ctrl`` (bit 0 enables the NIC, bit 1 its MSI), ``ring_size`` and
``tx_tail`` (a doorbell: writing it makes the NIC transmit up to it); the
device owns the burned-in ``mac``, ``tx_head`` and the frame counters.
Frames arrive from the link at ``rx_pps`` frames per second (a machine
parameter) or when the operator injects them (control ``receive``); each
carries the link's sequence number (``rx_seq`` counts them all).

Without a receive ring (``rx_ring`` 0, as the host's own driver runs it) an
enabled NIC only counts frames in ``rx_frames``.  With one, the NIC is a bus
master: as e1000's legacy receive path does, it owns the descriptors from
``rx_head`` up to (not including) the driver's ``rx_tail`` (a doorbell), and
for each frame reads the descriptor at ``rx_ring + 16 * rx_head`` by DMA,
writes the frame into the descriptor's buffer, writes the descriptor back
with its length and the DD bit, and advances ``rx_head``; then it raises its
MSI (the remapping handle in ``irq_handle``).  Every DMA goes through the
IOMMU as this PCI function (``ctx.dma()``), every MSI through interrupt
remapping (``ctx.msi()``).  A frame that finds no free descriptor is dropped
and counted (``rx_dropped``), as hardware does; a DMA the IOMMU refuses drops
the frame too (``dma_errors``).  A disabled NIC drops every frame.  Nothing
here imports the kernel side: this runs in the hardware process.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Mapping
from typing import Any, Final

from luo_core.errors import InterruptRemapFaultError, IommuFaultError
from luo_core.platform import BUS_MASTER, DeviceContext, DeviceModel, Register, RegisterMap
from luo_core.platform._traffic import Arrivals, injected

COMPATIBLE = "luo,example-nic"
CTRL_ENABLE = 1 << 0
CTRL_IRQ = 1 << 1
DEFAULT_RING = 256
TICK_S = 0.001
RX_DESC: Final = struct.Struct("<QHHBBH")
"""e1000's legacy receive descriptor: buffer address, length, checksum, status, errors,
special (16 bytes)."""
DD: Final = 1 << 0
EOP: Final = 1 << 1
FRAME: Final = struct.Struct("<QQQ")
"""What a frame carries: the link's sequence number, the NIC's MAC, the arrival time (ns)."""
FRAME_SIZE: Final = 64
MAX_RX_RING: Final = 4096

NIC_REGISTERS = RegisterMap(
    [
        Register("mac", 0x00, 64, owner="device"),
        Register("ctrl", 0x08, 32),
        Register("ring_size", 0x0C, 32),
        Register("tx_tail", 0x10, 32, doorbell=True),
        Register("tx_head", 0x14, 32, owner="device"),
        Register("tx_frames", 0x18, 64, owner="device"),
        Register("rx_frames", 0x20, 64, owner="device"),
        Register("rx_dropped", 0x28, 64, owner="device"),
        Register("rx_ring", 0x30, 64),
        Register("rx_ring_size", 0x38, 32),
        Register("rx_tail", 0x3C, 32, doorbell=True),
        Register("rx_head", 0x40, 32, owner="device"),
        Register("irq_handle", 0x44, 32),
        Register("rx_seq", 0x48, 64, owner="device"),
        Register("irq_raised", 0x50, 64, owner="device"),
        Register("irq_faults", 0x58, 64, owner="device"),
        Register("dma_errors", 0x60, 64, owner="device"),
    ]
)


def burned_in_mac(name: str) -> int:
    """A stable, locally administered MAC derived from the device name."""
    return 0x02_00_00_00_00_00 | zlib.crc32(name.encode())


class ExampleNicModel(DeviceModel):
    compatible = (COMPATIBLE,)
    registers = NIC_REGISTERS

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.link = Arrivals(ctx.params.get("rx_pps", 0))
        self.period = TICK_S if self.link.pps else None

    def reset(self) -> None:
        self.ctx.regs["mac"] = burned_in_mac(self.ctx.name)

    def kick(self) -> None:
        regs = self.ctx.regs
        if not regs["ctrl"] & CTRL_ENABLE:
            return
        ring = regs["ring_size"] or DEFAULT_RING
        tail, head = regs["tx_tail"] % ring, regs["tx_head"]
        regs["tx_frames"] = (regs["tx_frames"] + (tail - head) % ring) % (1 << 64)
        regs["tx_head"] = tail

    def tick(self, now_ns: int) -> None:
        self._receive(self.link.due(now_ns))

    def control(self, op: str, args: Mapping[str, Any]) -> object:
        if op == "receive":
            self._receive(injected(args))
            return None
        if op == "counters":
            return self.ctx.regs.values()
        if op == "link":
            self.period = TICK_S if self.link.set_rate(args) else None
            return None
        return super().control(op, args)

    def _receive(self, frames: int) -> None:
        regs = self.ctx.regs
        if not frames:
            return
        if not regs["ctrl"] & CTRL_ENABLE:
            _add(regs, "rx_seq", frames)
            _add(regs, "rx_dropped", frames)
        elif not regs["rx_ring"]:
            _add(regs, "rx_seq", frames)
            _add(regs, "rx_frames", frames)
        else:
            self._receive_dma(frames)

    def _receive_dma(self, frames: int) -> None:
        regs = self.ctx.regs
        if not self.ctx.config["command"] & BUS_MASTER:  # no DMA without bus mastering
            _add(regs, "rx_seq", frames)
            _add(regs, "rx_dropped", frames)
            return
        size, ring = regs["rx_ring_size"], regs["rx_ring"]
        dma = self.ctx.dma()
        written = 0
        for _ in range(frames):
            seq = regs["rx_seq"]
            _add(regs, "rx_seq", 1)
            head = regs["rx_head"]
            if not 0 < size <= MAX_RX_RING or head >= size or head == regs["rx_tail"] % size:
                _add(regs, "rx_dropped", 1)  # no descriptor: the ring is full (or unusable)
                continue
            at = ring + head * RX_DESC.size
            try:
                addr, *_ = RX_DESC.unpack(dma.read(at, RX_DESC.size))
                frame = FRAME.pack(seq, regs["mac"], time.monotonic_ns())
                dma.write(addr, frame.ljust(FRAME_SIZE, b"\0"))
                dma.write(at, RX_DESC.pack(addr, FRAME_SIZE, 0, DD | EOP, 0, 0))
            except IommuFaultError:
                _add(regs, "dma_errors", 1)
                _add(regs, "rx_dropped", 1)
                continue
            regs["rx_head"] = (head + 1) % size
            _add(regs, "rx_frames", 1)
            written += 1
        if written and regs["ctrl"] & CTRL_IRQ:
            try:
                self.ctx.msi().raise_(regs["irq_handle"])
                _add(regs, "irq_raised", 1)
            except InterruptRemapFaultError:
                _add(regs, "irq_faults", 1)


def _add(regs: Any, name: str, n: int) -> None:
    regs[name] = (regs[name] + n) % (1 << 64)
