"""The IRQ chip's contract: what ``luo contract luo-irqchip`` exercises."""

from __future__ import annotations

from importlib import resources
from typing import Any

from luo_core import Device, Machine
from luo_core.errors import BusyError
from luo_irqchip._chip import DRIVER, IrChip
from luo_irqchip._model import COMPATIBLE

IR0 = "ir0"
MSI_DEVICE = "0000:01:00.0"
ROUTES_KEPT = 48


def machine() -> Machine:
    """A host with the remapping unit and one PCI function whose MSIs it routes."""
    host = Machine()
    host.add(IR0, compatible=COMPATIBLE)
    host.add("pci0000:00", compatible="pci-host-bridge")
    host.add_pci("0000:00:01.0", compatible="pci-bridge", parent="pci0000:00")
    host.add_pci(MSI_DEVICE, compatible="luo,msi-source", parent="0000:00:01.0")
    return host


def route_msis(dev: Device) -> None:
    """Three more MSIs of the device: two posted to host CPUs' descriptors, one remapped."""
    chip: IrChip = dev.driver_data
    if chip is None:
        raise BusyError(f"{dev.name}: not bound to {DRIVER}")
    routes = chip.routes()
    if len(routes) >= ROUTES_KEPT:
        for route in routes[:3]:
            chip.free_irte(route.handle)
    index = max((r.msi_index for r in routes), default=-1) + 1
    for step in range(3):
        handle = chip.alloc_irte(MSI_DEVICE, index + step)
        vector = 0x30 + (index + step) % 0xC0
        if step == 2:
            chip.set_remapped(handle, vector, dest_id=(index + step) % 4)
        else:
            chip.set_vcpu_affinity(handle, chip.posted_msi_desc((index + step) % 8), vector)


def snapshot(dev: Device) -> Any:
    """What must survive: the routes, the table's bytes, and the registers the driver owns."""
    chip: IrChip = dev.driver_data
    table, entries = chip.table
    return {
        "routes": chip.routes(),
        "table": table,
        "entries": entries,
        "table_bytes": chip.table_bytes(),
        "irta": dev.regs["irta"],
        "gcmd": dev.regs["gcmd"],
    }


def golden() -> dict[int, bytes]:
    """Records older versions of this pack wrote (regenerate: see README)."""
    folder = resources.files(__package__).joinpath("golden")
    return {1: folder.joinpath("ir-state-v1.luor").read_bytes()}
