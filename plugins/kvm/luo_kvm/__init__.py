"""luo-kvm: /dev/kvm, guest_memfd preserved in place, VMs paused across a live update, a VMM.

Install it and a kernel with a ``luo,kvm`` device gets a KVM
(:func:`kvm_of`), the ``guest-memfd-v1`` file handler and the VMM commands
``vmm-start``, ``vmm-preserve``, ``vmm-resume``, ``vmm-stats`` and
``vmm-stop``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from luo_core import Command, DeviceDriver, FileHandler, hookimpl
from luo_core.testing import Contract
from luo_kvm._contract import contracts, kvm_host
from luo_kvm._gmem import Gmem
from luo_kvm._gmemfd import COMPATIBLE as GMEM_COMPATIBLE
from luo_kvm._gmemfd import gmem_handler
from luo_kvm._guest import (
    DEVICE_AREA_GPA,
    GuestContext,
    GuestCounters,
    GuestDevice,
    GuestDriver,
    GuestDriverSpec,
    Heartbeat,
)
from luo_kvm._kvm import COMPATIBLE, DRIVER, Kvm, PassthroughOps, kvm_of
from luo_kvm._records import GmemRecord, KvmRecord, MemslotRecord, VcpuRecord, VmRecord
from luo_kvm._vm import Memslot, Registers, Vcpu, Vm
from luo_kvm._vmm import Vmm, session_name

if TYPE_CHECKING:
    from luo_core import Kernel

__all__ = [
    "COMPATIBLE",
    "DEVICE_AREA_GPA",
    "DRIVER",
    "GMEM_COMPATIBLE",
    "Gmem",
    "GmemRecord",
    "GuestContext",
    "GuestCounters",
    "GuestDevice",
    "GuestDriver",
    "GuestDriverSpec",
    "Heartbeat",
    "Kvm",
    "KvmRecord",
    "Memslot",
    "MemslotRecord",
    "PassthroughOps",
    "Registers",
    "Vcpu",
    "VcpuRecord",
    "Vm",
    "VmRecord",
    "Vmm",
    "kvm_host",
    "kvm_of",
    "session_name",
]


@hookimpl
def luo_device_drivers(kernel: Kernel | None) -> Iterator[DeviceDriver]:
    yield DeviceDriver(name=DRIVER, compatible=[COMPATIBLE], ops=Kvm(kernel), schema=KvmRecord)


@hookimpl
def luo_file_handlers(kernel: Kernel | None) -> Iterator[FileHandler]:
    yield gmem_handler(kernel)


@hookimpl
def luo_commands(kernel: Kernel | None) -> Iterator[Command]:
    if kernel is not None:
        yield from Vmm(kernel).commands()


@hookimpl
def luo_contracts() -> Iterator[Contract]:
    yield from contracts()
