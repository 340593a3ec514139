"""luo-example-nic: an example pack with a NIC (its device model and its driver) and a subsystem.

Install it and ``luo drivers`` lists it; the hardware runs its NIC model and
``luo demo`` preserves its NICs.
"""

from collections.abc import Iterator
from typing import Any

from luo_core import DeviceDriver, Subsystem, hookimpl
from luo_core.platform import DeviceModel
from luo_core.testing import Contract
from luo_example_nic._contract import contracts
from luo_example_nic._fdb import SUBSYSTEM, FdbEntry, FdbOps, FdbRecord
from luo_example_nic._model import COMPATIBLE, NIC_REGISTERS, ExampleNicModel, burned_in_mac
from luo_example_nic._nic import DRIVER, NicOps, NicRecord, NicState, transmit

__all__ = [
    "COMPATIBLE",
    "DRIVER",
    "NIC_REGISTERS",
    "SUBSYSTEM",
    "ExampleNicModel",
    "FdbEntry",
    "FdbOps",
    "FdbRecord",
    "NicRecord",
    "NicState",
    "burned_in_mac",
    "transmit",
]


@hookimpl
def luo_device_models() -> Iterator[type[DeviceModel]]:
    yield ExampleNicModel


@hookimpl
def luo_device_drivers() -> Iterator[DeviceDriver]:
    yield DeviceDriver(name=DRIVER, compatible=[COMPATIBLE], ops=NicOps(), schema=NicRecord)


@hookimpl
def luo_contracts() -> Iterator[Contract]:
    yield from contracts()


def kvm_guest_drivers() -> dict[str, Any]:
    """The driver a VM runs for a passed-through example NIC (luo-kvm, luo-vfio)."""
    from luo_kvm import GuestDriverSpec

    from luo_example_nic._guest import FOOTPRINT, GuestNicDriver

    return {COMPATIBLE: GuestDriverSpec(FOOTPRINT, GuestNicDriver)}


@hookimpl
def luo_subsystems() -> Iterator[Subsystem]:
    yield Subsystem(name=SUBSYSTEM, ops=FdbOps(), schema=FdbRecord)
