"""A VM: memslots over guest_memfds, vCPU threads running the guest program, guest devices.

Each vCPU is a thread of the kernel's process.  It runs the guest program, a
loop paced by the guest's own timer (about 1 ms: a wait on an Event with a
timeout): write the heartbeat into guest memory and keep the largest gap
between two heartbeats there, drain the vCPU's posted-interrupt descriptor
(``struct pi_desc``, in preserved memory) and hand each vector to the guest
devices, then poll them.  The program's state is its registers (saved when
the thread exits) and guest memory; nothing else survives the kernel.
"""

from __future__ import annotations

import errno
import threading
import time
from typing import TYPE_CHECKING, Any, Final

import attrs

from luo_core import PhysRange
from luo_core._logging import get_logger
from luo_core.abi._posted import PI_DESC_SIZE, drain
from luo_core.errors import BusyError, ExistsError, InvalidArgumentError, LiveUpdateError
from luo_core.platform._atomic import AtomicWords
from luo_kvm._gmem import Gmem
from luo_kvm._guest import (
    GUEST_DATA_SIZE,
    MAX_VCPUS,
    GuestContext,
    GuestCounters,
    GuestDevice,
    Heartbeat,
    beat,
    heartbeat_gpa,
    read_counters,
    read_heartbeat,
    read_stalls,
)
from luo_kvm._records import GPRS, MemslotRecord, VcpuRecord, VmRecord

if TYPE_CHECKING:
    from luo_kvm._kvm import Kvm

log = get_logger("luo")

PERIOD_S: Final = 0.001
"""The guest's timer: one step of the guest program per millisecond."""
GUEST_ENTRY: Final = 0x8000
"""Where the guest program's loop is (``rip`` labels: no instruction is fetched)."""
AT_HEARTBEAT, AT_DRAIN, AT_POLL, AT_IDLE = (GUEST_ENTRY + 0x10 * i for i in range(4))
STACK_TOP: Final = 0x7000
RFLAGS: Final = 0x202  # IF, and bit 1 which is always set
RAX, RBX = 0, 1


@attrs.define
class Registers:
    """A vCPU's register file (``struct kvm_regs``, trimmed), live in this kernel."""

    rip: int = GUEST_ENTRY
    rsp: int = STACK_TOP
    rflags: int = RFLAGS
    gprs: list[int] = attrs.field(factory=lambda: [0] * GPRS)
    tsc_offset: int = 0
    step: int = 0

    def record(self, index: int) -> VcpuRecord:
        return VcpuRecord(
            index, self.rip, self.rsp, self.rflags, list(self.gprs), self.tsc_offset, self.step
        )


@attrs.define
class Memslot:
    """``struct kvm_memory_slot`` bound to a guest_memfd; ``bound``: a file of this kernel
    backs it (a restored slot waits for the VMM to bind the retrieved file again)."""

    slot: int
    gpa: int
    size: int
    offset: int
    gmem: Gmem
    bound: bool = True

    def record(self) -> MemslotRecord:
        return MemslotRecord(
            self.slot,
            self.gpa,
            self.size,
            self.offset,
            self.gmem.size,
            [PhysRange(s, n) for s, n in self.gmem.pages],
        )


