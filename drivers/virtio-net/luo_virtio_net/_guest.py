"""The virtio-net driver inside a VM: probe, receive by interrupt, transmit by poll.

A virtio-net function passed through to a VM is driven by the guest's own
driver (``drivers/net/virtio_net.c`` over ``virtio_pci_modern``), through
its BAR (the VMM maps it into the guest) and split virtqueues in guest
memory.  Everything this driver knows lives in guest memory from its base
address — its state page, both queues, their buffers — never in the Python
object, which the VMM rebuilds in every kernel.  So after a live update the
driver carries on from the ring indices in guest memory, without resetting
the device, which never stopped.

Guest memory from ``base`` (a guest-physical address, also the IOVA the
device uses: the VMM maps guest memory 1:1 into the device's IOMMU domain):

==============  ==========================================================
offset          what
==============  ==========================================================
0x0000          the driver's state (:class:`GuestState`); at 0x100 one byte
                per transmit descriptor, 1 while the device holds it
0x1000          receiveq0: descriptors, avail ring, used ring (1024 entries)
0x9000          transmitq0: the same (256 entries)
0xc000          1024 receive buffers of 128 bytes
0x2c000         256 transmit buffers of 128 bytes
==============  ==========================================================

Received frames are counted by the link's sequence number on the VM's
packet stream (``guest.packet(seq + 1, stream)``; the first frame sets the
baseline); an interrupt that finds nothing new in either queue is spurious.
"""

from __future__ import annotations

import struct
import time
from typing import Any, Final

import attrs

from luo_core.errors import DeviceError
from luo_virtio_net._abi import (
    ACKNOWLEDGE,
    BUFFER_SIZE,
    DESC_F_WRITE,
    DRIVER,
    DRIVER_OK,
    ETH,
    ETHERTYPE,
    F_EVENT_IDX,
    F_MAC,
    F_MTU,
    F_VERSION_1,
    FEATURES_OK,
    FRAME_LEN,
    NEEDS_RESET,
    NET_HDR,
    PACKET_LEN,
    PAGE,
    PAYLOAD,
    PEER_MAC,
    RX,
    TX,
    Memory,
    Regs,
    RingLayout,
    negotiate,
    notify,
    read_mac,
    setup_queue,
    write_sync,
)
from luo_virtio_net._virtqueue import DriverQueue

MAGIC: Final = b"vNET"
RX_SIZE: Final = 1024
"""Receive buffers: a second of frames at 1 000 per second, so a blackout shorter than
that drops nothing."""
TX_SIZE: Final = 256
TX_PER_STEP: Final = 4
"""Frames the guest transmits every step (about 4 000 per second)."""
WANTED: Final = 1 << F_VERSION_1 | 1 << F_MAC | 1 << F_MTU | 1 << F_EVENT_IDX
BITMAP: Final = 0x100

_STATE: Final = struct.Struct("<4sIQQHHHHHHHHQQQQQQQQQ")


@attrs.define
class GuestState:
    """The driver's state page in guest memory."""

    magic: bytes = MAGIC
    layout: int = 1
    features: int = 0
    mac: int = 0
    mtu: int = 0
    rx_size: int = RX_SIZE
    tx_size: int = TX_SIZE
    rx_last_used: int = 0
    rx_avail: int = 0
    tx_last_used: int = 0
    tx_avail: int = 0
    seen: int = 0
    received: int = 0
    tx_sent: int = 0
    tx_done: int = 0
    interrupts: int = 0
    spurious: int = 0
    rx_notifies: int = 0
    tx_notifies: int = 0
    tx_seq: int = 0
    rx_bad: int = 0

    def pack(self) -> bytes:
        return _STATE.pack(*attrs.astuple(self))

    @classmethod
    def unpack(cls, data: bytes) -> GuestState:
        return cls(*_STATE.unpack(data))


