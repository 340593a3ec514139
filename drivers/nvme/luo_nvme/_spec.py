"""The NVMe controller's datasheet: registers, queue entries, opcodes and status codes.

Everything here follows the NVMe base specification as Linux spells it in
include/linux/nvme.h: the controller registers (``enum { NVME_REG_CAP ...
NVME_REG_ACQ }``) at their offsets, ``struct nvme_command`` (64 bytes) and
``struct nvme_completion`` (16 bytes), the admin and I/O opcodes, and the
status codes a completion carries (``status >> 1``; bit 0 is the phase tag).

Two departures, both forced by luo's register window of 3840 bytes:

* the doorbells cannot sit at ``NVME_REG_DBS`` (0x1000): luo places them at
  :data:`DB_BASE` (0x800), with the stride CAP.DSTRD = 0 gives (4 bytes),
  so queue ``y``'s SQyTDBL is at ``0x800 + 8y`` and its CQyHDBL at
  ``0x800 + 8y + 4`` (``NVME_REG_DBS + (2y + 1) * (4 << DSTRD)`` with the
  base moved);
* luo keeps a few device-owned counters of its own at 0xE00 (commands
  completed, DMAs refused, MSIs raised and refused, bad doorbell writes),
  which no NVMe controller has.
"""

from __future__ import annotations

import struct
from typing import Final

import attrs

from luo_core.platform import Register, RegisterMap

COMPATIBLE: Final = "pci1b36,0010"
"""QEMU's NVMe controller (vendor 0x1b36 Red Hat, device 0x0010)."""
PAGE: Final = 4096
"""The memory page size the controller runs at (CC.MPS = 0: 4 KiB, both drivers)."""
LBA_SHIFT: Final = 9
"""Namespace 1's logical blocks are 512 bytes (its LBA format 0: ``ds`` = 9)."""
LBA_SIZE: Final = 1 << LBA_SHIFT
MDTS: Final = 5
"""Maximum data transfer size, as a power of two of the minimum page: 32 pages (128 KiB)."""
MAX_TRANSFER: Final = PAGE << MDTS
MQES: Final = 255
"""CAP.MQES: at most 256 entries per queue (0's based)."""
IO_QID: Final = 1
"""The one I/O queue pair luo's controller offers (SQ 1 completing on CQ 1)."""
NSID: Final = 1

# -- controller registers (include/linux/nvme.h: enum NVME_REG_*) -------------------
NVME_REG_CAP: Final = 0x0000
NVME_REG_VS: Final = 0x0008
NVME_REG_INTMS: Final = 0x000C
NVME_REG_INTMC: Final = 0x0010
NVME_REG_CC: Final = 0x0014
NVME_REG_CSTS: Final = 0x001C
NVME_REG_AQA: Final = 0x0024
NVME_REG_ASQ: Final = 0x0028
NVME_REG_ACQ: Final = 0x0030
DB_BASE: Final = 0x800
"""luo's doorbells (NVME_REG_DBS is 0x1000, past luo's 3840-byte window)."""
DB_STRIDE: Final = 4
"""``4 << CAP.DSTRD`` with DSTRD = 0."""


def sq_doorbell(qid: int) -> str:
    return f"sq{qid}tdbl"


def cq_doorbell(qid: int) -> str:
    return f"cq{qid}hdbl"


NVME_REGISTERS: Final = RegisterMap(
    [
        Register("cap", NVME_REG_CAP, 64, owner="device"),
        Register("vs", NVME_REG_VS, 32, owner="device"),
        Register("intms", NVME_REG_INTMS, 32),
        Register("intmc", NVME_REG_INTMC, 32),
        Register("cc", NVME_REG_CC, 32, doorbell=True),
        Register("csts", NVME_REG_CSTS, 32, owner="device"),
        Register("aqa", NVME_REG_AQA, 32),
        Register("asq", NVME_REG_ASQ, 64),
        Register("acq", NVME_REG_ACQ, 64),
        *(
            Register(name(qid), DB_BASE + (2 * qid + which) * DB_STRIDE, 32, doorbell=True)
            for qid in (0, IO_QID)
            for which, name in ((0, sq_doorbell), (1, cq_doorbell))
        ),
        Register("completed", 0xE00, 64, owner="device"),
        Register("dma_errors", 0xE08, 64, owner="device"),
        Register("irq_raised", 0xE10, 64, owner="device"),
        Register("irq_faults", 0xE18, 64, owner="device"),
        Register("db_errors", 0xE20, 64, owner="device"),
    ]
)

