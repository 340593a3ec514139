"""luo: emulate Linux's Live Update Orchestrator to build and test live-update-aware drivers.

What a pack author needs is exported here, and only here: the hook marker,
the registration records and their callback tables, the device a driver
binds to, the schema declarations of preserved state, and the kernel and
machine to drive an update.  Errors live in :mod:`luo_core.errors`.
"""

from luo_core import errors
from luo_core.abi import (
    PhysAddr,
    PhysRange,
    s8,
    s16,
    s32,
    s64,
    schema_of,
    section,
    state,
    u8,
    u16,
    u32,
    u64,
)
from luo_core.abi._boot import KernelConfig
from luo_core.abi._stats import PhaseStats, UpdateStats
from luo_core.kernel._hookspecs import hookimpl
from luo_core.kernel._kernel import Kernel
from luo_core.kernel._records import (
    Bus,
    BusOps,
    Command,
    DeviceDriver,
    DeviceDriverOps,
    Subsystem,
    SubsystemOps,
)
from luo_core.kernel._state import Event, State
from luo_core.kernel.devices import Device
from luo_core.kernel.sessions import (
    FileHandler,
    FileHandlerOps,
    Flb,
    FlbOps,
    LiveFile,
    LiveUpdateDevice,
    Session,
)
from luo_core.platform import Machine

__all__ = [
    "Bus",
    "BusOps",
    "Command",
    "Device",
    "DeviceDriver",
    "DeviceDriverOps",
    "Event",
    "FileHandler",
    "FileHandlerOps",
    "Flb",
    "FlbOps",
    "Kernel",
    "KernelConfig",
    "LiveFile",
    "LiveUpdateDevice",
    "Machine",
    "PhaseStats",
    "PhysAddr",
    "PhysRange",
    "Session",
    "State",
    "Subsystem",
    "SubsystemOps",
    "UpdateStats",
    "errors",
    "hookimpl",
    "s8",
    "s16",
    "s32",
    "s64",
    "schema_of",
    "section",
    "state",
    "u8",
    "u16",
    "u32",
    "u64",
]