@attrs.frozen
class GuestLayout:
    """Where everything of one guest driver is, from ``base``."""

    base: int

    @property
    def rx(self) -> RingLayout:
        return RingLayout.at(self.base + PAGE, RX_SIZE)

    @property
    def tx(self) -> RingLayout:
        return RingLayout.at(self.rx.end, TX_SIZE)

    def rx_buffer(self, index: int) -> int:
        return self.tx.end + index * BUFFER_SIZE

    def tx_buffer(self, index: int) -> int:
        return self.tx.end + RX_SIZE * BUFFER_SIZE + index * BUFFER_SIZE

    @property
    def end(self) -> int:
        return self.tx_buffer(TX_SIZE)


FOOTPRINT: Final = GuestLayout(0).end
"""Guest memory the driver needs (bytes, a page multiple)."""


def tx_packet(seq: int, mac: int) -> bytes:
    """What the guest transmits: the header, then a frame to the link partner."""
    frame = ETH.pack(PEER_MAC.to_bytes(6, "big"), mac.to_bytes(6, "big"), ETHERTYPE)
    frame += PAYLOAD.pack(seq, time.monotonic_ns())
    return NET_HDR.pack(0, 0, 0, 0, 0, 0, 0) + frame.ljust(FRAME_LEN, b"\0")


def frame_seq(packet: bytes) -> int | None:
    """The sequence number a received packet carries (``None``: not one of the link's)."""
    if len(packet) < PACKET_LEN:
        return None
    _dst, _src, ethertype = ETH.unpack_from(packet, NET_HDR.size)
    if ethertype != ETHERTYPE:
        return None
    seq: int = PAYLOAD.unpack_from(packet, NET_HDR.size + ETH.size)[0]
    return seq


