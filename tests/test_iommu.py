"""DMA through the IOMMU: the VT-d page-table format, translation, faults, hostile tables.

The kernel side writes page tables with ``PageTableWriter``; the hardware
walks them.  A DMA that faults anywhere is counted, logged and moves no byte;
garbage in the tables is a typed fault, never a crash.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from luo_core import hookimpl
from luo_core.abi._dmar import (
    PAIR,
    ContextEntry,
    decode_context_entry,
    decode_root_entry,
    encode_root_entry,
    requester_id,
)
from luo_core.abi._iopgtable import (
    ENTRY,
    IOVA_BITS,
    PAGE_SIZE,
    PTE_READ,
    PTE_WRITE,
    PageTableWriter,
    decode_pte,
    encode_pte,
    level_index,
    reserved_mask,
)
from luo_core.errors import ExistsError, InvalidArgumentError, IommuFaultError
from luo_core.platform import (
    DeviceModel,
    Fault,
    FaultReason,
    Hardware,
    Iommu,
    Machine,
    PhysicalMemory,
    Requester,
)

PAGES = 64
TABLES_FROM = 32
"""Pages below this hold data; table pages are allocated from here up."""
BIT62 = 1 << 62


def allocator(first: int = TABLES_FROM) -> Callable[[], int]:
    pages = itertools.count(first)
    return lambda: next(pages) * PAGE_SIZE


@pytest.fixture
def mem() -> Iterator[PhysicalMemory]:
    with PhysicalMemory(PAGES * PAGE_SIZE) as memory:
        yield memory


@pytest.fixture
def tables(mem: PhysicalMemory) -> PageTableWriter:
    return PageTableWriter(mem, allocator())


def entry_at(mem: PhysicalMemory, phys: int) -> int:
    return int(ENTRY.unpack(mem.read(phys, ENTRY.size))[0])


# -- the format ----------------------------------------------------------------------


def test_an_entry_is_vtd_second_level_read_write_and_address_bits() -> None:
    """Linux ``drivers/iommu/intel/iommu.h``: ``DMA_PTE_READ`` is bit 0,
    ``DMA_PTE_WRITE`` bit 1, ``dma_pte_addr`` the page-aligned address up to
    the address width (52 bits here)."""
    assert (PTE_READ, PTE_WRITE) == (1, 2)
    assert encode_pte(0x1234_5000, read=True, write=False) == 0x1234_5001
    assert encode_pte(0x1234_5000, read=False, write=True) == 0x1234_5002
    top = (1 << 52) - PAGE_SIZE
    assert encode_pte(top, read=True, write=True) == top | 3
    pte = decode_pte(top | 3 | 0x7C | (0x3FF << 52))  # ignored bits do not leak into the address
    assert (pte.addr, pte.read, pte.write, pte.present) == (top, True, True, True)
    assert not decode_pte(0xABC000).present
    for bad in (0x1234_5001, 1 << 52, -PAGE_SIZE):
        with pytest.raises(InvalidArgumentError):
            encode_pte(bad, read=True, write=True)


def test_reserved_bits_are_qemus_legacy_mode_masks() -> None:
    """QEMU ``hw/i386/intel_iommu_internal.h`` ``VTD_SPTE_PAGE_L{1..4}_RSVD_MASK``
    with a 52-bit address width: bit 11 everywhere, bit 7 at level 4, bit 62
    (``VTD_SL_IGN_COM`` leaves 52..61 and 63 ignored).  Bit 7 at levels 2-3 is
    a superpage, which luo does not model: reserved too."""
    assert reserved_mask(1) == 0x800 | BIT62
    assert reserved_mask(2) == reserved_mask(3) == reserved_mask(4) == 0x880 | BIT62
    with pytest.raises(InvalidArgumentError):
        reserved_mask(5)


def test_an_iova_is_four_9_bit_indices_above_a_12_bit_offset() -> None:
    """QEMU ``vtd_iova_level_offset``: level n uses IOVA bits 12+9(n-1) .. 20+9(n-1)."""
    iova = (0x1A5 << 39) | (0x0F0 << 30) | (0x003 << 21) | (0x1FF << 12) | 0x123
    assert [level_index(iova, n) for n in (4, 3, 2, 1)] == [0x1A5, 0x0F0, 0x003, 0x1FF]
    assert IOVA_BITS == 48


def test_the_writer_lays_tables_out_as_linux_does(
    mem: PhysicalMemory, tables: PageTableWriter
) -> None:
    """Read back as raw bytes, not through the walker: non-leaf entries are R|W
    (Linux ``pfn_to_dma_pte``), the leaf carries the mapping's rights."""
    iova = (3 << 39) | (5 << 30) | (7 << 21) | (9 << 12)
    tables.map(iova, 4 * PAGE_SIZE, PAGE_SIZE, read=True, write=False)
    assert tables.root == TABLES_FROM * PAGE_SIZE
    table = tables.root
    for index in (3, 5, 7):
        value = entry_at(mem, table + index * 8)
        assert value & 0xFFF == PTE_READ | PTE_WRITE
        table = value & ~0xFFF
    assert entry_at(mem, table + 9 * 8) == 4 * PAGE_SIZE | PTE_READ
    assert table == (TABLES_FROM + 3) * PAGE_SIZE  # root + three new tables, no more


