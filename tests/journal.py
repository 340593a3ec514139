"""Test participants that journal every callback and can be told to fail."""

from __future__ import annotations

from collections.abc import Iterator

from luo_core import (
    Device,
    DeviceDriver,
    DeviceDriverOps,
    Subsystem,
    SubsystemOps,
    hookimpl,
)
from luo_core.platform import EXAMPLE_NIC

Journal = list[str]


class Boom(RuntimeError):
    """The failure a participant is told to raise."""


class JournalSubsystem(SubsystemOps):
    """A subsystem that journals ``phase:name`` and preserves ``payload``.

    ``fail`` holds ``phase:name`` strings that raise.
    """

    def __init__(self, name: str, journal: Journal, fail: set[str], payload: bytes) -> None:
        self.name, self.journal, self.fail, self.payload = name, journal, fail, payload
        self.booted: bytes | None = None

    def _note(self, phase: str) -> None:
        self.journal.append(f"{phase}:{self.name}")
        if f"{phase}:{self.name}" in self.fail:
            raise Boom(f"{self.name} told to fail {phase}")

    def prepare(self) -> bytes:
        self._note("prepare")
        return self.payload

    def freeze(self, data: bytes) -> bytes:
        self._note("freeze")
        return data

    def cancel(self, data: bytes) -> None:
        self._note("cancel")

    def boot(self, data: bytes) -> None:
        self._note("boot")
        self.booted = data

    def finish(self, data: bytes | None) -> None:
        self._note("finish")


class JournalDriver(DeviceDriverOps):
    """A NIC driver that journals ``phase:device``; its state is a counter.

    ``fail`` holds ``phase:device`` strings that raise.  ``driver_data`` is a
    dict; prepare/freeze/cancel must leave it as they found it (freeze only
    sets ``paused``, cancel clears it).
    """

    def __init__(self, journal: Journal, fail: set[str]) -> None:
        self.journal, self.fail = journal, fail

    def _note(self, phase: str, dev: Device) -> None:
        self.journal.append(f"{phase}:{dev.name}")
        if f"{phase}:{dev.name}" in self.fail:
            raise Boom(f"{dev.name} told to fail {phase}")

    def probe(self, dev: Device) -> None:
        dev.driver_data = {"counter": 0, "paused": False}
        dev.hw.regs["enabled"] = 1

    def prepare(self, dev: Device) -> bytes:
        self._note("prepare", dev)
        return str(dev.driver_data["counter"]).encode()

    def freeze(self, dev: Device, data: bytes) -> bytes:
        self._note("freeze", dev)
        dev.driver_data["paused"] = True
        return str(dev.driver_data["counter"]).encode()

    def cancel(self, dev: Device, data: bytes) -> None:
        self._note("cancel", dev)
        dev.driver_data["paused"] = False

    def restore(self, dev: Device, data: bytes) -> None:
        self._note("restore", dev)
        dev.driver_data = {"counter": int(data), "paused": False}

    def finish(self, dev: Device, data: bytes | None) -> None:
        self._note("finish", dev)


class JournalPack:
    """A plugin registering journal subsystems and the journal NIC driver.

    Each registration call builds fresh ops objects, as a real pack must: the
    next kernel gets new Python objects and only the handoff bytes.
    """

    def __init__(self, journal: Journal, subsystems: tuple[str, ...] = ("alpha", "beta")) -> None:
        self.journal = journal
        self.subsystem_names = subsystems
        self.fail: set[str] = set()
        self.live: dict[str, JournalSubsystem] = {}

    @hookimpl
    def luo_subsystems(self) -> Iterator[Subsystem]:
        for name in self.subsystem_names:
            ops = JournalSubsystem(name, self.journal, self.fail, f"{name}-state".encode())
            self.live[name] = ops
            yield Subsystem(name=name, ops=ops)

    @hookimpl
    def luo_device_drivers(self) -> Iterator[DeviceDriver]:
        yield DeviceDriver(
            name="journal-nic",
            compatible=[EXAMPLE_NIC],
            ops=JournalDriver(self.journal, self.fail),
        )