# -- register fields ---------------------------------------------------------------
CAP_MQES_MASK: Final = 0xFFFF
CAP_CQR: Final = 1 << 16
CAP_TO_SHIFT: Final = 24
CAP_DSTRD_SHIFT: Final = 32
CAP_CSS_NVM: Final = 1 << 37
CAP_MPSMIN_SHIFT: Final = 48
CAP_MPSMAX_SHIFT: Final = 52
CAP_VALUE: Final = MQES | CAP_CQR | 1 << CAP_TO_SHIFT | CAP_CSS_NVM
"""MQES 255, contiguous queues required, TO 500 ms, DSTRD 0, NVM command set, MPS 4 KiB."""
VS_VALUE: Final = 0x0001_0400
"""NVMe 1.4 (``NVME_VS(1, 4, 0)``)."""

NVME_CC_ENABLE: Final = 1 << 0
NVME_CC_CSS_NVM: Final = 0 << 4
NVME_CC_MPS_SHIFT: Final = 7
NVME_CC_SHN_SHIFT: Final = 14
NVME_CC_SHN_MASK: Final = 3 << NVME_CC_SHN_SHIFT
NVME_CC_SHN_NORMAL: Final = 1 << NVME_CC_SHN_SHIFT
NVME_CC_IOSQES: Final = 6 << 16
NVME_CC_IOCQES: Final = 4 << 20
CC_VALUE: Final = NVME_CC_CSS_NVM | NVME_CC_IOSQES | NVME_CC_IOCQES | NVME_CC_ENABLE
"""What both drivers write to enable the controller (nvme_enable_ctrl in
drivers/nvme/host/core.c, with 4 KiB pages)."""

NVME_CSTS_RDY: Final = 1 << 0
NVME_CSTS_CFS: Final = 1 << 1
NVME_CSTS_SHST_CMPLT: Final = 2 << 2
NVME_CSTS_SHST_MASK: Final = 3 << 2


def aqa(sq_entries: int, cq_entries: int) -> int:
    """AQA: ASQS in bits 11:0 and ACQS in bits 27:16, both 0's based."""
    return (sq_entries - 1) | (cq_entries - 1) << 16


# -- queue entries -----------------------------------------------------------------
SQE: Final = struct.Struct("<BBHIIIQQQ6I")
"""``struct nvme_command`` as ``struct nvme_common_command`` lays it out: opcode, flags,
command_id, nsid, cdw2, cdw3, metadata, prp1, prp2, cdw10..cdw15 (64 bytes)."""
CQE: Final = struct.Struct("<QHHHH")
"""``struct nvme_completion``: result (u64), sq_head, sq_id, command_id, status (16 bytes);
bit 0 of status is the phase tag, bits 15:1 the status field."""
SQE_SIZE: Final = SQE.size
CQE_SIZE: Final = CQE.size

# admin opcodes (enum nvme_admin_opcode)
nvme_admin_delete_sq: Final = 0x00
nvme_admin_create_sq: Final = 0x01
nvme_admin_delete_cq: Final = 0x04
nvme_admin_create_cq: Final = 0x05
nvme_admin_identify: Final = 0x06
# I/O opcodes (enum nvme_opcode)
nvme_cmd_flush: Final = 0x00
nvme_cmd_write: Final = 0x01
nvme_cmd_read: Final = 0x02

NVME_ID_CNS_NS: Final = 0x00
NVME_ID_CNS_CTRL: Final = 0x01
NVME_QUEUE_PHYS_CONTIG: Final = 1 << 0
NVME_CQ_IRQ_ENABLED: Final = 1 << 1

# status codes (the status field, ``status >> 1``)
NVME_SC_SUCCESS: Final = 0x0
NVME_SC_INVALID_OPCODE: Final = 0x1
NVME_SC_INVALID_FIELD: Final = 0x2
NVME_SC_DATA_XFER_ERROR: Final = 0x4
NVME_SC_INVALID_NS: Final = 0xB
NVME_SC_PRP_INVALID_OFFSET: Final = 0x13
NVME_SC_LBA_RANGE: Final = 0x80
NVME_SC_CQ_INVALID: Final = 0x100
NVME_SC_QID_INVALID: Final = 0x101
NVME_SC_QUEUE_SIZE: Final = 0x102
NVME_SC_INVALID_QUEUE_DELETION: Final = 0x10C
UNKNOWN_CID: Final = 0xFFFF
"""The command id of a completion for an entry the controller could not fetch."""


