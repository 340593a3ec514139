"""The NVMe driver inside a VM: probes the passed-through controller, keeps I/O in flight.

A controller passed through to a VM (drivers/vfio) is driven by the guest's
own driver through its BAR and queues in guest memory (IOVA = GPA: the VMM
maps all guest memory 1:1 into the device's IOMMU domain).  Everything this
driver knows lives in guest memory from ``base`` — the queues, the data
buffers and a page of state holding the SQ tail, the CQ head and phase, and
each in-flight command's id and I/O sequence number — never in the Python
object, which the VMM rebuilds in every kernel.  So a live update, which
keeps guest memory, keeps the driver's place in its queues, and completions
the controller posted while no kernel ran are reaped when their MSI (or the
interrupt chip's re-injection) reaches the rebuilt driver.

Layout from ``base`` (4 KiB pages): 0 the driver's state, 1 the admin SQ,
2 the admin CQ, 3 the I/O SQ, 4 the I/O CQ, 5 the Identify buffer, then one
data buffer per slot.

The workload: :data:`SLOTS` slots, each writing one 4 KiB block whose
content encodes the write's I/O sequence number, then reading it back and
checking it.  Every command is one I/O (``guest.io_submit()``), completed in
submission order (``guest.io_complete(seq)``); a command that fails, or a
read whose data does not match, is never completed, so the guest counts it
lost.  The queue pair is serviced by vCPU 0, where its MSI is posted (as
Linux maps a queue to a CPU): other vCPUs leave it alone.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any, Final

from luo_core.errors import DeviceError
from luo_nvme._spec import (
    CC_VALUE,
    CQE,
    IO_QID,
    NSID,
    NVME_CSTS_CFS,
    NVME_CSTS_RDY,
    NVME_ID_CNS_CTRL,
    NVME_ID_CNS_NS,
    NVME_SC_SUCCESS,
    PAGE,
    SQE_SIZE,
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

MAGIC: Final = b"gNVM"
ADMIN_DEPTH: Final = 8
IO_DEPTH: Final = 32
SLOTS: Final = 4
"""Commands the guest keeps in flight at most."""
BLOCK: Final = PAGE
"""Each I/O moves one 4 KiB block."""
STATE: Final = struct.Struct("<4sIIIIIIIQQQQQI")
"""magic, admin SQ tail, admin CQ head, admin phase, I/O SQ tail, I/O CQ head, I/O phase,
block shift, namespace blocks, reads that did not match, commands that failed,
completions for no command of ours, writes submitted, next admin cid."""
SLOT: Final = struct.Struct("<IIQQQ")
"""One slot: state, command id, I/O sequence number, the write's sequence number, LBA."""
SLOTS_AT: Final = 256
FREE, WRITING, WRITTEN, READING = 0, 1, 2, 3
PAGES: Final = 6 + SLOTS
FOOTPRINT: Final = PAGES * PAGE
READY_TIMEOUT_S: Final = 5.0
"""CAP.TO is 500 ms; a loaded machine gets ten times that."""


