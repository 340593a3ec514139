"""KHO: preserving ranges, the node tree, finalize/abort, and the next kernel's memory."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from luo_core import (
    Kernel,
    Machine,
    PhysAddr,
    Subsystem,
    SubsystemOps,
    hookimpl,
    state,
    u64,
)
from luo_core.abi import MemRange, decode_record, decode_state, read_root
from luo_core.errors import KhoError, OutOfMemoryError
from luo_core.kernel._alloc import PageAllocator
from luo_core.kernel._kho import KexecHandover
from luo_core.platform import PhysicalMemory
from tests.journal import assert_raw_bytes_refused

PAGE = 4096
MIB = 1 << 20


@pytest.fixture
def kho() -> Iterator[KexecHandover]:
    memory = PhysicalMemory(64 * MIB)
    allocator = PageAllocator(memory.size, free=[(4 * MIB, 60 * MIB)])
    yield KexecHandover(memory, allocator, MemRange(0, 4 * MIB))
    memory.close()


def test_nodes_and_ranges_round_trip_through_the_root(kho: KexecHandover) -> None:
    guest = kho.allocator.alloc(MIB)
    kho.preserve(guest, MIB)
    kho.add_node("subsystem:vm", "luo,vm-v1", b"vm state")
    kho.add_node("device:0000:01:00.0", "example-nic", b"")
    root = kho.finalize(liveupdate_number=7)
    handed = read_root(kho.memory, root.phys)
    assert handed.liveupdate_number == 7
    assert set(handed.nodes) == {"subsystem:vm", "device:0000:01:00.0"}
    assert handed.read(kho.memory, "subsystem:vm") == b"vm state"
    assert handed.read(kho.memory, "device:0000:01:00.0") == b""
    assert MemRange(guest, MIB) in handed.preserved
    assert MemRange(root.phys, root.size) in handed.preserved


def test_finalized_handoff_refuses_changes_until_aborted(kho: KexecHandover) -> None:
    phys = kho.allocator.alloc(PAGE)
    kho.finalize(1)
    for call in (
        lambda: kho.preserve(phys, PAGE),
        lambda: kho.unpreserve(phys, PAGE),
        lambda: kho.add_node("x", "y", b""),
        lambda: kho.finalize(1),
    ):
        with pytest.raises(KhoError) as info:
            call()
        assert info.value.errno == errno.EBUSY
    kho.abort()
    kho.preserve(phys, PAGE)
    with pytest.raises(KhoError) as info:
        kho.abort()
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    ("phys", "size", "code"),
    [
        (4 * MIB + 1, PAGE, errno.EINVAL),  # unaligned
        (4 * MIB, 100, errno.EINVAL),
        (0, PAGE, errno.EINVAL),  # scratch
        (64 * MIB, PAGE, errno.EINVAL),  # beyond memory
        (8 * MIB, 0, errno.EINVAL),
    ],
)
def test_bad_ranges_are_refused(kho: KexecHandover, phys: int, size: int, code: int) -> None:
    with pytest.raises(KhoError) as info:
        kho.preserve(phys, size)
    assert info.value.errno == code


def test_overlaps_duplicates_and_unknowns(kho: KexecHandover) -> None:
    kho.preserve(8 * MIB, 2 * PAGE)
    with pytest.raises(KhoError) as info:
        kho.preserve(8 * MIB + PAGE, PAGE)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(KhoError) as info:
        kho.unpreserve(8 * MIB, PAGE)
    assert info.value.errno == errno.ENOENT
    kho.add_node("a", "c", b"1")
    with pytest.raises(KhoError) as info:
        kho.add_node("a", "c", b"2")
    assert info.value.errno == errno.EEXIST
    kho.remove_node("a")
    with pytest.raises(KhoError) as info:
        kho.remove_node("a")
    assert info.value.errno == errno.ENOENT


def test_clear_gives_every_node_page_back(kho: KexecHandover) -> None:
    before = kho.allocator.free_bytes
    kho.add_node("a", "c", b"x" * (3 * PAGE))
    kho.add_node("b", "c", b"y")
    kho.finalize(1)
    assert kho.allocator.free_bytes < before
    kho.clear()
    assert kho.allocator.free_bytes == before
    assert kho.preserved == [] and kho.nodes == {}


@state(compatible="luo,test-guest-memory", version=1)
class GuestRecord:
    """Where the guest's memory is: the range the next kernel must not touch."""

    phys: PhysAddr
    size: u64


