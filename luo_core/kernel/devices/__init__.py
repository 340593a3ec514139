"""The dev_liveupdate device layer: device tree, flags, ordering, built-in buses."""

from luo_core.kernel.devices._order import freeze_graph, restore_graph, static_order
from luo_core.kernel.devices._tree import Device, DeviceTree

__all__ = ["Device", "DeviceTree", "freeze_graph", "restore_graph", "static_order"]
