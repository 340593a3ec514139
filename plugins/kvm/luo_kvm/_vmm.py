"""The VMM, as commands run in the kernel's userspace: start VMs, preserve them, resume them.

``vmm-start`` creates guest_memfds, VMs and vCPUs and starts them;
``vmm-preserve`` (before prepare) opens ``/dev/liveupdate``, creates a
session ``vm:<name>`` per VM and preserves each memslot's guest_memfd in it
(the memslot number is the token), and requests the kvm device;
``vmm-resume`` (after kexec) retrieves the sessions and files by token,
binds the memslots again, resumes the VMs that ran, then finishes and
closes the sessions; ``vmm-stats`` reads each VM's heartbeat and counters.
Passthrough devices (``{"kind": ..., ...}`` in a VM's ``devices``) go to
the handlers registered with :meth:`Kvm.register_passthrough`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from luo_core import Command, LiveUpdateDevice
from luo_core.errors import BusyError, InvalidArgumentError
from luo_kvm._guest import MAX_VCPUS
from luo_kvm._kvm import Kvm, kvm_of

if TYPE_CHECKING:
    from luo_core import Kernel


def session_name(vm: str) -> str:
    return f"vm:{vm}"


def _int(spec: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = spec.get(key, default)
    if type(value) is not int:
        raise InvalidArgumentError(f"vm spec: {key} must be an integer, not {value!r:.40}")
    return value


def _specs(args: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    vms = args.get("vms", [])
    if not isinstance(vms, list) or not all(isinstance(v, Mapping) for v in vms):
        raise InvalidArgumentError("vms must be a list of maps")
    return vms


def _check(spec: Mapping[str, Any]) -> None:
    """A VM spec's fields, by type and range, before anything is made of it."""
    name = spec.get("name")
    if not isinstance(name, str):
        raise InvalidArgumentError(f"vm spec: name must be text, not {name!r:.40}")
    if _int(spec, "memory") <= 0:
        raise InvalidArgumentError(f"vm {name}: memory must be positive")
    if not 1 <= _int(spec, "vcpus", 1) <= MAX_VCPUS:
        raise InvalidArgumentError(f"vm {name}: vcpus must be 1 to {MAX_VCPUS}")
    steps = spec.get("steps")
    if steps is not None and (type(steps) is not int or steps < 1):
        raise InvalidArgumentError(f"vm {name}: steps must be a positive integer")


def _devices(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    devices = spec.get("devices", [])
    if not isinstance(devices, list) or not all(isinstance(d, Mapping) for d in devices):
        raise InvalidArgumentError("a VM's devices must be a list of maps")
    return devices


class Vmm:
    """The VMM of one kernel: its descriptors (guest_memfds, /dev/liveupdate, sessions)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._fds: dict[str, dict[int, int]] = {}  # vm -> memslot -> guest_memfd
        self._devices: dict[str, list[Mapping[str, Any]]] = {}  # vm -> passthrough specs
        self._luo: LiveUpdateDevice | None = None

    @property
    def kvm(self) -> Kvm:
        return kvm_of(self.kernel)

    def _liveupdate(self) -> LiveUpdateDevice:
        if self._luo is None:
            self._luo = self.kernel.open_liveupdate()
        return self._luo

    def start(self, args: Mapping[str, Any]) -> object:
        kvm, started = self.kvm, []
        specs = _specs(args)
        for spec in specs:  # every spec checked before anything is made
            _check(spec)
            for device in _devices(spec):
                kvm.passthrough(str(device.get("kind")))
        made: list[str] = []
        try:
            for spec in specs:
                started.append(self._start(kvm, spec, made))
        except BaseException:
            for name in made:  # all or nothing: no VM of this command stays behind
                if any(vm.name == name for vm in kvm.vms()):
                    kvm.destroy_vm(name)
                for fd in self._fds.pop(name, {}).values():
                    kvm.guest_memfd_close(fd)
            raise
        return {"vms": started}

    def _start(self, kvm: Kvm, spec: Mapping[str, Any], made: list[str]) -> dict[str, Any]:
        name, memory = spec["name"], _int(spec, "memory")
        vcpus, steps = _int(spec, "vcpus", 1), spec.get("steps")
        fd = kvm.guest_memfd_create(memory)
        try:
            vm = kvm.create_vm(name)
        except BaseException:
            kvm.guest_memfd_close(fd)
            raise
        made.append(vm.name)
        vm.set_memslot(0, 0, fd, 0, memory)
        self._fds[vm.name] = {0: fd}
        for index in range(vcpus):
            vm.create_vcpu(index)
        specs = _devices(spec)
        self._devices[vm.name] = specs
        devices = [kvm.passthrough(str(d.get("kind"))).attach(vm, d, None) for d in specs]
        if steps is None:
            vm.start()
        else:
            vm.run(steps)
        return {
            "name": vm.name,
            "pi_desc": [v.pi_desc_phys for v in vm.vcpus],
            "memory": [list(run) for run in vm.memory_map()],
            "devices": devices,
        }

    def preserve(self, args: Mapping[str, Any]) -> object:
        kvm, luo, done = self.kvm, self._liveupdate(), []
        names = args.get("vms") or [vm.name for vm in kvm.vms()]
        for name in names:
            vm = kvm.vm(name)
            session = luo.create_session(session_name(vm.name))
            for slot, ms in sorted(vm.memslots.items()):
                if ms.gmem.fd is None:
                    raise BusyError(f"vm {vm.name}: memslot {slot} has no guest_memfd file yet")
                session.preserve_fd(ms.gmem.fd, slot)
            for spec in self._devices.get(vm.name, []):
                kvm.passthrough(str(spec.get("kind"))).preserve(vm, spec, session)
            done.append(session.name)
        for dev in self.kernel.devices.devices():
            if dev.driver_data is kvm and not dev.requested:
                self.kernel.devices.request(dev.name)
        return {"sessions": done}

    def resume(self, args: Mapping[str, Any]) -> object:
        kvm, luo, resumed = self.kvm, self._liveupdate(), []
        extra = {str(s.get("name")): s for s in _specs(args)}
        for vm in kvm.vms():
            waiting = [ms for ms in vm.memslots.values() if not ms.bound]
            if not waiting:
                continue
            session = luo.retrieve_session(session_name(vm.name))
            fds = self._fds.setdefault(vm.name, {})
            for ms in waiting:
                fds[ms.slot] = session.retrieve_fd(ms.slot)
                vm.set_memslot(ms.slot, ms.gpa, fds[ms.slot], ms.offset, ms.size)
            specs = _devices(extra.get(vm.name, {}))
            self._devices[vm.name] = specs
            devices = [kvm.passthrough(str(d.get("kind"))).resume(vm, d, session) for d in specs]
            at = vm.resume() if vm.resume_wanted else None
            session.finish()  # every file is back: the old kernel's hold on them can go
            session.close()
            resumed.append({"name": vm.name, "resumed_ns": at, "devices": devices})
        return {"vms": resumed}

    def stats(self, args: Mapping[str, Any]) -> object:
        return {"vms": [vm.stats() for vm in self.kvm.vms()]}

    def stop(self, args: Mapping[str, Any]) -> object:
        for vm in self.kvm.vms():
            if vm.running:
                vm.stop()
        return {"vms": [vm.name for vm in self.kvm.vms()]}

    def commands(self) -> Iterator[Command]:
        yield Command("vmm-start", self.start)
        yield Command("vmm-preserve", self.preserve)
        yield Command("vmm-resume", self.resume)
        yield Command("vmm-stats", self.stats)
        yield Command("vmm-stop", self.stop)