class GuestMemory(SubsystemOps):
    """Preserves a range of 'guest memory' filled with a pattern."""

    def __init__(self, kernel: Kernel, size: int) -> None:
        self.kernel, self.size = kernel, size
        self.phys = kernel.mm.alloc(size)
        kernel.memory.fill(self.phys, size, 0xA5)

    def prepare(self) -> GuestRecord:
        self.kernel.kho.preserve(self.phys, self.size)
        return GuestRecord(self.phys, self.size)


class GuestPack:
    """Built afresh on every boot; only a cold-booted kernel has a guest to preserve."""

    @hookimpl
    def luo_subsystems(self, kernel: Kernel | None) -> Iterator[Subsystem]:
        if kernel is not None and kernel.kho_root is None:
            yield Subsystem(name="guest", ops=GuestMemory(kernel, 8 * MIB), schema=GuestRecord)


def test_the_next_kernel_never_overwrites_a_preserved_page() -> None:
    machine = Machine(memory_size=64 * MIB, scratch_size=4 * MIB)
    kernel = Kernel.boot(machine, plugins=[GuestPack], discover=False)
    guest = kernel.subsystems["guest"].ops
    assert isinstance(guest, GuestMemory)
    kernel.prepare()
    new = kernel.kexec()
    assert "guest" not in new.subsystems  # nobody claims it: its record stays raw
    handed = new.handed_over("subsystem", "guest")
    assert isinstance(handed, bytes)
    record = decode_state(GuestRecord, handed, 1)
    assert (record.phys, record.size) == (guest.phys, 8 * MIB)
    phys = record.phys
    # Take every page the new kernel will give out and scribble on it.
    taken = 0
    while True:
        try:
            page = new.mm.alloc_pages(0)
        except OutOfMemoryError:
            break
        new.memory.fill(page, PAGE, 0xFF)
        taken += 1
    assert taken > 0
    assert new.memory.read(phys, 8 * MIB) == b"\xa5" * (8 * MIB)
    assert new.mm.is_free(0, 4 * MIB) is False  # nor the scratch area


def test_finish_returns_the_handoff_pages_but_not_the_participants() -> None:
    machine = Machine(memory_size=64 * MIB, scratch_size=4 * MIB)
    kernel = Kernel.boot(machine, plugins=[GuestPack], discover=False)
    kernel.prepare()
    new = kernel.kexec()
    assert new.kho_root is not None
    handed = read_root(new.memory, new.kho_root)
    free_before = new.mm.free_bytes
    new.finish()
    assert new.mm.free_bytes > free_before
    assert new.mm.is_free(handed.root.start, handed.root.size)
    blob = handed.read(new.memory, "subsystem:guest")
    guest = decode_record(blob, {"luo,test-guest-memory": GuestRecord})
    assert isinstance(guest, GuestRecord)
    assert not new.mm.is_free(guest.phys, guest.size)  # still the participant's


class RawGuestMemory(GuestMemory):
    """Hands over the guest's address as raw bytes, as opaque records once did."""

    def prepare(self) -> bytes:  # type: ignore[override]
        return self.phys.to_bytes(8, "little")


class RawGuestPack:
    @hookimpl
    def luo_subsystems(self, kernel: Kernel | None) -> Iterator[Subsystem]:
        if kernel is not None:
            yield Subsystem(name="guest", ops=RawGuestMemory(kernel, MIB), schema=GuestRecord)


def test_raw_bytes_are_not_a_handoff_format() -> None:
    kernel = Kernel.boot(
        Machine(memory_size=64 * MIB, scratch_size=4 * MIB), plugins=[RawGuestPack], discover=False
    )
    assert_raw_bytes_refused(kernel, "subsystem:guest", "expected its schema GuestRecord")


def test_liveupdate_number_counts_updates_in_the_root() -> None:
    kernel = Kernel.boot(Machine(memory_size=64 * MIB, scratch_size=4 * MIB), discover=False)
    for expected in (1, 2, 3):
        kernel.prepare()
        kernel = kernel.kexec()
        assert kernel.kho_root is not None
        assert read_root(kernel.memory, kernel.kho_root).liveupdate_number == expected
        kernel.finish()
