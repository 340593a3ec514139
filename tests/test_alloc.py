"""The page allocator: alignment, no overlap, merging, reserve/release, errors, cost.

A hypothesis state machine drives random alloc/free/reserve/release against a
page-by-page model and checks after every step that nothing handed out
overlaps, nothing reserved is handed out, and the byte counts add up.
"""

from __future__ import annotations

import errno
import functools
import itertools
import random
import time
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from luo_core.errors import AllocatorError, LiveUpdateError, OutOfMemoryError
from luo_core.kernel._alloc import MAX_ORDER, PageAllocator

PAGE = 4096
GIB = 1 << 30


def expect_errno(call: Callable[[], object], code: int) -> str:
    with pytest.raises(AllocatorError) as info:
        call()
    assert info.value.errno == code, f"{info.value} has errno {info.value.errno_name}"
    assert "\n" not in str(info.value)
    return str(info.value)


def test_blocks_are_naturally_aligned_lowest_first_and_disjoint() -> None:
    pool = PageAllocator(64 * PAGE)
    blocks = [(pool.alloc_pages(order), order) for order in (0, 2, 1, 0, 3, 0)]
    assert blocks == [
        (0, 0),
        (4 * PAGE, 2),
        (2 * PAGE, 1),
        (PAGE, 0),
        (8 * PAGE, 3),
        (16 * PAGE, 0),
    ]
    spans = sorted((phys, phys + (PAGE << order)) for phys, order in blocks)
    for phys, order in blocks:
        assert phys % (PAGE << order) == 0
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start
    assert pool.allocated_bytes == (1 + 4 + 2 + 1 + 8 + 1) * PAGE
    assert pool.free_bytes == 64 * PAGE - pool.allocated_bytes


def test_alloc_rounds_up_to_the_smallest_order_that_fits() -> None:
    pool = PageAllocator(64 * PAGE)
    for size, pages in [(1, 1), (PAGE, 1), (PAGE + 1, 2), (3 * PAGE, 4), (17 * PAGE, 32)]:
        before = pool.allocated_bytes
        phys = pool.alloc(size)
        assert pool.allocated_bytes - before == pages * PAGE
        assert phys % (pages * PAGE) == 0
        pool.free(phys)
    assert pool.free_bytes == 64 * PAGE


def test_freeing_everything_merges_back_to_one_block() -> None:
    pool = PageAllocator(64 * PAGE)
    pages = [pool.alloc_pages(0) for _ in range(64)]
    assert sorted(pages) == [n * PAGE for n in range(64)]
    expect_errno(pool.alloc_pages, errno.ENOMEM)
    random.Random(7).shuffle(pages)
    for phys in pages:
        pool.free(phys)
    assert (pool.free_bytes, pool.allocated_bytes) == (64 * PAGE, 0)
    assert pool.alloc_pages(6) == 0, "buddies did not merge back into the whole pool"


def test_the_same_calls_give_the_same_addresses() -> None:
    def script() -> list[int]:
        pool = PageAllocator(256 * PAGE, free=[(8 * PAGE, 200 * PAGE)])
        got = [pool.alloc(n * 1000) for n in (1, 9, 3, 20, 2)]
        pool.free(got[1])
        pool.reserve(64 * PAGE, 16 * PAGE)
        got += [pool.alloc_pages(order) for order in (3, 0, 4, 2)]
        pool.free(got[0])
        got += [pool.alloc_pages(0), pool.alloc(5 * PAGE)]
        return got

    assert script() == script()


