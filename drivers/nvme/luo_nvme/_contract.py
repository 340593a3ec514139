"""The pack's contract: what ``luo contract luo-nvme`` exercises, and the host it runs on."""

from __future__ import annotations

from importlib import resources
from typing import Any, Final

from luo_core import Device, Machine
from luo_core.errors import DeviceError
from luo_core.platform import HOST_BRIDGE, PCI_BRIDGE
from luo_core.testing import Contract
from luo_nvme._driver import (
    DRIVER,
    NvmeState,
    checksum,
    submit_read,
    submit_write,
    wait_idle,
)
from luo_nvme._spec import COMPATIBLE, LBA_SIZE, NVME_CSTS_RDY, sq_doorbell

CTRL: Final = "0000:01:00.0"
BLOCKS: Final = 16
"""Each workload round writes 8 KiB (PRP1 and PRP2) and reads it back."""


def nvme_host(ns_mib: int = 1) -> Machine:
    """dmar0 and an NVMe controller behind a bridge, the controller consuming dmar0."""
    machine = Machine(memory_size=64 << 20, scratch_size=4 << 20)
    machine.add("dmar0", compatible="intel,vtd")
    machine.add("pci0000:00", compatible=HOST_BRIDGE)
    machine.add_pci("0000:00:01.0", compatible=PCI_BRIDGE, parent="pci0000:00")
    machine.add_pci(CTRL, compatible=COMPATIBLE, parent="0000:00:01.0", params={"ns_mib": ns_mib})
    machine.link("dmar0", CTRL)  # its DMA goes through dmar0: restored after it
    return machine


def block_data(slba: int, round_: int) -> bytes:
    """What round ``round_`` writes at ``slba``: recognisable, different per block."""
    return b"".join(
        (f"luo-nvme lba {slba + n} round {round_} ".encode() * 32)[:LBA_SIZE]
        for n in range(BLOCKS)
    )


def workload(dev: Device) -> None:
    """Write 16 blocks, wait for them, read them back and check them."""
    st: NvmeState = dev.driver_data
    round_ = len(st.written) // BLOCKS
    slba = (round_ * BLOCKS) % max(BLOCKS, st.nsze - BLOCKS)
    data = block_data(slba, round_)
    submit_write(dev, slba, data)
    wait_idle(dev)
    submit_read(dev, slba, BLOCKS)
    (done,) = wait_idle(dev)
    if done.status or done.data != data:
        raise DeviceError(f"{dev.name}: blocks {slba}+{BLOCKS} did not read back")


def snapshot(dev: Device) -> Any:
    """The queues the driver owns, and a checksum of every block it wrote."""
    st: NvmeState = dev.driver_data
    return {
        "region": st.region,
        "domain": st.domain,
        "admin": [st.admin_sq_tail, st.admin_cq_head, st.admin_phase],
        "io": [st.sq_tail, st.cq_head, st.phase],
        "inflight": sorted(st.inflight),
        "written": len(st.written),
        "checksum": checksum(dev),
        "hw_sq_tail": dev.regs[sq_doorbell(1)],
        "ready": bool(dev.regs["csts"] & NVME_CSTS_RDY),
    }


def golden() -> dict[int, bytes]:
    """Records this and older versions of the pack wrote (regenerate: see README)."""
    folder = resources.files(__package__).joinpath("golden")
    return {v: folder.joinpath(f"nvme-state-v{v}.luor").read_bytes() for v in (1, 2)}


def contracts() -> list[Contract]:
    return [
        Contract(
            name=DRIVER,
            machine=nvme_host,
            devices=[CTRL],
            workload=workload,
            snapshot=snapshot,
            capabilities={"golden-records"},
            golden=golden(),
            # Contract.requires converts with ``tuple``, whose signature mypy cannot bind
            requires=("luo_iommu",),
        )
    ]
