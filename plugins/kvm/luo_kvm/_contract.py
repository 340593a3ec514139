"""The kvm pack's contract: what ``luo contract luo-kvm`` exercises.

The workload creates a VM with guest memory and two vCPUs, writes into its
memory and runs the guest program to a pause point (three steps); the
snapshot is what must be unchanged across an update: every VM's layout, its
vCPUs' registers at that pause point and a checksum of its guest memory
(heartbeats included: a paused guest writes nothing).  A running guest's
registers and heartbeat are not deterministic, so the contract compares
paused guests; ``tests/test_kvm_cross_process.py`` follows a running one.
"""

from __future__ import annotations

import os
import zlib
from importlib import resources
from typing import Any

from luo_core import Device, Machine
from luo_core.testing import Contract
from luo_kvm._guest import DEVICE_AREA_GPA
from luo_kvm._kvm import COMPATIBLE, DRIVER, Kvm

GUEST_MEMORY = 64 << 10
PAUSE_STEPS = 3


def kvm_host(memory: int = 256 << 20) -> Machine:
    """A host with ``/dev/kvm``: the ``kvm`` platform device (``luo,kvm``, no registers)."""
    machine = Machine(memory_size=memory)
    machine.add("kvm", compatible=COMPATIBLE)
    return machine


def _kvm(dev: Device) -> Kvm:
    kvm = dev.driver_data
    if not isinstance(kvm, Kvm):
        raise TypeError(f"{dev.name} is not bound to the {DRIVER} driver")
    return kvm


def run_a_vm(dev: Device) -> None:
    """Create a VM with memory, write into it and run it to a pause point."""
    kvm = _kvm(dev)
    name = f"guest{len(kvm.vms())}"
    fd = kvm.guest_memfd_create(GUEST_MEMORY)
    try:
        vm = kvm.create_vm(name)
        vm.set_memslot(0, 0, fd, 0, GUEST_MEMORY)
    finally:
        os.close(fd)  # the pack keeps the file
    for index in range(2):
        vm.create_vcpu(index)
    vm.write(DEVICE_AREA_GPA, name.encode() * 100)
    vm.run(PAUSE_STEPS)


def snapshot(dev: Device) -> Any:
    """Layout, registers at the pause point, guest memory's checksum, per VM."""
    out = []
    for vm in _kvm(dev).vms():
        slots = sorted(vm.memslots.values(), key=lambda ms: ms.slot)
        crc = 0
        for ms in slots:
            crc = zlib.crc32(vm.read(ms.gpa, ms.size), crc)
        out.append(
            {
                "name": vm.name,
                "running": vm.running,
                "memslots": [[ms.slot, ms.gpa, ms.size, ms.offset] for ms in slots],
                "pi_desc": [v.pi_desc_phys for v in vm.vcpus],
                "registers": [v.regs.record(v.index) for v in vm.vcpus],
                "memory_crc32": crc,
            }
        )
    return out


def golden() -> dict[int, bytes]:
    """Records each version of this pack wrote (regenerate: see README)."""
    folder = resources.files(__package__).joinpath("golden")
    return {v: folder.joinpath(f"kvm-state-v{v}.luor").read_bytes() for v in (1, 2)}


def contracts() -> list[Contract]:
    return [
        Contract(
            name=DRIVER,
            machine=kvm_host,
            devices=["kvm"],
            workload=run_a_vm,
            snapshot=snapshot,
            capabilities={"golden-records"},
            golden=golden(),
        )
    ]