def pattern(seq: int, lba: int) -> bytes:
    """The content of the block the write numbered ``seq`` puts at ``lba``."""
    return struct.pack("<QQ", seq, lba) * (BLOCK // 16)


class GuestNvmeDriver:
    """The guest's NVMe driver for one passed-through controller (a ``luo_kvm.GuestDriver``)."""

    def __init__(self, name: str, regs: Any, base: int, vector: int, stream: int) -> None:
        self.name = name
        self.regs = regs
        self.base = base
        self.vector = vector
        self.stream = stream

    # -- layout -----------------------------------------------------------------------

    def page(self, n: int) -> int:
        return self.base + n * PAGE

    def _state(self, mem: Any) -> list[Any]:
        return list(STATE.unpack(mem.read(self.base, STATE.size)))

    def _put(self, mem: Any, state: list[Any]) -> None:
        mem.write(self.base, STATE.pack(*state))

    def _slot(self, mem: Any, i: int) -> list[int]:
        return list(SLOT.unpack(mem.read(self.base + SLOTS_AT + i * SLOT.size, SLOT.size)))

    def _put_slot(self, mem: Any, i: int, slot: list[int]) -> None:
        mem.write(self.base + SLOTS_AT + i * SLOT.size, SLOT.pack(*slot))

    # -- probe ------------------------------------------------------------------------

    def setup(self, guest: Any, irq_handle: int) -> None:
        """nvme_reset_work in a few lines: disable, admin queue, enable, Identify, I/O pair."""
        regs = self.regs
        mem = guest
        for n in range(PAGES):
            mem.write(self.page(n), bytes(PAGE))
        regs["cc"] = 0
        self._wait_ready(0)
        regs["aqa"] = aqa(ADMIN_DEPTH, ADMIN_DEPTH)
        regs["asq"] = self.page(1)
        regs["acq"] = self.page(2)
        regs["cc"] = CC_VALUE
        self._wait_ready(NVME_CSTS_RDY)
        self._put(mem, [b"\0" * 4, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
        self._admin(mem, lambda cid: identify(cid, NVME_ID_CNS_CTRL, self.page(5)))
        self._admin(mem, lambda cid: identify(cid, NVME_ID_CNS_NS, self.page(5), NSID))
        id_ns = mem.read(self.page(5), PAGE)
        state = self._state(mem)
        state[7], state[8] = lba_shift_of(id_ns), nsze_of(id_ns)
        self._put(mem, state)
        if state[8] << state[7] < BLOCK * SLOTS:
            raise DeviceError(f"{self.name}: namespace 1 is too small for the guest's I/O")
        self._admin(mem, lambda cid: create_cq(cid, IO_QID, self.page(4), IO_DEPTH, irq_handle))
        self._admin(mem, lambda cid: create_sq(cid, IO_QID, self.page(3), IO_DEPTH, IO_QID))
        mem.write(self.base, MAGIC)  # the queues are live: the driver is attached

    def _wait_ready(self, expected: int) -> None:
        """nvme_wait_ready: poll CSTS.RDY, bounded by CAP.TO (a driver's own wait)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (csts := self.regs["csts"]) & NVME_CSTS_RDY != expected:
            if csts & NVME_CSTS_CFS or time.monotonic() > deadline:
                raise DeviceError(f"{self.name}: CSTS {csts:#x}, RDY never became {expected}")
            os.sched_yield()

    def _admin(self, mem: Any, build: Any) -> Completion:
        """Submit one admin command and poll the admin CQ for its completion."""
        state = self._state(mem)
        cid = state[13]
        tail = state[1]
        mem.write(self.page(1) + tail * SQE_SIZE, build(cid).encode())
        state[1], state[13] = (tail + 1) % ADMIN_DEPTH, (cid + 1) & 0xFFFF
        self._put(mem, state)
        self.regs[sq_doorbell(0)] = state[1]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            at = self.page(2) + state[2] * CQE.size
            cqe = Completion.decode(mem.read(at, CQE.size))
            if cqe.phase == state[3]:
                break
            if time.monotonic() > deadline:
                raise DeviceError(f"{self.name}: admin command {cid} never completed")
            os.sched_yield()
        state[2] = (state[2] + 1) % ADMIN_DEPTH
        if state[2] == 0:
            state[3] ^= 1
        self._put(mem, state)
        self.regs[cq_doorbell(0)] = state[2]
        if cqe.command_id != cid or cqe.status != NVME_SC_SUCCESS:
            raise DeviceError(
                f"{self.name}: admin command {cid} failed (cid {cqe.command_id}, "
                f"status {cqe.status:#x})"
            )
        return cqe

    def attached(self, guest: Any) -> bool:
        return bytes(guest.read(self.base, 4)) == MAGIC

    # -- I/O --------------------------------------------------------------------------

    def poll(self, guest: Any) -> None:
        """Submit one command a step: a read of a block written, else a new write."""
        if guest.vcpu != 0 or not self.attached(guest):
            return
        slots = [self._slot(guest, i) for i in range(SLOTS)]
        due = [i for i, s in enumerate(slots) if s[0] == WRITTEN]
        free = [i for i, s in enumerate(slots) if s[0] == FREE]
        if due:
            i = due[0]
            slot = slots[i]
            seq = guest.io_submit()
            self._submit(guest, i, [READING, _cid(seq, i), seq, slot[3], slot[4]], nvme_cmd_read)
        elif free:
            i = free[0]
            state = self._state(guest)
            seq = guest.io_submit()
            shift, blocks = state[7], state[8]
            per = BLOCK >> shift
            lba = (state[12] % (blocks // per)) * per
            state[12] += 1
            self._put(guest, state)
            guest.write(self.page(6 + i), pattern(seq, lba))
            self._submit(guest, i, [WRITING, _cid(seq, i), seq, seq, lba], nvme_cmd_write)

    def _submit(self, guest: Any, i: int, slot: list[int], opcode: int) -> None:
        state = self._state(guest)
        blocks = BLOCK >> state[7]
        cmd = rw(opcode, slot[1], slot[4], blocks, self.page(6 + i))
        tail = state[4]
        guest.write(self.page(3) + tail * SQE_SIZE, cmd.encode())
        self._put_slot(guest, i, slot)
        state[4] = (tail + 1) % IO_DEPTH
        self._put(guest, state)
        self.regs[sq_doorbell(IO_QID)] = state[4]

    def interrupt(self, vector: int, guest: Any) -> None:
        """nvme_irq: reap the I/O CQ by phase tag, in order; spurious when nothing new."""
        if vector != self.vector or not self.attached(guest):
            return
        state = self._state(guest)
        found = 0
        while True:
            at = self.page(4) + state[5] * CQE.size
            cqe = Completion.decode(guest.read(at, CQE.size))
            if cqe.phase != state[6]:
                break
            found += 1
            state[5] = (state[5] + 1) % IO_DEPTH
            if state[5] == 0:
                state[6] ^= 1
            self._complete(guest, state, cqe)
        if not found:
            guest.interrupt_spurious()
            return
        self._put(guest, state)
        self.regs[cq_doorbell(IO_QID)] = state[5]

    def _complete(self, guest: Any, state: list[Any], cqe: Completion) -> None:
        i = cqe.command_id % SLOTS
        slot = self._slot(guest, i)
        if slot[0] not in (WRITING, READING) or slot[1] != cqe.command_id:
            state[11] += 1  # a completion for no command in flight: ignored, counted
            return
        if cqe.status != NVME_SC_SUCCESS:
            state[10] += 1  # failed: never completed, so the guest counts it lost
            slot[0] = FREE
        elif slot[0] == WRITING:
            guest.io_complete(slot[2])
            slot[0] = WRITTEN
        else:
            data = guest.read(self.page(6 + i), BLOCK)
            if data == pattern(slot[3], slot[4]):
                guest.io_complete(slot[2])
            else:
                state[9] += 1  # the block does not hold what was written: lost
            slot[0] = FREE
        self._put_slot(guest, i, slot)

    def stats(self, guest: Any) -> dict[str, int]:
        """The driver's own counters, from guest memory."""
        state = self._state(guest)
        in_flight = sum(self._slot(guest, i)[0] in (WRITING, READING) for i in range(SLOTS))
        return {
            "sq_tail": state[4],
            "cq_head": state[5],
            "phase": state[6],
            "mismatched": state[9],
            "failed": state[10],
            "unknown": state[11],
            "writes": state[12],
            "in_flight": in_flight,
        }


def _cid(seq: int, slot: int) -> int:
    """A command id naming the slot (``cid % SLOTS``) and, above it, the I/O's number."""
    return (seq * SLOTS + slot) & 0xFFFF
