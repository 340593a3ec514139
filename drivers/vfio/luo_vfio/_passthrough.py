"""The VMM's side of a passed-through NIC: attach it to a VM, preserve it, take it back.

A VM device spec ``{"kind": "vfio", "device": "0000:03:00.0"}`` (optionally
``"ring"``, ``"vector"``) makes the VMM do what QEMU does for ``-device
vfio-pci`` with iommufd: open the device, open an iommufd and map all guest
memory into its IOAS at IOVA = guest-physical address (``IOMMU_IOAS_MAP_FILE``
of the guest_memfd), bind the device to it, route its MSI into vCPU 0's
posted-interrupt descriptor, turn bus mastering on, and start the guest's
driver for it (:class:`~luo_example_nic._guest.GuestNic`, whose state lives
in guest memory).  ``vmm-preserve`` puts the iommufd and the device file in
the VM's session; ``vmm-resume`` retrieves them by token in the next kernel,
where the device was never stopped, and gives the guest its driver back.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from luo_example_nic._guest import GuestNic, footprint

from luo_core.errors import InvalidArgumentError, NotFoundError
from luo_vfio._vfio import vfio_of

if TYPE_CHECKING:
    from luo_kvm import GuestContext, Vm

    from luo_core import Session

KIND: Final = "vfio"
DEFAULT_RING: Final = 1024
"""Receive descriptors: half a second of frames at the demo's 2 000 per second, so a
blackout of a few hundred milliseconds (an in-process run on a loaded machine) overflows
nothing."""
DEFAULT_VECTOR: Final = 0x40
TOKEN_BASE: Final = 0x1000
"""Session tokens: the guest_memfds use their memslot numbers; device ``n`` of a VM uses
``TOKEN_BASE + 2n`` (its iommufd) and ``TOKEN_BASE + 2n + 1`` (its device file)."""
_U64: Final = struct.Struct("<Q")


class GuestNicDevice:
    """A passed-through NIC as the guest program sees it (a ``GuestDevice`` of luo-kvm)."""

    def __init__(self, nic: GuestNic, stream: int) -> None:
        self.nic = nic
        self.name = nic.name
        self.stream = stream

    def interrupt(self, vector: int, guest: GuestContext) -> None:
        if vector != self.nic.vector:
            return
        first = not self.nic.seen(guest)
        seqs = self.nic.interrupt(guest)
        if not seqs:
            guest.interrupt_spurious()
            return
        if first:  # frames before the first one the guest saw are not its to count
            guest.packet_baseline(seqs[0], self.stream)
        for seq in seqs:
            guest.packet(seq + 1, self.stream)

    def poll(self, guest: GuestContext) -> None:
        return None  # interrupt driven: the ring is cleaned when the MSI fires


def _spec(spec: Mapping[str, Any]) -> tuple[str, int, int]:
    device, ring = spec.get("device"), spec.get("ring", DEFAULT_RING)
    vector = spec.get("vector", DEFAULT_VECTOR)
    if not isinstance(device, str):
        raise InvalidArgumentError(f"a vfio device spec names its device, not {device!r:.40}")
    if type(ring) is not int or not 2 <= ring <= 4096 or ring & (ring - 1):
        raise InvalidArgumentError(f"{device}: ring must be a power of two in 2..4096")
    if type(vector) is not int or not 0x20 <= vector <= 0xFF:
        raise InvalidArgumentError(f"{device}: vector must be in 0x20..0xff")
    return device, ring, vector


def _slot(vm: Vm, device: str) -> tuple[int, int]:
    """The device's index among the VM's passthrough devices (the order the VMM gives
    them, in every kernel), and where its guest driver's memory starts."""
    from luo_kvm import DEVICE_AREA_GPA

    devices = vfio_of(vm.kvm.kernel).passed_through.setdefault(vm.name, {})
    index = list(devices).index(device) if device in devices else len(devices)
    return index, DEVICE_AREA_GPA + index * footprint(4096)


def attach(vm: Vm, spec: Mapping[str, Any], session: Session | None) -> object:
    from luo_iommu import iommu_of

    device, ring, vector = _spec(spec)
    kernel = vm.kvm.kernel
    vfio, iommu = vfio_of(kernel), iommu_of(kernel)
    index, base = _slot(vm, device)
    fd = vfio.open_device(device)
    iommufd = iommu.iommufd_open()
    domain = iommu.iommufd(iommufd).domain
    for gpa, phys, length in vm.memory_map():
        domain.map(gpa, phys, length)
    vfio.bind_iommufd(fd, iommufd)
    handle = vfio.set_irq_posted(fd, 0, vm.vcpus[0].pi_desc_phys, vector)
    vfio.enable_bus_master(fd)
    nic = GuestNic(device, vfio.region(fd), base, vector)
    nic.setup(vm, ring, handle)
    vm.add_guest_device(GuestNicDevice(nic, index))
    vfio.passed_through[vm.name][device] = (iommufd, fd)
    return {"device": device, "domain": domain.id, "irte": handle, "ring": ring}


def preserve(vm: Vm, spec: Mapping[str, Any], session: Session | None) -> object:
    device, _, _ = _spec(spec)
    if session is None:
        raise InvalidArgumentError("preserving a passthrough device needs the VM's session")
    index, _ = _slot(vm, device)
    found = vfio_of(vm.kvm.kernel).passed_through[vm.name].get(device)
    if found is None:
        raise NotFoundError(f"{device} is not passed through to {vm.name}")
    iommufd, fd = found
    session.preserve_fd(iommufd, TOKEN_BASE + 2 * index)
    session.preserve_fd(fd, TOKEN_BASE + 2 * index + 1)
    return {"device": device}


def resume(vm: Vm, spec: Mapping[str, Any], session: Session | None) -> object:
    device, _, vector = _spec(spec)
    if session is None:
        raise InvalidArgumentError("taking a passthrough device back needs the VM's session")
    vfio = vfio_of(vm.kvm.kernel)
    index, base = _slot(vm, device)
    iommufd = session.retrieve_fd(TOKEN_BASE + 2 * index)
    fd = session.retrieve_fd(TOKEN_BASE + 2 * index + 1)
    nic = GuestNic(device, vfio.region(fd), base, vector)
    if not nic.attached(vm):
        raise NotFoundError(f"{device}: the guest's driver state is not in guest memory")
    vm.add_guest_device(GuestNicDevice(nic, index))
    vfio.passed_through[vm.name][device] = (iommufd, fd)
    return {"device": device}
