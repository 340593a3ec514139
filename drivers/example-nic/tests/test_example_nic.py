"""The example pack through real live updates: its NICs, their hardware, its forwarding table."""

from __future__ import annotations

import os

import luo_example_nic
import pytest
from luo_example_nic import SUBSYSTEM, FdbOps, NicState, burned_in_mac, transmit
from structlog.testing import capture_logs

from luo_core import Kernel, KernelConfig, State
from luo_core._logging import reset as reset_logging
from luo_core.errors import BusyError, RegisterError
from luo_core.kexec import KernelProcess
from luo_core.platform import Hardware, HardwareProcess, default_host

NIC = "0000:01:00.0"
OTHER = "0000:02:00.0"


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    reset_logging()  # a test that ran the luo command configured it


@pytest.fixture
def hw() -> Hardware:
    return Hardware(default_host())


def boot(hw: Hardware) -> Kernel:
    return Kernel.boot(hw, plugins=[luo_example_nic], discover=False)


def fdb(kernel: Kernel) -> FdbOps:
    ops = kernel.subsystems[SUBSYSTEM].ops
    assert isinstance(ops, FdbOps)
    return ops


def test_traffic_and_table_survive_a_live_update(hw: Hardware) -> None:
    kernel = boot(hw)
    transmit(kernel.devices[NIC], 200)
    transmit(kernel.devices[NIC], 100)
    transmit(kernel.devices[OTHER], 5)
    fdb(kernel).learn(kernel.devices[NIC].driver_data.mac, NIC)
    kernel.devices.request(NIC)
    kernel.prepare()
    transmit(kernel.devices[NIC], 7)  # VMs still run after prepare; freeze catches this up
    new = kernel.kexec()
    state = new.devices[NIC].driver_data
    assert isinstance(state, NicState)
    assert (state.tx_packets, state.tx_tail, state.paused) == (307, 307 % 256, False)
    assert new.devices[NIC].reclaimed
    assert new.devices[OTHER].driver_data.tx_packets == 0  # not preserved: reset, probed afresh
    assert fdb(new).table == {state.mac: NIC}
    transmit(new.devices[NIC], 1)
    new.finish()
    assert new.state is State.NORMAL


def test_the_nic_itself_transmits_what_the_driver_queues(hw: Hardware) -> None:
    kernel = boot(hw)
    transmit(kernel.devices[NIC], 200)
    hw.sync()  # the model has handled every doorbell rung before this
    transmit(kernel.devices[NIC], 100)
    hw.sync()
    with pytest.raises(BusyError, match="do not fit a ring of 256 slots"):
        transmit(kernel.devices[NIC], 256)
    regs = hw.registers(NIC).values()
    assert regs["mac"] == burned_in_mac(NIC)
    assert (regs["tx_head"], regs["tx_tail"], regs["tx_frames"]) == (300 % 256, 300 % 256, 300)


def test_the_nic_counts_frames_while_no_kernel_exists_and_the_driver_reads_them(
    hw: Hardware,
) -> None:
    kernel = boot(hw)
    kernel.devices.request(NIC)
    hw.control(NIC, "receive", {"frames": 5})
    kernel.prepare()

    def blackout() -> None:
        hw.control(NIC, "receive", {"frames": 1000})  # the link delivers; no kernel listens

    new = kernel.kexec(during_blackout=blackout)
    state = new.devices[NIC].driver_data
    assert state.rx_in_blackout == 1000
    assert hw.registers(NIC)["rx_frames"] == 1005


def test_a_driver_cannot_hide_an_object_in_a_register(hw: Hardware) -> None:
    kernel = boot(hw)
    nic = kernel.devices[NIC]
    with pytest.raises(RegisterError, match="takes an integer of 32 bits, not NicState"):
        nic.regs["tx_tail"] = nic.driver_data
    with pytest.raises(RegisterError, match="read-only to the driver"):
        nic.regs["rx_frames"] = 0


def test_transmit_pauses_at_freeze_and_cancel_resumes(hw: Hardware) -> None:
    kernel = boot(hw)
    nic = kernel.devices[NIC]
    kernel.devices.request(NIC)
    kernel.prepare()
    kernel.freeze()
    with pytest.raises(BusyError, match="paused"):
        transmit(nic, 1)
    with pytest.raises(RuntimeError, match="frozen"):
        fdb(kernel).learn(1, NIC)
    kernel.cancel()
    transmit(nic, 1)
    assert nic.driver_data.tx_packets == 1


def test_restore_refuses_a_nic_whose_hardware_was_reset(hw: Hardware) -> None:
    kernel = boot(hw)
    transmit(kernel.devices[NIC], 3)
    kernel.devices.request(NIC)
    kernel.prepare()
    kernel.freeze()
    hw.reset(NIC)  # what a firmware reset would do behind our back
    with capture_logs() as logs:
        new = kernel.kexec()
    assert not new.devices[NIC].reclaimed
    assert any(e["event"] == "restore_failed" and e["device"] == NIC for e in logs)


def test_a_kernel_without_the_pack_leaves_the_nic_unreclaimed(hw: Hardware) -> None:
    kernel = boot(hw)
    kernel.devices.request(NIC)
    kernel.prepare()
    new = kernel.kexec(KernelConfig(discover=False))
    assert new.devices[NIC].preserved and not new.devices[NIC].reclaimed
    with capture_logs() as logs:
        new.finish()
    assert [e["device"] for e in logs if e["event"] == "device_not_reclaimed"] == [NIC]


def test_across_processes_the_nic_keeps_receiving_with_no_kernel_process_alive() -> None:
    config = KernelConfig(["luo_example_nic"], discover=False)
    with HardwareProcess(default_host()) as machine:
        old = KernelProcess.boot(machine, config)
        old.request(NIC)
        old.workload("example-nic", NIC)
        old.prepare()
        gone = old.pid

        def blackout() -> None:
            with pytest.raises(ProcessLookupError):
                os.kill(gone, 0)  # the old kernel has exited; the new one waits for us
            machine.control(NIC, "receive", {"frames": 1000})

        with old.kexec(during_blackout=blackout) as new:
            assert new.pid != gone and new.devices()[NIC].reclaimed
            assert new.snapshot("example-nic", NIC)["tx_packets"] == 37
            counters = machine.control(NIC, "counters")
            assert isinstance(counters, dict) and counters["rx_frames"] == 1000
