"""The VMM's side of a passed-through device: attach it to a VM, preserve it, take it back.

A VM device spec ``{"kind": "vfio", "device": "0000:03:00.0"}`` (optionally
``"vector"``) makes the VMM do what QEMU does for ``-device vfio-pci`` with
iommufd: open the device, open an iommufd and map all guest memory into its
IOAS at IOVA = guest-physical address (``IOMMU_IOAS_MAP_FILE`` of the
guest_memfd), bind the device to it, route its MSI into vCPU 0's
posted-interrupt descriptor, turn bus mastering on, and start the guest's
driver for it.  The guest driver comes from the pack of the device: a plugin
offers ``kvm_guest_drivers()``, a map from a device's compatible to a
:class:`luo_kvm.GuestDriverSpec`; the driver keeps its state in guest memory.
``vmm-preserve`` puts the iommufd and the device file in the VM's session;
``vmm-resume`` retrieves them by token in the next kernel, where the device
was never stopped, and gives the guest its driver back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from luo_core import Machine
from luo_core.errors import InvalidArgumentError, NotFoundError
from luo_core.platform import HOST_BRIDGE, PCI_BRIDGE
from luo_vfio._vfio import vfio_of

if TYPE_CHECKING:
    from luo_kvm import GuestDriverSpec, Vm

    from luo_core import Kernel, Session

KIND: Final = "vfio"
FIRST_VECTOR: Final = 0x40
"""Device ``n`` of a VM gets vector ``0x40 + n`` unless its spec names one: every
device of a VM posts into vCPU 0's descriptor, so their vectors differ."""
SLOT: Final = 1 << 20
"""Guest memory for each device's driver, from luo-kvm's device area (at most this)."""
IOMMUFD_TOKEN: Final = 0x1000
"""Session tokens: the guest_memfds use their memslot numbers, the VM's iommufd (one IOAS
for all its devices, as QEMU shares one per VM) this one, and device ``n``'s file
``IOMMUFD_TOKEN + 1 + n``."""
GUEST_DRIVERS_ATTR: Final = "kvm_guest_drivers"


def guest_driver(kernel: Kernel, compatible: str) -> GuestDriverSpec:
    """The guest driver a pack of ``kernel`` offers for devices of ``compatible``."""
    from luo_kvm import GuestDriverSpec

    for plugin in kernel.registry.pm.get_plugins():
        offer = getattr(plugin, GUEST_DRIVERS_ATTR, None)
        if callable(offer):
            found = offer().get(compatible)
            if isinstance(found, GuestDriverSpec):
                if not 0 < found.footprint <= SLOT:
                    raise InvalidArgumentError(
                        f"the guest driver for {compatible} needs {found.footprint} bytes, "
                        f"more than the {SLOT} a device is given"
                    )
                return found
    raise NotFoundError(f"no pack offers a guest driver for {compatible!r} devices")


def _spec(spec: Mapping[str, Any], index: int) -> tuple[str, int]:
    device, vector = spec.get("device"), spec.get("vector", FIRST_VECTOR + index)
    if not isinstance(device, str):
        raise InvalidArgumentError(f"a vfio device spec names its device, not {device!r:.40}")
    if type(vector) is not int or not 0x20 <= vector <= 0xFF:
        raise InvalidArgumentError(f"{device}: vector must be in 0x20..0xff")
    return device, vector


def _slot(vm: Vm, device: str) -> tuple[int, int]:
    """The device's index among the VM's passthrough devices (the order the VMM gives
    them, in every kernel), and where its guest driver's memory starts."""
    from luo_kvm import DEVICE_AREA_GPA

    devices = vfio_of(vm.kvm.kernel).passed_through.setdefault(vm.name, {})
    index = list(devices).index(device) if device in devices else len(devices)
    return index, DEVICE_AREA_GPA + index * SLOT


def _driver(vm: Vm, device: str, regs: Any, base: int, vector: int, index: int) -> Any:
    kernel = vm.kvm.kernel
    spec = guest_driver(kernel, kernel.devices[device].compatible)
    return spec.make(device, regs, base, vector, index)


