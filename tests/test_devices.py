"""The dev_liveupdate layer: request rules, ordering, IOMMU groups, links, reclaim."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from luo_core import (
    Bus,
    Device,
    DeviceDriver,
    DeviceDriverOps,
    Kernel,
    Machine,
    State,
    hookimpl,
    state,
    u64,
)
from luo_core.errors import (
    BusyError,
    DependencyCycleError,
    DeviceError,
    InvalidTransitionError,
    NotFoundError,
)
from luo_core.kernel.devices import freeze_graph, restore_graph, static_order
from luo_core.platform import (
    BUS_MASTER,
    EXAMPLE_NIC,
    HOST_BRIDGE,
    ISA_BRIDGE,
    PCI_BRIDGE,
    Hardware,
    default_host,
    flat_host,
)
from tests.journal import Empty, JournalPack

MARKER = 0x100
"""A BAR 0 offset no device model uses: a word that only a reset clears."""
MEMORY_SPACE = 1 << 1
"""The memory-space enable bit of the PCI command register (a marker in config space)."""


def tree_host() -> Machine:
    """Two bridges deep, with a device link between NICs in different subtrees."""
    m = Machine()
    m.add("pci0000:00", compatible=HOST_BRIDGE)
    m.add_pci("0000:00:01.0", compatible=PCI_BRIDGE, parent="pci0000:00")
    m.add_pci("0000:01:00.0", compatible=PCI_BRIDGE, parent="0000:00:01.0")
    m.add_pci("0000:02:00.0", compatible=EXAMPLE_NIC, parent="0000:01:00.0")
    m.add_pci("0000:02:00.1", compatible=EXAMPLE_NIC, parent="0000:01:00.0")
    m.add_pci("0000:00:02.0", compatible=PCI_BRIDGE, parent="pci0000:00")
    m.add_pci("0000:03:00.0", compatible=EXAMPLE_NIC, parent="0000:00:02.0")
    return m


def boot(machine: Machine | Hardware, journal: list[str], workers: int = 1) -> Kernel:
    return Kernel.boot(machine, plugins=[JournalPack(journal)], discover=False, workers=workers)


def test_requested_is_the_devices_own_flag_and_its_ancestors_take_part(
    journal: list[str],
) -> None:
    """Writing ``requested`` sets that device's flag only
    (``dev_liveupdate_set_requested(dev, true)``); its ancestors join the
    update when ``prepare`` lists them ([rfc1] ``drivers/base/dev_liveupdate.c``
    ``requested_store()``, ``dev_liveupdate_build_preserve_list()``,
    ``__find_ancestors_and_depth()``)."""
    kernel = boot(tree_host(), journal)
    kernel.devices.request("0000:02:00.1")
    assert [d.name for d in kernel.devices.requested()] == ["0000:02:00.1"]
    assert not any(kernel.devices[n].requested for n in ("pci0000:00", "0000:00:01.0"))
    assert [d.name for d in kernel.devices.preserve_list()] == [
        "0000:02:00.1",
        "0000:01:00.0",
        "0000:00:01.0",
        "pci0000:00",
    ]
    kernel.prepare()
    new = kernel.kexec()
    handed = [d.name for d in new.devices.devices() if d.preserved and d.reclaimed]
    assert handed == ["pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:00.1"]
    assert new.devices.requested() == []


def test_requested_is_read_write_and_the_rest_read_only(journal: list[str]) -> None:
    kernel = boot(tree_host(), journal)
    nic = kernel.devices["0000:03:00.0"]
    nic.requested = True
    assert nic.requested and nic.parent is not None and not nic.parent.requested
    nic.requested = False
    assert not nic.requested
    with pytest.raises(AttributeError):
        nic.preserved = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        nic.reclaimed = True  # type: ignore[misc]


def test_clearing_an_ancestors_flag_is_allowed_and_it_still_takes_part(
    journal: list[str],
) -> None:
    """Writing 0 clears that device's flag whatever its children do; a bridge
    whose own flag is cleared still takes part as the ancestor of a requested
    device ([rfc1] ``requested_store()``, ``__find_ancestors_and_depth()``)."""
    kernel = boot(tree_host(), journal)
    kernel.devices.request("0000:00:01.0")
    kernel.devices.request("0000:02:00.0")
    kernel.devices.release("0000:00:01.0")
    assert [d.name for d in kernel.devices.requested()] == ["0000:02:00.0"]
    assert "0000:00:01.0" in [d.name for d in kernel.devices.preserve_list()]
    kernel.prepare()
    new = kernel.kexec()
    assert new.devices["0000:00:01.0"].preserved and new.devices["0000:00:01.0"].reclaimed


def test_unknown_device_is_enoent(journal: list[str]) -> None:
    kernel = boot(tree_host(), journal)
    with pytest.raises(NotFoundError) as info:
        kernel.devices.request("0000:09:00.0")
    assert info.value.errno == errno.ENOENT


@pytest.mark.parametrize("state", [State.PREPARED, State.FROZEN, State.UPDATED])
def test_request_outside_normal_is_einval(journal: list[str], state: State) -> None:
    kernel = boot(tree_host(), journal)
    kernel.prepare()
    if state is State.FROZEN:
        kernel.freeze()
    if state is State.UPDATED:
        kernel = kernel.kexec()
    with pytest.raises(InvalidTransitionError) as info:
        kernel.devices.request("0000:03:00.0")
    assert info.value.errno == errno.EINVAL
    assert not kernel.devices["0000:03:00.0"].requested


def test_a_device_without_a_driver_does_not_block_a_request(journal: list[str]) -> None:
    """Only a *bound* driver must have live-update callbacks: a bridge no
    driver bound does not block the device behind it, nor its own request.
    It takes part with its bus's callbacks (``DEV_LIVEUPDATE_CALLBACK()``
    skips a missing driver), hands nothing over, and is not reset at kexec
    ([rfc1] ``is_liveupdate_possible()``, ``__dev_liveupdate_reboot_prepare()``;
    ``device_shutdown()`` skips preserved devices)."""
    m = Machine()
    m.add("root", bus="fabric", compatible=HOST_BRIDGE)
    m.add("bridge", bus="fabric", compatible="acme,bridge-without-driver", parent="root")
    m.add("nic", bus="fabric", compatible=EXAMPLE_NIC, parent="bridge")
    m.add("lonely", bus="fabric", compatible="acme,bridge-without-driver", parent="root")
    hw = Hardware(m)
    kernel = Kernel.boot(hw, plugins=[JournalPack(journal, buses=("fabric",))], discover=False)
    assert kernel.devices["bridge"].driver is None
    kernel.devices.request("nic")
    kernel.devices.request("lonely")
    assert kernel.devices.blocker(kernel.devices["bridge"]) is None
    for name in m.devices:
        hw.registers(name).write(MARKER, 5)
    kernel.prepare()
    new = kernel.kexec()
    assert "bus-freeze:bridge" in journal and "bus-freeze:lonely" in journal
    assert not any(e.endswith(":bridge") and not e.startswith("bus-") for e in journal)
    assert {n for n in m.devices if hw.registers(n).read(MARKER) == 5} == set(m.devices)
    assert new.devices["nic"].preserved and new.devices["nic"].reclaimed
    assert not new.devices["bridge"].preserved  # it handed nothing over
    assert new.handed_over("device", "bridge") is None


def test_shared_iommu_group_is_refused(journal: list[str]) -> None:
    m = tree_host()
    m.add_pci("0000:02:00.2", compatible=EXAMPLE_NIC, parent="0000:01:00.0", iommu_group=77)
    m.add_pci("0000:02:00.3", compatible=EXAMPLE_NIC, parent="0000:01:00.0", iommu_group=77)
    kernel = boot(m, journal)
    with pytest.raises(DeviceError, match=r"shares IOMMU group 77 with 0000:02:00\.3"):
        kernel.devices.request("0000:02:00.2")
    assert kernel.devices.requested() == []
    kernel.devices.request("0000:02:00.0")  # singleton groups are fine


def test_driver_and_bus_without_liveupdate_are_refused(journal: list[str]) -> None:
    class Legacy:
        @hookimpl
        def luo_device_drivers(self) -> Iterator[DeviceDriver]:
            yield DeviceDriver(
                name="legacy", compatible=["legacy"], ops=DeviceDriverOps(), liveupdate=False
            )
            yield DeviceDriver(
                name="usb-nic", compatible=["usb-nic"], ops=DeviceDriverOps(), schema=Empty
            )

        @hookimpl
        def luo_buses(self) -> Iterator[Bus]:
            yield Bus(name="usb", liveupdate=False)

    m = Machine()
    m.add("root", compatible=HOST_BRIDGE)
    m.add("legacy0", compatible="legacy", parent="root")
    m.add("usb0", bus="usb", compatible="usb-nic", parent="root")
    kernel = Kernel.boot(m, plugins=[Legacy], discover=False)
    with pytest.raises(DeviceError, match=r"driver 'legacy' \(no live-update callbacks\)"):
        kernel.devices.request("legacy0")
    with pytest.raises(DeviceError, match=r"bus 'usb' \(no live-update callbacks\)"):
        kernel.devices.request("usb0")
    m.add("behind", compatible="usb-nic", parent="legacy0")
    kernel = Kernel.boot(m, plugins=[Legacy], discover=False)
    with pytest.raises(DeviceError, match="it depends on legacy0, which is bound to driver"):
        kernel.devices.request("behind")  # a bound driver without callbacks blocks its subtree


def test_can_preserve_is_asked(journal: list[str]) -> None:
    class Picky(DeviceDriverOps):
        def can_preserve(self, dev: Device) -> bool:
            return dev.name.endswith(".0")

    class Pack:
        @hookimpl
        def luo_device_drivers(self) -> Iterator[DeviceDriver]:
            yield DeviceDriver(name="picky", compatible=[EXAMPLE_NIC], ops=Picky(), schema=Empty)

    kernel = Kernel.boot(tree_host(), plugins=[Pack], discover=False)
    kernel.devices.request("0000:02:00.0")
    with pytest.raises(DeviceError, match="can_preserve"):
        kernel.devices.request("0000:02:00.1")


# -- ordering -------------------------------------------------------------------


def positions(journal: list[str], phase: str) -> dict[str, int]:
    names = [e.split(":", 1)[1] for e in journal if e.startswith(phase + ":")]
    return {name: i for i, name in enumerate(names)}


@pytest.mark.parametrize("workers", [1, 3])
def test_freeze_children_first_restore_parents_first_links_honoured(workers: int) -> None:
    journal: list[str] = []
    m = tree_host()
    m.link(supplier="0000:03:00.0", consumer="0000:02:00.0")
    kernel = boot(m, journal, workers)
    for dev in kernel.devices.devices():
        if not dev.children:
            kernel.devices.request(dev.name)
    kernel.prepare()
    new = kernel.kexec()
    # Journalled NICs only; bridges are luo's own drivers, checked via the graph below.
    frozen, restored = positions(journal, "freeze"), positions(journal, "restore")
    assert frozen["0000:02:00.0"] < frozen["0000:03:00.0"]  # consumer before supplier
    assert restored["0000:03:00.0"] < restored["0000:02:00.0"]  # supplier before consumer
    assert all(new.devices[n].reclaimed for n in restored)
    order = [d.name for d in static_order(freeze_graph(new.devices.devices()))]
    for dev in new.devices.devices():
        for child in dev.children:
            assert order.index(child.name) < order.index(dev.name)
    order = [d.name for d in static_order(restore_graph(new.devices.devices()))]
    for dev in new.devices.devices():
        for child in dev.children:
            assert order.index(dev.name) < order.index(child.name)


def sibling_host() -> Machine:
    """``a`` is enumerated before ``b``, but its child ``a1`` after ``b``."""
    m = Machine()
    for name, parent in [("root", None), ("a", "root"), ("b", "root"), ("a1", "a")]:
        m.add(name, bus="fabric", compatible=EXAMPLE_NIC, parent=parent)
    m.add("c", bus="fabric", compatible=EXAMPLE_NIC, parent="root")
    m.add("d", bus="fabric", compatible=EXAMPLE_NIC, parent="root")
    return m


@pytest.mark.parametrize("workers", [1, 3])
def test_devices_run_in_the_kernels_preserve_list_order(workers: int) -> None:
    """The RFC lists the requested devices in enumeration order, each followed
    by its ancestors not yet listed, then sorts the list by depth with the
    stable ``list_sort()``: deepest first, devices at one depth in the order
    they were listed.  ``a`` is listed after ``b`` (as ``a1``'s ancestor), so
    it runs after ``b`` though enumerated before it; siblings ``c`` and ``d``
    keep enumeration order ([rfc1] ``drivers/base/dev_liveupdate.c``
    ``dev_liveupdate_build_preserve_list()``, ``__find_ancestors_and_depth()``,
    ``dev_depth_cmp()``, ``__dev_liveupdate_reboot_prepare()``,
    ``__dev_liveupdate_cancel()``)."""
    journal: list[str] = []
    pack = JournalPack(journal, subsystems=(), buses=("fabric",))
    kernel = Kernel.boot(sibling_host(), plugins=[pack], discover=False, workers=workers)
    for name in ("d", "c", "b", "a1"):
        kernel.devices.request(name)
    expected = ["a1", "b", "a", "c", "d", "root"]
    assert [d.name for d in kernel.devices.preserve_list()] == expected
    kernel.prepare()
    kernel.freeze()
    for phase in ("prepare", "freeze"):
        ran = [e.split(":", 1)[1] for e in journal if e.startswith(phase + ":")]
        if workers == 1:
            assert ran == expected
        else:  # concurrent: the same devices, each after its children
            assert sorted(ran) == sorted(expected)
            assert ran.index("a1") < ran.index("a") and ran[-1] == "root"
    journal.clear()
    kernel.cancel()  # the list backwards, bus then driver, in both modes
    assert journal == [
        f"{step}:{d}" for d in reversed(expected) for step in ("bus-cancel", "cancel")
    ]


def test_a_requested_consumers_suppliers_take_part(journal: list[str]) -> None:
    m = tree_host()
    m.link(supplier="0000:03:00.0", consumer="0000:02:00.0")
    kernel = boot(m, journal)
    kernel.devices.request("0000:02:00.0")
    assert not kernel.devices["0000:03:00.0"].requested
    listed = [d.name for d in kernel.devices.preserve_list()]
    assert "0000:03:00.0" in listed and "0000:00:02.0" in listed
    kernel.prepare()
    new = kernel.kexec()
    assert new.devices["0000:03:00.0"].preserved and new.devices["0000:00:02.0"].preserved


def test_link_cycle_is_refused_naming_the_cycle(journal: list[str]) -> None:
    kernel = boot(tree_host(), journal)
    kernel.devices.link("0000:02:00.0", "0000:03:00.0")
    with pytest.raises(DependencyCycleError) as info:
        kernel.devices.link("0000:03:00.0", "0000:02:00.0")
    assert set(info.value.cycle) == {"0000:02:00.0", "0000:03:00.0"}
    assert "0000:02:00.0" in str(info.value) and "0000:03:00.0" in str(info.value)
    assert info.value.errno == errno.ELOOP
    assert kernel.devices["0000:02:00.0"].suppliers == []  # refused link left no trace


def test_link_against_the_tree_is_a_cycle(journal: list[str]) -> None:
    kernel = boot(tree_host(), journal)
    with pytest.raises(DependencyCycleError):
        kernel.devices.link("0000:02:00.0", "0000:00:01.0")  # a bridge depending on its child


def test_machine_with_a_link_cycle_does_not_boot(journal: list[str]) -> None:
    m = tree_host()
    m.link("0000:02:00.0", "0000:03:00.0")
    m.link("0000:03:00.0", "0000:02:00.0")
    with pytest.raises(DependencyCycleError):
        boot(m, journal)


def run_update(workers: int) -> tuple[list[tuple[str, bool, bool, object]], list[str]]:
    journal: list[str] = []
    machine = flat_host(300, EXAMPLE_NIC)
    kernel = boot(machine, journal, workers)
    for i, dev in enumerate(kernel.devices.devices()):
        if dev.compatible == EXAMPLE_NIC:
            dev.driver_data["counter"] = i * 7
            if i % 3:
                kernel.devices.request(dev.name)
    kernel.prepare()
    new = kernel.kexec()
    result = [(d.name, d.preserved, d.reclaimed, d.driver_data) for d in new.devices.devices()]
    return result, sorted(journal)


def test_serial_and_concurrent_updates_give_identical_results() -> None:
    serial = run_update(1)
    concurrent = run_update(4)
    assert serial == concurrent
    assert sum(1 for _, preserved, _, _ in serial[0] if preserved) > 100


def test_finish_warns_about_preserved_devices_never_reclaimed(journal: list[str]) -> None:
    m = default_host()
    kernel = boot(m, journal)
    kernel.devices.request("0000:01:00.0")
    kernel.devices.request("0000:02:00.0")
    kernel.prepare()
    new = kernel.kexec(kernel.config.__class__(plugins=(), discover=False))  # no NIC driver
    nic = new.devices["0000:01:00.0"]
    assert nic.preserved and not nic.reclaimed
    assert new.devices["0000:00:01.0"].reclaimed  # luo's own bridge driver took it back
    with capture_logs() as logs:
        new.finish()
    warned = sorted(e["device"] for e in logs if e["event"] == "device_not_reclaimed")
    assert warned == ["0000:01:00.0", "0000:02:00.0"]
    assert all(e["log_level"] == "warning" for e in logs if e["event"] == "device_not_reclaimed")
    assert not nic.preserved


def test_finish_runs_deepest_first_for_every_preserved_device(journal: list[str]) -> None:
    """``finish`` reaches every preserved device, reclaimed or not, sorted by
    depth, deepest first (stable: enumeration order at one depth), warning
    about those never reclaimed; driver then bus, the driver only if one is
    bound ([rfc1] ``drivers/base/dev_liveupdate.c`` ``device_liveupdate_finish()``,
    ``DEV_LIVEUPDATE_CALLBACK()``).  A device whose restore failed, and the
    child skipped with it, have no driver left: only their bus finishes."""
    m = Machine()
    for name, parent in [("root", None), ("a", "root"), ("b", "root"), ("a1", "a")]:
        m.add(name, bus="fabric", compatible=EXAMPLE_NIC, parent=parent)
    pack = JournalPack(journal, subsystems=("alpha",), buses=("fabric",))
    kernel = Kernel.boot(m, plugins=[pack], discover=False)
    kernel.devices.request("a1")
    kernel.devices.request("b")
    kernel.prepare()
    pack.fail.add("restore:a")
    new = kernel.kexec()
    assert [d.name for d in new.devices.devices() if d.reclaimed] == ["root", "b"]
    journal.clear()
    with capture_logs() as logs:
        new.finish()
    assert journal == [
        "bus-finish:a1",
        "bus-finish:a",
        "finish:b",
        "bus-finish:b",
        "finish:root",
        "bus-finish:root",
        "finish:alpha",
    ]
    warned = [e["device"] for e in logs if e["event"] == "device_not_reclaimed"]
    assert warned == ["a1", "a"]
    assert not any(d.preserved or d.reclaimed for d in new.devices.devices())


def test_restore_failure_skips_the_subtree_and_is_not_reclaimed(journal: list[str]) -> None:
    pack = JournalPack(journal)
    kernel = Kernel.boot(tree_host(), plugins=[pack], discover=False)
    kernel.devices.request("0000:02:00.0")
    kernel.devices.request("0000:03:00.0")
    kernel.prepare()
    pack.fail.add("restore:0000:02:00.0")
    with capture_logs() as logs:
        new = kernel.kexec()
    assert not new.devices["0000:02:00.0"].reclaimed
    assert new.devices["0000:03:00.0"].reclaimed
    assert [e["device"] for e in logs if e["event"] == "restore_failed"] == ["0000:02:00.0"]
    assert new.stats is not None and not new.stats.phases["restore"].ok


def test_devices_not_preserved_are_reset_at_kexec(journal: list[str]) -> None:
    hw = Hardware(default_host())
    kernel = boot(hw, journal)
    kernel.devices.request("0000:01:00.0")
    for name in hw.machine.devices:
        hw.registers(name).write(MARKER, 5)
        config = hw.config(name)
        config["command"] = config["command"] | MEMORY_SPACE
    mac = hw.registers("0000:02:00.0")["mac"]
    kernel.prepare()
    new = kernel.kexec()
    kept = {name for name in hw.machine.devices if hw.registers(name).read(MARKER) == 5}
    assert kept == {"pci0000:00", "0000:00:01.0", "0000:01:00.0"}
    assert {n for n in hw.machine.devices if hw.config(n)["command"] & MEMORY_SPACE} == kept
    assert hw.config("0000:00:01.0")["command"] & BUS_MASTER  # the bridge above a preserved NIC
    assert hw.registers("0000:01:00.0")["ctrl"] == 1  # the preserved NIC was never reset
    # The rest were reset (registers and configuration space zeroed, bus
    # mastering off), then probed afresh by the new kernel.
    regs = hw.registers("0000:02:00.0").values()
    assert regs.pop("mac") == mac  # burned in: the device's reset puts it back
    assert regs.pop("ctrl") == 1  # the new kernel's probe enabled it
    assert set(regs.values()) == {0}
    assert hw.config("0000:00:02.0")["command"] == BUS_MASTER  # reset, then probed afresh
    assert new.devices["0000:02:00.0"].driver_data == {"counter": 0, "paused": False}
    assert not new.devices["0000:02:00.0"].preserved


def test_iommu_group_zero_is_a_group_like_any_other(journal: list[str]) -> None:
    m = tree_host()
    m.add_pci("0000:02:00.4", compatible=EXAMPLE_NIC, parent="0000:01:00.0", iommu_group=0)
    m.add_pci("0000:02:00.5", compatible=EXAMPLE_NIC, parent="0000:01:00.0", iommu_group=0)
    kernel = boot(m, journal)
    with pytest.raises(DeviceError, match="shares IOMMU group 0"):
        kernel.devices.request("0000:02:00.4")


def test_linking_a_requested_consumer_brings_the_supplier_in(journal: list[str]) -> None:
    m = tree_host()
    m.add_pci("0000:00:1f.0", compatible=ISA_BRIDGE, parent="pci0000:00")
    kernel = boot(m, journal)
    kernel.devices.request("0000:02:00.0")
    kernel.devices.link("0000:03:00.0", "0000:02:00.0")
    assert not kernel.devices["0000:03:00.0"].requested
    assert "0000:00:02.0" in [d.name for d in kernel.devices.preserve_list()]
    with pytest.raises(DeviceError, match=r"depends on 0000:00:1f\.0, which is bound to driver"):
        kernel.devices.link("0000:00:1f.0", "0000:02:00.0")
    assert kernel.devices["0000:02:00.0"].suppliers == [kernel.devices["0000:03:00.0"]]


# -- driver_override: binding a device to a driver by name ----------------------------


@state(compatible="acme,passthrough-state", version=1)
class PassRecord:
    probes: u64


class PassOps(DeviceDriverOps):
    """A driver that binds only on request (``vfio-pci``'s part), counting its probes."""

    def probe(self, dev: Device) -> None:
        dev.driver_data = {"probes": 1}

    def prepare(self, dev: Device) -> PassRecord:
        return PassRecord(dev.driver_data["probes"])

    def restore(self, dev: Device, data: PassRecord) -> None:
        dev.driver_data = {"probes": data.probes, "restored": True}


class PassPack:
    @hookimpl
    def luo_device_drivers(self) -> Iterator[DeviceDriver]:
        yield DeviceDriver("passthrough", ["acme,never-matches"], PassOps(), schema=PassRecord)


def test_bind_hands_a_device_to_a_driver_by_name_and_restore_follows_the_record() -> None:
    """The device is bound to the override driver in the next kernel too: its record's
    compatible names the driver that wrote it (example-nic would refuse that record)."""
    import luo_example_nic

    kernel = Kernel.boot(default_host(), plugins=[luo_example_nic, PassPack], discover=False)
    nic = kernel.devices["0000:01:00.0"]
    assert nic.driver is not None and nic.driver.name == "example-nic"
    kernel.devices.bind(nic.name, "passthrough")
    assert nic.driver.name == "passthrough" and nic.driver_data == {"probes": 1}
    assert nic.regs["ctrl"] == 0  # the example-nic driver's shutdown ran
    kernel.devices.request(nic.name)
    with pytest.raises(BusyError, match="release it first"):
        kernel.devices.bind(nic.name, "example-nic")
    kernel.prepare()
    new = kernel.kexec()
    dev = new.devices[nic.name]
    assert dev.driver is not None and dev.driver.name == "passthrough"
    assert dev.reclaimed and dev.driver_data == {"probes": 1, "restored": True}
    new.finish()


def test_bind_refuses_unknown_names_and_a_failed_probe_leaves_the_device_unbound() -> None:
    class Broken(DeviceDriverOps):
        def probe(self, dev: Device) -> None:
            raise RuntimeError("no such hardware")

    class BrokenPack:
        @hookimpl
        def luo_device_drivers(self) -> Iterator[DeviceDriver]:
            yield DeviceDriver("broken", ["acme,nothing"], Broken(), liveupdate=False)

    kernel = Kernel.boot(default_host(), plugins=[BrokenPack], discover=False)
    with pytest.raises(NotFoundError, match="no driver 'nope'"):
        kernel.devices.bind("0000:01:00.0", "nope")
    with pytest.raises(NotFoundError, match="no device"):
        kernel.devices.bind("0000:09:00.0", "broken")
    with pytest.raises(DeviceError, match=r"could not probe 0000:01:00\.0: no such hardware"):
        kernel.devices.bind("0000:01:00.0", "broken")
    assert kernel.devices["0000:01:00.0"].driver is None
