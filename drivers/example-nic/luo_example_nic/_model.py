"""The example NIC's hardware: a device model that keeps counting frames with no kernel.

Its registers (BAR 0) are the datasheet both sides share.  The driver owns
``ctrl`` (bit 0 enables the NIC), ``ring_size`` and ``tx_tail`` (a doorbell:
writing it makes the NIC transmit up to it); the device owns the burned-in
``mac``, ``tx_head`` and the frame counters.  Frames arrive from the link at
``rx_pps`` frames per second (a machine parameter) or when the operator
injects them (control ``receive``); an enabled NIC counts them in
``rx_frames``, a disabled one in ``rx_dropped``.  Nothing here imports the
kernel side: this runs in the hardware process.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

from luo_core.platform import DeviceContext, DeviceModel, Register, RegisterMap

COMPATIBLE = "luo,example-nic"
CTRL_ENABLE = 1 << 0
DEFAULT_RING = 256
TICK_S = 0.001

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
        self.rx_pps = ctx.params.get("rx_pps", 0)
        self.period = TICK_S if self.rx_pps else None
        self._last_ns: int | None = None
        self._carry = 0  # frame fractions, in frame-nanoseconds

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
        if self._last_ns is None:
            self._last_ns = now_ns
            return
        self._carry += (now_ns - self._last_ns) * self.rx_pps
        self._last_ns = now_ns
        frames, self._carry = divmod(self._carry, 1_000_000_000)
        self._receive(frames)

    def control(self, op: str, args: Mapping[str, Any]) -> object:
        if op == "receive":
            frames = args.get("frames")
            if type(frames) is not int or not 0 <= frames < 1 << 32:
                raise ValueError(f"receive takes frames=0..2**32-1, not {frames!r}")
            self._receive(frames)
            return None
        if op == "counters":
            return self.ctx.regs.values()
        return super().control(op, args)

    def _receive(self, frames: int) -> None:
        regs = self.ctx.regs
        counter = "rx_frames" if regs["ctrl"] & CTRL_ENABLE else "rx_dropped"
        regs[counter] = (regs[counter] + frames) % (1 << 64)
