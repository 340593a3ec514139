"""The NVMe controller's hardware and its guest driver, with the kernel's part played by hand.

I/O page tables, root and context tables, an interrupt-remapping table and a
posted descriptor are written straight into physical memory (as
drivers/example-nic/tests/test_nic_dma.py does), so these tests pin the
controller model alone: its registers, its queue entries byte for byte, the
CC.EN / CSTS.RDY handshake, the phase tag, PRPs, and every error path.
A control request is answered only after every doorbell rung before it was
handled (luo's model loop), so ``hw.control(..., "counters")`` is the
barrier these tests wait on, never a sleep.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator

import attrs
import pytest
from luo_kvm import GuestContext
from luo_nvme._guest import FOOTPRINT, SLOTS, GuestNvmeDriver
from luo_nvme._spec import (
    CAP_VALUE,
    CC_VALUE,
    COMPATIBLE,
    CQE,
    DB_BASE,
    IO_QID,
    LBA_SIZE,
    NVME_CSTS_CFS,
    NVME_CSTS_RDY,
    NVME_ID_CNS_CTRL,
    NVME_ID_CNS_NS,
    NVME_REGISTERS,
    NVME_SC_CQ_INVALID,
    NVME_SC_DATA_XFER_ERROR,
    NVME_SC_INVALID_FIELD,
    NVME_SC_INVALID_NS,
    NVME_SC_INVALID_OPCODE,
    NVME_SC_LBA_RANGE,
    NVME_SC_PRP_INVALID_OFFSET,
    NVME_SC_QID_INVALID,
    NVME_SC_QUEUE_SIZE,
    PAGE,
    SQE,
    Command,
    Completion,
    aqa,
    create_cq,
    create_sq,
    identify,
    lba_shift_of,
    nsze_of,
    nvme_cmd_flush,
    nvme_cmd_read,
    nvme_cmd_write,
    rw,
)

from luo_core.abi._dmar import ContextEntry, encode_root_entry, requester_id
from luo_core.abi._iopgtable import PageTableWriter
from luo_core.abi._irte import PostedIrte
from luo_core.abi._posted import PiDesc, drain
from luo_core.platform import Hardware, Machine, PhysicalMemory
from luo_core.platform._atomic import AtomicWords
from luo_core.platform._registers import Registers

CTRL = "0000:03:00.0"
GUEST = 0x10_0000  # IOVA 0.. maps here
GUEST_SIZE = 0x10_0000
TABLES = 0x30_0000
ROOT_TABLE, CONTEXT_TABLE = 0x40_0000, 0x40_1000
IR_TABLE, PI_DESC = 0x41_0000, 0x41_1000
VECTOR = 0x44
HANDLE = 5
# Where the hand-driven host keeps things (IOVAs)
ASQ, ACQ, IOSQ, IOCQ, ID_PAGE, DATA = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x10000


class Guest:
    """Memory by IOVA (= guest-physical address): at GUEST in physical memory."""

    def __init__(self, ram: PhysicalMemory) -> None:
        self.ram = ram

    def read(self, gpa: int, length: int) -> bytes:
        return self.ram.read(GUEST + gpa, length)

    def write(self, gpa: int, data: bytes) -> None:
        self.ram.write(GUEST + gpa, data)


@pytest.fixture
def hw() -> Iterator[Hardware]:
    machine = Machine(memory_size=16 << 20, scratch_size=1 << 20)
    machine.add("pci0000:00", compatible="pci-host-bridge")
    machine.add_pci(CTRL, compatible=COMPATIBLE, parent="pci0000:00")
    with Hardware(machine) as hardware:
        pages = iter(range(TABLES, TABLES + 64 * PAGE, PAGE))
        tables = PageTableWriter(hardware.ram, lambda: next(pages))
        tables.map(0, GUEST, GUEST_SIZE)
        rid = requester_id(CTRL) or 0
        hardware.ram.write(ROOT_TABLE + (rid >> 8) * 16, encode_root_entry(CONTEXT_TABLE))
        hardware.ram.write(
            CONTEXT_TABLE + (rid & 0xFF) * 16, ContextEntry(tables.root, 1).encode()
        )
        hardware.iommu.set_root_table(ROOT_TABLE)
        hardware.ram.write(IR_TABLE + HANDLE * 16, PostedIrte(vector=VECTOR, pda=PI_DESC).encode())
        hardware.ram.write(PI_DESC, PiDesc(nv=0xF2, ndst=0).encode())
        hardware.interrupts.set_table(IR_TABLE, 256)
        hardware.config(CTRL)["command"] = 1 << 2  # bus master
        yield hardware


def driver_regs(hw: Hardware) -> Registers:
    """The BAR as a driver reaches it: a doorbell write kicks the model (an ioeventfd)."""
    runner = hw._runners[CTRL]
    device = hw.registers(CTRL)
    return Registers(
        device._buffer, device._base, NVME_REGISTERS, side="driver",
        kick=lambda: os.eventfd_write(runner.doorbell, 1),
    )  # fmt: skip


def barrier(hw: Hardware) -> dict[str, int]:
    """The controller's counters, once it handled every doorbell rung so far."""
    counters = hw.control(CTRL, "counters")
    assert isinstance(counters, dict)
    return counters


