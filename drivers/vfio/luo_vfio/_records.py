"""What vfio-pci hands to the next kernel: per device, and per open device file."""

from __future__ import annotations

from typing import Any

import attrs

from luo_core import schema_of, state, u8, u16, u32


@attrs.frozen
class IrqRoute:
    """One MSI of the device, routed by interrupt remapping (``handle``: its IRTE)."""

    index: u8
    handle: u32


@state(compatible="luo,vfio-pci-state", version=2, min_version=1)
class VfioPciRecord:
    """One passed-through PCI function.

    v1 held the command register only; v2 adds the MSIs routed for it and the
    IOMMU domain it is attached to, so that restore can check them.
    """

    command: u16
    irqs: list[IrqRoute] = attrs.field(factory=list)
    domain: u16 | None = None


@schema_of(VfioPciRecord).migration(from_version=1)
def _v1_to_v2(fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, "irqs": [], "domain": None}  # a v1 driver did not note them


@state(compatible="luo,vfio-device-file", version=1)
class VfioFileRecord:
    """A VMM's open device file (``vfio-pci-v1``): which device, bound to an iommufd."""

    device: str
    iommufd_bound: bool


@schema_of(VfioPciRecord).writes(version=1)
def _v2_as_v1(record: VfioPciRecord) -> dict[str, Any]:
    if record.irqs or record.domain is not None:
        raise ValueError("a v1 vfio-pci cannot take back a device with routed MSIs or a domain")
    return {"command": record.command}
