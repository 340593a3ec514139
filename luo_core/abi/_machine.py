"""The machine description: a host's hardware as plain data, the same in every process.

A :class:`Machine` lists devices (name, bus, compatible, parent, IOMMU group,
model parameters), device links and the sizes of memory and of the KHO
scratch area.  It is what the hardware is built from and what every kernel
enumerates its devices from; it crosses process boundaries as data
(:meth:`Machine.to_wire`) and is read back as hostile input
(:meth:`Machine.from_wire`), through the same checks as building it by hand.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from luo_core.abi._types import is_u64
from luo_core.errors import MachineError

PAGE_SIZE: Final = 4096
MAX_MEMORY: Final = 1 << 40
MAX_DEVICES: Final = 1 << 16
MAX_PARAMS: Final = 16
_BDF: Final = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._+-]{0,63}$")
_WORD: Final = re.compile(r"^[a-z0-9][a-z0-9,._+-]{0,62}$")
_PARAM: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def _params(value: Mapping[str, int] | None) -> Mapping[str, int]:
    items = dict(value or {})
    if len(items) > MAX_PARAMS:
        raise MachineError(f"a device takes at most {MAX_PARAMS} parameters, not {len(items)}")
    for key, item in items.items():
        if not isinstance(key, str) or not _PARAM.fullmatch(key):
            raise MachineError(f"parameter name {key!r} must be 1-32 chars of [a-z0-9_]")
        if not is_u64(item):
            raise MachineError(f"parameter {key}={item!r} is not a u64")
    return dict(sorted(items.items()))


@attrs.frozen
class DeviceSpec:
    """One device of the machine, as data.  ``params`` tune its model (rates, sizes)."""

    name: str
    bus: str
    compatible: str
    parent: str | None
    iommu_group: int | None
    params: Mapping[str, int] = attrs.field(factory=dict, converter=_params)


@attrs.define(eq=False)
class Machine:
    """A host's hardware, described: build it, then power it on (:mod:`luo_core.platform`).

    ``memory_size`` bytes of sparse physical memory (untouched pages cost
    nothing, so 64 GiB is fine); the first ``scratch_size`` bytes are the KHO
    scratch area, which no kernel ever preserves, so that the next kernel can
    boot from it before it knows what else is taken.
    """

    devices: dict[str, DeviceSpec] = attrs.field(factory=dict)
    links: list[tuple[str, str]] = attrs.field(factory=list)
    memory_size: int = 1 << 30
    scratch_size: int = 16 << 20
    _groups: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), repr=False)

    @property
    def scratch(self) -> tuple[int, int]:
        """The scratch area as ``(phys, size)``."""
        return (0, self.scratch_size)

    def check(self) -> None:
        """Refuse sizes no machine can have (:class:`MachineError`)."""
        for what, size in (("memory", self.memory_size), ("scratch area", self.scratch_size)):
            if type(size) is not int or size <= 0 or size % PAGE_SIZE or size > MAX_MEMORY:
                raise MachineError(
                    f"{what} size {size!r} is not a positive multiple of {PAGE_SIZE} "
                    f"up to {MAX_MEMORY:#x}"
                )
        if self.scratch_size >= self.memory_size:
            raise MachineError(
                f"scratch area of {self.scratch_size} bytes does not fit in "
                f"{self.memory_size} bytes of memory"
            )

    def index(self, name: str) -> int:
        """The device's position in enumeration order (parents before children)."""
        for at, known in enumerate(self.devices):
            if known == name:
                return at
        raise MachineError(f"no device {name!r} on this machine")

    def add(
        self,
        name: str,
        *,
        bus: str = "platform",
        compatible: str,
        parent: str | None = None,
        iommu_group: int | None = None,
        params: Mapping[str, int] | None = None,
    ) -> DeviceSpec:
        """Add a device; ``parent`` must already exist."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise MachineError(f"device name {name!r} must be 1-64 chars of [A-Za-z0-9:._+-]")
        for what, word in (("bus", bus), ("compatible", compatible)):
            if not isinstance(word, str) or not _WORD.fullmatch(word):
                raise MachineError(
                    f"device {name}: {what} {word!r} is not 1-63 chars of [a-z0-9,._+-]"
                )
        if parent is not None and not isinstance(parent, str):
            raise MachineError(f"device {name!r}: parent {parent!r:.40} is not a device name")
        if name in self.devices:
            raise MachineError(f"device {name!r} is already on this machine")
        if len(self.devices) >= MAX_DEVICES:
            raise MachineError(f"a machine holds at most {MAX_DEVICES} devices")
        if parent is not None and parent not in self.devices:
            raise MachineError(f"device {name!r}: unknown parent {parent!r}")
        if iommu_group is not None:
            if type(iommu_group) is not int or not 0 <= iommu_group < 1 << 31:
                raise MachineError(f"device {name}: IOMMU group {iommu_group!r} is not valid")
            self._groups = itertools.count(max(next(self._groups), iommu_group + 1))
        device = DeviceSpec(name, bus, compatible, parent, iommu_group, params)
        self.devices[name] = device
        return device

    def add_pci(
        self,
        bdf: str,
        *,
        compatible: str,
        parent: str,
        iommu_group: int | None = None,
        params: Mapping[str, int] | None = None,
    ) -> DeviceSpec:
        """Add a PCI function at ``bdf`` (``dddd:bb:dd.f``).

        Each PCI function gets its own IOMMU group unless ``iommu_group`` puts
        it in an existing one (a function behind a bridge without ACS, say).
        """
        if not isinstance(bdf, str) or not _BDF.fullmatch(bdf):
            raise MachineError(f"{bdf!r} is not a PCI address (dddd:bb:dd.f, lowercase hex)")
        group = next(self._groups) if iommu_group is None else iommu_group
        return self.add(
            bdf, bus="pci", compatible=compatible, parent=parent, iommu_group=group, params=params
        )

    def link(self, supplier: str, consumer: str) -> None:
        """Record that ``consumer`` depends on ``supplier`` beyond the tree."""
        for name in (supplier, consumer):
            if not isinstance(name, str):
                raise MachineError(f"link: {name!r:.40} is not a device name")
            if name not in self.devices:
                raise MachineError(f"link {supplier} -> {consumer}: unknown device {name!r}")
        if supplier == consumer:
            raise MachineError(f"link {supplier} -> {consumer}: a device cannot supply itself")
        self.links.append((supplier, consumer))

    # -- as data -----------------------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        """The description as plain CBOR-ready data."""
        return {
            "memory-size": self.memory_size,
            "scratch-size": self.scratch_size,
            "devices": [
                [d.name, d.bus, d.compatible, d.parent, d.iommu_group, dict(d.params)]
                for d in self.devices.values()
            ],
            "links": [list(link) for link in self.links],
        }

    @classmethod
    def from_wire(cls, wire: object) -> Machine:
        """Rebuild a description from :meth:`to_wire`'s data, checking every field."""
        if not isinstance(wire, dict) or set(wire) != {
            "memory-size",
            "scratch-size",
            "devices",
            "links",
        }:
            raise MachineError(
                "a machine description is a map of memory-size, scratch-size, devices, links"
            )
        devices, links = wire["devices"], wire["links"]
        if not isinstance(devices, list) or not isinstance(links, list):
            raise MachineError("a machine description's devices and links are lists")
        if len(devices) > MAX_DEVICES or len(links) > MAX_DEVICES:
            raise MachineError(f"a machine description lists more than {MAX_DEVICES} items")
        machine = cls(memory_size=wire["memory-size"], scratch_size=wire["scratch-size"])
        machine.check()
        for item in devices:
            if not (isinstance(item, list) and len(item) == 6 and isinstance(item[5], dict)):
                raise MachineError(f"malformed device {item!r:.60}")
            name, bus, compatible, parent, group, params = item
            machine.add(
                name,
                bus=bus,
                compatible=compatible,
                parent=parent,
                iommu_group=group,
                params=params,
            )
        for item in links:
            if not (isinstance(item, list) and len(item) == 2):
                raise MachineError(f"malformed link {item!r:.60}")
            machine.link(item[0], item[1])
        return machine