@attrs.frozen
class Command:
    """One submission queue entry, field by field (``struct nvme_command``)."""

    opcode: int
    command_id: int
    nsid: int = 0
    prp1: int = 0
    prp2: int = 0
    cdw10: int = 0
    cdw11: int = 0
    cdw12: int = 0
    cdw13: int = 0
    cdw14: int = 0
    cdw15: int = 0
    flags: int = 0
    metadata: int = 0

    def encode(self) -> bytes:
        return SQE.pack(
            self.opcode, self.flags, self.command_id, self.nsid, 0, 0, self.metadata,
            self.prp1, self.prp2, self.cdw10, self.cdw11, self.cdw12, self.cdw13,
            self.cdw14, self.cdw15,
        )  # fmt: skip

    @classmethod
    def decode(cls, raw: bytes) -> Command:
        op, flags, cid, nsid, _c2, _c3, meta, prp1, prp2, c10, c11, c12, c13, c14, c15 = (
            SQE.unpack(raw)
        )
        return cls(op, cid, nsid, prp1, prp2, c10, c11, c12, c13, c14, c15, flags, meta)

    @property
    def slba(self) -> int:
        """``struct nvme_rw_command``: slba (cdw10-11)."""
        return self.cdw10 | self.cdw11 << 32

    @property
    def nlb(self) -> int:
        """Blocks to transfer (``length`` in cdw12 is 0's based)."""
        return (self.cdw12 & 0xFFFF) + 1


def rw(opcode: int, cid: int, slba: int, blocks: int, prp1: int, prp2: int = 0) -> Command:
    """A Read or Write of ``blocks`` logical blocks at ``slba`` (nvme_setup_rw)."""
    return Command(
        opcode, cid, NSID, prp1, prp2, slba & 0xFFFF_FFFF, slba >> 32, (blocks - 1) & 0xFFFF
    )


def identify(cid: int, cns: int, prp1: int, nsid: int = 0) -> Command:
    return Command(nvme_admin_identify, cid, nsid, prp1, cdw10=cns)


def create_cq(cid: int, qid: int, prp1: int, entries: int, vector: int | None) -> Command:
    """``struct nvme_create_cq``: cqid and qsize in cdw10, flags and irq_vector in cdw11
    (luo: the vector is the interrupt-remapping handle of the queue's MSI)."""
    flags = NVME_QUEUE_PHYS_CONTIG | (NVME_CQ_IRQ_ENABLED if vector is not None else 0)
    return Command(
        nvme_admin_create_cq, cid, 0, prp1,
        cdw10=qid | (entries - 1) << 16, cdw11=flags | (vector or 0) << 16,
    )  # fmt: skip


def create_sq(cid: int, qid: int, prp1: int, entries: int, cqid: int) -> Command:
    """``struct nvme_create_sq``: sqid and qsize in cdw10, flags and cqid in cdw11."""
    return Command(
        nvme_admin_create_sq, cid, 0, prp1,
        cdw10=qid | (entries - 1) << 16, cdw11=NVME_QUEUE_PHYS_CONTIG | cqid << 16,
    )  # fmt: skip


@attrs.frozen
class Completion:
    """One completion queue entry (``struct nvme_completion``)."""

    result: int
    sq_head: int
    sq_id: int
    command_id: int
    status: int
    """The status field (``status >> 1``): 0 is success."""
    phase: int

    def encode(self) -> bytes:
        return CQE.pack(
            self.result, self.sq_head, self.sq_id, self.command_id, self.status << 1 | self.phase
        )

    @classmethod
    def decode(cls, raw: bytes) -> Completion:
        result, head, sqid, cid, status = CQE.unpack(raw)
        return cls(result, head, sqid, cid, status >> 1, status & 1)


# -- identify data (struct nvme_id_ctrl, struct nvme_id_ns) -------------------------
ID_CTRL_VID: Final = 0
ID_CTRL_SN: Final = 4
ID_CTRL_MN: Final = 24
ID_CTRL_MDTS: Final = 77
ID_CTRL_SQES: Final = 512
ID_CTRL_CQES: Final = 513
ID_CTRL_NN: Final = 516
ID_NS_NSZE: Final = 0
ID_NS_NCAP: Final = 8
ID_NS_NLBAF: Final = 25
ID_NS_FLBAS: Final = 26
ID_NS_LBAF: Final = 128
"""``struct nvme_lbaf lbaf[]``: ms (u16), ds (u8: log2 of the block size), rp (u8)."""


def nsze_of(id_ns: bytes) -> int:
    """Namespace size in blocks, from an Identify Namespace page."""
    value: int = struct.unpack_from("<Q", id_ns, ID_NS_NSZE)[0]
    return value


def lba_shift_of(id_ns: bytes) -> int:
    """log2 of the block size of the namespace's current format (flbas)."""
    fmt = id_ns[ID_NS_FLBAS] & 0xF
    return id_ns[ID_NS_LBAF + 4 * fmt + 2]
