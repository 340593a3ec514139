"""``luo demo``'s run: one boot, then live updates (or cold reboots) in a row, measured.

The hardware powers on first and outlives every kernel.  The first kernel
boots, requests every device without children and starts the workload on the
NICs; then each update prepares, freezes, jumps, restores and finishes, and
the next kernel requests the devices and starts the workload again.  A cold
run does a plain ``kexec`` instead: nothing is prepared, every device is shut
down and reset, and the next kernel probes them afresh.  The kernels run in
processes of their own, or in this one (``inproc``), behind one small
interface so that both runs are the same code.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs

from luo_core.abi._boot import KernelConfig
from luo_core.abi._machine import Machine
from luo_core.abi._stats import UpdateStats, now_ns
from luo_core.cli._demo_kernels import WORKLOADS, DemoKernel, DeviceView, _Local, _Remote
from luo_core.cli._demo_traffic import Counters, NicSample, hardware_faults, nic_traffic
from luo_core.cli._demo_vms import Guests, GuestSample, driver_override, guest_counters, stall_over
from luo_core.errors import DeviceError, HardwareError, NotFoundError
from luo_core.kexec import KernelProcess
from luo_core.platform import EXAMPLE_NIC, Hardware, HardwareProcess, VmSpec

Say = Callable[[str], None]


def _quiet(_text: str) -> None:
    pass


@attrs.frozen
class Options:
    """How to run: ``mode`` ``live`` or ``cold``, how many updates, where the kernels run."""

    mode: str = "live"
    updates: int = 1
    inproc: bool = False
    workers: int = 1
    next_python: str | None = None
    save_handoff: Path | None = None
    run_dir: Path | None = None
    log: str = "warning"
    vms: tuple[VmSpec, ...] = ()
    """The host's VMs: started after boot, preserved and resumed at every update (live),
    restarted after every reboot (cold)."""


@attrs.define
class Step:
    """One update (or cold reboot) of a run, as the operator saw it."""

    number: int
    old_pid: int
    new_pid: int
    start_ns: int
    """When the step began: prepare (live), the kexec request (cold)."""
    kexec_ns: int
    """When the operator asked for the kexec."""
    up_ns: int
    """When the new kernel answered that it had booted (devices restored or probed)."""
    end_ns: int
    """When the step ended: finish returned (live), the kernel was up (cold)."""
    stats: UpdateStats | None
    before: NicSample
    """The NICs' registers just before the kexec."""
    after: NicSample
    """The NICs' registers just after it."""
    reset: frozenset[str]
    """The NICs reset by the kexec (not preserved): their counters started again."""
    written_for: dict[str, int] = attrs.field(factory=dict)
    """Schemas written at an older version for this update (the previous release's ABI)."""
    state_kept: dict[str, bool] = attrs.field(factory=dict)
    """Per NIC: the contract's snapshot after restore equals the one before prepare."""
    gone_ns: int | None = None
    """Cold: when the old kernel was gone (its devices shut down and reset) and no
    kernel ran."""
    vm_resumed_ns: int | None = None
    """Live: when the VMM had resumed the last VM in the new kernel."""
    vm_blackout_ns: int | None = None
    """The longest pause a guest saw across this step (its heartbeat's stall); cold: from
    the old VMs' last heartbeat to the new VMs started."""
    vm_pauses: dict[str, tuple[int, int]] = attrs.field(factory=dict)
    """Live: per VM, when its vCPUs last ran before the update and when they resumed."""

    @property
    def traffic(self) -> Counters:
        """What the NICs' links delivered across the kexec."""
        return nic_traffic(self.before, self.after, self.reset)

    @property
    def blackout_ns(self) -> int | None:
        """Live: freeze start to the last device restored.  Cold: the kexec request to
        the new kernel up with its devices probed."""
        if self.stats is None:
            return self.up_ns - self.kexec_ns
        if self.stats.freeze_start_ns is None or self.stats.restore_end_ns is None:
            return None
        end = max(self.stats.restore_end_ns, self.vm_resumed_ns or 0)
        return end - self.stats.freeze_start_ns


