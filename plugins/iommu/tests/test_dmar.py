"""The IOMMU pack in one process: DMA through domains the driver built, faults, refusals,
hostile records, the record's versions."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from importlib import resources
from typing import Any, cast

import attrs
import luo_iommu
import pytest
from luo_iommu import DMA_ENGINE, Iommu, IommuRecord, iommu_of
from luo_iommu._contract import DMAR, ENGINE, machine

from luo_core import Kernel, Machine
from luo_core.abi import encode_record, schema_of, unseal
from luo_core.abi._codec import decode_state
from luo_core.abi._iopgtable import PAGE_SIZE
from luo_core.errors import BusyError, HandoffError, InvalidArgumentError, LiveUpdateError
from luo_core.platform import Hardware

IOVA = 0x40_0000
SHARED = ("0000:00:04.0", "0000:00:04.1")


def host() -> Machine:
    """The contract's host plus two functions that share IOMMU group 77."""
    m = machine()
    for name in SHARED:
        m.add_pci(name, compatible=DMA_ENGINE, parent="pci0000:00", iommu_group=77)
    return m


@pytest.fixture
def hw() -> Iterator[Hardware]:
    hardware = Hardware(host(), models=[luo_iommu], discover=False)
    yield hardware
    hardware.close()


@pytest.fixture
def kernel(hw: Hardware) -> Kernel:
    return Kernel.boot(hw, plugins=[luo_iommu], discover=False)


def test_dma_lands_through_a_domain_the_driver_built(hw: Hardware, kernel: Kernel) -> None:
    """drivers/iommu/intel/iommu.c: iommu_set_root_entry + iommu_enable_translation at
    probe, domain_context_mapping_one at attach; the device's DMA walks them."""
    iommu = iommu_of(kernel)
    assert kernel.devices[DMAR].regs["rtaddr"] == iommu.root_table == hw.iommu.root_table
    buf = kernel.mm.alloc(2 * PAGE_SIZE)
    domain = iommu.domain_alloc()
    domain.map(IOVA, buf, 2 * PAGE_SIZE)
    iommu.attach(ENGINE, domain)
    data = bytes(range(256)) * 20  # crosses the page boundary
    assert hw.control(ENGINE, "write", {"iova": IOVA + 100, "data": data}) == {"ok": True}
    assert kernel.memory.read(buf + 100, len(data)) == data
    assert hw.control(ENGINE, "read", {"iova": IOVA + 100, "length": 64}) == data[:64]
    assert [(m.iova, m.phys, m.length) for m in domain.mappings()] == [(IOVA, buf, 2 * PAGE_SIZE)]


def test_unmapped_and_read_only_iovas_fault_and_move_nothing(hw: Hardware, kernel: Kernel) -> None:
    """QEMU vtd_iova_to_slpte: no R/W right on the way down is a fault; nothing is written."""
    iommu = iommu_of(kernel)
    buf = kernel.mm.alloc(2 * PAGE_SIZE)
    domain = iommu.domain_alloc()
    domain.map(IOVA, buf, PAGE_SIZE)
    domain.map(IOVA + PAGE_SIZE, buf + PAGE_SIZE, PAGE_SIZE, write=False)
    iommu.attach(ENGINE, domain)
    before = kernel.memory.read(buf, 2 * PAGE_SIZE)
    assert hw.control(ENGINE, "write", {"iova": IOVA + 2 * PAGE_SIZE, "data": b"x"}) == {
        "ok": False
    }
    # One byte in the mapped page, the rest beyond it: the whole transfer faults.
    assert hw.control(ENGINE, "write", {"iova": IOVA + PAGE_SIZE - 1, "data": b"ab"}) == {
        "ok": False
    }
    assert hw.control(ENGINE, "read", {"iova": IOVA + 2 * PAGE_SIZE, "length": 8}) is None
    assert kernel.memory.read(buf, 2 * PAGE_SIZE) == before
    status = hw.control(DMAR, "status")
    assert isinstance(status, dict) and status["faults"] == 3
    assert kernel.devices[DMAR].regs["fault_count"] == 3
    assert hw.control(ENGINE, "status") == {"seq": 0, "faults": 3, "running": False}


def test_a_device_not_attached_faults(hw: Hardware, kernel: Kernel) -> None:
    """QEMU vtd_dev_to_context_entry: a missing context entry faults (VTD_FR_CONTEXT_ENTRY_P)."""
    iommu = iommu_of(kernel)
    buf = kernel.mm.alloc(PAGE_SIZE)
    domain = iommu.domain_alloc()
    domain.map(IOVA, buf, PAGE_SIZE)
    assert hw.control(ENGINE, "write", {"iova": IOVA, "data": b"early"}) == {"ok": False}
    iommu.attach(ENGINE, domain)
    assert hw.control(ENGINE, "write", {"iova": IOVA, "data": b"fine"}) == {"ok": True}
    iommu.detach(ENGINE)
    assert hw.control(ENGINE, "write", {"iova": IOVA, "data": b"late"}) == {"ok": False}
    assert kernel.memory.read(buf, 5) == b"fine\0"
    assert [str(f.reason) for f in hw.iommu.fault_log] == [
        "root entry not present",
        "context entry not present",
    ]


