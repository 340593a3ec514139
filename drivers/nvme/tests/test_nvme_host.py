"""The host's nvme driver on real (modelled) hardware: DMA through a luo-iommu domain,
queues preserved in place, commands completing while no kernel runs and reaped after the
update, in process and across processes; its record, hostile and old."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import attrs
import pytest
from luo_iommu import iommu_of
from luo_nvme import (
    CTRL,
    DRIVER,
    NvmeRecord,
    NvmeState,
    nvme_host,
    reap,
    submit_read,
    submit_write,
    wait_idle,
)
from luo_nvme._contract import golden
from luo_nvme._driver import QDEPTH, REGION_SIZE
from luo_nvme._spec import NVME_SC_SUCCESS, nvme_cmd_read, nvme_cmd_write

from luo_core import Kernel, KernelConfig
from luo_core.abi import decode_record, encode_record
from luo_core.errors import (
    BusyError,
    DeviceError,
    HandoffError,
    InvalidArgumentError,
    NotFoundError,
)
from luo_core.kexec import KernelProcess
from luo_core.platform import Hardware, HardwareProcess

CONFIG = KernelConfig(["luo_nvme", "luo_iommu"], discover=False)
SCHEMAS = {"luo,nvme-state": NvmeRecord}


def _with(record: NvmeRecord, **changes: Any) -> NvmeRecord:
    """``attrs.evolve`` for a ``@state`` record (mypy does not see it as attrs)."""
    changed: NvmeRecord = attrs.evolve(cast(Any, record), **changes)
    return changed


def blocks(tag: str, n: int) -> bytes:
    return b"".join((f"{tag} block {i} ".encode() * 64)[:512] for i in range(n))


@pytest.fixture
def hw() -> Iterator[Hardware]:
    with Hardware(nvme_host()) as hardware:
        yield hardware


def boot(hw: Hardware) -> Kernel:
    return Kernel.boot(hw, plugins=["luo_nvme", "luo_iommu"], discover=False)


def test_data_written_through_the_iommu_reads_back_and_is_on_the_disk(hw: Hardware) -> None:
    kernel = boot(hw)
    dev = kernel.devices[CTRL]
    assert dev.driver is not None and dev.driver.name == DRIVER
    st: NvmeState = dev.driver_data
    iommu = iommu_of(kernel)
    assert iommu.attachments()[CTRL] == st.domain
    (mapping,) = iommu.domain(st.domain).mappings()
    assert (mapping.iova, mapping.phys, mapping.length) == (st.region, st.region, REGION_SIZE)
    data = blocks("rw", 16)  # 8 KiB: PRP1 and PRP2
    cid = submit_write(dev, 100, data)
    (done,) = wait_idle(dev)
    assert (done.cid, done.opcode, done.status) == (cid, nvme_cmd_write, NVME_SC_SUCCESS)
    assert hw.control(CTRL, "disk", {"lba": 100, "blocks": 16}) == data
    submit_read(dev, 100, 16)
    (done,) = wait_idle(dev)
    assert (done.opcode, done.status, done.data) == (nvme_cmd_read, 0, data)
    assert hw.iommu.faults == 0
    with pytest.raises(InvalidArgumentError, match="past the namespace"):
        submit_read(dev, st.nsze - 1, 2)
    for n in range(QDEPTH):
        submit_read(dev, n, 1)
    with pytest.raises(BusyError, match="in flight already"):
        submit_read(dev, 0, 1)
    assert len(wait_idle(dev)) == QDEPTH
    assert dev.driver is not None
    ops = dev.driver.ops
    record = ops.freeze(dev, st.record())
    with pytest.raises(BusyError, match="stopped for a live update"):
        submit_read(dev, 0, 1)  # frozen: no I/O until the update ends or is cancelled
    ops.cancel(dev, record)
    submit_read(dev, 0, 1)
    assert [c.status for c in wait_idle(dev)] == [0]


def test_commands_rung_before_freeze_complete_in_the_blackout_and_are_reaped(
    hw: Hardware,
) -> None:
    kernel = boot(hw)
    dev = kernel.devices[CTRL]
    old = blocks("before", 8)
    submit_write(dev, 0, old)
    wait_idle(dev)
    hw.control(CTRL, "hold", {"on": True})  # the controller is slow: nothing completes yet
    fresh = blocks("in flight", 16)
    submit_write(dev, 200, fresh)
    submit_read(dev, 0, 8)
    assert reap(dev) == []
    kernel.devices.request(CTRL)
    kernel.prepare()
    handed = dev.driver_data.record()
    assert [(c.opcode, c.slba) for c in handed.inflight] == [
        (nvme_cmd_write, 200),
        (nvme_cmd_read, 0),
    ]
    released: list[Any] = []

    def blackout() -> None:  # no kernel: the controller runs both commands, posts both CQEs
        released.append(hw.control(CTRL, "hold", {"on": False}))

    new = kernel.kexec(during_blackout=blackout)
    assert released == [{"completed": 2}]
    dev = new.devices[CTRL]
    assert dev.reclaimed
    st: NvmeState = dev.driver_data
    assert st.reaped_in_restore == 2 and not st.inflight
    got = reap(dev)
    assert [(c.opcode, c.slba, c.status) for c in got] == [
        (nvme_cmd_write, 200, 0),
        (nvme_cmd_read, 0, 0),
    ]
    assert got[1].data == old
    submit_read(dev, 200, 16)
    (done,) = wait_idle(dev)
    assert done.data == fresh  # written in the blackout, read back after it
    new.finish()


def test_a_controller_reset_across_kexec_is_refused(hw: Hardware) -> None:
    kernel = boot(hw)
    kernel.devices.request(CTRL)
    kernel.prepare()
    new = kernel.kexec(during_blackout=lambda: hw.reset(CTRL))
    dev = new.devices[CTRL]
    assert not dev.reclaimed and dev.driver_data is None


def test_hostile_records_are_refused_with_nothing_restored(hw: Hardware) -> None:
    kernel = boot(hw)
    dev = kernel.devices[CTRL]
    submit_write(dev, 8, blocks("x", 1))
    wait_idle(dev)
    kernel.devices.request(CTRL)
    kernel.prepare()
    good: NvmeRecord = dev.driver_data.record()  # what prepare handed over, nothing since
    new = kernel.kexec()
    new_dev = new.devices[CTRL]
    ops = new_dev.driver.ops  # type: ignore[union-attr]
    before = new_dev.driver_data
    assert before.record() == good
    hostile = [
        (_with(good, region=good.region + 0x1000), HandoffError, "not where|preserved"),
        (_with(good, region_size=0x1000), HandoffError, "is not ours"),
        (_with(good, region=1 << 40), HandoffError, "outside physical memory"),
        (_with(good, sq=good.cq), HandoffError, "not where the driver puts it"),
        (_with(good, sq_tail=64), HandoffError, "past a queue"),
        (_with(good, phase=2), HandoffError, "phase"),
        (_with(good, nsze=0), HandoffError, "namespace size"),
        (_with(good, domain=77), NotFoundError, "domain 77"),
        (_with(good, written=[*good.written, *good.written]), HandoffError, "twice"),
        (_with(good, sq_tail=(good.sq_tail + 1) % 64), DeviceError, "doorbells"),
        (_with(good, asq=good.acq, acq=good.asq), HandoffError, "not where"),
    ]
    for record, error, match in hostile:
        with pytest.raises(error, match=match):
            ops.restore(new_dev, record)
        assert new_dev.driver_data is before
    ops.restore(new_dev, good)  # the honest record still restores
    new.finish()


def test_the_golden_records_read_and_v1_migrates_with_no_checksums() -> None:
    v1 = decode_record(golden()[1], SCHEMAS)
    v2 = decode_record(golden()[2], SCHEMAS)
    assert isinstance(v1, NvmeRecord) and isinstance(v2, NvmeRecord)
    assert v1.written == [] and v2.written != []
    assert _with(v1, written=v2.written) == v2
    assert encode_record(v2, version=1) == golden()[1]
    assert encode_record(v2) == golden()[2]


def test_data_crosses_a_cross_process_live_update_with_commands_completed_in_the_blackout() -> (
    None
):
    with HardwareProcess(nvme_host()) as machine:
        old = KernelProcess.boot(machine, CONFIG)
        before = blocks("cross", 16)
        old.command("nvme-write", {"device": CTRL, "slba": 32, "data": before})
        assert [
            d["status"] for d in old.command("nvme-reap", {"device": CTRL, "wait": True})["done"]
        ] == [0]
        machine.control(CTRL, "hold", {"on": True})
        during = blocks("blackout", 16)
        old.command("nvme-write", {"device": CTRL, "slba": 64, "data": during})
        old.command("nvme-read", {"device": CTRL, "slba": 32, "blocks": 16})
        checksum_before = old.command("nvme-state", {"device": CTRL})["checksum"]
        old.request(CTRL)
        old.prepare()
        released: list[Any] = []
        with old.kexec(
            during_blackout=lambda: released.append(machine.control(CTRL, "hold", {"on": False}))
        ) as new:
            assert released == [{"completed": 2}]
            state = new.command("nvme-state", {"device": CTRL})
            assert state["reaped_in_restore"] == 2 and state["inflight"] == []
            assert state["checksum"] != checksum_before  # the blackout's write was noted
            done = new.command("nvme-reap", {"device": CTRL})["done"]
            assert [(d["slba"], d["status"]) for d in done] == [(64, 0), (32, 0)]
            assert done[1]["data"] == before
            new.command("nvme-read", {"device": CTRL, "slba": 64, "blocks": 16})
            (got,) = new.command("nvme-reap", {"device": CTRL, "wait": True})["done"]
            assert got["data"] == during
            new.finish()
