"""Adapters from participants' callback tables to the orchestrator's steps.

A participant is a subsystem or a device; its key ``(kind, name)`` is also its
KHO node name, and ``label`` is how logs, stats and errors name it.  Values a
participant preserves go through :class:`~luo_core.kernel._preserved.Preserved`,
which seals them as they are kept and opens them in the next kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from luo_core.errors import DeviceError
from luo_core.kernel._records import Bus, Subsystem

if TYPE_CHECKING:
    from luo_core.kernel._preserved import Preserved
    from luo_core.kernel.devices import Device

Key = tuple[str, str]
DEVICE = "device"
SUBSYSTEM = "subsystem"


def label(key: Key) -> str:
    return f"{key[0]}:{key[1]}"


def device_key(dev: Device) -> Key:
    return (DEVICE, dev.name)


def subsystem_key(sub: Subsystem) -> Key:
    return (SUBSYSTEM, sub.name)


class SubsystemSteps:
    """The subsystem callbacks of each phase, with what they preserve."""

    def __init__(self, preserved: Preserved) -> None:
        self.preserved = preserved

    def prepare(self, sub: Subsystem) -> None:
        self.preserved.keep(subsystem_key(sub), sub.name, sub.schema, sub.ops.prepare())

    def freeze(self, sub: Subsystem) -> None:
        key = subsystem_key(sub)
        value = sub.ops.freeze(self.preserved.values[key])
        self.preserved.keep(key, sub.name, sub.schema, value)

    def cancel(self, sub: Subsystem) -> None:
        sub.ops.cancel(self.preserved.values[subsystem_key(sub)])

    def boot(self, sub: Subsystem, blob: bytes) -> None:
        sub.ops.boot(self.preserved.open(subsystem_key(sub), sub.name, sub.schema, blob))

    def finish(self, sub: Subsystem) -> None:
        sub.ops.finish(self.preserved.values.get(subsystem_key(sub)))


class DeviceSteps:
    """The per-device callbacks of each phase: driver first or bus first, as
    the phase requires.

    ``prepare`` and ``freeze`` run the driver's callback, then the bus's, as
    the RFC's ``__dev_liveupdate_reboot_prepare()``; a device whose bus
    callback failed after its driver's succeeded is kept in ``bus_failed``,
    so that its driver's work can be undone (``err_cancel_bus``).  A device
    without a driver (an ancestor nobody bound, say) still takes part: its
    bus's callbacks run and it hands nothing over, as
    ``DEV_LIVEUPDATE_CALLBACK()`` skips a missing driver.
    """

    def __init__(self, buses: dict[str, Bus], preserved: Preserved) -> None:
        self.buses = buses
        self.preserved = preserved
        self.bus_failed: set[str] = set()
        """Devices whose bus failed the running prepare or freeze after their driver succeeded."""

    def prepare(self, dev: Device) -> None:
        if dev.driver is not None:
            value = dev.driver.ops.prepare(dev)
            self.preserved.keep(device_key(dev), dev.driver.name, dev.driver.schema, value)
        self._bus(dev, self.buses[dev.bus].ops.prepare)

    def freeze(self, dev: Device) -> None:
        if dev.driver is not None:
            key = device_key(dev)
            value = dev.driver.ops.freeze(dev, self.preserved.values[key])
            self.preserved.keep(key, dev.driver.name, dev.driver.schema, value)
        self._bus(dev, self.buses[dev.bus].ops.freeze)

    def _bus(self, dev: Device, callback: Callable[[Device], None]) -> None:
        try:
            callback(dev)
        except Exception:
            if dev.driver is not None:
                self.bus_failed.add(dev.name)
            raise

    def cancel(self, dev: Device) -> None:
        """Bus ``cancel``, then driver ``cancel`` (``__dev_liveupdate_cancel()``)."""
        self.buses[dev.bus].ops.cancel(dev)
        self.cancel_driver(dev)

    def cancel_driver(self, dev: Device) -> None:
        """The driver's ``cancel`` alone: its bus failed (``err_cancel_bus``)."""
        if dev.driver is not None:
            dev.driver.ops.cancel(dev, self.preserved.values[device_key(dev)])

    def restore(self, dev: Device, blob: bytes) -> None:
        if dev.driver is None:
            raise DeviceError(f"no driver in this kernel for compatible {dev.compatible!r}")
        bus = self.buses.get(dev.bus)
        if bus is None:
            raise DeviceError(f"bus {dev.bus!r} is not registered in this kernel")
        value = self.preserved.open(device_key(dev), dev.driver.name, dev.driver.schema, blob)
        bus.ops.restore(dev)
        dev.driver.ops.restore(dev, value)

    def finish(self, dev: Device) -> None:
        """Driver ``finish`` (if a driver is bound), then bus ``finish`` (if the
        bus is registered), as ``device_liveupdate_finish()``."""
        if dev.driver is not None:
            dev.driver.ops.finish(dev, self.preserved.values.get(device_key(dev)))
        bus = self.buses.get(dev.bus)
        if bus is not None:
            bus.ops.finish(dev)