# -- translation and DMA -------------------------------------------------------------

RIGHTS = st.sampled_from([(True, True), (True, False), (False, True)])


@settings(max_examples=60, deadline=None)
@given(
    iova_page=st.integers(0, (1 << 36) - 8),
    phys_page=st.integers(0, TABLES_FROM - 8),
    pages=st.integers(1, 8),
    rights=RIGHTS,
    offset=st.integers(0, PAGE_SIZE - 1),
)
def test_map_then_translate_round_trips(
    iova_page: int, phys_page: int, pages: int, rights: tuple[bool, bool], offset: int
) -> None:
    read, write = rights
    with PhysicalMemory(PAGES * PAGE_SIZE) as mem:
        tables = PageTableWriter(mem, allocator())
        iova, phys = iova_page * PAGE_SIZE, phys_page * PAGE_SIZE
        tables.map(iova, phys, pages * PAGE_SIZE, read=read, write=write)
        iommu = Iommu(mem)
        denied = 0
        for n in range(pages):
            at = iova + n * PAGE_SIZE + offset
            for access, allowed in ((False, read), (True, write)):
                if allowed:
                    got = iommu.translate(tables.root, at, write=access)
                    assert got == phys + n * PAGE_SIZE + offset
                else:
                    denied += 1
                    with pytest.raises(IommuFaultError):
                        iommu.translate(tables.root, at, write=access)
        for outside in (iova - PAGE_SIZE, iova + pages * PAGE_SIZE):
            if 0 <= outside < 1 << IOVA_BITS:
                denied += 1
                with pytest.raises(IommuFaultError):
                    iommu.translate(tables.root, outside, write=False)
        assert iommu.faults == denied


def test_dma_crosses_pages_into_non_contiguous_physical_pages(
    mem: PhysicalMemory, tables: PageTableWriter
) -> None:
    iova = 0x7F00_0000
    for n, phys_page in enumerate((7, 3, 11)):
        tables.map(iova + n * PAGE_SIZE, phys_page * PAGE_SIZE, PAGE_SIZE)
    iommu = Iommu(mem)
    data = bytes(range(256)) * 40  # 10240 bytes: the tail of page 0, all of 1, the head of 2
    iommu.dma_write(tables.root, iova + 1000, data, device="nic")
    assert mem.read(7 * PAGE_SIZE + 1000, PAGE_SIZE - 1000) == data[: PAGE_SIZE - 1000]
    assert mem.read(3 * PAGE_SIZE, PAGE_SIZE) == data[PAGE_SIZE - 1000 : 2 * PAGE_SIZE - 1000]
    assert mem.read(11 * PAGE_SIZE, 10240 - (2 * PAGE_SIZE - 1000)) == data[2 * PAGE_SIZE - 1000 :]
    assert mem.read(7 * PAGE_SIZE, 1000) == bytes(1000)
    assert mem.read(8 * PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE), "contiguous next page touched"
    assert iommu.dma_read(tables.root, iova + 1000, len(data), device="nic") == data
    assert iommu.dma_read(tables.root, iova, 0) == b""
    assert iommu.faults == 0


