"""The emulated hardware: physical memory, machines, hosts.  It never imports the kernel side."""

from luo_core.platform._hosts import EXAMPLE_NIC, HOST_BRIDGE, PCI_BRIDGE, default_host, flat_host
from luo_core.platform._machine import HardwareDevice, Machine
from luo_core.platform._memory import PhysicalMemory

__all__ = [
    "EXAMPLE_NIC",
    "HOST_BRIDGE",
    "PCI_BRIDGE",
    "HardwareDevice",
    "Machine",
    "PhysicalMemory",
    "default_host",
    "flat_host",
]
