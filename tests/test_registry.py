"""Plugin discovery: entry points, origins, failed and disabled packs, conflicts, ``luo drivers``.

Packs are installed for real: each test writes ``*.dist-info`` directories and
plugin modules into a directory on ``sys.path``, so discovery goes through
``importlib.metadata`` exactly as it does for a ``pip install``-ed pack.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, MutableMapping
from importlib import metadata
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from luo_core import (
    DeviceDriver,
    DeviceDriverOps,
    Kernel,
    Machine,
    Subsystem,
    SubsystemOps,
)
from luo_core.cli import main
from luo_core.errors import PluginConflictError
from luo_core.kernel._records import PluginOrigin
from luo_core.kernel._registry import PackInfo, PluginRegistry, load_plugins
from luo_core.platform import EXAMPLE_NIC
from luo_core.platform._models import DISABLE_ENV, ENTRY_POINT_GROUP, normalize
from tests.journal import DistFactory, FakeDist, assert_raw_bytes_refused, pack_source

EXAMPLE_PACK = "luo-example-nic"
LogEvent = MutableMapping[str, Any]
RunLuo = Callable[..., tuple[int, str, str]]

_serial = itertools.count()

# -- installing fake packs ----------------------------------------------------

FACTORY_PACK = """
BUILT = []


class FactoryPack:
    \"\"\"A plugin class: the entry point names it, every boot builds one.\"\"\"

    def __init__(self):
        BUILT.append(type(self).__name__)

    @hookimpl
    def luo_device_drivers(self):
        yield DeviceDriver(
            name={stem!r} + "-nic",
            compatible=["luo-test," + {stem!r}],
            ops=FakeNicOps(),
            schema=FakeNicState,
        )

    @hookimpl
    def luo_subsystems(self):
        yield Subsystem(name={stem!r} + "-sub", ops=FakeSubsystemOps(), schema=FakeSubsystemState)


def make_pack():
    return FactoryPack()


NOT_A_FACTORY = FactoryPack()
BUILT.clear()  # count only what kernels build
"""


@pytest.fixture(autouse=True)
def _only_known_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Block installed packs other than the example one, so results depend only on
    the packs a test installs (and on the example pack)."""
    others = {
        normalize(ep.dist.name)
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)
        if ep.dist is not None
    } - {EXAMPLE_PACK}
    monkeypatch.setenv(DISABLE_ENV, ",".join(sorted(others)))