def pending(hw: Hardware) -> list[int]:
    return drain(AtomicWords(hw.ram.view(PI_DESC, 64)))


class HandDriver:
    """The smallest NVMe host: queues at fixed IOVAs, commands one at a time."""

    def __init__(self, hw: Hardware, io_entries: int = 16) -> None:
        self.hw, self.mem, self.regs = hw, Guest(hw.ram), driver_regs(hw)
        self.tails = {0: 0, IO_QID: 0}
        self.heads = {0: 0, IO_QID: 0}
        self.phases = {0: 1, IO_QID: 1}
        self.sizes = {0: 8, IO_QID: io_entries}
        self.cid = 0

    def enable(self) -> None:
        self.regs["aqa"] = aqa(8, 8)
        self.regs["asq"], self.regs["acq"] = ASQ, ACQ
        self.regs["cc"] = CC_VALUE
        barrier(self.hw)
        assert self.regs["csts"] & NVME_CSTS_RDY

    def submit(self, qid: int, cmd: Command) -> None:
        base = ASQ if qid == 0 else IOSQ
        self.mem.write(base + self.tails[qid] * 64, cmd.encode())
        self.tails[qid] = (self.tails[qid] + 1) % self.sizes[qid]
        self.regs[f"sq{qid}tdbl"] = self.tails[qid]

    def reap(self, qid: int) -> list[Completion]:
        barrier(self.hw)
        base, found = (ACQ if qid == 0 else IOCQ), []
        while True:
            cqe = Completion.decode(self.mem.read(base + self.heads[qid] * 16, 16))
            if cqe.phase != self.phases[qid]:
                break
            found.append(cqe)
            self.heads[qid] = (self.heads[qid] + 1) % self.sizes[qid]
            if self.heads[qid] == 0:
                self.phases[qid] ^= 1
        self.regs[f"cq{qid}hdbl"] = self.heads[qid]
        return found

    def run(self, qid: int, build: object) -> Completion:
        self.cid += 1
        self.submit(qid, build(self.cid))  # type: ignore[operator]
        (cqe,) = self.reap(qid)
        assert cqe.command_id == self.cid
        return cqe

    def io_pair(self, vector: int | None = None) -> None:
        cq = self.run(0, lambda c: create_cq(c, IO_QID, IOCQ, self.sizes[IO_QID], vector))
        sq = self.run(0, lambda c: create_sq(c, IO_QID, IOSQ, self.sizes[IO_QID], IO_QID))
        assert cq.status == sq.status == 0


