"""/dev/kvm: the per-kernel KVM, driver of the ``luo,kvm`` platform device.

Its record is every VM, paused: names, memslots (with their guest_memfd's
pages), vCPU registers, the page of the vCPUs' posted-interrupt
descriptors.  ``prepare`` drafts the record while the VMs run; ``freeze``
preserves that memory in place (a few ``kho.preserve`` calls, no copy) and
stops the vCPU threads (each exits at the end of its step and its registers
are saved: no thread of a kernel outlives it); ``cancel`` lets the memory
go and restarts them.  Between prepare and freeze the VMM may still change
its VMs: freeze hands over what is there then.  In the next kernel
``restore`` checks the record as hostile input and rebuilds the VMs,
paused, on the same pages; the VMM binds the guest_memfds it retrieved and
resumes them (:mod:`luo_kvm._vmm`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

from luo_core import Device, DeviceDriverOps
from luo_core.abi import MemRange
from luo_core.abi._kho import find_containing
from luo_core.errors import (
    BusyError,
    ExistsError,
    HandoffError,
    InvalidArgumentError,
    NotFoundError,
)
from luo_kvm._gmem import Gmem, check_pages
from luo_kvm._guest import MAX_VCPUS
from luo_kvm._records import GPRS, GmemRecord, KvmRecord, VmRecord
from luo_kvm._vm import Memslot, Registers, Vcpu, Vm

if TYPE_CHECKING:
    from luo_core import Kernel

COMPATIBLE: Final = "luo,kvm"
DRIVER: Final = "kvm"
_VM_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,58}$")

Passthrough = Callable[[Vm, Mapping[str, Any], Any], object]
"""``(vm, spec, session)``: attach a passthrough device described by ``spec`` to ``vm``
(``vmm-start``, no session), preserve its files in the VM's session (``vmm-preserve``), or
take it back from the session after a live update (``vmm-resume``); returns plain data
for the command's result."""

PASSTHROUGH_ATTR: Final = "kvm_passthrough"
"""A plugin of the kernel with a method of this name (returning ``{kind: PassthroughOps}``)
offers passthrough devices to the VMM, as luo-vfio does."""


@attrs.frozen
class PassthroughOps:
    """What the VMM calls for a device spec ``{"kind": kind, ...}`` of a VM."""

    attach: Passthrough
    preserve: Passthrough
    resume: Passthrough


