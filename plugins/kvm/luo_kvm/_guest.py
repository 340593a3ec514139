"""The guest's side: its memory layout, its counters, and what guest devices may do to it.

luo does not emulate instructions: the guest program is Python run by each
vCPU thread (:mod:`luo_kvm._vm`), and everything it keeps lives in guest
memory or in its vCPU's registers, so that it crosses every update.  The
first page of guest-physical memory is the guest's own data:

==========  ==============================================================
GPA         what
==========  ==============================================================
0x000       counters, 8 x u64: packets received, lost, duplicated;
            interrupts delivered, spurious; io submitted, completed, lost
0x040       the last packet sequence number seen, per stream (16 x u64)
0x0c0       the last io sequence number completed (u64)
0x100       per vCPU (32 bytes each, up to 64): heartbeat sequence,
            CLOCK_MONOTONIC ns of the last heartbeat, largest gap (ns)
0xc00       the stall log: the number of stalls logged (u64), then a ring of
            32 entries (end ns, gap ns): every gap between two heartbeats of
            a vCPU longer than :data:`STALL_NS`
0x1000      free for guest devices (their rings, their own state)
==========  ==============================================================
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any, Final, Protocol

import attrs

from luo_core.errors import InvalidArgumentError

COUNTERS_GPA: Final = 0x000
STREAMS_GPA: Final = 0x040
STREAMS: Final = 16
IO_LAST_GPA: Final = 0x0C0
HEARTBEAT_GPA: Final = 0x100
HEARTBEAT_SIZE: Final = 0x20
MAX_VCPUS: Final = 64
STALL_LOG_GPA: Final = 0xC00
STALL_LOG_ENTRIES: Final = 32
STALL_NS: Final = 5_000_000
"""A gap between two heartbeats longer than this (5 ms, five timer periods) is a stall the
guest logs: it is how the guest sees a pause, and the demo's VM-observed blackout."""
DEVICE_AREA_GPA: Final = 0x1000
GUEST_DATA_SIZE: Final = 0x1000
"""The guest data page must be mapped (memslot at GPA 0) before a VM starts."""

_U64: Final = struct.Struct("<Q")
_COUNTERS: Final = struct.Struct("<8Q")


@attrs.frozen
class GuestCounters:
    """The guest's counters, as read from guest memory."""

    packets_received: int = 0
    packets_lost: int = 0
    packets_duplicated: int = 0
    interrupts_delivered: int = 0
    interrupts_spurious: int = 0
    io_submitted: int = 0
    io_completed: int = 0
    io_lost: int = 0

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            "packets": {
                "received": self.packets_received,
                "lost": self.packets_lost,
                "duplicated": self.packets_duplicated,
            },
            "interrupts": {
                "delivered": self.interrupts_delivered,
                "spurious": self.interrupts_spurious,
            },
            "io": {
                "submitted": self.io_submitted,
                "completed": self.io_completed,
                "lost": self.io_lost,
            },
        }


_FIELDS: Final = [f.name for f in attrs.fields(GuestCounters)]


class GuestMemory(Protocol):
    """What the guest reaches: its memory by guest-physical address."""

    def read(self, gpa: int, length: int) -> bytes: ...

    def write(self, gpa: int, data: bytes) -> None: ...


class GuestContext:
    """What a guest device gets from the vCPU running it: guest memory and the counters.

    Counter updates are read-modify-writes of guest memory, serialised per VM
    (every vCPU of a VM may run a device).
    """

    def __init__(self, memory: GuestMemory, lock: threading.Lock, vcpu: int = 0) -> None:
        self._memory = memory
        self._lock = lock
        self.vcpu = vcpu
        """The index of the vCPU running the device now."""

    def read(self, gpa: int, length: int) -> bytes:
        return self._memory.read(gpa, length)

    def write(self, gpa: int, data: bytes) -> None:
        self._memory.write(gpa, data)

    def read_u64(self, gpa: int) -> int:
        value: int = _U64.unpack(self._memory.read(gpa, 8))[0]
        return value

    def write_u64(self, gpa: int, value: int) -> None:
        self._memory.write(gpa, _U64.pack(value))

    def counters(self) -> GuestCounters:
        return read_counters(self._memory)

    def _add(self, **deltas: int) -> None:
        values = dict(
            zip(_FIELDS, _COUNTERS.unpack(self._memory.read(COUNTERS_GPA, 64)), strict=True)
        )
        for name, delta in deltas.items():
            values[name] += delta
        self._memory.write(COUNTERS_GPA, _COUNTERS.pack(*values.values()))

    def packet(self, seq: int, stream: int = 0) -> None:
        """A packet numbered ``seq`` (from 1) arrived on ``stream``: received, or a
        duplicate; the numbers it skipped are lost."""
        if not 0 <= stream < STREAMS:
            raise InvalidArgumentError(f"packet stream {stream} is not in 0..{STREAMS - 1}")
        with self._lock:
            at = STREAMS_GPA + 8 * stream
            last = self.read_u64(at)
            if seq <= last:
                self._add(packets_duplicated=1)
            else:
                self._add(packets_received=1, packets_lost=seq - last - 1)
                self.write_u64(at, seq)

    def packet_baseline(self, seq: int, stream: int = 0) -> None:
        """Start counting ``stream`` after packet ``seq``: the ones before it were sent
        before the guest listened, and are not lost."""
        if not 0 <= stream < STREAMS:
            raise InvalidArgumentError(f"packet stream {stream} is not in 0..{STREAMS - 1}")
        with self._lock:
            self.write_u64(STREAMS_GPA + 8 * stream, seq)

    def interrupt_spurious(self) -> None:
        """The device had nothing pending for the vector it was handed (a re-injection)."""
        with self._lock:
            self._add(interrupts_spurious=1)

    def interrupts_delivered(self, count: int) -> None:
        with self._lock:
            self._add(interrupts_delivered=count)

    def io_submit(self) -> int:
        """Submit one io; its sequence number."""
        with self._lock:
            self._add(io_submitted=1)
            return self.counters().io_submitted

    def io_complete(self, seq: int) -> None:
        """The io numbered ``seq`` completed (in order): numbers skipped are lost."""
        with self._lock:
            last = self.read_u64(IO_LAST_GPA)
            if seq > last:
                self._add(io_completed=1, io_lost=seq - last - 1)
                self.write_u64(IO_LAST_GPA, seq)


