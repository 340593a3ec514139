"""The ``intel-ir`` driver: the interrupt-remapping table, MSI routes, and keeping them live.

Probe allocates the table (:data:`ENTRIES` entries of ``luo_core.abi._irte``)
and a page of the host's per-CPU posted-MSI descriptors from the kernel's
allocator, points IRTA at the table and sets IRE.  Routes are entries of
that table, written as Linux writes them (``drivers/iommu/intel/irq_remapping.c``:
``alloc_irte``, ``modify_irte``, ``intel_ir_set_vcpu_affinity``,
``free_irte``).  Across a live update nothing moves: ``prepare`` preserves
the table and descriptor pages in place with KHO and hands over a record of
where they are and what each entry routes; the remapping unit keeps
remapping while no kernel runs, so MSIs raised then are posted into their
descriptors in physical memory.  ``restore`` checks the record against the
table and the registers it finds, adopts both, and re-injects each posted
route's vector once (counted in :attr:`IrChip.reinjected`).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Final

from luo_core import Device, DeviceDriverOps
from luo_core.abi import MemRange
from luo_core.abi._dmar import requester_id
from luo_core.abi._irte import (
    IRTE_SIZE,
    MAX_ENTRIES,
    PostedIrte,
    RemappedIrte,
    decode_irte,
    encode_msi,
)
from luo_core.abi._kho import find_containing
from luo_core.abi._posted import (
    CONTROL,
    PI_DESC_ALIGN,
    PI_DESC_SIZE,
    POSTED_INTR_ON,
    POSTED_INTR_SN,
    PiDesc,
)
from luo_core.errors import (
    BusyError,
    DecodeError,
    DeviceError,
    ExistsError,
    HandoffError,
    InvalidArgumentError,
    NotFoundError,
)
from luo_core.platform._atomic import AtomicWords
from luo_irqchip._model import COMPATIBLE, GCMD_IRE, irta, irta_table
from luo_irqchip._record import IrRecord, Route

if TYPE_CHECKING:
    from luo_core import Kernel

DRIVER: Final = "intel-ir"
ENTRIES: Final = 256
"""Table size: 256 entries, one 4 KiB page (Linux uses ``INTR_REMAP_TABLE_ENTRIES``, 65536)."""
PAGE: Final = 4096
CPUS: Final = PAGE // PI_DESC_SIZE
"""Host CPUs with a posted-MSI descriptor: one page of them."""
POSTED_MSI_NOTIFICATION_VECTOR: Final = 0xEB
"""``POSTED_MSI_NOTIFICATION_VECTOR`` (``arch/x86/include/asm/irq_vectors.h``)."""


def _table_bytes(entries: int) -> int:
    return max(entries * IRTE_SIZE, PAGE)


class IrChip(DeviceDriverOps):
    """One kernel's IRQ chip: bound to the machine's remapping unit (``ir0``)."""

    def __init__(self, kernel: Kernel | None) -> None:
        self._kernel = kernel
        self._dev: Device | None = None
        self._table = 0
        self._entries = 0
        self._descriptors = 0
        self._routes: dict[int, Route] = {}
        self._frozen = False
        self._preserving = False
        self._reinjected = 0

    # -- lookup ------------------------------------------------------------------------

    @property
    def bound(self) -> bool:
        """Whether this chip drives a remapping unit (probed or restored)."""
        return self._dev is not None

    @property
    def table(self) -> tuple[int, int]:
        """``(address, entries)`` of the remapping table."""
        return self._table, self._entries

    @property
    def descriptors(self) -> int:
        """Address of the page of host posted-MSI descriptors."""
        return self._descriptors

    @property
    def reinjected(self) -> int:
        """Posted routes whose vector was re-injected after restore (spurious, harmless)."""
        return self._reinjected

    def table_bytes(self) -> bytes:
        """The table as it is in physical memory."""
        return self._mem_kernel().memory.read(self._table, self._entries * IRTE_SIZE)

    def routes(self) -> list[Route]:
        """Every allocated entry, by handle."""
        return [self._routes[h] for h in sorted(self._routes)]

    # -- the driver's API ------------------------------------------------------------

    def posted_msi_desc(self, cpu: int) -> int:
        """The host CPU ``cpu``'s posted-MSI descriptor (Linux ``posted_msi_pi_desc``)."""
        if type(cpu) is not int or not 0 <= cpu < CPUS:
            raise InvalidArgumentError(f"CPU {cpu!r} is not in 0..{CPUS - 1}")
        return self._descriptors + cpu * PI_DESC_SIZE

    def alloc_irte(self, device: str, msi_index: int) -> int:
        """An entry for the MSI ``msi_index`` of ``device``: its handle (not yet present)."""
        self._writable("alloc_irte")
        if not isinstance(device, str) or not device:
            raise InvalidArgumentError(f"device {device!r} is not a device name")
        if type(msi_index) is not int or not 0 <= msi_index <= 0xFFFF:
            raise InvalidArgumentError(f"MSI index {msi_index!r} is not in 0..65535")
        for route in self._routes.values():
            if (route.device, route.msi_index) == (device, msi_index):
                raise ExistsError(f"{device} MSI {msi_index} already has entry {route.handle}")
        # The lowest free index, as alloc_irte's bitmap_find_free_region.
        handle = next((h for h in range(self._entries) if h not in self._routes), None)
        if handle is None:
            raise BusyError(
                f"the interrupt-remapping table's {self._entries} entries are all allocated",
                errno=errno.ENOSPC,
            )
        self._routes[handle] = Route(handle=handle, device=device, msi_index=msi_index)
        return handle

    def set_vcpu_affinity(self, handle: int, pda: int, vector: int) -> None:
        """Post ``vector`` into the descriptor at ``pda``: a posted-format entry, as
        ``intel_ir_set_vcpu_affinity`` writes it (``p_pst``, ``p_vector``, ``pda_l/h``)."""
        self._writable("set_vcpu_affinity")
        route = self._route(handle)
        memory = self._mem_kernel().memory
        if type(pda) is not int or pda % PI_DESC_ALIGN or not 0 <= pda <= memory.size - 64:
            raise InvalidArgumentError(
                f"posted-interrupt descriptor {pda!r} is not 64-byte aligned in physical memory"
            )
        self._vector(vector)
        new = Route(handle, route.device, route.msi_index, vector, pda=pda)
        self._write(new, PostedIrte(vector=vector, pda=pda, sid=_sid(route.device)).encode())

    def set_remapped(self, handle: int, vector: int, dest_id: int) -> None:
        """Deliver ``vector`` to APIC ID ``dest_id``: a remapped-format entry (host IRQs)."""
        self._writable("set_remapped")
        route = self._route(handle)
        self._vector(vector)
        if type(dest_id) is not int or not 0 <= dest_id <= 0xFFFF_FFFF:
            raise InvalidArgumentError(f"destination {dest_id!r} is not a u32 APIC ID")
        new = Route(handle, route.device, route.msi_index, vector, dest_id=dest_id)
        entry = RemappedIrte(vector=vector, dest_id=dest_id, sid=_sid(route.device))
        self._write(new, entry.encode())

    def free_irte(self, handle: int) -> None:
        """Clear the entry and forget its route; the device's MSI then faults."""
        self._writable("free_irte")
        self._route(handle)
        self._mem_kernel().memory.write(self._table + handle * IRTE_SIZE, bytes(IRTE_SIZE))
        del self._routes[handle]

    @staticmethod
    def msi_message(handle: int) -> tuple[int, int]:
        """``(address, data)`` a device writes to raise entry ``handle`` (``fill_msi_msg``)."""
        return encode_msi(handle)

    # -- binding -------------------------------------------------------------------------

    def probe(self, dev: Device) -> None:
        kernel = self._mem_kernel()
        if self._dev is not None:
            raise DeviceError(f"{dev.name}: {DRIVER} already drives {self._dev.name}")
        size = _table_bytes(ENTRIES)
        table = kernel.mm.alloc(size)
        descriptors = kernel.mm.alloc(PAGE)
        kernel.memory.fill(table, size)
        kernel.memory.write(
            descriptors,
            b"".join(
                PiDesc(nv=POSTED_MSI_NOTIFICATION_VECTOR, ndst=cpu).encode() for cpu in range(CPUS)
            ),
        )
        self._table, self._entries, self._descriptors = table, ENTRIES, descriptors
        self._routes = {}
        dev.regs["irta"] = irta(table, ENTRIES)
        dev.regs["gcmd"] = GCMD_IRE
        self._dev = dev
        dev.driver_data = self

    def shutdown(self, dev: Device) -> None:
        dev.regs["gcmd"] = 0  # a plain kexec: remapping off, the table is not handed over

    # -- live update ---------------------------------------------------------------------

    def prepare(self, dev: Device) -> IrRecord:
        self._preserve(True)
        return self.record()

    def freeze(self, dev: Device, data: IrRecord) -> IrRecord:
        self._frozen = True
        return self.record()

    def cancel(self, dev: Device, data: IrRecord) -> None:
        self._frozen = False
        self._preserve(False)

    def record(self) -> IrRecord:
        """The record the next kernel restores from, as things are now."""
        return IrRecord(
            table=self._table,
            entries=self._entries,
            routes=self.routes(),
            descriptors=self._descriptors,
        )

    def restore(self, dev: Device, data: IrRecord) -> None:
        kernel = self._mem_kernel()
        if self._dev is not None:
            raise DeviceError(f"{dev.name}: {DRIVER} already drives {self._dev.name}")
        self._check_record(kernel, data)
        # What this driver's predecessor programmed, not GSTS: the unit may not have
        # applied the last GCMD yet (luo's kernels do not wait for IRES, as Linux's
        # IOMMU_WAIT_OP does), and a reset clears IRTA and GCMD alike.
        table, entries = irta_table(dev.regs["irta"])
        if not dev.regs["gcmd"] & GCMD_IRE or (table, entries) != (data.table, data.entries):
            raise DeviceError(
                f"{dev.name}: remapping is not on at the handed-over table "
                f"({data.entries} entries at {data.table:#x}): the unit was reset across kexec"
            )
        descriptors = data.descriptors
        if descriptors is None:  # a v1 driver kept none: take a fresh page
            descriptors = kernel.mm.alloc(PAGE)
            kernel.memory.write(
                descriptors,
                b"".join(
                    PiDesc(nv=POSTED_MSI_NOTIFICATION_VECTOR, ndst=c).encode() for c in range(CPUS)
                ),
            )
        self._table, self._entries, self._descriptors = data.table, data.entries, descriptors
        self._routes = {route.handle: route for route in data.routes}
        self._dev = dev
        dev.driver_data = self
        for route in self.routes():
            if route.pda is not None:
                self._reinject(route.pda, route.vector)

    def finish(self, dev: Device, data: IrRecord | None) -> None:
        return None  # the table and descriptors stay in use, where they are

    # -- internals -----------------------------------------------------------------------

    def _mem_kernel(self) -> Kernel:
        if self._kernel is None:
            raise DeviceError(f"{DRIVER} was registered without a kernel (only listed)")
        return self._kernel

    def _writable(self, what: str) -> None:
        if self._dev is None:
            raise NotFoundError(f"{what}: {DRIVER} is not bound to an {COMPATIBLE} unit")
        if self._frozen:
            raise BusyError(f"{what}: interrupt routing is frozen for a live update")

    def _route(self, handle: object) -> Route:
        route = self._routes.get(handle) if type(handle) is int else None
        if route is None:
            raise NotFoundError(f"no interrupt-remapping entry {handle!r} is allocated")
        return route

    @staticmethod
    def _vector(vector: object) -> None:
        if type(vector) is not int or not 0 <= vector <= 0xFF:
            raise InvalidArgumentError(f"vector {vector!r} is not in 0..255")

    def _write(self, route: Route, entry: bytes) -> None:
        # One 16-byte store: the hardware never reads a half-written entry that
        # matters, as the real driver's cmpxchg16b in modify_irte ensures.
        self._mem_kernel().memory.write(self._table + route.handle * IRTE_SIZE, entry)
        self._routes[route.handle] = route

    def _ranges(self) -> list[tuple[int, int]]:
        return [(self._table, _table_bytes(self._entries)), (self._descriptors, PAGE)]

    def _preserve(self, on: bool) -> None:
        if on == self._preserving:
            return
        kho = self._mem_kernel().kho
        for phys, size in self._ranges():
            if on:
                kho.preserve(phys, size)
            else:
                kho.unpreserve(phys, size)
        self._preserving = on

    def _reinject(self, pda: int, vector: int) -> None:
        """Post ``vector`` into the descriptor at ``pda`` as the posting hardware does:
        the PIR bit, then ON unless ON or SN is already set (the notification
        itself goes nowhere: luo models no CPU)."""
        memory = self._mem_kernel().memory
        desc = AtomicWords(memory.view(pda, PI_DESC_SIZE))
        desc.set_bit(4 * (vector // 32), vector % 32)
        control = desc.load(CONTROL)
        if not control >> POSTED_INTR_ON & 1 and not control >> POSTED_INTR_SN & 1:
            desc.set_bit(CONTROL, POSTED_INTR_ON)
        self._reinjected += 1

    def _check_record(self, kernel: Kernel, data: IrRecord) -> None:
        """Refuse a record that does not describe a table this kernel can adopt as is."""
        size = kernel.memory.size
        entries, table = data.entries, data.table
        if not 2 <= entries <= MAX_ENTRIES or entries & (entries - 1):
            raise HandoffError(f"{DRIVER}: {entries} entries is not a power of two in 2..65536")
        if table % PAGE or table + _table_bytes(entries) > size:
            raise HandoffError(
                f"{DRIVER}: the table at {table:#x} ({entries} entries) is not a page-aligned "
                "table in physical memory"
            )
        handed = kernel.kho_in
        preserved = handed.preserved if handed is not None else ()
        spans = [(table, _table_bytes(entries), "the table")]
        if data.descriptors is not None:
            if data.descriptors % PAGE or data.descriptors + PAGE > size:
                raise HandoffError(
                    f"{DRIVER}: the descriptor page at {data.descriptors:#x} is not a page "
                    "in physical memory"
                )
            spans.append((data.descriptors, PAGE, "the descriptor page"))
        for phys, length, what in spans:
            if find_containing(preserved, MemRange(phys, length)) is None:
                raise HandoffError(f"{DRIVER}: {what} at {phys:#x} was not preserved")
        seen: set[tuple[str, int]] = set()
        handles: set[int] = set()
        for route in data.routes:
            self._check_route(route, entries, size, seen, handles)
            if (
                route.pda is not None
                and find_containing(preserved, MemRange(route.pda, PI_DESC_SIZE)) is None
            ):
                raise HandoffError(
                    f"{DRIVER}: route {route.handle}'s descriptor at {route.pda:#x} was not "
                    "preserved: posting into it would write memory this kernel owns"
                )
        raw = kernel.memory.read(table, entries * IRTE_SIZE)
        routes = {route.handle: route for route in data.routes}
        for index in range(entries):
            try:
                entry = decode_irte(raw[index * IRTE_SIZE : (index + 1) * IRTE_SIZE])
            except DecodeError as exc:
                raise HandoffError(f"{DRIVER}: table entry {index}: {exc}") from None
            expected = _expected(routes.get(index))
            if entry != expected:
                raise HandoffError(
                    f"{DRIVER}: table entry {index} is {entry!r}, the record says {expected!r}"
                )

    @staticmethod
    def _check_route(
        route: Route, entries: int, size: int, seen: set[tuple[str, int]], handles: set[int]
    ) -> None:
        where = f"{DRIVER}: route {route.handle} ({route.device} MSI {route.msi_index})"
        if route.handle >= entries:
            raise HandoffError(f"{where}: handle is outside the {entries}-entry table")
        if route.handle in handles or (route.device, route.msi_index) in seen:
            raise HandoffError(f"{where}: handed over twice")
        handles.add(route.handle)
        seen.add((route.device, route.msi_index))
        if route.pda is not None and route.dest_id is not None:
            raise HandoffError(f"{where}: both posted and remapped")
        if route.pda is not None and (route.pda % PI_DESC_ALIGN or route.pda + 64 > size):
            raise HandoffError(f"{where}: descriptor {route.pda:#x} is not in physical memory")


def _sid(device: str) -> int:
    rid = requester_id(device)
    return 0 if rid is None else rid  # a platform device has no PCI requester id


def _expected(route: Route | None) -> PostedIrte | RemappedIrte | None:
    if route is None or (route.pda is None and route.dest_id is None):
        return None
    if route.pda is not None:
        return PostedIrte(vector=route.vector, pda=route.pda, sid=_sid(route.device))
    return RemappedIrte(vector=route.vector, dest_id=route.dest_id or 0, sid=_sid(route.device))


def irqchip_of(kernel: Kernel) -> IrChip:
    """The IRQ chip of ``kernel``: the ``intel-ir`` driver bound to its remapping unit."""
    driver = kernel.registry.drivers.get(COMPATIBLE)
    if driver is None:
        raise NotFoundError(f"no driver for {COMPATIBLE} in this kernel: install luo-irqchip")
    ops = driver.ops
    if not isinstance(ops, IrChip) or not ops.bound:
        raise NotFoundError(
            f"{DRIVER} drives no {COMPATIBLE} unit in this kernel (no ir0 in the machine, "
            "or its probe or restore failed)"
        )
    return ops
