"""The example NIC as a bus master: its receive ring through the IOMMU, its MSI posted.

These tests play the kernel's part by hand — I/O page tables, root and
context tables, an interrupt-remapping table and a posted descriptor written
straight into physical memory — so that they pin the NIC's hardware and its
guest driver alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from luo_example_nic import COMPATIBLE
from luo_example_nic._guest import GuestNic, footprint
from luo_example_nic._model import DD, FRAME, RX_DESC

from luo_core.abi._dmar import ContextEntry, encode_root_entry, requester_id
from luo_core.abi._iopgtable import PageTableWriter
from luo_core.abi._irte import PostedIrte
from luo_core.abi._posted import PiDesc, drain
from luo_core.platform import BUS_MASTER, Hardware, Machine, PhysicalMemory
from luo_core.platform._atomic import AtomicWords

NIC = "0000:03:00.0"
PAGE = PhysicalMemory.PAGE_SIZE
GUEST = 0x10_0000  # guest memory: IOVA 0.. maps here
GUEST_SIZE = 0x4_0000
TABLES = 0x20_0000  # page-table pages from here
ROOT_TABLE, CONTEXT_TABLE = 0x30_0000, 0x30_1000
IR_TABLE, PI_DESC = 0x31_0000, 0x31_1000
VECTOR = 0x41


class Guest:
    """Guest memory: GPA = IOVA, at GUEST in physical memory."""

    def __init__(self, ram: PhysicalMemory) -> None:
        self.ram = ram

    def read(self, gpa: int, length: int) -> bytes:
        return self.ram.read(GUEST + gpa, length)

    def write(self, gpa: int, data: bytes) -> None:
        self.ram.write(GUEST + gpa, data)


@pytest.fixture
def hw() -> Iterator[Hardware]:
    machine = Machine(memory_size=16 << 20, scratch_size=1 << 20)
    machine.add("pci0000:00", compatible="pci-host-bridge")
    machine.add_pci(NIC, compatible=COMPATIBLE, parent="pci0000:00", iommu_group=3)
    with Hardware(machine) as hardware:
        pages = iter(range(TABLES, TABLES + 64 * PAGE, PAGE))
        tables = PageTableWriter(hardware.ram, lambda: next(pages))
        tables.map(0, GUEST, GUEST_SIZE)
        rid = requester_id(NIC) or 0
        hardware.ram.write(ROOT_TABLE + (rid >> 8) * 16, encode_root_entry(CONTEXT_TABLE))
        hardware.ram.write(
            CONTEXT_TABLE + (rid & 0xFF) * 16, ContextEntry(tables.root, 1).encode()
        )
        hardware.iommu.set_root_table(ROOT_TABLE)
        hardware.ram.write(IR_TABLE + 5 * 16, PostedIrte(vector=VECTOR, pda=PI_DESC).encode())
        hardware.ram.write(PI_DESC, PiDesc(nv=0xF2, ndst=0).encode())
        hardware.interrupts.set_table(IR_TABLE, 256)
        hardware.config(NIC)["command"] = BUS_MASTER  # what the guest's probe turns on
        yield hardware


def pending(hw: Hardware) -> list[int]:
    return drain(AtomicWords(hw.ram.view(PI_DESC, 64)))


def test_frames_land_in_guest_memory_and_the_msi_is_posted(hw: Hardware) -> None:
    guest, nic = Guest(hw.ram), GuestNic(NIC, hw.registers(NIC), 0, VECTOR)
    assert footprint(16) <= GUEST_SIZE
    nic.setup(guest, 16, irq_handle=5)
    hw.control(NIC, "receive", {"frames": 10})
    assert pending(hw) == [VECTOR]
    desc = RX_DESC.unpack(guest.read(PAGE, RX_DESC.size))
    assert desc[3] & DD and FRAME.unpack(guest.read(desc[0], FRAME.size))[0] == 0
    assert nic.interrupt(guest) == list(range(10))
    assert nic.interrupt(guest) == []  # nothing new: spurious
    stats = nic.stats(guest)
    assert (stats.received, stats.lost, stats.duplicated) == (10, 0, 0)
    assert (stats.interrupts, stats.spurious) == (2, 1)
    regs = hw.registers(NIC)
    assert (regs["rx_frames"], regs["irq_raised"], regs["dma_errors"]) == (10, 1, 0)
    assert regs["rx_tail"] == 9 and regs["rx_head"] == 10


def test_a_full_ring_drops_frames_and_the_guest_sees_the_gap(hw: Hardware) -> None:
    """e1000 semantics: the NIC owns descriptors from head up to, not including, tail."""
    guest, nic = Guest(hw.ram), GuestNic(NIC, hw.registers(NIC), 0, VECTOR)
    nic.setup(guest, 8, irq_handle=5)
    hw.control(NIC, "receive", {"frames": 20})
    assert hw.registers(NIC)["rx_dropped"] == 13
    assert nic.clean(guest) == list(range(7))
    hw.control(NIC, "receive", {"frames": 1})
    assert nic.clean(guest) == [20]
    stats = nic.stats(guest)
    assert (stats.received, stats.lost, stats.next_seq) == (8, 13, 21)


def test_a_dma_the_iommu_refuses_writes_nothing(hw: Hardware) -> None:
    guest, nic = Guest(hw.ram), GuestNic(NIC, hw.registers(NIC), 0, VECTOR)
    nic.setup(guest, 8, irq_handle=5)
    hw.ram.write(CONTEXT_TABLE + ((requester_id(NIC) or 0) & 0xFF) * 16, bytes(16))  # detached
    before = hw.ram.read(GUEST, GUEST_SIZE)
    hw.control(NIC, "receive", {"frames": 3})
    assert hw.ram.read(GUEST, GUEST_SIZE) == before
    regs = hw.registers(NIC)
    assert (regs["dma_errors"], regs["rx_dropped"], regs["irq_raised"]) == (3, 3, 0)
    assert hw.iommu.faults == 3 and pending(hw) == []


def test_an_msi_through_a_missing_entry_is_a_counted_fault(hw: Hardware) -> None:
    guest, nic = Guest(hw.ram), GuestNic(NIC, hw.registers(NIC), 0, VECTOR)
    nic.setup(guest, 8, irq_handle=6)  # entry 6 is not present
    hw.control(NIC, "receive", {"frames": 2})
    regs = hw.registers(NIC)
    assert (regs["rx_frames"], regs["irq_raised"], regs["irq_faults"]) == (2, 0, 1)
    assert hw.interrupts.faults == 1 and pending(hw) == []


def test_without_bus_mastering_the_nic_does_no_dma(hw: Hardware) -> None:
    """PCI command bit 2 off (a driver's shutdown, vfio-pci's included): every frame is
    dropped, guest memory is untouched and the IOMMU sees nothing."""
    guest, nic = Guest(hw.ram), GuestNic(NIC, hw.registers(NIC), 0, VECTOR)
    nic.setup(guest, 8, irq_handle=5)
    hw.config(NIC)["command"] = 0
    before = hw.ram.read(GUEST, GUEST_SIZE)
    hw.control(NIC, "receive", {"frames": 3})
    assert hw.ram.read(GUEST, GUEST_SIZE) == before
    assert (hw.registers(NIC)["rx_dropped"], hw.iommu.faults) == (3, 0)
