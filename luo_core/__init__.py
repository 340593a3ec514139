"""luo: emulate Linux's Live Update Orchestrator to build and test live-update-aware drivers.

Everything a pack author or a test imports is exported here, and only here.
"""

from luo_core._abi import IncompatibleError, ManifestError
from luo_core._errors import (
    BusyError,
    CallbackError,
    CallbackTimeoutError,
    DependencyCycleError,
    DeviceError,
    ExistsError,
    HandoffError,
    InvalidTransitionError,
    KernelGoneError,
    LiveUpdateError,
    NotFoundError,
    PluginConflictError,
    PluginError,
    TryAgainError,
)
from luo_core._hookspecs import hookimpl, hookspec
from luo_core._kernel import Kernel, KernelConfig
from luo_core._records import (
    Bus,
    BusOps,
    DeviceDriver,
    DeviceDriverOps,
    PluginOrigin,
    Subsystem,
    SubsystemOps,
)
from luo_core._registry import ENTRY_POINT_GROUP, PackInfo, PluginRegistry, load_plugins
from luo_core._state import Event, State
from luo_core._stats import CallbackStat, PhaseStats, UpdateStats
from luo_core.devices import Device, DeviceTree
from luo_core.platform import Machine

__all__ = [
    "ENTRY_POINT_GROUP",
    "Bus",
    "BusOps",
    "BusyError",
    "CallbackError",
    "CallbackStat",
    "CallbackTimeoutError",
    "DependencyCycleError",
    "Device",
    "DeviceDriver",
    "DeviceDriverOps",
    "DeviceError",
    "DeviceTree",
    "Event",
    "ExistsError",
    "HandoffError",
    "IncompatibleError",
    "InvalidTransitionError",
    "Kernel",
    "KernelConfig",
    "KernelGoneError",
    "LiveUpdateError",
    "Machine",
    "ManifestError",
    "NotFoundError",
    "PackInfo",
    "PhaseStats",
    "PluginConflictError",
    "PluginError",
    "PluginOrigin",
    "PluginRegistry",
    "State",
    "Subsystem",
    "SubsystemOps",
    "TryAgainError",
    "UpdateStats",
    "hookimpl",
    "hookspec",
    "load_plugins",
]