def test_attach_refuses_shared_groups_other_domains_and_non_pci(kernel: Kernel) -> None:
    """drivers/iommu/iommu.c iommu_attach_device: EINVAL unless the group holds one device;
    __iommu_attach_group: EBUSY when the group is already on another domain."""
    iommu = iommu_of(kernel)
    one, two = iommu.domain_alloc(), iommu.domain_alloc()
    for name in (SHARED[0], DMAR):
        with pytest.raises(InvalidArgumentError) as refused:
            iommu.attach(name, one)
        assert refused.value.errno == errno.EINVAL
    iommu.attach(ENGINE, one)
    with pytest.raises(BusyError):
        iommu.attach(ENGINE, two)
    assert iommu.attachments() == {ENGINE: one.id}


def test_an_iommufd_with_a_shared_group_is_not_preserved(kernel: Kernel) -> None:
    """iommufd attaches whole groups (iommu_attach_group); preserving it alone is refused
    with iommu_attach_device's EINVAL, and the session is left as it was."""
    iommu = iommu_of(kernel)
    fd = iommu.iommufd_open()
    ioas = iommu.iommufd(fd)
    ioas.attach(SHARED[0])
    assert ioas.devices == sorted(SHARED)
    session = kernel.open_liveupdate().create_session("vmm")
    with pytest.raises(LiveUpdateError) as refused:
        session.preserve_fd(fd, 1)
    assert refused.value.errno == errno.EINVAL
    ioas.domain.map(IOVA, 0x300_0000, PAGE_SIZE)  # still mutable: nothing was preserved


def test_a_preserved_iommufd_is_immutable_until_unpreserved(kernel: Kernel) -> None:
    """drivers/iommu/iommufd/io_pagetable.c iopt_alloc_area_pages: EBUSY while
    iopt_lu_map_immutable (the "iommufd: live update" series)."""
    iommu = iommu_of(kernel)
    fd = iommu.iommufd_open()
    ioas = iommu.iommufd(fd)
    ioas.attach(ENGINE)
    dev = kernel.open_liveupdate()
    session = dev.create_session("vmm")
    session.preserve_fd(fd, 1)
    with pytest.raises(BusyError):
        ioas.domain.map(IOVA, 0x300_0000, PAGE_SIZE)
    session.close()  # unpreserves its files
    ioas.domain.map(IOVA, 0x300_0000, PAGE_SIZE)


def _restored(kernel: Kernel) -> tuple[Kernel, IommuRecord]:
    iommu = iommu_of(kernel)
    domain = iommu.domain_alloc()
    domain.map(IOVA, 0x300_0000, 3 * PAGE_SIZE)
    iommu.attach(ENGINE, domain)
    kernel.devices.request(DMAR)
    kernel.prepare()
    record = iommu.record()
    return kernel.kexec(), record


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("root table beyond memory", lambda r: _with(r, root_table=1 << 40)),
        ("a domain table not preserved", lambda r: _domain(r, pages=[*_pages(r)[:-1], 0x5000])),
        ("a domain table left out", lambda r: _domain(r, pages=_pages(r)[:-1])),
        ("mappings that lie", lambda r: _domain(r, mappings=[])),
        ("a context table elsewhere", lambda r: _with(r, context_tables={0: 0x7000})),
        ("an unknown domain attached", lambda r: _with(r, domains=[])),
    ],
)
def test_hostile_records_are_refused_and_nothing_is_adopted(
    kernel: Kernel, what: str, change: object
) -> None:
    mapped = [(IOVA, 0x300_0000, 3 * PAGE_SIZE, True, True)]
    new, record = _restored(kernel)
    assert [attrs.astuple(m) for m in iommu_of(new).domains[0].mappings()] == mapped
    fresh = Iommu(new)
    with pytest.raises(HandoffError):
        fresh.restore(new.devices[DMAR], change(record))  # type: ignore[operator]
    assert not fresh.probed and not fresh.domains and not fresh.attachments()


def _pages(r: IommuRecord) -> list[int]:
    return list(r.domains[0].pages)


def _domain(r: IommuRecord, **changes: Any) -> IommuRecord:
    return _with(r, domains=[attrs.evolve(r.domains[0], **changes)])


def _with(r: IommuRecord, **changes: Any) -> IommuRecord:
    """``attrs.evolve`` for a ``@state`` record (mypy does not see it as attrs)."""
    changed: IommuRecord = attrs.evolve(cast(Any, r), **changes)
    return changed


def test_restore_refuses_a_unit_that_stopped_translating(kernel: Kernel, hw: Hardware) -> None:
    new, record = _restored(kernel)
    hw.reset(DMAR)
    with pytest.raises(LiveUpdateError, match="translation was turned off"):
        Iommu(new).restore(new.devices[DMAR], record)


def _golden(version: int) -> bytes:
    return resources.files(luo_iommu).joinpath(f"golden/iommu-state-v{version}.luor").read_bytes()


def test_golden_records_decode_to_the_same_state_through_the_migration() -> None:
    old, new = (unseal(_golden(v)) for v in (1, 2))
    assert (old.version, new.version) == (1, 2)
    v1 = decode_state(IommuRecord, old.payload, 1)
    v2 = decode_state(IommuRecord, new.payload, 2)
    assert v1 == v2 and v1.faults_at_freeze is None
    assert v1.domains[0].mappings and v1.attachments[0].device == ENGINE


def test_the_v1_writer_drops_only_the_fault_count() -> None:
    record = decode_state(IommuRecord, unseal(_golden(2)).payload, 2)
    counted = _with(record, faults_at_freeze=7)
    back = unseal(encode_record(counted, version=1))
    assert back.version == 1 and schema_of(IommuRecord).version == 2
    assert decode_state(IommuRecord, back.payload, 1) == record
