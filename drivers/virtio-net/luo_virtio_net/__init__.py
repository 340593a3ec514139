"""luo-virtio-net: a virtio 1.x network device (PCI, split virtqueues) and its drivers.

Install it and the hardware runs virtio-net functions (compatible
``pci1af4,1041``); a VM drives one passed through to it with the guest
driver this pack offers (``kvm_guest_drivers``), and a host kernel binds the
``virtio-net`` driver, whose queues live in kernel memory behind an IOMMU
domain and cross a live update in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from luo_core import DeviceDriver, hookimpl
from luo_core.platform import DeviceModel
from luo_core.testing import Contract
from luo_virtio_net._abi import COMPATIBLE, OFFERED, VIRTIO_NET_REGISTERS, RingLayout
from luo_virtio_net._contract import contracts, virtio_net_host
from luo_virtio_net._guest import FOOTPRINT, GuestState, GuestVirtioNet, read_state
from luo_virtio_net._host import (
    DRIVER_NAME as DRIVER,
)
from luo_virtio_net._host import (
    QueueRecord,
    VirtioNetOps,
    VirtioNetRecord,
    VirtioNetState,
    receive,
    transmit,
)
from luo_virtio_net._model import VirtioNetModel, burned_in_mac

if TYPE_CHECKING:
    from luo_core import Kernel

__all__ = [
    "COMPATIBLE",
    "DRIVER",
    "FOOTPRINT",
    "OFFERED",
    "VIRTIO_NET_REGISTERS",
    "GuestState",
    "GuestVirtioNet",
    "QueueRecord",
    "RingLayout",
    "VirtioNetModel",
    "VirtioNetOps",
    "VirtioNetRecord",
    "VirtioNetState",
    "burned_in_mac",
    "read_state",
    "receive",
    "transmit",
    "virtio_net_host",
]


@hookimpl
def luo_device_models() -> Iterator[type[DeviceModel]]:
    yield VirtioNetModel


@hookimpl
def luo_device_drivers(kernel: Kernel | None) -> Iterator[DeviceDriver]:
    yield DeviceDriver(
        name=DRIVER, compatible=[COMPATIBLE], ops=VirtioNetOps(kernel), schema=VirtioNetRecord
    )


@hookimpl
def luo_contracts() -> Iterator[Contract]:
    yield from contracts()


def kvm_guest_drivers() -> dict[str, Any]:
    """The driver a VM runs for a passed-through virtio-net function (luo-kvm, luo-vfio)."""
    from luo_kvm import GuestDriverSpec

    return {COMPATIBLE: GuestDriverSpec(FOOTPRINT, GuestVirtioNet)}
