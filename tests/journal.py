"""Test participants that journal every callback and can be told to fail.

:class:`JournalPack` is a plugin *factory* owned by the test: every boot calls
it for a fresh plugin (fresh ops objects), so nothing of one kernel reaches
the next but the handoff.  The factory keeps what the test observes: the
journal, the callbacks told to fail, and the newest ops of each subsystem.

Also shared by several test files: assertions (:func:`one_error`,
:func:`assert_raw_bytes_refused`) and fake installed packs (:class:`DistFactory`,
behind the ``make_dist`` fixture of ``conftest``).
"""

from __future__ import annotations

import importlib
import itertools
import re
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import pytest

from luo_core import (
    Bus,
    BusOps,
    Device,
    DeviceDriver,
    DeviceDriverOps,
    Kernel,
    State,
    Subsystem,
    SubsystemOps,
    hookimpl,
    state,
    u64,
)
from luo_core.cli import main
from luo_core.errors import CallbackError
from luo_core.kernel._records import PluginOrigin
from luo_core.platform import EXAMPLE_NIC
from luo_core.platform._models import ENTRY_POINT_GROUP

Journal = list[str]


class Boom(RuntimeError):
    """The failure a participant is told to raise."""


@state(compatible="luo,test-empty", version=1)
class Empty:
    """The state of a participant that hands over nothing."""


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


class JournalBus(BusOps):
    """A bus that journals ``bus-phase:device``; ``fail`` holds such strings that raise."""

    def __init__(self, journal: Journal, fail: set[str]) -> None:
        self.journal, self.fail = journal, fail

    def _note(self, phase: str, dev: Device) -> None:
        self.journal.append(f"bus-{phase}:{dev.name}")
        if f"bus-{phase}:{dev.name}" in self.fail:
            raise Boom(f"{dev.name}'s bus told to fail {phase}")

    def prepare(self, dev: Device) -> None:
        self._note("prepare", dev)

    def freeze(self, dev: Device) -> None:
        self._note("freeze", dev)

    def cancel(self, dev: Device) -> None:
        self._note("cancel", dev)

    def restore(self, dev: Device) -> None:
        self._note("restore", dev)

    def finish(self, dev: Device) -> None:
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
    def luo_buses(self) -> Iterator[Bus]:
        for name in self.factory.bus_names:
            yield Bus(name=name, ops=JournalBus(self.factory.journal, self.factory.fail))

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
        buses: tuple[str, ...] = (),
    ) -> None:
        self.journal = journal
        self.compatible = compatible
        self.subsystem_names = subsystems
        self.bus_names = buses
        self.fail: set[str] = set()
        self.live: dict[str, JournalSubsystem] = {}

    def __call__(self) -> JournalPlugin:
        return JournalPlugin(self)


def assert_raw_bytes_refused(kernel: Kernel, participant: str, detail: str) -> None:
    """``prepare`` fails on a participant that returned raw bytes, and nothing is preserved."""
    with pytest.raises(CallbackError, match="raw bytes are not a handoff format") as caught:
        kernel.prepare()
    assert (caught.value.participant, caught.value.phase) == (participant, "prepare")
    assert detail in str(caught.value)
    assert kernel.state is State.NORMAL
    assert kernel.kho.nodes == {}


def one_error(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``luo argv``: it must exit 1 with nothing on stdout and one line on stderr,
    ``luo VERB: error: ...`` (``VERB`` being ``argv[0]``).  Returns that line."""
    code = main(list(argv))
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert (code, captured.out, len(lines)) == (1, "", 1), (code, captured.out, captured.err)
    assert lines[0].startswith(f"luo {argv[0]}: error: "), lines[0]
    return lines[0]


# -- installed packs: *.dist-info and plugin modules on sys.path -----------------

_serial = itertools.count()

PRELUDE = """\
from luo_core import DeviceDriver, DeviceDriverOps, Subsystem, SubsystemOps, hookimpl, state

BOOTED = []


@state(compatible="luo-test,fake-nic-state", version=1)
class FakeNicState:
    payload: bytes


@state(compatible="luo-test,fake-subsystem-state", version=1)
class FakeSubsystemState:
    payload: bytes


class FakeNicOps(DeviceDriverOps):
    def probe(self, dev):
        dev.driver_data = "probed"

    def prepare(self, dev):
        return FakeNicState(b"nic-state:" + dev.name.encode())

    def restore(self, dev, data):
        dev.driver_data = data.payload


class FakeSubsystemOps(SubsystemOps):
    def prepare(self):
        return FakeSubsystemState(b"subsystem-state")

    def boot(self, data):
        BOOTED.append(data.payload)
"""

DRIVER_HOOK = """
@hookimpl
def luo_device_drivers():
    yield DeviceDriver(
        name={name!r}, compatible={compatibles!r}, ops=FakeNicOps(), schema=FakeNicState
    )
"""

SUBSYSTEM_HOOK = """
@hookimpl
def luo_subsystems():
    yield Subsystem(name={name!r}, ops=FakeSubsystemOps(), schema=FakeSubsystemState)
"""


def pack_source(
    *,
    driver: str | None = None,
    compatibles: Sequence[str] = (),
    subsystem: str | None = None,
    extra: str = "",
) -> str:
    """A plugin module registering the given driver and subsystem, plus ``extra`` code."""
    parts = [PRELUDE]
    if driver is not None:
        parts.append(DRIVER_HOOK.format(name=driver, compatibles=list(compatibles)))
    if subsystem is not None:
        parts.append(SUBSYSTEM_HOOK.format(name=subsystem))
    parts.append(textwrap.dedent(extra))
    return "\n".join(parts)


@attrs.frozen
class FakeDist:
    """One fake installed distribution and the plugin module its entry point names."""

    name: str
    version: str
    module: str

    @property
    def origin(self) -> PluginOrigin:
        return PluginOrigin(self.name, self.version)


class DistFactory:
    """Installs fake distributions into one directory on ``sys.path``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: list[str] = []

    def __call__(
        self,
        name: str,
        source: str | None,
        *,
        version: str = "1.0",
        attr: str | None = None,
        entry_point: str | None = None,
        module: str | None = None,
    ) -> FakeDist:
        """Install ``name`` whose plugin module holds ``source``; its entry point is
        called ``entry_point`` (default: the name's slug) and names ``module[:attr]``.

        ``module`` defaults to a fresh ``luo_fake_<n>_<slug>``; with ``source`` None no
        module is written (``module`` is importable from elsewhere, or not at all)."""
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower())
        module = module or f"luo_fake_{next(_serial)}_{slug}"
        # The directory stem must hold the escaped name: importlib.metadata
        # deduplicates distributions by the part of the stem before the first "-".
        info = self.root / f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        target = module if attr is None else f"{module}:{attr}"
        (info / "entry_points.txt").write_text(
            f"[{ENTRY_POINT_GROUP}]\n{entry_point or slug} = {target}\n"
        )
        if source is not None:
            (self.root / f"{module}.py").write_text(source)
        self.modules.append(module)
        importlib.invalidate_caches()
        return FakeDist(name, version, module)

    def good(self, name: str, stem: str, *, version: str = "1.0") -> FakeDist:
        """A well-formed pack: driver ``<stem>-nic`` for ``luo-test,<stem>``, subsystem
        ``<stem>-sub``."""
        return self(
            name,
            pack_source(
                driver=f"{stem}-nic", compatibles=[f"luo-test,{stem}"], subsystem=f"{stem}-sub"
            ),
            version=version,
        )
