"""What the IRQ chip hands to the next kernel: where its table is, and every route.

The table and the host's posted-MSI descriptors stay where they are, in
memory preserved with KHO; the record only says where, and which device's
MSI each entry stands for, so that the next kernel can check the table it
finds against it.

========  ==============================================================
version   change
========  ==============================================================
v1        ``table``, ``entries``, ``routes`` (posted, or remapped to APIC 0)
v2        routes gain ``dest_id`` (remapped to any APIC ID; an entry may
          be allocated and not yet programmed); ``descriptors``, the page
          of the host's per-CPU posted-MSI descriptors
========  ==============================================================
"""

from __future__ import annotations

from typing import Any

from luo_core import PhysAddr, schema_of, state, u8, u16, u32
from luo_core.errors import DecodeError

RECORD_COMPATIBLE = "luo,intel-ir-state"


@state(compatible="luo,intel-ir-route", version=1)
class Route:
    """One entry of the table: the MSI ``msi_index`` of ``device`` and where it goes.

    Posted (``pda`` set): ``vector`` is posted into the descriptor at ``pda``.
    Remapped (``dest_id`` set): ``vector`` goes to the APIC ID ``dest_id``.
    Neither: allocated, not yet programmed (the entry is not present).
    """

    handle: u16
    device: str
    msi_index: u16
    vector: u8 = 0
    pda: PhysAddr | None = None
    dest_id: u32 | None = None

    @property
    def posted(self) -> bool:
        return self.pda is not None


@state(compatible=RECORD_COMPATIBLE, version=2, min_version=1)
class IrRecord:
    """The remapping table (``entries`` entries at ``table``), the descriptor page, the routes."""

    table: PhysAddr
    entries: u32
    routes: list[Route]
    descriptors: PhysAddr | None = None


@schema_of(IrRecord).migration(from_version=1)
def _v1_to_v2(fields: dict[str, Any]) -> dict[str, Any]:
    # A v1 driver had no unprogrammed entries: a route without a descriptor was
    # remapped to the boot CPU, APIC ID 0.  It kept no descriptor page of its own.
    routes = fields.get("routes")
    if not isinstance(routes, list) or not all(isinstance(r, dict) for r in routes):
        raise DecodeError(f"{RECORD_COMPATIBLE} v1: routes is not a list of maps")
    return {
        **fields,
        "routes": [{**r, "dest_id": None if r.get("pda") is not None else 0} for r in routes],
        "descriptors": None,
    }
