"""The driver's side of a split virtqueue, over memory the driver reaches directly.

The guest's driver reaches its queues in guest memory, the host's in
kernel memory; both go through :class:`DriverQueue`, which reads and writes
the rings as ``drivers/virtio/virtio_ring.c`` does for a split ring:
``virtqueue_add_split`` (a descriptor and an avail slot),
``virtqueue_kick_prepare_split`` (notify only if ``vring_need_event`` says
the device asked, with VIRTIO_F_EVENT_IDX), ``virtqueue_get_buf_ctx_split``
(used entries), ``virtqueue_enable_cb_prepare_split`` / ``virtqueue_poll``
(write ``used_event`` then look again, so that an entry added meanwhile is
never left without an interrupt) and ``virtqueue_disable_cb_split``.  The
driver's own indices (its avail index and last used index) are passed in
and out: where they live is the caller's business (guest memory, a record).
"""

from __future__ import annotations

from luo_virtio_net._abi import (
    AVAIL_F_NO_INTERRUPT,
    USED_F_NO_NOTIFY,
    VRING_DESC,
    VRING_USED_ELEM,
    Memory,
    RingLayout,
    read_u16,
    vring_need_event,
    write_u16,
)


class DriverQueue:
    """One split virtqueue as its driver sees it."""

    def __init__(self, mem: Memory, ring: RingLayout, event_idx: bool) -> None:
        self.mem = mem
        self.ring = ring
        self.event_idx = event_idx

    def clear(self) -> None:
        """Zero the descriptor table and both rings (a new queue)."""
        ring = self.ring
        self.mem.write(ring.desc, bytes(ring.end - ring.desc))

    def set_desc(self, index: int, addr: int, length: int, flags: int, nxt: int = 0) -> None:
        self.mem.write(self.ring.desc_at(index), VRING_DESC.pack(addr, length, flags, nxt))

    def desc(self, index: int) -> tuple[int, int, int, int]:
        addr, length, flags, nxt = VRING_DESC.unpack(
            self.mem.read(self.ring.desc_at(index), VRING_DESC.size)
        )
        return addr, length, flags, nxt

    def add(self, avail_idx: int, head: int) -> None:
        """Put descriptor ``head`` in the avail ring's slot for ``avail_idx``."""
        write_u16(self.mem, self.ring.avail_ring(avail_idx), head)

    def publish(self, old: int, new: int) -> bool:
        """Expose the avail ring up to ``new``; whether the device wants a notification."""
        write_u16(self.mem, self.ring.avail_idx(), new)
        if self.event_idx:
            return vring_need_event(read_u16(self.mem, self.ring.avail_event()), new, old)
        return not read_u16(self.mem, self.ring.device) & USED_F_NO_NOTIFY

    def avail_idx(self) -> int:
        return read_u16(self.mem, self.ring.avail_idx())

    def used_idx(self) -> int:
        return read_u16(self.mem, self.ring.used_idx())

    def used(self, slot: int) -> tuple[int, int]:
        """The used element for used index ``slot``: (descriptor id, bytes written)."""
        head, length = VRING_USED_ELEM.unpack(
            self.mem.read(self.ring.used_ring(slot), VRING_USED_ELEM.size)
        )
        return head, length

    def enable_cb(self, last_used: int) -> bool:
        """Ask for an interrupt at the next used entry; whether one is already there."""
        if self.event_idx:
            write_u16(self.mem, self.ring.used_event(), last_used)
        else:
            write_u16(self.mem, self.ring.driver, 0)
        return self.used_idx() != last_used

    def disable_cb(self) -> None:
        """No interrupts wanted (with event index: ``used_event`` 0, as Linux writes)."""
        if self.event_idx:
            write_u16(self.mem, self.ring.used_event(), 0)
        else:
            write_u16(self.mem, self.ring.driver, AVAIL_F_NO_INTERRUPT)