def test_a_write_into_an_unmapped_page_faults_and_writes_nothing(
    mem: PhysicalMemory, tables: PageTableWriter
) -> None:
    tables.map(0x10000, 5 * PAGE_SIZE, PAGE_SIZE)
    mem.write(5 * PAGE_SIZE, b"\xee" * PAGE_SIZE)
    iommu = Iommu(mem)
    with pytest.raises(IommuFaultError) as info:
        iommu.dma_write(tables.root, 0x10000 + 100, b"\x11" * PAGE_SIZE, device="nvme0")
    assert info.value.errno == errno.EFAULT
    assert (info.value.device, info.value.iova, info.value.write) == ("nvme0", 0x11000, True)
    assert "nvme0: IOMMU fault on write at IOVA 0x11000" in str(info.value)
    assert mem.read(5 * PAGE_SIZE, PAGE_SIZE) == b"\xee" * PAGE_SIZE, "a faulting DMA wrote"
    assert iommu.faults == 1
    assert iommu.fault_log == [Fault("nvme0", 0x11000, True, FaultReason.WRITE)]


def test_a_write_to_a_read_only_mapping_faults_and_writes_nothing(
    mem: PhysicalMemory, tables: PageTableWriter
) -> None:
    tables.map(0, 2 * PAGE_SIZE, 2 * PAGE_SIZE, read=True, write=False)
    mem.write(2 * PAGE_SIZE, b"ro" * PAGE_SIZE)
    before = mem.read(0, PAGES * PAGE_SIZE)
    iommu = Iommu(mem)
    with pytest.raises(IommuFaultError, match="write not permitted"):
        iommu.dma_write(tables.root, 10, b"x" * 10, device="dev")
    assert mem.read(0, PAGES * PAGE_SIZE) == before
    assert iommu.dma_read(tables.root, 0, 4, device="dev") == b"roro"
    with pytest.raises(IommuFaultError, match="read not permitted"):
        iommu.dma_read(tables.root, 2 * PAGE_SIZE - 2, 4, device="dev")
    with pytest.raises(IommuFaultError) as info:
        iommu.translate(tables.root, 3 * PAGE_SIZE + 0x123, write=False, device="dev")
    assert info.value.iova == 3 * PAGE_SIZE, "VT-d records the faulting page, not the byte"
    assert iommu.fault_log == [
        Fault("dev", 0, True, FaultReason.WRITE),
        Fault("dev", 2 * PAGE_SIZE, False, FaultReason.READ),
        Fault("dev", 3 * PAGE_SIZE, False, FaultReason.READ),
    ]


def test_unmap_takes_the_pages_away(mem: PhysicalMemory, tables: PageTableWriter) -> None:
    tables.map(0x40000, 0, 3 * PAGE_SIZE)
    tables.unmap(0x41000, PAGE_SIZE)
    tables.unmap(0x900000, PAGE_SIZE)  # never mapped: nothing to do
    iommu = Iommu(mem)
    assert iommu.translate(tables.root, 0x40000, write=True) == 0
    assert iommu.translate(tables.root, 0x42000, write=True) == 2 * PAGE_SIZE
    with pytest.raises(IommuFaultError):
        iommu.translate(tables.root, 0x41000, write=False)
    tables.map(0x41000, 9 * PAGE_SIZE, PAGE_SIZE)
    assert iommu.translate(tables.root, 0x41008, write=False) == 9 * PAGE_SIZE + 8


def test_the_writer_refuses_a_mapping_over_a_mapped_page_before_writing(
    mem: PhysicalMemory, tables: PageTableWriter
) -> None:
    tables.map(0x5000, 0, PAGE_SIZE)
    before = mem.read(0, PAGES * PAGE_SIZE)
    with pytest.raises(ExistsError, match="0x5000 is already mapped"):
        tables.map(0x3000, 8 * PAGE_SIZE, 3 * PAGE_SIZE)
    assert mem.read(0, PAGES * PAGE_SIZE) == before


