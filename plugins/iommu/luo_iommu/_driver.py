"""The ``intel-iommu`` driver: root and context tables, domains, attachment, dev_liveupdate.

One :class:`Iommu` per kernel (made in the hook that takes ``kernel``) binds
to ``dmar0``.  ``probe`` allocates a root table, writes ``rtaddr`` and sets
``TE`` (``iommu_set_root_entry``, ``iommu_enable_translation``); ``attach``
writes a device's context entry (``domain_context_mapping_one``).  For a live
update ``dmar0`` itself is requested and keeps translating: ``prepare``
preserves every table page in place and hands over an :class:`IommuRecord`;
the next kernel's ``restore`` checks that the unit still translates at the
same root table, that every table the record names is preserved and says
what the record says, and adopts it all without writing a byte.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import weakref
from typing import TYPE_CHECKING, Any, Final

import attrs

from luo_core import Device, DeviceDriverOps
from luo_core.abi._dmar import (
    CONTEXT_ENTRIES,
    ENTRY_SIZE,
    ContextEntry,
    context_entry_address,
    encode_root_entry,
    requester_id,
    root_entry_address,
)
from luo_core.errors import (
    BusyError,
    DeviceError,
    HandoffError,
    InvalidArgumentError,
    LiveUpdateError,
    NotFoundError,
)
from luo_core.kernel.sessions._fileid import same_file
from luo_iommu._domain import Domain, TablePages
from luo_iommu._model import COMPATIBLE, GCMD_TE
from luo_iommu._records import AttachmentRecord, DomainRecord, IommuRecord
from luo_iommu._tables import check_page, context_of, context_table_of, walk

if TYPE_CHECKING:
    from luo_core import Kernel
    from luo_core.abi import MemRange

DRIVER: Final = "intel-iommu"
MAX_DOMAIN_ID: Final = 0xFFFF
OPERATION_TIMEOUT: Final = 5.0
"""Seconds the unit may take to acknowledge a command (the kernel's is 1 s of cycles)."""


@attrs.frozen
class IncomingTables:
    """The shared tables the FLB handed over, checked: what the driver adopts at probe."""

    root_table: int
    context_tables: dict[int, int]
    domain_ids: frozenset[int]


class IommuFd:
    """An iommufd: one IOAS whose one HWPT is :attr:`domain`; ``fd`` is its eventfd."""

    def __init__(self, iommu: Iommu, own_fd: int, domain: Domain) -> None:
        self._iommu = iommu
        self._own = own_fd  # the driver's own reference, to recognise the file by
        # Closed when the object goes: with its kernel, which leaves no descriptor behind.
        weakref.finalize(self, _close, own_fd)
        self.domain = domain

    def attach(self, device: str) -> None:
        """Attach ``device``'s whole IOMMU group to the HWPT (``iommu_attach_group``)."""
        self._iommu.attach_group(device, self.domain)

    def detach(self, device: str) -> None:
        self._iommu.detach(device)

    @property
    def devices(self) -> list[str]:
        return self._iommu.attached_to(self.domain)

    def is_file(self, fd: int) -> bool:
        return same_file(self._own, fd)


class Iommu(DeviceDriverOps):
    """The driver's ops and the kernel's IOMMU API (:func:`luo_iommu.iommu_of`)."""

    def __init__(self, kernel: Kernel | None) -> None:
        self._kernel = kernel
        self.dev: Device | None = None
        self.root_table: int | None = None
        self._contexts: dict[int, int] = {}  # bus -> context table
        self._domains: dict[int, Domain] = {}
        self._attached: dict[str, int] = {}  # device -> domain id
        self._reserved_ids: set[int] = set()  # ids the FLB says are in use, not yet adopted
        self._files: list[IommuFd] = []
        self._preserved_domains: dict[int, int] = {}  # domain id -> preservers
        self._prepared: list[int] | None = None  # pages dmar0's prepare preserved
        self._frozen = False
        self._pages: TablePages | None = None
        self.faults_in_blackout: int | None = None
        """Faults the unit counted between freeze and restore (after a live update)."""

    # -- plumbing -------------------------------------------------------------------

    @property
    def kernel(self) -> Kernel:
        if self._kernel is None:
            raise NotFoundError(f"{DRIVER}: registered without a kernel")
        return self._kernel

    @property
    def pages(self) -> TablePages:
        if self._pages is None:
            k = self.kernel
            self._pages = TablePages(k.memory, k.mm, k.kho)
        return self._pages

    @property
    def probed(self) -> bool:
        return self.dev is not None and self.root_table is not None

    def _read(self, phys: int, length: int) -> bytes:
        return self.kernel.memory.read(phys, length)

    def _mutable(self, domain: Domain) -> None:
        if self._frozen or domain.id in self._preserved_domains:
            raise BusyError(
                f"domain {domain.id} is preserved for a live update: its mappings are immutable"
            )

    def _unlocked(self, what: str) -> None:
        if self._frozen:
            raise BusyError(f"{what}: dmar0 is frozen for a live update")

    # -- domains --------------------------------------------------------------------

    @property
    def domains(self) -> list[Domain]:
        return [self._domains[i] for i in sorted(self._domains)]

    def domain(self, domain_id: int) -> Domain:
        found = self._domains.get(domain_id)
        if found is None:
            raise NotFoundError(f"no IOMMU domain {domain_id}")
        return found

    def domain_alloc(self) -> Domain:
        """A new, empty domain (``intel_iommu_domain_alloc_paging``)."""
        self._unlocked("domain_alloc")
        taken = self._domains.keys() | self._reserved_ids
        free = next((i for i in range(1, MAX_DOMAIN_ID + 1) if i not in taken), None)
        if free is None:
            raise LiveUpdateError("no free IOMMU domain id", errno=errno.ENOSPC)
        domain = Domain(free, self.pages, self.kernel.memory, self._mutable)
        self._domains[free] = domain
        return domain

    def domain_free(self, domain: Domain) -> None:
        """Free an unattached domain and its table pages (``EBUSY`` if in use)."""
        self._unlocked("domain_free")
        if self.attached_to(domain) or domain.id in self._preserved_domains:
            raise BusyError(f"domain {domain.id} is attached or preserved")
        if any(f.domain is domain for f in self._files):
            raise BusyError(f"domain {domain.id} is an iommufd's HWPT")
        self._domains.pop(domain.id, None)
        domain.release()

    # -- attachment -----------------------------------------------------------------

    def attached_to(self, domain: Domain) -> list[str]:
        return sorted(d for d, i in self._attached.items() if i == domain.id)

    def attachments(self) -> dict[str, int]:
        """Every attached device and its domain id."""
        return dict(sorted(self._attached.items()))

    def _pci(self, device: str) -> tuple[Device, int]:
        dev = self.kernel.devices[device]
        rid = requester_id(device)
        if dev.bus != "pci" or rid is None:
            # drivers/iommu/intel/iommu.c: device_to_iommu finds no DMAR unit for a non-PCI
            # device here; the attach is refused.
            raise InvalidArgumentError(f"{device} is not a PCI function: it has no requester id")
        return dev, rid

    def attach(self, device: str, domain: Domain) -> None:
        """Attach one device (``iommu_attach_device``): ``EINVAL`` unless it is alone in its
        IOMMU group and PCI, ``EBUSY`` if attached to another domain."""
        dev, _ = self._pci(device)
        group = self.kernel.devices.iommu_group(dev)
        if len(group) != 1:
            others = ", ".join(d.name for d in group if d is not dev)
            raise InvalidArgumentError(
                f"{device} shares IOMMU group {dev.iommu_group} with {others}"
            )
        self._attach_one(device, domain)

    def attach_group(self, device: str, domain: Domain) -> None:
        """Attach ``device``'s whole IOMMU group (``iommu_attach_group``), as iommufd does."""
        dev, _ = self._pci(device)
        members = [d.name for d in self.kernel.devices.iommu_group(dev)]
        for name in members:
            self._pci(name)
            if self._attached.get(name, domain.id) != domain.id:
                raise BusyError(f"{name} is attached to domain {self._attached[name]}")
        for name in members:
            self._attach_one(name, domain)

    def _attach_one(self, device: str, domain: Domain) -> None:
        self._unlocked(f"attach {device}")
        if self.root_table is None:
            raise NotFoundError(f"{DRIVER}: dmar0 is not probed")
        if self._domains.get(domain.id) is not domain:
            raise NotFoundError(f"domain {domain.id} is not one of this IOMMU's")
        current = self._attached.get(device)
        if current == domain.id:
            return
        if current is not None:
            raise BusyError(f"{device} is attached to domain {current}; detach it first")
        _, rid = self._pci(device)
        bus = rid >> 8
        table = self._contexts.get(bus)
        if table is None:
            table = self.pages.alloc()
            self._contexts[bus] = table
            self.kernel.memory.write(
                root_entry_address(self.root_table, rid), encode_root_entry(table)
            )
        entry = ContextEntry(pgtable=domain.pgtable, domain_id=domain.id)
        self.kernel.memory.write(context_entry_address(table, rid), entry.encode())
        self._attached[device] = domain.id

    def detach(self, device: str) -> None:
        """Clear ``device``'s context entry: its DMA faults from now on."""
        self._unlocked(f"detach {device}")
        if device not in self._attached:
            raise NotFoundError(f"{device} is not attached")
        _, rid = self._pci(device)
        self.kernel.memory.write(
            context_entry_address(self._contexts[rid >> 8], rid), bytes(ENTRY_SIZE)
        )
        del self._attached[device]

    # -- iommufd --------------------------------------------------------------------

    def iommufd_open(self) -> int:
        """A new iommufd (an eventfd the caller owns) with one IOAS over a new domain."""
        domain = self.domain_alloc()
        return self._new_file(domain)

    def _new_file(self, domain: Domain) -> int:
        fd = os.eventfd(0, os.EFD_CLOEXEC)
        self._files.append(IommuFd(self, os.dup(fd), domain))
        return fd

    def iommufd(self, fd: int) -> IommuFd:
        """The iommufd ``fd`` is (``ENOENT`` for any other file)."""
        found = self.find_file(fd)
        if found is None:
            raise NotFoundError(f"fd {fd} is not an iommufd of this kernel")
        return found

    def find_file(self, fd: int) -> IommuFd | None:
        try:
            return next((f for f in self._files if f.is_file(fd)), None)
        except OSError:
            return None

    def preserve_domain(self, domain: Domain) -> None:
        """Preserve ``domain``'s table pages in place; its mappings are immutable until
        :meth:`unpreserve_domain`."""
        self.pages.preserve(domain.table_pages)
        self._preserved_domains[domain.id] = self._preserved_domains.get(domain.id, 0) + 1

    def unpreserve_domain(self, domain: Domain) -> None:
        self.pages.unpreserve(domain.table_pages)
        count = self._preserved_domains.get(domain.id, 0) - 1
        if count > 0:
            self._preserved_domains[domain.id] = count
        else:
            self._preserved_domains.pop(domain.id, None)

    def shared_tables(self) -> list[int]:
        """The root table and every context table (what the FLB preserves)."""
        if self.root_table is None:
            raise NotFoundError(f"{DRIVER}: dmar0 is not probed")
        return [self.root_table, *sorted(self._contexts.values())]

    @property
    def context_tables(self) -> dict[int, int]:
        return dict(sorted(self._contexts.items()))

    # -- binding --------------------------------------------------------------------

    def probe(self, dev: Device) -> None:
        if self.dev is not None and self.dev is not dev:
            raise DeviceError(f"{DRIVER} drives one DMAR unit ({self.dev.name})")
        incoming = self._flb_tables()
        root = self.pages.alloc() if incoming is None else self._adopt_shared(incoming)
        self.dev, self.root_table = dev, root
        dev.driver_data = self
        dev.regs["rtaddr"] = root
        dev.regs["gcmd"] = GCMD_TE
        _wait_status(dev, GCMD_TE)

    def _flb_tables(self) -> IncomingTables | None:
        from luo_iommu._iommufd import flb_of

        flb = flb_of(self.kernel)
        if flb is None:
            return None
        try:
            tables = self.kernel.flb_get_incoming(flb)
        except LiveUpdateError as exc:
            if exc.errno in (errno.ENOENT, errno.ENODATA):
                return None  # nothing handed over
            raise
        if not isinstance(tables, IncomingTables):
            raise HandoffError(f"FLB iommu-v1 gave {type(tables).__name__}")
        return tables

    def _adopt_shared(self, tables: IncomingTables) -> int:
        """Adopt the FLB's root and context tables after a kexec that reset dmar0.

        A context entry survives only if its domain id is one the FLB names and
        its page table was preserved (an iommufd's); any other would point at
        memory this kernel owns now, so it is cleared, and so is a root entry
        naming a context table that was not preserved.
        """
        memory = self.kernel.memory
        incoming = self.kernel.luo.incoming_memory
        preserved = incoming.preserved if incoming is not None else ()
        for bus in range(256):
            table = context_table_of(self._read, tables.root_table, bus)
            if table is not None and tables.context_tables.get(bus) != table:
                memory.write(root_entry_address(tables.root_table, bus << 8), bytes(ENTRY_SIZE))
        for bus, table in tables.context_tables.items():
            for devfn in range(CONTEXT_ENTRIES):
                rid = bus << 8 | devfn
                entry = context_of(self._read, table, rid)
                if entry is None:
                    continue
                try:
                    check_page(entry.pgtable, preserved, memory.size, "page table")
                    keep = entry.domain_id in tables.domain_ids
                except HandoffError:
                    keep = False
                if not keep:
                    memory.write(context_entry_address(table, rid), bytes(ENTRY_SIZE))
        for phys in (tables.root_table, *tables.context_tables.values()):
            self.pages.adopt(phys)
        self._contexts = dict(tables.context_tables)
        self._reserved_ids = set(tables.domain_ids)
        return tables.root_table

    def shutdown(self, dev: Device) -> None:
        dev.regs["gcmd"] = 0
        _wait_status(dev, 0)

    # -- dev_liveupdate -------------------------------------------------------------

    def record(self, faults_at_freeze: int | None = None) -> IommuRecord:
        """What ``dmar0`` hands over now (``faults_at_freeze``: the unit's fault count)."""
        if self.root_table is None:
            raise DeviceError(f"{DRIVER}: dmar0 is not probed")
        return IommuRecord(
            root_table=self.root_table,
            context_tables=self.context_tables,
            domains=[d.record() for d in self.domains],
            attachments=[
                AttachmentRecord(device, requester_id(device) or 0, domain)
                for device, domain in self.attachments().items()
            ],
            faults_at_freeze=faults_at_freeze,
        )

    def prepare(self, dev: Device) -> IommuRecord:
        """Preserve every table page in place (the heavy part) and hand over the tables.

        Until freeze the IOMMU keeps working: a table page allocated meanwhile
        is preserved at once, and freeze hands over the final record.
        """
        self._unprepare()  # a freeze that failed before ours ran gets no cancel
        record = self.record()
        pages = [*self.shared_tables(), *(p for d in self.domains for p in d.table_pages)]
        self.pages.preserve(pages)
        self._prepared = pages
        self.pages.tracking = pages
        return record

    def freeze(self, dev: Device, data: IommuRecord) -> IommuRecord:
        """Stop every change to the tables and hand over the final record."""
        self._frozen = True
        return self.record(faults_at_freeze=dev.regs["fault_count"])

    def cancel(self, dev: Device, data: IommuRecord) -> None:
        self._unprepare()

    def _unprepare(self) -> None:
        self._frozen = False
        self.pages.tracking = None
        if self._prepared is not None:
            self.pages.unpreserve(self._prepared)
            self._prepared = None

    def restore(self, dev: Device, data: IommuRecord) -> None:
        """Adopt the running unit: check everything, then take it all at once."""
        handed = self.kernel.kho_in
        preserved = handed.preserved if handed is not None else ()
        size = self.kernel.memory.size
        root = check_page(data.root_table, preserved, size, "root table")
        regs = dev.regs
        if not regs["gsts"] & GCMD_TE:
            raise DeviceError(f"{dev.name}: translation was turned off across kexec")
        if regs["rtaddr"] != root:
            raise DeviceError(
                f"{dev.name}: translating at root table {regs['rtaddr']:#x}, {root:#x} handed over"
            )
        claimed: set[int] = {root}
        contexts: dict[int, int] = {}
        for bus, table in data.context_tables.items():
            check_page(table, preserved, size, f"context table of bus {bus:#x}")
            if context_table_of(self._read, root, bus) != table:
                raise HandoffError(f"root entry of bus {bus:#x} does not name {table:#x}")
            _claim(claimed, [table])
            contexts[bus] = table
        domains: dict[int, Domain] = {}
        for record in data.domains:
            if record.id in domains:
                raise HandoffError(f"domain {record.id} is handed over twice")
            domain = self._adopted_domain(record, preserved)
            _claim(claimed, domain.table_pages)
            domains[record.id] = domain
        attached: dict[str, int] = {}
        for a in data.attachments:
            self._check_attachment(a, contexts, domains)
            attached[a.device] = a.domain
        for phys in claimed:
            self.pages.adopt(phys)
        self.dev, self.root_table = dev, root
        dev.driver_data = self
        self._contexts, self._domains, self._attached = contexts, domains, attached
        if data.faults_at_freeze is not None:
            self.faults_in_blackout = (regs["fault_count"] - data.faults_at_freeze) % (1 << 64)

    def _check_attachment(
        self, a: AttachmentRecord, contexts: dict[int, int], domains: dict[int, Domain]
    ) -> None:
        if requester_id(a.device) != a.rid:
            raise HandoffError(f"{a.device!r} does not have requester id {a.rid:#x}")
        domain = domains.get(a.domain)
        table = contexts.get(a.rid >> 8)
        if domain is None or table is None:
            raise HandoffError(f"{a.device} is attached to a domain or bus not handed over")
        found = context_of(self._read, table, a.rid)
        if found != ContextEntry(pgtable=domain.pgtable, domain_id=domain.id):
            raise HandoffError(f"the context entry of {a.device} does not name domain {a.domain}")

    def _adopted_domain(self, record: DomainRecord, preserved: tuple[MemRange, ...]) -> Domain:
        """A domain over the tables ``record`` names, walked and checked (nothing written)."""
        size = self.kernel.memory.size
        pages = [check_page(p, preserved, size, f"domain {record.id} table") for p in record.pages]
        if len(set(pages)) != len(pages):
            raise HandoffError(f"domain {record.id} lists a table page twice")
        if record.pgtable not in pages:
            raise HandoffError(f"domain {record.id}: its root {record.pgtable:#x} is not listed")
        used, runs = walk(self._read, record.pgtable, frozenset(pages))
        if used != set(pages):
            raise HandoffError(
                f"domain {record.id}: the record lists {len(pages)} table pages, "
                f"its tables use {len(used)}"
            )
        claimed = [(m.iova, m.phys, m.length, m.read, m.write) for m in record.mappings]
        if runs != claimed:
            raise HandoffError(f"domain {record.id}: its mappings are not what its tables hold")
        return Domain(
            record.id,
            self.pages,
            self.kernel.memory,
            self._mutable,
            root=record.pgtable,
            table_pages=set(pages),
            runs=runs,
        )

    def adopt_file(self, record: Any, preserved: tuple[MemRange, ...]) -> int:
        """The iommufd ``record`` describes, as a new eventfd wrapping the same domain."""
        wanted = record.domain
        domain = self._domains.get(wanted.id)
        if domain is not None:
            # dmar0's own record brought it over already: it must be the very same tables.
            if domain.pgtable != wanted.pgtable or domain.table_pages != sorted(wanted.pages):
                raise HandoffError(f"domain {wanted.id} handed over twice, with other tables")
            if any(f.domain is domain for f in self._files):
                raise BusyError(f"domain {wanted.id} is already an iommufd's")
        else:
            if self.root_table is None:
                raise NotFoundError(f"{DRIVER}: dmar0 is not probed")
            if wanted.id not in self._reserved_ids:
                raise HandoffError(f"domain {wanted.id} is not one the FLB iommu-v1 names")
            domain = self._adopted_domain(wanted, preserved)
            for phys in domain.table_pages:
                if self.pages.preserved(phys) or any(
                    phys in d.table_pages for d in self._domains.values()
                ):
                    raise HandoffError(f"table page {phys:#x} already belongs to a domain")
        attached: dict[str, int] = {}
        for a in record.devices:
            self._check_attachment(a, self._contexts, {domain.id: domain})
            attached[a.device] = domain.id
        if wanted.id not in self._domains:
            for phys in domain.table_pages:
                self.pages.adopt(phys)
            self._domains[domain.id] = domain
            self._reserved_ids.discard(domain.id)
        self._attached.update(attached)
        return self._new_file(domain)

    def drop_file_domain(self, record: Any, preserved: tuple[MemRange, ...]) -> None:
        """An iommufd never retrieved: clear what still points at its domain and give its
        preserved tables back, unless this kernel adopted the domain another way."""
        wanted = record.domain
        if wanted.id in self._domains or self.root_table is None:
            return
        size = self.kernel.memory.size
        for a in record.devices:
            table = self._contexts.get(a.rid >> 8)
            if table is not None:
                found = context_of(self._read, table, a.rid)
                if found is not None and found.domain_id == wanted.id:
                    self.kernel.memory.write(context_entry_address(table, a.rid), bytes(16))
        self._reserved_ids.discard(wanted.id)
        for phys in sorted(set(wanted.pages)):
            check_page(phys, preserved, size, f"domain {wanted.id} table")
            self.kernel.mm.release(phys, 4096)

    def finish(self, dev: Device, data: Any | None) -> None:
        return None


def _wait_status(dev: Device, expected: int) -> None:
    """Spin until ``gsts.TES`` says what was asked (``IOMMU_WAIT_OP`` in
    drivers/iommu/intel/iommu.h, bounded by ``DMAR_OPERATION_TIMEOUT``)."""
    deadline = time.monotonic() + OPERATION_TIMEOUT
    while dev.regs["gsts"] & GCMD_TE != expected:
        if time.monotonic() > deadline:
            raise DeviceError(f"{dev.name}: gsts did not acknowledge gcmd {expected:#x}")
        os.sched_yield()


def _claim(claimed: set[int], pages: list[int]) -> None:
    for phys in pages:
        if phys in claimed:
            raise HandoffError(f"table page {phys:#x} is claimed twice")
        claimed.add(phys)


def iommu_of(kernel: Kernel) -> Iommu:
    """The IOMMU of ``kernel``: the ops of the driver bound to ``dmar0``, probed."""
    driver = kernel.registry.drivers.get(COMPATIBLE)
    if driver is None:
        raise NotFoundError(f"no {DRIVER} driver for {COMPATIBLE!r} in this kernel")
    if isinstance(driver.ops, Iommu) and driver.ops.probed:
        return driver.ops
    # The ops may be wrapped (the contract suite injects faults that way): the bound
    # device's driver data is the Iommu itself.
    for dev in kernel.devices.values():
        ops = dev.driver_data
        bound = dev.compatible == COMPATIBLE and dev.driver is not None
        if bound and isinstance(ops, Iommu) and ops.probed:
            return ops
    raise NotFoundError(f"{DRIVER}: no {COMPATIBLE!r} device is bound (dmar0 missing?)")


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