@attrs.define
class Run:
    """Everything a demo run measured."""

    options: Options
    hardware_pid: int
    packs: list[dict[str, Any]] = attrs.field(factory=list)
    devices: dict[str, DeviceView] = attrs.field(factory=dict)
    """After the first update: each device's fate."""
    refused: dict[str, str] = attrs.field(factory=dict)
    steps: list[Step] = attrs.field(factory=list)
    totals: Counters = attrs.field(factory=Counters)
    nics: dict[str, Mapping[str, Any]] = attrs.field(factory=dict)
    """Each NIC's registers at the end of the run."""
    posted: dict[str, int] = attrs.field(factory=dict)
    """What the posting unit posted, notified and suppressed during the run."""
    liveupdate_number: int = 0
    first_pid: int = 0
    vms: list[Mapping[str, Any]] = attrs.field(factory=list)
    """Each VM as the VMM last reported it (its guest's counters and heartbeat)."""
    stranded: dict[str, int] = attrs.field(factory=dict)
    """VM NICs whose received frames the guest never took, after the links stopped."""


UPGRADED = frozenset({"luo,example-nic-state"})
"""The records the demo's first update upgrades: the example NIC pack's new release.
(Other packs' rollback writers refuse state their previous release could not run, such
as a passed-through device with routed MSIs.)"""


def previous_abi(
    manifest: Mapping[str, Any], upgraded: frozenset[str] = UPGRADED
) -> tuple[dict[str, Any], dict[str, int]]:
    """``manifest`` as the previous release would read it: each schema of ``upgraded``
    whose pack has a rollback writer for the version before its own is capped there.

    The schemas capped, with the version they will be written at, come second.
    """
    target = copy.deepcopy(dict(manifest))
    lowered: dict[str, int] = {}
    for compatible, entry in target["schemas"].items():
        if compatible not in upgraded:
            continue
        older = entry["version"] - 1
        if older in entry["writes"] and entry["min_version"] <= older:
            entry["version"] = older
            entry["writes"] = [v for v in entry["writes"] if v < older]
            entry["migrations"] = [v for v in entry["migrations"] if v < older]
            lowered[compatible] = older
    return target, lowered


class _Powered(Protocol):
    pid: int

    def control(self, device: str, op: str, args: Mapping[str, Any] | None = None) -> object: ...
    def stats(self) -> dict[str, int]: ...


@contextlib.contextmanager
def _power_on(machine: Machine, options: Options) -> Iterator[tuple[_Powered, DemoKernel]]:
    """The hardware on and the first kernel booted; both go at the end."""
    overrides = driver_override(options.vms)
    if options.inproc:
        from luo_core.kernel._kernel import Kernel

        with Hardware(machine) as local:
            local_hw: Any = local
            local_hw.pid = os.getpid()
            booted = Kernel.boot(local, workers=options.workers, driver_override=overrides)
            yield local_hw, _Local(booted)
        return
    config = KernelConfig(workers=options.workers, driver_override=overrides)
    with HardwareProcess(machine, log=options.log) as hardware:
        kernel = KernelProcess.boot(hardware, config, log=options.log)
        yield hardware, _Remote(kernel, options.next_python)


