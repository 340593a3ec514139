"""The dev_liveupdate device layer: device tree, flags, ordering, built-in buses."""

from luo_core.kernel.devices._order import (
    depth,
    freeze_graph,
    preserve_list,
    restore_graph,
    static_order,
)
from luo_core.kernel.devices._tree import Device, DeviceTree

__all__ = [
    "Device",
    "DeviceTree",
    "depth",
    "freeze_graph",
    "preserve_list",
    "restore_graph",
    "static_order",
]
