"""The virtio-net device: a virtio 1.x PCI function with one queue pair, in the hardware process.

Its BAR 0 is :data:`~luo_virtio_net._abi.VIRTIO_NET_REGISTERS`: the common
configuration (``struct virtio_pci_common_cfg``), a notification doorbell
per queue and the device configuration (``struct virtio_net_config``).
Registers are shared memory that a luo model sees change only when a
doorbell rings, so the select windows of the common configuration are
emulated the way a device implements them, with the state behind them in
the model:

* ``device_feature_select`` is a doorbell: the model loads the selected
  32 bits of the offered features into ``device_feature``;
* ``driver_feature_select`` is a doorbell: the model first stores what the
  driver wrote into ``driver_feature`` as the half selected until then,
  then loads the newly selected half;
* ``queue_select`` is a doorbell: the model stores the window
  (``queue_size``, ``queue_msix_vector``, ``queue_desc``/``driver``/
  ``device``) into the queue selected until then — unless that queue is
  enabled, whose configuration no longer changes — and loads the newly
  selected queue's into the window, with its ``queue_enable`` and
  ``queue_notify_off``;
* ``queue_enable`` is a doorbell: writing 1 stores the window and enables
  the selected queue (a size that is not a power of two up to
  :data:`~luo_virtio_net._abi.QUEUE_MAX`, or a ring address of 0, leaves it
  disabled);
* ``device_status`` is a doorbell: 0 resets the device (queues, features);
  FEATURES_OK is accepted only for offered features including
  VIRTIO_F_VERSION_1 (otherwise the bit is cleared, as ``virtio_features_ok``
  in drivers/virtio/virtio.c expects); DRIVER_OK starts the queues;
* ``notify0``/``notify1`` (queue_notify_off 0 and 1, multiplier 4) are the
  queues' doorbells: the device consumes the transmit queue.

The driver closes each step with ``sync`` and waits for ``sync_ack``.

The queues are split virtqueues in the driver's memory, reached only by DMA
through the IOMMU (``ctx.dma()``).  Frames arrive from the link at
``rx_pps`` frames per second (a machine parameter) or by the control
``receive``; each carries the link's sequence number.  A frame finds the
next available receive buffer, is written into it (``struct
virtio_net_hdr_v1`` then the frame) and returned in the used ring; with no
buffer available it is dropped and counted (``rx_dropped``).  The transmit
queue is consumed when its doorbell rings (the model needs no kernel for it);
its frames are counted (``tx_frames``).  After adding used entries the device decides whether to
raise the queue's MSI by VIRTIO_F_EVENT_IDX (``used_event``, ``vring_need_event``)
or by ``VRING_AVAIL_F_NO_INTERRUPT``, and publishes ``avail_event``.  The MSI
goes through interrupt remapping to the handle the driver wrote as the
queue's MSI-X vector: luo's stand-in for the MSI-X table.  A DMA or MSI
the platform refuses is counted (``dma_errors``, ``irq_faults``); a
malformed descriptor chain sets DEVICE_NEEDS_RESET and stops the queues, as
QEMU's ``virtio_error`` does (``desc_errors``).  Nothing here imports the
kernel side.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping
from typing import Any, Final

import attrs

from luo_core.errors import InterruptRemapFaultError, IommuFaultError
from luo_core.platform import BUS_MASTER, DeviceContext, DeviceDma, DeviceModel
from luo_core.platform._traffic import Arrivals, injected
from luo_virtio_net._abi import (
    AVAIL_F_NO_INTERRUPT,
    COMPATIBLE,
    DEFAULT_MTU,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    DRIVER_OK,
    ETH,
    ETHERTYPE,
    F_EVENT_IDX,
    F_VERSION_1,
    FEATURES_OK,
    FRAME_LEN,
    NEEDS_RESET,
    NET_HDR,
    NET_S_LINK_UP,
    NO_VECTOR,
    NUM_QUEUES,
    OFFERED,
    PACKET_LEN,
    PAYLOAD,
    PEER_MAC,
    QUEUE_MAX,
    RX,
    TX,
    U16,
    VIRTIO_NET_REGISTERS,
    VRING_DESC,
    VRING_USED_ELEM,
    RingLayout,
    vring_need_event,
)

TICK_S: Final = 0.001


def burned_in_mac(name: str) -> int:
    """A stable, locally administered MAC derived from the device name."""
    return 0x02_00_00_00_00_00 | zlib.crc32(name.encode()) << 8 & 0xFF_FFFF_FF00 | 0x01


class BrokenQueueError(Exception):
    """A descriptor chain the device cannot use (the device needs a reset)."""


@attrs.define
class Queue:
    """The device's state of one virtqueue (what the select window shows, and more)."""

    size: int = QUEUE_MAX
    desc: int = 0
    driver: int = 0
    device: int = 0
    vector: int = NO_VECTOR
    enabled: bool = False
    last_avail: int = 0
    """The next available-ring index the device consumes."""
    used_idx: int = 0
    """The next used-ring index the device fills."""

    def ring(self) -> RingLayout:
        return RingLayout(self.size, self.desc, self.driver, self.device)


