"""The emulated machine's hardware: device topology, registers, IOMMU groups.

Hardware outlives every kernel.  A kexec throws the kernel's objects away; the
``Machine`` and its ``HardwareDevice`` registers stay, exactly like a real NIC
keeps its rings while the host kernel is replaced.  Nothing here imports the
kernel side.
"""

from __future__ import annotations

import itertools
import re

import attrs

_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")


class MachineError(ValueError):
    """The machine description is inconsistent (unknown parent, bad BDF...)."""


@attrs.define(eq=False)
class HardwareDevice:
    """One piece of hardware.  ``regs`` is its register file; it survives kexec."""

    name: str
    bus: str
    compatible: str
    parent: str | None
    iommu_group: int | None
    regs: dict[str, int] = attrs.field(factory=dict)
    bus_master: bool = False

    def reset(self) -> None:
        """What a device shutdown does to hardware: registers cleared, DMA off."""
        self.regs.clear()
        self.bus_master = False


@attrs.define(eq=False)
class Machine:
    """A host's hardware, described once and kept across kexec."""

    devices: dict[str, HardwareDevice] = attrs.field(factory=dict)
    links: list[tuple[str, str]] = attrs.field(factory=list)
    _groups: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), repr=False)

    def add(
        self,
        name: str,
        *,
        bus: str = "platform",
        compatible: str,
        parent: str | None = None,
        iommu_group: int | None = None,
    ) -> HardwareDevice:
        """Add a device; ``parent`` must already exist."""
        if name in self.devices:
            raise MachineError(f"device {name!r} is already on this machine")
        if parent is not None and parent not in self.devices:
            raise MachineError(f"device {name!r}: unknown parent {parent!r}")
        if iommu_group is not None:
            self._groups = itertools.count(max(next(self._groups), iommu_group + 1))
        device = HardwareDevice(name, bus, compatible, parent, iommu_group)
        self.devices[name] = device
        return device

    def add_pci(
        self,
        bdf: str,
        *,
        compatible: str,
        parent: str,
        iommu_group: int | None = None,
    ) -> HardwareDevice:
        """Add a PCI function at ``bdf`` (``dddd:bb:dd.f``).

        Each PCI function gets its own IOMMU group unless ``iommu_group`` puts
        it in an existing one (a function behind a bridge without ACS, say).
        """
        if not _BDF.match(bdf):
            raise MachineError(f"{bdf!r} is not a PCI address (dddd:bb:dd.f, lowercase hex)")
        group = next(self._groups) if iommu_group is None else iommu_group
        return self.add(bdf, bus="pci", compatible=compatible, parent=parent, iommu_group=group)

    def link(self, supplier: str, consumer: str) -> None:
        """Record that ``consumer`` depends on ``supplier`` beyond the tree."""
        for name in (supplier, consumer):
            if name not in self.devices:
                raise MachineError(f"link {supplier} -> {consumer}: unknown device {name!r}")
        if supplier == consumer:
            raise MachineError(f"link {supplier} -> {consumer}: a device cannot supply itself")
        self.links.append((supplier, consumer))
