"""What crosses a kexec for KVM: the /dev/kvm record (VMs, memslots, vCPU registers) and a
guest_memfd's record, both versioned.

``KvmRecord`` is the kvm device's record.  Its nested classes have no
version of their own (luo writes them as maps inside the record), so any
change to a VM's, a memslot's or a vCPU's layout bumps ``KvmRecord``:

=======  ==============================================================  ===========
version  vCPU registers                                                  written by
=======  ==============================================================  ===========
v1       ``rip``, ``rsp``, ``rflags``, ``gprs`` (16); the guest          0.0
         program kept its step count in ``rax`` (``gprs[0]``)
v2       v1 + ``tsc_offset``, + ``step`` (the guest program's own        0.1.0
         register; ``rax`` is the last heartbeat it wrote)
=======  ==============================================================  ===========

``GmemRecord`` is what the ``guest-memfd-v1`` file handler hands over: the
file's size and the physical pages behind it, preserved in place.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from luo_core import PhysAddr, PhysRange, schema_of, state, u16, u64
from luo_core.errors import DeviceError

GPRS: Final = 16
"""rax, rbx, rcx, rdx, rsi, rdi, rbp, r8..r15 (rsp is its own field, as in ``kvm_regs``)."""


@attrs.frozen
class VcpuRecord:
    """One vCPU's registers at the pause point (``struct kvm_regs``, trimmed)."""

    index: u16
    rip: u64
    rsp: u64
    rflags: u64
    gprs: list[u64]
    tsc_offset: u64 = 0
    step: u64 = 0


@attrs.frozen
class MemslotRecord:
    """A memslot (``KVM_SET_USER_MEMORY_REGION2`` with a guest_memfd) and the file's pages."""

    slot: u16
    gpa: u64
    size: u64
    offset: u64
    gmem_size: u64
    pages: list[PhysRange]


@attrs.frozen
class VmRecord:
    """One VM: its memslots, its vCPUs, the page of their posted-interrupt descriptors."""

    name: str
    pi_page: PhysAddr
    memslots: list[MemslotRecord]
    vcpus: list[VcpuRecord]
    running: bool


@state(compatible="luo,kvm-state", version=2, min_version=1)
class KvmRecord:
    """The kvm device's record: every VM, paused."""

    vms: list[VmRecord] = attrs.field(factory=list)


@schema_of(KvmRecord).migration(from_version=1)
def _v1_to_v2(fields: dict[str, Any]) -> dict[str, Any]:
    vms = []
    for vm in fields["vms"]:
        vcpus = []
        for vcpu in vm.get("vcpus", []) if isinstance(vm, dict) else []:
            if isinstance(vcpu, dict):
                gprs = vcpu.get("gprs")
                step = gprs[0] if isinstance(gprs, list) and gprs else 0
                # A v1 guest program counted its steps in rax; its clock had no offset.
                vcpu = {**vcpu, "tsc_offset": 0, "step": step}
            vcpus.append(vcpu)
        vms.append({**vm, "vcpus": vcpus} if isinstance(vm, dict) else vm)
    return {**fields, "vms": vms}


@schema_of(KvmRecord).writes(version=1)
def _v2_as_v1(record: KvmRecord) -> dict[str, Any]:
    vms = []
    for vm in record.vms:
        vcpus = []
        for vcpu in vm.vcpus:
            if vcpu.tsc_offset:
                raise DeviceError(
                    f"vm {vm.name} vcpu {vcpu.index}: a v1 kernel cannot run a TSC offset "
                    f"({vcpu.tsc_offset:#x})"
                )
            vcpus.append(
                {
                    "index": vcpu.index,
                    "rip": vcpu.rip,
                    "rsp": vcpu.rsp,
                    "rflags": vcpu.rflags,
                    "gprs": [vcpu.step, *vcpu.gprs[1:]],
                }
            )
        vms.append(
            {
                "name": vm.name,
                "pi_page": vm.pi_page,
                "memslots": [attrs.asdict(slot) for slot in vm.memslots],
                "vcpus": vcpus,
                "running": vm.running,
            }
        )
    return {"vms": vms}


@state(compatible="luo,guest-memfd-state", version=1)
class GmemRecord:
    """A guest_memfd handed over in place: its size and its pages (nothing copied)."""

    size: u64
    pages: list[PhysRange]
