"""A DMA engine: a small PCI device that writes memory through the IOMMU, for tests and demos.

It stands for any bus-mastering device behind the DMAR unit.  Every DMA goes
through :meth:`~luo_core.platform.DeviceContext.dma` (no argument): its
requester id, the root and context tables, the page tables.  The operator
drives it by controls:

* ``write`` ``{iova, data}`` — one DMA write; ``{"ok": bool}`` (a fault moves
  nothing and is counted);
* ``read`` ``{iova, length}`` — one DMA read; the bytes, or ``None`` on a fault;
* ``start`` ``{iova, slots}`` — stream: every tick (1 ms) write the next
  sequence number (u64, little endian) into slot ``seq % slots`` of the ring
  at ``iova``; ``stop`` stops;
* ``status`` — ``{seq, faults, running}``: numbers written, DMAs that faulted.

The registers mirror the stream (``seq``, ``faults``, device-owned) so a
kernel can read them.  ``reset()`` stops the stream.  No kernel is needed
for any of it: the engine keeps writing while kernels come and go.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, Final

from luo_core.errors import IommuFaultError
from luo_core.platform import DeviceContext, DeviceModel, Register, RegisterMap

COMPATIBLE: Final = "luo,dma-engine"
TICK_S: Final = 0.001
SEQ: Final = struct.Struct("<Q")

DMA_ENGINE_REGISTERS = RegisterMap(
    [
        Register("seq", 0x00, 64, owner="device"),
        Register("faults", 0x08, 64, owner="device"),
    ]
)


class DmaEngineModel(DeviceModel):
    """A bus-mastering PCI function that writes sequence numbers through the IOMMU."""

    compatible = (COMPATIBLE,)
    registers = DMA_ENGINE_REGISTERS

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self._ring: tuple[int, int] | None = None

    def reset(self) -> None:
        self._ring = None
        self.period = None

    def tick(self, now_ns: int) -> None:
        if self._ring is None:
            return
        iova, slots = self._ring
        seq = self.ctx.regs["seq"]
        if self._write(iova + (seq % slots) * SEQ.size, SEQ.pack(seq)):
            self.ctx.regs["seq"] = seq + 1

    def control(self, op: str, args: Mapping[str, Any]) -> object:
        if op == "write":
            data = args.get("data")
            if not isinstance(data, bytes):
                raise ValueError("write takes iova=<int> and data=<bytes>")
            return {"ok": self._write(_int(args, "iova"), data)}
        if op == "read":
            try:
                return self.ctx.dma().read(_int(args, "iova"), _int(args, "length"))
            except IommuFaultError:
                self._fault()
                return None
        if op == "start":
            slots = _int(args, "slots")
            if not 0 < slots <= 1 << 16:
                raise ValueError(f"start takes 1..65536 slots, not {slots}")
            self._ring = (_int(args, "iova"), slots)
            self.period = TICK_S
            return None
        if op == "stop":
            self._ring = None
            self.period = None
            return None
        if op == "status":
            regs = self.ctx.regs
            return {
                "seq": regs["seq"],
                "faults": regs["faults"],
                "running": self._ring is not None,
            }
        return super().control(op, args)

    def _write(self, iova: int, data: bytes) -> bool:
        try:
            self.ctx.dma().write(iova, data)
        except IommuFaultError:
            self._fault()
            return False
        return True

    def _fault(self) -> None:
        self.ctx.regs["faults"] = (self.ctx.regs["faults"] + 1) % (1 << 64)


def _int(args: Mapping[str, Any], key: str) -> int:
    value = args.get(key)
    if type(value) is not int or value < 0:
        raise ValueError(f"{key} must be a non-negative integer, not {value!r}")
    return value