@pytest.fixture
def run_luo(capsys: pytest.CaptureFixture[str]) -> Iterator[RunLuo]:
    """Run the ``luo`` command; returns ``(exit code, stdout, stderr)``."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    structlog.reset_defaults()  # main() configures logging for the process


def disable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    """Append ``raw`` to ``LUO_DISABLE_PLUGINS`` as a user would write it."""
    current = os.environ.get(DISABLE_ENV, "")
    monkeypatch.setenv(DISABLE_ENV, f"{current},{raw}" if current else raw)


# -- reading results ----------------------------------------------------------


def packs_of(registry: PluginRegistry, distribution: str) -> list[PackInfo]:
    return [p for p in registry.packs if p.origin.distribution == distribution]


def only_pack(registry: PluginRegistry, distribution: str) -> PackInfo:
    packs = packs_of(registry, distribution)
    assert len(packs) == 1, f"{distribution} listed {len(packs)} times: {packs}"
    return packs[0]


def failures(logs: list[LogEvent]) -> list[LogEvent]:
    return [e for e in logs if e["event"] == "plugin_failed"]


def assert_loaded(registry: PluginRegistry, dist: FakeDist, stem: str) -> None:
    """``dist`` (made by :meth:`DistFactory.good`) loaded and owns its records."""
    pack = only_pack(registry, dist.name)
    assert (pack.status, pack.error) == ("loaded", None)
    assert pack.origin == dist.origin
    driver = registry.drivers[f"luo-test,{stem}"]
    subsystem = registry.subsystems[f"{stem}-sub"]
    assert pack.records == (driver, subsystem)
    assert driver.origin == subsystem.origin == dist.origin


def assert_failed_once(
    registry: PluginRegistry, logs: list[LogEvent], dist: FakeDist, *causes: str
) -> PackInfo:
    """``dist`` is listed once as failed, with every cause in its error, and
    reported by exactly one ``plugin_failed`` event."""
    pack = only_pack(registry, dist.name)
    assert pack.status == "failed"
    assert pack.error is not None
    for cause in causes:
        assert cause in pack.error
    assert pack.records == ()
    events = failures(logs)
    assert [e["distribution"] for e in events] == [dist.name]
    assert events[0]["error"] == pack.error
    assert events[0]["log_level"] == "error"
    return pack


def assert_owns_nothing(registry: PluginRegistry, dist: FakeDist) -> None:
    """No record of ``dist`` is registered and none of its hooks will be called."""
    records: list[Subsystem | DeviceDriver] = [
        *registry.subsystems.values(),
        *registry.drivers.values(),
    ]
    assert [r for r in records if r.origin == dist.origin] == []
    module = sys.modules.get(dist.module)
    if module is not None:
        assert not registry.pm.is_registered(module)


# -- discovery and origins ----------------------------------------------------


def test_discovered_pack_records_carry_its_distribution(make_dist: DistFactory) -> None:
    dist = make_dist.good("luo-fake-nic", "fakenic", version="2.3.1")

    with capture_logs() as logs:
        registry = load_plugins(discover=True, builtin=None)

    assert_loaded(registry, dist, "fakenic")
    assert registry.drivers["luo-test,fakenic"].name == "fakenic-nic"
    assert failures(logs) == []


def test_example_pack_is_discovered() -> None:
    registry = load_plugins(discover=True, builtin=None)

    pack = only_pack(registry, EXAMPLE_PACK)
    origin = PluginOrigin(EXAMPLE_PACK, metadata.version(EXAMPLE_PACK))
    assert (pack.origin, pack.status, pack.error) == (origin, "loaded", None)
    driver = registry.drivers[EXAMPLE_NIC]
    assert driver.origin == origin
    assert driver in pack.records
    subsystems = [r for r in pack.records if isinstance(r, Subsystem)]
    assert subsystems
    for subsystem in subsystems:
        assert registry.subsystems[subsystem.name].origin == origin


def test_kernel_boot_runs_a_discovered_pack_through_a_live_update(
    make_dist: DistFactory,
) -> None:
    dist = make_dist.good("luo-fake-nic", "fakenic", version="0.4")
    machine = Machine()
    machine.add("fake0", compatible="luo-test,fakenic")

    kernel = Kernel.boot(machine)

    assert only_pack(kernel.registry, dist.name).status == "loaded"
    assert only_pack(kernel.registry, EXAMPLE_PACK).status == "loaded"
    assert kernel.subsystems["fakenic-sub"].origin == dist.origin
    nic = kernel.devices["fake0"]
    assert nic.driver is not None
    assert nic.driver.origin == dist.origin
    assert nic.driver_data == "probed"
    old_ops = nic.driver.ops

    kernel.devices.request("fake0")
    kernel.prepare()
    new_kernel = kernel.kexec()

    assert new_kernel.devices["fake0"].reclaimed
    assert new_kernel.devices["fake0"].driver_data == b"nic-state:fake0"
    new_driver = new_kernel.devices["fake0"].driver
    assert new_driver is not None and new_driver.ops is not old_ops  # the hook ran again
    assert sys.modules[dist.module].BOOTED == [b"subsystem-state"]


@pytest.mark.parametrize("attr", ["FactoryPack", "make_pack"], ids=["class", "function"])
def test_an_entry_point_may_name_a_factory_called_afresh_on_every_boot(
    make_dist: DistFactory, attr: str
) -> None:
    dist = make_dist(
        "luo-fake-factory",
        pack_source(extra=FACTORY_PACK.format(stem="factory")),
        version="1.2",
        attr=attr,
    )

    with capture_logs() as logs:
        first = load_plugins(discover=True, builtin=None)
        second = load_plugins(discover=True, builtin=None)

    assert failures(logs) == []
    assert_loaded(first, dist, "factory")
    assert_loaded(second, dist, "factory")
    module = sys.modules[dist.module]
    assert module.BUILT == ["FactoryPack", "FactoryPack"]
    [one] = [p for p in first.pm.get_plugins() if isinstance(p, module.FactoryPack)]
    [two] = [p for p in second.pm.get_plugins() if isinstance(p, module.FactoryPack)]
    assert one is not two and one is not module.NOT_A_FACTORY
    assert first.drivers["luo-test,factory"].ops is not second.drivers["luo-test,factory"].ops
    assert first.subsystems["factory-sub"].ops is not second.subsystems["factory-sub"].ops


def test_a_discovered_factory_pack_is_rebuilt_by_the_next_kernel(make_dist: DistFactory) -> None:
    dist = make_dist(
        "luo-fake-factory",
        pack_source(extra=FACTORY_PACK.format(stem="factory")),
        attr="FactoryPack",
    )
    machine = Machine()
    machine.add("fake0", compatible="luo-test,factory")
    kernel = Kernel.boot(machine)
    nic = kernel.devices["fake0"]
    assert nic.driver is not None and nic.driver.origin == dist.origin
    old_ops = nic.driver.ops

    kernel.devices.request("fake0")
    kernel.prepare()
    new_kernel = kernel.kexec()  # the leak check passes: nothing of the old pack crossed

    module = sys.modules[dist.module]
    assert module.BUILT == ["FactoryPack", "FactoryPack"]
    new_nic = new_kernel.devices["fake0"]
    assert (new_nic.reclaimed, new_nic.driver_data) == (True, b"nic-state:fake0")
    assert new_nic.driver is not None and new_nic.driver.ops is not old_ops
    assert new_kernel.subsystems["factory-sub"].origin == dist.origin
    assert module.BOOTED == [b"subsystem-state"]


def test_an_entry_point_naming_a_plugin_instance_fails_the_pack(make_dist: DistFactory) -> None:
    instance = make_dist(
        "luo-fake-instance",
        pack_source(extra=FACTORY_PACK.format(stem="instance")),
        attr="NOT_A_FACTORY",
    )
    kept = make_dist.good("luo-fake-kept", "kept")

    with capture_logs() as logs:
        registry = load_plugins(discover=True, builtin=None)

    assert_failed_once(
        registry, logs, instance, "PluginError", "FactoryPack is neither a module nor a factory"
    )
    assert_owns_nothing(registry, instance)
    assert "luo-test,instance" not in registry.drivers
    assert_loaded(registry, kept, "kept")


# -- every participant declares its state -------------------------------------


def test_a_participant_without_a_schema_is_refused_at_construction() -> None:
    with pytest.raises(
        ValueError, match=r"^bare-sub: declare the state it hands over as a @state"
    ):
        Subsystem(name="bare-sub", ops=SubsystemOps())
    with pytest.raises(
        ValueError, match=r"^bare-nic: declare the state it hands over as a @state"
    ):
        DeviceDriver(name="bare-nic", compatible=["luo-test,bare"], ops=DeviceDriverOps())
    # A driver without live-update callbacks hands nothing over: it needs no schema.
    plain = DeviceDriver(
        name="plain-nic", compatible=["luo-test,plain"], ops=DeviceDriverOps(), liveupdate=False
    )
    assert plain.schema is None


def test_an_installed_pack_handing_over_raw_bytes_fails_prepare(make_dist: DistFactory) -> None:
    dist = make_dist(
        "luo-fake-raw",
        pack_source(
            subsystem="raw-ok-sub",
            extra="""
            class RawNicOps(FakeNicOps):
                def prepare(self, dev):
                    return b"nic-state:" + dev.name.encode()

            @hookimpl
            def luo_device_drivers():
                yield DeviceDriver(
                    name="raw-nic",
                    compatible=["luo-test,raw"],
                    ops=RawNicOps(),
                    schema=FakeNicState,
                )
            """,
        ),
    )
    machine = Machine()
    machine.add("raw0", compatible="luo-test,raw")
    kernel = Kernel.boot(machine)
    assert only_pack(kernel.registry, dist.name).status == "loaded"
    kernel.devices.request("raw0")

    assert_raw_bytes_refused(
        kernel, "device:raw0", "raw-nic returned bytes, expected its schema FakeNicState"
    )


# -- broken packs are reported once and skipped -------------------------------


@pytest.mark.parametrize(
    ("source", "causes"),
    [
        pytest.param(
            "raise RuntimeError('needs libfakenic.so')\n",
            ["RuntimeError", "needs libfakenic.so"],
            id="raises",
        ),
        pytest.param(
            "import luo_fake_absent_dependency\n",
            ["ModuleNotFoundError", "luo_fake_absent_dependency"],
            id="missing-dependency",
        ),
        pytest.param("def broken(:\n", ["SyntaxError"], id="syntax-error"),
        pytest.param("import sys\nsys.exit(3)\n", ["SystemExit: 3"], id="exits"),
    ],
)
def test_pack_that_fails_to_import_is_reported_once_and_skipped(
    make_dist: DistFactory, source: str, causes: list[str]
) -> None:
    before = make_dist.good("luo-fake-a", "alpha")
    broken = make_dist("luo-fake-b-broken", source)
    after = make_dist.good("luo-fake-c", "gamma")

    with capture_logs() as logs:
        registry = load_plugins(discover=True, builtin=None)

    pack = assert_failed_once(registry, logs, broken, *causes)
    assert pack.origin == broken.origin
    assert_loaded(registry, before, "alpha")
    assert_loaded(registry, after, "gamma")


@pytest.mark.parametrize(
    ("extra", "cause"),
    [
        pytest.param(
            """
            @hookimpl
            def luo_subsystem():
                yield Subsystem(name="typo-sub", ops=FakeSubsystemOps(), schema=FakeSubsystemState)
            """,
            "unknown hook 'luo_subsystem' (did you mean 'luo_subsystems'?)",
            id="luo_subsystem",
        ),
        pytest.param(
            """
            @hookimpl
            def luo_device_driver():
                yield DeviceDriver(
                    name="typo-nic",
                    compatible=["luo-test,typo"],
                    ops=FakeNicOps(),
                    schema=FakeNicState,
                )
            """,
            "unknown hook 'luo_device_driver' (did you mean 'luo_device_drivers'?)",
            id="luo_device_driver",
        ),
        pytest.param(
            """
            @hookimpl
            def luo_phase_started(phase, stats):
                pass
            """,
            "stats",
            id="argument-not-in-spec",
        ),
        pytest.param(
            """
            @hookimpl
            def luo_state_changed(kernel, old, new, event):
                pass
            """,
            "{'kernel'}",
            id="observer-asks-for-the-kernel",
        ),
    ],
)
def test_misspelt_hook_fails_the_pack(make_dist: DistFactory, extra: str, cause: str) -> None:
    before = make_dist.good("luo-fake-a", "alpha")
    typo = make_dist(
        "luo-fake-b-typo",
        pack_source(driver="typo-ok-nic", compatibles=["luo-test,typo-ok"], extra=extra),
    )
    after = make_dist.good("luo-fake-c", "gamma")

    with capture_logs() as logs:
        registry = load_plugins(discover=True, builtin=None)

    assert_failed_once(registry, logs, typo, cause)
    assert "luo-test,typo-ok" not in registry.drivers
    assert_owns_nothing(registry, typo)
    assert_loaded(registry, before, "alpha")
    assert_loaded(registry, after, "gamma")


def test_a_hook_close_to_no_known_one_lists_the_hooks(make_dist: DistFactory) -> None:
    odd = make_dist(
        "luo-fake-odd",
        pack_source(
            extra="""
            @hookimpl
            def luo_frobnicate():
                pass
            """
        ),
    )

    with capture_logs() as logs:
        registry = load_plugins(discover=True, builtin=None)

    pack = assert_failed_once(registry, logs, odd, "unknown hook 'luo_frobnicate' (luo's hooks: ")
    assert pack.error is not None
    assert all(hook in pack.error for hook in ("luo_contracts", "luo_device_models"))


def test_drivers_shows_a_misspelt_hook_with_the_name_meant(
    make_dist: DistFactory, run_luo: RunLuo
) -> None:
    make_dist(
        "luo-fake-typo",
        pack_source(
            extra="""
            @hookimpl
            def luo_device_driver():
                return []
            """
        ),
    )

    code, out, _ = run_luo("drivers")

    assert code == 1
    assert (
        "luo-fake-typo 1.0  failed: unknown hook 'luo_device_driver' "
        "(did you mean 'luo_device_drivers'?)"
    ) in text_blocks(out)


BAD_SUBSYSTEMS = """
@hookimpl
def luo_subsystems():
    {body}
