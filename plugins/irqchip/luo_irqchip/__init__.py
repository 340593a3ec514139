"""luo-irqchip: interrupt remapping (the unit's model and the ``intel-ir`` driver) for luo.

Install it and the hardware runs the ``intel,vtd-ir`` unit's model, kernels
bind ``intel-ir`` to it, and MSIs routed through its table keep arriving
through a live update: posted into their descriptors while no kernel runs,
re-injected once after restore.
"""

from collections.abc import Iterator

from luo_core import DeviceDriver, Kernel, hookimpl
from luo_core.platform import DeviceModel
from luo_core.testing import Contract
from luo_irqchip._chip import CPUS, DRIVER, ENTRIES, IrChip, irqchip_of
from luo_irqchip._contract import IR0, golden, machine, route_msis, snapshot
from luo_irqchip._model import COMPATIBLE, GCMD_IRE, GSTS_IRES, IR_REGISTERS, IrModel
from luo_irqchip._record import IrRecord, Route

__all__ = [
    "COMPATIBLE",
    "CPUS",
    "DRIVER",
    "ENTRIES",
    "GCMD_IRE",
    "GSTS_IRES",
    "IR_REGISTERS",
    "IrChip",
    "IrModel",
    "IrRecord",
    "Route",
    "irqchip_of",
]


@hookimpl
def luo_device_models() -> Iterator[type[DeviceModel]]:
    yield IrModel


@hookimpl
def luo_device_drivers(kernel: Kernel | None) -> Iterator[DeviceDriver]:
    # A new chip per boot: its state dies with the kernel that made it.
    yield DeviceDriver(name=DRIVER, compatible=[COMPATIBLE], ops=IrChip(kernel), schema=IrRecord)


@hookimpl
def luo_contracts() -> Iterator[Contract]:
    yield Contract(
        name=DRIVER,
        machine=machine,
        devices=[IR0],
        workload=route_msis,
        snapshot=snapshot,
        capabilities={"golden-records", "traffic-during-prepare"},
        golden=golden(),
    )