class _Runner:
    """One run: the kernel in charge changes at every kexec."""

    def __init__(self, machine: Machine, options: Options, hardware: _Powered, say: Say) -> None:
        self.options = options
        self.hardware = hardware
        self.say = say
        self.specs = machine.devices
        self.guests = Guests(options.vms)
        passed = set(self.guests.nics) if options.mode == "live" else set()
        # A VM's NICs are counted by its guest (by sequence number) in a live run; in a
        # cold one the guests start over, so their NICs' hardware counters are used.
        self.nics = [
            n
            for n, d in machine.devices.items()
            if d.compatible == EXAMPLE_NIC and n not in passed
        ]
        self.living = False
        """Whether the VMs run (the VMM started them in this life of theirs)."""
        self.run = Run(options, hardware.pid)
        self.armed: dict[str, str] = {}
        """The NICs whose workload runs (none without the example pack)."""

    def sample(self) -> NicSample:
        return {nic: _registers(self.hardware.control(nic, "counters")) for nic in self.nics}

    def sysfs(self, kernel: DemoKernel) -> None:
        if self.options.run_dir is not None:
            kernel.write_sysfs(self.options.run_dir)

    def arm(self, kernel: DemoKernel, *, request: bool) -> None:
        """Request every device without children (live runs) and start the NICs' workload."""
        if request:
            parents = {spec.parent for spec in self.specs.values()}
            for dev in kernel.devices().values():
                if dev.name in parents or dev.requested:
                    continue
                try:
                    kernel.request(dev.name)
                except DeviceError as exc:
                    self.run.refused.setdefault(dev.name, str(exc))
        self.armed = {}
        for name, view in kernel.devices().items():
            if name in self.guests.nics or view.driver not in WORKLOADS:
                continue
            with contextlib.suppress(NotFoundError):  # a pack without that contract
                kernel.workload(view.driver, name)
                self.armed[name] = view.driver

    def snapshots(self, kernel: DemoKernel) -> dict[str, object]:
        found: dict[str, object] = {}
        for device, contract in self.armed.items():
            # A device that failed to restore has no driver state to show: not kept.
            with contextlib.suppress(Exception):
                found[device] = kernel.snapshot(contract, device)
        return found

    def live(self, kernel: DemoKernel, number: int) -> tuple[DemoKernel, Step]:
        total = self.options.updates
        self.say(f"update {number}/{total}: prepare")
        target, lowered = previous_abi(kernel.manifest()) if number == 1 else (None, {})
        kept_before = self.snapshots(kernel)
        start = now_ns()
        if self.guests:
            self.say(f"update {number}/{total}: the VMM preserves its VMs")
            self.guests.preserve(kernel)
        kernel.prepare(target if lowered else None)
        self.sysfs(kernel)
        before = self.sample()
        old_pid = kernel.pid
        self.say(f"update {number}/{total}: freeze, kexec, restore")
        asked = now_ns()
        kernel = kernel.kexec()
        up = now_ns()
        resumed = self.guests.resume(kernel) if self.guests else None
        pauses = {
            vm["name"]: (int(vm["paused_ns"]), int(vm["resumed_ns"]))
            for vm in (self.guests.stats(kernel) if self.guests else ())
            if type(vm.get("resumed_ns")) is int
        }
        after = self.sample()
        devices = kernel.devices()
        kept_after = self.snapshots(kernel)
        self.sysfs(kernel)
        if number == total and self.options.save_handoff is not None:
            self.options.save_handoff.write_bytes(kernel.handoff())
        if number == 1:
            self.run.devices = devices
        self.say(f"update {number}/{total}: finish")
        kernel.finish()
        self.sysfs(kernel)
        end = now_ns()
        reset = frozenset(n for n in self.nics if not devices[n].preserved)
        step = Step(
            number,
            old_pid,
            kernel.pid,
            start,
            asked,
            up,
            end,
            kernel.stats,
            before,
            after,
            reset,
            lowered,
            {
                nic: nic in kept_after and kept_after[nic] == kept_before.get(nic)
                for nic in kept_before
            },
            vm_resumed_ns=resumed,
            vm_pauses=pauses,
        )
        self.say(f"update {number}/{total}: requesting devices, restarting the workload")
        self.arm(kernel, request=True)
        self.sysfs(kernel)
        if self.guests and step.stats is not None and step.stats.freeze_start_ns is not None:
            self.say(f"update {number}/{total}: reading the pause the VMs saw")
            step.vm_blackout_ns = self.vm_blackout(kernel, step.stats.freeze_start_ns, resumed)
        return kernel, step

    def cold(self, kernel: DemoKernel, number: int) -> tuple[DemoKernel, Step]:
        self.say(f"reboot {number}/{self.options.updates}: kexec, probe")
        last_beat = self.end_life(kernel, dying=True)
        before = self.sample()
        old_pid = kernel.pid
        gone: list[int] = []
        asked = now_ns()
        kernel = kernel.kexec(lambda: gone.append(now_ns()))  # nothing prepared: a plain kexec
        up = now_ns()
        after = self.sample()
        if number == 1:
            self.run.devices = kernel.devices()
        self.sysfs(kernel)
        every = frozenset(self.nics)
        step = Step(
            number,
            old_pid,
            kernel.pid,
            asked,
            asked,
            up,
            up,
            None,
            before,
            after,
            every,
            gone_ns=gone[0] if gone else None,
        )
        self.say(f"reboot {number}/{self.options.updates}: restarting the workload")
        self.arm(kernel, request=False)
        if self.guests:
            self.say(f"reboot {number}/{self.options.updates}: the VMM starts its VMs afresh")
            self.start_life(kernel)
            if last_beat is not None:
                step.vm_blackout_ns = now_ns() - last_beat
        return kernel, step

    # -- the VMs ---------------------------------------------------------------------

    def guest_sample(self, kernel: DemoKernel) -> GuestSample:
        raised = {
            nic: int(_registers(self.hardware.control(nic, "counters")).get("irq_raised", 0))
            for nic in self.guests.nics
        }
        return GuestSample(self.guests.stats(kernel), raised)

    def start_life(self, kernel: DemoKernel) -> None:
        """The VMM starts the VMs: a new life of their guests begins."""
        # A life starts from nothing: new guest memory, and NICs reset (cold) or still
        # disabled since power-on (their first MSI is the new guest's).
        self.guests.start(kernel)
        self.living = True

    def end_life(self, kernel: DemoKernel, *, dying: bool = False) -> int | None:
        """The VMs' guests end a life (a reboot is coming, or the run ends): add what they
        counted; the last heartbeat any of them wrote."""
        if not self.guests or not self.living:
            return None
        end = self.guest_sample(kernel)
        counted = guest_counters(end)
        if self.options.mode == "cold":  # the NICs' hardware counters have the frames
            counted.packets_sent = counted.packets_received = 0
            counted.packets_lost = counted.packets_duplicated = 0
            counted.sources.discard("packets")
        if dying:  # the VMs die with the kernel: their commands in flight never complete
            counted.io_lost += counted.io_submitted - counted.io_completed - counted.io_lost
        self.run.totals.add(counted)
        self.run.vms = list(end.stats)
        self.living = False
        return max((int(vm.get("last_ns", 0)) for vm in end.stats), default=None)

    def quiesce(self, kernel: DemoKernel, timeout_s: float = 2.0) -> None:
        """Stop the VMs' links and let the guests take every frame their NICs received: a
        frame still in a ring after that was signalled by an interrupt that was lost."""
        for nic in self.guests.nics:
            with contextlib.suppress(HardwareError):  # a device with no link (storage)
                self.hardware.control(nic, "link", {"pps": 0})
        deadline = now_ns() + int(timeout_s * 1e9)
        waiting = list(self.guests.nics)
        while waiting:
            waiting = [nic for nic in waiting if _pending(self.hardware, nic)]
            if not waiting or now_ns() > deadline:
                break
            time.sleep(0.002)  # the guests' own timers run them: give them the CPU
        self.run.stranded = {nic: _pending(self.hardware, nic) for nic in waiting}
        self.run.totals.interrupts_lost += len(self.run.stranded)

    def vm_blackout(
        self, kernel: DemoKernel, start_ns: int, resumed_ns: int | None, timeout_s: float = 2.0
    ) -> int | None:
        """The longest stall a guest logged across an update, read once every VM has
        beaten again after it resumed (the stall is logged by that first heartbeat)."""
        deadline = now_ns() + int(timeout_s * 1e9)
        while True:
            stats = self.guests.stats(kernel)
            beaten = all(int(vm.get("last_ns", 0)) > (resumed_ns or 0) for vm in stats)
            if beaten or now_ns() > deadline:
                return stall_over(stats, start_ns, resumed_ns or now_ns())
            time.sleep(0.001)  # the guests' own timers run them: give them the CPU


