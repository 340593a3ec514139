"""The IOMMU across real, cross-process kexecs: the tables stay, DMA never stops.

The hardware runs in a process of its own; each kernel is a process that
exits at kexec.  Only memory and the handoff cross: the next kernel adopts
``dmar0``'s tables from its record, or (after a plain kexec, ``dmar0`` reset)
the iommufd's domain from its session and the FLB ``iommu-v1``.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from luo_iommu._contract import DMAR, ENGINE, machine

from luo_core import KernelConfig
from luo_core.abi._iopgtable import PAGE_SIZE
from luo_core.kexec import KernelProcess
from luo_core.platform import HardwareProcess

CONFIG = KernelConfig(plugins=["luo_iommu"], discover=False)
IOVA = 0x80_0000
SLOTS = 1024
RING = SLOTS * 8
DEADLINE_S = 30.0


@pytest.fixture
def hw() -> Iterator[HardwareProcess]:
    with HardwareProcess(machine(), models=["luo_iommu"], discover=False) as hardware:
        yield hardware


def status(hw: HardwareProcess) -> dict[str, Any]:
    found = hw.control(ENGINE, "status")
    assert isinstance(found, dict)
    return found


def until_seq_passes(hw: HardwareProcess, seq: int) -> dict[str, Any]:
    """Wait until the engine has written past ``seq`` (a condition, polled with a deadline)."""
    deadline = time.monotonic() + DEADLINE_S
    while (now := status(hw))["seq"] <= seq:
        assert now["faults"] == 0, f"the engine's DMA faulted: {now}"
        assert time.monotonic() < deadline, f"the engine stopped writing at {now}"
        hw.sync()
    return now


def walk(hw: HardwareProcess, iovas: list[int]) -> list[int | None]:
    """Where the hardware's IOMMU sends each IOVA for the engine, read from the tables."""
    found = hw.control(DMAR, "translate", {"device": ENGINE, "iovas": iovas})
    assert isinstance(found, list)
    return found


def test_mappings_are_identical_after_restore_and_dma_lands_through_the_kexec(
    hw: HardwareProcess,
) -> None:
    """dmar0 is requested and keeps translating at the same root table: the next kernel
    adopts its tables without writing them (the iommu "liveupdate" series:
    intel_iommu_liveupdate_restore_root_table), and the engine's every write lands."""
    kernel = KernelProcess.boot(hw, CONFIG)
    buf = kernel.command("iommu", {"op": "buffer", "size": RING})
    domain = kernel.command("iommu", {"op": "domain-alloc"})["id"]
    kernel.command(
        "iommu", {"op": "map", "domain": domain, "iova": IOVA, "phys": buf, "length": RING}
    )
    kernel.command("iommu", {"op": "attach", "device": ENGINE, "domain": domain})
    iovas = [IOVA + n for n in range(0, RING, PAGE_SIZE)]
    before, tables = walk(hw, iovas), kernel.command("iommu", {"op": "status"})
    assert before == [buf + n for n in range(0, RING, PAGE_SIZE)]
    hw.control(ENGINE, "start", {"iova": IOVA, "slots": SLOTS})
    until_seq_passes(hw, 0)
    kernel.request(DMAR)
    kernel.request(ENGINE)
    kernel.prepare()
    blackout: dict[str, Any] = {}

    def no_kernel_runs() -> None:
        first = status(hw)
        blackout["first"] = first
        blackout["last"] = until_seq_passes(hw, first["seq"] + 20)

    with kernel.kexec(during_blackout=no_kernel_runs) as new:
        assert new.pid != kernel.pid
        after = new.command("iommu", {"op": "status"})
        assert walk(hw, iovas) == before
        assert {k: v for k, v in after.items() if k != "faults_in_blackout"} == {
            k: v for k, v in tables.items() if k != "faults_in_blackout"
        }
        assert after["faults_in_blackout"] == 0
        until_seq_passes(hw, blackout["last"]["seq"] + 5)
        hw.control(ENGINE, "stop")
        written = status(hw)
        assert written["faults"] == 0
        ring = hw.control(ENGINE, "read", {"iova": IOVA, "length": RING})
        assert isinstance(ring, bytes)
        slots = struct.unpack(f"<{SLOTS}Q", ring)
        first = max(0, written["seq"] - SLOTS)
        # Every number written before, during and after the kexec is where it belongs.
        assert all(slots[seq % SLOTS] == seq for seq in range(first, written["seq"]))
        assert blackout["last"]["seq"] > blackout["first"]["seq"]
        assert hw.control(DMAR, "status")["faults"] == 0  # type: ignore[index]


@pytest.mark.parametrize("update", ["live", "plain"])
def test_an_iommufd_crosses_a_kexec_in_a_session(hw: HardwareProcess, update: str) -> None:
    """drivers/iommu/iommufd/liveupdate.c (posted series): preserve hands over the HWPT's
    domain with its tables in place, retrieve gives a new iommufd over the same domain,
    finish releases.  ``live``: dmar0 is requested too and keeps translating; ``plain``:
    a kexec with no update prepared resets dmar0, and the next kernel's driver adopts
    the tables the FLB iommu-v1 names (liveupdate_flb_get_incoming) at probe."""
    kernel = KernelProcess.boot(hw, CONFIG)
    buf = kernel.command("iommu", {"op": "buffer", "size": 2 * PAGE_SIZE})
    made = kernel.command(
        "iommu",
        {
            "op": "iommufd-setup",
            "session": "vmm",
            "token": 7,
            "device": ENGINE,
            "iova": IOVA,
            "phys": buf,
            "length": 2 * PAGE_SIZE,
        },
    )
    assert hw.control(ENGINE, "write", {"iova": IOVA, "data": b"before"}) == {"ok": True}
    if update == "live":
        kernel.request(DMAR)
        kernel.request(ENGINE)
        kernel.prepare()
    with kernel.kexec() as new:
        got = new.command("iommu", {"op": "iommufd-retrieve", "session": "vmm", "token": 7})
        assert got == {**made, "devices": [ENGINE]}
        assert walk(hw, [IOVA, IOVA + PAGE_SIZE]) == [buf, buf + PAGE_SIZE]
        assert hw.control(ENGINE, "read", {"iova": IOVA, "length": 6}) == b"before"
        assert hw.control(ENGINE, "write", {"iova": IOVA + 6, "data": b"+after"}) == {"ok": True}
        assert hw.control(ENGINE, "read", {"iova": IOVA, "length": 12}) == b"before+after"
        new.command("iommu", {"op": "finish", "session": "vmm"})
        if update == "live":
            new.finish()
        # Still one domain, still attached, after the session is finished.
        now = new.command("iommu", {"op": "status"})
        assert [d["id"] for d in now["domains"]] == [made["id"]]
        assert now["attachments"] == {ENGINE: made["id"]}
