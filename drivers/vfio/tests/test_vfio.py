"""vfio-pci and a NIC passed through to a VM: DMA into guest memory and posted MSIs go on
while no kernel runs, and the VMM takes the device back by token in the next kernel."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

import pytest
from luo_kvm import kvm_of
from luo_vfio import DRIVER, VfioPciRecord, vfio_of

from luo_core import Kernel, Machine
from luo_core.abi import encode_record
from luo_core.errors import BusyError, NotFoundError
from luo_core.platform import EXAMPLE_NIC, HOST_BRIDGE, PCI_BRIDGE, Hardware

NIC = "0000:01:00.0"
HOST_NIC = "0000:02:00.0"
VM = {"name": "vm0", "memory": 4 << 20, "vcpus": 1}


def host() -> Machine:
    machine = Machine(memory_size=256 << 20, scratch_size=16 << 20)
    machine.add("dmar0", compatible="intel,vtd")
    machine.add("ir0", compatible="intel,vtd-ir")
    machine.add("kvm", compatible="luo,kvm")
    machine.add("pci0000:00", compatible=HOST_BRIDGE)
    for bridge in ("0000:00:01.0", "0000:00:02.0"):
        machine.add_pci(bridge, compatible=PCI_BRIDGE, parent="pci0000:00")
    machine.add_pci(NIC, compatible=EXAMPLE_NIC, parent="0000:00:01.0")
    machine.add_pci(HOST_NIC, compatible=EXAMPLE_NIC, parent="0000:00:02.0")
    return machine


@pytest.fixture
def hw() -> Iterator[Hardware]:
    with Hardware(host()) as hardware:
        yield hardware


def boot(hw: Hardware) -> Kernel:
    return Kernel.boot(hw, driver_override={NIC: DRIVER})


def spec(**devices: Any) -> dict[str, Any]:
    return {"vms": [{**VM, "devices": [{"kind": "vfio", "device": NIC, **devices}]}]}


def counters(kernel: Kernel) -> dict[str, Any]:
    (vm,) = kernel.command("vmm-stats")["vms"]  # type: ignore[index]
    result: dict[str, Any] = vm["counters"]
    return result


def steps(kernel: Kernel, n: int = 2) -> None:
    """Let the guest program run ``n`` steps, then pause it (deterministic)."""
    vm = kvm_of(kernel).vm("vm0")
    if vm.running:
        vm.stop()
    vm.run(n)


def test_the_driver_binds_by_name_and_opens_one_device_file(hw: Hardware) -> None:
    kernel = boot(hw)
    vfio = vfio_of(kernel)
    drivers = {d.name: d.driver.name if d.driver else None for d in kernel.devices.devices()}
    assert (drivers[NIC], drivers[HOST_NIC]) == (DRIVER, "example-nic")
    fd = vfio.open_device(NIC)
    assert vfio.device(fd).dev.name == NIC
    with pytest.raises(BusyError, match="already open"):
        vfio.open_device(NIC)
    with pytest.raises(NotFoundError, match="not bound to vfio-pci") as info:
        vfio.open_device(HOST_NIC)
    assert info.value.errno == errno.ENODEV
    with pytest.raises(NotFoundError) as info:
        vfio.device(0)
    assert info.value.errno == errno.EBADF


def test_frames_dma_ed_while_no_kernel_runs_reach_the_guest_after_the_update(
    hw: Hardware,
) -> None:
    kernel = boot(hw)
    kernel.command("vmm-start", spec())
    steps(kernel)
    hw.control(NIC, "receive", {"frames": 30})
    steps(kernel)
    assert counters(kernel)["packets"] == {"received": 30, "lost": 0, "duplicated": 0}
    kernel.command("vmm-preserve")
    for dev in kernel.devices.devices():
        if not dev.children and dev.name not in (NIC, "kvm") and not dev.requested:
            kernel.devices.request(dev.name)
    kernel.prepare()
    assert kernel.devices[NIC].requested  # preserving the device file requested it

    def blackout() -> None:  # no kernel: the NIC writes guest memory, posts its MSI
        hw.control(NIC, "receive", {"frames": 40})

    new = kernel.kexec(during_blackout=blackout)
    dev = new.devices[NIC]
    assert dev.driver is not None and dev.driver.name == DRIVER and dev.reclaimed
    assert dev.bus_master
    new.command("vmm-resume", spec())
    steps(new)
    hw.control(NIC, "receive", {"frames": 5})
    steps(new)
    assert counters(new)["packets"] == {"received": 75, "lost": 0, "duplicated": 0}
    assert hw.iommu.faults == hw.interrupts.faults == 0
    regs = hw.registers(NIC)
    assert regs["rx_dropped"] == regs["dma_errors"] == 0
    new.finish()


def test_a_v1_record_migrates_with_no_routes_and_no_domain() -> None:
    """The golden v1 record reads as v2 (the migration adds what v1 did not note)."""
    from luo_vfio._contract import golden

    from luo_core.abi import decode_record

    record = decode_record(golden()[1], {"luo,vfio-pci-state": VfioPciRecord})
    assert record == VfioPciRecord(command=0x6, irqs=[], domain=None)
    assert encode_record(VfioPciRecord(command=0x6), version=1) == golden()[1]
