"""luo-vfio: vfio-pci, devices passed through to VMs, preserved across live updates.

Install it and ``luo drivers`` lists the ``vfio-pci`` driver and the
``vfio-pci-v1`` file handler; bind a device to it by name
(``KernelConfig(driver_override={...})`` or ``kernel.devices.bind``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from luo_core import DeviceDriver, FileHandler, hookimpl
from luo_core.testing import Contract
from luo_vfio._contract import contracts
from luo_vfio._records import IrqRoute, VfioFileRecord, VfioPciRecord
from luo_vfio._vfio import DRIVER, FILE_HANDLER, Vfio, VfioDevice, VfioFileOps, vfio_of

if TYPE_CHECKING:
    from luo_core import Kernel

__all__ = [
    "DRIVER",
    "FILE_HANDLER",
    "IrqRoute",
    "Vfio",
    "VfioDevice",
    "VfioFileRecord",
    "VfioPack",
    "VfioPciRecord",
    "vfio_of",
]


class VfioPack:
    """The pack's plugin: one per kernel boot, holding that kernel's vfio-pci."""

    def __init__(self) -> None:
        self.vfio: Vfio | None = None

    def _vfio(self, kernel: Kernel | None) -> Vfio:
        if self.vfio is None or self.vfio.kernel is not kernel:
            self.vfio = Vfio(kernel)
        return self.vfio

    @hookimpl
    def luo_device_drivers(self, kernel: Kernel | None) -> Iterator[DeviceDriver]:
        # "vfio-pci" is no hardware's compatible: devices are bound to it by name.
        yield DeviceDriver(DRIVER, ["vfio-pci"], self._vfio(kernel), schema=VfioPciRecord)

    @hookimpl
    def luo_file_handlers(self, kernel: Kernel | None) -> Iterator[FileHandler]:
        yield FileHandler(FILE_HANDLER, VfioFileOps(self._vfio(kernel)), schema=VfioFileRecord)

    @hookimpl
    def luo_contracts(self) -> Iterator[Contract]:
        yield from contracts()
