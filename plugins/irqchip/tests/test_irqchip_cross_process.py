"""Across processes: MSIs raised while no kernel process exists are all found after restore."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from luo_irqchip._contract import machine

from luo_core import KernelConfig
from luo_core.kexec import KernelProcess
from luo_core.platform import HardwareProcess

IR0 = "ir0"
DEV = "0000:01:00.0"
VECTOR = 0x41
HERE = str(Path(__file__).resolve().parent)


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (HERE, path) if p)}


def test_msis_raised_with_no_kernel_process_alive_are_found_after_restore() -> None:
    """Only bytes cross: the table stays in preserved memory, the record says where,
    the unit keeps posting into the guest's descriptor with no kernel process
    alive, and the new kernel re-injects once per posted route (the spurious
    injection of ``kvm_irqfd_assign``, virt/kvm/eventfd.c, made unconditional)."""
    config = KernelConfig(["luo_irqchip", "irq_msi_source:guest_pack"], discover=False)
    env = _env()
    with HardwareProcess(
        machine(), models=["irq_msi_source:MsiSourcePack"], discover=True, env=env
    ) as hw:
        old = KernelProcess.boot(hw, config, env=env)
        old.command("msi-route", {"device": DEV, "vector": VECTOR})
        before = old.command("ir-state")
        old.request(IR0)
        old.request(DEV)
        old.prepare()
        gone = old.pid
        raised: list[object] = []

        def blackout() -> None:
            with pytest.raises(ProcessLookupError):
                os.kill(gone, 0)  # the old kernel has exited; the new one waits for us
            raised.append(hw.control(DEV, "raise", {"count": 7}))

        with old.kexec(during_blackout=blackout) as new:
            assert raised == [{"sent": 7, "faults": 0}]
            after = new.command("ir-state")
            assert after["routes"] == before["routes"] and after["table"] == before["table"]
            assert after["table_bytes"] == before["table_bytes"]
            assert (before["reinjected"], after["reinjected"]) == (0, 1)
            seen = new.command("msi-consume", {"device": DEV})
            assert (seen["vectors"], seen["sent"], seen["seen"]) == ([VECTOR], 7, 7)
            assert (seen["delivered"], seen["spurious"]) == (1, 0)
            status = hw.control(IR0, "status")
            assert isinstance(status, dict) and status["faults"] == 0
