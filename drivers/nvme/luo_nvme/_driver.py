"""The host's NVMe driver: queues and buffers in kernel memory, DMA through luo-iommu.

``probe`` is nvme_reset_work in miniature: it allocates one region of
kernel memory for the admin queue pair, the I/O queue pair, an Identify page
and a data buffer per command id, maps it 1:1 (IOVA = physical address) into
an IOMMU domain of its own from luo-iommu, attaches the controller to it,
turns bus mastering on, disables the controller, programs AQA/ASQ/ACQ,
enables it (CC.EN / CSTS.RDY), identifies namespace 1 and creates the I/O
queue pair.  luo models no interrupt CPU, so the I/O completion queue is
created without an interrupt and the driver reaps it when asked
(:func:`reap`), as ``nvme_poll`` does for a polled queue.

For a live update the controller keeps running: ``prepare`` preserves the
region in place (``kho.preserve``) and hands over an :class:`NvmeRecord`
(queue addresses, SQ tail, CQ head and phase, the commands in flight, a
checksum of every block written); ``freeze`` stops submission and reaping;
``restore`` checks the controller was not reset behind the kernel's back
(CSTS.RDY, the same ASQ/ACQ, the doorbells where the record left them) and
that the domain still maps the region, then adopts the region and reaps
what completed during the blackout.
"""

from __future__ import annotations

import os
import time
import zlib
from typing import TYPE_CHECKING, Any, Final

import attrs

from luo_core import Device, DeviceDriverOps, PhysAddr, schema_of, state, u8, u16, u32, u64
from luo_core.abi import MemRange
from luo_core.abi._kho import find_containing
from luo_core.errors import BusyError, DeviceError, HandoffError, InvalidArgumentError
from luo_nvme._spec import (
    CC_VALUE,
    CQE,
    IO_QID,
    LBA_SHIFT,
    LBA_SIZE,
    NSID,
    NVME_CC_ENABLE,
    NVME_CC_SHN_NORMAL,
    NVME_CSTS_CFS,
    NVME_CSTS_RDY,
    NVME_CSTS_SHST_CMPLT,
    NVME_CSTS_SHST_MASK,
    NVME_ID_CNS_CTRL,
    NVME_ID_CNS_NS,
    NVME_SC_SUCCESS,
    PAGE,
    SQE_SIZE,
    Command,
    Completion,
    aqa,
    cq_doorbell,
    create_cq,
    create_sq,
    identify,
    lba_shift_of,
    nsze_of,
    nvme_cmd_read,
    nvme_cmd_write,
    rw,
    sq_doorbell,
)

if TYPE_CHECKING:
    from luo_core import Kernel

DRIVER: Final = "nvme"
ADMIN_DEPTH: Final = 8
IO_DEPTH: Final = 64
QDEPTH: Final = 16
"""Commands in flight at most: command ids 0..15, each with its own data buffer."""
BUF_PAGES: Final = 2
MAX_BLOCKS: Final = BUF_PAGES * PAGE // LBA_SIZE
"""A command moves at most 8 KiB (PRP1 and PRP2)."""
REGION_PAGES: Final = 64
REGION_SIZE: Final = REGION_PAGES * PAGE
ASQ_PAGE, ACQ_PAGE, SQ_PAGE, CQ_PAGE, ID_PAGE, DATA_PAGE = 0, 1, 2, 3, 4, 8
TIMEOUT_S: Final = 5.0
"""CAP.TO is 500 ms; a loaded machine gets ten times that."""


@attrs.frozen
class InflightRecord:
    """A command submitted and not yet reaped: its id, opcode and blocks."""

    cid: u16
    opcode: u8
    slba: u64
    blocks: u16


@attrs.frozen
class WrittenRecord:
    """Blocks a completed write put on the disk, and the CRC-32 of what it wrote."""

    slba: u64
    blocks: u16
    crc: u32