@pytest.mark.parametrize(
    ("iova", "phys", "length", "rights"),
    [
        (0x800, 0, PAGE_SIZE, (True, True)),
        (0, 0x800, PAGE_SIZE, (True, True)),
        (0, 0, 100, (True, True)),
        (0, 0, 0, (True, True)),
        ((1 << 48) - PAGE_SIZE, 0, 2 * PAGE_SIZE, (True, True)),
        (0, (1 << 52) - PAGE_SIZE, 2 * PAGE_SIZE, (True, True)),
        (0, 0, PAGE_SIZE, (False, False)),
    ],
)
def test_the_writer_refuses_bad_arguments(
    tables: PageTableWriter, iova: int, phys: int, length: int, rights: tuple[bool, bool]
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        tables.map(iova, phys, length, read=rights[0], write=rights[1])
    assert info.value.errno == errno.EINVAL


# -- faults and hostile tables -------------------------------------------------------


def test_the_fault_log_is_bounded_and_the_count_is_not(mem: PhysicalMemory) -> None:
    iommu = Iommu(mem)
    root = TABLES_FROM * PAGE_SIZE  # an empty table: nothing is mapped
    for n in range(Iommu.LOG_SIZE + 36):
        with pytest.raises(IommuFaultError):
            iommu.translate(root, n * PAGE_SIZE, write=False, device="d")
    assert iommu.faults == Iommu.LOG_SIZE + 36
    log = iommu.fault_log
    assert len(log) == Iommu.LOG_SIZE
    assert log[0].iova == 36 * PAGE_SIZE and log[-1].iova == (Iommu.LOG_SIZE + 35) * PAGE_SIZE


@pytest.mark.parametrize(
    ("root", "iova", "reason"),
    [
        (PAGES * PAGE_SIZE, 0, FaultReason.TABLE),  # the root beyond memory
        (TABLES_FROM * PAGE_SIZE + 8, 0, FaultReason.TABLE),  # a misaligned root
        (-PAGE_SIZE, 0, FaultReason.TABLE),
        (TABLES_FROM * PAGE_SIZE, 1 << 48, FaultReason.WIDTH),
        (TABLES_FROM * PAGE_SIZE, -1, FaultReason.WIDTH),
    ],
)
def test_a_bad_root_or_iova_is_a_fault(
    mem: PhysicalMemory, root: int, iova: int, reason: FaultReason
) -> None:
    iommu = Iommu(mem)
    with pytest.raises(IommuFaultError) as info:
        iommu.translate(root, iova, write=True, device="d")
    assert info.value.reason == reason
    assert iommu.fault_log == [Fault("d", iova, True, reason)]


@pytest.mark.parametrize("level", [4, 3, 2, 1])
@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda v: (v & 0xFFF) | (PAGES * PAGE_SIZE), "outside"),
        (lambda v: v | (1 << 51), "outside"),
        (lambda v: v | 0x800, FaultReason.RESERVED),
        (lambda v: v | BIT62, FaultReason.RESERVED),
        (lambda v: v & ~PTE_WRITE, FaultReason.WRITE),
    ],
    ids=["beyond-memory", "bit-51", "snoop-bit", "bit-62", "read-only"],
)
def test_a_hostile_entry_at_any_level_is_a_typed_fault(
    mem: PhysicalMemory,
    tables: PageTableWriter,
    level: int,
    corrupt: Callable[[int], int],
    reason: FaultReason | str,
) -> None:
    iova = (1 << 39) | (2 << 30) | (3 << 21) | (4 << 12)
    tables.map(iova, 6 * PAGE_SIZE, PAGE_SIZE)
    table, at = tables.root, 0
    for step in range(4, level - 1, -1):
        at = table + level_index(iova, step) * 8
        table = entry_at(mem, at) & ~0xFFF
    mem.write(at, ENTRY.pack(corrupt(entry_at(mem, at))))
    iommu = Iommu(mem)
    with pytest.raises(IommuFaultError) as info:
        iommu.dma_write(tables.root, iova, b"hostile", device="d")
    if reason == "outside":
        reason = FaultReason.TARGET if level == 1 else FaultReason.TABLE
    assert info.value.reason == reason
    assert mem.read(6 * PAGE_SIZE, 7) == bytes(7)


