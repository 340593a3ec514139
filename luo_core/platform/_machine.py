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

from luo_core.errors import MachineError
from luo_core.platform._memory import PhysicalMemory

_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")


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
    """A host's hardware, described once and kept across kexec.

    ``memory_size`` bytes of sparse physical memory (untouched pages cost
    nothing, so 64 GiB is fine); the first ``scratch_size`` bytes are the KHO
    scratch area, which no kernel ever preserves, so that the next kernel can
    boot from it before it knows what else is taken.
    """

    devices: dict[str, HardwareDevice] = attrs.field(factory=dict)
    links: list[tuple[str, str]] = attrs.field(factory=list)
    memory_size: int = 1 << 30
    scratch_size: int = 16 << 20
    _groups: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), repr=False)
    _memory: PhysicalMemory | None = attrs.field(default=None, repr=False)

    @property
    def memory(self) -> PhysicalMemory:
        """The physical memory, mapped on first use."""
        if self._memory is None:
            if not 0 < self.scratch_size < self.memory_size:
                raise MachineError(
                    f"scratch area of {self.scratch_size} bytes does not fit in "
                    f"{self.memory_size} bytes of memory"
                )
            self._memory = PhysicalMemory(self.memory_size)
        return self._memory

    @property
    def scratch(self) -> tuple[int, int]:
        """The scratch area as ``(phys, size)``."""
        return (0, self.scratch_size)

    def close(self) -> None:
        """Unmap the physical memory (the machine is switched off)."""
        if self._memory is not None:
            self._memory.close()

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
