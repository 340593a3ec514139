"""The kernel's device tree and the ``dev_liveupdate`` flags of each device.

Devices are enumerated from the machine description at boot and bound to drivers by
compatible.  Each has ``requested`` (read-write, the device's own flag),
``preserved`` and ``reclaimed`` (read-only).  A requested device's ancestors
and suppliers take part in the update with it, their own flags untouched.  A
request is refused unless the global state is ``normal`` and the device and
each of those has a live-update-capable bus and, if a driver is bound, a
live-update-capable driver that agrees (``can_preserve``), and sits alone in
its IOMMU group.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from luo_core._logging import get_logger
from luo_core.abi import schema_of
from luo_core.abi._machine import DeviceSpec, Machine
from luo_core.errors import BusyError, DependencyCycleError, DeviceError, NotFoundError
from luo_core.kernel._records import Bus, DeviceDriver
from luo_core.kernel.devices._order import preserve_list, restore_graph, static_order
from luo_core.platform import BUS_MASTER, Registers

if TYPE_CHECKING:
    from luo_core.kernel._hwlink import HardwareLink

log = get_logger("luo")


class Device:
    """A device as this kernel sees it; it dies with the kernel.

    ``regs`` are its BAR 0 registers and ``config`` its configuration space,
    both in MMIO memory the hardware shares (fixed-width integers only);
    ``driver_data`` is the bound driver's private state (``dev_get_drvdata``),
    which dies with the kernel like everything else here.
    """

    def __init__(self, tree: DeviceTree, spec: DeviceSpec, index: int, link: HardwareLink) -> None:
        self._tree = tree
        self.index = index
        self.name = spec.name
        self.bus = spec.bus
        self.compatible = spec.compatible
        self.iommu_group = spec.iommu_group
        window = link.window(spec.name, index)
        self.regs: Registers = link.registers(window)
        """The device's BAR 0 registers (see :class:`luo_core.platform.Registers`)."""
        self.config: Registers = link.config(window)
        """Its configuration space (``command`` holds the bus-master bit)."""
        self.parent: Device | None = None
        self.children: list[Device] = []
        self.suppliers: list[Device] = []
        self.consumers: list[Device] = []
        self.driver: DeviceDriver | None = None
        self.driver_data: Any = None
        self._requested = False
        self._preserved = False
        self._reclaimed = False

    @property
    def bus_master(self) -> bool:
        """Whether the device may do DMA (the bus-master bit of its command register)."""
        return bool(self.config["command"] & BUS_MASTER)

    def set_bus_master(self, enable: bool) -> None:
        """Turn bus mastering on or off (``pci_set_master`` / ``pci_clear_master``)."""
        command = self.config["command"]
        self.config["command"] = command | BUS_MASTER if enable else command & ~BUS_MASTER

    def __repr__(self) -> str:
        return f"<Device {self.name} {self.compatible}>"

    @property
    def requested(self) -> bool:
        """Preserve this device across the next live update (read-write).

        The device's own flag: its ancestors and suppliers take part in the
        update with it without theirs being set."""
        return self._requested

    @requested.setter
    def requested(self, value: bool) -> None:
        if value:
            self._tree.request(self.name)
        else:
            self._tree.release(self.name)

    @property
    def preserved(self) -> bool:
        """The previous kernel handed this device over (read-only)."""
        return self._preserved

    @property
    def reclaimed(self) -> bool:
        """This kernel's driver restored the handed-over device (read-only)."""
        return self._reclaimed

    @property
    def path(self) -> str:
        node: Device | None = self
        parts: list[str] = []
        while node is not None:
            parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts))

    def ancestors(self) -> Iterator[Device]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