def test_entries_are_laid_out_as_in_include_linux_nvme_h() -> None:
    """include/linux/nvme.h: struct nvme_common_command (opcode u8 @0, flags u8 @1,
    command_id u16 @2, nsid @4, cdw2[2] @8, metadata @16, dptr.prp1 @24, prp2 @32,
    cdw10..15 @40..60), struct nvme_rw_command (slba @40, length @48, 0's based) and
    struct nvme_completion (result @0, sq_head @8, sq_id @10, command_id @12, status @14
    with the phase tag in bit 0)."""
    assert SQE.size == 64 and CQE.size == 16
    raw = rw(nvme_cmd_write, 0xBEEF, 0x1_2345_6789, 8, 0xAAAA_0000, 0xBBBB_0000).encode()
    assert raw[0] == 0x01 and raw[1] == 0
    assert struct.unpack_from("<H", raw, 2)[0] == 0xBEEF
    assert struct.unpack_from("<I", raw, 4)[0] == 1  # nsid
    assert struct.unpack_from("<QQ", raw, 24) == (0xAAAA_0000, 0xBBBB_0000)
    assert struct.unpack_from("<Q", raw, 40)[0] == 0x1_2345_6789  # slba
    assert struct.unpack_from("<H", raw, 48)[0] == 7  # length: 8 blocks, 0's based
    assert Command.decode(raw).slba == 0x1_2345_6789 and Command.decode(raw).nlb == 8
    cqe = Completion(result=0x11, sq_head=3, sq_id=1, command_id=0xBEEF, status=0x80, phase=1)
    assert cqe.encode() == bytes.fromhex("110000000000000003000100efbe0101")
    assert Completion.decode(cqe.encode()) == cqe
    # nvme_create_cq: cqid @40, qsize @42, cq_flags @44, irq_vector @46
    cq = create_cq(1, 1, 0x4000, 16, 0x1234).encode()
    assert struct.unpack_from("<HHHH", cq, 40) == (1, 15, 0b11, 0x1234)
    sq = create_sq(2, 1, 0x3000, 16, 1).encode()
    assert struct.unpack_from("<HHHH", sq, 40) == (1, 15, 0b01, 1)
    assert identify(3, NVME_ID_CNS_CTRL, 0x5000).encode()[40] == 1  # cns @40


def test_registers_sit_at_the_nvme_offsets_and_doorbells_below_the_window_end() -> None:
    """include/linux/nvme.h enum NVME_REG_*; luo's doorbells at 0x800 with DSTRD 0."""
    offsets = {r.name: r.offset for r in NVME_REGISTERS}
    names = ("cap", "vs", "intms", "intmc", "cc", "csts", "aqa", "asq", "acq")
    expected = [0x00, 0x08, 0x0C, 0x10, 0x14, 0x1C, 0x24, 0x28, 0x30]
    assert [offsets[n] for n in names] == expected
    assert (offsets["sq0tdbl"], offsets["cq0hdbl"]) == (DB_BASE, DB_BASE + 4)
    assert (offsets["sq1tdbl"], offsets["cq1hdbl"]) == (DB_BASE + 8, DB_BASE + 12)
    assert CAP_VALUE >> 32 & 0xF == 0  # DSTRD 0: a 4-byte stride
    assert CAP_VALUE & 0xFFFF == 255 and CAP_VALUE >> 37 & 1  # MQES, NVM command set


def test_cc_en_and_csts_rdy_handshake(hw: Hardware) -> None:
    """drivers/nvme/host/core.c nvme_enable_ctrl / nvme_disable_ctrl: CSTS.RDY follows
    CC.EN; disabling resets the controller (its queues are gone); a bad AQA is fatal."""
    host, regs = HandDriver(hw), driver_regs(hw)
    assert regs["cap"] == CAP_VALUE and regs["vs"] == 0x10400 and regs["csts"] == 0
    host.enable()
    host.io_pair()
    assert hw.control(CTRL, "queues")["sq"].keys() == {"0", "1"}  # type: ignore[index]
    regs["cc"] = 0
    barrier(hw)
    assert regs["csts"] & NVME_CSTS_RDY == 0
    assert hw.control(CTRL, "queues")["sq"] == {}  # type: ignore[index]
    regs["aqa"] = 0  # one entry: the queue cannot hold a command
    regs["cc"] = CC_VALUE
    barrier(hw)
    assert regs["csts"] == NVME_CSTS_CFS


