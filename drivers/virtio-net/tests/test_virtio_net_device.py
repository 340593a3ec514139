"""The virtio-net device through a real Hardware: negotiation, its queues by DMA through an
IOMMU domain luo-iommu built, MSIs posted through interrupt remapping, event suppression."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import luo_iommu
import pytest
from luo_iommu import iommu_of
from luo_kvm import GuestContext
from luo_virtio_net import COMPATIBLE
from luo_virtio_net._abi import (
    ACKNOWLEDGE,
    DRIVER,
    DRIVER_OK,
    F_EVENT_IDX,
    F_VERSION_1,
    FEATURES_OK,
    NEEDS_RESET,
    RingLayout,
    device_features,
    negotiate,
    queue_config,
    setup_queue,
    sync,
    write_features,
    write_sync,
)
from luo_virtio_net._guest import RX_SIZE, GuestVirtioNet, read_state

from luo_core import Kernel, Machine
from luo_core.abi._irte import PostedIrte
from luo_core.abi._posted import PiDesc, drain
from luo_core.errors import DeviceError
from luo_core.platform import HOST_BRIDGE, Hardware
from luo_core.platform._atomic import AtomicWords

NIC = "0000:00:03.0"
GUEST_SIZE = 1 << 20
BASE = 0x1000  # the guest driver's memory, after the guest's own page
HANDLE, VECTOR = 5, 0x41


def host() -> Machine:
    machine = Machine(memory_size=64 << 20)
    machine.add("dmar0", compatible="intel,vtd")
    machine.add("pci0000:00", compatible=HOST_BRIDGE)
    machine.add_pci(NIC, compatible=COMPATIBLE, parent="pci0000:00")
    return machine


class Guest:
    """Guest memory: GPA = IOVA, mapped by the IOMMU domain to kernel pages at ``phys``."""

    def __init__(self, kernel: Kernel, phys: int) -> None:
        self.kernel, self.phys = kernel, phys

    def read(self, gpa: int, length: int) -> bytes:
        return self.kernel.memory.read(self.phys + gpa, length)

    def write(self, gpa: int, data: bytes) -> None:
        self.kernel.memory.write(self.phys + gpa, data)


@pytest.fixture
def rig() -> Iterator[tuple[Hardware, Kernel, Guest, int]]:
    """A kernel with luo-iommu only (the function has no host driver): guest memory mapped
    at IOVA 0 in a domain the function is attached to, an IR table posting HANDLE."""
    with Hardware(host()) as hw:
        kernel = Kernel.boot(hw, plugins=[luo_iommu], discover=False)
        iommu = iommu_of(kernel)
        phys = kernel.mm.alloc(GUEST_SIZE)
        kernel.memory.fill(phys, GUEST_SIZE)
        domain = iommu.domain_alloc()
        domain.map(0, phys, GUEST_SIZE)
        iommu.attach(NIC, domain)
        tables = kernel.mm.alloc(8192)
        kernel.memory.fill(tables, 8192)
        kernel.memory.write(
            tables + HANDLE * 16, PostedIrte(vector=VECTOR, pda=tables + 4096).encode()
        )
        kernel.memory.write(tables + 4096, PiDesc(nv=0xF2, ndst=0).encode())
        hw.interrupts.set_table(tables, 256)
        kernel.devices[NIC].set_bus_master(True)  # what vfio-pci does for the guest
        yield hw, kernel, Guest(kernel, phys), tables + 4096


def pending(hw: Hardware, pda: int) -> list[int]:
    return drain(AtomicWords(hw.ram.view(pda, 64)))


def driver(kernel: Kernel) -> GuestVirtioNet:
    return GuestVirtioNet(NIC, kernel.devices[NIC].regs, BASE, VECTOR, 0)


def test_features_ok_is_refused_for_features_the_device_did_not_offer(rig: Any) -> None:
    """drivers/virtio/virtio.c virtio_features_ok: the driver sets FEATURES_OK and reads it
    back; a device that cannot accept the features leaves it clear."""
    hw, kernel, _, _ = rig
    regs = kernel.devices[NIC].regs
    for bad in (1 << F_VERSION_1 | 1 << 40, 1 << F_EVENT_IDX):  # unknown bit; no VERSION_1
        write_sync(regs, "device_status", 0)
        write_sync(regs, "device_status", ACKNOWLEDGE | DRIVER)
        write_features(regs, bad, NIC)
        write_sync(regs, "device_status", ACKNOWLEDGE | DRIVER | FEATURES_OK)
        assert regs["device_status"] == ACKNOWLEDGE | DRIVER
    assert negotiate(regs, 1 << F_VERSION_1 | 1 << 40, NIC) == 1 << F_VERSION_1
    assert regs["device_status"] == ACKNOWLEDGE | DRIVER | FEATURES_OK
    assert hw.control(NIC, "queues")["features"] == 1 << F_VERSION_1


def test_driver_ok_without_features_ok_needs_a_reset(rig: Any) -> None:
    _, kernel, _, _ = rig
    regs = kernel.devices[NIC].regs
    write_sync(regs, "device_status", ACKNOWLEDGE | DRIVER | DRIVER_OK)
    assert regs["device_status"] & NEEDS_RESET
    write_sync(regs, "device_status", 0)
    assert regs["device_status"] == 0 and device_features(regs, NIC) >> F_VERSION_1 & 1


def test_queue_select_windows_each_queue_and_an_enabled_queue_keeps_its_configuration(
    rig: Any,
) -> None:
    """The window shows the selected queue's configuration (vp_modern_queue_address writes
    it under queue_select); once enabled it no longer changes."""
    _, kernel, _, _ = rig
    regs = kernel.devices[NIC].regs
    negotiate(regs, 1 << F_VERSION_1, NIC)
    rx, tx = RingLayout.at(0x10000, 64), RingLayout.at(0x20000, 32)
    setup_queue(regs, 0, rx, 7, NIC)
    write_sync(regs, "queue_select", 1)
    assert (regs["queue_size"], regs["queue_enable"], regs["queue_notify_off"]) == (1024, 0, 1)
    regs["queue_desc"] = tx.desc  # not enabled: stored when the window moves away
    write_sync(regs, "queue_select", 0)
    assert queue_config(regs, 0, NIC) == (64, rx.desc, rx.driver, rx.device, True)
    assert regs["queue_msix_vector"] == 7
    regs["queue_desc"] = 0xDEAD000  # an enabled queue: the device keeps its own
    write_sync(regs, "queue_select", 1)
    assert regs["queue_desc"] == tx.desc
    assert queue_config(regs, 0, NIC)[1] == rx.desc
    write_sync(regs, "queue_select", 5)  # no such queue: queue_size reads 0
    assert regs["queue_size"] == 0
    with pytest.raises(DeviceError, match="already enabled"):
        setup_queue(regs, 0, rx, 7, NIC)


def test_frames_land_in_the_guests_rings_and_the_guest_transmits(rig: Any) -> None:
    hw, kernel, mem, pda = rig
    guest, nic = GuestContext(mem, threading.Lock()), driver(kernel)
    nic.setup(guest, HANDLE)
    hw.control(NIC, "receive", {"frames": 10})
    assert pending(hw, pda) == [VECTOR]
    nic.interrupt(VECTOR, guest)
    nic.interrupt(VECTOR + 1, guest)  # not its vector: ignored
    nic.interrupt(VECTOR, guest)  # nothing new: spurious
    counters = guest.counters()
    assert (counters.packets_received, counters.packets_lost, counters.interrupts_spurious) == (
        10,
        0,
        1,
    )
    for _ in range(3):
        nic.poll(guest)
    hw.sync()
    nic.poll(guest)  # reaps the 12 the device returned, sends 4 more
    hw.sync()
    regs = hw.registers(NIC)
    assert (regs["rx_frames"], regs["tx_frames"], regs["dma_errors"]) == (10, 16, 0)
    state = read_state(mem, BASE)
    assert (state.received, state.tx_sent, state.tx_done, state.rx_avail) == (10, 16, 12, 1034)


def test_a_full_receive_ring_drops_frames_and_the_guest_sees_the_gap(rig: Any) -> None:
    """Without a buffer a frame is dropped and counted (rx_dropped); the guest counts the gap."""
    hw, kernel, mem, _ = rig
    guest, nic = GuestContext(mem, threading.Lock()), driver(kernel)
    nic.setup(guest, HANDLE)
    hw.control(NIC, "receive", {"frames": RX_SIZE + 5})
    assert hw.registers(NIC)["rx_dropped"] == 5
    nic.interrupt(VECTOR, guest)  # takes every frame, gives every buffer back
    hw.control(NIC, "receive", {"frames": 1})
    nic.interrupt(VECTOR, guest)
    counters = guest.counters()
    assert (counters.packets_received, counters.packets_lost) == (RX_SIZE + 1, 5)


def test_event_index_suppresses_interrupts_until_the_driver_asks_again(rig: Any) -> None:
    """drivers/virtio/virtio_ring.c virtqueue_enable_cb_prepare_split writes used_event =
    last_used_idx; the device raises only when its used index crosses it (vring_need_event).
    The transmit queue is disabled with used_event 0 (virtqueue_disable_cb_split)."""
    hw, kernel, mem, pda = rig
    guest, nic = GuestContext(mem, threading.Lock()), driver(kernel)
    nic.setup(guest, HANDLE)
    hw.control(NIC, "receive", {"frames": 1})
    assert pending(hw, pda) == [VECTOR]
    for _ in range(5):  # the driver has not looked yet: no more interrupts
        hw.control(NIC, "receive", {"frames": 1})
    regs = hw.registers(NIC)
    assert (regs["irq_raised"], regs["irq_suppressed"]) == (1, 5) and pending(hw, pda) == []
    nic.interrupt(VECTOR, guest)  # reaps six, asks for the next
    hw.control(NIC, "receive", {"frames": 1})
    assert pending(hw, pda) == [VECTOR] and regs["irq_raised"] == 2
    nic.poll(guest)
    hw.sync()
    # used_event 0, Linux's "disabled", is crossed once: by the first completion, at 0 ...
    assert regs["tx_frames"] == 4 and regs["irq_raised"] == 3
    for _ in range(4):
        nic.poll(guest)
        hw.sync()
    assert regs["tx_frames"] == 20 and regs["irq_raised"] == 3  # ... and not again
    assert read_state(mem, BASE).tx_notifies >= 1


def test_a_dma_the_iommu_refuses_is_counted_not_a_crash(rig: Any) -> None:
    hw, kernel, mem, _ = rig
    guest, nic = GuestContext(mem, threading.Lock()), driver(kernel)
    nic.setup(guest, HANDLE)
    hw.sync()  # the doorbells setup rang are handled before the function loses its domain
    iommu_of(kernel).detach(NIC)
    hw.control(NIC, "receive", {"frames": 3})
    regs = hw.registers(NIC)
    assert regs["dma_errors"] == 3 and regs["rx_dropped"] == 3 and regs["rx_frames"] == 0
    assert hw.iommu.faults >= 3
    hw.control(NIC, "receive", {"frames": 1})  # still alive
    assert regs["rx_seq"] == 4


def test_without_bus_mastering_the_function_does_no_dma(rig: Any) -> None:
    """PCI command bit 2 off (a driver's shutdown, vfio-pci's included): frames are
    dropped and counted, and the IOMMU sees no request."""
    hw, kernel, mem, _ = rig
    guest, nic = GuestContext(mem, threading.Lock()), driver(kernel)
    nic.setup(guest, HANDLE)
    hw.sync()
    kernel.devices[NIC].set_bus_master(False)
    hw.control(NIC, "receive", {"frames": 3})
    regs = hw.registers(NIC)
    assert (regs["rx_dropped"], regs["rx_frames"], hw.iommu.faults) == (3, 0, 0)


def test_a_descriptor_loop_breaks_the_device_until_reset(rig: Any) -> None:
    """QEMU's virtqueue_pop refuses a looping chain with virtio_error: NEEDS_RESET."""
    hw, kernel, mem, _ = rig
    guest, nic = GuestContext(mem, threading.Lock()), driver(kernel)
    nic.setup(guest, HANDLE)
    ring = nic.layout.rx
    from luo_virtio_net._abi import DESC_F_NEXT, DESC_F_WRITE, VRING_DESC

    mem.write(
        ring.desc_at(0), VRING_DESC.pack(nic.layout.rx_buffer(0), 8, DESC_F_WRITE | DESC_F_NEXT, 0)
    )
    hw.control(NIC, "receive", {"frames": 2})
    regs = hw.registers(NIC)
    assert regs["desc_errors"] == 1 and regs["device_status"] & NEEDS_RESET
    assert regs["rx_dropped"] == 2
    sync(kernel.devices[NIC].regs)
