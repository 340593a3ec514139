"""luo-example-nic: an example pack with a NIC driver and a subsystem.

Install it and ``luo drivers`` lists it; ``luo demo`` preserves its NICs.
"""

from collections.abc import Iterator

from luo_core import DeviceDriver, Subsystem, hookimpl
from luo_core.testing import Contract
from luo_example_nic._contract import contracts
from luo_example_nic._fdb import SUBSYSTEM, FdbEntry, FdbOps, FdbRecord
from luo_example_nic._nic import COMPATIBLE, DRIVER, NicOps, NicRecord, NicState, transmit

__all__ = [
    "COMPATIBLE",
    "DRIVER",
    "SUBSYSTEM",
    "FdbEntry",
    "FdbOps",
    "FdbRecord",
    "NicRecord",
    "NicState",
    "transmit",
]


@hookimpl
def luo_device_drivers() -> Iterator[DeviceDriver]:
    yield DeviceDriver(name=DRIVER, compatible=[COMPATIBLE], ops=NicOps(), schema=NicRecord)


@hookimpl
def luo_contracts() -> Iterator[Contract]:
    yield from contracts()


@hookimpl
def luo_subsystems() -> Iterator[Subsystem]:
    yield Subsystem(name=SUBSYSTEM, ops=FdbOps(), schema=FdbRecord)
