"""luo-nvme: an NVMe controller (QEMU's ``pci1b36,0010``), its host driver and its guest driver.

Install it and the hardware runs the controller's model (namespace 1 in a
real file); each kernel binds the ``nvme`` driver to it, doing DMA through
an IOMMU domain of luo-iommu and preserving its queues in place across a
live update; a VM given the controller by vfio-pci runs the guest driver
(:func:`kvm_guest_drivers`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from luo_core import hookimpl
from luo_core.platform import DeviceModel
from luo_nvme._model import NvmeModel
from luo_nvme._spec import COMPATIBLE, NVME_REGISTERS, Command, Completion

__all__ = ["COMPATIBLE", "NVME_REGISTERS", "Command", "Completion", "NvmeModel"]


@hookimpl
def luo_device_models() -> Iterator[type[DeviceModel]]:
    yield NvmeModel


def kvm_guest_drivers() -> dict[str, Any]:
    """The driver a VM runs for a passed-through controller (luo-kvm, luo-vfio)."""
    from luo_kvm import GuestDriverSpec

    from luo_nvme._guest import FOOTPRINT, GuestNvmeDriver

    return {COMPATIBLE: GuestDriverSpec(FOOTPRINT, GuestNvmeDriver)}
