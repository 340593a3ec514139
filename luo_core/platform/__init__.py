"""The emulated machine (hardware side); it never imports the kernel side."""

from luo_core.platform._hosts import EXAMPLE_NIC, HOST_BRIDGE, PCI_BRIDGE, default_host, flat_host
from luo_core.platform._machine import HardwareDevice, Machine, MachineError
from luo_core.platform._memory import PhysicalMemory, PhysicalMemoryError

__all__ = [
    "EXAMPLE_NIC",
    "HOST_BRIDGE",
    "PCI_BRIDGE",
    "HardwareDevice",
    "Machine",
    "MachineError",
    "PhysicalMemory",
    "PhysicalMemoryError",
    "default_host",
    "flat_host",
]
