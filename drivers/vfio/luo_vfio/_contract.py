"""The pack's contract: what ``luo contract luo-vfio`` exercises."""

from __future__ import annotations

from importlib import resources
from typing import Any

from luo_core import Device, Machine
from luo_core.platform import EXAMPLE_NIC, HOST_BRIDGE, PCI_BRIDGE
from luo_core.testing import Contract
from luo_vfio._vfio import DRIVER, VfioState

PASSED = "0000:01:00.0"
MEMORY_SPACE = 1 << 1


def host() -> Machine:
    """A NIC alone in its IOMMU group behind a bridge: what a VMM is given."""
    machine = Machine()
    machine.add("pci0000:00", compatible=HOST_BRIDGE)
    machine.add_pci("0000:00:01.0", compatible=PCI_BRIDGE, parent="pci0000:00")
    machine.add_pci(PASSED, compatible=EXAMPLE_NIC, parent="0000:00:01.0")
    return machine


def workload(dev: Device) -> None:
    """What a VMM does when its guest enables the device: memory space and bus master."""
    dev.config["command"] = dev.config["command"] | MEMORY_SPACE
    dev.set_bus_master(True)


def snapshot(dev: Device) -> Any:
    state: VfioState = dev.driver_data
    return {
        "command": dev.config["command"],
        "irqs": dict(state.irqs),
        "domain": state.domain,
        "driver": dev.driver.name if dev.driver else None,
    }


def golden() -> dict[int, bytes]:
    """Records older versions of this pack wrote (regenerate: see README)."""
    folder = resources.files(__package__).joinpath("golden")
    return {1: folder.joinpath("vfio-pci-state-v1.luor").read_bytes()}


def contracts() -> list[Contract]:
    return [
        Contract(
            name=DRIVER,
            machine=host,
            devices=[PASSED],
            workload=workload,
            snapshot=snapshot,
            capabilities={"golden-records"},
            golden=golden(),
            driver_override={PASSED: DRIVER},
        )
    ]
