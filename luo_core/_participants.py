"""Adapters from participants' callback tables to the orchestrator's steps.

A participant is a subsystem or a device; its key ``(kind, name)`` is also its
handoff record key, and ``label`` is how logs, stats and errors name it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from luo_core._errors import DeviceError
from luo_core._records import Bus, Subsystem

if TYPE_CHECKING:
    from luo_core.devices import Device

Key = tuple[str, str]
DEVICE = "device"
SUBSYSTEM = "subsystem"


def label(key: Key) -> str:
    return f"{key[0]}:{key[1]}"


def device_key(dev: Device) -> Key:
    return (DEVICE, dev.name)


def subsystem_key(sub: Subsystem) -> Key:
    return (SUBSYSTEM, sub.name)


def checked_bytes(value: object, what: str) -> bytes:
    """Preserved data must be bytes: nothing else may cross a kexec."""
    if not isinstance(value, bytes):
        raise TypeError(f"{what} returned {type(value).__name__}, expected bytes")
    return value


class DeviceSteps:
    """The per-device callbacks of each phase: driver first or bus first, as
    the phase requires.  ``data`` holds each participant's preserved bytes."""

    def __init__(self, buses: dict[str, Bus], data: dict[Key, bytes]) -> None:
        self.buses = buses
        self.data = data

    def prepare(self, dev: Device) -> None:
        assert dev.driver is not None
        self.data[device_key(dev)] = checked_bytes(
            dev.driver.ops.prepare(dev), f"{dev.driver.name}.prepare"
        )

    def freeze(self, dev: Device) -> None:
        assert dev.driver is not None
        key = device_key(dev)
        self.data[key] = checked_bytes(
            dev.driver.ops.freeze(dev, self.data[key]), f"{dev.driver.name}.freeze"
        )
        self.buses[dev.bus].ops.freeze(dev)

    def cancel(self, dev: Device) -> None:
        assert dev.driver is not None
        self.buses[dev.bus].ops.cancel(dev)
        dev.driver.ops.cancel(dev, self.data[device_key(dev)])

    def restore(self, dev: Device, compatible: str) -> None:
        if dev.driver is None:
            raise DeviceError(f"no driver in this kernel for compatible {dev.compatible!r}")
        if dev.driver.name != compatible:
            raise DeviceError(
                f"handed over by driver {compatible!r}, but this kernel binds {dev.driver.name!r}"
            )
        bus = self.buses.get(dev.bus)
        if bus is None:
            raise DeviceError(f"bus {dev.bus!r} is not registered in this kernel")
        bus.ops.restore(dev)
        dev.driver.ops.restore(dev, self.data[device_key(dev)])

    def finish(self, dev: Device) -> None:
        assert dev.driver is not None
        dev.driver.ops.finish(dev, self.data.get(device_key(dev)))
        self.buses[dev.bus].ops.finish(dev)