"""
BAD_DRIVERS = """
@hookimpl
def luo_device_drivers():
    {body}
"""


@pytest.mark.parametrize(
    ("template", "body", "causes"),
    [
        pytest.param(
            BAD_SUBSYSTEMS,
            "yield {'name': 'dict-sub', 'ops': FakeSubsystemOps()}",
            ["luo_subsystems", "dict-sub", "expected a Subsystem"],
            id="subsystems-yields-dict",
        ),
        pytest.param(
            BAD_SUBSYSTEMS,
            "yield DeviceDriver(name='misfiled', compatible=['luo-test,x'], ops=FakeNicOps(),"
            " schema=FakeNicState)",
            ["luo_subsystems", "expected a Subsystem"],
            id="subsystems-yields-driver",
        ),
        pytest.param(
            BAD_SUBSYSTEMS,
            "raise RuntimeError('subsystem table corrupt')",
            ["luo_subsystems", "RuntimeError", "subsystem table corrupt"],
            id="subsystems-raises",
        ),
        pytest.param(
            BAD_SUBSYSTEMS,
            "yield Subsystem(name='Not A Name', ops=FakeSubsystemOps(),"
            " schema=FakeSubsystemState)",
            ["luo_subsystems", "ValueError", "Not A Name"],
            id="subsystems-invalid-record",
        ),
        pytest.param(
            BAD_SUBSYSTEMS,
            "yield Subsystem(name='bare-sub', ops=FakeSubsystemOps())",
            [
                "luo_subsystems",
                "ValueError",
                "bare-sub: declare the state it hands over",
                "@state",
            ],
            id="subsystems-without-schema",
        ),
        pytest.param(
            BAD_SUBSYSTEMS,
            "return 42",
            ["luo_subsystems", "returned 42", "expected an iterable"],
            id="subsystems-returns-int",
        ),
        pytest.param(
            BAD_DRIVERS,
            "yield {'name': 'dict-nic', 'compatible': ['luo-test,dict']}",
            ["luo_device_drivers", "dict-nic", "expected a DeviceDriver"],
            id="drivers-yields-dict",
        ),
        pytest.param(
            BAD_DRIVERS,
            "raise SystemExit('driver table says exit')",
            ["luo_device_drivers", "SystemExit", "driver table says exit"],
            id="drivers-exits",
        ),
        pytest.param(
            BAD_DRIVERS,
            "raise OSError(errno.ENODEV, 'no firmware')",
            ["luo_device_drivers", "no firmware"],
            id="drivers-raises",
        ),
        pytest.param(
            BAD_DRIVERS,
            "yield DeviceDriver(name='bare-nic', compatible=['luo-test,bare'], ops=FakeNicOps())",
            [
                "luo_device_drivers",
                "ValueError",
                "bare-nic: declare the state it hands over",
                "@state",
            ],
            id="drivers-without-schema",
        ),
    ],
)
def test_bad_registration_hook_fails_the_pack(
    make_dist: DistFactory, template: str, body: str, causes: list[str]
) -> None:
    before = make_dist.good("luo-fake-a", "alpha")
    # The pack's other registration hook is fine; none of its records may register.
    if template is BAD_SUBSYSTEMS:
        good = pack_source(driver="bad-ok-nic", compatibles=["luo-test,bad-ok"])
    else:
        good = pack_source(subsystem="bad-ok-sub")
    bad = make_dist("luo-fake-b-bad", "import errno\n" + good + template.format(body=body))
    after = make_dist.good("luo-fake-c", "gamma")

    with capture_logs() as logs:
        registry = load_plugins(discover=True, builtin=None)

    assert_failed_once(registry, logs, bad, *causes)
    assert "luo-test,bad-ok" not in registry.drivers
    assert "bad-ok-sub" not in registry.subsystems
    assert_owns_nothing(registry, bad)
    assert_loaded(registry, before, "alpha")
    assert_loaded(registry, after, "gamma")


def test_pack_failing_in_every_registration_hook_is_reported_once(
    make_dist: DistFactory,
) -> None:
    bad = make_dist(
        "luo-fake-twice",
        pack_source(
            extra="""
            @hookimpl
            def luo_device_drivers():
                raise RuntimeError("driver table corrupt")

            @hookimpl
            def luo_subsystems():
                raise RuntimeError("subsystem table corrupt")
            """
        ),
    )
    good = make_dist.good("luo-fake-z", "zeta")

    with capture_logs() as logs:
        registry = load_plugins(discover=True, builtin=None)

    assert_failed_once(registry, logs, bad, "table corrupt")
    assert_owns_nothing(registry, bad)
    assert_loaded(registry, good, "zeta")


def test_records_of_a_failed_pack_do_not_conflict(make_dist: DistFactory) -> None:
    failed = make_dist(
        "luo-fake-a-failed",
        pack_source(
            driver="shared-nic",
            compatibles=["luo-test,shared"],
            extra="""
            @hookimpl
            def luo_subsystems():
                raise RuntimeError("boom")
            """,
        ),
    )
    owner = make_dist(
        "luo-fake-b-owner",
        pack_source(driver="shared-nic", compatibles=["luo-test,shared"], subsystem="owner-sub"),
    )

    registry = load_plugins(discover=True, builtin=None)

    assert only_pack(registry, failed.name).status == "failed"
    assert registry.drivers["luo-test,shared"].origin == owner.origin


# -- conflicts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "claim"),
    [
        pytest.param(
            pack_source(driver="nic-a", compatibles=["luo-test,a", "luo-test,shared"]),
            pack_source(driver="nic-b", compatibles=["luo-test,shared"]),
            "'luo-test,shared'",
            id="compatible",
        ),
        pytest.param(
            pack_source(subsystem="shared-sub"),
            pack_source(subsystem="shared-sub"),
            "'shared-sub'",
            id="subsystem",
        ),
        pytest.param(
            pack_source(driver="shared-nic", compatibles=["luo-test,a"]),
            pack_source(driver="shared-nic", compatibles=["luo-test,b"]),
            "'shared-nic'",
            id="driver-name",
        ),
    ],
)
def test_two_packs_claiming_the_same_thing_conflict(
    make_dist: DistFactory, first: str, second: str, claim: str
) -> None:
    make_dist("luo-fake-first", first, version="1.0")
    make_dist("luo-fake-second", second, version="2.0")

    with pytest.raises(PluginConflictError) as caught:
        load_plugins(discover=True, builtin=None)

    assert caught.value.errno == errno.EEXIST
    message = str(caught.value)
    assert claim in message
    assert "luo-fake-first 1.0" in message
    assert "luo-fake-second 2.0" in message


def test_pack_claiming_the_example_nic_conflicts_with_the_example_pack(
    make_dist: DistFactory,
) -> None:
    make_dist("luo-fake-clone", pack_source(driver="clone-nic", compatibles=[EXAMPLE_NIC]))

    with pytest.raises(PluginConflictError) as caught:
        Kernel.boot(Machine())

    assert caught.value.errno == errno.EEXIST
    assert EXAMPLE_PACK in str(caught.value)
    assert "luo-fake-clone 1.0" in str(caught.value)


def test_disabling_one_side_resolves_a_conflict(
    make_dist: DistFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dist.good("luo-fake-first", "shared")
    second = make_dist.good("luo-fake-second", "shared")
    disable(monkeypatch, "luo-fake-first")

    registry = load_plugins(discover=True, builtin=None)

    assert only_pack(registry, "luo-fake-first").status == "disabled"
    assert_loaded(registry, second, "shared")


# -- LUO_DISABLE_PLUGINS ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "spelling"),
    [
        pytest.param("Luo_Fake_Pack", "luo-fake-pack", id="dist-name-not-normalised"),
        pytest.param("luo-fake-pack", "Luo_Fake_Pack", id="env-not-normalised"),
        pytest.param("luo.fake--pack", "LUO_FAKE.PACK", id="mixed-separators"),
    ],
)
def test_disabled_pack_is_listed_but_never_imported(
    make_dist: DistFactory, monkeypatch: pytest.MonkeyPatch, name: str, spelling: str
) -> None:
    blocked = make_dist.good(name, "blocked", version="3.1")
    kept = make_dist.good("luo-fake-kept", "kept")
    disable(monkeypatch, spelling)

    with capture_logs() as logs:
        registry = load_plugins(discover=True, builtin=None)

    pack = only_pack(registry, name)
    assert (pack.origin, pack.status, pack.records) == (blocked.origin, "disabled", ())
    assert "luo-test,blocked" not in registry.drivers
    assert "blocked-sub" not in registry.subsystems
    assert blocked.module not in sys.modules
    assert failures(logs) == []
    assert any(e["event"] == "plugin_disabled" and e["distribution"] == name for e in logs)
    assert_loaded(registry, kept, "kept")


def test_disable_list_names_several_packs(
    make_dist: DistFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_dist.good("luo-fake-first", "first")
    second = make_dist.good("luo-fake-second", "second")
    kept = make_dist.good("luo-fake-kept", "kept")
    disable(monkeypatch, "luo-fake-first,LUO_EXAMPLE_NIC,,luo-fake-second")

    registry = load_plugins(discover=True, builtin=None)

    for name in (first.name, second.name, EXAMPLE_PACK):
        assert only_pack(registry, name).status == "disabled"
    assert EXAMPLE_NIC not in registry.drivers
    assert_loaded(registry, kept, "kept")


def test_disable_list_tolerates_spaces_after_commas(
    make_dist: DistFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_dist.good("luo-fake-first", "first")
    second = make_dist.good("luo-fake-second", "second")
    disable(monkeypatch, " luo-fake-first , luo-fake-second")

    registry = load_plugins(discover=True, builtin=None)

    assert only_pack(registry, first.name).status == "disabled"
    assert only_pack(registry, second.name).status == "disabled"


def test_disabling_a_name_no_pack_has_is_a_warning(
    make_dist: DistFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = make_dist.good("luo-fake-kept", "kept")
    unknown = f"nonsense-{next(_serial)}"  # each list is reported once per process
    disable(monkeypatch, f"{unknown}, luo-core,LUO_FAKE_KEPT")

    with capture_logs() as logs:
        registry = load_plugins(discover=True, builtin=None)
        again = load_plugins(discover=True, builtin=None)

    assert only_pack(registry, kept.name).status == "disabled"
    # luo-core is luo itself, not a pack: it cannot be disabled either.
    assert registry.unknown_disabled == again.unknown_disabled == [unknown, "luo-core"]
    warnings = [e for e in logs if e["event"] == "plugin_disable_unknown"]
    assert len(warnings) == 1  # not once per boot
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["names"] == [unknown, "luo-core"]
    assert warnings[0]["error"] == f"{DISABLE_ENV} names no installed pack: {unknown}, luo-core"


def test_a_disable_list_of_installed_packs_warns_of_nothing(
    make_dist: DistFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dist.good("luo-fake-first", "first")
    disable(monkeypatch, "luo_fake_first")

    with capture_logs() as logs:
        registry = load_plugins(discover=True, builtin=None)

    assert registry.unknown_disabled == []
    assert [e for e in logs if e["event"] == "plugin_disable_unknown"] == []


# -- luo drivers --------------------------------------------------------------


def text_blocks(out: str) -> dict[str, list[str]]:
    """``luo drivers`` text output: each pack's header line -> its indented lines."""
    blocks: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in out.splitlines():
        if line.startswith(" "):
            lines.append(line.strip())
        else:
            lines = blocks.setdefault(line, [])
    return blocks