def test_bit_7_is_a_superpage_above_level_1_and_ignored_at_it(
    mem: PhysicalMemory, tables: PageTableWriter
) -> None:
    """QEMU ``VTD_SPTE_PAGE_L1_RSVD_MASK`` leaves bit 7 out; luo models no superpages."""
    tables.map(0, 6 * PAGE_SIZE, PAGE_SIZE)
    leaf_table = entry_at(mem, entry_at(mem, entry_at(mem, tables.root) & ~0xFFF) & ~0xFFF)
    leaf_table &= ~0xFFF
    mem.write(leaf_table, ENTRY.pack(entry_at(mem, leaf_table) | 0x80 | 0x7C | (0x3FF << 52)))
    iommu = Iommu(mem)
    assert iommu.translate(tables.root, 0x10, write=True) == 6 * PAGE_SIZE + 0x10
    middle = entry_at(mem, tables.root) & ~0xFFF
    mem.write(middle, ENTRY.pack(entry_at(mem, middle) | 0x80))
    with pytest.raises(IommuFaultError, match="reserved bits"):
        iommu.translate(tables.root, 0x10, write=True)


ENTRY_VALUES = st.integers(0, 2**64 - 1) | st.builds(
    lambda page, low, high: page * PAGE_SIZE | low | high << 52,
    st.integers(0, PAGES + 2),  # pages of memory (tables included), and just beyond it
    st.integers(0, 0xFFF),
    st.integers(0, 0xFFF),
)