def test_a_64_gib_pool_is_cheap_and_hands_out_1_gib_blocks() -> None:
    tracemalloc.start()
    try:
        began = time.perf_counter()
        pool = PageAllocator(64 * GIB)
        elapsed = time.perf_counter() - began
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.25
    assert peak < 256 * 1024, f"constructing a 64 GiB pool allocated {peak} bytes"
    assert (pool.size, pool.free_bytes) == (64 * GIB, 64 * GIB)
    assert MAX_ORDER >= 18
    assert pool.alloc_pages(18) == 0
    assert pool.alloc(PAGE) == GIB  # splits the next 1 GiB block, lowest page first
    assert pool.alloc(GIB) == 2 * GIB
    expect_errno(lambda: pool.alloc(GIB + 1), errno.EINVAL)
    pool.reserve(40 * GIB + 5 * PAGE, 3 * PAGE)
    assert not pool.is_free(40 * GIB + 6 * PAGE, 1)
    assert pool.is_free(40 * GIB, 5 * PAGE)
    pool.release(40 * GIB + 5 * PAGE, 3 * PAGE)
    for phys in (0, GIB, 2 * GIB):
        pool.free(phys)
    assert pool.free_bytes == 64 * GIB
    assert [pool.alloc_pages(18) for _ in range(64)] == [n * GIB for n in range(64)]
    expect_errno(pool.alloc_pages, errno.ENOMEM)


def test_boot_free_ranges_leave_the_rest_reserved() -> None:
    pool = PageAllocator(16 * PAGE, free=[(12 * PAGE, 2 * PAGE), (4 * PAGE, 4 * PAGE)])
    assert (pool.free_bytes, pool.reserved_bytes) == (6 * PAGE, 10 * PAGE)
    assert pool.is_free(4 * PAGE, 4 * PAGE)
    assert not pool.is_free(0, PAGE)
    expect_errno(lambda: pool.alloc_pages(3), errno.ENOMEM)
    assert [pool.alloc_pages(2), pool.alloc_pages(1)] == [4 * PAGE, 12 * PAGE]
    pool.release(8 * PAGE, 4 * PAGE)  # the hole between them; buddies merge
    assert pool.alloc_pages(2) == 8 * PAGE


def test_reserved_memory_is_never_handed_out_until_released() -> None:
    pool = PageAllocator(16 * PAGE)
    pool.reserve(0, PAGE)
    pool.reserve(3 * PAGE, 6 * PAGE)  # cuts through the order-3 and order-2 blocks
    assert pool.reserved_bytes == 7 * PAGE
    assert sorted(pool.alloc_pages(0) for _ in range(9)) == [
        n * PAGE for n in (1, 2, *range(9, 16))
    ]
    expect_errno(pool.alloc_pages, errno.ENOMEM)
    pool.release(3 * PAGE, 6 * PAGE)
    assert pool.alloc_pages(2) == 4 * PAGE
    assert pool.alloc_pages(0) == 3 * PAGE


def test_reserve_and_release_refuse_memory_in_the_wrong_state() -> None:
    pool = PageAllocator(16 * PAGE)
    block = pool.alloc_pages(1)
    pool.reserve(8 * PAGE, 2 * PAGE)
    assert "0x0" in expect_errno(lambda: pool.reserve(PAGE, 2 * PAGE), errno.EBUSY)
    assert "already reserved" in expect_errno(
        lambda: pool.reserve(9 * PAGE, 2 * PAGE), errno.EBUSY
    )
    expect_errno(lambda: pool.release(block, PAGE), errno.EBUSY)
    expect_errno(lambda: pool.release(4 * PAGE, PAGE), errno.EINVAL)  # free, not reserved
    expect_errno(lambda: pool.release(8 * PAGE, 3 * PAGE), errno.EINVAL)  # partly reserved
    assert (pool.free_bytes, pool.allocated_bytes, pool.reserved_bytes) == (
        12 * PAGE,
        2 * PAGE,
        2 * PAGE,
    ), "a refused call changed the pool"


def test_adjacent_reservations_release_as_one_range() -> None:
    pool = PageAllocator(16 * PAGE)
    pool.reserve(6 * PAGE, 2 * PAGE)
    pool.reserve(2 * PAGE, 4 * PAGE)  # ends where the first begins
    pool.reserve(8 * PAGE, PAGE)  # begins where the first ends
    pool.release(3 * PAGE, 6 * PAGE)  # spans all three
    assert pool.reserved_bytes == PAGE
    assert not pool.is_free(2 * PAGE, PAGE)
    assert pool.is_free(3 * PAGE, 13 * PAGE)


