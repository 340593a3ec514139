"""luo-nvme: an NVMe controller (QEMU's ``pci1b36,0010``), its host driver and its guest driver.

Install it and the hardware runs the controller's model (namespace 1 in a
real file); each kernel binds the ``nvme`` driver to it, doing DMA through
an IOMMU domain of luo-iommu and preserving its queues in place across a
live update; a VM given the controller by vfio-pci runs the guest driver
(:func:`kvm_guest_drivers`).  The commands ``nvme-write``, ``nvme-read``,
``nvme-reap`` and ``nvme-state`` drive the host driver from the operator's
side (across processes too).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from luo_core import Command, DeviceDriver, hookimpl
from luo_core.errors import InvalidArgumentError
from luo_core.platform import DeviceModel
from luo_core.testing import Contract
from luo_nvme._contract import CTRL, contracts, nvme_host
from luo_nvme._driver import (
    DRIVER,
    Completed,
    InflightRecord,
    NvmeOps,
    NvmeRecord,
    NvmeState,
    WrittenRecord,
    checksum,
    reap,
    submit_read,
    submit_write,
    wait_idle,
)
from luo_nvme._model import NvmeModel
from luo_nvme._spec import COMPATIBLE, NVME_REGISTERS, Completion
from luo_nvme._spec import Command as NvmeCommand

if TYPE_CHECKING:
    from luo_core import Device, Kernel

__all__ = [
    "COMPATIBLE",
    "CTRL",
    "DRIVER",
    "NVME_REGISTERS",
    "Completed",
    "Completion",
    "InflightRecord",
    "NvmeCommand",
    "NvmeModel",
    "NvmeOps",
    "NvmeRecord",
    "NvmeState",
    "WrittenRecord",
    "checksum",
    "nvme_host",
    "reap",
    "submit_read",
    "submit_write",
    "wait_idle",
]


@hookimpl
def luo_device_models() -> Iterator[type[DeviceModel]]:
    yield NvmeModel


@hookimpl
def luo_device_drivers(kernel: Kernel | None) -> Iterator[DeviceDriver]:
    yield DeviceDriver(
        name=DRIVER, compatible=[COMPATIBLE], ops=NvmeOps(kernel), schema=NvmeRecord
    )


@hookimpl
def luo_contracts() -> Iterator[Contract]:
    yield from contracts()


@hookimpl
def luo_commands(kernel: Kernel | None) -> Iterator[Command]:
    if kernel is None:
        return

    def device(args: Mapping[str, Any]) -> Device:
        name = args.get("device")
        if not isinstance(name, str):
            raise InvalidArgumentError(f"name the controller (device=), not {name!r:.40}")
        return kernel.devices[name]

    def completed(done: list[Completed]) -> list[dict[str, Any]]:
        return [
            {"cid": c.cid, "opcode": c.opcode, "slba": c.slba, "blocks": c.blocks,
             "status": c.status, "data": c.data}
            for c in done
        ]  # fmt: skip

    def write(args: Mapping[str, Any]) -> object:
        return {"cid": submit_write(device(args), args.get("slba"), args.get("data"))}  # type: ignore[arg-type]

    def read(args: Mapping[str, Any]) -> object:
        return {"cid": submit_read(device(args), args.get("slba"), args.get("blocks"))}  # type: ignore[arg-type]

    def reaped(args: Mapping[str, Any]) -> object:
        dev = device(args)
        return {"done": completed(wait_idle(dev) if args.get("wait") else reap(dev))}

    def status(args: Mapping[str, Any]) -> object:
        dev = device(args)
        st: NvmeState = dev.driver_data
        if not isinstance(st, NvmeState):
            raise InvalidArgumentError(f"{dev.name} is not bound to {DRIVER}")
        return {
            "io": [st.sq_tail, st.cq_head, st.phase],
            "inflight": sorted(st.inflight),
            "reaped_in_restore": st.reaped_in_restore,
            "checksum": checksum(dev),
        }

    yield Command("nvme-write", write)
    yield Command("nvme-read", read)
    yield Command("nvme-reap", reaped)
    yield Command("nvme-state", status)


def kvm_guest_drivers() -> dict[str, Any]:
    """The driver a VM runs for a passed-through controller (luo-kvm, luo-vfio)."""
    from luo_kvm import GuestDriverSpec

    from luo_nvme._guest import FOOTPRINT, GuestNvmeDriver

    return {COMPATIBLE: GuestDriverSpec(FOOTPRINT, GuestNvmeDriver)}