def json_pack(packs: list[dict[str, Any]], distribution: str) -> dict[str, Any]:
    found = [p for p in packs if p["distribution"] == distribution]
    assert len(found) == 1, found
    return found[0]


def test_drivers_lists_packs_versions_and_what_they_handle(
    make_dist: DistFactory, run_luo: RunLuo
) -> None:
    make_dist.good("luo-fake-nic", "fakenic", version="2.3.1")

    code, out, _ = run_luo("drivers")

    assert code == 0
    blocks = text_blocks(out)
    lines = blocks["luo-fake-nic 2.3.1  loaded"]
    assert any(re.fullmatch(r"driver\s+fakenic-nic\s+luo-test,fakenic", x) for x in lines)
    assert any(re.fullmatch(r"subsystem\s+fakenic-sub", x) for x in lines)
    example = blocks[f"{EXAMPLE_PACK} {metadata.version(EXAMPLE_PACK)}  loaded"]
    assert any(x.startswith("driver") and x.endswith(EXAMPLE_NIC) for x in example)


def test_drivers_json_lists_packs_versions_and_what_they_handle(
    make_dist: DistFactory, run_luo: RunLuo
) -> None:
    make_dist.good("luo-fake-nic", "fakenic", version="2.3.1")

    code, out, _ = run_luo("drivers", "--json")

    assert code == 0
    packs = json.loads(out)
    pack = json_pack(packs, "luo-fake-nic")
    assert (pack["version"], pack["status"], pack["error"]) == ("2.3.1", "loaded", None)
    provides = {(p["kind"], p["name"], tuple(p.get("compatible", ()))) for p in pack["provides"]}
    assert provides == {
        ("driver", "fakenic-nic", ("luo-test,fakenic",)),
        ("subsystem", "fakenic-sub", ()),
    }
    example = json_pack(packs, EXAMPLE_PACK)
    assert example["version"] == metadata.version(EXAMPLE_PACK)
    assert [EXAMPLE_NIC] in [p.get("compatible") for p in example["provides"]]