class Vcpu:
    """One vCPU: its registers, its posted-interrupt descriptor, its thread while it runs."""

    def __init__(self, vm: Vm, index: int, regs: Registers) -> None:
        self.vm = vm
        self.index = index
        self.regs = regs
        self.pi_desc_phys = vm.pi_page + PI_DESC_SIZE * index
        """Where this vCPU's ``struct pi_desc`` is: post its interrupts there."""
        self._desc: AtomicWords | None = None
        self.thread: threading.Thread | None = None

    def pending(self) -> list[int]:
        """Drain the descriptor: the vectors posted since the last drain."""
        if self._desc is None:
            self._desc = AtomicWords(self.vm.memory.view(self.pi_desc_phys, PI_DESC_SIZE))
        return drain(self._desc)

    def step(self, guest: GuestContext) -> None:
        """One turn of the guest program's loop."""
        regs = self.regs
        regs.rip = AT_HEARTBEAT
        regs.gprs[RAX] = beat(self.vm, self.index, time.monotonic_ns(), self.vm.lock)
        regs.rip = AT_DRAIN
        vectors = self.pending()
        if vectors:
            guest.interrupts_delivered(len(vectors))
            for vector in vectors:
                for device in self.vm.devices:
                    device.interrupt(vector, guest)
        regs.rip = AT_POLL
        for device in self.vm.devices:
            device.poll(guest)
        regs.step += 1
        regs.rip = AT_IDLE

    def run(self, stop: threading.Event, until: int | None) -> None:
        guest = GuestContext(self.vm, self.vm.lock, self.index)
        try:
            while not stop.is_set():
                self.step(guest)
                if until is not None and self.regs.step >= until:
                    return
                stop.wait(PERIOD_S)  # the guest's timer
        except Exception as exc:  # the guest crashed: the vCPU exits, as KVM_RUN returns
            self.vm.error = f"vcpu {self.index}: {type(exc).__name__}: {exc}"
            log.error("vcpu_failed", vm=self.vm.name, vcpu=self.index, error=str(exc))


