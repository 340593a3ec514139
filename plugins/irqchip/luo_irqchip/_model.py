"""The interrupt-remapping unit's hardware: IRTA, GCMD.IRE and GSTS, as a device model.

On VT-d, interrupt remapping is part of each DMAR unit (``IRTA_REG``,
``GCMD_REG`` bit 25 IRE, ``GSTS_REG`` bit 25 IRES); luo models it as a unit
of its own, compatible ``intel,vtd-ir``, so that the IOMMU and IRQ chip packs
stay independent.  The driver owns ``irta`` (bits 63:12 the table, bits 3:0
S: ``2**(S + 1)`` entries) and ``gcmd`` (a doorbell); the device owns
``gsts`` (IRES mirrors the IRE the unit applied) and ``faults`` (the
machine's remapping fault count, refreshed on every kick and control).
``reset()`` (power-on and every function-level reset) turns remapping off.
Nothing here imports the kernel side: this runs in the hardware process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from luo_core.errors import InvalidArgumentError
from luo_core.platform import DeviceContext, DeviceModel, Register, RegisterMap

COMPATIBLE: Final = "intel,vtd-ir"
GCMD_IRE: Final = 1 << 25
"""``DMA_GCMD_IRE`` (``include/linux/intel-iommu.h``): interrupt remapping enable."""
GSTS_IRES: Final = 1 << 25
"""``DMA_GSTS_IRES``: interrupt remapping enabled, as the unit applied it."""
IRTA_SIZE_MASK: Final = 0xF
IRTA_ADDR_MASK: Final = ~0xFFF & (1 << 64) - 1

IR_REGISTERS = RegisterMap(
    [
        Register("irta", 0x00, 64),
        Register("gcmd", 0x08, 32, doorbell=True),
        Register("gsts", 0x0C, 32, owner="device"),
        Register("faults", 0x10, 64, owner="device"),
    ]
)


def irta(table: int, entries: int) -> int:
    """The IRTA value naming ``entries`` (a power of two, 2..65536) at ``table``."""
    if entries < 2 or entries & (entries - 1) or entries > 1 << 16:
        raise InvalidArgumentError(f"{entries} entries is not a power of two in 2..65536")
    return table | (entries.bit_length() - 2)


def irta_table(value: int) -> tuple[int, int]:
    """``(table, entries)`` an IRTA value names."""
    return value & IRTA_ADDR_MASK, 2 ** ((value & IRTA_SIZE_MASK) + 1)


class IrModel(DeviceModel):
    """The remapping unit: applies IRE to the machine's interrupt remapping on each kick."""

    compatible = (COMPATIBLE,)
    registers = IR_REGISTERS

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.refused = 0
        """GCMD writes whose IRTA named no usable table (IRES stayed clear)."""

    def reset(self) -> None:
        self.ctx.interrupts.set_table(None)
        self._refresh()

    def kick(self) -> None:
        regs = self.ctx.regs
        if regs["gcmd"] & GCMD_IRE:
            table, entries = irta_table(regs["irta"])
            try:
                self.ctx.interrupts.set_table(table, entries)
            except InvalidArgumentError:
                # Real hardware would report an invalid IRTA through its fault
                # status; here the enable simply does not take.
                self.refused += 1
                self.ctx.interrupts.set_table(None)
                regs["gsts"] = regs["gsts"] & ~GSTS_IRES
            else:
                regs["gsts"] = regs["gsts"] | GSTS_IRES
        else:
            self.ctx.interrupts.set_table(None)
            regs["gsts"] = regs["gsts"] & ~GSTS_IRES
        self._refresh()

    def control(self, op: str, args: Mapping[str, Any]) -> object:
        self._refresh()
        if op == "status":
            remapper = self.ctx.interrupts
            table = remapper.table
            return {
                "table": None if table is None else table[0],
                "entries": None if table is None else table[1],
                "faults": remapper.faults,
                "refused": self.refused,
                "posted": remapper.poster.posted,
                "fault_log": [
                    {"device": f.device, "index": f.index, "reason": str(f.reason)}
                    for f in remapper.fault_log
                ],
            }
        return super().control(op, args)

    def _refresh(self) -> None:
        self.ctx.regs["faults"] = self.ctx.interrupts.faults % (1 << 64)
