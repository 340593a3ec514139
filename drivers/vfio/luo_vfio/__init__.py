"""luo-vfio: vfio-pci, devices passed through to VMs, preserved across live updates.

Install it and ``luo drivers`` lists the ``vfio-pci`` driver and the
``vfio-pci-v1`` file handler; bind a device to it by name
(``KernelConfig(driver_override={...})`` or ``kernel.devices.bind``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

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
        # One per plugin, so per kernel: a listing (kernel None) of this kernel's packs
        # (its manifest, say) must not replace the driver its devices are bound to.
        if self.vfio is None:
            self.vfio = Vfio(kernel)
        elif self.vfio.kernel is None and kernel is not None:
            self.vfio.kernel = kernel
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

    def kvm_passthrough(self) -> dict[str, Any]:
        """Passthrough devices for luo-kvm's VMM: ``{"kind": "vfio", "device": name}``."""
        from luo_kvm import PassthroughOps

        from luo_vfio import _passthrough

        ops = PassthroughOps(_passthrough.attach, _passthrough.preserve, _passthrough.resume)
        return {_passthrough.KIND: ops}
