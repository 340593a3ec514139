"""The ``guest-memfd-v1`` file handler: a guest_memfd preserved in place, by its pages.

``preserve`` keeps the file's pages for the next kernel (``kho.preserve``,
no copy: the guest and devices keep writing into them until kexec and the
next kernel finds them there); ``freeze`` has nothing to copy.  In the next
kernel ``retrieve`` checks the pages against preserved memory and gives a
new file over them (the same pages a VM handed over in the kvm record, if
one did); ``finish`` of a file never retrieved gives back the pages nothing
else uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from luo_core import FileHandler, FileHandlerOps, LiveFile
from luo_core.errors import NotFoundError
from luo_kvm._kvm import kvm_of
from luo_kvm._records import GmemRecord

if TYPE_CHECKING:
    from luo_core import Kernel

COMPATIBLE: Final = "guest-memfd-v1"


class GmemOps(FileHandlerOps):
    """The handler's callbacks, for one kernel (they reach its KVM through ``kvm_of``)."""

    def __init__(self, kernel: Kernel | None) -> None:
        self._kernel = kernel

    @property
    def kernel(self) -> Kernel:
        if self._kernel is None:
            raise NotFoundError("this handler was built for a listing, not for a kernel")
        return self._kernel

    def can_preserve(self, file: LiveFile) -> bool:
        try:
            return kvm_of(self.kernel).find_gmem(file.fd) is not None
        except NotFoundError:
            return False

    def preserve(self, file: LiveFile) -> GmemRecord:
        kvm = kvm_of(self.kernel)
        gmem = kvm.gmem_of(file.fd)
        gmem.hold(self.kernel.kho)
        return gmem.record()

    def unpreserve(self, file: LiveFile, data: GmemRecord) -> None:
        kvm = kvm_of(self.kernel)
        kvm.gmem_by_key(data.pages[0].start).let_go(self.kernel.kho)

    def retrieve(self, data: GmemRecord) -> int:
        gmem = kvm_of(self.kernel).adopt(data, COMPATIBLE)
        return gmem.attach_file()

    def finish(self, file: LiveFile | None, data: Any, retrieved: bool) -> None:
        kvm = kvm_of(self.kernel)
        if not retrieved:
            kvm.adopt(data, COMPATIBLE)  # known to this kernel, so that its pages can go
        kvm.release_unused()


def gmem_handler(kernel: Kernel | None) -> FileHandler:
    return FileHandler(COMPATIBLE, GmemOps(kernel), schema=GmemRecord)
