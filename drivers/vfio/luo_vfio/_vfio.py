"""vfio-pci: a PCI function handed to a VMM, and the device files the VMM opens.

A device bound to ``vfio-pci`` (by name: ``KernelConfig.driver_override`` or
``kernel.devices.bind``) belongs to userspace.  The VMM opens it
(:meth:`Vfio.open_device`, the vfio cdev), binds it to an iommufd so that
its DMA is translated by that iommufd's domain (``VFIO_DEVICE_BIND_IOMMUFD``
and ``VFIO_DEVICE_ATTACH_IOMMUFD_PT``), routes its MSIs straight into a
vCPU's posted-interrupt descriptor (``VFIO_DEVICE_SET_IRQS`` with KVM's IRQ
bypass) and maps its BAR into the guest (:meth:`Vfio.region`).

For a live update the device itself is a ``dev_liveupdate`` participant
(:class:`VfioPciOps`: never reset, bus mastering left on, its record checked
at restore), and the VMM's device file is preserved in the VM's session
(``vfio-pci-v1``): in the next kernel the VMM retrieves it by token and
finds the device still bound, attached and routed — DMA and interrupts
never stopped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import weakref
from typing import TYPE_CHECKING, Any

import attrs

from luo_core import Device, DeviceDriverOps, FileHandlerOps, LiveFile
from luo_core.errors import BusyError, DeviceError, NotFoundError
from luo_core.kernel.sessions._fileid import same_file
from luo_core.platform import BUS_MASTER, Registers
from luo_vfio._records import IrqRoute, VfioFileRecord, VfioPciRecord

if TYPE_CHECKING:
    from luo_core import Kernel

DRIVER = "vfio-pci"
FILE_HANDLER = "vfio-pci-v1"


@attrs.define
class VfioState:
    """The driver's live state of one device (``dev.driver_data``)."""

    irqs: dict[int, int] = attrs.field(factory=dict)
    """MSI index -> IRTE handle."""
    domain: int | None = None
    opened: bool = False


@attrs.define(eq=False)
class VfioDevice:
    """An open device file: the VMM's handle on one device."""

    fd: int
    """The driver's own reference to the file, to recognise it by (closed with this
    object, so with its kernel)."""
    dev: Device
    iommufd_bound: bool = False

    def __attrs_post_init__(self) -> None:
        weakref.finalize(self, _close, self.fd)


