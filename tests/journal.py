"""Test participants that journal every callback and can be told to fail.

:class:`JournalPack` is a plugin *factory* owned by the test: every boot calls
it for a fresh plugin (fresh ops objects), so nothing of one kernel reaches
the next but the handoff.  The factory keeps what the test observes: the
journal, the callbacks told to fail, and the newest ops of each subsystem.
"""

from __future__ import annotations

from collections.abc import Iterator

from luo_core import (
    Device,
    DeviceDriver,
    DeviceDriverOps,
    Subsystem,
    SubsystemOps,
    hookimpl,
    state,
    u64,
)
from luo_core.platform import EXAMPLE_NIC

Journal = list[str]


class Boom(RuntimeError):
    """The failure a participant is told to raise."""


@state(compatible="luo,test-journal", version=1)
class JournalRecord:
    """What a journal subsystem hands over."""

    payload: bytes


@state(compatible="luo,test-counter", version=1)
class CounterRecord:
    """What the journal NIC driver hands over per device."""

    counter: u64


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

    def prepare(self) -> JournalRecord:
        self._note("prepare")
        return JournalRecord(self.payload)

    def freeze(self, data: JournalRecord) -> JournalRecord:
        self._note("freeze")
        return data

    def cancel(self, data: JournalRecord) -> None:
        self._note("cancel")

    def boot(self, data: JournalRecord) -> None:
        self._note("boot")
        self.booted = data.payload

    def finish(self, data: JournalRecord | None) -> None:
        self._note("finish")


class JournalDriver(DeviceDriverOps):
    """A NIC driver that journals ``phase:device``; its state is a counter.

    ``fail`` holds ``phase:device`` strings that raise.  ``driver_data`` is a
    dict; prepare/freeze/cancel must leave it as they found it (freeze only
    sets ``paused``, cancel clears it).  Probe enables the NIC (``ctrl``).
    """

    def __init__(self, journal: Journal, fail: set[str]) -> None:
        self.journal, self.fail = journal, fail

    def _note(self, phase: str, dev: Device) -> None:
        self.journal.append(f"{phase}:{dev.name}")
        if f"{phase}:{dev.name}" in self.fail:
            raise Boom(f"{dev.name} told to fail {phase}")

    def probe(self, dev: Device) -> None:
        dev.driver_data = {"counter": 0, "paused": False}
        if any(r.name == "ctrl" for r in dev.regs.map):  # the example NIC's hardware
            dev.regs["ctrl"] = 1

    def prepare(self, dev: Device) -> CounterRecord:
        self._note("prepare", dev)
        return CounterRecord(dev.driver_data["counter"])

    def freeze(self, dev: Device, data: CounterRecord) -> CounterRecord:
        self._note("freeze", dev)
        dev.driver_data["paused"] = True
        return CounterRecord(dev.driver_data["counter"])

    def cancel(self, dev: Device, data: CounterRecord) -> None:
        self._note("cancel", dev)
        dev.driver_data["paused"] = False

    def restore(self, dev: Device, data: CounterRecord) -> None:
        self._note("restore", dev)
        dev.driver_data = {"counter": data.counter, "paused": False}

    def finish(self, dev: Device, data: CounterRecord | None) -> None:
        self._note("finish", dev)


class JournalPlugin:
    """What one kernel loads: fresh ops for every registration."""

    def __init__(self, factory: JournalPack) -> None:
        self.factory = factory

    @hookimpl
    def luo_subsystems(self) -> Iterator[Subsystem]:
        f = self.factory
        for name in f.subsystem_names:
            ops = JournalSubsystem(name, f.journal, f.fail, f"{name}-state".encode())
            f.live[name] = ops
            yield Subsystem(name=name, ops=ops, schema=JournalRecord)

    @hookimpl
    def luo_device_drivers(self) -> Iterator[DeviceDriver]:
        yield DeviceDriver(
            name="journal-nic",
            compatible=[self.factory.compatible],
            ops=JournalDriver(self.factory.journal, self.factory.fail),
            schema=CounterRecord,
        )


class JournalPack:
    """The plugin factory a test passes to ``plugins=``; it outlives kernels, as the test does."""

    def __init__(
        self,
        journal: Journal,
        subsystems: tuple[str, ...] = ("alpha", "beta"),
        compatible: str = EXAMPLE_NIC,
    ) -> None:
        self.journal = journal
        self.compatible = compatible
        self.subsystem_names = subsystems
        self.fail: set[str] = set()
        self.live: dict[str, JournalSubsystem] = {}

    def __call__(self) -> JournalPlugin:
        return JournalPlugin(self)
