"""KVM in one process: guest memory by GPA, the guest program, pause at freeze, hostile records."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import attrs
import luo_kvm
import pytest
from luo_kvm import DEVICE_AREA_GPA, GuestContext, Kvm, KvmRecord, Vm, kvm_host, kvm_of

from luo_core import Kernel, PhysRange
from luo_core.errors import (
    BusyError,
    ExistsError,
    HandoffError,
    InvalidArgumentError,
    LiveUpdateError,
)
from luo_core.platform import Hardware

MIB = 1 << 20
WAIT_S = 10.0  # a bound on a wait for the guest, never a pace


class Recorder:
    """A guest device that counts what it sees and wakes the test after ``polls`` polls."""

    def __init__(self, polls: int = 3) -> None:
        self.name = "recorder"
        self.vectors: list[int] = []
        self.polls = 0
        self.target = polls
        self.polled = threading.Event()
        self.interrupted = threading.Event()

    def interrupt(self, vector: int, guest: GuestContext) -> None:
        self.vectors.append(vector)
        guest.packet(len(self.vectors))
        self.interrupted.set()

    def poll(self, guest: GuestContext) -> None:
        self.polls += 1
        if self.polls >= self.target:
            self.polled.set()


@pytest.fixture
def hw() -> Hardware:
    return Hardware(kvm_host())


@pytest.fixture
def kernel(hw: Hardware) -> Iterator[Kernel]:
    kernel = Kernel.boot(hw, plugins=[luo_kvm], discover=False)
    yield kernel
    if not kernel.__dict__.get("_gone"):
        for vm in kvm_of(kernel).vms():
            vm.stop()


def a_vm(kvm: Kvm, name: str = "a", memory: int = MIB, vcpus: int = 1) -> Vm:
    fd = kvm.guest_memfd_create(memory)
    vm = kvm.create_vm(name)
    vm.set_memslot(0, 0, fd, 0, memory)
    for index in range(vcpus):
        vm.create_vcpu(index)
    return vm


def vcpu_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("vcpu-")]


def test_guest_memory_by_gpa_lands_in_the_guest_memfd_pages(kernel: Kernel) -> None:
    kvm = kvm_of(kernel)
    fd = kvm.guest_memfd_create(4 * MIB)
    gmem = kvm.gmem_of(fd)
    vm = kvm.create_vm("a")
    vm.set_memslot(0, 0, fd, 0, MIB)
    vm.set_memslot(1, 0x1000_0000, fd, 2 * MIB, MIB)
    vm.write(0x1000_0000 + 0x123, b"second slot")
    vm.write(MIB - 4, b"edge")
    base = gmem.phys(0)
    assert kernel.memory.read(base + 2 * MIB + 0x123, 11) == b"second slot"
    assert kernel.memory.read(base + MIB - 4, 4) == b"edge"
    assert vm.gpa_to_phys(0x1000_0000) == base + 2 * MIB
    assert vm.memory_map() == [(0, base, MIB), (0x1000_0000, base + 2 * MIB, MIB)]
    with pytest.raises(Exception, match="GPA 0x100000 is in no memslot"):
        vm.read(MIB - 4, 8)


def test_memslots_are_refused_as_kvm_gmem_bind_refuses_them(kernel: Kernel) -> None:
    """virt/kvm/guest_memfd.c kvm_gmem_bind: offset + size beyond the file, or a range of
    the file bound twice, is EINVAL; virt/kvm/kvm_main.c __kvm_set_memory_region: GPAs of
    another slot are EEXIST."""
    kvm = kvm_of(kernel)
    fd = kvm.guest_memfd_create(MIB)
    vm = kvm.create_vm("a")
    with pytest.raises(InvalidArgumentError, match="outside its guest_memfd"):
        vm.set_memslot(0, 0, fd, 0x80000, MIB)
    vm.set_memslot(0, 0, fd, 0, 0x80000)
    with pytest.raises(ExistsError, match="overlap memslot 0"):
        vm.set_memslot(1, 0x1000, fd, 0x80000, 0x1000)
    with pytest.raises(InvalidArgumentError, match="already bound"):
        vm.set_memslot(1, MIB, fd, 0x1000, 0x1000)
    with pytest.raises(InvalidArgumentError, match="not a guest_memfd"):
        vm.set_memslot(1, MIB, 0, 0, 0x1000)


def test_the_guest_program_beats_and_pauses_at_a_step(kernel: Kernel) -> None:
    vm = a_vm(kvm_of(kernel), vcpus=2)
    recorder = Recorder(polls=5)
    vm.add_guest_device(recorder)
    vm.start()
    assert recorder.polled.wait(WAIT_S)
    vm.stop()
    beats = [vm.heartbeat(v.index) for v in vm.vcpus]
    assert sum(b.sequence for b in beats) >= 5  # each poll is one step of one vCPU
    assert [b.sequence for b in beats] == [v.regs.step for v in vm.vcpus]
    assert [v.regs.gprs[0] for v in vm.vcpus] == [b.sequence for b in beats]
    assert not vcpu_threads()
    before = vm.heartbeat(0).sequence
    vm.run(4)  # a pause point: exactly four more steps
    assert vm.heartbeat(0).sequence == before + 4 and not vm.running


def test_vcpu_threads_stop_at_freeze_restart_at_cancel_and_none_outlives_kexec(
    kernel: Kernel,
) -> None:
    vm = a_vm(kvm_of(kernel))
    vm.start()
    kernel.devices.request("kvm")
    kernel.prepare()
    assert vcpu_threads() == ["vcpu-a-0"]  # VMs run on after prepare
    kernel.freeze()
    assert vcpu_threads() == []
    with pytest.raises(BusyError, match="frozen for a live update"):
        kvm_of(kernel).create_vm("b")
    kernel.cancel()
    assert vcpu_threads() == ["vcpu-a-0"] and vm.running
    kernel.prepare()
    new = kernel.kexec()
    assert new.stats is not None and new.stats.threads_left == []
    assert vcpu_threads() == []
    restored = kvm_of(new).vm("a")
    assert not restored.running and restored.resume_wanted
    with pytest.raises(BusyError, match="wait for their guest_memfd"):
        restored.start()


def test_a_vector_posted_in_the_blackout_is_handled_after_resume(
    hw: Hardware, kernel: Kernel
) -> None:
    kvm = kvm_of(kernel)
    vm = a_vm(kvm)
    vm.write(DEVICE_AREA_GPA, b"before the update")
    vm.start()
    kernel.command("vmm-preserve")
    pda = vm.vcpus[0].pi_desc_phys
    kernel.prepare()

    def blackout() -> None:  # no kernel exists: the hardware's poster sets the PIR bit
        assert hw.interrupts.poster.post(pda, 0x41)

    new = kernel.kexec(during_blackout=blackout)
    restored = kvm_of(new).vm("a")
    recorder = Recorder()
    restored.add_guest_device(recorder)
    seq = restored.heartbeat(0).sequence
    new.command("vmm-resume")
    assert recorder.interrupted.wait(WAIT_S)
    restored.stop()
    assert recorder.vectors == [0x41]
    assert restored.heartbeat(0).sequence > seq  # continued, not reset
    assert restored.read(DEVICE_AREA_GPA, 17) == b"before the update"
    counters = restored.counters()
    assert (counters.interrupts_delivered, counters.packets_received) == (1, 1)
    new.finish()


def _handed_over(kernel: Kernel) -> tuple[Kernel, KvmRecord]:
    a_vm(kvm_of(kernel)).run(2)
    kernel.devices.request("kvm")
    kernel.prepare()
    new = kernel.kexec()
    record = new.handed_over("device", "kvm")
    assert isinstance(record, KvmRecord)
    return new, record


def _with_slot(record: KvmRecord, **changes: Any) -> KvmRecord:
    vm = record.vms[0]
    slot = attrs.evolve(vm.memslots[0], **changes)
    return KvmRecord([attrs.evolve(vm, memslots=[slot])])


def test_hostile_records_are_refused_whole(kernel: Kernel) -> None:
    new, record = _handed_over(kernel)
    fresh = Kvm(new)
    dev = new.devices["kvm"]
    page = PhysRange(record.vms[0].memslots[0].pages[0].start, 0x1000)
    scratch = PhysRange(0, record.vms[0].memslots[0].size)
    bad = {
        "outside its guest_memfd": _with_slot(record, offset=0x1000),
        "outside preserved memory": _with_slot(record, pages=[scratch]),
        "do not add up": _with_slot(record, pages=[page]),
        "not page aligned": _with_slot(record, gpa=0x10),
    }
    for message, hostile in bad.items():
        with pytest.raises(HandoffError, match=message):
            fresh.restore(dev, hostile)
        assert fresh.vms() == []  # nothing half restored
    twice = KvmRecord([record.vms[0], record.vms[0]])
    with pytest.raises(HandoffError):
        fresh.restore(dev, twice)
    pi = KvmRecord([attrs.evolve(record.vms[0], pi_page=0x1000)])
    with pytest.raises(HandoffError, match="posted-interrupt page 0x1000 is outside preserved"):
        fresh.restore(dev, pi)
    fresh.restore(dev, record)
    assert [vm.name for vm in fresh.vms()] == ["a"]


@pytest.mark.parametrize(
    ("vms", "match"),
    [
        ("nope", "vms must be a list of maps"),
        ([{"name": 5, "memory": 1 << 20}], "name must be text"),
        ([{"name": "a", "memory": -4096}], "memory must be positive"),
        ([{"name": "a", "memory": 1 << 20, "vcpus": 0}], "vcpus must be 1 to"),
        ([{"name": "a", "memory": 1 << 20, "steps": "3"}], "steps must be a positive"),
        ([{"name": "a", "memory": 1 << 20, "devices": [{"kind": "nope"}]}], "no passthrough"),
        ([{"name": "a", "memory": 1 << 20}, {"name": "Bad Name", "memory": 1 << 20}], "name"),
        ([{"name": "a", "memory": 4097}], "page multiple"),
    ],
)
def test_a_bad_vm_spec_is_one_typed_error_and_leaves_nothing_made(
    kernel: Kernel, vms: object, match: str
) -> None:
    kvm = kvm_of(kernel)
    free = kernel.mm.free_bytes
    with pytest.raises(LiveUpdateError, match=match):
        kernel.command("vmm-start", {"vms": vms})
    assert kvm.vms() == [] and kernel.mm.free_bytes == free


def test_a_second_start_of_a_running_vm_is_refused_and_the_vm_runs_on(kernel: Kernel) -> None:
    kernel.command("vmm-start", {"vms": [{"name": "a", "memory": 1 << 20}]})
    with pytest.raises(ExistsError):
        kernel.command("vmm-start", {"vms": [{"name": "a", "memory": 1 << 20}]})
    assert [vm.name for vm in kvm_of(kernel).vms()] == ["a"]
    assert kvm_of(kernel).vm("a").running
