"""Physical memory: round trips, bounds, sparseness, zero-copy views, sharing by fd."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from luo_core.errors import LiveUpdateError, PhysicalMemoryError
from luo_core.platform import PhysicalMemory

PAGE = PhysicalMemory.PAGE_SIZE
MIB = 1 << 20
GIB = 1 << 30


@pytest.fixture
def mem() -> Iterator[PhysicalMemory]:
    with PhysicalMemory(16 * PAGE) as memory:
        yield memory


def test_fresh_memory_reads_zero_and_round_trips(mem: PhysicalMemory) -> None:
    assert mem.size == 16 * PAGE
    assert mem.read(0, 16 * PAGE) == bytes(16 * PAGE)
    mem.write(PAGE - 2, b"spans a page")
    mem.write(5 * PAGE, bytearray(b"\x01\x02"))
    mem.write(6 * PAGE, memoryview(b"view"))
    assert mem.read(PAGE - 2, 12) == b"spans a page"
    assert mem.read(5 * PAGE, 3) == b"\x01\x02\x00"
    assert mem.read(6 * PAGE, 4) == b"view"
    assert mem.read(16 * PAGE - 1, 1) == b"\x00"
    assert mem.read(16 * PAGE, 0) == b""


def test_write_takes_any_contiguous_buffer(mem: PhysicalMemory) -> None:
    words = memoryview(bytearray(8)).cast("I")
    words[0] = 0x04030201
    mem.write(0, words)
    assert mem.read(0, 8) == b"\x01\x02\x03\x04" + bytes(4)


OUTSIDE = [
    (-1, 1),
    (0, -1),
    (16 * PAGE, 1),
    (16 * PAGE - 1, 2),
    (16 * PAGE + 1, 0),
    (1, 2**64 - 1),  # wraps to 0 in 64-bit arithmetic; must not here
    (2**64 - 1, 2),
]


@pytest.mark.parametrize(("phys", "length"), OUTSIDE)
def test_every_access_is_bounds_checked(mem: PhysicalMemory, phys: int, length: int) -> None:
    accesses: list[Callable[[], object]] = [
        lambda: mem.read(phys, length),
        lambda: mem.view(phys, length),
        lambda: mem.fill(phys, length, 0xAA),
    ]
    if 0 <= length <= 2:
        accesses.append(lambda: mem.write(phys, b"\xaa" * length))
    for access in accesses:
        with pytest.raises(PhysicalMemoryError) as info:
            access()
        assert info.value.errno == errno.EFAULT
        message = str(info.value)
        assert "\n" not in message
        assert f"at {phys:#x} length {length:#x}" in message
    assert mem.read(0, 16 * PAGE) == bytes(16 * PAGE), "a refused access changed memory"


def test_bounds_error_names_address_and_length(mem: PhysicalMemory) -> None:
    with pytest.raises(LiveUpdateError, match=r"at 0xfffe length 0x10 is outside"):
        mem.write(0xFFFE, bytes(16))


@pytest.mark.parametrize("size", [0, -PAGE, PAGE + 1, PAGE // 2])
def test_size_must_be_a_positive_multiple_of_the_page(size: int) -> None:
    with pytest.raises(PhysicalMemoryError) as info:
        PhysicalMemory(size)
    assert info.value.errno == errno.EINVAL


def test_view_is_zero_copy_both_ways(mem: PhysicalMemory) -> None:
    window = mem.view(3 * PAGE, PAGE)
    assert not window.readonly
    assert window.nbytes == PAGE
    mem.write(3 * PAGE + 10, b"dma")
    assert bytes(window[10:13]) == b"dma"
    window[100:103] = b"irq"
    assert mem.read(3 * PAGE + 100, 3) == b"irq"
    window.release()


def test_fill_sets_bytes_and_zero_fill_gives_pages_back(mem: PhysicalMemory) -> None:
    mem.fill(10, 3 * PAGE, 0x5A)
    assert mem.read(0, 11) == bytes(10) + b"\x5a"
    assert mem.read(10 + 3 * PAGE - 1, 2) == b"\x5a\x00"
    assert mem.resident_bytes() >= 4 * PAGE
    mem.fill(0, 16 * PAGE)
    assert mem.resident_bytes() == 0
    assert mem.read(0, 16 * PAGE) == bytes(16 * PAGE)
    mem.fill(PAGE, 2 * PAGE, 0xFF)
    mem.fill(PAGE + 1, 2 * PAGE - 2)  # partial pages at both ends: those bytes are written
    assert mem.read(PAGE, 2 * PAGE) == b"\xff" + bytes(2 * PAGE - 2) + b"\xff"
    with pytest.raises(PhysicalMemoryError) as info:
        mem.fill(0, 1, 256)
    assert info.value.errno == errno.EINVAL


def test_64_gib_is_sparse() -> None:
    size = 64 * GIB
    with PhysicalMemory(size) as mem:
        assert mem.resident_bytes() == 0
        far_apart = [0, 17 * GIB + 3, 32 * GIB, size - 1]
        for at in far_apart:
            mem.write(at, b"\x7f")
        assert [mem.read(at, 1) for at in far_apart] == [b"\x7f"] * 4
        # a handful of pages (huge pages at most), not gigabytes
        assert 4 * PAGE <= mem.resident_bytes() <= 4 * 2 * MIB


def test_second_mapping_of_the_same_fd_shares_bytes(mem: PhysicalMemory) -> None:
    with PhysicalMemory(mem.size, fd=mem.fd) as other:
        assert other.fd != mem.fd, "attaching must not take over the caller's fd"
        mem.write(PAGE, b"from the first")
        assert other.read(PAGE, 14) == b"from the first"
        other.write(2 * PAGE, b"from the second")
        assert mem.read(2 * PAGE, 15) == b"from the second"
    mem.write(0, b"still open")  # closing the attached copy left the original alone
    assert os.fstat(mem.fd).st_size == mem.size


def test_attach_checks_size_and_fd(mem: PhysicalMemory) -> None:
    with pytest.raises(PhysicalMemoryError, match=r"holds 0x10000 bytes, not 0x20000") as info:
        PhysicalMemory(2 * mem.size, fd=mem.fd)
    assert info.value.errno == errno.EINVAL
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(PhysicalMemoryError) as bad:
        PhysicalMemory(mem.size, fd=read_end)
    assert bad.value.errno == errno.EBADF


CHILD = """
import sys
from luo_core.platform import PhysicalMemory
size, fd = int(sys.argv[1]), int(sys.argv[2])
with PhysicalMemory(size, fd=fd) as mem:
    sys.stdout.write(mem.read(0x1000, 6).hex())
    mem.write(0x2000, b"child")
"""


def test_child_process_shares_memory_through_the_fd(mem: PhysicalMemory) -> None:
    mem.write(0x1000, b"parent")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(mem.size), str(mem.fd)],
        pass_fds=[mem.fd],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert bytes.fromhex(done.stdout) == b"parent"
    assert mem.read(0x2000, 5) == b"child"


def test_closed_memory_refuses_access_and_close_is_idempotent() -> None:
    mem = PhysicalMemory(PAGE)
    fd = mem.fd
    window = mem.view(0, 4)
    mem.close()
    mem.close()
    window[0:4] = b"late"  # a window already handed out stays valid
    window.release()
    for access in (lambda: mem.read(0, 1), lambda: mem.fd, mem.resident_bytes):
        with pytest.raises(PhysicalMemoryError) as info:
            access()
        assert info.value.errno == errno.EBADF
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)
    assert "closed" in repr(mem)
