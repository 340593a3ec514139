"""The IOMMU pack's contract: what ``luo contract luo-iommu`` exercises."""

from __future__ import annotations

from importlib import resources
from typing import Any

from luo_core import Device, Machine
from luo_core.abi._iopgtable import PAGE_SIZE
from luo_core.platform import HOST_BRIDGE
from luo_core.testing import Contract
from luo_iommu._commands import status
from luo_iommu._dmaengine import COMPATIBLE as DMA_ENGINE
from luo_iommu._driver import DRIVER, Iommu
from luo_iommu._model import COMPATIBLE

DMAR = "dmar0"
ENGINE = "0000:00:03.0"
IOVA = 0x10_0000
TARGET = 0x200_0000
"""Where the workload's mappings point (DMA targets; the mappings are what is checked)."""


def machine() -> Machine:
    """A host with the DMAR unit and one DMA engine alone in its IOMMU group."""
    host = Machine()
    host.add("pci0000:00", compatible=HOST_BRIDGE)
    host.add(DMAR, compatible=COMPATIBLE)
    host.add_pci(ENGINE, compatible=DMA_ENGINE, parent="pci0000:00")
    return host


def _iommu(dev: Device) -> Iommu:
    ops = dev.driver_data
    if dev.driver is None or not isinstance(ops, Iommu):
        raise TypeError(f"{dev.name} is not bound to {DRIVER}")
    return ops


def workload(dev: Device) -> None:
    """One more page mapped for the engine (a domain made and attached the first time)."""
    iommu = _iommu(dev)
    if not iommu.domains:
        domain = iommu.domain_alloc()
        iommu.attach(ENGINE, domain)
    domain = iommu.domains[0]
    n = sum(m.length for m in domain.mappings()) // PAGE_SIZE
    domain.map(IOVA + n * PAGE_SIZE, TARGET + n * PAGE_SIZE, PAGE_SIZE, write=n % 3 != 2)


def snapshot(dev: Device) -> Any:
    """What must survive: the domains, their tables and mappings, and the registers."""
    found = status(_iommu(dev))
    del found["faults_in_blackout"]
    return {**found, "rtaddr": dev.regs["rtaddr"], "gsts": dev.regs["gsts"]}


def golden() -> dict[int, bytes]:
    """Records of every version this pack reads (regenerate: see README)."""
    folder = resources.files(__package__).joinpath("golden")
    return {v: folder.joinpath(f"iommu-state-v{v}.luor").read_bytes() for v in (1, 2)}


def contracts() -> list[Contract]:
    return [
        Contract(
            name=DRIVER,
            machine=machine,
            devices=[DMAR],
            workload=workload,
            snapshot=snapshot,
            capabilities={"golden-records", "traffic-during-prepare"},
            golden=golden(),
        )
    ]