@state(compatible="luo,nvme-state", version=2, min_version=1)
class NvmeRecord:
    """What the nvme driver hands to the next kernel for one controller.

    The queues stay where they are: ``region`` (``region_size`` bytes,
    preserved in place) holds them and the data buffers, mapped 1:1 in
    IOMMU domain ``domain``.  v2 added ``written``: the blocks completed
    writes put on the disk, with a checksum of each.
    """

    region: PhysAddr
    region_size: u32
    domain: u16
    asq: PhysAddr
    acq: PhysAddr
    admin_sq_tail: u16
    admin_cq_head: u16
    admin_phase: u8
    sq: PhysAddr
    cq: PhysAddr
    sq_tail: u16
    cq_head: u16
    phase: u8
    nsze: u64
    inflight: list[InflightRecord]
    written: list[WrittenRecord]


@schema_of(NvmeRecord).migration(from_version=1)
def _v1_to_v2(fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, "written": []}  # a v1 driver kept no checksums


@schema_of(NvmeRecord).writes(version=1)
def _v2_as_v1(record: NvmeRecord) -> dict[str, Any]:
    return {
        name: getattr(record, name)
        for name in (
            "region", "region_size", "domain", "asq", "acq", "admin_sq_tail",
            "admin_cq_head", "admin_phase", "sq", "cq", "sq_tail", "cq_head", "phase",
            "nsze", "inflight",
        )
    }  # fmt: skip


@attrs.frozen
class Completed:
    """A command the driver reaped: its status and, for a read, the data it read."""

    cid: int
    opcode: int
    slba: int
    blocks: int
    status: int
    data: bytes = b""


@attrs.define
class NvmeState:
    """The driver's live state for one controller (``dev.driver_data``)."""

    memory: Any = attrs.field(repr=False, eq=False)
    """This kernel's physical memory (``kernel.memory``)."""
    region: int
    domain: int
    nsze: int
    adopted: bool = False
    """The region came from the previous kernel (released, not freed, when done)."""
    admin_sq_tail: int = 0
    admin_cq_head: int = 0
    admin_phase: int = 1
    admin_cid: int = 0
    sq_tail: int = 0
    cq_head: int = 0
    phase: int = 1
    inflight: dict[int, InflightRecord] = attrs.field(factory=dict)
    written: dict[int, WrittenRecord] = attrs.field(factory=dict)
    done: list[Completed] = attrs.field(factory=list)
    frozen: bool = False
    preserved: bool = False
    reaped_in_restore: int | None = None
    """Completions restore found, posted while no kernel ran (after a live update)."""

    def page(self, n: int) -> int:
        return self.region + n * PAGE

    def buffer(self, cid: int) -> int:
        return self.page(DATA_PAGE + BUF_PAGES * cid)

    def record(self) -> NvmeRecord:
        return NvmeRecord(
            region=self.region,
            region_size=REGION_SIZE,
            domain=self.domain,
            asq=self.page(ASQ_PAGE),
            acq=self.page(ACQ_PAGE),
            admin_sq_tail=self.admin_sq_tail,
            admin_cq_head=self.admin_cq_head,
            admin_phase=self.admin_phase,
            sq=self.page(SQ_PAGE),
            cq=self.page(CQ_PAGE),
            sq_tail=self.sq_tail,
            cq_head=self.cq_head,
            phase=self.phase,
            nsze=self.nsze,
            inflight=[self.inflight[c] for c in sorted(self.inflight)],
            written=[self.written[b] for b in sorted(self.written)],
        )


