"""luo-iommu: VT-d DMA remapping for luo — the DMAR unit's model, its driver, iommufd.

Install it and the hardware runs ``dmar0`` (compatible ``intel,vtd``); each
kernel binds the ``intel-iommu`` driver to it, offers domains and iommufds
(:func:`iommu_of`), preserves them in place across a live update
(``dmar0``'s record, the ``iommufd-v1`` file handler, the ``iommu-v1`` FLB)
and adopts them in the next kernel without rewriting a table.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from luo_core import Command, DeviceDriver, FileHandler, hookimpl
from luo_core.platform import DeviceModel
from luo_core.testing import Contract
from luo_iommu._commands import command
from luo_iommu._contract import contracts
from luo_iommu._dmaengine import COMPATIBLE as DMA_ENGINE
from luo_iommu._dmaengine import DmaEngineModel
from luo_iommu._domain import Domain, IoMapping
from luo_iommu._driver import DRIVER, Iommu, IommuFd, iommu_of
from luo_iommu._iommufd import COMPATIBLE as IOMMUFD
from luo_iommu._iommufd import FLB_COMPATIBLE as IOMMU_FLB
from luo_iommu._iommufd import file_handler
from luo_iommu._model import COMPATIBLE, DMAR_REGISTERS, GCMD_TE, DmarModel
from luo_iommu._records import (
    AttachmentRecord,
    DomainRecord,
    IommufdRecord,
    IommuFlbRecord,
    IommuRecord,
    MappingRecord,
)

if TYPE_CHECKING:
    from luo_core import Kernel

__all__ = [
    "COMPATIBLE",
    "DMAR_REGISTERS",
    "DMA_ENGINE",
    "DRIVER",
    "GCMD_TE",
    "IOMMUFD",
    "IOMMU_FLB",
    "AttachmentRecord",
    "DmaEngineModel",
    "DmarModel",
    "Domain",
    "DomainRecord",
    "IoMapping",
    "Iommu",
    "IommuFd",
    "IommuFlbRecord",
    "IommuRecord",
    "IommufdRecord",
    "MappingRecord",
    "iommu_of",
]


@hookimpl
def luo_device_models() -> Iterator[type[DeviceModel]]:
    yield DmarModel
    yield DmaEngineModel


@hookimpl
def luo_device_drivers(kernel: Kernel | None) -> Iterator[DeviceDriver]:
    yield DeviceDriver(name=DRIVER, compatible=[COMPATIBLE], ops=Iommu(kernel), schema=IommuRecord)


@hookimpl
def luo_file_handlers(kernel: Kernel | None) -> Iterator[FileHandler]:
    yield file_handler(kernel)


@hookimpl
def luo_commands(kernel: Kernel | None) -> Iterator[Command]:
    if kernel is not None:
        yield command(kernel)


@hookimpl
def luo_contracts() -> Iterator[Contract]:
    yield from contracts()
