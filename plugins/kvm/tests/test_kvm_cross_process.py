"""A running VM through a real kexec: the old kernel's process exits, the VMM resumes it in
the next kernel's process, on the same physical pages."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from luo_kvm import DEVICE_AREA_GPA, kvm_host

from luo_core import KernelConfig
from luo_core.kernel._hwlink import HardwareLink
from luo_core.kexec import KernelProcess
from luo_core.platform import HardwareProcess
from luo_core.platform._posted import Poster

CONFIG = KernelConfig(["luo_kvm"], discover=False)
DEADLINE_S = 20.0  # a bound on waiting for the guest, never a pace
VECTOR = 0x52


def stats_of(kernel: KernelProcess) -> dict[str, Any]:
    got = kernel.command("vmm-stats")
    assert isinstance(got, dict)
    vm: dict[str, Any] = got["vms"][0]
    return vm


def until(kernel: KernelProcess, ready: Any) -> dict[str, Any]:
    """The VM's stats once ``ready(stats)`` holds (the guest runs on its own timer)."""
    end = time.monotonic() + DEADLINE_S
    while True:
        stats = stats_of(kernel)
        if ready(stats):
            return stats
        if time.monotonic() > end:
            raise AssertionError(f"the guest never got there: {stats}")


def test_a_running_vm_survives_a_cross_process_kexec() -> None:
    with HardwareProcess(kvm_host()) as machine:
        old = KernelProcess.boot(machine, CONFIG)
        started = old.command("vmm-start", {"vms": [{"name": "a", "memory": 1 << 20}]})
        assert isinstance(started, dict)
        spec = started["vms"][0]
        (gpa, phys, length), pda = spec["memory"][0], spec["pi_desc"][0]
        assert gpa == 0 and length == 1 << 20
        link = HardwareLink(machine.address)  # the operator's view of physical memory
        try:
            link.memory.write(phys + DEVICE_AREA_GPA, b"written before the update")
            before = until(old, lambda s: s["heartbeat"] >= 5)
            assert before["running"]
            assert old.command("vmm-preserve") == {"sessions": ["vm:a"]}
            old.prepare()
            gone = old.pid

            def blackout() -> None:
                with pytest.raises(ProcessLookupError):
                    os.kill(gone, 0)  # no kernel runs the guest now
                assert Poster(link.memory, lambda nv, ndst: None).post(pda, VECTOR)

            with old.kexec(during_blackout=blackout) as new:
                paused = stats_of(new)
                assert not paused["running"] and paused["heartbeat"] >= before["heartbeat"]
                resumed = new.command("vmm-resume")
                assert isinstance(resumed, dict) and resumed["vms"][0]["name"] == "a"
                after = until(
                    new,
                    lambda s: (
                        s["heartbeat"] >= paused["heartbeat"] + 5
                        and s["counters"]["interrupts"]["delivered"] >= 1
                    ),
                )
                assert link.memory.read(phys + DEVICE_AREA_GPA, 25) == b"written before the update"
                # The guest beat last before freeze ended and first after the VMM resumed it,
                # after restore ended: its largest gap covers the kexec and the VM's blackout.
                stats = new.stats
                assert stats is not None and stats.restore_end_ns is not None
                kexec_ns = stats.restore_end_ns - stats.phases["freeze"].end_ns
                assert after["max_gap_ns"] >= after["blackout_ns"] >= kexec_ns > 0
                assert after["resumed_ns"] == resumed["vms"][0]["resumed_ns"]
                new.finish()
        finally:
            link.close()
