"""The NVMe controller's hardware: queues in host memory, a namespace in a real file.

It runs in the hardware process on its own thread (luo's model loop) and
keeps running while no kernel exists.  The driver enables it with the CC.EN /
CSTS.RDY handshake over an admin queue pair (AQA, ASQ, ACQ), creates one I/O
queue pair with admin commands, and rings doorbells; the controller fetches
64-byte submission entries, runs them, and posts 16-byte completion entries
with the phase tag, all by DMA through the IOMMU as this PCI function
(``ctx.dma()``), and raises the completion queue's MSI through interrupt
remapping (``ctx.msi()``).

luo simplifies MSI-X: there is no MSI-X table; the interrupt vector a driver
gives Create I/O Completion Queue (``irq_vector``) is the interrupt-remapping
handle the MSI names.  The admin completion queue raises no interrupt: both
drivers poll it (they do so only while probing).

Namespace 1 is backed by a file the controller creates and owns, of
``ns_mib`` MiB (a machine parameter, 1 by default): what a driver writes is
really on "disk" and outlives every kernel, as the hardware does.

Faults never crash the controller: a DMA the IOMMU refuses fails the command
with Data Transfer Error (counted in ``dma_errors``), an MSI interrupt
remapping refuses is counted (``irq_faults``), a malformed entry completes
with an error status, a doorbell value past its queue is counted
(``db_errors``) and ignored.  The operator can hold the controller
(control ``hold``): doorbells are noted but nothing is fetched until it is
released, which is how tests make commands complete while no kernel runs.
"""

from __future__ import annotations

import os
import struct
import tempfile
import weakref
from collections.abc import Mapping
from typing import Any, Final

import attrs

from luo_core.errors import InterruptRemapFaultError, IommuFaultError
from luo_core.platform import DeviceContext, DeviceModel
from luo_core.platform._registers import BUS_MASTER
from luo_nvme._spec import (
    CAP_VALUE,
    COMPATIBLE,
    CQE,
    ID_CTRL_CQES,
    ID_CTRL_MDTS,
    ID_CTRL_MN,
    ID_CTRL_NN,
    ID_CTRL_SN,
    ID_CTRL_SQES,
    ID_CTRL_VID,
    ID_NS_FLBAS,
    ID_NS_LBAF,
    ID_NS_NCAP,
    ID_NS_NLBAF,
    ID_NS_NSZE,
    IO_QID,
    LBA_SHIFT,
    LBA_SIZE,
    MAX_TRANSFER,
    MDTS,
    MQES,
    NSID,
    NVME_CC_ENABLE,
    NVME_CC_SHN_MASK,
    NVME_CQ_IRQ_ENABLED,
    NVME_CSTS_CFS,
    NVME_CSTS_RDY,
    NVME_CSTS_SHST_CMPLT,
    NVME_ID_CNS_CTRL,
    NVME_ID_CNS_NS,
    NVME_QUEUE_PHYS_CONTIG,
    NVME_REGISTERS,
    NVME_SC_CQ_INVALID,
    NVME_SC_DATA_XFER_ERROR,
    NVME_SC_INVALID_FIELD,
    NVME_SC_INVALID_NS,
    NVME_SC_INVALID_OPCODE,
    NVME_SC_INVALID_QUEUE_DELETION,
    NVME_SC_LBA_RANGE,
    NVME_SC_PRP_INVALID_OFFSET,
    NVME_SC_QID_INVALID,
    NVME_SC_QUEUE_SIZE,
    NVME_SC_SUCCESS,
    PAGE,
    SQE_SIZE,
    UNKNOWN_CID,
    VS_VALUE,
    Command,
    cq_doorbell,
    nvme_admin_create_cq,
    nvme_admin_create_sq,
    nvme_admin_delete_cq,
    nvme_admin_delete_sq,
    nvme_admin_identify,
    nvme_cmd_flush,
    nvme_cmd_read,
    nvme_cmd_write,
    sq_doorbell,
)

DEFAULT_NS_MIB: Final = 1
MAX_NS_MIB: Final = 1024
VID: Final = 0x1B36
_PRP: Final = struct.Struct("<Q")