class Vfio(DeviceDriverOps):
    """The vfio-pci driver of one kernel, and the device files opened through it."""

    def __init__(self, kernel: Kernel | None) -> None:
        self.kernel = kernel
        self.files: list[VfioDevice] = []
        self.passed_through: dict[str, dict[str, tuple[int, int]]] = {}
        """The VMM's passthrough devices, by VM then device: (iommufd, device file)."""

    # -- the driver --------------------------------------------------------------

    def probe(self, dev: Device) -> None:
        dev.driver_data = VfioState()

    def shutdown(self, dev: Device) -> None:
        dev.set_bus_master(False)

    def prepare(self, dev: Device) -> VfioPciRecord:
        return self._record(dev)

    def freeze(self, dev: Device, data: VfioPciRecord) -> VfioPciRecord:
        return self._record(dev)

    def cancel(self, dev: Device, data: VfioPciRecord) -> None:
        return None

    def restore(self, dev: Device, data: VfioPciRecord) -> None:
        command = dev.config["command"]
        if data.command & BUS_MASTER and not command & BUS_MASTER:
            raise DeviceError(f"{dev.name}: bus mastering was turned off across kexec")
        if command != data.command:
            raise DeviceError(
                f"{dev.name}: command register {command:#x} in hardware, "
                f"{data.command:#x} handed over"
            )
        dev.driver_data = VfioState({r.index: r.handle for r in data.irqs}, data.domain)

    def finish(self, dev: Device, data: VfioPciRecord | None) -> None:
        return None

    def _record(self, dev: Device) -> VfioPciRecord:
        state: VfioState = dev.driver_data
        irqs = [IrqRoute(i, h) for i, h in sorted(state.irqs.items())]
        return VfioPciRecord(dev.config["command"], irqs, state.domain)

    # -- what the VMM does -----------------------------------------------------------

    def open_device(self, name: str) -> int:
        """Open ``name``'s device file (the caller owns the descriptor): ``EBUSY`` if
        open already, ``ENODEV`` unless the device is bound to vfio-pci."""
        dev = self._bound(name)
        state: VfioState = dev.driver_data
        if state.opened:
            raise BusyError(f"{name} is already open")
        fd = os.eventfd(0, os.EFD_CLOEXEC)
        state.opened = True
        # The driver keeps a reference of its own to recognise the file by: the caller
        # (and LUO, which lets go of its reference at finish) may close theirs.
        self.files.append(VfioDevice(os.dup(fd), dev))
        return fd

    def device(self, fd: int) -> VfioDevice:
        """The open device behind descriptor ``fd`` (``EBADF`` for anything else)."""
        for file in self.files:
            if same_file(file.fd, fd):
                return file
        raise NotFoundError(f"descriptor {fd} is not a vfio device file", errno=errno.EBADF)

    def bind_iommufd(self, fd: int, iommufd: int) -> None:
        """Attach the device to the iommufd's domain: its DMA goes through it."""
        from luo_iommu import iommu_of

        file = self.device(fd)
        iommu = iommu_of(self._kernel())
        domain = iommu.iommufd(iommufd).domain
        iommu.attach(file.dev.name, domain)
        file.iommufd_bound = True
        file.dev.driver_data.domain = domain.id

    def set_irq_posted(self, fd: int, index: int, pda: int, vector: int) -> int:
        """Route MSI ``index`` into the posted descriptor at ``pda`` as ``vector``; the
        handle the device's MSI names (what the VMM programs into the device)."""
        from luo_irqchip import irqchip_of

        file = self.device(fd)
        chip = irqchip_of(self._kernel())
        state: VfioState = file.dev.driver_data
        handle = state.irqs.get(index)
        if handle is None:
            handle = chip.alloc_irte(file.dev.name, index)
            state.irqs[index] = handle
        chip.set_vcpu_affinity(handle, pda, vector)
        return handle

    def region(self, fd: int) -> Registers:
        """The device's BAR 0, as the VMM maps it into the guest."""
        return self.device(fd).dev.regs

    def enable_bus_master(self, fd: int) -> None:
        self.device(fd).dev.set_bus_master(True)

    def _bound(self, name: str) -> Device:
        dev = self._kernel().devices[name]
        if dev.driver is None or dev.driver.name != DRIVER:
            raise NotFoundError(f"{name} is not bound to {DRIVER}", errno=errno.ENODEV)
        return dev

    def _kernel(self) -> Kernel:
        if self.kernel is None:
            raise NotFoundError("vfio-pci was loaded without a kernel")
        return self.kernel


class VfioFileOps(FileHandlerOps):
    """``vfio-pci-v1``: the VMM's device file, preserved in the VM's session."""

    def __init__(self, vfio: Vfio) -> None:
        self.vfio = vfio

    def can_preserve(self, file: LiveFile) -> bool:
        try:
            self.vfio.device(file.fd)
        except NotFoundError:
            return False
        return True

    def preserve(self, file: LiveFile) -> VfioFileRecord:
        opened = self.vfio.device(file.fd)
        # Preserving the file preserves the PCI function (it is requested for the
        # update): its DMA and interrupts go on through the kexec.
        self.vfio._kernel().devices.request(opened.dev.name)
        return VfioFileRecord(opened.dev.name, opened.iommufd_bound)

    def unpreserve(self, file: LiveFile, data: VfioFileRecord) -> None:
        self.vfio._kernel().devices.release(data.device)

    def retrieve(self, data: VfioFileRecord) -> int:
        dev = self.vfio._bound(data.device)
        fd = os.eventfd(0, os.EFD_CLOEXEC)
        dev.driver_data.opened = True
        self.vfio.files.append(VfioDevice(os.dup(fd), dev, data.iommufd_bound))
        return fd

    def finish(self, file: LiveFile | None, data: VfioFileRecord, retrieved: bool) -> None:
        return None


def vfio_of(kernel: Kernel) -> Vfio:
    """This kernel's vfio-pci driver."""
    for driver in kernel.registry.drivers.values():
        if driver.name == DRIVER and isinstance(driver.ops, Vfio):
            return driver.ops
    raise NotFoundError(f"no {DRIVER} driver in this kernel (is luo-vfio installed?)")


def plain_irqs(state: Any) -> dict[int, int]:
    return dict(state.irqs) if isinstance(state, VfioState) else {}


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
