"""``iommufd-v1``: an iommufd's domain preserved in place, and the FLB ``iommu-v1``.

Modelled on the posted "iommufd: live update" series
(``drivers/iommu/iommufd/liveupdate.c``: ``iommufd_liveupdate_preserve``,
``_retrieve``, ``_finish``; ``drivers/iommu/liveupdate.c``: the FLB and
``iommu_domain_preserve``).  ``preserve`` preserves the HWPT's page-table
pages where they are and hands over an :class:`IommufdRecord`; from then on
the IOAS is immutable (``iopt_lu_map_immutable``: map and unmap fail with
``EBUSY``).  ``retrieve`` in the next kernel gives a new eventfd whose
:class:`~luo_iommu.IommuFd` wraps the same domain over the same tables.
The FLB carries what every iommufd shares: the root and context tables and
the domain ids in use; the driver retrieves it at probe
(``kernel.flb_get_incoming``) when ``dmar0`` was not itself preserved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from luo_core import FileHandler, FileHandlerOps, Flb, FlbOps, LiveFile
from luo_core.abi import MemRange
from luo_core.errors import HandoffError, InvalidArgumentError, NotFoundError
from luo_iommu._driver import IncomingTables, Iommu, IommuFd, iommu_of
from luo_iommu._records import AttachmentRecord, IommufdRecord, IommuFlbRecord
from luo_iommu._tables import check_page, context_table_of

if TYPE_CHECKING:
    from luo_core import Kernel

COMPATIBLE: Final = "iommufd-v1"
FLB_COMPATIBLE: Final = "iommu-v1"


def _incoming(kernel: Kernel) -> tuple[MemRange, ...]:
    incoming = kernel.luo.incoming_memory
    if incoming is None:
        raise HandoffError(f"{COMPATIBLE}: nothing was handed over to this kernel")
    return incoming.preserved


class IommufdOps(FileHandlerOps):
    """The file handler of one kernel; it finds that kernel's IOMMU when called."""

    def __init__(self, kernel: Kernel | None) -> None:
        self._kernel = kernel

    @property
    def kernel(self) -> Kernel:
        if self._kernel is None:
            raise NotFoundError(f"{COMPATIBLE}: registered without a kernel")
        return self._kernel

    def _file(self, file: LiveFile) -> tuple[Iommu, IommuFd]:
        iommu = iommu_of(self.kernel)
        return iommu, iommu.iommufd(file.fd)

    def can_preserve(self, file: LiveFile) -> bool:
        """Ours, and every device on it alone in its IOMMU group.

        The group rule is ``iommu_attach_device``'s (drivers/iommu/iommu.c:
        ``EINVAL`` when the group holds more than one device): a device that
        shares its group cannot be handed over alone, so neither can its iommufd.
        """
        try:
            iommu, ioas = self._file(file)
        except NotFoundError:
            return False
        devices = iommu.kernel.devices
        for name in ioas.devices:
            group = devices.iommu_group(devices[name])
            if len(group) != 1:
                raise InvalidArgumentError(
                    f"iommufd: {name} shares IOMMU group {devices[name].iommu_group} with "
                    f"{', '.join(d.name for d in group if d.name != name)}: not preservable"
                )
        return True

    def _record(self, iommu: Iommu, ioas: IommuFd) -> IommufdRecord:
        return IommufdRecord(
            domain=ioas.domain.record(),
            devices=[
                AttachmentRecord(name, rid, ioas.domain.id)
                for name in ioas.devices
                for rid in [_rid(name)]
            ],
        )

    def preserve(self, file: LiveFile) -> IommufdRecord:
        iommu, ioas = self._file(file)
        record = self._record(iommu, ioas)
        iommu.preserve_domain(ioas.domain)
        return record

    def freeze(self, file: LiveFile, data: IommufdRecord) -> IommufdRecord:
        iommu, ioas = self._file(file)
        return self._record(iommu, ioas)

    def unpreserve(self, file: LiveFile, data: IommufdRecord) -> None:
        iommu, ioas = self._file(file)
        iommu.unpreserve_domain(ioas.domain)

    def retrieve(self, data: IommufdRecord) -> int:
        return iommu_of(self.kernel).adopt_file(data, _incoming(self.kernel))

    def finish(self, file: LiveFile | None, data: IommufdRecord, retrieved: bool) -> None:
        if not retrieved:
            iommu_of(self.kernel).drop_file_domain(data, _incoming(self.kernel))


class IommuFlbOps(FlbOps):
    """``iommu-v1``: the root table, the context tables, the domain ids in use."""

    def __init__(self, kernel: Kernel | None) -> None:
        self._kernel = kernel

    @property
    def kernel(self) -> Kernel:
        if self._kernel is None:
            raise NotFoundError(f"{FLB_COMPATIBLE}: registered without a kernel")
        return self._kernel

    def preserve(self) -> tuple[IommuFlbRecord, list[int]]:
        iommu = iommu_of(self.kernel)
        pages = iommu.shared_tables()
        iommu.pages.preserve(pages)
        record = IommuFlbRecord(
            root_table=pages[0],
            context_tables=iommu.context_tables,
            domain_ids=[d.id for d in iommu.domains],
        )
        return record, pages

    def unpreserve(self, data: IommuFlbRecord, obj: Any) -> None:
        iommu_of(self.kernel).pages.unpreserve(obj)

    def retrieve(self, data: IommuFlbRecord) -> IncomingTables:
        """The shared tables, checked: preserved pages, and a root table naming them."""
        kernel = self.kernel
        preserved, size = _incoming(kernel), kernel.memory.size
        root = check_page(data.root_table, preserved, size, "FLB root table")
        seen = {root}
        for bus, table in data.context_tables.items():
            check_page(table, preserved, size, f"FLB context table of bus {bus:#x}")
            if table in seen:
                raise HandoffError(f"FLB names table page {table:#x} twice")
            seen.add(table)
            if context_table_of(kernel.memory.read, root, bus) != table:
                raise HandoffError(f"FLB: the root entry of bus {bus:#x} does not name {table:#x}")
        return IncomingTables(root, dict(data.context_tables), frozenset(data.domain_ids))

    def finish(self, obj: Any) -> None:
        return None  # the tables belong to the driver now


def _rid(name: str) -> int:
    from luo_core.abi._dmar import requester_id

    rid = requester_id(name)
    if rid is None:
        raise InvalidArgumentError(f"{name} is not a PCI function")
    return rid


def flb_of(kernel: Kernel) -> Flb | None:
    """This kernel's ``iommu-v1`` FLB (registered with ``iommufd-v1``)."""
    handler = kernel.registry.file_handlers.get(COMPATIBLE)
    if handler is None:
        return None
    return next((f for f in handler.flbs if f.compatible == FLB_COMPATIBLE), None)


def file_handler(kernel: Kernel | None) -> FileHandler:
    """The ``iommufd-v1`` handler of one kernel, with its FLB."""
    flb = Flb(FLB_COMPATIBLE, IommuFlbOps(kernel), schema=IommuFlbRecord)
    return FileHandler(COMPATIBLE, IommufdOps(kernel), schema=IommufdRecord, flbs=(flb,))
