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


def test_requesting_a_device_requests_its_ancestors(journal: list[str]) -> None:
    kernel = boot(tree_host(), journal)
    kernel.devices.request("0000:02:00.1")
    assert [d.name for d in kernel.devices.requested()] == [
        "pci0000:00",
        "0000:00:01.0",
        "0000:01:00.0",
        "0000:02:00.1",
    ]
    assert not kernel.devices["0000:02:00.0"].requested


def test_requested_is_read_write_and_the_rest_read_only(journal: list[str]) -> None:
    kernel = boot(tree_host(), journal)
    nic = kernel.devices["0000:03:00.0"]
    nic.requested = True
    assert nic.requested and nic.parent is not None and nic.parent.requested
    nic.requested = False
    assert not nic.requested
    with pytest.raises(AttributeError):
        nic.preserved = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        nic.reclaimed = True  # type: ignore[misc]


def test_release_refused_while_a_requested_child_depends(journal: list[str]) -> None:
    kernel = boot(tree_host(), journal)
    kernel.devices.request("0000:02:00.0")
    with pytest.raises(BusyError, match=r"0000:01:00\.0") as info:
        kernel.devices.release("0000:00:01.0")
    assert info.value.errno == errno.EBUSY
    kernel.devices.release("0000:02:00.0")
    kernel.devices.release("0000:01:00.0")
    kernel.devices.release("0000:00:01.0")
    assert kernel.devices["pci0000:00"].requested


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


def test_device_without_driver_blocks_its_subtree(journal: list[str]) -> None:
    m = tree_host()
    m.add_pci("0000:00:03.0", compatible="pci1234,bridge-without-driver", parent="pci0000:00")
    m.add_pci("0000:04:00.0", compatible=EXAMPLE_NIC, parent="0000:00:03.0")
    kernel = boot(m, journal)
    with pytest.raises(DeviceError, match=r"0000:00:03\.0.*has no driver") as info:
        kernel.devices.request("0000:04:00.0")
    assert info.value.errno == errno.EINVAL
    assert kernel.devices.requested() == []


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
    with pytest.raises(DeviceError, match="driver 'legacy' has no live-update callbacks"):
        kernel.devices.request("legacy0")
    with pytest.raises(DeviceError, match="bus 'usb' has no live-update callbacks"):
        kernel.devices.request("usb0")


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


def test_requesting_a_consumer_requests_its_suppliers(journal: list[str]) -> None:
    m = tree_host()
    m.link(supplier="0000:03:00.0", consumer="0000:02:00.0")
    kernel = boot(m, journal)
    kernel.devices.request("0000:02:00.0")
    assert kernel.devices["0000:03:00.0"].requested
    assert kernel.devices["0000:00:02.0"].requested
    with pytest.raises(BusyError, match=r"0000:02:00\.0"):
        kernel.devices.release("0000:03:00.0")


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
    assert hw.registers("0000:02:00.0").values() == {
        "mac": mac,  # burned in: the device's reset puts it back
        "ctrl": 1,  # the new kernel's probe enabled it
        "ring_size": 0,
        "tx_tail": 0,
        "tx_head": 0,
        "tx_frames": 0,
        "rx_frames": 0,
        "rx_dropped": 0,
    }
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


def test_linking_a_requested_consumer_requests_the_supplier(journal: list[str]) -> None:
    m = tree_host()
    m.add_pci("0000:00:1f.0", compatible="pci8086,7000", parent="pci0000:00")
    kernel = boot(m, journal)
    kernel.devices.request("0000:02:00.0")
    kernel.devices.link("0000:03:00.0", "0000:02:00.0")
    assert kernel.devices["0000:03:00.0"].requested
    assert kernel.devices["0000:00:02.0"].requested
    with pytest.raises(DeviceError, match=r"depends on 0000:00:1f\.0, which has no driver"):
        kernel.devices.link("0000:00:1f.0", "0000:02:00.0")
    assert kernel.devices["0000:02:00.0"].suppliers == [kernel.devices["0000:03:00.0"]]