@pytest.mark.parametrize(
    "call",
    [
        lambda pool: pool.free(PAGE),
        lambda pool: pool.free(1),
        lambda pool: pool.alloc_pages(-1),
        lambda pool: pool.alloc_pages(MAX_ORDER + 1),
        lambda pool: pool.alloc(0),
        lambda pool: pool.reserve(1, PAGE),
        lambda pool: pool.reserve(0, PAGE + 1),
        lambda pool: pool.reserve(0, 0),
        lambda pool: pool.reserve(-PAGE, PAGE),
        lambda pool: pool.reserve(8 * PAGE, 2**64),
        lambda pool: pool.release(16 * PAGE, PAGE),
        lambda pool: pool.is_free(0, 0),
        lambda pool: pool.is_free(15 * PAGE, PAGE + 1),
    ],
)
def test_bad_requests_are_einval(call: Callable[[PageAllocator], object]) -> None:
    pool = PageAllocator(16 * PAGE)
    expect_errno(lambda: call(pool), errno.EINVAL)
    assert pool.free_bytes == 16 * PAGE


def test_double_free_is_einval() -> None:
    pool = PageAllocator(16 * PAGE)
    phys = pool.alloc_pages(2)
    pool.free(phys)
    assert "double free" in expect_errno(lambda: pool.free(phys), errno.EINVAL)
    assert pool.free_bytes == 16 * PAGE


@pytest.mark.parametrize(
    ("size", "page_size", "free"),
    [
        (0, PAGE, None),
        (PAGE + 1, PAGE, None),
        (3 * 1000, 1000, None),
        (16 * PAGE, PAGE, [(0, 8 * PAGE), (4 * PAGE, 8 * PAGE)]),
        (16 * PAGE, PAGE, [(100, PAGE)]),
        (16 * PAGE, PAGE, [(0, 17 * PAGE)]),
    ],
)
def test_bad_pools_are_einval(
    size: int, page_size: int, free: list[tuple[int, int]] | None
) -> None:
    expect_errno(lambda: PageAllocator(size, page_size=page_size, free=free), errno.EINVAL)


def test_errors_are_typed() -> None:
    assert issubclass(OutOfMemoryError, AllocatorError)
    assert issubclass(AllocatorError, LiveUpdateError)
    with pytest.raises(OutOfMemoryError, match=r"no free block of order 1"):
        PageAllocator(PAGE).alloc_pages(1)


def test_other_page_sizes_scale_every_block() -> None:
    pool = PageAllocator(1 << 20, page_size=1 << 16)
    assert pool.page_size == 1 << 16
    assert pool.alloc(1) == 0
    assert pool.alloc((1 << 16) + 1) == 1 << 17
    assert pool.allocated_bytes == 3 << 16


PAGES = 40  # not a power of two: the top of the pool is an order-3 block
FREE, RESERVED = -1, -2