class VirtioNetModel(DeviceModel):
    compatible = (COMPATIBLE,)
    registers = VIRTIO_NET_REGISTERS

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.link = Arrivals(ctx.params.get("rx_pps", 0))
        self.period = TICK_S
        self.mac = burned_in_mac(ctx.name)
        self._clear()

    def _clear(self) -> None:
        self.queues = [Queue() for _ in range(NUM_QUEUES)]
        self.features = 0
        self.driver_features = [0, 0]
        self.status = 0
        self.selected = 0
        self.feature_half = 0
        self.broken = False

    # -- the register file -----------------------------------------------------------

    def reset(self) -> None:
        self._clear()
        regs = self.ctx.regs
        regs["num_queues"] = NUM_QUEUES
        for i, byte in enumerate(self.mac.to_bytes(6, "big")):
            regs[f"mac{i}"] = byte
        regs["net_status"] = NET_S_LINK_UP
        regs["max_virtqueue_pairs"] = 1
        regs["mtu"] = DEFAULT_MTU
        self._load_window(0)
        regs["device_feature"] = OFFERED & 0xFFFF_FFFF

    def _load_window(self, index: int) -> None:
        regs = self.ctx.regs
        self.selected = index
        if index >= NUM_QUEUES:  # no such queue: the spec has queue_size read 0
            for name in ("queue_size", "queue_enable", "queue_desc", "queue_driver"):
                regs[name] = 0
            regs["queue_device"] = 0
            regs["queue_msix_vector"] = NO_VECTOR
            return
        q = self.queues[index]
        regs["queue_size"] = q.size
        regs["queue_msix_vector"] = q.vector
        regs["queue_enable"] = int(q.enabled)
        regs["queue_notify_off"] = index
        regs["queue_desc"] = q.desc
        regs["queue_driver"] = q.driver
        regs["queue_device"] = q.device

    def _store_window(self) -> None:
        if self.selected >= NUM_QUEUES:
            return
        q, regs = self.queues[self.selected], self.ctx.regs
        if q.enabled:
            self._load_window(self.selected)  # an enabled queue's configuration stays
            return
        q.size, q.vector = regs["queue_size"], regs["queue_msix_vector"]
        q.desc, q.driver, q.device = regs["queue_desc"], regs["queue_driver"], regs["queue_device"]

    def kick(self) -> None:
        regs = self.ctx.regs
        # What ``sync`` says first: every register the driver wrote before it is visible
        # now, so acknowledging this value (not a later one) never acknowledges a write
        # this kick did not see.
        asked = regs["sync"]
        # feature windows
        half = regs["device_feature_select"]
        regs["device_feature"] = OFFERED >> (32 * half) & 0xFFFF_FFFF if half < 2 else 0
        if not self.status & FEATURES_OK and self.feature_half < 2:
            self.driver_features[self.feature_half] = regs["driver_feature"]
        if regs["driver_feature_select"] != self.feature_half:
            self.feature_half = regs["driver_feature_select"]
            regs["driver_feature"] = (
                self.driver_features[self.feature_half] if self.feature_half < 2 else 0
            )
        # the queue window
        self._store_window()
        if regs["queue_select"] != self.selected:
            self._load_window(regs["queue_select"])
        elif self.selected < NUM_QUEUES:
            self._enable(self.queues[self.selected])
        self._status(regs["device_status"])
        self._transmit()
        regs["sync_ack"] = asked

    def _enable(self, q: Queue) -> None:
        regs = self.ctx.regs
        if q.enabled or not regs["queue_enable"]:
            regs["queue_enable"] = int(q.enabled)  # a driver may not disable a queue
            return
        sized = 0 < q.size <= QUEUE_MAX and q.size & (q.size - 1) == 0
        if not (sized and q.desc and q.driver and q.device) or self.status & DRIVER_OK:
            regs["queue_enable"] = 0
            return
        q.enabled, q.last_avail, q.used_idx = True, 0, 0

    def _status(self, wanted: int) -> None:
        regs = self.ctx.regs
        if wanted == 0:
            if self.status:
                self._clear()
                self._load_window(regs["queue_select"])
            return
        if wanted & FEATURES_OK and not self.status & FEATURES_OK:
            features = self.driver_features[0] | self.driver_features[1] << 32
            if features & ~OFFERED or not features >> F_VERSION_1 & 1:
                wanted &= ~FEATURES_OK  # the device refuses: the bit reads back clear
            else:
                self.features = features
        if wanted & DRIVER_OK and not self.status & DRIVER_OK and not wanted & FEATURES_OK:
            wanted |= NEEDS_RESET
        if self.broken:
            wanted |= NEEDS_RESET
        self.status = wanted
        regs["device_status"] = wanted

    @property
    def live(self) -> bool:
        return bool(self.status & DRIVER_OK) and not self.status & NEEDS_RESET

    # -- time and the link -------------------------------------------------------------

    def tick(self, now_ns: int) -> None:
        frames = self.link.due(now_ns)
        if frames:
            self._receive(frames)

    def control(self, op: str, args: Mapping[str, Any]) -> object:
        if op == "receive":
            self._receive(injected(args))
            return None
        if op == "counters":
            return self.ctx.regs.values()
        if op == "link":
            self.link.set_rate(args)
            return None
        if op == "queues":
            return {
                "status": self.status,
                "features": self.features,
                "queues": [attrs.asdict(q) for q in self.queues],
            }
        return super().control(op, args)

    # -- the queues --------------------------------------------------------------------

    def _add(self, name: str, n: int = 1) -> None:
        regs = self.ctx.regs
        regs[name] = (regs[name] + n) % (1 << 64)

    def _mastering(self) -> bool:
        """Whether the function may do DMA: no bus mastering, no DMA (PCI command bit 2)."""
        return bool(self.ctx.config["command"] & BUS_MASTER)

    def _receive(self, frames: int) -> None:
        q = self.queues[RX]
        if not (self.live and q.enabled and self._mastering()):
            self._add("rx_seq", frames)
            self._add("rx_dropped", frames)
            return
        dma, ring, old = self.ctx.dma(), q.ring(), q.used_idx
        avail: int | None = None
        for n in range(frames):
            seq = self.ctx.regs["rx_seq"]
            self._add("rx_seq")
            try:
                if avail is None or avail == q.last_avail:
                    avail = _u16(dma, ring.avail_idx())  # the driver may have added buffers
                    if (avail - q.last_avail) & 0xFFFF > q.size:
                        raise BrokenQueueError("avail idx moved past the ring")
                if avail == q.last_avail:
                    self._add("rx_dropped")  # no buffer: the ring is full
                    continue
                head = _u16(dma, ring.avail_ring(q.last_avail))
                written = self._fill(dma, ring, head, _packet(seq, self.mac))
                dma.write(ring.used_ring(q.used_idx), VRING_USED_ELEM.pack(head, written))
            except IommuFaultError:
                self._add("dma_errors")
                self._add("rx_dropped")
                continue
            except BrokenQueueError:
                self._break()
                self._add("rx_seq", frames - n - 1)  # the rest arrive to a broken device
                self._add("rx_dropped", frames - n)
                break
            q.last_avail = (q.last_avail + 1) & 0xFFFF
            q.used_idx = (q.used_idx + 1) & 0xFFFF
            self._add("rx_frames")
        self._publish(dma, q, old)

    def _transmit(self) -> None:
        q = self.queues[TX]
        if not (self.live and q.enabled and self._mastering()):
            return
        dma, ring, old = self.ctx.dma(), q.ring(), q.used_idx
        try:
            avail = _u16(dma, ring.avail_idx())
            if (avail - q.last_avail) & 0xFFFF > q.size:
                raise BrokenQueueError("avail idx moved past the ring")
            while q.last_avail != avail:
                head = _u16(dma, ring.avail_ring(q.last_avail))
                self._drain(dma, ring, head)
                dma.write(ring.used_ring(q.used_idx), VRING_USED_ELEM.pack(head, 0))
                q.last_avail = (q.last_avail + 1) & 0xFFFF
                q.used_idx = (q.used_idx + 1) & 0xFFFF
                self._add("tx_frames")
        except IommuFaultError:
            self._add("dma_errors")
        except BrokenQueueError:
            self._break()
        self._publish(dma, q, old)

    def _chain(self, dma: DeviceDma, ring: RingLayout, head: int) -> list[tuple[int, int, int]]:
        """The descriptors of the chain at ``head``: (addr, len, flags) each."""
        out: list[tuple[int, int, int]] = []
        index = head
        while True:
            if index >= ring.size or len(out) >= ring.size:
                raise BrokenQueueError(f"descriptor {index} outside the table or a loop")
            addr, length, flags, nxt = VRING_DESC.unpack(
                dma.read(ring.desc_at(index), VRING_DESC.size)
            )
            if flags & DESC_F_INDIRECT:
                raise BrokenQueueError("indirect descriptors were not negotiated")
            out.append((addr, length, flags))
            if not flags & DESC_F_NEXT:
                return out
            index = nxt

    def _fill(self, dma: DeviceDma, ring: RingLayout, head: int, packet: bytes) -> int:
        chain = self._chain(dma, ring, head)
        if any(not flags & DESC_F_WRITE for _, _, flags in chain):
            raise BrokenQueueError("a receive buffer the device may not write")
        if sum(length for _, length, _ in chain) < len(packet):
            raise BrokenQueueError("a receive buffer shorter than a frame")
        at = 0
        for addr, length, _ in chain:
            piece = packet[at : at + length]
            if piece:
                dma.write(addr, piece)
            at += len(piece)
        return len(packet)

    def _drain(self, dma: DeviceDma, ring: RingLayout, head: int) -> None:
        for addr, length, flags in self._chain(dma, ring, head):
            if flags & DESC_F_WRITE:
                raise BrokenQueueError("a transmit buffer marked device-writable")
            dma.read(addr, min(length, PACKET_LEN))  # the frame goes out on the wire

    def _publish(self, dma: DeviceDma, q: Queue, old: int) -> None:
        """Make new used entries visible and interrupt the driver if it asked to be."""
        if q.used_idx == old or not q.enabled:
            return
        ring = q.ring()
        try:
            dma.write(ring.used_idx(), U16.pack(q.used_idx))
            if self.features >> F_EVENT_IDX & 1:
                dma.write(ring.avail_event(), U16.pack(q.last_avail))
                wanted = vring_need_event(_u16(dma, ring.used_event()), q.used_idx, old)
            else:
                wanted = not _u16(dma, ring.driver) & AVAIL_F_NO_INTERRUPT
        except IommuFaultError:
            self._add("dma_errors")
            return
        if not wanted:
            self._add("irq_suppressed")
            return
        if q.vector == NO_VECTOR:
            return
        try:
            self.ctx.msi().raise_(q.vector)
            self._add("irq_raised")
        except InterruptRemapFaultError:
            self._add("irq_faults")

    def _break(self) -> None:
        self.broken = True
        self._add("desc_errors")
        self.status |= NEEDS_RESET
        self.ctx.regs["device_status"] = self.status


def _u16(dma: DeviceDma, iova: int) -> int:
    value: int = U16.unpack(dma.read(iova, 2))[0]
    return value


def _packet(seq: int, mac: int) -> bytes:
    """What the device writes into a receive buffer: the header, then the frame."""
    frame = ETH.pack(mac.to_bytes(6, "big"), PEER_MAC.to_bytes(6, "big"), ETHERTYPE)
    frame += PAYLOAD.pack(seq, time.monotonic_ns())
    return NET_HDR.pack(0, 0, 0, 0, 0, 0, 1) + frame.ljust(FRAME_LEN, b"\0")
