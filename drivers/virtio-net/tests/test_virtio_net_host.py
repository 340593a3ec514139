"""The host's virtio-net driver through live updates: queues in place, indices resumed,
a reset device and hostile records refused, the record's versions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import luo_iommu
import luo_virtio_net
import pytest
from luo_virtio_net import VirtioNetRecord, VirtioNetState, receive, transmit, virtio_net_host
from luo_virtio_net._contract import NICS, golden
from make_virtio_net_golden import golden_record, golden_state
from structlog.testing import capture_logs

from luo_core import Kernel, State
from luo_core._logging import reset as reset_logging
from luo_core.abi import decode_record, encode_record
from luo_core.errors import BusyError, DeviceError, HandoffError
from luo_core.platform import Hardware

NIC, OTHER = NICS
RECORDS = {"luo,virtio-net-state": VirtioNetRecord}


def evolve(record: Any, **changes: Any) -> Any:
    """``attrs.evolve`` for a ``@state`` record (typed loosely: the decorator hides attrs)."""
    return attrs.evolve(record, **changes)


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    reset_logging()


@pytest.fixture
def hw() -> Iterator[Hardware]:
    with Hardware(virtio_net_host(rx_pps=0)) as hardware:
        yield hardware


def boot(hw: Hardware) -> Kernel:
    return Kernel.boot(hw, plugins=[luo_virtio_net, luo_iommu], discover=False)


def net(kernel: Kernel, name: str = NIC) -> VirtioNetState:
    state = kernel.devices[name].driver_data
    assert isinstance(state, VirtioNetState)
    return state


def test_queues_stay_in_place_and_the_driver_resumes_from_its_indices(hw: Hardware) -> None:
    kernel = boot(hw)
    dev = kernel.devices[NIC]
    hw.control(NIC, "receive", {"frames": 30})
    assert transmit(dev, 5) == 5 and receive(dev) == 30
    kernel.devices.request(NIC)
    assert kernel.devices["dmar0"] in dev.suppliers  # the IOMMU takes part with it
    kernel.prepare()
    before = net(kernel)
    region, domain = before.layout.region, before.domain

    def blackout() -> None:
        hw.control(NIC, "receive", {"frames": 100})  # the device keeps filling buffers

    new = kernel.kexec(during_blackout=blackout)
    assert new.devices[NIC].reclaimed
    after = net(new)
    assert (after.layout.region, after.domain, after.rx_frames) == (region, domain, 30)
    assert (after.rx.avail_idx, after.rx.last_used, after.tx.avail_idx) == (256 + 30, 30, 5)
    assert receive(new.devices[NIC]) == 100  # what arrived while no kernel ran
    assert transmit(new.devices[NIC], 3) == 3
    hw.sync()
    regs = hw.registers(NIC)
    assert (regs["tx_frames"], regs["rx_dropped"], regs["dma_errors"]) == (8, 0, 0)
    new.finish()
    new.devices.request(NIC)  # the next update preserves the region again
    new.prepare()
    third = new.kexec()
    assert third.devices[NIC].reclaimed and net(third).rx.last_used == 130
    third.finish()
    assert third.state is State.NORMAL


def test_the_driver_is_frozen_with_the_update_and_cancel_thaws_it(hw: Hardware) -> None:
    kernel = boot(hw)
    dev = kernel.devices[NIC]
    kernel.devices.request(NIC)
    kernel.prepare()
    kernel.freeze()
    with pytest.raises(BusyError, match="frozen"):
        transmit(dev, 1)
    kernel.cancel()
    assert transmit(dev, 1) == 1
    assert not kernel.kho.preserved or all(
        r.start != net(kernel).layout.region for r in kernel.kho.preserved
    )


def test_restore_refuses_a_device_reset_behind_the_kernels_back(hw: Hardware) -> None:
    kernel = boot(hw)
    kernel.devices.request(NIC)
    kernel.prepare()
    kernel.freeze()
    hw.reset(NIC)
    with capture_logs() as logs:
        new = kernel.kexec()
    assert not new.devices[NIC].reclaimed
    failed = [e for e in logs if e["event"] == "restore_failed" and e["device"] == NIC]
    assert failed and "reset across kexec" in str(failed[0])


def test_hostile_records_are_refused_and_nothing_is_taken(hw: Hardware) -> None:
    kernel = boot(hw)
    kernel.devices.request(NIC)
    kernel.prepare()
    new = kernel.kexec()
    dev = new.devices[NIC]
    record = net(new).record()
    ops = dev.driver.ops if dev.driver is not None else None
    assert ops is not None
    state = dev.driver_data
    rx, tx = record.queues
    other = net(new, OTHER)
    bad = {
        "a region never preserved": evolve(record, region=other.layout.region),
        "a region off by a page": evolve(record, region=record.region + 4096),
        "features it cannot run": evolve(record, features=record.features | 1 << 40),
        "another domain": evolve(record, domain=other.domain),
        "a domain never handed over": evolve(record, domain=999),
        "a queue elsewhere": evolve(record, queues=[evolve(rx, desc=0), tx]),
        "an avail index that lies": evolve(
            record, queues=[evolve(rx, avail_idx=rx.avail_idx + 1), tx]
        ),
        "a used index past the ring": evolve(
            record, queues=[evolve(rx, last_used=rx.last_used + 1000), tx]
        ),
        "one queue": evolve(record, queues=[rx]),
        "odd sizes": evolve(record, queues=[evolve(rx, size=100), tx]),
        "other buffers": evolve(record, buffer_size=2048),
    }
    for what, data in bad.items():
        with pytest.raises(HandoffError):
            ops.restore(dev, data)
        assert dev.driver_data is state, what
    ops.restore(dev, record)  # the true one still restores
    new.finish()


def test_a_reset_device_is_a_device_error() -> None:
    with Hardware(virtio_net_host(rx_pps=0)) as hw:
        kernel = boot(hw)
        kernel.devices.request(NIC)
        kernel.prepare()
        new = kernel.kexec()
        dev = new.devices[NIC]
        record = net(new).record()
        hw.reset(NIC)
        assert dev.driver is not None
        with pytest.raises(DeviceError, match="reset across kexec"):
            dev.driver.ops.restore(dev, record)


def test_v1_records_migrate_and_older_kernels_get_v1_back() -> None:
    """The golden v1 record reads as v2 with what a v1 driver ran: 128-byte buffers, no
    counts; today's writer hands v1 back (refused for buffers v1 could not run)."""
    v1 = decode_record(golden()[1], RECORDS)
    assert isinstance(v1, VirtioNetRecord)
    assert (v1.buffer_size, v1.rx_frames, v1.tx_frames) == (128, None, None)
    assert evolve(v1, rx_frames=37, tx_frames=7) == golden_state()
    assert golden_record(1) == golden()[1] and golden_record(2) == golden()[2]
    assert decode_record(golden()[2], RECORDS) == golden_state()
    with pytest.raises(DeviceError, match="cannot run buffers of 2048"):
        encode_record(evolve(golden_state(), buffer_size=2048), version=1)