@settings(max_examples=200, deadline=None)
@given(
    level=st.integers(1, 4),
    fill=st.binary(max_size=16),
    entries=st.lists(st.tuples(st.integers(0, 7), ENTRY_VALUES), max_size=8),
    iova_offset=st.integers(0, 4 * PAGE_SIZE - 1),
    length=st.integers(1, 2 * PAGE_SIZE),
)
def test_garbage_over_a_table_page_is_a_fault_or_stays_in_memory(
    level: int, fill: bytes, entries: list[tuple[int, int]], iova_offset: int, length: int
) -> None:
    """Whatever bytes a table holds (a repeated pattern, chosen entries, pointers
    back into the tables), a DMA writes inside memory or faults having written
    nothing."""
    with PhysicalMemory(PAGES * PAGE_SIZE) as mem:
        tables = PageTableWriter(mem, allocator())
        tables.map(0, 0, 4 * PAGE_SIZE)
        # Tables were allocated root first: root, then one per level below it.
        table = (TABLES_FROM + 4 - level) * PAGE_SIZE
        if fill:
            mem.write(table, (fill * (PAGE_SIZE // len(fill) + 1))[:PAGE_SIZE])
        for index, value in entries:
            mem.write(table + index * 8, ENTRY.pack(value))
        before = mem.read(0, PAGES * PAGE_SIZE)
        iommu = Iommu(mem)
        faulted = False
        try:
            iommu.dma_write(tables.root, iova_offset, b"\xa5" * length, device="d")
        except IommuFaultError:
            faulted = True
        after = mem.read(0, PAGES * PAGE_SIZE)
        assert iommu.faults == faulted
        changed = sum(x != y for x, y in zip(before, after, strict=True))
        assert changed == 0 if faulted else changed <= length
        assert [f.reason for f in iommu.fault_log] == (
            [iommu.fault_log[0].reason] if faulted else []
        )


# -- device models -------------------------------------------------------------------

DMA_DEVICE = "luo,test-dma"


class DmaModel(DeviceModel):
    """Writes what it is told through the IOMMU page tables it is told."""

    compatible = (DMA_DEVICE,)

    def control(self, op: str, args: Mapping[str, Any]) -> object:
        dma = self.ctx.dma(args["root"])
        if op == "send":
            dma.write(args["iova"], args["data"])
            return None
        return dma.read(args["iova"], args["length"])


class DmaModels:
    @hookimpl
    def luo_device_models(self) -> Iterator[type[DeviceModel]]:
        yield DmaModel


def test_a_device_model_does_dma_through_the_machines_iommu() -> None:
    machine = Machine(memory_size=1 << 22, scratch_size=1 << 20)
    machine.add("dma0", compatible=DMA_DEVICE)
    hw = Hardware(machine, models=[DmaModels()], discover=False)
    try:
        tables = PageTableWriter(hw.ram, allocator(first=512))
        tables.map(0x1000, 0x9000, PAGE_SIZE)
        hw.control("dma0", "send", {"root": tables.root, "iova": 0x1FFE, "data": b"ok"})
        assert hw.ram.read(0x9FFE, 2) == b"ok"
        got = hw.control("dma0", "fetch", {"root": tables.root, "iova": 0x1FFE, "length": 2})
        assert got == b"ok"
        with pytest.raises(IommuFaultError, match="dma0: IOMMU fault on write at IOVA 0x2000"):
            hw.control("dma0", "send", {"root": tables.root, "iova": 0x1FFF, "data": b"no"})
        assert hw.ram.read(0x9FFF, 1) == b"k"
        assert hw.iommu.faults == 1
        assert hw.iommu.fault_log == [Fault("dma0", 0x2000, True, FaultReason.WRITE)]
    finally:
        hw.close()


# -- root and context tables: a PCI function's DMA ---------------------------------


def test_a_requester_id_is_bus_device_function() -> None:
    """PCI_DEVID / PCI_DEVFN: bus in bits 15:8, device 7:3, function 2:0."""
    assert requester_id("0000:01:00.0") == 0x100
    assert requester_id("0000:3a:1f.7") == 0x3A << 8 | 0x1F << 3 | 7
    for name in ("dma0", "pci0000:00", "0000:01:20.0", "0000:01:00.8", "0000:1:00.0"):
        assert requester_id(name) is None


def test_root_and_context_entries_are_laid_out_as_linux_writes_them() -> None:
    """``drivers/iommu/intel/iommu.h``: ``context_set_present`` (lo bit 0),
    ``context_set_translation_type`` (lo bits 3:2), ``context_set_address_root``
    (lo bits 63:12), ``context_set_address_width`` (hi bits 2:0),
    ``context_set_domain_id`` (hi bits 23:8); a root entry's lo is the context
    table's address | 1 (``root_entry_lctp``)."""
    lo, hi = PAIR.unpack(ContextEntry(pgtable=0x1234_5000, domain_id=0xBEEF).encode())
    assert (lo, hi) == (0x1234_5001, 0xBEEF << 8 | 2)
    assert decode_context_entry(PAIR.pack(lo, hi)) == ContextEntry(0x1234_5000, 0xBEEF)
    assert decode_context_entry(PAIR.pack(lo & ~1, hi)) is None
    assert PAIR.unpack(encode_root_entry(0x7000)) == (0x7001, 0)
    assert decode_root_entry(encode_root_entry(0x7000)) == 0x7000
    assert decode_root_entry(encode_root_entry(None)) is None


def attach(mem: PhysicalMemory, root_table: int, rid: int, entry: bytes, ctx: int) -> None:
    """Point ``rid``'s bus at the context table ``ctx`` and write its context entry."""
    mem.write(root_table + (rid >> 8) * 16, encode_root_entry(ctx))
    mem.write(ctx + (rid & 0xFF) * 16, entry)


def test_a_pci_function_dma_goes_through_its_context_entry(
    mem: PhysicalMemory, tables: PageTableWriter
) -> None:
    iommu = Iommu(mem)
    tables.map(0x4000, 0x9000, PAGE_SIZE)
    root_table, ctx = 20 * PAGE_SIZE, 21 * PAGE_SIZE
    rid = requester_id("0000:01:00.1")
    attach(mem, root_table, rid or 0, ContextEntry(tables.root, 7).encode(), ctx)
    nic = Requester(rid)
    with pytest.raises(IommuFaultError, match="DMA remapping is not enabled"):
        iommu.dma_write(nic, 0x4000, b"x", device="nic")
    iommu.set_root_table(root_table)
    iommu.dma_write(nic, 0x4010, b"hello", device="nic")
    assert mem.read(0x9010, 5) == b"hello"
    assert iommu.dma_read(nic, 0x4010, 5) == b"hello"
    # Another function on the same bus has no context entry; another bus no root entry.
    with pytest.raises(IommuFaultError, match="context entry not present"):
        iommu.dma_write(Requester(requester_id("0000:01:00.0")), 0x4000, b"x", device="f0")
    with pytest.raises(IommuFaultError, match="root entry not present"):
        iommu.dma_write(Requester(requester_id("0000:02:00.1")), 0x4000, b"x", device="b2")
    with pytest.raises(IommuFaultError, match="no PCI requester id"):
        iommu.dma_write(Requester(None), 0x4000, b"x", device="dma0")
    assert iommu.faults == 4
    assert mem.read(0x9000, 1) == b"\0"
    iommu.set_root_table(None)
    with pytest.raises(IommuFaultError, match="not enabled"):
        iommu.dma_read(nic, 0x4010, 5)


@pytest.mark.parametrize(
    ("lo_extra", "hi", "why"),
    [
        (1 << 2, 2, "type"),  # translation type 1: device-TLB, not modelled
        (1 << 4, 2, "reserved"),  # lo bits 11:4 are reserved
        (0, 3, "width"),  # 57-bit, 5-level
    ],
)
def test_an_invalid_context_entry_is_a_fault(
    mem: PhysicalMemory, tables: PageTableWriter, lo_extra: int, hi: int, why: str
) -> None:
    """QEMU ``vtd_dev_to_context_entry``: reserved bits (``VTD_FR_CONTEXT_ENTRY_RSVD``),
    an unsupported type or width (``VTD_FR_CONTEXT_ENTRY_INV``)."""
    iommu = Iommu(mem)
    tables.map(0x4000, 0x9000, PAGE_SIZE)
    root_table, ctx = 20 * PAGE_SIZE, 21 * PAGE_SIZE
    attach(mem, root_table, 0x100, PAIR.pack(tables.root | 1 | lo_extra, hi), ctx)
    iommu.set_root_table(root_table)
    with pytest.raises(IommuFaultError, match="context entry reserved bits"):
        iommu.dma_write(Requester(0x100), 0x4000, b"x")
    assert iommu.fault_log[-1].reason is FaultReason.CONTEXT_INVALID


def test_a_root_table_outside_memory_is_refused(mem: PhysicalMemory) -> None:
    iommu = Iommu(mem)
    for bad in (mem.size, 0x123, -PAGE_SIZE):
        with pytest.raises(InvalidArgumentError):
            iommu.set_root_table(bad)
    assert iommu.root_table is None


@settings(max_examples=150, deadline=None)
@given(garbage=st.binary(min_size=32, max_size=32), rid=st.integers(0, 0xFFFF))
def test_garbage_root_and_context_tables_fault_or_translate_inside_memory(
    garbage: bytes, rid: int
) -> None:
    with PhysicalMemory(PAGES * PAGE_SIZE) as mem:
        iommu = Iommu(mem)
        root_table = 20 * PAGE_SIZE
        mem.write(root_table + (rid >> 8) * 16, garbage[:16])
        mem.write(21 * PAGE_SIZE + (rid & 0xFF) * 16, garbage[16:])
        iommu.set_root_table(root_table)
        try:
            phys = iommu.translate(Requester(rid), 0, write=False)
        except IommuFaultError:
            assert iommu.faults == 1
        else:
            assert 0 <= phys < mem.size


def test_a_device_model_without_a_root_argument_uses_its_requester_id() -> None:
    machine = Machine(memory_size=1 << 22, scratch_size=1 << 20)
    machine.add("pci0000:00", compatible="pci-host-bridge")
    machine.add_pci("0000:00:03.0", compatible=DMA_DEVICE, parent="pci0000:00")
    hw = Hardware(machine, models=[DmaModels()], discover=False)
    try:
        tables = PageTableWriter(hw.ram, allocator(first=512))
        tables.map(0x1000, 0x9000, PAGE_SIZE)
        attach(
            hw.ram, 600 * PAGE_SIZE, 0x18, ContextEntry(tables.root, 1).encode(), 601 * PAGE_SIZE
        )
        hw.iommu.set_root_table(600 * PAGE_SIZE)
        hw.control("0000:00:03.0", "send", {"root": None, "iova": 0x1000, "data": b"rid"})
        assert hw.ram.read(0x9000, 3) == b"rid"
    finally:
        hw.close()