class AllocatorModel(RuleBasedStateMachine):
    """Each page is FREE, RESERVED, or owned by the allocation starting at that phys."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = PageAllocator(PAGES * PAGE)
        self.owner = [FREE] * PAGES

    @initialize(holes=st.sets(st.integers(0, PAGES - 1), max_size=8))
    def boot(self, holes: set[int]) -> None:
        runs: list[tuple[int, int]] = []
        for page in range(PAGES):
            if page in holes:
                continue
            if runs and runs[-1][0] + runs[-1][1] == page * PAGE:
                runs[-1] = (runs[-1][0], runs[-1][1] + PAGE)
            else:
                runs.append((page * PAGE, PAGE))
        self.pool = PageAllocator(PAGES * PAGE, free=reversed(runs))
        self.owner = [RESERVED if page in holes else FREE for page in range(PAGES)]

    def pages(self, phys: int, length: int) -> range:
        return range(phys // PAGE, (phys + length) // PAGE)

    def allocate(self, call: Callable[[], int], order: int) -> None:
        span = 1 << order
        fits = any(
            all(self.owner[p] == FREE for p in range(first, first + span))
            for first in range(0, PAGES - span + 1, span)
        )
        if not fits:
            expect_errno(call, errno.ENOMEM)
            return
        phys = call()
        assert phys % (PAGE << order) == 0
        taken = self.pages(phys, PAGE << order)
        assert taken.stop <= PAGES
        for page in taken:
            assert self.owner[page] == FREE, f"page {page} handed out while {self.owner[page]}"
            self.owner[page] = phys

    @rule(order=st.integers(0, 6))
    def alloc_pages(self, order: int) -> None:
        self.allocate(lambda: self.pool.alloc_pages(order), order)

    @rule(size=st.integers(1, 70 * PAGE))
    def alloc(self, size: int) -> None:
        order = (-(-size // PAGE) - 1).bit_length()
        self.allocate(lambda: self.pool.alloc(size), order)

    @precondition(lambda self: any(owner >= 0 for owner in self.owner))
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        phys = data.draw(st.sampled_from(sorted({o for o in self.owner if o >= 0})))
        self.pool.free(phys)
        self.owner = [FREE if owner == phys else owner for owner in self.owner]

    @rule(phys=st.integers(0, PAGES * PAGE - 1))
    def free_what_was_not_allocated(self, phys: int) -> None:
        if phys % PAGE == 0 and self.owner[phys // PAGE] == phys:
            return
        expect_errno(lambda: self.pool.free(phys), errno.EINVAL)

    @rule(first=st.integers(0, PAGES - 1), count=st.integers(1, 12))
    def reserve(self, first: int, count: int) -> None:
        span = range(first, min(PAGES, first + count))
        call = functools.partial(self.pool.reserve, first * PAGE, len(span) * PAGE)
        if any(self.owner[p] != FREE for p in span):
            expect_errno(call, errno.EBUSY)
            return
        call()
        for page in span:
            self.owner[page] = RESERVED

    @rule(first=st.integers(0, PAGES - 1), count=st.integers(1, 12))
    def release(self, first: int, count: int) -> None:
        span = range(first, min(PAGES, first + count))
        call = functools.partial(self.pool.release, first * PAGE, len(span) * PAGE)
        if any(self.owner[p] >= 0 for p in span):
            expect_errno(call, errno.EBUSY)
        elif any(self.owner[p] == FREE for p in span):
            expect_errno(call, errno.EINVAL)
        else:
            call()
            for page in span:
                self.owner[page] = FREE

    @rule()
    def drain(self) -> None:
        """Free and release everything: the pool must merge back into its largest blocks."""
        for phys in sorted({o for o in self.owner if o >= 0}):
            self.pool.free(phys)
        for page in range(PAGES):
            if self.owner[page] == RESERVED:
                self.pool.release(page * PAGE, PAGE)
        self.owner = [FREE] * PAGES
        assert [self.pool.alloc_pages(5), self.pool.alloc_pages(3)] == [0, 32 * PAGE]
        self.owner = [0] * 32 + [32 * PAGE] * 8

    @invariant()
    def matches_the_model(self) -> None:
        pool = self.pool
        free = self.owner.count(FREE) * PAGE
        reserved = self.owner.count(RESERVED) * PAGE
        assert (pool.free_bytes, pool.reserved_bytes) == (free, reserved)
        assert pool.allocated_bytes == PAGES * PAGE - free - reserved
        assert pool.free_bytes + pool.allocated_bytes + pool.reserved_bytes == pool.size
        for page in range(PAGES):
            assert pool.is_free(page * PAGE, PAGE) == (self.owner[page] == FREE), page


AllocatorModel.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
test_allocator_model = AllocatorModel.TestCase