def test_drivers_fails_when_a_pack_failed(make_dist: DistFactory, run_luo: RunLuo) -> None:
    make_dist("luo-fake-broken", "raise RuntimeError('needs libfakenic.so')\n", version="0.9")
    make_dist.good("luo-fake-nic", "fakenic")

    code, out, err = run_luo("drivers")

    assert code == 1
    blocks = text_blocks(out)
    [header] = [h for h in blocks if h.startswith("luo-fake-broken 0.9  failed: ")]
    assert "needs libfakenic.so" in header
    assert "luo-fake-nic 1.0  loaded" in blocks
    # The verb reports the failure itself: no log line says it a second time.
    assert not [x for x in err.splitlines() if "plugin_failed" in x]


def test_drivers_json_fails_when_a_pack_failed(make_dist: DistFactory, run_luo: RunLuo) -> None:
    make_dist("luo-fake-broken", "raise RuntimeError('needs libfakenic.so')\n", version="0.9")
    make_dist.good("luo-fake-nic", "fakenic")

    code, out, _ = run_luo("drivers", "--json")

    assert code == 1
    packs = json.loads(out)
    broken = json_pack(packs, "luo-fake-broken")
    assert (broken["version"], broken["status"], broken["provides"]) == ("0.9", "failed", [])
    assert "needs libfakenic.so" in broken["error"]
    assert json_pack(packs, "luo-fake-nic")["status"] == "loaded"


def test_drivers_does_not_fail_for_a_disabled_pack(
    make_dist: DistFactory, monkeypatch: pytest.MonkeyPatch, run_luo: RunLuo
) -> None:
    make_dist("luo-fake-broken", "raise RuntimeError('needs libfakenic.so')\n", version="0.9")
    disable(monkeypatch, "luo-fake-broken")

    code, out, _ = run_luo("drivers", "--json")

    assert code == 0
    broken = json_pack(json.loads(out), "luo-fake-broken")
    assert (broken["status"], broken["error"], broken["provides"]) == ("disabled", None, [])


def test_drivers_reports_a_conflict_in_one_line(make_dist: DistFactory, run_luo: RunLuo) -> None:
    make_dist.good("luo-fake-first", "shared", version="1.0")
    make_dist.good("luo-fake-second", "shared", version="2.0")

    code, _, err = run_luo("drivers")

    assert code == 1
    [line] = [x for x in err.splitlines() if x.startswith("luo drivers: error: ")]
    assert "luo-fake-first 1.0" in line
    assert "luo-fake-second 2.0" in line
    assert "Traceback" not in err