class GuestVirtioNet:
    """The guest's driver for one passed-through virtio-net function (a
    ``luo_kvm.GuestDriver``): ``vector`` is its MSI's, frames go on ``stream``."""

    def __init__(self, name: str, regs: Regs, base: int, vector: int, stream: int) -> None:
        self.name = name
        self.regs = regs
        self.layout = GuestLayout(base)
        self.vector = vector
        self.stream = stream

    # -- state in guest memory ---------------------------------------------------------

    def state(self, mem: Memory) -> GuestState:
        return GuestState.unpack(mem.read(self.layout.base, _STATE.size))

    def _save(self, mem: Memory, state: GuestState) -> None:
        mem.write(self.layout.base, state.pack())

    def _queue(self, mem: Memory, state: GuestState, index: int) -> DriverQueue:
        ring = self.layout.rx if index == RX else self.layout.tx
        return DriverQueue(mem, ring, bool(state.features >> F_EVENT_IDX & 1))

    # -- probe ------------------------------------------------------------------------

    def setup(self, guest: Any, irq_handle: int) -> None:
        """``virtnet_probe``: reset, negotiate, both queues in guest memory, receive
        buffers posted, DRIVER_OK."""
        regs, name, layout = self.regs, self.name, self.layout
        features = negotiate(regs, WANTED, name)
        state = GuestState(features=features)
        state.mac = read_mac(regs) if features >> F_MAC & 1 else 0
        state.mtu = regs["mtu"] if features >> F_MTU & 1 else 1500
        rx, tx = self._queue(guest, state, RX), self._queue(guest, state, TX)
        guest.write(layout.base, bytes(PAGE))
        for q in (rx, tx):
            q.clear()
        setup_queue(regs, RX, layout.rx, irq_handle, name)
        setup_queue(regs, TX, layout.tx, irq_handle, name)
        for i in range(RX_SIZE):
            rx.set_desc(i, layout.rx_buffer(i), BUFFER_SIZE, DESC_F_WRITE)
            rx.add(i, i)
        state.rx_avail = RX_SIZE & 0xFFFF
        rx.publish(0, state.rx_avail)
        rx.enable_cb(0)
        tx.disable_cb()  # transmit completions are reaped as the guest transmits
        self._save(guest, state)
        write_sync(regs, "device_status", ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK, name)
        if regs["device_status"] & NEEDS_RESET:
            raise DeviceError(f"{name}: the device needs a reset after DRIVER_OK")
        notify(regs, RX)

    def attached(self, guest: Any) -> bool:
        """Whether guest memory holds this driver's state (probed before an update)."""
        state = self.state(guest)
        return (state.magic, state.rx_size, state.tx_size) == (MAGIC, RX_SIZE, TX_SIZE)

    # -- what the guest does ----------------------------------------------------------

    def interrupt(self, vector: int, guest: Any) -> None:
        if vector != self.vector:
            return
        state = self.state(guest)
        received = self._reap_rx(guest, state)
        completed = self._reap_tx(guest, state)
        state.interrupts += 1
        if not received and not completed:
            state.spurious += 1
            guest.interrupt_spurious()
        self._save(guest, state)

    def poll(self, guest: Any) -> None:
        """Transmit a few frames, reaping finished ones first (``start_xmit``).

        Only vCPU 0 runs the driver, where its MSI is posted: its state in guest memory
        is read, changed and written back without a lock, so one vCPU must own it.
        """
        if getattr(guest, "vcpu", 0) != 0:
            return
        state = self.state(guest)
        self._reap_tx(guest, state)
        self._transmit(guest, state, TX_PER_STEP)
        self._save(guest, state)

    def _reap_rx(self, guest: Any, state: GuestState) -> int:
        """Take every used receive buffer, count its frame, give it back."""
        q, layout = self._queue(guest, state, RX), self.layout
        old_avail, found = state.rx_avail, 0
        while True:
            used = q.used_idx()
            if (used - state.rx_last_used) & 0xFFFF > RX_SIZE:
                state.rx_bad += 1  # a used index past the ring: nothing of it is taken
                break
            while state.rx_last_used != used:
                head, length = q.used(state.rx_last_used)
                seq = None
                if head < RX_SIZE and length <= BUFFER_SIZE:
                    seq = frame_seq(guest.read(layout.rx_buffer(head), length))
                if seq is None:
                    state.rx_bad += 1
                else:
                    if not state.seen:  # frames before the first are not this guest's
                        guest.packet_baseline(seq, self.stream)
                        state.seen = 1
                    guest.packet(seq + 1, self.stream)
                    state.received += 1
                q.add(state.rx_avail, head % RX_SIZE)
                state.rx_avail = (state.rx_avail + 1) & 0xFFFF
                state.rx_last_used = (state.rx_last_used + 1) & 0xFFFF
                found += 1
            if not q.enable_cb(state.rx_last_used):
                break
        if state.rx_avail != old_avail and q.publish(old_avail, state.rx_avail):
            notify(self.regs, RX)
            state.rx_notifies += 1
        return found

    def _reap_tx(self, guest: Any, state: GuestState) -> int:
        q, done = self._queue(guest, state, TX), 0
        used = q.used_idx()
        if (used - state.tx_last_used) & 0xFFFF > TX_SIZE:
            return 0  # a used index past the ring: nothing of it is taken
        while state.tx_last_used != used:
            head, _ = q.used(state.tx_last_used)
            if head < TX_SIZE:
                guest.write(self.layout.base + BITMAP + head, b"\0")
            state.tx_last_used = (state.tx_last_used + 1) & 0xFFFF
            state.tx_done += 1
            done += 1
        return done

    def _transmit(self, guest: Any, state: GuestState, frames: int) -> int:
        q, layout = self._queue(guest, state, TX), self.layout
        busy = guest.read(layout.base + BITMAP, TX_SIZE)
        free = [i for i in range(TX_SIZE) if not busy[i]][:frames]
        old = state.tx_avail
        for head in free:
            guest.write(layout.tx_buffer(head), tx_packet(state.tx_seq, state.mac))
            q.set_desc(head, layout.tx_buffer(head), PACKET_LEN, 0)
            q.add(state.tx_avail, head)
            guest.write(layout.base + BITMAP + head, b"\1")
            state.tx_avail = (state.tx_avail + 1) & 0xFFFF
            state.tx_seq += 1
            state.tx_sent += 1
        if free and q.publish(old, state.tx_avail):
            notify(self.regs, TX)
            state.tx_notifies += 1
        return len(free)


def read_state(mem: Memory, base: int) -> GuestState:
    """The state page of the guest driver at ``base`` (tests, the operator)."""
    return GuestState.unpack(mem.read(base, _STATE.size))