class NvmeOps(DeviceDriverOps):
    """The ``nvme`` driver of one kernel."""

    def __init__(self, kernel: Kernel | None) -> None:
        self._kernel = kernel

    @property
    def kernel(self) -> Kernel:
        if self._kernel is None:
            raise DeviceError(f"{DRIVER}: registered without a kernel")
        return self._kernel

    # -- probe ------------------------------------------------------------------------

    def probe(self, dev: Device) -> None:
        from luo_iommu import iommu_of

        kernel = self.kernel
        iommu = iommu_of(kernel)
        region = kernel.mm.alloc(REGION_SIZE)
        domain = None
        try:
            kernel.memory.write(region, bytes(REGION_SIZE))
            domain = iommu.domain_alloc()
            domain.map(region, region, REGION_SIZE)
            iommu.attach(dev.name, domain)
            dev.set_bus_master(True)
            if iommu.dev is not None and iommu.dev not in dev.suppliers:
                kernel.devices.link(iommu.dev.name, dev.name)  # DMA needs the IOMMU
            st = NvmeState(kernel.memory, region=region, domain=domain.id, nsze=0)
            _reset_controller(dev, st)
        except BaseException:
            if domain is not None:
                if dev.name in iommu.attachments():
                    iommu.detach(dev.name)
                iommu.domain_free(domain)
            kernel.mm.free(region)
            raise
        dev.driver_data = st

    def shutdown(self, dev: Device) -> None:
        """nvme_shutdown_ctrl: a normal shutdown notification, then disable."""
        regs = dev.regs
        regs["cc"] = (regs["cc"] & ~NVME_CC_ENABLE) | NVME_CC_SHN_NORMAL
        _wait(dev, lambda: regs["csts"] & NVME_CSTS_SHST_MASK == NVME_CSTS_SHST_CMPLT, "shutdown")
        regs["cc"] = 0

    # -- dev_liveupdate ---------------------------------------------------------------

    def prepare(self, dev: Device) -> NvmeRecord:
        """Preserve the region in place (queues, buffers) and hand the queues over."""
        st = _state(dev)
        if not st.preserved:
            self.kernel.kho.preserve(st.region, REGION_SIZE)
            st.preserved = True
        return st.record()

    def freeze(self, dev: Device, data: NvmeRecord) -> NvmeRecord:
        st = _state(dev)
        st.frozen = True
        return st.record()

    def cancel(self, dev: Device, data: NvmeRecord) -> None:
        st = _state(dev)
        st.frozen = False
        if st.preserved:
            self.kernel.kho.unpreserve(st.region, REGION_SIZE)
            st.preserved = False

    def restore(self, dev: Device, data: NvmeRecord) -> None:
        """Check everything against the record, the hardware and the IOMMU, then adopt."""
        st = self._checked(dev, data)
        st.reaped_in_restore = _collect(dev, st)
        dev.driver_data = st

    def _checked(self, dev: Device, data: NvmeRecord) -> NvmeState:
        from luo_iommu import iommu_of

        kernel = self.kernel
        handed = kernel.kho_in
        preserved = handed.preserved if handed is not None else []
        region = data.region
        if data.region_size != REGION_SIZE or region % PAGE:
            raise HandoffError(f"{dev.name}: region {region:#x}+{data.region_size:#x} is not ours")
        if region + REGION_SIZE > kernel.memory.size or region < 0:
            raise HandoffError(f"{dev.name}: region {region:#x} is outside physical memory")
        if find_containing(preserved, MemRange(region, REGION_SIZE)) is None:
            raise HandoffError(f"{dev.name}: region {region:#x} was not preserved")
        layout = {
            "asq": (data.asq, ASQ_PAGE),
            "acq": (data.acq, ACQ_PAGE),
            "sq": (data.sq, SQ_PAGE),
            "cq": (data.cq, CQ_PAGE),
        }
        for name, (phys, page) in layout.items():
            if phys != region + page * PAGE:
                raise HandoffError(f"{dev.name}: {name} {phys:#x} is not where the driver puts it")
        for name, value, depth in (
            ("admin SQ tail", data.admin_sq_tail, ADMIN_DEPTH),
            ("admin CQ head", data.admin_cq_head, ADMIN_DEPTH),
            ("SQ tail", data.sq_tail, IO_DEPTH),
            ("CQ head", data.cq_head, IO_DEPTH),
        ):
            if value >= depth:
                raise HandoffError(f"{dev.name}: {name} {value} is past a queue of {depth}")
        if data.phase not in (0, 1) or data.admin_phase not in (0, 1):
            raise HandoffError(f"{dev.name}: a phase tag is 0 or 1")
        if not 0 < data.nsze < 1 << 48:
            raise HandoffError(f"{dev.name}: namespace size {data.nsze} is not a disk's")
        inflight: dict[int, InflightRecord] = {}
        for cmd in data.inflight:
            _check_blocks(dev, cmd.slba, cmd.blocks, data.nsze)
            if cmd.cid >= QDEPTH or cmd.cid in inflight:
                raise HandoffError(f"{dev.name}: command id {cmd.cid} is not a free slot")
            if cmd.opcode not in (nvme_cmd_read, nvme_cmd_write):
                raise HandoffError(f"{dev.name}: opcode {cmd.opcode:#x} is not one it submits")
            inflight[cmd.cid] = cmd
        if len(inflight) >= IO_DEPTH:
            raise HandoffError(f"{dev.name}: more commands in flight than the queue holds")
        written: dict[int, WrittenRecord] = {}
        for block in data.written:
            _check_blocks(dev, block.slba, block.blocks, data.nsze)
            if block.slba in written:
                raise HandoffError(f"{dev.name}: block {block.slba} is listed twice")
            written[block.slba] = block
        iommu = iommu_of(kernel)
        domain = iommu.domain(data.domain)
        if iommu.attachments().get(dev.name) != domain.id:
            raise HandoffError(f"{dev.name}: not attached to IOMMU domain {domain.id}")
        if not any(
            m.iova <= region and region + REGION_SIZE <= m.iova + m.length
            and m.phys - m.iova == 0 and m.write
            for m in domain.mappings()
        ):  # fmt: skip
            raise HandoffError(f"{dev.name}: domain {domain.id} does not map the region 1:1")
        regs = dev.regs
        csts = regs["csts"]
        if not regs["cc"] & NVME_CC_ENABLE or not csts & NVME_CSTS_RDY or csts & NVME_CSTS_CFS:
            raise DeviceError(f"{dev.name}: controller was reset across kexec (CSTS {csts:#x})")
        if (regs["asq"], regs["acq"]) != (data.asq, data.acq):
            raise DeviceError(
                f"{dev.name}: admin queue at {regs['asq']:#x}/{regs['acq']:#x}, "
                f"{data.asq:#x}/{data.acq:#x} handed over"
            )
        if regs[sq_doorbell(IO_QID)] != data.sq_tail or regs[cq_doorbell(IO_QID)] != data.cq_head:
            raise DeviceError(f"{dev.name}: I/O doorbells are not where the record left them")
        return NvmeState(
            kernel.memory,
            region=region,
            domain=domain.id,
            nsze=data.nsze,
            adopted=True,
            admin_sq_tail=data.admin_sq_tail,
            admin_cq_head=data.admin_cq_head,
            admin_phase=data.admin_phase,
            sq_tail=data.sq_tail,
            cq_head=data.cq_head,
            phase=data.phase,
            inflight=inflight,
            written=written,
        )

    def finish(self, dev: Device, data: Any | None) -> None:
        st = dev.driver_data
        if isinstance(st, NvmeState):
            st.preserved = False  # the handoff is over: the next update preserves again


