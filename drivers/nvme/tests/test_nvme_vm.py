"""A VM drives a passed-through NVMe controller across a cross-process live update.

The guest's NVMe driver (luo_nvme._guest) keeps writes and read-backs in
flight through vfio-pci, its queues in guest memory; the controller goes on
completing them while the old kernel's process exits and the next one
boots, its MSIs posted into the vCPU's descriptor; after ``vmm-resume`` the
rebuilt guest driver reaps what arrived and carries on: no I/O lost, none
duplicated.  The guest runs on its own timer, so the test polls
``vmm-stats`` against a deadline and never sleeps.
"""

from __future__ import annotations

import time
from typing import Any

from luo_nvme import COMPATIBLE
from luo_vfio._passthrough import passthrough_host, passthrough_vm

from luo_core import KernelConfig, Machine
from luo_core.kexec import KernelProcess
from luo_core.platform import HardwareProcess

CTRL = "0000:01:00.0"
DEADLINE_S = 30.0  # a bound on waiting for the guest, never a pace
SPEC = passthrough_vm(CTRL)
CONFIG = KernelConfig(
    ["luo_nvme", "luo_iommu", "luo_irqchip", "luo_kvm", "luo_vfio:VfioPack"],
    discover=False,
    driver_override={CTRL: "vfio-pci"},
)


def host() -> Machine:
    return passthrough_host(CTRL, COMPATIBLE)


def io(kernel: KernelProcess) -> dict[str, int]:
    got = kernel.command("vmm-stats")
    assert isinstance(got, dict)
    counters: dict[str, int] = got["vms"][0]["counters"]["io"]
    return counters


def until(kernel: KernelProcess, ready: Any) -> dict[str, int]:
    end = time.monotonic() + DEADLINE_S
    while True:
        counters = io(kernel)
        if ready(counters):
            return counters
        if time.monotonic() > end:
            raise AssertionError(f"the guest's I/O never got there: {counters}")


def test_a_vm_keeps_its_nvme_io_across_a_cross_process_live_update() -> None:
    with HardwareProcess(host()) as machine:
        old = KernelProcess.boot(machine, CONFIG)
        try:
            assert old.devices()[CTRL].driver == "vfio-pci"
            old.command("vmm-start", SPEC)
            before = until(old, lambda c: c["completed"] >= 50)
            assert before["lost"] == 0
            # A slow controller: the guest's next commands stay in flight through the update.
            machine.control(CTRL, "hold", {"on": True})
            held = until(old, lambda c: c["submitted"] - c["completed"] == 4)
            old.command("vmm-preserve")
            for name in ("dmar0", "ir0"):
                old.request(name)
            old.prepare()
        except BaseException:
            old.shutdown()
            raise
        released: list[object] = []

        def blackout() -> None:  # no kernel: the controller completes them, posts its MSI
            released.append(machine.control(CTRL, "hold", {"on": False}))

        with old.kexec(during_blackout=blackout) as new:
            assert released == [{"completed": 4}]
            assert new.devices()[CTRL].reclaimed
            assert io(new) == held  # the guest has not run yet: nothing reaped
            new.command("vmm-resume", SPEC)
            after = until(new, lambda c: c["completed"] >= held["completed"] + 100)
            assert after["lost"] == 0
            assert after["submitted"] - after["completed"] <= 4  # the rest are in flight
            hw = machine.control(CTRL, "counters")
            assert isinstance(hw, dict)
            assert hw["dma_errors"] == hw["irq_faults"] == hw["db_errors"] == 0
            new.finish()