class Vm:
    """A VM of one kernel: see :meth:`Kvm.create_vm <luo_kvm.Kvm.create_vm>`."""

    def __init__(self, kvm: Kvm, name: str, pi_page: int, *, inherited_pi: bool) -> None:
        self.kvm = kvm
        self.name = name
        self.memory = kvm.memory
        self.pi_page = pi_page
        self.inherited_pi = inherited_pi
        self.memslots: dict[int, Memslot] = {}
        self.vcpus: list[Vcpu] = []
        self.devices: list[GuestDevice] = []
        self.lock = threading.Lock()
        self.running = False
        self.paused_ns = 0
        """CLOCK_MONOTONIC ns when the vCPUs last stopped (after a live update: the last
        heartbeat the guest wrote before it, read from guest memory)."""
        self.resumed_ns: int | None = None
        """CLOCK_MONOTONIC ns when this kernel resumed the VM after a live update."""
        self.error: str | None = None
        self.resume_wanted = False
        """Handed over running: the VMM should resume it (after a live update)."""
        self._stop = threading.Event()

    # -- layout -----------------------------------------------------------------------

    def set_memslot(self, slot: int, gpa: int, gmem_fd: int, offset: int, size: int) -> None:
        """``KVM_SET_USER_MEMORY_REGION2`` with ``KVM_MEM_GUEST_MEMFD``: GPAs ``[gpa,
        gpa+size)`` are the guest_memfd's bytes from ``offset``.

        Refused as ``kvm_gmem_bind`` and ``__kvm_set_memory_region`` refuse:
        ``EINVAL`` for unaligned values or a range outside the file or bound
        twice, ``EEXIST`` for GPAs another slot maps.  A slot handed over by
        the previous kernel is bound again with the same values and a file
        over the same pages.
        """
        self.kvm.changing(f"vm {self.name}: set memslot {slot}")
        gmem = self.kvm.gmem_of(gmem_fd)
        page = self.memory.PAGE_SIZE
        if not 0 <= slot < 1 << 16:
            raise InvalidArgumentError(f"vm {self.name}: memslot {slot} is not a u16")
        if gpa < 0 or offset < 0 or size <= 0 or (gpa | offset | size) % page:
            raise InvalidArgumentError(
                f"vm {self.name}: memslot {slot} at GPA {gpa:#x} size {size:#x} offset "
                f"{offset:#x} is not page aligned"
            )
        if offset + size > gmem.size:
            raise InvalidArgumentError(
                f"vm {self.name}: memslot {slot} ({offset:#x}+{size:#x}) is outside its "
                f"guest_memfd of {gmem.size:#x} bytes"
            )
        old = self.memslots.get(slot)
        if old is not None:
            if old.bound or (old.gpa, old.size, old.offset) != (gpa, size, offset):
                raise ExistsError(f"vm {self.name}: memslot {slot} is in use")
            if old.gmem is not gmem:
                raise InvalidArgumentError(
                    f"vm {self.name}: memslot {slot} was handed over on other pages than this "
                    "guest_memfd's"
                )
            old.bound = True
            return
        for other in self.memslots.values():
            if gpa < other.gpa + other.size and other.gpa < gpa + size:
                raise ExistsError(
                    f"vm {self.name}: GPAs {gpa:#x}+{size:#x} overlap memslot {other.slot}"
                )
        for vm in self.kvm.vms():
            for other in vm.memslots.values():
                if (
                    other.gmem is gmem
                    and offset < other.offset + other.size
                    and other.offset < offset + size
                ):
                    raise InvalidArgumentError(
                        f"vm {self.name}: guest_memfd bytes {offset:#x}+{size:#x} are already "
                        f"bound to memslot {other.slot} of vm {vm.name}"
                    )
        self.memslots[slot] = Memslot(slot, gpa, size, offset, gmem)

    def create_vcpu(self, index: int) -> Vcpu:
        """``KVM_CREATE_VCPU``: a vCPU at the guest program's entry, with its pi_desc."""
        self.kvm.changing(f"vm {self.name}: create vcpu {index}")
        if not 0 <= index < MAX_VCPUS:
            raise InvalidArgumentError(
                f"vm {self.name}: vcpu {index} is not in 0..{MAX_VCPUS - 1}"
            )
        if any(v.index == index for v in self.vcpus):
            raise ExistsError(f"vm {self.name}: vcpu {index} exists")
        regs = Registers()
        regs.gprs[RBX] = heartbeat_gpa(index)
        self.memory.fill(self.pi_page + PI_DESC_SIZE * index, PI_DESC_SIZE)
        vcpu = Vcpu(self, index, regs)
        self.vcpus.append(vcpu)
        return vcpu

    def add_guest_device(self, device: GuestDevice) -> None:
        """A device the guest program interrupts by vector and polls every step."""
        if any(d.name == device.name for d in self.devices):
            raise ExistsError(f"vm {self.name}: a guest device {device.name!r} exists")
        self.devices.append(device)

    # -- guest memory -------------------------------------------------------------------

    def _chunks(self, gpa: int, length: int) -> list[tuple[int, int]]:
        out = []
        while length > 0:
            for ms in self.memslots.values():
                if ms.gpa <= gpa < ms.gpa + ms.size:
                    phys, left = ms.gmem.run(ms.offset + gpa - ms.gpa)
                    n = min(length, left, ms.gpa + ms.size - gpa)
                    out.append((phys, n))
                    gpa, length = gpa + n, length - n
                    break
            else:
                raise LiveUpdateError(
                    f"vm {self.name}: GPA {gpa:#x} is in no memslot", errno=errno.EFAULT
                )
        return out

    def gpa_to_phys(self, gpa: int) -> int:
        """The physical address behind guest-physical ``gpa`` (``EFAULT`` if unmapped)."""
        return self._chunks(gpa, 1)[0][0]

    def read(self, gpa: int, length: int) -> bytes:
        return b"".join(self.memory.read(p, n) for p, n in self._chunks(gpa, length))

    def write(self, gpa: int, data: bytes) -> None:
        at = 0
        for phys, n in self._chunks(gpa, len(data)):
            self.memory.write(phys, data[at : at + n])
            at += n

    def memory_map(self) -> list[tuple[int, int, int]]:
        """``(gpa, phys, length)`` runs of the whole guest: what an IOMMU domain maps for a
        passthrough device (``iova = gpa``)."""
        runs = []
        for ms in sorted(self.memslots.values(), key=lambda m: m.gpa):
            runs += [(ms.gpa + at, phys, n) for at, (phys, n) in _offsets(self, ms)]
        return runs

    # -- running ----------------------------------------------------------------------

    def start(self, steps: int | None = None) -> None:
        """Run every vCPU's thread; with ``steps``, each stops after that many more steps
        (a pause point)."""
        self._startable()
        self._spawn(steps)

    def _startable(self) -> None:
        if self.running:
            raise BusyError(f"vm {self.name} is running")
        self.kvm.changing(f"vm {self.name}: start")
        waiting = [ms.slot for ms in self.memslots.values() if not ms.bound]
        if waiting:
            raise BusyError(
                f"vm {self.name}: memslots {waiting} wait for their guest_memfd: retrieve it "
                "and set the memslot again"
            )
        if not self.vcpus:
            raise InvalidArgumentError(f"vm {self.name} has no vcpu")
        self._chunks(0, GUEST_DATA_SIZE)  # EFAULT unless the guest data page is mapped

    def _spawn(self, steps: int | None) -> None:
        self._stop = threading.Event()
        self.running = True
        self.error = None
        for vcpu in self.vcpus:
            until = None if steps is None else vcpu.regs.step + steps
            vcpu.thread = threading.Thread(
                target=vcpu.run,
                args=(self._stop, until),
                name=f"vcpu-{self.name}-{vcpu.index}",
                daemon=True,
            )
            vcpu.thread.start()

    def run(self, steps: int) -> None:
        """Run ``steps`` steps of the guest program on every vCPU and wait for the pause."""
        self.start(steps)
        self.wait()

    def wait(self) -> None:
        """Wait until every vCPU thread has exited (a pause point, or a stop)."""
        for vcpu in self.vcpus:
            if vcpu.thread is not None:
                vcpu.thread.join()
                vcpu.thread = None
        if self.running:
            self.running = False
            self.paused_ns = time.monotonic_ns()

    def stop(self) -> None:
        """Stop the vCPUs: each thread exits at the end of its step, its registers saved."""
        self._stop.set()
        self.wait()

    def resume(self) -> int:
        """Run the VM again in this kernel; the CLOCK_MONOTONIC ns it resumed at."""
        self._startable()
        if not self.paused_ns:  # the last heartbeat before the update, from guest memory
            self.paused_ns = max((self.heartbeat(v.index).last_ns for v in self.vcpus), default=0)
        # Taken before any vCPU runs: the guest's next heartbeat is later than this.
        self.resumed_ns = time.monotonic_ns()
        self._spawn(None)
        return self.resumed_ns

    # -- what the guest keeps -------------------------------------------------------------

    def heartbeat(self, vcpu: int = 0) -> Heartbeat:
        return read_heartbeat(self, vcpu)

    def counters(self) -> GuestCounters:
        return read_counters(self)

    def record(self, running: bool | None = None) -> VmRecord:
        """What the next kernel rebuilds this VM from; ``running``: whether the VMM should
        resume it (default: whether it runs now)."""
        return VmRecord(
            name=self.name,
            pi_page=self.pi_page,
            memslots=[ms.record() for ms in sorted(self.memslots.values(), key=_slot)],
            vcpus=[v.regs.record(v.index) for v in self.vcpus],
            running=self.running if running is None else running,
        )

    def stats(self) -> dict[str, Any]:
        beats = [self.heartbeat(v.index) for v in self.vcpus]
        return {
            "name": self.name,
            "running": self.running,
            "heartbeat": beats[0].sequence if beats else 0,
            "max_gap_ns": max((b.max_gap_ns for b in beats), default=0),
            "last_ns": max((b.last_ns for b in beats), default=0),
            "paused_ns": self.paused_ns,
            "resumed_ns": self.resumed_ns,
            "blackout_ns": None if self.resumed_ns is None else self.resumed_ns - self.paused_ns,
            "steps": [v.regs.step for v in self.vcpus],
            "counters": self.counters().as_dict(),
            "stalls": [[st.end_ns, st.gap_ns] for st in read_stalls(self)],
            "error": self.error,
        }


def _slot(ms: Memslot) -> int:
    return ms.slot


def _offsets(vm: Vm, ms: Memslot) -> list[tuple[int, tuple[int, int]]]:
    out, at = [], 0
    while at < ms.size:
        phys, left = ms.gmem.run(ms.offset + at)
        n = min(left, ms.size - at)
        out.append((at, (phys, n)))
        at += n
    return out
