"""Kernel-side memory management: the page allocator over physical addresses."""

from luo_core.memory._alloc import MAX_ORDER, AllocatorError, OutOfMemoryError, PageAllocator

__all__ = ["MAX_ORDER", "AllocatorError", "OutOfMemoryError", "PageAllocator"]
