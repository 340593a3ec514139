"""A VM with a virtio-net function passed through, across a cross-process live update: the
device keeps receiving into guest memory while no kernel process exists, and the guest,
resumed in the next kernel's process without resetting the device, counts every frame once."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from luo_kvm import DEVICE_AREA_GPA
from luo_vfio._passthrough import passthrough_host, passthrough_vm
from luo_virtio_net import COMPATIBLE, read_state

from luo_core import KernelConfig, Machine
from luo_core.kernel._hwlink import HardwareLink
from luo_core.kexec import KernelProcess
from luo_core.platform import HardwareProcess

NIC = "0000:01:00.0"
RX_PPS = 500
"""Frames per second: the guest's 1024 buffers last two seconds of blackout."""
DEADLINE_S = 30.0  # a bound on waiting for the guest, never a pace
SPEC = passthrough_vm(NIC)
CONFIG = KernelConfig(
    ["luo_virtio_net", "luo_vfio:VfioPack", "luo_kvm", "luo_iommu", "luo_irqchip"],
    discover=False,
    driver_override={NIC: "vfio-pci"},
)


def host() -> Machine:
    return passthrough_host(NIC, COMPATIBLE, {"rx_pps": RX_PPS})


def stats_of(kernel: KernelProcess) -> dict[str, Any]:
    got = kernel.command("vmm-stats")
    assert isinstance(got, dict)
    vm: dict[str, Any] = got["vms"][0]
    return vm


def until(what: str, probe: Any, ready: Any) -> Any:
    end = time.monotonic() + DEADLINE_S
    while True:
        value = probe()
        if ready(value):
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what} never happened: {value}")


def test_a_vm_keeps_every_frame_across_a_cross_process_live_update() -> None:
    with HardwareProcess(host()) as machine:
        old = KernelProcess.boot(machine, CONFIG)
        started = old.command("vmm-start", SPEC)
        assert isinstance(started, dict)
        (gpa, phys, _length) = started["vms"][0]["memory"][0]
        base = phys - gpa + DEVICE_AREA_GPA  # the guest driver's memory (the first device)
        link = HardwareLink(machine.address)
        try:
            before = until(
                "traffic before the update",
                lambda: stats_of(old),
                lambda s: s["counters"]["packets"]["received"] >= 200,
            )
            assert read_state(link.memory, base).tx_done > 0  # the guest transmits too
            old.command("vmm-preserve")
            for dev in old.devices().values():
                if dev.name in ("dmar0", "ir0") and not dev.requested:
                    old.request(dev.name)
            old.prepare()
            gone = old.pid
            seen: dict[str, int] = {}

            def blackout() -> None:
                with pytest.raises(ProcessLookupError):
                    os.kill(gone, 0)  # no kernel process runs the guest now
                start = machine.control(NIC, "counters")
                assert isinstance(start, dict)
                landed = until(
                    "frames landing with no kernel",
                    lambda: machine.control(NIC, "counters"),
                    lambda c: c["rx_frames"] >= start["rx_frames"] + 50,
                )
                seen["blackout_frames"] = landed["rx_frames"] - start["rx_frames"]

            with old.kexec(during_blackout=blackout) as new:
                assert new.devices()[NIC].reclaimed
                new.command("vmm-resume", SPEC)
                target = before["counters"]["packets"]["received"] + 600
                after = until(
                    "traffic after the update",
                    lambda: stats_of(new),
                    lambda s: s["counters"]["packets"]["received"] >= target,
                )
                new.command("vmm-stop")  # the guest stops counting: one consistent reading
                after = stats_of(new)
                packets = after["counters"]["packets"]
                assert packets["received"] >= target
                assert packets["lost"] == 0 and packets["duplicated"] == 0
                counters = machine.control(NIC, "counters")
                assert isinstance(counters, dict)
                assert counters["dma_errors"] == counters["irq_faults"] == 0
                assert counters["desc_errors"] == 0
                state = read_state(link.memory, base)
                assert state.received == packets["received"] and seen["blackout_frames"] >= 50
                assert state.tx_done > 0 and counters["tx_frames"] >= state.tx_done
                new.finish()
        finally:
            link.close()


class _Memory:
    """Guest memory as a bytearray, with the GuestContext calls a driver makes."""

    def __init__(self, vcpu: int) -> None:
        self.bytes = bytearray(1 << 20)
        self.vcpu = vcpu

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.bytes[gpa : gpa + length])

    def write(self, gpa: int, data: bytes) -> None:
        self.bytes[gpa : gpa + len(data)] = data


def test_only_vcpu_0_runs_the_driver_so_its_state_has_one_writer() -> None:
    """The driver reads, changes and writes its state in guest memory without a lock: a
    second vCPU polling it at the same time would write back a stale receive index, and
    the next interrupt would count frames again (duplicates)."""
    from luo_virtio_net import GuestVirtioNet

    guest = _Memory(vcpu=1)
    driver = GuestVirtioNet("nic", {}, 0x1000, 0x40, 0)
    driver.poll(guest)  # touches neither the device (no registers) nor guest memory
    assert guest.bytes == bytearray(1 << 20)
