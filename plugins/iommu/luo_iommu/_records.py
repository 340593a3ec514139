"""What the IOMMU hands to the next kernel: the DMAR unit's record, an iommufd's, the FLB's.

Every table named here stays where it is: the records carry physical
addresses of pages preserved in place (``kho.preserve``), never copies.  The
next kernel reads them as hostile input (:mod:`luo_iommu._tables`).
"""

from __future__ import annotations

from typing import Any

import attrs

from luo_core import PhysAddr, schema_of, state, u8, u16, u64


@attrs.frozen
class MappingRecord:
    """One run of IOVA pages mapped to contiguous physical pages with the same rights."""

    iova: u64
    phys: PhysAddr
    length: u64
    read: bool
    write: bool


@attrs.frozen
class DomainRecord:
    """A domain: its id, its second-level page table and every page of it, its mappings."""

    id: u16
    pgtable: PhysAddr
    pages: list[PhysAddr]
    mappings: list[MappingRecord]


@attrs.frozen
class AttachmentRecord:
    """A PCI function whose context entry names a domain."""

    device: str
    rid: u16
    domain: u16


@state(compatible="luo,intel-iommu-state", version=2, min_version=1)
class IommuRecord:
    """What ``dmar0`` hands over: the tables it translates through, as they are.

    v2 added ``faults_at_freeze``, the unit's fault count when the kernel let
    go of it (``None`` when the writer did not note it), so the next kernel
    can count the faults of the blackout.
    """

    root_table: PhysAddr
    context_tables: dict[u8, PhysAddr]
    domains: list[DomainRecord]
    attachments: list[AttachmentRecord]
    faults_at_freeze: u64 | None = None


@schema_of(IommuRecord).migration(from_version=1)
def _v1_to_v2(fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, "faults_at_freeze": None}  # a v1 driver did not note it


@schema_of(IommuRecord).writes(version=1)
def _v2_as_v1(record: IommuRecord) -> dict[str, Any]:
    return {
        "root_table": record.root_table,
        # A dict with integer keys is written as sorted [key, value] pairs.
        "context_tables": [[bus, table] for bus, table in sorted(record.context_tables.items())],
        "domains": record.domains,
        "attachments": record.attachments,
    }


@state(compatible="luo,iommufd-state", version=1)
class IommufdRecord:
    """An iommufd: its IOAS's one HWPT (a domain, tables in place) and the devices on it."""

    domain: DomainRecord
    devices: list[AttachmentRecord]


@state(compatible="luo,iommu-flb-state", version=1)
class IommuFlbRecord:
    """The FLB ``iommu-v1``: the IOMMU's shared tables and the domain ids in use."""

    root_table: PhysAddr
    context_tables: dict[u8, PhysAddr]
    domain_ids: list[u16]
