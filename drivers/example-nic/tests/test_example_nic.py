"""The example pack through real live updates: its NICs and its forwarding database."""

from __future__ import annotations

import luo_example_nic
import pytest
import structlog
from luo_example_nic import SUBSYSTEM, FdbOps, NicState, transmit
from structlog.testing import capture_logs

from luo_core import Kernel, KernelConfig, State
from luo_core.errors import BusyError
from luo_core.platform import default_host

NIC = "0000:01:00.0"
OTHER = "0000:02:00.0"


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    structlog.reset_defaults()


def boot() -> Kernel:
    return Kernel.boot(default_host(), plugins=[luo_example_nic], discover=False)


def fdb(kernel: Kernel) -> FdbOps:
    ops = kernel.subsystems[SUBSYSTEM].ops
    assert isinstance(ops, FdbOps)
    return ops


def test_traffic_and_table_survive_a_live_update() -> None:
    kernel = boot()
    transmit(kernel.devices[NIC], 300)
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
    assert new.devices[OTHER].driver_data.tx_packets == 0  # not preserved: probed afresh
    assert fdb(new).table == {state.mac: NIC}
    transmit(new.devices[NIC], 1)
    new.finish()
    assert new.state is State.NORMAL


def test_transmit_pauses_at_freeze_and_cancel_resumes() -> None:
    kernel = boot()
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


def test_restore_refuses_a_nic_whose_hardware_was_reset() -> None:
    kernel = boot()
    transmit(kernel.devices[NIC], 3)
    kernel.devices.request(NIC)
    kernel.prepare()
    kernel.freeze()
    kernel.machine.devices[NIC].reset()  # what a firmware reset would do behind our back
    with capture_logs() as logs:
        new = kernel.kexec()
    assert not new.devices[NIC].reclaimed
    assert any(e["event"] == "restore_failed" and e["device"] == NIC for e in logs)


def test_a_kernel_without_the_pack_leaves_the_nic_unreclaimed() -> None:
    kernel = boot()
    kernel.devices.request(NIC)
    kernel.prepare()
    new = kernel.kexec(KernelConfig(discover=False))
    assert new.devices[NIC].preserved and not new.devices[NIC].reclaimed
    with capture_logs() as logs:
        new.finish()
    assert [e["device"] for e in logs if e["event"] == "device_not_reclaimed"] == [NIC]
