"""The emulated hardware: memory, the IOMMU, interrupt remapping, registers, models, the actor.

Nothing here imports the kernel side: a kernel reaches the hardware only
through messages and through memory shared by file descriptor.
"""

from luo_core.abi._machine import DeviceSpec, Machine
from luo_core.platform._hardware import Hardware
from luo_core.platform._hostconfig import MAX_HOST_BYTES, HostConfig, VmSpec, load_host
from luo_core.platform._hosts import (
    DEFAULT_HOST_TOML,
    EXAMPLE_NIC,
    HOST_BRIDGE,
    ISA_BRIDGE,
    PCI_BRIDGE,
    default_host,
    flat_host,
)
from luo_core.platform._iommu import DeviceDma, Fault, FaultReason, Iommu, Requester
from luo_core.platform._irq import Delivery, DeviceMsi, InterruptRemapper, IrFault, IrFaultReason
from luo_core.platform._memory import PhysicalMemory
from luo_core.platform._models import DeviceContext, DeviceModel, discover_models
from luo_core.platform._registers import BUS_MASTER, Register, RegisterMap, Registers
from luo_core.platform._server import HardwareProcess

__all__ = [
    "BUS_MASTER",
    "DEFAULT_HOST_TOML",
    "EXAMPLE_NIC",
    "HOST_BRIDGE",
    "ISA_BRIDGE",
    "MAX_HOST_BYTES",
    "PCI_BRIDGE",
    "Delivery",
    "DeviceContext",
    "DeviceDma",
    "DeviceModel",
    "DeviceMsi",
    "DeviceSpec",
    "Fault",
    "FaultReason",
    "Hardware",
    "HardwareProcess",
    "HostConfig",
    "InterruptRemapper",
    "Iommu",
    "IrFault",
    "IrFaultReason",
    "Machine",
    "PhysicalMemory",
    "Register",
    "RegisterMap",
    "Registers",
    "Requester",
    "VmSpec",
    "default_host",
    "discover_models",
    "flat_host",
    "load_host",
]