class DeviceTree(Mapping[str, Device]):
    """All devices of one kernel, by name, in enumeration (parents-first) order."""

    def __init__(
        self,
        machine: Machine,
        link: HardwareLink,
        drivers: Mapping[str, DeviceDriver],
        buses: Mapping[str, Bus],
        guard: Callable[[str], AbstractContextManager[object]],
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        self._buses = buses
        self._drivers = drivers
        self._guard = guard
        self._devices: dict[str, Device] = {}
        by_name = {d.name: d for d in drivers.values()} if overrides else {}
        groups: dict[int, list[Device]] = defaultdict(list)
        for index, spec in enumerate(machine.devices.values()):
            dev = Device(self, spec, index, link)
            if spec.parent is not None:
                dev.parent = self._devices[spec.parent]
                dev.parent.children.append(dev)
            override = overrides.get(spec.name) if overrides else None
            if override is not None:
                # An override naming a driver this kernel lacks binds nothing, as in Linux.
                dev.driver = by_name.get(override)
            else:
                dev.driver = drivers.get(spec.compatible)
            if spec.iommu_group is not None:
                groups[spec.iommu_group].append(dev)
            self._devices[dev.name] = dev
        self._groups = dict(groups)
        for supplier, consumer in machine.links:
            self._add_link(self._devices[supplier], self._devices[consumer])
        if machine.links:  # a tree alone cannot have a cycle
            static_order(restore_graph(self._devices.values()))

    def __getitem__(self, name: str) -> Device:
        try:
            return self._devices[name]
        except KeyError:
            raise NotFoundError(f"no device {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._devices)

    def __len__(self) -> int:
        return len(self._devices)

    def probe(self, devices: list[Device]) -> None:
        """Bind ``devices`` afresh (cold boot, or not preserved); a driver
        whose probe fails is unbound (``probe_failed``)."""
        for dev in devices:
            if dev.driver is None:
                continue
            try:
                dev.driver.ops.probe(dev)
            except Exception as exc:
                log.error("probe_failed", device=dev.name, driver=dev.driver.name, error=str(exc))
                dev.driver = None

    def devices(self) -> list[Device]:
        return list(self._devices.values())

    # -- the flags the kernel sets --------------------------------------------------

    def hand_over(self, dev: Device) -> None:
        """The previous kernel preserved ``dev`` (boot of the next kernel)."""
        dev._preserved = True

    def reclaim(self, dev: Device) -> None:
        """This kernel's driver restored ``dev``."""
        dev._reclaimed = True

    def settle(self, dev: Device) -> None:
        """The update is finished: ``dev`` is an ordinary device again."""
        dev._preserved = dev._reclaimed = False

    def requested(self) -> list[Device]:
        """The devices whose own ``requested`` flag is set, in enumeration order."""
        return [d for d in self._devices.values() if d.requested]

    def preserve_list(self) -> list[Device]:
        """The devices the next ``prepare`` runs, in the order it runs them: the
        requested ones, their ancestors and suppliers, deepest first, otherwise
        in the order they were listed
        (:func:`luo_core.kernel.devices.preserve_list`)."""
        return preserve_list(self.requested())

    def iommu_group(self, dev: Device) -> list[Device]:
        """Every device sharing ``dev``'s IOMMU group (``dev`` included)."""
        if dev.iommu_group is None:
            return [dev]
        return list(self._groups[dev.iommu_group])

    # -- links -----------------------------------------------------------

    def link(self, supplier: str, consumer: str) -> None:
        """Add a device link; one that would close a cycle is refused (``ELOOP``).

        If ``consumer`` takes part in the next update, ``supplier`` (and what it
        depends on) will too, so the link is refused as a request would be
        unless they could be preserved.
        """
        with self._guard(f"link {supplier} -> {consumer}"):
            sup, con = self[supplier], self[consumer]
            if sup is con:
                raise DeviceError(f"link {supplier} -> {consumer}: a device cannot supply itself")
            needed = self.dependencies(sup) if con in self.preserve_list() else []
            self._check_preservable(consumer, needed, via=True)
            self._add_link(sup, con)
            try:
                static_order(restore_graph(self._devices.values()))
            except DependencyCycleError:
                sup.consumers.remove(con)
                con.suppliers.remove(sup)
                raise

    def _add_link(self, supplier: Device, consumer: Device) -> None:
        supplier.consumers.append(consumer)
        consumer.suppliers.append(supplier)

    # -- dev_liveupdate --------------------------------------------------

    def dependencies(self, dev: Device) -> list[Device]:
        """``dev``, its ancestors, its suppliers and theirs, transitively."""
        seen: dict[Device, None] = {}
        stack = [dev]
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen[node] = None
            stack.extend(node.suppliers)
            if node.parent is not None:
                stack.append(node.parent)
        return sorted(seen, key=lambda d: d.index)

    def blocker(self, dev: Device) -> str | None:
        """Why ``dev`` cannot be preserved, or ``None`` if it can.

        As ``is_liveupdate_possible()``, a device without a driver is no
        obstacle: only a *bound* driver must have live-update callbacks.
        """
        bus = self._buses.get(dev.bus)
        if bus is None or not bus.liveupdate:
            return f"sits on bus {dev.bus!r} (no live-update callbacks)"
        if dev.driver is not None and not dev.driver.liveupdate:
            return f"is bound to driver {dev.driver.name!r} (no live-update callbacks)"
        group = self.iommu_group(dev)
        if len(group) > 1:
            others = ", ".join(d.name for d in group if d is not dev)
            return f"shares IOMMU group {dev.iommu_group} with {others}"
        if dev.driver is not None and not dev.driver.ops.can_preserve(dev):
            return f"is refused by its driver {dev.driver.name!r} (can_preserve)"
        return None

    def request(self, name: str) -> None:
        """Set ``name``'s ``requested`` flag, or change nothing (``EINVAL``) unless
        it and everything it depends on could be preserved."""
        with self._guard(f"request {name}"):
            dev = self[name]
            self._check_preservable(name, self.dependencies(dev), via=False)
            dev._requested = True

    def _check_preservable(self, name: str, needed: list[Device], *, via: bool) -> None:
        for node in needed:
            reason = self.blocker(node)
            if reason is not None:
                subject = f"it depends on {node.name}, which" if via or node.name != name else "it"
                raise DeviceError(f"cannot request {name}: {subject} {reason}")

    def bind(self, name: str, driver: str) -> None:
        """Bind ``name`` to the driver named ``driver``, whatever its compatible
        (``driver_override``, then unbind and ``drivers_probe``: how a device is
        handed to ``vfio-pci``).  The driver bound before is shut down first.

        ``ENOENT`` for an unknown device or driver, ``EBUSY`` while the device is
        requested for an update (release it first), and a :class:`DeviceError`
        when the new driver's probe fails (the device is left unbound).
        """
        with self._guard(f"bind {name} to {driver}"):
            dev = self[name]
            found = next((d for d in self._drivers.values() if d.name == driver), None)
            if found is None:
                raise NotFoundError(f"no driver {driver!r} in this kernel")
            if dev.requested or dev.preserved:
                raise BusyError(f"{name} takes part in a live update: release it first")
            if dev.driver is not None:
                dev.driver.ops.shutdown(dev)
            dev.driver, dev.driver_data = found, None
            try:
                found.ops.probe(dev)
            except Exception as exc:
                dev.driver = None
                raise DeviceError(f"{driver} could not probe {name}: {exc}") from exc

    def driver_for_record(self, compatible: str) -> DeviceDriver | None:
        """The driver whose schema writes records of ``compatible`` (a device the previous
        kernel had bound to another driver than its compatible's, such as ``vfio-pci``,
        is restored by the driver that wrote its record)."""
        for candidate in self._drivers.values():
            if (
                candidate.schema is not None
                and schema_of(candidate.schema).compatible == compatible
            ):
                return candidate
        return None

    def release(self, name: str) -> None:
        """Clear ``name``'s ``requested`` flag.  A device some requested device
        depends on still takes part in the update, as that device's ancestor
        or supplier."""
        with self._guard(f"release {name}"):
            self[name]._requested = False