def attach(vm: Vm, spec: Mapping[str, Any], session: Session | None) -> object:
    from luo_iommu import iommu_of
    from luo_kvm import GuestContext

    index, base = _slot(vm, str(spec.get("device")))
    device, vector = _spec(spec, index)
    kernel = vm.kvm.kernel
    vfio, iommu = vfio_of(kernel), iommu_of(kernel)
    guest_driver(kernel, kernel.devices[device].compatible)  # refused before anything opens
    fd = vfio.open_device(device)
    shared = vfio.passed_through[vm.name]
    if shared:  # the VM's other devices opened its iommufd: one IOAS for them all
        iommufd = next(iter(shared.values()))[0]
        domain = iommu.iommufd(iommufd).domain
    else:
        iommufd = iommu.iommufd_open()
        domain = iommu.iommufd(iommufd).domain
        for gpa, phys, length in vm.memory_map():
            domain.map(gpa, phys, length)
    vfio.bind_iommufd(fd, iommufd)
    handle = vfio.set_irq_posted(fd, 0, vm.vcpus[0].pi_desc_phys, vector)
    vfio.enable_bus_master(fd)
    driver = _driver(vm, device, vfio.region(fd), base, vector, index)
    driver.setup(GuestContext(vm, vm.lock, 0), handle)
    vm.add_guest_device(driver)
    vfio.passed_through[vm.name][device] = (iommufd, fd)
    return {"device": device, "domain": domain.id, "irte": handle, "vector": vector}


def preserve(vm: Vm, spec: Mapping[str, Any], session: Session | None) -> object:
    if session is None:
        raise InvalidArgumentError("preserving a passthrough device needs the VM's session")
    index, _ = _slot(vm, str(spec.get("device")))
    device, _ = _spec(spec, index)
    found = vfio_of(vm.kvm.kernel).passed_through[vm.name].get(device)
    if found is None:
        raise NotFoundError(f"{device} is not passed through to {vm.name}")
    iommufd, fd = found
    if index == 0:
        session.preserve_fd(iommufd, IOMMUFD_TOKEN)
    session.preserve_fd(fd, IOMMUFD_TOKEN + 1 + index)
    return {"device": device}


def resume(vm: Vm, spec: Mapping[str, Any], session: Session | None) -> object:
    from luo_kvm import GuestContext

    if session is None:
        raise InvalidArgumentError("taking a passthrough device back needs the VM's session")
    index, base = _slot(vm, str(spec.get("device")))
    device, vector = _spec(spec, index)
    vfio = vfio_of(vm.kvm.kernel)
    shared = vfio.passed_through[vm.name]
    iommufd = next(iter(shared.values()))[0] if shared else session.retrieve_fd(IOMMUFD_TOKEN)
    fd = session.retrieve_fd(IOMMUFD_TOKEN + 1 + index)
    driver = _driver(vm, device, vfio.region(fd), base, vector, index)
    if not driver.attached(GuestContext(vm, vm.lock, 0)):
        raise NotFoundError(f"{device}: the guest's driver state is not in guest memory")
    vm.add_guest_device(driver)
    vfio.passed_through[vm.name][device] = (iommufd, fd)
    return {"device": device}


def passthrough_host(
    device: str, compatible: str, params: Mapping[str, int] | None = None
) -> Machine:
    """A small host to pass one PCI function to a VM: the remapping units, /dev/kvm, and
    ``device`` alone in its IOMMU group behind a bridge (a pack's VM tests start here)."""
    machine = Machine(memory_size=256 << 20, scratch_size=16 << 20)
    machine.add("dmar0", compatible="intel,vtd")
    machine.add("ir0", compatible="intel,vtd-ir")
    machine.add("kvm", compatible="luo,kvm")
    machine.add("pci0000:00", compatible=HOST_BRIDGE)
    machine.add_pci("0000:00:01.0", compatible=PCI_BRIDGE, parent="pci0000:00")
    machine.add_pci(device, compatible=compatible, parent="0000:00:01.0", params=params)
    return machine


def passthrough_vm(device: str, memory: int = 4 << 20) -> dict[str, Any]:
    """The VMM's ``vmm-start`` arguments for one single-vCPU VM given ``device``."""
    vm = {"name": "vm0", "memory": memory, "vcpus": 1}
    return {"vms": [{**vm, "devices": [{"kind": KIND, "device": device}]}]}
