"""luo's own plugin: the platform and PCI buses, the PCI bridge drivers, the ISA bridge's.

Bridges must keep bus mastering on through a live update, or DMA from the
preserved devices behind them stops; their restore checks that it did.  The
ISA bridge's driver has no live-update callbacks, like most drivers of
legacy devices: such a device cannot be preserved.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from luo_core.abi import state
from luo_core.errors import DeviceError
from luo_core.kernel._hookspecs import hookimpl
from luo_core.kernel._records import Bus, DeviceDriver, DeviceDriverOps
from luo_core.platform import HOST_BRIDGE, ISA_BRIDGE, PCI_BRIDGE

if TYPE_CHECKING:
    from luo_core.kernel.devices._tree import Device


@state(compatible="luo,pci-bridge-state", version=1)
class BridgeRecord:
    """A bridge hands over nothing but the fact that it was preserved: its
    windows and bus numbers live in its (hardware) configuration space."""


class BridgeOps(DeviceDriverOps):
    """Host and PCI-to-PCI bridges: nothing to hand over but a running bus."""

    def probe(self, dev: Device) -> None:
        dev.set_bus_master(True)

    def prepare(self, dev: Device) -> BridgeRecord:
        return BridgeRecord()

    def restore(self, dev: Device, data: BridgeRecord) -> None:
        if not dev.bus_master:
            raise DeviceError(f"bridge {dev.name} lost bus mastering across kexec")


@hookimpl
def luo_buses() -> Iterator[Bus]:
    yield Bus(name="platform")
    yield Bus(name="pci")


@hookimpl
def luo_device_drivers() -> Iterator[DeviceDriver]:
    yield DeviceDriver(
        name="pci-host", compatible=[HOST_BRIDGE], ops=BridgeOps(), schema=BridgeRecord
    )
    yield DeviceDriver(
        name="pcieport", compatible=[PCI_BRIDGE], ops=BridgeOps(), schema=BridgeRecord
    )
    yield DeviceDriver(
        name="isa-bridge", compatible=[ISA_BRIDGE], ops=DeviceDriverOps(), liveupdate=False
    )
