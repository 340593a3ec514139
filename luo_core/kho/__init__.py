"""KHO (Kexec HandOver): preserved memory and the tree of nodes that crosses kexec."""

from luo_core.kho._layout import HandedOver, KhoNode, MemRange, read_root
from luo_core.kho._tree import KexecHandover, KhoError, KhoRoot

__all__ = [
    "HandedOver",
    "KexecHandover",
    "KhoError",
    "KhoNode",
    "KhoRoot",
    "MemRange",
    "read_root",
]