def test_identify_controller_and_namespace(hw: Hardware) -> None:
    host = HandDriver(hw)
    host.enable()
    assert host.run(0, lambda c: identify(c, NVME_ID_CNS_CTRL, ID_PAGE)).status == 0
    page = host.mem.read(ID_PAGE, PAGE)
    assert struct.unpack_from("<H", page, 0)[0] == 0x1B36
    assert page[24:37] == b"luo NVMe Ctrl" and page[512:514] == b"\x66\x44"
    assert struct.unpack_from("<I", page, 516)[0] == 1  # nn: one namespace
    assert host.run(0, lambda c: identify(c, NVME_ID_CNS_NS, ID_PAGE, 1)).status == 0
    page = host.mem.read(ID_PAGE, PAGE)
    assert nsze_of(page) == (1 << 20) // LBA_SIZE and lba_shift_of(page) == 9
    assert host.run(0, lambda c: identify(c, NVME_ID_CNS_NS, ID_PAGE, 2)).status == (
        NVME_SC_INVALID_NS
    )
    assert host.run(0, lambda c: identify(c, 0x42, ID_PAGE)).status == NVME_SC_INVALID_FIELD


def test_queue_creation_is_checked(hw: Hardware) -> None:
    host = HandDriver(hw)
    host.enable()
    assert host.run(0, lambda c: create_sq(c, 1, IOSQ, 16, 1)).status == NVME_SC_CQ_INVALID
    assert host.run(0, lambda c: create_cq(c, 2, IOCQ, 16, None)).status == NVME_SC_QID_INVALID
    assert host.run(0, lambda c: create_cq(c, 1, IOCQ, 1, None)).status == NVME_SC_QUEUE_SIZE
    assert host.run(0, lambda c: create_cq(c, 1, IOCQ + 8, 16, None)).status == (
        NVME_SC_INVALID_FIELD
    )
    assert host.run(0, lambda c: Command(0x7F, c)).status == NVME_SC_INVALID_OPCODE


def test_the_phase_tag_inverts_at_every_wrap(hw: Hardware) -> None:
    """NVMe base spec 4.6 / drivers/nvme/host/pci.c nvme_cqe_pending: an entry is new when
    its phase matches the driver's, which inverts each time the head wraps."""
    host = HandDriver(hw, io_entries=4)
    host.enable()
    host.io_pair()
    phases = []
    for n in range(10):
        host.submit(IO_QID, Command(nvme_cmd_flush, 100 + n, 1))
        barrier(hw)
        at = IOCQ + ((n % 4) * 16)
        phases.append(Completion.decode(host.mem.read(at, 16)).phase)
        (cqe,) = host.reap(IO_QID)
        assert (cqe.command_id, cqe.status, cqe.sq_id) == (100 + n, 0, 1)
        assert cqe.sq_head == (n + 1) % 4
    assert phases == [1, 1, 1, 1, 0, 0, 0, 0, 1, 1]


def test_a_full_completion_queue_holds_commands_until_its_head_moves(hw: Hardware) -> None:
    host = HandDriver(hw, io_entries=4)
    host.enable()
    host.io_pair()
    for n in range(3):  # a CQ of 4 holds 3 entries
        host.submit(IO_QID, Command(nvme_cmd_flush, n, 1))
    before = barrier(hw)["completed"]
    host.submit(IO_QID, Command(nvme_cmd_write, 9, 7))  # sits: no free completion slot
    assert barrier(hw)["completed"] == before
    assert [c.command_id for c in host.reap(IO_QID)] == [0, 1, 2]  # head doorbell rung
    assert [(c.command_id, c.status) for c in host.reap(IO_QID)] == [(9, NVME_SC_INVALID_NS)]


