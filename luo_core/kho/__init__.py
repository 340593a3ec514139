"""KHO (Kexec HandOver): preserved memory and the tree of nodes that crosses kexec."""

from luo_core.kho._image import load_image, save_image
from luo_core.kho._layout import HandedOver, KhoNode, MemRange, read_root
from luo_core.kho._tree import KexecHandover, KhoError, KhoRoot

__all__ = [
    "HandedOver",
    "KexecHandover",
    "KhoError",
    "KhoNode",
    "KhoRoot",
    "MemRange",
    "load_image",
    "read_root",
    "save_image",
]
