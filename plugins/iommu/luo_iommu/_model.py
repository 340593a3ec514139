"""The DMAR unit's hardware: RTADDR and GCMD.TE in registers, applied to the machine's IOMMU.

VT-d programs DMA remapping through a handful of registers (Intel VT-d
specification, chapter 11; Linux ``drivers/iommu/intel/iommu.c``
``iommu_set_root_entry`` and ``iommu_enable_translation``).  luo keeps the
ones that matter for a live update, in BAR 0:

* ``rtaddr`` (driver, u64): the root table's physical address;
* ``gcmd`` (driver, u32, doorbell): bit 31 ``TE``, translation enable.  The
  kick applies it: ``TE`` set translates through ``rtaddr``
  (:meth:`~luo_core.platform.Iommu.set_root_table`), clear stops translating;
* ``gsts`` (device, u32): bit 31 mirrors the translation state;
* ``fault_count`` (device, u64): the IOMMU's fault count, refreshed on every
  kick and every control.

``reset()`` (power-on and every function-level reset) turns translation off.
Nothing here imports the kernel side: this runs in the hardware process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from luo_core.abi._dmar import requester_id
from luo_core.errors import IommuFaultError
from luo_core.platform import DeviceModel, Register, RegisterMap, Requester

COMPATIBLE: Final = "intel,vtd"
GCMD_TE: Final = 1 << 31
"""Translation enable (``DMA_GCMD_TE``); ``gsts`` bit 31 is ``DMA_GSTS_TES``."""

DMAR_REGISTERS = RegisterMap(
    [
        Register("rtaddr", 0x00, 64),
        Register("gcmd", 0x08, 32, doorbell=True),
        Register("gsts", 0x0C, 32, owner="device"),
        Register("fault_count", 0x10, 64, owner="device"),
    ]
)


class DmarModel(DeviceModel):
    """``dmar0``: the DMA-remapping unit in front of the machine's memory."""

    compatible = (COMPATIBLE,)
    registers = DMAR_REGISTERS

    def reset(self) -> None:
        self.ctx.iommu.set_root_table(None)
        self._refresh()

    def kick(self) -> None:
        regs = self.ctx.regs
        if regs["gcmd"] & GCMD_TE:
            try:
                self.ctx.iommu.set_root_table(regs["rtaddr"])
            except Exception:
                # A root table outside memory: the unit refuses it and stays off.
                self.ctx.iommu.set_root_table(None)
        else:
            self.ctx.iommu.set_root_table(None)
        self._refresh()

    def control(self, op: str, args: Mapping[str, Any]) -> object:
        self._refresh()
        if op == "status":
            return {
                "root_table": self.ctx.iommu.root_table,
                "faults": self.ctx.iommu.faults,
                "fault_log": [
                    [f.device, f.iova, f.write, str(f.reason)] for f in self.ctx.iommu.fault_log
                ],
            }
        if op == "translate":
            return self._translate(args)
        return super().control(op, args)

    def _translate(self, args: Mapping[str, Any]) -> list[int | None]:
        """Where each of ``iovas`` goes for ``device``'s reads, walked through the root,
        context and page tables as its DMA would be (``None``: it faults)."""
        device, iovas = args.get("device"), args.get("iovas")
        if not isinstance(device, str) or not isinstance(iovas, list):
            raise ValueError("translate takes device=<PCI name> and iovas=[...]")
        where = Requester(requester_id(device))
        found: list[int | None] = []
        for iova in iovas:
            try:
                found.append(self.ctx.iommu.translate(where, iova, write=False, device=device))
            except IommuFaultError:
                found.append(None)
        self._refresh()
        return found

    def _refresh(self) -> None:
        regs = self.ctx.regs
        regs["gsts"] = GCMD_TE if self.ctx.iommu.root_table is not None else 0
        regs["fault_count"] = self.ctx.iommu.faults % (1 << 64)