def _state(dev: Device) -> NvmeState:
    st = dev.driver_data
    if not isinstance(st, NvmeState):
        raise DeviceError(f"{dev.name}: not bound to {DRIVER}")
    return st


def _check_blocks(dev: Device, slba: int, blocks: int, nsze: int) -> None:
    if not 0 < blocks <= MAX_BLOCKS or slba + blocks > nsze:
        raise HandoffError(f"{dev.name}: blocks {slba}+{blocks} are not on the namespace")


def _wait(dev: Device, done: Any, what: str) -> None:
    """A driver's bounded wait on its controller (nvme_wait_ready)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            raise DeviceError(f"{dev.name}: {what} timed out (CSTS {dev.regs['csts']:#x})")
        os.sched_yield()


def _reset_controller(dev: Device, st: NvmeState) -> None:
    """nvme_pci_configure_admin_queue + nvme_enable_ctrl + Identify + the I/O queue pair."""
    regs = dev.regs
    regs["cc"] = 0
    _wait(dev, lambda: not regs["csts"] & NVME_CSTS_RDY, "disable")
    regs["aqa"] = aqa(ADMIN_DEPTH, ADMIN_DEPTH)
    regs["asq"] = st.page(ASQ_PAGE)
    regs["acq"] = st.page(ACQ_PAGE)
    regs["cc"] = CC_VALUE
    _wait(dev, lambda: regs["csts"] & (NVME_CSTS_RDY | NVME_CSTS_CFS), "enable")
    if regs["csts"] & NVME_CSTS_CFS:
        raise DeviceError(f"{dev.name}: controller fatal status at enable")
    _admin(dev, st, lambda cid: identify(cid, NVME_ID_CNS_CTRL, st.page(ID_PAGE)))
    _admin(dev, st, lambda cid: identify(cid, NVME_ID_CNS_NS, st.page(ID_PAGE), NSID))
    id_ns = st.memory.read(st.page(ID_PAGE), PAGE)
    if lba_shift_of(id_ns) != LBA_SHIFT:
        raise DeviceError(f"{dev.name}: namespace 1 does not use 512-byte blocks")
    st.nsze = nsze_of(id_ns)
    _admin(dev, st, lambda cid: create_cq(cid, IO_QID, st.page(CQ_PAGE), IO_DEPTH, None))
    _admin(dev, st, lambda cid: create_sq(cid, IO_QID, st.page(SQ_PAGE), IO_DEPTH, IO_QID))


def _admin(dev: Device, st: NvmeState, build: Any) -> Completion:
    """Submit one admin command and poll the admin CQ for it (the admin CQ has no MSI)."""
    memory = st.memory
    cid = st.admin_cid
    memory.write(st.page(ASQ_PAGE) + st.admin_sq_tail * SQE_SIZE, build(cid).encode())
    st.admin_sq_tail = (st.admin_sq_tail + 1) % ADMIN_DEPTH
    st.admin_cid = (cid + 1) & 0xFFFF
    dev.regs[sq_doorbell(0)] = st.admin_sq_tail
    at = st.page(ACQ_PAGE) + st.admin_cq_head * CQE.size
    entry: list[Completion] = []

    def arrived() -> bool:
        cqe = Completion.decode(memory.read(at, CQE.size))
        if cqe.phase == st.admin_phase:
            entry.append(cqe)
        return bool(entry)

    _wait(dev, arrived, f"admin command {cid}")
    st.admin_cq_head = (st.admin_cq_head + 1) % ADMIN_DEPTH
    if st.admin_cq_head == 0:
        st.admin_phase ^= 1
    dev.regs[cq_doorbell(0)] = st.admin_cq_head
    cqe = entry[0]
    if cqe.command_id != cid or cqe.status != NVME_SC_SUCCESS:
        raise DeviceError(f"{dev.name}: admin command {cid} failed (status {cqe.status:#x})")
    return cqe


# -- I/O: what the host's block layer would call -----------------------------------------


def _submit(dev: Device, opcode: int, slba: int, blocks: int, data: bytes = b"") -> int:
    st = _state(dev)
    if st.frozen:
        raise BusyError(f"{dev.name}: I/O is stopped for a live update")
    _check_io(dev, st, slba, blocks)
    cid = next((c for c in range(QDEPTH) if c not in st.inflight), None)
    if cid is None:
        raise BusyError(f"{dev.name}: {QDEPTH} commands in flight already")
    memory, buf = st.memory, st.buffer(cid)
    if data:
        memory.write(buf, data)
    prp2 = buf + PAGE if blocks * LBA_SIZE > PAGE else 0
    cmd: Command = rw(opcode, cid, slba, blocks, buf, prp2)
    memory.write(st.page(SQ_PAGE) + st.sq_tail * SQE_SIZE, cmd.encode())
    st.inflight[cid] = InflightRecord(cid, opcode, slba, blocks)
    st.sq_tail = (st.sq_tail + 1) % IO_DEPTH
    dev.regs[sq_doorbell(IO_QID)] = st.sq_tail
    return cid


def _check_io(dev: Device, st: NvmeState, slba: int, blocks: int) -> None:
    if type(slba) is not int or type(blocks) is not int:
        raise InvalidArgumentError(f"{dev.name}: blocks are numbered by integers")
    if not 0 < blocks <= MAX_BLOCKS:
        raise InvalidArgumentError(f"{dev.name}: a command moves 1..{MAX_BLOCKS} blocks")
    if slba < 0 or slba + blocks > st.nsze:
        raise InvalidArgumentError(f"{dev.name}: blocks {slba}+{blocks} are past the namespace")


def submit_write(dev: Device, slba: int, data: bytes) -> int:
    """Write ``data`` (whole 512-byte blocks, at most 8 KiB) at ``slba``; its command id."""
    if not isinstance(data, bytes) or not data or len(data) % LBA_SIZE:
        raise InvalidArgumentError(f"{dev.name}: a write takes whole {LBA_SIZE}-byte blocks")
    return _submit(dev, nvme_cmd_write, slba, len(data) // LBA_SIZE, data)


def submit_read(dev: Device, slba: int, blocks: int) -> int:
    """Read ``blocks`` blocks at ``slba``; its command id (the data comes with :func:`reap`)."""
    return _submit(dev, nvme_cmd_read, slba, blocks)


def _collect(dev: Device, st: NvmeState) -> int:
    """Take every new completion off the I/O CQ (by phase tag) into ``st.done``."""
    memory = st.memory
    found = 0
    while True:
        at = st.page(CQ_PAGE) + st.cq_head * CQE.size
        cqe = Completion.decode(memory.read(at, CQE.size))
        if cqe.phase != st.phase:
            break
        found += 1
        st.cq_head = (st.cq_head + 1) % IO_DEPTH
        if st.cq_head == 0:
            st.phase ^= 1
        cmd = st.inflight.pop(cqe.command_id, None)
        if cmd is None:
            continue  # a completion for no command of ours: nothing to account
        data = b""
        if cqe.status == NVME_SC_SUCCESS and cmd.opcode == nvme_cmd_read:
            data = memory.read(st.buffer(cmd.cid), cmd.blocks * LBA_SIZE)
        elif cqe.status == NVME_SC_SUCCESS and cmd.opcode == nvme_cmd_write:
            written = memory.read(st.buffer(cmd.cid), cmd.blocks * LBA_SIZE)
            for n in range(cmd.blocks):
                block = written[n * LBA_SIZE : (n + 1) * LBA_SIZE]
                st.written[cmd.slba + n] = WrittenRecord(cmd.slba + n, 1, zlib.crc32(block))
        st.done.append(Completed(cmd.cid, cmd.opcode, cmd.slba, cmd.blocks, cqe.status, data))
    if found:
        dev.regs[cq_doorbell(IO_QID)] = st.cq_head
    return found


def reap(dev: Device) -> list[Completed]:
    """Every command completed since the last reap (restore's included), in CQ order."""
    st = _state(dev)
    if st.frozen:
        raise BusyError(f"{dev.name}: I/O is stopped for a live update")
    _collect(dev, st)
    done, st.done = st.done, []
    return done


def wait_idle(dev: Device, timeout: float = TIMEOUT_S) -> list[Completed]:
    """Reap until nothing is in flight (bounded by ``timeout``): what completed."""
    st = _state(dev)
    got: list[Completed] = []
    deadline = time.monotonic() + timeout
    while True:
        got += reap(dev)
        if not st.inflight:
            return got
        if time.monotonic() > deadline:
            raise DeviceError(
                f"{dev.name}: {len(st.inflight)} commands still in flight",
            )
        os.sched_yield()


def checksum(dev: Device) -> int:
    """CRC-32 over every block written, as the driver noted them."""
    st = _state(dev)
    crc = 0
    for slba in sorted(st.written):
        entry = st.written[slba]
        crc = zlib.crc32(entry.slba.to_bytes(8, "little") + entry.crc.to_bytes(4, "little"), crc)
    return crc