class Kvm(DeviceDriverOps):
    """The KVM of one kernel (``kvm_of(kernel)``): guest_memfds, VMs, and their record."""

    def __init__(self, kernel: Kernel | None) -> None:
        self._kernel = kernel
        self._gmems: list[Gmem] = []
        self._vms: dict[str, Vm] = {}
        self._phase = "normal"
        self._held: list[Gmem] = []
        self._held_pi: list[int] = []
        self._was_running: list[Vm] = []
        self._passthrough: dict[str, PassthroughOps] = {}

    @property
    def kernel(self) -> Kernel:
        if self._kernel is None:
            raise NotFoundError("this kvm was built for a listing, not for a kernel")
        return self._kernel

    @property
    def memory(self) -> Any:
        return self.kernel.memory

    @property
    def page(self) -> int:
        page: int = self.kernel.memory.PAGE_SIZE
        return page

    def changing(self, what: str) -> None:
        if self._phase != "normal":
            raise BusyError(f"{what}: refused, the VMs are {self._phase} for a live update")

    # -- guest_memfd ------------------------------------------------------------------

    def guest_memfd_create(self, size: int) -> int:
        """``KVM_CREATE_GUEST_MEMFD``: ``size`` bytes (page aligned) of zeroed physical pages
        from the kernel's allocator, behind a new file; the caller's descriptor."""
        self.changing("guest_memfd_create")
        if type(size) is not int or size <= 0 or size % self.page:
            raise InvalidArgumentError(
                f"guest_memfd size {size!r} is not a positive page multiple"
            )
        mm = self.kernel.mm
        phys = mm.alloc(size)
        self.memory.fill(phys, size)
        gmem = Gmem(size, [(phys, size)], inherited=False)
        self._gmems.append(gmem)
        return gmem.attach_file()

    def find_gmem(self, fd: int) -> Gmem | None:
        return next((g for g in self._gmems if g.is_file(fd)), None)

    def gmem_of(self, fd: int) -> Gmem:
        gmem = self.find_gmem(fd)
        if gmem is None:
            raise InvalidArgumentError(f"descriptor {fd} is not a guest_memfd of this kernel")
        return gmem

    def guest_memfd_close(self, fd: int) -> None:
        """The last descriptor of a guest_memfd closed: its pages go when no memslot uses them."""
        self.gmem_of(fd).close_file()
        self.release_unused()

    def adopt(self, record: GmemRecord, what: str) -> Gmem:
        """The guest_memfd over pages the previous kernel preserved (one object per pages)."""
        preserved = self._preserved_in(what)
        pages = check_pages(record.size, record.pages, preserved, self.page, what)
        for gmem in self._gmems:
            if gmem.key == pages[0][0]:
                if (gmem.size, gmem.pages) != (record.size, pages):
                    raise HandoffError(
                        f"{what}: pages at {gmem.key:#x} were handed over twice, differently"
                    )
                return gmem
            if _overlap(gmem.pages, pages):
                raise HandoffError(f"{what}: its pages overlap another guest_memfd's")
        gmem = Gmem(record.size, pages, inherited=True)
        self._gmems.append(gmem)
        return gmem

    def gmem_by_key(self, key: int) -> Gmem:
        for gmem in self._gmems:
            if gmem.key == key:
                return gmem
        raise NotFoundError(f"no guest_memfd on pages at {key:#x}")

    def release_unused(self) -> None:
        """Give back the pages of guest_memfds no file, memslot or handover holds."""
        used = {id(ms.gmem) for vm in self._vms.values() for ms in vm.memslots.values()}
        for gmem in list(self._gmems):
            if gmem.fd is None and not gmem.held and id(gmem) not in used:
                self._gmems.remove(gmem)
                for start, length in gmem.pages:
                    if gmem.inherited:
                        self.kernel.mm.release(start, length)
                if not gmem.inherited:
                    self.kernel.mm.free(gmem.pages[0][0])

    def _preserved_in(self, what: str) -> tuple[MemRange, ...]:
        incoming = self.kernel.luo.incoming_memory
        if incoming is None:
            raise HandoffError(f"{what}: nothing was handed over to this kernel")
        return incoming.preserved

    # -- VMs --------------------------------------------------------------------------

    def create_vm(self, name: str) -> Vm:
        """``KVM_CREATE_VM``, named (``EEXIST`` for a name in use)."""
        self.changing(f"create vm {name!r}")
        if not isinstance(name, str) or not _VM_NAME.fullmatch(name):
            raise InvalidArgumentError(f"vm name {name!r} is not 1-59 chars of [a-z0-9._-]")
        if name in self._vms:
            raise ExistsError(f"vm {name!r} exists")
        pi_page = self.kernel.mm.alloc(self.page)
        self.memory.fill(pi_page, self.page)
        vm = self._vms[name] = Vm(self, name, pi_page, inherited_pi=False)
        return vm

    def vm(self, name: str) -> Vm:
        found = self._vms.get(name)
        if found is None:
            raise NotFoundError(f"no vm {name!r} (known: {', '.join(self._vms) or 'none'})")
        return found

    def vms(self) -> list[Vm]:
        return list(self._vms.values())

    def destroy_vm(self, name: str) -> None:
        """Stop the VM and let go of it: its descriptors page, and guest memory no one uses."""
        self.changing(f"destroy vm {name!r}")
        vm = self.vm(name)
        vm.stop()
        del self._vms[name]
        if vm.inherited_pi:
            self.kernel.mm.release(vm.pi_page, self.page)
        else:
            self.kernel.mm.free(vm.pi_page)
        self.release_unused()

    def register_passthrough(self, kind: str, ops: PassthroughOps) -> None:
        """Let the VMM attach devices of ``kind`` to its VMs (``vmm-start``) and take them
        back after an update (``vmm-resume``): the extension point for VFIO."""
        if kind in self._passthrough:
            raise ExistsError(f"passthrough kind {kind!r} is registered")
        self._passthrough[kind] = ops

    def passthrough(self, kind: str) -> PassthroughOps:
        """The ops for devices of ``kind``: registered, or offered by a plugin of this
        kernel (:data:`PASSTHROUGH_ATTR`)."""
        if kind not in self._passthrough and self._kernel is not None:
            for plugin in self._kernel.registry.pm.get_plugins():
                offer = getattr(plugin, PASSTHROUGH_ATTR, None)
                if callable(offer):
                    for name, ops in offer().items():
                        if isinstance(ops, PassthroughOps):
                            self._passthrough.setdefault(name, ops)
        found = self._passthrough.get(kind)
        if found is None:
            known = ", ".join(sorted(self._passthrough)) or "none"
            raise NotFoundError(f"no passthrough for devices of kind {kind!r} (known: {known})")
        return found

    # -- the kvm device's live update ---------------------------------------------------

    def probe(self, dev: Device) -> None:
        dev.driver_data = self

    def shutdown(self, dev: Device) -> None:
        for vm in self._vms.values():
            vm.stop()

    def prepare(self, dev: Device) -> KvmRecord:
        # The VMs run on: the record is only a draft, freeze writes the final one.
        return KvmRecord([vm.record() for vm in self._vms.values()])

    def freeze(self, dev: Device, data: KvmRecord) -> KvmRecord:
        kho = self.kernel.kho
        try:
            for vm in self._vms.values():
                kho.preserve(vm.pi_page, self.page)
                self._held_pi.append(vm.pi_page)
                for ms in vm.memslots.values():
                    if ms.gmem not in self._held:
                        ms.gmem.hold(kho)
                        self._held.append(ms.gmem)
        except BaseException:
            self._let_go()
            raise
        self._phase = "frozen"
        self._was_running = [vm for vm in self._vms.values() if vm.running]
        for vm in self._was_running:
            vm.stop()
        return KvmRecord([vm.record(running=vm in self._was_running) for vm in self._vms.values()])

    def cancel(self, dev: Device, data: KvmRecord) -> None:
        self._let_go()
        self._phase = "normal"
        running, self._was_running = self._was_running, []
        for vm in running:
            vm.start()

    def _let_go(self) -> None:
        kho = self.kernel.kho
        for phys in self._held_pi:
            kho.unpreserve(phys, self.page)
        for gmem in self._held:
            gmem.let_go(kho)
        self._held, self._held_pi = [], []

    def restore(self, dev: Device, data: KvmRecord) -> None:
        checked = [self._check_vm(vm, n) for n, vm in enumerate(data.vms)]
        _check_disjoint(data.vms, self.page)
        if len({vm.name for vm in data.vms}) != len(data.vms):
            raise HandoffError("kvm: two VMs of the record share a name")
        try:
            self._rebuild(data, checked)
        except BaseException:
            self._vms.clear()  # nothing half restored: the device stays unbound
            self._gmems.clear()
            raise
        dev.driver_data = self

    def _rebuild(self, data: KvmRecord, checked: list[dict[int, GmemRecord]]) -> None:
        for record, slots in zip(data.vms, checked, strict=True):
            vm = Vm(self, record.name, record.pi_page, inherited_pi=True)
            for ms in record.memslots:
                gmem = self.adopt(slots[ms.slot], f"kvm: vm {record.name} memslot {ms.slot}")
                vm.memslots[ms.slot] = Memslot(
                    ms.slot, ms.gpa, ms.size, ms.offset, gmem, bound=False
                )
            for v in record.vcpus:
                regs = Registers(v.rip, v.rsp, v.rflags, list(v.gprs), v.tsc_offset, v.step)
                vm.vcpus.append(Vcpu(vm, v.index, regs))
            vm.resume_wanted = record.running
            self._vms[record.name] = vm

    def _check_vm(self, vm: VmRecord, n: int) -> dict[int, GmemRecord]:
        """One VM of the record, checked as hostile input; its memslots' guest_memfds."""
        what = f"kvm: vm {n} ({vm.name!r:.70})"
        if not _VM_NAME.fullmatch(vm.name):
            raise HandoffError(f"{what}: not a VM name")
        preserved = self._preserved_in(what)
        page = self.page
        if vm.pi_page % page or find_containing(preserved, MemRange(vm.pi_page, page)) is None:
            raise HandoffError(
                f"{what}: its posted-interrupt page {vm.pi_page:#x} is outside preserved memory"
            )
        indexes = [v.index for v in vm.vcpus]
        if len(set(indexes)) != len(indexes) or any(i >= MAX_VCPUS for i in indexes):
            raise HandoffError(f"{what}: vcpu indexes {indexes} repeat or exceed {MAX_VCPUS - 1}")
        if any(len(v.gprs) != GPRS for v in vm.vcpus):
            raise HandoffError(f"{what}: a vcpu does not have {GPRS} general registers")
        gmems: dict[int, GmemRecord] = {}
        spans: list[tuple[int, int]] = []
        for ms in vm.memslots:
            where = f"{what} memslot {ms.slot}"
            if ms.slot in gmems:
                raise HandoffError(f"{where}: repeated")
            if ms.size <= 0 or (ms.gpa | ms.size | ms.offset) % page:
                raise HandoffError(f"{where}: not page aligned")
            if ms.offset + ms.size > ms.gmem_size:
                raise HandoffError(
                    f"{where}: {ms.offset:#x}+{ms.size:#x} is outside its guest_memfd of "
                    f"{ms.gmem_size:#x} bytes"
                )
            check_pages(ms.gmem_size, ms.pages, preserved, page, where)
            if any(ms.gpa < end and start < ms.gpa + ms.size for start, end in spans):
                raise HandoffError(f"{where}: its GPAs overlap another memslot's")
            spans.append((ms.gpa, ms.gpa + ms.size))
            gmems[ms.slot] = GmemRecord(ms.gmem_size, list(ms.pages))
        return gmems

    def finish(self, dev: Device, data: KvmRecord | None) -> None:
        self.release_unused()


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> bool:
    return any(s < t + m and t < s + n for s, n in a for t, m in b)


def _check_disjoint(vms: list[VmRecord], page: int) -> None:
    """No two VMs share a descriptors page, and no descriptors page is guest memory."""
    pi = [vm.pi_page for vm in vms]
    if len(set(pi)) != len(pi):
        raise HandoffError("kvm: two VMs of the record share a posted-interrupt page")
    memory = [(p.start, p.size) for vm in vms for ms in vm.memslots for p in ms.pages]
    if _overlap([(p, page) for p in pi], memory):
        raise HandoffError("kvm: a posted-interrupt page is also guest memory")


def kvm_of(kernel: Kernel) -> Kvm:
    """The KVM of ``kernel``: the ops bound to its ``luo,kvm`` device (``/dev/kvm``)."""
    for dev in kernel.devices.devices():
        if isinstance(dev.driver_data, Kvm):
            return dev.driver_data
    raise NotFoundError(
        f"no /dev/kvm in this kernel: no {COMPATIBLE} device is bound to the {DRIVER} driver "
        f"(a machine holds one: machine.add('kvm', compatible='{COMPATIBLE}'))"
    )
