"""The public API is exactly what ``luo_core.__all__`` says, and it is importable."""

from __future__ import annotations

import luo_core

PUBLIC = {
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
}


def test_all_is_pinned() -> None:
    assert set(luo_core.__all__) == PUBLIC
    assert len(luo_core.__all__) == len(PUBLIC)


def test_every_public_name_is_exported_and_nothing_else() -> None:
    exported = {name for name in vars(luo_core) if not name.startswith("_")}
    subpackages = {"cli", "devices", "kho", "memory", "platform", "serialization", "testing"}
    assert exported - subpackages == PUBLIC


def test_errors_share_one_base_and_carry_an_errno() -> None:
    for name in PUBLIC:
        obj = getattr(luo_core, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, luo_core.LiveUpdateError)
            assert isinstance(obj.errno, int)


def test_entry_point_group_and_pluggy_project_are_the_documented_ones() -> None:
    assert luo_core.ENTRY_POINT_GROUP == "luo_core.plugins"
    assert luo_core.hookimpl.project_name == "luo"