class CommandFailed(Exception):
    """A command completes with this status (never leaves the model)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@attrs.define
class SubmissionQueue:
    base: int
    size: int
    cqid: int
    head: int = 0


@attrs.define
class CompletionQueue:
    base: int
    size: int
    vector: int | None
    """The MSI's interrupt-remapping handle (``None``: interrupts disabled)."""
    tail: int = 0
    phase: int = 1
    head: int = 0


class NvmeModel(DeviceModel):
    """QEMU's NVMe controller (``pci1b36,0010``) as luo models it: one namespace."""

    compatible = (COMPATIBLE,)
    registers = NVME_REGISTERS

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        mib = ctx.params.get("ns_mib", DEFAULT_NS_MIB)
        if type(mib) is not int or not 1 <= mib <= MAX_NS_MIB:
            mib = DEFAULT_NS_MIB  # a bad parameter gives the default disk, never a crash
        self.blocks = (mib << 20) >> LBA_SHIFT
        fd, path = tempfile.mkstemp(prefix="luo-nvme-ns1-")
        os.unlink(path)  # the controller's own: no name, gone with the hardware
        os.ftruncate(fd, mib << 20)
        self._disk = fd
        weakref.finalize(self, os.close, fd)
        self.sqs: dict[int, SubmissionQueue] = {}
        self.cqs: dict[int, CompletionQueue] = {}
        self.enabled = False
        self.held = False

    # -- the controller's life --------------------------------------------------------

    def reset(self) -> None:
        """Power-on and function-level reset: queues gone, not ready; the disk keeps."""
        self.sqs.clear()
        self.cqs.clear()
        self.enabled = False
        self.held = False
        regs = self.ctx.regs
        regs["cap"] = CAP_VALUE
        regs["vs"] = VS_VALUE

    def kick(self) -> None:
        regs = self.ctx.regs
        cc = regs["cc"]
        if cc & NVME_CC_ENABLE and not self.enabled:
            self._enable()
        elif not cc & NVME_CC_ENABLE and self.enabled:
            self._disable()
        if cc & NVME_CC_SHN_MASK:
            regs["csts"] = (regs["csts"] & ~0xC) | NVME_CSTS_SHST_CMPLT
        if self.enabled and not self.held:
            self._process()

    def _enable(self) -> None:
        """CC.EN 0 -> 1: take the admin queue from AQA/ASQ/ACQ and report ready."""
        regs = self.ctx.regs
        asqs, acqs = (regs["aqa"] & 0xFFF) + 1, (regs["aqa"] >> 16 & 0xFFF) + 1
        asq, acq = regs["asq"], regs["acq"]
        if asqs < 2 or acqs < 2 or asq % PAGE or acq % PAGE:
            regs["csts"] = NVME_CSTS_CFS  # a controller fatal status, as for a bad AQA
            return
        self.sqs = {0: SubmissionQueue(asq, asqs, 0)}
        self.cqs = {0: CompletionQueue(acq, acqs, None)}
        self.enabled = True
        regs["csts"] = NVME_CSTS_RDY

    def _disable(self) -> None:
        """CC.EN 1 -> 0: a controller reset; every queue is deleted, CSTS.RDY clears."""
        self.sqs.clear()
        self.cqs.clear()
        self.enabled = False
        self.ctx.regs["csts"] = 0

    def control(self, op: str, args: Mapping[str, Any]) -> object:
        if op == "hold":
            on = args.get("on")
            if type(on) is not bool:
                raise ValueError(f"hold takes on=True|False, not {on!r}")
            before = self.ctx.regs["completed"]
            self.held = on
            if not on and self.enabled:
                self._process()
            return {"completed": self.ctx.regs["completed"] - before}
        if op == "counters":
            return self.ctx.regs.values()
        if op == "queues":
            return {
                "sq": {str(q): [s.base, s.size, s.cqid, s.head] for q, s in self.sqs.items()},
                "cq": {str(q): [c.base, c.size, c.tail, c.phase] for q, c in self.cqs.items()},
                "held": self.held,
            }
        if op == "disk":
            return self._disk_control(args)
        return super().control(op, args)

    def _disk_control(self, args: Mapping[str, Any]) -> object:
        """Read blocks of namespace 1 straight from the disk or (``data``) write them, as
        another initiator would: ``{lba, blocks}`` or ``{lba, data}``."""
        lba, blocks, data = args.get("lba"), args.get("blocks"), args.get("data")
        if data is not None:
            if not isinstance(data, bytes) or not data or len(data) % LBA_SIZE:
                raise ValueError("disk data must be whole blocks of bytes")
            blocks = len(data) // LBA_SIZE
        if type(lba) is not int or type(blocks) is not int:
            raise ValueError("disk takes lba= and blocks= (integers) or data=")
        if not (lba >= 0 and 0 < blocks <= 256 and lba + blocks <= self.blocks):
            raise ValueError(f"disk: blocks {lba}+{blocks} are not on the namespace")
        if data is not None:
            os.pwrite(self._disk, data, lba * LBA_SIZE)
            return None
        return os.pread(self._disk, blocks * LBA_SIZE, lba * LBA_SIZE)

    # -- queues -------------------------------------------------------------------------

    def _process(self) -> None:
        """Fetch and run every entry rung, queue by queue, while completion slots last."""
        if not self.ctx.config["command"] & BUS_MASTER:
            return  # no bus mastering: the controller cannot fetch
        regs, dma = self.ctx.regs, self.ctx.dma()
        interrupted: set[int] = set()
        progress = True
        while progress:
            progress = False
            for qid in sorted(self.sqs):
                sq = self.sqs.get(qid)
                if sq is None:
                    continue  # deleted by an admin command of this round
                tail = regs[sq_doorbell(qid)]
                if tail >= sq.size:
                    _add(regs, "db_errors", 1)
                    continue
                if sq.head == tail:
                    continue
                cq = self.cqs[sq.cqid]
                cq_head = regs[cq_doorbell(sq.cqid)]
                if cq_head < cq.size:
                    cq.head = cq_head
                else:
                    _add(regs, "db_errors", 1)
                if (cq.tail + 1) % cq.size == cq.head:
                    continue  # the completion queue is full: wait for its head doorbell
                at = sq.base + sq.head * SQE_SIZE
                sq.head = (sq.head + 1) % sq.size
                try:
                    raw = dma.read(at, SQE_SIZE)
                except IommuFaultError:
                    _add(regs, "dma_errors", 1)
                    self._post(cq, 0, sq.head, qid, UNKNOWN_CID, NVME_SC_DATA_XFER_ERROR)
                else:
                    cmd = Command.decode(raw)
                    try:
                        result = self._admin(cmd) if qid == 0 else self._io(cmd)
                        status = NVME_SC_SUCCESS
                    except CommandFailed as failed:
                        result, status = 0, failed.status
                    self._post(cq, result, sq.head, qid, cmd.command_id, status)
                if cq.vector is not None:
                    interrupted.add(sq.cqid)
                progress = True
        for cqid in sorted(interrupted):
            vector = self.cqs[cqid].vector if cqid in self.cqs else None
            if vector is not None:
                try:
                    self.ctx.msi().raise_(vector)
                    _add(regs, "irq_raised", 1)
                except InterruptRemapFaultError:
                    _add(regs, "irq_faults", 1)

    def _post(
        self, cq: CompletionQueue, result: int, head: int, qid: int, cid: int, sc: int
    ) -> None:
        """Write one completion entry: its body first, then the status word with the phase
        tag, so a driver that sees the new phase sees the whole entry."""
        regs = self.ctx.regs
        entry = CQE.pack(result, head, qid, cid, sc << 1 | cq.phase)
        at = cq.base + cq.tail * CQE.size
        try:
            dma = self.ctx.dma()
            dma.write(at, entry[:14])
            dma.write(at + 14, entry[14:])
        except IommuFaultError:
            _add(regs, "dma_errors", 1)  # the completion is lost, as on hardware
        cq.tail += 1
        if cq.tail == cq.size:
            cq.tail, cq.phase = 0, cq.phase ^ 1
        _add(regs, "completed", 1)

    # -- admin commands -----------------------------------------------------------------

    def _admin(self, cmd: Command) -> int:
        if cmd.opcode == nvme_admin_identify:
            self._identify(cmd)
        elif cmd.opcode == nvme_admin_create_cq:
            self._create_cq(cmd)
        elif cmd.opcode == nvme_admin_create_sq:
            self._create_sq(cmd)
        elif cmd.opcode == nvme_admin_delete_sq:
            if cmd.cdw10 & 0xFFFF != IO_QID or IO_QID not in self.sqs:
                raise CommandFailed(NVME_SC_QID_INVALID)
            del self.sqs[IO_QID]
        elif cmd.opcode == nvme_admin_delete_cq:
            qid = cmd.cdw10 & 0xFFFF
            if qid != IO_QID or qid not in self.cqs:
                raise CommandFailed(NVME_SC_QID_INVALID)
            if any(sq.cqid == qid for sq in self.sqs.values()):
                raise CommandFailed(NVME_SC_INVALID_QUEUE_DELETION)
            del self.cqs[qid]
        else:
            raise CommandFailed(NVME_SC_INVALID_OPCODE)
        return 0

    def _identify(self, cmd: Command) -> None:
        cns = cmd.cdw10 & 0xFF
        page = bytearray(PAGE)
        if cns == NVME_ID_CNS_CTRL:
            struct.pack_into("<HH", page, ID_CTRL_VID, VID, VID)
            page[ID_CTRL_SN : ID_CTRL_SN + 20] = self.ctx.name.encode()[:20].ljust(20)
            page[ID_CTRL_MN : ID_CTRL_MN + 40] = b"luo NVMe Ctrl".ljust(40)
            page[ID_CTRL_MDTS] = MDTS
            page[ID_CTRL_SQES], page[ID_CTRL_CQES] = 0x66, 0x44
            struct.pack_into("<I", page, ID_CTRL_NN, 1)
        elif cns == NVME_ID_CNS_NS:
            if cmd.nsid != NSID:
                raise CommandFailed(NVME_SC_INVALID_NS)
            struct.pack_into("<QQQ", page, ID_NS_NSZE, self.blocks, self.blocks, self.blocks)
            assert ID_NS_NCAP == ID_NS_NSZE + 8
            page[ID_NS_NLBAF], page[ID_NS_FLBAS] = 0, 0
            struct.pack_into("<HBB", page, ID_NS_LBAF, 0, LBA_SHIFT, 0)
        else:
            raise CommandFailed(NVME_SC_INVALID_FIELD)
        self._to_host(cmd, bytes(page))

    def _queue_args(self, cmd: Command, kind: dict[int, Any]) -> tuple[int, int, int]:
        qid, size, flags = cmd.cdw10 & 0xFFFF, (cmd.cdw10 >> 16) + 1, cmd.cdw11 & 0xFFFF
        if qid != IO_QID or qid in kind:
            raise CommandFailed(NVME_SC_QID_INVALID)
        if not 2 <= size <= MQES + 1:
            raise CommandFailed(NVME_SC_QUEUE_SIZE)
        if not flags & NVME_QUEUE_PHYS_CONTIG or cmd.prp1 % PAGE:
            raise CommandFailed(NVME_SC_INVALID_FIELD)  # CAP.CQR: contiguous queues only
        return qid, size, flags

    def _create_cq(self, cmd: Command) -> None:
        qid, size, flags = self._queue_args(cmd, self.cqs)
        vector = cmd.cdw11 >> 16 if flags & NVME_CQ_IRQ_ENABLED else None
        self.cqs[qid] = CompletionQueue(cmd.prp1, size, vector)

    def _create_sq(self, cmd: Command) -> None:
        qid, size, _ = self._queue_args(cmd, self.sqs)
        cqid = cmd.cdw11 >> 16
        if cqid == 0 or cqid not in self.cqs:
            raise CommandFailed(NVME_SC_CQ_INVALID)
        self.sqs[qid] = SubmissionQueue(cmd.prp1, size, cqid)

    # -- I/O commands ---------------------------------------------------------------------

    def _io(self, cmd: Command) -> int:
        if cmd.opcode not in (nvme_cmd_flush, nvme_cmd_write, nvme_cmd_read):
            raise CommandFailed(NVME_SC_INVALID_OPCODE)
        if cmd.nsid != NSID:
            raise CommandFailed(NVME_SC_INVALID_NS)
        fd = self._disk
        if cmd.opcode == nvme_cmd_flush:
            os.fsync(fd)
            return 0
        length = cmd.nlb * LBA_SIZE
        if cmd.slba + cmd.nlb > self.blocks:
            raise CommandFailed(NVME_SC_LBA_RANGE)
        if length > MAX_TRANSFER:
            raise CommandFailed(NVME_SC_INVALID_FIELD)
        at = cmd.slba * LBA_SIZE
        if cmd.opcode == nvme_cmd_write:
            os.pwrite(fd, self._from_host(cmd, length), at)
        else:
            self._to_host(cmd, os.pread(fd, length, at))
        return 0

    # -- data transfer (PRPs) -------------------------------------------------------------

    def _prps(self, cmd: Command, length: int) -> list[tuple[int, int]]:
        """The pieces of host memory ``cmd``'s PRP1/PRP2 describe for ``length`` bytes: PRP1
        may start anywhere (dword aligned), PRP2 is the second page or, past two pages, a
        PRP list (whose last entry chains to the next list page when one is full)."""
        prp1, prp2 = cmd.prp1, cmd.prp2
        if prp1 % 4:
            raise CommandFailed(NVME_SC_PRP_INVALID_OFFSET)
        first = min(length, PAGE - prp1 % PAGE)
        pieces = [(prp1, first)]
        rest = length - first
        if rest == 0:
            return pieces
        if rest <= PAGE:
            if prp2 % PAGE:
                raise CommandFailed(NVME_SC_PRP_INVALID_OFFSET)
            return [*pieces, (prp2, rest)]
        if prp2 % 8:
            raise CommandFailed(NVME_SC_PRP_INVALID_OFFSET)
        needed, at = (rest + PAGE - 1) // PAGE, prp2
        pages: list[int] = []
        dma = self.ctx.dma()
        while len(pages) < needed:
            slots = (PAGE - at % PAGE) // 8
            left = needed - len(pages)
            take = left if left <= slots else slots
            try:
                raw = dma.read(at, take * 8)
            except IommuFaultError:
                _add(self.ctx.regs, "dma_errors", 1)
                raise CommandFailed(NVME_SC_DATA_XFER_ERROR) from None
            entries = [e for (e,) in _PRP.iter_unpack(raw)]
            if left > slots:  # the last slot of a full list page points at the next list
                pages += entries[:-1]
                at = entries[-1]
                if at % 8:
                    raise CommandFailed(NVME_SC_PRP_INVALID_OFFSET)
            else:
                pages += entries
        if any(p % PAGE for p in pages):
            raise CommandFailed(NVME_SC_PRP_INVALID_OFFSET)
        for i, page in enumerate(pages):
            pieces.append((page, min(PAGE, rest - i * PAGE)))
        return pieces

    def _to_host(self, cmd: Command, data: bytes) -> None:
        dma, done = self.ctx.dma(), 0
        try:
            for iova, length in self._prps(cmd, len(data)):
                dma.write(iova, data[done : done + length])
                done += length
        except IommuFaultError:
            _add(self.ctx.regs, "dma_errors", 1)
            raise CommandFailed(NVME_SC_DATA_XFER_ERROR) from None

    def _from_host(self, cmd: Command, length: int) -> bytes:
        dma = self.ctx.dma()
        try:
            return b"".join(dma.read(iova, n) for iova, n in self._prps(cmd, length))
        except IommuFaultError:
            _add(self.ctx.regs, "dma_errors", 1)
            raise CommandFailed(NVME_SC_DATA_XFER_ERROR) from None


def _add(regs: Any, name: str, n: int) -> None:
    regs[name] = (regs[name] + n) % (1 << 64)
