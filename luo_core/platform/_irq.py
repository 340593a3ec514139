"""The hardware's MSI delivery: through the interrupt-remapping table, into posted descriptors.

A device's MSI names an entry of the interrupt-remapping table
(:mod:`luo_core.abi._irte`), which a kernel wrote into physical memory.  A
posted-format entry has its vector posted into the descriptor at its PDA by
the machine's :class:`~luo_core.platform._posted.Poster` (PIR bit, then ON and
one notification unless ON or SN); a remapped-format entry hands its vector
and destination to the ``direct`` callback, standing for the local APIC.

The table is hostile memory.  The checks run in QEMU's order
(``vtd_interrupt_remap_msi``, ``vtd_irte_get``): the request, the index, the
entry's present bit, its reserved bits; luo adds the table's own checks
(QEMU's failed read) before the index, and the descriptor's place in memory
after the entry's.  A failure is a fault, as VT-d's fault
recording has it: counted, recorded (device, index, reason) in a bounded log,
and raised as :class:`~luo_core.errors.InterruptRemapFaultError`, with
nothing posted and nothing delivered.
"""

from __future__ import annotations

import collections
import enum
import threading
from collections.abc import Callable
from typing import Final

import attrs

from luo_core._logging import get_logger
from luo_core.abi._irte import (
    IRTE_SIZE,
    MAX_ENTRIES,
    PostedIrte,
    decode_irte,
    decode_msi,
    encode_msi,
)
from luo_core.abi._posted import PI_DESC_SIZE
from luo_core.errors import DecodeError, InterruptRemapFaultError, InvalidArgumentError
from luo_core.platform._memory import PhysicalMemory
from luo_core.platform._posted import Poster

log = get_logger("luo.hw")

TABLE_ALIGN: Final = 4096
"""The table's base is a 4 KiB page (VT-d ``IRTA_REG`` bits 63:12)."""

Direct = Callable[[int, int], None]
"""``direct(vector, dest_id)``: deliver a remapped-format interrupt to its destination."""


def no_cpu(vector: int, dest: int) -> None:
    """Where a notification or a direct interrupt goes while no CPU is modelled: nowhere."""
    return None


class IrFaultReason(enum.StrEnum):
    """Why an MSI was refused; the VT-d fault reason it stands for is in the comment."""

    REQUEST = "reserved bits set in the MSI request"  # VTD_FR_IR_REQ_RSVD (0x20)
    INDEX = "index beyond the interrupt-remapping table"  # VTD_FR_IR_INDEX_OVER (0x21)
    NOT_PRESENT = "IRTE not present"  # VTD_FR_IR_ENTRY_P (0x22)
    TABLE = "interrupt-remapping table invalid or outside physical memory"  # ..._ROOT_INVAL
    RESERVED = "reserved bits set in a present IRTE"  # VTD_FR_IR_IRTE_RSVD (0x24)
    COMPAT = "compatibility-format MSI while remapping is on"  # VTD_FR_IR_REQ_COMPAT (0x25)
    DESCRIPTOR = "posted-interrupt descriptor outside physical memory"
    DISABLED = "interrupt remapping is not enabled"


@attrs.frozen
class IrFault:
    """One recorded fault; ``index`` is ``None`` when the request named no entry."""

    device: str
    index: int | None
    reason: IrFaultReason


@attrs.frozen
class Delivery:
    """What an MSI did: the entry, its vector, and whether it was posted and notified."""

    index: int
    vector: int
    posted: bool
    notified: bool