@pytest.mark.parametrize("blocks", [1, 8, 16, 64, 256])
def test_data_written_reads_back_through_prp1_prp2_and_prp_lists(
    hw: Hardware, blocks: int
) -> None:
    """drivers/nvme/host/pci.c nvme_pci_setup_prps: PRP1 may start mid-page, PRP2 is the
    second page, or past two pages a PRP list whose last entry chains a full list page."""
    host = HandDriver(hw)
    host.enable()
    host.io_pair()
    length = blocks * LBA_SIZE
    start = DATA + 0x200  # mid-page: the first piece is short
    pages = [DATA + PAGE * (i + 1) for i in range((length + 0x200 - 1) // PAGE)]
    prp2 = 0
    if len(pages) == 1:
        prp2 = pages[0]
    elif len(pages) == 2:  # a list that fits the two slots left in its page
        host.mem.write(0x7FF0, struct.pack("<QQ", *pages))
        prp2 = 0x7FF0
    elif pages:
        # a list starting 16 bytes before a page end: two slots, the second chains on
        lst, nxt = 0x7FF0, 0x9000
        host.mem.write(lst, struct.pack("<QQ", pages[0], nxt))
        host.mem.write(nxt, struct.pack(f"<{len(pages) - 1}Q", *pages[1:]))
        prp2 = lst
    data = bytes((i * 7 + blocks) & 0xFF for i in range(length))
    # the buffer is contiguous in IOVA from `start` (pages follow DATA)
    host.mem.write(start, data[: PAGE - 0x200])
    for i, page in enumerate(pages):
        at = PAGE - 0x200 + i * PAGE
        host.mem.write(page, data[at : at + PAGE])
    assert host.run(IO_QID, lambda c: rw(nvme_cmd_write, c, 40, blocks, start, prp2)).status == 0
    assert hw.control(CTRL, "disk", {"lba": 40, "blocks": blocks}) == data
    host.mem.write(start, bytes(PAGE - 0x200))
    for page in pages:
        host.mem.write(page, bytes(PAGE))
    assert host.run(IO_QID, lambda c: rw(nvme_cmd_read, c, 40, blocks, start, prp2)).status == 0
    got = host.mem.read(start, PAGE - 0x200) + b"".join(host.mem.read(p, PAGE) for p in pages)
    assert got[:length] == data


def test_malformed_commands_complete_with_an_error_status(hw: Hardware) -> None:
    host = HandDriver(hw)
    host.enable()
    host.io_pair()
    blocks = (1 << 20) // LBA_SIZE
    cases = [
        (Command(0x55, 0, 1), NVME_SC_INVALID_OPCODE),
        (Command(nvme_cmd_read, 0, 3, DATA), NVME_SC_INVALID_NS),
        (rw(nvme_cmd_read, 0, blocks - 1, 2, DATA), NVME_SC_LBA_RANGE),
        (rw(nvme_cmd_read, 0, 0, 257, DATA), NVME_SC_INVALID_FIELD),  # past MDTS (128 KiB)
        (rw(nvme_cmd_read, 0, 0, 1, DATA + 2), NVME_SC_PRP_INVALID_OFFSET),
        (rw(nvme_cmd_read, 0, 0, 16, DATA, DATA + PAGE + 8), NVME_SC_PRP_INVALID_OFFSET),
    ]
    for cmd, status in cases:
        got = host.run(IO_QID, lambda c, cmd=cmd: attrs.evolve(cmd, command_id=c))
        assert got.status == status, (cmd, got)
    assert barrier(hw)["dma_errors"] == 0


def test_dma_and_msi_faults_are_errors_and_counts_never_a_crash(hw: Hardware) -> None:
    host = HandDriver(hw)
    host.enable()
    host.io_pair(vector=HANDLE + 1)  # IRTE 6 is not present: the MSI is refused
    outside = GUEST_SIZE + PAGE  # an IOVA the domain does not map
    got = host.run(IO_QID, lambda c: rw(nvme_cmd_write, c, 0, 8, outside))
    assert got.status == NVME_SC_DATA_XFER_ERROR
    counters = barrier(hw)
    assert (counters["dma_errors"], counters["irq_raised"], counters["irq_faults"]) == (1, 0, 1)
    assert hw.iommu.faults == 1 and hw.interrupts.faults == 1 and pending(hw) == []
    assert host.run(IO_QID, lambda c: Command(nvme_cmd_flush, c, 1)).status == 0  # still runs


def test_a_held_controller_completes_later_and_raises_its_msi(hw: Hardware) -> None:
    host = HandDriver(hw)
    host.enable()
    host.io_pair(vector=HANDLE)
    assert hw.control(CTRL, "hold", {"on": True}) == {"completed": 0}
    for n in range(3):
        host.submit(IO_QID, Command(nvme_cmd_flush, n, 1))
    assert host.reap(IO_QID) == [] and pending(hw) == []
    assert hw.control(CTRL, "hold", {"on": False}) == {"completed": 3}
    assert pending(hw) == [VECTOR]
    assert [c.command_id for c in host.reap(IO_QID)] == [0, 1, 2]


class Vm:
    """Just enough of a VM for the guest driver: guest memory, counters, vCPU 0."""

    def __init__(self, hw: Hardware) -> None:
        self.mem = Guest(hw.ram)
        self.guest = GuestContext(self.mem, threading.Lock(), 0)


def test_the_guest_driver_probes_keeps_io_in_flight_and_reaps_by_interrupt(
    hw: Hardware,
) -> None:
    vm = Vm(hw)
    base = 0x1000
    assert FOOTPRINT <= 1 << 20 and base + FOOTPRINT <= GUEST_SIZE
    driver = GuestNvmeDriver(CTRL, driver_regs(hw), base, VECTOR, 0)
    assert not driver.attached(vm.guest)
    driver.setup(vm.guest, HANDLE)
    assert driver.attached(vm.guest)
    for _ in range(60):
        driver.poll(vm.guest)
        barrier(hw)
        for vector in pending(hw):
            driver.interrupt(vector, vm.guest)
    driver.interrupt(VECTOR, vm.guest)  # nothing new: spurious
    driver.interrupt(VECTOR + 1, vm.guest)  # not its vector: ignored
    counters = vm.guest.counters()
    stats = driver.stats(vm.guest)
    assert counters.io_submitted == 60
    assert counters.io_completed >= 60 - SLOTS and counters.io_lost == 0
    assert counters.interrupts_spurious == 1
    assert stats["mismatched"] == stats["failed"] == stats["unknown"] == 0
    # a rebuilt driver (the next kernel's) finds its state in guest memory
    again = GuestNvmeDriver(CTRL, driver_regs(hw), base, VECTOR, 0)
    assert again.attached(vm.guest) and again.stats(vm.guest) == stats


def test_a_read_that_does_not_match_is_counted_lost(hw: Hardware) -> None:
    vm = Vm(hw)
    driver = GuestNvmeDriver(CTRL, driver_regs(hw), 0x1000, VECTOR, 0)
    driver.setup(vm.guest, HANDLE)
    driver.poll(vm.guest)  # io 1: write its block at LBA 0
    barrier(hw)
    driver.interrupt(VECTOR, vm.guest)
    hw.control(CTRL, "hold", {"on": True})
    driver.poll(vm.guest)  # io 2: read it back (held)
    driver.poll(vm.guest)  # io 3: the next write (held)
    hw.control(CTRL, "disk", {"lba": 0, "data": b"\xff" * PAGE})  # another initiator scribbles
    hw.control(CTRL, "hold", {"on": False})
    for vector in pending(hw):
        driver.interrupt(vector, vm.guest)
    counters = vm.guest.counters()
    assert (counters.io_submitted, counters.io_completed, counters.io_lost) == (3, 2, 1)
    assert driver.stats(vm.guest)["mismatched"] == 1