def run_demo(machine: Machine, options: Options, say: Say = _quiet) -> Run:
    """Power the host on, boot, run ``options.updates`` updates (or cold reboots), report."""
    say("powering on the hardware, booting the first kernel")
    with _power_on(machine, options) as (hardware, kernel):
        runner = _Runner(machine, options, hardware, say)
        run = runner.run
        try:
            faults_before = hardware.stats()
            run.first_pid = kernel.pid
            say("requesting devices, starting the NICs' workload")
            runner.arm(kernel, request=options.mode == "live")
            if runner.guests:
                say("the VMM starts the VMs")
                runner.start_life(kernel)
            runner.sysfs(kernel)
            previous = runner.sample()
            for number in range(1, options.updates + 1):
                if options.mode == "live":
                    kernel, step = runner.live(kernel, number)
                else:
                    kernel, step = runner.cold(kernel, number)
                run.steps.append(step)
                run.totals.add(nic_traffic(previous, step.before, frozenset()))
                run.totals.add(step.traffic)
                previous = step.after
            if runner.guests:
                say("stopping the VMs' links, letting the guests catch up")
                runner.quiesce(kernel)
                runner.end_life(kernel)
            end = runner.sample()
            run.totals.add(nic_traffic(previous, end, frozenset()))
            faults_after = hardware.stats()
            run.totals.add(hardware_faults(faults_before, faults_after))
            run.posted = {
                key: faults_after[key] - faults_before[key]
                for key in ("posted", "notified", "suppressed")
            }
            run.nics = dict(end)
            run.packs = kernel.packs()
            run.liveupdate_number = kernel.liveupdate_number
            return run
        finally:
            kernel.shutdown()


def _pending(hardware: _Powered, nic: str) -> int:
    """Frames in ``nic``'s receive ring that its driver has not taken back."""
    try:
        regs = _registers(hardware.control(nic, "counters"))
    except HardwareError:
        return 0  # not a NIC: no ring of received frames
    size = int(regs.get("rx_ring_size", 0))
    if not size:
        return 0
    return (int(regs["rx_head"]) - int(regs["rx_tail"]) - 1) % size


def _registers(value: object) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise DeviceError(f"a NIC reported its counters as {type(value).__name__}")
    return value
