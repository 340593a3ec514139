"""The ``iommu`` command: the host's userspace driving the IOMMU, in any kernel's process.

It stands for a VMM (or the selftest of the iommufd series,
``tools/testing/selftests/iommu/iommufd_liveupdate.c``): it opens an
iommufd, maps a buffer and attaches a device, preserves the iommufd in a
session, and after the kexec retrieves it and reads what it maps.  Every
call takes ``{"op": ..., ...}`` and returns plain data.  State between calls
(open sessions, fds) lives on an object made per kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from luo_core import Command, Session
from luo_core.abi._iopgtable import PAGE_SIZE
from luo_core.errors import InvalidArgumentError
from luo_iommu._domain import Domain
from luo_iommu._driver import Iommu, iommu_of

if TYPE_CHECKING:
    from luo_core import Kernel


def describe(domain: Domain) -> dict[str, Any]:
    return {
        "id": domain.id,
        "pgtable": domain.pgtable,
        "pages": domain.table_pages,
        "mappings": [[m.iova, m.phys, m.length, m.read, m.write] for m in domain.mappings()],
    }


def status(iommu: Iommu) -> dict[str, Any]:
    return {
        "root_table": iommu.root_table,
        "context_tables": iommu.context_tables,
        "domains": [describe(d) for d in iommu.domains],
        "attachments": iommu.attachments(),
        "faults_in_blackout": iommu.faults_in_blackout,
    }


class Userspace:
    """One kernel's userspace: its sessions and iommufds, by name and token."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.sessions: dict[str, Session] = {}
        self.fds: dict[int, int] = {}  # token -> iommufd

    def run(self, args: Mapping[str, Any]) -> object:
        op = args.get("op")
        ops: dict[str, Callable[[Mapping[str, Any]], object]] = {
            "status": lambda a: status(iommu_of(self.kernel)),
            "buffer": self.buffer,
            "domain-alloc": lambda a: describe(iommu_of(self.kernel).domain_alloc()),
            "map": self.map,
            "attach": self.attach,
            "detach": lambda a: iommu_of(self.kernel).detach(_str(a, "device")),
            "iommufd-setup": self.iommufd_setup,
            "iommufd-retrieve": self.iommufd_retrieve,
            "finish": self.finish,
        }
        run = ops.get(op) if isinstance(op, str) else None
        if run is None:
            raise InvalidArgumentError(f"iommu: unknown op {op!r} (known: {', '.join(ops)})")
        return run(args)

    def buffer(self, args: Mapping[str, Any]) -> int:
        """Kernel pages for DMA, preserved (``kho.preserve``) so that they cross a kexec."""
        size = _int(args, "size")
        phys = self.kernel.mm.alloc(size)
        length = -(-size // PAGE_SIZE) * PAGE_SIZE
        self.kernel.memory.fill(phys, length)
        self.kernel.kho.preserve(phys, length)
        return phys

    def map(self, args: Mapping[str, Any]) -> None:
        domain = iommu_of(self.kernel).domain(_int(args, "domain"))
        domain.map(_int(args, "iova"), _int(args, "phys"), _int(args, "length"))

    def attach(self, args: Mapping[str, Any]) -> None:
        iommu = iommu_of(self.kernel)
        iommu.attach(_str(args, "device"), iommu.domain(_int(args, "domain")))

    def iommufd_setup(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """An iommufd mapping ``phys`` at ``iova`` for ``device``, preserved as ``token``
        in session ``session``."""
        iommu = iommu_of(self.kernel)
        fd = iommu.iommufd_open()
        ioas = iommu.iommufd(fd)
        ioas.domain.map(_int(args, "iova"), _int(args, "phys"), _int(args, "length"))
        ioas.attach(_str(args, "device"))
        name, token = _str(args, "session"), _int(args, "token")
        session = self.sessions.get(name)
        if session is None:
            dev = self.kernel.open_liveupdate()
            try:
                session = dev.create_session(name)
            finally:
                dev.close()
            self.sessions[name] = session
        session.preserve_fd(fd, token)
        self.fds[token] = fd
        return describe(ioas.domain)

    def iommufd_retrieve(self, args: Mapping[str, Any]) -> dict[str, Any]:
        name, token = _str(args, "session"), _int(args, "token")
        session = self.sessions.get(name)
        if session is None:
            dev = self.kernel.open_liveupdate()
            try:
                session = dev.retrieve_session(name)
            finally:
                dev.close()
            self.sessions[name] = session
        fd = session.retrieve_fd(token)
        self.fds[token] = fd
        ioas = iommu_of(self.kernel).iommufd(fd)
        return {**describe(ioas.domain), "devices": ioas.devices}

    def finish(self, args: Mapping[str, Any]) -> None:
        session = self.sessions.pop(_str(args, "session"))
        session.finish()
        session.close()


def _int(args: Mapping[str, Any], key: str) -> int:
    value = args.get(key)
    if type(value) is not int or value < 0:
        raise InvalidArgumentError(f"iommu: {key} must be a non-negative integer, not {value!r}")
    return value


def _str(args: Mapping[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise InvalidArgumentError(f"iommu: {key} must be text, not {value!r}")
    return value


def command(kernel: Kernel) -> Command:
    return Command("iommu", Userspace(kernel).run)