class InterruptRemapper:
    """The machine's interrupt remapping in front of ``ram``; safe from every model's thread."""

    LOG_SIZE: Final = 64

    def __init__(self, ram: PhysicalMemory, poster: Poster, direct: Direct = no_cpu) -> None:
        self._ram = ram
        self.poster = poster
        """The posting unit posted-format entries go through (its counters included)."""
        self._direct = direct
        self._lock = threading.Lock()
        self._faults = 0
        self._direct_count = 0
        self._log: collections.deque[IrFault] = collections.deque(maxlen=self.LOG_SIZE)
        self._table: tuple[int, int] | None = None

    @property
    def table(self) -> tuple[int, int] | None:
        """The enabled table as ``(address, entries)``; ``None``: remapping off."""
        return self._table

    def set_table(self, phys: int | None, entries: int = 0) -> None:
        """``IRTA`` with ``GCMD.IRE``: remap through ``entries`` entries at ``phys``, or stop.

        With remapping off, a device's remappable MSI faults (luo's devices send
        nothing else).
        """
        if phys is None:
            self._table = None
            return
        if not self._is_table(phys, entries):
            raise InvalidArgumentError(
                f"interrupt-remapping table {phys!r} of {entries!r} entries is not a "
                f"4 KiB-aligned table of 2..{MAX_ENTRIES} (a power of two) in physical memory"
            )
        self._table = (phys, entries)

    @property
    def faults(self) -> int:
        """How many faults there were, including those the log no longer holds."""
        return self._faults

    @property
    def fault_log(self) -> list[IrFault]:
        """The last :attr:`LOG_SIZE` faults, oldest first."""
        with self._lock:
            return list(self._log)

    @property
    def direct_delivered(self) -> int:
        """Remapped-format interrupts handed to ``direct``."""
        return self._direct_count

    def deliver_msi(
        self,
        table_phys: int | None,
        table_entries: int,
        address: int,
        data: int,
        *,
        device: str = "",
    ) -> Delivery:
        """Deliver the MSI ``(address, data)`` through the table at ``table_phys``, or fault.

        ``table_phys=None``: through the table enabled by :meth:`set_table`.
        """
        if table_phys is None:
            enabled = self._table
            if enabled is None:
                raise self._fault(device, None, IrFaultReason.DISABLED)
            table_phys, table_entries = enabled
        if type(address) is not int or type(data) is not int:
            raise InvalidArgumentError(
                f"{device or 'MSI'}: address {address!r} and data {data!r} must be integers"
            )
        try:
            msi = decode_msi(address, data)
        except DecodeError:
            raise self._fault(device, None, IrFaultReason.REQUEST) from None
        if msi is None:
            raise self._fault(device, None, IrFaultReason.COMPAT)
        if not self._is_table(table_phys, table_entries):
            raise self._fault(device, msi.index, IrFaultReason.TABLE)
        if msi.index >= table_entries:
            raise self._fault(device, msi.index, IrFaultReason.INDEX)
        raw = self._ram.read(table_phys + msi.index * IRTE_SIZE, IRTE_SIZE)
        try:
            entry = decode_irte(raw)
        except DecodeError:
            raise self._fault(device, msi.index, IrFaultReason.RESERVED) from None
        if entry is None:
            raise self._fault(device, msi.index, IrFaultReason.NOT_PRESENT)
        if isinstance(entry, PostedIrte):
            if entry.pda + PI_DESC_SIZE > self._ram.size:
                raise self._fault(device, msi.index, IrFaultReason.DESCRIPTOR)
            notified = self.poster.post(entry.pda, entry.vector)
            return Delivery(msi.index, entry.vector, posted=True, notified=notified)
        with self._lock:
            self._direct_count += 1
        self._direct(entry.vector, entry.dest_id)
        return Delivery(msi.index, entry.vector, posted=False, notified=False)

    def _is_table(self, phys: object, entries: object) -> bool:
        # The size is IRTA's S field: 2**(S + 1) entries, S in 0..15.
        return (
            type(phys) is int
            and type(entries) is int
            and phys >= 0
            and phys % TABLE_ALIGN == 0
            and 2 <= entries <= MAX_ENTRIES
            and entries & (entries - 1) == 0
            and phys + entries * IRTE_SIZE <= self._ram.size
        )

    def _fault(
        self, device: str, index: int | None, reason: IrFaultReason
    ) -> InterruptRemapFaultError:
        with self._lock:
            self._faults += 1
            self._log.append(IrFault(device, index, reason))
        log.warning("ir_fault", device=device, index=index, reason=str(reason))
        return InterruptRemapFaultError(device, index, str(reason))


@attrs.frozen
class DeviceMsi:
    """One device's MSIs through the table at ``table`` of ``entries``: what a model holds.

    ``table=None``: through the table the remapping unit has enabled.
    """

    remapper: InterruptRemapper
    table: int | None
    entries: int
    device: str

    def send(self, address: int, data: int) -> Delivery:
        """The DWORD write of an MSI: ``data`` to ``address``."""
        return self.remapper.deliver_msi(
            self.table, self.entries, address, data, device=self.device
        )

    def raise_(self, handle: int, subhandle: int = 0) -> Delivery:
        """Raise the interrupt a driver programmed as ``handle`` (+ ``subhandle``)."""
        address, data = encode_msi(handle, subhandle)
        return self.send(address, data)