def read_counters(memory: GuestMemory) -> GuestCounters:
    return GuestCounters(*_COUNTERS.unpack(memory.read(COUNTERS_GPA, 64)))


class GuestDevice(Protocol):
    """A device as the guest program sees it: interrupted by vector, polled every step."""

    name: str

    def interrupt(self, vector: int, guest: GuestContext) -> None: ...

    def poll(self, guest: GuestContext) -> None: ...


class GuestDriver(GuestDevice, Protocol):
    """The guest's driver for a device passed through to it: its state lives in guest
    memory from its base address, so a driver rebuilt in the next kernel carries on."""

    def setup(self, guest: GuestContext, irq_handle: int) -> None:
        """The guest's probe: lay out its queues, program the device, enable it."""
        ...

    def attached(self, guest: GuestContext) -> bool:
        """Whether guest memory already holds this driver's state (after an update)."""
        ...


@attrs.frozen
class GuestDriverSpec:
    """How a pack lets a VM drive its device: the guest memory its driver needs, and
    ``make(device, regs, base_gpa, vector, stream)`` building the driver (see a plugin's
    ``kvm_guest_drivers``)."""

    footprint: int
    make: Callable[[str, Any, int, int, int], GuestDriver]


@attrs.frozen
class Heartbeat:
    """One vCPU's heartbeat, as the guest program keeps it in guest memory."""

    sequence: int
    last_ns: int
    max_gap_ns: int


_HEARTBEAT: Final = struct.Struct("<3Q")


def heartbeat_gpa(vcpu: int) -> int:
    return HEARTBEAT_GPA + HEARTBEAT_SIZE * vcpu


def read_heartbeat(memory: GuestMemory, vcpu: int) -> Heartbeat:
    return Heartbeat(*_HEARTBEAT.unpack(memory.read(heartbeat_gpa(vcpu), _HEARTBEAT.size)))


_STALL: Final = struct.Struct("<2Q")


@attrs.frozen
class Stall:
    """A gap between two heartbeats of one vCPU, as the guest logged it."""

    end_ns: int
    gap_ns: int


def beat(memory: GuestMemory, vcpu: int, now_ns: int, log: threading.Lock | None = None) -> int:
    """Write the next heartbeat of ``vcpu``, keep the largest gap and log a stall; its
    sequence.  ``log`` serialises the stall log between the vCPUs of a VM."""
    seq, last, gap = _HEARTBEAT.unpack(memory.read(heartbeat_gpa(vcpu), _HEARTBEAT.size))
    if seq:
        gap = max(gap, now_ns - last)
        if now_ns - last > STALL_NS:
            with log or threading.Lock():
                count = int(_U64.unpack(memory.read(STALL_LOG_GPA, 8))[0])
                at = STALL_LOG_GPA + 8 + _STALL.size * (count % STALL_LOG_ENTRIES)
                memory.write(at, _STALL.pack(now_ns, now_ns - last))
                memory.write(STALL_LOG_GPA, _U64.pack(count + 1))
    memory.write(heartbeat_gpa(vcpu), _HEARTBEAT.pack(seq + 1, now_ns, gap))
    following: int = seq + 1
    return following


def read_stalls(memory: GuestMemory) -> list[Stall]:
    """The stalls the guest logged, oldest first (the last :data:`STALL_LOG_ENTRIES`)."""
    count = int(_U64.unpack(memory.read(STALL_LOG_GPA, 8))[0])
    stalls = []
    for n in range(max(0, count - STALL_LOG_ENTRIES), count):
        at = STALL_LOG_GPA + 8 + _STALL.size * (n % STALL_LOG_ENTRIES)
        stalls.append(Stall(*_STALL.unpack(memory.read(at, _STALL.size))))
    return stalls
